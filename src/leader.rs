//! The one leader: a PostgreSQL advisory lock held on a dedicated connection, and the
//! fence that makes a deposed leader's writes fail.
//!
//! Several server processes may run against one database; the holder of
//! [`LEADER_LOCK_KEY`] runs the projector and the matcher (see [`crate::daemon`]).
//! Every checkpoint moves by [`advance_checkpoint`]: a compare-and-set on the old
//! cursor that also requires the writer's connection to still hold the lock, so a
//! leader that lost its lock (a network partition, a stalled process) cannot move
//! anything after a new leader has taken over.

use sqlx::{Connection, PgConnection, PgExecutor, PgPool};
use tokio::sync::Mutex;

use crate::event_store::log::Cursor;
use crate::projections::registry::GenerationStatus;

/// The advisory lock whose holder is the one leader.
pub const LEADER_LOCK_KEY: i64 = 0x4341_5242; // "CARB"

/// SQL condition: the backend with pid `$pid_param` holds the leader advisory lock
/// (key `$key_param`). Advisory locks are per database, hence the pid: a checkpoint
/// moves only while its writer still leads.
pub fn fence(pid_param: u8, key_param: u8) -> String {
    format!(
        "exists (select 1 from pg_locks \
                  where locktype = 'advisory' and granted and pid = ${pid_param} \
                    and classid = (${key_param} >> 32)::oid \
                    and objid = (${key_param} & 4294967295)::oid and objsubid = 1)"
    )
}

/// The leader lock, held for as long as this value's connection lives.
pub struct Lease {
    /// Dedicated, outside any pool: the lock lives and dies with this connection.
    conn: Mutex<PgConnection>,
    pid: i32,
}

impl Lease {
    /// Takes the lock if no one holds it: `None` when another process leads.
    pub async fn try_acquire(pool: &PgPool) -> Result<Option<Self>, sqlx::Error> {
        let mut conn = PgConnection::connect_with(&pool.connect_options()).await?;
        let got: bool = sqlx::query_scalar("select pg_try_advisory_lock($1)")
            .bind(LEADER_LOCK_KEY)
            .fetch_one(&mut conn)
            .await?;
        if !got {
            conn.close().await.ok();
            return Ok(None);
        }
        let pid: i32 = sqlx::query_scalar("select pg_backend_pid()")
            .fetch_one(&mut conn)
            .await?;
        Ok(Some(Self {
            conn: Mutex::new(conn),
            pid,
        }))
    }

    /// The backend pid of the lock's connection: what [`fence`] checks.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Whether the lock is still held (its connection still answers).
    pub async fn holds(&self) -> bool {
        let mut conn = self.conn.lock().await;
        sqlx::query("select 1").execute(&mut *conn).await.is_ok()
    }

    /// Gives the lock up at once (a clean shutdown), instead of when the connection
    /// is dropped.
    pub async fn release(self) {
        let mut conn = self.conn.into_inner();
        let _ = sqlx::query("select pg_advisory_unlock($1)")
            .bind(LEADER_LOCK_KEY)
            .execute(&mut conn)
            .await;
        conn.close().await.ok();
    }
}

/// A checkpoint row that [`advance_checkpoint`] moves.
#[derive(Debug, Clone, Copy)]
pub enum Checkpoint<'a> {
    /// One generation of a projection (`projection_state`), while live or building.
    Projection { name: &'a str, generation: i32 },
    /// A process that reacts to events (`process_checkpoints`), e.g. the matcher.
    Process { name: &'a str },
}

/// Moves a checkpoint from `old` to `new` and adds `events` to its counter, only if it
/// is still at `old` and the backend `leader_pid` still holds the leader lock. Returns
/// false when the write is rejected (another leader moved on, or this one was
/// deposed).
pub async fn advance_checkpoint(
    conn: impl PgExecutor<'_>,
    checkpoint: Checkpoint<'_>,
    old: Cursor,
    new: Cursor,
    events: i64,
    leader_pid: i32,
) -> Result<bool, sqlx::Error> {
    let (table, counter, extra, name, generation) = match checkpoint {
        Checkpoint::Projection { name, generation } => (
            "projection_state",
            "events_applied",
            // Only the live generation or a rebuild moves; a retired one never again.
            format!(
                "and generation = $9 and status in ('{}', '{}')",
                GenerationStatus::Live.as_str(),
                GenerationStatus::Building.as_str()
            ),
            name,
            Some(generation),
        ),
        Checkpoint::Process { name } => (
            "process_checkpoints",
            "events_seen",
            "and $9::int is null".to_string(),
            name,
            None,
        ),
    };
    let result = sqlx::query(&format!(
        "update {table} \
            set tx = $4::text::xid8, seq = $5, {counter} = {counter} + $6, \
                updated_at = clock_timestamp() \
          where name = $1 and tx = $2::text::xid8 and seq = $3 {extra} and {fence}",
        fence = fence(7, 8)
    ))
    .bind(name)
    .bind(old.tx_text())
    .bind(old.seq)
    .bind(new.tx_text())
    .bind(new.seq)
    .bind(events)
    .bind(leader_pid)
    .bind(LEADER_LOCK_KEY)
    .bind(generation)
    .execute(conn)
    .await?;
    Ok(result.rows_affected() == 1)
}
