//! Dead letters: list, requeue and drop (README "Commands").
//!
//! A valid event in `{q}:dead` still holds its reservation. `requeue` sends it on
//! to pending; `drop` first settles it in MySQL as rejected (unless an earlier delivery
//! applied it), so a worker still holding it can no longer apply it, and then removes it and
//! gives its stock back in one script: dropping twice returns nothing twice.

use crate::error::{Error, Result};
use crate::event::DeadLetter;
use crate::ledger::Ledger;
use crate::queue::{Dropped, Shards};

/// Which dead letters an operation applies to.
#[derive(Debug, Clone)]
pub(crate) enum Selection {
    All,
    /// Every dead letter whose event has this id.
    EventId(String),
}

/// Every dead letter with the index of its shard, newest first within a shard. Envelopes
/// stockq did not write are skipped.
pub(crate) async fn list(shards: &Shards) -> Result<Vec<(usize, DeadLetter)>> {
    let mut letters = Vec::new();
    for (shard, queue) in shards.all().iter().enumerate() {
        let raw = queue.dead_letters().await?;
        letters.extend(raw.iter().filter_map(|r| DeadLetter::parse(r)).map(|d| (shard, d)));
    }
    Ok(letters)
}

fn select(letters: Vec<(usize, DeadLetter)>, which: &Selection) -> Result<Vec<(usize, DeadLetter)>> {
    let chosen: Vec<(usize, DeadLetter)> = match which {
        Selection::All => letters,
        Selection::EventId(id) => {
            letters.into_iter().filter(|(_, d)| d.event().is_some_and(|e| &e.event_id == id)).collect()
        }
    };
    if let Selection::EventId(id) = which
        && chosen.is_empty()
    {
        return Err(Error::usage(format!("no dead letter holds event {id:?} (see `stockq dead list`)")));
    }
    Ok(chosen)
}

/// Sends dead letters back to pending; returns how many moved. Entries that are not valid
/// events stay: they would only come straight back.
pub(crate) async fn requeue(shards: &Shards, which: &Selection) -> Result<(u64, u64)> {
    let chosen = select(list(shards).await?, which)?;
    let mut moved = 0;
    let mut skipped = 0;
    for (shard, letter) in chosen {
        if letter.event().is_none() {
            skipped += 1;
            continue;
        }
        moved += u64::from(shards.all()[shard].dead_requeue(&letter.raw, &letter.entry).await?);
    }
    Ok((moved, skipped))
}

/// Discards dead letters, giving back the stock each valid one still holds. Returns
/// (dropped, units given back).
pub(crate) async fn drop(shards: &Shards, ledger: &Ledger, which: &Selection) -> Result<(u64, i64)> {
    let chosen = select(list(shards).await?, which)?;
    let mut dropped = 0;
    let mut given = 0;
    for (shard, letter) in chosen {
        let event = match letter.event() {
            Some(event) => {
                let give_back = ledger.settle_dropped(&event).await?;
                Some(Dropped {
                    product_id: event.product_id,
                    give_back: if give_back { event.qty } else { 0 },
                    // reserve.lua counted the stamped events in flight
                    counted: if event.seq.is_some() { event.qty } else { 0 },
                })
            }
            None => None,
        };
        if shards.all()[shard].dead_drop(&letter.raw, &letter.entry, event).await? {
            dropped += 1;
            given += event.map_or(0, |d| d.give_back);
        }
    }
    Ok((dropped, given))
}
