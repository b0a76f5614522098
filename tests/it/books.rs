//! The books: the exact consistency check under load and against injected drift, duplicate
//! event ids, and dead letters re-queued or dropped (docs/lifecycle.md "The exact
//! consistency check", README "How it works", docs/commands.md).

use std::time::{Duration, Instant};

use redis::AsyncCommands;
use stockq::Event;
use stockq::{ProduceOptions, produce};
use stockq::{ProductBooks, check};
use stockq::{StepOutcome, Worker, WorkerOptions};
use tokio_util::sync::CancellationToken;

use crate::helpers::TestEnv;

fn books_of(products: &[ProductBooks], id: i64) -> &ProductBooks {
    products.iter().find(|p| p.product_id == id).unwrap_or_else(|| panic!("product {id} not checked"))
}

/// Runs a producer and two workers in process and checks (single-shot, unconfirmed) over and
/// over while they run: every report must be consistent.
///
/// Unlimited, the producer outruns the workers and the queue runs deep: checks then race
/// workers settling entries the snapshot saw. With `rate`, the workers keep up and events
/// reserved after a check's Redis snapshot are applied before its MySQL read.
async fn check_under_live_load(hot: bool, rate: Option<u64>) {
    let events: u64 = if rate.is_some() { 6_000 } else { 20_000 };
    let env = TestEnv::new().await;
    let products: i64 = if hot { 1 } else { 50 };
    // Uniform: about 400 reservations per product, so some products sell out. Hot: product 1
    // sells out three quarters of the way.
    let initial: i64 = if hot { 15_000 } else { 380 };
    for p in 1..=products {
        env.stock(p, initial).await;
    }

    let token = CancellationToken::new();
    let mut workers = Vec::new();
    for _ in 0..2 {
        let worker = Worker::new(
            env.queue.clone(),
            env.ledger.clone(),
            WorkerOptions { concurrency: 1, batch: 100, wait: Duration::from_millis(100) },
        )
        .unwrap();
        let token = token.clone();
        workers.push(tokio::spawn(async move { worker.run(token).await }));
    }
    let producer = {
        let shards = env.shards();
        tokio::spawn(async move {
            produce(
                &shards,
                &ProduceOptions { events, products, qty: 1, hot, rate, in_flight: 64, progress: false },
            )
            .await
        })
    };

    let deadline = Instant::now() + Duration::from_secs(90);
    let (mut checks, mut under_load) = (0, 0);
    loop {
        let report = check(&env.shards(), &env.ledger).await.expect("check runs");
        let drifts: Vec<_> = report.drifts().collect();
        assert!(
            drifts.is_empty(),
            "hot={hot}: check #{checks} (seq {}) reported drift under load: {drifts:?}",
            report.seq
        );
        assert_eq!(report.products.len(), products as usize);
        checks += 1;
        if report.products.iter().map(|p| p.in_flight).sum::<i64>() > 0 {
            under_load += 1;
        }
        let settled =
            producer.is_finished() && env.len("pending").await == 0 && env.len("processing").await == 0;
        if settled && checks >= 15 {
            break;
        }
        assert!(Instant::now() < deadline, "hot={hot}: load did not settle within 90s ({checks} checks)");
    }
    eprintln!("hot={hot} rate={rate:?}: {checks} checks, {under_load} of them with events in flight");
    assert!(under_load >= 3, "hot={hot}: only {under_load} of {checks} checks saw events in flight");

    let report = producer.await.unwrap().expect("produce");
    assert_eq!(report.reserved + report.sold_out, events);
    assert_eq!(report.unknown_product, 0);
    if rate.is_none() {
        assert!(report.sold_out > 0, "hot={hot}: the stock was meant to run out: {report:?}");
    }
    token.cancel();
    for w in workers {
        tokio::time::timeout(Duration::from_secs(20), w).await.expect("worker stops").unwrap().unwrap();
    }

    let reserved = report.reserved as i64;
    assert_eq!(env.log_counts().await, (reserved, 0), "hot={hot}");
    let mut units = 0;
    for p in 1..=products {
        let applied = env.applied_units(p).await;
        units += applied;
        let mysql = env.mysql_stock(p).await;
        assert_eq!(mysql, initial - applied, "hot={hot} product {p}");
        assert_eq!(env.redis_stock(p).await, Some(mysql), "hot={hot} product {p}");
    }
    assert_eq!(units, reserved);
    env.assert_books_balance().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn check_is_exact_under_live_load() {
    check_under_live_load(false, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn check_is_exact_under_live_load_hot_product() {
    check_under_live_load(true, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn check_is_exact_while_workers_keep_up() {
    check_under_live_load(false, Some(2_000)).await;
}

/// A store changed behind stockq's back is reported exactly, by product and delta, with
/// events pending, claimed, and applied-but-unacknowledged at the time; repair fixes Redis.
#[tokio::test]
async fn injected_drift_is_reported_exactly_and_repaired() {
    let env = TestEnv::new().await;
    for p in 1..=5 {
        env.stock(p, 100).await;
    }
    // In flight: product 3 x2 three times, product 4 x5 twice, product 1 x1 twice.
    for (i, (product, qty)) in
        [(3, 2), (4, 5), (1, 1), (3, 2), (4, 5), (3, 2), (1, 1)].into_iter().enumerate()
    {
        env.reserve_ok(product, qty, &format!("flight-{i}")).await;
    }
    // A worker claimed the three oldest and applied the first in MySQL, then stalled before
    // acknowledging anything.
    let held = env.queue.claim(3, None).await.unwrap();
    let first = Event::parse(&held.entries[0]).unwrap();
    assert_eq!((first.event_id.as_str(), first.product_id), ("flight-0", 3));
    env.ledger.apply_batch(std::slice::from_ref(&first), held.seq).await.unwrap();
    assert_eq!((env.len("pending").await, env.len("processing").await), (4, 3));

    let report = check(&env.shards(), &env.ledger).await.unwrap();
    assert!(report.is_consistent(), "{:?}", report.drifts().collect::<Vec<_>>());
    let p3 = books_of(&report.products, 3);
    assert_eq!((p3.redis, p3.mysql, p3.in_flight), (Some(94), 98, 4), "the applied event is not in flight");
    let p4 = books_of(&report.products, 4);
    assert_eq!((p4.redis, p4.mysql, p4.in_flight), (Some(90), 100, 10));

    // Drift: Redis of product 3 up by 5, MySQL of product 4 up by 7.
    let mut c = env.redis.clone();
    let _: i64 = redis::AsyncCommands::incr(&mut c, env.key("stock:3"), 5).await.unwrap();
    sqlx::query("UPDATE products SET stock = stock + 7 WHERE id = 4").execute(&env.mysql).await.unwrap();

    let report = check(&env.shards(), &env.ledger).await.unwrap();
    let drifts: Vec<_> = report.drifts().map(|p| (p.product_id, p.delta)).collect();
    assert_eq!(drifts, vec![(3, 5), (4, -7)]);
    let p3 = books_of(&report.products, 3);
    assert_eq!((p3.redis, p3.mysql, p3.in_flight, p3.expected_redis), (Some(99), 98, 4, 94));
    let p4 = books_of(&report.products, 4);
    assert_eq!((p4.redis, p4.mysql, p4.in_flight, p4.expected_redis), (Some(90), 107, 10, 97));

    // the janitor alerts a drift when it starts and when its delta changes, not at every check
    let janitor = env.janitor();
    let alerts = || async {
        let mut c = env.redis.clone();
        redis::cmd("XLEN").arg(env.key("alerts")).query_async::<usize>(&mut c).await.unwrap()
    };
    for _ in 0..3 {
        janitor.check().await.unwrap();
    }
    assert_eq!(alerts().await, 2, "one alert per drifting product");
    let _: i64 = redis::AsyncCommands::incr(&mut c, env.key("stock:3"), 1).await.unwrap();
    janitor.check().await.unwrap();
    janitor.check().await.unwrap();
    assert_eq!(alerts().await, 3, "product 3's delta changed: alerted again");
    let _: i64 = redis::AsyncCommands::decr(&mut c, env.key("stock:3"), 1).await.unwrap();

    let (code, out, err) = env.run(&["check"]).await;
    assert_eq!(code, 1, "drift exits 1: {out}{err}");
    let line = |product: i64| {
        out.lines()
            .find(|l| l.contains(&format!("product {product}:")))
            .unwrap_or_else(|| panic!("product {product} not named in:\n{out}"))
            .to_string()
    };
    let l3 = line(3);
    assert!(l3.contains("delta +5") && l3.contains("redis 99") && l3.contains("mysql 98"), "{l3}");
    let l4 = line(4);
    assert!(l4.contains("delta -7") && l4.contains("redis 90") && l4.contains("mysql 107"), "{l4}");
    for p in [1, 2, 5] {
        assert!(!out.contains(&format!("product {p}:")), "product {p} did not drift:\n{out}");
    }

    let (code, out, _) = env.run(&["check", "--json"]).await;
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("check --json prints one JSON object");
    assert_eq!(v["consistent"], serde_json::json!(false));
    let drifts: Vec<(i64, i64)> = v["drifts"]
        .as_array()
        .expect("drifts array")
        .iter()
        .map(|d| (d["product_id"].as_i64().unwrap(), d["delta"].as_i64().unwrap()))
        .collect();
    assert_eq!(drifts, vec![(3, 5), (4, -7)]);

    let (code, out, err) = env.run(&["check", "--repair"]).await;
    assert_eq!(code, 0, "repair leaves the stores consistent: {out}{err}");
    let (code, out, err) = env.run(&["check"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(env.redis_stock(3).await, Some(94));
    assert_eq!(env.redis_stock(4).await, Some(97));

    // Settle what is in flight: the stalled worker finishes, the rest drains.
    let token = CancellationToken::new();
    let late = env.worker(10).process(&env.queue, held, &token).await.unwrap();
    assert_eq!((late.applied, late.redelivered, late.acknowledged), (2, 1, 3));
    env.drain(10).await;
    assert_eq!(env.log_counts().await, (7, 0));
    for (p, mysql) in [(1, 98), (2, 100), (3, 94), (4, 97), (5, 100)] {
        assert_eq!(env.mysql_stock(p).await, mysql, "product {p}");
        assert_eq!(env.redis_stock(p).await, Some(mysql), "product {p}");
    }
    env.assert_books_balance().await;
}

/// Two reservations with the same event id: MySQL deducts once, the second's Redis stock goes
/// back; whether both land in one batch or in two.
#[tokio::test]
async fn duplicate_event_id_deducts_once() {
    for batch in [10, 1] {
        let env = TestEnv::new().await;
        env.stock(1, 10).await;
        env.reserve_ok(1, 1, "order-1").await;
        // the record that would refuse the reuse has gone (expired, or the reuse was made
        // in another shard): MySQL catches it
        let mut c = env.redis.clone();
        let _: i64 = c.del(env.key("r:order-1")).await.unwrap();
        env.reserve_ok(1, 1, "order-1").await;
        assert_eq!(env.redis_stock(1).await, Some(8));
        env.assert_books_balance().await;

        let worker = env.worker(batch);
        let token = CancellationToken::new();
        let mut reports = Vec::new();
        while let StepOutcome::Batch(r) = worker.step(None, &token).await.unwrap() {
            reports.push(r);
            env.assert_books_balance().await;
        }
        assert_eq!(reports.len(), if batch == 1 { 2 } else { 1 }, "batch {batch}: {reports:?}");
        let applied: u64 = reports.iter().map(|r| r.applied).sum();
        let duplicates: u64 = reports.iter().map(|r| r.duplicates).sum();
        assert_eq!((applied, duplicates), (1, 1), "batch {batch}: {reports:?}");

        assert_eq!(env.mysql_stock(1).await, 9, "batch {batch}: deducted once");
        assert_eq!(env.redis_stock(1).await, Some(9), "batch {batch}: the second reservation given back");
        assert_eq!(env.log_rows().await, 1, "batch {batch}");
        assert_eq!(env.log_status("order-1").await.as_deref(), Some("applied"));
        assert_eq!(env.hget_i64("counters", b"duplicates").await, 1, "batch {batch}");
        assert_eq!(env.hget_i64("counters", b"applied").await, 1, "batch {batch}");
        assert_eq!(env.len("processing").await, 0);
        env.assert_books_balance().await;
    }
}

/// An event for a product never stocked is dead-lettered; once the product exists,
/// `dead requeue` sends it on and it is applied.
#[tokio::test]
async fn dead_letter_requeued_after_the_product_exists_is_applied() {
    let env = TestEnv::new().await;
    env.push_raw(br#"{"event_id":"order-x","product_id":77,"qty":1}"#).await;
    let reports = env.drain(10).await;
    assert_eq!(reports.iter().map(|r| r.dead).sum::<u64>(), 1);
    let letters = env.dead_letters().await;
    assert_eq!(letters.len(), 1);
    assert!(letters[0]["reason"].as_str().unwrap().contains("unknown product 77"), "{}", letters[0]);

    let (code, out, err) = env.run(&["stock", "set", "77", "5"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!((env.mysql_stock(77).await, env.redis_stock(77).await), (5, Some(5)));
    // The hand-pushed event says its unit was taken from Redis, which never happened (there
    // was no stock key). Unstamped, it is not counted in flight, so while it waits the books
    // agree; once applied, Redis holds exactly the 1 unit too many that MySQL deducted.
    let report = check(&env.shards(), &env.ledger).await.unwrap();
    let p = books_of(&report.products, 77);
    assert_eq!((p.in_flight, p.delta), (0, 0));

    let (code, out, err) = env.run(&["dead", "requeue", "order-x"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("requeued 1"), "{out}");
    assert_eq!(env.len("dead").await, 0);
    assert_eq!(env.len("pending").await, 1);
    let reports = env.drain(10).await;
    assert_eq!(reports.iter().map(|r| r.applied).sum::<u64>(), 1);
    assert_eq!(env.mysql_stock(77).await, 4);
    assert_eq!(env.log_status("order-x").await.as_deref(), Some("applied"));
    assert_eq!(env.redis_stock(77).await, Some(5), "applying never touches Redis");
    let report = check(&env.shards(), &env.ledger).await.unwrap();
    let p = books_of(&report.products, 77);
    assert_eq!((p.in_flight, p.delta), (0, 1), "the same +1, now settled");

    let (code, out, err) = env.run(&["check", "--repair"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(env.redis_stock(77).await, Some(4));
    env.assert_books_balance().await;

    // Requeueing an id that is not dead is bad input.
    let (code, _, err) = env.run(&["dead", "requeue", "order-x"]).await;
    assert_eq!(code, 2, "{err}");
}

/// A reserved event dead-lettered by max attempts holds its stock until `dead drop` gives it
/// back, exactly once.
#[tokio::test]
async fn dead_drop_gives_stock_back_exactly_once() {
    let env = TestEnv::with(|s| {
        s.delivery.max_attempts = 2;
        s.delivery.visibility_timeout = Duration::from_millis(200);
    })
    .await;
    env.stock(5, 10).await;
    env.reserve_ok(5, 3, "order-y").await;
    let janitor = env.janitor();
    let mut held = None;
    for attempt in 1..=2 {
        let claim = env.queue.claim(10, None).await.unwrap();
        assert_eq!(claim.entries.len(), 1, "delivery {attempt}");
        held = Some(claim.clone());
        env.wait_past(claim.deadline_ms).await;
        let r = janitor.recover().await.unwrap();
        assert_eq!((r.requeued, r.dead_lettered), if attempt == 1 { (1, 0) } else { (0, 1) });
    }
    assert_eq!(env.len("dead").await, 1);
    assert_eq!(env.redis_stock(5).await, Some(7), "still reserved");
    env.assert_books_balance().await;

    let (code, out, err) = env.run(&["dead", "list"]).await;
    assert_eq!(code, 0, "{err}");
    let line = out.lines().find(|l| l.starts_with("order-y")).unwrap_or_else(|| panic!("not listed:\n{out}"));
    assert!(line.contains("timed out") && line.contains("attempts 2"), "{line}");

    let (code, out, err) = env.run(&["dead", "drop", "order-y"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("dropped 1, gave back 3"), "{out}");
    assert_eq!(env.redis_stock(5).await, Some(10), "the reservation given back");
    assert_eq!(env.len("dead").await, 0);

    let (code, out, err) = env.run(&["dead", "drop", "order-y"]).await;
    assert_eq!(code, 2, "no such dead letter: {out}{err}");
    assert!(err.contains("no dead letter"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line on stderr: {err}");
    assert_eq!(env.redis_stock(5).await, Some(10), "not given back twice");

    assert_eq!(env.log_status("order-y").await.as_deref(), Some("rejected"));
    assert_eq!(env.log_counts().await, (0, 1));
    assert_eq!(env.mysql_stock(5).await, 10);
    env.assert_books_balance().await;

    // The worker that held the last delivery (hung past every claim) finally settles it: the
    // drop's rejected row wins, nothing is deducted and nothing given back a second time.
    let token = CancellationToken::new();
    let late = env.worker(10).process(&env.queue, held.unwrap(), &token).await.unwrap();
    assert_eq!((late.applied, late.redelivered, late.acknowledged), (0, 1, 0), "{late:?}");
    assert_eq!(env.mysql_stock(5).await, 10);
    assert_eq!(env.redis_stock(5).await, Some(10));
    env.assert_books_balance().await;
}

/// The hung worker applies the event after the janitor dead-lettered it: the dead letter
/// then holds no reservation, the check says so, and `dead drop` gives nothing back.
#[tokio::test]
async fn dead_drop_after_a_late_apply_gives_nothing_back() {
    let env = TestEnv::with(|s| {
        s.delivery.max_attempts = 1;
        s.delivery.visibility_timeout = Duration::from_millis(200);
    })
    .await;
    env.stock(6, 10).await;
    env.reserve_ok(6, 4, "order-z").await;
    let claim = env.queue.claim(10, None).await.unwrap();
    env.wait_past(claim.deadline_ms).await;
    assert_eq!(env.janitor().recover().await.unwrap().dead_lettered, 1);

    let token = CancellationToken::new();
    let late = env.worker(10).process(&env.queue, claim, &token).await.unwrap();
    assert_eq!((late.applied, late.acknowledged), (1, 0), "{late:?}");
    assert_eq!(env.len("dead").await, 1, "the late acknowledgement does not touch the dead letter");
    assert_eq!((env.mysql_stock(6).await, env.redis_stock(6).await), (6, Some(6)));
    let report = check(&env.shards(), &env.ledger).await.unwrap();
    let p = books_of(&report.products, 6);
    assert_eq!((p.in_flight, p.delta), (0, 0), "applied: no longer in flight");

    let (code, out, err) = env.run(&["dead", "drop", "order-z"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("dropped 1, gave back 0"), "{out}");
    assert_eq!((env.mysql_stock(6).await, env.redis_stock(6).await), (6, Some(6)));
    assert_eq!(env.log_status("order-z").await.as_deref(), Some("applied"));
    env.assert_books_balance().await;
}

/// A worker that committed a batch and died before acknowledging it: its entries go back to
/// pending marked unsure, and the check, which reads in-flight totals instead of the backlog,
/// still finds them applied and reports no drift, before and after their redelivery.
#[tokio::test]
async fn check_is_exact_when_a_committed_batch_is_requeued() {
    let env = TestEnv::with(|s| s.delivery.visibility_timeout = Duration::from_millis(300)).await;
    env.stock(1, 50).await;
    env.stock(2, 50).await;
    for i in 0..40 {
        env.reserve_ok(1 + i % 2, 1, &format!("unsure-{i}")).await;
    }
    let claim = env.queue.claim(10, None).await.unwrap();
    let events: Vec<Event> = claim.entries.iter().map(|e| Event::parse(e).unwrap()).collect();
    env.ledger.apply_batch(&events, claim.seq).await.unwrap();
    env.assert_books_balance().await;

    env.wait_past(claim.deadline_ms).await;
    assert_eq!(env.janitor().recover().await.unwrap().requeued, 10);
    let mut c = env.redis.clone();
    let unsure: usize = c.scard(env.key("unsure")).await.unwrap();
    assert_eq!(unsure, 10, "the requeued entries are marked unsure");
    env.assert_books_balance().await;

    let reports = env.drain(7).await;
    assert_eq!(reports.iter().map(|r| r.redelivered).sum::<u64>(), 10);
    assert_eq!(reports.iter().map(|r| r.applied).sum::<u64>(), 30);
    let unsure: usize = c.scard(env.key("unsure")).await.unwrap();
    assert_eq!(unsure, 0, "settled entries leave the unsure set");
    let inflight: std::collections::HashMap<String, i64> = c.hgetall(env.key("inflight")).await.unwrap();
    assert!(inflight.values().all(|n| *n == 0), "nothing in flight: {inflight:?}");
    assert_eq!((env.mysql_stock(1).await, env.mysql_stock(2).await), (30, 30));
    env.assert_books_balance().await;
}
