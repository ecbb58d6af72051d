//! How each projection's documents are stored: loading them (locked) for a batch,
//! upserting a batch's documents in one statement per table, and deleting a retired
//! generation.
//!
//! A Board document is stored as a header row in `board_view` plus one row per
//! appointment in `board_view_appointments`, so a batch loads and writes only the
//! appointments it touched.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::Serialize;
use serde_json::Value;
use sqlx::types::Json;
use sqlx::PgConnection;
use uuid::Uuid;

use super::board_view::BoardHeader;
use super::read::{self, BoardParts};
use super::{legacy, BoardDoc, Projection, StreamDoc};
use crate::domain::{Appointment, Shift};

impl Projection {
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
            let parts: Vec<BoardParts> = sqlx::query_as(&board_read_sql(appointments))
                .bind(generation)
                .bind(ids)
                .bind(appointments)
                .fetch_all(conn)
                .await?;
            parts.into_iter().map(|p| (p.id, p.into_value())).collect()
        } else if self == Projection::AppointmentDurations {
            // A row written on the flat path has no document: it is folded on from
            // its columns (see `load_durations`).
            let rows: Vec<DurationColumns> = sqlx::query_as(&format!(
                "select doc, {DURATION_COLUMNS} from appointment_durations \
                  where generation = $1 and appointment_id = any($2) for update"
            ))
            .bind(generation)
            .bind(ids)
            .fetch_all(conn)
            .await?;
            rows.into_iter()
                .map(|mut c| {
                    let id = c.appointment_id;
                    (id, c.doc.take().unwrap_or_else(|| to_json(&c.into_doc())))
                })
                .collect()
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
/// The columns of `appointment_durations` its flat fold starts from.
const DURATION_COLUMNS: &str = "appointment_id, board_id, specialty, region, requested_at, \
     scheduled_at, started_at, finished_at, cancelled_at, version";

#[derive(sqlx::FromRow)]
struct DurationColumns {
    /// The row's document, when it keeps one and the statement reads it.
    #[sqlx(default)]
    doc: Option<Value>,
    appointment_id: Uuid,
    board_id: Option<Uuid>,
    specialty: Option<String>,
    region: Option<String>,
    requested_at: Option<chrono::DateTime<chrono::Utc>>,
    scheduled_at: Option<chrono::DateTime<chrono::Utc>>,
    started_at: Option<chrono::DateTime<chrono::Utc>>,
    finished_at: Option<chrono::DateTime<chrono::Utc>>,
    cancelled_at: Option<chrono::DateTime<chrono::Utc>>,
    version: i64,
}

impl DurationColumns {
    /// The document the next event folds onto. The appointment fold fails only on
    /// whether the appointment was requested (`requested_at`, never null once it was),
    /// and the columns it writes come from the request and the transitions' times, all
    /// stored here: fields the row does not keep (the patient's, the reason, the
    /// provider) are left empty, and never reach a row.
    fn into_doc(self) -> StreamDoc<Appointment> {
        use crate::domain::AppointmentStatus as S;
        let state = match (self.requested_at, self.board_id) {
            (Some(requested_at), Some(board_id)) => Some(Appointment {
                id: self.appointment_id.into(),
                board_id: board_id.into(),
                patient_id: None,
                patient_name: String::new(),
                specialty: self.specialty.unwrap_or_default(),
                region: self.region.unwrap_or_default(),
                reason: String::new(),
                status: if self.cancelled_at.is_some() {
                    S::Cancelled
                } else if self.finished_at.is_some() {
                    S::Finished
                } else if self.started_at.is_some() {
                    S::Started
                } else if self.scheduled_at.is_some() {
                    S::Scheduled
                } else {
                    S::Requested
                },
                provider_id: None,
                shift_id: None,
                estimated_time: None,
                requested_at,
                scheduled_at: self.scheduled_at,
                started_at: self.started_at,
                finished_at: self.finished_at,
                cancelled_at: self.cancelled_at,
                cancellation_reason: None,
                version: self.version,
            }),
            _ => None,
        };
        StreamDoc {
            state,
            applied: self.version,
            max_recorded_at: None,
            skipped: 0,
        }
    }
}

/// The `appointment_durations` rows with these ids (locked for update), each as the
/// document its next event folds onto, made from the row's flat columns alone: the
/// flat path ([`crate::daemon::DaemonConfig::flat_durations`]), on which rows keep no
/// document. The rows' columns are what a fold of every event gives (see
/// [`DurationColumns::into_doc`]).
pub async fn load_durations(
    conn: &mut PgConnection,
    generation: i32,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, Value>, sqlx::Error> {
    let rows: Vec<DurationColumns> = sqlx::query_as(&format!(
        "select {DURATION_COLUMNS} from appointment_durations \
          where generation = $1 and appointment_id = any($2) for update"
    ))
    .bind(generation)
    .bind(ids)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|c| (c.appointment_id, to_json(&c.into_doc())))
        .collect())
}

/// The Board documents `boards` (locked for update), each with only its own touched
/// appointments: `touched` holds (Board, appointment) pairs, the Boards' in `boards`.
///
/// Each pair is one key lookup in `board_view_appointments_pkey`. The earlier read
/// ([`Projection::load_docs`] with every touched appointment in one list) tested each
/// Board against the whole list, so a batch touching n appointments over b Boards made
/// b × n index searches: ~900 pages a call for 18 Boards at the bench's half rate. It
/// stays selectable ([`crate::daemon::DaemonConfig::paired_board_reads`] off).
pub async fn load_boards_touched(
    conn: &mut PgConnection,
    generation: i32,
    boards: &[Uuid],
    touched: &[(Uuid, Uuid)],
) -> Result<HashMap<Uuid, Value>, sqlx::Error> {
    let (board_ids, ids): (Vec<Uuid>, Vec<Uuid>) = touched.iter().copied().unzip();
    let parts: Vec<BoardParts> = sqlx::query_as(paired_board_read_sql())
        .bind(generation)
        .bind(boards)
        .bind(&board_ids)
        .bind(&ids)
        .fetch_all(conn)
        .await?;
    Ok(parts.into_iter().map(|p| (p.id, p.into_value())).collect())
}

/// The statement of [`load_boards_touched`] (`$1` the generation, `$2` the Boards,
/// `$3` and `$4` the touched pairs' Boards and appointments).
pub fn paired_board_read_sql() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        format!(
            "select {parts} from board_view v \
             left join lateral (\
               select array_agg(x.id) as ids, array_agg(x.applied) as applied, \
                      array_agg(x.doc) as docs \
                 from unnest($3::uuid[], $4::uuid[]) as t(board_id, id) \
                 join board_view_appointments x \
                   on x.generation = v.generation and x.board_id = t.board_id and x.id = t.id \
                where t.board_id = v.id) x on true \
             where v.generation = $1 and v.id = any($2) for update of v",
            parts = read::BOARD_PARTS,
        )
    })
}

/// The statement [`Projection::load_docs`] runs for a `board_view` batch's Boards with
/// the touched appointments in one list (`$1` the generation, `$2` the Boards, `$3`
/// the appointments): the earlier read, which [`paired_board_read_sql`] replaces.
pub fn listed_board_read_sql() -> String {
    board_read_sql(Some(&[]))
}

fn board_read_sql(appointments: Option<&[Uuid]>) -> String {
    // With `appointments`, `x.id = any($3)` alone, so that it is an index
    // condition: behind an `or` it was a filter tested on every row of the
    // Board (the earlier statement, still selectable: `read::BoardReads`).
    let filter = match (appointments, read::board_reads()) {
        (None, _) => "and $3::uuid[] is null",
        (Some(_), read::BoardReads::Indexed) => "and x.id = any($3)",
        (Some(_), read::BoardReads::Scan) => "and ($3::uuid[] is null or x.id = any($3))",
    };
    format!(
        "select {parts} from board_view v {join} \
          where v.generation = $1 and v.id = any($2) for update of v",
        parts = read::BOARD_PARTS,
        join = read::board_parts_join(filter),
    )
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
        /// The stored header's contents are what `doc`'s would be (the batch applied
        /// only events of `appointments` to a stored document): only its counters
        /// (version, position, newest recorded time) are written, as columns.
        counters_only: bool,
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
    /// An `appointment_durations` row without its document (the flat path, see
    /// [`load_durations`]).
    FlatDurations {
        id: Uuid,
        doc: StreamDoc<Appointment>,
    },
}

/// Board documents go to PostgreSQL as `serde_json::Value` trees (the earlier path,
/// kept selectable so the bench can measure both in one run) instead of serialised
/// straight from the document. Off by default.
static BOARDS_THROUGH_VALUE: AtomicBool = AtomicBool::new(false);

/// Selects the earlier encoding of Board documents (through `Value`) for the whole
/// process.
pub fn encode_boards_through_value(on: bool) {
    BOARDS_THROUGH_VALUE.store(on, Ordering::Relaxed);
}

/// Upserts documents of one projection in one statement per table.
pub async fn save_rows(
    conn: &mut PgConnection,
    generation: i32,
    rows: &[Row],
) -> Result<(), sqlx::Error> {
    save_rows_with(conn, generation, rows, false).await
}

/// The statement that writes Board headers whole (`$1` generation, `$2`–`$10` the
/// columns).
const BOARD_HEADERS: &str =
    "insert into board_view (generation, id, date, specialty, region, status, version, position, doc, max_recorded_at) \
     select $1, * from unnest($2::uuid[], $3::date[], $4::text[], $5::text[], $6::text[], $7::bigint[], $8::bigint[], $9::jsonb[], $10::timestamptz[]) \
     on conflict (generation, id) do update set date = excluded.date, specialty = excluded.specialty, \
       region = excluded.region, status = excluded.status, version = excluded.version, \
       position = excluded.position, doc = excluded.doc, max_recorded_at = excluded.max_recorded_at";

/// The statement that writes only the counters of Board headers whose contents did not
/// change (`$1` generation, `$2`–`$5` the Boards and their counters): fixed-width,
/// unindexed columns, so a heap-only update that leaves the document where it is.
const BOARD_COUNTERS: &str =
    "update board_view v set version = c.version, position = c.position, max_recorded_at = c.at \
       from unnest($2::uuid[], $3::bigint[], $4::bigint[], $5::timestamptz[]) c(id, version, position, at) \
      where v.generation = $1 and v.id = c.id";

/// The Board headers and their appointment rows in one statement (`$11`–`$15` the
/// appointment rows' columns): one round trip where there were two.
const BOARD_HEADERS_AND_APPOINTMENTS: &str =
    "with headers as (insert into board_view (generation, id, date, specialty, region, status, version, position, doc, max_recorded_at) \
       select $1, * from unnest($2::uuid[], $3::date[], $4::text[], $5::text[], $6::text[], $7::bigint[], $8::bigint[], $9::jsonb[], $10::timestamptz[]) \
       on conflict (generation, id) do update set date = excluded.date, specialty = excluded.specialty, \
         region = excluded.region, status = excluded.status, version = excluded.version, \
         position = excluded.position, doc = excluded.doc, max_recorded_at = excluded.max_recorded_at), \
     appointments as (insert into board_view_appointments (generation, board_id, id, applied, doc, board_version) \
       select $1, * from unnest($11::uuid[], $12::uuid[], $13::bigint[], $14::jsonb[], $15::bigint[]) \
       on conflict (generation, board_id, id) do update set applied = excluded.applied, \
         doc = excluded.doc, board_version = excluded.board_version) \
     select";

/// [`save_rows`]; with `joined`, a Board's header and appointment rows are written by
/// one statement (two data-modifying CTEs on different tables, one snapshot).
pub async fn save_rows_with(
    conn: &mut PgConnection,
    generation: i32,
    rows: &[Row],
    joined: bool,
) -> Result<(), sqlx::Error> {
    let mut boards = BoardRows {
        through_value: BOARDS_THROUGH_VALUE.load(Ordering::Relaxed),
        ..BoardRows::default()
    };
    let mut views: HashMap<&'static str, ViewRows> = HashMap::new();
    let mut durations = DurationRows::default();
    for row in rows {
        match row {
            Row::Board {
                id,
                doc,
                appointments,
                counters_only,
            } => boards.push(*id, doc, appointments, *counters_only),
            Row::Appointment { id, doc } => views.entry("appointment_view").or_default().push(
                *id,
                doc.state.as_ref().map(|a| a.board_id.as_uuid()),
                doc.applied,
                doc,
            ),
            Row::Shift { id, doc } => views.entry("provider_shift_view").or_default().push(
                *id,
                doc.state.as_ref().map(|s| s.board_id.as_uuid()),
                doc.applied,
                doc,
            ),
            Row::Durations { id, doc } => durations.push(*id, doc, true),
            Row::FlatDurations { id, doc } => durations.push(*id, doc, false),
        }
    }
    let joined = joined && !boards.ids.is_empty() && !boards.appointments.ids.is_empty();
    if !boards.ids.is_empty() {
        let query = sqlx::query(if joined {
            BOARD_HEADERS_AND_APPOINTMENTS
        } else {
            BOARD_HEADERS
        })
        .bind(generation)
        .bind(&boards.ids)
        .bind(&boards.dates)
        .bind(&boards.specialties)
        .bind(&boards.regions)
        .bind(&boards.statuses)
        .bind(&boards.versions)
        .bind(&boards.positions);
        let query = if boards.through_value {
            query.bind(&boards.docs)
        } else {
            query.bind(&boards.headers)
        };
        let query = query.bind(&boards.recorded);
        let query = if joined {
            let a = &boards.appointments;
            let query = query.bind(&a.board_ids).bind(&a.ids).bind(&a.applied);
            let query = if boards.through_value {
                query.bind(&a.docs)
            } else {
                query.bind(&a.typed)
            };
            query.bind(&a.board_versions)
        } else {
            query
        };
        query.execute(&mut *conn).await?;
    }
    if !boards.counters.ids.is_empty() {
        let c = &boards.counters;
        let updated = sqlx::query(BOARD_COUNTERS)
            .bind(generation)
            .bind(&c.ids)
            .bind(&c.versions)
            .bind(&c.positions)
            .bind(&c.recorded)
            .execute(&mut *conn)
            .await?
            .rows_affected();
        // Each header was read (locked) by this transaction: one missing is a fault.
        if updated != c.ids.len() as u64 {
            return Err(sqlx::Error::Protocol(format!(
                "board_view: {updated} of {} headers found for their counters",
                c.ids.len()
            )));
        }
    }
    if !joined && !boards.appointments.ids.is_empty() {
        let a = &boards.appointments;
        let query = sqlx::query(
            "insert into board_view_appointments (generation, board_id, id, applied, doc, board_version) \
             select $1, * from unnest($2::uuid[], $3::uuid[], $4::bigint[], $5::jsonb[], $6::bigint[]) \
             on conflict (generation, board_id, id) do update set applied = excluded.applied, \
               doc = excluded.doc, board_version = excluded.board_version",
        )
        .bind(generation)
        .bind(&a.board_ids)
        .bind(&a.ids)
        .bind(&a.applied);
        let query = if boards.through_value {
            query.bind(&a.docs)
        } else {
            query.bind(&a.typed)
        };
        query.bind(&a.board_versions).execute(&mut *conn).await?;
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
struct BoardRows<'a> {
    through_value: bool,
    ids: Vec<Uuid>,
    dates: Vec<Option<chrono::NaiveDate>>,
    specialties: Vec<Option<String>>,
    regions: Vec<Option<String>>,
    statuses: Vec<Option<String>>,
    versions: Vec<i64>,
    positions: Vec<i64>,
    recorded: Vec<Option<chrono::DateTime<chrono::Utc>>>,
    /// The headers through `Value` (earlier path) or as they are.
    docs: Vec<Value>,
    headers: Vec<Json<BoardHeader<'a>>>,
    /// Headers whose contents stay: only their counters are written.
    counters: CounterRows,
    appointments: AppointmentRows<'a>,
}

/// The counters of `board_view` headers written alone (see [`Row::Board`]).
#[derive(Default)]
struct CounterRows {
    ids: Vec<Uuid>,
    versions: Vec<i64>,
    positions: Vec<i64>,
    recorded: Vec<Option<chrono::DateTime<chrono::Utc>>>,
}

/// `board_view_appointments` rows.
#[derive(Default)]
struct AppointmentRows<'a> {
    board_ids: Vec<Uuid>,
    ids: Vec<Uuid>,
    applied: Vec<i64>,
    /// The appointments through `Value` (earlier path) or as they are.
    docs: Vec<Option<Value>>,
    typed: Vec<Option<Json<&'a Appointment>>>,
    /// The Board's version after the batch that wrote the row.
    board_versions: Vec<i64>,
}

impl<'a> BoardRows<'a> {
    fn push(&mut self, id: Uuid, doc: &'a BoardDoc, appointments: &[Uuid], counters_only: bool) {
        // A header of the earlier shape holds appointments the batch did not touch:
        // they move to rows, so the header is written whole.
        let counters_only =
            counters_only && doc.appointments.keys().all(|a| appointments.contains(a));
        for a in legacy::appointment_rows(doc, appointments) {
            let Some(applied) = doc.applied.get(a) else {
                continue;
            };
            self.appointments.board_ids.push(id);
            self.appointments.ids.push(*a);
            self.appointments.applied.push(*applied);
            let appointment = doc.appointments.get(a);
            if self.through_value {
                self.appointments.docs.push(appointment.map(to_json));
            } else {
                self.appointments.typed.push(appointment.map(Json));
            }
            self.appointments.board_versions.push(doc.version);
        }
        if counters_only {
            self.counters.ids.push(id);
            self.counters.versions.push(doc.version);
            self.counters.positions.push(doc.position);
            self.counters.recorded.push(doc.max_recorded_at);
            return;
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
        self.recorded.push(doc.max_recorded_at);
        if self.through_value {
            self.docs.push(to_json(&doc.header(appointments)));
        } else {
            self.headers.push(Json(doc.header(appointments)));
        }
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
    /// `None`: the flat path's row, without a document.
    docs: Vec<Option<Value>>,
}

impl DurationRows {
    fn push(&mut self, id: Uuid, doc: &StreamDoc<Appointment>, with_doc: bool) {
        let a = doc.state.as_ref();
        self.ids.push(id);
        self.board_ids.push(a.map(|a| a.board_id.as_uuid()));
        self.specialties.push(a.map(|a| a.specialty.clone()));
        self.regions.push(a.map(|a| a.region.clone()));
        self.requested.push(a.map(|a| a.requested_at));
        self.scheduled.push(a.and_then(|a| a.scheduled_at));
        self.started.push(a.and_then(|a| a.started_at));
        self.finished.push(a.and_then(|a| a.finished_at));
        self.cancelled.push(a.and_then(|a| a.cancelled_at));
        self.versions.push(doc.applied);
        self.docs.push(with_doc.then(|| to_json(doc)));
    }
}
