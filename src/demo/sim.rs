//! Plays a scenario as history: a discrete-event simulation that decides every step
//! with the real aggregates (`decide` + `apply`) and the real matching plan, recording
//! the events with the simulated times. Deterministic: same scenario and seed, same
//! events, ids included.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use anyhow::{anyhow, Result};
use chrono::{DateTime, Duration, Utc};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};
use uuid::Uuid;

use super::scenario::{uuid, Scenario, ShiftPlan};
use crate::domain::appointment::{self, AppointmentCommand};
use crate::domain::board::{self, BoardCommand, OpenWork};
use crate::domain::provider::{self, ProviderCommand};
use crate::domain::shift::{self, ShiftCommand};
use crate::domain::{
    matching, scheduling, Aggregate, Appointment, AppointmentStatus, Board, DomainEvent,
    EventContext, Provider, Shift, ShiftStatus,
};
use crate::domain::{AppointmentId, BoardId, ProviderId, ShiftId};
use crate::event_store::import::ImportEvent;

#[derive(Debug, Clone, Copy)]
enum Action {
    OpenBoard(usize),
    Join(usize, usize),
    Request(usize, usize),
    Start(AppointmentId),
    NoShow(AppointmentId),
    Finish(AppointmentId),
    CompleteCharting(ShiftId),
    BreakStarts(ShiftId, usize),
    BreakEnds(ShiftId),
    LeaveDue(ShiftId),
    PatienceOut(AppointmentId),
}

impl Action {
    fn board(self, sim: &Sim) -> Option<usize> {
        match self {
            Action::OpenBoard(b) | Action::Join(b, _) | Action::Request(b, _) => Some(b),
            Action::Start(id)
            | Action::NoShow(id)
            | Action::Finish(id)
            | Action::PatienceOut(id) => sim
                .appointments
                .get(&id)
                .and_then(|a| sim.board_index.get(&a.board_id).copied()),
            Action::CompleteCharting(id)
            | Action::BreakStarts(id, _)
            | Action::BreakEnds(id)
            | Action::LeaveDue(id) => sim
                .shifts
                .get(&id)
                .and_then(|s| sim.board_index.get(&s.board_id).copied()),
        }
    }
}

/// Per-shift intentions waiting for the provider to be READY.
#[derive(Default)]
struct Pending {
    pause_until: Option<DateTime<Utc>>,
    leaving: bool,
}

struct Sim<'a> {
    scenario: &'a Scenario,
    rng: ChaCha8Rng,
    queue: BinaryHeap<Reverse<(DateTime<Utc>, u64, usize)>>,
    actions: Vec<Action>,
    boards: Vec<Option<Board>>,
    board_index: HashMap<BoardId, usize>,
    providers: HashMap<ProviderId, Provider>,
    shifts: HashMap<ShiftId, Shift>,
    appointments: HashMap<AppointmentId, Appointment>,
    /// The scenario arrival behind each appointment: (board, arrival).
    arrival_of: HashMap<AppointmentId, (usize, usize)>,
    pending: HashMap<ShiftId, Pending>,
    /// Leads seen so far by specialty (sum of seconds, count): the estimate the
    /// matcher puts on `AppointmentScheduled`, as the live system does.
    leads: HashMap<String, (i64, i64)>,
    out: Vec<ImportEvent>,
}

/// Simulates the scenario's day; returns its events in the order they happened.
pub fn simulate(scenario: &Scenario, seed: u64) -> Result<Vec<ImportEvent>> {
    let mut sim = Sim {
        scenario,
        // A stream of its own for event and correlation ids, apart from the scenario's.
        rng: ChaCha8Rng::seed_from_u64(seed ^ 0xDE30_5EED),
        queue: BinaryHeap::new(),
        actions: Vec::new(),
        boards: vec![None; scenario.boards.len()],
        board_index: scenario
            .boards
            .iter()
            .enumerate()
            .map(|(i, b)| (BoardId::from(b.id), i))
            .collect(),
        providers: HashMap::new(),
        shifts: HashMap::new(),
        appointments: HashMap::new(),
        arrival_of: HashMap::new(),
        pending: HashMap::new(),
        leads: HashMap::new(),
        out: Vec::new(),
    };
    sim.register_providers()?;
    for (b, plan) in scenario.boards.iter().enumerate() {
        sim.at(plan.opens_at, Action::OpenBoard(b));
        for (s, shift) in plan.shifts.iter().enumerate() {
            sim.at(shift.joins_at, Action::Join(b, s));
        }
        for (a, arrival) in plan.arrivals.iter().enumerate() {
            sim.at(arrival.at, Action::Request(b, a));
        }
    }
    while let Some(Reverse((t, _, index))) = sim.queue.pop() {
        let action = sim.actions[index];
        sim.perform(action, t)?;
        if let Some(b) = action.board(&sim) {
            sim.settle(b, t)?;
        }
    }
    for b in 0..scenario.boards.len() {
        if sim.boards[b]
            .as_ref()
            .is_some_and(|b| b.closed_at.is_none())
        {
            return Err(anyhow!(
                "the simulated day ended with board {} still open",
                scenario.boards[b].name
            ));
        }
    }
    Ok(sim.out)
}

impl Sim<'_> {
    fn at(&mut self, t: DateTime<Utc>, action: Action) {
        let seq = self.actions.len() as u64;
        self.actions.push(action);
        self.queue.push(Reverse((t, seq, seq as usize)));
    }

    fn metadata(&mut self, actor: &str, operation: &str) -> Value {
        json!({
            "correlationId": uuid(&mut self.rng).to_string(),
            "causationId": null,
            "actor": actor,
            "operation": operation,
            "operationName": "demo",
        })
    }

    /// Applies decided events to `state` and records them.
    fn record<A: Aggregate>(
        &mut self,
        state: Option<A>,
        stream_id: impl Into<Uuid>,
        board_id: Option<BoardId>,
        events: &[A::Event],
        t: DateTime<Utc>,
        metadata: &Value,
    ) -> Result<A> {
        let stream_id = stream_id.into();
        let board_id = board_id.map(Uuid::from);
        let mut state = state;
        for event in events {
            let version = state.as_ref().map_or(0, |s| s.version()) + 1;
            let ctx = EventContext {
                stream_id,
                version,
                at: t,
            };
            state = Some(A::apply(state, event, &ctx)?);
            self.out.push(ImportEvent {
                id: uuid(&mut self.rng),
                stream_id,
                stream_type: A::STREAM_TYPE,
                board_id,
                version,
                event_type: event.event_type().to_string(),
                data: event.encode(),
                metadata: metadata.clone(),
                recorded_at: t,
            });
        }
        state.ok_or_else(|| anyhow!("no events recorded"))
    }

    fn register_providers(&mut self) -> Result<()> {
        let start = self
            .scenario
            .boards
            .iter()
            .map(|b| b.opens_at)
            .min()
            .unwrap_or_default()
            - Duration::minutes(15);
        for p in &self.scenario.providers {
            let events = provider::decide(
                None,
                ProviderCommand::Register {
                    name: p.name.clone(),
                    specialties: p.specialties.clone(),
                    licensed_regions: p.regions.clone(),
                },
            )?;
            let meta = self.metadata("demo", "registerProvider");
            let state = self.record::<Provider>(None, p.id, None, &events, start, &meta)?;
            self.providers.insert(p.id.into(), state);
        }
        Ok(())
    }

    fn shift(&self, id: ShiftId) -> Result<Shift> {
        self.shifts
            .get(&id)
            .cloned()
            .ok_or_else(|| anyhow!("unknown shift {id}"))
    }

    fn appointment(&self, id: AppointmentId) -> Result<Appointment> {
        self.appointments
            .get(&id)
            .cloned()
            .ok_or_else(|| anyhow!("unknown appointment {id}"))
    }

    fn shift_command(
        &mut self,
        id: ShiftId,
        command: ShiftCommand,
        operation: &str,
        t: DateTime<Utc>,
    ) -> Result<()> {
        let s = self.shift(id)?;
        let events = shift::decide(Some(&s), command)?;
        let meta = self.metadata("demo", operation);
        let board = Some(s.board_id);
        let next = self.record(Some(s), id, board, &events, t, &meta)?;
        self.shifts.insert(id, next);
        Ok(())
    }

    fn two_streams(
        &mut self,
        (a_events, s_events): scheduling::TwoStreamEvents,
        appointment: Appointment,
        shift: Option<Shift>,
        actor: &str,
        operation: &str,
        t: DateTime<Utc>,
    ) -> Result<()> {
        let meta = self.metadata(actor, operation);
        let (id, board) = (appointment.id, Some(appointment.board_id));
        let next = self.record(Some(appointment), id, board, &a_events, t, &meta)?;
        self.appointments.insert(id, next);
        if let Some(s) = shift.filter(|_| !s_events.is_empty()) {
            let sid = s.id;
            let next = self.record(Some(s), sid, board, &s_events, t, &meta)?;
            self.shifts.insert(sid, next);
        }
        Ok(())
    }

    fn perform(&mut self, action: Action, t: DateTime<Utc>) -> Result<()> {
        match action {
            Action::OpenBoard(b) => {
                let plan = &self.scenario.boards[b];
                let events = board::decide(
                    None,
                    BoardCommand::Open {
                        name: plan.name.clone(),
                        specialty: plan.specialty.clone(),
                        region: plan.region.clone(),
                        date: self.scenario.date,
                    },
                )?;
                let meta = self.metadata("demo", "openBoard");
                let id = BoardId::from(plan.id);
                let state = self.record::<Board>(None, id, Some(id), &events, t, &meta)?;
                self.boards[b] = Some(state);
            }
            Action::Join(b, s) => {
                let plan = &self.scenario.boards[b];
                let shift_plan = plan.shifts[s].clone();
                let provider_id = ProviderId::from(self.scenario.providers[shift_plan.provider].id);
                let board_id = BoardId::from(plan.id);
                let events = shift::decide(
                    None,
                    ShiftCommand::Join {
                        board: self.boards[b].clone().map(Box::new),
                        provider: self.providers.get(&provider_id).cloned().map(Box::new),
                    },
                )?;
                let id = ShiftId::of(board_id, provider_id);
                let meta = self.metadata("demo", "joinBoard");
                let state = self.record::<Shift>(None, id, Some(board_id), &events, t, &meta)?;
                self.shifts.insert(id, state);
                for (i, (start, _)) in shift_plan.breaks.iter().enumerate() {
                    self.at(*start, Action::BreakStarts(id, i));
                }
                self.at(shift_plan.leaves_at, Action::LeaveDue(id));
            }
            Action::Request(b, a) => {
                let arrival = self.scenario.boards[b].arrivals[a].clone();
                let board_id = BoardId::from(self.scenario.boards[b].id);
                let events = appointment::decide(
                    None,
                    AppointmentCommand::Request {
                        board: self.boards[b].clone(),
                        patient_id: None,
                        patient_name: arrival.patient.clone(),
                        specialty: arrival.specialty.clone(),
                        region: arrival.region.clone(),
                        reason: arrival.reason.clone(),
                    },
                )?;
                let id = AppointmentId::from(uuid(&mut self.rng));
                let meta = self.metadata("demo", "requestAppointment");
                let state =
                    self.record::<Appointment>(None, id, Some(board_id), &events, t, &meta)?;
                self.appointments.insert(id, state);
                self.arrival_of.insert(id, (b, a));
                if let Some(patience) = arrival.patience {
                    self.at(t + patience, Action::PatienceOut(id));
                }
            }
            Action::Start(id) => {
                let a = self.appointment(id)?;
                let events = appointment::decide(Some(&a), AppointmentCommand::Start)?;
                let meta = self.metadata("demo", "startAppointment");
                let board = Some(a.board_id);
                let (b, i) = self.arrival_of[&id];
                let consult = self.scenario.boards[b].arrivals[i].consult;
                let next = self.record(Some(a), id, board, &events, t, &meta)?;
                self.appointments.insert(id, next);
                self.at(t + consult, Action::Finish(id));
            }
            Action::NoShow(id) => {
                let a = self.appointment(id)?;
                let shift = a.shift_id.map(|s| self.shift(s)).transpose()?;
                let events =
                    scheduling::cancel(Some(&a), shift.as_ref(), "patient did not join".into())?;
                self.two_streams(events, a, shift, "demo", "cancelAppointment", t)?;
            }
            Action::Finish(id) => {
                let a = self.appointment(id)?;
                let shift = a.shift_id.map(|s| self.shift(s)).transpose()?;
                let events = scheduling::finish(Some(&a), shift.as_ref())?;
                let shift_id = shift.as_ref().map(|s| s.id);
                self.two_streams(events, a, shift, "demo", "finishAppointment", t)?;
                let (b, i) = self.arrival_of[&id];
                let charting = self.scenario.boards[b].arrivals[i].charting;
                if let Some(s) = shift_id {
                    self.at(t + charting, Action::CompleteCharting(s));
                }
            }
            Action::CompleteCharting(id) => {
                self.shift_command(
                    id,
                    ShiftCommand::CompleteCharting { now: t },
                    "completeCharting",
                    t,
                )?;
            }
            Action::BreakStarts(id, i) => {
                let s = self.shift(id)?;
                let b = self.board_index[&s.board_id];
                let plan = self.scenario.boards[b]
                    .shifts
                    .iter()
                    .find(|p| {
                        ShiftId::of(s.board_id, self.scenario.providers[p.provider].id.into()) == id
                    })
                    .ok_or_else(|| anyhow!("shift {id} has no plan"))?;
                let end = plan.breaks[i].1;
                self.pending.entry(id).or_default().pause_until = Some(end);
            }
            Action::BreakEnds(id) => {
                if self.shift(id)?.status == ShiftStatus::Paused {
                    self.shift_command(id, ShiftCommand::MarkReady, "markProviderReady", t)?;
                }
            }
            Action::LeaveDue(id) => {
                let p = self.pending.entry(id).or_default();
                p.leaving = true;
                p.pause_until = None;
                if self.shift(id)?.status == ShiftStatus::Paused {
                    self.shift_command(id, ShiftCommand::MarkReady, "markProviderReady", t)?;
                }
            }
            Action::PatienceOut(id) => {
                let a = self.appointment(id)?;
                if a.status == AppointmentStatus::Requested {
                    let events = scheduling::cancel(Some(&a), None, "patient left".into())?;
                    self.two_streams(events, a, None, "demo", "cancelAppointment", t)?;
                }
            }
        }
        Ok(())
    }

    /// After every step on a Board: providers READY with a pending break pause, the
    /// matcher pairs whoever it can, providers past their hours with nobody to take
    /// sign off, and a Board with nothing left closes.
    fn settle(&mut self, b: usize, t: DateTime<Utc>) -> Result<()> {
        let Some(board) = self.boards[b].clone() else {
            return Ok(());
        };
        if board.closed_at.is_some() {
            return Ok(());
        }
        let mut shift_ids: Vec<ShiftId> = self
            .shifts
            .values()
            .filter(|s| s.board_id == board.id)
            .map(|s| s.id)
            .collect();
        shift_ids.sort();
        for id in &shift_ids {
            let pause_until = self.pending.get(id).and_then(|p| p.pause_until);
            if let Some(until) = pause_until {
                if self.shift(*id)?.status == ShiftStatus::Ready {
                    self.shift_command(*id, ShiftCommand::Pause, "pauseProvider", t)?;
                    self.pending.entry(*id).or_default().pause_until = None;
                    self.at(until.max(t), Action::BreakEnds(*id));
                }
            }
        }
        self.match_board(&board, t)?;
        let waiting: Vec<Appointment> = self
            .appointments
            .values()
            .filter(|a| a.board_id == board.id && a.status == AppointmentStatus::Requested)
            .cloned()
            .collect();
        let arrivals_over = self.scenario.boards[b]
            .arrivals
            .last()
            .is_none_or(|a| a.at <= t);
        for id in &shift_ids {
            let s = self.shift(*id)?;
            let leaving = self.pending.get(id).is_some_and(|p| p.leaving);
            if !leaving || s.status != ShiftStatus::Ready {
                continue;
            }
            let staying = shift_ids
                .iter()
                .filter(|other| *other != id)
                .filter(|other| {
                    self.shifts[*other].status != ShiftStatus::SignedOff
                        && !self.pending.get(*other).is_some_and(|p| p.leaving)
                })
                .count();
            let provider = &self.providers[&s.provider_id];
            if ShiftPlan::may_leave(arrivals_over, staying)
                && waiting.iter().all(|a| !matching::fits(&s, provider, a))
            {
                self.shift_command(*id, ShiftCommand::SignOff, "signOffProvider", t)?;
            }
        }
        // Once no more patients come, whoever nobody left on shift can see is told so.
        if arrivals_over {
            let on_shift: Vec<Shift> = shift_ids
                .iter()
                .map(|id| self.shifts[id].clone())
                .filter(|s| s.status != ShiftStatus::SignedOff)
                .collect();
            for a in waiting {
                let servable = on_shift
                    .iter()
                    .any(|s| matching::fits(s, &self.providers[&s.provider_id], &a));
                if !servable {
                    let events =
                        scheduling::cancel(Some(&a), None, "no provider available today".into())?;
                    self.two_streams(events, a, None, "demo", "cancelAppointment", t)?;
                }
            }
        }
        let open_work = OpenWork {
            open_appointments: self
                .appointments
                .values()
                .filter(|a| a.board_id == board.id && a.status.is_open())
                .count(),
            active_providers: self
                .shifts
                .values()
                .filter(|s| s.board_id == board.id && s.status != ShiftStatus::SignedOff)
                .count(),
        };
        let everyone_joined = shift_ids.len() == self.scenario.boards[b].shifts.len();
        if arrivals_over && everyone_joined && open_work == OpenWork::default() {
            let events = board::decide(Some(&board), BoardCommand::Close { open_work })?;
            let meta = self.metadata("demo", "closeBoard");
            let next = self.record(
                Some(board.clone()),
                board.id,
                Some(board.id),
                &events,
                t,
                &meta,
            )?;
            self.boards[b] = Some(next);
        }
        Ok(())
    }

    fn match_board(&mut self, board: &Board, t: DateTime<Utc>) -> Result<()> {
        let mut appointments: Vec<Appointment> = self
            .appointments
            .values()
            .filter(|a| a.board_id == board.id && a.status == AppointmentStatus::Requested)
            .cloned()
            .collect();
        appointments.sort_by_key(|a| a.id);
        let mut shifts: Vec<Shift> = self
            .shifts
            .values()
            .filter(|s| s.board_id == board.id)
            .cloned()
            .collect();
        shifts.sort_by_key(|s| s.id);
        for pairing in matching::plan(&appointments, &shifts, &self.providers) {
            let a = self.appointment(pairing.appointment_id)?;
            let s = self.shift(pairing.shift_id)?;
            let provider = self.providers[&s.provider_id].clone();
            let (sum, n) = self.leads.get(&a.specialty).copied().unwrap_or((0, 0));
            let lead = if n > 0 {
                Duration::seconds(sum / n)
            } else {
                matching::DurationModel::DEFAULT_LEAD
            };
            let events = scheduling::schedule(Some(&a), Some(&s), Some(&provider), t + lead)?;
            let id = a.id;
            let specialty = a.specialty.clone();
            self.two_streams(events, a, Some(s), "matcher", "match", t)?;
            let (b, i) = self.arrival_of[&id];
            let arrival = &self.scenario.boards[b].arrivals[i];
            let (actual_lead, no_show) = (arrival.lead, arrival.no_show);
            if no_show {
                self.at(t + actual_lead + Duration::minutes(3), Action::NoShow(id));
            } else {
                let e = self.leads.entry(specialty).or_default();
                e.0 += actual_lead.num_seconds();
                e.1 += 1;
                self.at(t + actual_lead, Action::Start(id));
            }
        }
        Ok(())
    }
}
