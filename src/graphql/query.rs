//! Queries. Until the projector lands, every read folds events on demand.

use async_graphql::connection::{Connection, Edge};
use async_graphql::{Context, Object, Result, ID};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::store;
use super::types::{Appointment, Board, Event, Provider, ProviderShift};
use crate::domain::{self, parse_id};
use crate::error::AppError;
use crate::event_store::{list_providers, load_board_contents, read_log, LogFilter, ReadLimit};

pub struct Query;

/// Largest page a list query returns.
pub const MAX_PAGE: i32 = 500;
const DEFAULT_PAGE: i32 = 50;

fn uuid(field: &str, id: &ID) -> Result<Uuid, AppError> {
    Ok(parse_id(field, id)?)
}

fn page_size(first: Option<i32>) -> Result<i64, AppError> {
    match first.unwrap_or(DEFAULT_PAGE) {
        n @ 0..=MAX_PAGE => Ok(n as i64),
        n => Err(AppError::validation(format!(
            "first must be between 0 and {MAX_PAGE}, got {n}"
        ))),
    }
}

fn cursor(after: Option<String>) -> Result<i64, AppError> {
    match after {
        None => Ok(0),
        Some(c) => c
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .ok_or_else(|| AppError::validation(format!("after '{c}' is not a valid cursor"))),
    }
}

/// `asOf` or `version`, never both.
fn read_limit(as_of: Option<DateTime<Utc>>, version: Option<i64>) -> Result<ReadLimit, AppError> {
    match (as_of, version) {
        (Some(_), Some(_)) => Err(AppError::validation("give asOf or version, not both")),
        (Some(t), None) => Ok(ReadLimit::Time(t)),
        (None, Some(v)) if v < 0 => Err(AppError::validation("version must not be negative")),
        (None, Some(v)) => Ok(ReadLimit::Version(v)),
        (None, None) => Ok(ReadLimit::All),
    }
}

#[Object]
impl Query {
    /// A Board with its providers and appointments; `asOf` shows it as it stood then.
    async fn board(
        &self,
        ctx: &Context<'_>,
        id: ID,
        as_of: Option<DateTime<Utc>>,
    ) -> Result<Option<Board>> {
        let board_id = uuid("id", &id)?;
        let limit = read_limit(as_of, None)?;
        let contents = load_board_contents(store(ctx).pool(), board_id, limit).await?;
        Ok(contents.map(Board::from_contents))
    }

    /// An appointment, now or as of a time or stream version.
    async fn appointment(
        &self,
        ctx: &Context<'_>,
        id: ID,
        as_of: Option<DateTime<Utc>>,
        version: Option<i64>,
    ) -> Result<Option<Appointment>> {
        let limit = read_limit(as_of, version)?;
        let state = store(ctx)
            .load::<domain::Appointment>(uuid("id", &id)?, limit)
            .await?;
        Ok(state.map(Appointment))
    }

    /// A provider's shift on a Board, now or as of a time or stream version.
    async fn provider_shift(
        &self,
        ctx: &Context<'_>,
        id: ID,
        as_of: Option<DateTime<Utc>>,
        version: Option<i64>,
    ) -> Result<Option<ProviderShift>> {
        let limit = read_limit(as_of, version)?;
        let state = store(ctx)
            .load::<domain::Shift>(uuid("id", &id)?, limit)
            .await?;
        Ok(state.map(ProviderShift))
    }

    async fn provider(&self, ctx: &Context<'_>, id: ID) -> Result<Option<Provider>> {
        let state = store(ctx)
            .load::<domain::Provider>(uuid("id", &id)?, ReadLimit::All)
            .await?;
        Ok(state.map(Provider))
    }

    /// Registered providers, in registration order.
    async fn providers(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> Result<Connection<String, Provider>> {
        let limit = page_size(first)?;
        let after = cursor(after)?;
        let mut rows = list_providers(store(ctx).pool(), after, limit + 1).await?;
        let has_next = rows.len() as i64 > limit;
        rows.truncate(limit as usize);
        let mut connection = Connection::new(after > 0, has_next);
        connection.edges.extend(
            rows.into_iter()
                .map(|(seq, p)| Edge::new(seq.to_string(), Provider(p))),
        );
        Ok(connection)
    }

    /// The event log (the audit log), oldest first, optionally for one stream or Board
    /// and for some event types. The cursor is the global position.
    async fn events(
        &self,
        ctx: &Context<'_>,
        stream_id: Option<ID>,
        board_id: Option<ID>,
        after: Option<String>,
        first: Option<i32>,
        types: Option<Vec<String>>,
    ) -> Result<Connection<String, Event>> {
        let limit = page_size(first)?;
        let filter = LogFilter {
            stream_id: stream_id
                .as_ref()
                .map(|id| uuid("streamId", id))
                .transpose()?,
            board_id: board_id
                .as_ref()
                .map(|id| uuid("boardId", id))
                .transpose()?,
            after: cursor(after)?,
            types,
            limit: limit + 1,
        };
        let mut rows = read_log(store(ctx).pool(), &filter)
            .await
            .map_err(AppError::from)?;
        let has_next = rows.len() as i64 > limit;
        rows.truncate(limit as usize);
        let mut connection = Connection::new(filter.after > 0, has_next);
        connection.edges.extend(
            rows.into_iter()
                .map(|e| Edge::new(e.seq.to_string(), Event(e))),
        );
        Ok(connection)
    }
}
