//! The operators' levers during a sale: a product's sale paused and resumed, deductions
//! paused and resumed queue-wide, and the audit stream every operator action goes to (who,
//! what, when), whether from the command line or the dashboard.

use crate::error::{Error, Result};
use crate::queue::{AuditEntry, Paused, Shards};

/// Who acts from the command line: `cli:<user>@<host>`.
pub(crate) fn cli_who() -> String {
    let user =
        std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_else(|_| "unknown".into());
    let host = hostname::get().map(|h| h.to_string_lossy().into_owned()).unwrap_or_else(|_| "unknown".into());
    format!("cli:{user}@{host}")
}

/// Appends an operator action to the audit stream (the first shard's `{q}:audit`). The
/// action is done by then: an entry that cannot be written (Redis full, or gone) is a warning
/// in the log, which names the action all the same, not a failure of the action.
pub(crate) async fn audit(shards: &Shards, who: &str, action: &str, detail: &str) -> Result<()> {
    tracing::info!(who, action, detail, "operator action");
    if let Err(e) = shards.first().audit(who, action, detail).await {
        tracing::warn!(who, action, detail, error = %e, "the action is done; its audit entry could not be written");
    }
    Ok(())
}

/// The latest `count` operator actions, newest first.
pub(crate) async fn audit_entries(shards: &Shards, count: usize) -> Result<Vec<AuditEntry>> {
    shards.first().audit_entries(count).await
}

/// Pauses the sale of `product_id`: its reservations are refused `paused` (nothing taken)
/// on every shard, its stock, holds, confirms, cancels and deductions untouched. Returns
/// false when it was paused already.
pub(crate) async fn pause_product(shards: &Shards, product_id: i64, who: &str) -> Result<bool> {
    known(shards, product_id).await?;
    // every shard, whatever the first said: a pause cut short by an error is completed by the
    // next one (each shard keeps the time of its first)
    let since = crate::backoff::now_ms() as i64;
    let mut changed = false;
    for queue in shards.all() {
        changed |= queue.set_product_paused(product_id, Some(since)).await?;
    }
    let detail = format!("product {product_id}{}", if changed { "" } else { " (already paused)" });
    audit(shards, who, "stock pause", &detail).await?;
    Ok(changed)
}

/// Resumes the sale of `product_id`. Returns false when it was not paused.
pub(crate) async fn resume_product(shards: &Shards, product_id: i64, who: &str) -> Result<bool> {
    known(shards, product_id).await?;
    let mut changed = false;
    for queue in shards.all() {
        changed |= queue.set_product_paused(product_id, None).await?;
    }
    let detail = format!("product {product_id}{}", if changed { "" } else { " (was not paused)" });
    audit(shards, who, "stock resume", &detail).await?;
    Ok(changed)
}

/// Every product whose sale is paused, with since when.
pub(crate) async fn paused_products(shards: &Shards) -> Result<Vec<(i64, i64)>> {
    let mut all = Vec::new();
    for queue in shards.all() {
        for paused in queue.paused_products().await? {
            if !all.iter().any(|(p, _)| *p == paused.0) {
                all.push(paused);
            }
        }
    }
    all.sort_unstable();
    Ok(all)
}

/// Pauses every worker's claims queue-wide (reservations go on). Returns false when they
/// were paused already.
pub(crate) async fn pause_deductions(shards: &Shards, who: &str) -> Result<bool> {
    let was = shards.first().deductions_paused().await?;
    if was.is_none() {
        shards.first().set_deductions_paused(Some((crate::backoff::now_ms() as i64, who))).await?;
        // every worker has read it once this returns: none starts a batch after it (one it
        // had begun finishes)
        tokio::time::sleep(crate::worker::PAUSE_LOOK_EVERY + std::time::Duration::from_millis(50)).await;
    }
    audit(shards, who, "pause", if was.is_some() { "deductions (already paused)" } else { "deductions" })
        .await?;
    Ok(was.is_none())
}

/// Resumes every worker's claims. Returns false when they were not paused.
pub(crate) async fn resume_deductions(shards: &Shards, who: &str) -> Result<bool> {
    let was = shards.first().deductions_paused().await?;
    shards.first().set_deductions_paused(None).await?;
    audit(shards, who, "resume", if was.is_none() { "deductions (were not paused)" } else { "deductions" })
        .await?;
    Ok(was.is_some())
}

/// Whether deductions are paused, since when, by whom.
pub(crate) async fn deductions_paused(shards: &Shards) -> Result<Option<Paused>> {
    shards.first().deductions_paused().await
}

/// A product Redis has stock for: pausing one that does not exist is a mistake to tell.
async fn known(shards: &Shards, product_id: i64) -> Result<()> {
    match crate::spread::total_stock(shards, product_id).await? {
        Some(_) => Ok(()),
        None => Err(Error::usage(format!(
            "unknown product {product_id}: stock it first with `stockq stock set {product_id} <qty>`"
        ))),
    }
}
