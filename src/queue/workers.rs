//! The worker registry: `{q}:worker:<id>` holds a worker's heartbeat (JSON) with a TTL, and
//! `{q}:workers` names every worker that announced itself. A worker is live while its key
//! exists; reading the registry forgets ids whose key expired.

use std::time::Duration;

use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

use super::{CALL_TIMEOUT, Queue};
use crate::error::{Result, bounded};

/// What a worker says about itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Heartbeat {
    pub id: String,
    pub pid: u32,
    pub started_at: u64,
    pub seen_at: u64,
    pub applied: u64,
    pub rejected: u64,
    pub dead: u64,
    /// Events settled per second over the last few seconds.
    pub rate: f64,
}

impl Queue {
    /// Records `beat` as its worker's heartbeat, live for `ttl`, and names the worker in the
    /// registry.
    pub(crate) async fn announce(&self, beat: &Heartbeat, ttl: Duration) -> Result<()> {
        let body = serde_json::to_string(beat).unwrap_or_default();
        let mut conn = self.conn();
        bounded("redis (heartbeat)", CALL_TIMEOUT, async {
            redis::pipe()
                .set_ex(self.keys.worker(&beat.id), body, ttl.as_secs())
                .sadd(self.keys.workers(), &beat.id)
                .query_async::<()>(&mut conn)
                .await
        })
        .await
    }

    /// Takes worker `id` out of the registry at once, rather than let it count as live until
    /// its heartbeat expires.
    pub(crate) async fn leave(&self, id: &str) -> Result<()> {
        let mut conn = self.conn();
        bounded("redis (heartbeat)", CALL_TIMEOUT, async {
            redis::pipe()
                .del(self.keys.worker(id))
                .srem(self.keys.workers(), id)
                .query_async::<()>(&mut conn)
                .await
        })
        .await
    }

    /// The heartbeats of live workers, by id. Forgets (SREM) the ids whose heartbeat expired;
    /// failing to is harmless, the next read tries again.
    pub async fn live_workers(&self) -> Result<Vec<Heartbeat>> {
        let keys = &self.keys;
        let mut conn = self.conn();
        let ids: Vec<String> =
            bounded("redis (workers)", CALL_TIMEOUT, conn.smembers(keys.workers())).await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let worker_keys: Vec<String> = ids.iter().map(|id| keys.worker(id)).collect();
        let bodies: Vec<Option<String>> =
            bounded("redis (workers)", CALL_TIMEOUT, conn.mget(&worker_keys)).await?;
        let mut live = Vec::new();
        let mut gone = Vec::new();
        for (id, body) in ids.into_iter().zip(bodies) {
            match body.and_then(|b| serde_json::from_str::<Heartbeat>(&b).ok()) {
                Some(beat) => live.push(beat),
                None => gone.push(id),
            }
        }
        if !gone.is_empty() {
            let _: Result<u64> =
                bounded("redis (workers)", CALL_TIMEOUT, conn.srem(keys.workers(), &gone)).await;
        }
        live.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(live)
    }
}
