//! Dead letters of webhooks: `webhooks list`, `webhooks replay`.

use crate::config::Settings;
use crate::error::{Error, Result};
use crate::queue::Shards;
use crate::relay;

/// `stockq webhooks list [--json] [--limit N]`: the newest N (0: every one).
pub(super) async fn list(settings: &Settings, json: bool, limit: usize) -> Result<u8> {
    let shards = Shards::connect(settings).await?;
    let (letters, total) = relay::dead_letters(&shards, limit).await?;
    if json {
        outln!("{}", serde_json::json!({"total": total, "dead": letters}));
        return Ok(0);
    }
    outln!("{total} dead deliveries");
    for l in &letters {
        let state = l.body.get("state").and_then(|s| s.as_str()).unwrap_or("?");
        outln!(
            "{} {state} attempts {} first_try {} died_at {} error {}",
            l.id,
            l.attempts,
            l.first_try,
            l.died_at,
            l.error
        );
    }
    Ok(0)
}

/// `stockq webhooks replay (--all | ID)`: exit 4 when ID names no dead delivery.
pub(super) async fn replay(settings: &Settings, id: Option<&str>) -> Result<u8> {
    if let Some(id) = id {
        crate::event::validate_event_id(id.split('@').next().unwrap_or(id))
            .map_err(|e| Error::usage(format!("{id:?} is not a delivery id: {e}")))?;
    }
    let shards = Shards::connect(settings).await?;
    let replayed = relay::replay(&shards, id).await?;
    let detail = format!("{}: {replayed} replayed", id.unwrap_or("all"));
    crate::admin::control::audit(&shards, &crate::admin::control::cli_who(), "webhooks replay", &detail)
        .await?;
    outln!("replayed {replayed}");
    Ok(if id.is_some() && replayed == 0 { 4 } else { 0 })
}
