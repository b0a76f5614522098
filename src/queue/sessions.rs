//! The dashboard's sessions in Redis (docs/dashboard.md, "Security"), so that every `serve`
//! replica knows every session: `{q}:sessions:<hex SHA-256 of the id>` ([`Keys::session`]),
//! a string `<began, unix ms> <token tag>` (the tag ties it to the admin token it was opened
//! with: `http::admin::session`), that expires with the session. Login
//! writes it, each request reads it, logout deletes it. Only the first shard's are used.
//!
//! [`Keys::session`]: super::Keys::session

use std::time::Duration;

use redis::AsyncCommands;

use super::{CALL_TIMEOUT, Queue, millis};
use crate::error::{Result, bounded};

impl Queue {
    /// Writes session `id`, begun at `created_ms` (unix ms), to expire after `lifetime`; and
    /// deletes the session `replacing` (the one a login came with) in the same round trip.
    pub(crate) async fn open_session(
        &self,
        id: &str,
        created_ms: u64,
        token_tag: &str,
        lifetime: Duration,
        replacing: Option<&str>,
    ) -> Result<()> {
        let mut pipe = redis::pipe();
        if let Some(old) = replacing {
            pipe.del(self.keys.session(old)).ignore();
        }
        pipe.cmd("SET")
            .arg(self.keys.session(id))
            .arg(format!("{created_ms} {token_tag}"))
            .arg("PX")
            .arg(millis(lifetime))
            .ignore();
        let mut conn = self.conn();
        bounded("redis (session)", CALL_TIMEOUT, pipe.query_async::<()>(&mut conn)).await
    }

    /// When session `id` began (unix ms) and its token tag, while it lives; `None` when there
    /// is no such session (never was, expired, or logged out). A time that is not a number
    /// reads as 0, a missing tag as empty (no session then).
    pub(crate) async fn session_created(&self, id: &str) -> Result<Option<(u64, String)>> {
        let mut conn = self.conn();
        let value: Option<String> =
            bounded("redis (session)", CALL_TIMEOUT, conn.get(self.keys.session(id))).await?;
        Ok(value.map(|v| {
            let (created, tag) = v.trim().split_once(' ').unwrap_or((v.trim(), ""));
            (created.parse().unwrap_or(0), tag.to_string())
        }))
    }

    /// Ends session `id`. True when it was live.
    pub(crate) async fn close_session(&self, id: &str) -> Result<bool> {
        let mut conn = self.conn();
        let deleted: u64 = bounded("redis (session)", CALL_TIMEOUT, conn.del(self.keys.session(id))).await?;
        Ok(deleted > 0)
    }
}
