//! The seckill front door: take stock in Redis and enqueue the event, atomically
//! (`lua/reserve.lua`).

use crate::error::{Error, Result, bounded};
use crate::event::{validate_event_id, validate_product_id, validate_qty};
use crate::queue::{CALL_TIMEOUT, Queue, scripts};
use crate::telemetry::metrics as m;

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

/// A fresh, time-ordered event id.
pub fn new_event_id() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

/// Reserves `qty` of `product_id` under `event_id`.
pub async fn reserve(queue: &Queue, product_id: i64, qty: i64, event_id: &str) -> Result<Reservation> {
    validate_event_id(event_id).map_err(Error::usage)?;
    validate_product_id(product_id).map_err(Error::usage)?;
    validate_qty(qty).map_err(Error::usage)?;
    let keys = queue.keys();
    let mut invocation = scripts::RESERVE.prepare_invoke();
    invocation
        .key(keys.stock(product_id))
        .key(keys.pending())
        .key(keys.seq())
        .arg(event_id)
        .arg(product_id)
        .arg(qty);
    let mut conn = queue.conn();
    let started = std::time::Instant::now();
    let (code, seq, stock): (i64, i64, i64) =
        bounded("redis (reserve)", CALL_TIMEOUT, invocation.invoke_async(&mut conn)).await?;
    metrics::histogram!(m::RESERVE_SECONDS).record(started.elapsed().as_secs_f64());
    let (answer, result) = match code {
        1 => (Reservation::Reserved { event_id: event_id.to_string(), seq, remaining: stock }, "reserved"),
        0 => (Reservation::SoldOut { available: stock }, "sold_out"),
        _ => (Reservation::UnknownProduct, "unknown_product"),
    };
    metrics::counter!(m::RESERVATIONS, "result" => result).increment(1);
    Ok(answer)
}
