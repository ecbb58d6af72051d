//! Careboard: an event-sourced telehealth scheduling backend with a GraphQL API.
//!
//! # Layout
//!
//! Data flows one way: GraphQL mutation → [`commands`] → [`domain`] `decide` →
//! [`event_store`] append → ([`projector`]) [`projections`] fold → documents + NOTIFY →
//! GraphQL queries. `asOf` queries fold events on demand with the same folds.
//!
//! - [`config`]: settings from the command line and environment.
//! - [`error`]: `AppError`, the two error tiers and their mapping to GraphQL codes.
//! - [`postgres`]: pool, migrations, and the embedded local cluster.
//! - [`domain`]: pure aggregates (Board, Provider, ProviderShift, Appointment) and the
//!   two-stream scheduling decisions; no I/O.
//! - [`event_store`]: append (optimistic / exclusive / multi-stream), read, fold, and the
//!   unit of work every command runs in.
//! - [`commands`]: load → decide → append, one function per mutation.
//! - [`projections`]: the read models' pure folds (`board_view`, single-stream views,
//!   `appointment_durations`) and how their documents are stored.
//! - [`projector`]: the daemon — leader lock, `(tx, seq)` reads below xmin, batches with
//!   CAS checkpoints and NOTIFY, dead letters, side-by-side rebuilds.
//! - [`matcher`]: the process that pairs waiting appointments with READY providers,
//!   run by the projector leader with its own checkpoint.
//! - [`estimates`]: wait-time estimates from past durations, the queue and providers.
//! - [`live`]: the one LISTEN connection per process and its fan-out to subscribers.
//! - [`metrics`]: Prometheus metrics.
//! - [`time_travel`]: `asOf` folds from snapshots, and the Board's day timeline.
//! - [`cli`]: the command line.
//! - [`demo`]: `careboard demo`, a simulated day as history or played live.
//! - [`identity`]: who is asking — bearer token verification (OIDC JWKS or the
//!   development issuer), the principal, the permission matrix, the access log.
//! - [`graphql`]: schema, queries, mutations, output types.
//! - [`http`]: the axum router (GraphQL, GraphiQL, health, metrics).
//! - [`websocket`]: one GraphQL websocket, guarded (queue, budget, pings, close codes).
//! - [`limits`]: what keeps one request from taking the service down: nesting checked
//!   before parsing, a connection cap per request, rate limits, page security headers.
//! - [`health`]: the database prober behind `/readyz` and fast UNAVAILABLE answers.
//! - [`app`]: wiring and serving.

pub mod app;
pub mod cli;
pub mod commands;
pub mod config;
pub mod demo;
pub mod domain;
pub mod error;
pub mod estimates;
pub mod event_store;
pub mod graphql;
pub mod health;
pub mod http;
pub mod identity;
pub mod limits;
pub mod live;
pub mod matcher;
pub mod metrics;
pub mod postgres;
pub mod projections;
pub mod projector;
pub mod time_travel;
pub mod websocket;
