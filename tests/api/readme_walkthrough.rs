//! The README's walkthrough, run as printed (its `sh` blocks, with curl and jq) against
//! the real server, each output compared with the one printed under it. Ids and times
//! differ from run to run; everything else, including positions and versions, must
//! match, so the README cannot drift from what Careboard does.

use crate::helpers::TestApp;
use serde_json::Value;

/// One `sh` block and the output printed under it (a `json` block, if any).
struct Step {
    commands: String,
    printed: Option<String>,
}

/// The steps of the section under `heading` (up to the next heading of that level or
/// above), skipping any subsection titled `skip`.
fn steps(readme: &str, heading: &str, skip: Option<&str>) -> Vec<Step> {
    let level = heading.chars().take_while(|c| *c == '#').count();
    let mut lines = readme.lines().skip_while(|l| l.trim() != heading).skip(1);
    let mut steps: Vec<Step> = Vec::new();
    let mut skipping = false;
    while let Some(line) = lines.next() {
        let hashes = line.chars().take_while(|c| *c == '#').count();
        if hashes > 0 && line[hashes..].starts_with(' ') {
            if hashes <= level {
                break;
            }
            skipping = skip.is_some_and(|s| line.trim() == s);
            continue;
        }
        let fence = line.trim();
        if fence != "```sh" && fence != "```json" {
            continue;
        }
        let body: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
        if skipping {
            continue;
        }
        let body = body.join("\n");
        if fence == "```sh" {
            steps.push(Step {
                commands: body,
                printed: None,
            });
        } else if let Some(step) = steps.last_mut() {
            step.printed = Some(body);
        }
    }
    steps
}

/// Ids and times replaced by placeholders: what may differ between runs.
fn normalise(value: &Value) -> Value {
    match value {
        Value::String(s) => {
            let is_uuid = s.len() == 36
                && s.chars().enumerate().all(|(i, c)| {
                    if [8, 13, 18, 23].contains(&i) {
                        c == '-'
                    } else {
                        c.is_ascii_hexdigit()
                    }
                });
            let is_time = chrono::DateTime::parse_from_rfc3339(s).is_ok();
            if is_uuid {
                Value::String("<id>".into())
            } else if is_time {
                Value::String("<time>".into())
            } else {
                value.clone()
            }
        }
        Value::Array(items) => Value::Array(items.iter().map(normalise).collect()),
        Value::Object(map) => {
            Value::Object(map.iter().map(|(k, v)| (k.clone(), normalise(v))).collect())
        }
        other => other.clone(),
    }
}

const SEPARATOR: &str = "@@@ end of step @@@";

/// Runs the steps in one bash (so variables carry over) against `app`, which trusts the
/// development issuer of `data_dir` (where the README's `careboard token` finds its
/// key); returns each step's output.
async fn run(app: &TestApp, data_dir: &std::path::Path, steps: &[&Step]) -> Vec<String> {
    let mut script = String::from("set -u\n");
    for step in steps {
        script.push_str(&step.commands);
        script.push_str(&format!("\necho '{SEPARATOR}'\n"));
    }
    // The README talks to the default address; this server listens elsewhere.
    let script = script.replace("localhost:8080", &app.server.addr.to_string());
    // `cargo run --release --` is this build's binary.
    let script = script.replace(
        "cargo run -q --release --",
        &format!("'{}'", env!("CARGO_BIN_EXE_careboard")),
    );
    let output = tokio::process::Command::new("bash")
        .arg("-c")
        .arg(&script)
        .env("CAREBOARD_DATA_DIR", data_dir)
        .env("RUST_LOG", "warn")
        .output()
        .await
        .expect("run bash (with curl and jq: .ci/run installs them)");
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success(),
        "the walkthrough failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut outputs: Vec<String> = stdout
        .split(&format!("{SEPARATOR}\n"))
        .map(str::to_string)
        .collect();
    outputs.truncate(steps.len());
    assert_eq!(outputs.len(), steps.len(), "{stdout}");
    outputs
}

fn compare(step: &Step, actual: &str) {
    let Some(printed) = &step.printed else {
        return;
    };
    let parse = |text: &str| -> Vec<Value> {
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| {
                    panic!("not JSON ({e}): {l}\n(a real run answers:\n{actual})")
                })
            })
            .collect()
    };
    let printed_values: Vec<Value> = parse(printed).iter().map(normalise).collect();
    let actual_values: Vec<Value> = parse(actual).iter().map(normalise).collect();
    assert_eq!(
        printed_values, actual_values,
        "the README prints for\n{}\n\n{printed}\n\nbut a real run answers\n\n{actual}",
        step.commands
    );
}

fn readme() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap()
}

#[tokio::test]
async fn the_readme_walkthrough_runs_as_printed() {
    let readme = readme();
    let walkthrough = steps(&readme, "## Walkthrough", Some("### Scheduling by hand"));
    assert!(walkthrough.len() >= 8, "found {} steps", walkthrough.len());
    let data_dir = tempfile::tempdir().unwrap();
    let app = TestApp::spawn_development(data_dir.path(), true).await;
    let outputs = run(
        &app,
        data_dir.path(),
        &walkthrough.iter().collect::<Vec<_>>(),
    )
    .await;
    // What this run answered, to re-capture the README from (`--nocapture`).
    for output in &outputs {
        eprintln!("{output}{SEPARATOR}");
    }
    for (step, actual) in walkthrough.iter().zip(&outputs) {
        compare(step, actual);
    }
}

#[tokio::test]
async fn scheduling_by_hand_runs_as_printed_with_the_matcher_off() {
    let readme = readme();
    let walkthrough = steps(&readme, "## Walkthrough", Some("### Scheduling by hand"));
    let by_hand = steps(&readme, "### Scheduling by hand", None);
    assert!(!by_hand.is_empty());
    // "After the first four steps above on such a server".
    let data_dir = tempfile::tempdir().unwrap();
    let app = TestApp::spawn_development(data_dir.path(), false).await;
    let mut script: Vec<&Step> = walkthrough.iter().take(4).collect();
    script.extend(by_hand.iter());
    let outputs = run(&app, data_dir.path(), &script).await;
    for (step, actual) in script.iter().zip(&outputs) {
        compare(step, actual);
    }
}
