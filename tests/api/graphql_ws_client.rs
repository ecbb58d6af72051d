//! The reference client of the graphql-transport-ws protocol, npm's `graphql-ws`, run
//! by node against the real server: two subscriptions multiplexed on one socket get
//! strictly increasing Board versions, a query over the socket is answered, and a
//! refused subscription's error carries its code.

use std::time::Duration;

use crate::helpers::documents::request_input;
use crate::helpers::{TestApp, Who};
use serde_json::Value;

const FRAMES: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_reference_graphql_ws_client_subscribes_queries_and_hears_refusals() {
    let Some(modules) =
        crate::helpers::npm_modules(&["graphql-ws", "ws"], "the graphql-ws client test")
    else {
        return;
    };
    let app = TestApp::spawn().await;
    let (board, position) = app.open_board_at("Reference client").await;
    // The client's query reads the Board at once: it must be there to be in scope.
    app.projected_version(&board, position).await;
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/graphql_ws_client.cjs");
    let mut node = tokio::process::Command::new("node")
        .arg(script)
        .arg(&modules)
        .arg(app.url("/graphql/ws").replace("http://", "ws://"))
        .arg(app.token(Who::coordinator()))
        .arg(&board)
        .arg(FRAMES.to_string())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run node");
    // The Board changes until the client has its frames.
    let mut stdout = node.stdout.take().unwrap();
    let mut stderr = node.stderr.take().unwrap();
    let output = tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let _ = tokio::join!(stdout.read_to_end(&mut out), stderr.read_to_end(&mut err));
        (out, err)
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut n = 0;
    let status = loop {
        if let Ok(Some(status)) = node.try_wait() {
            break status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the graphql-ws client did not finish"
        );
        app.request_appointment(request_input(&board, &format!("Client {n}")))
            .await;
        n += 1;
        tokio::time::sleep(Duration::from_millis(150)).await;
    };
    let (out, err) = output.await.unwrap();
    assert!(
        status.success(),
        "the client failed: {}",
        String::from_utf8_lossy(&err)
    );
    let results: Value = serde_json::from_slice(&out)
        .unwrap_or_else(|_| panic!("JSON from the client: {}", String::from_utf8_lossy(&out)));
    for name in ["first", "second"] {
        let got = results[name]["results"]
            .as_array()
            .unwrap_or_else(|| panic!("{results}"));
        assert_eq!(got.len(), FRAMES, "{name}: {results}");
        let versions: Vec<i64> = got
            .iter()
            .map(|r| r["data"]["boardChanged"]["version"].as_i64().unwrap())
            .collect();
        assert!(
            versions.windows(2).all(|w| w[0] < w[1]),
            "{name}: versions strictly increase: {versions:?}"
        );
    }
    assert!(
        results["query"]["results"][0]["data"]["board"]["version"].is_i64(),
        "{results}"
    );
    assert_eq!(results["query"]["completed"], true, "{results}");
    assert_eq!(results["refused"]["completed"], true, "{results}");
    assert_eq!(
        results["refused"]["results"][0]["errors"][0]["extensions"]["code"], "VALIDATION",
        "{results}"
    );
}
