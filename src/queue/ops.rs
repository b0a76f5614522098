//! What the surfaces around the queue need beside an entry's life: its depths for `stats` and
//! the metrics, a ping for `/healthz`, the alerts stream the janitor's check writes (and the
//! dashboard reads), and the reset of the demo and the benchmark.

use std::collections::BTreeMap;
use std::time::Duration;

use redis::AsyncCommands;

use super::{CALL_TIMEOUT, Queue};
use crate::error::{Result, bounded};

/// How long a process stays the reporter of a group of queue-wide gauges without renewing
/// its lease (it renews at every sample, every 2 s).
pub(crate) const REPORTER_LEASE: Duration = Duration::from_secs(10);

/// Entries kept in `{q}:alerts` (approximately: trimmed with `MAXLEN ~`).
const ALERTS_MAX_LEN: usize = 10_000;
/// Keys a SCAN step of the reset looks at, and records a step unlinks at most.
const RESET_SCAN_COUNT: usize = 1000;

/// The running totals of `{q}:counters` that the scripts keep. [`Queue::depths`] reports each
/// of them, 0 until it first moves, so that a reader sees every total whether or not it has
/// happened yet.
pub(crate) const COUNTERS: [&str; 8] =
    ["applied", "rejected", "duplicates", "redelivered", "requeued", "dead", "cancelled", "released"];

/// One shard's list lengths, how long its work has waited, and its running totals. Times are
/// measured on the Redis clock, the one reservations and claims are stamped with, so they
/// read the same whoever asks.
pub struct Depths {
    pub pending: u64,
    pub processing: u64,
    pub dead: u64,
    /// How long the oldest pending event has waited for a worker, from the time reserve.lua
    /// stamped on it (`at`). `None` when pending is empty, or when its oldest entry carries no
    /// time (an entry pushed by hand).
    pub oldest_pending_age_ms: Option<u64>,
    /// Time until the earliest claim deadline; negative when it has passed (its worker
    /// stopped renewing it and the janitor has not re-queued it yet). `None`: nothing claimed.
    ///
    /// A claim's deadline is its claim or last renewal plus the visibility timeout *of the
    /// worker that holds it*; that timeout is not stored, so the time left, not the age, is
    /// what Redis can tell.
    pub claim_expires_in_ms: Option<i64>,
    /// Every name of [`COUNTERS`], and any other field the hash holds.
    pub counters: BTreeMap<String, u64>,
    /// Reservations held unpaid.
    pub held: u64,
    /// Cancelled reservations whose entry still waits in the queue.
    pub cancelling: u64,
    /// Releases waiting for MySQL.
    pub releasing: u64,
}

/// A drift found by the consistency check, as recorded in `{q}:alerts`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Alert {
    pub(crate) product_id: i64,
    /// Redis stock (0 for a missing key).
    pub(crate) redis: i64,
    pub(crate) mysql: i64,
    pub(crate) in_flight: i64,
    pub(crate) delta: i64,
}

impl Queue {
    /// Takes or renews the lease `{q}:reporter:<group>` for `me`: true while this process is
    /// the one that exports that group of queue-wide gauges (`telemetry::metrics::Reporter`).
    /// A reporter that stops renewing is replaced within [`REPORTER_LEASE`].
    pub(crate) async fn hold_reporter(&self, group: &str, me: &str) -> Result<bool> {
        let key = self.keys.reporter(group);
        let ttl = REPORTER_LEASE.as_millis() as u64;
        let mut conn = self.conn();
        let taken: Option<String> = bounded(
            "redis (reporter)",
            CALL_TIMEOUT,
            redis::cmd("SET").arg(&key).arg(me).arg("NX").arg("PX").arg(ttl).query_async(&mut conn),
        )
        .await?;
        if taken.is_some() {
            return Ok(true);
        }
        let holder: Option<String> = bounded("redis (reporter)", CALL_TIMEOUT, conn.get(&key)).await?;
        if holder.as_deref() != Some(me) {
            return Ok(false);
        }
        let _: bool = bounded("redis (reporter)", CALL_TIMEOUT, conn.pexpire(&key, ttl as i64)).await?;
        Ok(true)
    }

    /// Reads the queue's depths in one round trip.
    pub async fn depths(&self) -> Result<Depths> {
        let keys = &self.keys;
        let mut conn = self.conn();
        type Reply = (
            u64,
            u64,
            u64,
            Option<Vec<u8>>,
            Vec<(Vec<u8>, f64)>,
            BTreeMap<String, u64>,
            (u64, u64),
            u64,
            u64,
            u64,
        );
        let (
            pending,
            processing,
            dead,
            oldest_pending,
            earliest_claim,
            counters,
            time,
            held,
            cancelling,
            releasing,
        ): Reply = bounded("redis (stats)", CALL_TIMEOUT, async {
            redis::pipe()
                .llen(keys.pending())
                .llen(keys.processing())
                .llen(keys.dead())
                .lindex(keys.pending(), -1)
                .zrange_withscores(keys.claims(), 0, 0)
                .hgetall(keys.counters())
                .cmd("TIME")
                .zcard(keys.holds())
                .scard(keys.cancels())
                .llen(keys.releases())
                .query_async(&mut conn)
                .await
        })
        .await?;
        let now_ms = (time.0 * 1000 + time.1 / 1000) as i64;
        let oldest_pending_age_ms =
            oldest_pending.as_deref().and_then(reserved_at).map(|at| u64::try_from(now_ms - at).unwrap_or(0));
        let claim_expires_in_ms = earliest_claim.first().map(|(_, deadline)| *deadline as i64 - now_ms);
        let mut all_counters: BTreeMap<String, u64> = COUNTERS.iter().map(|c| (c.to_string(), 0)).collect();
        all_counters.extend(counters);
        Ok(Depths {
            pending,
            processing,
            dead,
            oldest_pending_age_ms,
            claim_expires_in_ms,
            counters: all_counters,
            held,
            cancelling,
            releasing,
        })
    }

    /// Whether Redis answers within `within` and would accept a reservation now: a full
    /// Redis (over `maxmemory`) fails this with its `OOM` error (`lua/probe.lua`).
    pub(crate) async fn ping(&self, within: Duration) -> Result<()> {
        let mut conn = self.conn();
        let probe = super::scripts::PROBE.prepare_invoke();
        bounded("redis (ping)", within, probe.invoke_async::<i64>(&mut conn)).await?;
        Ok(())
    }

    /// Appends `alerts` to `{q}:alerts` in one round trip, each stamped with the sequence
    /// number of the check that found it and its kind: `drift`, or `healed` for a product
    /// whose stock a heal after lost Redis writes set from MySQL.
    pub(crate) async fn add_alerts(&self, kind: &str, seq: i64, alerts: &[Alert]) -> Result<()> {
        if alerts.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for a in alerts {
            pipe.cmd("XADD")
                .arg(self.keys.alerts())
                .arg("MAXLEN")
                .arg("~")
                .arg(ALERTS_MAX_LEN)
                .arg("*")
                .arg("kind")
                .arg(kind)
                .arg("product_id")
                .arg(a.product_id)
                .arg("redis")
                .arg(a.redis)
                .arg("mysql")
                .arg(a.mysql)
                .arg("in_flight")
                .arg(a.in_flight)
                .arg("delta")
                .arg(a.delta)
                .arg("seq")
                .arg(seq)
                .ignore();
        }
        let mut conn = self.conn();
        bounded("redis (alerts)", CALL_TIMEOUT, pipe.query_async::<()>(&mut conn)).await
    }

    /// Appends to `{q}:alerts` that the shard `queue` lost writes: its sequence was at
    /// `redis_seq` where MySQL had seen `mysql_seq`, and the heal (`crate::heal`) brought
    /// `records` records in line and set the stock of `products` products.
    pub(crate) async fn add_lost_writes_alert(
        &self,
        queue: &str,
        redis_seq: i64,
        mysql_seq: i64,
        records: u64,
        products: usize,
    ) -> Result<()> {
        let mut conn = self.conn();
        let mut cmd = redis::cmd("XADD");
        cmd.arg(self.keys.alerts())
            .arg("MAXLEN")
            .arg("~")
            .arg(ALERTS_MAX_LEN)
            .arg("*")
            .arg("kind")
            .arg("lost_writes")
            .arg("queue")
            .arg(queue)
            .arg("redis_seq")
            .arg(redis_seq)
            .arg("mysql_seq")
            .arg(mysql_seq)
            .arg("records")
            .arg(records)
            .arg("products")
            .arg(products);
        bounded("redis (alerts)", CALL_TIMEOUT, cmd.query_async::<()>(&mut conn)).await
    }

    /// The latest `count` drifts in `{q}:alerts`, newest first.
    pub(crate) async fn latest_alerts(&self, count: usize) -> Result<Vec<super::StreamEntry>> {
        self.latest_entries("redis (alerts)", self.keys.alerts(), count).await
    }

    /// Deletes every key of the queue: the fixed ones (the outcome stream among them), the
    /// heartbeats of the workers in the registry, the stock of `product_ids` and every
    /// reservation record. The fixed and per-product keys are named; the records, one per
    /// reservation, are found with SCAN on the server that holds the queue's slot.
    pub async fn reset(&self, product_ids: &[i64]) -> Result<()> {
        let k = &self.keys;
        let mut conn = self.conn();
        let workers: Vec<String> = bounded("redis (reset)", CALL_TIMEOUT, conn.smembers(k.workers())).await?;
        let mut keys = k.fixed().to_vec();
        keys.extend(workers.iter().map(|id| k.worker(id)));
        keys.extend(product_ids.iter().map(|p| k.stock(*p)));
        for chunk in keys.chunks(1000) {
            bounded("redis (reset)", CALL_TIMEOUT, conn.del::<_, ()>(chunk)).await?;
        }
        // the sequence starts again: this process must not take that for lost writes
        self.highest_seq.store(0, std::sync::atomic::Ordering::Relaxed);
        self.unlink_records().await
    }

    /// Unlinks every reservation record `{q}:r:*`, a SCAN step (COUNT 1000) and one UNLINK
    /// of what it found at a time, so that Redis is never busy for long. Never KEYS: it would
    /// stop Redis for as long as it walks the whole keyspace.
    async fn unlink_records(&self) -> Result<()> {
        let pattern = format!("{}*", self.keys.record(""));
        let mut conn = self.conn();
        let mut cursor = 0u64;
        loop {
            let mut scan = redis::cmd("SCAN");
            scan.arg(cursor).arg("MATCH").arg(&pattern).arg("COUNT").arg(RESET_SCAN_COUNT);
            let (next, found): (u64, Vec<String>) =
                bounded("redis (reset)", CALL_TIMEOUT, conn.query_at(self.keys.prefix(), &scan)).await?;
            if !found.is_empty() {
                bounded("redis (reset)", CALL_TIMEOUT, conn.unlink::<_, ()>(&found)).await?;
            }
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }
}

/// The reservation time reserve.lua stamps on an entry (`"at"`, unix ms), if it has one.
fn reserved_at(entry: &[u8]) -> Option<i64> {
    #[derive(serde::Deserialize)]
    struct Stamped {
        at: Option<i64>,
    }
    serde_json::from_slice::<Stamped>(entry).ok()?.at
}

#[cfg(test)]
mod tests {
    use super::reserved_at;

    #[test]
    fn the_reservation_time_is_read_from_stamped_entries_only() {
        let stamped = br#"{"event_id":"a","product_id":1,"qty":1,"seq":3,"at":1767225600123}"#;
        assert_eq!(reserved_at(stamped), Some(1_767_225_600_123));
        assert_eq!(reserved_at(br#"{"event_id":"a","product_id":1,"qty":1}"#), None);
        assert_eq!(reserved_at(br#"{"at":"soon"}"#), None);
        assert_eq!(reserved_at(b"garbage"), None);
    }
}
