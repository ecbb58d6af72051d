//! The graphql-http package's audit of the GraphQL-over-HTTP spec, run against the
//! real server: every MUST passes, and so does every SHOULD (zero warnings).

use crate::helpers::{TestApp, Who};
use serde_json::Value;

#[tokio::test]
async fn the_graphql_over_http_audit_passes_with_no_warnings() {
    let Some(modules) = crate::helpers::npm_modules(&["graphql-http"], "the audit") else {
        return;
    };
    let app = TestApp::spawn().await;
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/graphql_http_audit.cjs");
    let output = tokio::process::Command::new("node")
        .arg(script)
        .arg(&modules)
        .arg(app.url("/graphql"))
        .arg(app.token(Who::admin()))
        .output()
        .await
        .expect("run node");
    assert!(
        output.status.success(),
        "the audit failed to run: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let results: Vec<Value> = serde_json::from_slice(&output.stdout).expect("JSON results");
    assert!(results.len() > 20, "{results:?}");
    let not_ok: Vec<&Value> = results.iter().filter(|r| r["status"] != "ok").collect();
    assert!(
        not_ok.is_empty(),
        "{} of {} audits are not ok: {}",
        not_ok.len(),
        results.len(),
        serde_json::to_string_pretty(&not_ok).unwrap()
    );
}
