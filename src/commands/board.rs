//! Board commands: open and close a day's Board.

use chrono::NaiveDate;
use serde::Serialize;

use super::authorize::Target;
use super::path::{authorized, begin, commit_one};
use super::{CommandOptions, Written};
use crate::domain::board::{self, BoardCommand};
use crate::domain::{Board, BoardId};
use crate::error::AppResult;
use crate::event_store::unit_of_work::CommandMeta;
use crate::event_store::EventStore;
use crate::projections::board_view::contents_from_events;

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OpenBoard {
    pub name: String,
    pub specialty: String,
    pub region: String,
    pub date: NaiveDate,
    #[serde(skip)]
    pub options: CommandOptions,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CloseBoard {
    pub board_id: BoardId,
    #[serde(skip)]
    pub options: CommandOptions,
}

pub async fn open_board(
    store: &EventStore,
    meta: CommandMeta,
    command: OpenBoard,
) -> AppResult<Written<Board>> {
    let mut uow = begin!(store, meta, command);
    authorized!(
        store,
        uow,
        Target::NewBoard {
            specialty: &command.specialty,
            region: &command.region,
        }
    );
    let id = BoardId::new_random();
    let events = board::decide(
        None,
        BoardCommand::Open {
            name: command.name,
            specialty: command.specialty,
            region: command.region,
            date: command.date,
        },
    )?;
    commit_one(uow, id, Some(id), None, events).await
}

pub async fn close_board(
    store: &EventStore,
    meta: CommandMeta,
    command: CloseBoard,
) -> AppResult<Written<Board>> {
    let board_id = command.board_id;
    let mut uow = begin!(store, meta, command);
    // Always locked, in optimistic mode too: requests and joins hold the Board FOR SHARE,
    // so nothing new can arrive between counting the open work and closing.
    let board = uow.target_locked::<Board>(board_id).await?;
    authorized!(store, uow, Target::Board(board.as_ref()));
    let open_work = match &board {
        Some(_) => {
            let events = uow.board_streams(board_id).await?;
            contents_from_events(board_id, &events)?
                .map(|c| c.open_work())
                .unwrap_or_default()
        }
        None => Default::default(),
    };
    let events = board::decide(board.as_ref(), BoardCommand::Close { open_work })?;
    commit_one(uow, board_id, Some(board_id), board, events).await
}
