//! Shared frames: one GraphQL execution and one encoded payload per Board version for
//! every `boardChanged` subscriber that would see the same thing.
//!
//! Subscribers whose `(normalised document, operation name, variables, visibility)` are
//! equal join one [`Group`]. The group runs the subscription once, through the schema's
//! own executor (validation, limits, the permission matrix's edge, masking), encodes
//! each frame's payload once, and publishes it in a `watch` channel: a slow subscriber
//! finds the newest frame there (coalescing), never a backlog.
//!
//! - **Delivery** ([`FrameDelivery::Group`], the default): the group's own task writes
//!   each frame to its sockets in one pass: each socket's websocket header and envelope
//!   prefix (`{"type":…,"id":…,"payload":`, made when it subscribed) and the frame's
//!   payload, encoded once, joined in a buffer the pass reuses and sent in one
//!   non-blocking plain `write` per socket, no task woken ([`crate::ws_out`],
//!   [`FrameBytes::Joined`]; [`FrameBytes::Shared`] writes the three pieces in one
//!   vectored write instead, as frames past [`JOINED_MAX`] do), so the pass is linear in
//!   its sockets whatever ids they chose ([`FrameBytes::Scan`], the earlier whole frame
//!   per (id, protocol) found by a scan, is kept for the benchmark). The pass's counters
//!   are added up per run, not per socket. A socket whose buffer is
//!   full, or that has bytes waiting, gets the frame in its [`Slot`] instead (the newest
//!   replaces an older one there) and its own task writes it when the socket drains.
//!   A group of more sockets than `--ws-write-shard` (250) splits the pass into tasks of
//!   that many, run on the runtime's workers at once and awaited before the next frame.
//!   With [`PassThread::Blocking`] (selectable, off) each run goes to tokio's blocking
//!   threads instead, so a long pass holds no runtime worker.
//!   [`FrameDelivery::Socket`] (kept for the benchmark's before/after) wakes every
//!   socket's task per frame, which splices its own subscription id around the payload.
//!
//! - **Visibility** is the caller's scope (role, and the provider id, the patient id, or
//!   the coordinator's regions and specialties): the only fact of the principal that
//!   authorization and masking of a Board read (`matrix::authorize`,
//!   `matrix::may_see_patient_fields`). Two principals with equal scopes get equal
//!   answers, so a frame built for one is one the other may see.
//! - **`sinceVersion`** given as a nullable variable is left out of the key: the group
//!   runs without it and each subscriber skips the versions it has (the current Board
//!   first when newer, then every later one, strictly increasing).
//! - **Access records**: the group does not record; each frame carries what it
//!   disclosed, and every subscriber's socket records it under its own principal before
//!   sending (the access log commits those records in groups, off the shared path). A
//!   frame whose record cannot be written is not sent (fail closed).
//! - `boardEvents` and `appointmentChanged` stay per subscriber: a feed resumes from each
//!   subscriber's own cursor, and an appointment has few watchers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use async_graphql::parser::types::{DocumentOperations, OperationType, Selection};
use async_graphql::{Data, Request, Response, ServerError, Value as GqlValue};
use futures::stream::{BoxStream, StreamExt};
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::watch;
use tokio_stream::wrappers::WatchStream;

use bytes::Bytes;

pub use crate::config::{FrameBytes, FrameDelivery, ParkedFrames, PassBudget, PassThread};
use crate::graphql::access::{Caller, Recipient};
use crate::graphql::tap::{Disclosed, FrameTap};
use crate::graphql::CareboardSchema;
use crate::metrics::FrameMetrics;
use crate::ws_out::{SocketOut, Written};

/// One encoded frame of a group, shared by every subscriber in it.
pub struct Frame {
    /// The Board version shown; `None` for an answer that ends the subscription (a
    /// refusal or an error before the first Board).
    pub version: Option<i64>,
    /// What it disclosed, for each receiver's access record.
    pub disclosed: Option<Disclosed>,
    /// Nothing follows this frame.
    pub last: bool,
    /// The response is a request error (no data, errors before execution: variables
    /// that do not fit, say): the protocol answers it with an `error` message, not a
    /// result.
    pub refused: bool,
    /// The GraphQL response, encoded once, and the envelope's closing brace: every
    /// socket's bytes are its own header and prefix, then these
    /// ([`FrameBytes::Joined`], [`FrameBytes::Shared`]). `None`: the group ended
    /// without a response. The response is kept only here ([`Frame::payload`]): a
    /// group holds its newest frame, as large as its Board's document.
    tail: Option<Box<str>>,
}

impl Frame {
    fn new(
        version: Option<i64>,
        payload: Option<String>,
        disclosed: Option<Disclosed>,
        last: bool,
    ) -> Self {
        // Held as long as the group's newest frame: no spare capacity with it.
        let tail = payload.map(|mut p| {
            p.push('}');
            p.into_boxed_str()
        });
        Frame {
            version,
            disclosed,
            last,
            refused: false,
            tail,
        }
    }

    /// The GraphQL response, encoded once (`None`: the group ended without one).
    pub fn payload(&self) -> Option<&str> {
        // Less the closing brace (one byte: a character boundary).
        self.tail.as_deref().map(|tail| &tail[..tail.len() - 1])
    }
}

/// What makes two subscriptions share a group.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GroupKey {
    document: String,
    operation_name: Option<String>,
    variables: String,
    visibility: String,
}

/// A subscription that can join a group: its key, the request the group runs, and the
/// version this subscriber already has.
pub struct Shareable {
    key: GroupKey,
    request: Request,
    since: Option<i64>,
}

/// Every group of this process.
#[derive(Clone, Default)]
pub struct FrameHub {
    inner: Arc<HubInner>,
}

#[derive(Default)]
struct HubInner {
    /// Each running group under its key, with the number it started as (a group that
    /// ends removes its own entry, never a successor's).
    groups: Mutex<HashMap<GroupKey, (u64, Weak<Group>)>>,
    started: std::sync::atomic::AtomicU64,
    metrics: FrameMetrics,
    /// Sockets per task of a writer pass (0: one task writes them all).
    write_shard: usize,
    /// How a writer pass makes each socket's bytes.
    bytes: FrameBytes,
    /// Who writes a newer frame to a socket with a frame parked for its task.
    parked: ParkedFrames,
    /// Whether writer passes count their writes against tokio's cooperative budget.
    budget: PassBudget,
    /// Where writer passes run.
    thread: PassThread,
}

/// How a group's writer passes go: sockets per task, the bytes per socket, who writes
/// a newer frame to a socket with one parked, the cooperative budget, and the threads
/// the passes run on.
#[derive(Clone, Copy)]
struct PassSettings {
    shard: usize,
    bytes: FrameBytes,
    parked: ParkedFrames,
    budget: PassBudget,
    thread: PassThread,
}

/// One shared execution. Members hold it; when the last one lets go, the execution
/// stops and the group leaves the hub.
pub struct Group {
    key: GroupKey,
    hub: Weak<HubInner>,
    frames: watch::Receiver<Option<Arc<Frame>>>,
    /// The subscriptions its writer pass writes to.
    members: Arc<Members>,
    task: tokio::task::AbortHandle,
}

type Members = Mutex<Vec<Arc<Slot>>>;

/// One socket's subscription in a group: where the group's writer pass writes, and where
/// a frame waits when the socket cannot take it now.
pub struct Slot {
    id: Arc<str>,
    legacy: bool,
    /// `{"type":…,"id":…,"payload":` for this subscription, made when it joined.
    prefix: Bytes,
    out: Arc<SocketOut>,
    state: Mutex<SlotState>,
}

struct SlotState {
    /// The newest version written or waiting (this subscriber's `sinceVersion` at first).
    last: i64,
    /// A frame for the socket's task to write (only ever the newest).
    parked: Option<Arc<Frame>>,
    /// The socket's task is writing parked frames: the pass parks, so order holds.
    in_flight: bool,
    /// The subscription has ended on the socket: nothing more is written for it.
    closed: bool,
}

/// What a writer pass hands a socket to write now.
#[derive(Clone, Copy)]
enum Direct<'a> {
    /// Nothing: the socket's task handles the frame.
    No,
    /// The whole frame's bytes, encoded for this socket's (id, protocol).
    Whole(&'a [u8]),
    /// The frame's shared tail, to write after the socket's own header and prefix.
    Tail(&'a [u8]),
    /// The same, the three joined in one buffer of the pass and sent in one plain write
    /// ([`FrameBytes::Joined`]).
    Joined(&'a [u8]),
}

/// Frames up to this many bytes (header, prefix and tail) are joined in one buffer per
/// socket ([`FrameBytes::Joined`]); longer ones go out in a vectored write, where the
/// copy would cost more than the system call's extra pieces.
pub const JOINED_MAX: usize = 4096;

/// What a run of a writer pass counts, added to the shared counters once per run (a
/// counter touched per socket is a cache line the runtime's workers pass between them
/// thousands of times per frame).
#[derive(Default)]
struct Tally {
    sent: u64,
    parked: u64,
    parked_waiting: u64,
    behind: u64,
}

impl Tally {
    fn add_to(&self, metrics: &FrameMetrics) {
        for (counter, n) in [
            (&metrics.frames_sent, self.sent),
            (&metrics.pass_parked, self.parked),
            (&metrics.pass_parked_waiting, self.parked_waiting),
            (&metrics.pass_behind, self.behind),
        ] {
            if n > 0 {
                counter.inc_by(n);
            }
        }
    }
}

thread_local! {
    /// The buffer a writer pass joins each socket's bytes in ([`FrameBytes::Joined`]):
    /// one per thread, reused for every socket and frame.
    static JOINED: std::cell::RefCell<Vec<u8>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

impl Slot {
    /// The websocket header for a frame whose tail is `tail_len` bytes.
    fn header(&self, tail_len: usize) -> ([u8; 10], usize) {
        crate::ws_out::text_header(self.prefix.len() + tail_len)
    }

    /// Writes this socket's header, prefix and `tail` joined in the thread's buffer, in
    /// one plain write (a vectored one past [`JOINED_MAX`]).
    fn write_joined(&self, tail: &[u8]) -> Written {
        let (header, used) = self.header(tail.len());
        let parts: [&[u8]; 3] = [&header[..used], &self.prefix, tail];
        if used + self.prefix.len() + tail.len() > JOINED_MAX {
            return self.out.try_write_parts(&parts);
        }
        JOINED.with(|joined| {
            let Ok(mut joined) = joined.try_borrow_mut() else {
                return self.out.try_write_parts(&parts);
            };
            joined.clear();
            for part in parts {
                joined.extend_from_slice(part);
            }
            self.out.try_write_now(&joined)
        })
    }

    /// Hands `frame` to this subscription: written now when `direct` bytes are given
    /// and the socket takes them, else parked for the socket's task. With `parked` at
    /// [`ParkedFrames::Pass`], a socket whose task has not yet taken an older parked
    /// frame is written too: the older frame is dropped (the newest wins), and the task,
    /// already woken, finds nothing left.
    fn deliver(
        &self,
        frame: &Arc<Frame>,
        direct: Direct<'_>,
        parked: ParkedFrames,
        metrics: &FrameMetrics,
    ) {
        let mut tally = Tally::default();
        self.deliver_counted(frame, direct, parked, &mut tally);
        tally.add_to(metrics);
    }

    /// [`Slot::deliver`], counting into `tally` (a writer pass adds it up once per run).
    fn deliver_counted(
        &self,
        frame: &Arc<Frame>,
        direct: Direct<'_>,
        parked: ParkedFrames,
        tally: &mut Tally,
    ) {
        let mut state = self.state.lock().expect("frame slot");
        if state.closed {
            return;
        }
        match frame.version {
            Some(v) if v <= state.last => return,
            _ => {}
        }
        let behind = state.parked.is_some() && !state.in_flight;
        if behind && !matches!(direct, Direct::No) {
            tally.behind += 1;
        }
        let ready = !state.in_flight && (state.parked.is_none() || parked == ParkedFrames::Pass);
        let written = match direct {
            Direct::Whole(bytes) if ready => Some(self.out.try_write_now(bytes)),
            Direct::Tail(tail) if ready => {
                let (header, used) = self.header(tail.len());
                Some(
                    self.out
                        .try_write_parts(&[&header[..used], &self.prefix, tail]),
                )
            }
            Direct::Joined(tail) if ready => Some(self.write_joined(tail)),
            _ => None,
        };
        if let Some(written) = written {
            match written {
                Written::Done | Written::Partly => {
                    if let Some(v) = frame.version {
                        state.last = v;
                    }
                    // An older frame the task has not taken: this one supersedes it.
                    state.parked = None;
                    tally.sent += 1;
                    // The rest of a frame waits in the queue: the socket's task writes it.
                    // (Bytes the task queued meanwhile it flushes itself.)
                    if written == Written::Partly {
                        self.out.wake.notify_one();
                    }
                    return;
                }
                Written::Failed => {
                    self.out.wake.notify_one();
                    return;
                }
                Written::Busy => {
                    tally.parked += 1;
                }
                Written::Waiting => {
                    tally.parked += 1;
                    tally.parked_waiting += 1;
                }
            }
        }
        if let Some(v) = frame.version {
            state.last = v;
        }
        state.parked = Some(frame.clone());
        drop(state);
        self.out.wake.notify_one();
    }
}

/// A socket's hold on its subscription in a group ([`FrameDelivery::Group`]): while it
/// is held, the group writes to the socket; dropped, nothing more is.
pub struct Membership {
    group: Arc<Group>,
    slot: Arc<Slot>,
}

impl Membership {
    /// Queues `frame`'s bytes for this subscription on its socket (the socket's task
    /// calls this, then flushes): header, this subscription's prefix and the frame's
    /// shared tail, copied once into the socket's queue behind what waits. (Not tried
    /// as a write first: a frame is parked mostly because the socket's buffer was full,
    /// and the flush's write is the one attempt it needs.)
    pub fn push(&self, frame: &Frame) {
        if let Some(tail) = &frame.tail {
            let (header, used) = self.slot.header(tail.len());
            self.slot
                .out
                .push_parts(&[&header[..used], &self.slot.prefix, tail.as_bytes()]);
        }
    }

    /// The frame waiting for the socket's task to write, if any. Call until `None`: the
    /// group's writer pass parks (rather than writes) until then, so frames keep their
    /// order.
    pub fn take(&self) -> Option<Arc<Frame>> {
        let mut state = self.slot.state.lock().expect("frame slot");
        let frame = state.parked.take();
        state.in_flight = frame.is_some();
        frame
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.slot.state.lock().expect("frame slot").closed = true;
        self.group
            .members
            .lock()
            .expect("frame members")
            .retain(|s| !Arc::ptr_eq(s, &self.slot));
    }
}

/// `{"type":…,"id":…,"payload":…}` around a payload already encoded; the id JSON-escaped.
pub fn envelope(legacy: bool, id: &str, payload: &str) -> String {
    let mut text = envelope_prefix(legacy, id);
    text.reserve(payload.len() + 1);
    text.push_str(payload);
    text.push('}');
    text
}

/// The envelope up to its payload: `{"type":…,"id":…,"payload":`.
pub fn envelope_prefix(legacy: bool, id: &str) -> String {
    let kind = if legacy { "data" } else { "next" };
    let id = serde_json::to_string(id).unwrap_or_else(|_| "\"\"".into());
    let mut text = String::with_capacity(id.len() + 40);
    text.push_str("{\"type\":\"");
    text.push_str(kind);
    text.push_str("\",\"id\":");
    text.push_str(&id);
    text.push_str(",\"payload\":");
    text
}

/// Writes `frame` to every member: a frame that ends the group, or whose disclosures
/// each receiver must record first, is parked for the sockets' tasks; any other goes
/// out now: each socket's header and prefix, then the frame's shared tail.
///
/// With `shard` > 0 and more members than that, the members are split into runs of
/// `shard`, each written by a task of its own on the runtime's workers (this task
/// writes the first run); the pass returns when every run is done, so the next frame's
/// pass never overtakes this one on a socket. Each socket is in one run, written under
/// its slot's lock, so it still sees one order, the newest version winning.
async fn write_pass(
    members: &Members,
    frame: &Arc<Frame>,
    metrics: &FrameMetrics,
    settings: PassSettings,
) {
    let PassSettings {
        shard,
        bytes,
        parked,
        budget,
        thread,
    } = settings;
    let slots: Vec<Arc<Slot>> = members.lock().expect("frame members").clone();
    let encoded = Arc::new(match bytes {
        FrameBytes::Scan => Encoded::Scan(encode_for(&slots, frame, metrics)),
        FrameBytes::Shared => Encoded::Shared,
        FrameBytes::Joined => Encoded::Joined,
    });
    // Each write of a pass is a poll of the socket's I/O resource, which tokio counts
    // against the task's cooperative budget (128 per poll): past it, every further write
    // returns `Pending` without trying, and the socket would be parked for its task as
    // if its buffer were full. A pass is synchronous and bounded by its sockets, so it
    // runs outside the budget.
    let run = (parked, budget);
    if thread == PassThread::Blocking {
        write_pass_blocking(slots, frame, encoded, metrics, (shard, parked)).await;
        return;
    }
    if shard == 0 || slots.len() <= shard {
        write_run_in(run, &slots, frame, &encoded, metrics).await;
        return;
    }
    let slots: Arc<[Arc<Slot>]> = slots.into();
    let mut runs = Vec::with_capacity(slots.len() / shard);
    for start in (shard..slots.len()).step_by(shard) {
        let (slots, frame, encoded, metrics) = (
            slots.clone(),
            frame.clone(),
            encoded.clone(),
            metrics.clone(),
        );
        runs.push(tokio::spawn(async move {
            let end = (start + shard).min(slots.len());
            write_run_in(run, &slots[start..end], &frame, &encoded, &metrics).await;
        }));
    }
    write_run_in(run, &slots[..shard], frame, &encoded, metrics).await;
    for run in runs {
        // A run that panicked has written what it could; the sockets it missed get the
        // next version.
        let _ = run.await;
    }
}

/// A writer pass whose runs ([`PassThread::Blocking`]) each go to tokio's blocking
/// threads: one run of all `slots`, or runs of `shard` when there are more, at once;
/// returns when every run is done, as [`write_pass`] does. The kernel shares the cores
/// between those threads and the runtime's workers, so the listener, the projector and
/// requests are not left waiting for a worker until the pass ends. (A blocking thread
/// has no cooperative budget: every socket with room is written.)
async fn write_pass_blocking(
    slots: Vec<Arc<Slot>>,
    frame: &Arc<Frame>,
    encoded: Arc<Encoded>,
    metrics: &FrameMetrics,
    (shard, parked): (usize, ParkedFrames),
) {
    let slots: Arc<[Arc<Slot>]> = slots.into();
    let size = if shard == 0 {
        slots.len().max(1)
    } else {
        shard
    };
    let runs: Vec<_> = (0..slots.len())
        .step_by(size)
        .map(|start| {
            let (slots, frame, encoded, metrics) = (
                slots.clone(),
                frame.clone(),
                encoded.clone(),
                metrics.clone(),
            );
            off_the_workers(move || {
                let end = (start + size).min(slots.len());
                write_run(&slots[start..end], &frame, &encoded, parked, &metrics);
            })
        })
        .collect();
    for run in runs {
        // A run that panicked has written what it could; the sockets it missed get the
        // next version.
        let _ = run.await;
    }
}

/// Runs `job` on tokio's blocking threads (not a runtime worker).
fn off_the_workers(job: impl FnOnce() + Send + 'static) -> tokio::task::JoinHandle<()> {
    tokio::task::spawn_blocking(job)
}

/// [`write_run`], outside tokio's cooperative budget unless `budget` says otherwise.
async fn write_run_in(
    (parked, budget): (ParkedFrames, PassBudget),
    slots: &[Arc<Slot>],
    frame: &Arc<Frame>,
    encoded: &Encoded,
    metrics: &FrameMetrics,
) {
    match budget {
        PassBudget::Unconstrained => {
            tokio::task::coop::unconstrained(async {
                write_run(slots, frame, encoded, parked, metrics);
            })
            .await
        }
        PassBudget::Coop => write_run(slots, frame, encoded, parked, metrics),
    }
}

/// How a pass finds each socket's bytes.
enum Encoded {
    /// Whole frames per (subscription id, protocol), found by a scan (the earlier path).
    Scan(Vec<(Arc<str>, bool, Bytes)>),
    /// Each socket's own header and prefix, then the frame's shared tail.
    Shared,
    /// The same, joined in one buffer per socket ([`FrameBytes::Joined`]).
    Joined,
}

/// Whether `frame` goes out from the writer pass (else every socket's task handles it:
/// its disclosures are recorded per receiver first, or it ends the group).
fn direct(frame: &Frame) -> bool {
    frame.payload().is_some() && frame.disclosed.is_none() && !frame.last
}

/// The websocket bytes of `frame` for each (subscription id, protocol) among `slots`,
/// when it goes out directly (none when every socket's task must handle it).
fn encode_for(
    slots: &[Arc<Slot>],
    frame: &Frame,
    metrics: &FrameMetrics,
) -> Vec<(Arc<str>, bool, Bytes)> {
    let mut encoded: Vec<(Arc<str>, bool, Bytes)> = Vec::new();
    let Some(payload) = frame.payload().filter(|_| direct(frame)) else {
        return encoded;
    };
    for slot in slots {
        if !encoded
            .iter()
            .any(|(id, legacy, _)| *id == slot.id && *legacy == slot.legacy)
        {
            let text = envelope(slot.legacy, &slot.id, payload);
            metrics.pass_encodings.inc();
            encoded.push((
                slot.id.clone(),
                slot.legacy,
                crate::ws_out::text_frame(&text),
            ));
        }
    }
    encoded
}

/// Hands `frame` to each of `slots`, timed for the pass's metrics.
fn write_run(
    slots: &[Arc<Slot>],
    frame: &Arc<Frame>,
    encoded: &Encoded,
    parked: ParkedFrames,
    metrics: &FrameMetrics,
) {
    let started = std::time::Instant::now();
    let mut tally = Tally::default();
    match encoded {
        Encoded::Scan(encoded) => {
            for slot in slots {
                let bytes = encoded
                    .iter()
                    .find(|(id, legacy, _)| *id == slot.id && *legacy == slot.legacy)
                    .map_or(Direct::No, |(_, _, bytes)| Direct::Whole(&bytes[..]));
                slot.deliver_counted(frame, bytes, parked, &mut tally);
            }
        }
        Encoded::Shared | Encoded::Joined => {
            let direct = match &frame.tail {
                Some(tail) if direct(frame) => match encoded {
                    Encoded::Joined => Direct::Joined(tail.as_bytes()),
                    _ => Direct::Tail(tail.as_bytes()),
                },
                _ => Direct::No,
            };
            for slot in slots {
                slot.deliver_counted(frame, direct, parked, &mut tally);
            }
        }
    }
    tally.add_to(metrics);
    metrics.pass_sockets.inc_by(slots.len() as u64);
    metrics
        .pass_nanos
        .inc_by(u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX));
}

impl Drop for Group {
    fn drop(&mut self) {
        self.task.abort();
        if let Some(hub) = self.hub.upgrade() {
            let mut groups = hub.groups.lock().expect("frame groups");
            if groups
                .get(&self.key)
                .is_some_and(|(_, g)| g.strong_count() == 0)
            {
                groups.remove(&self.key);
            }
        }
    }
}

impl FrameHub {
    /// A hub whose groups split their writer passes into tasks of `shard` sockets each
    /// (0: one task writes every socket of a group).
    pub fn with_write_shard(shard: usize) -> Self {
        Self::with_settings(
            shard,
            FrameBytes::Joined,
            ParkedFrames::Pass,
            PassBudget::Unconstrained,
        )
    }

    /// This hub with its writer passes run as `thread` says (before any group starts).
    pub fn with_pass_thread(mut self, thread: PassThread) -> Self {
        Arc::get_mut(&mut self.inner)
            .expect("a hub is given its pass threads before it is shared")
            .thread = thread;
        self
    }

    /// As [`FrameHub::with_write_shard`], each socket's bytes made as `bytes` says, and
    /// sockets with a frame parked for their task written as `parked` says, the passes'
    /// writes inside tokio's cooperative budget or not as `budget` says.
    pub fn with_settings(
        shard: usize,
        bytes: FrameBytes,
        parked: ParkedFrames,
        budget: PassBudget,
    ) -> Self {
        FrameHub {
            inner: Arc::new(HubInner {
                write_shard: shard,
                bytes,
                parked,
                budget,
                ..HubInner::default()
            }),
        }
    }

    pub fn metrics(&self) -> &FrameMetrics {
        &self.inner.metrics
    }

    /// Groups running now.
    pub fn groups(&self) -> usize {
        let groups = self.inner.groups.lock().expect("frame groups");
        groups
            .values()
            .filter(|(_, g)| g.strong_count() > 0)
            .count()
    }

    /// Joins (or starts) the group of `share`, executing as `caller` when it starts.
    /// The stream yields the frames this subscriber is to receive: newer than its
    /// `sinceVersion`, each version once, and ends after a last frame
    /// ([`FrameDelivery::Socket`]: the socket's task writes each).
    pub fn join(
        &self,
        schema: &CareboardSchema,
        share: Shareable,
        caller: &Caller,
        recipient: Arc<Recipient>,
    ) -> BoxStream<'static, Delivery> {
        let since = share.since;
        member(self.group_for(schema, &share, caller), since, recipient)
    }

    /// Joins (or starts) the group of `share` as subscription `id` of the socket whose
    /// way out is `out` ([`FrameDelivery::Group`]): the group writes its frames there
    /// itself, and parks those the socket's task must handle (waking it).
    pub fn join_socket(
        &self,
        schema: &CareboardSchema,
        share: Shareable,
        caller: &Caller,
        (id, legacy): (Arc<str>, bool),
        out: Arc<SocketOut>,
    ) -> Membership {
        let group = self.group_for(schema, &share, caller);
        let prefix = Bytes::from(envelope_prefix(legacy, &id));
        let slot = Arc::new(Slot {
            id,
            legacy,
            prefix,
            out,
            state: Mutex::new(SlotState {
                last: share.since.unwrap_or(-1),
                parked: None,
                in_flight: false,
                closed: false,
            }),
        });
        group
            .members
            .lock()
            .expect("frame members")
            .push(slot.clone());
        // The group's newest frame, if this subscriber lacks it: parked, since its
        // socket's task is the one running now. A frame published meanwhile is either
        // this one or written by a pass that already counts this slot (versions dedupe).
        let current = group.frames.borrow().clone();
        if let Some(frame) = current {
            slot.deliver(&frame, Direct::No, self.inner.parked, &self.inner.metrics);
        }
        Membership { group, slot }
    }

    fn group_for(
        &self,
        schema: &CareboardSchema,
        share: &Shareable,
        caller: &Caller,
    ) -> Arc<Group> {
        let mut groups = self.inner.groups.lock().expect("frame groups");
        match groups.get(&share.key).and_then(|(_, g)| g.upgrade()) {
            Some(group) => group,
            None => {
                let number = self
                    .inner
                    .started
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let group = self.start(schema, share, caller, number);
                groups.insert(share.key.clone(), (number, Arc::downgrade(&group)));
                group
            }
        }
    }

    fn start(
        &self,
        schema: &CareboardSchema,
        share: &Shareable,
        caller: &Caller,
        number: u64,
    ) -> Arc<Group> {
        let (sender, frames) = watch::channel(None);
        let tap = Arc::new(FrameTap::default());
        let mut data = Data::default();
        data.insert(caller.clone());
        if let Caller::Verified(p) = caller {
            data.insert(p.clone());
        }
        data.insert(crate::graphql::RequestContext {
            actor: match caller {
                Caller::Verified(p) => p.subject.clone(),
                Caller::Unchecked => "anonymous".into(),
            },
            correlation_id: uuid::Uuid::new_v4().to_string(),
            operation_name: share.request.operation_name.clone(),
        });
        data.insert(tap.clone());
        let mut request = Request::new(share.request.query.clone());
        request.operation_name = share.request.operation_name.clone();
        request.variables = share.request.variables.clone();
        let stream = schema.execute_stream_with_session_data(request, Arc::new(data));
        let hub = Arc::downgrade(&self.inner);
        let key = share.key.clone();
        let metrics = self.inner.metrics.clone();
        let members: Arc<Members> = Arc::default();
        let task = tokio::spawn(run_group(
            stream,
            tap,
            (sender, members.clone()),
            hub.clone(),
            (key.clone(), number),
            (
                metrics,
                PassSettings {
                    shard: self.inner.write_shard,
                    bytes: self.inner.bytes,
                    parked: self.inner.parked,
                    budget: self.inner.budget,
                    thread: self.inner.thread,
                },
            ),
        ));
        Arc::new(Group {
            key,
            hub,
            frames,
            members,
            task: task.abort_handle(),
        })
    }
}

/// Runs a group's execution: each response encoded once and published.
async fn run_group(
    mut stream: BoxStream<'static, Response>,
    tap: Arc<FrameTap>,
    (sender, members): (watch::Sender<Option<Arc<Frame>>>, Arc<Members>),
    hub: Weak<HubInner>,
    (key, number): (GroupKey, u64),
    (metrics, shard): (FrameMetrics, PassSettings),
) {
    metrics.groups.inc();
    struct Running(Gauge);
    impl Drop for Running {
        fn drop(&mut self) {
            self.0.dec();
        }
    }
    let _running = Running(metrics.groups.clone());
    // A group that ends leaves the hub first: whoever subscribes next starts afresh.
    let leave = || {
        if let Some(hub) = hub.upgrade() {
            let mut groups = hub.groups.lock().expect("frame groups");
            if groups.get(&key).is_some_and(|(n, _)| *n == number) {
                groups.remove(&key);
            }
        }
    };
    while let Some(mut response) = stream.next().await {
        metrics.executions.inc();
        let (version, disclosed) = tap.take();
        crate::graphql::settle_errors(&mut response);
        let payload = match serde_json::to_string(&response) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode a shared frame");
                break;
            }
        };
        // No Board shown: the answer refused or failed the subscription; it is its last.
        let last = version.is_none();
        if last {
            leave();
        }
        let frame = Arc::new(Frame {
            refused: last && crate::graphql::request_failed(&response),
            ..Frame::new(version, Some(payload), disclosed, last)
        });
        sender.send_replace(Some(frame.clone()));
        write_pass(&members, &frame, &metrics, shard).await;
        if last {
            return;
        }
    }
    leave();
    let frame = Arc::new(Frame::new(None, None, None, true));
    sender.send_replace(Some(frame.clone()));
    write_pass(&members, &frame, &metrics, shard).await;
}

/// What a socket sends for a shared subscription.
pub enum Delivery {
    Frame(Arc<Frame>),
    /// An answer of this subscriber's own (its access record could not be written).
    Own(Box<Response>),
}

fn member(
    group: Arc<Group>,
    since: Option<i64>,
    recipient: Arc<Recipient>,
) -> BoxStream<'static, Delivery> {
    let frames = WatchStream::new(group.frames.clone());
    async_stream::stream! {
        let _group = group;
        let mut last = since.unwrap_or(-1);
        let mut frames = frames;
        while let Some(slot) = frames.next().await {
            let Some(frame) = slot else { continue };
            match frame.version {
                Some(v) if v <= last => continue,
                Some(v) => last = v,
                None => {}
            }
            if let Some(disclosed) = &frame.disclosed {
                if let Err(e) = recipient.record(disclosed).await {
                    yield Delivery::Own(Box::new(Response::from_errors(vec![e])));
                    break;
                }
            }
            let ends = frame.last;
            if frame.payload().is_some() {
                yield Delivery::Frame(frame);
            }
            if ends {
                break;
            }
        }
    }
    .boxed()
}

/// Whether `request` can share frames with others (a `boardChanged` subscription and
/// nothing else at its root), and its group key if so. `Err`: the request's own
/// `sinceVersion` variable is not an Int (the answer for this subscriber alone).
pub fn shareable(request: &Request, caller: &Caller) -> Result<Option<Shareable>, ServerError> {
    if !request.extensions.is_empty() || !request.uploads.is_empty() {
        return Ok(None);
    }
    let Ok(document) = async_graphql::parser::parse_query(&request.query) else {
        // The executor reports it, with its position.
        return Ok(None);
    };
    let operation = match (&document.operations, request.operation_name.as_deref()) {
        (DocumentOperations::Single(op), _) => op,
        (DocumentOperations::Multiple(ops), Some(name)) => match ops.get(name) {
            Some(op) => op,
            None => return Ok(None),
        },
        (DocumentOperations::Multiple(ops), None) if ops.len() == 1 => {
            ops.values().next().expect("one operation")
        }
        _ => return Ok(None),
    };
    let operation = &operation.node;
    if operation.ty != OperationType::Subscription || !operation.directives.is_empty() {
        return Ok(None);
    }
    let [item] = operation.selection_set.node.items.as_slice() else {
        return Ok(None);
    };
    let Selection::Field(field) = &item.node else {
        return Ok(None);
    };
    if field.node.name.node.as_str() != "boardChanged" || !field.node.directives.is_empty() {
        return Ok(None);
    }
    let mut variables = request.variables.clone();
    let argument = field
        .node
        .get_argument("sinceVersion")
        .map(|v| v.node.clone());
    // A variable at the argument's place (the parser's values are not exported by name:
    // a variable alone resolves to null here and names itself).
    let mut variable = None;
    let literal = argument.map(|value| {
        value.into_const_with(|name| {
            variable = Some(name);
            Ok::<_, std::convert::Infallible>(GqlValue::Null)
        })
    });
    let since = match (literal, variable) {
        (None, _) => None,
        (Some(Ok(GqlValue::Null)), Some(name)) => {
            let Some(definition) = operation
                .variable_definitions
                .iter()
                .find(|d| d.node.name.node == name)
            else {
                return Ok(None);
            };
            if !definition.node.var_type.node.nullable {
                // Part of the key: a required variable cannot be left out of the run.
                match variables.get(&name) {
                    Some(v) => since_value(v)?,
                    None => return Ok(None),
                }
            } else {
                let value = variables.remove(&name).or_else(|| {
                    definition
                        .node
                        .default_value
                        .as_ref()
                        .map(|d| d.node.clone())
                });
                match value {
                    Some(v) => since_value(&v)?,
                    None => None,
                }
            }
        }
        (Some(Ok(GqlValue::Null)), None) => None,
        (Some(Ok(GqlValue::Number(n))), None) => match n.as_i64() {
            Some(n) => Some(n),
            None => return Ok(None),
        },
        _ => return Ok(None),
    };
    let visibility = match caller {
        Caller::Unchecked => "unchecked".to_string(),
        Caller::Verified(p) => match serde_json::to_string(&p.scope) {
            Ok(s) => s,
            Err(_) => return Ok(None),
        },
    };
    let variables_json = match serde_json::to_string(&variables) {
        Ok(v) => v,
        Err(_) => return Ok(None),
    };
    let mut run = Request::new(request.query.clone());
    run.operation_name = request.operation_name.clone();
    run.variables = variables;
    Ok(Some(Shareable {
        key: GroupKey {
            document: normalise(&request.query),
            operation_name: request.operation_name.clone(),
            variables: variables_json,
            visibility,
        },
        request: run,
        since,
    }))
}

fn since_value(value: &GqlValue) -> Result<Option<i64>, ServerError> {
    match value {
        GqlValue::Null => Ok(None),
        GqlValue::Number(n) => n.as_i64().map(Some).ok_or_else(since_error),
        _ => Err(since_error()),
    }
}

fn since_error() -> ServerError {
    let mut e = ServerError::new(
        "Invalid value for argument \"sinceVersion\", expected type \"Int\"",
        None,
    );
    e.extensions
        .get_or_insert_with(Default::default)
        .set("code", crate::error::ErrorCode::Validation.as_str());
    e
}

/// The document with its insignificant parts made uniform: comments and commas dropped,
/// every token separated by one space; strings kept as written. Two documents that
/// normalise alike have the same tokens in the same order.
pub fn normalise(document: &str) -> String {
    let mut out = String::with_capacity(document.len());
    let mut chars = document.chars().peekable();
    let mut word = false;
    let space = |out: &mut String| {
        if !out.is_empty() && !out.ends_with(' ') {
            out.push(' ');
        }
    };
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' | '\n' | '\r' | ',' | '\u{feff}' => word = false,
            '#' => {
                word = false;
                while chars.peek().is_some_and(|c| *c != '\n' && *c != '\r') {
                    chars.next();
                }
            }
            '"' => {
                space(&mut out);
                word = false;
                out.push('"');
                let block = chars.peek() == Some(&'"') && {
                    let mut ahead = chars.clone();
                    ahead.next();
                    ahead.peek() == Some(&'"')
                };
                if block {
                    out.push_str("\"\"");
                    chars.next();
                    chars.next();
                    let mut quotes = 0;
                    while let Some(c) = chars.next() {
                        out.push(c);
                        if c == '\\' {
                            // `\"""` inside a block string is three quotes, not the end:
                            // copied as written.
                            let mut ahead = chars.clone();
                            if (0..3).all(|_| ahead.next() == Some('"')) {
                                out.push_str("\"\"\"");
                                chars = ahead;
                            }
                            quotes = 0;
                            continue;
                        }
                        quotes = if c == '"' { quotes + 1 } else { 0 };
                        if quotes == 3 {
                            break;
                        }
                    }
                } else {
                    while let Some(c) = chars.next() {
                        out.push(c);
                        match c {
                            '\\' => {
                                if let Some(n) = chars.next() {
                                    out.push(n);
                                }
                            }
                            '"' | '\n' | '\r' => break,
                            _ => {}
                        }
                    }
                }
                out.push(' ');
            }
            '!' | '$' | '&' | '(' | ')' | ':' | '=' | '@' | '[' | ']' | '{' | '|' | '}' => {
                space(&mut out);
                word = false;
                out.push(c);
                out.push(' ');
            }
            _ => {
                if !word {
                    space(&mut out);
                }
                word = true;
                out.push(c);
            }
        }
    }
    out.truncate(out.trim_end().len());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_that_differ_only_in_layout_normalise_alike() {
        let a =
            "subscription($id: ID!) { boardChanged(boardId: $id) { version counts { waiting } } }";
        let b = "subscription ( $id : ID! ) {\n  # the Board\n  boardChanged(boardId: $id,) {\n    version,\n    counts { waiting }\n  }\n}\n";
        assert_eq!(normalise(a), normalise(b));
        assert_ne!(
            normalise("{ a { b } }"),
            normalise("{ ab { } }"),
            "words are not glued together"
        );
        assert_ne!(
            normalise(r#"{ f(x: "a  b") }"#),
            normalise(r#"{ f(x: "a b") }"#),
            "strings are kept as written"
        );
        assert_ne!(
            normalise(r#"{ f(x: "a # b") }"#),
            normalise(r#"{ f(x: "a ") }"#),
            "a hash inside a string is no comment"
        );
        assert_eq!(
            normalise("{ f(x: \"\"\"a \\\"\"\" b\"\"\") }"),
            "{ f ( x : \"\"\"a \\\"\"\" b\"\"\" ) }"
        );
        assert_ne!(
            normalise("{ f(x: \"\"\"a \\\"\"\" b\"\"\") }"),
            normalise("{ f(x: \"\"\"a \\\"\"\"   b\"\"\") }"),
            "spaces after an escaped triple quote are inside the string"
        );
    }

    fn slot_on_duplex() -> (Slot, tokio::io::DuplexStream, crate::ws_out::SocketIo) {
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        let (slot, io) = slot_on(ours);
        (slot, theirs, io)
    }

    /// A graphql-transport-ws subscription `"1"` writing to `stream`, nothing sent yet.
    fn slot_on<S>(stream: S) -> (Slot, crate::ws_out::SocketIo)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
    {
        let (io, out) = crate::ws_out::SocketIo::new(stream);
        let slot = Slot {
            id: Arc::from("1"),
            legacy: false,
            prefix: Bytes::from(envelope_prefix(false, "1")),
            out,
            state: Mutex::new(SlotState {
                last: -1,
                parked: None,
                in_flight: false,
                closed: false,
            }),
        };
        (slot, io)
    }

    fn board_frame(version: i64) -> Arc<Frame> {
        let payload = format!("{{\"data\":{{\"boardChanged\":{{\"version\":{version}}}}}}}");
        Arc::new(Frame::new(Some(version), Some(payload), None, false))
    }

    /// A socket whose task has not yet taken a parked frame: with `Pass`, the next
    /// version goes out from the writer pass and the older one is never written (the
    /// newest wins, one order); with `Task`, the newer frame waits for the task instead.
    #[tokio::test]
    async fn a_newer_frame_for_a_parked_socket_is_written_by_the_pass_and_supersedes_it() {
        use tokio::io::AsyncReadExt;
        let metrics = FrameMetrics::default();
        let (slot, mut theirs, _io) = slot_on_duplex();
        let (first, second) = (board_frame(1), board_frame(2));
        // Parked for the task (as at a join, or when the socket was busy).
        slot.deliver(&first, Direct::No, ParkedFrames::Pass, &metrics);
        let tail = second.tail.clone().expect("a tail");
        slot.deliver(
            &second,
            Direct::Tail(tail.as_bytes()),
            ParkedFrames::Pass,
            &metrics,
        );
        assert_eq!(metrics.pass_behind.get(), 1);
        assert!(
            slot.state.lock().unwrap().parked.is_none(),
            "the older parked frame is dropped"
        );
        let expected = crate::ws_out::text_frame(&envelope(false, "1", second.payload().unwrap()));
        let mut got = vec![0u8; expected.len()];
        theirs.read_exact(&mut got).await.unwrap();
        assert_eq!(got, &expected[..], "version 2 alone, byte for byte");
        // An older version offered later is not written again.
        slot.deliver(
            &first,
            Direct::Tail(tail.as_bytes()),
            ParkedFrames::Pass,
            &metrics,
        );
        assert!(slot.out.is_idle());

        // The earlier path: the newer frame replaces the parked one, for the task.
        let (slot, _theirs, _io) = slot_on_duplex();
        slot.deliver(&first, Direct::No, ParkedFrames::Task, &metrics);
        slot.deliver(
            &second,
            Direct::Tail(tail.as_bytes()),
            ParkedFrames::Task,
            &metrics,
        );
        let parked = slot.state.lock().unwrap().parked.clone();
        assert_eq!(parked.and_then(|f| f.version), Some(2));
    }

    /// A pass's writes are polls of the sockets' I/O, which tokio counts against the
    /// task's cooperative budget (128 per poll): inside it, every socket past the 128th
    /// looked busy and was parked for its task, however empty its buffer. Outside it,
    /// a pass of 300 sockets with room in every buffer writes all 300 itself.
    #[tokio::test]
    async fn a_pass_writes_every_socket_with_room_however_many_it_has() {
        for budget in [PassBudget::Unconstrained, PassBudget::Coop] {
            let metrics = FrameMetrics::default();
            let members: Members = Mutex::default();
            let mut ends = Vec::new();
            for _ in 0..300 {
                let (slot, theirs, io) = slot_on_duplex();
                members.lock().unwrap().push(Arc::new(slot));
                ends.push((theirs, io));
            }
            let settings = PassSettings {
                shard: 0,
                bytes: FrameBytes::Shared,
                parked: ParkedFrames::Pass,
                budget,
                thread: PassThread::Worker,
            };
            write_pass(&members, &board_frame(1), &metrics, settings).await;
            let (parked, sent) = (metrics.pass_parked.get(), metrics.frames_sent.get());
            assert_eq!(parked + sent, 300, "{budget:?}");
            if budget == PassBudget::Unconstrained {
                assert_eq!(parked, 0, "every socket had room");
            } else {
                assert!(parked >= 100, "the earlier path parked {parked} of 300");
            }
        }
    }

    /// A socket end that notes the thread of every write it is offered.
    struct NotedWrites {
        inner: tokio::io::DuplexStream,
        threads: Arc<Mutex<Vec<std::thread::ThreadId>>>,
    }

    impl tokio::io::AsyncRead for NotedWrites {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl tokio::io::AsyncWrite for NotedWrites {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            self.threads
                .lock()
                .unwrap()
                .push(std::thread::current().id());
            std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
        }

        fn poll_flush(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.inner).poll_flush(cx)
        }

        fn poll_shutdown(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    /// With [`PassThread::Blocking`] every write of a pass is made on tokio's blocking
    /// threads, never on the runtime's (here a current-thread runtime: the test's own
    /// thread), in one run or in runs of `shard`; every socket gets the frame, byte for
    /// byte, none parked. With [`PassThread::Worker`] the same pass writes on the
    /// runtime's thread (the earlier path, so the first half fails without the change).
    #[tokio::test]
    async fn a_pass_on_blocking_threads_writes_every_socket_off_the_runtimes_threads() {
        use tokio::io::AsyncReadExt;
        let runtime_thread = std::thread::current().id();
        for (thread, shard) in [
            (PassThread::Blocking, 0),
            (PassThread::Blocking, 100),
            (PassThread::Worker, 0),
        ] {
            let metrics = FrameMetrics::default();
            let members: Members = Mutex::default();
            let threads = Arc::new(Mutex::new(Vec::new()));
            let mut ends = Vec::new();
            for _ in 0..300 {
                let (ours, theirs) = tokio::io::duplex(64 * 1024);
                let noted = NotedWrites {
                    inner: ours,
                    threads: threads.clone(),
                };
                let (slot, io) = slot_on(noted);
                members.lock().unwrap().push(Arc::new(slot));
                ends.push((theirs, io));
            }
            let settings = PassSettings {
                shard,
                bytes: FrameBytes::Shared,
                parked: ParkedFrames::Pass,
                budget: PassBudget::Unconstrained,
                thread,
            };
            let frame = board_frame(7);
            write_pass(&members, &frame, &metrics, settings).await;
            let label = format!("{thread:?}, shard {shard}");
            assert_eq!(metrics.frames_sent.get(), 300, "{label}");
            assert_eq!(metrics.pass_parked.get(), 0, "{label}");
            let expected =
                crate::ws_out::text_frame(&envelope(false, "1", frame.payload().unwrap()));
            for (theirs, _) in &mut ends {
                let mut got = vec![0u8; expected.len()];
                theirs.read_exact(&mut got).await.unwrap();
                assert_eq!(got, &expected[..], "{label}");
            }
            let threads = threads.lock().unwrap();
            assert!(threads.len() >= 300, "{label}");
            let on_runtime = threads.iter().filter(|t| **t == runtime_thread).count();
            match thread {
                PassThread::Blocking => assert_eq!(on_runtime, 0, "{label}"),
                PassThread::Worker => assert_eq!(on_runtime, threads.len(), "{label}"),
            }
        }
    }

    /// A socket end that counts the plain and the vectored writes it is offered.
    struct CountedWrites {
        inner: tokio::io::DuplexStream,
        plain: Arc<std::sync::atomic::AtomicUsize>,
        vectored: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl tokio::io::AsyncRead for CountedWrites {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl tokio::io::AsyncWrite for CountedWrites {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            self.plain
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
        }

        fn poll_write_vectored(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            bufs: &[std::io::IoSlice<'_>],
        ) -> std::task::Poll<std::io::Result<usize>> {
            self.vectored
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // All of it or nothing, as a socket with room does.
            let all: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
            std::pin::Pin::new(&mut self.inner).poll_write(cx, &all)
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.inner).poll_flush(cx)
        }

        fn poll_shutdown(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    /// With [`FrameBytes::Joined`] (the default) a pass sends each socket's frame in one
    /// plain write of its header, prefix and the payload joined, byte-identical to the
    /// frame encoded whole, with no vectored write; a frame past [`JOINED_MAX`] goes out
    /// in one vectored write instead, as every frame does with [`FrameBytes::Shared`].
    /// The pass's counters, added up per run, count every socket.
    #[tokio::test]
    async fn joined_bytes_go_out_in_one_plain_write_per_socket() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::io::AsyncReadExt;
        assert_eq!(FrameBytes::default(), FrameBytes::Joined);
        let big = "x".repeat(JOINED_MAX);
        for (bytes, padding) in [
            (FrameBytes::Joined, ""),
            (FrameBytes::Joined, big.as_str()),
            (FrameBytes::Shared, ""),
        ] {
            let metrics = FrameMetrics::default();
            let members: Members = Mutex::default();
            let (plain, vectored) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
            let mut ends = Vec::new();
            for _ in 0..20 {
                let (ours, theirs) = tokio::io::duplex(64 * 1024);
                let counted = CountedWrites {
                    inner: ours,
                    plain: plain.clone(),
                    vectored: vectored.clone(),
                };
                let (slot, io) = slot_on(counted);
                members.lock().unwrap().push(Arc::new(slot));
                ends.push((theirs, io));
            }
            let settings = PassSettings {
                shard: 0,
                bytes,
                parked: ParkedFrames::Pass,
                budget: PassBudget::Unconstrained,
                thread: PassThread::Worker,
            };
            let payload = format!(
                "{{\"data\":{{\"boardChanged\":{{\"version\":3,\"pad\":\"{padding}\"}}}}}}"
            );
            let frame = Arc::new(Frame::new(Some(3), Some(payload), None, false));
            write_pass(&members, &frame, &metrics, settings).await;
            let label = format!("{bytes:?}, {} bytes of padding", padding.len());
            assert_eq!(metrics.frames_sent.get(), 20, "{label}");
            assert_eq!(metrics.pass_sockets.get(), 20, "{label}");
            let expected =
                crate::ws_out::text_frame(&envelope(false, "1", frame.payload().unwrap()));
            for (theirs, _) in &mut ends {
                let mut got = vec![0u8; expected.len()];
                theirs.read_exact(&mut got).await.unwrap();
                assert!(got == expected[..], "{label}: byte for byte");
            }
            let (plain, vectored) = (
                plain.load(Ordering::Relaxed),
                vectored.load(Ordering::Relaxed),
            );
            if bytes == FrameBytes::Joined && padding.is_empty() {
                assert_eq!((plain, vectored), (20, 0), "{label}");
            } else {
                assert_eq!((plain, vectored), (0, 20), "{label}");
            }
        }
    }

    fn principal(scope: crate::identity::Scope) -> Caller {
        Caller::Verified(crate::identity::Principal::new("s", "n", scope))
    }

    fn request(query: &str, variables: serde_json::Value) -> Request {
        Request::new(query).variables(async_graphql::Variables::from_json(variables))
    }

    #[test]
    fn only_a_lone_board_changed_subscription_is_shared_and_since_version_stays_out_of_the_key() {
        let caller = Caller::Unchecked;
        let q = "subscription($b: ID!, $s: Int) { boardChanged(boardId: $b, sinceVersion: $s) { version } }";
        let one = shareable(&request(q, serde_json::json!({"b": "x", "s": 3})), &caller)
            .unwrap()
            .unwrap();
        let two = shareable(&request(q, serde_json::json!({"b": "x"})), &caller)
            .unwrap()
            .unwrap();
        assert_eq!(one.key, two.key);
        assert_eq!((one.since, two.since), (Some(3), None));
        let other = shareable(&request(q, serde_json::json!({"b": "y"})), &caller)
            .unwrap()
            .unwrap();
        assert_ne!(one.key, other.key, "another Board");
        assert!(
            shareable(
                &request(q, serde_json::json!({"b": "x", "s": "3"})),
                &caller
            )
            .is_err(),
            "a sinceVersion that is no Int is refused"
        );
        for q in [
            "subscription($b: ID!) { boardEvents(boardId: $b) { id } }",
            "subscription($b: ID!) { a: boardChanged(boardId: $b) { version } b: boardChanged(boardId: $b) { version } }",
            "subscription($b: ID!) { boardChanged(boardId: $b) @include(if: true) { version } }",
            "query { board(id: \"x\") { version } }",
        ] {
            assert!(
                shareable(&request(q, serde_json::json!({"b": "x"})), &caller)
                    .unwrap()
                    .is_none(),
                "{q}"
            );
        }
    }

    #[test]
    fn visibility_is_the_scope_so_different_scopes_never_share() {
        use crate::identity::Scope;
        let q = "subscription { boardChanged(boardId: \"x\") { version } }";
        let key = |caller: &Caller| shareable(&Request::new(q), caller).unwrap().unwrap().key;
        let p1 = principal(Scope::Provider {
            provider_id: uuid::Uuid::from_u128(1),
        });
        let p2 = principal(Scope::Provider {
            provider_id: uuid::Uuid::from_u128(2),
        });
        let tx = principal(Scope::Coordinator {
            regions: Some(["TX".to_string()].into()),
            specialties: None,
        });
        let all = principal(Scope::Coordinator {
            regions: None,
            specialties: None,
        });
        let keys = [
            key(&p1),
            key(&p2),
            key(&tx),
            key(&all),
            key(&principal(Scope::Admin)),
            key(&Caller::Unchecked),
        ];
        for (i, a) in keys.iter().enumerate() {
            for b in &keys[i + 1..] {
                assert_ne!(a, b);
            }
        }
        let mut same = principal(Scope::Provider {
            provider_id: uuid::Uuid::from_u128(1),
        });
        if let Caller::Verified(p) = &mut same {
            p.subject = "another person, same provider".into();
        }
        assert_eq!(key(&p1), key(&same));
    }
}
