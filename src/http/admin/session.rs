//! Operators' sessions on the dashboard, and what a request that changes something must show
//! besides (docs/dashboard.md, "Security").
//!
//! A browser cannot send a bearer header, so the admin token is posted once to
//! `/admin/login` and exchanged for a random session id in an `HttpOnly; SameSite=Strict;
//! Path=/admin` cookie: the page's scripts cannot read it, another site's page cannot make
//! the browser send it, and the token itself is never kept in the browser.
//!
//! Sessions live in Redis, on the queue's first shard, so that a login works on every `serve`
//! replica and a logout ends it on all of them: `{q}:sessions:<hex SHA-256 of the id>`
//! ([`crate::queue::Keys::session`]), holding when it began and expiring [`SESSION_TTL`] after
//! its login, however active. Only the id's hash is stored: a copy of Redis opens no session.
//! Each request asks Redis, except that a process trusts a session it found there for
//! [`TRUSTED_FOR`] (the page polls every second or so); a logout elsewhere therefore ends the
//! session here within that. Redis unreachable, a request that names a session is answered
//! 503 and admitted nowhere.
//!
//! A POST that changes something (requeue, drop, logout) must also carry the session's CSRF
//! token in [`CSRF_HEADER`] (the dashboard page holds it; another site's page cannot read
//! it) and come from the dashboard's own origin ([`same_origin`]). The token is derived from
//! the session id ([`csrf_token`]), so that every replica knows it and Redis holds nothing
//! secret.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, header};
use hmac::{KeyInit, Mac};

use crate::config::same_secret;
use crate::error::Result;
use crate::queue::Queue;

/// The session cookie's name.
pub(crate) const COOKIE: &str = "stockq_admin";
/// The header that carries the CSRF token of a POST.
pub(crate) const CSRF_HEADER: &str = "x-csrf-token";
/// How long a session lasts after its login, however active.
pub(crate) const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);
/// How long a process admits a session it found in Redis without asking again: the longest a
/// logout on another replica takes to reach this one.
pub(crate) const TRUSTED_FOR: Duration = Duration::from_secs(1);
/// Sessions a process remembers at most; past that, it asks Redis each time.
const MAX_TRUSTED: usize = 1000;
/// What a session's CSRF token is the HMAC of, keyed by the session id.
const CSRF_LABEL: &[u8] = b"stockq dashboard CSRF token";

/// A live session: its id (the cookie's value) and its CSRF token.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    pub(crate) id: String,
    pub(crate) csrf: String,
}

impl Session {
    fn new(id: String) -> Session {
        let csrf = csrf_token(&id);
        Session { id, csrf }
    }
}

/// The dashboard's sessions: in Redis (the first shard), and those this process found there
/// lately.
#[derive(Clone)]
pub(crate) struct Sessions {
    store: Queue,
    trusted: Arc<Trusted>,
    /// The admin token sessions are opened with: a session made with another one (before the
    /// token was changed) is no session.
    token: Option<crate::config::ApiToken>,
}

impl Sessions {
    /// Sessions kept in `store`'s Redis (the queue's first shard), opened with `token`.
    pub(crate) fn new(store: Queue, token: Option<crate::config::ApiToken>) -> Sessions {
        Sessions { store, trusted: Arc::default(), token }
    }

    /// What ties session `id` to the admin token it was opened with: the hex HMAC-SHA256 of
    /// the token keyed by the id. Stored beside the session, it lets every replica refuse a
    /// session once the token changed (a leaked token rotated ends its sessions), and tells a
    /// reader of Redis nothing about the token without the id, which Redis does not hold.
    fn token_tag(&self, id: &str) -> String {
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(id.as_bytes())
            .expect("HMAC takes a key of any length");
        mac.update(b"stockq admin token:");
        mac.update(self.token.as_ref().map_or("", |t| t.expose()).as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    /// Opens a session after a good login, ending the session `replacing` (the one the login
    /// came with, if any).
    pub(crate) async fn open(&self, replacing: Option<&str>) -> Result<Session> {
        let replacing = replacing.filter(|old| is_session_id(old));
        if let Some(old) = replacing {
            self.trusted.forget(old);
        }
        let session = Session::new(random_hex());
        let created = crate::backoff::now_ms();
        let tag = self.token_tag(&session.id);
        self.store.open_session(&session.id, created, &tag, SESSION_TTL, replacing).await?;
        self.trusted.remember(&session.id, Instant::now() + TRUSTED_FOR);
        Ok(session)
    }

    /// The live session `id`, if there is one; an error when Redis cannot say.
    pub(crate) async fn get(&self, id: &str) -> Result<Option<Session>> {
        if !is_session_id(id) {
            return Ok(None);
        }
        let now = Instant::now();
        if self.trusted.trusts(id, now) {
            return Ok(Some(Session::new(id.to_string())));
        }
        let Some((created, tag)) = self.store.session_created(id).await? else {
            return Ok(None);
        };
        if !same_secret(&self.token_tag(id), &tag) {
            // opened with a token that is no longer the admin token
            return Ok(None);
        }
        // the key's TTL ends it; its creation time too, should the key have lost its TTL
        let age = Duration::from_millis(crate::backoff::now_ms().saturating_sub(created));
        let Some(left) = SESSION_TTL.checked_sub(age).filter(|left| !left.is_zero()) else {
            return Ok(None);
        };
        self.trusted.remember(id, now + left.min(TRUSTED_FOR));
        Ok(Some(Session::new(id.to_string())))
    }

    /// Ends session `id`, on every replica (within [`TRUSTED_FOR`] on the others).
    pub(crate) async fn close(&self, id: &str) -> Result<()> {
        self.trusted.forget(id);
        self.store.close_session(id).await?;
        Ok(())
    }
}

/// Sessions this process found live lately → until when it admits them without asking Redis.
#[derive(Default)]
struct Trusted(Mutex<HashMap<String, Instant>>);

impl Trusted {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn trusts(&self, id: &str, now: Instant) -> bool {
        let mut map = self.map();
        match map.get(id) {
            Some(until) if *until > now => true,
            Some(_) => {
                map.remove(id);
                false
            }
            None => false,
        }
    }

    /// Remembers `id` until `until`; a full table forgets what is past first, and remembers
    /// nothing more while it is still full.
    fn remember(&self, id: &str, until: Instant) {
        let mut map = self.map();
        if map.len() >= MAX_TRUSTED && !map.contains_key(id) {
            let now = Instant::now();
            map.retain(|_, until| *until > now);
            if map.len() >= MAX_TRUSTED {
                return;
            }
        }
        map.insert(id.to_string(), until);
    }

    fn forget(&self, id: &str) {
        self.map().remove(id);
    }
}

/// Whether `id` can be a session id: 64 lowercase hex digits, as [`random_hex`] makes them.
/// Anything else is no session, without asking Redis.
fn is_session_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Session `id`'s CSRF token: the hex HMAC-SHA256 of [`CSRF_LABEL`] keyed by the id. Every
/// replica derives the same token from the cookie, nothing about it is stored, and the token
/// (which the page shows to its scripts) tells nothing about the id.
fn csrf_token(id: &str) -> String {
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(id.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(CSRF_LABEL);
    hex::encode(mac.finalize().into_bytes())
}

/// 32 bytes of `rand`'s thread generator (a CSPRNG seeded by the operating system), as 64
/// hex digits.
fn random_hex() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The session id the request's cookie names, if any.
pub(crate) fn cookie_session(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
}

/// The `Set-Cookie` value that gives the browser `session`; `Secure` when the request came
/// over HTTPS through a proxy that says so (`X-Forwarded-Proto` reaches the routes only from
/// a trusted proxy: [`crate::http::client`]).
pub(crate) fn set_cookie(session: &Session, headers: &HeaderMap) -> String {
    let max_age = SESSION_TTL.as_secs();
    format!("{COOKIE}={}; Max-Age={max_age}; {}", session.id, attributes(headers))
}

/// The `Set-Cookie` value that makes the browser forget its session.
pub(crate) fn clear_cookie(headers: &HeaderMap) -> String {
    format!("{COOKIE}=; Max-Age=0; {}", attributes(headers))
}

fn attributes(headers: &HeaderMap) -> &'static str {
    let https = headers.get("x-forwarded-proto").is_some_and(|p| p.as_bytes().eq_ignore_ascii_case(b"https"));
    if https {
        "Path=/admin; HttpOnly; SameSite=Strict; Secure"
    } else {
        "Path=/admin; HttpOnly; SameSite=Strict"
    }
}

/// Whether the request's `Origin` names the host it was sent to (`Host`, or the
/// `X-Forwarded-Host` of a proxy that rewrites it, which reaches the routes only from a
/// trusted proxy: [`crate::http::client`]). Browsers send `Origin` with every POST; a request
/// without one is refused.
pub(crate) fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let Ok(url) = url::Url::parse(origin) else {
        return false;
    };
    let Some(host) = url.host_str().filter(|_| matches!(url.scheme(), "http" | "https")) else {
        return false;
    };
    // the Host header leaves out the scheme's default port, or names it
    let short = match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    };
    let long = format!("{host}:{}", url.port_or_known_default().unwrap_or(0));
    [header::HOST.as_str(), "x-forwarded-host"]
        .iter()
        .filter_map(|name| headers.get(*name).and_then(|v| v.to_str().ok()))
        .any(|sent| sent.eq_ignore_ascii_case(&short) || sent.eq_ignore_ascii_case(&long))
}

/// Whether the request carries `session`'s CSRF token.
pub(crate) fn csrf_matches(session: &Session, headers: &HeaderMap) -> bool {
    headers
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|given| same_secret(&session.csrf, given))
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn ids_are_random_and_the_csrf_token_is_derived_from_the_id() {
        let (a, b) = (Session::new(random_hex()), Session::new(random_hex()));
        assert_ne!(a.id, b.id);
        assert_ne!(a.csrf, b.csrf);
        assert_ne!(a.id, a.csrf);
        assert!(is_session_id(&a.id) && is_session_id(&a.csrf), "{a:?}");
        assert_eq!(Session::new(a.id.clone()).csrf, a.csrf, "every replica derives the same token");
        // HMAC-SHA256 keyed by the id
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"k").unwrap();
        mac.update(b"stockq dashboard CSRF token");
        assert_eq!(csrf_token("k"), hex::encode(mac.finalize().into_bytes()));
    }

    #[test]
    fn only_what_a_login_makes_can_be_a_session_id() {
        assert!(is_session_id(&"0a".repeat(32)));
        for bad in [String::new(), "ab".into(), "0A".repeat(32), "0a".repeat(33), "g".repeat(64)] {
            assert!(!is_session_id(&bad), "{bad}");
        }
    }

    #[test]
    fn a_session_is_trusted_until_its_time_and_forgotten_on_logout() {
        let trusted = Trusted::default();
        let now = Instant::now();
        trusted.remember("a", now + TRUSTED_FOR);
        trusted.remember("b", now + TRUSTED_FOR);
        assert!(trusted.trusts("a", now));
        assert!(!trusted.trusts("a", now + TRUSTED_FOR), "then Redis is asked again");
        assert!(!trusted.trusts("a", now), "and the entry is gone");
        trusted.forget("b");
        assert!(!trusted.trusts("b", now));
        assert!(!trusted.trusts("c", now));
    }

    #[test]
    fn the_trusted_sessions_are_bounded() {
        let trusted = Trusted::default();
        let now = Instant::now();
        trusted.remember("past", now);
        for i in 1..MAX_TRUSTED {
            trusted.remember(&i.to_string(), now + TRUSTED_FOR);
        }
        trusted.remember("new", now + TRUSTED_FOR);
        assert!(trusted.trusts("new", now), "what was past made room");
        trusted.remember("more", now + TRUSTED_FOR);
        assert!(!trusted.trusts("more", now), "a full table remembers nothing more");
        assert_eq!(trusted.map().len(), MAX_TRUSTED);
    }

    #[test]
    fn the_cookie_is_found_among_others() {
        let h = headers(&[("cookie", "a=1; stockq_admin=abc ; b=2"), ("cookie", "c=3")]);
        assert_eq!(cookie_session(&h), Some("abc"));
        assert_eq!(cookie_session(&headers(&[("cookie", "stockq_admin2=x; xstockq_admin=y")])), None);
        assert_eq!(cookie_session(&HeaderMap::new()), None);
    }

    #[test]
    fn the_cookie_is_http_only_strict_and_scoped_to_admin() {
        let session = Session { id: "ab".into(), csrf: "cd".into() };
        let plain = set_cookie(&session, &HeaderMap::new());
        assert_eq!(plain, "stockq_admin=ab; Max-Age=28800; Path=/admin; HttpOnly; SameSite=Strict");
        let proxied = set_cookie(&session, &headers(&[("x-forwarded-proto", "https")]));
        assert!(proxied.ends_with("; Secure"), "{proxied}");
        assert!(clear_cookie(&HeaderMap::new()).starts_with("stockq_admin=; Max-Age=0; Path=/admin"));
    }

    #[test]
    fn only_the_own_origin_passes() {
        let ok = [
            headers(&[("origin", "http://127.0.0.1:8080"), ("host", "127.0.0.1:8080")]),
            headers(&[("origin", "https://shop.example"), ("host", "shop.example")]),
            headers(&[("origin", "https://shop.example"), ("host", "shop.example:443")]),
            headers(&[
                ("origin", "https://Shop.example"),
                ("host", "10.0.0.5:8080"),
                ("x-forwarded-host", "shop.example"),
            ]),
            headers(&[("origin", "http://[::1]:8080"), ("host", "[::1]:8080")]),
        ];
        for h in &ok {
            assert!(same_origin(h), "{h:?}");
        }
        let refused = [
            headers(&[("host", "127.0.0.1:8080")]),
            headers(&[("origin", "null"), ("host", "127.0.0.1:8080")]),
            headers(&[("origin", "http://evil.example"), ("host", "127.0.0.1:8080")]),
            headers(&[("origin", "http://127.0.0.1:9090"), ("host", "127.0.0.1:8080")]),
            headers(&[("origin", "http://127.0.0.1:8080.evil.example"), ("host", "127.0.0.1:8080")]),
            headers(&[("origin", "file:///etc"), ("host", "127.0.0.1:8080")]),
            headers(&[("origin", "http://127.0.0.1:8080")]),
        ];
        for h in &refused {
            assert!(!same_origin(h), "{h:?}");
        }
    }

    #[test]
    fn the_csrf_token_must_match() {
        let session = Session { id: "ab".into(), csrf: "cd".into() };
        assert!(csrf_matches(&session, &headers(&[("x-csrf-token", "cd")])));
        assert!(!csrf_matches(&session, &headers(&[("x-csrf-token", "cde")])));
        assert!(!csrf_matches(&session, &HeaderMap::new()));
    }
}
