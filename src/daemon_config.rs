//! How the daemon runs its leader terms: the projector's reads, writes and retries,
//! the matcher's, and the leader lock's checks. A module of its own so that the
//! projector and the matcher read it without depending on the daemon that runs them.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// Most events read and applied per transaction.
    pub batch_size: i64,
    /// Batch size of a side-by-side rebuild: larger, so it catches up with the live
    /// generation while appends continue.
    pub rebuild_batch_size: i64,
    /// Longest sleep between polls when idle (the poll interval adapts up to it).
    pub max_poll_interval: Duration,
    /// How often a standby tries for the leader lock, and the leader checks it holds it.
    pub leader_check_interval: Duration,
    /// Attempts at an event (projector) or a batch (matcher) before it is set aside.
    pub max_attempts: u32,
    /// First retry delay; doubles per attempt.
    pub retry_backoff: Duration,
    /// Snapshot a document every this many events (0: never). Bounds `asOf` folds.
    pub snapshot_every: i64,
    /// Live projections at one checkpoint share one read of the log, and the next batch
    /// is read while the current one is written. Off, each projection reads for itself
    /// and nothing is read ahead: the older way, kept so the bench can measure both.
    pub shared_read: bool,
    /// Each projection generation runs on a loop of its own behind the shared read
    /// (see [`crate::projector`]): a slow projection holds no other back. Off, they step
    /// together, a round ending when the slowest has committed: the earlier schedule,
    /// kept so the bench can measure both in one run.
    pub loops: bool,
    /// With loops, the projector's transactions commit without waiting for their WAL to
    /// reach disk (`synchronous_commit = off` for those transactions only; appends stay
    /// durable). A projection is derived from the log: if the database crashes, the last
    /// moments of documents are lost together with their checkpoint (one transaction),
    /// and the projector applies those events again to the same result. Saves a disk
    /// flush per batch, a few milliseconds of lag.
    pub async_commit: bool,
    /// With loops, the shortest time between two batches of a projection other than
    /// `board_view` (zero: none). They then take what `board_view` read meanwhile in
    /// fewer, larger transactions, and leave it the CPU. A full batch (a backlog) goes
    /// again at once. The price: a `minPosition` read of an appointment or a shift may
    /// wait up to this much longer.
    pub follower_pace: Duration,
    /// With loops, the append signal reaches each projection's loop straight from the
    /// daemon's one waiting task (no supervisor in between), `board_view`'s last so it
    /// runs next on that core; and `board_view`'s loop reads and writes on a connection
    /// of its own (no pool acquire, no task to hand a connection back after each
    /// statement). Off: the signal goes daemon → projector supervisor → every loop, and
    /// every statement takes a pooled connection: the earlier path, kept so the bench
    /// can measure both in one run. Off by default: on the shared machine the bench
    /// showed no clear gain either way (docs/BENCHMARKS.md, "Waking board_view
    /// directly").
    pub direct_wake: bool,
    /// Checkpoint writes are fenced by the leader epoch (a lookup and a row lock on a
    /// one-row table, see [`crate::leader`]). Off: by looking the leader lock up in
    /// `pg_locks`, which copies the whole lock table per batch and does not make a new
    /// leader wait for a batch the old one has open: the earlier fence, kept so the
    /// bench can measure both in one run. On by default for the race it closes; the
    /// bench showed its cost within the noise (docs/BENCHMARKS.md, "The leader epoch
    /// fence and the NOTIFY in the checkpoint statement").
    pub epoch_fence: bool,
    /// Each batch's NOTIFY is sent by the checkpoint's compare-and-set statement: one
    /// round trip fewer per `board_view` batch. Off: a statement of its own, the
    /// earlier path. Off by default: on the shared machine it lowered PostgreSQL's CPU
    /// per append and the lag's median a little, but not the lag's p99 (same section).
    pub fused_statements: bool,
    /// With loops, a batch that holds no event of its projection (most of a
    /// projection's batches when the appends are of other kinds, e.g. every batch of
    /// `provider_shift_view` while only appointments are requested) moves its
    /// checkpoint in one autocommit statement, still fenced by the leader epoch,
    /// instead of a transaction of four round trips. Off: every batch is a transaction,
    /// the earlier path, kept so the bench can measure both in one run. On by default:
    /// the lag's p99 was lower in 8 of 11 same-run pairs on the shared machine
    /// (docs/BENCHMARKS.md, "Projector lag attributed per statement").
    pub lone_checkpoints: bool,
    /// With loops, each batch transaction plans its statements for their own
    /// parameters and the tables' current sizes (`plan_cache_mode =
    /// force_custom_plan`, set by its first statement for that transaction only).
    /// Without it, PostgreSQL switches a prepared statement to a generic plan after
    /// five executions and keeps it until the table is next analyzed. Costs each
    /// statement a planning, and does not help where statistics are missing (a Board
    /// read still walks the Board): `fresh_statistics` is the fix kept; this stays off
    /// (docs/BENCHMARKS.md, "Fresh statistics, custom plans and fewer round trips").
    pub custom_plans: bool,
    /// With loops, `board_view`'s live batches take two round trips fewer: the
    /// transaction opens with one simple query (BEGIN, the epoch hold and the
    /// transaction's settings) instead of BEGIN and a statement that also takes the
    /// transaction id, and the Board headers and their appointment rows are written by
    /// one statement instead of two. The transaction's id is then not registered with
    /// the projector's own, so a read made while it runs (a follower's, or the
    /// read-ahead behind a full batch) stays below it: correct, only more careful;
    /// `board_view`'s own next read comes after its commit. Off: the earlier path. Off
    /// by default: no clear same-run gain (docs/BENCHMARKS.md, "Fresh statistics,
    /// custom plans and fewer round trips").
    pub fewer_round_trips: bool,
    /// With loops, the projector analyzes each projection table whenever its size has
    /// doubled since its last analyze, from 8 pages on (see
    /// [`crate::projector::statistics`]): on a fresh database the batches' locked
    /// reads otherwise run on plans made for nearly empty tables. Off: statistics come
    /// from autovacuum alone, the earlier path, kept so the bench can measure both in
    /// one run. On by default: the lag's p99 was lower in every same-run pair
    /// (docs/BENCHMARKS.md, "Fresh statistics, custom plans and fewer round trips").
    pub fresh_statistics: bool,
    /// A `board_view` batch that applies only appointment events to a stored Board
    /// writes the header's counters (version, position, newest recorded time) as
    /// columns and leaves its document as it is, instead of rewriting the whole header
    /// (migration 0016; readers take the counters from the columns). Off: every
    /// header written whole, the earlier path, kept so the bench can measure both in
    /// one run. On by default: ~0.4 KB less WAL per append, and the lag's p99 lower in
    /// 7 of 10 same-run pairs (docs/BENCHMARKS.md, "Board headers: counters as
    /// columns").
    pub header_counters: bool,
    /// A `board_view` batch's locked read of its Boards looks each touched appointment
    /// up under its own Board, one key lookup per (Board, appointment) pair (see
    /// [`crate::projections::store::load_boards_touched`]). Off: every Board is
    /// searched for every appointment the batch touched, b × n index searches for n
    /// appointments over b Boards: the earlier read, kept so the bench can measure both
    /// in one run. On by default: the read visited 44–54 pages a call where the earlier
    /// one visited 800 at the same rate (docs/BENCHMARKS.md, "Board reads by pair").
    pub paired_board_reads: bool,
    /// `appointment_durations` is folded from its flat columns and stores no jsonb
    /// document (migration 0017 lets `doc` be null): a batch reads and writes only
    /// the columns readers use (see [`crate::projections::store::load_durations`]).
    /// On by default: on an idle machine it had the lower lag p50 and p99 and less
    /// PostgreSQL CPU per append in both same-run pairs (docs/BENCHMARKS.md, "Latest
    /// results"). Off: each row also keeps its folded appointment as a document, the
    /// earlier path, kept so the bench can measure both in one run.
    pub flat_durations: bool,
    /// A live `board_view` loop commits each batch (documents, checkpoint, NOTIFY)
    /// without its Board snapshots, and writes them behind it on a connection of its
    /// own, in a transaction whose view of the documents is taken before the next
    /// batch commits (see `projector::behind`). On by default: written in the batch,
    /// the snapshots of the Boards that passed a snapshot boundary together held
    /// every Board's NOTIFY back by up to ~450 ms at half the maximum append rate
    /// (docs/BENCHMARKS.md, "Projector lag: Board snapshots written behind").
    /// Off: written in the batch's transaction, the earlier path, kept so the bench
    /// can measure both in one run.
    pub live_snapshots_behind: bool,
    /// Whether the leader also runs the matcher (automatic scheduling).
    pub matching: bool,
    /// How often the matcher retries the Boards it parked.
    pub parked_retry_interval: Duration,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            batch_size: 1000,
            rebuild_batch_size: 20_000,
            snapshot_every: 500,
            shared_read: true,
            loops: true,
            async_commit: true,
            follower_pace: Duration::from_millis(10),
            direct_wake: false,
            epoch_fence: true,
            fused_statements: false,
            lone_checkpoints: true,
            custom_plans: false,
            fewer_round_trips: false,
            fresh_statistics: true,
            header_counters: true,
            paired_board_reads: true,
            flat_durations: true,
            live_snapshots_behind: true,
            max_poll_interval: Duration::from_millis(250),
            leader_check_interval: Duration::from_secs(1),
            max_attempts: 3,
            retry_backoff: Duration::from_millis(50),
            matching: true,
            parked_retry_interval: Duration::from_secs(5),
        }
    }
}
