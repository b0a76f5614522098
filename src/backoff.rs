//! Retrying with exponential backoff, and logging failures without flooding the log.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::telemetry::metrics as m;

/// Writes a line under one of the targets [`caller_target`] names. A tracing target is fixed
/// where a line is written, so each target has its own line here.
macro_rules! log_as {
    ($level:ident, $target:expr, $($line:tt)+) => {
        match $target {
            "stockq::worker" => tracing::$level!(target: "stockq::worker", $($line)+),
            "stockq::janitor" => tracing::$level!(target: "stockq::janitor", $($line)+),
            "stockq::http" => tracing::$level!(target: "stockq::http", $($line)+),
            "stockq::ledger" => tracing::$level!(target: "stockq::ledger", $($line)+),
            _ => tracing::$level!($($line)+),
        }
    };
}

/// The log target of the code that called (its source file, from `#[track_caller]`): a
/// janitor's retries are the janitor's lines, filtered with `RUST_LOG=stockq::janitor=...`.
#[track_caller]
fn caller_target() -> &'static str {
    target_of(std::panic::Location::caller().file())
}

fn target_of(file: &str) -> &'static str {
    let file = file.replace('\\', "/");
    // relative to the package (`src/janitor.rs`), or absolute when built elsewhere
    let module = file.rsplit_once("src/").map_or(file.as_str(), |(_, rest)| rest).trim_end_matches(".rs");
    match module.split('/').next().unwrap_or("") {
        "worker" => "stockq::worker",
        "janitor" => "stockq::janitor",
        "http" => "stockq::http",
        "ledger" => "stockq::ledger",
        _ => "stockq::backoff",
    }
}

/// Exponential backoff with rate-limited logging: one line per kind of failure every few
/// seconds across the whole process (however many loops and batches fail at once), so an
/// outage is visible without flooding the log.
pub(crate) struct Backoff {
    delay: Duration,
    failures: u64,
}

/// When each kind of failure (its message) was last logged, process-wide.
static LAST_LOGGED: std::sync::Mutex<Vec<(&'static str, Instant)>> = std::sync::Mutex::new(Vec::new());

/// Whether a line of this kind may be logged now (at most one every [`Backoff::LOG_EVERY`]).
pub(crate) fn may_log(what: &'static str) -> bool {
    let mut last = LAST_LOGGED.lock().unwrap_or_else(|e| e.into_inner());
    match last.iter_mut().find(|(kind, _)| *kind == what) {
        Some((_, at)) if at.elapsed() < Backoff::LOG_EVERY => false,
        Some((_, at)) => {
            *at = Instant::now();
            true
        }
        None => {
            last.push((what, Instant::now()));
            true
        }
    }
}

impl Backoff {
    const MIN: Duration = Duration::from_millis(50);
    const MAX: Duration = Duration::from_secs(2);
    const LOG_EVERY: Duration = Duration::from_secs(5);

    pub(crate) fn new() -> Self {
        Backoff { delay: Self::MIN, failures: 0 }
    }

    /// Clears the failures, logging that the caller works again if it had failed.
    #[track_caller]
    pub(crate) fn reset(&mut self) {
        if self.failures > 0 {
            let failures = self.failures;
            log_as!(info, caller_target(), failures, "working again after failures");
        }
        *self = Backoff::new();
    }

    /// Counts a failure and logs it, rate-limited per kind (`what`) across the process. The
    /// line is the caller's: its target is the caller's module (see [`caller_target`]).
    #[track_caller]
    pub(crate) fn log(&mut self, error: &Error, what: &'static str) {
        self.failures += 1;
        if let Some(store) = error.store() {
            metrics::counter!(m::STORE_ERRORS, "store" => store.as_str()).increment(1);
        }
        if may_log(what) {
            let failures = self.failures;
            log_as!(warn, caller_target(), error = %error, failures, "{what}");
        }
    }

    pub(crate) async fn pause(&mut self) {
        let jitter = rand::random_range(0..=self.delay.as_millis() as u64 / 2);
        tokio::time::sleep(self.delay + Duration::from_millis(jitter)).await;
        self.delay = (self.delay * 2).min(Self::MAX);
    }

    pub(crate) async fn sleep(&mut self, shutdown: &CancellationToken) {
        tokio::select! {
            _ = self.pause() => {}
            _ = shutdown.cancelled() => {}
        }
    }
}

/// Wall-clock unix milliseconds (for envelopes and logs; scripts use Redis's clock).
pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::target_of;

    #[test]
    fn lines_logged_for_a_caller_carry_the_caller_s_module() {
        assert_eq!(target_of("src/janitor.rs"), "stockq::janitor");
        assert_eq!(target_of("src/janitor/mod.rs"), "stockq::janitor");
        assert_eq!(target_of("src/worker/mod.rs"), "stockq::worker");
        assert_eq!(target_of("src/http/serve.rs"), "stockq::http");
        assert_eq!(target_of("src/ledger/books.rs"), "stockq::ledger");
        assert_eq!(target_of("src/backoff.rs"), "stockq::backoff");
        assert_eq!(target_of("/home/ci/src/stockq/src/janitor.rs"), "stockq::janitor");
        assert_eq!(target_of(r"C:\build\src\worker\mod.rs"), "stockq::worker");
    }
}
