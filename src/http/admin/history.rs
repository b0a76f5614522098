//! The charts' last minutes, kept by the `serve` process so that a page opened or reloaded
//! draws them at once (`GET /admin/api/history`).
//!
//! A ring of samples bounded by age ([`KEEP`]) and count ([`MAX_SAMPLES`]), each what one
//! read of the state gives the charts: the queue's depths, the running totals, this
//! process's reservation latency counts and reservation → outcome. The state feed records a
//! sample with each read (at most one a second, however many pages poll), and while the
//! dashboard is on a task of its own takes one every [`SAMPLE_EVERY`] when no page did, the
//! same way: a few Redis round trips every 2 s, in this process only.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::json;

use super::feed::{self, EndToEnd, unix_ms};
use super::latency::BOUNDS_MS;
use super::{Admin, Latencies, Operator};
use crate::admin::stats::Overview;
use crate::queue::Shards;

/// How long a sample is kept.
pub(super) const KEEP: Duration = Duration::from_secs(10 * 60);
/// How often the sampler looks whether a sample is due.
const SAMPLE_EVERY: Duration = Duration::from_secs(2);
/// Samples closer together than this are not kept: many pages polling add nothing.
const MIN_SPACING_MS: i64 = 1_000;
/// The most samples kept, whatever their age (10 minutes at one a second, and room to spare).
const MAX_SAMPLES: usize = 700;

/// What the charts draw from one read of the state.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Sample {
    /// unix ms
    at: i64,
    pending: u64,
    processing: u64,
    held: u64,
    dead: u64,
    applied: u64,
    rejected: u64,
    /// `POST /reserve` answered by this process, per latency bucket (see the state's
    /// `reserve_latency`).
    reserve_counts: Vec<u64>,
    end_to_end: EndToEnd,
}

impl Sample {
    pub(super) fn of(at: i64, o: &Overview, reserve_counts: Vec<u64>, end_to_end: EndToEnd) -> Sample {
        let counter = |name: &str| o.counters.get(name).copied().unwrap_or(0);
        Sample {
            at,
            pending: o.pending,
            processing: o.processing,
            held: o.held,
            dead: o.dead,
            applied: counter("applied"),
            rejected: counter("rejected"),
            reserve_counts,
            end_to_end,
        }
    }
}

/// The samples of the last [`KEEP`], oldest first.
#[derive(Default)]
pub(crate) struct History(Mutex<VecDeque<Sample>>);

impl History {
    fn samples(&self) -> std::sync::MutexGuard<'_, VecDeque<Sample>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps `sample`, unless one was kept less than [`MIN_SPACING_MS`] before it; forgets
    /// what is older than [`KEEP`].
    pub(super) fn record(&self, sample: Sample) {
        let mut samples = self.samples();
        if samples.back().is_some_and(|last| sample.at - last.at < MIN_SPACING_MS) {
            return;
        }
        let oldest = sample.at - KEEP.as_millis() as i64;
        samples.push_back(sample);
        while samples.front().is_some_and(|s| s.at < oldest) || samples.len() > MAX_SAMPLES {
            samples.pop_front();
        }
    }

    /// Whether no sample was kept in the last [`SAMPLE_EVERY`] (give or take a poll's jitter).
    fn due(&self, now: i64) -> bool {
        let spacing = SAMPLE_EVERY.as_millis() as i64 - 100;
        self.samples().back().is_none_or(|last| now - last.at >= spacing)
    }

    fn all(&self) -> Vec<Sample> {
        self.samples().iter().cloned().collect()
    }
}

/// Samples the charts while `history` lives (as long as the dashboard's routes do), when no
/// page polled lately. Outside a Tokio runtime (never in `serve`), nothing is sampled but what
/// the pages read.
pub(super) fn keep_sampling(history: &Arc<History>, shards: Shards, latencies: Latencies) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let history: Weak<History> = Arc::downgrade(history);
    runtime.spawn(async move {
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(history) = history.upgrade() else {
                return;
            };
            if !history.due(unix_ms()) {
                continue;
            }
            match feed::sample(&shards, &latencies).await {
                Ok(sample) => history.record(sample),
                Err(e) => crate::http::answer::log_failure("dashboard history sample failed", &e),
            }
        }
    });
}

/// `GET /admin/api/history`: 200 `{"bounds_ms", "samples": [...]}`, the samples of the last
/// ten minutes, oldest first.
pub(super) async fn history(State(admin): State<Admin>, _: Operator) -> Response {
    axum::Json(json!({ "bounds_ms": BOUNDS_MS, "samples": admin.history.all() })).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at: i64) -> Sample {
        Sample {
            at,
            pending: 0,
            processing: 0,
            held: 0,
            dead: 0,
            applied: 0,
            rejected: 0,
            reserve_counts: Vec::new(),
            end_to_end: EndToEnd::of(&[], at),
        }
    }

    #[test]
    fn samples_are_spaced_and_kept_ten_minutes() {
        let history = History::default();
        assert!(history.due(0));
        history.record(sample(1_000));
        history.record(sample(1_500)); // another page's poll, too close
        assert_eq!(history.all().len(), 1);
        assert!(!history.due(2_000));
        assert!(history.due(3_000));
        let keep = KEEP.as_millis() as i64;
        for at in (2..=700).map(|s| s * 1_000) {
            history.record(sample(at));
        }
        let all = history.all();
        assert_eq!(all.first().map(|s| s.at), Some(700_000 - keep), "ten minutes back");
        assert_eq!(all.last().map(|s| s.at), Some(700_000));
        for at in (701..=2_000).map(|s| s * 1_000) {
            history.record(sample(at));
        }
        assert!(history.all().len() <= MAX_SAMPLES);
    }
}
