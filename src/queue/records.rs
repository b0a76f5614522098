//! Reservation records and the outcome stream (docs/redis-keys.md, docs/outcomes.md).
//!
//! reserve.lua writes a record `{q}:r:<event_id>` with the reservation; the scripts that end
//! it (settle.lua, dead_drop.lua) change its state and append to `{q}:outcomes` in the same
//! step, so an outcome is announced exactly when its transition happens, once. This file
//! reads them back: one record for `status`, the stream for `outcomes`.

use std::collections::HashMap;
use std::time::Duration;

use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

use super::{CALL_TIMEOUT, Queue, Waiter, millis};
use crate::error::{Result, bounded};
use crate::event::Event;

/// The reason an outcome `rejected` carries.
pub(crate) const REJECTED_REASON: &str = "insufficient stock in MySQL";

/// How long records and the outcome stream are kept.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Retention {
    /// A record's time to live once its reservation ended.
    pub(crate) record_ttl: Duration,
    /// The outcome stream is trimmed (approximately) to this many entries.
    pub(crate) outcomes_maxlen: u64,
}

/// A reservation's state (docs/outcomes.md), as its record holds it and every answer tells it.
/// On the wire it is the same lowercase word as ever ([`ReservationState::as_str`]): in JSON
/// (serde), on the command line (`Display`), in the outcome stream and in `stock_log`.
///
/// A word this build does not know is kept as [`ReservationState::Other`], word for word,
/// never refused: the Lua scripts write the states, and during a rolling deploy a newer script
/// may write one that an older process has never heard of. Its status must still be answered
/// (and printed back unchanged), and nothing is decided on a state not understood, so reading
/// one is no error; code that acts on a state matches the known ones and leaves `Other` alone.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ReservationState {
    /// Taken in Redis, waiting for payment until its deadline.
    Held,
    /// Taken in Redis, its deduction on its way.
    Queued,
    /// In `{q}:dead`, still holding its stock.
    Dead,
    /// Cancelled before its deduction: the worker drops the entry.
    Cancelling,
    /// Cancelled after its deduction: a release gives MySQL the quantity back.
    Releasing,
    Applied,
    Rejected,
    Cancelled,
    Expired,
    Released,
    /// A second reservation under a used event id that reached MySQL.
    Duplicate,
    /// A state this build does not know, as read.
    Other(String),
}

impl ReservationState {
    const KNOWN: [ReservationState; 11] = [
        ReservationState::Held,
        ReservationState::Queued,
        ReservationState::Dead,
        ReservationState::Cancelling,
        ReservationState::Releasing,
        ReservationState::Applied,
        ReservationState::Rejected,
        ReservationState::Cancelled,
        ReservationState::Expired,
        ReservationState::Released,
        ReservationState::Duplicate,
    ];

    pub fn as_str(&self) -> &str {
        match self {
            ReservationState::Held => "held",
            ReservationState::Queued => "queued",
            ReservationState::Dead => "dead",
            ReservationState::Cancelling => "cancelling",
            ReservationState::Releasing => "releasing",
            ReservationState::Applied => "applied",
            ReservationState::Rejected => "rejected",
            ReservationState::Cancelled => "cancelled",
            ReservationState::Expired => "expired",
            ReservationState::Released => "released",
            ReservationState::Duplicate => "duplicate",
            ReservationState::Other(word) => word,
        }
    }
}

impl From<&str> for ReservationState {
    fn from(word: &str) -> ReservationState {
        let known = ReservationState::KNOWN.into_iter().find(|s| s.as_str() == word);
        known.unwrap_or_else(|| ReservationState::Other(word.to_string()))
    }
}

/// Never fails: an unknown word is [`ReservationState::Other`].
impl std::str::FromStr for ReservationState {
    type Err = std::convert::Infallible;

    fn from_str(word: &str) -> std::result::Result<ReservationState, Self::Err> {
        Ok(ReservationState::from(word))
    }
}

impl std::fmt::Display for ReservationState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // pad, not write: a table's `{state:<10}` lines up
        f.pad(self.as_str())
    }
}

impl Serialize for ReservationState {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ReservationState {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let word = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Ok(ReservationState::from(word.as_ref()))
    }
}

impl redis::FromRedisValue for ReservationState {
    fn from_redis_value(v: redis::Value) -> std::result::Result<Self, redis::ParsingError> {
        Ok(ReservationState::from(String::from_redis_value(v)?.as_str()))
    }
}

/// A state of a reservation that a script moves it into when it settles an entry: the
/// [`ReservationState`]s a settlement can end in, and only those.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    Applied,
    Rejected,
    Duplicate,
    Cancelled,
    Dead,
}

impl Ended {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Ended::Applied => "applied",
            Ended::Rejected => "rejected",
            Ended::Duplicate => "duplicate",
            Ended::Cancelled => "cancelled",
            Ended::Dead => "dead",
        }
    }
}

/// What a script needs to record and announce how one entry's reservation ended: taken from
/// the entry itself, so that entries pushed by hand (without a record) are announced too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ending {
    pub(crate) event: Event,
    pub(crate) state: Ended,
    pub(crate) reason: Option<String>,
}

impl Ending {
    pub(crate) fn new(event: &Event, state: Ended, reason: Option<&str>) -> Ending {
        Ending { event: event.clone(), state, reason: reason.map(str::to_string) }
    }

    /// An acknowledgement's 6 arguments: event_id, product_id, qty, seq, buyer, reserved_at
    /// ('' for an absent value); settle.lua knows it ends `applied`, with no reason, and
    /// counts its qty in flight when it has a seq.
    pub(super) fn push_args_applied(e: &Ending, invocation: &mut redis::ScriptInvocation<'_>) {
        let ev = &e.event;
        invocation
            .arg(ev.event_id.as_str())
            .arg(ev.product_id)
            .arg(ev.qty)
            .arg(ev.seq.map(|s| s.to_string()).unwrap_or_default())
            .arg(ev.buyer.as_deref().unwrap_or(""))
            .arg(ev.reserved_at.map(|t| t.to_string()).unwrap_or_default());
    }

    /// The 8 arguments the scripts read per entry: event_id, product_id, qty, seq, buyer,
    /// reserved_at, state, reason ('' for an absent value).
    pub(super) fn push_args(ending: Option<&Ending>, invocation: &mut redis::ScriptInvocation<'_>) {
        let Some(e) = ending else {
            for _ in 0..8 {
                invocation.arg("");
            }
            return;
        };
        let ev = &e.event;
        invocation
            .arg(ev.event_id.as_str())
            .arg(ev.product_id)
            .arg(ev.qty)
            .arg(ev.seq.map(|s| s.to_string()).unwrap_or_default())
            .arg(ev.buyer.as_deref().unwrap_or(""))
            .arg(ev.reserved_at.map(|t| t.to_string()).unwrap_or_default())
            .arg(e.state.as_str())
            .arg(e.reason.as_deref().unwrap_or(""));
    }
}

/// A reservation's record as stored, every field as written (absent ones are `None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub state: ReservationState,
    pub product_id: i64,
    pub qty: i64,
    pub buyer: Option<String>,
    pub seq: Option<i64>,
    pub deadline: Option<i64>,
    pub reserved_at: Option<i64>,
    pub updated_at: Option<i64>,
    /// Raised by every transition, 1 when made (docs/outcomes.md); `None` for a record
    /// written before versions.
    pub version: Option<i64>,
}

impl Record {
    /// A record as the scripts write it: one string,
    /// `version|state|product_id|qty|seq|reserved_at|updated_at|buyer|deadline|tally|epoch|envelope`
    /// (`lua/includes/record.lua`); one written before versions starts with its state.
    fn parse(text: &str) -> Option<Record> {
        let versioned = text.starts_with(|c: char| c.is_ascii_digit());
        let mut f = text.splitn(if versioned { 12 } else { 11 }, '|');
        let mut next = || f.next().filter(|v| !v.is_empty());
        let int = |v: Option<&str>| v.and_then(|v| v.parse::<i64>().ok());
        let version = if versioned { int(next()) } else { None };
        let state = ReservationState::from(next()?);
        let product_id = int(next())?;
        let qty = int(next())?;
        let seq = int(next());
        let reserved_at = int(next());
        let updated_at = int(next());
        let buyer = next().map(str::to_string);
        let deadline = int(next());
        Some(Record { state, product_id, qty, buyer, seq, deadline, reserved_at, updated_at, version })
    }

    /// A record written as a hash, before records were strings.
    fn from_fields(fields: HashMap<String, String>) -> Option<Record> {
        let int = |name: &str| fields.get(name).and_then(|v| v.parse::<i64>().ok());
        Some(Record {
            state: ReservationState::from(fields.get("state")?.as_str()),
            product_id: int("product_id")?,
            qty: int("qty")?,
            buyer: fields.get("buyer").cloned(),
            seq: int("seq"),
            deadline: int("deadline"),
            reserved_at: int("reserved_at"),
            updated_at: int("updated_at"),
            version: None,
        })
    }
}

/// One entry of `{q}:outcomes` (or of another of the queue's streams, `{q}:alerts`): its
/// stream id and fields, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamEntry {
    pub id: String,
    pub fields: Vec<(String, String)>,
}

impl StreamEntry {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

type RawEntries = Vec<(String, Vec<(String, String)>)>;

fn entries(raw: RawEntries) -> Vec<StreamEntry> {
    raw.into_iter().map(|(id, fields)| StreamEntry { id, fields }).collect()
}

impl Queue {
    /// The record of `event_id` in this shard, if there is one: a string, or a hash written
    /// before records were strings.
    pub async fn record(&self, event_id: &str) -> Result<Option<Record>> {
        let key = self.keys.record(event_id);
        let mut conn = self.conn();
        match bounded::<Option<String>, _>("redis (record)", CALL_TIMEOUT, conn.get(&key)).await {
            Ok(text) => Ok(text.as_deref().and_then(Record::parse)),
            Err(crate::error::Error::Redis(e)) if e.code() == Some("WRONGTYPE") => {
                let fields: HashMap<String, String> =
                    bounded("redis (record)", CALL_TIMEOUT, conn.hgetall(&key)).await?;
                Ok(Record::from_fields(fields))
            }
            Err(e) => Err(e),
        }
    }

    /// The records of `event_ids` (`None` for one without a record), in one round trip but
    /// for records written as hashes.
    pub(crate) async fn records(&self, event_ids: &[String]) -> Result<Vec<Option<Record>>> {
        if event_ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = event_ids.iter().map(|id| self.keys.record(id)).collect();
        let mut conn = self.conn();
        let texts: Vec<Option<String>> = bounded("redis (records)", CALL_TIMEOUT, conn.mget(&keys)).await?;
        let mut records = Vec::with_capacity(texts.len());
        for (id, text) in event_ids.iter().zip(texts) {
            records.push(match text {
                Some(text) => Record::parse(&text),
                None => self.record(id).await?,
            });
        }
        Ok(records)
    }

    /// The product of each of `event_ids`' records (`None` for one without a record), in one
    /// round trip but for records written as hashes (MGET answers nothing for those).
    pub(crate) async fn record_products(&self, event_ids: &[String]) -> Result<Vec<Option<i64>>> {
        Ok(self.records(event_ids).await?.into_iter().map(|r| r.map(|r| r.product_id)).collect())
    }

    /// The latest `count` outcomes, newest first (XREVRANGE).
    pub async fn latest_outcomes(&self, count: usize) -> Result<Vec<StreamEntry>> {
        self.latest_entries("redis (outcomes)", self.keys.outcomes(), count).await
    }

    /// The latest `count` entries of the stream `key`, newest first (XREVRANGE).
    pub(super) async fn latest_entries(
        &self,
        what: &'static str,
        key: String,
        count: usize,
    ) -> Result<Vec<StreamEntry>> {
        self.stream_range(what, "XREVRANGE", key, "+", "-", count).await
    }

    /// Up to `count` entries of the stream `key` from `start` to `end`, with `command` (XRANGE
    /// oldest first, XREVRANGE newest first, `end` before `start`).
    async fn stream_range(
        &self,
        what: &'static str,
        command: &str,
        key: String,
        start: &str,
        end: &str,
        count: usize,
    ) -> Result<Vec<StreamEntry>> {
        let mut conn = self.conn();
        let raw: RawEntries = bounded(
            what,
            CALL_TIMEOUT,
            redis::cmd(command).arg(key).arg(start).arg(end).arg("COUNT").arg(count).query_async(&mut conn),
        )
        .await?;
        Ok(entries(raw))
    }

    /// Up to `count` outcomes before stream id `before` (`None`: from the newest), newest
    /// first (XREVRANGE with an exclusive end): a search pages back through the stream.
    pub(crate) async fn outcomes_before(
        &self,
        before: Option<&str>,
        count: usize,
    ) -> Result<Vec<StreamEntry>> {
        let end = before.map_or_else(|| "+".to_string(), |id| format!("({id}"));
        self.stream_range("redis (outcomes)", "XREVRANGE", self.keys.outcomes(), &end, "-", count).await
    }

    /// The held reservations of this shard whose deadlines come first: (event id, deadline
    /// in unix ms), up to `count`, earliest first; and how many there are.
    pub(crate) async fn holds_first(&self, count: usize) -> Result<(Vec<(String, i64)>, u64)> {
        let mut conn = self.conn();
        let (held, total): (Vec<(String, i64)>, u64) = bounded(
            "redis (holds)",
            CALL_TIMEOUT,
            redis::pipe()
                .cmd("ZRANGE")
                .arg(self.keys.holds())
                .arg(0)
                .arg(count.saturating_sub(1) as i64)
                .arg("WITHSCORES")
                .zcard(self.keys.holds())
                .query_async(&mut conn),
        )
        .await?;
        Ok((held, total))
    }

    /// Up to `count` outcomes after stream id `after` (`None`: from the first), oldest first
    /// (XRANGE with an exclusive start): a reader pages through the stream with the last id
    /// of each page.
    pub(crate) async fn outcomes_after(&self, after: Option<&str>, count: usize) -> Result<Vec<StreamEntry>> {
        let start = after.map_or_else(|| "-".to_string(), |id| format!("({id}"));
        self.stream_range("redis (outcomes)", "XRANGE", self.keys.outcomes(), &start, "+", count).await
    }

    /// Outcomes appended after stream id `after`, waiting up to `wait` for the first one
    /// (XREAD BLOCK on the waiter's dedicated connection).
    pub async fn next_outcomes(
        &self,
        waiter: &mut Waiter,
        after: &str,
        wait: Duration,
    ) -> Result<Vec<StreamEntry>> {
        let reply: Option<Vec<(String, RawEntries)>> = bounded(
            "redis (XREAD)",
            wait + CALL_TIMEOUT,
            redis::cmd("XREAD")
                .arg("COUNT")
                .arg(1000)
                .arg("BLOCK")
                .arg(millis(wait).max(1))
                .arg("STREAMS")
                .arg(self.keys.outcomes())
                .arg(after)
                .query_async(&mut waiter.conn),
        )
        .await?;
        Ok(reply.into_iter().flatten().flat_map(|(_, raw)| entries(raw)).collect())
    }
}

impl Queue {
    /// The states announced for `event_id` among the latest 1,000 outcomes, oldest first (for
    /// the demo's table; an order service follows the stream instead).
    pub(crate) async fn outcomes_of(&self, event_id: &str) -> Result<Vec<String>> {
        let mut told: Vec<String> = self
            .latest_outcomes(1000)
            .await?
            .into_iter()
            .filter(|e| e.get("event_id") == Some(event_id))
            .filter_map(|e| e.get("state").map(str::to_string))
            .collect();
        told.reverse();
        Ok(told)
    }
}

#[cfg(test)]
mod tests {
    use super::ReservationState;

    #[test]
    fn a_state_is_the_same_word_on_every_wire() {
        for state in ReservationState::KNOWN {
            let word = state.as_str().to_string();
            assert_eq!(word, word.to_lowercase());
            assert_eq!(ReservationState::from(word.as_str()), state);
            assert_eq!(word.parse::<ReservationState>(), Ok(state.clone()));
            assert_eq!(state.to_string(), word);
            assert_eq!(serde_json::to_value(&state).unwrap(), serde_json::json!(word));
            let value = redis::Value::BulkString(word.clone().into_bytes());
            assert_eq!(redis::from_redis_value::<ReservationState>(value).unwrap(), state);
        }
        assert_eq!(format!("[{:<8}]", ReservationState::Held), "[held    ]");
    }

    #[test]
    fn an_unknown_state_is_kept_word_for_word() {
        let state = ReservationState::from("paused");
        assert_eq!(state, ReservationState::Other("paused".into()));
        assert_eq!(state.as_str(), "paused");
        assert_eq!(serde_json::to_string(&state).unwrap(), r#""paused""#);
        assert_eq!(serde_json::from_str::<ReservationState>(r#""paused""#).unwrap(), state);
        assert_eq!(ReservationState::from("Applied"), ReservationState::Other("Applied".into()));
    }
}
