//! Tools built on the library: the one-command demo, the benchmark, the load generator.

pub mod bench;
pub mod demo;
pub mod produce;
