//! `stockq stats`: what the queue holds, who works on it, and each product's books.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::check::{self, ProductBooks};
use crate::error::{Result, bounded};
use crate::heartbeat::{self, Heartbeat};
use crate::ledger::Ledger;
use crate::queue::{CALL_TIMEOUT, Queue};

#[derive(Debug, Serialize)]
pub struct Stats {
    pub queue: String,
    pub pending: u64,
    pub processing: u64,
    pub dead: u64,
    /// Age of the oldest claim still held, in milliseconds (from its last claim or renewal).
    pub oldest_claim_age_ms: Option<u64>,
    pub live_workers: Vec<Heartbeat>,
    /// Events settled per second by all live workers, over their last few seconds.
    pub throughput: f64,
    /// Running totals since the queue was created: applied, rejected, dead, requeued, ...
    pub counters: BTreeMap<String, u64>,
    /// Per product: Redis, MySQL and in-flight figures, from one consistency check.
    pub products: Vec<ProductBooks>,
    pub consistent: bool,
}

pub async fn collect(queue: &Queue, ledger: &Ledger) -> Result<Stats> {
    let keys = queue.keys();
    let mut conn = queue.conn();
    let (pending, processing, dead, oldest, counters, time): (
        u64,
        u64,
        u64,
        Vec<(Vec<u8>, f64)>,
        BTreeMap<String, u64>,
        (u64, u64),
    ) = bounded("redis (stats)", CALL_TIMEOUT, async {
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
    let oldest_claim_age_ms = oldest
        .first()
        .map(|(_, deadline)| now_ms.saturating_sub((*deadline as u64).saturating_sub(vt_ms)));
    let live_workers = heartbeat::live_workers(queue).await?;
    let throughput = live_workers.iter().map(|w| w.rate).sum();
    let report = check::check(queue, ledger).await?;
    Ok(Stats {
        queue: keys.prefix().to_string(),
        pending,
        processing,
        dead,
        oldest_claim_age_ms,
        live_workers,
        throughput,
        counters,
        consistent: report.is_consistent(),
        products: report.products,
    })
}
