//! The benchmark harness runs every scenario at tiny sizes, so it cannot rot.

// The server's test harness (a throwaway PostgreSQL cluster, one database per test).
#[allow(dead_code)]
#[path = "../../tests/api/helpers/mod.rs"]
mod common;

use serde_json::Value;

#[tokio::test]
async fn every_benchmark_scenario_runs_and_reports_without_errors() {
    let (pool, url) = common::fresh_database_with_url().await;
    pool.close().await;
    let admin = url.rsplit_once('/').unwrap().0.to_string() + "/postgres";
    let out = tempfile::tempdir().unwrap();
    let json_path = out.path().join("results.json");
    let status = tokio::process::Command::new(env!("CARGO_BIN_EXE_careboard-bench"))
        .args([
            "all",
            "--seconds",
            "1",
            "--clients",
            "2",
            "--events",
            "3000",
            "--subscribers",
            "5",
            "--change-rate",
            "20",
            "--idle",
            "20",
            "--asof-sizes",
            "100",
            "--append-writers",
            "2",
            "--auth",
            "ab",
            "--mixed-seconds",
            "3",
            "--mixed-window",
            "1",
            "--mixed-writers",
            "2",
            "--mixed-readers",
            "2",
            "--mixed-subscribers",
            "4",
            "--mixed-boards",
            "2",
            "--mixed-providers",
            "2",
            "--json-out",
        ])
        .arg(&json_path)
        .env("DATABASE_URL", &admin)
        .status()
        .await
        .expect("run the benchmark harness");
    assert!(status.success(), "careboard-bench failed");
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    // Both ways in one run: as Careboard ships (every client sends a token), and off.
    assert_eq!(report["auth"], "ab", "{report}");
    let results = report["results"].as_array().unwrap();
    let scenarios: Vec<&str> = results
        .iter()
        .map(|r| r["scenario"].as_str().unwrap())
        .collect();
    for expected in [
        "append",
        "append: storage, 1 event(s)/append",
        "append: storage, 10 event(s)/append",
        "append: one hot stream",
        "mutate",
        "project: lag",
        "project: board_view rebuild",
        "subscribe: commit to frame",
        "subscribe: KB per idle",
        "asof: board(asOf)",
        "query: board(id)",
        "mixed: requests/s in the last",
        "mixed: mutation latency, last",
        "A/B: mutate rate, auth on vs off",
        "A/B: query rate, auth on vs off",
        "A/B: subscribe p99 ms (lower is better), auth on vs off",
    ] {
        assert!(
            scenarios.iter().any(|s| s.starts_with(expected)),
            "{expected} missing from {scenarios:?}"
        );
    }
    for r in results {
        let scenario = r["scenario"].as_str().unwrap();
        if scenario.starts_with("append: one hot stream") {
            // There errors are the conflicts it measures; some appends still succeed.
            assert!(r["rate_per_s"].as_f64().unwrap() > 0.0, "{r}");
        } else {
            assert_eq!(r["errors"], 0, "{r}");
        }
    }
}
