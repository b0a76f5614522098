//! A sharded queue on a local six-node Redis Cluster (three masters, three replicas), with a
//! manual failover of a master in the middle of the run.

use std::time::{Duration, Instant};

use stockq::Shards;
use stockq::{Reservation, new_event_id, reserve};

use crate::helpers::{TestEnv, terminate};

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
