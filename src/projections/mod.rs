//! The projections: pure folds from events to documents, and how each document is
//! stored. The projector (`crate::projector`) decides when and in what order.

pub mod board_view;

use std::collections::HashMap;

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::{Aggregate, Appointment, FoldError, Shift, StreamType};
use crate::event_store::{decode_apply, RecordedEvent};
use crate::snapshots::SnapshotKind;
pub use board_view::{load_board_contents, load_board_for_matching, BoardDoc};

/// A projected document: folds events one stream version at a time.
pub trait Doc: Default + Clone + Serialize + DeserializeOwned + Send + Sync {
    /// The last version of `stream_id` applied to (or skipped by) this document.
    fn applied_version(&self, stream_id: Uuid) -> i64;
    /// Applies the event (whose version must be the next of its stream). On error the
    /// document is unchanged.
    fn apply(&mut self, e: &RecordedEvent) -> Result<(), FoldError>;
    /// Records a dead-lettered event as passed, without its effect.
    fn skip(&mut self, e: &RecordedEvent);
    /// Every stream this document has passed events of, with the last version passed.
    fn streams(&self, document_id: Uuid) -> Vec<(Uuid, i64)>;
    /// Events this document has passed: when to snapshot it.
    fn count(&self) -> i64;
    /// The snapshot's `max_recorded_at`, if this document may be snapshotted.
    fn snapshot_ready(&self) -> Option<chrono::DateTime<chrono::Utc>>;
}

/// A document that is one stream's folded state (appointment and shift views).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(bound = "A: Serialize + DeserializeOwned")]
pub struct StreamDoc<A> {
    pub state: Option<A>,
    pub applied: i64,
    #[serde(default)]
    pub max_recorded_at: Option<chrono::DateTime<chrono::Utc>>,
    #[serde(default)]
    pub skipped: i64,
}

impl<A> Default for StreamDoc<A> {
    fn default() -> Self {
        Self {
            state: None,
            applied: 0,
            max_recorded_at: None,
            skipped: 0,
        }
    }
}

impl<A: Aggregate + Serialize + DeserializeOwned + Send + Sync> Doc for StreamDoc<A> {
    fn applied_version(&self, _: Uuid) -> i64 {
        self.applied
    }

    fn apply(&mut self, e: &RecordedEvent) -> Result<(), FoldError> {
        self.state = Some(decode_apply::<A>(self.state.clone(), e)?);
        self.applied = e.version;
        self.max_recorded_at = self.max_recorded_at.max(Some(e.recorded_at));
        Ok(())
    }

    fn skip(&mut self, e: &RecordedEvent) {
        self.applied = e.version;
        self.max_recorded_at = self.max_recorded_at.max(Some(e.recorded_at));
        self.skipped += 1;
    }

    fn count(&self) -> i64 {
        self.applied
    }

    fn snapshot_ready(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        (self.skipped == 0)
            .then_some(self.max_recorded_at)
            .flatten()
    }

    fn streams(&self, document_id: Uuid) -> Vec<(Uuid, i64)> {
        vec![(document_id, self.applied)]
    }
}

/// The registered projections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Projection {
    BoardView,
    AppointmentView,
    ProviderShiftView,
    AppointmentDurations,
}

impl Projection {
    pub const ALL: [Projection; 4] = [
        Projection::BoardView,
        Projection::AppointmentView,
        Projection::ProviderShiftView,
        Projection::AppointmentDurations,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Projection::BoardView => "board_view",
            Projection::AppointmentView => "appointment_view",
            Projection::ProviderShiftView => "provider_shift_view",
            Projection::AppointmentDurations => "appointment_durations",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }

    /// Like `parse`, with the message a user should see for an unknown name.
    pub fn named(name: &str) -> Result<Self, String> {
        Self::parse(name).ok_or_else(|| {
            let known: Vec<&str> = Self::ALL.iter().map(|p| p.name()).collect();
            format!("unknown projection '{name}'; known: {}", known.join(", "))
        })
    }

    /// The version of the fold and document shape. Bump it when either changes: the
    /// projector then rebuilds the projection side by side and swaps it in.
    pub fn version(self) -> i32 {
        match self {
            Projection::BoardView => 4,
            Projection::AppointmentView => 2,
            Projection::ProviderShiftView => 3,
            Projection::AppointmentDurations => 2,
        }
    }

    /// The kind of snapshot this projection writes (`snapshots.kind`), if any.
    pub fn snapshot_kind(self) -> Option<SnapshotKind> {
        match self {
            Projection::BoardView => Some(SnapshotKind::Board),
            Projection::AppointmentView => Some(SnapshotKind::Appointment),
            Projection::ProviderShiftView => Some(SnapshotKind::Shift),
            Projection::AppointmentDurations => None,
        }
    }

    /// The document an event belongs to, or `None` if this projection ignores it.
    pub fn document_of(self, e: &RecordedEvent) -> Option<Uuid> {
        let stream_type = StreamType::parse(&e.stream_type)?;
        match (self, stream_type) {
            (Projection::BoardView, StreamType::Board) => Some(e.stream_id),
            (Projection::BoardView, StreamType::Shift | StreamType::Appointment) => e.board_id,
            (
                Projection::AppointmentView | Projection::AppointmentDurations,
                StreamType::Appointment,
            ) => Some(e.stream_id),
            (Projection::ProviderShiftView, StreamType::Shift) => Some(e.stream_id),
            _ => None,
        }
    }

    fn table(self) -> &'static str {
        match self {
            Projection::BoardView => "board_view",
            Projection::AppointmentView => "appointment_view",
            Projection::ProviderShiftView => "provider_shift_view",
            Projection::AppointmentDurations => "appointment_durations",
        }
    }

    fn id_column(self) -> &'static str {
        match self {
            Projection::AppointmentDurations => "appointment_id",
            _ => "id",
        }
    }

    /// Loads the documents with these ids (missing ones are absent from the map), locked
    /// for update. A Board document comes with the appointments among `appointments`
    /// only (`None`: all of them): the rest are left out, unchanged in storage.
    pub async fn load_docs(
        self,
        conn: &mut PgConnection,
        generation: i32,
        ids: &[Uuid],
        appointments: Option<&[Uuid]>,
    ) -> Result<HashMap<Uuid, Value>, sqlx::Error> {
        let rows: Vec<(Uuid, Value)> = if self == Projection::BoardView {
            let parts: Vec<read::BoardParts> = sqlx::query_as(&format!(
                "select {parts} from board_view v {join} \
                  where v.generation = $1 and v.id = any($2) for update of v",
                parts = read::BOARD_PARTS,
                join = read::board_parts_join("and ($3::uuid[] is null or x.id = any($3))"),
            ))
            .bind(generation)
            .bind(ids)
            .bind(appointments)
            .fetch_all(conn)
            .await?;
            parts.into_iter().map(|p| (p.id, p.into_value())).collect()
        } else {
            sqlx::query_as(&format!(
                "select {id}, doc from {table} where generation = $1 and {id} = any($2) for update",
                id = self.id_column(),
                table = self.table()
            ))
            .bind(generation)
            .bind(ids)
            .fetch_all(conn)
            .await?
        };
        Ok(rows.into_iter().collect())
    }

    /// Deletes every document of a generation (a retired or abandoned build).
    pub async fn delete_generation(
        self,
        conn: &mut PgConnection,
        generation: i32,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(&format!(
            "delete from {} where generation = $1",
            self.table()
        ))
        .bind(generation)
        .execute(&mut *conn)
        .await?;
        if self == Projection::BoardView {
            sqlx::query("delete from board_view_appointments where generation = $1")
                .bind(generation)
                .execute(&mut *conn)
                .await?;
        }
        Ok(())
    }
}

/// What the store keeps of each projection's documents, computed from the document.
pub enum Row {
    /// A Board's header, and a row for every appointment the document holds (a batch
    /// loads only those its events touch) and for each of `appointments`, the
    /// appointment streams the batch passed (one whose events were all dead-lettered
    /// has no appointment, only a version).
    Board {
        id: Uuid,
        doc: BoardDoc,
        appointments: Vec<Uuid>,
    },
    Appointment {
        id: Uuid,
        doc: StreamDoc<Appointment>,
    },
    Shift {
        id: Uuid,
        doc: StreamDoc<Shift>,
    },
    Durations {
        id: Uuid,
        doc: StreamDoc<Appointment>,
    },
}

/// Upserts documents of one projection in one statement per table.
pub async fn save_rows(
    conn: &mut PgConnection,
    generation: i32,
    rows: &[Row],
) -> Result<(), sqlx::Error> {
    let mut boards = BoardRows::default();
    let mut views: HashMap<&'static str, ViewRows> = HashMap::new();
    let mut durations = DurationRows::default();
    for row in rows {
        match row {
            Row::Board {
                id,
                doc,
                appointments,
            } => boards.push(*id, doc, appointments),
            Row::Appointment { id, doc } => views.entry("appointment_view").or_default().push(
                *id,
                doc.state.as_ref().map(|a| a.board_id),
                doc.applied,
                doc,
            ),
            Row::Shift { id, doc } => views.entry("provider_shift_view").or_default().push(
                *id,
                doc.state.as_ref().map(|s| s.board_id),
                doc.applied,
                doc,
            ),
            Row::Durations { id, doc } => durations.push(*id, doc),
        }
    }
    if !boards.ids.is_empty() {
        sqlx::query(
            "insert into board_view (generation, id, date, specialty, region, status, version, position, doc) \
             select $1, * from unnest($2::uuid[], $3::date[], $4::text[], $5::text[], $6::text[], $7::bigint[], $8::bigint[], $9::jsonb[]) \
             on conflict (generation, id) do update set date = excluded.date, specialty = excluded.specialty, \
               region = excluded.region, status = excluded.status, version = excluded.version, \
               position = excluded.position, doc = excluded.doc",
        )
        .bind(generation)
        .bind(&boards.ids)
        .bind(&boards.dates)
        .bind(&boards.specialties)
        .bind(&boards.regions)
        .bind(&boards.statuses)
        .bind(&boards.versions)
        .bind(&boards.positions)
        .bind(&boards.docs)
        .execute(&mut *conn)
        .await?;
    }
    if !boards.appointments.ids.is_empty() {
        let a = &boards.appointments;
        sqlx::query(
            "insert into board_view_appointments (generation, board_id, id, applied, doc, board_version) \
             select $1, * from unnest($2::uuid[], $3::uuid[], $4::bigint[], $5::jsonb[], $6::bigint[]) \
             on conflict (generation, board_id, id) do update set applied = excluded.applied, \
               doc = excluded.doc, board_version = excluded.board_version",
        )
        .bind(generation)
        .bind(&a.board_ids)
        .bind(&a.ids)
        .bind(&a.applied)
        .bind(&a.docs)
        .bind(&a.board_versions)
        .execute(&mut *conn)
        .await?;
    }
    for (table, v) in views {
        sqlx::query(&format!(
            "insert into {table} (generation, id, board_id, version, doc) \
             select $1, * from unnest($2::uuid[], $3::uuid[], $4::bigint[], $5::jsonb[]) \
             on conflict (generation, id) do update set board_id = excluded.board_id, \
               version = excluded.version, doc = excluded.doc"
        ))
        .bind(generation)
        .bind(&v.ids)
        .bind(&v.board_ids)
        .bind(&v.versions)
        .bind(&v.docs)
        .execute(&mut *conn)
        .await?;
    }
    if !durations.ids.is_empty() {
        sqlx::query(
            "insert into appointment_durations (generation, appointment_id, board_id, specialty, region, \
               requested_at, scheduled_at, started_at, finished_at, cancelled_at, version, doc) \
             select $1, * from unnest($2::uuid[], $3::uuid[], $4::text[], $5::text[], $6::timestamptz[], \
               $7::timestamptz[], $8::timestamptz[], $9::timestamptz[], $10::timestamptz[], $11::bigint[], $12::jsonb[]) \
             on conflict (generation, appointment_id) do update set board_id = excluded.board_id, \
               specialty = excluded.specialty, region = excluded.region, requested_at = excluded.requested_at, \
               scheduled_at = excluded.scheduled_at, started_at = excluded.started_at, \
               finished_at = excluded.finished_at, cancelled_at = excluded.cancelled_at, \
               version = excluded.version, doc = excluded.doc",
        )
        .bind(generation)
        .bind(&durations.ids)
        .bind(&durations.board_ids)
        .bind(&durations.specialties)
        .bind(&durations.regions)
        .bind(&durations.requested)
        .bind(&durations.scheduled)
        .bind(&durations.started)
        .bind(&durations.finished)
        .bind(&durations.cancelled)
        .bind(&durations.versions)
        .bind(&durations.docs)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

fn to_json(doc: &impl Serialize) -> Value {
    serde_json::to_value(doc).expect("documents serialise")
}

#[derive(Default)]
struct BoardRows {
    ids: Vec<Uuid>,
    dates: Vec<Option<chrono::NaiveDate>>,
    specialties: Vec<Option<String>>,
    regions: Vec<Option<String>>,
    statuses: Vec<Option<String>>,
    versions: Vec<i64>,
    positions: Vec<i64>,
    docs: Vec<Value>,
    appointments: AppointmentRows,
}

/// `board_view_appointments` rows.
#[derive(Default)]
struct AppointmentRows {
    board_ids: Vec<Uuid>,
    ids: Vec<Uuid>,
    applied: Vec<i64>,
    docs: Vec<Option<Value>>,
    /// The Board's version after the batch that wrote the row.
    board_versions: Vec<i64>,
}

impl BoardRows {
    fn push(&mut self, id: Uuid, doc: &BoardDoc, appointments: &[Uuid]) {
        // A header of the earlier single-document shape still holds every appointment:
        // its first batch moves them all into rows.
        let streams = doc.appointments.keys().chain(
            appointments
                .iter()
                .filter(|a| !doc.appointments.contains_key(a)),
        );
        for a in streams {
            let Some(applied) = doc.applied.get(a) else {
                continue;
            };
            self.appointments.board_ids.push(id);
            self.appointments.ids.push(*a);
            self.appointments.applied.push(*applied);
            self.appointments
                .docs
                .push(doc.appointments.get(a).map(to_json));
            self.appointments.board_versions.push(doc.version);
        }
        let b = doc.board.as_ref();
        self.ids.push(id);
        self.dates.push(b.map(|b| b.date));
        self.specialties.push(b.map(|b| b.specialty.clone()));
        self.regions.push(b.map(|b| b.region.clone()));
        self.statuses.push(b.map(|b| {
            match b.status {
                crate::domain::BoardStatus::Open => "OPEN",
                crate::domain::BoardStatus::Closed => "CLOSED",
            }
            .to_string()
        }));
        self.versions.push(doc.version);
        self.positions.push(doc.position);
        self.docs.push(to_json(&doc.header(appointments)));
    }
}

#[derive(Default)]
struct ViewRows {
    ids: Vec<Uuid>,
    board_ids: Vec<Option<Uuid>>,
    versions: Vec<i64>,
    docs: Vec<Value>,
}

impl ViewRows {
    fn push(&mut self, id: Uuid, board_id: Option<Uuid>, version: i64, doc: &impl Serialize) {
        self.ids.push(id);
        self.board_ids.push(board_id);
        self.versions.push(version);
        self.docs.push(to_json(doc));
    }
}

#[derive(Default)]
struct DurationRows {
    ids: Vec<Uuid>,
    board_ids: Vec<Option<Uuid>>,
    specialties: Vec<Option<String>>,
    regions: Vec<Option<String>>,
    requested: Vec<Option<chrono::DateTime<chrono::Utc>>>,
    scheduled: Vec<Option<chrono::DateTime<chrono::Utc>>>,
    started: Vec<Option<chrono::DateTime<chrono::Utc>>>,
    finished: Vec<Option<chrono::DateTime<chrono::Utc>>>,
    cancelled: Vec<Option<chrono::DateTime<chrono::Utc>>>,
    versions: Vec<i64>,
    docs: Vec<Value>,
}

impl DurationRows {
    fn push(&mut self, id: Uuid, doc: &StreamDoc<Appointment>) {
        let a = doc.state.as_ref();
        self.ids.push(id);
        self.board_ids.push(a.map(|a| a.board_id));
        self.specialties.push(a.map(|a| a.specialty.clone()));
        self.regions.push(a.map(|a| a.region.clone()));
        self.requested.push(a.map(|a| a.requested_at));
        self.scheduled.push(a.and_then(|a| a.scheduled_at));
        self.started.push(a.and_then(|a| a.started_at));
        self.finished.push(a.and_then(|a| a.finished_at));
        self.cancelled.push(a.and_then(|a| a.cancelled_at));
        self.versions.push(doc.applied);
        self.docs.push(to_json(doc));
    }
}

/// Reads of the live generation's documents, for queries.
pub mod read {
    use chrono::NaiveDate;
    use serde::{de::DeserializeOwned, Serialize};
    use sqlx::PgPool;
    use uuid::Uuid;

    use super::{BoardDoc, Projection, StreamDoc};

    /// A `board_view` row's header document and its appointment rows, selected by
    /// [`BOARD_PARTS`] with [`board_parts_join`] and merged here, not in the database:
    /// building one big JSON value per read would cost the database more than the
    /// read itself.
    #[derive(sqlx::FromRow)]
    pub struct BoardParts {
        pub id: Uuid,
        generation: i32,
        doc: serde_json::Value,
        ids: Option<Vec<Uuid>>,
        applied: Option<Vec<i64>>,
        docs: Option<Vec<Option<serde_json::Value>>>,
    }

    /// Selects [`BoardParts`] of a `board_view v` row joined with [`board_parts_join`].
    pub const BOARD_PARTS: &str = "v.id, v.generation, v.doc, x.ids, x.applied, x.docs";

    /// Gathers a `board_view v` row's appointment rows (those that also pass `filter`,
    /// a condition on `x`, e.g. `and x.id = any($3)`).
    pub fn board_parts_join(filter: &str) -> String {
        format!(
            "left join lateral (\
               select array_agg(x.id) as ids, array_agg(x.applied) as applied, \
                      array_agg(x.doc) as docs \
                 from board_view_appointments x \
                where x.generation = v.generation and x.board_id = v.id {filter}) x on true"
        )
    }

    impl BoardParts {
        /// The whole document: each appointment row goes back under `appointments` and
        /// its version under `applied`.
        pub fn into_value(self) -> serde_json::Value {
            let mut doc = self.doc;
            let ids = self.ids.unwrap_or_default();
            let applied = self.applied.unwrap_or_default();
            let docs = self.docs.unwrap_or_default();
            if let Some(map) = doc.as_object_mut() {
                for ((id, version), appointment) in ids.into_iter().zip(applied).zip(docs) {
                    let id = id.to_string();
                    if let Some(a) = appointment {
                        entry(map, "appointments").insert(id.clone(), a);
                    }
                    entry(map, "applied").insert(id, version.into());
                }
            }
            doc
        }

        fn into_doc(self) -> anyhow::Result<BoardDoc> {
            Ok(self.merge(None)?.doc)
        }

        /// The document these parts make: on top of `previous` (its appointments, then
        /// the changed rows) when it came from the same generation, else whole.
        fn merge(self, previous: Option<FollowedBoard>) -> anyhow::Result<FollowedBoard> {
            let mut doc: BoardDoc = serde_json::from_value(self.doc)?;
            if let Some(previous) = previous.filter(|f| f.generation == self.generation) {
                // A header of the earlier shape may still carry appointments of its own.
                let (mut appointments, mut applied) =
                    (previous.doc.appointments, previous.doc.applied);
                appointments.append(&mut doc.appointments);
                applied.append(&mut doc.applied);
                (doc.appointments, doc.applied) = (appointments, applied);
            }
            let ids = self.ids.unwrap_or_default();
            let applied = self.applied.unwrap_or_default();
            let docs = self.docs.unwrap_or_default();
            for ((id, version), appointment) in ids.into_iter().zip(applied).zip(docs) {
                if let Some(a) = appointment {
                    doc.appointments.insert(id, serde_json::from_value(a)?);
                }
                doc.applied.insert(id, version);
            }
            Ok(FollowedBoard {
                generation: self.generation,
                doc,
            })
        }
    }

    /// A live Board document kept by a follower (the live fan-out) between changes.
    #[derive(Debug, Clone)]
    pub struct FollowedBoard {
        /// The `board_view` generation it was read from: its row versions mean nothing
        /// in another.
        pub generation: i32,
        pub doc: BoardDoc,
    }

    /// Brings a followed Board up to date with the live `board_view`: reads its header
    /// and only the appointment rows written after the version `followed` holds (all of
    /// them when `followed` is empty or from another generation; rows an older build
    /// wrote, with no version, always), in one statement. On an error `followed` may be
    /// left empty (the next call then reads the Board whole).
    /// Leaves it untouched when the Board has no document.
    pub async fn refresh_board(
        pool: &PgPool,
        id: Uuid,
        followed: &mut Option<FollowedBoard>,
    ) -> anyhow::Result<()> {
        let (generation, version) = followed
            .as_ref()
            .map_or((-1, -1), |f| (f.generation, f.doc.version));
        let parts: Option<BoardParts> = sqlx::query_as(&format!(
            "select {BOARD_PARTS} from board_view v \
               join projection_state p on p.name = 'board_view' and p.status = 'live' \
                and p.generation = v.generation \
               {join} \
              where v.id = $1",
            join = board_parts_join(
                "and (v.generation <> $2 or x.board_version > $3 or x.board_version = 0)"
            )
        ))
        .bind(id)
        .bind(generation)
        .bind(version)
        .fetch_optional(pool)
        .await?;
        if let Some(parts) = parts {
            *followed = Some(parts.merge(followed.take())?);
        }
        Ok(())
    }

    fn entry<'a>(
        map: &'a mut serde_json::Map<String, serde_json::Value>,
        key: &str,
    ) -> &'a mut serde_json::Map<String, serde_json::Value> {
        let slot = map
            .entry(key)
            .or_insert_with(|| serde_json::Value::Object(Default::default()));
        if !slot.is_object() {
            *slot = serde_json::Value::Object(Default::default());
        }
        slot.as_object_mut().expect("an object")
    }

    /// The live `board_view` document of a Board.
    pub async fn board(pool: &PgPool, id: Uuid) -> anyhow::Result<Option<BoardDoc>> {
        let mut followed = None;
        refresh_board(pool, id, &mut followed).await?;
        Ok(followed.map(|f| f.doc))
    }

    /// Filters of the `boards` list.
    #[derive(Debug, Clone, Default)]
    pub struct BoardFilter {
        pub date: Option<NaiveDate>,
        pub specialty: Option<String>,
        pub region: Option<String>,
        pub status: Option<String>,
    }

    /// Boards ordered by (date, id), after the `(date, id)` keyset cursor.
    pub async fn boards(
        pool: &PgPool,
        filter: &BoardFilter,
        after: Option<(NaiveDate, Uuid)>,
        limit: i64,
    ) -> anyhow::Result<Vec<BoardDoc>> {
        let parts: Vec<BoardParts> = sqlx::query_as(&format!(
            "select {BOARD_PARTS} from board_view v \
               join projection_state p on p.name = 'board_view' and p.status = 'live' \
                and p.generation = v.generation \
               {join} \
              where v.date is not null \
                and ($1::date is null or v.date = $1) \
                and ($2::text is null or v.specialty = $2) \
                and ($3::text is null or v.region = $3) \
                and ($4::text is null or v.status = $4) \
                and ($5::date is null or (v.date, v.id) > ($5, $6)) \
              order by v.date, v.id limit $7",
            join = board_parts_join("")
        ))
        .bind(filter.date)
        .bind(&filter.specialty)
        .bind(&filter.region)
        .bind(&filter.status)
        .bind(after.map(|a| a.0))
        .bind(after.map(|a| a.1))
        .bind(limit)
        .fetch_all(pool)
        .await?;
        parts.into_iter().map(BoardParts::into_doc).collect()
    }

    /// The live single-stream document (appointment or shift view).
    pub async fn stream_doc<A: Serialize + DeserializeOwned>(
        pool: &PgPool,
        projection: Projection,
        id: Uuid,
    ) -> anyhow::Result<Option<A>> {
        let table = match projection {
            Projection::AppointmentView => "appointment_view",
            Projection::ProviderShiftView => "provider_shift_view",
            other => anyhow::bail!("{} has no single-stream documents", other.name()),
        };
        let doc: Option<serde_json::Value> = sqlx::query_scalar(&format!(
            "select v.doc from {table} v \
               join projection_state p on p.name = $2 and p.status = 'live' \
                and p.generation = v.generation \
              where v.id = $1"
        ))
        .bind(id)
        .bind(projection.name())
        .fetch_optional(pool)
        .await?;
        let Some(doc) = doc else { return Ok(None) };
        let doc: StreamDoc<A> = serde_json::from_value(doc)?;
        Ok(doc.state)
    }
}
