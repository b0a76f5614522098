//! The processes of a deployment, as the Procfile names them: `migrate` (release), `serve`
//! (web), `worker` and `janitor`. The long-running ones stop on SIGTERM or SIGINT.

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::connect;
use crate::config::Settings;
use crate::error::{Error, Result};
use crate::janitor::Janitor;
use crate::ledger::{self, Ledger};
use crate::queue::Shards;
use crate::relay::{Relay, RelaySettings};
use crate::worker::{Worker, WorkerOptions};

/// `stockq migrate`
pub(super) async fn migrate(settings: &Settings) -> Result<u8> {
    ledger::migrate(settings).await?;
    outln!("migrated {}", settings.mysql.url);
    Ok(0)
}

/// `stockq worker`
pub(super) async fn worker(settings: &Settings, concurrency: usize, batch: usize) -> Result<u8> {
    let options = WorkerOptions { concurrency, batch, ..Default::default() };
    options.validate()?;
    let shutdown = install_signals()?;
    let shards = Shards::connect(settings).await?;
    let Some(ledger) = ledger_when_up(settings, concurrency as u32 + 2, &shutdown).await else {
        return Ok(0);
    };
    ledger.warm_up(concurrency as u32).await;
    let ops = start_ops(settings, &shards, &ledger, &shutdown);
    let worker = Worker::new(shards, ledger, options)?;
    worker.run(shutdown.clone()).await?;
    stop_ops(ops, &shutdown).await;
    Ok(0)
}

/// `stockq janitor [--once]`
pub(super) async fn janitor(settings: &Settings, once: bool) -> Result<u8> {
    if once {
        let (shards, ledger) = connect(settings, 3).await?;
        let janitor = Janitor::new(shards, ledger, settings.janitor);
        janitor.recover().await?;
        let report = janitor.check().await?;
        return Ok(if report.is_consistent() { 0 } else { 1 });
    }
    let shutdown = install_signals()?;
    let shards = Shards::connect(settings).await?;
    let Some(ledger) = ledger_when_up(settings, 3, &shutdown).await else { return Ok(0) };
    let janitor = Janitor::new(shards.clone(), ledger.clone(), settings.janitor);
    let ops = start_ops(settings, &shards, &ledger, &shutdown);
    janitor.run(shutdown.clone()).await?;
    stop_ops(ops, &shutdown).await;
    Ok(0)
}

/// `stockq relay`: needs Redis only.
pub(super) async fn relay(settings: &Settings, args: &super::RelayArgs) -> Result<u8> {
    let relay_settings =
        RelaySettings::new(&args.url, &args.secret, args.retry_for, args.concurrency, args.timeout)?;
    let shutdown = install_signals()?;
    let shards = Shards::connect(settings).await?;
    let ops = ops_addr(settings)
        .map(|addr| crate::http::health::spawn_relay_ops(addr, shards.clone(), shutdown.clone()));
    Relay::new(shards, relay_settings)?.reporting(ops.is_some()).run(shutdown.clone()).await?;
    stop_ops(ops, &shutdown).await;
    Ok(0)
}

/// MySQL once it answers: a worker or janitor started while MySQL is down (a deployment
/// whose database comes up last) waits for it, as `serve` does, instead of exiting. `None`
/// when `shutdown` came first.
async fn ledger_when_up(
    settings: &Settings,
    connections: u32,
    shutdown: &CancellationToken,
) -> Option<Ledger> {
    let mut backoff = crate::backoff::Backoff::new();
    loop {
        match Ledger::connect(settings, connections).await {
            Ok(ledger) => {
                backoff.reset();
                tracing::info!(redis = %settings.redis.url, mysql = %settings.mysql.url, "connected");
                return Some(ledger);
            }
            Err(e) => backoff.log(&e, "cannot reach MySQL yet; waiting for it"),
        }
        backoff.sleep(shutdown).await;
        if shutdown.is_cancelled() {
            return None;
        }
    }
}

/// `stockq serve`
pub(super) async fn serve(settings: &Settings) -> Result<u8> {
    crate::http::serve::run(settings, install_signals()?).await?;
    Ok(0)
}

/// The token that SIGTERM and SIGINT cancel (see `crate::shutdown`).
fn install_signals() -> Result<CancellationToken> {
    crate::shutdown::install().map_err(Error::Signals)
}

/// `/healthz` and `/metrics` of a worker or janitor, when `PORT` is set.
fn start_ops(
    settings: &Settings,
    shards: &Shards,
    ledger: &Ledger,
    shutdown: &CancellationToken,
) -> Option<JoinHandle<()>> {
    ops_addr(settings)
        .map(|addr| crate::http::health::spawn_ops(addr, shards.clone(), ledger.clone(), shutdown.clone()))
}

/// Where `/healthz` and `/metrics` listen: `STOCKQ_BIND`:`PORT`, when `PORT` is set.
fn ops_addr(settings: &Settings) -> Option<std::net::SocketAddr> {
    settings.http.port.map(|port| std::net::SocketAddr::new(settings.http.bind, port))
}

/// The endpoint answers until the process is done with its work, then stops with it.
async fn stop_ops(ops: Option<JoinHandle<()>>, shutdown: &CancellationToken) {
    if let Some(ops) = ops {
        shutdown.cancel();
        let _ = ops.await;
    }
}
