//! The checker: per product, `redis_stock == mysql_stock − in_flight`, exact under live load,
//! at a cost that grows with the products and what workers hold, never with the backlog.
//!
//! Reading the two stores one after the other would report false drift whenever an event is
//! between them. The check instead orders both reads against the queue's sequence, which
//! numbers reservations, claims and restocks alike:
//!
//! 1. **Redis, a chunk of products at a time, each chunk in one atomic script**
//!    (snapshot.lua): the sequence `S`, each product's stock and in-flight units (kept by the
//!    scripts in the same steps that move the stock: +qty on reservation, −qty when the entry
//!    is acknowledged, given back or dropped), and the *held* entries: those in processing and
//!    the unsure ones (whose delivery may have committed before its claim expired). Only a
//!    held entry can be applied in MySQL under a claim numbered `≤ S` while still counted in
//!    flight: an entry waiting in pending can only be applied under a later claim.
//! 2. **MySQL, in one consistent snapshot taken after every chunk**: every product's stock,
//!    the `stock_log` rows of the held entries, and what was applied under a claim numbered
//!    after the first chunk's `S` (or restocked after it). Both are bounded by the work done
//!    during the check.
//!
//! Then, per product, against its own chunk's `S`:
//!
//! ```text
//! in_flight = in-flight units − Σ qty of held events MySQL applied under a claim ≤ S
//!                             + Σ qty of listed releases MySQL released under a number ≤ S
//! expected  = mysql_stock + Σ qty applied under claims > S − Σ restocks > S
//!                         − Σ qty released under numbers > S − in_flight
//! delta     = redis_stock − expected           (0 when the stores agree)
//! ```
//!
//! Holds count in flight like queued reservations (taken in Redis, not in MySQL). A cancel
//! takes its units out of flight with the stock it gives back; a release (a cancelled applied
//! reservation) counts −qty from its cancel until MySQL has the quantity back, and sits on
//! `{q}:releases` meanwhile, which the snapshot reads as it reads processing.
//!
//! A rejected event counts as in flight until its acknowledgement gives the stock back; a
//! valid event in `{q}:dead` counts until `dead requeue` or `dead drop` (docs/lifecycle.md,
//! "The exact consistency check"). An event pushed by hand without a seq is not counted in
//! flight: the check is exact for stamped events, and an unstamped one shows as drift only
//! until it is applied. A real drift (a store changed behind stockq's back) shows as a non-zero
//! delta on every run; `repair` adds `−delta` to Redis with INCRBY, so reservations made
//! meanwhile survive.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::error::Result;
use crate::event::Event;
use crate::ledger::{Books, Ledger, LogStatus};
use crate::queue::shards::shard_of;
use crate::queue::{Entry, SNAPSHOT_CHUNK, Shards, Snapshot};

/// One product's books.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProductBooks {
    pub product_id: i64,
    /// Redis stock; `None` when the key is missing (reported as 0).
    pub redis: Option<i64>,
    pub mysql: i64,
    pub in_flight: i64,
    /// What Redis should hold: MySQL stock (as of the Redis snapshot) minus in-flight.
    pub expected_redis: i64,
    /// `redis − expected_redis`: positive means Redis would sell units MySQL does not have.
    pub delta: i64,
}

/// The result of one check.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    /// The Redis sequence number of the snapshot (the highest one, over several shards).
    pub seq: i64,
    pub products: Vec<ProductBooks>,
    #[serde(serialize_with = "as_millis")]
    pub took: Duration,
}

fn as_millis<S: serde::Serializer>(d: &Duration, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_millis() as u64)
}

impl CheckReport {
    pub fn drifts(&self) -> impl Iterator<Item = &ProductBooks> {
        self.products.iter().filter(|p| p.delta != 0)
    }

    pub fn is_consistent(&self) -> bool {
        self.drifts().next().is_none()
    }
}

/// A chunk of one shard's products and what Redis held for them at one instant.
struct Chunk {
    ids: Vec<i64>,
    snap: Snapshot,
}

/// Runs the check once over every product in MySQL: Redis chunk by chunk (each chunk one
/// atomic read with its own sequence), then MySQL in one consistent snapshot.
pub async fn check(shards: &Shards, ledger: &Ledger) -> Result<CheckReport> {
    let started = Instant::now();
    let ids = ledger.product_ids().await?;
    // Every shard's sequence is raised to at least this, so rows written before the check
    // are numbered below every chunk's sequence, whichever shard wrote them.
    let floor = ledger.max_seq().await?;
    let mut by_shard: Vec<Vec<i64>> = vec![Vec::new(); shards.len()];
    for id in ids {
        by_shard[shard_of(id, shards.len())].push(id);
    }
    let mut chunks = Vec::new();
    for (queue, ids) in shards.all().iter().zip(&by_shard) {
        for part in ids.chunks(SNAPSHOT_CHUNK) {
            chunks.push(Chunk { ids: part.to_vec(), snap: queue.snapshot(part, floor).await? });
        }
    }
    let held: Vec<Held> = chunks
        .iter()
        .map(|c| Held { deductions: held_events(&c.snap.held), releases: held_events(&c.snap.releases) })
        .collect();
    let event_ids: BTreeSet<&str> = held
        .iter()
        .flat_map(|h| h.deductions.iter().chain(&h.releases))
        .map(|e| e.event_id.as_str())
        .collect();
    let since = chunks.iter().map(|c| c.snap.seq).min().unwrap_or(floor);
    let books = ledger.read_books(since, &event_ids.into_iter().collect::<Vec<_>>()).await?;
    let after = Since::index(&books);

    let mut products = Vec::new();
    let mut seq = 0;
    for (chunk, held) in chunks.iter().zip(&held) {
        products.extend(chunk_books(chunk, held, &books, &after));
        seq = seq.max(chunk.snap.seq);
    }
    products.sort_unstable_by_key(|p| p.product_id);
    Ok(CheckReport { seq, products, took: started.elapsed() })
}

/// What a chunk's snapshot held that MySQL may already have applied under a number up to
/// its sequence.
struct Held {
    /// Events in processing or unsure.
    deductions: Vec<Event>,
    /// Releases on the releases list.
    releases: Vec<Event>,
}

/// The valid, stamped events among held entries, each reservation once (an entry can be
/// both in processing and unsure). Unstamped events were never counted in flight.
fn held_events(entries: &[Entry]) -> Vec<Event> {
    let mut seen = HashSet::new();
    entries
        .iter()
        .filter_map(|e| Event::parse(e).ok())
        .filter(|e| e.seq.is_some() && seen.insert((e.event_id.clone(), e.seq)))
        .collect()
}

/// MySQL's changes after the first snapshot, by product: (sequence, units).
struct Since {
    applied: HashMap<i64, Vec<(i64, i64)>>,
    adjusted: HashMap<i64, Vec<(i64, i64)>>,
    released: HashMap<i64, Vec<(i64, i64)>>,
}

impl Since {
    fn index(books: &Books) -> Since {
        let group = |rows: &[(i64, i64, i64)]| {
            let mut by: HashMap<i64, Vec<(i64, i64)>> = HashMap::new();
            for &(product_id, seq, units) in rows {
                by.entry(product_id).or_default().push((seq, units));
            }
            by
        };
        Since {
            applied: group(&books.applied_since),
            adjusted: group(&books.adjusted_since),
            released: group(&books.released_since),
        }
    }

    /// Units applied under claims numbered after `seq`, minus restocks and releases numbered
    /// after it.
    fn after(&self, product_id: i64, seq: i64) -> i64 {
        let sum = |rows: Option<&Vec<(i64, i64)>>| {
            rows.map_or(0, |rows| rows.iter().filter(|(s, _)| *s > seq).map(|(_, u)| u).sum::<i64>())
        };
        sum(self.applied.get(&product_id))
            - sum(self.adjusted.get(&product_id))
            - sum(self.released.get(&product_id))
    }
}

/// One chunk's books, against its own sequence `S`:
///
/// ```text
/// in_flight = inflight units − Σ qty of held events MySQL applied under a claim ≤ S
///                            + Σ qty of listed releases MySQL applied under a number ≤ S
/// expected  = mysql + Σ applied under claims > S − Σ restocks > S − Σ releases > S − in_flight
/// ```
///
/// A release lowers the in-flight units by its quantity when Redis gets the stock back and
/// raises them again when it leaves the list, after MySQL has it back: in between, one MySQL
/// applied is counted on the list like a held deduction, with the opposite sign.
fn chunk_books(chunk: &Chunk, held: &Held, books: &Books, since: &Since) -> Vec<ProductBooks> {
    let snap = &chunk.snap;
    let mut applied_held: HashMap<i64, i64> = HashMap::new();
    for event in &held.deductions {
        let applied = books.held.get(&event.event_id).is_some_and(|row| {
            row.status.deducted()
                && row.seq == event.seq
                && row.claim_seq.is_none_or(|claim| claim <= snap.seq)
        });
        if applied {
            *applied_held.entry(event.product_id).or_default() += event.qty;
        }
    }
    for release in &held.releases {
        let released = books.held.get(&release.event_id).is_some_and(|row| {
            row.status == LogStatus::Released
                && row.seq == release.seq
                && row.release_seq.is_some_and(|number| number <= snap.seq)
        });
        if released {
            *applied_held.entry(release.product_id).or_default() -= release.qty;
        }
    }
    let mut products = Vec::with_capacity(chunk.ids.len());
    for (i, &product_id) in chunk.ids.iter().enumerate() {
        let Some(&mysql) = books.stock.get(&product_id) else { continue };
        let redis = snap.stocks[i];
        let in_flight = snap.inflight[i] - applied_held.get(&product_id).copied().unwrap_or(0);
        let expected_redis = mysql + since.after(product_id, snap.seq) - in_flight;
        products.push(ProductBooks {
            product_id,
            redis,
            mysql,
            in_flight,
            expected_redis,
            delta: redis.unwrap_or(0) - expected_redis,
        });
    }
    products
}

/// Heals any shard whose Redis lost writes (`crate::heal`), then runs the check, twice when
/// it finds drift ([`check_twice`]). Without the heal, a Redis that went back in time would
/// show entries it is about to deliver again as drift, and a repair would take their units
/// off for good.
pub(crate) async fn check_confirmed(shards: &Shards, ledger: &Ledger) -> Result<CheckReport> {
    crate::heal::heal_lost_writes(shards, ledger).await?;
    check_twice(shards, ledger).await
}

/// Runs the check and, if it finds drift, once more: only a drift seen twice with the same
/// delta is reported. Real drift persists; this filters the one window the sequence cannot
/// order, an operator's restock caught between its Redis and MySQL halves.
pub(crate) async fn check_twice(shards: &Shards, ledger: &Ledger) -> Result<CheckReport> {
    let first = check(shards, ledger).await?;
    if first.is_consistent() {
        return Ok(first);
    }
    let mut second = check(shards, ledger).await?;
    let seen: HashMap<i64, i64> = first.drifts().map(|p| (p.product_id, p.delta)).collect();
    for p in &mut second.products {
        if p.delta != 0 && seen.get(&p.product_id) != Some(&p.delta) {
            // moved between the two runs: not confirmed; the next run will tell
            p.delta = 0;
        }
    }
    second.took += first.took;
    Ok(second)
}

/// Corrects Redis by each drifting product's delta (INCRBY, never SET). Returns the number
/// of products corrected.
pub(crate) async fn repair(shards: &Shards, report: &CheckReport) -> Result<usize> {
    let mut n = 0;
    for p in report.drifts() {
        shards.for_product(p.product_id).repair_stock(p.product_id, -p.delta).await?;
        n += 1;
    }
    Ok(n)
}
