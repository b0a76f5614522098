//! A queue and a database of their own for the demo and the benchmark, on the configured
//! servers: named after the configured ones, emptied at the start of a run, stocked.

use crate::admin::stock::{self, Change};
use crate::config::Settings;
use crate::error::{Error, Result};
use crate::ledger::Ledger;
use crate::queue::Shards;

/// A queue and a database of their own on the configured servers (demo, bench), named after
/// the configured ones with `suffix`: queue `<queue>-<suffix>`, database `<database>_<suffix>`
/// (`stockq_<suffix>` when the URL names no database).
pub(crate) fn own_settings(settings: &Settings, suffix: &str) -> Result<Settings> {
    let mut url = url::Url::parse(settings.mysql.url.expose())
        .map_err(|e| Error::usage(format!("DATABASE_URL is not a valid URL: {e}")))?;
    let database = match url.path().trim_start_matches('/') {
        "" => crate::config::DEFAULT_QUEUE.to_string(),
        named => named.to_string(),
    };
    url.set_path(&format!("/{database}_{suffix}"));
    let queue = own_queue(&settings.redis.queue, suffix);
    let mut own = Settings::new(settings.redis.url.expose(), url.as_str(), &queue)?;
    own.delivery.visibility_timeout = settings.delivery.visibility_timeout;
    own.redis.shards = settings.redis.shards;
    Ok(own)
}

/// The name of the queue of its own that the demo or the benchmark (`suffix`) works on.
pub(crate) fn own_queue(queue: &str, suffix: &str) -> String {
    format!("{queue}-{suffix}")
}

/// Empties a queue's keys (every shard: its records and outcomes too) and the database's
/// tables, so that a new run starts from nothing and may reuse its event ids.
pub(crate) async fn reset(shards: &Shards, ledger: &Ledger) -> Result<()> {
    let products = ledger.product_ids().await?;
    for queue in shards.all() {
        queue.reset(&products).await?;
    }
    ledger.reset().await
}

/// Starts a run afresh ([`reset`]) with products `1..=products` stocked with `per_product`
/// units each, in both stores.
pub(crate) async fn prepare(shards: &Shards, ledger: &Ledger, products: i64, per_product: i64) -> Result<()> {
    reset(shards, ledger).await?;
    for product in 1..=products {
        stock::adjust(shards.for_product(product), ledger, product, Change::Set(per_product)).await?;
    }
    Ok(())
}

/// Pending and processing, over every shard.
pub async fn depths(shards: &Shards) -> Result<(u64, u64)> {
    let mut total = (0, 0);
    for queue in shards.all() {
        let d = queue.depths().await?;
        total.0 += d.pending;
        total.1 += d.processing;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tool_s_queue_and_database_are_named_after_the_configured_ones() {
        let configured =
            Settings::new("redis://127.0.0.1:6379", "mysql://u:p@db:3306/shop?ssl-mode=REQUIRED", "alice")
                .unwrap();
        let own = own_settings(&configured, "demo").unwrap();
        assert_eq!(own.redis.queue, "alice-demo");
        assert_eq!(own.mysql.url.expose(), "mysql://u:p@db:3306/shop_demo?ssl-mode=REQUIRED");
        let bare = Settings::new("redis://127.0.0.1:6379", "mysql://u:p@db:3306", "stockq").unwrap();
        let own = own_settings(&bare, "bench").unwrap();
        assert_eq!(
            (own.redis.queue.as_str(), own.mysql.url.expose()),
            ("stockq-bench", "mysql://u:p@db:3306/stockq_bench")
        );
        let long = Settings::new("redis://127.0.0.1:6379", "mysql://u:p@db/x", &"q".repeat(64)).unwrap();
        assert_eq!(own_settings(&long, "demo").unwrap_err().exit_code(), 2);
    }
}
