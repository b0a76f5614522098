//! The worker: claim a batch, apply it to MySQL, acknowledge it.
//!
//! [`Worker::step`] is the unit of work, driven both by the run loop and by tests:
//!
//! 1. **claim** up to `batch` entries (claim.lua); when pending is empty, wait on BLMOVE (at
//!    most [`WorkerOptions::wait`]) and claim the entry it moved together with more;
//! 2. **validate** each entry; an invalid one is dead-lettered with its reason, never retried;
//! 3. **apply** the valid events in one MySQL transaction ([`Ledger::apply_batch`]), retrying
//!    transient failures with backoff while renewing the batch's claims, so a live worker keeps
//!    what it holds and a dead one loses it to the janitor. A batch MySQL refuses for good is
//!    split until the events that cause the refusal stand alone (`Worker::apply_isolating`);
//! 4. **settle** in one script: acknowledge, give back rejected stock, dead-letter.
//!
//! What a crash at each point leaves behind: before 3 commits, the entries sit in processing
//! and are re-queued when their claim expires; after 3 commits and before 4, they are
//! re-queued and redelivered, and `stock_log` turns the redelivery into a pure acknowledgement
//! (with its give-back if rejected). Nothing is lost and nothing is applied twice.

pub(crate) mod heartbeat;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::backoff::{Backoff, now_ms};
use crate::error::{Error, Result};
use crate::event::{Event, dead_envelope};
use crate::ledger::{ClaimStamp, Decision, Ledger, Release};
use crate::queue::{
    Ack, Cancelled, Claim, Ended, Ending, Entry, GiveBack, Queue, REJECTED_REASON, Settlement, Shards, Waiter,
};
use crate::telemetry::metrics as m;

pub(crate) const DEFAULT_BATCH: usize = 500;
/// The reason an outcome `cancelled` carries when the order was cancelled.
pub(crate) const CANCELLED_REASON: &str = "cancelled";
pub(crate) const DEFAULT_CONCURRENCY: usize = 2;
/// Longest single BLMOVE wait; also the longest a stop request waits for an idle loop.
pub(crate) const DEFAULT_WAIT: Duration = Duration::from_secs(1);
/// After a stop request, how long a batch that cannot reach MySQL keeps trying before its
/// entries are handed back to pending. Well within a platform's 30 s stop grace.
pub(crate) const DRAIN_RETRY: Duration = Duration::from_secs(10);
/// Attempts at a whole batch that MySQL refuses for good before it is split. More than one, so
/// that a refusal that passes (a trigger or constraint being changed by a migration, say) costs
/// nobody a dead letter; few, because each attempt holds the batch back. The parts a split
/// makes are tried once: the refusal is known by then.
const REFUSED_ATTEMPTS: u32 = 3;
const MAX_BATCH: usize = 5000;
/// The shortest BLMOVE wait when the wait is shared among shards.
const MIN_SHARD_WAIT: Duration = Duration::from_millis(100);
const MAX_CONCURRENCY: usize = 256;

#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Claim/apply loops in this process.
    pub concurrency: usize,
    /// Entries claimed (and applied in one transaction) at a time.
    pub batch: usize,
    /// Longest BLMOVE wait.
    pub wait: Duration,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        WorkerOptions { concurrency: DEFAULT_CONCURRENCY, batch: DEFAULT_BATCH, wait: DEFAULT_WAIT }
    }
}

impl WorkerOptions {
    pub(crate) fn validate(&self) -> Result<()> {
        if !(1..=MAX_BATCH).contains(&self.batch) {
            return Err(Error::usage(format!("--batch must be from 1 to {MAX_BATCH}")));
        }
        if !(1..=MAX_CONCURRENCY).contains(&self.concurrency) {
            return Err(Error::usage(format!("--concurrency must be from 1 to {MAX_CONCURRENCY}")));
        }
        Ok(())
    }
}

/// Running totals of one worker process.
#[derive(Debug, Default)]
pub(crate) struct Totals {
    /// Steps taken (each one a span with this number as its batch id).
    pub(crate) steps: AtomicU64,
    /// Steps that claimed something.
    pub(crate) batches: AtomicU64,
    pub(crate) applied: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) redelivered: AtomicU64,
    pub(crate) duplicates: AtomicU64,
    pub(crate) dead: AtomicU64,
    /// Wall time spent claiming (Redis), applying (MySQL) and settling (Redis), in µs.
    pub(crate) claim_us: AtomicU64,
    pub(crate) apply_us: AtomicU64,
    pub(crate) settle_us: AtomicU64,
}

/// What one batch came to.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BatchReport {
    pub claimed: usize,
    /// Deducted in MySQL by this batch.
    pub applied: u64,
    /// Rejected by MySQL in this batch (stock given back).
    pub rejected: u64,
    /// Settled by an earlier delivery; acknowledged now.
    pub redelivered: u64,
    /// Second reservations of an event id; stock given back.
    pub duplicates: u64,
    /// Dead-lettered (invalid entry or unknown product).
    pub dead: u64,
    /// Entries this batch actually removed from processing (a late acknowledgement of an
    /// entry the janitor already re-queued removes nothing).
    pub acknowledged: u64,
    /// Entries handed back to pending because MySQL could not be reached before shutdown
    /// ([`Queue::hand_back`]).
    pub handed_back: u64,
    /// Entries of cancelled reservations dropped without a deduction.
    pub cancelled: u64,
}

/// What one step did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepOutcome {
    /// Nothing to claim within the wait.
    Idle,
    Batch(BatchReport),
}

/// A worker process: `concurrency` claim/apply loops over one queue.
#[derive(Clone)]
pub struct Worker {
    shards: Shards,
    ledger: Ledger,
    options: WorkerOptions,
    /// The shard the next step starts from: rotating it keeps the shards fairly served.
    cursor: Arc<std::sync::atomic::AtomicUsize>,
    id: Arc<str>,
    totals: Arc<Totals>,
    /// Whether deductions are paused (`stockq pause`), as last read, and when.
    paused: Arc<std::sync::Mutex<Option<(Instant, bool)>>>,
}

/// How long a worker trusts what it read of `stockq pause`: the longest a pause takes to
/// stop its claims, and a resume to start them.
pub(crate) const PAUSE_LOOK_EVERY: Duration = Duration::from_millis(250);

impl Worker {
    pub fn new(shards: impl Into<Shards>, ledger: Ledger, options: WorkerOptions) -> Result<Worker> {
        options.validate()?;
        Ok(Worker {
            shards: shards.into(),
            ledger,
            options,
            cursor: Arc::default(),
            id: worker_id().into(),
            totals: Arc::default(),
            paused: Arc::default(),
        })
    }

    /// Whether deductions are paused queue-wide, read at most every [`PAUSE_LOOK_EVERY`]
    /// unless `fresh`.
    async fn deductions_paused(&self, fresh: bool) -> Result<bool> {
        if let Some((at, paused)) = *self.paused.lock().unwrap_or_else(|e| e.into_inner())
            && at.elapsed() < PAUSE_LOOK_EVERY
            && !fresh
        {
            return Ok(paused);
        }
        let paused = self.shards.first().deductions_paused().await?.is_some();
        *self.paused.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), paused));
        Ok(paused)
    }

    pub(crate) fn totals(&self) -> &Totals {
        &self.totals
    }

    /// Runs until `shutdown` is cancelled, then finishes what is held and returns. A loop that
    /// crashes stops the whole process ([`supervise`]): `Err`, after the others finished.
    pub async fn run(&self, shutdown: CancellationToken) -> Result<()> {
        // the loops and the heartbeat stop on a signal, or when a loop crashes
        let shutdown = shutdown.child_token();
        tracing::info!(
            worker = %self.id,
            concurrency = self.options.concurrency,
            batch = self.options.batch,
            shards = self.shards.len(),
            "worker started"
        );
        let heartbeat = tokio::spawn(crate::worker::heartbeat::run(
            self.shards.first().clone(),
            self.id.to_string(),
            self.totals.clone(),
            shutdown.clone(),
        ));
        let mut loops = tokio::task::JoinSet::new();
        for n in 0..self.options.concurrency {
            let worker = self.clone();
            let shutdown = shutdown.clone();
            loops.spawn(async move { worker.consume(n, shutdown).await });
        }
        let crashed = supervise(loops, &shutdown).await;
        let _ = heartbeat.await;
        tracing::info!(
            worker = %self.id,
            applied = self.totals.applied.load(Ordering::Relaxed),
            rejected = self.totals.rejected.load(Ordering::Relaxed),
            dead = self.totals.dead.load(Ordering::Relaxed),
            batches = self.totals.batches.load(Ordering::Relaxed),
            claim_ms = self.totals.claim_us.load(Ordering::Relaxed) / 1000,
            apply_ms = self.totals.apply_us.load(Ordering::Relaxed) / 1000,
            settle_ms = self.totals.settle_us.load(Ordering::Relaxed) / 1000,
            "worker stopped"
        );
        crashed
    }

    /// One claim/apply loop with its own blocking connection.
    async fn consume(&self, n: usize, shutdown: CancellationToken) {
        let mut waiter: Option<Waiter> = None;
        // whether the waiter to open replaces one dropped after an error (a reconnect)
        let mut replacing = false;
        let mut backoff = Backoff::new();
        while !shutdown.is_cancelled() {
            if waiter.is_none() {
                match self.shards.first().waiter().await {
                    Ok(w) => {
                        waiter = Some(w);
                        if std::mem::take(&mut replacing) {
                            metrics::counter!(m::RECONNECTS).increment(1);
                        }
                    }
                    Err(e) => {
                        backoff.log(&e, "cannot open a Redis connection to wait on");
                        backoff.sleep(&shutdown).await;
                        continue;
                    }
                }
            }
            let batch = self.totals.steps.fetch_add(1, Ordering::Relaxed);
            let step = self
                .step(waiter.as_mut(), &shutdown)
                .instrument(tracing::info_span!("batch", worker = %self.id, consumer = n, batch))
                .await;
            match step {
                Ok(_) => backoff.reset(),
                Err(e) => {
                    backoff.log(&e, "batch failed; retrying");
                    // the blocking connection may be the broken part: open a fresh one
                    replacing |= waiter.take().is_some();
                    backoff.sleep(&shutdown).await;
                }
            }
        }
    }

    /// Claims one batch (waiting on `waiter` if every shard is empty), applies and settles it.
    ///
    /// Each step starts from the next shard in turn and takes the first non-empty one; when
    /// all are empty it blocks on the starting shard, for a share of the wait, so an event on
    /// any shard waits at most about [`WorkerOptions::wait`] for a blocked consumer.
    pub async fn step(
        &self,
        waiter: Option<&mut Waiter>,
        shutdown: &CancellationToken,
    ) -> Result<StepOutcome> {
        if self.deductions_paused(false).await? {
            // nothing claimed, nothing held: a pause stops the worker between batches
            tokio::select! {
                _ = tokio::time::sleep(PAUSE_LOOK_EVERY) => {}
                _ = shutdown.cancelled() => {}
            }
            return Ok(StepOutcome::Idle);
        }
        let shards = self.shards.all();
        let start = self.cursor.fetch_add(1, Ordering::Relaxed) % shards.len();
        for k in 0..shards.len() {
            let queue = &shards[(start + k) % shards.len()];
            let started = Instant::now();
            let claim = queue.claim(self.options.batch, None).await?;
            add_elapsed(&self.totals.claim_us, started);
            let halted = claim.halted;
            if !claim.entries.is_empty() {
                let report = self.process(queue, claim, shutdown).await?;
                self.heal_if(halted).await;
                return Ok(StepOutcome::Batch(report));
            }
            self.heal_if(halted).await;
            if claim.releases > 0 {
                self.release(queue).await?;
            }
        }
        let Some(waiter) = waiter else { return Ok(StepOutcome::Idle) };
        if shutdown.is_cancelled() {
            return Ok(StepOutcome::Idle);
        }
        let queue = &shards[start];
        let wait = (self.options.wait / shards.len() as u32).max(MIN_SHARD_WAIT.min(self.options.wait));
        // Not raced against shutdown: once BLMOVE has moved an entry we own it, and the wait
        // is short.
        let Some(entry) = queue.wait_for_entry(waiter, wait).await? else { return Ok(StepOutcome::Idle) };
        if self.deductions_paused(true).await? {
            // paused while this consumer waited: the entry goes back where it was, unclaimed
            queue.hand_back(std::slice::from_ref(&entry)).await?;
            return Ok(StepOutcome::Idle);
        }
        let started = Instant::now();
        let claim = queue.claim(self.options.batch, Some(entry)).await?;
        add_elapsed(&self.totals.claim_us, started);
        let halted = claim.halted;
        let report = self.process(queue, claim, shutdown).await?;
        self.heal_if(halted).await;
        Ok(StepOutcome::Batch(report))
    }

    /// Heals the shards at once when this worker's claim halted one: its number showed that
    /// Redis lost writes (`crate::heal`). The batch in hand is processed first (MySQL's
    /// `stock_log` keeps it exact whatever Redis forgot); a heal that fails is left to the
    /// janitor's next pass, the shard halted meanwhile.
    async fn heal_if(&self, halted: bool) {
        if halted && let Err(e) = crate::heal::heal_lost_writes(&self.shards, &self.ledger).await {
            tracing::error!(error = %e, "could not heal a Redis that lost writes; the janitor will");
        }
    }

    /// Validates, applies and settles a batch claimed from `queue`.
    pub async fn process(
        &self,
        queue: &Queue,
        claim: Claim,
        shutdown: &CancellationToken,
    ) -> Result<BatchReport> {
        let entries = claim.entries;
        let parsed = Parsed::from_entries(&entries, &claim.cancelled);
        // before anything is applied: a failure here leaves the whole batch to be redelivered
        let stamp = ClaimStamp { seq: claim.seq, shard: queue.shard() };
        let cancels_deducted = self.ledger.settle_cancelled(&parsed.unsure_cancels(), stamp).await?;
        let started = Instant::now();
        let applied = self.apply_holding(queue, &entries, &parsed.events, stamp, shutdown).await;
        self.record_apply(started, entries.len());
        let Some(verdicts) = applied else {
            // stopping, and MySQL out of reach: hand everything back, invalid ones too
            let handed_back = queue.hand_back(&entries).await?;
            tracing::warn!(handed_back, "MySQL unreachable at shutdown; entries handed back to pending");
            return Ok(BatchReport { claimed: entries.len(), handed_back, ..Default::default() });
        };
        let (settlement, mut report) = decide(&parsed, &verdicts, &cancels_deducted, now_ms());
        let started = Instant::now();
        let settled = self.settle_holding(queue, &entries, &settlement).await?;
        add_elapsed(&self.totals.settle_us, started);
        report.acknowledged = settled.acknowledged;
        self.record_batch(&report, settled.dead_lettered);
        record_outcome_latency(&parsed.events);
        tracing::debug!(?report, "batch settled");
        if claim.releases > 0 {
            self.release(queue).await?;
        }
        Ok(report)
    }

    /// Gives MySQL back the quantity of cancelled applied reservations waiting on the
    /// releases list, and acknowledges them (`Ledger::apply_releases`, `lua/released.lua`).
    ///
    /// Releases are rare (refunds, returns) and need no claim: MySQL changes a row from
    /// `applied` to `released` once, and the acknowledgement removes the entry once, so two
    /// workers (or a retry after a crash) doing the same release change nothing twice.
    async fn release(&self, queue: &Queue) -> Result<u64> {
        let waiting = queue.waiting_releases(self.options.batch).await?;
        let releases: Vec<(Entry, Event)> = waiting
            .into_iter()
            .filter_map(|entry| Event::parse(&entry).ok().map(|event| (entry, event)))
            .collect();
        if releases.is_empty() {
            return Ok(0);
        }
        let number = queue.next_seq().await?;
        let events: Vec<Event> = releases.iter().map(|(_, e)| e.clone()).collect();
        let answers = self.ledger.apply_releases(&events, number).await?;
        for (event, answer) in events.iter().zip(answers) {
            if answer == Release::NotDeducted {
                tracing::warn!(event_id = %event.event_id, "released a reservation MySQL never deducted; nothing given back in MySQL");
            }
        }
        let n = queue.settle_releases(&releases).await?;
        metrics::counter!(m::RELEASED).increment(n);
        Ok(n)
    }

    fn record_apply(&self, started: Instant, batch: usize) {
        add_elapsed(&self.totals.apply_us, started);
        metrics::histogram!(m::APPLY_SECONDS).record(started.elapsed().as_secs_f64());
        metrics::histogram!(m::BATCH_SIZE).record(batch as f64);
    }

    /// The one place a settled batch is counted: the process's metrics and the totals its
    /// heartbeat publishes.
    fn record_batch(&self, report: &BatchReport, dead_lettered: u64) {
        metrics::counter!(m::APPLIED).increment(report.applied);
        metrics::counter!(m::REJECTED).increment(report.rejected);
        metrics::counter!(m::DUPLICATES).increment(report.duplicates);
        metrics::counter!(m::REDELIVERED).increment(report.redelivered);
        metrics::counter!(m::DEAD_LETTERED).increment(dead_lettered);
        metrics::counter!(m::CANCELLED).increment(report.cancelled);
        let t = &self.totals;
        t.batches.fetch_add(1, Ordering::Relaxed);
        t.applied.fetch_add(report.applied, Ordering::Relaxed);
        t.rejected.fetch_add(report.rejected, Ordering::Relaxed);
        t.redelivered.fetch_add(report.redelivered, Ordering::Relaxed);
        t.duplicates.fetch_add(report.duplicates, Ordering::Relaxed);
        t.dead.fetch_add(report.dead, Ordering::Relaxed);
    }

    /// Applies the batch while renewing its claims. Returns `None` when stopping and MySQL
    /// stayed out of reach for [`DRAIN_RETRY`].
    async fn apply_holding(
        &self,
        queue: &Queue,
        entries: &[Entry],
        events: &[Event],
        claim_seq: ClaimStamp,
        shutdown: &CancellationToken,
    ) -> Option<Vec<Verdict>> {
        let work = self.apply_isolating(events, claim_seq, shutdown);
        self.while_renewing(queue, entries, work).await
    }

    /// Applies the events, each part in a transaction of its own under the batch's claim: the
    /// whole batch first, and, when MySQL refuses a part for good, its two halves in turn
    /// (first half first, so that stock is allocated in batch order), until the events that
    /// cause the refusal stand alone and are refused with MySQL's reason. One bad event in a
    /// batch of 100 costs about 14 more transactions; the others are applied as usual.
    ///
    /// Exactly once still holds: a refused transaction is rolled back whole, and a part that
    /// committed before a stop is found in `stock_log` on its redelivery. The batch is settled
    /// once, afterwards, for every entry.
    async fn apply_isolating(
        &self,
        events: &[Event],
        claim_seq: ClaimStamp,
        shutdown: &CancellationToken,
    ) -> Option<Vec<Verdict>> {
        let mut verdicts: Vec<Option<Verdict>> = vec![None; events.len()];
        let mut parts = vec![(0..events.len(), REFUSED_ATTEMPTS)];
        while let Some((part, attempts)) = parts.pop() {
            match self.apply_part(&events[part.clone()], claim_seq, attempts, shutdown).await? {
                Ok(decisions) => {
                    for (i, decision) in part.zip(decisions) {
                        verdicts[i] = Some(Verdict::Decided(decision));
                    }
                }
                Err(refusal) if part.len() == 1 => verdicts[part.start] = Some(Verdict::Refused(refusal)),
                Err(_) => {
                    let middle = part.start + part.len() / 2;
                    parts.push((middle..part.end, 1));
                    parts.push((part.start..middle, 1));
                }
            }
        }
        Some(verdicts.into_iter().map(|v| v.expect("every event has a verdict")).collect())
    }

    /// Applies `events` in one transaction, retrying transient failures, and failures that
    /// say the database is not ready (a schema not migrated yet), for as long as they last.
    /// A refusal of the data is tried `attempts` times, then returned as its one-line reason.
    /// `None` when stopping and MySQL stayed out of reach for [`DRAIN_RETRY`].
    async fn apply_part(
        &self,
        events: &[Event],
        claim_seq: ClaimStamp,
        attempts: u32,
        shutdown: &CancellationToken,
    ) -> Option<std::result::Result<Vec<Decision>, String>> {
        let mut backoff = Backoff::new();
        let mut refusals = 0;
        let mut stopping_since: Option<Instant> = None;
        loop {
            let e = match self.ledger.apply_batch(events, claim_seq).await {
                Ok(decisions) => return Some(Ok(decisions)),
                Err(e) => e,
            };
            if e.blames_the_data() {
                refusals += 1;
                if refusals >= attempts {
                    backoff.log(&e, "MySQL refuses a batch for good; isolating the events that cause it");
                    return Some(Err(refusal_reason(&e)));
                }
                backoff.log(&e, "MySQL refused a batch; retrying before isolating the events that cause it");
            } else if e.is_transient() {
                backoff.log(&e, "MySQL batch failed; retrying");
            } else {
                backoff.log(&e, "MySQL refused a batch; retrying (is the schema migrated?)");
            }
            if shutdown.is_cancelled() {
                let since = *stopping_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= DRAIN_RETRY {
                    return None;
                }
            }
            backoff.pause().await;
        }
    }

    /// Settles the batch, retrying transient Redis failures for about one visibility timeout;
    /// past that the claims have expired anyway and the redelivery will settle it.
    async fn settle_holding(
        &self,
        queue: &Queue,
        entries: &[Entry],
        settlement: &Settlement,
    ) -> Result<crate::queue::SettleCounts> {
        let give_up = Instant::now() + queue.visibility_timeout();
        let mut backoff = Backoff::new();
        let attempt = async {
            loop {
                match queue.settle(settlement).await {
                    Ok(settled) => return Ok(settled),
                    Err(e) if e.is_transient() && Instant::now() < give_up => {
                        backoff.log(&e, "acknowledgement failed; retrying");
                        backoff.pause().await;
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        self.while_renewing(queue, entries, attempt).await
    }

    /// Drives `work` while renewing the claims of `entries` every third of the visibility
    /// timeout, so a slow but live worker keeps what it holds.
    async fn while_renewing<T>(&self, queue: &Queue, entries: &[Entry], work: impl Future<Output = T>) -> T {
        let period = queue.visibility_timeout() / 3;
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        let mut renewals = Backoff::new();
        tokio::pin!(work);
        loop {
            tokio::select! {
                done = &mut work => return done,
                _ = tick.tick() => {
                    if let Err(e) = queue.renew(entries).await {
                        renewals.log(&e, "could not renew claims");
                    }
                }
            }
        }
    }
}

/// Waits for every loop to end. The first that crashes (a panic: a bug, never bad input)
/// stops the rest through `shutdown` and makes the result an error, so that a process whose
/// loops have died does not go on heartbeating "live" while it does nothing.
async fn supervise(mut loops: tokio::task::JoinSet<()>, shutdown: &CancellationToken) -> Result<()> {
    let mut crashed = Ok(());
    while let Some(joined) = loops.join_next().await {
        if let Err(e) = joined {
            tracing::error!(error = %e, "a consumer loop crashed; stopping the worker");
            shutdown.cancel();
            if crashed.is_ok() {
                crashed = Err(Error::LoopCrashed(e.to_string()));
            }
        }
    }
    crashed
}

/// A claimed batch split into the events MySQL will decide and the entries that are not
/// valid events (dead-lettered with their reason, never retried).
struct Parsed<'a> {
    events: Vec<Event>,
    /// The entry of each event, index for index.
    event_entries: Vec<&'a Entry>,
    invalid: Vec<(&'a Entry, String)>,
    /// Events of cancelled reservations, kept out of the MySQL batch: (event, entry, unsure).
    cancels: Vec<(Event, &'a Entry, bool)>,
}

impl<'a> Parsed<'a> {
    fn from_entries(entries: &'a [Entry], cancelled: &[Cancelled]) -> Self {
        let mut parsed = Parsed {
            events: Vec::with_capacity(entries.len()),
            event_entries: Vec::new(),
            invalid: Vec::new(),
            cancels: Vec::new(),
        };
        let unsure_at: std::collections::HashMap<usize, bool> =
            cancelled.iter().map(|c| (c.index, c.unsure)).collect();
        for (i, entry) in entries.iter().enumerate() {
            let event = Event::parse(entry);
            if let (Some(&unsure), Ok(event)) = (unsure_at.get(&i), &event) {
                parsed.cancels.push((event.clone(), entry, unsure));
                continue;
            }
            match event {
                Ok(event) => {
                    parsed.events.push(event);
                    parsed.event_entries.push(entry);
                }
                Err(reason) => {
                    tracing::warn!(%reason, "dead-lettering an invalid entry");
                    parsed.invalid.push((entry, reason));
                }
            }
        }
        parsed
    }

    /// The cancelled events an earlier delivery may have deducted: MySQL must say.
    fn unsure_cancels(&self) -> Vec<Event> {
        self.cancels.iter().filter(|(_, _, unsure)| *unsure).map(|(e, _, _)| e.clone()).collect()
    }
}

/// What MySQL made of one event of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    /// Decided by a transaction that committed.
    Decided(Decision),
    /// Refused for good, alone in its transaction, for this reason: dead-lettered.
    Refused(String),
}

/// The dead-letter reason for a refusal: one line, MySQL's error number and message.
fn refusal_reason(e: &Error) -> String {
    let reason = match e {
        Error::Database(sqlx::Error::Database(db)) => match e.mysql_number() {
            Some(number) => format!("mysql: {number} {}", db.message()),
            None => e.to_string(),
        },
        _ => e.to_string(),
    };
    reason.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// What a batch comes to once MySQL has decided each event: which entries are acknowledged,
/// which give their stock back, which are dead-lettered, which are dropped as cancelled, and
/// the counts. Free of I/O so that the mapping is tested alone; `verdicts` is index for index
/// with `parsed.events`, `cancels_deducted` with the unsure cancels (whether MySQL had
/// deducted each: then it is acknowledged as applied, and settle.lua releases it).
fn decide(
    parsed: &Parsed,
    verdicts: &[Verdict],
    cancels_deducted: &[bool],
    now_ms: u64,
) -> (Settlement, BatchReport) {
    let claimed = parsed.events.len() + parsed.invalid.len() + parsed.cancels.len();
    let mut report = BatchReport { claimed, ..Default::default() };
    let mut settlement = Settlement::default();
    // each kind of acknowledgement apart, so that settle.lua counts them in runs (below)
    let (mut applied, mut acked_again) = (Vec::new(), Vec::new());
    let (mut rejected, mut duplicates, mut given_again) = (Vec::new(), Vec::new(), Vec::new());
    let mut deducted = cancels_deducted.iter();
    for (event, entry, unsure) in &parsed.cancels {
        let entry = (*entry).clone();
        if *unsure && deducted.next() == Some(&true) {
            let counted = if event.seq.is_some() { event.qty } else { 0 };
            let ending = Ending::new(event, Ended::Applied, None);
            acked_again.push(Ack { entry, product_id: event.product_id, counted, ending });
            report.redelivered += 1;
        } else {
            settlement.drops.push((entry, Ending::new(event, Ended::Cancelled, Some(CANCELLED_REASON))));
            report.cancelled += 1;
        }
    }
    for (entry, reason) in &parsed.invalid {
        settlement.dead.push(((*entry).clone(), dead_envelope(entry, reason, 1, now_ms)));
    }
    for ((event, entry), verdict) in parsed.events.iter().zip(&parsed.event_entries).zip(verdicts) {
        let entry = (*entry).clone();
        let mut dead_letter = |reason: &str| {
            tracing::warn!(event_id = %event.event_id, %reason, "dead-lettering");
            settlement.dead.push((entry.clone(), dead_envelope(&entry, reason, 1, now_ms)));
        };
        let decision = match verdict {
            Verdict::Decided(decision) => *decision,
            Verdict::Refused(reason) => {
                dead_letter(reason);
                continue;
            }
        };
        match decision {
            Decision::Applied => report.applied += 1,
            Decision::Rejected => report.rejected += 1,
            Decision::Duplicate => report.duplicates += 1,
            Decision::AlreadyApplied | Decision::AlreadyRejected => report.redelivered += 1,
            Decision::UnknownProduct => {
                dead_letter(&format!("unknown product {}", event.product_id));
                continue;
            }
            Decision::AlreadyCancelled => {
                settlement.drops.push((entry, Ending::new(event, Ended::Cancelled, Some(CANCELLED_REASON))));
                report.cancelled += 1;
                continue;
            }
        }
        // reserve.lua counted the stamped events in the product's in-flight units
        let counted = if event.seq.is_some() { event.qty } else { 0 };
        let product_id = event.product_id;
        let ending = match decision {
            Decision::Rejected | Decision::AlreadyRejected => {
                Ending::new(event, Ended::Rejected, Some(REJECTED_REASON))
            }
            Decision::Duplicate => Ending::new(event, Ended::Duplicate, None),
            _ => Ending::new(event, Ended::Applied, None),
        };
        if decision.gives_back() {
            let give_back = GiveBack { entry, product_id, qty: event.qty, counted, ending };
            match decision {
                Decision::Rejected => rejected.push(give_back),
                Decision::Duplicate => duplicates.push(give_back),
                _ => given_again.push(give_back),
            }
        } else {
            let ack = Ack { entry, product_id, counted, ending };
            if decision == Decision::Applied { applied.push(ack) } else { acked_again.push(ack) }
        }
    }
    report.dead = settlement.dead.len() as u64;
    // The totals of {q}:counters count the entries settle.lua finds, run by run: a late
    // acknowledgement of entries the janitor already re-queued counts nothing, and their
    // redelivery counts them once.
    let runs = [
        ("applied", applied.len()),
        ("redelivered", acked_again.len()),
        ("rejected", rejected.len()),
        ("duplicates", duplicates.len()),
        ("redelivered", given_again.len()),
    ];
    settlement.counters = runs.into_iter().filter(|(_, n)| *n > 0).map(|(k, n)| (k, n as u64)).collect();
    settlement.acks = [applied, acked_again].concat();
    settlement.give_backs = [rejected, duplicates, given_again].concat();
    (settlement, report)
}

/// Time from each reservation to its outcome, for the events reserve.lua stamped with their
/// time. Measured on this host's clock against Redis's: good to the clock skew, which NTP
/// keeps well under the milliseconds this is about.
fn record_outcome_latency(events: &[Event]) {
    let now = now_ms() as i64;
    for at in events.iter().filter_map(|e| e.reserved_at) {
        let seconds = (now - at).max(0) as f64 / 1000.0;
        metrics::histogram!(m::RESERVATION_TO_OUTCOME_SECONDS).record(seconds);
    }
}

fn worker_id() -> String {
    let host = hostname::get().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "host".into());
    let host: String = host
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c } else { '_' })
        .take(40)
        .collect();
    format!("{host}-{}-{:04x}", std::process::id(), rand::random::<u16>())
}

fn add_elapsed(total: &AtomicU64, since: Instant) {
    total.fetch_add(since.elapsed().as_micros() as u64, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, product: i64, qty: i64) -> Entry {
        format!(r#"{{"event_id":"{id}","product_id":{product},"qty":{qty},"seq":1}}"#).into_bytes()
    }

    #[test]
    fn each_decision_settles_its_own_way() {
        let entries = vec![
            entry("a", 1, 1),
            entry("b", 1, 2),
            b"garbage".to_vec(),
            entry("c", 2, 3),
            entry("d", 9, 1),
            entry("e", 1, 1),
            entry("f", 1, 4),
            entry("g", 13, 1),
        ];
        let parsed = Parsed::from_entries(&entries, &[]);
        let verdicts = [
            Verdict::Decided(Decision::Applied),
            Verdict::Decided(Decision::Rejected),
            Verdict::Decided(Decision::AlreadyApplied),
            Verdict::Decided(Decision::UnknownProduct),
            Verdict::Decided(Decision::Duplicate),
            Verdict::Decided(Decision::AlreadyRejected),
            Verdict::Refused("mysql: 1644 product 13 frozen".into()),
        ];
        let (s, report) = decide(&parsed, &verdicts, &[], 7);
        let acks: Vec<_> =
            s.acks.iter().map(|a| (&a.entry, a.product_id, a.counted, a.ending.state)).collect();
        assert_eq!(acks, [(&entries[0], 1, 1, Ended::Applied), (&entries[3], 2, 3, Ended::Applied)]);
        let gives: Vec<_> =
            s.give_backs.iter().map(|g| (&g.entry, g.qty, g.counted, g.ending.state)).collect();
        assert_eq!(
            gives,
            [
                (&entries[1], 2, 2, Ended::Rejected),
                (&entries[5], 1, 1, Ended::Duplicate),
                (&entries[6], 4, 4, Ended::Rejected)
            ]
        );
        assert_eq!(s.give_backs[0].ending.reason.as_deref(), Some(REJECTED_REASON));
        assert_eq!(s.acks[1].ending.event.event_id, "c");
        let dead: Vec<&Entry> = s.dead.iter().map(|(e, _)| e).collect();
        assert_eq!(dead, [&entries[2], &entries[4], &entries[7]]);
        assert!(s.dead[1].1.contains("unknown product 9"));
        assert!(s.dead[2].1.contains("mysql: 1644 product 13 frozen"));
        assert_eq!(
            report,
            BatchReport {
                claimed: 8,
                applied: 1,
                rejected: 1,
                redelivered: 2,
                duplicates: 1,
                dead: 3,
                ..Default::default()
            }
        );
        assert_eq!(
            s.counters,
            [("applied", 1), ("redelivered", 1), ("rejected", 1), ("duplicates", 1), ("redelivered", 1)]
        );
    }

    #[tokio::test]
    async fn a_crashed_loop_stops_the_others_and_the_worker_fails() {
        let shutdown = CancellationToken::new();
        let mut loops = tokio::task::JoinSet::new();
        let stopped = shutdown.clone();
        // a loop that runs until told to stop, as consume does
        loops.spawn(async move { stopped.cancelled().await });
        loops.spawn(async { panic!("a bug in a loop") });
        let result = tokio::time::timeout(Duration::from_secs(5), supervise(loops, &shutdown)).await;
        let result = result.expect("supervise returns once every loop has ended");
        assert!(matches!(result, Err(Error::LoopCrashed(ref why)) if why.contains("panicked")), "{result:?}");
        assert!(shutdown.is_cancelled(), "the heartbeat and the other loops are told to stop");

        let shutdown = CancellationToken::new();
        let mut loops = tokio::task::JoinSet::new();
        loops.spawn(async {});
        assert!(supervise(loops, &shutdown).await.is_ok());
        assert!(!shutdown.is_cancelled());
    }
}
