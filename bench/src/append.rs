//! The `append` matrix at the storage level: the event store's optimistic append alone
//! (no command logic), 1 / 8 / 32 writers, single events and 10-event batches, each
//! writer on its own stream; and one hot stream all writers fight over.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use anyhow::Result;
use serde_json::json;
use sqlx::PgPool;
use tokio::sync::Mutex;
use uuid::Uuid;

use careboard::domain::StreamType;
use careboard::error::AppError;
use careboard::event_store::append::{append, StreamWrite};

use crate::{closed_loop, Row, OPEN_LOOP_FIRST_ID};

/// A stream one writer appends to, with the version it last wrote.
struct OwnStream {
    id: Uuid,
    version: Mutex<i64>,
}

fn events(n: usize) -> Vec<(String, serde_json::Value)> {
    (0..n)
        .map(|_| {
            (
                "BenchEvent".to_string(),
                json!({"patientName": "Sam Lee", "reason": "fever"}),
            )
        })
        .collect()
}

async fn append_once(
    pool: &PgPool,
    stream: Uuid,
    expected_version: i64,
    batch: usize,
) -> Result<(), AppError> {
    let mut tx = pool.begin().await?;
    let write = StreamWrite {
        stream_id: stream,
        stream_type: StreamType::Appointment,
        board_id: None,
        expected_version,
        events: events(batch),
    };
    append(&mut tx, &[write], &json!({"actor": "bench"})).await?;
    tx.commit().await?;
    Ok(())
}

/// `writers` writers, each on its own stream, appending `batch` events at a time.
/// The rate is in events/s, comparable with pgbench's one-row transactions.
pub async fn own_streams(
    pool: &PgPool,
    writers: usize,
    batch: usize,
    seconds: u64,
    baseline: f64,
) -> Result<Row> {
    let streams: Arc<Vec<OwnStream>> = Arc::new(
        (0..writers)
            .map(|_| OwnStream {
                id: Uuid::now_v7(),
                version: Mutex::new(0),
            })
            .collect(),
    );
    let pool2 = pool.clone();
    let (rate, hist, errors) = closed_loop(writers, seconds, move |i| {
        let pool = pool2.clone();
        let streams = streams.clone();
        async move {
            // Closed loop: writer i >> 32 owns its stream. Open loop: requests take the
            // streams in turn and queue for them, as a stream's appends do.
            let n = if i >= OPEN_LOOP_FIRST_ID {
                ((i - OPEN_LOOP_FIRST_ID) as usize) % streams.len()
            } else {
                (i >> 32) as usize % streams.len()
            };
            let stream = &streams[n];
            let mut version = stream.version.lock().await;
            match append_once(&pool, stream.id, *version, batch).await {
                Ok(()) => {
                    *version += batch as i64;
                    true
                }
                Err(_) => false,
            }
        }
    })
    .await?;
    Ok(Row {
        scenario: format!(
            "append: storage, {batch} event(s)/append, {writers} writer(s) (events/s)"
        ),
        rate: rate * batch as f64,
        latency: Some(hist),
        errors,
        baseline_name: format!("pgbench INSERT+UPDATE, {writers} client(s)"),
        baseline_rate: baseline,
    })
}

/// Every writer appends one event at a time to the same stream, reading its version
/// first: optimistic concurrency under contention. The rate counts successful appends
/// of the closed loop; errors are the conflicts.
pub async fn hot_stream(pool: &PgPool, writers: usize, seconds: u64, baseline: f64) -> Result<Row> {
    let stream = Uuid::now_v7();
    append_once(pool, stream, 0, 1)
        .await
        .map_err(|e| anyhow::anyhow!(e.describe()))?;
    // (attempts, successes) of the closed loop.
    let counts = Arc::new((AtomicI64::new(0), AtomicI64::new(0)));
    let pool2 = pool.clone();
    let counter = counts.clone();
    let started = std::time::Instant::now();
    let (_, hist, conflicts) = closed_loop(writers, seconds, move |i| {
        let pool = pool2.clone();
        let counter = counter.clone();
        async move {
            let version: Result<i64, _> =
                sqlx::query_scalar("select version from streams where id = $1")
                    .bind(stream)
                    .fetch_one(&pool)
                    .await;
            let ok = match version {
                Ok(v) => append_once(&pool, stream, v, 1).await.is_ok(),
                Err(_) => false,
            };
            if i < OPEN_LOOP_FIRST_ID {
                counter.0.fetch_add(1, Ordering::Relaxed);
                counter.1.fetch_add(ok as i64, Ordering::Relaxed);
            }
            ok
        }
    })
    .await?;
    let closed_seconds = (started.elapsed().as_secs_f64() / 2.0).max(0.001);
    let attempts = counts.0.load(Ordering::Relaxed).max(1) as f64;
    let successes = counts.1.load(Ordering::Relaxed) as f64;
    Ok(Row {
        scenario: format!(
            "append: one hot stream, {writers} writer(s), read version + append \
             (errors = conflicts; {:.0}% of closed-loop attempts)",
            (attempts - successes) * 100.0 / attempts
        ),
        rate: successes / closed_seconds,
        latency: Some(hist),
        errors: conflicts,
        baseline_name: format!("pgbench INSERT+UPDATE, {writers} client(s)"),
        baseline_rate: baseline,
    })
}

/// `requestAppointment` as the command path made it before the append became one
/// statement and the Board read a guard, built from the store's public parts, for a
/// before/after in one run: five round trips, `BEGIN` with the lock timeout, the
/// Board's row locked `FOR SHARE` and its events read in one statement, the stream row
/// inserted, the events inserted, `COMMIT`.
pub async fn request_appointment_before(
    store: &careboard::event_store::EventStore,
    command: careboard::commands::RequestAppointment,
) -> Result<(), AppError> {
    use careboard::domain::appointment::{self, AppointmentCommand};
    use careboard::domain::{AppointmentId, Board};
    use careboard::event_store::{fold_recorded, read_stream_locked, RowLock};
    let board_id = command.board_id.as_uuid();
    let mut tx = store
        .pool()
        .begin_with(format!(
            "begin; set local lock_timeout = '{}ms'",
            store.lock_timeout().as_millis().max(1)
        ))
        .await?;
    let events = read_stream_locked(&mut tx, board_id, RowLock::Share).await?;
    let board = fold_recorded::<Board>(&events)?;
    let events = appointment::decide(
        None,
        AppointmentCommand::Request {
            board,
            patient_id: command.patient_id,
            patient_name: command.patient_name,
            specialty: command.specialty,
            region: command.region,
            reason: command.reason,
        },
    )?;
    let write = StreamWrite::new(
        StreamType::Appointment,
        AppointmentId::new_random().as_uuid(),
        Some(board_id),
        0,
        &events,
    );
    let meta = json!({
        "correlationId": Uuid::new_v4().to_string(),
        "causationId": null,
        "actor": "system",
        "actorRole": "system",
        "actorName": "system",
        "operation": "requestAppointment",
        "operationName": null,
    });
    // The earlier append: the stream row, then the events, two statements.
    sqlx::query("insert into streams (id, type, board_id, version) values ($1, $2, $3, $4)")
        .bind(write.stream_id)
        .bind(write.stream_type.as_str())
        .bind(write.board_id)
        .bind(write.events.len() as i64)
        .execute(&mut *tx)
        .await?;
    let n = write.events.len();
    let ids: Vec<Uuid> = (0..n).map(|_| Uuid::now_v7()).collect();
    let stream_ids = vec![write.stream_id; n];
    let versions: Vec<i64> = (1..=n as i64).collect();
    let types: Vec<String> = write.events.iter().map(|(t, _)| t.clone()).collect();
    let datas: Vec<serde_json::Value> = write.events.iter().map(|(_, d)| d.clone()).collect();
    let _rows: Vec<(i64, Uuid, i64, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
        "insert into events (id, stream_id, version, type, data, metadata) \
         select id, stream_id, version, type, data, $6 \
           from unnest($1::uuid[], $2::uuid[], $3::bigint[], $4::text[], $5::jsonb[]) \
                as t(id, stream_id, version, type, data) \
         returning seq, stream_id, version, recorded_at",
    )
    .bind(&ids)
    .bind(&stream_ids)
    .bind(&versions)
    .bind(&types)
    .bind(&datas)
    .bind(&meta)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    store.appended_signal().notify_one();
    Ok(())
}
