//! One hot product spread over the buckets of three shards on the local Redis: a transfer cut
//! between its two steps, spreads and gathers during a sale, and a reservation's whole life
//! in a bucket that is not its product's own shard. The same on a Redis Cluster with kills
//! and a failover is in cluster.rs.

use std::time::Duration;

use futures::StreamExt;
use stockq::{Confirm, Request, Reservation, ReservationState, Shards, reserve_routed};

use crate::helpers::{TestEnv, terminate};

const SHARDS: u32 = 3;

async fn sharded() -> TestEnv {
    TestEnv::with(|s| {
        s.redis.shards = SHARDS;
        s.delivery.visibility_timeout = Duration::from_secs(2);
        s.janitor.interval = Duration::from_millis(200);
        s.janitor.check_interval = Duration::from_millis(500);
    })
    .await
}

/// `stockq stock spread <product> <k> --json`: each bucket's (shard, stock).
async fn spread(env: &TestEnv, product: i64, buckets: u16) -> Vec<(usize, i64)> {
    let (code, out, err) =
        env.run(&["stock", "spread", &product.to_string(), &buckets.to_string(), "--json"]).await;
    assert_eq!(code, 0, "spread {product} {buckets}: {err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    report["stocks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["shard"].as_u64().unwrap() as usize, b["stock"].as_i64().unwrap()))
        .collect()
}

fn shard_key(env: &TestEnv, shard: usize, suffix: &str) -> String {
    format!("{{{}:{shard}}}:{suffix}", env.name)
}

async fn bucket(env: &TestEnv, shard: usize, product: i64) -> i64 {
    let mut redis = env.redis.clone();
    let units: Option<i64> =
        redis::AsyncCommands::get(&mut redis, shard_key(env, shard, &format!("stock:{product}")))
            .await
            .unwrap();
    units.unwrap_or(0)
}

async fn books(env: &TestEnv, product: i64) -> stockq::ProductBooks {
    let report = stockq::check(&env.shards(), &env.ledger).await.unwrap();
    report.products.into_iter().find(|p| p.product_id == product).expect("the product is checked")
}

/// A transfer whose mover died after taking the units out of one bucket: the check counts
/// them on their way (no drift), the janitor gives them to the other bucket once, and the
/// second step repeated by hand gives nothing.
#[tokio::test]
async fn a_transfer_cut_between_its_steps_is_finished_once_by_the_janitor() {
    let env = sharded().await;
    env.stock(5, 90).await;
    let stocks = spread(&env, 5, 3).await;
    assert_eq!(stocks.iter().map(|(_, s)| *s).collect::<Vec<_>>(), [30, 30, 30]);
    let (from, to) = (stocks[0].0, stocks[1].0);

    let (code, script, err) = env.run(&["scripts", "transfer"]).await;
    assert_eq!(code, 0, "{err}");
    let mut redis = env.redis.clone();
    let taken: Vec<i64> = redis::cmd("EVAL")
        .arg(&script)
        .arg(3)
        .arg(shard_key(&env, from, "stock:5"))
        .arg(shard_key(&env, from, "seq"))
        .arg(shard_key(&env, from, "transfers"))
        .arg(&["out", "cut-1", "5", "10", "1", &to.to_string()])
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!((taken[0], taken[2]), (10, 20), "taken, left: {taken:?}");

    let cut = books(&env, 5).await;
    assert_eq!((cut.redis, cut.mysql, cut.in_transit, cut.delta), (Some(80), 90, 10, 0), "{cut:?}");
    let (code, out, err) = env.run(&["check"]).await;
    assert_eq!(code, 0, "{out}{err}");

    let mut janitor = env.spawn(&["janitor"]);
    env.eventually(Duration::from_secs(10), "the janitor finished the cut transfer", || async {
        let mut redis = env.redis.clone();
        let on_their_way: usize =
            redis::AsyncCommands::hlen(&mut redis, shard_key(&env, from, "transfers")).await.unwrap();
        on_their_way == 0
    })
    .await;
    assert_eq!(terminate(&mut janitor).await, 0);
    let mut redis = env.redis.clone();
    let received: Option<String> =
        redis::AsyncCommands::hget(&mut redis, shard_key(&env, to, "received"), "cut-1").await.unwrap();
    assert!(received.is_some_and(|r| r.starts_with("5|10|")), "given once, recorded by its id");
    // the janitor may even the buckets out afterwards: 90 units in all, wherever they are
    let total = stockq::total_stock(&env.shards(), 5).await.unwrap();
    assert_eq!(total, Some(90));
    let before_again = bucket(&env, to, 5).await;

    // the second step again, as a janitor that died before marking it arrived would: nothing
    let again: Vec<i64> = redis::cmd("EVAL")
        .arg(&script)
        .arg(3)
        .arg(shard_key(&env, to, "stock:5"))
        .arg(shard_key(&env, to, "seq"))
        .arg(shard_key(&env, to, "received"))
        .arg(&["in", "cut-1", "5", "10", &from.to_string(), &taken[1].to_string()])
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(again[0], 0, "given before");
    assert_eq!(bucket(&env, to, 5).await, before_again);
    let after = books(&env, 5).await;
    assert_eq!((after.redis, after.in_transit, after.delta), (Some(90), 0, 0), "{after:?}");
    assert_eq!(stockq::total_stock(&env.shards(), 5).await.unwrap(), Some(90));
}

/// Demand of 30 more than the supply comes 16 at a time while the operator spreads the
/// product over 3 buckets, adds stock, spreads it over 2, gathers it into 1 and spreads it again: every
/// unit is sold (a refused shopper is one a unit on its way escaped), none twice, and the
/// check is clean throughout.
#[tokio::test]
async fn a_product_spread_and_gathered_during_a_sale_sells_every_unit() {
    const PRODUCT: i64 = 4;
    let env = sharded().await;
    env.stock(PRODUCT, 1500).await;
    let mut janitor = env.spawn(&["janitor"]);
    let mut worker = env.spawn(&["worker", "--batch", "100"]);
    let shards = Shards::connect(&env.settings).await.unwrap();
    let supply = 1500 + 100;
    let demand = supply + 30;

    let sale = {
        let shards = shards.clone();
        tokio::spawn(async move {
            let answers: Vec<_> = futures::stream::iter(0..demand)
                .map(|i| {
                    let shards = shards.clone();
                    async move {
                        let event_id = stockq::new_event_id();
                        let buyer = format!("b{}", i % 400);
                        let request = Request {
                            product_id: PRODUCT,
                            qty: 1,
                            event_id: &event_id,
                            buyer: Some(&buyer),
                            hold: None,
                        };
                        // paced so that the sale outlasts the operator's changes
                        tokio::time::sleep(Duration::from_millis(rand::random_range(0..120))).await;
                        reserve_routed(&shards, request).await
                    }
                })
                .buffer_unordered(16)
                .collect()
                .await;
            answers
        })
    };
    let mut checks = 0;
    for step in ["3", "add", "2", "1", "3"] {
        if step == "add" {
            let (code, _, err) = env.run(&["stock", "add", &PRODUCT.to_string(), "100"]).await;
            assert_eq!(code, 0, "{err}");
        } else {
            let stocks = spread(&env, PRODUCT, step.parse().unwrap()).await;
            assert_eq!(stocks.len(), step.parse::<usize>().unwrap());
        }
        let report = stockq::check(&shards, &env.ledger).await.unwrap();
        let drifts: Vec<_> = report.drifts().collect();
        assert!(drifts.is_empty(), "after {step}: {drifts:?}");
        checks += 1;
    }
    assert!(!sale.is_finished(), "the sale ended before the operator's changes: pace it slower");
    let answers = sale.await.unwrap();
    let reserved = answers.iter().filter(|a| matches!(a, Ok(Reservation::Reserved { .. }))).count() as i64;
    let sold_out = answers.iter().filter(|a| matches!(a, Ok(Reservation::SoldOut { .. }))).count() as i64;
    assert_eq!(
        reserved + sold_out,
        demand,
        "other answers: {:?}",
        answers.iter().find(|a| !matches!(a, Ok(Reservation::Reserved { .. } | Reservation::SoldOut { .. })))
    );
    // "sold out" only once every unit was taken: each refusal saw none anywhere
    let refused_with_units: Vec<i64> = answers
        .iter()
        .filter_map(|a| match a {
            Ok(Reservation::SoldOut { available }) if *available > 0 => Some(*available),
            _ => None,
        })
        .collect();
    assert!(refused_with_units.is_empty(), "refused while units were left: {refused_with_units:?}");
    assert_eq!(reserved, supply, "{sold_out} refused");
    env.eventually(Duration::from_secs(30), "the sale applied and the stores agree", || async {
        env.applied_units(PRODUCT).await == supply
            && stockq::check(&shards, &env.ledger).await.is_ok_and(|r| r.is_consistent())
    })
    .await;
    assert!(checks == 5);
    assert_eq!(stockq::total_stock(&shards, PRODUCT).await.unwrap(), Some(0));
    assert_eq!(env.mysql_stock(PRODUCT).await, 0);
    assert_eq!(terminate(&mut worker).await, 0);
    assert_eq!(terminate(&mut janitor).await, 0);
}

/// A reservation in a bucket on another shard than its product's: replayed there, held,
/// confirmed, cancelled and looked up as any other, its units given back to that bucket once.
#[tokio::test]
async fn a_reservation_in_a_bucket_lives_its_whole_life_there() {
    const PRODUCT: i64 = 9;
    let env = sharded().await;
    env.stock(PRODUCT, 30).await;
    let stocks = spread(&env, PRODUCT, 3).await;
    let home = stocks[0].0;
    let shards = Shards::connect(&env.settings).await.unwrap();
    // buyers routed to a bucket away from home
    let mut away = Vec::new();
    for i in 0.. {
        let buyer = format!("away-{i}");
        if shards.route(PRODUCT, Some(&buyer), "x").await.keys().prefix()
            != shards.for_product(PRODUCT).keys().prefix()
        {
            away.push(buyer);
            if away.len() == 2 {
                break;
            }
        }
    }
    let hold = Some(Duration::from_secs(60));
    let request = |event_id: &'static str, buyer: &'static str| Request {
        product_id: PRODUCT,
        qty: 2,
        event_id,
        buyer: Some(buyer),
        hold,
    };
    let (a, b): (&'static str, &'static str) = (away[0].clone().leak(), away[1].clone().leak());
    let first = reserve_routed(&shards, request("held-1", a)).await.unwrap();
    assert!(matches!(first, Reservation::Reserved { deadline: Some(_), .. }), "{first:?}");
    let replay = reserve_routed(&shards, request("held-1", a)).await.unwrap();
    assert!(matches!(replay, Reservation::Replayed { .. }), "{replay:?}");
    assert!(matches!(
        reserve_routed(&shards, request("held-2", b)).await.unwrap(),
        Reservation::Reserved { .. }
    ));
    let shard_of_a = shards.route(PRODUCT, Some(a), "held-1").await.shard().unwrap() as usize;
    assert_ne!(shard_of_a, home);
    assert_eq!(
        bucket(&env, shard_of_a, PRODUCT).await,
        10 - 2
            - if shards.route(PRODUCT, Some(b), "").await.shard() == Some(shard_of_a as u16) { 2 } else { 0 }
    );

    let status = stockq::status(&shards, &env.ledger, "held-1").await.unwrap().unwrap();
    assert_eq!(
        (status.state, status.product_id, status.buyer.as_deref()),
        (ReservationState::Held, PRODUCT, Some(a))
    );
    assert!(matches!(stockq::confirm(&shards, "held-1").await.unwrap(), Confirm::Queued));
    env.drain(100).await;
    assert_eq!(env.applied_units(PRODUCT).await, 2);
    let before = bucket(&env, shard_of_a, PRODUCT).await;
    // an applied reservation cancelled: released in MySQL, its units back in its bucket once
    let cancelled = stockq::cancel(&shards, &env.ledger, "held-1").await.unwrap();
    assert!(matches!(cancelled, stockq::Cancel::Done { changed: true, .. }), "{cancelled:?}");
    env.drain(100).await;
    assert_eq!(bucket(&env, shard_of_a, PRODUCT).await, before + 2);
    assert!(matches!(
        stockq::cancel(&shards, &env.ledger, "held-1").await.unwrap(),
        stockq::Cancel::Done { changed: false, .. }
    ));
    // a held one cancelled: given straight back
    assert!(matches!(
        stockq::cancel(&shards, &env.ledger, "held-2").await.unwrap(),
        stockq::Cancel::Done { changed: true, .. }
    ));
    assert_eq!(stockq::total_stock(&shards, PRODUCT).await.unwrap(), Some(30));
    let outcomes = shards.all()[shard_of_a].latest_outcomes(10).await.unwrap();
    assert!(!outcomes.is_empty(), "the bucket's shard streams the outcomes of its reservations");
    let after = books(&env, PRODUCT).await;
    assert_eq!((after.redis, after.mysql, after.in_flight, after.delta), (Some(30), 30, 0, 0), "{after:?}");
}
