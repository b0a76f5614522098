//! examples/order_service (issue 23): the Python order service of the example, run for real
//! against `stockq serve`, a worker and `stockq relay`. Its orders end as their stories say,
//! its webhook endpoint refuses forged and old deliveries and drops stale ones, its check
//! catches a state stockq does not agree with, and the books balance.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::helpers::{TestEnv, free_port, http};

const TOKEN: &str = "an-order-service-token";
const SECRET: &str = "the-example-webhook-secret";
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/order_service/order_service.py");

/// A directory of the test's own for the shop's SQLite file and the listener's log, removed
/// at the end (a failed test's too).
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `python3 order_service.py <args> --db <db>`, with python3 from PATH.
fn example(db: &Path, args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("python3");
    cmd.arg(SCRIPT).args(args).arg("--db").arg(db).stdin(Stdio::null()).kill_on_drop(true);
    cmd
}

/// Runs `run` or `check` of the example to its end: (exit status, its JSON lines, stdout and
/// stderr for messages).
async fn order_service(db: &Path, serve_port: u16, args: &[&str]) -> (i32, Vec<serde_json::Value>, String) {
    let mut cmd = example(db, args);
    cmd.env("STOCKQ_URL", format!("http://127.0.0.1:{serve_port}")).env("STOCKQ_API_TOKEN", TOKEN);
    let out = tokio::time::timeout(Duration::from_secs(90), cmd.output())
        .await
        .expect("the example did not finish within 90s")
        .expect("run python3 (on PATH?)");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let said = format!("stdout:\n{stdout}\nstderr:\n{}", String::from_utf8_lossy(&out.stderr));
    let lines = stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}\n{said}")))
        .collect();
    (out.status.code().unwrap_or(-1), lines, said)
}

/// A webhook delivery to the example's endpoint, signed at unix second `t` with `secret`.
async fn deliver(port: u16, secret: &str, t: u64, body: &str) -> u16 {
    let signature = stockq::relay::signature(secret, t, body);
    http(port, "POST", "/stockq").header("Stockq-Signature", &signature).json(body).send().await.status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_order_service_example_tells_every_story_to_its_end() {
    let env = TestEnv::new().await;
    let env = &env;
    env.stock(1, 100).await;
    let (_serve, port) = env.serve(&[("STOCKQ_API_TOKEN", TOKEN)]).await;
    let _worker = env.spawn(&["worker"]);

    let scratch = Scratch(std::env::temp_dir().join(format!("stockq-example-{}", env.name)));
    std::fs::create_dir_all(&scratch.0).unwrap();
    let db = scratch.0.join("orders.db");
    let log_path = scratch.0.join("webhooks.log");
    let hook_port = free_port();
    let mut listener = example(&db, &["webhooks", "--listen", &format!("127.0.0.1:{hook_port}")])
        .env("STOCKQ_WEBHOOK_SECRET", SECRET)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .expect("spawn python3: the example needs python3 on PATH");
    env.eventually(Duration::from_secs(10), "the example's webhook endpoint", || {
        let exited = listener.try_wait().unwrap();
        assert!(exited.is_none(), "{exited:?}: {}", std::fs::read_to_string(&log_path).unwrap());
        async move { tokio::net::TcpStream::connect(("127.0.0.1", hook_port)).await.is_ok() }
    })
    .await;

    let _relay = env
        .command(&["relay"])
        .env("STOCKQ_WEBHOOK_URL", format!("http://127.0.0.1:{hook_port}/stockq"))
        .env("STOCKQ_WEBHOOK_SECRET", SECRET)
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn relay");
    // the relay delivers the outcomes written after its cursor is set
    crate::relay::started(env).await;

    // 30 orders: 21 paid and shipped, 3 refunded after shipping, 3 declined, 3 paid too late
    let (code, lines, said) = order_service(&db, port, &["run", "--orders", "30", "--timeout", "45"]).await;
    let said = format!("{said}\nwebhooks.log:\n{}", std::fs::read_to_string(&log_path).unwrap());
    assert_eq!(code, 0, "{said}");
    let (summary, orders) = lines.split_last().expect("a summary line");
    let summary = &summary["summary"];
    assert_eq!(summary["ok"], true, "{said}");
    assert_eq!(orders.len(), 30, "{said}");
    assert_eq!(
        summary["statuses"],
        serde_json::json!({"shipped": 21, "refunded": 3, "cancelled": 6}),
        "{said}"
    );
    assert_eq!(summary["webhooks"]["refused"], 0, "{said}");
    // the orders ended by webhook: all but the declined ones, whose cancel's answer ended them
    assert!(summary["webhooks"]["delivered"].as_u64().unwrap() >= 30, "{said}");
    for order in orders {
        assert_eq!(order["ok"], true, "{order}\n{said}");
        let want = match order["story"].as_str().unwrap() {
            "paid" => ("shipped", "applied", 3),
            "refund" => ("refunded", "released", 5),
            "payment_fails" => ("cancelled", "cancelled", 2),
            "late_payment" => ("cancelled", "expired", 2),
            other => panic!("a story of its own: {other}"),
        };
        let got = (
            order["status"].as_str().unwrap(),
            order["stockq_state"].as_str().unwrap(),
            order["version"].as_i64().unwrap(),
        );
        assert_eq!(got, want, "{order}");
    }

    // the books: 21 units sold, the refunds' back, nothing in flight
    assert_eq!(env.mysql_stock(1).await, 79);
    assert_eq!(env.redis_stock(1).await, Some(79));
    assert_eq!(env.log_counts().await, (21, 0));
    let released: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM stock_log WHERE status = 'released'")
        .fetch_one(&env.mysql)
        .await
        .unwrap();
    assert_eq!(released, 3);
    env.assert_books_balance().await;

    // every outcome reaches the endpoint: 30 ends, and the refunds' `applied` before theirs
    let mut c = env.redis.clone();
    let outcomes: u64 = redis::cmd("XLEN").arg(env.key("outcomes")).query_async(&mut c).await.unwrap();
    assert_eq!(outcomes, 33);
    env.eventually(Duration::from_secs(20), "every outcome delivered to the example", || async {
        let (_, lines, _) = order_service(&db, port, &["check"]).await;
        lines.last().unwrap()["summary"]["webhooks"]["delivered"] == 33
    })
    .await;

    // the endpoint: a forged signature and an old one are refused; a delivery seen before,
    // and a signed one older than what the order knows, are taken (2xx) and change nothing
    let shipped = orders.iter().find(|o| o["story"] == "paid").unwrap()["order"].as_str().unwrap();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let stale = serde_json::json!({"id": format!("{shipped}@2"), "event_id": shipped, "state": "cancelled",
        "version": 2, "product_id": 1, "qty": 1, "seq": 1, "at": 0})
    .to_string();
    assert_eq!(deliver(hook_port, "not-the-secret-at-all", now, &stale).await, 401);
    assert_eq!(deliver(hook_port, SECRET, now - 600, &stale).await, 401);
    assert_eq!(deliver(hook_port, SECRET, now, &stale).await, 204);
    assert_eq!(deliver(hook_port, SECRET, now, &stale).await, 204, "a duplicate id is taken");
    assert_eq!(deliver(hook_port, SECRET, now, "not json").await, 400);
    let (code, lines, said) = order_service(&db, port, &["check"]).await;
    assert_eq!(code, 0, "{said}");
    let summary = &lines.last().unwrap()["summary"];
    assert_eq!(summary["webhooks"]["refused"], 3, "{said}");
    let dropped = summary["seen"]["webhook"]["dropped"].as_u64().unwrap();

    // a newer version stockq never wrote (as a leaked secret could sign): taken, and the
    // check fails on it, naming the order
    let forged = serde_json::json!({"id": format!("{shipped}@9"), "event_id": shipped, "state": "released",
        "version": 9, "product_id": 1, "qty": 1, "seq": 1, "at": 0})
    .to_string();
    assert_eq!(deliver(hook_port, SECRET, now, &forged).await, 204);
    let (code, lines, said) = order_service(&db, port, &["check"]).await;
    assert_eq!(code, 1, "{said}");
    let (summary, orders) = lines.split_last().unwrap();
    assert_eq!(
        (summary["summary"]["ok"].as_bool(), summary["summary"]["failed"].as_u64()),
        (Some(false), Some(1))
    );
    assert_eq!(summary["summary"]["seen"]["webhook"]["dropped"].as_u64(), Some(dropped), "{said}");
    let bad: Vec<_> = orders.iter().filter(|o| o["ok"] == false).collect();
    assert_eq!(bad.len(), 1, "{said}");
    assert_eq!(bad[0]["order"], shipped);
    assert!(bad[0]["problems"].to_string().contains("stockq says applied version 3"), "{}", bad[0]);

    let _ = listener.kill().await;
}
