//! The stock event: one entry of the pending list (docs/redis-keys.md, "The event"), its
//! validation and the dead-letter envelope of an entry that fails it.
//!
//! Validation happens in the worker, before MySQL is touched: an entry that is not a valid
//! event is dead-lettered at once with a reason and never retried (docs/operations.md,
//! "Failure modes"), so a stream of garbage cannot stall the queue or burn attempts.

use base64::Engine as _;
use serde_json::{Map, Value, json};

/// The largest entry accepted, in bytes.
pub(crate) const MAX_ENTRY_BYTES: usize = 4096;
/// The largest quantity one event may carry.
pub(crate) const MAX_QTY: i64 = 1_000_000;
/// The longest event id.
pub(crate) const MAX_EVENT_ID_LEN: usize = 64;

/// A valid stock event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub event_id: String,
    pub product_id: i64,
    pub qty: i64,
    /// Stamped by the reservation script; absent for events pushed by hand.
    pub seq: Option<i64>,
    /// The buyer the reservation was made for, when one was given (and is a valid id).
    pub buyer: Option<String>,
    /// When the reservation was made (unix ms, Redis clock), as reserve.lua stamps it.
    pub reserved_at: Option<i64>,
    /// The epoch of the buyer limit the reservation counts against, when one does
    /// (`lua/includes/tally.lua`): kept in `stock_log`, so that a refund after the record
    /// expired still gives the buyer's units back.
    pub limit_epoch: Option<i64>,
}

impl Event {
    /// Parses and validates one list entry. The error is the reason stored in `{q}:dead`.
    pub fn parse(entry: &[u8]) -> Result<Event, String> {
        if entry.len() > MAX_ENTRY_BYTES {
            return Err(format!("entry is {} bytes; at most {MAX_ENTRY_BYTES} are allowed", entry.len()));
        }
        let text = std::str::from_utf8(entry).map_err(|_| "entry is not UTF-8".to_string())?;
        let value: Value = serde_json::from_str(text).map_err(|e| format!("entry is not JSON: {e}"))?;
        let Value::Object(fields) = value else {
            return Err("entry is not a JSON object".to_string());
        };
        let event_id = match fields.get("event_id") {
            None => return Err("event_id is missing".to_string()),
            Some(Value::String(id)) => id.clone(),
            Some(_) => return Err("event_id is not a string".to_string()),
        };
        validate_event_id(&event_id)?;
        let product_id =
            integer_field(&fields, "product_id")?.ok_or_else(|| "product_id is missing".to_string())?;
        validate_product_id(product_id)?;
        let qty = integer_field(&fields, "qty")?.ok_or_else(|| "qty is missing".to_string())?;
        validate_qty(qty)?;
        let seq = integer_field(&fields, "seq")?;
        if seq.is_some_and(|s| s < 0) {
            return Err("seq is negative".to_string());
        }
        // informative only: a malformed one is ignored, never a reason to dead-letter
        let buyer = match fields.get("buyer") {
            Some(Value::String(b)) if validate_buyer(b).is_ok() => Some(b.clone()),
            _ => None,
        };
        let reserved_at = fields.get("at").and_then(Value::as_i64);
        // a limit counts a buyer: without one, the epoch would give units back to nobody
        let limit_epoch =
            fields.get("limit_epoch").and_then(Value::as_i64).filter(|e| *e >= 0 && buyer.is_some());
        Ok(Event { event_id, product_id, qty, seq, buyer, reserved_at, limit_epoch })
    }
}

/// An event id: 1 to 64 characters of `[A-Za-z0-9._:-]`.
pub(crate) fn validate_event_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= MAX_EVENT_ID_LEN
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!("event_id {} is not 1 to 64 characters of [A-Za-z0-9._:-]", quote(id)))
    }
}

/// A value that failed validation, as an error may quote it: at most its first 64
/// characters and an ellipsis (docs/http-api.md "Errors"), so that an answer never grows
/// with what a client sent.
fn quote(value: &str) -> String {
    match value.char_indices().nth(MAX_EVENT_ID_LEN) {
        Some((at, _)) => format!("{:?}…", &value[..at]),
        None => format!("{value:?}"),
    }
}

/// A buyer id: 1 to 64 characters of `[A-Za-z0-9._:-]`, like an event id.
pub(crate) fn validate_buyer(buyer: &str) -> Result<(), String> {
    validate_event_id(buyer)
        .map_err(|_| format!("buyer {} is not 1 to 64 characters of [A-Za-z0-9._:-]", quote(buyer)))
}

pub(crate) fn validate_product_id(product_id: i64) -> Result<(), String> {
    if product_id > 0 { Ok(()) } else { Err(format!("product_id {product_id} is not a positive integer")) }
}

pub(crate) fn validate_qty(qty: i64) -> Result<(), String> {
    if (1..=MAX_QTY).contains(&qty) {
        Ok(())
    } else {
        Err(format!("qty {qty} is out of range 1..={MAX_QTY}"))
    }
}

/// An optional integer field; `null` counts as absent, any other non-integer is an error.
fn integer_field(fields: &Map<String, Value>, name: &str) -> Result<Option<i64>, String> {
    match fields.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match (n.as_i64(), n.is_f64()) {
            (Some(v), _) => Ok(Some(v)),
            (None, true) => Err(format!("{name} is not an integer")),
            (None, false) => Err(format!("{name} does not fit in a signed 64-bit integer")),
        },
        Some(_) => Err(format!("{name} is not a number")),
    }
}

/// The JSON envelope stored in `{q}:dead` (docs/redis-keys.md). An entry that is not UTF-8
/// is kept exactly, as `entry_base64`.
pub(crate) fn dead_envelope(entry: &[u8], reason: &str, attempts: u64, failed_at_ms: u64) -> String {
    let mut envelope = json!({
        "reason": reason,
        "attempts": attempts,
        "failed_at": failed_at_ms,
    });
    match std::str::from_utf8(entry) {
        Ok(text) => envelope["entry"] = Value::String(text.to_string()),
        Err(_) => {
            envelope["entry_base64"] = Value::String(base64::engine::general_purpose::STANDARD.encode(entry))
        }
    }
    envelope.to_string()
}

/// A dead-letter envelope read back from `{q}:dead`.
#[derive(Debug, Clone)]
pub(crate) struct DeadLetter {
    /// The envelope exactly as stored (the handle for requeue and drop).
    pub(crate) raw: Vec<u8>,
    /// The original entry, decoded.
    pub(crate) entry: Vec<u8>,
    pub(crate) reason: String,
    pub(crate) attempts: u64,
    pub(crate) failed_at_ms: u64,
}

impl DeadLetter {
    /// Reads an envelope; `None` when it is not one stockq wrote.
    pub(crate) fn parse(raw: &[u8]) -> Option<DeadLetter> {
        let value: Value = serde_json::from_slice(raw).ok()?;
        let entry = match (value.get("entry"), value.get("entry_base64")) {
            (Some(Value::String(s)), _) => s.as_bytes().to_vec(),
            (_, Some(Value::String(b))) => base64::engine::general_purpose::STANDARD.decode(b).ok()?,
            _ => return None,
        };
        Some(DeadLetter {
            raw: raw.to_vec(),
            entry,
            reason: value.get("reason").and_then(Value::as_str).unwrap_or("").to_string(),
            attempts: value.get("attempts").and_then(Value::as_u64).unwrap_or(0),
            failed_at_ms: value.get("failed_at").and_then(Value::as_u64).unwrap_or(0),
        })
    }

    /// The event the entry holds, if it is a valid one.
    pub(crate) fn event(&self) -> Option<Event> {
        Event::parse(&self.entry).ok()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn an_error_quotes_at_most_64_characters_of_a_bad_value() {
        let long = "b".repeat(5000);
        let message = validate_buyer(&format!("{long}!")).unwrap_err();
        assert!(message.len() < 140, "{message}");
        assert!(message.starts_with(&format!("buyer \"{}\"…", "b".repeat(64))), "{message}");
        let message = validate_event_id(&long).unwrap_err();
        assert!(message.len() < 140, "{message}");
        assert_eq!(
            validate_event_id("a b").unwrap_err(),
            "event_id \"a b\" is not 1 to 64 characters of [A-Za-z0-9._:-]"
        );
    }

    #[test]
    fn parses_a_stamped_event_and_ignores_other_fields() {
        let e = Event::parse(br#"{"event_id":"o-1","product_id":42,"qty":3,"seq":7,"x":[1]}"#).unwrap();
        assert_eq!(
            e,
            Event {
                event_id: "o-1".into(),
                product_id: 42,
                qty: 3,
                seq: Some(7),
                buyer: None,
                reserved_at: None,
                limit_epoch: None,
            }
        );
        let e = Event::parse(br#"{"event_id":"o-1","product_id":42,"qty":3}"#).unwrap();
        assert_eq!(e.seq, None);
        let limited =
            br#"{"event_id":"o-1","product_id":4,"qty":1,"seq":7,"buyer":"b","limit_epoch":2,"at":5}"#;
        assert_eq!(Event::parse(limited).unwrap().limit_epoch, Some(2));
        // an epoch counts a buyer's units: without a buyer there is none to give back
        let no_buyer = br#"{"event_id":"o-1","product_id":4,"qty":1,"seq":7,"limit_epoch":2}"#;
        assert_eq!(Event::parse(no_buyer).unwrap().limit_epoch, None);
    }

    #[test]
    fn names_what_is_wrong() {
        let cases: &[(&[u8], &str)] = &[
            (b"not json", "not JSON"),
            (b"\xff\xfe", "not UTF-8"),
            (b"[1,2]", "not a JSON object"),
            (br#"{"product_id":1,"qty":1}"#, "event_id is missing"),
            (br#"{"event_id":7,"product_id":1,"qty":1}"#, "event_id is not a string"),
            (br#"{"event_id":"a b","product_id":1,"qty":1}"#, "is not 1 to 64"),
            (br#"{"event_id":"a","qty":1}"#, "product_id is missing"),
            (br#"{"event_id":"a","product_id":"1","qty":1}"#, "product_id is not a number"),
            (br#"{"event_id":"a","product_id":1.5,"qty":1}"#, "product_id is not an integer"),
            (br#"{"event_id":"a","product_id":0,"qty":1}"#, "not a positive integer"),
            (br#"{"event_id":"a","product_id":9223372036854775808,"qty":1}"#, "does not fit"),
            (br#"{"event_id":"a","product_id":1,"qty":0}"#, "out of range"),
            (br#"{"event_id":"a","product_id":1,"qty":1000001}"#, "out of range"),
            (br#"{"event_id":"a","product_id":1,"qty":1,"seq":-1}"#, "seq is negative"),
        ];
        for (entry, want) in cases {
            let err = Event::parse(entry).unwrap_err();
            assert!(err.contains(want), "{:?}: {err}", String::from_utf8_lossy(entry));
        }
        let big = format!(r#"{{"event_id":"a","product_id":1,"qty":1,"pad":"{}"}}"#, "x".repeat(5000));
        assert!(Event::parse(big.as_bytes()).unwrap_err().contains("at most 4096"));
    }

    #[test]
    fn envelopes_keep_the_entry_exactly() {
        for entry in [&b"plain text"[..], &b"\xff\x00binary"[..]] {
            let env = dead_envelope(entry, "why", 3, 1234);
            let dl = DeadLetter::parse(env.as_bytes()).unwrap();
            assert_eq!(dl.entry, entry);
            assert_eq!((dl.reason.as_str(), dl.attempts, dl.failed_at_ms), ("why", 3, 1234));
        }
        assert!(dead_envelope(b"\xff", "r", 0, 0).contains("entry_base64"));
    }

    proptest! {
        #[test]
        fn valid_events_round_trip(
            id in "[A-Za-z0-9._:-]{1,64}",
            product in 1i64..=i64::MAX,
            qty in 1i64..=MAX_QTY,
            seq in proptest::option::of(0i64..=i64::MAX),
        ) {
            let mut v = json!({"event_id": id, "product_id": product, "qty": qty});
            if let Some(s) = seq { v["seq"] = json!(s); }
            let e = Event::parse(v.to_string().as_bytes()).unwrap();
            prop_assert_eq!(e, Event { event_id: id, product_id: product, qty, seq, buyer: None, reserved_at: None, limit_epoch: None });
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = Event::parse(&bytes);
            let env = dead_envelope(&bytes, "r", 1, 2);
            prop_assert_eq!(DeadLetter::parse(env.as_bytes()).unwrap().entry, bytes);
        }
    }
}
