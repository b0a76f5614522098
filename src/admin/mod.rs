//! Operators' actions: restocks applied to both stores together, dead letters, statistics.

pub(crate) mod dead;
pub(crate) mod stats;
pub(crate) mod stock;
