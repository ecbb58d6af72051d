//! Queries. Until the projector lands, every read folds events on demand.

use async_graphql::connection::{Connection, Edge};
use async_graphql::{Context, Object, Result, ID};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::access;
use super::scalars::Date;
use super::types::{
    board_contents_at, AccessLogEntry, Appointment, Board, BoardHistoryEntry, BoardStatus, Event,
    Provider, ProviderShift, WaitEstimate,
};
use super::{estimator, store, ReadWait};
use crate::domain::{self, parse_id, AppointmentId};
use crate::error::AppError;
use crate::estimates::hypothetical_request;
use crate::event_store::{list_providers, read_log, LogFilter, ReadLimit};
use crate::identity::matrix::{Facts, Operation as Op};
use crate::projections::{read, Projection};
use crate::projector::state::ProjectionStatus;
use crate::projector::{wait_for, Reached};
use crate::time_travel::{board_as_of, board_history, stream_as_of, Snapshots};

pub struct Query;

/// Largest page a list query returns.
pub const MAX_PAGE: i32 = 500;
const DEFAULT_PAGE: i32 = 50;

/// The cost of a list: its page size (asked for, or the default) times one item's.
fn page_cost(first: Option<i32>, default: i32, child_complexity: usize) -> usize {
    (first.unwrap_or(default).max(0) as usize).saturating_mul(child_complexity.max(1))
}

/// The weight of `estimatedWaitSeconds` in a history entry's complexity: large, so that
/// `history_cost` can tell from the entry's total whether estimates were selected.
pub const HISTORY_ESTIMATE_WEIGHT: usize = 1000;

/// `boardHistory`: every version is folded whatever is selected (a tenth of a point
/// each; the summary figures come with the fold), and an estimate, when selected,
/// costs 9 points per version: estimates are what made a long history slow. (At 10, the
/// default page of 1000 versions with estimates cost 10,200, past the default limit of
/// 10,000: the field could never be selected without `first`.)
fn history_cost(first: Option<i32>, child_complexity: usize) -> usize {
    let versions = first.unwrap_or(1000).max(0) as usize;
    let estimates = child_complexity / HISTORY_ESTIMATE_WEIGHT;
    100 + versions / 10 + versions.saturating_mul(estimates).saturating_mul(9)
}

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

/// Read-your-writes: waits (bounded) until the projection has applied `min_position`.
async fn wait_until_projected(
    ctx: &Context<'_>,
    projection: Projection,
    min_position: Option<i64>,
) -> Result<(), AppError> {
    let Some(position) = min_position else {
        return Ok(());
    };
    if position < 0 {
        return Err(AppError::validation("minPosition must not be negative"));
    }
    let ReadWait(timeout) = *ctx.data_unchecked::<ReadWait>();
    match wait_for(store(ctx).pool(), projection, position, timeout).await? {
        Reached::Yes => Ok(()),
        Reached::TimedOut => Err(AppError::Stale(format!(
            "{} has not reached position {position} within {} ms; retry shortly",
            projection.name(),
            timeout.as_millis()
        ))),
        Reached::PastTheLog { last } => Err(AppError::validation(format!(
            "minPosition {position} is past the end of the log (its last position is {last}): pass a position a mutation returned"
        ))),
    }
}

/// One stream's state: its projected document, or with `asOf` / `version` a fold of its
/// events as it stood then. `read` is `(asOf, version, minPosition)`.
async fn single_stream<A>(
    ctx: &Context<'_>,
    projection: Projection,
    id: &ID,
    (as_of, version, min_position): (Option<DateTime<Utc>>, Option<i64>, Option<i64>),
) -> Result<Option<A>, AppError>
where
    A: domain::Aggregate + serde::Serialize + serde::de::DeserializeOwned + Send + Sync,
{
    let id = uuid("id", id)?;
    let limit = read_limit(as_of, version)?;
    if limit != ReadLimit::All {
        return stream_as_of::<A>(store(ctx).pool(), id, limit, Snapshots::Use).await;
    }
    wait_until_projected(ctx, projection, min_position).await?;
    read::stream_doc::<A>(store(ctx).pool(), projection, id)
        .await
        .map_err(internal)
}

fn internal(e: anyhow::Error) -> AppError {
    AppError::from(e)
}

fn board_cursor(after: Option<String>) -> Result<Option<(chrono::NaiveDate, Uuid)>, AppError> {
    let Some(c) = after else { return Ok(None) };
    let bad = || AppError::validation(format!("after '{c}' is not a valid cursor"));
    let (date, id) = c.split_once('/').ok_or_else(bad)?;
    let date = chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d").map_err(|_| bad())?;
    let id = Uuid::parse_str(id).map_err(|_| bad())?;
    Ok(Some((date, id)))
}

/// The target of a Board read, for the matrix (no Board: nothing is known about it).
fn board_target(contents: Option<&domain::BoardContents>) -> Facts {
    Facts {
        board: contents.map(access::board_facts),
        ..Facts::default()
    }
}

/// Authorizes a read by id: of the target `facts` describes when it `exists`, else
/// of a missing one (null for those who could see it whatever it were, refused as a
/// target out of scope for everyone else: see [`access::authorize_missing`]).
fn authorize_read(
    ctx: &Context<'_>,
    op: Op,
    exists: bool,
    facts: impl FnOnce() -> Facts,
) -> Result<()> {
    if exists {
        access::authorize(ctx, op, &facts())
    } else {
        access::authorize_missing(ctx, op)
    }
}

/// The facts of a Board as it stands now (its region, specialty and providers).
async fn current_board(
    ctx: &Context<'_>,
    board_id: impl Into<Uuid>,
) -> Result<Option<crate::identity::matrix::BoardFacts>, AppError> {
    Ok(board_contents_at(ctx, board_id, None)
        .await?
        .map(|c| access::board_facts(&c)))
}

/// The caller's own patient id, for the operations a patient runs on their own data.
fn own_patient_id(ctx: &Context<'_>, op: Op) -> Result<String> {
    access::authorize(ctx, op, &Facts::default())?;
    match access::principal(ctx)?.map(|p| &p.scope) {
        Some(crate::identity::Scope::Patient { patient_id }) => Ok(patient_id.clone()),
        _ => Err(access::forbidden(format!(
            "{op} answers for a patient's own token"
        ))),
    }
}

/// One page of access records.
async fn access_log_page(
    ctx: &Context<'_>,
    query: crate::identity::access_log::LogQuery,
) -> Result<Connection<String, AccessLogEntry>> {
    let limit = query.limit - 1;
    let mut rows = crate::identity::access_log::read(store(ctx).pool(), &query)
        .await
        .map_err(internal)?;
    let has_next = rows.len() as i64 > limit;
    rows.truncate(limit.max(0) as usize);
    let mut connection = Connection::new(query.after > 0, has_next);
    connection.edges.extend(
        rows.into_iter()
            .map(|r| Edge::new(r.seq.to_string(), AccessLogEntry::from(r))),
    );
    Ok(connection)
}

#[Object]
impl Query {
    /// A Board with its providers and appointments, from the projected `board_view`.
    /// `minPosition` (a mutation's `position`) waits until the projector has applied it
    /// and answers STALE if it does not within the configured wait. `asOf` instead
    /// folds the Board's streams as they stood at that time.
    #[graphql(complexity = "if as_of.is_some() { 200 } else { 50 } + child_complexity")]
    async fn board(
        &self,
        ctx: &Context<'_>,
        id: ID,
        as_of: Option<DateTime<Utc>>,
        min_position: Option<i64>,
    ) -> Result<Option<Board>> {
        let board_id = uuid("id", &id)?;
        if let Some(t) = as_of {
            let contents = board_as_of(store(ctx).pool(), board_id, t, Snapshots::Use).await?;
            authorize_read(ctx, Op::BoardAsOf, contents.is_some(), || {
                board_target(contents.as_ref())
            })?;
            return Ok(contents.map(|c| Board::from_contents_as_of(c, t)));
        }
        wait_until_projected(ctx, Projection::BoardView, min_position).await?;
        let contents = super::boards(ctx)
            .contents(store(ctx).pool(), board_id)
            .await
            .map_err(internal)?;
        authorize_read(ctx, Op::Board, contents.is_some(), || {
            board_target(contents.as_deref())
        })?;
        Ok(contents.map(Board::from_shared))
    }

    /// Boards, ordered by date then id, filtered by any of date, specialty, region and
    /// status.
    #[allow(clippy::too_many_arguments)]
    #[graphql(complexity = "5 + page_cost(first, 50, child_complexity)")]
    async fn boards(
        &self,
        ctx: &Context<'_>,
        date: Option<Date>,
        specialty: Option<String>,
        region: Option<String>,
        status: Option<BoardStatus>,
        first: Option<i32>,
        after: Option<String>,
    ) -> Result<Connection<String, Board>> {
        let limit = page_size(first)?;
        let cursor = board_cursor(after)?;
        for (field, text) in [("specialty", &specialty), ("region", &region)] {
            if let Some(text) = text {
                domain::storable_text(field, text)?;
            }
        }
        let filter = read::BoardFilter {
            date: date.map(|d| d.0),
            specialty: specialty.map(|s| s.trim().to_lowercase()),
            region: region.map(|r| r.trim().to_uppercase()),
            status: status.map(|s| match s {
                BoardStatus::Open => "OPEN".to_string(),
                BoardStatus::Closed => "CLOSED".to_string(),
            }),
        };
        let mut docs = read::boards(store(ctx).pool(), &filter, cursor, limit + 1)
            .await
            .map_err(internal)?;
        let has_next = docs.len() as i64 > limit;
        docs.truncate(limit as usize);
        let mut connection = Connection::new(cursor.is_some(), has_next);
        connection.edges.extend(docs.into_iter().filter_map(|d| {
            let contents = d.to_contents()?;
            // Only the Boards the caller may see (a provider's joined ones, a
            // coordinator's regions and specialties).
            access::authorize(ctx, Op::Boards, &board_target(Some(&contents))).ok()?;
            let cursor = format!("{}/{}", contents.board.date, contents.board.id);
            Some(Edge::new(cursor, Board::from_contents(contents)))
        }));
        Ok(connection)
    }

    /// The dates that have Boards, newest first (for a front-end to open on the newest
    /// workday, or offer the others).
    async fn board_dates(&self, ctx: &Context<'_>, first: Option<i32>) -> Result<Vec<Date>> {
        let limit = page_size(first)?;
        let dates = crate::projections::read::board_dates(store(ctx).pool(), limit)
            .await
            .map_err(AppError::from)?;
        Ok(dates.into_iter().map(Date).collect())
    }

    /// An appointment from the projected `appointment_view`; with `asOf` or `version`,
    /// folded from its events as it stood then.
    #[graphql(
        complexity = "if as_of.is_some() || version.is_some() { 20 } else { 5 } + child_complexity"
    )]
    async fn appointment(
        &self,
        ctx: &Context<'_>,
        id: ID,
        as_of: Option<DateTime<Utc>>,
        version: Option<i64>,
        min_position: Option<i64>,
    ) -> Result<Option<Appointment>> {
        let read = (as_of, version, min_position);
        let state =
            single_stream::<domain::Appointment>(ctx, Projection::AppointmentView, &id, read)
                .await?;
        let facts = match &state {
            Some(a) => access::appointment_facts(a, current_board(ctx, a.board_id).await?),
            None => Facts::default(),
        };
        authorize_read(ctx, Op::Appointment, state.is_some(), || facts.clone())?;
        let visible = access::sees_patient_fields(ctx, &facts);
        // A version read has no moment to estimate a wait for.
        Ok(state.map(|a| {
            match version {
                Some(_) => Appointment::without_estimate(a),
                None => Appointment::as_of(a, as_of),
            }
            .with_patient_fields(visible)
        }))
    }

    /// When a new appointment of `specialty` (for a patient in `region`, by default the
    /// Board's) requested on the Board now, or at `asOf`, would be expected to start:
    /// the queue ahead of it, the providers who could take it and how long their
    /// appointments take (see the README's "Wait-time estimates").
    #[graphql(complexity = "100 + child_complexity")]
    async fn wait_time_estimate(
        &self,
        ctx: &Context<'_>,
        board_id: ID,
        specialty: String,
        region: Option<String>,
        as_of: Option<DateTime<Utc>>,
    ) -> Result<WaitEstimate> {
        let board_id = uuid("boardId", &board_id)?;
        let specialty = domain::specialty("specialty", &specialty)?;
        let region = region.map(|r| domain::region("region", &r)).transpose()?;
        let pool = store(ctx).pool();
        let contents = board_contents_at(ctx, board_id, as_of).await?;
        let Some(contents) = contents else {
            return Err(AppError::not_found("board not found").into());
        };
        if contents.board.status != domain::BoardStatus::Open {
            return Err(AppError::Domain(domain::DomainError::InvalidTransition(
                "board is CLOSED, not OPEN: it takes no new appointments".into(),
            ))
            .into());
        }
        let now = as_of.unwrap_or_else(Utc::now);
        let request = hypothetical_request(&contents.board, specialty, region, now);
        let estimates = estimator(ctx)
            .board(pool, &contents, as_of, Some(&request))
            .await?;
        let estimate = estimates
            .get(&request.id)
            .ok_or_else(|| AppError::Internal(anyhow::anyhow!("the estimate lost its request")))?;
        Ok(WaitEstimate::of(estimate, now))
    }

    /// A provider's shift from the projected `provider_shift_view`; with `asOf` or
    /// `version`, folded from its events as it stood then.
    #[graphql(
        complexity = "if as_of.is_some() || version.is_some() { 20 } else { 5 } + child_complexity"
    )]
    async fn provider_shift(
        &self,
        ctx: &Context<'_>,
        id: ID,
        as_of: Option<DateTime<Utc>>,
        version: Option<i64>,
        min_position: Option<i64>,
    ) -> Result<Option<ProviderShift>> {
        let read = (as_of, version, min_position);
        let state =
            single_stream::<domain::Shift>(ctx, Projection::ProviderShiftView, &id, read).await?;
        let facts = match &state {
            Some(s) => access::shift_facts(s, current_board(ctx, s.board_id).await?),
            None => Facts::default(),
        };
        authorize_read(ctx, Op::ProviderShift, state.is_some(), || facts)?;
        Ok(state.map(ProviderShift))
    }

    /// The day's timeline of a Board: every version caused by events recorded in
    /// `(from, to]`, with the event and the headline figures, oldest first.
    #[graphql(complexity = "history_cost(first, child_complexity)")]
    async fn board_history(
        &self,
        ctx: &Context<'_>,
        board_id: ID,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        first: Option<i32>,
    ) -> Result<Vec<BoardHistoryEntry>> {
        let id = uuid("boardId", &board_id)?;
        if to < from {
            return Err(AppError::validation("to must not be before from").into());
        }
        let limit = match first.unwrap_or(1000) {
            n @ 0..=10_000 => n as i64,
            n => {
                return Err(AppError::validation(format!(
                    "first must be between 0 and 10000, got {n}"
                ))
                .into())
            }
        };
        let contents = board_contents_at(ctx, id, None).await?;
        let board = contents.as_deref().map(access::board_facts);
        let target = Facts {
            board: board.clone(),
            ..Facts::default()
        };
        access::authorize(ctx, Op::BoardHistory, &target)?;
        // Coordinators in scope see every patient's fields in the events; a provider
        // those of the appointments assigned to them (as the Board stands now).
        let all = access::sees_all_patient_fields(ctx, board.as_ref());
        let visible: std::collections::HashSet<AppointmentId> = contents
            .iter()
            .flat_map(|c| c.appointments.iter())
            .filter(|a| {
                access::sees_patient_fields(ctx, &access::appointment_facts(a, board.clone()))
            })
            .map(|a| a.id)
            .collect();
        let estimates = ctx
            .look_ahead()
            .field("estimatedWaitSeconds")
            .exists()
            .then(|| estimator(ctx));
        let entries = board_history(store(ctx).pool(), estimates, id, from, to, limit).await?;
        Ok(entries
            .into_iter()
            .map(|e| {
                let shown = all || visible.contains(&e.event.stream_id.into());
                BoardHistoryEntry(e, shown)
            })
            .collect())
    }

    /// Every projection generation: checkpoint, lag, state, rebuild progress, dead letters.
    #[graphql(complexity = "10 + child_complexity")]
    async fn projections(&self, ctx: &Context<'_>) -> Result<Vec<ProjectionStatus>> {
        Ok(crate::projector::state::status(store(ctx).pool())
            .await
            .map_err(AppError::from)?)
    }

    #[graphql(complexity = "10 + child_complexity")]
    async fn provider(&self, ctx: &Context<'_>, id: ID) -> Result<Option<Provider>> {
        let state = store(ctx)
            .load::<domain::Provider>(uuid("id", &id)?, ReadLimit::All)
            .await?;
        Ok(state.map(Provider))
    }

    /// Registered providers, in registration order.
    #[graphql(complexity = "5 + page_cost(first, 50, child_complexity)")]
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
    #[graphql(complexity = "5 + page_cost(first, 50, child_complexity)")]
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
        for t in types.iter().flatten() {
            domain::storable_text("types", t)?;
        }
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
        let visible = match filter.board_id {
            Some(board_id) => {
                let board = current_board(ctx, board_id).await?;
                let target = Facts {
                    board: board.clone(),
                    ..Facts::default()
                };
                access::authorize(ctx, Op::Events, &target)?;
                access::sees_all_patient_fields(ctx, board.as_ref())
            }
            None => {
                access::authorize_all_boards(ctx, Op::Events)?;
                access::sees_all_patient_fields(ctx, None)
            }
        };
        let mut rows = read_log(store(ctx).pool(), &filter)
            .await
            .map_err(AppError::from)?;
        let has_next = rows.len() as i64 > limit;
        rows.truncate(limit as usize);
        let mut connection = Connection::new(filter.after > 0, has_next);
        connection.edges.extend(
            rows.into_iter()
                .map(|e| Edge::new(e.seq.to_string(), Event::new(e, visible))),
        );
        Ok(connection)
    }

    /// The access log (admins): who saw which patient data, oldest first, filtered by
    /// the viewer's subject, the patient or appointment shown, and a time range
    /// `[from, to)`. The cursor is the record's `seq`.
    #[allow(clippy::too_many_arguments)]
    #[graphql(complexity = "5 + page_cost(first, 50, child_complexity)")]
    async fn access_log(
        &self,
        ctx: &Context<'_>,
        subject: Option<String>,
        patient_id: Option<String>,
        appointment_id: Option<ID>,
        from: Option<DateTime<Utc>>,
        to: Option<DateTime<Utc>>,
        first: Option<i32>,
        after: Option<String>,
    ) -> Result<Connection<String, AccessLogEntry>> {
        access::authorize(ctx, Op::AccessLog, &Facts::default())?;
        for (field, text) in [("subject", &subject), ("patientId", &patient_id)] {
            if let Some(text) = text {
                domain::storable_text(field, text)?;
            }
        }
        let appointment = match appointment_id {
            None => None,
            Some(id) => {
                let appointment_id = uuid("appointmentId", &id)?;
                let state = store(ctx)
                    .load::<domain::Appointment>(appointment_id, ReadLimit::All)
                    .await?;
                Some(crate::identity::access_log::AppointmentQuery {
                    appointment_id,
                    on_board: state.map(|a| crate::identity::access_log::OnBoard {
                        board_id: a.board_id.as_uuid(),
                        patient_id: a.patient_id,
                        since: a.requested_at,
                    }),
                })
            }
        };
        let query = crate::identity::access_log::LogQuery {
            subject,
            patient_id,
            appointment,
            from,
            to,
            after: cursor(after)?,
            limit: page_size(first)? + 1,
        };
        access_log_page(ctx, query).await
    }

    /// Who has seen my record (patients): every access record that showed my patient
    /// data, oldest first. The cursor is the record's `seq`.
    #[graphql(complexity = "5 + page_cost(first, 50, child_complexity)")]
    async fn my_access_log(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> Result<Connection<String, AccessLogEntry>> {
        let patient_id = own_patient_id(ctx, Op::MyAccessLog)?;
        let query = crate::identity::access_log::LogQuery {
            patient_id: Some(patient_id.clone()),
            after: cursor(after)?,
            limit: page_size(first)? + 1,
            ..Default::default()
        };
        let mut page = access_log_page(ctx, query).await?;
        let me = access::principal(ctx)?.map(|p| p.subject.clone());
        for edge in &mut page.edges {
            // A record of a Board or a list shows this patient only their own part:
            // never the other patients it disclosed.
            crate::identity::access_log::narrow_to_patient(&mut edge.node.disclosed.0, &patient_id);
            // Nor where the staff member's request came from (an internal address).
            if me.as_deref() != Some(edge.node.subject.as_str()) {
                edge.node.client_addr = None;
            }
        }
        Ok(page)
    }

    /// My appointments (patients), newest request first.
    #[graphql(complexity = "5 + page_cost(first, 50, child_complexity)")]
    async fn my_appointments(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
    ) -> Result<Vec<Appointment>> {
        let patient_id = own_patient_id(ctx, Op::MyAppointments)?;
        let limit = page_size(first)?;
        let mine = read::patient_appointments(store(ctx).pool(), &patient_id, limit)
            .await
            .map_err(internal)?;
        Ok(mine
            .into_iter()
            .map(|a| {
                let facts = access::appointment_facts(&a, None);
                let visible = access::sees_patient_fields(ctx, &facts);
                Appointment::as_of(a, None).with_patient_fields(visible)
            })
            .collect())
    }
}
