//! The command line (docs/commands.md): one subcommand per job, each a thin call into the
//! library. This file is the grammar and the dispatch; the commands live by topic:
//! `processes` (migrate, worker, janitor, serve: what a deployment runs), `stock` (stock,
//! reserve, produce), `books` (check, stats), `dead` (dead letters), and `print` renders
//! their reports as text.

mod books;
mod dead;
mod print;
mod processes;
mod reservations;
mod search;
mod stock;
mod webhooks;

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::admin::Page;
use crate::config::{GlobalArgs, LogFormat, Settings};
use crate::error::Result;
use crate::ledger::Ledger;
use crate::queue::Shards;
use crate::tools::produce;
use crate::worker;

#[derive(Debug, Parser)]
#[command(
    name = "stockq",
    version,
    about = "A Redis-native reliable queue for flash-sale stock deduction",
    long_about = "Reserve stock in Redis in well under a millisecond; apply each deduction to \
                  MySQL exactly once through a crash-safe queue; prove that both stores agree.\n\n\
                  Every setting is a flag and an environment variable (the flag wins).",
    after_help = "Exit status: 0 success, 1 failure (a store unreachable, drift found by check), \
                  2 bad usage or input; reserve: 3 sold out, 4 unknown product, 6 event id already \
                  used; status: 4 unknown reservation."
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
    /// Reserve stock for one purchase; prints the event id (exit 3 sold out, 4 unknown product, 5 buyer limit reached, 6 event id already used)
    Reserve {
        /// Product id (a positive integer)
        #[arg(value_parser = clap::value_parser!(i64).range(1..), allow_negative_numbers = true)]
        product: i64,
        /// Quantity, 1 to 1000000
        #[arg(value_parser = clap::value_parser!(i64).range(1..=1_000_000), allow_negative_numbers = true)]
        qty: i64,
        /// Event id (an order id fits): 1 to 64 characters of [A-Za-z0-9._:-]; default: a new UUIDv7
        #[arg(long)]
        event_id: Option<String>,
        /// The buyer: 1 to 64 characters of [A-Za-z0-9._:-]; required for a product with a buyer limit
        #[arg(long)]
        buyer: Option<String>,
        /// Hold the stock unpaid for this long (1s to STOCKQ_MAX_HOLD): the event is queued
        /// only by `stockq confirm`, and the janitor gives the stock back when it passes
        #[arg(long, value_parser = crate::config::parse_duration)]
        hold: Option<std::time::Duration>,
        /// Print the reservation's status object (or the refusal) as JSON
        #[arg(long)]
        json: bool,
    },
    /// Payment done: queue a held reservation for its MySQL deduction (exit 4 unknown reservation, 6 ended)
    Confirm {
        /// The reservation's event id
        event_id: String,
    },
    /// Cancel a reservation in any state, giving its stock back exactly once (exit 4 unknown reservation)
    Cancel {
        /// The reservation's event id
        event_id: String,
    },
    /// A reservation's state (exit 4 unknown reservation)
    Status {
        /// The reservation's event id
        event_id: String,
        /// The status object as JSON
        #[arg(long)]
        json: bool,
    },
    /// The latest outcomes of reservations ({q}:outcomes), and new ones with --follow
    Outcomes {
        /// How many of the latest to show
        #[arg(long, default_value_t = 20)]
        count: usize,
        /// Keep printing new outcomes as they come, until interrupted
        #[arg(long)]
        follow: bool,
        /// One JSON object per line
        #[arg(long)]
        json: bool,
    },
    /// Generate load: reserve N events through the same script as shoppers
    Produce(ProduceArgs),
    /// Claim and apply events until SIGTERM/SIGINT, then finish what is held and exit 0
    Worker {
        /// Claim/apply loops in this process
        #[arg(long, default_value_t = worker::DEFAULT_CONCURRENCY)]
        concurrency: usize,
        /// Most events claimed and applied in one transaction (a claim takes what is pending, up to this)
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
    /// Queue depths and waits, dead letters, live workers, running totals, per-product books (drifting first)
    Stats {
        /// One JSON object on stdout
        #[arg(long)]
        json: bool,
        /// Products shown, drifting first (largest delta first), then by id; 0 shows all
        #[arg(long, value_name = "N", default_value_t = 20, value_parser = page_size())]
        limit: u64,
        /// Products skipped before the first shown, in that order (to page through them)
        #[arg(long, value_name = "N", default_value_t = 0, value_parser = page_size())]
        offset: u64,
    },
    /// Inspect, retry or discard dead-lettered entries
    #[command(subcommand)]
    Dead(DeadCommand),
    /// Stop every worker from claiming, queue-wide (reservations go on) until `stockq resume`
    Pause,
    /// Let workers claim again after `stockq pause`
    Resume,
    /// Find a reservation by event id (its status, where it is, its outcomes), or a buyer's
    Search {
        /// The event id
        #[arg(required_unless_present = "buyer", conflicts_with = "buyer")]
        event_id: Option<String>,
        /// A buyer's latest outcomes and holds instead (outcomes read newest first, at most 100,000 a shard)
        #[arg(long, value_name = "BUYER")]
        buyer: Option<String>,
        /// A buyer's outcomes shown at most
        #[arg(long, value_name = "N", default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=10_000))]
        limit: u64,
        /// One JSON object on stdout
        #[arg(long)]
        json: bool,
    },
    /// The held reservations whose payment deadlines come first
    Holds {
        /// Holds shown
        #[arg(long, value_name = "N", default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=10_000))]
        limit: u64,
        /// One JSON object on stdout
        #[arg(long)]
        json: bool,
    },
    /// Operator actions, newest first: who, what, when (from the CLI and the dashboard)
    Audit {
        /// Actions shown
        #[arg(long, value_name = "N", default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=100_000))]
        count: u64,
        /// One JSON object per line
        #[arg(long)]
        json: bool,
    },
    /// Deliver every outcome to the order service's webhook, signed, until SIGTERM/SIGINT
    Relay(RelayArgs),
    /// Webhook deliveries given up on: list them, or send them again
    #[command(subcommand)]
    Webhooks(WebhooksCommand),
    /// The HTTP front door for shoppers: POST /reserve, GET /stock/<id>, /healthz, /metrics (listens on PORT, default 8080)
    Serve,
    /// The one-command showcase: a flash sale against local Redis and MariaDB, reconciled
    Demo(crate::tools::demo::DemoArgs),
    /// Measure every figure of BENCHMARKS.md in one run: drains, capacity, steady latency, HTTP, the check (its own queue and database)
    Bench(crate::tools::bench::BenchArgs),
    /// The Lua scripts this build runs: each name with the SHA1 EVALSHA calls it by, or one script as Redis receives it
    Scripts {
        /// Print this script (reserve, claim, settle, ...) instead of the list
        name: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum StockCommand {
    /// Set a product's stock (creating the product if needed)
    Set {
        /// Product id (a positive integer)
        #[arg(value_parser = clap::value_parser!(i64).range(1..), allow_negative_numbers = true)]
        product: i64,
        /// The stock, 0 or more
        #[arg(value_parser = clap::value_parser!(i64).range(0..), allow_negative_numbers = true)]
        qty: i64,
    },
    /// Add to a product's stock (a negative delta removes)
    Add {
        /// Product id (a positive integer)
        #[arg(value_parser = clap::value_parser!(i64).range(1..), allow_negative_numbers = true)]
        product: i64,
        /// Units to add; negative to remove
        #[arg(allow_negative_numbers = true)]
        delta: i64,
    },
    /// Spread a product's Redis stock over BUCKETS shards, so that one hot product is served by
    /// several Redis cores (1 gathers it back into its own shard)
    Spread {
        /// Product id (a positive integer)
        #[arg(value_parser = clap::value_parser!(i64).range(1..), allow_negative_numbers = true)]
        product: i64,
        /// Buckets, 1 to STOCKQ_SHARDS
        #[arg(value_parser = clap::value_parser!(u16).range(1..=1024))]
        buckets: u16,
        /// The result as one JSON object
        #[arg(long)]
        json: bool,
    },
    /// Pause a product's sale: its reservations are refused (exit 7, HTTP 423), nothing else changes
    Pause {
        #[arg(value_parser = clap::value_parser!(i64).range(1..))]
        product: i64,
    },
    /// Resume a paused product's sale
    Resume {
        #[arg(value_parser = clap::value_parser!(i64).range(1..))]
        product: i64,
    },
    /// Limit how many units of a product one buyer may hold (0 removes the limit)
    Limit {
        #[arg(value_parser = clap::value_parser!(i64).range(1..))]
        product: i64,
        #[arg(value_parser = clap::value_parser!(u64).range(0..=1_000_000_000))]
        limit: u64,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum DeadCommand {
    /// List dead letters, newest first, and how many there are
    List {
        /// One JSON object on stdout: {"total", "offset", "limit", "dead": [envelopes]}
        #[arg(long)]
        json: bool,
        /// Dead letters shown; 0 shows all
        #[arg(long, value_name = "N", default_value_t = 100, value_parser = page_size())]
        limit: u64,
        /// Dead letters skipped before the first shown, newest first (to page through them)
        #[arg(long, value_name = "N", default_value_t = 0, value_parser = page_size())]
        offset: u64,
        /// Only those whose reason holds TEXT (any case), among the newest 100,000 of each shard
        #[arg(long, value_name = "TEXT", conflicts_with = "offset")]
        reason: Option<String>,
    },
    /// The reasons dead letters died of, each with how many, the most first
    Reasons {
        /// One JSON object on stdout
        #[arg(long)]
        json: bool,
    },
    /// Send dead letters back to pending
    Requeue(DeadSelection),
    /// Discard dead letters, giving back the stock each one still holds
    Drop(DeadSelection),
}

/// `--limit` and `--offset` of the listings, capped so that a position fits the signed index
/// LRANGE takes even on a 32-bit target.
fn page_size() -> clap::builder::RangedU64ValueParser {
    clap::value_parser!(u64).range(0..=1_000_000_000)
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub(crate) struct DeadSelection {
    /// Every dead letter
    #[arg(long)]
    all: bool,
    /// Every dead letter whose reason holds TEXT (any case; `stockq dead reasons` lists them)
    #[arg(long, value_name = "TEXT")]
    reason: Option<String>,
    /// The event id of the dead letter(s)
    id: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct RelayArgs {
    /// Where outcomes are POSTed (http:// or https://)
    #[arg(long, env = "STOCKQ_WEBHOOK_URL", value_name = "URL", hide_env_values = true)]
    url: String,
    /// The key of each delivery's HMAC-SHA256 signature (Stockq-Signature), 16 characters or more
    #[arg(long, env = "STOCKQ_WEBHOOK_SECRET", value_name = "SECRET", hide_env_values = true)]
    secret: String,
    /// How long a failing delivery is tried, from its first try, before it is a dead letter
    #[arg(long, env = "STOCKQ_WEBHOOK_RETRY_FOR", value_name = "DURATION", default_value = "72h",
          value_parser = crate::config::parse_duration)]
    retry_for: std::time::Duration,
    /// Deliveries awaiting an answer at once, in this process
    #[arg(long, env = "STOCKQ_WEBHOOK_CONCURRENCY", value_name = "N", default_value_t = 32)]
    concurrency: usize,
    /// How long a receiver has to answer a delivery (anything but a 2xx in time is retried)
    #[arg(long, env = "STOCKQ_WEBHOOK_TIMEOUT", value_name = "DURATION", default_value = "10s",
          value_parser = crate::config::parse_duration)]
    timeout: std::time::Duration,
}

#[derive(Debug, Subcommand)]
pub(crate) enum WebhooksCommand {
    /// List the deliveries given up on, newest first
    List {
        /// One JSON object on stdout: {"total", "dead": [...]}
        #[arg(long)]
        json: bool,
        /// Dead deliveries shown, newest first; 0 shows all
        #[arg(long, value_name = "N", default_value_t = 100, value_parser = page_size())]
        limit: u64,
    },
    /// Send dead deliveries again, each in front of its reservation's outcomes
    Replay(WebhookSelection),
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub(crate) struct WebhookSelection {
    /// Every dead delivery
    #[arg(long)]
    all: bool,
    /// A delivery's id (<event_id>@<version>), or an event id (all of its dead deliveries)
    id: Option<String>,
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
    /// Reserve for one of N buyers at random (buyer-1..buyer-N)
    #[arg(long, value_name = "N")]
    buyers: Option<u64>,
    /// Hold each reservation this long instead of queueing it
    #[arg(long, value_parser = crate::config::parse_duration)]
    hold: Option<std::time::Duration>,
    /// Then cancel the first N reservations made, and report how fast
    #[arg(long, value_name = "N", default_value_t = 0)]
    cancel: u64,
    /// One JSON object on stdout instead of the summary line
    #[arg(long)]
    json: bool,
}

impl Cli {
    pub fn log_format(&self) -> LogFormat {
        self.global.log_format
    }

    /// The queue the command works on, which every log line names: the demo and the
    /// benchmark have their own (see `crate::tools::own::own_settings`).
    pub fn log_queue(&self) -> String {
        match self.command {
            Command::Demo(_) => crate::tools::own::own_queue(&self.global.queue, crate::tools::demo::DEMO),
            Command::Bench(_) => crate::tools::own::own_queue(&self.global.queue, crate::tools::bench::BENCH),
            _ => self.global.queue.clone(),
        }
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
            // the commands to choose from on stdout, why it failed on stderr
            out!("{}", e.render());
            eprintln!("stockq: a command is required here (the commands are listed above)");
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
            eprintln!("stockq: {}", crate::error::one_line(&e.to_string()));
            // `check` reports "could not run" as 2, as diff does
            if is_check { 2 } else { e.exit_code() as u8 }
        }
    }
}

async fn dispatch(cli: Cli) -> Result<u8> {
    if let Command::Scripts { name } = &cli.command {
        return scripts(name.as_deref());
    }
    let settings = Settings::from_args(&cli.global)?;
    let settings = &settings;
    match cli.command {
        Command::Migrate => processes::migrate(settings).await,
        Command::Stock(StockCommand::Set { product, qty }) => stock::set(settings, product, qty).await,
        Command::Stock(StockCommand::Add { product, delta }) => stock::add(settings, product, delta).await,
        Command::Stock(StockCommand::Pause { product }) => stock::pause(settings, product).await,
        Command::Stock(StockCommand::Resume { product }) => stock::resume(settings, product).await,
        Command::Pause => books::pause(settings, true).await,
        Command::Resume => books::pause(settings, false).await,
        Command::Audit { count, json } => books::audit(settings, count as usize, json).await,
        Command::Stock(StockCommand::Limit { product, limit }) => {
            stock::limit(settings, product, limit).await
        }
        Command::Stock(StockCommand::Spread { product, buckets, json }) => {
            stock::spread(settings, product, buckets, json).await
        }
        Command::Reserve { product, qty, event_id, buyer, hold, json } => {
            let asked = stock::Reserve { product, qty, event_id, buyer, hold, json };
            stock::reserve(settings, asked).await
        }
        Command::Confirm { event_id } => reservations::confirm(settings, &event_id).await,
        Command::Cancel { event_id } => reservations::cancel(settings, &event_id).await,
        Command::Status { event_id, json } => reservations::status(settings, &event_id, json).await,
        Command::Outcomes { count, follow, json } => {
            reservations::outcomes(settings, count, follow, json).await
        }
        Command::Produce(args) => stock::produce(settings, &args).await,
        Command::Worker { concurrency, batch } => processes::worker(settings, concurrency, batch).await,
        Command::Janitor { once } => processes::janitor(settings, once).await,
        Command::Check { repair, json } => books::check(settings, repair, json).await,
        Command::Stats { json, limit, offset } => books::stats(settings, json, page(offset, limit)).await,
        Command::Dead(DeadCommand::List { json, limit, offset, reason: None }) => {
            dead::list(settings, json, page(offset, limit)).await
        }
        Command::Dead(DeadCommand::List { json, limit, reason: Some(reason), .. }) => {
            dead::list_reason(settings, json, &reason, limit).await
        }
        Command::Dead(DeadCommand::Reasons { json }) => dead::reasons(settings, json).await,
        Command::Search { event_id, buyer, limit, json } => {
            search::search(settings, event_id.as_deref(), buyer.as_deref(), limit as usize, json).await
        }
        Command::Holds { limit, json } => search::holds(settings, limit as usize, json).await,
        Command::Dead(DeadCommand::Requeue(which)) => dead::requeue(settings, &which).await,
        Command::Dead(DeadCommand::Drop(which)) => dead::drop(settings, &which).await,
        Command::Relay(args) => processes::relay(settings, &args).await,
        Command::Webhooks(WebhooksCommand::List { json, limit }) => {
            webhooks::list(settings, json, if limit == 0 { usize::MAX } else { limit as usize }).await
        }
        Command::Webhooks(WebhooksCommand::Replay(which)) => {
            webhooks::replay(settings, which.id.as_deref().filter(|_| !which.all)).await
        }
        Command::Serve => processes::serve(settings).await,
        Command::Demo(args) => crate::tools::demo::run(settings, &args).await,
        Command::Bench(args) => crate::tools::bench::run(settings, &args).await,
        Command::Scripts { .. } => unreachable!("answered before the settings are read"),
    }
}

/// `stockq scripts [NAME]`: needs no store and no setting.
fn scripts(name: Option<&str>) -> Result<u8> {
    use crate::queue::scripts::{ALL, digest};
    let Some(name) = name else {
        for (name, source) in ALL {
            outln!("{name:<14} {}", digest(source));
        }
        return Ok(0);
    };
    let name = name.strip_suffix(".lua").unwrap_or(name);
    match ALL.iter().find(|(n, _)| *n == name) {
        Some((_, source)) => {
            out!("{source}");
            Ok(0)
        }
        None => {
            let names: Vec<&str> = ALL.iter().map(|(n, _)| *n).collect();
            Err(crate::error::Error::usage(format!(
                "no script {name:?}; the scripts are {}",
                names.join(", ")
            )))
        }
    }
}

/// The page `--offset` and `--limit` ask for (`page_size` keeps them within a usize).
fn page(offset: u64, limit: u64) -> Page {
    Page::new(offset as usize, limit as usize)
}

/// Redis and MySQL, for the commands that need both.
async fn connect(settings: &Settings, mysql_connections: u32) -> Result<(Shards, Ledger)> {
    let shards = Shards::connect(settings).await?;
    let ledger = Ledger::connect(settings, mysql_connections).await?;
    Ok((shards, ledger))
}
