//! A sharded queue on a local six-node Redis Cluster (three masters, three replicas), with a
//! manual failover of a master in the middle of the run.

use std::time::{Duration, Instant};

use stockq::Shards;
use stockq::{Reservation, new_event_id, reserve};

use crate::helpers::{TestEnv, send_signal, terminate};

const SHARDS: u32 = 3;
const PRODUCTS: i64 = 12;
const STOCK: i64 = 10_000;

/// A cluster started by scripts/cluster.sh, stopped on drop.
struct Cluster {
    base: u16,
    url: String,
}

impl Cluster {
    fn start() -> Cluster {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/cluster.sh");
        for _ in 0..5 {
            // ports base..base+5 and their bus ports base+10000..: all free below 55535
            let base = 21000 + (rand::random::<u16>() % 3000) * 10;
            let out = std::process::Command::new("bash")
                .args([script, "start", &base.to_string()])
                .output()
                .unwrap();
            let url = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if out.status.success() && url.starts_with("redis://") {
                return Cluster { base, url };
            }
            let _ = std::process::Command::new("bash").args([script, "stop", &base.to_string()]).output();
        }
        panic!("could not start a local Redis Cluster with scripts/cluster.sh");
    }

    fn cli(&self, port: u16, args: &[&str]) -> String {
        let out = std::process::Command::new("redis-cli")
            .arg("-p")
            .arg(port.to_string())
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The replica of the master that serves `key`'s slot.
    fn replica_of_master_for(&self, key: &str) -> (u16, u16) {
        let slot: u16 = self.cli(self.base, &["CLUSTER", "KEYSLOT", key]).trim().parse().unwrap();
        let nodes = self.cli(self.base, &["CLUSTER", "NODES"]);
        let port_of = |addr: &str| -> u16 { addr.split(['@', ':']).nth(1).unwrap().parse().unwrap() };
        let master = nodes
            .lines()
            .find(|l| {
                l.contains("master")
                    && l.split_whitespace().skip(8).any(|range| {
                        let mut ends = range.split('-').map(|n| n.parse::<u16>().unwrap_or(u16::MAX));
                        let lo = ends.next().unwrap();
                        let hi = ends.next().unwrap_or(lo);
                        (lo..=hi).contains(&slot)
                    })
            })
            .expect("a master for the slot");
        let master_id = master.split_whitespace().next().unwrap();
        let replica = nodes
            .lines()
            .find(|l| l.split_whitespace().nth(3) == Some(master_id))
            .expect("a replica of that master");
        (
            port_of(master.split_whitespace().nth(1).unwrap()),
            port_of(replica.split_whitespace().nth(1).unwrap()),
        )
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/cluster.sh");
        let _ = std::process::Command::new("bash").args([script, "stop", &self.base.to_string()]).output();
    }
}

async fn drained(shards: &Shards) -> bool {
    for queue in shards.all() {
        match queue.depths().await {
            Ok(d) if d.pending == 0 && d.processing == 0 => {}
            _ => return false,
        }
    }
    true
}

#[tokio::test]
async fn sharded_queue_on_a_cluster_survives_a_master_failover() {
    let cluster = Cluster::start();
    let env = TestEnv::with_redis(&cluster.url, |s| {
        s.redis.shards = SHARDS;
        s.delivery.visibility_timeout = Duration::from_secs(1);
        s.janitor.interval = Duration::from_millis(200);
        s.janitor.check_interval = Duration::from_millis(500);
    })
    .await;
    let shards = Shards::connect(&env.settings).await.unwrap();
    assert_eq!(shards.all().len(), SHARDS as usize);
    for product in 1..=PRODUCTS {
        let (code, _, err) = env.run(&["stock", "set", &product.to_string(), &STOCK.to_string()]).await;
        assert_eq!(code, 0, "{err}");
    }
    let mut janitor = env.spawn(&["janitor"]);
    let mut workers = vec![env.spawn(&["worker", "--batch", "50"]), env.spawn(&["worker", "--batch", "50"])];

    // the master that holds shard 1 fails over to its replica while reservations flow
    let (old_master, replica) = cluster.replica_of_master_for(&format!("{{{}:1}}:pending", env.name));
    let mut reserved = 0u64;
    let mut failed = 0u64;
    let mut failed_over = false;
    let started = Instant::now();
    for i in 0..6000u64 {
        if i == 2000 {
            assert!(cluster.cli(replica, &["CLUSTER", "FAILOVER"]).contains("OK"));
            failed_over = true;
        }
        let product = 1 + (i as i64 % PRODUCTS);
        match reserve(shards.for_product(product), product, 1, &new_event_id()).await {
            Ok(Reservation::Reserved { .. }) => reserved += 1,
            Ok(other) => panic!("unexpected answer {other:?}"),
            // a reservation refused mid-failover is the shopper's to retry; the books below
            // are checked against the stores, not against this count
            Err(_) => failed += 1,
        }
        if i % 500 == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert!(failed_over);
    env.eventually(Duration::from_secs(20), "the replica took over", || async {
        cluster.cli(replica, &["ROLE"]).starts_with("master")
            && cluster.cli(old_master, &["ROLE"]).starts_with("slave")
    })
    .await;
    assert!(
        reserved >= 5000,
        "only {reserved} of 6000 reserved ({failed} failed) in {:?}",
        started.elapsed()
    );

    env.eventually(Duration::from_secs(60), "every shard drained and settled", || async {
        drained(&shards).await && stockq::check(&shards, &env.ledger).await.is_ok_and(|r| r.is_consistent())
    })
    .await;

    // exact books: every unit Redis gave out was deducted once in MySQL, on every product
    let report = stockq::check(&shards, &env.ledger).await.unwrap();
    assert_eq!(report.products.len(), PRODUCTS as usize);
    let mut applied_total = 0;
    for p in &report.products {
        let applied = env.applied_units(p.product_id).await;
        applied_total += applied;
        assert_eq!(p.mysql, STOCK - applied, "product {}", p.product_id);
        assert_eq!(p.redis, Some(p.mysql), "product {}", p.product_id);
        assert_eq!(p.in_flight, 0);
    }
    assert!(applied_total as u64 >= reserved, "applied {applied_total} < reserved {reserved}");
    assert_eq!(env.log_counts().await, (applied_total, 0));
    for queue in shards.all() {
        let d = queue.depths().await.unwrap();
        assert_eq!(d.dead, 0, "{}", queue.keys().prefix());
        assert!(
            d.counters.get("applied").copied().unwrap_or(0) > 0,
            "shard {} got no work",
            queue.keys().prefix()
        );
    }
    let (code, out, err) = env.run(&["check"]).await;
    assert_eq!(code, 0, "{out}{err}");

    for worker in &mut workers {
        assert_eq!(terminate(worker).await, 0, "a worker did not survive the failover");
    }
    assert_eq!(terminate(&mut janitor).await, 0);

    // the reset of demo and bench finds each shard's records on the node that holds its slot
    for product in 1..=PRODUCTS {
        let answer = reserve(shards.for_product(product), product, 1, &format!("reset-{product}")).await;
        assert!(matches!(answer, Ok(Reservation::Reserved { .. })), "{answer:?}");
    }
    let products: Vec<i64> = (1..=PRODUCTS).collect();
    for queue in shards.all() {
        queue.reset(&products).await.unwrap();
    }
    for product in 1..=PRODUCTS {
        let queue = shards.for_product(product);
        assert_eq!(queue.record(&format!("reset-{product}")).await.unwrap(), None, "product {product}");
        assert!(queue.latest_outcomes(1).await.unwrap().is_empty());
    }
}

/// Transfers still on their way out of any shard (`{q:i}:transfers`).
async fn transfers_on_their_way(cluster: &Cluster, env: &TestEnv) -> usize {
    (0..SHARDS)
        .map(|i| {
            let key = format!("{{{}:{i}}}:transfers", env.name);
            cluster.cli(cluster.base, &["-c", "HLEN", &key]).trim().parse::<usize>().unwrap_or(usize::MAX)
        })
        .sum()
}

/// One hot product of N units spread over the three masters, 2N reservations from 1,200
/// buyers under a limit of 4, 32 at a time; a janitor and a worker SIGKILLed during the sale,
/// and the master of one bucket failed over to its replica. Exactly N are applied, every
/// bucket ends empty, no buyer holds more than 4, and the check is clean during and after.
#[tokio::test]
async fn one_hot_product_spread_over_three_masters_sells_exactly_its_stock() {
    use futures::StreamExt;
    use stockq::{Request, reserve_routed};

    const PRODUCT: i64 = 7;
    const N: i64 = 3000;
    const LIMIT: i64 = 4;
    const BUYERS: usize = 1200;
    let cluster = Cluster::start();
    let env = TestEnv::with_redis(&cluster.url, |s| {
        s.redis.shards = SHARDS;
        s.delivery.visibility_timeout = Duration::from_secs(1);
        s.janitor.interval = Duration::from_millis(200);
        s.janitor.check_interval = Duration::from_millis(500);
    })
    .await;
    let shards = Shards::connect(&env.settings).await.unwrap();
    for (product, stock) in [(PRODUCT, N), (8, 10)] {
        let (code, _, err) = env.run(&["stock", "set", &product.to_string(), &stock.to_string()]).await;
        assert_eq!(code, 0, "{err}");
    }

    // bad input changes nothing
    for (args, why) in [
        (&["stock", "spread", "7", "4"][..], "1 to 3 buckets"),
        (&["stock", "spread", "7", "0"][..], "0 is not in 1.."),
        (&["stock", "spread", "99", "2"][..], "unknown product 99"),
        (&["stock", "spread", "8", "1"][..], "product 8 is not spread"),
    ] {
        let (code, out, err) = env.run(args).await;
        assert_eq!(code, 2, "{args:?}: {out}{err}");
        assert!(err.contains(why) && err.lines().count() == 1, "{args:?}: {err}");
    }

    let (code, out, err) = env.run(&["stock", "spread", "7", "3", "--json"]).await;
    assert_eq!(code, 0, "{err}");
    let spread: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(spread["buckets"], 3);
    let stocks: Vec<i64> =
        spread["stocks"].as_array().unwrap().iter().map(|b| b["stock"].as_i64().unwrap()).collect();
    assert_eq!(stocks.iter().sum::<i64>(), N, "{spread}");
    assert!(stocks.iter().all(|s| *s >= N / 3 - 1), "evened out: {spread}");
    let (code, _, err) = env.run(&["stock", "limit", "7", &LIMIT.to_string()]).await;
    assert_eq!(code, 0, "{err}");
    // a buyer's tally is in one bucket: changing the buckets under a limit is refused
    let (code, _, err) = env.run(&["stock", "spread", "7", "2"]).await;
    assert_eq!(code, 2);
    assert!(err.contains("buyer limit"), "{err}");

    let mut janitor = env.spawn(&["janitor"]);
    let mut workers = vec![env.spawn(&["worker", "--batch", "50"]), env.spawn(&["worker", "--batch", "50"])];
    let (old_master, replica) = cluster.replica_of_master_for(&format!("{{{}:1}}:pending", env.name));

    // 5 attempts a buyer; the first 30 buyers come first, all five at once: the limit refuses
    // their fifth in whichever bucket they were routed to
    let mut attempts: Vec<usize> = (0..BUYERS).flat_map(|b| [b; 5]).collect();
    {
        use rand::seq::SliceRandom;
        attempts[150..].shuffle(&mut rand::rng());
    }
    let (mut reserved, mut limited, mut sold_out, mut failed) = (0i64, 0, 0, 0);
    let mut clean_checks = 0;
    for (chunk, buyers) in attempts.chunks(250).enumerate() {
        match chunk {
            2 => {
                send_signal(janitor.id().unwrap(), "KILL");
                let _ = janitor.wait().await;
                janitor = env.spawn(&["janitor"]);
            }
            4 => {
                send_signal(workers[0].id().unwrap(), "KILL");
                let _ = workers[0].wait().await;
                workers[0] = env.spawn(&["worker", "--batch", "50"]);
            }
            6 => assert!(cluster.cli(replica, &["CLUSTER", "FAILOVER"]).contains("OK")),
            // half the demand has come: a lull until the transfers a SIGKILL cut are finished,
            // so that the second half finds every unit in a bucket
            12 => {
                env.eventually(Duration::from_secs(20), "no transfer on its way", || async {
                    transfers_on_their_way(&cluster, &env).await == 0
                })
                .await
            }
            _ => {}
        }
        let mut answers = futures::stream::iter(buyers.iter().map(|b| format!("buyer-{b}")))
            .map(|buyer| {
                let shards = &shards;
                async move {
                    let event_id = stockq::new_event_id();
                    let request = Request {
                        product_id: PRODUCT,
                        qty: 1,
                        event_id: &event_id,
                        buyer: Some(&buyer),
                        hold: None,
                    };
                    reserve_routed(shards, request).await
                }
            })
            .buffer_unordered(32);
        while let Some(answer) = answers.next().await {
            match answer {
                Ok(Reservation::Reserved { .. }) => reserved += 1,
                Ok(Reservation::LimitReached { .. }) => limited += 1,
                Ok(Reservation::SoldOut { .. }) => sold_out += 1,
                Ok(other) => panic!("unexpected answer {other:?}"),
                // refused mid-failover: the shopper's to retry; the books are checked below
                Err(_) => failed += 1,
            }
        }
        drop(answers);
        // the check under load: it may fail while a master fails over, never report a drift
        if let Ok(report) = stockq::check(&shards, &env.ledger).await {
            let drifts: Vec<_> = report.drifts().collect();
            assert!(drifts.is_empty(), "chunk {chunk}: drift under load: {drifts:?}");
            clean_checks += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(clean_checks >= 15, "only {clean_checks} checks ran under load");
    assert!(limited >= 30, "the limit refused only {limited}");
    assert!(sold_out > 0 && reserved <= N, "reserved {reserved}, sold out {sold_out}");
    env.eventually(Duration::from_secs(20), "the replica took over", || async {
        cluster.cli(replica, &["ROLE"]).starts_with("master")
            && cluster.cli(old_master, &["ROLE"]).starts_with("slave")
    })
    .await;

    env.eventually(Duration::from_secs(60), "every shard drained and settled", || async {
        drained(&shards).await && stockq::check(&shards, &env.ledger).await.is_ok_and(|r| r.is_consistent())
    })
    .await;
    // exactly N sold: none oversold, none stranded in a bucket
    assert_eq!(env.applied_units(PRODUCT).await, N, "reserved {reserved}, failed {failed}");
    assert_eq!(stockq::total_stock(&shards, PRODUCT).await.unwrap(), Some(0));
    let report = stockq::check(&shards, &env.ledger).await.unwrap();
    let books = report.products.iter().find(|p| p.product_id == PRODUCT).unwrap();
    assert_eq!((books.mysql, books.redis, books.in_flight, books.in_transit), (0, Some(0), 0, 0));
    assert_eq!(books.buckets.iter().map(|b| (b.shard, b.stock)).collect::<Vec<_>>().len(), 3);
    assert!(books.buckets.iter().all(|b| b.stock == 0), "{books:?}");
    let per_buyer: Vec<(Option<String>, i64)> = sqlx::query_as(
        "SELECT buyer, CAST(SUM(qty) AS SIGNED) FROM stock_log WHERE product_id = ? AND status = 'applied' \
         GROUP BY buyer",
    )
    .bind(PRODUCT)
    .fetch_all(&env.mysql)
    .await
    .unwrap();
    assert!(per_buyer.iter().all(|(b, units)| b.is_some() && *units <= LIMIT), "{per_buyer:?}");
    assert!(per_buyer.iter().map(|(_, u)| u).sum::<i64>() == N);
    for queue in shards.all() {
        let d = queue.depths().await.unwrap();
        assert_eq!(d.dead, 0, "{}", queue.keys().prefix());
        assert!(
            d.counters.get("applied").copied().unwrap_or(0) > 0,
            "bucket {} sold nothing",
            queue.keys().prefix()
        );
    }
    let (code, out, err) = env.run(&["check"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = env.run(&["stats"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("spread: shard"), "{out}");
    for worker in &mut workers {
        assert_eq!(terminate(worker).await, 0, "a worker did not survive");
    }
    assert_eq!(terminate(&mut janitor).await, 0);
}
