//! Logs as an operator reads them (docs/operations.md, "Logs"): JSON lines whose numbers are numbers and
//! whose missing values are null, the queue on every line, each line under the target of the
//! part that wrote it, and colour only on a terminal (never with `NO_COLOR`).
//!
//! The terminal is a real pseudo-terminal: util-linux's `script` runs the binary in one.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::helpers::{TestEnv, stockq_bin, terminate};

/// The JSON lines of `stderr`, each parsed; a line that is not a JSON object fails the test.
fn json_lines(stderr: &str) -> Vec<serde_json::Value> {
    stderr
        .lines()
        .map(|line| {
            let value: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
            assert!(value.is_object(), "{line}");
            value
        })
        .collect()
}

#[tokio::test]
async fn json_lines_keep_their_types_name_the_queue_and_their_writer() {
    let env = TestEnv::new().await;
    env.stock(1, 10).await;
    env.stock(2, 10).await;
    let mut redis = env.redis.clone();
    let _: () = redis.del(env.key("stock:1")).await.unwrap();
    let _: () = redis.set(env.key("stock:2"), 789).await.unwrap();

    let mut once = env.command(&["janitor", "--once"]);
    once.env("STOCKQ_LOG_FORMAT", "json").env("RUST_LOG", "info");
    let out = once.output().await.unwrap();
    assert_eq!(out.status.code(), Some(1), "drift found");
    let lines = json_lines(&String::from_utf8_lossy(&out.stderr));
    assert!(!lines.is_empty());
    for line in &lines {
        assert_eq!(line["queue"], env.name.as_str(), "{line}");
        assert!(line["timestamp"].is_string() && line["level"].is_string(), "{line}");
    }
    let drift = |product: i64| {
        lines
            .iter()
            .find(|l| l["product_id"] == product && l["message"].as_str().unwrap_or("").contains("drift"))
            .unwrap_or_else(|| panic!("no drift line for product {product}: {lines:?}"))
    };
    let missing = drift(1);
    assert!(missing["redis"].is_null(), "a missing stock key is null: {missing}");
    assert_eq!(missing["mysql"], 10);
    assert_eq!(missing["delta"], -10);
    assert_eq!(missing["target"], "stockq::janitor");
    let wrong = drift(2);
    assert_eq!(wrong["redis"], 789, "{wrong}");
    assert_eq!(wrong["delta"], 779, "{wrong}");

    // the janitor's retries are the janitor's lines, not those of the code that paces them
    let mut janitor = env.command(&["janitor", "--check-interval", "100ms", "--janitor-interval", "100ms"]);
    janitor.env("STOCKQ_LOG_FORMAT", "json").env("RUST_LOG", "info").stderr(Stdio::piped());
    let mut janitor = janitor.spawn().unwrap();
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let reader = {
        let seen = seen.clone();
        let mut stderr = BufReader::new(janitor.stderr.take().unwrap()).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = stderr.next_line().await {
                seen.lock().unwrap().push(line);
            }
        })
    };
    env.eventually(Duration::from_secs(20), "the janitor's first check", || async {
        seen.lock().unwrap().iter().any(|l| l.contains("consistency check: drift"))
    })
    .await;
    sqlx::query("RENAME TABLE products TO products_away").execute(&env.mysql).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let failed = loop {
        let found =
            seen.lock().unwrap().iter().find(|l| l.contains("consistency check could not run")).cloned();
        if let Some(line) = found {
            break line;
        }
        assert!(Instant::now() < deadline, "no failed check logged: {:?}", seen.lock().unwrap());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    sqlx::query("RENAME TABLE products_away TO products").execute(&env.mysql).await.unwrap();
    let failed: serde_json::Value = serde_json::from_str(&failed).unwrap();
    assert_eq!(failed["target"], "stockq::janitor", "{failed}");
    assert_eq!(failed["level"], "WARN", "{failed}");
    assert_eq!(failed["failures"], 1, "a count is a number: {failed}");
    assert_eq!(failed["queue"], env.name.as_str(), "{failed}");
    env.eventually(Duration::from_secs(20), "the janitor working again", || async {
        seen.lock().unwrap().iter().any(|l| l.contains("working again after failures"))
    })
    .await;
    assert_eq!(terminate(&mut janitor).await, 0);
    reader.await.unwrap();
    let all = seen.lock().unwrap().join("\n");
    let again =
        json_lines(&all).into_iter().find(|l| l["message"] == "working again after failures").unwrap();
    assert_eq!(again["target"], "stockq::janitor", "{again}");
}

/// Runs `stockq janitor --once` in a pseudo-terminal (util-linux `script`), with `extra`
/// variables; returns what the terminal showed.
async fn on_a_terminal(env: &TestEnv, extra: &[(&str, &str)]) -> String {
    let mut cmd = tokio::process::Command::new("script");
    cmd.args(["--quiet", "--return", "--command"])
        .arg(format!("{} janitor --once", stockq_bin()))
        .arg("/dev/null")
        .envs(env.envs())
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .stdin(Stdio::null());
    for (key, value) in extra {
        cmd.env(key, value);
    }
    let out =
        tokio::time::timeout(Duration::from_secs(60), cmd.output()).await.unwrap().expect("run script(1)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn human_lines_are_coloured_on_a_terminal_only() {
    let env = TestEnv::new().await;
    env.stock(1, 10).await;

    let terminal = on_a_terminal(&env, &[]).await;
    assert!(terminal.contains("consistency check: stores agree"), "{terminal}");
    assert!(terminal.contains("\x1b["), "colour on a terminal: {terminal:?}");

    let no_color = on_a_terminal(&env, &[("NO_COLOR", "1")]).await;
    assert!(no_color.contains("consistency check: stores agree"), "{no_color}");
    assert!(!no_color.contains("\x1b["), "NO_COLOR: {no_color:?}");

    let mut piped = env.command(&["janitor", "--once"]);
    piped.env("RUST_LOG", "info").env_remove("NO_COLOR");
    let out = piped.output().await.unwrap();
    assert_eq!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains('\x1b'), "no colour into a pipe: {stderr:?}");
    for line in stderr.lines() {
        assert!(line.ends_with(&format!(" queue={}", env.name)), "{line}");
    }
}
