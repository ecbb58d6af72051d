//! Prometheus metrics: counters kept by this process, plus projection lag read from the
//! database at scrape time (so every process reports it, leader or not).

use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use sqlx::PgPool;

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

    /// Refreshes the database-derived gauges and renders the text exposition.
    pub async fn render(&self, pool: &PgPool) -> String {
        match crate::projector::state::status(pool).await {
            Ok(statuses) => {
                for s in statuses.iter().filter(|s| s.state == "live") {
                    let l = label(&s.name);
                    self.lag_events.get_or_create(&l).set(s.lag_events);
                    self.lag_seconds.get_or_create(&l).set(s.lag_seconds);
                    self.dead_letters_open.get_or_create(&l).set(s.dead_letters);
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read projection status for metrics"),
        }
        let mut out = String::new();
        let registry = self.registry.lock().expect("metrics registry");
        if encode(&mut out, &registry).is_err() {
            tracing::warn!("cannot encode metrics");
        }
        out
    }
}
