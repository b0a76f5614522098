//! The command line as a new operator meets it (docs/commands.md): the commands listed by a
//! bare `stockq`, each command's help with its own options apart from the global ones,
//! negative numbers read as numbers, dead letters with readable times, and demos that keep to
//! a queue and a database of their own.

use std::time::Duration;

use redis::AsyncCommands;
use serde_json::Value;

use crate::helpers::{TestEnv, mysql_server_url, stockq_bin};

/// Runs the binary with no environment of stockq's: (status, stdout, stderr).
async fn bare(args: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new(stockq_bin())
        .args(args)
        .env_remove("STOCKQ_QUEUE")
        .env_remove("REDIS_URL")
        .env_remove("DATABASE_URL")
        .output()
        .await
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

#[tokio::test]
async fn a_bare_stockq_lists_the_commands_and_help_keeps_a_command_s_own_options_apart() {
    let (code, out, err) = bare(&[]).await;
    assert_eq!(code, 2);
    for command in
        ["migrate", "stock", "reserve", "worker", "janitor", "check", "stats", "dead", "serve", "demo"]
    {
        assert!(out.lines().any(|l| l.trim_start().starts_with(command)), "{command} not listed:\n{out}");
    }
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("stockq: a command is required"), "{err}");
    let (code, out, err) = bare(&["dead"]).await;
    assert_eq!(code, 2);
    assert!(out.contains("requeue") && out.contains("drop"), "{out}");
    assert_eq!(err.lines().count(), 1, "{err}");

    let (code, help, _) = bare(&["stats", "--help"]).await;
    assert_eq!(code, 0);
    let (own, global) = help.split_once("Global options:").unwrap_or_else(|| panic!("no heading:\n{help}"));
    for flag in ["--json", "--limit", "--offset"] {
        assert!(own.contains(flag) && !global.contains(flag), "{flag}:\n{help}");
    }
    for flag in ["--redis-url", "--queue", "--visibility-timeout", "--log-format"] {
        assert!(global.contains(flag) && !own.contains(flag), "{flag}:\n{help}");
    }
    assert!(global.contains("[env: STOCKQ_QUEUE]"), "the variable is named:\n{help}");
    let shown_values =
        help.split("[env: ").skip(1).filter(|rest| rest.split(']').next().unwrap().contains('='));
    assert_eq!(shown_values.count(), 0, "no value, set or unset, after a variable's name:\n{help}");

    // a value set in the environment is not shown either (a URL may carry a password)
    let out = tokio::process::Command::new(stockq_bin())
        .args(["worker", "--help"])
        .env("DATABASE_URL", "mysql://u:hunter2@db/x")
        .output()
        .await
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("[env: DATABASE_URL]") && !help.contains("hunter2"), "{help}");
}

#[tokio::test]
async fn negative_numbers_are_numbers() {
    let env = TestEnv::new().await;
    env.stock(42, 10).await;

    let (code, out, err) = env.run(&["stock", "add", "42", "-5"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!((env.mysql_stock(42).await, env.redis_stock(42).await), (5, Some(5)));

    for args in
        [&["stock", "set", "42", "-1"][..], &["stock", "set", "-3", "5"][..], &["reserve", "42", "-2"][..]]
    {
        let (code, out, err) = env.run(args).await;
        assert_eq!(code, 2, "{args:?}: {out}{err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains("invalid value '-"), "{args:?} is read as a number, then refused: {err}");
        assert!(!err.contains("unexpected argument"), "{args:?}: {err}");
    }
    assert_eq!(env.mysql_stock(42).await, 5, "nothing changed");
}

#[tokio::test]
async fn dead_letters_list_with_readable_times_and_as_one_document() {
    let env = TestEnv::new().await;
    env.push_raw(b"not an event").await;
    assert_eq!(env.drain(1).await.iter().map(|r| r.dead).sum::<u64>(), 1);

    let (code, out, err) = env.run(&["dead", "list"]).await;
    assert_eq!(code, 0, "{err}");
    let line = out.lines().find(|l| l.contains("not an event")).unwrap_or_else(|| panic!("{out}"));
    let at = line.split("failed_at ").nth(1).and_then(|rest| rest.split('\t').next()).unwrap();
    let parsed = humantime::parse_rfc3339(at).unwrap_or_else(|e| panic!("{at}: {e}"));
    let age = std::time::SystemTime::now().duration_since(parsed).unwrap();
    assert!(age < Duration::from_secs(120), "{at}");

    let (code, out, _) = env.run(&["dead", "list", "--json"]).await;
    assert_eq!(code, 0);
    assert_eq!(out.trim().lines().count(), 1, "{out}");
    let list: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(list["total"], 1);
    assert!(list["dead"][0]["failed_at"].is_u64(), "raw milliseconds in JSON: {list}");
}

/// Removes a demo's queue keys and database, also when the test fails.
struct DemoLeftovers {
    queue: String,
    database: String,
}

impl Drop for DemoLeftovers {
    fn drop(&mut self) {
        let pattern = format!("{{{}}}:*", self.queue);
        let database = self.database.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                if let Ok(mut c) = redis::Client::open(crate::helpers::redis_url())
                    .unwrap()
                    .get_multiplexed_async_connection()
                    .await
                {
                    let keys: Vec<String> =
                        redis::cmd("KEYS").arg(&pattern).query_async(&mut c).await.unwrap_or_default();
                    if !keys.is_empty() {
                        let _: redis::RedisResult<()> = c.del(keys).await;
                    }
                }
                use sqlx::Connection;
                if let Ok(mut conn) = sqlx::MySqlConnection::connect(&mysql_server_url()).await {
                    let drop = format!("DROP DATABASE IF EXISTS `{database}`");
                    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(drop)).execute(&mut conn).await;
                }
            });
        })
        .join();
    }
}

#[tokio::test]
async fn two_demos_run_side_by_side_each_on_its_own_queue_and_database() {
    let (alice, bob) = (TestEnv::new().await, TestEnv::new().await);
    let _leftovers: Vec<DemoLeftovers> = [&alice, &bob]
        .iter()
        .map(|env| DemoLeftovers {
            queue: format!("{}-demo", env.name),
            database: format!("{}_demo", env.database),
        })
        .collect();
    let demo = ["demo", "--buyers", "300", "--products", "2", "--stock", "100"];
    let ((code_a, out_a, err_a), (code_b, out_b, err_b)) = tokio::join!(alice.run(&demo), bob.run(&demo));
    assert_eq!(code_a, 0, "{out_a}{err_a}");
    assert_eq!(code_b, 0, "{out_b}{err_b}");
    for (env, out) in [(&alice, &out_a), (&bob, &out_b)] {
        assert!(out.contains(&format!("(queue {{{}-demo}})", env.name)), "{out}");
        assert!(out.contains(&format!("/{}_demo", env.database)), "{out}");
        assert!(out.contains("was applied exactly once"), "{out}");
    }
    // each demo left its sale in place for inspection, and the other's untouched
    let mut redis = alice.redis.clone();
    for env in [&alice, &bob] {
        let stock: Option<i64> = redis.get(format!("{{{}-demo}}:stock:1", env.name)).await.unwrap();
        assert!(stock.is_some(), "{}'s demo stock", env.name);
    }
    // and the queue it was pointed at is not the demo's
    assert_eq!(alice.len("pending").await + alice.len("processing").await, 0);
    assert_eq!(alice.redis_stock(1).await, None);
}

#[tokio::test]
async fn bench_reports_every_figure_in_one_run() {
    let env = TestEnv::new().await;
    let _leftovers =
        DemoLeftovers { queue: format!("{}-bench", env.name), database: format!("{}_bench", env.database) };
    let (code, out, err) = env
        .run(&[
            "bench",
            "--events",
            "3000",
            "--single-events",
            "300",
            "--mode",
            "uniform",
            "--capacity-for",
            "1s",
            "--rate-for",
            "1s",
            "--http-for",
            "1s",
            "--http-connections",
            "8",
            "--check-products",
            "2000",
            "--check-backlog",
            "20000",
            "--json",
        ])
        .await;
    assert_eq!(code, 0, "{out}{err}");
    let parts: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).expect(l)).collect();
    let part = |run: &str| -> Vec<&Value> { parts.iter().filter(|p| p["run"] == run).collect() };
    assert!(parts.iter().all(|p| p["consistent"] == true), "{out}");
    let drains = part("drain");
    assert_eq!(drains.iter().map(|d| d["batch"].as_u64().unwrap()).collect::<Vec<_>>(), [500, 1], "{out}");
    assert!(drains.iter().all(|d| d["applied_per_s"].as_f64().unwrap() > 0.0), "{out}");
    let capacity = part("capacity")[0];
    assert!(capacity["capacity_per_s"].as_f64().unwrap() > 0.0, "{out}");
    // the steady run offers half the capacity, and every reservation got its outcome
    let steady = part("steady")[0];
    let half = (capacity["capacity_per_s"].as_f64().unwrap() / 2.0).round().max(1.0) as u64;
    assert_eq!(steady["offered_per_s"].as_u64().unwrap(), half, "{out}");
    assert_eq!(steady["outcomes"], steady["events"], "{out}");
    let http = part("http")[0];
    assert!(http["requests"].as_u64().unwrap() > 0, "{out}");
    assert_eq!(http["not_created"], 0, "{out}");
    let check = part("check")[0];
    assert_eq!((check["products"].as_u64(), check["backlog"].as_u64()), (Some(2000), Some(20000)), "{out}");
    assert_eq!(check["check_ms"].as_array().unwrap().len(), 3, "{out}");
}

/// A reader that stops early (`stockq stats | head`) ends the command quietly with status 0:
/// no panic, no backtrace. The pipe's reading end is closed before stockq writes anything.
#[tokio::test]
async fn a_reader_gone_from_the_pipe_ends_a_report_quietly() {
    let env = TestEnv::new().await;
    for product in 1..=50 {
        env.stock(product, 10).await;
    }
    for args in [&["stats", "--limit", "0"][..], &["dead", "list"], &["scripts", "settle"]] {
        let mut cmd = env.command(args);
        cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().expect("spawn stockq");
        drop(child.stdout.take());
        let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
            .await
            .expect("stockq finishes")
            .expect("wait");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked") && !err.contains("backtrace"), "{args:?}: {err}");
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
    }
}
