//! Operators' stock changes (`stock set`, `stock add`), applied to both stores together.
//!
//! The product's MySQL row is locked first; then Redis moves by the same delta (adjust.lua:
//! relative, so reservations made meanwhile survive, and stamped with the sequence so the
//! check can order it); then MySQL commits with a `stock_adjustments` row carrying that
//! sequence number. Redis refuses a delta that would take its stock below zero: those units
//! are reserved and not yet deducted, and MySQL could not honour them.
//!
//! If the MySQL commit fails after Redis moved, Redis is moved back. Should that fail too
//! (both stores unreachable at once), the check reports the drift and `check --repair`
//! corrects it.

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

pub async fn adjust(queue: &Queue, ledger: &Ledger, product_id: i64, change: Change) -> Result<Adjusted> {
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

    let committed = adjustment.commit(delta, seq).await;
    if let Err(e) = committed {
        if let Err(r) = queue.undo_adjust(product_id, delta).await {
            tracing::error!(product_id, delta, error = %r, "could not undo the Redis half of a failed stock change; run `stockq check --repair`");
        }
        return Err(e);
    }
    Ok(Adjusted { product_id, delta, mysql: after, redis })
}
