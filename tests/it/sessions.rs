//! The dashboard's sessions in Redis (docs/dashboard.md, "Security"): a login on one `serve`
//! replica works on another of the same queue, a logout on either ends it on both within a
//! second, Redis holds only the hash of the session id with the session's lifetime as its
//! TTL, an expired session is refused, and while Redis is down nobody is let in.

use std::time::{Duration, Instant};

use redis::AsyncCommands;
use sha2::Digest;

use crate::faults::RedisServer;
use crate::helpers::{Answer, TestEnv, http, terminate};

const ADMIN_TOKEN: &str = "operators-only";
/// A session's lifetime (src/http/admin/session.rs).
const LIFETIME: Duration = Duration::from_secs(8 * 3600);
/// How late a logout may reach another replica: the second a process trusts a session it found
/// in Redis, and room for a busy machine.
const LOGOUT_REACHES_ALL_WITHIN: Duration = Duration::from_millis(2000);

/// Logs in on `port`; the cookie (`stockq_admin=<id>`).
async fn log_in(port: u16) -> String {
    let answer = log_in_answer(port).await;
    assert_eq!(answer.status, 204, "{}", answer.text());
    let set_cookie = answer.header("set-cookie").expect("a session cookie");
    set_cookie.split(';').next().unwrap().to_string()
}

async fn log_in_answer(port: u16) -> Answer {
    http(port, "POST", "/admin/login")
        .header("Origin", &format!("http://127.0.0.1:{port}"))
        .json(&format!(r#"{{"token": "{ADMIN_TOKEN}"}}"#))
        .send()
        .await
}

fn session_id(cookie: &str) -> &str {
    cookie.strip_prefix("stockq_admin=").expect("the session cookie")
}

async fn get(port: u16, path: &str, cookie: &str) -> Answer {
    http(port, "GET", path).header("Cookie", cookie).send().await
}

/// The CSRF token on the dashboard page that `cookie` opens on `port`.
async fn csrf(port: u16, cookie: &str) -> String {
    let page = get(port, "/admin", cookie).await.text();
    let at = page.find(r#"name="csrf-token" content=""#).unwrap_or_else(|| panic!("no dashboard: {page}"));
    page[at + 27..at + 27 + 64].to_string()
}

/// A POST from the dashboard on `port`, with the session and its CSRF token.
async fn act(port: u16, path: &str, cookie: &str, csrf: &str) -> Answer {
    let origin = format!("http://127.0.0.1:{port}");
    http(port, "POST", path)
        .headers(&[("Cookie", cookie), ("X-CSRF-Token", csrf), ("Origin", &origin)])
        .send()
        .await
}

/// Every key of the test's queue, by SCAN.
async fn queue_keys(env: &TestEnv, pattern: &str) -> Vec<String> {
    let mut redis = env.redis.clone();
    let mut keys = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, found): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut redis)
            .await
            .unwrap();
        keys.extend(found);
        if next == 0 {
            return keys;
        }
        cursor = next;
    }
}

/// `{q}:sessions:<hex SHA-256 of the id>`
fn session_key(env: &TestEnv, id: &str) -> String {
    env.key(&format!("sessions:{}", hex::encode(sha2::Sha256::digest(id.as_bytes()))))
}

/// Polls `GET /admin/api/state` on `port` until it answers 401; how long that took.
async fn until_logged_out(port: u16, cookie: &str, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let status = get(port, "/admin/api/state", cookie).await.status;
        if status == 401 {
            return start.elapsed();
        }
        assert_eq!(status, 200, "a live session, until it is not");
        assert!(start.elapsed() < within, "still logged in after {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A login on one replica opens the dashboard on another, whose actions take the same CSRF
/// token; a logout on the second ends the session on the first within a second; Redis holds
/// the hash of the id, never the id, with the session's lifetime as TTL.
#[tokio::test]
async fn a_login_works_on_every_replica_and_a_logout_ends_it_everywhere() {
    let env = TestEnv::new().await;
    let (mut first, port_1) = env.serve(&[("STOCKQ_ADMIN_TOKEN", ADMIN_TOKEN)]).await;
    let (mut second, port_2) = env.serve(&[("STOCKQ_ADMIN_TOKEN", ADMIN_TOKEN)]).await;
    let cookie = log_in(port_1).await;
    let id = session_id(&cookie).to_string();

    let state = get(port_2, "/admin/api/state", &cookie).await;
    assert_eq!(state.status, 200, "the other replica knows the session: {}", state.text());
    let token = csrf(port_2, &cookie).await;
    assert_eq!(token, csrf(port_1, &cookie).await, "one CSRF token on every replica");
    let replayed = act(port_2, "/admin/api/webhooks/replay-all", &cookie, &token).await;
    assert_eq!((replayed.status, replayed.json()), (200, serde_json::json!({"replayed": 0})));
    let forged = act(port_2, "/admin/api/webhooks/replay-all", &cookie, &"0".repeat(64)).await;
    assert_eq!(forged.status, 403, "{}", forged.text());

    // Redis holds the hash of the id, with the session's lifetime left as its TTL
    let sessions = queue_keys(&env, &env.key("sessions:*")).await;
    assert_eq!(sessions, vec![session_key(&env, &id)]);
    for key in queue_keys(&env, &format!("{{{}}}*", env.name)).await {
        assert!(!key.contains(&id), "a key holds the session id: {key}");
    }
    let mut redis = env.redis.clone();
    let value: String = redis.get(&sessions[0]).await.unwrap();
    assert!(!value.contains(&id) && !value.contains(&token), "{value}");
    let ttl: i64 = redis.pttl(&sessions[0]).await.unwrap();
    assert!(ttl > 0 && ttl as u128 <= LIFETIME.as_millis(), "TTL {ttl} ms");
    assert!(ttl as u128 > LIFETIME.as_millis() - 60_000, "a fresh session has its lifetime: {ttl} ms");

    // the first replica has just found the session live (and trusts it for a second)
    assert_eq!(get(port_1, "/admin/api/state", &cookie).await.status, 200);
    let logout = act(port_2, "/admin/logout", &cookie, &token).await;
    assert_eq!(logout.status, 204, "{}", logout.text());
    assert!(queue_keys(&env, &env.key("sessions:*")).await.is_empty(), "the logout deleted the key");
    assert_eq!(get(port_2, "/admin/api/state", &cookie).await.status, 401, "at once where it was made");
    let took = until_logged_out(port_1, &cookie, LOGOUT_REACHES_ALL_WITHIN).await;
    eprintln!("the logout reached the other replica after {took:?}");
    let page = get(port_1, "/admin", &cookie).await;
    assert!(page.status == 200 && page.text().contains(r#"id="login""#), "the login form again");
    assert_eq!(act(port_1, "/admin/logout", &cookie, &token).await.status, 401);

    // a login with the old cookie gets a new session; the old one stays ended
    let fresh = http(port_1, "POST", "/admin/login")
        .headers(&[("Origin", &format!("http://127.0.0.1:{port_1}")), ("Cookie", &cookie)])
        .json(&format!(r#"{{"token": "{ADMIN_TOKEN}"}}"#))
        .send()
        .await;
    assert_eq!(fresh.status, 204);
    let new_cookie = fresh.header("set-cookie").unwrap().split(';').next().unwrap().to_string();
    assert_ne!(new_cookie, cookie);
    assert_eq!(get(port_2, "/admin/api/state", &new_cookie).await.status, 200);
    assert_eq!(get(port_2, "/admin/api/state", &cookie).await.status, 401);
    terminate(&mut first).await;
    terminate(&mut second).await;
}

/// A session whose key expired is refused (401), as is one whose key lost its TTL once its
/// creation time is older than the lifetime; a login replaces the session it came with.
#[tokio::test]
async fn an_expired_session_is_refused() {
    let env = TestEnv::new().await;
    let (mut serve, port) = env.serve(&[("STOCKQ_ADMIN_TOKEN", ADMIN_TOKEN)]).await;
    let mut redis = env.redis.clone();

    let cookie = log_in(port).await;
    let key = session_key(&env, session_id(&cookie));
    assert_eq!(get(port, "/admin/api/state", &cookie).await.status, 200);
    let _: bool = redis.pexpire(&key, 1).await.unwrap();
    let took = until_logged_out(port, &cookie, LOGOUT_REACHES_ALL_WITHIN).await;
    eprintln!("the expired session was refused after {took:?}");
    assert!(!redis.exists::<_, bool>(&key).await.unwrap());

    // a key without a TTL (PERSISTed by hand) still ends with its creation time
    let cookie = log_in(port).await;
    let key = session_key(&env, session_id(&cookie));
    // `<began> <token tag>`: the same tag, begun long ago
    let value: String = redis.get(&key).await.unwrap();
    let (created, tag) = value.split_once(' ').expect("began and the token's tag");
    let _: bool = redis.persist(&key).await.unwrap();
    let long_ago = created.parse::<u64>().unwrap() - LIFETIME.as_millis() as u64 - 1;
    let () = redis.set(&key, format!("{long_ago} {tag}")).await.unwrap();
    until_logged_out(port, &cookie, LOGOUT_REACHES_ALL_WITHIN).await;

    // a cookie that no login made is refused without more ado
    for forged in ["stockq_admin=", "stockq_admin=x", &format!("stockq_admin={}", "a".repeat(64))] {
        assert_eq!(get(port, "/admin/api/state", forged).await.status, 401, "{forged}");
    }
    terminate(&mut serve).await;
}

/// Redis down, a request that names a session is answered 503, never let in, and a login
/// too; the login form still shows. Redis back, the session is still there.
#[tokio::test]
async fn while_redis_is_down_the_dashboard_answers_503_and_lets_nobody_in() {
    let mut server = RedisServer::start().await;
    let env = TestEnv::with_redis(&server.url(), |_| {}).await;
    let (mut serve, port) = env.serve(&[("STOCKQ_ADMIN_TOKEN", ADMIN_TOKEN)]).await;
    let cookie = log_in(port).await;
    let token = csrf(port, &cookie).await;
    assert_eq!(get(port, "/admin/api/webhooks", &cookie).await.status, 200);

    server.kill();
    // past the second a replica trusts a session it found live
    tokio::time::sleep(Duration::from_millis(1200)).await;
    for path in ["/admin", "/admin/api/state", "/admin/api/webhooks"] {
        let answer = get(port, path, &cookie).await;
        answer.assert_json_error(503);
        assert!(!answer.text().contains(session_id(&cookie)), "{}", answer.text());
    }
    act(port, "/admin/logout", &cookie, &token).await.assert_json_error(503);
    act(port, "/admin/api/webhooks/replay-all", &cookie, &token).await.assert_json_error(503);
    log_in_answer(port).await.assert_json_error(503);
    assert_eq!(get(port, "/admin/api/state", "x=y").await.status, 401, "no session named: none");
    let form = get(port, "/admin", "x=y").await;
    assert!(form.status == 200 && form.text().contains(r#"id="login""#), "{}", form.text());

    server.restart().await;
    env.eventually(Duration::from_secs(20), "the session back with Redis", || async {
        get(port, "/admin/api/webhooks", &cookie).await.status == 200
    })
    .await;
    terminate(&mut serve).await;
}

/// A session is tied to the admin token it was opened with: a replica started with a new
/// token (the old one leaked, and was rotated) refuses the sessions of the old one, while
/// the replica still on the old token keeps them.
#[tokio::test]
async fn a_session_of_a_rotated_token_is_refused() {
    let env = TestEnv::new().await;
    let (mut old, port_old) = env.serve(&[("STOCKQ_ADMIN_TOKEN", ADMIN_TOKEN)]).await;
    let (mut new, port_new) = env.serve(&[("STOCKQ_ADMIN_TOKEN", "a-new-operators-token")]).await;
    let cookie = log_in(port_old).await;
    assert_eq!(get(port_old, "/admin/api/state", &cookie).await.status, 200);
    assert_eq!(get(port_new, "/admin/api/state", &cookie).await.status, 401, "opened with another token");
    terminate(&mut old).await;
    terminate(&mut new).await;
}
