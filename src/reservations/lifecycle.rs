//! After `reserve`: a reservation's status (docs/outcomes.md), what `stockq status`, `reserve
//! --json` and the order-service API answer; and its confirm and its cancel
//! (docs/lifecycle.md).
//!
//! Redis keeps a record per reservation while it lives and `STOCKQ_RECORD_TTL` after it ended;
//! a reservation whose record is gone (expired, or made before records existed) is answered
//! from its `stock_log` row, which MySQL keeps for good.

use serde::Serialize;
use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::event::validate_event_id;
use crate::ledger::Ledger;
use crate::queue::{Cancel, Confirm, Forgotten, Record, Reservation, ReservationState, Shards};
use crate::telemetry::metrics as m;

/// The status object (docs/outcomes.md); times are unix ms on the Redis clock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Status {
    pub event_id: String,
    pub state: ReservationState,
    pub product_id: i64,
    pub qty: i64,
    pub seq: Option<i64>,
    pub buyer: Option<String>,
    pub deadline: Option<i64>,
    pub reserved_at: Option<i64>,
    pub updated_at: Option<i64>,
    /// Raised by every transition, 1 when made: of two statuses or outcomes of one
    /// reservation the higher version is the newer. `None` when the status comes from MySQL
    /// (the record expired; the state is final) or from a record written before versions.
    pub version: Option<i64>,
}

impl Status {
    fn from_record(event_id: &str, r: Record) -> Status {
        Status {
            event_id: event_id.to_string(),
            state: r.state,
            product_id: r.product_id,
            qty: r.qty,
            seq: r.seq,
            buyer: r.buyer,
            deadline: r.deadline,
            reserved_at: r.reserved_at,
            updated_at: r.updated_at,
            version: r.version,
        }
    }
}

/// The status of `event_id`: its record in whichever shard holds it, else its `stock_log`
/// row. `None` when neither store knows it.
pub async fn status(shards: &Shards, ledger: &Ledger, event_id: &str) -> Result<Option<Status>> {
    for queue in shards.all() {
        if let Some(record) = queue.record(event_id).await? {
            return Ok(Some(Status::from_record(event_id, record)));
        }
    }
    Ok(ledger.log_row(event_id).await?.map(|row| Status {
        event_id: event_id.to_string(),
        state: row.status,
        product_id: row.product_id,
        qty: row.qty,
        seq: row.seq,
        buyer: row.buyer,
        deadline: None,
        reserved_at: None,
        updated_at: Some(row.settled_at),
        version: None,
    }))
}

/// What was asked of a reservation, to render its answer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Asked<'a> {
    pub(crate) product_id: i64,
    pub(crate) qty: i64,
    pub(crate) buyer: Option<&'a str>,
}

/// The status object answering a reservation: with `remaining` when it was made now, with
/// `"replayed": true` when it had been made before. `None` for a refusal.
pub(crate) fn answer(asked: Asked<'_>, reservation: &Reservation) -> Option<Value> {
    let (event_id, seq, state, reserved_at, updated_at, deadline, version) = match reservation {
        Reservation::Reserved { event_id, seq, reserved_at, deadline, .. } => {
            let state = if deadline.is_some() { ReservationState::Held } else { ReservationState::Queued };
            (event_id, seq, state, reserved_at, reserved_at, deadline, Some(1))
        }
        Reservation::Replayed { event_id, seq, state, reserved_at, updated_at, deadline, version } => {
            (event_id, seq, state.clone(), reserved_at, updated_at, deadline, *version)
        }
        _ => return None,
    };
    let status = Status {
        event_id: event_id.clone(),
        state,
        product_id: asked.product_id,
        qty: asked.qty,
        seq: Some(*seq),
        buyer: asked.buyer.map(str::to_string),
        deadline: *deadline,
        reserved_at: Some(*reserved_at),
        updated_at: Some(*updated_at),
        version,
    };
    let mut object = serde_json::to_value(status).ok()?;
    match reservation {
        Reservation::Reserved { remaining, .. } => object["remaining"] = json!(remaining),
        _ => object["replayed"] = json!(true),
    }
    Some(object)
}

/// Confirms a held reservation (payment done), in whichever shard holds its record.
pub async fn confirm(shards: &Shards, event_id: &str) -> Result<Confirm> {
    validate_event_id(event_id).map_err(Error::usage)?;
    for queue in shards.all() {
        let answer = queue.confirm(event_id).await?;
        if answer != Confirm::Unknown {
            return Ok(answer);
        }
    }
    Ok(Confirm::Unknown)
}

/// Cancels a reservation in whatever state it is, in whichever shard holds its record; an
/// applied reservation whose record expired is released from its `stock_log` row.
pub async fn cancel(shards: &Shards, ledger: &Ledger, event_id: &str) -> Result<Cancel> {
    validate_event_id(event_id).map_err(Error::usage)?;
    for queue in shards.all() {
        let answer = queue.cancel(event_id, None).await?;
        if answer != Cancel::Unknown {
            count_cancel(&answer);
            return Ok(answer);
        }
    }
    let Some(row) = ledger.log_row(event_id).await? else { return Ok(Cancel::Unknown) };
    if row.status != ReservationState::Applied {
        // ended long ago: nothing to give back
        return Ok(Cancel::Done { state: row.status, changed: false });
    }
    let forgotten = Forgotten {
        product_id: row.product_id,
        qty: row.qty,
        seq: row.seq,
        buyer: row.buyer,
        limit_epoch: row.limit_epoch,
    };
    // the shard that delivered it holds its buyer's tally and orders its seq (a spread
    // product's bucket); rows from before shards were recorded came from the product's own
    let shard = row.shard.and_then(|s| shards.all().get(usize::try_from(s).ok()?));
    let queue = shard.unwrap_or_else(|| shards.for_product(row.product_id));
    let answer = queue.cancel(event_id, Some(forgotten)).await?;
    count_cancel(&answer);
    Ok(answer)
}

fn count_cancel(answer: &Cancel) {
    if let Cancel::Done { state, changed: true } = answer {
        metrics::counter!(m::CANCELS, "state" => state.to_string()).increment(1);
    }
}
