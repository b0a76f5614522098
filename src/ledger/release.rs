//! What MySQL does for a cancel: settle a cancelled event that some delivery may have
//! deducted, and give back the quantity of an applied one (a release).

use std::collections::BTreeMap;

use sqlx::{MySql, QueryBuilder};

use super::{CALL_TIMEOUT, ClaimStamp, Ledger, LogStatus, Logged, insert_log_rows, push_list, read_logged};
use crate::error::{Result, bounded};
use crate::event::Event;

/// What MySQL made of one release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Release {
    /// The quantity went back now, or an earlier attempt gave it back.
    Released,
    /// MySQL never deducted this event (no applied row): nothing to give back.
    NotDeducted,
}

impl Ledger {
    /// Settles events whose reservation was cancelled while an earlier delivery may have
    /// committed them: a `cancelled` row is written for each event that has none, so no
    /// delivery ever deducts it, and each event's answer says whether MySQL had deducted it
    /// (then it must be released). Rows written here carry `claim_seq` like any batch's.
    pub(crate) async fn settle_cancelled(
        &self,
        events: &[Event],
        claim_seq: ClaimStamp,
    ) -> Result<Vec<bool>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        bounded("mysql (cancelled)", CALL_TIMEOUT, async {
            let mut tx = self.pool.begin().await?;
            let rows = events.iter().map(|e| (e, LogStatus::Cancelled));
            insert_log_rows("INSERT IGNORE INTO", rows, claim_seq).build().execute(&mut *tx).await?;
            let rows = read_logged(&mut tx, events.iter().map(|e| e.event_id.as_str())).await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(
                events
                    .iter()
                    .map(|e| {
                        matches!(rows.get(&e.event_id), Some(Logged { status, seq }) if status.deducted() && *seq == e.seq)
                    })
                    .collect(),
            )
        })
        .await
    }

    /// Gives back the quantity of applied events in one transaction: each `stock_log` row
    /// moves from `applied` to `released` (stamped `release_seq`) and its product's stock
    /// goes up, exactly once however often this is called for the same event, because the
    /// row's state changes only once.
    pub(crate) async fn apply_releases(&self, events: &[Event], release_seq: i64) -> Result<Vec<Release>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        bounded("mysql (release)", CALL_TIMEOUT, async {
            let mut tx = self.pool.begin().await?;
            // lock the products first, in ascending order, as batches do: no deadlock between them
            let products: std::collections::BTreeSet<i64> = events.iter().map(|e| e.product_id).collect();
            let mut q =
                QueryBuilder::<MySql>::new("SELECT id FROM products FORCE INDEX (PRIMARY) WHERE id IN (");
            push_list(&mut q, products.into_iter());
            q.push(") ORDER BY id FOR UPDATE");
            q.build().execute(&mut *tx).await?;
            let before = read_logged(&mut tx, events.iter().map(|e| e.event_id.as_str())).await?;
            let mut back: BTreeMap<i64, i64> = BTreeMap::new();
            let mut answers = Vec::with_capacity(events.len());
            for event in events {
                let answer = match before.get(&event.event_id) {
                    Some(Logged { status, seq }) if *seq == event.seq && status.deducted() => {
                        let changed = sqlx::query(
                            "UPDATE stock_log SET status = 'released', release_seq = ? \
                             WHERE event_id = ? AND status = 'applied'",
                        )
                        .bind(release_seq)
                        .bind(&event.event_id)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                        if changed == 1 {
                            *back.entry(event.product_id).or_default() += event.qty;
                        }
                        Release::Released
                    }
                    _ => Release::NotDeducted,
                };
                answers.push(answer);
            }
            for (product_id, qty) in back {
                sqlx::query("UPDATE products SET stock = stock + ? WHERE id = ?")
                    .bind(qty)
                    .bind(product_id)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok::<_, sqlx::Error>(answers)
        })
        .await
    }
}
