//! Reservation records and the outcome stream (docs/redis-keys.md, docs/outcomes.md).
//!
//! reserve.lua writes a record `{q}:r:<event_id>` with the reservation; the scripts that end
//! it (settle.lua, dead_drop.lua) change its state and append to `{q}:outcomes` in the same
//! step, so an outcome is announced exactly when its transition happens, once. This file
//! reads them back: one record for `status`, the stream for `outcomes`.

use std::collections::HashMap;
use std::time::Duration;

use redis::AsyncCommands;

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

/// A state of a reservation that a script moves it into when it settles an entry.
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
    pub state: String,
    pub product_id: i64,
    pub qty: i64,
    pub buyer: Option<String>,
    pub seq: Option<i64>,
    pub deadline: Option<i64>,
    pub reserved_at: Option<i64>,
    pub updated_at: Option<i64>,
}

impl Record {
    fn from_fields(fields: HashMap<String, String>) -> Option<Record> {
        let int = |name: &str| fields.get(name).and_then(|v| v.parse::<i64>().ok());
        Some(Record {
            state: fields.get("state")?.clone(),
            product_id: int("product_id")?,
            qty: int("qty")?,
            buyer: fields.get("buyer").cloned(),
            seq: int("seq"),
            deadline: int("deadline"),
            reserved_at: int("reserved_at"),
            updated_at: int("updated_at"),
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
    /// The record of `event_id` in this shard, if there is one.
    pub async fn record(&self, event_id: &str) -> Result<Option<Record>> {
        let mut conn = self.conn();
        let fields: HashMap<String, String> =
            bounded("redis (record)", CALL_TIMEOUT, conn.hgetall(self.keys.record(event_id))).await?;
        Ok(Record::from_fields(fields))
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
        let mut conn = self.conn();
        let raw: RawEntries = bounded(
            what,
            CALL_TIMEOUT,
            redis::cmd("XREVRANGE").arg(key).arg("+").arg("-").arg("COUNT").arg(count).query_async(&mut conn),
        )
        .await?;
        Ok(entries(raw))
    }

    /// Up to `count` outcomes after stream id `after` (`None`: from the first), oldest first
    /// (XRANGE with an exclusive start): a reader pages through the stream with the last id
    /// of each page.
    pub(crate) async fn outcomes_after(&self, after: Option<&str>, count: usize) -> Result<Vec<StreamEntry>> {
        let start = after.map_or_else(|| "-".to_string(), |id| format!("({id}"));
        let mut conn = self.conn();
        let raw: RawEntries = bounded(
            "redis (outcomes)",
            CALL_TIMEOUT,
            redis::cmd("XRANGE")
                .arg(self.keys.outcomes())
                .arg(start)
                .arg("+")
                .arg("COUNT")
                .arg(count)
                .query_async(&mut conn),
        )
        .await?;
        Ok(entries(raw))
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
