//! stockq: a Redis-native reliable queue for flash-sale stock deduction.
//!
//! # The flow of one event
//!
//! ```text
//! reserve ─▶ lua/reserve.lua: DECRBY {q}:stock:<p> and LPUSH {q}:pending, atomically
//! worker  ─▶ queue::Queue::claim   pending → processing, with a claim deadline
//!         ─▶ ledger::Ledger::apply_batch   one MySQL transaction per batch, stock_log dedup
//!         ─▶ queue::Queue::settle  LREM from processing (+ give-back or dead letter)
//! janitor ─▶ queue::Queue::requeue_expired   expired claims back to pending, or dead
//!         ─▶ check::check   redis == mysql − in-flight, per product
//! ```
//!
//! # The layout
//!
//! - [`config`]: the one typed configuration (flags and environment), secrets redacted.
//! - [`queue`]: the Redis side — key names ([`queue::Keys`]), the Lua scripts of `lua/`,
//!   claim, settle, renew, release and recovery; one server or a cluster
//!   ([`queue::conn`]); a queue spread over shards ([`queue::Shards`]).
//! - [`event`]: the event format, its validation and the dead-letter envelope.
//! - [`reserve`]: the seckill front door; [`produce`]: the load generator built on it.
//! - [`ledger`]: the MySQL side — migrations, the batch transaction, the check's snapshot.
//! - [`worker`]: the claim/apply/settle loop; [`heartbeat`]: workers announcing themselves.
//! - [`janitor`]: recovery of abandoned claims, dead-lettering, the periodic check.
//! - [`check`]: the exact consistency check and its repair.
//! - [`stock`]: operators' restocks, applied to both stores together.
//! - [`dead`]: listing, re-queueing and dropping dead letters.
//! - [`health`]: `/healthz` and `/metrics`; [`web`]: `stockq serve`, the HTTP front door.
//! - [`stats`], [`demo`], [`bench`], [`cli`], [`shutdown`], [`telemetry`], [`error`].

pub mod bench;
pub mod check;
pub mod cli;
pub mod config;
pub mod dead;
pub mod demo;
pub mod error;
pub mod event;
pub mod health;
pub mod heartbeat;
pub mod janitor;
pub mod ledger;
pub mod produce;
pub mod queue;
pub mod reserve;
pub mod shutdown;
pub mod stats;
pub mod stock;
pub mod telemetry;
pub mod web;
pub mod worker;

pub use error::{Error, Result};
