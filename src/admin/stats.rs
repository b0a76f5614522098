//! `stockq stats`: what the queue holds, who works on it, and each product's books.
//!
//! Two parts, because they cost very differently: the [`Overview`] is a few Redis round
//! trips (the dashboard polls it every second or two), the [`BooksPage`] comes from one
//! consistency check over every product (about a second for 100,000).

use std::cmp::Reverse;
use std::collections::BTreeMap;

use serde::Serialize;

use super::Page;
use crate::admin::control;
use crate::check::{self, ProductBooks};
use crate::error::Result;
use crate::ledger::Ledger;
use crate::queue::{Heartbeat, Paused, Shards};

#[derive(Debug, Serialize)]
pub(crate) struct Stats {
    #[serde(flatten)]
    pub(crate) overview: Overview,
    #[serde(flatten)]
    pub(crate) books: BooksPage,
}

/// The queue's depths, workers and running totals, from Redis alone.
#[derive(Debug, Serialize)]
pub(crate) struct Overview {
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
    /// While `stockq pause` holds every worker's claims: since when and by whom.
    pub(crate) deductions_paused: Option<Paused>,
    /// Products whose sale is paused, with since when (unix ms).
    pub(crate) paused_products: Vec<PausedProduct>,
    /// Reservations refused, per product and kind (sold_out, limit, paused,
    /// unknown_product), by every process since the queue was created.
    pub(crate) refusals: BTreeMap<i64, BTreeMap<String, u64>>,
}

#[derive(Debug, Serialize)]
pub(crate) struct PausedProduct {
    pub(crate) product_id: i64,
    pub(crate) since: i64,
}

/// A page of the books from one consistency check.
#[derive(Debug, Serialize)]
pub(crate) struct BooksPage {
    pub(crate) consistent: bool,
    /// Products the consistency check covered.
    pub(crate) products_total: usize,
    /// Products among them whose delta is not 0.
    pub(crate) drifting_total: usize,
    /// The page of `products` shown: skipped products, and the most shown (0: all).
    pub(crate) offset: usize,
    pub(crate) limit: usize,
    /// A page of the products' Redis, MySQL and in-flight figures, drifting first (largest
    /// delta first), then by product id.
    pub(crate) products: Vec<ProductBooks>,
}

impl BooksPage {
    /// `page` of `sorted`, the products of one check in [`drifting_first`] order.
    pub(crate) fn of(sorted: &[ProductBooks], page: Page) -> BooksPage {
        let drifting_total = sorted.iter().take_while(|p| p.delta != 0).count();
        BooksPage {
            consistent: drifting_total == 0,
            products_total: sorted.len(),
            drifting_total,
            offset: page.offset,
            limit: page.limit.unwrap_or(0),
            products: page.slice(sorted).to_vec(),
        }
    }
}

pub(crate) async fn collect(shards: &Shards, ledger: &Ledger, page: Page) -> Result<Stats> {
    let overview = overview(shards).await?;
    let report = check::check(shards, ledger).await?;
    Ok(Stats { overview, books: BooksPage::of(&drifting_first(report.products), page) })
}

/// The queue's depths over every shard, its live workers and its running totals.
pub(crate) async fn overview(shards: &Shards) -> Result<Overview> {
    let mut o = Overview {
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
        deductions_paused: None,
        paused_products: Vec::new(),
        refusals: BTreeMap::new(),
    };
    for queue in shards.all() {
        let depths = queue.depths().await?;
        o.pending += depths.pending;
        o.processing += depths.processing;
        o.dead += depths.dead;
        o.held += depths.held;
        o.cancelling += depths.cancelling;
        o.releasing += depths.releasing;
        o.oldest_pending_age_ms = o.oldest_pending_age_ms.max(depths.oldest_pending_age_ms);
        o.claim_expires_in_ms = match (o.claim_expires_in_ms, depths.claim_expires_in_ms) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        for (name, n) in depths.counters {
            *o.counters.entry(name).or_default() += n;
        }
    }
    o.live_workers = shards.first().live_workers().await?;
    o.throughput = o.live_workers.iter().fold(0.0, |sum, w| sum + w.rate);
    o.deductions_paused = control::deductions_paused(shards).await?;
    o.paused_products = control::paused_products(shards)
        .await?
        .into_iter()
        .map(|(product_id, since)| PausedProduct { product_id, since })
        .collect();
    o.refusals = crate::reservations::refusals::counted(shards).await?;
    Ok(o)
}

/// The products an operator needs to see first: the largest drift first, then by id.
pub(crate) fn drifting_first(mut products: Vec<ProductBooks>) -> Vec<ProductBooks> {
    products.sort_unstable_by_key(|p| (Reverse(p.delta.unsigned_abs()), p.product_id));
    products
}

#[cfg(test)]
mod tests {
    use super::*;

    fn books(product_id: i64, delta: i64) -> ProductBooks {
        ProductBooks {
            product_id,
            redis: Some(0),
            mysql: 0,
            in_flight: 0,
            expected_redis: 0,
            delta,
            buckets: Vec::new(),
            in_transit: 0,
        }
    }

    #[test]
    fn the_largest_drift_either_way_comes_first_then_the_ids() {
        let products = vec![books(1, 0), books(2, 3), books(3, i64::MIN), books(4, -3), books(5, 0)];
        let order: Vec<i64> = drifting_first(products).iter().map(|p| p.product_id).collect();
        assert_eq!(order, vec![3, 2, 4, 1, 5]);
    }

    #[test]
    fn a_books_page_counts_the_drifting_products_of_the_whole_check() {
        let sorted = drifting_first(vec![books(1, 0), books(2, 3), books(3, 0), books(4, -1)]);
        let page = BooksPage::of(&sorted, Page::new(3, 2));
        assert_eq!((page.products_total, page.drifting_total, page.consistent), (4, 2, false));
        assert_eq!(page.products.iter().map(|p| p.product_id).collect::<Vec<_>>(), vec![3]);
        assert!(BooksPage::of(&sorted[2..], Page::new(0, 0)).consistent);
    }
}
