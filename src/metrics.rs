//! Prometheus metrics: counters kept by this process, plus projection lag read from the
//! database at scrape time (so every process reports it, leader or not).

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProjectionLabel {
    pub projection: String,
}

pub struct Metrics {
    registry: Mutex<Registry>,
    leader: Gauge,
    events_applied: Family<ProjectionLabel, Counter>,
    batch_size: Family<ProjectionLabel, Histogram>,
    dead_lettered: Family<ProjectionLabel, Counter>,
    lag_events: Family<ProjectionLabel, Gauge>,
    lag_seconds: Family<ProjectionLabel, Gauge<f64, AtomicU64>>,
    dead_letters_open: Family<ProjectionLabel, Gauge>,
    matcher_assignments: Counter,
    matcher_conflicts: Counter,
    matcher_latency: Histogram,
    matcher_parked: Gauge,
    /// Streams the matcher read forward past what it kept before deciding: waiting
    /// appointments, and the rest (the Board's own stream and its shifts).
    matcher_forward_appointments: Counter,
    matcher_forward_others: Counter,
    /// The same latencies in microseconds, for exact quantiles (the demo's report).
    matcher_latency_us: Mutex<hdrhistogram::Histogram<u64>>,
    /// Batches the projector read from the log: one read feeds every projection whose
    /// checkpoint is at the same place, so this stays below the batches applied.
    projector_batches_read: Counter,
    projector_stage_seconds: Family<StageLabel, Histogram>,
    /// The same stage timings in microseconds, for exact quantiles (the bench's report
    /// of where a batch's time goes).
    projector_stage_us: Mutex<BTreeMap<ProjectorStage, hdrhistogram::Histogram<u64>>>,
}

/// One step of a projector batch, timed separately.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub enum ProjectorStage {
    /// How long the oldest event of a read had been recorded when the read returned
    /// it: the wait for its commit, for every older transaction to end (xmin), and for
    /// the projector to come round.
    Visible,
    /// The `(tx, seq)` read of the log (shared by the projections at one checkpoint).
    Read,
    /// `BEGIN` of a projection's transaction.
    Begin,
    /// Loading the touched documents, folding the events, writing the documents.
    Apply,
    /// Dead letters and the checkpoint compare-and-set.
    Checkpoint,
    /// Queueing `pg_notify` for the changed Boards.
    Notify,
    Commit,
    /// A whole batch of one projection, from its read to its commit.
    Batch,
}

impl ProjectorStage {
    pub const ALL: [ProjectorStage; 8] = [
        ProjectorStage::Visible,
        ProjectorStage::Read,
        ProjectorStage::Begin,
        ProjectorStage::Apply,
        ProjectorStage::Checkpoint,
        ProjectorStage::Notify,
        ProjectorStage::Commit,
        ProjectorStage::Batch,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ProjectorStage::Visible => "visible",
            ProjectorStage::Read => "read",
            ProjectorStage::Begin => "begin",
            ProjectorStage::Apply => "apply",
            ProjectorStage::Checkpoint => "checkpoint",
            ProjectorStage::Notify => "notify",
            ProjectorStage::Commit => "commit",
            ProjectorStage::Batch => "batch",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabel {
    pub stage: &'static str,
}

/// Count and quantiles of one projector stage, in milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct StageSummary {
    pub stage: ProjectorStage,
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// Quantiles of the matcher's latency, in milliseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct LatencySummary {
    pub count: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

fn label(projection: &str) -> ProjectionLabel {
    ProjectionLabel {
        projection: projection.to_string(),
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("careboard");
        let leader = Gauge::default();
        let events_applied = Family::<ProjectionLabel, Counter>::default();
        let batch_size = Family::<ProjectionLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(1.0, 4.0, 8))
        });
        let dead_lettered = Family::<ProjectionLabel, Counter>::default();
        let lag_events = Family::<ProjectionLabel, Gauge>::default();
        let lag_seconds = Family::<ProjectionLabel, Gauge<f64, AtomicU64>>::default();
        let dead_letters_open = Family::<ProjectionLabel, Gauge>::default();
        let matcher_assignments = Counter::default();
        let matcher_conflicts = Counter::default();
        let matcher_latency = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        let matcher_parked = Gauge::default();
        let matcher_forward_appointments = Counter::default();
        let matcher_forward_others = Counter::default();
        let projector_batches_read = Counter::default();
        let projector_stage_seconds = Family::<StageLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0001, 2.0, 16))
        });
        registry.register(
            "projector_batches_read",
            "Batches the projector read from the log (one read feeds every projection at \
             the same checkpoint)",
            projector_batches_read.clone(),
        );
        registry.register(
            "projector_stage_seconds",
            "Time per projector batch stage: read, begin, apply, checkpoint, notify, \
             commit, and the whole batch",
            projector_stage_seconds.clone(),
        );
        registry.register(
            "matcher_parked_boards",
            "Boards the matcher gave up on after its retries; retried now and then",
            matcher_parked.clone(),
        );
        registry.register(
            "matcher_appointments_read_forward",
            "Waiting appointments' streams the matcher read forward before deciding (only \
             while some provider is READY)",
            matcher_forward_appointments.clone(),
        );
        registry.register(
            "matcher_streams_read_forward",
            "Board and shift streams the matcher read forward before deciding",
            matcher_forward_others.clone(),
        );
        registry.register(
            "matcher_assignments",
            "Appointments the matcher scheduled",
            matcher_assignments.clone(),
        );
        registry.register(
            "matcher_conflicts",
            "Matcher writes refused because a stream moved; re-read and re-decided",
            matcher_conflicts.clone(),
        );
        registry.register(
            "matcher_latency_seconds",
            "From the moment a match became possible (request or provider READY, whichever \
             came later) to the assignment committed",
            matcher_latency.clone(),
        );
        registry.register(
            "projector_leader",
            "1 while this process holds the projector leader lock",
            leader.clone(),
        );
        registry.register(
            "projection_events_applied",
            "Events applied by this process, per projection",
            events_applied.clone(),
        );
        registry.register(
            "projection_batch_size",
            "Events read per projector batch",
            batch_size.clone(),
        );
        registry.register(
            "projection_dead_lettered",
            "Events dead-lettered by this process, per projection",
            dead_lettered.clone(),
        );
        registry.register(
            "projection_lag_events",
            "Committed events the live generation has not applied yet",
            lag_events.clone(),
        );
        registry.register(
            "projection_lag_seconds",
            "Age of the oldest event the live generation has not applied yet",
            lag_seconds.clone(),
        );
        registry.register(
            "projection_dead_letters",
            "Dead-lettered events not replayed yet, per projection",
            dead_letters_open.clone(),
        );
        Self {
            registry: Mutex::new(registry),
            leader,
            events_applied,
            batch_size,
            dead_lettered,
            lag_events,
            lag_seconds,
            dead_letters_open,
            matcher_assignments,
            matcher_conflicts,
            matcher_latency,
            matcher_parked,
            matcher_forward_appointments,
            matcher_forward_others,
            matcher_latency_us: Mutex::new(
                hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000, 3)
                    .expect("valid histogram bounds"),
            ),
            projector_batches_read,
            projector_stage_seconds,
            projector_stage_us: Mutex::new(BTreeMap::new()),
        }
    }

    /// A batch read from the log (now or ahead) is about to be applied.
    pub fn projector_batch_read(&self) {
        self.projector_batches_read.inc();
    }

    /// Batches the projector read from the log and applied (to one or more
    /// projections) so far.
    pub fn projector_batches_read(&self) -> u64 {
        self.projector_batches_read.get()
    }

    /// Batches applied so far, summed over projections.
    pub fn projector_batches(&self) -> u64 {
        self.projector_stage_us
            .lock()
            .expect("stage histograms")
            .get(&ProjectorStage::Batch)
            .map_or(0, |h| h.len())
    }

    pub fn projector_stage(&self, stage: ProjectorStage, took: std::time::Duration) {
        self.projector_stage_seconds
            .get_or_create(&StageLabel {
                stage: stage.as_str(),
            })
            .observe(took.as_secs_f64());
        let us = (took.as_micros() as u64).clamp(1, 3_600_000_000);
        let mut stages = self.projector_stage_us.lock().expect("stage histograms");
        let h = stages.entry(stage).or_insert_with(|| {
            hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000, 3)
                .expect("valid histogram bounds")
        });
        let _ = h.record(us);
    }

    /// Where the projector's batches spent their time, stage by stage.
    pub fn projector_stages(&self) -> Vec<StageSummary> {
        let stages = self.projector_stage_us.lock().expect("stage histograms");
        let ms = |us: u64| us as f64 / 1000.0;
        ProjectorStage::ALL
            .iter()
            .filter_map(|stage| {
                let h = stages.get(stage)?;
                Some(StageSummary {
                    stage: *stage,
                    count: h.len(),
                    mean_ms: h.mean() / 1000.0,
                    p50_ms: ms(h.value_at_quantile(0.5)),
                    p99_ms: ms(h.value_at_quantile(0.99)),
                })
            })
            .collect()
    }

    /// Counts the streams a matcher's forward read covered (see the registered help).
    pub fn matcher_read_forward(&self, appointments: usize, others: usize) {
        self.matcher_forward_appointments
            .inc_by(appointments as u64);
        self.matcher_forward_others.inc_by(others as u64);
    }

    pub fn matched(&self, latency: std::time::Duration) {
        self.matcher_assignments.inc();
        self.matcher_latency.observe(latency.as_secs_f64());
        let us = (latency.as_micros() as u64).clamp(1, 3_600_000_000);
        let _ = self
            .matcher_latency_us
            .lock()
            .expect("matcher histogram")
            .record(us);
    }

    pub fn matcher_conflict(&self) {
        self.matcher_conflicts.inc();
    }

    pub fn set_matcher_parked(&self, boards: usize) {
        self.matcher_parked.set(boards as i64);
    }

    pub fn matcher_latency(&self) -> LatencySummary {
        let h = self.matcher_latency_us.lock().expect("matcher histogram");
        let ms = |us: u64| us as f64 / 1000.0;
        LatencySummary {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.5)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
        }
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.set(leader as i64);
    }

    pub fn batch_applied(&self, projection: &str, read: usize, applied: u64) {
        self.batch_size
            .get_or_create(&label(projection))
            .observe(read as f64);
        self.events_applied
            .get_or_create(&label(projection))
            .inc_by(applied);
    }

    pub fn dead_lettered(&self, projection: &str, n: u64) {
        self.dead_lettered
            .get_or_create(&label(projection))
            .inc_by(n);
    }

    /// Sets the database-derived gauges of one projection's live generation (read from
    /// `projection_state` by the caller just before rendering).
    pub fn set_projection_lag(
        &self,
        projection: &str,
        lag_events: i64,
        lag_seconds: f64,
        dead_letters: i64,
    ) {
        let l = label(projection);
        self.lag_events.get_or_create(&l).set(lag_events);
        self.lag_seconds.get_or_create(&l).set(lag_seconds);
        self.dead_letters_open.get_or_create(&l).set(dead_letters);
    }

    /// Registers the live fan-out's counters (kept by the fan-out).
    pub fn register_frames(&self, frames: &FrameMetrics) {
        let mut registry = self.registry.lock().expect("metrics registry");
        registry.register(
            "subscription_executions",
            "Subscription executions: one per frame of a shared group, one per frame of a subscription that runs alone",
            frames.executions.clone(),
        );
        registry.register(
            "subscription_frames_sent",
            "Subscription frames written to websockets",
            frames.frames_sent.clone(),
        );
        registry.register(
            "subscription_write_pass_sockets",
            "Sockets the shared groups' writer passes have handed a frame to",
            frames.pass_sockets.clone(),
        );
        registry.register(
            "subscription_write_pass_nanoseconds",
            "Time the shared groups' writer passes spent handing frames to sockets, summed over their tasks",
            frames.pass_nanos.clone(),
        );
        registry.register(
            "subscription_write_pass_encodings",
            "Whole frames (envelope with the payload copied in) the shared groups' writer passes encoded",
            frames.pass_encodings.clone(),
        );
        registry.register(
            "subscription_write_pass_parked",
            "Frames the shared groups' writer passes could not write at once and left to the socket's task",
            frames.pass_parked.clone(),
        );
        registry.register(
            "subscription_write_pass_parked_waiting",
            "Of the frames parked by writer passes, those whose socket had bytes waiting for its task already",
            frames.pass_parked_waiting.clone(),
        );
        registry.register(
            "subscription_write_pass_behind",
            "Sockets the writer passes found with a frame still parked for the socket's task",
            frames.pass_behind.clone(),
        );
        registry.register(
            "subscription_groups",
            "Shared boardChanged executions running now",
            frames.groups.clone(),
        );
    }

    /// Renders the text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().expect("metrics registry");
        if encode(&mut out, &registry).is_err() {
            tracing::warn!("cannot encode metrics");
        }
        out
    }
}

/// The fan-out's counters, exported on `/metrics`.
#[derive(Clone, Default)]
pub struct FrameMetrics {
    /// Subscription executions: one per frame of a group, one per frame of a
    /// subscription that runs on its own.
    pub executions: Counter,
    /// Frames written to sockets.
    pub frames_sent: Counter,
    /// Groups running now.
    pub groups: Gauge,
    /// Sockets the writer passes handed a frame to (written, parked or skipped).
    pub pass_sockets: Counter,
    /// Time those passes took, summed over their tasks (per socket: divide).
    pub pass_nanos: Counter,
    /// Whole frames (envelope and payload) encoded by the writer passes: one per
    /// distinct subscription id and protocol per frame with `scan` bytes, none with
    /// `shared` bytes (each socket's prefix is made once, the payload never copied).
    pub pass_encodings: Counter,
    /// Frames a writer pass could not write at once (the socket's buffer was full or
    /// bytes were waiting) and parked for the socket's task.
    pub pass_parked: Counter,
    /// Of those, the ones whose socket had bytes waiting for its task already (the
    /// others found the kernel's buffer full).
    pub pass_parked_waiting: Counter,
    /// Sockets a writer pass found with a frame still parked for their task (the task
    /// had not run since): with `ParkedFrames::Pass` the pass tries them itself.
    pub pass_behind: Counter,
}
