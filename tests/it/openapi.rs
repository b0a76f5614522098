//! docs/openapi.json, the OpenAPI 3.1 document of every route of `serve`: valid by a real
//! validator (`openapi-spec-validator`), served at `GET /openapi.json` exactly as kept in the
//! repository, and true to a live `serve` by a schema-driven fuzzer (`schemathesis`): no 5xx,
//! and no status, content type, body or header outside the document. Both tools come from PyPI
//! at the versions scripts/openapi-tools.txt pins, through scripts/openapi-tools.sh.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::helpers::{TestEnv, http};

const DOCUMENT: &str = include_str!("../../docs/openapi.json");
const DOCUMENT_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json");
const API_TOKEN: &str = "order-service-token";
const ADMIN_TOKEN: &str = "operators-token";

/// The checks of schemathesis that the live server must pass, as schemathesis names them.
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
                      response_schema_conformance,response_headers_conformance";
/// Test cases per operation and phase: enough to reach every route's refusals and its answers,
/// few enough that the whole run takes seconds on two busy cores.
const MAX_EXAMPLES: &str = "25";

/// The bin directory of the tools' virtualenv, installed by scripts/openapi-tools.sh when
/// missing (the script is quick when they are there).
fn tools() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/openapi-tools.sh");
        let out =
            std::process::Command::new("bash").arg(script).output().expect("run scripts/openapi-tools.sh");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "scripts/openapi-tools.sh failed ({}): {stderr}", out.status);
        let bin = String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or_default().trim().to_string();
        PathBuf::from(bin)
    })
}

/// Runs a tool of the virtualenv to its end (at most `limit`), in a directory of its own (so
/// that nothing it writes lands in the repository): whether it succeeded, and all it printed.
async fn run_tool(tool: &str, args: &[&str], limit: Duration) -> (bool, String) {
    let dir = std::env::temp_dir().join(format!("stockq-openapi-{:08x}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut cmd = tokio::process::Command::new(tools().join(tool));
    cmd.args(args)
        .current_dir(&dir)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = tokio::time::timeout(limit, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{tool} did not finish within {limit:?}"))
        .unwrap_or_else(|e| panic!("run {tool}: {e}"));
    let _ = std::fs::remove_dir_all(&dir);
    let printed = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), printed)
}

/// The document is OpenAPI 3.1 by the validator's word, carries the crate's version, and names
/// every route `serve` answers.
#[tokio::test]
async fn openapi_document_is_valid() {
    let (ok, printed) = run_tool("openapi-spec-validator", &[DOCUMENT_PATH], Duration::from_secs(60)).await;
    assert!(ok, "openapi-spec-validator rejects docs/openapi.json:\n{printed}");

    let document: serde_json::Value = serde_json::from_str(DOCUMENT).expect("docs/openapi.json is JSON");
    assert_eq!(document["openapi"], "3.1.0");
    assert_eq!(document["info"]["version"], env!("CARGO_PKG_VERSION"), "info.version is the crate's");
    let mut routes: Vec<String> = Vec::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            routes.push(format!("{} {path}", method.to_uppercase()));
        }
    }
    routes.sort();
    let mut expected = vec![
        "POST /reserve",
        "GET /stock/{id}",
        "GET /reservations/{event_id}",
        "POST /reservations/{event_id}/confirm",
        "POST /reservations/{event_id}/cancel",
        "GET /healthz",
        "GET /metrics",
        "GET /openapi.json",
        "GET /admin",
        "POST /admin/login",
        "POST /admin/logout",
        "GET /admin/dashboard.js",
        "GET /admin/dashboard.css",
        "GET /admin/api/state",
        "GET /admin/api/books",
        "POST /admin/api/dead/{event_id}/requeue",
        "POST /admin/api/dead/{event_id}/drop",
        "GET /admin/api/webhooks",
        "POST /admin/api/webhooks/{id}/replay",
        "POST /admin/api/webhooks/replay-all",
        "GET /admin/api/dead",
        "GET /admin/api/dead/reasons",
        "POST /admin/api/dead/requeue-all",
        "POST /admin/api/dead/drop-all",
        "POST /admin/api/products/{id}/pause",
        "POST /admin/api/products/{id}/resume",
        "POST /admin/api/deductions/pause",
        "POST /admin/api/deductions/resume",
        "GET /admin/api/audit",
        "GET /admin/api/search",
        "GET /admin/api/holds",
        "GET /admin/api/history",
    ];
    expected.sort();
    assert_eq!(routes, expected, "every route of serve, and nothing else");
}

/// Logs in to the dashboard: the session cookie (`stockq_admin=...`) and its CSRF token.
async fn log_in(port: u16, origin: &str) -> (String, String) {
    let body = format!(r#"{{"token": "{ADMIN_TOKEN}"}}"#);
    let login = http(port, "POST", "/admin/login").header("Origin", origin).json(&body).send().await;
    assert_eq!(login.status, 204, "{}", login.head);
    let cookie = login.header("set-cookie").expect("a session cookie").split(';').next().unwrap().to_string();
    let page = http(port, "GET", "/admin").header("Cookie", &cookie).send().await.text();
    let at = page.find(r#"name="csrf-token" content=""#).expect("the page carries its CSRF token") + 27;
    (cookie, page[at..at + 64].to_string())
}

/// Runs schemathesis from the document against `url` with `headers` on every request, in
/// `phases` and with the `filter` flags, asserting that it finds nothing; prints its count of
/// test cases.
async fn fuzz(what: &str, url: &str, headers: &[String], phases: &str, filter: &[&str]) {
    let mut args =
        vec!["run", DOCUMENT_PATH, "--url", url, "--checks", CHECKS, "--max-examples", MAX_EXAMPLES];
    // one worker: two threads of schemathesis describing hypothesis's lambdas parse Python
    // source at once, which Python 3.11's parser does not survive ("AST constructor recursion
    // depth mismatch", a Runtime Error in about half the runs since the dashboard's product
    // routes); one worker is also no slower here
    args.extend(["--phases", phases, "--workers", "1", "--request-timeout", "20"]);
    // security parameters come from `headers` only; nothing is kept between runs
    args.extend(["--generation-with-security-parameters", "false", "--generation-database", "none"]);
    args.push("--no-color");
    for header in headers {
        args.extend(["-H", header.as_str()]);
    }
    args.extend(filter);
    let (ok, printed) = run_tool("schemathesis", &args, Duration::from_secs(240)).await;
    assert!(ok, "schemathesis ({what}) found answers outside docs/openapi.json:\n{printed}");
    let mut lines = printed.lines().map(str::trim);
    let cases = lines.find(|l| *l == "Test cases:").and_then(|_| lines.next()).unwrap_or("?");
    eprintln!("schemathesis ({what}): {cases}");
}

/// schemathesis against a live `serve`: first with both tokens set, logged in to the
/// dashboard, MySQL connected, a product to reserve (the document's example, 42), one with a
/// per-buyer limit and two dead letters (one under the document's example id), the logout
/// last since it ends the session; then briefly against a `serve` with neither token, whose
/// order-service API and dashboard are off. Every answer must be in the document.
#[tokio::test]
async fn openapi_fuzzed_against_a_live_serve() {
    let started = Instant::now();
    let env = TestEnv::new().await;
    env.stock(42, 1_000).await;
    env.stock(7, 100).await;
    let (code, _, stderr) = env.run(&["stock", "limit", "7", "2"]).await;
    assert_eq!(code, 0, "{stderr}");
    let entry = r#"{"event_id":"order-1001","product_id":42,"qty":1}"#;
    let envelope = serde_json::json!({"reason": "seeded", "attempts": 3, "failed_at": 1, "entry": entry});
    let mut redis = env.redis.clone();
    let dead = env.key("dead");
    let _: i64 = redis::AsyncCommands::lpush(&mut redis, &dead, envelope.to_string()).await.unwrap();
    let _: i64 = redis::AsyncCommands::lpush(&mut redis, &dead, "not an envelope").await.unwrap();

    let (serve, port) =
        env.serve(&[("STOCKQ_API_TOKEN", API_TOKEN), ("STOCKQ_ADMIN_TOKEN", ADMIN_TOKEN)]).await;
    let url = format!("http://127.0.0.1:{port}");

    // served as kept, to anyone
    let served = http(port, "GET", "/openapi.json").send().await;
    assert_eq!(served.status, 200, "{}", served.head);
    assert_eq!(served.header("content-type"), Some("application/json"), "{}", served.head);
    assert!(served.body == DOCUMENT.as_bytes(), "GET /openapi.json is docs/openapi.json");

    // MySQL connected, so that the routes that need it answer rather than 503
    env.eventually(Duration::from_secs(30), "serve to connect to MySQL", || async {
        http(port, "GET", "/healthz").send().await.json()["status"] == "ok"
    })
    .await;
    // a body over 16 KiB is 413 on the login too, as on every route
    let big = format!(r#"{{"token": "{}"}}"#, "x".repeat(17 * 1024));
    let login = http(port, "POST", "/admin/login").header("Origin", &url).json(&big).send().await;
    login.assert_json_error(413);
    let (cookie, csrf) = log_in(port, &url).await;
    let headers = [
        format!("Authorization: Bearer {API_TOKEN}"),
        format!("Cookie: {cookie}"),
        format!("X-CSRF-Token: {csrf}"),
        format!("Origin: {url}"),
    ];
    let all = "examples,coverage,fuzzing";
    fuzz("logged in", &url, &headers, all, &["--exclude-path", "/admin/logout"]).await;
    fuzz("logout", &url, &headers, all, &["--include-path", "/admin/logout"]).await;
    let after = http(port, "GET", "/admin/api/state").header("Cookie", &cookie).send().await;
    assert_eq!(after.status, 401, "the logout was fuzzed too: the session ended");
    drop(serve);

    let (off, port) = env.serve(&[]).await;
    let url = format!("http://127.0.0.1:{port}");
    fuzz("no tokens", &url, &[format!("Origin: {url}")], "examples,fuzzing", &[]).await;
    drop(off);
    eprintln!("openapi: fuzzed in {:?}", started.elapsed());
}
