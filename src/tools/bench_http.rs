//! `stockq bench`'s HTTP run: `stockq serve` as its own process, loaded with `POST /reserve`
//! over keep-alive connections for a while; requests per second and latency percentiles.
//!
//! The load comes from this process, on the same machine as the server, Redis and MariaDB:
//! the figures include what the load generator takes from them, as with wrk
//! (`scripts/bench-http.sh`).

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpStream;

use crate::config::Settings;
use crate::error::{Error, Result};
use crate::ledger::Ledger;
use crate::queue::Shards;
use crate::tools::produce::Latency;

/// Products the requests spread over, and the stock of each (more than any run takes).
const PRODUCTS: i64 = 100;
const STOCK: i64 = 100_000_000;
/// How long `serve` may take to answer `/healthz` after it starts.
const STARTUP: Duration = Duration::from_secs(15);
/// Longest wait for one answer: past it, `serve` has stopped answering and the run fails.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

#[derive(Debug, Serialize)]
pub(crate) struct HttpRun {
    run: &'static str,
    connections: u64,
    seconds: f64,
    requests: u64,
    requests_per_s: f64,
    /// Answers other than 201 (none are expected: the stock outlasts the run).
    not_created: u64,
    latency: Latency,
    pub(crate) consistent: bool,
}

pub(crate) async fn http_run(
    settings: &Settings,
    shards: &Shards,
    ledger: &Ledger,
    duration: Duration,
    connections: u64,
) -> Result<HttpRun> {
    crate::tools::own::prepare(shards, ledger, PRODUCTS, STOCK).await?;
    let port = free_port()?;
    let mut serve = start_serve(settings, port)?;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    wait_until_up(addr).await?;
    let started = Instant::now();
    let until = started + duration;
    let loads: Vec<_> = (0..connections).map(|n| tokio::spawn(load(addr, until, n))).collect();
    let mut samples = Vec::new();
    let mut not_created = 0;
    for load in loads {
        let (mine, refused) = load.await.map_err(failed)??;
        samples.extend(mine);
        not_created += refused;
    }
    let seconds = started.elapsed().as_secs_f64();
    if let Some(pid) = serve.id() {
        let _ = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
    }
    let _ = tokio::time::timeout(Duration::from_secs(30), serve.wait()).await;
    // the reservations sit on pending, counted in flight: the books balance without workers
    let consistent = crate::check::check(shards, ledger).await?.is_consistent();
    crate::tools::own::reset(shards, ledger).await?;
    let requests = samples.len() as u64;
    Ok(HttpRun {
        run: "http",
        connections,
        seconds,
        requests,
        requests_per_s: requests as f64 / seconds.max(1e-9),
        not_created,
        latency: Latency::from_samples(samples),
        consistent,
    })
}

pub(crate) fn print_http(run: &HttpRun, json: bool) {
    if json {
        outln!("{}", serde_json::to_string(run).unwrap_or_default());
        return;
    }
    let l = &run.latency;
    outln!(
        "http: POST /reserve over {} keep-alive connections for {:.1}s: {:.0} req/s, p50/p99/p99.9 {}/{}/{}us{} {}",
        run.connections,
        run.seconds,
        run.requests_per_s,
        l.p50_us,
        l.p99_us,
        l.p999_us,
        if run.not_created > 0 { format!(", {} not 201", run.not_created) } else { String::new() },
        if run.consistent { "balanced" } else { "DRIFT" }
    );
}

/// A port nobody listens on now (the kernel's pick, released for `serve` to take).
fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map_err(|source| Error::Spawn { what: "find a free port for serve", source })?;
    Ok(listener.port())
}

fn start_serve(settings: &Settings, port: u16) -> Result<tokio::process::Child> {
    let exe =
        std::env::current_exe().map_err(|source| Error::Spawn { what: "find my own binary", source })?;
    tokio::process::Command::new(exe)
        .arg("serve")
        .env("REDIS_URL", settings.redis.url.expose())
        .env("DATABASE_URL", settings.mysql.url.expose())
        .env("STOCKQ_QUEUE", &settings.redis.queue)
        .env("STOCKQ_SHARDS", settings.redis.shards.to_string())
        .env("PORT", port.to_string())
        .env("STOCKQ_BIND", "127.0.0.1")
        // every benchmark connection comes from one address, as from one proxy
        .env("STOCKQ_MAX_CONNECTIONS_PER_ADDRESS", "1024")
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| Error::Spawn { what: "start serve", source })
}

async fn wait_until_up(addr: SocketAddr) -> Result<()> {
    let deadline = Instant::now() + STARTUP;
    loop {
        if let Ok(stream) = TcpStream::connect(addr).await
            && let Ok((mut sender, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
        {
            tokio::spawn(conn);
            let request = Request::get("/healthz").header("host", "localhost").body(Full::new(Bytes::new()));
            if let Ok(request) = request
                && let Ok(answer) = sender.send_request(request).await
                && answer.status().is_success()
            {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            let why = format!("no answer on {addr} within {}", humantime::format_duration(STARTUP));
            return Err(Error::Spawn { what: "start serve", source: std::io::Error::other(why) });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One keep-alive connection sending reservations one after another until `until`: the
/// latency of each, and how many were not answered 201.
async fn load(addr: SocketAddr, until: Instant, n: u64) -> Result<(Vec<u64>, u64)> {
    let connect_error = |e: std::io::Error| Error::Spawn { what: "connect to serve", source: e };
    let stream = TcpStream::connect(addr).await.map_err(connect_error)?;
    stream.set_nodelay(true).map_err(connect_error)?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(failed)?;
    tokio::spawn(conn);
    let mut samples = Vec::new();
    let mut not_created = 0;
    let mut i: u64 = 0;
    while Instant::now() < until {
        i += 1;
        let product = (n * 7919 + i) % PRODUCTS as u64 + 1;
        let body = format!(r#"{{"product_id":{product},"qty":1,"buyer":"buyer-{}"}}"#, (n << 20) + i);
        let request = Request::post("/reserve")
            .header("host", "localhost")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(failed)?;
        let sent = Instant::now();
        let status = tokio::time::timeout(ANSWER_WITHIN, async {
            let answer = sender.send_request(request).await.map_err(failed)?;
            let status = answer.status();
            answer.into_body().collect().await.map_err(failed)?;
            Ok::<_, Error>(status)
        })
        .await
        .map_err(|_| failed(format!("no answer within {}", humantime::format_duration(ANSWER_WITHIN))))??;
        samples.push(sent.elapsed().as_micros() as u64);
        if status.as_u16() != 201 {
            not_created += 1;
        }
    }
    Ok((samples, not_created))
}

/// A failure of the HTTP run, as one line: `cannot load serve over HTTP: <why>`.
fn failed(e: impl std::fmt::Display) -> Error {
    Error::Spawn { what: "load serve over HTTP", source: std::io::Error::other(e.to_string()) }
}
