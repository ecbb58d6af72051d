//! The projector against real PostgreSQL: no skips, no doubles, crash atomicity,
//! failover, poison events, rebuild under load.

use crate::helpers;
use crate::helpers::store::{open_board, request_appointment};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use careboard::daemon::{Daemon, DaemonConfig, DaemonHandle};
use careboard::domain::{AppointmentEvent, AppointmentStatus, StreamType};
use careboard::event_store::append::{append, StreamWrite};
use careboard::event_store::log::Cursor;
use careboard::event_store::{read_board_streams, EventStore, ReadLimit};
use careboard::faults::{CrashPoint, Faults};
use careboard::leader::{
    advance_checkpoint, advance_checkpoint_alone, advance_checkpoint_notifying, Checkpoint, Fence,
    Lease, EPOCH_HOLD, LEADER_LOCK_KEY,
};
use careboard::metrics::Metrics;
use careboard::projections::{read, BoardDoc, Doc, Projection};
use careboard::projector::state;
use rand::Rng;
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

/// A projector snapshotting each Board every `every` events, with `faults`.
fn start_snapshotting(
    pool: &PgPool,
    store: &EventStore,
    every: i64,
    faults: Faults,
) -> DaemonHandle {
    start_with_faults(
        pool,
        store,
        DaemonConfig {
            snapshot_every: every,
            ..config()
        },
        faults,
    )
}

fn start_projector(pool: &PgPool, store: &EventStore, config: DaemonConfig) -> DaemonHandle {
    start_with_faults(pool, store, config, Faults::default())
}

fn start_with_faults(
    pool: &PgPool,
    store: &EventStore,
    config: DaemonConfig,
    faults: Faults,
) -> DaemonHandle {
    Daemon::new(
        pool.clone(),
        store.appended_signal(),
        Default::default(),
        config,
        Arc::new(Metrics::new()),
    )
    .with_faults(faults)
    .spawn()
}

fn config() -> DaemonConfig {
    helpers::fast_projector()
}

fn requested(board: Uuid, patient: &str) -> AppointmentEvent {
    AppointmentEvent::AppointmentRequested {
        board_id: board.into(),
        patient_id: None,
        patient_name: patient.into(),
        specialty: "pediatrics".into(),
        region: "TX".into(),
        reason: "torture".into(),
    }
}

/// Appends in a caller-held transaction (so tests can hold it open or roll it back).
async fn append_in(
    conn: &mut sqlx::PgConnection,
    stream: Uuid,
    board: Uuid,
    base: i64,
    event: AppointmentEvent,
) -> i64 {
    let write = StreamWrite::new(StreamType::Appointment, stream, Some(board), base, &[event]);
    append(conn, &[write], &json!({"actor": "test"}))
        .await
        .unwrap_or_else(|e| panic!("{}", e.describe()))
        .position
}

async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `n` Boards named `prefix 0`, `prefix 1`, ...
async fn open_boards(store: &EventStore, prefix: &str, n: usize) -> Vec<Uuid> {
    let mut boards = Vec::new();
    for i in 0..n {
        boards.push(open_board(store, &format!("{prefix} {i}")).await);
    }
    boards
}

async fn board_doc(pool: &PgPool, board: Uuid) -> Option<BoardDoc> {
    read::board(pool, board).await.unwrap()
}

/// Waits (up to `timeout`) until the Board's document holds `appointment`.
async fn wait_for_appointment(
    what: &str,
    timeout: Duration,
    pool: &PgPool,
    board: Uuid,
    appointment: Uuid,
) {
    wait_for(what, timeout, || async {
        board_doc(pool, board)
            .await
            .is_some_and(|d| d.appointments.contains_key(&appointment))
    })
    .await;
}

/// The Board's document agrees with a count over the event log.
async fn assert_doc_agrees(pool: &PgPool, board: Uuid) {
    assert_eq!(
        observed(&board_doc(pool, board).await.unwrap()),
        expected(pool, board).await
    );
}

/// Waits until the live generation of every projection has applied every committed event.
async fn caught_up(pool: &PgPool) {
    wait_for(
        "the projector to catch up",
        Duration::from_secs(30),
        || async {
            let statuses = state::status(pool).await.unwrap();
            statuses.len() >= Projection::ALL.len() && statuses.iter().all(|s| s.lag_events == 0)
        },
    )
    .await;
}

/// What the events table says a Board document must hold, counted with SQL alone.
#[derive(Debug, PartialEq)]
struct Expected {
    version: i64,
    position: i64,
    waiting: i64,
    cancelled: i64,
}

async fn expected(pool: &PgPool, board: Uuid) -> Expected {
    let (version, position): (i64, i64) = sqlx::query_as(
        "select count(*), coalesce(max(e.seq), 0) from events e join streams s on s.id = e.stream_id \
          where s.board_id = $1",
    )
    .bind(board)
    .fetch_one(pool)
    .await
    .unwrap();
    let (waiting, cancelled): (i64, i64) = sqlx::query_as(
        "select count(*) filter (where s.version = 1), \
                count(*) filter (where exists (select 1 from events c where c.stream_id = s.id and c.type = 'AppointmentCancelled')) \
           from streams s where s.board_id = $1 and s.type = 'appointment'",
    )
    .bind(board)
    .fetch_one(pool)
    .await
    .unwrap();
    Expected {
        version,
        position,
        waiting,
        cancelled,
    }
}

fn observed(doc: &BoardDoc) -> Expected {
    let count = |status| {
        doc.appointments
            .values()
            .filter(|a| a.status == status)
            .count() as i64
    };
    Expected {
        version: doc.version,
        position: doc.position,
        waiting: count(AppointmentStatus::Requested),
        cancelled: count(AppointmentStatus::Cancelled),
    }
}

/// A fresh fold of every event of a Board, stream by stream, by the projection's code.
async fn fresh_fold(pool: &PgPool, board: Uuid) -> BoardDoc {
    let mut doc = BoardDoc::default();
    for e in read_board_streams(pool, board, ReadLimit::All)
        .await
        .unwrap()
    {
        doc.apply(&e).unwrap();
    }
    doc
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_event_is_skipped_or_applied_twice_under_concurrent_writers_rollbacks_and_long_transactions(
) {
    concurrent_writers_rollbacks_and_long_transactions(config()).await;
}

/// The same with the tables analyzed as they double, custom plans and `board_view`'s
/// batches in fewer round trips (its transactions' ids unregistered, headers and
/// appointment rows in one statement).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_event_is_skipped_or_applied_twice_with_fresh_statistics_custom_plans_and_fewer_round_trips(
) {
    concurrent_writers_rollbacks_and_long_transactions(DaemonConfig {
        fresh_statistics: true,
        custom_plans: true,
        fewer_round_trips: true,
        ..config()
    })
    .await;
}

async fn concurrent_writers_rollbacks_and_long_transactions(config: DaemonConfig) {
    let pool = helpers::fresh_database().await;
    let store = helpers::store(&pool);
    let projector = start_projector(
        &pool,
        &store,
        DaemonConfig {
            batch_size: 7,
            ..config
        },
    );
    let boards = open_boards(&store, "Board", 8).await;
    let boards = Arc::new(boards);
    let committed = Arc::new(AtomicUsize::new(0));
    let rolled_back = Arc::new(AtomicUsize::new(0));
    let mut writers = Vec::new();
    for w in 0..32 {
        let pool = pool.clone();
        let boards = boards.clone();
        let committed = committed.clone();
        let rolled_back = rolled_back.clone();
        writers.push(tokio::spawn(async move {
            // Each writer cancels only its own appointments, so writers never conflict.
            let mut open: Vec<(Uuid, Uuid)> = Vec::new();
            for i in 0..20 {
                let (hold_ms, rollback, cancel, board) = {
                    let mut rng = rand::rng();
                    let hold = if rng.random_bool(0.3) {
                        rng.random_range(0..=500)
                    } else {
                        0
                    };
                    (
                        hold,
                        rng.random_bool(0.2),
                        rng.random_bool(0.3),
                        boards[rng.random_range(0..boards.len())],
                    )
                };
                let mut tx = pool.begin().await.unwrap();
                let cancelled = if cancel && !open.is_empty() {
                    let (stream, board) = open.swap_remove(0);
                    append_in(
                        &mut tx,
                        stream,
                        board,
                        1,
                        AppointmentEvent::AppointmentCancelled {
                            reason: "torture".into(),
                        },
                    )
                    .await;
                    Some((stream, board))
                } else {
                    let stream = Uuid::new_v4();
                    append_in(
                        &mut tx,
                        stream,
                        board,
                        0,
                        requested(board, &format!("w{w}-{i}")),
                    )
                    .await;
                    open.push((stream, board));
                    None
                };
                if hold_ms > 0 {
                    tokio::time::sleep(Duration::from_millis(hold_ms)).await;
                }
                if rollback {
                    tx.rollback().await.unwrap();
                    match cancelled {
                        Some(c) => open.push(c),
                        None => {
                            open.pop();
                        }
                    }
                    rolled_back.fetch_add(1, Ordering::Relaxed);
                } else {
                    tx.commit().await.unwrap();
                    committed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    assert!(rolled_back.load(Ordering::Relaxed) > 0 && committed.load(Ordering::Relaxed) > 300);
    caught_up(&pool).await;

    for board in boards.iter() {
        let doc = board_doc(&pool, *board).await.expect("board document");
        assert_eq!(
            observed(&doc),
            expected(&pool, *board).await,
            "board {board}"
        );
    }
    // Every committed event of a Board was applied exactly once, counted two ways.
    let board_events: i64 = sqlx::query_scalar(
        "select count(*) from events e join streams s on s.id = e.stream_id where s.board_id is not null",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let statuses = state::status(&pool).await.unwrap();
    let board_view = statuses.iter().find(|s| s.name == "board_view").unwrap();
    assert_eq!(board_view.events_applied, board_events);
    // Single-stream views: one document per appointment, at its stream's version.
    let mismatched: i64 = sqlx::query_scalar(
        "select count(*) from streams s left join appointment_view v on v.id = s.id \
          where s.type = 'appointment' and (v.version is distinct from s.version)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(mismatched, 0);
    let durations_mismatched: i64 = sqlx::query_scalar(
        "select count(*) from streams s left join appointment_durations d on d.appointment_id = s.id \
          where s.type = 'appointment' and (d.version is distinct from s.version \
             or (s.version = 2) <> (d.cancelled_at is not null))",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(durations_mismatched, 0);
    projector.stop().await.unwrap();
}

#[tokio::test]
async fn an_event_with_a_lower_seq_committed_after_a_higher_one_is_still_projected() {
    let pool = helpers::fresh_database().await;
    let store = helpers::store(&pool);
    let projector = start_projector(&pool, &store, config());
    let board = open_board(&store, "Inversion").await;
    caught_up(&pool).await;

    // Transaction ids are taken in this order: early < late.
    let mut early = pool.begin().await.unwrap();
    let _: String = sqlx::query_scalar("select pg_current_xact_id()::text")
        .fetch_one(&mut *early)
        .await
        .unwrap();
    let mut late = pool.begin().await.unwrap();
    let _: String = sqlx::query_scalar("select pg_current_xact_id()::text")
        .fetch_one(&mut *late)
        .await
        .unwrap();
    // ...but sequence numbers the other way round.
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let low_seq = append_in(&mut late, a, board, 0, requested(board, "low seq")).await;
    let high_seq = append_in(&mut early, b, board, 0, requested(board, "high seq")).await;
    assert!(low_seq < high_seq);

    early.commit().await.unwrap();
    wait_for_appointment(
        "the higher seq to be projected",
        Duration::from_secs(10),
        &pool,
        board,
        b,
    )
    .await;
    let checkpoint = state::status(&pool).await.unwrap();
    let bv = checkpoint.iter().find(|s| s.name == "board_view").unwrap();
    assert!(
        bv.checkpoint_position >= high_seq,
        "the projector passed seq {high_seq}"
    );
    let doc = board_doc(&pool, board).await.unwrap();
    assert!(!doc.appointments.contains_key(&a));

    late.commit().await.unwrap();
    wait_for_appointment(
        "the lower seq to be projected after all",
        Duration::from_secs(10),
        &pool,
        board,
        a,
    )
    .await;
    assert_doc_agrees(&pool, board).await;
    projector.stop().await.unwrap();
}

#[tokio::test]
async fn an_open_write_transaction_stalls_the_projector_without_a_skip_and_a_rollback_does_not() {
    let pool = helpers::fresh_database().await;
    let store = helpers::store(&pool);
    let projector = start_projector(&pool, &store, config());
    let board = open_board(&store, "Stall").await;
    caught_up(&pool).await;

    let mut held = pool.begin().await.unwrap();
    let held_stream = Uuid::new_v4();
    append_in(&mut held, held_stream, board, 0, requested(board, "held")).await;
    let (after, _) = request_appointment(&store, board, "after").await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let doc = board_doc(&pool, board).await.unwrap();
    assert!(
        !doc.appointments.contains_key(&after),
        "nothing behind an open transaction is applied"
    );
    let lag = state::status(&pool).await.unwrap();
    assert!(
        lag.iter()
            .find(|s| s.name == "board_view")
            .unwrap()
            .lag_events
            >= 1,
        "lag is visible"
    );

    held.commit().await.unwrap();
    wait_for(
        "both events after the commit",
        Duration::from_secs(10),
        || async {
            board_doc(&pool, board).await.is_some_and(|d| {
                d.appointments.contains_key(&after) && d.appointments.contains_key(&held_stream)
            })
        },
    )
    .await;

    // A rolled-back transaction leaves nothing to wait for.
    let mut doomed = pool.begin().await.unwrap();
    append_in(
        &mut doomed,
        Uuid::new_v4(),
        board,
        0,
        requested(board, "doomed"),
    )
    .await;
    doomed.rollback().await.unwrap();
    let (later, _) = request_appointment(&store, board, "later").await;
    wait_for_appointment(
        "the event after a rollback",
        Duration::from_secs(5),
        &pool,
        board,
        later,
    )
    .await;
    assert_doc_agrees(&pool, board).await;
    projector.stop().await.unwrap();
}

#[tokio::test]
async fn a_crash_at_any_point_leaves_documents_and_checkpoint_in_agreement() {
    for point in [
        CrashPoint::AfterRead,
        CrashPoint::AfterApply,
        CrashPoint::BeforeCheckpoint,
        CrashPoint::BeforeCommit,
        CrashPoint::AfterCommit,
    ] {
        let pool = helpers::fresh_database().await;
        let store = helpers::store(&pool);
        let board = open_board(&store, "Crash").await;
        for i in 0..5 {
            request_appointment(&store, board, &format!("p{i}")).await;
        }
        let armed = Arc::new(AtomicBool::new(true));
        let hook_armed = armed.clone();
        let crashing = start_with_faults(
            &pool,
            &store,
            config(),
            Faults {
                crash: Some(Arc::new(move |p| {
                    p == point && hook_armed.swap(false, Ordering::SeqCst)
                })),
                ..Default::default()
            },
        );
        tokio::time::timeout(Duration::from_secs(10), crashing.join())
            .await
            .expect("the projector stops at its crash point")
            .unwrap();
        assert!(
            !armed.load(Ordering::SeqCst),
            "crash point {point:?} was reached"
        );

        // Restart, like a new process.
        let projector = start_projector(&pool, &store, config());
        caught_up(&pool).await;
        let doc = board_doc(&pool, board).await.expect("board document");
        assert_eq!(
            observed(&doc),
            expected(&pool, board).await,
            "after a crash at {point:?}"
        );
        let statuses = state::status(&pool).await.unwrap();
        let bv = statuses.iter().find(|s| s.name == "board_view").unwrap();
        // The non-idempotent counter did not double count.
        assert_eq!(bv.events_applied, 6, "after a crash at {point:?}");
        assert_eq!(
            bv.checkpoint_position, doc.position,
            "after a crash at {point:?}"
        );
        projector.stop().await.unwrap();
    }
}

/// A projection whose batches are slow (here appointment_view, whose first batch with
/// an appointment is held inside its transaction until the test lets go) holds no
/// other back: each runs on its own loop, so board_view projects (and notifies) every
/// new event while the slow one commits nothing, and the slow one then commits its
/// batches with their checkpoint and catches up. (In lockstep rounds, board_view waited
/// for the slow one's round to end: the second appointment never showed.)
///
/// The waits are generous: the test databases share one PostgreSQL, whose running
/// transactions (other tests') hold back every projector's reads for a while. The
/// slow batch is held until released, so a late board_view still tells loops from
/// lockstep.
#[tokio::test]
async fn a_slow_projection_does_not_hold_back_the_board_view() {
    let pool = helpers::fresh_database().await;
    let store = helpers::store(&pool);
    let board = open_board(&store, "Slow neighbour").await;
    let stalling = Arc::new(AtomicBool::new(true));
    let faults = Faults {
        slow: Some({
            let stalling = stalling.clone();
            Arc::new(move |p| {
                (p == Projection::AppointmentView && stalling.load(Ordering::SeqCst))
                    .then_some(Duration::from_millis(50))
            })
        }),
        ..Default::default()
    };
    let projector = start_with_faults(&pool, &store, config(), faults);
    for i in 0..5 {
        let (appointment, _) = request_appointment(&store, board, &format!("p{i}")).await;
        wait_for_appointment(
            "board_view beside a slow projection",
            Duration::from_secs(15),
            &pool,
            board,
            appointment,
        )
        .await;
    }
    // The slow one has committed none of them meanwhile.
    let documents: i64 = sqlx::query_scalar("select count(*) from appointment_view")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(documents, 0, "the slow projection's batch is still held");
    let behind = |statuses: &[state::ProjectionStatus], name: &str| {
        statuses
            .iter()
            .find(|s| s.name == name)
            .map(|s| s.lag_events)
            .unwrap()
    };
    let statuses = state::status(&pool).await.unwrap();
    assert_eq!(behind(&statuses, "board_view"), 0);
    assert!(
        behind(&statuses, "appointment_view") > 0,
        "the slow projection is behind meanwhile"
    );
    // The slow one commits its documents with its checkpoint and catches up.
    stalling.store(false, Ordering::SeqCst);
    caught_up(&pool).await;
    let statuses = state::status(&pool).await.unwrap();
    let view = statuses
        .iter()
        .find(|s| s.name == "appointment_view")
        .unwrap();
    assert_eq!(view.events_applied, 5);
    let documents: i64 = sqlx::query_scalar("select count(*) from appointment_view")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(documents, 5);
    assert_doc_agrees(&pool, board).await;
    projector.stop().await.unwrap();
}

/// Board snapshots are written behind the live batches: a batch whose Boards pass a
/// snapshot boundary commits, and shows its appointments, without waiting for their
/// snapshots (written in the batch's transaction, a slow snapshot held every change
/// back: this failed), and each snapshot, though written while later batches
/// committed, is the Board's document at its own version (the writer's view is taken
/// before the next batch commits; a writer reading the rows as they are when it writes
/// stored a later document under the earlier version: this failed too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_batch_does_not_wait_for_its_board_snapshots_and_each_is_of_its_version() {
    let pool = helpers::fresh_database().await;
    let store = helpers::store(&pool);
    let boards = [
        open_board(&store, "Snapshots behind A").await,
        open_board(&store, "Snapshots behind B").await,
    ];
    let stalling = Arc::new(AtomicBool::new(true));
    let faults = Faults {
        slow_snapshots: Some({
            let stalling = stalling.clone();
            Arc::new(move || {
                stalling
                    .load(Ordering::SeqCst)
                    .then_some(Duration::from_millis(50))
            })
        }),
        ..Default::default()
    };
    let projector = start_snapshotting(&pool, &store, 2, faults);
    caught_up(&pool).await;
    // Every Board document the projector had, by version.
    let mut folds: HashMap<(Uuid, i64), String> = HashMap::new();
    for i in 0..8 {
        let board = boards[i % 2];
        let (appointment, _) = request_appointment(&store, board, &format!("Behind {i}")).await;
        wait_for_appointment(
            "board_view while its snapshots are written slowly",
            Duration::from_secs(15),
            &pool,
            board,
            appointment,
        )
        .await;
        let fold = fresh_fold(&pool, board).await;
        folds.insert((board, fold.version), serde_json::to_string(&fold).unwrap());
    }
    stalling.store(false, Ordering::SeqCst);
    // A stopping loop writes the snapshots still due and waits for them.
    projector.stop().await.unwrap();
    let snapshots: Vec<(Uuid, i64, serde_json::Value)> = sqlx::query_as(
        "select id, version, doc from snapshots where kind = 'board' order by id, version",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(
        snapshots.len() >= 3,
        "snapshots were written: {snapshots:?}"
    );
    for (board, version, doc) in &snapshots {
        let doc: BoardDoc = serde_json::from_value(doc.clone()).unwrap();
        assert_eq!(
            Some(&serde_json::to_string(&doc).unwrap()),
            folds.get(&(*board, *version)),
            "the snapshot of Board {board} at version {version}"
        );
    }
    // The first Board's first snapshot was written while its later appointments
    // committed (its writer was held after taking its view until they had).
    let first = snapshots.iter().find(|s| s.0 == boards[0]).unwrap();
    assert_eq!(first.1, 2);
    assert!(snapshots.iter().any(|s| s.0 == boards[0] && s.1 > 2));
}

/// The live generation's `board_view` generation.
async fn live_board_view(pool: &PgPool) -> i32 {
    sqlx::query_scalar(
        "select generation from projection_state where name = 'board_view' and status = 'live'",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Another writer's snapshot of `board` at `version` (a building generation's, say),
/// committed now.
async fn other_writers_snapshot(pool: &PgPool, board: Uuid, version: i64) {
    sqlx::query(
        "insert into snapshots (kind, id, fold_version, version, max_recorded_at, doc) \
         values ('board', $1, $2, $3, now(), '{\"by\": \"the other writer\"}')",
    )
    .bind(board)
    .bind(Projection::BoardView.version())
    .bind(version)
    .execute(pool)
    .await
    .unwrap();
}

/// The Board snapshots stored, by Board and version.
async fn board_snapshots(pool: &PgPool) -> HashMap<(Uuid, i64), serde_json::Value> {
    sqlx::query_as::<_, (Uuid, i64, serde_json::Value)>(
        "select id, version, doc from snapshots where kind = 'board'",
    )
    .fetch_all(pool)
    .await
    .unwrap()
    .into_iter()
    .map(|(id, version, doc)| ((id, version), doc))
    .collect()
}

#[tokio::test]
async fn board_snapshots_written_beside_another_writer_skip_only_those_it_committed_after_the_view()
{
    let pool = helpers::fresh_database().await;
    let store = helpers::store(&pool);
    let boards = [
        open_board(&store, "Beside A").await,
        open_board(&store, "Beside B").await,
        open_board(&store, "Beside C").await,
    ];
    for (i, board) in boards.iter().enumerate() {
        request_appointment(&store, *board, &format!("Beside {i}")).await;
    }
    let projector = start_snapshotting(&pool, &store, 1000, Faults::default());
    caught_up(&pool).await;
    projector.stop().await.unwrap();
    let generation = live_board_view(&pool).await;
    let mut due = Vec::new();
    for board in boards {
        let fold = fresh_fold(&pool, board).await;
        due.push(careboard::snapshots::BoardDue {
            id: board,
            version: fold.version,
            at: fold.max_recorded_at.expect("the Board has events"),
        });
    }
    // A writer behind: its view first, as a building generation's or the live one's...
    let mut conn = pool.acquire().await.unwrap();
    let mut tx = sqlx::Connection::begin_with(&mut *conn, "begin isolation level repeatable read")
        .await
        .unwrap();
    sqlx::query("select 1").execute(&mut *tx).await.unwrap();
    // ...then the other's snapshot of the middle Board, committed after that view.
    other_writers_snapshot(&pool, boards[1], due[1].version).await;
    let skipped = careboard::snapshots::write_boards_beside_other_writers(
        &mut tx,
        Projection::BoardView.version(),
        generation,
        &due,
        Cursor { tx: 0, seq: 0 },
    )
    .await
    .expect("the Boards the other writer has not written are written");
    tx.commit().await.unwrap();
    assert_eq!(skipped, 1);
    let stored = board_snapshots(&pool).await;
    assert_eq!(stored.len(), 3, "{stored:?}");
    assert_eq!(
        stored[&(boards[1], due[1].version)],
        json!({"by": "the other writer"})
    );
    for i in [0, 2] {
        let doc: BoardDoc = serde_json::from_value(stored[&(boards[i], due[i].version)].clone())
            .expect("a Board document");
        assert_eq!(
            serde_json::to_string(&doc).unwrap(),
            serde_json::to_string(&fresh_fold(&pool, boards[i]).await).unwrap()
        );
    }
}

#[tokio::test]
async fn the_live_snapshot_writer_keeps_its_other_boards_when_another_writer_took_one() {
    let pool = helpers::fresh_database().await;
    let store = helpers::store(&pool);
    let boards = [
        open_board(&store, "Raced A").await,
        open_board(&store, "Raced B").await,
    ];
    // Both Boards pass their boundary in the first batch: one writer takes both.
    for (i, board) in boards.iter().enumerate() {
        request_appointment(&store, *board, &format!("Raced {i}")).await;
    }
    // The first writer is held right after taking its view, until the test lets go.
    let viewed = Arc::new(tokio::sync::Notify::new());
    let stalls = Arc::new(AtomicUsize::new(0));
    let holding = Arc::new(AtomicBool::new(true));
    let faults = Faults {
        slow_snapshots: Some({
            let (viewed, stalls, holding) = (viewed.clone(), stalls.clone(), holding.clone());
            Arc::new(move || {
                if stalls.fetch_add(1, Ordering::SeqCst) == 0 {
                    viewed.notify_one();
                }
                holding
                    .load(Ordering::SeqCst)
                    .then_some(Duration::from_millis(50))
            })
        }),
        ..Default::default()
    };
    let projector = start_snapshotting(&pool, &store, 2, faults);
    tokio::time::timeout(Duration::from_secs(20), viewed.notified())
        .await
        .expect("the snapshot writer took its view");
    // Another writer commits the first Board's snapshot while this one is held.
    other_writers_snapshot(&pool, boards[0], 2).await;
    holding.store(false, Ordering::SeqCst);
    caught_up(&pool).await;
    // A stopping loop waits for its writer.
    projector.stop().await.unwrap();
    let stored = board_snapshots(&pool).await;
    assert_eq!(
        stored.get(&(boards[0], 2)),
        Some(&json!({"by": "the other writer"}))
    );
    let doc: BoardDoc = serde_json::from_value(
        stored
            .get(&(boards[1], 2))
            .expect("the other Board's snapshot was kept")
            .clone(),
    )
    .unwrap();
    assert_eq!(
        serde_json::to_string(&doc).unwrap(),
        serde_json::to_string(&fresh_fold(&pool, boards[1]).await).unwrap()
    );
}

#[tokio::test]
async fn one_read_of_the_log_feeds_every_projection_and_each_commits_it_with_its_checkpoint() {
    let pool = helpers::fresh_database().await;
    let store = helpers::store(&pool);
    let boards = [
        open_board(&store, "Shared A").await,
        open_board(&store, "Shared B").await,
    ];
    // A backlog long enough that the loops meet behind it whatever the machine is doing:
    // a loop that starts late (a busy machine) may read its first batches alone, which
    // with four batches in all can break the sharing bound below; with sixteen, the
    // late start is a small part of the reads.
    const REQUESTS: usize = 126;
    const EVENTS: i64 = REQUESTS as i64 + 2;
    let mut appointments = Vec::new();
    for i in 0..REQUESTS {
        let (id, _) = request_appointment(&store, boards[i % 2], &format!("p{i}")).await;
        appointments.push(id);
    }
    // Small batches, so the 128 events take many reads.
    let metrics = Arc::new(Metrics::new());
    let projector = Daemon::new(
        pool.clone(),
        store.appended_signal(),
        Default::default(),
        DaemonConfig {
            batch_size: 8,
            ..config()
        },
        metrics.clone(),
    )
    .spawn();
    caught_up(&pool).await;
    projector.stop().await.unwrap();

    let reads = metrics.projector_batches_read();
    let applied = metrics.projector_batches();
    eprintln!("{reads} reads for {applied} applied batches");
    assert!(
        reads >= EVENTS as u64 / 8,
        "{EVENTS} events in batches of 8 take {} reads, not {reads}",
        EVENTS / 8
    );
    // Each projection runs on its own loop, so a read is shared only when the loops
    // meet at one cursor (they do, behind a backlog); without sharing, every applied
    // batch would be a read of its own.
    assert!(
        reads * 2 <= applied,
        "{reads} reads for {applied} applied batches: the reads were not shared"
    );
    // Each projection moved its checkpoint to the end of the log with its documents.
    let statuses = state::status(&pool).await.unwrap();
    let end: i64 = sqlx::query_scalar("select max(seq) from events")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(statuses.len(), Projection::ALL.len());
    for s in &statuses {
        assert_eq!(s.checkpoint_position, end, "{}", s.name);
    }
    let applied_by = |name: &str| {
        statuses
            .iter()
            .find(|s| s.name == name)
            .map(|s| s.events_applied)
    };
    // Each projection applies the events its documents are made of, each exactly once.
    assert_eq!(applied_by("board_view"), Some(EVENTS));
    assert_eq!(applied_by("appointment_view"), Some(REQUESTS as i64));
    for board in boards {
        let doc = board_doc(&pool, board).await.expect("board document");
        assert_eq!(observed(&doc), expected(&pool, board).await);
    }
    for id in appointments {
        let doc: careboard::domain::Appointment =
            read::stream_doc(&pool, Projection::AppointmentView, id)
                .await
                .unwrap()
                .expect("appointment document");
        assert_eq!(doc.status, AppointmentStatus::Requested);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exactly_one_of_three_projectors_leads_and_another_takes_over_within_five_seconds() {
    let pool = helpers::fresh_database().await;
    let store = helpers::store(&pool);
    // Three "processes": separate pools, separate connections.
    let mut handles = Vec::new();
    for _ in 0..3 {
        let own_pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(5)
            .connect_with(pool.connect_options().as_ref().clone())
            .await
            .unwrap();
        let own_store = helpers::store(&own_pool);
        handles.push(Some(start_projector(&own_pool, &own_store, config())));
    }
    let leaders = |handles: &Vec<Option<DaemonHandle>>| {
        handles
            .iter()
            .enumerate()
            .filter(|(_, h)| h.as_ref().is_some_and(|h| h.is_leader()))
            .map(|(i, _)| i)
            .collect::<Vec<_>>()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while leaders(&handles).len() != 1 {
        assert!(Instant::now() < deadline, "no leader elected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(leaders(&handles).len(), 1, "exactly one leader");

    let board = open_board(&store, "Failover").await;
    request_appointment(&store, board, "before").await;
    caught_up(&pool).await;

    // Kill the leader: its connections drop like a dead process's.
    let first = leaders(&handles)[0];
    handles[first].take().unwrap().abort();
    let killed_at = Instant::now();
    while leaders(&handles).len() != 1 {
        assert!(
            killed_at.elapsed() < Duration::from_secs(5),
            "no takeover within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let takeover = killed_at.elapsed();
    assert!(
        takeover < Duration::from_secs(5),
        "takeover took {takeover:?}"
    );
    request_appointment(&store, board, "after").await;
    caught_up(&pool).await;
    assert_doc_agrees(&pool, board).await;

    // Terminating the new leader's lock connection deposes it; it recovers or another
    // process leads, and projection continues.
    let second = leaders(&handles)[0];
    let pid = handles[second].as_ref().unwrap().lock_pid();
    let _: bool = sqlx::query_scalar("select pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(&pool)
        .await
        .unwrap();
    request_appointment(&store, board, "after terminate").await;
    caught_up(&pool).await;
    assert_doc_agrees(&pool, board).await;
    for h in handles.into_iter().flatten() {
        h.stop().await.unwrap();
    }
}

/// The live `board_view` generation's checkpoint, as a [`Checkpoint`].
async fn board_view_checkpoint(pool: &PgPool) -> Checkpoint<'static> {
    let generation: i32 = sqlx::query_scalar(
        "select generation from projection_state where name = 'board_view' and status = 'live'",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    Checkpoint::Projection {
        name: Projection::BoardView.name(),
        generation,
    }
}

/// What the fence tests start from: a fresh database with its generations, the live
/// `board_view` checkpoint, and three cursors in order (start, next, after).
async fn fence_setup() -> (PgPool, Checkpoint<'static>, [Cursor; 3]) {
    let pool = helpers::fresh_database().await;
    state::ensure_generations(&pool).await.unwrap();
    let checkpoint = board_view_checkpoint(&pool).await;
    let cursors = [
        Cursor::default(),
        Cursor { tx: 1, seq: 1 },
        Cursor { tx: 2, seq: 2 },
    ];
    (pool, checkpoint, cursors)
}

/// With the old leader deposed while `batch` (which moved the checkpoint to `next`) is
/// open: a new leader's takeover waits for the batch, and once it commits takes over
/// from `next`. The new lease.
async fn takeover_waits_for_the_open_batch(
    pool: &PgPool,
    batch: sqlx::Transaction<'static, sqlx::Postgres>,
    next: Cursor,
) -> Lease {
    let taking_over = tokio::spawn({
        let pool = pool.clone();
        async move { Lease::try_acquire(&pool).await }
    });
    // Waiting on a lock: however busy the machine, it cannot finish before the commit.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !taking_over.is_finished(),
        "the new leader waits for the old leader's open batch"
    );
    batch.commit().await.unwrap();
    let new = tokio::time::timeout(Duration::from_secs(30), taking_over)
        .await
        .expect("takes over once the batch has ended")
        .unwrap()
        .unwrap()
        .expect("the lock is free");
    assert_eq!(
        state::live_checkpoint(pool, Projection::BoardView)
            .await
            .unwrap(),
        Some(next),
        "the new leader starts from the old leader's last batch"
    );
    new
}

/// Ends the leader lock's connection (a partition, a killed process), and waits until
/// PostgreSQL has let the lock go.
async fn depose(pool: &PgPool, lease: &Lease) {
    let _: bool = sqlx::query_scalar("select pg_terminate_backend($1)")
        .bind(lease.pid())
        .fetch_one(pool)
        .await
        .unwrap();
    for _ in 0..100 {
        let held: bool =
            sqlx::query_scalar("select exists (select from pg_stat_activity where pid = $1)")
                .bind(lease.pid())
                .fetch_one(pool)
                .await
                .unwrap();
        if !held {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the lock's connection did not end");
}

/// Both fences: the epoch (the default) and the lock table (the earlier one).
#[tokio::test]
async fn a_deposed_leaders_checkpoint_write_is_rejected() {
    for lock_table_fence in [false, true] {
        let (pool, checkpoint, [start, next, after]) = fence_setup().await;
        let old = Lease::try_acquire_fenced(&pool, lock_table_fence)
            .await
            .unwrap()
            .expect("no one leads yet");
        assert_eq!(
            matches!(old.fence(), Fence::LockTable { .. }),
            lock_table_fence
        );
        assert!(
            Lease::try_acquire(&pool).await.unwrap().is_none(),
            "one leader at a time"
        );
        let mut conn = pool.acquire().await.unwrap();
        // While it leads the write goes through...
        assert!(
            advance_checkpoint(&mut *conn, checkpoint, start, next, 1, old.fence())
                .await
                .unwrap()
        );
        // ...a stale expected value is rejected (compare-and-set)...
        assert!(
            !advance_checkpoint(&mut *conn, checkpoint, start, next, 1, old.fence())
                .await
                .unwrap()
        );
        // ...and once its lock is gone and another process leads, every write of the
        // old leader is rejected, NOTIFYing or not; the new leader's goes through.
        depose(&pool, &old).await;
        assert!(!old.holds().await, "the old lease knows it is deposed");
        let new = Lease::try_acquire_fenced(&pool, lock_table_fence)
            .await
            .unwrap()
            .expect("the lock is free");
        assert!(new.holds().await);
        assert!(
            !advance_checkpoint(&mut *conn, checkpoint, next, after, 1, old.fence())
                .await
                .unwrap()
        );
        assert!(!advance_checkpoint_notifying(
            &mut *conn,
            checkpoint,
            next,
            after,
            1,
            old.fence(),
            "board_changed",
            &["x".to_string()]
        )
        .await
        .unwrap());
        // The checkpoint of a batch that changed nothing, alone in its statement, is
        // fenced the same way (with the epoch held or not, committing durably or not).
        for fence in [old.fence(), old.fence().held()] {
            for async_commit in [true, false] {
                assert!(!advance_checkpoint_alone(
                    &mut *conn,
                    checkpoint,
                    next,
                    after,
                    fence,
                    async_commit
                )
                .await
                .unwrap());
            }
        }
        assert_eq!(
            state::live_checkpoint(&pool, Projection::BoardView)
                .await
                .unwrap(),
            Some(next),
            "the deposed leader moved nothing"
        );
        assert!(advance_checkpoint_notifying(
            &mut *conn,
            checkpoint,
            next,
            after,
            1,
            new.fence(),
            "board_changed",
            &["x".to_string()]
        )
        .await
        .unwrap());
    }
}

/// The race the epoch fence is for: a deposed leader's batch transaction is open when
/// the new leader takes over. Either it fenced its checkpoint first, and the new leader
/// starts only after it committed (and sees its checkpoint); or the new leader bumped
/// the epoch first, and the old batch is refused, documents and all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_starts_after_the_old_leaders_open_batch_or_refuses_it() {
    let (pool, checkpoint, [start, next, after]) = fence_setup().await;

    // 1. The old leader's batch has written and moved its checkpoint, not committed.
    let old = Lease::try_acquire(&pool).await.unwrap().unwrap();
    let mut batch = pool.begin().await.unwrap();
    sqlx::query("create temporary table written (x int)")
        .execute(&mut *batch)
        .await
        .unwrap();
    assert!(
        advance_checkpoint(&mut *batch, checkpoint, start, next, 1, old.fence())
            .await
            .unwrap()
    );
    depose(&pool, &old).await;
    let new = takeover_waits_for_the_open_batch(&pool, batch, next).await;

    // 2. The old leader's batch began before the takeover, and fences after it.
    let mut batch = pool.begin().await.unwrap();
    sqlx::query("update projection_state set updated_at = now() where name = 'matcher'")
        .execute(&mut *batch)
        .await
        .unwrap();
    depose(&pool, &new).await;
    let newest = Lease::try_acquire(&pool).await.unwrap().unwrap();
    assert!(
        !advance_checkpoint(&mut *batch, checkpoint, next, after, 1, new.fence())
            .await
            .unwrap(),
        "a batch fenced after the takeover is refused"
    );
    drop(batch);
    assert!(
        advance_checkpoint(&pool, checkpoint, next, after, 1, newest.fence())
            .await
            .unwrap()
    );
}

/// The same race for the projector's batches, which hold the epoch lock shared from
/// their first statement instead of locking the epoch row ([`Fence::EpochHeld`]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_waits_for_a_batch_holding_the_epoch_lock_or_refuses_it() {
    let (pool, checkpoint, [start, next, after]) = fence_setup().await;
    let hold = format!("select {EPOCH_HOLD}");

    // 1. The old leader's batch holds the lock and has moved its checkpoint.
    let old = Lease::try_acquire(&pool).await.unwrap().unwrap();
    let mut batch = pool.begin().await.unwrap();
    sqlx::query(&hold).execute(&mut *batch).await.unwrap();
    assert!(
        advance_checkpoint(&mut *batch, checkpoint, start, next, 1, old.fence().held())
            .await
            .unwrap()
    );
    depose(&pool, &old).await;
    let new = takeover_waits_for_the_open_batch(&pool, batch, next).await;

    // 2. The takeover came first: a batch of the deposed leader is refused.
    depose(&pool, &new).await;
    let newest = Lease::try_acquire(&pool).await.unwrap().unwrap();
    let mut batch = pool.begin().await.unwrap();
    sqlx::query(&hold).execute(&mut *batch).await.unwrap();
    assert!(
        !advance_checkpoint(&mut *batch, checkpoint, next, after, 1, new.fence().held())
            .await
            .unwrap(),
        "a batch of a deposed leader is refused"
    );
    drop(batch);
    assert!(
        advance_checkpoint(&pool, checkpoint, next, after, 1, newest.fence().held())
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn a_poison_event_is_dead_lettered_after_retries_and_replayed_after_a_fix() {
    let pool = helpers::fresh_database().await;
    let store = helpers::store(&pool);
    let projector = start_projector(&pool, &store, config());
    let sick = open_board(&store, "Sick").await;
    let healthy = open_board(&store, "Healthy").await;
    let (appointment, _) = request_appointment(&store, sick, "Sam").await;
    caught_up(&pool).await;

    // A corrupt event (undecodable data) lands on the sick Board's appointment.
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("update streams set version = 2 where id = $1")
        .bind(appointment)
        .execute(&mut *tx)
        .await
        .unwrap();
    let poison_seq: i64 = sqlx::query_scalar(
        "insert into events (id, stream_id, version, type, data) \
         values ($1, $2, 2, 'AppointmentScheduled', '{\"providerId\": \"not-an-id\"}') returning seq",
    )
    .bind(Uuid::new_v4())
    .bind(appointment)
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    store.appended_signal().notify_one();

    // Other Boards keep progressing, and so do later events of the sick one.
    let (on_healthy, _) = request_appointment(&store, healthy, "Kim").await;
    let (later_on_sick, _) = request_appointment(&store, sick, "Lee").await;
    wait_for(
        "progress past the poison event",
        Duration::from_secs(10),
        || async {
            let h = board_doc(&pool, healthy)
                .await
                .is_some_and(|d| d.appointments.contains_key(&on_healthy));
            let s = board_doc(&pool, sick)
                .await
                .is_some_and(|d| d.appointments.contains_key(&later_on_sick));
            h && s
        },
    )
    .await;
    let letters: Vec<(String, i64, i32)> = sqlx::query_as(
        "select projection, event_seq, attempts from dead_letters where replayed_at is null order by projection",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(
        letters
            .iter()
            .any(|(p, seq, attempts)| p == "board_view" && *seq == poison_seq && *attempts >= 3),
        "{letters:?}"
    );
    let status = state::status(&pool).await.unwrap();
    assert_eq!(
        status
            .iter()
            .find(|s| s.name == "board_view")
            .unwrap()
            .dead_letters,
        1
    );
    let doc = board_doc(&pool, sick).await.unwrap();
    assert_eq!(
        doc.appointments[&appointment].status,
        AppointmentStatus::Requested
    );

    // The fix: the event's data is corrected (by the owner, deliberately: events are
    // append-only); replay applies it.
    let shift = Uuid::new_v4();
    sqlx::query("alter table events disable trigger events_append_only")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("update events set data = $2 where seq = $1")
        .bind(poison_seq)
        .bind(json!({"providerId": Uuid::new_v4(), "shiftId": shift, "estimatedTime": "2022-07-18T15:00:00Z"}))
        .execute(&pool)
        .await
        .unwrap();
    let report = careboard::projector::replay::replay_dead_letters(&pool, Projection::BoardView)
        .await
        .unwrap();
    assert_eq!(report.replayed, 1, "{report:?}");
    assert!(report.still_failing.is_empty());
    let doc = board_doc(&pool, sick).await.unwrap();
    assert_eq!(
        doc.appointments[&appointment].status,
        AppointmentStatus::Scheduled
    );
    assert_eq!(doc.appointments[&appointment].shift_id, Some(shift.into()));
    assert_eq!(observed(&doc), expected(&pool, sick).await);
    let status = state::status(&pool).await.unwrap();
    assert_eq!(
        status
            .iter()
            .find(|s| s.name == "board_view")
            .unwrap()
            .dead_letters,
        0
    );
    projector.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebuild_under_continuous_appends_ends_equal_to_a_fresh_projection() {
    let pool = helpers::fresh_database().await;
    let store = helpers::store(&pool);
    let projector = start_projector(
        &pool,
        &store,
        DaemonConfig {
            batch_size: 50,
            ..config()
        },
    );
    let boards = open_boards(&store, "Rebuild", 3).await;
    for i in 0..150 {
        request_appointment(&store, boards[i % 3], &format!("before {i}")).await;
    }
    caught_up(&pool).await;

    let writing = Arc::new(AtomicBool::new(true));
    let mut writers = Vec::new();
    for w in 0..4 {
        let store = store.clone();
        let boards = boards.clone();
        let writing = writing.clone();
        writers.push(tokio::spawn(async move {
            let mut i = 0;
            while writing.load(Ordering::Relaxed) {
                request_appointment(&store, boards[(w + i) % 3], &format!("during {w}-{i}")).await;
                i += 1;
            }
            i
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let generation = state::request_rebuild(&pool, Projection::BoardView)
        .await
        .unwrap();
    assert_eq!(generation, 2);
    wait_for(
        "the rebuilt generation to go live",
        Duration::from_secs(60),
        || async {
            let st = state::status(&pool).await.unwrap();
            st.iter()
                .any(|s| s.name == "board_view" && s.generation == 2 && s.state == "live")
        },
    )
    .await;
    writing.store(false, Ordering::Relaxed);
    let mut written = 0;
    for w in writers {
        written += w.await.unwrap();
    }
    assert!(written > 0);
    caught_up(&pool).await;

    for board in &boards {
        let doc = board_doc(&pool, *board).await.unwrap();
        assert_eq!(doc, fresh_fold(&pool, *board).await, "board {board}");
    }
    let old_docs: i64 = sqlx::query_scalar("select count(*) from board_view where generation = 1")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(old_docs, 0, "the retired generation is cleaned up");
    let old_rows: i64 =
        sqlx::query_scalar("select count(*) from board_view_appointments where generation = 1")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(old_rows, 0, "with its appointment rows");
    projector.stop().await.unwrap();
}

/// The process holding the leader lock, by its application name.
async fn lock_holder(pool: &PgPool) -> Option<String> {
    sqlx::query_scalar(
        "select a.application_name from pg_locks l join pg_stat_activity a on a.pid = l.pid \
          where l.locktype = 'advisory' and l.granted and l.objid = ($1 & 4294967295)::oid \
            and l.database = (select oid from pg_database where datname = current_database())",
    )
    .bind(LEADER_LOCK_KEY)
    .fetch_optional(pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_careboard_processes_elect_one_projector_and_fail_over_when_it_is_killed() {
    let (pool, url) = helpers::fresh_database_with_url().await;
    let store = helpers::store(&pool);
    let mut nodes: HashMap<String, std::process::Child> = HashMap::new();
    for i in 0..3 {
        let name = format!("node{i}");
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_careboard"))
            .args(["serve", "--projector", "only"])
            .env("DATABASE_URL", format!("{url}?application_name={name}"))
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start a careboard process");
        nodes.insert(name, child);
    }
    let started = Instant::now();
    let leader = loop {
        if let Some(holder) = lock_holder(&pool).await {
            break holder;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no leader among three processes"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    let board = open_board(&store, "Processes").await;
    request_appointment(&store, board, "one").await;
    caught_up(&pool).await;
    let holders: i64 = sqlx::query_scalar(
        "select count(*) from pg_locks where locktype = 'advisory' and granted and objid = ($1 & 4294967295)::oid \
           and database = (select oid from pg_database where datname = current_database())",
    )
    .bind(LEADER_LOCK_KEY)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(holders, 1, "exactly one process projects");

    // SIGKILL: no clean shutdown, the lock goes with the dead connection.
    nodes.get_mut(&leader).unwrap().kill().unwrap();
    nodes.get_mut(&leader).unwrap().wait().unwrap();
    let killed = Instant::now();
    let mut next = None;
    while next.as_ref().is_none_or(|n| n == &leader) {
        assert!(
            killed.elapsed() < Duration::from_secs(5),
            "no takeover within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
        next = lock_holder(&pool).await;
    }
    let (b, _) = request_appointment(&store, board, "two").await;
    wait_for_appointment(
        "the new leader to project",
        Duration::from_secs(10),
        &pool,
        board,
        b,
    )
    .await;
    assert_doc_agrees(&pool, board).await;
    for (_, mut child) in nodes {
        let _ = child.kill();
        let _ = child.wait();
    }
}

#[tokio::test]
async fn a_board_document_is_a_header_plus_one_row_per_appointment_and_a_whole_document_of_the_earlier_shape_is_carried_over(
) {
    let pool = helpers::fresh_database().await;
    let store = helpers::store(&pool);
    let projector = start_projector(&pool, &store, config());
    let board = open_board(&store, "Rows").await;
    for i in 0..3 {
        request_appointment(&store, board, &format!("Row {i}")).await;
    }
    caught_up(&pool).await;
    // Stored: a header without appointments, one row per appointment.
    let (inline, rows): (bool, i64) = sqlx::query_as(
        "select v.doc ? 'appointments', \
                (select count(*) from board_view_appointments x \
                  where x.generation = v.generation and x.board_id = v.id) \
           from board_view v where v.id = $1",
    )
    .bind(board)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(!inline, "appointments are not in the header");
    assert_eq!(rows, 3);
    assert_eq!(
        board_doc(&pool, board).await.unwrap(),
        fresh_fold(&pool, board).await
    );

    // A document of the earlier shape (every appointment inside it, no rows), as an
    // older Careboard left it: reads see it whole, and the next batch moves it to rows
    // without losing the appointments that batch does not touch.
    let whole = serde_json::to_value(fresh_fold(&pool, board).await).unwrap();
    sqlx::query("update board_view set doc = $2 where id = $1")
        .bind(board)
        .bind(&whole)
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("delete from board_view_appointments where board_id = $1")
        .bind(board)
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(
        board_doc(&pool, board).await.unwrap(),
        fresh_fold(&pool, board).await
    );
    request_appointment(&store, board, "After the upgrade").await;
    caught_up(&pool).await;
    let doc = board_doc(&pool, board).await.unwrap();
    assert_eq!(doc.appointments.len(), 4);
    assert_eq!(doc, fresh_fold(&pool, board).await);
    let rows: i64 =
        sqlx::query_scalar("select count(*) from board_view_appointments where board_id = $1")
            .bind(board)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(rows, 4, "every appointment moved into a row");
    projector.stop().await.unwrap();
}

#[tokio::test]
async fn board_views_kept_connection_killed_under_it_is_replaced_and_nothing_is_skipped() {
    let pool = helpers::fresh_database().await;
    let store = helpers::store(&pool);
    let board = open_board(&store, "Kept connection").await;
    // With direct wakes, board_view's live loop keeps a connection of its own.
    let config = DaemonConfig {
        direct_wake: true,
        ..config()
    };
    let projector = start_projector(&pool, &store, config);
    let (first, _) = request_appointment(&store, board, "before").await;
    wait_for_appointment(
        "the first appointment",
        Duration::from_secs(10),
        &pool,
        board,
        first,
    )
    .await;
    // Every connection to the database but the leader lock's and this one: board_view's
    // kept connection among them.
    let killed: i64 = sqlx::query_scalar(
        "select count(*) from (select pg_terminate_backend(pid) from pg_stat_activity \
          where datname = current_database() and pid <> pg_backend_pid() and pid <> $1 \
            and backend_type = 'client backend') as k",
    )
    .bind(projector.lock_pid())
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(killed > 0);
    for i in 0..5 {
        let (appointment, _) = request_appointment(&store, board, &format!("after {i}")).await;
        wait_for_appointment(
            "an appointment after the kill",
            Duration::from_secs(10),
            &pool,
            board,
            appointment,
        )
        .await;
    }
    assert!(projector.is_leader(), "the lock's connection was spared");
    caught_up(&pool).await;
    assert_doc_agrees(&pool, board).await;
    assert_eq!(
        board_doc(&pool, board).await.unwrap(),
        fresh_fold(&pool, board).await
    );
    projector.stop().await.unwrap();
}

/// Only appointments are requested, so no batch holds an event of
/// `provider_shift_view`: with `lone_checkpoints` each of its batches moves the
/// checkpoint in one statement, and every projection still ends at the end of the log
/// with each event applied once and every document equal to a fresh fold.
#[tokio::test]
async fn a_batch_with_no_event_of_its_projection_moves_the_checkpoint_alone_and_nothing_is_skipped()
{
    let pool = helpers::fresh_database().await;
    let store = helpers::store(&pool);
    let boards = [
        open_board(&store, "Alone A").await,
        open_board(&store, "Alone B").await,
    ];
    let metrics = Arc::new(Metrics::new());
    let projector = Daemon::new(
        pool.clone(),
        store.appended_signal(),
        Default::default(),
        DaemonConfig {
            batch_size: 4,
            lone_checkpoints: true,
            ..config()
        },
        metrics.clone(),
    )
    .spawn();
    caught_up(&pool).await;
    let mut appointments = Vec::new();
    for i in 0..24 {
        let (id, _) = request_appointment(&store, boards[i % 2], &format!("alone {i}")).await;
        appointments.push(id);
        if i % 5 == 0 {
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
    }
    caught_up(&pool).await;
    projector.stop().await.unwrap();
    let statuses = state::status(&pool).await.unwrap();
    let end: i64 = sqlx::query_scalar("select max(seq) from events")
        .fetch_one(&pool)
        .await
        .unwrap();
    let applied_by = |name: &str| {
        let s = statuses.iter().find(|s| s.name == name).expect(name);
        assert_eq!(s.checkpoint_position, end, "{name} reached the end");
        s.events_applied
    };
    assert_eq!(applied_by("board_view"), 26);
    assert_eq!(applied_by("appointment_view"), 24);
    assert_eq!(applied_by("appointment_durations"), 24);
    assert_eq!(applied_by("provider_shift_view"), 0);
    let shift_views: i64 = sqlx::query_scalar("select count(*) from provider_shift_view")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(shift_views, 0);
    for board in boards {
        assert_doc_agrees(&pool, board).await;
    }
    for id in appointments {
        let doc: careboard::domain::Appointment =
            read::stream_doc(&pool, Projection::AppointmentView, id)
                .await
                .unwrap()
                .expect("appointment document");
        assert_eq!(doc.status, AppointmentStatus::Requested);
    }
    // No transaction was opened for them: fewer batches went through BEGIN than
    // were applied.
    let stages = metrics.projector_stages();
    let count = |name: &str| {
        stages
            .iter()
            .find(|s| s.stage.as_str() == name)
            .map_or(0, |s| s.count)
    };
    assert!(
        count("begin") < count("batch"),
        "{} transactions for {} batches: no checkpoint moved alone",
        count("begin"),
        count("batch")
    );
}

/// The name of the statement `conn` prepared for a query containing `fragment`.
async fn prepared_name(conn: &mut sqlx::PgConnection, fragment: &str) -> String {
    sqlx::query_scalar("select name from pg_prepared_statements where statement like $1")
        .bind(format!("%{fragment}%"))
        .fetch_one(&mut *conn)
        .await
        .expect("the statement was prepared")
}

/// The plan of `execute {name}({args})` on `conn`, as JSON text.
async fn plan_of(conn: &mut sqlx::PgConnection, name: &str, args: &str) -> String {
    let plan: serde_json::Value =
        sqlx::query_scalar(&format!("explain (format json) execute {name}({args})"))
            .fetch_one(&mut *conn)
            .await
            .unwrap();
    plan.to_string()
}

/// A fresh deployment: the projection tables have no statistics, and PostgreSQL
/// switches each prepared statement to a generic plan after five executions, kept
/// until the table is next analyzed. Planned while the tables were nearly empty,
/// `board_view`'s locked read of the appointments a batch touched walks every row of
/// each Board, and `appointment_durations`' read every row of the generation. Once the
/// projector has analyzed the tables that doubled (as the server's login, which does
/// not own them), both are primary-key lookups; with custom plans alone the Board read
/// still walks the Board.
#[tokio::test]
async fn young_projection_tables_analyzed_as_they_double_give_the_locked_reads_key_lookups() {
    let owner = helpers::fresh_database().await;
    let server = helpers::server_pool(&owner).await;
    let mut conn = server.acquire().await.unwrap();
    let board = |i: i64| Uuid::from_u128(i as u128 + 1);
    let grow = |from: i64, to: i64| {
        sqlx::query(
            "with a as (insert into board_view_appointments \
                          (generation, board_id, id, applied, doc, board_version) \
                        select 1, ('00000000-0000-0000-0000-' || lpad(to_hex(i % 50 + 1), 12, '0'))::uuid, \
                               gen_random_uuid(), 1, jsonb_build_object('pad', repeat('x', 800)), i \
                          from generate_series($1::bigint, $2) as i) \
             insert into appointment_durations (generation, appointment_id, version, doc) \
             select 1, gen_random_uuid(), 1, jsonb_build_object('pad', repeat('x', 800)) \
               from generate_series($1::bigint, $2)",
        )
        .bind(from)
        .bind(to)
    };
    sqlx::query(
        "insert into board_view (generation, id, version, position, doc) \
         select 1, ('00000000-0000-0000-0000-' || lpad(to_hex(i), 12, '0'))::uuid, 1, 1, '{}' \
           from generate_series(1, 50) as i",
    )
    .execute(&mut *conn)
    .await
    .unwrap();
    grow(1, 5).execute(&mut *conn).await.unwrap();
    for _ in 0..7 {
        Projection::BoardView
            .load_docs(
                &mut conn,
                1,
                &[board(0), board(1)],
                Some(&[Uuid::new_v4()][..]),
            )
            .await
            .unwrap();
        Projection::AppointmentDurations
            .load_docs(&mut conn, 1, &[Uuid::new_v4(), Uuid::new_v4()], None)
            .await
            .unwrap();
    }
    grow(6, 6000).execute(&mut *conn).await.unwrap();
    let boards = prepared_name(&mut conn, "for update of v").await;
    let durations = prepared_name(&mut conn, "from appointment_durations where generation").await;
    let board_args = format!(
        "1, '{{{},{}}}', '{{{}}}'",
        board(0),
        board(1),
        Uuid::new_v4()
    );
    let duration_args = format!("1, '{{{},{}}}'", Uuid::new_v4(), Uuid::new_v4());
    let by_key = |plan: &str, index: &str| plan.contains(index) && plan.contains("Index Cond");
    let plan = plan_of(&mut conn, &boards, &board_args).await;
    assert!(
        !by_key(&plan, "board_view_appointments_pkey"),
        "without statistics the Board read walks the Board: {plan}"
    );
    let plan = plan_of(&mut conn, &durations, &duration_args).await;
    assert!(
        !plan.contains("appointment_durations_pkey"),
        "the generic plan made on a near-empty table scans: {plan}"
    );
    // Custom plans alone: the Board read still walks the Board.
    sqlx::query("begin").execute(&mut *conn).await.unwrap();
    sqlx::query(&format!("select {}", careboard::projector::CUSTOM_PLANS))
        .execute(&mut *conn)
        .await
        .unwrap();
    let plan = plan_of(&mut conn, &boards, &board_args).await;
    sqlx::query("rollback").execute(&mut *conn).await.unwrap();
    assert!(
        !by_key(&plan, "board_view_appointments_pkey"),
        "a custom plan without statistics still walks the Board: {plan}"
    );
    // The projector's check finds both tables doubled (from no statistics at all) and
    // analyzes them as the server's login.
    // (The inserting backend reports its row counts within seconds; this hurries it.)
    let _ = sqlx::query("select pg_stat_force_next_flush()")
        .execute(&mut *conn)
        .await;
    wait_for("the tables' row counts", Duration::from_secs(15), || {
        let server = server.clone();
        async move {
            careboard::projector::statistics::doubled(&server)
                .await
                .unwrap()
                .len()
                >= 2
        }
    })
    .await;
    let mut doubled = careboard::projector::statistics::doubled(&server)
        .await
        .unwrap();
    doubled.sort();
    assert_eq!(
        doubled,
        ["appointment_durations", "board_view_appointments"]
    );
    for table in &doubled {
        careboard::projector::statistics::analyze(&server, table)
            .await
            .unwrap();
    }
    let plan = plan_of(&mut conn, &boards, &board_args).await;
    assert!(
        by_key(&plan, "board_view_appointments_pkey"),
        "with statistics the Board read looks its rows up by key: {plan}"
    );
    let plan = plan_of(&mut conn, &durations, &duration_args).await;
    assert!(
        by_key(&plan, "appointment_durations_pkey"),
        "replanned with statistics, the read looks its rows up by key: {plan}"
    );
    // The headers are looked up by key too, not by the listing index with the ids a
    // condition tested on every header of the generation.
    let plan = plan_of(&mut conn, &boards, &board_args).await;
    assert!(
        by_key(&plan, "board_view_pkey") && !plan.contains("board_view_listing_idx"),
        "the Board headers are read by key: {plan}"
    );
    assert!(
        careboard::projector::statistics::doubled(&server)
            .await
            .unwrap()
            .is_empty(),
        "nothing has doubled since"
    );
    // Only projection tables: the function refuses any other.
    let refused = careboard::projector::statistics::analyze(&server, "events").await;
    assert!(refused.is_err(), "analyzing another table was refused");
}

/// A fresh database with 20 Board headers (ids 1–20) of 100 appointment rows each (the
/// i-th of Board b, from 0, has id `(b + 1) << 32 | i`), no statistics; its owner's pool.
async fn twenty_boards_of_a_hundred_appointment_rows() -> PgPool {
    let owner = helpers::fresh_database().await;
    sqlx::query(
        "insert into board_view (generation, id, version, position, doc) \
         select 1, ('00000000-0000-0000-0000-' || lpad(to_hex(b + 1), 12, '0'))::uuid, 1, 1, '{}' \
           from generate_series(0, 19) as b",
    )
    .execute(&owner)
    .await
    .unwrap();
    sqlx::query(
        "insert into board_view_appointments (generation, board_id, id, applied, doc, board_version) \
         select 1, ('00000000-0000-0000-0000-' || lpad(to_hex(b + 1), 12, '0'))::uuid, \
                ('00000000-0000-0000-0000-' || lpad(to_hex(((b::bigint + 1) << 32) + i), 12, '0'))::uuid, \
                1, jsonb_build_object('pad', repeat('x', 200)), i \
           from generate_series(0, 19) as b, generate_series(0, 99) as i",
    )
    .execute(&owner)
    .await
    .unwrap();
    owner
}

/// The projector's statements are prepared, and PostgreSQL runs one on a generic plan
/// after five executions. Once the projector has analyzed the tables (as it does when a
/// young one doubles, from 8 pages), the generic plan of the paired Board read is a key
/// lookup per pair. (Without any statistics it walks the Board's rows once per pair,
/// where the listed read walked them once per Board: see the test above.)
#[tokio::test]
async fn once_analyzed_a_generic_plan_of_the_paired_board_read_looks_up_by_key() {
    let owner = twenty_boards_of_a_hundred_appointment_rows().await;
    let server = helpers::server_pool(&owner).await;
    for table in ["board_view", "board_view_appointments"] {
        careboard::projector::statistics::analyze(&server, table)
            .await
            .unwrap();
    }
    let mut tx = server.begin().await.unwrap();
    sqlx::query("set local plan_cache_mode = force_generic_plan")
        .execute(&mut *tx)
        .await
        .unwrap();
    let board = |i: i64| Uuid::from_u128(i as u128 + 1);
    let boards: Vec<Uuid> = (0..20).map(board).collect();
    let pair_boards: Vec<Uuid> = (0..20).flat_map(|b| [board(b), board(b)]).collect();
    let pair_ids: Vec<Uuid> = (0..20)
        .flat_map(|b| [Uuid::from_u128(((b as u128 + 1) << 32) + 7), Uuid::new_v4()])
        .collect();
    // Prepared, as the projector's statements are, and executed on its generic plan.
    sqlx::query(&format!(
        "prepare paired (int, uuid[], uuid[], uuid[]) as {}",
        careboard::projections::store::paired_board_read_sql()
    ))
    .execute(&mut *tx)
    .await
    .unwrap();
    let array = |ids: &[Uuid]| {
        let ids: Vec<String> = ids.iter().map(Uuid::to_string).collect();
        format!("'{{{}}}'", ids.join(","))
    };
    let plan: serde_json::Value = sqlx::query_scalar(&format!(
        "explain (analyze, buffers, format json) execute paired(1, {}, {}, {})",
        array(&boards),
        array(&pair_boards),
        array(&pair_ids)
    ))
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    let pages = pages_visited(&plan);
    let bound = 3 * pair_ids.len() as i64 + 4 * boards.len() as i64;
    assert!(
        pages <= bound,
        "the generic plan visits {pages} pages (at most {bound}): {plan}"
    );
    tx.rollback().await.unwrap();
}

/// Shared pages (hit or read) a statement visited, from its `explain (analyze, buffers,
/// format json)`.
fn pages_visited(plan: &serde_json::Value) -> i64 {
    let root = &plan[0]["Plan"];
    root["Shared Hit Blocks"].as_i64().unwrap() + root["Shared Read Blocks"].as_i64().unwrap()
}

/// A `board_view` batch reads its Boards with only the appointments it touched. With
/// the touched appointments in one list, every Board was searched for every one of
/// them: b × n index searches for n appointments over b Boards (~900 pages a call at
/// the bench's half rate). Read as (Board, appointment) pairs, each is one key lookup,
/// and each Board comes back with exactly its own touched appointments.
#[tokio::test]
async fn a_batchs_board_read_looks_each_touched_appointment_up_under_its_own_board() {
    use careboard::projections::store::{
        listed_board_read_sql, load_boards_touched, paired_board_read_sql,
    };
    let owner = twenty_boards_of_a_hundred_appointment_rows().await;
    let board = |i: i64| Uuid::from_u128(i as u128 + 1);
    let appointment = |b: i64, i: i64| Uuid::from_u128(((b as u128 + 1) << 32) + i as u128);
    for table in ["board_view", "board_view_appointments"] {
        sqlx::query(&format!("analyze {table}"))
            .execute(&owner)
            .await
            .unwrap();
    }
    let server = helpers::server_pool(&owner).await;
    let mut tx = server.begin().await.unwrap();
    // Every Board touched: one stored appointment and one new one each.
    let boards: Vec<Uuid> = (0..20).map(board).collect();
    let touched: Vec<(Uuid, Uuid)> = (0..20)
        .flat_map(|b| {
            [
                (board(b), appointment(b, b * 3)),
                (board(b), Uuid::new_v4()),
            ]
        })
        .collect();
    let docs = load_boards_touched(&mut tx, 1, &boards, &touched)
        .await
        .unwrap();
    assert_eq!(docs.len(), 20, "every Board read");
    for b in 0..20 {
        let applied: Vec<String> = docs[&board(b)]["applied"]
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        assert_eq!(
            applied,
            [appointment(b, b * 3).to_string()],
            "Board {b} comes with its own stored touched appointment only"
        );
    }
    let (pair_boards, pair_ids): (Vec<Uuid>, Vec<Uuid>) = touched.iter().copied().unzip();
    // Run by `explain analyze`: the row locks roll back with `tx`.
    let explain = |sql: &str| format!("explain (analyze, buffers, format json) {sql}");
    let plan: serde_json::Value = sqlx::query_scalar(&explain(paired_board_read_sql()))
        .bind(1)
        .bind(&boards)
        .bind(&pair_boards)
        .bind(&pair_ids)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    let paired = pages_visited(&plan);
    let plan: serde_json::Value = sqlx::query_scalar(&explain(&listed_board_read_sql()))
        .bind(1)
        .bind(&boards)
        .bind(&pair_ids)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    let listed = pages_visited(&plan);
    // A key lookup per pair (index root and leaf, a heap page) and per Board (the
    // same, and its row lock); the list made 20 × 40 searches.
    let bound = 3 * touched.len() as i64 + 4 * boards.len() as i64;
    assert!(
        paired <= bound,
        "the paired read visits {paired} pages for {} pairs over {} Boards (at most {bound}); \
         the listed read {listed}",
        touched.len(),
        boards.len()
    );
    assert!(
        listed > 2 * bound,
        "the listed read searched every Board for every appointment: {listed} pages"
    );
    tx.rollback().await.unwrap();
}

/// The projector itself analyzes a young projection table once it has grown to
/// [`careboard::projector::statistics::YOUNG_PAGES`] pages without statistics.
#[tokio::test]
async fn the_projector_analyzes_a_young_projection_table_once_it_has_doubled() {
    let pool = helpers::fresh_database().await;
    let store = helpers::store(&pool);
    let projector = start_projector(
        &pool,
        &store,
        DaemonConfig {
            fresh_statistics: true,
            ..config()
        },
    );
    let board = open_board(&store, "Young").await;
    let analyzed = || {
        let pool = pool.clone();
        async move {
            let tuples: f32 = sqlx::query_scalar(
                "select reltuples from pg_class where relname = 'appointment_view'",
            )
            .fetch_one(&pool)
            .await
            .unwrap();
            tuples > 0.0
        }
    };
    assert!(!analyzed().await, "no statistics before");
    // Well past eight pages of appointment documents (`appointment_view`'s; the
    // durations' rows keep only their columns, a few pages for 200).
    for i in 0..200 {
        request_appointment(&store, board, &format!("young {i}")).await;
    }
    caught_up(&pool).await;
    wait_for(
        "appointment_view analyzed by the projector",
        Duration::from_secs(30),
        analyzed,
    )
    .await;
    projector.stop().await.unwrap();
}

/// The stored header of a Board: the version its document holds, and its column's.
async fn header_versions(pool: &PgPool, board: Uuid) -> (i64, i64) {
    sqlx::query_as("select (doc->>'version')::bigint, version from board_view where id = $1")
        .bind(board)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_batch_of_appointment_events_writes_only_the_headers_counters_and_every_reader_sees_the_folded_document(
) {
    use careboard::time_travel::{board_doc_as_of, Snapshots};
    let pool = helpers::fresh_database().await;
    let store = helpers::store(&pool);
    let projector = start_projector(
        &pool,
        &store,
        DaemonConfig {
            header_counters: true,
            snapshot_every: 2,
            ..config()
        },
    );
    let board = open_board(&store, "Counters").await;
    caught_up(&pool).await;
    let mut snapshots_compared = 0;
    for i in 0..6 {
        request_appointment(&store, board, &format!("Counted {i}")).await;
        caught_up(&pool).await;
        let fold = serde_json::to_string(&fresh_fold(&pool, board).await).unwrap();
        // A query's read (whole, then kept and refreshed), the list's, the batch's
        // locked read, and time travel with and without snapshots: byte for byte the
        // fold's.
        let read = serde_json::to_string(&board_doc(&pool, board).await.unwrap()).unwrap();
        assert_eq!(read, fold, "read after appointment {i}");
        let listed = read::boards(&pool, &Default::default(), None, 10)
            .await
            .unwrap();
        assert_eq!(serde_json::to_string(&listed[0]).unwrap(), fold);
        let mut tx = pool.begin().await.unwrap();
        let generation: i32 = sqlx::query_scalar("select generation from board_view where id = $1")
            .bind(board)
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        let mut loaded = Projection::BoardView
            .load_docs(&mut tx, generation, &[board], None)
            .await
            .unwrap();
        let loaded: BoardDoc = serde_json::from_value(loaded.remove(&board).unwrap()).unwrap();
        assert_eq!(serde_json::to_string(&loaded).unwrap(), fold);
        drop(tx);
        let now = chrono::Utc::now();
        for snapshots in [Snapshots::Use, Snapshots::Ignore] {
            let past = board_doc_as_of(&pool, board, now, snapshots).await.unwrap();
            assert_eq!(serde_json::to_string(&past).unwrap(), fold);
        }
        // The newest Board snapshot, when it is of this version, is the fold too.
        let snapshot: Option<serde_json::Value> = sqlx::query_scalar(
            "select doc from snapshots where kind = 'board' and id = $1 and version = $2",
        )
        .bind(board)
        .bind(i + 2)
        .fetch_optional(&pool)
        .await
        .unwrap();
        if let Some(snapshot) = snapshot {
            let snapshot: BoardDoc = serde_json::from_value(snapshot).unwrap();
            assert_eq!(serde_json::to_string(&snapshot).unwrap(), fold);
            snapshots_compared += 1;
        }
    }
    assert!(snapshots_compared >= 2, "Board snapshots were written");
    // The header's document was not rewritten by the appointments' batches: only its
    // columns moved.
    let (in_doc, in_column) = header_versions(&pool, board).await;
    assert_eq!(in_column, 7);
    assert!(
        in_doc < in_column,
        "the document holds version {in_doc}, the column {in_column}"
    );
    projector.stop().await.unwrap();
}

/// `appointment_durations`' flat columns of one row.
type DurationRow = (
    Option<Uuid>,
    Option<String>,
    Option<String>,
    Option<chrono::DateTime<chrono::Utc>>,
    Option<chrono::DateTime<chrono::Utc>>,
    Option<chrono::DateTime<chrono::Utc>>,
    Option<chrono::DateTime<chrono::Utc>>,
    Option<chrono::DateTime<chrono::Utc>>,
    i64,
);

/// With `appointment_durations` folded from its flat columns (rows written before on
/// the document path among them), every row holds what a fresh fold of its stream
/// gives, and the rows the flat path wrote keep no document.
#[tokio::test]
async fn flat_durations_fold_as_a_fresh_fold_and_keep_no_document() {
    use careboard::domain::Appointment;
    use careboard::event_store::read_stream_between;
    use careboard::projections::StreamDoc;

    let pool = helpers::fresh_database().await;
    let store = helpers::store(&pool);
    let board = open_board(&store, "Flat durations").await;
    let scheduled = || AppointmentEvent::AppointmentScheduled {
        provider_id: Uuid::new_v4().into(),
        shift_id: Uuid::new_v4().into(),
        estimated_time: chrono::Utc::now(),
    };
    // Appointment i goes through `lives[i]` events; the first two start on the
    // document path.
    let lives: [&[usize]; 5] = [&[0, 1, 2, 3], &[0, 1], &[0, 1, 2, 3], &[0], &[0, 9]];
    let ids: Vec<Uuid> = lives.iter().map(|_| Uuid::new_v4()).collect();
    let event = |i: usize, n: usize| match lives[i][n] {
        0 => requested(board, &format!("flat {i}")),
        1 => scheduled(),
        2 => AppointmentEvent::AppointmentStarted {},
        3 => AppointmentEvent::AppointmentFinished {},
        _ => AppointmentEvent::AppointmentCancelled {
            reason: "changed plans".into(),
        },
    };
    let mut conn = pool.acquire().await.unwrap();
    let documented = start_projector(&pool, &store, config());
    for (i, id) in ids.iter().enumerate().take(2) {
        append_in(&mut conn, *id, board, 0, event(i, 0)).await;
    }
    caught_up(&pool).await;
    documented.stop().await.unwrap();

    let flat = start_projector(
        &pool,
        &store,
        DaemonConfig {
            flat_durations: true,
            ..config()
        },
    );
    // One event per stream per round, each round its own batches.
    for n in 0..4 {
        for (i, id) in ids.iter().enumerate() {
            let first = if i < 2 { 1 } else { 0 };
            if n < first || n >= lives[i].len() {
                continue;
            }
            append_in(&mut conn, *id, board, n as i64, event(i, n)).await;
        }
        caught_up(&pool).await;
    }
    flat.stop().await.unwrap();

    for (i, id) in ids.iter().enumerate() {
        let mut fresh = StreamDoc::<Appointment>::default();
        for e in read_stream_between(&mut *conn, *id, 0, i64::MAX)
            .await
            .unwrap()
        {
            fresh.apply(&e).unwrap();
        }
        let a = fresh.state.as_ref().unwrap();
        let expected: DurationRow = (
            Some(a.board_id.as_uuid()),
            Some(a.specialty.clone()),
            Some(a.region.clone()),
            Some(a.requested_at),
            a.scheduled_at,
            a.started_at,
            a.finished_at,
            a.cancelled_at,
            fresh.applied,
        );
        let row: DurationRow = sqlx::query_as(&format!(
            "select d.board_id, d.specialty, d.region, d.requested_at, d.scheduled_at, \
                    d.started_at, d.finished_at, d.cancelled_at, d.version \
               from appointment_durations d {} where d.appointment_id = $1",
            Projection::AppointmentDurations.live_join("d")
        ))
        .bind(id)
        .fetch_one(&pool)
        .await
        .unwrap();
        let has_doc: bool = sqlx::query_scalar(&format!(
            "select d.doc is not null from appointment_durations d {} where d.appointment_id = $1",
            Projection::AppointmentDurations.live_join("d")
        ))
        .bind(id)
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(row, expected, "appointment {i}: the row and a fresh fold");
        assert_eq!(fresh.applied, lives[i].len() as i64, "appointment {i}");
        assert!(!has_doc, "appointment {i}: written on the flat path");
    }
}
