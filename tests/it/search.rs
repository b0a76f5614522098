//! Finding reservations while a sale runs (docs/commands.md): by event id, by buyer, the holds
//! due first, and dead letters by reason, requeued or dropped a reason at a time.

use std::time::Duration;

use serde_json::Value;
use stockq::{Request, Reservation};

use crate::helpers::TestEnv;

async fn json(env: &TestEnv, args: &[&str]) -> (i32, Value) {
    let (code, out, err) = env.run(args).await;
    (code, serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out} {err}")))
}

#[tokio::test]
async fn a_reservation_is_found_by_id_and_by_buyer_and_holds_list_by_deadline() {
    let env = TestEnv::with(|s| s.delivery.max_attempts = 1).await;
    env.stock(1, 10).await;
    let reserve = |id: &'static str, buyer: Option<&'static str>, hold: Option<Duration>| {
        let env = &env;
        async move {
            let request = Request { product_id: 1, qty: 1, event_id: id, buyer, hold };
            let answer = stockq::reserve_held(&env.queue, request).await.unwrap();
            assert!(matches!(answer, Reservation::Reserved { .. }), "{answer:?}");
        }
    };
    reserve("paid", Some("bob"), None).await;
    env.drain(10).await;
    reserve("later", Some("bob"), Some(Duration::from_secs(900))).await;
    reserve("sooner", Some("carol"), Some(Duration::from_secs(600))).await;
    reserve("other", Some("dan"), None).await;
    env.drain(10).await;

    let (code, found) = json(&env, &["search", "paid", "--json"]).await;
    assert_eq!(code, 0);
    assert_eq!(found["status"]["state"], "applied", "{found}");
    assert_eq!(found["outcomes"].as_array().unwrap().len(), 1, "{found}");
    assert_eq!(found["outcomes"][0]["fields"]["version"], "2");
    assert!(found["place"].as_str().unwrap().contains("ended"), "{found}");
    let (code, found) = json(&env, &["search", "later", "--json"]).await;
    assert_eq!((code, found["status"]["state"].as_str()), (0, Some("held")));
    assert!(found["place"].as_str().unwrap().starts_with("held unpaid until"), "{found}");
    assert_eq!(env.run(&["search", "nobody"]).await.0, 4);
    assert_eq!(env.run(&["search", "bad id"]).await.0, 2);

    let (_, bob) = json(&env, &["search", "--buyer", "bob", "--json"]).await;
    let ids: Vec<&str> = bob["outcomes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["fields"]["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["paid"], "{bob}");
    assert_eq!(bob["held"][0][0], "later");
    assert_eq!(bob["complete"], true);

    let (_, holds) = json(&env, &["holds", "--json"]).await;
    assert_eq!(holds["total"], 2);
    let order: Vec<&str> =
        holds["holds"].as_array().unwrap().iter().map(|h| h["event_id"].as_str().unwrap()).collect();
    assert_eq!(order, ["sooner", "later"], "the deadline due first comes first");
    assert_eq!(holds["holds"][0]["buyer"], "carol");
    let (_, text, _) = env.run(&["holds"]).await;
    assert!(text.starts_with("2 held") && text.contains("sooner until"), "{text}");
}

#[tokio::test]
async fn dead_letters_are_counted_listed_and_dropped_by_reason() {
    let env = TestEnv::with(|s| s.delivery.max_attempts = 1).await;
    env.stock(1, 10).await;
    for raw in [&b"garbage one"[..], b"garbage two", br#"{"event_id":"x","product_id":0,"qty":1}"#] {
        env.push_raw(raw).await;
    }
    env.drain(10).await;
    // one valid event dies of its claim timing out
    let request = Request { product_id: 1, qty: 1, event_id: "timed-out", buyer: None, hold: None };
    stockq::reserve_held(&env.queue, request).await.unwrap();
    let claim = env.queue.claim(1, None).await.unwrap();
    assert_eq!(claim.entries.len(), 1);
    env.wait_past(claim.deadline_ms).await;
    env.janitor().recover().await.unwrap();
    assert_eq!(env.len("dead").await, 4);

    let (_, reasons) = json(&env, &["dead", "reasons", "--json"]).await;
    let list = reasons["reasons"].as_array().unwrap();
    assert_eq!(list.iter().map(|r| r["count"].as_u64().unwrap()).sum::<u64>(), 4, "{reasons}");
    assert!(list.iter().any(|r| r["reason"].as_str().unwrap().starts_with("claim timed out")), "{reasons}");
    assert_eq!(reasons["complete"], true);

    let (_, listed) = json(&env, &["dead", "list", "--reason", "CLAIM TIMED OUT", "--json"]).await;
    assert_eq!(listed["total"], 1, "{listed}");
    let (code, out, _) = env.run(&["dead", "requeue", "--reason", "claim timed out"]).await;
    assert_eq!((code, out.trim()), (0, "requeued 1"));
    let (code, out, _) = env.run(&["dead", "drop", "--reason", "json"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("dropped 2"), "{out}");
    assert_eq!(env.len("dead").await, 1, "the letter of another reason stays");
    assert_eq!(env.run(&["dead", "drop", "--all", "--reason", "x"]).await.0, 2, "one selection at a time");
    let (_, audit, _) = env.run(&["audit"]).await;
    assert!(audit.contains("dead drop: reason \"json\": 2 dropped"), "{audit}");
    assert!(audit.contains("dead requeue: reason \"claim timed out\": 1 requeued"), "{audit}");
    env.drain(10).await;
    env.assert_books_balance().await;
}
