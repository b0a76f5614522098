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

use sqlx::Row;

use crate::error::{Error, Result, bounded};
use crate::ledger::{self, Ledger};
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
    let mut tx = bounded("mysql (begin)", ledger::CALL_TIMEOUT, ledger.pool().begin()).await?;
    bounded("mysql (stock)", ledger::CALL_TIMEOUT, async {
        sqlx::query("INSERT IGNORE INTO products (id, stock) VALUES (?, 0)")
            .bind(product_id)
            .execute(&mut *tx)
            .await
    })
    .await?;
    let row = bounded("mysql (stock)", ledger::CALL_TIMEOUT, async {
        sqlx::query("SELECT stock FROM products WHERE id = ? FOR UPDATE")
            .bind(product_id)
            .fetch_one(&mut *tx)
            .await
    })
    .await?;
    let before: i64 = row.try_get(0).map_err(Error::Database)?;
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

    let committed = bounded("mysql (stock)", ledger::CALL_TIMEOUT, async {
        sqlx::query("UPDATE products SET stock = ? WHERE id = ?")
            .bind(after)
            .bind(product_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO stock_adjustments (seq, product_id, delta) VALUES (?, ?, ?)")
            .bind(seq)
            .bind(product_id)
            .bind(delta)
            .execute(&mut *tx)
            .await?;
        tx.commit().await
    })
    .await;
    if let Err(e) = committed {
        if let Err(r) = queue.undo_adjust(product_id, delta).await {
            tracing::error!(product_id, delta, error = %r, "could not undo the Redis half of a failed stock change; run `stockq check --repair`");
        }
        return Err(e);
    }
    Ok(Adjusted { product_id, delta, mysql: after, redis })
}
