//! `stockq serve`: the HTTP front door for shoppers (Procfile `web:`).
//!
//! | route | answers |
//! |---|---|
//! | `POST /reserve` `{"product_id": 42, "qty": 1, "event_id": "order-1"?, "buyer": "b-7"?, "hold": "15m"?}` | 201 the status object with `remaining`; 200 with `"replayed": true` for a retry; 409 sold out or event id already used (with the reservation's `state` when the API's bearer token is given); 429 buyer limit; 404 unknown product; 400 bad input; 503 `{"error", "event_id"}` |
//! | `GET /reservations/<id>`, `POST /reservations/<id>/confirm`, `POST /reservations/<id>/cancel` | the order service's: see [`crate::http::reservations`] |
//! | `GET /stock/<id>` | 200 `{"product_id", "stock"}` (the Redis stock, what shoppers can still buy); 404 unknown product |
//! | `GET /healthz`, `GET /metrics` | as in [`crate::http::health`] |
//! | `GET /openapi.json` | the OpenAPI 3.1 document of every route (`docs/openapi.json`, built in) |
//! | `/admin`, `/admin/...` | the operators' dashboard, behind its own login: see [`crate::http::admin`] |
//!
//! Every error body is `{"error": "..."}` (see [`crate::http::answer`]). A reservation is one
//! call of the reservation script over a multiplexed connection, so concurrent requests are
//! pipelined to Redis. Reserving needs Redis alone: `serve` starts without MySQL, connects
//! to it in the background, and says "degraded" on `/healthz` until then.

use std::net::SocketAddr;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Router, middleware};
use serde::Deserialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::config::{ApiToken, HttpSettings, Settings};
use crate::error::{Error, Result};
use crate::http::admin::{self, Admin, Latencies, time_reservations};
use crate::http::answer::{clip, error, log_failure};
use crate::http::client::Client;
use crate::http::health::{self, Health, LedgerSlot};
use crate::http::listen::Limits;
use crate::http::reservations::{self, Api, reserve_answer};
use crate::http::throttle::Throttle;
use crate::ledger::Ledger;
use crate::queue::Shards;
use crate::reservations::{Asked, Request, check_hold, new_event_id, reserve_routed};
use crate::telemetry::metrics as m;

pub(crate) const DEFAULT_PORT: u16 = 8080;

/// The OpenAPI document of every route, kept in the repository and served as it is there.
const OPENAPI: &str = include_str!("../../docs/openapi.json");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReserveRequest {
    product_id: i64,
    qty: i64,
    event_id: Option<String>,
    buyer: Option<String>,
    /// How long to hold the stock unpaid, as `"15m"`.
    hold: Option<String>,
}

/// What the shoppers' routes need.
#[derive(Clone)]
struct Front {
    shards: Shards,
    max_hold: std::time::Duration,
    /// The order-service API's token: a 409 tells the reservation's state to its holder only.
    token: Option<ApiToken>,
    /// Wrong API tokens per client, shared with the API's routes.
    tries: Throttle,
}

/// MySQL serves `/healthz` only.
const MYSQL_CONNECTIONS: u32 = 2;

async fn post_reserve(
    State(Front { shards, max_hold, token, tries }): State<Front>,
    Extension(client): Extension<Client>,
    headers: HeaderMap,
    body: std::result::Result<axum::Json<ReserveRequest>, JsonRejection>,
) -> Response {
    let axum::Json(req) = match body {
        Ok(req) => req,
        Err(rejection) => {
            let status = match rejection.status() {
                StatusCode::PAYLOAD_TOO_LARGE => StatusCode::PAYLOAD_TOO_LARGE,
                _ => StatusCode::BAD_REQUEST,
            };
            return error(status, rejection.body_text());
        }
    };
    // an id made here cannot be a retry: such a request may be refused from what this
    // process learned of the product lately, without asking Redis (queue::sold_out)
    let fresh = req.event_id.is_none();
    let event_id = req.event_id.unwrap_or_else(new_event_id);
    if crate::event::validate_event_id(&event_id).is_err() {
        let id = clip(&event_id);
        return error(
            StatusCode::BAD_REQUEST,
            format!("event_id {id:?} is not 1 to 64 characters of [A-Za-z0-9._:-]"),
        );
    }
    if let Err(e) = crate::event::validate_product_id(req.product_id) {
        return error(StatusCode::BAD_REQUEST, e);
    }
    let hold = match req.hold.as_deref().map(|h| crate::config::parse_duration(h).map_err(Error::usage)) {
        None => None,
        Some(parsed) => match parsed.and_then(|h| check_hold(h, max_hold)) {
            Ok(hold) => Some(hold),
            Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
        },
    };
    // the id exists before Redis is called, so that a 503 can tell which id to retry with
    let buyer = req.buyer.as_deref();
    let queue = shards.route(req.product_id, buyer, &event_id).await;
    // a spread product's bucket may be short while others hold units: Redis decides
    if fresh
        && !shards.is_spread(req.product_id).await
        && let Some(available) = queue.known_sold_out(req.product_id, req.qty)
    {
        metrics::counter!(m::RESERVATIONS, "result" => "sold_out").increment(1);
        metrics::counter!(m::SOLD_OUT_FROM_MEMORY).increment(1);
        crate::reservations::refusals::note(
            req.product_id,
            &crate::queue::Reservation::SoldOut { available },
        );
        return (StatusCode::CONFLICT, axum::Json(json!({ "error": "sold out", "available": available })))
            .into_response();
    }
    let request = Request { product_id: req.product_id, qty: req.qty, event_id: &event_id, buyer, hold };
    let result = reserve_routed(&shards, request).await;
    let order_service = reservations::is_order_service(token.as_ref(), &tries, client, &headers);
    let asked = Asked { product_id: req.product_id, qty: req.qty, buyer };
    reserve_answer(asked, &event_id, order_service, result)
}

async fn get_stock(State(Front { shards, .. }): State<Front>, Path(id): Path<String>) -> Response {
    let Some(product_id) = id.parse::<i64>().ok().filter(|p| *p > 0) else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("product id {:?} is not a positive integer", clip(&id)),
        );
    };
    match crate::spread::total_stock(&shards, product_id).await {
        Ok(Some(stock)) => axum::Json(json!({ "product_id": product_id, "stock": stock })).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("unknown product {product_id}")),
        Err(e) => {
            log_failure("stock lookup failed", &e);
            error(StatusCode::SERVICE_UNAVAILABLE, "stock is unavailable; try again")
        }
    }
}

async fn openapi() -> Response {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// The whole front door.
pub(crate) fn router(
    shards: Shards,
    ledger: LedgerSlot,
    http: &HttpSettings,
    max_hold: std::time::Duration,
) -> Router {
    let tries = Throttle::default();
    let api = Api {
        shards: shards.clone(),
        ledger: ledger.clone(),
        token: http.api_token.clone(),
        tries: tries.clone(),
    };
    let latencies = Latencies::default();
    let admin = Admin::new(shards.clone(), ledger.clone(), http.admin_token.clone(), latencies.clone());
    let health = Health {
        shards: shards.clone(),
        ledger,
        needs_mysql: false,
        uses_mysql: true,
        metrics: m::install(),
    };
    let timed = middleware::from_fn_with_state(latencies, time_reservations);
    Router::new()
        .route("/reserve", post(post_reserve).layer(timed))
        .route("/stock/{id}", get(get_stock))
        .route("/openapi.json", get(openapi))
        .with_state(Front { shards, max_hold, token: http.api_token.clone(), tries })
        .merge(reservations::routes(api))
        .merge(health::routes(health))
        .merge(admin::routes(admin))
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "no such route: POST /reserve, GET /stock/<id>, /healthz, /metrics, /openapi.json, /admin",
            )
        })
}

/// `stockq serve`: connects to Redis, serves the front door on `STOCKQ_BIND`:`PORT` until
/// SIGTERM or SIGINT, and connects to MySQL in the background meanwhile.
pub(crate) async fn run(settings: &Settings, shutdown: CancellationToken) -> Result<()> {
    let shards = Shards::connect(settings).await?;
    let ledger = LedgerSlot::default();
    tokio::spawn(connect_ledger(settings.clone(), ledger.clone(), shutdown.clone()));
    let sampler = tokio::spawn(health::sample_queue(shards.clone(), shutdown.clone()));
    let refusals =
        tokio::spawn(crate::reservations::refusals::keep_flushing(shards.clone(), shutdown.clone()));
    let addr = SocketAddr::new(settings.http.bind, settings.http.port.unwrap_or(DEFAULT_PORT));
    let served = crate::http::listen::serve(
        addr,
        router(shards, ledger, &settings.http, settings.redis.max_hold),
        Limits::of(&settings.http),
        shutdown.clone(),
    )
    .await;
    // the server also returns when it cannot listen: the background tasks must stop then too
    shutdown.cancel();
    let _ = sampler.await;
    let _ = refusals.await;
    served
}

/// Connects to MySQL until it answers, or until `shutdown`.
async fn connect_ledger(settings: Settings, slot: LedgerSlot, shutdown: CancellationToken) {
    let mut backoff = Backoff::new();
    while !shutdown.is_cancelled() {
        match Ledger::connect(&settings, MYSQL_CONNECTIONS).await {
            Ok(ledger) => {
                slot.set(ledger);
                backoff.reset();
                return;
            }
            Err(e) => {
                slot.failed(crate::error::one_line(&e.to_string()));
                backoff.log(&e, "cannot reach MySQL: reservations go on, /healthz says degraded");
            }
        }
        backoff.sleep(&shutdown).await;
    }
}
