//! `stockq serve` over real sockets: memory that stays flat when nobody scrapes /metrics.
//!
//! The clients are raw HTTP/1.1 over TCP, so that a test controls every byte it sends.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{TestEnv, send_signal};

/// A running `stockq serve` on a free port.
struct Server {
    child: tokio::process::Child,
    addr: SocketAddr,
}

impl Server {
    async fn start(env: &TestEnv) -> Server {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut cmd = env.command(&["serve"]);
        cmd.env("PORT", port.to_string()).stdout(Stdio::null()).stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("spawn stockq serve");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(addr).await.is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("stockq serve exited at start with {status}");
            }
            assert!(Instant::now() < deadline, "stockq serve did not listen within 20s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Server { child, addr }
    }

    fn pid(&self) -> u32 {
        self.child.id().expect("server still running")
    }

    /// Resident memory, in kB.
    fn rss_kb(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS");
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// SIGTERMs the server; (exit status, time it took to exit).
    async fn terminate(&mut self, within: Duration) -> (i32, Duration) {
        let started = Instant::now();
        send_signal(self.pid(), "TERM");
        let status = tokio::time::timeout(within, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("stockq serve still running {within:?} after SIGTERM"))
            .unwrap();
        (status.code().unwrap_or(-1), started.elapsed())
    }
}

struct Answer {
    status: u16,
}

/// Reads one answer from `stream`, keeping what follows it in `buf`; None on a clean EOF.
async fn read_answer(stream: &mut (impl AsyncReadExt + Unpin), buf: &mut Vec<u8>) -> Option<Answer> {
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
    let length: usize = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
        .map(|v| v.parse().unwrap())
        .expect("answers carry content-length");
    while buf.len() < head_end + length {
        let mut chunk = [0u8; 16 * 1024];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => panic!("connection closed inside a body"),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    buf.drain(..head_end + length);
    Some(Answer { status })
}

/// Requests to send in the flat-memory test (override with STOCKQ_TEST_HTTP_REQUESTS to
/// measure over millions by hand). Without the recorder's upkeep every reservation keeps
/// about 20 bytes, so 45,000 of them after the first quarter grow the server by about 900 kB,
/// well past the 512 kB the test allows; a debug build answers a few thousand a second.
fn flat_memory_requests() -> u64 {
    std::env::var("STOCKQ_TEST_HTTP_REQUESTS").ok().and_then(|n| n.parse().ok()).unwrap_or(60_000)
}

/// Requests written at once on a connection before reading their answers: fewer wake-ups for
/// the server, so more requests in the test's time.
const PIPELINED: u64 = 8;

/// Sends `requests` reservations over `connections` keep-alive connections, [`PIPELINED`] at
/// a time on each; returns how many were answered 201 or 409 (reserved, sold out).
async fn reserve_many(addr: SocketAddr, requests: u64, connections: u64) -> u64 {
    let body = r#"{"product_id":1,"qty":1}"#;
    let request = format!(
        "POST /reserve HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut tasks = Vec::new();
    for c in 0..connections {
        let share = requests / connections + u64::from(c < requests % connections);
        let request = request.clone();
        tasks.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            stream.set_nodelay(true).unwrap();
            let mut buf = Vec::new();
            let (mut sent, mut answered) = (0, 0);
            while sent < share {
                let burst = PIPELINED.min(share - sent);
                stream.write_all(request.repeat(burst as usize).as_bytes()).await.unwrap();
                sent += burst;
                for _ in 0..burst {
                    let answer = read_answer(&mut stream, &mut buf).await.expect("an answer");
                    answered += u64::from(matches!(answer.status, 201 | 409));
                }
            }
            answered
        }));
    }
    let mut answered = 0;
    for task in tasks {
        answered += task.await.unwrap();
    }
    answered
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_flat_when_nobody_scrapes_metrics() {
    let env = TestEnv::new().await;
    env.stock(1, 1000).await;
    let mut server = Server::start(&env).await;
    let requests = flat_memory_requests();
    let connections = 8;
    let started = Instant::now();
    let quarter = requests / 4;
    assert_eq!(reserve_many(server.addr, quarter, connections).await, quarter);
    let at_quarter = server.rss_kb();
    assert_eq!(reserve_many(server.addr, requests - quarter, connections).await, requests - quarter);
    let at_end = server.rss_kb();
    let took = started.elapsed();
    eprintln!(
        "{requests} reservations in {took:?} ({:.0}/s): RSS {at_quarter} kB at 25%, {at_end} kB at 100%",
        requests as f64 / took.as_secs_f64()
    );
    let growth_kb = at_end.saturating_sub(at_quarter);
    assert!(growth_kb < 512, "RSS grew {growth_kb} kB over {} unscraped requests", requests - quarter);
    assert_eq!(env.redis_stock(1).await, Some(0));
    assert_eq!(server.terminate(Duration::from_secs(10)).await.0, 0);
}
