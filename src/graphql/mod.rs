//! The GraphQL schema: queries, mutations, and the limits that guard them.

pub mod mutation;
pub mod query;
pub mod subscription;
pub mod types;

use async_graphql::{Context, Schema};

use crate::config::GraphqlLimits;
use crate::event_store::unit_of_work::CommandMeta;
use crate::event_store::EventStore;

pub type CareboardSchema = Schema<query::Query, mutation::Mutation, subscription::Subscription>;

/// Who is calling and how their request is traced; the HTTP layer puts one into every
/// request's data.
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub actor: String,
    pub correlation_id: String,
    pub operation_name: Option<String>,
}

/// How long a query with `minPosition` waits for the projector.
#[derive(Debug, Clone, Copy)]
pub struct ReadWait(pub std::time::Duration);

pub fn build_schema(
    store: EventStore,
    live: crate::live::LiveBoards,
    estimator: crate::estimates::Estimator,
    limits: &GraphqlLimits,
    read_wait: std::time::Duration,
) -> CareboardSchema {
    let mut builder = Schema::build(query::Query, mutation::Mutation, subscription::Subscription)
        .data(store)
        .data(live)
        .data(estimator)
        .data(ReadWait(read_wait))
        .limit_depth(limits.max_depth)
        .limit_complexity(limits.max_complexity)
        .limit_recursive_depth(limits.max_recursion)
        .limit_directives(limits.max_directives)
        .extension(crate::limits::ConnectionCap(
            limits.max_connections_per_request,
        ));
    if !limits.introspection {
        builder = builder.disable_introspection();
    }
    builder.finish()
}

/// The schema's SDL, as committed in `schema.graphql`.
pub fn sdl() -> String {
    Schema::build(query::Query, mutation::Mutation, subscription::Subscription)
        .finish()
        .sdl()
}

pub(crate) fn store<'a>(ctx: &Context<'a>) -> &'a EventStore {
    ctx.data_unchecked::<EventStore>()
}

pub(crate) fn estimator<'a>(ctx: &Context<'a>) -> &'a crate::estimates::Estimator {
    ctx.data_unchecked::<crate::estimates::Estimator>()
}

/// The command metadata for a mutation: who, which request, which operation.
pub(crate) fn command_meta(ctx: &Context<'_>, operation: &'static str) -> CommandMeta {
    let mut meta = CommandMeta::new(operation);
    if let Some(request) = ctx.data_opt::<RequestContext>() {
        meta.actor = request.actor.clone();
        meta.correlation_id = request.correlation_id.clone();
        meta.operation_name = request.operation_name.clone();
    }
    meta
}
