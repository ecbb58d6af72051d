//! The benchmark harness runs every scenario at tiny sizes, so it cannot rot.

// The server's test harness (a throwaway PostgreSQL cluster, one database per test).
#[allow(dead_code)]
#[path = "../../tests/api/helpers/mod.rs"]
mod common;

use serde_json::Value;

/// Each harness run first drops every `bench_` database of its cluster (what earlier
/// runs left behind), and the tests share one cluster: they take turns.
static ONE_RUN_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test]
async fn every_benchmark_scenario_runs_and_reports_without_errors() {
    let _turn = ONE_RUN_AT_A_TIME.lock().await;
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

/// The before/after switches of the lag and one-Board latency rows run too: a given lag
/// rate with the relaxed follower pace, and the server runtime's event interval.
#[tokio::test]
async fn the_lag_rate_pace_and_event_interval_comparisons_run_and_report() {
    let _turn = ONE_RUN_AT_A_TIME.lock().await;
    let (pool, url) = common::fresh_database_with_url().await;
    pool.close().await;
    let admin = url.rsplit_once('/').unwrap().0.to_string() + "/postgres";
    let out = tempfile::tempdir().unwrap();
    let run = |scenario: &'static str, extra: &'static [&'static str], json: &str| {
        let json = out.path().join(json);
        let admin = admin.clone();
        async move {
            let status = tokio::process::Command::new(env!("CARGO_BIN_EXE_careboard-bench"))
                .args([scenario, "--seconds", "1", "--json-out"])
                .arg(&json)
                .args(extra)
                .env("DATABASE_URL", &admin)
                .status()
                .await
                .expect("run the benchmark harness");
            assert!(status.success(), "careboard-bench {scenario} failed");
            let report: Value =
                serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
            report["results"].as_array().unwrap().clone()
        }
    };
    let lag = run(
        "project",
        &[
            "--events",
            "2000",
            "--lag-rate",
            "40",
            "--lag-schedules",
            "relaxed,tuned",
        ],
        "project.json",
    )
    .await;
    let subscribe = run(
        "subscribe",
        &[
            "--subscribers",
            "5",
            "--change-rate",
            "20",
            "--idle",
            "5",
            "--spread-subscribers",
            "0",
            "--saturation-writers",
            "1",
            "--saturation-rates",
            "20,0",
            "--saturation-readers",
            "woken,swept",
            "--wide-subscribers",
            "3",
            "--wide-variants",
            "joined-distinct",
            "--delivery-rounds",
            "0",
            "--event-interval-rounds",
            "1",
            "--event-interval",
            "3",
        ],
        "subscribe.json",
    )
    .await;
    let results: Vec<&Value> = lag.iter().chain(subscribe.iter()).collect();
    let scenarios: Vec<&str> = results
        .iter()
        .map(|r| r["scenario"].as_str().unwrap())
        .collect();
    for expected in [
        "project: lag commit to NOTIFY at 40 appends/s, loops, async projector commits, followers paced at 50 ms",
        "project: lag commit to NOTIFY at 40 appends/s, loops, async projector commits, paced followers",
        ", before: default event interval, round 1",
        ", after: event interval 3, round 1",
        // The wide saturation row under both loads: open loop, and closed-loop writers.
        "subscribe: frames delivered at saturation, 3 subscribers over 1 Boards, 20 changes/s",
        "subscribe: frames delivered at saturation, 3 subscribers over 1 Boards, 1 writers",
        // ...and with both kinds of readers.
        "round 1, readers woken per frame",
        "round 1, readers swept every 50 ms",
    ] {
        assert!(
            scenarios.iter().any(|s| s.contains(expected)),
            "{expected} missing from {scenarios:?}"
        );
    }
    for r in results {
        assert_eq!(r["errors"], 0, "{r}");
        let scenario = r["scenario"].as_str().unwrap();
        if scenario.contains("event interval")
            || scenario.contains("frames delivered at saturation")
        {
            assert!(
                r["rate_per_s"].as_f64().unwrap() > 0.0,
                "frames arrived: {r}"
            );
        }
    }
}
