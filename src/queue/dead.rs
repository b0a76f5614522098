//! Dead letters: `{q}:dead` holds one envelope per entry that could not be processed, and
//! each valid event among them still holds its reservation until it is requeued or dropped.

use redis::AsyncCommands;

use super::{CALL_TIMEOUT, Entry, Queue, scripts};
use crate::error::{Result, bounded};

impl Queue {
    /// Every dead-letter envelope, newest first, as stored.
    pub(crate) async fn dead_letters(&self) -> Result<Vec<Entry>> {
        let mut conn = self.conn();
        bounded("redis (dead list)", CALL_TIMEOUT, conn.lrange(self.keys.dead(), 0, -1)).await
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

    /// Removes a dead-letter `envelope` and, with it, gives `units` back to product
    /// `give_back`'s stock when that key exists (`lua/dead_drop.lua`). `None` for an envelope
    /// that holds no reservation. False when the envelope was no longer there: nothing was
    /// given back, so dropping twice never returns stock twice.
    pub(crate) async fn dead_drop(&self, envelope: &[u8], give_back: Option<(i64, i64)>) -> Result<bool> {
        let (stock_key, units) = match give_back {
            Some((product_id, units)) => (self.keys.stock(product_id), units),
            // the script wants a key of the queue even when it gives nothing back
            None => (self.keys.dead(), 0),
        };
        let mut invocation = scripts::DEAD_DROP.prepare_invoke();
        invocation.key(self.keys.dead()).key(stock_key).arg(envelope).arg(units);
        let dropped: u64 = self.invoke("redis (dead drop)", &invocation).await?;
        Ok(dropped > 0)
    }
}
