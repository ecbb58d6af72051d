//! Seeded days for tests: a simulated day imported as history, cut at "now", so a
//! Board is live mid-day with its morning behind it.

use careboard::demo::scenario::{
    generate, Arrival, BoardPlan, ProviderPlan, Scenario, ScenarioOptions, ShiftPlan,
};
use careboard::event_store::import::{import, ImportEvent};
use chrono::{DateTime, NaiveTime, TimeZone, Utc};
use serde_json::{json, Value};

use super::TestApp;

/// Imports a simulated day as history, keeping only what had happened by `cut` and
/// moving every time by `shift` (so a moment of the simulated day can be "now").
pub async fn seed(app: &TestApp, scenario: &Scenario, cut: DateTime<Utc>, shift: chrono::Duration) {
    fn move_times(v: &mut Value, shift: chrono::Duration) {
        match v {
            Value::String(s) => {
                if let Ok(t) = DateTime::parse_from_rfc3339(s) {
                    *s = (t.with_timezone(&Utc) + shift).to_rfc3339();
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|i| move_times(i, shift)),
            Value::Object(map) => map.values_mut().for_each(|i| move_times(i, shift)),
            _ => {}
        }
    }
    let events: Vec<ImportEvent> = careboard::demo::sim::simulate(scenario, 7)
        .expect("the day simulates")
        .into_iter()
        .filter(|e| e.recorded_at <= cut)
        .map(|mut e| {
            e.recorded_at += shift;
            move_times(&mut e.data, shift);
            e
        })
        .collect();
    let imported = import(&app.pool, &events).await.expect("the day imports");
    // Read-your-writes: the projector has applied the whole day.
    let board = scenario.boards[0].id;
    app.data(
        "query($id: ID!, $p: Int) { board(id: $id, minPosition: $p) { version } }",
        json!({"id": board, "p": imported.position}),
    )
    .await;
}

/// A busy morning at a pediatrics clinic in Texas, `now` being 10:40 of it.
pub async fn seed_morning(app: &TestApp, boards: usize) -> Scenario {
    let now = Utc::now();
    let date = now.date_naive();
    let scenario = generate(&ScenarioOptions {
        seed: 7,
        date,
        boards,
        load: 1.6,
    });
    let cut = Utc.from_utc_datetime(&date.and_time(NaiveTime::from_hms_opt(10, 40, 0).unwrap()));
    seed(app, &scenario, cut, now - cut).await;
    scenario
}

/// Seeds [`stuck_morning`] up to `now` and answers its Board's id.
pub async fn seed_stuck_morning(app: &TestApp, now: DateTime<Utc>) -> uuid::Uuid {
    let scenario = stuck_morning(now);
    seed(app, &scenario, now, chrono::Duration::zero()).await;
    scenario.boards[0].id
}

/// One provider busy with a long appointment, a second one (of the same name) paused,
/// and a patient waiting behind them: `now` is 50 minutes into the day.
pub fn stuck_morning(now: DateTime<Utc>) -> Scenario {
    let t0 = now - chrono::Duration::minutes(50);
    let minutes = chrono::Duration::minutes;
    let arrival = |at: DateTime<Utc>, patient: &str, consult: i64| Arrival {
        at,
        patient: patient.to_string(),
        specialty: "pediatrics".into(),
        region: "TX".into(),
        reason: "fever".into(),
        lead: minutes(1),
        consult: minutes(consult),
        charting: minutes(5),
        patience: None,
        no_show: false,
    };
    Scenario {
        date: now.date_naive(),
        providers: vec![
            ProviderPlan {
                id: uuid::Uuid::new_v4(),
                name: "Dr. Grace Kim".into(),
                specialties: vec!["pediatrics".into()],
                regions: vec!["TX".into()],
            },
            ProviderPlan {
                id: uuid::Uuid::new_v4(),
                name: "Dr. Grace Kim".into(),
                specialties: vec!["pediatrics".into()],
                regions: vec!["TX".into(), "OK".into()],
            },
        ],
        boards: vec![BoardPlan {
            id: uuid::Uuid::new_v4(),
            name: "Pediatrics · Texas".into(),
            specialty: "pediatrics".into(),
            region: "TX".into(),
            opens_at: t0,
            shifts: vec![
                ShiftPlan {
                    provider: 0,
                    joins_at: t0 + minutes(1),
                    leaves_at: t0 + minutes(600),
                    breaks: vec![],
                },
                ShiftPlan {
                    provider: 1,
                    joins_at: t0 + minutes(2),
                    leaves_at: t0 + minutes(600),
                    breaks: vec![(t0 + minutes(3), t0 + minutes(600))],
                },
            ],
            arrivals: vec![
                arrival(t0 + minutes(5), "Ada Park", 120),
                arrival(t0 + minutes(10), "Ben Okafor", 15),
            ],
        }],
    }
}
