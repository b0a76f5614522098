//! Recovery: crashed workers, orphaned entries, max attempts, late acknowledgements, racing
//! janitors and garbage on the queue (docs/operations.md, "Failure modes").

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use base64::Engine as _;
use redis::AsyncCommands;
use stockq::{ProduceOptions, produce};
use tokio_util::sync::CancellationToken;

use crate::helpers::{TestEnv, send_signal, terminate};

fn text(entry: &[u8]) -> String {
    String::from_utf8(entry.to_vec()).expect("utf-8 entry")
}

/// SIGKILLs workers at random instants while a producer runs and a janitor recovers what they
/// held: every reserved event is applied exactly once and the books balance.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_sigkilled_workers_lose_nothing_and_apply_nothing_twice() {
    let env = TestEnv::with(|s| {
        s.delivery.visibility_timeout = Duration::from_secs(1);
        s.janitor.interval = Duration::from_millis(200);
        s.janitor.check_interval = Duration::from_millis(500);
        s.delivery.max_attempts = 1000;
    })
    .await;
    const PRODUCTS: i64 = 10;
    const INITIAL: i64 = 1_000;
    const EVENTS: u64 = 3_000;
    const MIN_KILLS: usize = 8;
    for p in 1..=PRODUCTS {
        env.stock(p, INITIAL).await;
    }

    let mut janitor = env.spawn(&["janitor"]);
    let worker_args = ["worker", "--batch", "20"];
    let mut workers = vec![env.spawn(&worker_args), env.spawn(&worker_args)];

    let producing = CancellationToken::new();
    let killer = {
        let producing = producing.clone();
        let env = &env;
        async move {
            let mut kills = 0usize;
            while !producing.is_cancelled() || kills < MIN_KILLS {
                let pause = rand::random_range(300..=700);
                tokio::time::sleep(Duration::from_millis(pause)).await;
                let victim = rand::random_range(0..workers.len());
                let pid = workers[victim].id().expect("worker running");
                send_signal(pid, "KILL");
                let status = tokio::time::timeout(Duration::from_secs(10), workers[victim].wait())
                    .await
                    .expect("SIGKILLed worker did not die")
                    .unwrap();
                assert_eq!(status.code(), None, "worker {pid} exited on its own: {status:?}");
                workers[victim] = env.spawn(&worker_args);
                kills += 1;
            }
            (kills, workers)
        }
    };
    let producer = async {
        let report = produce(
            &env.shards(),
            &ProduceOptions {
                events: EVENTS,
                products: PRODUCTS,
                qty: 1,
                hot: false,
                rate: Some(600),
                in_flight: 64,
                progress: false,
            },
        )
        .await
        .expect("produce");
        producing.cancel();
        report
    };
    let (report, (kills, mut workers)) = tokio::join!(producer, killer);
    eprintln!("chaos: {kills} workers SIGKILLed while producing {report:?}");
    assert!(kills >= MIN_KILLS, "only {kills} kills");
    assert_eq!(report.reserved, EVENTS, "generous stock: nothing sells out ({report:?})");
    let reserved = report.reserved as i64;

    env.eventually(Duration::from_secs(60), "every reserved event settled", || async {
        env.len("pending").await == 0 && env.len("processing").await == 0 && env.log_rows().await == reserved
    })
    .await;

    eprintln!(
        "chaos: requeued {} (redelivered {}) after the kills",
        env.hget_i64("counters", b"requeued").await,
        env.hget_i64("counters", b"redelivered").await
    );
    let (applied, rejected) = env.log_counts().await;
    assert_eq!((applied, rejected), (reserved, 0), "each reserved event applied exactly once");
    let mut units = 0;
    for p in 1..=PRODUCTS {
        let applied = env.applied_units(p).await;
        units += applied;
        let mysql = env.mysql_stock(p).await;
        assert_eq!(mysql, INITIAL - applied, "product {p}: MySQL deducted exactly what stock_log applied");
        assert_eq!(env.redis_stock(p).await, Some(mysql), "product {p}: Redis == MySQL");
    }
    assert_eq!(units, reserved, "one unit per reservation");
    assert_eq!(env.len("dead").await, 0, "nothing dead-lettered");
    env.assert_books_balance().await;
    let mut c = env.redis.clone();
    let alerts: usize = redis::cmd("XLEN").arg(env.key("alerts")).query_async(&mut c).await.unwrap();
    assert_eq!(alerts, 0, "the janitor's periodic check reported drift during the chaos");

    for w in &mut workers {
        assert_eq!(terminate(w).await, 0, "worker exits 0 on SIGTERM");
    }
    assert_eq!(terminate(&mut janitor).await, 0, "janitor exits 0 on SIGTERM");
    assert_eq!(env.len("processing").await, 0);
    assert_eq!(env.zcard("claims").await, 0, "no claim left behind");
}

/// An entry moved into processing with no claim (a worker died right after BLMOVE) is
/// adopted first and re-queued one visibility timeout later, never at once.
#[tokio::test]
async fn orphan_in_processing_is_adopted_then_requeued() {
    let env = TestEnv::with(|s| s.delivery.visibility_timeout = Duration::from_millis(300)).await;
    env.stock(1, 10).await;
    env.reserve_ok(1, 3, "orphan-1").await;
    let mut c = env.redis.clone();
    let moved: Vec<u8> = redis::cmd("LMOVE")
        .arg(env.key("pending"))
        .arg(env.key("processing"))
        .arg("RIGHT")
        .arg("LEFT")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(env.zcard("claims").await, 0);

    let janitor = env.janitor();
    let first = janitor.recover().await.unwrap();
    let adopted_at = Instant::now();
    assert_eq!((first.adopted, first.requeued, first.dead_lettered), (1, 0, 0));
    assert_eq!(env.list("processing").await, vec![moved.clone()], "adopted, not moved");
    assert_eq!(env.len("pending").await, 0);
    let deadline: f64 = c.zscore(env.key("claims"), &moved).await.unwrap();
    env.assert_books_balance().await;

    // Before the deadline a pass leaves it alone (checked only if this pass really ran early).
    let early = janitor.recover().await.unwrap();
    if adopted_at.elapsed() < Duration::from_millis(250) {
        assert_eq!((early.adopted, early.requeued), (0, 0), "requeued before its adopted deadline");
        assert_eq!(env.len("processing").await, 1);
    }

    env.wait_past(deadline as i64).await;
    let later = janitor.recover().await.unwrap();
    let requeued = early.requeued + later.requeued;
    assert_eq!((requeued, early.adopted + later.adopted), (1, 0));
    assert_eq!(env.list("pending").await, vec![moved.clone()]);
    assert_eq!(env.len("processing").await, 0);
    assert_eq!(env.zcard("claims").await, 0);
    assert_eq!(env.hget_i64("attempts", &moved).await, 1, "one timed-out delivery counted");

    let reports = env.drain(10).await;
    assert_eq!(reports.iter().map(|r| r.applied).sum::<u64>(), 1);
    assert_eq!(env.log_counts().await, (1, 0));
    assert_eq!(env.mysql_stock(1).await, 7);
    assert_eq!(env.redis_stock(1).await, Some(7));
    assert_eq!(env.hlen("attempts").await, 0, "settling forgets the attempts");
    env.assert_books_balance().await;
}

/// An entry whose claim times out max_attempts times is dead-lettered with a reason, and
/// still holds its reservation (the check counts it in flight).
#[tokio::test]
async fn entry_timing_out_max_attempts_times_is_dead_lettered() {
    let env = TestEnv::with(|s| {
        s.delivery.max_attempts = 2;
        s.delivery.visibility_timeout = Duration::from_millis(200);
    })
    .await;
    env.stock(1, 10).await;
    env.reserve_ok(1, 2, "hung-1").await;
    let entry = env.list("pending").await.remove(0);
    let janitor = env.janitor();

    let claim = env.queue.claim(5, None).await.unwrap();
    assert_eq!(claim.entries, vec![entry.clone()]);
    env.wait_past(claim.deadline_ms).await;
    let r = janitor.recover().await.unwrap();
    assert_eq!((r.requeued, r.adopted, r.dead_lettered), (1, 0, 0));
    assert_eq!(env.hget_i64("attempts", &entry).await, 1);
    assert_eq!(env.list("pending").await, vec![entry.clone()]);
    assert_eq!(env.len("processing").await, 0);

    let started_ms = env.redis_now_ms().await;
    let claim = env.queue.claim(5, None).await.unwrap();
    assert_eq!(claim.entries, vec![entry.clone()], "the same entry is delivered again");
    env.wait_past(claim.deadline_ms).await;
    let r = janitor.recover().await.unwrap();
    assert_eq!((r.requeued, r.adopted, r.dead_lettered), (0, 0, 1));

    let dead = env.dead_letters().await;
    assert_eq!(dead.len(), 1);
    let d = &dead[0];
    assert_eq!(d["entry"].as_str(), Some(text(&entry).as_str()), "the entry kept exactly: {d}");
    let reason = d["reason"].as_str().expect("reason");
    assert!(reason.contains("timed out"), "reason: {reason}");
    assert_eq!(d["attempts"].as_u64(), Some(2));
    let failed_at = d["failed_at"].as_i64().expect("failed_at");
    assert!(
        (started_ms - 5_000..=env.redis_now_ms().await + 5_000).contains(&failed_at),
        "failed_at {failed_at} is not unix ms of now"
    );
    assert_eq!(env.len("processing").await, 0);
    assert_eq!(env.len("pending").await, 0);
    assert_eq!(env.zcard("claims").await, 0);
    assert_eq!(env.hlen("attempts").await, 0);

    // Nothing more happens on later passes.
    let r = janitor.recover().await.unwrap();
    assert_eq!((r.requeued, r.adopted, r.dead_lettered), (0, 0, 0));

    // Still a reservation: Redis 8 == MySQL 10 − 2 in flight.
    let report = stockq::check(&env.shards(), &env.ledger).await.unwrap();
    let p = report.products.iter().find(|p| p.product_id == 1).unwrap();
    assert_eq!((p.redis, p.mysql, p.in_flight, p.delta), (Some(8), 10, 2, 0));
    env.assert_books_balance().await;
    assert_eq!(env.log_rows().await, 0, "never reached MySQL");
}

/// A batch leaves processing wherever it sits: in the middle, at the head (the newest claim),
/// at the tail (the oldest), alone, or as part of two claims; settle.lua trims a whole block
/// at either end and searches for anything else, and must never take another batch's entry.
#[tokio::test]
async fn a_batch_is_acknowledged_wherever_it_sits_in_processing() {
    let env = TestEnv::new().await;
    env.stock(1, 100).await;
    for i in 0..16 {
        env.reserve_ok(1, 1, &format!("pos-{i}")).await;
    }
    let mut claims = Vec::new();
    for _ in 0..4 {
        let claim = env.queue.claim(3, None).await.unwrap();
        assert_eq!(claim.entries.len(), 3);
        claims.push(claim);
    }
    let (a, b, c, d) = (claims[0].clone(), claims[1].clone(), claims[2].clone(), claims[3].clone());
    let e = env.queue.claim(2, None).await.unwrap();
    let f = env.queue.claim(2, None).await.unwrap();
    // a batch of one entry of each of the two newest claims, then the rest of both
    let mut e_and_f = e.clone();
    e_and_f.entries = vec![e.entries[0].clone(), f.entries[1].clone()];
    let mut rest = e.clone();
    rest.entries = vec![e.entries[1].clone(), f.entries[0].clone()];

    let worker = env.worker(10);
    let token = CancellationToken::new();
    let sorted = |mut v: Vec<Vec<u8>>| {
        v.sort();
        v
    };
    let mut left = sorted(env.list("processing").await);
    // processing, head to tail: f, e, d, c, b, a
    let order = [("middle", b), ("mixed", e_and_f), ("rest", rest), ("head", d), ("tail", a), ("alone", c)];
    for (name, claim) in order {
        let report = worker.process(&env.queue, claim.clone(), &token).await.unwrap();
        let n = claim.entries.len() as u64;
        assert_eq!((report.applied, report.acknowledged), (n, n), "{name}: {report:?}");
        for entry in &claim.entries {
            let at = left.iter().position(|x| x == entry).expect("an entry of the batch was in processing");
            left.remove(at);
        }
        assert_eq!(
            sorted(env.list("processing").await),
            left,
            "{name}: exactly the batch's entries left processing"
        );
    }
    assert!(left.is_empty());
    assert_eq!(env.len("pending").await, 0);
    assert_eq!(env.log_counts().await, (16, 0));
    env.assert_books_balance().await;

    // the same bytes twice in one batch (pushed by hand): both leave processing, once each
    let twice = br#"{"event_id":"by-hand-twice","product_id":1,"qty":1}"#;
    env.push_raw(twice).await;
    env.push_raw(twice).await;
    let claim = env.queue.claim(10, None).await.unwrap();
    assert_eq!(claim.entries.len(), 2);
    let report = worker.process(&env.queue, claim, &token).await.unwrap();
    assert_eq!((report.applied, report.redelivered, report.acknowledged), (1, 1, 2), "{report:?}");
    assert_eq!(env.len("processing").await, 0);
}

/// A slow worker's entry is re-queued and delivered again; whichever holder settles first and
/// whatever the old holder does afterwards, MySQL changes once and Redis gives back at most once.
#[tokio::test]
async fn late_acknowledgement_does_no_harm() {
    for reject in [false, true] {
        for old_holder_first in [false, true] {
            late_ack(reject, old_holder_first).await;
        }
    }
}

async fn late_ack(reject: bool, old_holder_first: bool) {
    let case = format!("reject={reject} old_holder_first={old_holder_first}");
    let env = TestEnv::with(|s| s.delivery.visibility_timeout = Duration::from_millis(200)).await;
    env.stock(1, 10).await;
    env.reserve_ok(1, 2, "late-1").await;
    if reject {
        // MySQL changed behind stockq's back: it cannot honour the reservation.
        sqlx::query("UPDATE products SET stock = 1 WHERE id = 1").execute(&env.mysql).await.unwrap();
    }
    let old = env.worker(10);
    let new = env.worker(10);
    let token = CancellationToken::new();

    let slow = env.queue.claim(10, None).await.unwrap();
    assert_eq!(slow.entries.len(), 1);
    env.wait_past(slow.deadline_ms).await;
    assert_eq!(env.janitor().recover().await.unwrap().requeued, 1, "{case}");
    let again = env.queue.claim(10, None).await.unwrap();
    assert_eq!(again.entries, slow.entries, "{case}: redelivered");

    let (first, second) = if old_holder_first {
        (
            old.process(&env.queue, slow.clone(), &token).await.unwrap(),
            new.process(&env.queue, again.clone(), &token).await.unwrap(),
        )
    } else {
        let a = new.process(&env.queue, again.clone(), &token).await.unwrap();
        (a, old.process(&env.queue, slow.clone(), &token).await.unwrap())
    };
    if reject {
        assert_eq!((first.rejected, first.acknowledged), (1, 1), "{case}: {first:?}");
    } else {
        assert_eq!((first.applied, first.acknowledged), (1, 1), "{case}: {first:?}");
    }
    assert_eq!(
        (second.applied, second.rejected, second.redelivered, second.acknowledged),
        (0, 0, 1, 0),
        "{case}: the second settlement changes nothing: {second:?}"
    );

    assert_eq!(env.len("processing").await, 0, "{case}");
    assert_eq!(env.len("pending").await, 0, "{case}");
    assert_eq!(env.log_rows().await, 1, "{case}");
    if reject {
        assert_eq!(env.log_counts().await, (0, 1), "{case}");
        assert_eq!(env.mysql_stock(1).await, 1, "{case}");
        assert_eq!(env.redis_stock(1).await, Some(10), "{case}: stock given back exactly once");
        // Put MySQL back as it was before the tampering: the stores then agree.
        sqlx::query("UPDATE products SET stock = 10 WHERE id = 1").execute(&env.mysql).await.unwrap();
    } else {
        assert_eq!(env.log_counts().await, (1, 0), "{case}");
        assert_eq!(env.mysql_stock(1).await, 8, "{case}: applied once");
        assert_eq!(env.redis_stock(1).await, Some(8), "{case}");
    }
    // the running totals count the entry once, by the settlement that found it
    let mut c = env.redis.clone();
    let totals: HashMap<String, u64> = c.hgetall(env.key("counters")).await.unwrap();
    let settled = if reject { "rejected" } else { "applied" };
    assert_eq!(totals.get(settled), Some(&1), "{case}: {totals:?}");
    assert_eq!(totals.get("redelivered"), None, "{case}: a late acknowledgement counts nothing: {totals:?}");
    env.assert_books_balance().await;
    // Nothing is left to deliver a third time.
    assert!(env.drain(10).await.is_empty(), "{case}");
}

/// Two janitors recovering the same 200 expired claims at once: each entry is re-queued
/// exactly once, and later dead-lettered exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_janitors_at_once_never_duplicate() {
    const N: usize = 200;
    let env = TestEnv::with(|s| {
        s.delivery.visibility_timeout = Duration::from_millis(200);
        s.delivery.max_attempts = 2;
    })
    .await;
    env.stock(1, N as i64).await;
    for i in 0..N {
        env.reserve_ok(1, 1, &format!("race-{i}")).await;
    }
    let other_queue = stockq::Queue::connect(&env.settings).await.unwrap();
    let j1 = env.janitor();
    let j2 = stockq::Janitor::new(other_queue, env.ledger.clone(), env.settings.janitor);

    let claim = env.queue.claim(N, None).await.unwrap();
    assert_eq!(claim.entries.len(), N);
    let claimed: BTreeSet<Vec<u8>> = claim.entries.iter().cloned().collect();
    assert_eq!(claimed.len(), N, "reservations are distinct entries");
    env.wait_past(claim.deadline_ms).await;

    let mut requeued = 0;
    for _ in 0..5 {
        let (a, b) = tokio::join!(j1.recover(), j2.recover());
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(a.dead_lettered + b.dead_lettered, 0);
        requeued += a.requeued + b.requeued;
    }
    assert_eq!(requeued, N as u64);
    let pending = env.list("pending").await;
    assert_eq!(pending.len(), N, "exactly {N} entries back in pending");
    assert_eq!(pending.iter().cloned().collect::<BTreeSet<_>>(), claimed, "all distinct, the same entries");
    assert_eq!(env.len("processing").await, 0);
    assert_eq!(env.zcard("claims").await, 0);
    assert_eq!(env.hlen("attempts").await, N);
    for entry in &claimed {
        assert_eq!(env.hget_i64("attempts", entry).await, 1, "counted once: {}", text(entry));
    }
    env.assert_books_balance().await;

    // Second delivery times out too: max attempts reached, dead-lettered exactly once each.
    let claim = env.queue.claim(N, None).await.unwrap();
    assert_eq!(claim.entries.len(), N);
    env.wait_past(claim.deadline_ms).await;
    let mut dead = 0;
    for _ in 0..5 {
        let (a, b) = tokio::join!(j1.recover(), j2.recover());
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(a.requeued + b.requeued, 0);
        dead += a.dead_lettered + b.dead_lettered;
    }
    assert_eq!(dead, N as u64);
    let letters = env.dead_letters().await;
    assert_eq!(letters.len(), N);
    let entries: BTreeSet<Vec<u8>> =
        letters.iter().map(|d| d["entry"].as_str().unwrap().as_bytes().to_vec()).collect();
    assert_eq!(entries, claimed, "each entry dead-lettered exactly once");
    assert_eq!(env.len("pending").await, 0);
    assert_eq!(env.len("processing").await, 0);
    assert_eq!(env.zcard("claims").await, 0);
    assert_eq!(env.hlen("attempts").await, 0);
    env.assert_books_balance().await;
}

/// Garbage pushed by hand goes to `{q}:dead` with a reason naming what is wrong; the good
/// events around it are applied.
#[tokio::test]
async fn garbage_is_dead_lettered_with_a_reason_and_good_events_proceed() {
    let env = TestEnv::new().await;
    env.stock(1, 100).await;
    env.stock(2, 100).await;
    let big = format!(r#"{{"event_id":"big-1","product_id":1,"qty":1,"pad":"{}"}}"#, "x".repeat(4200));
    let bad: Vec<(Vec<u8>, &str)> = vec![
        (b"this is not json {".to_vec(), "not JSON"),
        (b"\xff\xfe".to_vec(), "not UTF-8"),
        (big.into_bytes(), "at most 4096"),
        (br#"{"product_id":1,"qty":1}"#.to_vec(), "event_id is missing"),
        (br#"{"event_id":12345,"product_id":1,"qty":1}"#.to_vec(), "event_id is not a string"),
        (br#"{"event_id":"bad id!","product_id":1,"qty":1}"#.to_vec(), "is not 1 to 64 characters"),
        (br#"{"event_id":"qty-zero","product_id":1,"qty":0}"#.to_vec(), "qty 0 is out of range"),
        (br#"{"event_id":"qty-big","product_id":1,"qty":1000001}"#.to_vec(), "qty 1000001 is out of range"),
        (br#"{"event_id":"pid-string","product_id":"7","qty":1}"#.to_vec(), "product_id is not a number"),
        (br#"{"event_id":"pid-float","product_id":1.5,"qty":1}"#.to_vec(), "product_id is not an integer"),
        (br#"{"event_id":"ghost-1","product_id":999,"qty":1}"#.to_vec(), "unknown product 999"),
        (br#"[{"event_id":"array-1","product_id":1,"qty":1}]"#.to_vec(), "not a JSON object"),
    ];
    let mut expected_units: HashMap<i64, i64> = HashMap::new();
    let mut good = 0;
    let mut reserve_good = async |i: usize| {
        let (product, qty) = (1 + (i % 2) as i64, 1 + (i % 3) as i64);
        env.reserve_ok(product, qty, &format!("good-{i}")).await;
        *expected_units.entry(product).or_default() += qty;
        good += 1;
    };
    for (i, (entry, _)) in bad.iter().enumerate() {
        reserve_good(2 * i).await;
        env.push_raw(entry).await;
        reserve_good(2 * i + 1).await;
    }

    let reports = env.drain(7).await;
    assert_eq!(reports.iter().map(|r| r.applied).sum::<u64>(), good);
    assert_eq!(reports.iter().map(|r| r.dead).sum::<u64>(), bad.len() as u64);
    assert_eq!(env.len("pending").await, 0);
    assert_eq!(env.len("processing").await, 0);

    let letters = env.dead_letters().await;
    assert_eq!(letters.len(), bad.len(), "{letters:?}");
    let decoded: Vec<Vec<u8>> = letters
        .iter()
        .map(|d| match (d.get("entry"), d.get("entry_base64")) {
            (Some(e), None) => e.as_str().expect("entry is a string").as_bytes().to_vec(),
            (None, Some(b)) => base64::engine::general_purpose::STANDARD
                .decode(b.as_str().expect("entry_base64 is a string"))
                .expect("valid base64"),
            _ => panic!("envelope must hold exactly one of entry / entry_base64: {d}"),
        })
        .collect();
    for (entry, why) in &bad {
        let shown = String::from_utf8_lossy(&entry[..entry.len().min(60)]).into_owned();
        let found: Vec<usize> = (0..letters.len()).filter(|&i| &decoded[i] == entry).collect();
        assert_eq!(found.len(), 1, "{shown:?} must be dead-lettered exactly once");
        let d = &letters[found[0]];
        let reason = d["reason"].as_str().unwrap();
        assert!(reason.contains(why), "{shown:?}: reason {reason:?} should mention {why:?}");
        assert_eq!(d["attempts"].as_u64(), Some(1), "{shown:?}: invalid entries are not retried");
        assert!(d["failed_at"].as_u64().is_some_and(|t| t > 1_600_000_000_000), "{d}");
        let is_utf8 = std::str::from_utf8(entry).is_ok();
        assert_eq!(d.get("entry_base64").is_some(), !is_utf8, "{shown:?}: {d}");
    }

    assert_eq!(env.log_counts().await, (good as i64, 0));
    for product in [1, 2] {
        let units = expected_units[&product];
        assert_eq!(env.applied_units(product).await, units);
        assert_eq!(env.mysql_stock(product).await, 100 - units, "product {product}");
        assert_eq!(env.redis_stock(product).await, Some(100 - units), "product {product}");
    }
    env.assert_books_balance().await;
}
