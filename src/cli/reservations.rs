//! Following reservations: `status` of one, and the `outcomes` stream of all.

use std::time::Duration;

use super::connect;
use crate::config::Settings;
use crate::error::Result;
use crate::queue::{Cancel, Confirm, Queue, Shards, StreamEntry};
use crate::reservations::{self, Status};

/// Exit status of `status`, `confirm` and `cancel` for an event id neither store knows.
const EXIT_UNKNOWN_RESERVATION: u8 = 4;
/// Exit status of `confirm` for a reservation that has ended.
const EXIT_ENDED: u8 = 6;
/// How long one `--follow` wait blocks on a shard before looking at the next.
const FOLLOW_WAIT: Duration = Duration::from_secs(1);

/// `stockq status <event_id> [--json]`
pub(super) async fn status(settings: &Settings, event_id: &str, json: bool) -> Result<u8> {
    crate::event::validate_event_id(event_id).map_err(crate::error::Error::usage)?;
    let (shards, ledger) = connect(settings, 1).await?;
    let Some(status) = reservations::status(&shards, &ledger, event_id).await? else {
        eprintln!("stockq: unknown reservation {event_id}");
        return Ok(EXIT_UNKNOWN_RESERVATION);
    };
    if json {
        outln!("{}", serde_json::to_string(&status).unwrap_or_default());
    } else {
        outln!("{}", status_line(&status));
    }
    Ok(0)
}

/// `stockq confirm <event_id>`
pub(super) async fn confirm(settings: &Settings, event_id: &str) -> Result<u8> {
    let shards = Shards::connect(settings).await?;
    match reservations::confirm(&shards, event_id).await? {
        Confirm::Queued => outln!("{event_id} queued"),
        Confirm::Unchanged { state } => outln!("{event_id} {state} (already confirmed)"),
        Confirm::Ended { state } => {
            eprintln!("stockq: reservation ended: {event_id} is {state}; nothing confirmed");
            return Ok(EXIT_ENDED);
        }
        Confirm::Unknown => {
            eprintln!("stockq: unknown reservation {event_id}");
            return Ok(EXIT_UNKNOWN_RESERVATION);
        }
    }
    Ok(0)
}

/// `stockq cancel <event_id>`: prints the state the reservation is left in.
pub(super) async fn cancel(settings: &Settings, event_id: &str) -> Result<u8> {
    let (shards, ledger) = connect(settings, 1).await?;
    match reservations::cancel(&shards, &ledger, event_id).await? {
        Cancel::Done { state, changed: true } => outln!("{event_id} {state}"),
        Cancel::Done { state, changed: false } => outln!("{event_id} {state} (unchanged)"),
        Cancel::Unknown => {
            eprintln!("stockq: unknown reservation {event_id}");
            return Ok(EXIT_UNKNOWN_RESERVATION);
        }
    }
    Ok(0)
}

fn status_line(s: &Status) -> String {
    let mut line = format!("{} {} product {} qty {}", s.event_id, s.state, s.product_id, s.qty);
    if let Some(seq) = s.seq {
        line.push_str(&format!(" seq {seq}"));
    }
    if let Some(buyer) = &s.buyer {
        line.push_str(&format!(" buyer {buyer}"));
    }
    if let Some(deadline) = s.deadline {
        line.push_str(&format!(" deadline {deadline}"));
    }
    for (name, at) in [("reserved_at", s.reserved_at), ("updated_at", s.updated_at)] {
        if let Some(at) = at {
            line.push_str(&format!(" {name} {at}"));
        }
    }
    if let Some(version) = s.version {
        line.push_str(&format!(" version {version}"));
    }
    line
}

/// `stockq outcomes [--count N] [--follow] [--json]`: the latest `count` of every shard,
/// oldest first, then (with `follow`) new ones as they come, until interrupted.
pub(super) async fn outcomes(settings: &Settings, count: usize, follow: bool, json: bool) -> Result<u8> {
    let shards = Shards::connect(settings).await?;
    let mut latest = Vec::new();
    let mut after = Vec::with_capacity(shards.len());
    for queue in shards.all() {
        let entries = queue.latest_outcomes(count).await?;
        after.push(entries.first().map_or_else(|| "0-0".to_string(), |e| e.id.clone()));
        latest.extend(entries);
    }
    // several shards: interleave by the time of the outcome
    latest.sort_by_key(|e| e.get("at").and_then(|at| at.parse::<i64>().ok()).unwrap_or(0));
    let skip = latest.len().saturating_sub(count);
    for entry in &latest[skip..] {
        print_outcome(entry, json);
    }
    if follow {
        follow_outcomes(shards.all(), &mut after, json).await?;
    }
    Ok(0)
}

async fn follow_outcomes(queues: &[Queue], after: &mut [String], json: bool) -> Result<()> {
    let mut waiter = queues[0].waiter().await?;
    let wait = (FOLLOW_WAIT / queues.len() as u32).max(Duration::from_millis(100));
    loop {
        for (queue, last) in queues.iter().zip(after.iter_mut()) {
            for entry in queue.next_outcomes(&mut waiter, last, wait).await? {
                print_outcome(&entry, json);
                *last = entry.id;
            }
        }
    }
}

fn print_outcome(entry: &StreamEntry, json: bool) {
    if json {
        let mut object = serde_json::Map::new();
        object.insert("id".into(), entry.id.clone().into());
        for (k, v) in &entry.fields {
            let value = match k.as_str() {
                "product_id" | "qty" | "seq" | "reserved_at" | "at" => {
                    v.parse::<i64>().map_or_else(|_| v.clone().into(), Into::into)
                }
                _ => v.clone().into(),
            };
            object.insert(k.clone(), value);
        }
        outln!("{}", serde_json::Value::Object(object));
    } else {
        let fields: Vec<String> = entry.fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
        outln!("{} {}", entry.id, fields.join(" "));
    }
}
