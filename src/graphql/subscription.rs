//! Subscriptions: live Board documents and the raw event feed of a Board.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_graphql::{Context, Result, Subscription, ID};
use futures::Stream;
use tokio_stream::wrappers::WatchStream;
use tokio_stream::StreamExt;

use super::access;
use super::store;
use super::types::{board_contents_at, Appointment, Board, Event};
use crate::domain;
use crate::domain::parse_id;
use crate::error::AppError;
use crate::event_store::log::{cursor_of, read_after, Cursor};
use crate::event_store::ReadLimit;
use crate::identity::matrix::{BoardFacts, Facts, Operation};
use crate::live::LiveBoards;

pub struct Subscription;

/// How many subscriptions one websocket may hold; put into each connection's data.
#[derive(Clone)]
pub struct SubscriptionBudget {
    in_use: Arc<AtomicUsize>,
    max: usize,
}

impl SubscriptionBudget {
    pub fn new(max: usize) -> Self {
        Self {
            in_use: Arc::new(AtomicUsize::new(0)),
            max,
        }
    }

    fn take(&self) -> Result<BudgetGuard, AppError> {
        let previous = self.in_use.fetch_add(1, Ordering::SeqCst);
        if previous >= self.max {
            self.in_use.fetch_sub(1, Ordering::SeqCst);
            return Err(AppError::validation(format!(
                "at most {} subscriptions per connection",
                self.max
            )));
        }
        Ok(BudgetGuard(self.in_use.clone()))
    }
}

/// Returns its slot when the subscription's stream is dropped.
struct BudgetGuard(Arc<AtomicUsize>);

impl Drop for BudgetGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn budget(ctx: &Context<'_>) -> Result<Option<BudgetGuard>, AppError> {
    ctx.data_opt::<SubscriptionBudget>()
        .map(|b| b.take())
        .transpose()
}

/// Whether a Board stream exists at all (the projector may not have built it yet).
async fn board_exists(ctx: &Context<'_>, id: uuid::Uuid) -> Result<bool, AppError> {
    Ok(
        sqlx::query_scalar("select exists(select 1 from streams where id = $1 and type = 'board')")
            .bind(id)
            .fetch_one(store(ctx).pool())
            .await?,
    )
}

/// Authorizes `op` on the Board as it stands now; returns its facts. A Board that does
/// not exist is NOT_FOUND only for callers who could see it whatever it were
/// ([`access::authorize_missing`]).
async fn authorize_board(
    ctx: &Context<'_>,
    op: Operation,
    id: uuid::Uuid,
) -> Result<Option<BoardFacts>> {
    access::role_check(ctx, op)?;
    let Some(board) = board_contents_at(ctx, id, None)
        .await?
        .map(|c| access::board_facts(&c))
    else {
        access::authorize_missing(ctx, op)?;
        return Ok(None);
    };
    let target = Facts {
        board: Some(board.clone()),
        ..Facts::default()
    };
    access::authorize(ctx, op, &target)?;
    Ok(Some(board))
}

#[Subscription]
impl Subscription {
    /// The Board now (when newer than `sinceVersion`), then every later version, strictly
    /// increasing. A slow client receives the newest version, never a backlog. Resume
    /// after a disconnect with `sinceVersion` set to the last version received.
    async fn board_changed(
        &self,
        ctx: &Context<'_>,
        board_id: ID,
        since_version: Option<i64>,
    ) -> Result<impl Stream<Item = Board>> {
        let id = parse_id("boardId", &board_id).map_err(AppError::from)?;
        // The budget first: a refused subscription costs no query.
        let guard = budget(ctx)?;
        authorize_board(ctx, Operation::BoardChanged, id).await?;
        if !board_exists(ctx, id).await? {
            return Err(AppError::not_found("board not found").into());
        }
        let live = ctx.data_unchecked::<LiveBoards>();
        let receiver = live.subscribe(id).await.map_err(AppError::Internal)?;
        let mut last = since_version.unwrap_or(-1);
        // A shared execution learns which version each of its frames shows.
        let tap = ctx.data_opt::<Arc<super::tap::FrameTap>>().cloned();
        Ok(WatchStream::new(receiver).filter_map(move |slot| {
            let _held = &guard;
            let contents = slot?;
            if contents.version <= last {
                return None;
            }
            last = contents.version;
            if let Some(tap) = &tap {
                tap.set_version(contents.version);
            }
            Some(Board::from_shared(contents))
        }))
    }

    /// The Board's raw events after `after` (a position from an earlier event), first
    /// from the store, then live as they are committed. Reconnect with the last
    /// position received to miss nothing and see nothing twice.
    async fn board_events(
        &self,
        ctx: &Context<'_>,
        board_id: ID,
        after: Option<i64>,
    ) -> Result<impl Stream<Item = Event>> {
        let id = parse_id("boardId", &board_id).map_err(AppError::from)?;
        let guard = budget(ctx)?;
        let board = authorize_board(ctx, Operation::BoardEvents, id).await?;
        let visible = access::sees_all_patient_fields(ctx, board.as_ref());
        if !board_exists(ctx, id).await? {
            return Err(AppError::not_found("board not found").into());
        }
        let pool = store(ctx).pool().clone();
        let start = match after {
            None | Some(0) => Cursor::default(),
            Some(p) if p < 0 => {
                return Err(AppError::validation("after must not be negative").into())
            }
            Some(p) => cursor_of(&pool, p)
                .await?
                .ok_or_else(|| AppError::validation(format!("after: no event at position {p}")))?,
        };
        let live = ctx.data_unchecked::<LiveBoards>().clone();
        let mut changes = live.subscribe(id).await.map_err(AppError::Internal)?;
        Ok(async_stream::stream! {
            let _held = guard;
            let mut cursor = start;
            loop {
                let batch = match read_after(&pool, cursor, 500, Some(id)).await {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::warn!(error = %e, "board event feed read failed");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                };
                let full = batch.len() == 500;
                for (c, event) in batch {
                    cursor = c;
                    yield Event::new(event, visible);
                }
                if !full {
                    // Wait for the projector's next change of this Board (it only
                    // announces events that are safe to read), or poll now and then.
                    if let Ok(Err(_)) = tokio::time::timeout(Duration::from_secs(2), changes.changed()).await {
                        // The Board's channel is gone: fall back to polling.
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        })
    }

    /// One appointment as it changes: its status, and while waiting its estimated start
    /// (from its Board's queue), from now on (or after `sinceVersion`). Ends after it is
    /// finished or cancelled. Patients follow their own, providers the ones assigned to
    /// them, coordinators those on Boards in their scope.
    async fn appointment_changed(
        &self,
        ctx: &Context<'_>,
        appointment_id: ID,
        since_version: Option<i64>,
    ) -> Result<impl Stream<Item = Appointment>> {
        let id = parse_id("appointmentId", &appointment_id).map_err(AppError::from)?;
        let guard = budget(ctx)?;
        access::role_check(ctx, Operation::AppointmentChanged)?;
        let state = store(ctx)
            .load::<domain::Appointment>(id, ReadLimit::All)
            .await?;
        let facts = match &state {
            Some(a) => {
                let board = board_contents_at(ctx, a.board_id, None)
                    .await?
                    .map(|c| access::board_facts(&c));
                access::appointment_facts(a, board)
            }
            None => Facts::default(),
        };
        match &state {
            Some(_) => access::authorize(ctx, Operation::AppointmentChanged, &facts)?,
            None => access::authorize_missing(ctx, Operation::AppointmentChanged)?,
        }
        let Some(state) = state else {
            return Err(AppError::not_found("appointment not found").into());
        };
        let visible = access::sees_patient_fields(ctx, &facts);
        let live = ctx.data_unchecked::<LiveBoards>();
        let receiver = live
            .subscribe(state.board_id.as_uuid())
            .await
            .map_err(AppError::Internal)?;
        let last = since_version.unwrap_or(-1);
        Ok(async_stream::stream! {
            let _held = guard;
            let mut last = last;
            // The appointment as it stands now first (the Board's document may lag it),
            // then each newer version the Board's document shows.
            let mut current = Some(state);
            let mut changes = WatchStream::new(receiver);
            loop {
                if let Some(a) = current.take().filter(|a| a.version > last) {
                    last = a.version;
                    let open = a.status.is_open();
                    yield Appointment::as_of(a, None).with_patient_fields(visible);
                    if !open {
                        break;
                    }
                }
                let Some(slot) = changes.next().await else { break };
                current = slot.and_then(|c| c.appointments.iter().find(|a| a.id.as_uuid() == id).map(|a| (**a).clone()));
            }
        })
    }
}
