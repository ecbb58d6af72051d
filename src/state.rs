//! What every request handler shares: the schema, the pool and store, and the
//! process-wide services. Its own module so that the router and the websocket handler
//! both use it without importing each other.

use std::sync::Arc;

use sqlx::PgPool;

use crate::config::GraphqlLimits;
use crate::event_store::EventStore;
use crate::graphql::CareboardSchema;
use crate::health::DbHealth;
use crate::limits::RateLimiter;
use crate::live::LiveBoards;
use crate::metrics::Metrics;

#[derive(Clone)]
pub struct AppState {
    pub schema: CareboardSchema,
    pub pool: PgPool,
    pub limits: Arc<GraphqlLimits>,
    pub store: EventStore,
    pub metrics: Arc<Metrics>,
    pub live: LiveBoards,
    /// The one wait-time estimator (its caches) shared by queries and the matcher.
    pub estimator: crate::estimates::Estimator,
    /// Whether the database answers, probed off the pool: fast 503s and UNAVAILABLE.
    pub health: DbHealth,
    pub rate_limiter: RateLimiter,
    /// Bearer token verification; `None` serves anonymous requests (`--auth off`).
    pub auth: Option<crate::identity::Verifier>,
}
