//! A headless Chromium driven over the DevTools protocol, for the dashboard's tests.
//!
//! `--remote-debugging-pipe` makes Chromium read protocol messages on its fd 3 and write on
//! its fd 4, each a JSON object ended by a NUL byte: a shell maps them onto the child's
//! stdin and stdout, so no WebSocket client and no browser crate is needed. The browser is
//! Debian's `chromium` (or `STOCKQ_TEST_CHROMIUM`); `scripts/browser.sh` installs it when it
//! is missing, and a test fails, saying so, when it cannot.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin};
use tokio::sync::oneshot;

/// How long one protocol call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);

type Waiting = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

pub struct Browser {
    child: Child,
    input: tokio::sync::Mutex<ChildStdin>,
    waiting: Waiting,
    next_id: std::sync::atomic::AtomicU64,
    /// Uncaught exceptions and console errors of every page, as Chromium reported them.
    pub errors: Arc<Mutex<Vec<String>>>,
    profile: PathBuf,
}

/// The browser's path: installs Chromium with `scripts/browser.sh` when it is missing, and
/// panics with the script's reason when that fails.
fn chromium() -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/browser.sh");
    let out = std::process::Command::new("bash").arg(script).output().expect("run scripts/browser.sh");
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        out.status.success() && !path.is_empty(),
        "the dashboard's tests need a headless Chromium, and scripts/browser.sh could not provide one:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    path
}

impl Browser {
    pub async fn launch() -> Browser {
        let profile = std::env::temp_dir().join(format!("stockq-chromium-{:08x}", rand::random::<u32>()));
        let mut child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(r#"exec "$0" "$@" 3<&0 4>&1 0</dev/null 1>/dev/null 2>/dev/null"#)
            .arg(chromium())
            .args([
                "--headless",
                "--remote-debugging-pipe",
                // the tests run as root, where Chromium's sandbox cannot start
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-extensions",
                "--hide-scrollbars",
                "--window-size=1440,1000",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start chromium");
        let input = child.stdin.take().expect("chromium's fd 3");
        let output = child.stdout.take().expect("chromium's fd 4");
        let waiting: Waiting = Arc::default();
        let errors: Arc<Mutex<Vec<String>>> = Arc::default();
        tokio::spawn(read_messages(BufReader::new(output), waiting.clone(), errors.clone()));
        Browser { child, input: tokio::sync::Mutex::new(input), waiting, next_id: 1.into(), errors, profile }
    }

    /// One protocol call, to the browser (`session` `None`) or to a page; its result.
    pub async fn call(&self, session: Option<&str>, method: &str, params: Value) -> Value {
        let id = self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.waiting.lock().unwrap().insert(id, tx);
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = session {
            message["sessionId"] = json!(session);
        }
        let mut bytes = message.to_string().into_bytes();
        bytes.push(0);
        self.input.lock().await.write_all(&bytes).await.expect("write to chromium");
        let answer = tokio::time::timeout(CALL_TIMEOUT, rx)
            .await
            .unwrap_or_else(|_| panic!("chromium did not answer {method} within {CALL_TIMEOUT:?}"))
            .expect("chromium closed its pipe");
        if let Some(error) = answer.get("error") {
            panic!("{method}: {error}");
        }
        answer["result"].clone()
    }

    /// A new tab at `url`.
    pub async fn open(&self, url: &str) -> Page<'_> {
        let target = self.call(None, "Target.createTarget", json!({ "url": "about:blank" })).await;
        let attached = self
            .call(None, "Target.attachToTarget", json!({ "targetId": target["targetId"], "flatten": true }))
            .await;
        let page =
            Page { browser: self, session: attached["sessionId"].as_str().expect("a session").to_string() };
        page.call("Runtime.enable", json!({})).await;
        page.call("Log.enable", json!({})).await;
        page.call("Page.enable", json!({})).await;
        page.call("Page.navigate", json!({ "url": url })).await;
        page
    }

    /// Ends Chromium and waits for it (bounded).
    pub async fn close(mut self) {
        let _ =
            tokio::time::timeout(Duration::from_secs(5), self.call(None, "Browser.close", json!({}))).await;
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await.is_err() {
            let _ = self.child.kill().await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// Hands each answer to its caller; keeps the errors pages report.
async fn read_messages(
    mut output: BufReader<tokio::process::ChildStdout>,
    waiting: Waiting,
    errors: Arc<Mutex<Vec<String>>>,
) {
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match output.read_until(0, &mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let Ok(message) = serde_json::from_slice::<Value>(buf.strip_suffix(&[0]).unwrap_or(&buf)) else {
            continue;
        };
        if let Some(id) = message["id"].as_u64() {
            if let Some(tx) = waiting.lock().unwrap().remove(&id) {
                let _ = tx.send(message);
            }
            continue;
        }
        let params = &message["params"];
        let error = match message["method"].as_str() {
            Some("Runtime.exceptionThrown") => Some(params["exceptionDetails"].to_string()),
            Some("Log.entryAdded") if params["entry"]["level"] == "error" => {
                Some(params["entry"].to_string())
            }
            Some("Runtime.consoleAPICalled") if params["type"] == "error" => Some(params["args"].to_string()),
            _ => None,
        };
        if let Some(error) = error {
            errors.lock().unwrap().push(error);
        }
    }
}

/// One tab.
pub struct Page<'a> {
    browser: &'a Browser,
    session: String,
}

impl Page<'_> {
    pub async fn call(&self, method: &str, params: Value) -> Value {
        self.browser.call(Some(&self.session), method, params).await
    }

    /// The value of a JavaScript expression (awaited when it is a promise).
    pub async fn eval(&self, expression: &str) -> Value {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
            )
            .await;
        if let Some(e) = result.get("exceptionDetails") {
            panic!("{expression}: {e}");
        }
        result["result"]["value"].clone()
    }

    /// Waits until `expression` is true, re-evaluating it every 100 ms.
    pub async fn wait_for(&self, expression: &str, within: Duration, what: &str) {
        let deadline = Instant::now() + within;
        loop {
            // a page between two documents has no context to evaluate in: try again
            let ok = self
                .call("Runtime.evaluate", json!({ "expression": expression, "returnByValue": true }))
                .await;
            if ok["result"]["value"] == Value::Bool(true) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {within:?} waiting for {what} ({expression})"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The text of the element `selector` names ("" when there is none).
    pub async fn text(&self, selector: &str) -> String {
        let expression = format!("document.querySelector({selector:?})?.textContent ?? ''");
        self.eval(&expression).await.as_str().unwrap_or("").to_string()
    }

    /// Clicks the middle of the element `selector` names, as a mouse does.
    pub async fn click(&self, selector: &str) {
        let expression = format!(
            "(() => {{ const e = document.querySelector({selector:?}); if (!e) return null; \
             e.scrollIntoView({{block: 'center'}}); const r = e.getBoundingClientRect(); \
             return [r.x + r.width / 2, r.y + r.height / 2]; }})()"
        );
        let at = self.eval(&expression).await;
        let (x, y) = match (at[0].as_f64(), at[1].as_f64()) {
            (Some(x), Some(y)) => (x, y),
            _ => panic!("nothing to click at {selector}"),
        };
        for kind in ["mousePressed", "mouseReleased"] {
            self.call(
                "Input.dispatchMouseEvent",
                json!({ "type": kind, "x": x, "y": y, "button": "left", "clickCount": 1 }),
            )
            .await;
        }
    }

    /// Types `text` into the element `selector` names.
    pub async fn type_into(&self, selector: &str, text: &str) {
        self.eval(&format!("document.querySelector({selector:?}).focus()")).await;
        self.call("Input.insertText", json!({ "text": text })).await;
    }

    /// A PNG of the whole page.
    pub async fn screenshot(&self) -> Vec<u8> {
        use base64::Engine;
        let shot = self
            .call("Page.captureScreenshot", json!({ "format": "png", "captureBeyondViewport": true }))
            .await;
        base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("png data"))
            .expect("base64")
    }
}
