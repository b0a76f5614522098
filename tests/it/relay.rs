//! `stockq relay` (docs/webhooks.md): every outcome of a sale delivered to a webhook that
//! fails often, through relays killed mid-delivery; signatures valid; each reservation's
//! versions in order; dead letters listed and replayed.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use stockq::{Cancel, Confirm, Request, Reservation};

use crate::helpers::{TestEnv, send_signal};

const SECRET: &str = "a-webhook-secret-of-some-length";

/// One delivery as the receiver saw it.
#[derive(Debug, Clone)]
struct Seen {
    id: String,
    event_id: String,
    version: i64,
    state: String,
    /// Whether the receiver answered 2xx.
    accepted: bool,
}

#[derive(Default)]
struct Receiver {
    seen: Mutex<Vec<Seen>>,
    bad_signatures: Mutex<Vec<String>>,
    /// Share of deliveries answered 500, in percent.
    fail_percent: Mutex<u32>,
    /// Delivery ids always answered 500.
    refuse: Mutex<HashSet<String>>,
}

impl Receiver {
    fn accepted(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().iter().filter(|s| s.accepted).cloned().collect()
    }
}

async fn hook(State(r): State<Arc<Receiver>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let body = String::from_utf8_lossy(&body).into_owned();
    let header = headers.get("stockq-signature").and_then(|v| v.to_str().ok()).unwrap_or("");
    let t: u64 =
        header.split(',').find_map(|p| p.strip_prefix("t=")).and_then(|t| t.parse().ok()).unwrap_or(0);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    if header != stockq::relay::signature(SECRET, t, &body) || now.abs_diff(t) > 300 {
        r.bad_signatures.lock().unwrap().push(format!("{header} {body}"));
        return StatusCode::UNAUTHORIZED;
    }
    let v: serde_json::Value = serde_json::from_str(&body).expect("a JSON body");
    let event_id = v["event_id"].as_str().unwrap().to_string();
    let id = v["id"].as_str().unwrap().to_string();
    let fail = r.refuse.lock().unwrap().contains(&id)
        || rand::random_range(0..100) < *r.fail_percent.lock().unwrap();
    r.seen.lock().unwrap().push(Seen {
        id,
        event_id,
        version: v["version"].as_i64().expect("a version"),
        state: v["state"].as_str().unwrap().to_string(),
        accepted: !fail,
    });
    if fail { StatusCode::INTERNAL_SERVER_ERROR } else { StatusCode::NO_CONTENT }
}

/// A webhook receiver on a free local port.
async fn receiver() -> (Arc<Receiver>, SocketAddr) {
    let state = Arc::new(Receiver::default());
    let app = axum::Router::new().route("/hook", axum::routing::post(hook)).with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (state, addr)
}

fn relay(env: &TestEnv, addr: SocketAddr, extra: &[(&str, &str)]) -> tokio::process::Child {
    let mut cmd = env.command(&["relay"]);
    cmd.env("STOCKQ_WEBHOOK_URL", format!("http://{addr}/hook"))
        .env("STOCKQ_WEBHOOK_SECRET", SECRET)
        .env("STOCKQ_WEBHOOK_TIMEOUT", "1s")
        .envs(extra.iter().copied())
        .stdout(std::process::Stdio::null());
    cmd.spawn().expect("spawn relay")
}

/// Waits until the relays' cursor is set: outcomes before it are not delivered.
pub(crate) async fn started(env: &TestEnv) {
    let c = env.redis.clone();
    env.eventually(Duration::from_secs(10), "the relays' cursor", || {
        let mut c = c.clone();
        async move {
            let n: i64 =
                redis::cmd("EXISTS").arg(env.key("webhooks:cursor")).query_async(&mut c).await.unwrap();
            n == 1
        }
    })
    .await;
}

/// Every outcome in the stream, as delivery ids.
async fn outcome_ids(env: &TestEnv) -> Vec<String> {
    let mut c = env.redis.clone();
    let raw: Vec<(String, HashMap<String, String>)> =
        redis::cmd("XRANGE").arg(env.key("outcomes")).arg("-").arg("+").query_async(&mut c).await.unwrap();
    raw.into_iter().map(|(_, f)| format!("{}@{}", f["event_id"], f["version"])).collect()
}

/// A sale with holds, confirms, cancels, refunds and a worker, its outcomes relayed to a
/// receiver that fails 30% of deliveries; one relay is SIGKILLed mid-delivery, two others
/// share the rest. Every outcome is delivered, every signature is valid, and the versions
/// of each reservation reach the receiver in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_outcome_reaches_a_failing_webhook_in_version_order_through_killed_relays() {
    let env = TestEnv::new().await;
    let env = &env;
    env.stock(1, 10_000).await;
    let (receiver, addr) = receiver().await;
    *receiver.fail_percent.lock().unwrap() = 30;
    let mut first = relay(env, addr, &[]);
    started(env).await;
    let mut worker = env.spawn(&["worker"]);

    let shards = env.shards();
    const N: usize = 400;
    let hold = Some(Duration::from_secs(600));
    for i in 0..N {
        let id = format!("o-{i}");
        let held = if i % 2 == 0 { hold } else { None };
        let request = Request { product_id: 1, qty: 1, event_id: &id, buyer: None, hold: held };
        let answer = stockq::reserve_held(&env.queue, request).await.unwrap();
        assert!(matches!(answer, Reservation::Reserved { .. }), "{answer:?}");
        if i % 2 == 0 {
            if i % 10 == 0 {
                // cancelled unpaid
                let done = stockq::cancel(&shards, &env.ledger, &id).await.unwrap();
                assert!(matches!(done, Cancel::Done { .. }), "{done:?}");
            } else {
                assert_eq!(stockq::confirm(&shards, &id).await.unwrap(), Confirm::Queued);
            }
        }
        if i == N / 4 {
            // the first relay dies with deliveries under way
            send_signal(first.id().unwrap(), "KILL");
            let _ = first.wait().await;
        }
    }
    let mut relays = [relay(env, addr, &[]), relay(env, addr, &[])];
    // every queued one applied, then a refund of every third
    env.eventually(Duration::from_secs(60), "the sale applied", || async {
        env.log_counts().await.0 as usize >= N - N / 10
    })
    .await;
    let refunds = (1..N).step_by(3).filter(|i| i % 10 != 0).count();
    for i in (1..N).step_by(3) {
        let _ = stockq::cancel(&shards, &env.ledger, &format!("o-{i}")).await.unwrap();
    }
    env.eventually(Duration::from_secs(60), "the refunds released", || async {
        let released: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM stock_log WHERE status = 'released'")
            .fetch_one(&env.mysql)
            .await
            .unwrap();
        released as usize == refunds && env.len("releases").await == 0
    })
    .await;
    send_signal(relays[0].id().unwrap(), "KILL");
    let _ = relays[0].wait().await;

    let expected: HashSet<String> = outcome_ids(env).await.into_iter().collect();
    assert!(expected.len() > N, "a sale's worth of outcomes: {}", expected.len());
    env.eventually(Duration::from_secs(90), "every outcome delivered", || async {
        let got: HashSet<String> = receiver.accepted().into_iter().map(|s| s.id).collect();
        expected.is_subset(&got)
    })
    .await;

    assert_eq!(receiver.bad_signatures.lock().unwrap().clone(), Vec::<String>::new());
    let seen = receiver.seen.lock().unwrap().clone();
    assert!(seen.iter().any(|s| !s.accepted), "the receiver failed some deliveries");
    // in the order they arrived, each reservation's versions never go back
    let mut last: HashMap<&str, i64> = HashMap::new();
    for s in &seen {
        let before = last.insert(&s.event_id, s.version).unwrap_or(0);
        assert!(
            s.version >= before,
            "{} went back from version {before} to {} ({})",
            s.event_id,
            s.version,
            s.state
        );
    }
    let (_, out, _) = env.run(&["webhooks", "list", "--json"]).await;
    let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(listed["total"], 0, "{out}");
    let mut c = env.redis.clone();
    let waiting: i64 = redis::cmd("ZCARD").arg(env.key("webhooks:due")).query_async(&mut c).await.unwrap();
    assert_eq!(waiting, 0, "nothing left to deliver");
    let _ = worker.kill().await;
    for r in &mut relays {
        let _ = r.kill().await;
    }
}

/// A delivery refused past STOCKQ_WEBHOOK_RETRY_FOR is a dead letter (the next outcome of its
/// reservation goes on), listed by `stockq webhooks list`; replayed, it is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_webhook_refused_too_long_is_a_dead_letter_and_replays() {
    let env = TestEnv::new().await;
    let env = &env;
    env.stock(1, 100).await;
    let (receiver, addr) = receiver().await;
    receiver.refuse.lock().unwrap().insert("refused@2".to_string());
    let mut relay = relay(env, addr, &[("STOCKQ_WEBHOOK_RETRY_FOR", "2s")]);
    started(env).await;
    for id in ["refused", "fine"] {
        let request = Request { product_id: 1, qty: 1, event_id: id, buyer: None, hold: None };
        stockq::reserve_held(&env.queue, request).await.unwrap();
    }
    env.drain(10).await;
    env.eventually(Duration::from_secs(30), "a dead letter", || async {
        let (_, out, _) = env.run(&["webhooks", "list", "--json"]).await;
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["total"] == 1
    })
    .await;
    let (code, out, _) = env.run(&["webhooks", "list", "--json"]).await;
    assert_eq!(code, 0);
    let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
    let dead = &listed["dead"][0];
    assert_eq!((dead["id"].as_str(), dead["event_id"].as_str()), (Some("refused@2"), Some("refused")));
    assert!(dead["attempts"].as_u64().unwrap() >= 2, "{dead}");
    assert_eq!(dead["error"], "answered HTTP 500");
    assert!(receiver.accepted().iter().any(|s| s.id == "fine@2"));

    // the refund of the refused one is delivered although its `applied` died
    stockq::cancel(&env.shards(), &env.ledger, "refused").await.unwrap();
    env.drain(10).await;
    env.eventually(Duration::from_secs(20), "the later outcome", || async {
        receiver.accepted().iter().any(|s| s.id == "refused@4")
    })
    .await;

    assert_eq!(env.run(&["webhooks", "replay", "nothing@1"]).await.0, 4, "an unknown id exits 4");
    assert_eq!(env.run(&["webhooks", "replay", "bad id"]).await.0, 2);
    receiver.refuse.lock().unwrap().clear();
    let (code, out, _) = env.run(&["webhooks", "replay", "refused@2"]).await;
    assert_eq!((code, out.trim()), (0, "replayed 1"));
    env.eventually(Duration::from_secs(20), "the replayed delivery", || async {
        receiver.accepted().iter().any(|s| s.id == "refused@2")
    })
    .await;
    let (_, out, _) = env.run(&["webhooks", "list", "--json"]).await;
    assert_eq!(serde_json::from_str::<serde_json::Value>(&out).unwrap()["total"], 0);
    let _ = relay.kill().await;
}

/// Bad settings are refused at start with one line and exit 2; the secret is never printed.
#[tokio::test]
async fn a_relay_with_bad_settings_says_what_is_wrong() {
    let env = TestEnv::new().await;
    for (url, secret, want) in [
        ("ftp://x/hook", SECRET, "STOCKQ_WEBHOOK_URL has scheme"),
        ("http://127.0.0.1:1/hook", "short", "STOCKQ_WEBHOOK_SECRET must be at least 16"),
    ] {
        let out = env
            .command(&["relay"])
            .env("STOCKQ_WEBHOOK_URL", url)
            .env("STOCKQ_WEBHOOK_SECRET", secret)
            .output()
            .await
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains(want), "{err}");
        assert!(!err.contains(SECRET) && err.lines().count() == 1, "{err}");
    }
    let out = env.command(&["relay"]).env_remove("STOCKQ_WEBHOOK_URL").output().await.unwrap();
    assert_eq!(out.status.code(), Some(2));
}
