//! Wait-time estimates: past durations from the `appointment_durations` projection, a
//! Board's queue and providers, and the model in [`crate::domain::matching`].
//!
//! The window is the newest [`WINDOW_SAMPLES`] appointments of a specialty finished in
//! the [`WINDOW_DAYS`] days before the moment estimated for. Reference data (providers)
//! never changes once registered, so it is cached for the life of the process; live
//! samples are cached for a few seconds, and a live Board's estimates per version.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration as StdDuration, Instant};

use chrono::{DateTime, Duration, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::domain::matching::{self, DurationModel, DurationSample, Estimate};
use crate::domain::BoardContents;
use crate::domain::{
    Appointment, AppointmentId, AppointmentStatus, BoardId, Provider, ProviderId, StreamType,
};
use crate::error::AppResult;
use crate::event_store::{fold_recorded, read_streams_of_type, RecordedEvent};
use crate::projections::Projection;

/// At most this many finished appointments per specialty feed the model.
pub const WINDOW_SAMPLES: i64 = 200;
/// Only appointments finished this many days before the estimated moment count.
pub const WINDOW_DAYS: i64 = 30;
/// How long live duration samples and live Board estimates are reused.
const LIVE_TTL: StdDuration = StdDuration::from_secs(5);
/// Bound on cached live Board estimates.
const MAX_CACHED_BOARDS: usize = 1024;

type BoardKey = (BoardId, i64);
type BoardEstimates = Arc<tokio::sync::OnceCell<Arc<HashMap<AppointmentId, Estimate>>>>;

#[derive(Default)]
struct Caches {
    providers: HashMap<ProviderId, Provider>,
    samples: HashMap<String, (Instant, Arc<Vec<DurationSample>>)>,
    boards: HashMap<BoardKey, (Instant, BoardEstimates)>,
}

/// Computes estimates; cheap to clone (shared caches).
#[derive(Clone, Default)]
pub struct Estimator {
    caches: Arc<Mutex<Caches>>,
}

impl Estimator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registered providers by id (those that exist).
    pub async fn providers(
        &self,
        pool: &PgPool,
        ids: impl IntoIterator<Item = ProviderId>,
    ) -> AppResult<HashMap<ProviderId, Provider>> {
        let mut found = HashMap::new();
        let mut missing = Vec::new();
        {
            let caches = self.caches.lock().expect("estimator cache");
            for id in ids {
                match caches.providers.get(&id) {
                    Some(p) => {
                        found.insert(id, p.clone());
                    }
                    None => missing.push(id),
                }
            }
        }
        if missing.is_empty() {
            return Ok(found);
        }
        missing.sort();
        missing.dedup();
        let missing: Vec<Uuid> = missing.into_iter().map(Uuid::from).collect();
        let events: Vec<RecordedEvent> =
            read_streams_of_type(pool, &missing, StreamType::Provider).await?;
        let mut caches = self.caches.lock().expect("estimator cache");
        for chunk in events.chunk_by(|a, b| a.stream_id == b.stream_id) {
            if let Some(p) = fold_recorded::<Provider>(chunk)? {
                caches.providers.insert(p.id, p.clone());
                found.insert(p.id, p);
            }
        }
        Ok(found)
    }

    /// Duration samples of `specialties` in the window before `until` (`None`: now,
    /// cached briefly).
    async fn samples(
        &self,
        pool: &PgPool,
        specialties: &[String],
        until: Option<DateTime<Utc>>,
    ) -> AppResult<Vec<DurationSample>> {
        let mut out = Vec::new();
        let mut missing = Vec::new();
        if until.is_none() {
            let caches = self.caches.lock().expect("estimator cache");
            for s in specialties {
                match caches.samples.get(s) {
                    Some((at, v)) if at.elapsed() < LIVE_TTL => out.extend(v.iter().cloned()),
                    _ => missing.push(s.clone()),
                }
            }
        } else {
            missing = specialties.to_vec();
        }
        if missing.is_empty() {
            return Ok(out);
        }
        type Row = (String, DateTime<Utc>, DateTime<Utc>, DateTime<Utc>);
        let rows: Vec<Row> = sqlx::query_as(&format!(
            "select sp, d.scheduled_at, d.started_at, d.finished_at \
               from unnest($1::text[]) as sp \
               cross join lateral ( \
                 select d.scheduled_at, d.started_at, d.finished_at \
                   from appointment_durations d {live} \
                  where d.specialty = sp \
                    and d.finished_at <= $2 and d.finished_at > $2 - make_interval(days => $3) \
                    and d.scheduled_at is not null and d.started_at is not null \
                  order by d.finished_at desc limit $4) d",
            live = Projection::AppointmentDurations.live_join("d"),
        ))
        .bind(&missing)
        .bind(until.unwrap_or_else(Utc::now))
        .bind(WINDOW_DAYS as i32)
        .bind(WINDOW_SAMPLES)
        .fetch_all(pool)
        .await?;
        let mut fresh: HashMap<String, Vec<DurationSample>> =
            missing.iter().map(|s| (s.clone(), Vec::new())).collect();
        for (specialty, scheduled_at, started_at, finished_at) in rows {
            fresh
                .entry(specialty.clone())
                .or_default()
                .push(DurationSample::from_times(
                    specialty,
                    scheduled_at,
                    started_at,
                    finished_at,
                ));
        }
        if until.is_none() {
            let mut caches = self.caches.lock().expect("estimator cache");
            for (s, v) in &fresh {
                caches
                    .samples
                    .insert(s.clone(), (Instant::now(), Arc::new(v.clone())));
            }
        }
        out.extend(fresh.into_values().flatten());
        Ok(out)
    }

    /// Every sample of `specialty` that any moment in `(from, to]` could use, with its
    /// finish time, oldest first: for estimates all along a timeline
    /// ([`model_at`] picks each moment's window).
    pub async fn timeline_samples(
        &self,
        pool: &PgPool,
        specialty: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> AppResult<Vec<(DateTime<Utc>, DurationSample)>> {
        type Row = (DateTime<Utc>, DateTime<Utc>, DateTime<Utc>);
        let rows: Vec<Row> = sqlx::query_as(&format!(
            "select d.scheduled_at, d.started_at, d.finished_at \
               from appointment_durations d {live} \
              where d.specialty = $1 \
                and d.finished_at <= $3 and d.finished_at > $2 - make_interval(days => $4) \
                and d.scheduled_at is not null and d.started_at is not null \
              order by d.finished_at limit 100000",
            live = Projection::AppointmentDurations.live_join("d"),
        ))
        .bind(specialty)
        .bind(from)
        .bind(to)
        .bind(WINDOW_DAYS as i32)
        .fetch_all(pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(scheduled_at, started_at, finished_at)| {
                (
                    finished_at,
                    DurationSample::from_times(
                        specialty.to_string(),
                        scheduled_at,
                        started_at,
                        finished_at,
                    ),
                )
            })
            .collect())
    }

    /// The duration model for `specialties` as of `until` (`None`: now).
    pub async fn model(
        &self,
        pool: &PgPool,
        specialties: &[String],
        until: Option<DateTime<Utc>>,
    ) -> AppResult<DurationModel> {
        Ok(DurationModel::from_samples(
            &self.samples(pool, specialties, until).await?,
        ))
    }

    /// What a new request of the Board's own specialty, in its region, would be told
    /// at `as_of` (`None`: now): the Board's current quoted wait. Live, it comes from
    /// the same cached computation as the Board's other estimates.
    pub async fn quote(
        &self,
        pool: &PgPool,
        contents: &BoardContents,
        as_of: Option<DateTime<Utc>>,
    ) -> AppResult<Option<Estimate>> {
        let estimates = match as_of {
            None => self.board(pool, contents, None, None).await?,
            Some(t) => {
                let request = quote_request(&contents.board, t);
                self.compute(pool, contents, as_of, Some(&request)).await?
            }
        };
        Ok(estimates.get(&AppointmentId::from(Uuid::nil())).cloned())
    }

    /// Estimates for every waiting appointment on a Board, and for `extra` (a request
    /// not yet made) if given, as of `as_of` (`None`: now). Live Board estimates are
    /// computed once per Board version, however many readers (e.g. subscribers to one
    /// Board) ask at the same moment: later callers wait for the first. The live map
    /// also holds, under the nil id, the Board's quote (see [`Estimator::quote`]): a
    /// request made now queues behind every waiting one, so it changes no other
    /// estimate.
    pub async fn board(
        &self,
        pool: &PgPool,
        contents: &BoardContents,
        as_of: Option<DateTime<Utc>>,
        extra: Option<&Appointment>,
    ) -> AppResult<Arc<HashMap<AppointmentId, Estimate>>> {
        if as_of.is_some() || extra.is_some() {
            return self.compute(pool, contents, as_of, extra).await;
        }
        let cell = {
            let mut caches = self.caches.lock().expect("estimator cache");
            let key = (contents.board.id, contents.version);
            match caches.boards.get(&key) {
                Some((at, cell)) if at.elapsed() < LIVE_TTL => cell.clone(),
                _ => {
                    if caches.boards.len() >= MAX_CACHED_BOARDS {
                        caches.boards.retain(|_, (at, _)| at.elapsed() < LIVE_TTL);
                        if caches.boards.len() >= MAX_CACHED_BOARDS {
                            caches.boards.clear();
                        }
                    }
                    let cell = Arc::new(tokio::sync::OnceCell::new());
                    caches.boards.insert(key, (Instant::now(), cell.clone()));
                    cell
                }
            }
        };
        cell.get_or_try_init(|| async {
            let request = quote_request(&contents.board, Utc::now());
            self.compute(pool, contents, None, Some(&request)).await
        })
        .await
        .cloned()
    }

    async fn compute(
        &self,
        pool: &PgPool,
        contents: &BoardContents,
        as_of: Option<DateTime<Utc>>,
        extra: Option<&Appointment>,
    ) -> AppResult<Arc<HashMap<AppointmentId, Estimate>>> {
        // Waiting appointments are estimated; scheduled and started ones hold providers.
        let mut specialties: Vec<String> = contents
            .appointments
            .iter()
            .map(|a| &**a)
            .filter(|a| a.status.is_open())
            .chain(extra)
            .map(|a| a.specialty.clone())
            .collect();
        specialties.sort();
        specialties.dedup();
        if specialties.is_empty() {
            return Ok(Arc::new(HashMap::new()));
        }
        let providers = self
            .providers(pool, contents.shifts.iter().map(|s| s.provider_id))
            .await?;
        let model = self.model(pool, &specialties, as_of).await?;
        Ok(Arc::new(matching::estimate(
            as_of.unwrap_or_else(Utc::now),
            &contents.appointments,
            &contents.shifts,
            &providers,
            &model,
            extra,
        )))
    }

    /// When an appointment of `specialty` scheduled now is expected to start.
    pub async fn scheduled_start(
        &self,
        pool: &PgPool,
        specialty: &str,
        now: DateTime<Utc>,
    ) -> AppResult<DateTime<Utc>> {
        let model = self.model(pool, &[specialty.to_string()], None).await?;
        Ok(now + model.lead(specialty))
    }
}

/// The model at moment `t` from [`Estimator::timeline_samples`] (sorted by finish
/// time): the newest [`WINDOW_SAMPLES`] finished in the window before `t`.
pub fn model_at(samples: &[(DateTime<Utc>, DurationSample)], t: DateTime<Utc>) -> DurationModel {
    let end = samples.partition_point(|(finished, _)| *finished <= t);
    let start = samples[..end]
        .partition_point(|(finished, _)| *finished <= t - Duration::days(WINDOW_DAYS));
    let start = start.max(end.saturating_sub(WINDOW_SAMPLES as usize));
    let window: Vec<DurationSample> = samples[start..end].iter().map(|(_, s)| s.clone()).collect();
    DurationModel::from_samples(&window)
}

/// A request not made yet, for estimating what it would wait.
pub fn hypothetical_request(
    board: &crate::domain::Board,
    specialty: String,
    region: Option<String>,
    at: DateTime<Utc>,
) -> Appointment {
    Appointment {
        id: Uuid::nil().into(),
        board_id: board.id,
        patient_id: None,
        patient_name: String::new(),
        region: region.unwrap_or_else(|| board.region.clone()),
        specialty,
        reason: String::new(),
        status: AppointmentStatus::Requested,
        provider_id: None,
        shift_id: None,
        estimated_time: None,
        requested_at: at,
        scheduled_at: None,
        started_at: None,
        finished_at: None,
        cancelled_at: None,
        cancellation_reason: None,
        version: 0,
    }
}

/// The request behind a Board's quote: its own specialty, in its region, made at `at`.
fn quote_request(board: &crate::domain::Board, at: DateTime<Utc>) -> Appointment {
    hypothetical_request(board, board.specialty.clone(), None, at)
}

/// When a scheduled or started appointment is expected to finish: scheduled time plus
/// the usual time an appointment of its specialty scheduled at that hour holds a
/// provider (the same figure the wait-time model frees its provider by).
pub fn expected_finish(model: &DurationModel, a: &Appointment) -> Option<DateTime<Utc>> {
    match a.status {
        AppointmentStatus::Scheduled | AppointmentStatus::Started => {
            let scheduled = a.scheduled_at?;
            Some(scheduled + model.held(&a.specialty, scheduled).0)
        }
        _ => None,
    }
}

/// A wait in whole seconds, never negative.
pub fn wait_seconds(from: DateTime<Utc>, until: DateTime<Utc>) -> i64 {
    (until - from).max(Duration::zero()).num_seconds()
}
