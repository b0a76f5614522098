//! Finding reservations from the dashboard, as `stockq search` and `stockq holds` do
//! ([`crate::admin::search`]): one by its event id (its status, where it is now, its
//! outcomes), a buyer's outcomes and holds, and the holds whose deadlines come first. Reads,
//! which [`Operator`] admits.
//!
//! A search reads the outcome streams in bounded steps (at most 100,000 outcomes a shard);
//! this process runs one search at a time, so that pages searching at once queue rather than
//! add up on Redis.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::{Admin, Operator, unavailable};
use crate::admin::search;
use crate::error::{Error, Result};
use crate::http::answer::error;

/// A buyer's outcomes listed by default, and at most.
const BUYER_SHOWN: usize = 20;
const BUYER_MAX: usize = 1000;
/// Holds listed by default, and at most.
const HOLDS_SHOWN: usize = 20;
const HOLDS_MAX: usize = 1000;

#[derive(Debug, Deserialize)]
pub(super) struct SearchQuery {
    event_id: Option<String>,
    buyer: Option<String>,
    limit: Option<usize>,
}

/// `GET /admin/api/search?event_id=ID`: 200 `{"status", "place", "outcomes", "scanned"}`
/// (`status` null when neither store knows it; needs MySQL, else 503); `GET
/// /admin/api/search?buyer=B[&limit=N]`: 200 `{"outcomes", "held": [{"event_id",
/// "deadline"}], "scanned", "complete"}`. 400 for neither or both, or a value that cannot be
/// an id.
pub(super) async fn search(
    State(admin): State<Admin>,
    _: Operator,
    Query(q): Query<SearchQuery>,
) -> Response {
    let found = match (q.event_id.as_deref(), q.buyer.as_deref()) {
        (Some(event_id), None) => {
            if let Err(e) = crate::event::validate_event_id(event_id) {
                return error(StatusCode::BAD_REQUEST, e);
            }
            let ledger = match admin.ledger.get() {
                Ok(ledger) => ledger,
                Err(e) => {
                    crate::http::answer::log_failure("dashboard search failed", &e);
                    return error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "a search by event id needs MySQL, which is not connected yet",
                    );
                }
            };
            let _one_at_a_time = admin.searching.lock().await;
            search::event(&admin.shards, ledger, event_id).await.map(|found| json!(found))
        }
        (None, Some(buyer)) => {
            let limit = q.limit.unwrap_or(BUYER_SHOWN).clamp(1, BUYER_MAX);
            let _one_at_a_time = admin.searching.lock().await;
            search::buyer(&admin.shards, buyer, limit).await.map(|found| {
                let held: Vec<_> = found
                    .held
                    .iter()
                    .map(|(event_id, deadline)| json!({ "event_id": event_id, "deadline": deadline }))
                    .collect();
                json!({
                    "outcomes": found.outcomes,
                    "held": held,
                    "scanned": found.scanned,
                    "complete": found.complete,
                })
            })
        }
        _ => return error(StatusCode::BAD_REQUEST, "search by one of event_id=<id> or buyer=<buyer>"),
    };
    answer(found, "dashboard search failed")
}

#[derive(Debug, Deserialize)]
pub(super) struct HoldsQuery {
    limit: Option<usize>,
}

/// `GET /admin/api/holds[?limit=N]`: 200 `{"at", "total", "holds": [...]}`, the held
/// reservations whose deadlines come first (from 1 to [`HOLDS_MAX`], default
/// [`HOLDS_SHOWN`]), as `stockq holds --json` lists them; `at` is this server's time (unix
/// ms), to count the time left against.
pub(super) async fn holds(State(admin): State<Admin>, _: Operator, Query(q): Query<HoldsQuery>) -> Response {
    let limit = q.limit.unwrap_or(HOLDS_SHOWN).clamp(1, HOLDS_MAX);
    let found = search::holds(&admin.shards, limit)
        .await
        .map(|(holds, total)| json!({ "at": super::feed::unix_ms(), "total": total, "holds": holds }));
    answer(found, "dashboard holds failed")
}

fn answer(found: Result<serde_json::Value>, what: &'static str) -> Response {
    match found {
        Ok(found) => axum::Json(found).into_response(),
        Err(Error::Usage(message)) => error(StatusCode::BAD_REQUEST, message),
        Err(e) => unavailable(what, e),
    }
}
