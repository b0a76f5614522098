//! The reservation answers of `POST /reserve`, and the order service's API: `GET
//! /reservations/<event_id>` behind `Authorization: Bearer <STOCKQ_API_TOKEN>`.
//!
//! The API is off (403) while no token is set, so that a deployment that forgot it does not
//! serve every order's status to anyone who asks. Wrong tokens are counted per client
//! ([`crate::http::throttle`]), wherever they are shown: on these routes, and on `POST
//! /reserve`, whose "event id already used" would otherwise tell a right guess from a wrong one.

use axum::Router;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use crate::config::ApiToken;
use crate::error::{Error, Result};
use crate::http::client::Client;
use crate::http::health::LedgerSlot;
use crate::http::throttle::{Throttle, Throttled};
use crate::queue::{Cancel, Confirm, Shards};
use crate::reservations::{self, Asked, Reservation};

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": message.into() }))).into_response()
}

/// The answer to `POST /reserve`. `event_id` is the id the reservation was tried under: a 503
/// carries it, because the reservation may have been taken and only a retry under the same id
/// is safe. `order_service` says whether the request carried the API's bearer token: only
/// then does "event id already used" tell the state of the reservation holding the id.
pub(crate) fn reserve_answer(
    asked: Asked<'_>,
    event_id: &str,
    order_service: bool,
    result: Result<Reservation>,
) -> Response {
    let reservation = match result {
        Ok(reservation) => reservation,
        Err(Error::Usage(message)) => return error(StatusCode::BAD_REQUEST, message),
        Err(e) => {
            crate::http::answer::log_failure("reservation failed", &e);
            let body = json!({
                "error": "reservations are unavailable; retry with the same event_id",
                "event_id": event_id,
            });
            return (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response();
        }
    };
    if let Some(object) = reservations::answer(asked, &reservation) {
        let code = if matches!(reservation, Reservation::Reserved { .. }) {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        return (code, axum::Json(object)).into_response();
    }
    match reservation {
        Reservation::SoldOut { available } => {
            (StatusCode::CONFLICT, axum::Json(json!({ "error": "sold out", "available": available })))
                .into_response()
        }
        // the state is the order service's business: shoppers only learn that the id is taken
        Reservation::IdUsed { state } if order_service => {
            (StatusCode::CONFLICT, axum::Json(json!({ "error": "event id already used", "state": state })))
                .into_response()
        }
        Reservation::IdUsed { .. } => error(StatusCode::CONFLICT, "event id already used"),
        Reservation::LimitReached { limit, .. } => {
            (StatusCode::TOO_MANY_REQUESTS, axum::Json(json!({ "error": "buyer limit", "limit": limit })))
                .into_response()
        }
        Reservation::Healing { until } => {
            let body = json!({
                "error": "the sale pauses while stock is healed after Redis lost writes; retry with the same event_id",
                "event_id": event_id,
            });
            let wait = (until - crate::backoff::now_ms() as i64).clamp(1_000, 30_000) / 1000;
            let mut answer = (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response();
            answer.headers_mut().insert(axum::http::header::RETRY_AFTER, wait.into());
            answer
        }
        // a status of its own: the order service tells a paused sale from a sold-out one
        Reservation::Paused { since } => {
            (StatusCode::LOCKED, axum::Json(json!({ "error": "paused", "since": since }))).into_response()
        }
        Reservation::BuyerRequired { limit } => error(
            StatusCode::BAD_REQUEST,
            format!("product {} allows {limit} per buyer: a buyer is required", asked.product_id),
        ),
        _ => error(StatusCode::NOT_FOUND, format!("unknown product {}", asked.product_id)),
    }
}

/// What the order service's API needs.
#[derive(Clone)]
pub(crate) struct Api {
    pub(crate) shards: Shards,
    pub(crate) ledger: LedgerSlot,
    pub(crate) token: Option<ApiToken>,
    /// Wrong tokens per client, shared with `POST /reserve`.
    pub(crate) tries: Throttle,
}

/// The order service's routes.
pub(crate) fn routes(api: Api) -> Router {
    Router::new()
        .route("/reservations/{event_id}", get(get_reservation))
        .route("/reservations/{event_id}/confirm", post(post_confirm))
        .route("/reservations/{event_id}/cancel", post(post_cancel))
        .with_state(api)
}

/// What a request's `Authorization: Bearer <token>` header shows.
enum Shown {
    /// No such header: nothing guessed, nothing counted.
    Nothing,
    Right,
    /// A wrong token (or another scheme), counted against the client.
    Wrong,
    /// Whatever the token, the client has tried too many wrong ones: it is not looked at, so
    /// that the answer cannot tell whether the latest guess was right.
    Throttled(Throttled),
}

/// Checks the token a request shows against the API's, counting a wrong one against `client`.
fn check_token(token: &ApiToken, tries: &Throttle, client: Client, headers: &HeaderMap) -> Shown {
    let Some(value) = headers.get(header::AUTHORIZATION) else { return Shown::Nothing };
    let shown = value.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")).unwrap_or("");
    match tries.try_secret(client) {
        Ok(attempt) if token.matches(shown) => {
            attempt.succeeded();
            Shown::Right
        }
        Ok(_) => {
            if crate::backoff::may_log("order-service API: a wrong token") {
                tracing::warn!(client = %client.0, "order-service API: a wrong token (logged once every few seconds)");
            }
            Shown::Wrong
        }
        Err(throttled) => {
            if throttled.first {
                tracing::warn!(
                    client = %client.0,
                    "order-service API: too many wrong tokens from one address: refused for {}s",
                    throttled.retry_after.as_secs()
                );
            }
            Shown::Throttled(throttled)
        }
    }
}

/// Whether the request carries the API's token, believed (never when the API is off, nor
/// from a client that has tried too many wrong ones).
pub(crate) fn is_order_service(
    token: Option<&ApiToken>,
    tries: &Throttle,
    client: Client,
    headers: &HeaderMap,
) -> bool {
    token.is_some_and(|token| matches!(check_token(token, tries, client, headers), Shown::Right))
}

/// `None` when the request may go on; else the refusal: 403 while the API is off, 401
/// without the right token, 429 (whatever the token) while `client` has tried too many
/// wrong ones.
fn authorize(api: &Api, client: Client, headers: &HeaderMap) -> Option<Response> {
    let Some(token) = api.token.as_ref() else {
        return Some(error(StatusCode::FORBIDDEN, "the order-service API is off: set STOCKQ_API_TOKEN"));
    };
    match check_token(token, &api.tries, client, headers) {
        Shown::Right => None,
        Shown::Nothing | Shown::Wrong => {
            Some(error(StatusCode::UNAUTHORIZED, "a valid Authorization: Bearer token is required"))
        }
        Shown::Throttled(throttled) => Some(throttled.answer("token")),
    }
}

async fn get_reservation(
    State(api): State<Api>,
    Extension(client): Extension<Client>,
    Path(event_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(refusal) = authorize(&api, client, &headers) {
        return refusal;
    }
    if let Err(e) = crate::event::validate_event_id(&event_id) {
        return error(StatusCode::BAD_REQUEST, e);
    }
    let ledger = match api.ledger.get() {
        Ok(ledger) => ledger,
        Err(e) => {
            crate::http::answer::log_failure("status lookup failed", &e);
            return error(StatusCode::SERVICE_UNAVAILABLE, "status is unavailable; try again");
        }
    };
    match reservations::status(&api.shards, ledger, &event_id).await {
        Ok(Some(status)) => axum::Json(status).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("unknown reservation {event_id}")),
        Err(e) => {
            crate::http::answer::log_failure("status lookup failed", &e);
            error(StatusCode::SERVICE_UNAVAILABLE, "status is unavailable; try again")
        }
    }
}

/// Checks the token and the id, and hands over the ledger; else the refusal.
fn admit<'a>(
    api: &'a Api,
    client: Client,
    event_id: &str,
    headers: &HeaderMap,
) -> std::result::Result<&'a crate::ledger::Ledger, Box<Response>> {
    if let Some(refusal) = authorize(api, client, headers) {
        return Err(Box::new(refusal));
    }
    if let Err(e) = crate::event::validate_event_id(event_id) {
        return Err(Box::new(error(StatusCode::BAD_REQUEST, e)));
    }
    api.ledger.get().map_err(|e| {
        crate::http::answer::log_failure("reservation lookup failed", &e);
        Box::new(error(StatusCode::SERVICE_UNAVAILABLE, "reservations are unavailable; try again"))
    })
}

/// The status object of a reservation just changed, or the failure to read it.
async fn status_answer(api: &Api, ledger: &crate::ledger::Ledger, event_id: &str) -> Response {
    match reservations::status(&api.shards, ledger, event_id).await {
        Ok(Some(status)) => axum::Json(status).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("unknown reservation {event_id}")),
        Err(e) => unavailable(e),
    }
}

fn unavailable(e: Error) -> Response {
    crate::http::answer::log_failure("reservation change failed", &e);
    error(StatusCode::SERVICE_UNAVAILABLE, "reservations are unavailable; try again (it is safe to repeat)")
}

/// `POST /reservations/<id>/confirm`: payment done.
async fn post_confirm(
    State(api): State<Api>,
    Extension(client): Extension<Client>,
    Path(event_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let ledger = match admit(&api, client, &event_id, &headers) {
        Ok(ledger) => ledger,
        Err(refusal) => return *refusal,
    };
    match reservations::confirm(&api.shards, &event_id).await {
        Ok(Confirm::Queued | Confirm::Unchanged { .. }) => status_answer(&api, ledger, &event_id).await,
        Ok(Confirm::Ended { state }) => {
            (StatusCode::CONFLICT, axum::Json(json!({ "error": "reservation ended", "state": state })))
                .into_response()
        }
        Ok(Confirm::Unknown) => error(StatusCode::NOT_FOUND, format!("unknown reservation {event_id}")),
        Err(e) => unavailable(e),
    }
}

/// `POST /reservations/<id>/cancel`: ends the reservation in whatever state it is.
async fn post_cancel(
    State(api): State<Api>,
    Extension(client): Extension<Client>,
    Path(event_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let ledger = match admit(&api, client, &event_id, &headers) {
        Ok(ledger) => ledger,
        Err(refusal) => return *refusal,
    };
    match reservations::cancel(&api.shards, ledger, &event_id).await {
        Ok(Cancel::Done { .. }) => status_answer(&api, ledger, &event_id).await,
        Ok(Cancel::Unknown) => error(StatusCode::NOT_FOUND, format!("unknown reservation {event_id}")),
        Err(e) => unavailable(e),
    }
}
