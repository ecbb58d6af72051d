//! Shared frames: `boardChanged` subscribers who would see the same thing share one
//! execution and the same bytes; the others see only what they may.

use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::documents::request_input_with;
use crate::helpers::idp::Who;
use crate::helpers::TestApp;

/// In every patient field this test writes: it must never reach a socket that may not
/// see it.
const MARKER: &str = "FRAMES-MARKER-7f3a";

const WATCH: &str = "subscription($b: ID!, $since: Int) { boardChanged(boardId: $b, sinceVersion: $since) { version appointments { patientName reason } } }";

/// A websocket that keeps every text message as it arrived.
struct Raw {
    socket: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

impl Raw {
    async fn open(app: &TestApp, token: &str) -> Raw {
        Raw::open_with(app, token, None).await
    }

    /// With `receive_buffer` bytes of kernel buffer on the client's side, if given.
    async fn open_with(app: &TestApp, token: &str, receive_buffer: Option<u32>) -> Raw {
        Raw::open_speaking(app, token, receive_buffer, "graphql-transport-ws").await
    }

    /// Speaking `protocol` (`graphql-transport-ws`, or the legacy `graphql-ws`).
    async fn open_speaking(
        app: &TestApp,
        token: &str,
        receive_buffer: Option<u32>,
        protocol: &str,
    ) -> Raw {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let url = app.url("/graphql/ws").replace("http://", "ws://");
        let mut request = url.clone().into_client_request().unwrap();
        request
            .headers_mut()
            .insert("sec-websocket-protocol", protocol.parse().unwrap());
        let addr: std::net::SocketAddr = url
            .trim_start_matches("ws://")
            .split('/')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let tcp = tokio::net::TcpSocket::new_v4().unwrap();
        if let Some(size) = receive_buffer {
            tcp.set_recv_buffer_size(size).unwrap();
        }
        let stream = tcp.connect(addr).await.unwrap();
        let (socket, _) = tokio_tungstenite::client_async(
            request,
            tokio_tungstenite::MaybeTlsStream::Plain(stream),
        )
        .await
        .unwrap();
        let mut raw = Raw { socket };
        raw.send(json!({"type": "connection_init", "payload": {"Authorization": format!("Bearer {token}")}}))
            .await;
        let ack = raw.next(Duration::from_secs(10)).await.expect("ack");
        assert!(ack.contains("connection_ack"), "{ack}");
        raw
    }

    async fn send(&mut self, message: Value) {
        self.socket
            .send(Message::Text(message.to_string().into()))
            .await
            .unwrap();
    }

    async fn subscribe(&mut self, id: &str, board: &str, since: Option<i64>) {
        self.send(json!({"id": id, "type": "subscribe", "payload": {"query": WATCH, "variables": {"b": board, "since": since}}}))
            .await;
    }

    /// The next text message as sent (pings answered, skipped).
    async fn next(&mut self, timeout: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.socket.next())
                .await
                .ok()??
                .ok()?;
            match frame {
                Message::Text(text) => return Some(text.to_string()),
                Message::Close(f) => return Some(format!("close {f:?}")),
                _ => continue,
            }
        }
    }

    /// Frames until one shows `version` (asserting they strictly increase); all of
    /// them, as sent.
    async fn until(&mut self, version: i64) -> Vec<String> {
        let mut frames = Vec::new();
        let mut last = -1;
        loop {
            // Generous: a missing frame fails all the same, only later.
            let text = self
                .next(Duration::from_secs(60))
                .await
                .unwrap_or_else(|| panic!("no frame for version {version} after {last}"));
            let v: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{text}"));
            assert_eq!(v["type"], "next", "{text}");
            let got = v["payload"]["data"]["boardChanged"]["version"]
                .as_i64()
                .unwrap_or_else(|| panic!("{text}"));
            assert!(got > last, "versions strictly increase: {got} after {last}");
            last = got;
            frames.push(text);
            if got == version {
                return frames;
            }
            assert!(got < version, "past {version}: {got}");
        }
    }
}

struct Day {
    board: String,
    assigned_provider: String,
    other_provider: String,
}

async fn seed(app: &TestApp) -> Day {
    let d = app
        .data(
            "mutation($i: OpenBoardInput!) { openBoard(input: $i) { board { id } } }",
            json!({"i": {"name": "Frames", "specialty": "pediatrics", "region": "TX", "date": "2022-07-18"}}),
        )
        .await;
    let board = d["openBoard"]["board"]["id"].as_str().unwrap().to_string();
    let mut providers = Vec::new();
    let mut shifts = Vec::new();
    for _ in 0..2 {
        let d = app
            .data(
                "mutation($i: RegisterProviderInput!) { registerProvider(input: $i) { provider { id } } }",
                json!({"i": {"name": "Dr. Frames", "specialties": ["pediatrics"], "licensedRegions": ["TX"]}}),
            )
            .await;
        let provider = d["registerProvider"]["provider"]["id"]
            .as_str()
            .unwrap()
            .to_string();
        let d = app
            .data(
                "mutation($i: JoinBoardInput!) { joinBoard(input: $i) { shift { id } } }",
                json!({"i": {"boardId": board, "providerId": provider}}),
            )
            .await;
        shifts.push(d["joinBoard"]["shift"]["id"].as_str().unwrap().to_string());
        providers.push(provider);
    }
    let appointment = app
        .request_appointment(marked_request(&board, 0, "reason"))
        .await
        .0;
    app.data(
        "mutation($i: ScheduleAppointmentInput!) { scheduleAppointment(input: $i) { position } }",
        json!({"i": {"appointmentId": appointment, "shiftId": shifts[0], "estimatedTime": "2022-07-18T15:00:00Z"}}),
    )
    .await;
    Day {
        board,
        assigned_provider: providers[0].clone(),
        other_provider: providers[1].clone(),
    }
}

/// A request whose patient fields carry the marker: patient `n`, for `reason`.
fn marked_request(board: &str, n: usize, reason: &str) -> Value {
    request_input_with(
        board,
        &format!("{MARKER} {n}"),
        "pediatrics",
        "TX",
        &format!("{MARKER} {reason}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sharing_subscribers_get_identical_bytes_and_the_others_only_what_they_may_see() {
    sharing_and_masking(TestApp::spawn().await).await;
}

/// The same with the earlier delivery, every socket's task writing every frame (kept
/// for the benchmark's before/after): it must stay as safe as the default.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_per_socket_delivery_sharing_subscribers_still_get_only_what_they_may_see() {
    let app = TestApp::spawn_with(careboard::config::GraphqlLimits {
        ws_frame_delivery: careboard::config::FrameDelivery::Socket,
        ..Default::default()
    })
    .await;
    sharing_and_masking(app).await;
}

/// The same with a group's writer pass split into tasks of one socket each (the most
/// concurrent the split gets): still only what each may see, identical bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_writer_tasks_sharing_subscribers_still_get_only_what_they_may_see() {
    sharing_and_masking(sharded().await).await;
}

/// A server whose groups write each socket from a task of its own.
async fn sharded() -> TestApp {
    TestApp::spawn_with(careboard::config::GraphqlLimits {
        ws_write_shard: 1,
        ..Default::default()
    })
    .await
}

/// The same with writer passes on tokio's blocking threads: each socket written by a
/// run of its own on a thread of its own, at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_passes_on_blocking_threads_sharing_subscribers_still_get_only_what_they_may_see() {
    sharing_and_masking(on_blocking_threads().await).await;
}

/// A server whose writer passes run on tokio's blocking threads, one socket per run
/// (the most concurrent those passes get).
async fn on_blocking_threads() -> TestApp {
    TestApp::spawn_with(careboard::config::GraphqlLimits {
        ws_write_shard: 1,
        ws_pass_thread: careboard::config::PassThread::Blocking,
        ..Default::default()
    })
    .await
}

async fn sharing_and_masking(app: TestApp) {
    let day = seed(&app).await;
    let (_, p) = app
        .request_appointment(marked_request(&day.board, 1, "reason"))
        .await;
    let current = app.projected_version(&day.board, p).await;

    let in_scope = |subject: &str| {
        app.token(
            Who::coordinator()
                .regions(["TX"])
                .specialties(["pediatrics"])
                .subject(subject),
        )
    };
    // Two coordinators of the same scope (two people: one group, two records), a
    // coordinator of every Board, an admin (who sees no patient fields), the assigned
    // provider, a provider on the Board assigned nothing.
    let mut coordinator_a = Raw::open(&app, &in_scope("coordinator-a")).await;
    let mut coordinator_b = Raw::open(&app, &in_scope("coordinator-b")).await;
    let mut everywhere = Raw::open(&app, &app.token(Who::coordinator())).await;
    let mut admin = Raw::open(&app, &app.admin_token.clone()).await;
    let mut assigned = Raw::open(&app, &app.token(Who::provider(&day.assigned_provider))).await;
    let mut unassigned = Raw::open(&app, &app.token(Who::provider(&day.other_provider))).await;
    // Refused at the start: a coordinator of another region, a patient.
    let mut out_of_scope = Raw::open(&app, &app.token(Who::coordinator().regions(["CA"]))).await;
    let mut patient = Raw::open(&app, &app.token(Who::patient("someone"))).await;
    for raw in [
        &mut coordinator_a,
        &mut coordinator_b,
        &mut everywhere,
        &mut admin,
        &mut assigned,
        &mut unassigned,
        &mut out_of_scope,
        &mut patient,
    ] {
        raw.subscribe("1", &day.board, None).await;
    }
    for refused in [&mut out_of_scope, &mut patient] {
        let error = refused.next(Duration::from_secs(10)).await.unwrap();
        let v: Value = serde_json::from_str(&error).unwrap();
        assert_eq!(
            v["payload"]["errors"][0]["extensions"]["code"], "FORBIDDEN",
            "{error}"
        );
        assert!(!error.contains(MARKER), "{error}");
        let complete = refused.next(Duration::from_secs(10)).await.unwrap();
        assert!(complete.contains("complete"), "{complete}");
    }

    let (_, p) = app
        .request_appointment(marked_request(&day.board, 2, "reason"))
        .await;
    let next = app.projected_version(&day.board, p).await;
    assert!(next > current);
    let a = coordinator_a.until(next).await;
    let b = coordinator_b.until(next).await;
    let by_everywhere = everywhere.until(next).await;
    let by_admin = admin.until(next).await;
    let by_assigned = assigned.until(next).await;
    let by_unassigned = unassigned.until(next).await;

    // The same scope: the same bytes, frame for frame (the same subscription id here).
    assert_eq!(
        a.last(),
        b.last(),
        "coordinators of one scope share a frame"
    );
    assert!(a.last().unwrap().contains(MARKER));
    assert!(by_everywhere.last().unwrap().contains(MARKER));
    for frame in &by_admin {
        assert!(!frame.contains(MARKER), "an admin saw {frame}");
    }
    // The assigned provider sees their patient and only theirs; the other provider on
    // the Board sees no patient at all.
    let shown: Value = serde_json::from_str(by_assigned.last().unwrap()).unwrap();
    let names: Vec<&Value> = shown["payload"]["data"]["boardChanged"]["appointments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| &a["patientName"])
        .collect();
    assert_eq!(names.len(), 3, "{shown}");
    assert_eq!(
        names.iter().filter(|n| n.is_string()).count(),
        1,
        "only the assigned appointment's patient: {shown}"
    );
    for frame in &by_unassigned {
        assert!(
            !frame.contains(MARKER),
            "an unassigned provider saw {frame}"
        );
    }
    for refused in [&mut out_of_scope, &mut patient] {
        assert!(refused.next(Duration::from_millis(500)).await.is_none());
    }

    // Each coordinator who received a disclosing frame has a record of their own.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let d = app
            .data(
                "query($s: String) { accessLog(subject: $s) { edges { node { subject operation disclosed } } } }",
                json!({"s": "coordinator-b"}),
            )
            .await;
        let records = d["accessLog"]["edges"].as_array().unwrap().clone();
        let frames = records
            .iter()
            .filter(|r| {
                r["node"]["operation"] == "boardChanged"
                    && r["node"]["disclosed"]["version"] == next
            })
            .count();
        if frames == 1 {
            break;
        }
        if Instant::now() > deadline {
            let all = app
                .data(
                    "{ accessLog { edges { node { subject operation disclosed } } } }",
                    json!({}),
                )
                .await;
            panic!("no record names coordinator-b for version {next}: {records:?}; all: {all}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subscribers_with_the_same_document_and_scope_share_one_execution_per_version() {
    one_execution_per_version(TestApp::spawn().await).await;
}

/// The same with the writer pass in tasks of one socket: every socket still gets every
/// version (a frame for each), from one execution.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_writer_tasks_every_subscriber_gets_every_version_of_one_execution() {
    one_execution_per_version(sharded().await).await;
}

/// The same with the writer passes on tokio's blocking threads.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_passes_on_blocking_threads_every_subscriber_gets_every_version_of_one_execution() {
    one_execution_per_version(on_blocking_threads().await).await;
}

async fn one_execution_per_version(app: TestApp) {
    let day = seed(&app).await;
    const N: usize = 20;
    let mut sockets = Vec::new();
    for _ in 0..N {
        let mut raw = Raw::open(&app, &app.admin_token.clone()).await;
        raw.subscribe("s", &day.board, None).await;
        sockets.push(raw);
    }
    let (_, p) = app
        .request_appointment(marked_request(&day.board, 1, "reason"))
        .await;
    let v = app.projected_version(&day.board, p).await;
    for raw in &mut sockets {
        raw.until(v).await;
    }
    let before = app.metric("careboard_subscription_executions_total").await;
    let sent_before = app.metric("careboard_subscription_frames_sent_total").await;
    const CHANGES: usize = 5;
    for n in 0..CHANGES {
        let (_, p) = app
            .request_appointment(marked_request(&day.board, n + 2, "reason"))
            .await;
        let v = app.projected_version(&day.board, p).await;
        for raw in &mut sockets {
            raw.until(v).await;
        }
    }
    let executions = app.metric("careboard_subscription_executions_total").await - before;
    let sent = app.metric("careboard_subscription_frames_sent_total").await - sent_before;
    assert!(
        sent >= (N * CHANGES) as f64,
        "{sent} frames sent for {N} subscribers × {CHANGES} changes"
    );
    assert!(
        executions <= CHANGES as f64,
        "{executions} executions for {CHANGES} Board versions and {N} subscribers"
    );
    assert_eq!(app.metric("careboard_subscription_groups").await, 1.0);
}

/// Several shared subscriptions on one socket, with ids that need JSON escaping: each
/// frame names its own subscription, exactly as the client spelled it, and each
/// subscription's versions strictly increase; a stopped one gets nothing after its
/// `complete`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_socket_with_several_shared_subscriptions_gets_each_under_its_own_escaped_id() {
    let app = TestApp::spawn().await;
    let day = seed(&app).await;
    let ids = ["plain", "quote\"back\\slash", "line\nbreak", "ünï</script>"];
    let mut raw = Raw::open(&app, &app.admin_token.clone()).await;
    // One socket alone in the group too, so the frames are shared bytes with another.
    let mut other = Raw::open(&app, &app.admin_token.clone()).await;
    other.subscribe("plain", &day.board, None).await;
    for id in ids {
        raw.subscribe(id, &day.board, None).await;
    }
    let mut last: std::collections::HashMap<String, i64> = Default::default();
    let mut stopped = false;
    let mut stopped_at = 0;
    let mut target = 0;
    for n in 0..6 {
        let (_, p) = app
            .request_appointment(marked_request(&day.board, n + 1, "reason"))
            .await;
        target = app.projected_version(&day.board, p).await;
        if n == 2 {
            raw.send(json!({"id": ids[3], "type": "complete"})).await;
            stopped = true;
            stopped_at = target;
        }
        // Until every live subscription has shown `target`.
        loop {
            let live: Vec<&str> = ids
                .iter()
                .copied()
                .filter(|id| !(stopped && *id == ids[3]))
                .collect();
            if live.iter().all(|id| last.get(*id) == Some(&target)) {
                break;
            }
            let text = raw
                .next(Duration::from_secs(20))
                .await
                .unwrap_or_else(|| panic!("no frame for {target}: {last:?}"));
            let v: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{text}"));
            let id = v["id"]
                .as_str()
                .unwrap_or_else(|| panic!("{text}"))
                .to_string();
            assert!(
                ids.contains(&id.as_str()),
                "an id the client never sent: {text}"
            );
            if v["type"] == "complete" {
                assert_eq!(id, ids[3], "{text}");
                continue;
            }
            assert_eq!(v["type"], "next", "{text}");
            let version = v["payload"]["data"]["boardChanged"]["version"]
                .as_i64()
                .unwrap_or_else(|| panic!("{text}"));
            let before = last.insert(id.clone(), version).unwrap_or(-1);
            assert!(version > before, "{id}: {version} after {before}");
            if stopped && id == ids[3] {
                // Written before the stop was read: allowed only up to the version the
                // Board had then.
                assert!(
                    version <= stopped_at,
                    "{id} got {version} after its complete"
                );
            }
        }
    }
    assert!(!other.until(target).await.is_empty());
}

/// Resumes into a running group, across a listener reconnect and a rebuild: every
/// subscriber's versions strictly increase, with no duplicates, and all end on the last.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shared_frames_strictly_increase_across_a_listener_reconnect_and_a_rebuild() {
    strictly_increasing(TestApp::spawn().await).await;
}

/// The same with the writer pass in tasks of one socket each.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_writer_tasks_shared_frames_strictly_increase_across_a_reconnect_and_a_rebuild() {
    strictly_increasing(sharded().await).await;
}

/// The same with the writer passes on tokio's blocking threads.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_passes_on_blocking_threads_frames_strictly_increase_across_a_reconnect_and_a_rebuild()
{
    strictly_increasing(on_blocking_threads().await).await;
}

async fn strictly_increasing(app: TestApp) {
    let day = seed(&app).await;
    let mut first = Raw::open(&app, &app.admin_token.clone()).await;
    let mut second = Raw::open(&app, &app.admin_token.clone()).await;
    first.subscribe("1", &day.board, None).await;
    second.subscribe("2", &day.board, None).await;
    let connections = app.live().connections();
    let before = *connections.borrow();
    let mut last = 0;
    for n in 0..12 {
        last = app
            .request_appointment(marked_request(&day.board, n, "reason"))
            .await
            .1;
        if n == 4 {
            let killed = app.kill_listeners().await;
            assert_eq!(killed, 1);
        }
        if n == 8 {
            app.data(
                "mutation { rebuildProjection(name: \"board_view\") { generation } }",
                json!({}),
            )
            .await;
        }
    }
    let v = app.projected_version(&day.board, last).await;
    let a = first.until(v).await;
    // A subscriber that resumes from the middle joins the running group: the current
    // Board first, once. (The middle of the frames before the last: when versions were
    // coalesced down to two frames, `len / 2` was the last one, and a subscriber
    // resuming from `v` rightly got nothing.)
    let resumed_from: Value = serde_json::from_str(&a[(a.len() - 1) / 2]).unwrap();
    let since = resumed_from["payload"]["data"]["boardChanged"]["version"]
        .as_i64()
        .unwrap();
    assert!(
        since < v,
        "resuming from {since}, before {v}: {} frames",
        a.len()
    );
    let mut third = Raw::open(&app, &app.admin_token.clone()).await;
    third.subscribe("3", &day.board, Some(since)).await;
    let resumed = third.until(v).await;
    assert_eq!(resumed.len(), 1, "only the current Board: {resumed:?}");
    second.until(v).await;
    let later = app
        .request_appointment(marked_request(&day.board, 99, "reason"))
        .await
        .1;
    let w = app.projected_version(&day.board, later).await;
    for raw in [&mut first, &mut second, &mut third] {
        let frames = raw.until(w).await;
        assert_eq!(frames.len(), 1, "each new version once: {frames:?}");
        assert!(raw.next(Duration::from_millis(300)).await.is_none());
    }
    assert!(*connections.borrow() > before, "the listener reconnected");
}

/// A socket that stops reading holds no backlog: it misses versions (it gets the newest
/// when it reads again), and the others are not held up by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_socket_that_stops_reading_neither_queues_frames_nor_delays_the_others() {
    slow_socket(TestApp::spawn().await).await;
}

/// The same with the writer pass in tasks of one socket each.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_writer_tasks_a_socket_that_stops_reading_neither_queues_nor_delays() {
    slow_socket(sharded().await).await;
}

/// The same with the writer passes on tokio's blocking threads.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_passes_on_blocking_threads_a_socket_that_stops_reading_neither_queues_nor_delays() {
    slow_socket(on_blocking_threads().await).await;
}

async fn slow_socket(app: TestApp) {
    let day = seed(&app).await;
    // Big frames: the Board's every appointment with its patient fields, so that the
    // kernel's socket buffers (a few MB on loopback) fill after a few dozen of them.
    let long = "a long reason ".repeat(40);
    for n in 0..200 {
        app.request_appointment(marked_request(&day.board, n, &long))
            .await;
    }
    let coordinator = app.token(Who::coordinator());
    let mut slow = Raw::open_with(&app, &coordinator, Some(16 * 1024)).await;
    slow.subscribe("slow", &day.board, None).await;
    let first = slow.next(Duration::from_secs(20)).await.unwrap();
    assert!(first.len() > 100_000, "frames of {} bytes", first.len());
    // From here on `slow` reads nothing.
    let mut fast = Raw::open(&app, &coordinator).await;
    fast.subscribe("fast", &day.board, None).await;
    // One change at a time, each delivered to the reading socket before the next:
    // the group executes every version, so whatever the stalled socket misses was
    // coalesced for it alone.
    const CHANGES: usize = 120;
    let mut delivered = 0;
    let mut slowest = Duration::ZERO;
    let mut final_version = 0;
    for n in 0..CHANGES {
        let (_, p) = app
            .request_appointment(marked_request(&day.board, 1000 + n, &long))
            .await;
        final_version = app.projected_version(&day.board, p).await;
        let started = Instant::now();
        delivered += fast.until(final_version).await.len();
        slowest = slowest.max(started.elapsed());
    }
    // Generous for a busy 2-core machine (each version is a Board of 300 appointments
    // executed and written to both sockets): a socket that held the others up would
    // hold them for good, not for seconds.
    assert!(
        slowest < Duration::from_secs(30),
        "the reading subscriber waited {slowest:?} for a version"
    );
    // The slow one, reading again, gets what its buffers held, then the newest: far
    // fewer frames than versions, strictly increasing, ending on the final one.
    let caught_up = slow.until(final_version).await;
    eprintln!(
        "stalled socket: {} frames; reading socket: {delivered}; slowest {slowest:?}",
        caught_up.len()
    );
    assert!(
        caught_up.len() < delivered / 2,
        "a stalled socket received {} frames, the reading one {delivered}: frames were queued for it",
        caught_up.len()
    );
}

/// Counts only: nothing a frame of it shows needs an access record, so the group's
/// writer pass writes it to every socket itself.
const COUNTS: &str =
    "subscription($b: ID!) { boardChanged(boardId: $b) { version counts { waiting } } }";

/// Subscribers of one group with distinct subscription ids (as graphql-ws clients make
/// them) on both protocols: each frame carries the socket's own id and message type
/// around byte-identical payloads, and the writer pass encodes no whole frame per id
/// (each socket's header and prefix are its own, the payload is shared).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn distinct_subscription_ids_on_both_protocols_share_the_payload_without_an_encoding_each() {
    let encodings = distinct_ids(TestApp::spawn().await).await;
    assert_eq!(
        encodings, 0.0,
        "whole frames encoded by the writer passes: the payload was copied per id"
    );
}

/// The same with the earlier bytes (a whole frame per id and protocol, found by a
/// scan; kept for the benchmark): as correct, one encoding per id and frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_scanned_bytes_distinct_subscription_ids_still_get_their_own_envelopes() {
    let app = TestApp::spawn_with(careboard::config::GraphqlLimits {
        ws_frame_bytes: careboard::config::FrameBytes::Scan,
        ..Default::default()
    })
    .await;
    let encodings = distinct_ids(app).await;
    assert!(encodings >= 6.0 * 3.0, "{encodings} encodings");
}

/// Returns the writer passes' whole-frame encodings over three Board changes.
async fn distinct_ids(app: TestApp) -> f64 {
    let day = seed(&app).await;
    // (protocol, id): one id spelled alike on both protocols, one that needs escaping.
    let subscribers = [
        (
            "graphql-transport-ws",
            "0b5c2a4e-6a41-4f0e-9b1e-2f6d3c1a7e01",
        ),
        ("graphql-transport-ws", "same"),
        ("graphql-transport-ws", "quo\"te"),
        ("graphql-ws", "same"),
        ("graphql-ws", "9d7f1c3b-1e2a-4b5c-8d6e-0f1a2b3c4d5e"),
        ("graphql-ws", "another"),
    ];
    let mut sockets = Vec::new();
    for (protocol, id) in subscribers {
        let mut raw = Raw::open_speaking(&app, &app.admin_token.clone(), None, protocol).await;
        let kind = if protocol == "graphql-ws" {
            "start"
        } else {
            "subscribe"
        };
        raw.send(json!({"id": id, "type": kind, "payload": {"query": COUNTS, "variables": {"b": day.board}}}))
            .await;
        sockets.push(raw);
    }
    // Each socket's frame showing `version` (the first, the current Board, may be
    // older): its id, its type, and its payload as sent.
    async fn frame_at(raw: &mut Raw, version: i64) -> (String, String, String) {
        loop {
            let text = raw
                .next(Duration::from_secs(20))
                .await
                .unwrap_or_else(|| panic!("no frame for version {version}"));
            let v: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{text}"));
            if v["type"] == "ka" {
                continue;
            }
            let got = v["payload"]["data"]["boardChanged"]["version"]
                .as_i64()
                .unwrap_or_else(|| panic!("{text}"));
            assert!(got <= version, "past {version}: {text}");
            if got < version {
                continue;
            }
            let payload = text
                .split_once(",\"payload\":")
                .and_then(|(_, rest)| rest.strip_suffix('}'))
                .unwrap_or_else(|| panic!("{text}"))
                .to_string();
            return (
                v["id"].as_str().unwrap().to_string(),
                v["type"].as_str().unwrap().to_string(),
                payload,
            );
        }
    }
    let (_, p) = app
        .request_appointment(marked_request(&day.board, 1, "reason"))
        .await;
    let v = app.projected_version(&day.board, p).await;
    for raw in &mut sockets {
        frame_at(raw, v).await;
    }
    assert_eq!(app.metric("careboard_subscription_groups").await, 1.0);
    let before = app
        .metric("careboard_subscription_write_pass_encodings_total")
        .await;
    for n in 0..3 {
        let (_, p) = app
            .request_appointment(marked_request(&day.board, n + 2, "reason"))
            .await;
        let v = app.projected_version(&day.board, p).await;
        let mut payloads = Vec::new();
        for (raw, (protocol, id)) in sockets.iter_mut().zip(subscribers) {
            let (got_id, kind, payload) = frame_at(raw, v).await;
            assert_eq!(got_id, id);
            let expected = if protocol == "graphql-ws" {
                "data"
            } else {
                "next"
            };
            assert_eq!(kind, expected, "{protocol}");
            payloads.push(payload);
        }
        assert!(
            payloads.iter().all(|p| p == &payloads[0]),
            "payloads differ: {payloads:?}"
        );
    }
    app.metric("careboard_subscription_write_pass_encodings_total")
        .await
        - before
}
