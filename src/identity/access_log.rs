//! The access log (DESIGN §9): a record of every disclosure of patient data, appended
//! by one writer task per process that commits records in groups, hash-chained so that
//! `careboard audit verify` finds any row edited or removed.
//!
//! A request hands its record to [`AccessLog::record`] and waits until the group it
//! went into is committed: a read whose record cannot be written can be refused (fail
//! closed), while many concurrent reads share one commit.
//!
//! # The chain
//!
//! Row `n` stores `prev_hash` (row `n-1`'s `hash`; 32 zero bytes for row 1) and
//! `hash = SHA-256(canonical JSON of the row's content, prev_hash included)`. Canonical
//! JSON: object keys sorted, no whitespace, as serde_json writes strings and integers;
//! `recordedAt` in microseconds since the epoch (PostgreSQL's precision).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use sqlx::{PgPool, Postgres, QueryBuilder, Row};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::principal::{Principal, Role};

/// What a response or a subscription frame disclosed, in ids only (never a patient's
/// name or reason: this log outlives erasure, DESIGN §10).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Disclosure {
    /// A Board as it stood at `version`: time travel expands it to the exact patients
    /// shown, masked as `role`/`scope` of the record saw them.
    /// `patient_ids`: whose patient fields it showed, so that "who has seen my record"
    /// is found without expanding every record.
    #[serde(rename_all = "camelCase")]
    Board {
        board_id: Uuid,
        version: i64,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        patient_ids: Vec<String>,
    },
    /// Appointments shown one by one, with the patients they belong to.
    #[serde(rename_all = "camelCase")]
    Appointments { appointments: Vec<AppointmentRef> },
    /// Raw events up to a global position (the `events` and `boardEvents` feeds).
    #[serde(rename_all = "camelCase")]
    Events {
        board_id: Option<Uuid>,
        stream_id: Option<Uuid>,
        after: i64,
        through: i64,
    },
    /// One answer that disclosed in several ways (a Board and an appointment, ...).
    #[serde(rename_all = "camelCase")]
    Several { items: Vec<Disclosure> },
}

/// Keeps, of a stored `disclosed` (a [`Disclosure`] as JSON), only what concerns
/// `patient_id`: a Board's `patientIds` and a list's appointments narrowed to theirs,
/// the parts of a record of several that did not concern them dropped. What a patient
/// is shown of a record of their data ("who has seen my record").
pub fn narrow_to_patient(disclosed: &mut Value, patient_id: &str) {
    let mine = |v: &Value| v.as_str() == Some(patient_id);
    match disclosed["kind"].as_str() {
        Some("board") => {
            if let Some(ids) = disclosed
                .get_mut("patientIds")
                .and_then(Value::as_array_mut)
            {
                ids.retain(mine);
            }
        }
        Some("appointments") => {
            if let Some(list) = disclosed
                .get_mut("appointments")
                .and_then(Value::as_array_mut)
            {
                list.retain(|a| mine(&a["patientId"]));
            }
        }
        Some("several") => {
            if let Some(items) = disclosed.get_mut("items").and_then(Value::as_array_mut) {
                for item in items.iter_mut() {
                    narrow_to_patient(item, patient_id);
                }
                items.retain(|item| match item["kind"].as_str() {
                    Some("board") => item["patientIds"]
                        .as_array()
                        .is_some_and(|ids| !ids.is_empty()),
                    Some("appointments") => item["appointments"]
                        .as_array()
                        .is_some_and(|list| !list.is_empty()),
                    _ => true,
                });
            }
        }
        // A raw-event feed names no patient.
        _ => {}
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppointmentRef {
    pub appointment_id: Uuid,
    pub patient_id: Option<String>,
}

/// One disclosure, as the request knows it.
#[derive(Debug, Clone)]
pub struct AccessRecord {
    pub principal: Principal,
    /// The GraphQL field (or subscription) that disclosed: `board`, `boardChanged`, ...
    pub operation: String,
    /// The client's operation name, if it gave one.
    pub operation_name: Option<String>,
    pub correlation_id: String,
    pub client_addr: Option<String>,
    pub disclosed: Disclosure,
}

/// A committed record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    pub seq: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessLogError {
    /// The record could not be made durable; the read it stands for must not be answered.
    #[error("the access log cannot record this read right now")]
    NotRecorded,
}

/// Options of the writer task.
#[derive(Debug, Clone, Copy)]
pub struct AccessLogOptions {
    /// Most records committed together.
    pub max_batch: usize,
    /// Records waiting for the writer before requests wait to hand theirs over.
    pub queue: usize,
    /// How long one group's commit may take before its records count as not written.
    pub commit_timeout: Duration,
}

impl Default for AccessLogOptions {
    fn default() -> Self {
        AccessLogOptions {
            max_batch: 512,
            queue: 16 * 1024,
            commit_timeout: Duration::from_secs(5),
        }
    }
}

struct Pending {
    record: AccessRecord,
    done: oneshot::Sender<Result<Receipt, AccessLogError>>,
}

/// The handle requests record through. Cheap to clone; the writer stops when the last
/// handle is dropped.
#[derive(Clone)]
pub struct AccessLog {
    queue: mpsc::Sender<Pending>,
}

impl AccessLog {
    /// Starts the writer task on `pool`.
    pub fn start(pool: PgPool, options: AccessLogOptions) -> AccessLog {
        let (queue, rx) = mpsc::channel(options.queue.max(1));
        tokio::spawn(writer(pool, rx, options));
        AccessLog { queue }
    }

    /// Hands `record` to the writer and waits until it is committed.
    pub async fn record(&self, record: AccessRecord) -> Result<Receipt, AccessLogError> {
        let (done, receipt) = oneshot::channel();
        self.queue
            .send(Pending { record, done })
            .await
            .map_err(|_| AccessLogError::NotRecorded)?;
        receipt.await.map_err(|_| AccessLogError::NotRecorded)?
    }
}

async fn writer(pool: PgPool, mut rx: mpsc::Receiver<Pending>, options: AccessLogOptions) {
    let max_batch = options.max_batch.max(1);
    let mut batch = Vec::with_capacity(max_batch);
    while rx.recv_many(&mut batch, max_batch).await > 0 {
        // Whoever was waiting may have given up (request cancelled): their record is
        // still written, because the data may already have been sent.
        let records: Vec<&AccessRecord> = batch.iter().map(|p| &p.record).collect();
        let result = match tokio::time::timeout(options.commit_timeout, append(&pool, &records))
            .await
        {
            Ok(Ok(first_seq)) => Ok(first_seq),
            Ok(Err(e)) => {
                tracing::error!(error = %format!("{e:#}"), records = records.len(), "access log group commit failed");
                Err(AccessLogError::NotRecorded)
            }
            Err(_) => {
                tracing::error!(records = records.len(), "access log group commit timed out");
                Err(AccessLogError::NotRecorded)
            }
        };
        for (i, pending) in batch.drain(..).enumerate() {
            let outcome = result.clone().map(|first| Receipt {
                seq: first + i as i64,
            });
            let _ = pending.done.send(outcome);
        }
    }
}

/// Serializes `value` canonically: keys sorted, no whitespace.
fn canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String((*k).clone()).to_string());
                out.push(':');
                canonical(&map[k.as_str()], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(v, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// A row as stored: what is hashed, field for field.
#[derive(Debug, Clone)]
struct StoredRow {
    seq: i64,
    recorded_at: DateTime<Utc>,
    subject: String,
    role: String,
    name: Option<String>,
    scope: Value,
    operation: String,
    operation_name: Option<String>,
    correlation_id: String,
    client_addr: Option<String>,
    disclosed: Value,
    prev_hash: Vec<u8>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl StoredRow {
    fn hash(&self) -> Vec<u8> {
        let content = json!({
            "seq": self.seq,
            "recordedAt": self.recorded_at.timestamp_micros(),
            "subject": self.subject,
            "role": self.role,
            "name": self.name,
            "scope": self.scope,
            "operation": self.operation,
            "operationName": self.operation_name,
            "correlationId": self.correlation_id,
            "clientAddr": self.client_addr,
            "disclosed": self.disclosed,
            "prevHash": hex(&self.prev_hash),
        });
        let mut text = String::new();
        canonical(&content, &mut text);
        Sha256::digest(text.as_bytes()).to_vec()
    }
}

/// Appends `records` as one group: lock the head, chain the rows, move the head,
/// commit. Returns the first record's `seq`.
async fn append(pool: &PgPool, records: &[&AccessRecord]) -> anyhow::Result<i64> {
    let mut tx = pool.begin().await?;
    let head = sqlx::query("select seq, hash from access_log_head for update")
        .fetch_one(&mut *tx)
        .await?;
    let mut seq: i64 = head.try_get("seq")?;
    let mut prev: Vec<u8> = head.try_get("hash")?;
    let first = seq + 1;
    // Microseconds: what PostgreSQL keeps, so the hash verifies after a round trip.
    let now = DateTime::from_timestamp_micros(Utc::now().timestamp_micros())
        .expect("the current time is representable");
    let mut rows = Vec::with_capacity(records.len());
    for r in records {
        seq += 1;
        let row = StoredRow {
            seq,
            recorded_at: now,
            subject: r.principal.subject.clone(),
            role: r.principal.role.as_str().to_string(),
            // A patient's name is patient data: the log keeps their ids only.
            name: (r.principal.role != Role::Patient).then(|| r.principal.name.clone()),
            scope: serde_json::to_value(&r.principal.scope)?,
            operation: r.operation.clone(),
            operation_name: r.operation_name.clone(),
            correlation_id: r.correlation_id.clone(),
            client_addr: r.client_addr.clone(),
            disclosed: serde_json::to_value(&r.disclosed)?,
            prev_hash: prev.clone(),
        };
        let hash = row.hash();
        prev = hash.clone();
        rows.push((row, hash));
    }
    let mut insert: QueryBuilder<Postgres> = QueryBuilder::new(
        "insert into access_log (seq, recorded_at, subject, role, name, scope, operation, \
         operation_name, correlation_id, client_addr, disclosed, prev_hash, hash) ",
    );
    insert.push_values(&rows, |mut b, (row, hash)| {
        b.push_bind(row.seq)
            .push_bind(row.recorded_at)
            .push_bind(&row.subject)
            .push_bind(&row.role)
            .push_bind(&row.name)
            .push_bind(&row.scope)
            .push_bind(&row.operation)
            .push_bind(&row.operation_name)
            .push_bind(&row.correlation_id)
            .push_bind(&row.client_addr)
            .push_bind(&row.disclosed)
            .push_bind(&row.prev_hash)
            .push_bind(hash);
    });
    insert.build().execute(&mut *tx).await?;
    sqlx::query("update access_log_head set seq = $1, hash = $2")
        .bind(seq)
        .bind(&prev)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(first)
}

/// What `careboard audit verify` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Rows that verified, from the start of the chain.
    pub verified: i64,
    /// The head's hash (hex), for anchoring elsewhere.
    pub head_hash: String,
    /// The first row that breaks the chain, and how.
    pub first_broken: Option<Broken>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broken {
    pub seq: i64,
    pub reason: String,
}

/// Walks the whole chain (in one snapshot) and reports the first broken row.
pub async fn verify(pool: &PgPool) -> anyhow::Result<VerifyReport> {
    let mut tx = pool.begin().await?;
    sqlx::query("set transaction isolation level repeatable read, read only")
        .execute(&mut *tx)
        .await?;
    let head = sqlx::query("select seq, hash from access_log_head")
        .fetch_one(&mut *tx)
        .await?;
    let head_seq: i64 = head.try_get("seq")?;
    let head_hash: Vec<u8> = head.try_get("hash")?;
    let mut last_seq = 0i64;
    let mut last_hash = vec![0u8; 32];
    let broken = |seq: i64, reason: String| Some(Broken { seq, reason });
    let mut first_broken = None;
    'walk: loop {
        let rows = sqlx::query(
            "select seq, recorded_at, subject, role, name, scope, operation, operation_name, \
             correlation_id, client_addr, disclosed, prev_hash, hash \
             from access_log where seq > $1 order by seq limit 1000",
        )
        .bind(last_seq)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            break;
        }
        for r in rows {
            let row = StoredRow {
                seq: r.try_get("seq")?,
                recorded_at: r.try_get("recorded_at")?,
                subject: r.try_get("subject")?,
                role: r.try_get("role")?,
                name: r.try_get("name")?,
                scope: r.try_get("scope")?,
                operation: r.try_get("operation")?,
                operation_name: r.try_get("operation_name")?,
                correlation_id: r.try_get("correlation_id")?,
                client_addr: r.try_get("client_addr")?,
                disclosed: r.try_get("disclosed")?,
                prev_hash: r.try_get("prev_hash")?,
            };
            let stored_hash: Vec<u8> = r.try_get("hash")?;
            if row.seq != last_seq + 1 {
                first_broken = broken(
                    last_seq + 1,
                    format!(
                        "record {} is missing (the chain jumps from {} to {})",
                        last_seq + 1,
                        last_seq,
                        row.seq
                    ),
                );
                break 'walk;
            }
            if row.prev_hash != last_hash {
                first_broken = broken(
                    row.seq,
                    format!("record {} does not follow record {}", row.seq, last_seq),
                );
                break 'walk;
            }
            if row.hash() != stored_hash {
                first_broken = broken(
                    row.seq,
                    format!(
                        "record {} was altered (its content does not match its hash)",
                        row.seq
                    ),
                );
                break 'walk;
            }
            last_seq = row.seq;
            last_hash = stored_hash;
        }
    }
    if first_broken.is_none() && (last_seq != head_seq || last_hash != head_hash) {
        first_broken = broken(
            last_seq + 1,
            format!(
                "the chain ends at record {last_seq} but {head_seq} were written \
                 (records removed from the end)"
            ),
        );
    }
    tx.commit().await?;
    Ok(VerifyReport {
        verified: last_seq,
        head_hash: hex(&head_hash),
        first_broken,
    })
}

/// Which records to read back (`accessLog`, `myAccessLog`).
#[derive(Debug, Clone, Default)]
pub struct LogQuery {
    pub subject: Option<String>,
    /// Records that showed this patient's fields.
    pub patient_id: Option<String>,
    /// Records that showed this appointment: those that named it one by one, and the
    /// Board-form records of its Board that may have shown it (a Board record names
    /// its patients, not its appointments; time travel to the record's version says
    /// exactly what was on the Board then).
    pub appointment: Option<AppointmentQuery>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    /// Only records after this `seq` (the cursor).
    pub after: i64,
    pub limit: i64,
}

/// The appointment an access-log query asks about, with where it sits.
#[derive(Debug, Clone)]
pub struct AppointmentQuery {
    pub appointment_id: Uuid,
    /// Its Board, when the appointment exists: the Board-form records that may have
    /// shown it are matched on it.
    pub on_board: Option<OnBoard>,
}

/// Where an appointment sits, for matching Board-form records: those of `board_id`
/// recorded since it was requested, and, when it names its patient, that showed them.
#[derive(Debug, Clone)]
pub struct OnBoard {
    pub board_id: Uuid,
    pub patient_id: Option<String>,
    pub since: DateTime<Utc>,
}

/// A record as read back.
#[derive(Debug, Clone)]
pub struct LoggedAccess {
    pub seq: i64,
    pub recorded_at: DateTime<Utc>,
    pub subject: String,
    pub role: String,
    pub name: Option<String>,
    pub operation: String,
    pub operation_name: Option<String>,
    pub correlation_id: String,
    pub client_addr: Option<String>,
    pub disclosed: Value,
}

/// Records matching `q`, oldest first.
pub async fn read(pool: &PgPool, q: &LogQuery) -> anyhow::Result<Vec<LoggedAccess>> {
    let mut sql: QueryBuilder<Postgres> = QueryBuilder::new(
        "select seq, recorded_at, subject, role, name, operation, operation_name, \
         correlation_id, client_addr, disclosed from access_log where seq > ",
    );
    sql.push_bind(q.after);
    if let Some(subject) = &q.subject {
        sql.push(" and subject = ").push_bind(subject.clone());
    }
    if let Some(from) = q.from {
        sql.push(" and recorded_at >= ").push_bind(from);
    }
    if let Some(to) = q.to {
        sql.push(" and recorded_at < ").push_bind(to);
    }
    // Containment, so the GIN index on `disclosed` answers; a record of several
    // disclosures holds them under `items`.
    if let Some(patient) = &q.patient_id {
        let shapes = [
            json!({ "patientIds": [patient] }),
            json!({ "appointments": [{ "patientId": patient }] }),
        ];
        contained(&mut sql, &shapes);
    }
    if let Some(appointment) = &q.appointment {
        let named = json!({ "appointments": [{ "appointmentId": appointment.appointment_id }] });
        sql.push(" and (");
        contains_any(&mut sql, &named);
        if let Some(on) = &appointment.on_board {
            let mut board = json!({ "kind": "board", "boardId": on.board_id });
            if let Some(patient) = &on.patient_id {
                board["patientIds"] = json!([patient]);
            }
            sql.push(" or (recorded_at >= ")
                .push_bind(on.since)
                .push(" and (");
            contains_any(&mut sql, &board);
            sql.push("))");
        }
        sql.push(")");
    }
    sql.push(" order by seq limit ").push_bind(q.limit);
    let rows = sql.build().fetch_all(pool).await?;
    rows.into_iter()
        .map(|r| {
            Ok(LoggedAccess {
                seq: r.try_get("seq")?,
                recorded_at: r.try_get("recorded_at")?,
                subject: r.try_get("subject")?,
                role: r.try_get("role")?,
                name: r.try_get("name")?,
                operation: r.try_get("operation")?,
                operation_name: r.try_get("operation_name")?,
                correlation_id: r.try_get("correlation_id")?,
                client_addr: r.try_get("client_addr")?,
                disclosed: r.try_get("disclosed")?,
            })
        })
        .collect()
}

/// ` and (disclosed @> s1 or disclosed @> {"items": [s1]} or ...)`.
fn contained(sql: &mut QueryBuilder<Postgres>, shapes: &[Value]) {
    sql.push(" and (");
    for (i, shape) in shapes.iter().enumerate() {
        if i > 0 {
            sql.push(" or ");
        }
        contains_any(sql, shape);
    }
    sql.push(")");
}

/// `disclosed @> shape or disclosed @> {"items": [shape]}`: the shape on its own or
/// inside a record of several (containment, so the GIN index on `disclosed` answers).
fn contains_any(sql: &mut QueryBuilder<Postgres>, shape: &Value) {
    sql.push("disclosed @> ").push_bind(shape.clone());
    sql.push(" or disclosed @> ")
        .push_bind(json!({ "items": [shape] }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json_sorts_keys_at_every_level_and_keeps_arrays_in_order() {
        let v = json!({"b": 1, "a": {"d": [3, 1], "c": "x\"y"}, "e": null});
        let mut s = String::new();
        canonical(&v, &mut s);
        assert_eq!(s, r#"{"a":{"c":"x\"y","d":[3,1]},"b":1,"e":null}"#);
    }

    #[test]
    fn any_change_to_a_row_changes_its_hash() {
        let row = StoredRow {
            seq: 1,
            recorded_at: DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap(),
            subject: "s".into(),
            role: "coordinator".into(),
            name: Some("Ana".into()),
            scope: json!({"role": "admin"}),
            operation: "board".into(),
            operation_name: None,
            correlation_id: "c".into(),
            client_addr: Some("127.0.0.1".into()),
            disclosed: json!({"kind": "board", "boardId": Uuid::nil(), "version": 3}),
            prev_hash: vec![0; 32],
        };
        let h = row.hash();
        assert_eq!(h.len(), 32);
        let mut edits: Vec<StoredRow> = Vec::new();
        let mut r = row.clone();
        r.subject = "t".into();
        edits.push(r);
        let mut r = row.clone();
        r.disclosed["version"] = json!(4);
        edits.push(r);
        let mut r = row.clone();
        r.recorded_at = DateTime::from_timestamp_micros(1_700_000_000_123_457).unwrap();
        edits.push(r);
        let mut r = row.clone();
        r.prev_hash = vec![1; 32];
        edits.push(r);
        let mut r = row.clone();
        r.operation_name = Some("".into());
        edits.push(r);
        for e in edits {
            assert_ne!(e.hash(), h, "{e:?}");
        }
    }
}
