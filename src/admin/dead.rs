//! Dead letters: list, requeue and drop (docs/commands.md).
//!
//! A valid event in `{q}:dead` still holds its reservation. `requeue` sends it on to pending;
//! `drop` first settles it in MySQL as rejected (unless an earlier delivery applied it), so a
//! worker still holding it can no longer apply it, and then removes it and gives its stock
//! back in one script: dropping twice returns nothing twice.
//!
//! A long MySQL outage can leave millions of dead letters, and one LRANGE of them all would
//! hold Redis for seconds: every read here is a chunk of at most [`CHUNK`] envelopes.

use super::Page;
use crate::error::{Error, Result};
use crate::event::DeadLetter;
use crate::ledger::Ledger;
use crate::queue::{Dropped, Entry, Queue, Shards};

/// Envelopes read by one LRANGE.
pub(crate) const CHUNK: usize = 1000;

/// Which dead letters an operation applies to.
#[derive(Debug, Clone)]
pub(crate) enum Selection {
    All,
    /// Every dead letter whose event has this id.
    EventId(String),
    /// Every dead letter whose reason holds this text (any case).
    Reason(String),
}

impl Selection {
    fn selects(&self, letter: &DeadLetter) -> bool {
        match self {
            Selection::All => true,
            Selection::EventId(id) => letter.event().is_some_and(|e| &e.event_id == id),
            Selection::Reason(text) => letter.reason.to_lowercase().contains(&text.to_lowercase()),
        }
    }

    /// In words, for the audit.
    pub(crate) fn described(&self) -> String {
        match self {
            Selection::All => "all".into(),
            Selection::EventId(id) => format!("event {id}"),
            Selection::Reason(text) => format!("reason {text:?}"),
        }
    }
}

/// Dead letters read at most by a listing or a count by reason.
pub(crate) const SCAN_BUDGET: usize = 100_000;

/// The reasons of the dead letters (their first [`SCAN_BUDGET`] of each shard), each with
/// how many hold it, the most first; and whether every letter was read.
pub(crate) async fn reasons(shards: &Shards) -> Result<(Vec<(String, u64)>, bool)> {
    let mut counts: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    let mut complete = true;
    for queue in shards.all() {
        let mut pos = 0;
        loop {
            if pos >= SCAN_BUDGET {
                complete = false;
                break;
            }
            let chunk = queue.dead_range(pos as isize, (pos + CHUNK - 1) as isize).await?;
            pos += chunk.len();
            for raw in &chunk {
                let reason = DeadLetter::parse(raw)
                    .map_or_else(|| "not an envelope stockq wrote".into(), |l| l.reason);
                *counts.entry(reason).or_default() += 1;
            }
            if chunk.len() < CHUNK {
                break;
            }
        }
    }
    let mut counts: Vec<(String, u64)> = counts.into_iter().collect();
    counts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    Ok((counts, complete))
}

/// The dead letters `which` selects, newest first, up to `limit`, among the first
/// [`SCAN_BUDGET`] of each shard; and how many it selects there.
pub(crate) async fn selected(shards: &Shards, which: &Selection, limit: usize) -> Result<(Vec<Entry>, u64)> {
    let (mut found, mut total) = (Vec::new(), 0);
    for queue in shards.all() {
        let mut pos = 0;
        while pos < SCAN_BUDGET {
            let chunk = queue.dead_range(pos as isize, (pos + CHUNK - 1) as isize).await?;
            pos += chunk.len();
            let short = chunk.len() < CHUNK;
            for raw in chunk {
                if DeadLetter::parse(&raw).is_some_and(|l| which.selects(&l)) {
                    total += 1;
                    if found.len() < limit {
                        found.push(raw);
                    }
                }
            }
            if short {
                break;
            }
        }
    }
    Ok((found, total))
}

/// A page of the dead letters of every shard, shard after shard and newest first within
/// each, read a chunk at a time.
pub(crate) struct Listing<'a> {
    queues: &'a [Queue],
    total: u64,
    shard: usize,
    /// The next position to read in the current shard's list.
    pos: usize,
    /// Envelopes of the page not read yet.
    left: usize,
}

impl<'a> Listing<'a> {
    pub(crate) async fn open(shards: &'a Shards, page: Page) -> Result<Listing<'a>> {
        let mut lens = Vec::with_capacity(shards.len());
        for queue in shards.all() {
            lens.push(queue.dead_len().await?);
        }
        let (mut shard, mut pos) = (0, page.offset);
        while let Some(&len) = lens.get(shard)
            && pos as u64 >= len
        {
            pos -= len as usize;
            shard += 1;
        }
        Ok(Listing {
            queues: shards.all(),
            total: lens.iter().sum(),
            shard,
            pos,
            left: page.limit.unwrap_or(usize::MAX),
        })
    }

    /// Dead letters in every shard when the listing was opened.
    pub(crate) fn total(&self) -> u64 {
        self.total
    }

    /// The next envelopes of the page as stored; none when the page is done.
    pub(crate) async fn next_chunk(&mut self) -> Result<Vec<Entry>> {
        while self.left > 0 && self.shard < self.queues.len() {
            let n = self.left.min(CHUNK);
            let (start, stop) = (self.pos as isize, (self.pos + n - 1) as isize);
            let chunk = self.queues[self.shard].dead_range(start, stop).await?;
            // a short read is the end of this shard's list, however long LLEN said it was
            if chunk.len() < n {
                (self.shard, self.pos) = (self.shard + 1, 0);
            } else {
                self.pos += n;
            }
            if !chunk.is_empty() {
                self.left -= chunk.len();
                return Ok(chunk);
            }
        }
        Ok(Vec::new())
    }
}

/// The dead letters `which` selects, as they were when the sweep began: shard by shard, and
/// oldest first within each, read a chunk at a time, for an action that removes some of them
/// as it goes. Envelopes stockq did not write are never selected.
///
/// The janitor adds dead letters at the head of a list; reading from the tail keeps the
/// positions still to read where they were meanwhile. What arrives after the start is left
/// for the next run, so that `requeue --all` cannot chase entries that keep failing.
struct Sweep<'a> {
    queues: &'a [Queue],
    which: &'a Selection,
    /// The shard being swept.
    shard: usize,
    /// Envelopes of that shard present at its start and not read yet (`None`: not started).
    unread: Option<usize>,
    /// Envelopes read and left in the list: they sit between the tail and the next chunk.
    kept: usize,
    /// The envelopes of the last chunk not looked at yet, the oldest last.
    chunk: Vec<Entry>,
    found: u64,
}

impl<'a> Sweep<'a> {
    fn new(shards: &'a Shards, which: &'a Selection) -> Sweep<'a> {
        Sweep { queues: shards.all(), which, shard: 0, unread: None, kept: 0, chunk: Vec::new(), found: 0 }
    }

    /// The next selected dead letter and its shard, or `None` when the sweep is done. The
    /// caller takes it out of the list, unless it says [`Sweep::keep`].
    async fn next(&mut self) -> Result<Option<(&'a Queue, DeadLetter)>> {
        while let Some(queue) = self.queues.get(self.shard) {
            if let Some(raw) = self.chunk.pop() {
                match chosen(&raw, self.which) {
                    Some(letter) => {
                        self.found += 1;
                        return Ok(Some((queue, letter)));
                    }
                    None => self.kept += 1,
                }
                continue;
            }
            let unread = match self.unread {
                Some(unread) => unread,
                None => queue.dead_len().await? as usize,
            };
            if unread == 0 {
                (self.shard, self.unread, self.kept) = (self.shard + 1, None, 0);
                continue;
            }
            let n = unread.min(CHUNK);
            let (start, stop) = (-((self.kept + n) as isize), -((self.kept + 1) as isize));
            self.chunk = queue.dead_range(start, stop).await?;
            self.unread = Some(if self.chunk.is_empty() { 0 } else { unread - n });
        }
        Ok(None)
    }

    /// The letter last handed out stays in the list.
    fn keep(&mut self) {
        self.kept += 1;
    }

    /// Ends the sweep: an event id that selected nothing is bad input.
    fn finish(self) -> Result<()> {
        match self.which {
            Selection::EventId(id) if self.found == 0 => {
                Err(Error::usage(format!("no dead letter holds event {id:?} (see `stockq dead list`)")))
            }
            _ => Ok(()),
        }
    }
}

fn chosen(raw: &[u8], which: &Selection) -> Option<DeadLetter> {
    DeadLetter::parse(raw).filter(|letter| which.selects(letter))
}

/// Sends dead letters back to pending; returns (moved, left). Entries that are not valid
/// events stay: they would only come straight back.
pub(crate) async fn requeue(shards: &Shards, which: &Selection) -> Result<(u64, u64)> {
    let (mut moved, mut skipped) = (0, 0);
    let mut sweep = Sweep::new(shards, which);
    while let Some((queue, letter)) = sweep.next().await? {
        if letter.event().is_none() {
            skipped += 1;
            sweep.keep();
            continue;
        }
        // not moved: another operator got to it first, and it has left the list all the same
        moved += u64::from(queue.dead_requeue(&letter.raw, &letter.entry).await?);
    }
    sweep.finish()?;
    Ok((moved, skipped))
}

/// Discards dead letters, giving back the stock each valid one still holds. Returns
/// (dropped, units given back).
pub(crate) async fn drop(shards: &Shards, ledger: &Ledger, which: &Selection) -> Result<(u64, i64)> {
    let (mut dropped, mut given) = (0, 0);
    let mut sweep = Sweep::new(shards, which);
    while let Some((queue, letter)) = sweep.next().await? {
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
        if queue.dead_drop(&letter.raw, &letter.entry, event).await? {
            dropped += 1;
            given += event.map_or(0, |d| d.give_back);
        }
    }
    sweep.finish()?;
    Ok((dropped, given))
}
