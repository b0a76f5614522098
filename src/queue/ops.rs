//! What the surfaces around the queue need beside an entry's life: its depths for `stats` and
//! the metrics, a ping for `/healthz`, the alerts stream the janitor's check writes, and the
//! reset of the demo and the benchmark.

use std::collections::BTreeMap;
use std::time::Duration;

use redis::AsyncCommands;

use super::{CALL_TIMEOUT, Queue, millis};
use crate::error::{Result, bounded};

/// Entries kept in `{q}:alerts` (approximately: trimmed with `MAXLEN ~`).
const ALERTS_MAX_LEN: usize = 10_000;
/// Keys a SCAN step of the reset looks at, and records a step unlinks at most.
const RESET_SCAN_COUNT: usize = 1000;

/// One shard's list lengths, oldest claim and running totals.
pub struct Depths {
    pub pending: u64,
    pub processing: u64,
    pub dead: u64,
    pub oldest_claim_age_ms: Option<u64>,
    pub counters: BTreeMap<String, u64>,
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
    /// Reads the queue's depths in one round trip; the oldest claim's age is measured on the
    /// Redis clock, the one its deadline was set by.
    pub async fn depths(&self) -> Result<Depths> {
        let keys = &self.keys;
        let mut conn = self.conn();
        type Reply = (u64, u64, u64, Vec<(Vec<u8>, f64)>, BTreeMap<String, u64>, (u64, u64));
        let (pending, processing, dead, oldest, counters, time): Reply =
            bounded("redis (stats)", CALL_TIMEOUT, async {
                redis::pipe()
                    .llen(keys.pending())
                    .llen(keys.processing())
                    .llen(keys.dead())
                    .zrange_withscores(keys.claims(), 0, 0)
                    .hgetall(keys.counters())
                    .cmd("TIME")
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        let now_ms = time.0 * 1000 + time.1 / 1000;
        let vt_ms = millis(self.visibility_timeout);
        // a claim's deadline is its last claim or renewal plus the visibility timeout
        let oldest_claim_age_ms = oldest
            .first()
            .map(|(_, deadline)| now_ms.saturating_sub((*deadline as u64).saturating_sub(vt_ms)));
        Ok(Depths { pending, processing, dead, oldest_claim_age_ms, counters })
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
    /// number of the check that found it.
    pub(crate) async fn add_alerts(&self, seq: i64, alerts: &[Alert]) -> Result<()> {
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
