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

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
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
    /// Redis stock, every bucket together; `None` when no key exists (reported as 0).
    pub redis: Option<i64>,
    pub mysql: i64,
    pub in_flight: i64,
    /// What Redis should hold: MySQL stock (as of the Redis snapshot) minus in-flight, less
    /// the units of a spread product on their way between two buckets.
    pub expected_redis: i64,
    /// `redis − expected_redis`: positive means Redis would sell units MySQL does not have.
    pub delta: i64,
    /// A spread product's buckets (docs/cluster.md): each shard's stock; empty otherwise.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub buckets: Vec<BucketStock>,
    /// A spread product's units on their way between two buckets at the snapshot.
    #[serde(skip_serializing_if = "is_zero")]
    pub in_transit: i64,
}

/// One bucket of a spread product.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BucketStock {
    pub shard: usize,
    pub stock: i64,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
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
    shard: usize,
    ids: Vec<i64>,
    snap: Snapshot,
}

/// Runs the check once over every product in MySQL: Redis chunk by chunk (each chunk one
/// atomic read with its own sequence), then MySQL in one consistent snapshot.
///
/// A product is read on its own shard; a spread product (or one that was: units given back
/// to a bucket since dropped) on every shard, each bucket against its own shard's sequence,
/// and the transfers between its buckets are read after every snapshot (see [`transit`]).
pub async fn check(shards: &Shards, ledger: &Ledger) -> Result<CheckReport> {
    let started = Instant::now();
    let ids = ledger.product_ids().await?;
    // Every shard's sequence is raised to at least this, so rows written before the check
    // are numbered below every chunk's sequence, whichever shard wrote them.
    let floor = ledger.max_seq().await?;
    let n = shards.len();
    let spread: HashSet<i64> =
        if n > 1 { shards.first().spread_map().await?.into_keys().collect() } else { HashSet::new() };
    let mut by_shard: Vec<Vec<i64>> = vec![Vec::new(); n];
    for id in ids {
        if spread.contains(&id) {
            by_shard.iter_mut().for_each(|ids| ids.push(id));
        } else {
            by_shard[shard_of(id, n)].push(id);
        }
    }
    let mut chunks = Vec::new();
    for (shard, (queue, ids)) in shards.all().iter().zip(&by_shard).enumerate() {
        for part in ids.chunks(SNAPSHOT_CHUNK) {
            chunks.push(Chunk { shard, ids: part.to_vec(), snap: queue.snapshot(part, floor).await? });
        }
    }
    // after every snapshot: transfers out first, then those received (see `transit`)
    let mut transfers = Vec::new();
    if !spread.is_empty() {
        let mut outgoing = Vec::new();
        for (shard, queue) in shards.all().iter().enumerate() {
            outgoing.extend(queue.outgoing().await?.into_iter().map(|o| (shard, o)));
        }
        let mut received = Vec::new();
        for (shard, queue) in shards.all().iter().enumerate() {
            received.extend(queue.received().await?.into_iter().map(|r| (shard, r)));
        }
        transfers = Transfer::join(outgoing, received);
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
    let after = Since::index(&books, n);

    let mut parts: BTreeMap<i64, Vec<Part>> = BTreeMap::new();
    let mut snapshot_seq: HashMap<(i64, usize), i64> = HashMap::new();
    let mut seq = 0;
    for (chunk, held) in chunks.iter().zip(&held) {
        for part in chunk_parts(chunk, held, &after, &books) {
            snapshot_seq.insert((part.product_id, chunk.shard), chunk.snap.seq);
            parts.entry(part.product_id).or_default().push(part);
        }
        seq = seq.max(chunk.snap.seq);
    }
    let mut products = Vec::with_capacity(parts.len());
    for (product_id, parts) in parts {
        let Some(&mysql) = books.stock.get(&product_id) else { continue };
        let in_transit = transit(&transfers, product_id, &snapshot_seq);
        products.push(product_books(product_id, mysql, &parts, in_transit, spread.contains(&product_id)));
    }
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

/// MySQL's changes after the first snapshot, by product and by the shard whose sequence
/// numbered them: (sequence, units).
struct Since {
    applied: HashMap<(i64, usize), Vec<(i64, i64)>>,
    adjusted: HashMap<(i64, usize), Vec<(i64, i64)>>,
    released: HashMap<(i64, usize), Vec<(i64, i64)>>,
}

impl Since {
    fn index(books: &Books, shards: usize) -> Since {
        // a row without a shard was numbered by its product's own shard
        let shard = |product_id: i64, shard: Option<i16>| {
            shard.and_then(|s| usize::try_from(s).ok()).unwrap_or_else(|| shard_of(product_id, shards))
        };
        let group = |rows: &[(i64, Option<i16>, i64, i64)]| {
            let mut by: HashMap<(i64, usize), Vec<(i64, i64)>> = HashMap::new();
            for &(product_id, s, seq, units) in rows {
                by.entry((product_id, shard(product_id, s))).or_default().push((seq, units));
            }
            by
        };
        let mut adjusted: HashMap<(i64, usize), Vec<(i64, i64)>> = HashMap::new();
        for &(product_id, seq, delta) in &books.adjusted_since {
            adjusted.entry((product_id, shard_of(product_id, shards))).or_default().push((seq, delta));
        }
        Since { applied: group(&books.applied_since), adjusted, released: group(&books.released_since) }
    }

    /// Units applied under claims of `shard` numbered after `seq`, minus restocks and releases
    /// it numbered after it.
    fn after(&self, product_id: i64, shard: usize, seq: i64) -> i64 {
        let sum = |rows: Option<&Vec<(i64, i64)>>| {
            rows.map_or(0, |rows| rows.iter().filter(|(s, _)| *s > seq).map(|(_, u)| u).sum::<i64>())
        };
        let key = (product_id, shard);
        sum(self.applied.get(&key)) - sum(self.adjusted.get(&key)) - sum(self.released.get(&key))
    }
}

/// What one shard's snapshot says of one product.
struct Part {
    product_id: i64,
    shard: usize,
    redis: Option<i64>,
    /// In-flight units less those MySQL applied under a number up to the snapshot.
    in_flight: i64,
    /// MySQL's changes numbered by this shard after its snapshot (see [`Since::after`]).
    after: i64,
}

/// One chunk's parts, against its own sequence `S`:
///
/// ```text
/// in_flight = inflight units − Σ qty of held events MySQL applied under a claim ≤ S
///                            + Σ qty of listed releases MySQL applied under a number ≤ S
/// after     = Σ applied under claims > S − Σ restocks > S − Σ releases > S
/// ```
///
/// A release lowers the in-flight units by its quantity when Redis gets the stock back and
/// raises them again when it leaves the list, after MySQL has it back: in between, one MySQL
/// applied is counted on the list like a held deduction, with the opposite sign.
fn chunk_parts(chunk: &Chunk, held: &Held, since: &Since, books: &Books) -> Vec<Part> {
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
    chunk
        .ids
        .iter()
        .enumerate()
        .map(|(i, &product_id)| Part {
            product_id,
            shard: chunk.shard,
            redis: snap.stocks[i],
            in_flight: snap.inflight[i] - applied_held.get(&product_id).copied().unwrap_or(0),
            after: since.after(product_id, chunk.shard, snap.seq),
        })
        .collect()
}

/// A product's books from its parts (one, or one per shard for a spread product):
///
/// ```text
/// expected = mysql + Σ after − Σ in_flight − in_transit        delta = Σ redis − expected
/// ```
fn product_books(product_id: i64, mysql: i64, parts: &[Part], in_transit: i64, spread: bool) -> ProductBooks {
    let redis = parts.iter().filter_map(|p| p.redis).reduce(|a, b| a + b);
    let in_flight: i64 = parts.iter().map(|p| p.in_flight).sum();
    let after: i64 = parts.iter().map(|p| p.after).sum();
    let expected_redis = mysql + after - in_flight - in_transit;
    let buckets = if spread {
        parts.iter().map(|p| BucketStock { shard: p.shard, stock: p.redis.unwrap_or(0) }).collect()
    } else {
        Vec::new()
    };
    ProductBooks {
        product_id,
        redis,
        mysql,
        in_flight,
        expected_redis,
        delta: redis.unwrap_or(0) - expected_redis,
        buckets,
        in_transit,
    }
}

/// A transfer between two buckets, as the check learned it after its snapshots.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Transfer {
    product_id: i64,
    units: i64,
    from: usize,
    to: usize,
    take_seq: i64,
    /// The give's number in the receiver's sequence, when it was given.
    give_seq: Option<i64>,
}

impl Transfer {
    /// Each transfer once, from the records of its giver (on its way) and of its receiver.
    fn join(
        outgoing: Vec<(usize, crate::queue::Outgoing)>,
        received: Vec<(usize, crate::queue::Received)>,
    ) -> Vec<Transfer> {
        let mut by_id: HashMap<String, Transfer> = HashMap::new();
        for (from, o) in outgoing {
            by_id.insert(
                o.id,
                Transfer {
                    product_id: o.product_id,
                    units: o.units,
                    from,
                    to: usize::from(o.to_shard),
                    take_seq: o.take_seq,
                    give_seq: None,
                },
            );
        }
        for (to, r) in received {
            let t = by_id.entry(r.id).or_insert(Transfer {
                product_id: r.product_id,
                units: r.units,
                from: usize::from(r.from_shard),
                to,
                take_seq: r.take_seq,
                give_seq: None,
            });
            t.give_seq = Some(r.give_seq);
        }
        by_id.into_values().collect()
    }
}

/// The units of `product_id`'s transfers the snapshots do not count once: each transfer's
/// units are in the giver's snapshot when its take came after it (`take_seq > S_from`), and
/// in the receiver's when its give came before it (`give_seq ≤ S_to`). A transfer both or
/// neither counts is counted −1 or +1 times its units here: units on their way between the
/// two snapshots, or counted by both. The transfers are read after every snapshot, outgoing
/// then received: a transfer in neither record was taken after every snapshot, or given and
/// marked arrived before the received records were read, and is found in those.
fn transit(transfers: &[Transfer], product_id: i64, snapshot_seq: &HashMap<(i64, usize), i64>) -> i64 {
    let mut units = 0;
    for t in transfers.iter().filter(|t| t.product_id == product_id) {
        let in_giver = snapshot_seq.get(&(product_id, t.from)).is_some_and(|s| t.take_seq > *s);
        let in_receiver =
            t.give_seq.is_some_and(|g| snapshot_seq.get(&(product_id, t.to)).is_some_and(|s| g <= *s));
        units += t.units * (1 - i64::from(in_giver) - i64::from(in_receiver));
    }
    units
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
