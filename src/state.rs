//! The application's shared state: what every HTTP handler and websocket needs. Its own
//! module so that the router and the websocket loop both depend on it, not on each other.

use std::sync::Arc;

use sqlx::PgPool;

use crate::config::GraphqlLimits;
use crate::event_store::EventStore;
use crate::graphql::CareboardSchema;
use crate::health::DbHealth;
use crate::limits::RateLimiter;
use crate::live::LiveBoards;
use crate::metrics::Metrics;
use crate::persisted::PersistedQueries;

#[derive(Clone)]
pub struct AppState {
    pub schema: CareboardSchema,
    /// Serves introspection-only requests, with limits of their own (so GraphiQL and
    /// code generators work whatever the user-query limits are).
    pub introspection_schema: CareboardSchema,
    /// Automatic persisted queries: hash → document.
    pub persisted: Arc<PersistedQueries>,
    pub pool: PgPool,
    pub limits: Arc<GraphqlLimits>,
    pub store: EventStore,
    pub metrics: Arc<Metrics>,
    pub live: LiveBoards,
    /// `boardChanged` subscribers' shared executions (crate::frames).
    pub frames: crate::frames::FrameHub,
    /// The one wait-time estimator (its caches) shared by queries and the matcher.
    pub estimator: crate::estimates::Estimator,
    /// Whether the database answers, probed off the pool: fast 503s and UNAVAILABLE.
    pub health: DbHealth,
    pub rate_limiter: RateLimiter,
    /// The subscriptions each caller holds over all its websockets.
    pub subscription_slots: Arc<crate::limits::SubscriptionSlots>,
    /// Bearer token verification; `None` serves anonymous requests (`--auth off`,
    /// loopback only).
    pub auth: Option<crate::identity::Verifier>,
    /// The development issuer, when it is the one `auth` trusts (no identity provider
    /// configured, loopback only): GraphiQL and the Board pages served to this machine
    /// open with a short-lived coordinator token it signs.
    pub dev_issuer: Option<Arc<crate::identity::dev_issuer::DevIssuer>>,
    /// How long that page token lives (`--page-token-ttl`).
    pub page_token_ttl: std::time::Duration,
    /// `/metrics` is served on an address of its own (`--metrics-bind`), not here.
    pub metrics_elsewhere: bool,
}
