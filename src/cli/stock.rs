//! Stock in, stock out: an operator's `stock set` and `stock add`, a shopper's `reserve`, and
//! `produce`, the load generator that reserves the way shoppers do.

use super::{ProduceArgs, connect, print};
use crate::admin::stock::{self as admin_stock, Change};
use crate::config::Settings;
use crate::error::{Error, Result};
use crate::queue::Shards;
use crate::reserve::{self as reservations, Reservation};
use crate::tools::produce::{self as load, ProduceOptions};

/// Exit status of `reserve` when there is not enough stock (nothing was taken).
const EXIT_SOLD_OUT: u8 = 3;
/// Exit status of `reserve` for a product that was never stocked.
const EXIT_UNKNOWN_PRODUCT: u8 = 4;

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
    let done = admin_stock::adjust(shards.for_product(product), &ledger, product, change).await?;
    println!(
        "product {}: mysql {} (change {:+}), redis {}",
        done.product_id, done.mysql, done.delta, done.redis
    );
    Ok(0)
}

/// `stockq reserve <product> <qty> [--event-id ID]`
pub(super) async fn reserve(
    settings: &Settings,
    product: i64,
    qty: i64,
    event_id: Option<String>,
) -> Result<u8> {
    let event_id = event_id.unwrap_or_else(reservations::new_event_id);
    crate::event::validate_event_id(&event_id).map_err(Error::usage)?;
    let shards = Shards::connect(settings).await?;
    match reservations::reserve(shards.for_product(product), product, qty, &event_id).await? {
        Reservation::Reserved { event_id, .. } => {
            println!("{event_id}");
            Ok(0)
        }
        Reservation::SoldOut { available } => {
            eprintln!("stockq: sold out: product {product} has {available} left, {qty} asked; nothing taken");
            Ok(EXIT_SOLD_OUT)
        }
        Reservation::UnknownProduct => {
            eprintln!(
                "stockq: unknown product {product}: stock it first with `stockq stock set {product} <qty>`"
            );
            Ok(EXIT_UNKNOWN_PRODUCT)
        }
    }
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
    let shards = Shards::connect(settings).await?;
    let report = load::produce(&shards, &options).await?;
    print::produce(&report, args.json);
    Ok(0)
}
