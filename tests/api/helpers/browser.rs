//! Headless Chromium driven over the DevTools protocol, for tests of what a browser
//! does: pages, CORS, websockets from a page. The network beyond this machine is cut
//! off (every host name but localhost fails to resolve), so a page that needs a CDN
//! fails here as it would on a closed clinic network.

use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

pub fn find_chromium() -> Option<std::path::PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|name| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|dir| dir.join(name))
                    .find(|p| p.is_file())
            })
        })
}

/// A JavaScript expression: the text of GraphiQL's response pane ('' before any).
pub const GRAPHIQL_RESULT: &str = "(document.querySelector('.graphiql-response .CodeMirror') || {CodeMirror: {getValue: () => ''}}).CodeMirror.getValue()";

/// A running headless Chromium; killed when dropped.
pub struct Browser {
    child: std::process::Child,
    devtools: String,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Browser {
    /// Starts Chromium, or returns `None` (and says why) when it is not installed
    /// outside CI; in CI a missing Chromium fails the test.
    pub async fn start() -> Option<Self> {
        let Some(chromium) = find_chromium() else {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must install chromium (.ci/run does)"
            );
            eprintln!("skipping the browser test: chromium is not installed");
            return None;
        };
        let port = super::free_port();
        let profile = tempfile::tempdir().unwrap();
        let child = std::process::Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
                "--remote-allow-origins=*",
                // No network beyond this machine: any other host fails to resolve.
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
            ])
            .arg(format!("--remote-debugging-port={port}"))
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start chromium");
        let devtools = format!("http://127.0.0.1:{port}");
        // Generous: on a loaded machine several Chromiums start at once.
        super::wait_until_answering(
            &format!("{devtools}/json/version"),
            Duration::from_secs(60),
            || "chromium's DevTools did not come up".into(),
        )
        .await;
        Some(Self {
            child,
            devtools,
            _profile: profile,
        })
    }

    /// Opens `url` in a new tab, signed in as a coordinator: the tab's sessionStorage
    /// holds a token from the test identity provider before any script runs, as after
    /// pasting one into the pages' sign-in field.
    pub async fn open(&self, url: &str) -> Page {
        let token = super::idp().token(&super::Who::coordinator());
        self.open_with(url, Some(&token)).await
    }

    /// Opens `url` in a new tab with `token` in its sessionStorage (`None`: signed out).
    pub async fn open_with(&self, url: &str, token: Option<&str>) -> Page {
        let target: Value = reqwest::Client::new()
            .put(format!("{}/json/new?about:blank", self.devtools))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let ws_url = target["webSocketDebuggerUrl"]
            .as_str()
            .expect("a page target")
            .to_string();
        let (socket, _) = tokio_tungstenite::connect_async(ws_url).await.unwrap();
        let mut page = Page {
            socket,
            next_id: 0,
            requests: Vec::new(),
        };
        page.call("Network.enable", json!({})).await;
        if let Some(token) = token {
            page.call("Page.enable", json!({})).await;
            page.call(
                "Page.addScriptToEvaluateOnNewDocument",
                json!({ "source": format!("try {{ sessionStorage.setItem('careboard.token', {}); }} catch (_) {{}}", Value::from(token)) }),
            )
            .await;
        }
        page.call("Page.navigate", json!({ "url": url })).await;
        page
    }

    /// Opens `url` in a new tab `width` CSS pixels wide (1000 high): the size is set
    /// before the page loads, so its layout and screenshots are those of that screen.
    pub async fn open_sized(&self, url: &str, width: u32) -> Page {
        let mut page = self.open("about:blank").await;
        page.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": 1000, "deviceScaleFactor": 1, "mobile": false}),
        )
        .await;
        page.call("Page.navigate", json!({ "url": url })).await;
        page
    }
}

/// A page in Chromium.
pub struct Page {
    socket: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next_id: u64,
    /// Every URL the page asked for (from Network.requestWillBeSent), in order.
    pub requests: Vec<String>,
}

impl Page {
    /// Sends a DevTools command and returns its result.
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let request = json!({"id": id, "method": method, "params": params});
        self.socket
            .send(Message::Text(request.to_string().into()))
            .await
            .unwrap();
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(20), self.socket.next())
                .await
                .expect("DevTools answers")
                .expect("DevTools socket open")
                .unwrap();
            if let Message::Text(text) = frame {
                let v: Value = serde_json::from_str(&text).unwrap();
                if v["method"] == "Network.requestWillBeSent" {
                    if let Some(url) = v["params"]["request"]["url"].as_str() {
                        self.requests.push(url.to_string());
                    }
                }
                if v["id"] == id {
                    return v["result"].clone();
                }
            }
        }
    }

    /// Evaluates `expression` (awaiting a promise) and returns its JSON value.
    pub async fn eval(&mut self, expression: &str) -> Value {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        result["result"]["value"].clone()
    }

    /// Runs `document` in GraphiQL and waits until its response pane shows `expected`.
    pub async fn run_in_graphiql_showing(&mut self, document: &str, what: &str, expected: &str) {
        self.run_in_graphiql(document).await;
        let shown = format!(
            "{GRAPHIQL_RESULT}.includes({})",
            serde_json::to_string(expected).unwrap()
        );
        self.wait_for_showing(what, &shown, GRAPHIQL_RESULT).await;
    }

    /// Types `document` into GraphiQL's query editor and runs it; its answer shows in
    /// [`GRAPHIQL_RESULT`].
    pub async fn run_in_graphiql(&mut self, document: &str) {
        self.eval(&format!(
            "document.querySelector('.graphiql-query-editor .CodeMirror').CodeMirror.setValue({}); true",
            serde_json::to_string(document).unwrap()
        ))
        .await;
        // GraphiQL re-parses the editor shortly after a change (as after a person typed).
        tokio::time::sleep(Duration::from_millis(1000)).await;
        self.eval("document.querySelector('.graphiql-execute-button').click(); true")
            .await;
    }

    /// Waits (up to 30 s) until `expression` is true.
    pub async fn wait_for(&mut self, what: &str, expression: &str) {
        self.wait_for_showing(what, expression, "document.body.innerText.slice(0, 2000)")
            .await
    }

    /// Like [`Page::wait_for`]; on a timeout, says what `show` evaluates to then.
    pub async fn wait_for_showing(&mut self, what: &str, expression: &str, show: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.eval(expression).await.as_bool() == Some(true) {
                return;
            }
            if Instant::now() > deadline {
                let shown = self.eval(show).await;
                panic!("timed out waiting for {what}; the page shows: {shown}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The rendered text of the first element matching `selector` ("" if none).
    pub async fn text(&mut self, selector: &str) -> String {
        let expression = format!(
            "(document.querySelector({}) || {{}}).innerText || ''",
            serde_json::to_string(selector).unwrap()
        );
        self.eval(&expression)
            .await
            .as_str()
            .unwrap_or("")
            .to_string()
    }
}
