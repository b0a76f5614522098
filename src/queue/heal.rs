//! What a heal after lost Redis writes does in Redis (`lua/heal.lua`; the heal itself is
//! `crate::heal`), and the watch every process keeps on the sequence: it only ever grows, so
//! a number below one this process has seen means Redis went back in time.

use std::sync::atomic::Ordering;

use super::{CALL_TIMEOUT, Queue, millis, next_value, scripts};
use crate::error::{Result, bounded};

/// How long a halt or a heal keeps reservations refused unless renewed: long enough for a
/// heal (a check and a few thousand records), short enough that a healer that died does not
/// stop the sale for long (the next janitor pass heals again).
pub(crate) const HEAL_LEASE: std::time::Duration = std::time::Duration::from_secs(30);

/// A `stock_log` row of a reservation MySQL settled during writes Redis lost, as the heal
/// reads it to compare with the reservation's record.
#[derive(Debug, Clone)]
pub(crate) struct SettledRow {
    pub(crate) event_id: String,
    pub(crate) seq: i64,
    /// `applied` or `released`.
    pub(crate) status: &'static str,
    pub(crate) product_id: i64,
    pub(crate) qty: i64,
    /// The shard whose queue delivered it (`None` before shards were recorded: its product's).
    pub(crate) shard: Option<i16>,
}

/// What a heal did to the records of reservations MySQL settled during the lost writes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Marked {
    /// Entries back in the queue that MySQL had applied: marked unsure.
    pub unsure: u64,
    /// Holds whose confirm was lost, ended `applied`.
    pub applied: u64,
    /// Applied reservations whose cancel was lost, ended `released`.
    pub released: u64,
}

/// The shard's heal state as the scripts see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Watch {
    /// The sequence now.
    pub(crate) seq: i64,
    /// A process halted the shard, or a heal did not finish: it needs a heal (reservations
    /// are refused until its lease runs out).
    pub(crate) halted: bool,
}

impl Queue {
    /// The highest sequence number this process has had from the shard: read before a call
    /// that takes a number, and passed to [`Queue::observe_seq`] with the number it took.
    pub(crate) fn seq_floor(&self) -> i64 {
        self.highest_seq.load(Ordering::Relaxed)
    }

    /// Notes a number `seq` that a call took from the shard's sequence, `floor` being
    /// [`Queue::seq_floor`] before the call was sent. Redis numbered the call after every
    /// answer received before it was sent, so a number not above `floor` means Redis lost
    /// writes (calls in flight at once may come back in any order: only this comparison is
    /// sound). The shard is halted at once (`lua/heal.lua` 'halt'), so that it sells nothing
    /// on stock MySQL no longer has, until a healer takes over. Returns whether this call
    /// halted it.
    pub(crate) async fn observe_seq(&self, seq: i64, floor: i64) -> Result<bool> {
        Ok(self.observe(seq, floor, None).await?.0)
    }

    /// [`Queue::observe_seq`] for the number of a reservation just made (`event_id` of
    /// `product_id`): when it shows that Redis lost writes, the reservation is undone as if
    /// never made, unless a worker took it already, since it was sold on stock that MySQL
    /// may no longer have. Returns whether it was undone (its shopper retries later).
    pub(crate) async fn observe_reservation(
        &self,
        seq: i64,
        floor: i64,
        event_id: &str,
        product_id: i64,
    ) -> Result<bool> {
        Ok(self.observe(seq, floor, Some((event_id, product_id))).await?.1)
    }

    /// (halted now, reservation undone).
    async fn observe(&self, seq: i64, floor: i64, reservation: Option<(&str, i64)>) -> Result<(bool, bool)> {
        if seq <= 0 {
            return Ok((false, false));
        }
        self.highest_seq.fetch_max(seq, Ordering::Relaxed);
        if seq > floor {
            return Ok((false, false));
        }
        let highest = floor;
        tracing::error!(
            queue = self.keys.prefix(),
            seq,
            highest,
            "Redis lost writes: the sequence went back; reservations stop until the shard is healed"
        );
        let k = &self.keys;
        let mut invocation = self.heal_invocation("halt");
        invocation.arg(seq).arg(highest).arg(millis(HEAL_LEASE));
        if let Some((event_id, product_id)) = reservation {
            invocation
                .key(k.record(event_id))
                .key(k.stock(product_id))
                .key(k.pending())
                .key(k.inflight())
                .key(k.holds())
                .key(k.bought())
                .arg(event_id);
        }
        let (halted, undone): (i64, i64) = self.invoke("redis (halt)", &invocation).await?;
        Ok((halted == 1, undone == 1))
    }

    /// The sequence and whether reservations are halted, in one round trip.
    pub(crate) async fn watch(&self) -> Result<Watch> {
        let mut conn = self.conn();
        let mut pipe = redis::pipe();
        pipe.cmd("GET").arg(self.keys.seq()).cmd("HGET").arg(self.keys.limits()).arg("!heal");
        let (seq, flag): (Option<i64>, Option<String>) =
            bounded("redis (watch)", CALL_TIMEOUT, pipe.query_async(&mut conn)).await?;
        Ok(Watch { seq: seq.unwrap_or(0), halted: flag.is_some() })
    }

    /// Takes the heal of this shard unless another healer holds it: reservations stop and the
    /// sequence moves past `mysql_max`. Returns (sequence before, the lowest number seen after
    /// the loss) or `None` when another healer holds it.
    pub(crate) async fn heal_begin(&self, mysql_max: i64, token: &str) -> Result<Option<(i64, i64)>> {
        let mut invocation = self.heal_invocation("begin");
        invocation.arg(mysql_max).arg(token).arg(millis(HEAL_LEASE));
        let reply: Vec<i64> = self.invoke("redis (heal)", &invocation).await?;
        Ok(match reply.as_slice() {
            [1, before, since] => Some((*before, *since)),
            _ => None,
        })
    }

    /// Extends the heal's lease; false when `token` no longer holds it.
    pub(crate) async fn heal_renew(&self, token: &str) -> Result<bool> {
        let mut invocation = self.heal_invocation("renew");
        invocation.arg(token).arg(millis(HEAL_LEASE));
        Ok(self.invoke::<i64>("redis (heal)", &invocation).await? == 1)
    }

    /// Sells again when `healed`; otherwise leaves the shard halted for the next healer.
    /// False when `token` did not hold the heal.
    pub(crate) async fn heal_end(&self, token: &str, healed: bool) -> Result<bool> {
        let mut invocation = self.heal_invocation("end");
        invocation.arg(token).arg(if healed { "healed" } else { "failed" }).arg(millis(HEAL_LEASE));
        Ok(self.invoke::<i64>("redis (heal)", &invocation).await? == 1)
    }

    /// Brings the records of reservations MySQL settled during the lost writes in line with
    /// MySQL (`lua/heal.lua` 'mark').
    pub(crate) async fn heal_mark(&self, settled: &[SettledRow]) -> Result<Marked> {
        if settled.is_empty() {
            return Ok(Marked::default());
        }
        let k = &self.keys;
        let mut invocation = self.heal_invocation("mark");
        invocation.key(k.unsure()).key(k.holds()).key(k.inflight()).key(k.outcomes()).key(k.bought());
        for s in settled {
            invocation.key(k.record(&s.event_id));
        }
        invocation.arg(millis(self.retention.record_ttl)).arg(self.retention.outcomes_maxlen);
        for s in settled {
            invocation.arg(s.event_id.as_str()).arg(s.seq).arg(s.status).arg(s.product_id).arg(s.qty);
        }
        let reply: Vec<redis::Value> = self.invoke("redis (heal)", &invocation).await?;
        let mut values = reply.into_iter();
        Ok(Marked {
            unsure: next_value(&mut values)?,
            applied: next_value(&mut values)?,
            released: next_value(&mut values)?,
        })
    }

    fn heal_invocation(&self, mode: &str) -> redis::ScriptInvocation<'static> {
        let mut invocation = scripts::HEAL.prepare_invoke();
        invocation.key(self.keys.limits()).key(self.keys.seq()).arg(mode.to_string());
        invocation
    }
}
