//! The projector's bookkeeping in `projection_state` and `dead_letters`: checkpoints
//! (moved only by compare-and-set), generations, rebuild requests, status and lag.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::event_store::log::{self, Cursor};
pub use crate::projections::registry::GenerationStatus;
use crate::projections::Projection;

/// One generation of a projection, as the worker tracks it.
#[derive(Debug, Clone)]
pub struct Generation {
    pub projection: Projection,
    pub generation: i32,
    pub status: GenerationStatus,
    pub cursor: Cursor,
}

/// Loads the live and building generations of every projection.
pub async fn active_generations(pool: &PgPool) -> Result<Vec<Generation>, sqlx::Error> {
    let rows: Vec<(String, i32, String, String, i64)> = sqlx::query_as(
        "select name, generation, status, tx::text, seq from projection_state \
         where status = any($1) order by name, generation",
    )
    .bind(GenerationStatus::active())
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(name, generation, status, tx, seq)| {
            Some(Generation {
                projection: Projection::parse(&name)?,
                generation,
                status: GenerationStatus::parse(&status)?,
                cursor: Cursor::from_text(&tx, seq).ok()?,
            })
        })
        .collect())
}

/// Makes sure every projection has a live generation, and starts a side-by-side
/// rebuild of any whose live generation was built by another projection version.
pub async fn ensure_generations(pool: &PgPool) -> Result<(), sqlx::Error> {
    for projection in Projection::ALL {
        match live_generation(pool, projection)
            .await?
            .map(|l| l.projection_version)
        {
            None => {
                sqlx::query(
                    "insert into projection_state (name, generation, status, projection_version) \
                     select $1, coalesce(max(generation), 0) + 1, $3, $2 \
                       from projection_state where name = $1 \
                     on conflict do nothing",
                )
                .bind(projection.name())
                .bind(projection.version())
                .bind(GenerationStatus::Live.as_str())
                .execute(pool)
                .await?;
            }
            Some(v) if v != projection.version() => {
                tracing::info!(
                    projection = projection.name(),
                    from = v,
                    to = projection.version(),
                    "projection version changed; rebuilding side by side"
                );
                request_rebuild(pool, projection).await?;
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Starts a side-by-side rebuild (or returns the one already running): a new
/// generation from the beginning of the log, swapped in when it has caught up.
pub async fn request_rebuild(pool: &PgPool, projection: Projection) -> Result<i32, sqlx::Error> {
    let mut tx = pool.begin().await?;
    // Serialise concurrent requests for the same projection.
    sqlx::query("select pg_advisory_xact_lock(hashtext('careboard-rebuild-' || $1))")
        .bind(projection.name())
        .execute(&mut *tx)
        .await?;
    let existing: Option<i32> = sqlx::query_scalar(
        "select generation from projection_state where name = $1 and status = $2",
    )
    .bind(projection.name())
    .bind(GenerationStatus::Building.as_str())
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(g) = existing {
        tx.commit().await?;
        return Ok(g);
    }
    let target = log::end_position(&mut *tx).await?;
    let generation: i32 = sqlx::query_scalar(
        "insert into projection_state (name, generation, status, projection_version, target_seq) \
         select $1, coalesce(max(generation), 0) + 1, $4, $2, $3 \
           from projection_state where name = $1 \
         returning generation",
    )
    .bind(projection.name())
    .bind(projection.version())
    .bind(target)
    .bind(GenerationStatus::Building.as_str())
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(generation)
}

/// Swaps a caught-up building generation in for the live one, atomically. Returns the
/// retired generation, whose documents the caller then deletes.
pub async fn switch_generation(
    pool: &PgPool,
    projection: Projection,
    building: i32,
) -> Result<Option<i32>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let rows: Vec<(i32, String, bool)> = sqlx::query_as(
        "select p.generation, p.status, \
                (p.tx, p.seq) <= (select b.tx, b.seq from projection_state b \
                                    where b.name = $1 and b.generation = $2) \
           from projection_state p where p.name = $1 and p.status = any($3) \
           for update",
    )
    .bind(projection.name())
    .bind(building)
    .bind(GenerationStatus::active())
    .fetch_all(&mut *tx)
    .await?;
    let is = |status: &str, g: GenerationStatus| GenerationStatus::parse(status) == Some(g);
    let live = rows.iter().find(|r| is(&r.1, GenerationStatus::Live));
    let caught_up = live.map(|r| r.2).unwrap_or(true);
    if !caught_up
        || !rows
            .iter()
            .any(|r| r.0 == building && is(&r.1, GenerationStatus::Building))
    {
        return Ok(None);
    }
    if let Some((old, _, _)) = live {
        set_status(&mut tx, projection, *old, GenerationStatus::Retired).await?;
    }
    set_status(&mut tx, projection, building, GenerationStatus::Live).await?;
    tx.commit().await?;
    Ok(live.map(|r| r.0))
}

async fn set_status(
    tx: &mut sqlx::PgConnection,
    projection: Projection,
    generation: i32,
    status: GenerationStatus,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "update projection_state set status = $3, updated_at = clock_timestamp() \
         where name = $1 and generation = $2",
    )
    .bind(projection.name())
    .bind(generation)
    .bind(status.as_str())
    .execute(tx)
    .await?;
    Ok(())
}

/// One dead-lettered event.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub event_seq: i64,
    pub event_id: Uuid,
    pub stream_id: Uuid,
    pub stream_version: i64,
    pub document_id: Uuid,
    pub error: String,
    pub attempts: i32,
}

pub async fn record_dead_letters(
    conn: &mut PgConnection,
    projection: Projection,
    generation: i32,
    letters: &[DeadLetter],
) -> Result<(), sqlx::Error> {
    for d in letters {
        sqlx::query(
            "insert into dead_letters (projection, generation, event_seq, event_id, stream_id, \
               stream_version, document_id, error, attempts) \
             values ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(projection.name())
        .bind(generation)
        .bind(d.event_seq)
        .bind(d.event_id)
        .bind(d.stream_id)
        .bind(d.stream_version)
        .bind(d.document_id)
        .bind(&d.error)
        .bind(d.attempts)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// What `projections` (GraphQL and CLI) shows for one generation.
#[derive(Debug, Clone, serde::Serialize, async_graphql::SimpleObject)]
#[serde(rename_all = "camelCase")]
pub struct ProjectionStatus {
    pub name: String,
    pub generation: i32,
    pub state: String,
    pub projection_version: i32,
    pub checkpoint_tx: String,
    pub checkpoint_position: i64,
    pub events_applied: i64,
    /// Committed events not yet applied.
    pub lag_events: i64,
    /// Age of the oldest event not yet applied, in seconds (0 when caught up).
    pub lag_seconds: f64,
    pub dead_letters: i64,
    /// For a building generation: the fraction of the log applied so far.
    pub rebuild_progress: Option<f64>,
    pub updated_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct StateRow {
    name: String,
    generation: i32,
    status: String,
    projection_version: i32,
    tx: String,
    seq: i64,
    events_applied: i64,
    updated_at: DateTime<Utc>,
}

pub async fn status(pool: &PgPool) -> Result<Vec<ProjectionStatus>, sqlx::Error> {
    let rows: Vec<StateRow> = sqlx::query_as(
        "select name, generation, status, projection_version, tx::text as tx, seq, events_applied, \
                updated_at \
           from projection_state where status = any($1) order by name, generation",
    )
    .bind(GenerationStatus::active())
    .fetch_all(pool)
    .await?;
    let mut out = Vec::new();
    for StateRow {
        name,
        generation,
        status: state,
        projection_version,
        tx,
        seq,
        events_applied,
        updated_at,
    } in rows
    {
        let (lag_events, oldest) = log::backlog(pool, Cursor::from_text(&tx, seq)?).await?;
        let dead_letters: i64 = sqlx::query_scalar(
            "select count(*) from dead_letters \
              where projection = $1 and generation = $2 and replayed_at is null",
        )
        .bind(&name)
        .bind(generation)
        .fetch_one(pool)
        .await?;
        let lag_seconds = oldest
            .map(|t| (Utc::now() - t).num_milliseconds().max(0) as f64 / 1000.0)
            .unwrap_or(0.0);
        let rebuild_progress =
            (GenerationStatus::parse(&state) == Some(GenerationStatus::Building)).then(|| {
                let total = events_applied + lag_events;
                if total == 0 {
                    1.0
                } else {
                    events_applied as f64 / total as f64
                }
            });
        out.push(ProjectionStatus {
            name,
            generation,
            state,
            projection_version,
            checkpoint_tx: tx,
            checkpoint_position: seq,
            events_applied,
            lag_events,
            lag_seconds,
            dead_letters,
            rebuild_progress,
            updated_at,
        });
    }
    Ok(out)
}

/// The live generation of a projection: the one query that finds it.
pub struct LiveGeneration {
    pub projection_version: i32,
    pub checkpoint: Cursor,
}

/// The live generation of `projection` (`None`: none is live).
pub async fn live_generation(
    pool: &PgPool,
    projection: Projection,
) -> Result<Option<LiveGeneration>, sqlx::Error> {
    let row: Option<(i32, String, i64)> = sqlx::query_as(
        "select projection_version, tx::text, seq from projection_state \
          where name = $1 and status = $2",
    )
    .bind(projection.name())
    .bind(GenerationStatus::Live.as_str())
    .fetch_optional(pool)
    .await?;
    row.map(|(projection_version, tx, seq)| {
        Ok(LiveGeneration {
            projection_version,
            checkpoint: Cursor::from_text(&tx, seq)?,
        })
    })
    .transpose()
}

/// The checkpoint of the live generation of `projection` (`None`: none is live).
pub async fn live_checkpoint(
    pool: &PgPool,
    projection: Projection,
) -> Result<Option<Cursor>, sqlx::Error> {
    Ok(live_generation(pool, projection)
        .await?
        .map(|l| l.checkpoint))
}
