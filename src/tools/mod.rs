//! Tools built on the library: the one-command demo, the benchmark, the load generator.

pub(crate) mod bench;
pub(crate) mod bench_http;
pub(crate) mod demo;
pub(crate) mod produce;
