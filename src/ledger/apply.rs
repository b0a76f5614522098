//! The workers' batch transaction. A batch of events is applied in one transaction; the
//! common case, a batch of first deliveries ([`Ledger::apply_batch`] → `apply_fresh`):
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
//! same reservation (same seq) → its recorded decision, another reservation → a duplicate.
//!
//! Sessions run at READ COMMITTED: once the product locks are held, the reads see every row
//! committed by a batch that held them before; and no gap locks are taken, so batches
//! inserting unrelated event ids never block each other. A concurrent batch that settles the
//! same event id makes our insert wait for it and then fail with a duplicate key, after which
//! the checked path finds its row.

use std::collections::{BTreeSet, HashMap};

use sqlx::{MySql, QueryBuilder, Row};

use super::{
    CALL_TIMEOUT, ClaimStamp, Decision, Ledger, LogStatus, Logged, insert_log_rows, push_list, read_logged,
};
use crate::error::{Result, bounded};
use crate::event::Event;

impl Ledger {
    /// Applies a batch of valid events in one transaction (see the module docs). `claim` is
    /// the claim that delivered them (see `lua/claim.lua`); every row the batch writes
    /// records it.
    pub async fn apply_batch(&self, events: &[Event], claim: impl Into<ClaimStamp>) -> Result<Vec<Decision>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let claim = claim.into();
        bounded("mysql (apply batch)", CALL_TIMEOUT, self.apply_batch_unbounded(events, claim)).await
    }

    async fn apply_batch_unbounded(
        &self,
        events: &[Event],
        claim_seq: ClaimStamp,
    ) -> Result<Vec<Decision>, sqlx::Error> {
        let distinct_ids: BTreeSet<&str> = events.iter().map(|e| e.event_id.as_str()).collect();
        if distinct_ids.len() == events.len()
            && let Some(decisions) = self.apply_fresh(events, claim_seq).await?
        {
            return Ok(decisions);
        }
        self.apply_checked(events, claim_seq).await
    }

    /// The common case, a batch of first deliveries, with the product locks held as briefly
    /// as possible: the `stock_log` rows go in first (as 'applied'), outside the locked
    /// window, and their primary key doubles as the redelivery test. `None` when an event id
    /// is already settled: the transaction is rolled back and [`Self::apply_checked`] runs.
    ///
    /// Its statements are sent as text with the values written in (`literal`), not prepared:
    /// a batch's size sets the text of its statements, and at a steady rate no two batches
    /// are the same size, so prepared statements would cost a prepare (a round trip and a
    /// parse) per statement per batch and churn the statement cache. Only integers and event
    /// ids checked to be `[A-Za-z0-9._:-]` are written in; a batch with any other id goes the
    /// general (prepared) way.
    async fn apply_fresh(
        &self,
        events: &[Event],
        claim_seq: ClaimStamp,
    ) -> Result<Option<Vec<Decision>>, sqlx::Error> {
        let Some(insert) = literal::insert_applied(events, claim_seq) else { return Ok(None) };
        let mut tx = self.pool.begin().await?;
        match sqlx::raw_sql(sqlx::AssertSqlSafe(insert)).execute(&mut *tx).await {
            Ok(_) => {}
            // code() is the SQLSTATE (23000) for MySQL; the 1062 is the error number
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => return Ok(None),
            Err(e) => return Err(e),
        }

        let products: BTreeSet<i64> = events.iter().map(|e| e.product_id).collect();
        let mut stock = HashMap::with_capacity(products.len());
        for row in
            sqlx::raw_sql(sqlx::AssertSqlSafe(literal::lock_products(&products))).fetch_all(&mut *tx).await?
        {
            stock.insert(row.try_get::<i64, _>(0)?, row.try_get::<i64, _>(1)?);
        }
        let before = stock.clone();
        // every id is new here (the insert proved it), so nothing is settled yet
        let decisions = allocate(events, &mut stock, &mut HashMap::new());
        let ids_with = |wanted: Decision| -> Vec<&str> {
            events
                .iter()
                .zip(&decisions)
                .filter(|(_, o)| **o == wanted)
                .map(|(e, _)| e.event_id.as_str())
                .collect()
        };
        let mut changes = String::new();
        let rejected = ids_with(Decision::Rejected);
        if !rejected.is_empty() {
            changes += &format!(
                "UPDATE stock_log SET status = 'rejected' WHERE event_id IN ({});",
                literal::ids(&rejected)
            );
        }
        let unknown = ids_with(Decision::UnknownProduct);
        if !unknown.is_empty() {
            // an unknown product's event is dead-lettered, not settled
            changes += &format!("DELETE FROM stock_log WHERE event_id IN ({});", literal::ids(&unknown));
        }
        changes += &literal::update_products(&before, &stock);
        if !changes.is_empty() {
            // one round trip for every change, inside the locked window
            sqlx::raw_sql(sqlx::AssertSqlSafe(changes)).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(Some(decisions))
    }

    /// The general case: redeliveries and duplicate event ids, read from `stock_log` under
    /// the product locks (see the module docs).
    async fn apply_checked(
        &self,
        events: &[Event],
        claim_seq: ClaimStamp,
    ) -> Result<Vec<Decision>, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let mut stock = lock_products(&mut tx, events).await?;
        let before = stock.clone();

        let mut settled = read_logged(&mut tx, events.iter().map(|e| e.event_id.as_str())).await?;
        let decisions = allocate(events, &mut stock, &mut settled);
        let new_rows: Vec<(&Event, LogStatus)> = events
            .iter()
            .zip(&decisions)
            .filter_map(|(e, o)| match o {
                Decision::Applied => Some((e, LogStatus::Applied)),
                Decision::Rejected => Some((e, LogStatus::Rejected)),
                _ => None,
            })
            .collect();

        if !new_rows.is_empty() {
            insert_log_rows("INSERT INTO", new_rows.iter().map(|(e, s)| (*e, *s)), claim_seq)
                .build()
                .execute(&mut *tx)
                .await?;
        }
        update_products(&mut tx, &before, &stock).await?;
        tx.commit().await?;
        Ok(decisions)
    }
}

/// Decides every event of a batch, in batch order, against the locked stock and the rows
/// already settled: the heart of the ledger, kept free of I/O so that it can be tested alone.
///
/// * an event id already settled (or settled earlier in this batch) by the same reservation
///   (same seq) keeps its decision; by another reservation, it is a duplicate;
/// * otherwise the event takes its quantity if the product has it, and is rejected if not,
///   so a short stock rejects exactly the events that do not fit, and stock never goes
///   negative;
/// * an event whose product is not in `stock` is an unknown product.
///
/// `stock` is left holding the new stock of each product; `settled` gains the new rows.
fn allocate(
    events: &[Event],
    stock: &mut HashMap<i64, i64>,
    settled: &mut HashMap<String, Logged>,
) -> Vec<Decision> {
    let mut decisions = Vec::with_capacity(events.len());
    for event in events {
        let decision = if let Some(row) = settled.get(&event.event_id) {
            match (row.seq == event.seq, row.status) {
                (true, LogStatus::Applied | LogStatus::Released) => Decision::AlreadyApplied,
                (true, LogStatus::Rejected) => Decision::AlreadyRejected,
                (true, LogStatus::Cancelled) => Decision::AlreadyCancelled,
                (false, _) => Decision::Duplicate,
            }
        } else if let Some(available) = stock.get_mut(&event.product_id) {
            let status = if *available >= event.qty {
                *available -= event.qty;
                LogStatus::Applied
            } else {
                LogStatus::Rejected
            };
            settled.insert(event.event_id.clone(), Logged { status, seq: event.seq });
            if status == LogStatus::Applied { Decision::Applied } else { Decision::Rejected }
        } else {
            Decision::UnknownProduct
        };
        decisions.push(decision);
    }
    decisions
}

/// The text of the fresh path's statements, values written in (see `Ledger::apply_fresh`).
mod literal {
    use std::collections::{BTreeSet, HashMap};
    use std::fmt::Write;

    use crate::event::{Event, validate_buyer, validate_event_id};

    /// `INSERT` of every event's `stock_log` row as 'applied'; `None` when an event id or a
    /// buyer is not one that may be written in.
    pub(super) fn insert_applied(events: &[Event], claim: super::ClaimStamp) -> Option<String> {
        let mut sql = String::with_capacity(64 + events.len() * 128);
        sql.push_str(
            "INSERT INTO stock_log (event_id, product_id, qty, status, seq, claim_seq, buyer, limit_epoch, shard) VALUES ",
        );
        let (claim_seq, shard) =
            (claim.seq, claim.shard.map_or_else(|| "NULL".to_string(), |s| s.to_string()));
        for (i, e) in events.iter().enumerate() {
            validate_event_id(&e.event_id).ok()?;
            let seq = e.seq.map_or_else(|| "NULL".to_string(), |s| s.to_string());
            let buyer = match &e.buyer {
                // the same characters as an event id: nothing in them can end the literal
                Some(b) => validate_buyer(b).ok().map(|()| format!("'{b}'"))?,
                None => "NULL".to_string(),
            };
            let epoch = e.limit_epoch.map_or_else(|| "NULL".to_string(), |x| x.to_string());
            let sep = if i == 0 { "" } else { "," };
            let _ = write!(
                sql,
                "{sep}('{}',{},{},'applied',{seq},{claim_seq},{buyer},{epoch},{shard})",
                e.event_id, e.product_id, e.qty
            );
        }
        Some(sql)
    }

    /// Event ids already checked by [`insert_applied`], quoted and comma-separated.
    pub(super) fn ids(ids: &[&str]) -> String {
        ids.iter().map(|id| format!("'{id}'")).collect::<Vec<_>>().join(",")
    }

    /// See [`super::lock_products`].
    pub(super) fn lock_products(products: &BTreeSet<i64>) -> String {
        let ids: Vec<String> = products.iter().map(i64::to_string).collect();
        format!(
            "SELECT id, stock FROM products FORCE INDEX (PRIMARY) WHERE id IN ({}) ORDER BY id FOR UPDATE",
            ids.join(",")
        )
    }

    /// See [`super::update_products`]; empty when nothing changed.
    pub(super) fn update_products(before: &HashMap<i64, i64>, after: &HashMap<i64, i64>) -> String {
        let changed = super::changed_stock(before, after);
        if changed.is_empty() {
            return String::new();
        }
        let mut sql = String::from("UPDATE products FORCE INDEX (PRIMARY) SET stock = CASE id");
        for (id, stock) in &changed {
            let _ = write!(sql, " WHEN {id} THEN {stock}");
        }
        let ids: Vec<String> = changed.iter().map(|(id, _)| id.to_string()).collect();
        let _ = write!(sql, " END WHERE id IN ({});", ids.join(","));
        sql
    }
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

/// The products whose stock the batch changed, with their new stock, in ascending id order.
fn changed_stock(before: &HashMap<i64, i64>, after: &HashMap<i64, i64>) -> Vec<(i64, i64)> {
    let mut changed: Vec<(i64, i64)> =
        after.iter().filter(|(id, s)| before.get(id) != Some(s)).map(|(id, s)| (*id, *s)).collect();
    changed.sort_unstable();
    changed
}

/// Writes each product whose stock the batch changed, in one statement. The rows are locked
/// and the new values computed from the locked read, so setting them is exact.
async fn update_products(
    tx: &mut sqlx::Transaction<'static, MySql>,
    before: &HashMap<i64, i64>,
    after: &HashMap<i64, i64>,
) -> Result<(), sqlx::Error> {
    let changed = changed_stock(before, after);
    if changed.is_empty() {
        return Ok(());
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn event(id: u8, product: i64, qty: i64, seq: Option<i64>) -> Event {
        Event {
            event_id: format!("e{id}"),
            product_id: product,
            qty,
            seq,
            buyer: None,
            reserved_at: None,
            limit_epoch: None,
        }
    }

    #[test]
    fn a_short_stock_rejects_exactly_what_does_not_fit() {
        let mut stock = HashMap::from([(1, 5)]);
        let events =
            [event(1, 1, 3, Some(1)), event(2, 1, 3, Some(2)), event(3, 1, 2, Some(3)), event(4, 9, 1, None)];
        let decisions = allocate(&events, &mut stock, &mut HashMap::new());
        assert_eq!(
            decisions,
            [Decision::Applied, Decision::Rejected, Decision::Applied, Decision::UnknownProduct]
        );
        assert_eq!(stock[&1], 0);
    }

    #[test]
    fn redeliveries_and_duplicates_are_told_apart_by_seq() {
        let mut settled = HashMap::from([
            ("e1".to_string(), Logged { status: LogStatus::Applied, seq: Some(1) }),
            ("e2".to_string(), Logged { status: LogStatus::Rejected, seq: Some(2) }),
        ]);
        let mut stock = HashMap::from([(1, 10)]);
        let events = [
            event(1, 1, 1, Some(1)),
            event(2, 1, 1, Some(2)),
            event(1, 1, 1, Some(7)),
            event(3, 1, 1, Some(3)),
            event(3, 1, 1, Some(8)),
        ];
        let decisions = allocate(&events, &mut stock, &mut settled);
        assert_eq!(
            decisions,
            [
                Decision::AlreadyApplied,
                Decision::AlreadyRejected,
                Decision::Duplicate,
                Decision::Applied,
                Decision::Duplicate
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
            let decisions = allocate(&events, &mut stock, &mut HashMap::new());

            let mut replay = before.clone();
            let mut deducted_ids = std::collections::HashSet::new();
            for (e, o) in events.iter().zip(&decisions) {
                match o {
                    Decision::Applied => {
                        let s = replay.get_mut(&e.product_id).unwrap();
                        prop_assert!(*s >= e.qty);
                        *s -= e.qty;
                        prop_assert!(deducted_ids.insert(e.event_id.clone()), "{} deducted twice", e.event_id);
                    }
                    Decision::Rejected => {
                        prop_assert!(replay[&e.product_id] < e.qty);
                        prop_assert!(deducted_ids.insert(e.event_id.clone()));
                    }
                    Decision::UnknownProduct => prop_assert!(!before.contains_key(&e.product_id)),
                    Decision::AlreadyApplied | Decision::AlreadyRejected | Decision::Duplicate => {
                        prop_assert!(deducted_ids.contains(&e.event_id));
                    }
                    // only rows written by a cancel say so, and this batch starts with none
                    Decision::AlreadyCancelled => prop_assert!(false, "no cancelled row was settled"),
                }
            }
            prop_assert_eq!(&replay, &stock);
            prop_assert!(stock.values().all(|s| *s >= 0));
        }
    }
}
