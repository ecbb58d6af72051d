//! The path every command shares: per-command options into the unit of work, the
//! idempotency fingerprint, the replay of a repeated `commandId`, and the commit of one
//! or two streams with the new state folded in memory.

use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use super::{CommandOptions, Written};
use crate::domain::{scheduling, Aggregate, Appointment, BoardId, Shift};
use crate::error::{AppError, AppResult};
use crate::event_store::unit_of_work::{CommandMeta, GuardMoved, Outcome, UnitOfWork};
use crate::event_store::{EventStore, ReadLimit};

/// Fills `meta` with the per-command options.
pub(super) fn with_options(
    mut meta: CommandMeta,
    options: &CommandOptions,
) -> AppResult<CommandMeta> {
    if let Some(v) = options.expected_version {
        if v < 0 {
            return Err(AppError::validation("expectedVersion must not be negative"));
        }
    }
    if let Some(id) = &options.command_id {
        crate::domain::storable_text("commandId", id)?;
    }
    meta.expected_version = options.expected_version;
    meta.command_id = options.command_id.clone();
    Ok(meta)
}

/// What a repeated `commandId` is compared with: the command value itself (options
/// aside), so the same command always has the same fingerprint, however it was sent.
pub fn fingerprint(command: &impl Serialize) -> AppResult<Value> {
    serde_json::to_value(command).map_err(|e| AppError::Internal(e.into()))
}

/// Runs a command that reads a stream with `Guard::Share`: first with that read
/// unlocked and re-checked by the append (two round trips where it creates its
/// streams), and, when the stream moved or a writer held it (nothing was written),
/// once more with the read locked for the whole decision. The second run waits for
/// the writer like any locked read and decides on what it committed.
pub(super) async fn guarded<T, F, Fut>(meta: CommandMeta, run: F) -> AppResult<T>
where
    F: Fn(CommandMeta) -> Fut,
    Fut: std::future::Future<Output = AppResult<T>>,
{
    match run(meta.clone()).await {
        Err(e) if GuardMoved::is(&e) => {
            GUARD_RETRIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut meta = meta;
            meta.locked_reads = true;
            run(meta).await
        }
        other => other,
    }
}

/// Commands decided again because a guarded stream moved (or a writer held it) between
/// their unlocked read and their append, since the process started.
static GUARD_RETRIES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many commands this process decided again on a locked read (see [`guarded`]).
pub fn guard_retries() -> u64 {
    GUARD_RETRIES.load(std::sync::atomic::Ordering::Relaxed)
}

/// Opens the unit of work (carrying the remembered outcome of a repeated command: see
/// [`authorized`]).
macro_rules! begin {
    ($store:expr, $meta:expr, $command:expr) => {{
        let meta: $crate::event_store::unit_of_work::CommandMeta = $meta;
        // Only a `commandId` is compared with a fingerprint.
        let sent = match $command.options.command_id {
            // The sender is half of the key (sender, commandId), so a fingerprint need
            // not name them: another caller's use of an id is never compared with it.
            Some(_) => $crate::commands::path::fingerprint(&$command)?,
            None => serde_json::Value::Null,
        };
        $store
            .begin(
                $crate::commands::path::with_options(meta, &$command.options)?,
                &sent,
            )
            .await?
    }};
}

/// Judges the command (`authorize`) and then, for a repeated `commandId`, returns its
/// remembered result: a replay is judged as the caller is now, like any command.
macro_rules! authorized {
    ($store:expr, $uow:expr, $target:expr) => {{
        $crate::commands::authorize::authorize(&mut $uow, $target).await?;
        if let Some(outcome) = $uow.take_replay() {
            return $crate::commands::path::replayed($store, &outcome).await;
        }
    }};
}

pub(super) use {authorized, begin};

/// Rebuilds a repeated command's answer from the streams and versions it wrote.
pub(super) async fn replayed<A: Aggregate>(
    store: &EventStore,
    outcome: &Outcome,
) -> AppResult<Written<A>> {
    let missing = || AppError::Internal(anyhow::anyhow!("stored outcome names a missing stream"));
    let (target, version) = *outcome.streams.first().ok_or_else(missing)?;
    let entity = store
        .load::<A>(target, ReadLimit::Version(version))
        .await?
        .ok_or_else(missing)?;
    let shift = match outcome.streams.get(1) {
        Some((id, v)) => store.load::<Shift>(*id, ReadLimit::Version(*v)).await?,
        None => None,
    };
    Ok(Written {
        entity,
        shift,
        version,
        position: outcome.position,
    })
}

/// Commits one stream's events and folds its new state.
pub(super) async fn commit_one<A: Aggregate>(
    uow: UnitOfWork,
    id: impl Into<Uuid>,
    board_id: Option<BoardId>,
    base: Option<A>,
    events: Vec<A::Event>,
) -> AppResult<Written<A>> {
    let id = id.into();
    let mut uow = uow;
    uow.stage::<A>(id, board_id, base.as_ref(), &events);
    let committed = uow.commit().await?;
    let entity = committed.fold(id, base, &events)?;
    Ok(Written {
        version: entity.version(),
        position: committed.position(),
        entity,
        shift: None,
    })
}

/// Commits a two-stream decision (appointment + shift) atomically.
pub(super) async fn commit_two(
    mut uow: UnitOfWork,
    appointment: Option<Appointment>,
    shift: Option<Shift>,
    (appointment_events, shift_events): scheduling::TwoStreamEvents,
) -> AppResult<Written<Appointment>> {
    let Some(base) = appointment else {
        return Err(AppError::not_found("appointment not found"));
    };
    let appointment_id = base.id;
    let board_id = Some(base.board_id);
    uow.stage::<Appointment>(appointment_id, board_id, Some(&base), &appointment_events);
    if let Some(s) = &shift {
        uow.stage::<Shift>(s.id, Some(s.board_id), Some(s), &shift_events);
    }
    let committed = uow.commit().await?;
    let entity = committed.fold(appointment_id, Some(base), &appointment_events)?;
    let shift = match shift {
        Some(s) if !shift_events.is_empty() => {
            Some(committed.fold(s.id, Some(s), &shift_events)?)
        }
        other => other,
    };
    Ok(Written {
        version: entity.version(),
        position: committed.position(),
        entity,
        shift,
    })
}
