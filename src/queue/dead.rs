//! Dead letters: `{q}:dead` holds one envelope per entry that could not be processed, and
//! each valid event among them still holds its reservation until it is requeued or dropped.

use redis::AsyncCommands;

use super::{CALL_TIMEOUT, Ended, Ending, Entry, Queue, millis, scripts};
use crate::error::{Result, bounded};
use crate::event::Event;

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
        let event = Event::parse(entry).ok();
        let record = event.as_ref().map_or_else(|| self.keys.dead(), |e| self.keys.record(&e.event_id));
        let seq = event.and_then(|e| e.seq).map(|s| s.to_string()).unwrap_or_default();
        let mut invocation = scripts::DEAD_REQUEUE.prepare_invoke();
        invocation
            .key(self.keys.dead())
            .key(self.keys.pending())
            .key(record)
            .arg(envelope)
            .arg(entry)
            .arg(seq);
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
        let ending = event.and_then(|d| drop_ending(entry, d));
        let record =
            ending.as_ref().map_or_else(|| self.keys.dead(), |e| self.keys.record(&e.event.event_id));
        let mut invocation = scripts::DEAD_DROP.prepare_invoke();
        invocation
            .key(self.keys.dead())
            .key(stock_key)
            .key(self.keys.inflight())
            .key(self.keys.unsure())
            .key(record)
            .key(self.keys.outcomes())
            .key(self.keys.releases())
            .key(self.keys.bought())
            .key(self.keys.cancels())
            .arg(envelope)
            .arg(d.give_back)
            .arg(d.product_id)
            .arg(d.counted)
            .arg(entry)
            .arg(millis(self.retention.record_ttl))
            .arg(self.retention.outcomes_maxlen);
        Ending::push_args(ending.as_ref(), &mut invocation);
        let dropped: u64 = self.invoke("redis (dead drop)", &invocation).await?;
        Ok(dropped > 0)
    }
}

/// How a dropped reservation ends: `cancelled` (reason `dropped`) when its stock goes back,
/// `applied` when a delivery had committed in MySQL before it died.
fn drop_ending(entry: &[u8], d: Dropped) -> Option<Ending> {
    let event = Event::parse(entry).ok()?;
    Some(if d.give_back > 0 {
        Ending::new(&event, Ended::Cancelled, Some("dropped"))
    } else {
        Ending::new(&event, Ended::Applied, None)
    })
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
