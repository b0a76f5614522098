//! The ledger: MySQL, the source of truth for stock, and the only code that talks to it.
//!
//! - `apply`: the workers' batch transaction, and the pure allocation at its heart;
//! - `books`: what the check reads, and what changes the books besides a batch (a dead letter
//!   settled as dropped, an operator's stock change);
//! - `migrate`: the schema, the database URL, and what a failed first contact means.

mod apply;
mod books;
mod lookup;
mod migrate;
mod release;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use sqlx::mysql::{MySqlPool, MySqlPoolOptions};
use sqlx::{Connection, Executor, MySql, QueryBuilder, Row};

use crate::config::Settings;
use crate::error::{Result, bounded};

pub(crate) use books::Books;
pub use migrate::migrate;
pub(crate) use release::Release;

/// How long a MySQL call (a batch transaction included) may take before it counts as failed.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// Session lock-wait timeout, in seconds: a batch waiting on a row held elsewhere gives up
/// (error 1205, retried) instead of hanging on to its claim.
const LOCK_WAIT_TIMEOUT_SECS: u32 = 5;
/// Largest IN list sent in one statement when reading many event ids.
const IN_CHUNK: usize = 1000;

/// What MySQL decided for one event of a batch. (An outcome is something else: how a
/// reservation ended, as `{q}:outcomes` announces it.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Deducted now.
    Applied,
    /// Not enough MySQL stock: recorded as rejected; its Redis stock goes back.
    Rejected,
    /// Settled as applied by an earlier delivery of the same reservation.
    AlreadyApplied,
    /// Settled as rejected by an earlier delivery; its Redis stock still goes back (once: the
    /// give-back rides on the entry's removal).
    AlreadyRejected,
    /// Another reservation with the same event id was settled: this one deducts nothing and
    /// its Redis stock goes back (README "How it works").
    Duplicate,
    /// The product is not in `products`: dead-lettered.
    UnknownProduct,
    /// Settled as cancelled by an earlier delivery (the reservation was cancelled before
    /// MySQL deducted it): removed without a give-back, which came with the cancel.
    AlreadyCancelled,
}

impl Decision {
    /// Whether the reservation's Redis stock must be given back on acknowledgement.
    pub(crate) fn gives_back(self) -> bool {
        matches!(self, Decision::Rejected | Decision::AlreadyRejected | Decision::Duplicate)
    }
}

/// A `stock_log` row's status, the column's ENUM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LogStatus {
    Applied,
    Rejected,
    /// Cancelled before any delivery deducted it: no delivery ever will.
    Cancelled,
    /// Applied, then given back by a release.
    Released,
}

impl LogStatus {
    fn as_str(self) -> &'static str {
        match self {
            LogStatus::Applied => "applied",
            LogStatus::Rejected => "rejected",
            LogStatus::Cancelled => "cancelled",
            LogStatus::Released => "released",
        }
    }

    fn parse(s: &str) -> LogStatus {
        match s {
            "applied" => LogStatus::Applied,
            "cancelled" => LogStatus::Cancelled,
            "released" => LogStatus::Released,
            _ => LogStatus::Rejected,
        }
    }

    /// Whether MySQL deducted the event (and may have given it back since).
    pub(crate) fn deducted(self) -> bool {
        matches!(self, LogStatus::Applied | LogStatus::Released)
    }
}

/// What `stock_log` holds for one event id, as a batch or a cancel needs it: the row's status
/// and the seq of the reservation it recorded (another seq: another reservation, same id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Logged {
    pub(crate) status: LogStatus,
    pub(crate) seq: Option<i64>,
}

/// A handle on the MySQL database. Its pool stays inside the ledger, so every statement stockq
/// sends is one of the ledger's methods.
#[derive(Clone)]
pub struct Ledger {
    pool: MySqlPool,
}

impl Ledger {
    /// Opens a pool of at most `max_connections` and checks that the database answers.
    pub async fn connect(settings: &Settings, max_connections: u32) -> Result<Ledger> {
        let options = migrate::DatabaseUrl::parse(settings)?.database;
        // One direct connection first: a pool would hide the cause behind "pool timed out".
        let version = bounded("mysql (connect)", Duration::from_secs(5), async {
            let mut conn = sqlx::MySqlConnection::connect_with(&options).await?;
            sqlx::query("SELECT 1 FROM products LIMIT 1").execute(&mut conn).await?;
            let version: String = sqlx::query_scalar("SELECT VERSION()").fetch_one(&mut conn).await?;
            conn.close().await?;
            Ok::<_, sqlx::Error>(version)
        })
        .await
        .map_err(|e| migrate::describe_connect_error(e, settings))?;
        let session: Arc<str> = session_settings(settings.delivery.visibility_timeout, &version).into();
        let pool = MySqlPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(Duration::from_secs(5))
            .after_connect(move |conn, _| {
                let session = session.clone();
                Box::pin(async move {
                    conn.execute(sqlx::AssertSqlSafe(session.to_string())).await?;
                    Ok(())
                })
            })
            .connect_lazy_with(options);
        Ok(Ledger { pool })
    }

    /// Opens `n` pooled connections now instead of at the first batches: the first seconds of a
    /// sale are when the queue is deepest, and a lazily opened pool spends them connecting.
    /// Best effort: a connection that cannot be opened now is opened (and its error reported)
    /// when a batch needs it.
    pub(crate) async fn warm_up(&self, n: u32) {
        let opened = futures::future::join_all((0..n).map(|_| self.pool.acquire())).await;
        drop(opened);
    }

    /// Whether the database answers within `within`.
    pub(crate) async fn ping(&self, within: Duration) -> Result<()> {
        bounded("mysql (ping)", within, sqlx::query("SELECT 1").execute(&self.pool)).await?;
        Ok(())
    }

    /// Closes the pool: idle connections now, the others as they come back; any later call
    /// fails.
    pub async fn close(&self) {
        self.pool.close().await
    }
}

/// The `SET SESSION` statement every pooled connection runs first: READ COMMITTED and the
/// lock-wait timeout (see `apply`), and on MariaDB an idle-transaction timeout of the
/// visibility timeout (whole seconds, rounded up, at least one).
///
/// A worker frozen in the middle of a batch (SIGSTOP, a paused VM) sends nothing more, but
/// its transaction keeps the batch's product rows and `stock_log` keys locked. Its claims are
/// recovered after one visibility timeout; without a bound on the server side the worker that
/// takes them over would meet the frozen locks and fail with lock-wait timeouts for as long as
/// the freeze lasts. With it, MariaDB ends the frozen session (and rolls its transaction back)
/// about when the claims are recovered. A live batch is never idle that long: its statements
/// follow each other with no call elsewhere in between. A stock change waits on one Redis call
/// inside its transaction; should that outlast the bound, its COMMIT fails and the change is
/// settled as any failed COMMIT is (see `admin::stock`).
///
/// MySQL has no such variable (`wait_timeout` would also end the pool's idle connections),
/// so there the lock-wait timeout alone bounds what a frozen worker costs others: each of their
/// attempts waits at most that long, and is retried.
fn session_settings(visibility_timeout: Duration, server_version: &str) -> String {
    let mut sql = format!(
        "SET SESSION tx_isolation = 'READ-COMMITTED', \
         SESSION innodb_lock_wait_timeout = {LOCK_WAIT_TIMEOUT_SECS}"
    );
    if has_idle_transaction_timeout(server_version) {
        let secs = visibility_timeout.as_millis().div_ceil(1000).max(1);
        sql.push_str(&format!(", SESSION idle_transaction_timeout = {secs}"));
    }
    sql
}

/// Whether the server is MariaDB 10.3 or later, where `idle_transaction_timeout` exists.
fn has_idle_transaction_timeout(server_version: &str) -> bool {
    if !server_version.contains("MariaDB") {
        return false;
    }
    // old MariaDB servers put a MySQL-compatible "5.5.5-" before their own version
    let version = server_version.trim_start_matches("5.5.5-");
    let mut parts = version.split(|c: char| !c.is_ascii_digit()).map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor) >= (10, 3),
        _ => false,
    }
}

/// Reads what `stock_log` holds for some event ids, in chunks.
async fn read_logged<'a, C>(
    conn: &mut C,
    event_ids: impl Iterator<Item = &'a str>,
) -> Result<HashMap<String, Logged>, sqlx::Error>
where
    for<'c> &'c mut C: Executor<'c, Database = MySql>,
{
    let ids: BTreeSet<&str> = event_ids.collect();
    let ids: Vec<&str> = ids.into_iter().collect();
    let mut settled = HashMap::with_capacity(ids.len());
    for chunk in ids.chunks(IN_CHUNK) {
        let mut q =
            QueryBuilder::<MySql>::new("SELECT event_id, status, seq FROM stock_log WHERE event_id IN (");
        push_list(&mut q, chunk.iter().map(|id| id.to_string()));
        q.push(")");
        for row in q.build().fetch_all(&mut *conn).await? {
            let id: String = row.try_get(0)?;
            let status: String = row.try_get(1)?;
            let seq: Option<i64> = row.try_get(2)?;
            settled.insert(id, Logged { status: LogStatus::parse(&status), seq });
        }
    }
    Ok(settled)
}

/// What a batch's rows record of the claim that delivered it: its number in its shard's
/// sequence (`lua/claim.lua`), and that shard (`None` for a queue that is not sharded). The
/// consistency check orders each row against its own shard's snapshot (src/check.rs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimStamp {
    pub seq: i64,
    pub shard: Option<u16>,
}

impl From<i64> for ClaimStamp {
    /// A claim of a queue that is not sharded.
    fn from(seq: i64) -> Self {
        ClaimStamp { seq, shard: None }
    }
}

/// `INSERT [IGNORE] INTO stock_log`, one row per (event, status), each stamped with its
/// claim: the prepared form shared by a batch and by the settling of cancelled events.
fn insert_log_rows<'e>(
    insert: &str,
    rows: impl IntoIterator<Item = (&'e crate::event::Event, LogStatus)>,
    claim: ClaimStamp,
) -> QueryBuilder<MySql> {
    let mut q = QueryBuilder::new(format!(
        "{insert} stock_log (event_id, product_id, qty, status, seq, claim_seq, buyer, limit_epoch, shard) "
    ));
    q.push_values(rows, |mut row, (event, status)| {
        row.push_bind(event.event_id.clone())
            .push_bind(event.product_id)
            .push_bind(event.qty)
            .push_bind(status.as_str())
            .push_bind(event.seq)
            .push_bind(claim.seq)
            .push_bind(event.buyer.clone())
            .push_bind(event.limit_epoch)
            .push_bind(claim.shard);
    });
    q
}

fn push_list<T>(q: &mut QueryBuilder<MySql>, values: impl Iterator<Item = T>)
where
    T: 'static + for<'q> sqlx::Encode<'q, MySql> + sqlx::Type<MySql>,
{
    let mut list = q.separated(", ");
    for v in values {
        list.push_bind(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mariadb_sessions_end_a_transaction_idle_for_one_visibility_timeout() {
        let mariadb = "10.11.19-MariaDB-0+deb12u1";
        let secs = |d| session_settings(d, mariadb).rsplit(" = ").next().unwrap().to_string();
        assert_eq!(secs(Duration::from_secs(10)), "10");
        assert_eq!(secs(Duration::from_millis(2500)), "3");
        assert_eq!(secs(Duration::from_millis(100)), "1");
        assert!(session_settings(Duration::from_secs(1), "5.5.5-10.6.1-MariaDB").contains("idle_"));
        for other in ["8.0.36", "8.4.0-log", "10.2.44-MariaDB", "5.5.5-10.1.48-MariaDB"] {
            let sql = session_settings(Duration::from_secs(10), other);
            assert!(!sql.contains("idle_transaction_timeout"), "{other}: {sql}");
            assert!(sql.contains("innodb_lock_wait_timeout = 5"));
        }
    }
}
