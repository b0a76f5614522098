//! The foundation: reservations reach MySQL exactly once through real worker processes,
//! sold-out answers, redelivery after a crash between commit and acknowledgement, drift
//! between the stores, a graceful stop in the middle of a backlog, and bad input at the
//! command line.
//!
//! Every test runs against the real Redis and MariaDB in its own [`TestEnv`]; waits are
//! polls with a bound, never a sleep that hopes.

use std::process::Stdio;
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use stockq::Decision;
use stockq::Event;
use stockq::{ProduceOptions, produce};
use stockq::{Reservation, new_event_id, reserve};
use tokio::io::AsyncReadExt;
use tokio::task::JoinHandle;

use crate::helpers::TestEnv;

/// A spawned stockq process whose stderr is read in the background (so a chatty process
/// never blocks on a full pipe) and shown when an assertion about it fails.
struct Proc {
    pid: u32,
    child: tokio::process::Child,
    stderr: JoinHandle<String>,
}

impl Proc {
    fn spawn(env: &TestEnv, args: &[&str]) -> Proc {
        let mut child =
            env.command(args).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("spawn stockq");
        let pid = child.id().expect("a running child has a pid");
        let mut pipe = child.stderr.take().expect("piped stderr");
        let stderr = tokio::spawn(async move {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf).await;
            String::from_utf8_lossy(&buf).into_owned()
        });
        Proc { pid, child, stderr }
    }

    /// Sends SIGTERM (through kill(1): the tests do not link libc).
    async fn sigterm(&self) {
        let status = tokio::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.pid.to_string())
            .status()
            .await
            .expect("run kill");
        assert!(status.success(), "kill -TERM {} failed", self.pid);
    }

    /// Waits (bounded) for the process to exit: (exit status, -1 if killed by a signal; stderr).
    async fn wait(mut self, within: Duration) -> (i32, String) {
        let status = tokio::time::timeout(within, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("stockq (pid {}) did not exit within {within:?}", self.pid))
            .expect("wait for stockq");
        let stderr = self.stderr.await.unwrap_or_default();
        (status.code().unwrap_or(-1), stderr)
    }
}

/// Runs the binary with extra environment variables: (status, stdout, stderr, how long it took).
async fn run_with(
    env: &TestEnv,
    args: &[&str],
    extra_env: &[(&str, &str)],
    within: Duration,
) -> (i32, String, String, Duration) {
    let mut cmd = env.command(args);
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let started = Instant::now();
    let out = tokio::time::timeout(within, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("stockq {args:?} did not finish within {within:?}"))
        .expect("spawn stockq");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        started.elapsed(),
    )
}

/// Asserts that stderr is exactly one line that says why, with no usage block or panic.
fn assert_one_line(what: &str, stderr: &str) {
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{what}: expected exactly one line on stderr, got {stderr:?}");
    let line = lines[0];
    assert!(line.starts_with("stockq: ") && line.len() > "stockq: ".len() + 5, "{what}: {line:?}");
    for bad in ["Usage:", "panicked", "backtrace", "RUST_BACKTRACE"] {
        assert!(!stderr.contains(bad), "{what}: stderr contains {bad:?}: {stderr:?}");
    }
}

async fn stock_log_rows(env: &TestEnv) -> i64 {
    let (applied, rejected) = env.log_counts().await;
    applied + rejected
}

async fn produce_quietly(env: &TestEnv, events: u64, products: i64) -> stockq::ProduceReport {
    let options =
        ProduceOptions { events, products, qty: 1, hot: false, rate: None, in_flight: 64, progress: false };
    produce(&env.shards(), &options).await.expect("produce")
}

/// [`TestEnv::drain`], bounded as a whole (a step that keeps retrying must fail the test,
/// not hang it).
async fn drain(env: &TestEnv, batch: usize) -> Vec<stockq::BatchReport> {
    tokio::time::timeout(Duration::from_secs(60), env.drain(batch))
        .await
        .expect("drain did not finish within 60s")
}

async fn claims_len(env: &TestEnv) -> usize {
    let mut c = env.redis.clone();
    c.zcard(env.queue.keys().claims()).await.unwrap()
}

/// Test 0: one reservation through the binary, drained in process.
#[tokio::test]
async fn smoke_reserve_and_drain() {
    let env = TestEnv::new().await;
    env.stock(1, 5).await;
    let (code, out, _) = env.run(&["reserve", "1", "2"]).await;
    assert_eq!(code, 0);
    assert_eq!(out.trim().len(), 32);
    drain(&env, 10).await;
    assert_eq!(env.mysql_stock(1).await, 3);
    assert_eq!(env.redis_stock(1).await, Some(3));
    env.assert_books_balance().await;
}

/// Test 1: N events over P products through two real worker processes: every event reaches
/// MySQL exactly once, both workers stop cleanly on SIGTERM, and the books balance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_worker_processes_apply_every_event_exactly_once() {
    const N: u64 = 3000;
    const P: i64 = 20;
    let initial = |p: i64| 300 + 7 * p; // ample (about 150 per product are reserved), distinct
    let env = TestEnv::new().await;
    for p in 1..=P {
        env.stock(p, initial(p)).await;
    }
    let report = produce_quietly(&env, N, P).await;
    assert_eq!((report.reserved, report.sold_out, report.unknown_product), (N, 0, 0));
    assert_eq!(env.len("pending").await, N as usize);

    let workers =
        [Proc::spawn(&env, &["worker", "--batch", "50"]), Proc::spawn(&env, &["worker", "--batch", "50"])];
    let e = &env;
    env.eventually(
        Duration::from_secs(60),
        "pending and processing empty, N stock_log rows",
        move || async move {
            e.len("pending").await == 0
                && e.len("processing").await == 0
                && stock_log_rows(e).await == N as i64
        },
    )
    .await;

    for w in &workers {
        w.sigterm().await;
    }
    for w in workers {
        let pid = w.pid;
        let (code, stderr) = w.wait(Duration::from_secs(30)).await;
        assert_eq!(code, 0, "worker {pid} exited {code} after SIGTERM; stderr: {stderr}");
    }

    assert_eq!(env.log_counts().await, (N as i64, 0), "stock_log must hold exactly N applied rows");
    let mut total_applied = 0;
    for p in 1..=P {
        let applied = env.applied_units(p).await;
        total_applied += applied;
        let mysql = env.mysql_stock(p).await;
        assert_eq!(mysql, initial(p) - applied, "product {p}: mysql stock != initial − applied");
        assert_eq!(env.redis_stock(p).await, Some(mysql), "product {p}: redis != mysql");
    }
    assert_eq!(total_applied, N as i64);
    assert_eq!(env.len("dead").await, 0);
    assert_eq!(claims_len(&env).await, 0, "no claim may outlive its acknowledgement");
    env.assert_books_balance().await;
}

/// Test 2: 15 concurrent shoppers for 10 units: exactly 10 succeed, 5 are sold out, and the
/// 10 reach MySQL.
#[tokio::test]
async fn sold_out_is_exact_under_concurrent_shoppers() {
    let env = TestEnv::new().await;
    env.stock(1, 10).await;
    let runs = futures::future::join_all((0..15).map(|_| env.run(&["reserve", "1", "1"]))).await;
    let ok = runs.iter().filter(|(code, _, _)| *code == 0).count();
    let sold_out = runs.iter().filter(|(code, _, _)| *code == 3).count();
    assert_eq!((ok, sold_out), (10, 5), "exit statuses: {:?}", runs.iter().map(|r| r.0).collect::<Vec<_>>());
    for (code, out, err) in &runs {
        match code {
            0 => assert!(out.trim().len() == 32 && err.is_empty(), "reserved: out {out:?} err {err:?}"),
            _ => {
                assert_one_line("sold out", err);
                assert!(err.contains("sold out"), "{err}");
                assert!(out.is_empty(), "sold out prints no event id: {out:?}");
            }
        }
    }
    assert_eq!(env.redis_stock(1).await, Some(0));
    assert_eq!(env.len("pending").await, 10);

    let reports = drain(&env, 50).await;
    assert_eq!(reports.iter().map(|r| r.applied).sum::<u64>(), 10);
    assert_eq!(env.mysql_stock(1).await, 0);
    assert_eq!(env.redis_stock(1).await, Some(0));
    assert_eq!(env.log_counts().await, (10, 0));
    env.assert_books_balance().await;
}

/// Claims everything pending, applies it in MySQL and does not acknowledge: a worker that
/// crashed between the commit and settle.lua.
async fn apply_without_settle(env: &TestEnv, expected: usize) -> (Vec<Vec<u8>>, Vec<Decision>) {
    let claim = env.queue.claim(10, None).await.expect("claim");
    assert_eq!(claim.entries.len(), expected);
    let events: Vec<Event> = claim.entries.iter().map(|e| Event::parse(e).expect("valid event")).collect();
    let decisions = env.ledger.apply_batch(&events, claim.seq).await.expect("apply batch");
    assert_eq!(env.len("processing").await, expected, "not acknowledged: still in processing");
    (claim.entries, decisions)
}

/// Test 3a: an applied batch delivered again is acknowledged, not applied again.
#[tokio::test]
async fn redelivered_applied_events_change_mysql_once() {
    let env = TestEnv::new().await;
    env.stock(1, 10).await;
    for _ in 0..5 {
        let r = reserve(&env.queue, 1, 1, &new_event_id()).await.unwrap();
        assert!(matches!(r, Reservation::Reserved { .. }), "{r:?}");
    }
    let (entries, decisions) = apply_without_settle(&env, 5).await;
    assert_eq!(decisions, vec![Decision::Applied; 5]);
    assert_eq!(env.mysql_stock(1).await, 5);
    // Committed but not acknowledged: the check must not count them as in flight.
    env.assert_books_balance().await;

    assert_eq!(env.queue.hand_back(&entries).await.unwrap(), 5);
    assert_eq!((env.len("pending").await, env.len("processing").await), (5, 0));

    let reports = drain(&env, 10).await;
    let sum = |f: fn(&stockq::BatchReport) -> u64| reports.iter().map(f).sum::<u64>();
    assert_eq!(sum(|r| r.redelivered), 5);
    assert_eq!(sum(|r| r.applied), 0);
    assert_eq!(sum(|r| r.rejected + r.duplicates + r.dead), 0);
    assert_eq!(sum(|r| r.acknowledged), 5);
    assert_eq!(env.mysql_stock(1).await, 5, "MySQL changed exactly once");
    assert_eq!(env.redis_stock(1).await, Some(5));
    assert_eq!(env.log_counts().await, (5, 0));
    assert_eq!((env.len("pending").await, env.len("processing").await), (0, 0));
    assert_eq!(claims_len(&env).await, 0);
    env.assert_books_balance().await;
}

/// Test 3b: a rejected batch delivered again gives its Redis stock back exactly once.
#[tokio::test]
async fn redelivered_rejected_events_give_stock_back_once() {
    let env = TestEnv::new().await;
    env.stock(1, 3).await;
    sqlx::query("UPDATE products SET stock = 0 WHERE id = ?").bind(1i64).execute(&env.mysql).await.unwrap();
    for _ in 0..2 {
        let r = reserve(&env.queue, 1, 1, &new_event_id()).await.unwrap();
        assert!(matches!(r, Reservation::Reserved { .. }), "{r:?}");
    }
    assert_eq!(env.redis_stock(1).await, Some(1));

    let (entries, decisions) = apply_without_settle(&env, 2).await;
    assert_eq!(decisions, vec![Decision::Rejected; 2]);
    assert_eq!(env.redis_stock(1).await, Some(1), "nothing given back before the acknowledgement");
    assert_eq!(env.queue.hand_back(&entries).await.unwrap(), 2);

    let reports = drain(&env, 10).await;
    assert_eq!(reports.iter().map(|r| r.redelivered).sum::<u64>(), 2);
    assert_eq!(reports.iter().map(|r| r.rejected + r.applied).sum::<u64>(), 0);
    assert_eq!(env.redis_stock(1).await, Some(3), "3 − 2 + 2: given back exactly once");
    assert_eq!(env.mysql_stock(1).await, 0);
    assert_eq!(env.log_counts().await, (0, 2));
    assert_eq!((env.len("pending").await, env.len("processing").await), (0, 0));

    // Nothing is left to deliver, so nothing can be given back a second time.
    let again = drain(&env, 10).await;
    assert!(again.is_empty(), "a second drain must be idle: {again:?}");
    assert_eq!(env.redis_stock(1).await, Some(3));
}

/// Test 4: MySQL lowered behind stockq's back: the excess is rejected and returned to Redis,
/// `check` reports the drift with its delta, and `check --repair` closes it.
#[tokio::test]
async fn drift_is_rejected_reported_and_repaired() {
    let env = TestEnv::new().await;
    env.stock(1, 10).await;
    sqlx::query("UPDATE products SET stock = 3 WHERE id = ?").bind(1i64).execute(&env.mysql).await.unwrap();
    for _ in 0..10 {
        let r = reserve(&env.queue, 1, 1, &new_event_id()).await.unwrap();
        assert!(matches!(r, Reservation::Reserved { .. }), "{r:?}");
    }
    let reports = drain(&env, 4).await;
    assert_eq!(reports.iter().map(|r| r.applied).sum::<u64>(), 3);
    assert_eq!(reports.iter().map(|r| r.rejected).sum::<u64>(), 7);
    assert_eq!(env.log_counts().await, (3, 7));
    assert_eq!(env.mysql_stock(1).await, 0);
    assert_eq!(env.redis_stock(1).await, Some(7), "the 7 rejected units are returned");
    let negative: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM products WHERE stock < 0")
        .fetch_one(&env.mysql)
        .await
        .unwrap();
    assert_eq!(negative, 0, "MySQL stock went negative");

    let (code, out, err) = env.run(&["check"]).await;
    assert_eq!(code, 1, "check must find the drift; stdout {out:?} stderr {err:?}");
    let line = out
        .lines()
        .find(|l| l.contains("product 1:"))
        .unwrap_or_else(|| panic!("check names product 1: {out:?}"));
    assert!(line.contains("delta +7"), "{line}");
    assert!(line.contains("redis 7") && line.contains("mysql 0"), "both figures: {line}");

    let (code, out, err) = env.run(&["check", "--repair"]).await;
    assert_eq!(code, 0, "repair leaves the stores consistent; stdout {out:?} stderr {err:?}");
    assert_eq!(env.redis_stock(1).await, Some(0));
    assert_eq!(env.mysql_stock(1).await, 0);

    let (code, out, _) = env.run(&["check"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("consistent"), "{out}");
    env.assert_books_balance().await;
}

/// Test 5: SIGTERM in the middle of a backlog: the worker finishes what it holds, exits 0,
/// and every event is either applied or still pending — none lost, none held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_backlog_loses_nothing() {
    const N: u64 = 4000;
    const P: i64 = 10;
    let env = TestEnv::new().await;
    for p in 1..=P {
        env.stock(p, 1000).await; // about 400 each are reserved
    }
    let report = produce_quietly(&env, N, P).await;
    assert_eq!((report.reserved, report.sold_out), (N, 0));

    let worker = Proc::spawn(&env, &["worker", "--batch", "20", "--concurrency", "2"]);
    let e = &env;
    env.eventually(Duration::from_secs(30), "the worker applied something", move || async move {
        stock_log_rows(e).await > 0
    })
    .await;
    worker.sigterm().await;
    let (code, stderr) = worker.wait(Duration::from_secs(30)).await;
    assert_eq!(code, 0, "worker exited {code} after SIGTERM; stderr: {stderr}");

    assert_eq!(env.len("processing").await, 0, "a stopped worker holds nothing");
    assert_eq!(claims_len(&env).await, 0);
    let (applied, rejected) = env.log_counts().await;
    let pending = env.len("pending").await as i64;
    assert_eq!(rejected, 0);
    assert_eq!(env.len("dead").await, 0);
    assert_eq!(applied + pending, N as i64, "applied {applied} + pending {pending} != {N}");
    // The books balance with the rest still pending, then after draining it.
    env.assert_books_balance().await;

    let reports = drain(&env, 200).await;
    assert_eq!(reports.iter().map(|r| r.applied).sum::<u64>(), pending as u64);
    assert_eq!(env.log_counts().await, (N as i64, 0));
    let mut total = 0;
    for p in 1..=P {
        let mysql = env.mysql_stock(p).await;
        assert_eq!(mysql, 1000 - env.applied_units(p).await, "product {p}");
        assert_eq!(env.redis_stock(p).await, Some(mysql), "product {p}");
        total += 1000 - mysql;
    }
    assert_eq!(total, N as i64);
    env.assert_books_balance().await;
}

/// Test 6: bad input and unreachable stores: the documented status, one line on stderr, no
/// secret, and a bounded wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_and_unreachable_stores() {
    let env = TestEnv::new().await;
    let quick = Duration::from_secs(10);

    // (arguments, extra environment, what the line must name)
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let usage_cases: &[Case] = &[
        (&["reserve", "abc", "1"], &[], "abc"),
        (&["reserve", "1", "0"], &[], "0"),
        (&["reserve", "1", "1", "--event-id", "bad id!"], &[], "bad id!"),
        (&["worker", "--batch", "0"], &[], "--batch"),
        (&["--visibility-timeout", "bogus", "worker"], &[], "bogus"),
        (&["worker"], &[("STOCKQ_VISIBILITY_TIMEOUT", "bogus")], "bogus"),
        (&["produce", "--events", "0"], &[], "--events"),
        (&["stock", "add", "1"], &[], "DELTA"),
        (&["dead", "requeue"], &[], "--all"),
        (&["reserve", "1", "1"], &[("REDIS_URL", "notaurl")], "REDIS_URL"),
    ];
    for (args, extra, names) in usage_cases {
        let what = format!("{args:?} {extra:?}");
        let (code, _, stderr, _) = run_with(&env, args, extra, quick).await;
        assert_eq!(code, 2, "{what}: stderr {stderr:?}");
        assert_one_line(&what, &stderr);
        assert!(stderr.contains(names), "{what}: the line should name {names:?}: {stderr:?}");
    }

    // Redis unreachable: a failure (1), quickly.
    let (code, _, stderr, took) =
        run_with(&env, &["reserve", "1", "1"], &[("REDIS_URL", "redis://127.0.0.1:1")], quick).await;
    assert_eq!(code, 1, "unreachable Redis: {stderr:?}");
    assert_one_line("unreachable Redis", &stderr);
    assert!(took < Duration::from_secs(5), "reserve took {took:?} to give up on Redis");

    // MySQL unreachable, with a password that must never be printed.
    let secret_url = [("DATABASE_URL", "mysql://stockq:s3cretpw@127.0.0.1:1/stockq")];
    for (args, want) in [(&["check"][..], 2), (&["stock", "set", "1", "1"][..], 1)] {
        let (code, stdout, stderr, took) = run_with(&env, args, &secret_url, Duration::from_secs(30)).await;
        assert_eq!(code, want, "{args:?} with MySQL unreachable: {stderr:?}");
        assert_one_line(&format!("{args:?} MySQL unreachable"), &stderr);
        assert!(took < Duration::from_secs(10), "{args:?} took {took:?}");
        assert!(
            !stderr.contains("s3cretpw") && !stdout.contains("s3cretpw"),
            "{args:?} leaked the password: {stderr}"
        );
    }

    // a worker waits for MySQL (as serve does) instead of exiting, saying so without the
    // password, and stops cleanly on SIGTERM meanwhile
    let mut worker = env
        .command(&["worker"])
        .env("DATABASE_URL", secret_url[0].1)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(worker.try_wait().unwrap().is_none(), "the worker waits for MySQL");
    crate::helpers::send_signal(worker.id().unwrap(), "TERM");
    let out =
        tokio::time::timeout(Duration::from_secs(20), worker.wait_with_output()).await.unwrap().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("cannot reach MySQL yet; waiting for it") && !stderr.contains("s3cretpw"),
        "{stderr}"
    );

    // Unknown product: 4, nothing enqueued.
    let (code, out, stderr) = env.run(&["reserve", "999", "1"]).await;
    assert_eq!(code, 4, "{stderr}");
    assert_one_line("unknown product", &stderr);
    assert!(out.is_empty());
    assert_eq!(env.len("pending").await, 0);

    let (code, out, _) = env.run(&["--help"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("Usage:") && out.contains("reserve"), "{out}");
}

/// A second signal exits at once, even with a batch stuck on MySQL; what the worker held is
/// recovered by the janitor and applied once.
#[tokio::test]
async fn a_second_signal_exits_at_once_and_loses_nothing() {
    let env = TestEnv::with(|s| s.delivery.visibility_timeout = Duration::from_secs(1)).await;
    env.stock(1, 100).await;
    for _ in 0..10 {
        env.reserve_ok(1, 1, &new_event_id()).await;
    }
    // hold product 1 so the worker's batch waits on MySQL
    let mut locker = env.mysql.begin().await.unwrap();
    sqlx::query("SELECT stock FROM products WHERE id = 1 FOR UPDATE").execute(&mut *locker).await.unwrap();

    let mut worker = env.command(&["worker"]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    env.eventually(Duration::from_secs(10), "the worker to claim the 10 events", || async {
        env.len("processing").await == 10
    })
    .await;
    let pid = worker.id().unwrap();
    crate::helpers::send_signal(pid, "TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(worker.try_wait().unwrap().is_none(), "the first signal must let the stuck batch finish");
    let second = Instant::now();
    crate::helpers::send_signal(pid, "TERM");
    let status = tokio::time::timeout(Duration::from_secs(5), worker.wait()).await.unwrap().unwrap();
    assert!(second.elapsed() < Duration::from_secs(2), "took {:?}", second.elapsed());
    assert_eq!(status.code(), Some(1));
    let mut stderr = String::new();
    worker.stderr.take().unwrap().read_to_string(&mut stderr).await.unwrap();
    assert!(stderr.contains("second SIGTERM"), "{stderr}");
    assert_eq!(env.log_counts().await, (0, 0), "nothing may have been applied while the row was held");

    // the forced exit left its claims behind; the janitor recovers them and they apply once
    locker.rollback().await.unwrap();
    let janitor = env.janitor();
    env.eventually(Duration::from_secs(10), "the janitor to re-queue the abandoned claims", || async {
        janitor.recover().await.unwrap();
        env.len("pending").await == 10
    })
    .await;
    env.drain(20).await;
    assert_eq!(env.log_counts().await, (10, 0));
    assert_eq!(env.mysql_stock(1).await, 90);
    assert_eq!(env.redis_stock(1).await, Some(90));
    env.assert_books_balance().await;
}
