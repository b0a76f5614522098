//! The janitor: recovers abandoned claims, dead-letters what keeps failing, and runs the
//! consistency check on its interval.
//!
//! Every step is one atomic script or is safe to repeat, so any number of janitors may run at
//! once: two recovery passes are serialized by Redis, and an entry exhausted by one pass is
//! given a fresh deadline before it is returned, so another pass does not return it too.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::backoff::{Backoff, now_ms};
use crate::check::{self, CheckReport};
use crate::config::JanitorSettings;
use crate::error::Result;
use crate::event::dead_envelope;
use crate::ledger::Ledger;
use crate::queue::{Alert, EXPIRE_CHUNK, Queue, Settlement, Shards};
use crate::telemetry::metrics as m;

/// Expired claims handled per script call, so one call never blocks Redis for long.
const REQUEUE_LIMIT: usize = 1000;
/// Margin past a claim deadline before the janitor looks again (clock granularity).
const DEADLINE_SLACK: Duration = Duration::from_millis(20);
/// The shortest pause between passes: many holds with deadlines a millisecond apart must not
/// turn the janitor into a busy loop (each pass also scans processing for orphans).
const MIN_PAUSE: Duration = Duration::from_millis(100);

fn earliest(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// What one recovery pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RecoveryReport {
    pub requeued: u64,
    pub adopted: u64,
    pub dead_lettered: u64,
    /// Holds whose payment deadline passed, ended now.
    pub expired: u64,
    /// Time until the earliest claim or hold deadline still standing, if any.
    pub next_deadline_in: Option<Duration>,
}

#[derive(Clone)]
pub struct Janitor {
    shards: Shards,
    ledger: Ledger,
    settings: JanitorSettings,
    /// Products that drifted at the last check (their gauges are zeroed when they recover).
    /// Products that drifted at the last check, with their delta: their gauges are zeroed
    /// when they recover, and a drift is alerted when it starts or its delta changes, not
    /// again at every check while it lasts.
    drifting: std::sync::Arc<std::sync::Mutex<Vec<(i64, i64)>>>,
}

impl Janitor {
    pub fn new(shards: impl Into<Shards>, ledger: Ledger, settings: JanitorSettings) -> Self {
        Janitor { shards: shards.into(), ledger, settings, drifting: Default::default() }
    }

    /// Re-queues every expired claim and dead-letters entries that reached max attempts, on
    /// every shard.
    pub async fn recover(&self) -> Result<RecoveryReport> {
        let mut report = RecoveryReport::default();
        for queue in self.shards.all() {
            let shard = Self::recover_shard(queue).await?;
            report.requeued += shard.requeued;
            report.adopted += shard.adopted;
            report.dead_lettered += shard.dead_lettered;
            report.next_deadline_in = earliest(report.next_deadline_in, shard.next_deadline_in);
            let (expired, next_hold_in) = Self::expire_shard(queue).await?;
            report.expired += expired;
            report.next_deadline_in = earliest(report.next_deadline_in, next_hold_in);
        }
        metrics::counter!(m::EXPIRED).increment(report.expired);
        if report.expired > 0 {
            tracing::info!(expired = report.expired, "ended holds whose payment deadline passed");
        }
        metrics::counter!(m::REQUEUED).increment(report.requeued);
        metrics::counter!(m::ADOPTED).increment(report.adopted);
        metrics::counter!(m::DEAD_LETTERED).increment(report.dead_lettered);
        // Adoption alone is routine: a worker's BLMOVE and its claim are two steps, and a pass
        // that falls between them adopts the entry harmlessly.
        if report.adopted > 0 {
            tracing::debug!(adopted = report.adopted, "gave unclaimed entries in processing a deadline");
        }
        if report.requeued + report.dead_lettered > 0 {
            tracing::info!(
                requeued = report.requeued,
                adopted = report.adopted,
                dead_lettered = report.dead_lettered,
                "recovered abandoned claims"
            );
        }
        Ok(report)
    }

    async fn recover_shard(queue: &Queue) -> Result<RecoveryReport> {
        let mut report = RecoveryReport::default();
        loop {
            let pass = queue.requeue_expired(REQUEUE_LIMIT).await?;
            report.requeued += pass.requeued;
            report.adopted += pass.adopted;
            report.next_deadline_in = pass.next_deadline_in;
            let handled = pass.requeued as usize + pass.exhausted.len();
            if !pass.exhausted.is_empty() {
                let settlement = Settlement {
                    dead: pass
                        .exhausted
                        .iter()
                        .map(|(entry, attempts)| {
                            let reason = format!(
                                "claim timed out {attempts} times (worker crashed or hung on this entry)"
                            );
                            (entry.clone(), dead_envelope(entry, &reason, *attempts, now_ms()))
                        })
                        .collect(),
                    ..Default::default()
                };
                report.dead_lettered += queue.settle(&settlement).await?.dead_lettered;
            }
            if handled < REQUEUE_LIMIT {
                return Ok(report);
            }
        }
    }

    /// Ends every hold whose deadline has passed, in calls of at most [`EXPIRE_CHUNK`] holds,
    /// so Redis serves reservations between them however many are due. Returns the holds
    /// ended and the time until the next deadline.
    async fn expire_shard(queue: &Queue) -> Result<(u64, Option<Duration>)> {
        let mut expired = 0;
        loop {
            let (due, ended) = queue.expire_due().await?;
            expired += ended;
            if due < EXPIRE_CHUNK {
                break;
            }
        }
        Ok((expired, queue.next_hold_in().await?))
    }

    /// Runs the confirmed consistency check, logs each drift and appends it to `{q}:alerts`
    /// when it starts or its delta changed since this janitor's last check (a drift that
    /// lasts is alerted once; a restarted janitor alerts the drifts it finds once more).
    pub async fn check(&self) -> Result<CheckReport> {
        let report = check::check_confirmed(&self.shards, &self.ledger)
            .await
            .inspect_err(|_| metrics::counter!(m::CHECKS, "result" => "error").increment(1))?;
        let before = self.publish_drift(&report);
        if report.is_consistent() {
            tracing::info!(
                products = report.products.len(),
                took_ms = report.took.as_millis() as u64,
                "consistency check: stores agree"
            );
            return Ok(report);
        }
        let mut alerts = Vec::new();
        let mut lasting = 0;
        for p in report.drifts() {
            if before.contains(&(p.product_id, p.delta)) {
                lasting += 1;
                continue;
            }
            tracing::error!(
                product_id = p.product_id,
                redis = p.redis,
                mysql = p.mysql,
                in_flight = p.in_flight,
                expected_redis = p.expected_redis,
                delta = p.delta,
                "consistency check: drift (run `stockq check --repair` to correct Redis)"
            );
            alerts.push(Alert {
                product_id: p.product_id,
                redis: p.redis.unwrap_or(0),
                mysql: p.mysql,
                in_flight: p.in_flight,
                delta: p.delta,
            });
        }
        if lasting > 0 {
            tracing::warn!(
                products = lasting,
                "consistency check: drift lasts, as alerted before (`stockq check`)"
            );
        }
        if !alerts.is_empty() {
            self.shards.first().add_alerts("drift", report.seq, &alerts).await?;
        }
        Ok(report)
    }

    /// Drift gauges: one per product drifting now, zeroed when it stops drifting. Returns
    /// the drifts of the check before.
    fn publish_drift(&self, report: &CheckReport) -> Vec<(i64, i64)> {
        let drifting: Vec<(i64, i64)> = report.drifts().map(|p| (p.product_id, p.delta)).collect();
        metrics::gauge!(m::DRIFTING_PRODUCTS).set(drifting.len() as f64);
        metrics::counter!(m::CHECKS, "result" => if drifting.is_empty() { "consistent" } else { "drift" })
            .increment(1);
        let mut last = self.drifting.lock().unwrap_or_else(|e| e.into_inner());
        for (id, _) in last.iter().filter(|(id, _)| !drifting.iter().any(|(d, _)| d == id)) {
            metrics::gauge!(m::DRIFT_UNITS, "product_id" => id.to_string()).set(0.0);
        }
        for p in report.drifts() {
            metrics::gauge!(m::DRIFT_UNITS, "product_id" => p.product_id.to_string()).set(p.delta as f64);
        }
        std::mem::replace(&mut *last, drifting)
    }

    /// Runs until `shutdown`: a recovery pass every interval, a check every check interval.
    pub(crate) async fn run(&self, shutdown: CancellationToken) -> Result<()> {
        tracing::info!(
            shards = self.shards.len(),
            interval = %humantime::format_duration(self.settings.interval),
            check_interval = %humantime::format_duration(self.settings.check_interval),
            "janitor started"
        );
        let tending = (self.shards.all().len() > 1)
            .then(|| tokio::spawn(tend_spread(self.shards.clone(), shutdown.clone())));
        let mut backoff = Backoff::new();
        let mut next_check = Instant::now();
        while !shutdown.is_cancelled() {
            let mut failed = false;
            // Wake at the earliest claim deadline when it comes before the interval: a
            // killed worker's events are back one visibility timeout after its last renewal,
            // whatever the interval.
            let mut sleep = self.settings.interval;
            if let Err(e) = crate::heal::heal_lost_writes(&self.shards, &self.ledger).await {
                backoff.log(&e, "could not heal a Redis that lost writes");
                failed = true;
            }
            match self.recover().await {
                Ok(report) => {
                    if let Some(next) = report.next_deadline_in {
                        sleep = sleep.min((next + DEADLINE_SLACK).max(MIN_PAUSE));
                    }
                }
                Err(e) => {
                    backoff.log(&e, "recovery pass failed");
                    failed = true;
                }
            }
            if Instant::now() >= next_check {
                match self.check().await {
                    Ok(_) => next_check = Instant::now() + self.settings.check_interval,
                    Err(e) => {
                        backoff.log(&e, "consistency check could not run");
                        failed = true;
                    }
                }
            }
            if !failed {
                backoff.reset();
            }
            if next_check > Instant::now() {
                sleep = sleep.min(next_check - Instant::now());
            }
            tokio::select! {
                _ = tokio::time::sleep(sleep) => {}
                _ = shutdown.cancelled() => {}
            }
        }
        if let Some(tending) = tending {
            let _ = tending.await;
        }
        tracing::info!("janitor stopped");
        Ok(())
    }
}

/// How often the janitor tends spread products: finishing cut transfers and moving units
/// ahead of need. A flash sale moves thousands of units a second: a bucket that runs short
/// between passes refills on demand, and the passes keep that rare.
const SPREAD_TEND: Duration = Duration::from_millis(250);

/// The janitor's care of spread products (`crate::spread::tend`), every [`SPREAD_TEND`].
async fn tend_spread(shards: Shards, shutdown: CancellationToken) {
    let mut last = std::collections::HashMap::new();
    let mut backoff = Backoff::new();
    while !shutdown.is_cancelled() {
        match crate::spread::tend(&shards, &mut last).await {
            Ok(_) => backoff.reset(),
            Err(e) => backoff.log(&e, "could not tend spread products"),
        }
        tokio::select! {
            _ = tokio::time::sleep(SPREAD_TEND) => {}
            _ = shutdown.cancelled() => {}
        }
    }
}
