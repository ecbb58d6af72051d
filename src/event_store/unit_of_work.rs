//! A command's unit of work: idempotency claim (by sender and `commandId`), loads
//! (locked in exclusive mode), staged writes, and one commit that appends everything
//! or nothing.
//!
//! # Round trips
//!
//! A transaction is opened only when the command needs one before its append: a
//! `commandId` to claim, or a stream to lock for the whole decision (exclusive mode,
//! [`UnitOfWork::target_locked`]). A stream read with [`Guard::Share`] is otherwise read
//! without a lock and becomes a [`ReadGuard`] of the append: the append's one statement
//! locks it `FOR SHARE` and goes through only while it is still at the version read.
//! A command that creates its streams (`requestAppointment` on an open Board) is then
//! two round trips, the read and the append, which commits on its own. When a guarded
//! stream moved, or a writer holds it, nothing is written and the command is decided
//! again with the guarded reads locked, as before ([`GuardMoved`]).

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sqlx::pool::PoolConnection;
use sqlx::{PgConnection, Postgres, Transaction};
use uuid::Uuid;

use super::append::{append_via, AppendError, Appended, ReadGuard, StreamWrite};
use super::{
    fold_recorded, read_board_streams, read_stream, read_stream_locked, CommandPath, EventStore,
    ReadLimit, RecordedEvent, RowLock,
};
use crate::domain::{Aggregate, Board, BoardId, DomainEvent, EventContext};
use crate::error::{AppError, AppResult};
use crate::identity::{Actor, Scope};

/// Who sent a command, how it relates to other work, and how to check concurrency.
#[derive(Debug, Clone)]
pub struct CommandMeta {
    /// The GraphQL mutation, e.g. `scheduleAppointment`.
    pub operation: &'static str,
    /// The GraphQL operation name the client gave, if any.
    pub operation_name: Option<String>,
    /// Who the command acts for: recorded in the events, judged by authorization.
    pub actor: Actor,
    pub correlation_id: String,
    /// Client-chosen idempotency key.
    pub command_id: Option<String>,
    /// What caused the command when it was not a client (e.g. the event the matcher
    /// reacted to); the events' `causationId`, else the `commandId`.
    pub causation_id: Option<String>,
    /// Optimistic check on the target stream; `None` means exclusive mode.
    pub expected_version: Option<i64>,
    /// Read [`Guard::Share`] streams under their lock from the start, in a transaction:
    /// how a command is decided again after a guarded stream moved.
    pub locked_reads: bool,
}

impl CommandMeta {
    pub fn new(operation: &'static str) -> Self {
        Self {
            operation,
            operation_name: None,
            actor: Actor::system("system"),
            correlation_id: Uuid::new_v4().to_string(),
            command_id: None,
            causation_id: None,
            expected_version: None,
            locked_reads: false,
        }
    }

    fn event_metadata(&self) -> Value {
        let mut metadata = json!({
            "correlationId": self.correlation_id,
            "causationId": self.causation_id.as_ref().or(self.command_id.as_ref()),
            // `actor` keeps the shape readers of older events know (the subject);
            // role and name were added beside it, so older events simply lack them.
            "actor": self.actor.subject(),
            "actorRole": self.actor.role_name(),
            "actorName": self.actor.name(),
            "operation": self.operation,
            "operationName": self.operation_name,
        });
        // A patient who acts is named by the id their appointments record too, so that
        // whoever is shown who acted can be answered for in that patient's access log
        // even where the event's data names no patient (a cancellation, say).
        if let Some(Scope::Patient { patient_id }) = self.actor.principal().map(|p| &p.scope) {
            metadata["actorPatientId"] = json!(patient_id);
        }
        metadata
    }
}

/// The remembered result of a command: enough to answer a repeat of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    pub position: i64,
    /// Streams written, target first, with their versions after the command.
    pub streams: Vec<(Uuid, i64)>,
}

/// How a reference read protects what it read until commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guard {
    /// No lock: the data is immutable or staleness is harmless.
    None,
    /// `FOR SHARE`: the stream cannot change until this command commits (e.g. the Board
    /// stays OPEN while an appointment is requested on it).
    Share,
    /// `FOR UPDATE`: this command serialises with every other writer of the stream.
    Exclusive,
}

pub struct UnitOfWork {
    /// Opened when the command first needs it (see the module's "Round trips").
    tx: Option<Transaction<'static, Postgres>>,
    /// The connection of the reads and the append while there is no transaction: one
    /// for the whole command, because each acquire from the pool costs a round trip
    /// (the pool pings a connection before handing it out).
    conn: Option<PoolConnection<Postgres>>,
    store: EventStore,
    meta: CommandMeta,
    claimed_command: bool,
    writes: Vec<StreamWrite>,
    /// Streams read without their lock that the append re-checks and locks.
    guards: Vec<ReadGuard>,
    /// The guarded Boards that were taken from memory, not read: forgotten when a
    /// guard fails.
    kept_guards: Vec<Uuid>,
    /// Whether the command's authorization has passed: until then a target that is
    /// not at `expectedVersion` is only noted here, so that a caller who may not act
    /// on the stream learns neither its version nor that it exists (FORBIDDEN first).
    authorized: bool,
    /// The CONFLICT a target's version check found before authorization, answered
    /// once the caller is authorized.
    version_mismatch: Option<String>,
    /// The `commandId` was seen before: what it did. The command still loads its
    /// target and is judged, as the caller is now (a token whose scope was narrowed
    /// since is refused), and then answers this instead of deciding; nothing is
    /// appended.
    replay: Option<Outcome>,
}

/// The marker a command's commit fails with when a stream it read without its lock
/// moved: nothing was written; the command is decided again with `locked_reads`.
/// Carried inside `AppError::Internal`, so one that escaped would be an internal error,
/// never a wrong answer.
#[derive(Debug, thiserror::Error)]
#[error("a stream the command read moved before its append; decide again on a locked read")]
pub struct GuardMoved;

impl GuardMoved {
    /// Whether `error` is this marker.
    pub fn is(error: &AppError) -> bool {
        matches!(error, AppError::Internal(e) if e.downcast_ref::<GuardMoved>().is_some())
    }
}

/// Lock waits and deadlocks become conflicts the client can retry.
fn lock_error(e: sqlx::Error) -> AppError {
    if crate::postgres::collided(&e) {
        return AppError::Conflict("concurrent commands collided; retry".into());
    }
    if let sqlx::Error::Database(db) = &e {
        if db.code().as_deref() == Some("55P03") {
            return AppError::Conflict(
                "timed out waiting for another command on the same stream; retry".into(),
            );
        }
    }
    AppError::from(e)
}

impl EventStore {
    /// Opens a command's transaction. With a `commandId` seen before, the unit of work
    /// carries the remembered outcome instead (see [`UnitOfWork::take_replay`]), and a
    /// reused id with another input is refused.
    pub async fn begin(&self, mut meta: CommandMeta, input: &Value) -> AppResult<UnitOfWork> {
        let mut claimed_command = false;
        let mut tx = None;
        let mut replay = None;
        if let Some(command_id) = &meta.command_id {
            if command_id.trim().is_empty() || command_id.len() > 200 {
                return Err(AppError::validation(
                    "commandId must be between 1 and 200 characters",
                ));
            }
            let claiming = tx.insert(self.transaction().await?);
            // Claiming the id first makes a concurrent duplicate wait here until the first
            // commits (or rolls back), instead of both appending.
            // The id is its sender's: another caller's use of it is another command.
            let claimed = sqlx::query(
                "insert into processed_commands (sender, command_id, operation, input, outcome) \
                 values ($1, $2, $3, $4, 'null'::jsonb) on conflict (sender, command_id) do nothing",
            )
            .bind(meta.actor.subject())
            .bind(command_id)
            .bind(meta.operation)
            .bind(input)
            .execute(&mut **claiming)
            .await
            .map_err(lock_error)?;
            if claimed.rows_affected() == 0 {
                // Rolled back before the replay reads: it needs no transaction.
                drop(tx.take());
                replay = Some(
                    self.replay(meta.actor.subject(), command_id, meta.operation, input)
                        .await?,
                );
                // The streams have moved on since: their versions are not the question.
                meta.expected_version = None;
            } else {
                claimed_command = true;
            }
        }
        if tx.is_none() && meta.locked_reads && replay.is_none() {
            tx = Some(self.transaction().await?);
        }
        Ok(UnitOfWork {
            tx,
            conn: None,
            store: self.clone(),
            meta,
            claimed_command,
            writes: Vec::new(),
            guards: Vec::new(),
            kept_guards: Vec::new(),
            authorized: false,
            version_mismatch: None,
            replay,
        })
    }

    /// A command's transaction, with the lock timeout in the same round trip as BEGIN,
    /// and (on [`CommandPath::Planned`]) generic plans for its statements: a command's
    /// statements are the same few shapes every time, and the general append's arrays
    /// would otherwise make PostgreSQL plan it again for every command.
    async fn transaction(&self) -> AppResult<Transaction<'static, Postgres>> {
        let generic = match self.command_path() {
            CommandPath::Planned | CommandPath::Kept => {
                "; set local plan_cache_mode = force_generic_plan"
            }
            CommandPath::General => "",
        };
        Ok(self
            .pool()
            .begin_with(format!(
                "begin; set local lock_timeout = '{}ms'{generic}",
                self.lock_timeout().as_millis().max(1)
            ))
            .await?)
    }

    async fn replay(
        &self,
        sender: &str,
        command_id: &str,
        operation: &str,
        input: &Value,
    ) -> AppResult<Outcome> {
        let row: Option<(String, Value, Value)> = sqlx::query_as(
            "select operation, input, outcome from processed_commands \
              where sender = $1 and command_id = $2",
        )
        .bind(sender)
        .bind(command_id)
        .fetch_optional(self.pool())
        .await?;
        let Some((seen_operation, mut seen_input, outcome)) = row else {
            return Err(AppError::Conflict(format!(
                "command {command_id} is being processed concurrently; retry"
            )));
        };
        // Fingerprints stored before the key was (sender, commandId) name the sender
        // in an `@sender` field; the key has matched it already, so it is left out of
        // the comparison and a retry of such a command still replays.
        if let Value::Object(fields) = &mut seen_input {
            fields.remove("@sender");
        }
        if seen_operation != operation || &seen_input != input {
            return Err(AppError::validation(format!(
                "commandId '{command_id}' was already used for a different command"
            )));
        }
        serde_json::from_value(outcome)
            .map_err(|e| AppError::Internal(anyhow::anyhow!("stored outcome of {command_id}: {e}")))
    }
}

impl UnitOfWork {
    /// The command's metadata: its operation and the actor it acts for.
    pub fn meta(&self) -> &CommandMeta {
        &self.meta
    }

    /// The command's transaction, opened now if it is not yet.
    async fn tx(&mut self) -> AppResult<&mut Transaction<'static, Postgres>> {
        if self.tx.is_none() {
            // Back to the pool first: the transaction takes a connection of its own.
            self.conn = None;
            self.tx = Some(self.store.transaction().await?);
        }
        Ok(self.tx.as_mut().expect("opened above"))
    }

    /// Where the next statement goes: the transaction, or the command's connection.
    async fn conn(&mut self) -> AppResult<&mut PgConnection> {
        if let Some(tx) = &mut self.tx {
            return Ok(&mut **tx);
        }
        if self.conn.is_none() {
            self.conn = Some(self.store.pool().acquire().await?);
        }
        Ok(&mut **self.conn.as_mut().expect("acquired above"))
    }

    /// Reads a stream after taking `guard` (lock and read in one statement: see
    /// [`read_stream_locked`]). Outside a transaction, [`Guard::Share`] reads without
    /// the lock and leaves a [`ReadGuard`] for the append (see the module's "Round
    /// trips"); a stream that does not exist is read locked, in a transaction, as before.
    /// `id` is the stream's typed id (or its UUID).
    pub async fn read<A: Aggregate>(
        &mut self,
        id: impl Into<Uuid>,
        guard: Guard,
    ) -> AppResult<Option<A>> {
        let id = id.into();
        let in_transaction = self.tx.is_some();
        let events = match (guard, in_transaction) {
            (Guard::None, _) => read_stream(self.conn().await?, id, ReadLimit::All).await?,
            (Guard::Share, false) => {
                let events = read_stream(self.conn().await?, id, ReadLimit::All).await?;
                match events.last() {
                    Some(last) => {
                        self.guards.push(ReadGuard {
                            stream_id: id,
                            version: last.version,
                        });
                        events
                    }
                    None => read_stream_locked(self.tx().await?, id, RowLock::Share)
                        .await
                        .map_err(lock_error)?,
                }
            }
            (Guard::Share, true) => read_stream_locked(self.tx().await?, id, RowLock::Share)
                .await
                .map_err(lock_error)?,
            (Guard::Exclusive, _) => read_stream_locked(self.tx().await?, id, RowLock::Update)
                .await
                .map_err(lock_error)?,
        };
        fold_recorded::<A>(&events)
    }

    /// Reads a Board with [`Guard::Share`]. On [`CommandPath::Kept`], outside a
    /// transaction, an open Board kept from an earlier read is taken from memory, no
    /// round trip, and its kept version becomes the append's guard (see
    /// [`super::KeptBoards`]); every Board read here from the database is kept.
    pub async fn read_board(&mut self, id: BoardId) -> AppResult<Option<Board>> {
        let id = id.as_uuid();
        let kept = self.store.command_path() == CommandPath::Kept;
        if kept && self.tx.is_none() {
            if let Some(board) = self.store.kept_boards().get(id) {
                self.guards.push(ReadGuard {
                    stream_id: id,
                    version: board.version,
                });
                self.kept_guards.push(id);
                return Ok(Some(board));
            }
        }
        let board = self.read::<Board>(id, Guard::Share).await?;
        if let (true, Some(b)) = (kept, &board) {
            self.store.kept_boards().keep(b);
        }
        Ok(board)
    }

    /// Loads the command's target stream: locked in exclusive mode, checked against
    /// `expectedVersion` in optimistic mode.
    pub async fn target<A: Aggregate>(&mut self, id: impl Into<Uuid>) -> AppResult<Option<A>> {
        let guard = if self.meta.expected_version.is_some() {
            Guard::None
        } else {
            Guard::Exclusive
        };
        self.target_guarded(id, guard).await
    }

    /// Like `target`, but takes the row lock in optimistic mode too: for decisions
    /// that read other streams which must not change until commit.
    pub async fn target_locked<A: Aggregate>(
        &mut self,
        id: impl Into<Uuid>,
    ) -> AppResult<Option<A>> {
        self.target_guarded(id, Guard::Exclusive).await
    }

    async fn target_guarded<A: Aggregate>(
        &mut self,
        id: impl Into<Uuid>,
        guard: Guard,
    ) -> AppResult<Option<A>> {
        let id = id.into();
        let state = self.read::<A>(id, guard).await?;
        if let (Some(expected), Some(s)) = (self.meta.expected_version, &state) {
            if s.version() != expected {
                let conflict = format!(
                    "expected version {expected} but {} {id} is at version {}",
                    A::STREAM_TYPE.noun(),
                    s.version()
                );
                if self.authorized {
                    return Err(AppError::Conflict(conflict));
                }
                self.version_mismatch.get_or_insert(conflict);
            }
        }
        Ok(state)
    }

    /// A repeated `commandId`'s remembered outcome, once the command has been judged
    /// (`None` for a command to decide).
    pub fn take_replay(&mut self) -> Option<Outcome> {
        debug_assert!(self.authorized || self.replay.is_none());
        self.replay.take()
    }

    /// Records that the command's authorization passed, and answers the CONFLICT of a
    /// target read before it that was not at `expectedVersion` (see `authorized`).
    pub fn authorized(&mut self) -> AppResult<()> {
        self.authorized = true;
        match self.version_mismatch.take() {
            Some(conflict) => Err(AppError::Conflict(conflict)),
            None => Ok(()),
        }
    }

    /// The events of every stream on a Board, read inside the transaction.
    pub async fn board_streams(
        &mut self,
        board_id: impl Into<Uuid>,
    ) -> AppResult<Vec<RecordedEvent>> {
        let conn = self.conn().await?;
        Ok(read_board_streams(conn, board_id.into(), ReadLimit::All).await?)
    }

    /// Loads a second stream the command also writes: locked in exclusive mode,
    /// version-checked at append in optimistic mode.
    pub async fn also<A: Aggregate>(&mut self, id: impl Into<Uuid>) -> AppResult<Option<A>> {
        let guard = if self.meta.expected_version.is_some() {
            Guard::None
        } else {
            Guard::Exclusive
        };
        self.read::<A>(id, guard).await
    }

    /// Stages events for a stream; `base` is the state they were decided on.
    pub fn stage<A: Aggregate>(
        &mut self,
        id: impl Into<Uuid>,
        board_id: Option<BoardId>,
        base: Option<&A>,
        events: &[A::Event],
    ) {
        if events.is_empty() {
            return;
        }
        self.writes.push(StreamWrite::new(
            A::STREAM_TYPE,
            id.into(),
            board_id.map(Uuid::from),
            base.map(|s| s.version()).unwrap_or(0),
            events,
        ));
    }

    /// Appends everything staged and commits. Nothing staged is a bug in the caller.
    ///
    /// Without a transaction, an append that only creates streams is one statement that
    /// commits on its own; one that also moves existing streams runs in a transaction
    /// (its version checks may fail after a part is written, and that part must roll
    /// back). A guarded stream that moved fails with [`GuardMoved`], nothing written.
    pub async fn commit(mut self) -> AppResult<Committed> {
        // A version check that authorization never answered still refuses the append.
        if let Some(conflict) = self.version_mismatch.take() {
            return Err(AppError::Conflict(conflict));
        }
        let metadata = self.meta.event_metadata();
        let creates_only = self.writes.iter().all(|w| w.expected_version == 0);
        // From the first write to the outcome: a request out of time waits for it.
        let in_flight = super::in_flight::InFlight::start();
        if !creates_only {
            self.tx().await?;
        }
        // (`conn` borrows all of `self`; the staged writes and guards are moved out.)
        let (writes, guards) = (
            std::mem::take(&mut self.writes),
            std::mem::take(&mut self.guards),
        );
        let path = self.store.command_path();
        // Without a transaction (autocommit), the statement bounds its own lock waits.
        let lock_timeout = self.tx.is_none().then(|| self.store.lock_timeout());
        let conn = self.conn().await?;
        let appended = append_via(conn, &writes, &guards, &metadata, path, lock_timeout).await;
        let appended = match appended {
            Ok(a) => a,
            Err(AppendError::GuardMoved) => {
                for id in &self.kept_guards {
                    self.store.kept_boards().forget(*id);
                }
                return Err(AppError::Internal(GuardMoved.into()));
            }
            Err(AppendError::Failed(e)) => return Err(e),
        };
        let outcome = Outcome {
            position: appended.position,
            streams: appended.versions.clone(),
        };
        if let Some(mut tx) = self.tx.take() {
            if self.claimed_command {
                sqlx::query(
                    "update processed_commands set outcome = $3 \
                      where sender = $1 and command_id = $2",
                )
                .bind(self.meta.actor.subject())
                .bind(self.meta.command_id.as_deref())
                .bind(serde_json::to_value(&outcome).map_err(anyhow::Error::from)?)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await.map_err(lock_error)?;
        }
        in_flight.applied(outcome.position);
        self.store.appended_signal().notify_one();
        Ok(Committed { appended, outcome })
    }
}

/// A committed command: what was appended, with the envelope facts needed to fold the
/// new state in memory instead of reading it back.
pub struct Committed {
    pub appended: Appended,
    pub outcome: Outcome,
}

impl Committed {
    pub fn position(&self) -> i64 {
        self.outcome.position
    }

    /// Applies the events staged for `id` to the state they were decided on.
    pub fn fold<A: Aggregate>(
        &self,
        id: impl Into<Uuid>,
        base: Option<A>,
        events: &[A::Event],
    ) -> AppResult<A> {
        let id = id.into();
        let contexts: Vec<EventContext> = self.appended.contexts_of(id);
        let mut state = base;
        for (event, ctx) in events.iter().zip(contexts.iter()) {
            state = Some(A::apply(state, event, ctx).map_err(|e| {
                AppError::Internal(anyhow::anyhow!("{} {id}: {e}", event.event_type()))
            })?);
        }
        state.ok_or_else(|| {
            AppError::Internal(anyhow::anyhow!("stream {id} has no state after commit"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{Principal, Scope};

    #[test]
    fn event_metadata_records_the_actors_subject_role_and_name() {
        let mut meta = CommandMeta::new("openBoard");
        meta.actor = Actor::from(Principal::new(
            "dev:ana-ruiz",
            "Ana Ruiz",
            Scope::Coordinator {
                regions: None,
                specialties: None,
            },
        ));
        let m = meta.event_metadata();
        // `actor` keeps its old meaning (the subject) for readers of older events.
        assert_eq!(m["actor"], "dev:ana-ruiz");
        assert_eq!(m["actorRole"], "coordinator");
        assert_eq!(m["actorName"], "Ana Ruiz");
        assert_eq!(m["operation"], "openBoard");

        meta.actor = Actor::system("matcher");
        let m = meta.event_metadata();
        assert_eq!(
            (&m["actor"], &m["actorRole"]),
            (&json!("matcher"), &json!("system"))
        );
    }
}
