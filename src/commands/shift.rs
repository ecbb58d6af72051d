//! Provider shift commands: join a Board, and the commands that act on a shift alone.

use chrono::Utc;
use serde::Serialize;

use super::authorize::Target;
use super::path::{authorized, begin, commit_one, guarded};
use super::{CommandOptions, Written};
use crate::domain::shift::{self, ShiftCommand};
use crate::domain::{BoardId, Provider, ProviderId, Shift, ShiftId};
use crate::error::AppResult;
use crate::event_store::unit_of_work::{CommandMeta, Guard};
use crate::event_store::EventStore;

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinBoard {
    pub board_id: BoardId,
    pub provider_id: ProviderId,
    #[serde(skip)]
    pub options: CommandOptions,
}

/// One of the commands that act on a provider shift alone.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ActOnShift {
    /// Which command: recorded as the operation, so not repeated in the fingerprint.
    #[serde(skip)]
    pub action: ShiftAction,
    pub shift_id: ShiftId,
    #[serde(skip)]
    pub options: CommandOptions,
}

/// The shift-only commands, one entry point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShiftAction {
    MarkReady,
    Pause,
    CompleteCharting,
    SignOff,
}

impl ShiftAction {
    pub fn operation(self) -> &'static str {
        match self {
            ShiftAction::MarkReady => "markProviderReady",
            ShiftAction::Pause => "pauseProvider",
            ShiftAction::CompleteCharting => "completeCharting",
            ShiftAction::SignOff => "signOffProvider",
        }
    }
}

pub async fn join_board(
    store: &EventStore,
    meta: CommandMeta,
    command: JoinBoard,
) -> AppResult<Written<Shift>> {
    guarded(meta, |meta| join_board_once(store, meta, command.clone())).await
}

async fn join_board_once(
    store: &EventStore,
    meta: CommandMeta,
    command: JoinBoard,
) -> AppResult<Written<Shift>> {
    let (board_id, provider_id) = (command.board_id, command.provider_id);
    let mut uow = begin!(store, meta, command);
    let board = uow.read_board(board_id).await?;
    let provider = uow.read::<Provider>(provider_id, Guard::None).await?;
    authorized!(
        store,
        uow,
        Target::Join {
            board: board.as_ref(),
            provider_id,
        }
    );
    let shift_id = ShiftId::of(board_id, provider_id);
    let existing = uow.target::<Shift>(shift_id).await?;
    let events = shift::decide(
        existing.as_ref(),
        ShiftCommand::Join {
            board: board.map(Box::new),
            provider: provider.map(Box::new),
        },
    )?;
    commit_one(uow, shift_id, Some(board_id), existing, events).await
}

pub async fn shift_action(
    store: &EventStore,
    meta: CommandMeta,
    command: ActOnShift,
) -> AppResult<Written<Shift>> {
    let shift_id = command.shift_id;
    let mut uow = begin!(store, meta, command);
    let shift = uow.target::<Shift>(shift_id).await?;
    authorized!(store, uow, Target::Shift(shift.as_ref()));
    let decision = match command.action {
        ShiftAction::MarkReady => ShiftCommand::MarkReady,
        ShiftAction::Pause => ShiftCommand::Pause,
        ShiftAction::CompleteCharting => ShiftCommand::CompleteCharting { now: Utc::now() },
        ShiftAction::SignOff => ShiftCommand::SignOff,
    };
    let events = shift::decide(shift.as_ref(), decision)?;
    let board_id = shift.as_ref().map(|s| s.board_id);
    commit_one(uow, shift_id, board_id, shift, events).await
}
