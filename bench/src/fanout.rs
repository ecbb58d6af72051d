//! The live fan-out at scale, against a separate `careboard serve` process: commit-to-
//! frame latency with subscribers spread over many Boards, and frames delivered per
//! second at saturation (writers in a closed loop, every subscriber reading).
//!
//! Subscribers are [`LeanSocket`]s: each reads its real socket and walks every frame
//! byte-exact, checks that versions strictly increase, and counts.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::lean::{number_after, LeanSocket};
use crate::subscribe::{open_board, subscription_message, subscription_message_with_id, Server};

/// What one latency run measured.
pub struct Measured {
    pub latency: Histogram<u64>,
    /// Frames the subscribers received.
    pub frames: u64,
    /// Failed mutations, error frames, sockets closed under the subscribers.
    pub errors: u64,
    /// Cores the server process used while the Boards changed (all of its work).
    pub server_cores: f64,
    /// Cores the harness used meanwhile (its subscribers' readers and its writers).
    pub harness_cores: f64,
    /// The latency split where the projector's NOTIFY reaches a listener of the
    /// harness's own (as it reaches the server's): mutation sent → NOTIFY heard, once
    /// per announced position that was a mutation's...
    pub to_notify: Histogram<u64>,
    /// ...and NOTIFY heard → frame read, per frame (the server's listener, Board read,
    /// frame build and fan-out, and the harness's reader).
    pub notify_to_frame: Histogram<u64>,
}

const REQUEST: &str =
    "mutation($input: RequestAppointmentInput!) { requestAppointment(input: $input) { position } }";

fn http_client(server: &Server) -> Result<reqwest::Client> {
    let mut request = reqwest::Client::builder();
    if let Some(token) = &server.token {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {token}").parse()?,
        );
        request = request.default_headers(headers);
    }
    Ok(request.build()?)
}

fn request_body(board: &str, i: u64) -> Value {
    json!({"query": REQUEST,
        "variables": {"input": {"boardId": board, "patientName": format!("Live {i}"),
        "specialty": "pediatrics", "region": "TX", "reason": "fever"}}})
}

/// Opens `subscribers` sockets (one subscription each), spread round-robin over
/// `boards`, each past its first frame. Every subscription's id is `"1"`, or with
/// `distinct`, a UUID of its own (as graphql-ws clients make them by default).
async fn subscribers_on(
    server: &Server,
    boards: &[String],
    subscribers: usize,
    distinct: bool,
) -> Result<Vec<LeanSocket>> {
    let mut sockets = Vec::with_capacity(subscribers);
    for i in 0..subscribers {
        let mut socket = LeanSocket::open(server).await?;
        let board = &boards[i % boards.len()];
        let message = if distinct {
            subscription_message_with_id(&uuid::Uuid::new_v4().to_string(), board)
        } else {
            subscription_message(1, board)
        };
        socket.send(&message).await?;
        sockets.push(socket);
    }
    // The first frame of each is the current Board.
    for socket in &mut sockets {
        let mut first = false;
        while !first {
            socket.read_frames(&mut |_| first = true).await?;
        }
    }
    Ok(sockets)
}

/// Reads `socket` until it fails, handing each text frame to `on_frame` after checking
/// that its version is above the previous one (counted in `errors` when not).
pub(crate) fn read_all(
    mut socket: LeanSocket,
    errors: Arc<AtomicU64>,
    mut on_frame: impl FnMut(&[u8]) + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last = -1;
        loop {
            let read = socket
                .read_frames(&mut |text| {
                    check_version(text, &mut last, &errors);
                    on_frame(text)
                })
                .await;
            if read.is_err() {
                errors.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    })
}

/// Moves `last` to `frame`'s version when it is above it; counts an error when not (a
/// version repeated or gone back, or none).
fn check_version(frame: &[u8], last: &mut i64, errors: &AtomicU64) {
    match number_after(frame, b"\"version\":") {
        Some(v) if v > *last => *last = v,
        _ => {
            errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// How the saturation rows' subscribers read their sockets. Every subscriber shares the
/// two cores with the server, so what its reading costs is taken from the fan-out's
/// share; a client on another machine costs the server nothing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Readers {
    /// A task per socket, woken by the runtime's reactor when bytes arrive, reading
    /// them at once: a wake-up, a poll and a read per frame, as an event loop per
    /// client would (and the arrival's wake-up is paid inside the server's send).
    Woken,
    /// One thread that drains every socket in turn, then sleeps out the rest of this
    /// period: no reactor watches the sockets, so a frame wakes nobody, and a read
    /// takes every frame that came since the last sweep. Every frame is still walked
    /// and its version checked.
    Swept(Duration),
}

impl std::fmt::Display for Readers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Readers::Woken => write!(f, "readers woken per frame"),
            Readers::Swept(period) => write!(f, "readers swept every {} ms", period.as_millis()),
        }
    }
}

/// The subscribers' reading; it stops when dropped (a sweeping thread is waited for,
/// so nothing is read or counted after the drop).
pub(crate) struct Reading {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    sweeper: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Reading {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        self.stop.store(true, Ordering::Relaxed);
        if let Some(sweeper) = self.sweeper.take() {
            let _ = sweeper.join();
        }
    }
}

/// Reads every socket of `sockets` as `readers` says until the [`Reading`] is dropped,
/// handing each text frame to `on_frame` after checking that its version is above the
/// socket's previous one (counted in `errors` when not, and when a socket fails).
pub(crate) fn read_sockets(
    sockets: Vec<LeanSocket>,
    readers: Readers,
    errors: Arc<AtomicU64>,
    on_frame: impl Fn(&[u8]) + Clone + Send + 'static,
) -> Result<Reading> {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let period = match readers {
        Readers::Woken => {
            let tasks = sockets
                .into_iter()
                .map(|socket| read_all(socket, errors.clone(), on_frame.clone()))
                .collect();
            return Ok(Reading {
                tasks,
                stop,
                sweeper: None,
            });
        }
        Readers::Swept(period) => period,
    };
    let mut swept = Vec::with_capacity(sockets.len());
    for socket in sockets {
        swept.push(Some((socket.into_swept()?, -1i64)));
    }
    let done = stop.clone();
    let sweeper = std::thread::spawn(move || {
        while !done.load(Ordering::Relaxed) {
            let began = Instant::now();
            for slot in &mut swept {
                if done.load(Ordering::Relaxed) {
                    return;
                }
                let Some((socket, last)) = slot else { continue };
                let read = socket.drain(&mut |text| {
                    check_version(text, last, &errors);
                    on_frame(text)
                });
                if read.is_err() {
                    errors.fetch_add(1, Ordering::Relaxed);
                    *slot = None;
                }
            }
            std::thread::sleep(period.saturating_sub(began.elapsed()));
        }
    });
    Ok(Reading {
        tasks: Vec::new(),
        stop,
        sweeper: Some(sweeper),
    })
}

/// `subscribers` subscriptions (one socket each) over `boards` Boards while the Boards
/// change `rate` times a second in all (round-robin, open loop) for `seconds`: for
/// every frame, the time from the sending of the newest mutation it includes to its
/// arrival (an upper bound of commit-to-frame, since the commit happens after the send),
/// after `warmup` of the same changes that are not measured.
pub async fn latency(
    server: &Server,
    subscribers: usize,
    boards: usize,
    rate: f64,
    warmup: Duration,
    seconds: u64,
) -> Result<Measured> {
    let mut ids = Vec::with_capacity(boards);
    for _ in 0..boards.max(1) {
        ids.push(open_board(server).await?);
    }
    // position -> when the mutation that wrote it was sent.
    let sent: Arc<Mutex<BTreeMap<i64, Instant>>> = Arc::default();
    let hist = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?));
    let frames = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let sockets = subscribers_on(server, &ids, subscribers, false).await?;
    // position -> when the harness heard the NOTIFY announcing it; and each matched
    // frame's (position, arrival), split against it after the run (a frame may come in
    // before the harness's own listener hears the NOTIFY).
    let heard: Arc<Mutex<BTreeMap<i64, Instant>>> = Arc::default();
    let arrivals: Arc<Mutex<Vec<(i64, Instant)>>> = Arc::default();
    let listen_pool = careboard::postgres::connect(&server.database_url, 1).await?;
    let mut listener = sqlx::postgres::PgListener::connect_with(&listen_pool).await?;
    listener
        .listen(careboard::projections::board_view::BoardChanged::CHANNEL)
        .await?;
    let listening = {
        let heard = heard.clone();
        tokio::spawn(async move {
            while let Ok(n) = listener.recv().await {
                let now = Instant::now();
                if let Some(position) = n
                    .payload()
                    .rsplit(':')
                    .next()
                    .and_then(|p| p.parse::<i64>().ok())
                {
                    heard.lock().unwrap().entry(position).or_insert(now);
                }
            }
        })
    };
    let mut readers = Vec::new();
    for socket in sockets {
        let (sent, hist, frames, errors, arrivals) = (
            sent.clone(),
            hist.clone(),
            frames.clone(),
            errors.clone(),
            arrivals.clone(),
        );
        readers.push(read_all(socket, errors.clone(), move |text| {
            let arrived = Instant::now();
            frames.fetch_add(1, Ordering::Relaxed);
            if text.windows(8).any(|w| w == b"\"errors\"") {
                errors.fetch_add(1, Ordering::Relaxed);
                return;
            }
            let Some(position) = number_after(text, b"\"position\":") else {
                return;
            };
            let at = sent.lock().unwrap().get(&position).copied();
            if let Some(at) = at {
                let _ = hist
                    .lock()
                    .unwrap()
                    .record(arrived.duration_since(at).as_micros() as u64);
                arrivals.lock().unwrap().push((position, arrived));
            }
        }));
    }
    let http = http_client(server)?;
    let url = format!("http://{}/graphql", server.base);
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    // The warm-up's changes run at the same rate and reach the same sockets; none of
    // its frames is timed or counted, so a fresh server's first seconds (its pools,
    // plans and the runtime's threads) are not in the figures.
    let mut i = 0u64;
    let mut tasks = Vec::new();
    let (mut cpu_before, mut cpu_from, mut harness_before) = (0.0, Instant::now(), 0.0);
    for timed in [false, true] {
        let deadline = Instant::now()
            + if timed {
                Duration::from_secs(seconds)
            } else {
                warmup
            };
        if timed {
            for t in tasks.drain(..) {
                t.await?;
            }
            frames.store(0, Ordering::Relaxed);
            ticker.reset();
            (cpu_before, cpu_from) = (server.cpu_seconds()?, Instant::now());
            harness_before = crate::subscribe::process_cpu_seconds("/proc/self/stat")?;
        }
        while Instant::now() < deadline {
            ticker.tick().await;
            let (http, url, sent, errors) =
                (http.clone(), url.clone(), sent.clone(), errors.clone());
            let board = ids[i as usize % ids.len()].clone();
            tasks.push(tokio::spawn(async move {
                let at = Instant::now();
                let position = match http.post(&url).json(&request_body(&board, i)).send().await {
                    Ok(r) => r
                        .json::<Value>()
                        .await
                        .ok()
                        .and_then(|v| v["data"]["requestAppointment"]["position"].as_i64()),
                    Err(_) => None,
                };
                match position {
                    Some(p) if timed => {
                        sent.lock().unwrap().insert(p, at);
                    }
                    Some(_) => {}
                    None => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
            i += 1;
        }
    }
    for t in tasks {
        t.await?;
    }
    let took = cpu_from.elapsed().as_secs_f64().max(1e-9);
    let server_cores = (server.cpu_seconds()? - cpu_before) / took;
    let harness_cores =
        (crate::subscribe::process_cpu_seconds("/proc/self/stat")? - harness_before) / took;
    tokio::time::sleep(Duration::from_secs(2)).await;
    for r in &readers {
        r.abort();
    }
    listening.abort();
    let latency = hist.lock().unwrap().clone();
    let new = || Histogram::<u64>::new_with_bounds(1, 60_000_000, 3);
    let (mut to_notify, mut notify_to_frame) = (new()?, new()?);
    let micros = |from: Instant, to: Instant| to.saturating_duration_since(from).as_micros() as u64;
    {
        let (heard, sent) = (heard.lock().unwrap(), sent.lock().unwrap());
        for (position, at) in sent.iter() {
            if let Some(h) = heard.get(position) {
                let _ = to_notify.record(micros(*at, *h).max(1));
            }
        }
        for (position, arrived) in arrivals.lock().unwrap().iter() {
            if let Some(h) = heard.get(position) {
                let _ = notify_to_frame.record(micros(*h, *arrived).max(1));
            }
        }
    }
    Ok(Measured {
        latency,
        frames: frames.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        server_cores,
        harness_cores,
        to_notify,
        notify_to_frame,
    })
}

/// Frames delivered per second with `subscribers` sockets spread round-robin over
/// `boards` Boards while `writers` clients change them in a closed loop for `seconds`
/// (as fast as the server takes mutations and the projector applies them; writer `w`
/// changes Board `w mod boards`). Subscribers check each frame's version order and
/// count it, nothing more.
pub async fn saturation(
    server: &Server,
    database_url: &str,
    (subscribers, boards): (usize, usize),
    writers: usize,
    seconds: u64,
) -> Result<Saturation> {
    saturation_with_ids(
        server,
        database_url,
        (subscribers, boards, false),
        (Load::Writers(writers), Readers::Woken),
        seconds,
    )
    .await
}

/// What changes the Boards during a saturation run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Load {
    /// Clients in a closed loop, each sending its next mutation when the last is
    /// answered (writer `w` changes Board `w mod boards`): as many changes as the
    /// server takes, competing with the fan-out for the cores.
    Writers(usize),
    /// Mutations sent at this many a second in all, open loop (round-robin over the
    /// Boards), as the commit-to-frame rows send them.
    Rate(f64),
}

impl std::fmt::Display for Load {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Load::Writers(n) => write!(f, "{n} writers"),
            Load::Rate(r) => write!(f, "{r} changes/s"),
        }
    }
}

/// As [`saturation`]; with `distinct`, every subscription has an id of its own, and the
/// Boards change as `load` says.
pub async fn saturation_with_ids(
    server: &Server,
    database_url: &str,
    (subscribers, boards, distinct): (usize, usize, bool),
    (load, readers): (Load, Readers),
    seconds: u64,
) -> Result<Saturation> {
    let mut ids = Vec::with_capacity(boards.max(1));
    for _ in 0..boards.max(1) {
        ids.push(open_board(server).await?);
    }
    let ids = Arc::new(ids);
    let frames = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let sockets = subscribers_on(server, &ids, subscribers, distinct).await?;
    let counting = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // The projector's announcements of this Board, heard as the server hears them: the
    // most versions a subscriber can be sent.
    let notified = Arc::new(AtomicU64::new(0));
    let pool = careboard::postgres::connect(database_url, 1).await?;
    let mut listener = sqlx::postgres::PgListener::connect_with(&pool).await?;
    listener
        .listen(careboard::projections::board_view::BoardChanged::CHANNEL)
        .await?;
    let heard = {
        let (notified, counting, ids) = (notified.clone(), counting.clone(), ids.clone());
        tokio::spawn(async move {
            while let Ok(n) = listener.recv().await {
                if counting.load(Ordering::Relaxed)
                    && ids.iter().any(|b| n.payload().starts_with(b.as_str()))
                {
                    notified.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let reading = {
        let (frames, counting) = (frames.clone(), counting.clone());
        read_sockets(sockets, readers, errors.clone(), move |_| {
            if counting.load(Ordering::Relaxed) {
                frames.fetch_add(1, Ordering::Relaxed);
            }
        })?
    };
    let http = http_client(server)?;
    let url = format!("http://{}/graphql", server.base);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let changes = Arc::new(AtomicU64::new(0));
    let change = {
        let (http, url, changes, errors) =
            (http.clone(), url.clone(), changes.clone(), errors.clone());
        move |board: String, i: u64| {
            let (http, url, changes, errors) =
                (http.clone(), url.clone(), changes.clone(), errors.clone());
            async move {
                match http.post(&url).json(&request_body(&board, i)).send().await {
                    Ok(r) if r.status().is_success() => {
                        changes.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    };
    let mut tasks = Vec::new();
    match load {
        Load::Writers(writers) => {
            for w in 0..writers {
                let (board, stop, change) =
                    (ids[w % ids.len()].clone(), stop.clone(), change.clone());
                tasks.push(tokio::spawn(async move {
                    let mut i = w as u64 * 1_000_000;
                    while !stop.load(Ordering::Relaxed) {
                        i += 1;
                        change(board.clone(), i).await;
                    }
                }));
            }
        }
        Load::Rate(rate) => {
            let (ids, stop) = (ids.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
                let mut sent = Vec::new();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    ticker.tick().await;
                    i += 1;
                    sent.push(tokio::spawn(change(ids[i as usize % ids.len()].clone(), i)));
                    sent.retain(|t: &tokio::task::JoinHandle<()>| !t.is_finished());
                }
                for t in sent {
                    let _ = t.await;
                }
            }));
        }
    }
    // Warm up, then count.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let changes_before = changes.load(Ordering::Relaxed);
    counting.store(true, Ordering::Relaxed);
    let started = Instant::now();
    let split_before = crate::subscribe::process_cpu_split(&server.stat_path())?;
    let cpu_before = split_before.0 + split_before.1;
    let harness_before = crate::subscribe::process_cpu_seconds("/proc/self/stat")?;
    let pass_before = server.write_pass().await;
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    counting.store(false, Ordering::Relaxed);
    let split = crate::subscribe::process_cpu_split(&server.stat_path())?;
    let cpu = split.0 + split.1 - cpu_before;
    let system = split.1 - split_before.1;
    let harness = crate::subscribe::process_cpu_seconds("/proc/self/stat")? - harness_before;
    let (pass, parked, parked_waiting, behind) = match (pass_before, server.write_pass().await) {
        (Some((s0, n0, p0, w0, b0)), Some((s1, n1, p1, w1, b1))) if s1 > s0 => (
            Some((n1 - n0) / (s1 - s0)),
            Some((p1 - p0) / (s1 - s0)),
            Some((w1 - w0) / (s1 - s0)),
            Some((b1 - b0) / (s1 - s0)),
        ),
        _ => (None, None, None, None),
    };
    let took = started.elapsed().as_secs_f64();
    let counted = frames.load(Ordering::Relaxed);
    let changed = changes.load(Ordering::Relaxed) - changes_before;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    drop(reading);
    heard.abort();
    Ok(Saturation {
        notified_per_second: notified.load(Ordering::Relaxed) as f64 / took,
        rate: counted as f64 / took,
        changes: changed,
        errors: errors.load(Ordering::Relaxed),
        cpu_per_frame_us: if counted > 0 {
            cpu * 1e6 / counted as f64
        } else {
            0.0
        },
        harness_cpu_per_frame_us: if counted > 0 {
            harness * 1e6 / counted as f64
        } else {
            0.0
        },
        write_pass_ns_per_socket: pass,
        parked_share: parked,
        parked_waiting_share: parked_waiting,
        behind_share: behind,
        system_share: if cpu > 0.0 { system / cpu } else { 0.0 },
        versions_per_second: counted as f64 / took / subscribers.max(1) as f64,
    })
}

/// What one saturation run measured.
pub struct Saturation {
    /// Frames the subscribers received per second.
    pub rate: f64,
    /// Mutations committed while counting.
    pub changes: u64,
    pub errors: u64,
    /// The server process's CPU time (all of it: HTTP, commands, projector, fan-out)
    /// per frame delivered.
    pub cpu_per_frame_us: f64,
    /// The harness's CPU time per frame (its readers, its writers' HTTP clients and its
    /// listener: everything it runs on the same cores as the server).
    pub harness_cpu_per_frame_us: f64,
    /// The server's writer passes, time per socket handed a frame (its metrics; `None`
    /// when they cannot be read).
    pub write_pass_ns_per_socket: Option<f64>,
    /// The share of those sockets that could not take the frame at once and got it
    /// parked for their own task (`None` when the metrics cannot be read).
    pub parked_share: Option<f64>,
    /// Of the pass's sockets, the share parked because bytes were waiting already
    /// (the rest of `parked_share` found the kernel's buffer full).
    pub parked_waiting_share: Option<f64>,
    /// Of the pass's sockets, the share found with a frame still parked for their
    /// task (the task had not run since).
    pub behind_share: Option<f64>,
    /// The share of the server's CPU spent in the kernel (system calls).
    pub system_share: f64,
    /// Board versions each subscriber received per second (the projector publishes
    /// one per batch it applies, so this follows its cadence).
    pub versions_per_second: f64,
    /// Notifications of the Board's new versions per second (the projector's cadence).
    pub notified_per_second: f64,
}
