//! The healer: when Redis lost its latest writes, stop selling on the shard, set what Redis
//! remembers from MySQL, and sell again (docs/operations.md "Redis lost writes").
//!
//! With `appendfsync everysec` a crash may lose about a second of writes, and a failover to a
//! replica that lagged loses what it had not received. Redis then goes back in time as a
//! whole, consistently, while MySQL keeps what workers committed meanwhile. Three things
//! differ from a Redis that merely restarted:
//!
//! * **reservations made in the lost second and applied by a worker**: MySQL deducted them,
//!   Redis has their stock back: units on sale that MySQL no longer has. Their records and
//!   entries are gone, so `status` answers 404 for them (docs/outcomes.md says what an order
//!   service does then).
//! * **entries claimed and applied in the lost second** are back in the queue, still counted
//!   in flight: they will be delivered again and only acknowledged (`stock_log`), but until
//!   then the check would count them twice. Each is marked *unsure*, as an entry whose claim
//!   expired is, so that the check looks its row up.
//! * **the sequence went back**, and numbers MySQL already holds would be handed out again.
//!
//! Detection: the sequence only grows, so each process notes the highest number it got per
//! shard, and one lower than that halts the shard at once ([`crate::queue::Queue`]'s
//! `observe_seq`: a reservation, a claim, a restock, a release); the janitor, on every pass,
//! and `stockq check` compare the sequence with the highest number MySQL has seen (read
//! first, so that nothing numbered meanwhile can look lost).
//!
//! The heal, in order, each step safe to repeat:
//! 1. `heal.lua` 'begin': reservations and restocks on the shard are refused (`{q}:limits`
//!    field `!heal`, under a lease that the healer renews), and the sequence moves past
//!    MySQL's;
//! 2. the `stock_log` rows applied (or released) under numbers from a little before the
//!    loss on are compared with the records Redis kept (`heal.lua` 'mark');
//! 3. the check, now exact again, finds every product whose stock differs, and the repair
//!    sets it (INCRBY, confirmed by two runs, as `stockq check --repair` does);
//! 4. an alert and an error line say what happened; `heal.lua` 'end' sells again.
//!
//! A healer that dies leaves the lease to run out ([`HEAL_LEASE`]); the janitor's next pass
//! heals again. Two healers at once: the second finds the lease taken and leaves it.

use std::time::Duration;

use crate::check;
use crate::error::Result;
use crate::ledger::Ledger;
use crate::queue::shards::shard_of;
use crate::queue::{HEAL_LEASE, Marked, Queue, Shards};
use crate::telemetry::metrics as m;

/// How far before the first number seen after the loss the heal looks in `stock_log`: the
/// loss itself is rarely more than a second of a sale, and what others numbered before the
/// loss was seen is a fraction of that. Looking further only costs reading more rows, each of
/// them found in order and left alone.
const LOOKBACK: i64 = 200_000;
/// Records compared per call of heal.lua: a call stays within a few milliseconds.
const MARK_CHUNK: usize = 500;

/// What one heal did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct HealReport {
    /// The shard's queue (`{q}` or `{q:N}`).
    pub queue: String,
    /// The sequence Redis went back to, as first seen (by the process that halted the
    /// shard, or by the healer), and the highest number MySQL had seen.
    pub redis_seq: i64,
    pub mysql_seq: i64,
    pub marked: Marked,
    /// Products whose Redis stock was set from MySQL.
    pub products: usize,
    /// Units taken off Redis (units on sale that MySQL no longer had), and put back.
    pub units_removed: i64,
    pub units_restored: i64,
}

/// Heals every shard whose Redis lost writes or that a process halted. Returns the heals
/// done (none when every shard is whole, or another healer holds a lease).
pub(crate) async fn heal_lost_writes(shards: &Shards, ledger: &Ledger) -> Result<Vec<HealReport>> {
    // MySQL first: every number in it was handed out by Redis before it was read. Each
    // shard has a sequence of its own, compared with the numbers of its own products' rows.
    let mysql_seqs = ledger.max_seq_per_shard(shards.len()).await?;
    let mut reports = Vec::new();
    for (index, queue) in shards.all().iter().enumerate() {
        let mysql_seq = mysql_seqs[index].unwrap_or(0);
        let watch = queue.watch().await?;
        if watch.halted || watch.seq < mysql_seq {
            reports.extend(heal(shards, ledger, index, mysql_seq).await?);
        }
    }
    Ok(reports)
}

/// Heals shard `index` (see the module docs); `None` when another healer holds it.
pub(crate) async fn heal(
    shards: &Shards,
    ledger: &Ledger,
    index: usize,
    mysql_seq: i64,
) -> Result<Option<HealReport>> {
    let queue = &shards.all()[index];
    let token = uuid::Uuid::now_v7().simple().to_string();
    let Some((redis_seq, since)) = queue.heal_begin(mysql_seq, &token).await? else {
        return Ok(None);
    };
    tracing::error!(
        queue = queue.keys().prefix(),
        redis_seq = since.min(redis_seq),
        mysql_seq,
        "Redis lost writes: reservations stop on this shard while it is healed from MySQL"
    );
    let work = repair_shard(shards, ledger, index, since.min(redis_seq), mysql_seq);
    let healed = while_renewing(queue, &token, work).await;
    // a heal that failed leaves the shard halted: the janitor's next pass heals it again
    queue.heal_end(&token, healed.is_ok()).await?;
    let report = healed?;
    metrics::counter!(m::HEALS).increment(1);
    tracing::error!(
        queue = report.queue,
        redis_seq = report.redis_seq,
        mysql_seq = report.mysql_seq,
        unsure = report.marked.unsure,
        holds_applied = report.marked.applied,
        released = report.marked.released,
        products = report.products,
        units_removed = report.units_removed,
        units_restored = report.units_restored,
        "Redis lost writes and is healed: its stock is MySQL's less what is in flight; selling again"
    );
    shards
        .first()
        .add_lost_writes_alert(
            &report.queue,
            report.redis_seq,
            report.mysql_seq,
            report.marked.unsure + report.marked.applied + report.marked.released,
            report.products,
        )
        .await?;
    Ok(Some(report))
}

/// Steps 2 and 3 of the heal, for shard `index`.
async fn repair_shard(
    shards: &Shards,
    ledger: &Ledger,
    index: usize,
    redis_seq: i64,
    mysql_seq: i64,
) -> Result<HealReport> {
    let queue = &shards.all()[index];
    let mut report =
        HealReport { queue: queue.keys().prefix().to_string(), redis_seq, mysql_seq, ..Default::default() };
    // A Redis that lost everything keeps no record to compare: the check alone restores it.
    if redis_seq > 0 {
        let settled = ledger.settled_since((redis_seq - LOOKBACK).max(0)).await?;
        let mine: Vec<_> = settled
            .into_iter()
            .filter(|s| delivered_by(s.shard, s.product_id, shards.len()) == index)
            .collect();
        for chunk in mine.chunks(MARK_CHUNK) {
            let marked = queue.heal_mark(chunk).await?;
            report.marked.unsure += marked.unsure;
            report.marked.applied += marked.applied;
            report.marked.released += marked.released;
        }
    }
    let books = check::check_twice(shards, ledger).await?;
    let mut alerts = Vec::new();
    // a spread product is repaired in the bucket on this shard: its total is what counts
    let on_this_shard = |p: &check::ProductBooks| {
        shard_of(p.product_id, shards.len()) == index || p.buckets.iter().any(|b| b.shard == index)
    };
    for p in books.drifts().filter(|p| on_this_shard(p)) {
        queue.repair_stock(p.product_id, -p.delta).await?;
        report.products += 1;
        if p.delta > 0 {
            report.units_removed += p.delta;
        } else {
            report.units_restored -= p.delta;
        }
        alerts.push(crate::queue::Alert {
            product_id: p.product_id,
            redis: p.redis.unwrap_or(0),
            mysql: p.mysql,
            in_flight: p.in_flight,
            delta: p.delta,
        });
    }
    shards.first().add_alerts("healed", books.seq, &alerts).await?;
    Ok(report)
}

/// Drives `work` while renewing the heal's lease every third of it.
async fn while_renewing<T>(queue: &Queue, token: &str, work: impl Future<Output = T>) -> T {
    let period: Duration = HEAL_LEASE / 3;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tokio::pin!(work);
    loop {
        tokio::select! {
            done = &mut work => return done,
            _ = tick.tick() => {
                if let Err(e) = queue.heal_renew(token).await {
                    tracing::warn!(error = %e, "could not renew the heal's lease");
                }
            }
        }
    }
}

/// The shard that delivered a settled row: the one it recorded, else its product's.
fn delivered_by(shard: Option<i16>, product_id: i64, shards: usize) -> usize {
    shard
        .and_then(|s| usize::try_from(s).ok())
        .filter(|s| *s < shards)
        .unwrap_or_else(|| shard_of(product_id, shards))
}
