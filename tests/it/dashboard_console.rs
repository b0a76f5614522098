//! The dashboard as an operator's console during a sale (docs/dashboard.md, docs/operations.md
//! "Running a sale"): its routes over plain HTTP.

use std::time::Duration;

use serde_json::{Value, json};

use crate::dashboard::{ADMIN_TOKEN, Headers, csrf_of, log_in, start_serve};
use crate::helpers::{TestEnv, http, terminate};

/// The console's reads: each needs a live session.
const READS: [&str; 7] = [
    "/admin/api/audit",
    "/admin/api/search?event_id=order-1",
    "/admin/api/holds",
    "/admin/api/dead/reasons",
    "/admin/api/dead?reason=unknown",
    "/admin/api/history",
    "/admin/api/search?buyer=b-1",
];

/// The console's actions: each needs a live session, its CSRF token and the own origin.
const ACTIONS: [&str; 6] = [
    "/admin/api/products/1/pause",
    "/admin/api/products/1/resume",
    "/admin/api/deductions/pause",
    "/admin/api/deductions/resume",
    "/admin/api/dead/requeue-all",
    "/admin/api/dead/drop-all",
];

/// `stockq stats --json`
async fn stats(env: &TestEnv) -> Value {
    let (code, out, err) = env.run(&["stats", "--json"]).await;
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// `stockq audit --json`, newest first.
async fn audit(env: &TestEnv) -> Vec<Value> {
    let (code, out, err) = env.run(&["audit", "--json"]).await;
    assert_eq!(code, 0, "{err}");
    out.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Whether `who` is a dashboard session from this machine: `dashboard:<8 hex>@127.0.0.1`.
fn is_dashboard(who: &str) -> bool {
    let Some(rest) = who.strip_prefix("dashboard:") else { return false };
    let Some((hash, address)) = rest.split_once('@') else { return false };
    hash.len() == 8 && hash.bytes().all(|b| b.is_ascii_hexdigit()) && address == "127.0.0.1"
}

/// Off without a token; every read refused without a session; every action refused without a
/// session, its CSRF token or the own origin; then each route's answers, its bad input
/// refused, and what the actions did in the audit under the session's name.
#[tokio::test]
async fn dashboard_console_routes_need_a_session_and_actions_its_csrf_token_and_the_own_origin() {
    let env = TestEnv::new().await;
    env.stock(1, 10).await;
    let (mut off, port) = start_serve(&env, None).await;
    for path in READS {
        let answer = http(port, "GET", path).send().await;
        assert_eq!(answer.status, 403, "{path}: {}", answer.text());
        assert!(answer.text().contains("set STOCKQ_ADMIN_TOKEN"), "{}", answer.text());
    }
    for path in ACTIONS {
        let answer = http(port, "POST", path).send().await;
        assert_eq!(answer.status, 403, "{path}: {}", answer.text());
    }
    terminate(&mut off).await;

    let (mut serve, port) = start_serve(&env, Some(ADMIN_TOKEN)).await;
    let origin = format!("http://127.0.0.1:{port}");
    let other_port = format!("http://127.0.0.1:{}", port + 1);
    let (cookie, _) = log_in(port).await;
    let page = http(port, "GET", "/admin").header("Cookie", &cookie).send().await;
    let csrf = csrf_of(&page.text());
    let session_id = cookie.split_once('=').unwrap().1.to_string();
    // MySQL connected, so that the search by event id and the drops answer rather than 503
    env.eventually(Duration::from_secs(30), "serve to connect to MySQL", || async {
        http(port, "GET", "/healthz").send().await.json()["status"] == "ok"
    })
    .await;

    let get = |path: &str| http(port, "GET", path).header("Cookie", &cookie).send();
    for path in READS {
        let anonymous = http(port, "GET", path).send().await;
        assert_eq!(
            (anonymous.status, anonymous.text().as_str()),
            (401, r#"{"error":"log in at /admin first"}"#),
            "{path}"
        );
        let answer = get(path).await;
        assert_eq!(answer.status, 200, "{path}: {}", answer.text());
        assert_eq!(answer.header("cache-control"), Some("no-store"), "{path}: {}", answer.head);
        let posted = http(port, "POST", path).header("Cookie", &cookie).send().await;
        assert_eq!(posted.status, 405, "{path}: reads are GETs");
    }
    for path in ACTIONS {
        let cases: [(Headers, u16, &str); 6] = [
            (&[("Origin", &origin), ("X-CSRF-Token", &csrf)], 401, "log in"),
            (&[("Cookie", &cookie), ("Origin", &origin)], 403, "CSRF token"),
            (&[("Cookie", &cookie), ("Origin", &origin), ("X-CSRF-Token", "0")], 403, "CSRF token"),
            (&[("Cookie", &cookie), ("X-CSRF-Token", &csrf)], 403, "own origin"),
            (
                &[("Cookie", &cookie), ("X-CSRF-Token", &csrf), ("Origin", "http://evil.example")],
                403,
                "own origin",
            ),
            (&[("Cookie", &cookie), ("X-CSRF-Token", &csrf), ("Origin", &other_port)], 403, "own origin"),
        ];
        for (headers, expected, says) in cases {
            let answer = http(port, "POST", path).headers(headers).json("{}").send().await;
            let body = answer.text();
            assert_eq!(answer.status, expected, "{path} {headers:?}: {body}");
            assert!(body.starts_with(r#"{"error":"#) && body.contains(says), "{path} {headers:?}: {body}");
        }
        assert_eq!(get(path).await.status, 405, "{path}: actions are POSTs");
    }
    assert!(audit(&env).await.is_empty(), "nothing refused was done, nor audited");

    let act = [("Cookie", cookie.as_str()), ("X-CSRF-Token", csrf.as_str()), ("Origin", origin.as_str())];
    let post = |path: &str| http(port, "POST", path).headers(&act).send();
    let post_json = |path: &str, body: &str| http(port, "POST", path).headers(&act).json(body).send();

    // a product's sale, paused and resumed; an unknown product, and ids that cannot be one
    let unknown = post("/admin/api/products/9/pause").await;
    unknown.assert_json_error(404);
    assert!(unknown.text().contains("unknown product 9"), "{}", unknown.text());
    for bad in ["x", "0", "-1", "99999999999999999999"] {
        let answer = post(&format!("/admin/api/products/{bad}/pause")).await;
        answer.assert_json_error(400);
        assert!(answer.text().contains("is not a positive integer"), "{bad}: {}", answer.text());
    }
    for (path, changed) in [
        ("/admin/api/products/1/pause", true),
        ("/admin/api/products/1/pause", false),
        ("/admin/api/products/1/resume", true),
        ("/admin/api/products/1/resume", false),
        ("/admin/api/deductions/pause", true),
        ("/admin/api/deductions/pause", false),
    ] {
        let answer = post(path).await;
        assert_eq!((answer.status, answer.json()), (200, json!({ "changed": changed })), "{path}");
    }
    let paused = stats(&env).await["deductions_paused"].clone();
    assert!(is_dashboard(paused["by"].as_str().unwrap_or_default()), "{paused}");
    let answer = post("/admin/api/deductions/resume").await;
    assert_eq!((answer.status, answer.json()), (200, json!({ "changed": true })));
    assert_eq!(stats(&env).await["deductions_paused"], Value::Null);

    // each of them in the audit, newest first, under the session's name, never its id
    let listed = get("/admin/api/audit?count=7").await.json();
    let entries = listed["audit"].as_array().unwrap();
    let actions: Vec<(&str, &str)> =
        entries.iter().map(|a| (a["action"].as_str().unwrap(), a["detail"].as_str().unwrap())).collect();
    assert_eq!(
        actions,
        [
            ("resume", "deductions"),
            ("pause", "deductions (already paused)"),
            ("pause", "deductions"),
            ("stock resume", "product 1 (was not paused)"),
            ("stock resume", "product 1"),
            ("stock pause", "product 1 (already paused)"),
            ("stock pause", "product 1"),
        ]
    );
    let who = entries[0]["who"].as_str().unwrap();
    assert!(is_dashboard(who), "{who}");
    assert!(entries.iter().all(|a| a["who"] == who), "one session, one name: {listed}");
    assert!(!listed.to_string().contains(&session_id), "the session id is never written");
    assert!(!listed.to_string().contains(&session_id[..8]), "nor its beginning");
    assert_eq!(get("/admin/api/audit").await.json()["audit"].as_array().unwrap().len(), 7, "50 by default");
    assert_eq!(get("/admin/api/audit?count=0").await.json()["audit"].as_array().unwrap().len(), 1);
    get("/admin/api/audit?count=x").await.assert_json_error(400);
    assert_eq!(audit(&env).await[0]["who"], who, "stockq audit names the same");

    // searches: by one of event_id or buyer, each a valid id
    for bad in [
        "/admin/api/search",
        "/admin/api/search?event_id=a&buyer=b",
        "/admin/api/search?event_id=",
        "/admin/api/search?event_id=order%201",
        "/admin/api/search?buyer=b%21",
        "/admin/api/search?buyer=b&limit=x",
    ] {
        get(bad).await.assert_json_error(400);
    }
    let none = get("/admin/api/search?event_id=order-1").await.json();
    assert_eq!((&none["status"], &none["outcomes"]), (&Value::Null, &json!([])), "{none}");
    assert_eq!(none["place"], "unknown to Redis and MySQL");
    let buyer = get("/admin/api/search?buyer=b-1").await.json();
    assert_eq!(
        (&buyer["outcomes"], &buyer["held"], &buyer["complete"]),
        (&json!([]), &json!([]), &json!(true))
    );
    let holds = get("/admin/api/holds?limit=100000").await.json();
    assert_eq!((&holds["total"], &holds["holds"]), (&json!(0), &json!([])), "{holds}");
    assert!(holds["at"].as_i64().unwrap() > 0);

    // dead letters: their reasons, a filter, and the actions on all of one
    let reasons = get("/admin/api/dead/reasons").await.json();
    assert_eq!(reasons, json!({ "reasons": [], "more": 0, "complete": true }));
    let filtered = get("/admin/api/dead?reason=unknown&limit=5").await.json();
    assert_eq!(filtered, json!({ "reason": "unknown", "total": 0, "letters": [] }));
    let all = get("/admin/api/dead").await.json();
    assert_eq!(all, json!({ "reason": null, "total": 0, "letters": [] }));
    for (body, status) in
        [(r#"{"reason": ""}"#, 400), (r#"{"why": "x"}"#, 400), ("not json", 400), (r#"{"reason": 7}"#, 400)]
    {
        post_json("/admin/api/dead/requeue-all", body).await.assert_json_error(status);
        post_json("/admin/api/dead/drop-all", body).await.assert_json_error(status);
    }
    post("/admin/api/dead/drop-all").await.assert_json_error(400);
    let requeued = post_json("/admin/api/dead/requeue-all", "{}").await;
    assert_eq!((requeued.status, requeued.json()), (200, json!({ "requeued": 0, "left": 0 })));
    let dropped = post_json("/admin/api/dead/drop-all", r#"{"reason": "unknown product"}"#).await;
    assert_eq!((dropped.status, dropped.json()), (200, json!({ "dropped": 0, "given_back": 0 })));
    let latest = get("/admin/api/audit?count=2").await.json();
    assert_eq!(latest["audit"][0]["detail"], r#"reason "unknown product": 0 dropped, 0 units given back"#);
    assert_eq!(latest["audit"][1]["detail"], "all: 0 requeued");
    assert_eq!(latest["audit"][0]["action"], "dead drop");

    // the charts' last minutes, sampled by the server
    get("/admin/api/state").await;
    let history = get("/admin/api/history").await.json();
    let samples = history["samples"].as_array().unwrap();
    assert!(!samples.is_empty(), "{history}");
    assert_eq!(history["bounds_ms"].as_array().unwrap().len(), 15);
    let sample = &samples[samples.len() - 1];
    for field in ["at", "pending", "processing", "held", "dead", "applied", "rejected"] {
        assert!(sample[field].is_i64(), "{field}: {sample}");
    }
    assert_eq!(sample["reserve_counts"].as_array().unwrap().len(), 16, "{sample}");
    assert!(sample["end_to_end"].is_object(), "{sample}");
    terminate(&mut serve).await;
}
