//! The seckill front door: check a reservation's arguments, then take stock in Redis and
//! enqueue the event in one atomic step ([`Queue::reserve`]), timing and counting the answers
//! (a failure too: `result="error"`).

use std::time::Duration;

use crate::error::{Error, Result};
use crate::event::{validate_buyer, validate_event_id, validate_product_id, validate_qty};
use crate::queue::{Queue, Reservation};
use crate::telemetry::metrics as m;

/// A fresh, time-ordered event id.
pub fn new_event_id() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

/// The shortest hold: a deadline must leave the buyer time to pay.
pub const MIN_HOLD: Duration = Duration::from_secs(1);

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
    reserve_held(queue, Request { product_id, qty, event_id, buyer, hold: None }).await
}

/// What a shopper asks for.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub product_id: i64,
    pub qty: i64,
    pub event_id: &'a str,
    pub buyer: Option<&'a str>,
    /// Keep the stock held, unqueued, until `confirm` or this passes (docs/lifecycle.md); the
    /// caller has bounded it by `STOCKQ_MAX_HOLD` with [`check_hold`].
    pub hold: Option<Duration>,
}

/// Checks a requested hold against `[MIN_HOLD, max_hold]`.
pub fn check_hold(hold: Duration, max_hold: Duration) -> Result<Duration> {
    if hold < MIN_HOLD || hold > max_hold {
        return Err(Error::usage(format!(
            "hold must be from {} to {} (STOCKQ_MAX_HOLD)",
            humantime::format_duration(MIN_HOLD),
            humantime::format_duration(max_hold)
        )));
    }
    Ok(hold)
}

/// Reserves what `request` asks for, holding it when it asks for a hold.
pub async fn reserve_held(queue: &Queue, request: Request<'_>) -> Result<Reservation> {
    let Request { product_id, qty, event_id, buyer, hold } = request;
    validate_event_id(event_id).map_err(Error::usage)?;
    validate_product_id(product_id).map_err(Error::usage)?;
    validate_qty(qty).map_err(Error::usage)?;
    if let Some(buyer) = buyer {
        validate_buyer(buyer).map_err(Error::usage)?;
    }
    let started = std::time::Instant::now();
    let answer = queue.reserve(product_id, qty, event_id, buyer, hold).await;
    metrics::histogram!(m::RESERVE_SECONDS).record(started.elapsed().as_secs_f64());
    let result = match &answer {
        Ok(Reservation::Reserved { .. }) => "reserved",
        Ok(Reservation::Replayed { .. }) => "replayed",
        Ok(Reservation::IdUsed { .. }) => "id_used",
        Ok(Reservation::SoldOut { .. }) => "sold_out",
        Ok(Reservation::UnknownProduct) => "unknown_product",
        Ok(Reservation::BuyerRequired { .. }) => "buyer_required",
        Ok(Reservation::LimitReached { .. }) => "limit",
        Ok(Reservation::Healing { .. }) => "healing",
        Ok(Reservation::Paused { .. }) => "paused",
        // counted as a store error where it is answered (`serve` logs and counts it once)
        Err(_) => "error",
    };
    metrics::counter!(m::RESERVATIONS, "result" => result).increment(1);
    answer
}

/// How long a shopper of a spread product is refilled for at most before "sold out": longer
/// than the spread registry is cached (`SPREAD_REFRESH`), so that a shopper routed by a
/// registry that just changed (a product gathered back into one bucket) is routed again by
/// the new one before being refused.
const REFILL_FOR: std::time::Duration = std::time::Duration::from_millis(1500);
/// How long a shopper whose refill found nothing, while units were on their way, waits
/// before looking again: doubling from the first to the longest.
const REFILL_AGAIN: std::time::Duration = std::time::Duration::from_millis(2);
const REFILL_AGAIN_LONGEST: std::time::Duration = std::time::Duration::from_millis(50);
/// Rounds of refill a shopper waits at most: with the waits above, about the time a route
/// takes to change, and few enough that the refused shoppers of a sell-out with units stuck
/// on their way (a transfer cut by a crash, until the janitor finishes it) do not multiply
/// Redis's work.
const MAX_REFILLS: usize = 40;

/// Reserves what `request` asks for in the bucket its product's shards route it to
/// (`Shards::route`): its product's own shard, or for a spread product the bucket of its
/// buyer (or event id). A spread product's bucket that is short gets units moved to it from
/// the others first, so that "sold out" means the product as a whole cannot serve the
/// quantity (`crate::spread`).
pub async fn reserve_routed(shards: &crate::queue::Shards, request: Request<'_>) -> Result<Reservation> {
    let answer = reserve_routed_uncounted(shards, request).await?;
    super::refusals::note(request.product_id, &answer);
    Ok(answer)
}

async fn reserve_routed_uncounted(
    shards: &crate::queue::Shards,
    request: Request<'_>,
) -> Result<Reservation> {
    let mut queue = shards.route(request.product_id, request.buyer, request.event_id).await;
    let mut answer = reserve_held(queue, request).await?;
    let until = std::time::Instant::now() + REFILL_FOR;
    let mut wait = REFILL_AGAIN;
    // a bucket refilled may be emptied by other shoppers before this one's turn: again, until
    // the other buckets are empty (each refill takes half the richest, so this ends quickly)
    for _ in 0..MAX_REFILLS {
        let Reservation::SoldOut { available } = answer else { return Ok(answer) };
        if !shards.is_spread(request.product_id).await {
            return Ok(answer);
        }
        let Some(shard) = queue.shard() else { return Ok(answer) };
        if std::time::Instant::now() >= until {
            break;
        }
        let need = (request.qty - available.max(0)).max(1);
        if crate::spread::refill(shards, request.product_id, usize::from(shard), need).await? == 0 {
            // the shards are read one after another: a transfer between two of them may have
            // been in neither when read. Units still somewhere (or on their way) are worth
            // another look; none anywhere is sold out.
            if crate::spread::units_anywhere(shards, request.product_id)
                .await?
                .is_some_and(|u| u < request.qty)
            {
                break;
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(REFILL_AGAIN_LONGEST);
            // the registry may have changed meanwhile (the product gathered into one bucket):
            // this refused reservation left no record, so it may be routed anew
            queue = shards.route(request.product_id, request.buyer, request.event_id).await;
        }
        answer = reserve_held(queue, request).await?;
    }
    let Reservation::SoldOut { .. } = answer else { return Ok(answer) };
    let total = crate::spread::total_stock(shards, request.product_id).await?.unwrap_or(0);
    Ok(Reservation::SoldOut { available: total })
}
