//! `stockq demo`: the one-command showcase.
//!
//! It runs a small flash sale through the real code paths, against the configured Redis and
//! MySQL servers but on a queue and a database of its own, named after the configured ones
//! (`<STOCKQ_QUEUE>-demo` and `<database>_demo`: `stockq-demo` and `stockq_demo` by default)
//! and reset at the start, so it never touches a real queue, and two demos with different
//! settings run side by side on one server:
//!
//! 1. migrate, and stock a few products in both stores;
//! 2. start workers and a janitor in this process;
//! 3. send more buyers than there is stock through the reservation script, with live bars;
//! 4. wait for the workers to apply every reservation;
//! 5. follow a few orders through their life on a product of their own: held and paid,
//!    held and never paid (expired), cancelled, refunded after the deduction (released), and
//!    a buyer stopped by the per-buyer limit; then stop the workers gracefully;
//! 6. reconcile: per product, what was stocked, sold, and what each store holds now.
//!
//! Exit status 0 when every reservation of the sale was applied exactly once and the stores agree.

use std::time::{Duration, Instant};

use clap::Args;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use tokio_util::sync::CancellationToken;

use crate::admin::stock::{self, Change};
use crate::check;
use crate::config::{JanitorSettings, Settings};
use crate::error::{Error, Result};
use crate::janitor::Janitor;
use crate::ledger::{self, Ledger};
use crate::queue::Shards;
use crate::reservations::{Reservation, new_event_id, reserve};
use crate::tools::own::{depths, own_settings, reset};
use crate::worker::{Worker, WorkerOptions};

/// The suffix of the demo's queue and database names.
pub(crate) const DEMO: &str = "demo";
/// Far longer than the demo's sale takes to drain: past it, the workers are stuck.
const DRAIN_WITHIN: Duration = Duration::from_secs(60);

#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Shoppers in the sale (each tries to buy one unit)
    #[arg(long, default_value_t = 20_000)]
    buyers: u64,
    /// Products on sale
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(i64).range(1..=1000))]
    products: i64,
    /// Units of each product
    #[arg(long, default_value_t = 2_000, value_parser = clap::value_parser!(i64).range(0..=1_000_000_000))]
    stock: i64,
}

pub(crate) async fn run(settings: &Settings, args: &DemoArgs) -> Result<u8> {
    if args.buyers == 0 {
        return Err(Error::usage("--buyers must be at least 1"));
    }
    let settings = own_settings(settings, DEMO)?;
    introduce(&settings, args);
    let (shards, ledger) = stock_products(&settings, args).await?;
    let crew = Crew::start(&shards, &ledger)?;
    let bars = Bars::new(args.buyers);
    let sale = sell(&shards, args, &crew.worker, &bars).await?;
    let drained_after = drain(&shards, &crew.worker, &bars.applying, sale.started).await?;
    let _ = bars.all.clear();
    tell_sale(args, &sale, &crew.worker, drained_after);
    let orders = follow_orders(&shards, &ledger, args.products + 1).await;
    crew.stop().await;
    reconcile(&shards, &ledger, args, sale.reserved, orders?).await
}

fn introduce(settings: &Settings, args: &DemoArgs) {
    outln!(
        "stockq demo: a flash sale of {} products x {} units for {} buyers",
        args.products,
        args.stock,
        args.buyers
    );
    outln!(
        "  redis {} (queue {{{}}}), mysql {}",
        settings.redis.url,
        settings.redis.queue,
        settings.mysql.url
    );
}

/// Step 1: the demo's own database and queue, emptied, and every product stocked in both stores.
async fn stock_products(settings: &Settings, args: &DemoArgs) -> Result<(Shards, Ledger)> {
    ledger::migrate(settings).await?;
    let shards = Shards::connect(settings).await?;
    let ledger = Ledger::connect(settings, 4).await?;
    reset(&shards, &ledger).await?;
    for product in 1..=args.products {
        stock::adjust(shards.for_product(product), &ledger, product, Change::Set(args.stock)).await?;
    }
    outln!("1. stocked products 1..={} with {} units each, in MySQL and Redis", args.products, args.stock);
    Ok((shards, ledger))
}

/// Step 2: a worker and a janitor in this process, stopped together.
struct Crew {
    worker: Worker,
    shutdown: CancellationToken,
    tasks: [tokio::task::JoinHandle<Result<()>>; 2],
}

impl Crew {
    fn start(shards: &Shards, ledger: &Ledger) -> Result<Crew> {
        let shutdown = CancellationToken::new();
        let worker = Worker::new(shards.clone(), ledger.clone(), WorkerOptions::default())?;
        let workers = {
            let (w, s) = (worker.clone(), shutdown.clone());
            tokio::spawn(async move { w.run(s).await })
        };
        let janitor = {
            let timing =
                JanitorSettings { interval: Duration::from_secs(1), check_interval: Duration::from_secs(5) };
            let j = Janitor::new(shards.clone(), ledger.clone(), timing);
            let s = shutdown.clone();
            tokio::spawn(async move { j.run(s).await })
        };
        outln!(
            "2. started a worker ({} loops, batches of {}) and a janitor in this process",
            crate::worker::DEFAULT_CONCURRENCY,
            crate::worker::DEFAULT_BATCH
        );
        Ok(Crew { worker, shutdown, tasks: [workers, janitor] })
    }

    /// Stops gracefully, as SIGTERM would; returns the worker, whose totals are then final.
    async fn stop(self) -> Worker {
        self.shutdown.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
        self.worker
    }
}

/// The live bars of steps 3 and 4: buyers answered, reservations applied.
struct Bars {
    all: MultiProgress,
    reserving: ProgressBar,
    applying: ProgressBar,
}

impl Bars {
    fn new(buyers: u64) -> Bars {
        let all = MultiProgress::new();
        let style = ProgressStyle::with_template("   {prefix:<9} [{bar:40}] {pos:>6}/{len:<6} {msg}")
            .expect("static template")
            .progress_chars("=> ");
        let reserving = all.add(ProgressBar::new(buyers).with_style(style.clone()).with_prefix("buyers"));
        let applying = all.add(ProgressBar::new(0).with_style(style).with_prefix("applied"));
        Bars { all, reserving, applying }
    }
}

/// How the buyers were answered.
struct Sale {
    reserved: u64,
    sold_out: u64,
    started: Instant,
    took: Duration,
}

/// Step 3, the sale: every buyer tries to reserve one unit, while the workers apply what is
/// reserved.
async fn sell(shards: &Shards, args: &DemoArgs, worker: &Worker, bars: &Bars) -> Result<Sale> {
    use futures::StreamExt;
    let started = Instant::now();
    let (mut reserved, mut sold_out) = (0u64, 0u64);
    let products = args.products;
    let mut answers = futures::stream::iter(0..args.buyers)
        .map(|_| async move {
            // buyers pick a product, the first one twice as often as the others
            let product = rand::random_range(0..=products).max(1);
            reserve(shards.for_product(product), product, 1, &new_event_id()).await
        })
        .buffer_unordered(crate::tools::produce::DEFAULT_IN_FLIGHT);
    let mut ticker = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            answer = answers.next() => match answer {
                None => break,
                Some(answer) => {
                    match answer? {
                        Reservation::Reserved { .. } => reserved += 1,
                        _ => sold_out += 1,
                    }
                    bars.reserving.inc(1);
                    bars.reserving.set_message(format!("reserved {reserved}, sold out {sold_out}"));
                    bars.applying.set_length(reserved);
                }
            },
            _ = ticker.tick() => show_applied(worker, &bars.applying),
        }
    }
    let took = started.elapsed();
    bars.reserving.finish();
    Ok(Sale { reserved, sold_out, started, took })
}

/// Step 4: waits for the workers to catch up; returns the time from the start of the sale until
/// the queue was empty.
async fn drain(shards: &Shards, worker: &Worker, applying: &ProgressBar, since: Instant) -> Result<Duration> {
    let deadline = Instant::now() + DRAIN_WITHIN;
    loop {
        show_applied(worker, applying);
        let (pending, processing) = depths(shards).await?;
        if pending == 0 && processing == 0 {
            break;
        }
        if Instant::now() > deadline {
            return Err(Error::NotDrained { within: DRAIN_WITHIN, pending, processing });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = since.elapsed();
    applying.finish();
    Ok(took)
}

/// Steps 3 and 4 in words, once the bars are gone.
fn tell_sale(args: &DemoArgs, sale: &Sale, worker: &Worker, drained_after: Duration) {
    let Sale { reserved, sold_out, took, .. } = sale;
    outln!(
        "3. {} buyers answered in {:.2}s ({:.0}/s): {reserved} reserved, {sold_out} turned away as sold out",
        args.buyers,
        took.as_secs_f64(),
        args.buyers as f64 / took.as_secs_f64().max(1e-9)
    );
    let totals = worker.totals();
    let applied = totals.applied.load(std::sync::atomic::Ordering::Relaxed);
    let batches = totals.batches.load(std::sync::atomic::Ordering::Relaxed);
    outln!(
        "4. workers applied {applied} deductions to MySQL in {batches} transactions; queue empty after {:.2}s",
        drained_after.as_secs_f64()
    );
}

/// Units of the orders' product.
const ORDERS_STOCK: i64 = 10;
/// What one buyer may hold of the orders' product.
const ORDERS_LIMIT: u64 = 2;
/// How long the unpaid order is held: the janitor ends it about a second after.
const UNPAID_HOLD: Duration = Duration::from_secs(1);

/// What the orders of step 5 left in `stock_log`: rows still applied, and all rows.
struct Orders {
    applied_rows: u64,
    rows: u64,
}

/// Step 5: a few orders followed through their life, on `product`, stocked apart from the sale.
async fn follow_orders(shards: &Shards, ledger: &Ledger, product: i64) -> Result<Orders> {
    use crate::reservations::{Request, cancel, confirm, reserve_held};
    let queue = shards.for_product(product);
    stock::adjust(queue, ledger, product, Change::Set(ORDERS_STOCK)).await?;
    queue.set_limit(product, ORDERS_LIMIT).await?;
    outln!(
        "5. the life of a few orders of product {product} ({ORDERS_STOCK} units, at most {ORDERS_LIMIT} per buyer):"
    );
    let take = |event_id: &'static str, buyer: &'static str, qty: i64, hold: Option<Duration>| {
        reserve_held(queue, Request { product_id: product, qty, event_id, buyer: Some(buyer), hold })
    };
    let pay_in = Some(Duration::from_secs(900));
    take("order-paid", "alice", 1, pay_in).await?;
    take("order-unpaid", "bob", 1, Some(UNPAID_HOLD)).await?;
    take("order-changed-mind", "carol", 1, pay_in).await?;
    take("order-refunded", "dave", 1, None).await?;
    take("order-pair", "erin", 2, None).await?;
    let refused = take("order-third", "erin", 1, None).await?;
    confirm(shards, "order-paid").await?;
    cancel(shards, ledger, "order-changed-mind").await?;
    settle_order(shards, ledger, "order-refunded", "applied").await?;
    cancel(shards, ledger, "order-refunded").await?;
    let story = [
        ("order-paid", "alice", "held 15m, paid at once", "applied"),
        ("order-unpaid", "bob", "held 1s, never paid", "expired"),
        ("order-changed-mind", "carol", "held 15m, cancelled before paying", "cancelled"),
        ("order-refunded", "dave", "paid, deducted, then refunded", "released"),
        ("order-pair", "erin", "2 units: the buyer's limit", "applied"),
    ];
    outln!("   {:<19} {:<6} {:<34} {:<10} outcomes announced", "order", "buyer", "what happened", "state");
    for (order, buyer, what, end) in story {
        let state = settle_order(shards, ledger, order, end).await?;
        let told = queue.outcomes_of(order).await?;
        outln!("   {order:<19} {buyer:<6} {what:<34} {state:<10} {}", told.join(" -> "));
    }
    let third = match refused {
        Reservation::LimitReached { limit, held } => format!("refused: limit {limit}, holds {held}"),
        other => format!("not refused: {other:?}"),
    };
    outln!("   {:<19} {:<6} {:<34} {third}", "order-third", "erin", "one more unit");
    Ok(Orders { applied_rows: 2, rows: 3 })
}

/// Waits (bounded) until order `event_id` is in state `end`; returns the state it reached.
async fn settle_order(shards: &Shards, ledger: &Ledger, event_id: &str, end: &str) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = crate::reservations::status(shards, ledger, event_id).await?;
        let state = status.map(|s| s.state.to_string()).unwrap_or_default();
        if state == end || Instant::now() > deadline {
            return Ok(state);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Step 6, reconciliation: the books per product, and whether every reservation was applied
/// exactly once (exit 0) or not (exit 1).
async fn reconcile(
    shards: &Shards,
    ledger: &Ledger,
    args: &DemoArgs,
    reserved: u64,
    orders: Orders,
) -> Result<u8> {
    let queue = shards.first().keys().prefix().to_string();
    let report = check::check(shards, ledger).await?;
    let (log_applied, log_rows) = ledger.log_counts().await?;
    outln!("6. reconciliation:");
    print_books(&report, args.stock, args.products);
    let log_applied = log_applied.saturating_sub(orders.applied_rows);
    let log_rows = log_rows.saturating_sub(orders.rows);
    let balanced = report.is_consistent() && log_applied == reserved && log_rows == reserved;
    if balanced {
        outln!(
            "   every reservation of the sale was applied exactly once ({log_rows} rows in stock_log) and \
             Redis == MySQL for every product."
        );
        outln!(
            "   inspect it: redis-cli --scan --pattern '{queue}*'; the demo data stays until the next run."
        );
        Ok(0)
    } else {
        outln!(
            "   the books do NOT balance: {reserved} reserved, {log_applied} applied in stock_log ({log_rows} rows); see `stockq check`"
        );
        Ok(1)
    }
}

fn print_books(report: &check::CheckReport, stocked: i64, sale_products: i64) {
    outln!(
        "   {:>8} {:>8} {:>8} {:>8} {:>8} {:>10}  books",
        "product",
        "stocked",
        "sold",
        "mysql",
        "redis",
        "in-flight"
    );
    for p in &report.products {
        let stocked = if p.product_id > sale_products { ORDERS_STOCK } else { stocked };
        let sold = stocked - p.mysql;
        outln!(
            "   {:>8} {:>8} {:>8} {:>8} {:>8} {:>10}  {}",
            p.product_id,
            stocked,
            sold,
            p.mysql,
            p.redis.map(|r| r.to_string()).unwrap_or_else(|| "-".into()),
            p.in_flight,
            if p.delta == 0 { "balanced" } else { "DRIFT" }
        );
    }
}

fn show_applied(worker: &Worker, bar: &ProgressBar) {
    let t = worker.totals();
    let settled = t.applied.load(std::sync::atomic::Ordering::Relaxed)
        + t.rejected.load(std::sync::atomic::Ordering::Relaxed);
    bar.set_position(settled.min(bar.length().unwrap_or(0)));
    bar.set_message(format!("in flight {}", bar.length().unwrap_or(0).saturating_sub(settled)));
}
