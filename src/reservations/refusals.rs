//! Refusals counted per product and kind (sold out, limit, paused, unknown product), in
//! Redis, so that every `serve` replica adds to the same figures that the dashboard and
//! `stats` show. A process counts in memory and adds its counts to `{q}:refusals` (the
//! first shard's hash, fields `<product_id>:<kind>`) once a second: a refusal costs Redis
//! nothing of its own, and a sold-out product's thousands of refusals a second cost one
//! HINCRBY a second.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Reservation;
use crate::error::Result;
use crate::queue::Shards;

/// How often a process adds what it counted to Redis.
pub(crate) const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// The product the refusals of unknown products are counted under, all together.
pub(crate) const UNKNOWN_PRODUCTS: i64 = 0;

/// The kinds of refusal, as `{q}:refusals` and the status names them.
pub(crate) const KINDS: [&str; 4] = ["sold_out", "limit", "paused", "unknown_product"];

static COUNTED: Mutex<Option<HashMap<(i64, &'static str), u64>>> = Mutex::new(None);

/// The kind of refusal `answer` is, if it is one a shopper is refused with.
fn kind(answer: &Reservation) -> Option<&'static str> {
    match answer {
        Reservation::SoldOut { .. } => Some("sold_out"),
        Reservation::LimitReached { .. } | Reservation::BuyerRequired { .. } => Some("limit"),
        Reservation::Paused { .. } => Some("paused"),
        Reservation::UnknownProduct => Some("unknown_product"),
        _ => None,
    }
}

/// Counts `answer` against `product_id` when it is a refusal. Unknown products are counted
/// together, under product 0: anyone may ask for any id, and one field per id asked would let
/// them fill Redis.
pub(crate) fn note(product_id: i64, answer: &Reservation) {
    if let Some(kind) = kind(answer) {
        let product_id = if kind == "unknown_product" { UNKNOWN_PRODUCTS } else { product_id };
        let mut counted = COUNTED.lock().unwrap_or_else(|e| e.into_inner());
        *counted.get_or_insert_with(HashMap::new).entry((product_id, kind)).or_default() += 1;
    }
}

/// Adds what this process counted to Redis; kept for the next try when Redis fails.
pub(crate) async fn flush(shards: &Shards) -> Result<()> {
    let taken = COUNTED.lock().unwrap_or_else(|e| e.into_inner()).take().unwrap_or_default();
    if taken.is_empty() {
        return Ok(());
    }
    let counts: Vec<(String, u64)> = taken.iter().map(|((p, k), n)| (format!("{p}:{k}"), *n)).collect();
    if let Err(e) = shards.first().add_refusals(&counts).await {
        let mut counted = COUNTED.lock().unwrap_or_else(|e| e.into_inner());
        let counted = counted.get_or_insert_with(HashMap::new);
        for (key, n) in taken {
            *counted.entry(key).or_default() += n;
        }
        return Err(e);
    }
    Ok(())
}

/// Flushes every [`FLUSH_EVERY`] until `shutdown`, then once more.
pub(crate) async fn keep_flushing(shards: Shards, shutdown: CancellationToken) {
    loop {
        let stop = tokio::select! {
            _ = tokio::time::sleep(FLUSH_EVERY) => false,
            _ = shutdown.cancelled() => true,
        };
        if let Err(e) = flush(&shards).await {
            tracing::debug!(error = %e, "refusals not counted in Redis yet; trying again");
        }
        if stop {
            return;
        }
    }
}

/// Every product's refusals: product → kind → count.
pub(crate) async fn counted(shards: &Shards) -> Result<BTreeMap<i64, BTreeMap<String, u64>>> {
    let mut all: BTreeMap<i64, BTreeMap<String, u64>> = BTreeMap::new();
    for (field, n) in shards.first().refusals().await? {
        let Some((product, kind)) = field.split_once(':') else { continue };
        let Ok(product) = product.parse::<i64>() else { continue };
        if KINDS.contains(&kind) {
            *all.entry(product).or_default().entry(kind.to_string()).or_default() += n;
        }
    }
    Ok(all)
}
