//! A spread product's buckets in Redis: the registry of spread products (in the first shard),
//! and the two steps of a transfer between two buckets (`lua/transfer.lua`). The transfers'
//! protocol, the routing of reservations and the moves ahead of need are `crate::spread`'s.

use std::collections::HashMap;

use redis::AsyncCommands;

use super::{CALL_TIMEOUT, Queue, next_value, scripts};
use crate::error::{Result, bounded};

/// A transfer out of this shard, recorded until its receiver has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Outgoing {
    pub(crate) id: String,
    pub(crate) product_id: i64,
    pub(crate) units: i64,
    pub(crate) to_shard: u16,
    pub(crate) take_seq: i64,
    /// When it was taken, unix ms on the Redis clock.
    pub(crate) at_ms: i64,
}

/// A transfer this shard received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Received {
    pub(crate) id: String,
    pub(crate) product_id: i64,
    pub(crate) units: i64,
    pub(crate) from_shard: u16,
    pub(crate) take_seq: i64,
    pub(crate) give_seq: i64,
    pub(crate) at_ms: i64,
}

impl Outgoing {
    pub(crate) fn parse(id: String, text: &str) -> Option<Outgoing> {
        let f: Vec<&str> = text.split('|').collect();
        let [product_id, units, to_shard, take_seq, at_ms] = f.as_slice() else { return None };
        Some(Outgoing {
            id,
            product_id: product_id.parse().ok()?,
            units: units.parse().ok()?,
            to_shard: to_shard.parse().ok()?,
            take_seq: take_seq.parse().ok()?,
            at_ms: at_ms.parse().ok()?,
        })
    }
}

impl Received {
    pub(crate) fn parse(id: String, text: &str) -> Option<Received> {
        let f: Vec<&str> = text.split('|').collect();
        let [product_id, units, from_shard, take_seq, give_seq, at_ms] = f.as_slice() else { return None };
        Some(Received {
            id,
            product_id: product_id.parse().ok()?,
            units: units.parse().ok()?,
            from_shard: from_shard.parse().ok()?,
            take_seq: take_seq.parse().ok()?,
            give_seq: give_seq.parse().ok()?,
            at_ms: at_ms.parse().ok()?,
        })
    }
}

impl Queue {
    /// Takes up to `wanted` units of `product_id` (at least `least`, else none) out of this
    /// shard's bucket for `to_shard`, recorded as on its way. Returns (units taken, the
    /// take's number, units left here).
    pub(crate) async fn transfer_out(
        &self,
        id: &str,
        product_id: i64,
        wanted: i64,
        least: i64,
        to_shard: u16,
    ) -> Result<(i64, i64, i64)> {
        let k = &self.keys;
        let mut invocation = scripts::TRANSFER.prepare_invoke();
        invocation
            .key(k.stock(product_id))
            .key(k.seq())
            .key(k.transfers())
            .arg("out")
            .arg(id)
            .arg(product_id)
            .arg(wanted)
            .arg(least)
            .arg(to_shard);
        let reply: Vec<redis::Value> = self.invoke("redis (transfer)", &invocation).await?;
        let mut values = reply.into_iter();
        Ok((next_value(&mut values)?, next_value(&mut values)?, next_value(&mut values)?))
    }

    /// Gives a transfer's units to this shard's bucket, once by its id. Returns the give's
    /// number.
    pub(crate) async fn transfer_in(&self, out: &Outgoing, from_shard: u16) -> Result<i64> {
        let k = &self.keys;
        let mut invocation = scripts::TRANSFER.prepare_invoke();
        invocation
            .key(k.stock(out.product_id))
            .key(k.seq())
            .key(k.received())
            .arg("in")
            .arg(out.id.as_str())
            .arg(out.product_id)
            .arg(out.units)
            .arg(from_shard)
            .arg(out.take_seq);
        let (_given_now, give_seq): (i64, i64) = self.invoke("redis (transfer)", &invocation).await?;
        Ok(give_seq)
    }

    /// The transfer `id` arrived: it is no longer on its way out of this shard.
    pub(crate) async fn transfer_done(&self, id: &str) -> Result<()> {
        let mut invocation = scripts::TRANSFER.prepare_invoke();
        invocation.key(self.keys.transfers()).arg("done").arg(id);
        let _: i64 = self.invoke("redis (transfer)", &invocation).await?;
        Ok(())
    }

    /// The transfers out of this shard still on their way (or not yet marked arrived).
    pub(crate) async fn outgoing(&self) -> Result<Vec<Outgoing>> {
        let mut conn = self.conn();
        let raw: HashMap<String, String> =
            bounded("redis (transfers)", CALL_TIMEOUT, conn.hgetall(self.keys.transfers())).await?;
        Ok(raw.into_iter().filter_map(|(id, text)| Outgoing::parse(id, &text)).collect())
    }

    /// The transfers this shard received and still remembers.
    pub(crate) async fn received(&self) -> Result<Vec<Received>> {
        let mut conn = self.conn();
        let raw: HashMap<String, String> =
            bounded("redis (transfers)", CALL_TIMEOUT, conn.hgetall(self.keys.received())).await?;
        Ok(raw.into_iter().filter_map(|(id, text)| Received::parse(id, &text)).collect())
    }

    /// Forgets received transfers whose sender has marked them arrived long ago.
    pub(crate) async fn forget_received(&self, ids: &[String]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn();
        bounded("redis (transfers)", CALL_TIMEOUT, conn.hdel::<_, _, ()>(self.keys.received(), ids)).await
    }

    /// The spread products and their bucket counts (read in the first shard).
    pub(crate) async fn spread_map(&self) -> Result<HashMap<i64, u16>> {
        let mut conn = self.conn();
        let raw: HashMap<i64, u16> =
            bounded("redis (spread)", CALL_TIMEOUT, conn.hgetall(self.keys.spread())).await?;
        Ok(raw)
    }

    /// Records that `product_id` is spread over `buckets` shards. A product gathered back
    /// stays registered with 1: a cancel may still give units back to a former bucket, which
    /// the janitor then moves home and the check counts.
    pub(crate) async fn set_spread(&self, product_id: i64, buckets: u16) -> Result<()> {
        let mut conn = self.conn();
        bounded(
            "redis (spread)",
            CALL_TIMEOUT,
            conn.hset::<_, _, _, ()>(self.keys.spread(), product_id, buckets),
        )
        .await
    }

    /// Takes the lock of a spread of `product_id` for `ttl` (SET NX PX); false when another
    /// spread of it runs.
    pub(crate) async fn lock_spread(
        &self,
        product_id: i64,
        token: &str,
        ttl: std::time::Duration,
    ) -> Result<bool> {
        let mut conn = self.conn();
        let key = format!("{}:{product_id}", self.keys.spread_lock());
        let set: Option<String> = bounded(
            "redis (spread)",
            CALL_TIMEOUT,
            redis::cmd("SET")
                .arg(&key)
                .arg(token)
                .arg("NX")
                .arg("PX")
                .arg(ttl.as_millis() as u64)
                .query_async(&mut conn),
        )
        .await?;
        Ok(set.is_some())
    }

    /// Releases the lock of a spread of `product_id` taken with `token`.
    pub(crate) async fn unlock_spread(&self, product_id: i64, token: &str) -> Result<()> {
        let mut conn = self.conn();
        let key = format!("{}:{product_id}", self.keys.spread_lock());
        let held: Option<String> = bounded("redis (spread)", CALL_TIMEOUT, conn.get(&key)).await?;
        if held.as_deref() == Some(token) {
            bounded("redis (spread)", CALL_TIMEOUT, conn.del::<_, ()>(&key)).await?;
        }
        Ok(())
    }
}
