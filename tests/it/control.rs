//! The operators' levers during a sale (docs/operations.md "Running a sale"): a product's sale
//! paused and resumed, deductions paused and resumed queue-wide, each action audited.

use std::time::Duration;

use stockq::{Confirm, Request, Reservation};

use crate::helpers::{TestEnv, http, terminate};

async fn reserve(env: &TestEnv, product_id: i64, event_id: &str, hold: Option<Duration>) -> Reservation {
    let request = Request { product_id, qty: 1, event_id, buyer: None, hold };
    stockq::reserve_held(&env.queue, request).await.expect("reserve")
}

/// A paused product refuses reservations everywhere (library, CLI exit 7, HTTP 423 `paused`)
/// and takes nothing, while its holds are confirmed and its queued events deducted; other
/// products sell on; resumed, it sells again. Every action is in the audit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_product_refuses_reservations_while_everything_else_goes_on() {
    let env = TestEnv::new().await;
    env.stock(1, 100).await;
    env.stock(2, 100).await;
    for i in 0..10 {
        assert!(matches!(reserve(&env, 1, &format!("q-{i}"), None).await, Reservation::Reserved { .. }));
    }
    let hold = Some(Duration::from_secs(600));
    assert!(matches!(reserve(&env, 1, "held", hold).await, Reservation::Reserved { .. }));
    let (code, out, _) = env.run(&["stock", "pause", "1"]).await;
    assert_eq!(
        (code, out.trim()),
        (0, "product 1: paused; its reservations are refused until `stockq stock resume 1`")
    );
    assert_eq!(env.run(&["stock", "pause", "1"]).await.1.trim(), "product 1: paused already");

    assert!(matches!(reserve(&env, 1, "refused", None).await, Reservation::Paused { since } if since > 0));
    let (code, _, err) = env.run(&["reserve", "1", "1", "--event-id", "cli-refused"]).await;
    assert_eq!(code, 7, "{err}");
    assert!(err.contains("paused"), "{err}");
    let (mut serve, port) = env.serve(&[]).await;
    let answer = http(port, "POST", "/reserve").json(r#"{"product_id": 1, "qty": 1}"#).send().await;
    assert_eq!(answer.status, 423, "{}", answer.text());
    assert_eq!(answer.json()["error"], "paused");
    let answer = http(port, "POST", "/reserve").json(r#"{"product_id": 2, "qty": 1}"#).send().await;
    assert_eq!(answer.status, 201, "another product sells on: {}", answer.text());
    assert_eq!(env.redis_stock(1).await, Some(89), "nothing taken by a refusal");
    // refusals are counted in Redis by every process that reserves: the CLI's at once, serve's
    // within a second
    let refusals = || async {
        let (_, stats, _) = env.run(&["stats", "--json"]).await;
        serde_json::from_str::<serde_json::Value>(&stats).unwrap()["refusals"].clone()
    };
    env.eventually(Duration::from_secs(10), "the refusals counted", || async {
        refusals().await["1"]["paused"] == 2
    })
    .await;
    // unknown products are counted together, under product 0: one field whatever the ids
    for product in ["901", "902"] {
        assert_eq!(env.run(&["reserve", product, "1"]).await.0, 4);
    }
    let counted = refusals().await;
    assert_eq!(counted["0"]["unknown_product"], 2, "{counted}");
    assert!(counted.get("901").is_none(), "{counted}");

    // the product's life goes on: a hold confirmed, queued events deducted, a cancel
    assert_eq!(stockq::confirm(&env.shards(), "held").await.unwrap(), Confirm::Queued);
    env.drain(100).await;
    assert_eq!(env.applied_units(1).await, 11);
    stockq::cancel(&env.shards(), &env.ledger, "q-0").await.unwrap();
    env.drain(100).await;
    assert_eq!((env.redis_stock(1).await, env.mysql_stock(1).await), (Some(90), 90));
    let (_, stats, _) = env.run(&["stats", "--json"]).await;
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(stats["paused_products"][0]["product_id"], 1, "{stats}");

    let (code, out, _) = env.run(&["stock", "resume", "1"]).await;
    assert_eq!((code, out.trim()), (0, "product 1: selling again"));
    assert!(matches!(reserve(&env, 1, "after", None).await, Reservation::Reserved { .. }));
    let answer = http(port, "POST", "/reserve").json(r#"{"product_id": 1, "qty": 1}"#).send().await;
    assert_eq!(answer.status, 201);
    assert_eq!(env.run(&["stock", "pause", "9"]).await.0, 2, "an unknown product is refused");
    terminate(&mut serve).await;
    assert_eq!(env.run(&["stock", "add", "2", "5"]).await.0, 0);

    let (_, out, _) = env.run(&["audit", "--json"]).await;
    let actions: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let listed: Vec<(&str, &str)> =
        actions.iter().map(|a| (a["action"].as_str().unwrap(), a["detail"].as_str().unwrap())).collect();
    assert_eq!(
        listed[..4],
        [
            ("stock change", "product 2 +5: mysql 104, redis 104"),
            ("stock resume", "product 1"),
            ("stock pause", "product 1 (already paused)"),
            ("stock pause", "product 1")
        ],
        "newest first: {out}"
    );
    assert!(actions.iter().all(|a| a["who"].as_str().unwrap().starts_with("cli:")), "{out}");
    let (_, text, _) = env.run(&["audit", "--count", "1"]).await;
    assert!(
        text.trim().ends_with("stock change: product 2 +5: mysql 104, redis 104") && text.contains(" cli:"),
        "{text}"
    );
    env.assert_books_balance().await;
}

/// `stockq pause` stops every worker's claims (a running worker process applies nothing while
/// reservations go on); `stockq resume` lets them drain the queue; the books balance.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn paused_deductions_stop_every_worker_until_resumed() {
    let env = TestEnv::new().await;
    env.stock(1, 1_000).await;
    let mut worker = env.spawn(&["worker"]);
    assert!(matches!(reserve(&env, 1, "first", None).await, Reservation::Reserved { .. }));
    env.eventually(Duration::from_secs(10), "the first deducted", || async {
        env.applied_units(1).await == 1
    })
    .await;

    let (code, out, _) = env.run(&["pause"]).await;
    assert_eq!((code, out.trim()), (0, "deductions paused: workers claim nothing until `stockq resume`"));
    // a worker reads the pause within 250 ms; a batch it had begun finishes
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = env.applied_units(1).await;
    for i in 0..200 {
        assert!(matches!(reserve(&env, 1, &format!("p-{i}"), None).await, Reservation::Reserved { .. }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(env.applied_units(1).await, before, "nothing deducted while paused");
    assert_eq!(before, 1);
    assert_eq!(env.len("pending").await, 200);
    let (_, stats, _) = env.run(&["stats", "--json"]).await;
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    assert!(stats["deductions_paused"]["by"].as_str().unwrap().starts_with("cli:"), "{stats}");
    let (_, text, _) = env.run(&["stats"]).await;
    assert!(text.contains("PAUSED       deductions"), "{text}");

    assert_eq!(env.run(&["resume"]).await.1.trim(), "deductions resumed");
    env.eventually(Duration::from_secs(20), "the queue drained", || async {
        env.applied_units(1).await == 201
    })
    .await;
    assert_eq!(env.run(&["resume"]).await.1.trim(), "deductions were not paused");
    assert_eq!(terminate(&mut worker).await, 0);
    env.assert_books_balance().await;
    let (_, out, _) = env.run(&["audit"]).await;
    assert!(out.contains("resume: deductions") && out.contains("pause: deductions"), "{out}");
}
