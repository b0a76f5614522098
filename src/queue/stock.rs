//! A product's Redis stock: what shoppers can still buy.
//!
//! It moves in three ways only: a reservation takes from it together with enqueuing the event
//! (reserve.lua), an operator's change moves it by a delta stamped with the sequence
//! (adjust.lua), and a correction adds to it (INCRBY, never SET, so reservations made
//! meanwhile survive). Give-backs ride on settle.lua and dead_drop.lua.

use redis::AsyncCommands;

use super::{CALL_TIMEOUT, Queue, next_value, scripts};
use crate::error::{Result, bounded};

/// The answer to one reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reservation {
    /// Stock taken and the event enqueued with this sequence number, at `reserved_at` (unix
    /// ms, Redis clock).
    Reserved { event_id: String, seq: i64, remaining: i64, reserved_at: i64 },
    /// The same reservation was made before under this event id and has not ended (or is
    /// applied): nothing taken, and this is its first answer with its current state.
    Replayed { event_id: String, seq: i64, state: String, reserved_at: i64, updated_at: i64 },
    /// The event id belongs to another reservation (other product, qty or buyer), or to one
    /// that ended: nothing taken.
    IdUsed { state: String },
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
    /// Takes `qty` of `product_id`, enqueues event `event_id` on pending and records the
    /// reservation, atomically; or answers a replay from the record (`lua/reserve.lua`). The
    /// script checks its arguments again: a bad one is an error reply.
    pub(crate) async fn reserve(
        &self,
        product_id: i64,
        qty: i64,
        event_id: &str,
        buyer: Option<&str>,
    ) -> Result<Reservation> {
        let keys = self.keys();
        let mut invocation = scripts::RESERVE.prepare_invoke();
        invocation
            .key(keys.stock(product_id))
            .key(keys.pending())
            .key(keys.seq())
            .key(keys.inflight())
            .key(keys.record(event_id))
            .arg(event_id)
            .arg(product_id)
            .arg(qty)
            .arg(buyer.unwrap_or(""));
        let reply: Vec<redis::Value> = self.invoke("redis (reserve)", &invocation).await?;
        let mut values = reply.into_iter();
        let code: i64 = next_value(&mut values)?;
        let seq: i64 = next_value(&mut values)?;
        let event_id = event_id.to_string();
        Ok(match code {
            1 => {
                let remaining = next_value(&mut values)?;
                Reservation::Reserved { event_id, seq, remaining, reserved_at: next_value(&mut values)? }
            }
            2 => Reservation::Replayed {
                event_id,
                seq,
                state: next_value(&mut values)?,
                reserved_at: next_value(&mut values)?,
                updated_at: next_value(&mut values)?,
            },
            -2 => Reservation::IdUsed { state: next_value(&mut values)? },
            0 => Reservation::SoldOut { available: next_value(&mut values)? },
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
