//! One event's `stock_log` row, for `status` when Redis no longer keeps (or never kept) the
//! reservation's record; and the rows a heal after lost Redis writes looks at.

use super::{CALL_TIMEOUT, Ledger};
use crate::error::{Result, bounded};
use crate::queue::{ReservationState, SettledRow};

/// A settled event as MySQL recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LogRow {
    pub(crate) product_id: i64,
    pub(crate) qty: i64,
    /// The row's status: `applied`, `rejected`, `cancelled` or `released`.
    pub(crate) status: ReservationState,
    pub(crate) seq: Option<i64>,
    /// When the row was written, unix ms.
    pub(crate) settled_at: i64,
    pub(crate) buyer: Option<String>,
    /// The buyer limit's epoch the reservation counted in, if a limit counted it.
    pub(crate) limit_epoch: Option<i64>,
    /// The shard whose queue delivered it (NULL before shards were recorded).
    pub(crate) shard: Option<i16>,
}

impl Ledger {
    /// The `stock_log` row of `event_id`, if it was ever settled.
    pub(crate) async fn log_row(&self, event_id: &str) -> Result<Option<LogRow>> {
        let query = sqlx::query_as::<
            _,
            (i64, i32, String, Option<i64>, i64, Option<String>, Option<i64>, Option<i16>),
        >(
            "SELECT product_id, qty, CAST(status AS CHAR), seq, \
             CAST(ROUND(UNIX_TIMESTAMP(created_at) * 1000) AS SIGNED), buyer, limit_epoch, shard \
             FROM stock_log WHERE event_id = ?",
        )
        .bind(event_id)
        .fetch_optional(&self.pool);
        let row = bounded("mysql (status)", CALL_TIMEOUT, query).await?;
        Ok(row.map(|(product_id, qty, status, seq, settled_at, buyer, limit_epoch, shard)| LogRow {
            product_id,
            qty: i64::from(qty),
            status: ReservationState::from(status.as_str()),
            seq,
            settled_at,
            buyer,
            limit_epoch,
            shard,
        }))
    }
}

impl Ledger {
    /// The reservations MySQL applied under a claim numbered after `since`, or released under
    /// a number after it: what a heal after lost Redis writes compares with what Redis
    /// remembers (`crate::heal`). Read by the claim and release indexes; only stamped events
    /// (a `seq`) have records to compare.
    pub(crate) async fn settled_since(&self, since: i64) -> Result<Vec<SettledRow>> {
        let query = sqlx::query_as::<_, (String, i64, i64, i32, String, Option<i16>)>(
            "SELECT event_id, seq, product_id, qty, 'applied', shard FROM stock_log \
             WHERE claim_seq > ? AND status = 'applied' AND seq IS NOT NULL \
             UNION ALL \
             SELECT event_id, seq, product_id, qty, 'released', shard FROM stock_log \
             WHERE release_seq > ? AND status = 'released' AND seq IS NOT NULL",
        )
        .bind(since)
        .bind(since)
        .fetch_all(&self.pool);
        let rows = bounded("mysql (heal)", CALL_TIMEOUT * 2, query).await?;
        Ok(rows
            .into_iter()
            .map(|(event_id, seq, product_id, qty, status, shard)| SettledRow {
                event_id,
                seq,
                status: if status == "released" { "released" } else { "applied" },
                product_id,
                qty: i64::from(qty),
                shard,
            })
            .collect())
    }
}
