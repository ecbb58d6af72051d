//! Wiring: open the database (embedded or external), build the schema, serve.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use futures::future::BoxFuture;
use sqlx::PgPool;
use tokio::net::TcpListener;

use crate::config::{DatabaseArgs, GraphqlLimits};
use crate::daemon::{Daemon, DaemonConfig, DaemonHandle};
use crate::estimates::Estimator;
use crate::event_store::EventStore;
use crate::graphql::{build_schema, SchemaData};
use crate::http::{router, AppState};
use crate::live::LiveBoards;
use crate::metrics::Metrics;
use crate::postgres::{self, ClusterOptions, Durability, EmbeddedCluster};

/// An open database, and the embedded cluster behind it when there is one (dropping
/// it stops the cluster).
pub struct Database {
    /// The server's connections, as the application role where one is configured.
    pub pool: PgPool,
    pub cluster: Option<EmbeddedCluster>,
    /// Where migrations run: the schema owner's URL (None: as the pool's role).
    owner_url: Option<String>,
}

impl Database {
    /// Applies the migrations as the schema's owner.
    pub async fn migrate(&self) -> Result<()> {
        match &self.owner_url {
            Some(url) => {
                let owner = postgres::connect(url, 2).await?;
                let result = postgres::migrate(&owner).await;
                owner.close().await;
                result
            }
            None => postgres::migrate(&self.pool).await,
        }
    }
}

/// Connects to `DATABASE_URL` (migrating as `DATABASE_OWNER_URL` when given), or
/// starts the embedded cluster in `--data-dir`, where migrations run as the cluster's
/// owner and the server as `careboard_server`, a member of the application role.
pub async fn open_database(args: &DatabaseArgs) -> Result<Database> {
    if let Some(url) = &args.database_url {
        let pool = postgres::connect(url, args.pool_size).await?;
        return Ok(Database {
            pool,
            cluster: None,
            owner_url: args.database_owner_url.clone(),
        });
    }
    let options = ClusterOptions {
        dir: args.data_dir.clone(),
        durability: Durability::Durable,
        max_connections: 200,
    };
    let cluster = tokio::task::spawn_blocking(move || EmbeddedCluster::start(&options))
        .await
        .context("starting the embedded PostgreSQL")??;
    cluster.ensure_database("careboard").await?;
    let server_url = cluster.ensure_server_login("careboard").await?;
    let pool = postgres::connect(&server_url, args.pool_size).await?;
    Ok(Database {
        pool,
        owner_url: Some(cluster.url("careboard")),
        cluster: Some(cluster),
    })
}

/// How many automatic persisted queries each process remembers (least recently used
/// first out; a forgotten one costs the client one retry with the document).
const PERSISTED_QUERIES: usize = 2048;
/// The bytes those documents may hold together (a few kilobytes each, usually).
const PERSISTED_QUERY_BYTES: usize = 8 * 1024 * 1024;
/// One caller holds at most this fraction of both bounds (128 documents, 512 KiB), so
/// one caller's registrations push out at most that much of everyone else's.
const PERSISTED_QUERY_CALLER_SHARE: usize = 16;

/// Like [`open_database`], for a process that serves: it must own the embedded cluster
/// (a cluster borrowed from another process stops when that process stops, and every
/// request would fail from then on). CLI commands may borrow it.
pub async fn open_database_to_serve(args: &DatabaseArgs) -> Result<Database> {
    let db = open_database(args).await?;
    if let Some(pid) = db.cluster.as_ref().and_then(|c| c.held_by()) {
        db.pool.close().await;
        anyhow::bail!(
            "the data dir {} is in use by Careboard process {pid}, which runs its PostgreSQL; \
             a second server there would fail when that one stops. Stop process {pid}, give \
             this one its own --data-dir (CAREBOARD_DATA_DIR), or run both against one server \
             with DATABASE_URL. (Commands such as `careboard migrate` or `careboard \
             projections status` may share the data dir.)",
            args.data_dir.display()
        );
    }
    Ok(db)
}

/// The application's shared state, built from a migrated pool.
pub fn state(pool: PgPool, limits: GraphqlLimits, lock_timeout: Duration) -> AppState {
    state_with(pool, limits, lock_timeout, Duration::from_secs(5))
}

/// Like [`state`], with how long `minPosition` reads wait for the projector.
pub fn state_with(
    pool: PgPool,
    limits: GraphqlLimits,
    lock_timeout: Duration,
    read_wait: Duration,
) -> AppState {
    let store = EventStore::new(pool.clone(), lock_timeout).with_command_path(limits.command_path);
    let metrics = Arc::new(Metrics::new());
    let boards = crate::projections::read::BoardCache::with_contents(
        limits.boards_in_memory,
        limits.board_contents,
    );
    let live = LiveBoards::start_with(
        pool.clone(),
        (limits.board_contents == crate::projections::read::BoardContentsBuild::Incremental
            && boards.keeps_boards())
        .then(|| boards.clone()),
    );
    let frames = crate::frames::FrameHub::with_settings(
        limits.ws_write_shard,
        limits.ws_frame_bytes,
        limits.ws_parked_frames,
        limits.ws_pass_budget,
    )
    .with_pass_thread(limits.ws_pass_thread);
    metrics.register_frames(frames.metrics());
    let estimator = Estimator::new();
    // One writer task per process, committing access records in groups.
    let access_log = crate::identity::AccessLog::start(
        pool.clone(),
        crate::identity::access_log::AccessLogOptions::default(),
    );
    let health = crate::health::DbHealth::start(&pool);
    let rate_limiter =
        crate::limits::RateLimiter::new(limits.rate_limit_per_second, limits.rate_limit_burst);
    let data = SchemaData {
        store: store.clone(),
        live: live.clone(),
        estimator: estimator.clone(),
        boards,
        access_log,
        read_wait,
    };
    let subscription_slots =
        crate::limits::SubscriptionSlots::new(limits.max_subscriptions_per_caller);
    AppState {
        schema: build_schema(data.clone(), &limits),
        introspection_schema: crate::graphql::build_introspection_schema(data, &limits),
        persisted: Arc::new(crate::persisted::PersistedQueries::new(
            PERSISTED_QUERIES,
            PERSISTED_QUERY_BYTES,
            PERSISTED_QUERY_CALLER_SHARE,
        )),
        estimator,
        pool,
        limits: Arc::new(limits),
        store,
        metrics,
        live,
        frames,
        health,
        rate_limiter,
        subscription_slots,
        auth: None,
        dev_issuer: None,
        // `--page-token-ttl`'s default.
        page_token_ttl: Duration::from_secs(30 * 60),
        metrics_elsewhere: false,
    }
}

/// Starts this process's daemon (leader or standby: the projector and the matcher),
/// woken by local appends.
pub fn spawn_daemon(state: &AppState, config: DaemonConfig) -> DaemonHandle {
    Daemon::new(
        state.pool.clone(),
        state.store.appended_signal(),
        state.estimator.clone(),
        config,
        state.metrics.clone(),
    )
    .spawn()
}

/// Serves until `shutdown` resolves, then drains in-flight requests.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let header_read_timeout = Duration::from_millis(state.limits.header_read_timeout_ms);
    let cap = connection_cap(state.limits.max_connections);
    serve_http(listener, router(state), header_read_timeout, cap, shutdown).await;
    Ok(())
}

/// Serves `/metrics` (and `/healthz`) on an address of its own until `shutdown`.
pub async fn serve_metrics(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let header_read_timeout = Duration::from_millis(state.limits.header_read_timeout_ms);
    let cap = connection_cap(state.limits.max_connections);
    let app = crate::http::metrics_router(state);
    serve_http(listener, app, header_read_timeout, cap, shutdown).await;
    Ok(())
}

/// The accept loop: one task per connection, HTTP/1.1 with upgrades (websockets), the
/// client's address as `ConnectInfo` (the key of its rate limit). A connection must
/// send a request's headers within `header_read_timeout` of opening or of its last
/// answer, else it is closed: without that bound (`axum::serve` sets none) every idle
/// or half-sent connection was held for ever, and enough of them, from a client with no
/// token, took the process's file descriptors from everyone else. After `shutdown`,
/// no new connection is taken and in-flight requests are drained. At most `cap`
/// connections are served at once: one more is answered 503 and closed at once, so
/// that enough of them cannot take the file descriptors the open ones and the
/// database pool need.
async fn serve_http(
    listener: TcpListener,
    app: axum::Router,
    header_read_timeout: Duration,
    cap: usize,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};

    // Dropped at shutdown: every connection then finishes what it is answering.
    let (stop, stopped) = tokio::sync::watch::channel(());
    // Each connection holds a receiver; all gone, every connection has closed.
    let (closed, open) = tokio::sync::watch::channel(());
    let slots = Arc::new(tokio::sync::Semaphore::new(cap));
    let mut refused = Refusals::default();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refused.refuse(stream, cap);
            continue;
        };
        let app = app.clone();
        let mut stopped = stopped.clone();
        let open = open.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(
                move |mut request: axum::http::Request<hyper::body::Incoming>| {
                    request
                        .extensions_mut()
                        .insert(axum::extract::ConnectInfo(addr));
                    let mut app = app.clone();
                    tower_service::Service::call(&mut app, request)
                },
            );
            // HTTP/1.1 only (as before): a protocol-detecting builder would wait for a
            // client's first bytes before any timeout of HTTP/1.1 starts.
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_read_timeout)
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            let mut connection = std::pin::pin!(connection);
            let mut draining = false;
            loop {
                tokio::select! {
                    result = connection.as_mut() => {
                        if let Err(e) = result {
                            tracing::trace!(error = %e, "connection ended");
                        }
                        break;
                    }
                    _ = stopped.changed(), if !draining => {
                        draining = true;
                        connection.as_mut().graceful_shutdown();
                    }
                }
            }
            drop(open);
            drop(slot);
        });
    }
    drop(listener);
    drop(stop);
    drop(open);
    closed.closed().await;
}

/// The connections served at once: `configured`, or with 0 the process's open-file
/// limit less 256 descriptors kept for the database pool, logs and the like (at least
/// 64).
pub fn connection_cap(configured: usize) -> usize {
    if configured > 0 {
        return configured;
    }
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given and nothing else.
    let known = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    let files = if known && limit.rlim_cur != libc::RLIM_INFINITY {
        usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX)
    } else {
        1 << 20
    };
    files.saturating_sub(256).max(64)
}

/// Connections over the cap: each answered 503 without reading it (a write that fits
/// the socket's empty buffer, never waited for) and closed; counted into one warning
/// every 10 s at most, so that a flood does not flood the log too.
#[derive(Default)]
struct Refusals {
    since_warned: u64,
    warned_at: Option<std::time::Instant>,
}

impl Refusals {
    const ANSWER: &'static [u8] = b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\n\
        content-type: text/plain\r\ncontent-length: 42\r\nconnection: close\r\n\r\n\
        the server is at its limit of connections\n";

    fn refuse(&mut self, stream: tokio::net::TcpStream, cap: usize) {
        let _ = stream.try_write(Self::ANSWER);
        drop(stream);
        self.since_warned += 1;
        let due = self
            .warned_at
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(10));
        if due {
            tracing::warn!(
                refused = self.since_warned,
                cap,
                "connections refused: the server is at its limit of connections (--max-connections)"
            );
            self.since_warned = 0;
            self.warned_at = Some(std::time::Instant::now());
        }
    }
}

/// An accept that failed: a connection reset before it was taken is nothing; anything
/// else (out of file descriptors, say) is logged and the loop waits a moment instead of
/// spinning.
async fn accept_failed(error: std::io::Error) {
    use std::io::ErrorKind;
    if matches!(
        error.kind(),
        ErrorKind::ConnectionRefused | ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!(%error, "accepting a connection failed");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// A server running in the background (tests and tools).
pub struct RunningServer {
    pub addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<()>>,
}

impl RunningServer {
    pub async fn start(bind: &str, state: AppState) -> Result<Self> {
        Self::start_with(bind, |listener, stop| serve(listener, state, stop)).await
    }

    /// The metrics address of `state` (`--metrics-bind`), in the background.
    pub async fn start_metrics(bind: &str, state: AppState) -> Result<Self> {
        Self::start_with(bind, |listener, stop| serve_metrics(listener, state, stop)).await
    }

    /// Binds `bind` and runs `serving` on it in the background until stopped.
    async fn start_with<F, S>(bind: &str, serving: F) -> Result<Self>
    where
        F: FnOnce(TcpListener, BoxFuture<'static, ()>) -> S,
        S: Future<Output = Result<()>> + Send + 'static,
    {
        let listener = TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let stop = Box::pin(async move {
            let _ = rx.await;
        });
        let task = tokio::spawn(serving(listener, stop));
        Ok(Self {
            addr,
            shutdown: Some(tx),
            task,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn stop(mut self) -> Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        (&mut self.task).await?
    }
}

/// Resolves on Ctrl+C or SIGTERM, and says so in the log.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    let stop = shutdown_signal_quiet();
    async move {
        stop.await;
        tracing::info!("shutting down");
    }
}

/// Resolves on Ctrl+C or SIGTERM. The signals are listened for from this call on, not
/// from the first poll: a listener's signal made before it starts serving still stops
/// it (each listener's own call must come before the process says it listens; a
/// handler set a moment later never hears a signal that came first).
pub fn shutdown_signal_quiet() -> impl std::future::Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{signal, Signal, SignalKind};
    async fn received(signal: Option<Signal>) {
        match signal {
            Some(mut s) => {
                s.recv().await;
            }
            None => std::future::pending::<()>().await,
        }
    }
    let interrupt = signal(SignalKind::interrupt()).ok();
    let terminate = signal(SignalKind::terminate()).ok();
    async move {
        tokio::select! {
            _ = received(interrupt) => {},
            _ = received(terminate) => {},
        }
    }
}
