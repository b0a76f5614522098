//! A product's Redis stock: what shoppers can still buy.
//!
//! It moves in three ways only: a reservation takes from it together with enqueuing the event
//! (reserve.lua), an operator's change moves it by a delta stamped with the sequence
//! (adjust.lua), and a correction adds to it (INCRBY, never SET, so reservations made
//! meanwhile survive). Give-backs ride on settle.lua and dead_drop.lua.

use redis::AsyncCommands;

use super::{CALL_TIMEOUT, Queue, ReservationState, next_value, scripts};

/// A script's 0 for "no deadline".
fn deadline(ms: i64) -> Option<i64> {
    (ms > 0).then_some(ms)
}
use crate::error::{Result, bounded};

/// The answer to one reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reservation {
    /// Stock taken and the event enqueued with this sequence number, at `reserved_at` (unix
    /// ms, Redis clock); or, with a `deadline`, held until then (unenqueued until confirmed).
    Reserved { event_id: String, seq: i64, remaining: i64, reserved_at: i64, deadline: Option<i64> },
    /// The same reservation was made before under this event id and has not ended (or is
    /// applied): nothing taken, and this is its first answer with its current state.
    Replayed {
        event_id: String,
        seq: i64,
        state: ReservationState,
        reserved_at: i64,
        updated_at: i64,
        deadline: Option<i64>,
        /// Its version now (docs/outcomes.md); `None` for a record written before versions.
        version: Option<i64>,
    },
    /// The event id belongs to another reservation (other product, qty or buyer), or to one
    /// that ended: nothing taken.
    IdUsed { state: ReservationState },
    /// Not enough stock: nothing taken.
    SoldOut { available: i64 },
    /// The product has no Redis stock key (never stocked with `stockq stock set`).
    UnknownProduct,
    /// The product limits what one buyer may hold, and no buyer was given: nothing taken.
    BuyerRequired { limit: i64 },
    /// The buyer holds `held` units of the product and `limit` is all one buyer may hold:
    /// nothing taken.
    LimitReached { limit: i64, held: i64 },
    /// The product's shard is being healed after Redis lost writes (docs/operations.md):
    /// nothing taken; try again, at the latest at `until` (unix ms, Redis clock).
    Healing { until: i64 },
    /// The product's sale is paused (`stockq stock pause`) since `since` (unix ms): nothing
    /// taken.
    Paused { since: i64 },
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
    /// Takes `qty` of `product_id`, enqueues event `event_id` on pending (or holds it until
    /// `hold` passes) and records the reservation, atomically; or answers a replay from the
    /// record. The reservation goes to Redis with the others that arrive meanwhile, in one
    /// call of `lua/reserve_group.lua` (`group`), and is answered exactly as it would be
    /// alone (`lua/reserve.lua`'s contract). The script checks its arguments again: a bad
    /// one is an error for this reservation alone.
    pub(crate) async fn reserve(
        &self,
        product_id: i64,
        qty: i64,
        event_id: &str,
        buyer: Option<&str>,
        hold: Option<std::time::Duration>,
    ) -> Result<Reservation> {
        let ask = super::group::Ask {
            event_id: event_id.to_string(),
            product_id,
            qty,
            buyer: buyer.map(str::to_string),
            hold,
        };
        let floor = self.seq_floor();
        let reply = self.grouper().reserve(ask).await?;
        let mut values = reply.into_iter();
        let code: i64 = next_value(&mut values)?;
        let seq: i64 = next_value(&mut values)?;
        let event_id = event_id.to_string();
        Ok(match code {
            1 => {
                if self.observe_reservation(seq, floor, &event_id, product_id).await? {
                    return Ok(Reservation::Healing { until: 0 });
                }
                let remaining = next_value(&mut values)?;
                if remaining == 0 {
                    self.sold_out.note(product_id, 0);
                }
                Reservation::Reserved {
                    event_id,
                    seq,
                    remaining,
                    reserved_at: next_value(&mut values)?,
                    deadline: deadline(next_value(&mut values)?),
                }
            }
            2 => Reservation::Replayed {
                event_id,
                seq,
                state: next_value(&mut values)?,
                reserved_at: next_value(&mut values)?,
                updated_at: next_value(&mut values)?,
                deadline: deadline(next_value(&mut values)?),
                version: Some(next_value::<i64>(&mut values).unwrap_or(0)).filter(|v| *v > 0),
            },
            -2 => Reservation::IdUsed { state: next_value(&mut values)? },
            0 => {
                let available = next_value(&mut values)?;
                self.sold_out.note(product_id, available);
                Reservation::SoldOut { available }
            }
            -3 => Reservation::BuyerRequired { limit: next_value(&mut values)? },
            -4 => {
                Reservation::LimitReached { limit: next_value(&mut values)?, held: next_value(&mut values)? }
            }
            -5 => Reservation::Healing { until: next_value(&mut values)? },
            -6 => Reservation::Paused { since: next_value(&mut values)? },
            -1 => Reservation::UnknownProduct,
            _ => {
                let message: String = next_value(&mut values)?;
                return Err(crate::error::Error::Redis(redis::RedisError::from((
                    redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError),
                    "reserve_group.lua refused the reservation",
                    message,
                ))));
            }
        })
    }

    /// `Some(units left)` when this process learned from Redis, within
    /// [`sold_out::SOLD_OUT_MEMORY`](super::sold_out::SOLD_OUT_MEMORY), that `product_id` has
    /// fewer than `qty` units: a reservation that cannot be a retry may be refused without
    /// asking Redis (`serve` does so for event ids it makes itself).
    pub(crate) fn known_sold_out(&self, product_id: i64, qty: i64) -> Option<i64> {
        self.sold_out.refuses(product_id, qty)
    }

    /// Sets how many units of `product_id` one buyer may hold (0: no limit; `lua/limit.lua`).
    /// Removing a limit ends its epoch and forgets every buyer's units of the product: a tally
    /// lasts as long as its limit, and reservations counted in it give their units back to it
    /// alone (`lua/includes/tally.lua`).
    pub(crate) async fn set_limit(&self, product_id: i64, limit: u64) -> Result<()> {
        let mut invocation = scripts::LIMIT.prepare_invoke();
        invocation.key(self.keys.limits()).arg(product_id).arg(limit);
        let (epoch, _ended): (u64, u64) = self.invoke("redis (limit)", &invocation).await?;
        if epoch > 0 || limit == 0 {
            self.forget_tallies(product_id, epoch).await?;
        }
        Ok(())
    }

    /// Deletes the product's tallies of epochs before `epoch`, in steps of about 1,000 fields.
    /// Safe beside live reservations: they count in `epoch` alone, and a give-back to an ended
    /// epoch's field only lowers or removes it.
    async fn forget_tallies(&self, product_id: i64, epoch: u64) -> Result<()> {
        for pattern in [format!("{product_id}:*"), format!("{product_id}#*")] {
            self.forget_matching(&pattern, |field| tally_epoch(field).is_some_and(|e| e < epoch)).await?;
        }
        Ok(())
    }

    async fn forget_matching(&self, pattern: &str, ended: impl Fn(&str) -> bool) -> Result<()> {
        let mut conn = self.conn();
        let mut cursor = 0u64;
        loop {
            let (next, fields): (u64, Vec<(String, String)>) = bounded(
                "redis (limit)",
                CALL_TIMEOUT,
                redis::cmd("HSCAN")
                    .arg(self.keys.bought())
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(pattern)
                    .arg("COUNT")
                    .arg(1000)
                    .query_async(&mut conn),
            )
            .await?;
            let names: Vec<&str> =
                fields.iter().map(|(name, _)| name.as_str()).filter(|name| ended(name)).collect();
            if !names.is_empty() {
                let _: () =
                    bounded("redis (limit)", CALL_TIMEOUT, conn.hdel(self.keys.bought(), names)).await?;
            }
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }

    /// Moves a product's stock by an operator's `delta`, stamped with the next sequence number
    /// so that the check can order it (`lua/adjust.lua`). A zero delta creates a missing key
    /// at 0.
    pub(crate) async fn adjust(&self, product_id: i64, delta: i64) -> Result<Adjustment> {
        let mut invocation = scripts::ADJUST.prepare_invoke();
        invocation.key(self.keys.stock(product_id)).key(self.keys.seq()).key(self.keys.limits()).arg(delta);
        let floor = self.seq_floor();
        let (ok, seq, stock): (i64, i64, i64) = self.invoke("redis (adjust)", &invocation).await?;
        match ok {
            1 => {
                self.observe_seq(seq, floor).await?;
                if delta > 0 {
                    self.sold_out.forget(product_id);
                }
                Ok(Adjustment::Applied { seq, stock })
            }
            0 => Ok(Adjustment::Refused { stock }),
            _ => Err(crate::error::Error::Healing),
        }
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

    /// Creates the product's stock key at 0 when it is missing (a new bucket of a spread
    /// product: a reservation routed to it must find the product known).
    pub(crate) async fn ensure_stock_key(&self, product_id: i64) -> Result<()> {
        self.add_to_stock("redis (stock)", product_id, 0).await.map(|_| ())
    }

    /// Whether the product has a buyer limit in force.
    pub(crate) async fn has_buyer_limit(&self, product_id: i64) -> Result<bool> {
        let mut conn = self.conn();
        let value: Option<String> =
            bounded("redis (limit)", CALL_TIMEOUT, conn.hget(self.keys.limits(), product_id)).await?;
        let limit =
            value.as_deref().map(|v| v.split('@').next().unwrap_or(v)).and_then(|l| l.parse::<u64>().ok());
        Ok(limit.is_some_and(|l| l > 0))
    }

    /// The Redis clock, unix ms.
    pub(crate) async fn redis_time_ms(&self) -> Result<i64> {
        let mut conn = self.conn();
        let (secs, micros): (i64, i64) =
            bounded("redis (time)", CALL_TIMEOUT, redis::cmd("TIME").query_async(&mut conn)).await?;
        Ok(secs * 1000 + micros / 1000)
    }

    /// INCRBY on a product's stock key; `what` names the call in a timeout error.
    pub(super) async fn add_to_stock(&self, what: &'static str, product_id: i64, by: i64) -> Result<i64> {
        let mut conn = self.conn();
        bounded(what, CALL_TIMEOUT, conn.incr(self.keys.stock(product_id), by)).await
    }
}

/// The epoch of a `{q}:bought` field: `<p>:<buyer>` is epoch 0, `<p>#<e>:<buyer>` epoch e
/// (`lua/includes/tally.lua`). `None` for a field of neither shape.
fn tally_epoch(field: &str) -> Option<u64> {
    let (head, _buyer) = field.split_once(':')?;
    match head.split_once('#') {
        None => Some(0),
        Some((_product, epoch)) => epoch.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::tally_epoch;

    #[test]
    fn a_tally_field_names_its_epoch() {
        assert_eq!(tally_epoch("12:alice"), Some(0));
        assert_eq!(tally_epoch("12:a:b"), Some(0));
        assert_eq!(tally_epoch("12#3:alice"), Some(3));
        assert_eq!(tally_epoch("12#3:a#b"), Some(3));
        assert_eq!(tally_epoch("12#x:alice"), None);
        assert_eq!(tally_epoch("12"), None);
    }
}
