//! The one leader: a PostgreSQL advisory lock held on a dedicated connection, and the
//! fence that makes a deposed leader's writes fail.
//!
//! Several server processes may run against one database; the holder of
//! [`LEADER_LOCK_KEY`] runs the projector and the matcher (see [`crate::daemon`]).
//! Every checkpoint moves by [`advance_checkpoint`]: a compare-and-set on the old
//! cursor that also requires the writer to still lead, so a leader that lost its lock
//! (a network partition, a stalled process) cannot move anything after a new leader
//! has taken over. Documents move in the checkpoint's transaction, so they cannot
//! either.
//!
//! # The epoch fence ([`Fence::Epoch`], the default)
//!
//! `leader_epoch` holds one row. A process that takes the lock bumps it (`update …
//! set epoch = epoch + 1`, its own transaction) before it reads any checkpoint, and
//! fences every checkpoint write with that epoch: the compare-and-set's statement also
//! requires `exists (select from leader_epoch where epoch = $mine for share)`.
//!
//! Why that suffices, with old leader A (epoch `e`) and new leader B:
//! - B's bump takes the row's exclusive lock; A's fence takes a share lock on the same
//!   row; the two conflict, so one waits for the other's transaction to end.
//! - A's checkpoint transaction locked the row first: B's bump waits until that
//!   transaction has committed or rolled back. B reads its checkpoints only after the
//!   bump, so it sees A's last batch (documents and checkpoint, one transaction) and
//!   goes on from there; nothing is applied twice.
//! - B's bump came first: A's fence either waits for B's bump to commit, or finds it
//!   committed; either way PostgreSQL re-reads the newest row version (read committed
//!   re-checks a locked row that changed), finds `e + 1`, and the compare-and-set
//!   matches nothing. A's batch is refused, its transaction rolls back with its
//!   documents, and A learns it was deposed ([`Lease::holds`] compares epochs).
//! - Between B taking the lock and bumping, A may still commit: B has read nothing yet.
//!
//! The projector's batch transactions skip the row lock ([`Fence::EpochHeld`]): their
//! first statement holds [`EPOCH_LOCK_KEY`] shared until they end, and B's bump takes
//! it exclusively first. The same two cases hold with that lock in place of the row
//! lock: A's transaction held it first, and B's bump waits for A to end; or B's bump
//! held it first, and A's first statement waits for B's commit, so the checkpoint
//! statement (a later snapshot) finds `e + 1`.
//!
//! The price per batch is a lookup of a one-row table (plus, where the row is read
//! `for share`, a row lock), where the earlier fence ([`Fence::LockTable`], kept
//! selectable for the bench) asked `pg_locks`, which copies the whole lock table
//! (`pg_lock_status()`) per statement. That older fence also had a gap the epoch
//! closes: it looked at the lock when the compare-and-set ran, not when the
//! transaction committed, and nothing made a new leader wait for a transaction the old
//! one had open. The flip side: a takeover waits for the old leader's open batch, so a
//! stalled old leader holding a transaction open delays the new one until PostgreSQL
//! ends that session (its connection dies, or `idle_in_transaction_session_timeout`).

use std::sync::OnceLock;

use sqlx::postgres::PgArguments;
use sqlx::{Arguments, Connection, PgConnection, PgExecutor, PgPool};
use tokio::sync::Mutex;

use crate::event_store::log::Cursor;
use crate::projections::registry::GenerationStatus;

/// The advisory lock whose holder is the one leader.
pub const LEADER_LOCK_KEY: i64 = 0x4341_5242; // "CARB"

/// The advisory lock a checkpoint transaction may hold shared (from its first
/// statement, [`EPOCH_HOLD`]) and a takeover's bump takes exclusively: the bump then
/// waits for those transactions without them locking the epoch row.
pub const EPOCH_LOCK_KEY: i64 = 0x4341_5245; // "CARE"

/// SQL expression that holds [`EPOCH_LOCK_KEY`] shared until the transaction ends; in
/// a statement before the checkpoint's, it lets that use [`Fence::held`].
pub const EPOCH_HOLD: &str = "pg_advisory_xact_lock_shared(1128354373)";

/// What a checkpoint write proves about its writer's leadership (see the module
/// documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fence {
    /// The writer bumped `leader_epoch` to this value when it took the lock, and no
    /// one has bumped it since. The epoch row is read `for share`.
    Epoch(i64),
    /// [`Fence::Epoch`] for a transaction that took [`EPOCH_HOLD`] in an earlier
    /// statement: a takeover's bump waits for it on that lock, so the row is read
    /// without a row lock (no tuple write, no WAL record, no multixact per batch).
    /// The earlier statement matters: the checkpoint statement's snapshot is then
    /// taken after the lock was granted, so after any bump that came first.
    EpochHeld(i64),
    /// The backend `pid` holds the leader lock, looked up in `pg_locks`: the earlier
    /// fence, kept so the bench can measure both in one run
    /// (`DaemonConfig::epoch_fence` off).
    LockTable { pid: i32 },
}

impl Fence {
    /// SQL condition for this fence, its value bound as parameter `$param`.
    fn condition(self, param: u8) -> String {
        match self {
            Fence::Epoch(_) => format!(
                "exists (select from leader_epoch where epoch = ${param}::bigint for share)"
            ),
            Fence::EpochHeld(_) => {
                format!("exists (select from leader_epoch where epoch = ${param}::bigint)")
            }
            Fence::LockTable { .. } => format!(
                "exists (select 1 from pg_locks \
                          where locktype = 'advisory' and granted and pid = ${param}::int \
                            and classid = ({key}::bigint >> 32)::oid \
                            and objid = ({key}::bigint & 4294967295)::oid and objsubid = 1)",
                key = LEADER_LOCK_KEY
            ),
        }
    }

    /// This fence for a transaction that took [`EPOCH_HOLD`] before its checkpoint
    /// statement (only the epoch fences change).
    pub fn held(self) -> Fence {
        match self {
            Fence::Epoch(epoch) => Fence::EpochHeld(epoch),
            other => other,
        }
    }

    /// The value bound for [`Fence::condition`]'s parameter.
    fn value(self) -> i64 {
        match self {
            Fence::Epoch(epoch) | Fence::EpochHeld(epoch) => epoch,
            Fence::LockTable { pid } => pid as i64,
        }
    }
}

/// Makes the caller the newest leader: bumps the epoch and returns it. Run it after
/// taking the leader lock and before reading any checkpoint; it waits for the
/// checkpoint transactions of an older leader still under way (see the module
/// documentation).
pub async fn bump_epoch(conn: impl PgExecutor<'_>) -> Result<i64, sqlx::Error> {
    // The exclusive lock waits for every transaction holding it shared, and is held
    // until the bump commits; the row's own lock waits for every `for share` reader.
    sqlx::query_scalar(
        "with held as materialized (select pg_advisory_xact_lock($1)) \
         update leader_epoch set epoch = epoch + 1 \
           from held returning epoch",
    )
    .bind(EPOCH_LOCK_KEY)
    .fetch_one(conn)
    .await
}

/// The leader lock, held for as long as this value's connection lives.
pub struct Lease {
    /// Dedicated, outside any pool: the lock lives and dies with this connection.
    conn: Mutex<PgConnection>,
    pid: i32,
    /// The epoch this lease bumped.
    epoch: i64,
    /// Fence checkpoint writes with the lock table instead of the epoch.
    lock_table_fence: bool,
}

impl Lease {
    /// Takes the lock if no one holds it: `None` when another process leads. The
    /// lease's writes are fenced by the epoch it bumps ([`Fence::Epoch`]).
    pub async fn try_acquire(pool: &PgPool) -> Result<Option<Self>, sqlx::Error> {
        Self::try_acquire_fenced(pool, false).await
    }

    /// [`Self::try_acquire`], its writes fenced by the lock table when
    /// `lock_table_fence` (the earlier fence; the epoch is bumped either way).
    pub async fn try_acquire_fenced(
        pool: &PgPool,
        lock_table_fence: bool,
    ) -> Result<Option<Self>, sqlx::Error> {
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
        let epoch = bump_epoch(&mut conn).await?;
        Ok(Some(Self {
            conn: Mutex::new(conn),
            pid,
            epoch,
            lock_table_fence,
        }))
    }

    /// The backend pid of the lock's connection.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// What this lease's checkpoint writes are fenced with.
    pub fn fence(&self) -> Fence {
        if self.lock_table_fence {
            Fence::LockTable { pid: self.pid }
        } else {
            Fence::Epoch(self.epoch)
        }
    }

    /// Whether the lock is still held (its connection still answers) and no one has
    /// bumped the epoch since this lease did.
    pub async fn holds(&self) -> bool {
        let mut conn = self.conn.lock().await;
        let current: Result<i64, _> = sqlx::query_scalar("select epoch from leader_epoch")
            .fetch_one(&mut *conn)
            .await;
        current.is_ok_and(|e| e == self.epoch)
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
/// is still at `old` and `fence` still holds (its writer still leads). Returns false
/// when the write is rejected (another leader moved on, or this one was deposed).
pub async fn advance_checkpoint(
    conn: impl PgExecutor<'_>,
    checkpoint: Checkpoint<'_>,
    old: Cursor,
    new: Cursor,
    events: i64,
    fence: Fence,
) -> Result<bool, sqlx::Error> {
    let arguments = checkpoint_arguments(checkpoint, old, new, events, fence)?;
    let result = sqlx::query_with(checkpoint_update(checkpoint, fence), arguments)
        .execute(conn)
        .await?;
    Ok(result.rows_affected() == 1)
}

/// [`advance_checkpoint`] as a statement of its own (autocommit), for a batch that
/// changed nothing else. An epoch fence reads the row `for share` here whatever
/// `fence` says ([`Fence::EpochHeld`] needs an earlier statement of the same
/// transaction). With `async_commit`, the statement's own transaction does not wait
/// for its WAL flush (`synchronous_commit` is set for that transaction only, before
/// it commits at the statement's end).
pub async fn advance_checkpoint_alone(
    conn: impl PgExecutor<'_>,
    checkpoint: Checkpoint<'_>,
    old: Cursor,
    new: Cursor,
    fence: Fence,
    async_commit: bool,
) -> Result<bool, sqlx::Error> {
    let fence = match fence {
        Fence::EpochHeld(epoch) => Fence::Epoch(epoch),
        other => other,
    };
    let arguments = checkpoint_arguments(checkpoint, old, new, 0, fence)?;
    let sql = checkpoint_update_alone(checkpoint, fence, async_commit);
    let result = sqlx::query_with(sql, arguments).execute(conn).await?;
    Ok(result.rows_affected() == 1)
}

/// The statement of [`advance_checkpoint_alone`], built once per shape.
fn checkpoint_update_alone(
    checkpoint: Checkpoint<'_>,
    fence: Fence,
    async_commit: bool,
) -> &'static str {
    static SQL: [OnceLock<String>; SHAPES * 2] = [const { OnceLock::new() }; SHAPES * 2];
    SQL[shape(checkpoint, fence) * 2 + usize::from(async_commit)].get_or_init(|| {
        let update = checkpoint_update(checkpoint, fence);
        if !async_commit {
            return update.to_string();
        }
        // `update … set … from (…) where …`: the one-row subquery runs once, before
        // the statement's transaction commits.
        let (head, tail) = update
            .split_once(" where ")
            .expect("the compare-and-set has a where clause");
        format!(
            "{head} from (select set_config('synchronous_commit', 'off', true)) as local \
              where {tail}"
        )
    })
}

/// The compare-and-set's binds, `$1`–`$8` of [`checkpoint_update`].
fn checkpoint_arguments(
    checkpoint: Checkpoint<'_>,
    old: Cursor,
    new: Cursor,
    events: i64,
    fence: Fence,
) -> Result<PgArguments, sqlx::Error> {
    let mut arguments = PgArguments::default();
    let added = arguments
        .add(checkpoint.name())
        .and_then(|()| arguments.add(old.tx_text()))
        .and_then(|()| arguments.add(old.seq))
        .and_then(|()| arguments.add(new.tx_text()))
        .and_then(|()| arguments.add(new.seq))
        .and_then(|()| arguments.add(events))
        .and_then(|()| arguments.add(fence.value()))
        .and_then(|()| arguments.add(checkpoint.generation()));
    added.map_err(sqlx::Error::Encode)?;
    Ok(arguments)
}

/// [`advance_checkpoint`] for a projection generation, and, in the same statement,
/// a NOTIFY on `channel` of each of `payloads` when the generation is live once the
/// checkpoint has moved (a rebuild swapped in while its loop still thinks it is
/// building notifies too: the compare-and-set holds the state row, so the swap cannot
/// pass it). One round trip where there were two.
#[allow(clippy::too_many_arguments)]
pub async fn advance_checkpoint_notifying(
    conn: impl PgExecutor<'_>,
    checkpoint: Checkpoint<'_>,
    old: Cursor,
    new: Cursor,
    events: i64,
    fence: Fence,
    channel: &str,
    payloads: &[String],
) -> Result<bool, sqlx::Error> {
    if payloads.is_empty() || matches!(checkpoint, Checkpoint::Process { .. }) {
        return advance_checkpoint(conn, checkpoint, old, new, events, fence).await;
    }
    // The update runs whatever the outer query reads (a data-modifying CTE always
    // does); the NOTIFYs run once per payload, only when it moved a live generation.
    let mut arguments = checkpoint_arguments(checkpoint, old, new, events, fence)?;
    arguments
        .add(channel)
        .and_then(|()| arguments.add(payloads))
        .map_err(sqlx::Error::Encode)?;
    static SQL: [OnceLock<String>; SHAPES] = [const { OnceLock::new() }; SHAPES];
    let sql = SQL[shape(checkpoint, fence)].get_or_init(|| {
        format!(
            "with cp as ({update} returning status) \
         select (select count(*) from cp) \
           from (select count(pg_notify($9, p)) from unnest($10::text[]) as p \
                  where exists (select from cp where status = '{live}')) as notified",
            update = checkpoint_update(checkpoint, fence),
            live = GenerationStatus::Live.as_str(),
        )
    });
    let moved: i64 = sqlx::query_scalar_with(sql, arguments)
        .fetch_one(conn)
        .await?;
    Ok(moved == 1)
}

impl Checkpoint<'_> {
    fn name(&self) -> &str {
        match self {
            Checkpoint::Projection { name, .. } | Checkpoint::Process { name } => name,
        }
    }

    fn generation(&self) -> Option<i32> {
        match self {
            Checkpoint::Projection { generation, .. } => Some(*generation),
            Checkpoint::Process { .. } => None,
        }
    }
}

/// How many statement shapes there are: a checkpoint kind times a fence kind (the
/// statements' text depends on nothing else; every value is bound).
const SHAPES: usize = 6;

/// The index of a (checkpoint kind, fence kind) shape below [`SHAPES`].
fn shape(checkpoint: Checkpoint<'_>, fence: Fence) -> usize {
    let kind = match checkpoint {
        Checkpoint::Projection { .. } => 0,
        Checkpoint::Process { .. } => 1,
    };
    let fence = match fence {
        Fence::Epoch(_) => 0,
        Fence::EpochHeld(_) => 1,
        Fence::LockTable { .. } => 2,
    };
    kind * 3 + fence
}

/// The compare-and-set: `$1` name, `$2`/`$3` old cursor, `$4`/`$5` new cursor, `$6`
/// events, `$7` the fence's value, `$8` generation (null for a process). Built once per
/// shape, not per batch.
fn checkpoint_update(checkpoint: Checkpoint<'_>, fence: Fence) -> &'static str {
    static SQL: [OnceLock<String>; SHAPES] = [const { OnceLock::new() }; SHAPES];
    SQL[shape(checkpoint, fence)].get_or_init(|| {
        let (table, counter, extra) = match checkpoint {
            Checkpoint::Projection { .. } => (
                "projection_state",
                "events_applied",
                // Only the live generation or a rebuild moves; a retired one never again.
                format!(
                    "and generation = $8 and status in ('{}', '{}')",
                    GenerationStatus::Live.as_str(),
                    GenerationStatus::Building.as_str()
                ),
            ),
            Checkpoint::Process { .. } => (
                "process_checkpoints",
                "events_seen",
                "and $8::int is null".to_string(),
            ),
        };
        format!(
            "update {table} \
                set tx = $4::text::xid8, seq = $5, {counter} = {counter} + $6, \
                    updated_at = clock_timestamp() \
              where name = $1 and tx = $2::text::xid8 and seq = $3 {extra} and {fence}",
            fence = fence.condition(7)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_epoch_hold_takes_the_epoch_lock() {
        assert_eq!(
            EPOCH_HOLD,
            format!("pg_advisory_xact_lock_shared({EPOCH_LOCK_KEY})")
        );
    }
}
