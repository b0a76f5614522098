//! The Redis half of the consistency check, and its repair.

use super::{CALL_TIMEOUT, Entry, Queue, scripts};
use crate::error::{Result, bounded};

/// What Redis holds for a chunk of products at one instant (`lua/snapshot.lua`).
pub(crate) struct Snapshot {
    /// The queue's sequence: every reservation stamped up to it and not yet settled is
    /// counted in its product's in-flight units below.
    pub(crate) seq: i64,
    /// The stock of each product asked for, in the order asked; `None` for a missing key.
    pub(crate) stocks: Vec<Option<i64>>,
    /// The in-flight units of each product asked for, in the same order.
    pub(crate) inflight: Vec<i64>,
    /// The entries MySQL may have applied under a claim numbered up to `seq` while they
    /// still count in flight: those in processing, and the unsure ones.
    pub(crate) held: Vec<Entry>,
    /// The releases MySQL may have applied under a number up to `seq` while Redis still
    /// counts them (negatively) in flight: those on the releases list.
    pub(crate) releases: Vec<Entry>,
}

/// At most this many products per snapshot call: each costs two lookups in Redis, so a
/// chunk stays within a few milliseconds of Redis time however many products there are.
pub(crate) const SNAPSHOT_CHUNK: usize = 1000;

impl Queue {
    /// Reads the sequence, the stock and in-flight units of `product_ids` (at most
    /// [`SNAPSHOT_CHUNK`]) and the held entries in one atomic step (`lua/snapshot.lua`).
    /// `floor` is the highest sequence number MySQL has seen: a lower sequence (Redis lost
    /// its data) is raised to it first.
    pub(crate) async fn snapshot(&self, product_ids: &[i64], floor: i64) -> Result<Snapshot> {
        let keys = &self.keys;
        let mut invocation = scripts::SNAPSHOT.prepare_invoke();
        invocation
            .key(keys.seq())
            .key(keys.inflight())
            .key(keys.processing())
            .key(keys.unsure())
            .key(keys.releases());
        for id in product_ids {
            invocation.key(keys.stock(*id));
        }
        invocation.arg(floor);
        for id in product_ids {
            invocation.arg(*id);
        }
        let mut conn = self.conn();
        type Reply = (i64, Vec<Option<i64>>, Vec<Option<i64>>, Vec<Entry>, Vec<Entry>, Vec<Entry>);
        let (seq, stocks, inflight, mut held, unsure, releases): Reply =
            bounded("redis (check snapshot)", CALL_TIMEOUT, invocation.invoke_async(&mut conn)).await?;
        held.extend(unsure);
        let inflight = inflight.into_iter().map(Option::unwrap_or_default).collect();
        Ok(Snapshot { seq, stocks, inflight, held, releases })
    }

    /// Corrects a product's stock by `by` (INCRBY, never SET, so reservations made since the
    /// check survive). Returns the stock.
    pub(crate) async fn repair_stock(&self, product_id: i64, by: i64) -> Result<i64> {
        self.add_to_stock("redis (repair)", product_id, by).await
    }
}
