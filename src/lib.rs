//! Careboard: an event-sourced telehealth scheduling backend with a GraphQL API.
//!
//! # Layout
//!
//! Data flows one way: GraphQL mutation → [`commands`] → [`domain`] `decide` →
//! [`event_store`] append. While this process leads, the [`daemon`] runs the
//! [`projector`] (events → [`projections`] folds → documents + NOTIFY) and the
//! [`matcher`] side by side, both reading the log through [`event_store::log`]. GraphQL
//! queries read documents ([`projections::read`]) or fold events on demand
//! ([`time_travel`], from [`snapshots`]) with the same folds; [`live`] fans NOTIFY out
//! to subscriptions. No module imports one that imports it back, round any circle
//! (`tests/api/layout.rs` checks it on the source).
//!
//! - [`config`]: settings from the command line and environment (every subcommand's
//!   options, `careboard demo`'s included).
//! - [`error`]: `AppError`, the two error tiers and their mapping to GraphQL codes;
//!   `ErrorCode`, every `extensions.code` the server answers with (the README table's
//!   source).
//! - [`postgres`]: pool, migrations, and the embedded local cluster.
//! - [`metrics`]: Prometheus metrics.
//! - [`domain`]: pure aggregates (Board, Provider, ProviderShift, Appointment) whose
//!   state and events carry the id newtypes ([`domain::ids`], stored as plain UUID
//!   text), the two-stream scheduling decisions, matching and the wait-time model; no
//!   I/O.
//! - [`event_store`]: append (optimistic / exclusive / multi-stream), the unit of work
//!   every command runs in, stream reads and folds; every `SELECT … FROM events`.
//!   [`event_store::log`]: the `(tx, seq)` cursor and the in-order read below xmin.
//! - [`commands`]: typed command values (no GraphQL in them) and load → authorize →
//!   decide → append, one function per mutation; one module per aggregate (board,
//!   provider, shift, appointment) beside the shared path (options, idempotency
//!   fingerprint, replay, commit) and the one authorization slot.
//! - [`projections`]: the registry, each view's fold, document storage, live reads,
//!   and the shims for documents of earlier builds.
//! - [`snapshots`]: written by the projector, read by time travel.
//! - [`leader`]: the advisory lock, the fence, and the one checkpoint compare-and-set.
//! - [`daemon`]: one leader term runs the projector and the matcher as peers.
//! - [`pacing`]: the readers' adaptive idle poll, retry backoff, and who the append
//!   signal wakes.
//! - [`projector`]: batches with CAS checkpoints and NOTIFY, dead letters, side-by-side
//!   rebuilds, projection status.
//! - [`matcher`]: pairs waiting appointments with READY providers, with its own
//!   checkpoint.
//! - [`faults`]: crash points and matcher faults, live only with the `fault-injection`
//!   feature (tests).
//! - [`estimates`]: wait-time estimates from past durations, the queue and providers.
//! - [`time_travel`]: `asOf` folds from snapshots, and the Board's day timeline.
//! - [`live`]: the one LISTEN connection per process and its fan-out to subscribers.
//! - [`frames`]: `boardChanged` subscribers who would see the same thing share one
//!   execution and one encoded payload per Board version; what the execution learns
//!   about each frame comes up through [`graphql::tap`], and its counters live in
//!   [`metrics`].
//! - [`graphql`]: schema, queries, mutations, subscriptions, output types; the input
//!   types and their `TryFrom` into commands ([`graphql::inputs`]); the documented
//!   custom scalars ([`graphql::scalars`]); the access edge ([`graphql::access`]): every
//!   root field meets the permission matrix, patient fields are masked, and answers that
//!   showed them are recorded in the access log (fail closed).
//! - [`http`]: the axum router (GraphQL, GraphiQL, pages, health, metrics); every way
//!   into GraphQL needs a bearer token, verified once per request
//!   ([`identity::edge`]).
//! - [`state`]: `AppState`, what every handler and websocket shares.
//! - [`persisted`]: automatic persisted queries (hash → document, bounded LRU).
//! - [`app`]: wiring and serving; [`cli`]: the command line.
//! - [`demo`]: `careboard demo`, a simulated day as history or played live.
//! - [`identity`]: who is asking — bearer token verification (OIDC JWKS or the
//!   development issuer), the principal, the permission matrix, the access log.
//! - [`websocket`]: one GraphQL websocket: the graphql-transport-ws and legacy
//!   protocols over the schema's executor, guarded (its token verified in
//!   `connection_init`, closed at the token's expiry; budget, pings, close codes).
//! - [`ws_out`]: a websocket's way out, shared by its task and its frame groups' writer
//!   passes (one non-blocking vectored write per socket: its own header and prefix,
//!   the frame's shared payload).
//! - [`limits`]: what keeps one request from taking the service down: nesting checked
//!   before parsing, a connection cap per request, rate limits, page security headers.
//! - [`health`]: the database prober behind `/readyz` and fast UNAVAILABLE answers.
//!
//! Outside `src/`: `tests/api/` is the one integration-test binary (`helpers` holds
//! `TestApp` and its verbs, the throwaway cluster, the tests' identity provider, the
//! GraphQL documents several modules send (`helpers::documents`) and the Chromium
//! driver); `bench/` is the benchmark harness, a workspace member of its own.

pub mod app;
pub mod cli;
pub mod commands;
pub mod config;
pub mod daemon;
pub mod daemon_config;
pub mod demo;
pub mod domain;
pub mod error;
pub mod estimates;
pub mod event_store;
pub mod faults;
pub mod frames;
pub mod graphql;
pub mod health;
pub mod http;
pub mod identity;
pub mod leader;
pub mod limits;
pub mod live;
pub mod matcher;
pub mod metrics;
pub mod pacing;
pub mod persisted;
pub mod postgres;
pub mod projections;
pub mod projector;
pub mod snapshots;
pub mod state;
pub mod time_travel;
pub mod websocket;
pub mod ws_out;
