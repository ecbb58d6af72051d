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
