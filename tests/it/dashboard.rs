//! The operators' dashboard of `serve` (docs/dashboard.md): its login, sessions and CSRF
//! over plain HTTP, and the page itself in a real headless Chromium while a sale runs and
//! while dead letters of webhooks are replayed.

use std::time::Duration;

use crate::browser::Browser;
use crate::helpers::{TestEnv, free_port, http, terminate};

pub(crate) const ADMIN_TOKEN: &str = "operators-only";

/// Request headers, as (name, value).
pub(crate) type Headers<'a> = &'a [(&'a str, &'a str)];

/// `serve` with `admin_token` (none: unset), once it listens.
pub(crate) async fn start_serve(env: &TestEnv, admin_token: Option<&str>) -> (tokio::process::Child, u16) {
    match admin_token {
        Some(token) => env.serve(&[("STOCKQ_ADMIN_TOKEN", token)]).await,
        None => env.serve(&[]).await,
    }
}

/// Logs in over HTTP; the session cookie (`stockq_admin=...`) and the whole `Set-Cookie`.
pub(crate) async fn log_in(port: u16) -> (String, String) {
    let origin = format!("http://127.0.0.1:{port}");
    let body = format!(r#"{{"token": "{ADMIN_TOKEN}"}}"#);
    let answer = http(port, "POST", "/admin/login").header("Origin", &origin).json(&body).send().await;
    assert_eq!(answer.status, 204, "{}", answer.head);
    let set_cookie = answer
        .header("set-cookie")
        .unwrap_or_else(|| panic!("no session cookie: {}", answer.head))
        .to_string();
    let cookie = set_cookie.split(';').next().unwrap().to_string();
    (cookie, set_cookie)
}

pub(crate) fn csrf_of(page: &str) -> String {
    let at = page.find(r#"name="csrf-token" content=""#).expect("the page carries its CSRF token") + 27;
    page[at..at + 64].to_string()
}

/// Off without a token, a login form before a session, an HttpOnly SameSite=Strict cookie
/// that is not the token, and actions refused without the CSRF token or from another origin.
#[tokio::test]
async fn dashboard_login_sessions_and_csrf() {
    let env = TestEnv::new().await;
    let (mut off, port) = start_serve(&env, None).await;
    for (method, path) in [
        ("GET", "/admin"),
        ("POST", "/admin/login"),
        ("GET", "/admin/api/state"),
        ("GET", "/admin/api/webhooks"),
        ("POST", "/admin/api/webhooks/replay-all"),
    ] {
        let answer = http(port, method, path).send().await;
        assert_eq!(answer.status, 403, "{method} {path}: {}", answer.text());
        assert!(answer.text().contains("set STOCKQ_ADMIN_TOKEN"), "{}", answer.text());
    }
    terminate(&mut off).await;

    let (mut serve, port) = start_serve(&env, Some(ADMIN_TOKEN)).await;
    let origin = format!("http://127.0.0.1:{port}");
    let get = |path: &str, cookie: Option<&str>| {
        let request = http(port, "GET", path);
        match cookie {
            Some(cookie) => request.header("Cookie", cookie),
            None => request,
        }
        .send()
    };
    let login = get("/admin", None).await;
    assert_eq!(login.status, 200);
    let page = login.text();
    assert!(page.contains(r#"id="login""#) && !page.contains("csrf-token"), "{page}");
    let csp = login.header("content-security-policy").unwrap_or_default();
    assert!(csp.starts_with("default-src 'none'; script-src 'self'"), "{}", login.head);
    let state = get("/admin/api/state", None).await;
    assert_eq!((state.status, state.text().as_str()), (401, r#"{"error":"log in at /admin first"}"#));

    let log_in_with = |body: &str, origin: Option<&str>| {
        let request = http(port, "POST", "/admin/login").json(body);
        match origin {
            Some(origin) => request.header("Origin", origin),
            None => request,
        }
        .send()
    };
    let no_origin = log_in_with(r#"{"token": "operators-only"}"#, None).await;
    assert_eq!(no_origin.status, 403, "a login from no origin");
    let wrong = log_in_with(r#"{"token": "guess"}"#, Some(&origin)).await;
    assert_eq!((wrong.status, wrong.text().as_str()), (401, r#"{"error":"wrong token"}"#));
    let form = log_in_with("token=operators-only", Some(&origin)).await;
    assert!(form.status == 400 || form.status == 415, "{} {}", form.status, form.text());
    assert!(form.text().starts_with(r#"{"error":"#), "{}", form.text());

    let (cookie, set_cookie) = log_in(port).await;
    assert!(set_cookie.contains("; Path=/admin; HttpOnly; SameSite=Strict"), "{set_cookie}");
    assert!(!set_cookie.contains(ADMIN_TOKEN), "the cookie holds a session id, never the token");
    let page = get("/admin", Some(&cookie)).await;
    assert!(page.status == 200 && page.text().contains(r#"id="dashboard""#), "{}", page.text());
    let csrf = csrf_of(&page.text());
    let state = get("/admin/api/state", Some(&cookie)).await;
    assert_eq!(state.status, 200, "{}", state.text());
    assert_eq!(state.json()["queue"]["pending"], 0);

    let requeue = "/admin/api/dead/order-1/requeue";
    let cases: [(Headers, u16, &str); 5] = [
        (&[("Origin", &origin), ("X-CSRF-Token", &csrf)], 401, "log in"),
        (&[("Cookie", &cookie), ("Origin", &origin)], 403, "CSRF token"),
        (&[("Cookie", &cookie), ("Origin", &origin), ("X-CSRF-Token", "0")], 403, "CSRF token"),
        (
            &[("Cookie", &cookie), ("X-CSRF-Token", &csrf), ("Origin", "http://evil.example")],
            403,
            "own origin",
        ),
        (&[("Cookie", &cookie), ("X-CSRF-Token", &csrf), ("Origin", &origin)], 404, "no dead letter holds"),
    ];
    for (headers, expected, says) in cases {
        let answer = http(port, "POST", requeue).headers(headers).send().await;
        let body = answer.text();
        assert_eq!(answer.status, expected, "{headers:?}: {body}");
        assert!(body.starts_with(r#"{"error":"#) && body.contains(says), "{headers:?}: {body}");
    }
    assert_eq!(get(requeue, Some(&cookie)).await.status, 405, "actions are POSTs");

    let books = get("/admin/api/books?limit=100000", Some(&cookie)).await;
    assert_eq!(books.status, 200, "{}", books.text());
    assert_eq!(books.json()["limit"], 500, "pages are bounded");

    assert_eq!(get("/healthz", None).await.status, 200, "/healthz stays open");
    assert_eq!(get("/metrics", None).await.status, 200, "/metrics stays open");

    let act = [("Cookie", cookie.as_str()), ("X-CSRF-Token", csrf.as_str()), ("Origin", origin.as_str())];
    let logout = http(port, "POST", "/admin/logout").headers(&act).send().await;
    assert_eq!(logout.status, 204);
    assert!(
        logout.header("set-cookie").unwrap_or_default().starts_with("stockq_admin=; Max-Age=0"),
        "{}",
        logout.head
    );
    assert_eq!(get("/admin/api/state", Some(&cookie)).await.status, 401, "the session ended with the logout");
    terminate(&mut serve).await;
}

/// The dead letters of webhooks' routes: a read that needs a session, and replays that need a
/// session, its CSRF token and the dashboard's own origin, as every action does.
#[tokio::test]
async fn dashboard_webhook_routes_need_a_session_its_csrf_token_and_the_own_origin() {
    let env = TestEnv::new().await;
    let (mut serve, port) = start_serve(&env, Some(ADMIN_TOKEN)).await;
    let origin = format!("http://127.0.0.1:{port}");
    let other_port = format!("http://127.0.0.1:{}", port + 1);
    let (cookie, _) = log_in(port).await;
    let page = http(port, "GET", "/admin").header("Cookie", &cookie).send().await;
    let csrf = csrf_of(&page.text());

    let list = "/admin/api/webhooks";
    let anonymous = http(port, "GET", list).send().await;
    assert_eq!((anonymous.status, anonymous.text().as_str()), (401, r#"{"error":"log in at /admin first"}"#));
    let listed = http(port, "GET", list).header("Cookie", &cookie).send().await;
    assert_eq!(listed.status, 200, "{}", listed.text());
    assert_eq!(listed.json(), serde_json::json!({"total": 0, "dead": []}));
    assert_eq!(listed.header("cache-control"), Some("no-store"), "{}", listed.head);
    assert_eq!(http(port, "POST", list).header("Cookie", &cookie).send().await.status, 405);

    for path in ["/admin/api/webhooks/order-1@2/replay", "/admin/api/webhooks/replay-all"] {
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
            let answer = http(port, "POST", path).headers(headers).send().await;
            let body = answer.text();
            assert_eq!(answer.status, expected, "{path} {headers:?}: {body}");
            assert!(body.starts_with(r#"{"error":"#) && body.contains(says), "{path} {headers:?}: {body}");
        }
        let get = http(port, "GET", path).header("Cookie", &cookie).send().await;
        assert_eq!(get.status, 405, "{path}: replays are POSTs");
    }

    let act = [("Cookie", cookie.as_str()), ("X-CSRF-Token", csrf.as_str()), ("Origin", origin.as_str())];
    let all = http(port, "POST", "/admin/api/webhooks/replay-all").headers(&act).send().await;
    assert_eq!((all.status, all.json()), (200, serde_json::json!({"replayed": 0})), "{}", all.text());
    for id in ["order-1@2", "order-1"] {
        let none = http(port, "POST", &format!("/admin/api/webhooks/{id}/replay")).headers(&act).send().await;
        none.assert_json_error(404);
        assert!(none.text().contains("no dead letter of webhooks"), "{}", none.text());
    }
    for bad in ["order%201", "order-1@x", "order-1@"] {
        let answer =
            http(port, "POST", &format!("/admin/api/webhooks/{bad}/replay")).headers(&act).send().await;
        answer.assert_json_error(400);
        assert!(answer.text().contains("is not a delivery id"), "{bad}: {}", answer.text());
    }
    terminate(&mut serve).await;
}

/// `stockq webhooks list --json`
async fn webhooks_listed(env: &TestEnv) -> serde_json::Value {
    let (code, out, err) = env.run(&["webhooks", "list", "--json"]).await;
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// `stockq relay` given up on every delivery at once (`STOCKQ_WEBHOOK_RETRY_FOR=0s`), to a
/// local port where nobody listens, started (its cursor set) before any outcome is written.
fn failing_relay(env: &TestEnv) -> tokio::process::Child {
    let mut cmd = env.command(&["relay"]);
    cmd.env("STOCKQ_WEBHOOK_URL", format!("http://127.0.0.1:{}/x", free_port()))
        .env("STOCKQ_WEBHOOK_SECRET", "a-secret-of-16-characters-or-more")
        .env("STOCKQ_WEBHOOK_RETRY_FOR", "0s")
        .env("STOCKQ_WEBHOOK_TIMEOUT", "1s")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    cmd.spawn().expect("spawn relay")
}

/// The dead letters of webhooks on the page: two reservations applied while a relay cannot
/// reach its webhook leave their outcomes dead; the page lists them with their state,
/// attempts, time and error; "Replay" sends one back to its reservation's deliveries, and
/// "Replay all" asks first and, once told yes, sends back the rest.
#[tokio::test]
async fn dashboard_in_a_browser_replays_dead_letters_of_webhooks() {
    let env = TestEnv::new().await;
    env.stock(1, 10).await;
    let within = Duration::from_secs(20);
    let mut relay = failing_relay(&env);
    let mut redis = env.redis.clone();
    crate::relay::started(&env).await;
    env.reserve_ok(1, 1, "hook-1").await;
    env.reserve_ok(1, 2, "hook-2").await;
    env.drain(10).await;
    let outcomes: usize = redis::cmd("XLEN").arg(env.key("outcomes")).query_async(&mut redis).await.unwrap();
    assert!(outcomes >= 2, "an outcome of each reservation: {outcomes}");
    env.eventually(within, "every outcome a dead letter of webhooks", || async {
        env.len("webhooks:dead").await == outcomes
    })
    .await;
    terminate(&mut relay).await;
    let dead = webhooks_listed(&env).await;
    let id_of = |event_id: &str| {
        let letter = dead["dead"].as_array().unwrap().iter().find(|l| l["event_id"] == event_id);
        letter.unwrap_or_else(|| panic!("no dead letter of {event_id}: {dead}"))["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (first, second) = (id_of("hook-1"), id_of("hook-2"));

    let (mut serve, port) = start_serve(&env, Some(ADMIN_TOKEN)).await;
    let browser = Browser::launch().await;
    let page = browser.open(&format!("http://127.0.0.1:{port}/admin")).await;
    page.wait_for("!!document.getElementById('login')", within, "the login form").await;
    page.type_into("#token", ADMIN_TOKEN).await;
    page.click("#login-button").await;
    let row = |id: &str| format!("#webhooks tr[data-id='{id}']");
    let replay = |id: &str| format!("{} button[data-action='replay']", row(id));
    let shown = |id: &str| format!("!!document.querySelector(\"{}\")", replay(id));
    page.wait_for(&shown(&first), within, "the dead delivery's row").await;
    page.wait_for(&shown(&second), within, "the other dead delivery's row").await;
    assert_eq!(page.text("#webhooks-summary").await, format!("{outcomes} given up on"));
    let cells = page
        .eval(&format!("[...document.querySelectorAll(\"{} td\")].map((td) => td.textContent)", row(&first)))
        .await;
    let cells: Vec<&str> = cells.as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
    assert_eq!(cells.len(), 6, "{cells:?}");
    assert_eq!((cells[0], cells[1], cells[2]), (first.as_str(), "applied", "1"), "{cells:?}");
    assert!(cells[3].len() >= 8 && cells[3].contains(':'), "died at, as a time: {cells:?}");
    assert!(!cells[4].is_empty() && cells[4] != "–", "the last error: {cells:?}");

    // one delivery back to its reservation's deliveries, by a click
    page.click(&replay(&first)).await;
    env.eventually(within, "the dead list to shrink", || async {
        env.len("webhooks:dead").await == outcomes - 1
    })
    .await;
    assert_eq!(env.len("webhooks:q:hook-1").await, 1, "the replayed delivery waits to be sent");
    page.wait_for(&format!("!{}", shown(&first)), within, "its row gone").await;

    // "Replay all" asks first: told no, nothing moves; told yes, the rest goes back
    page.eval("window.confirm = () => false").await;
    page.click("#webhooks-replay-all").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(env.len("webhooks:dead").await, outcomes - 1, "replay all, cancelled");
    page.eval("window.confirm = () => true").await;
    page.click("#webhooks-replay-all").await;
    env.eventually(within, "no dead letter of webhooks left", || async {
        env.len("webhooks:dead").await == 0
    })
    .await;
    assert_eq!(webhooks_listed(&env).await["total"], 0);
    assert!(env.len("webhooks:q:hook-2").await >= 1, "hook-2's deliveries wait to be sent");
    page.wait_for(
        "document.querySelector('#webhooks td.empty')?.textContent === 'none' \
         && document.getElementById('webhooks-replay-all').disabled",
        within,
        "no dead delivery shown",
    )
    .await;
    assert_eq!(page.text("#webhooks-summary").await, "none given up on");

    let errors = browser.errors.lock().unwrap().clone();
    assert!(errors.is_empty(), "the page reported errors: {errors:#?}");
    browser.close().await;
    terminate(&mut serve).await;
}

/// Reserves `n` units over HTTP, round-robin over products 1..=3.
async fn shoppers(port: u16, n: usize) {
    for i in 0..n {
        let body = format!(r#"{{"product_id": {}, "qty": 1}}"#, i % 3 + 1);
        let answer = http(port, "POST", "/reserve").json(&body).send().await;
        assert_eq!(answer.status, 201, "{}", answer.text());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The page in Chromium: a login, numbers that move while reservations and a worker run,
/// and a dead letter requeued by a click.
#[tokio::test]
async fn dashboard_in_a_browser_follows_a_sale_and_requeues_a_dead_letter() {
    let env = TestEnv::new().await;
    for product in 1..=3 {
        env.stock(product, 1000).await;
    }
    let (mut serve, port) = start_serve(&env, Some(ADMIN_TOKEN)).await;
    let browser = Browser::launch().await;
    let page = browser.open(&format!("http://127.0.0.1:{port}/admin")).await;
    // bounds for a machine busy with the rest of the suite: each wait ends as soon as it can
    let within = Duration::from_secs(20);
    page.wait_for("!!document.getElementById('login')", within, "the login form").await;
    page.type_into("#token", ADMIN_TOKEN).await;
    page.click("#login-button").await;
    page.wait_for(
        "document.querySelector('#status')?.classList.contains('ok')",
        within,
        "the live dashboard",
    )
    .await;
    assert_eq!(page.text("#applied").await, "0");
    let cookies = page.call("Network.getCookies", serde_json::json!({})).await;
    let cookie = &cookies["cookies"][0];
    assert_eq!(
        (&cookie["httpOnly"], &cookie["sameSite"]),
        (&serde_json::json!(true), &serde_json::json!("Strict"))
    );

    // a sale: 300 reservations over HTTP while a worker applies them
    let mut worker = env.spawn(&["worker"]);
    shoppers(port, 300).await;
    let applied = "Number(document.getElementById('applied').textContent.replace(/,/g, ''))";
    page.wait_for(&format!("{applied} === 300"), Duration::from_secs(30), "300 applied on the page").await;
    let drawn = "#chart-depth path, #chart-rate path, #chart-reserve path, #chart-e2e path";
    page.wait_for(
        &format!("document.querySelectorAll('{drawn}').length >= 4"),
        within,
        "lines in every chart",
    )
    .await;
    assert_eq!(page.text("#worker-count").await, "1");
    assert!(page.text("#outcomes tbody").await.contains("applied"));
    page.wait_for("document.getElementById('books-state').textContent === 'consistent'", within, "the books")
        .await;

    // an event for a product not stocked yet is dead-lettered; stocked, a click sends it on
    env.push_raw(br#"{"event_id":"order-x","product_id":77,"qty":1}"#).await;
    let row = "#dead tr[data-id='order-x'] button[data-action='requeue']";
    page.wait_for(&format!("!!document.querySelector(\"{row}\")"), within, "the dead letter's row").await;
    assert_eq!(env.len("dead").await, 1);
    env.stock(77, 5).await;
    page.click(row).await;
    env.eventually(within, "the dead list to shrink", || async { env.len("dead").await == 0 }).await;
    env.eventually(within, "the requeued event applied", || async {
        env.log_status("order-x").await.as_deref() == Some("applied")
    })
    .await;
    page.wait_for(
        "document.getElementById('dead-count').textContent === '0'",
        within,
        "no dead letter shown",
    )
    .await;

    let errors = browser.errors.lock().unwrap().clone();
    assert!(errors.is_empty(), "the page reported errors: {errors:#?}");
    browser.close().await;
    terminate(&mut worker).await;
    terminate(&mut serve).await;
}

/// Shoppers of the screenshot's sale: reservations over HTTP until `until`, one in ten held
/// for payment, on products 1..=`products`.
async fn busy_shopper(port: u16, products: i64, until: std::time::Instant) {
    while std::time::Instant::now() < until {
        let product = rand::random_range(1..=products);
        let buyer = rand::random_range(1..=5000);
        let hold = if rand::random_ratio(1, 10) { r#", "hold": "10m""# } else { "" };
        let body = format!(r#"{{"product_id": {product}, "qty": 1, "buyer": "b-{buyer}"{hold}}}"#);
        let _ = http(port, "POST", "/reserve").json(&body).try_send().await;
        tokio::time::sleep(Duration::from_millis(8)).await;
    }
}

/// Takes the README's picture, docs/dashboard.png, during a sale the size of `stockq demo`'s
/// (200 products, tens of thousands of reservations, two workers that start late, a janitor,
/// a drift, a few dead letters, a product paused from the page and a buyer looked up). By
/// hand, about 70 s:
/// `cargo test --test it dashboard_screenshot -- --ignored`.
#[tokio::test]
#[ignore = "takes the README's screenshot: run by hand"]
async fn dashboard_screenshot() {
    const PRODUCTS: i64 = 200;
    let env = TestEnv::with(|s| s.janitor.check_interval = Duration::from_secs(5)).await;
    for product in 1..=PRODUCTS {
        env.stock(product, 300).await;
    }
    env.stock(5, 60).await; // sells out: its refusals show it
    let (mut serve, port) = start_serve(&env, Some(ADMIN_TOKEN)).await;
    let browser = Browser::launch().await;
    let page = browser.open(&format!("http://127.0.0.1:{port}/admin")).await;
    page.wait_for("!!document.getElementById('login')", Duration::from_secs(10), "the login form").await;
    page.type_into("#token", ADMIN_TOKEN).await;
    page.click("#login-button").await;
    page.wait_for("!!document.getElementById('dashboard')", Duration::from_secs(10), "the dashboard").await;

    // a buyer's orders to search for: one paid, one held
    for (event_id, hold) in [("order-1001", ""), ("order-1002", r#", "hold": "10m""#)] {
        let body =
            format!(r#"{{"product_id": 3, "qty": 1, "event_id": "{event_id}", "buyer": "b-42"{hold}}}"#);
        assert_eq!(http(port, "POST", "/reserve").json(&body).send().await.status, 201);
    }
    let mut janitor = env.spawn(&["janitor"]);
    let until = std::time::Instant::now() + Duration::from_secs(70);
    let shoppers: Vec<_> = (0..8).map(|_| tokio::spawn(busy_shopper(port, PRODUCTS, until))).collect();
    tokio::time::sleep(Duration::from_secs(15)).await;
    let mut workers = vec![env.spawn(&["worker"]), env.spawn(&["worker"])];
    for id in 1..=3 {
        env.push_raw(format!(r#"{{"event_id":"lost-{id}","product_id":{},"qty":1}}"#, 900 + id).as_bytes())
            .await;
    }
    env.push_raw(b"not an event").await;
    sqlx::query("UPDATE products SET stock = stock + 3 WHERE id = 42").execute(&env.mysql).await.unwrap();
    // an operator pauses product 7 from the page, and looks a buyer up
    tokio::time::sleep(Duration::from_secs(10)).await;
    let pause = "#books tr[data-product='7'] button[data-action='pause']";
    page.wait_for(
        &format!("!!document.querySelector(\"{pause}\")"),
        Duration::from_secs(20),
        "product 7's row",
    )
    .await;
    page.eval("window.confirm = () => true").await;
    page.click(pause).await;
    page.eval("document.getElementById('search-kind').value = 'buyer'").await;
    page.type_into("#search-text", "b-42").await;
    page.click("#search-go").await;
    tokio::time::sleep(Duration::from_secs(35)).await;
    page.eval("window.scrollTo(0, 0)").await;

    let png = page.screenshot().await;
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/dashboard.png");
    std::fs::create_dir_all(std::path::Path::new(path).parent().unwrap()).unwrap();
    std::fs::write(path, png).unwrap();
    for shopper in shoppers {
        shopper.abort();
    }
    browser.close().await;
    for worker in &mut workers {
        terminate(worker).await;
    }
    terminate(&mut janitor).await;
    terminate(&mut serve).await;
}
