//! `stockq bench`: the end-to-end benchmark (BENCHMARKS.md shows its output).
//!
//! For each mode (uniform over 100 products, hot on one product) and each batch size (the
//! chosen one, and 1 — one event per transaction, the shape of queues that do not batch):
//!
//! 1. reset its own queue and database (`<STOCKQ_QUEUE>-bench`, `<database>_bench`), stock the products;
//! 2. reserve N events with `produce` (reservations/s, latency percentiles);
//! 3. start worker *processes* (this binary, `stockq worker`) on the full pending list and
//!    time them until every event is applied and acknowledged;
//! 4. read each worker's CPU time and peak resident memory from /proc, stop it with SIGTERM,
//!    and check that the books balance.
//!
//! Then, each part skipped when its duration or size is 0:
//!
//! - the capacity run: with the worker processes running, reserve flat out for
//!   `--capacity-for`; the sustained capacity is the lower of the reservation rate and the
//!   rate the workers applied meanwhile: what a sale can keep up on this machine, producer
//!   included;
//! - the steady run: reservations offered at a fixed rate (`--rate`, by default half the
//!   sustained capacity) for `--rate-for`, and the time from each reservation to its outcome
//!   (`at − reserved_at`, both stamped by Redis) read back from the outcome stream: what an
//!   order service waits for its answer when the system is busy but not saturated;
//! - the HTTP run (`bench_http`): `POST /reserve` against a `stockq serve` process;
//! - the check run: `check` timed three times against `--check-products` products and a
//!   backlog of `--check-backlog` events, made in bulk (`lua/bench_fill.lua`).
//!
//! It is a measurement, not a test: nothing fails because the machine was slow.

use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;
use tokio::process::Child;

use crate::config::Settings;
use crate::error::{Error, Result};
use crate::ledger::{self, Ledger};
use crate::queue::Shards;
use crate::tools::own::prepare;
use crate::tools::produce::{self, Latency, ProduceOptions, ProduceReport, ShopperOptions};

/// The suffix of the benchmark's queue and database names (see `own::own_settings`).
pub(crate) const BENCH: &str = "bench";
/// Far longer than the largest benchmark takes to drain: past it, the workers are stuck.
const DRAIN_WITHIN: Duration = Duration::from_secs(600);
/// The highest `--rate`, and the longest `--rate-for`.
const MAX_RATE: u64 = 10_000_000;
const MAX_RATE_FOR: Duration = Duration::from_secs(600);
/// The most reservations a steady run may offer (each keeps its latency sample in memory).
const MAX_STEADY_EVENTS: f64 = 50_000_000.0;

#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// Events per run with the chosen batch size
    #[arg(long, default_value_t = 100_000)]
    events: u64,
    /// Events per run with --batch 1 (slow: one transaction per event)
    #[arg(long, default_value_t = 10_000)]
    single_events: u64,
    /// Batch size of the workers
    #[arg(long, default_value_t = crate::worker::DEFAULT_BATCH)]
    batch: usize,
    /// Claim/apply loops per worker process
    #[arg(long, default_value_t = crate::worker::DEFAULT_CONCURRENCY)]
    concurrency: usize,
    /// Worker processes
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Skip the --batch 1 runs
    #[arg(long)]
    no_single: bool,
    /// Only this mode
    #[arg(long, value_parser = ["uniform", "hot"])]
    mode: Option<String>,
    /// One JSON object per part on stdout instead of the tables
    #[arg(long)]
    json: bool,
    /// Reservations per second offered in the steady run [default: half the sustained capacity,
    /// or of the batched throughput with --capacity-for 0s]
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=MAX_RATE))]
    rate: Option<u64>,
    /// How long the steady run offers reservations (0s: no steady run)
    #[arg(long, default_value = "10s", value_parser = crate::config::parse_duration)]
    rate_for: Duration,
    /// How long the capacity run reserves flat out while the workers apply (0s: none; the
    /// steady run then offers half the batched throughput)
    #[arg(long, default_value = "5s", value_parser = crate::config::parse_duration)]
    capacity_for: Duration,
    /// How long `stockq serve` is loaded over HTTP (0s: no HTTP run)
    #[arg(long, default_value = "5s", value_parser = crate::config::parse_duration)]
    http_for: Duration,
    /// Keep-alive connections of the HTTP run (at most the 1,024 that serve takes at once)
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=1024))]
    http_connections: u64,
    /// Products of the check run (0: no check run)
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(0..=10_000_000))]
    check_products: u64,
    /// Events pending during the check run
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(0..=50_000_000))]
    check_backlog: u64,
}

#[derive(Debug, Serialize)]
struct Run {
    run: &'static str,
    mode: &'static str,
    batch: usize,
    events: u64,
    reservations_per_s: f64,
    reserve_latency: Latency,
    applied_per_s: f64,
    drain_s: f64,
    worker_cpu_us_per_event: f64,
    worker_peak_rss_kib: u64,
    /// Resident memory of the first worker once it had applied 5% of the events, and at the end.
    worker_rss_early_kib: u64,
    worker_rss_end_kib: u64,
    consistent: bool,
}

/// The steady run: reservations offered at a fixed rate while the workers run.
#[derive(Debug, Serialize)]
struct SteadyRun {
    run: &'static str,
    mode: &'static str,
    batch: usize,
    offered_per_s: u64,
    events: u64,
    /// The rate the producer reached (below `offered_per_s` when it could not keep up).
    reservations_per_s: f64,
    reserve_latency: Latency,
    /// Outcome entries the latency below was measured over (one per reservation).
    outcomes: u64,
    to_outcome: ToOutcome,
    consistent: bool,
}

/// Reservation-to-outcome latency in milliseconds (Redis stamps both ends to the ms).
#[derive(Debug, Default, Serialize)]
struct ToOutcome {
    p50_ms: u64,
    p99_ms: u64,
    max_ms: u64,
}

pub(crate) async fn run(settings: &Settings, args: &BenchArgs) -> Result<u8> {
    if args.events == 0 || args.single_events == 0 || args.workers == 0 {
        return Err(Error::usage("--events, --single-events and --workers must be at least 1"));
    }
    crate::worker::WorkerOptions { batch: args.batch, concurrency: args.concurrency, ..Default::default() }
        .validate()?;
    if args.rate_for > MAX_RATE_FOR {
        return Err(Error::usage("--rate-for must be at most 10m"));
    }
    if let Some(rate) = args.rate {
        steady_events(rate, args.rate_for)?;
    }
    if args.check_products > 0 && settings.redis.shards > 1 {
        return Err(Error::usage(
            "the check run fills one queue: run the benchmark with STOCKQ_SHARDS=1, or pass --check-products 0",
        ));
    }
    let settings = crate::tools::own::own_settings(settings, BENCH)?;
    ledger::migrate(&settings).await?;
    let shards = Shards::connect(&settings).await?;
    let ledger = Ledger::connect(&settings, 2).await?;

    let idle = idle_latency(&shards, &ledger).await?;
    if !args.json {
        print_header(&idle);
    }
    let modes: Vec<&'static str> = match args.mode.as_deref() {
        Some("hot") => vec!["hot"],
        Some(_) => vec!["uniform"],
        None => vec!["uniform", "hot"],
    };
    let mut all_consistent = true;
    let mut batched_rates = Vec::new();
    for mode in modes {
        let (consistent, batched_rate) = bench_mode(&settings, &shards, &ledger, args, mode).await?;
        all_consistent &= consistent;
        batched_rates.push((mode, batched_rate));
    }
    // uniform, unless only hot was asked for
    let (mode, batched_rate) = batched_rates[0];
    let mut half = (mode, batched_rate / 2.0, "half the batched throughput");
    if !args.capacity_for.is_zero() {
        let capacity = capacity_run(&settings, &shards, &ledger, args, mode).await?;
        all_consistent &= capacity.consistent;
        print_capacity(&capacity, args);
        half = (mode, capacity.capacity_per_s / 2.0, "half the sustained capacity");
    }
    if !args.rate_for.is_zero() {
        let (mode, half_rate, why) = half;
        let rate = args.rate.unwrap_or_else(|| half_rate.round().max(1.0) as u64);
        let why = if args.rate.is_some() { "--rate" } else { why };
        let steady = steady_run(&settings, &shards, &ledger, args, mode, rate).await?;
        all_consistent &= steady.consistent;
        print_steady(&steady, args, why);
    }
    if !args.http_for.is_zero() {
        let http = crate::tools::bench_http::http_run(
            &settings,
            &shards,
            &ledger,
            args.http_for,
            args.http_connections,
        )
        .await?;
        all_consistent &= http.consistent;
        crate::tools::bench_http::print_http(&http, args.json);
    }
    if args.check_products > 0 {
        let check = check_run(&shards, &ledger, args.check_products, args.check_backlog).await?;
        all_consistent &= check.consistent;
        print_check(&check, args);
    }
    Ok(if all_consistent { 0 } else { 1 })
}

/// The runs of one mode: the chosen batch size, then (unless `--no-single`) one event per
/// transaction, compared with it. Returns whether every run's books balanced, and the
/// events/s of the chosen batch size.
async fn bench_mode(
    settings: &Settings,
    shards: &Shards,
    ledger: &Ledger,
    args: &BenchArgs,
    mode: &'static str,
) -> Result<(bool, f64)> {
    let mut consistent = true;
    let mut batched_rate = None;
    let mut shapes = vec![(args.batch, args.events)];
    if !args.no_single && args.batch != 1 {
        shapes.push((1, args.single_events));
    }
    for (batch, events) in shapes {
        let run = one_run(settings, shards, ledger, args, mode, batch, events).await?;
        consistent &= run.consistent;
        print_run(&run, args, batched_rate);
        if batch != 1 || batched_rate.is_none() {
            batched_rate = Some(run.applied_per_s);
        }
    }
    Ok((consistent, batched_rate.unwrap_or_default()))
}

fn print_header(idle: &Latency) {
    outln!(
        "single reservations, one at a time: p50 {}us p99 {}us p99.9 {}us",
        idle.p50_us,
        idle.p99_us,
        idle.p999_us
    );
    outln!(
        "{:<8} {:>6} {:>8} {:>11} {:>22} {:>11} {:>9} {:>10} {:>8}",
        "mode",
        "batch",
        "events",
        "reserve/s",
        "reserve p50/p99/p99.9",
        "applied/s",
        "cpu/event",
        "peak RSS",
        "books"
    );
}

/// One run as a line of the table (or a JSON object); a batch-1 run after a batched one
/// says how many times faster the batched run applied.
fn print_run(run: &Run, args: &BenchArgs, batched_rate: Option<f64>) {
    if args.json {
        outln!("{}", serde_json::to_string(run).unwrap_or_default());
        return;
    }
    let l = &run.reserve_latency;
    outln!(
        "{:<8} {:>6} {:>8} {:>11.0} {:>22} {:>11.0} {:>7.1}us {:>7}KiB {:>8}{}",
        run.mode,
        run.batch,
        run.events,
        run.reservations_per_s,
        format!("{}/{}/{}us", l.p50_us, l.p99_us, l.p999_us),
        run.applied_per_s,
        run.worker_cpu_us_per_event,
        run.worker_peak_rss_kib,
        if run.consistent { "balanced" } else { "DRIFT" },
        match batched_rate {
            Some(rate) if run.batch == 1 =>
                format!("  (batch {} is {:.1}x)", args.batch, rate / run.applied_per_s),
            _ => String::new(),
        }
    );
}

/// Latency of reservations sent one at a time on an otherwise idle queue.
async fn idle_latency(shards: &Shards, ledger: &Ledger) -> Result<Latency> {
    prepare(shards, ledger, 1, 1_000_000).await?;
    let options = ProduceOptions {
        events: 5_000,
        products: 1,
        qty: 1,
        hot: true,
        rate: None,
        in_flight: 1,
        progress: false,
    };
    Ok(produce::produce(shards, &options).await?.latency)
}

async fn one_run(
    settings: &Settings,
    shards: &Shards,
    ledger: &Ledger,
    args: &BenchArgs,
    mode: &'static str,
    batch: usize,
    events: u64,
) -> Result<Run> {
    let produced = reserve_events(shards, ledger, mode == "hot", events).await?;
    let started = Instant::now();
    let workers = start_workers(settings, args, batch)?;
    let first_pid = workers.first().and_then(|c| c.id());
    let rss_early = wait_for_drain(shards, first_pid, events, started).await?;
    let drain = started.elapsed();
    let usage = stop_workers(workers).await;
    let consistent = crate::check::check(shards, ledger).await?.is_consistent();
    // 100 ticks a second is the Linux user-space clock (USER_HZ) on every common platform
    let cpu_us = usage.cpu_ticks as f64 * 10_000.0;
    Ok(Run {
        run: "drain",
        mode,
        batch,
        events,
        reservations_per_s: produced.per_second(),
        reserve_latency: produced.latency,
        applied_per_s: events as f64 / drain.as_secs_f64(),
        drain_s: drain.as_secs_f64(),
        worker_cpu_us_per_event: cpu_us / events as f64,
        worker_peak_rss_kib: usage.peak_rss_kib,
        worker_rss_early_kib: rss_early.unwrap_or(0),
        worker_rss_end_kib: usage.rss_end_kib,
        consistent,
    })
}

/// The steady run: a fresh queue and database, the worker processes started and announced,
/// then `rate` reservations a second for `--rate-for`, drained; the reservation-to-outcome
/// latency is read from the outcome stream afterwards.
async fn steady_run(
    settings: &Settings,
    shards: &Shards,
    ledger: &Ledger,
    args: &BenchArgs,
    mode: &'static str,
    rate: u64,
) -> Result<SteadyRun> {
    let hot = mode == "hot";
    let products = products(hot);
    let events = steady_events(rate, args.rate_for)?;
    prepare(shards, ledger, products, events as i64 + 1).await?;
    let workers = start_workers(settings, args, args.batch)?;
    let pids: Vec<u32> = workers.iter().filter_map(Child::id).collect();
    wait_for_workers(shards, &pids).await?;
    let started = Instant::now();
    let produced = reserve_as_shoppers(shards, hot, events, Some(rate)).await?;
    wait_for_drain(shards, None, events, started).await?;
    stop_workers(workers).await;
    let consistent = crate::check::check(shards, ledger).await?.is_consistent();
    let (outcomes, to_outcome) = to_outcome(shards).await?;
    Ok(SteadyRun {
        run: "steady",
        mode,
        batch: args.batch,
        offered_per_s: rate,
        events,
        reservations_per_s: produced.per_second(),
        reserve_latency: produced.latency,
        outcomes,
        to_outcome,
        consistent,
    })
}

/// The capacity run: what the system sustains with the producer on the same machine.
#[derive(Debug, Serialize)]
struct CapacityRun {
    run: &'static str,
    mode: &'static str,
    batch: usize,
    events: u64,
    /// The producer's rate, flat out, with the workers running beside it.
    reservations_per_s: f64,
    reserve_latency: Latency,
    /// Events applied per second while the producer ran.
    applied_per_s: f64,
    /// The lower of the two: the highest rate reservations can arrive at and be applied at
    /// for as long as they come. The steady run offers half of it.
    capacity_per_s: f64,
    /// Pending and processing when the producer stopped (what it got ahead by).
    backlog_at_end: u64,
    consistent: bool,
}

/// Reserves flat out for about `--capacity-for` (the event count is sized from the rate the
/// producer reached alone) while the worker processes apply, and measures both rates.
async fn capacity_run(
    settings: &Settings,
    shards: &Shards,
    ledger: &Ledger,
    args: &BenchArgs,
    mode: &'static str,
) -> Result<CapacityRun> {
    let hot = mode == "hot";
    let products = products(hot);
    // sized for the producer alone; beside the workers it runs slower, so this lasts longer
    let alone = produce_rate_alone(shards, ledger, hot).await?;
    let events =
        ((alone * args.capacity_for.as_secs_f64()).ceil() as u64).clamp(1_000, MAX_STEADY_EVENTS as u64);
    prepare(shards, ledger, products, events as i64 + 1).await?;
    let workers = start_workers(settings, args, args.batch)?;
    let pids: Vec<u32> = workers.iter().filter_map(Child::id).collect();
    wait_for_workers(shards, &pids).await?;
    let applied_before = applied(shards).await?;
    let produced = reserve_as_shoppers(shards, hot, events, None).await?;
    let applied_during = applied(shards).await?.saturating_sub(applied_before);
    let (pending, processing) = crate::tools::own::depths(shards).await?;
    wait_for_drain(shards, None, events, Instant::now()).await?;
    stop_workers(workers).await;
    let consistent = crate::check::check(shards, ledger).await?.is_consistent();
    let applied_per_s = applied_during as f64 / produced.elapsed.as_secs_f64().max(1e-9);
    let reservations_per_s = produced.per_second();
    Ok(CapacityRun {
        run: "capacity",
        mode,
        batch: args.batch,
        events,
        reservations_per_s,
        reserve_latency: produced.latency,
        applied_per_s,
        capacity_per_s: applied_per_s.min(reservations_per_s),
        backlog_at_end: pending + processing,
        consistent,
    })
}

/// Reservations per second of the producer alone, over a short burst.
async fn produce_rate_alone(shards: &Shards, ledger: &Ledger, hot: bool) -> Result<f64> {
    let products = products(hot);
    prepare(shards, ledger, products, 1_000_000).await?;
    Ok(reserve_as_shoppers(shards, hot, 20_000, None).await?.per_second())
}

/// Events applied so far on every shard (the `applied` counter settle.lua keeps).
async fn applied(shards: &Shards) -> Result<u64> {
    let mut total = 0;
    for queue in shards.all() {
        total += queue.depths().await?.counters.get("applied").copied().unwrap_or(0);
    }
    Ok(total)
}

fn print_capacity(run: &CapacityRun, args: &BenchArgs) {
    if args.json {
        outln!("{}", serde_json::to_string(run).unwrap_or_default());
        return;
    }
    let l = &run.reserve_latency;
    outln!(
        "capacity: {} reserving flat out beside {} workers: {:.0} reservations/s (p50/p99 {}/{}us), {:.0} applied/s; sustained capacity {:.0}/s (backlog {} when the producer stopped) {}",
        run.mode,
        args.workers,
        run.reservations_per_s,
        l.p50_us,
        l.p99_us,
        run.applied_per_s,
        run.capacity_per_s,
        run.backlog_at_end,
        if run.consistent { "balanced" } else { "DRIFT" }
    );
}

/// The check against a backlog: `products` products and `backlog` pending events.
#[derive(Debug, Serialize)]
struct CheckRun {
    run: &'static str,
    products: u64,
    backlog: u64,
    /// Each of three `check` runs, in milliseconds.
    check_ms: Vec<u64>,
    consistent: bool,
}

/// Fills a fresh queue with `products` stocked products and `backlog` pending events (in
/// bulk, exact for the books: `lua/bench_fill.lua`), then times three checks.
async fn check_run(shards: &Shards, ledger: &Ledger, products: u64, backlog: u64) -> Result<CheckRun> {
    const STOCK: i64 = 1_000_000_000;
    crate::tools::own::reset(shards, ledger).await?;
    ledger.insert_products(products as i64, STOCK).await?;
    let queue = shards.first();
    queue.fill_stock(products, STOCK).await?;
    queue.fill_backlog(backlog, products).await?;
    let mut check_ms = Vec::new();
    let mut consistent = true;
    for _ in 0..3 {
        let started = Instant::now();
        consistent &= crate::check::check(shards, ledger).await?.is_consistent();
        check_ms.push(started.elapsed().as_millis() as u64);
    }
    // leave no million-entry queue behind
    crate::tools::own::reset(shards, ledger).await?;
    Ok(CheckRun { run: "check", products, backlog, check_ms, consistent })
}

fn print_check(run: &CheckRun, args: &BenchArgs) {
    if args.json {
        outln!("{}", serde_json::to_string(run).unwrap_or_default());
        return;
    }
    outln!(
        "check: {} products, {} pending: {} ms ({} runs) {}",
        run.products,
        run.backlog,
        run.check_ms.iter().map(u64::to_string).collect::<Vec<_>>().join(" / "),
        run.check_ms.len(),
        if run.consistent { "balanced" } else { "DRIFT" }
    );
}

/// How many reservations a steady run offers: `rate` a second for `rate_for`.
fn steady_events(rate: u64, rate_for: Duration) -> Result<u64> {
    let events = (rate as f64 * rate_for.as_secs_f64()).ceil();
    if events > MAX_STEADY_EVENTS {
        return Err(Error::usage(format!(
            "--rate x --rate-for offers {events:.0} reservations; at most {MAX_STEADY_EVENTS:.0}"
        )));
    }
    Ok((events as u64).max(1))
}

/// Waits (up to 10 s) until every worker process has announced itself, so that the first
/// reservations offered do not wait for workers to start.
async fn wait_for_workers(shards: &Shards, pids: &[u32]) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let live = shards.first().live_workers().await?;
        if pids.iter().all(|pid| live.iter().any(|beat| beat.pid == *pid)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Outcome entries read per XRANGE call.
const OUTCOMES_PAGE: usize = 10_000;

/// `at − reserved_at` of every outcome on the queue's streams (emptied before the run), read
/// a page at a time: how many, and their percentiles.
async fn to_outcome(shards: &Shards) -> Result<(u64, ToOutcome)> {
    let mut samples = Vec::new();
    for queue in shards.all() {
        let mut after: Option<String> = None;
        loop {
            let page = queue.outcomes_after(after.as_deref(), OUTCOMES_PAGE).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.id.clone());
            samples.extend(page.iter().filter_map(|o| {
                let at: i64 = o.get("at")?.parse().ok()?;
                let reserved_at: i64 = o.get("reserved_at")?.parse().ok()?;
                Some(at.saturating_sub(reserved_at).max(0) as u64)
            }));
        }
    }
    let count = samples.len() as u64;
    // the same percentiles as the reservations', taken of milliseconds
    let l = Latency::from_samples(samples);
    Ok((count, ToOutcome { p50_ms: l.p50_us, p99_ms: l.p99_us, max_ms: l.max_us }))
}

fn print_steady(run: &SteadyRun, args: &BenchArgs, why: &str) {
    if args.json {
        outln!("{}", serde_json::to_string(run).unwrap_or_default());
        return;
    }
    let l = &run.reserve_latency;
    let o = &run.to_outcome;
    outln!(
        "steady run: {} reservations/s offered for {}s ({why}), with the workers running",
        run.offered_per_s,
        args.rate_for.as_secs_f64(),
    );
    outln!(
        "{:<8} {:>6} {:>8} {:>11} {:>22} {:>9} {:>24} {:>8}",
        "mode",
        "batch",
        "events",
        "reserve/s",
        "reserve p50/p99/p99.9",
        "outcomes",
        "to outcome p50/p99/max",
        "books"
    );
    outln!(
        "{:<8} {:>6} {:>8} {:>11.0} {:>22} {:>9} {:>24} {:>8}",
        run.mode,
        run.batch,
        run.events,
        run.reservations_per_s,
        format!("{}/{}/{}us", l.p50_us, l.p99_us, l.p999_us),
        run.outcomes,
        format!("{}/{}/{}ms", o.p50_ms, o.p99_ms, o.max_ms),
        if run.consistent { "balanced" } else { "DRIFT" }
    );
}

/// Steps 1 and 2: a fresh queue and database with enough stock for every event, then the
/// events reserved (uniformly over 100 products, or all on one when `hot`).
async fn reserve_events(shards: &Shards, ledger: &Ledger, hot: bool, events: u64) -> Result<ProduceReport> {
    let products = products(hot);
    prepare(shards, ledger, products, events as i64 + 1).await?;
    reserve_as_shoppers(shards, hot, events, None).await
}

/// Buyers the benchmark's reservations are made for: every reservation carries one (as a
/// shop's would), so the figures include what a buyer costs reserve.lua.
const BUYERS: u64 = 100_000;

/// Reserves `events` (at `rate` a second, or flat out) as `produce` does, `DEFAULT_IN_FLIGHT`
/// at a time, each for one of [`BUYERS`] buyers: uniformly over 100 products, or all on one
/// when `hot`.
async fn reserve_as_shoppers(
    shards: &Shards,
    hot: bool,
    events: u64,
    rate: Option<u64>,
) -> Result<ProduceReport> {
    let options = ProduceOptions {
        events,
        products: products(hot),
        qty: 1,
        hot,
        rate,
        in_flight: produce::DEFAULT_IN_FLIGHT,
        progress: false,
    };
    let shoppers = ShopperOptions { buyers: Some(BUYERS), ..Default::default() };
    produce::produce_shoppers(shards, &options, &shoppers).await
}

/// The products a mode reserves: 1..=100 (uniform), or product 1 alone (hot).
fn products(hot: bool) -> i64 {
    if hot { 1 } else { 100 }
}

/// Step 3: worker processes of this binary on the bench's queue and database. They are
/// killed if dropped, so an error on the way leaves none behind.
fn start_workers(settings: &Settings, args: &BenchArgs, batch: usize) -> Result<Vec<Child>> {
    let exe =
        std::env::current_exe().map_err(|source| Error::Spawn { what: "find my own binary", source })?;
    (0..args.workers)
        .map(|_| {
            tokio::process::Command::new(&exe)
                .args([
                    "worker",
                    "--batch",
                    &batch.to_string(),
                    "--concurrency",
                    &args.concurrency.to_string(),
                ])
                .env("REDIS_URL", settings.redis.url.expose())
                .env("DATABASE_URL", settings.mysql.url.expose())
                .env("STOCKQ_QUEUE", &settings.redis.queue)
                .env("STOCKQ_SHARDS", settings.redis.shards.to_string())
                .env("RUST_LOG", "warn")
                .stdin(std::process::Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .map_err(|source| Error::Spawn { what: "start a worker", source })
        })
        .collect()
}

/// Waits until every event is applied and acknowledged. Returns the first worker's resident
/// memory once 5% of the events were applied.
async fn wait_for_drain(
    shards: &Shards,
    first_pid: Option<u32>,
    events: u64,
    started: Instant,
) -> Result<Option<u64>> {
    let deadline = started + DRAIN_WITHIN;
    let mut rss_early = None;
    let mut last_rss_sample = Instant::now();
    loop {
        let (pending, processing) = crate::tools::own::depths(shards).await?;
        if pending == 0 && processing == 0 {
            return Ok(rss_early);
        }
        if rss_early.is_none() && last_rss_sample.elapsed() >= Duration::from_millis(50) {
            last_rss_sample = Instant::now();
            if (pending + processing) * 20 <= events * 19 {
                rss_early = first_pid.and_then(|pid| proc_status_kib(pid, "VmRSS"));
            }
        }
        if Instant::now() > deadline {
            return Err(Error::NotDrained { within: DRAIN_WITHIN, pending, processing });
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// What the worker processes used, read from /proc while they still run.
struct Usage {
    cpu_ticks: u64,
    peak_rss_kib: u64,
    /// The first worker's, at the end.
    rss_end_kib: u64,
}

/// Step 4: reads each worker's usage, then stops it with SIGTERM and waits (bounded) for it.
async fn stop_workers(workers: Vec<Child>) -> Usage {
    let first_pid = workers.first().and_then(|c| c.id());
    let rss_end_kib = first_pid.and_then(|pid| proc_status_kib(pid, "VmRSS")).unwrap_or(0);
    let mut usage = Usage { cpu_ticks: 0, peak_rss_kib: 0, rss_end_kib };
    for child in &workers {
        if let Some(pid) = child.id() {
            usage.cpu_ticks += proc_cpu_ticks(pid).unwrap_or(0);
            usage.peak_rss_kib = usage.peak_rss_kib.max(proc_status_kib(pid, "VmHWM").unwrap_or(0));
            let _ = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
        }
    }
    for mut child in workers {
        let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
    }
    usage
}

/// utime + stime of a process, in clock ticks.
fn proc_cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // the command name may contain spaces: fields start after the last ')'
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// A `/proc/<pid>/status` figure in KiB (VmRSS, VmHWM).
pub(crate) fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find(|l| l.starts_with(field))?.split_whitespace().nth(1)?.parse().ok()
}
