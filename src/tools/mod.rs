//! Tools built on the library: the one-command demo, the benchmark (its HTTP run in
//! `bench_http`), the load generator; the demo and the benchmark each run on a queue and a
//! database of their own (`own`).

pub(crate) mod bench;
pub(crate) mod bench_http;
pub(crate) mod demo;
pub(crate) mod own;
pub(crate) mod produce;
