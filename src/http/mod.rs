//! The HTTP surfaces: `stockq serve` for shoppers, and `/healthz` + `/metrics` for every
//! long-running process.

pub mod health;
pub mod serve;
