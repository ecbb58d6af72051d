//! The demo day and the wait-time model against simulated history.

use crate::helpers;
use std::process::Command;
use std::time::Duration;

use crate::helpers::TestApp;
use careboard::demo::scenario::{Arrival, BoardPlan, ProviderPlan, Scenario, ShiftPlan};
use careboard::demo::{import_history, sim};
use careboard::projections::Projection;
use careboard::projector::wait_for_position;
use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use serde_json::{json, Value};
use uuid::Uuid;

type EventRow = (Uuid, Uuid, i64, String, Value, Value, DateTime<Utc>);

async fn all_events(url: &str) -> Vec<EventRow> {
    let pool = sqlx::PgPool::connect(url).await.unwrap();
    let rows = sqlx::query_as(
        "select id, stream_id, version, type, data, metadata, recorded_at from events order by seq",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    pool.close().await;
    rows
}

/// `careboard demo` of 2026-03-02 (history), quiet but for warnings, no database named.
fn demo_command(seed: &str, boards: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_careboard"));
    command
        .args([
            "demo",
            "--seed",
            seed,
            "--date",
            "2026-03-02",
            "--boards",
            boards,
        ])
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "warn");
    command
}

fn demo(url: &str, seed: &str) -> String {
    let out = demo_command(seed, "2")
        .env("DATABASE_URL", url)
        .output()
        .expect("run careboard demo");
    assert!(
        out.status.success(),
        "careboard demo failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn demo_with_the_same_seed_gives_the_same_events() {
    let (_a, url_a) = helpers::fresh_database_with_url().await;
    let (_b, url_b) = helpers::fresh_database_with_url().await;
    let (_c, url_c) = helpers::fresh_database_with_url().await;
    let printed = demo(&url_a, "1");
    assert!(
        printed.contains("Imported the demo day 2026-03-02 (seed 1)"),
        "{printed}"
    );
    demo(&url_b, "1");
    demo(&url_c, "2");
    let (a, b, c) = (
        all_events(&url_a).await,
        all_events(&url_b).await,
        all_events(&url_c).await,
    );
    assert!(a.len() > 1000, "a whole day: {} events", a.len());
    assert_eq!(
        a, b,
        "seed 1 twice: the same events, ids and times included"
    );
    assert_ne!(a, c, "another seed, another day");

    // A realistic day: spread over the day, matched by the matcher, Boards closed.
    let first = a.first().unwrap().6;
    let last = a.last().unwrap().6;
    assert!((last - first).num_hours() >= 9, "{first} .. {last}");
    assert!(
        a.windows(2).all(|w| w[0].6 <= w[1].6),
        "times never go back"
    );
    let count = |t: &str| a.iter().filter(|e| e.3 == t).count();
    assert_eq!(count("BoardClosed"), 2);
    for t in [
        "ProviderPaused",
        "ChartingFinished",
        "ProviderSignedOff",
        "AppointmentCancelled",
        "AppointmentFinished",
    ] {
        assert!(count(t) > 0, "the day has {t}");
    }
    assert!(a
        .iter()
        .filter(|e| e.3 == "AppointmentScheduled")
        .all(|e| e.5["actor"] == "matcher"));

    // Importing the same day again is refused, and changes nothing.
    let out = demo_command("1", "2")
        .env("DATABASE_URL", &url_a)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    assert_eq!(all_events(&url_a).await.len(), a.len());
}

fn t(h: u32, m: u32, s: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2022, 7, 18, h, m, s).unwrap()
}

/// One Board, three pediatricians, known durations (±5%): a quiet first hour builds
/// the history, then a burst of patients queues up.
fn known_day() -> Scenario {
    let providers: Vec<ProviderPlan> = (0..3)
        .map(|i| ProviderPlan {
            id: Uuid::from_u128(0x100 + i),
            name: format!("Dr. {i}"),
            specialties: vec!["pediatrics".into()],
            regions: vec!["TX".into()],
        })
        .collect();
    let shifts = (0..3)
        .map(|i| ShiftPlan {
            provider: i,
            joins_at: t(8, 0, 0),
            leaves_at: t(12, 0, 0),
            breaks: Vec::new(),
        })
        .collect();
    let jitter = |i: usize| 1.0 + [-0.05, 0.0, 0.05, 0.02, -0.03][i % 5];
    let minutes = |m: f64, i: usize| chrono::Duration::seconds((m * 60.0 * jitter(i)) as i64);
    let mut arrivals = Vec::new();
    let mut arrive = |at: DateTime<Utc>, i: usize| {
        arrivals.push(Arrival {
            at,
            patient: format!("Patient {i}"),
            specialty: "pediatrics".into(),
            region: "TX".into(),
            reason: "fever".into(),
            lead: minutes(1.0, i),
            consult: minutes(15.0, i + 1),
            charting: minutes(4.0, i + 2),
            patience: None,
            no_show: false,
        })
    };
    for i in 0..8 {
        arrive(t(8, 2 + 7 * i as u32, 0), i);
    }
    for i in 0..14 {
        arrive(t(9, 30 + i as u32, 0), 100 + i);
    }
    Scenario {
        date: NaiveDate::from_ymd_opt(2022, 7, 18).unwrap(),
        boards: vec![BoardPlan {
            id: Uuid::from_u128(0x1),
            name: "Pediatrics TX".into(),
            specialty: "pediatrics".into(),
            region: "TX".into(),
            opens_at: t(7, 45, 0),
            shifts,
            arrivals,
        }],
        providers,
    }
}

#[tokio::test]
async fn estimates_are_within_twenty_percent_of_the_simulated_waits() {
    let app = TestApp::spawn().await;
    let scenario = known_day();
    let imported = import_history(&app.pool, &scenario, 7).await.unwrap();
    for p in [Projection::AppointmentDurations, Projection::BoardView] {
        assert!(
            wait_for_position(&app.pool, p, imported.position, Duration::from_secs(30))
                .await
                .unwrap()
        );
    }
    let board = scenario.boards[0].id.to_string();
    let day = app
        .data(
            r#"query($b: ID!) { board(id: $b) { status appointments { id requestedAt startedAt } } }"#,
            json!({"b": board}),
        )
        .await;
    assert_eq!(day["board"]["status"], "CLOSED");
    let time = |v: &Value| {
        DateTime::parse_from_rfc3339(v.as_str().unwrap())
            .unwrap()
            .with_timezone(&Utc)
    };
    let mut checked = 0;
    for a in day["board"]["appointments"].as_array().unwrap() {
        let (requested, started) = (time(&a["requestedAt"]), time(&a["startedAt"]));
        let actual = (started - requested).num_seconds() as f64;
        if actual < 10.0 * 60.0 {
            continue;
        }
        // The estimate the patient saw on arriving: their appointment as of then.
        let seen = app
            .data(
                r#"query($id: ID!, $at: DateTime!) { appointment(id: $id, asOf: $at) {
                    status waitEstimate { estimatedStart basis queueAhead } } }"#,
                json!({"id": a["id"], "at": a["requestedAt"]}),
            )
            .await;
        let e = &seen["appointment"]["waitEstimate"];
        assert_eq!(seen["appointment"]["status"], "REQUESTED");
        assert_eq!(e["basis"], "HISTORY", "the first hour is history");
        let estimated = (time(&e["estimatedStart"]) - requested).num_seconds() as f64;
        assert!(
            (estimated - actual).abs() <= 0.2 * actual,
            "appointment {} ({} ahead): estimated wait {estimated} s, simulated {actual} s",
            a["id"],
            e["queueAhead"]
        );
        // A new request a second before it arrived would have been told the same.
        let before = requested - chrono::Duration::seconds(1);
        let fresh = app
            .data(
                r#"query($b: ID!, $at: DateTime!) { waitTimeEstimate(boardId: $b, specialty: "pediatrics", asOf: $at) { waitSeconds } }"#,
                json!({"b": board, "at": before.to_rfc3339()}),
            )
            .await;
        let told = fresh["waitTimeEstimate"]["waitSeconds"].as_f64().unwrap();
        assert!(
            (told - actual).abs() <= 0.2 * actual + 1.0,
            "new request at {before}: told {told} s, simulated {actual} s"
        );
        checked += 1;
    }
    assert!(
        checked >= 8,
        "the burst queued most patients: {checked} checked"
    );

    // The day's timeline carries the same estimate as a headline figure.
    let history = app
        .data(
            r#"query($b: ID!) { boardHistory(boardId: $b, from: "2022-07-18T07:00:00Z", to: "2022-07-18T23:00:00Z", first: 500) {
                at estimatedWaitSeconds event { type } } }"#,
            json!({"b": board}),
        )
        .await;
    let entries = history["boardHistory"].as_array().unwrap();
    let wait_at = |h: u32, m: u32| {
        entries
            .iter()
            .rfind(|e| time(&e["at"]) <= t(h, m, 0))
            .map(|e| e["estimatedWaitSeconds"].clone())
            .unwrap()
    };
    assert!(wait_at(7, 55).is_null(), "nobody on shift before eight");
    assert_eq!(
        wait_at(8, 1),
        json!(120),
        "READY providers, no history: the default lead"
    );
    let peak = wait_at(9, 44).as_i64().unwrap();
    assert!(
        peak > 45 * 60,
        "after the burst the queue is long: {peak} s"
    );
}

#[test]
fn the_simulation_uses_the_domain_rules_and_never_overlaps_a_provider() {
    let events = sim::simulate(&known_day(), 7).unwrap();
    let mut holding = std::collections::HashMap::new();
    for e in &events {
        let h = holding.entry(e.stream_id).or_insert(false);
        match e.event_type.as_str() {
            "ProviderAssigned" => {
                assert!(!*h);
                *h = true;
            }
            "ChartingFinished" | "ProviderReady" => *h = false,
            _ => {}
        }
    }
    assert!(events.iter().any(|e| e.event_type == "BoardClosed"));
}

/// One live run with one Board: started, watched until its first `requestAppointment`,
/// then stopped with `signal` (SIGINT as Ctrl+C does, or SIGKILL). Returns the wall
/// time to the first request and what the run printed.
async fn live_run_until_first_request(
    pool: &sqlx::PgPool,
    url: &str,
    signal: i32,
) -> (Duration, String) {
    let requested_before = count(pool, "events", "AppointmentRequested").await;
    let started = std::time::Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_careboard"))
        .args(["demo", "--live", "--boards", "1", "--bind", "127.0.0.1:0"])
        .env("DATABASE_URL", url)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run careboard demo --live");
    let first_request = loop {
        if count(pool, "events", "AppointmentRequested").await > requested_before {
            break started.elapsed();
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the live demo ended early: {status}");
        }
        if started.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            panic!("no patient within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    unsafe { libc::kill(child.id() as i32, signal) };
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    if signal == libc::SIGINT {
        assert!(
            out.status.success(),
            "Ctrl+C ends the run cleanly: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    (first_request, String::from_utf8_lossy(&out.stdout).into())
}

/// How many rows of `table` (`events` or `streams`) have `type` = `of_type`.
async fn count(pool: &sqlx::PgPool, table: &str, of_type: &str) -> i64 {
    sqlx::query_scalar(&format!("select count(*) from {table} where type = $1"))
        .bind(of_type)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Every Board closed, every appointment finished or cancelled, every provider signed
/// off: nothing the demo opened is left hanging.
async fn assert_everything_closed(pool: &sqlx::PgPool) {
    let open_streams: Vec<(String, Uuid)> = sqlx::query_as(
        "select s.type, s.id from streams s \
          where s.type in ('board', 'appointment', 'shift') \
            and not exists (select 1 from events e where e.stream_id = s.id and e.type in \
                ('BoardClosed', 'AppointmentFinished', 'AppointmentCancelled', 'ProviderSignedOff'))",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert!(open_streams.is_empty(), "left open: {open_streams:?}");
}

#[tokio::test]
async fn the_live_demo_produces_within_seconds_reuses_providers_and_closes_what_it_opened() {
    let (pool, url) = helpers::fresh_database_with_url().await;

    // At the default speed the first patient used to come after about three minutes.
    let (first, printed) = live_run_until_first_request(&pool, &url, libc::SIGINT).await;
    eprintln!("first requestAppointment {first:?} after the live demo started");
    assert!(
        first < Duration::from_secs(20),
        "first requestAppointment after {first:?}"
    );
    assert!(printed.contains("Stopped early"), "{printed}");
    assert_everything_closed(&pool).await;
    let providers = count(&pool, "streams", "provider").await;
    assert!(providers > 0);
    assert_eq!(count(&pool, "streams", "board").await, 1);

    // A killed run (no chance to tidy up) leaves its Board open ...
    live_run_until_first_request(&pool, &url, libc::SIGKILL).await;
    let boards: i64 = count(&pool, "streams", "board").await;
    assert_eq!(boards, 2);
    assert_eq!(count(&pool, "events", "BoardClosed").await, 1);

    // ... and the next run closes it first. No run registers a provider twice.
    let (_, printed) = live_run_until_first_request(&pool, &url, libc::SIGINT).await;
    assert!(
        printed.contains("Closing 1 Board(s) an earlier demo run left open"),
        "{printed}"
    );
    assert_everything_closed(&pool).await;
    assert_eq!(count(&pool, "streams", "board").await, 3);
    assert_eq!(
        count(&pool, "streams", "provider").await,
        providers,
        "re-runs reuse the providers"
    );
    let names: Vec<(String, i64)> = sqlx::query_as(
        "select data->>'name', count(*) from events where type = 'ProviderRegistered' \
          group by 1 having count(*) > 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(names.is_empty(), "registered twice: {names:?}");
}

/// `careboard demo` for 2026-03-02 with `extra` arguments; `env` set on top.
fn demo_run(extra: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> std::process::Output {
    let mut command = demo_command("1", "1");
    command.args(extra);
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().expect("run careboard demo")
}

#[tokio::test]
async fn demo_reset_starts_over_only_when_confirmed() {
    let (_pool, url) = helpers::fresh_database_with_url().await;
    let env = [("DATABASE_URL", std::ffi::OsStr::new(&url))];
    assert!(demo_run(&[], &env).status.success());
    let day = all_events(&url).await;
    assert!(!day.is_empty());

    // Unconfirmed, or a database given by URL without saying so: refused, untouched.
    let out = demo_run(&["--reset"], &env);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("add --yes"));
    let out = demo_run(&["--reset", "--yes"], &env);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--reset-database-url"));
    assert_eq!(all_events(&url).await.len(), day.len());

    // Confirmed: the database starts empty, so the same day imports again, once.
    let out = demo_run(&["--reset", "--yes", "--reset-database-url"], &env);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("dropped and created empty"));
    assert_eq!(all_events(&url).await, day, "the same day, imported once");
}

#[test]
fn demo_reset_on_the_embedded_database() {
    let data_dir = crate::helpers::files::data_dir();
    let dir = ["--data-dir", data_dir.path().to_str().unwrap()];
    let out = demo_run(&dir, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = demo_run(&dir, &[]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already exists"),
        "the day is there: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = demo_run(&[&dir[..], &["--reset"]].concat(), &[]);
    assert!(!out.status.success());
    let out = demo_run(&[&dir[..], &["--reset", "--yes"]].concat(), &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.contains("dropped and created empty") && printed.contains("Imported the demo day"),
        "{printed}"
    );
}

#[tokio::test]
async fn a_live_demo_limited_by_hours_closes_its_boards_at_the_end() {
    let (pool, url) = helpers::fresh_database_with_url().await;
    let out = Command::new(env!("CARGO_BIN_EXE_careboard"))
        .args(["demo", "--live", "--boards", "1", "--bind", "127.0.0.1:0"])
        .args(["--hours", "2", "--speed", "600"])
        .env("DATABASE_URL", &url)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run careboard demo --live --hours 2");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(count(&pool, "events", "AppointmentRequested").await > 0);
    assert_eq!(count(&pool, "events", "BoardClosed").await, 1);
    assert_everything_closed(&pool).await;
}
