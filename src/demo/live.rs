//! Plays a scenario live, through the commands, at a speed-up. The driver acts for
//! the coordinators, patients and providers; the real matcher (run by this process's
//! projector) schedules, and the driver reacts to what it scheduled.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::time::Duration as StdDuration;

use anyhow::Result;
use chrono::{DateTime, Duration, Utc};
use tokio::time::Instant;

use super::scenario::{Scenario, ShiftPlan};
use crate::commands::{self, ActOnAppointment, ActOnShift, AppointmentAction, ShiftAction};
use crate::domain::{
    AppointmentId, AppointmentStatus, BoardId, ProviderId, Shift, ShiftId, ShiftStatus,
};
use crate::error::AppError;
use crate::event_store::unit_of_work::CommandMeta;
use crate::event_store::{read_log, EventStore, LogFilter, ReadLimit};
use crate::identity::Actor;
use crate::projections::load_board_contents;

#[derive(Debug, Clone, Copy)]
enum Act {
    OpenBoard(usize),
    Join(usize, usize),
    Request(usize, usize),
    Start(AppointmentId),
    NoShow(AppointmentId),
    Finish(AppointmentId),
    CompleteCharting(ShiftId),
    BreakStarts(ShiftId, DateTime<Utc>),
    BreakEnds(ShiftId),
    LeaveDue(ShiftId),
    PatienceOut(AppointmentId),
    /// Every few simulated minutes: retry intentions, wind down finished Boards.
    Tick,
}

#[derive(Default)]
struct Intent {
    pause_until: Option<DateTime<Utc>>,
    leaving: bool,
}

/// What the live run did.
#[derive(Debug, Default, Clone, Copy)]
pub struct LiveSummary {
    pub requested: usize,
    pub scheduled_by_matcher: usize,
    pub finished: usize,
    pub boards_closed: usize,
    /// Providers found from an earlier run (or the history demo) and reused.
    pub providers_reused: usize,
    /// Boards left open by an earlier, killed run and closed before this one started.
    pub leftovers_closed: usize,
    /// The run stopped before the day ended (Ctrl+C, or `--hours`); what it opened
    /// was closed.
    pub interrupted: bool,
    /// Simulated time skipped because nothing was going on (no patient waiting or
    /// being seen, nothing due).
    pub skipped: Duration,
}

/// A quiet stretch longer than this (in real time) is skipped ...
const QUIET_SKIP_AFTER: StdDuration = StdDuration::from_millis(1500);
/// ... down to this much real time before the next act.
const QUIET_LEAD: StdDuration = StdDuration::from_millis(500);

/// Who the live demo acts as: recorded as the events' actor (role `system`).
pub const ACTOR: &str = "demo";

struct Driver<'a> {
    store: &'a EventStore,
    scenario: &'a Scenario,
    origin: DateTime<Utc>,
    wall_origin: Instant,
    speed: f64,
    queue: BinaryHeap<Reverse<(DateTime<Utc>, u64)>>,
    acts: HashMap<u64, Act>,
    seq: u64,
    boards: Vec<Option<BoardId>>,
    closed: HashSet<usize>,
    providers: Vec<Option<ProviderId>>,
    /// Live shift id → (board, shift plan).
    shifts: HashMap<ShiftId, (usize, usize)>,
    signed_off: HashSet<ShiftId>,
    intents: HashMap<ShiftId, Intent>,
    /// Live appointment id → (board, arrival).
    appointments: HashMap<AppointmentId, (usize, usize)>,
    /// Appointments waiting, scheduled or started: while there are any, time runs at
    /// `speed`; while there are none, quiet stretches are skipped.
    open: HashSet<AppointmentId>,
    log_position: i64,
    summary: LiveSummary,
    base_url: &'a str,
}

fn meta(operation: &'static str) -> CommandMeta {
    let mut m = CommandMeta::new(operation);
    m.actor = Actor::system(ACTOR);
    m
}

/// Plays `scenario` until its day ends, or until `hours` simulated hours pass or `stop`
/// completes: then every Board it opened is closed (see [`close_everything`]).
/// Prints each Board's page under `base_url` as it opens.
///
/// Providers are registered once per database: a provider of the same name,
/// specialties and regions (from an earlier run, or the history demo) is reused.
/// Boards a killed earlier run left open are closed first. Stretches where nobody is
/// waiting or being seen and nothing is due for a while are skipped, so the first
/// patient arrives within seconds, while a busy day runs at `speed`.
pub async fn play(
    store: &EventStore,
    scenario: &Scenario,
    speed: f64,
    hours: Option<f64>,
    base_url: &str,
    stop: impl std::future::Future<Output = ()>,
) -> Result<LiveSummary> {
    let origin = scenario
        .boards
        .iter()
        .map(|b| b.opens_at)
        .min()
        .unwrap_or_else(Utc::now);
    let mut d = Driver {
        store,
        scenario,
        origin,
        wall_origin: Instant::now(),
        speed: speed.max(0.01),
        queue: BinaryHeap::new(),
        acts: HashMap::new(),
        seq: 0,
        boards: vec![None; scenario.boards.len()],
        closed: HashSet::new(),
        providers: vec![None; scenario.providers.len()],
        shifts: HashMap::new(),
        signed_off: HashSet::new(),
        intents: HashMap::new(),
        appointments: HashMap::new(),
        open: HashSet::new(),
        log_position: crate::event_store::log::end_position(store.pool()).await?,
        summary: LiveSummary::default(),
        base_url,
    };
    d.summary.leftovers_closed = close_leftovers(store).await?;
    d.register_providers().await?;
    for (b, plan) in scenario.boards.iter().enumerate() {
        d.at(plan.opens_at, Act::OpenBoard(b));
        for (s, shift) in plan.shifts.iter().enumerate() {
            d.at(shift.joins_at, Act::Join(b, s));
        }
        for (a, arrival) in plan.arrivals.iter().enumerate() {
            d.at(arrival.at, Act::Request(b, a));
        }
    }
    d.at(origin + Duration::minutes(5), Act::Tick);
    let stop_at = hours.map(|h| origin + Duration::seconds((h * 3600.0) as i64));
    let mut poll = tokio::time::interval(StdDuration::from_millis(25));
    tokio::pin!(stop);
    loop {
        if d.closed.len() == scenario.boards.len() {
            break;
        }
        let Some(Reverse((t, _))) = d.queue.peek().copied() else {
            break;
        };
        if stop_at.is_some_and(|s| t > s) {
            d.stop_early().await?;
            break;
        }
        d.skip_quiet_stretch(t);
        tokio::select! {
            biased;
            _ = &mut stop => {
                d.stop_early().await?;
                break;
            }
            _ = tokio::time::sleep_until(d.wall(t)) => {
                let Some(Reverse((t, seq))) = d.queue.pop() else { break };
                let act = d.acts.remove(&seq).expect("queued act");
                d.perform(act, t).await?;
            }
            _ = poll.tick() => d.follow_matcher().await?,
        }
    }
    Ok(d.summary)
}

/// Boards the demo opened that are still open, from any earlier run; empty when the
/// earlier runs ended (or were stopped with Ctrl+C) normally.
async fn demo_boards_open(store: &EventStore) -> Result<Vec<BoardId>> {
    let mut after = 0;
    let mut open = Vec::new();
    loop {
        let page = read_log(
            store.pool(),
            &LogFilter {
                after,
                types: Some(vec!["BoardOpened".into()]),
                limit: 500,
                ..Default::default()
            },
        )
        .await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        for e in &page {
            let by_demo = e.metadata.get("actor").and_then(|a| a.as_str()) == Some(ACTOR)
                && e.metadata.get("actorRole").and_then(|a| a.as_str()) == Some("system");
            if !by_demo {
                continue;
            }
            let board = store
                .load::<crate::domain::Board>(e.stream_id, ReadLimit::All)
                .await
                .map_err(|e| anyhow::anyhow!(e.describe()))?;
            if board.is_some_and(|b| b.status == crate::domain::BoardStatus::Open) {
                open.push(e.stream_id.into());
            }
        }
    }
    Ok(open)
}

/// Closes the Boards a killed earlier run left open; returns how many.
async fn close_leftovers(store: &EventStore) -> Result<usize> {
    let open = demo_boards_open(store).await?;
    if open.is_empty() {
        return Ok(0);
    }
    println!(
        "  Closing {} Board(s) an earlier demo run left open (patients waiting are cancelled).",
        open.len()
    );
    close_everything(store, &open).await
}

/// Winds `boards` down now, as a coordinator closing early would: waiting and
/// scheduled patients are cancelled, consultations under way are finished, charting is
/// completed, providers sign off, and each Board is closed. The matcher may act in
/// between (it is running), so this goes round until nothing is left or it stops
/// making progress. Returns how many Boards it closed.
pub async fn close_everything(store: &EventStore, boards: &[BoardId]) -> Result<usize> {
    let mut closed = 0;
    for &board in boards {
        for _round in 0..20 {
            let Some(contents) = load_board_contents(store.pool(), board, ReadLimit::All)
                .await
                .map_err(|e| anyhow::anyhow!(e.describe()))?
            else {
                break;
            };
            if contents.board.status == crate::domain::BoardStatus::Closed {
                break;
            }
            // Providers first, so the matcher has nobody to assign the waiting to.
            for shift in &contents.shifts {
                let action = match shift.status {
                    ShiftStatus::Ready | ShiftStatus::Paused => ShiftAction::SignOff,
                    ShiftStatus::Charting => ShiftAction::CompleteCharting,
                    ShiftStatus::Assigned | ShiftStatus::SignedOff => continue,
                };
                let command = ActOnShift {
                    action,
                    shift_id: shift.id,
                    options: Default::default(),
                };
                tolerate(commands::shift_action(store, meta(action.operation()), command).await)?;
            }
            for a in &contents.appointments {
                let r = match a.status {
                    AppointmentStatus::Requested | AppointmentStatus::Scheduled => {
                        let command = commands::CancelAppointment {
                            appointment_id: a.id,
                            reason: "the clinic closed early".into(),
                            options: Default::default(),
                        };
                        commands::cancel_appointment(store, meta("cancelAppointment"), command)
                            .await
                            .map(|_| ())
                    }
                    AppointmentStatus::Started => {
                        let command = ActOnAppointment {
                            action: AppointmentAction::Finish,
                            appointment_id: a.id,
                            options: Default::default(),
                        };
                        commands::appointment_action(store, meta("finishAppointment"), command)
                            .await
                            .map(|_| ())
                    }
                    _ => continue,
                };
                tolerate(r)?;
            }
            let command = commands::CloseBoard {
                board_id: board,
                options: Default::default(),
            };
            if commands::close_board(store, meta("closeBoard"), command)
                .await
                .is_ok()
            {
                closed += 1;
                tracing::info!(board = %board, "demo board closed early");
                break;
            }
        }
    }
    Ok(closed)
}

/// A refusal (the state moved on: someone else acted first) is fine, a failure is not.
fn tolerate<T>(r: Result<T, AppError>) -> Result<()> {
    match r {
        Ok(_) | Err(AppError::Domain(_) | AppError::Conflict(_)) => Ok(()),
        Err(e) => Err(anyhow::anyhow!(e.describe())),
    }
}

/// Every provider registered so far (or the history demo imported), by registration.
async fn registered_providers(store: &EventStore) -> Result<Vec<crate::domain::Provider>> {
    let mut after = 0;
    let mut all = Vec::new();
    loop {
        let page = crate::event_store::list_providers(store.pool(), after, 500)
            .await
            .map_err(|e| anyhow::anyhow!(e.describe()))?;
        let Some((last, _)) = page.last() else { break };
        after = *last;
        all.extend(page.into_iter().map(|(_, p)| p));
    }
    Ok(all)
}

fn sorted(list: &[String]) -> Vec<String> {
    let mut list = list.to_vec();
    list.sort();
    list
}

impl Driver<'_> {
    /// Reuses a provider of the same name, specialties and regions, or registers one.
    /// The registration's command id is derived from those, so two runs racing each
    /// other still register each provider once.
    async fn register_providers(&mut self) -> Result<()> {
        let known = registered_providers(self.store).await?;
        for (i, p) in self.scenario.providers.iter().enumerate() {
            let (specialties, regions) = (sorted(&p.specialties), sorted(&p.regions));
            let same = known.iter().find(|k| {
                k.name == p.name
                    && sorted(&k.specialties) == specialties
                    && sorted(&k.licensed_regions) == regions
            });
            if let Some(existing) = same {
                self.providers[i] = Some(existing.id);
                self.summary.providers_reused += 1;
                continue;
            }
            let command_id = format!(
                "demo:registerProvider:{}:{}:{}",
                p.name,
                specialties.join(","),
                regions.join(",")
            );
            let w = commands::register_provider(
                self.store,
                meta("registerProvider"),
                commands::RegisterProvider {
                    name: p.name.clone(),
                    specialties: p.specialties.clone(),
                    licensed_regions: p.regions.clone(),
                    options: commands::CommandOptions {
                        command_id: Some(command_id),
                        ..Default::default()
                    },
                },
            )
            .await
            .map_err(|e| anyhow::anyhow!(e.describe()))?;
            self.providers[i] = Some(w.entity.id);
        }
        Ok(())
    }

    /// Ctrl+C, or the end of `--hours`: closes every Board this run opened.
    async fn stop_early(&mut self) -> Result<()> {
        self.summary.interrupted = true;
        let opened: Vec<BoardId> = self
            .boards
            .iter()
            .enumerate()
            .filter(|(b, _)| !self.closed.contains(b))
            .filter_map(|(_, id)| *id)
            .collect();
        self.summary.boards_closed += close_everything(self.store, &opened).await?;
        Ok(())
    }

    /// Nobody waiting or being seen, and the next act (at `next`) still a while off:
    /// moves the simulated clock forward so that it comes shortly. Everything queued
    /// keeps its simulated time, so the day keeps its shape.
    fn skip_quiet_stretch(&mut self, next: DateTime<Utc>) {
        if !self.open.is_empty() {
            return;
        }
        let wait = self.wall(next).saturating_duration_since(Instant::now());
        if wait <= QUIET_SKIP_AFTER {
            return;
        }
        let skip = Duration::from_std((wait - QUIET_LEAD).mul_f64(self.speed)).unwrap_or_default();
        self.origin += skip;
        self.summary.skipped += skip;
    }

    fn at(&mut self, t: DateTime<Utc>, act: Act) {
        self.seq += 1;
        self.acts.insert(self.seq, act);
        self.queue.push(Reverse((t, self.seq)));
    }

    fn wall(&self, t: DateTime<Utc>) -> Instant {
        let sim = (t - self.origin).to_std().unwrap_or_default();
        self.wall_origin + sim.div_f64(self.speed)
    }

    /// The simulated time now.
    fn now(&self) -> DateTime<Utc> {
        let wall = self.wall_origin.elapsed().mul_f64(self.speed);
        self.origin + Duration::from_std(wall).unwrap_or_default()
    }

    /// Reacts to the matcher's assignments: the patient joins after the lead time.
    async fn follow_matcher(&mut self) -> Result<()> {
        let events = read_log(
            self.store.pool(),
            &LogFilter {
                after: self.log_position,
                types: Some(vec!["AppointmentScheduled".into()]),
                limit: 500,
                ..Default::default()
            },
        )
        .await?;
        let now = self.now();
        for e in events {
            self.log_position = self.log_position.max(e.seq);
            let Some(&(b, a)) = self.appointments.get(&e.stream_id.into()) else {
                continue;
            };
            if e.metadata.get("actor").and_then(|a| a.as_str()) == Some(crate::matcher::NAME) {
                self.summary.scheduled_by_matcher += 1;
            }
            let arrival = &self.scenario.boards[b].arrivals[a];
            if arrival.no_show {
                self.at(
                    now + arrival.lead + Duration::minutes(3),
                    Act::NoShow(e.stream_id.into()),
                );
            } else {
                self.at(now + arrival.lead, Act::Start(e.stream_id.into()));
            }
        }
        Ok(())
    }

    async fn shift_state(&self, id: ShiftId) -> Result<Option<Shift>> {
        self.store
            .load::<Shift>(id, ReadLimit::All)
            .await
            .map_err(|e| anyhow::anyhow!(e.describe()))
    }

    /// A provider who is READY takes a pending break or leaves, if they intend to.
    async fn follow_intent(&mut self, id: ShiftId) -> Result<()> {
        let Some(shift) = self.shift_state(id).await? else {
            return Ok(());
        };
        if shift.status != ShiftStatus::Ready {
            return Ok(());
        }
        let intent = self.intents.entry(id).or_default();
        if intent.leaving {
            let (b, _) = self.shifts[&id];
            let arrivals_over = self.scenario.boards[b]
                .arrivals
                .last()
                .is_none_or(|a| a.at <= self.now());
            let staying = self
                .shifts
                .iter()
                .filter(|(other, (ob, _))| {
                    *ob == b
                        && **other != id
                        && !self.signed_off.contains(*other)
                        && !self.intents.get(*other).is_some_and(|i| i.leaving)
                })
                .count();
            if ShiftPlan::may_leave(arrivals_over, staying) {
                let done = self
                    .shift_command(id, ShiftAction::SignOff, "signOffProvider")
                    .await?;
                if done {
                    self.signed_off.insert(id);
                }
            }
        } else if let Some(until) = intent.pause_until {
            if self
                .shift_command(id, ShiftAction::Pause, "pauseProvider")
                .await?
            {
                self.intents.entry(id).or_default().pause_until = None;
                let resume = until.max(self.now());
                self.at(resume, Act::BreakEnds(id));
            }
        }
        Ok(())
    }

    /// Runs a shift command; `false` when the shift's state did not allow it (the
    /// matcher got there first): the intention stays and is retried.
    async fn shift_command(
        &self,
        id: ShiftId,
        action: ShiftAction,
        op: &'static str,
    ) -> Result<bool> {
        let command = ActOnShift {
            action,
            shift_id: id,
            options: Default::default(),
        };
        match commands::shift_action(self.store, meta(op), command).await {
            Ok(_) => Ok(true),
            Err(AppError::Domain(_) | AppError::Conflict(_)) => Ok(false),
            Err(e) => Err(anyhow::anyhow!(e.describe())),
        }
    }

    /// A paused provider is marked READY (end of a break, or leaving time).
    async fn back_from_pause(&self, id: ShiftId) -> Result<()> {
        let paused = self
            .shift_state(id)
            .await?
            .is_some_and(|s| s.status == ShiftStatus::Paused);
        if paused {
            self.shift_command(id, ShiftAction::MarkReady, "markProviderReady")
                .await?;
        }
        Ok(())
    }

    async fn appointment_action(
        &self,
        id: AppointmentId,
        action: AppointmentAction,
        op: &'static str,
    ) -> Result<commands::Written<crate::domain::Appointment>, AppError> {
        let command = ActOnAppointment {
            action,
            appointment_id: id,
            options: Default::default(),
        };
        commands::appointment_action(self.store, meta(op), command).await
    }

    async fn perform(&mut self, act: Act, t: DateTime<Utc>) -> Result<()> {
        let store = self.store;
        let ignore = |r: Result<(), AppError>| -> Result<()> {
            match r {
                Ok(()) | Err(AppError::Domain(_) | AppError::Conflict(_)) => Ok(()),
                Err(e) => Err(anyhow::anyhow!(e.describe())),
            }
        };
        match act {
            Act::OpenBoard(b) => {
                let plan = &self.scenario.boards[b];
                let w = commands::open_board(
                    store,
                    meta("openBoard"),
                    commands::OpenBoard {
                        name: plan.name.clone(),
                        specialty: plan.specialty.clone(),
                        region: plan.region.clone(),
                        date: self.scenario.date,
                        options: Default::default(),
                    },
                )
                .await
                .map_err(|e| anyhow::anyhow!(e.describe()))?;
                self.boards[b] = Some(w.entity.id);
                println!(
                    "  {:<28} {} patients today  {}/boards/{}",
                    plan.name,
                    plan.arrivals.len(),
                    self.base_url,
                    w.entity.id
                );
            }
            Act::Join(b, s) => {
                let (Some(board), Some(provider)) = (
                    self.boards[b],
                    self.providers[self.scenario.boards[b].shifts[s].provider],
                ) else {
                    return Ok(());
                };
                let w = commands::join_board(
                    store,
                    meta("joinBoard"),
                    commands::JoinBoard {
                        board_id: board,
                        provider_id: provider,
                        options: Default::default(),
                    },
                )
                .await
                .map_err(|e| anyhow::anyhow!(e.describe()))?;
                let id = w.entity.id;
                self.shifts.insert(id, (b, s));
                let plan = self.scenario.boards[b].shifts[s].clone();
                for (start, end) in plan.breaks {
                    self.at(start, Act::BreakStarts(id, end));
                }
                self.at(plan.leaves_at, Act::LeaveDue(id));
            }
            Act::Request(b, a) => {
                let Some(board) = self.boards[b] else {
                    return Ok(());
                };
                let arrival = self.scenario.boards[b].arrivals[a].clone();
                let w = commands::request_appointment(
                    store,
                    meta("requestAppointment"),
                    commands::RequestAppointment {
                        patient_id: None,
                        board_id: board,
                        patient_name: arrival.patient,
                        specialty: arrival.specialty,
                        region: arrival.region,
                        reason: arrival.reason,
                        options: Default::default(),
                    },
                )
                .await
                .map_err(|e| anyhow::anyhow!(e.describe()))?;
                self.appointments.insert(w.entity.id, (b, a));
                self.open.insert(w.entity.id);
                self.summary.requested += 1;
                if let Some(patience) = arrival.patience {
                    self.at(t + patience, Act::PatienceOut(w.entity.id));
                }
            }
            Act::Start(id) => {
                let r = self
                    .appointment_action(id, AppointmentAction::Start, "startAppointment")
                    .await;
                if r.is_ok() {
                    let (b, a) = self.appointments[&id];
                    let consult = self.scenario.boards[b].arrivals[a].consult;
                    self.at(t + consult, Act::Finish(id));
                }
                ignore(r.map(|_| ()))?;
            }
            Act::Finish(id) => {
                let r = self
                    .appointment_action(id, AppointmentAction::Finish, "finishAppointment")
                    .await;
                if let Ok(w) = &r {
                    self.open.remove(&id);
                    self.summary.finished += 1;
                    let (b, a) = self.appointments[&id];
                    let charting = self.scenario.boards[b].arrivals[a].charting;
                    if let Some(shift) = &w.shift {
                        self.at(t + charting, Act::CompleteCharting(shift.id));
                    }
                }
                ignore(r.map(|_| ()))?;
            }
            Act::NoShow(id) | Act::PatienceOut(id) => {
                let reason = match act {
                    Act::NoShow(_) => "patient did not join",
                    _ => "patient left",
                };
                let r = commands::cancel_appointment(
                    store,
                    meta("cancelAppointment"),
                    commands::CancelAppointment {
                        appointment_id: id,
                        reason: reason.into(),
                        options: Default::default(),
                    },
                )
                .await;
                // A patient who ran out of patience after being scheduled stays: the
                // command refuses, which `ignore` accepts.
                if r.is_ok() {
                    self.open.remove(&id);
                }
                ignore(r.map(|_| ()))?;
            }
            Act::CompleteCharting(shift) => {
                self.shift_command(shift, ShiftAction::CompleteCharting, "completeCharting")
                    .await?;
                self.follow_intent(shift).await?;
            }
            Act::BreakStarts(shift, until) => {
                self.intents.entry(shift).or_default().pause_until = Some(until);
                self.follow_intent(shift).await?;
            }
            Act::BreakEnds(shift) => {
                self.back_from_pause(shift).await?;
                self.follow_intent(shift).await?;
            }
            Act::LeaveDue(shift) => {
                let intent = self.intents.entry(shift).or_default();
                intent.leaving = true;
                intent.pause_until = None;
                self.back_from_pause(shift).await?;
                self.follow_intent(shift).await?;
            }
            Act::Tick => {
                let pending: Vec<ShiftId> = self
                    .intents
                    .iter()
                    .filter(|(id, i)| {
                        !self.signed_off.contains(*id) && (i.leaving || i.pause_until.is_some())
                    })
                    .map(|(id, _)| *id)
                    .collect();
                for id in pending {
                    self.follow_intent(id).await?;
                }
                for b in 0..self.boards.len() {
                    self.wind_down(b, t).await?;
                }
                self.at(t + Duration::minutes(5), Act::Tick);
            }
        }
        Ok(())
    }

    /// After the last patient and the last provider: cancel who nobody can see, close.
    async fn wind_down(&mut self, b: usize, t: DateTime<Utc>) -> Result<()> {
        let Some(board) = self.boards[b] else {
            return Ok(());
        };
        let plan = &self.scenario.boards[b];
        let all_left = self.shifts.values().filter(|(sb, _)| *sb == b).count() == plan.shifts.len()
            && self
                .shifts
                .iter()
                .filter(|(_, (sb, _))| *sb == b)
                .all(|(id, _)| self.signed_off.contains(id));
        let arrivals_over = plan.arrivals.last().is_none_or(|a| a.at <= t);
        if self.closed.contains(&b) || !arrivals_over || !all_left {
            return Ok(());
        }
        let contents = load_board_contents(self.store.pool(), board, ReadLimit::All)
            .await
            .map_err(|e| anyhow::anyhow!(e.describe()))?;
        let Some(contents) = contents else {
            return Ok(());
        };
        for a in contents
            .appointments
            .iter()
            .filter(|a| a.status == AppointmentStatus::Requested)
        {
            let cancelled = commands::cancel_appointment(
                self.store,
                meta("cancelAppointment"),
                commands::CancelAppointment {
                    appointment_id: a.id,
                    reason: "no provider available today".into(),
                    options: Default::default(),
                },
            )
            .await;
            if cancelled.is_ok() {
                self.open.remove(&a.id);
            }
        }
        if contents.appointments.iter().any(|a| {
            matches!(
                a.status,
                AppointmentStatus::Scheduled | AppointmentStatus::Started
            )
        }) {
            return Ok(());
        }
        let closed = commands::close_board(
            self.store,
            meta("closeBoard"),
            commands::CloseBoard {
                board_id: board,
                options: Default::default(),
            },
        )
        .await;
        if closed.is_ok() {
            self.closed.insert(b);
            self.summary.boards_closed += 1;
            tracing::info!(board = %board, "demo board closed");
        }
        Ok(())
    }
}
