//! The Lua scripts of `lua/`, one per file, compiled into the binary.
//!
//! Each file starts with its KEYS/ARGV/return contract and the invariant it keeps atomic.
//! `redis::Script` sends EVALSHA and falls back to loading the script when the server does
//! not know it (after a restart, on a fresh replica), so callers never manage SHAs.

use std::sync::LazyLock;

use redis::Script;

macro_rules! script {
    ($name:ident, $file:literal) => {
        pub(super) static $name: LazyLock<Script> =
            LazyLock::new(|| Script::new(include_str!(concat!("../../lua/", $file))));
    };
}

script!(RESERVE, "reserve.lua");
script!(CLAIM, "claim.lua");
script!(SETTLE, "settle.lua");
script!(RENEW, "renew.lua");
script!(RELEASE, "release.lua");
script!(REQUEUE, "requeue.lua");
script!(SNAPSHOT, "snapshot.lua");
script!(ADJUST, "adjust.lua");
script!(DEAD_REQUEUE, "dead_requeue.lua");
script!(DEAD_DROP, "dead_drop.lua");
script!(PROBE, "probe.lua");
script!(CONFIRM, "confirm.lua");
script!(CANCEL, "cancel.lua");
script!(RELEASED, "released.lua");
script!(BENCH_FILL, "bench_fill.lua");
