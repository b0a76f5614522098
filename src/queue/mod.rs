//! The reliable queue in Redis, and the only code that talks to Redis: every command is sent
//! from here, and every script of `lua/` through one typed method that states its contract.
//!
//! - this file: an entry's life (wait, claim, settle, renew, hand back, recover);
//! - `stock`: reservations, operators' adjustments, reading and correcting a product's stock;
//! - `books`: the consistency check's snapshot and its repair;
//! - `dead`: listing, requeuing and dropping dead letters;
//! - `workers`: the worker registry that heartbeats write;
//! - `ops`: depths, ping, the alerts stream, and the reset of the demo and the benchmark;
//! - `keys` (key names), `scripts` (the Lua files), `conn` (one server or a cluster),
//!   `shards` (a queue spread over several).
//!
//! One event's life in Redis:
//!
//! ```text
//!   reserve.lua ──LPUSH──▶ pending ──claim.lua / BLMOVE──▶ processing + claims(deadline)
//!        processing ──settle.lua──▶ gone (give-back or dead letter in the same step)
//!        processing ──requeue.lua (deadline passed)──▶ pending, or dead after max attempts
//! ```
//!
//! Every reservation is exactly one entry in `pending`, `processing` or `dead` until it is
//! settled; each script moves an entry in one atomic step, so no crash can duplicate or drop
//! it. Give-backs ride on the removal of the entry (settle.lua, dead_drop.lua), which is why a
//! rejected event returns its stock exactly once however often it is delivered.
//!
//! Connections: scripts and acknowledgements share one [`ConnectionManager`] (multiplexed,
//! reconnecting). A blocking BLMOVE would stall everything queued behind it on that
//! connection, so every consumer loop waits on its own [`Waiter`] connection instead.

mod books;
mod conn;
mod control;
mod dead;
mod fill;
mod group;
mod heal;
mod keys;
mod lifecycle;
mod ops;
mod records;
pub(crate) mod scripts;
mod sessions;
pub(crate) mod shards;
mod sold_out;
mod spread;
mod stock;
mod webhooks;
mod workers;

use std::time::Duration;

pub(crate) use books::{SNAPSHOT_CHUNK, Snapshot};
use conn::{Conn, Endpoint};
pub use control::{AuditEntry, Paused};
pub(crate) use dead::Dropped;
pub use heal::Marked;
pub(crate) use heal::{HEAL_LEASE, SettledRow};
pub use keys::Keys;
pub use lifecycle::{Cancel, Confirm};
pub(crate) use lifecycle::{EXPIRE_CHUNK, Forgotten};
pub use ops::Depths;
pub(crate) use ops::{Alert, REPORTER_LEASE};
pub(crate) use records::{Ended, Ending, REJECTED_REASON, Retention};
pub use records::{Record, ReservationState, StreamEntry};
pub use shards::Shards;
pub(crate) use spread::{Outgoing, Received};
pub(crate) use stock::Adjustment;
pub use stock::Reservation;
pub(crate) use webhooks::Taken;
pub use workers::Heartbeat;

use crate::config::Settings;
use crate::error::{Error, Result, Store, bounded};

/// How long an ordinary Redis call may take before it counts as failed.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Every Redis command stockq sends, directly or from its scripts. A Redis ACL user limited
/// to these and to one queue's keys runs every stockq command on that queue:
///
/// ```text
/// ACL SETUSER stockq on >PASSWORD resetkeys ~{stockq}:* resetchannels -@all <ACL_COMMANDS>
/// ```
pub const ACL_COMMANDS: &str = "+ping +time +evalsha +script|load +blmove \
    +get +set +mget +del +exists +incr +incrby +decrby +llen +lindex +lrange +lpush +rpush +rpop \
    +lrem +lset +lpos +zadd +zrem +zscore +zrange +zrangebyscore +hgetall +hincrby +hdel +sadd +srem \
    +smembers +xadd +hmget +hset +pexpire +xrevrange +xread +hget +hscan +sismember +smismember +scard \
    +persist +zcard +scan +unlink +xrange +xtrim +ltrim +lpop";

/// One entry of a list, kept as bytes: garbage pushed by hand need not be UTF-8.
pub(crate) type Entry = Vec<u8>;

/// A handle on one queue.
#[derive(Clone)]
pub struct Queue {
    keys: Keys,
    endpoint: Endpoint,
    conn: Conn,
    visibility_timeout: Duration,
    max_attempts: u32,
    retention: Retention,
    /// The highest sequence number this process has had from this shard: the sequence only
    /// grows, so a lower one means Redis lost writes ([`Queue::observe_seq`]).
    highest_seq: std::sync::Arc<std::sync::atomic::AtomicI64>,
    /// This queue's index among the shards of a sharded queue; `None` when it is not sharded.
    shard: Option<u16>,
    /// The shard's group commit of reservations, started by the first one.
    grouper: std::sync::Arc<std::sync::OnceLock<group::Grouper>>,
    /// Products this process saw sold out on the shard, lately (`sold_out`).
    sold_out: std::sync::Arc<sold_out::SoldOut>,
}

/// A dedicated connection for one consumer's blocking wait.
pub struct Waiter {
    conn: Conn,
}

/// A batch of entries just claimed.
#[derive(Debug, Default, Clone)]
pub struct Claim {
    /// Their claim deadline, unix ms on the Redis clock.
    pub deadline_ms: i64,
    /// The claim's number in the queue's sequence (0 when nothing was claimed): recorded in
    /// the `stock_log` rows of this batch, so the check can tell what MySQL applied after
    /// its snapshot (see src/check.rs).
    pub seq: i64,
    pub entries: Vec<Entry>,
    /// Entries (index into `entries`) whose reservation was cancelled: dropped without a
    /// MySQL deduction. `unsure` when an earlier delivery may have committed it, so MySQL
    /// must be asked first.
    pub cancelled: Vec<Cancelled>,
    /// Releases waiting on `{q}:releases` when the batch was claimed.
    pub releases: u64,
    /// The claim's number showed that Redis lost writes, and this claim halted the shard:
    /// the claimer heals it (`crate::heal`).
    pub halted: bool,
}

/// A claimed entry whose reservation was cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cancelled {
    pub index: usize,
    pub unsure: bool,
}

/// What settle.lua should do with a batch whose MySQL outcome is decided.
#[derive(Debug, Default)]
pub(crate) struct Settlement {
    /// Applied in MySQL (now or on an earlier delivery): remove.
    pub(crate) acks: Vec<Ack>,
    /// Not deducted in MySQL: remove and give `qty` back to the product's Redis stock.
    pub(crate) give_backs: Vec<GiveBack>,
    /// Cannot be processed: remove and push the envelope onto `{q}:dead`.
    pub(crate) dead: Vec<(Entry, String)>,
    /// Cancelled before MySQL deducted them: remove, ending `cancelled` (their stock came
    /// back with the cancel).
    pub(crate) drops: Vec<(Entry, Ending)>,
    /// The totals of `{q}:counters` the acknowledgements add to, as runs over `acks` then
    /// `give_backs` in order: `(field, n)` counts the next n entries. settle.lua adds only the
    /// entries it finds, so a late acknowledgement adds nothing.
    pub(crate) counters: Vec<(&'static str, u64)>,
}

/// An entry to acknowledge: MySQL has its deduction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ack {
    pub(crate) entry: Entry,
    pub(crate) product_id: i64,
    /// The units reserve.lua counted in the product's in-flight total for this entry (its
    /// qty, or 0 for an event pushed by hand without a seq), uncounted with the removal.
    pub(crate) counted: i64,
    /// How its reservation ended (`applied`), for its record and the outcome stream.
    pub(crate) ending: Ending,
}

/// An entry to acknowledge whose Redis stock goes back: MySQL did not deduct it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GiveBack {
    pub(crate) entry: Entry,
    pub(crate) product_id: i64,
    pub(crate) qty: i64,
    /// As for [`Ack::counted`].
    pub(crate) counted: i64,
    /// `rejected` or `duplicate`, as for [`Ack::ending`].
    pub(crate) ending: Ending,
}

impl Settlement {
    pub(crate) fn is_empty(&self) -> bool {
        self.acks.is_empty() && self.give_backs.is_empty() && self.dead.is_empty() && self.drops.is_empty()
    }
}

/// What settle.lua did: how many entries it found and moved, and the units it gave back.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SettleCounts {
    /// Entries removed from processing (acknowledged or given back).
    pub(crate) acknowledged: u64,
    /// Units of stock returned to Redis.
    pub(crate) units_given_back: i64,
    pub(crate) dead_lettered: u64,
    /// Entries of cancelled reservations removed without a deduction.
    pub(crate) cancelled: u64,
}

/// What one recovery pass did.
#[derive(Debug, Default)]
pub(crate) struct Recovery {
    /// Entries whose claim expired, moved back to pending.
    pub(crate) requeued: u64,
    /// Entries found in processing without a claim, given a deadline.
    pub(crate) adopted: u64,
    /// Entries that reached max attempts: (entry, attempts). Still in processing.
    pub(crate) exhausted: Vec<(Entry, u64)>,
    /// Time until the earliest claim deadline still standing, if any.
    pub(crate) next_deadline_in: Option<Duration>,
}

impl Queue {
    /// Connects to Redis and checks that it answers.
    pub async fn connect(settings: &Settings) -> Result<Queue> {
        let endpoint = Endpoint::open(&settings.redis.url)?;
        let conn = endpoint.shared(CALL_TIMEOUT).await.map_err(|e| describe_connect_error(e, settings))?;
        Ok(Queue {
            keys: Keys::new(&settings.redis.queue),
            endpoint,
            conn,
            visibility_timeout: settings.delivery.visibility_timeout,
            max_attempts: settings.delivery.max_attempts,
            retention: Retention {
                record_ttl: settings.redis.record_ttl,
                outcomes_maxlen: settings.redis.outcomes_maxlen,
            },
            highest_seq: Default::default(),
            shard: None,
            grouper: Default::default(),
            sold_out: Default::default(),
        })
    }

    /// This queue's index among the shards of a sharded queue; `None` when it is not sharded.
    pub fn shard(&self) -> Option<u16> {
        self.shard
    }

    /// The same connection, for shard `index` of a sharded queue, with its own `keys`.
    pub(crate) fn with_shard(&self, keys: Keys, index: u16) -> Queue {
        Queue {
            keys,
            shard: Some(index),
            highest_seq: Default::default(),
            grouper: Default::default(),
            sold_out: Default::default(),
            ..self.clone()
        }
    }

    /// The shard's group commit of reservations (see `group`).
    fn grouper(&self) -> &group::Grouper {
        self.grouper.get_or_init(|| group::Grouper::start(self.conn(), self.keys.clone()))
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// A clone of the shared connection (cheap: it is multiplexed).
    fn conn(&self) -> Conn {
        self.conn.clone()
    }

    /// Runs a script on the shared connection; `what` names it in a timeout error.
    async fn invoke<T: redis::FromRedisValue>(
        &self,
        what: &'static str,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T> {
        let mut conn = self.conn.clone();
        bounded(what, CALL_TIMEOUT, invocation.invoke_async(&mut conn)).await
    }

    pub(crate) fn visibility_timeout(&self) -> Duration {
        self.visibility_timeout
    }

    /// Opens a dedicated connection for BLMOVE. It has no response timeout of its own: the
    /// wait is bounded by BLMOVE's timeout argument and by [`Queue::wait_for_entry`].
    pub(crate) async fn waiter(&self) -> Result<Waiter> {
        Ok(Waiter { conn: self.endpoint.blocking().await? })
    }

    /// Blocks up to `wait` for an entry, moving it into processing (BLMOVE RIGHT LEFT).
    ///
    /// The moved entry has no claim deadline yet: pass it to [`Queue::claim`] at once. If this
    /// process dies first, or the reply is lost, the janitor adopts the entry (requeue.lua).
    pub(crate) async fn wait_for_entry(&self, waiter: &mut Waiter, wait: Duration) -> Result<Option<Entry>> {
        let mut cmd = redis::cmd("BLMOVE");
        cmd.arg(self.keys.pending())
            .arg(self.keys.processing())
            .arg("RIGHT")
            .arg("LEFT")
            .arg(wait.as_secs_f64());
        bounded("redis (BLMOVE)", wait + CALL_TIMEOUT, cmd.query_async(&mut waiter.conn)).await
    }

    /// Takes up to `max` entries from pending into processing, with one deadline for all
    /// (`lua/claim.lua`); `moved` is an entry already moved by [`Queue::wait_for_entry`],
    /// which is given the same deadline and counts towards `max`.
    pub async fn claim(&self, max: usize, moved: Option<Entry>) -> Result<Claim> {
        let more = max.saturating_sub(usize::from(moved.is_some()));
        let mut invocation = scripts::CLAIM.prepare_invoke();
        invocation
            .key(self.keys.pending())
            .key(self.keys.processing())
            .key(self.keys.claims())
            .key(self.keys.seq())
            .key(self.keys.cancels())
            .key(self.keys.unsure())
            .key(self.keys.releases())
            .arg(more)
            .arg(millis(self.visibility_timeout));
        if let Some(entry) = &moved {
            invocation.arg(entry.as_slice());
        }
        let floor = self.seq_floor();
        let reply: Vec<redis::Value> = self.invoke("redis (claim)", &invocation).await?;
        let mut values = reply.into_iter();
        let deadline_ms: i64 = next_value(&mut values)?;
        let seq: i64 = next_value(&mut values)?;
        let releases: u64 = next_value(&mut values)?;
        let marks: Vec<i64> = next_value(&mut values)?;
        let mut entries = Vec::with_capacity(values.len() + 1);
        entries.extend(moved);
        for value in values {
            entries.push(redis::from_redis_value(value)?);
        }
        let cancelled = marks
            .into_iter()
            .map(|m| Cancelled { index: m.unsigned_abs() as usize - 1, unsure: m < 0 })
            .filter(|c| c.index < entries.len())
            .collect();
        let halted = self.observe_seq(seq, floor).await?;
        Ok(Claim { deadline_ms, seq, entries, cancelled, releases, halted })
    }

    /// Acknowledges a decided batch in one atomic step (`lua/settle.lua`).
    pub(crate) async fn settle(&self, s: &Settlement) -> Result<SettleCounts> {
        if s.is_empty() {
            return Ok(SettleCounts::default());
        }
        let mut invocation = scripts::SETTLE.prepare_invoke();
        invocation
            .key(self.keys.processing())
            .key(self.keys.claims())
            .key(self.keys.attempts())
            .key(self.keys.dead())
            .key(self.keys.counters())
            .key(self.keys.inflight())
            .key(self.keys.unsure())
            .key(self.keys.outcomes())
            .key(self.keys.cancels())
            .key(self.keys.releases())
            .key(self.keys.bought());
        for give_back in &s.give_backs {
            invocation.key(self.keys.stock(give_back.product_id));
        }
        let dead_endings: Vec<Option<Ending>> =
            s.dead.iter().map(|(_, envelope)| dead_ending(envelope)).collect();
        let endings = s.acks.iter().map(|a| Some(&a.ending));
        let endings = endings.chain(s.give_backs.iter().map(|g| Some(&g.ending)));
        let endings = endings.chain(dead_endings.iter().map(Option::as_ref));
        for ending in endings.chain(s.drops.iter().map(|(_, e)| Some(e))) {
            // an entry that is not an event has no record: any key of the queue stands in
            invocation
                .key(ending.map_or_else(|| self.keys.outcomes(), |e| self.keys.record(&e.event.event_id)));
        }
        let counters: Vec<String> = s.counters.iter().map(|(k, v)| format!("{k}={v}")).collect();
        invocation
            .arg(s.acks.len())
            .arg(s.give_backs.len())
            .arg(s.dead.len())
            .arg(counters.join(","))
            .arg(millis(self.retention.record_ttl))
            .arg(self.retention.outcomes_maxlen)
            .arg(s.drops.len());
        for ack in &s.acks {
            // its ending's first six: an acknowledgement ends `applied` (settle.lua)
            invocation.arg(ack.entry.as_slice());
            Ending::push_args_applied(&ack.ending, &mut invocation);
        }
        for g in &s.give_backs {
            invocation.arg(g.entry.as_slice()).arg(g.product_id).arg(g.qty).arg(g.counted);
            Ending::push_args(Some(&g.ending), &mut invocation);
        }
        for ((entry, envelope), ending) in s.dead.iter().zip(&dead_endings) {
            invocation.arg(entry.as_slice()).arg(envelope.as_str());
            Ending::push_args(ending.as_ref(), &mut invocation);
        }
        for (entry, ending) in &s.drops {
            invocation.arg(entry.as_slice());
            Ending::push_args(Some(ending), &mut invocation);
        }
        let (acknowledged, units_given_back, dead_lettered, cancelled): (u64, i64, u64, u64) =
            self.invoke("redis (settle)", &invocation).await?;
        Ok(SettleCounts { acknowledged, units_given_back, dead_lettered, cancelled })
    }

    /// Extends the claims of entries a live worker still holds (`lua/renew.lua`). Returns how
    /// many were extended: a claim already gone gets no new one.
    pub(crate) async fn renew(&self, entries: &[Entry]) -> Result<u64> {
        if entries.is_empty() {
            return Ok(0);
        }
        let mut invocation = scripts::RENEW.prepare_invoke();
        invocation.key(self.keys.claims()).arg(millis(self.visibility_timeout));
        for entry in entries {
            invocation.arg(entry.as_slice());
        }
        self.invoke("redis (renew)", &invocation).await
    }

    /// Hands entries back to pending without counting a failed delivery (`lua/hand_back.lua`).
    /// Returns how many went back: an entry no longer in processing is left alone.
    ///
    /// Not to be confused with a release, which gives a cancelled applied reservation's
    /// quantity back to MySQL (`{q}:releases`, `lua/released.lua`).
    pub async fn hand_back(&self, entries: &[Entry]) -> Result<u64> {
        if entries.is_empty() {
            return Ok(0);
        }
        let mut invocation = scripts::HAND_BACK.prepare_invoke();
        invocation
            .key(self.keys.processing())
            .key(self.keys.claims())
            .key(self.keys.pending())
            .key(self.keys.unsure());
        for entry in entries {
            invocation.arg(entry.as_slice());
        }
        self.invoke("redis (hand back)", &invocation).await
    }

    /// One recovery pass over claims whose deadline passed, at most `limit` of them
    /// (`lua/requeue.lua`).
    pub(crate) async fn requeue_expired(&self, limit: usize) -> Result<Recovery> {
        let mut invocation = scripts::REQUEUE.prepare_invoke();
        invocation
            .key(self.keys.processing())
            .key(self.keys.claims())
            .key(self.keys.attempts())
            .key(self.keys.pending())
            .key(self.keys.counters())
            .key(self.keys.unsure())
            .arg(self.max_attempts)
            .arg(millis(self.visibility_timeout))
            .arg(limit);
        let reply: Vec<redis::Value> = self.invoke("redis (requeue)", &invocation).await?;
        let mut values = reply.into_iter();
        let requeued: u64 = next_value(&mut values)?;
        let adopted: u64 = next_value(&mut values)?;
        let next_ms: i64 = next_value(&mut values)?;
        let next_deadline_in = u64::try_from(next_ms).ok().map(Duration::from_millis);
        let mut exhausted = Vec::new();
        while let Some(entry) = values.next() {
            let entry: Entry = redis::from_redis_value(entry)?;
            let attempts: u64 = next_value(&mut values)?;
            exhausted.push((entry, attempts));
        }
        Ok(Recovery { requeued, adopted, exhausted, next_deadline_in })
    }
}

/// How a dead letter's reservation is announced: `dead` with the envelope's reason; `None`
/// for an entry that is not an event (it holds no reservation).
fn dead_ending(envelope: &str) -> Option<Ending> {
    let letter = crate::event::DeadLetter::parse(envelope.as_bytes())?;
    Some(Ending::new(&letter.event()?, Ended::Dead, Some(&letter.reason)))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn next_value<T: redis::FromRedisValue>(values: &mut impl Iterator<Item = redis::Value>) -> Result<T> {
    let value = values.next().ok_or_else(|| {
        Error::Redis(redis::RedisError::from((
            redis::ErrorKind::UnexpectedReturnType,
            "a script returned fewer values than its contract says",
        )))
    })?;
    Ok(redis::from_redis_value(value)?)
}

/// Turns a failed first connection into one line that says what to do.
fn describe_connect_error(e: Error, settings: &Settings) -> Error {
    match e {
        Error::Usage(_) => e,
        source => Error::Connect {
            store: Store::Redis,
            target: settings.redis.url.to_string(),
            hint: "start it (scripts/services.sh) or set REDIS_URL",
            source: Box::new(source),
        },
    }
}
