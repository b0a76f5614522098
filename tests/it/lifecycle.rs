//! Holds, confirms, expiries, cancels, releases and per-buyer limits (docs/lifecycle.md),
//! against the real Redis and MariaDB.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use redis::AsyncCommands;
use stockq::{Cancel, Confirm, Request, Reservation, ReservationState};
use tokio_util::sync::CancellationToken;

use crate::helpers::{TestEnv, send_signal, terminate};

/// Every entry of the test queue's outcome stream, oldest first, as (event_id, state).
async fn outcomes(env: &TestEnv) -> Vec<(String, String)> {
    let mut c = env.redis.clone();
    let raw: Vec<(String, HashMap<String, String>)> =
        redis::cmd("XRANGE").arg(env.key("outcomes")).arg("-").arg("+").query_async(&mut c).await.unwrap();
    raw.into_iter().map(|(_, f)| (f["event_id"].clone(), f["state"].clone())).collect()
}

async fn state(env: &TestEnv, event_id: &str) -> String {
    env.record_fields(event_id).await.remove("state").unwrap_or_default()
}

async fn reserve(
    env: &TestEnv,
    product: i64,
    event_id: &str,
    buyer: Option<&str>,
    hold: Option<Duration>,
) -> Reservation {
    let request = Request { product_id: product, qty: 1, event_id, buyer, hold };
    stockq::reserve_held(&env.queue, request).await.expect("reserve")
}

/// Units of a product in MySQL's `stock_log` with a status.
async fn log_units(env: &TestEnv, status: &str) -> i64 {
    sqlx::query_scalar::<_, i64>(
        "SELECT CAST(COALESCE(SUM(qty), 0) AS SIGNED) FROM stock_log WHERE status = ?",
    )
    .bind(status)
    .fetch_one(&env.mysql)
    .await
    .unwrap()
}

/// Confirms racing the janitor's expiry at the deadline, two thousand holds at once: each
/// hold ends exactly once, confirmed (then applied) or expired, never both; the answers say
/// which; the stock is exact in both stores.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn confirm_and_expiry_race_at_the_deadline_and_each_hold_ends_once() {
    let env = TestEnv::new().await;
    const HOLDS: usize = 2_000;
    const INITIAL: i64 = 5_000;
    env.stock(1, INITIAL).await;
    let ids: Vec<String> = (0..HOLDS).map(|i| format!("h-{i}")).collect();
    let holds = ids.iter().map(|id| reserve(&env, 1, id, None, Some(Duration::from_secs(1))));
    for answer in futures::future::join_all(holds).await {
        assert!(matches!(answer, Reservation::Reserved { deadline: Some(_), .. }), "{answer:?}");
    }
    assert_eq!(env.redis_stock(1).await, Some(INITIAL - HOLDS as i64), "held stock is taken");
    assert_eq!(env.len("pending").await, 0, "a hold is not queued");
    assert_eq!(env.zcard("holds").await, HOLDS);
    env.assert_books_balance().await;

    // aim at the deadline: start the confirms and the expiry together just before it
    let mut c = env.redis.clone();
    let first: Vec<(String, i64)> = c.zrange_withscores(env.key("holds"), 0, 0).await.unwrap();
    let deadline = first[0].1;
    let now = env.redis_now_ms().await;
    tokio::time::sleep(Duration::from_millis((deadline - now - 30).max(0) as u64)).await;
    let janitor = env.janitor();
    let expiring = async {
        let mut expired = 0;
        let until = tokio::time::Instant::now() + Duration::from_millis(600);
        while tokio::time::Instant::now() < until {
            expired += janitor.recover().await.expect("recover").expired;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        expired
    };
    let shards = env.shards();
    // each payment lands at a random instant around its deadline
    let confirming = futures::future::join_all(ids.iter().map(|id| {
        let shards = &shards;
        async move {
            tokio::time::sleep(Duration::from_millis(rand::random_range(0..=400))).await;
            stockq::confirm(shards, id).await
        }
    }));
    let (expired_by_janitor, answers) = tokio::join!(expiring, confirming);

    let mut confirmed = HashSet::new();
    let mut expired = HashSet::new();
    for (id, answer) in ids.iter().zip(answers) {
        match answer.expect("confirm") {
            Confirm::Queued => confirmed.insert(id.clone()),
            Confirm::Ended { state: ReservationState::Expired } => expired.insert(id.clone()),
            other => panic!("{id}: {other:?}"),
        };
    }
    eprintln!(
        "race: {} confirmed, {} expired ({} by the janitor)",
        confirmed.len(),
        expired.len(),
        expired_by_janitor
    );
    assert_eq!(confirmed.len() + expired.len(), HOLDS);
    assert!(!confirmed.is_empty() && !expired.is_empty(), "the race was not at the deadline");
    assert!(expired_by_janitor > 0, "the janitor expired none: the race was not with it");
    assert_eq!(env.zcard("holds").await, 0, "no hold left");
    env.assert_books_balance().await;
    env.drain(200).await;

    let told = outcomes(&env).await;
    let mut by_id: HashMap<&str, Vec<&str>> = HashMap::new();
    for (id, state) in &told {
        by_id.entry(id).or_default().push(state);
    }
    for id in &ids {
        let want = if confirmed.contains(id) { "applied" } else { "expired" };
        assert_eq!(by_id.get(id.as_str()).map(Vec::as_slice), Some(&[want][..]), "{id}");
        assert_eq!(state(&env, id).await, want, "{id}");
    }
    let applied = confirmed.len() as i64;
    assert_eq!(env.mysql_stock(1).await, INITIAL - applied, "MySQL deducted the confirmed ones only");
    assert_eq!(env.redis_stock(1).await, Some(INITIAL - applied), "expired stock is back in Redis");
    assert_eq!(env.hget_i64("inflight", b"1").await, 0);
    env.assert_books_balance().await;
}

/// A cancel in each state ends as SPEC.md says, gives the stock back once (repeating it
/// changes nothing), and the stores agree after each.
#[tokio::test]
async fn cancel_in_each_state_gives_back_exactly_once() {
    let env = TestEnv::with(|s| s.delivery.max_attempts = 1).await;
    const INITIAL: i64 = 100;
    env.stock(1, INITIAL).await;
    let hold = Some(Duration::from_secs(600));
    for (id, held) in [("dead", None), ("applied", None), ("queued", None), ("twice", None), ("held", hold)] {
        assert!(matches!(reserve(&env, 1, id, None, held).await, Reservation::Reserved { .. }));
    }
    // `applied` goes through MySQL; `dead` is dead-lettered by timing its claim out (max
    // attempts 1); `queued` and `twice` wait in pending
    let worker = env.worker(10);
    let claim = env.queue.claim(2, None).await.unwrap();
    let text = |e: &Vec<u8>| String::from_utf8_lossy(e).into_owned();
    assert!(text(&claim.entries[0]).contains("\"dead\"") && text(&claim.entries[1]).contains("\"applied\""));
    let claim_applied = stockq::Claim { entries: vec![claim.entries[1].clone()], ..claim.clone() };
    worker.process(&env.queue, claim_applied, &CancellationToken::new()).await.unwrap();
    env.wait_past(claim.deadline_ms).await;
    env.janitor().recover().await.unwrap();
    assert_eq!(state(&env, "dead").await, "dead");
    assert_eq!(state(&env, "applied").await, "applied");
    env.assert_books_balance().await;

    let shards = env.shards();
    let cancel = |id: &'static str| {
        let shards = shards.clone();
        let ledger = env.ledger.clone();
        async move { stockq::cancel(&shards, &ledger, id).await.unwrap() }
    };
    let done = |state: ReservationState, changed: bool| Cancel::Done { state, changed };
    assert_eq!(cancel("held").await, done(ReservationState::Cancelled, true));
    assert_eq!(
        cancel("held").await,
        done(ReservationState::Cancelled, false),
        "a repeated cancel changes nothing"
    );
    assert_eq!(cancel("queued").await, done(ReservationState::Cancelling, true));
    assert_eq!(cancel("dead").await, done(ReservationState::Cancelling, true));
    assert_eq!(env.len("dead").await, 0, "a cancelled dead letter goes back to the queue");
    assert_eq!(cancel("applied").await, done(ReservationState::Releasing, true));
    assert_eq!(cancel("applied").await, done(ReservationState::Releasing, false));
    assert_eq!(cancel("nobody").await, Cancel::Unknown);
    // every unit is back in Redis at once; MySQL still has `applied` deducted
    assert_eq!(env.redis_stock(1).await, Some(INITIAL - 1), "only `twice` still holds a unit");
    env.assert_books_balance().await;

    env.drain(10).await;
    for (id, want) in [
        ("held", "cancelled"),
        ("queued", "cancelled"),
        ("dead", "cancelled"),
        ("applied", "released"),
        ("twice", "applied"),
    ] {
        assert_eq!(state(&env, id).await, want, "{id}");
    }
    assert_eq!(cancel("twice").await, done(ReservationState::Releasing, true));
    assert_eq!(cancel("twice").await, done(ReservationState::Releasing, false));
    env.drain(10).await;
    assert_eq!(state(&env, "twice").await, "released");
    assert_eq!(env.mysql_stock(1).await, INITIAL, "MySQL got back each release once");
    assert_eq!(env.redis_stock(1).await, Some(INITIAL));
    assert_eq!(log_units(&env, "released").await, 2);
    // `dead` was unsure (its claim timed out): MySQL was asked, and a row says it is cancelled
    assert_eq!(env.log_status("dead").await.as_deref(), Some("cancelled"));
    assert_eq!(env.log_status("queued").await, None, "a sure cancel costs MySQL nothing");
    let told = outcomes(&env).await;
    let states = |id: &str| told.iter().filter(|(e, _)| e == id).map(|(_, s)| s.as_str()).collect::<Vec<_>>();
    assert_eq!(states("held"), ["cancelled"]);
    assert_eq!(states("queued"), ["cancelled"]);
    assert_eq!(states("dead"), ["dead", "cancelled"]);
    assert_eq!(states("applied"), ["applied", "released"]);
    assert_eq!(states("twice"), ["applied", "released"]);
    assert_eq!(env.hget_i64("inflight", b"1").await, 0);
    env.assert_books_balance().await;
}

/// Cancels racing the workers that apply the same events: each event is either never
/// deducted (cancelled) or deducted and given back (released), exactly once in both stores.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_racing_the_worker_never_deducts_or_gives_back_twice() {
    let env = TestEnv::new().await;
    const EVENTS: usize = 1_000;
    const INITIAL: i64 = 2_000;
    env.stock(1, INITIAL).await;
    let ids: Vec<String> = (0..EVENTS).map(|i| format!("c-{i}")).collect();
    for id in &ids {
        env.reserve_ok(1, 1, id).await;
    }
    let shards = env.shards();
    let workers = async {
        let (a, b) = tokio::join!(env.drain(20), env.drain(20));
        a.len() + b.len()
    };
    let cancels = futures::future::join_all(ids.iter().map(|id| stockq::cancel(&shards, &env.ledger, id)));
    let (_, answers) = tokio::join!(workers, cancels);
    for answer in answers {
        assert!(matches!(answer.unwrap(), Cancel::Done { changed: true, .. }));
    }
    env.drain(50).await; // the releases and whatever the cancels sent back
    let mut released = 0;
    for id in &ids {
        match state(&env, id).await.as_str() {
            "cancelled" => assert_ne!(env.log_status(id).await.as_deref(), Some("applied"), "{id}"),
            "released" => {
                assert_eq!(env.log_status(id).await.as_deref(), Some("released"), "{id}");
                released += 1;
            }
            other => panic!("{id} left {other}"),
        }
    }
    eprintln!("cancel race: {released} released after their deduction, {} never deducted", EVENTS - released);
    assert_eq!(env.mysql_stock(1).await, INITIAL, "MySQL got back exactly what it deducted");
    assert_eq!(env.redis_stock(1).await, Some(INITIAL), "Redis got everything back once");
    assert_eq!(env.hget_i64("inflight", b"1").await, 0);
    assert_eq!(env.len("releases").await, 0);
    let told = outcomes(&env).await;
    let finals = told.iter().filter(|(_, s)| s == "cancelled" || s == "released").count();
    assert_eq!(finals, EVENTS, "one final outcome per event");
    env.assert_books_balance().await;
}

/// A million-event backlog is not needed to show the cost: cancelled events waiting in the
/// queue are dropped by the workers without a MySQL row each.
#[tokio::test]
async fn cancelled_events_in_the_queue_cost_mysql_nothing() {
    let env = TestEnv::new().await;
    env.stock(1, 1_000).await;
    let ids: Vec<String> = (0..500).map(|i| format!("q-{i}")).collect();
    for id in &ids {
        env.reserve_ok(1, 1, id).await;
    }
    for id in &ids[..400] {
        stockq::cancel(&env.shards(), &env.ledger, id).await.unwrap();
    }
    assert_eq!(env.redis_stock(1).await, Some(1_000 - 100));
    let reports = env.drain(100).await;
    let cancelled: u64 = reports.iter().map(|r| r.cancelled).sum();
    assert_eq!(cancelled, 400);
    assert_eq!(env.log_rows().await, 100, "only the live events reached MySQL");
    assert_eq!(env.mysql_stock(1).await, 900);
    let mut c = env.redis.clone();
    let left: usize = c.scard(env.key("cancels")).await.unwrap();
    assert_eq!(left, 0, "every cancel mark went with its entry");
    env.assert_books_balance().await;
}

/// One buyer firing 1,000 reservations at once at a limit of 2: exactly 2 succeed; after a
/// cancel, exactly one more; an expiry and a release give units back too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_buyer_limit_holds_under_concurrency() {
    let env = TestEnv::new().await;
    env.stock(1, 10_000).await;
    let (code, _, err) = env.run(&["stock", "limit", "1", "2"]).await;
    assert_eq!(code, 0, "{err}");
    let fire = |round: usize| {
        let env = &env;
        futures::future::join_all((0..1_000).map(move |i| async move {
            (
                format!("b-{round}-{i}"),
                reserve(env, 1, &format!("b-{round}-{i}"), Some("buyer-7"), None).await,
            )
        }))
    };
    let won: Vec<String> = fire(0)
        .await
        .into_iter()
        .filter_map(|(id, a)| match a {
            Reservation::Reserved { .. } => Some(id),
            Reservation::LimitReached { limit: 2, .. } => None,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(won.len(), 2, "exactly the limit");
    assert!(matches!(reserve(&env, 1, "anon", None, None).await, Reservation::BuyerRequired { limit: 2 }));
    let (code, _, _) = env.run(&["reserve", "1", "1", "--buyer", "buyer-7"]).await;
    assert_eq!(code, 5, "the CLI exits 5 at the limit");
    let (code, _, _) = env.run(&["reserve", "1", "1"]).await;
    assert_eq!(code, 2, "a limited product needs a buyer");
    assert!(matches!(
        reserve(&env, 1, "other-buyer", Some("buyer-8"), None).await,
        Reservation::Reserved { .. }
    ));

    stockq::cancel(&env.shards(), &env.ledger, &won[0]).await.unwrap();
    let again = fire(1).await.into_iter().filter(|(_, a)| matches!(a, Reservation::Reserved { .. })).count();
    assert_eq!(again, 1, "a cancel gives exactly one unit back to the buyer");

    // applied, then released: the unit comes back to the buyer
    env.drain(100).await;
    stockq::cancel(&env.shards(), &env.ledger, &won[1]).await.unwrap();
    assert!(matches!(
        reserve(&env, 1, "after-release", Some("buyer-7"), None).await,
        Reservation::Reserved { .. }
    ));
    assert!(matches!(
        reserve(&env, 1, "over", Some("buyer-7"), None).await,
        Reservation::LimitReached { .. }
    ));
    // a hold that expires gives its unit back too
    stockq::cancel(&env.shards(), &env.ledger, "after-release").await.unwrap();
    let held = reserve(&env, 1, "held-7", Some("buyer-7"), Some(Duration::from_secs(1))).await;
    let Reservation::Reserved { deadline: Some(deadline), .. } = held else { panic!("{held:?}") };
    assert!(matches!(
        reserve(&env, 1, "over-2", Some("buyer-7"), None).await,
        Reservation::LimitReached { .. }
    ));
    env.wait_past(deadline).await;
    assert_eq!(env.janitor().recover().await.unwrap().expired, 1);
    assert!(matches!(
        reserve(&env, 1, "after-expiry", Some("buyer-7"), None).await,
        Reservation::Reserved { .. }
    ));

    // removing the limit forgets the tallies
    let (code, _, _) = env.run(&["stock", "limit", "1", "0"]).await;
    assert_eq!(code, 0);
    assert!(matches!(reserve(&env, 1, "free", None, None).await, Reservation::Reserved { .. }));
    assert_eq!(env.hlen("bought").await, 0);
    env.drain(100).await;
    env.assert_books_balance().await;
}

/// Reserve, hold, confirm, cancel and expiry mixed, with workers and a janitor SIGKILLed
/// along the way: every reservation ends in exactly one final state with one outcome each
/// (two for a released one: applied, then released), the check is clean every time it runs,
/// and MySQL stock = initial − applied + released.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_of_the_whole_lifecycle_keeps_the_books() {
    let env = TestEnv::with(|s| {
        s.delivery.visibility_timeout = Duration::from_secs(1);
        s.janitor.interval = Duration::from_millis(200);
        s.janitor.check_interval = Duration::from_millis(300);
        s.delivery.max_attempts = 1000;
    })
    .await;
    const PRODUCTS: i64 = 5;
    const INITIAL: i64 = 2_000;
    const ORDERS: usize = 1_500;
    for p in 1..=PRODUCTS {
        env.stock(p, INITIAL).await;
    }
    let worker_args = ["worker", "--batch", "20"];
    let mut workers = vec![env.spawn(&worker_args), env.spawn(&worker_args)];
    let mut janitor = env.spawn(&["janitor"]);

    let running = CancellationToken::new();
    let killer = {
        let running = running.clone();
        let env = &env;
        async move {
            let mut kills = 0;
            while !running.is_cancelled() {
                tokio::time::sleep(Duration::from_millis(rand::random_range(300..=600))).await;
                if kills % 3 == 2 {
                    send_signal(janitor.id().unwrap(), "KILL");
                    let _ = janitor.wait().await;
                    janitor = env.spawn(&["janitor"]);
                } else {
                    let victim = rand::random_range(0..workers.len());
                    send_signal(workers[victim].id().unwrap(), "KILL");
                    let _ = workers[victim].wait().await;
                    workers[victim] = env.spawn(&worker_args);
                }
                kills += 1;
            }
            (kills, workers, janitor)
        }
    };
    let checks = {
        let running = running.clone();
        let env = &env;
        async move {
            let mut runs = 0;
            while !running.is_cancelled() {
                env.assert_books_balance().await;
                runs += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            runs
        }
    };
    let shoppers = async {
        let shards = env.shards();
        let orders = futures::stream::iter(0..ORDERS).map(|i| {
            let shards = &shards;
            let env = &env;
            async move {
                let id = format!("o-{i}");
                let product = 1 + (i as i64 % PRODUCTS);
                let hold = (i % 2 == 0).then(|| Duration::from_secs(1));
                let answer = reserve(env, product, &id, None, hold).await;
                assert!(matches!(answer, Reservation::Reserved { .. }), "{answer:?}");
                tokio::time::sleep(Duration::from_millis(rand::random_range(0..=1500))).await;
                match i % 5 {
                    // pay (some too late: the confirm then expires the hold itself)
                    0 | 1 => {
                        let _ = stockq::confirm(shards, &id).await.unwrap();
                    }
                    // cancel, at whatever point the order has reached
                    2 => {
                        let _ = stockq::cancel(shards, &env.ledger, &id).await.unwrap();
                    }
                    // pay, then refund after a while
                    3 => {
                        let _ = stockq::confirm(shards, &id).await.unwrap();
                        tokio::time::sleep(Duration::from_millis(rand::random_range(0..=800))).await;
                        let _ = stockq::cancel(shards, &env.ledger, &id).await.unwrap();
                    }
                    // walk away: a hold expires
                    _ => {}
                }
            }
        });
        use futures::StreamExt;
        orders.buffer_unordered(200).collect::<Vec<()>>().await;
        running.cancel();
    };
    let ((), (kills, mut workers, mut janitor), runs) = tokio::join!(shoppers, killer, checks);
    eprintln!("lifecycle chaos: {kills} processes SIGKILLed, the check ran {runs} times during it");

    let finals = ["applied", "cancelled", "expired", "released", "rejected"];
    env.eventually(Duration::from_secs(60), "every order in a final state", || async {
        for i in 0..ORDERS {
            if !finals.contains(&state(&env, &format!("o-{i}")).await.as_str()) {
                return false;
            }
        }
        env.len("releases").await == 0 && env.len("pending").await == 0 && env.len("processing").await == 0
    })
    .await;
    let told = outcomes(&env).await;
    let mut by_id: HashMap<String, Vec<String>> = HashMap::new();
    for (id, state) in told {
        by_id.entry(id).or_default().push(state);
    }
    let mut counts: HashMap<String, usize> = HashMap::new();
    for i in 0..ORDERS {
        let id = format!("o-{i}");
        let end = state(&env, &id).await;
        let want: Vec<String> = match end.as_str() {
            "released" => vec!["applied".into(), "released".into()],
            other => vec![other.to_string()],
        };
        assert_eq!(by_id.get(&id), Some(&want), "{id}: outcomes");
        *counts.entry(end).or_default() += 1;
    }
    eprintln!("lifecycle chaos: final states {counts:?}");
    for p in 1..=PRODUCTS {
        let (applied, released): (i64, i64) = sqlx::query_as(
            "SELECT CAST(COALESCE(SUM(qty * (status IN ('applied', 'released'))), 0) AS SIGNED), \
                    CAST(COALESCE(SUM(qty * (status = 'released')), 0) AS SIGNED) \
             FROM stock_log WHERE product_id = ?",
        )
        .bind(p)
        .fetch_one(&env.mysql)
        .await
        .unwrap();
        let mysql = env.mysql_stock(p).await;
        assert_eq!(mysql, INITIAL - applied + released, "product {p}: MySQL = initial − applied + released");
        assert_eq!(env.redis_stock(p).await, Some(mysql), "product {p}: Redis == MySQL once all settled");
    }
    env.assert_books_balance().await;
    let mut c = env.redis.clone();
    let alerts: usize = redis::cmd("XLEN").arg(env.key("alerts")).query_async(&mut c).await.unwrap();
    assert_eq!(alerts, 0, "the janitor's own checks found no drift");
    for w in &mut workers {
        assert_eq!(terminate(w).await, 0);
    }
    assert_eq!(terminate(&mut janitor).await, 0);
}

/// The order service's API over HTTP: a hold, its confirm, a cancel, a late confirm, and the
/// buyer limit's 429.
#[tokio::test]
async fn http_holds_confirms_cancels_and_limits() {
    use crate::helpers::http;
    use crate::records::start_serve;
    let env = TestEnv::new().await;
    env.stock(4, 10).await;
    let (code, _, _) = env.run(&["stock", "limit", "4", "1"]).await;
    assert_eq!(code, 0);
    let (mut serve, port) = start_serve(&env, "tok").await;
    let reserve = |body: &str| http(port, "POST", "/reserve").json(body).send();
    let order_service = |path: &str, token: Option<&str>| http(port, "POST", path).bearer(token).send();
    let hold = r#"{"product_id": 4, "qty": 1, "event_id": "w-1", "buyer": "ann", "hold": "15m"}"#;
    let held = reserve(hold).await;
    assert_eq!((held.status, held.json()["state"].as_str()), (201, Some("held")), "{}", held.text());
    let held = held.json();
    assert!(held["deadline"].as_i64().unwrap() > held["reserved_at"].as_i64().unwrap());
    let more = r#"{"product_id": 4, "qty": 1, "event_id": "w-2", "buyer": "ann"}"#;
    let limit = reserve(more).await;
    let body = limit.json();
    assert_eq!(
        (limit.status, body["error"].as_str(), body["limit"].as_i64()),
        (429, Some("buyer limit"), Some(1))
    );
    let nobody = r#"{"product_id": 4, "qty": 1}"#;
    assert_eq!(reserve(nobody).await.status, 400);
    let too_long = r#"{"product_id": 4, "qty": 1, "buyer": "bo", "hold": "2h"}"#;
    assert_eq!(reserve(too_long).await.status, 400);

    assert_eq!(order_service("/reservations/w-1/confirm", None).await.status, 401);
    let confirmed = order_service("/reservations/w-1/confirm", Some("tok")).await;
    assert_eq!(
        (confirmed.status, confirmed.json()["state"].as_str()),
        (200, Some("queued")),
        "{}",
        confirmed.text()
    );
    let again = order_service("/reservations/w-1/confirm", Some("tok")).await;
    assert_eq!(
        (again.status, again.json()["state"].as_str()),
        (200, Some("queued")),
        "confirming twice is harmless"
    );
    let cancelled = order_service("/reservations/w-1/cancel", Some("tok")).await;
    assert_eq!(
        (cancelled.status, cancelled.json()["state"].as_str()),
        (200, Some("cancelling")),
        "{}",
        cancelled.text()
    );
    let ended = order_service("/reservations/w-1/confirm", Some("tok")).await;
    assert_eq!(
        (ended.status, ended.json()["error"].as_str(), ended.json()["state"].as_str()),
        (409, Some("reservation ended"), Some("cancelling"))
    );
    assert_eq!(order_service("/reservations/nope/cancel", Some("tok")).await.status, 404);
    // the unit is back for the buyer
    assert_eq!(reserve(more).await.status, 201);
    env.drain(10).await;
    assert_eq!(state(&env, "w-1").await, "cancelled");
    assert_eq!(state(&env, "w-2").await, "applied");
    env.assert_books_balance().await;
    crate::helpers::terminate(&mut serve).await;
}

/// Two units for a buyer, held or queued.
async fn reserve_two(env: &TestEnv, event_id: &str, buyer: &str, hold: Option<Duration>) -> Reservation {
    let request = Request { product_id: 1, qty: 2, event_id, buyer: Some(buyer), hold };
    stockq::reserve_held(&env.queue, request).await.expect("reserve")
}

/// A limit removed and set again starts a new tally, and the reservations counted under the
/// old one give their units back to the old one alone, however they end: cancelled while
/// held, expired, cancelled while queued (the worker drops it), released after the
/// deduction, or dead-lettered and dropped. Before epochs, a cancel of an old reservation
/// freed units the new tally counted: alice held 4 against a limit of 2.
#[tokio::test]
async fn a_limit_set_again_holds_whatever_ends_the_reservations_of_the_one_before() {
    let env = TestEnv::with(|s| {
        s.delivery.visibility_timeout = Duration::from_millis(500);
        s.delivery.max_attempts = 1;
    })
    .await;
    env.stock(1, 1_000).await;
    let env = &env;
    let limit = |n: &'static str| async move { env.run(&["stock", "limit", "1", n]).await };
    let reserved = |r: Reservation| matches!(r, Reservation::Reserved { .. });
    let refused = |r: Reservation| matches!(r, Reservation::LimitReached { limit: 2, held: 2 });
    assert_eq!(limit("2").await.0, 0);

    // dead-dropped: its delivery abandoned once, so dead-lettered
    assert!(reserved(reserve_two(env, "dead-dropped-old", "dead-dropped", None).await));
    let abandoned = env.queue.claim(10, None).await.unwrap();
    env.wait_past(abandoned.deadline_ms).await;
    assert_eq!(env.janitor().recover().await.unwrap().dead_lettered, 1);
    assert_eq!(state(env, "dead-dropped-old").await, "dead");
    let short = Some(Duration::from_secs(1));
    let Reservation::Reserved { deadline: Some(expires_at), .. } =
        reserve_two(env, "held-expired-old", "held-expired", short).await
    else {
        panic!("a hold")
    };
    let long = Some(Duration::from_secs(900));
    assert!(reserved(reserve_two(env, "held-cancelled-old", "held-cancelled", long).await));
    assert!(reserved(reserve_two(env, "applied-released-old", "applied-released", None).await));
    env.drain(10).await;
    assert_eq!(state(env, "applied-released-old").await, "applied");
    assert!(reserved(reserve_two(env, "queued-cancelled-old", "queued-cancelled", None).await));
    let ways = ["dead-dropped", "held-expired", "held-cancelled", "applied-released", "queued-cancelled"];
    for way in ways {
        assert!(refused(reserve_two(env, &format!("{way}-over"), way, None).await), "{way}");
    }

    assert_eq!(limit("0").await.0, 0);
    assert_eq!(env.hlen("bought").await, 0, "removing the limit forgets its tallies");
    assert_eq!(limit("2").await.0, 0);
    for way in ways {
        assert!(reserved(reserve_two(env, &format!("{way}-new"), way, None).await), "{way}: a new tally");
        assert!(refused(reserve_two(env, &format!("{way}-over2"), way, None).await), "{way}: and it is full");
    }

    // every old reservation ends now, each its own way
    let shards = env.shards();
    let cancel = |id: &'static str| stockq::cancel(&shards, &env.ledger, id);
    let done = |state: ReservationState| Cancel::Done { state, changed: true };
    assert_eq!(cancel("held-cancelled-old").await.unwrap(), done(ReservationState::Cancelled));
    assert_eq!(cancel("applied-released-old").await.unwrap(), done(ReservationState::Releasing));
    assert_eq!(cancel("queued-cancelled-old").await.unwrap(), done(ReservationState::Cancelling));
    env.wait_past(expires_at).await;
    assert_eq!(env.janitor().recover().await.unwrap().expired, 1);
    let (code, out, err) = env.run(&["dead", "drop", "--all"]).await;
    assert_eq!(code, 0, "{out}{err}");
    env.drain(10).await;
    for id in ["held-cancelled-old", "queued-cancelled-old", "dead-dropped-old"] {
        assert_eq!(state(env, id).await, "cancelled", "{id}");
    }
    assert_eq!(state(env, "held-expired-old").await, "expired");
    assert_eq!(state(env, "applied-released-old").await, "released");

    for way in ways {
        assert!(
            refused(reserve_two(env, &format!("{way}-over3"), way, None).await),
            "{way}: an old reservation's end frees nothing the new limit counts"
        );
    }
    // a reservation of the new limit gives its units back to it, even once applied
    assert_eq!(cancel("held-expired-new").await.unwrap(), done(ReservationState::Releasing));
    assert!(reserved(reserve_two(env, "held-expired-again", "held-expired", None).await));
    env.drain(10).await;
    env.assert_books_balance().await;
}

/// A refund after the reservation's record expired gives the buyer's units back, once, to
/// the tally that counted them: bob, at his limit, can buy again after his refund; carol,
/// whose limit (another product's) was removed and set again meanwhile, cannot buy past the
/// new one.
#[tokio::test]
async fn a_refund_after_the_record_expired_gives_the_buyer_units_back() {
    let env = TestEnv::with(|s| s.redis.record_ttl = Duration::from_secs(1)).await;
    let env = &env;
    for product in [1, 2] {
        env.stock(product, 100).await;
        assert_eq!(env.run(&["stock", "limit", &product.to_string(), "2"]).await.0, 0);
    }
    let two = |product_id: i64, event_id: &'static str, buyer: &'static str| async move {
        let request = Request { product_id, qty: 2, event_id, buyer: Some(buyer), hold: None };
        stockq::reserve_held(&env.queue, request).await.expect("reserve")
    };
    let reserved = |r: Reservation| matches!(r, Reservation::Reserved { .. });
    let refused = |r: Reservation| matches!(r, Reservation::LimitReached { limit: 2, .. });
    assert!(reserved(two(1, "bob-1", "bob").await));
    assert!(reserved(two(2, "carol-1", "carol").await));
    env.drain(10).await;
    let c = env.redis.clone();
    env.eventually(Duration::from_secs(10), "the applied records expire", || {
        let mut c = c.clone();
        async move {
            let left: i64 = redis::cmd("EXISTS")
                .arg(env.key("r:bob-1"))
                .arg(env.key("r:carol-1"))
                .query_async(&mut c)
                .await
                .unwrap();
            left == 0
        }
    })
    .await;
    assert!(refused(two(1, "bob-2", "bob").await), "bob is at his limit");
    // carol's limit is removed and set again: her units of the first limit are forgotten
    assert_eq!(env.run(&["stock", "limit", "2", "0"]).await.0, 0);
    assert_eq!(env.run(&["stock", "limit", "2", "2"]).await.0, 0);
    assert!(reserved(two(2, "carol-2", "carol").await));

    let shards = env.shards();
    for id in ["bob-1", "carol-1"] {
        let answer = stockq::cancel(&shards, &env.ledger, id).await.unwrap();
        assert_eq!(answer, Cancel::Done { state: ReservationState::Releasing, changed: true }, "{id}");
        let again = stockq::cancel(&shards, &env.ledger, id).await.unwrap();
        assert_eq!(again, Cancel::Done { state: ReservationState::Releasing, changed: false }, "{id}: once");
    }
    env.drain(10).await;
    assert!(reserved(two(1, "bob-3", "bob").await), "the refund gave bob's units back");
    assert!(refused(two(1, "bob-4", "bob").await), "once");
    assert!(refused(two(2, "carol-3", "carol").await), "carol's refund frees nothing of the new limit");
    let status = stockq::status(&shards, &env.ledger, "bob-1").await.unwrap().expect("known");
    assert_eq!((&status.state, status.buyer.as_deref()), (&ReservationState::Released, Some("bob")));
    let mut c = env.redis.clone();
    let _: () = c.del(env.key("r:bob-1")).await.unwrap();
    let status = stockq::status(&shards, &env.ledger, "bob-1").await.unwrap().expect("from stock_log");
    assert_eq!((&status.state, status.buyer.as_deref()), (&ReservationState::Released, Some("bob")));
    env.drain(10).await;
    env.assert_books_balance().await;
    assert_eq!((env.redis_stock(1).await, env.mysql_stock(1).await), (Some(98), 98));
    assert_eq!((env.redis_stock(2).await, env.mysql_stock(2).await), (Some(98), 98));
}

/// Every outcome of the test queue's stream as (event_id, state, version), oldest first.
async fn versions(env: &TestEnv) -> Vec<(String, String, i64)> {
    let mut c = env.redis.clone();
    let raw: Vec<(String, HashMap<String, String>)> =
        redis::cmd("XRANGE").arg(env.key("outcomes")).arg("-").arg("+").query_async(&mut c).await.unwrap();
    raw.into_iter()
        .map(|(_, f)| {
            let version = f.get("version").and_then(|v| v.parse().ok()).expect("every outcome has a version");
            (f["event_id"].clone(), f["state"].clone(), version)
        })
        .collect()
}

/// Every transition raises a reservation's version, 1 when made; its status, replays and
/// outcomes carry it, so that of two outcomes of one reservation the higher is the newer:
/// through a hold, its confirm, the deduction and a refund; a dead letter requeued and
/// applied; a cancel while queued; an expiry; and a refund after the record was forgotten,
/// whose version comes from the clock (above every earlier one).
#[tokio::test]
async fn every_transition_raises_the_version_and_outcomes_carry_it() {
    let env = TestEnv::with(|s| s.delivery.max_attempts = 1).await;
    env.stock(1, 100).await;
    let shards = env.shards();
    let version = |id: &'static str| {
        let (shards, ledger) = (shards.clone(), env.ledger.clone());
        async move { stockq::status(&shards, &ledger, id).await.unwrap().expect("known").version }
    };
    let hold = Some(Duration::from_secs(600));

    // dead: queued 1, dead 2 (its claim timed out, one attempt allowed), queued 3, applied 4
    assert!(matches!(reserve(&env, 1, "dead", None, None).await, Reservation::Reserved { .. }));
    let claim = env.queue.claim(1, None).await.unwrap();
    assert!(String::from_utf8_lossy(&claim.entries[0]).contains("\"dead\""));
    env.wait_past(claim.deadline_ms).await;
    env.janitor().recover().await.unwrap();
    assert_eq!(state(&env, "dead").await, "dead");
    assert_eq!(version("dead").await, Some(2));
    assert_eq!(env.run(&["dead", "requeue", "dead"]).await.0, 0);
    assert_eq!(version("dead").await, Some(3));

    // paid: held 1, queued 2, applied 3, releasing 4, released 5
    assert!(matches!(reserve(&env, 1, "paid", None, hold).await, Reservation::Reserved { .. }));
    assert_eq!(version("paid").await, Some(1));
    assert_eq!(stockq::confirm(&shards, "paid").await.unwrap(), Confirm::Queued);
    assert_eq!(version("paid").await, Some(2));
    match reserve(&env, 1, "paid", None, hold).await {
        Reservation::Replayed { version, .. } => assert_eq!(version, Some(2), "a replay says the version"),
        other => panic!("{other:?}"),
    }

    // cancelled while queued: queued 1, cancelling 2, cancelled 3; expired: held 1, expired 2
    assert!(matches!(reserve(&env, 1, "gone", None, None).await, Reservation::Reserved { .. }));
    let cancel = |id: &'static str| {
        let (shards, ledger) = (shards.clone(), env.ledger.clone());
        async move { stockq::cancel(&shards, &ledger, id).await.unwrap() }
    };
    assert_eq!(cancel("gone").await, Cancel::Done { state: ReservationState::Cancelling, changed: true });
    assert_eq!(version("gone").await, Some(2));
    let short = Some(Duration::from_millis(100));
    let Reservation::Reserved { deadline: Some(deadline), .. } = reserve(&env, 1, "late", None, short).await
    else {
        panic!("held")
    };
    env.wait_past(deadline).await;
    assert_eq!(
        stockq::confirm(&shards, "late").await.unwrap(),
        Confirm::Ended { state: ReservationState::Expired }
    );
    assert_eq!(version("late").await, Some(2));

    env.drain(10).await;
    assert_eq!(version("paid").await, Some(3));
    assert_eq!(version("dead").await, Some(4));
    assert_eq!(version("gone").await, Some(3));
    assert_eq!(cancel("paid").await, Cancel::Done { state: ReservationState::Releasing, changed: true });
    assert_eq!(version("paid").await, Some(4));
    env.drain(10).await;
    assert_eq!(version("paid").await, Some(5));

    // applied, then its record forgotten before the refund
    assert!(matches!(reserve(&env, 1, "old", None, None).await, Reservation::Reserved { .. }));
    env.drain(10).await;
    let mut c = env.redis.clone();
    let _: () = c.del(env.key("r:old")).await.unwrap();
    assert_eq!(version("old").await, None, "a status from MySQL has no version");
    assert_eq!(cancel("old").await, Cancel::Done { state: ReservationState::Releasing, changed: true });
    env.drain(10).await;

    let seen = versions(&env).await;
    let of = |id: &str| -> Vec<(String, i64)> {
        seen.iter().filter(|(e, _, _)| e == id).map(|(_, s, v)| (s.clone(), *v)).collect()
    };
    let pairs = |list: &[(&str, i64)]| -> Vec<(String, i64)> {
        list.iter().map(|(s, v)| (s.to_string(), *v)).collect()
    };
    assert_eq!(of("paid"), pairs(&[("applied", 3), ("released", 5)]));
    assert_eq!(of("dead"), pairs(&[("dead", 2), ("applied", 4)]));
    assert_eq!(of("gone"), pairs(&[("cancelled", 3)]));
    assert_eq!(of("late"), pairs(&[("expired", 2)]));
    let old = of("old");
    assert_eq!(old.iter().map(|(s, _)| s.as_str()).collect::<Vec<_>>(), ["applied", "released"]);
    assert_eq!(old[0].1, 2);
    assert!(old[1].1 > env.redis_now_ms().await - 60_000, "from the clock: {old:?}");
    env.assert_books_balance().await;
}
