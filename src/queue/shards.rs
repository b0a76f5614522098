//! A queue spread over shards, to outgrow one Redis server.
//!
//! With `STOCKQ_SHARDS=N` (N > 1) a queue named `q` is N queues, `{q:0}` … `{q:N-1}`, each
//! with every key of docs/redis-keys.md under its own hash tag, so on a Redis Cluster each
//! lives in its own slot (and usually on its own master). A product belongs to shard
//! `product_id mod N`: its stock key, its reservations and its events stay in that shard, so
//! every script still touches one slot. With N = 1 (the default) the one queue is plain `{q}`.
//!
//! Workers consume every shard, janitors recover every shard, and the check, stats and dead
//! letters cover every shard; reservations go to their product's shard.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::Settings;
use crate::error::Result;
use crate::queue::{Keys, Queue};

/// How long a process routes by what it last read of the spread products: a spread (or a
/// gather) reaches every process within this, and `crate::spread` waits that long before it
/// moves units out of a bucket no longer routed to.
pub(crate) const SPREAD_REFRESH: Duration = Duration::from_secs(1);

/// Every shard of one queue; cheap to clone.
#[derive(Clone)]
pub struct Shards {
    queues: Arc<[Queue]>,
    /// The spread products as last read (`{q}:spread` of the first shard), and when.
    spread: Arc<Mutex<SpreadCache>>,
}

/// The spread products (product -> buckets) as last read, and when.
type SpreadCache = (HashMap<i64, u16>, Option<Instant>);

impl Shards {
    /// Connects once and builds a handle per shard over the same connection. The shard
    /// count was bounded when the settings were read.
    pub async fn connect(settings: &Settings) -> Result<Shards> {
        let queue = Queue::connect(settings).await?;
        Ok(Self::over(queue, &settings.redis.queue, settings.redis.shards))
    }

    /// The shards of queue `name`, sharing `queue`'s connection.
    pub fn over(queue: Queue, name: &str, shards: u32) -> Shards {
        if shards <= 1 {
            return Shards::from(queue);
        }
        let queues: Vec<Queue> =
            (0..shards).map(|i| queue.with_shard(Keys::new(&format!("{name}:{i}")), i as u16)).collect();
        Shards { queues: queues.into(), spread: Default::default() }
    }

    pub fn all(&self) -> &[Queue] {
        &self.queues
    }

    pub(crate) fn len(&self) -> usize {
        self.queues.len()
    }

    /// The shard that holds a product.
    pub fn for_product(&self, product_id: i64) -> &Queue {
        &self.queues[shard_of(product_id, self.queues.len())]
    }

    /// The shard that holds worker heartbeats and the alerts stream.
    pub(crate) fn first(&self) -> &Queue {
        &self.queues[0]
    }
}

impl From<Queue> for Shards {
    fn from(queue: Queue) -> Self {
        Shards { queues: vec![queue].into(), spread: Default::default() }
    }
}

impl Shards {
    /// How many shards `product_id`'s stock is spread over (1: its own shard alone), as read
    /// at most [`SPREAD_REFRESH`] ago. A failed read keeps what was read before.
    pub(crate) async fn buckets(&self, product_id: i64) -> u16 {
        self.spread_of(product_id).await.unwrap_or(1)
    }

    /// Whether `product_id` is spread or was (gathered back since): its units may be on any
    /// shard, so a shopper short in one is served from the others and its stock is their sum.
    pub(crate) async fn is_spread(&self, product_id: i64) -> bool {
        self.spread_of(product_id).await.is_some()
    }

    /// The product's registered bucket count, as read at most [`SPREAD_REFRESH`] ago.
    async fn spread_of(&self, product_id: i64) -> Option<u16> {
        if self.queues.len() <= 1 {
            return None;
        }
        let stale = {
            let spread = self.spread.lock().unwrap_or_else(|e| e.into_inner());
            spread.1.is_none_or(|at| at.elapsed() >= SPREAD_REFRESH)
        };
        if stale {
            self.refresh_spread().await;
        }
        let spread = self.spread.lock().unwrap_or_else(|e| e.into_inner());
        spread.0.get(&product_id).map(|b| (*b).clamp(1, self.queues.len() as u16))
    }

    /// Reads the spread products again now.
    pub(crate) async fn refresh_spread(&self) {
        match self.first().spread_map().await {
            Ok(map) => *self.spread.lock().unwrap_or_else(|e| e.into_inner()) = (map, Some(Instant::now())),
            Err(e) => tracing::debug!(error = %e, "could not read the spread products; routing as before"),
        }
    }

    /// The shards of `product_id`'s `buckets` buckets: bucket b on its own shard plus b.
    pub(crate) fn bucket_shards(&self, product_id: i64, buckets: u16) -> Vec<usize> {
        let home = shard_of(product_id, self.queues.len());
        (0..buckets as usize).map(|b| (home + b) % self.queues.len()).collect()
    }

    /// The shard a reservation goes to: its product's, or for a spread product the bucket
    /// chosen from the buyer (or the event id when there is none), so that a buyer's units
    /// and a retried event id are decided in one bucket, in one atomic step.
    pub async fn route(&self, product_id: i64, buyer: Option<&str>, event_id: &str) -> &Queue {
        let buckets = self.buckets(product_id).await;
        if buckets <= 1 {
            return self.for_product(product_id);
        }
        let bucket = (fnv1a(buyer.unwrap_or(event_id).as_bytes()) % u64::from(buckets)) as usize;
        &self.queues[self.bucket_shards(product_id, buckets)[bucket]]
    }
}

/// FNV-1a: a stable hash (the same in every process and version) to choose a bucket.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// The shard index of a product.
pub(crate) fn shard_of(product_id: i64, shards: usize) -> usize {
    product_id.rem_euclid(shards.max(1) as i64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buyer_has_one_bucket() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        let spread: std::collections::HashSet<u64> =
            (0..100).map(|i| fnv1a(format!("buyer-{i}").as_bytes()) % 3).collect();
        assert_eq!(spread.len(), 3, "buyers fall in every bucket");
    }

    #[test]
    fn products_spread_over_shards() {
        assert_eq!(shard_of(42, 1), 0);
        assert_eq!((0..8).map(|p| shard_of(p, 4)).collect::<Vec<_>>(), vec![0, 1, 2, 3, 0, 1, 2, 3]);
        assert_eq!(shard_of(i64::MAX, 3), (i64::MAX % 3) as usize);
    }
}
