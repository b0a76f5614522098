//! The operators' levers in Redis: a product's sale paused (a field of `{q}:limits` that the
//! reservation scripts read with the limit, so that a pause costs a reservation nothing
//! more), deductions paused queue-wide (`{q}:deductions-paused`, which workers look at before
//! each claim), and the audit stream of every operator action (`{q}:audit`).

use redis::AsyncCommands;

use super::{CALL_TIMEOUT, Queue};
use crate::error::{Result, bounded};

/// Entries kept in `{q}:audit` (approximately: trimmed with `MAXLEN ~`).
const AUDIT_MAX_LEN: usize = 100_000;

/// The `{q}:limits` field that pauses a product's sale; its value is when (unix ms).
fn paused_field(product_id: i64) -> String {
    format!("!paused:{product_id}")
}

/// A pause: since when (unix ms) and, for deductions, who asked for it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Paused {
    pub since: i64,
    pub by: String,
}

/// One operator action of `{q}:audit`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AuditEntry {
    /// Its stream id.
    pub id: String,
    /// Unix ms.
    pub at: i64,
    /// Who: `cli:<user>@<host>`, or `dashboard:<session>` from an address.
    pub who: String,
    /// What, in a word or two: `stock set`, `pause`, `dead drop`, ...
    pub action: String,
    /// On what, and its result.
    pub detail: String,
}

impl Queue {
    /// Pauses (or resumes) the sale of `product_id` in this shard: reservations of it are
    /// refused `paused`, nothing taken; everything else about it carries on. A pause keeps the
    /// time of one made before. True when this call changed the shard.
    pub(crate) async fn set_product_paused(&self, product_id: i64, since: Option<i64>) -> Result<bool> {
        let mut conn = self.conn();
        let key = self.keys.limits();
        let changed: i64 = match since {
            Some(since) => {
                bounded("redis (pause)", CALL_TIMEOUT, conn.hset_nx(key, paused_field(product_id), since))
                    .await?
            }
            None => bounded("redis (resume)", CALL_TIMEOUT, conn.hdel(key, paused_field(product_id))).await?,
        };
        Ok(changed > 0)
    }

    /// Every product whose sale is paused in this shard, with since when (unix ms).
    pub(crate) async fn paused_products(&self) -> Result<Vec<(i64, i64)>> {
        let mut conn = self.conn();
        let all: Vec<(String, String)> =
            bounded("redis (pauses)", CALL_TIMEOUT, conn.hgetall(self.keys.limits())).await?;
        let mut paused: Vec<(i64, i64)> = all
            .into_iter()
            .filter_map(|(field, since)| {
                let product = field.strip_prefix("!paused:")?.parse().ok()?;
                Some((product, since.parse().unwrap_or(0)))
            })
            .collect();
        paused.sort_unstable();
        Ok(paused)
    }

    /// Pauses (`Some(by)`) or resumes (`None`) every worker's claims on the queue.
    pub(crate) async fn set_deductions_paused(&self, by: Option<(i64, &str)>) -> Result<()> {
        let mut conn = self.conn();
        let key = self.keys.deductions_paused();
        match by {
            Some((since, who)) => {
                let () =
                    bounded("redis (pause)", CALL_TIMEOUT, conn.set(key, format!("{since} {who}"))).await?;
            }
            None => {
                let _: i64 = bounded("redis (resume)", CALL_TIMEOUT, conn.del(key)).await?;
            }
        }
        Ok(())
    }

    /// Whether deductions are paused queue-wide, since when and by whom.
    pub(crate) async fn deductions_paused(&self) -> Result<Option<Paused>> {
        let mut conn = self.conn();
        let value: Option<String> =
            bounded("redis (pause)", CALL_TIMEOUT, conn.get(self.keys.deductions_paused())).await?;
        Ok(value.map(|v| {
            let (since, by) = v.split_once(' ').unwrap_or((v.as_str(), ""));
            Paused { since: since.parse().unwrap_or(0), by: by.to_string() }
        }))
    }

    /// Adds refusals counted by a process to `{q}:refusals` (`field` → count).
    pub(crate) async fn add_refusals(&self, counts: &[(String, u64)]) -> Result<()> {
        let mut pipe = redis::pipe();
        for (field, n) in counts {
            pipe.hincr(self.keys.refusals(), field, *n).ignore();
        }
        let mut conn = self.conn();
        bounded("redis (refusals)", CALL_TIMEOUT, pipe.query_async::<()>(&mut conn)).await
    }

    /// Every field of `{q}:refusals`.
    pub(crate) async fn refusals(&self) -> Result<Vec<(String, u64)>> {
        let mut conn = self.conn();
        bounded("redis (refusals)", CALL_TIMEOUT, conn.hgetall(self.keys.refusals())).await
    }

    /// Appends an operator action to the audit stream.
    pub(crate) async fn audit(&self, who: &str, action: &str, detail: &str) -> Result<()> {
        let mut conn = self.conn();
        let at = crate::backoff::now_ms().to_string();
        let _: String = bounded(
            "redis (audit)",
            CALL_TIMEOUT,
            redis::cmd("XADD")
                .arg(self.keys.audit())
                .arg("MAXLEN")
                .arg("~")
                .arg(AUDIT_MAX_LEN)
                .arg("*")
                .arg("at")
                .arg(at)
                .arg("who")
                .arg(who)
                .arg("action")
                .arg(action)
                .arg("detail")
                .arg(detail)
                .query_async(&mut conn),
        )
        .await?;
        Ok(())
    }

    /// The latest `count` operator actions, newest first.
    pub(crate) async fn audit_entries(&self, count: usize) -> Result<Vec<AuditEntry>> {
        let entries = self.latest_entries("redis (audit)", self.keys.audit(), count).await?;
        Ok(entries
            .into_iter()
            .map(|e| AuditEntry {
                at: e.get("at").and_then(|v| v.parse().ok()).unwrap_or(0),
                who: e.get("who").unwrap_or("").to_string(),
                action: e.get("action").unwrap_or("").to_string(),
                detail: e.get("detail").unwrap_or("").to_string(),
                id: e.id,
            })
            .collect())
    }
}
