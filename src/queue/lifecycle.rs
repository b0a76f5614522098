//! Holds, confirms, cancels, expiries and releases: the life of a reservation after
//! `reserve` (docs/lifecycle.md). Each transition is one script
//! (`lua/confirm.lua`, `lua/cancel.lua`, `lua/released.lua`) that decides on the record's
//! state and moves the stock in the same step.

use redis::AsyncCommands;

use super::{CALL_TIMEOUT, Entry, Queue, ReservationState, millis, next_value, scripts};
use crate::error::{Result, bounded};
use crate::event::Event;

/// What a confirm did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Confirm {
    /// `held` → `queued` now.
    Queued,
    /// Already `queued`, `dead` or `applied`: nothing changed.
    Unchanged { state: ReservationState },
    /// The reservation has ended (or is being cancelled); a hold past its deadline is expired
    /// by the confirm itself and answers `expired`.
    Ended { state: ReservationState },
    /// No record of it in this shard.
    Unknown,
}

/// What a cancel did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cancel {
    /// The state the reservation is left in (`cancelled`, `cancelling`, `releasing`, or the
    /// state it already had); `changed` when this call moved it.
    Done { state: ReservationState, changed: bool },
    /// No record of it in this shard.
    Unknown,
}

/// An applied reservation the ledger knows and Redis has forgotten (its record expired):
/// enough to release it, and to give its buyer's units back when a limit counted them.
#[derive(Debug, Clone)]
pub(crate) struct Forgotten {
    pub(crate) product_id: i64,
    pub(crate) qty: i64,
    pub(crate) seq: Option<i64>,
    pub(crate) buyer: Option<String>,
    pub(crate) limit_epoch: Option<i64>,
}

/// Holds the janitor ends per call: each costs about 25 µs of Redis time (a record read and
/// written, the stock, the in-flight units, an outcome entry), so a call stays within a few
/// milliseconds however many are due, and reservations are served between calls.
pub(crate) const EXPIRE_CHUNK: usize = 100;

impl Queue {
    /// The product of a reservation's record, to name its stock key to the scripts.
    async fn record_product(&self, event_id: &str) -> Result<Option<i64>> {
        Ok(self.record(event_id).await?.map(|r| r.product_id))
    }

    /// Moves a held reservation to the queue (`lua/confirm.lua`).
    pub async fn confirm(&self, event_id: &str) -> Result<Confirm> {
        let Some(product_id) = self.record_product(event_id).await? else { return Ok(Confirm::Unknown) };
        let k = &self.keys;
        let mut invocation = scripts::CONFIRM.prepare_invoke();
        invocation
            .key(k.record(event_id))
            .key(k.stock(product_id))
            .key(k.pending())
            .key(k.holds())
            .key(k.inflight())
            .key(k.outcomes())
            .key(k.bought())
            .arg(event_id)
            .arg(millis(self.retention.record_ttl))
            .arg(self.retention.outcomes_maxlen);
        let (code, state): (i64, ReservationState) = self.invoke("redis (confirm)", &invocation).await?;
        Ok(match code {
            1 => Confirm::Queued,
            0 => Confirm::Unchanged { state },
            -1 => Confirm::Unknown,
            _ => Confirm::Ended { state },
        })
    }

    /// Cancels a reservation in whatever state it is (`lua/cancel.lua`). `forgotten` releases
    /// an applied reservation whose record expired, from its `stock_log` row.
    pub(crate) async fn cancel(&self, event_id: &str, forgotten: Option<Forgotten>) -> Result<Cancel> {
        let product_id = match (self.record_product(event_id).await?, &forgotten) {
            (Some(p), _) => p,
            (None, Some(f)) => f.product_id,
            (None, None) => return Ok(Cancel::Unknown),
        };
        let mut invocation = self.lifecycle_invocation("cancel");
        invocation.key(self.keys.record(event_id)).key(self.keys.stock(product_id)).arg(event_id);
        if let Some(f) = forgotten {
            let text = |n: Option<i64>| n.map(|n| n.to_string()).unwrap_or_default();
            invocation
                .arg(f.product_id)
                .arg(f.qty)
                .arg(text(f.seq))
                .arg(f.buyer.unwrap_or_default())
                .arg(text(f.limit_epoch));
        }
        let (state, changed): (String, i64) = self.invoke("redis (cancel)", &invocation).await?;
        if changed == 1 {
            // its units are back: this process sells them again at once
            self.sold_out.forget(product_id);
        }
        Ok(if state.is_empty() {
            Cancel::Unknown
        } else {
            Cancel::Done { state: ReservationState::from(state.as_str()), changed: changed == 1 }
        })
    }

    fn lifecycle_invocation(&self, mode: &str) -> redis::ScriptInvocation<'static> {
        let k = &self.keys;
        let mut invocation = scripts::CANCEL.prepare_invoke();
        invocation
            .key(k.inflight())
            .key(k.outcomes())
            .key(k.bought())
            .key(k.holds())
            .key(k.pending())
            .key(k.cancels())
            .key(k.dead())
            .key(k.releases())
            .arg(mode.to_string())
            .arg(millis(self.retention.record_ttl))
            .arg(self.retention.outcomes_maxlen);
        invocation
    }

    /// Ends up to [`EXPIRE_CHUNK`] holds whose deadline has passed on the Redis clock.
    /// Returns (due holds looked at, holds expired now); the caller repeats while a full
    /// chunk was due.
    pub(crate) async fn expire_due(&self) -> Result<(usize, u64)> {
        let mut conn = self.conn();
        let (secs, micros): (i64, i64) =
            bounded("redis (time)", CALL_TIMEOUT, redis::cmd("TIME").query_async(&mut conn)).await?;
        let now = secs * 1000 + micros / 1000;
        let due: Vec<String> = bounded(
            "redis (holds)",
            CALL_TIMEOUT,
            conn.zrangebyscore_limit(self.keys.holds(), "-inf", now, 0, EXPIRE_CHUNK as isize),
        )
        .await?;
        if due.is_empty() {
            return Ok((0, 0));
        }
        let products = self.record_products(&due).await?;
        let mut invocation = self.lifecycle_invocation("expire");
        for (id, product) in due.iter().zip(&products) {
            // a hold without a record (Redis lost it) is removed by the script: any product
            // names a valid key for it
            invocation.key(self.keys.record(id)).key(self.keys.stock(product.unwrap_or(0))).arg(id.as_str());
        }
        let reply: Vec<redis::Value> = self.invoke("redis (expire)", &invocation).await?;
        let expired: u64 = next_value(&mut reply.into_iter())?;
        Ok((due.len(), expired))
    }

    /// Time until the earliest hold deadline, if there is a hold.
    pub(crate) async fn next_hold_in(&self) -> Result<Option<std::time::Duration>> {
        let mut conn = self.conn();
        let (secs, micros): (i64, i64) =
            bounded("redis (time)", CALL_TIMEOUT, redis::cmd("TIME").query_async(&mut conn)).await?;
        let now = secs * 1000 + micros / 1000;
        let first: Vec<(String, i64)> =
            bounded("redis (holds)", CALL_TIMEOUT, conn.zrange_withscores(self.keys.holds(), 0, 0)).await?;
        Ok(first.first().map(|(_, at)| std::time::Duration::from_millis((at - now).max(0) as u64)))
    }

    /// The releases waiting, oldest first, at most `max`.
    pub(crate) async fn waiting_releases(&self, max: usize) -> Result<Vec<Entry>> {
        let mut conn = self.conn();
        bounded("redis (releases)", CALL_TIMEOUT, conn.lrange(self.keys.releases(), 0, max as isize - 1))
            .await
    }

    /// A fresh number of the queue's sequence, for a batch of releases: MySQL records it, so
    /// the check can tell what MySQL released after its snapshot.
    pub(crate) async fn next_seq(&self) -> Result<i64> {
        let mut conn = self.conn();
        let floor = self.seq_floor();
        let seq = bounded("redis (seq)", CALL_TIMEOUT, conn.incr(self.keys.seq(), 1)).await?;
        self.observe_seq(seq, floor).await?;
        Ok(seq)
    }

    /// Acknowledges releases MySQL has applied (`lua/released.lua`). Returns how many left
    /// the list now.
    pub(crate) async fn settle_releases(&self, released: &[(Entry, Event)]) -> Result<u64> {
        if released.is_empty() {
            return Ok(0);
        }
        let k = &self.keys;
        let mut invocation = scripts::RELEASED.prepare_invoke();
        invocation.key(k.releases()).key(k.inflight()).key(k.outcomes()).key(k.counters());
        for (_, event) in released {
            invocation.key(k.record(&event.event_id));
        }
        invocation.arg(millis(self.retention.record_ttl)).arg(self.retention.outcomes_maxlen);
        for (entry, e) in released {
            invocation
                .arg(entry.as_slice())
                .arg(e.event_id.as_str())
                .arg(e.product_id)
                .arg(e.qty)
                .arg(e.seq.map(|s| s.to_string()).unwrap_or_default());
        }
        self.invoke("redis (released)", &invocation).await
    }
}
