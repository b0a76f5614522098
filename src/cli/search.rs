//! Finding reservations: `search`, `holds`.

use crate::admin::search;
use crate::config::Settings;
use crate::error::Result;
use crate::queue::Shards;

/// `stockq search <event_id> | --buyer B [--limit N] [--json]`: exit 4 when an event id is
/// unknown to both stores.
pub(super) async fn search(
    settings: &Settings,
    event_id: Option<&str>,
    buyer: Option<&str>,
    limit: usize,
    json: bool,
) -> Result<u8> {
    if let Some(buyer) = buyer {
        let shards = Shards::connect(settings).await?;
        let found = search::buyer(&shards, buyer, limit).await?;
        if json {
            outln!("{}", serde_json::to_string(&found).unwrap_or_default());
            return Ok(0);
        }
        outln!("buyer {buyer}: {} outcome(s), {} held", found.outcomes.len(), found.held.len());
        for (id, deadline) in &found.held {
            outln!("  {id} held until {}", super::print::utc_millis(*deadline as u64));
        }
        for o in &found.outcomes {
            outln!("  {}", outcome_line(o));
        }
        if !found.complete {
            outln!("(searched the newest {} outcomes of each shard)", search::SCAN_BUDGET);
        }
        return Ok(0);
    }
    let event_id = event_id.unwrap_or_default();
    let (shards, ledger) = super::connect(settings, 1).await?;
    let found = search::event(&shards, &ledger, event_id).await?;
    if json {
        outln!("{}", serde_json::to_string(&found).unwrap_or_default());
    } else {
        match &found.status {
            Some(s) => outln!("{event_id} {} product {} qty {}", s.state, s.product_id, s.qty),
            None => outln!("{event_id} unknown"),
        }
        outln!("  where: {}", found.place);
        for o in &found.outcomes {
            outln!("  {}", outcome_line(o));
        }
    }
    Ok(if found.status.is_none() { 4 } else { 0 })
}

fn outcome_line(o: &search::Outcome) -> String {
    let field = |name: &str| o.fields.get(name).and_then(|v| v.as_str()).unwrap_or("");
    let at = field("at").parse::<u64>().map(super::print::utc_millis).unwrap_or_default();
    let mut line = format!("{at} {} {} version {}", field("event_id"), field("state"), field("version"));
    if !field("reason").is_empty() {
        line.push_str(&format!(" ({})", field("reason")));
    }
    line
}

/// `stockq holds [--limit N] [--json]`
pub(super) async fn holds(settings: &Settings, limit: usize, json: bool) -> Result<u8> {
    let shards = Shards::connect(settings).await?;
    let (holds, total) = search::holds(&shards, limit).await?;
    if json {
        outln!("{}", serde_json::json!({"total": total, "holds": holds}));
        return Ok(0);
    }
    outln!("{total} held");
    for h in &holds {
        outln!(
            "  {} until {} product {} qty {}{}",
            h.event_id,
            super::print::utc_millis(h.deadline as u64),
            h.product_id.map_or("?".into(), |p| p.to_string()),
            h.qty.map_or("?".into(), |q| q.to_string()),
            h.buyer.as_deref().map(|b| format!(" buyer {b}")).unwrap_or_default()
        );
    }
    Ok(0)
}
