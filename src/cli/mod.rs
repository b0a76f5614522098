//! The command line (SPEC §3): one subcommand per job, each a thin call into the library.

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use serde_json::json;

use crate::admin::dead::{self, Selection};
use crate::admin::stock::{self, Change};
use crate::check;
use crate::config::{GlobalArgs, LogFormat, Settings};
use crate::error::{Error, Result};
use crate::janitor::Janitor;
use crate::ledger::{self, Ledger};
use crate::queue::Shards;
use crate::reserve::{self, Reservation};
use crate::tools::produce::{self, ProduceOptions};
use crate::worker::{self, Worker, WorkerOptions};

/// Exit status of `reserve` when there is not enough stock (nothing was taken).
pub(crate) const EXIT_SOLD_OUT: u8 = 3;
/// Exit status of `reserve` for a product that was never stocked.
pub(crate) const EXIT_UNKNOWN_PRODUCT: u8 = 4;

#[derive(Debug, Parser)]
#[command(
    name = "stockq",
    version,
    about = "A Redis-native reliable queue for flash-sale stock deduction",
    long_about = "Reserve stock in Redis in well under a millisecond; apply each deduction to \
                  MySQL exactly once through a crash-safe queue; prove that both stores agree.\n\n\
                  Every setting is a flag and an environment variable (the flag wins).",
    after_help = "Exit status: 0 success, 1 failure (a store unreachable, drift found by check), \
                  2 bad usage or input; reserve: 3 sold out, 4 unknown product."
)]
pub struct Cli {
    #[command(flatten)]
    pub(crate) global: GlobalArgs,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Create the database if missing and apply the migrations
    Migrate,
    /// Set or change a product's stock in MySQL and Redis together
    #[command(subcommand)]
    Stock(StockCommand),
    /// Reserve stock for one purchase; prints the event id (exit 3 sold out, 4 unknown product)
    Reserve {
        /// Product id (a positive integer)
        #[arg(value_parser = clap::value_parser!(i64).range(1..))]
        product: i64,
        /// Quantity, 1 to 1000000
        #[arg(value_parser = clap::value_parser!(i64).range(1..=1_000_000))]
        qty: i64,
        /// Event id (an order id fits): 1 to 64 characters of [A-Za-z0-9._:-]; default: a new UUIDv7
        #[arg(long)]
        event_id: Option<String>,
    },
    /// Generate load: reserve N events through the same script as shoppers
    Produce(ProduceArgs),
    /// Claim and apply events until SIGTERM/SIGINT, then finish what is held and exit 0
    Worker {
        /// Claim/apply loops in this process
        #[arg(long, default_value_t = worker::DEFAULT_CONCURRENCY)]
        concurrency: usize,
        /// Events claimed and applied in one transaction
        #[arg(long, default_value_t = worker::DEFAULT_BATCH)]
        batch: usize,
    },
    /// Re-queue timed-out claims, dead-letter, and run the consistency check on its interval
    Janitor {
        /// One recovery pass and one check, then exit (1 if drift was found)
        #[arg(long)]
        once: bool,
    },
    /// Check that redis == mysql − in-flight for every product (exit 0 consistent, 1 drift, 2 could not run)
    Check {
        /// Correct Redis by each drift's delta (INCRBY); exit 0 when the stores then agree
        #[arg(long)]
        repair: bool,
        /// One JSON object on stdout
        #[arg(long)]
        json: bool,
    },
    /// Queue depths, oldest claim, dead letters, live workers, per-product books
    Stats {
        /// One JSON object on stdout
        #[arg(long)]
        json: bool,
    },
    /// Inspect, retry or discard dead-lettered entries
    #[command(subcommand)]
    Dead(DeadCommand),
    /// The HTTP front door for shoppers: POST /reserve, GET /stock/<id>, /healthz, /metrics (listens on PORT, default 8080)
    Serve,
    /// The one-command showcase: a flash sale against local Redis and MariaDB, reconciled
    Demo(crate::tools::demo::DemoArgs),
    /// Measure reservations/s, latency, and events applied/s end to end (its own queue and database)
    Bench(crate::tools::bench::BenchArgs),
}

#[derive(Debug, Subcommand)]
pub(crate) enum StockCommand {
    /// Set a product's stock (creating the product if needed)
    Set {
        #[arg(value_parser = clap::value_parser!(i64).range(1..))]
        product: i64,
        #[arg(value_parser = clap::value_parser!(i64).range(0..))]
        qty: i64,
    },
    /// Add to a product's stock (a negative delta removes)
    Add {
        #[arg(value_parser = clap::value_parser!(i64).range(1..))]
        product: i64,
        #[arg(allow_negative_numbers = true)]
        delta: i64,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum DeadCommand {
    /// List dead letters, newest first
    List {
        #[arg(long)]
        json: bool,
    },
    /// Send dead letters back to pending
    Requeue(DeadSelection),
    /// Discard dead letters, giving back the stock each one still holds
    Drop(DeadSelection),
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub(crate) struct DeadSelection {
    /// Every dead letter
    #[arg(long)]
    all: bool,
    /// The event id of the dead letter(s)
    id: Option<String>,
}

impl DeadSelection {
    fn selection(&self) -> Selection {
        match &self.id {
            Some(id) if !self.all => Selection::EventId(id.clone()),
            _ => Selection::All,
        }
    }
}

#[derive(Debug, Args)]
pub(crate) struct ProduceArgs {
    /// Reservations to make
    #[arg(long)]
    events: u64,
    /// Spread over products 1..=P, uniformly
    #[arg(long, default_value_t = 100)]
    products: i64,
    /// Quantity per reservation
    #[arg(long, default_value_t = 1)]
    qty: i64,
    /// Every reservation on product 1
    #[arg(long)]
    hot: bool,
    /// At most this many reservations per second
    #[arg(long)]
    rate: Option<u64>,
    /// Reservations awaiting an answer at once (pipelined)
    #[arg(long, default_value_t = produce::DEFAULT_IN_FLIGHT)]
    in_flight: usize,
    /// One JSON object on stdout instead of the summary line
    #[arg(long)]
    json: bool,
}

impl Cli {
    pub fn log_format(&self) -> LogFormat {
        self.global.log_format
    }

    /// The demo and the benchmark draw progress bars: only warnings may interrupt them,
    /// unless RUST_LOG says otherwise.
    pub fn default_log_filter(&self) -> &'static str {
        match self.command {
            Command::Demo(_) | Command::Bench(_) => "warn",
            _ => "info",
        }
    }
}

/// Prints a clap error as one line (help and version print in full) and picks the status.
pub fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = e.print();
            ExitCode::SUCCESS
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            eprintln!("stockq: a command is required here (see stockq --help)");
            ExitCode::from(2)
        }
        _ => {
            let rendered = e.render().to_string();
            // The first paragraph says why (for a missing argument, its name is on the next
            // line); the Usage block and tips after the first blank line are left out.
            let line = rendered
                .lines()
                .take_while(|l| !l.trim().is_empty())
                .map(str::trim)
                .collect::<Vec<_>>()
                .join(" ");
            let line = line.trim_start_matches("error: ");
            let line = if line.is_empty() { "bad usage" } else { line };
            eprintln!("stockq: {line} (see stockq --help)");
            ExitCode::from(2)
        }
    }
}

/// Runs a parsed command; returns the exit status.
pub async fn run(cli: Cli) -> u8 {
    let is_check = matches!(cli.command, Command::Check { .. });
    match dispatch(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("stockq: {}", crate::queue::one_line(&e.to_string()));
            // `check` reports "could not run" as 2, as diff does
            if is_check { 2 } else { e.exit_code() as u8 }
        }
    }
}

async fn dispatch(cli: Cli) -> Result<u8> {
    let settings = Settings::from_args(&cli.global)?;
    match cli.command {
        Command::Migrate => {
            ledger::migrate(&settings).await?;
            println!("migrated {}", settings.database_url);
            Ok(0)
        }
        Command::Stock(cmd) => {
            let (shards, ledger) = connect(&settings, 1).await?;
            let (product, change) = match cmd {
                StockCommand::Set { product, qty } => (product, Change::Set(qty)),
                StockCommand::Add { product, delta } => (product, Change::Add(delta)),
            };
            let done = stock::adjust(shards.for_product(product), &ledger, product, change).await?;
            println!(
                "product {}: mysql {} (change {:+}), redis {}",
                done.product_id, done.mysql, done.delta, done.redis
            );
            Ok(0)
        }
        Command::Reserve { product, qty, event_id } => {
            let event_id = event_id.unwrap_or_else(reserve::new_event_id);
            crate::event::validate_event_id(&event_id).map_err(Error::usage)?;
            let shards = Shards::connect(&settings).await?;
            match reserve::reserve(shards.for_product(product), product, qty, &event_id).await? {
                Reservation::Reserved { event_id, .. } => {
                    println!("{event_id}");
                    Ok(0)
                }
                Reservation::SoldOut { available } => {
                    eprintln!(
                        "stockq: sold out: product {product} has {available} left, {qty} asked; nothing taken"
                    );
                    Ok(EXIT_SOLD_OUT)
                }
                Reservation::UnknownProduct => {
                    eprintln!(
                        "stockq: unknown product {product}: stock it first with `stockq stock set {product} <qty>`"
                    );
                    Ok(EXIT_UNKNOWN_PRODUCT)
                }
            }
        }
        Command::Produce(args) => {
            let options = ProduceOptions {
                events: args.events,
                products: args.products,
                qty: args.qty,
                hot: args.hot,
                rate: args.rate,
                in_flight: args.in_flight,
                progress: !args.json,
            };
            options.validate()?;
            let shards = Shards::connect(&settings).await?;
            let report = produce::produce(&shards, &options).await?;
            if args.json {
                let mut v = serde_json::to_value(&report).unwrap_or_default();
                v["per_second"] = json!(report.per_second());
                println!("{v}");
            } else {
                let l = &report.latency;
                println!(
                    "reserved {} and sold out {} (unknown product {}) in {:.2}s: {:.0} reservations/s; \
                     latency p50 {}us p99 {}us p99.9 {}us max {}us",
                    report.reserved,
                    report.sold_out,
                    report.unknown_product,
                    report.elapsed.as_secs_f64(),
                    report.per_second(),
                    l.p50_us,
                    l.p99_us,
                    l.p999_us,
                    l.max_us
                );
            }
            Ok(0)
        }
        Command::Worker { concurrency, batch } => {
            let options = WorkerOptions { concurrency, batch, ..Default::default() };
            options.validate()?;
            let shutdown = crate::shutdown::install()
                .map_err(|e| Error::Refused(format!("cannot install signal handlers: {e}")))?;
            let (shards, ledger) = connect(&settings, concurrency as u32 + 2).await?;
            tracing::info!(redis = %settings.redis_url, mysql = %settings.database_url, "connected");
            let ops = settings.port.map(|port| {
                crate::http::health::spawn_ops(port, shards.clone(), ledger.clone(), shutdown.clone())
            });
            let worker = Worker::new(shards, ledger, options)?;
            worker.run(shutdown.clone()).await?;
            if let Some(ops) = ops {
                shutdown.cancel();
                let _ = ops.await;
            }
            Ok(0)
        }
        Command::Janitor { once } => {
            let (shards, ledger) = connect(&settings, 3).await?;
            let janitor = Janitor::new(
                shards.clone(),
                ledger.clone(),
                settings.janitor_interval,
                settings.check_interval,
            );
            if once {
                janitor.recover().await?;
                let report = janitor.check().await?;
                return Ok(if report.is_consistent() { 0 } else { 1 });
            }
            let shutdown = crate::shutdown::install()
                .map_err(|e| Error::Refused(format!("cannot install signal handlers: {e}")))?;
            let ops = settings.port.map(|port| {
                crate::http::health::spawn_ops(port, shards.clone(), ledger.clone(), shutdown.clone())
            });
            janitor.run(shutdown).await?;
            if let Some(ops) = ops {
                let _ = ops.await;
            }
            Ok(0)
        }
        Command::Check { repair, json } => {
            let (shards, ledger) = connect(&settings, 2).await?;
            let mut report = check::check_confirmed(&shards, &ledger).await?;
            let mut repaired = 0;
            if repair && !report.is_consistent() {
                print_check(&report, json, false);
                repaired = check::repair(&shards, &report).await?;
                report = check::check_confirmed(&shards, &ledger).await?;
            }
            print_check(&report, json, true);
            if repair && repaired > 0 && !json {
                println!("repaired {repaired} product(s) in Redis");
            }
            Ok(if report.is_consistent() { 0 } else { 1 })
        }
        Command::Stats { json } => {
            let (shards, ledger) = connect(&settings, 2).await?;
            let stats = crate::admin::stats::collect(&shards, &ledger).await?;
            if json {
                println!("{}", serde_json::to_string(&stats).unwrap_or_default());
            } else {
                print_stats(&stats);
            }
            Ok(0)
        }
        Command::Dead(cmd) => {
            match cmd {
                DeadCommand::List { json } => {
                    let shards = Shards::connect(&settings).await?;
                    let letters = dead::list(&shards).await?;
                    if json {
                        for (_, d) in &letters {
                            println!("{}", String::from_utf8_lossy(&d.raw));
                        }
                    } else if letters.is_empty() {
                        println!("no dead letters");
                    } else {
                        for (_, d) in &letters {
                            let id = d.event().map(|e| e.event_id).unwrap_or_else(|| "-".into());
                            println!(
                                "{id}\tattempts {}\tfailed_at {}\t{}\t{}",
                                d.attempts,
                                d.failed_at_ms,
                                d.reason,
                                String::from_utf8_lossy(&d.entry).chars().take(120).collect::<String>()
                            );
                        }
                    }
                }
                DeadCommand::Requeue(sel) => {
                    let shards = Shards::connect(&settings).await?;
                    let (moved, skipped) = dead::requeue(&shards, &sel.selection()).await?;
                    println!("requeued {moved}");
                    if skipped > 0 {
                        println!(
                            "left {skipped} entries that are not valid events (drop them with `stockq dead drop --all`)"
                        );
                    }
                }
                DeadCommand::Drop(sel) => {
                    let (shards, ledger) = connect(&settings, 1).await?;
                    let (dropped, given) = dead::drop(&shards, &ledger, &sel.selection()).await?;
                    println!("dropped {dropped}, gave back {given} units of stock");
                }
            }
            Ok(0)
        }
        Command::Demo(args) => crate::tools::demo::run(&settings, &args).await,
        Command::Serve => {
            crate::http::serve::run(&settings).await?;
            Ok(0)
        }
        Command::Bench(args) => crate::tools::bench::run(&settings, &args).await,
    }
}

async fn connect(settings: &Settings, mysql_connections: u32) -> Result<(Shards, Ledger)> {
    let shards = Shards::connect(settings).await?;
    let ledger = Ledger::connect(settings, mysql_connections).await?;
    Ok((shards, ledger))
}

fn print_check(report: &check::CheckReport, json: bool, last: bool) {
    if json {
        if last {
            let drifts: Vec<_> = report.drifts().collect();
            println!(
                "{}",
                json!({
                    "consistent": report.is_consistent(),
                    "seq": report.seq,
                    "products_checked": report.products.len(),
                    "took_ms": report.took.as_millis() as u64,
                    "drifts": drifts,
                })
            );
        }
        return;
    }
    for p in report.drifts() {
        println!(
            "drift: product {}: redis {}{}, mysql {}, in-flight {}, expected redis {}, delta {:+}",
            p.product_id,
            p.redis.unwrap_or(0),
            if p.redis.is_none() { " (key missing)" } else { "" },
            p.mysql,
            p.in_flight,
            p.expected_redis,
            p.delta
        );
    }
    if last {
        let n = report.drifts().count();
        if n == 0 {
            println!(
                "consistent: {} products, redis == mysql − in-flight (seq {}, {} ms)",
                report.products.len(),
                report.seq,
                report.took.as_millis()
            );
        } else {
            println!("{n} of {} products drifted", report.products.len());
        }
    }
}

fn print_stats(s: &crate::admin::stats::Stats) {
    println!("queue        {}", s.queue);
    println!("pending      {}", s.pending);
    println!("processing   {}", s.processing);
    println!(
        "oldest claim {}",
        s.oldest_claim_age_ms.map(|ms| format!("{:.1}s", ms as f64 / 1000.0)).unwrap_or_else(|| "-".into())
    );
    println!("dead         {}", s.dead);
    println!("workers      {} live, {:.0} events/s", s.live_workers.len(), s.throughput.max(0.0));
    for w in &s.live_workers {
        println!("  {}  applied {}  rejected {}  {:.0}/s", w.id, w.applied, w.rejected, w.rate);
    }
    let counters: Vec<String> = s.counters.iter().map(|(k, v)| format!("{k} {v}")).collect();
    println!("totals       {}", if counters.is_empty() { "-".into() } else { counters.join(", ") });
    println!("books        {}", if s.consistent { "consistent" } else { "DRIFT (see stockq check)" });
    const SHOWN: usize = 20;
    println!("{:>12} {:>12} {:>12} {:>10} {:>8}", "product", "redis", "mysql", "in-flight", "delta");
    for p in s.products.iter().take(SHOWN) {
        println!(
            "{:>12} {:>12} {:>12} {:>10} {:>+8}",
            p.product_id,
            p.redis.map(|r| r.to_string()).unwrap_or_else(|| "-".into()),
            p.mysql,
            p.in_flight,
            p.delta
        );
    }
    if s.products.len() > SHOWN {
        println!("... and {} more (stockq stats --json lists all)", s.products.len() - SHOWN);
    }
}
