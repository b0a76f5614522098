//! stockq: a Redis-native reliable queue for flash-sale stock deduction.
//!
//! # The flow of one event
//!
//! ```text
//! reserve ─▶ lua/reserve_group.lua: with the shoppers who arrived meanwhile (queue::group),
//!            take the stock, record, LPUSH {q}:pending, atomically
//! worker  ─▶ Queue::claim          pending → processing, with a claim deadline
//!         ─▶ Ledger::apply_batch   one MySQL transaction per batch, stock_log dedup
//!         ─▶ Queue::settle         LREM from processing (+ give-back or dead letter)
//! janitor ─▶ Queue::requeue_expired   expired claims back to pending, or dead
//!         ─▶ check                 redis == mysql − in-flight, per product
//! ```
//!
//! # The layout
//!
//! The core, each the only door to what it names:
//! - `queue/`: everything that talks to Redis. Key names (`keys`), the Lua scripts of `lua/`
//!   with one typed method each, one server or a cluster (`conn`), shards (`shards`),
//!   reservations in groups (`group`), products lately sold out (`sold_out`), the sequence
//!   watch (`heal`), a spread product's registry and transfers (`spread`), the relay's
//!   deliveries (`webhooks`); the methods grouped by what they serve (`stock`, `books`,
//!   `dead`, `workers`, `ops`).
//! - `ledger/`: everything that talks to MySQL. The batch transaction (`apply`), the check's
//!   snapshot and operators' adjustments (`books`), migrations (`migrate`).
//! - `worker/`: the claim/apply/settle loop; its heartbeat.
//! - `janitor`: recovery of abandoned claims, dead-lettering, the periodic check.
//! - `check`: the exact consistency check and its repair.
//! - `heal`: a shard whose Redis lost writes, healed from MySQL.
//! - `spread`: one hot product's stock in buckets on several shards, and the transfers
//!   between them (its Redis steps in `queue::spread`).
//! - `reservations/`: a reservation: the seckill front door (`reserve`); its status, from its
//!   Redis record or its `stock_log` row, its confirm and its cancel (`lifecycle`).
//! - `event`: the event format and the dead-letter envelope.
//! - `relay`: every outcome delivered to the order service's webhook, signed, in version
//!   order per reservation (its Redis steps in `queue::webhooks`).
//!
//! Around it:
//! - `admin/`: operators' actions (`stock`, `dead`, `stats`).
//! - `http/`: `stockq serve` (`serve`), `/healthz` and `/metrics` (`health`), the operators'
//!   dashboard (`admin`).
//! - `cli/`: the command line, one function per command.
//! - `tools/`: the demo, the benchmark and the load generator; the queue and database of
//!   their own that the demo and the benchmark run on (`own`).
//! - `config`, `error`, `backoff`, `shutdown`, `telemetry`: what every part shares.
//!
//! README "Code map" says the same, with `lua/`, `migrations/`, `tests/` and `scripts/`.
//!
//! Only what the binary and the integration tests use is exported below.

#[macro_use]
mod out;

mod admin;
mod backoff;
mod check;
pub mod cli;
mod config;
mod error;
mod event;
mod heal;
mod http;
mod janitor;
mod ledger;
mod queue;
pub mod relay;
mod reservations;
mod shutdown;
mod spread;
pub mod telemetry;
mod tools;
mod worker;

pub use admin::stock::{Adjusted, Change, CommitOutcome, UnconfirmedChange, adjust, settle_unknown_commit};
pub use check::{CheckReport, ProductBooks, check};
pub use config::{
    DeliverySettings, HttpSettings, JanitorSettings, LogFormat, MysqlSettings, RedisSettings, SecretUrl,
    Settings, install_tls_provider,
};
pub use error::{Error, Result, Store};
pub use event::Event;
pub use janitor::{Janitor, RecoveryReport};
pub use ledger::{Decision, Ledger, migrate};
pub use queue::{ACL_COMMANDS, Claim, Depths, Heartbeat, Keys, Queue, Shards, Waiter};
pub use queue::{Cancel, Confirm};
pub use queue::{Record, StreamEntry};
pub use reservations::{
    Request, Reservation, ReservationState, Status, cancel, check_hold, confirm, new_event_id, reserve,
    reserve_for, reserve_held, reserve_routed, status,
};
pub use spread::{SpreadReport, spread, total_stock};
pub use tools::produce::{Latency, ProduceOptions, ProduceReport, produce};
pub use worker::{BatchReport, StepOutcome, Worker, WorkerOptions};
