//! The operators' dashboard at `/admin` (docs/dashboard.md): the sale as charts and tables
//! that update themselves, the levers of a sale (a product's sale paused, deductions paused),
//! the search of reservations and holds, the dead letters' requeue and drop (one, or all of a
//! reason), the replay of the dead letters of webhooks, and the audit of every action.
//!
//! | route | answers |
//! |---|---|
//! | `GET /admin` | the dashboard with a live session, else the login form; 403 while `STOCKQ_ADMIN_TOKEN` is unset |
//! | `POST /admin/login` `{"token"}` | 204 and the session cookie; 401 wrong token; 429 (with `Retry-After`) after too many wrong ones from the client's address |
//! | `POST /admin/logout` | 204, the session ended |
//! | `GET /admin/api/state`, `GET /admin/api/books` | what the page polls ([`feed`]) |
//! | `POST /admin/api/dead/<event_id>/requeue`, `.../drop` | the dead letters' actions ([`actions`]) |
//! | `GET /admin/api/webhooks`, `POST /admin/api/webhooks/<id>/replay`, `.../replay-all` | the dead letters of webhooks, listed and replayed ([`webhooks`]) |
//! | `GET /admin/api/dead/reasons`, `GET /admin/api/dead?reason=`, `POST /admin/api/dead/requeue-all`, `.../drop-all` | the dead letters by reason, and the actions on all of one ([`actions`]) |
//! | `POST /admin/api/products/<id>/pause`, `.../resume`, `POST /admin/api/deductions/pause`, `.../resume`, `GET /admin/api/audit` | the levers of a sale, and the audit ([`levers`]) |
//! | `GET /admin/api/search?event_id=`/`?buyer=`, `GET /admin/api/holds` | reservations found ([`search`]) |
//! | `GET /admin/api/history` | the charts' last ten minutes, kept by this process ([`history`]) |
//! | `GET /admin/dashboard.js`, `/admin/dashboard.css` | the page's script and style |
//!
//! Everything the browser needs is in the binary (`assets/`): no build step, nothing fetched
//! from elsewhere, which the Content-Security-Policy of every answer also forbids. Sessions
//! and CSRF are in [`session`].

mod actions;
mod feed;
mod history;
mod latency;
mod levers;
mod search;
mod session;
mod webhooks;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Extension, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;

pub(crate) use self::latency::{Latencies, time_reservations};
use self::session::{Session, Sessions};
use crate::config::ApiToken;
use crate::error::Error;
use crate::http::answer::error;
use crate::http::client::Client;
use crate::http::health::LedgerSlot;
use crate::http::throttle::Throttle;
use crate::queue::Shards;

const LOGIN_HTML: &str = include_str!("assets/login.html");
const DASHBOARD_HTML: &str = include_str!("assets/dashboard.html");
const DASHBOARD_JS: &str = include_str!("assets/dashboard.js");
const DASHBOARD_CSS: &str = include_str!("assets/dashboard.css");

/// Where the pages may load from: this server only, no inline script, no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// What the dashboard needs.
#[derive(Clone)]
pub(crate) struct Admin {
    shards: Shards,
    ledger: LedgerSlot,
    /// `None`: the dashboard is off.
    token: Option<ApiToken>,
    /// The latency of `POST /reserve` in this process.
    latencies: Latencies,
    sessions: Sessions,
    /// Wrong login tokens per client.
    logins: Throttle,
    books: Arc<feed::BooksCache>,
    /// The charts' last minutes.
    history: Arc<history::History>,
    /// Held by the search running in this process: one at a time.
    searching: Arc<tokio::sync::Mutex<()>>,
}

impl Admin {
    pub(crate) fn new(
        shards: Shards,
        ledger: LedgerSlot,
        token: Option<ApiToken>,
        latencies: Latencies,
    ) -> Admin {
        let sessions = Sessions::new(shards.first().clone(), token.clone());
        let (logins, books) = (Throttle::default(), Arc::default());
        let (history, searching) = (Arc::default(), Arc::default());
        Admin { shards, ledger, token, latencies, sessions, logins, books, history, searching }
    }

    /// Refuses every admin route while no admin token is set, as the order service's API
    /// does without its token.
    fn refuse_when_off(&self) -> Option<Response> {
        self.token.is_none().then(|| Refused::Off.into_response())
    }

    /// The request's live session, if any (asked of Redis: [`session`]).
    async fn session(&self, headers: &HeaderMap) -> Result<Option<Session>, Error> {
        match session::cookie_session(headers) {
            Some(id) => self.sessions.get(id).await,
            None => Ok(None),
        }
    }
}

/// The dashboard's routes; while the dashboard is on, the charts are sampled for as long as
/// the routes live ([`history`]).
pub(crate) fn routes(admin: Admin) -> Router {
    if admin.token.is_some() {
        history::keep_sampling(&admin.history, admin.shards.clone(), admin.latencies.clone());
    }
    Router::new()
        .route("/admin", get(page))
        .route("/admin/login", post(login))
        .route("/admin/logout", post(logout))
        .route("/admin/dashboard.js", get(script))
        .route("/admin/dashboard.css", get(style))
        .route("/admin/api/state", get(feed::state))
        .route("/admin/api/books", get(feed::books))
        .route("/admin/api/dead/{event_id}/requeue", post(actions::requeue))
        .route("/admin/api/dead/{event_id}/drop", post(actions::drop))
        .route("/admin/api/webhooks", get(webhooks::list))
        .route("/admin/api/webhooks/{id}/replay", post(webhooks::replay))
        .route("/admin/api/webhooks/replay-all", post(webhooks::replay_all))
        .route("/admin/api/dead", get(actions::list))
        .route("/admin/api/dead/reasons", get(actions::reasons))
        .route("/admin/api/dead/requeue-all", post(actions::requeue_all))
        .route("/admin/api/dead/drop-all", post(actions::drop_all))
        .route("/admin/api/products/{id}/pause", post(levers::pause_product))
        .route("/admin/api/products/{id}/resume", post(levers::resume_product))
        .route("/admin/api/deductions/pause", post(levers::pause_deductions))
        .route("/admin/api/deductions/resume", post(levers::resume_deductions))
        .route("/admin/api/audit", get(levers::audit))
        .route("/admin/api/search", get(search::search))
        .route("/admin/api/holds", get(search::holds))
        .route("/admin/api/history", get(history::history))
        .layer(axum::middleware::map_response(harden))
        .with_state(admin)
}

/// Every admin answer: never cached, never framed, nothing loaded from elsewhere.
async fn harden(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CACHE_CONTROL, "no-store"),
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// Why an admin request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refused {
    /// No admin token is set.
    Off,
    /// No live session.
    LoggedOut,
    /// An action whose `Origin` is another site's, or missing.
    ForeignOrigin,
    /// An action without its session's CSRF token.
    NoCsrfToken,
    /// The sessions' store (Redis) cannot say whether the request's session is live.
    Unavailable,
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        match self {
            Refused::Off => error(StatusCode::FORBIDDEN, "the dashboard is off: set STOCKQ_ADMIN_TOKEN"),
            Refused::LoggedOut => error(StatusCode::UNAUTHORIZED, "log in at /admin first"),
            Refused::ForeignOrigin => {
                error(StatusCode::FORBIDDEN, "the request does not come from the dashboard's own origin")
            }
            Refused::NoCsrfToken => {
                error(StatusCode::FORBIDDEN, "the request lacks the dashboard's CSRF token")
            }
            Refused::Unavailable => error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the dashboard's sessions (Redis) are unavailable; try again",
            ),
        }
    }
}

/// An operator logged in: the extractor of the routes that read.
pub(super) struct Operator;

impl FromRequestParts<Admin> for Operator {
    type Rejection = Refused;

    async fn from_request_parts(parts: &mut Parts, admin: &Admin) -> Result<Self, Refused> {
        logged_in(admin, &parts.headers).await.map(|_| Operator)
    }
}

/// An operator's request to change something: a live session, from the dashboard's own
/// origin, with the session's CSRF token. The extractor of the routes that act.
pub(super) struct Action(Session);

impl FromRequestParts<Admin> for Action {
    type Rejection = Refused;

    async fn from_request_parts(parts: &mut Parts, admin: &Admin) -> Result<Self, Refused> {
        let session = logged_in(admin, &parts.headers).await?;
        if !session::same_origin(&parts.headers) {
            return Err(Refused::ForeignOrigin);
        }
        if !session::csrf_matches(&session, &parts.headers) {
            return Err(Refused::NoCsrfToken);
        }
        Ok(Action(session))
    }
}

/// The request's live session, unless the dashboard is off or there is none; never one while
/// Redis cannot say.
async fn logged_in(admin: &Admin, headers: &HeaderMap) -> Result<Session, Refused> {
    if admin.token.is_none() {
        return Err(Refused::Off);
    }
    match admin.session(headers).await {
        Ok(session) => session.ok_or(Refused::LoggedOut),
        Err(e) => {
            crate::http::answer::log_failure("dashboard session lookup failed", &e);
            Err(Refused::Unavailable)
        }
    }
}

/// A failure of a store behind the dashboard: logged, and answered 503.
fn unavailable(what: &'static str, e: Error) -> Response {
    crate::http::answer::log_failure(what, &e);
    error(StatusCode::SERVICE_UNAVAILABLE, format!("{}; try again", crate::error::one_line(&e.to_string())))
}

fn html(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response()
}

/// `GET /admin`: the dashboard, or the login form. The page carries its session's CSRF token
/// for the script to send with each action.
async fn page(State(admin): State<Admin>, headers: HeaderMap) -> Response {
    if let Some(refusal) = admin.refuse_when_off() {
        return refusal;
    }
    match admin.session(&headers).await {
        // a CSRF token is 64 hex digits: nothing in it needs escaping
        Ok(Some(session)) => html(DASHBOARD_HTML.replace("{{csrf}}", &session.csrf)),
        Ok(None) => html(LOGIN_HTML.to_string()),
        Err(e) => unavailable("dashboard session lookup failed", e),
    }
}

async fn script(State(admin): State<Admin>) -> Response {
    admin.refuse_when_off().unwrap_or_else(|| {
        ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], DASHBOARD_JS).into_response()
    })
}

async fn style(State(admin): State<Admin>) -> Response {
    admin.refuse_when_off().unwrap_or_else(|| {
        ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], DASHBOARD_CSS).into_response()
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Login {
    token: String,
}

/// `POST /admin/login` `{"token": "..."}`: a JSON body, which a form on another site cannot
/// send, from the dashboard's own origin; wrong tokens are counted per client (see
/// [`crate::http::throttle`], which also says why a right token is refused after too many).
async fn login(
    State(admin): State<Admin>,
    Extension(client): Extension<Client>,
    headers: HeaderMap,
    body: Result<axum::Json<Login>, axum::extract::rejection::JsonRejection>,
) -> Response {
    if let Some(refusal) = admin.refuse_when_off() {
        return refusal;
    }
    if !session::same_origin(&headers) {
        return Refused::ForeignOrigin.into_response();
    }
    let axum::Json(Login { token }) = match body {
        Ok(body) => body,
        Err(rejection) => {
            // a body over the limit is 413 here too, as on every route (docs/http-api.md)
            let status = match rejection.status() {
                StatusCode::PAYLOAD_TOO_LARGE => StatusCode::PAYLOAD_TOO_LARGE,
                _ => StatusCode::BAD_REQUEST,
            };
            return error(status, rejection.body_text());
        }
    };
    let attempt = match admin.logins.try_secret(client) {
        Ok(attempt) => attempt,
        Err(throttled) => {
            if throttled.first {
                tracing::warn!(
                    client = %client.0,
                    "dashboard: too many wrong tokens from one address: logins refused for {}s",
                    throttled.retry_after.as_secs()
                );
            }
            return throttled.answer("token");
        }
    };
    if !admin.token.as_ref().is_some_and(|t| t.matches(&token)) {
        tracing::warn!(client = %client.0, "dashboard: a login with a wrong token");
        return error(StatusCode::UNAUTHORIZED, "wrong token");
    }
    attempt.succeeded();
    let session = match admin.sessions.open(session::cookie_session(&headers)).await {
        Ok(session) => session,
        Err(e) => return unavailable("dashboard login failed", e),
    };
    tracing::info!("dashboard: an operator logged in");
    with_cookie(session::set_cookie(&session, &headers))
}

/// `POST /admin/logout`
async fn logout(State(admin): State<Admin>, Action(session): Action, headers: HeaderMap) -> Response {
    if let Err(e) = admin.sessions.close(&session.id).await {
        return unavailable("dashboard logout failed", e);
    }
    with_cookie(session::clear_cookie(&headers))
}

fn with_cookie(cookie: String) -> Response {
    match HeaderValue::try_from(cookie) {
        Ok(cookie) => (StatusCode::NO_CONTENT, [(header::SET_COOKIE, cookie)]).into_response(),
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "cannot write the session cookie"),
    }
}
