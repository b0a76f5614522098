//! Procfile.dev under a real local Procfile runner (honcho, as `scripts/dev.sh` runs it): the
//! formation comes up (web, worker and janitor each answer `/healthz` on the port the runner
//! gives it), a reservation goes all the way through it, and SIGTERM takes it down cleanly,
//! every process stopping with status 0.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};

use crate::helpers::{TestEnv, free_port, http, outside_tool, send_signal, stockq_bin};

const REPO: &str = env!("CARGO_MANIFEST_DIR");

#[test]
fn procfile_dev_has_the_long_running_processes_and_no_release_step() {
    let procfile = std::fs::read_to_string(format!("{REPO}/Procfile.dev")).unwrap();
    let kinds: Vec<&str> = procfile
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once(':'))
        .map(|(k, _)| k)
        .collect();
    assert_eq!(kinds, ["web", "worker", "janitor"]);
}

#[tokio::test]
async fn the_dev_formation_comes_up_under_honcho_and_stops_cleanly_on_sigterm() {
    let env = TestEnv::new().await;
    env.stock(1, 10).await;
    // the runner gives each process kind its own PORT: base, base + 100, base + 200
    let base = loop {
        let port = free_port();
        let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
        if port < 65_000 && free(port + 100) && free(port + 200) {
            break port;
        }
    };
    let bin_dir = std::path::Path::new(stockq_bin()).parent().unwrap().to_path_buf();
    let path = std::env::join_paths(
        std::iter::once(bin_dir).chain(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())),
    )
    .unwrap();
    let mut honcho = tokio::process::Command::new(outside_tool("honcho"));
    honcho
        .args([
            "start",
            "--no-colour",
            "-f",
            &format!("{REPO}/Procfile.dev"),
            "-d",
            REPO,
            "-p",
            &base.to_string(),
        ])
        .envs(env.envs())
        .env("PATH", path)
        .env("STOCKQ_BIND", "127.0.0.1")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut honcho = honcho.spawn().expect("start honcho");
    let output = Arc::new(Mutex::new(Vec::<String>::new()));
    let readers = [
        collect_lines(honcho.stdout.take().unwrap(), output.clone()),
        collect_lines(honcho.stderr.take().unwrap(), output.clone()),
    ];
    let said = || output.lock().unwrap().join("\n");

    let started = Instant::now();
    for (kind, port) in [("web", base), ("worker", base + 100), ("janitor", base + 200)] {
        loop {
            // serve answers `degraded` until its background connection to MySQL is up
            if let Some(answer) = http(port, "GET", "/healthz").try_send().await
                && answer.status == 200
                && answer.json()["status"] == "ok"
            {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "{kind} answered no /healthz on {port} within 20s:\n{}",
                said()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let answer = http(base, "POST", "/reserve").json(r#"{"product_id": 1, "qty": 2}"#).send().await;
    assert_eq!(answer.status, 201, "{}", answer.text());
    env.eventually(Duration::from_secs(20), "the reservation applied by the formation's worker", || async {
        env.mysql_stock(1).await == 8
    })
    .await;

    send_signal(honcho.id().unwrap(), "TERM");
    let stopped = tokio::time::timeout(Duration::from_secs(15), honcho.wait())
        .await
        .unwrap_or_else(|_| panic!("honcho still running 15s after SIGTERM:\n{}", said()))
        .unwrap();
    for reader in readers {
        reader.await.unwrap();
    }
    let said = said();
    // honcho answers its own SIGTERM with 128 + 15, by design; what matters is each process
    assert_eq!(stopped.code(), Some(143), "{said}");
    for kind in ["web", "worker", "janitor"] {
        assert!(said.contains(&format!("{kind}.1 stopped (rc=0)")), "{kind} did not stop cleanly:\n{said}");
    }
    assert!(said.contains("worker stopped"), "{said}");
    env.assert_books_balance().await;
}

/// Collects the lines `from` a child's output into `into`, until it closes.
fn collect_lines(
    from: impl tokio::io::AsyncRead + Unpin + Send + 'static,
    into: Arc<Mutex<Vec<String>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut lines = BufReader::new(from).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            into.lock().unwrap().push(line);
        }
    })
}
