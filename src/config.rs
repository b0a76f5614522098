//! One typed configuration, read from flags and the environment (a flag wins), validated once
//! at start-up. Every other module takes a [`Settings`] and never looks at the environment.
//!
//! The URLs carry credentials, so [`Settings`] keeps them behind [`SecretUrl`], whose `Debug`
//! and `Display` print the URL with its password replaced by `***`.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::error::{Error, Result};

// The defaults, used by the flags and by `Settings::new` alike. Durations are written as a
// user would type them, because the help prints them as written (`60s`, not `1m`).
pub(crate) const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";
pub(crate) const DEFAULT_DATABASE_URL: &str = "mysql://stockq:stockq@127.0.0.1:3306/stockq";
pub(crate) const DEFAULT_QUEUE: &str = "stockq";
pub(crate) const DEFAULT_VISIBILITY_TIMEOUT: &str = "10s";
pub(crate) const DEFAULT_MAX_ATTEMPTS: u32 = 5;
pub(crate) const DEFAULT_JANITOR_INTERVAL: &str = "5s";
pub(crate) const DEFAULT_CHECK_INTERVAL: &str = "60s";
pub(crate) const DEFAULT_SHARDS: u32 = 1;
pub(crate) const DEFAULT_RECORD_TTL: &str = "24h";
pub(crate) const DEFAULT_OUTCOMES_MAXLEN: u64 = 1_000_000;
pub(crate) const DEFAULT_MAX_HOLD: &str = "30m";
pub(crate) const DEFAULT_MAX_CONNECTIONS: u32 = 1024;
/// A quarter of the connections: one client (or one attacker) cannot take them all, and a
/// shop behind a single proxy raises it.
pub(crate) const DEFAULT_MAX_CONNECTIONS_PER_ADDRESS: u32 = 256;
/// The most connections `serve` may be told to hold: each may buffer up to 128 KiB.
pub(crate) const MAX_MAX_CONNECTIONS: u32 = 65_536;

/// The settings every command shares (docs/configuration.md). Flattened into each
/// subcommand's arguments; each command's help lists them apart from its own options, and
/// shows which variable sets each one but never its value (a URL may hold a password).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Global options")]
pub(crate) struct GlobalArgs {
    /// Redis URL (redis:// or rediss:// for TLS)
    #[arg(long, env = "REDIS_URL", default_value = DEFAULT_REDIS_URL, global = true, hide_env_values = true)]
    pub(crate) redis_url: String,

    /// MySQL/MariaDB URL; `migrate` creates its database when missing
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL, global = true, hide_env_values = true)]
    pub(crate) database_url: String,

    /// Queue name: every Redis key of the queue starts with {name}
    #[arg(long, env = "STOCKQ_QUEUE", default_value = DEFAULT_QUEUE, global = true, hide_env_values = true)]
    pub(crate) queue: String,

    /// A claimed entry neither acknowledged nor renewed within this is re-queued
    #[arg(long, env = "STOCKQ_VISIBILITY_TIMEOUT", default_value = DEFAULT_VISIBILITY_TIMEOUT, value_parser = parse_duration, global = true, hide_env_values = true)]
    pub(crate) visibility_timeout: Duration,

    /// Deliveries before an entry is dead-lettered
    #[arg(long, env = "STOCKQ_MAX_ATTEMPTS", default_value_t = DEFAULT_MAX_ATTEMPTS, global = true, hide_env_values = true)]
    pub(crate) max_attempts: u32,

    /// How often the janitor looks for timed-out claims
    #[arg(long, env = "STOCKQ_JANITOR_INTERVAL", default_value = DEFAULT_JANITOR_INTERVAL, value_parser = parse_duration, global = true, hide_env_values = true)]
    pub(crate) janitor_interval: Duration,

    /// How often the janitor runs the consistency check
    #[arg(long, env = "STOCKQ_CHECK_INTERVAL", default_value = DEFAULT_CHECK_INTERVAL, value_parser = parse_duration, global = true, hide_env_values = true)]
    pub(crate) check_interval: Duration,

    /// Serve /healthz and /metrics on this port (worker, janitor); the port of `serve`
    #[arg(long, env = "PORT", global = true, hide_env_values = true)]
    pub(crate) port: Option<u16>,

    /// The address `serve` listens on (all interfaces by default; 127.0.0.1 for local only)
    #[arg(long, env = "STOCKQ_BIND", default_value = "0.0.0.0", global = true, hide_env_values = true)]
    pub(crate) bind: std::net::IpAddr,

    /// Spread products over this many queues ({q:0} .. {q:N-1}), each in its own cluster slot
    #[arg(long, env = "STOCKQ_SHARDS", default_value_t = DEFAULT_SHARDS, global = true, hide_env_values = true)]
    pub(crate) shards: u32,

    /// How long a reservation's record stays in Redis after it ended (replays and status read it)
    #[arg(long, env = "STOCKQ_RECORD_TTL", default_value = DEFAULT_RECORD_TTL, value_parser = parse_duration, global = true, hide_env_values = true)]
    pub(crate) record_ttl: Duration,

    /// The longest hold a reservation may ask for (reserve --hold)
    #[arg(long, env = "STOCKQ_MAX_HOLD", default_value = DEFAULT_MAX_HOLD, value_parser = parse_duration, global = true, hide_env_values = true)]
    pub(crate) max_hold: Duration,

    /// The outcome stream {q}:outcomes is trimmed to about this many entries
    #[arg(long, env = "STOCKQ_OUTCOMES_MAXLEN", default_value_t = DEFAULT_OUTCOMES_MAXLEN, global = true, hide_env_values = true)]
    pub(crate) outcomes_maxlen: u64,

    /// Bearer token of the order-service API of `serve` (GET /reservations/<id>); unset, that API is off
    #[arg(long, env = "STOCKQ_API_TOKEN", global = true, hide_env_values = true)]
    pub(crate) api_token: Option<String>,

    /// Token that logs an operator in to the dashboard of `serve` (/admin); unset, the dashboard is off
    #[arg(long, env = "STOCKQ_ADMIN_TOKEN", global = true, hide_env_values = true)]
    pub(crate) admin_token: Option<String>,

    /// Connections `serve` holds at once; further ones wait in the listen backlog
    #[arg(long, env = "STOCKQ_MAX_CONNECTIONS", default_value_t = DEFAULT_MAX_CONNECTIONS, global = true, hide_env_values = true)]
    pub(crate) max_connections: u32,

    /// Connections one client address may hold at once; more are answered 503 and closed
    #[arg(long, env = "STOCKQ_MAX_CONNECTIONS_PER_ADDRESS", default_value_t = DEFAULT_MAX_CONNECTIONS_PER_ADDRESS, global = true, hide_env_values = true)]
    pub(crate) max_connections_per_address: u32,

    /// Proxies (IP addresses or CIDR ranges, comma-separated) whose X-Forwarded-For/-Host/-Proto `serve` believes; none by default
    #[arg(long, env = "STOCKQ_TRUSTED_PROXIES", global = true, hide_env_values = true)]
    pub(crate) trusted_proxies: Option<String>,

    /// Log format
    #[arg(
        long,
        env = "STOCKQ_LOG_FORMAT",
        value_enum,
        default_value_t,
        global = true,
        hide_env_values = true
    )]
    pub(crate) log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    #[default]
    Pretty,
    Json,
}

/// Parses a human-readable duration (`500ms`, `30s`, `5m`).
pub(crate) fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("{e} (write a duration such as 500ms, 30s or 5m)"))
}

/// The largest number of shards. Checked here only: the rest of the crate trusts validated
/// settings.
pub(crate) const MAX_SHARDS: u32 = 1024;

/// The longest duration a setting may take.
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// Validated settings, grouped by what they configure.
#[derive(Debug, Clone)]
pub struct Settings {
    pub redis: RedisSettings,
    pub mysql: MysqlSettings,
    pub delivery: DeliverySettings,
    pub janitor: JanitorSettings,
    pub http: HttpSettings,
}

/// Where the queue lives in Redis: the server (or cluster) and the keys.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    pub url: SecretUrl,
    /// Every key of the queue starts with `{queue}` (`{queue:N}` for shard N).
    pub queue: String,
    pub shards: u32,
    /// How long a reservation's record is kept after it ended.
    pub record_ttl: Duration,
    /// `{q}:outcomes` is trimmed to about this many entries.
    pub outcomes_maxlen: u64,
    /// The longest hold a reservation may ask for.
    pub max_hold: Duration,
}

/// Where the books live.
#[derive(Debug, Clone)]
pub struct MysqlSettings {
    pub url: SecretUrl,
}

/// How long a worker may hold an entry, and how often it may fail to before it is
/// dead-lettered.
#[derive(Debug, Clone, Copy)]
pub struct DeliverySettings {
    pub visibility_timeout: Duration,
    pub max_attempts: u32,
}

/// How often the janitor recovers expired claims and checks the books.
#[derive(Debug, Clone, Copy)]
pub struct JanitorSettings {
    pub interval: Duration,
    pub check_interval: Duration,
}

/// The HTTP endpoint: `/healthz` and `/metrics` of a worker or janitor when set, and the
/// port of `serve`.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub port: Option<u16>,
    /// The address `serve` listens on.
    pub bind: std::net::IpAddr,
    /// The order service's bearer token; `None` when unset or empty (that API is off).
    pub api_token: Option<ApiToken>,
    /// The operators' token for the dashboard; `None` when unset or empty (it is off). Its
    /// own, so that the order service's secret is never typed into a browser.
    pub admin_token: Option<ApiToken>,
    /// Connections held at once, in all and from one client address.
    pub max_connections: u32,
    pub max_connections_per_address: u32,
    /// The peers whose forwarded headers are believed.
    pub trusted_proxies: TrustedProxies,
}

impl Settings {
    pub(crate) fn from_args(args: &GlobalArgs) -> Result<Self> {
        let redis_url = SecretUrl::parse("REDIS_URL", &args.redis_url, &["redis", "rediss"])?;
        let database_url = SecretUrl::parse("DATABASE_URL", &args.database_url, &["mysql", "mariadb"])?;
        validate_queue_name(&args.queue)?;
        if args.visibility_timeout < Duration::from_millis(100) {
            return Err(Error::usage(
                "STOCKQ_VISIBILITY_TIMEOUT must be at least 100ms (a claim must outlive one batch)",
            ));
        }
        if !(1..=MAX_SHARDS).contains(&args.shards) {
            return Err(Error::usage(format!("STOCKQ_SHARDS must be from 1 to {MAX_SHARDS}")));
        }
        if args.max_attempts == 0 {
            return Err(Error::usage("STOCKQ_MAX_ATTEMPTS must be at least 1"));
        }
        for (name, d) in [
            ("STOCKQ_JANITOR_INTERVAL", args.janitor_interval),
            ("STOCKQ_CHECK_INTERVAL", args.check_interval),
        ] {
            if d < Duration::from_millis(10) {
                return Err(Error::usage(format!("{name} must be at least 10ms")));
            }
        }
        // A deadline `now + d` must stay representable: a duration of centuries would
        // overflow `Instant` and panic a worker's loops or the janitor.
        for (name, d) in [
            ("STOCKQ_VISIBILITY_TIMEOUT", args.visibility_timeout),
            ("STOCKQ_JANITOR_INTERVAL", args.janitor_interval),
            ("STOCKQ_CHECK_INTERVAL", args.check_interval),
        ] {
            if d > MAX_DURATION {
                return Err(Error::usage(format!("{name} must be at most 365days")));
            }
        }
        validate_records(args)?;
        validate_connections(args)?;
        let trusted_proxies = TrustedProxies::parse(args.trusted_proxies.as_deref().unwrap_or(""))
            .map_err(|e| Error::usage(format!("STOCKQ_TRUSTED_PROXIES: {e}")))?;
        Ok(Settings {
            redis: RedisSettings {
                url: redis_url,
                queue: args.queue.clone(),
                shards: args.shards,
                record_ttl: args.record_ttl,
                outcomes_maxlen: args.outcomes_maxlen,
                max_hold: args.max_hold,
            },
            mysql: MysqlSettings { url: database_url },
            delivery: DeliverySettings {
                visibility_timeout: args.visibility_timeout,
                max_attempts: args.max_attempts,
            },
            janitor: JanitorSettings { interval: args.janitor_interval, check_interval: args.check_interval },
            http: HttpSettings {
                port: args.port,
                bind: args.bind,
                api_token: ApiToken::new(args.api_token.as_deref()),
                admin_token: ApiToken::new(args.admin_token.as_deref()),
                max_connections: args.max_connections,
                max_connections_per_address: args.max_connections_per_address,
                trusted_proxies,
            },
        })
    }

    /// Settings for tests and embedding: the given URLs and queue, every other value the
    /// default of its flag, validated as the flags are.
    pub fn new(redis_url: &str, database_url: &str, queue: &str) -> Result<Self> {
        Settings::from_args(&GlobalArgs::defaults(redis_url, database_url, queue))
    }
}

impl GlobalArgs {
    /// The given URLs and queue, every other value the default of its flag.
    fn defaults(redis_url: &str, database_url: &str, queue: &str) -> GlobalArgs {
        GlobalArgs {
            redis_url: redis_url.to_string(),
            database_url: database_url.to_string(),
            queue: queue.to_string(),
            visibility_timeout: default_duration(DEFAULT_VISIBILITY_TIMEOUT),
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            janitor_interval: default_duration(DEFAULT_JANITOR_INTERVAL),
            check_interval: default_duration(DEFAULT_CHECK_INTERVAL),
            port: None,
            bind: std::net::Ipv4Addr::UNSPECIFIED.into(),
            shards: DEFAULT_SHARDS,
            record_ttl: default_duration(DEFAULT_RECORD_TTL),
            outcomes_maxlen: DEFAULT_OUTCOMES_MAXLEN,
            max_hold: default_duration(DEFAULT_MAX_HOLD),
            api_token: None,
            admin_token: None,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_address: DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
            trusted_proxies: None,
            log_format: LogFormat::default(),
        }
    }
}

/// A record must outlive any retry of its reservation; the stream must hold something.
fn validate_records(args: &GlobalArgs) -> Result<()> {
    if args.record_ttl < Duration::from_secs(1) || args.record_ttl > MAX_DURATION {
        return Err(Error::usage("STOCKQ_RECORD_TTL must be from 1s to 365days"));
    }
    if args.outcomes_maxlen == 0 {
        return Err(Error::usage("STOCKQ_OUTCOMES_MAXLEN must be at least 1"));
    }
    Ok(())
}

/// One address cannot hold more connections than there are.
fn validate_connections(args: &GlobalArgs) -> Result<()> {
    let total = args.max_connections;
    if !(1..=MAX_MAX_CONNECTIONS).contains(&total) {
        return Err(Error::usage(format!("STOCKQ_MAX_CONNECTIONS must be from 1 to {MAX_MAX_CONNECTIONS}")));
    }
    if !(1..=total).contains(&args.max_connections_per_address) {
        return Err(Error::usage(format!(
            "STOCKQ_MAX_CONNECTIONS_PER_ADDRESS must be from 1 to STOCKQ_MAX_CONNECTIONS ({total})"
        )));
    }
    Ok(())
}

/// The proxies whose `X-Forwarded-For`, `-Host` and `-Proto` headers `serve` believes: from
/// any other peer those headers are whatever the client chose to write, so they are dropped.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpRange>);

/// An address range: the addresses whose first `prefix` bits are `network`'s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct IpRange {
    network: IpAddr,
    prefix: u8,
}

impl TrustedProxies {
    /// Parses a comma-separated list of addresses (`10.0.0.5`, `::1`) and CIDR ranges
    /// (`10.0.0.0/8`, `fd00::/8`); empty entries are skipped. The error says which entry is
    /// wrong and how to write it.
    pub(crate) fn parse(list: &str) -> std::result::Result<TrustedProxies, String> {
        let mut ranges = Vec::new();
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            ranges.push(IpRange::parse(entry)?);
        }
        Ok(TrustedProxies(ranges))
    }

    /// Whether `ip` is one of the proxies (an IPv4 address written as IPv6, `::ffff:a.b.c.d`,
    /// counts as the IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|range| range.contains(ip))
    }
}

impl IpRange {
    fn parse(entry: &str) -> std::result::Result<IpRange, String> {
        let how = "write an IP address or a CIDR range, such as 10.0.0.5 or 10.0.0.0/8";
        let (address, prefix) = match entry.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (entry, None),
        };
        let network: IpAddr =
            address.parse().map_err(|_| format!("{entry:?} is not an IP address ({how})"))?;
        let bits = if network.is_ipv4() { 32 } else { 128 };
        let prefix =
            match prefix {
                None => bits,
                Some(p) => p.parse::<u8>().ok().filter(|p| *p <= bits).ok_or_else(|| {
                    format!("{entry:?} has a prefix length that is not 0 to {bits} ({how})")
                })?,
            };
        let range = IpRange { network, prefix };
        let masked = range.masked(network);
        if masked != bits_of(network) {
            // 10.0.0.1/8 is most likely a typo, for one address or for 10.0.0.0/8: ask
            let base = match network {
                IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::from(masked as u32)),
                IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::from(masked)),
            };
            return Err(format!("{entry:?} has bits set past its prefix length: write {base}/{prefix}"));
        }
        Ok(range)
    }

    /// `ip`'s bits with those past the prefix cleared.
    fn masked(&self, ip: IpAddr) -> u128 {
        let width: u32 = if ip.is_ipv4() { 32 } else { 128 };
        let host_bits = width - u32::from(self.prefix);
        let mask = (u128::MAX >> (128 - width)) & u128::MAX.checked_shl(host_bits).unwrap_or(0);
        bits_of(ip) & mask
    }

    fn contains(&self, ip: IpAddr) -> bool {
        self.network.is_ipv4() == ip.is_ipv4() && self.masked(ip) == bits_of(self.network)
    }
}

fn bits_of(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// A secret token (the order-service API's, the dashboard's). Kept out of `Debug` so settings
/// can be logged.
#[derive(Clone)]
pub struct ApiToken(String);

impl ApiToken {
    /// An empty token counts as none: an API guarded by "" would be open to anyone.
    pub fn new(token: Option<&str>) -> Option<ApiToken> {
        token.filter(|t| !t.is_empty()).map(|t| ApiToken(t.to_string()))
    }

    /// Whether `given` is the token, in time independent of where they differ.
    pub fn matches(&self, given: &str) -> bool {
        same_secret(&self.0, given)
    }

    /// The token itself: only for a keyed hash of it, never to print or store.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

/// Whether `given` equals the secret `secret`, in time independent of where they differ.
pub(crate) fn same_secret(secret: &str, given: &str) -> bool {
    let (a, b) = (secret.as_bytes(), given.as_bytes());
    let mut diff = a.len() ^ b.len();
    for (i, x) in a.iter().enumerate() {
        diff |= usize::from(x ^ b.get(i).copied().unwrap_or(!x));
    }
    diff == 0
}

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

fn default_duration(text: &str) -> Duration {
    parse_duration(text).expect("the default durations parse (see the tests)")
}

/// Installs the process-wide TLS crypto provider (ring) that `rediss://` and MySQL's
/// `ssl-mode` need. A process-wide side effect, so the program calls it once before anything
/// connects (`main` does, and so do the integration tests); harmless to call again.
pub fn install_tls_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Queue names become part of every key inside a Redis Cluster hash tag, so braces are out.
pub(crate) fn validate_queue_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::usage(format!("bad queue name {name:?}: use 1 to 64 characters of [A-Za-z0-9._:-]")))
    }
}

/// A URL with credentials that prints itself redacted.
#[derive(Clone)]
pub struct SecretUrl {
    raw: String,
    redacted: String,
}

impl SecretUrl {
    /// Parses a URL, or a comma-separated list of URLs (the nodes of a Redis Cluster).
    pub fn parse(name: &str, raw: &str, schemes: &[&str]) -> Result<Self> {
        let mut redacted = Vec::new();
        for one in raw.split(',').map(str::trim) {
            let parsed = url::Url::parse(one).map_err(|e| {
                Error::usage(format!(
                    "{name} is not a valid URL ({e}); expected something like {}://host:port",
                    schemes[0]
                ))
            })?;
            if !schemes.contains(&parsed.scheme()) {
                return Err(Error::usage(format!(
                    "{name} has scheme {:?}; expected {}",
                    parsed.scheme(),
                    schemes.join(" or ")
                )));
            }
            if parsed.host_str().is_none_or(str::is_empty) {
                return Err(Error::usage(format!("{name} names no host")));
            }
            redacted.push(redact(&parsed));
        }
        Ok(SecretUrl { raw: raw.to_string(), redacted: redacted.join(",") })
    }

    /// The URL with its password; hand it only to a client library.
    pub fn expose(&self) -> &str {
        &self.raw
    }
}

fn redact(url: &url::Url) -> String {
    let mut url = url.clone();
    if url.password().is_some() {
        let _ = url.set_password(Some("***"));
    }
    url.to_string()
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted)
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_print_without_their_password() {
        let u = SecretUrl::parse("X", "mysql://app:hunter2@db:3306/stockq", &["mysql"]).unwrap();
        assert_eq!(u.to_string(), "mysql://app:***@db:3306/stockq");
        assert_eq!(format!("{u:?}"), "mysql://app:***@db:3306/stockq");
        assert!(!format!("{u:?}").contains("hunter2"));
        assert_eq!(u.expose(), "mysql://app:hunter2@db:3306/stockq");
        let nodes = SecretUrl::parse("X", "redis://:pw@a:7000,redis://:pw@b:7001", &["redis"]).unwrap();
        assert_eq!(nodes.to_string(), "redis://:***@a:7000,redis://:***@b:7001");
    }

    #[test]
    fn settings_new_takes_the_defaults_of_the_flags() {
        let s = Settings::new(DEFAULT_REDIS_URL, DEFAULT_DATABASE_URL, DEFAULT_QUEUE).unwrap();
        assert_eq!(s.delivery.visibility_timeout, Duration::from_secs(10));
        assert_eq!(s.janitor.interval, Duration::from_secs(5));
        assert_eq!(s.janitor.check_interval, Duration::from_secs(60));
        assert_eq!((s.delivery.max_attempts, s.redis.shards, s.http.port), (5, 1, None));
    }

    #[test]
    fn bad_urls_and_names_are_usage_errors() {
        assert_eq!(SecretUrl::parse("X", "nope", &["redis"]).unwrap_err().exit_code(), 2);
        assert_eq!(SecretUrl::parse("X", "http://h", &["redis"]).unwrap_err().exit_code(), 2);
        assert!(validate_queue_name("orders").is_ok());
        assert!(validate_queue_name("a{b}").is_err());
        assert!(validate_queue_name("").is_err());
    }

    #[test]
    fn trusted_proxies_are_addresses_and_cidr_ranges() {
        let trusted = TrustedProxies::parse(" 10.0.0.5, 192.168.0.0/16,,fd00::/8, ::1 ").unwrap();
        let yes = ["10.0.0.5", "192.168.7.9", "192.168.255.255", "fd12::1", "::1", "::ffff:10.0.0.5"];
        for ip in yes {
            assert!(trusted.contains(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["10.0.0.6", "192.169.0.1", "fe80::1", "::2", "0.0.0.0"] {
            assert!(!trusted.contains(ip.parse().unwrap()), "{ip}");
        }
        let everything = TrustedProxies::parse("0.0.0.0/0").unwrap();
        assert!(everything.contains("203.0.113.9".parse().unwrap()));
        assert!(!everything.contains("2001:db8::1".parse().unwrap()), "an IPv4 range holds no IPv6 address");
        assert!(TrustedProxies::parse("").unwrap().0.is_empty());
        assert!(TrustedProxies::parse("::/0").unwrap().contains("2001:db8::1".parse().unwrap()));
    }

    #[test]
    fn bad_trusted_proxies_say_which_entry_and_how_to_write_it() {
        let cases = [
            ("10.0.0.300", "\"10.0.0.300\" is not an IP address"),
            ("10.0.0.0/33", "prefix length that is not 0 to 32"),
            ("fd00::/129", "prefix length that is not 0 to 128"),
            ("10.0.0.0/x", "prefix length"),
            ("10.0.0.1/8", "write 10.0.0.0/8"),
            ("fd00::1/8", "write fd00::/8"),
            ("proxy.internal", "not an IP address"),
        ];
        for (list, says) in cases {
            let e = TrustedProxies::parse(&format!("10.0.0.5,{list}")).unwrap_err();
            assert!(e.contains(says) && !e.contains('\n'), "{list}: {e}");
        }
    }

    #[test]
    fn connection_limits_are_checked_against_each_other() {
        let base = || GlobalArgs::defaults(DEFAULT_REDIS_URL, DEFAULT_DATABASE_URL, DEFAULT_QUEUE);
        let s = Settings::from_args(&base()).unwrap();
        assert_eq!((s.http.max_connections, s.http.max_connections_per_address), (1024, 256));
        let raised = GlobalArgs { max_connections_per_address: 1024, ..base() };
        assert!(Settings::from_args(&raised).is_ok(), "a shop behind one proxy may give it every connection");
        for (total, per_address) in [(1024, 1025), (1024, 0), (0, 0), (MAX_MAX_CONNECTIONS + 1, 1)] {
            let args =
                GlobalArgs { max_connections: total, max_connections_per_address: per_address, ..base() };
            let e = Settings::from_args(&args).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{total}/{per_address}");
        }
        let bad = GlobalArgs { trusted_proxies: Some("10.0.0.0/40".into()), ..base() };
        let e = Settings::from_args(&bad).unwrap_err().to_string();
        assert!(e.starts_with("STOCKQ_TRUSTED_PROXIES: \"10.0.0.0/40\""), "{e}");
    }
}
