//! Whether the database answers, known without waiting: a prober on its own
//! connection (never the pool's) checks every half second, so `/readyz` answers at
//! once and requests fail fast with UNAVAILABLE while PostgreSQL is down, and both
//! recover by themselves when it is back.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};

/// How often the prober checks, and how long one check may take.
const INTERVAL: Duration = Duration::from_millis(500);
const CHECK_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbState {
    Ready,
    MigrationsPending,
    Unreachable,
}

impl DbState {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => DbState::Ready,
            1 => DbState::MigrationsPending,
            _ => DbState::Unreachable,
        }
    }
}

#[derive(Clone)]
pub struct DbHealth {
    state: Arc<AtomicU8>,
}

impl DbHealth {
    /// Starts probing the database `pool` connects to; the prober stops when the last
    /// clone of the returned handle is dropped.
    pub fn start(pool: &PgPool) -> Self {
        let state = Arc::new(AtomicU8::new(DbState::Ready as u8));
        let options = (*pool.connect_options())
            .clone()
            .disable_statement_logging();
        tokio::spawn(probe(Arc::downgrade(&state), options));
        Self { state }
    }

    pub fn state(&self) -> DbState {
        DbState::from_u8(self.state.load(Ordering::Relaxed))
    }

    pub fn reachable(&self) -> bool {
        self.state() != DbState::Unreachable
    }
}

async fn probe(state: Weak<AtomicU8>, options: PgConnectOptions) {
    let mut conn: Option<PgConnection> = None;
    let mut last = DbState::Ready;
    while let Some(shared) = state.upgrade() {
        let now = match tokio::time::timeout(CHECK_TIMEOUT, check(&mut conn, &options)).await {
            Ok(Ok(true)) => DbState::Ready,
            // The server shutting down or not taking connections (57…, 08…): it is
            // not a schema to migrate.
            Ok(Err(sqlx::Error::Database(db)))
                if db
                    .code()
                    .is_some_and(|c| c.starts_with("57") || c.starts_with("08")) =>
            {
                conn = None;
                DbState::Unreachable
            }
            Ok(Ok(false)) | Ok(Err(sqlx::Error::Database(_))) => DbState::MigrationsPending,
            Ok(Err(_)) | Err(_) => {
                conn = None;
                DbState::Unreachable
            }
        };
        if now != last {
            match now {
                DbState::Unreachable => tracing::warn!("database unreachable"),
                _ => tracing::info!(state = ?now, "database reachable"),
            }
            last = now;
        }
        shared.store(now as u8, Ordering::Relaxed);
        drop(shared);
        tokio::time::sleep(INTERVAL).await;
    }
    if let Some(conn) = conn {
        let _ = conn.close().await;
    }
}

async fn check(conn: &mut Option<PgConnection>, options: &PgConnectOptions) -> sqlx::Result<bool> {
    if conn.is_none() {
        *conn = Some(PgConnection::connect_with(options).await?);
    }
    let conn = conn.as_mut().expect("connected above");
    let applied: Vec<i64> =
        sqlx::query_scalar("select version from _sqlx_migrations where success")
            .fetch_all(&mut *conn)
            .await?;
    Ok(crate::postgres::MIGRATOR
        .iter()
        .all(|m| applied.contains(&m.version)))
}
