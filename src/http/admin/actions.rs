//! The dashboard's dead letters beyond the state's page: counted by reason, listed by a
//! reason, and the actions on them, one by event id or all of a reason, as `stockq dead
//! reasons`, `dead list --reason`, `dead requeue` and `dead drop` do them (docs/commands.md).
//! Each action is a POST that [`Action`] admits, written to the audit as the command line
//! writes it.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::feed::{dead_json, dead_page};
use super::levers::{audited, who};
use super::{Action, Admin, Operator, unavailable};
use crate::admin::Page;
use crate::admin::dead::{self, Selection};
use crate::error::Error;
use crate::http::answer::error;
use crate::http::client::Client;

/// Dead letters listed by default, and at most.
const DEAD_SHOWN: usize = 20;
const DEAD_MAX: usize = 1000;
/// Reasons listed at most, the most frequent first.
const REASONS_MAX: usize = 100;
/// The longest reason text a filter may hold.
const REASON_MAX_LEN: usize = 1000;

/// `POST /admin/api/dead/<event_id>/requeue`: 200 `{"event_id", "requeued"}`; 404 when no dead
/// letter holds the event.
pub(super) async fn requeue(
    State(admin): State<Admin>,
    Action(session): Action,
    Extension(client): Extension<Client>,
    Path(event_id): Path<String>,
) -> Response {
    if let Err(e) = crate::event::validate_event_id(&event_id) {
        return error(StatusCode::BAD_REQUEST, e);
    }
    let which = Selection::EventId(event_id.clone());
    match dead::requeue(&admin.shards, &which).await {
        Ok((requeued, _)) => {
            tracing::info!(event_id, requeued, "dashboard: dead letter requeued");
            let detail = format!("{}: {requeued} requeued", which.described());
            audited(&admin, &who(&session, client), "dead requeue", &detail).await;
            axum::Json(json!({ "event_id": event_id, "requeued": requeued })).into_response()
        }
        Err(e) => failed("dead letter requeue failed", e),
    }
}

/// `POST /admin/api/dead/<event_id>/drop`: 200 `{"event_id", "dropped", "given_back"}` (units
/// of stock); 404 when no dead letter holds the event; 503 while MySQL is not connected (a
/// drop settles the event there first).
pub(super) async fn drop(
    State(admin): State<Admin>,
    Action(session): Action,
    Extension(client): Extension<Client>,
    Path(event_id): Path<String>,
) -> Response {
    if let Err(e) = crate::event::validate_event_id(&event_id) {
        return error(StatusCode::BAD_REQUEST, e);
    }
    let which = Selection::EventId(event_id.clone());
    let (dropped, given_back) = match drop_selected(&admin, &which).await {
        Ok(done) => done,
        Err(e) => return failed("dead letter drop failed", e),
    };
    tracing::info!(event_id, dropped, given_back, "dashboard: dead letter dropped");
    let detail = format!("{}: {dropped} dropped, {given_back} units given back", which.described());
    audited(&admin, &who(&session, client), "dead drop", &detail).await;
    axum::Json(json!({ "event_id": event_id, "dropped": dropped, "given_back": given_back })).into_response()
}

async fn drop_selected(admin: &Admin, which: &Selection) -> crate::error::Result<(u64, i64)> {
    let ledger = admin.ledger.get()?;
    dead::drop(&admin.shards, ledger, which).await
}

fn failed(what: &'static str, e: Error) -> Response {
    match e {
        // the only bad input left: no dead letter holds the event (any more)
        Error::Usage(message) => error(StatusCode::NOT_FOUND, message),
        e => unavailable(what, e),
    }
}

/// The body of a bulk action: `{"reason": "TEXT"}` for the dead letters whose reason holds
/// the text (any case), `{}` for every one.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Bulk {
    reason: Option<String>,
}

impl Bulk {
    /// The selection, or why the body is not one (answered with [`error`]).
    fn selection(body: Result<axum::Json<Bulk>, JsonRejection>) -> Result<Selection, (StatusCode, String)> {
        let axum::Json(Bulk { reason }) = body.map_err(|rejection| {
            // a body over the limit is 413 here too, as on every route (docs/http-api.md)
            let status = match rejection.status() {
                StatusCode::PAYLOAD_TOO_LARGE => StatusCode::PAYLOAD_TOO_LARGE,
                _ => StatusCode::BAD_REQUEST,
            };
            (status, rejection.body_text())
        })?;
        match reason {
            None => Ok(Selection::All),
            Some(text) if text.is_empty() => Err((
                StatusCode::BAD_REQUEST,
                "an empty reason selects every dead letter: send {} to mean all of them".into(),
            )),
            Some(text) if text.chars().count() > REASON_MAX_LEN => {
                Err((StatusCode::BAD_REQUEST, format!("a reason is at most {REASON_MAX_LEN} characters")))
            }
            Some(text) => Ok(Selection::Reason(text)),
        }
    }
}

/// `POST /admin/api/dead/requeue-all` `{"reason"?}`: 200 `{"requeued", "left"}`, the dead
/// letters of the reason (or all) sent back to pending, as `stockq dead requeue --all
/// [--reason TEXT]`; `left` counts those of them that are not valid events, which stay.
pub(super) async fn requeue_all(
    State(admin): State<Admin>,
    Action(session): Action,
    Extension(client): Extension<Client>,
    body: Result<axum::Json<Bulk>, JsonRejection>,
) -> Response {
    let which = match Bulk::selection(body) {
        Ok(which) => which,
        Err((status, why)) => return error(status, why),
    };
    match dead::requeue(&admin.shards, &which).await {
        Ok((requeued, left)) => {
            tracing::info!(which = which.described(), requeued, left, "dashboard: dead letters requeued");
            let detail = format!("{}: {requeued} requeued", which.described());
            audited(&admin, &who(&session, client), "dead requeue", &detail).await;
            axum::Json(json!({ "requeued": requeued, "left": left })).into_response()
        }
        Err(e) => unavailable("dead letters requeue failed", e),
    }
}

/// `POST /admin/api/dead/drop-all` `{"reason"?}`: 200 `{"dropped", "given_back"}`, the dead
/// letters of the reason (or all) discarded and their stock given back, as `stockq dead drop
/// --all [--reason TEXT]`; 503 while MySQL is not connected.
pub(super) async fn drop_all(
    State(admin): State<Admin>,
    Action(session): Action,
    Extension(client): Extension<Client>,
    body: Result<axum::Json<Bulk>, JsonRejection>,
) -> Response {
    let which = match Bulk::selection(body) {
        Ok(which) => which,
        Err((status, why)) => return error(status, why),
    };
    let (dropped, given_back) = match drop_selected(&admin, &which).await {
        Ok(done) => done,
        Err(e) => return unavailable("dead letters drop failed", e),
    };
    tracing::info!(which = which.described(), dropped, given_back, "dashboard: dead letters dropped");
    let detail = format!("{}: {dropped} dropped, {given_back} units given back", which.described());
    audited(&admin, &who(&session, client), "dead drop", &detail).await;
    axum::Json(json!({ "dropped": dropped, "given_back": given_back })).into_response()
}

/// `GET /admin/api/dead/reasons`: 200 `{"reasons": [{"reason", "count"}], "more", "complete"}`,
/// the reasons of the dead letters with how many hold each, the most first (at most
/// [`REASONS_MAX`]; `more` counts the reasons left out), counted among the newest 100,000 of
/// each shard (`complete`: all of them).
pub(super) async fn reasons(State(admin): State<Admin>, _: Operator) -> Response {
    match dead::reasons(&admin.shards).await {
        Ok((reasons, complete)) => {
            let more = reasons.len().saturating_sub(REASONS_MAX);
            let listed: Vec<_> = reasons
                .iter()
                .take(REASONS_MAX)
                .map(|(reason, count)| json!({ "reason": reason, "count": count }))
                .collect();
            axum::Json(json!({ "reasons": listed, "more": more, "complete": complete })).into_response()
        }
        Err(e) => unavailable("dashboard dead reasons failed", e),
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct DeadQuery {
    reason: Option<String>,
    limit: Option<usize>,
}

/// `GET /admin/api/dead[?reason=TEXT&limit=N]`: 200 `{"reason", "total", "letters"}`, the
/// newest dead letters whose reason holds the text (any case; among the newest 100,000 of each
/// shard), or of every reason without one, each as the state shows them; `total` counts all
/// that the filter selects; `limit` from 1 to [`DEAD_MAX`] (default [`DEAD_SHOWN`]).
pub(super) async fn list(State(admin): State<Admin>, _: Operator, Query(q): Query<DeadQuery>) -> Response {
    let limit = q.limit.unwrap_or(DEAD_SHOWN).clamp(1, DEAD_MAX);
    let reason = q.reason.filter(|r| !r.is_empty());
    if reason.as_ref().is_some_and(|r| r.chars().count() > REASON_MAX_LEN) {
        return error(StatusCode::BAD_REQUEST, format!("a reason is at most {REASON_MAX_LEN} characters"));
    }
    let listed = match &reason {
        None => dead_page(&admin.shards, Page::new(0, limit))
            .await
            .map(|page| (page["total"].clone(), page["letters"].clone())),
        Some(text) => {
            let which = Selection::Reason(text.clone());
            dead::selected(&admin.shards, &which, limit).await.map(|(found, total)| {
                (json!(total), found.iter().map(|raw| dead_json(raw)).collect::<Vec<_>>().into())
            })
        }
    };
    match listed {
        Ok((total, letters)) => {
            axum::Json(json!({ "reason": reason, "total": total, "letters": letters })).into_response()
        }
        Err(e) => unavailable("dashboard dead letters failed", e),
    }
}
