//! `stockq serve` over real sockets: error answers, timeouts and shutdown whatever clients
//! do, reservations without MySQL, and memory that stays flat when nobody scrapes /metrics.
//!
//! The clients are raw HTTP/1.1 over TCP (`helpers::http`), so that a test can send what no
//! library would: half a request head, a malformed request line, a URI of a megabyte.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{Http, TestEnv, connect, http, is_closed_by_server, read_answer, send_signal};

/// A running `stockq serve` on a free loopback port.
struct Server {
    child: tokio::process::Child,
    addr: SocketAddr,
}

impl Server {
    async fn start(env: &TestEnv) -> Server {
        Self::start_with(env, &[], Stdio::inherit()).await
    }

    async fn start_with(env: &TestEnv, extra: &[(&str, String)], stderr: Stdio) -> Server {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut cmd = env.command(&["serve"]);
        cmd.env("PORT", port.to_string())
            .env("STOCKQ_BIND", "127.0.0.1")
            .stdout(Stdio::null())
            .stderr(stderr);
        for (key, value) in extra {
            cmd.env(key, value);
        }
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

    fn port(&self) -> u16 {
        self.addr.port()
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

#[tokio::test]
async fn every_error_answer_is_short_json() {
    let env = TestEnv::new().await;
    env.stock(1, 10).await;
    let mut server = Server::start(&env).await;

    http(server.port(), "GET", "/nowhere").send().await.assert_json_error(404);
    http(server.port(), "GET", "/reserve").send().await.assert_json_error(405);
    http(server.port(), "POST", "/reserve").json("{not json").send().await.assert_json_error(400);
    http(server.port(), "POST", "/reserve").json(r#"{"product_id": 1}"#).send().await.assert_json_error(400);
    // an event id too long to be one is refused without being sent back whole
    let long_id = "x".repeat(10_000);
    let body = format!(r#"{{"product_id":1,"qty":1,"event_id":"{long_id}"}}"#);
    let answer = http(server.port(), "POST", "/reserve").json(&body).send().await;
    answer.assert_json_error(400);
    let bad_type = format!(r#"{{"product_id":"{long_id}","qty":1}}"#);
    http(server.port(), "POST", "/reserve").json(&bad_type).send().await.assert_json_error(400);
    http(server.port(), "GET", &format!("/stock/{}", &long_id[..5000])).send().await.assert_json_error(400);
    // a body of 1.5 MB is refused for its size
    let huge = format!(r#"{{"product_id":1,"qty":1,"event_id":"{}"}}"#, "y".repeat(1_500_000));
    http(server.port(), "POST", "/reserve").json(&huge).send().await.assert_json_error(413);

    // what the HTTP layer refuses before any route sees it
    let long_uri = format!("GET /{} HTTP/1.1\r\nHost: t\r\n\r\n", "u".repeat(10_000));
    Http::raw(server.port(), long_uri.as_bytes()).send().await.assert_json_error(414);
    let huge_uri = format!("GET /{} HTTP/1.1\r\nHost: t\r\n\r\n", "u".repeat(1_500_000));
    let answer = Http::raw(server.port(), huge_uri.as_bytes()).send().await;
    assert!(matches!(answer.status, 414 | 431), "{answer:?}");
    answer.assert_json_error(answer.status);
    let big_header = format!("GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n", "h".repeat(100_000));
    Http::raw(server.port(), big_header.as_bytes()).send().await.assert_json_error(431);
    Http::raw(server.port(), b"NOT A REQUEST\r\n\r\n").send().await.assert_json_error(400);
    Http::raw(server.port(), b"GET / HTTP/1.1\r\nBad Header\r\n\r\n").send().await.assert_json_error(400);

    // and the server still takes reservations
    let answer = http(server.port(), "POST", "/reserve").json(r#"{"product_id":1,"qty":2}"#).send().await;
    assert_eq!(answer.status, 201, "{}", answer.text());
    assert_eq!(answer.json()["remaining"], 8);
    assert_eq!(server.terminate(Duration::from_secs(10)).await.0, 0);
}

/// A request head that never completes, from `source` (127.0.0.1 by default).
async fn half_sent(port: u16, source: Option<IpAddr>) -> TcpStream {
    let mut stream = connect(port, source).await.unwrap();
    stream.write_all(b"POST /reserve HTTP/1.1\r\nHost: t\r\nContent-Le").await.unwrap();
    stream
}

#[tokio::test]
async fn sigterm_finishes_what_is_in_flight_and_exits_whatever_clients_hold() {
    let env = TestEnv::new().await;
    env.stock(1, 10).await;
    // every connection comes from 127.0.0.1, as from a shop's single proxy
    let all = [("STOCKQ_MAX_CONNECTIONS_PER_ADDRESS", "1024".to_string())];
    let mut server = Server::start_with(&env, &all, Stdio::inherit()).await;
    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(TcpStream::connect(server.addr).await.unwrap());
    }
    let mut half = Vec::new();
    for _ in 0..200 {
        half.push(half_sent(server.port(), None).await);
    }
    // a reservation whose body is still on its way when the signal comes
    let body = br#"{"product_id":1,"qty":1}"#;
    let mut in_flight = TcpStream::connect(server.addr).await.unwrap();
    let head = format!(
        "POST /reserve HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    in_flight.write_all(head.as_bytes()).await.unwrap();
    in_flight.write_all(&body[..5]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let started = Instant::now();
    send_signal(server.pid(), "TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(TcpStream::connect(server.addr).await.is_err(), "still accepting after SIGTERM");
    in_flight.write_all(&body[5..]).await.unwrap();
    let answer =
        read_answer(&mut in_flight, &mut Vec::new()).await.expect("the in-flight reservation's answer");
    assert_eq!(answer.status, 201, "{}", answer.text());

    let status = tokio::time::timeout(Duration::from_secs(10), server.child.wait())
        .await
        .expect("stockq serve still running 10s after SIGTERM")
        .unwrap();
    let took = started.elapsed();
    eprintln!("serve exited {took:?} after SIGTERM with 300 idle and 200 half-sent connections");
    assert_eq!(status.code(), Some(0));
    assert!(took < Duration::from_secs(10));
    for stream in idle.iter_mut().chain(half.iter_mut()) {
        assert!(is_closed_by_server(stream).await);
    }
}

#[tokio::test]
async fn half_sent_requests_are_cut_and_keep_alive_connections_are_not() {
    let env = TestEnv::new().await;
    env.stock(1, 10).await;
    let server = Server::start(&env).await;
    let mut kept = TcpStream::connect(server.addr).await.unwrap();
    let mut buf = Vec::new();
    let get = b"GET /stock/1 HTTP/1.1\r\nHost: t\r\n\r\n";
    kept.write_all(get).await.unwrap();
    assert_eq!(read_answer(&mut kept, &mut buf).await.unwrap().status, 200);
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    let mut half = half_sent(server.port(), None).await;

    let started = Instant::now();
    let within = Duration::from_secs(20);
    let half_cut = tokio::time::timeout(within, is_closed_by_server(&mut half)).await;
    assert_eq!(half_cut, Ok(true), "a half-sent request head was not cut");
    let silent_cut = tokio::time::timeout(within, is_closed_by_server(&mut silent)).await;
    assert_eq!(silent_cut, Ok(true), "a connection that sent nothing was not cut");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_secs(5), "cut after {waited:?}: too eager");
    // an idle keep-alive connection between two requests outlives the head timeout
    kept.write_all(get).await.unwrap();
    assert_eq!(read_answer(&mut kept, &mut buf).await.expect("the kept connection answers").status, 200);
}

/// A client that holds many connections: loopback holds all of 127.0.0.0/8, so a socket
/// bound to 127.0.0.2 is another client to the server than one bound to 127.0.0.3.
const HOG: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
const SHOPPER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));

/// Issue 20.4: about 1,100 half-sent requests from one address filled every connection, and
/// other shoppers waited 6 to 9 s. Now one address holds at most its cap (4 here, to keep the
/// test light; 256 by default), past which it is answered 503 at once, and another address is
/// answered within a second while it holds them.
#[tokio::test]
async fn one_address_holds_at_most_its_cap_and_others_are_answered_at_once() {
    const CAP: usize = 4;
    let env = TestEnv::new().await;
    env.stock(1, 10).await;
    let cap = [("STOCKQ_MAX_CONNECTIONS_PER_ADDRESS", CAP.to_string())];
    let mut server = Server::start_with(&env, &cap, Stdio::inherit()).await;
    let port = server.port();
    let mut held = Vec::new();
    for _ in 0..CAP {
        held.push(half_sent(port, Some(HOG)).await);
    }

    let started = Instant::now();
    let answer = http(port, "GET", "/stock/1").source(SHOPPER).send().await;
    let took = started.elapsed();
    assert_eq!((answer.status, answer.json()["stock"].as_i64()), (200, Some(10)), "{}", answer.text());
    assert!(took < Duration::from_secs(1), "another address waited {took:?}");

    // one more from the address that holds its cap: refused at once, and closed
    let started = Instant::now();
    let refused = http(port, "GET", "/stock/1").source(HOG).send().await;
    assert!(started.elapsed() < Duration::from_secs(1), "refused after {:?}", started.elapsed());
    refused.assert_json_error(503);
    assert_eq!(
        refused.json()["error"],
        "too many connections from this address; close some or try again later"
    );
    assert_eq!(refused.header("connection"), Some("close"));

    // the connections it holds are left as they are, and one closed makes room for another
    for stream in &mut held {
        let mut byte = [0u8; 1];
        let quiet = tokio::time::timeout(Duration::from_millis(50), stream.read(&mut byte)).await;
        assert!(quiet.is_err(), "a held connection was touched: {quiet:?}");
    }
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let answer = http(port, "GET", "/stock/1").source(HOG).send().await;
        if answer.status == 200 {
            break;
        }
        assert_eq!(answer.status, 503, "{}", answer.text());
        assert!(Instant::now() < deadline, "the closed connection's place was not given back within 5s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(server.terminate(Duration::from_secs(10)).await.0, 0);
}

/// A shop behind one proxy raises the cap of an address up to all the connections: then the
/// total still bounds them (6 here; 1,024 by default), and a connection past it waits in the
/// listen backlog until one closes, as before.
#[tokio::test]
async fn the_total_still_bounds_connections_when_one_address_may_take_them_all() {
    const TOTAL: usize = 6;
    let env = TestEnv::new().await;
    env.stock(1, 10).await;
    let limits = [
        ("STOCKQ_MAX_CONNECTIONS", TOTAL.to_string()),
        ("STOCKQ_MAX_CONNECTIONS_PER_ADDRESS", TOTAL.to_string()),
    ];
    let mut server = Server::start_with(&env, &limits, Stdio::inherit()).await;
    let port = server.port();
    let mut held = Vec::new();
    for _ in 0..TOTAL {
        held.push(half_sent(port, Some(HOG)).await);
    }
    let waiting = tokio::spawn(http(port, "GET", "/stock/1").source(SHOPPER).send());
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!waiting.is_finished(), "answered while every connection was held");
    drop(held.pop());
    let answer = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("no answer within 5s of a connection closing")
        .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(server.terminate(Duration::from_secs(10)).await.0, 0);
}

#[tokio::test]
async fn serve_takes_reservations_with_mysql_down_and_says_degraded() {
    let env = TestEnv::new().await;
    env.stock(1, 10).await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let down = format!("mysql://stockq:stockq@127.0.0.1:{closed}/{}", env.database);
    let mut server = Server::start_with(&env, &[("DATABASE_URL", down)], Stdio::piped()).await;

    let answer = http(server.port(), "POST", "/reserve").json(r#"{"product_id":1,"qty":3}"#).send().await;
    assert_eq!(answer.status, 201, "{}", answer.text());
    assert_eq!(env.redis_stock(1).await, Some(7));
    let health = http(server.port(), "GET", "/healthz").send().await;
    assert_eq!(health.status, 200, "{}", health.text());
    let health = health.json();
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(health["redis"], "ok", "{health}");
    assert_ne!(health["mysql"], "ok", "{health}");

    // the retries to reach MySQL do not flood the log
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(server.terminate(Duration::from_secs(10)).await.0, 0);
    let mut stderr = String::new();
    server.child.stderr.take().unwrap().read_to_string(&mut stderr).await.unwrap();
    let warnings = stderr.lines().filter(|l| l.contains("WARN")).count();
    assert!((1..=3).contains(&warnings), "{warnings} warnings in about 4s:\n{stderr}");
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
