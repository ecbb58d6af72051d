//! The `asof` scenario: `board(asOf)` latency on Boards of 100, 10,000 and 100,000
//! events, folded from snapshots and by plain replay, next to the plain read of the same
//! rows (the floor any fold stands on).

use std::time::{Duration, Instant};

use anyhow::Result;
use hdrhistogram::Histogram;
use sqlx::PgPool;
use uuid::Uuid;

use careboard::event_store::{EventStore, EVENT_COLUMNS};
use careboard::time_travel::{board_doc_as_of, Snapshots};

pub struct AsOfResult {
    pub events: usize,
    pub with_snapshots: Histogram<u64>,
    pub without: Histogram<u64>,
    pub plain_read: Histogram<u64>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram")
}

/// Loads one Board of about `events` events, lets the projector snapshot it, and
/// times `iterations` reads of it as of now.
pub async fn measure(pool: &PgPool, events: usize, iterations: usize) -> Result<AsOfResult> {
    let history = crate::project::generate_shaped(events, 1, events / 7 + 1);
    let board: Uuid = history[0].2;
    crate::project::load(pool, &history).await?;
    sqlx::query("analyze").execute(pool).await?;
    // The projector folds the history once, writing snapshots as it goes.
    let store = EventStore::new(pool.clone(), Duration::from_secs(5));
    let projector = crate::project::start_projector(pool, &store);
    crate::project::wait_caught_up(pool).await?;
    projector.stop().await?;
    let at = chrono::Utc::now();
    let mut with_snapshots = histogram();
    let mut without = histogram();
    let mut plain_read = histogram();
    for _ in 0..iterations {
        let t = Instant::now();
        board_doc_as_of(pool, board, at, Snapshots::Use)
            .await
            .map_err(|e| anyhow::anyhow!(e.describe()))?;
        with_snapshots.record(t.elapsed().as_micros() as u64)?;
        let t = Instant::now();
        board_doc_as_of(pool, board, at, Snapshots::Ignore)
            .await
            .map_err(|e| anyhow::anyhow!(e.describe()))?;
        without.record(t.elapsed().as_micros() as u64)?;
        let t = Instant::now();
        let rows: Vec<careboard::event_store::RecordedEvent> = sqlx::query_as(&format!(
            "select {EVENT_COLUMNS} from streams s join events e on e.stream_id = s.id \
              where s.board_id = $1 and e.recorded_at <= $2 order by e.stream_id, e.version"
        ))
        .bind(board)
        .bind(at)
        .fetch_all(pool)
        .await?;
        std::hint::black_box(rows);
        plain_read.record(t.elapsed().as_micros() as u64)?;
    }
    Ok(AsOfResult {
        events: history.len(),
        with_snapshots,
        without,
        plain_read,
    })
}
