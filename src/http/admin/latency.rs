//! Reservation latency as this process answers it, for the dashboard's chart.
//!
//! A histogram of counters that only grow, like a Prometheus one but readable in-process:
//! the page keeps the counts of its earlier polls and reads the latency of the last seconds
//! from the difference. Recording is one atomic increment per reservation.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;

/// The buckets' upper bounds, in milliseconds; one more bucket takes what is slower.
pub(crate) const BOUNDS_MS: [f64; 15] =
    [0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0];

/// How many reservations were answered within each bucket, since the process started.
#[derive(Clone, Default)]
pub(crate) struct Latencies(Arc<[AtomicU64; BOUNDS_MS.len() + 1]>);

impl Latencies {
    pub(crate) fn record(&self, took: Duration) {
        let ms = took.as_secs_f64() * 1000.0;
        let bucket = BOUNDS_MS.iter().position(|bound| ms <= *bound).unwrap_or(BOUNDS_MS.len());
        self.0[bucket].fetch_add(1, Ordering::Relaxed);
    }

    /// The count of each bucket (not cumulative), the last one past [`BOUNDS_MS`].
    pub(crate) fn counts(&self) -> Vec<u64> {
        self.0.iter().map(|n| n.load(Ordering::Relaxed)).collect()
    }
}

/// Times each answer of the route it wraps (`POST /reserve`).
pub(crate) async fn time_reservations(
    State(latencies): State<Latencies>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let response = next.run(request).await;
    latencies.record(started.elapsed());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_answer_lands_in_the_first_bucket_that_holds_it() {
        let latencies = Latencies::default();
        for micros in [50, 100, 101, 1_500, 7_000_000] {
            latencies.record(Duration::from_micros(micros));
        }
        let counts = latencies.counts();
        assert_eq!(counts.len(), BOUNDS_MS.len() + 1);
        assert_eq!((counts[0], counts[1], counts[4], counts[15]), (2, 1, 1, 1));
        assert_eq!(counts.iter().sum::<u64>(), 5);
    }
}
