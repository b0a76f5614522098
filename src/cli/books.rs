//! The books: `check` proves that Redis and MySQL agree, `stats` shows the queue and the
//! books at a glance.

use super::{connect, print};
use crate::admin::Page;
use crate::config::Settings;
use crate::error::Result;

/// `stockq check [--repair] [--json]`: exit 0 consistent, 1 drift; `run` turns an error
/// into 2 (could not run), as diff does.
pub(super) async fn check(settings: &Settings, repair: bool, json: bool) -> Result<u8> {
    let (shards, ledger) = connect(settings, 2).await?;
    let mut report = crate::check::check_confirmed(&shards, &ledger).await?;
    let mut repaired = 0;
    if repair && !report.is_consistent() {
        // the drift as found, then the books as the repair left them
        print::check(&report, json, false);
        repaired = crate::check::repair(&shards, &report).await?;
        let who = crate::admin::control::cli_who();
        crate::admin::control::audit(
            &shards,
            &who,
            "check repair",
            &format!("{repaired} product(s) repaired"),
        )
        .await?;
        report = crate::check::check_confirmed(&shards, &ledger).await?;
    }
    print::check(&report, json, true);
    if repair && repaired > 0 && !json {
        outln!("repaired {repaired} product(s) in Redis");
    }
    Ok(if report.is_consistent() { 0 } else { 1 })
}

/// `stockq stats [--json] [--limit N] [--offset N]`
pub(super) async fn stats(settings: &Settings, json: bool, page: Page) -> Result<u8> {
    let (shards, ledger) = connect(settings, 2).await?;
    let stats = crate::admin::stats::collect(&shards, &ledger, page).await?;
    if json {
        outln!("{}", serde_json::to_string(&stats).unwrap_or_default());
    } else {
        print::stats(&stats);
    }
    Ok(0)
}

/// `stockq pause` / `stockq resume`: every worker's claims, queue-wide.
pub(super) async fn pause(settings: &Settings, pause: bool) -> Result<u8> {
    let shards = crate::queue::Shards::connect(settings).await?;
    let who = crate::admin::control::cli_who();
    if pause {
        let now = crate::admin::control::pause_deductions(&shards, &who).await?;
        outln!(
            "{}",
            if now {
                "deductions paused: workers claim nothing until `stockq resume`"
            } else {
                "deductions were paused already"
            }
        );
    } else {
        let now = crate::admin::control::resume_deductions(&shards, &who).await?;
        outln!("{}", if now { "deductions resumed" } else { "deductions were not paused" });
    }
    Ok(0)
}

/// `stockq audit [--count N] [--json]`
pub(super) async fn audit(settings: &Settings, count: usize, json: bool) -> Result<u8> {
    let shards = crate::queue::Shards::connect(settings).await?;
    for entry in crate::admin::control::audit_entries(&shards, count).await? {
        if json {
            outln!("{}", serde_json::to_string(&entry).unwrap_or_default());
        } else {
            outln!(
                "{} {} {}: {}",
                print::utc_millis(entry.at.max(0) as u64),
                entry.who,
                entry.action,
                entry.detail
            );
        }
    }
    Ok(0)
}
