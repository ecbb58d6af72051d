//! The matcher: pairs waiting appointments with READY providers as soon as both exist.
//!
//! It is a process that reacts to events, run by the leader (see [`crate::daemon`]) as a
//! peer of the projector, with its own checkpoint in `process_checkpoints`. It reads the log the
//! way the projector does (`(tx, seq)` after its checkpoint, below the oldest running
//! transaction), so it never skips an event. For every Board where something happened
//! that can make a match possible — an appointment requested; a provider joined, back
//! from a pause, done charting, or freed by a cancellation — it reads the Board's shifts
//! and waiting appointments from the event store, asks [`matching::plan`] and writes each
//! pairing with [`commands::schedule_appointment`]: `AppointmentScheduled` + `ProviderAssigned`
//! together, both checked against the versions the plan was made on. If either stream
//! moved (a coordinator scheduled by hand, the provider paused), the write is refused
//! and the matcher re-reads and re-decides.
//!
//! At-least-once: the checkpoint moves after the Board's matches are written, so a crash
//! in between makes the next leader look at the same Boards again; the plan it then
//! makes from the current state is empty where the work was done. Idempotent by
//! construction.
//!
//! Boards kept between batches: a Board is read from the event store (its shifts and
//! waiting appointments) the first time a trigger needs it, then kept in memory and
//! brought forward with every event of its streams the matcher reads after its
//! checkpoint, so a match costs what changed, not a read that visits every stream row
//! of the Board (see [`MatcherBoards`]); before each plan the kept streams are read forward
//! to now in one statement. Kept Boards start empty each time this process
//! leads, and a Board is read again whenever what is kept cannot be trusted (a gap in
//! a stream's versions, a fold error, a refused write).
//!
//! A Board that keeps failing does not hold up the others: after the configured
//! attempts at a batch, the Boards that still fail are parked in
//! `matcher_parked_boards` and the checkpoint moves on. A parked Board is retried
//! whenever a new trigger arrives on it and every `parked_retry_interval`; once a
//! retry works it leaves the table. Matching is decided from the Board's current state,
//! so a late retry misses nothing.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use chrono::Utc;
use sqlx::PgPool;
use tokio::sync::{watch, Notify};
use uuid::Uuid;

use crate::commands::{self, CommandOptions, ScheduleAppointment};
use crate::domain::matching;
use crate::domain::{Appointment, AppointmentId, AppointmentStatus, ProviderId, Shift, ShiftId};
use crate::error::AppError;
use crate::estimates::Estimator;
use crate::event_store::log::{read_after, Cursor};
use crate::event_store::unit_of_work::CommandMeta;
use crate::event_store::{
    read_board_streams_waiting, read_stream_from, EventStore, ReadLimit, RecordedEvent,
};
use crate::faults::Faults;
use crate::identity::Actor;
use crate::leader::{advance_checkpoint, Checkpoint, Fence};
use crate::metrics::Metrics;
use crate::pacing::{backoff, IdlePoll};
use crate::projections::read::{board_reads, BoardReads};
use crate::projections::{load_board_for_matching, BoardDoc, Doc};

/// The matcher's row in `process_checkpoints`.
pub const NAME: &str = "matcher";

/// Events after which a Board may hold a new possible match.
pub const TRIGGERS: [&str; 4] = [
    "AppointmentRequested",
    "ProviderJoined",
    "ProviderReady",
    "ChartingFinished",
];

/// Re-reads and re-decisions of one Board before the batch is retried from scratch.
const MAX_ROUNDS: usize = 20;

pub struct Matcher {
    store: EventStore,
    estimator: Estimator,
    metrics: Arc<Metrics>,
    config: MatcherConfig,
    faults: Faults,
}

#[derive(Clone)]
pub struct MatcherConfig {
    /// Most events read per batch.
    pub batch_size: i64,
    /// Longest sleep between polls when idle.
    pub max_poll_interval: Duration,
    /// First retry delay of a failed batch; doubles per attempt.
    pub retry_backoff: Duration,
    /// Attempts at a batch before the Boards that still fail are parked.
    pub max_attempts: u32,
    /// How often parked Boards are retried.
    pub parked_retry_interval: Duration,
}

/// Why the matcher stopped.
#[derive(Debug, PartialEq, Eq)]
pub enum MatcherEnd {
    Shutdown,
    /// The checkpoint could not be moved: the leader lock is gone.
    LostLock,
}

impl Matcher {
    pub fn new(
        store: EventStore,
        estimator: Estimator,
        metrics: Arc<Metrics>,
        config: MatcherConfig,
        faults: Faults,
    ) -> Self {
        Self {
            store,
            estimator,
            metrics,
            config,
            faults,
        }
    }

    fn pool(&self) -> &PgPool {
        self.store.pool()
    }

    /// Runs while the caller leads (its checkpoint writes fenced by `fence`).
    pub async fn run(
        &self,
        fence: Fence,
        wake: &Notify,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<MatcherEnd> {
        let mut cursor = load_checkpoint(self.pool()).await?;
        let mut parked = load_parked(self.pool()).await?;
        // Read again each time this process leads: another leader may have matched
        // meanwhile.
        let mut kept = MatcherBoards::default();
        self.metrics.set_matcher_parked(parked.len());
        let mut last_parked_retry = Instant::now();
        let mut poll = IdlePoll::new(self.config.max_poll_interval);
        // Failed attempts at the batch after `cursor`.
        let mut attempts: u32 = 0;
        loop {
            if *shutdown.borrow() {
                return Ok(MatcherEnd::Shutdown);
            }
            if !parked.is_empty()
                && last_parked_retry.elapsed() >= self.config.parked_retry_interval
            {
                self.retry_parked(&mut parked, &mut kept).await;
                last_parked_retry = Instant::now();
            }
            let park = attempts + 1 >= self.config.max_attempts.max(1);
            match self.step(cursor, fence, park, &mut parked, &mut kept).await {
                Ok(Some(next)) => {
                    cursor = next;
                    poll.reset();
                    attempts = 0;
                    continue;
                }
                Ok(None) => {}
                Err(StepError::LostLock) => return Ok(MatcherEnd::LostLock),
                Err(StepError::Failed(e)) => {
                    attempts = attempts.saturating_add(1);
                    tracing::warn!(error = %e, attempts, "matcher batch failed; will retry");
                    tokio::time::sleep(backoff(self.config.retry_backoff, attempts)).await;
                    continue;
                }
            }
            poll.wait(wake, &mut shutdown).await;
        }
    }

    /// One batch: match on every Board it touches, then move the checkpoint. `None`
    /// when there was nothing new. A Board that fails fails the batch, unless `park`:
    /// then it is parked and the batch completes.
    async fn step(
        &self,
        cursor: Cursor,
        fence: Fence,
        park: bool,
        parked: &mut HashSet<Uuid>,
        kept: &mut MatcherBoards,
    ) -> Result<Option<Cursor>, StepError> {
        let rows = read_after(self.pool(), cursor, self.config.batch_size, None)
            .await
            .map_err(|e| StepError::Failed(e.into()))?;
        let Some((last, _)) = rows.last() else {
            return Ok(None);
        };
        let next = *last;
        // Every event of a kept Board's streams, trigger or not, before any decision.
        for (_, e) in &rows {
            kept.apply(e);
        }
        for (board, streams) in kept.behind() {
            self.read_forward(kept, board, &streams).await;
        }
        // Boards in the order their first trigger appeared, each with that trigger.
        let mut boards: Vec<(Uuid, &RecordedEvent)> = Vec::new();
        for (_, e) in &rows {
            if !TRIGGERS.contains(&e.event_type.as_str()) {
                continue;
            }
            if let Some(board) = e.board_id {
                if !boards.iter().any(|(b, _)| *b == board) {
                    boards.push((board, e));
                }
            }
        }
        let mut failed = Vec::new();
        for (board, trigger) in boards {
            match self.match_board(board, Some(trigger), kept).await {
                Ok(()) => {
                    if parked.contains(&board) {
                        self.unpark(board, parked)
                            .await
                            .map_err(|e| StepError::Failed(e.into()))?;
                    }
                }
                Err(e) => failed.push((board, trigger.seq, e)),
            }
        }
        if !failed.is_empty() {
            if !park {
                let (board, _, e) = failed.swap_remove(0);
                return Err(StepError::Failed(e.context(format!("board {board}"))));
            }
            for (board, seq, e) in &failed {
                tracing::error!(%board, error = %e, "matcher parks a board it cannot match; other boards go on");
                park_board(self.pool(), *board, *seq, e, self.config.max_attempts)
                    .await
                    .map_err(|e| StepError::Failed(e.into()))?;
                parked.insert(*board);
            }
            self.metrics.set_matcher_parked(parked.len());
        }
        let checkpoint = Checkpoint::Process { name: NAME };
        if !advance_checkpoint(
            self.pool(),
            checkpoint,
            cursor,
            next,
            rows.len() as i64,
            fence,
        )
        .await
        .map_err(|e| StepError::Failed(e.into()))?
        {
            return Err(StepError::LostLock);
        }
        Ok(Some(next))
    }

    /// Tries every parked Board again; those that work leave the table.
    async fn retry_parked(&self, parked: &mut HashSet<Uuid>, kept: &mut MatcherBoards) {
        for board in parked.clone() {
            let result = match self.match_board(board, None, kept).await {
                Ok(()) => self.unpark(board, parked).await,
                Err(e) => {
                    tracing::warn!(%board, error = %e, "parked board still cannot be matched");
                    record_retry(self.pool(), board, &e).await
                }
            };
            if let Err(e) = result {
                tracing::warn!(%board, error = %e, "cannot record a parked board's retry");
            }
        }
    }

    async fn unpark(&self, board: Uuid, parked: &mut HashSet<Uuid>) -> Result<(), sqlx::Error> {
        sqlx::query("delete from matcher_parked_boards where board_id = $1")
            .bind(board)
            .execute(self.pool())
            .await?;
        parked.remove(&board);
        self.metrics.set_matcher_parked(parked.len());
        tracing::info!(%board, "matcher matches a parked board again");
        Ok(())
    }

    /// Makes every match the Board allows now, re-reading after any refused write.
    async fn match_board(
        &self,
        board_id: Uuid,
        trigger: Option<&RecordedEvent>,
        kept: &mut MatcherBoards,
    ) -> Result<()> {
        if self.faults.matcher_fails(board_id) {
            return Err(anyhow!("injected matcher fault"));
        }
        for _ in 0..MAX_ROUNDS {
            let Some(contents) = self.waiting(board_id, kept).await? else {
                return Ok(());
            };
            let ready: Vec<ProviderId> = contents
                .shifts
                .iter()
                .filter(|s| s.status == crate::domain::ShiftStatus::Ready)
                .map(|s| s.provider_id)
                .collect();
            if ready.is_empty() {
                return Ok(());
            }
            let providers = self
                .estimator
                .providers(self.pool(), ready)
                .await
                .map_err(app_error)?;
            let pairings = matching::plan(&contents.appointments, &contents.shifts, &providers);
            if pairings.is_empty() {
                return Ok(());
            }
            let appointments: HashMap<AppointmentId, _> =
                contents.appointments.iter().map(|a| (a.id, a)).collect();
            let shifts: HashMap<ShiftId, _> = contents.shifts.iter().map(|s| (s.id, s)).collect();
            let mut refused = false;
            for p in pairings {
                let (a, s) = (appointments[&p.appointment_id], shifts[&p.shift_id]);
                let now = Utc::now();
                let estimated_time = self
                    .estimator
                    .scheduled_start(self.pool(), &a.specialty, now)
                    .await
                    .map_err(app_error)?;
                let mut meta = CommandMeta::new("match");
                meta.actor = Actor::system(NAME);
                if let Some(trigger) = trigger {
                    meta.causation_id = Some(trigger.id.to_string());
                    if let Some(c) = trigger
                        .metadata
                        .get("correlationId")
                        .and_then(|c| c.as_str())
                    {
                        meta.correlation_id = c.to_string();
                    }
                }
                // Both streams exactly at the versions the plan was made on: if either
                // moved since, CONFLICT and nothing is written.
                let command = ScheduleAppointment {
                    appointment_id: p.appointment_id,
                    shift_id: p.shift_id,
                    estimated_time: Some(estimated_time),
                    expected_shift_version: Some(s.version),
                    options: CommandOptions {
                        expected_version: Some(a.version),
                        command_id: None,
                    },
                };
                match commands::schedule_appointment(&self.store, &self.estimator, meta, command)
                    .await
                {
                    Ok(_) => {
                        // Neither is offered again before the log shows what was written.
                        kept.wrote(board_id, a.id.as_uuid(), a.version + 1);
                        kept.wrote(board_id, s.id.as_uuid(), s.version + 1);
                        let possible_since =
                            s.ready_since.unwrap_or(a.requested_at).max(a.requested_at);
                        let latency = (Utc::now() - possible_since).to_std().unwrap_or_default();
                        self.metrics.matched(latency);
                        tracing::debug!(appointment = %a.id, shift = %s.id, "matched");
                    }
                    // The appointment or the shift moved since the plan: decide again.
                    Err(AppError::Conflict(_)) | Err(AppError::Domain(_)) => {
                        self.metrics.matcher_conflict();
                        // What is kept of them may be behind the log.
                        self.catch_up(kept, board_id, [a.id.as_uuid(), s.id.as_uuid()])
                            .await;
                        refused = true;
                        break;
                    }
                    Err(e) => return Err(app_error(e)),
                }
            }
            if !refused {
                return Ok(());
            }
        }
        Err(anyhow!(
            "board {board_id}: still contended after {MAX_ROUNDS} rounds"
        ))
    }

    /// Brings the kept streams of a refused write up to the log, past the matcher's
    /// checkpoint (later events of them are then passed as already applied). If
    /// neither moved, the refusal came from elsewhere: the Board is read again.
    async fn catch_up(&self, kept: &mut MatcherBoards, board_id: Uuid, streams: [Uuid; 2]) {
        if !self.read_forward(kept, board_id, &streams).await {
            kept.forget(board_id);
        }
    }

    /// Reads the kept streams of a Board forward from the store; whether any moved
    /// (false too when the Board cannot take them: it is then let go).
    async fn read_forward(
        &self,
        kept: &mut MatcherBoards,
        board_id: Uuid,
        streams: &[Uuid],
    ) -> bool {
        let Some(board) = kept.boards.get_mut(&board_id) else {
            return false;
        };
        let mut moved = false;
        for &stream in streams {
            board.behind.remove(&stream);
            // Not kept: an appointment that no longer waits.
            let Some(after) = board.doc.applied.get(&stream).copied() else {
                continue;
            };
            match read_stream_from(self.pool(), stream, after, ReadLimit::All).await {
                Ok(events) if events.iter().all(|e| board.apply(e)) => {
                    moved |= !events.is_empty();
                }
                Ok(_) | Err(_) => {
                    kept.forget(board_id);
                    return false;
                }
            }
        }
        moved
    }

    /// Reads the `which` streams of a kept Board forward from the store past the
    /// versions kept, in one statement, and applies what it finds (the Board is let go
    /// when it cannot take it).
    async fn read_kept_forward(
        &self,
        kept: &mut MatcherBoards,
        board_id: Uuid,
        which: KeptStreams,
    ) -> Result<()> {
        let Some(board) = kept.boards.get(&board_id) else {
            return Ok(());
        };
        let streams: Vec<(Uuid, i64)> = board
            .doc
            .applied
            .iter()
            .filter(|(s, _)| which.holds(board.doc.appointments.contains_key(*s)))
            .map(|(s, v)| (*s, *v))
            .collect();
        if streams.is_empty() {
            return Ok(());
        }
        let appointments = streams
            .iter()
            .filter(|(s, _)| board.doc.appointments.contains_key(s))
            .count();
        self.metrics
            .matcher_read_forward(appointments, streams.len() - appointments);
        let events = read_streams_after(self.pool(), &streams).await?;
        let board = kept.boards.get_mut(&board_id).expect("kept");
        if !events.iter().all(|e| board.apply(e)) {
            kept.forget(board_id);
        }
        Ok(())
    }

    /// The Board's shifts and waiting appointments as the matcher decides on them: from
    /// the kept Board (read and kept first if need be), without what this matcher
    /// wrote and has not yet read back; with [`BoardReads::Scan`] (the earlier path),
    /// read from the event store each time. `None` when the Board does not exist.
    async fn waiting(&self, board_id: Uuid, kept: &mut MatcherBoards) -> Result<Option<Waiting>> {
        if board_reads() == BoardReads::Scan {
            let Some(contents) = load_board_for_matching(self.pool(), board_id)
                .await
                .map_err(app_error)?
            else {
                return Ok(None);
            };
            return Ok(Some(Waiting {
                appointments: contents
                    .appointments
                    .iter()
                    .map(|a| (**a).clone())
                    .collect(),
                shifts: contents.shifts,
            }));
        }
        if kept.boards.contains_key(&board_id) {
            // Decide on the kept streams as they are now, not as of the checkpoint
            // (which may be far behind under load): what each has past the version
            // kept, a cost that follows the shifts and waiting appointments, not the
            // Board. Requests not yet read come with their own trigger.
            match matcher_reads() {
                MatcherReads::OneRead => {
                    self.read_kept_forward(kept, board_id, KeptStreams::All)
                        .await?;
                }
                MatcherReads::ShiftsFirst => {
                    // The Board's and shifts' streams first: a plan pairs only with a
                    // READY shift, so while none is, the waiting appointments (the
                    // many streams of a busy Board) are not read. They are read
                    // forward before any plan that can pair, so none is made on an
                    // appointment that stopped waiting.
                    self.read_kept_forward(kept, board_id, KeptStreams::AllButAppointments)
                        .await?;
                    if kept
                        .boards
                        .get(&board_id)
                        .is_some_and(KeptBoard::has_ready_shift)
                    {
                        self.read_kept_forward(kept, board_id, KeptStreams::Appointments)
                            .await?;
                    }
                }
            }
        }
        if !kept.boards.contains_key(&board_id) {
            let events = read_board_streams_waiting(self.pool(), board_id).await?;
            let Some(board) = KeptBoard::fold(board_id, &events)? else {
                return Ok(None);
            };
            kept.keep(board_id, board);
        }
        Ok(kept.boards.get(&board_id).map(KeptBoard::waiting))
    }
}

/// Which of a kept Board's streams a forward read covers.
#[derive(Debug, Clone, Copy)]
enum KeptStreams {
    All,
    /// The Board's own stream and its shifts.
    AllButAppointments,
    /// The waiting appointments.
    Appointments,
}

impl KeptStreams {
    fn holds(self, appointment: bool) -> bool {
        match self {
            KeptStreams::All => true,
            KeptStreams::AllButAppointments => !appointment,
            KeptStreams::Appointments => appointment,
        }
    }
}

/// How the matcher brings a kept Board forward before it plans.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum MatcherReads {
    /// The Board's and shifts' streams, then the waiting appointments only when a
    /// shift is READY (no plan can pair without one): while every provider is busy, a
    /// trigger costs what the shifts hold, not what waits.
    #[default]
    ShiftsFirst,
    /// Every kept stream in one read before each plan: the earlier path, kept for the
    /// benchmark's before/after rows.
    OneRead,
}

static MATCHER_READS_ONE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Selects how this process's matcher reads kept Boards forward (see [`MatcherReads`]).
pub fn set_matcher_reads(reads: MatcherReads) {
    MATCHER_READS_ONE.store(
        reads == MatcherReads::OneRead,
        std::sync::atomic::Ordering::Relaxed,
    );
}

/// How this process's matcher reads kept Boards forward.
pub fn matcher_reads() -> MatcherReads {
    if MATCHER_READS_ONE.load(std::sync::atomic::Ordering::Relaxed) {
        MatcherReads::OneRead
    } else {
        MatcherReads::ShiftsFirst
    }
}

/// The events of each stream after the version given, each stream in version order:
/// one statement, an index range per stream (`events_stream_version_key`).
async fn read_streams_after(
    pool: &PgPool,
    streams: &[(Uuid, i64)],
) -> Result<Vec<RecordedEvent>, sqlx::Error> {
    let (ids, versions): (Vec<Uuid>, Vec<i64>) = streams.iter().copied().unzip();
    sqlx::query_as(&format!(
        "select {EVENT_COLUMNS} from unnest($1::uuid[], $2::bigint[]) as k(id, version) \
           join events e on e.stream_id = k.id and e.version > k.version \
           join streams s on s.id = e.stream_id \
          order by e.stream_id, e.version",
        EVENT_COLUMNS = crate::event_store::EVENT_COLUMNS
    ))
    .bind(ids)
    .bind(versions)
    .fetch_all(pool)
    .await
}

/// A Board's shifts and waiting appointments, for [`matching::plan`].
struct Waiting {
    appointments: Vec<Appointment>,
    shifts: Vec<Shift>,
}

/// Most Boards kept at once; past it the kept Boards are let go (each is read again
/// when next needed).
const MAX_KEPT_BOARDS: usize = 1024;

/// The Boards the matcher keeps between batches (see the module's documentation).
///
/// Never missing a waiting appointment: a Board is read with every appointment that
/// was waiting then, and every event of its streams the matcher reads afterwards is
/// applied (each stream in version order; one already applied is passed). An
/// appointment requested after the read is therefore added by its request event, and
/// one leaves only by an event of its own stream. What may be wrong is only an
/// appointment or shift that is offered although it moved: an event read after the
/// Board that was committed before it (the read sees the Board ahead of the
/// checkpoint) may re-add a request already scheduled. Before each plan the kept
/// streams are read forward to now, which lets such a request go; a plan that is
/// still stale is refused by the write's expected versions, and the two streams (or
/// the Board) are read again.
#[derive(Default)]
struct MatcherBoards {
    boards: HashMap<Uuid, KeptBoard>,
}

impl MatcherBoards {
    fn keep(&mut self, board_id: Uuid, board: KeptBoard) {
        if self.boards.len() >= MAX_KEPT_BOARDS {
            self.boards.clear();
        }
        self.boards.insert(board_id, board);
    }

    /// Applies an event read from the log to its Board if kept; a Board whose kept
    /// state cannot take it is let go (read again when next needed).
    fn apply(&mut self, e: &RecordedEvent) {
        let Some(board_id) = e.board_id else { return };
        let Some(board) = self.boards.get_mut(&board_id) else {
            return;
        };
        if !board.apply(e) {
            tracing::debug!(board = %board_id, stream = %e.stream_id, version = e.version, "matcher reads a board again");
            self.boards.remove(&board_id);
        }
    }

    /// The kept Boards with streams behind, and those streams.
    fn behind(&self) -> Vec<(Uuid, Vec<Uuid>)> {
        self.boards
            .iter()
            .filter(|(_, b)| !b.behind.is_empty())
            .map(|(id, b)| (*id, b.behind.iter().copied().collect()))
            .collect()
    }

    /// Records that this matcher wrote `stream` up to `version` on the Board.
    fn wrote(&mut self, board_id: Uuid, stream: Uuid, version: i64) {
        if let Some(board) = self.boards.get_mut(&board_id) {
            board.written.insert(stream, version);
        }
    }

    fn forget(&mut self, board_id: Uuid) {
        self.boards.remove(&board_id);
    }
}

/// One kept Board: its document with the Board, every shift and only the waiting
/// appointments, folded like `board_view`.
struct KeptBoard {
    doc: BoardDoc,
    /// Streams this matcher wrote, with the version written, whose events it has not
    /// read back yet: left out of plans meanwhile (the kept state of them is behind).
    written: HashMap<Uuid, i64>,
    /// Streams whose next version has not been read yet while a later one was.
    behind: HashSet<Uuid>,
}

impl KeptBoard {
    /// The Board folded from the events of its streams (a waiting-only read); `None`
    /// when the Board's own stream has none.
    fn fold(board_id: Uuid, events: &[RecordedEvent]) -> Result<Option<Self>> {
        let mut doc = BoardDoc::default();
        for e in events {
            doc.apply(e)
                .map_err(|err| anyhow!("board {board_id}, stream {}: {err}", e.stream_id))?;
        }
        if doc.board.as_ref().map(|b| b.id.as_uuid()) != Some(board_id) {
            return Ok(None);
        }
        let mut board = Self {
            doc,
            written: HashMap::new(),
            behind: HashSet::new(),
        };
        let gone: Vec<Uuid> = board
            .doc
            .appointments
            .iter()
            .filter(|(_, a)| a.status != AppointmentStatus::Requested)
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            board.let_go(id);
        }
        Ok(Some(board))
    }

    /// Applies an event of one of the Board's streams; `false` when the kept state
    /// cannot be trusted to have taken it (an unknown shift or Board stream past its
    /// first event, a fold error).
    fn apply(&mut self, e: &RecordedEvent) -> bool {
        match self.doc.applied.get(&e.stream_id).copied() {
            // Already in what was read (or applied before).
            Some(applied) if e.version <= applied => return true,
            // A later version first: the log is in commit order, not each stream's
            // version order. The stream is brought up to date from the store after
            // the batch ([`Matcher::catch_up`]).
            Some(applied) if e.version != applied + 1 => {
                self.behind.insert(e.stream_id);
                return true;
            }
            // An appointment that was not waiting when the Board was read, or that
            // stopped waiting since: not needed. Any other stream must be known.
            None if e.version != 1 => return e.stream_type == "appointment",
            _ => {}
        }
        if self.doc.apply(e).is_err() {
            return false;
        }
        if self
            .written
            .get(&e.stream_id)
            .is_some_and(|written| e.version >= *written)
        {
            self.written.remove(&e.stream_id);
        }
        if self
            .doc
            .appointments
            .get(&e.stream_id)
            .is_some_and(|a| a.status != AppointmentStatus::Requested)
        {
            self.let_go(e.stream_id);
        }
        true
    }

    /// Drops an appointment that no longer waits: memory follows the waiting ones.
    fn let_go(&mut self, appointment: Uuid) {
        self.doc.appointments.remove(&appointment);
        self.doc.applied.remove(&appointment);
    }

    /// Whether a plan may use the stream: not written by this matcher and unread, not
    /// behind the log.
    fn offered(&self, stream: &Uuid) -> bool {
        !self.written.contains_key(stream) && !self.behind.contains(stream)
    }

    /// The shifts a plan may use.
    fn offered_shifts(&self) -> impl Iterator<Item = &Shift> {
        self.doc
            .shifts
            .iter()
            .filter(|(id, _)| self.offered(id))
            .map(|(_, s)| s)
    }

    /// Whether a plan could pair anything: some shift it may use is READY.
    fn has_ready_shift(&self) -> bool {
        self.offered_shifts()
            .any(|s| s.status == crate::domain::ShiftStatus::Ready)
    }

    fn waiting(&self) -> Waiting {
        Waiting {
            appointments: self
                .doc
                .appointments
                .iter()
                .filter(|(id, _)| self.offered(id))
                .map(|(_, a)| a.clone())
                .collect(),
            shifts: self.offered_shifts().cloned().collect(),
        }
    }
}

enum StepError {
    LostLock,
    Failed(anyhow::Error),
}

fn app_error(e: AppError) -> anyhow::Error {
    match e {
        AppError::Internal(e) => e,
        other => anyhow!("{}", other.describe()),
    }
}

async fn load_parked(pool: &PgPool) -> Result<HashSet<Uuid>, sqlx::Error> {
    let ids: Vec<Uuid> = sqlx::query_scalar("select board_id from matcher_parked_boards")
        .fetch_all(pool)
        .await?;
    Ok(ids.into_iter().collect())
}

async fn park_board(
    pool: &PgPool,
    board: Uuid,
    event_seq: i64,
    error: &anyhow::Error,
    attempts: u32,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "insert into matcher_parked_boards (board_id, event_seq, error, attempts) \
         values ($1, $2, $3, $4) \
         on conflict (board_id) do update set event_seq = excluded.event_seq, \
           error = excluded.error, attempts = matcher_parked_boards.attempts + excluded.attempts",
    )
    .bind(board)
    .bind(event_seq)
    .bind(format!("{error:#}"))
    .bind(attempts as i32)
    .execute(pool)
    .await?;
    Ok(())
}

async fn record_retry(
    pool: &PgPool,
    board: Uuid,
    error: &anyhow::Error,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "update matcher_parked_boards set attempts = attempts + 1, error = $2, \
           retried_at = clock_timestamp() where board_id = $1",
    )
    .bind(board)
    .bind(format!("{error:#}"))
    .execute(pool)
    .await?;
    Ok(())
}

async fn load_checkpoint(pool: &PgPool) -> Result<Cursor> {
    let (tx, seq): (String, i64) =
        sqlx::query_as("select tx::text, seq from process_checkpoints where name = $1")
            .bind(NAME)
            .fetch_one(pool)
            .await?;
    Ok(Cursor::from_text(&tx, seq)?)
}
