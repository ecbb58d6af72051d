//! The event store against real PostgreSQL: concurrency, atomicity, idempotency, reads.

use crate::helpers;
use std::sync::Arc;

use careboard::commands::{self, CommandOptions, OpenBoard};
use careboard::domain::{Aggregate, DomainError, DomainEvent, EventContext, FoldError, StreamType};
use careboard::error::AppError;
use careboard::event_store::append::{append, StreamWrite};
use careboard::event_store::unit_of_work::CommandMeta;
use careboard::event_store::{read_stream, CommandPath, EventStore, ReadLimit};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

/// A minimal aggregate whose every command succeeds, so concurrency outcomes depend on
/// the store alone.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
enum CounterEvent {
    Incremented { seen: i64 },
}

impl DomainEvent for CounterEvent {
    fn event_type(&self) -> &'static str {
        "Incremented"
    }
}

#[derive(Debug, Clone)]
struct Counter {
    value: i64,
    version: i64,
}

impl Aggregate for Counter {
    const STREAM_TYPE: StreamType = StreamType::Board;
    type Event = CounterEvent;
    type Command = ();

    fn decide(state: Option<&Self>, _: ()) -> Result<Vec<CounterEvent>, DomainError> {
        Ok(vec![CounterEvent::Incremented {
            seen: state.map(|s| s.value).unwrap_or(0),
        }])
    }

    fn apply(state: Option<Self>, _: &CounterEvent, ctx: &EventContext) -> Result<Self, FoldError> {
        Ok(Counter {
            value: state.map(|s| s.value).unwrap_or(0) + 1,
            version: ctx.version,
        })
    }

    fn version(&self) -> i64 {
        self.version
    }
}

fn meta(expected_version: Option<i64>) -> CommandMeta {
    let mut meta = CommandMeta::new("test");
    meta.expected_version = expected_version;
    meta
}

/// Creates a counter stream with one event; returns its id.
async fn new_counter(store: &EventStore) -> Uuid {
    let id = Uuid::new_v4();
    increment(store, id, None).await.expect("create counter");
    id
}

/// `n` increments of one counter at the same time, each its own task.
async fn increments_at_once(
    store: &EventStore,
    id: Uuid,
    expected: Option<i64>,
    n: usize,
) -> Vec<Result<i64, AppError>> {
    let tasks = (0..n).map(|_| {
        let store = store.clone();
        tokio::spawn(async move { increment(&store, id, expected).await })
    });
    futures::future::join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect()
}

/// One command on a counter: load (locked in exclusive mode), decide, append.
async fn increment(store: &EventStore, id: Uuid, expected: Option<i64>) -> Result<i64, AppError> {
    let mut uow = store.begin(meta(expected), &json!({})).await?;
    let state = uow.target::<Counter>(id).await?;
    let seen = state.as_ref().map(|s| s.value).unwrap_or(0);
    uow.stage::<Counter>(
        id,
        None,
        state.as_ref(),
        &[CounterEvent::Incremented { seen }],
    );
    uow.commit().await?;
    Ok(seen)
}

async fn versions_of(pool: &PgPool, id: Uuid) -> Vec<i64> {
    sqlx::query_scalar("select version from events where stream_id = $1 order by version")
        .bind(id)
        .fetch_all(pool)
        .await
        .unwrap()
}

/// The version the `streams` row records (what optimistic checks compare with).
async fn stream_version(pool: &PgPool, id: Uuid) -> i64 {
    sqlx::query_scalar("select version from streams where id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn concurrent_appends_with_the_same_expected_version_let_exactly_one_through() {
    let pool = helpers::fresh_database().await;
    let store = helpers::store(&pool);
    let id = new_counter(&store).await;
    // All 32 transactions are open before any appends, so they race in the SQL itself.
    let barrier = Arc::new(tokio::sync::Barrier::new(32));
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let pool = pool.clone();
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            let mut tx = pool.begin().await.unwrap();
            barrier.wait().await;
            let write = StreamWrite::new(
                StreamType::Board,
                id,
                None,
                1,
                &[CounterEvent::Incremented { seen: 1 }],
            );
            let result = append(&mut tx, &[write], &json!({})).await;
            if result.is_ok() {
                tx.commit().await.unwrap();
            }
            result.map(|_| ())
        }));
    }
    let mut ok = 0;
    let mut conflicts = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(()) => ok += 1,
            Err(AppError::Conflict(_)) => conflicts += 1,
            Err(other) => panic!("unexpected error: {}", other.describe()),
        }
    }
    assert_eq!((ok, conflicts), (1, 31));
    assert_eq!(versions_of(&pool, id).await, vec![1, 2]);
    assert_eq!(stream_version(&pool, id).await, 2);
}

#[tokio::test]
async fn optimistic_commands_with_a_stale_version_get_conflict() {
    let pool = helpers::fresh_database().await;
    let store = helpers::store(&pool);
    let id = new_counter(&store).await;
    let results = increments_at_once(&store, id, Some(1), 32).await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let conflicts = results
        .iter()
        .filter(|r| matches!(r, Err(AppError::Conflict(_))))
        .count();
    assert_eq!((ok, conflicts), (1, 31));
    assert_eq!(versions_of(&pool, id).await, vec![1, 2]);
}

#[tokio::test]
async fn exclusive_mode_serialises_concurrent_commands_and_loses_none() {
    let pool = helpers::fresh_database().await;
    let store = helpers::store(&pool);
    let id = new_counter(&store).await;
    let mut seen: Vec<i64> = increments_at_once(&store, id, None, 32)
        .await
        .into_iter()
        .map(|r| r.unwrap_or_else(|e| panic!("{}", e.describe())))
        .collect();
    seen.sort();
    // Each command saw the state left by the one before it: strictly serialised.
    assert_eq!(seen, (1..=32).collect::<Vec<_>>());
    assert_eq!(versions_of(&pool, id).await, (1..=33).collect::<Vec<_>>());
    let state = store
        .load::<Counter>(id, ReadLimit::All)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((state.value, state.version), (33, 33));
}

#[tokio::test]
async fn a_failure_on_the_second_stream_leaves_the_first_unchanged() {
    let pool = helpers::fresh_database().await;
    let store = helpers::store(&pool);
    let first = new_counter(&store).await;
    let second = new_counter(&store).await;
    let before = versions_of(&pool, first).await;

    for stale_second in [0, 5] {
        let mut tx = pool.begin().await.unwrap();
        let writes = [
            StreamWrite::new(
                StreamType::Board,
                first,
                None,
                1,
                &[CounterEvent::Incremented { seen: 1 }],
            ),
            StreamWrite::new(
                StreamType::Board,
                second,
                None,
                stale_second,
                &[CounterEvent::Incremented { seen: 1 }],
            ),
        ];
        let result = append(&mut tx, &writes, &json!({})).await;
        let expected = if stale_second == 0 {
            format!("board {second} already exists")
        } else {
            format!("board {second} was changed concurrently (expected version 5)")
        };
        match result {
            Err(AppError::Conflict(message)) => assert!(
                message.starts_with(&expected),
                "{message:?} should name the stream: {expected:?}"
            ),
            other => panic!("stale second stream must conflict, got {other:?}"),
        }
        drop(tx); // rolled back
    }
    assert_eq!(versions_of(&pool, first).await, before);
    assert_eq!(stream_version(&pool, first).await, 1);
}

#[tokio::test]
async fn exclusive_mode_gives_up_after_the_lock_timeout_with_a_conflict_and_appends_nothing() {
    let pool = helpers::fresh_database().await;
    let store = EventStore::new(pool.clone(), std::time::Duration::from_millis(300));
    let id = new_counter(&store).await;
    // Another transaction holds the stream's row.
    let mut holder = pool.begin().await.unwrap();
    sqlx::query("select 1 from streams where id = $1 for update")
        .bind(id)
        .execute(&mut *holder)
        .await
        .unwrap();
    let started = std::time::Instant::now();
    match increment(&store, id, None).await {
        Err(AppError::Conflict(message)) => assert!(message.contains("timed out"), "{message}"),
        other => panic!("a held stream must time out as a conflict, got {other:?}"),
    }
    let waited = started.elapsed();
    assert!(
        waited >= std::time::Duration::from_millis(250),
        "gave up before the lock timeout: {waited:?}"
    );
    assert_eq!(versions_of(&pool, id).await, vec![1]);
    // Once the holder is done, the same command goes through.
    holder.rollback().await.unwrap();
    increment(&store, id, None).await.unwrap();
    assert_eq!(versions_of(&pool, id).await, vec![1, 2]);
}

fn open_input(command_id: &str, region: &str) -> OpenBoard {
    OpenBoard {
        name: "Cardiology".into(),
        specialty: "cardiology".into(),
        region: region.into(),
        date: "2022-07-18".parse().unwrap(),
        options: CommandOptions {
            expected_version: None,
            command_id: Some(command_id.into()),
        },
    }
}

#[tokio::test]
async fn a_repeated_command_id_appends_nothing_and_returns_the_first_result() {
    let pool = helpers::fresh_database().await;
    let store = helpers::store(&pool);
    // Sent 16 times at once, as a retrying client might.
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            commands::open_board(
                &store,
                CommandMeta::new("openBoard"),
                open_input("cmd-1", "TX"),
            )
            .await
        }));
    }
    let mut results = Vec::new();
    for task in tasks {
        results.push(
            task.await
                .unwrap()
                .unwrap_or_else(|e| panic!("{}", e.describe())),
        );
    }
    let first = &results[0];
    for r in &results {
        assert_eq!(r.entity, first.entity);
        assert_eq!((r.version, r.position), (first.version, first.position));
    }
    let events: i64 = sqlx::query_scalar("select count(*) from events")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(events, 1);

    // Later repeats too; a different input under the same id is refused.
    let again = commands::open_board(
        &store,
        CommandMeta::new("openBoard"),
        open_input("cmd-1", "TX"),
    )
    .await
    .unwrap();
    assert_eq!(again.entity, first.entity);
    let other = commands::open_board(
        &store,
        CommandMeta::new("openBoard"),
        open_input("cmd-1", "CA"),
    )
    .await;
    assert!(matches!(
        other,
        Err(AppError::Domain(
            careboard::domain::DomainError::Validation(_)
        ))
    ));
}

#[tokio::test]
async fn a_stream_reads_in_full_up_to_a_version_or_up_to_a_time() {
    let pool = helpers::fresh_database().await;
    let store = helpers::store(&pool);
    let id = new_counter(&store).await;
    increment(&store, id, None).await.unwrap();
    let middle = read_stream(&pool, id, ReadLimit::All).await.unwrap()[1].recorded_at;
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    increment(&store, id, None).await.unwrap();

    let all = read_stream(&pool, id, ReadLimit::All).await.unwrap();
    assert_eq!(
        all.iter().map(|e| e.version).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert!(all.windows(2).all(|w| w[0].seq < w[1].seq));
    let upto_version = store
        .load::<Counter>(id, ReadLimit::Version(2))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(upto_version.value, 2);
    let upto_time = store
        .load::<Counter>(id, ReadLimit::Time(middle))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(upto_time.version, 2);
    let before_anything = store
        .load::<Counter>(
            id,
            ReadLimit::Time(all[0].recorded_at - chrono::Duration::seconds(1)),
        )
        .await
        .unwrap();
    assert!(before_anything.is_none());
    // Every event carries the transaction that wrote it, for readers that must not skip.
    let tx_ids: i64 =
        sqlx::query_scalar("select count(distinct tx) from events where stream_id = $1")
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(tx_ids, 3);
}

#[tokio::test]
async fn a_request_that_waited_for_the_board_to_close_sees_it_closed_and_appends_nothing() {
    let pool = helpers::fresh_database().await;
    let store = helpers::store(&pool);
    let board = helpers::store::open_board(&store, "Closing").await;
    // A close in flight: the Board's stream row is locked until it commits.
    let mut closing = pool.begin().await.unwrap();
    let close = StreamWrite::new(
        StreamType::Board,
        board,
        Some(board),
        1,
        &[careboard::domain::BoardEvent::BoardClosed {}],
    );
    append(&mut closing, &[close], &json!({"actor": "test"}))
        .await
        .unwrap_or_else(|e| panic!("{}", e.describe()));
    // The request's read of the Board starts now, before the close commits, and waits
    // for the Board's row.
    let request = tokio::spawn({
        let store = store.clone();
        async move {
            commands::request_appointment(
                &store,
                CommandMeta::new("requestAppointment"),
                helpers::store::request_command(board, "Late Arrival"),
            )
            .await
        }
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!request.is_finished(), "the request waits for the close");
    closing.commit().await.unwrap();
    let Err(refused) = request.await.unwrap() else {
        panic!("a request decided after the close is refused");
    };
    assert!(
        refused.describe().contains("board is CLOSED"),
        "{}",
        refused.describe()
    );
    let appointments: i64 = sqlx::query_scalar(
        "select count(*) from streams where board_id = $1 and type = 'appointment'",
    )
    .bind(board)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(appointments, 0);
}

/// The appointment a request decides on `board` as read: what the unit of work stages.
fn requested_on(
    board: Option<careboard::domain::Board>,
) -> Vec<careboard::domain::AppointmentEvent> {
    careboard::domain::appointment::decide(
        None,
        careboard::domain::appointment::AppointmentCommand::Request {
            board,
            patient_id: None,
            patient_name: "Guarded Patient".into(),
            specialty: "pediatrics".into(),
            region: "TX".into(),
            reason: "fever".into(),
        },
    )
    .unwrap_or_else(|e| panic!("{e:?}"))
}

async fn appointments_on(pool: &PgPool, board: Uuid) -> i64 {
    sqlx::query_scalar("select count(*) from streams where board_id = $1 and type = 'appointment'")
        .bind(board)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn an_append_decided_on_a_board_that_closed_after_the_read_writes_nothing() {
    append_on_a_board_that_closed_after_the_read(CommandPath::Planned).await;
}

#[tokio::test]
async fn an_append_decided_on_a_board_that_closed_after_the_read_writes_nothing_on_the_general_statement(
) {
    append_on_a_board_that_closed_after_the_read(CommandPath::General).await;
}

async fn append_on_a_board_that_closed_after_the_read(path: CommandPath) {
    use careboard::domain::{Appointment, AppointmentId, Board};
    use careboard::event_store::unit_of_work::{Guard, GuardMoved};
    let pool = helpers::fresh_database().await;
    let store = helpers::store(&pool).with_command_path(path);
    let board = helpers::store::open_board(&store, "Guarded").await;
    let mut uow = store
        .begin(CommandMeta::new("requestAppointment"), &json!(null))
        .await
        .unwrap_or_else(|e| panic!("{}", e.describe()));
    // Read without the Board's lock: it is OPEN now.
    let open = uow
        .read::<Board>(board, Guard::Share)
        .await
        .unwrap_or_else(|e| panic!("{}", e.describe()));
    let events = requested_on(open);
    // The Board closes between the read and the append (nothing holds it).
    commands::close_board(
        &store,
        CommandMeta::new("closeBoard"),
        careboard::commands::CloseBoard {
            board_id: board.into(),
            options: CommandOptions::default(),
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{}", e.describe()));
    uow.stage::<Appointment>(
        AppointmentId::new_random(),
        Some(board.into()),
        None,
        &events,
    );
    let Err(moved) = uow.commit().await else {
        panic!("an append decided on the open Board went through after it closed");
    };
    assert!(GuardMoved::is(&moved), "{}", moved.describe());
    // Nothing at all: no stream row, no event.
    assert_eq!(appointments_on(&pool, board).await, 0);
    let events: i64 = sqlx::query_scalar("select count(*) from events")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(events, 2, "the Board's own two events only");
}

/// On the kept path a request on an open Board this process has read before decides on
/// the Board kept in memory, without reading it; the append's guard checks the kept
/// version. The Board closes between the decision and the append: nothing is written,
/// and the kept Board is forgotten. Fails if a kept Board's version is not a guard.
#[tokio::test]
async fn an_append_decided_on_a_kept_board_that_closed_since_writes_nothing() {
    use careboard::domain::{Appointment, AppointmentId};
    use careboard::event_store::unit_of_work::GuardMoved;
    let pool = helpers::fresh_database().await;
    let store = helpers::store(&pool);
    assert_eq!(store.command_path(), CommandPath::Kept, "the default path");
    let board = helpers::store::open_board(&store, "Kept").await;
    commands::request_appointment(
        &store,
        CommandMeta::new("requestAppointment"),
        helpers::store::request_command(board, "First Patient"),
    )
    .await
    .unwrap_or_else(|e| panic!("{}", e.describe()));
    let kept = store
        .kept_boards()
        .get(board)
        .expect("the request kept the Board");
    assert_eq!(kept.version, 1);
    let mut uow = store
        .begin(CommandMeta::new("requestAppointment"), &json!(null))
        .await
        .unwrap_or_else(|e| panic!("{}", e.describe()));
    // From memory: the Board as kept, OPEN at version 1.
    let open = uow
        .read_board(board.into())
        .await
        .unwrap_or_else(|e| panic!("{}", e.describe()));
    assert_eq!(open.as_ref(), Some(&kept));
    let events = requested_on(open);
    // The Board closes between the decision and the append, past this store (as
    // another server process would close it): this store's kept Board is now stale.
    close_elsewhere(&pool, board).await;
    assert!(
        store.kept_boards().get(board).is_some(),
        "not seen here yet"
    );
    uow.stage::<Appointment>(
        AppointmentId::new_random(),
        Some(board.into()),
        None,
        &events,
    );
    let Err(moved) = uow.commit().await else {
        panic!("an append decided on the kept open Board went through after it closed");
    };
    assert!(GuardMoved::is(&moved), "{}", moved.describe());
    assert_eq!(
        appointments_on(&pool, board).await,
        1,
        "the first request only"
    );
    assert!(
        store.kept_boards().get(board).is_none(),
        "a kept Board whose guard failed is forgotten"
    );
}

/// The whole command on the kept path: a request on a Board kept open but closed by
/// another process since is decided again on a locked read, refused, and writes
/// nothing; the closed Board is not kept.
#[tokio::test]
async fn a_request_on_a_kept_board_closed_elsewhere_is_refused_and_writes_nothing() {
    let pool = helpers::fresh_database().await;
    let store = helpers::store(&pool);
    let board = helpers::store::open_board(&store, "Kept").await;
    commands::request_appointment(
        &store,
        CommandMeta::new("requestAppointment"),
        helpers::store::request_command(board, "First Patient"),
    )
    .await
    .unwrap_or_else(|e| panic!("{}", e.describe()));
    close_elsewhere(&pool, board).await;
    let Err(refused) = commands::request_appointment(
        &store,
        CommandMeta::new("requestAppointment"),
        helpers::store::request_command(board, "Second Patient"),
    )
    .await
    else {
        panic!("a request on a Board closed since it was kept went through");
    };
    assert!(
        refused.describe().contains("board is CLOSED"),
        "{}",
        refused.describe()
    );
    assert_eq!(appointments_on(&pool, board).await, 1);
    assert!(store.kept_boards().get(board).is_none());
}

/// Closes `board` (at version 1) past any store: as another server process would.
async fn close_elsewhere(pool: &PgPool, board: Uuid) {
    let mut closing = pool.begin().await.unwrap();
    let close = StreamWrite::new(
        StreamType::Board,
        board,
        Some(board),
        1,
        &[careboard::domain::BoardEvent::BoardClosed {}],
    );
    append(&mut closing, &[close], &json!({"actor": "test"}))
        .await
        .unwrap_or_else(|e| panic!("{}", e.describe()));
    closing.commit().await.unwrap();
}

#[tokio::test]
async fn requests_racing_a_close_never_leave_an_appointment_on_a_closed_board() {
    let pool = helpers::fresh_database().await;
    let store = helpers::store(&pool);
    let mut closed_rounds = 0;
    for round in 0..12 {
        let board = helpers::store::open_board(&store, &format!("Race {round}")).await;
        let requests: Vec<_> = (0..8)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    commands::request_appointment(
                        &store,
                        CommandMeta::new("requestAppointment"),
                        helpers::store::request_command(board, &format!("Patient {i}")),
                    )
                    .await
                    .is_ok()
                })
            })
            .collect();
        let close = tokio::spawn({
            let store = store.clone();
            async move {
                commands::close_board(
                    &store,
                    CommandMeta::new("closeBoard"),
                    careboard::commands::CloseBoard {
                        board_id: board.into(),
                        options: CommandOptions::default(),
                    },
                )
                .await
                .is_ok()
            }
        });
        let granted = futures::future::join_all(requests)
            .await
            .into_iter()
            .filter(|r| *r.as_ref().unwrap())
            .count() as i64;
        let closed = close.await.unwrap();
        let stored = appointments_on(&pool, board).await;
        assert_eq!(
            stored, granted,
            "every answered request, and only those, is stored"
        );
        if closed {
            closed_rounds += 1;
            assert_eq!(
                stored, 0,
                "round {round}: the Board closed with requests on it"
            );
        }
    }
    eprintln!("{closed_rounds} of 12 closes won the race");
}

#[tokio::test]
async fn a_command_stored_with_its_sender_in_the_fingerprint_still_replays() {
    use careboard::identity::{Actor, Principal, Scope};
    let pool = helpers::fresh_database().await;
    let store = helpers::store(&pool);
    let coordinator = || {
        let mut meta = CommandMeta::new("openBoard");
        meta.actor = Actor::from(Principal::new(
            "dev:ana-ruiz",
            "Ana Ruiz",
            Scope::Coordinator {
                regions: None,
                specialties: None,
            },
        ));
        meta
    };
    let first = commands::open_board(&store, coordinator(), open_input("legacy-1", "TX"))
        .await
        .unwrap_or_else(|e| panic!("{}", e.describe()));
    // As fingerprints were stored while the key was the commandId alone: the verified
    // sender written into the input as `@sender`.
    let rewritten = sqlx::query(
        "update processed_commands set input = input || jsonb_build_object('@sender', sender) \
          where command_id = 'legacy-1'",
    )
    .execute(&pool)
    .await
    .unwrap();
    assert_eq!(rewritten.rows_affected(), 1);
    let again = commands::open_board(&store, coordinator(), open_input("legacy-1", "TX"))
        .await
        .unwrap_or_else(|e| panic!("{}", e.describe()));
    assert_eq!(
        (again.entity, again.version, again.position),
        (first.entity, first.version, first.position)
    );
    let other = commands::open_board(&store, coordinator(), open_input("legacy-1", "CA")).await;
    assert!(
        matches!(
            other,
            Err(AppError::Domain(
                careboard::domain::DomainError::Validation(_)
            ))
        ),
        "a different command under the id is still refused"
    );
    let events: i64 = sqlx::query_scalar("select count(*) from events")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(events, 1);
}

/// The common append (one new stream on a guarded Board) is planned once per
/// connection and its plan reused: the general statement was planned again for every
/// command, which cost more than running it.
#[tokio::test]
async fn a_request_reuses_the_plan_of_its_append() {
    let (_, url) = helpers::fresh_database_with_url().await;
    // One connection, so the statements below and their plans are all on it.
    let pool = careboard::postgres::connect(&url, 1).await.unwrap();
    let store = helpers::store(&pool);
    let board = helpers::store::open_board(&store, "Planned").await;
    for i in 0..12 {
        commands::request_appointment(
            &store,
            CommandMeta::new("requestAppointment"),
            helpers::store::request_command(board, &format!("Patient {i}")),
        )
        .await
        .unwrap_or_else(|e| panic!("{}", e.describe()));
    }
    let (generic, custom): (i64, i64) = sqlx::query_as(
        "select generic_plans, custom_plans from pg_prepared_statements \
          where statement like '%for share nowait%' and statement like '%created c%'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(
        generic >= 6 && custom <= 6,
        "the request's append was planned per command: {generic} generic, {custom} custom plans"
    );
}

/// Requests on one open Board: on the kept path only the first reads the Board (the
/// rest decide on it from memory, one round trip each: their append); on the planned
/// path every request reads it, with a plan made once, not per command.
#[tokio::test]
async fn requests_on_a_kept_board_read_it_once_and_a_read_reuses_its_plan() {
    let (_, url) = helpers::fresh_database_with_url().await;
    for (path, reads) in [(CommandPath::Kept, 1), (CommandPath::Planned, 12)] {
        // One connection, so the statements below and their plans are all on it.
        let pool = careboard::postgres::connect(&url, 1).await.unwrap();
        let store = helpers::store(&pool).with_command_path(path);
        let board = helpers::store::open_board(&store, "Read once").await;
        for i in 0..12 {
            commands::request_appointment(
                &store,
                CommandMeta::new("requestAppointment"),
                helpers::store::request_command(board, &format!("Patient {i}")),
            )
            .await
            .unwrap_or_else(|e| panic!("{}", e.describe()));
        }
        // Every execution of a prepared statement counts one plan, generic or custom.
        let (generic, custom): (i64, i64) = sqlx::query_as(
            "select generic_plans, custom_plans from pg_prepared_statements \
              where statement like '%e.stream_id = $1 and e.version > $2%' \
                and statement not like '%$3%'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(generic + custom, reads, "{path:?}: Board reads");
        if path == CommandPath::Planned {
            assert!(
                generic >= 6 && custom <= 6,
                "the read was planned per command: {generic} generic, {custom} custom plans"
            );
        }
        pool.close().await;
    }
}

/// The pool no longer pings every connection it hands out (a round trip per command),
/// but one that sat idle long enough to have died is pinged and replaced: a server
/// that dropped it does not fail the next request.
#[tokio::test]
async fn a_connection_that_died_while_idle_is_replaced_before_use() {
    let (admin, url) = helpers::fresh_database_with_url().await;
    let pool = careboard::postgres::connect(&url, 1).await.unwrap();
    let pid: i32 = sqlx::query_scalar("select pg_backend_pid()")
        .fetch_one(&pool)
        .await
        .unwrap();
    let ended: bool = sqlx::query_scalar("select pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(&admin)
        .await
        .unwrap();
    assert!(ended);
    tokio::time::sleep(
        careboard::postgres::PING_AFTER_IDLE + std::time::Duration::from_millis(200),
    )
    .await;
    let again: i32 = sqlx::query_scalar("select pg_backend_pid()")
        .fetch_one(&pool)
        .await
        .unwrap_or_else(|e| panic!("the dead connection was handed out: {e}"));
    assert_ne!(again, pid);
}

/// The autocommit append (a create on a Board read without a lock, no `commandId`)
/// commits on its own, with no transaction to set a lock timeout: it bounds its waits
/// itself. Another session creating the same stream (a provider's shift on a Board has
/// one id) holds the key; the command answers CONFLICT after the bound, writes
/// nothing, and goes through once the holder is gone. On both command paths.
#[tokio::test]
async fn an_autocommit_append_waiting_on_a_held_stream_key_gives_up_after_the_lock_timeout() {
    let pool = helpers::fresh_database().await;
    for path in [CommandPath::General, CommandPath::Planned] {
        let store = EventStore::new(pool.clone(), std::time::Duration::from_millis(300))
            .with_command_path(path);
        let board = commands::open_board(
            &store,
            CommandMeta::new("openBoard"),
            OpenBoard {
                options: CommandOptions::default(),
                ..open_input("unused", "TX")
            },
        )
        .await
        .unwrap()
        .entity
        .id;
        let provider = commands::register_provider(
            &store,
            CommandMeta::new("registerProvider"),
            commands::RegisterProvider {
                name: "Dr. Lock".into(),
                specialties: vec!["cardiology".into()],
                licensed_regions: vec!["TX".into()],
                options: CommandOptions::default(),
            },
        )
        .await
        .unwrap()
        .entity
        .id;
        let shift = Uuid::from(careboard::domain::ShiftId::of(board, provider));
        let join = || {
            commands::join_board(
                &store,
                CommandMeta::new("joinBoard"),
                commands::JoinBoard {
                    board_id: board,
                    provider_id: provider,
                    // Optimistic: the shift is read without a lock, and the create is
                    // the one autocommit statement.
                    options: CommandOptions {
                        expected_version: Some(0),
                        command_id: None,
                    },
                },
            )
        };
        let mut holder = pool.begin().await.unwrap();
        sqlx::query(
            "insert into streams (id, type, board_id, version) values ($1, 'shift', $2, 0)",
        )
        .bind(shift)
        .bind(Uuid::from(board))
        .execute(&mut *holder)
        .await
        .unwrap();
        let started = std::time::Instant::now();
        let outcome = tokio::time::timeout(std::time::Duration::from_secs(20), join())
            .await
            .unwrap_or_else(|_| panic!("{path:?}: the append waited without bound"));
        match outcome {
            Err(AppError::Conflict(message)) => {
                assert!(message.contains("timed out"), "{path:?}: {message}")
            }
            other => panic!("{path:?}: a held key must time out as a conflict, got {other:?}"),
        }
        let waited = started.elapsed();
        assert!(
            waited >= std::time::Duration::from_millis(250),
            "{path:?}: gave up before the lock timeout: {waited:?}"
        );
        let written: i64 = sqlx::query_scalar("select count(*) from events where stream_id = $1")
            .bind(shift)
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(written, 0, "{path:?}");
        holder.rollback().await.unwrap();
        let joined = join().await.unwrap();
        assert_eq!(joined.version, 1, "{path:?}");
        assert_eq!(versions_of(&pool, shift).await, vec![1], "{path:?}");
    }
}
