//! Reservations grouped into one call (`lua/reserve_group.lua`, `src/queue/group.rs`): each
//! is answered exactly as it would be alone (`lua/reserve.lua`), in arrival order, and a bad
//! one fails alone.

use std::time::Duration;

use redis::Value;
use stockq::{Request, Reservation};

use crate::helpers::{TestEnv, stockq_bin};

/// The script `name` exactly as stockq sends it (`stockq scripts NAME`).
fn script(name: &str) -> redis::Script {
    let out =
        std::process::Command::new(stockq_bin()).args(["scripts", name]).output().expect("stockq scripts");
    assert!(out.status.success(), "stockq scripts {name}");
    redis::Script::new(&String::from_utf8(out.stdout).unwrap())
}

/// One reservation: event id, product, qty, buyer, hold ms.
type Ask = (&'static str, i64, i64, &'static str, u64);

/// Every case a reservation can meet, one after the other, several on the same product and
/// buyer, so that each depends on the ones before it.
const ASKS: &[Ask] = &[
    ("a1", 1, 2, "", 0),
    ("a2", 1, 2, "bob", 0),
    ("a1", 1, 2, "", 0),         // a replay: the first answer, nothing taken
    ("a1", 1, 1, "", 0),         // the id used otherwise
    ("a3", 1, 2, "", 0),         // sold out (1 left)
    ("a4", 1, 1, "carol", 0),    // the last unit
    ("a5", 1, 1, "", 0),         // sold out (0 left)
    ("b1", 2, 1, "", 0),         // a limit needs a buyer
    ("b2", 2, 1, "bob", 0),      // under the limit of 2
    ("b3", 2, 1, "bob", 90_000), // held, at the limit
    ("b4", 2, 1, "bob", 0),      // past the limit
    ("b5", 2, 2, "dan", 0),
    ("b3", 2, 1, "bob", 90_000), // a replay of a hold
    ("c1", 3, 1, "", 0),         // an unknown product
    ("d1", 4, 3, "erin", 0),
    ("d2", 4, 3, "erin", 0),
    ("d1", 4, 3, "erin", 0),
];

/// An answer without its clock readings, which differ between two runs.
fn timeless(answer: &Value) -> Vec<Value> {
    let Value::Array(values) = answer else { panic!("an answer is an array: {answer:?}") };
    let code = match values[0] {
        Value::Int(code) => code,
        _ => panic!("{values:?}"),
    };
    let mut values = values.clone();
    match code {
        // {1, seq, remaining, reserved_at, deadline}: the deadline is reserved_at + hold
        1 => {
            let Value::Int(at) = values[3] else { panic!() };
            if let Value::Int(deadline) = &mut values[4]
                && *deadline > 0
            {
                *deadline -= at;
            }
            values[3] = Value::Nil;
        }
        // {2, seq, state, reserved_at, updated_at, deadline}
        2 => {
            let Value::Int(at) = values[3] else { panic!() };
            if let Value::Int(deadline) = &mut values[5]
                && *deadline > 0
            {
                *deadline -= at;
            }
            values[3] = Value::Nil;
            values[4] = Value::Nil;
        }
        _ => {}
    }
    values
}

async fn stock_up(env: &TestEnv) {
    env.stock(1, 5).await;
    env.stock(2, 10).await;
    env.stock(4, 7).await;
    assert_eq!(env.run(&["stock", "limit", "2", "2"]).await.0, 0);
}

/// The same reservations, one call each through reserve.lua on one queue and in one call of
/// reserve_group.lua on another: the same answers, numbers and books, and one reservation
/// with bad arguments in the middle of the group fails alone.
#[tokio::test]
async fn a_group_answers_each_reservation_as_it_would_be_answered_alone() {
    let (alone, grouped) = (TestEnv::new().await, TestEnv::new().await);
    stock_up(&alone).await;
    stock_up(&grouped).await;

    let single = script("reserve");
    let mut c = alone.redis.clone();
    let mut answers_alone = Vec::new();
    for (id, product, qty, buyer, hold) in ASKS {
        let k = |s: &str| alone.key(s);
        let answer: Value = single
            .key(k(&format!("stock:{product}")))
            .key(k("pending"))
            .key(k("seq"))
            .key(k("inflight"))
            .key(k(&format!("r:{id}")))
            .key(k("holds"))
            .key(k("limits"))
            .key(k("bought"))
            .arg(*id)
            .arg(*product)
            .arg(*qty)
            .arg(*buyer)
            .arg(*hold)
            .invoke_async(&mut c)
            .await
            .unwrap();
        answers_alone.push(timeless(&answer));
    }

    // the group, with a reservation whose buyer is not a buyer id in the middle
    let group = script("reserve_group");
    let k = |s: &str| grouped.key(s);
    let mut invocation = group.prepare_invoke();
    for key in ["pending", "seq", "inflight", "holds", "limits", "bought"] {
        invocation.key(k(key));
    }
    let bad_at = 5;
    for (i, (id, product, qty, buyer, hold)) in ASKS.iter().enumerate() {
        if i == bad_at {
            invocation.key(k("stock:1")).key(k("r:bad")).arg("bad").arg(1).arg(1).arg("no spaces").arg(0);
        }
        invocation
            .key(k(&format!("stock:{product}")))
            .key(k(&format!("r:{id}")))
            .arg(*id)
            .arg(*product)
            .arg(*qty)
            .arg(*buyer)
            .arg(*hold);
    }
    let mut c = grouped.redis.clone();
    let Value::Array(mut answers) = invocation.invoke_async::<Value>(&mut c).await.unwrap() else {
        panic!("one answer per reservation")
    };
    assert_eq!(answers.len(), ASKS.len() + 1);
    let bad = answers.remove(bad_at);
    let Value::Array(bad) = bad else { panic!() };
    assert_eq!(bad[0], Value::Int(-9));
    assert!(format!("{:?}", bad[2]).contains("buyer must be"), "{bad:?}");
    let answers_grouped: Vec<Vec<Value>> = answers.iter().map(timeless).collect();
    for (i, (alone, grouped)) in answers_alone.iter().zip(&answers_grouped).enumerate() {
        assert_eq!(alone, grouped, "reservation {i} {:?}", ASKS[i]);
    }
    let codes: Vec<&Value> = answers_grouped.iter().map(|a| &a[0]).collect();
    for code in [1, 2, -2, 0, -1, -3, -4] {
        assert!(codes.contains(&&Value::Int(code)), "the cases cover answer {code}: {codes:?}");
    }

    // the same books: stock, units in flight, buyers' units, the queue, the holds
    for (a, g) in [(&alone, &grouped)] {
        for product in [1, 2, 4] {
            assert_eq!(a.redis_stock(product).await, g.redis_stock(product).await, "product {product}");
        }
        for hash in ["inflight", "bought"] {
            let (mut ca, mut cg) = (a.redis.clone(), g.redis.clone());
            let ha: std::collections::BTreeMap<String, i64> =
                redis::cmd("HGETALL").arg(a.key(hash)).query_async(&mut ca).await.unwrap();
            let hg: std::collections::BTreeMap<String, i64> =
                redis::cmd("HGETALL").arg(g.key(hash)).query_async(&mut cg).await.unwrap();
            assert_eq!(ha, hg, "{hash}");
        }
        let strip = |entries: Vec<Vec<u8>>| -> Vec<String> {
            entries
                .into_iter()
                .map(|e| {
                    let text = String::from_utf8(e).unwrap();
                    text[..text.find(",\"at\":").unwrap()].to_string()
                })
                .collect()
        };
        assert_eq!(strip(a.list("pending").await), strip(g.list("pending").await));
        assert_eq!(a.zcard("holds").await, g.zcard("holds").await);
    }
    // and the worker applies both alike
    alone.drain(10).await;
    grouped.drain(10).await;
    alone.assert_books_balance().await;
    grouped.assert_books_balance().await;
    for product in [1, 2, 4] {
        assert_eq!(alone.mysql_stock(product).await, grouped.mysql_stock(product).await);
    }
}

/// Shoppers at once, through the library: reservations gather into groups while a call is
/// in flight, and each shopper gets its own answer. 600 shoppers for 250 units of which each
/// buyer may hold 2: exactly 250 reserved, no buyer past 2, the books exact once applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shoppers_at_once_are_grouped_and_each_gets_its_own_answer() {
    let env = TestEnv::new().await;
    env.stock(1, 250).await;
    assert_eq!(env.run(&["stock", "limit", "1", "2"]).await.0, 0);
    let answers = futures::future::join_all((0..600).map(|i| {
        let queue = env.queue.clone();
        async move {
            let id = format!("shopper-{i}");
            let buyer = format!("buyer-{}", i % 200);
            let request = Request { product_id: 1, qty: 1, event_id: &id, buyer: Some(&buyer), hold: None };
            (buyer.clone(), stockq::reserve_held(&queue, request).await.expect("an answer"))
        }
    }))
    .await;
    let mut reserved = 0;
    let mut per_buyer = std::collections::HashMap::<String, i64>::new();
    let mut seqs = std::collections::HashSet::new();
    for (buyer, answer) in &answers {
        match answer {
            Reservation::Reserved { seq, .. } => {
                reserved += 1;
                *per_buyer.entry(buyer.clone()).or_default() += 1;
                assert!(seqs.insert(*seq), "each reservation its own number");
            }
            Reservation::SoldOut { .. } | Reservation::LimitReached { limit: 2, .. } => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(reserved, 250);
    assert!(per_buyer.values().all(|n| *n <= 2), "{per_buyer:?}");
    assert_eq!(env.redis_stock(1).await, Some(0));
    tokio::time::timeout(Duration::from_secs(60), env.drain(500)).await.unwrap();
    assert_eq!(env.applied_units(1).await, 250);
    env.assert_books_balance().await;
}
