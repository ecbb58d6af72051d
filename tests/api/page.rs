//! The live board page, driven in headless Chromium over the DevTools protocol.

use std::time::{Duration, Instant};

use crate::helpers::TestApp;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

fn find_chromium() -> Option<std::path::PathBuf> {
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

/// A page in Chromium, spoken to over the DevTools protocol.
struct Page {
    socket: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next_id: u64,
}

impl Page {
    async fn eval(&mut self, expression: &str) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let request = json!({"id": id, "method": "Runtime.evaluate",
            "params": {"expression": expression, "returnByValue": true}});
        self.socket
            .send(Message::Text(request.to_string().into()))
            .await
            .unwrap();
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(10), self.socket.next())
                .await
                .expect("DevTools answers")
                .expect("DevTools socket open")
                .unwrap();
            if let Message::Text(text) = frame {
                let v: Value = serde_json::from_str(&text).unwrap();
                if v["id"] == id {
                    return v["result"]["result"]["value"].clone();
                }
            }
        }
    }

    async fn wait_for(&mut self, what: &str, expression: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let v = self.eval(expression).await;
            if v.as_bool() == Some(true) {
                return v;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test]
async fn the_live_board_page_shows_a_new_appointment_without_a_reload() {
    let Some(chromium) = find_chromium() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install chromium (.ci/run does)"
        );
        eprintln!("skipping the browser test: chromium is not installed");
        return;
    };
    let app = TestApp::spawn().await;
    let opened = app
        .data(
            "mutation { openBoard(input: {name: \"Cardiology NY\", specialty: \"cardiology\", region: \"NY\", date: \"2022-07-18\"}) { board { id } } }",
            json!({}),
        )
        .await;
    let board = opened["openBoard"]["board"]["id"]
        .as_str()
        .unwrap()
        .to_string();

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let profile = tempfile::tempdir().unwrap();
    let mut browser = std::process::Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--remote-allow-origins=*",
        ])
        .arg(format!("--remote-debugging-port={port}"))
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("about:blank")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start chromium");
    let devtools = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let started = Instant::now();
    while http
        .get(format!("{devtools}/json/version"))
        .send()
        .await
        .is_err()
    {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "chromium's DevTools did not come up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let page_url = app.url(&format!("/boards/{board}"));
    let target: Value = http
        .put(format!("{devtools}/json/new?{page_url}"))
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
    let mut page = Page { socket, next_id: 0 };

    page.wait_for(
        "the page to go live",
        "document.getElementById('conn').textContent === 'live' && document.getElementById('title').textContent === 'Cardiology NY'",
    )
    .await;
    page.eval("window.__sameDocument = 42").await;
    app.data(
        &format!(
            "mutation {{ requestAppointment(input: {{boardId: \"{board}\", patientName: \"Zoe Quinn\", specialty: \"cardiology\", region: \"NY\", reason: \"palpitations\"}}) {{ position }} }}"
        ),
        json!({}),
    )
    .await;
    page.wait_for(
        "the new appointment on the page",
        "document.getElementById('waiting').innerText.includes('Zoe Quinn')",
    )
    .await;
    assert_eq!(
        page.eval("window.__sameDocument").await,
        42,
        "no reload happened"
    );
    assert_eq!(
        page.eval("document.getElementById('n-waiting').textContent")
            .await,
        "1"
    );

    let _ = browser.kill();
    let _ = browser.wait();
}
