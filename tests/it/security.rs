//! Security: a Redis ACL user limited to stockq's commands and one queue's keys, and Redis
//! over TLS.

use std::process::Stdio;
use std::time::Duration;

use crate::helpers::{TestEnv, send_signal};

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
    for command in stockq::queue::ACL_COMMANDS.split_whitespace() {
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
    ] {
        let (code, _, err) = run(args).await;
        assert_eq!(code, 0, "{args:?}: {err}");
    }
    assert_eq!(env.mysql_stock(1).await, 30);
    assert_eq!(env.redis_stock(1).await, Some(30));
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
    stockq::config::install_tls_provider();
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
