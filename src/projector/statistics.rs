//! Statistics for young projection tables: the projector analyzes a projection's table
//! each time its size on disk has doubled since its last analyze (from [`YOUNG_PAGES`]
//! pages on), so the plans of the batches' locked reads follow the tables' sizes on a
//! freshly deployed database. Size, not rows: `board_view` holds one row per Board but
//! grows with every batch's rewrite of its headers until pruning catches up, and a
//! plan made for one page then reads every page.
//!
//! Without statistics the planner takes each Board for a handful of appointment rows,
//! and `board_view`'s read of the rows a batch touched walks every row of each Board;
//! a prepared statement's generic plan, made while a table was nearly empty, stays a
//! scan as it grows until the table is next analyzed, and autovacuum does that once a
//! minute at best (docs/BENCHMARKS.md, "Fresh statistics, custom plans and fewer round
//! trips"). An analyze replaces the statistics and makes PostgreSQL plan the
//! statements that read the table again. Doubling bounds both the staleness (a table
//! is never more than twice the size its plans were made for) and the cost (a table
//! of n pages has been analyzed about log2(n / YOUNG_PAGES) times); past its youth
//! autovacuum's 10 % keeps it fresher than this would.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use sqlx::{PgExecutor, PgPool};

/// Pages (8 kB) a projection table has before its first analyze.
pub const YOUNG_PAGES: i64 = 8;

/// Every table the projector writes documents to (migration 0015's function analyzes
/// these and no others).
const TABLES: [&str; 5] = [
    "board_view",
    "board_view_appointments",
    "appointment_view",
    "provider_shift_view",
    "appointment_durations",
];

/// The projection tables whose size has doubled since their last analyze (or reached
/// [`YOUNG_PAGES`] without one): `relpages` is the size the last analyze saw.
pub async fn doubled(conn: impl PgExecutor<'_>) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "select relname from ( \
           select c.relname::text as relname, c.relpages, \
                  pg_relation_size(c.oid) / current_setting('block_size')::bigint as pages \
             from pg_class c \
            where c.relnamespace = (select oid from pg_namespace where nspname = current_schema()) \
              and c.relname = any($1)) t \
          where pages >= $2 and pages >= 2 * relpages",
    )
    .bind(&TABLES[..])
    .bind(YOUNG_PAGES)
    .fetch_all(conn)
    .await
}

/// Analyzes `table` (one of the projection tables) as its owner.
pub async fn analyze(conn: impl PgExecutor<'_>, table: &str) -> Result<(), sqlx::Error> {
    sqlx::query("select analyze_projection_table($1)")
        .bind(table)
        .execute(conn)
        .await?;
    Ok(())
}

/// Keeps the projection tables' statistics fresh while they are young: each call
/// starts, in the background, an analyze of every table that doubled, unless the
/// previous call's is still running. Failures are logged and tried again at the
/// next call.
#[derive(Debug, Default, Clone)]
pub struct Freshener {
    running: Arc<AtomicBool>,
}

impl Freshener {
    pub fn tick(&self, pool: &PgPool) {
        if self.running.swap(true, Ordering::AcqRel) {
            return;
        }
        let (pool, running) = (pool.clone(), self.running.clone());
        tokio::spawn(async move {
            let result = async {
                let tables = doubled(&pool).await?;
                tracing::trace!(?tables, "projection tables that doubled");
                for table in tables {
                    analyze(&pool, &table).await?;
                    tracing::debug!(table = %table, "analyzed a young projection table");
                }
                Ok::<_, sqlx::Error>(())
            }
            .await;
            if let Err(e) = result {
                tracing::warn!(error = %e, "analyzing projection tables failed; will retry");
            }
            running.store(false, Ordering::Release);
        });
    }
}
