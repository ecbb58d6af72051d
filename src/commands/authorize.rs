//! The authorization slot every command passes between loading and deciding.

use crate::domain::{Appointment, Board, ProviderId, Shift};
use crate::error::{AppError, AppResult};
use crate::event_store::unit_of_work::{Guard, UnitOfWork};
use crate::identity::matrix::{BoardFacts, Facts, Operation};
use crate::identity::Principal;
use uuid::Uuid;

/// What a command acts on, as loaded inside its transaction: what authorization of
/// the command will be judged by.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// A Board to be opened.
    NewBoard {
        specialty: &'a str,
        region: &'a str,
    },
    Board(Option<&'a Board>),
    /// A provider to be registered.
    NewProvider,
    /// A provider joining a Board.
    Join {
        board: Option<&'a Board>,
        provider_id: ProviderId,
    },
    Shift(Option<&'a Shift>),
    /// An appointment to be requested on a Board, for this patient.
    Request {
        board: Option<&'a Board>,
        patient_id: Option<&'a str>,
    },
    Appointment(Option<&'a Appointment>),
    Scheduling {
        appointment: Option<&'a Appointment>,
        shift: Option<&'a Shift>,
    },
}

/// THE PLACE FOR AUTHORIZATION OF MUTATIONS. Every command calls this after loading
/// what it acts on and before deciding, with the actor it runs for (`meta.actor`): the
/// permission matrix (`identity::authorize`) judges the command's operation with the
/// facts loaded here (the Board's region and specialty, the shift's provider, the
/// appointment's patient and assigned provider). A refusal rolls the transaction back:
/// nothing is appended. Careboard's own actors (the matcher, the demo) and callers with
/// authentication off (which the GraphQL edge admits only then) are not judged.
pub(super) async fn authorize(uow: &mut UnitOfWork, target: Target<'_>) -> AppResult<()> {
    judge(uow, target).await?;
    // Only now may the caller learn that a target is not at `expectedVersion`.
    uow.authorized()
}

async fn judge(uow: &mut UnitOfWork, target: Target<'_>) -> AppResult<()> {
    let Some(principal) = uow.meta().actor.principal().cloned() else {
        return Ok(());
    };
    let operation = Operation::named(uow.meta().operation).ok_or_else(|| {
        AppError::Forbidden(format!(
            "{} has no row in the permission matrix",
            uow.meta().operation
        ))
    })?;
    // Refused by role before anything more is read.
    if crate::identity::matrix::rule(operation, principal.scope.role())
        == crate::identity::matrix::Rule::Denied
    {
        return Err(authorize_matrix(&principal, operation, &Facts::default()).unwrap_err());
    }
    // A target that does not exist: the command answers NOT_FOUND for it to callers
    // who could act on it whatever it were (`matrix::authorize_missing`).
    let missing = matches!(
        target,
        Target::Board(None)
            | Target::Join { board: None, .. }
            | Target::Shift(None)
            | Target::Request { board: None, .. }
            | Target::Appointment(None)
            | Target::Scheduling {
                appointment: None,
                ..
            }
    );
    let facts = match target {
        Target::NewBoard { specialty, region } => Facts {
            board: Some(BoardFacts {
                region: region.to_string(),
                specialty: specialty.to_string(),
                providers: Vec::new(),
            }),
            ..Facts::default()
        },
        Target::Board(board) => Facts {
            board: board.map(board_facts),
            ..Facts::default()
        },
        Target::NewProvider => Facts::default(),
        Target::Join { board, provider_id } => Facts {
            board: board.map(board_facts),
            provider_id: Some(provider_id.as_uuid()),
            ..Facts::default()
        },
        Target::Shift(shift) => shift_facts(uow, shift).await?,
        Target::Request { board, patient_id } => Facts {
            board: board.map(board_facts),
            patient_id: patient_id.map(str::to_string),
            ..Facts::default()
        },
        Target::Appointment(appointment)
        | Target::Scheduling {
            appointment,
            shift: _,
        } => {
            let board = match appointment {
                Some(a) => uow.read::<Board>(a.board_id, Guard::None).await?,
                None => None,
            };
            Facts {
                board: board.as_ref().map(board_facts),
                patient_id: appointment.and_then(|a| a.patient_id.clone()),
                assigned_provider_id: appointment.and_then(|a| a.provider_id.map(Uuid::from)),
                ..Facts::default()
            }
        }
    };
    if missing {
        return crate::identity::matrix::authorize_missing(&principal, operation, &facts)
            .map_err(AppError::from);
    }
    // A shift on another Board than the appointment is judged too: refused as out of
    // scope, before the domain's refusal could name the Board it is on.
    if let Target::Scheduling {
        appointment: Some(a),
        shift: Some(s),
    } = target
    {
        if s.board_id != a.board_id {
            authorize_matrix(&principal, operation, &shift_facts(uow, Some(s)).await?)?;
        }
    }
    authorize_matrix(&principal, operation, &facts)
}

/// The facts of a shift: its Board's region and specialty, and its provider.
async fn shift_facts(uow: &mut UnitOfWork, shift: Option<&Shift>) -> AppResult<Facts> {
    let board = match shift {
        Some(s) => uow.read::<Board>(s.board_id, Guard::None).await?,
        None => None,
    };
    Ok(Facts {
        board: board.as_ref().map(board_facts),
        provider_id: shift.map(|s| s.provider_id.as_uuid()),
        ..Facts::default()
    })
}

fn authorize_matrix(principal: &Principal, operation: Operation, facts: &Facts) -> AppResult<()> {
    crate::identity::authorize(principal, operation, facts).map_err(AppError::from)
}

fn board_facts(b: &Board) -> BoardFacts {
    BoardFacts {
        region: b.region.clone(),
        specialty: b.specialty.clone(),
        providers: Vec::new(),
    }
}
