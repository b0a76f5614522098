//! One event's `stock_log` row, for `status` when Redis no longer keeps (or never kept) the
//! reservation's record.

use super::{CALL_TIMEOUT, Ledger};
use crate::error::{Result, bounded};

/// A settled event as MySQL recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LogRow {
    pub(crate) product_id: i64,
    pub(crate) qty: i64,
    /// `applied` or `rejected`.
    pub(crate) status: String,
    pub(crate) seq: Option<i64>,
    /// When the row was written, unix ms.
    pub(crate) settled_at: i64,
    pub(crate) buyer: Option<String>,
    /// The buyer limit's epoch the reservation counted in, if a limit counted it.
    pub(crate) limit_epoch: Option<i64>,
}

impl Ledger {
    /// The `stock_log` row of `event_id`, if it was ever settled.
    pub(crate) async fn log_row(&self, event_id: &str) -> Result<Option<LogRow>> {
        let query = sqlx::query_as::<_, (i64, i32, String, Option<i64>, i64, Option<String>, Option<i64>)>(
            "SELECT product_id, qty, CAST(status AS CHAR), seq, \
             CAST(ROUND(UNIX_TIMESTAMP(created_at) * 1000) AS SIGNED), buyer, limit_epoch \
             FROM stock_log WHERE event_id = ?",
        )
        .bind(event_id)
        .fetch_optional(&self.pool);
        let row = bounded("mysql (status)", CALL_TIMEOUT, query).await?;
        Ok(row.map(|(product_id, qty, status, seq, settled_at, buyer, limit_epoch)| LogRow {
            product_id,
            qty: i64::from(qty),
            status,
            seq,
            settled_at,
            buyer,
            limit_epoch,
        }))
    }
}
