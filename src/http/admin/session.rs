//! Operators' sessions on the dashboard, and what a request that changes something must show
//! besides (docs/dashboard.md, "Security").
//!
//! A browser cannot send a bearer header, so the admin token is posted once to
//! `/admin/login` and exchanged for a random session id in an `HttpOnly; SameSite=Strict;
//! Path=/admin` cookie: the page's scripts cannot read it, another site's page cannot make
//! the browser send it, and the token itself is never kept in the browser. Sessions live in
//! this process's memory for [`SESSION_TTL`]; a restart logs everyone out.
//!
//! A POST that changes something (requeue, drop, logout) must also carry the session's CSRF
//! token in [`CSRF_HEADER`] (the dashboard page holds it; another site's page cannot read
//! it) and come from the dashboard's own origin ([`same_origin`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, header};

use crate::config::same_secret;

/// The session cookie's name.
pub(crate) const COOKIE: &str = "stockq_admin";
/// The header that carries the CSRF token of a POST.
pub(crate) const CSRF_HEADER: &str = "x-csrf-token";
/// How long a session lasts after its login, however active.
pub(crate) const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);
/// Sessions kept at most: past that, a login ends the session closest to its end.
const MAX_SESSIONS: usize = 1000;

/// A live session: its id (the cookie's value) and its CSRF token.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    pub(crate) id: String,
    pub(crate) csrf: String,
}

#[derive(Default)]
struct Inner {
    /// Session id → (CSRF token, end of the session).
    sessions: HashMap<String, (String, Instant)>,
}

/// The sessions of this process.
#[derive(Clone, Default)]
pub(crate) struct Sessions(Arc<Mutex<Inner>>);

impl Sessions {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Opens a session after a good login.
    pub(crate) fn open(&self) -> Session {
        let now = Instant::now();
        let mut inner = self.inner();
        inner.sessions.retain(|_, (_, end)| *end > now);
        if inner.sessions.len() >= MAX_SESSIONS
            && let Some(first) =
                inner.sessions.iter().min_by_key(|(_, (_, end))| *end).map(|(id, _)| id.clone())
        {
            inner.sessions.remove(&first);
        }
        let session = Session { id: random_hex(), csrf: random_hex() };
        inner.sessions.insert(session.id.clone(), (session.csrf.clone(), now + SESSION_TTL));
        session
    }

    /// The live session `id`, if there is one.
    pub(crate) fn get(&self, id: &str) -> Option<Session> {
        let mut inner = self.inner();
        match inner.sessions.get(id) {
            Some((csrf, end)) if *end > Instant::now() => {
                Some(Session { id: id.to_string(), csrf: csrf.clone() })
            }
            Some(_) => {
                inner.sessions.remove(id);
                None
            }
            None => None,
        }
    }

    pub(crate) fn close(&self, id: &str) {
        self.inner().sessions.remove(id);
    }
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
    fn sessions_open_are_found_until_closed_and_ids_are_random() {
        let sessions = Sessions::default();
        let a = sessions.open();
        let b = sessions.open();
        assert_ne!(a.id, b.id);
        assert_ne!(a.id, a.csrf);
        assert_eq!(a.id.len(), 64);
        assert_eq!(sessions.get(&a.id).map(|s| s.csrf), Some(a.csrf.clone()));
        sessions.close(&a.id);
        assert!(sessions.get(&a.id).is_none());
        assert!(sessions.get("").is_none());
        assert!(sessions.get(&b.id).is_some());
    }

    #[test]
    fn sessions_are_bounded() {
        let sessions = Sessions::default();
        let first = sessions.open();
        for _ in 0..MAX_SESSIONS {
            sessions.open();
        }
        assert!(sessions.get(&first.id).is_none(), "the oldest session made room");
        assert_eq!(sessions.inner().sessions.len(), MAX_SESSIONS);
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
