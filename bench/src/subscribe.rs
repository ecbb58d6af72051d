//! The `subscribe` scenario, against a separate `careboard` server process: commit-to-
//! frame latency with many subscribers on one Board, memory per idle subscription, and
//! the baseline of a bare NOTIFY ping-pong on the same PostgreSQL.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

pub(crate) type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A `careboard serve` child process on a free port.
pub struct Server {
    child: std::process::Child,
    pub base: String,
    /// The bearer token clients send (none with `--auth off`).
    pub(crate) token: Option<String>,
    /// An admin's token, for reading `/metrics` (none with `--auth off`).
    admin_token: Option<String>,
    /// Its database: the harness LISTENs there too, to split a frame's latency at the
    /// projector's NOTIFY.
    pub(crate) database_url: String,
}

impl Server {
    pub async fn start(database_url: &str, auth: &crate::BenchAuth) -> Result<Self> {
        Self::start_with(database_url, auth, &[]).await
    }

    /// A server whose shared frames reach sockets by `delivery`: `group` (each group
    /// writes to its sockets, in one task) or `socket` (every socket's task writes; the
    /// earlier path).
    pub async fn start_delivering(
        database_url: &str,
        auth: &crate::BenchAuth,
        delivery: &str,
    ) -> Result<Self> {
        Self::start_with(
            database_url,
            auth,
            &[
                ("CAREBOARD_WS_FRAME_DELIVERY", delivery),
                ("CAREBOARD_WS_WRITE_SHARD", "0"),
            ],
        )
        .await
    }

    /// A server whose groups write their frames in one writer pass (`shard` 0) or in
    /// tasks of `shard` sockets each.
    pub async fn start_sharded(
        database_url: &str,
        auth: &crate::BenchAuth,
        shard: usize,
    ) -> Result<Self> {
        Self::start_sharded_parking(database_url, auth, shard, ("pass", "unconstrained")).await
    }

    /// As [`Server::start_sharded`], a newer frame for a socket with a frame parked for
    /// its task written by `parked` (`pass`: the writer pass, when the socket takes it;
    /// `task`: the socket's task, woken again, the earlier path), the passes' writes
    /// counted against tokio's cooperative budget or not (`budget`: `coop`, the earlier
    /// path, or `unconstrained`).
    pub async fn start_sharded_parking(
        database_url: &str,
        auth: &crate::BenchAuth,
        shard: usize,
        (parked, budget): (&str, &str),
    ) -> Result<Self> {
        Self::start_with(
            database_url,
            auth,
            &[
                ("CAREBOARD_WS_FRAME_DELIVERY", "group"),
                ("CAREBOARD_WS_WRITE_SHARD", &shard.to_string()),
                ("CAREBOARD_WS_PARKED_FRAMES", parked),
                ("CAREBOARD_WS_PASS_BUDGET", budget),
            ],
        )
        .await
    }

    /// The server's writer-pass counters from `/metrics`: sockets handed a frame,
    /// nanoseconds spent doing so, and frames parked for the sockets' tasks (0 when the
    /// server does not count them), of those the frames parked because bytes were
    /// waiting already, and sockets found with a frame still parked for their task
    /// (`None` when the metrics cannot be read).
    pub async fn write_pass(&self) -> Option<(f64, f64, f64, f64, f64)> {
        let mut request = reqwest::Client::new().get(format!("http://{}/metrics", self.base));
        if let Some(token) = &self.admin_token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.ok()?;
        if !response.status().is_success() {
            return None;
        }
        let text = response.text().await.ok()?;
        let value = |name: &str| {
            text.lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        };
        Some((
            value("careboard_subscription_write_pass_sockets_total ")?,
            value("careboard_subscription_write_pass_nanoseconds_total ")?,
            value("careboard_subscription_write_pass_parked_total ").unwrap_or(0.0),
            value("careboard_subscription_write_pass_parked_waiting_total ").unwrap_or(0.0),
            value("careboard_subscription_write_pass_behind_total ").unwrap_or(0.0),
        ))
    }

    /// Like [`Server::start`], with more settings in the server's environment.
    pub async fn start_with(
        database_url: &str,
        auth: &crate::BenchAuth,
        env: &[(&str, &str)],
    ) -> Result<Self> {
        let exe = std::env::current_exe()?;
        let bin: PathBuf = exe
            .parent()
            .context("bench binary has a directory")?
            .join("careboard");
        if !bin.is_file() {
            bail!(
                "{} not found: build it with the bench (cargo build --release)",
                bin.display()
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = std::process::Command::new(bin)
            .args(["serve", "--bind", &format!("127.0.0.1:{port}")])
            .args(["--auth", if auth.token.is_some() { "on" } else { "off" }])
            // Its development issuer's key is the harness's: the tokens verify.
            .arg("--data-dir")
            .arg(&auth.dir)
            .env("DATABASE_URL", database_url)
            .env("RUST_LOG", "warn")
            .env("CAREBOARD_MAX_SUBSCRIPTIONS_PER_SOCKET", "100000")
            // Every subscriber is the same caller from one address: no rate limit, and
            // no limit on one caller's subscriptions (the crowd stands for many people).
            .env("CAREBOARD_RATE_LIMIT_PER_SECOND", "0")
            .env("CAREBOARD_MAX_SUBSCRIPTIONS_PER_CALLER", "0")
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let base = format!("127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let started = Instant::now();
        while http
            .get(format!("http://{base}/readyz"))
            .send()
            .await
            .is_err()
        {
            if started.elapsed() > Duration::from_secs(30) {
                bail!("careboard server did not come up");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let admin_token = match &auth.issuer {
            Some(issuer) => Some(issuer.issue(&careboard::identity::dev_issuer::TokenArgs {
                role: careboard::identity::Role::Admin,
                name: "Bench metrics".into(),
                subject: None,
                provider_id: None,
                patient_id: None,
                regions: vec![],
                specialties: vec![],
                ttl: Duration::from_secs(24 * 3600),
            })?),
            None => None,
        };
        Ok(Self {
            child,
            base,
            token: auth.token.clone(),
            admin_token,
            database_url: database_url.to_string(),
        })
    }

    /// Resident memory of the server process, in bytes.
    pub fn rss(&self) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let kb: u64 = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse().ok())
            .context("VmRSS")?;
        Ok(kb * 1024)
    }

    /// CPU time the server process has used so far (user + system), in seconds.
    pub fn cpu_seconds(&self) -> Result<f64> {
        process_cpu_seconds(&format!("/proc/{}/stat", self.child.id()))
    }

    /// The server process's `/proc/…/stat`.
    pub fn stat_path(&self) -> String {
        format!("/proc/{}/stat", self.child.id())
    }

    pub(crate) async fn graphql(&self, query: &str, variables: Value) -> Result<Value> {
        let mut request = reqwest::Client::new()
            .post(format!("http://{}/graphql", self.base))
            .json(&json!({"query": query, "variables": variables}));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let v: Value = request.send().await?.json().await?;
        if v.get("errors").is_some() {
            bail!("GraphQL errors: {v}");
        }
        Ok(v["data"].clone())
    }

    pub(crate) async fn socket(&self) -> Result<Socket> {
        let mut request = format!("ws://{}/graphql/ws", self.base).into_client_request()?;
        request
            .headers_mut()
            .insert("sec-websocket-protocol", "graphql-transport-ws".parse()?);
        let (mut socket, _) = tokio_tungstenite::connect_async(request).await?;
        let payload = match &self.token {
            Some(token) => json!({"Authorization": format!("Bearer {token}")}),
            None => json!({}),
        };
        socket
            .send(Message::Text(
                json!({"type": "connection_init", "payload": payload})
                    .to_string()
                    .into(),
            ))
            .await?;
        loop {
            match socket.next().await {
                Some(Ok(Message::Text(t))) if t.contains("connection_ack") => return Ok(socket),
                Some(Ok(_)) => continue,
                other => bail!("no connection_ack: {other:?}"),
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU time (user + system) of the process whose `/proc/…/stat` is at `path`, in seconds
/// (`/proc/self/stat`: the harness itself).
pub fn process_cpu_seconds(path: &str) -> Result<f64> {
    let (user, system) = process_cpu_split(path)?;
    Ok(user + system)
}

/// CPU time in user space and in the kernel (system calls: here mostly the sockets'
/// writes and reads) of the process whose `/proc/…/stat` is at `path`, in seconds.
pub fn process_cpu_split(path: &str) -> Result<(f64, f64)> {
    let stat = std::fs::read_to_string(path)?;
    // Fields after the command name (which is in parentheses): utime is the 12th, stime
    // the 13th.
    let rest = stat.rsplit_once(')').context("/proc stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let (user, system) = (fields[11].parse::<u64>()?, fields[12].parse::<u64>()?);
    // SAFETY: sysconf reads a constant of the system; no memory is touched.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok((user as f64 / per_second, system as f64 / per_second))
}

/// Counts only: frames stay the same size while the Board grows, so the figure follows
/// the fan-out, not the Board's size (the `query` scenario measures disclosures).
const SUBSCRIPTION: &str =
    "subscription($id: ID!) { boardChanged(boardId: $id) { version position counts { waiting } } }";

/// The `subscribe` message of subscription `id` to `board`.
pub(crate) fn subscription_message(id: usize, board: &str) -> String {
    subscription_message_with_id(&id.to_string(), board)
}

/// The `subscribe` message of subscription `id` to `board`.
pub(crate) fn subscription_message_with_id(id: &str, board: &str) -> String {
    json!({"id": id, "type": "subscribe",
        "payload": {"query": SUBSCRIPTION, "variables": {"id": board}}})
    .to_string()
}

pub(crate) async fn subscribe(socket: &mut Socket, id: usize, board: &str) -> Result<()> {
    socket
        .send(Message::Text(subscription_message(id, board).into()))
        .await?;
    Ok(())
}

pub(crate) async fn open_board(server: &Server) -> Result<String> {
    let d = server
        .graphql(
            "mutation { openBoard(input: {name: \"Bench live\", specialty: \"pediatrics\", region: \"TX\", date: \"2022-07-18\"}) { board { id } } }",
            json!({}),
        )
        .await?;
    Ok(d["openBoard"]["board"]["id"]
        .as_str()
        .context("board id")?
        .to_string())
}

/// Server memory per idle `boardChanged` subscription, with `count` of them open.
pub async fn idle_memory(server: &Server, count: usize) -> Result<f64> {
    let board = open_board(server).await?;
    // Warm up one subscription so one-off allocations are not counted.
    let mut warm = server.socket().await?;
    subscribe(&mut warm, 1, &board).await?;
    warm.next().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = server.rss()?;
    let mut sockets = Vec::with_capacity(count);
    for _ in 0..count {
        let mut socket = server.socket().await?;
        subscribe(&mut socket, 1, &board).await?;
        socket.next().await;
        sockets.push(socket);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = server.rss()?;
    drop(sockets);
    drop(warm);
    Ok(after.saturating_sub(before) as f64 / count as f64)
}

/// The floor: a NOTIFY from one connection to a LISTENing one, round trip timed.
pub async fn notify_ping_pong(database_url: &str, rounds: usize) -> Result<Histogram<u64>> {
    let pool = careboard::postgres::connect(database_url, 2).await?;
    let mut listener = sqlx::postgres::PgListener::connect_with(&pool).await?;
    listener.listen("bench_ping").await?;
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for i in 0..rounds {
        let at = Instant::now();
        sqlx::query("select pg_notify('bench_ping', $1)")
            .bind(i.to_string())
            .execute(&pool)
            .await?;
        listener.recv().await?;
        hist.record(at.elapsed().as_micros() as u64)?;
    }
    Ok(hist)
}
