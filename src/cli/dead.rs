//! Dead letters: `dead list`, `dead requeue`, `dead drop`.

use super::{DeadSelection, connect, print};
use crate::admin::Page;
use crate::admin::control;
use crate::admin::dead::{self as letters, Listing, Selection};
use crate::config::Settings;
use crate::error::Result;
use crate::queue::Shards;

/// `stockq dead list [--json] [--limit N] [--offset N]`: printed a chunk at a time as read,
/// so that listing a million dead letters holds one chunk in memory, not all of them.
pub(super) async fn list(settings: &Settings, json: bool, page: Page) -> Result<u8> {
    let shards = Shards::connect(settings).await?;
    let mut listing = Listing::open(&shards, page).await?;
    let mut out = print::DeadLetters::start(listing.total(), page, json);
    loop {
        let chunk = listing.next_chunk().await?;
        if chunk.is_empty() {
            break;
        }
        out.add(&chunk);
    }
    out.finish();
    Ok(0)
}

/// `stockq dead requeue (--all | ID)`
pub(super) async fn requeue(settings: &Settings, which: &DeadSelection) -> Result<u8> {
    let shards = Shards::connect(settings).await?;
    let (moved, skipped) = letters::requeue(&shards, &selection(which)).await?;
    let detail = format!("{}: {moved} requeued", described(which));
    control::audit(&shards, &control::cli_who(), "dead requeue", &detail).await?;
    outln!("requeued {moved}");
    if skipped > 0 {
        outln!("left {skipped} entries that are not valid events (drop them with `stockq dead drop --all`)");
    }
    Ok(0)
}

/// `stockq dead drop (--all | ID)`
pub(super) async fn drop(settings: &Settings, which: &DeadSelection) -> Result<u8> {
    let (shards, ledger) = connect(settings, 1).await?;
    let (dropped, given) = letters::drop(&shards, &ledger, &selection(which)).await?;
    let detail = format!("{}: {dropped} dropped, {given} units given back", described(which));
    control::audit(&shards, &control::cli_who(), "dead drop", &detail).await?;
    outln!("dropped {dropped}, gave back {given} units of stock");
    Ok(0)
}

fn described(which: &DeadSelection) -> String {
    selection(which).described()
}

fn selection(which: &DeadSelection) -> Selection {
    match (&which.id, &which.reason) {
        (_, _) if which.all => Selection::All,
        (Some(id), _) => Selection::EventId(id.clone()),
        (None, Some(reason)) => Selection::Reason(reason.clone()),
        (None, None) => Selection::All,
    }
}

/// `stockq dead list --reason TEXT [--limit N] [--json]`
pub(super) async fn list_reason(settings: &Settings, json: bool, reason: &str, limit: u64) -> Result<u8> {
    let shards = Shards::connect(settings).await?;
    let limit = if limit == 0 { usize::MAX } else { limit as usize };
    let (found, total) = letters::selected(&shards, &Selection::Reason(reason.to_string()), limit).await?;
    let mut out = print::DeadLetters::start(total, Page::new(0, found.len()), json);
    out.add(&found);
    out.finish();
    Ok(0)
}

/// `stockq dead reasons [--json]`
pub(super) async fn reasons(settings: &Settings, json: bool) -> Result<u8> {
    let shards = Shards::connect(settings).await?;
    let (reasons, complete) = letters::reasons(&shards).await?;
    if json {
        let list: Vec<serde_json::Value> =
            reasons.iter().map(|(r, n)| serde_json::json!({"reason": r, "count": n})).collect();
        outln!("{}", serde_json::json!({"reasons": list, "complete": complete}));
        return Ok(0);
    }
    for (reason, n) in &reasons {
        outln!("{n:>8}  {reason}");
    }
    if !complete {
        outln!("(counted among the newest {} of each shard)", letters::SCAN_BUDGET);
    }
    Ok(0)
}
