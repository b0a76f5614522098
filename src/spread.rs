//! One hot product on several Redis cores: its stock spread over buckets on different shards
//! (docs/cluster.md "One hot product on several shards").
//!
//! A flash sale is one product, and a product's stock key, events and records live in one
//! slot: one Redis core, however large the cluster. `stockq stock spread <p> <k>` splits the
//! product's Redis stock into k buckets, bucket b on the shard after its own by b, each an
//! ordinary stock key of that shard. MySQL still sees one product row.
//!
//! * **Routing** (`Shards::route`): a reservation goes to the bucket chosen from its buyer
//!   (or its event id when it has none), so a buyer's units under a limit and a retried event
//!   id are decided in one bucket, in one atomic step, exactly as for a product that is not
//!   spread. Its entry, record, outcome and give-backs stay in that shard.
//! * **Transfers** (`lua/transfer.lua`): units move between buckets in two steps, out of one
//!   shard then into the other, each recorded under the transfer's id, so that a transfer
//!   cut by a crash is finished by the janitor ([`tend`]) and none is applied twice.
//! * **No stranded units**: a shopper whose bucket is short gets units moved to it from the
//!   others before being told "sold out" ([`refill`]); "sold out" means the product as a
//!   whole cannot serve the quantity. Ahead of need, the janitor moves units to the buckets
//!   that sell fastest, so that most reservations never wait for a transfer.
//! * **The books**: MySQL stock − in flight == Σ buckets + units on their way; the check reads
//!   every bucket and the transfers, each ordered by its own shard's sequence (src/check.rs).

use std::time::Duration;

use crate::error::{Error, Result};
use crate::ledger::Ledger;
use crate::queue::shards::{SPREAD_REFRESH, shard_of};
use crate::queue::{Outgoing, Queue, Shards};

/// How long a spread or a gather may run before another may start.
const SPREAD_LEASE: Duration = Duration::from_secs(60);
/// A transfer out of a shard not marked arrived after this is finished by the janitor.
const CUT_AFTER: Duration = Duration::from_secs(2);
/// A received transfer is remembered this long after it arrived (the check needs it only
/// around its own snapshots, which take milliseconds).
const REMEMBER_RECEIVED: Duration = Duration::from_secs(600);

/// Moves up to `wanted` units of `product_id` (at least `least`, else none) from shard `from`
/// to shard `to`. Returns the units moved. A crash between the two steps leaves the transfer
/// recorded on its way; [`tend`] finishes it.
pub(crate) async fn transfer(
    shards: &Shards,
    product_id: i64,
    from: usize,
    to: usize,
    wanted: i64,
    least: i64,
) -> Result<i64> {
    if from == to || wanted <= 0 {
        return Ok(0);
    }
    let id = uuid::Uuid::now_v7().simple().to_string();
    let giver = &shards.all()[from];
    let (units, take_seq, _left) = giver.transfer_out(&id, product_id, wanted, least, to as u16).await?;
    if units == 0 {
        return Ok(0);
    }
    let out = Outgoing { id, product_id, units, to_shard: to as u16, take_seq, at_ms: 0 };
    shards.all()[to].transfer_in(&out, from as u16).await?;
    giver.transfer_done(&out.id).await?;
    metrics::counter!(crate::telemetry::metrics::TRANSFERS).increment(1);
    Ok(units)
}

/// Each bucket's stock: (shard, units), a missing key as 0.
pub(crate) async fn bucket_stocks(
    shards: &Shards,
    product_id: i64,
    buckets: u16,
) -> Result<Vec<(usize, i64)>> {
    let mut stocks = Vec::with_capacity(buckets as usize);
    for shard in shards.bucket_shards(product_id, buckets) {
        stocks.push((shard, shards.all()[shard].stock(product_id).await?.unwrap_or(0)));
    }
    Ok(stocks)
}

/// Each shard's stock of the product: (shard, units), a missing key as 0. A spread product's
/// units are in its buckets, and for moments in a shard it no longer uses (a gather waits for
/// every process to route elsewhere; a cancel gives back where the reservation was).
async fn every_shard_stock(shards: &Shards, product_id: i64) -> Result<Vec<(usize, i64)>> {
    let mut stocks = Vec::with_capacity(shards.len());
    for (shard, queue) in shards.all().iter().enumerate() {
        stocks.push((shard, queue.stock(product_id).await?.unwrap_or(0)));
    }
    Ok(stocks)
}

/// Moves units to the shard `to` for a shopper `need` units short: half of what the richest
/// other shard holds, at least `need` (a transfer then serves the next shoppers too), and
/// when no shard alone has `need`, what the others hold until it is met. Returns the units
/// moved: 0 only when every other shard is empty.
pub(crate) async fn refill(shards: &Shards, product_id: i64, to: usize, need: i64) -> Result<i64> {
    let stocks = every_shard_stock(shards, product_id).await?;
    let mut others: Vec<(usize, i64)> =
        stocks.into_iter().filter(|(s, units)| *s != to && *units > 0).collect();
    others.sort_by_key(|(_, units)| -units);
    let mut moved = 0;
    for (from, units) in others {
        if moved >= need {
            break;
        }
        let wanted = if moved == 0 { (units / 2).max(need) } else { need - moved };
        moved += transfer(shards, product_id, from, to, wanted, 1).await?;
    }
    Ok(moved)
}

/// A spread product's units on every shard plus those on their way between two, or `None`
/// when units moved while it read. The shards are read one after another, so a transfer
/// could be in neither bucket when each was read; read twice around its transfers on their
/// way, a transfer is in one of the three reads or changed the second from the first.
pub(crate) async fn units_anywhere(shards: &Shards, product_id: i64) -> Result<Option<i64>> {
    let before = every_shard_stock(shards, product_id).await?;
    let mut on_their_way = 0;
    for queue in shards.all() {
        on_their_way += queue
            .outgoing()
            .await?
            .iter()
            .filter(|o| o.product_id == product_id)
            .map(|o| o.units)
            .sum::<i64>();
    }
    let after = every_shard_stock(shards, product_id).await?;
    if before != after {
        return Ok(None);
    }
    Ok(Some(after.iter().map(|(_, u)| (*u).max(0)).sum::<i64>() + on_their_way))
}

/// The product's units in Redis: its own shard's, or a spread product's on every shard
/// together (`None`: unknown product).
pub async fn total_stock(shards: &Shards, product_id: i64) -> Result<Option<i64>> {
    if !shards.is_spread(product_id).await {
        return shards.for_product(product_id).stock(product_id).await;
    }
    let home = shards.for_product(product_id).stock(product_id).await?;
    let stocks = every_shard_stock(shards, product_id).await?;
    Ok(home.map(|_| stocks.iter().map(|(_, u)| u).sum()))
}

/// Moves every bucket's units of a spread product to its own shard, where an operator's
/// change (`stock set`, `stock add`) is made: a removal can then take any unit that is not
/// reserved. The janitor spreads them again on its next pass. Nothing for a product that is
/// not spread.
pub(crate) async fn gather_for_change(shards: &Shards, product_id: i64) -> Result<u64> {
    let buckets = shards.buckets(product_id).await;
    if buckets <= 1 {
        return Ok(0);
    }
    let home = shard_of(product_id, shards.all().len());
    let mut transfers = 0;
    for (shard, units) in bucket_stocks(shards, product_id, buckets).await? {
        if shard != home && units > 0 && transfer(shards, product_id, shard, home, units, 1).await? > 0 {
            transfers += 1;
        }
    }
    Ok(transfers)
}

/// What a spread did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpreadReport {
    pub product_id: i64,
    pub buckets_before: u16,
    pub buckets: u16,
    /// Each bucket's shard and units afterwards.
    pub stocks: Vec<(usize, i64)>,
    pub transfers: u64,
}

/// Spreads `product_id`'s Redis stock over `buckets` shards (1 gathers it back into its own),
/// during a sale: no unit is lost, doubled or refused meanwhile.
pub async fn spread(shards: &Shards, ledger: &Ledger, product_id: i64, buckets: u16) -> Result<SpreadReport> {
    let n = shards.all().len();
    if buckets < 1 || usize::from(buckets) > n {
        return Err(Error::usage(format!(
            "a product can be spread over 1 to {n} buckets (STOCKQ_SHARDS={n}), not {buckets}"
        )));
    }
    if ledger.product_stock(product_id).await?.is_none() {
        return Err(Error::usage(format!(
            "unknown product {product_id}: stock it first with `stockq stock set`"
        )));
    }
    shards.refresh_spread().await;
    if buckets == 1 && shards.buckets(product_id).await <= 1 {
        return Err(Error::usage(format!("product {product_id} is not spread: nothing to gather")));
    }
    let home = shards.for_product(product_id);
    if home.has_buyer_limit(product_id).await? {
        return Err(Error::usage(format!(
            "product {product_id} has a buyer limit: a buyer's units are counted in one bucket, so spread it \
             before setting the limit, or remove the limit first (`stockq stock limit {product_id} 0`)"
        )));
    }
    let first = shards.first();
    let token = uuid::Uuid::now_v7().simple().to_string();
    if !first.lock_spread(product_id, &token, SPREAD_LEASE).await? {
        return Err(Error::usage(format!(
            "a spread of product {product_id} is running; try again when it ends"
        )));
    }
    let result = respread(shards, product_id, buckets).await;
    first.unlock_spread(product_id, &token).await?;
    result
}

async fn respread(shards: &Shards, product_id: i64, buckets: u16) -> Result<SpreadReport> {
    shards.refresh_spread().await;
    if !shards.is_spread(product_id).await {
        // registered first, still in one bucket: a process that knows the product spread
        // refills a short bucket from the others, one that does not would answer "sold out"
        // when its own shard runs dry. Units move once every process has read this.
        shards.first().set_spread(product_id, 1).await?;
        tokio::time::sleep(SPREAD_REFRESH + Duration::from_millis(200)).await;
        shards.refresh_spread().await;
    }
    let before = shards.buckets(product_id).await;
    let mut report = SpreadReport { product_id, buckets_before: before, buckets, ..Default::default() };
    let targets = shards.bucket_shards(product_id, buckets);
    // every bucket has its stock key before any shopper is routed to it
    for &shard in &targets {
        shards.all()[shard].ensure_stock_key(product_id).await?;
    }
    shards.first().set_spread(product_id, buckets.max(1)).await?;
    if buckets < before {
        // the buckets dropped receive no reservation once every process has read the change
        tokio::time::sleep(SPREAD_REFRESH + Duration::from_millis(200)).await;
    }
    shards.refresh_spread().await;
    report.transfers += gather_strays(shards, product_id, buckets).await?;
    report.transfers += even_out(shards, product_id, buckets).await?;
    report.stocks = bucket_stocks(shards, product_id, buckets).await?;
    Ok(report)
}

/// Moves the units on shards that are not among the product's buckets (a bucket dropped by a
/// gather, or units given back there later by a cancel) to its own shard. Returns transfers.
async fn gather_strays(shards: &Shards, product_id: i64, buckets: u16) -> Result<u64> {
    let n = shards.all().len();
    let home = shard_of(product_id, n);
    let targets = shards.bucket_shards(product_id, buckets);
    let mut transfers = 0;
    for shard in (0..n).filter(|s| !targets.contains(s)) {
        let units = shards.all()[shard].stock(product_id).await?.unwrap_or(0);
        if units > 0 && transfer(shards, product_id, shard, home, units, 1).await? > 0 {
            transfers += 1;
        }
    }
    Ok(transfers)
}

/// Evens the buckets out: each gets its share of the total, in transfers from those above it
/// to those below. Returns transfers.
async fn even_out(shards: &Shards, product_id: i64, buckets: u16) -> Result<u64> {
    let stocks = bucket_stocks(shards, product_id, buckets).await?;
    let plan = plan_moves(&stocks.iter().map(|(_, u)| *u).collect::<Vec<_>>(), &vec![1; stocks.len()]);
    let mut transfers = 0;
    for (from, to, units) in plan {
        if transfer(shards, product_id, stocks[from].0, stocks[to].0, units, 1).await? > 0 {
            transfers += 1;
        }
    }
    Ok(transfers)
}

/// The moves (from bucket, to bucket, units) that bring `stocks` to shares of their total in
/// proportion to `weights` (each at least 1), largest surplus to largest shortfall first.
pub(crate) fn plan_moves(stocks: &[i64], weights: &[u64]) -> Vec<(usize, usize, i64)> {
    let total: i64 = stocks.iter().sum();
    let weight: u64 = weights.iter().sum::<u64>().max(1);
    let mut targets: Vec<i64> =
        weights.iter().map(|w| (total as i128 * *w as i128 / weight as i128) as i64).collect();
    // what division leaves over goes to the first buckets
    let mut left = total - targets.iter().sum::<i64>();
    for t in targets.iter_mut() {
        if left == 0 {
            break;
        }
        *t += 1;
        left -= 1;
    }
    let mut surplus: Vec<(usize, i64)> = stocks
        .iter()
        .zip(&targets)
        .enumerate()
        .map(|(i, (s, t))| (i, s - t))
        .filter(|(_, d)| *d > 0)
        .collect();
    let mut short: Vec<(usize, i64)> = stocks
        .iter()
        .zip(&targets)
        .enumerate()
        .map(|(i, (s, t))| (i, t - s))
        .filter(|(_, d)| *d > 0)
        .collect();
    surplus.sort_by_key(|(_, d)| -d);
    short.sort_by_key(|(_, d)| -d);
    let mut moves = Vec::new();
    let (mut a, mut b) = (0, 0);
    while a < surplus.len() && b < short.len() {
        let units = surplus[a].1.min(short[b].1);
        moves.push((surplus[a].0, short[b].0, units));
        surplus[a].1 -= units;
        short[b].1 -= units;
        if surplus[a].1 == 0 {
            a += 1;
        }
        if short[b].1 == 0 {
            b += 1;
        }
    }
    moves
}

/// What one tending pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Tended {
    /// Transfers cut by a crash, finished now.
    pub(crate) finished: u64,
    /// Transfers made ahead of need (or to gather units left on a shard no longer a bucket).
    pub(crate) moved: u64,
}

/// The janitor's care of spread products: finishes the transfers a crash cut, forgets the
/// received ones long arrived, gathers units left outside the buckets, and moves units ahead
/// of need to the buckets that sold most since the last pass (`sold` keeps each bucket's
/// stock of the last pass).
pub(crate) async fn tend(
    shards: &Shards,
    last: &mut std::collections::HashMap<(i64, usize), i64>,
) -> Result<Tended> {
    let mut tended = Tended::default();
    if shards.all().len() <= 1 {
        return Ok(tended);
    }
    tended.finished = finish_cut(shards).await?;
    shards.refresh_spread().await;
    let spread = shards.first().spread_map().await?;
    for (&product_id, &buckets) in &spread {
        let buckets = buckets.clamp(1, shards.all().len() as u16);
        tended.moved += gather_strays(shards, product_id, buckets).await?;
        if buckets <= 1 {
            continue;
        }
        let stocks = bucket_stocks(shards, product_id, buckets).await?;
        // each bucket's sales since the last pass (transfers in between count as sales of the
        // giver and gifts of the receiver: a fair enough weight for what comes next)
        let weights: Vec<u64> = stocks
            .iter()
            .map(|(shard, units)| {
                let before = last.insert((product_id, *shard), *units).unwrap_or(*units);
                (before - units).max(0) as u64 + 1
            })
            .collect();
        let units: Vec<i64> = stocks.iter().map(|(_, u)| *u).collect();
        let total: i64 = units.iter().sum();
        for (from, to, moved) in plan_moves(&units, &weights) {
            // small corrections are not worth a transfer: a short bucket refills on demand
            if moved * 10 < total / i64::from(buckets).max(1) {
                continue;
            }
            if transfer(shards, product_id, stocks[from].0, stocks[to].0, moved, 1).await? > 0 {
                tended.moved += 1;
                last.insert((product_id, stocks[from].0), units[from] - moved);
                last.insert((product_id, stocks[to].0), units[to] + moved);
            }
        }
    }
    Ok(tended)
}

/// Finishes the transfers out of every shard that were not marked arrived within
/// [`CUT_AFTER`] (the mover died between its steps): gives each to its receiver (once, by
/// its id) and marks it arrived. Forgets received transfers older than
/// [`REMEMBER_RECEIVED`] whose sender no longer has them on their way. Returns transfers
/// finished.
async fn finish_cut(shards: &Shards) -> Result<u64> {
    let mut finished = 0;
    let now = now_ms(shards.first()).await?;
    let mut on_their_way = std::collections::HashSet::new();
    for (from, queue) in shards.all().iter().enumerate() {
        for out in queue.outgoing().await? {
            on_their_way.insert(out.id.clone());
            if now - out.at_ms < CUT_AFTER.as_millis() as i64 {
                continue;
            }
            let Some(receiver) = shards.all().get(usize::from(out.to_shard)) else { continue };
            receiver.transfer_in(&out, from as u16).await?;
            queue.transfer_done(&out.id).await?;
            finished += 1;
        }
    }
    for queue in shards.all() {
        let old: Vec<String> = queue
            .received()
            .await?
            .into_iter()
            .filter(|r| now - r.at_ms > REMEMBER_RECEIVED.as_millis() as i64 && !on_their_way.contains(&r.id))
            .map(|r| r.id)
            .collect();
        queue.forget_received(&old).await?;
    }
    if finished > 0 {
        tracing::info!(finished, "finished transfers a crash had cut");
    }
    Ok(finished)
}

async fn now_ms(queue: &Queue) -> Result<i64> {
    queue.redis_time_ms().await
}

#[cfg(test)]
mod tests {
    use super::plan_moves;

    #[test]
    fn moves_bring_buckets_to_their_shares() {
        assert_eq!(plan_moves(&[90, 0, 0], &[1, 1, 1]), [(0, 1, 30), (0, 2, 30)]);
        assert_eq!(plan_moves(&[10, 10, 10], &[1, 1, 1]), []);
        assert_eq!(plan_moves(&[0, 0, 12], &[1, 2, 1]), [(2, 1, 6), (2, 0, 3)]);
        for (stocks, weights) in
            [(vec![7, 0, 3], vec![1, 1, 1]), (vec![100, 1], vec![5, 1]), (vec![1, 0], vec![1, 1])]
        {
            let mut after = stocks.clone();
            for (from, to, units) in plan_moves(&stocks, &weights) {
                assert!(units > 0);
                after[from] -= units;
                after[to] += units;
            }
            assert_eq!(after.iter().sum::<i64>(), stocks.iter().sum::<i64>(), "no unit made or lost");
            assert!(after.iter().all(|u| *u >= 0));
        }
    }
}
