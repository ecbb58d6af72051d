//! Matching waiting appointments with READY providers, and estimating waits.
//!
//! Both are pure: the matcher process and the estimate resolvers load a Board's shifts,
//! appointments and providers (and past durations) first, then ask these functions.

use std::borrow::Borrow;
use std::collections::HashMap;

use chrono::{DateTime, Duration, Timelike, Utc};

use super::{
    Appointment, AppointmentId, AppointmentStatus, Provider, ProviderId, Shift, ShiftId,
    ShiftStatus,
};

/// Whether `provider`, on `shift`, may take `appointment`: same Board, the specialty,
/// a licence in the appointment's region.
pub fn fits(shift: &Shift, provider: &Provider, appointment: &Appointment) -> bool {
    shift.board_id == appointment.board_id
        && provider.has_specialty(&appointment.specialty)
        && provider.is_licensed_in(&appointment.region)
}

/// One assignment the matcher should write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pairing {
    pub appointment_id: AppointmentId,
    pub shift_id: ShiftId,
}

fn waiting_in_order(appointments: &[impl Borrow<Appointment>]) -> Vec<&Appointment> {
    let mut waiting: Vec<&Appointment> = appointments
        .iter()
        .map(Borrow::borrow)
        .filter(|a| a.status == AppointmentStatus::Requested)
        .collect();
    waiting.sort_by_key(|a| (a.requested_at, a.id));
    waiting
}

/// The assignments to make now. The longest-waiting appointment goes first and takes
/// the fitting provider who has been READY the longest; then the next, and so on. No
/// provider is used twice, and no appointment left waiting has an unused fitting READY
/// provider (each had its pick before any later one).
pub fn plan(
    appointments: &[impl Borrow<Appointment>],
    shifts: &[Shift],
    providers: &HashMap<ProviderId, Provider>,
) -> Vec<Pairing> {
    let mut ready: Vec<(&Shift, &Provider)> = shifts
        .iter()
        .filter(|s| s.status == ShiftStatus::Ready)
        .filter_map(|s| providers.get(&s.provider_id).map(|p| (s, p)))
        .collect();
    ready.sort_by_key(|(s, _)| (s.ready_since, s.id));
    let mut pairings = Vec::new();
    for appointment in waiting_in_order(appointments) {
        if let Some(i) = ready.iter().position(|(s, p)| fits(s, p, appointment)) {
            let (shift, _) = ready.remove(i);
            pairings.push(Pairing {
                appointment_id: appointment.id,
                shift_id: shift.id,
            });
        }
    }
    pairings
}

/// Past durations, summarised for the estimate: how long a provider is held from
/// assignment to the end of the appointment, by specialty and UTC hour of day; how long
/// a scheduled appointment takes to start; and how long charting takes.
#[derive(Debug, Clone)]
pub struct DurationModel {
    /// Mean held time by specialty and hour, where the hour has enough samples.
    by_hour: HashMap<(String, u32), Duration>,
    /// Mean held time by specialty over the whole window.
    by_specialty: HashMap<String, Duration>,
    /// Mean time from scheduled to started, by specialty.
    lead: HashMap<String, Duration>,
    /// Used when a specialty has no history yet.
    pub default_lead: Duration,
    /// Used when a specialty has no history yet.
    pub default_held: Duration,
    /// Used when neither the provider nor the Board has charted yet.
    pub default_charting: Duration,
}

/// One finished appointment in the window: its specialty, when it was scheduled, how
/// long it took to start (scheduled → started) and how long the provider was held
/// (scheduled → finished).
#[derive(Debug, Clone, PartialEq)]
pub struct DurationSample {
    pub specialty: String,
    pub scheduled_at: DateTime<Utc>,
    pub lead: Duration,
    pub held: Duration,
}

impl DurationSample {
    /// From an appointment's scheduled, started and finished times.
    pub fn from_times(
        specialty: String,
        scheduled_at: DateTime<Utc>,
        started_at: DateTime<Utc>,
        finished_at: DateTime<Utc>,
    ) -> Self {
        Self {
            specialty,
            scheduled_at,
            lead: started_at - scheduled_at,
            held: finished_at - scheduled_at,
        }
    }
}

impl DurationModel {
    /// An hour's own mean is used once it has this many samples; below that the
    /// specialty's mean over all hours is steadier.
    pub const MIN_HOUR_SAMPLES: usize = 3;
    pub const DEFAULT_HELD: Duration = Duration::minutes(20);
    pub const DEFAULT_CHARTING: Duration = Duration::minutes(5);
    pub const DEFAULT_LEAD: Duration = Duration::minutes(2);
    /// Every mean leans on this many samples of its default, so a little history moves
    /// it only part of the way: one appointment finished 40 ms after it was scheduled
    /// (a first try by hand) does not make every wait estimate zero, while a day of
    /// real appointments outweighs the defaults many times over.
    pub const PRIOR_SAMPLES: i64 = 2;

    pub fn from_samples(samples: &[DurationSample]) -> Self {
        let mut hours: HashMap<(String, u32), (i64, usize)> = HashMap::new();
        let mut specialties: HashMap<String, (i64, usize)> = HashMap::new();
        let mut leads: HashMap<String, (i64, usize)> = HashMap::new();
        for s in samples {
            let l = leads.entry(s.specialty.clone()).or_default();
            l.0 += s.lead.num_milliseconds().max(0);
            l.1 += 1;
            let ms = s.held.num_milliseconds().max(0);
            let h = hours
                .entry((s.specialty.clone(), s.scheduled_at.hour()))
                .or_default();
            h.0 += ms;
            h.1 += 1;
            let t = specialties.entry(s.specialty.clone()).or_default();
            t.0 += ms;
            t.1 += 1;
        }
        let mean = |(total, n): (i64, usize), default: Duration| {
            Duration::milliseconds(
                (total + Self::PRIOR_SAMPLES * default.num_milliseconds())
                    / (n as i64 + Self::PRIOR_SAMPLES),
            )
        };
        Self {
            by_hour: hours
                .into_iter()
                .filter(|(_, (_, n))| *n >= Self::MIN_HOUR_SAMPLES)
                .map(|(k, v)| (k, mean(v, Self::DEFAULT_HELD)))
                .collect(),
            by_specialty: specialties
                .into_iter()
                .map(|(k, v)| (k, mean(v, Self::DEFAULT_HELD)))
                .collect(),
            lead: leads
                .into_iter()
                .map(|(k, v)| (k, mean(v, Self::DEFAULT_LEAD)))
                .collect(),
            default_lead: Self::DEFAULT_LEAD,
            default_held: Self::DEFAULT_HELD,
            default_charting: Self::DEFAULT_CHARTING,
        }
    }

    /// Expected time a provider is held by an appointment of `specialty` scheduled at
    /// `at`, and whether history (rather than the default) backs it.
    pub fn held(&self, specialty: &str, at: DateTime<Utc>) -> (Duration, bool) {
        if let Some(d) = self.by_hour.get(&(specialty.to_string(), at.hour())) {
            return (*d, true);
        }
        match self.by_specialty.get(specialty) {
            Some(d) => (*d, true),
            None => (self.default_held, false),
        }
    }

    /// Expected time from scheduling an appointment of `specialty` to its start.
    pub fn lead(&self, specialty: &str) -> Duration {
        self.lead
            .get(specialty)
            .copied()
            .unwrap_or(self.default_lead)
    }

    /// Expected charting time after an appointment: the provider's own mean on this
    /// shift, else the Board's, else the default.
    fn charting(&self, shift: &Shift, board_mean: Option<Duration>) -> Duration {
        if shift.chartings > 0 {
            return Duration::seconds(shift.charting_seconds / shift.chartings);
        }
        board_mean.unwrap_or(self.default_charting)
    }
}

/// The estimate for one waiting (or hypothetical) appointment.
#[derive(Debug, Clone, PartialEq)]
pub struct Estimate {
    /// When it is expected to start: a provider is free, takes it, and the expected
    /// lead time passes. `None` when no provider on shift (READY, ASSIGNED or CHARTING)
    /// could take it.
    pub start: Option<DateTime<Utc>>,
    /// Waiting appointments ahead of it that compete for the same providers.
    pub queue_ahead: usize,
    /// Providers on shift who could take it (not paused or signed off).
    pub providers: usize,
    /// Of those, how many are READY now.
    pub providers_ready: usize,
    /// Held time used for it, and whether history backs it.
    pub held: Duration,
    pub from_history: bool,
}

/// A provider in the queue simulation: when they are next free.
struct Lane<'a> {
    shift: &'a Shift,
    provider: &'a Provider,
    free_at: DateTime<Utc>,
    charting: Duration,
}

/// Estimates when each waiting appointment will start, as of `now`, and (with
/// `extra`) when a new request would: it replays the matcher's policy over the queue
/// with expected durations. Each provider on shift is free now (READY), after the
/// expected rest of the appointment plus charting (ASSIGNED), or after the expected
/// rest of charting (CHARTING); paused and signed-off providers are left out. Waiting
/// appointments, oldest first, take the fitting provider free soonest; that provider
/// is then held for the expected time plus charting, and the appointment starts after
/// the expected lead time.
pub fn estimate(
    now: DateTime<Utc>,
    appointments: &[impl Borrow<Appointment>],
    shifts: &[Shift],
    providers: &HashMap<ProviderId, Provider>,
    model: &DurationModel,
    extra: Option<&Appointment>,
) -> HashMap<AppointmentId, Estimate> {
    let (total, count) = shifts.iter().fold((0, 0), |(t, n), s| {
        (t + s.charting_seconds, n + s.chartings)
    });
    let board_charting = (count > 0).then(|| Duration::seconds(total / count));
    // Only scheduled and started appointments hold a provider.
    let by_id: HashMap<AppointmentId, &Appointment> = appointments
        .iter()
        .map(Borrow::borrow)
        .filter(|a: &&Appointment| {
            matches!(
                a.status,
                AppointmentStatus::Scheduled | AppointmentStatus::Started
            )
        })
        .map(|a| (a.id, a))
        .collect();
    let mut lanes: Vec<Lane> = shifts
        .iter()
        .filter_map(|shift| {
            let provider = providers.get(&shift.provider_id)?;
            let charting = model.charting(shift, board_charting);
            let free_at = match shift.status {
                ShiftStatus::Ready => now,
                ShiftStatus::Assigned => {
                    let held = shift.appointment_id.and_then(|id| by_id.get(&id));
                    let end = match held.and_then(|a| a.scheduled_at.map(|s| (a, s))) {
                        Some((a, scheduled)) => scheduled + model.held(&a.specialty, scheduled).0,
                        None => now,
                    };
                    end.max(now) + charting
                }
                ShiftStatus::Charting => (shift.charting_since.unwrap_or(now) + charting).max(now),
                ShiftStatus::Paused | ShiftStatus::SignedOff => return None,
            };
            Some(Lane {
                shift,
                provider,
                free_at,
                charting,
            })
        })
        .collect();
    lanes.sort_by_key(|l| (l.shift.ready_since, l.shift.id));

    let mut queue = waiting_in_order(appointments);
    if let Some(extra) = extra {
        queue.push(extra);
    }
    let mut estimates = HashMap::new();
    for (position, appointment) in queue.iter().enumerate() {
        let fitting: Vec<usize> = (0..lanes.len())
            .filter(|&i| fits(lanes[i].shift, lanes[i].provider, appointment))
            .collect();
        let queue_ahead = queue[..position]
            .iter()
            .filter(|other| {
                fitting
                    .iter()
                    .any(|&i| fits(lanes[i].shift, lanes[i].provider, other))
            })
            .count();
        let providers_ready = fitting
            .iter()
            .filter(|&&i| lanes[i].shift.status == ShiftStatus::Ready)
            .count();
        let soonest = fitting.iter().copied().min_by_key(|&i| lanes[i].free_at);
        let (held, from_history) = model.held(
            &appointment.specialty,
            soonest.map_or(now, |i| lanes[i].free_at),
        );
        let start = soonest.map(|i| {
            let lane = &mut lanes[i];
            let assigned = lane.free_at.max(now);
            lane.free_at = assigned + held + lane.charting;
            assigned + model.lead(&appointment.specialty)
        });
        estimates.insert(
            appointment.id,
            Estimate {
                start,
                queue_ahead,
                providers: fitting.len(),
                providers_ready,
                held,
                from_history,
            },
        );
    }
    estimates
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::testing::at;
    use crate::domain::BoardId;
    use uuid::Uuid;

    const BOARD: BoardId = BoardId::from_uuid(Uuid::from_u128(1));

    fn provider(n: u128, specialties: &[&str], regions: &[&str]) -> Provider {
        Provider {
            id: Uuid::from_u128(100 + n).into(),
            name: format!("Dr. {n}"),
            specialties: specialties.iter().map(|s| s.to_string()).collect(),
            licensed_regions: regions.iter().map(|s| s.to_string()).collect(),
            version: 1,
        }
    }

    fn shift(n: u128, status: ShiftStatus, ready_minute: i64) -> Shift {
        Shift {
            id: Uuid::from_u128(200 + n).into(),
            board_id: BOARD,
            provider_id: Uuid::from_u128(100 + n).into(),
            status,
            appointment_id: None,
            joined_at: at(0),
            charting_since: None,
            charting_seconds: 0,
            signed_off_at: None,
            ready_since: (status == ShiftStatus::Ready).then(|| at(ready_minute)),
            chartings: 0,
            version: 1,
        }
    }

    fn waiting(n: u128, specialty: &str, region: &str, minute: i64) -> Appointment {
        Appointment {
            id: Uuid::from_u128(300 + n).into(),
            board_id: BOARD,
            patient_id: None,
            patient_name: format!("Patient {n}"),
            specialty: specialty.into(),
            region: region.into(),
            reason: "check-up".into(),
            status: AppointmentStatus::Requested,
            provider_id: None,
            shift_id: None,
            estimated_time: None,
            requested_at: at(minute),
            scheduled_at: None,
            started_at: None,
            finished_at: None,
            cancelled_at: None,
            cancellation_reason: None,
            version: 1,
        }
    }

    fn providers(list: &[Provider]) -> HashMap<ProviderId, Provider> {
        list.iter().map(|p| (p.id, p.clone())).collect()
    }

    #[test]
    fn the_longest_waiting_fitting_appointment_goes_first() {
        let ps = providers(&[provider(1, &["pediatrics"], &["TX"])]);
        let shifts = [shift(1, ShiftStatus::Ready, 0)];
        let appointments = [
            waiting(1, "pediatrics", "TX", 5),
            waiting(2, "pediatrics", "TX", 2),
            waiting(3, "pediatrics", "TX", 9),
        ];
        assert_eq!(
            plan(&appointments, &shifts, &ps),
            vec![Pairing {
                appointment_id: Uuid::from_u128(302).into(),
                shift_id: Uuid::from_u128(201).into()
            }]
        );
    }

    #[test]
    fn specialty_and_licence_are_respected() {
        let ps = providers(&[
            provider(1, &["dermatology"], &["TX"]),
            provider(2, &["pediatrics"], &["CA"]),
            provider(3, &["pediatrics"], &["TX", "CA"]),
        ]);
        let shifts = [
            shift(1, ShiftStatus::Ready, 0),
            shift(2, ShiftStatus::Ready, 1),
            shift(3, ShiftStatus::Ready, 2),
        ];
        // The oldest request fits nobody; the second only provider 3; the third
        // provider 2 (and 3, taken by then).
        let appointments = [
            waiting(1, "cardiology", "TX", 0),
            waiting(2, "pediatrics", "TX", 1),
            waiting(3, "pediatrics", "CA", 2),
        ];
        let pairs = plan(&appointments, &shifts, &ps);
        assert_eq!(
            pairs,
            vec![
                Pairing {
                    appointment_id: Uuid::from_u128(302).into(),
                    shift_id: Uuid::from_u128(203).into()
                },
                Pairing {
                    appointment_id: Uuid::from_u128(303).into(),
                    shift_id: Uuid::from_u128(202).into()
                },
            ]
        );
    }

    #[test]
    fn the_provider_ready_longest_is_picked_and_busy_ones_are_not() {
        let ps = providers(&[
            provider(1, &["pediatrics"], &["TX"]),
            provider(2, &["pediatrics"], &["TX"]),
            provider(3, &["pediatrics"], &["TX"]),
        ]);
        let shifts = [
            shift(1, ShiftStatus::Ready, 7),
            shift(2, ShiftStatus::Ready, 3),
            shift(3, ShiftStatus::Paused, 0),
        ];
        let appointments = [waiting(1, "pediatrics", "TX", 0)];
        assert_eq!(
            plan(&appointments, &shifts, &ps)[0].shift_id,
            ShiftId::from(Uuid::from_u128(202))
        );
        let none_ready = [shift(3, ShiftStatus::Paused, 0)];
        assert!(plan(&appointments, &none_ready, &ps).is_empty());
    }

    #[test]
    fn scheduled_and_cancelled_appointments_are_not_matched() {
        let ps = providers(&[provider(1, &["pediatrics"], &["TX"])]);
        let shifts = [shift(1, ShiftStatus::Ready, 0)];
        let mut scheduled = waiting(1, "pediatrics", "TX", 0);
        scheduled.status = AppointmentStatus::Scheduled;
        let mut cancelled = waiting(2, "pediatrics", "TX", 0);
        cancelled.status = AppointmentStatus::Cancelled;
        assert!(plan(&[scheduled, cancelled], &shifts, &ps).is_empty());
    }

    fn model(held_minutes: i64) -> DurationModel {
        let samples: Vec<DurationSample> = (0..5)
            .map(|i| DurationSample {
                specialty: "pediatrics".into(),
                scheduled_at: at(i),
                lead: DurationModel::DEFAULT_LEAD,
                held: Duration::minutes(held_minutes),
            })
            .collect();
        DurationModel::from_samples(&samples)
    }

    #[test]
    fn the_queue_ahead_is_served_by_providers_as_they_free_up() {
        // Two providers, each held 20 minutes plus 5 of charting; both just took an
        // appointment at minute 0. Five patients wait.
        let ps = providers(&[
            provider(1, &["pediatrics"], &["TX"]),
            provider(2, &["pediatrics"], &["TX"]),
        ]);
        let mut shifts = vec![
            shift(1, ShiftStatus::Assigned, 0),
            shift(2, ShiftStatus::Assigned, 0),
        ];
        let mut held = Vec::new();
        for (i, s) in shifts.iter_mut().enumerate() {
            let mut a = waiting(50 + i as u128, "pediatrics", "TX", 0);
            a.status = AppointmentStatus::Scheduled;
            a.scheduled_at = Some(at(0));
            s.appointment_id = Some(a.id);
            held.push(a);
        }
        let mut appointments = held;
        appointments.extend((1..=5).map(|n| waiting(n, "pediatrics", "TX", n as i64)));
        let estimates = estimate(at(0), &appointments, &shifts, &ps, &model(20), None);
        let start = |n: u128| {
            estimates[&AppointmentId::from(Uuid::from_u128(300 + n))]
                .start
                .unwrap()
        };
        // Each starts two minutes (the lead) after a provider frees up.
        assert_eq!(start(1), at(27));
        assert_eq!(start(2), at(27));
        assert_eq!(start(3), at(52));
        assert_eq!(start(4), at(52));
        assert_eq!(start(5), at(77));
        let fifth = &estimates[&AppointmentId::from(Uuid::from_u128(305))];
        assert_eq!((fifth.queue_ahead, fifth.providers), (4, 2));
        assert!(fifth.from_history);
    }

    #[test]
    fn a_new_request_without_history_uses_the_default_and_ready_providers_start_now() {
        let ps = providers(&[provider(1, &["pediatrics"], &["TX"])]);
        let shifts = [shift(1, ShiftStatus::Ready, 0)];
        let model = DurationModel::from_samples(&[]);
        let new = waiting(9, "pediatrics", "TX", 3);
        let estimates = estimate(
            at(3),
            &[] as &[Appointment],
            &shifts,
            &ps,
            &model,
            Some(&new),
        );
        let e = &estimates[&new.id];
        assert_eq!(e.start, Some(at(3) + DurationModel::DEFAULT_LEAD));
        assert_eq!((e.queue_ahead, e.providers, e.providers_ready), (0, 1, 1));
        assert_eq!(e.held, DurationModel::DEFAULT_HELD);
        assert!(!e.from_history);
        // Nobody who could take a cardiology patient: no estimate.
        let other = waiting(10, "cardiology", "TX", 3);
        let estimates = estimate(
            at(3),
            &[] as &[Appointment],
            &shifts,
            &ps,
            &model,
            Some(&other),
        );
        assert_eq!(estimates[&other.id].start, None);
    }

    #[test]
    fn one_instant_appointment_moves_the_estimate_only_part_of_the_way() {
        // A first try by hand: scheduled, started and finished within 40 ms.
        let quick = DurationSample {
            specialty: "pediatrics".into(),
            scheduled_at: at(0),
            lead: Duration::milliseconds(10),
            held: Duration::milliseconds(40),
        };
        let m = DurationModel::from_samples(std::slice::from_ref(&quick));
        let (held, from_history) = m.held("pediatrics", at(0));
        assert!(from_history);
        assert_eq!(
            held,
            Duration::milliseconds((40 + 2 * 20 * 60_000) / 3),
            "two thirds of the default's 20 minutes, not 40 ms"
        );
        assert_eq!(
            m.lead("pediatrics"),
            Duration::milliseconds((10 + 2 * 2 * 60_000) / 3)
        );
        // Many such samples do win in the end: the history is what it is.
        let m = DurationModel::from_samples(&vec![quick; 1000]);
        assert!(m.held("pediatrics", at(0)).0 < Duration::seconds(5));
    }

    #[test]
    fn an_hour_with_enough_samples_uses_its_own_mean() {
        let mut samples = Vec::new();
        for i in 0..3 {
            samples.push(DurationSample {
                specialty: "pediatrics".into(),
                scheduled_at: at(i),
                lead: Duration::zero(),
                held: Duration::minutes(10),
            });
            samples.push(DurationSample {
                specialty: "pediatrics".into(),
                scheduled_at: at(60 + i),
                lead: Duration::zero(),
                held: Duration::minutes(30),
            });
        }
        samples.push(DurationSample {
            specialty: "pediatrics".into(),
            scheduled_at: at(120),
            lead: Duration::zero(),
            held: Duration::minutes(50),
        });
        let m = DurationModel::from_samples(&samples);
        // Each mean leans on two samples of the default's 20 minutes.
        assert_eq!(
            m.held("pediatrics", at(1)).0,
            Duration::minutes((30 + 40) / 5)
        );
        assert_eq!(
            m.held("pediatrics", at(61)).0,
            Duration::minutes((90 + 40) / 5)
        );
        // Hour with one sample: the specialty's mean, (30 + 90 + 50 + 40) / 9.
        assert_eq!(
            m.held("pediatrics", at(121)).0,
            Duration::milliseconds(210 * 60_000 / 9)
        );
        assert_eq!(
            m.held("cardiology", at(0)),
            (DurationModel::DEFAULT_HELD, false)
        );
    }
}
