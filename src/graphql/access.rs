//! The one edge where GraphQL meets the permission matrix (DESIGN §9, STYLE habit 13).
//!
//! - [`Caller`]: who a request or a websocket speaks for, put into its data by the HTTP
//!   and websocket layers. A request without one is refused (deny by default).
//! - [`AccessEdge`], a schema extension, refuses a root field before it resolves when it
//!   has no row in the matrix or the caller's role may never use it; it also writes the
//!   access record of every response and subscription frame that disclosed patient
//!   fields, and withholds the answer when that record cannot be written (fail closed).
//! - `authorize` and `sees_patient_fields`: the scoped checks, made with the facts a
//!   resolver looked up ([`board_facts`], [`appointment_facts`]); resolvers never decide
//!   access themselves, they only gather facts and ask here.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextExecute, NextParseQuery, NextPrepareRequest,
    NextResolve, NextSubscribe, ResolveInfo,
};
use async_graphql::parser::types::{DocumentOperations, ExecutableDocument, OperationType};
use async_graphql::{
    Context, Error, ErrorExtensions, QueryPathNode, QueryPathSegment, Request, Response,
    ServerError, ServerResult, Value,
};
use futures::stream::{BoxStream, StreamExt};
use uuid::Uuid;

use super::RequestContext;
use crate::domain::{self, BoardContents};
use crate::error::ErrorCode;
use crate::identity::access_log::{AccessLog, AccessRecord, AppointmentRef, Disclosure};
use crate::identity::matrix::{self, BoardFacts, Facts, Operation, Rule};
use crate::identity::{Principal, Scope};

/// Who a request (or a websocket and its subscriptions) speaks for.
#[derive(Debug, Clone)]
pub enum Caller {
    /// A verified token's principal: every check applies.
    Verified(Principal),
    /// Authentication is switched off (`--auth off`, loopback only): nobody is known, so
    /// nothing is checked, masked or recorded.
    Unchecked,
}

/// The client's address as the server saw it, for access records.
#[derive(Debug, Clone)]
pub struct ClientAddr(pub String);

/// The operations a root field of the schema stands for; `None`: the field has no row
/// in the matrix and is refused. A test walks the schema against this.
pub fn field_operations(root: &str, field: &str) -> Option<&'static [Operation]> {
    use Operation as Op;
    let ops: &'static [Operation] = match (root, field) {
        ("Query", "board") => &[Op::Board, Op::BoardAsOf],
        ("Query", "boards") => &[Op::Boards],
        ("Query", "boardDates") => &[Op::BoardDates],
        ("Query", "boardHistory") => &[Op::BoardHistory],
        ("Query", "appointment") => &[Op::Appointment],
        ("Query", "waitTimeEstimate") => &[Op::WaitTimeEstimate],
        ("Query", "providerShift") => &[Op::ProviderShift],
        ("Query", "projections") => &[Op::Projections],
        ("Query", "provider") => &[Op::Provider],
        ("Query", "providers") => &[Op::Providers],
        ("Query", "events") => &[Op::Events],
        ("Query", "accessLog") => &[Op::AccessLog],
        ("Query", "myAccessLog") => &[Op::MyAccessLog],
        ("Query", "myAppointments") => &[Op::MyAppointments],
        ("Subscription", "boardChanged") => &[Op::BoardChanged],
        ("Subscription", "boardEvents") => &[Op::BoardEvents],
        ("Subscription", "appointmentChanged") => &[Op::AppointmentChanged],
        ("Mutation", "openBoard") => &[Op::OpenBoard],
        ("Mutation", "closeBoard") => &[Op::CloseBoard],
        ("Mutation", "registerProvider") => &[Op::RegisterProvider],
        ("Mutation", "joinBoard") => &[Op::JoinBoard],
        ("Mutation", "markProviderReady") => &[Op::MarkProviderReady],
        ("Mutation", "pauseProvider") => &[Op::PauseProvider],
        ("Mutation", "completeCharting") => &[Op::CompleteCharting],
        ("Mutation", "signOffProvider") => &[Op::SignOffProvider],
        ("Mutation", "requestAppointment") => &[Op::RequestAppointment],
        ("Mutation", "scheduleAppointment") => &[Op::ScheduleAppointment],
        ("Mutation", "startAppointment") => &[Op::StartAppointment],
        ("Mutation", "finishAppointment") => &[Op::FinishAppointment],
        ("Mutation", "cancelAppointment") => &[Op::CancelAppointment],
        ("Mutation", "rebuildProjection") => &[Op::RebuildProjection],
        ("Mutation", "replayDeadLetters") => &[Op::ReplayDeadLetters],
        _ => return None,
    };
    Some(ops)
}

/// A refusal in GraphQL's shape: `FORBIDDEN`, saying what is missing (role or scope).
pub fn forbidden(message: impl Into<String>) -> Error {
    Error::new(message).extend_with(|_, e| e.set("code", ErrorCode::Forbidden.as_str()))
}

/// The answer of a mutation field that was carried out but whose answer (showing patient
/// fields) could not be recorded: withheld, saying it happened and how to get the answer.
fn withheld(field: &str) -> ServerError {
    let mut e = ServerError::new(
        format!(
            "{field} was carried out, but its answer shows patient data that the access log \
             cannot record right now, so the answer is withheld; do not send it again as a new \
             command: retry with the same commandId to receive the answer (nothing more is \
             written), or read the result with a query"
        ),
        None,
    );
    e.path = vec![async_graphql::PathSegment::Field(field.to_string())];
    let extensions = e.extensions.get_or_insert_with(Default::default);
    extensions.set("code", ErrorCode::ResultWithheld.as_str());
    extensions.set("committed", true);
    e
}

/// A mutation's response whose access record could not be written: the fields that
/// were carried out are withheld (each one an error saying it was committed), the errors
/// of fields that failed are kept; no data is sent.
fn withhold_mutation(response: Response) -> Response {
    let mut errors = Vec::new();
    if let Value::Object(fields) = &response.data {
        for (key, value) in fields {
            if !matches!(value, Value::Null) {
                errors.push(withheld(key.as_str()));
            }
        }
    }
    // Kept: errors name no patient field (DESIGN §9), and say which commands failed.
    errors.extend(response.errors);
    if errors.is_empty() {
        errors.push(unrecorded());
    }
    Response::from_errors(errors)
}

fn unrecorded() -> ServerError {
    let mut e = ServerError::new(
        "this answer discloses patient data and the access log cannot record it right now; \
         nothing was disclosed, retry shortly",
        None,
    );
    e.extensions
        .get_or_insert_with(Default::default)
        .set("code", ErrorCode::Unavailable.as_str());
    e
}

pub(crate) fn caller<'a>(ctx: &Context<'a>) -> Result<&'a Caller, Error> {
    ctx.data_opt::<Caller>()
        .ok_or_else(|| forbidden("this request carries no verified principal"))
}

/// The principal, when the caller is a verified one.
pub(crate) fn principal<'a>(ctx: &Context<'a>) -> Result<Option<&'a Principal>, Error> {
    Ok(match caller(ctx)? {
        Caller::Verified(p) => Some(p),
        Caller::Unchecked => None,
    })
}

/// The role-level check: refused when the caller's role may never use any of `ops`.
fn role_may(caller: Option<&Caller>, ops: &[Operation]) -> Result<(), Error> {
    match caller {
        None => Err(forbidden("this request carries no verified principal")),
        Some(Caller::Unchecked) => Ok(()),
        Some(Caller::Verified(p)) => {
            let role = p.scope.role();
            match ops
                .iter()
                .find(|op| matrix::rule(**op, role) != Rule::Denied)
            {
                Some(_) => Ok(()),
                None => Err(forbidden(
                    matrix::authorize(p, ops[0], &Facts::default())
                        .err()
                        .map(|f| f.to_string())
                        .unwrap_or_default(),
                )),
            }
        }
    }
}

/// Refused unless the caller's role may use `op` at all (before any lookup).
pub(crate) fn role_check(ctx: &Context<'_>, op: Operation) -> Result<(), Error> {
    role_may(ctx.data_opt::<Caller>(), &[op])
}

/// May the caller perform `op` on the target described by `facts`?
pub(crate) fn authorize(ctx: &Context<'_>, op: Operation, facts: &Facts) -> Result<(), Error> {
    match caller(ctx)? {
        Caller::Unchecked => Ok(()),
        Caller::Verified(p) => {
            matrix::authorize(p, op, facts).map_err(|f| forbidden(f.to_string()))
        }
    }
}

/// `op` over every Board at once (`events` without a Board): allowed where the rule
/// needs no Board (admin), and for coordinators whose scope is every Board.
pub(crate) fn authorize_all_boards(ctx: &Context<'_>, op: Operation) -> Result<(), Error> {
    match caller(ctx)? {
        Caller::Unchecked => Ok(()),
        Caller::Verified(p) if matrix::sees_every_board(p, op) => Ok(()),
        Caller::Verified(p) => Err(forbidden(format!(
            "{}: name a Board (boardId) within your scope",
            matrix::authorize(p, op, &Facts::default())
                .err()
                .map(|f| f.to_string())
                .unwrap_or_default()
        ))),
    }
}

/// `op` on a target that does not exist: allowed (the caller learns it is missing)
/// for those who could use `op` on it whatever it were ([`matrix::sees_every_board`]);
/// refused as a target out of scope is for everyone else.
pub(crate) fn authorize_missing(ctx: &Context<'_>, op: Operation) -> Result<(), Error> {
    match caller(ctx)? {
        Caller::Unchecked => Ok(()),
        Caller::Verified(p) => matrix::authorize_missing(p, op, &Facts::default())
            .map_err(|f| forbidden(f.to_string())),
    }
}

/// Whether the caller sees patient fields of the appointment described by `facts`.
pub(crate) fn sees_patient_fields(ctx: &Context<'_>, facts: &Facts) -> bool {
    match ctx.data_opt::<Caller>() {
        None => false,
        Some(Caller::Unchecked) => true,
        Some(Caller::Verified(p)) => matrix::may_see_patient_fields(p, facts),
    }
}

/// Whether the caller sees patient fields of every appointment on a Board described by
/// `board` (coordinators in scope); an unlimited coordinator passes `None` for all Boards.
pub(crate) fn sees_all_patient_fields(ctx: &Context<'_>, board: Option<&BoardFacts>) -> bool {
    match ctx.data_opt::<Caller>() {
        None => false,
        Some(Caller::Unchecked) => true,
        Some(Caller::Verified(p)) => match (&p.scope, board) {
            (Scope::Coordinator { .. }, Some(b)) => p.scope.covers(&b.region, &b.specialty),
            (
                Scope::Coordinator {
                    regions: None,
                    specialties: None,
                },
                None,
            ) => true,
            _ => false,
        },
    }
}

pub fn board_facts(contents: &BoardContents) -> BoardFacts {
    BoardFacts {
        region: contents.board.region.clone(),
        specialty: contents.board.specialty.clone(),
        providers: contents
            .shifts
            .iter()
            .map(|s| s.provider_id.as_uuid())
            .collect(),
    }
}

/// The patient an appointment belongs to, when it records one.
pub fn patient_of(appointment: &domain::Appointment) -> Option<String> {
    appointment.patient_id.clone()
}

pub fn appointment_facts(appointment: &domain::Appointment, board: Option<BoardFacts>) -> Facts {
    Facts {
        board,
        provider_id: None,
        patient_id: patient_of(appointment),
        assigned_provider_id: appointment.provider_id.map(Uuid::from),
    }
}

pub fn shift_facts(shift: &domain::Shift, board: Option<BoardFacts>) -> Facts {
    Facts {
        board,
        provider_id: Some(shift.provider_id.as_uuid()),
        ..Facts::default()
    }
}

/// What one response disclosed, noted by the resolvers of patient fields.
#[derive(Default)]
pub struct Disclosures {
    seen: Mutex<Vec<Seen>>,
    /// Root fields by response key: a record names the field, never the alias a
    /// client chose for it.
    fields: Mutex<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Seen {
    /// The root field the disclosure was made under.
    operation: String,
    appointment_id: Uuid,
    patient_id: Option<String>,
    /// The Board listing it, at its version (`None`: shown on its own).
    board: Option<(Uuid, i64)>,
}

fn root_field(node: &QueryPathNode<'_>) -> String {
    let mut name = None;
    let mut current = Some(node);
    while let Some(n) = current {
        if let QueryPathSegment::Name(s) = n.segment {
            name = Some(s);
        }
        current = n.parent;
    }
    name.unwrap_or_default().to_string()
}

/// Notes that the patient fields of `appointment_id` were shown by the field at `ctx`.
pub(crate) fn note_disclosure(
    ctx: &Context<'_>,
    appointment_id: Uuid,
    patient_id: Option<String>,
    board: Option<(Uuid, i64)>,
) {
    let Some(disclosures) = ctx.data_opt::<Arc<Disclosures>>() else {
        return;
    };
    let operation = ctx.path_node.as_ref().map(root_field).unwrap_or_default();
    let seen = Seen {
        operation,
        appointment_id,
        patient_id,
        board,
    };
    let mut all = disclosures.seen.lock().expect("disclosures lock");
    if !all.contains(&seen) {
        all.push(seen);
    }
}

impl Disclosures {
    /// What was noted since the last take, as one record's operation and contents.
    fn take(&self) -> Option<(String, Disclosure)> {
        let mut seen = std::mem::take(&mut *self.seen.lock().expect("disclosures lock"));
        if seen.is_empty() {
            return None;
        }
        {
            let fields = self.fields.lock().expect("disclosures lock");
            for s in &mut seen {
                if let Some(field) = fields.get(&s.operation) {
                    s.operation.clone_from(field);
                }
            }
        }
        seen.sort();
        let operations: BTreeSet<&str> = seen.iter().map(|s| s.operation.as_str()).collect();
        let operation = operations.into_iter().collect::<Vec<_>>().join(",");
        let mut boards: BTreeMap<(Uuid, i64), BTreeSet<String>> = BTreeMap::new();
        let mut single: Vec<AppointmentRef> = Vec::new();
        for s in &seen {
            match s.board {
                Some(b) => {
                    boards.entry(b).or_default().extend(s.patient_id.clone());
                }
                None => {
                    let r = AppointmentRef {
                        appointment_id: s.appointment_id,
                        patient_id: s.patient_id.clone(),
                    };
                    if !single.contains(&r) {
                        single.push(r);
                    }
                }
            }
        }
        let mut items: Vec<Disclosure> = boards
            .into_iter()
            .map(|((board_id, version), patients)| Disclosure::Board {
                board_id,
                version,
                patient_ids: patients.into_iter().collect(),
            })
            .collect();
        if !single.is_empty() {
            items.push(Disclosure::Appointments {
                appointments: single,
            });
        }
        let disclosed = if items.len() == 1 {
            items.pop().expect("one item")
        } else {
            Disclosure::Several { items }
        };
        Some((operation, disclosed))
    }
}

/// Everything a record needs besides what was disclosed, read from the request's data.
#[derive(Clone)]
struct Recorder {
    log: Option<AccessLog>,
    principal: Option<Principal>,
    correlation_id: String,
    operation_name: Option<String>,
    client_addr: Option<String>,
}

impl Recorder {
    fn of(ctx: &ExtensionContext<'_>) -> Recorder {
        let request = ctx.data_opt::<RequestContext>();
        Recorder {
            log: ctx.data_opt::<AccessLog>().cloned(),
            principal: match ctx.data_opt::<Caller>() {
                Some(Caller::Verified(p)) => Some(p.clone()),
                _ => None,
            },
            correlation_id: request
                .map(|r| r.correlation_id.clone())
                .unwrap_or_else(|| Uuid::new_v4().to_string()),
            operation_name: request.and_then(|r| r.operation_name.clone()),
            client_addr: ctx.data_opt::<ClientAddr>().map(|a| a.0.clone()),
        }
    }

    /// Records what `disclosures` noted; `Err` when it could not be made durable.
    async fn record(&self, disclosures: &Disclosures) -> Result<(), ServerError> {
        let Some((operation, disclosed)) = disclosures.take() else {
            return Ok(());
        };
        self.record_disclosed(operation, disclosed).await
    }

    async fn record_disclosed(
        &self,
        operation: String,
        disclosed: Disclosure,
    ) -> Result<(), ServerError> {
        // Nobody to record (authentication off): nothing was checked either.
        let Some(principal) = &self.principal else {
            return Ok(());
        };
        let Some(log) = &self.log else {
            return Err(unrecorded());
        };
        let record = AccessRecord {
            principal: principal.clone(),
            operation,
            operation_name: self.operation_name.clone(),
            correlation_id: self.correlation_id.clone(),
            client_addr: self.client_addr.clone(),
            disclosed,
        };
        log.record(record)
            .await
            .map(|_| ())
            .map_err(|_| unrecorded())
    }
}

/// Who receives a shared subscription frame (DESIGN §9: the record names the principal
/// that received it): one per socket, recording each disclosing frame before it is sent.
pub struct Recipient(Recorder);

impl Recipient {
    pub fn new(
        log: Option<AccessLog>,
        caller: Option<&Caller>,
        correlation_id: String,
        client_addr: Option<String>,
    ) -> Self {
        Recipient(Recorder {
            log,
            principal: match caller {
                Some(Caller::Verified(p)) => Some(p.clone()),
                _ => None,
            },
            correlation_id,
            operation_name: None,
            client_addr,
        })
    }

    /// Records that this recipient was shown what a frame disclosed; `Err` (an
    /// UNAVAILABLE error to send instead of the frame) when it could not be made durable.
    pub async fn record(&self, frame: &super::tap::Disclosed) -> Result<(), ServerError> {
        let recorder = Recorder {
            operation_name: frame.operation_name.clone(),
            ..self.0.clone()
        };
        recorder
            .record_disclosed(frame.operation.clone(), frame.disclosed.clone())
            .await
    }
}

/// The schema extension that applies the matrix at the edge and records disclosures.
pub struct AccessEdge;

impl ExtensionFactory for AccessEdge {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(AccessEdgeExtension {
            disclosures: Arc::new(Disclosures::default()),
            operation_name: Mutex::new(None),
            operation_types: Mutex::new(Vec::new()),
        })
    }
}

struct AccessEdgeExtension {
    /// Shared with the request's resolvers through its data.
    disclosures: Arc<Disclosures>,
    /// The operation's name as the document gives it, when the request did not.
    operation_name: Mutex<Option<String>>,
    /// The document's operations: name (none for an anonymous one) and type.
    operation_types: Mutex<Vec<(Option<String>, OperationType)>>,
}

impl AccessEdgeExtension {
    /// Whether the operation that ran (`name`, as the request chose it) is a mutation.
    fn is_mutation(&self, name: Option<&str>) -> bool {
        let types = self.operation_types.lock().expect("operation types lock");
        let ty = match (types.as_slice(), name) {
            ([(_, ty)], _) => Some(*ty),
            (all, Some(name)) => all
                .iter()
                .find(|(n, _)| n.as_deref() == Some(name))
                .map(|(_, ty)| *ty),
            _ => None,
        };
        ty == Some(OperationType::Mutation)
    }
}

#[async_trait::async_trait]
impl Extension for AccessEdgeExtension {
    async fn prepare_request(
        &self,
        ctx: &ExtensionContext<'_>,
        request: Request,
        next: NextPrepareRequest<'_>,
    ) -> ServerResult<Request> {
        next.run(ctx, request.data(self.disclosures.clone())).await
    }

    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &async_graphql::Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        let document = next.run(ctx, query, variables).await?;
        *self.operation_types.lock().expect("operation types lock") = document
            .operations
            .iter()
            .map(|(name, op)| (name.map(|n| n.to_string()), op.node.ty))
            .collect();
        if let DocumentOperations::Multiple(ops) = &document.operations {
            if ops.len() == 1 {
                *self.operation_name.lock().expect("operation name lock") =
                    ops.keys().next().map(|n| n.to_string());
            }
        }
        Ok(document)
    }

    async fn resolve(
        &self,
        ctx: &ExtensionContext<'_>,
        info: ResolveInfo<'_>,
        next: NextResolve<'_>,
    ) -> ServerResult<Option<Value>> {
        let root = info.path_node.parent.is_none()
            && !info.is_for_introspection
            && !info.name.starts_with("__");
        if root {
            // A field error: where the field (its alias, if any) starts, and its key.
            let at = info
                .field
                .alias
                .as_ref()
                .map_or(info.field.name.pos, |alias| alias.pos);
            let refused = |e: Error| {
                let mut e = e.into_server_error(at);
                e.path = vec![async_graphql::PathSegment::Field(
                    info.alias.unwrap_or(info.name).to_string(),
                )];
                e
            };
            let Some(ops) = field_operations(info.parent_type, info.name) else {
                return Err(refused(forbidden(format!(
                    "{} has no row in the permission matrix",
                    info.name
                ))));
            };
            role_may(ctx.data_opt::<Caller>(), ops).map_err(refused)?;
            self.disclosures
                .fields
                .lock()
                .expect("disclosures lock")
                .insert(
                    info.alias.unwrap_or(info.name).to_string(),
                    info.name.to_string(),
                );
        }
        next.run(ctx, info).await
    }

    async fn execute(
        &self,
        ctx: &ExtensionContext<'_>,
        operation_name: Option<&str>,
        next: NextExecute<'_>,
    ) -> Response {
        let response = next.run(ctx, operation_name).await;
        let mut recorder = Recorder::of(ctx);
        recorder.operation_name = recorder
            .operation_name
            .or_else(|| operation_name.map(str::to_string))
            .or_else(|| self.operation_name.lock().expect("lock").clone());
        // A shared execution (crate::frames): the frame carries what it disclosed, and
        // every socket that receives it records it under its own principal.
        if let Some(tap) = ctx.data_opt::<Arc<super::tap::FrameTap>>() {
            tap.set_disclosed(self.disclosures.take().map(|(operation, disclosed)| {
                super::tap::Disclosed {
                    operation,
                    operation_name: recorder.operation_name,
                    disclosed,
                }
            }));
            return response;
        }
        match recorder.record(&self.disclosures).await {
            Ok(()) => response,
            // A mutation has been committed by now: its answer is withheld, saying so.
            Err(_) if self.is_mutation(operation_name) => withhold_mutation(response),
            Err(e) => Response::from_errors(vec![e]),
        }
    }

    fn subscribe<'s>(
        &self,
        ctx: &ExtensionContext<'_>,
        stream: BoxStream<'s, Response>,
        next: NextSubscribe<'_>,
    ) -> BoxStream<'s, Response> {
        // A shared execution (crate::frames) records nothing itself (see `execute`).
        if ctx.data_opt::<Arc<super::tap::FrameTap>>().is_some() {
            return next.run(ctx, stream);
        }
        let disclosures = self.disclosures.clone();
        let recorder = Recorder::of(ctx);
        let frames = next.run(ctx, stream);
        // Each frame is recorded before it is sent; a frame that cannot be recorded is
        // replaced by an error, and the subscription ends there.
        frames
            .then(move |response| {
                let recorder = recorder.clone();
                let disclosures = disclosures.clone();
                async move {
                    match recorder.record(&disclosures).await {
                        Ok(()) => (response, true),
                        Err(e) => (Response::from_errors(vec![e]), false),
                    }
                }
            })
            .scan(true, |open, (response, ok)| {
                let out = if *open { Some(response) } else { None };
                *open = ok;
                futures::future::ready(out)
            })
            .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(operation: &str, n: u128, patient: Option<&str>, board: Option<(u128, i64)>) -> Seen {
        Seen {
            operation: operation.into(),
            appointment_id: Uuid::from_u128(n),
            patient_id: patient.map(str::to_string),
            board: board.map(|(b, v)| (Uuid::from_u128(b), v)),
        }
    }

    #[test]
    fn one_answer_is_one_record_grouped_by_board_version_with_the_patients_shown() {
        let d = Disclosures::default();
        assert!(d.take().is_none(), "nothing shown, nothing recorded");
        for s in [
            seen("board", 1, Some("p1"), Some((9, 4))),
            seen("board", 2, None, Some((9, 4))),
            seen("board", 3, Some("p3"), Some((9, 4))),
        ] {
            d.seen.lock().unwrap().push(s);
        }
        let (operation, disclosed) = d.take().unwrap();
        assert_eq!(operation, "board");
        assert_eq!(
            disclosed,
            Disclosure::Board {
                board_id: Uuid::from_u128(9),
                version: 4,
                patient_ids: vec!["p1".into(), "p3".into()],
            }
        );
        assert!(d.take().is_none(), "taken once");
        for s in [
            seen("board", 1, Some("p1"), Some((9, 4))),
            seen("appointment", 5, Some("p5"), None),
        ] {
            d.seen.lock().unwrap().push(s);
        }
        let (operation, disclosed) = d.take().unwrap();
        assert_eq!(operation, "appointment,board");
        let Disclosure::Several { items } = disclosed else {
            panic!("{disclosed:?}")
        };
        assert_eq!(items.len(), 2);
        assert_eq!(
            items[1],
            Disclosure::Appointments {
                appointments: vec![AppointmentRef {
                    appointment_id: Uuid::from_u128(5),
                    patient_id: Some("p5".into()),
                }]
            }
        );
    }

    #[test]
    fn every_root_field_of_the_schema_has_a_row_and_every_row_a_field() {
        let sdl = crate::graphql::sdl();
        let doc = async_graphql::parser::parse_schema(&sdl).expect("the SDL parses");
        let mut covered: BTreeSet<&'static str> = BTreeSet::new();
        let mut fields = 0;
        for def in &doc.definitions {
            let async_graphql::parser::types::TypeSystemDefinition::Type(ty) = def else {
                continue;
            };
            let root = ty.node.name.node.as_str();
            if !matches!(root, "Query" | "Mutation" | "Subscription") {
                continue;
            }
            let async_graphql::parser::types::TypeKind::Object(object) = &ty.node.kind else {
                continue;
            };
            for field in &object.fields {
                let name = field.node.name.node.as_str();
                let ops = field_operations(root, name)
                    .unwrap_or_else(|| panic!("{root}.{name} has no row in the matrix"));
                covered.extend(ops.iter().map(|o| o.name()));
                fields += 1;
            }
        }
        assert!(fields > 20, "the walk saw the schema ({fields} fields)");
        for op in Operation::ALL {
            if crate::identity::matrix::NOT_GRAPHQL.contains(op) {
                assert!(
                    !covered.contains(op.name()),
                    "{op} is served outside GraphQL"
                );
                continue;
            }
            assert!(
                covered.contains(op.name()),
                "the matrix has a row for {op}, which no field of the schema serves"
            );
        }
    }
}
