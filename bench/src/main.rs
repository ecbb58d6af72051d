//! Benchmark harness: runs a scenario against its own Careboard and PostgreSQL and
//! reports rates and latencies next to a baseline measured in the same run.
//!
//! `cargo run --release --bin careboard-bench -- all --seconds 10`

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use sqlx::PgPool;

use careboard::app::{self, RunningServer};
use careboard::commands::{self, CommandOptions, OpenBoard, RequestAppointment};
use careboard::config::GraphqlLimits;
use careboard::event_store::unit_of_work::CommandMeta;
use careboard::event_store::{CommandPath, EventStore};
use careboard::postgres::{self, ClusterOptions, Durability, EmbeddedCluster};

mod append;
mod asof;
mod ceiling;
mod fanout;
mod lean;
mod mixed;
mod project;
mod subscribe;

/// One server setting of the one-Board latency rows (`--latency-variants`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LatencyVariant {
    /// The server's defaults: writer passes on the runtime's workers, in tasks of
    /// `--write-shard` sockets.
    Default,
    /// Each run of a writer pass on tokio's blocking threads, in runs of
    /// `--write-shard` sockets (`CAREBOARD_WS_PASS_THREAD=blocking`).
    PassBlocking,
    /// As `pass-blocking`, one run per pass whatever its sockets.
    PassBlockingOne,
    /// Four runtime workers on the machine's cores (`CAREBOARD_RUNTIME_WORKERS=4`).
    Workers4,
    /// The default path with the writer passes' earlier bytes: each socket's header,
    /// prefix and the shared payload in one vectored write
    /// (`CAREBOARD_WS_FRAME_BYTES=shared`), where the default joins them in one plain
    /// write.
    SharedBytes,
    /// The default path with each websocket's bytes through the upgraded connection's
    /// layers and `tokio::io::split`'s lock (`CAREBOARD_WS_SOCKET_IO=upgraded`, the
    /// earlier path).
    Upgraded,
    /// The default path with each websocket's bytes written on the accepted TCP stream
    /// itself (`CAREBOARD_WS_SOCKET_IO=raw`, the server's default), named.
    Raw,
    /// The default path with `TCP_NODELAY` on each websocket's stream
    /// (`CAREBOARD_WS_SOCKET_IO=raw-nodelay`).
    Nodelay,
}

impl LatencyVariant {
    fn env(self, shard: &str) -> Vec<(&'static str, String)> {
        match self {
            LatencyVariant::Default => vec![],
            LatencyVariant::PassBlocking => vec![
                ("CAREBOARD_WS_PASS_THREAD", "blocking".into()),
                ("CAREBOARD_WS_WRITE_SHARD", shard.into()),
            ],
            LatencyVariant::PassBlockingOne => vec![
                ("CAREBOARD_WS_PASS_THREAD", "blocking".into()),
                ("CAREBOARD_WS_WRITE_SHARD", "0".into()),
            ],
            LatencyVariant::Workers4 => vec![("CAREBOARD_RUNTIME_WORKERS", "4".into())],
            LatencyVariant::SharedBytes => vec![("CAREBOARD_WS_FRAME_BYTES", "shared".into())],
            LatencyVariant::Upgraded => vec![("CAREBOARD_WS_SOCKET_IO", "upgraded".into())],
            LatencyVariant::Raw => vec![("CAREBOARD_WS_SOCKET_IO", "raw".into())],
            LatencyVariant::Nodelay => vec![("CAREBOARD_WS_SOCKET_IO", "raw-nodelay".into())],
        }
    }
}

/// How the wide saturation rows' subscribers read (`--saturation-readers`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ReaderKind {
    Woken,
    Swept,
}

/// One wide saturation row (`--wide-variants`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum WideVariant {
    OneTask,
    OneTaskScan,
    Tasks,
    ScanSame,
    ScanDistinct,
    SharedDistinct,
    /// `shared-distinct` with each socket's header, prefix and the payload joined in
    /// one buffer of the pass and sent in one plain write (the server's default bytes),
    /// on the accepted TCP stream itself (`CAREBOARD_WS_SOCKET_IO=raw`).
    JoinedDistinct,
    /// `joined-distinct` with each socket's bytes through the upgraded connection's
    /// layers and `tokio::io::split`'s lock (the earlier path; the default writes on
    /// the accepted TCP stream itself).
    JoinedUpgraded,
    /// `joined-distinct` with `TCP_NODELAY` on each websocket's stream
    /// (`CAREBOARD_WS_SOCKET_IO=raw-nodelay`).
    JoinedNodelay,
    /// `joined-upgraded` with the matcher reading every kept
    /// stream of the Board forward before each decision, the waiting appointments
    /// included while no provider is READY (`CAREBOARD_MATCHER_READS=one-read`, the
    /// earlier path): in this row every change is a request that waits.
    MatcherOneRead,
    Ceiling,
    /// `tasks` the earlier way: the pass's writes inside tokio's cooperative budget
    /// (past 128 writes in a task, sockets look busy and are parked), and a newer frame
    /// for a socket whose task has a frame parked left to that task (woken again).
    TasksCoop,
    /// `tasks` outside the budget, parked sockets still left to their task.
    TasksParkedTask,
}

impl WideVariant {
    /// Sockets per writer task, frame bytes, distinct subscription ids.
    fn server(self, shard: usize) -> (usize, &'static str, bool) {
        match self {
            WideVariant::OneTask => (0, "shared", false),
            WideVariant::OneTaskScan => (0, "scan", false),
            WideVariant::Tasks
            | WideVariant::Ceiling
            | WideVariant::TasksCoop
            | WideVariant::TasksParkedTask => (shard, "shared", false),
            WideVariant::ScanSame => (shard, "scan", false),
            WideVariant::ScanDistinct => (shard, "scan", true),
            WideVariant::SharedDistinct => (shard, "shared", true),
            WideVariant::JoinedDistinct
            | WideVariant::JoinedUpgraded
            | WideVariant::JoinedNodelay
            | WideVariant::MatcherOneRead => (shard, "joined", true),
        }
    }

    /// Who writes a newer frame to a socket with a frame parked for its task, and
    /// whether the passes' writes count against tokio's cooperative budget.
    fn parked(self) -> (&'static str, &'static str) {
        match self {
            WideVariant::TasksCoop => ("task", "coop"),
            WideVariant::TasksParkedTask => ("task", "unconstrained"),
            _ => ("pass", "unconstrained"),
        }
    }

    /// What each websocket's bytes go through on the server.
    fn socket_io(self) -> &'static str {
        match self {
            WideVariant::JoinedDistinct => "raw",
            WideVariant::JoinedNodelay => "raw-nodelay",
            _ => "upgraded",
        }
    }

    /// How the server's matcher reads a kept Board forward.
    fn matcher_reads(self) -> &'static str {
        match self {
            WideVariant::MatcherOneRead => "one-read",
            _ => "shifts-first",
        }
    }

    fn label(self, shard: usize, round: usize) -> String {
        match self {
            WideVariant::OneTask => format!("before: one writer task per group, round {round}"),
            WideVariant::OneTaskScan => format!(
                "one id, before: whole frames scanned per id, one writer task per group, round {round}"
            ),
            WideVariant::Tasks => format!("after: writer tasks of {shard} sockets, round {round}"),
            WideVariant::ScanSame => format!(
                "one id, before: whole frames scanned per id, writer tasks of {shard} sockets, round {round}"
            ),
            WideVariant::ScanDistinct => format!(
                "distinct ids, before: whole frames scanned per id, writer tasks of {shard} sockets, round {round}"
            ),
            WideVariant::SharedDistinct => format!(
                "distinct ids, after: payload shared, prefix per socket, writer tasks of {shard} sockets, round {round}"
            ),
            WideVariant::JoinedDistinct => format!(
                "distinct ids, now: header, prefix and payload joined per socket, one plain write on the TCP stream itself, writer tasks of {shard} sockets, round {round}"
            ),
            WideVariant::JoinedUpgraded => format!(
                "distinct ids, joined bytes through the upgraded connection's layers (before), writer tasks of {shard} sockets, round {round}"
            ),
            WideVariant::JoinedNodelay => format!(
                "distinct ids, joined bytes on the TCP stream with TCP_NODELAY, writer tasks of {shard} sockets, round {round}"
            ),
            WideVariant::MatcherOneRead => format!(
                "distinct ids, joined bytes through the upgraded connection's layers, before: the matcher reads every waiting appointment forward on each request, writer tasks of {shard} sockets, round {round}"
            ),
            WideVariant::Ceiling => format!(
                "ceiling: bare tokio writer, no Careboard, tasks of {shard} sockets, round {round}"
            ),
            WideVariant::TasksCoop => format!(
                "before: writer tasks of {shard} sockets inside the cooperative budget, parked sockets left to their task, round {round}"
            ),
            WideVariant::TasksParkedTask => format!(
                "writer tasks of {shard} sockets outside the budget, parked sockets left to their task, round {round}"
            ),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// Storage-level appends (commands without HTTP) vs pgbench INSERT + UPDATE.
    Append,
    /// GraphQL mutations over HTTP vs the same pgbench baseline.
    Mutate,
    /// Projector rebuild throughput vs a keyset read; lag at half the max append rate.
    Project,
    /// The `project` scenario's `board_view` rebuild rows alone.
    Rebuild,
    /// Commit-to-frame latency with many subscribers, memory per idle subscription,
    /// vs a bare NOTIFY ping-pong.
    Subscribe,
    /// `board(asOf)` latency at 100 / 10k / 100k events, with and without snapshots,
    /// vs the plain read of the same rows.
    Asof,
    /// `board(id)` queries over HTTP vs a plain axum handler running the same SELECT.
    Query,
    /// Writers, readers and subscribers at once on one server while its Boards grow:
    /// throughput of the last window vs the first.
    Mixed,
    /// Every scenario above.
    All,
}

#[derive(Debug, Clone, Parser)]
#[command(
    name = "careboard-bench",
    about = "Careboard benchmarks with same-run baselines"
)]
struct Args {
    #[arg(value_enum, default_value = "all")]
    scenario: Scenario,
    /// Seconds each measurement runs.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Concurrent clients (and pgbench clients).
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// PostgreSQL to use; without it a private cluster is started in --data-dir.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    #[arg(long, default_value = "target/bench-pg")]
    data_dir: PathBuf,
    /// Events in the log the `project` scenario rebuilds.
    #[arg(long, default_value_t = 1_000_000)]
    events: usize,
    /// The `project` lag rows, in order, each on a database of its own: `lockstep`,
    /// `loops` (durable, unpaced), `tuned` (async commits, paced followers, the signal
    /// forwarded through the supervisor: the default schedule), `direct` (`tuned` woken
    /// straight from the daemon, `board_view` on a connection of its own), `relaxed`
    /// (`tuned` with the followers paced at 50 ms), `lock-table` (`tuned` with the
    /// earlier `pg_locks` fence and a NOTIFY statement of its own), `epoch` (the epoch
    /// fence, NOTIFY on its own), `fused` (the epoch fence, NOTIFY in the checkpoint
    /// statement), `lone` (the epoch fence, a batch holding no event of its projection
    /// moving its checkpoint in one autocommit statement: the defaults, as `tuned`),
    /// `lone-fused` (both), `analyzed` (`lone` with young projection tables analyzed
    /// as they double), `custom` (`lone` with each batch transaction's statements
    /// planned for their parameters), `folded` (`lone` with `board_view`'s batch in two
    /// round trips fewer), `analyzed-folded` (both), `keyed` (`analyzed` with the Board
    /// headers' locked read by primary key), `counters` (`keyed` with a batch of
    /// appointment events writing only the headers' counters), `stepped` (`counters`
    /// in lockstep rounds), `paired` (`counters` with each touched appointment read
    /// under its own Board), `flat` (`paired` with `appointment_durations` folded from
    /// its flat columns, no document kept), `snapshots-behind` (`flat` with the live
    /// Board snapshots written behind each batch: the daemon's defaults now), and on
    /// top of it `behind-direct` (woken directly, `board_view` on a connection of its
    /// own), `behind-folded` (`board_view`'s batch in fewer round trips, the NOTIFY in
    /// the checkpoint statement) and `behind-relaxed` (followers paced at 50 ms).
    /// `lock-table`, `epoch` and
    /// `fused` move every checkpoint in a transaction. Pairs alternate by default so
    /// the machine's drift falls on both.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = vec![
        project::Schedule::Flat,
        project::Schedule::SnapshotsBehind,
        project::Schedule::SnapshotsBehind,
        project::Schedule::Flat,
    ])]
    lag_schedules: Vec<project::Schedule>,
    /// The `board_view` rebuild rounds, in order: `before` (events through `Value`
    /// trees, folded onto a copy), `text` (decoded from the jsonb text, onto a copy),
    /// `in-place` (decoded from the text, folded in place), each with pglz-compressed
    /// documents; `lz4` (`in-place` with lz4, migration 0013); `assembled` (`lz4` with
    /// Board snapshots put together in the database); `lean` (`assembled` with the
    /// rebuild's own read of the log, without `metadata`); `unjoined` (`lean` with the
    /// events read alone and their streams looked up once per batch); `behind`
    /// (`unjoined` with Board snapshots written behind each batch); `built` (`behind`
    /// with each snapshot made by one `jsonb_build_object`: the current path).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = vec![
        project::RebuildPath::Behind,
        project::RebuildPath::Built,
        project::RebuildPath::Built,
        project::RebuildPath::Behind,
    ])]
    rebuild_paths: Vec<project::RebuildPath>,
    /// Appends per second of the `project` lag rows; without it, half the measured
    /// maximum append rate (on a busy machine a fixed rate keeps runs comparable).
    #[arg(long)]
    lag_rate: Option<f64>,
    /// Seconds of appends at the lag rows' rate before each row's measured
    /// `--seconds`: a fresh database's first appends open the pool's connections and
    /// plan their statements (the warm-up's lag is printed beside the row, not counted).
    #[arg(long, default_value_t = 1.0)]
    lag_warmup: f64,
    /// Load `pg_stat_statements` in the bench's own cluster and report, for each lag
    /// row, PostgreSQL's time and calls per append by statement, WAL per append
    /// (`pg_stat_wal`) and checkpoints. Needs the private cluster (no `DATABASE_URL`)
    /// or one that preloads the extension.
    #[arg(long)]
    pg_stats: bool,
    /// Subscribers on one Board in the `subscribe` latency measurement.
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    /// Board changes per second in the `subscribe` latency measurement.
    #[arg(long, default_value_t = 100.0)]
    change_rate: f64,
    /// Board sizes (events) of the `asof` scenario.
    #[arg(long, value_delimiter = ',', default_values_t = vec![100usize, 10_000, 100_000])]
    asof_sizes: Vec<usize>,
    /// Writer counts of the storage-level `append` matrix (0: skip the matrix).
    #[arg(long, value_delimiter = ',', default_values_t = vec![1usize, 8, 32])]
    append_writers: Vec<usize>,
    /// The command paths the `append` scenario alternates, in this order, twice:
    /// `before` (five round trips, the Board locked for the decision), `earlier` (the
    /// general statement planned per command, a ping per acquire), `planned` (the
    /// Board read before each decision), `kept` (open Boards kept in memory at their
    /// version, checked by the append's guard: the current path).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = vec![
        AppendPath::Before,
        AppendPath::Earlier,
        AppendPath::Planned,
        AppendPath::Kept,
    ])]
    append_paths: Vec<AppendPath>,
    /// Subscribers of the spread measurement (0: skip it), over `--spread-boards` Boards
    /// changing `--change-rate` times a second in all.
    #[arg(long, default_value_t = 10_000)]
    spread_subscribers: usize,
    #[arg(long, default_value_t = 100)]
    spread_boards: usize,
    /// Seconds of the same changes before each commit-to-frame row's timed window, on
    /// the same sockets, not measured (a fresh server's first seconds are not the row).
    #[arg(long, default_value_t = 2)]
    warmup_seconds: u64,
    /// Closed-loop writers of the saturation measurement (0: skip it), with
    /// `--subscribers` on one Board.
    #[arg(long, default_value_t = 8)]
    saturation_writers: usize,
    /// What changes the Boards in the wide saturation rows, each entry a pass over
    /// `--wide-variants`: 0 for `--saturation-writers` in a closed loop (as many
    /// changes as the server takes, competing with the fan-out for the cores), R > 0
    /// for R mutations a second in all, open loop, as the commit-to-frame rows send
    /// them (issue 15's 24k frames/s was delivered at 100 changes/s).
    #[arg(long, value_delimiter = ',', default_values_t = vec![0.0])]
    saturation_rates: Vec<f64>,
    /// How the wide saturation rows' subscribers read, each entry a pass over
    /// `--wide-variants` for every `--saturation-rates` entry: `woken` (a task per
    /// socket, woken by the reactor and reading at each frame's arrival, as an event
    /// loop per client would) or `swept` (one thread draining every socket each
    /// `--sweep-ms`: a frame's arrival wakes no one, so the subscribers take less of
    /// the two cores the server shares with them, as clients on other machines take
    /// none).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = vec![ReaderKind::Woken, ReaderKind::Swept])]
    saturation_readers: Vec<ReaderKind>,
    /// The sweep's period of `--saturation-readers swept`, in milliseconds.
    #[arg(long, default_value_t = 50)]
    sweep_ms: u64,
    /// Rounds of the one-Board latency and saturation rows, each round the earlier
    /// per-socket frame delivery (before) then the group's writer pass (after), on
    /// servers of their own; 0: the writer pass only.
    #[arg(long, default_value_t = 2)]
    delivery_rounds: usize,
    /// Sockets per task of the sharded writer pass, the third variant of each delivery
    /// round (0: no sharded rounds).
    #[arg(long, default_value_t = 250)]
    write_shard: usize,
    /// Subscribers of the wide saturation measurement (0: skip it), over
    /// `--wide-boards` Boards, one writer pass in one task (before) then in tasks of
    /// `--write-shard` sockets (after), `--delivery-rounds` rounds.
    #[arg(long, default_value_t = 5_000)]
    wide_subscribers: usize,
    #[arg(long, default_value_t = 1)]
    wide_boards: usize,
    /// The wide saturation rows, each on a server of its own, in this order,
    /// `--delivery-rounds` times: `one-task` and `tasks` (one writer task per group,
    /// tasks of `--write-shard` sockets), `one-task-scan` (one task, the earlier bytes,
    /// id "1": beside `one-task`, the writer pass's time per socket without the wait
    /// for a core that tasks add), `scan-same` / `scan-distinct` (the earlier
    /// bytes: a whole frame encoded per subscription id, found per socket by a scan;
    /// subscribers all with id "1" / each with a UUID of its own), `shared-distinct`
    /// (each socket's header and prefix, the payload shared, UUID ids; `tasks` is the
    /// same with id "1"), `joined-distinct` (as `shared-distinct`, each socket's bytes
    /// joined in one buffer and sent in one plain write: the server's default bytes,
    /// written on the accepted TCP stream itself, `CAREBOARD_WS_SOCKET_IO=raw`),
    /// `joined-upgraded` (as `joined-distinct`, written through the upgraded
    /// connection's layers and `tokio::io::split`'s lock: the earlier path, which the
    /// wide rows before `joined-distinct` keep), `joined-nodelay` (as
    /// `joined-distinct`, `TCP_NODELAY` on each websocket's stream), `matcher-one-read`
    /// (`joined-upgraded` with the matcher's earlier read of every waiting appointment
    /// on each request), `ceiling` (a bare tokio writer, no Careboard, the same frames
    /// to the same number of lean readers at full speed).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = vec![
        WideVariant::OneTask,
        WideVariant::Tasks,
        WideVariant::ScanSame,
        WideVariant::ScanDistinct,
        WideVariant::SharedDistinct,
        WideVariant::JoinedDistinct,
        WideVariant::Ceiling,
    ])]
    wide_variants: Vec<WideVariant>,
    /// Adds a round of the one-Board latency and saturation rows, before the sharded
    /// one, the earlier way: the writer passes' writes inside tokio's cooperative
    /// budget, and a newer frame for a socket whose task has a frame parked left to
    /// that task.
    #[arg(long)]
    parked_before: bool,
    /// Rounds of the one-Board latency row with the server's runtime at tokio's default
    /// event interval (before) then at `--event-interval` (after), alternating on
    /// servers of their own; 0: skip.
    #[arg(long, default_value_t = 0)]
    event_interval_rounds: usize,
    /// The server runtime's event interval of the `--event-interval-rounds` after rows
    /// (`CAREBOARD_RUNTIME_EVENT_INTERVAL`).
    #[arg(long, default_value_t = 7)]
    event_interval: u32,
    /// More one-Board latency rows, each on a server of its own, in the order given
    /// (repeat names to alternate them: `default,pass-blocking,pass-blocking,default`):
    /// `default` (the server's defaults), `pass-blocking` (writer passes on tokio's
    /// blocking threads, runs of `--write-shard` sockets), `pass-blocking-one` (the
    /// same, one run per pass), `workers4` (four runtime workers), `shared-bytes` (the
    /// writer passes' earlier bytes, one vectored write per socket). None: skip.
    #[arg(long, value_enum, value_delimiter = ',')]
    latency_variants: Vec<LatencyVariant>,
    /// The spread row (`--spread-subscribers` over `--spread-boards` Boards) on servers
    /// of their own, one per name, in the order given, with the `--latency-variants`
    /// names' settings. None: one spread row on the last one-Board latency row's server.
    #[arg(long, value_enum, value_delimiter = ',')]
    spread_variants: Vec<LatencyVariant>,
    /// Idle subscriptions held open to measure memory per subscription (0: skip it).
    #[arg(long, default_value_t = 10_000)]
    idle: usize,
    /// Seconds the `mixed` scenario runs, and the window it reports by.
    #[arg(long, default_value_t = 120)]
    mixed_seconds: u64,
    #[arg(long, default_value_t = 10)]
    mixed_window: u64,
    /// Writers, readers and `boardChanged` subscribers of the `mixed` scenario.
    #[arg(long, default_value_t = 16)]
    mixed_writers: usize,
    #[arg(long, default_value_t = 16)]
    mixed_readers: usize,
    #[arg(long, default_value_t = 200)]
    mixed_subscribers: usize,
    /// Boards of the `mixed` scenario, and providers on each.
    #[arg(long, default_value_t = 4)]
    mixed_boards: usize,
    #[arg(long, default_value_t = 8)]
    mixed_providers: usize,
    /// Which server paths the `mixed` scenario runs, one after the other on databases
    /// of their own: `before` (no Board kept in memory, readers fetch every
    /// appointment of a Board), `kept` (Boards kept in memory, readers fetch a page of
    /// 50, each new version's contents made whole and the live fan-out keeping its own
    /// copy), `scan` (as `kept`, with each version's contents made from the previous
    /// one's and what changed, shared with the live fan-out; reads of part of a Board
    /// visit all its rows and the matcher reads each Board from the log per batch) and
    /// `after` (as `scan`, with index-backed partial reads and Boards kept by the
    /// matcher).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = vec![MixedPath::Scan, MixedPath::After])]
    mixed_paths: Vec<MixedPath>,
    /// Where the JSON results go.
    #[arg(long, default_value = "target/bench/results.json")]
    json_out: PathBuf,
    /// Authentication on the servers under test: `on` (the default, as Careboard
    /// ships: clients send tokens from a development issuer the harness creates),
    /// `off`, or `ab`: `mutate`, `query` and `subscribe` run both ways in this run, and
    /// the report compares them.
    #[arg(long, value_enum, default_value = "on")]
    auth: AuthMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum AppendPath {
    Before,
    Earlier,
    Planned,
    Kept,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum MixedPath {
    Before,
    Kept,
    Scan,
    After,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum AuthMode {
    On,
    Off,
    Ab,
}

impl AuthMode {
    fn name(self) -> &'static str {
        match self {
            AuthMode::On => "on",
            AuthMode::Off => "off",
            AuthMode::Ab => "ab",
        }
    }
}

/// The tokens of a run: a development issuer in a directory of its own, and the
/// coordinator token every client sends (none with `--auth off`).
#[derive(Clone)]
pub(crate) struct BenchAuth {
    pub issuer: Option<Arc<careboard::identity::dev_issuer::DevIssuer>>,
    pub token: Option<String>,
    pub dir: PathBuf,
}

impl BenchAuth {
    fn new(switch: careboard::config::Switch) -> Result<Self> {
        let dir =
            std::env::temp_dir().join(format!("careboard-bench-issuer-{}", std::process::id()));
        if switch == careboard::config::Switch::Off {
            return Ok(Self {
                issuer: None,
                token: None,
                dir,
            });
        }
        let issuer = careboard::identity::dev_issuer::DevIssuer::load_or_create(&dir)?;
        let token = issuer.issue(&careboard::identity::dev_issuer::TokenArgs {
            role: careboard::identity::Role::Coordinator,
            name: "Bench".into(),
            subject: None,
            provider_id: None,
            patient_id: None,
            regions: vec![],
            specialties: vec![],
            ttl: Duration::from_secs(24 * 3600),
        })?;
        Ok(Self {
            issuer: Some(Arc::new(issuer)),
            token: Some(token),
            dir,
        })
    }

    /// `state` verifying this run's tokens (or none).
    fn apply(&self, state: &mut careboard::state::AppState) {
        state.auth = self
            .issuer
            .as_ref()
            .map(|i| careboard::identity::Verifier::new(i.verifier_config()));
    }

    /// An HTTP client that sends the token with every request.
    pub fn client(&self, idle_per_host: usize) -> Result<reqwest::Client> {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = &self.token {
            headers.insert(
                reqwest::header::AUTHORIZATION,
                format!("Bearer {token}").parse()?,
            );
        }
        Ok(reqwest::Client::builder()
            .pool_max_idle_per_host(idle_per_host)
            .default_headers(headers)
            .build()?)
    }
}

/// One measured line of the report.
struct Row {
    scenario: String,
    rate: f64,
    latency: Option<Histogram<u64>>,
    errors: u64,
    baseline_name: String,
    /// 0 when the measurement has no baseline (latency only).
    baseline_rate: f64,
}

impl Row {
    /// A row measured against no baseline (latency or a plain figure).
    fn unbased(scenario: String, rate: f64, latency: Option<Histogram<u64>>, errors: u64) -> Self {
        Row {
            scenario,
            rate,
            latency,
            errors,
            baseline_name: "-".into(),
            baseline_rate: 0.0,
        }
    }

    fn ratio(&self) -> f64 {
        if self.baseline_rate > 0.0 {
            self.rate / self.baseline_rate
        } else {
            0.0
        }
    }

    fn to_json(&self) -> Value {
        let latency = self.latency.as_ref().map(|h| {
            json!({
                "p50_ms": h.value_at_quantile(0.50) as f64 / 1000.0,
                "p90_ms": h.value_at_quantile(0.90) as f64 / 1000.0,
                "p99_ms": h.value_at_quantile(0.99) as f64 / 1000.0,
                "p999_ms": h.value_at_quantile(0.999) as f64 / 1000.0,
                "max_ms": h.max() as f64 / 1000.0,
            })
        });
        json!({
            "scenario": self.scenario,
            "rate_per_s": self.rate,
            "latency": latency,
            "errors": self.errors,
            "baseline": self.baseline_name,
            "baseline_rate_per_s": self.baseline_rate,
            "ratio": self.ratio(),
        })
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    {
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        use tracing_subscriber::Layer;
        let env = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
        // The projector's batch events feed the lag rows' split, whatever the log level.
        let batches = tracing_subscriber::filter::Targets::new().with_target(
            careboard::projector::BATCH_TRACE_TARGET,
            tracing::Level::DEBUG,
        );
        tracing_subscriber::registry()
            .with(tracing_subscriber::fmt::layer().with_filter(env))
            .with(project::BatchTrace.with_filter(batches))
            .init();
    }
    let raw: Vec<String> = std::env::args().collect();
    if raw.get(1).map(String::as_str) == Some(ceiling::FLAG) {
        return ceiling::child(&raw[2..]).await;
    }
    let args = Args::parse();
    // The ways the servers under test run, each with the label its rows carry.
    let auths: Vec<(&str, BenchAuth)> = match args.auth {
        AuthMode::On => vec![("", BenchAuth::new(careboard::config::Switch::On)?)],
        AuthMode::Off => vec![("", BenchAuth::new(careboard::config::Switch::Off)?)],
        AuthMode::Ab => vec![
            (
                " [auth off]",
                BenchAuth::new(careboard::config::Switch::Off)?,
            ),
            (" [auth on]", BenchAuth::new(careboard::config::Switch::On)?),
        ],
    };
    println!(
        "authentication on the servers under test: {}",
        match args.auth {
            AuthMode::On => "on (bearer tokens)",
            AuthMode::Off => "off",
            AuthMode::Ab => "off, then on (bearer tokens), compared",
        }
    );
    let (admin_url, cluster) = match &args.database_url {
        Some(url) => (url.clone(), None),
        None => {
            let options = ClusterOptions {
                dir: args.data_dir.clone(),
                durability: Durability::Durable,
                max_connections: 200,
            };
            // Statement statistics only when asked: they cost every statement a little.
            let settings: Vec<String> = if args.pg_stats {
                vec![
                    "shared_preload_libraries=pg_stat_statements".into(),
                    "track_wal_io_timing=on".into(),
                ]
            } else {
                Vec::new()
            };
            let cluster = tokio::task::spawn_blocking(move || {
                EmbeddedCluster::start_with_settings(&options, &settings)
            })
            .await??;
            (cluster.url("postgres"), Some(cluster))
        }
    };
    drop_bench_databases(&admin_url).await?;
    let db_url = fresh_database(&admin_url).await?;
    let pool = postgres::connect(&db_url, 32).await?;
    postgres::migrate(&pool).await?;

    let started = Instant::now();
    let mut rows = Vec::new();
    let want = |s: Scenario| args.scenario == s || args.scenario == Scenario::All;
    let mut max_append = None;
    if want(Scenario::Append) || want(Scenario::Mutate) {
        let pgbench = pgbench_append(&db_url, &pool, args.clients, args.seconds).await?;
        println!(
            "baseline pgbench INSERT+UPDATE, {} clients: {pgbench:.0} tx/s",
            args.clients
        );
        if want(Scenario::Append) {
            // Before and after cutting the command's round trips, alternating twice so
            // that a shift in the machine's load shows up as disagreement between rounds.
            // Main's path before this change: the general append statement (planned
            // again for every command) and a ping on every connection taken from the
            // pool; its own pool, so the ping is the only difference there.
            let pinging = postgres::connect_pinging(&db_url, 32, Duration::ZERO).await?;
            for _ in 0..2 {
                for path in &args.append_paths {
                    let row = match path {
                        AppendPath::Before => append_before_scenario(&pool, &args, pgbench).await?,
                        AppendPath::Earlier => {
                            append_scenario(&pinging, &args, pgbench, CommandPath::General).await?
                        }
                        AppendPath::Planned => {
                            append_scenario(&pool, &args, pgbench, CommandPath::Planned).await?
                        }
                        AppendPath::Kept => {
                            append_scenario(&pool, &args, pgbench, CommandPath::Kept).await?
                        }
                    };
                    if *path == AppendPath::Kept {
                        max_append = Some(max_append.map_or(row.rate, |m: f64| m.max(row.rate)));
                    }
                    rows.push(row);
                }
            }
            for &writers in args.append_writers.iter().filter(|&&w| w > 0) {
                let baseline = if writers == args.clients {
                    pgbench
                } else {
                    pgbench_append(&db_url, &pool, writers, args.seconds).await?
                };
                println!("baseline pgbench INSERT+UPDATE, {writers} clients: {baseline:.0} tx/s");
                for batch in [1, 10] {
                    rows.push(
                        append::own_streams(&pool, writers, batch, args.seconds, baseline).await?,
                    );
                }
                rows.push(append::hot_stream(&pool, writers, args.seconds, baseline).await?);
            }
        }
        if want(Scenario::Mutate) {
            // After the append matrix the database holds far more rows than when the
            // first baseline ran: measure pgbench again on the database as it is now.
            let baseline = if want(Scenario::Append) {
                let b = pgbench_append(&db_url, &pool, args.clients, args.seconds).await?;
                println!(
                    "baseline pgbench INSERT+UPDATE before mutate, {} clients: {b:.0} tx/s",
                    args.clients
                );
                b
            } else {
                pgbench
            };
            // Main's earlier command path (general append statement, a ping per
            // acquire), the Board read before each decision, and the current one (open
            // Boards kept), alternating twice, each on a server of its own.
            let pinging = postgres::connect_pinging(&db_url, 32, Duration::ZERO).await?;
            for round in 0..2 {
                let mut rates = Vec::new();
                for (label, auth) in &auths {
                    let mut row =
                        mutate_scenario(&pinging, &args, auth, baseline, CommandPath::General)
                            .await?;
                    row.scenario = format!(
                        "mutate earlier: general statement, ping per acquire (GraphQL over HTTP, {} clients){label}",
                        args.clients
                    );
                    rows.push(row);
                    let mut row =
                        mutate_scenario(&pool, &args, auth, baseline, CommandPath::Planned).await?;
                    row.scenario = format!(
                        "mutate planned: the Board read before each decision (GraphQL over HTTP, {} clients){label}",
                        args.clients
                    );
                    rows.push(row);
                    let mut row =
                        mutate_scenario(&pool, &args, auth, baseline, CommandPath::Kept).await?;
                    row.scenario.push_str(label);
                    rates.push(row.rate);
                    rows.push(row);
                }
                if let ([off, on], 0) = (&rates[..], round) {
                    rows.push(ab_row("mutate rate", *on, *off));
                }
            }
        }
    }
    eprintln!(
        "[{:.1} s] starting project",
        started.elapsed().as_secs_f64()
    );
    if args.scenario == Scenario::Rebuild {
        rebuild_rows(&admin_url, &args, &mut rows).await?;
    }
    if want(Scenario::Project) {
        let max = match max_append {
            Some(r) => r,
            // A given rate needs no maximum measured.
            None if args.lag_rate.is_some() => 0.0,
            None => {
                let quick = Args {
                    seconds: args.seconds.min(3),
                    ..args.clone()
                };
                append_scenario(&pool, &quick, 0.0, CommandPath::Kept)
                    .await?
                    .rate
            }
        };
        let rate = args.lag_rate.unwrap_or((max / 2.0).max(1.0));
        match args.lag_rate {
            Some(_) => println!("projector lag at {rate:.0} appends/s (given)"),
            None => println!("projector lag at {rate:.0} appends/s (half of {max:.0})"),
        }
        // Lag and rebuild each get a database of their own: the pgbench baseline's
        // bare rows are not events any projection could apply.
        // Each schedule on a database of its own (`--lag-schedules`).
        for &schedule in &args.lag_schedules {
            let label = schedule.label();
            let lag_url = fresh_database(&admin_url).await?;
            let lag_pool = postgres::connect(&lag_url, 32).await?;
            postgres::migrate(&lag_pool).await?;
            let lag = project::lag(
                &lag_pool,
                rate,
                args.seconds,
                Duration::from_secs_f64(args.lag_warmup.max(0.0)),
                schedule,
                args.pg_stats,
            )
            .await?;
            lag_pool.close().await;
            println!("projector stages ({label}), per batch of one projection:");
            for s in &lag.stages {
                println!(
                    "  {:<10} n={:<6} mean {:>7.2} ms  p50 {:>7.2} ms  p99 {:>7.2} ms",
                    s.stage.as_str(),
                    s.count,
                    s.mean_ms,
                    s.p50_ms,
                    s.p99_ms
                );
            }
            println!(
                "  batches read {}, batches applied {}",
                lag.batches_read, lag.batches_applied
            );
            let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.3} ms"));
            println!(
                "  CPU per append: PostgreSQL {}, this process {}",
                ms(lag.cpu.postgres_ms),
                ms(lag.cpu.process_ms)
            );
            if !lag.warmup.is_empty() {
                println!(
                    "  warm-up ({:.1} s, not counted): {} appends, lag p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
                    args.lag_warmup,
                    lag.warmup.len(),
                    lag.warmup.value_at_quantile(0.5) as f64 / 1000.0,
                    lag.warmup.value_at_quantile(0.99) as f64 / 1000.0,
                    lag.warmup.max() as f64 / 1000.0
                );
            }
            println!("  each append's lag taken apart:");
            for (name, h) in [
                ("append transaction, call to commit", &lag.parts.append),
                (
                    "held: commit to the end of every older append",
                    &lag.parts.held,
                ),
                ("after: readable to NOTIFY", &lag.parts.after),
            ] {
                println!(
                    "    {name:<46} p50 {:>7.2} ms  p99 {:>7.2} ms",
                    h.value_at_quantile(0.5) as f64 / 1000.0,
                    h.value_at_quantile(0.99) as f64 / 1000.0
                );
            }
            let split = &lag.parts.split;
            println!(
                "  after, at the board_view batch that applied it ({} of {} notified appends matched):",
                split.matched,
                lag.parts.after.len()
            );
            for (name, h) in [
                ("wait: readable to its read's start", &split.wait),
                ("batch: read's start to commit", &split.batch),
                ("delivery: commit to NOTIFY heard", &split.delivery),
            ] {
                println!(
                    "    {name:<46} p50 {:>7.2} ms  p99 {:>7.2} ms",
                    h.value_at_quantile(0.5) as f64 / 1000.0,
                    h.value_at_quantile(0.99) as f64 / 1000.0
                );
            }
            if let Some(pg) = &lag.pg {
                print_pg_stats(pg, lag.appends);
            }
            rows.push(Row::unbased(
                if args.lag_warmup > 0.0 {
                    format!(
                        "project: lag commit to NOTIFY at {rate:.0} appends/s, {label} (after {:.1} s of warm-up)",
                        args.lag_warmup
                    )
                } else {
                    format!("project: lag commit to NOTIFY at {rate:.0} appends/s, {label}")
                },
                lag.hist.len() as f64 / args.seconds as f64,
                Some(lag.hist),
                0,
            ));
        }
        rebuild_rows(&admin_url, &args, &mut rows).await?;
    }
    eprintln!(
        "[{:.1} s] starting subscribe",
        started.elapsed().as_secs_f64()
    );
    if want(Scenario::Subscribe) {
        let url = fresh_database(&admin_url).await?;
        let baseline = subscribe::notify_ping_pong(&url, 2000).await?;
        rows.push(Row::unbased(
            "subscribe: baseline NOTIFY ping-pong".into(),
            0.0,
            Some(baseline),
            0,
        ));
        let mut p99s = Vec::new();
        let mut server = None;
        // Before and after alternate; the last server started delivers the new way.
        let delivery_variants: &[&str] = if args.write_shard > 0 && args.parked_before {
            &["socket", "group", "shards-task", "shards"]
        } else if args.write_shard > 0 {
            &["socket", "group", "shards"]
        } else {
            &["socket", "group"]
        };
        let mut deliveries: Vec<&str> = delivery_variants.repeat(args.delivery_rounds);
        if deliveries.is_empty() {
            deliveries.push("group");
        }
        let delivery_label = |delivery: &str, round: usize| {
            if args.delivery_rounds == 0 {
                String::new()
            } else if delivery == "socket" {
                format!(", before: per-socket delivery, round {round}")
            } else if delivery == "shards" {
                format!(
                    ", after: group writer pass in tasks of {} sockets, round {round}",
                    args.write_shard
                )
            } else if delivery == "shards-task" {
                format!(
                    ", before: group writer pass in tasks of {} sockets inside the cooperative budget, parked sockets left to their task, round {round}",
                    args.write_shard
                )
            } else {
                format!(", after: group writer pass, round {round}")
            }
        };
        for (label, auth) in &auths {
            let mut first_after = true;
            for (i, delivery) in deliveries.iter().enumerate() {
                drop(server.take());
                let started = start_delivery(&url, auth, delivery, args.write_shard).await?;
                let m = fanout::latency(
                    &started,
                    args.subscribers,
                    1,
                    args.change_rate,
                    Duration::from_secs(args.warmup_seconds),
                    args.seconds,
                )
                .await?;
                println!(
                    "latency{}: server used {:.2} cores, the harness {:.2}, {:.0} frames/s",
                    delivery_label(delivery, i / delivery_variants.len() + 1),
                    m.server_cores,
                    m.harness_cores,
                    m.frames as f64 / args.seconds as f64
                );
                let ms = |h: &hdrhistogram::Histogram<u64>, q: f64| {
                    h.value_at_quantile(q) as f64 / 1000.0
                };
                println!(
                    "  split at the NOTIFY: mutation sent to NOTIFY heard p50 {:.2} / p99 {:.2} ms; \
                     NOTIFY heard to frame p50 {:.2} / p99 {:.2} ms",
                    ms(&m.to_notify, 0.5),
                    ms(&m.to_notify, 0.99),
                    ms(&m.notify_to_frame, 0.5),
                    ms(&m.notify_to_frame, 0.99)
                );
                if *delivery == "group" && first_after {
                    first_after = false;
                    p99s.push(m.latency.value_at_quantile(0.99) as f64 / 1000.0);
                }
                let scenario = format!(
                    "subscribe: commit to frame, {} subscribers, {} changes/s (frames/s){label}{}",
                    args.subscribers,
                    args.change_rate,
                    delivery_label(delivery, i / delivery_variants.len() + 1)
                );
                rows.push(Row::unbased(
                    scenario,
                    m.frames as f64 / args.seconds as f64,
                    Some(m.latency),
                    m.errors,
                ));
                server = Some(started);
            }
        }
        if let [off, on] = p99s[..] {
            rows.push(ab_row("subscribe p99 ms (lower is better)", on, off));
        }
        let interval = args.event_interval.to_string();
        let variants: [(&str, &[(&str, &str)]); 2] = [
            ("before: default event interval", &[]),
            (
                "after: event interval",
                &[("CAREBOARD_RUNTIME_EVENT_INTERVAL", interval.as_str())],
            ),
        ];
        let shard = args.write_shard.to_string();
        for (i, variant) in args.latency_variants.iter().enumerate() {
            let (label, auth) = &auths[auths.len() - 1];
            let env = variant.env(&shard);
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let m = one_board_latency(&url, auth, &env, &args).await?;
            let name = variant
                .to_possible_value()
                .map_or_else(String::new, |v| v.get_name().to_string());
            let ms =
                |h: &hdrhistogram::Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
            println!(
                "latency, {name} (row {}): commit to frame p50 {:.2} / p99 {:.2} ms; mutation sent \
                 to NOTIFY heard p50 {:.2} / p99 {:.2} ms; NOTIFY heard to frame p50 {:.2} / p99 \
                 {:.2} ms; server used {:.2} cores, the harness {:.2}, {:.0} frames/s",
                i + 1,
                ms(&m.latency, 0.5),
                ms(&m.latency, 0.99),
                ms(&m.to_notify, 0.5),
                ms(&m.to_notify, 0.99),
                ms(&m.notify_to_frame, 0.5),
                ms(&m.notify_to_frame, 0.99),
                m.server_cores,
                m.harness_cores,
                m.frames as f64 / args.seconds as f64
            );
            rows.push(Row::unbased(
                format!(
                    "subscribe: commit to frame, {} subscribers, {} changes/s (frames/s){label}, {name}, row {}",
                    args.subscribers,
                    args.change_rate,
                    i + 1
                ),
                m.frames as f64 / args.seconds as f64,
                Some(m.latency),
                m.errors,
            ));
        }
        for round in 1..=args.event_interval_rounds {
            for (which, env) in &variants {
                let (label, auth) = &auths[auths.len() - 1];
                let m = one_board_latency(&url, auth, env, &args).await?;
                let which = if env.is_empty() {
                    which.to_string()
                } else {
                    format!("{which} {interval}")
                };
                let ms = |h: &hdrhistogram::Histogram<u64>, q: f64| {
                    h.value_at_quantile(q) as f64 / 1000.0
                };
                println!(
                    "latency, {which}, round {round}: server used {:.2} cores; mutation sent to \
                     NOTIFY heard p99 {:.2} ms; NOTIFY heard to frame p99 {:.2} ms",
                    m.server_cores,
                    ms(&m.to_notify, 0.99),
                    ms(&m.notify_to_frame, 0.99)
                );
                rows.push(Row::unbased(
                    format!(
                        "subscribe: commit to frame, {} subscribers, {} changes/s (frames/s){label}, {which}, round {round}",
                        args.subscribers, args.change_rate
                    ),
                    m.frames as f64 / args.seconds as f64,
                    Some(m.latency),
                    m.errors,
                ));
            }
        }
        let server = server.context("a subscribe server")?;
        let shard = args.write_shard.to_string();
        for variant in &args.spread_variants {
            if args.spread_subscribers == 0 {
                break;
            }
            let env = variant.env(&shard);
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let own = subscribe::Server::start_with(&url, &auths[auths.len() - 1].1, &env).await?;
            let m = fanout::latency(
                &own,
                args.spread_subscribers,
                args.spread_boards,
                args.change_rate,
                Duration::from_secs(args.warmup_seconds),
                args.seconds,
            )
            .await?;
            drop(own);
            let name = variant
                .to_possible_value()
                .map_or_else(String::new, |v| v.get_name().to_string());
            let p99 = m.latency.value_at_quantile(0.99) as f64 / 1000.0;
            println!(
                "spread, {name}: {} subscribers over {} Boards, commit to frame p99 {p99:.2} ms, {} errors",
                args.spread_subscribers, args.spread_boards, m.errors
            );
            rows.push(Row::unbased(
                format!(
                    "subscribe: commit to frame, {} subscribers over {} Boards, {} changes/s in all (frames/s), {name}",
                    args.spread_subscribers, args.spread_boards, args.change_rate
                ),
                m.frames as f64 / args.seconds as f64,
                Some(m.latency),
                m.errors,
            ));
        }
        if args.spread_subscribers > 0 && args.spread_variants.is_empty() {
            let m = fanout::latency(
                &server,
                args.spread_subscribers,
                args.spread_boards,
                args.change_rate,
                Duration::from_secs(args.warmup_seconds),
                args.seconds,
            )
            .await?;
            let scenario = format!(
                "subscribe: commit to frame, {} subscribers over {} Boards, {} changes/s in all (frames/s)",
                args.spread_subscribers, args.spread_boards, args.change_rate
            );
            rows.push(Row::unbased(
                scenario,
                m.frames as f64 / args.seconds as f64,
                Some(m.latency),
                m.errors,
            ));
        }
        // Servers of their own: the spread's sockets are gone, its Boards idle.
        drop(server);
        for (i, delivery) in deliveries.iter().enumerate() {
            if args.saturation_writers == 0 {
                break;
            }
            let server =
                start_delivery(&url, &auths[auths.len() - 1].1, delivery, args.write_shard).await?;
            let fanout::Saturation {
                rate,
                changes,
                errors,
                cpu_per_frame_us,
                harness_cpu_per_frame_us,
                write_pass_ns_per_socket,
                versions_per_second,
                notified_per_second,
                parked_share,
                behind_share,
                ..
            } = fanout::saturation(
                &server,
                &url,
                (args.subscribers, 1),
                args.saturation_writers,
                args.seconds,
            )
            .await?;
            let which = delivery_label(delivery, i / delivery_variants.len() + 1);
            println!(
                "saturation{which}: {rate:.0} frames/s to {} subscribers ({versions_per_second:.1} versions/s each, {notified_per_second:.1} versions/s notified), {changes} changes in {} s, server CPU {cpu_per_frame_us:.1} us per frame, harness CPU {harness_cpu_per_frame_us:.1} us per frame, writer pass {} per socket, {} parked, {} found still parked",
                args.subscribers, args.seconds, pass_figure(write_pass_ns_per_socket),
                share(parked_share), share(behind_share)
            );
            let scenario = format!(
                "subscribe: server CPU us per frame delivered at saturation (whole process){which}"
            );
            rows.push(Row::unbased(scenario, cpu_per_frame_us, None, 0));
            let scenario = format!(
                "subscribe: frames delivered at saturation, {} subscribers on one Board, {} writers (frames/s){which}",
                args.subscribers, args.saturation_writers
            );
            rows.push(Row::unbased(scenario, rate, None, errors));
            drop(server);
        }
        // The fan-out itself at saturation: enough subscribers that the versions the
        // projector announces are not what caps the frames (same writers, same path).
        let wide: Vec<WideVariant> = if args.wide_subscribers == 0 || args.saturation_writers == 0 {
            Vec::new()
        } else {
            args.wide_variants.repeat(args.delivery_rounds.max(1))
        };
        let loads = args.saturation_rates.iter().map(|&rate| {
            if rate > 0.0 {
                fanout::Load::Rate(rate)
            } else {
                fanout::Load::Writers(args.saturation_writers)
            }
        });
        let readers: Vec<fanout::Readers> = args
            .saturation_readers
            .iter()
            .map(|kind| match kind {
                ReaderKind::Woken => fanout::Readers::Woken,
                ReaderKind::Swept => {
                    fanout::Readers::Swept(Duration::from_millis(args.sweep_ms.max(1)))
                }
            })
            .collect();
        let wide: Vec<(fanout::Load, fanout::Readers, usize, WideVariant)> = loads
            .flat_map(|load| readers.iter().map(move |r| (load, *r)))
            .flat_map(|(load, r)| wide.iter().enumerate().map(move |(i, v)| (load, r, i, *v)))
            .collect();
        for (load, readers, i, variant) in &wide {
            let (load, readers, i) = (*load, *readers, *i);
            let (shard, bytes, distinct) = variant.server(args.write_shard);
            let round = i / args.wide_variants.len().max(1) + 1;
            let which = format!("{}, {readers}", variant.label(args.write_shard, round));
            let m = if *variant == WideVariant::Ceiling {
                ceiling::saturation(args.wide_subscribers, shard, readers, args.seconds).await?
            } else {
                let shard = shard.to_string();
                let server = subscribe::Server::start_with(
                    &url,
                    &auths[auths.len() - 1].1,
                    &[
                        ("CAREBOARD_WS_FRAME_DELIVERY", "group"),
                        ("CAREBOARD_WS_WRITE_SHARD", &shard),
                        ("CAREBOARD_WS_FRAME_BYTES", bytes),
                        ("CAREBOARD_WS_PARKED_FRAMES", variant.parked().0),
                        ("CAREBOARD_WS_PASS_BUDGET", variant.parked().1),
                        ("CAREBOARD_WS_SOCKET_IO", variant.socket_io()),
                        ("CAREBOARD_MATCHER_READS", variant.matcher_reads()),
                    ],
                )
                .await?;
                let m = fanout::saturation_with_ids(
                    &server,
                    &url,
                    (args.wide_subscribers, args.wide_boards, distinct),
                    (load, readers),
                    args.seconds,
                )
                .await?;
                drop(server);
                m
            };
            let load = if *variant == WideVariant::Ceiling {
                "no changes".to_string()
            } else {
                load.to_string()
            };
            println!(
                "wide saturation, {which}, {load}: {:.0} frames/s to {} subscribers over {} Boards ({:.1} versions/s notified, {:.1} received each), {} changes, server CPU {:.2} us per frame (whole process, {:.0} % in the kernel), harness CPU {:.2} us per frame, writer pass {} per socket, {} of the pass's sockets parked ({} with bytes waiting, {} found still parked)",
                m.rate,
                args.wide_subscribers,
                args.wide_boards,
                m.notified_per_second,
                m.versions_per_second,
                m.changes,
                m.cpu_per_frame_us,
                m.system_share * 100.0,
                m.harness_cpu_per_frame_us,
                pass_figure(m.write_pass_ns_per_socket),
                share(m.parked_share),
                share(m.parked_waiting_share),
                share(m.behind_share)
            );
            rows.push(Row::unbased(
                format!(
                    "subscribe: frames delivered at saturation, {} subscribers over {} Boards, {load} (frames/s), {which}",
                    args.wide_subscribers, args.wide_boards
                ),
                m.rate,
                None,
                m.errors,
            ));
            rows.push(Row::unbased(
                format!("subscribe: server CPU us per frame at wide saturation (whole process), {which}"),
                m.cpu_per_frame_us,
                None,
                0,
            ));
            rows.push(Row::unbased(
                format!("subscribe: harness CPU us per frame at wide saturation, {which}"),
                m.harness_cpu_per_frame_us,
                None,
                0,
            ));
            if let Some(ns) = m.write_pass_ns_per_socket {
                rows.push(Row::unbased(
                    format!("subscribe: writer pass ns per socket at wide saturation, {which}"),
                    ns,
                    None,
                    0,
                ));
            }
        }
        if args.idle > 0 {
            let server = subscribe::Server::start(&url, &auths[auths.len() - 1].1).await?;
            let per = subscribe::idle_memory(&server, args.idle).await?;
            println!(
                "memory per idle subscription at {}: {:.1} KB",
                args.idle,
                per / 1024.0
            );
            rows.push(Row::unbased(
                format!("subscribe: KB per idle subscription at {}", args.idle),
                per / 1024.0,
                None,
                0,
            ));
            drop(server);
        }
    }
    eprintln!("[{:.1} s] starting asof", started.elapsed().as_secs_f64());
    if want(Scenario::Asof) {
        for size in &args.asof_sizes {
            let url = fresh_database(&admin_url).await?;
            let pool = postgres::connect(&url, 8).await?;
            postgres::migrate(&pool).await?;
            let iterations = if *size >= 100_000 { 20 } else { 100 };
            let r = asof::measure(&pool, *size, iterations).await?;
            let p99 = |h: &Histogram<u64>| h.value_at_quantile(0.99) as f64;
            for (label, hist) in [
                ("with snapshots", &r.with_snapshots),
                ("plain replay", &r.without),
            ] {
                rows.push(Row {
                    scenario: format!(
                        "asof: board(asOf), {} events, {label} (p99 vs plain read p99)",
                        r.events
                    ),
                    // Reported as a ratio of p99s: lower is better.
                    rate: p99(hist) / 1000.0,
                    latency: Some(hist.clone()),
                    errors: 0,
                    baseline_name: "plain read of the same rows, p99 ms".into(),
                    baseline_rate: p99(&r.plain_read) / 1000.0,
                });
            }
            pool.close().await;
        }
    }
    eprintln!("[{:.1} s] done", started.elapsed().as_secs_f64());
    if want(Scenario::Query) {
        let mut rates = Vec::new();
        for (label, auth) in &auths {
            let mut row = query_scenario(&admin_url, &args, auth).await?;
            row.scenario.push_str(label);
            rates.push(row.rate);
            rows.push(row);
        }
        if let [off, on] = rates[..] {
            rows.push(ab_row("query rate", on, off));
        }
    }
    if want(Scenario::Mixed) {
        eprintln!("[{:.1} s] starting mixed", started.elapsed().as_secs_f64());
        for path in &args.mixed_paths {
            let url = fresh_database(&admin_url).await?;
            rows.extend(mixed_scenario(&url, &args, &auths[auths.len() - 1].1, *path).await?);
        }
    }
    print_table(&rows);
    if let Some(dir) = args.json_out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let report = json!({
        "machine": machine(),
        "clients": args.clients,
        "seconds": args.seconds,
        "auth": args.auth.name(),
        "results": rows.iter().map(Row::to_json).collect::<Vec<_>>(),
    });
    std::fs::write(&args.json_out, serde_json::to_string_pretty(&report)?)?;
    println!("JSON written to {}", args.json_out.display());
    pool.close().await;
    drop_bench_databases(&admin_url).await?;
    drop(cluster);
    for (_, auth) in &auths {
        let _ = std::fs::remove_dir_all(&auth.dir);
    }
    Ok(())
}

/// The A/B line of `--auth ab`: `what` with authentication on, against off, same run.
/// The `board_view` rebuild rows, on a database of their own.
/// The one-Board latency row on a server of its own started with `env`:
/// `--subscribers` on one Board changing `--change-rate` times a second.
async fn one_board_latency(
    url: &str,
    auth: &BenchAuth,
    env: &[(&str, &str)],
    args: &Args,
) -> Result<fanout::Measured> {
    let started = subscribe::Server::start_with(url, auth, env).await?;
    fanout::latency(
        &started,
        args.subscribers,
        1,
        args.change_rate,
        Duration::from_secs(args.warmup_seconds),
        args.seconds,
    )
    .await
}

async fn rebuild_rows(admin_url: &str, args: &Args, rows: &mut Vec<Row>) -> Result<()> {
    let rebuild_url = fresh_database(admin_url).await?;
    let rebuild_pool = postgres::connect(&rebuild_url, 16).await?;
    postgres::migrate(&rebuild_pool).await?;
    println!("loading ~{} events for the rebuild", args.events);
    let r = project::rebuild(
        &rebuild_pool,
        args.events,
        &args.rebuild_paths,
        args.pg_stats,
    )
    .await?;
    for (path, rates) in &r.rates {
        let watched = path.label();
        println!("  rebuild rates, {watched}: {rates:.0?} events/s");
        rows.push(Row {
            scenario: format!(
                "project: board_view rebuild over {} events, {watched} (events/s, best of {})",
                r.events,
                rates.len()
            ),
            rate: rates.iter().copied().fold(0.0, f64::max),
            latency: None,
            errors: 0,
            baseline_name: "keyset read of the same events (rows/s)".into(),
            baseline_rate: r.keyset_rate,
        });
    }
    rebuild_pool.close().await;
    Ok(())
}

/// A subscribe-scenario server delivering shared frames by `delivery`: `socket`,
/// `group` (one writer task per group) or `shards` (writer tasks of `shard` sockets).
async fn start_delivery(
    url: &str,
    auth: &BenchAuth,
    delivery: &str,
    shard: usize,
) -> Result<subscribe::Server> {
    if delivery == "shards" {
        subscribe::Server::start_sharded(url, auth, shard).await
    } else if delivery == "shards-task" {
        subscribe::Server::start_sharded_parking(url, auth, shard, ("task", "coop")).await
    } else {
        subscribe::Server::start_delivering(url, auth, delivery).await
    }
}

/// A share of the writer passes' sockets, as printed.
fn share(share: Option<f64>) -> String {
    share.map_or_else(|| "n/a".into(), |p| format!("{:.0} %", p * 100.0))
}

/// A writer pass's time per socket, as printed.
fn pass_figure(ns: Option<f64>) -> String {
    ns.map_or_else(|| "n/a".into(), |ns| format!("{:.2} us", ns / 1000.0))
}

fn ab_row(what: &str, on: f64, off: f64) -> Row {
    Row {
        scenario: format!("A/B: {what}, auth on vs off"),
        rate: on,
        latency: None,
        errors: 0,
        baseline_name: "auth off, same run".into(),
        baseline_rate: off,
    }
}

/// Drops the databases earlier runs left behind: their autovacuum and checkpoints would
/// otherwise compete with this run's measurements.
async fn drop_bench_databases(admin_url: &str) -> Result<()> {
    let admin = postgres::connect_with_retry(admin_url).await?;
    let names: Vec<String> =
        sqlx::query_scalar("select datname from pg_database where datname like 'bench\\_%'")
            .fetch_all(&admin)
            .await?;
    for name in names {
        sqlx::query(&format!("drop database if exists {name} with (force)"))
            .execute(&admin)
            .await?;
    }
    sqlx::query("checkpoint").execute(&admin).await?;
    admin.close().await;
    Ok(())
}

async fn fresh_database(admin_url: &str) -> Result<String> {
    let admin = postgres::connect_with_retry(admin_url).await?;
    let name = format!("bench_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("create database {name}"))
        .execute(&admin)
        .await?;
    admin.close().await;
    let (base, _) = admin_url
        .rsplit_once('/')
        .context("DATABASE_URL must name a database")?;
    Ok(format!("{base}/{name}"))
}

/// pgbench running the store's write path by hand: a version-bumping UPDATE of the
/// client's stream row and the INSERT of one event, in one transaction.
async fn pgbench_append(url: &str, pool: &PgPool, clients: usize, seconds: u64) -> Result<f64> {
    for client in 0..clients {
        sqlx::query("insert into streams (id, type, version) values ($1, 'board', 0) on conflict (id) do nothing")
            .bind(client_stream(client))
            .execute(pool)
            .await?;
    }
    let script = "\
BEGIN;
UPDATE streams SET version = version + 1, updated_at = clock_timestamp() WHERE id = ('00000000-0000-0000-0000-' || lpad(:client_id::text, 12, '0'))::uuid RETURNING version AS v \\gset
INSERT INTO events (id, stream_id, version, type, data, metadata) VALUES (gen_random_uuid(), ('00000000-0000-0000-0000-' || lpad(:client_id::text, 12, '0'))::uuid, :v, 'BenchEvent', '{\"patientName\": \"Sam Lee\", \"reason\": \"fever\"}', '{\"actor\": \"bench\"}');
COMMIT;
";
    let dir = std::env::temp_dir().join(format!("careboard-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("append.sql");
    std::fs::write(&path, script)?;
    let bin = postgres::find_bindir()?.join("pgbench");
    let out = tokio::process::Command::new(&bin)
        .args([
            "-n",
            "-c",
            &clients.to_string(),
            "-j",
            "2",
            "-T",
            &seconds.to_string(),
            "-f",
        ])
        .arg(&path)
        .arg(url)
        .output()
        .await
        .with_context(|| format!("running {}", bin.display()))?;
    let _ = std::fs::remove_dir_all(&dir);
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "pgbench failed: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    stdout
        .lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l.trim_start_matches("tps = ").split_whitespace().next())
        .and_then(|n| n.parse::<f64>().ok())
        .context("pgbench printed no tps")
}

fn client_stream(client: usize) -> uuid::Uuid {
    uuid::Uuid::parse_str(&format!("00000000-0000-0000-0000-{client:012}")).expect("uuid")
}

pub(crate) async fn open_board(store: &EventStore) -> Result<String> {
    let board = commands::open_board(
        store,
        CommandMeta::new("openBoard"),
        OpenBoard {
            name: "Bench".into(),
            specialty: "pediatrics".into(),
            region: "TX".into(),
            date: "2022-07-18".parse().expect("a date"),
            options: CommandOptions::default(),
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!(e.describe()))?;
    Ok(board.entity.id.to_string())
}

pub(crate) fn request_input(board: &str, i: u64) -> RequestAppointment {
    RequestAppointment {
        patient_id: None,
        board_id: board.parse().expect("a board id"),
        patient_name: format!("Patient {i}"),
        specialty: "pediatrics".into(),
        region: "TX".into(),
        reason: "fever".into(),
        options: CommandOptions::default(),
    }
}

/// Op ids from here on belong to the open-loop phase of [`closed_loop`].
const OPEN_LOOP_FIRST_ID: u64 = 1 << 40;

/// The maximum rate of `op` (closed loop, `clients` at once, for `seconds`), then its
/// latency in an open loop at half that rate: requests start on schedule whether or
/// not earlier ones finished, and latency counts from the scheduled start, so slow
/// responses cannot hide it. Returns (max ops/s, open-loop latencies, errors).
async fn closed_loop<F, Fut>(
    clients: usize,
    seconds: u64,
    op: F,
) -> Result<(f64, Histogram<u64>, u64)>
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send + 'static,
{
    let op = Arc::new(op);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for client in 0..clients {
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut done = 0u64;
            let mut errors = 0u64;
            let mut i = (client as u64) << 32;
            while Instant::now() < deadline {
                if !op(i).await {
                    errors += 1;
                }
                done += 1;
                i += 1;
            }
            (done, errors)
        }));
    }
    let mut done = 0;
    let mut errors = 0;
    for t in tasks {
        let (d, e) = t.await?;
        done += d;
        errors += e;
    }
    let max_rate = done as f64 / started.elapsed().as_secs_f64();
    let (hist, open_errors) =
        open_loop((max_rate / 2.0).max(1.0), seconds, op, OPEN_LOOP_FIRST_ID).await?;
    Ok((max_rate, hist, errors + open_errors))
}

/// Starts `op` `rate` times a second for `seconds`; latency from each scheduled start.
async fn open_loop<F, Fut>(
    rate: f64,
    seconds: u64,
    op: Arc<F>,
    first_id: u64,
) -> Result<(Histogram<u64>, u64)>
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send + 'static,
{
    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = tokio::time::Instant::now();
    let count = (rate * seconds as f64) as u64;
    let results = Arc::new(std::sync::Mutex::new((
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?,
        0u64,
    )));
    let mut tasks = Vec::with_capacity(count as usize);
    for n in 0..count {
        let scheduled = start + interval.mul_f64(n as f64);
        tokio::time::sleep_until(scheduled).await;
        let op = op.clone();
        let results = results.clone();
        tasks.push(tokio::spawn(async move {
            let ok = op(first_id + n).await;
            let latency = scheduled.elapsed().as_micros() as u64;
            let mut r = results.lock().unwrap();
            let _ = r.0.record(latency.max(1));
            if !ok {
                r.1 += 1;
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let r = results.lock().unwrap();
    Ok((r.0.clone(), r.1))
}

/// The command path through `path`: `Planned`, the current one, or `General`, as it
/// was before the append statement was planned once: the general statement, planned
/// again for every command, on a pool that pings every connection it hands out (`pool`
/// must then be such a pool).
async fn append_scenario(
    pool: &PgPool,
    args: &Args,
    baseline: f64,
    path: CommandPath,
) -> Result<Row> {
    let what = match path {
        CommandPath::Kept => "append kept: open Board kept in memory, one round trip",
        CommandPath::Planned => "append: one-statement append planned once, no ping",
        CommandPath::General => {
            "append earlier: general statement planned per command, ping per acquire"
        }
    };
    let scenario = format!("{what} (1 event/command, {} writers)", args.clients);
    append_run(
        pool,
        args,
        baseline,
        scenario,
        path,
        |store, request| async move {
            commands::request_appointment(&store, CommandMeta::new("requestAppointment"), request)
                .await
                .is_ok()
        },
    )
    .await
}

/// The same commands through the path as it was before the append became one
/// statement and the Board read a guard (see [`append::request_appointment_before`]),
/// against the same baseline.
async fn append_before_scenario(pool: &PgPool, args: &Args, baseline: f64) -> Result<Row> {
    let scenario = format!(
        "append before: 5 round trips, Board locked for the decision (1 event/command, {} writers)",
        args.clients
    );
    append_run(
        pool,
        args,
        baseline,
        scenario,
        CommandPath::General,
        |store, request| async move {
            append::request_appointment_before(&store, request)
                .await
                .is_ok()
        },
    )
    .await
}

/// An append scenario: `args.clients` writers, each sending requests on one fresh Board
/// through `command` (true: appended), measured against the pgbench baseline.
async fn append_run<F, Fut>(
    pool: &PgPool,
    args: &Args,
    baseline: f64,
    scenario: String,
    path: CommandPath,
    command: F,
) -> Result<Row>
where
    F: Fn(EventStore, RequestAppointment) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send + 'static,
{
    let store = EventStore::new(pool.clone(), Duration::from_secs(5)).with_command_path(path);
    let board = open_board(&store).await?;
    let retries = commands::guard_retries();
    let (rate, hist, errors) = closed_loop(args.clients, args.seconds, move |i| {
        command(store.clone(), request_input(&board, i))
    })
    .await?;
    let retries = commands::guard_retries() - retries;
    Ok(Row {
        scenario: format!("{scenario}; decided again after a moved guard: {retries}"),
        rate,
        latency: Some(hist),
        errors,
        baseline_name: "pgbench INSERT+UPDATE".into(),
        baseline_rate: baseline,
    })
}

/// The server's default limits, without the per-address rate limit: every load
/// client of the harness comes from one loopback address.
fn bench_limits() -> GraphqlLimits {
    GraphqlLimits {
        rate_limit_per_second: 0,
        ..GraphqlLimits::default()
    }
}

async fn mutate_scenario(
    pool: &PgPool,
    args: &Args,
    auth: &BenchAuth,
    baseline: f64,
    path: CommandPath,
) -> Result<Row> {
    let limits = GraphqlLimits {
        command_path: path,
        ..bench_limits()
    };
    let mut state = app::state(pool.clone(), limits, Duration::from_secs(5));
    auth.apply(&mut state);
    let server = RunningServer::start("127.0.0.1:0", state).await?;
    let store = EventStore::new(pool.clone(), Duration::from_secs(5));
    let board = open_board(&store).await?;
    let url = server.url("/graphql");
    let http = auth.client(args.clients)?;
    let query = "mutation($input: RequestAppointmentInput!) { requestAppointment(input: $input) { appointment { id status } version position } }";
    let (rate, hist, errors) = closed_loop(args.clients, args.seconds, move |i| {
        let http = http.clone();
        let url = url.clone();
        let body = json!({"query": query, "variables": {"input": {
            "boardId": board, "patientName": format!("Patient {i}"), "specialty": "pediatrics",
            "region": "TX", "reason": "fever"}}});
        async move {
            let Ok(response) = http.post(&url).json(&body).send().await else {
                return false;
            };
            // A 200 with `errors` is a failure, not a success.
            match response.json::<Value>().await {
                Ok(v) => {
                    v.get("errors").is_none()
                        && v["data"]["requestAppointment"]["position"].is_i64()
                }
                Err(_) => false,
            }
        }
    })
    .await?;
    server.stop().await?;
    Ok(Row {
        scenario: format!("mutate (GraphQL over HTTP, {} clients)", args.clients),
        rate,
        latency: Some(hist),
        errors,
        baseline_name: "pgbench INSERT+UPDATE".into(),
        baseline_rate: baseline,
    })
}

fn print_table(rows: &[Row]) {
    println!(
        "\n| scenario | max rate/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | errors | baseline | baseline/s | ratio |\n|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for r in rows {
        let ms = |q: f64| {
            r.latency
                .as_ref()
                .map(|h| h.value_at_quantile(q) as f64 / 1000.0)
                .unwrap_or_default()
        };
        let max = r
            .latency
            .as_ref()
            .map(|h| h.max() as f64 / 1000.0)
            .unwrap_or_default();
        println!(
            "| {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} | {:.0} | {:.2} |",
            r.scenario,
            r.rate,
            ms(0.5),
            ms(0.9),
            ms(0.99),
            ms(0.999),
            max,
            r.errors,
            r.baseline_name,
            r.baseline_rate,
            r.ratio()
        );
    }
}

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu": cpu,
    })
}

/// `board(id)` over GraphQL and HTTP, against a bare axum handler that runs the same
/// SELECT of the projected document and returns it.
async fn query_scenario(admin_url: &str, args: &Args, auth: &BenchAuth) -> Result<Row> {
    let url = fresh_database(admin_url).await?;
    let pool = postgres::connect(&url, 32).await?;
    postgres::migrate(&pool).await?;
    let mut state = app::state(pool.clone(), bench_limits(), Duration::from_secs(5));
    auth.apply(&mut state);
    // The scenarios measure the projector and the API; matching is measured by the demo.
    let projector = app::spawn_daemon(
        &state,
        careboard::daemon::DaemonConfig {
            matching: false,
            ..Default::default()
        },
    );
    let store = state.store.clone();
    let server = RunningServer::start("127.0.0.1:0", state).await?;
    let board = open_board(&store).await?;
    for i in 0..50 {
        commands::request_appointment(
            &store,
            CommandMeta::new("requestAppointment"),
            request_input(&board, i),
        )
        .await
        .map_err(|e| anyhow::anyhow!(e.describe()))?;
    }
    project::wait_caught_up(&pool).await?;

    // The baseline: the same SELECT behind a plain handler.
    let plain_pool = pool.clone();
    let plain = axum::Router::new().route(
        "/board/{id}",
        axum::routing::get(
            move |axum::extract::Path(id): axum::extract::Path<uuid::Uuid>| {
                let pool = plain_pool.clone();
                async move {
                    let parts: Option<careboard::projections::read::BoardParts> =
                        sqlx::query_as(&format!(
                            "select {parts} from board_view v \
                       join projection_state p on p.name = 'board_view' and p.status = 'live' \
                        and p.generation = v.generation {join} where v.id = $1",
                            parts = careboard::projections::read::BOARD_PARTS,
                            join = careboard::projections::read::board_parts_join("")
                        ))
                        .bind(id)
                        .fetch_optional(&pool)
                        .await
                        .ok()
                        .flatten();
                    axum::Json(parts.map(|p| p.into_value()))
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let plain_addr = listener.local_addr()?;
    let plain_task = tokio::spawn(async move { axum::serve(listener, plain).await });

    // The baseline gets the same client (its handler ignores the token).
    let http = auth.client(args.clients)?;
    let plain_url = format!("http://{plain_addr}/board/{board}");
    let (plain_rate, _, plain_errors) = {
        let http = http.clone();
        closed_loop(args.clients, args.seconds, move |_| {
            let http = http.clone();
            let url = plain_url.clone();
            async move {
                match http.get(&url).send().await {
                    Ok(r) => r
                        .json::<Value>()
                        .await
                        .map(|v| v.is_object())
                        .unwrap_or(false),
                    Err(_) => false,
                }
            }
        })
        .await?
    };
    let gql_url = server.url("/graphql");
    let body = json!({"query": "query($id: ID!) { board(id: $id) { id version counts { waiting } appointments { id status patientName reason } } }",
        "variables": {"id": board}});
    let (rate, hist, errors) = closed_loop(args.clients, args.seconds, move |_| {
        let http = http.clone();
        let url = gql_url.clone();
        let body = body.clone();
        async move {
            match http.post(&url).json(&body).send().await {
                Ok(r) => r
                    .json::<Value>()
                    .await
                    .map(|v| v.get("errors").is_none() && v["data"]["board"]["version"].is_i64())
                    .unwrap_or(false),
                Err(_) => false,
            }
        }
    })
    .await?;
    plain_task.abort();
    server.stop().await?;
    projector.stop().await?;
    pool.close().await;
    Ok(Row {
        scenario: format!(
            "query: board(id) over GraphQL/HTTP, {} clients (latency at half max)",
            args.clients
        ),
        rate,
        latency: Some(hist),
        errors: errors + plain_errors,
        baseline_name: "plain axum handler, same SELECT".into(),
        baseline_rate: plain_rate,
    })
}

/// The `mixed` scenario on a server of its own: a table per window, and rows for the
/// first and last windows (the throughput row's ratio is last / first).
async fn mixed_scenario(
    url: &str,
    args: &Args,
    auth: &BenchAuth,
    path: MixedPath,
) -> Result<Vec<Row>> {
    let env: &[(&str, &str)] = match path {
        MixedPath::Before => &[
            ("CAREBOARD_BOARDS_IN_MEMORY", "0"),
            ("CAREBOARD_BOARD_READS", "scan"),
        ],
        MixedPath::Kept => &[
            ("CAREBOARD_BOARD_CONTENTS", "whole"),
            ("CAREBOARD_BOARD_READS", "scan"),
        ],
        MixedPath::Scan => &[("CAREBOARD_BOARD_READS", "scan")],
        MixedPath::After => &[],
    };
    let server = subscribe::Server::start_with(url, auth, env).await?;
    let shape = mixed::Shape {
        writers: args.mixed_writers,
        readers: args.mixed_readers,
        subscribers: args.mixed_subscribers,
        boards: args.mixed_boards,
        providers: args.mixed_providers,
        seconds: args.mixed_seconds,
        window: args.mixed_window,
        whole_board: path == MixedPath::Before,
    };
    let m = mixed::run(&server, &shape).await?;
    drop(server);
    let w = m.window_seconds as f64;
    let p99 = |h: &Histogram<u64>| h.value_at_quantile(0.99) as f64 / 1000.0;
    println!(
        "mixed, {path:?}: {} writers, {} readers, {} subscribers on {} Boards, {} s; appointments per Board at the end: {:?}",
        shape.writers, shape.readers, shape.subscribers, shape.boards, shape.seconds, m.board_sizes
    );
    println!("| window | writes/s | reads/s | refused | mutation p50 / p99 ms | read p50 / p99 ms | frames/s | server CPU ms per request | PostgreSQL CPU ms per request | errors |\n|---|---|---|---|---|---|---|---|---|---|");
    for (i, win) in m.windows.iter().enumerate() {
        println!(
            "| {}–{} s | {:.0} | {:.0} | {} | {:.1} / {:.1} | {:.1} / {:.1} | {:.0} | {:.2} | {} | {} |",
            i as f64 * w,
            (i + 1) as f64 * w,
            win.writes as f64 / w,
            win.reads as f64 / w,
            win.refused,
            win.write_latency.value_at_quantile(0.5) as f64 / 1000.0,
            p99(&win.write_latency),
            win.read_latency.value_at_quantile(0.5) as f64 / 1000.0,
            p99(&win.read_latency),
            win.frames as f64 / w,
            win.server_cpu * 1e3 / (win.writes + win.reads).max(1) as f64,
            win.postgres_cpu.map_or("–".to_string(), |pg| format!(
                "{:.2}",
                pg * 1e3 / (win.writes + win.reads).max(1) as f64
            )),
            win.errors
        );
    }
    let (Some(first), Some(last)) = (m.windows.first(), m.windows.last()) else {
        bail!("the mixed run recorded no window");
    };
    let rate = |win: &mixed::Window| (win.writes + win.reads) as f64 / w;
    let errors: u64 = m.windows.iter().map(|win| win.errors).sum();
    let label = format!(
        "{}w/{}r/{}s, {}",
        shape.writers,
        shape.readers,
        shape.subscribers,
        match path {
            MixedPath::Before => "whole Board reads, none kept",
            MixedPath::Kept => "pages, Boards kept, contents made whole per version",
            MixedPath::Scan => "pages, Boards kept, contents made from what changed, partial Board reads visit every row",
            MixedPath::After => "pages, Boards kept, contents made from what changed, index-backed partial Board reads, Boards kept by the matcher",
        }
    );
    let largest = m.board_sizes.iter().max().copied().unwrap_or(0);
    let mut rows = vec![Row {
        scenario: format!(
            "mixed: requests/s in the last {w:.0} s ({label}, Boards up to {largest} appointments)"
        ),
        rate: rate(last),
        latency: None,
        errors,
        baseline_name: format!("the first {w:.0} s of the same run (requests/s)"),
        baseline_rate: rate(first),
    }];
    for (what, unit) in [("mutation", "writes"), ("read", "reads")] {
        for (when, win) in [("first", first), ("last", last)] {
            let (count, latency) = match unit {
                "writes" => (win.writes, &win.write_latency),
                _ => (win.reads, &win.read_latency),
            };
            rows.push(Row::unbased(
                format!("mixed: {what} latency, {when} {w:.0} s, {path:?} ({unit}/s)"),
                count as f64 / w,
                Some(latency.clone()),
                0,
            ));
        }
    }
    Ok(rows)
}

/// A lag row's PostgreSQL statistics, per append.
fn print_pg_stats(pg: &project::PgStats, appends: usize) {
    let per = |v: f64| v / appends.max(1) as f64;
    let total: f64 = pg.statements.iter().map(|s| s.total_ms).sum();
    println!(
        "  PostgreSQL per append ({appends} appends): statements {:.3} ms; WAL {:.0} B in {:.2} records \
         ({:.3} full-page images), {:.3} writes, {:.3} syncs ({:.3} ms writing, {:.3} ms syncing); \
         {} checkpoints in the round",
        per(total),
        per(pg.wal_bytes),
        per(pg.wal_records),
        per(pg.wal_fpi),
        per(pg.wal_writes),
        per(pg.wal_syncs),
        per(pg.wal_write_ms),
        per(pg.wal_sync_ms),
        pg.checkpoints
    );
    println!(
        "    {:<58} {:>9} {:>9} {:>8} {:>8} {:>9} {:>9} {:>9}",
        "statement",
        "calls/app",
        "µs/app",
        "plan µs",
        "µs/call",
        "rows/call",
        "pages/call",
        "WAL B/app"
    );
    for s in pg.statements.iter().filter(|s| s.total_ms > 0.0) {
        println!(
            "    {:<58} {:>9.3} {:>9.1} {:>8.1} {:>8.1} {:>9.1} {:>9.1} {:>9.0}",
            s.label,
            per(s.calls as f64),
            per(s.total_ms) * 1000.0,
            per(s.plan_ms) * 1000.0,
            s.total_ms * 1000.0 / s.calls.max(1) as f64,
            s.rows as f64 / s.calls.max(1) as f64,
            s.blocks as f64 / s.calls.max(1) as f64,
            per(s.wal_bytes)
        );
        let text: String = s.query.chars().take(150).collect();
        println!("        {text}");
    }
}
