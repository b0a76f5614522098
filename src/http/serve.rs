//! `stockq serve`: the HTTP front door for shoppers (Procfile `web:`).
//!
//! | route | answers |
//! |---|---|
//! | `POST /reserve` `{"product_id": 42, "qty": 1, "event_id": "order-1"?, "buyer": "b-7"?}` | 201 the status object with `remaining`; 200 with `"replayed": true` for a retry; 409 sold out or event id already used; 404 unknown product; 400 bad input; 503 `{"error", "event_id"}` |
//! | `GET /reservations/<id>` | the order service's: see [`crate::http::reservations`] |
//! | `GET /stock/<id>` | 200 `{"product_id", "stock"}` (the Redis stock, what shoppers can still buy); 404 unknown product |
//! | `GET /healthz`, `GET /metrics` | as in [`crate::http::health`] |
//!
//! Every error body is `{"error": "..."}`. A reservation is one call of the reservation
//! script over a multiplexed connection, so concurrent requests are pipelined to Redis.

use axum::Router;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::config::ApiToken;
use crate::error::Result;
use crate::http::health::{self, Health};
use crate::http::reservations::{self, Api, reserve_answer};
use crate::ledger::Ledger;
use crate::queue::Shards;
use crate::reservations::Asked;
use crate::reserve::{new_event_id, reserve_for};
use crate::telemetry::metrics as m;

pub(crate) const DEFAULT_PORT: u16 = 8080;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReserveRequest {
    product_id: i64,
    qty: i64,
    event_id: Option<String>,
    buyer: Option<String>,
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": message.into() }))).into_response()
}

async fn post_reserve(
    State(shards): State<Shards>,
    body: std::result::Result<axum::Json<ReserveRequest>, JsonRejection>,
) -> Response {
    let axum::Json(req) = match body {
        Ok(req) => req,
        Err(rejection) => return error(StatusCode::BAD_REQUEST, rejection.body_text()),
    };
    let event_id = req.event_id.unwrap_or_else(new_event_id);
    if let Err(e) = crate::event::validate_product_id(req.product_id) {
        return error(StatusCode::BAD_REQUEST, e);
    }
    // the id exists before Redis is called, so that a 503 can tell which id to retry with
    let buyer = req.buyer.as_deref();
    let result =
        reserve_for(shards.for_product(req.product_id), req.product_id, req.qty, &event_id, buyer).await;
    reserve_answer(Asked { product_id: req.product_id, qty: req.qty, buyer }, &event_id, result)
}

async fn get_stock(State(shards): State<Shards>, Path(id): Path<String>) -> Response {
    let Some(product_id) = id.parse::<i64>().ok().filter(|p| *p > 0) else {
        return error(StatusCode::BAD_REQUEST, format!("product id {id:?} is not a positive integer"));
    };
    match shards.for_product(product_id).stock(product_id).await {
        Ok(Some(stock)) => axum::Json(json!({ "product_id": product_id, "stock": stock })).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("unknown product {product_id}")),
        Err(e) => {
            tracing::warn!(error = %e, "stock lookup failed");
            error(StatusCode::SERVICE_UNAVAILABLE, "stock is unavailable; try again")
        }
    }
}

/// The whole front door.
pub(crate) fn router(shards: Shards, ledger: Ledger, token: Option<ApiToken>) -> Router {
    let api = Api { shards: shards.clone(), ledger: ledger.clone(), token };
    let health = Health { shards: shards.clone(), ledger, metrics: m::install() };
    Router::new()
        .route("/reserve", post(post_reserve))
        .route("/stock/{id}", get(get_stock))
        .with_state(shards)
        .merge(reservations::routes(api))
        .merge(health::routes(health))
        .fallback(|| async {
            error(StatusCode::NOT_FOUND, "no such route: POST /reserve, GET /stock/<id>, /healthz, /metrics")
        })
}

/// Serves the front door on `port` until `shutdown`.
pub(crate) async fn run(
    port: u16,
    shards: Shards,
    ledger: Ledger,
    token: Option<ApiToken>,
    shutdown: CancellationToken,
) -> Result<()> {
    let sampler = tokio::spawn(health::sample_queue(shards.clone(), shutdown.clone()));
    let served = health::serve(port, router(shards, ledger, token), shutdown).await;
    let _ = sampler.await;
    served
}
