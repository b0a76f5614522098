//! Errors, and the decision each one carries.
//!
//! Two questions matter when something fails: *should the caller retry* (a lost connection, a
//! deadlock, a lock-wait timeout will pass) and *what should the process exit with* (SPEC §3:
//! 2 for bad usage or input, 1 for anything else). [`Error`] answers both, so that loops retry
//! what is transient and `main` maps everything else to one line on stderr and a status.

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

    /// A call did not answer within its bound.
    #[error("{what} did not answer within {}", humantime::format_duration(*.after))]
    Timeout { what: &'static str, after: Duration },

    /// The operation was refused because of the state of the stores (not a bad argument).
    #[error("{0}")]
    Refused(String),

    /// A stock change whose MySQL COMMIT failed after its Redis half moved, left unsettled:
    /// `why` says what is known of it and what `stockq check` will show.
    #[error("stock change of product {product_id} by {delta:+} (seq {seq}): {why}")]
    StockChange { product_id: i64, delta: i64, seq: i64, why: String },
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

    /// The process exit status for this error (SPEC §3).
    pub(crate) fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) => 2,
            _ => 1,
        }
    }

    /// The store an error came from, for metrics and logs.
    pub(crate) fn store(&self) -> Option<&'static str> {
        match self {
            Error::Redis(_) => Some("redis"),
            Error::Database(_) | Error::Migrate(_) => Some("mysql"),
            Error::Timeout { what, .. } if what.starts_with("redis") => Some("redis"),
            Error::Timeout { what, .. } if what.starts_with("mysql") => Some("mysql"),
            _ => None,
        }
    }

    /// Whether the same call may succeed if tried again later: connection trouble, timeouts,
    /// MySQL deadlocks and lock-wait timeouts, a concurrent insert of the same event id.
    pub(crate) fn is_transient(&self) -> bool {
        match self {
            Error::Usage(_) | Error::Refused(_) | Error::Migrate(_) | Error::StockChange { .. } => false,
            Error::Timeout { .. } => true,
            Error::Redis(e) => {
                e.is_io_error()
                    || e.is_timeout()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal()
                    || matches!(
                        e.kind(),
                        redis::ErrorKind::Server(redis::ServerErrorKind::BusyLoading)
                            | redis::ErrorKind::Server(redis::ServerErrorKind::TryAgain)
                            | redis::ErrorKind::Server(redis::ServerErrorKind::ClusterDown)
                            | redis::ErrorKind::Server(redis::ServerErrorKind::MasterDown)
                            | redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
                    )
            }
            Error::Database(e) => is_transient_sql(e),
        }
    }
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

fn is_transient_sql(e: &sqlx::Error) -> bool {
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

/// Bounds a future by `after`, naming what timed out.
pub(crate) async fn bounded<T, E>(
    what: &'static str,
    after: Duration,
    fut: impl Future<Output = std::result::Result<T, E>>,
) -> Result<T>
where
    Error: From<E>,
{
    match tokio::time::timeout(after, fut).await {
        Ok(result) => result.map_err(Error::from),
        Err(_) => Err(Error::Timeout { what, after }),
    }
}
