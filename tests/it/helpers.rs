//! Shared test helpers: a private queue and database per test, the stockq binary, and
//! readers for the books.

#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::process::Stdio;
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use stockq::Ledger;
use stockq::Queue;
use stockq::Settings;
use stockq::{StepOutcome, Worker, WorkerOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;

/// Redis used by the tests (override with STOCKQ_TEST_REDIS_URL).
pub fn redis_url() -> String {
    std::env::var("STOCKQ_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// MySQL server used by the tests, without a database (override with STOCKQ_TEST_MYSQL_URL).
pub fn mysql_server_url() -> String {
    std::env::var("STOCKQ_TEST_MYSQL_URL").unwrap_or_else(|_| "mysql://stockq:stockq@127.0.0.1:3306".into())
}

pub fn stockq_bin() -> &'static str {
    env!("CARGO_BIN_EXE_stockq")
}

/// A private queue and database, with connections to both. Dropping it removes both.
pub struct TestEnv {
    pub name: String,
    pub database: String,
    pub settings: Settings,
    pub queue: Queue,
    pub ledger: Ledger,
    pub redis: redis::aio::MultiplexedConnection,
    /// The test's own way into the database, to read the books and act behind stockq's back
    /// (change a row by hand, hold a row lock).
    pub mysql: sqlx::MySqlPool,
}

impl TestEnv {
    pub async fn new() -> TestEnv {
        Self::with(|_| {}).await
    }

    /// A fresh environment whose settings `tweak` may change (visibility timeout, ...).
    pub async fn with(tweak: impl FnOnce(&mut Settings)) -> TestEnv {
        // as the binary does in main, before anything connects
        stockq::install_tls_provider();
        let tag = format!("{:08x}", rand::random::<u32>());
        let name = format!("t{tag}");
        let database = format!("stockq_t{tag}");
        let mut settings =
            Settings::new(&redis_url(), &format!("{}/{database}", mysql_server_url()), &name).unwrap();
        tweak(&mut settings);
        stockq::migrate(&settings).await.expect("migrate (is scripts/services.sh run?)");
        let queue = Queue::connect(&settings).await.expect("redis");
        let ledger = Ledger::connect(&settings, 8).await.expect("mysql");
        let redis = test_redis(&redis_url()).await;
        let mysql = open_mysql(&settings).await;
        TestEnv { name, database, settings, queue, ledger, redis, mysql }
    }

    /// The test's queue as the (single) shard set that workers, checks and producers take.
    pub fn shards(&self) -> stockq::Shards {
        stockq::Shards::over(self.queue.clone(), &self.name, self.settings.redis.shards)
    }

    pub fn key(&self, suffix: &str) -> String {
        format!("{{{}}}:{suffix}", self.name)
    }

    /// The environment variables that point the binary at this test's queue and database.
    pub fn envs(&self) -> Vec<(&'static str, String)> {
        vec![
            ("REDIS_URL", self.settings.redis.url.expose().to_string()),
            ("DATABASE_URL", self.settings.mysql.url.expose().to_string()),
            ("STOCKQ_QUEUE", self.name.clone()),
            (
                "STOCKQ_VISIBILITY_TIMEOUT",
                format!("{}ms", self.settings.delivery.visibility_timeout.as_millis()),
            ),
            ("STOCKQ_MAX_ATTEMPTS", self.settings.delivery.max_attempts.to_string()),
            ("STOCKQ_JANITOR_INTERVAL", format!("{}ms", self.settings.janitor.interval.as_millis())),
            ("STOCKQ_CHECK_INTERVAL", format!("{}ms", self.settings.janitor.check_interval.as_millis())),
            ("STOCKQ_SHARDS", self.settings.redis.shards.to_string()),
            ("RUST_LOG", "warn".to_string()),
        ]
    }

    /// The stockq binary, pointed at this environment.
    pub fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(stockq_bin());
        cmd.args(args).envs(self.envs()).stdin(Stdio::null()).kill_on_drop(true);
        cmd
    }

    /// `stockq serve` on a free local port, with the environment `vars` added, once it listens.
    pub async fn serve(&self, vars: &[(&str, &str)]) -> (tokio::process::Child, u16) {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut cmd = self.command(&["serve"]);
        cmd.env("PORT", port.to_string()).env("STOCKQ_BIND", "127.0.0.1").stdout(Stdio::null());
        cmd.envs(vars.iter().copied());
        let mut child = cmd.spawn().expect("spawn serve");
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                return (child, port);
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("serve exited at start with {status}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("serve did not listen on {port}");
    }

    /// Runs the binary to completion: (exit status, stdout, stderr).
    pub async fn run(&self, args: &[&str]) -> (i32, String, String) {
        let out = tokio::time::timeout(Duration::from_secs(60), self.command(args).output())
            .await
            .expect("stockq did not finish within 60s")
            .expect("spawn stockq");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Sets a product's stock through stockq (both stores).
    pub async fn stock(&self, product: i64, qty: i64) {
        stockq::adjust(self.shards().for_product(product), &self.ledger, product, stockq::Change::Set(qty))
            .await
            .expect("stock set");
    }

    pub async fn redis_stock(&self, product: i64) -> Option<i64> {
        let mut c = self.redis.clone();
        c.get(self.key(&format!("stock:{product}"))).await.unwrap()
    }

    pub async fn mysql_stock(&self, product: i64) -> i64 {
        sqlx::query_scalar("SELECT stock FROM products WHERE id = ?")
            .bind(product)
            .fetch_one(&self.mysql)
            .await
            .unwrap()
    }

    pub async fn len(&self, list: &str) -> usize {
        let mut c = self.redis.clone();
        c.llen(self.key(list)).await.unwrap()
    }

    pub async fn list(&self, list: &str) -> Vec<Vec<u8>> {
        let mut c = self.redis.clone();
        c.lrange(self.key(list), 0, -1).await.unwrap()
    }

    /// stock_log rows: (applied count, rejected count).
    pub async fn log_counts(&self) -> (i64, i64) {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT CAST(status AS CHAR), COUNT(*) FROM stock_log GROUP BY status")
                .fetch_all(&self.mysql)
                .await
                .unwrap();
        let get = |s: &str| rows.iter().find(|(k, _)| k == s).map(|(_, n)| *n).unwrap_or(0);
        (get("applied"), get("rejected"))
    }

    /// Units applied per product according to stock_log.
    pub async fn applied_units(&self, product: i64) -> i64 {
        sqlx::query_scalar::<_, i64>(
            "SELECT CAST(COALESCE(SUM(qty), 0) AS SIGNED) FROM stock_log WHERE product_id = ? AND status = 'applied'",
        )
        .bind(product)
        .fetch_one(&self.mysql)
        .await
        .unwrap()
    }

    pub fn worker(&self, batch: usize) -> Worker {
        Worker::new(
            self.shards(),
            self.ledger.clone(),
            WorkerOptions { concurrency: 1, batch, wait: Duration::from_millis(100) },
        )
        .unwrap()
    }

    /// Runs worker steps (without blocking waits) until pending is empty; returns the reports.
    pub async fn drain(&self, batch: usize) -> Vec<stockq::BatchReport> {
        let worker = self.worker(batch);
        let token = CancellationToken::new();
        let mut reports = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match worker.step(None, &token).await.expect("worker step") {
                StepOutcome::Idle => break,
                StepOutcome::Batch(r) => reports.push(r),
            }
            assert!(Instant::now() < deadline, "drain did not finish within 60s");
        }
        reports
    }

    /// Polls `probe` every 50 ms until it returns true or `within` passes.
    pub async fn eventually<F, Fut>(&self, within: Duration, what: &str, mut probe: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let deadline = Instant::now() + within;
        while !probe().await {
            assert!(Instant::now() < deadline, "timed out after {within:?} waiting for: {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Asserts the stores agree for every product and the exact check finds no drift.
    pub async fn assert_books_balance(&self) {
        let report = stockq::check(&self.shards(), &self.ledger).await.unwrap();
        let drifts: Vec<_> = report.drifts().collect();
        assert!(drifts.is_empty(), "drift: {drifts:?}");
    }
}

/// A pool on the test's database, apart from stockq's.
pub async fn open_mysql(settings: &Settings) -> sqlx::MySqlPool {
    sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(4)
        .connect(settings.mysql.url.expose())
        .await
        .expect("the test's own MySQL pool")
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        let database = self.database.clone();
        // `{name}:*`, and a sharded queue's `{name:0}:*` ..
        let pattern = format!("{{{}[}}:]*", self.name);
        let redis_url = self.settings.redis.url.expose().to_string();
        let server = mysql_server_url();
        // Async cleanup from Drop (which also runs when a test panics): a thread of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                if let Ok(client) = redis::Client::open(redis_url)
                    && let Ok(mut c) = client.get_multiplexed_async_connection().await
                {
                    // SCAN, not KEYS: a developer's Redis may hold millions of keys, and KEYS
                    // would block it (and every benchmark running on it) while it walks them
                    let mut cursor = 0u64;
                    loop {
                        let Ok((next, keys)): redis::RedisResult<(u64, Vec<String>)> = redis::cmd("SCAN")
                            .arg(cursor)
                            .arg("MATCH")
                            .arg(&pattern)
                            .arg("COUNT")
                            .arg(10_000)
                            .query_async(&mut c)
                            .await
                        else {
                            break;
                        };
                        if !keys.is_empty() {
                            let _: redis::RedisResult<()> = c.del(keys).await;
                        }
                        if next == 0 {
                            break;
                        }
                        cursor = next;
                    }
                }
                use sqlx::Connection;
                if let Ok(mut conn) = sqlx::MySqlConnection::connect(&server).await {
                    // A failed test may leave a transaction open on the test's pool, whose
                    // runtime is blocked on this thread: give up on the metadata lock rather
                    // than hang (the database is then left behind, named stockq_t*).
                    let _ = sqlx::raw_sql("SET SESSION lock_wait_timeout = 5").execute(&mut conn).await;
                    let _ =
                        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS `{database}`")))
                            .execute(&mut conn)
                            .await;
                }
            });
        })
        .join();
    }
}

// ---- Helpers for recovery.rs and books.rs: claims, dead letters, processes. ----

impl TestEnv {
    /// The Redis server clock in unix ms: the clock claim deadlines are on.
    pub async fn redis_now_ms(&self) -> i64 {
        let mut c = self.redis.clone();
        let (secs, micros): (i64, i64) = redis::cmd("TIME").query_async(&mut c).await.unwrap();
        secs * 1000 + micros / 1000
    }

    /// Waits (bounded) until the Redis clock has passed `deadline_ms`, so a claim with that
    /// deadline has expired.
    pub async fn wait_past(&self, deadline_ms: i64) {
        let left = u64::try_from(deadline_ms - self.redis_now_ms().await).unwrap_or(0);
        let within = Duration::from_millis(left) + Duration::from_secs(10);
        self.eventually(within, "the Redis clock to pass a claim deadline", || async {
            self.redis_now_ms().await > deadline_ms
        })
        .await;
    }

    /// A janitor on this environment's queue and settings.
    pub fn janitor(&self) -> stockq::Janitor {
        stockq::Janitor::new(self.queue.clone(), self.ledger.clone(), self.settings.janitor)
    }

    /// Pushes a raw entry onto `{q}:pending` as a hand-written producer would.
    pub async fn push_raw(&self, entry: &[u8]) {
        let mut c = self.redis.clone();
        let _: i64 = c.lpush(self.key("pending"), entry).await.unwrap();
    }

    /// Reserves through the library and insists it was reserved; returns the sequence number.
    pub async fn reserve_ok(&self, product: i64, qty: i64, event_id: &str) -> i64 {
        match stockq::reserve(&self.queue, product, qty, event_id).await.unwrap() {
            stockq::Reservation::Reserved { seq, .. } => seq,
            other => panic!("reserve {event_id} ({product} x{qty}): {other:?}"),
        }
    }

    /// The dead-letter envelopes, parsed, newest first.
    pub async fn dead_letters(&self) -> Vec<serde_json::Value> {
        self.list("dead")
            .await
            .iter()
            .map(|raw| serde_json::from_slice(raw).expect("dead envelope is JSON"))
            .collect()
    }

    pub async fn zcard(&self, suffix: &str) -> usize {
        let mut c = self.redis.clone();
        c.zcard(self.key(suffix)).await.unwrap()
    }

    pub async fn hlen(&self, suffix: &str) -> usize {
        let mut c = self.redis.clone();
        c.hlen(self.key(suffix)).await.unwrap()
    }

    /// A field of a Redis hash as an integer (0 when missing).
    /// A reservation's record as field → value: the string record.lua writes
    /// (`version|state|product_id|qty|seq|reserved_at|updated_at|buyer|deadline|tally|epoch|envelope`,
    /// empty fields left out; one written before versions starts with its state), or a hash
    /// written before records were strings. Empty when there is none.
    pub async fn record_fields(&self, event_id: &str) -> std::collections::HashMap<String, String> {
        const FIELDS: [&str; 11] = [
            "state",
            "product_id",
            "qty",
            "seq",
            "reserved_at",
            "updated_at",
            "buyer",
            "deadline",
            "tally",
            "epoch",
            "envelope",
        ];
        let key = self.key(&format!("r:{event_id}"));
        let mut c = self.redis.clone();
        let kind: String = redis::cmd("TYPE").arg(&key).query_async(&mut c).await.unwrap();
        if kind == "hash" {
            return c.hgetall(&key).await.unwrap();
        }
        let text: Option<String> = c.get(&key).await.unwrap();
        let Some(text) = text else { return Default::default() };
        let (version, text) = match text.split_once('|') {
            Some((v, rest)) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => (Some(v), rest),
            _ => (None, text.as_str()),
        };
        FIELDS
            .iter()
            .zip(text.splitn(FIELDS.len(), '|'))
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .chain(version.map(|v| ("version".to_string(), v.to_string())))
            .collect()
    }

    pub async fn hget_i64(&self, suffix: &str, field: &[u8]) -> i64 {
        let mut c = self.redis.clone();
        let v: Option<i64> = c.hget(self.key(suffix), field).await.unwrap();
        v.unwrap_or(0)
    }

    /// Total stock_log rows.
    pub async fn log_rows(&self) -> i64 {
        sqlx::query_scalar("SELECT COUNT(*) FROM stock_log").fetch_one(&self.mysql).await.unwrap()
    }

    /// The stock_log status of one event id, if settled.
    pub async fn log_status(&self, event_id: &str) -> Option<String> {
        sqlx::query_scalar("SELECT CAST(status AS CHAR) FROM stock_log WHERE event_id = ?")
            .bind(event_id)
            .fetch_optional(&self.mysql)
            .await
            .unwrap()
    }

    /// Spawns `stockq <args>` in the background, pointed at this environment (killed on drop).
    pub fn spawn(&self, args: &[&str]) -> tokio::process::Child {
        self.command(args).stdout(Stdio::null()).stderr(Stdio::inherit()).spawn().expect("spawn stockq")
    }
}

/// Sends `signal` (e.g. "KILL", "TERM") to a process with kill(1).
pub fn send_signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid} failed");
}

/// SIGTERMs a child and waits (bounded) for it; returns its exit status.
pub async fn terminate(child: &mut tokio::process::Child) -> i32 {
    let pid = child.id().expect("child still running");
    send_signal(pid, "TERM");
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("process did not stop within 20s of SIGTERM")
        .expect("wait");
    status.code().unwrap_or(-1)
}

// ---- Helpers for faults.rs, security.rs and cluster.rs: a Redis of the test's own. ----

impl TestEnv {
    /// Like [`TestEnv::with`], but on the Redis at `url` (a private server the test starts,
    /// stops and restarts, or the comma-separated nodes of a cluster) instead of the shared
    /// one. `env.redis` connects to the first node named: on a cluster it serves that node's
    /// keys only, so use `env.shards()` and stockq's own functions for the queue there.
    pub async fn with_redis(url: &str, tweak: impl FnOnce(&mut Settings)) -> TestEnv {
        let redis_url = stockq::SecretUrl::parse("REDIS_URL", url, &["redis", "rediss"]).expect("redis url");
        let first = url.split(',').next().unwrap();
        let mut env = Self::with(|s| {
            s.redis.url = redis_url;
            tweak(s);
        })
        .await;
        env.redis = test_redis(first).await;
        env
    }
}

// ---- Outside tools, for metrics.rs, logs.rs and procfile.rs. ----

/// The path of an outside tool the tests drive (`promtool`, `honcho`): on PATH, or in the
/// virtualenv of scripts/tools.sh, which is run to install it when it is found in neither.
pub fn outside_tool(name: &str) -> std::path::PathBuf {
    static INSTALLING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let find = || {
        let venv = std::env::var_os("STOCKQ_TOOLS_VENV").map(std::path::PathBuf::from).or_else(|| {
            std::env::var_os("HOME").map(|home| std::path::Path::new(&home).join(".cache/stockq/venv"))
        });
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .chain(venv.map(|v| v.join("bin")))
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    };
    if let Some(found) = find() {
        return found;
    }
    let _one_at_a_time = INSTALLING.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(found) = find() {
        return found;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/tools.sh");
    let status = std::process::Command::new("bash").arg(script).arg(name).status();
    find().unwrap_or_else(|| {
        panic!("{name} is missing and `bash scripts/tools.sh {name}` did not install it ({status:?})")
    })
}

/// A port nobody listens on now, on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The value of one series (`name` or `name{labels}`, exactly as written) in Prometheus text.
pub fn series(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The tests' own Redis connection, to inspect and stage. Its answers may wait longer than
/// redis-rs's default 500 ms: on two cores busy with workers, a test reading a whole outcome
/// stream must not fail because the machine is slow.
pub(crate) async fn test_redis(url: &str) -> redis::aio::MultiplexedConnection {
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(10)));
    redis::Client::open(url).unwrap().get_multiplexed_async_connection_with_config(&config).await.unwrap()
}

// ---- The one HTTP client of the tests. ----
//
// Raw HTTP/1.1 over a socket of the test's own, so that a test can send what no library
// would (half a head, a malformed request line, a URI of a megabyte) and choose the address
// it connects from: loopback holds all of 127.0.0.0/8, so 127.0.0.2 and 127.0.0.3 are two
// clients to the server.

/// A request to stockq on 127.0.0.1:`port`, made with [`http`] (or [`Http::raw`]) and sent on
/// a new connection with [`Http::send`]. It says `Host: 127.0.0.1:<port>` and `Connection:
/// close` unless given its own.
#[derive(Debug, Clone)]
pub struct Http {
    port: u16,
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// The bytes to send instead of a request built from the above.
    raw: Option<Vec<u8>>,
    source: Option<IpAddr>,
}

/// A new request: `http(port, "GET", "/healthz").send().await`.
pub fn http(port: u16, method: &str, path: &str) -> Http {
    Http {
        port,
        method: method.to_string(),
        path: path.to_string(),
        headers: Vec::new(),
        body: Vec::new(),
        raw: None,
        source: None,
    }
}

impl Http {
    /// Exactly `bytes`, whatever they hold.
    pub fn raw(port: u16, bytes: &[u8]) -> Http {
        Http { raw: Some(bytes.to_vec()), ..http(port, "", "") }
    }

    /// One more header (a name given twice is sent twice).
    pub fn header(mut self, name: &str, value: &str) -> Http {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    pub fn headers(self, pairs: &[(&str, &str)]) -> Http {
        pairs.iter().fold(self, |request, (name, value)| request.header(name, value))
    }

    /// `Authorization: Bearer <token>`, when there is a token.
    pub fn bearer(self, token: Option<&str>) -> Http {
        match token {
            Some(token) => self.header("Authorization", &format!("Bearer {token}")),
            None => self,
        }
    }

    /// A JSON body, with its `Content-Type`.
    pub fn json(self, body: &str) -> Http {
        self.header("Content-Type", "application/json").body(body)
    }

    pub fn body(mut self, body: &str) -> Http {
        self.body = body.as_bytes().to_vec();
        self
    }

    /// Connects from `source` (a loopback address such as 127.0.0.2) instead of 127.0.0.1.
    pub fn source(mut self, source: IpAddr) -> Http {
        self.source = Some(source);
        self
    }

    /// The bytes this request sends.
    pub fn bytes(&self) -> Vec<u8> {
        if let Some(raw) = &self.raw {
            return raw.clone();
        }
        let given = |name: &str| self.headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
        let mut head = format!("{} {} HTTP/1.1\r\n", self.method, self.path);
        if !given("host") {
            head.push_str(&format!("Host: 127.0.0.1:{}\r\n", self.port));
        }
        if !given("connection") {
            head.push_str("Connection: close\r\n");
        }
        for (name, value) in &self.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str(&format!("Content-Length: {}\r\n\r\n", self.body.len()));
        [head.into_bytes(), self.body.clone()].concat()
    }

    /// Sends the request and reads the answer; panics when none comes within 10 s.
    pub async fn send(self) -> Answer {
        let what = format!("{} {} to port {}", self.method, self.path, self.port);
        self.try_send().await.unwrap_or_else(|| panic!("no answer to {what} within 10s"))
    }

    /// Sends the request and reads the answer: `None` when the connection is refused or
    /// closed before any answer, or none comes within 10 s. A server that answers before the
    /// request is all sent (and closes) is fine: the write error is ignored.
    pub async fn try_send(self) -> Option<Answer> {
        let exchange = async {
            let stream = connect(self.port, self.source).await.ok()?;
            let (mut read, mut write) = stream.into_split();
            let request = self.bytes();
            let writer = tokio::spawn(async move {
                let _ = write.write_all(&request).await;
                write
            });
            let answer = read_answer(&mut read, &mut Vec::new()).await;
            writer.abort();
            answer
        };
        tokio::time::timeout(Duration::from_secs(10), exchange).await.ok().flatten()
    }
}

/// A new connection to 127.0.0.1:`port`, from `source` when given (bound before connecting).
pub async fn connect(port: u16, source: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    if let Some(source) = source {
        socket.bind(SocketAddr::new(source, 0))?;
    }
    socket.connect(SocketAddr::from(([127, 0, 0, 1], port))).await
}

/// An answer: its status, its head as sent (status line and headers) and its body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl Answer {
    /// The body as JSON; panics, with the body, when it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{} body is not JSON ({e}): {:?}", self.status, self.text()))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The value of the header `name` (any case), if it is there.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|line| {
            let (n, value) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }

    /// An error answer as the README promises: `{"error": "..."}`, short whatever was sent.
    pub fn assert_json_error(&self, status: u16) {
        assert_eq!(self.status, status, "{} {}", self.head, self.text());
        assert!(self.body.len() <= 1024, "{} bytes of error body", self.body.len());
        assert_eq!(self.header("content-type"), Some("application/json"), "{}", self.head);
        let error = self.json();
        assert!(error["error"].as_str().is_some_and(|e| !e.is_empty()), "{error}");
    }
}

/// Reads one answer from `stream`, keeping what follows it in `buf` (for answers to
/// pipelined requests); `None` when the connection closes (or is reset) before any byte.
pub async fn read_answer(stream: &mut (impl AsyncReadExt + Unpin), buf: &mut Vec<u8>) -> Option<Answer> {
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let mut chunk = [0u8; 16 * 1024];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) if buf.is_empty() => return None,
            Ok(0) | Err(_) => {
                panic!("connection closed inside an answer: {:?}", String::from_utf8_lossy(buf))
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status line");
    let length: Option<usize> = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
        .map(|v| v.parse().unwrap());
    // without a length, a body ends with the connection (none at all after 204 and 304)
    let length = match (length, status) {
        (Some(length), _) => length,
        (None, 204 | 304) => 0,
        (None, _) => {
            let mut rest = Vec::new();
            let _ = stream.read_to_end(&mut rest).await;
            buf.extend_from_slice(&rest);
            buf.len() - head_end
        }
    };
    while buf.len() < head_end + length {
        let mut chunk = [0u8; 16 * 1024];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => panic!("connection closed inside a body"),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let body = buf[head_end..head_end + length].to_vec();
    buf.drain(..head_end + length);
    Some(Answer { status, head: head.trim_end().to_string(), body })
}

/// Whether the server has closed `stream` (reading gives an end or a reset).
pub async fn is_closed_by_server(stream: &mut TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(stream.read(&mut byte).await, Ok(0) | Err(_))
}
