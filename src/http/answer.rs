//! Error answers: `{"error": "..."}` for every one of them, short whatever the request held.
//!
//! Every route answers a store's failure the same way too: it is counted and logged
//! ([`log_failure`]), then answered 503 in the route's own words.
//!
//! Handlers answer with [`error`]; [`json_errors`] turns whatever else answers an error (axum's
//! 405, a body-limit 413) into the same shape; [`automatic`] is the JSON twin of the answers
//! hyper writes by itself for requests it cannot parse (see [`crate::http::conn`]).

use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::error::Error;
use crate::telemetry::metrics as m;

/// The longest request target served; longer ones are answered 414.
pub(crate) const MAX_URI: usize = 8 * 1024;
/// The longest value an error message repeats from the request.
const MAX_ECHO: usize = 64;
/// The longest error message, in characters: escaped as JSON it stays under 1 KiB.
const MAX_MESSAGE: usize = 160;

/// Logs a failed request, one line per kind every few seconds however many fail.
pub(crate) fn log_failure(what: &'static str, e: &Error) {
    if let Some(store) = e.store() {
        metrics::counter!(m::STORE_ERRORS, "store" => store.as_str()).increment(1);
    }
    if crate::backoff::may_log(what) {
        tracing::warn!(error = %e, "{what} (logged once every few seconds)");
    }
}

/// An error answer.
pub(crate) fn error(status: StatusCode, message: impl Into<String>) -> Response {
    let message = message.into();
    let message = if message.len() > MAX_MESSAGE { clip_to(&message, MAX_MESSAGE) } else { message };
    (status, axum::Json(json!({ "error": message }))).into_response()
}

/// A value from the request as an error message may quote it: at most 64 characters.
pub(crate) fn clip(value: &str) -> String {
    clip_to(value, MAX_ECHO)
}

/// `value` cut to at most `max` characters (and an ellipsis).
pub(crate) fn clip_to(value: &str, max: usize) -> String {
    match value.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &value[..at]),
        None => value.to_string(),
    }
}

/// Answers 414 for a request target longer than [`MAX_URI`].
pub(crate) async fn limit_uri(request: Request, next: Next) -> Response {
    if request.uri().to_string().len() > MAX_URI {
        return error(StatusCode::URI_TOO_LONG, format!("the request target is longer than {MAX_URI} bytes"));
    }
    next.run(request).await
}

/// Gives an error answer that is not JSON (axum's own 405, 413, ...) the JSON shape.
pub(crate) async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response.headers().get(header::CONTENT_TYPE).is_some_and(|t| t == "application/json");
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let allow = response.headers().get(header::ALLOW).cloned();
    let mut answer = error(status, reason(status));
    if let Some(allow) = allow {
        answer.headers_mut().insert(header::ALLOW, allow);
    }
    answer
}

fn reason(status: StatusCode) -> String {
    status.canonical_reason().unwrap_or("error").to_ascii_lowercase()
}

/// The whole answer to a request hyper could not parse (400, 414, 431), as JSON; the
/// connection closes after it.
pub(crate) fn automatic(status: u16) -> Vec<u8> {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    let message = match status {
        StatusCode::URI_TOO_LONG => "the request target is too long".to_string(),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => "the request head is too large".to_string(),
        StatusCode::BAD_REQUEST => "malformed HTTP request".to_string(),
        other => reason(other),
    };
    whole(status, &message)
}

/// A whole answer `{"error": message}` that closes the connection, written as bytes for a
/// connection that no HTTP server handles (hyper's automatic answers, a refused connection).
pub(crate) fn whole(status: StatusCode, message: &str) -> Vec<u8> {
    let body = json!({ "error": message }).to_string();
    let head = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    );
    [head.into_bytes(), body.into_bytes()].concat()
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn content_type(response: &Response) -> Option<&HeaderValue> {
        response.headers().get(header::CONTENT_TYPE)
    }

    #[test]
    fn clipping_keeps_short_values_and_cuts_long_ones_on_a_character() {
        assert_eq!(clip("order-1"), "order-1");
        let long = "é".repeat(100);
        let clipped = clip(&long);
        assert_eq!(clipped.chars().count(), 65);
        assert!(clipped.ends_with('…'));
        let message = error(StatusCode::BAD_REQUEST, "x".repeat(1_000_000));
        assert_eq!(content_type(&message).unwrap(), "application/json");
    }

    #[tokio::test]
    async fn non_json_errors_become_json_and_keep_allow() {
        let mut plain = (StatusCode::METHOD_NOT_ALLOWED, "").into_response();
        plain.headers_mut().insert(header::ALLOW, HeaderValue::from_static("POST"));
        let answer = json_errors(plain).await;
        assert_eq!(answer.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(answer.headers()[header::ALLOW], "POST");
        assert_eq!(content_type(&answer).unwrap(), "application/json");
        let ok = json_errors((StatusCode::OK, "fine").into_response()).await;
        assert_ne!(content_type(&ok).unwrap(), "application/json");
    }

    #[test]
    fn automatic_answers_are_whole_json_answers() {
        let answer = String::from_utf8(automatic(431)).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"), "{head}");
        assert!(head.contains(&format!("content-length: {}", body.len())), "{head}");
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["error"], "the request head is too large");
    }
}
