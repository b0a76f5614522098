//! Stock in, stock out: an operator's `stock set` and `stock add`, a shopper's `reserve`, and
//! `produce`, the load generator that reserves the way shoppers do.

use serde_json::json;

use super::{ProduceArgs, connect, print};
use crate::admin::control;
use crate::admin::stock::{self as admin_stock, Change};
use crate::config::Settings;
use crate::error::{Error, Result};
use crate::queue::Shards;
use crate::reservations::{self, Asked, Reservation};
use crate::tools::produce::{self as load, ProduceOptions};

/// Exit status of `reserve` when there is not enough stock (nothing was taken).
const EXIT_SOLD_OUT: u8 = 3;
/// Exit status of `reserve` for a product that was never stocked.
const EXIT_UNKNOWN_PRODUCT: u8 = 4;
/// Exit status of `reserve` when the buyer would hold more than the product's limit.
const EXIT_LIMIT: u8 = 5;
/// Exit status of `reserve` for an event id that belongs to another reservation.
const EXIT_ID_USED: u8 = 6;
/// `reserve`: the product's sale is paused.
const EXIT_PAUSED: u8 = 7;
/// Exit status for bad input.
const EXIT_USAGE: u8 = 2;
/// Exit status of a failure that may pass (docs/commands.md).
const EXIT_FAILURE: u8 = 1;

/// `stockq stock set <product> <qty>`
pub(super) async fn set(settings: &Settings, product: i64, qty: i64) -> Result<u8> {
    adjust(settings, product, Change::Set(qty)).await
}

/// `stockq stock add <product> <delta>`
pub(super) async fn add(settings: &Settings, product: i64, delta: i64) -> Result<u8> {
    adjust(settings, product, Change::Add(delta)).await
}

async fn adjust(settings: &Settings, product: i64, change: Change) -> Result<u8> {
    let (shards, ledger) = connect(settings, 1).await?;
    // a spread product's units are gathered in its own shard, where a change is made; the
    // janitor spreads them again
    crate::spread::gather_for_change(&shards, product).await?;
    let done = admin_stock::adjust(shards.for_product(product), &ledger, product, change).await?;
    let what = match change {
        Change::Set(qty) => format!("product {product} set to {qty}"),
        Change::Add(delta) => format!("product {product} {delta:+}"),
    };
    let detail = format!("{what}: mysql {}, redis {}", done.mysql, done.redis);
    control::audit(&shards, &control::cli_who(), "stock change", &detail).await?;
    outln!(
        "product {}: mysql {} (change {:+}), redis {}",
        done.product_id,
        done.mysql,
        done.delta,
        done.redis
    );
    Ok(0)
}

/// `stockq stock spread <product> <buckets> [--json]`
pub(super) async fn spread(settings: &Settings, product: i64, buckets: u16, json: bool) -> Result<u8> {
    let (shards, ledger) = super::connect(settings, 2).await?;
    let report = crate::spread::spread(&shards, &ledger, product, buckets).await?;
    let detail =
        format!("product {product} over {} bucket(s), was {}", report.buckets, report.buckets_before);
    control::audit(&shards, &control::cli_who(), "stock spread", &detail).await?;
    let stocks: Vec<serde_json::Value> =
        report.stocks.iter().map(|(shard, units)| json!({ "shard": shard, "stock": units })).collect();
    if json {
        outln!(
            "{}",
            json!({
                "product_id": product,
                "buckets_before": report.buckets_before,
                "buckets": report.buckets,
                "transfers": report.transfers,
                "stocks": stocks,
            })
        );
    } else {
        let parts: Vec<String> =
            report.stocks.iter().map(|(shard, units)| format!("shard {shard}: {units}")).collect();
        outln!(
            "product {product}: {} bucket(s) (was {}), {} transfer(s); {}",
            report.buckets,
            report.buckets_before,
            report.transfers,
            parts.join(", ")
        );
    }
    Ok(0)
}

/// `stockq stock pause <product>`
pub(super) async fn pause(settings: &Settings, product: i64) -> Result<u8> {
    let shards = Shards::connect(settings).await?;
    if control::pause_product(&shards, product, &control::cli_who()).await? {
        outln!(
            "product {product}: paused; its reservations are refused until `stockq stock resume {product}`"
        );
    } else {
        outln!("product {product}: paused already");
    }
    Ok(0)
}

/// `stockq stock resume <product>`
pub(super) async fn resume(settings: &Settings, product: i64) -> Result<u8> {
    let shards = Shards::connect(settings).await?;
    if control::resume_product(&shards, product, &control::cli_who()).await? {
        outln!("product {product}: selling again");
    } else {
        outln!("product {product}: was not paused");
    }
    Ok(0)
}

/// `stockq stock limit <product> <n>`
pub(super) async fn limit(settings: &Settings, product: i64, limit: u64) -> Result<u8> {
    let shards = Shards::connect(settings).await?;
    // every shard holds it, so that each bucket of a spread product counts its buyers (a
    // buyer is routed to one bucket, where the whole tally is); the other shards never see
    // the product's reservations, and the same limit there keeps a later spread consistent
    for queue in shards.all() {
        queue.set_limit(product, limit).await?;
    }
    control::audit(
        &shards,
        &control::cli_who(),
        "stock limit",
        &format!("product {product} at {limit} per buyer"),
    )
    .await?;
    if limit == 0 {
        outln!("product {product}: no buyer limit");
    } else {
        outln!("product {product}: at most {limit} per buyer");
    }
    Ok(0)
}

/// What `stockq reserve` was asked.
pub(super) struct Reserve {
    pub(super) product: i64,
    pub(super) qty: i64,
    pub(super) event_id: Option<String>,
    pub(super) buyer: Option<String>,
    pub(super) hold: Option<std::time::Duration>,
    pub(super) json: bool,
}

/// `stockq reserve <product> <qty> [--event-id ID] [--buyer B] [--hold D] [--json]`. A replay
/// (the same reservation retried under its event id) answers as the first time did.
pub(super) async fn reserve(settings: &Settings, asked: Reserve) -> Result<u8> {
    let Reserve { product, qty, event_id, buyer, hold, json } = asked;
    let buyer = buyer.as_deref();
    let event_id = event_id.unwrap_or_else(reservations::new_event_id);
    crate::event::validate_event_id(&event_id).map_err(Error::usage)?;
    let hold = hold.map(|h| reservations::check_hold(h, settings.redis.max_hold)).transpose()?;
    let shards = Shards::connect(settings).await?;
    let request = reservations::Request { product_id: product, qty, event_id: &event_id, buyer, hold };
    let answer = reservations::reserve_routed(&shards, request).await?;
    // counted with every other process's refusals (a failure to count does not fail it)
    let _ = reservations::refusals::flush(&shards).await;
    if let Some(object) = reservations::answer(Asked { product_id: product, qty, buyer }, &answer) {
        match (json, &answer) {
            (true, _) => outln!("{object}"),
            (false, Reservation::Reserved { event_id, .. } | Reservation::Replayed { event_id, .. }) => {
                outln!("{event_id}")
            }
            _ => {}
        }
        return Ok(0);
    }
    let (code, message, object) = match answer {
        Reservation::SoldOut { available } => (
            EXIT_SOLD_OUT,
            format!("sold out: product {product} has {available} left, {qty} asked; nothing taken"),
            json!({ "error": "sold out", "available": available }),
        ),
        Reservation::IdUsed { state } => (
            EXIT_ID_USED,
            format!("event id already used (state {state})"),
            json!({ "error": "event id already used", "state": state }),
        ),
        Reservation::LimitReached { limit, held } => (
            EXIT_LIMIT,
            format!(
                "buyer limit: product {product} allows {limit} per buyer, who holds {held}; nothing taken"
            ),
            json!({ "error": "buyer limit", "limit": limit }),
        ),
        Reservation::BuyerRequired { limit } => (
            EXIT_USAGE,
            format!("product {product} allows {limit} per buyer: give --buyer; nothing taken"),
            json!({ "error": "buyer required", "limit": limit }),
        ),
        Reservation::Paused { since } => (
            EXIT_PAUSED,
            format!(
                "product {product}'s sale is paused (`stockq stock resume {product}` resumes it); nothing taken"
            ),
            json!({ "error": "paused", "since": since }),
        ),
        Reservation::Healing { .. } => (
            EXIT_FAILURE,
            format!(
                "Redis lost writes and is being healed from MySQL; nothing taken: retry in a few seconds with --event-id {event_id}"
            ),
            json!({ "error": "healing", "event_id": event_id }),
        ),
        _ => (
            EXIT_UNKNOWN_PRODUCT,
            format!("unknown product {product}: stock it first with `stockq stock set {product} <qty>`"),
            json!({ "error": format!("unknown product {product}") }),
        ),
    };
    if json {
        outln!("{object}");
    }
    eprintln!("stockq: {message}");
    Ok(code)
}

/// `stockq produce --events N ...`
pub(super) async fn produce(settings: &Settings, args: &ProduceArgs) -> Result<u8> {
    let options = ProduceOptions {
        events: args.events,
        products: args.products,
        qty: args.qty,
        hot: args.hot,
        rate: args.rate,
        in_flight: args.in_flight,
        progress: !args.json,
    };
    options.validate()?;
    let hold = args.hold.map(|h| reservations::check_hold(h, settings.redis.max_hold)).transpose()?;
    let shoppers = load::ShopperOptions { buyers: args.buyers, hold, cancel: args.cancel };
    let shards = Shards::connect(settings).await?;
    let report = load::produce_shoppers(&shards, &options, &shoppers).await?;
    print::produce(&report, args.json);
    Ok(0)
}
