//! The Lua scripts of `lua/`, one per file, compiled into the binary.
//!
//! Each file starts with its KEYS/ARGV/return contract and the invariant it keeps atomic.
//! The build (`build.rs`) inlines the shared steps a script names (`--- @include "name"`,
//! from `lua/includes/`), so what is embedded here is the assembled script, exactly as
//! Redis receives it (`stockq scripts NAME` prints it).
//! `redis::Script` sends EVALSHA and falls back to loading the script when the server does
//! not know it (after a restart, on a fresh replica), so callers never manage SHAs.

use std::sync::LazyLock;

use redis::Script;

macro_rules! scripts {
    (run: $($name:ident = $file:literal),* $(,)? ; listed: $($other:literal),* $(,)?) => {
        $(
            pub(super) static $name: LazyLock<Script> = LazyLock::new(|| Script::new(source($file)));
        )*
        /// Every script: its name (the file's, without `.lua`) and its assembled source.
        pub(crate) const ALL: &[(&str, &str)] = &[
            $(($file, include_str!(concat!(env!("OUT_DIR"), "/lua/", $file, ".lua"))),)*
            $(($other, include_str!(concat!(env!("OUT_DIR"), "/lua/", $other, ".lua"))),)*
        ];
    };
}

scripts! {
    run:
    RESERVE_GROUP = "reserve_group",
    CLAIM = "claim",
    SETTLE = "settle",
    RENEW = "renew",
    HAND_BACK = "hand_back",
    REQUEUE = "requeue",
    SNAPSHOT = "snapshot",
    ADJUST = "adjust",
    DEAD_REQUEUE = "dead_requeue",
    DEAD_DROP = "dead_drop",
    PROBE = "probe",
    CONFIRM = "confirm",
    CANCEL = "cancel",
    RELEASED = "released",
    LIMIT = "limit",
    HEAL = "heal",
    TRANSFER = "transfer",
    WEBHOOK = "webhook",
    BENCH_FILL = "bench_fill";
    // stockq reserves in groups; reserve.lua, one reservation a call, is its contract with
    // producers in other languages (docs/redis-keys.md), listed by `stockq scripts`
    listed: "reserve",
}

fn source(name: &str) -> &'static str {
    ALL.iter().find(|(n, _)| *n == name).map(|(_, s)| *s).unwrap_or_default()
}

/// The SHA1 digest EVALSHA names a script by.
pub(crate) fn digest(source: &str) -> String {
    Script::new(source).get_hash().to_string()
}
