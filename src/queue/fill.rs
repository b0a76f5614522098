//! `stockq bench`'s setup of a large queue: stock keys and a backlog made in bulk
//! (`lua/bench_fill.lua`), far faster than reserving each event, and as exact for the books.

use super::{Queue, scripts};
use crate::error::Result;

/// Entries or keys per call: each call holds Redis for a fraction of a second.
const SLICE: u64 = 50_000;

impl Queue {
    /// Sets the stock key of products 1..=`products` to `stock`.
    pub(crate) async fn fill_stock(&self, products: u64, stock: i64) -> Result<()> {
        for first in (1..=products).step_by(SLICE as usize) {
            let last = (first + SLICE - 1).min(products);
            self.fill(&["stock", &first.to_string(), &last.to_string(), &stock.to_string()]).await?;
        }
        Ok(())
    }

    /// Pushes `events` events of qty 1 spread over products 1..=`products`, each reserved as
    /// `reserve.lua` would (stock taken, in-flight counted, numbered).
    pub(crate) async fn fill_backlog(&self, events: u64, products: u64) -> Result<()> {
        let mut pushed = 0;
        while pushed < events {
            let k = SLICE.min(events - pushed);
            self.fill(&["backlog", &pushed.to_string(), &k.to_string(), &products.to_string()]).await?;
            pushed += k;
        }
        Ok(())
    }

    async fn fill(&self, args: &[&str]) -> Result<()> {
        let mut invocation = scripts::BENCH_FILL.prepare_invoke();
        invocation
            .key(self.keys.pending())
            .key(self.keys.seq())
            .key(self.keys.inflight())
            .key(format!("{}:stock:", self.keys.prefix()));
        for arg in args {
            invocation.arg(*arg);
        }
        let _: u64 = self.invoke("redis (bench fill)", &invocation).await?;
        Ok(())
    }
}
