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
    ("e1", 5, 1, "erin", 0), // a paused product
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
        // {-6, 0, since}: when it was paused
        -6 => values[2] = Value::Nil,
        _ => {}
    }
    values
}

async fn stock_up(env: &TestEnv) {
    env.stock(1, 5).await;
    env.stock(2, 10).await;
    env.stock(4, 7).await;
    env.stock(5, 3).await;
    assert_eq!(env.run(&["stock", "limit", "2", "2"]).await.0, 0);
    assert_eq!(env.run(&["stock", "pause", "5"]).await.0, 0);
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
        let Value::Array(mut values) = answer else { panic!("{answer:?}") };
        values.resize(7, Value::Int(0));
        answers_alone.push(timeless(&Value::Array(values)));
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
    let Value::Array(flat) = invocation.invoke_async::<Value>(&mut c).await.unwrap() else {
        panic!("one answer per reservation")
    };
    // seven values a reservation, reserve.lua's answer padded with 0
    assert_eq!(flat.len(), 7 * (ASKS.len() + 1));
    let mut answers: Vec<Value> = flat.chunks(7).map(|a| Value::Array(a.to_vec())).collect();
    let bad = answers.remove(bad_at);
    let Value::Array(bad) = bad else { panic!() };
    assert_eq!(bad[0], Value::Int(-9));
    assert!(format!("{:?}", bad[2]).contains("buyer must be"), "{bad:?}");
    let answers_grouped: Vec<Vec<Value>> = answers.iter().map(timeless).collect();
    for (i, (alone, grouped)) in answers_alone.iter().zip(&answers_grouped).enumerate() {
        assert_eq!(alone, grouped, "reservation {i} {:?}", ASKS[i]);
    }
    let codes: Vec<&Value> = answers_grouped.iter().map(|a| &a[0]).collect();
    for code in [1, 2, -2, 0, -1, -3, -4, -6] {
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

/// What the previous layout's reserve.lua wrote for a reservation it made: a record as a
/// hash (its tally without an epoch), an entry without `limit_epoch`, and the stock, sequence,
/// in-flight units and buyer's units it moved. Used to stand for reservations made before an
/// upgrade.
const PREVIOUS_RESERVE: &str = r#"
local product_id, qty, buyer, hold, event_id, limited = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5], ARGV[6]
local t = redis.call('TIME')
local now_s = t[1] .. string.sub(string.sub('000000', #t[2] + 1) .. t[2], 1, 3)
redis.call('DECRBY', KEYS[1], qty)
local seq_s = string.format('%d', redis.call('INCR', KEYS[3]))
redis.call('HINCRBY', KEYS[4], product_id, qty)
local state = hold > 0 and 'held' or 'queued'
redis.call('HSET', KEYS[5], 'state', state, 'product_id', product_id, 'qty', qty, 'seq', seq_s,
  'reserved_at', now_s, 'updated_at', now_s)
if buyer ~= '' then redis.call('HSET', KEYS[5], 'buyer', buyer) end
if limited == '1' then
  redis.call('HINCRBY', KEYS[8], product_id .. ':' .. buyer, qty)
  redis.call('HSET', KEYS[5], 'tally', qty)
end
if hold > 0 then
  local deadline = string.format('%d', tonumber(now_s) + hold)
  redis.call('HSET', KEYS[5], 'deadline', deadline)
  redis.call('ZADD', KEYS[6], deadline, event_id)
else
  local buyer_field = ''
  if buyer ~= '' then buyer_field = ',"buyer":"' .. buyer .. '"' end
  redis.call('LPUSH', KEYS[2], '{"event_id":"' .. event_id .. '","product_id":' .. product_id ..
    ',"qty":' .. qty .. ',"seq":' .. seq_s .. buyer_field .. ',"at":' .. now_s .. '}')
end
return seq_s
"#;

/// An upgrade in the middle of a sale: reservations made by the previous layout (hash
/// records, entries without `limit_epoch`, tallies of epoch 0) are replayed, confirmed,
/// cancelled, expired, applied and refunded by this one exactly as before, beside new ones;
/// every record ends as it should and the books are exact.
#[tokio::test]
async fn reservations_of_the_previous_layout_keep_working_through_an_upgrade() {
    let env = TestEnv::new().await;
    env.stock(1, 100).await;
    env.stock(2, 100).await;
    assert_eq!(env.run(&["stock", "limit", "2", "2"]).await.0, 0);
    let previous = redis::Script::new(PREVIOUS_RESERVE);
    let mut c = env.redis.clone();
    let old = |id: &'static str, product: i64, qty: i64, buyer: &'static str, hold_ms: u64| {
        let k = |s: String| env.key(&s);
        let mut invocation = previous.prepare_invoke();
        invocation
            .key(k(format!("stock:{product}")))
            .key(k("pending".into()))
            .key(k("seq".into()))
            .key(k("inflight".into()))
            .key(k(format!("r:{id}")))
            .key(k("holds".into()))
            .key(k("limits".into()))
            .key(k("bought".into()))
            .arg(product)
            .arg(qty)
            .arg(buyer)
            .arg(hold_ms)
            .arg(id)
            .arg(if product == 2 { "1" } else { "0" });
        let mut c = c.clone();
        async move { invocation.invoke_async::<String>(&mut c).await.unwrap() }
    };
    for i in 0..10 {
        old(["o0", "o1", "o2", "o3", "o4", "o5", "o6", "o7", "o8", "o9"][i], 1, 1, "", 0).await;
    }
    old("held-confirmed", 1, 2, "ann", 900_000).await;
    old("held-cancelled", 1, 2, "ann", 900_000).await;
    old("held-expired", 1, 3, "", 1_000).await;
    old("limited-refunded", 2, 2, "al", 0).await;
    old("limited-kept", 2, 2, "bo", 0).await;
    let mut kind: String = redis::cmd("TYPE").arg(env.key("r:o0")).query_async(&mut c).await.unwrap();
    assert_eq!(kind, "hash", "the previous layout");

    // the upgrade: this version meets them
    let replay = stockq::reserve_for(&env.queue, 1, 1, "o3", None).await.unwrap();
    assert!(matches!(replay, Reservation::Replayed { .. }), "{replay:?}");
    let used = stockq::reserve_for(&env.queue, 1, 2, "o3", None).await.unwrap();
    assert!(matches!(used, Reservation::IdUsed { .. }), "{used:?}");
    let limited = stockq::reserve_for(&env.queue, 2, 1, "al-more", Some("al")).await.unwrap();
    assert!(
        matches!(limited, Reservation::LimitReached { limit: 2, held: 2 }),
        "the old tally counts: {limited:?}"
    );
    let shards = env.shards();
    assert_eq!(stockq::confirm(&shards, "held-confirmed").await.unwrap(), stockq::Confirm::Queued);
    let cancelled = stockq::cancel(&shards, &env.ledger, "held-cancelled").await.unwrap();
    assert_eq!(cancelled, stockq::Cancel::Done { state: "cancelled".into(), changed: true });
    for i in 0..5 {
        let id = format!("new-{i}");
        assert!(matches!(
            stockq::reserve_for(&env.queue, 1, 1, &id, None).await.unwrap(),
            Reservation::Reserved { .. }
        ));
    }
    let status = stockq::status(&shards, &env.ledger, "o5").await.unwrap().expect("an old record is read");
    assert_eq!(status.state.as_str(), "queued");
    env.drain(100).await;
    let status = stockq::status(&shards, &env.ledger, "held-expired").await.unwrap().unwrap();
    env.wait_past(status.deadline.expect("a hold")).await;
    assert_eq!(env.janitor().recover().await.unwrap().expired, 1);
    // a refund of an old reservation gives its buyer's units back (its tally of epoch 0)
    let refunded = stockq::cancel(&shards, &env.ledger, "limited-refunded").await.unwrap();
    assert_eq!(refunded, stockq::Cancel::Done { state: "releasing".into(), changed: true });
    env.drain(100).await;
    let again = stockq::reserve_for(&env.queue, 2, 2, "al-again", Some("al")).await.unwrap();
    assert!(matches!(again, Reservation::Reserved { .. }), "{again:?}");
    let bo = stockq::reserve_for(&env.queue, 2, 1, "bo-more", Some("bo")).await.unwrap();
    assert!(matches!(bo, Reservation::LimitReached { .. }), "{bo:?}");
    env.drain(100).await;

    let expect = [
        ("o0", "applied"),
        ("o9", "applied"),
        ("held-confirmed", "applied"),
        ("held-cancelled", "cancelled"),
        ("held-expired", "expired"),
        ("limited-refunded", "released"),
        ("limited-kept", "applied"),
        ("new-4", "applied"),
        ("al-again", "applied"),
    ];
    for (id, state) in expect {
        let status = stockq::status(&shards, &env.ledger, id).await.unwrap().expect(id);
        assert_eq!(status.state.as_str(), state, "{id}");
    }
    kind = redis::cmd("TYPE").arg(env.key("r:o0")).query_async(&mut c).await.unwrap();
    assert_eq!(kind, "string", "a record is written back in this layout at its next change");
    env.assert_books_balance().await;
    // product 1: 10 + 2 confirmed + 5 new applied; product 2: bo's 2 and al's second 2
    assert_eq!((env.mysql_stock(1).await, env.redis_stock(1).await), (83, Some(83)));
    assert_eq!((env.mysql_stock(2).await, env.redis_stock(2).await), (96, Some(96)));
}

/// A sold-out product costs Redis nothing more: `serve` refuses further shoppers from what it
/// learned in the last 50 ms (for the ids it makes itself: a shopper's own id may be a retry,
/// which Redis must answer), and a unit that comes back is on sale again within 100 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sold_out_product_is_refused_without_redis_and_sold_again_when_a_unit_comes_back() {
    let redis = crate::faults::RedisServer::start().await;
    let env = TestEnv::with_redis(&redis.url(), |_| {}).await;
    env.stock(1, 5).await;
    let (mut serve, port) = env.serve(&[]).await;
    let reserve = || crate::helpers::http(port, "POST", "/reserve").json(r#"{"product_id": 1, "qty": 1}"#);
    let mut made = Vec::new();
    for _ in 0..5 {
        let answer = reserve().send().await;
        assert_eq!(answer.status, 201, "{answer:?}");
        made.push(answer.json()["event_id"].as_str().unwrap().to_string());
    }
    let mut c = env.redis.clone();
    let calls = |c: &mut redis::aio::MultiplexedConnection| {
        let mut c = c.clone();
        async move {
            let info: String = redis::cmd("INFO").arg("commandstats").query_async(&mut c).await.unwrap();
            info.lines()
                .filter(|l| l.starts_with("cmdstat_eval"))
                .filter_map(|l| l.split("calls=").nth(1)?.split(',').next()?.parse::<u64>().ok())
                .sum::<u64>()
        }
    };
    let before = calls(&mut c).await;
    const REFUSED: usize = 1_000;
    use futures::StreamExt;
    let answers: Vec<_> =
        futures::stream::iter(0..REFUSED).map(|_| reserve().send()).buffer_unordered(32).collect().await;
    let statuses: std::collections::BTreeSet<u16> = answers.iter().map(|a| a.status).collect();
    assert_eq!(statuses, [409].into(), "every one sold out");
    let scripts = calls(&mut c).await - before;
    assert!(scripts as f64 <= 0.05 * REFUSED as f64, "{scripts} script calls for {REFUSED} refused shoppers");

    // a unit comes back (a cancel in another process): on sale here within 100 ms
    let cancelled = stockq::cancel(&env.shards(), &env.ledger, &made[0]).await.unwrap();
    assert!(matches!(cancelled, stockq::Cancel::Done { changed: true, .. }));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let again = reserve().send().await;
    assert_eq!(again.status, 201, "the unit that came back is sold: {again:?}");
    assert_eq!(reserve().send().await.status, 409);
    crate::helpers::terminate(&mut serve).await;
    env.drain(10).await;
    env.assert_books_balance().await;
}
