//! The operators' levers on the dashboard (docs/operations.md, "Running a sale"): a product's
//! sale paused and resumed, deductions paused and resumed queue-wide, as `stockq stock pause`,
//! `stockq pause` and their resumes do them; and the audit stream every action goes to, who
//! acted being the dashboard's session ([`who`]).

use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::session::Session;
use super::{Action, Admin, Operator, unavailable};
use crate::admin::control;
use crate::error::Error;
use crate::http::answer::{clip, error};
use crate::http::client::Client;

/// Audit entries listed by default, and at most.
const AUDIT_SHOWN: usize = 50;
const AUDIT_MAX: usize = 1000;

/// Who acts from the dashboard, as the audit names them: `dashboard:<session>@<address>`,
/// the session by the first 8 hex digits of its id's SHA-256 (the same all through one login,
/// different for the next; the id itself, the session's secret, is never written) and the
/// client's address ([`crate::http::client`]).
pub(super) fn who(session: &Session, client: Client) -> String {
    who_of(&session.id, client)
}

fn who_of(session_id: &str, client: Client) -> String {
    let digest = Sha256::digest(session_id.as_bytes());
    format!("dashboard:{}@{}", hex::encode(&digest[..4]), client.0)
}

/// Writes a dashboard action to the audit stream. The action is done: an entry that cannot be
/// written is logged and does not fail it ([`control::audit`]).
pub(super) async fn audited(admin: &Admin, who: &str, action: &str, detail: &str) {
    let _ = control::audit(&admin.shards, who, action, detail).await;
}

/// `POST /admin/api/products/<id>/pause`: 200 `{"changed"}` (false: it was paused already);
/// 404 for a product Redis has no stock for; 400 for an id that is not a positive integer.
pub(super) async fn pause_product(
    State(admin): State<Admin>,
    Action(session): Action,
    Extension(client): Extension<Client>,
    Path(id): Path<String>,
) -> Response {
    product_lever(&admin, &who(&session, client), &id, true).await
}

/// `POST /admin/api/products/<id>/resume`: 200 `{"changed"}` (false: it was not paused).
pub(super) async fn resume_product(
    State(admin): State<Admin>,
    Action(session): Action,
    Extension(client): Extension<Client>,
    Path(id): Path<String>,
) -> Response {
    product_lever(&admin, &who(&session, client), &id, false).await
}

async fn product_lever(admin: &Admin, who: &str, id: &str, pause: bool) -> Response {
    let Some(product_id) = id.parse::<i64>().ok().filter(|p| *p > 0) else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("product id {:?} is not a positive integer", clip(id)),
        );
    };
    let done = if pause {
        control::pause_product(&admin.shards, product_id, who).await
    } else {
        control::resume_product(&admin.shards, product_id, who).await
    };
    match done {
        Ok(changed) => {
            tracing::info!(product_id, pause, changed, "dashboard: a product's sale paused or resumed");
            axum::Json(json!({ "changed": changed })).into_response()
        }
        // the only bad input left: a product Redis has no stock for
        Err(Error::Usage(message)) => error(StatusCode::NOT_FOUND, message),
        Err(e) => unavailable("dashboard product pause failed", e),
    }
}

/// `POST /admin/api/deductions/pause`: 200 `{"changed"}` (false: paused already). Every
/// worker stops claiming within 250 ms; reservations go on.
pub(super) async fn pause_deductions(
    State(admin): State<Admin>,
    Action(session): Action,
    Extension(client): Extension<Client>,
) -> Response {
    deductions_lever(&admin, &who(&session, client), true).await
}

/// `POST /admin/api/deductions/resume`: 200 `{"changed"}` (false: they were not paused).
pub(super) async fn resume_deductions(
    State(admin): State<Admin>,
    Action(session): Action,
    Extension(client): Extension<Client>,
) -> Response {
    deductions_lever(&admin, &who(&session, client), false).await
}

async fn deductions_lever(admin: &Admin, who: &str, pause: bool) -> Response {
    let done = if pause {
        control::pause_deductions(&admin.shards, who).await
    } else {
        control::resume_deductions(&admin.shards, who).await
    };
    match done {
        Ok(changed) => {
            tracing::info!(pause, changed, "dashboard: deductions paused or resumed");
            axum::Json(json!({ "changed": changed })).into_response()
        }
        Err(e) => unavailable("dashboard deductions pause failed", e),
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct AuditQuery {
    count: Option<usize>,
}

/// `GET /admin/api/audit[?count=N]`: 200 `{"audit": [...]}`, the latest `count` operator
/// actions (from 1 to [`AUDIT_MAX`], default [`AUDIT_SHOWN`]), newest first, as `stockq audit
/// --json` prints them.
pub(super) async fn audit(State(admin): State<Admin>, _: Operator, Query(q): Query<AuditQuery>) -> Response {
    let count = q.count.unwrap_or(AUDIT_SHOWN).clamp(1, AUDIT_MAX);
    match control::audit_entries(&admin.shards, count).await {
        Ok(entries) => axum::Json(json!({ "audit": entries })).into_response(),
        Err(e) => unavailable("dashboard audit failed", e),
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;

    #[test]
    fn who_names_the_session_by_a_hash_never_by_its_id() {
        let id = "ab".repeat(32);
        let client = Client(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7)));
        let who = who_of(&id, client);
        let (name, address) = who.split_once('@').unwrap();
        assert_eq!(address, "10.0.0.7");
        let hash = name.strip_prefix("dashboard:").unwrap();
        assert_eq!(hash.len(), 8);
        assert!(hash.bytes().all(|b| b.is_ascii_hexdigit()), "{who}");
        assert!(!who.contains(&id[..8]), "{who}");
        assert_eq!(who_of(&id, client), who, "the same all through one session");
        assert_ne!(who_of(&"ef".repeat(32), client), who, "another login, another name");
    }
}
