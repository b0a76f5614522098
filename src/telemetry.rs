//! Logging, set up in one place: `RUST_LOG` filters (default `info`), `STOCKQ_LOG_FORMAT`
//! chooses human-readable lines or one JSON object per line. Logs go to stderr so that
//! command output on stdout stays machine-readable.
//!
//! Every line names the queue it is about (`queue`). Human-readable lines are coloured only
//! on a terminal, and never when `NO_COLOR` is set (no-color.org). JSON lines keep each
//! field's type: a number is a JSON number, a flag a boolean, and a field that an event
//! declares without a value (an `Option` that is `None`, [`tracing::field::Empty`]) is `null`.

use std::fmt;
use std::io::IsTerminal;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, JsonFields, Writer};
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

use crate::config::LogFormat;

/// Installs the process's logger. `queue` is the queue name every line carries.
pub fn init(format: LogFormat, default_filter: &str, queue: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour(std::io::stderr().is_terminal(), std::env::var_os("NO_COLOR")));
    let queue = queue.to_string();
    let _ = match format {
        LogFormat::Pretty => builder.event_format(Pretty { queue }).try_init(),
        LogFormat::Json => builder.fmt_fields(JsonFields::new()).event_format(JsonLines { queue }).try_init(),
    };
}

/// Whether to colour: on a terminal, unless `NO_COLOR` is set to anything but "".
fn colour(terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

/// `2026-11-30T14:02:07.513028Z  WARN batch{worker=w consumer=0 batch=7}: message k=v queue=q`
struct Pretty {
    queue: String,
}

impl<S, N> FormatEvent<S, N> for Pretty
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let ansi = writer.has_ansi_escapes();
        let paint = |code: &str, text: &str| {
            if ansi { format!("\x1b[{code}m{text}\x1b[0m") } else { text.to_string() }
        };
        let mut time = String::new();
        SystemTime.format_time(&mut Writer::new(&mut time))?;
        write!(writer, "{} ", paint("2", &time))?;
        let level = *event.metadata().level();
        let colour = match level {
            Level::TRACE => "35",
            Level::DEBUG => "34",
            Level::INFO => "32",
            Level::WARN => "33",
            Level::ERROR => "31",
        };
        write!(writer, "{} ", paint(colour, &format!("{level:>5}")))?;
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                write!(writer, "{}", paint("1", span.metadata().name()))?;
                if let Some(fields) = span.extensions().get::<FormattedFields<N>>()
                    && !fields.is_empty()
                {
                    write!(writer, "{}{fields}{}", paint("1", "{"), paint("1", "}"))?;
                }
                write!(writer, "{}", paint("2", ":"))?;
            }
            writer.write_char(' ')?;
        }
        ctx.format_fields(writer.by_ref(), event)?;
        // the field as the fields before it are written
        writeln!(writer, " {}{}{}", paint("3", "queue"), paint("2", "="), self.queue)
    }
}

/// One JSON object per line: `timestamp`, `level`, `target`, `queue`, the event's fields
/// (`message` first), and the current span (`span`) and all entered spans (`spans`) with
/// their fields.
struct JsonLines {
    queue: String,
}

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        use serde_json::Value;
        let meta = event.metadata();
        let mut time = String::new();
        SystemTime.format_time(&mut Writer::new(&mut time))?;
        let mut line = Fields::default();
        line.push("timestamp", Value::from(time));
        line.push("level", Value::from(meta.level().as_str()));
        line.push("target", Value::from(meta.target()));
        line.push("queue", Value::from(self.queue.as_str()));
        let mut fields = Fields::default();
        event.record(&mut fields);
        fields.nulls_for(meta.fields().iter().map(|f| f.name()));
        // the line's own keys win over an event field of the same name
        for (name, value) in fields.0 {
            if !line.0.iter().any(|(n, _)| *n == name) {
                line.0.push((name, value));
            }
        }
        if let Some(scope) = ctx.event_scope() {
            let spans: Vec<Value> = scope
                .from_root()
                .map(|span| {
                    let mut object = serde_json::Map::new();
                    object.insert("name".into(), Value::from(span.metadata().name()));
                    if let Some(fields) = span.extensions().get::<FormattedFields<N>>() {
                        // the span's fields as `FormattedFields` hold them: JSON when `N` is
                        // the JSON field formatter, else kept as text
                        match serde_json::from_str::<serde_json::Map<String, Value>>(fields) {
                            Ok(map) => object.extend(map),
                            Err(_) if !fields.is_empty() => {
                                object.insert("fields".into(), Value::from(fields.to_string()));
                            }
                            Err(_) => {}
                        }
                    }
                    Value::Object(object)
                })
                .collect();
            if let Some(current) = spans.last() {
                line.push("span", current.clone());
                line.push("spans", Value::Array(spans));
            }
        }
        writeln!(writer, "{}", line.to_json())
    }
}

/// An event's fields, in the order recorded, with their JSON types.
#[derive(Default)]
struct Fields(Vec<(String, serde_json::Value)>);

impl Fields {
    fn push(&mut self, name: &str, value: serde_json::Value) {
        match self.0.iter_mut().find(|(n, _)| n == name) {
            Some((_, v)) => *v = value,
            None => self.0.push((name.to_string(), value)),
        }
    }

    /// Declared fields that recorded no value are `null`.
    fn nulls_for<'a>(&mut self, declared: impl Iterator<Item = &'a str>) {
        for name in declared {
            if !self.0.iter().any(|(n, _)| n == name) {
                self.0.push((name.to_string(), serde_json::Value::Null));
            }
        }
        // `message` first, as people read a line
        if let Some(at) = self.0.iter().position(|(n, _)| n == "message") {
            let message = self.0.remove(at);
            self.0.insert(0, message);
        }
    }

    fn to_json(&self) -> String {
        let mut out = String::from("{");
        for (i, (name, value)) in self.0.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&serde_json::Value::from(name.as_str()).to_string());
            out.push(':');
            out.push_str(&value.to_string());
        }
        out.push('}');
        out
    }
}

impl Visit for Fields {
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.push(field.name(), value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.push(field.name(), value.into());
    }

    fn record_i128(&mut self, field: &Field, value: i128) {
        match i64::try_from(value) {
            Ok(v) => self.record_i64(field, v),
            Err(_) => self.push(field.name(), value.to_string().into()),
        }
    }

    fn record_u128(&mut self, field: &Field, value: u128) {
        match u64::try_from(value) {
            Ok(v) => self.record_u64(field, v),
            Err(_) => self.push(field.name(), value.to_string().into()),
        }
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        // NaN and the infinities have no JSON number: null
        self.push(
            field.name(),
            serde_json::Number::from_f64(value).map_or(serde_json::Value::Null, Into::into),
        );
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.push(field.name(), value.into());
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.push(field.name(), value.into());
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.push(field.name(), value.to_string().into());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.push(field.name(), format!("{value:?}").into());
    }
}

/// Prometheus metrics: the names in one place, the recorder installed once.
///
/// Labels are low-cardinality only (a result, a store), with one exception kept bounded:
/// `stockq_drift_units` carries a `product_id` label for products that are drifting now,
/// which a healthy system has none of. Every counter, and every value its label takes, is
/// registered at 0 when the recorder is installed, so that a rate over it has a start and
/// an alert on it sees a series before the first event.
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
    pub(crate) const REDIS_UP: &str = "stockq_redis_up";
    pub(crate) const PENDING: &str = "stockq_queue_pending";
    pub(crate) const PROCESSING: &str = "stockq_queue_processing";
    pub(crate) const DEAD: &str = "stockq_queue_dead";
    pub(crate) const OLDEST_PENDING_SECONDS: &str = "stockq_oldest_pending_age_seconds";
    pub(crate) const CLAIM_OVERDUE_SECONDS: &str = "stockq_claim_overdue_seconds";
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
    pub(crate) const BUILD_INFO: &str = "stockq_build_info";
    pub(crate) const HEALS: &str = "stockq_heals_total";
    pub(crate) const SOLD_OUT_FROM_MEMORY: &str = "stockq_sold_out_from_memory_total";
    pub(crate) const TRANSFERS: &str = "stockq_spread_transfers_total";
    pub(crate) const WEBHOOKS_DELIVERED: &str = "stockq_webhooks_delivered_total";
    pub(crate) const WEBHOOKS_RETRIED: &str = "stockq_webhooks_retried_total";
    pub(crate) const WEBHOOKS_DEAD_LETTERED: &str = "stockq_webhooks_dead_lettered_total";
    pub(crate) const WEBHOOKS_WAITING: &str = "stockq_webhooks_waiting";
    pub(crate) const WEBHOOKS_OLDEST_SECONDS: &str = "stockq_webhooks_oldest_undelivered_seconds";
    pub(crate) const WEBHOOKS_DEAD: &str = "stockq_webhooks_dead";

    /// Every value of the `result` label of [`RESERVATIONS`]; `error`: no answer from Redis.
    pub(crate) const RESERVATION_RESULTS: &[&str] = &[
        "reserved",
        "replayed",
        "id_used",
        "sold_out",
        "unknown_product",
        "limit",
        "buyer_required",
        "healing",
        "paused",
        "error",
    ];
    /// Every value of the `result` label of [`CHECKS`]; `error`: the check could not run.
    pub(crate) const CHECK_RESULTS: &[&str] = &["consistent", "drift", "error"];
    /// Every value of the `store` label of [`STORE_ERRORS`].
    const STORES: &[&str] = &["redis", "mysql"];
    /// The counters without labels.
    const COUNTERS: &[&str] = &[
        APPLIED,
        REJECTED,
        DUPLICATES,
        REDELIVERED,
        DEAD_LETTERED,
        REQUEUED,
        ADOPTED,
        RECONNECTS,
        CANCELLED,
        RELEASED,
        EXPIRED,
        HEALS,
        SOLD_OUT_FROM_MEMORY,
        TRANSFERS,
        WEBHOOKS_DELIVERED,
        WEBHOOKS_RETRIED,
        WEBHOOKS_DEAD_LETTERED,
    ];
    /// The gauges the queue sampler sets; NaN while Redis does not answer it.
    pub(crate) const QUEUE_GAUGES: &[&str] =
        &[PENDING, PROCESSING, DEAD, HELD, OLDEST_PENDING_SECONDS, CLAIM_OVERDUE_SECONDS, LIVE_WORKERS];

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
                register();
                spawn_upkeep(handle.clone());
                handle
            })
            .clone()
    }

    /// Who reports the queue-wide gauges: they describe the queue, not the process, so
    /// exactly one process of a deployment exports each group of them (the holder of a lease
    /// in Redis, `Queue::hold_reporter`): a `sum()` over processes is then the queue's figure,
    /// and an alert on one fires once, not once per process.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) enum Reporter {
        /// Depths, waits and live workers: any process with a queue sampler.
        Queue,
        /// The webhooks' backlog: a relay.
        Webhooks,
    }

    impl Reporter {
        pub(crate) fn name(self) -> &'static str {
            match self {
                Reporter::Queue => "queue",
                Reporter::Webhooks => "webhooks",
            }
        }

        fn gauges(self) -> &'static [&'static str] {
            match self {
                Reporter::Queue => QUEUE_GAUGES,
                Reporter::Webhooks => &[WEBHOOKS_WAITING, WEBHOOKS_OLDEST_SECONDS, WEBHOOKS_DEAD],
            }
        }

        fn flag(self) -> &'static std::sync::atomic::AtomicBool {
            static QUEUE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
            static WEBHOOKS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
            match self {
                Reporter::Queue => &QUEUE,
                Reporter::Webhooks => &WEBHOOKS,
            }
        }

        fn renewed(self) -> &'static std::sync::Mutex<Option<std::time::Instant>> {
            static QUEUE: std::sync::Mutex<Option<std::time::Instant>> = std::sync::Mutex::new(None);
            static WEBHOOKS: std::sync::Mutex<Option<std::time::Instant>> = std::sync::Mutex::new(None);
            match self {
                Reporter::Queue => &QUEUE,
                Reporter::Webhooks => &WEBHOOKS,
            }
        }

        /// Whether this process exports the group (it holds the lease, renewed now).
        pub(crate) fn set(self, holds: bool) {
            self.flag().store(holds, std::sync::atomic::Ordering::Relaxed);
            if holds {
                *self.renewed().lock().unwrap_or_else(|e| e.into_inner()) = Some(std::time::Instant::now());
            }
        }

        /// A renewal failed: the group is no longer exported once `lease` has passed since the
        /// last renewal.
        pub(crate) fn lapse_after(self, lease: Duration) {
            let renewed = *self.renewed().lock().unwrap_or_else(|e| e.into_inner());
            if renewed.is_none_or(|at| at.elapsed() >= lease) {
                self.flag().store(false, std::sync::atomic::Ordering::Relaxed);
            }
        }

        fn holds(self) -> bool {
            self.flag().load(std::sync::atomic::Ordering::Relaxed)
        }
    }

    /// The text of `/metrics`: everything recorded, then the process's own figures read now;
    /// without the queue-wide gauges this process does not report.
    pub(crate) fn render(handle: &PrometheusHandle) -> String {
        let hidden: Vec<&str> = [Reporter::Queue, Reporter::Webhooks]
            .into_iter()
            .filter(|r| !r.holds())
            .flat_map(|r| r.gauges().iter().copied())
            .collect();
        let mut text = without(&handle.render(), &hidden);
        text.push_str(&process_text(&metrics_process::collector::collect()));
        text
    }

    /// `text` without the series, HELP and TYPE lines of the metrics `hidden`.
    pub(super) fn without(text: &str, hidden: &[&str]) -> String {
        if hidden.is_empty() {
            return text.to_string();
        }
        let name_of = |line: &str| -> String {
            let line = line.strip_prefix("# HELP ").or_else(|| line.strip_prefix("# TYPE ")).unwrap_or(line);
            line.split(['{', ' ']).next().unwrap_or("").to_string()
        };
        let mut out = String::with_capacity(text.len());
        for line in text.split_inclusive('\n') {
            if !hidden.contains(&name_of(line.trim_end()).as_str()) {
                out.push_str(line);
            }
        }
        out
    }

    /// The standard process metrics of Prometheus's client libraries, from /proc. Written
    /// here rather than recorded: the recorder's counters count whole numbers, and CPU time
    /// is counted in fractions of a second.
    pub(super) fn process_text(p: &metrics_process::collector::Metrics) -> String {
        use std::fmt::Write;
        let figures = [
            (
                "process_cpu_seconds_total",
                "counter",
                "Total user and system CPU time spent in seconds.",
                p.cpu_seconds_total,
            ),
            (
                "process_resident_memory_bytes",
                "gauge",
                "Resident memory size in bytes.",
                p.resident_memory_bytes.map(|v| v as f64),
            ),
            (
                "process_virtual_memory_bytes",
                "gauge",
                "Virtual memory size in bytes.",
                p.virtual_memory_bytes.map(|v| v as f64),
            ),
            ("process_open_fds", "gauge", "Number of open file descriptors.", p.open_fds.map(|v| v as f64)),
            // 0 stands for no limit: then there is no figure to give
            (
                "process_max_fds",
                "gauge",
                "Maximum number of open file descriptors.",
                p.max_fds.filter(|v| *v > 0).map(|v| v as f64),
            ),
            ("process_threads", "gauge", "Number of OS threads in the process.", p.threads.map(|v| v as f64)),
            (
                "process_start_time_seconds",
                "gauge",
                "Start time of the process since unix epoch in seconds.",
                p.start_time_seconds.map(|v| v as f64),
            ),
        ];
        let mut text = String::new();
        for (name, kind, help, value) in figures {
            if let Some(value) = value {
                let _ = write!(text, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n\n");
            }
        }
        text
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

    /// Every counter at 0 (an increment by 0 leaves one already counting as it is), and the
    /// build.
    fn register() {
        for name in COUNTERS {
            ::metrics::counter!(*name).increment(0);
        }
        for result in RESERVATION_RESULTS {
            ::metrics::counter!(RESERVATIONS, "result" => *result).increment(0);
        }
        for result in CHECK_RESULTS {
            ::metrics::counter!(CHECKS, "result" => *result).increment(0);
        }
        for store in STORES {
            ::metrics::counter!(STORE_ERRORS, "store" => *store).increment(0);
        }
        for state in ["cancelled", "cancelling", "releasing"] {
            ::metrics::counter!(CANCELS, "state" => state).increment(0);
        }
        ::metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    }

    fn describe() {
        use ::metrics::{describe_counter, describe_gauge, describe_histogram};
        describe_counter!(APPLIED, "Events deducted in MySQL");
        describe_counter!(
            SOLD_OUT_FROM_MEMORY,
            "Reservations refused as sold out from what this process learned of the product in the last 50 ms, without Redis"
        );
        describe_counter!(TRANSFERS, "Transfers of a spread product's units between its buckets (shards)");
        describe_counter!(WEBHOOKS_DELIVERED, "Outcomes delivered to the webhook (2xx), by this relay");
        describe_counter!(
            WEBHOOKS_RETRIED,
            "Webhook deliveries that failed and wait to be tried again, by this relay"
        );
        describe_counter!(
            WEBHOOKS_DEAD_LETTERED,
            "Webhook deliveries given up on after STOCKQ_WEBHOOK_RETRY_FOR, by this relay"
        );
        describe_gauge!(
            WEBHOOKS_WAITING,
            "Reservations with outcomes waiting to be delivered to the webhook (queue-wide)"
        );
        describe_gauge!(
            WEBHOOKS_OLDEST_SECONDS,
            "Age of the oldest outcome not yet delivered to the webhook (queue-wide)"
        );
        describe_gauge!(WEBHOOKS_DEAD, "Dead letters of webhooks (queue-wide)");
        describe_counter!(HEALS, "Heals of a shard whose Redis lost writes: stock set from MySQL");
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
        describe_counter!(RESERVATIONS, "Reservations tried, by result (error: Redis did not answer)");
        describe_histogram!(RESERVE_SECONDS, "Time to answer one reservation, failed ones included");
        describe_histogram!(
            RESERVATION_TO_OUTCOME_SECONDS,
            "Time from a reservation to its outcome (applied, rejected, duplicate, dead), end to end"
        );
        describe_gauge!(
            REDIS_UP,
            "1 when Redis answered the last sampling of the queue, else 0 (the queue gauges are then NaN)"
        );
        describe_gauge!(PENDING, "Entries waiting in {q}:pending");
        describe_gauge!(PROCESSING, "Entries claimed and not yet acknowledged");
        describe_gauge!(DEAD, "Entries in {q}:dead");
        describe_gauge!(
            OLDEST_PENDING_SECONDS,
            "How long the oldest pending event has waited for a worker (0: none waits; NaN: it carries no time)"
        );
        describe_gauge!(
            CLAIM_OVERDUE_SECONDS,
            "How long the most overdue claim is past its deadline without being re-queued (0: none is)"
        );
        describe_gauge!(LIVE_WORKERS, "Workers with a live heartbeat");
        describe_gauge!(DRIFTING_PRODUCTS, "Products whose stores disagree at the last check");
        describe_gauge!(DRIFT_UNITS, "Redis minus expected stock, per drifting product");
        describe_counter!(CHECKS, "Consistency checks, by result (error: the check could not run)");
        describe_counter!(STORE_ERRORS, "Failed calls to a store, by store");
        describe_counter!(RECONNECTS, "Blocking Redis connections reopened after an error");
        describe_gauge!(BUILD_INFO, "The stockq version, as a label; always 1");
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;
    use std::sync::{Arc, Mutex};

    use super::*;

    #[test]
    fn a_hidden_metric_loses_its_series_help_and_type_and_nothing_else() {
        let text = "# HELP stockq_queue_pending Events waiting\n# TYPE stockq_queue_pending gauge\n\
                    stockq_queue_pending 3\n\n# TYPE stockq_queue_pending_x gauge\nstockq_queue_pending_x 1\n\
                    stockq_drift_units{product_id=\"1\"} 2\n";
        let kept = metrics::without(text, &["stockq_queue_pending", "stockq_drift_units"]);
        assert_eq!(kept, "\n# TYPE stockq_queue_pending_x gauge\nstockq_queue_pending_x 1\n");
        assert_eq!(metrics::without(text, &[]), text);
    }

    #[test]
    fn the_process_figures_are_prometheus_text_and_unknown_ones_are_left_out() {
        let figures = metrics_process::collector::Metrics {
            cpu_seconds_total: Some(1.25),
            resident_memory_bytes: Some(11_534_336),
            max_fds: Some(0),
            ..Default::default()
        };
        let text = metrics::process_text(&figures);
        assert!(
            text.contains("# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total 1.25\n"),
            "{text}"
        );
        assert!(text.contains("\nprocess_resident_memory_bytes 11534336\n"), "{text}");
        assert!(!text.contains("process_max_fds"), "{text}");
        assert!(!text.contains("process_threads"), "{text}");
    }

    #[test]
    fn colour_only_on_a_terminal_and_never_with_no_color() {
        assert!(colour(true, None));
        assert!(colour(true, Some(OsString::new())));
        assert!(!colour(true, Some(OsString::from("1"))));
        assert!(!colour(false, None));
    }

    /// The lines a subscriber with `format` writes while `f` runs.
    fn lines_of(format: LogFormat, f: impl FnOnce()) -> Vec<String> {
        #[derive(Clone, Default)]
        struct Buffer(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buffer {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let builder = tracing_subscriber::fmt().with_writer(move || writer.clone()).with_ansi(false);
        let queue = "shop".to_string();
        match format {
            LogFormat::Json => tracing::subscriber::with_default(
                builder.fmt_fields(JsonFields::new()).event_format(JsonLines { queue }).finish(),
                f,
            ),
            LogFormat::Pretty => {
                tracing::subscriber::with_default(builder.event_format(Pretty { queue }).finish(), f)
            }
        }
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        text.lines().map(str::to_string).collect()
    }

    #[test]
    fn json_lines_keep_numbers_numbers_and_missing_values_null() {
        let lines = lines_of(LogFormat::Json, || {
            let (found, missing): (Option<i64>, Option<i64>) = (Some(789), None);
            let span = tracing::info_span!("batch", worker = "w-1", batch = 7);
            let _entered = span.enter();
            tracing::error!(product_id = 42, redis = found, mysql = missing, delta = -3, ok = false, why = %"x", "drift");
        });
        assert_eq!(lines.len(), 1, "{lines:?}");
        let line: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(line["message"], "drift");
        assert_eq!(line["queue"], "shop");
        assert_eq!(line["level"], "ERROR");
        assert_eq!(line["target"], module_path!());
        assert_eq!(line["product_id"], 42);
        assert_eq!(line["redis"], 789);
        assert!(line["mysql"].is_null(), "{line}");
        assert!(line.as_object().unwrap().contains_key("mysql"));
        assert_eq!(line["delta"], -3);
        assert_eq!(line["ok"], false);
        assert_eq!(line["why"], "x");
        assert_eq!(line["span"]["name"], "batch");
        assert_eq!(line["span"]["batch"], 7);
        assert!(lines[0].starts_with(r#"{"timestamp":"#), "{}", lines[0]);
    }

    #[test]
    fn pretty_lines_name_the_queue_and_carry_no_colour_when_told() {
        let lines = lines_of(LogFormat::Pretty, || {
            let span = tracing::info_span!("batch", batch = 7);
            let _entered = span.enter();
            tracing::warn!(failures = 2, "batch failed; retrying");
        });
        assert_eq!(lines.len(), 1, "{lines:?}");
        let line = &lines[0];
        assert!(
            line.contains(" WARN batch{batch=7}: batch failed; retrying failures=2 queue=shop"),
            "{line}"
        );
        assert!(!line.contains('\x1b'), "{line:?}");
    }
}
