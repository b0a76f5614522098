//! Security: a Redis ACL user limited to stockq's commands and one queue's keys, Redis over
//! TLS, MySQL over TLS (`ssl-mode` in `DATABASE_URL`) on a private MariaDB that requires it,
//! and `serve` against an attacker: wrong tokens that lock out their own address only, and
//! forwarded headers believed from trusted proxies only.

use std::net::{IpAddr, Ipv4Addr};
use std::process::Stdio;
use std::time::Duration;

use crate::helpers::{Answer, TestEnv, http, send_signal, terminate};

/// Removes the ACL user even when the test fails.
struct AclUser {
    name: String,
}

impl Drop for AclUser {
    fn drop(&mut self) {
        let _ = std::process::Command::new("redis-cli").args(["ACL", "DELUSER", &self.name]).output();
    }
}

#[tokio::test]
async fn an_acl_user_limited_to_the_queue_runs_every_command() {
    let env = TestEnv::new().await;
    let user = AclUser { name: format!("stockq_{}", env.name) };
    let mut c = env.redis.clone();
    let mut setuser = redis::cmd("ACL");
    setuser
        .arg("SETUSER")
        .arg(&user.name)
        .arg("on")
        .arg(">acl-secret")
        .arg("resetkeys")
        .arg(format!("~{{{}}}:*", env.name))
        .arg("resetchannels")
        .arg("-@all");
    for command in stockq::ACL_COMMANDS.split_whitespace() {
        setuser.arg(command);
    }
    let () = setuser.query_async(&mut c).await.expect("ACL SETUSER");
    let url = format!("redis://{}:acl-secret@127.0.0.1:6379", user.name);

    // the user really is confined: a key outside the queue is refused
    let mut limited =
        redis::Client::open(url.as_str()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let denied: redis::RedisResult<Option<String>> =
        redis::cmd("GET").arg("outside").query_async(&mut limited).await;
    let denied = denied.unwrap_err().to_string();
    assert!(denied.contains("no permissions"), "{denied}");

    let run = |args: &'static [&'static str]| {
        let mut cmd = env.command(args);
        cmd.env("REDIS_URL", &url);
        async move {
            let out = tokio::time::timeout(Duration::from_secs(30), cmd.output()).await.unwrap().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            assert!(!stderr.contains("acl-secret"), "password in output: {stderr}");
            (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), stderr)
        }
    };
    let (code, _, err) = run(&["stock", "set", "1", "50"]).await;
    assert_eq!(code, 0, "{err}");
    for _ in 0..20 {
        let (code, _, err) = run(&["reserve", "1", "1"]).await;
        assert_eq!(code, 0, "{err}");
    }
    let mut worker = env.command(&["worker", "--batch", "7"]);
    worker.env("REDIS_URL", &url).stdout(Stdio::null()).stderr(Stdio::piped());
    let mut worker = worker.spawn().unwrap();
    env.eventually(Duration::from_secs(30), "20 events applied by the ACL-limited worker", || async {
        env.log_counts().await.0 == 20 && env.len("processing").await == 0
    })
    .await;
    send_signal(worker.id().unwrap(), "TERM");
    let status = tokio::time::timeout(Duration::from_secs(30), worker.wait()).await.unwrap().unwrap();
    assert!(status.success());

    for args in [
        &["janitor", "--once"][..],
        &["check"][..],
        &["stats", "--json"][..],
        &["dead", "list"][..],
        &["check", "--repair"][..],
        &["reserve", "1", "1", "--event-id", "acl-1", "--buyer", "b"][..],
        &["reserve", "1", "1", "--event-id", "acl-1", "--buyer", "b"][..],
        &["status", "acl-1"][..],
        &["outcomes", "--count", "5"][..],
    ] {
        let (code, _, err) = run(args).await;
        assert_eq!(code, 0, "{args:?}: {err}");
    }
    assert_eq!(env.mysql_stock(1).await, 30);
    assert_eq!(env.redis_stock(1).await, Some(29), "acl-1 reserved once");
    env.assert_books_balance().await;
}

/// A redis-server with TLS only, on a private port, killed on drop.
struct TlsRedis {
    child: std::process::Child,
    dir: std::path::PathBuf,
    port: u16,
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Redis user set up from an earlier version's ACL list lacks the commands added since
/// (XTRIM, LTRIM; one missing at a time): acknowledging a batch then fails before it changes anything (entries still
/// in processing, records still queued, no outcome, no counter), and succeeds once the
/// user has the current list.
#[tokio::test]
async fn an_acl_without_the_newer_commands_fails_an_acknowledgement_before_it_changes_anything() {
    for missing in ["+xtrim", "+ltrim"] {
        acknowledge_without(missing).await;
    }
}

async fn acknowledge_without(missing: &str) {
    let env = TestEnv::new().await;
    let user = AclUser { name: format!("stockq_old_{}", env.name) };
    let mut c = env.redis.clone();
    let acl = |commands: Vec<&str>| {
        let mut setuser = redis::cmd("ACL");
        setuser.arg("SETUSER").arg(&user.name).arg("on").arg(">acl-secret").arg("resetkeys");
        setuser.arg(format!("~{{{}}}:*", env.name)).arg("resetchannels").arg("-@all");
        for command in commands {
            setuser.arg(command);
        }
        setuser
    };
    let old: Vec<&str> = stockq::ACL_COMMANDS.split_whitespace().filter(|c| *c != missing).collect();
    let () = acl(old).query_async(&mut c).await.expect("ACL SETUSER");
    let mut settings = env.settings.clone();
    settings.redis.url = stockq::SecretUrl::parse(
        "REDIS_URL",
        &format!("redis://{}:acl-secret@127.0.0.1:6379", user.name),
        &["redis"],
    )
    .unwrap();
    let limited = stockq::Queue::connect(&settings).await.expect("the limited user connects");

    env.stock(1, 10).await;
    for i in 0..3 {
        env.reserve_ok(1, 1, &format!("acl-old-{i}")).await;
    }
    let claim = env.queue.claim(10, None).await.unwrap();
    assert_eq!(claim.entries.len(), 3);
    let processing = env.list("processing").await;
    let worker = env.worker(10);
    let token = tokio_util::sync::CancellationToken::new();
    let err = worker.process(&limited, claim.clone(), &token).await.unwrap_err().to_string();
    assert!(err.contains("can't run this command"), "without {missing}: {err}");

    assert_eq!(env.list("processing").await, processing, "without {missing}: the batch is still held");
    let mut c = env.redis.clone();
    for i in 0..3 {
        let state = env.record_fields(&format!("acl-old-{i}")).await.remove("state");
        assert_eq!(state.as_deref(), Some("queued"), "without {missing}");
    }
    let outcomes: usize = redis::cmd("XLEN").arg(env.key("outcomes")).query_async(&mut c).await.unwrap();
    assert_eq!(outcomes, 0, "without {missing}: no outcome announced");
    let applied: Option<i64> =
        redis::AsyncCommands::hget(&mut c, env.key("counters"), "applied").await.unwrap();
    assert_eq!(applied, None, "without {missing}: no counter moved");

    // MySQL did apply the batch: once the user has the current list, its redelivery settles it
    let () = acl(stockq::ACL_COMMANDS.split_whitespace().collect()).query_async(&mut c).await.unwrap();
    let report = worker.process(&limited, claim, &token).await.unwrap();
    assert_eq!((report.redelivered, report.acknowledged), (3, 3), "{report:?}");
    assert_eq!(env.len("processing").await, 0);
    assert_eq!(env.log_counts().await, (3, 0));
    env.assert_books_balance().await;
}

async fn start_tls_redis() -> TlsRedis {
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let dir = std::env::temp_dir().join(format!("stockq-tls-{:08x}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), cert.signing_key.serialize_pem()).unwrap();
    for _ in 0..20 {
        let port = 40000 + rand::random::<u16>() % 10000;
        let child = std::process::Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port.to_string(), "--bind", "127.0.0.1"])
            .arg("--tls-cert-file")
            .arg(dir.join("cert.pem"))
            .arg("--tls-key-file")
            .arg(dir.join("key.pem"))
            .args(["--tls-auth-clients", "no", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server");
        let mut server = TlsRedis { child, dir: dir.clone(), port };
        let url = format!("rediss://127.0.0.1:{port}/#insecure");
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if server.child.try_wait().unwrap().is_some() {
                break; // port taken: try another
            }
            if let Ok(client) = redis::Client::open(url.as_str())
                && client.get_multiplexed_async_connection().await.is_ok()
            {
                return server;
            }
        }
        let _ = server.child.kill();
        std::mem::forget(std::mem::replace(&mut server.dir, std::path::PathBuf::new()));
    }
    panic!("could not start a TLS redis-server");
}

#[tokio::test]
async fn redis_over_tls() {
    stockq::install_tls_provider();
    let server = start_tls_redis().await;
    let env = TestEnv::with_redis(&format!("rediss://127.0.0.1:{}/#insecure", server.port), |_| {}).await;
    env.stock(1, 10).await;
    let (code, out, err) = env.run(&["reserve", "1", "3"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(!out.trim().is_empty());
    env.drain(10).await;
    assert_eq!(env.mysql_stock(1).await, 7);
    assert_eq!(env.redis_stock(1).await, Some(7));
    env.assert_books_balance().await;

    // without #insecure the self-signed certificate is refused, in one line
    let mut check = env.command(&["check"]);
    check.env("REDIS_URL", format!("rediss://127.0.0.1:{}", server.port));
    let out = check.output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("certificate"), "{stderr}");
    drop(env);
}

/// A private MariaDB that requires TLS from stockq's account, on a private port; killed and
/// removed on drop.
struct TlsMariaDb {
    child: std::process::Child,
    dir: std::path::PathBuf,
    port: u16,
}

impl Drop for TlsMariaDb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A CA, and a server certificate for 127.0.0.1 signed by it: (ca.pem, cert.pem, key.pem).
fn ca_and_server_cert() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "stockq test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, "127.0.0.1");
    let cert = params.signed_by(&key, &issuer).unwrap();
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}

fn start_tls_mariadb() -> TlsMariaDb {
    let dir = std::env::temp_dir().join(format!("stockq-mariadb-tls-{:08x}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir).unwrap();
    let (ca, cert, key) = ca_and_server_cert();
    std::fs::write(dir.join("ca.pem"), ca).unwrap();
    std::fs::write(dir.join("cert.pem"), cert).unwrap();
    std::fs::write(dir.join("key.pem"), key).unwrap();
    let as_root =
        std::process::Command::new("id").arg("-u").output().map(|o| o.stdout == b"0\n").unwrap_or(false);
    let user: &[&str] = if as_root { &["--user=root"] } else { &[] };
    let installed = std::process::Command::new("mariadb-install-db")
        .arg("--no-defaults")
        .args(user)
        .arg(format!("--datadir={}", dir.join("data").display()))
        .arg("--auth-root-authentication-method=normal")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("mariadb-install-db");
    assert!(installed.success(), "mariadb-install-db failed");
    let socket = dir.join("sock");
    for _ in 0..20 {
        let port = 33000 + rand::random::<u16>() % 2000;
        // /usr/sbin is not on every user's PATH
        let mariadbd = if std::path::Path::new("/usr/sbin/mariadbd").exists() {
            "/usr/sbin/mariadbd"
        } else {
            "mariadbd"
        };
        let mut child = std::process::Command::new(mariadbd)
            .arg("--no-defaults")
            .args(user)
            .arg(format!("--datadir={}", dir.join("data").display()))
            .arg(format!("--socket={}", socket.display()))
            .arg(format!("--port={port}"))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--ssl-ca={}", dir.join("ca.pem").display()))
            .arg(format!("--ssl-cert={}", dir.join("cert.pem").display()))
            .arg(format!("--ssl-key={}", dir.join("key.pem").display()))
            .arg(format!("--pid-file={}", dir.join("pid").display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mariadbd");
        let sql = |statement: &str| {
            std::process::Command::new("mariadb")
                .arg(format!("--socket={}", socket.display()))
                .args(["-uroot", "-e", statement])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false)
        };
        for _ in 0..100 {
            if child.try_wait().unwrap().is_some() || sql("SELECT 1") {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if child.try_wait().unwrap().is_none() && sql("SELECT 1") {
            // an account that can only connect over TLS (both host entries: see STACK.md)
            assert!(sql("DROP USER IF EXISTS ''@'localhost'; \
                 CREATE USER 'stockq'@'localhost' IDENTIFIED BY 'stockq' REQUIRE SSL; \
                 CREATE USER 'stockq'@'127.0.0.1' IDENTIFIED BY 'stockq' REQUIRE SSL; \
                 GRANT ALL ON `stockq%`.* TO 'stockq'@'localhost'; \
                 GRANT ALL ON `stockq%`.* TO 'stockq'@'127.0.0.1';"));
            return TlsMariaDb { child, dir, port };
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    panic!("could not start a private MariaDB with TLS");
}

/// Removes a queue's keys from the shared Redis even when the test fails.
struct QueueKeys(String);

impl Drop for QueueKeys {
    fn drop(&mut self) {
        let keys = std::process::Command::new("redis-cli")
            .args(["--scan", "--pattern", &format!("{{{}}}:*", self.0)])
            .output();
        if let Ok(keys) = keys {
            for key in String::from_utf8_lossy(&keys.stdout).lines() {
                let _ = std::process::Command::new("redis-cli").args(["DEL", key]).output();
            }
        }
    }
}

#[tokio::test]
async fn mysql_over_tls_with_ssl_mode_in_the_url() {
    let server = tokio::task::spawn_blocking(start_tls_mariadb).await.unwrap();
    let queue = format!("tls{:08x}", rand::random::<u32>());
    let _cleanup = QueueKeys(queue.clone());
    let ca = server.dir.join("ca.pem");
    let url =
        |mode: &str| format!("mysql://stockq:stockq@127.0.0.1:{}/stockq_tls?ssl-mode={mode}", server.port);
    let run = |database_url: String, args: &'static [&'static str]| {
        let queue = queue.clone();
        async move {
            let out = tokio::process::Command::new(crate::helpers::stockq_bin())
                .args(args)
                .env("REDIS_URL", crate::helpers::redis_url())
                .env("DATABASE_URL", database_url)
                .env("STOCKQ_QUEUE", queue)
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .output()
                .await
                .unwrap();
            (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
        }
    };
    let verify = format!("{}&ssl-ca={}", url("verify_ca"), ca.display());
    for (database_url, args) in [
        (url("required"), &["migrate"][..]),
        (url("required"), &["stock", "set", "1", "10"][..]),
        (verify.clone(), &["reserve", "1", "4"][..]),
        (verify.clone(), &["janitor", "--once"][..]),
    ] {
        let (code, err) = run(database_url, args).await;
        assert_eq!(code, 0, "{args:?}: {err}");
        assert!(!err.contains("stockq:stockq"), "credentials in output: {err}");
    }
    // the reservation is applied over TLS by a worker, and the books balance
    let mut worker = tokio::process::Command::new(crate::helpers::stockq_bin())
        .arg("worker")
        .env("REDIS_URL", crate::helpers::redis_url())
        .env("DATABASE_URL", &verify)
        .env("STOCKQ_QUEUE", &queue)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (code, _) = run(verify.clone(), &["check"]).await;
        let mut redis = redis::Client::open(crate::helpers::redis_url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let stock: Option<i64> =
            redis::cmd("GET").arg(format!("{{{queue}}}:stock:1")).query_async(&mut redis).await.unwrap();
        let pending: u64 =
            redis::cmd("LLEN").arg(format!("{{{queue}}}:pending")).query_async(&mut redis).await.unwrap();
        let processing: u64 =
            redis::cmd("LLEN").arg(format!("{{{queue}}}:processing")).query_async(&mut redis).await.unwrap();
        if code == 0 && stock == Some(6) && pending == 0 && processing == 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the worker did not apply the reservation over TLS");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    send_signal(worker.id().unwrap(), "TERM");
    assert!(tokio::time::timeout(Duration::from_secs(20), worker.wait()).await.unwrap().unwrap().success());
    let applied = std::process::Command::new("mariadb")
        .arg(format!("--socket={}", server.dir.join("sock").display()))
        .args(["-uroot", "-N", "-e", "SELECT stock FROM stockq_tls.products WHERE id = 1"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&applied.stdout).trim(), "6");

    // the account requires TLS: without it the server refuses, in one line, password hidden
    let (code, err) = run(url("disabled"), &["check"]).await;
    assert_eq!(code, 2, "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("Access denied") && err.contains("stockq:***@"), "{err}");
}

// ---- Issue 20.3: one client's wrong tokens lock out that client only. ----
//
// Loopback holds all of 127.0.0.0/8: a socket bound to 127.0.0.2 is another client to the
// server than one bound to 127.0.0.3.

const ATTACKER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
const OPERATOR: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));
const PROXY: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 4));
const ADMIN_TOKEN: &str = "operators-only";
const API_TOKEN: &str = "order-service-only";
/// Wrong tokens a client may try in a minute.
const MAX_FAILURES: usize = 10;

/// A dashboard login from `from`, with `token` and the extra `headers`, from the page's own
/// origin unless `headers` names another.
async fn log_in(port: u16, from: IpAddr, token: &str, headers: &[(&str, &str)]) -> Answer {
    let mut request = http(port, "POST", "/admin/login").source(from).headers(headers);
    if !headers.iter().any(|(name, _)| *name == "Origin") {
        request = request.header("Origin", &format!("http://127.0.0.1:{port}"));
    }
    request.json(&format!(r#"{{"token": "{token}"}}"#)).send().await
}

/// A 429 that says how long to wait: at most the minute.
fn assert_throttled(answer: &Answer) {
    answer.assert_json_error(429);
    assert!(answer.json()["error"].as_str().unwrap().starts_with("too many wrong tokens from this address"));
    let wait: u64 = answer.header("retry-after").expect("Retry-After").parse().unwrap();
    assert!((1..=60).contains(&wait), "Retry-After: {wait}");
}

/// Ten wrong logins from one address used to make the right token answer 429 for every
/// operator. Now they lock out their own address only, and there the right token too (or
/// the answer to the eleventh guess would still tell whether it was right).
#[tokio::test]
async fn wrong_logins_lock_out_their_own_address_only() {
    let env = TestEnv::new().await;
    let (mut serve, port) = env.serve(&[("STOCKQ_ADMIN_TOKEN", ADMIN_TOKEN)]).await;
    for _ in 0..MAX_FAILURES {
        assert_eq!(log_in(port, ATTACKER, "guess", &[]).await.status, 401);
    }
    assert_throttled(&log_in(port, ATTACKER, "guess", &[]).await);
    let operator = log_in(port, OPERATOR, ADMIN_TOKEN, &[]).await;
    assert_eq!(operator.status, 204, "{}", operator.text());
    assert_throttled(&log_in(port, ATTACKER, ADMIN_TOKEN, &[]).await);

    // guesses sent all at once are counted before any is compared: ten are tried, no more
    let burst = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 5));
    let guesses: Vec<_> = (0..3 * MAX_FAILURES)
        .map(|_| tokio::spawn(async move { log_in(port, burst, "guess", &[]).await }))
        .collect();
    let mut statuses = Vec::new();
    for guess in guesses {
        statuses.push(guess.await.unwrap().status);
    }
    statuses.sort();
    assert_eq!(statuses, [[401; MAX_FAILURES].as_slice(), &[429; 2 * MAX_FAILURES]].concat());
    terminate(&mut serve).await;
}

/// The order-service API's bearer token had no throttle at all (458 guesses in 2 s). Now it
/// has the login's: wrong tokens count per address, also on `POST /reserve`, whose answer to
/// a used event id tells the reservation's state to the right token only.
#[tokio::test]
async fn wrong_api_tokens_lock_out_their_own_address_only() {
    let env = TestEnv::new().await;
    env.stock(1, 10).await;
    let (mut serve, port) = env.serve(&[("STOCKQ_API_TOKEN", API_TOKEN)]).await;
    let status_of = |from: IpAddr, token: Option<&str>| {
        http(port, "GET", "/reservations/t-1").source(from).bearer(token).send()
    };
    // a reservation of 1 unit under t-1, then its id used again for 2
    let reserve = |from: IpAddr, token: Option<&str>, qty: u32| {
        let body = format!(r#"{{"product_id": 1, "qty": {qty}, "event_id": "t-1"}}"#);
        http(port, "POST", "/reserve").source(from).bearer(token).json(&body).send()
    };
    assert_eq!(reserve(OPERATOR, None, 1).await.status, 201);

    // no token guesses nothing, and is not counted
    for _ in 0..2 * MAX_FAILURES {
        assert_eq!(status_of(ATTACKER, None).await.status, 401);
    }
    for _ in 0..MAX_FAILURES {
        assert_eq!(status_of(ATTACKER, Some("guess")).await.status, 401);
    }
    assert_throttled(&status_of(ATTACKER, Some("guess")).await);
    assert_throttled(&status_of(ATTACKER, Some(API_TOKEN)).await);
    for action in ["confirm", "cancel"] {
        let path = format!("/reservations/t-1/{action}");
        let answer = http(port, "POST", &path).source(ATTACKER).bearer(Some(API_TOKEN)).send().await;
        assert_throttled(&answer);
    }
    let status = status_of(OPERATOR, Some(API_TOKEN)).await;
    assert_eq!((status.status, status.json()["state"].as_str()), (200, Some("queued")), "{}", status.text());
    // while throttled, a reservation goes on but the token is not believed
    let used = reserve(ATTACKER, Some(API_TOKEN), 2).await;
    assert_eq!((used.status, used.json()["error"].as_str()), (409, Some("event id already used")));
    assert_eq!(used.json().get("state"), None, "{}", used.text());
    let used = reserve(OPERATOR, Some(API_TOKEN), 2).await;
    assert_eq!((used.status, used.json()["state"].as_str()), (409, Some("queued")), "{}", used.text());

    // guesses through POST /reserve count as well
    let prober = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 6));
    for _ in 0..MAX_FAILURES {
        let used = reserve(prober, Some("guess"), 2).await;
        assert_eq!((used.status, used.json().get("state")), (409, None), "{}", used.text());
    }
    assert_throttled(&status_of(prober, Some(API_TOKEN)).await);
    assert_eq!(env.redis_stock(1).await, Some(9), "nothing taken but the first reservation");
    terminate(&mut serve).await;
}

/// `X-Forwarded-For`, `-Host` and `-Proto` used to be believed from anyone. Now only from a
/// peer in `STOCKQ_TRUSTED_PROXIES`; behind it, the client is the right-most address of
/// `X-Forwarded-For` that is not a trusted proxy (whatever is left of it, the client wrote).
#[tokio::test]
async fn forwarded_headers_count_only_from_a_trusted_proxy() {
    let env = TestEnv::new().await;
    let vars = [("STOCKQ_ADMIN_TOKEN", ADMIN_TOKEN), ("STOCKQ_TRUSTED_PROXIES", "127.0.0.4, 192.0.2.0/24")];
    let (mut serve, port) = env.serve(&vars).await;

    // from an untrusted peer, a new X-Forwarded-For each time does not make a new client
    for i in 0..MAX_FAILURES {
        let spoofed = format!("10.0.0.{i}");
        let answer = log_in(port, ATTACKER, "guess", &[("X-Forwarded-For", &spoofed)]).await;
        assert_eq!(answer.status, 401);
    }
    assert_throttled(&log_in(port, ATTACKER, ADMIN_TOKEN, &[("X-Forwarded-For", "10.0.0.99")]).await);

    // behind the trusted proxies (127.0.0.4, then 192.0.2.9), the client is 198.51.100.7,
    // whatever it wrote in front of its own address
    for i in 0..MAX_FAILURES {
        let chain = format!("6.6.6.{i}, 198.51.100.7, 192.0.2.9");
        let answer = log_in(port, PROXY, "guess", &[("X-Forwarded-For", &chain)]).await;
        assert_eq!(answer.status, 401);
    }
    let same_client = [("X-Forwarded-For", "1.1.1.1, 198.51.100.7, 192.0.2.9")];
    assert_throttled(&log_in(port, PROXY, ADMIN_TOKEN, &same_client).await);
    let next_client = [("X-Forwarded-For", "198.51.100.8, 192.0.2.9")];
    assert_eq!(log_in(port, PROXY, ADMIN_TOKEN, &next_client).await.status, 204);
    assert_eq!(log_in(port, PROXY, ADMIN_TOKEN, &[]).await.status, 204, "the proxy's own requests");

    // the host and scheme a proxy says the browser used
    let shop = [
        ("Origin", "https://shop.example"),
        ("X-Forwarded-Host", "shop.example"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-For", "198.51.100.9"),
    ];
    let from_anyone = log_in(port, OPERATOR, ADMIN_TOKEN, &shop).await;
    assert_eq!(from_anyone.status, 403, "{}", from_anyone.text());
    assert!(from_anyone.text().contains("own origin"), "{}", from_anyone.text());
    let proxied = log_in(port, PROXY, ADMIN_TOKEN, &shop).await;
    assert_eq!(proxied.status, 204, "{}", proxied.text());
    assert!(proxied.header("set-cookie").unwrap().ends_with("; Secure"), "{}", proxied.head);
    let https_claimed = log_in(port, OPERATOR, ADMIN_TOKEN, &[("X-Forwarded-Proto", "https")]).await;
    assert_eq!(https_claimed.status, 204);
    assert!(!https_claimed.header("set-cookie").unwrap().contains("Secure"), "{}", https_claimed.head);
    terminate(&mut serve).await;
}

/// A bad limit or proxy list stops `serve` before it starts: exit 2, one line on stderr that
/// names the setting and says what to write.
#[tokio::test]
async fn bad_connection_and_proxy_settings_exit_2_with_one_line() {
    let env = TestEnv::new().await;
    let cases = [
        (
            "STOCKQ_TRUSTED_PROXIES",
            "10.0.0.5,10.0.0.0/33",
            "STOCKQ_TRUSTED_PROXIES: \"10.0.0.0/33\" has a prefix length",
        ),
        (
            "STOCKQ_TRUSTED_PROXIES",
            "proxy.internal",
            "\"proxy.internal\" is not an IP address (write an IP address",
        ),
        ("STOCKQ_TRUSTED_PROXIES", "10.0.0.1/8", "write 10.0.0.0/8"),
        (
            "STOCKQ_MAX_CONNECTIONS_PER_ADDRESS",
            "2000",
            "STOCKQ_MAX_CONNECTIONS_PER_ADDRESS must be from 1 to STOCKQ_MAX_CONNECTIONS (1024)",
        ),
        ("STOCKQ_MAX_CONNECTIONS_PER_ADDRESS", "0", "STOCKQ_MAX_CONNECTIONS_PER_ADDRESS must be from 1"),
        ("STOCKQ_MAX_CONNECTIONS", "0", "STOCKQ_MAX_CONNECTIONS must be from 1 to 65536"),
        ("STOCKQ_MAX_CONNECTIONS_PER_ADDRESS", "many", "invalid value 'many'"),
    ];
    for (name, value, says) in cases {
        let mut serve = env.command(&["serve"]);
        serve.env(name, value).env("PORT", crate::helpers::free_port().to_string());
        let out = tokio::time::timeout(Duration::from_secs(30), serve.output()).await.unwrap().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}={value}: {stderr}");
        assert!(out.stdout.is_empty(), "{name}={value}");
        assert_eq!(stderr.lines().count(), 1, "{name}={value}: {stderr}");
        assert!(stderr.contains(says), "{name}={value}: {stderr}");
    }
}
