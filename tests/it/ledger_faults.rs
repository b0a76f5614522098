//! Faults on the MySQL side of stockq: what a batch transaction or a stock change meets there.
//!
//! Against the real MariaDB and Redis; workers and janitors are the real binary where the
//! fault is a process's (a SIGSTOP).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use sqlx::Connection;
use stockq::{CommitOutcome, Ledger, UnconfirmedChange, settle_unknown_commit};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

use crate::helpers::{TestEnv, free_port, mysql_server_url, send_signal, terminate};

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
        s.delivery.visibility_timeout = Duration::from_secs(2);
        s.janitor.interval = Duration::from_millis(200);
    })
    .await;
    env.stock(5, 100).await;

    // Another session holds product 5's row, so that the worker's batch stops inside its
    // transaction, after its stock_log insert and at its product lock.
    let mut holder = sqlx::MySqlConnection::connect(env.settings.mysql.url.expose()).await.unwrap();
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

// ---------------------------------------------------------------------------------------------
// A batch MySQL refuses for good.

/// One event of a batch that MySQL refuses for good (a trigger on its product signals an
/// error, 1644): it is dead-lettered with MySQL's reason, the other events of the same batch
/// are applied, and the worker moves on instead of retrying the batch for ever. Once the
/// cause is gone, the dead letter is requeued and applied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_mysql_refuses_for_good_is_dead_lettered_and_its_batch_applied() {
    let env = TestEnv::new().await;
    for product in [12, 13, 14] {
        env.stock(product, 10).await;
    }
    sqlx::raw_sql(
        "CREATE TRIGGER freeze_13 BEFORE UPDATE ON products FOR EACH ROW \
         IF NEW.id = 13 THEN SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'product 13 frozen'; END IF",
    )
    .execute(&env.mysql)
    .await
    .unwrap();
    for (product, qty, id) in [(12, 1, "a"), (13, 2, "b"), (14, 3, "c"), (12, 4, "d"), (14, 1, "e")] {
        env.reserve_ok(product, qty, id).await;
    }

    let started = Instant::now();
    let reports = tokio::time::timeout(Duration::from_secs(30), env.drain(10))
        .await
        .expect("the worker retried the refused batch for 30 s");
    let took = started.elapsed();
    assert_eq!(reports.len(), 1, "{reports:?}");
    let report = &reports[0];
    assert_eq!((report.claimed, report.applied, report.dead, report.acknowledged), (5, 4, 1, 4));
    let dead = env.dead_letters().await;
    assert_eq!(dead.len(), 1);
    let entry: serde_json::Value = serde_json::from_str(dead[0]["entry"].as_str().unwrap()).unwrap();
    assert_eq!(entry["event_id"], "b");
    let reason = dead[0]["reason"].as_str().unwrap();
    assert_eq!(reason, "mysql: 1644 product 13 frozen");
    assert_eq!(env.log_status("b").await, None, "nothing of the refused event in MySQL");
    let stocks = [env.mysql_stock(12).await, env.mysql_stock(13).await, env.mysql_stock(14).await];
    assert_eq!(stocks, [5, 10, 6]);
    // its units stay reserved in Redis while it waits in dead
    assert_eq!(env.redis_stock(13).await, Some(8));
    env.assert_books_balance().await;
    println!("refused event: batch settled in {took:.1?}, reason: {reason}");

    sqlx::raw_sql("DROP TRIGGER freeze_13").execute(&env.mysql).await.unwrap();
    let (code, _, stderr) = env.run(&["dead", "requeue", "b"]).await;
    assert_eq!(code, 0, "{stderr}");
    env.drain(10).await;
    assert_eq!(env.log_status("b").await.as_deref(), Some("applied"));
    assert_eq!((env.mysql_stock(13).await, env.redis_stock(13).await), (8, Some(8)));
    assert_eq!(env.len("dead").await, 0);
    env.assert_books_balance().await;
}

// ---------------------------------------------------------------------------------------------
// A stock change whose COMMIT answer is lost.

/// A TCP proxy in front of the test MariaDB that can swallow the answer to the next COMMIT
/// (the server commits; the client sees its connection close), and be taken down.
struct MysqlProxy {
    port: u16,
    swallow_next_commit: Arc<AtomicBool>,
    accepting: JoinHandle<()>,
}

impl MysqlProxy {
    async fn start() -> MysqlProxy {
        MysqlProxy::start_on(0).await
    }

    /// On `port` (0: any free one).
    async fn start_on(port: u16) -> MysqlProxy {
        let server = url::Url::parse(&mysql_server_url()).unwrap();
        let upstream = format!("{}:{}", server.host_str().unwrap(), server.port().unwrap_or(3306));
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let swallow_next_commit = Arc::new(AtomicBool::new(false));
        let swallow = swallow_next_commit.clone();
        let accepting = tokio::spawn(async move {
            // dropped with the task: taking the proxy down ends every relay
            let mut relays = JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                relays.spawn(relay(client, upstream.clone(), swallow.clone()));
            }
        });
        MysqlProxy { port, swallow_next_commit, accepting }
    }

    /// The test database's URL through the proxy, in plain text so the proxy can read it.
    fn url(&self, database: &str) -> String {
        let mut url = url::Url::parse(&mysql_server_url()).unwrap();
        url.set_port(Some(self.port)).unwrap();
        url.set_path(database);
        url.set_query(Some("ssl-mode=DISABLED"));
        url.to_string()
    }

    fn swallow_next_commit(&self) {
        self.swallow_next_commit.store(true, Ordering::SeqCst);
    }

    /// Whether the armed COMMIT went through the proxy (its answer swallowed).
    fn swallowed(&self) -> bool {
        !self.swallow_next_commit.load(Ordering::SeqCst)
    }

    /// Closes every connection through the proxy and refuses new ones.
    fn take_down(&self) {
        self.accepting.abort();
    }
}

impl Drop for MysqlProxy {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

async fn relay(client: TcpStream, upstream: String, swallow: Arc<AtomicBool>) {
    let Ok(server) = TcpStream::connect(upstream).await else { return };
    let (mut client_in, mut client_out) = client.into_split();
    let (mut server_in, mut server_out) = server.into_split();
    let cut = Arc::new(AtomicBool::new(false));
    let cut_after = cut.clone();
    let up = async move {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n @ 1..) = client_in.read(&mut buf).await {
            // COM_QUERY (0x03) "COMMIT"
            let commit = buf[..n].windows(7).any(|w| w == b"\x03COMMIT");
            if commit && swallow.swap(false, Ordering::SeqCst) {
                cut.store(true, Ordering::SeqCst);
            }
            if server_out.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    };
    let down = async move {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n @ 1..) = server_in.read(&mut buf).await {
            // the server has carried the COMMIT out: drop its answer and the connection
            if cut_after.load(Ordering::SeqCst) || client_out.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    };
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}

/// `stock add` whose COMMIT reached MySQL and was carried out, but whose answer was lost: the
/// change is kept in Redis too, and the command succeeds. Moving Redis back on the failed
/// COMMIT, as if nothing had happened, would leave MySQL at 600 and Redis at 1000: 400 units
/// shoppers could reserve that MySQL would refuse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stock_change_whose_commit_answer_is_lost_stays_made_in_both_stores() {
    let env = TestEnv::new().await;
    env.stock(1, 1000).await;
    let proxy = MysqlProxy::start().await;
    proxy.swallow_next_commit();
    let out = env
        .command(&["stock", "add", "1", "-400"])
        .env("DATABASE_URL", proxy.url(&env.database))
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(proxy.swallowed(), "the COMMIT never went through the proxy; stderr: {stderr}");
    assert_eq!(out.status.code(), Some(0), "stderr: {stderr}");
    assert_eq!(env.mysql_stock(1).await, 600);
    assert_eq!(env.redis_stock(1).await, Some(600));
    env.assert_books_balance().await;
}

/// Moves product 1's Redis stock by `delta` as adjust.lua does; returns the change's seq.
async fn move_redis(env: &TestEnv, delta: i64) -> i64 {
    let mut redis = env.redis.clone();
    let _: i64 = redis.incr(env.key("stock:1"), delta).await.unwrap();
    redis.incr(env.key("seq"), 1).await.unwrap()
}

/// A connection with product 1's stock change `delta` (stamped `seq`) written in an open
/// transaction, as `stock add` leaves it when its COMMIT is sent; and its connection id.
async fn change_in_a_transaction(env: &TestEnv, delta: i64, seq: i64) -> (sqlx::MySqlConnection, u64) {
    let mut conn = sqlx::MySqlConnection::connect(env.settings.mysql.url.expose()).await.unwrap();
    let id: u64 = sqlx::query_scalar("SELECT CONNECTION_ID()").fetch_one(&mut conn).await.unwrap();
    sqlx::raw_sql("BEGIN").execute(&mut conn).await.unwrap();
    sqlx::query("UPDATE products SET stock = stock + ? WHERE id = 1")
        .bind(delta)
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("INSERT INTO stock_adjustments (seq, product_id, delta) VALUES (?, 1, ?)")
        .bind(seq)
        .bind(delta)
        .execute(&mut conn)
        .await
        .unwrap();
    (conn, id)
}

/// The decision after a failed COMMIT, against the real servers: a committed change is kept
/// (its connection still open, as when only the answer is lost); a change whose transaction
/// is still open is ended, found absent, and undone in Redis; and when MySQL cannot be reached
/// nothing is undone, the error says the outcome is unknown, and the check shows the drift.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settle_unknown_commit_asks_mysql_before_undoing_anything() {
    let env = TestEnv::new().await;
    env.stock(1, 1000).await;
    let within = Duration::from_secs(5);

    // Committed, answer lost.
    let seq = move_redis(&env, -400).await;
    let (mut conn, connection_id) = change_in_a_transaction(&env, -400, seq).await;
    sqlx::raw_sql("COMMIT").execute(&mut conn).await.unwrap();
    let change = UnconfirmedChange { product_id: 1, delta: -400, seq, connection_id };
    let outcome = settle_unknown_commit(&env.queue, &env.ledger, &change, within).await.unwrap();
    assert_eq!(outcome, CommitOutcome::Committed);
    assert_eq!((env.mysql_stock(1).await, env.redis_stock(1).await), (600, Some(600)));
    env.assert_books_balance().await;

    // Not committed, its transaction still open: ended, then undone.
    let seq = move_redis(&env, 300).await;
    let (mut conn, connection_id) = change_in_a_transaction(&env, 300, seq).await;
    let change = UnconfirmedChange { product_id: 1, delta: 300, seq, connection_id };
    let outcome = settle_unknown_commit(&env.queue, &env.ledger, &change, within).await.unwrap();
    assert_eq!(outcome, CommitOutcome::RolledBack);
    assert!(sqlx::raw_sql("COMMIT").execute(&mut conn).await.is_err(), "its connection was ended");
    assert_eq!((env.mysql_stock(1).await, env.redis_stock(1).await), (600, Some(600)));
    env.assert_books_balance().await;

    // MySQL out of reach: Redis keeps the change, the error says why, the check shows it.
    let proxy = MysqlProxy::start().await;
    let mut settings = env.settings.clone();
    settings.mysql.url =
        stockq::SecretUrl::parse("DATABASE_URL", &proxy.url(&env.database), &["mysql"]).unwrap();
    let unreachable = Ledger::connect(&settings, 1).await.unwrap();
    proxy.take_down();
    let seq = move_redis(&env, 50).await;
    let change = UnconfirmedChange { product_id: 1, delta: 50, seq, connection_id: u64::MAX };
    let started = Instant::now();
    let error = settle_unknown_commit(&env.queue, &unreachable, &change, Duration::from_secs(2))
        .await
        .unwrap_err()
        .to_string();
    assert!(started.elapsed() < Duration::from_secs(5), "gave up after {:?}", started.elapsed());
    assert!(error.contains("unknown") && error.contains("stockq check"), "{error}");
    println!("unknown outcome: {error}");
    assert!(!error.contains('\n'), "{error}");
    assert_eq!((env.mysql_stock(1).await, env.redis_stock(1).await), (600, Some(650)));
    let (code, stdout, _) = env.run(&["check"]).await;
    assert_eq!(code, 1, "{stdout}");
    let (code, _, stderr) = env.run(&["check", "--repair"]).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(env.redis_stock(1).await, Some(600));
}

// ---------------------------------------------------------------------------------------------
// MySQL down when a worker or janitor starts.

/// A worker and a janitor started while MySQL cannot be reached wait for it (as `serve` does)
/// instead of exiting; once it answers, the worker applies what waited, and both stop with 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_and_a_janitor_started_before_mysql_wait_for_it() {
    let env = TestEnv::new().await;
    env.stock(1, 10).await;
    env.reserve_ok(1, 1, "waiting").await;
    let port = free_port();
    let url = {
        let mut url = url::Url::parse(env.settings.mysql.url.expose()).unwrap();
        url.set_host(Some("127.0.0.1")).unwrap();
        url.set_port(Some(port)).unwrap();
        url.set_query(Some("ssl-mode=DISABLED"));
        url.to_string()
    };
    let spawn = |what: &str| {
        env.command(&[what])
            .env("DATABASE_URL", &url)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("spawn")
    };
    let (mut worker, mut janitor) = (spawn("worker"), spawn("janitor"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(worker.try_wait().unwrap().is_none(), "the worker waits for MySQL");
    assert!(janitor.try_wait().unwrap().is_none(), "the janitor waits for MySQL");
    let _proxy = MysqlProxy::start_on(port).await;
    env.eventually(Duration::from_secs(30), "the waiting event applied", || async {
        env.applied_units(1).await == 1
    })
    .await;
    assert_eq!(terminate(&mut worker).await, 0);
    assert_eq!(terminate(&mut janitor).await, 0);
    env.assert_books_balance().await;
}
