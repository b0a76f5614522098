//! Dead letters: `{q}:dead` holds one envelope per entry that could not be processed, and
//! each valid event among them still holds its reservation until it is requeued or dropped.

use redis::AsyncCommands;

use super::{CALL_TIMEOUT, Entry, Queue, scripts};
use crate::error::{Result, bounded};

impl Queue {
    /// How many dead letters the queue holds.
    pub(crate) async fn dead_len(&self) -> Result<u64> {
        let mut conn = self.conn();
        bounded("redis (dead count)", CALL_TIMEOUT, conn.llen(self.keys.dead())).await
    }

    /// The dead-letter envelopes at positions `start..=stop` as stored, newest first (LRANGE:
    /// negative positions count from the oldest). Callers keep the range to a chunk, so that
    /// no single read holds Redis for long.
    pub(crate) async fn dead_range(&self, start: isize, stop: isize) -> Result<Vec<Entry>> {
        let mut conn = self.conn();
        bounded("redis (dead list)", CALL_TIMEOUT, conn.lrange(self.keys.dead(), start, stop)).await
    }

    /// Sends `entry` back to pending in place of its dead-letter `envelope`
    /// (`lua/dead_requeue.lua`). False when the envelope was no longer there (another
    /// operator got to it).
    pub(crate) async fn dead_requeue(&self, envelope: &[u8], entry: &[u8]) -> Result<bool> {
        let mut invocation = scripts::DEAD_REQUEUE.prepare_invoke();
        invocation.key(self.keys.dead()).key(self.keys.pending()).arg(envelope).arg(entry);
        let moved: u64 = self.invoke("redis (dead requeue)", &invocation).await?;
        Ok(moved > 0)
    }

    /// Removes a dead-letter `envelope` holding `entry` and, with it, settles the event it
    /// holds (`lua/dead_drop.lua`): `give_back` units back to the product's stock when that key
    /// exists, its in-flight units uncounted. `None` for an envelope that holds no event.
    /// False when the envelope was no longer there: nothing was given back, so dropping twice
    /// never returns stock twice.
    pub(crate) async fn dead_drop(
        &self,
        envelope: &[u8],
        entry: &[u8],
        event: Option<Dropped>,
    ) -> Result<bool> {
        let (stock_key, d) = match event {
            Some(d) => (self.keys.stock(d.product_id), d),
            // the script wants a key of the queue even when it gives nothing back
            None => (self.keys.dead(), Dropped::default()),
        };
        let mut invocation = scripts::DEAD_DROP.prepare_invoke();
        invocation
            .key(self.keys.dead())
            .key(stock_key)
            .key(self.keys.inflight())
            .key(self.keys.unsure())
            .arg(envelope)
            .arg(d.give_back)
            .arg(d.product_id)
            .arg(d.counted)
            .arg(entry);
        let dropped: u64 = self.invoke("redis (dead drop)", &invocation).await?;
        Ok(dropped > 0)
    }
}

/// The event a dropped dead letter holds, as `lua/dead_drop.lua` settles it.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Dropped {
    pub(crate) product_id: i64,
    /// Units back to the product's stock: its qty, or 0 when MySQL had applied it.
    pub(crate) give_back: i64,
    /// Units reserve.lua counted in flight for it (0 for an event pushed by hand).
    pub(crate) counted: i64,
}
