//! The ledger: MySQL, the source of truth for stock.
//!
//! A batch of events is applied in one transaction. The common case, a batch of first
//! deliveries ([`Ledger::apply_batch`] → `apply_fresh`):
//!
//! 1. insert one `stock_log` row per event, as 'applied': outside the locked window, and the
//!    primary key doubles as the redelivery test (a duplicate key sends the batch to step 1′);
//! 2. lock each distinct product of the batch once, in ascending id order (so two batches
//!    never deadlock on each other's products), with `FORCE INDEX (PRIMARY)` so the lock covers
//!    the named rows only;
//! 3. allocate stock to the events in batch order, so a short stock rejects exactly the
//!    events that do not fit, and mark those rows 'rejected';
//! 4. update every changed product in one statement, and commit. Only then does the worker
//!    acknowledge in Redis.
//!
//! 1′. When an event id is already in `stock_log` (a redelivery after a crash between commit
//! and acknowledgement, or a second reservation under the same id), `apply_checked` locks
//! the products first, reads the batch's rows, and settles each event from what it finds:
//! same reservation (same seq) → its recorded outcome, another reservation → a duplicate.
//!
//! Sessions run at READ COMMITTED: once the product locks are held, the reads see every row
//! committed by a batch that held them before; and no gap locks are taken, so batches
//! inserting unrelated event ids never block each other. A concurrent batch that settles the
//! same event id makes our insert wait for it and then fail with a duplicate key, after which
//! the checked path finds its row.

use std::collections::{BTreeSet, HashMap};
use std::str::FromStr;
use std::time::Duration;

use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions};
use sqlx::{Connection, Executor, MySql, QueryBuilder, Row};

use crate::config::Settings;
use crate::error::{Error, Result, bounded};
use crate::event::Event;

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
    /// its Redis stock goes back (SPEC §7.8).
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

/// The MySQL side of a consistency check, read in one consistent snapshot.
#[derive(Debug, Default)]
pub(crate) struct Books {
    pub(crate) stock: HashMap<i64, i64>,
    /// Per product, units applied by events stamped after the Redis snapshot.
    pub(crate) applied_after: HashMap<i64, i64>,
    /// Per product, operator adjustments stamped after the Redis snapshot.
    pub(crate) adjusted_after: HashMap<i64, i64>,
    /// `stock_log` rows of the event ids asked about.
    pub(crate) settled: HashMap<String, Settled>,
}

/// A handle on the MySQL database.
#[derive(Clone)]
pub struct Ledger {
    pool: MySqlPool,
}

impl Ledger {
    /// Opens a pool of at most `max_connections` and checks that the database answers.
    pub async fn connect(settings: &Settings, max_connections: u32) -> Result<Ledger> {
        let options = connect_options(settings)?;
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
        .map_err(|e| describe_connect_error(e, settings))?;
        Ok(Ledger { pool })
    }

    pub fn pool(&self) -> &MySqlPool {
        &self.pool
    }

    /// Applies a batch of valid events in one transaction (see the module docs).
    pub async fn apply_batch(&self, events: &[Event]) -> Result<Vec<Outcome>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        bounded("mysql (apply batch)", CALL_TIMEOUT, self.apply_batch_unbounded(events)).await
    }

    async fn apply_batch_unbounded(&self, events: &[Event]) -> Result<Vec<Outcome>, sqlx::Error> {
        let distinct_ids: BTreeSet<&str> = events.iter().map(|e| e.event_id.as_str()).collect();
        if distinct_ids.len() == events.len()
            && let Some(outcomes) = self.apply_fresh(events).await?
        {
            return Ok(outcomes);
        }
        self.apply_checked(events).await
    }

    /// The common case, a batch of first deliveries, with the product locks held as briefly
    /// as possible: the `stock_log` rows go in first (as 'applied'), outside the locked
    /// window, and their primary key doubles as the redelivery test. `None` when an event id
    /// is already settled: the transaction is rolled back and [`Self::apply_checked`] runs.
    async fn apply_fresh(&self, events: &[Event]) -> Result<Option<Vec<Outcome>>, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let mut q =
            QueryBuilder::<MySql>::new("INSERT INTO stock_log (event_id, product_id, qty, status, seq) ");
        q.push_values(events, |mut row, event| {
            row.push_bind(event.event_id.clone())
                .push_bind(event.product_id)
                .push_bind(event.qty)
                .push_bind("applied")
                .push_bind(event.seq);
        });
        match q.build().execute(&mut *tx).await {
            Ok(_) => {}
            // code() is the SQLSTATE (23000) for MySQL; the 1062 is the error number
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => return Ok(None),
            Err(e) => return Err(e),
        }

        let mut stock = lock_products(&mut tx, events).await?;
        let before = stock.clone();
        // every id is new here (the insert proved it), so nothing is settled yet
        let outcomes = allocate(events, &mut stock, &mut HashMap::new());
        let ids_with = |wanted: Outcome| -> Vec<String> {
            events
                .iter()
                .zip(&outcomes)
                .filter(|(_, o)| **o == wanted)
                .map(|(e, _)| e.event_id.clone())
                .collect()
        };
        let rejected = ids_with(Outcome::Rejected);
        let unknown = ids_with(Outcome::UnknownProduct);
        if !rejected.is_empty() {
            let mut q =
                QueryBuilder::<MySql>::new("UPDATE stock_log SET status = 'rejected' WHERE event_id IN (");
            push_list(&mut q, rejected.into_iter());
            q.push(")");
            q.build().execute(&mut *tx).await?;
        }
        if !unknown.is_empty() {
            // an unknown product's event is dead-lettered, not settled
            let mut q = QueryBuilder::<MySql>::new("DELETE FROM stock_log WHERE event_id IN (");
            push_list(&mut q, unknown.into_iter());
            q.push(")");
            q.build().execute(&mut *tx).await?;
        }
        update_products(&mut tx, &before, &stock).await?;
        tx.commit().await?;
        Ok(Some(outcomes))
    }

    /// The general case: redeliveries and duplicate event ids, read from `stock_log` under
    /// the product locks (see the module docs).
    async fn apply_checked(&self, events: &[Event]) -> Result<Vec<Outcome>, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let mut stock = lock_products(&mut tx, events).await?;
        let before = stock.clone();

        let mut settled = read_settled(&mut tx, events.iter().map(|e| e.event_id.as_str())).await?;
        let outcomes = allocate(events, &mut stock, &mut settled);
        let new_rows: Vec<(&Event, Status)> = events
            .iter()
            .zip(&outcomes)
            .filter_map(|(e, o)| match o {
                Outcome::Applied => Some((e, Status::Applied)),
                Outcome::Rejected => Some((e, Status::Rejected)),
                _ => None,
            })
            .collect();

        if !new_rows.is_empty() {
            let mut q =
                QueryBuilder::<MySql>::new("INSERT INTO stock_log (event_id, product_id, qty, status, seq) ");
            q.push_values(&new_rows, |mut row, (event, status)| {
                row.push_bind(event.event_id.clone())
                    .push_bind(event.product_id)
                    .push_bind(event.qty)
                    .push_bind(status.as_str())
                    .push_bind(event.seq);
            });
            q.build().execute(&mut *tx).await?;
        }
        update_products(&mut tx, &before, &stock).await?;
        tx.commit().await?;
        Ok(outcomes)
    }

    /// Settles a dead-lettered event as dropped: records it as rejected unless an earlier
    /// delivery settled it, and says whether its Redis stock is to be given back.
    ///
    /// Recording it first makes MySQL the arbiter: a worker that still holds the event (hung
    /// past its claim) will find this row and change nothing.
    pub(crate) async fn settle_dropped(&self, event: &Event) -> Result<bool> {
        bounded("mysql (drop)", CALL_TIMEOUT, async {
            let mut tx = self.pool.begin().await?;
            sqlx::query(
                "INSERT IGNORE INTO stock_log (event_id, product_id, qty, status, seq) \
                 VALUES (?, ?, ?, 'rejected', ?)",
            )
            .bind(&event.event_id)
            .bind(event.product_id)
            .bind(event.qty)
            .bind(event.seq)
            .execute(&mut *tx)
            .await?;
            let row = read_settled(&mut tx, std::iter::once(event.event_id.as_str())).await?;
            tx.commit().await?;
            let row = row.get(&event.event_id).copied();
            // applied by an earlier delivery of this very reservation: nothing to give back
            let applied = matches!(row, Some(Settled { status: Status::Applied, seq }) if seq == event.seq);
            Ok::<_, sqlx::Error>(!applied)
        })
        .await
    }

    /// All product ids, ascending.
    pub(crate) async fn product_ids(&self) -> Result<Vec<i64>> {
        bounded("mysql (products)", CALL_TIMEOUT, async {
            sqlx::query_scalar::<_, i64>("SELECT id FROM products ORDER BY id").fetch_all(&self.pool).await
        })
        .await
    }

    /// The highest sequence number MySQL has recorded.
    pub(crate) async fn max_seq(&self) -> Result<i64> {
        bounded("mysql (max seq)", CALL_TIMEOUT, async {
            sqlx::query_scalar::<_, i64>(
                "SELECT GREATEST(COALESCE((SELECT MAX(seq) FROM stock_log), 0), \
                                 COALESCE((SELECT MAX(seq) FROM stock_adjustments), 0))",
            )
            .fetch_one(&self.pool)
            .await
        })
        .await
    }

    /// Reads the MySQL side of a consistency check in one consistent snapshot, taken after
    /// the Redis snapshot whose sequence number is `seq`.
    pub(crate) async fn read_books(&self, seq: i64, event_ids: &[&str]) -> Result<Books> {
        bounded("mysql (check)", CALL_TIMEOUT * 2, async {
            let mut conn = self.pool.acquire().await?;
            // The session default is READ COMMITTED; this one transaction needs one snapshot.
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ").await?;
            conn.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY").await?;
            let result = async {
                let stock = sqlx::query_as::<_, (i64, i64)>("SELECT id, stock FROM products")
                    .fetch_all(&mut *conn)
                    .await?
                    .into_iter()
                    .collect();
                let applied_after = sqlx::query_as::<_, (i64, i64)>(
                    "SELECT product_id, CAST(SUM(qty) AS SIGNED) FROM stock_log \
                     WHERE seq > ? AND status = 'applied' GROUP BY product_id",
                )
                .bind(seq)
                .fetch_all(&mut *conn)
                .await?;
                let adjusted_after = sqlx::query_as::<_, (i64, i64)>(
                    "SELECT product_id, CAST(SUM(delta) AS SIGNED) FROM stock_adjustments \
                     WHERE seq > ? GROUP BY product_id",
                )
                .bind(seq)
                .fetch_all(&mut *conn)
                .await?;
                let settled = read_settled(&mut conn, event_ids.iter().copied()).await?;
                Ok::<_, sqlx::Error>(Books {
                    stock,
                    applied_after: applied_after.into_iter().collect(),
                    adjusted_after: adjusted_after.into_iter().collect(),
                    settled,
                })
            }
            .await;
            let _ = conn.execute("COMMIT").await;
            result
        })
        .await
    }
}

/// Decides every event of a batch, in batch order, against the locked stock and the rows
/// already settled: the heart of the ledger, kept free of I/O so that it can be tested alone.
///
/// * an event id already settled (or settled earlier in this batch) by the same reservation
///   (same seq) keeps its outcome; by another reservation, it is a duplicate;
/// * otherwise the event takes its quantity if the product has it, and is rejected if not,
///   so a short stock rejects exactly the events that do not fit, and stock never goes
///   negative;
/// * an event whose product is not in `stock` is an unknown product.
///
/// `stock` is left holding the new stock of each product; `settled` gains the new rows.
pub(crate) fn allocate(
    events: &[Event],
    stock: &mut HashMap<i64, i64>,
    settled: &mut HashMap<String, Settled>,
) -> Vec<Outcome> {
    let mut outcomes = Vec::with_capacity(events.len());
    for event in events {
        let outcome = if let Some(row) = settled.get(&event.event_id) {
            match (row.seq == event.seq, row.status) {
                (true, Status::Applied) => Outcome::AlreadyApplied,
                (true, Status::Rejected) => Outcome::AlreadyRejected,
                (false, _) => Outcome::Duplicate,
            }
        } else if let Some(available) = stock.get_mut(&event.product_id) {
            let status = if *available >= event.qty {
                *available -= event.qty;
                Status::Applied
            } else {
                Status::Rejected
            };
            settled.insert(event.event_id.clone(), Settled { status, seq: event.seq });
            match status {
                Status::Applied => Outcome::Applied,
                Status::Rejected => Outcome::Rejected,
            }
        } else {
            Outcome::UnknownProduct
        };
        outcomes.push(outcome);
    }
    outcomes
}

/// Locks the batch's products, each once, in ascending id order, and reads their stock.
/// `FORCE INDEX (PRIMARY)` keeps the plan a range over the named rows: a scan of the whole
/// table would lock every row it passes and make concurrent batches deadlock.
async fn lock_products(
    tx: &mut sqlx::Transaction<'static, MySql>,
    events: &[Event],
) -> Result<HashMap<i64, i64>, sqlx::Error> {
    let products: BTreeSet<i64> = events.iter().map(|e| e.product_id).collect();
    let mut q =
        QueryBuilder::<MySql>::new("SELECT id, stock FROM products FORCE INDEX (PRIMARY) WHERE id IN (");
    push_list(&mut q, products.into_iter());
    q.push(") ORDER BY id FOR UPDATE");
    Ok(q.build_query_as::<(i64, i64)>().fetch_all(&mut **tx).await?.into_iter().collect())
}

/// Writes each product whose stock the batch changed, in one statement. The rows are locked
/// and the new values computed from the locked read, so setting them is exact.
async fn update_products(
    tx: &mut sqlx::Transaction<'static, MySql>,
    before: &HashMap<i64, i64>,
    after: &HashMap<i64, i64>,
) -> Result<(), sqlx::Error> {
    let mut changed: Vec<(i64, i64)> =
        after.iter().filter(|(id, s)| before.get(id) != Some(s)).map(|(id, s)| (*id, *s)).collect();
    if changed.is_empty() {
        return Ok(());
    }
    changed.sort_unstable();
    let mut q = QueryBuilder::<MySql>::new("UPDATE products FORCE INDEX (PRIMARY) SET stock = CASE id");
    for (id, s) in &changed {
        q.push(" WHEN ").push_bind(*id).push(" THEN ").push_bind(*s);
    }
    q.push(" END WHERE id IN (");
    push_list(&mut q, changed.iter().map(|(id, _)| *id));
    q.push(")");
    q.build().execute(&mut **tx).await?;
    Ok(())
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

/// The database name of `DATABASE_URL`, validated so it can be quoted safely.
pub(crate) fn database_name(settings: &Settings) -> Result<String> {
    let url = url::Url::parse(settings.database_url.expose())
        .map_err(|e| Error::usage(format!("DATABASE_URL is not a valid URL: {e}")))?;
    let name = url.path().trim_start_matches('/').to_string();
    if name.is_empty() {
        return Err(Error::usage("DATABASE_URL names no database (add /stockq to its path)"));
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'$') || name.len() > 64 {
        return Err(Error::usage(format!(
            "database name {name:?} in DATABASE_URL: use letters, digits and _ only"
        )));
    }
    Ok(name)
}

fn connect_options(settings: &Settings) -> Result<MySqlConnectOptions> {
    database_name(settings)?;
    MySqlConnectOptions::from_str(settings.database_url.expose())
        .map_err(|e| Error::usage(format!("DATABASE_URL {} is not usable: {e}", settings.database_url)))
}

/// Creates the database if missing and applies `migrations/`.
pub async fn migrate(settings: &Settings) -> Result<()> {
    let name = database_name(settings)?;
    let mut server_url = url::Url::parse(settings.database_url.expose())
        .map_err(|e| Error::usage(format!("DATABASE_URL is not a valid URL: {e}")))?;
    server_url.set_path("/");
    let server = MySqlConnectOptions::from_str(server_url.as_str())
        .map_err(|e| Error::usage(format!("DATABASE_URL {} is not usable: {e}", settings.database_url)))?;
    bounded("mysql (connect)", Duration::from_secs(8), async {
        let mut conn = sqlx::MySqlConnection::connect_with(&server).await?;
        conn.execute(sqlx::AssertSqlSafe(format!(
            "CREATE DATABASE IF NOT EXISTS `{name}` CHARACTER SET utf8mb4"
        )))
        .await?;
        conn.close().await
    })
    .await
    .map_err(|e| describe_connect_error(e, settings))?;

    let options = connect_options(settings)?;
    let mut conn =
        bounded("mysql (connect)", Duration::from_secs(8), sqlx::MySqlConnection::connect_with(&options))
            .await
            .map_err(|e| describe_connect_error(e, settings))?;
    sqlx::migrate!("./migrations").run(&mut conn).await?;
    let _ = conn.close().await;
    Ok(())
}

/// Turns a failed first contact into one line that says what to do.
fn describe_connect_error(e: Error, settings: &Settings) -> Error {
    let message = crate::queue::one_line(&e.to_string());
    let hint = if message.contains("1146") || message.contains("doesn't exist") {
        "run `stockq migrate` first"
    } else if message.contains("1045") || message.contains("denied") {
        "check the user and password in DATABASE_URL (scripts/services.sh creates stockq/stockq)"
    } else if message.contains("1049") || message.contains("Unknown database") {
        "run `stockq migrate` to create it"
    } else {
        "start it (scripts/services.sh) or set DATABASE_URL"
    };
    match e {
        Error::Usage(_) => e,
        _ => Error::Refused(format!("cannot use MySQL at {} ({message}); {hint}", settings.database_url)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn event(id: u8, product: i64, qty: i64, seq: Option<i64>) -> Event {
        Event { event_id: format!("e{id}"), product_id: product, qty, seq }
    }

    #[test]
    fn a_short_stock_rejects_exactly_what_does_not_fit() {
        let mut stock = HashMap::from([(1, 5)]);
        let events =
            [event(1, 1, 3, Some(1)), event(2, 1, 3, Some(2)), event(3, 1, 2, Some(3)), event(4, 9, 1, None)];
        let outcomes = allocate(&events, &mut stock, &mut HashMap::new());
        assert_eq!(
            outcomes,
            [Outcome::Applied, Outcome::Rejected, Outcome::Applied, Outcome::UnknownProduct]
        );
        assert_eq!(stock[&1], 0);
    }

    #[test]
    fn redeliveries_and_duplicates_are_told_apart_by_seq() {
        let mut settled = HashMap::from([
            ("e1".to_string(), Settled { status: Status::Applied, seq: Some(1) }),
            ("e2".to_string(), Settled { status: Status::Rejected, seq: Some(2) }),
        ]);
        let mut stock = HashMap::from([(1, 10)]);
        let events = [
            event(1, 1, 1, Some(1)),
            event(2, 1, 1, Some(2)),
            event(1, 1, 1, Some(7)),
            event(3, 1, 1, Some(3)),
            event(3, 1, 1, Some(8)),
        ];
        let outcomes = allocate(&events, &mut stock, &mut settled);
        assert_eq!(
            outcomes,
            [
                Outcome::AlreadyApplied,
                Outcome::AlreadyRejected,
                Outcome::Duplicate,
                Outcome::Applied,
                Outcome::Duplicate
            ]
        );
        assert_eq!(stock[&1], 9);
    }

    proptest! {
        /// Whatever the batch, stock never goes negative, what was taken is exactly what the
        /// applied events asked for, an event is rejected only when its product could not
        /// cover it at its turn, and each event id deducts at most once.
        #[test]
        fn allocation_keeps_the_books(
            initial in proptest::collection::vec(0i64..20, 1..5),
            raw in proptest::collection::vec((0u8..12, 0i64..6, 1i64..8, proptest::option::of(0i64..3)), 0..40),
        ) {
            let mut stock: HashMap<i64, i64> =
                initial.iter().enumerate().map(|(i, s)| (i as i64 + 1, *s)).collect();
            let before = stock.clone();
            let events: Vec<Event> = raw.iter().map(|(id, p, q, seq)| event(*id, *p, *q, *seq)).collect();
            let outcomes = allocate(&events, &mut stock, &mut HashMap::new());

            let mut replay = before.clone();
            let mut deducted_ids = std::collections::HashSet::new();
            for (e, o) in events.iter().zip(&outcomes) {
                match o {
                    Outcome::Applied => {
                        let s = replay.get_mut(&e.product_id).unwrap();
                        prop_assert!(*s >= e.qty);
                        *s -= e.qty;
                        prop_assert!(deducted_ids.insert(e.event_id.clone()), "{} deducted twice", e.event_id);
                    }
                    Outcome::Rejected => {
                        prop_assert!(replay[&e.product_id] < e.qty);
                        prop_assert!(deducted_ids.insert(e.event_id.clone()));
                    }
                    Outcome::UnknownProduct => prop_assert!(!before.contains_key(&e.product_id)),
                    Outcome::AlreadyApplied | Outcome::AlreadyRejected | Outcome::Duplicate => {
                        prop_assert!(deducted_ids.contains(&e.event_id));
                    }
                }
            }
            prop_assert_eq!(&replay, &stock);
            prop_assert!(stock.values().all(|s| *s >= 0));
        }
    }
}
