//! Mutations: each is one command through `commands`, answered with the new state.

use async_graphql::{Context, Object, Result, SimpleObject};

use super::inputs::{
    AppointmentInput, CancelAppointmentInput, CloseBoardInput, JoinBoardInput, OpenBoardInput,
    RegisterProviderInput, RequestAppointmentInput, ScheduleAppointmentInput, ShiftInput,
};
use super::types::{
    AppointmentPayload, AppointmentShiftPayload, Board, BoardPayload, Provider, ProviderPayload,
    ProviderShift, ShiftPayload,
};
use super::{command_meta, estimator, store};
use crate::commands::{self, AppointmentAction, ShiftAction, Written};
use crate::domain;
use crate::error::AppError;
use crate::projections::Projection;
use crate::projector::replay::{replay_dead_letters, ReplayReport};

pub struct Mutation;

/// A side-by-side rebuild that was started (or was already running).
#[derive(SimpleObject)]
pub struct RebuildPayload {
    pub name: String,
    pub generation: i32,
}

fn projection_named(name: &str) -> Result<Projection, AppError> {
    Projection::named(name).map_err(AppError::validation)
}

fn board_payload(w: Written<domain::Board>) -> BoardPayload {
    BoardPayload {
        board: Board::from_state(w.entity),
        version: w.version,
        position: w.position,
    }
}

fn shift_payload(w: Written<domain::Shift>) -> ShiftPayload {
    ShiftPayload {
        shift: ProviderShift(w.entity),
        version: w.version,
        position: w.position,
    }
}

fn appointment_payload(w: Written<domain::Appointment>) -> AppointmentPayload {
    super::types::AppointmentPayload {
        appointment: super::types::Appointment::from(w.entity),
        version: w.version,
        position: w.position,
    }
}

fn appointment_shift_payload(w: Written<domain::Appointment>) -> AppointmentShiftPayload {
    AppointmentShiftPayload {
        appointment: super::types::Appointment::from(w.entity),
        shift: w.shift.map(ProviderShift),
        version: w.version,
        position: w.position,
    }
}

async fn shift_action(
    ctx: &Context<'_>,
    action: ShiftAction,
    input: ShiftInput,
) -> Result<ShiftPayload> {
    let command = (action, input).try_into()?;
    let meta = command_meta(ctx, action.operation());
    Ok(shift_payload(
        commands::shift_action(store(ctx), meta, command).await?,
    ))
}

async fn appointment_action(
    ctx: &Context<'_>,
    action: AppointmentAction,
    input: AppointmentInput,
) -> Result<Written<domain::Appointment>> {
    let command = (action, input).try_into()?;
    let meta = command_meta(ctx, action.operation());
    Ok(commands::appointment_action(store(ctx), meta, command).await?)
}

#[Object]
impl Mutation {
    /// Opens a Board for one workday.
    async fn open_board(&self, ctx: &Context<'_>, input: OpenBoardInput) -> Result<BoardPayload> {
        let meta = command_meta(ctx, "openBoard");
        Ok(board_payload(
            commands::open_board(store(ctx), meta, input.try_into()?).await?,
        ))
    }

    /// Closes a Board; refused while appointments are open or providers not signed off.
    async fn close_board(&self, ctx: &Context<'_>, input: CloseBoardInput) -> Result<BoardPayload> {
        let meta = command_meta(ctx, "closeBoard");
        Ok(board_payload(
            commands::close_board(store(ctx), meta, input.try_into()?).await?,
        ))
    }

    async fn register_provider(
        &self,
        ctx: &Context<'_>,
        input: RegisterProviderInput,
    ) -> Result<ProviderPayload> {
        let meta = command_meta(ctx, "registerProvider");
        let w = commands::register_provider(store(ctx), meta, input.try_into()?).await?;
        Ok(ProviderPayload {
            provider: Provider(w.entity),
            version: w.version,
            position: w.position,
        })
    }

    /// A registered provider joins an open Board and is READY.
    async fn join_board(&self, ctx: &Context<'_>, input: JoinBoardInput) -> Result<ShiftPayload> {
        let meta = command_meta(ctx, "joinBoard");
        Ok(shift_payload(
            commands::join_board(store(ctx), meta, input.try_into()?).await?,
        ))
    }

    /// PAUSED → READY.
    async fn mark_provider_ready(
        &self,
        ctx: &Context<'_>,
        input: ShiftInput,
    ) -> Result<ShiftPayload> {
        shift_action(ctx, ShiftAction::MarkReady, input).await
    }

    /// READY → PAUSED.
    async fn pause_provider(&self, ctx: &Context<'_>, input: ShiftInput) -> Result<ShiftPayload> {
        shift_action(ctx, ShiftAction::Pause, input).await
    }

    /// CHARTING → READY; the charting time is recorded.
    async fn complete_charting(
        &self,
        ctx: &Context<'_>,
        input: ShiftInput,
    ) -> Result<ShiftPayload> {
        shift_action(ctx, ShiftAction::CompleteCharting, input).await
    }

    /// READY or PAUSED → SIGNED_OFF (final).
    async fn sign_off_provider(
        &self,
        ctx: &Context<'_>,
        input: ShiftInput,
    ) -> Result<ShiftPayload> {
        shift_action(ctx, ShiftAction::SignOff, input).await
    }

    /// A patient asks for an appointment on an open Board.
    async fn request_appointment(
        &self,
        ctx: &Context<'_>,
        input: RequestAppointmentInput,
    ) -> Result<AppointmentPayload> {
        let meta = command_meta(ctx, "requestAppointment");
        Ok(appointment_payload(
            commands::request_appointment(store(ctx), meta, input.try_into()?).await?,
        ))
    }

    /// Pairs a waiting appointment with a READY provider; both streams change together.
    async fn schedule_appointment(
        &self,
        ctx: &Context<'_>,
        input: ScheduleAppointmentInput,
    ) -> Result<AppointmentShiftPayload> {
        let meta = command_meta(ctx, "scheduleAppointment");
        Ok(appointment_shift_payload(
            commands::schedule_appointment(store(ctx), estimator(ctx), meta, input.try_into()?)
                .await?,
        ))
    }

    /// SCHEDULED → STARTED.
    async fn start_appointment(
        &self,
        ctx: &Context<'_>,
        input: AppointmentInput,
    ) -> Result<AppointmentPayload> {
        appointment_action(ctx, AppointmentAction::Start, input)
            .await
            .map(appointment_payload)
    }

    /// STARTED → FINISHED, and the provider starts charting.
    async fn finish_appointment(
        &self,
        ctx: &Context<'_>,
        input: AppointmentInput,
    ) -> Result<AppointmentShiftPayload> {
        appointment_action(ctx, AppointmentAction::Finish, input)
            .await
            .map(appointment_shift_payload)
    }

    /// Admin: rebuilds a projection side by side while serving continues, then swaps it
    /// in. Returns the generation being built.
    async fn rebuild_projection(&self, ctx: &Context<'_>, name: String) -> Result<RebuildPayload> {
        let projection = projection_named(&name)?;
        let generation = crate::projector::state::request_rebuild(store(ctx).pool(), projection)
            .await
            .map_err(AppError::from)?;
        Ok(RebuildPayload { name, generation })
    }

    /// Admin: replays a projection's dead-lettered events (after fixing what failed).
    async fn replay_dead_letters(&self, ctx: &Context<'_>, name: String) -> Result<ReplayReport> {
        let projection = projection_named(&name)?;
        Ok(replay_dead_letters(store(ctx).pool(), projection)
            .await
            .map_err(AppError::Internal)?)
    }

    /// Cancels a waiting or scheduled appointment; a scheduled one frees its provider.
    async fn cancel_appointment(
        &self,
        ctx: &Context<'_>,
        input: CancelAppointmentInput,
    ) -> Result<AppointmentShiftPayload> {
        let meta = command_meta(ctx, "cancelAppointment");
        Ok(appointment_shift_payload(
            commands::cancel_appointment(store(ctx), meta, input.try_into()?).await?,
        ))
    }
}
