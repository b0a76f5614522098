//! Shutdown, in one place.
//!
//! SIGTERM or SIGINT cancels one [`CancellationToken`] that every long-lived loop selects on:
//! workers stop claiming, finish and acknowledge what they hold, and return; the janitor
//! returns between passes. A second signal means "now": the process exits at once with status
//! 1 and whatever it held is recovered by the janitor one visibility timeout later.

use futures::StreamExt;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_tokio::Signals;
use tokio_util::sync::CancellationToken;

/// Installs the signal handlers and returns the token they cancel.
pub(crate) fn install() -> std::io::Result<CancellationToken> {
    let token = CancellationToken::new();
    let mut signals = Signals::new([SIGTERM, SIGINT])?;
    let cancel = token.clone();
    tokio::spawn(async move {
        if let Some(signal) = signals.next().await {
            tracing::info!(
                signal = signal_name(signal),
                "stopping: finishing what is held (signal again to exit at once)"
            );
            cancel.cancel();
        }
        if let Some(signal) = signals.next().await {
            eprintln!(
                "stockq: second {} received, exiting at once; held entries will be re-queued by the janitor",
                signal_name(signal)
            );
            std::process::exit(1);
        }
    });
    Ok(token)
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        SIGTERM => "SIGTERM",
        SIGINT => "SIGINT",
        _ => "signal",
    }
}
