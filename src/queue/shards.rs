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

use std::sync::Arc;

use crate::config::Settings;
use crate::error::Result;
use crate::queue::{Keys, Queue};

/// Every shard of one queue; cheap to clone.
#[derive(Clone)]
pub struct Shards {
    queues: Arc<[Queue]>,
}

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
        Shards { queues: queues.into() }
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
        Shards { queues: vec![queue].into() }
    }
}

/// The shard index of a product.
pub(crate) fn shard_of(product_id: i64, shards: usize) -> usize {
    product_id.rem_euclid(shards.max(1) as i64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn products_spread_over_shards() {
        assert_eq!(shard_of(42, 1), 0);
        assert_eq!((0..8).map(|p| shard_of(p, 4)).collect::<Vec<_>>(), vec![0, 1, 2, 3, 0, 1, 2, 3]);
        assert_eq!(shard_of(i64::MAX, 3), (i64::MAX % 3) as usize);
    }
}
