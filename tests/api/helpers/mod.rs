//! Test harness: a throwaway PostgreSQL (or `DATABASE_URL`), one fresh database per
//! test, and the real server on port 0 with a real HTTP client. Authentication is on:
//! the server trusts the test process's identity provider ([`idp`]), `app.http`,
//! `app.gql` and [`WsClient`] carry an admin token unless told otherwise, and
//! `app.token(Who::…)` mints one for any role and scope.

pub mod day;
pub mod documents;
pub mod files;
pub mod idp;
pub mod proxy;
pub mod store;

pub use idp::{idp, Who};

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::OnceLock;
use std::time::Duration;

pub mod browser;

use careboard::app::{self, RunningServer};
use careboard::config::GraphqlLimits;
use careboard::event_store::EventStore;
use careboard::postgres::{ClusterOptions, Durability, EmbeddedCluster, MIGRATOR};
use serde_json::{json, Value};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};

static ADMIN_URL: OnceLock<String> = OnceLock::new();

/// A loopback port nothing listens on right now, for a child process to bind.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind a free port")
        .local_addr()
        .expect("its address")
        .port()
}

/// Waits until `url` answers over HTTP (any status), polling every 100 ms; past
/// `limit` the test fails with `why()`.
pub async fn wait_until_answering(url: &str, limit: Duration, why: impl Fn() -> String) {
    let http = reqwest::Client::new();
    let started = std::time::Instant::now();
    while http.get(url).send().await.is_err() {
        assert!(started.elapsed() < limit, "{}", why());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Where test databases are created: `DATABASE_URL`, or a cluster this test process
/// starts from the system's binaries (stopped by the kernel when the process exits).
fn admin_options() -> PgConnectOptions {
    let url = ADMIN_URL.get_or_init(|| {
        if let Ok(url) = std::env::var("DATABASE_URL") {
            return url;
        }
        let dir = test_cluster_dir();
        let cluster = EmbeddedCluster::start(&ClusterOptions {
            dir,
            durability: Durability::Throwaway,
            max_connections: 400,
        })
        .expect("start a throwaway PostgreSQL for the tests");
        let url = cluster.url("postgres");
        // Lives for the whole test process.
        Box::leak(Box::new(cluster));
        url
    });
    PgConnectOptions::from_str(url)
        .expect("valid admin URL")
        .disable_statement_logging()
}

/// A per-process directory under the system temp dir; directories left by test
/// processes that no longer run are removed first.
fn test_cluster_dir() -> PathBuf {
    let tmp = std::env::temp_dir();
    if let Ok(entries) = std::fs::read_dir(&tmp) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if let Some(pid) = name
                .strip_prefix("careboard-test-")
                .and_then(|p| p.parse::<i32>().ok())
            {
                let alive = unsafe { libc::kill(pid, 0) } == 0;
                if !alive {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
    }
    tmp.join(format!("careboard-test-{}", std::process::id()))
}

/// A fresh, migrated database for one test.
pub async fn fresh_database() -> PgPool {
    fresh_database_with_url().await.0
}

/// A fresh, migrated database and a URL other processes can reach it with.
pub async fn fresh_database_with_url() -> (PgPool, String) {
    let admin = admin_options();
    let name = format!("t_{}", uuid::Uuid::new_v4().simple());
    let admin_url = ADMIN_URL.get().expect("admin URL set");
    let (base, _) = admin_url
        .split('?')
        .next()
        .unwrap()
        .rsplit_once('/')
        .expect("a URL with a database");
    let url = format!("{base}/{name}");
    let mut conn = connect_retrying(&admin).await;
    sqlx::query(&format!("create database {name}"))
        .execute(&mut conn)
        .await
        .expect("create test database");
    conn.close().await.ok();
    let pool = PgPoolOptions::new()
        .max_connections(40)
        .connect_with(admin.database(&name))
        .await
        .expect("connect to test database");
    MIGRATOR.run(&pool).await.expect("migrate test database");
    (pool, url)
}

async fn connect_retrying(options: &PgConnectOptions) -> sqlx::PgConnection {
    let mut attempts = 0;
    loop {
        match sqlx::PgConnection::connect_with(options).await {
            Ok(c) => return c,
            Err(e) if attempts < 100 => {
                attempts += 1;
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("cannot reach the test PostgreSQL: {e}"),
        }
    }
}

pub const SERVER_LOGIN_PASSWORD: &str = "careboard-test-server";

/// A pool on the same database as `owner`, as the application login (created once per
/// test process).
pub async fn server_pool(owner: &PgPool) -> PgPool {
    static LOGIN: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    LOGIN
        .get_or_init(|| async {
            careboard::postgres::ensure_server_login(
                owner,
                careboard::postgres::SERVER_LOGIN,
                SERVER_LOGIN_PASSWORD,
            )
            .await
            .expect("create the application login");
        })
        .await;
    let options = (*owner.connect_options())
        .clone()
        .username(careboard::postgres::SERVER_LOGIN)
        .password(SERVER_LOGIN_PASSWORD);
    PgPoolOptions::new()
        .max_connections(40)
        .connect_with(options)
        .await
        .expect("connect as the application login")
}

/// Projector settings for tests: quick leader checks and retries, and no automatic
/// matching (tests schedule by hand unless they test the matcher).
pub fn fast_projector() -> careboard::daemon::DaemonConfig {
    careboard::daemon::DaemonConfig {
        leader_check_interval: Duration::from_millis(200),
        max_poll_interval: Duration::from_millis(50),
        retry_backoff: Duration::from_millis(10),
        matching: false,
        ..Default::default()
    }
}

/// `fast_projector` with the matcher on.
pub fn matching_projector() -> careboard::daemon::DaemonConfig {
    careboard::daemon::DaemonConfig {
        matching: true,
        ..fast_projector()
    }
}

pub fn store(pool: &PgPool) -> EventStore {
    EventStore::new(pool.clone(), Duration::from_secs(10))
}

/// The real server on port 0 against a fresh database, and an HTTP client for it.
pub struct TestApp {
    pub server: RunningServer,
    pub pool: PgPool,
    /// Sends the admin token with every request (`reqwest::Client::new()` sends none).
    pub http: reqwest::Client,
    /// The admin token `http`, `gql` and `WsClient::connect` send.
    pub admin_token: String,
    /// The development issuer the server trusts instead of the test provider, if any.
    dev_issuer: Option<std::sync::Arc<careboard::identity::dev_issuer::DevIssuer>>,
    /// Held for the app's lifetime: dropping it would drop the daemon's shutdown
    /// sender.
    #[allow(dead_code)]
    projector: Option<careboard::daemon::DaemonHandle>,
    live: careboard::live::LiveBoards,
    server_pool: PgPool,
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(GraphqlLimits::default()).await
    }

    pub async fn spawn_with(limits: GraphqlLimits) -> Self {
        Self::spawn_full(limits, Some(fast_projector()), Duration::from_secs(5)).await
    }

    /// With each caller limited to `per_second` requests (sustained) and `burst` above it.
    pub async fn spawn_rate_limited(per_second: u32, burst: u32) -> Self {
        Self::spawn_with(GraphqlLimits {
            rate_limit_per_second: per_second,
            rate_limit_burst: burst,
            ..Default::default()
        })
        .await
    }

    /// With the matcher scheduling automatically.
    pub async fn spawn_matching() -> Self {
        Self::spawn_full(
            GraphqlLimits::default(),
            Some(matching_projector()),
            Duration::from_secs(5),
        )
        .await
    }

    /// With a daemon configured by the test, and faults injected into it.
    pub async fn spawn_with_faults(
        config: careboard::daemon::DaemonConfig,
        faults: careboard::faults::Faults,
    ) -> Self {
        let pool = fresh_database().await;
        Self::spawn_faulty(
            pool,
            GraphqlLimits::default(),
            Some(config),
            Duration::from_secs(5),
            faults,
            None,
        )
        .await
    }

    /// Trusting the development issuer whose key is in `data_dir` (as `careboard serve`
    /// does with no identity provider configured): `careboard token --data-dir
    /// <data_dir>` mints tokens it accepts, and `app.token` mints them the same way.
    pub async fn spawn_development(data_dir: &std::path::Path, matching: bool) -> Self {
        let projector = if matching {
            matching_projector()
        } else {
            fast_projector()
        };
        Self::spawn_faulty(
            fresh_database().await,
            GraphqlLimits::default(),
            Some(projector),
            Duration::from_secs(5),
            Default::default(),
            Some((data_dir, Duration::from_secs(30 * 60))),
        )
        .await
    }

    /// Like [`TestApp::spawn_development`] (no matcher), with the pages' token living
    /// `page_token_ttl` (`--page-token-ttl`).
    pub async fn spawn_development_pages(
        data_dir: &std::path::Path,
        page_token_ttl: Duration,
    ) -> Self {
        Self::spawn_faulty(
            fresh_database().await,
            GraphqlLimits::default(),
            Some(fast_projector()),
            Duration::from_secs(5),
            Default::default(),
            Some((data_dir, page_token_ttl)),
        )
        .await
    }

    /// With these limits and no projector (projected reads fall behind).
    pub async fn spawn_without_projector_with(limits: GraphqlLimits, read_wait: Duration) -> Self {
        Self::spawn_full(limits, None, read_wait).await
    }

    /// Serving only: nothing projects, so projected reads fall behind.
    pub async fn spawn_without_projector(read_wait: Duration) -> Self {
        Self::spawn_full(GraphqlLimits::default(), None, read_wait).await
    }

    /// Another Careboard node on the same database as `other`: its own listener,
    /// projector (standby or leader) and HTTP server.
    pub async fn spawn_sharing(other: &TestApp) -> Self {
        Self::spawn_on(
            other.pool.clone(),
            GraphqlLimits::default(),
            Some(fast_projector()),
            Duration::from_secs(5),
        )
        .await
    }

    /// Like [`TestApp::spawn_sharing`], with the matcher on (it matches once this node
    /// leads).
    pub async fn spawn_sharing_matching(other: &TestApp) -> Self {
        Self::spawn_on(
            other.pool.clone(),
            GraphqlLimits::default(),
            Some(matching_projector()),
            Duration::from_secs(5),
        )
        .await
    }

    /// Stops this node's projector and matcher (its leader lock goes with them); the
    /// server keeps serving.
    pub async fn stop_projector(&mut self) {
        if let Some(projector) = self.projector.take() {
            projector.stop().await.expect("the daemon stops cleanly");
        }
    }

    async fn spawn_full(
        limits: GraphqlLimits,
        projector: Option<careboard::daemon::DaemonConfig>,
        read_wait: Duration,
    ) -> Self {
        Self::spawn_on(fresh_database().await, limits, projector, read_wait).await
    }

    async fn spawn_on(
        pool: PgPool,
        limits: GraphqlLimits,
        projector: Option<careboard::daemon::DaemonConfig>,
        read_wait: Duration,
    ) -> Self {
        Self::spawn_faulty(pool, limits, projector, read_wait, Default::default(), None).await
    }

    async fn spawn_faulty(
        pool: PgPool,
        limits: GraphqlLimits,
        projector: Option<careboard::daemon::DaemonConfig>,
        read_wait: Duration,
        faults: careboard::faults::Faults,
        development: Option<(&std::path::Path, Duration)>,
    ) -> Self {
        // The server runs as the application role, as in production; the test keeps the
        // owner's pool for looking underneath.
        let server_pool = server_pool(&pool).await;
        let mut state = app::state_with(
            server_pool.clone(),
            limits,
            Duration::from_secs(5),
            read_wait,
        );
        let dev_issuer = development.map(|(dir, _)| {
            std::sync::Arc::new(
                careboard::identity::dev_issuer::DevIssuer::load_or_create(dir)
                    .expect("the development issuer's key"),
            )
        });
        let verifier_config = match &dev_issuer {
            // The same one-second leeway as the test provider's.
            Some(issuer) => careboard::identity::VerifierConfig {
                leeway: Duration::from_secs(1),
                ..issuer.verifier_config()
            },
            None => idp().verifier_config(),
        };
        if let Some((_, ttl)) = development {
            state.page_token_ttl = ttl;
        }
        state.auth = Some(careboard::identity::Verifier::new(verifier_config));
        state.dev_issuer = dev_issuer.clone();
        let projector = projector.map(|config| {
            careboard::daemon::Daemon::new(
                state.pool.clone(),
                state.store.appended_signal(),
                state.estimator.clone(),
                config,
                state.metrics.clone(),
            )
            .with_faults(faults)
            .spawn()
        });
        let live = state.live.clone();
        let server = RunningServer::start("127.0.0.1:0", state)
            .await
            .expect("start server");
        let admin = Who::admin().ttl(Duration::from_secs(4 * 3600));
        let admin_token = match &dev_issuer {
            Some(issuer) => issuer
                .issue(&admin.token_args())
                .expect("a development token"),
            None => idp().token(&admin),
        };
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {admin_token}").parse().unwrap(),
        );
        Self {
            server,
            pool,
            server_pool,
            http: reqwest::Client::builder()
                .default_headers(headers)
                .build()
                .unwrap(),
            admin_token,
            dev_issuer,
            projector,
            live,
        }
    }

    /// The server's own connections (the application role).
    pub fn server_pool(&self) -> &PgPool {
        &self.server_pool
    }

    /// A counter or gauge of `/metrics` (the admin's token opens it).
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self
            .http
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} not in /metrics:\n{text}"))
    }

    pub fn url(&self, path: &str) -> String {
        self.server.url(path)
    }

    pub fn live(&self) -> &careboard::live::LiveBoards {
        &self.live
    }

    /// A token from the test identity provider, e.g.
    /// `app.token(Who::coordinator().regions(["TX"]))`.
    pub fn token(&self, who: Who) -> String {
        match &self.dev_issuer {
            Some(issuer) => issuer
                .issue(&who.token_args())
                .expect("a development token"),
            None => idp().token(&who),
        }
    }

    /// Posts a GraphQL request as the admin and returns the whole JSON response.
    pub async fn gql(&self, query: &str, variables: Value) -> Value {
        self.gql_as(&self.admin_token, query, variables).await
    }

    /// Posts a GraphQL request with `token` and returns the whole JSON response.
    pub async fn gql_as(&self, token: &str, query: &str, variables: Value) -> Value {
        let response = reqwest::Client::new()
            .post(self.url("/graphql"))
            .bearer_auth(token)
            .json(&json!({ "query": query, "variables": variables }))
            .send()
            .await
            .expect("POST /graphql");
        response.json().await.expect("JSON response")
    }

    /// Like [`TestApp::gql_as`], for a request that must succeed; returns `data`.
    pub async fn data_as(&self, token: &str, query: &str, variables: Value) -> Value {
        let response = self.gql_as(token, query, variables).await;
        assert!(
            response.get("errors").is_none(),
            "unexpected errors: {response:#}"
        );
        response["data"].clone()
    }

    /// Posts a GraphQL request that must succeed; returns `data`.
    pub async fn data(&self, query: &str, variables: Value) -> Value {
        let response = self.gql(query, variables).await;
        assert!(
            response.get("errors").is_none(),
            "unexpected errors: {response:#}"
        );
        response["data"].clone()
    }

    /// Opens the usual test Board named `name` (see [`documents::open_board_input`]);
    /// its id.
    pub async fn open_board(&self, name: &str) -> String {
        self.open_board_at(name).await.0
    }

    /// Opens the usual test Board named `name`; its id and the event's position.
    pub async fn open_board_at(&self, name: &str) -> (String, i64) {
        self.open_board_with(documents::open_board_input(name))
            .await
    }

    /// Opens a Board from `input` (e.g. [`documents::open_board_input_for`]); its id and
    /// the event's position.
    pub async fn open_board_with(&self, input: Value) -> (String, i64) {
        let d = self.data(documents::OPEN_BOARD, input).await;
        (
            d["openBoard"]["board"]["id"]
                .as_str()
                .expect("board id")
                .to_string(),
            d["openBoard"]["position"].as_i64().expect("position"),
        )
    }

    /// Requests an appointment (`input` from [`documents::request_input`]); its id and
    /// the event's position.
    pub async fn request_appointment(&self, input: Value) -> (String, i64) {
        let d = self.data(documents::REQUEST_APPOINTMENT, input).await;
        (
            d["requestAppointment"]["appointment"]["id"]
                .as_str()
                .expect("appointment id")
                .to_string(),
            d["requestAppointment"]["position"]
                .as_i64()
                .expect("position"),
        )
    }

    /// Requests the usual appointment on `board` for each of `patients`, one after the
    /// other; the last event's position (0 when there were none).
    pub async fn request_all(
        &self,
        board: &str,
        patients: impl IntoIterator<Item = String>,
    ) -> i64 {
        let mut last = 0;
        for patient in patients {
            last = self
                .request_appointment(documents::request_input(board, &patient))
                .await
                .1;
        }
        last
    }

    /// The Board's projected version once the projector has passed `position` (a read
    /// with `minPosition`).
    pub async fn projected_version(&self, board: &str, position: i64) -> i64 {
        let d = self
            .data(
                "query($id: ID!, $p: Int) { board(id: $id, minPosition: $p) { version } }",
                json!({"id": board, "p": position}),
            )
            .await;
        d["board"]["version"].as_i64().expect("version")
    }

    /// Terminates this database's LISTEN connections (the fan-out's listener); how many.
    pub async fn kill_listeners(&self) -> i64 {
        sqlx::query_scalar(
            "select count(pg_terminate_backend(pid)) from pg_stat_activity \
              where datname = current_database() and query ilike 'listen%'",
        )
        .fetch_one(&self.pool)
        .await
        .unwrap()
    }

    pub async fn event_count(&self) -> i64 {
        sqlx::query_scalar("select count(*) from events")
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }
}

/// The `extensions.code` of the first error, asserting there is one.
/// Sends `request` and reads the answer's body as text, whatever its status.
/// Where `.ci/run` installs the npm packages the reference-client tests run under node
/// (`target/npm/node_modules`), if every one of `packages` is there. Without them the
/// test is skipped with a note, except under CI, which must have installed them.
pub fn npm_modules(packages: &[&str], test: &str) -> Option<std::path::PathBuf> {
    let modules = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/npm/node_modules");
    if packages.iter().all(|p| modules.join(p).exists()) {
        return Some(modules);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must install {packages:?} (.ci/run does)"
    );
    eprintln!("skipping {test}: run .ci/run once to install {packages:?}");
    None
}

pub async fn body_text(request: reqwest::RequestBuilder) -> String {
    request.send().await.unwrap().text().await.unwrap()
}

/// Sends `request` and reads the answer's body as JSON, whatever its status.
pub async fn body_json(request: reqwest::RequestBuilder) -> Value {
    request.send().await.unwrap().json().await.unwrap()
}

pub fn error_code(response: &Value) -> String {
    let code = &response["errors"][0]["extensions"]["code"];
    assert!(
        code.is_string(),
        "expected an error with a code, got {response:#}"
    );
    code.as_str().unwrap().to_string()
}

pub fn error_message(response: &Value) -> String {
    response["errors"][0]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// What a websocket handshake gives: the socket and the server's upgrade response.
pub type Upgraded = (
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    tokio_tungstenite::tungstenite::handshake::client::Response,
);

/// Opens a `graphql-transport-ws` socket to `url` (`http://…/graphql/ws`), with
/// `token` as a bearer `Authorization` header on the upgrade request when given.
pub async fn ws_upgrade(
    url: &str,
    token: Option<&str>,
) -> Result<Upgraded, tokio_tungstenite::tungstenite::Error> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = url
        .replace("http://", "ws://")
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        "graphql-transport-ws".parse().unwrap(),
    );
    if let Some(t) = token {
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    tokio_tungstenite::connect_async(request).await
}

/// A GraphQL websocket client, speaking `graphql-transport-ws` or the legacy
/// `subscriptions-transport-ws`.
pub struct WsClient {
    socket: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    pub legacy: bool,
    /// What `init` sends in `connection_init`'s payload as `Authorization: Bearer`.
    pub token: Option<String>,
}

impl WsClient {
    /// A socket whose `init` sends the app's admin token.
    pub async fn connect(app: &TestApp, protocol: &str) -> Self {
        Self::connect_as(app, protocol, Some(&app.admin_token)).await
    }

    /// A socket whose `init` sends `token` (`None`: no token at all).
    pub async fn connect_as(app: &TestApp, protocol: &str, token: Option<&str>) -> Self {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let url = app.url("/graphql/ws").replace("http://", "ws://");
        let mut request = url.into_client_request().unwrap();
        request
            .headers_mut()
            .insert("sec-websocket-protocol", protocol.parse().unwrap());
        let (socket, _) = tokio_tungstenite::connect_async(request)
            .await
            .expect("websocket connects");
        Self {
            socket,
            legacy: protocol == "graphql-ws",
            token: token.map(str::to_string),
        }
    }

    /// A socket past the handshake: connected with the admin's token, `connection_init`
    /// sent and `connection_ack` received.
    pub async fn open(app: &TestApp, protocol: &str) -> Self {
        Self::open_as(app, protocol, Some(&app.admin_token)).await
    }

    /// Like [`WsClient::open`], sending `token` (`None`: no token at all).
    pub async fn open_as(app: &TestApp, protocol: &str, token: Option<&str>) -> Self {
        let mut client = Self::connect_as(app, protocol, token).await;
        client.init().await;
        client
    }

    /// A client over a socket the test opened itself (e.g. with its own headers).
    pub fn from_socket(
        socket: tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
        legacy: bool,
    ) -> Self {
        Self {
            socket,
            legacy,
            token: None,
        }
    }

    pub async fn send(&mut self, message: Value) {
        use futures::SinkExt;
        self.socket
            .send(tokio_tungstenite::tungstenite::Message::Text(
                message.to_string().into(),
            ))
            .await
            .expect("send");
    }

    /// Sends `text` as it is (a message that need not be JSON).
    pub async fn send_text(&mut self, text: &str) {
        use futures::SinkExt;
        self.socket
            .send(tokio_tungstenite::tungstenite::Message::Text(text.into()))
            .await
            .expect("send");
    }

    /// The next JSON message (skipping keep-alives), or the close frame as
    /// `{"close": code, "reason": text}`; `None` on timeout.
    pub async fn next(&mut self, timeout: Duration) -> Option<Value> {
        use futures::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.socket.next())
                .await
                .ok()??;
            match frame {
                Ok(Message::Text(text)) => {
                    let v: Value = serde_json::from_str(&text).expect("JSON frame");
                    if matches!(v["type"].as_str(), Some("ka" | "ping" | "pong")) {
                        if v["type"] == "ping" {
                            self.send(json!({"type": "pong"})).await;
                        }
                        continue;
                    }
                    return Some(v);
                }
                Ok(Message::Close(frame)) => {
                    return Some(match frame {
                        Some(f) => {
                            json!({"close": u16::from(f.code), "reason": f.reason.to_string()})
                        }
                        None => json!({"close": 0, "reason": ""}),
                    })
                }
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }

    /// The `connection_init` payload: the token, if any.
    pub fn init_payload(&self) -> Value {
        match &self.token {
            Some(token) => json!({ "Authorization": format!("Bearer {token}") }),
            None => json!({}),
        }
    }

    /// Sends `connection_init` (with the token) and expects `connection_ack`.
    pub async fn init(&mut self) {
        self.send(json!({"type": "connection_init", "payload": self.init_payload()}))
            .await;
        let ack = self
            .next(Duration::from_secs(5))
            .await
            .expect("connection_ack");
        assert_eq!(ack["type"], "connection_ack", "{ack}");
    }

    /// Like `subscribe`, but false instead of a panic when the socket is gone.
    pub async fn try_subscribe(&mut self, id: &str, query: &str, variables: Value) -> bool {
        use futures::SinkExt;
        let kind = if self.legacy { "start" } else { "subscribe" };
        let message =
            json!({"id": id, "type": kind, "payload": {"query": query, "variables": variables}});
        self.socket
            .send(tokio_tungstenite::tungstenite::Message::Text(
                message.to_string().into(),
            ))
            .await
            .is_ok()
    }

    pub async fn subscribe(&mut self, id: &str, query: &str, variables: Value) {
        let kind = if self.legacy { "start" } else { "subscribe" };
        self.send(
            json!({"id": id, "type": kind, "payload": {"query": query, "variables": variables}}),
        )
        .await;
    }

    /// The `data` of the next result for subscription `id` (panics on errors).
    pub async fn next_data(&mut self, timeout: Duration) -> Option<(String, Value)> {
        let message = self.next(timeout).await?;
        let kind = message["type"].as_str().unwrap_or_default();
        assert!(
            kind == "next" || kind == "data",
            "unexpected message: {message}"
        );
        assert!(message["payload"]["errors"].is_null(), "errors: {message}");
        Some((
            message["id"].as_str().unwrap_or_default().to_string(),
            message["payload"]["data"].clone(),
        ))
    }

    pub async fn close(mut self) {
        let _ = self.socket.close(None).await;
    }
}

impl TestApp {
    /// Posts a GraphQL request with `extensions` (persisted queries).
    pub async fn gql_with_extensions(&self, query: &str, extensions: &Value) -> Value {
        self.http
            .post(self.url("/graphql"))
            .json(&json!({ "query": query, "extensions": extensions }))
            .send()
            .await
            .expect("POST /graphql")
            .json()
            .await
            .expect("JSON response")
    }
}
