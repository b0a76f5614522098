//! The dashboard's actions on dead letters, by event id, as `stockq dead requeue ID` and
//! `stockq dead drop ID` do them (docs/commands.md). Each is a POST that [`Action`] admits.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{Action, Admin, unavailable};
use crate::admin::dead::{self, Selection};
use crate::error::Error;
use crate::http::answer::error;

/// `POST /admin/api/dead/<event_id>/requeue`: 200 `{"event_id", "requeued"}`; 404 when no dead
/// letter holds the event.
pub(super) async fn requeue(State(admin): State<Admin>, _: Action, Path(event_id): Path<String>) -> Response {
    if let Err(e) = crate::event::validate_event_id(&event_id) {
        return error(StatusCode::BAD_REQUEST, e);
    }
    match dead::requeue(&admin.shards, &Selection::EventId(event_id.clone())).await {
        Ok((requeued, _)) => {
            tracing::info!(event_id, requeued, "dashboard: dead letter requeued");
            axum::Json(json!({ "event_id": event_id, "requeued": requeued })).into_response()
        }
        Err(e) => failed("dead letter requeue failed", e),
    }
}

/// `POST /admin/api/dead/<event_id>/drop`: 200 `{"event_id", "dropped", "given_back"}` (units
/// of stock); 404 when no dead letter holds the event; 503 while MySQL is not connected (a
/// drop settles the event there first).
pub(super) async fn drop(State(admin): State<Admin>, _: Action, Path(event_id): Path<String>) -> Response {
    if let Err(e) = crate::event::validate_event_id(&event_id) {
        return error(StatusCode::BAD_REQUEST, e);
    }
    let ledger = match admin.ledger.get() {
        Ok(ledger) => ledger,
        Err(e) => return failed("dead letter drop failed", e),
    };
    match dead::drop(&admin.shards, ledger, &Selection::EventId(event_id.clone())).await {
        Ok((dropped, given_back)) => {
            tracing::info!(event_id, dropped, given_back, "dashboard: dead letter dropped");
            axum::Json(json!({ "event_id": event_id, "dropped": dropped, "given_back": given_back }))
                .into_response()
        }
        Err(e) => failed("dead letter drop failed", e),
    }
}

fn failed(what: &'static str, e: Error) -> Response {
    match e {
        // the only bad input left: no dead letter holds the event (any more)
        Error::Usage(message) => error(StatusCode::NOT_FOUND, message),
        e => unavailable(what, e),
    }
}
