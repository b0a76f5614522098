//! `stockq relay`: every outcome delivered to the order service's webhook, signed, at least
//! once, each reservation's outcomes in version order (docs/webhooks.md).
//!
//! Relays read each shard's outcome stream from one cursor they share, and move each outcome,
//! in one step with the cursor, to its reservation's list of deliveries (`lua/webhook.lua`):
//! outcomes are taken in stream order, whichever relay takes them, and a relay killed after
//! reading leaves them to the next read. Only a list's first delivery is tried, so a later
//! outcome of a reservation waits for the earlier one while other reservations go on. A try
//! leases the reservation for the timeout and [`LEASE_MARGIN`]: a relay killed mid-delivery
//! leaves the lease to run out and another relay (or itself, restarted) tries again. Nothing
//! is lost, and anything may be delivered twice: receivers deduplicate on the delivery's
//! `id`.
//!
//! A delivery that fails (no 2xx, no answer within the timeout) is tried again after a backoff
//! with jitter, from [`FIRST_RETRY`] doubling to [`LONGEST_RETRY`], for `retry_for` from its
//! first try; then it is a dead letter of webhooks, listed and replayed with `stockq
//! webhooks` and on the dashboard.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hmac::{KeyInit, Mac};
use serde_json::{Map, Value, json};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::backoff::{Backoff, now_ms};
use crate::config::SecretUrl;
use crate::error::{Error, Result, one_line};
use crate::queue::{Queue, Shards, StreamEntry, Taken};
use crate::telemetry::metrics as m;

/// How long a receiver has to answer a delivery, unless told (STOCKQ_WEBHOOK_TIMEOUT).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// A try keeps its reservation from other relays for the timeout and this much more; entries
/// read by a relay and not taken for as long are taken over by another.
pub const LEASE_MARGIN: Duration = Duration::from_secs(5);
/// The wait after a first failure; it doubles with each failure, to [`LONGEST_RETRY`].
pub const FIRST_RETRY: Duration = Duration::from_secs(1);
pub const LONGEST_RETRY: Duration = Duration::from_secs(600);
/// Outcomes read from a stream at a time.
const READ_BATCH: usize = 500;
/// How often a relay samples its gauges.
const GAUGES_EVERY: Duration = Duration::from_secs(1);
/// The pause of an idle relay between looks.
const IDLE: Duration = Duration::from_millis(50);
/// The header that carries the signature.
pub const SIGNATURE_HEADER: &str = "Stockq-Signature";

/// What `stockq relay` is told (STOCKQ_WEBHOOK_*).
#[derive(Clone)]
pub struct RelaySettings {
    pub url: SecretUrl,
    /// The key of the HMAC; never printed.
    pub secret: String,
    /// How long a delivery is tried, from its first try, before it is a dead letter.
    pub retry_for: Duration,
    /// Deliveries awaiting an answer at once, per relay.
    pub concurrency: usize,
    /// How long a receiver has to answer.
    pub timeout: Duration,
}

impl RelaySettings {
    /// Checks what was given: an http(s) URL, a secret of 16 characters or more.
    pub fn new(
        url: &str,
        secret: &str,
        retry_for: Duration,
        concurrency: usize,
        timeout: Duration,
    ) -> Result<RelaySettings> {
        let url = SecretUrl::parse("STOCKQ_WEBHOOK_URL", url, &["https", "http"])?;
        if url.expose().contains(',') {
            return Err(Error::usage("STOCKQ_WEBHOOK_URL must be one URL"));
        }
        if secret.chars().count() < 16 {
            return Err(Error::usage(
                "STOCKQ_WEBHOOK_SECRET must be at least 16 characters (the receiver checks signatures with it)",
            ));
        }
        if !(1..=1024).contains(&concurrency) {
            return Err(Error::usage("STOCKQ_WEBHOOK_CONCURRENCY must be from 1 to 1024"));
        }
        if retry_for > Duration::from_secs(365 * 86_400) {
            return Err(Error::usage("STOCKQ_WEBHOOK_RETRY_FOR must be at most 365days"));
        }
        if !(Duration::from_millis(100)..=Duration::from_secs(300)).contains(&timeout) {
            return Err(Error::usage("STOCKQ_WEBHOOK_TIMEOUT must be from 100ms to 5m"));
        }
        Ok(RelaySettings { url, secret: secret.to_string(), retry_for, concurrency, timeout })
    }

    /// How long a try holds its reservation, and how long read entries wait before another
    /// relay takes them over.
    fn lease(&self) -> Duration {
        self.timeout + LEASE_MARGIN
    }
}

/// `Stockq-Signature`'s value for `body` sent at unix second `t`:
/// `t=<t>,v1=<hex HMAC-SHA256 of "<t>.<body>" keyed by the secret>`.
pub fn signature(secret: &str, t: u64, body: &str) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes a key of any length");
    mac.update(format!("{t}.{body}").as_bytes());
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// The JSON body of an outcome's delivery: the outcome's fields (numbers as numbers) and
/// `id`, `<event_id>@<version>`, the same for every try of it. `None` for an entry that is
/// not about a reservation.
pub(crate) fn body_of(entry: &StreamEntry) -> Option<(String, i64, String)> {
    let event_id = entry.get("event_id").filter(|id| !id.is_empty())?.to_string();
    let mut object = Map::new();
    for (name, value) in &entry.fields {
        let value = match name.as_str() {
            "product_id" | "qty" | "seq" | "reserved_at" | "at" | "version" => {
                value.parse::<i64>().map(Value::from).unwrap_or_else(|_| Value::from(value.as_str()))
            }
            _ => Value::from(value.as_str()),
        };
        object.insert(name.clone(), value);
    }
    // an outcome written before versions is told apart by its stream id
    let id = match entry.get("version") {
        Some(version) => format!("{event_id}@{version}"),
        None => format!("{event_id}@{}", entry.id),
    };
    object.insert("id".into(), Value::from(id));
    let at = entry.get("at").and_then(|v| v.parse().ok()).unwrap_or_else(|| now_ms() as i64);
    Some((event_id, at, Value::Object(object).to_string()))
}

/// A delivery as stored: `at|attempts|first_try|body` (`lua/webhook.lua`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Delivery {
    pub(crate) at: i64,
    pub(crate) attempts: u32,
    /// Unix ms of its first try; 0 until tried.
    pub(crate) first_try: u64,
    pub(crate) body: String,
}

impl Delivery {
    pub(crate) fn new(at: i64, body: String) -> Delivery {
        Delivery { at, attempts: 0, first_try: 0, body }
    }

    pub(crate) fn parse(text: &str) -> Option<Delivery> {
        let mut f = text.splitn(4, '|');
        Some(Delivery {
            at: f.next()?.parse().ok()?,
            attempts: f.next()?.parse().ok()?,
            first_try: f.next()?.parse().ok()?,
            body: f.next()?.to_string(),
        })
    }

    pub(crate) fn text(&self) -> String {
        format!("{}|{}|{}|{}", self.at, self.attempts, self.first_try, self.body)
    }
}

/// The wait before try `attempt + 1` after `attempt` failures: doubling from
/// [`FIRST_RETRY`] to [`LONGEST_RETRY`], each drawn between half and all of it, so that the
/// retries of a receiver's outage do not all arrive at once when it comes back.
pub(crate) fn retry_delay(attempts: u32) -> Duration {
    let full = FIRST_RETRY.saturating_mul(1 << attempts.saturating_sub(1).min(20)).min(LONGEST_RETRY);
    let half = full / 2;
    half + Duration::from_millis(rand::random_range(0..=half.as_millis() as u64))
}

pub struct Relay {
    shards: Shards,
    /// This process, in the lease of the webhooks' gauges; `None` when it serves no
    /// `/metrics` (it must not take the lease from a relay that does).
    tag: Option<String>,
    settings: Arc<RelaySettings>,
    client: reqwest::Client,
}

impl Relay {
    pub fn new(shards: Shards, settings: RelaySettings) -> Result<Relay> {
        let client = reqwest::Client::builder()
            .timeout(settings.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("stockq-relay/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::usage(format!("cannot make an HTTP client: {}", one_line(&e.to_string()))))?;
        Ok(Relay { shards, settings: Arc::new(settings), client, tag: None })
    }

    /// Whether this relay serves `/metrics`, and so may export the queue-wide webhook gauges.
    pub fn reporting(mut self, yes: bool) -> Relay {
        self.tag = yes.then(crate::http::health::process_tag);
        self
    }

    /// Delivers until `shutdown`, then waits for the deliveries under way.
    pub async fn run(&self, shutdown: CancellationToken) -> Result<()> {
        tracing::info!(to = %origin_of(self.settings.url.expose()), "relaying outcomes");
        let permits = Arc::new(Semaphore::new(self.settings.concurrency));
        let mut tasks = JoinSet::new();
        let mut backoff = Backoff::new();
        let mut sampled = Instant::now() - GAUGES_EVERY;
        while !shutdown.is_cancelled() {
            let pass = async {
                if sampled.elapsed() >= GAUGES_EVERY {
                    sampled = Instant::now();
                    self.sample().await?;
                }
                self.pass(&permits, &mut tasks).await
            };
            match pass.await {
                Ok(busy) => {
                    backoff.reset();
                    while tasks.try_join_next().is_some() {}
                    if !busy {
                        tokio::select! {
                            _ = tokio::time::sleep(IDLE) => {}
                            _ = shutdown.cancelled() => {}
                        }
                    }
                }
                Err(e) => {
                    backoff.log(&e, "relay pass failed");
                    backoff.sleep(&shutdown).await;
                }
            }
        }
        while tasks.join_next().await.is_some() {}
        Ok(())
    }

    /// One look at every shard: outcomes taken from the stream, due deliveries started.
    /// True when there was work (the next pass comes at once).
    async fn pass(&self, permits: &Arc<Semaphore>, tasks: &mut JoinSet<()>) -> Result<bool> {
        let mut busy = false;
        for queue in self.shards.all() {
            busy |= self.take(queue).await?;
            let free = permits.available_permits();
            if free == 0 {
                busy = true;
                continue;
            }
            let leased = queue.webhook_lease(now_ms(), self.settings.lease(), free).await?;
            busy |= leased.len() == free;
            for (event_id, head) in leased {
                let permit = permits.clone().acquire_owned().await.expect("the semaphore is never closed");
                let (queue, client, settings) = (queue.clone(), self.client.clone(), self.settings.clone());
                tasks.spawn(async move {
                    deliver(&queue, &client, &settings, &event_id, head).await;
                    drop(permit);
                });
            }
        }
        Ok(busy)
    }

    /// Takes the outcomes after the relays' cursor to their reservations' deliveries. True
    /// when there may be more to take at once.
    async fn take(&self, queue: &Queue) -> Result<bool> {
        let from = queue.webhook_cursor().await?;
        let (entries, first) = queue.webhook_read(&from, READ_BATCH).await?;
        let Some(to) = entries.last().map(|e| e.id.clone()) else { return Ok(false) };
        if first.as_deref() == Some(entries[0].id.as_str()) && from != "0-0" {
            // the stream was trimmed up to what the relays had not taken yet: entries between
            // the cursor and the first one left may be lost
            tracing::warn!(
                after = %from,
                first = %entries[0].id,
                "outcomes may have been trimmed from the stream before the relay took them (STOCKQ_OUTCOMES_MAXLEN)"
            );
        }
        let mut taken = Vec::with_capacity(entries.len());
        for entry in &entries {
            match body_of(entry) {
                Some((event_id, at, body)) => {
                    taken.push(Taken { event_id, at, delivery: Delivery::new(at, body).text() })
                }
                None => {
                    tracing::warn!(stream_id = %entry.id, "an outcome entry without an event_id: not delivered")
                }
            }
        }
        Ok(match queue.webhook_take(&from, &to, &taken, now_ms()).await? {
            Some(_) => entries.len() == READ_BATCH,
            // another relay took them: read again at once
            None => true,
        })
    }

    /// The queue-wide gauges: reservations with outcomes to deliver, the age of the oldest
    /// undelivered outcome, webhooks given up on.
    async fn sample(&self) -> Result<()> {
        let Some(tag) = &self.tag else { return Ok(()) };
        crate::http::health::report_if_elected(&self.shards, m::Reporter::Webhooks, tag).await;
        let (mut waiting, mut oldest, mut dead) = (0, None::<i64>, 0);
        for queue in self.shards.all() {
            let backlog = queue.webhook_backlog().await?;
            waiting += backlog.waiting;
            dead += backlog.dead;
            oldest = match (oldest, backlog.oldest_at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        let age = oldest.map(|at| (now_ms() as i64 - at).max(0) as f64 / 1000.0).unwrap_or(0.0);
        metrics::gauge!(m::WEBHOOKS_WAITING).set(waiting as f64);
        metrics::gauge!(m::WEBHOOKS_OLDEST_SECONDS).set(age);
        metrics::gauge!(m::WEBHOOKS_DEAD).set(dead as f64);
        Ok(())
    }
}

/// One try of a reservation's first delivery, and what follows from its answer. A Redis
/// error leaves the lease to run out: the delivery is tried again then.
async fn deliver(
    queue: &Queue,
    client: &reqwest::Client,
    settings: &RelaySettings,
    event_id: &str,
    head: Option<String>,
) {
    let Some(text) = head else {
        // delivered meanwhile, its list empty: nothing is due for it any more
        let _ = queue.webhook_done(event_id, "", now_ms()).await;
        return;
    };
    let resolved = match Delivery::parse(&text) {
        Some(delivery) => {
            let answer = send(client, settings, &delivery).await;
            resolve(queue, settings, event_id, &text, delivery, answer).await
        }
        None => {
            let letter = dead_letter(event_id, &text, None, 0, 0, "the stored delivery is unreadable");
            queue.webhook_dead(event_id, &text, &letter, now_ms()).await.map(|_| ())
        }
    };
    if let Err(e) = resolved {
        tracing::warn!(error = %e, event_id, "could not record a delivery's result; it is tried again");
    }
}

async fn send(
    client: &reqwest::Client,
    settings: &RelaySettings,
    delivery: &Delivery,
) -> std::result::Result<(), String> {
    let t = now_ms() / 1000;
    let id = serde_json::from_str::<Value>(&delivery.body)
        .ok()
        .and_then(|b| b.get("id").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_default();
    let answer = client
        .post(settings.url.expose())
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(SIGNATURE_HEADER, signature(&settings.secret, t, &delivery.body))
        .header("Stockq-Webhook-Id", id)
        .header("Stockq-Attempt", (delivery.attempts + 1).to_string())
        .body(delivery.body.clone())
        .send()
        .await;
    match answer {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => Err(format!("answered HTTP {}", r.status().as_u16())),
        Err(e) if e.is_timeout() => {
            Err(format!("no answer in {}", humantime::format_duration(settings.timeout)))
        }
        // the URL may carry credentials: the error is told without it
        Err(e) => Err(one_line(&error_chain(&e.without_url()))),
    }
}

/// Where deliveries go, as a log may say it: scheme, host and port only (a URL may carry a
/// token as its user, its path or its query).
fn origin_of(url: &str) -> String {
    url::Url::parse(url).map(|u| u.origin().ascii_serialization()).unwrap_or_else(|_| "the webhook".into())
}

/// An error and its causes on one line ("error sending request: connection refused").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

async fn resolve(
    queue: &Queue,
    settings: &RelaySettings,
    event_id: &str,
    text: &str,
    delivery: Delivery,
    answer: std::result::Result<(), String>,
) -> Result<()> {
    let now = now_ms();
    let first_try = if delivery.first_try == 0 { now } else { delivery.first_try };
    let attempts = delivery.attempts + 1;
    match answer {
        Ok(()) => {
            metrics::counter!(m::WEBHOOKS_DELIVERED).increment(1);
            queue.webhook_done(event_id, text, now).await?;
        }
        Err(why) if Duration::from_millis(now.saturating_sub(first_try)) >= settings.retry_for => {
            metrics::counter!(m::WEBHOOKS_DEAD_LETTERED).increment(1);
            tracing::warn!(event_id, attempts, error = %why, "gave up delivering an outcome: a dead letter of webhooks");
            let letter = dead_letter(event_id, &delivery.body, Some(delivery.at), attempts, first_try, &why);
            queue.webhook_dead(event_id, text, &letter, now).await?;
        }
        Err(why) => {
            metrics::counter!(m::WEBHOOKS_RETRIED).increment(1);
            tracing::debug!(event_id, attempts, error = %why, "a delivery failed; tried again later");
            let next = Delivery { attempts, first_try, ..delivery };
            let due = now + retry_delay(attempts).as_millis() as u64;
            queue.webhook_retry(event_id, text, &next.text(), due).await?;
        }
    }
    Ok(())
}

/// A dead letter of webhooks (JSON): the delivery's id, reservation, body and time, its
/// attempts, its first try, when it was given up, and the last error.
fn dead_letter(
    event_id: &str,
    body: &str,
    at: Option<i64>,
    attempts: u32,
    first_try: u64,
    error: &str,
) -> String {
    let parsed = serde_json::from_str::<Value>(body).ok();
    let id = parsed.as_ref().and_then(|b| b.get("id")).cloned().unwrap_or(Value::Null);
    json!({
        "id": id,
        "event_id": event_id,
        "at": at,
        "attempts": attempts,
        "first_try": first_try,
        "died_at": now_ms(),
        "error": error,
        "body": parsed.unwrap_or(Value::from(body)),
    })
    .to_string()
}

/// A dead letter of webhooks as listed (`stockq webhooks list`, the dashboard).
#[derive(Debug, Clone, serde::Serialize)]
pub struct WebhookDeadLetter {
    pub id: String,
    pub event_id: String,
    pub attempts: u64,
    pub first_try: u64,
    pub died_at: u64,
    pub error: String,
    pub body: Value,
    #[serde(skip)]
    raw: String,
}

impl WebhookDeadLetter {
    fn parse(raw: String) -> Option<WebhookDeadLetter> {
        let v: Value = serde_json::from_str(&raw).ok()?;
        let text = |name: &str| v.get(name).and_then(Value::as_str).map(str::to_string);
        let number = |name: &str| v.get(name).and_then(Value::as_u64).unwrap_or(0);
        Some(WebhookDeadLetter {
            id: text("id").unwrap_or_default(),
            event_id: text("event_id")?,
            attempts: number("attempts"),
            first_try: number("first_try"),
            died_at: number("died_at"),
            error: text("error").unwrap_or_default(),
            body: v.get("body").cloned().unwrap_or(Value::Null),
            raw,
        })
    }
}

/// Dead letters of webhooks read per call.
const DEAD_CHUNK: usize = 1000;
/// Dead letters of webhooks looked at per shard by one replay (run it again for more).
pub const REPLAY_BUDGET: usize = 100_000;

/// The newest `limit` dead letters of webhooks (newest first), and how many there are in all.
/// Reads `limit` of each shard at most: a list of millions is never read whole.
pub async fn dead_letters(shards: &Shards, limit: usize) -> Result<(Vec<WebhookDeadLetter>, u64)> {
    let (mut all, mut total) = (Vec::new(), 0);
    let stop = limit.min(isize::MAX as usize).saturating_sub(1) as isize;
    for queue in shards.all() {
        let (raws, len) = queue.webhook_dead_letters(0, stop).await?;
        total += len;
        all.extend(raws.into_iter().filter_map(WebhookDeadLetter::parse));
    }
    all.sort_by_key(|l| std::cmp::Reverse(l.died_at));
    all.truncate(limit);
    Ok((all, total))
}

/// Sends dead letters of webhooks again: the one whose delivery id (or reservation) is `id`,
/// or every one when `id` is `None`. Each goes back in front of its reservation's
/// deliveries, tried anew (attempts and retry time from zero). Looks at the newest
/// [`REPLAY_BUDGET`] of each shard. Returns how many it replayed.
pub async fn replay(shards: &Shards, id: Option<&str>) -> Result<u64> {
    let mut replayed = 0;
    for (shard, queue) in shards.all().iter().enumerate() {
        // the letters chosen first, then replayed: a replay removes its letter, which would
        // move the positions still to read
        let mut chosen = Vec::new();
        let mut pos = 0;
        while pos < REPLAY_BUDGET {
            let (raws, _) = queue.webhook_dead_letters(pos as isize, (pos + DEAD_CHUNK - 1) as isize).await?;
            pos += raws.len();
            let short = raws.len() < DEAD_CHUNK;
            for raw in raws {
                match WebhookDeadLetter::parse(raw) {
                    Some(l) if id.is_none_or(|id| id == l.id || id == l.event_id) => chosen.push(l),
                    Some(_) => {}
                    None => tracing::warn!(shard, "an unreadable dead letter of webhooks is left in place"),
                }
            }
            if short {
                break;
            }
        }
        // oldest first: each goes to the front of its reservation's deliveries, so that a
        // reservation's letters end up in the order they died in
        for letter in chosen.into_iter().rev() {
            let at = serde_json::from_str::<Value>(&letter.raw)
                .ok()
                .and_then(|v| v.get("at").and_then(Value::as_i64))
                .unwrap_or_else(|| now_ms() as i64);
            let body = match &letter.body {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            if queue
                .webhook_replay(&letter.event_id, &letter.raw, &Delivery::new(at, body).text(), now_ms())
                .await?
            {
                replayed += 1;
            }
        }
    }
    Ok(replayed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_is_the_hmac_of_the_time_and_the_body() {
        // RFC 4231 test case 2's key and data, framed as "<t>.<body>"
        let secret = "Jefe";
        let sig = signature(secret, 0, "what do ya want for nothing?");
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"Jefe").unwrap();
        mac.update(b"0.what do ya want for nothing?");
        assert_eq!(sig, format!("t=0,v1={}", hex::encode(mac.finalize().into_bytes())));
        assert!(sig.starts_with("t=0,v1=") && sig.len() == "t=0,v1=".len() + 64);
        assert_ne!(signature(secret, 1, "what do ya want for nothing?"), sig, "the time is signed");
    }

    #[test]
    fn a_delivery_reads_back_as_written_whatever_its_body_holds() {
        let d = Delivery { at: 17, attempts: 3, first_try: 99, body: r#"{"a":"x|y"}"#.into() };
        assert_eq!(Delivery::parse(&d.text()), Some(d));
        assert_eq!(Delivery::parse("no|delivery"), None);
    }

    #[test]
    fn retries_wait_longer_each_time_up_to_the_longest() {
        for attempts in 1..40 {
            let d = retry_delay(attempts);
            let full = FIRST_RETRY.saturating_mul(1 << (attempts - 1).min(20)).min(LONGEST_RETRY);
            assert!(d >= full / 2 && d <= full, "{attempts}: {d:?}");
        }
        assert!(retry_delay(1) <= Duration::from_secs(1));
        assert!(retry_delay(30) >= LONGEST_RETRY / 2);
    }

    #[test]
    fn a_body_carries_the_outcome_with_numbers_and_an_id() {
        let entry = StreamEntry {
            id: "1-0".into(),
            fields: [
                ("event_id", "o-1"),
                ("state", "applied"),
                ("product_id", "42"),
                ("qty", "2"),
                ("version", "3"),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        };
        let (event_id, _, body) = body_of(&entry).unwrap();
        assert_eq!(event_id, "o-1");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["id"], "o-1@3");
        assert_eq!(
            (v["product_id"].as_i64(), v["qty"].as_i64(), v["version"].as_i64()),
            (Some(42), Some(2), Some(3))
        );
        assert_eq!(v["state"], "applied");
        let no_id = StreamEntry { id: "2-0".into(), fields: vec![("state".into(), "x".into())] };
        assert!(body_of(&no_id).is_none());
    }
}
