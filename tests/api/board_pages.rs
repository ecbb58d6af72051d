//! A Board's appointments read a page at a time, and the live Boards a process keeps
//! in memory between reads: always what a whole read of the Board gives.

use std::time::Duration;

use careboard::domain::AppointmentStatus;
use careboard::projections::{read, Projection};
use careboard::projector::state;
use serde_json::{json, Value};

use crate::helpers::{documents, error_code, TestApp};

const PAGE: &str = "query($id: ID!, $first: Int, $after: ID, $status: [AppointmentStatus!], $at: Int) {
    board(id: $id, minPosition: $at) { appointments(first: $first, after: $after, status: $status) { id status } } }";

fn ids(page: &Value) -> Vec<String> {
    page["board"]["appointments"]
        .as_array()
        .expect("appointments")
        .iter()
        .map(|a| a["id"].as_str().expect("id").to_string())
        .collect()
}

#[tokio::test]
async fn a_boards_appointments_page_in_request_order_and_filter_by_status() {
    let app = TestApp::spawn().await;
    let board = app.open_board("Pages").await;
    let mut requested = Vec::new();
    for i in 0..7 {
        let (id, _) = app
            .request_appointment(documents::request_input(&board, &format!("Patient {i}")))
            .await;
        requested.push(id);
    }
    let mut at = 0;
    for id in &requested[1..3] {
        let d = app
            .data(
                "mutation($id: ID!) { cancelAppointment(input: {appointmentId: $id, reason: \"left\"}) { position } }",
                json!({"id": id}),
            )
            .await;
        at = d["cancelAppointment"]["position"].as_i64().unwrap();
    }

    let whole = ids(&app.data(PAGE, json!({"id": board, "at": at})).await);
    assert_eq!(
        whole, requested,
        "without first: every appointment, in order"
    );
    let mut paged = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = ids(&app
            .data(PAGE, json!({"id": board, "first": 3, "after": after}))
            .await);
        assert!(page.len() <= 3);
        if page.is_empty() {
            break;
        }
        after = page.last().cloned();
        paged.extend(page);
    }
    assert_eq!(
        paged, requested,
        "pages of 3 add up to the whole, no overlap"
    );

    let cancelled = ids(&app
        .data(PAGE, json!({"id": board, "status": ["CANCELLED"]}))
        .await);
    assert_eq!(cancelled, requested[1..3]);
    let waiting = ids(&app
        .data(
            PAGE,
            json!({"id": board, "status": ["REQUESTED"], "first": 2, "after": requested[0]}),
        )
        .await);
    assert_eq!(waiting, vec![requested[3].clone(), requested[4].clone()]);

    for (variables, why) in [
        (json!({"id": board, "first": 501}), "a page past 500"),
        (json!({"id": board, "first": -1}), "a negative page"),
        (
            json!({"id": board, "after": uuid::Uuid::new_v4().to_string()}),
            "a cursor not on this Board",
        ),
        (
            json!({"id": board, "after": "not-an-id"}),
            "a cursor that is no id",
        ),
    ] {
        let response = app.gql(PAGE, variables).await;
        assert_eq!(error_code(&response), "VALIDATION", "{why}: {response}");
    }
}

/// What a whole read of the live document gives (contents compare by their
/// `Debug` form: every field, in order).
async fn whole(pool: &sqlx::PgPool, board: uuid::Uuid) -> String {
    let contents = read::board(pool, board)
        .await
        .unwrap()
        .and_then(|d| d.to_contents())
        .expect("a projected Board");
    format!("{contents:?}")
}

async fn kept(cache: &read::BoardCache, pool: &sqlx::PgPool, board: uuid::Uuid) -> String {
    let contents = cache.contents(pool, board).await.unwrap().expect("a Board");
    format!("{contents:?}")
}

#[tokio::test]
async fn a_board_kept_in_memory_reads_as_a_whole_read_after_changes_and_a_rebuild() {
    kept_reads_as_whole(read::BoardContentsBuild::Incremental).await;
}

/// The same with each version's contents made whole (the earlier path, kept for the
/// benchmark's before/after).
#[tokio::test]
async fn a_board_kept_in_memory_and_made_whole_reads_as_a_whole_read() {
    kept_reads_as_whole(read::BoardContentsBuild::Whole).await;
}

async fn kept_reads_as_whole(build: read::BoardContentsBuild) {
    let app = TestApp::spawn().await;
    let pool = app.server_pool().clone();
    let board = app.open_board("Kept").await;
    let id: uuid::Uuid = board.parse().unwrap();
    let cache = read::BoardCache::with_contents(4, build);

    let at = app
        .request_all(&board, (0..5).map(|i| format!("First {i}")))
        .await;
    app.projected_version(&board, at).await;
    let first = cache.contents(&pool, id).await.unwrap().unwrap();
    assert_eq!(format!("{first:?}"), whole(&pool, id).await);
    // Unchanged: the same contents, shared.
    let again = cache.contents(&pool, id).await.unwrap().unwrap();
    assert!(std::sync::Arc::ptr_eq(&first, &again));

    // Changes since: new appointments, and a changed one.
    let at = app
        .request_all(&board, (0..3).map(|i| format!("Second {i}")))
        .await;
    let cancelled = first.appointments[2].id.to_string();
    app.data(
        "mutation($id: ID!) { cancelAppointment(input: {appointmentId: $id, reason: \"left\"}) { position } }",
        json!({"id": cancelled}),
    )
    .await;
    let at = at.max(app.event_count().await);
    app.projected_version(&board, at).await;
    let later = cache.contents(&pool, id).await.unwrap().unwrap();
    assert_eq!(format!("{later:?}"), whole(&pool, id).await);
    assert_eq!(later.appointments.len(), 8);
    assert_eq!(
        later.counts,
        careboard::domain::AppointmentCounts::of(later.appointments.iter().map(|a| &**a))
    );
    assert_eq!(later.counts.get(AppointmentStatus::Cancelled), 1);
    // Made from what changed, the appointments that did not change are the ones
    // already kept, not copies.
    let shared = later
        .appointments
        .iter()
        .filter(|a| {
            first
                .appointments
                .iter()
                .any(|f| std::sync::Arc::ptr_eq(f, a))
        })
        .count();
    match build {
        read::BoardContentsBuild::Incremental => assert_eq!(shared, 4),
        read::BoardContentsBuild::Whole => assert_eq!(shared, 0),
    }

    // A rebuilt generation: what was kept belongs to the old one.
    let generation = state::request_rebuild(&pool, Projection::BoardView)
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !state::status(&pool)
        .await
        .unwrap()
        .iter()
        .any(|s| s.name == "board_view" && s.generation == generation && s.state == "live")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the rebuilt generation did not go live"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let at = app
        .request_all(&board, (0..2).map(|i| format!("Third {i}")))
        .await;
    app.projected_version(&board, at).await;
    let rebuilt = cache.contents(&pool, id).await.unwrap().unwrap();
    assert_eq!(format!("{rebuilt:?}"), whole(&pool, id).await);
    assert_eq!(rebuilt.appointments.len(), 10);

    // Past its capacity the least recently read Board goes; reads stay right.
    for i in 0..5 {
        let other = app.open_board(&format!("Other {i}")).await;
        let at = app.request_all(&other, ["Someone".to_string()]).await;
        app.projected_version(&other, at).await;
        let other: uuid::Uuid = other.parse().unwrap();
        assert_eq!(kept(&cache, &pool, other).await, whole(&pool, other).await);
    }
    assert_eq!(kept(&cache, &pool, id).await, whole(&pool, id).await);
    assert!(cache
        .contents(&pool, uuid::Uuid::new_v4())
        .await
        .unwrap()
        .is_none());
}

/// Rows a refresh's statement visits in `board_view_appointments` and leaves out: the
/// sum of "Rows Removed by Filter" over its scans of that table.
async fn rows_visited_and_left_out(
    pool: &sqlx::PgPool,
    statement: &str,
    board: uuid::Uuid,
    generation: i32,
    version: i64,
) -> (i64, i64) {
    fn walk(plan: &Value, returned: &mut i64, removed: &mut i64) {
        if plan["Relation Name"] == "board_view_appointments" {
            *returned += plan["Actual Rows"].as_i64().unwrap_or(0);
            *removed += plan["Rows Removed by Filter"].as_i64().unwrap_or(0);
        }
        for child in plan["Plans"].as_array().into_iter().flatten() {
            walk(child, returned, removed);
        }
    }
    // Statistics as a live database has them (autovacuum's analyze); and as on a Board
    // of thousands of appointments, where the table is never read whole.
    sqlx::query("analyze board_view_appointments")
        .execute(pool)
        .await
        .unwrap();
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("set local enable_seqscan = off")
        .execute(&mut *tx)
        .await
        .unwrap();
    let plan: Value = sqlx::query_scalar(&format!("explain (analyze, format json) {statement}"))
        .bind(board)
        .bind(generation)
        .bind(version)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    let (mut returned, mut removed) = (0, 0);
    walk(&plan[0]["Plan"], &mut returned, &mut removed);
    (returned, removed)
}

/// A kept Board's refresh reads the appointment rows written since the version it
/// holds through the index on that version: it does not visit the Board's other rows
/// (the earlier statement tested every row of the Board against the version).
#[tokio::test]
async fn a_kept_boards_refresh_visits_only_the_rows_written_since() {
    let app = TestApp::spawn().await;
    let board = app.open_board("Indexed refresh").await;
    let last = app
        .request_all(&board, (0..60).map(|i| format!("Patient {i}")))
        .await;
    let before = app.projected_version(&board, last).await;
    let last = app
        .request_all(&board, (0..2).map(|i| format!("Later {i}")))
        .await;
    app.projected_version(&board, last).await;
    let id: uuid::Uuid = board.parse().unwrap();
    let generation: i32 = sqlx::query_scalar("select generation from board_view where id = $1")
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .unwrap();

    let (returned, removed) =
        rows_visited_and_left_out(&app.pool, read::refresh_board_sql(), id, generation, before)
            .await;
    assert_eq!(
        (returned, removed),
        (2, 0),
        "only the two rows written since"
    );
    // The earlier statement returns the same rows, having tested all 62.
    let (returned, removed) = rows_visited_and_left_out(
        &app.pool,
        read::refresh_board_scan_sql(),
        id,
        generation,
        before,
    )
    .await;
    assert_eq!((returned, removed), (2, 60));
    // From another generation (or nothing held): every row.
    let (returned, _) =
        rows_visited_and_left_out(&app.pool, read::refresh_board_sql(), id, -1, -1).await;
    assert_eq!(returned, 62);
}
