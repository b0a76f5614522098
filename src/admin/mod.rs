//! Operators' actions: restocks applied to both stores together, dead letters, statistics.

pub mod dead;
pub mod stats;
pub mod stock;
