//! A worker's heartbeat: every [`INTERVAL`] it announces itself with its totals and recent
//! rate in the queue's worker registry, and it leaves the registry when it stops.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::backoff::now_ms;
use crate::queue::{Heartbeat, Queue};
use crate::worker::Totals;

/// How often a worker announces itself.
pub(crate) const INTERVAL: Duration = Duration::from_secs(2);
/// How long an announcement lasts: a worker silent for this long counts as gone.
pub(crate) const TTL: Duration = Duration::from_secs(10);
/// The window over which a worker reports its recent throughput.
const RATE_WINDOW: Duration = Duration::from_secs(10);

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
        if let Err(e) = queue.announce(&beat, TTL).await {
            tracing::debug!(error = %e, "heartbeat failed");
        }
        tokio::select! {
            _ = tokio::time::sleep(INTERVAL) => {}
            _ = shutdown.cancelled() => break,
        }
    }
    // Leave at once rather than linger as "live" for a TTL.
    let _ = queue.leave(&id).await;
}
