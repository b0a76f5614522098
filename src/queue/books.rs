//! The Redis half of the consistency check, and its repair.

use super::{CALL_TIMEOUT, Entry, Queue, scripts};
use crate::error::{Result, bounded};

/// What Redis holds at one instant (`lua/snapshot.lua`).
pub(crate) struct Snapshot {
    /// The reservation sequence: every reservation stamped up to it is settled or one of the
    /// entries below.
    pub(crate) seq: i64,
    /// The stock of each product asked for, in the order asked; `None` for a missing key.
    pub(crate) stocks: Vec<Option<i64>>,
    pub(crate) pending: Vec<Entry>,
    pub(crate) processing: Vec<Entry>,
    pub(crate) dead: Vec<Entry>,
}

impl Queue {
    /// Reads the sequence, the stock of `product_ids` and every entry in pending, processing
    /// and dead in one atomic step (`lua/snapshot.lua`). `floor` is the highest sequence
    /// number MySQL has seen: a lower sequence (Redis lost its data) is raised to it first.
    pub(crate) async fn snapshot(&self, product_ids: &[i64], floor: i64) -> Result<Snapshot> {
        let keys = &self.keys;
        let mut invocation = scripts::SNAPSHOT.prepare_invoke();
        invocation.key(keys.seq()).key(keys.pending()).key(keys.processing()).key(keys.dead());
        for id in product_ids {
            invocation.key(keys.stock(*id));
        }
        invocation.arg(floor);
        let mut conn = self.conn();
        type Reply = (i64, Vec<Option<i64>>, Vec<Entry>, Vec<Entry>, Vec<Entry>);
        // twice the usual bound: it returns whole lists
        let (seq, stocks, pending, processing, dead): Reply =
            bounded("redis (check snapshot)", CALL_TIMEOUT * 2, invocation.invoke_async(&mut conn)).await?;
        Ok(Snapshot { seq, stocks, pending, processing, dead })
    }

    /// Corrects a product's stock by `by` (INCRBY, never SET, so reservations made since the
    /// check survive). Returns the stock.
    pub(crate) async fn repair_stock(&self, product_id: i64, by: i64) -> Result<i64> {
        self.add_to_stock("redis (repair)", product_id, by).await
    }
}
