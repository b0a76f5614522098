//! What the dashboard polls: `GET /admin/api/state` every second or two (the queue, latency,
//! outcomes, alerts and a page of dead letters: a few Redis round trips), and
//! `GET /admin/api/books` every few seconds (a page of one consistency check's books). Each
//! state read is also a sample of the charts' [`History`](super::history::History).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::history::Sample;
use super::latency::BOUNDS_MS;
use super::{Admin, Operator, unavailable};
use crate::admin::Page;
use crate::admin::dead::Listing;
use crate::admin::stats::{self, BooksPage, Overview};
use crate::check::{self, ProductBooks};
use crate::error::Result;
use crate::event::DeadLetter;
use crate::http::answer::{clip_to, error};
use crate::ledger::Ledger;
use crate::queue::{ReservationState, Shards, StreamEntry};

/// Outcomes shown in the table.
const OUTCOMES_SHOWN: usize = 20;
/// Outcomes read per shard to measure the end-to-end latency of the last seconds.
const OUTCOMES_SAMPLED: usize = 500;
/// The window of that measure.
const LATENCY_WINDOW_MS: i64 = 10_000;
const ALERTS_SHOWN: usize = 10;
const DEAD_SHOWN: usize = 20;
/// The longest text of a dead letter shown (its reason, its entry).
const DEAD_TEXT: usize = 160;
/// Products per page of the books, by default and at most.
const BOOKS_PAGE: usize = 25;
const BOOKS_PAGE_MAX: usize = 500;
/// How long one check's books serve every page asked for.
const BOOKS_FRESH: Duration = Duration::from_secs(5);

#[derive(Debug, Deserialize)]
pub(super) struct StateQuery {
    dead_offset: Option<usize>,
}

/// `GET /admin/api/state[?dead_offset=N]`
pub(super) async fn state(State(admin): State<Admin>, _: Operator, Query(q): Query<StateQuery>) -> Response {
    let dead = Page::new(q.dead_offset.unwrap_or(0), DEAD_SHOWN);
    match snapshot(&admin, dead).await {
        Ok(state) => axum::Json(state).into_response(),
        Err(e) => unavailable("dashboard state failed", e),
    }
}

async fn snapshot(admin: &Admin, dead: Page) -> Result<Value> {
    let (now, overview, outcomes) = observe(&admin.shards).await?;
    let counts = admin.latencies.counts();
    let end_to_end = EndToEnd::of(&outcomes, now);
    admin.history.record(Sample::of(now, &overview, counts.clone(), end_to_end.clone()));
    let alerts: Vec<Value> =
        admin.shards.first().latest_alerts(ALERTS_SHOWN).await?.iter().map(alert_json).collect();
    Ok(json!({
        "at": now,
        "queue": overview,
        "reserve_latency": { "bounds_ms": BOUNDS_MS, "counts": counts },
        "end_to_end": end_to_end,
        "outcomes": &outcomes[..outcomes.len().min(OUTCOMES_SHOWN)],
        "alerts": alerts,
        "dead": dead_page(&admin.shards, dead).await?,
    }))
}

/// What the state and each sample of the history read: when (unix ms), the queue's overview,
/// and the latest outcomes of every shard, newest first.
async fn observe(shards: &Shards) -> Result<(i64, Overview, Vec<Outcome>)> {
    let now = unix_ms();
    let overview = stats::overview(shards).await?;
    let mut outcomes = Vec::new();
    for queue in shards.all() {
        outcomes.extend(queue.latest_outcomes(OUTCOMES_SAMPLED).await?.iter().map(Outcome::from_entry));
    }
    outcomes.sort_by_key(|o| std::cmp::Reverse(o.at));
    Ok((now, overview, outcomes))
}

/// One sample of the charts, read as the state is (for the history's own sampler).
pub(super) async fn sample(shards: &Shards, latencies: &super::Latencies) -> Result<Sample> {
    let (now, overview, outcomes) = observe(shards).await?;
    Ok(Sample::of(now, &overview, latencies.counts(), EndToEnd::of(&outcomes, now)))
}

pub(super) fn unix_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// One outcome (an entry of `{q}:outcomes`: how a reservation ended) as the page shows it.
#[derive(Debug, Serialize)]
pub(super) struct Outcome {
    event_id: Option<String>,
    state: Option<ReservationState>,
    product_id: Option<i64>,
    qty: Option<i64>,
    buyer: Option<String>,
    reason: Option<String>,
    reserved_at: Option<i64>,
    at: Option<i64>,
}

impl Outcome {
    fn from_entry(e: &StreamEntry) -> Outcome {
        let text = |name| e.get(name).map(str::to_string);
        let int = |name| e.get(name).and_then(|v| v.parse().ok());
        Outcome {
            event_id: text("event_id"),
            state: e.get("state").map(ReservationState::from),
            product_id: int("product_id"),
            qty: int("qty"),
            buyer: text("buyer"),
            reason: text("reason"),
            reserved_at: int("reserved_at"),
            at: int("at"),
        }
    }
}

/// The time from reservation to outcome of the deductions that ended in the last
/// [`LATENCY_WINDOW_MS`] (a hold's wait for payment included), in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(super) struct EndToEnd {
    n: usize,
    p50_ms: Option<i64>,
    p90_ms: Option<i64>,
    p99_ms: Option<i64>,
    max_ms: Option<i64>,
}

impl EndToEnd {
    /// Over `outcomes`, measured against `now` (unix ms). Cancels, expiries and releases end
    /// when someone decides, not when the queue gets to them: they are left out.
    pub(super) fn of(outcomes: &[Outcome], now: i64) -> EndToEnd {
        let mut took: Vec<i64> = outcomes
            .iter()
            .filter(|o| {
                use ReservationState::{Applied, Duplicate, Rejected};
                matches!(o.state, Some(Applied | Rejected | Duplicate))
            })
            .filter_map(|o| Some((o.reserved_at?, o.at?)))
            .filter(|(_, at)| now - at <= LATENCY_WINDOW_MS)
            .map(|(reserved, at)| (at - reserved).max(0))
            .collect();
        took.sort_unstable();
        let quantile =
            |q: f64| took.get(((took.len() as f64 * q).ceil() as usize).saturating_sub(1)).copied();
        EndToEnd {
            n: took.len(),
            p50_ms: quantile(0.5),
            p90_ms: quantile(0.9),
            p99_ms: quantile(0.99),
            max_ms: took.last().copied(),
        }
    }
}

fn alert_json(e: &StreamEntry) -> Value {
    let int = |name| e.get(name).and_then(|v| v.parse::<i64>().ok());
    // a stream id starts with the unix ms it was added at
    let at = e.id.split('-').next().and_then(|ms| ms.parse::<i64>().ok());
    json!({
        "at": at,
        "product_id": int("product_id"),
        "redis": int("redis"),
        "mysql": int("mysql"),
        "in_flight": int("in_flight"),
        "delta": int("delta"),
    })
}

/// A page of the dead letters, newest first, each as the page shows it.
pub(super) async fn dead_page(shards: &Shards, page: Page) -> Result<Value> {
    let mut listing = Listing::open(shards, page).await?;
    let mut letters = Vec::new();
    loop {
        let chunk = listing.next_chunk().await?;
        if chunk.is_empty() {
            break;
        }
        letters.extend(chunk.iter().map(|raw| dead_json(raw)));
    }
    Ok(json!({ "total": listing.total(), "offset": page.offset, "letters": letters }))
}

/// A dead letter as the page shows it.
pub(super) fn dead_json(raw: &[u8]) -> Value {
    let text = |bytes: &[u8]| clip_to(&String::from_utf8_lossy(bytes), DEAD_TEXT);
    let Some(letter) = DeadLetter::parse(raw) else {
        return json!({ "event_id": null, "reason": "not an envelope stockq wrote", "entry": text(raw) });
    };
    let event = letter.event();
    json!({
        "event_id": event.as_ref().map(|e| &e.event_id),
        "product_id": event.as_ref().map(|e| e.product_id),
        "qty": event.as_ref().map(|e| e.qty),
        "reason": clip_to(&letter.reason, DEAD_TEXT),
        "attempts": letter.attempts,
        "failed_at": letter.failed_at_ms,
        "entry": text(&letter.entry),
    })
}

/// One check's books, drifting first, kept for [`BOOKS_FRESH`]: however many dashboards
/// page through them, the check runs at most once every few seconds, and those who ask
/// while it runs wait for it rather than start another.
#[derive(Default)]
pub(super) struct BooksCache(tokio::sync::Mutex<Option<Checked>>);

#[derive(Clone)]
struct Checked {
    taken: Instant,
    at: i64,
    took_ms: u64,
    products: Arc<Vec<ProductBooks>>,
}

impl BooksCache {
    async fn get(&self, shards: &Shards, ledger: &Ledger) -> Result<Checked> {
        let mut slot = self.0.lock().await;
        if let Some(checked) = slot.as_ref().filter(|c| c.taken.elapsed() < BOOKS_FRESH) {
            return Ok(checked.clone());
        }
        let report = check::check(shards, ledger).await?;
        let checked = Checked {
            taken: Instant::now(),
            at: unix_ms(),
            took_ms: report.took.as_millis() as u64,
            products: Arc::new(stats::drifting_first(report.products)),
        };
        *slot = Some(checked.clone());
        Ok(checked)
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct BooksQuery {
    offset: Option<usize>,
    limit: Option<usize>,
}

#[derive(Serialize)]
struct BooksAnswer {
    #[serde(flatten)]
    page: BooksPage,
    /// When the check ran (unix ms) and how long it took.
    checked_at: i64,
    took_ms: u64,
}

/// `GET /admin/api/books[?offset=N&limit=N]`: drifting products first; `limit` from 1 to
/// [`BOOKS_PAGE_MAX`] (default [`BOOKS_PAGE`]).
pub(super) async fn books(State(admin): State<Admin>, _: Operator, Query(q): Query<BooksQuery>) -> Response {
    let limit = q.limit.unwrap_or(BOOKS_PAGE).clamp(1, BOOKS_PAGE_MAX);
    let ledger = match admin.ledger.get() {
        Ok(ledger) => ledger,
        Err(e) => {
            crate::http::answer::log_failure("dashboard books failed", &e);
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the books need MySQL, which is not connected yet",
            );
        }
    };
    match admin.books.get(&admin.shards, ledger).await {
        Ok(checked) => axum::Json(BooksAnswer {
            page: BooksPage::of(&checked.products, Page::new(q.offset.unwrap_or(0), limit)),
            checked_at: checked.at,
            took_ms: checked.took_ms,
        })
        .into_response(),
        Err(e) => unavailable("dashboard books failed", e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(state: &str, reserved_at: i64, at: i64) -> Outcome {
        Outcome {
            event_id: Some("e".into()),
            state: Some(state.into()),
            product_id: Some(1),
            qty: Some(1),
            buyer: None,
            reason: None,
            reserved_at: Some(reserved_at),
            at: Some(at),
        }
    }

    #[test]
    fn end_to_end_latency_counts_recent_deductions_only() {
        let now = 100_000;
        let mut outcomes: Vec<Outcome> =
            (1..=100).map(|ms| outcome("applied", now - 1000 - ms, now - 1000)).collect();
        outcomes.push(outcome("expired", now - 60_000, now - 10)); // ended by a deadline
        outcomes.push(outcome("applied", now - 30_000, now - 20_000)); // before the window
        outcomes.push(Outcome { reserved_at: None, ..outcome("applied", 0, now) }); // pushed by hand
        let e2e = EndToEnd::of(&outcomes, now);
        assert_eq!(
            e2e,
            EndToEnd { n: 100, p50_ms: Some(50), p90_ms: Some(90), p99_ms: Some(99), max_ms: Some(100) }
        );
        assert_eq!(EndToEnd::of(&[], now).p50_ms, None);
    }

    #[test]
    fn dead_letters_show_their_event_or_what_they_hold() {
        let envelope =
            crate::event::dead_envelope(br#"{"event_id":"o-1","product_id":7,"qty":2}"#, "why", 3, 1234);
        let shown = dead_json(envelope.as_bytes());
        assert_eq!((shown["event_id"].as_str(), shown["qty"].as_i64()), (Some("o-1"), Some(2)));
        assert_eq!((shown["reason"].as_str(), shown["attempts"].as_u64()), (Some("why"), Some(3)));
        let garbage = dead_json(&crate::event::dead_envelope(&[b'x'; 1000], "bad", 1, 1).into_bytes());
        assert_eq!(garbage["event_id"], Value::Null);
        assert_eq!(garbage["entry"].as_str().map(|e| e.chars().count()), Some(DEAD_TEXT + 1));
        assert_eq!(dead_json(b"\xff not json")["event_id"], Value::Null);
    }
}
