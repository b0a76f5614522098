//! `/healthz` and `/metrics`, served by `worker` and `janitor` when `PORT` is set, and by
//! `serve` beside its own routes.
//!
//! `/healthz` answers 200 with `{"status":"ok","redis":"ok","mysql":"ok"}` when both stores
//! answer within a second; 200 with `"status":"degraded"` and the reason when MySQL does not
//! but the process can do its job without it (`serve`); 503 with the reason otherwise.
//! `/metrics` is Prometheus text; the queue gauges in it are sampled every few seconds by
//! [`sample_queue`], and the process's own figures are read at each scrape.

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
use crate::queue::{Depths, Shards};
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
    /// Whether it uses MySQL at all (the relay does not): else MySQL is "not used".
    pub(crate) uses_mysql: bool,
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
        _ if !h.uses_mysql => Ok(()),
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
        "mysql": if h.uses_mysql { describe(mysql) } else { "not used".to_string() },
    });
    let code = if status == "unavailable" { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
    (code, axum::Json(body))
}

async fn metrics_text(State(h): State<Health>) -> impl IntoResponse {
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], m::render(&h.metrics))
}

/// Starts `/healthz` + `/metrics` on `addr` (`STOCKQ_BIND`:`PORT`) and the queue sampler, for
/// `worker` and `janitor`.
pub(crate) fn spawn_ops(
    addr: SocketAddr,
    shards: Shards,
    ledger: Ledger,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let ledger = LedgerSlot::with(ledger);
    let health = Health { shards, ledger, needs_mysql: true, uses_mysql: true, metrics: m::install() };
    spawn_endpoint(addr, health, shutdown)
}

/// Starts `/healthz` + `/metrics` on `addr` and the queue sampler, for `relay`, which
/// needs Redis only.
pub(crate) fn spawn_relay_ops(
    addr: SocketAddr,
    shards: Shards,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let ledger = LedgerSlot::default();
    let health = Health { shards, ledger, needs_mysql: false, uses_mysql: false, metrics: m::install() };
    spawn_endpoint(addr, health, shutdown)
}

fn spawn_endpoint(
    addr: SocketAddr,
    health: Health,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let sampler = tokio::spawn(sample_queue(health.shards.clone(), shutdown.clone()));
    tokio::spawn(async move {
        // the settings' limits are `serve`'s: this endpoint takes the defaults, and believes
        // no forwarded header (it reads none)
        let limits = crate::http::listen::Limits::default();
        if let Err(e) = crate::http::listen::serve(addr, routes(health), limits, shutdown).await {
            tracing::error!(error = %e, "health and metrics endpoint stopped");
        }
        let _ = sampler.await;
    })
}

/// Refreshes the queue gauges every [`SAMPLE_EVERY`] until `shutdown`. While Redis does not
/// answer, `stockq_redis_up` is 0 and the queue gauges are NaN: a figure that cannot be read
/// is not shown as the last one that could.
pub(crate) async fn sample_queue(shards: Shards, shutdown: CancellationToken) {
    // the recorder first, or the first sample goes nowhere
    m::install();
    let me = process_tag();
    loop {
        report_if_elected(&shards, m::Reporter::Queue, &me).await;
        match sample_once(&shards).await {
            Ok(sample) => {
                sample.publish();
                metrics::gauge!(m::REDIS_UP).set(1.0);
            }
            Err(e) => {
                tracing::debug!(error = %e, "could not sample the queue");
                for gauge in m::QUEUE_GAUGES {
                    metrics::gauge!(*gauge).set(f64::NAN);
                }
                metrics::gauge!(m::REDIS_UP).set(0.0);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(SAMPLE_EVERY) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// This process, as the reporter leases name it: host, pid and a random tag.
pub(crate) fn process_tag() -> String {
    let host = hostname::get().map(|h| h.to_string_lossy().into_owned()).unwrap_or_else(|_| "host".into());
    format!("{host}-{}-{:08x}", std::process::id(), rand::random::<u32>())
}

/// Takes or renews the lease of a group of queue-wide gauges: exported by this process only
/// while it holds it. Without Redis nobody can tell: the gauges stay as they were decided.
pub(crate) async fn report_if_elected(shards: &Shards, group: m::Reporter, me: &str) {
    match shards.first().hold_reporter(group.name(), me).await {
        Ok(holds) => group.set(holds),
        Err(e) => {
            tracing::debug!(error = %e, "could not renew the metrics reporter's lease");
            // past its lease another process may report: this one stops, so that a sum over
            // processes never counts the queue twice (or adds a NaN)
            group.lapse_after(crate::queue::REPORTER_LEASE);
        }
    }
}

/// The queue gauges over every shard.
#[derive(Debug, Default, PartialEq)]
struct QueueSample {
    pending: u64,
    processing: u64,
    dead: u64,
    held: u64,
    /// The longest wait of any shard's oldest pending event; NaN when one that waits carries
    /// no time.
    oldest_pending_seconds: f64,
    claim_overdue_seconds: f64,
    live_workers: usize,
}

impl QueueSample {
    fn add(&mut self, d: &Depths) {
        self.pending += d.pending;
        self.processing += d.processing;
        self.dead += d.dead;
        self.held += d.held;
        let waited = match (d.pending, d.oldest_pending_age_ms) {
            (0, _) => 0.0,
            (_, Some(ms)) => ms as f64 / 1000.0,
            (_, None) => f64::NAN,
        };
        // f64::max ignores NaN: an unknown wait must not hide behind a known one
        self.oldest_pending_seconds = if waited.is_nan() || self.oldest_pending_seconds.is_nan() {
            f64::NAN
        } else {
            self.oldest_pending_seconds.max(waited)
        };
        let overdue = d.claim_expires_in_ms.map_or(0, |ms| (-ms).max(0));
        self.claim_overdue_seconds = self.claim_overdue_seconds.max(overdue as f64 / 1000.0);
    }

    fn publish(&self) {
        metrics::gauge!(m::PENDING).set(self.pending as f64);
        metrics::gauge!(m::PROCESSING).set(self.processing as f64);
        metrics::gauge!(m::DEAD).set(self.dead as f64);
        metrics::gauge!(m::HELD).set(self.held as f64);
        metrics::gauge!(m::OLDEST_PENDING_SECONDS).set(self.oldest_pending_seconds);
        metrics::gauge!(m::CLAIM_OVERDUE_SECONDS).set(self.claim_overdue_seconds);
        metrics::gauge!(m::LIVE_WORKERS).set(self.live_workers as f64);
    }
}

async fn sample_once(shards: &Shards) -> Result<QueueSample> {
    let mut sample = QueueSample::default();
    for queue in shards.all() {
        sample.add(&queue.depths().await?);
    }
    sample.live_workers = shards.first().live_workers().await?.len();
    Ok(sample)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn depths(pending: u64, oldest_pending_age_ms: Option<u64>, claim_expires_in_ms: Option<i64>) -> Depths {
        Depths {
            pending,
            processing: 1,
            dead: 2,
            oldest_pending_age_ms,
            claim_expires_in_ms,
            counters: BTreeMap::new(),
            held: 0,
            cancelling: 0,
            releasing: 0,
        }
    }

    #[test]
    fn shards_add_up_and_the_longest_wait_and_most_overdue_claim_win() {
        let mut sample = QueueSample::default();
        sample.add(&depths(3, Some(1500), Some(4000)));
        sample.add(&depths(0, None, None));
        sample.add(&depths(1, Some(250), Some(-2500)));
        assert_eq!((sample.pending, sample.processing, sample.dead), (4, 3, 6));
        assert_eq!(sample.oldest_pending_seconds, 1.5);
        assert_eq!(sample.claim_overdue_seconds, 2.5);
    }

    #[test]
    fn an_empty_queue_waits_0_and_an_entry_without_a_time_is_unknown() {
        let mut empty = QueueSample::default();
        empty.add(&depths(0, None, Some(10)));
        assert_eq!((empty.oldest_pending_seconds, empty.claim_overdue_seconds), (0.0, 0.0));
        let mut unknown = QueueSample::default();
        unknown.add(&depths(2, None, None));
        unknown.add(&depths(1, Some(9000), None));
        assert!(unknown.oldest_pending_seconds.is_nan());
    }
}
