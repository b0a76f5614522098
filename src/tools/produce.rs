//! `stockq produce`: a load generator that reserves through the same script as shoppers.
//!
//! Reservations are sent `in_flight` at a time over the shared multiplexed connection, which
//! pipelines them; each one's latency is measured from send to answer.

use std::time::{Duration, Instant};

use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::queue::Shards;
use crate::reservations::{Request, Reservation, new_event_id, reserve_routed};

pub(crate) const DEFAULT_IN_FLIGHT: usize = 32;

#[derive(Debug, Clone)]
pub struct ProduceOptions {
    pub events: u64,
    /// Products 1..=products, chosen uniformly.
    pub products: i64,
    pub qty: i64,
    /// Every event on product 1.
    pub hot: bool,
    /// At most this many reservations per second.
    pub rate: Option<u64>,
    /// Reservations awaiting an answer at once.
    pub in_flight: usize,
    pub progress: bool,
}

/// How the generated shoppers behave beyond reserving (docs/lifecycle.md).
#[derive(Debug, Clone, Default)]
pub struct ShopperOptions {
    /// Each reservation for one of this many buyers, at random (`buyer-1`..).
    pub buyers: Option<u64>,
    /// Each reservation held this long instead of queued.
    pub hold: Option<Duration>,
    /// Afterwards, cancel this many of the reservations made (the first ones answered), as
    /// fast as `in_flight` allows.
    pub cancel: u64,
}

impl ProduceOptions {
    pub(crate) fn validate(&self) -> Result<()> {
        if self.events == 0 {
            return Err(Error::usage("--events must be at least 1"));
        }
        if self.products < 1 {
            return Err(Error::usage("--products must be at least 1"));
        }
        crate::event::validate_qty(self.qty).map_err(|e| Error::usage(format!("--qty: {e}")))?;
        if self.rate == Some(0) {
            return Err(Error::usage("--rate must be at least 1 (leave it out for no limit)"));
        }
        if self.in_flight == 0 {
            return Err(Error::usage("--in-flight must be at least 1"));
        }
        Ok(())
    }
}

/// Latency percentiles in microseconds.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Latency {
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl Latency {
    pub(crate) fn from_samples(mut samples: Vec<u64>) -> Latency {
        if samples.is_empty() {
            return Latency::default();
        }
        samples.sort_unstable();
        let at = |q: f64| samples[((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1];
        Latency { p50_us: at(0.50), p99_us: at(0.99), p999_us: at(0.999), max_us: at(1.0) }
    }
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct ProduceReport {
    pub reserved: u64,
    pub sold_out: u64,
    pub unknown_product: u64,
    /// Refused by a per-buyer limit.
    pub limited: u64,
    /// Refused while a shard was healed after Redis lost writes.
    pub healing: u64,
    /// Refused while the product's sale was paused.
    pub paused: u64,
    #[serde(serialize_with = "secs")]
    pub elapsed: Duration,
    pub latency: Latency,
    /// The cancels made afterwards, when asked for.
    pub cancels: Option<CancelReport>,
}

/// How fast reservations were cancelled.
#[derive(Debug, Default, Clone, Serialize)]
pub struct CancelReport {
    pub cancelled: u64,
    #[serde(serialize_with = "secs")]
    pub elapsed: Duration,
    pub per_second: f64,
    pub latency: Latency,
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

impl ProduceReport {
    pub(crate) fn per_second(&self) -> f64 {
        (self.reserved + self.sold_out + self.unknown_product) as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

pub async fn produce(shards: &Shards, options: &ProduceOptions) -> Result<ProduceReport> {
    produce_shoppers(shards, options, &ShopperOptions::default()).await
}

/// Like [`produce`], with buyers, holds and cancels.
pub async fn produce_shoppers(
    shards: &Shards,
    options: &ProduceOptions,
    shoppers: &ShopperOptions,
) -> Result<ProduceReport> {
    options.validate()?;
    let bar = if options.progress {
        let bar = ProgressBar::new(options.events);
        bar.set_style(
            ProgressStyle::with_template("{prefix:>9} [{bar:40}] {pos}/{len} {per_sec} {msg}")
                .expect("static template")
                .progress_chars("=> "),
        );
        bar.set_prefix("reserving");
        bar
    } else {
        ProgressBar::hidden()
    };
    let started = Instant::now();
    let products = options.products;
    let hot = options.hot;
    let qty = options.qty;
    let rate = options.rate;
    let (buyers, hold) = (shoppers.buyers, shoppers.hold);
    // Paced one after another: every reservation that has come due since the last wake goes
    // at once, so the producer wakes about once a millisecond (the timer's resolution), not
    // once a reservation, and takes less of the machine it measures.
    let paced = futures::stream::iter(0..options.events).then(move |i| async move {
        if let Some(rate) = rate {
            let due = started + Duration::from_secs_f64(i as f64 / rate as f64);
            if due > Instant::now() {
                tokio::time::sleep_until(due.into()).await;
            }
        }
        i
    });
    let answers = paced
        .map(|_| async move {
            let product_id = if hot { 1 } else { rand::random_range(1..=products) };
            let event_id = new_event_id();
            let buyer = buyers.map(|n| format!("buyer-{}", rand::random_range(1..=n.max(1))));
            let request = Request { product_id, qty, event_id: &event_id, buyer: buyer.as_deref(), hold };
            let sent = Instant::now();
            let answer = reserve_routed(shards, request).await;
            (answer, sent.elapsed(), product_id, event_id)
        })
        .buffer_unordered(options.in_flight);
    let mut answers = std::pin::pin!(answers);

    let mut report = ProduceReport::default();
    let mut samples = Vec::with_capacity(options.events as usize);
    let mut to_cancel = Vec::with_capacity(shoppers.cancel.min(options.events) as usize);
    while let Some((answer, took, product_id, event_id)) = answers.next().await {
        match answer? {
            Reservation::Reserved { .. } => {
                report.reserved += 1;
                if (to_cancel.len() as u64) < shoppers.cancel {
                    to_cancel.push((product_id, event_id));
                }
            }
            // fresh ids: neither happens unless another producer uses the same ones
            Reservation::Replayed { .. } | Reservation::IdUsed { .. } => {}
            Reservation::SoldOut { .. } => report.sold_out += 1,
            Reservation::UnknownProduct => report.unknown_product += 1,
            // the load generator gives no buyer; a product with a limit refuses it
            Reservation::BuyerRequired { .. } | Reservation::LimitReached { .. } => report.limited += 1,
            Reservation::Healing { .. } => report.healing += 1,
            Reservation::Paused { .. } => report.paused += 1,
        }
        samples.push(took.as_micros() as u64);
        bar.inc(1);
        if report.sold_out > 0 && report.sold_out % 1024 == 1 {
            bar.set_message(format!("sold out: {}", report.sold_out));
        }
    }
    bar.finish_and_clear();
    report.elapsed = started.elapsed();
    report.latency = Latency::from_samples(samples);
    crate::reservations::refusals::flush(shards).await?;
    if shoppers.cancel > 0 {
        report.cancels = Some(cancel_all(shards, &to_cancel, options.in_flight).await?);
    }
    Ok(report)
}

/// Cancels `event_id` in its product's own shard, or for a spread product in whichever
/// bucket's shard holds its record.
async fn cancel_anywhere(shards: &Shards, product_id: i64, event_id: &str) -> Result<crate::queue::Cancel> {
    let home = shards.for_product(product_id);
    let answer = home.cancel(event_id, None).await?;
    if answer != crate::queue::Cancel::Unknown || !shards.is_spread(product_id).await {
        return Ok(answer);
    }
    for queue in shards.all().iter().filter(|q| q.shard() != home.shard()) {
        let answer = queue.cancel(event_id, None).await?;
        if answer != crate::queue::Cancel::Unknown {
            return Ok(answer);
        }
    }
    Ok(crate::queue::Cancel::Unknown)
}

/// Cancels every reservation of `made`, `in_flight` at a time.
async fn cancel_all(shards: &Shards, made: &[(i64, String)], in_flight: usize) -> Result<CancelReport> {
    let started = Instant::now();
    let mut answers = futures::stream::iter(made.iter().cloned())
        .map(|(product_id, event_id)| async move {
            let sent = Instant::now();
            let answer = cancel_anywhere(shards, product_id, &event_id).await;
            (answer, sent.elapsed())
        })
        .buffer_unordered(in_flight);
    let mut samples = Vec::with_capacity(made.len());
    let mut cancelled = 0;
    while let Some((answer, took)) = answers.next().await {
        if matches!(answer?, crate::queue::Cancel::Done { changed: true, .. }) {
            cancelled += 1;
        }
        samples.push(took.as_micros() as u64);
    }
    let elapsed = started.elapsed();
    Ok(CancelReport {
        cancelled,
        elapsed,
        per_second: samples.len() as f64 / elapsed.as_secs_f64().max(1e-9),
        latency: Latency::from_samples(samples),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_right_sample() {
        let l = Latency::from_samples((1..=1000).collect());
        assert_eq!((l.p50_us, l.p99_us, l.p999_us, l.max_us), (500, 990, 999, 1000));
        let l = Latency::from_samples(vec![7]);
        assert_eq!((l.p50_us, l.max_us), (7, 7));
    }
}
