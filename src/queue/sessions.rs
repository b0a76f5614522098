//! The dashboard's sessions in Redis (docs/dashboard.md, "Security"), so that every `serve`
//! replica knows every session: `{q}:sessions:<hex SHA-256 of the id>` ([`Keys::session`]),
//! a string holding when the session began (unix ms), that expires with the session. Login
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
        lifetime: Duration,
        replacing: Option<&str>,
    ) -> Result<()> {
        let mut pipe = redis::pipe();
        if let Some(old) = replacing {
            pipe.del(self.keys.session(old)).ignore();
        }
        pipe.cmd("SET").arg(self.keys.session(id)).arg(created_ms).arg("PX").arg(millis(lifetime)).ignore();
        let mut conn = self.conn();
        bounded("redis (session)", CALL_TIMEOUT, pipe.query_async::<()>(&mut conn)).await
    }

    /// When session `id` began (unix ms), while it lives; `None` when there is no such session
    /// (never was, expired, or logged out). A value that is not a number reads as 0.
    pub(crate) async fn session_created(&self, id: &str) -> Result<Option<u64>> {
        let mut conn = self.conn();
        let value: Option<String> =
            bounded("redis (session)", CALL_TIMEOUT, conn.get(self.keys.session(id))).await?;
        Ok(value.map(|v| v.trim().parse().unwrap_or(0)))
    }

    /// Ends session `id`. True when it was live.
    pub(crate) async fn close_session(&self, id: &str) -> Result<bool> {
        let mut conn = self.conn();
        let deleted: u64 = bounded("redis (session)", CALL_TIMEOUT, conn.del(self.keys.session(id))).await?;
        Ok(deleted > 0)
    }
}
