//! Errors, and the decision each one carries.
//!
//! Two questions matter when something fails: *should the caller retry* (a lost connection, a
//! deadlock, a lock-wait timeout will pass) and *what should the process exit with* (see
//! docs/commands.md: 2 for bad usage or input, 1 for anything else). [`Error`] answers both, so that
//! loops retry what is transient and `main` maps everything else to one line on stderr and a
//! status.
//!
//! A failure that has a cause keeps it as its `source()`, and also prints it in its message:
//! the binary shows one line (`to_string()`), and that line must say why.

use std::time::Duration;

/// The library's error type.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad command-line input, configuration or arguments: exit status 2.
    #[error("{0}")]
    Usage(String),

    /// Redis refused or failed a command, or could not be reached.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),

    /// MySQL refused or failed a statement, or could not be reached.
    #[error("mysql: {0}")]
    Database(#[from] sqlx::Error),

    /// Applying the migrations failed.
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),

    /// A call to a store did not answer within its bound. `what` names the call as the user
    /// reads it (`redis (claim)`).
    #[error("{what} did not answer within {}", humantime::format_duration(*.after))]
    Timeout { store: Store, what: &'static str, after: Duration },

    /// The first contact with a store failed: it is down, or refuses the credentials, or lacks
    /// the database or the schema. `target` is its URL with the password redacted; `hint` says
    /// what to do about it.
    #[error("{} at {target} ({}); {hint}", .store.cannot_use(), one_line(&.source.to_string()))]
    Connect {
        store: Store,
        target: String,
        hint: &'static str,
        #[source]
        source: Box<Error>,
    },

    /// A store the process connects to in the background has not answered yet.
    #[error("not connected yet: {why}")]
    NotConnected { store: Store, why: String },

    /// The SIGTERM/SIGINT handlers could not be installed, so a process could not stop
    /// gracefully: it does not start.
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] std::io::Error),

    /// The HTTP endpoint could not bind its port.
    #[error("cannot listen on port {port}: {source}")]
    Listen {
        port: u16,
        #[source]
        source: std::io::Error,
    },

    /// The HTTP endpoint stopped serving on an I/O error.
    #[error("HTTP server on port {port} failed: {source}")]
    Serve {
        port: u16,
        #[source]
        source: std::io::Error,
    },

    /// The benchmark could not start or drive the processes it measures (its workers, `serve`);
    /// `what` is the step that failed.
    #[error("cannot {what}: {source}")]
    Spawn {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },

    /// A call that this reservation shared with others (a group: `queue::group`) failed; each
    /// of them gets the same failure.
    #[error("{0}")]
    Shared(std::sync::Arc<Error>),

    /// A shard is being healed after Redis lost writes (docs/operations.md): its stock is set
    /// from MySQL meanwhile, so changes wait. Transient: a heal takes about a second.
    #[error("Redis lost writes and this shard is being healed from MySQL; try again in a few seconds")]
    Healing,

    /// A worker's claim/apply loop ended by a panic: the process stops (the others finish
    /// what they hold) and exits 1, so that its supervisor restarts it whole rather than
    /// leave it heartbeating with fewer loops, or none.
    #[error("a consumer loop crashed ({0}); the worker stopped to be restarted")]
    LoopCrashed(String),

    /// The demo's or the benchmark's workers left entries in the queue past their deadline.
    #[error(
        "the workers did not drain the queue within {} ({pending} pending, {processing} processing)",
        humantime::format_duration(*.within)
    )]
    NotDrained { within: Duration, pending: u64, processing: u64 },

    /// A stock change whose MySQL COMMIT failed after its Redis half moved, left unsettled:
    /// `why` says what is known of it and what `stockq check` will show.
    #[error("stock change of product {product_id} by {delta:+} (seq {seq}): {why}")]
    StockChange { product_id: i64, delta: i64, seq: i64, why: String },
}

/// The two stores, to say which one failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    Redis,
    Mysql,
}

impl Store {
    /// The store's name in metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Store::Redis => "redis",
            Store::Mysql => "mysql",
        }
    }

    /// How a failed first contact reads. Reaching Redis is all its first contact does;
    /// MySQL's also proves the credentials, the database and the schema, hence "use".
    fn cannot_use(self) -> &'static str {
        match self {
            Store::Redis => "cannot reach Redis",
            Store::Mysql => "cannot use MySQL",
        }
    }
}

impl From<redis::ParsingError> for Error {
    fn from(e: redis::ParsingError) -> Self {
        Error::Redis(e.into())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn usage(message: impl Into<String>) -> Self {
        Error::Usage(message.into())
    }

    /// The process exit status for this error (docs/commands.md, "Exit statuses").
    pub(crate) fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) => 2,
            Error::Shared(e) => e.exit_code(),
            _ => 1,
        }
    }

    /// The store an error came from, for metrics and logs.
    pub(crate) fn store(&self) -> Option<Store> {
        match self {
            Error::Redis(_) => Some(Store::Redis),
            Error::Database(_) | Error::Migrate(_) => Some(Store::Mysql),
            Error::Timeout { store, .. }
            | Error::Connect { store, .. }
            | Error::NotConnected { store, .. } => Some(*store),
            Error::Usage(_)
            | Error::Signals(_)
            | Error::Listen { .. }
            | Error::Serve { .. }
            | Error::Spawn { .. }
            | Error::LoopCrashed(_)
            | Error::NotDrained { .. } => None,
            Error::Healing => Some(Store::Redis),
            Error::Shared(e) => e.store(),
            Error::StockChange { .. } => Some(Store::Mysql),
        }
    }

    /// Whether the same call may succeed if tried again later: connection trouble, timeouts,
    /// MySQL deadlocks and lock-wait timeouts, a concurrent insert of the same event id.
    ///
    /// A failed first contact is not: a command that cannot reach a store at start-up says so
    /// at once instead of waiting for it.
    pub(crate) fn is_transient(&self) -> bool {
        match self {
            Error::Timeout { .. } | Error::NotConnected { .. } | Error::Healing => true,
            Error::Shared(e) => e.is_transient(),
            Error::Redis(e) => is_transient_redis(e),
            Error::Database(e) => is_transient_sql(e),
            Error::Usage(_)
            | Error::Migrate(_)
            | Error::Connect { .. }
            | Error::Signals(_)
            | Error::Listen { .. }
            | Error::Serve { .. }
            | Error::Spawn { .. }
            | Error::LoopCrashed(_)
            | Error::NotDrained { .. }
            | Error::StockChange { .. } => false,
        }
    }
}

fn is_transient_redis(e: &redis::RedisError) -> bool {
    use redis::ServerErrorKind::{BusyLoading, ClusterDown, MasterDown, ReadOnly, TryAgain};
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || matches!(
            e.kind(),
            redis::ErrorKind::Server(BusyLoading | TryAgain | ClusterDown | MasterDown | ReadOnly)
        )
}

impl Error {
    /// The MySQL error number, when the server answered with an error (`code()` would be the
    /// SQLSTATE, shared by many numbers).
    pub(crate) fn mysql_number(&self) -> Option<u16> {
        match self {
            Error::Database(sqlx::Error::Database(db)) => {
                db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>().map(|e| e.number())
            }
            _ => None,
        }
    }

    /// Whether MySQL refused a statement for good because of the data it carries (a CHECK
    /// constraint, a trigger's SIGNAL, a value out of range): sent again, the same data fails
    /// the same way. Not so a transient failure, nor one that says the database itself is not
    /// ready for stockq (a schema not migrated, missing rights, a read-only or full server),
    /// which passes once the database is put right, whatever the data.
    pub(crate) fn blames_the_data(&self) -> bool {
        self.mysql_number()
            .is_some_and(|n| !TRANSIENT_MYSQL_ERRORS.contains(&n) && !DATABASE_MYSQL_ERRORS.contains(&n))
    }
}

/// MySQL error numbers that say the database is not ready for stockq, whatever the data.
const DATABASE_MYSQL_ERRORS: &[u16] = &[
    1021, // disk full
    1037, // out of memory
    1041, // out of memory
    1044, // access denied to the database
    1045, // access denied
    1046, // no database selected
    1049, // unknown database
    1054, // unknown column: a schema not migrated yet
    1114, // table full
    1142, // command denied on a table
    1143, // command denied on a column
    1146, // no such table: a schema not migrated yet
    1290, // the server runs with --read-only
    1792, // read-only transaction
    1836, // read-only mode
];

/// MySQL error numbers after which the same transaction may well succeed.
const TRANSIENT_MYSQL_ERRORS: &[u16] = &[
    1040, // too many connections
    1053, // server shutdown in progress
    1062, // duplicate key: a concurrent batch settled the same event id first
    1205, // lock wait timeout
    1213, // deadlock
    1927, // connection killed (MariaDB)
    2006, // server has gone away
    2013, // lost connection during query
];

pub(crate) fn is_transient_sql(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        // the codes above are MySQL error numbers; `code()` would be the SQLSTATE
        sqlx::Error::Database(db) => db
            .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
            .is_some_and(|e| TRANSIENT_MYSQL_ERRORS.contains(&e.number())),
        _ => false,
    }
}

/// The error type of a store's client, which tells the store it belongs to.
pub(crate) trait StoreError: Into<Error> {
    const STORE: Store;
}

impl StoreError for redis::RedisError {
    const STORE: Store = Store::Redis;
}

impl StoreError for sqlx::Error {
    const STORE: Store = Store::Mysql;
}

/// Bounds a call to a store by `after`, naming `what` timed out. The store a timeout blames is
/// the one whose client error the call fails with, so the two cannot disagree.
pub(crate) async fn bounded<T, E: StoreError>(
    what: &'static str,
    after: Duration,
    fut: impl Future<Output = std::result::Result<T, E>>,
) -> Result<T> {
    match tokio::time::timeout(after, fut).await {
        Ok(result) => result.map_err(Into::into),
        Err(_) => Err(Error::Timeout { store: E::STORE, what, after }),
    }
}

/// The first line of an error message, without a trailing period: what fits on stderr's one
/// line and in a health probe's answer.
pub(crate) fn one_line(message: &str) -> String {
    message.lines().next().unwrap_or("").trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused() -> Error {
        redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)).into()
    }

    #[tokio::test]
    async fn a_timeout_names_the_store_of_the_call() {
        let never = std::future::pending::<std::result::Result<(), sqlx::Error>>();
        let e = bounded("mysql (ping)", Duration::from_millis(1), never).await.unwrap_err();
        assert_eq!(e.store(), Some(Store::Mysql));
        assert!(e.is_transient());
        assert_eq!(e.to_string(), "mysql (ping) did not answer within 1ms");
    }

    #[test]
    fn a_failed_first_contact_keeps_its_cause_and_is_final() {
        let e = Error::Connect {
            store: Store::Redis,
            target: "redis://:***@db:6379".into(),
            hint: "start it",
            source: Box::new(refused()),
        };
        assert!(e.to_string().starts_with("cannot reach Redis at redis://:***@db:6379 (redis: "));
        assert!(e.to_string().ends_with("); start it"));
        let cause = std::error::Error::source(&e).and_then(|s| s.downcast_ref::<Box<Error>>());
        assert!(cause.is_some_and(|c| c.is_transient()), "the cause is kept, typed");
        assert!(!e.is_transient());
        assert_eq!((e.store(), e.exit_code()), (Some(Store::Redis), 1));
    }

    #[test]
    fn only_usage_exits_2() {
        let io = || std::io::Error::other("boom");
        assert_eq!(Error::usage("bad").exit_code(), 2);
        for e in [Error::Signals(io()), Error::Listen { port: 1, source: io() }, refused()] {
            assert_eq!(e.exit_code(), 1, "{e}");
        }
    }
}
