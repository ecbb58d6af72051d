//! A `board_view` rebuild writes the same bytes whichever path it takes: events
//! decoded from the log's jsonb text and folded in place, or decoded from a `Value`
//! tree and folded onto a copy; Board snapshots put together in the database, or read
//! back whole and sent again; the log read by the rebuild alone without `metadata`,
//! each stream looked up once per batch, or joined, or as the live loops read it (the
//! earlier paths, still selectable).

use crate::helpers;
use crate::helpers::store::{open_board, request_appointment};
use std::sync::Arc;
use std::time::{Duration, Instant};

use careboard::daemon::{Daemon, DaemonConfig, DaemonHandle};
use careboard::domain::{AppointmentEvent, DomainEvent, ShiftEvent, StreamType};
use careboard::event_store::append::{append, StreamWrite};
use careboard::event_store::{read_board_streams, EventStore, ReadLimit};
use careboard::metrics::Metrics;
use careboard::projections::{board_view, read, BoardDoc, Doc, Projection};
use careboard::projector::rebuild::{select_read, RebuildRead};
use careboard::projector::state;
use careboard::snapshots::BoardSnapshotStatement;
use chrono::Utc;
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

fn start_projector(pool: &PgPool, store: &EventStore) -> DaemonHandle {
    Daemon::new(
        pool.clone(),
        store.appended_signal(),
        Default::default(),
        DaemonConfig {
            // Small batches: Boards are loaded partially and snapshotted mid-rebuild.
            batch_size: 7,
            rebuild_batch_size: 7,
            snapshot_every: 4,
            ..helpers::fast_projector()
        },
        Arc::new(Metrics::new()),
    )
    .spawn()
}

async fn append_events<E: DomainEvent>(
    pool: &PgPool,
    stream_type: StreamType,
    stream: Uuid,
    board: Uuid,
    base: i64,
    events: &[E],
) {
    let mut conn = pool.acquire().await.unwrap();
    let write = StreamWrite::new(stream_type, stream, Some(board), base, events);
    append(&mut conn, &[write], &json!({"actor": "test"}))
        .await
        .unwrap_or_else(|e| panic!("{}", e.describe()));
}

/// Every kind of event a Board document folds, with text that needs escaping.
async fn history(pool: &PgPool, store: &EventStore) -> Vec<Uuid> {
    let mut boards = Vec::new();
    for b in 0..2 {
        boards.push(open_board(store, &format!("Rebuild paths {b}")).await);
    }
    let names = [
        "Ana \"Nana\" Souza",
        "Zoë O'Brien \\ ünïcödé ✓",
        "line\nbreak\ttab",
        "plain",
    ];
    for (i, board) in boards.iter().enumerate() {
        let provider = Uuid::new_v4();
        let shift = Uuid::new_v4();
        append_events(
            pool,
            StreamType::Shift,
            shift,
            *board,
            0,
            &[
                ShiftEvent::ProviderJoined {
                    board_id: (*board).into(),
                    provider_id: provider.into(),
                },
                ShiftEvent::ProviderPaused {},
                ShiftEvent::ProviderReady {},
            ],
        )
        .await;
        let mut shift_version = 3;
        for n in 0..9 {
            let patient = format!("{} {i}-{n}", names[n % names.len()]);
            let (appointment, _) = request_appointment(store, *board, &patient).await;
            let later: Vec<AppointmentEvent> = match n % 3 {
                0 => vec![AppointmentEvent::AppointmentCancelled {
                    reason: format!("{patient} \"cancelled\" ✗"),
                }],
                1 => vec![
                    AppointmentEvent::AppointmentScheduled {
                        provider_id: provider.into(),
                        shift_id: shift.into(),
                        estimated_time: Utc::now(),
                    },
                    AppointmentEvent::AppointmentStarted {},
                    AppointmentEvent::AppointmentFinished {},
                ],
                _ => Vec::new(),
            };
            if !later.is_empty() {
                append_events(
                    pool,
                    StreamType::Appointment,
                    appointment,
                    *board,
                    1,
                    &later,
                )
                .await;
            }
            if n % 3 == 1 {
                let events = [
                    ShiftEvent::ProviderAssigned {
                        appointment_id: appointment.into(),
                    },
                    ShiftEvent::ChartingStarted {
                        appointment_id: appointment.into(),
                    },
                    ShiftEvent::ChartingFinished {
                        charting_seconds: 60 + n as i64,
                    },
                ];
                append_events(
                    pool,
                    StreamType::Shift,
                    shift,
                    *board,
                    shift_version,
                    &events,
                )
                .await;
                shift_version += events.len() as i64;
            }
        }
        append_events(
            pool,
            StreamType::Shift,
            shift,
            *board,
            shift_version,
            &[ShiftEvent::ProviderSignedOff {}],
        )
        .await;
    }
    boards
}

/// What a generation of `board_view` stored, as jsonb text: headers, appointment rows
/// (with the Board version that wrote each) and Board snapshots.
async fn stored(pool: &PgPool, generation: i32) -> Vec<String> {
    let mut rows: Vec<String> = sqlx::query_scalar(
        "select format('header %s %s %s %s', id, version, position, doc::text) \
           from board_view where generation = $1 order by id",
    )
    .bind(generation)
    .fetch_all(pool)
    .await
    .unwrap();
    let appointments: Vec<String> = sqlx::query_scalar(
        "select format('appointment %s %s %s %s %s', board_id, id, applied, board_version, doc::text) \
           from board_view_appointments where generation = $1 order by board_id, id",
    )
    .bind(generation)
    .fetch_all(pool)
    .await
    .unwrap();
    let snapshots: Vec<String> = sqlx::query_scalar(
        "select format('snapshot %s %s %s %s %s', kind, id, version, max_recorded_at, doc::text) \
           from snapshots where kind = 'board' order by id, version",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    rows.extend(appointments);
    rows.extend(snapshots);
    rows
}

async fn live_generation(pool: &PgPool) -> Option<i32> {
    sqlx::query_scalar(
        "select generation from projection_state where name = 'board_view' and status = 'live'",
    )
    .fetch_optional(pool)
    .await
    .unwrap()
}

/// Whether `generation` of `board_view` has passed the log's last event.
async fn caught_up(pool: &PgPool, generation: i32) -> bool {
    sqlx::query_scalar(
        "select (p.tx, p.seq) = (select tx, seq from events order by tx desc, seq desc limit 1) \
           from projection_state p where p.name = 'board_view' and p.generation = $1",
    )
    .bind(generation)
    .fetch_optional(pool)
    .await
    .unwrap()
    .unwrap_or(false)
}

/// The earlier paths a rebuild can take, each selectable on its own.
#[derive(Debug, Clone, Copy, Default)]
struct Earlier {
    /// Events decoded through a `Value` tree and folded onto a copy.
    fold: bool,
    /// Board snapshots read back whole into the process and sent again.
    snapshots: bool,
    /// The log read as the live loops read it (`Shared`), or joined to the streams
    /// without `metadata` (`Lean`); `None`: the current read.
    read: Option<RebuildRead>,
    /// Board snapshots written behind each batch, on another connection, from its
    /// committed rows (the current path), or in each batch's transaction (earlier).
    behind: bool,
    /// How Board snapshots are put together in the database (`None`: the current
    /// statement).
    statement: Option<BoardSnapshotStatement>,
}

impl Earlier {
    const ALL: Earlier = Earlier {
        fold: true,
        snapshots: true,
        read: Some(RebuildRead::Shared),
        behind: false,
        statement: Some(BoardSnapshotStatement::Aggregated),
    };

    fn select(self) {
        careboard::domain::tagged::decode_through_value(self.fold);
        board_view::fold_board_by_copy(self.fold);
        careboard::snapshots::read_back_boards(self.snapshots);
        select_read(self.read.unwrap_or(RebuildRead::Unjoined));
        careboard::projector::rebuild::pipeline_snapshots(self.behind);
        careboard::snapshots::select_board_snapshot_statement(
            self.statement.unwrap_or(BoardSnapshotStatement::Built),
        );
    }
}

/// Rebuilds `board_view` on the selected paths and returns what the new generation
/// stored.
async fn rebuild(pool: &PgPool, store: &EventStore, earlier: Earlier) -> Vec<String> {
    earlier.select();
    sqlx::query("delete from snapshots")
        .execute(pool)
        .await
        .unwrap();
    let generation = state::request_rebuild(pool, Projection::BoardView)
        .await
        .unwrap();
    let projector = start_projector(pool, store);
    let deadline = Instant::now() + Duration::from_secs(60);
    while live_generation(pool).await != Some(generation) || !caught_up(pool, generation).await {
        assert!(Instant::now() < deadline, "the rebuild did not go live");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    projector.stop().await.unwrap();
    Earlier::default().select();
    stored(pool, generation).await
}

#[tokio::test]
async fn a_rebuild_decoding_from_the_jsonb_text_and_folding_in_place_stores_the_same_bytes_as_the_earlier_path(
) {
    let pool = helpers::fresh_database().await;
    let store = helpers::store(&pool);
    let mut boards = history(&pool, &store).await;
    // A Board whose snapshots hold no appointment rows.
    let quiet = open_board(&store, "Rebuild paths, no appointments").await;
    append_events(
        &pool,
        StreamType::Shift,
        Uuid::new_v4(),
        quiet,
        0,
        &[
            ShiftEvent::ProviderJoined {
                board_id: quiet.into(),
                provider_id: Uuid::new_v4().into(),
            },
            ShiftEvent::ProviderPaused {},
            ShiftEvent::ProviderReady {},
            ShiftEvent::ProviderSignedOff {},
        ],
    )
    .await;
    boards.push(quiet);

    let earlier = rebuild(&pool, &store, Earlier::ALL).await;
    let current = rebuild(&pool, &store, Earlier::default()).await;
    // Each change alone: snapshots read back but the current fold, and the reverse.
    let read_back = rebuild(
        &pool,
        &store,
        Earlier {
            snapshots: true,
            ..Earlier::default()
        },
    )
    .await;
    let earlier_fold = rebuild(
        &pool,
        &store,
        Earlier {
            fold: true,
            ..Earlier::default()
        },
    )
    .await;
    assert!(
        earlier.iter().filter(|r| r.starts_with("snapshot")).count() >= 4,
        "the history is long enough to snapshot: {earlier:#?}"
    );
    assert!(earlier.iter().any(|r| r.contains("Zo\u{eb} O'Brien")));
    // A snapshot of a Board before its first appointment (no appointment rows), and
    // ones with appointments.
    assert!(earlier
        .iter()
        .any(|r| r.starts_with("snapshot") && !r.contains("\"appointments\"")));
    assert!(earlier
        .iter()
        .any(|r| r.starts_with("snapshot") && r.contains("\"appointments\"")));
    // The earlier reads of the log alone.
    let shared_read = rebuild(
        &pool,
        &store,
        Earlier {
            read: Some(RebuildRead::Shared),
            ..Earlier::default()
        },
    )
    .await;
    let lean_read = rebuild(
        &pool,
        &store,
        Earlier {
            read: Some(RebuildRead::Lean),
            ..Earlier::default()
        },
    )
    .await;
    // Board snapshots written behind each batch, from its committed rows.
    let behind = rebuild(
        &pool,
        &store,
        Earlier {
            behind: true,
            ..Earlier::default()
        },
    )
    .await;
    // The earlier statement for Board snapshots (merged by `||`), in the batch's
    // transaction and behind it.
    let mut statements = Vec::new();
    for statement in [BoardSnapshotStatement::Aggregated] {
        for behind in [false, true] {
            statements.push(
                rebuild(
                    &pool,
                    &store,
                    Earlier {
                        statement: Some(statement),
                        behind,
                        ..Earlier::default()
                    },
                )
                .await,
            );
        }
    }
    for other in [
        &current,
        &read_back,
        &earlier_fold,
        &shared_read,
        &lean_read,
        &behind,
    ]
    .into_iter()
    .chain(&statements)
    {
        assert_eq!(earlier.len(), other.len());
        for (a, b) in earlier.iter().zip(other) {
            assert_eq!(a, b);
        }
    }

    // And both are what a fresh fold of the Board's streams gives.
    for board in &boards {
        let events = read_board_streams(&pool, *board, ReadLimit::All)
            .await
            .unwrap();
        let mut fresh = BoardDoc::default();
        for e in &events {
            fresh.apply(e).unwrap();
        }
        let doc = read::board(&pool, *board).await.unwrap().unwrap();
        assert_eq!(doc, fresh, "board {board}");
    }
}

#[tokio::test]
async fn board_documents_and_snapshots_are_compressed_with_lz4() {
    let pool = helpers::fresh_database().await;
    let methods: Vec<(String, String)> = sqlx::query_as(
        "select attrelid::regclass::text, attcompression::text from pg_attribute \
          where attname = 'doc' \
            and attrelid in ('board_view'::regclass, 'board_view_appointments'::regclass, \
                             'snapshots'::regclass) \
          order by 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        methods,
        [
            ("board_view".to_string(), "l".to_string()),
            ("board_view_appointments".to_string(), "l".to_string()),
            ("snapshots".to_string(), "l".to_string()),
        ]
    );

    // A document large enough to be compressed is stored with lz4, and reads back.
    let doc = json!({ "notes": "a Board's worth of text ".repeat(400) });
    let board = Uuid::new_v4();
    sqlx::query(
        "insert into snapshots (kind, id, fold_version, version, max_recorded_at, doc) \
         values ('board', $1, 1, 1, now(), $2)",
    )
    .bind(board)
    .bind(&doc)
    .execute(&pool)
    .await
    .unwrap();
    let (method, back): (Option<String>, serde_json::Value) = sqlx::query_as(
        "select pg_column_compression(doc), doc from snapshots where kind = 'board' and id = $1",
    )
    .bind(board)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(method.as_deref(), Some("lz4"));
    assert_eq!(back, doc);
}

/// The rebuild's own reads return exactly the events, in the order and with the
/// cursors, of the live loops' read, every field a fold reads equal, at every batch
/// size (a batch's streams looked up per batch, a stream in several batches).
#[tokio::test]
async fn the_rebuilds_reads_of_the_log_return_what_the_shared_read_returns() {
    use careboard::event_store::log::{read_after_excluding, Cursor};
    use careboard::event_store::RecordedEvent;
    use careboard::projector::rebuild::{read_for_fold, read_for_fold_joined};

    let pool = helpers::fresh_database().await;
    let store = helpers::store(&pool);
    history(&pool, &store).await;
    type Seen = (
        Cursor,
        i64,
        Uuid,
        Uuid,
        String,
        Option<Uuid>,
        i64,
        String,
        String,
    );
    let seen = |rows: Vec<(Cursor, RecordedEvent)>| -> Vec<Seen> {
        rows.into_iter()
            .map(|(c, e)| {
                (
                    c,
                    e.seq,
                    e.id,
                    e.stream_id,
                    e.stream_type,
                    e.board_id,
                    e.version,
                    e.event_type,
                    format!("{} {}", e.data.text(), e.recorded_at),
                )
            })
            .collect()
    };
    let mut total = 0;
    for limit in [1, 3, 7, 10_000] {
        let mut after = Cursor::default();
        loop {
            let shared = seen(
                read_after_excluding(&pool, after, limit, &[])
                    .await
                    .unwrap(),
            );
            let unjoined = read_for_fold(&pool, after, limit, &[]).await.unwrap();
            assert!(unjoined.iter().all(|(_, e)| e.metadata.text() == "{}"));
            let unjoined = seen(unjoined);
            let joined = seen(
                read_for_fold_joined(&pool, after, limit, &[])
                    .await
                    .unwrap(),
            );
            assert_eq!(shared, unjoined, "limit {limit} after {after:?}");
            assert_eq!(shared, joined, "limit {limit} after {after:?}");
            let Some(last) = shared.last() else { break };
            after = last.0;
            total += shared.len();
        }
    }
    let events: i64 = sqlx::query_scalar("select count(*) from events")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(events > 20, "a history of some length: {events}");
    assert_eq!(total as i64, 4 * events);
}

/// Every way of putting a Board snapshot together in the database makes the same
/// document from the same rows, whatever the header holds: the shape it is written
/// with, appointments of the earlier shape inside it (merged with the rows, the rows'
/// winning), a key it is not written with, one of its keys missing, `applied` not an
/// object, no appointment rows, and rows whose appointments were all dead-lettered.
#[tokio::test]
async fn the_board_snapshot_statements_make_the_same_documents() {
    use careboard::event_store::log::Cursor;
    use careboard::snapshots::{self, BoardDue, BoardSnapshotStatement};
    let pool = helpers::fresh_database().await;
    let generation = 1;
    let header = |extra: serde_json::Value| {
        let mut doc = json!({
            "board": {"id": Uuid::new_v4(), "name": "Snapshot \"shapes\" ✓", "status": "OPEN"},
            "shifts": {Uuid::new_v4().to_string(): {"status": "READY", "assigned": [Uuid::new_v4()]}},
            "applied": {Uuid::new_v4().to_string(): 3},
            "version": 7,
            "position": 70,
            "maxRecordedAt": "2022-07-01T00:00:00Z",
            "skipped": 0
        });
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() && k != "applied" {
                doc.as_object_mut().unwrap().remove(k);
            } else {
                doc[k] = v.clone();
            }
        }
        doc
    };
    let appointment =
        |id: Uuid, note: &str| json!({"id": id, "patientName": note, "status": "WAITING"});
    let (a1, a2, a3) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    // (header, rows: id, applied, appointment)
    type Row = (Uuid, i64, Option<serde_json::Value>);
    let cases: Vec<(serde_json::Value, Vec<Row>)> = vec![
        (
            header(json!({})),
            vec![
                (a1, 2, Some(appointment(a1, "Zoë \\ O'Brien"))),
                (a2, 1, Some(appointment(a2, "b"))),
            ],
        ),
        (header(json!({})), vec![]),
        (
            header(
                json!({"appointments": {a1.to_string(): appointment(a1, "old"), a3.to_string(): appointment(a3, "kept")}}),
            ),
            vec![
                (a1, 4, Some(appointment(a1, "new"))),
                (a2, 1, Some(appointment(a2, "b"))),
            ],
        ),
        (
            header(json!({"appointments": {a3.to_string(): appointment(a3, "kept")}})),
            vec![],
        ),
        (
            header(json!({"extra": [1, "two"]})),
            vec![(a1, 2, Some(appointment(a1, "a")))],
        ),
        (
            header(json!({"skipped": null})),
            vec![(a1, 2, Some(appointment(a1, "a")))],
        ),
        (
            header(json!({"applied": null})),
            vec![(a2, 2, Some(appointment(a2, "a")))],
        ),
        (header(json!({})), vec![(a1, 3, None), (a2, 1, None)]),
    ];
    let mut due = Vec::new();
    for (n, (doc, rows)) in cases.iter().enumerate() {
        let id = Uuid::new_v4();
        sqlx::query(
            "insert into board_view (generation, id, version, position, doc) values ($1, $2, 7, 70, $3)",
        )
        .bind(generation)
        .bind(id)
        .bind(doc)
        .execute(&pool)
        .await
        .unwrap();
        for (appointment, applied, doc) in rows {
            sqlx::query(
                "insert into board_view_appointments (generation, board_id, id, applied, doc, board_version) \
                 values ($1, $2, $3, $4, $5, 7)",
            )
            .bind(generation)
            .bind(id)
            .bind(appointment)
            .bind(applied)
            .bind(doc)
            .execute(&pool)
            .await
            .unwrap();
        }
        due.push(BoardDue {
            id,
            version: 8 + n as i64,
            at: Utc::now(),
        });
    }
    let statements = [
        BoardSnapshotStatement::Aggregated,
        BoardSnapshotStatement::Built,
    ];
    let mut made = Vec::new();
    for (fold_version, statement) in (1..).zip(statements) {
        snapshots::select_board_snapshot_statement(statement);
        let mut conn = pool.acquire().await.unwrap();
        let written = snapshots::write_boards(
            &mut conn,
            fold_version,
            generation,
            &due,
            Cursor::from_text("5", 1).unwrap(),
        )
        .await;
        snapshots::select_board_snapshot_statement(BoardSnapshotStatement::Built);
        written.unwrap();
        let docs: Vec<String> = sqlx::query_scalar(
            "select format('%s %s %s', id, version, doc::text) from snapshots \
              where kind = 'board' and fold_version = $1 order by id, version",
        )
        .bind(fold_version)
        .fetch_all(&pool)
        .await
        .unwrap();
        assert_eq!(docs.len(), cases.len(), "{statement:?}");
        made.push((statement, docs));
    }
    let (_, aggregated) = &made[0];
    // The cases do what they are meant to: the rows' appointment wins over the
    // header's, the header's other one and the extra key are kept.
    assert!(aggregated
        .iter()
        .any(|d| d.contains("\"new\"") && d.contains("\"kept\"") && !d.contains("\"old\"")));
    assert!(aggregated
        .iter()
        .any(|d| d.contains("\"extra\": [1, \"two\"]")));
    for (statement, docs) in &made[1..] {
        for (a, b) in aggregated.iter().zip(docs) {
            assert_eq!(a, b, "{statement:?}");
        }
    }
}
