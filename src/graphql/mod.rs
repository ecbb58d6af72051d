//! The GraphQL schema: queries, mutations, and the limits that guard them.

pub mod access;
pub mod field_order;
pub mod inputs;
pub mod mutation;
pub mod query;
pub mod scalars;
pub mod subscription;
pub mod tap;
pub mod types;

use async_graphql::parser::types::{ExecutableDocument, OperationType, Selection, SelectionSet};
use async_graphql::{Context, Schema};

use crate::config::GraphqlLimits;
use crate::event_store::unit_of_work::CommandMeta;
use crate::event_store::EventStore;
use crate::identity::{Actor, Principal};

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

/// What the resolvers read from the schema's data, one of each: the user schema and the
/// introspection schema share them.
#[derive(Clone)]
pub struct SchemaData {
    pub store: EventStore,
    pub live: crate::live::LiveBoards,
    pub estimator: crate::estimates::Estimator,
    /// Live Board documents kept between reads (see [`BoardCache`](crate::projections::read::BoardCache)).
    pub boards: crate::projections::read::BoardCache,
    pub access_log: crate::identity::AccessLog,
    /// How long a query with `minPosition` waits for the projector.
    pub read_wait: std::time::Duration,
}

pub fn build_schema(data: SchemaData, limits: &GraphqlLimits) -> CareboardSchema {
    schema_with_limits(data, limits, limits.max_depth, limits.max_complexity)
}

/// The deepest nesting an introspection-only request may use. The introspection
/// queries of GraphiQL, graphql-codegen, Postman and Apollo nest about 15 deep (type
/// references unwrap `ofType` many times), deeper than any user query needs.
pub const INTROSPECTION_MAX_DEPTH: usize = 24;
/// The complexity allowed to an introspection-only request (a full introspection query
/// scores a few hundred).
pub const INTROSPECTION_MAX_COMPLEXITY: usize = 5000;

/// The schema that serves introspection-only requests (every top-level field is
/// `__schema`, `__type` or `__typename`; see [`is_introspection_only`]), so GraphiQL's
/// docs and code generators are never blocked by the limits that guard user queries,
/// while bounded by their own limits. Requests sent to it run in introspection-only
/// mode: a data field there is refused, whatever the check upstream decided.
pub fn build_introspection_schema(data: SchemaData, limits: &GraphqlLimits) -> CareboardSchema {
    schema_with_limits(
        data,
        limits,
        limits.max_depth.max(INTROSPECTION_MAX_DEPTH),
        limits.max_complexity.max(INTROSPECTION_MAX_COMPLEXITY),
    )
}

fn schema_with_limits(
    data: SchemaData,
    limits: &GraphqlLimits,
    max_depth: usize,
    max_complexity: usize,
) -> CareboardSchema {
    let mut builder = scalars::describe(Schema::build(
        query::Query,
        mutation::Mutation,
        subscription::Subscription,
    ))
    .data(data.store)
    .data(data.live)
    .data(data.estimator)
    .data(data.boards)
    .data(data.access_log)
    .data(ReadWait(data.read_wait))
    // Every root field meets the permission matrix here, and every answer that
    // disclosed patient fields is recorded here (DESIGN §9).
    .extension(access::AccessEdge)
    .extension(field_order::FieldOrder)
    // Before async-graphql's own checks, which walk fragments spelled out.
    .extension(crate::limits::DocumentChecks {
        max_expanded_fields: crate::limits::max_expanded_fields(max_complexity),
        introspection_off: !limits.introspection,
        max_mutation_fields: limits.max_mutation_fields,
        max_depth,
        max_complexity,
    })
    .limit_depth(max_depth)
    .limit_complexity(max_complexity)
    .limit_recursive_depth(limits.max_recursion)
    .limit_directives(limits.max_directives)
    .extension(crate::limits::ConnectionCap(
        limits.max_connections_per_request,
    ));
    if !limits.introspection {
        // `DocumentChecks` refuses `__schema`/`__type` with an error first.
        builder = builder.disable_introspection();
    }
    builder.finish()
}

/// Whether the operation `operation_name` selects (of `document`) only introspection
/// fields at its top level (`__schema`, `__type`, `__typename`, through fragments too).
/// False when the document names no such operation or it is not a query.
pub fn is_introspection_only(document: &ExecutableDocument, operation_name: Option<&str>) -> bool {
    fn only_meta(document: &ExecutableDocument, set: &SelectionSet, fragments_seen: usize) -> bool {
        // Fragment cycles are invalid GraphQL; the bound keeps this check from looping.
        if fragments_seen > 64 {
            return false;
        }
        set.items.iter().all(|item| match &item.node {
            Selection::Field(field) => field.node.name.node.starts_with("__"),
            Selection::InlineFragment(fragment) => only_meta(
                document,
                &fragment.node.selection_set.node,
                fragments_seen + 1,
            ),
            Selection::FragmentSpread(spread) => document
                .fragments
                .get(&spread.node.fragment_name.node)
                .is_some_and(|f| {
                    only_meta(document, &f.node.selection_set.node, fragments_seen + 1)
                }),
        })
    }
    match operation(document, operation_name) {
        Some(op) => op.ty == OperationType::Query && only_meta(document, &op.selection_set.node, 0),
        None => false,
    }
}

pub use crate::limits::operation;

/// The most errors one answer carries. A document can be written to fail validation
/// once per repeated part (30,000 duplicate variables made a 7.5 MB answer), and an
/// answer a client does not read stays in the server's memory.
pub const MAX_ERRORS: usize = 20;

/// Settles an answer's errors before it is sent: at most [`MAX_ERRORS`] (the last says
/// how many more there were, with the code of the first it stands for), and each with
/// a code (errors raised before any resolver ran, from parsing, validation, limits or
/// input coercion, carry none: they are all bad input).
pub fn settle_errors(response: &mut async_graphql::Response) {
    if response.errors.len() > MAX_ERRORS {
        let kept = MAX_ERRORS - 1;
        let more = response.errors.len() - kept;
        let mut summary = async_graphql::ServerError::new(
            format!("and {more} more errors like these (an answer carries at most {MAX_ERRORS})"),
            None,
        );
        summary.extensions = response.errors[kept].extensions.take();
        response.errors.truncate(kept);
        response.errors.push(summary);
    }
    for error in &mut response.errors {
        let extensions = error.extensions.get_or_insert_with(Default::default);
        if extensions.get("code").is_none() {
            extensions.set("code", crate::error::ErrorCode::Validation.as_str());
        }
    }
}

/// Whether `response` is a request error: nothing executed (parse, validation,
/// variables, a limit or the rate refused it), so it has no data and no error has a
/// path (a field error has one).
pub fn request_failed(response: &async_graphql::Response) -> bool {
    response.data == async_graphql::Value::Null
        && !response.errors.is_empty()
        && response.errors.iter().all(|e| e.path.is_empty())
}

/// The schema's SDL, as committed in `schema.graphql` (with the scalars' `@specifiedBy`).
pub fn sdl() -> String {
    scalars::describe(Schema::build(
        query::Query,
        mutation::Mutation,
        subscription::Subscription,
    ))
    .finish()
    .sdl_with_options(async_graphql::SDLExportOptions::new().include_specified_by())
}

pub(crate) fn store<'a>(ctx: &Context<'a>) -> &'a EventStore {
    ctx.data_unchecked::<EventStore>()
}

pub(crate) fn boards<'a>(ctx: &Context<'a>) -> &'a crate::projections::read::BoardCache {
    ctx.data_unchecked::<crate::projections::read::BoardCache>()
}

pub(crate) fn estimator<'a>(ctx: &Context<'a>) -> &'a crate::estimates::Estimator {
    ctx.data_unchecked::<crate::estimates::Estimator>()
}

/// The command metadata for a mutation: who, which request, which operation. The actor
/// is the verified principal when the request carried one; otherwise the unverified name
/// the request gave (authentication off).
pub(crate) fn command_meta(ctx: &Context<'_>, operation: &'static str) -> CommandMeta {
    let mut meta = CommandMeta::new(operation);
    if let Some(request) = ctx.data_opt::<RequestContext>() {
        meta.actor = Actor::anonymous(request.actor.clone());
        meta.correlation_id = request.correlation_id.clone();
        meta.operation_name = request.operation_name.clone();
    }
    if let Some(principal) = ctx.data_opt::<Principal>() {
        meta.actor = Actor::Principal(principal.clone());
    }
    meta
}
