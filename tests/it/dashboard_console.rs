//! The dashboard as an operator's console during a sale (docs/dashboard.md, docs/operations.md
//! "Running a sale"): a product's sale paused and resumed, deductions paused and resumed, a
//! reservation found by its event id and by its buyer, the holds, the dead letters of one
//! reason dropped at once, and every action in the audit under the dashboard's session. Over
//! plain HTTP for the routes' refusals, and in a headless Chromium for the page.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use crate::browser::{Browser, Page};
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

/// Opens the dashboard in `browser` and logs in.
async fn open_logged_in<'a>(browser: &'a Browser, port: u16, within: Duration) -> Page<'a> {
    let page = browser.open(&format!("http://127.0.0.1:{port}/admin")).await;
    page.wait_for("!!document.getElementById('login')", within, "the login form").await;
    page.type_into("#token", ADMIN_TOKEN).await;
    page.click("#login-button").await;
    page.wait_for(
        "document.querySelector('#status')?.classList.contains('ok')",
        within,
        "the live dashboard",
    )
    .await;
    page
}

/// A number shown on the page (`1,234` → 1234).
async fn shown(page: &Page<'_>, selector: &str) -> i64 {
    page.text(selector).await.replace(',', "").parse().unwrap_or(-1)
}

/// Shoppers over HTTP until told to stop: round-robin over products 1..=3, each answer counted
/// per product (201, 409 sold out, 423 paused).
struct Shoppers {
    stop: Arc<AtomicBool>,
    reserved: Arc<[AtomicU64; 3]>,
    task: tokio::task::JoinHandle<()>,
}

impl Shoppers {
    fn start(port: u16) -> Shoppers {
        let stop = Arc::new(AtomicBool::new(false));
        let reserved: Arc<[AtomicU64; 3]> = Arc::default();
        let (flag, counts) = (stop.clone(), reserved.clone());
        let task = tokio::spawn(async move {
            let mut i = 0;
            while !flag.load(Ordering::Relaxed) {
                let product = i % 3 + 1;
                let body = format!(r#"{{"product_id": {product}, "qty": 1}}"#);
                let answer = http(port, "POST", "/reserve").json(&body).send().await;
                match answer.status {
                    201 => {
                        counts[product - 1].fetch_add(1, Ordering::Relaxed);
                    }
                    409 | 423 => {}
                    other => panic!("POST /reserve {product}: {other} {}", answer.text()),
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        Shoppers { stop, reserved, task }
    }

    fn reserved(&self, product: usize) -> u64 {
        self.reserved[product - 1].load(Ordering::Relaxed)
    }

    async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("the shoppers");
    }
}

/// During a sale, in Chromium: a product's sale paused by a click (asked first) is refused
/// `paused`, counted on the page, while the other products sell and deductions go on; a
/// product that sells out shows it; resumed, it sells again. Deductions paused from the page
/// (asked first) raise the banner, `stockq stats` says so and pending grows; resumed, the
/// banner goes and the workers drain it. The audit panel lists it all under the session.
#[tokio::test]
async fn dashboard_console_pauses_a_product_and_deductions_during_a_sale() {
    let env = TestEnv::new().await;
    env.stock(1, 5000).await;
    env.stock(2, 5000).await;
    env.stock(3, 40).await;
    let within = Duration::from_secs(20);
    let (mut serve, port) = start_serve(&env, Some(ADMIN_TOKEN)).await;
    let mut worker = env.spawn(&["worker"]);
    let browser = Browser::launch().await;
    let page = open_logged_in(&browser, port, within).await;
    // the tiles show their whole text, "consistent" too, on one line
    page.wait_for(
        "document.getElementById('books-state').textContent === 'consistent'",
        within,
        "the books' tile",
    )
    .await;
    let cut = page
        .eval(
            "[...document.querySelectorAll('.tile .value')].filter((v) => v.scrollWidth > v.clientWidth \
             || v.offsetHeight > document.getElementById('pending').offsetHeight).map((v) => v.id)",
        )
        .await;
    assert_eq!(cut, json!([]), "tiles cut off or wrapped");
    let shoppers = Shoppers::start(port);

    let row = |product: i64| format!("#books tr[data-product='{product}']");
    let lever = |product: i64, action: &str| format!("{} button[data-action='{action}']", row(product));
    let exists = |selector: &str| format!("!!document.querySelector(\"{selector}\")");
    let refused = |product: i64| format!("#books td[data-refused='{product}']");
    page.wait_for(&exists(&lever(2, "pause")), within, "product 2's Pause").await;
    page.wait_for(
        "Number(document.getElementById('applied').textContent.replace(/,/g, '')) > 0",
        within,
        "a deduction",
    )
    .await;

    // asked first: told no, nothing is paused
    page.eval("window.confirm = (asked) => { window.asked = asked; return false; }").await;
    page.click(&lever(2, "pause")).await;
    let asked = page.eval("window.asked").await;
    assert!(asked.as_str().unwrap_or_default().contains("Pause the sale of product 2?"), "{asked}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(stats(&env).await["paused_products"], json!([]));

    page.eval("window.confirm = () => true").await;
    page.click(&lever(2, "pause")).await;
    page.wait_for(
        &format!("document.querySelector(\"{} .badge.paused\")?.textContent === 'paused'", row(2)),
        within,
        "product 2 paused on the page",
    )
    .await;
    page.wait_for(&exists(&lever(2, "resume")), within, "product 2's Resume").await;
    let applied_at_pause = shown(&page, "#applied").await;
    let reserved_at_pause = shoppers.reserved(2);
    // refused while paused, counted by serve in Redis and shown, as deductions go on
    page.wait_for(
        &format!("/paused [1-9]/.test(document.querySelector(\"{}\")?.textContent)", refused(2)),
        within,
        "product 2's paused refusals on the page",
    )
    .await;
    page.wait_for(
        &format!(
            "Number(document.getElementById('applied').textContent.replace(/,/g, '')) > {}",
            applied_at_pause + 20
        ),
        within,
        "deductions going on while product 2 is paused",
    )
    .await;
    assert!(shoppers.reserved(2) <= reserved_at_pause + 1, "product 2 sold nothing while paused");
    let counted = stats(&env).await;
    assert!(counted["refusals"]["2"]["paused"].as_u64().unwrap_or(0) > 0, "{}", counted["refusals"]);
    assert_eq!(counted["paused_products"][0]["product_id"], 2, "{}", counted["paused_products"]);
    assert_eq!(counted["deductions_paused"], Value::Null);

    // product 3 sells out: its refusals say so
    page.wait_for(
        &format!("/sold out [1-9]/.test(document.querySelector(\"{} .soldout\")?.textContent)", refused(3)),
        within,
        "product 3 sold out on the page",
    )
    .await;
    page.wait_for(
        &format!("!!document.querySelector(\"{} .badge.soldout\")", row(3)),
        within,
        "product 3's sold-out badge",
    )
    .await;

    page.click(&lever(2, "resume")).await;
    page.wait_for(&exists(&lever(2, "pause")), within, "product 2 selling again on the page").await;
    assert!(!page.eval(&exists(&format!("{} .badge.paused", row(2)))).await.as_bool().unwrap());
    let resumed_at = shoppers.reserved(2);
    env.eventually(within, "product 2 sold again", || async { shoppers.reserved(2) > resumed_at + 5 }).await;
    assert_eq!(stats(&env).await["paused_products"], json!([]));

    // deductions: asked first; paused, the banner; resumed, gone
    assert!(page.eval("document.getElementById('paused-banner').hidden").await.as_bool().unwrap());
    page.eval("window.confirm = (asked) => { window.asked = asked; return false; }").await;
    page.click("#deductions-pause").await;
    assert!(page.eval("window.asked").await.as_str().unwrap_or_default().contains("Pause deductions?"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(stats(&env).await["deductions_paused"], Value::Null, "told no");
    page.eval("window.confirm = () => true").await;
    page.click("#deductions-pause").await;
    page.wait_for("!document.getElementById('paused-banner').hidden", within, "the banner").await;
    let banner = page.text("#paused-text").await;
    assert!(banner.starts_with("Deductions paused since "), "{banner}");
    assert!(
        banner.contains(" by dashboard:") && banner.contains("@127.0.0.1: workers claim nothing"),
        "{banner}"
    );
    assert!(page.eval("document.getElementById('deductions-pause').hidden").await.as_bool().unwrap());
    let paused = stats(&env).await["deductions_paused"].clone();
    assert!(is_dashboard(paused["by"].as_str().unwrap_or_default()), "{paused}");
    // reservations go on and wait: pending grows, nothing more is applied
    tokio::time::sleep(Duration::from_millis(500)).await;
    let applied = stats(&env).await["counters"]["applied"].as_u64().unwrap();
    page.wait_for(
        "Number(document.getElementById('pending').textContent.replace(/,/g, '')) >= 30",
        within,
        "pending growing",
    )
    .await;
    assert_eq!(
        stats(&env).await["counters"]["applied"].as_u64().unwrap(),
        applied,
        "no deduction while paused"
    );

    page.click("#deductions-resume").await;
    page.wait_for("document.getElementById('paused-banner').hidden", within, "the banner gone").await;
    assert_eq!(stats(&env).await["deductions_paused"], Value::Null);
    shoppers.stop().await;
    page.wait_for("document.getElementById('pending').textContent === '0'", within, "pending drained").await;

    // the audit panel: every action, newest first, under the session's name
    let expected = [
        ("resume", "deductions"),
        ("pause", "deductions"),
        ("stock resume", "product 2"),
        ("stock pause", "product 2"),
    ];
    let rows = "[...document.querySelectorAll('#audit tbody tr')].map((tr) => [...tr.cells].map((td) => td.textContent))";
    page.wait_for(&format!("{rows}.length >= 4 && {rows}[0][2] === 'resume'"), within, "the audit panel")
        .await;
    let listed = page.eval(rows).await;
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 4, "{listed:?}");
    for (cells, (action, detail)) in listed.iter().zip(expected) {
        assert_eq!((cells[2].as_str().unwrap(), cells[3].as_str().unwrap()), (action, detail), "{listed:?}");
        assert!(is_dashboard(cells[1].as_str().unwrap()), "{cells}");
        assert!(cells[0].as_str().unwrap().contains('/'), "when, with its date: {cells}");
    }
    env.assert_books_balance().await;

    // reloaded, the page draws the charts' last minutes at once, as serve kept them
    page.call("Page.reload", json!({})).await;
    page.wait_for("document.querySelector('#status')?.classList.contains('ok')", within, "the page again")
        .await;
    let points = page
        .eval("((document.querySelector('#chart-depth path')?.getAttribute('d') || '').match(/L/g) || []).length")
        .await;
    assert!(points.as_u64().unwrap_or(0) >= 5, "the charts' history drawn on load: {points} segments");

    let errors = browser.errors.lock().unwrap().clone();
    assert!(errors.is_empty(), "the page reported errors: {errors:#?}");
    browser.close().await;
    terminate(&mut worker).await;
    terminate(&mut serve).await;
}

/// In Chromium: an order found by its event id and by its buyer, the holds with their
/// deadlines, and the dead letters of one reason dropped at once (asked first, saying how
/// many) while those of other reasons stay; the drop in the audit under the session.
#[tokio::test]
async fn dashboard_console_searches_orders_and_drops_the_dead_letters_of_a_reason() {
    let env = TestEnv::new().await;
    env.stock(1, 100).await;
    let within = Duration::from_secs(20);
    let (mut serve, port) = start_serve(&env, Some(ADMIN_TOKEN)).await;
    for (event_id, buyer, hold) in
        [("find-1", "b-42", ""), ("find-2", "b-42", r#", "hold": "10m""#), ("other-1", "b-7", "")]
    {
        let body =
            format!(r#"{{"product_id": 1, "qty": 2, "event_id": "{event_id}", "buyer": "{buyer}"{hold}}}"#);
        let answer = http(port, "POST", "/reserve").json(&body).send().await;
        assert_eq!(answer.status, 201, "{}", answer.text());
    }
    // dead letters of three reasons: unknown product 77 (three), 78 (one), not an event (one)
    for (id, product) in [("lost-1", 77), ("lost-2", 77), ("lost-3", 77), ("lost-4", 78)] {
        env.push_raw(format!(r#"{{"event_id":"{id}","product_id":{product},"qty":1}}"#).as_bytes()).await;
    }
    env.push_raw(b"not an event").await;
    env.drain(100).await;
    assert_eq!(env.len("dead").await, 5);

    let browser = Browser::launch().await;
    let page = open_logged_in(&browser, port, within).await;

    // the holds, due first, with their deadlines and the time left
    page.wait_for("!!document.querySelector(\"#holds tr[data-id='find-2']\")", within, "the hold").await;
    let hold = page
        .eval(
            "[...document.querySelectorAll(\"#holds tr[data-id='find-2'] td\")].map((td) => td.textContent)",
        )
        .await;
    let hold: Vec<&str> = hold.as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
    assert_eq!((hold[0], hold[1], hold[2], hold[3]), ("find-2", "1", "2", "b-42"), "{hold:?}");
    assert!(hold[4].contains('/') && hold[4].contains(':'), "the deadline, dated: {hold:?}");
    assert!(hold[5].starts_with('9') && hold[5].contains("min"), "about ten minutes left: {hold:?}");
    assert_eq!(page.text("#holds-summary").await, "1 held unpaid");

    // an order by its event id
    page.type_into("#search-text", "find-1").await;
    page.click("#search-go").await;
    page.wait_for("document.getElementById('search-result').dataset.found === 'applied'", within, "find-1")
        .await;
    let found = page.text("#search-result").await;
    assert!(found.contains("find-1 · product 1 × 2 · buyer b-42"), "{found}");
    assert!(found.contains("where: applied"), "{found}");
    assert!(found.contains("1 outcome(s)"), "{found}");
    assert_eq!(page.eval("document.querySelectorAll('#search-result tbody tr').length").await, 1);

    // a buyer's orders: their outcomes and holds, nobody else's
    page.eval("document.getElementById('search-kind').value = 'buyer'").await;
    page.eval("document.getElementById('search-text').value = ''").await;
    page.type_into("#search-text", "b-42").await;
    page.click("#search-go").await;
    page.wait_for("document.getElementById('search-result').dataset.found === 'buyer'", within, "b-42").await;
    let found = page.text("#search-result").await;
    assert!(found.starts_with("buyer b-42: 1 outcome(s), 1 held"), "{found}");
    assert!(found.contains("find-1") && found.contains("find-2"), "{found}");
    assert!(!found.contains("other-1"), "another buyer's order: {found}");
    // an event id in the results searches it
    page.click("#search-result a[data-search-event='find-2']").await;
    page.wait_for("document.getElementById('search-result').dataset.found === 'held'", within, "find-2")
        .await;
    assert!(page.text("#search-result").await.contains("where: held unpaid until"));

    // the dead letters of one reason: chosen, listed with their dates, all dropped at once
    let choice = "[...document.getElementById('dead-reason').options].map((o) => o.textContent)";
    page.wait_for(
        &format!(
            "{choice}.includes('unknown product 77 (3)') && {choice}.includes('unknown product 78 (1)')"
        ),
        within,
        "the reasons, counted",
    )
    .await;
    assert_eq!(page.eval(&format!("{choice}[0]")).await, "every reason (5)");
    page.eval(
        "(() => { const s = document.getElementById('dead-reason'); s.value = 'unknown product 77'; \
         s.dispatchEvent(new Event('change')); })()",
    )
    .await;
    page.wait_for(
        "document.querySelectorAll('#dead tbody tr[data-id]').length === 3",
        within,
        "the three dead letters of the reason",
    )
    .await;
    let summary = page.text("#dead-summary").await;
    assert_eq!(summary, "3 whose reason holds “unknown product 77”");
    let dates = page
        .eval("[...document.querySelectorAll('#dead tbody tr')].map((tr) => tr.cells[4].textContent)")
        .await;
    for date in dates.as_array().unwrap() {
        let date = date.as_str().unwrap();
        assert!(date.contains('/') && date.contains(':'), "failed at, with its date: {date}");
    }
    page.eval("window.confirm = (asked) => { window.asked = asked; return false; }").await;
    page.click("#dead-drop-all").await;
    let asked = page.eval("window.asked").await;
    assert_eq!(
        asked.as_str().unwrap(),
        "Drop all 3 dead letters whose reason holds “unknown product 77”? Their stock goes back on sale and their orders are cancelled."
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(env.len("dead").await, 5, "told no");
    page.eval("window.confirm = () => true").await;
    page.click("#dead-drop-all").await;
    env.eventually(within, "the reason's dead letters dropped", || async { env.len("dead").await == 2 })
        .await;
    let left: Vec<String> =
        env.dead_letters().await.iter().map(|l| l["reason"].as_str().unwrap().to_string()).collect();
    assert!(left.contains(&"unknown product 78".to_string()), "{left:?}");
    assert!(!left.iter().any(|r| r.contains("unknown product 77")), "{left:?}");
    page.wait_for(
        "document.querySelector('#dead td.empty')?.textContent === 'none'",
        within,
        "none left of it",
    )
    .await;

    // back to every reason: the other two, with their actions
    page.eval(
        "(() => { const s = document.getElementById('dead-reason'); s.value = ''; \
         s.dispatchEvent(new Event('change')); })()",
    )
    .await;
    page.wait_for("document.getElementById('dead-summary').textContent === '2 in all'", within, "the rest")
        .await;
    page.wait_for("!!document.querySelector(\"#dead tr[data-id='lost-4']\")", within, "lost-4's row").await;

    // the drop in the audit panel, under the session's name
    let first = "[...document.querySelectorAll('#audit tbody tr')][0]?.cells";
    page.wait_for(&format!("{first}?.[2].textContent === 'dead drop'"), within, "the drop in the audit")
        .await;
    let detail = page.eval(&format!("{first}[3].textContent")).await;
    assert!(detail.as_str().unwrap().starts_with(r#"reason "unknown product 77": 3 dropped, "#), "{detail}");
    let who = page.eval(&format!("{first}[1].textContent")).await;
    assert!(is_dashboard(who.as_str().unwrap()), "{who}");
    let cli = audit(&env).await;
    assert_eq!((cli[0]["action"].as_str(), &cli[0]["who"]), (Some("dead drop"), &who));

    let errors = browser.errors.lock().unwrap().clone();
    assert!(errors.is_empty(), "the page reported errors: {errors:#?}");
    browser.close().await;
    terminate(&mut serve).await;
}
