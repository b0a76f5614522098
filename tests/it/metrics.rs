//! `/metrics` as Prometheus reads it (docs/operations.md, "Metrics"): every counter there from the first
//! scrape, failed reservations counted, no stale queue figures while Redis is down, Redis
//! reconnections counted only after an error, the process's own figures, and the whole text
//! accepted by Prometheus's own checker, `promtool check metrics`.
//!
//! `serve` and a worker run as real processes on a Redis of the test's own, which is killed
//! and restarted in the middle.

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::faults::RedisServer;
use crate::helpers::{TestEnv, free_port, http, outside_tool, send_signal, series, terminate};

/// Checks `text` with `promtool check metrics` (its parser and its lint).
fn promtool_accepts(text: &str) {
    use std::io::Write;
    let mut check = std::process::Command::new(outside_tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    check.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics refused the text:\n{}{}\n--- the text ---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A stockq process serving `/metrics` on its own port.
struct Scraped {
    child: tokio::process::Child,
    port: u16,
}

impl Scraped {
    async fn start(env: &TestEnv, args: &[&str]) -> Scraped {
        let port = free_port();
        let mut cmd = env.command(args);
        cmd.env("PORT", port.to_string()).env("STOCKQ_BIND", "127.0.0.1").stdout(Stdio::null());
        let child = cmd.spawn().expect("spawn stockq");
        let scraped = Scraped { child, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        while http(port, "GET", "/metrics").try_send().await.is_none() {
            assert!(Instant::now() < deadline, "stockq {args:?} served no /metrics within 20s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        scraped
    }

    async fn metrics(&self) -> String {
        let answer = http(self.port, "GET", "/metrics").send().await;
        assert_eq!(answer.status, 200, "{}", answer.text());
        answer.text()
    }

    /// Scrapes until `ok` holds for the text (bounded); returns that text.
    async fn until(&self, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = self.metrics().await;
            if ok(&text) {
                return text;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}; last scrape:\n{text}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn reserve(&self) -> u16 {
        http(self.port, "POST", "/reserve").json(r#"{"product_id": 1, "qty": 1}"#).send().await.status
    }
}

#[tokio::test]
async fn metrics_stay_complete_and_honest_through_a_redis_outage() {
    let mut redis = RedisServer::start().await;
    let env = TestEnv::with_redis(&redis.url(), |_| {}).await;
    env.stock(1, 100).await;
    let mut serve = Scraped::start(&env, &["serve"]).await;

    // every counter and every label value from the first scrape, the build, the process
    let first = serve.metrics().await;
    for name in [
        r#"stockq_reservations_total{result="reserved"}"#,
        r#"stockq_reservations_total{result="sold_out"}"#,
        r#"stockq_reservations_total{result="error"}"#,
        r#"stockq_store_errors_total{store="redis"}"#,
        r#"stockq_store_errors_total{store="mysql"}"#,
        r#"stockq_checks_total{result="drift"}"#,
        r#"stockq_checks_total{result="error"}"#,
        "stockq_events_applied_total",
        "stockq_events_dead_lettered_total",
        "stockq_redis_reconnects_total",
    ] {
        assert_eq!(series(&first, name), Some(0.0), "{name} at 0 from the start:\n{first}");
    }
    let version = format!(r#"stockq_build_info{{version="{}"}}"#, env!("CARGO_PKG_VERSION"));
    assert_eq!(series(&first, &version), Some(1.0), "{first}");
    assert!(series(&first, "process_resident_memory_bytes").is_some_and(|rss| rss > 1e6), "{first}");
    assert!(series(&first, "process_open_fds").is_some_and(|fds| fds > 2.0), "{first}");
    assert!(series(&first, "process_cpu_seconds_total").is_some_and(|cpu| cpu >= 0.0), "{first}");
    let started = series(&first, "process_start_time_seconds").expect("start time");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    assert!((now - 120.0..=now + 1.0).contains(&started), "started at {started}, now {now}");
    promtool_accepts(&first);

    // two reservations wait for a worker: the queue gauges and how long the oldest waited
    assert_eq!(serve.reserve().await, 201);
    assert_eq!(serve.reserve().await, 201);
    let waiting = serve
        .until("two pending, the oldest waiting", |t| {
            series(t, "stockq_queue_pending") == Some(2.0)
                && series(t, "stockq_oldest_pending_age_seconds").is_some_and(|age| age > 0.0)
        })
        .await;
    assert_eq!(series(&waiting, "stockq_redis_up"), Some(1.0));
    assert_eq!(series(&waiting, "stockq_claim_overdue_seconds"), Some(0.0));
    assert_eq!(series(&waiting, r#"stockq_reservations_total{result="reserved"}"#), Some(2.0));
    promtool_accepts(&waiting);

    // a fresh worker has opened its connections, and reconnected none
    let mut worker = Scraped::start(&env, &["worker"]).await;
    let working =
        worker.until("both events applied", |t| series(t, "stockq_events_applied_total") == Some(2.0)).await;
    assert_eq!(series(&working, "stockq_redis_reconnects_total"), Some(0.0), "{working}");
    promtool_accepts(&working);

    // Redis goes away: failed reservations are counted, the queue figures are not kept
    redis.kill();
    for _ in 0..3 {
        assert_eq!(serve.reserve().await, 503);
    }
    let down = serve
        .until("the failures counted and the queue gauges unknown", |t| {
            series(t, r#"stockq_reservations_total{result="error"}"#) == Some(3.0)
                && series(t, "stockq_redis_up") == Some(0.0)
        })
        .await;
    assert!(series(&down, r#"stockq_store_errors_total{store="redis"}"#).is_some_and(|n| n >= 3.0), "{down}");
    for gauge in [
        "stockq_queue_pending",
        "stockq_queue_processing",
        "stockq_queue_dead",
        "stockq_oldest_pending_age_seconds",
        "stockq_claim_overdue_seconds",
        "stockq_live_workers",
    ] {
        assert!(series(&down, gauge).is_some_and(f64::is_nan), "{gauge} while Redis is down:\n{down}");
    }
    promtool_accepts(&down);

    // back: the worker's waits reconnected, and the gauges read again
    redis.restart().await;
    worker
        .until("the worker's reconnections", |t| {
            series(t, "stockq_redis_reconnects_total").is_some_and(|n| n >= 1.0)
        })
        .await;
    serve
        .until("the queue gauges back", |t| {
            series(t, "stockq_redis_up") == Some(1.0) && series(t, "stockq_queue_pending") == Some(0.0)
        })
        .await;
    assert_eq!(terminate(&mut worker.child).await, 0);
    assert_eq!(terminate(&mut serve.child).await, 0);
}

/// Queue-wide gauges are exported by one process of the deployment at a time (the holder of
/// a lease in Redis), so that `sum()` over processes is the queue's figure and an alert on
/// one fires once; when that process dies, another takes over within the lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_gauges_come_from_one_process_and_another_takes_over() {
    let env = TestEnv::new().await;
    env.stock(1, 100).await;
    let processes = [
        Scraped::start(&env, &["serve"]).await,
        Scraped::start(&env, &["janitor"]).await,
        Scraped::start(&env, &["worker"]).await,
    ];
    let reporters =
        |texts: &[String]| texts.iter().filter(|t| series(t, "stockq_queue_pending").is_some()).count();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut texts = Vec::new();
    loop {
        texts.clear();
        for p in &processes {
            texts.push(p.metrics().await);
        }
        if reporters(&texts) == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "not exactly one reporter:\n{texts:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for text in &texts {
        // per-process figures stay with every process
        assert_eq!(series(text, "stockq_redis_up"), Some(1.0), "{text}");
        promtool_accepts(text);
    }
    let reporter = texts.iter().position(|t| series(t, "stockq_queue_pending").is_some()).unwrap();
    let mut processes = processes.into_iter().collect::<Vec<_>>();
    let mut gone = processes.remove(reporter);
    send_signal(gone.child.id().unwrap(), "KILL");
    let _ = gone.child.wait().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut texts = Vec::new();
        for p in &processes {
            texts.push(p.metrics().await);
        }
        if reporters(&texts) == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "no process took the gauges over:\n{texts:#?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
