//! What the check reads, and what changes the books besides a batch: a dead-lettered event
//! settled as dropped, an operator's stock change.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use sqlx::mysql::{MySqlConnection, MySqlDatabaseError};
use sqlx::{Connection, Executor, MySql, QueryBuilder, Row, Transaction};

use super::{CALL_TIMEOUT, IN_CHUNK, Ledger, LogStatus, Logged, push_list, read_logged};
use crate::backoff::Backoff;
use crate::error::{Result, bounded};
use crate::event::Event;
use crate::queue::shards::shard_of;

/// The MySQL side of a consistency check, read in one consistent snapshot.
#[derive(Debug, Default)]
pub(crate) struct Books {
    pub(crate) stock: HashMap<i64, i64>,
    /// Applied rows whose claim is numbered after the asked sequence: (product, the shard
    /// whose sequence numbered it (`None`: the product's own), claim, qty).
    pub(crate) applied_since: Vec<(i64, Option<i16>, i64, i64)>,
    /// Operator adjustments numbered after the asked sequence, in the product's own shard:
    /// (product, seq, delta).
    pub(crate) adjusted_since: Vec<(i64, i64, i64)>,
    /// Releases numbered after the asked sequence: (product, shard as above, release seq, qty).
    pub(crate) released_since: Vec<(i64, Option<i16>, i64, i64)>,
    /// `stock_log` rows of the event ids asked about.
    pub(crate) held: HashMap<String, HeldRow>,
}

/// The `stock_log` row of an event the check found held in Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HeldRow {
    pub(crate) status: LogStatus,
    pub(crate) seq: Option<i64>,
    /// `None` for rows written before claims were numbered: older than any snapshot.
    pub(crate) claim_seq: Option<i64>,
    /// The number of the release that gave it back, if one did.
    pub(crate) release_seq: Option<i64>,
}

impl Ledger {
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
            let row = read_logged(&mut tx, std::iter::once(event.event_id.as_str())).await?;
            tx.commit().await?;
            let row = row.get(&event.event_id).copied();
            // applied by an earlier delivery of this very reservation: nothing to give back
            let applied =
                matches!(row, Some(Logged { status, seq }) if status.deducted() && seq == event.seq);
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

    /// A product's MySQL stock; `None` for a product MySQL does not know.
    pub(crate) async fn product_stock(&self, product_id: i64) -> Result<Option<i64>> {
        bounded("mysql (product)", CALL_TIMEOUT, async {
            sqlx::query_scalar::<_, i64>("SELECT stock FROM products WHERE id = ?")
                .bind(product_id)
                .fetch_optional(&self.pool)
                .await
        })
        .await
    }

    /// The highest sequence number MySQL has recorded (reservations, claims, adjustments).
    pub(crate) async fn max_seq(&self) -> Result<i64> {
        bounded("mysql (max seq)", CALL_TIMEOUT, async {
            sqlx::query_scalar::<_, i64>(
                "SELECT GREATEST(COALESCE((SELECT MAX(seq) FROM stock_log), 0), \
                                 COALESCE((SELECT MAX(claim_seq) FROM stock_log), 0), \
                                 COALESCE((SELECT MAX(release_seq) FROM stock_log), 0), \
                                 COALESCE((SELECT MAX(seq) FROM stock_adjustments), 0))",
            )
            .fetch_one(&self.pool)
            .await
        })
        .await
    }

    /// The highest number MySQL has recorded from each of `shards` shards' sequences, as far
    /// as the latest rows tell: each row's numbers come from the shard that delivered it (its
    /// product's, or a spread product's bucket), each adjustment's from its product's. With one
    /// shard it is [`Ledger::max_seq`]; with more, the newest rows of each number (read down
    /// the indexes, a few hundred per shard) are grouped by shard, and a shard none of them
    /// belongs to is `None`.
    pub(crate) async fn max_seq_per_shard(&self, shards: usize) -> Result<Vec<Option<i64>>> {
        if shards <= 1 {
            return Ok(vec![Some(self.max_seq().await?)]);
        }
        let newest = (200 * shards) as i64;
        let mut highest = vec![None; shards];
        for sql in [
            "SELECT product_id, shard, claim_seq FROM stock_log WHERE claim_seq IS NOT NULL ORDER BY claim_seq DESC LIMIT ?",
            "SELECT product_id, shard, seq FROM stock_log WHERE seq IS NOT NULL ORDER BY seq DESC LIMIT ?",
            "SELECT product_id, shard, release_seq FROM stock_log WHERE release_seq IS NOT NULL \
             ORDER BY release_seq DESC LIMIT ?",
            "SELECT product_id, NULL, seq FROM stock_adjustments ORDER BY seq DESC LIMIT ?",
        ] {
            let query = sqlx::query_as::<_, (i64, Option<i16>, i64)>(sql).bind(newest).fetch_all(&self.pool);
            for (product_id, shard, seq) in bounded("mysql (max seq)", CALL_TIMEOUT, query).await? {
                let index = shard
                    .and_then(|s| usize::try_from(s).ok())
                    .filter(|s| *s < shards)
                    .unwrap_or_else(|| shard_of(product_id, shards));
                let shard = &mut highest[index];
                *shard = Some(shard.map_or(seq, |s: i64| s.max(seq)));
            }
        }
        Ok(highest)
    }

    /// Reads the MySQL side of a consistency check in one consistent snapshot, taken after
    /// every Redis snapshot of the check; `since` is the lowest of their sequence numbers.
    /// Each part is bounded by what happened since the first Redis snapshot or by what
    /// workers hold, never by the backlog.
    pub(crate) async fn read_books(&self, since: i64, event_ids: &[&str]) -> Result<Books> {
        bounded("mysql (check)", CALL_TIMEOUT * 2, async {
            let mut conn = self.pool.acquire().await?;
            // The session default is READ COMMITTED; this one transaction needs one snapshot.
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ").await?;
            conn.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY").await?;
            let result = read_books_in(&mut conn, since, event_ids).await;
            let _ = conn.execute("COMMIT").await;
            result
        })
        .await
    }
}

async fn read_books_in(
    conn: &mut sqlx::MySqlConnection,
    since: i64,
    event_ids: &[&str],
) -> Result<Books, sqlx::Error> {
    let stock =
        sqlx::query_as::<_, (i64, i64)>("SELECT id, stock FROM products").fetch_all(&mut *conn).await?;
    let applied_since = sqlx::query_as::<_, (i64, Option<i16>, i64, i64)>(
        "SELECT product_id, shard, claim_seq, qty FROM stock_log WHERE claim_seq > ? AND status IN ('applied', 'released')",
    )
    .bind(since)
    .fetch_all(&mut *conn)
    .await?;
    let adjusted_since = sqlx::query_as::<_, (i64, i64, i64)>(
        "SELECT product_id, seq, delta FROM stock_adjustments WHERE seq > ?",
    )
    .bind(since)
    .fetch_all(&mut *conn)
    .await?;
    let released_since = sqlx::query_as::<_, (i64, Option<i16>, i64, i64)>(
        "SELECT product_id, shard, release_seq, qty FROM stock_log WHERE release_seq > ?",
    )
    .bind(since)
    .fetch_all(&mut *conn)
    .await?;
    let mut held = HashMap::with_capacity(event_ids.len());
    for chunk in event_ids.chunks(IN_CHUNK) {
        let mut q = QueryBuilder::<MySql>::new(
            "SELECT event_id, status, seq, claim_seq, release_seq FROM stock_log WHERE event_id IN (",
        );
        push_list(&mut q, chunk.iter().map(|id| id.to_string()));
        q.push(")");
        for row in q.build().fetch_all(&mut *conn).await? {
            let status: String = row.try_get(1)?;
            let row_of = HeldRow {
                status: LogStatus::parse(&status),
                seq: row.try_get(2)?,
                claim_seq: row.try_get(3)?,
                release_seq: row.try_get(4)?,
            };
            held.insert(row.try_get::<String, _>(0)?, row_of);
        }
    }
    Ok(Books { stock: stock.into_iter().collect(), applied_since, adjusted_since, released_since, held })
}

impl Ledger {
    /// `stock_log` rows: (applied, all).
    pub(crate) async fn log_counts(&self) -> Result<(u64, u64)> {
        let (applied, rows): (i64, i64) = sqlx::query_as(
            "SELECT CAST(COALESCE(SUM(status = 'applied'), 0) AS SIGNED), COUNT(*) FROM stock_log",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok((applied as u64, rows as u64))
    }

    /// Products 1..=`n`, each with `stock`, inserted 5,000 rows a statement: the setup of
    /// `stockq bench`'s check of 100,000 products, which an operator's one-by-one stock change
    /// would take minutes to make. The tables must be empty (see [`Ledger::reset`]).
    pub(crate) async fn insert_products(&self, n: i64, stock: i64) -> Result<()> {
        for first in (1..=n).step_by(5_000) {
            let ids = first..=(first + 4_999).min(n);
            let mut q = QueryBuilder::<MySql>::new("INSERT INTO products (id, stock) ");
            q.push_values(ids, |mut row, id| {
                row.push_bind(id).push_bind(stock);
            });
            q.build().execute(&self.pool).await?;
        }
        Ok(())
    }

    /// Empties every table: for the demo's and the benchmark's databases of their own.
    pub(crate) async fn reset(&self) -> Result<()> {
        for table in ["stock_log", "stock_adjustments", "products"] {
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("TRUNCATE TABLE {table}"))).execute(&self.pool).await?;
        }
        Ok(())
    }
}

/// An operator's stock change under way: the product's row is locked until
/// [`Adjustment::commit`], or rolled back when this is dropped, so that the change can wait
/// for the other store's half without another change slipping in between.
pub(crate) struct Adjustment {
    tx: Transaction<'static, MySql>,
    product_id: i64,
    stock: i64,
    connection_id: u64,
}

impl Ledger {
    /// Locks a product's row for a stock change, creating it (with no stock) if missing.
    pub(crate) async fn begin_adjustment(&self, product_id: i64) -> Result<Adjustment> {
        let mut tx = bounded("mysql (begin)", CALL_TIMEOUT, self.pool.begin()).await?;
        bounded("mysql (stock)", CALL_TIMEOUT, async {
            sqlx::query("INSERT IGNORE INTO products (id, stock) VALUES (?, 0)")
                .bind(product_id)
                .execute(&mut *tx)
                .await
        })
        .await?;
        let (stock, connection_id) = bounded("mysql (stock)", CALL_TIMEOUT, async {
            sqlx::query_as::<_, (i64, u64)>(
                "SELECT stock, CONNECTION_ID() FROM products WHERE id = ? FOR UPDATE",
            )
            .bind(product_id)
            .fetch_one(&mut *tx)
            .await
        })
        .await?;
        Ok(Adjustment { tx, product_id, stock, connection_id })
    }
}

impl Adjustment {
    /// The product's stock, as locked.
    pub(crate) fn stock(&self) -> i64 {
        self.stock
    }

    /// The server's id of the connection that holds the transaction: what
    /// [`Ledger::adjustment_committed`] ends before it trusts an absent row.
    pub(crate) fn connection_id(&self) -> u64 {
        self.connection_id
    }

    /// Moves the stock by `delta`, which the caller has checked keeps it non-negative, and
    /// commits it with a `stock_adjustments` row stamped `seq`: the sequence number of the
    /// same move in Redis, by which the check orders the two stores' histories.
    pub(crate) async fn commit(self, delta: i64, seq: i64) -> Result<()> {
        let Adjustment { mut tx, product_id, stock, .. } = self;
        bounded("mysql (stock)", CALL_TIMEOUT, async {
            sqlx::query("UPDATE products SET stock = ? WHERE id = ?")
                .bind(stock + delta)
                .bind(product_id)
                .execute(&mut *tx)
                .await?;
            sqlx::query("INSERT INTO stock_adjustments (seq, product_id, delta) VALUES (?, ?, ?)")
                .bind(seq)
                .bind(product_id)
                .bind(delta)
                .execute(&mut *tx)
                .await?;
            tx.commit().await
        })
        .await
    }
}

/// How long one attempt to learn a stock change's outcome may take.
const OUTCOME_ATTEMPT: Duration = Duration::from_secs(3);

impl Ledger {
    /// Whether the stock change stamped `seq` committed, asked after its COMMIT failed: the
    /// failure may be a lost answer to a COMMIT the server carried out.
    ///
    /// `holder` is the connection that held the change's transaction. It is ended first
    /// (KILL) and the row is looked up only once the server has let it go: a connection leaves
    /// the process list after its transaction is rolled back, so an absent row then means the
    /// change never commits. Each attempt opens a connection of its own (the pool's may be as
    /// broken as the one that failed); transient failures are retried until `within` passes,
    /// and the last one is returned: the outcome is then unknown.
    pub(crate) async fn adjustment_committed(
        &self,
        product_id: i64,
        seq: i64,
        holder: u64,
        within: Duration,
    ) -> Result<bool> {
        let give_up = Instant::now() + within;
        let mut backoff = Backoff::new();
        loop {
            let left = give_up.saturating_duration_since(Instant::now());
            let failed = match bounded(
                "mysql (stock change outcome)",
                left.min(OUTCOME_ATTEMPT),
                self.look_up_adjustment(product_id, seq, holder),
            )
            .await
            {
                Ok(found) => return Ok(found),
                Err(e) => e,
            };
            let left = give_up.saturating_duration_since(Instant::now());
            if left.is_zero() || !failed.is_transient() {
                return Err(failed);
            }
            backoff.log(&failed, "cannot tell whether a stock change committed; retrying");
            let _ = tokio::time::timeout(left, backoff.pause()).await;
        }
    }

    async fn look_up_adjustment(&self, product_id: i64, seq: i64, holder: u64) -> Result<bool, sqlx::Error> {
        let mut conn = MySqlConnection::connect_with(&self.pool.connect_options()).await?;
        end_connection(&mut conn, holder).await?;
        let rows: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM stock_adjustments WHERE seq = ? AND product_id = ?")
                .bind(seq)
                .bind(product_id)
                .fetch_one(&mut conn)
                .await?;
        let _ = conn.close().await;
        Ok(rows > 0)
    }
}

/// MySQL's answer to a KILL of a connection that is already gone.
const UNKNOWN_THREAD: u16 = 1094;

/// Ends connection `id` and waits until the server has let it go: KILL only marks it, and
/// the connection rolls its transaction back on its way out.
async fn end_connection(conn: &mut MySqlConnection, id: u64) -> Result<(), sqlx::Error> {
    // an integer, so safe in the statement's text (KILL takes no placeholder)
    match sqlx::raw_sql(sqlx::AssertSqlSafe(format!("KILL CONNECTION {id}"))).execute(&mut *conn).await {
        Err(sqlx::Error::Database(e))
            if e.try_downcast_ref::<MySqlDatabaseError>().map(MySqlDatabaseError::number)
                == Some(UNKNOWN_THREAD) => {}
        Err(e) => return Err(e),
        Ok(_) => {}
    }
    let alive = "SELECT COUNT(*) FROM information_schema.processlist WHERE id = ?";
    while sqlx::query_scalar::<_, i64>(alive).bind(id).fetch_one(&mut *conn).await? > 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}
