//! The HTTP surfaces: `stockq serve` for shoppers (and its operators' dashboard, `admin`), and
//! `/healthz` + `/metrics` for every long-running process, all on one hardened server
//! (`listen`, `conn`, `answer`).

pub(crate) mod admin;
mod answer;
mod conn;
pub(crate) mod health;
mod listen;
pub(crate) mod reservations;
pub(crate) mod serve;
