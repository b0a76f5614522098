//! The relay's side of Redis (`lua/webhook.lua`): the outcome stream read from one cursor
//! that every relay moves, each reservation's deliveries in version order, the leases of the
//! ones being tried, and the dead letters of webhooks. What a delivery says and how it is
//! sent is `crate::relay`'s.

use super::{CALL_TIMEOUT, Queue, StreamEntry, scripts};
use crate::error::{Result, bounded};

/// An outcome read from the stream, as the relay stores it: its reservation, its time and
/// the delivery text (`lua/webhook.lua`); `None` for an entry about no reservation.
#[derive(Debug, Clone)]
pub(crate) struct Taken {
    pub(crate) event_id: String,
    pub(crate) at: i64,
    pub(crate) delivery: String,
}

/// What waits to be delivered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct WebhookBacklog {
    /// Reservations with outcomes to deliver.
    pub(crate) waiting: u64,
    /// The `at` (unix ms) of the oldest outcome to deliver.
    pub(crate) oldest_at: Option<i64>,
    /// Dead letters of webhooks.
    pub(crate) dead: u64,
}

impl Queue {
    /// Where the relays stand in the outcome stream (the id of the last outcome taken),
    /// set to the stream's end by the first relay that starts: outcomes written before it
    /// are not delivered.
    pub(crate) async fn webhook_cursor(&self) -> Result<String> {
        let mut conn = self.conn();
        let last: Vec<(String, Vec<(String, String)>)> = bounded(
            "redis (webhook cursor)",
            CALL_TIMEOUT,
            redis::cmd("XREVRANGE")
                .arg(self.keys.outcomes())
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1)
                .query_async(&mut conn),
        )
        .await?;
        let end = last.first().map(|(id, _)| id.clone()).unwrap_or_else(|| "0-0".to_string());
        let key = self.keys.webhooks_cursor();
        let (cursor,): (String,) = bounded(
            "redis (webhook cursor)",
            CALL_TIMEOUT,
            redis::pipe().cmd("SET").arg(&key).arg(end).arg("NX").ignore().get(&key).query_async(&mut conn),
        )
        .await?;
        Ok(cursor)
    }

    /// Up to `count` outcomes after stream id `after`, oldest first, and the id of the
    /// stream's first entry (to tell outcomes trimmed away before they were taken).
    pub(crate) async fn webhook_read(
        &self,
        after: &str,
        count: usize,
    ) -> Result<(Vec<StreamEntry>, Option<String>)> {
        let mut conn = self.conn();
        type Raw = Vec<(String, Vec<(String, String)>)>;
        let (entries, first): (Raw, Raw) = bounded(
            "redis (webhook read)",
            CALL_TIMEOUT,
            redis::pipe()
                .cmd("XRANGE")
                .arg(self.keys.outcomes())
                .arg(format!("({after}"))
                .arg("+")
                .arg("COUNT")
                .arg(count)
                .cmd("XRANGE")
                .arg(self.keys.outcomes())
                .arg("-")
                .arg("+")
                .arg("COUNT")
                .arg(1)
                .query_async(&mut conn),
        )
        .await?;
        let entries = entries.into_iter().map(|(id, fields)| StreamEntry { id, fields }).collect();
        Ok((entries, first.into_iter().next().map(|(id, _)| id)))
    }

    /// Appends each outcome read after `from` (up to `to`) to its reservation's deliveries and
    /// moves the cursor to `to`, if it still is at `from` (see `webhook.lua`'s `take`).
    /// `None` when another relay took them first.
    pub(crate) async fn webhook_take(
        &self,
        from: &str,
        to: &str,
        taken: &[Taken],
        now: u64,
    ) -> Result<Option<u64>> {
        let k = &self.keys;
        let mut invocation = scripts::WEBHOOK.prepare_invoke();
        invocation.key(k.webhooks_cursor()).key(k.webhooks_due()).key(k.webhooks_since());
        invocation.arg("take").arg(from).arg(to).arg(now);
        for t in taken {
            invocation.key(k.webhooks_of(&t.event_id));
            invocation.arg(&t.event_id).arg(t.at).arg(&t.delivery);
        }
        let n: i64 = self.invoke("redis (webhook take)", &invocation).await?;
        Ok(u64::try_from(n).ok())
    }

    /// Up to `limit` reservations whose first delivery is due, leased for `lease`; with the
    /// delivery each has first (`None` when it was delivered meanwhile).
    pub(crate) async fn webhook_lease(
        &self,
        now: u64,
        lease: std::time::Duration,
        limit: usize,
    ) -> Result<Vec<(String, Option<String>)>> {
        let mut invocation = scripts::WEBHOOK.prepare_invoke();
        invocation
            .key(self.keys.webhooks_due())
            .arg("lease")
            .arg(now)
            .arg(lease.as_millis() as u64)
            .arg(limit);
        let ids: Vec<String> = self.invoke("redis (webhook lease)", &invocation).await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.cmd("LINDEX").arg(self.keys.webhooks_of(id)).arg(0);
        }
        let mut conn = self.conn();
        let heads: Vec<Option<String>> =
            bounded("redis (webhook heads)", CALL_TIMEOUT, pipe.query_async(&mut conn)).await?;
        Ok(ids.into_iter().zip(heads).collect())
    }

    /// The first delivery of `event_id` was delivered. False when it was no longer first.
    pub(crate) async fn webhook_done(&self, event_id: &str, delivery: &str, now: u64) -> Result<bool> {
        let k = &self.keys;
        let mut invocation = scripts::WEBHOOK.prepare_invoke();
        invocation
            .key(k.webhooks_due())
            .key(k.webhooks_since())
            .key(k.webhooks_of(event_id))
            .arg("done")
            .arg(event_id)
            .arg(delivery)
            .arg(now);
        Ok(self.invoke::<i64>("redis (webhook done)", &invocation).await? == 1)
    }

    /// A failed try: the delivery becomes `next` (its attempts counted), due at `due_at`.
    pub(crate) async fn webhook_retry(
        &self,
        event_id: &str,
        delivery: &str,
        next: &str,
        due_at: u64,
    ) -> Result<bool> {
        let k = &self.keys;
        let mut invocation = scripts::WEBHOOK.prepare_invoke();
        invocation
            .key(k.webhooks_due())
            .key(k.webhooks_of(event_id))
            .arg("retry")
            .arg(event_id)
            .arg(delivery)
            .arg(next)
            .arg(due_at);
        Ok(self.invoke::<i64>("redis (webhook retry)", &invocation).await? == 1)
    }

    /// The delivery is given up on: it moves to the webhooks' dead list as `dead_letter`.
    pub(crate) async fn webhook_dead(
        &self,
        event_id: &str,
        delivery: &str,
        dead_letter: &str,
        now: u64,
    ) -> Result<bool> {
        let k = &self.keys;
        let mut invocation = scripts::WEBHOOK.prepare_invoke();
        invocation
            .key(k.webhooks_due())
            .key(k.webhooks_since())
            .key(k.webhooks_of(event_id))
            .key(k.webhooks_dead())
            .arg("dead")
            .arg(event_id)
            .arg(delivery)
            .arg(dead_letter)
            .arg(now);
        Ok(self.invoke::<i64>("redis (webhook dead)", &invocation).await? == 1)
    }

    /// A dead letter back in front of its reservation's deliveries, as `delivery`.
    pub(crate) async fn webhook_replay(
        &self,
        event_id: &str,
        dead_letter: &str,
        delivery: &str,
        now: u64,
    ) -> Result<bool> {
        let k = &self.keys;
        let mut invocation = scripts::WEBHOOK.prepare_invoke();
        invocation
            .key(k.webhooks_due())
            .key(k.webhooks_since())
            .key(k.webhooks_of(event_id))
            .key(k.webhooks_dead())
            .arg("replay")
            .arg(event_id)
            .arg(dead_letter)
            .arg(delivery)
            .arg(now);
        Ok(self.invoke::<i64>("redis (webhook replay)", &invocation).await? == 1)
    }

    /// The dead letters of webhooks at positions `start..=stop` of this shard's list (newest
    /// first), and how many there are.
    pub(crate) async fn webhook_dead_letters(&self, start: isize, stop: isize) -> Result<(Vec<String>, u64)> {
        let mut conn = self.conn();
        let key = self.keys.webhooks_dead();
        bounded(
            "redis (webhook dead letters)",
            CALL_TIMEOUT,
            redis::pipe().lrange(&key, start, stop).llen(&key).query_async(&mut conn),
        )
        .await
    }

    /// What waits to be delivered in this shard.
    pub(crate) async fn webhook_backlog(&self) -> Result<WebhookBacklog> {
        let mut conn = self.conn();
        let (waiting, oldest, dead): (u64, Vec<(String, i64)>, u64) = bounded(
            "redis (webhook backlog)",
            CALL_TIMEOUT,
            redis::pipe()
                .zcard(self.keys.webhooks_since())
                .cmd("ZRANGE")
                .arg(self.keys.webhooks_since())
                .arg(0)
                .arg(0)
                .arg("WITHSCORES")
                .llen(self.keys.webhooks_dead())
                .query_async(&mut conn),
        )
        .await?;
        Ok(WebhookBacklog { waiting, oldest_at: oldest.first().map(|(_, at)| *at), dead })
    }
}
