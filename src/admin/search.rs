//! Finding a reservation while a sale runs: by event id (its status, where it is now, the
//! outcomes it was announced with), by buyer, and the holds whose deadlines come first.
//!
//! Nothing here adds work to a reservation: no index is kept. A search reads what is there,
//! the records and the outcome streams, in bounded steps: at most [`SCAN_BUDGET`] outcomes
//! per shard, [`STEP`] a call, newest first, so that a search of a stream of a million
//! outcomes holds Redis for a few milliseconds at a time and stops.

use serde::Serialize;

use crate::error::Result;
use crate::ledger::Ledger;
use crate::queue::{Shards, StreamEntry};
use crate::reservations::{Status, status};

/// Outcomes read per call.
const STEP: usize = 1000;
/// Outcomes read at most per shard by one search.
pub(crate) const SCAN_BUDGET: usize = 100_000;

/// One outcome as a search shows it: its stream id (when) and its fields.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Outcome {
    pub(crate) id: String,
    pub(crate) fields: serde_json::Map<String, serde_json::Value>,
}

impl From<StreamEntry> for Outcome {
    fn from(e: StreamEntry) -> Outcome {
        let fields = e.fields.into_iter().map(|(k, v)| (k, serde_json::Value::String(v))).collect();
        Outcome { id: e.id, fields }
    }
}

/// What is known of one reservation.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Found {
    /// Its status (None: neither Redis nor MySQL knows it).
    pub(crate) status: Option<Status>,
    /// Where it is now, in words.
    pub(crate) place: String,
    /// Its outcomes, oldest first, among the newest [`SCAN_BUDGET`] of each shard.
    pub(crate) outcomes: Vec<Outcome>,
    /// Outcomes read to find them.
    pub(crate) scanned: usize,
}

/// Everything about `event_id`.
pub(crate) async fn event(shards: &Shards, ledger: &Ledger, event_id: &str) -> Result<Found> {
    crate::event::validate_event_id(event_id).map_err(crate::error::Error::usage)?;
    let status = status(shards, ledger, event_id).await?;
    let (mut outcomes, mut scanned) = (Vec::new(), 0);
    for queue in shards.all() {
        let mut before: Option<String> = None;
        let mut read = 0;
        while read < SCAN_BUDGET {
            let page = queue.outcomes_before(before.as_deref(), STEP).await?;
            read += page.len();
            before = page.last().map(|e| e.id.clone());
            let done = page.len() < STEP;
            outcomes
                .extend(page.into_iter().filter(|e| e.get("event_id") == Some(event_id)).map(Outcome::from));
            if done {
                break;
            }
        }
        scanned += read;
    }
    outcomes.sort_by(|a, b| stream_order(&a.id, &b.id));
    let place = place_of(status.as_ref());
    Ok(Found { status, place, outcomes, scanned })
}

/// Where a reservation in this state is.
fn place_of(status: Option<&Status>) -> String {
    use crate::reservations::ReservationState as S;
    let Some(s) = status else { return "unknown to Redis and MySQL".into() };
    match &s.state {
        S::Held => match s.deadline {
            Some(d) => format!("held unpaid until {d} (unix ms), in {{q}}:holds"),
            None => "held unpaid, in {q}:holds".into(),
        },
        S::Queued => "in the queue: pending, or being applied by a worker".into(),
        S::Dead => "in the dead letters (stockq dead list)".into(),
        S::Cancelling => "cancelled; its entry waits in the queue to be dropped".into(),
        S::Releasing => "cancelled after its deduction; its quantity is on its way back to MySQL".into(),
        other if s.version.is_none() && s.reserved_at.is_none() => {
            format!("{other}: ended, from MySQL's stock_log")
        }
        other => format!("{other}: ended, its record kept in Redis"),
    }
}

/// Stream ids in time order (`<ms>-<n>`).
fn stream_order(a: &str, b: &str) -> std::cmp::Ordering {
    let key = |id: &str| {
        let (ms, n) = id.split_once('-').unwrap_or((id, "0"));
        (ms.parse::<u64>().unwrap_or(0), n.parse::<u64>().unwrap_or(0))
    };
    key(a).cmp(&key(b))
}

/// A buyer's reservations.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct BuyerFound {
    /// Outcomes naming the buyer, newest first, up to the limit asked.
    pub(crate) outcomes: Vec<Outcome>,
    /// The buyer's reservations held now (event id, deadline), among the first holds.
    pub(crate) held: Vec<(String, i64)>,
    /// Outcomes read, and whether the search stopped at its budget before the streams' start.
    pub(crate) scanned: usize,
    pub(crate) complete: bool,
}

/// The latest `limit` outcomes of `buyer`, and the holds of theirs among the first 1,000.
pub(crate) async fn buyer(shards: &Shards, buyer: &str, limit: usize) -> Result<BuyerFound> {
    crate::event::validate_buyer(buyer).map_err(crate::error::Error::usage)?;
    let (mut outcomes, mut scanned, mut complete) = (Vec::new(), 0, true);
    for queue in shards.all() {
        let mut before: Option<String> = None;
        let mut read = 0;
        loop {
            if read >= SCAN_BUDGET {
                complete = false;
                break;
            }
            let page = queue.outcomes_before(before.as_deref(), STEP).await?;
            read += page.len();
            before = page.last().map(|e| e.id.clone());
            let done = page.len() < STEP;
            outcomes.extend(page.into_iter().filter(|e| e.get("buyer") == Some(buyer)).map(Outcome::from));
            if done || outcomes.len() >= limit {
                break;
            }
        }
        scanned += read;
    }
    outcomes.sort_by(|a, b| stream_order(&b.id, &a.id));
    outcomes.truncate(limit);
    let mut held = Vec::new();
    for queue in shards.all() {
        let (first, _) = queue.holds_first(1000).await?;
        let ids: Vec<String> = first.iter().map(|(id, _)| id.clone()).collect();
        for ((id, deadline), record) in first.into_iter().zip(queue.records(&ids).await?) {
            if record.is_some_and(|r| r.buyer.as_deref() == Some(buyer)) {
                held.push((id, deadline));
            }
        }
    }
    Ok(BuyerFound { outcomes, held, scanned, complete })
}

/// A held reservation as listed.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Hold {
    pub(crate) event_id: String,
    pub(crate) deadline: i64,
    pub(crate) product_id: Option<i64>,
    pub(crate) qty: Option<i64>,
    pub(crate) buyer: Option<String>,
}

/// The held reservations whose deadlines come first, up to `limit`, and how many there are.
pub(crate) async fn holds(shards: &Shards, limit: usize) -> Result<(Vec<Hold>, u64)> {
    let (mut all, mut total) = (Vec::new(), 0);
    for queue in shards.all() {
        let (first, n) = queue.holds_first(limit).await?;
        total += n;
        let ids: Vec<String> = first.iter().map(|(id, _)| id.clone()).collect();
        for ((event_id, deadline), record) in first.into_iter().zip(queue.records(&ids).await?) {
            all.push(Hold {
                event_id,
                deadline,
                product_id: record.as_ref().map(|r| r.product_id),
                qty: record.as_ref().map(|r| r.qty),
                buyer: record.and_then(|r| r.buyer),
            });
        }
    }
    all.sort_by_key(|h| h.deadline);
    all.truncate(limit);
    Ok((all, total))
}

#[cfg(test)]
mod tests {
    use super::stream_order;

    #[test]
    fn stream_ids_order_by_time_then_sequence() {
        let mut ids = vec!["10-2", "9-5", "10-10", "10-1"];
        ids.sort_by(|a, b| stream_order(a, b));
        assert_eq!(ids, ["9-5", "10-1", "10-2", "10-10"]);
    }
}
