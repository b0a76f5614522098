//! Logging, set up in one place: `RUST_LOG` filters (default `info`), `STOCKQ_LOG_FORMAT`
//! chooses human-readable lines or one JSON object per line. Logs go to stderr so that
//! command output on stdout stays machine-readable.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

pub fn init(format: LogFormat, default_filter: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Pretty => builder.with_target(false).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).try_init(),
    };
}

/// Prometheus metrics: the names in one place, the recorder installed once.
///
/// Labels are low-cardinality only (a result, a store), with one exception kept bounded:
/// `stockq_drift_units` carries a `product_id` label for products that are drifting now,
/// which a healthy system has none of.
pub(crate) mod metrics {
    use std::sync::OnceLock;
    use std::time::Duration;

    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

    pub(crate) const APPLIED: &str = "stockq_events_applied_total";
    pub(crate) const REJECTED: &str = "stockq_events_rejected_total";
    pub(crate) const DUPLICATES: &str = "stockq_events_duplicate_total";
    pub(crate) const REDELIVERED: &str = "stockq_events_redelivered_total";
    pub(crate) const DEAD_LETTERED: &str = "stockq_events_dead_lettered_total";
    pub(crate) const REQUEUED: &str = "stockq_events_requeued_total";
    pub(crate) const ADOPTED: &str = "stockq_claims_adopted_total";
    pub(crate) const BATCH_SIZE: &str = "stockq_batch_size";
    pub(crate) const APPLY_SECONDS: &str = "stockq_batch_apply_seconds";
    pub(crate) const RESERVATIONS: &str = "stockq_reservations_total";
    pub(crate) const RESERVE_SECONDS: &str = "stockq_reserve_seconds";
    pub(crate) const RESERVATION_TO_OUTCOME_SECONDS: &str = "stockq_reservation_to_outcome_seconds";
    pub(crate) const PENDING: &str = "stockq_queue_pending";
    pub(crate) const PROCESSING: &str = "stockq_queue_processing";
    pub(crate) const DEAD: &str = "stockq_queue_dead";
    pub(crate) const OLDEST_CLAIM_SECONDS: &str = "stockq_oldest_claim_age_seconds";
    pub(crate) const LIVE_WORKERS: &str = "stockq_live_workers";
    pub(crate) const DRIFTING_PRODUCTS: &str = "stockq_drifting_products";
    pub(crate) const DRIFT_UNITS: &str = "stockq_drift_units";
    pub(crate) const CHECKS: &str = "stockq_checks_total";
    pub(crate) const STORE_ERRORS: &str = "stockq_store_errors_total";
    pub(crate) const RECONNECTS: &str = "stockq_redis_reconnects_total";
    pub(crate) const CANCELLED: &str = "stockq_events_cancelled_total";
    pub(crate) const RELEASED: &str = "stockq_releases_total";
    pub(crate) const EXPIRED: &str = "stockq_holds_expired_total";
    pub(crate) const HELD: &str = "stockq_holds";
    pub(crate) const CANCELS: &str = "stockq_cancels_total";

    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

    /// How often histogram samples are folded into their buckets. Until then every sample is
    /// kept (about 20 bytes a reservation), so without this a process that nobody scrapes
    /// grows without bound.
    const UPKEEP_EVERY: Duration = Duration::from_secs(1);

    /// Installs the Prometheus recorder (once per process) and returns its handle.
    pub(crate) fn install() -> PrometheusHandle {
        HANDLE
            .get_or_init(|| {
                let recorder = PrometheusBuilder::new()
                    .set_buckets_for_metric(
                        Matcher::Suffix("_seconds".into()),
                        &[
                            0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                            5.0,
                        ],
                    )
                    .and_then(|b| {
                        b.set_buckets_for_metric(
                            Matcher::Full(BATCH_SIZE.into()),
                            &[1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 5000.0],
                        )
                    })
                    .expect("static buckets are valid")
                    .build_recorder();
                let handle = recorder.handle();
                let _ = ::metrics::set_global_recorder(recorder);
                describe();
                spawn_upkeep(handle.clone());
                handle
            })
            .clone()
    }

    /// A thread of its own rather than a task, so that upkeep runs whatever runtime (if
    /// any) the caller is on and however busy its workers are.
    fn spawn_upkeep(handle: PrometheusHandle) {
        let upkeep = move || {
            loop {
                std::thread::sleep(UPKEEP_EVERY);
                handle.run_upkeep();
            }
        };
        let spawned = std::thread::Builder::new().name("metrics-upkeep".into()).spawn(upkeep);
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the metrics upkeep thread: memory will grow until /metrics is scraped");
        }
    }

    fn describe() {
        use ::metrics::{describe_counter, describe_gauge, describe_histogram};
        describe_counter!(APPLIED, "Events deducted in MySQL");
        describe_counter!(REJECTED, "Events MySQL could not honour; their Redis stock was given back");
        describe_counter!(DUPLICATES, "Second reservations of an event id; their Redis stock was given back");
        describe_counter!(REDELIVERED, "Deliveries of events already settled by an earlier delivery");
        describe_counter!(DEAD_LETTERED, "Entries moved to the dead-letter list");
        describe_counter!(CANCELLED, "Events of cancelled reservations dropped without a MySQL deduction");
        describe_counter!(RELEASED, "Cancelled applied reservations whose quantity MySQL got back");
        describe_counter!(EXPIRED, "Holds whose payment deadline passed, ended by the janitor");
        describe_gauge!(HELD, "Reservations held unpaid");
        describe_counter!(CANCELS, "Cancels that changed a reservation, by the state they left it in");
        describe_counter!(REQUEUED, "Expired claims moved back to pending by the janitor");
        describe_counter!(ADOPTED, "Entries found in processing without a claim and given one");
        describe_histogram!(BATCH_SIZE, "Entries per claimed batch");
        describe_histogram!(APPLY_SECONDS, "Time to apply one batch in MySQL, retries included");
        describe_counter!(RESERVATIONS, "Reservations answered, by result");
        describe_histogram!(RESERVE_SECONDS, "Time to answer one reservation");
        describe_histogram!(
            RESERVATION_TO_OUTCOME_SECONDS,
            "Time from a reservation to its outcome (applied, rejected, duplicate, dead), end to end"
        );
        describe_gauge!(PENDING, "Entries waiting in {q}:pending");
        describe_gauge!(PROCESSING, "Entries claimed and not yet acknowledged");
        describe_gauge!(DEAD, "Entries in {q}:dead");
        describe_gauge!(OLDEST_CLAIM_SECONDS, "Age of the oldest claim held");
        describe_gauge!(LIVE_WORKERS, "Workers with a live heartbeat");
        describe_gauge!(DRIFTING_PRODUCTS, "Products whose stores disagree at the last check");
        describe_gauge!(DRIFT_UNITS, "Redis minus expected stock, per drifting product");
        describe_counter!(CHECKS, "Consistency checks run, by result");
        describe_counter!(STORE_ERRORS, "Failed calls to a store, by store");
        describe_counter!(RECONNECTS, "Blocking Redis connections reopened after an error");
    }
}
