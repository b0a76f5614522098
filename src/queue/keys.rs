//! The one place that builds Redis key names (docs/redis-keys.md).
//!
//! Every key of queue `q` starts with the hash tag `{q}`, so all of them hash to one Redis
//! Cluster slot and every multi-key script runs there unchanged.

/// The key names of one queue.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// `queue` must already be validated (see [`crate::config::validate_queue_name`]).
    pub fn new(queue: &str) -> Self {
        Keys { prefix: format!("{{{queue}}}") }
    }

    /// `{q}`: the hash tag itself.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// List of events waiting; producers LPUSH, workers take from the right.
    pub fn pending(&self) -> String {
        format!("{}:pending", self.prefix)
    }

    /// List of events claimed by some worker and not yet acknowledged.
    pub fn processing(&self) -> String {
        format!("{}:processing", self.prefix)
    }

    /// List of dead-letter envelopes.
    pub fn dead(&self) -> String {
        format!("{}:dead", self.prefix)
    }

    /// Sorted set: entry in processing -> claim deadline (unix ms on the Redis clock).
    pub fn claims(&self) -> String {
        format!("{}:claims", self.prefix)
    }

    /// Hash: entry -> number of deliveries whose claim timed out.
    pub fn attempts(&self) -> String {
        format!("{}:attempts", self.prefix)
    }

    /// String: the reservation sequence, stamped on every event and stock adjustment.
    pub fn seq(&self) -> String {
        format!("{}:seq", self.prefix)
    }

    /// String: a product's Redis stock.
    pub fn stock(&self, product_id: i64) -> String {
        format!("{}:stock:{product_id}", self.prefix)
    }

    /// Hash of running totals: applied, rejected, returned, dead, requeued.
    pub fn counters(&self) -> String {
        format!("{}:counters", self.prefix)
    }

    /// Hash: product id -> units reserved and not yet settled (in pending, processing or
    /// dead), kept by the scripts in the same steps that move the stock. The check reads it
    /// instead of the backlog.
    pub fn inflight(&self) -> String {
        format!("{}:inflight", self.prefix)
    }

    /// Set of entries whose earlier delivery may have committed in MySQL without being
    /// acknowledged (its claim expired, or it was handed back): the only entries outside
    /// processing that the check must look up in `stock_log`.
    pub fn unsure(&self) -> String {
        format!("{}:unsure", self.prefix)
    }

    /// Set of worker ids that have announced themselves.
    pub fn workers(&self) -> String {
        format!("{}:workers", self.prefix)
    }

    /// String with a TTL: a live worker's heartbeat (JSON).
    pub fn worker(&self, id: &str) -> String {
        format!("{}:worker:{id}", self.prefix)
    }

    /// Stream of drift alerts written by the janitor's consistency check.
    pub fn alerts(&self) -> String {
        format!("{}:alerts", self.prefix)
    }

    /// Stream: every operator action, who, what, when (`stockq audit`; the first shard's).
    pub fn audit(&self) -> String {
        format!("{}:audit", self.prefix)
    }

    /// Hash: `<product_id>:<kind>` -> reservations refused (sold_out, limit, paused,
    /// unknown_product), added by every process that reserves (the first shard's).
    pub fn refusals(&self) -> String {
        format!("{}:refusals", self.prefix)
    }

    /// String: the process that exports a group of queue-wide gauges (`queue`, `webhooks`),
    /// with a TTL it renews (the first shard's).
    pub fn reporter(&self, group: &str) -> String {
        format!("{}:reporter:{group}", self.prefix)
    }

    /// String, while deductions are paused queue-wide (`stockq pause`; the first shard's):
    /// `<since ms> <who>`.
    pub fn deductions_paused(&self) -> String {
        format!("{}:deductions-paused", self.prefix)
    }

    /// Hash: one reservation's record (state, product, qty, buyer, seq, times), kept
    /// `STOCKQ_RECORD_TTL` after it ended; reserve.lua answers replays from it.
    pub fn record(&self, event_id: &str) -> String {
        format!("{}:r:{event_id}", self.prefix)
    }

    /// Stream: one entry per transition of a reservation into a final state or `dead`.
    pub fn outcomes(&self) -> String {
        format!("{}:outcomes", self.prefix)
    }

    /// String: the id of the last outcome the relays took from the stream.
    pub fn webhooks_cursor(&self) -> String {
        format!("{}:webhooks:cursor", self.prefix)
    }

    /// Sorted set: reservation with outcomes to deliver -> when its first may be tried next
    /// (unix ms; a relay's lease pushes it on). `lua/webhook.lua`.
    pub fn webhooks_due(&self) -> String {
        format!("{}:webhooks:due", self.prefix)
    }

    /// Sorted set: reservation with outcomes to deliver -> the `at` of the first of them.
    pub fn webhooks_since(&self) -> String {
        format!("{}:webhooks:since", self.prefix)
    }

    /// List: a reservation's outcomes to deliver, in version order.
    pub fn webhooks_of(&self, event_id: &str) -> String {
        format!("{}:webhooks:q:{event_id}", self.prefix)
    }

    /// List: deliveries given up on (newest first), JSON.
    pub fn webhooks_dead(&self) -> String {
        format!("{}:webhooks:dead", self.prefix)
    }

    /// Sorted set: event id of a held reservation -> its payment deadline (unix ms, Redis
    /// clock). The janitor expires what is due.
    pub fn holds(&self) -> String {
        format!("{}:holds", self.prefix)
    }

    /// Set: the entries of reservations cancelled while their event waits in the queue; the
    /// worker that claims one drops it without a MySQL deduction.
    pub fn cancels(&self) -> String {
        format!("{}:cancels", self.prefix)
    }

    /// List: applied reservations that were cancelled, whose quantity MySQL must get back.
    /// Kept apart from pending, which means "to be deducted" for every program that reads it.
    pub fn releases(&self) -> String {
        format!("{}:releases", self.prefix)
    }

    /// Hash: product id -> units one buyer may hold (`stockq stock limit`).
    pub fn limits(&self) -> String {
        format!("{}:limits", self.prefix)
    }

    /// Hash: `<product_id>:<buyer>` -> units the buyer holds of a product with a limit.
    pub fn bought(&self) -> String {
        format!("{}:bought", self.prefix)
    }

    /// Hash, in the first shard: product id -> the number of shards its stock is spread over
    /// (`stockq stock spread`; 1: gathered back into its own shard after a spread; absent:
    /// never spread).
    pub fn spread(&self) -> String {
        format!("{}:spread", self.prefix)
    }

    /// String with a TTL: `{q}:spreading:<product_id>`, held while a spread or a gather of
    /// the product runs (only one at a time). This is its prefix.
    pub fn spread_lock(&self) -> String {
        format!("{}:spreading", self.prefix)
    }

    /// Hash: transfer id -> `product|units|to_shard|take_seq|at_ms`, the transfers of a spread
    /// product's units out of this shard that its receiver may not have yet.
    pub fn transfers(&self) -> String {
        format!("{}:transfers", self.prefix)
    }

    /// Hash: transfer id -> `product|units|from_shard|take_seq|give_seq|at_ms`, the transfers
    /// this shard received lately (each given once, by its id).
    pub fn received(&self) -> String {
        format!("{}:received", self.prefix)
    }

    /// String with a TTL, in the first shard: a dashboard session (its creation time), named
    /// `{q}:sessions:<hex SHA-256 of the session id>`. The id itself, the cookie's value, is
    /// never written to Redis: a copy of its keys opens no session.
    pub fn session(&self, id: &str) -> String {
        use sha2::Digest;
        format!("{}:sessions:{}", self.prefix, hex::encode(sha2::Sha256::digest(id.as_bytes())))
    }

    /// Every key of the queue with a fixed name (not the per-product stock keys nor the
    /// per-worker heartbeats, nor the per-reservation records).
    pub fn fixed(&self) -> [String; 20] {
        [
            self.pending(),
            self.processing(),
            self.dead(),
            self.claims(),
            self.attempts(),
            self.seq(),
            self.counters(),
            self.workers(),
            self.alerts(),
            self.inflight(),
            self.unsure(),
            self.outcomes(),
            self.holds(),
            self.cancels(),
            self.releases(),
            self.limits(),
            self.bought(),
            self.spread(),
            self.transfers(),
            self.received(),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_carries_the_hash_tag() {
        let k = Keys::new("shop");
        for key in k.fixed().into_iter().chain([k.stock(42), k.worker("w1"), k.record("o-1")]) {
            assert!(key.starts_with("{shop}:"), "{key}");
        }
        assert_eq!(k.stock(42), "{shop}:stock:42");
        assert_eq!(k.pending(), "{shop}:pending");
        assert_eq!(k.record("o-1"), "{shop}:r:o-1");
    }

    #[test]
    fn a_session_key_is_the_hash_of_its_id() {
        let k = Keys::new("shop");
        // SHA-256("abc"), FIPS 180-2's example
        let abc = "{shop}:sessions:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(k.session("abc"), abc);
        assert!(!k.session("a-secret-id").contains("a-secret-id"));
    }
}
