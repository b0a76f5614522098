//! Worker heartbeats: `{q}:worker:<id>` holds a small JSON status with a TTL, and
//! `{q}:workers` names every worker that announced itself. A worker is live while its key
//! exists; the janitor forgets ids whose key expired.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::backoff::now_ms;
use crate::error::{Result, bounded};
use crate::queue::{CALL_TIMEOUT, Queue};
use crate::worker::Totals;

/// How often a worker announces itself.
pub(crate) const INTERVAL: Duration = Duration::from_secs(2);
/// How long an announcement lasts: a worker silent for this long counts as gone.
pub(crate) const TTL: Duration = Duration::from_secs(10);
/// The window over which a worker reports its recent throughput.
const RATE_WINDOW: Duration = Duration::from_secs(10);

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

pub(crate) async fn run(queue: Queue, id: String, totals: Arc<Totals>, shutdown: CancellationToken) {
    let started_at = now_ms();
    let mut samples: VecDeque<(Instant, u64)> = VecDeque::new();
    loop {
        let settled = totals.applied.load(Ordering::Relaxed) + totals.rejected.load(Ordering::Relaxed);
        let now = Instant::now();
        samples.push_back((now, settled));
        while samples.front().is_some_and(|(t, _)| now.duration_since(*t) > RATE_WINDOW) {
            samples.pop_front();
        }
        let (t0, n0) = samples.front().copied().unwrap_or((now, settled));
        let secs = now.duration_since(t0).as_secs_f64();
        let beat = Heartbeat {
            id: id.clone(),
            pid: std::process::id(),
            started_at,
            seen_at: now_ms(),
            applied: totals.applied.load(Ordering::Relaxed),
            rejected: totals.rejected.load(Ordering::Relaxed),
            dead: totals.dead.load(Ordering::Relaxed),
            rate: if secs > 0.0 { (settled - n0) as f64 / secs } else { 0.0 },
        };
        if let Err(e) = announce(&queue, &beat).await {
            tracing::debug!(error = %e, "heartbeat failed");
        }
        tokio::select! {
            _ = tokio::time::sleep(INTERVAL) => {}
            _ = shutdown.cancelled() => break,
        }
    }
    // Leave at once rather than linger as "live" for a TTL.
    let mut conn = queue.conn();
    let keys = queue.keys();
    let _ = bounded("redis (heartbeat)", CALL_TIMEOUT, async {
        redis::pipe().del(keys.worker(&id)).srem(keys.workers(), &id).query_async::<()>(&mut conn).await
    })
    .await;
}

async fn announce(queue: &Queue, beat: &Heartbeat) -> Result<()> {
    let keys = queue.keys();
    let mut conn = queue.conn();
    let body = serde_json::to_string(beat).unwrap_or_default();
    bounded("redis (heartbeat)", CALL_TIMEOUT, async {
        redis::pipe()
            .set_ex(keys.worker(&beat.id), body, TTL.as_secs())
            .sadd(keys.workers(), &beat.id)
            .query_async::<()>(&mut conn)
            .await
    })
    .await
}

/// The heartbeats of live workers; forgets (SREM) ids whose key has expired.
pub async fn live_workers(queue: &Queue) -> Result<Vec<Heartbeat>> {
    let keys = queue.keys();
    let mut conn = queue.conn();
    let ids: Vec<String> = bounded("redis (workers)", CALL_TIMEOUT, conn.smembers(keys.workers())).await?;
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
        let _: Result<u64> = bounded("redis (workers)", CALL_TIMEOUT, conn.srem(keys.workers(), &gone)).await;
    }
    live.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(live)
}
