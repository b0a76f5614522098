//! Reservation records, replays, status and the outcome stream (docs/outcomes.md).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use serde_json::Value;
use stockq::{Reservation, ReservationState};
use tokio_util::sync::CancellationToken;

use crate::faults::RedisServer;
use crate::helpers::{TestEnv, http, send_signal};

/// Every entry of the test queue's outcome stream, oldest first, as field maps.
async fn outcomes(env: &TestEnv) -> Vec<HashMap<String, String>> {
    let mut c = env.redis.clone();
    let raw: Vec<(String, Vec<(String, String)>)> =
        redis::cmd("XRANGE").arg(env.key("outcomes")).arg("-").arg("+").query_async(&mut c).await.unwrap();
    raw.into_iter().map(|(_, fields)| fields.into_iter().collect()).collect()
}

async fn record(env: &TestEnv, event_id: &str) -> HashMap<String, String> {
    env.record_fields(event_id).await
}

async fn pttl(env: &TestEnv, event_id: &str) -> i64 {
    let mut c = env.redis.clone();
    redis::cmd("PTTL").arg(env.key(&format!("r:{event_id}"))).query_async(&mut c).await.unwrap()
}

/// The last unit, its reservation retried 100 times at once (a client whose answers were
/// lost): one reservation, and every answer is the first one, never "sold out".
#[tokio::test]
async fn the_last_unit_retried_100_times_is_reserved_once() {
    let env = TestEnv::new().await;
    env.stock(77, 1).await;
    let tries = (0..100).map(|_| stockq::reserve_for(&env.queue, 77, 1, "order-77", Some("buyer-1")));
    let answers: Vec<Reservation> =
        futures::future::join_all(tries).await.into_iter().map(|r| r.expect("reserve")).collect();
    let fresh = answers.iter().filter(|a| matches!(a, Reservation::Reserved { .. })).count();
    assert_eq!(fresh, 1, "{answers:?}");
    let seqs: Vec<(i64, i64)> = answers
        .iter()
        .map(|a| match a {
            Reservation::Reserved { seq, reserved_at, .. } => (*seq, *reserved_at),
            Reservation::Replayed { seq, reserved_at, state, .. } => {
                assert_eq!(state, &ReservationState::Queued);
                (*seq, *reserved_at)
            }
            other => panic!("not the first answer: {other:?}"),
        })
        .collect();
    assert!(seqs.iter().all(|s| *s == seqs[0]), "every answer has the first seq: {seqs:?}");
    assert_eq!(env.redis_stock(77).await, Some(0), "one unit taken");
    assert_eq!(env.len("pending").await, 1, "one event enqueued");
    assert_eq!(env.hget_i64("inflight", b"77").await, 1);

    // the binary answers a replay as the first time: exit 0 and the event id
    let (code, out, err) =
        env.run(&["reserve", "77", "1", "--event-id", "order-77", "--buyer", "buyer-1"]).await;
    assert_eq!((code, out.trim()), (0, "order-77"), "{err}");
    let (code, out, _) =
        env.run(&["reserve", "77", "1", "--event-id", "order-77", "--buyer", "buyer-1", "--json"]).await;
    assert_eq!(code, 0);
    let answer: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(answer["replayed"], true);
    assert_eq!((answer["seq"].as_i64(), answer["buyer"].as_str()), (Some(seqs[0].0), Some("buyer-1")));
    env.drain(10).await;
    env.assert_books_balance().await;
}

/// An event id reused for another product, quantity or buyer is refused and takes nothing,
/// before and after the first reservation is applied.
#[tokio::test]
async fn an_event_id_reused_otherwise_is_refused() {
    let env = TestEnv::new().await;
    env.stock(1, 10).await;
    env.stock(2, 10).await;
    let (code, _, err) = env.run(&["reserve", "1", "2", "--event-id", "order-9", "--buyer", "b1"]).await;
    assert_eq!(code, 0, "{err}");
    for applied in [false, true] {
        for args in [
            &["reserve", "2", "2", "--event-id", "order-9", "--buyer", "b1"][..],
            &["reserve", "1", "1", "--event-id", "order-9", "--buyer", "b1"][..],
            &["reserve", "1", "2", "--event-id", "order-9", "--buyer", "b2"][..],
            &["reserve", "1", "2", "--event-id", "order-9"][..],
        ] {
            let (code, _, err) = env.run(args).await;
            assert_eq!(code, 6, "{args:?}: {err}");
            assert!(err.contains("event id already used"), "{err}");
        }
        assert_eq!(
            (env.redis_stock(1).await, env.redis_stock(2).await),
            (Some(8), Some(10)),
            "nothing taken"
        );
        if !applied {
            assert_eq!(env.len("pending").await, 1);
            env.drain(10).await;
        }
    }
    assert_eq!(env.mysql_stock(1).await, 8);
    assert_eq!(record(&env, "order-9").await["state"], "applied");
    env.assert_books_balance().await;
}

/// `status` follows a reservation from queued to applied, and answers from MySQL once the
/// record is gone; `outcomes` shows the outcome.
#[tokio::test]
async fn status_from_the_record_then_from_mysql() {
    let env = TestEnv::new().await;
    env.stock(5, 3).await;
    let (code, _, err) = env.run(&["reserve", "5", "2", "--event-id", "o-5", "--buyer", "ann"]).await;
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = env.run(&["status", "o-5", "--json"]).await;
    assert_eq!(code, 0, "{err}");
    let queued: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(queued["state"], "queued");
    assert_eq!((queued["product_id"].as_i64(), queued["qty"].as_i64()), (Some(5), Some(2)));
    assert_eq!((queued["buyer"].as_str(), &queued["deadline"]), (Some("ann"), &Value::Null));
    assert!(queued["reserved_at"].as_i64().unwrap() > 0);
    assert_eq!(pttl(&env, "o-5").await, -1, "a live record has no TTL");

    env.drain(10).await;
    let (code, out, _) = env.run(&["status", "o-5", "--json"]).await;
    assert_eq!(code, 0);
    let applied: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(applied["state"], "applied");
    assert_eq!(
        (applied["seq"].clone(), applied["reserved_at"].clone()),
        (queued["seq"].clone(), queued["reserved_at"].clone())
    );
    let ttl = pttl(&env, "o-5").await;
    assert!(ttl > 23 * 3600 * 1000, "an ended record expires after STOCKQ_RECORD_TTL: {ttl}");

    let told = outcomes(&env).await;
    assert_eq!(told.len(), 1, "{told:?}");
    assert_eq!((told[0]["event_id"].as_str(), told[0]["state"].as_str()), ("o-5", "applied"));
    assert_eq!((told[0]["buyer"].as_str(), told[0]["qty"].as_str()), ("ann", "2"));
    assert_eq!(told[0]["reserved_at"], queued["reserved_at"].as_i64().unwrap().to_string());
    let (code, out, _) = env.run(&["outcomes", "--json"]).await;
    assert_eq!(code, 0);
    let line: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!((line["event_id"].as_str(), line["state"].as_str()), (Some("o-5"), Some("applied")));

    let mut c = env.redis.clone();
    let _: i64 = c.del(env.key("r:o-5")).await.unwrap();
    let (code, out, err) = env.run(&["status", "o-5", "--json"]).await;
    assert_eq!(code, 0, "{err}");
    let from_mysql: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (from_mysql["state"].as_str(), from_mysql["seq"].clone()),
        (Some("applied"), queued["seq"].clone())
    );
    let (code, _, _) = env.run(&["status", "nobody"]).await;
    assert_eq!(code, 4);
}

/// Rejected, dead, dropped and duplicate reservations are each announced once, with their
/// reason, and their records say so.
#[tokio::test]
async fn every_ending_is_announced_once() {
    let env = TestEnv::new().await;
    env.stock(1, 5).await;
    // product 9 exists in Redis only: its events are dead-lettered
    let mut c = env.redis.clone();
    let _: () = c.set(env.key("stock:9"), 5).await.unwrap();
    sqlx::query("UPDATE products SET stock = 0 WHERE id = 1").execute(&env.mysql).await.unwrap();
    env.reserve_ok(1, 1, "rej").await;
    env.reserve_ok(9, 1, "gone").await;
    // a second reservation under a used id, pushed by hand: a duplicate
    env.reserve_ok(1, 1, "twice").await;
    env.push_raw(br#"{"event_id":"twice","product_id":1,"qty":1}"#).await;
    env.drain(10).await;
    let states: Vec<(String, String)> =
        outcomes(&env).await.into_iter().map(|o| (o["event_id"].clone(), o["state"].clone())).collect();
    let count = |id: &str, state: &str| states.iter().filter(|(i, s)| i == id && s == state).count();
    assert_eq!((count("rej", "rejected"), count("gone", "dead")), (1, 1), "{states:?}");
    assert_eq!(
        count("twice", "rejected") + count("twice", "duplicate") + count("twice", "applied"),
        2,
        "{states:?}"
    );
    assert_eq!(record(&env, "gone").await["state"], "dead");
    assert_eq!(pttl(&env, "gone").await, -1, "a dead reservation has not ended");
    let reasons: Vec<String> =
        outcomes(&env).await.into_iter().filter_map(|o| o.get("reason").cloned()).collect();
    assert!(reasons.contains(&"insufficient stock in MySQL".to_string()), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("unknown product 9")), "{reasons:?}");

    let (code, _, err) = env.run(&["dead", "drop", "gone"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(record(&env, "gone").await["state"], "cancelled");
    let last = outcomes(&env).await.pop().unwrap();
    assert_eq!((last["state"].as_str(), last["reason"].as_str()), ("cancelled", "dropped"));
    let (code, _, _) = env.run(&["dead", "drop", "gone"]).await;
    assert_ne!(code, 0, "nothing left to drop");
    assert_eq!(outcomes(&env).await.len(), states.len() + 1, "a drop is announced once");
}

/// SIGKILLed workers, the janitor re-queueing their claims, redeliveries: still exactly one
/// outcome per reservation, none missing, none doubled.
#[tokio::test]
async fn the_outcome_stream_under_chaos_has_one_entry_per_reservation() {
    let env = TestEnv::with(|s| {
        s.delivery.visibility_timeout = Duration::from_secs(1);
        s.janitor.interval = Duration::from_millis(200);
        s.janitor.check_interval = Duration::from_millis(500);
        s.delivery.max_attempts = 1000;
    })
    .await;
    const EVENTS: usize = 500;
    const MIN_KILLS: usize = 4;
    for p in 1..=5 {
        env.stock(p, 1_000).await;
    }
    let mut janitor = env.spawn(&["janitor"]);
    let worker_args = ["worker", "--batch", "5"];
    let mut workers = [env.spawn(&worker_args), env.spawn(&worker_args)];
    let reserving = CancellationToken::new();
    let killer = async {
        let mut kills = 0;
        while !reserving.is_cancelled() || kills < MIN_KILLS {
            tokio::time::sleep(Duration::from_millis(rand::random_range(300..=600))).await;
            let victim = rand::random_range(0..workers.len());
            send_signal(workers[victim].id().expect("worker running"), "KILL");
            let _ = tokio::time::timeout(Duration::from_secs(10), workers[victim].wait()).await;
            workers[victim] = env.spawn(&worker_args);
            kills += 1;
        }
        kills
    };
    let reserver = async {
        for i in 0..EVENTS {
            env.reserve_ok((i % 5) as i64 + 1, 1, &format!("chaos-{i}")).await;
            tokio::time::sleep(Duration::from_millis(6)).await;
        }
        reserving.cancel();
    };
    let ((), kills) = tokio::join!(reserver, killer);
    env.eventually(Duration::from_secs(60), "every reservation settled", || async {
        env.len("pending").await == 0
            && env.len("processing").await == 0
            && env.log_rows().await == EVENTS as i64
    })
    .await;
    let mut told: HashMap<String, Vec<String>> = HashMap::new();
    for o in outcomes(&env).await {
        told.entry(o["event_id"].clone()).or_default().push(o["state"].clone());
    }
    let doubled: Vec<_> = told.iter().filter(|(_, s)| s.len() != 1).collect();
    assert!(doubled.is_empty(), "announced more than once: {doubled:?}");
    let missing: Vec<String> =
        (0..EVENTS).map(|i| format!("chaos-{i}")).filter(|id| !told.contains_key(id)).collect();
    assert!(missing.is_empty(), "never announced: {missing:?}");
    assert!(told.values().all(|s| s[0] == "applied"), "generous stock: all applied");
    eprintln!(
        "outcomes under chaos: {kills} kills, requeued {}",
        env.hget_i64("counters", b"requeued").await
    );
    env.assert_books_balance().await;
    for w in workers.iter_mut().chain([&mut janitor]) {
        let _ = crate::helpers::terminate(w).await;
    }
}

/// `serve` with the API token `token` (empty: unset), once it listens.
pub(crate) async fn start_serve(env: &TestEnv, token: &str) -> (tokio::process::Child, u16) {
    env.serve(&[("STOCKQ_API_TOKEN", token)]).await
}

/// `POST /reserve` answers replays and reused ids; `GET /reservations/<id>` wants the token.
#[tokio::test]
async fn http_replays_and_the_order_service_api() {
    let env = TestEnv::new().await;
    env.stock(3, 10).await;
    let (mut serve, port) = start_serve(&env, "s3cret").await;
    let reserve = |body: &str| http(port, "POST", "/reserve").json(body).send();
    let body = r#"{"product_id": 3, "qty": 1, "event_id": "h-1", "buyer": "bob"}"#;
    let first = reserve(body).await;
    assert_eq!(first.status, 201, "{}", first.text());
    let first = first.json();
    assert_eq!((first["state"].as_str(), first["remaining"].as_i64()), (Some("queued"), Some(9)));
    let again = reserve(body).await;
    assert_eq!(
        (again.status, &again.json()["replayed"], &again.json()["seq"]),
        (200, &Value::Bool(true), &first["seq"])
    );
    let other = r#"{"product_id": 3, "qty": 2, "event_id": "h-1", "buyer": "bob"}"#;
    let used = reserve(other).await;
    assert_eq!((used.status, used.json()["error"].as_str()), (409, Some("event id already used")));
    assert_eq!(env.redis_stock(3).await, Some(9));

    let status_of = |id: &str, token: Option<&str>| {
        http(port, "GET", &format!("/reservations/{id}")).bearer(token).send()
    };
    assert_eq!(status_of("h-1", None).await.status, 401);
    assert_eq!(status_of("h-1", Some("wrong")).await.status, 401);
    let status = status_of("h-1", Some("s3cret")).await;
    assert_eq!(
        (status.status, status.json()["state"].as_str(), status.json()["buyer"].as_str()),
        (200, Some("queued"), Some("bob"))
    );
    assert_eq!(status_of("nope", Some("s3cret")).await.status, 404);
    let _ = crate::helpers::terminate(&mut serve).await;

    let (mut serve, port) = start_serve(&env, "").await;
    let off = http(port, "GET", "/reservations/h-1").bearer(Some("")).send().await;
    assert_eq!(off.status, 403, "{}", off.text());
    let _ = crate::helpers::terminate(&mut serve).await;
}

/// "event id already used" tells the state of the reservation holding the id only to the
/// order service (the API's bearer token): a shopper, or a wrong token, learns nothing more.
#[tokio::test]
async fn http_id_used_tells_the_state_only_with_the_token() {
    let env = TestEnv::new().await;
    env.stock(4, 10).await;
    let (mut serve, port) = start_serve(&env, "s3cret").await;
    let reserve =
        |body: &str, token: Option<&str>| http(port, "POST", "/reserve").bearer(token).json(body).send();
    let first = r#"{"product_id": 4, "qty": 1, "event_id": "u-1", "buyer": "eve"}"#;
    assert_eq!(reserve(first, None).await.status, 201);
    let reuse = r#"{"product_id": 4, "qty": 3, "event_id": "u-1", "buyer": "eve"}"#;
    for token in [None, Some("wrong"), Some(""), Some("s3cre")] {
        let answer = reserve(reuse, token).await;
        let body = answer.json();
        assert_eq!(
            (answer.status, body["error"].as_str()),
            (409, Some("event id already used")),
            "{token:?}"
        );
        assert_eq!(body.get("state"), None, "{token:?}: {body}");
    }
    let answer = reserve(reuse, Some("s3cret")).await;
    assert_eq!(
        (answer.status, answer.json()["error"].as_str(), answer.json()["state"].as_str()),
        (409, Some("event id already used"), Some("queued"))
    );
    env.drain(10).await;
    let answer = reserve(reuse, Some("s3cret")).await;
    assert_eq!((answer.status, answer.json()["state"].as_str()), (409, Some("applied")), "{}", answer.text());
    assert_eq!(env.redis_stock(4).await, Some(9), "nothing taken by the refused reuses");
    let _ = crate::helpers::terminate(&mut serve).await;

    // with the API off, no token opens it
    let (mut serve, port) = start_serve(&env, "").await;
    let answer = http(port, "POST", "/reserve").bearer(Some("")).json(reuse).send().await;
    assert_eq!((answer.status, answer.json().get("state")), (409, None), "{}", answer.text());
    let _ = crate::helpers::terminate(&mut serve).await;
}

/// Every key of the queue, found with SCAN (in large steps: the shared Redis may hold many
/// keys of other work).
async fn queue_keys(env: &TestEnv) -> Vec<String> {
    let mut c = env.redis.clone();
    let (mut cursor, mut keys) = (0u64, Vec::new());
    loop {
        let (next, found): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{{{}}}:*", env.name))
            .arg("COUNT")
            .arg(10_000)
            .query_async(&mut c)
            .await
            .unwrap();
        keys.extend(found);
        if next == 0 {
            return keys;
        }
        cursor = next;
    }
}

/// The reset of `demo` and `bench` empties the queue whole: its records (more of them than
/// one SCAN step looks at) and its outcome stream go too, so that the next run starts with no
/// stale outcome and may reuse an event id. Another queue's records stay.
#[tokio::test]
async fn a_reset_forgets_the_records_and_the_outcomes() {
    use futures::StreamExt;
    const EVENTS: usize = 2_500;
    let env = TestEnv::new().await;
    env.stock(1, 10_000).await;
    let env_ref = &env;
    futures::stream::iter(0..EVENTS)
        .for_each_concurrent(32, |i| async move {
            env_ref.reserve_ok(1, 1, &format!("again-{i}")).await;
        })
        .await;
    env.drain(100).await;
    // live records too: queued, without a TTL
    for i in 0..10 {
        env.reserve_ok(1, 1, &format!("live-{i}")).await;
    }
    let mut c = env.redis.clone();
    let told: usize = redis::cmd("XLEN").arg(env.key("outcomes")).query_async(&mut c).await.unwrap();
    assert_eq!(told, EVENTS);
    assert!(queue_keys(&env).await.len() > EVENTS, "a record per reservation");
    let elsewhere = format!("{{{}x}}:r:again-1", env.name);
    let () = c.set(&elsewhere, "queued|1|1|1|1|1|||||").await.unwrap();

    env.queue.reset(&[1]).await.unwrap();
    let left = queue_keys(&env).await;
    let kept: Option<String> =
        c.get::<_, Option<String>>(&elsewhere).await.unwrap().map(|r| r[..6].to_string());
    let _: i64 = c.del(&elsewhere).await.unwrap();
    assert!(left.is_empty(), "keys left after the reset: {:?}", &left[..left.len().min(5)]);
    assert_eq!(kept.as_deref(), Some("queued"), "another queue's record is not the reset's business");
    assert!(env.queue.latest_outcomes(10).await.unwrap().is_empty());

    // the next run may use the same ids: a fresh reservation, not "event id already used"
    let () = c.set(env.key("stock:1"), 5).await.unwrap();
    let again = stockq::reserve(&env.queue, 1, 1, "again-1").await.unwrap();
    assert!(matches!(again, Reservation::Reserved { .. }), "{again:?}");
}

/// Waits until `probe` holds, polling every 50 ms for at most `within`; false if it never did.
async fn within<F, Fut>(within: Duration, mut probe: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if probe().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The outcome stream across a Redis restart: a private Redis with AOF (`appendfsync
/// always`), worker processes SIGKILLed until the janitor has re-queued some of their claims,
/// then Redis itself SIGKILLed and started again on its AOF, all while reservations flow.
/// Every reserved event is announced exactly once and its record ends in that state; an event
/// whose answer was lost to the outage is announced once if Redis kept it and never if not;
/// MySQL logs each once; `stockq check` finds the stores consistent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outcome_stream_survives_killed_workers_and_a_redis_restart() {
    const PRODUCTS: i64 = 5;
    const PROGRESS: usize = 200;
    let mut server = RedisServer::start().await;
    let mut env = TestEnv::with_redis(&server.url(), |s| {
        s.delivery.visibility_timeout = Duration::from_secs(1);
        s.janitor.interval = Duration::from_millis(200);
        s.janitor.check_interval = Duration::from_millis(500);
        s.delivery.max_attempts = 1000;
    })
    .await;
    for p in 1..=PRODUCTS {
        env.stock(p, 100_000).await;
    }
    let mut janitor = env.spawn(&["janitor"]);
    let worker_args = ["worker", "--batch", "5"];
    let mut workers = [env.spawn(&worker_args), env.spawn(&worker_args)];

    // what the reserver was told: reserved, or no answer (Redis down: taken or not)
    let reserved: Mutex<Vec<String>> = Mutex::default();
    let uncertain: Mutex<Vec<String>> = Mutex::default();
    let stop = AtomicBool::new(false);
    let mut kills = 0;
    let mut outage = Duration::ZERO;
    {
        let (env, reserved, uncertain, stop) = (&env, &reserved, &uncertain, &stop);
        let (workers, server, kills, outage) = (&mut workers, &mut server, &mut kills, &mut outage);
        let reserver = async move {
            let mut tick = tokio::time::interval(Duration::from_millis(3));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let id = format!("aof-{i}");
                match stockq::reserve(&env.queue, 1 + i % PRODUCTS, 1, &id).await {
                    Ok(Reservation::Reserved { .. }) => reserved.lock().unwrap().push(id),
                    Ok(other) => panic!("reserve {id}: {other:?} (stock is ample)"),
                    Err(_) => uncertain.lock().unwrap().push(id),
                }
                i += 1;
            }
        };
        let chaos = async move {
            let answered = || reserved.lock().unwrap().len();
            let progress = |what: &'static str, mark: (usize, i64)| async move {
                env.eventually(Duration::from_secs(20), what, || async {
                    reserved.lock().unwrap().len() >= mark.0 + PROGRESS
                        && env.log_rows().await >= mark.1 + PROGRESS as i64
                })
                .await;
            };
            progress("reservations applied", (0, 0)).await;
            // SIGKILL workers in turn until the janitor has re-queued what one of them held
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let victim = &mut workers[*kills % 2];
                send_signal(victim.id().expect("worker running"), "KILL");
                let _ = tokio::time::timeout(Duration::from_secs(10), victim.wait()).await;
                *victim = env.spawn(&worker_args);
                *kills += 1;
                // a claim is re-queued one visibility timeout after it was made
                let requeued = within(Duration::from_secs(3), || async {
                    env.hget_i64("counters", b"requeued").await > 0
                })
                .await;
                if requeued {
                    break;
                }
                assert!(Instant::now() < deadline, "no claim re-queued after {kills} worker kills");
            }
            // Redis SIGKILLed and started again on its AOF, under load
            let mark = (answered(), env.log_rows().await);
            server.kill();
            let killed = Instant::now();
            // the fault itself: Redis stays down this long
            tokio::time::sleep(Duration::from_millis(500)).await;
            server.restart().await;
            *outage = killed.elapsed();
            progress("reservations and applications to resume after the restart", mark).await;
            stop.store(true, Ordering::Relaxed);
        };
        tokio::join!(reserver, chaos);
    }
    assert!(server.aof_dir_exists(), "the server ran with an AOF");
    // the test's own plain connection died with the first server
    env.redis = crate::helpers::test_redis(&server.url()).await;
    env.eventually(Duration::from_secs(30), "pending, processing and claims empty", || async {
        env.len("pending").await == 0 && env.len("processing").await == 0 && env.zcard("claims").await == 0
    })
    .await;
    for w in workers.iter_mut().chain([&mut janitor]) {
        let _ = crate::helpers::terminate(w).await;
    }

    let reserved = reserved.into_inner().unwrap();
    let uncertain = uncertain.into_inner().unwrap();
    let mut told: HashMap<String, Vec<String>> = HashMap::new();
    let stream = outcomes(&env).await;
    for o in &stream {
        told.entry(o["event_id"].clone()).or_default().push(o["state"].clone());
    }
    let logged: HashMap<String, String> =
        sqlx::query_as("SELECT event_id, CAST(status AS CHAR) FROM stock_log")
            .fetch_all(&env.mysql)
            .await
            .unwrap()
            .into_iter()
            .collect();
    let mut states: Vec<Option<String>> = Vec::with_capacity(reserved.len());
    for id in &reserved {
        states.push(env.record_fields(id).await.remove("state"));
    }

    let wrong: Vec<_> = reserved
        .iter()
        .zip(&states)
        .filter(|(id, state)| {
            told.get(*id).map(Vec::as_slice) != Some(&["applied".to_string()][..])
                || state.as_deref() != Some("applied")
                || logged.get(*id).map(String::as_str) != Some("applied")
        })
        .map(|(id, state)| (id, told.get(id), state, logged.get(id)))
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of {} reserved events not announced exactly once as applied, with their record and \
         stock_log row saying so (id, outcomes, record, stock_log), e.g. {:?}",
        wrong.len(),
        reserved.len(),
        &wrong[..wrong.len().min(5)]
    );
    let mut kept = 0;
    for id in &uncertain {
        let announced = told.get(id).map_or(0, Vec::len);
        assert!(announced <= 1, "{id} announced {announced} times");
        assert_eq!(
            announced == 1,
            logged.contains_key(id),
            "{id}: outcomes {:?} stock_log {:?}",
            told.get(id),
            logged.get(id)
        );
        kept += announced;
    }
    assert_eq!(stream.len(), reserved.len() + kept, "an outcome for no reservation made");
    assert_eq!(logged.len(), stream.len(), "one stock_log row per announced event");
    assert_eq!(env.len("dead").await, 0);
    env.assert_books_balance().await;
    let (code, out, err) = env.run(&["check"]).await;
    assert_eq!(code, 0, "stockq check: {out}{err}");
    eprintln!(
        "outcomes across a Redis restart: {} reserved, {} answers lost ({kept} kept by Redis), \
         {kills} worker kills, requeued {}, Redis down {outage:?}",
        reserved.len(),
        uncertain.len(),
        env.hget_i64("counters", b"requeued").await
    );
}
