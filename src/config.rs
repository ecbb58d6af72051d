//! Settings from the command line and the environment (every flag has a variable).

use std::path::PathBuf;

use clap::{ArgAction, Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "careboard",
    version,
    about = "Event-sourced telehealth scheduling backend with a GraphQL API",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// `serve`'s options, accepted without the subcommand too (`serve` is the default).
    #[command(flatten)]
    pub serve: ServeArgs,
    #[command(subcommand)]
    pub command: Option<Command>,
}

// Parsed once at start-up: the size of the `serve` variant (all the limits) is no cost.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve GraphQL over HTTP (the default).
    Serve(ServeArgs),
    /// Apply database migrations and exit.
    Migrate,
    /// Print the GraphQL schema (SDL); `careboard schema > schema.graphql` refreshes it.
    Schema,
    /// Inspect and rebuild projections.
    Projections {
        #[command(subcommand)]
        action: ProjectionsCommand,
    },
    /// A realistic telehealth day: imported as history (default), or played live at a
    /// speed-up with `--live` so a Board visibly moves. Deterministic with `--seed`.
    Demo(DemoArgs),
    /// Print a bearer token signed by the development issuer (the identity provider of
    /// the embedded default), e.g. `careboard token --role coordinator --name "Ana Ruiz"`.
    Token(crate::identity::dev_issuer::TokenArgs),
    /// Check the access log of patient-data reads.
    Audit {
        #[command(subcommand)]
        action: AuditCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Walk the access log's hash chain; report the first edited or missing record.
    Verify,
}

#[derive(Debug, Subcommand)]
pub enum ProjectionsCommand {
    /// The registered projections and their versions.
    List,
    /// Checkpoint, lag, state, rebuild progress and dead letters of each generation.
    Status,
    /// Rebuild a projection side by side while Careboard keeps serving, then swap it in.
    /// Runs the projector here if no other process leads; waits until the swap.
    Rebuild {
        /// board_view, appointment_view, provider_shift_view or appointment_durations.
        name: String,
    },
    /// Replay dead-lettered events of a projection (after fixing what failed).
    ReplayDeadLetters { name: String },
}

/// Whether this process runs the projector, serves HTTP, or both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProjectorMode {
    /// Serve, and project when this process wins the leader lock.
    Auto,
    /// Serve only.
    Off,
    /// Project (as leader or standby) without serving HTTP.
    Only,
}

#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// PostgreSQL URL. Without it Careboard runs a private cluster in --data-dir.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    pub database_url: Option<String>,
    /// Where the embedded PostgreSQL cluster lives (used when DATABASE_URL is unset).
    #[arg(
        long,
        env = "CAREBOARD_DATA_DIR",
        default_value = ".careboard",
        global = true
    )]
    pub data_dir: PathBuf,
    /// Connections in the pool.
    #[arg(
        long,
        env = "CAREBOARD_DB_POOL_SIZE",
        default_value_t = 32,
        global = true
    )]
    pub pool_size: u32,
    /// How long a command waits for a stream row another command holds (an exclusive-mode
    /// lock, or the append's own write) before answering CONFLICT.
    #[arg(
        long,
        env = "CAREBOARD_LOCK_TIMEOUT_MS",
        default_value_t = 5000,
        global = true
    )]
    pub lock_timeout_ms: u64,
    /// PostgreSQL URL of the role that owns the schema and runs migrations; with it,
    /// DATABASE_URL names the application role, which may not rewrite events.
    /// Without it, migrations run as DATABASE_URL's role.
    #[arg(
        long,
        env = "DATABASE_OWNER_URL",
        global = true,
        hide_env_values = true
    )]
    pub database_owner_url: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "CAREBOARD_BIND", default_value = "127.0.0.1:8080")]
    pub bind: String,
    /// Run the projector in this process: auto, off or only.
    #[arg(long, env = "CAREBOARD_PROJECTOR", value_enum, default_value = "auto")]
    pub projector: ProjectorMode,
    /// How long a query with `minPosition` waits for the projector before answering STALE.
    #[arg(long, env = "CAREBOARD_READ_WAIT_MS", default_value_t = 5000)]
    pub read_wait_ms: u64,
    /// Automatic scheduling: the projector leader pairs waiting appointments with READY
    /// providers (on), or coordinators schedule every appointment by hand (off).
    #[arg(long, env = "CAREBOARD_MATCHING", value_enum, default_value = "on")]
    pub matching: Switch,
    /// Serve /metrics on this address of its own (e.g. a private interface the scraper
    /// reaches), without a token. Unset, /metrics is on --bind, behind an admin token.
    #[arg(long, env = "CAREBOARD_METRICS_BIND")]
    pub metrics_bind: Option<String>,
    #[command(flatten)]
    pub limits: GraphqlLimits,
    #[command(flatten)]
    pub identity: IdentityArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Switch {
    On,
    Off,
}

/// Guards against expensive or abusive GraphQL requests.
#[derive(Debug, Clone, Args)]
pub struct GraphqlLimits {
    /// Deepest selection nesting accepted.
    #[arg(long, env = "CAREBOARD_MAX_DEPTH", default_value_t = 12)]
    pub max_depth: usize,
    /// Highest query cost accepted. A field costs one point, a list its page size times
    /// its items, a Board read 50, `asOf` folds and estimates more (see the README's
    /// "Limits"), so the limit follows the work a request asks for.
    #[arg(long, env = "CAREBOARD_MAX_COMPLEXITY", default_value_t = 10_000)]
    pub max_complexity: usize,
    /// Deepest recursion while parsing (nested lists, objects, fragments).
    #[arg(long, env = "CAREBOARD_MAX_RECURSION", default_value_t = 32)]
    pub max_recursion: usize,
    /// Most directives on one field.
    #[arg(long, env = "CAREBOARD_MAX_DIRECTIVES", default_value_t = 8)]
    pub max_directives: usize,
    /// Most subscriptions one websocket connection may hold at once.
    #[arg(
        long,
        env = "CAREBOARD_MAX_SUBSCRIPTIONS_PER_SOCKET",
        default_value_t = 100
    )]
    pub max_subscriptions_per_socket: usize,
    /// Most subscriptions one caller (its token's subject; without a token, its
    /// address) may hold at once over all its websockets: a Board's shared group keeps
    /// its newest frame, so each distinct subscription holds memory in proportion to
    /// its Board, and sockets alone would not bound them. Past it an operation gets an
    /// `error` (`RATE_LIMITED`) and the socket stays open. 0: no limit (a load test
    /// whose subscribers all share one token).
    #[arg(
        long,
        env = "CAREBOARD_MAX_SUBSCRIPTIONS_PER_CALLER",
        default_value_t = 100
    )]
    pub max_subscriptions_per_caller: usize,
    /// A websocket that sends no `connection_init` within this many ms is closed (4408).
    #[arg(long, env = "CAREBOARD_WS_INIT_TIMEOUT_MS", default_value_t = 10_000)]
    pub ws_init_timeout_ms: u64,
    /// Largest request body in bytes.
    #[arg(long, env = "CAREBOARD_MAX_BODY_BYTES", default_value_t = 256 * 1024)]
    pub max_body_bytes: usize,
    /// Answer introspection queries (switch off in production if wanted).
    #[arg(long, env = "CAREBOARD_INTROSPECTION", default_value_t = true, action = ArgAction::Set)]
    pub introspection: bool,
    /// Serve the GraphiQL playground at GET /graphql.
    #[arg(long, env = "CAREBOARD_GRAPHIQL", default_value_t = true, action = ArgAction::Set)]
    pub graphiql: bool,
    /// Origins of browser apps allowed to call the API and open its websockets (CORS),
    /// e.g. `https://app.clinic.example`; repeat the flag or separate with commas.
    /// Careboard's own pages (same origin) are always allowed; every other origin is not.
    #[arg(
        long = "cors-origin",
        env = "CAREBOARD_CORS_ORIGINS",
        value_delimiter = ',',
        value_parser = parse_origin
    )]
    pub cors_origins: Vec<String>,
    /// Deepest nesting of brackets in a document or of lists/objects in its variables,
    /// checked before parsing (the parser recurses, and deep literals would overflow
    /// the stack).
    #[arg(long, env = "CAREBOARD_MAX_NESTING", default_value_t = 64)]
    pub max_nesting: usize,
    /// A request (query or mutation) that runs longer is cancelled with TIMEOUT, its
    /// SQL with it (an append under way finishes first; the answer names what was
    /// applied).
    #[arg(long, env = "CAREBOARD_REQUEST_TIMEOUT_MS", default_value_t = 15_000)]
    pub request_timeout_ms: u64,
    /// A connection must send a request's headers within this many ms of opening (or
    /// of its last answer), else it is closed; a request's body must arrive within
    /// `--request-timeout-ms`. Idle and half-sent connections would otherwise be held
    /// for ever.
    #[arg(
        long,
        env = "CAREBOARD_HEADER_READ_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub header_read_timeout_ms: u64,
    /// Most client connections (HTTP and websockets) served at once; one more is
    /// answered 503 and closed at once, and the open ones go on. 0: the process's
    /// open-file limit less 256 kept for the database pool, logs and the like.
    #[arg(long, env = "CAREBOARD_MAX_CONNECTIONS", default_value_t = 0)]
    pub max_connections: usize,
    /// Most pool connections one request may hold at once, so that others always get one.
    #[arg(
        long,
        env = "CAREBOARD_MAX_CONNECTIONS_PER_REQUEST",
        default_value_t = 4
    )]
    pub max_connections_per_request: usize,
    /// Requests per second each caller may make on /graphql (sustained): a verified
    /// token's subject, or the client address without one; 0 switches the limit off.
    /// Behind a reverse proxy unauthenticated clients share the proxy's address.
    #[arg(long, env = "CAREBOARD_RATE_LIMIT_PER_SECOND", default_value_t = 100)]
    pub rate_limit_per_second: u32,
    /// Requests a caller may make in a burst above the sustained rate.
    #[arg(long, env = "CAREBOARD_RATE_LIMIT_BURST", default_value_t = 500)]
    pub rate_limit_burst: u32,
    /// Most mutation fields (aliases and fragments counted) one request may run. Each
    /// one after the first also spends one of the caller's requests of the rate limit.
    #[arg(long, env = "CAREBOARD_MAX_MUTATION_FIELDS", default_value_t = 20)]
    pub max_mutation_fields: usize,
    /// How often the server pings each websocket; a socket that has sent nothing (not
    /// even a pong) for three intervals is closed.
    #[arg(long, env = "CAREBOARD_WS_PING_INTERVAL_MS", default_value_t = 15_000)]
    pub ws_ping_interval_ms: u64,
    /// Deprecated and ignored: inbound websocket messages are handled one at a time, and
    /// the socket is not read meanwhile. Still accepted (hidden from `--help`) so that
    /// existing configurations start; the server warns once when it is set.
    #[arg(long, env = "CAREBOARD_WS_INBOUND_QUEUE", hide = true)]
    pub ws_inbound_queue: Option<usize>,
    /// Live Boards each process keeps in memory between reads, so a read costs what
    /// changed since the last one, not the whole Board; 0 reads every Board whole.
    #[arg(long, env = "CAREBOARD_BOARDS_IN_MEMORY", default_value_t = crate::projections::read::DEFAULT_BOARDS_IN_MEMORY)]
    pub boards_in_memory: usize,
    /// How a kept Board's contents are made for each new version: `incremental` (from
    /// the previous version's and what changed; the live fan-out shares the kept
    /// Boards) or `whole` (the earlier path, kept for the benchmark's before/after).
    #[arg(
        long,
        env = "CAREBOARD_BOARD_CONTENTS",
        value_enum,
        default_value = "incremental",
        hide = true
    )]
    pub board_contents: crate::projections::read::BoardContentsBuild,
    /// How reads of part of a Board find their rows (a kept Board's refresh, the
    /// projector's load of a batch's Boards) and whether the matcher keeps Boards
    /// between batches: `indexed` (index conditions; the matcher keeps Boards) or
    /// `scan` (every row of the Board visited, the matcher reads each Board from the
    /// log every time; the earlier path, kept for the benchmark's before/after rows).
    #[arg(
        long,
        env = "CAREBOARD_BOARD_READS",
        value_enum,
        default_value = "indexed",
        hide = true
    )]
    pub board_reads: crate::projections::read::BoardReads,
    /// How the matcher brings a kept Board forward before it plans: `shifts-first`
    /// (the Board's and shifts' streams, the waiting appointments only when a shift is
    /// READY) or `one-read` (every kept stream each time; the earlier path, kept for
    /// the benchmark's before/after rows).
    #[arg(
        long,
        env = "CAREBOARD_MATCHER_READS",
        value_enum,
        default_value = "shifts-first",
        hide = true
    )]
    pub matcher_reads: crate::matcher::MatcherReads,
    /// How shared `boardChanged` frames reach sockets: `group` (the group writes each
    /// frame to its sockets itself) or `socket` (each socket's task is woken to write
    /// it; the earlier path, kept for the benchmark's before/after rows).
    #[arg(
        long,
        env = "CAREBOARD_WS_FRAME_DELIVERY",
        value_enum,
        default_value = "group",
        hide = true
    )]
    pub ws_frame_delivery: FrameDelivery,
    /// Sockets each task of a group's writer pass writes: a group with more sockets
    /// splits its pass into tasks of this many, run on the runtime's workers at once, so
    /// the last socket of a large group hears sooner, and groups of at most this many
    /// are written as before (0: one task writes them all, the earlier path, kept for
    /// the benchmark's before/after rows).
    #[arg(
        long,
        env = "CAREBOARD_WS_WRITE_SHARD",
        default_value_t = 250,
        hide = true
    )]
    pub ws_write_shard: usize,
    /// How a group's writer pass makes each socket's bytes: `joined` (the socket's own
    /// websocket header and envelope prefix, made when it subscribed, and the frame's
    /// payload, encoded once, joined in a buffer the pass reuses and sent in one plain
    /// write; frames past a few KB as `shared`), `shared` (the same three pieces in one
    /// vectored write, the payload never copied per socket) or `scan` (a whole frame
    /// encoded per subscription id and protocol, found per socket by a scan of those
    /// encoded so far). `shared` and `scan` are earlier paths, kept for the benchmark's
    /// before/after rows.
    #[arg(
        long,
        env = "CAREBOARD_WS_FRAME_BYTES",
        value_enum,
        default_value = "joined",
        hide = true
    )]
    pub ws_frame_bytes: FrameBytes,
    /// What a group's writer pass does with a socket that still has a frame parked for
    /// its task (the task has not run since): `pass` (the pass writes the newer frame
    /// itself when the socket takes it, and the parked one is dropped: the newest wins)
    /// or `task` (the newer frame replaces the parked one and the task is woken again;
    /// the earlier path, kept for the benchmark's before/after rows).
    #[arg(
        long,
        env = "CAREBOARD_WS_PARKED_FRAMES",
        value_enum,
        default_value = "pass",
        hide = true
    )]
    pub ws_parked_frames: ParkedFrames,
    /// Whether a group's writer pass counts its writes against tokio's cooperative
    /// budget: `unconstrained` (it does not: every socket of the pass is written, or
    /// parked only when its own buffer is full) or `coop` (the earlier path, kept for
    /// the benchmark's before/after rows: after the budget's 128 writes in one task,
    /// every further socket of the pass looked busy and was parked for its task).
    #[arg(
        long,
        env = "CAREBOARD_WS_PASS_BUDGET",
        value_enum,
        default_value = "unconstrained",
        hide = true
    )]
    pub ws_pass_budget: PassBudget,
    /// Where a group's writer passes run: `worker` (on the runtime's worker threads,
    /// beside the listener, the projector and the HTTP requests) or `blocking` (each run
    /// of a pass on tokio's blocking threads, which the kernel schedules beside the
    /// workers: a pass over many sockets no longer holds a worker while the projector's
    /// batch or the Board listener's NOTIFY waits for one). Kept selectable for the
    /// benchmark's before/after rows (`careboard-bench subscribe --latency-variants`).
    #[arg(
        long,
        env = "CAREBOARD_WS_PASS_THREAD",
        value_enum,
        default_value = "worker",
        hide = true
    )]
    pub ws_pass_thread: PassThread,
    /// What a websocket's reads and writes go through once upgraded: `upgraded` (the
    /// upgraded connection's layers and `tokio::io::split`'s lock), `raw` (the
    /// accepted TCP stream itself, taken back from the upgraded connection with the
    /// bytes it had read ahead, split into its owned halves: a writer pass's write is
    /// one non-blocking `send` on the socket, no lock or layer between; the default:
    /// on an idle machine it delivered more frames at saturation and spent less CPU a
    /// frame in all four same-run pairs, and had the lower commit-to-frame p99 in every
    /// latency pair), `raw-nodelay` (as `raw`, with `TCP_NODELAY` on the stream). A
    /// stream that is not a plain TCP one always goes through the layers.
    #[arg(
        long,
        env = "CAREBOARD_WS_SOCKET_IO",
        value_enum,
        default_value = "raw",
        hide = true
    )]
    pub ws_socket_io: SocketIoPath,
    /// How a command's append is planned and sent: `kept` (as `planned`, with open
    /// Boards a request reads kept in memory at their version, checked by the append's
    /// guard), `planned` (the common shape has a statement of its own whose plan is
    /// reused) or `general` (one statement over arrays, planned per command; the
    /// earlier path, kept for the benchmark).
    #[arg(
        long,
        env = "CAREBOARD_COMMAND_PATH",
        value_enum,
        default_value = "kept",
        hide = true
    )]
    pub command_path: crate::event_store::CommandPath,
}

/// How shared frames reach sockets (`crate::frames`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FrameDelivery {
    /// One writer pass per group and frame: a non-blocking write per socket.
    Group,
    /// Every socket's own task writes every frame.
    Socket,
}

/// How a group's writer pass makes each socket's bytes (`crate::frames`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum FrameBytes {
    /// Header and envelope prefix per socket and the shared payload, joined in the
    /// pass's buffer: one plain write (a vectored one for frames past
    /// `crate::frames::JOINED_MAX`).
    #[default]
    Joined,
    /// Header and envelope prefix per socket, the payload shared: one vectored write.
    Shared,
    /// A whole frame per subscription id and protocol, looked up by a scan.
    Scan,
}

/// What an upgraded websocket's reads and writes go through (`crate::ws_out`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SocketIoPath {
    /// The accepted TCP stream, split into its owned halves.
    #[default]
    Raw,
    /// As `raw`, with Nagle's algorithm off on the stream (`TCP_NODELAY`): each write
    /// is sent at once, not held while an earlier segment waits for its ACK.
    RawNodelay,
    /// The upgraded connection, split behind a lock (the earlier path, kept for the
    /// benchmark's before/after rows).
    Upgraded,
}

/// Whether a writer pass's writes count against tokio's cooperative budget
/// (`crate::frames`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum PassBudget {
    /// Outside the budget: a pass writes every socket it can.
    #[default]
    Unconstrained,
    /// Inside it: past the budget, writes report busy and sockets are parked.
    Coop,
}

/// Where a group's writer passes run (`crate::frames`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum PassThread {
    /// On the runtime's worker threads, in the group's task (and the tasks it spawns).
    #[default]
    Worker,
    /// Each run of a pass on tokio's blocking threads, awaited by the group's task.
    Blocking,
}

/// Who writes a newer frame to a socket whose task has a frame parked (`crate::frames`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ParkedFrames {
    /// The writer pass, when the socket takes it; the parked frame is dropped.
    #[default]
    Pass,
    /// The socket's task, woken again; the newer frame replaces the parked one.
    Task,
}

/// An origin as browsers send it: `scheme://host[:port]`, lower-case, no path.
fn parse_origin(value: &str) -> Result<String, String> {
    let origin = value.trim().trim_end_matches('/').to_ascii_lowercase();
    let valid = ["http://", "https://"].iter().any(|scheme| {
        origin
            .strip_prefix(scheme)
            .is_some_and(|rest| !rest.is_empty() && !rest.contains(['/', '?', '#', ' ', '*']))
    });
    if valid {
        Ok(origin)
    } else {
        Err(format!(
            "'{value}' is not an origin: expected scheme://host[:port], e.g. https://app.example.com"
        ))
    }
}

impl Default for GraphqlLimits {
    fn default() -> Self {
        ServeArgs::default().limits
    }
}

impl Default for ServeArgs {
    fn default() -> Self {
        // The defaults declared above, without reading the process's arguments.
        <Cli as Parser>::try_parse_from(["careboard"])
            .map(|cli| cli.serve)
            .expect("defaults parse")
    }
}

/// Who may call: bearer tokens (JWTs) from an OpenID Connect provider, or, with none
/// configured, from Careboard's own development issuer (`careboard token`).
#[derive(Debug, Clone, Args)]
pub struct IdentityArgs {
    /// Every request and websocket needs a valid bearer token (on, the default). `off`
    /// answers anyone without one: for development on this machine only, refused on an
    /// address other machines can reach.
    #[arg(
        long = "auth",
        env = "CAREBOARD_AUTH",
        value_enum,
        default_value = "on"
    )]
    pub auth: Switch,
    /// The OpenID Connect issuer (`iss`) whose tokens are accepted; unset, the
    /// development issuer's.
    #[arg(long, env = "CAREBOARD_OIDC_ISSUER")]
    pub oidc_issuer: Option<String>,
    /// The audience (`aud`) tokens must be issued for (with --oidc-issuer).
    #[arg(long, env = "CAREBOARD_OIDC_AUDIENCE")]
    pub oidc_audience: Option<String>,
    /// The provider's JWKS URL; unset, the `jwks_uri` of its discovery document.
    #[arg(long, env = "CAREBOARD_OIDC_JWKS_URL")]
    pub oidc_jwks_url: Option<String>,
    /// The provider's discovery document; unset,
    /// `<issuer>/.well-known/openid-configuration`.
    #[arg(long, env = "CAREBOARD_OIDC_DISCOVERY_URL")]
    pub oidc_discovery_url: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    #[arg(long, env = "CAREBOARD_TOKEN_LEEWAY_SECS", default_value_t = 30)]
    pub token_leeway_secs: u64,
    /// Which header `typ` a token may carry: `compatible` takes `at+jwt`, `JWT` or none
    /// (what common providers issue); `strict` takes RFC 9068 access tokens (`at+jwt`)
    /// only, so an ID token is refused whatever its audience.
    #[arg(
        long,
        env = "CAREBOARD_TOKEN_TYPES",
        value_enum,
        default_value = "compatible"
    )]
    pub token_types: crate::identity::TokenTypes,
    /// With the development issuer: how long the token it puts in the pages served to
    /// this machine (GraphiQL, the Boards) lives, e.g. 30m. Pages fetch a fresh one when
    /// it expires.
    #[arg(long, env = "CAREBOARD_PAGE_TOKEN_TTL", default_value = "30m",
          value_parser = crate::identity::dev_issuer::parse_ttl)]
    pub page_token_ttl: std::time::Duration,
    /// The claim holding the role (a dotted path reaches nested claims, e.g.
    /// `realm_access.roles`; a list may hold other roles besides one of Careboard's).
    #[arg(long, env = "CAREBOARD_ROLE_CLAIM", default_value = "role")]
    pub role_claim: String,
    /// The claim holding the person's display name.
    #[arg(long, env = "CAREBOARD_NAME_CLAIM", default_value = "name")]
    pub name_claim: String,
    /// The claim holding a provider's id.
    #[arg(
        long,
        env = "CAREBOARD_PROVIDER_ID_CLAIM",
        default_value = "provider_id"
    )]
    pub provider_id_claim: String,
    /// The claim holding a patient's id (absent: the token's subject).
    #[arg(long, env = "CAREBOARD_PATIENT_ID_CLAIM", default_value = "patient_id")]
    pub patient_id_claim: String,
    /// The claim listing a coordinator's regions (absent: all).
    #[arg(long, env = "CAREBOARD_REGIONS_CLAIM", default_value = "regions")]
    pub regions_claim: String,
    /// The claim listing a coordinator's specialties (absent: all).
    #[arg(
        long,
        env = "CAREBOARD_SPECIALTIES_CLAIM",
        default_value = "specialties"
    )]
    pub specialties_claim: String,
}

impl IdentityArgs {
    /// Whether tokens come from an OpenID Connect provider (else the development issuer).
    pub fn uses_provider(&self) -> bool {
        self.oidc_issuer.is_some()
    }

    /// The verifier settings: the configured provider's, or the development issuer's
    /// (its key loaded or generated in `data_dir`).
    pub fn verifier_config(
        &self,
        data_dir: &std::path::Path,
    ) -> anyhow::Result<crate::identity::VerifierConfig> {
        let claims = crate::identity::principal::ClaimNames {
            role: self.role_claim.clone(),
            name: self.name_claim.clone(),
            provider_id: self.provider_id_claim.clone(),
            patient_id: self.patient_id_claim.clone(),
            regions: self.regions_claim.clone(),
            specialties: self.specialties_claim.clone(),
        };
        let mut config = match &self.oidc_issuer {
            None => {
                if self.oidc_audience.is_some()
                    || self.oidc_jwks_url.is_some()
                    || self.oidc_discovery_url.is_some()
                {
                    anyhow::bail!("--oidc-audience, --oidc-jwks-url and --oidc-discovery-url need --oidc-issuer (CAREBOARD_OIDC_ISSUER)");
                }
                let mut config = crate::identity::dev_issuer::DevIssuer::load_or_create(data_dir)?
                    .verifier_config();
                // The development issuer writes the default claim names.
                config.claims = crate::identity::principal::ClaimNames::default();
                return Ok(crate::identity::VerifierConfig {
                    leeway: std::time::Duration::from_secs(self.token_leeway_secs),
                    token_types: self.token_types,
                    ..config
                });
            }
            Some(issuer) => {
                let Some(audience) = &self.oidc_audience else {
                    anyhow::bail!("--oidc-issuer needs --oidc-audience (CAREBOARD_OIDC_AUDIENCE): the client id or API identifier tokens are issued for");
                };
                // Empty is unset (a compose file passes every setting through).
                let given = |url: &Option<String>| url.clone().filter(|u| !u.trim().is_empty());
                let keys = match (given(&self.oidc_jwks_url), given(&self.oidc_discovery_url)) {
                    (Some(_), Some(_)) => {
                        anyhow::bail!(
                            "give either --oidc-jwks-url or --oidc-discovery-url, not both"
                        )
                    }
                    (Some(url), None) => crate::identity::jwks::KeySource::JwksUrl(url),
                    (None, Some(url)) => crate::identity::jwks::KeySource::Discovery(url),
                    (None, None) => crate::identity::jwks::KeySource::Discovery(format!(
                        "{}/.well-known/openid-configuration",
                        issuer.trim_end_matches('/')
                    )),
                };
                crate::identity::VerifierConfig::new(issuer.clone(), audience.clone(), keys)
            }
        };
        config.claims = claims;
        config.leeway = std::time::Duration::from_secs(self.token_leeway_secs);
        config.token_types = self.token_types;
        Ok(config)
    }
}

/// Options of `careboard demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Seed of the day: the same seed gives the same Boards, patients and events.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// The day, `YYYY-MM-DD`. History: yesterday by default. Live: always today.
    #[arg(long)]
    pub date: Option<chrono::NaiveDate>,
    /// Number of Boards (clinics).
    #[arg(long, default_value_t = 3)]
    pub boards: usize,
    /// Multiplies the patient arrival rates (1.0: about 120 patients per Board a day).
    #[arg(long, default_value_t = 1.0)]
    pub load: f64,
    /// Play the day live against this process's server instead of importing history.
    #[arg(long)]
    pub live: bool,
    /// Live: simulated minutes per real minute.
    #[arg(long, default_value_t = 10.0)]
    pub speed: f64,
    /// Live: stop after this many simulated hours (default: the whole day), closing the
    /// Boards as Ctrl+C does.
    #[arg(long)]
    pub hours: Option<f64>,
    /// Live: address to serve on.
    #[arg(long, env = "CAREBOARD_BIND", default_value = "127.0.0.1:8080")]
    pub bind: String,
    /// Start over: drop the database (every Board, provider, appointment and event in
    /// it) and create it empty, then run the demo. Needs --yes. Refused with
    /// DATABASE_URL unless --reset-database-url is given too.
    #[arg(long)]
    pub reset: bool,
    /// Confirms --reset.
    #[arg(long, requires = "reset")]
    pub yes: bool,
    /// Lets --reset drop the database DATABASE_URL names (by default only the embedded
    /// one in --data-dir is reset: a database given by URL may be shared).
    #[arg(long, requires = "reset")]
    pub reset_database_url: bool,
}
