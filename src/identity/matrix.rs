//! The permission matrix of DESIGN §9: ONE table, operation × role → rule, that the
//! checks, the tests and the README's "Roles" section are all made from.
//!
//! Deny by default: an operation the table does not allow for a role is refused, a
//! scoped rule whose facts are missing is refused, and a role's scope of the wrong shape
//! satisfies no condition.

use std::fmt;

use uuid::Uuid;

use super::principal::{Principal, Role, Scope};

macro_rules! operations {
    ($($variant:ident => $name:literal,)*) => {
        /// Everything a caller can ask Careboard to do or show.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Operation { $($variant,)* }

        impl Operation {
            /// Every operation, in the table's order of declaration.
            pub const ALL: &'static [Operation] = &[$(Operation::$variant,)*];

            /// The GraphQL name (field, argument form or admin action).
            pub fn name(self) -> &'static str {
                match self { $(Operation::$variant => $name,)* }
            }

            /// The operation of this name (a mutation's field name, as commands record
            /// it in their metadata).
            pub fn named(name: &str) -> Option<Operation> {
                match name { $($name => Some(Operation::$variant),)* _ => None }
            }
        }
    };
}

operations! {
    OpenBoard => "openBoard",
    CloseBoard => "closeBoard",
    RegisterProvider => "registerProvider",
    JoinBoard => "joinBoard",
    MarkProviderReady => "markProviderReady",
    PauseProvider => "pauseProvider",
    CompleteCharting => "completeCharting",
    SignOffProvider => "signOffProvider",
    RequestAppointment => "requestAppointment",
    ScheduleAppointment => "scheduleAppointment",
    StartAppointment => "startAppointment",
    FinishAppointment => "finishAppointment",
    CancelAppointment => "cancelAppointment",
    Board => "board",
    Boards => "boards",
    BoardDates => "boardDates",
    BoardHistory => "boardHistory",
    BoardAsOf => "board(asOf)",
    BoardChanged => "boardChanged",
    Appointment => "appointment(id / asOf)",
    AppointmentChanged => "appointmentChanged",
    ProviderShift => "providerShift",
    Provider => "provider",
    Providers => "providers",
    Events => "events",
    BoardEvents => "boardEvents",
    WaitTimeEstimate => "waitTimeEstimate",
    Projections => "projections",
    RebuildProjection => "rebuildProjection",
    ReplayDeadLetters => "replayDeadLetters",
    AccessLog => "accessLog",
    MyAppointments => "myAppointments",
    MyAccessLog => "myAccessLog",
    Metrics => "/metrics",
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What must hold about the target for a scoped rule to allow the operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    /// Provider: the provider the command names is the caller (`joinBoard`).
    SelfProvider,
    /// Provider: the shift belongs to the caller.
    OwnShift,
    /// Provider: the appointment is assigned to the caller.
    Assigned,
    /// Provider: the caller joined the Board.
    BoardJoined,
    /// Patient: the appointment is requested for the caller.
    ForSelf,
    /// Patient: the appointment is the caller's.
    Own,
    /// Coordinator: the Board's region and specialty are within the caller's scope.
    InScope,
    /// Coordinator: acting for a patient, on a Board within the caller's scope.
    OnBehalf,
}

/// One cell of the matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    Denied,
    Allowed,
    Scoped(Condition),
}

impl Rule {
    /// How the cell reads in the README.
    pub fn label(self) -> &'static str {
        match self {
            Rule::Denied => "–",
            Rule::Allowed => "✓",
            Rule::Scoped(Condition::SelfProvider) => "self",
            Rule::Scoped(Condition::OwnShift) => "own shift",
            Rule::Scoped(Condition::Assigned) => "assigned",
            Rule::Scoped(Condition::BoardJoined) => "Boards joined",
            Rule::Scoped(Condition::ForSelf) => "for self",
            Rule::Scoped(Condition::Own) => "own",
            Rule::Scoped(Condition::InScope) => "in scope",
            Rule::Scoped(Condition::OnBehalf) => "on behalf, in scope",
        }
    }
}

/// A row: operations that share their rules, and one rule per role.
#[derive(Debug, Clone, Copy)]
pub struct Row {
    pub operations: &'static [Operation],
    pub patient: Rule,
    pub provider: Rule,
    pub coordinator: Rule,
    pub admin: Rule,
}

impl Row {
    pub fn rule(&self, role: Role) -> Rule {
        match role {
            Role::Patient => self.patient,
            Role::Provider => self.provider,
            Role::Coordinator => self.coordinator,
            Role::Admin => self.admin,
        }
    }
}

use Condition::*;
use Operation as Op;
use Rule::{Allowed as A, Denied as D, Scoped as S};

/// THE matrix (DESIGN §9). Every operation appears in exactly one row (a test checks).
#[rustfmt::skip]
pub const MATRIX: &[Row] = &[
    Row { operations: &[Op::OpenBoard, Op::CloseBoard], patient: D, provider: D, coordinator: S(InScope), admin: A },
    Row { operations: &[Op::RegisterProvider], patient: D, provider: D, coordinator: A, admin: A },
    Row { operations: &[Op::JoinBoard], patient: D, provider: S(SelfProvider), coordinator: S(InScope), admin: A },
    Row {
        operations: &[Op::MarkProviderReady, Op::PauseProvider, Op::CompleteCharting, Op::SignOffProvider],
        patient: D, provider: S(OwnShift), coordinator: S(InScope), admin: A,
    },
    Row { operations: &[Op::RequestAppointment], patient: S(ForSelf), provider: D, coordinator: S(OnBehalf), admin: A },
    Row { operations: &[Op::ScheduleAppointment], patient: D, provider: D, coordinator: S(InScope), admin: A },
    Row { operations: &[Op::StartAppointment, Op::FinishAppointment], patient: D, provider: S(Assigned), coordinator: S(InScope), admin: A },
    Row { operations: &[Op::CancelAppointment], patient: S(Own), provider: D, coordinator: S(InScope), admin: A },
    Row {
        operations: &[Op::Board, Op::Boards, Op::BoardHistory, Op::BoardAsOf, Op::BoardChanged],
        patient: D, provider: S(BoardJoined), coordinator: S(InScope), admin: A,
    },
    Row { operations: &[Op::Appointment, Op::AppointmentChanged], patient: S(Own), provider: S(Assigned), coordinator: S(InScope), admin: A },
    Row { operations: &[Op::ProviderShift], patient: D, provider: S(OwnShift), coordinator: S(InScope), admin: A },
    // Not in DESIGN's table: provider reference data (clinicians' names, specialties,
    // licences) holds no patient data; patients see their provider through their
    // appointment instead.
    Row { operations: &[Op::Provider, Op::Providers], patient: D, provider: A, coordinator: A, admin: A },
    // Not in DESIGN's table: which dates have Boards (for the Board pages' date picker)
    // says nothing about any patient.
    Row { operations: &[Op::BoardDates], patient: D, provider: A, coordinator: A, admin: A },
    Row { operations: &[Op::Events, Op::BoardEvents], patient: D, provider: D, coordinator: S(InScope), admin: A },
    Row { operations: &[Op::WaitTimeEstimate], patient: A, provider: A, coordinator: A, admin: A },
    Row { operations: &[Op::Projections, Op::RebuildProjection, Op::ReplayDeadLetters], patient: D, provider: D, coordinator: D, admin: A },
    Row { operations: &[Op::AccessLog], patient: D, provider: D, coordinator: D, admin: A },
    Row { operations: &[Op::MyAppointments, Op::MyAccessLog], patient: A, provider: D, coordinator: D, admin: D },
    // Not a GraphQL field: the `/metrics` endpoint on the API's address (open on an
    // address of its own, `--metrics-bind`, meant for a private network).
    Row { operations: &[Op::Metrics], patient: D, provider: D, coordinator: D, admin: A },
];

/// Operations served outside GraphQL (an HTTP endpoint of their own).
pub const NOT_GRAPHQL: &[Operation] = &[Operation::Metrics];

/// Who sees patient fields (`patientName`, `reason`, any free text about a patient) of
/// an appointment; everyone else gets them masked (null). Admins run the system, they
/// do not treat patients: they see none.
pub const PATIENT_FIELDS: Row = Row {
    operations: &[],
    patient: S(Own),
    provider: S(Assigned),
    coordinator: S(InScope),
    admin: D,
};

/// The row an operation's rules are in.
pub fn row(operation: Operation) -> &'static Row {
    MATRIX
        .iter()
        .find(|r| r.operations.contains(&operation))
        .expect("every operation has a row in MATRIX (tested)")
}

pub fn rule(operation: Operation, role: Role) -> Rule {
    row(operation).rule(role)
}

/// The Board an operation touches, as far as access is concerned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BoardFacts {
    pub region: String,
    pub specialty: String,
    /// Providers who joined the Board.
    pub providers: Vec<Uuid>,
}

/// Facts about the target, looked up before the check (the check does no I/O). A fact a
/// rule needs and that is missing counts against the caller.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    pub board: Option<BoardFacts>,
    /// The provider a command names, or the one a shift belongs to.
    pub provider_id: Option<Uuid>,
    /// The patient an appointment belongs to, or is requested for.
    pub patient_id: Option<String>,
    /// The provider an appointment is assigned to.
    pub assigned_provider_id: Option<Uuid>,
}

/// A refusal, phrased by role and operation: it never names the target's contents.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.message())]
pub struct Forbidden {
    pub operation: Operation,
    pub role: Role,
    /// The condition that did not hold (`None`: the role may never do this).
    pub condition: Option<Condition>,
}

impl Forbidden {
    fn message(&self) -> String {
        let (op, role) = (self.operation, self.role);
        match self.condition {
            None => format!("the {role} role may not use {op}"),
            Some(c) => {
                let why = match c {
                    SelfProvider => "only for themselves",
                    OwnShift => "only on their own shifts",
                    Assigned => "only on appointments assigned to them",
                    BoardJoined => "only on Boards they joined",
                    ForSelf => "only for themselves",
                    Own => "only on their own appointments",
                    InScope | OnBehalf => "only on Boards within their regions and specialties",
                };
                format!("the {role} role may use {op} {why}")
            }
        }
    }
}

/// May `principal` perform `operation` on a target that does not exist, of which
/// `facts` is what is known (what the request itself names: a patient, a provider)?
/// Allowed, so the caller learns it is missing (NOT_FOUND, or null), for those who
/// could use `operation` on it whatever it were ([`sees_every_board`]); judged on
/// `facts` for everyone else, so that a missing target is refused as one out of scope
/// is and tells them nothing.
pub fn authorize_missing(
    principal: &Principal,
    operation: Operation,
    facts: &Facts,
) -> Result<(), Forbidden> {
    if sees_every_board(principal, operation) {
        return Ok(());
    }
    authorize(principal, operation, facts)
}

/// Whether `principal` may use `operation` on any Board whatever its region and
/// specialty: the rule needs no target (admin), or it asks for a Board in scope of a
/// coordinator whose scope is every Board. Such a caller may learn that a target does
/// not exist (NOT_FOUND, or null), and may use it over every Board at once; for anyone
/// else a missing target is refused as one out of scope is, so that it tells nothing.
pub fn sees_every_board(principal: &Principal, operation: Operation) -> bool {
    matches!(
        (rule(operation, principal.scope.role()), &principal.scope),
        (Rule::Allowed, _)
            | (
                Rule::Scoped(InScope | OnBehalf),
                Scope::Coordinator {
                    regions: None,
                    specialties: None,
                },
            )
    )
}

fn holds(condition: Condition, scope: &Scope, facts: &Facts) -> bool {
    match (condition, scope) {
        (SelfProvider | OwnShift, Scope::Provider { provider_id }) => {
            facts.provider_id == Some(*provider_id)
        }
        (Assigned, Scope::Provider { provider_id }) => {
            facts.assigned_provider_id == Some(*provider_id)
        }
        (BoardJoined, Scope::Provider { provider_id }) => facts
            .board
            .as_ref()
            .is_some_and(|b| b.providers.contains(provider_id)),
        (ForSelf | Own, Scope::Patient { patient_id }) => {
            facts.patient_id.as_deref() == Some(patient_id.as_str())
        }
        (InScope | OnBehalf, scope @ Scope::Coordinator { .. }) => facts
            .board
            .as_ref()
            .is_some_and(|b| scope.covers(&b.region, &b.specialty)),
        _ => false,
    }
}

fn check(rule: Rule, principal: &Principal, facts: &Facts) -> Result<(), Option<Condition>> {
    match rule {
        Rule::Allowed => Ok(()),
        Rule::Denied => Err(None),
        Rule::Scoped(c) if holds(c, &principal.scope, facts) => Ok(()),
        Rule::Scoped(c) => Err(Some(c)),
    }
}

/// May `principal` perform `operation` on the target described by `facts`?
pub fn authorize(
    principal: &Principal,
    operation: Operation,
    facts: &Facts,
) -> Result<(), Forbidden> {
    // The role is re-derived from the scope: a principal whose fields disagree is
    // judged by the narrower reading (its scope), never by the label alone.
    let role = principal.scope.role();
    check(rule(operation, role), principal, facts).map_err(|condition| Forbidden {
        operation,
        role,
        condition,
    })
}

/// May `principal` see the patient fields of the appointment described by `facts`?
/// When not, they are masked (null), never an error that names them.
pub fn may_see_patient_fields(principal: &Principal, facts: &Facts) -> bool {
    check(
        PATIENT_FIELDS.rule(principal.scope.role()),
        principal,
        facts,
    )
    .is_ok()
}

/// The matrix as a Markdown table, as printed in the README's "Roles" section.
pub fn render_markdown() -> String {
    let mut out = String::from("| operation | patient | provider | coordinator | admin |\n");
    out.push_str("|---|---|---|---|---|\n");
    let mut line = |ops: String, row: &Row| {
        let cells: Vec<&str> = Role::ALL.iter().map(|r| row.rule(*r).label()).collect();
        out.push_str(&format!("| {ops} | {} |\n", cells.join(" | ")));
    };
    for row in MATRIX {
        let ops: Vec<String> = row
            .operations
            .iter()
            .map(|o| format!("`{}`", o.name()))
            .collect();
        line(ops.join(", "), row);
    }
    line(
        "patient fields (`patientName`, `reason`) in any answer".to_string(),
        &PATIENT_FIELDS,
    );
    out
}

impl From<Forbidden> for crate::error::AppError {
    fn from(f: Forbidden) -> Self {
        crate::error::AppError::Forbidden(f.to_string())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn every_operation_is_in_exactly_one_row() {
        for op in Operation::ALL {
            let rows = MATRIX.iter().filter(|r| r.operations.contains(op)).count();
            assert_eq!(rows, 1, "{op} is in {rows} rows");
        }
        let listed: usize = MATRIX.iter().map(|r| r.operations.len()).sum();
        assert_eq!(listed, Operation::ALL.len());
    }

    fn provider_id() -> Uuid {
        Uuid::from_u128(7)
    }

    /// One principal per role; the coordinator is limited to pediatrics in Texas.
    fn principal(role: Role) -> Principal {
        let scope = match role {
            Role::Patient => Scope::Patient {
                patient_id: "patient-1".into(),
            },
            Role::Provider => Scope::Provider {
                provider_id: provider_id(),
            },
            Role::Coordinator => Scope::Coordinator {
                regions: Some(BTreeSet::from(["TX".to_string()])),
                specialties: Some(BTreeSet::from(["pediatrics".to_string()])),
            },
            Role::Admin => Scope::Admin,
        };
        Principal::new(format!("{role}-subject"), "Someone", scope)
    }

    /// A target that belongs to the principal in every way a target can: their Board
    /// (joined, in their region and specialty), their shift, their appointment.
    fn theirs() -> Facts {
        Facts {
            board: Some(BoardFacts {
                region: "tx".into(),
                specialty: "Pediatrics".into(),
                providers: vec![Uuid::from_u128(1), provider_id()],
            }),
            provider_id: Some(provider_id()),
            patient_id: Some("patient-1".into()),
            assigned_provider_id: Some(provider_id()),
        }
    }

    /// Targets that are someone else's, each in one way only.
    fn not_theirs() -> Vec<(&'static str, Facts)> {
        let mut out = vec![("nothing known about the target", Facts::default())];
        let mut f = theirs();
        f.board.as_mut().unwrap().region = "CA".into();
        out.push(("a Board in another region", f));
        let mut f = theirs();
        f.board.as_mut().unwrap().specialty = "cardiology".into();
        out.push(("a Board of another specialty", f));
        let mut f = theirs();
        f.board.as_mut().unwrap().providers = vec![Uuid::from_u128(1)];
        out.push(("a Board the provider did not join", f));
        let mut f = theirs();
        f.provider_id = Some(Uuid::from_u128(2));
        out.push(("another provider's shift", f));
        let mut f = theirs();
        f.assigned_provider_id = Some(Uuid::from_u128(2));
        out.push(("an appointment assigned to someone else", f));
        let mut f = theirs();
        f.patient_id = Some("patient-2".into());
        out.push(("another patient's appointment", f));
        out
    }

    /// The facts a condition reads; a target differing elsewhere still satisfies it.
    fn relevant(condition: Condition, label: &str) -> bool {
        match condition {
            SelfProvider | OwnShift => label.contains("shift") || label.contains("nothing"),
            Assigned => label.contains("assigned") || label.contains("nothing"),
            BoardJoined => label.contains("did not join") || label.contains("nothing"),
            ForSelf | Own => label.contains("patient") || label.contains("nothing"),
            InScope | OnBehalf => {
                label.contains("region") || label.contains("specialty") || label.contains("nothing")
            }
        }
    }

    /// Generated from MATRIX: every operation × every role, on their own target and on
    /// every kind of someone else's.
    #[test]
    fn the_checks_follow_the_matrix_for_every_operation_and_role() {
        let mut checked = 0;
        for op in Operation::ALL {
            for role in Role::ALL {
                let p = principal(role);
                let expected = rule(*op, role);
                let inside = authorize(&p, *op, &theirs());
                match expected {
                    Rule::Denied => assert!(inside.is_err(), "{role} {op} must be refused"),
                    _ => assert!(
                        inside.is_ok(),
                        "{role} {op} on their own target: {inside:?}"
                    ),
                }
                for (label, facts) in not_theirs() {
                    let outside = authorize(&p, *op, &facts);
                    let allowed = match expected {
                        Rule::Allowed => true,
                        Rule::Denied => false,
                        Rule::Scoped(c) => !relevant(c, label),
                    };
                    assert_eq!(
                        outside.is_ok(),
                        allowed,
                        "{role} {op} on {label}: {outside:?}"
                    );
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, Operation::ALL.len() * 4 * not_theirs().len());
    }

    #[test]
    fn a_coordinator_without_limits_is_in_scope_on_every_board() {
        let p = Principal::new(
            "c",
            "C",
            Scope::Coordinator {
                regions: None,
                specialties: None,
            },
        );
        let mut f = theirs();
        f.board.as_mut().unwrap().region = "CA".into();
        assert!(authorize(&p, Op::CloseBoard, &f).is_ok());
        assert!(authorize(&p, Op::CloseBoard, &Facts::default()).is_err());
        assert!(authorize(&p, Op::RebuildProjection, &f).is_err());
    }

    #[test]
    fn refusals_say_what_is_missing_in_terms_of_role_and_operation() {
        let e = authorize(&principal(Role::Patient), Op::OpenBoard, &theirs()).unwrap_err();
        assert_eq!(e.to_string(), "the patient role may not use openBoard");
        let e = authorize(&principal(Role::Provider), Op::Board, &Facts::default()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the provider role may use board only on Boards they joined"
        );
    }

    #[test]
    fn patient_fields_are_seen_by_the_patient_the_assigned_provider_and_coordinators_in_scope() {
        for role in Role::ALL {
            let p = principal(role);
            let own = may_see_patient_fields(&p, &theirs());
            assert_eq!(own, role != Role::Admin, "{role} on their own target");
            for (label, facts) in not_theirs() {
                let expected = match PATIENT_FIELDS.rule(role) {
                    Rule::Scoped(c) => !relevant(c, label),
                    Rule::Allowed => true,
                    Rule::Denied => false,
                };
                assert_eq!(
                    may_see_patient_fields(&p, &facts),
                    expected,
                    "{role} on {label}"
                );
            }
        }
    }

    #[test]
    fn the_readme_prints_the_matrix_the_code_enforces() {
        let readme = include_str!("../../README.md");
        let section = readme
            .split("\n## Roles\n")
            .nth(1)
            .expect("the README has a `## Roles` section");
        let table: String = section
            .lines()
            .skip_while(|l| !l.starts_with('|'))
            .take_while(|l| l.starts_with('|'))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(
            table,
            render_markdown(),
            "the README's roles table differs from the code's; paste render_markdown()'s output"
        );
    }
}
