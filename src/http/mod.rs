//! The HTTP surfaces: `stockq serve` for shoppers (and its operators' dashboard, `admin`), and
//! `/healthz` + `/metrics` for every long-running process, all on one hardened server
//! (`listen`, `conn`, `answer`), which tells who each request comes from (`client`);
//! wrong secrets are counted per client (`throttle`).

pub(crate) mod admin;
mod answer;
mod client;
mod conn;
pub(crate) mod health;
mod listen;
pub(crate) mod reservations;
pub(crate) mod serve;
mod throttle;
