//! The `project` scenario: projector rebuild throughput over a large log next to a
//! plain keyset read of the same events, and projector lag under a steady append load.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use chrono::{TimeZone, Utc};
use hdrhistogram::Histogram;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use careboard::daemon::{Daemon, DaemonConfig};
use careboard::domain::{AppointmentEvent, BoardEvent, DomainEvent, ShiftEvent};
use careboard::event_store::EventStore;
use careboard::metrics::Metrics;
use careboard::projections::Projection;
use careboard::projector::state;

/// Per Board: the newest position notified, and appends not yet seen in a notice.
/// Board → (newest position notified, appends not yet notified: position, commit,
/// whether the append is measured or of the warm-up).
type Pending = Arc<std::sync::Mutex<HashMap<String, (i64, Vec<(i64, Instant, bool)>)>>>;

/// One generated event: (stream, stream type, board, version, type, data).
pub type Generated = (Uuid, &'static str, Uuid, i64, &'static str, Value);

/// A realistic history: days of 50 Boards, each with 10 providers and 200
/// appointments taken from request to finished charting, interleaved across Boards as
/// a day's events are. About 70,000 events a day.
fn generate(target_events: usize) -> Vec<Generated> {
    generate_shaped(target_events, 50, 200)
}

/// The same history shape with `boards_per_day` Boards of up to `appointments` each.
pub fn generate_shaped(
    target_events: usize,
    boards_per_day: usize,
    appointments: usize,
) -> Vec<Generated> {
    let mut out: Vec<Generated> = Vec::with_capacity(target_events + 100_000);
    let mut day = 0;
    while out.len() < target_events {
        let date = Utc.with_ymd_and_hms(2022, 7, 1, 0, 0, 0).unwrap() + chrono::Duration::days(day);
        let boards: Vec<Uuid> = (0..boards_per_day).map(|_| Uuid::new_v4()).collect();
        let mut shifts: HashMap<Uuid, Vec<(Uuid, i64)>> = HashMap::new();
        for (i, board) in boards.iter().enumerate() {
            let e = BoardEvent::BoardOpened {
                name: format!("Board {i} day {day}"),
                specialty: "pediatrics".into(),
                region: "TX".into(),
                date: date.date_naive(),
            };
            out.push((*board, "board", *board, 1, e.event_type(), e.encode()));
            for _ in 0..10 {
                let shift = Uuid::new_v4();
                let e = ShiftEvent::ProviderJoined {
                    board_id: (*board).into(),
                    provider_id: Uuid::new_v4().into(),
                };
                out.push((shift, "shift", *board, 1, e.event_type(), e.encode()));
                shifts.entry(*board).or_default().push((shift, 1));
            }
        }
        for a in 0..appointments {
            if out.len() >= target_events {
                break;
            }
            for board in &boards {
                let appointment = Uuid::new_v4();
                let slot = a % 10;
                let (shift, shift_version) = shifts.get_mut(board).unwrap()[slot];
                let appointment_events = [
                    AppointmentEvent::AppointmentRequested {
                        board_id: (*board).into(),
                        patient_id: Some(format!("patient-{a}")),
                        patient_name: format!("Patient {a}"),
                        specialty: "pediatrics".into(),
                        region: "TX".into(),
                        reason: "fever".into(),
                    },
                    AppointmentEvent::AppointmentScheduled {
                        provider_id: Uuid::new_v4().into(),
                        shift_id: shift.into(),
                        estimated_time: date,
                    },
                    AppointmentEvent::AppointmentStarted {},
                    AppointmentEvent::AppointmentFinished {},
                ];
                let shift_events = [
                    ShiftEvent::ProviderAssigned {
                        appointment_id: appointment.into(),
                    },
                    ShiftEvent::ChartingStarted {
                        appointment_id: appointment.into(),
                    },
                    ShiftEvent::ChartingFinished {
                        charting_seconds: 300,
                    },
                ];
                for (v, e) in appointment_events.iter().enumerate() {
                    out.push((
                        appointment,
                        "appointment",
                        *board,
                        v as i64 + 1,
                        e.event_type(),
                        e.encode(),
                    ));
                }
                for (v, e) in shift_events.iter().enumerate() {
                    out.push((
                        shift,
                        "shift",
                        *board,
                        shift_version + v as i64 + 1,
                        e.event_type(),
                        e.encode(),
                    ));
                }
                shifts.get_mut(board).unwrap()[slot].1 = shift_version + 3;
            }
        }
        day += 1;
    }
    out
}

/// Writes the generated history with bulk inserts, chunk by chunk.
pub async fn load(pool: &PgPool, events: &[Generated]) -> Result<()> {
    let mut streams: HashMap<Uuid, (&str, Uuid, i64)> = HashMap::new();
    for (stream, kind, board, version, _, _) in events {
        let entry = streams.entry(*stream).or_insert((kind, *board, 0));
        entry.2 = entry.2.max(*version);
    }
    let ids: Vec<Uuid> = streams.keys().copied().collect();
    let kinds: Vec<String> = ids.iter().map(|i| streams[i].0.to_string()).collect();
    let boards: Vec<Uuid> = ids.iter().map(|i| streams[i].1).collect();
    let versions: Vec<i64> = ids.iter().map(|i| streams[i].2).collect();
    sqlx::query(
        "insert into streams (id, type, board_id, version) \
         select * from unnest($1::uuid[], $2::text[], $3::uuid[], $4::bigint[])",
    )
    .bind(&ids)
    .bind(&kinds)
    .bind(&boards)
    .bind(&versions)
    .execute(pool)
    .await?;
    for chunk in events.chunks(20_000) {
        let ids: Vec<Uuid> = chunk.iter().map(|_| Uuid::now_v7()).collect();
        let streams: Vec<Uuid> = chunk.iter().map(|e| e.0).collect();
        let versions: Vec<i64> = chunk.iter().map(|e| e.3).collect();
        let types: Vec<String> = chunk.iter().map(|e| e.4.to_string()).collect();
        let datas: Vec<Value> = chunk.iter().map(|e| e.5.clone()).collect();
        sqlx::query(
            "insert into events (id, stream_id, version, type, data, metadata) \
             select id, stream_id, version, type, data, '{\"actor\": \"bench\"}' \
               from unnest($1::uuid[], $2::uuid[], $3::bigint[], $4::text[], $5::jsonb[]) \
                    as t(id, stream_id, version, type, data)",
        )
        .bind(&ids)
        .bind(&streams)
        .bind(&versions)
        .bind(&types)
        .bind(&datas)
        .execute(pool)
        .await?;
    }
    Ok(())
}

/// A projector for a measurement, woken by `store`'s local appends.
pub fn start_projector(pool: &PgPool, store: &EventStore) -> careboard::daemon::DaemonHandle {
    start_projector_with(pool, store, Schedule::Tuned, Arc::new(Metrics::new()))
}

/// How the projector under measurement is scheduled: the rows of the `project` lag
/// scenario, from the earliest schedule to the newest, so one run compares them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Schedule {
    /// All projections in lockstep rounds, shared read.
    Lockstep,
    /// A loop per projection, each batch committed durably, followers unpaced.
    Loops,
    /// Loops with the projector's commits not waiting for the WAL flush and the
    /// followers paced, the append signal forwarded through the projector's supervisor
    /// (the defaults).
    Tuned,
    /// `Tuned` with the append signal ringing each loop straight from the daemon,
    /// `board_view`'s last, and `board_view` on a connection of its own
    /// (`DaemonConfig::direct_wake`).
    Direct,
    /// `Tuned` with the followers paced at [`RELAXED_PACE`] instead of the default:
    /// fewer, larger follower transactions, leaving PostgreSQL's CPU to `board_view`
    /// and the appends.
    Relaxed,
    /// `Tuned` with each checkpoint fenced by `pg_locks`, the NOTIFY a statement of
    /// its own and every batch a transaction: the batch's statements before the epoch
    /// fence.
    LockTable,
    /// `Tuned` with the epoch fence (`DaemonConfig::epoch_fence`), the NOTIFY still a
    /// statement of its own, every batch a transaction (`lone_checkpoints` off: the
    /// default before it).
    Epoch,
    /// `Epoch` with the NOTIFY sent by the checkpoint's statement
    /// (`DaemonConfig::fused_statements`).
    Fused,
    /// `Epoch` with a batch holding no event of its projection moving the checkpoint
    /// in one autocommit statement (`DaemonConfig::lone_checkpoints`): `Tuned`, the
    /// defaults, named for the comparison.
    Lone,
    /// `Fused` and `Lone` together.
    LoneFused,
    /// `Lone` with each projection table analyzed whenever it has doubled
    /// (`DaemonConfig::fresh_statistics`).
    Analyzed,
    /// `Lone` with each batch transaction's statements planned for their own
    /// parameters (`DaemonConfig::custom_plans`).
    Custom,
    /// `Lone` with `board_view`'s live batches in two round trips fewer: BEGIN and the
    /// settings in one simple query, no transaction id, header and appointment rows
    /// in one statement (`DaemonConfig::fewer_round_trips`).
    Folded,
    /// `Analyzed` and `Folded` together.
    AnalyzedFolded,
    /// `Analyzed` with the Board headers' locked read a primary-key lookup (migration
    /// 0016's listing index holds only dated Boards; every schedule before this one
    /// gets the earlier, unrestricted listing index back on its database, which the
    /// planner took for that read).
    Keyed,
    /// `Keyed` with a `board_view` batch of appointment events writing only the
    /// Board header's counters, as columns (`DaemonConfig::header_counters`): the
    /// defaults before `paired`.
    Counters,
    /// `Counters` in lockstep rounds (`DaemonConfig::loops` off): the `lockstep` row
    /// on the same paths as `counters` (the `lockstep` row keeps the defaults with
    /// the earlier, unrestricted listing index).
    Stepped,
    /// `Counters` with a `board_view` batch's locked Board read looking each touched
    /// appointment up under its own Board (`DaemonConfig::paired_board_reads`)
    /// instead of searching every Board for every touched appointment: the defaults.
    Paired,
    /// `Paired` with `appointment_durations` folded from its flat columns, its rows
    /// keeping no jsonb document (`DaemonConfig::flat_durations`).
    Flat,
    /// `Flat` with the live Board snapshots written behind each batch
    /// (`DaemonConfig::live_snapshots_behind`): the defaults.
    SnapshotsBehind,
    /// `SnapshotsBehind` with `board_view`'s live batches in fewer round trips
    /// (`DaemonConfig::fewer_round_trips`) and the NOTIFY sent by the checkpoint's
    /// statement (`DaemonConfig::fused_statements`).
    BehindFolded,
    /// `SnapshotsBehind` woken straight from the daemon, `board_view` on a connection
    /// of its own (`DaemonConfig::direct_wake`).
    BehindDirect,
    /// `SnapshotsBehind` with the followers paced at [`RELAXED_PACE`].
    BehindRelaxed,
}

impl Schedule {
    /// Whether the schedule was measured before the headers' read became a key lookup
    /// (see [`Schedule::Keyed`]).
    fn unkeyed(self) -> bool {
        !matches!(
            self,
            Schedule::Keyed
                | Schedule::Counters
                | Schedule::Stepped
                | Schedule::Paired
                | Schedule::Flat
                | Schedule::SnapshotsBehind
                | Schedule::BehindFolded
                | Schedule::BehindDirect
                | Schedule::BehindRelaxed
        )
    }
}

/// The follower pace of [`Schedule::Relaxed`].
pub const RELAXED_PACE: Duration = Duration::from_millis(50);

impl Schedule {
    pub fn label(self) -> &'static str {
        match self {
            Schedule::Lockstep => "lockstep rounds, shared read",
            Schedule::Loops => "a loop per projection, durable commits",
            Schedule::Tuned => "loops, async projector commits, paced followers",
            Schedule::Direct => "the same, woken directly, board_view on its own connection",
            Schedule::Relaxed => "loops, async projector commits, followers paced at 50 ms",
            Schedule::LockTable => "loops as tuned, before: pg_locks fence, NOTIFY on its own",
            Schedule::Epoch => "loops as tuned, epoch fence, NOTIFY on its own",
            Schedule::Fused => "loops as tuned, epoch fence, NOTIFY in the checkpoint",
            Schedule::Lone => "loops as tuned, epoch fence, empty batches' checkpoints alone",
            Schedule::LoneFused => {
                "loops as tuned, epoch fence, empty batches' checkpoints alone, NOTIFY fused"
            }
            Schedule::Analyzed => "lone, young projection tables analyzed as they double",
            Schedule::Custom => "lone, each batch's statements planned for their parameters",
            Schedule::Folded => "lone, board_view's batch in two round trips fewer",
            Schedule::AnalyzedFolded => {
                "lone, tables analyzed, board_view in two round trips fewer"
            }
            Schedule::Keyed => "analyzed, Board headers read by key",
            Schedule::Counters => "analyzed, headers read by key, their counters written alone",
            Schedule::Stepped => "counters in lockstep rounds",
            Schedule::Paired => "counters, each touched appointment read under its own Board",
            Schedule::Flat => "paired, appointment_durations folded from its flat columns",
            Schedule::SnapshotsBehind => "flat, live Board snapshots written behind each batch",
            Schedule::BehindFolded => {
                "snapshots behind, board_view's batch in fewer round trips, NOTIFY in the checkpoint"
            }
            Schedule::BehindDirect => {
                "snapshots behind, woken directly, board_view on its own connection"
            }
            Schedule::BehindRelaxed => "snapshots behind, followers paced at 50 ms",
        }
    }
}

fn start_projector_with(
    pool: &PgPool,
    store: &EventStore,
    schedule: Schedule,
    metrics: Arc<Metrics>,
) -> careboard::daemon::DaemonHandle {
    let tuned = DaemonConfig::default();
    // The schedules measured before fresh statistics, custom plans and fewer round
    // trips keep them off,
    // whatever the defaults.
    let earlier = DaemonConfig {
        custom_plans: false,
        fewer_round_trips: false,
        fresh_statistics: false,
        header_counters: false,
        paired_board_reads: false,
        flat_durations: false,
        live_snapshots_behind: false,
        ..tuned.clone()
    };
    let config = match schedule {
        Schedule::Lockstep => DaemonConfig {
            loops: false,
            ..tuned
        },
        Schedule::Loops => DaemonConfig {
            async_commit: false,
            follower_pace: Duration::ZERO,
            ..tuned
        },
        Schedule::Tuned => tuned,
        Schedule::Direct => DaemonConfig {
            direct_wake: true,
            ..tuned
        },
        Schedule::Relaxed => DaemonConfig {
            follower_pace: RELAXED_PACE,
            ..tuned
        },
        Schedule::LockTable => DaemonConfig {
            epoch_fence: false,
            fused_statements: false,
            lone_checkpoints: false,
            ..earlier
        },
        Schedule::Epoch => DaemonConfig {
            epoch_fence: true,
            fused_statements: false,
            lone_checkpoints: false,
            ..earlier
        },
        Schedule::Fused => DaemonConfig {
            epoch_fence: true,
            fused_statements: true,
            lone_checkpoints: false,
            ..earlier
        },
        Schedule::Lone => DaemonConfig {
            epoch_fence: true,
            fused_statements: false,
            lone_checkpoints: true,
            ..earlier
        },
        Schedule::LoneFused => DaemonConfig {
            epoch_fence: true,
            fused_statements: true,
            lone_checkpoints: true,
            ..earlier
        },
        Schedule::Analyzed | Schedule::Custom | Schedule::Folded | Schedule::AnalyzedFolded => {
            DaemonConfig {
                epoch_fence: true,
                fused_statements: false,
                lone_checkpoints: true,
                fresh_statistics: matches!(schedule, Schedule::Analyzed | Schedule::AnalyzedFolded),
                custom_plans: schedule == Schedule::Custom,
                fewer_round_trips: matches!(schedule, Schedule::Folded | Schedule::AnalyzedFolded),
                header_counters: false,
                paired_board_reads: false,
                live_snapshots_behind: false,
                ..tuned
            }
        }
        Schedule::Keyed
        | Schedule::Counters
        | Schedule::Stepped
        | Schedule::Paired
        | Schedule::Flat => DaemonConfig {
            loops: schedule != Schedule::Stepped,
            epoch_fence: true,
            fused_statements: false,
            lone_checkpoints: true,
            fresh_statistics: true,
            custom_plans: false,
            fewer_round_trips: false,
            header_counters: schedule != Schedule::Keyed,
            paired_board_reads: matches!(schedule, Schedule::Paired | Schedule::Flat),
            flat_durations: schedule == Schedule::Flat,
            live_snapshots_behind: false,
            ..tuned
        },
        Schedule::SnapshotsBehind
        | Schedule::BehindFolded
        | Schedule::BehindDirect
        | Schedule::BehindRelaxed => DaemonConfig {
            epoch_fence: true,
            lone_checkpoints: true,
            fresh_statistics: true,
            custom_plans: false,
            header_counters: true,
            paired_board_reads: true,
            flat_durations: true,
            live_snapshots_behind: true,
            fewer_round_trips: schedule == Schedule::BehindFolded,
            fused_statements: schedule == Schedule::BehindFolded,
            direct_wake: schedule == Schedule::BehindDirect,
            follower_pace: if schedule == Schedule::BehindRelaxed {
                RELAXED_PACE
            } else {
                tuned.follower_pace
            },
            ..tuned
        },
    };
    Daemon::new(
        pool.clone(),
        store.appended_signal(),
        Default::default(),
        DaemonConfig {
            matching: false,
            ..config
        },
        metrics,
    )
    .spawn()
}

/// What a lag measurement found: the lag of each append, and where the projector's
/// batches spent their time.
pub struct Lag {
    pub hist: Histogram<u64>,
    /// The warm-up's appends (not in `hist`, nor in anything else here but `stages`).
    pub warmup: Histogram<u64>,
    /// Where each append's lag went (see [`LagParts`]).
    pub parts: LagParts,
    pub stages: Vec<careboard::metrics::StageSummary>,
    pub batches_read: u64,
    pub batches_applied: u64,
    pub cpu: CpuPerAppend,
    /// Appends that committed.
    pub appends: usize,
    /// PostgreSQL's statistics of the round (`--pg-stats`).
    pub pg: Option<PgStats>,
}

/// CPU time per append of a lag round, in milliseconds (`None` where `/proc` cannot
/// tell: PostgreSQL on another host). Far steadier than latency on a busy machine.
pub struct CpuPerAppend {
    /// Every PostgreSQL backend and auxiliary process of the cluster.
    pub postgres_ms: Option<f64>,
    /// This process: the appends, the projector, the listener.
    pub process_ms: Option<f64>,
}

/// User plus system CPU ticks of every process of the cluster `pool` reaches (by the
/// pids `pg_stat_activity` lists), from `/proc`: `None` when it is not readable.
async fn postgres_cpu_ticks(pool: &PgPool) -> Result<Option<HashMap<i32, u64>>> {
    let pids: Vec<i32> =
        sqlx::query_scalar("select pid from pg_stat_activity where pid is not null")
            .fetch_all(pool)
            .await?;
    let ticks: HashMap<i32, u64> = pids
        .into_iter()
        .filter_map(|pid| Some((pid, proc_cpu_ticks(&format!("/proc/{pid}/stat"))?)))
        .collect();
    Ok((!ticks.is_empty()).then_some(ticks))
}

fn own_cpu_ticks() -> Option<u64> {
    proc_cpu_ticks("/proc/self/stat")
}

/// utime + stime of a `/proc/<pid>/stat` file.
fn proc_cpu_ticks(path: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(path).ok()?;
    // The fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 here.
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// The unit of `/proc`'s CPU times: USER_HZ, 100 on every Linux architecture.
fn clock_ticks_per_second() -> f64 {
    100.0
}

/// Each append's lag taken apart, from the appends' own timings and transaction ids
/// (microsecond histograms).
///
/// An event can be read only once every transaction with a lower id has ended (the
/// read's bound, DESIGN §3). `held` is how long after an append's commit the last
/// older append ended: the time its event could not be read whatever the projector
/// did (a lower bound: transactions other than these appends are not counted). `after`
/// is the rest of its lag, from the moment it could be read to the NOTIFY: waking,
/// waiting for a loop to come round, the read and the batch.
pub struct LagParts {
    /// An append's transaction, from the call to its commit returning.
    pub append: Histogram<u64>,
    pub held: Histogram<u64>,
    pub after: Histogram<u64>,
    /// `after` taken apart at the batch that applied the append (see [`LagSplit`]).
    pub split: LagSplit,
}

/// Takes each notified append's lag apart into [`LagParts`]. `appends`: (position,
/// started, ended) of every append that committed; `notified`: position → when its
/// NOTIFY arrived; `tx`: position → transaction id.
fn lag_parts(
    appends: &[(i64, Instant, Instant)],
    notified: &HashMap<i64, Instant>,
    tx: &HashMap<i64, u64>,
    mut batches: Vec<BatchSpan>,
) -> Result<LagParts> {
    let new = || Histogram::<u64>::new_with_bounds(1, 60_000_000, 3);
    let mut parts = LagParts {
        append: new()?,
        held: new()?,
        after: new()?,
        split: LagSplit {
            wait: new()?,
            batch: new()?,
            delivery: new()?,
            matched: 0,
        },
    };
    // board_view's batches follow one another: each starts where the last ended.
    batches.sort_by_key(|b| b.end);
    let batch_of = |cursor: (u64, i64)| {
        let i = batches.partition_point(|b| b.end < cursor);
        batches.get(i).filter(|b| b.after < cursor)
    };
    let micros = |d: Duration| (d.as_micros() as u64).max(1);
    let mut by_tx: Vec<(u64, Instant, Instant, i64)> = appends
        .iter()
        .filter_map(|(p, s, e)| tx.get(p).map(|t| (*t, *s, *e, *p)))
        .collect();
    by_tx.sort_by_key(|a| a.0);
    // The latest end among the appends with a lower transaction id, running.
    let mut older_end: Option<Instant> = None;
    for (xid, started, ended, position) in by_tx {
        let readable = older_end.map_or(ended, |o| o.max(ended));
        let _ = parts.append.record(micros(ended - started));
        let _ = parts.held.record(micros(readable - ended));
        if let Some(n) = notified.get(&position) {
            let _ = parts
                .after
                .record(micros(n.saturating_duration_since(readable)));
            if let Some(b) = batch_of((xid, position)) {
                let split = &mut parts.split;
                split.matched += 1;
                let _ = split
                    .wait
                    .record(micros(b.read_started.saturating_duration_since(readable)));
                let _ = split.batch.record(micros(
                    b.committed
                        .saturating_duration_since(b.read_started.max(readable)),
                ));
                let _ = split
                    .delivery
                    .record(micros(n.saturating_duration_since(b.committed)));
            }
        }
        older_end = Some(readable);
    }
    Ok(parts)
}

/// Waits until every projection's live generation has applied every committed event.
pub async fn wait_caught_up(pool: &PgPool) -> Result<()> {
    loop {
        let statuses = state::status(pool).await?;
        if statuses.len() >= Projection::ALL.len() && statuses.iter().all(|s| s.lag_events == 0) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub struct RebuildResult {
    pub events: usize,
    /// Rebuild rates per path, in the order each path first ran.
    pub rates: Vec<(RebuildPath, Vec<f64>)>,
    pub keyset_rate: f64,
}

/// The rebuild paths the rebuild rows compare, each a set of the process's switches
/// (and, bench-only, the documents' TOAST compression).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RebuildPath {
    /// Each event's `data` made into a `serde_json::Value` tree as its row is read and
    /// decoded from it; each event folded onto a copy of its stream's state; pglz.
    Before,
    /// Decoded straight from the column's JSON text; still folded onto a copy; pglz.
    Text,
    /// Decoded straight from the text and folded in place; documents compressed with
    /// pglz (the tables as they were before migration 0013).
    InPlace,
    /// `in-place`, with the documents compressed with lz4 (migration 0013).
    Lz4,
    /// `lz4`, with Board snapshots put together in the database from the rows the
    /// batch wrote (`insert … select`) instead of read back whole and sent again.
    Assembled,
    /// `assembled`, the rebuild reading the log with its own read: only the columns a
    /// fold reads (no `metadata`), instead of the live loops' read of every column.
    Lean,
    /// `lean`, the events read alone and their streams' type and Board looked up once
    /// per stream per batch, instead of joined to every event.
    Unjoined,
    /// `unjoined`, each batch's Board snapshots written behind it on another
    /// connection while the next batch is folded and written.
    Behind,
    /// `behind`, each Board snapshot made by one `jsonb_build_object` of the header's
    /// keys and the aggregated rows, instead of merged into the header by `||`.
    Built,
}

/// The TOASTed document columns a `board_view` rebuild writes, which migration 0013
/// compresses with lz4.
const DOC_COLUMNS: [&str; 3] = ["board_view", "board_view_appointments", "snapshots"];

impl RebuildPath {
    pub fn label(self) -> &'static str {
        match self {
            RebuildPath::Before => "before: data through a Value tree, folded onto a copy, pglz",
            RebuildPath::Text => "decoded from the jsonb text, folded onto a copy, pglz",
            RebuildPath::InPlace => "decoded from the text, folded in place, pglz",
            RebuildPath::Lz4 => "decoded from the text, folded in place, lz4 (0013)",
            RebuildPath::Assembled => "lz4, snapshots put together in the database",
            RebuildPath::Lean => "assembled, the rebuild's own read without metadata",
            RebuildPath::Unjoined => "lean, events read alone, streams looked up per batch",
            RebuildPath::Behind => "unjoined, Board snapshots written behind each batch",
            RebuildPath::Built => "behind, Board snapshots made by one jsonb_build_object",
        }
    }

    /// The TOAST compression of the documents this path writes.
    fn compression(self) -> &'static str {
        match self {
            RebuildPath::Before | RebuildPath::Text | RebuildPath::InPlace => "pglz",
            RebuildPath::Lz4
            | RebuildPath::Assembled
            | RebuildPath::Lean
            | RebuildPath::Unjoined
            | RebuildPath::Behind
            | RebuildPath::Built => "lz4",
        }
    }

    /// Selects this path for the whole process, and sets the documents' column
    /// compression to this path's (a catalog change only: rows already stored keep
    /// theirs, every row written from now on takes the column's). Bench-only: the
    /// migration sets lz4 once.
    async fn select(self, pool: &PgPool) -> Result<()> {
        careboard::domain::tagged::decode_through_value(self == RebuildPath::Before);
        careboard::projections::board_view::fold_board_by_copy(matches!(
            self,
            RebuildPath::Before | RebuildPath::Text
        ));
        careboard::snapshots::read_back_boards(!matches!(
            self,
            RebuildPath::Assembled
                | RebuildPath::Lean
                | RebuildPath::Unjoined
                | RebuildPath::Behind
                | RebuildPath::Built
        ));
        use careboard::snapshots::{select_board_snapshot_statement, BoardSnapshotStatement};
        select_board_snapshot_statement(match self {
            RebuildPath::Built => BoardSnapshotStatement::Built,
            _ => BoardSnapshotStatement::Aggregated,
        });
        use careboard::projector::rebuild::{pipeline_snapshots, select_read, RebuildRead};
        pipeline_snapshots(matches!(self, RebuildPath::Behind | RebuildPath::Built));
        select_read(match self {
            RebuildPath::Lean => RebuildRead::Lean,
            RebuildPath::Unjoined | RebuildPath::Behind | RebuildPath::Built => {
                RebuildRead::Unjoined
            }
            _ => RebuildRead::Shared,
        });
        for table in DOC_COLUMNS {
            sqlx::query(&format!(
                "alter table {table} alter column doc set compression {}",
                self.compression()
            ))
            .execute(pool)
            .await?;
        }
        Ok(())
    }
}

/// How a generation's documents (and the Board snapshots) were stored, counted by
/// compression method, e.g. `lz4 450, none 28350` (`none`: under the TOAST threshold):
/// shows that a round wrote with the compression it was meant to.
async fn compressions(pool: &PgPool, generation: i32) -> Result<String> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "select coalesce(m, 'none'), count(*) from ( \
           select pg_column_compression(doc) m from board_view where generation = $1 \
           union all select pg_column_compression(doc) from board_view_appointments where generation = $1 \
           union all select pg_column_compression(doc) from snapshots where kind = 'board') d \
          group by 1 order by 1",
    )
    .bind(generation)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .iter()
        .map(|(m, n)| format!("{m} {n}"))
        .collect::<Vec<_>>()
        .join(", "))
}

/// Loads `target_events`, then measures a keyset read of the log and rebuilds of
/// `board_view` over it on `paths` in the order given (alternate them, so that the
/// machine's drift falls on each), each watched through its generation's row.
pub async fn rebuild(
    pool: &PgPool,
    target_events: usize,
    paths: &[RebuildPath],
    pg_stats: bool,
) -> Result<RebuildResult> {
    let history = generate(target_events);
    let started = Instant::now();
    load(pool, &history).await?;
    println!(
        "  loaded {} events in {:.1} s",
        history.len(),
        started.elapsed().as_secs_f64()
    );
    sqlx::query("analyze events").execute(pool).await?;
    sqlx::query("analyze streams").execute(pool).await?;

    // Baseline: the projector's own read query, without applying anything.
    let started = Instant::now();
    let mut cursor = ("0".to_string(), 0i64);
    let mut read = 0usize;
    loop {
        let rows: Vec<(String, i64, Value)> = sqlx::query_as(
            "select e.tx::text, e.seq, e.data from events e join streams s on s.id = e.stream_id \
              where (e.tx, e.seq) > ($1::text::xid8, $2) \
                and e.tx < pg_snapshot_xmin(pg_current_snapshot()) \
              order by e.tx, e.seq limit 5000",
        )
        .bind(&cursor.0)
        .bind(cursor.1)
        .fetch_all(pool)
        .await?;
        let Some(last) = rows.last() else { break };
        cursor = (last.0.clone(), last.1);
        read += rows.len();
    }
    let keyset_rate = read as f64 / started.elapsed().as_secs_f64();

    // Live generations start caught up, so the rebuild runs alone.
    state::ensure_generations(pool).await?;
    sqlx::query(
        "update projection_state set (tx, seq) = (select tx, seq from events order by tx desc, seq desc limit 1) \
          where status = 'live'",
    )
    .execute(pool)
    .await?;
    let store = EventStore::new(pool.clone(), Duration::from_secs(5));
    let mut result = RebuildResult {
        events: history.len(),
        rates: Vec::new(),
        keyset_rate,
    };
    for &path in paths {
        path.select(pool).await?;
        // Every rebuild writes its snapshots afresh (a rebuild of the same fold skips
        // the ones already there).
        sqlx::query("delete from snapshots").execute(pool).await?;
        let generation = state::request_rebuild(pool, Projection::BoardView).await?;
        let checkpoints_before = if pg_stats {
            Some(pg_stats_reset(pool).await?)
        } else {
            None
        };
        let metrics = Arc::new(Metrics::new());
        let cpu_before = (postgres_cpu_ticks(pool).await?, own_cpu_ticks());
        let started = Instant::now();
        let projector = start_projector_with(pool, &store, Schedule::Tuned, metrics.clone());
        loop {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let live = sqlx::query_scalar::<_, bool>(
                "select status = 'live' from projection_state where name = 'board_view' and generation = $1",
            )
            .bind(generation)
            .fetch_optional(pool)
            .await?
            .unwrap_or(false);
            if live {
                break;
            }
        }
        let took = started.elapsed();
        let rate = history.len() as f64 / took.as_secs_f64();
        let cpu_after = (postgres_cpu_ticks(pool).await?, own_cpu_ticks());
        projector.stop().await?;
        println!(
            "  round {}: {rate:.0} events/s; documents by compression: {}",
            path.label(),
            compressions(pool, generation).await?
        );
        print_rebuild_attribution(&metrics, took, history.len(), (cpu_before, cpu_after));
        if let Some(before) = checkpoints_before {
            let pg = pg_stats_collect(pool, before).await?;
            print_rebuild_statements(&pg, history.len());
        }
        match result.rates.iter_mut().find(|(p, _)| *p == path) {
            Some((_, rates)) => rates.push(rate),
            None => result.rates.push((path, vec![rate])),
        }
    }
    RebuildPath::Built.select(pool).await?;
    Ok(result)
}

type CpuTicks = (Option<HashMap<i32, u64>>, Option<u64>);

/// Where a rebuild round's time went: the projector's stages (summed over batches;
/// the rebuild's read of the next batch runs beside the current batch's apply), and
/// the CPU PostgreSQL's backends and this process used, per event.
fn print_rebuild_attribution(
    metrics: &Metrics,
    took: Duration,
    events: usize,
    (before, after): (CpuTicks, CpuTicks),
) {
    let per_event_us = |ms: f64| ms * 1000.0 / events.max(1) as f64;
    let parts: Vec<String> = metrics
        .projector_stages()
        .iter()
        .filter(|s| s.stage != careboard::metrics::ProjectorStage::Visible)
        .map(|s| {
            let total_ms = s.mean_ms * s.count as f64;
            format!(
                "{} {:.0} ms ({} × {:.1} ms, {:.2} µs/event)",
                s.stage.as_str(),
                total_ms,
                s.count,
                s.mean_ms,
                per_event_us(total_ms)
            )
        })
        .collect();
    println!(
        "    stages over {:.0} ms: {}",
        took.as_secs_f64() * 1000.0,
        parts.join("; ")
    );
    let postgres = after.0.as_ref().map(|after| {
        after
            .iter()
            .map(|(pid, t)| {
                let b = before.0.as_ref().and_then(|b| b.get(pid)).copied();
                t.saturating_sub(b.unwrap_or(0))
            })
            .sum::<u64>()
    });
    let ms = |ticks: Option<u64>| ticks.map(|t| t as f64 * 1000.0 / clock_ticks_per_second());
    let own = after.1.zip(before.1).map(|(a, b)| a.saturating_sub(b));
    let show = |v: Option<f64>| {
        v.map_or_else(
            || "n/a".to_string(),
            |ms| format!("{ms:.0} ms ({:.2} µs/event)", per_event_us(ms)),
        )
    };
    println!(
        "    CPU: PostgreSQL backends {}, this process (projector, harness) {}",
        show(ms(postgres)),
        show(ms(own))
    );
}

/// A rebuild round's statements (`--pg-stats`): time, calls and rows, per event.
fn print_rebuild_statements(pg: &PgStats, events: usize) {
    let total: f64 = pg.statements.iter().map(|s| s.total_ms).sum();
    println!(
        "    PostgreSQL statements {total:.0} ms ({:.2} µs/event), WAL {:.1} MB:",
        total * 1000.0 / events.max(1) as f64,
        pg.wal_bytes / 1e6
    );
    for s in pg.statements.iter().filter(|s| s.total_ms >= 1.0) {
        let text: String = s.query.chars().take(110).collect();
        println!(
            "      {:>7.0} ms {:>6} calls {:>8} rows  {:.2} µs/event  {}",
            s.total_ms,
            s.calls,
            s.rows,
            s.total_ms * 1000.0 / events.max(1) as f64,
            text
        );
    }
}

/// Appends at `rate` per second (open loop) for `seconds` with the projector running,
/// and measures for each append the time from its commit to the projector's NOTIFY of
/// a Board version that includes it.
pub async fn lag(
    pool: &PgPool,
    rate: f64,
    seconds: u64,
    warmup: Duration,
    schedule: Schedule,
    pg_stats: bool,
) -> Result<Lag> {
    let store = EventStore::new(pool.clone(), Duration::from_secs(5));
    if schedule.unkeyed() {
        // The listing index as it was before migration 0016 (see `Schedule::Keyed`).
        sqlx::query(
            "create index board_view_listing_unrestricted on board_view (generation, date, id)",
        )
        .execute(pool)
        .await?;
    }
    let metrics = Arc::new(Metrics::new());
    let projector = start_projector_with(pool, &store, schedule, metrics.clone());
    let mut boards = Vec::new();
    for _ in 0..50 {
        boards.push(crate::open_board(&store).await?);
    }
    // Start from a caught-up projector: earlier scenarios' events are not this lag.
    crate::project::wait_caught_up(pool).await?;
    let mut listener = sqlx::postgres::PgListener::connect_with(pool).await?;
    listener
        .listen(careboard::projections::board_view::BoardChanged::CHANNEL)
        .await?;
    // Taken when the warm-up ends (now, without one).
    let mut cpu_before = None;
    let mut checkpoints_before = None;
    let pending: Pending = Arc::default();
    // (position, started, committed) of each append; position → its NOTIFY's arrival.
    let appended = Arc::new(std::sync::Mutex::new(Vec::<(i64, Instant, Instant)>::new()));
    let notified = Arc::new(std::sync::Mutex::new(HashMap::<i64, Instant>::new()));
    let hist = Arc::new(std::sync::Mutex::new(Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?));
    // The warm-up's appends: reported beside the row, not counted in it.
    let warm = Arc::new(std::sync::Mutex::new(Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?));
    let listening = {
        let pending = pending.clone();
        let hist = hist.clone();
        let warm = warm.clone();
        let notified = notified.clone();
        tokio::spawn(async move {
            while let Ok(n) = listener.recv().await {
                let mut parts = n.payload().split(':');
                let (Some(board), _, Some(position)) = (parts.next(), parts.next(), parts.next())
                else {
                    continue;
                };
                let position: i64 = position.parse().unwrap_or(0);
                let now = Instant::now();
                let mut pending = pending.lock().unwrap();
                let (seen, list) = pending.entry(board.to_string()).or_default();
                *seen = (*seen).max(position);
                {
                    let mut hist = hist.lock().unwrap();
                    let mut warm = warm.lock().unwrap();
                    let mut notified = notified.lock().unwrap();
                    list.retain(|(p, t, measured)| {
                        if *p <= position {
                            let lag = now.duration_since(*t).as_micros() as u64;
                            if *measured {
                                let _ = hist.record(lag);
                                notified.insert(*p, now);
                            } else {
                                let _ = warm.record(lag);
                            }
                            false
                        } else {
                            true
                        }
                    });
                }
            }
        })
    };
    let interval = Duration::from_secs_f64(1.0 / rate);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let measured_from = Instant::now() + warmup;
    let deadline = measured_from + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    let mut i = 0u64;
    while Instant::now() < deadline {
        ticker.tick().await;
        let measured = Instant::now() >= measured_from;
        if measured && cpu_before.is_none() {
            // The warm-up is over: CPU, statistics and batches count from here.
            cpu_before = Some((postgres_cpu_ticks(pool).await?, own_cpu_ticks()));
            if pg_stats {
                checkpoints_before = Some(pg_stats_reset(pool).await?);
            }
            BATCH_SPANS.lock().unwrap().clear();
        }
        let store = store.clone();
        let board = boards[(i % boards.len() as u64) as usize].clone();
        let pending = pending.clone();
        let hist = hist.clone();
        let warm = warm.clone();
        let appended = appended.clone();
        let notified = notified.clone();
        tasks.push(tokio::spawn(async move {
            let input = crate::request_input(&board, i);
            let started = Instant::now();
            if let Ok(w) = careboard::commands::request_appointment(
                &store,
                careboard::event_store::unit_of_work::CommandMeta::new("requestAppointment"),
                input,
            )
            .await
            {
                let committed = Instant::now();
                if measured {
                    appended
                        .lock()
                        .unwrap()
                        .push((w.position, started, committed));
                }
                let mut pending = pending.lock().unwrap();
                let (seen, list) = pending.entry(board).or_default();
                if w.position <= *seen {
                    // The notice beat us to it: the lag was at most this short.
                    if measured {
                        let _ = hist.lock().unwrap().record(1);
                        notified.lock().unwrap().insert(w.position, committed);
                    } else {
                        let _ = warm.lock().unwrap().record(1);
                    }
                } else {
                    list.push((w.position, committed, measured));
                }
            }
        }));
        i += 1;
    }
    for t in tasks {
        t.await?;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu_after = (postgres_cpu_ticks(pool).await?, own_cpu_ticks());
    let cpu_before = cpu_before.unwrap_or((None, None));
    let pg = match checkpoints_before {
        Some(before) => Some(pg_stats_collect(pool, before).await?),
        None => None,
    };
    let batches = std::mem::take(&mut *BATCH_SPANS.lock().unwrap());
    listening.abort();
    projector.stop().await?;
    let hist = hist.lock().unwrap().clone();
    let warmup = warm.lock().unwrap().clone();
    let appended = std::mem::take(&mut *appended.lock().unwrap());
    let positions: Vec<i64> = appended.iter().map(|a| a.0).collect();
    let tx: HashMap<i64, u64> =
        sqlx::query_as::<_, (i64, String)>("select seq, tx::text from events where seq = any($1)")
            .bind(&positions)
            .fetch_all(pool)
            .await?
            .into_iter()
            .filter_map(|(seq, tx)| Some((seq, tx.parse().ok()?)))
            .collect();
    let parts = lag_parts(&appended, &notified.lock().unwrap(), &tx, batches)?;
    // CPU per append, PostgreSQL's and this process's (appends, projector, listener).
    let per_append = |before: Option<u64>, after: Option<u64>| {
        let ticks = after?.checked_sub(before?)?;
        let ms = ticks as f64 * 1000.0 / clock_ticks_per_second();
        Some(ms / appended.len().max(1) as f64)
    };
    // A backend that started during the round counts whole; one that ended during it
    // is lost (the pools' connections live through the round).
    let postgres_ticks = cpu_after.0.as_ref().map(|after| {
        after
            .iter()
            .map(|(pid, t)| {
                let before = cpu_before.0.as_ref().and_then(|b| b.get(pid)).copied();
                t.saturating_sub(before.unwrap_or(0))
            })
            .sum::<u64>()
    });
    let cpu = CpuPerAppend {
        postgres_ms: per_append(Some(0), postgres_ticks),
        process_ms: per_append(cpu_before.1, cpu_after.1),
    };
    Ok(Lag {
        appends: appended.len(),
        pg,
        cpu,
        hist,
        warmup,
        parts,
        stages: metrics.projector_stages(),
        batches_read: metrics.projector_batches_read(),
        batches_applied: metrics.projector_batches(),
    })
}

/// PostgreSQL's own account of a lag round (`--pg-stats`): time and calls per
/// statement from `pg_stat_statements`, WAL from `pg_stat_wal`, checkpoints from
/// `pg_stat_bgwriter`, all per append. Needs the cluster started with
/// `shared_preload_libraries = pg_stat_statements` (the bench does so with the flag).
pub struct PgStats {
    /// Statements of the round's database, most total time first.
    pub statements: Vec<StatementStats>,
    pub wal_records: f64,
    pub wal_fpi: f64,
    pub wal_bytes: f64,
    pub wal_writes: f64,
    pub wal_syncs: f64,
    /// Milliseconds spent writing and syncing WAL (with `track_wal_io_timing`).
    pub wal_write_ms: f64,
    pub wal_sync_ms: f64,
    pub checkpoints: i64,
}

/// One normalised statement's totals over a lag round.
pub struct StatementStats {
    /// What it is in the append path or the projector (see [`statement_label`]).
    pub label: &'static str,
    pub query: String,
    pub calls: i64,
    /// Execution plus planning, milliseconds.
    pub total_ms: f64,
    pub plan_ms: f64,
    pub rows: i64,
    /// Shared buffers hit and read (pages touched: a scan shows here).
    pub blocks: i64,
    pub wal_bytes: f64,
}

/// What a statement of a lag round does, from its text.
pub fn statement_label(query: &str) -> &'static str {
    let q = query.to_ascii_lowercase();
    let has = |s: &str| q.contains(s);
    if has("insert into events") {
        "append: the command's one statement"
    } else if q.trim() == "begin" {
        "projector: BEGIN"
    } else if q.trim() == "commit" {
        "projector: COMMIT (and the appends' none: they autocommit)"
    } else if has("pg_current_xact_id()::text") {
        "projector: transaction id (epoch hold, async commit)"
    } else if has("pg_advisory_xact_lock_shared") {
        "projector: settings after a folded BEGIN (epoch hold, async commit)"
    } else if has("pg_snapshot_xip") {
        "projector: the shared (tx, seq) read below the horizon"
    } else if has("update projection_state") && has("pg_notify") {
        "projector: checkpoint CAS with the NOTIFY (fused)"
    } else if has("update projection_state") {
        "projector: checkpoint compare-and-set (fenced)"
    } else if has("pg_notify") {
        "projector: NOTIFY (board_view)"
    } else if has("with headers as") {
        "board_view: headers and appointment rows written (one statement)"
    } else if has("insert into board_view_appointments") {
        "board_view: appointment rows written"
    } else if has("insert into board_view ") || has("insert into board_view(") {
        "board_view: Board header written"
    } else if has("update board_view v set version") {
        "board_view: Board header's counters written"
    } else if has("board_view_appointments") || has("from board_view") {
        "board_view: documents read"
    } else if has("insert into appointment_view") {
        "appointment_view: documents written"
    } else if has("from appointment_view") {
        "appointment_view: documents read"
    } else if has("insert into provider_shift_view") {
        "provider_shift_view: documents written"
    } else if has("from provider_shift_view") {
        "provider_shift_view: documents read"
    } else if has("insert into appointment_durations") {
        "appointment_durations: rows written"
    } else if has("from appointment_durations") {
        "appointment_durations: rows read"
    } else if has("insert into snapshots") {
        "snapshots written"
    } else if has("listen") || has("pg_stat_activity") || has("pg_stat_") {
        "bench harness"
    } else if has("from events") || has("from streams") {
        "log/stream read (gap fill, command)"
    } else {
        "other"
    }
}

/// Clears the statistics [`pg_stats_collect`] reads and returns the checkpoints so far;
/// fails when `pg_stat_statements` is not loaded.
pub async fn pg_stats_reset(pool: &PgPool) -> Result<i64> {
    sqlx::query("create extension if not exists pg_stat_statements")
        .execute(pool)
        .await?;
    sqlx::query("select pg_stat_statements_reset()")
        .execute(pool)
        .await?;
    sqlx::query("select pg_stat_reset_shared('wal')")
        .execute(pool)
        .await?;
    let checkpoints: i64 =
        sqlx::query_scalar("select checkpoints_timed + checkpoints_req from pg_stat_bgwriter")
            .fetch_one(pool)
            .await?;
    Ok(checkpoints)
}

/// The round's statistics since [`pg_stats_reset`] (which returned `checkpoints_before`).
pub async fn pg_stats_collect(pool: &PgPool, checkpoints_before: i64) -> Result<PgStats> {
    // Let backends flush their pending WAL counters (they report at most once a second
    // while busy, and when idle).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let rows: Vec<(String, i64, f64, f64, i64, i64, f64)> = sqlx::query_as(
        "select query, calls, total_exec_time + total_plan_time, total_plan_time, rows, \
                shared_blks_hit + shared_blks_read, wal_bytes::float8 \
           from pg_stat_statements \
          where dbid = (select oid from pg_database where datname = current_database()) \
          order by total_exec_time + total_plan_time desc",
    )
    .fetch_all(pool)
    .await?;
    let statements = rows
        .into_iter()
        .map(
            |(query, calls, total_ms, plan_ms, rows, blocks, wal_bytes)| StatementStats {
                label: statement_label(&query),
                query: query.split_whitespace().collect::<Vec<_>>().join(" "),
                calls,
                total_ms,
                plan_ms,
                rows,
                blocks,
                wal_bytes,
            },
        )
        .collect();
    let wal: (f64, f64, f64, f64, f64, f64, f64) = sqlx::query_as(
        "select wal_records::float8, wal_fpi::float8, wal_bytes::float8, wal_write::float8, \
                wal_sync::float8, wal_write_time, wal_sync_time from pg_stat_wal",
    )
    .fetch_one(pool)
    .await?;
    let checkpoints: i64 =
        sqlx::query_scalar("select checkpoints_timed + checkpoints_req from pg_stat_bgwriter")
            .fetch_one(pool)
            .await?;
    Ok(PgStats {
        statements,
        wal_records: wal.0,
        wal_fpi: wal.1,
        wal_bytes: wal.2,
        wal_writes: wal.3,
        wal_syncs: wal.4,
        wal_write_ms: wal.5,
        wal_sync_ms: wal.6,
        checkpoints: checkpoints - checkpoints_before,
    })
}

/// One committed `board_view` batch, from the projector's trace event
/// ([`careboard::projector::BATCH_TRACE_TARGET`]): the cursors it moved between and the
/// instants its read started and it committed.
#[derive(Debug, Clone, Copy)]
pub struct BatchSpan {
    pub after: (u64, i64),
    pub end: (u64, i64),
    pub read_started: Instant,
    pub committed: Instant,
}

static BATCH_SPANS: std::sync::Mutex<Vec<BatchSpan>> = std::sync::Mutex::new(Vec::new());

/// A `tracing` layer that keeps the projector's `board_view` batch events for
/// [`lag_split`]. Install it with a filter for
/// [`careboard::projector::BATCH_TRACE_TARGET`] at debug level.
pub struct BatchTrace;

#[derive(Default)]
struct BatchFields {
    projection: String,
    after_tx: u64,
    after_seq: i64,
    end_tx: u64,
    end_seq: i64,
    since_read_us: u64,
}

impl tracing::field::Visit for BatchFields {
    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        match field.name() {
            "after_tx" => self.after_tx = value,
            "after_seq" => self.after_seq = value as i64,
            "end_tx" => self.end_tx = value,
            "end_seq" => self.end_seq = value as i64,
            "since_read_us" => self.since_read_us = value,
            _ => {}
        }
    }
    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        match field.name() {
            "after_seq" => self.after_seq = value,
            "end_seq" => self.end_seq = value,
            _ => self.record_u64(field, value.max(0) as u64),
        }
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "projection" {
            self.projection = value.to_string();
        }
    }
    fn record_debug(&mut self, _: &tracing::field::Field, _: &dyn std::fmt::Debug) {}
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for BatchTrace {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if event.metadata().target() != careboard::projector::BATCH_TRACE_TARGET {
            return;
        }
        let now = Instant::now();
        let mut f = BatchFields::default();
        event.record(&mut f);
        if f.projection != Projection::BoardView.name() {
            return;
        }
        BATCH_SPANS.lock().unwrap().push(BatchSpan {
            after: (f.after_tx, f.after_seq),
            end: (f.end_tx, f.end_seq),
            read_started: now - Duration::from_micros(f.since_read_us),
            committed: now,
        });
    }
}

/// The rest of each append's lag, after it became readable, taken apart at the
/// `board_view` batch that applied it (microsecond histograms).
pub struct LagSplit {
    /// Readable → the read that returned it started: waiting for `board_view`'s loop
    /// to wake or to finish its previous batch.
    pub wait: Histogram<u64>,
    /// That read's start → the batch's commit: the read and the batch.
    pub batch: Histogram<u64>,
    /// Commit → the NOTIFY heard by the harness.
    pub delivery: Histogram<u64>,
    /// Appends matched to a batch, of those notified.
    pub matched: u64,
}
