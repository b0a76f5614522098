//! `stockq stats`: what the queue holds, who works on it, and each product's books.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::check::{self, ProductBooks};
use crate::error::Result;
use crate::ledger::Ledger;
use crate::queue::{Heartbeat, Shards};

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
        let depths = queue.depths().await?;
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
