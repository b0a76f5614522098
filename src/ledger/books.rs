//! What the check reads, and what changes the books besides a batch: a dead-lettered event
//! settled as dropped, an operator's stock change.

use std::collections::HashMap;

use sqlx::{Executor, MySql, QueryBuilder, Row, Transaction};

use super::{CALL_TIMEOUT, IN_CHUNK, Ledger, Settled, Status, push_list, read_settled};
use crate::error::{Result, bounded};
use crate::event::Event;

/// The MySQL side of a consistency check, read in one consistent snapshot.
#[derive(Debug, Default)]
pub(crate) struct Books {
    pub(crate) stock: HashMap<i64, i64>,
    /// Applied rows whose claim is numbered after the asked sequence: (product, claim, qty).
    pub(crate) applied_since: Vec<(i64, i64, i64)>,
    /// Operator adjustments numbered after the asked sequence: (product, seq, delta).
    pub(crate) adjusted_since: Vec<(i64, i64, i64)>,
    /// `stock_log` rows of the event ids asked about.
    pub(crate) held: HashMap<String, HeldRow>,
}

/// The `stock_log` row of an event the check found held in Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HeldRow {
    pub(crate) status: Status,
    pub(crate) seq: Option<i64>,
    /// `None` for rows written before claims were numbered: older than any snapshot.
    pub(crate) claim_seq: Option<i64>,
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

    /// The highest sequence number MySQL has recorded (reservations, claims, adjustments).
    pub(crate) async fn max_seq(&self) -> Result<i64> {
        bounded("mysql (max seq)", CALL_TIMEOUT, async {
            sqlx::query_scalar::<_, i64>(
                "SELECT GREATEST(COALESCE((SELECT MAX(seq) FROM stock_log), 0), \
                                 COALESCE((SELECT MAX(claim_seq) FROM stock_log), 0), \
                                 COALESCE((SELECT MAX(seq) FROM stock_adjustments), 0))",
            )
            .fetch_one(&self.pool)
            .await
        })
        .await
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
    let applied_since = sqlx::query_as::<_, (i64, i64, i64)>(
        "SELECT product_id, claim_seq, qty FROM stock_log WHERE claim_seq > ? AND status = 'applied'",
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
    let mut held = HashMap::with_capacity(event_ids.len());
    for chunk in event_ids.chunks(IN_CHUNK) {
        let mut q = QueryBuilder::<MySql>::new(
            "SELECT event_id, status, seq, claim_seq FROM stock_log WHERE event_id IN (",
        );
        push_list(&mut q, chunk.iter().map(|id| id.to_string()));
        q.push(")");
        for row in q.build().fetch_all(&mut *conn).await? {
            let status: String = row.try_get(1)?;
            let row_of =
                HeldRow { status: Status::parse(&status), seq: row.try_get(2)?, claim_seq: row.try_get(3)? };
            held.insert(row.try_get::<String, _>(0)?, row_of);
        }
    }
    Ok(Books { stock: stock.into_iter().collect(), applied_since, adjusted_since, held })
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
        let stock = bounded("mysql (stock)", CALL_TIMEOUT, async {
            sqlx::query_scalar::<_, i64>("SELECT stock FROM products WHERE id = ? FOR UPDATE")
                .bind(product_id)
                .fetch_one(&mut *tx)
                .await
        })
        .await?;
        Ok(Adjustment { tx, product_id, stock })
    }
}

impl Adjustment {
    /// The product's stock, as locked.
    pub(crate) fn stock(&self) -> i64 {
        self.stock
    }

    /// Moves the stock by `delta`, which the caller has checked keeps it non-negative, and
    /// commits it with a `stock_adjustments` row stamped `seq`: the sequence number of the
    /// same move in Redis, by which the check orders the two stores' histories.
    pub(crate) async fn commit(self, delta: i64, seq: i64) -> Result<()> {
        let Adjustment { mut tx, product_id, stock } = self;
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
