//! Operators' stock changes (`stock set`, `stock add`), applied to both stores together.
//!
//! The product's MySQL row is locked first; then Redis moves by the same delta (adjust.lua:
//! relative, so reservations made meanwhile survive, and stamped with the sequence so the
//! check can order it); then MySQL commits with a `stock_adjustments` row carrying that
//! sequence number. Redis refuses a delta that would take its stock below zero: those units
//! are reserved and not yet deducted, and MySQL could not honour them.
//!
//! If the MySQL COMMIT fails after Redis moved, MySQL is asked what happened before anything
//! is undone ([`settle_unknown_commit`]).

use std::time::Duration;

use crate::error::one_line;
use crate::error::{Error, Result};
use crate::ledger::Ledger;
use crate::queue::{Adjustment, Queue};

/// A stock change.
#[derive(Debug, Clone, Copy)]
pub enum Change {
    /// Make MySQL stock this value.
    Set(i64),
    /// Add this (negative removes).
    Add(i64),
}

/// The result of a stock change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Adjusted {
    pub product_id: i64,
    pub delta: i64,
    pub mysql: i64,
    pub redis: i64,
}

/// Changes a product's stock in both stores. A deadlock with the workers' batches on the
/// product's row (MySQL picks one transaction to roll back) is tried again, up to
/// [`DEADLOCK_TRIES`] times: it fails either before Redis moved or at the COMMIT, which
/// [`settle_unknown_commit`] found rolled back and undid in Redis, so nothing is doubled.
pub async fn adjust(queue: &Queue, ledger: &Ledger, product_id: i64, change: Change) -> Result<Adjusted> {
    let mut tries = 1;
    loop {
        match adjust_once(queue, ledger, product_id, change).await {
            Err(Error::Database(e)) if tries < DEADLOCK_TRIES && crate::error::is_transient_sql(&e) => {
                tracing::debug!(product_id, error = %e, "a stock change met a deadlock; trying again");
                tokio::time::sleep(Duration::from_millis(20 * tries as u64)).await;
                tries += 1;
            }
            done => return done,
        }
    }
}

/// Tries of a stock change that MySQL rolled back as a deadlock victim.
const DEADLOCK_TRIES: u32 = 5;

async fn adjust_once(queue: &Queue, ledger: &Ledger, product_id: i64, change: Change) -> Result<Adjusted> {
    crate::event::validate_product_id(product_id).map_err(Error::usage)?;
    if let Change::Set(qty) = change
        && qty < 0
    {
        return Err(Error::usage(format!("stock cannot be negative (got {qty})")));
    }
    let adjustment = ledger.begin_adjustment(product_id).await?;
    let before = adjustment.stock();
    let delta = match change {
        Change::Set(qty) => qty - before,
        Change::Add(d) => d,
    };
    let after = before.checked_add(delta).filter(|s| *s >= 0).ok_or_else(|| {
        Error::usage(format!("cannot remove {} from product {product_id}: MySQL holds {before}", -delta))
    })?;

    let (seq, redis) = match queue.adjust(product_id, delta).await? {
        Adjustment::Applied { seq, stock } => (seq, stock),
        Adjustment::Refused { stock: redis } => {
            return Err(Error::usage(format!(
                "cannot remove {} from product {product_id}: Redis holds only {redis} (the rest is \
                 reserved and not yet deducted, or Redis lost its data: see `stockq check`); wait for \
                 the workers or remove less",
                -delta
            )));
        }
    };

    let connection_id = adjustment.connection_id();
    if let Err(failed) = adjustment.commit(delta, seq).await {
        let change = UnconfirmedChange { product_id, delta, seq, connection_id };
        match settle_unknown_commit(queue, ledger, &change, SETTLE_WITHIN).await? {
            CommitOutcome::RolledBack => return Err(failed),
            CommitOutcome::Committed => {
                tracing::warn!(product_id, delta, seq, error = %failed, "a stock change's COMMIT failed, but MySQL has it: done");
            }
        }
    }
    Ok(Adjusted { product_id, delta, mysql: after, redis })
}

/// How long a stock change whose COMMIT failed keeps trying to learn from MySQL whether it
/// happened.
const SETTLE_WITHIN: Duration = Duration::from_secs(10);

/// A stock change whose Redis half moved and whose MySQL COMMIT failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnconfirmedChange {
    pub product_id: i64,
    pub delta: i64,
    /// The sequence number of the Redis half, carried by the change's `stock_adjustments` row.
    pub seq: i64,
    /// The MySQL connection that held the change's transaction (`CONNECTION_ID()`).
    pub connection_id: u64,
}

/// What became of an [`UnconfirmedChange`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitOutcome {
    /// MySQL has the change (only its answer was lost): Redis keeps it too.
    Committed,
    /// MySQL rolled it back: Redis has been moved back.
    RolledBack,
}

/// Settles a stock change whose COMMIT failed after its Redis half moved.
///
/// A failed COMMIT does not mean the change did not happen: the answer can be lost after the
/// server committed. Moving Redis back then would leave the stores apart by the whole delta,
/// and a restock undone in Redis alone turns into units MySQL holds but nobody can buy, a
/// removal undone in Redis alone into units shoppers can reserve that MySQL will refuse. So
/// MySQL decides, through the change's `stock_adjustments` row (found by its sequence number):
///
/// - the row is there: the change committed; Redis keeps it ([`CommitOutcome::Committed`]);
/// - the row is absent once the connection that held the transaction is gone (ended first,
///   see `Ledger::adjustment_committed`): MySQL rolled it back and never will commit it; Redis
///   is moved back ([`CommitOutcome::RolledBack`]);
/// - MySQL cannot be asked within `within`: nothing is undone on a guess. The error says the
///   outcome is unknown; if the commit did not happen, Redis is off by the delta, which
///   `stockq check` shows and `stockq check --repair` corrects (both are exact).
pub async fn settle_unknown_commit(
    queue: &Queue,
    ledger: &Ledger,
    change: &UnconfirmedChange,
    within: Duration,
) -> Result<CommitOutcome> {
    let UnconfirmedChange { product_id, delta, seq, connection_id } = *change;
    let unsettled = |why: String| Error::StockChange { product_id, delta, seq, why };
    let committed =
        ledger.adjustment_committed(product_id, seq, connection_id, within).await.map_err(|e| {
            let e = one_line(&e.to_string());
            unsettled(format!(
                "its MySQL COMMIT failed and whether it happened is unknown: MySQL could not be \
                 asked ({e}); Redis keeps the change, so if MySQL did not commit it `stockq check` \
                 shows the drift and `stockq check --repair` corrects it"
            ))
        })?;
    if committed {
        return Ok(CommitOutcome::Committed);
    }
    queue.undo_adjust(product_id, delta).await.map_err(|e| {
        unsettled(format!(
            "rolled back in MySQL, but Redis could not be moved back ({}); `stockq check \
             --repair` corrects it",
            one_line(&e.to_string())
        ))
    })?;
    Ok(CommitOutcome::RolledBack)
}
