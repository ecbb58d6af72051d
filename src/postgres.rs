//! PostgreSQL: the connection pool, migrations, and the embedded local cluster that
//! Careboard starts from the system's PostgreSQL binaries when no `DATABASE_URL` is set.

use std::fs;
use std::io::Read;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};

/// The migrations, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// How long a pooled connection may sit idle and still be handed out without a ping.
/// sqlx pings every connection it hands out by default: a round trip per command, for
/// connections used a moment ago. One idle longer than this is pinged first, so a
/// connection that died while idle (a restarted server, a dropped network) is replaced
/// instead of failing its next request.
pub const PING_AFTER_IDLE: Duration = Duration::from_secs(5);

/// Opens a pool. Sessions that sit idle inside a transaction are cut off, because an
/// open write transaction holds back every reader that must not skip events.
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool> {
    connect_pinging(url, max_connections, PING_AFTER_IDLE).await
}

/// Like [`connect`], pinging connections idle for `ping_after_idle` or more before
/// handing them out; zero pings every one (sqlx's default, how benchmarks run the
/// earlier path).
pub async fn connect_pinging(
    url: &str,
    max_connections: u32,
    ping_after_idle: Duration,
) -> Result<PgPool> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        let scheme = url
            .split("://")
            .next()
            .filter(|s| *s != url)
            .unwrap_or("none");
        anyhow::bail!(
            "DATABASE_URL is not a PostgreSQL URL (scheme {scheme:?}): expected \
             postgres://user:password@host:5432/database"
        );
    }
    let options: PgConnectOptions = url
        .parse::<PgConnectOptions>()
        .map_err(|e| {
            anyhow::anyhow!(
                "DATABASE_URL is not a PostgreSQL URL ({e}): expected \
                 postgres://user:password@host:5432/database"
            )
        })?
        // PostgreSQL's notices ("already exists, skipping") are not for the log.
        .options([
            ("idle_in_transaction_session_timeout", "30s"),
            ("client_min_messages", "warning"),
        ])
        .log_statements(tracing::log::LevelFilter::Trace)
        .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(2));
    // One connection first, so a refused connection, an unknown host, a wrong password
    // or a server that is not PostgreSQL is named at once (the pool would only say it
    // timed out, ten seconds later). A server still starting up is left to the pool's
    // retries.
    let first = tokio::time::timeout(
        Duration::from_secs(10),
        <sqlx::PgConnection as sqlx::Connection>::connect_with(&options),
    )
    .await;
    match first {
        Ok(Ok(connection)) => {
            sqlx::Connection::close(connection).await.ok();
        }
        Ok(Err(e)) if is_definitive(&e) => {
            anyhow::bail!(
                "cannot connect to PostgreSQL at {}:{}: {e}",
                options.get_host(),
                options.get_port()
            )
        }
        Ok(Err(_)) | Err(_) => {}
    }
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10));
    let pool = if ping_after_idle.is_zero() {
        pool.test_before_acquire(true)
    } else {
        pool.test_before_acquire(false)
            .before_acquire(move |conn, meta| {
                Box::pin(async move {
                    if meta.idle_for >= ping_after_idle {
                        sqlx::Connection::ping(conn).await?;
                    }
                    Ok(true)
                })
            })
    };
    pool.connect_with(options)
        .await
        .context("cannot connect to PostgreSQL")
}

/// Whether a failed connection attempt will fail the same way if retried: nothing
/// listens there, the host is unknown, the credentials or database are wrong, or what
/// answered is not PostgreSQL. (A reset connection or "starting up" is not.)
fn is_definitive(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::ConnectionAborted
                | std::io::ErrorKind::UnexpectedEof
                | std::io::ErrorKind::TimedOut
        ),
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("28") || c == "3D000"),
        sqlx::Error::Protocol(_) | sqlx::Error::Tls(_) | sqlx::Error::Configuration(_) => true,
        _ => false,
    }
}

pub async fn migrate(pool: &PgPool) -> Result<()> {
    MIGRATOR.run(pool).await.context("running migrations")?;
    Ok(())
}

/// Whether every embedded migration has been applied to the database.
pub async fn migrations_applied(pool: &PgPool) -> Result<bool> {
    let applied: Vec<i64> =
        sqlx::query_scalar("select version from _sqlx_migrations where success")
            .fetch_all(pool)
            .await?;
    Ok(MIGRATOR.iter().all(|m| applied.contains(&m.version)))
}

/// How the embedded cluster trades durability for speed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// A server whose data should survive a crash.
    Durable,
    /// Throwaway test clusters: no fsync.
    Throwaway,
}

#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Holds `pgdata/` (the cluster), `credentials` and `postgres.log`.
    pub dir: PathBuf,
    pub durability: Durability,
    pub max_connections: u32,
}

/// A PostgreSQL server started from the system's binaries, owned by this process: it
/// is stopped by [`EmbeddedCluster::stop`], and by the kernel if this process dies.
pub struct EmbeddedCluster {
    pid: Option<i32>,
    port: u16,
    password: String,
    dir: PathBuf,
    exited: Option<std::sync::mpsc::Receiver<()>>,
    /// The data dir's lock, held while this process owns the cluster.
    _lock: Option<fs::File>,
    /// The Careboard process that owns the cluster, when it is not this one.
    held_by: Option<i32>,
}

const SUPERUSER: &str = "careboard";
const SYSTEM_USER: &str = "careboard";

impl EmbeddedCluster {
    /// The process id of the Careboard process that owns this cluster, when this
    /// process only borrowed it (0 if that process's id could not be read).
    pub fn held_by(&self) -> Option<i32> {
        self.held_by
    }

    /// Starts (initialising on first use) the cluster in `options.dir`. If a server
    /// started by another Careboard process is already running there, connects to it.
    pub fn start(options: &ClusterOptions) -> Result<Self> {
        Self::start_with_settings(options, &[])
    }

    /// [`Self::start`] with extra server settings (`name=value`, passed as `-c`) for a
    /// server this process starts, e.g. the bench's `shared_preload_libraries`. A
    /// server already running there keeps its own settings.
    pub fn start_with_settings(options: &ClusterOptions, settings: &[String]) -> Result<Self> {
        let bindir = find_bindir()?;
        let dir = absolute(&options.dir)?;
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let run_as = unprivileged_user()?;
        if let Some(user) = &run_as {
            // The server's user must be able to reach its data directory.
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))?;
            check_traversable(&dir, user)?;
        }
        // The process that holds this lock owns the cluster (it started it and stops
        // it); another process may only borrow the running server.
        let lock_path = dir.join("careboard.pid");
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .mode(0o644)
            .open(&lock_path)
            .with_context(|| format!("opening {}", lock_path.display()))?;
        let owned = unsafe {
            libc::flock(
                std::os::fd::AsRawFd::as_raw_fd(&lock),
                libc::LOCK_EX | libc::LOCK_NB,
            )
        } == 0;
        let (lock, held_by) = if owned {
            lock.set_len(0)?;
            std::io::Write::write_all(&mut &lock, format!("{}\n", std::process::id()).as_bytes())?;
            (Some(lock), None)
        } else {
            let pid = fs::read_to_string(&lock_path)
                .ok()
                .and_then(|p| p.trim().parse::<i32>().ok())
                .unwrap_or(0);
            (None, Some(pid))
        };
        let pgdata = dir.join("pgdata");
        let credentials = dir.join("credentials");
        if !pgdata.join("PG_VERSION").exists() {
            init_cluster(&bindir, &dir, &pgdata, &credentials, run_as.as_ref())?;
        }
        let password = fs::read_to_string(&credentials)
            .with_context(|| format!("reading {}", credentials.display()))?
            .trim()
            .to_string();

        if let Some(port) = running_server_port(&pgdata) {
            tracing::info!(port, dir = %dir.display(), "using the PostgreSQL server already running there");
            return Ok(Self {
                pid: None,
                port,
                password,
                dir,
                exited: None,
                _lock: lock,
                held_by,
            });
        }

        let port = free_port()?;
        let log_path = dir.join("postgres.log");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o644)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let mut cmd = Command::new(bindir.join("postgres"));
        cmd.arg("-D")
            .arg(&pgdata)
            .args(["-p", &port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(["-c", "unix_socket_directories="])
            .args([
                "-c",
                &format!("max_connections={}", options.max_connections),
            ])
            .args(["-c", "idle_in_transaction_session_timeout=60s"]);
        for setting in settings {
            cmd.args(["-c", setting]);
        }
        if options.durability == Durability::Throwaway {
            cmd.args(["-c", "fsync=off"])
                .args(["-c", "synchronous_commit=off"])
                .args(["-c", "full_page_writes=off"]);
        }
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Its own process group: Ctrl+C reaches Careboard, which then stops the
            // server cleanly, instead of reaching both at once.
            .process_group(0);
        drop_privileges_and_die_with_parent(&mut cmd, run_as.as_ref(), libc::SIGINT);

        // The parent-death signal is tied to the spawning thread, so spawn from a thread
        // that lives exactly as long as the server.
        let (pid_tx, pid_rx) = std::sync::mpsc::channel();
        let (exit_tx, exit_rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("postgres-supervisor".into())
            .spawn(move || match cmd.spawn() {
                Ok(mut child) => {
                    let _ = pid_tx.send(Ok(child.id() as i32));
                    let _ = child.wait();
                    let _ = exit_tx.send(());
                }
                Err(e) => {
                    let _ = pid_tx.send(Err(e));
                }
            })?;
        let pid = pid_rx
            .recv()?
            .with_context(|| format!("starting {}", bindir.join("postgres").display()))?;
        let cluster = Self {
            pid: Some(pid),
            port,
            password,
            dir,
            exited: Some(exit_rx),
            _lock: lock,
            held_by,
        };
        cluster.wait_ready(&log_path)?;
        tracing::info!(port, pid, dir = %cluster.dir.display(), "embedded PostgreSQL started");
        Ok(cluster)
    }

    fn wait_ready(&self, log_path: &Path) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                // Accepting TCP is not accepting queries (recovery may still run); the
                // caller's first connect retries through that.
                return Ok(());
            }
            if let Some(rx) = &self.exited {
                if rx.try_recv().is_ok() {
                    bail!(
                        "PostgreSQL exited during start-up; its log ({}) ends with:\n{}",
                        log_path.display(),
                        log_tail(log_path)
                    );
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "PostgreSQL did not start within 60 s; see {}",
                    log_path.display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A connection URL for `database` on this cluster.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://{SUPERUSER}:{}@127.0.0.1:{}/{database}",
            self.password, self.port
        )
    }

    /// Creates `database` unless it exists.
    pub async fn ensure_database(&self, database: &str) -> Result<()> {
        let admin = connect_with_retry(&self.url("postgres")).await?;
        let exists: bool =
            sqlx::query_scalar("select exists(select 1 from pg_database where datname = $1)")
                .bind(database)
                .fetch_one(&admin)
                .await?;
        if !exists {
            sqlx::query(&format!(
                "create database \"{}\"",
                database.replace('"', "\"\"")
            ))
            .execute(&admin)
            .await?;
        }
        admin.close().await;
        Ok(())
    }

    /// Creates the application role and the login the server uses on this cluster
    /// (`careboard_server`, a member of it), and returns that login's URL for
    /// `database`. The owner (this cluster's superuser) runs the migrations.
    pub async fn ensure_server_login(&self, database: &str) -> Result<String> {
        let admin = connect_with_retry(&self.url("postgres")).await?;
        let result = ensure_server_login(&admin, SERVER_LOGIN, &self.password).await;
        admin.close().await;
        result?;
        Ok(format!(
            "postgres://{SERVER_LOGIN}:{}@127.0.0.1:{}/{database}",
            self.password, self.port
        ))
    }

    /// Stops the server (fast shutdown: sessions are ended, data is flushed) if this
    /// process started it.
    pub fn stop(&mut self) {
        let Some(pid) = self.pid.take() else { return };
        // SAFETY: sending a signal to the child we spawned.
        unsafe { libc::kill(pid, libc::SIGINT) };
        if let Some(rx) = self.exited.take() {
            if rx.recv_timeout(Duration::from_secs(30)).is_err() {
                tracing::warn!(pid, "PostgreSQL did not stop within 30 s; killing it");
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        tracing::info!(pid, "embedded PostgreSQL stopped");
    }
}

impl Drop for EmbeddedCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The login the server connects with on the embedded cluster.
pub const SERVER_LOGIN: &str = "careboard_server";
/// The group role whose privileges the server has (granted by migration 0008).
pub const APP_ROLE: &str = "careboard_app";

/// Creates the application role (if missing) and a login `name` that is a member of
/// it, not a superuser, with `password`. Idempotent; `admin` must be allowed to create
/// roles.
pub async fn ensure_server_login(admin: &PgPool, name: &str, password: &str) -> Result<()> {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
        bail!("a role name of lower-case letters and underscores, not '{name}'");
    }
    let password = password.replace('\'', "''");
    let create = |role: &str, attributes: &str| {
        format!(
            "do $$ begin \
               if not exists (select 1 from pg_roles where rolname = '{role}') then \
                 create role {role} {attributes}; \
               end if; \
             exception when duplicate_object or unique_violation then null; \
             end $$;"
        )
    };
    // statement_timeout: a backstop under the server's own request timeout, so that no
    // statement of a cancelled or runaway request keeps running for long.
    let sql = format!(
        "{}\n{}\nalter role {name} with login nosuperuser nocreatedb nocreaterole \
         password '{password}';\nalter role {name} set statement_timeout = '30s';\n\
         grant {APP_ROLE} to {name};",
        create(APP_ROLE, "nologin"),
        create(name, "login"),
    );
    sqlx::raw_sql(&sql)
        .execute(admin)
        .await
        .with_context(|| format!("creating the login {name}"))?;
    Ok(())
}

/// Whether `e` is a transaction's collision with another's (a serialization failure or
/// a deadlock): the work may be tried again, or given up to the other.
pub fn collided(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db)
        if matches!(db.code().as_deref(), Some("40001") | Some("40P01")))
}

/// Connects, retrying while a just-started server finishes recovery.
pub async fn connect_with_retry(url: &str) -> Result<PgPool> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match connect(url, 2).await {
            Ok(pool) => return Ok(pool),
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "PostgreSQL not ready yet");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

const INSTALL_HINT: &str = "PostgreSQL server binaries (initdb, postgres) were not found. \
Install them (Debian/Ubuntu: `apt-get install postgresql`; Fedora: `dnf install \
postgresql-server`; macOS: `brew install postgresql@16`), put their directory on PATH \
or set CAREBOARD_PG_BINDIR, or point DATABASE_URL at a running server.";

/// Finds the directory holding `initdb` and `postgres`.
pub fn find_bindir() -> Result<PathBuf> {
    let has_both = |dir: &Path| dir.join("initdb").is_file() && dir.join("postgres").is_file();
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Ok(dir) = std::env::var("CAREBOARD_PG_BINDIR") {
        candidates.push(dir.into());
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        if out.status.success() {
            candidates.push(String::from_utf8_lossy(&out.stdout).trim().into());
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let initdb = dir.join("initdb");
            if initdb.is_file() {
                // initdb may be a symlink into the real bindir, where postgres lives.
                if let Ok(real) = fs::canonicalize(&initdb) {
                    if let Some(parent) = real.parent() {
                        candidates.push(parent.to_path_buf());
                    }
                }
                candidates.push(dir);
            }
        }
    }
    let mut versioned: Vec<PathBuf> = fs::read_dir("/usr/lib/postgresql")
        .map(|rd| rd.flatten().map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    versioned.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    candidates.extend(versioned.into_iter().rev());
    candidates.push("/usr/local/pgsql/bin".into());
    candidates.push("/opt/homebrew/bin".into());
    candidates.push("/usr/local/bin".into());
    candidates
        .into_iter()
        .find(|d| has_both(d))
        .ok_or_else(|| anyhow!(INSTALL_HINT))
}

/// The user the server runs as when Careboard runs as root (initdb refuses root).
#[derive(Debug, Clone)]
struct SystemUser {
    name: String,
    uid: u32,
    gid: u32,
}

fn lookup_user(name: &str) -> Option<SystemUser> {
    let cname = std::ffi::CString::new(name).ok()?;
    // SAFETY: getpwnam returns a pointer into static storage or null; we copy out at once.
    let pw = unsafe { libc::getpwnam(cname.as_ptr()) };
    if pw.is_null() {
        return None;
    }
    let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
    Some(SystemUser {
        name: name.to_string(),
        uid,
        gid,
    })
}

fn unprivileged_user() -> Result<Option<SystemUser>> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    if let Some(user) = lookup_user(SYSTEM_USER) {
        return Ok(Some(user));
    }
    let created = Command::new("useradd")
        .args([
            "--system",
            "--user-group",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
        ])
        .arg(SYSTEM_USER)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output();
    if let Some(user) = lookup_user(SYSTEM_USER) {
        return Ok(Some(user));
    }
    if let Some(user) = lookup_user("postgres") {
        return Ok(Some(user));
    }
    let why = match created {
        Ok(out) => String::from_utf8_lossy(&out.stderr).trim().to_string(),
        Err(e) => e.to_string(),
    };
    bail!(
        "running as root, the embedded PostgreSQL needs an unprivileged user, and creating \
         system user '{SYSTEM_USER}' failed ({why}); create it, run Careboard as another \
         user, or set DATABASE_URL"
    )
}

/// Every ancestor of `dir` must be searchable by `user`, or the server cannot reach it.
fn check_traversable(dir: &Path, user: &SystemUser) -> Result<()> {
    for ancestor in dir.ancestors().skip(1) {
        let meta = fs::metadata(ancestor)?;
        let mode = meta.permissions().mode();
        use std::os::unix::fs::MetadataExt;
        let ok = mode & 0o001 != 0
            || (meta.uid() == user.uid && mode & 0o100 != 0)
            || (meta.gid() == user.gid && mode & 0o010 != 0);
        if !ok {
            bail!(
                "the embedded PostgreSQL runs as user '{}', who cannot enter {} (mode {:o}); \
                 choose a data directory elsewhere with --data-dir (e.g. /var/lib/careboard)",
                user.name,
                ancestor.display(),
                mode & 0o777
            );
        }
    }
    Ok(())
}

fn drop_privileges_and_die_with_parent(cmd: &mut Command, user: Option<&SystemUser>, signal: i32) {
    let ids = user.map(|u| (u.uid, u.gid));
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if let Some((uid, gid)) = ids {
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(uid) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // After setuid: a credential change clears the parent-death signal.
            if libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

fn init_cluster(
    bindir: &Path,
    dir: &Path,
    pgdata: &Path,
    credentials: &Path,
    run_as: Option<&SystemUser>,
) -> Result<()> {
    tracing::info!(dir = %pgdata.display(), "initialising a new PostgreSQL cluster");
    if pgdata.exists() {
        // A half-initialised directory from an interrupted first start.
        fs::remove_dir_all(pgdata)?;
    }
    fs::create_dir_all(pgdata)?;
    fs::set_permissions(pgdata, fs::Permissions::from_mode(0o700))?;
    let password = random_password()?;
    let pwfile = dir.join(".initdb-password");
    fs::write(&pwfile, &password)?;
    fs::set_permissions(&pwfile, fs::Permissions::from_mode(0o600))?;
    if let Some(user) = run_as {
        chown(pgdata, user)?;
        chown(&pwfile, user)?;
    }
    let mut cmd = Command::new(bindir.join("initdb"));
    cmd.arg("-D")
        .arg(pgdata)
        .args([
            "-U",
            SUPERUSER,
            "--auth=scram-sha-256",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ])
        .arg(format!("--pwfile={}", pwfile.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    drop_privileges_and_die_with_parent(&mut cmd, run_as, libc::SIGKILL);
    let out = cmd.output().context("running initdb")?;
    let _ = fs::remove_file(&pwfile);
    if !out.status.success() {
        bail!(
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut file = fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(credentials)?;
    use std::io::Write;
    file.write_all(password.as_bytes())?;
    Ok(())
}

fn chown(path: &Path, user: &SystemUser) -> Result<()> {
    std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid))
        .with_context(|| format!("chown {} to {}", path.display(), user.name))
}

fn random_password() -> Result<String> {
    let mut bytes = [0u8; 24];
    fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The port of a live server already running on `pgdata`, from its `postmaster.pid`.
/// A server that is shutting down (its Careboard was killed, and the kernel told it to
/// stop) is waited for, so that the next start begins a fresh one instead of joining
/// one that is about to go.
fn running_server_port(pgdata: &Path) -> Option<u16> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pidfile = fs::read_to_string(pgdata.join("postmaster.pid")).ok()?;
        let lines: Vec<&str> = pidfile.lines().collect();
        let pid: i32 = lines.first()?.trim().parse().ok()?;
        // SAFETY: signal 0 only checks that the process exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0
            || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
        if !alive {
            return None;
        }
        // The last line is the server's state: starting, ready, standby or stopping.
        let stopping = lines.get(7).is_some_and(|s| s.trim() == "stopping");
        if stopping && Instant::now() < deadline {
            tracing::info!(pid, "waiting for the previous PostgreSQL server to stop");
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        let port: u16 = lines.get(3)?.trim().parse().ok()?;
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        return Some(port);
    }
}

fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

fn absolute(path: &Path) -> Result<PathBuf> {
    Ok(if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()?.join(path)
    })
}

fn log_tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}
