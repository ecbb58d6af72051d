//! Mixed load on one `careboard serve` process, the way a clinic's day runs: writers
//! requesting appointments (and cancelling some, and driving providers through their
//! appointments so the matcher keeps scheduling), readers looking at Boards,
//! appointments and wait estimates, and subscribers watching the Boards, while the
//! Boards grow to thousands of appointments each. Reported per window of time: if the
//! cost of a request follows the size of its Board, the last window is slower than
//! the first.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures::StreamExt;
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::subscribe::{subscribe, Server};

/// The sizes of one run.
pub struct Shape {
    pub writers: usize,
    pub readers: usize,
    pub subscribers: usize,
    pub boards: usize,
    /// Providers on each Board.
    pub providers: usize,
    pub seconds: u64,
    pub window: u64,
    /// Read every appointment of a Board in the Board read (`true`), or the first page.
    pub whole_board: bool,
}

/// What happened in one window of time.
pub struct Window {
    pub writes: u64,
    pub reads: u64,
    /// Commands refused as the domain decided (e.g. cancelling a started appointment):
    /// answered, not failed.
    pub refused: u64,
    pub frames: u64,
    pub errors: u64,
    /// CPU seconds (user + system) the server process used in the window.
    pub server_cpu: f64,
    /// CPU seconds PostgreSQL used in the window (the postmaster and every backend;
    /// `None` when the database is not a local process the harness can see).
    pub postgres_cpu: Option<f64>,
    pub write_latency: Histogram<u64>,
    pub read_latency: Histogram<u64>,
}

impl Window {
    fn new() -> Self {
        Self {
            writes: 0,
            reads: 0,
            refused: 0,
            frames: 0,
            errors: 0,
            server_cpu: 0.0,
            postgres_cpu: None,
            write_latency: Histogram::new_with_bounds(1, 120_000_000, 3).expect("bounds"),
            read_latency: Histogram::new_with_bounds(1, 120_000_000, 3).expect("bounds"),
        }
    }
}

/// The result of a run.
pub struct Mixed {
    pub windows: Vec<Window>,
    pub window_seconds: u64,
    /// Appointments on each Board at the end.
    pub board_sizes: Vec<i64>,
}

/// Per-window counters shared by every client task.
struct Recorder {
    started: Instant,
    window: Duration,
    windows: Mutex<Vec<Window>>,
}

impl Recorder {
    fn slot(&self, at: Instant) -> usize {
        (at.duration_since(self.started).as_secs_f64() / self.window.as_secs_f64()) as usize
    }

    fn with(&self, at: Instant, f: impl FnOnce(&mut Window)) {
        let slot = self.slot(at);
        let mut windows = self.windows.lock().unwrap();
        while windows.len() <= slot {
            windows.push(Window::new());
        }
        f(&mut windows[slot]);
    }

    /// Records a request that started at `at` under the window it started in.
    fn request(&self, at: Instant, write: bool, outcome: &Outcome) {
        let micros = (at.elapsed().as_micros() as u64).max(1);
        self.with(at, |w| match outcome {
            Outcome::Error => w.errors += 1,
            Outcome::Ok(_) | Outcome::Refused => {
                if matches!(outcome, Outcome::Refused) {
                    w.refused += 1;
                }
                if write {
                    w.writes += 1;
                    let _ = w.write_latency.record(micros);
                } else {
                    w.reads += 1;
                    let _ = w.read_latency.record(micros);
                }
            }
        });
    }
}

enum Outcome {
    Ok(Value),
    /// A GraphQL error the domain gives a well-formed request (`INVALID_TRANSITION`).
    Refused,
    Error,
}

struct Client {
    http: reqwest::Client,
    url: String,
}

impl Client {
    fn new(server: &Server) -> Result<Self> {
        let mut builder = reqwest::Client::builder().pool_max_idle_per_host(64);
        if let Some(token) = &server.token {
            let mut headers = reqwest::header::HeaderMap::new();
            headers.insert(
                reqwest::header::AUTHORIZATION,
                format!("Bearer {token}").parse()?,
            );
            builder = builder.default_headers(headers);
        }
        Ok(Self {
            http: builder.build()?,
            url: format!("http://{}/graphql", server.base),
        })
    }

    async fn call(&self, query: &str, variables: Value) -> Outcome {
        let response = match self
            .http
            .post(&self.url)
            .json(&json!({"query": query, "variables": variables}))
            .send()
            .await
        {
            Ok(r) => r,
            Err(_) => return Outcome::Error,
        };
        let Ok(v) = response.json::<Value>().await else {
            return Outcome::Error;
        };
        match v.get("errors").and_then(Value::as_array) {
            None => Outcome::Ok(v["data"].clone()),
            Some(errors) => {
                let refused = errors
                    .iter()
                    .all(|e| e["extensions"]["code"] == "INVALID_TRANSITION");
                if refused {
                    Outcome::Refused
                } else {
                    let errors = Value::Array(errors.clone());
                    tracing::warn!(%errors, "mixed: request failed");
                    Outcome::Error
                }
            }
        }
    }

    /// A setup call that must succeed.
    async fn must(&self, query: &str, variables: Value) -> Result<Value> {
        match self.call(query, variables).await {
            Outcome::Ok(v) => Ok(v),
            _ => anyhow::bail!("setup request failed: {query}"),
        }
    }
}

/// A Board of the run and its providers' shifts.
#[derive(Clone)]
struct BoardSetup {
    id: String,
    specialty: &'static str,
    region: &'static str,
    shifts: Vec<String>,
}

const KINDS: [(&str, &str); 4] = [
    ("pediatrics", "TX"),
    ("pediatrics", "CA"),
    ("cardiology", "TX"),
    ("dermatology", "NY"),
];

const REQUEST: &str = "mutation($input: RequestAppointmentInput!) { requestAppointment(input: $input) { appointment { id status } position } }";
const CANCEL: &str = "mutation($input: CancelAppointmentInput!) { cancelAppointment(input: $input) { appointment { id status } position } }";
const START: &str = "mutation($id: ID!) { startAppointment(input: {appointmentId: $id}) { appointment { id status } position } }";
const FINISH: &str = "mutation($id: ID!) { finishAppointment(input: {appointmentId: $id}) { appointment { id status } position } }";
const CHARTED: &str = "mutation($id: ID!) { completeCharting(input: {shiftId: $id}) { shift { id status } position } }";
const SHIFT: &str = "query($id: ID!) { providerShift(id: $id) { id status appointmentId } }";
const BOARD_WHOLE: &str = "query($id: ID!) { board(id: $id) { id version counts { waiting scheduled inProgress finished cancelled providersReady } providers { id status } appointments { id status patientName requestedAt } } }";
const BOARD_PAGE: &str = "query($id: ID!) { board(id: $id) { id version counts { waiting scheduled inProgress finished cancelled providersReady } providers { id status } appointments(first: 50) { id status patientName requestedAt } } }";
const APPOINTMENT: &str = "query($id: ID!, $at: Int) { appointment(id: $id, minPosition: $at) { id status providerId estimatedTime requestedAt } }";
const ESTIMATE: &str = "query($board: ID!, $specialty: String!) { waitTimeEstimate(boardId: $board, specialty: $specialty) { estimatedStart waitSeconds } }";

async fn setup(client: &Client, boards: usize, providers: usize) -> Result<Vec<BoardSetup>> {
    let mut out = Vec::new();
    for b in 0..boards {
        let (specialty, region) = KINDS[b % KINDS.len()];
        let d = client
            .must(
                "mutation($input: OpenBoardInput!) { openBoard(input: $input) { board { id } } }",
                json!({"input": {"name": format!("Mixed {b}"), "specialty": specialty,
                    "region": region, "date": "2022-07-18"}}),
            )
            .await?;
        let id = d["openBoard"]["board"]["id"]
            .as_str()
            .context("board id")?
            .to_string();
        let mut shifts = Vec::new();
        for p in 0..providers {
            let d = client
                .must(
                    "mutation($input: RegisterProviderInput!) { registerProvider(input: $input) { provider { id } } }",
                    json!({"input": {"name": format!("Provider {b}-{p}"),
                        "specialties": [specialty], "licensedRegions": [region]}}),
                )
                .await?;
            let provider = d["registerProvider"]["provider"]["id"].clone();
            let d = client
                .must(
                    "mutation($input: JoinBoardInput!) { joinBoard(input: $input) { shift { id } } }",
                    json!({"input": {"boardId": id, "providerId": provider}}),
                )
                .await?;
            shifts.push(
                d["joinBoard"]["shift"]["id"]
                    .as_str()
                    .context("shift id")?
                    .to_string(),
            );
        }
        out.push(BoardSetup {
            id,
            specialty,
            region,
            shifts,
        });
    }
    Ok(out)
}

/// Appointments requested so far (a bounded sample), with the position of the request.
type Seen = Arc<Mutex<Vec<(String, Option<i64>)>>>;

/// Waiting requests each writer keeps before it cancels its oldest: the queue of a
/// real day stays bounded while the day's appointments keep growing.
const KEPT_PER_WRITER: usize = 20;
/// One writer step in this many drives one of its providers.
const PROVIDER_EVERY: u64 = 6;

/// A shift a writer drives, and the appointment its provider has started.
struct Driven {
    shift: String,
    started: Option<String>,
}

async fn writer(
    w: usize,
    client: Arc<Client>,
    boards: Arc<Vec<BoardSetup>>,
    recorder: Arc<Recorder>,
    seen: Seen,
    stop: Arc<AtomicBool>,
    writers: usize,
) {
    // Every shift belongs to exactly one writer.
    let mut driven: Vec<Driven> = boards
        .iter()
        .flat_map(|b| b.shifts.iter())
        .enumerate()
        .filter(|(i, _)| i % writers == w)
        .map(|(_, s)| Driven {
            shift: s.clone(),
            started: None,
        })
        .collect();
    let mut kept: VecDeque<String> = VecDeque::new();
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        if !driven.is_empty() && i % PROVIDER_EVERY == 0 {
            let n = (i / PROVIDER_EVERY) as usize % driven.len();
            drive(&client, &recorder, &mut driven[n]).await;
            continue;
        }
        let board = &boards[(i as usize + w) % boards.len()];
        let at = Instant::now();
        let outcome = client
            .call(
                REQUEST,
                json!({"input": {"boardId": board.id, "patientName": format!("Patient {w}-{i}"),
                    "specialty": board.specialty, "region": board.region, "reason": "fever"}}),
            )
            .await;
        recorder.request(at, true, &outcome);
        if let Outcome::Ok(d) = &outcome {
            let position = d["requestAppointment"]["position"].as_i64();
            if let Some(id) = d["requestAppointment"]["appointment"]["id"].as_str() {
                kept.push_back(id.to_string());
                let mut seen = seen.lock().unwrap();
                let entry = (id.to_string(), position);
                if seen.len() < 4096 {
                    seen.push(entry);
                } else {
                    let slot = (i as usize * 7919 + w) % seen.len();
                    seen[slot] = entry;
                }
            }
        }
        if kept.len() > KEPT_PER_WRITER {
            let id = kept.pop_front().expect("kept");
            let at = Instant::now();
            let outcome = client
                .call(
                    CANCEL,
                    json!({"input": {"appointmentId": id, "reason": "patient left"}}),
                )
                .await;
            recorder.request(at, true, &outcome);
        }
    }
}

/// One step of a provider: finish and chart the appointment it started, or start the
/// one the matcher assigned it.
async fn drive(client: &Client, recorder: &Recorder, d: &mut Driven) {
    if let Some(appointment) = d.started.take() {
        let at = Instant::now();
        let outcome = client.call(FINISH, json!({"id": appointment})).await;
        recorder.request(at, true, &outcome);
        let at = Instant::now();
        let outcome = client.call(CHARTED, json!({"id": d.shift})).await;
        recorder.request(at, true, &outcome);
        return;
    }
    let at = Instant::now();
    let outcome = client.call(SHIFT, json!({"id": d.shift})).await;
    recorder.request(at, false, &outcome);
    let Outcome::Ok(v) = outcome else { return };
    let shift = &v["providerShift"];
    match shift["status"].as_str() {
        Some("ASSIGNED") => {
            let Some(appointment) = shift["appointmentId"].as_str() else {
                return;
            };
            let at = Instant::now();
            let outcome = client.call(START, json!({"id": appointment})).await;
            recorder.request(at, true, &outcome);
            if matches!(outcome, Outcome::Ok(_)) {
                d.started = Some(appointment.to_string());
            }
        }
        Some("CHARTING") => {
            let at = Instant::now();
            let outcome = client.call(CHARTED, json!({"id": d.shift})).await;
            recorder.request(at, true, &outcome);
        }
        _ => {}
    }
}

async fn reader(
    r: usize,
    client: Arc<Client>,
    boards: Arc<Vec<BoardSetup>>,
    recorder: Arc<Recorder>,
    seen: Seen,
    stop: Arc<AtomicBool>,
    whole_board: bool,
) {
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let board = &boards[(i as usize + r) % boards.len()];
        let at = Instant::now();
        let outcome = match i % 10 {
            // Half the reads look at a Board, as a coordinator's screen does.
            0..=4 => {
                let query = if whole_board { BOARD_WHOLE } else { BOARD_PAGE };
                client.call(query, json!({"id": board.id})).await
            }
            5..=7 => {
                let id = {
                    let seen = seen.lock().unwrap();
                    (!seen.is_empty()).then(|| seen[(i as usize * 31 + r) % seen.len()].clone())
                };
                // As a client reads what it wrote: after the projector has it.
                match id {
                    Some((id, at)) => client.call(APPOINTMENT, json!({"id": id, "at": at})).await,
                    None => continue,
                }
            }
            _ => {
                client
                    .call(
                        ESTIMATE,
                        json!({"board": board.id, "specialty": board.specialty}),
                    )
                    .await
            }
        };
        recorder.request(at, false, &outcome);
    }
}

/// Runs the mixed load for `shape.seconds` against `server`.
pub async fn run(server: &Server, shape: &Shape) -> Result<Mixed> {
    let client = Arc::new(Client::new(server)?);
    let boards = Arc::new(setup(&client, shape.boards.max(1), shape.providers).await?);

    // Subscribers first, each past its first frame, spread over the Boards.
    let mut sockets = Vec::with_capacity(shape.subscribers);
    for s in 0..shape.subscribers {
        let mut socket = server.socket().await?;
        subscribe(&mut socket, 1, &boards[s % boards.len()].id).await?;
        sockets.push(socket);
    }
    for socket in &mut sockets {
        socket.next().await;
    }

    let recorder = Arc::new(Recorder {
        started: Instant::now(),
        window: Duration::from_secs(shape.window.max(1)),
        windows: Mutex::new(Vec::new()),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let frames_errors = Arc::new(AtomicU64::new(0));
    let mut listeners = Vec::new();
    for mut socket in sockets {
        let recorder = recorder.clone();
        let errors = frames_errors.clone();
        listeners.push(tokio::spawn(async move {
            while let Some(frame) = socket.next().await {
                let at = Instant::now();
                match frame {
                    Ok(Message::Text(text)) => {
                        let bad = text.contains("\"errors\"");
                        recorder.with(at, |w| {
                            w.frames += 1;
                            if bad {
                                w.errors += 1;
                            }
                        });
                    }
                    Ok(Message::Close(_)) | Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    Ok(_) => {}
                }
            }
        }));
    }
    let seen: Seen = Arc::default();
    let mut tasks = Vec::new();
    for w in 0..shape.writers {
        tasks.push(tokio::spawn(writer(
            w,
            client.clone(),
            boards.clone(),
            recorder.clone(),
            seen.clone(),
            stop.clone(),
            shape.writers,
        )));
    }
    for r in 0..shape.readers {
        tasks.push(tokio::spawn(reader(
            r,
            client.clone(),
            boards.clone(),
            recorder.clone(),
            seen.clone(),
            stop.clone(),
            shape.whole_board,
        )));
    }
    let deadline = recorder.started + Duration::from_secs(shape.seconds);
    // The server's CPU time at each window's start, to divide by its requests; and
    // PostgreSQL's.
    let postgres = PostgresCpu::locate(&server.database_url).await;
    let mut cpu_marks = vec![server.cpu_seconds()?];
    let mut pg_marks = vec![postgres.as_ref().and_then(PostgresCpu::seconds)];
    let window = Duration::from_secs(shape.window.max(1));
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if recorder.started + window * cpu_marks.len() as u32 <= Instant::now() {
            let cpu = server.cpu_seconds()?;
            let pg = postgres.as_ref().and_then(PostgresCpu::seconds);
            let slot = cpu_marks.len() - 1;
            recorder.with(recorder.started + window * slot as u32, |w| {
                w.server_cpu = cpu - cpu_marks[slot];
                w.postgres_cpu = pg.zip(pg_marks[slot]).map(|(now, then)| now - then);
            });
            cpu_marks.push(cpu);
            pg_marks.push(pg);
        }
        let elapsed = recorder.started.elapsed().as_secs();
        if elapsed > 0 && elapsed % shape.window.max(1) == 0 {
            // A heartbeat for long runs.
            tracing::debug!(elapsed, "mixed: running");
        }
    }
    // The last window's end.
    let cpu = server.cpu_seconds()?;
    let pg = postgres.as_ref().and_then(PostgresCpu::seconds);
    let slot = cpu_marks.len() - 1;
    recorder.with(recorder.started + window * slot as u32, |w| {
        w.server_cpu = cpu - cpu_marks[slot];
        w.postgres_cpu = pg.zip(pg_marks[slot]).map(|(now, then)| now - then);
    });
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await?;
    }
    for l in &listeners {
        l.abort();
    }
    // Requests that started in a window past the deadline (the last ones in flight)
    // do not make a window of their own.
    let whole = (shape.seconds / shape.window.max(1)).max(1) as usize;
    let mut windows = std::mem::take(&mut *recorder.windows.lock().unwrap());
    windows.truncate(whole);
    if let Some(last) = windows.last_mut() {
        last.errors += frames_errors.load(Ordering::Relaxed);
    }
    let mut board_sizes = Vec::new();
    for b in boards.iter() {
        let d = client
            .must(
                "query($id: ID!) { board(id: $id) { counts { waiting scheduled inProgress finished cancelled } } }",
                json!({"id": b.id}),
            )
            .await?;
        let c = &d["board"]["counts"];
        board_sizes.push(
            [
                "waiting",
                "scheduled",
                "inProgress",
                "finished",
                "cancelled",
            ]
            .iter()
            .map(|k| c[*k].as_i64().unwrap_or(0))
            .sum(),
        );
    }
    Ok(Mixed {
        windows,
        window_seconds: shape.window.max(1),
        board_sizes,
    })
}

/// PostgreSQL's CPU time, when it runs on this machine: the postmaster's own and its
/// reaped children's (backends that exited), plus every live child's.
struct PostgresCpu {
    postmaster: u32,
}

impl PostgresCpu {
    /// Finds the postmaster through the data directory (the harness connects as a
    /// superuser); `None` if it is not a process here.
    async fn locate(database_url: &str) -> Option<Self> {
        let pool = careboard::postgres::connect(database_url, 1).await.ok()?;
        let dir: String = sqlx::query_scalar("select current_setting('data_directory')")
            .fetch_one(&pool)
            .await
            .ok()?;
        pool.close().await;
        let pid =
            std::fs::read_to_string(std::path::Path::new(&dir).join("postmaster.pid")).ok()?;
        let postmaster = pid.lines().next()?.trim().parse().ok()?;
        let found = Self { postmaster };
        found.seconds().map(|_| found)
    }

    fn seconds(&self) -> Option<f64> {
        // Fields after the command name: ppid is the 2nd, utime, stime, cutime and
        // cstime the 12th to 15th.
        fn fields(pid: &str) -> Option<Vec<u64>> {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let rest = stat.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(vec![
                f.get(1)?.parse().ok()?,
                f.get(11)?.parse().ok()?,
                f.get(12)?.parse().ok()?,
                f.get(13)?.parse().ok()?,
                f.get(14)?.parse().ok()?,
            ])
        }
        let own = fields(&self.postmaster.to_string())?;
        let mut ticks = own[1] + own[2] + own[3] + own[4];
        for entry in std::fs::read_dir("/proc").ok()?.flatten() {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
            else {
                continue;
            };
            if let Some(f) = fields(pid).filter(|f| f[0] == u64::from(self.postmaster)) {
                ticks += f[1] + f[2];
            }
        }
        // SAFETY: sysconf reads a constant of the system; no memory is touched.
        let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        Some(ticks as f64 / per_second)
    }
}
