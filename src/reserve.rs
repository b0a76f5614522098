//! The seckill front door: check a reservation's arguments, then take stock in Redis and
//! enqueue the event in one atomic step ([`Queue::reserve`]), timing and counting the answers
//! (a failure too: `result="error"`).

use crate::error::{Error, Result};
use crate::event::{validate_buyer, validate_event_id, validate_product_id, validate_qty};
use crate::queue::Queue;
pub use crate::queue::Reservation;
use crate::telemetry::metrics as m;

/// A fresh, time-ordered event id.
pub fn new_event_id() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

/// Reserves `qty` of `product_id` under `event_id`, for no particular buyer.
pub async fn reserve(queue: &Queue, product_id: i64, qty: i64, event_id: &str) -> Result<Reservation> {
    reserve_for(queue, product_id, qty, event_id, None).await
}

/// Reserves `qty` of `product_id` under `event_id` for `buyer`. A retry with the same event
/// id, product, qty and buyer gets the first answer back ([`Reservation::Replayed`]).
pub async fn reserve_for(
    queue: &Queue,
    product_id: i64,
    qty: i64,
    event_id: &str,
    buyer: Option<&str>,
) -> Result<Reservation> {
    validate_event_id(event_id).map_err(Error::usage)?;
    validate_product_id(product_id).map_err(Error::usage)?;
    validate_qty(qty).map_err(Error::usage)?;
    if let Some(buyer) = buyer {
        validate_buyer(buyer).map_err(Error::usage)?;
    }
    let started = std::time::Instant::now();
    let answer = queue.reserve(product_id, qty, event_id, buyer).await;
    metrics::histogram!(m::RESERVE_SECONDS).record(started.elapsed().as_secs_f64());
    let result = match &answer {
        Ok(Reservation::Reserved { .. }) => "reserved",
        Ok(Reservation::Replayed { .. }) => "replayed",
        Ok(Reservation::IdUsed { .. }) => "id_used",
        Ok(Reservation::SoldOut { .. }) => "sold_out",
        Ok(Reservation::UnknownProduct) => "unknown_product",
        // counted as a store error where it is answered (`serve` logs and counts it once)
        Err(_) => "error",
    };
    metrics::counter!(m::RESERVATIONS, "result" => result).increment(1);
    answer
}
