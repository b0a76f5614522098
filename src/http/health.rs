//! `/healthz` and `/metrics`, served by `worker` and `janitor` when `PORT` is set, and by
//! `serve` beside its own routes.
//!
//! `/healthz` answers 200 with `{"status":"ok","redis":"ok","mysql":"ok"}` when both stores
//! answer within a second; 200 with `"status":"degraded"` and the reason when MySQL does not
//! but the process can do its job without it (`serve`); 503 with the reason otherwise.
//! `/metrics` is Prometheus text; the queue gauges in it are sampled every few seconds by
//! [`sample_queue`].

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result, Store};
use crate::ledger::Ledger;
use crate::queue::Shards;
use crate::telemetry::metrics as m;

/// How often the queue gauges are refreshed.
pub(crate) const SAMPLE_EVERY: Duration = Duration::from_secs(2);
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub(crate) struct Health {
    pub(crate) shards: Shards,
    pub(crate) ledger: LedgerSlot,
    /// Whether the process can do nothing without MySQL: then MySQL down is 503, else 200
    /// "degraded".
    pub(crate) needs_mysql: bool,
    pub(crate) metrics: PrometheusHandle,
}

/// The ledger once there is one, or why there is none yet (`serve` connects in the
/// background, so that reservations do not wait for MySQL).
#[derive(Clone, Default)]
pub(crate) struct LedgerSlot(Arc<(OnceLock<Ledger>, Mutex<String>)>);

impl LedgerSlot {
    pub(crate) fn with(ledger: Ledger) -> LedgerSlot {
        let slot = LedgerSlot::default();
        slot.set(ledger);
        slot
    }

    pub(crate) fn set(&self, ledger: Ledger) {
        let _ = self.0.0.set(ledger);
    }

    pub(crate) fn failed(&self, why: String) {
        *self.0.1.lock().unwrap_or_else(|e| e.into_inner()) = why;
    }

    pub(crate) fn get(&self) -> Result<&Ledger> {
        self.0.0.get().ok_or_else(|| {
            let why = self.0.1.lock().unwrap_or_else(|e| e.into_inner());
            Error::NotConnected { store: Store::Mysql, why: why.clone() }
        })
    }
}

/// The `/healthz` and `/metrics` routes.
pub(crate) fn routes<S: Clone + Send + Sync + 'static>(health: Health) -> Router<S> {
    Router::new().route("/healthz", get(healthz)).route("/metrics", get(metrics_text)).with_state(health)
}

async fn healthz(State(h): State<Health>) -> impl IntoResponse {
    let redis = h.shards.first().ping(PROBE_TIMEOUT).await;
    let mysql = match h.ledger.get() {
        Ok(ledger) => ledger.ping(PROBE_TIMEOUT).await,
        Err(e) => Err(e),
    };
    let describe = |r: std::result::Result<(), Error>| match r {
        Ok(()) => "ok".to_string(),
        Err(e) => crate::error::one_line(&e.to_string()),
    };
    let status = match (redis.is_ok(), mysql.is_ok()) {
        (true, true) => "ok",
        (true, false) if !h.needs_mysql => "degraded",
        _ => "unavailable",
    };
    let body = json!({
        "status": status,
        "redis": describe(redis.map(|_| ())),
        "mysql": describe(mysql),
    });
    let code = if status == "unavailable" { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
    (code, axum::Json(body))
}

async fn metrics_text(State(h): State<Health>) -> impl IntoResponse {
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], h.metrics.render())
}

/// Starts `/healthz` + `/metrics` on `port` and the queue sampler, for `worker` and `janitor`.
pub(crate) fn spawn_ops(
    port: u16,
    shards: Shards,
    ledger: Ledger,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let ledger = LedgerSlot::with(ledger);
    let health = Health { shards: shards.clone(), ledger, needs_mysql: true, metrics: m::install() };
    let sampler = tokio::spawn(sample_queue(shards, shutdown.clone()));
    tokio::spawn(async move {
        let addr = SocketAddr::from(([0, 0, 0, 0], port));
        if let Err(e) = crate::http::listen::serve(addr, routes(health), shutdown).await {
            tracing::error!(error = %e, "health and metrics endpoint stopped");
        }
        let _ = sampler.await;
    })
}

/// Refreshes the queue gauges every [`SAMPLE_EVERY`] until `shutdown`.
pub(crate) async fn sample_queue(shards: Shards, shutdown: CancellationToken) {
    loop {
        if let Err(e) = sample_once(&shards).await {
            tracing::debug!(error = %e, "could not sample the queue");
        }
        tokio::select! {
            _ = tokio::time::sleep(SAMPLE_EVERY) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

async fn sample_once(shards: &Shards) -> Result<()> {
    let (mut pending, mut processing, mut dead, mut oldest_ms, mut held) = (0, 0, 0, 0, 0);
    for queue in shards.all() {
        let d = queue.depths().await?;
        pending += d.pending;
        processing += d.processing;
        dead += d.dead;
        held += d.held;
        oldest_ms = oldest_ms.max(d.oldest_claim_age_ms.unwrap_or(0));
    }
    metrics::gauge!(m::PENDING).set(pending as f64);
    metrics::gauge!(m::PROCESSING).set(processing as f64);
    metrics::gauge!(m::DEAD).set(dead as f64);
    metrics::gauge!(m::HELD).set(held as f64);
    metrics::gauge!(m::OLDEST_CLAIM_SECONDS).set(oldest_ms as f64 / 1000.0);
    let live = shards.first().live_workers().await?;
    metrics::gauge!(m::LIVE_WORKERS).set(live.len() as f64);
    Ok(())
}
