//! The dead letters of webhooks on the dashboard (docs/webhooks.md): listed, and replayed one
//! by one or all, as `stockq webhooks list` and `stockq webhooks replay` do. The list is a
//! read that [`Operator`] admits; each replay is a POST that [`Action`] admits, written to the
//! audit as the command line writes it.

use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::levers::{audited, who};
use super::{Action, Admin, Operator, unavailable};
use crate::http::answer::{clip, error};
use crate::http::client::Client;
use crate::relay;

/// The dead deliveries listed, newest first; `total` counts them all.
const WEBHOOKS_SHOWN: usize = 100;

/// `GET /admin/api/webhooks`: 200 `{"total", "dead": [...]}`, the newest [`WEBHOOKS_SHOWN`]
/// dead letters of webhooks as `stockq webhooks list --json` shows them.
pub(super) async fn list(State(admin): State<Admin>, _: Operator) -> Response {
    match relay::dead_letters(&admin.shards, WEBHOOKS_SHOWN).await {
        Ok((letters, total)) => axum::Json(json!({ "total": total, "dead": letters })).into_response(),
        Err(e) => unavailable("dashboard webhooks failed", e),
    }
}

/// `POST /admin/api/webhooks/<id>/replay`, `id` a delivery's (`<event_id>@<version>`) or an
/// event id (all of its dead deliveries): 200 `{"replayed"}`; 404 when no dead delivery is
/// that id; 400 for an id that cannot be one.
pub(super) async fn replay(
    State(admin): State<Admin>,
    Action(session): Action,
    Extension(client): Extension<Client>,
    Path(id): Path<String>,
) -> Response {
    if let Err(e) = validate_delivery_id(&id) {
        return error(StatusCode::BAD_REQUEST, e);
    }
    let replayed = relay::replay(&admin.shards, Some(&id)).await;
    // audited as the command line does, a replay of none too
    if let Ok(n) = replayed {
        audited(&admin, &who(&session, client), "webhooks replay", &format!("{id}: {n} replayed")).await;
    }
    match replayed {
        Ok(0) => error(
            StatusCode::NOT_FOUND,
            format!("no dead letter of webhooks is {id:?} (see `stockq webhooks list`)"),
        ),
        Ok(replayed) => {
            tracing::info!(id, replayed, "dashboard: dead letter of webhooks replayed");
            axum::Json(json!({ "replayed": replayed })).into_response()
        }
        Err(e) => unavailable("webhook replay failed", e),
    }
}

/// `POST /admin/api/webhooks/replay-all`: 200 `{"replayed"}` (0 when there was none).
pub(super) async fn replay_all(
    State(admin): State<Admin>,
    Action(session): Action,
    Extension(client): Extension<Client>,
) -> Response {
    match relay::replay(&admin.shards, None).await {
        Ok(replayed) => {
            tracing::info!(replayed, "dashboard: every dead letter of webhooks replayed");
            let detail = format!("all: {replayed} replayed");
            audited(&admin, &who(&session, client), "webhooks replay", &detail).await;
            axum::Json(json!({ "replayed": replayed })).into_response()
        }
        Err(e) => unavailable("webhook replay failed", e),
    }
}

/// An event id, or `<event_id>@<version>` with a version of digits.
fn validate_delivery_id(id: &str) -> Result<(), String> {
    let (event_id, version) = match id.split_once('@') {
        Some((event_id, version)) => (event_id, Some(version)),
        None => (id, None),
    };
    let version_ok =
        version.is_none_or(|v| !v.is_empty() && v.len() <= 20 && v.bytes().all(|b| b.is_ascii_digit()));
    match crate::event::validate_event_id(event_id) {
        Ok(()) if version_ok => Ok(()),
        Ok(()) => Err(format!("{} is not a delivery id: <event_id>@<version>, or an event id", clip(id))),
        Err(e) => Err(format!("{} is not a delivery id: {e}", clip(id))),
    }
}

#[cfg(test)]
mod tests {
    use super::validate_delivery_id;

    #[test]
    fn a_delivery_id_is_an_event_id_and_maybe_a_version() {
        for ok in ["order-1001", "order-1001@3", "a:b.c_d-e@18446744073709551615"] {
            assert_eq!(validate_delivery_id(ok), Ok(()), "{ok}");
        }
        for bad in ["", "@3", "order-1001@", "order-1001@x", "order 1@2", "o@1@2", "o@-1"] {
            assert!(validate_delivery_id(bad).is_err(), "{bad:?}");
        }
        assert!(validate_delivery_id(&"x".repeat(65)).is_err());
    }
}
