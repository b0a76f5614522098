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
    let (shards, ledger) = connect(settings, concurrency as u32 + 2).await?;
    tracing::info!(redis = %settings.redis.url, mysql = %settings.mysql.url, "connected");
    ledger.warm_up(concurrency as u32).await;
    let ops = start_ops(settings, &shards, &ledger, &shutdown);
    let worker = Worker::new(shards, ledger, options)?;
    worker.run(shutdown.clone()).await?;
    stop_ops(ops, &shutdown).await;
    Ok(0)
}

/// `stockq janitor [--once]`
pub(super) async fn janitor(settings: &Settings, once: bool) -> Result<u8> {
    let (shards, ledger) = connect(settings, 3).await?;
    let janitor = Janitor::new(shards.clone(), ledger.clone(), settings.janitor);
    if once {
        janitor.recover().await?;
        let report = janitor.check().await?;
        return Ok(if report.is_consistent() { 0 } else { 1 });
    }
    let shutdown = install_signals()?;
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
    let ops = settings
        .http
        .port
        .map(|port| crate::http::health::spawn_relay_ops(port, shards.clone(), shutdown.clone()));
    Relay::new(shards, relay_settings)?.run(shutdown.clone()).await?;
    stop_ops(ops, &shutdown).await;
    Ok(0)
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
    settings
        .http
        .port
        .map(|port| crate::http::health::spawn_ops(port, shards.clone(), ledger.clone(), shutdown.clone()))
}

/// The endpoint answers until the process is done with its work, then stops with it.
async fn stop_ops(ops: Option<JoinHandle<()>>, shutdown: &CancellationToken) {
    if let Some(ops) = ops {
        shutdown.cancel();
        let _ = ops.await;
    }
}
