//! `stockq stats`: what the queue holds, who works on it, and each product's books.

use std::cmp::Reverse;
use std::collections::BTreeMap;

use serde::Serialize;

use super::Page;
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
    /// Reservations held unpaid (`reserve --hold`), not yet confirmed, cancelled or expired.
    pub(crate) held: u64,
    /// Cancelled reservations whose entry still waits in the queue, to be dropped.
    pub(crate) cancelling: u64,
    /// Cancelled applied reservations whose quantity MySQL has not got back yet.
    pub(crate) releasing: u64,
    /// How long the oldest pending event has waited for a worker, in ms (Redis clock); `None`
    /// when nothing waits or the oldest entry carries no time.
    pub(crate) oldest_pending_age_ms: Option<u64>,
    /// Time until the earliest claim deadline, in ms (Redis clock); negative: overdue by that
    /// much (its worker stopped renewing it; the janitor re-queues it on its next pass).
    /// `None`: nothing is claimed. Read from the deadline itself, so every caller sees the
    /// same figure whatever its own visibility timeout.
    pub(crate) claim_expires_in_ms: Option<i64>,
    pub(crate) live_workers: Vec<Heartbeat>,
    /// Events settled per second by all live workers, over their last few seconds.
    pub(crate) throughput: f64,
    /// Running totals since the queue was created: applied, rejected, dead, requeued, ...,
    /// every one of them, 0 until it first moves.
    pub(crate) counters: BTreeMap<String, u64>,
    pub(crate) consistent: bool,
    /// Products the consistency check covered.
    pub(crate) products_total: usize,
    /// Products among them whose delta is not 0.
    pub(crate) drifting_total: usize,
    /// The page of `products` shown: skipped products, and the most shown (0: all).
    pub(crate) offset: usize,
    pub(crate) limit: usize,
    /// A page of the products' Redis, MySQL and in-flight figures, from one consistency
    /// check, drifting first (largest delta first), then by product id.
    pub(crate) products: Vec<ProductBooks>,
}

pub(crate) async fn collect(shards: &Shards, ledger: &Ledger, page: Page) -> Result<Stats> {
    let mut stats = Stats {
        queue: shards.all().iter().map(|q| q.keys().prefix()).collect::<Vec<_>>().join(","),
        pending: 0,
        processing: 0,
        dead: 0,
        held: 0,
        cancelling: 0,
        releasing: 0,
        oldest_pending_age_ms: None,
        claim_expires_in_ms: None,
        live_workers: Vec::new(),
        throughput: 0.0,
        counters: BTreeMap::new(),
        consistent: true,
        products_total: 0,
        drifting_total: 0,
        offset: page.offset,
        limit: page.limit.unwrap_or(0),
        products: Vec::new(),
    };
    for queue in shards.all() {
        let depths = queue.depths().await?;
        stats.pending += depths.pending;
        stats.processing += depths.processing;
        stats.dead += depths.dead;
        stats.held += depths.held;
        stats.cancelling += depths.cancelling;
        stats.releasing += depths.releasing;
        stats.oldest_pending_age_ms = stats.oldest_pending_age_ms.max(depths.oldest_pending_age_ms);
        stats.claim_expires_in_ms = match (stats.claim_expires_in_ms, depths.claim_expires_in_ms) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        for (name, n) in depths.counters {
            *stats.counters.entry(name).or_default() += n;
        }
    }
    stats.live_workers = shards.first().live_workers().await?;
    stats.throughput = stats.live_workers.iter().fold(0.0, |sum, w| sum + w.rate);
    let report = check::check(shards, ledger).await?;
    stats.consistent = report.is_consistent();
    stats.products_total = report.products.len();
    stats.drifting_total = report.drifts().count();
    stats.products = page.of(drifting_first(report.products));
    Ok(stats)
}

/// The products an operator needs to see first: the largest drift first, then by id.
fn drifting_first(mut products: Vec<ProductBooks>) -> Vec<ProductBooks> {
    products.sort_unstable_by_key(|p| (Reverse(p.delta.unsigned_abs()), p.product_id));
    products
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_largest_drift_either_way_comes_first_then_the_ids() {
        let books = |product_id, delta: i64| ProductBooks {
            product_id,
            redis: Some(0),
            mysql: 0,
            in_flight: 0,
            expected_redis: 0,
            delta,
        };
        let products = vec![books(1, 0), books(2, 3), books(3, i64::MIN), books(4, -3), books(5, 0)];
        let order: Vec<i64> = drifting_first(products).iter().map(|p| p.product_id).collect();
        assert_eq!(order, vec![3, 2, 4, 1, 5]);
    }
}
