//! The HTTP surfaces: `stockq serve` for shoppers, and `/healthz` + `/metrics` for every
//! long-running process.

pub(crate) mod health;
pub(crate) mod reservations;
pub(crate) mod serve;
