//! Integration tests against the real Redis and MariaDB (scripts/services.sh starts them).
//!
//! Each test gets its own queue name (so its own hash-tagged keys) and its own database,
//! both removed when the test's [`helpers::TestEnv`] is dropped, so tests run in parallel
//! without trampling each other or a developer's data.

mod books;
mod browser;
mod cli;
mod cluster;
mod control;
mod dashboard;
mod dashboard_console;
mod example;
mod faults;
mod foundation;
mod groups;
mod helpers;
mod http;
mod ledger_faults;
mod lifecycle;
mod listings;
mod logs;
mod metrics;
mod openapi;
mod procfile;
pub(crate) mod records;
mod recovery;
mod relay;
mod search;
mod security;
mod sessions;
mod spread;
mod stats;
