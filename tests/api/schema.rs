//! The committed `schema.graphql` must be the schema the code serves.

#[test]
fn committed_schema_matches_the_served_schema() {
    let committed = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/schema.graphql"))
        .expect("schema.graphql exists at the top level");
    let served = careboard::graphql::sdl();
    assert!(
        committed == served,
        "schema.graphql is out of date; regenerate it with `cargo run -- schema > schema.graphql`"
    );
}

/// What front-end code generators read: every custom scalar documented (format and an
/// example, no Rust type names), and the Board date written with one scalar wherever it
/// is sent or received.
#[tokio::test]
async fn custom_scalars_are_documented_for_clients_and_dates_use_one_scalar() {
    use serde_json::{json, Value};
    let app = crate::helpers::TestApp::spawn().await;
    let data = app
        .data(
            r#"{
              __schema { types { kind name description specifiedByURL } }
              openBoard: __type(name: "OpenBoardInput") {
                inputFields { name type { kind name ofType { name } } }
              }
              query: __type(name: "Query") {
                fields { name args { name type { kind name ofType { name } } } }
              }
              board: __type(name: "Board") {
                fields { name type { kind name ofType { name } } }
              }
            }"#,
            json!({}),
        )
        .await;
    const BUILT_IN: [&str; 5] = ["String", "Int", "Float", "Boolean", "ID"];
    let scalars: Vec<&Value> = data["__schema"]["types"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["kind"] == "SCALAR" && !BUILT_IN.contains(&t["name"].as_str().unwrap()))
        .collect();
    let names: Vec<&str> = scalars
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    for expected in ["Date", "DateTime", "JSON"] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }
    assert!(!names.contains(&"NaiveDate"), "{names:?}");
    for scalar in &scalars {
        let name = scalar["name"].as_str().unwrap();
        let description = scalar["description"].as_str().unwrap_or_default();
        assert!(
            description.len() > 40 && description.contains("e.g."),
            "{name} needs a description with its format and an example: {description:?}"
        );
        for rust in ["Implement", "chrono", "Utc", "NaiveDate", "Rust", "%Y"] {
            assert!(
                !description.contains(rust),
                "{name}'s description speaks of {rust}: {description:?}"
            );
        }
    }
    let url = |name: &str| {
        scalars.iter().find(|t| t["name"] == name).unwrap()["specifiedByURL"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    assert!(url("Date").contains("rfc3339"), "{}", url("Date"));
    assert!(url("DateTime").contains("rfc3339"), "{}", url("DateTime"));

    // The type a field or argument names, through NON_NULL / LIST.
    fn named(ty: &Value) -> &str {
        ty["name"]
            .as_str()
            .or_else(|| ty["ofType"]["name"].as_str())
            .unwrap_or_default()
    }
    // The entry called `name` in an introspection list (fields, input fields, args).
    fn called<'a>(list: &'a Value, name: &str) -> &'a Value {
        list.as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == name)
            .unwrap_or_else(|| panic!("no {name} in {list}"))
    }
    let date_input = called(&data["openBoard"]["inputFields"], "date");
    assert_eq!(named(&date_input["type"]), "Date", "OpenBoardInput.date");
    let boards = called(&data["query"]["fields"], "boards");
    let date_arg = called(&boards["args"], "date");
    assert_eq!(named(&date_arg["type"]), "Date", "boards(date:)");
    let board_date = called(&data["board"]["fields"], "date");
    assert_eq!(named(&board_date["type"]), "Date", "Board.date");
}

/// A date is sent as a plain string, and a bad one answers VALIDATION with the reason,
/// whether it arrives inline, in a variable, or as the `boards` filter.
#[tokio::test]
async fn dates_are_plain_strings_and_bad_ones_are_validation_errors() {
    use serde_json::json;
    let app = crate::helpers::TestApp::spawn().await;
    let opened = app
        .data(
            r#"mutation { openBoard(input: {name: "Inline", specialty: "cardiology", region: "NY", date: "2026-11-27"}) { board { date } } }"#,
            json!({}),
        )
        .await;
    assert_eq!(opened["openBoard"]["board"]["date"], "2026-11-27");
    for (query, variables, reason) in [
        (
            r#"mutation { openBoard(input: {name: "X", specialty: "x", region: "NY", date: "2026-02-30"}) { position } }"#,
            json!({}),
            "is not a valid date (expected YYYY-MM-DD)",
        ),
        (
            r#"mutation($d: Date!) { openBoard(input: {name: "X", specialty: "x", region: "NY", date: $d}) { position } }"#,
            json!({"d": "2201-01-01"}),
            "is out of range (years 1900 to 2200)",
        ),
        (
            r#"query($d: Date) { boards(date: $d) { edges { cursor } } }"#,
            json!({"d": "27/11/2026"}),
            "is not a valid date (expected YYYY-MM-DD)",
        ),
        (
            r#"{ boards(date: 20261127) { edges { cursor } } }"#,
            json!({}),
            "",
        ),
    ] {
        let response = app.gql(query, variables).await;
        let error = &response["errors"][0];
        assert_eq!(error["extensions"]["code"], "VALIDATION", "{response}");
        let message = error["message"].as_str().unwrap();
        assert!(message.contains(reason), "{message}");
        assert!(
            !message.contains("NaiveDate") && !message.contains("chrono"),
            "{message}"
        );
    }
    assert_eq!(app.event_count().await, 1);
}
