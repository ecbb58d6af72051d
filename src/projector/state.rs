//! The projector's bookkeeping in `projection_state` and `dead_letters`: checkpoints
//! (moved only by compare-and-set), generations, rebuild requests, status and lag.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::projections::Projection;

/// The advisory lock whose holder is the one projector leader.
pub const LEADER_LOCK_KEY: i64 = 0x4341_5242; // "CARB"

/// A position in the projector's read order: (writing transaction, sequence).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cursor {
    pub tx: u64,
    pub seq: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GenerationStatus {
    Live,
    Building,
}

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
         where status in ('live', 'building') order by name, generation",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(name, generation, status, tx, seq)| {
            Some(Generation {
                projection: Projection::parse(&name)?,
                generation,
                status: if status == "live" {
                    GenerationStatus::Live
                } else {
                    GenerationStatus::Building
                },
                cursor: Cursor {
                    tx: tx.parse().ok()?,
                    seq,
                },
            })
        })
        .collect())
}

/// Makes sure every projection has a live generation, and starts a side-by-side
/// rebuild of any whose live generation was built by another projection version.
pub async fn ensure_generations(pool: &PgPool) -> Result<(), sqlx::Error> {
    for projection in Projection::ALL {
        let live: Option<i32> = sqlx::query_scalar(
            "select projection_version from projection_state where name = $1 and status = 'live'",
        )
        .bind(projection.name())
        .fetch_optional(pool)
        .await?;
        match live {
            None => {
                sqlx::query(
                    "insert into projection_state (name, generation, status, projection_version) \
                     select $1, coalesce(max(generation), 0) + 1, 'live', $2 \
                       from projection_state where name = $1 \
                     on conflict do nothing",
                )
                .bind(projection.name())
                .bind(projection.version())
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
        "select generation from projection_state where name = $1 and status = 'building'",
    )
    .bind(projection.name())
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(g) = existing {
        tx.commit().await?;
        return Ok(g);
    }
    let generation: i32 = sqlx::query_scalar(
        "insert into projection_state (name, generation, status, projection_version, target_seq) \
         select $1, coalesce(max(generation), 0) + 1, 'building', $2, \
                (select coalesce(max(seq), 0) from events) \
           from projection_state where name = $1 \
         returning generation",
    )
    .bind(projection.name())
    .bind(projection.version())
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(generation)
}

/// Moves a checkpoint from `old` to `new`, only if it is still at `old` and the
/// caller still holds the leader lock on connection `leader_pid`. Returns false when
/// the write is rejected (another leader moved on, or this one was deposed).
/// SQL condition: the backend with pid `$pid_param` holds the leader advisory lock
/// (key `$key_param`). Advisory locks are per database, hence the pid: a checkpoint
/// moves only while its writer still leads.
pub fn leader_fence(pid_param: u8, key_param: u8) -> String {
    format!(
        "exists (select 1 from pg_locks \
                  where locktype = 'advisory' and granted and pid = ${pid_param} \
                    and classid = (${key_param} >> 32)::oid \
                    and objid = (${key_param} & 4294967295)::oid and objsubid = 1)"
    )
}

pub async fn advance_checkpoint(
    conn: &mut PgConnection,
    projection: Projection,
    generation: i32,
    old: Cursor,
    new: Cursor,
    applied: i64,
    leader_pid: i32,
) -> Result<bool, sqlx::Error> {
    let result = sqlx::query(&format!(
        "update projection_state \
            set tx = $5::text::xid8, seq = $6, events_applied = events_applied + $7, \
                updated_at = clock_timestamp() \
          where name = $1 and generation = $2 and tx = $3::text::xid8 and seq = $4 \
            and status in ('live', 'building') and {}",
        leader_fence(8, 9)
    ))
    .bind(projection.name())
    .bind(generation)
    .bind(old.tx.to_string())
    .bind(old.seq)
    .bind(new.tx.to_string())
    .bind(new.seq)
    .bind(applied)
    .bind(leader_pid)
    .bind(LEADER_LOCK_KEY)
    .execute(conn)
    .await?;
    Ok(result.rows_affected() == 1)
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
           from projection_state p where p.name = $1 and p.status in ('live', 'building') \
           for update",
    )
    .bind(projection.name())
    .bind(building)
    .fetch_all(&mut *tx)
    .await?;
    let live = rows.iter().find(|r| r.1 == "live");
    let caught_up = live.map(|r| r.2).unwrap_or(true);
    if !caught_up || !rows.iter().any(|r| r.0 == building && r.1 == "building") {
        return Ok(None);
    }
    if let Some((old, _, _)) = live {
        sqlx::query(
            "update projection_state set status = 'retired', updated_at = clock_timestamp() \
             where name = $1 and generation = $2",
        )
        .bind(projection.name())
        .bind(old)
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query(
        "update projection_state set status = 'live', updated_at = clock_timestamp() \
         where name = $1 and generation = $2",
    )
    .bind(projection.name())
    .bind(building)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(live.map(|r| r.0))
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
           from projection_state where status in ('live', 'building') order by name, generation",
    )
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
        let (lag_events, oldest): (i64, Option<DateTime<Utc>>) = sqlx::query_as(
            "select count(*), min(recorded_at) from events where (tx, seq) > ($1::text::xid8, $2)",
        )
        .bind(&tx)
        .bind(seq)
        .fetch_one(pool)
        .await?;
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
        let rebuild_progress = (state == "building").then(|| {
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

/// Whether the live generation of `projection` has applied the event at `position`.
pub async fn has_reached(
    pool: &PgPool,
    projection: Projection,
    position: i64,
) -> Result<Option<bool>, sqlx::Error> {
    sqlx::query_scalar(
        "select (p.tx, p.seq) >= (e.tx, e.seq) from events e, projection_state p \
          where e.seq = $2 and p.name = $1 and p.status = 'live'",
    )
    .bind(projection.name())
    .bind(position)
    .fetch_optional(pool)
    .await
}
