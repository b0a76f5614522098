//! A product's Redis stock: what shoppers can still buy.
//!
//! It moves in three ways only: a reservation takes from it together with enqueuing the event
//! (reserve.lua), an operator's change moves it by a delta stamped with the sequence
//! (adjust.lua), and a correction adds to it (INCRBY, never SET, so reservations made
//! meanwhile survive). Give-backs ride on settle.lua and dead_drop.lua.

use redis::AsyncCommands;

use super::{CALL_TIMEOUT, Queue, scripts};
use crate::error::{Result, bounded};

/// The answer to one reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reservation {
    /// Stock taken and the event enqueued with this sequence number.
    Reserved { event_id: String, seq: i64, remaining: i64 },
    /// Not enough stock: nothing taken.
    SoldOut { available: i64 },
    /// The product has no Redis stock key (never stocked with `stockq stock set`).
    UnknownProduct,
}

/// What adjust.lua did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Adjustment {
    /// The stock moved to `stock`; the change carries sequence number `seq`.
    Applied { seq: i64, stock: i64 },
    /// Nothing changed: the delta would take the stock, which holds `stock`, below zero.
    Refused { stock: i64 },
}

impl Queue {
    /// Takes `qty` of `product_id` and enqueues event `event_id` on pending, atomically
    /// (`lua/reserve.lua`). The script checks its arguments again: a bad one is an error reply.
    pub(crate) async fn reserve(&self, product_id: i64, qty: i64, event_id: &str) -> Result<Reservation> {
        let keys = self.keys();
        let mut invocation = scripts::RESERVE.prepare_invoke();
        invocation
            .key(keys.stock(product_id))
            .key(keys.pending())
            .key(keys.seq())
            .key(keys.inflight())
            .arg(event_id)
            .arg(product_id)
            .arg(qty);
        let (code, seq, stock): (i64, i64, i64) = self.invoke("redis (reserve)", &invocation).await?;
        Ok(match code {
            1 => Reservation::Reserved { event_id: event_id.to_string(), seq, remaining: stock },
            0 => Reservation::SoldOut { available: stock },
            _ => Reservation::UnknownProduct,
        })
    }

    /// Moves a product's stock by an operator's `delta`, stamped with the next sequence number
    /// so that the check can order it (`lua/adjust.lua`). A zero delta creates a missing key
    /// at 0.
    pub(crate) async fn adjust(&self, product_id: i64, delta: i64) -> Result<Adjustment> {
        let mut invocation = scripts::ADJUST.prepare_invoke();
        invocation.key(self.keys.stock(product_id)).key(self.keys.seq()).arg(delta);
        let (ok, seq, stock): (i64, i64, i64) = self.invoke("redis (adjust)", &invocation).await?;
        Ok(if ok == 1 { Adjustment::Applied { seq, stock } } else { Adjustment::Refused { stock } })
    }

    /// Takes back an applied [`Queue::adjust`] whose MySQL half failed. Returns the stock.
    pub(crate) async fn undo_adjust(&self, product_id: i64, delta: i64) -> Result<i64> {
        self.add_to_stock("redis (adjust)", product_id, -delta).await
    }

    /// A product's stock; `None` when the product was never stocked.
    pub(crate) async fn stock(&self, product_id: i64) -> Result<Option<i64>> {
        let mut conn = self.conn();
        bounded("redis (stock)", CALL_TIMEOUT, conn.get(self.keys.stock(product_id))).await
    }

    /// INCRBY on a product's stock key; `what` names the call in a timeout error.
    pub(super) async fn add_to_stock(&self, what: &'static str, product_id: i64, by: i64) -> Result<i64> {
        let mut conn = self.conn();
        bounded(what, CALL_TIMEOUT, conn.incr(self.keys.stock(product_id), by)).await
    }
}
