//! Replaying dead letters: after a fix (of code or data), each affected document is
//! folded again from every event it has passed, this time without skipping.

use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::domain::{Appointment, Shift};
use crate::event_store::read_stream_between;
use crate::projections::registry::GenerationStatus;
use crate::projections::{save_rows, BoardDoc, Doc, Projection, Row, StreamDoc};

#[derive(Debug, Clone, Default, Serialize, async_graphql::SimpleObject)]
#[serde(rename_all = "camelCase")]
pub struct ReplayReport {
    /// Dead letters whose documents now include them.
    pub replayed: i64,
    /// Documents that still fail, with the error.
    pub still_failing: Vec<String>,
}

/// Replays the open dead letters of the live generation of `projection`.
pub async fn replay_dead_letters(
    pool: &PgPool,
    projection: Projection,
) -> anyhow::Result<ReplayReport> {
    let letters: Vec<(Uuid, i32, i64)> = sqlx::query_as(
        "select d.document_id, d.generation, count(*) from dead_letters d \
           join projection_state p on p.name = d.projection and p.generation = d.generation \
          where d.projection = $1 and p.status = $2 and d.replayed_at is null \
          group by d.document_id, d.generation",
    )
    .bind(projection.name())
    .bind(GenerationStatus::Live.as_str())
    .fetch_all(pool)
    .await?;
    let mut report = ReplayReport::default();
    for (document_id, generation, count) in letters {
        let result = match projection {
            Projection::BoardView => {
                refold::<BoardDoc>(pool, projection, generation, document_id, |id, doc| {
                    let appointments = doc.appointments.keys().copied().collect();
                    Row::Board {
                        id,
                        doc,
                        appointments,
                        counters_only: false,
                    }
                })
                .await
            }
            Projection::AppointmentView => {
                refold::<StreamDoc<Appointment>>(
                    pool,
                    projection,
                    generation,
                    document_id,
                    |id, doc| Row::Appointment { id, doc },
                )
                .await
            }
            Projection::AppointmentDurations => {
                refold::<StreamDoc<Appointment>>(
                    pool,
                    projection,
                    generation,
                    document_id,
                    |id, doc| Row::Durations { id, doc },
                )
                .await
            }
            Projection::ProviderShiftView => {
                refold::<StreamDoc<Shift>>(pool, projection, generation, document_id, |id, doc| {
                    Row::Shift { id, doc }
                })
                .await
            }
        };
        match result {
            Ok(()) => report.replayed += count,
            Err(e) => report.still_failing.push(format!("{document_id}: {e}")),
        }
    }
    Ok(report)
}

async fn refold<D: Doc>(
    pool: &PgPool,
    projection: Projection,
    generation: i32,
    document_id: Uuid,
    to_row: fn(Uuid, D) -> Row,
) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    // Locks the document: the projector's next batch for it waits, then sees this.
    let stored = projection
        .load_docs(&mut tx, generation, &[document_id], None)
        .await?;
    let Some(value) = stored.get(&document_id) else {
        anyhow::bail!("document not found");
    };
    let current: D = serde_json::from_value(value.clone())?;
    let mut fresh = D::default();
    for (stream_id, upto) in current.streams(document_id) {
        for e in read_stream_between(&mut *tx, stream_id, 0, upto).await? {
            fresh.apply(&e)?;
        }
    }
    save_rows(&mut tx, generation, &[to_row(document_id, fresh)]).await?;
    sqlx::query(
        "update dead_letters set replayed_at = clock_timestamp() \
          where projection = $1 and generation = $2 and document_id = $3 and replayed_at is null",
    )
    .bind(projection.name())
    .bind(generation)
    .bind(document_id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}
