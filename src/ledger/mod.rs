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

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use sqlx::mysql::{MySqlPool, MySqlPoolOptions};
use sqlx::{Connection, Executor, MySql, QueryBuilder, Row};

use crate::config::Settings;
use crate::error::{Result, bounded};

pub(crate) use books::Books;
pub use migrate::migrate;

/// How long a MySQL call (a batch transaction included) may take before it counts as failed.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// Session lock-wait timeout, in seconds: a batch waiting on a row held elsewhere gives up
/// (error 1205, retried) instead of hanging on to its claim.
const LOCK_WAIT_TIMEOUT_SECS: u32 = 5;
/// Largest IN list sent in one statement when reading many event ids.
const IN_CHUNK: usize = 1000;

/// The MySQL outcome of one event of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
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
}

impl Outcome {
    /// Whether the reservation's Redis stock must be given back on acknowledgement.
    pub(crate) fn gives_back(self) -> bool {
        matches!(self, Outcome::Rejected | Outcome::AlreadyRejected | Outcome::Duplicate)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    Applied,
    Rejected,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Applied => "applied",
            Status::Rejected => "rejected",
        }
    }

    fn parse(s: &str) -> Status {
        if s == "applied" { Status::Applied } else { Status::Rejected }
    }
}

/// A `stock_log` row as the queue needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Settled {
    pub(crate) status: Status,
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
        let pool = MySqlPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(Duration::from_secs(5))
            .after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute(sqlx::AssertSqlSafe(format!(
                        "SET SESSION tx_isolation = 'READ-COMMITTED', \
                         SESSION innodb_lock_wait_timeout = {LOCK_WAIT_TIMEOUT_SECS}"
                    )))
                    .await?;
                    Ok(())
                })
            })
            .connect_lazy_with(options.clone());
        // One direct connection first: a pool would hide the cause behind "pool timed out".
        bounded("mysql (connect)", Duration::from_secs(5), async {
            let mut conn = sqlx::MySqlConnection::connect_with(&options).await?;
            sqlx::query("SELECT 1 FROM products LIMIT 1").execute(&mut conn).await?;
            conn.close().await
        })
        .await
        .map_err(|e| migrate::describe_connect_error(e, settings))?;
        Ok(Ledger { pool })
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

/// Reads the `stock_log` rows of some event ids, in chunks.
async fn read_settled<'a, C>(
    conn: &mut C,
    event_ids: impl Iterator<Item = &'a str>,
) -> Result<HashMap<String, Settled>, sqlx::Error>
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
            settled.insert(id, Settled { status: Status::parse(&status), seq });
        }
    }
    Ok(settled)
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
