//! Faults on the MySQL side of stockq: what a batch transaction or a stock change meets there.
//!
//! Against the real MariaDB and Redis; workers and janitors are the real binary where the
//! fault is a process's (a SIGSTOP).

use std::time::{Duration, Instant};

use sqlx::Connection;

use crate::helpers::{TestEnv, send_signal, terminate};

// ---------------------------------------------------------------------------------------------
// A worker frozen in the middle of its batch transaction.

/// The id of the test database's connection whose current statement starts with `sql`.
async fn thread_running(env: &TestEnv, sql: &str) -> Option<i64> {
    sqlx::query_scalar(
        "SELECT id FROM information_schema.processlist WHERE db = ? AND info LIKE CONCAT(?, '%')",
    )
    .bind(&env.database)
    .bind(sql)
    .fetch_optional(&env.mysql)
    .await
    .unwrap()
}

/// What a connection is doing (`Sleep` between statements), or `None` once it is gone.
async fn thread_command(env: &TestEnv, id: i64) -> Option<String> {
    sqlx::query_scalar("SELECT command FROM information_schema.processlist WHERE id = ?")
        .bind(id)
        .fetch_optional(&env.mysql)
        .await
        .unwrap()
}

/// A worker SIGSTOPped while its batch transaction holds product 5's row (and its event's
/// `stock_log` key): MariaDB ends that transaction after about one visibility timeout, so the
/// worker that takes over the recovered claim applies the event while the first is still
/// frozen, instead of meeting lock-wait timeouts for as long as the freeze lasts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_workers_row_locks_are_released_about_when_its_claims_are() {
    let env = TestEnv::with(|s| {
        s.visibility_timeout = Duration::from_secs(2);
        s.janitor_interval = Duration::from_millis(200);
    })
    .await;
    env.stock(5, 100).await;

    // Another session holds product 5's row, so that the worker's batch stops inside its
    // transaction, after its stock_log insert and at its product lock.
    let mut holder = sqlx::MySqlConnection::connect(env.settings.database_url.expose()).await.unwrap();
    sqlx::raw_sql("BEGIN").execute(&mut holder).await.unwrap();
    sqlx::raw_sql("SELECT stock FROM products WHERE id = 5 FOR UPDATE").execute(&mut holder).await.unwrap();
    env.reserve_ok(5, 1, "frozen-1").await;
    let mut frozen = env.spawn(&["worker", "--concurrency", "1"]);
    let pid = frozen.id().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let thread = loop {
        if let Some(id) = thread_running(&env, "SELECT id, stock FROM products FORCE INDEX").await {
            break id;
        }
        assert!(Instant::now() < deadline, "the worker's batch never waited for product 5's row");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    // Freeze the worker, then let the row go: the server finishes the frozen worker's locking
    // read, and its transaction now holds the row, idle.
    send_signal(pid, "STOP");
    sqlx::raw_sql("ROLLBACK").execute(&mut holder).await.unwrap();
    env.eventually(Duration::from_secs(5), "the frozen worker's locking read to finish", || async {
        thread_command(&env, thread).await.as_deref() == Some("Sleep")
    })
    .await;
    let frozen_at = Instant::now();

    let mut janitor = env.spawn(&["janitor"]);
    let mut worker = env.spawn(&["worker"]);
    // Without a bound, the second worker's batch waits on the frozen locks, fails with 1205
    // after 5 s, and retries, for as long as the first worker stays frozen.
    env.eventually(
        Duration::from_secs(12),
        "another worker to apply the event during the freeze",
        || async {
            env.log_status("frozen-1").await.as_deref() == Some("applied")
                && env.len("processing").await == 0
                && env.len("pending").await == 0
        },
    )
    .await;
    let took = frozen_at.elapsed();
    assert_eq!(thread_command(&env, thread).await, None, "MariaDB ended the frozen session");
    println!("frozen worker: its event applied by another worker {took:.1?} into the freeze");

    // Awake again, the first worker finds its connection gone, retries, and finds the event
    // settled: nothing is applied twice.
    send_signal(pid, "CONT");
    tokio::time::sleep(Duration::from_secs(1)).await;
    for child in [&mut frozen, &mut worker, &mut janitor] {
        assert_eq!(terminate(child).await, 0);
    }
    assert_eq!(env.log_counts().await, (1, 0));
    assert_eq!(env.mysql_stock(5).await, 99);
    assert_eq!(env.redis_stock(5).await, Some(99));
    env.assert_books_balance().await;
}
