//! `stockq stats`: what the queue holds, who works on it, and each product's books.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::check::{self, ProductBooks};
use crate::error::{Result, bounded};
use crate::ledger::Ledger;
use crate::queue::{CALL_TIMEOUT, Heartbeat, Queue, Shards};

#[derive(Debug, Serialize)]
pub(crate) struct Stats {
    pub(crate) queue: String,
    pub(crate) pending: u64,
    pub(crate) processing: u64,
    pub(crate) dead: u64,
    /// Age of the oldest claim still held, in milliseconds (from its last claim or renewal).
    pub(crate) oldest_claim_age_ms: Option<u64>,
    pub(crate) live_workers: Vec<Heartbeat>,
    /// Events settled per second by all live workers, over their last few seconds.
    pub(crate) throughput: f64,
    /// Running totals since the queue was created: applied, rejected, dead, requeued, ...
    pub(crate) counters: BTreeMap<String, u64>,
    /// Per product: Redis, MySQL and in-flight figures, from one consistency check.
    pub(crate) products: Vec<ProductBooks>,
    pub(crate) consistent: bool,
}

pub(crate) async fn collect(shards: &Shards, ledger: &Ledger) -> Result<Stats> {
    let mut stats = Stats {
        queue: shards.all().iter().map(|q| q.keys().prefix()).collect::<Vec<_>>().join(","),
        pending: 0,
        processing: 0,
        dead: 0,
        oldest_claim_age_ms: None,
        live_workers: Vec::new(),
        throughput: 0.0,
        counters: BTreeMap::new(),
        products: Vec::new(),
        consistent: true,
    };
    for queue in shards.all() {
        let depths = depths(queue).await?;
        stats.pending += depths.pending;
        stats.processing += depths.processing;
        stats.dead += depths.dead;
        stats.oldest_claim_age_ms = stats.oldest_claim_age_ms.max(depths.oldest_claim_age_ms);
        for (name, n) in depths.counters {
            *stats.counters.entry(name).or_default() += n;
        }
    }
    stats.live_workers = shards.first().live_workers().await?;
    stats.throughput = stats.live_workers.iter().fold(0.0, |sum, w| sum + w.rate);
    let report = check::check(shards, ledger).await?;
    stats.consistent = report.is_consistent();
    stats.products = report.products;
    Ok(stats)
}

/// One shard's list lengths, oldest claim and running totals.
pub struct Depths {
    pub pending: u64,
    pub processing: u64,
    pub dead: u64,
    pub oldest_claim_age_ms: Option<u64>,
    pub counters: BTreeMap<String, u64>,
}

/// Reads one shard's depths in one round trip.
pub async fn depths(queue: &Queue) -> Result<Depths> {
    let keys = queue.keys();
    let mut conn = queue.conn();
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
    let vt_ms = crate::queue::millis(queue.visibility_timeout());
    // a claim's deadline is its last claim or renewal plus the visibility timeout
    let oldest_claim_age_ms =
        oldest.first().map(|(_, deadline)| now_ms.saturating_sub((*deadline as u64).saturating_sub(vt_ms)));
    Ok(Depths { pending, processing, dead, oldest_claim_age_ms, counters })
}
