//! Guards that keep any one request from taking the service down: nesting checked
//! before the recursive parser sees a document, a cap on the pool connections one
//! request may hold, per-client rate limits, and security headers on HTML pages.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextPrepareRequest, NextResolve, NextValidation,
    ResolveInfo,
};
use async_graphql::{ServerResult, ValidationResult, Value};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use serde_json::json;
use tokio::sync::Semaphore;

/// Refuses a document whose brackets (`{`, `[`, `(`) nest deeper than `max`, without
/// parsing it: async-graphql's parser recurses once per level, and a few kilobytes of
/// `[[[[…` overflow a thread's stack. Strings, block strings and comments are skipped.
pub fn check_document_nesting(query: &str, max: usize) -> Result<(), String> {
    let bytes = query.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'#' => {
                while i < bytes.len() && bytes[i] != b'\n' && bytes[i] != b'\r' {
                    i += 1;
                }
            }
            b'"' if bytes[i..].starts_with(b"\"\"\"") => {
                i += 3;
                while i < bytes.len() && !bytes[i..].starts_with(b"\"\"\"") {
                    // `\"""` is an escaped triple quote inside a block string.
                    i += if bytes[i..].starts_with(b"\\\"\"\"") {
                        4
                    } else {
                        1
                    };
                }
                i += 2;
            }
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' && bytes[i] != b'\n' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'{' | b'[' | b'(' => {
                depth += 1;
                if depth > max {
                    return Err(too_deep("the document", max));
                }
            }
            b'}' | b']' | b')' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

/// Refuses variables whose lists and objects nest deeper than `max` (coercing and
/// dropping them recurses too).
pub fn check_variables_nesting(
    variables: &async_graphql::Variables,
    max: usize,
) -> Result<(), String> {
    let mut stack: Vec<(&Value, usize)> = variables.values().map(|v| (v, 1)).collect();
    while let Some((value, depth)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match value {
            Value::List(items) => Box::new(items.iter()),
            Value::Object(fields) => Box::new(fields.values()),
            _ => continue,
        };
        if depth > max {
            return Err(too_deep("the variables", max));
        }
        stack.extend(children.map(|c| (c, depth + 1)));
    }
    Ok(())
}

/// Both checks, for a request about to be executed.
pub fn check_request(request: &async_graphql::Request, max: usize) -> Result<(), String> {
    check_document_nesting(&request.query, max)?;
    check_variables_nesting(&request.variables, max)
}

fn too_deep(what: &str, max: usize) -> String {
    format!("{what} nests deeper than {max} levels")
}

/// Fragment spreads followed deeper than this are refused: no real document chains
/// that many, and the recursion limit refuses far fewer anyway; the bound keeps
/// [`check_fragment_expansion`]'s own recursion shallow.
const MAX_FRAGMENT_CHAIN: usize = 128;

/// Refuses a document that, with its fragments spelled out where they are spread,
/// selects more than `max` fields. A few hundred bytes of fragments that each spread
/// the one before four times spell out to 4^30 fields, and the checks that run before
/// any limit could refuse them (the recursion depth, the depth and the complexity, and
/// the introspection-only test) all walk them spelled out, synchronously: one such
/// request held a worker thread for good, out of reach of the request timeout. This
/// counts each fragment once (memoised), so it costs the document's size.
pub fn check_fragment_expansion(
    document: &async_graphql::parser::types::ExecutableDocument,
    max: usize,
) -> Result<(), String> {
    use async_graphql::parser::types::{Selection, SelectionSet};

    struct Count<'a> {
        document: &'a async_graphql::parser::types::ExecutableDocument,
        /// Each fragment's spelled-out size, once counted (`None` while it is being
        /// counted: a cycle, which validation refuses; it counts nothing here).
        fragments: HashMap<&'a str, Option<usize>>,
    }

    impl<'a> Count<'a> {
        fn set(&mut self, set: &'a SelectionSet, chain: usize) -> Result<usize, ()> {
            if chain > MAX_FRAGMENT_CHAIN {
                return Err(());
            }
            let mut total = 0usize;
            for item in &set.items {
                let size = match &item.node {
                    Selection::Field(field) => {
                        1 + self.set(&field.node.selection_set.node, chain)?
                    }
                    Selection::InlineFragment(fragment) => {
                        self.set(&fragment.node.selection_set.node, chain)?
                    }
                    Selection::FragmentSpread(spread) => {
                        let name = spread.node.fragment_name.node.as_str();
                        match self.fragments.get(name) {
                            Some(Some(size)) => *size,
                            Some(None) => 0,
                            None => match self.document.fragments.get(name) {
                                Some(fragment) => {
                                    self.fragments.insert(name, None);
                                    let size =
                                        self.set(&fragment.node.selection_set.node, chain + 1)?;
                                    self.fragments.insert(name, Some(size));
                                    size
                                }
                                // Unknown: validation names it.
                                None => 0,
                            },
                        }
                    }
                };
                total = total.saturating_add(size);
            }
            Ok(total)
        }
    }

    let mut count = Count {
        document,
        fragments: HashMap::new(),
    };
    let too_long = || {
        format!(
            "the document's fragments spread each other more than {MAX_FRAGMENT_CHAIN} levels deep"
        )
    };
    let mut total = 0usize;
    for set in operation_sets(document) {
        let size = count.set(set, 0).map_err(|()| too_long())?;
        total = total.saturating_add(size);
    }
    // Fragments no operation spreads are walked by validation too.
    let names: Vec<&str> = document.fragments.keys().map(|n| n.as_str()).collect();
    for name in names {
        if count.fragments.contains_key(name) {
            continue;
        }
        let fragment = &document.fragments[name];
        count.fragments.insert(name, None);
        let size = count
            .set(&fragment.node.selection_set.node, 1)
            .map_err(|()| too_long())?;
        count.fragments.insert(name, Some(size));
        total = total.saturating_add(size);
    }
    if total > max {
        return Err(format!(
            "the document selects more than {max} fields with its fragments spelled out: select less, or spread fragments fewer times"
        ));
    }
    Ok(())
}

/// The root selection set of each operation of `document`.
fn operation_sets(
    document: &async_graphql::parser::types::ExecutableDocument,
) -> Vec<&async_graphql::parser::types::SelectionSet> {
    use async_graphql::parser::types::DocumentOperations;
    match &document.operations {
        DocumentOperations::Single(op) => vec![&op.node.selection_set.node],
        DocumentOperations::Multiple(ops) => {
            ops.values().map(|op| &op.node.selection_set.node).collect()
        }
    }
}

/// The most fields a document may select with its fragments spelled out, for a schema
/// whose complexity limit is `max_complexity`: well above what that limit lets a
/// document do, so only documents no limit would let run are refused here.
pub fn max_expanded_fields(max_complexity: usize) -> usize {
    max_complexity.saturating_mul(4).max(20_000)
}

/// Checks every request a schema runs (over HTTP, GET and POST, and both websocket
/// protocols alike) before async-graphql's own checks walk the document:
/// [`check_fragment_expansion`] with `max_expanded_fields`, and, with `introspection_off`,
/// a document that selects `__schema` or `__type` is refused with a VALIDATION error and
/// no data. async-graphql's own switch answers such a document
/// `{"data":{"__schema":null}}` with no error, which a client cannot tell from an empty
/// schema. Then a mutation's fields are counted and spent (`max_mutation_fields`).
#[derive(Clone, Copy)]
pub struct DocumentChecks {
    pub max_expanded_fields: usize,
    pub introspection_off: bool,
    /// Most root fields of a mutation operation; each after the first also spends one
    /// unit of the caller's rate (see [`DocumentChecks::spend_mutations`]).
    pub max_mutation_fields: usize,
    /// The schema's depth and cost limits, named when a document passes them
    /// (async-graphql's own words, "Query is too complex.", name neither).
    pub max_depth: usize,
    pub max_complexity: usize,
}

impl ExtensionFactory for DocumentChecks {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(*self)
    }
}

#[async_trait::async_trait]
impl Extension for DocumentChecks {
    async fn prepare_request(
        &self,
        ctx: &ExtensionContext<'_>,
        mut request: async_graphql::Request,
        next: NextPrepareRequest<'_>,
    ) -> ServerResult<async_graphql::Request> {
        let introspection_off = self.introspection_off && request.query.contains("__");
        // Parsed once: the schema runs the document parsed here.
        let document = request.parsed_query().map_err(readable_parse_error)?;
        check_fragment_expansion(document, self.max_expanded_fields)
            .map_err(|message| async_graphql::ServerError::new(message, None))?;
        if introspection_off && selects_introspection(document) {
            return Err(validation_error(
                "introspection is switched off on this server: `__schema` and `__type` are refused (`__typename` answers)".into(),
            ));
        }
        refuse_null_for_non_null_variables(&mut request)?;
        self.spend_mutations(ctx, &mut request)?;
        next.run(ctx, request).await
    }

    async fn validation(
        &self,
        ctx: &ExtensionContext<'_>,
        next: NextValidation<'_>,
    ) -> Result<ValidationResult, Vec<async_graphql::ServerError>> {
        next.run(ctx).await.map_err(|errors| {
            errors
                .into_iter()
                .map(|error| match error.message.as_str() {
                    "Query is too complex." => validation_error(format!(
                        "the query is too complex: its cost is over this server's limit of {} \
                         (a field costs 1, a list its `first` or default page times its \
                         items; ask for fewer items or fields)",
                        self.max_complexity
                    )),
                    "Query is nested too deep." => validation_error(format!(
                        "the query is nested too deep: this server answers at most {} \
                         levels of selections",
                        self.max_depth
                    )),
                    _ => error,
                })
                .collect()
        })
    }
}

/// Refuses a `null` given for a variable declared non-null (`$t: DateTime!`), as the
/// GraphQL spec's variable coercion does: async-graphql would pass it on to a nullable
/// argument, and `board(asOf: $t)` would answer the Board as it is now instead of
/// saying that the time was missing.
fn refuse_null_for_non_null_variables(request: &mut async_graphql::Request) -> ServerResult<()> {
    let nulls: Vec<async_graphql::Name> = request
        .variables
        .iter()
        .filter(|(_, value)| matches!(value, async_graphql::Value::Null))
        .map(|(name, _)| name.clone())
        .collect();
    if nulls.is_empty() {
        return Ok(());
    }
    let operation_name = request.operation_name.clone();
    let document = request.parsed_query()?;
    let Some(op) = operation(document, operation_name.as_deref()) else {
        return Ok(());
    };
    match op
        .variable_definitions
        .iter()
        .find(|d| !d.node.var_type.node.nullable && nulls.contains(&d.node.name.node))
    {
        Some(d) => Err(validation_error(format!(
            "variable ${} is declared {} and may not be null",
            d.node.name.node, d.node.var_type.node
        ))),
        None => Ok(()),
    }
}

impl DocumentChecks {
    /// A mutation operation holds at most `max_mutation_fields` root fields (aliases and
    /// fragments counted), and each field after the first spends one more unit of the
    /// caller's rate ([`RateCharge`] in the request's data; the request itself spent
    /// the first). Over either, the request is refused before any field runs.
    fn spend_mutations(
        &self,
        ctx: &ExtensionContext<'_>,
        request: &mut async_graphql::Request,
    ) -> ServerResult<()> {
        if !request.query.contains("mutation") {
            // No mutation operation without the keyword.
            return Ok(());
        }
        let operation_name = request.operation_name.clone();
        let document = request.parsed_query()?;
        let Some(fields) = operation(document, operation_name.as_deref())
            .filter(|op| op.ty == async_graphql::parser::types::OperationType::Mutation)
            .map(|op| root_fields(document, &op.selection_set.node))
        else {
            return Ok(());
        };
        if fields > self.max_mutation_fields {
            return Err(validation_error(format!(
                "a request may run at most {} mutations (this one has {fields}); send the rest in further requests",
                self.max_mutation_fields
            )));
        }
        // A request's own data is not the context's until it runs; a socket's session
        // data is.
        let charge = request
            .data
            .get(&std::any::TypeId::of::<RateCharge>())
            .and_then(|d| d.downcast_ref::<RateCharge>())
            .or_else(|| ctx.data_opt::<RateCharge>());
        match (charge, fields.checked_sub(1)) {
            (Some(charge), Some(more)) => charge.spend(
                extra_units(more),
                &format!("a request of {fields} mutations"),
            ),
            _ => Ok(()),
        }
    }
}

/// Units of rate for `more` fields: saturated, never truncated (a truncated count
/// would let a huge request spend almost nothing where the field cap is raised).
fn extra_units(more: usize) -> u32 {
    u32::try_from(more).unwrap_or(u32::MAX)
}

/// A parse error said in one line: where, and what the parser expected there (its own
/// message draws the document's line with a caret, over several lines).
fn readable_parse_error(error: async_graphql::ServerError) -> async_graphql::ServerError {
    let Some((_, expected)) = error.message.rsplit_once("\n  = ") else {
        return error;
    };
    let at = error
        .locations
        .first()
        .map(|p| format!(" at line {}, column {}", p.line, p.column))
        .unwrap_or_default();
    let mut readable = validation_error(format!(
        "the document does not parse{at}: {}",
        expected.trim()
    ));
    readable.locations = error.locations;
    readable
}

fn validation_error(message: String) -> async_graphql::ServerError {
    let mut error = async_graphql::ServerError::new(message, None);
    error
        .extensions
        .get_or_insert_with(Default::default)
        .set("code", crate::error::ErrorCode::Validation.as_str());
    error
}

/// Whether `document` selects `__schema` or `__type` anywhere (in any operation or
/// fragment, at any depth). `__typename` is not introspection of the schema.
pub fn selects_introspection(document: &async_graphql::parser::types::ExecutableDocument) -> bool {
    use async_graphql::parser::types::{Selection, SelectionSet};
    let mut sets: Vec<&SelectionSet> = operation_sets(document);
    sets.extend(
        document
            .fragments
            .values()
            .map(|f| &f.node.selection_set.node),
    );
    // A stack, not recursion: each selection is visited once, however deep.
    while let Some(set) = sets.pop() {
        for item in &set.items {
            match &item.node {
                Selection::Field(field) => {
                    if matches!(field.node.name.node.as_str(), "__schema" | "__type") {
                        return true;
                    }
                    sets.push(&field.node.selection_set.node);
                }
                Selection::InlineFragment(fragment) => sets.push(&fragment.node.selection_set.node),
                // Fragments are walked above, each once.
                Selection::FragmentSpread(_) => {}
            }
        }
    }
    false
}

/// Caps the root fields of one request that run at once (async-graphql resolves the
/// root fields of a query concurrently, so 999 aliases would otherwise take 999 pool
/// connections). Each root field holds a permit while it and its children resolve.
pub struct ConnectionCap(pub usize);

impl ExtensionFactory for ConnectionCap {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(ConnectionCapExtension(Semaphore::new(self.0.max(1))))
    }
}

struct ConnectionCapExtension(Semaphore);

#[async_trait::async_trait]
impl Extension for ConnectionCapExtension {
    async fn resolve(
        &self,
        ctx: &ExtensionContext<'_>,
        info: ResolveInfo<'_>,
        next: NextResolve<'_>,
    ) -> ServerResult<Option<Value>> {
        if info.path_node.parent.is_some() {
            return next.run(ctx, info).await;
        }
        let _permit = self.0.acquire().await;
        next.run(ctx, info).await
    }
}

/// Whose requests a rate limit counts together.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Client {
    /// A verified token's subject: one person, whichever address they come from, and
    /// apart from others behind the same address (a clinic's NAT, a proxy).
    Subject(String),
    /// Requests without a verified token, by address.
    Address(IpAddr),
}

/// Requests per client (verified subject, else address), as a token bucket:
/// `per_second` sustained, `burst` at once.
#[derive(Clone)]
pub struct RateLimiter {
    limiter: Option<Arc<DefaultKeyedRateLimiter<Client>>>,
}

impl RateLimiter {
    pub fn new(per_second: u32, burst: u32) -> Self {
        let limiter = NonZeroU32::new(per_second).map(|rate| {
            let burst = NonZeroU32::new(burst.max(per_second)).unwrap_or(rate);
            let limiter = Arc::new(DefaultKeyedRateLimiter::keyed(
                Quota::per_second(rate).allow_burst(burst),
            ));
            // Forget clients whose buckets are full again, so memory follows the
            // clients of the last minute, not every address ever seen.
            let weak = Arc::downgrade(&limiter);
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
                    loop {
                        tick.tick().await;
                        let Some(limiter) = weak.upgrade() else { break };
                        limiter.retain_recent();
                        limiter.shrink_to_fit();
                    }
                });
            }
            limiter
        });
        Self { limiter }
    }

    /// `Err(seconds to wait)` when `client` is over its rate.
    pub fn check(&self, client: Client) -> Result<(), u64> {
        self.spend(&client, 1).map_err(|refusal| match refusal {
            Overspent::Wait(wait) => wait,
            // One unit always fits a burst (at least one).
            Overspent::Never => 1,
        })
    }

    /// Spends `units` of `client`'s rate at once, or none of them.
    pub fn spend(&self, client: &Client, units: u32) -> Result<(), Overspent> {
        let (Some(limiter), Some(units)) = (&self.limiter, NonZeroU32::new(units)) else {
            return Ok(());
        };
        match limiter.check_key_n(client, units) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                Err(Overspent::Wait(
                    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1),
                ))
            }
            Err(_) => Err(Overspent::Never),
        }
    }
}

/// Why [`RateLimiter::spend`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overspent {
    /// Over the rate now: enough is earned back in this many seconds.
    Wait(u64),
    /// More than the caller's whole burst: never at once.
    Never,
}

/// A caller's rate as a request's data: what it spends beyond the request itself
/// (each mutation field after the first, see [`DocumentChecks`]; each operation sent
/// over a websocket).
#[derive(Clone)]
pub struct RateCharge {
    pub limiter: RateLimiter,
    pub client: Client,
}

impl RateCharge {
    /// The caller a request is counted against: its verified subject, else its address
    /// (`ip:port` as the server was given it).
    pub fn of(
        limiter: &RateLimiter,
        principal: Option<&crate::identity::Principal>,
        addr: Option<&str>,
    ) -> Option<Self> {
        let client = match principal {
            Some(p) => Client::Subject(p.subject.clone()),
            None => Client::Address(addr?.parse::<SocketAddr>().ok()?.ip()),
        };
        Some(Self {
            limiter: limiter.clone(),
            client,
        })
    }

    /// Spends `units`; the GraphQL error (`RATE_LIMITED`, with `retryAfter` in seconds
    /// when waiting helps) when the caller has not that many left. `what` names what
    /// they are spent on.
    pub fn spend(&self, units: u32, what: &str) -> Result<(), async_graphql::ServerError> {
        let refusal = match self.limiter.spend(&self.client, units) {
            Ok(()) => return Ok(()),
            Err(refusal) => refusal,
        };
        let by = match self.client {
            Client::Subject(_) => "this caller",
            Client::Address(_) => "this address",
        };
        let (message, wait) = match refusal {
            Overspent::Wait(wait) => (
                format!("too many requests from {by}: {what}; retry in {wait} s"),
                Some(wait),
            ),
            Overspent::Never => (
                format!("{what}: more than {by} may send at once; send fewer at a time"),
                None,
            ),
        };
        let mut error = crate::error::ErrorCode::RateLimited.error(message);
        if let Some(wait) = wait {
            error
                .extensions
                .get_or_insert_with(Default::default)
                .set("retryAfter", wait);
        }
        Err(error)
    }
}

/// The fields an operation's root selection runs: each field, and each field of its
/// fragments (inline or spread) as many times as they are spread. Fragments deeper than
/// any valid document (cycles are invalid), or spread into more than 10,000 selections,
/// count as more than any limit.
fn root_fields(
    document: &async_graphql::parser::types::ExecutableDocument,
    set: &async_graphql::parser::types::SelectionSet,
) -> usize {
    use async_graphql::parser::types::Selection;
    let (mut count, mut visited) = (0usize, 0usize);
    let mut sets = vec![(set, 0usize)];
    while let Some((set, depth)) = sets.pop() {
        visited += 1;
        if depth > 64 || visited > 10_000 {
            return usize::MAX;
        }
        for item in &set.items {
            match &item.node {
                Selection::Field(_) => count = count.saturating_add(1),
                Selection::InlineFragment(f) => sets.push((&f.node.selection_set.node, depth + 1)),
                Selection::FragmentSpread(spread) => {
                    if let Some(f) = document.fragments.get(&spread.node.fragment_name.node) {
                        sets.push((&f.node.selection_set.node, depth + 1));
                    }
                }
            }
        }
    }
    count
}

/// The subscriptions each caller holds over all its websockets, up to a maximum
/// (`--max-subscriptions-per-caller`): the per-socket budget alone lets one token
/// open socket after socket, each subscription holding its group's newest frame.
pub struct SubscriptionSlots {
    max: usize,
    held: Mutex<HashMap<Arc<str>, usize>>,
}

/// One subscription's place among its caller's; given back when dropped.
pub struct SubscriptionSlot {
    slots: Arc<SubscriptionSlots>,
    caller: Arc<str>,
}

impl SubscriptionSlots {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(SubscriptionSlots {
            max,
            held: Mutex::new(HashMap::new()),
        })
    }

    /// A place for one more of `caller`'s subscriptions, if it has fewer than the
    /// maximum (0: no maximum).
    pub fn take(self: &Arc<Self>, caller: &Arc<str>) -> Option<SubscriptionSlot> {
        let mut held = self.held.lock().expect("subscription slots");
        let count = held.entry(caller.clone()).or_insert(0);
        if self.max > 0 && *count >= self.max {
            return None;
        }
        *count += 1;
        Some(SubscriptionSlot {
            slots: self.clone(),
            caller: caller.clone(),
        })
    }
}

impl Drop for SubscriptionSlot {
    fn drop(&mut self) {
        let mut held = self.slots.held.lock().expect("subscription slots");
        if let Some(count) = held.get_mut(&self.caller) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.caller);
            }
        }
    }
}

/// Middleware: 429 with `Retry-After` and a `RATE_LIMITED` GraphQL error when the
/// client (its verified subject, else its address) is over its rate. Runs after the
/// bearer token is verified ([`crate::identity::edge::credentials`]).
pub async fn rate_limit(
    State(limiter): State<RateLimiter>,
    request: Request,
    next: Next,
) -> Response {
    let subject = request
        .extensions()
        .get::<crate::identity::edge::Credentials>()
        .and_then(|c| c.subject())
        .map(|s| Client::Subject(s.to_string()));
    let client = subject.or_else(|| {
        request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| Client::Address(addr.ip()))
    });
    if let Some(client) = client {
        let by_subject = matches!(client, Client::Subject(_));
        if let Err(wait) = limiter.check(client) {
            let wait = wait.max(1);
            let body = json!({ "errors": [{
                "message": if by_subject {
                    format!("too many requests from this caller; retry in {wait} s")
                } else {
                    format!("too many requests from this address; retry in {wait} s")
                },
                "extensions": { "code": crate::error::ErrorCode::RateLimited }
            }] });
            let mut response = (StatusCode::TOO_MANY_REQUESTS, Json(body)).into_response();
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(wait));
            return response;
        }
    }
    next.run(request).await
}

/// Middleware: `nosniff` on every response; on HTML pages no framing and, unless the
/// page set its own, a policy that allows nothing but framing rules.
pub async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    let html = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/html"));
    if html {
        headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        headers.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
        if !headers.contains_key(header::CONTENT_SECURITY_POLICY) {
            headers.insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static("frame-ancestors 'none'"),
            );
        }
    }
    response
}

/// The Content-Security-Policy of a page of ours: scripts and styles from our own
/// origin (and an inline script only by its hash), same-origin requests; never framed.
pub fn page_policy(page: &str) -> String {
    use base64::Engine;
    use sha2::Digest;
    let mut hashes = String::new();
    let mut rest = page;
    while let Some(start) = rest.find("<script>") {
        let after = &rest[start + "<script>".len()..];
        let Some(end) = after.find("</script>") else {
            break;
        };
        let digest = sha2::Sha256::digest(&after.as_bytes()[..end]);
        hashes.push_str(&format!(
            " 'sha256-{}'",
            base64::engine::general_purpose::STANDARD.encode(digest)
        ));
        rest = &after[end..];
    }
    format!(
        "default-src 'self'; script-src 'self'{hashes}; style-src 'self'; \
         img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; \
         form-action 'self'; frame-ancestors 'none'"
    )
}

/// The operation a request runs: the named one, or the only one.
pub fn operation<'a>(
    document: &'a async_graphql::parser::types::ExecutableDocument,
    operation_name: Option<&str>,
) -> Option<&'a async_graphql::parser::types::OperationDefinition> {
    use async_graphql::parser::types::DocumentOperations;
    match (&document.operations, operation_name) {
        (DocumentOperations::Single(op), None) => Some(&op.node),
        (DocumentOperations::Single(_), Some(_)) => None,
        (DocumentOperations::Multiple(ops), Some(name)) => ops
            .iter()
            .find(|(n, _)| n.as_str() == name)
            .map(|(_, op)| &op.node),
        (DocumentOperations::Multiple(ops), None) if ops.len() == 1 => {
            ops.values().next().map(|op| &op.node)
        }
        (DocumentOperations::Multiple(_), None) => None,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn extra_mutation_units_saturate() {
        assert_eq!(super::extra_units(3), 3);
        assert_eq!(super::extra_units(u32::MAX as usize), u32::MAX);
        assert_eq!(super::extra_units(u32::MAX as usize + 2), u32::MAX);
        assert_eq!(super::extra_units(usize::MAX), u32::MAX);
    }

    use super::*;

    #[test]
    fn nesting_is_counted_outside_strings_and_comments() {
        assert!(check_document_nesting("{ a { b { c } } }", 3).is_ok());
        assert!(check_document_nesting("{ a { b { c { d } } } }", 3).is_err());
        let quoted = format!("{{ a(s: \"{}\") }}", "[".repeat(100));
        assert!(check_document_nesting(&quoted, 3).is_ok());
        let block = format!("{{ a(s: \"\"\"{}\\\"\"\"\"\"\") }}", "{".repeat(100));
        assert!(check_document_nesting(&block, 3).is_ok());
        let comment = format!("# {}\n{{ a }}", "(".repeat(100));
        assert!(check_document_nesting(&comment, 3).is_ok());
        let list = format!("{{ a(x: {}1{}) }}", "[".repeat(10), "]".repeat(10));
        assert!(check_document_nesting(&list, 8).is_err());
    }

    #[test]
    fn variables_nesting_is_counted() {
        let vars = |v: serde_json::Value| async_graphql::Variables::from_json(json!({ "v": v }));
        assert!(check_variables_nesting(&vars(json!([[1]])), 2).is_ok());
        assert!(check_variables_nesting(&vars(json!([[[1]]])), 2).is_err());
        assert!(check_variables_nesting(&vars(json!({"a": {"b": {"c": 1}}})), 2).is_err());
    }

    #[test]
    fn fragments_are_counted_spelled_out_once_each() {
        let parse = |q: &str| async_graphql::parser::parse_query(q).unwrap();
        let four = parse("{ ...A } fragment A on Q { ...B ...B } fragment B on Q { a b { c } }");
        // B is 3 fields (a, b, c); A spreads it twice.
        assert!(check_fragment_expansion(&four, 6).is_ok());
        assert!(check_fragment_expansion(&four, 5).is_err());
        let mut exploding = String::from("{ ...F40 } fragment F0 on Q { a }");
        for i in 1..=40 {
            let j = i - 1;
            exploding.push_str(&format!(
                " fragment F{i} on Q {{ ...F{j} ...F{j} ...F{j} }}"
            ));
        }
        let error = check_fragment_expansion(&parse(&exploding), 1_000_000).unwrap_err();
        assert!(error.contains("spelled out"), "{error}");
        // A cycle (validation refuses it) ends the count instead of looping.
        let cycle = parse("{ ...A } fragment A on Q { x ...B } fragment B on Q { y ...A }");
        assert!(check_fragment_expansion(&cycle, 10).is_ok());
        let mut chain = String::from("{ ...F0 }");
        for i in 0..1000 {
            chain.push_str(&format!(" fragment F{i} on Q {{ a ...F{} }}", i + 1));
        }
        assert!(check_fragment_expansion(&parse(&chain), usize::MAX).is_err());
    }

    #[test]
    fn introspection_is_found_through_fragments_but_typename_is_not_introspection() {
        let parse = |q: &str| async_graphql::parser::parse_query(q).unwrap();
        assert!(!selects_introspection(&parse(
            "{ __typename a { __typename } }"
        )));
        assert!(selects_introspection(&parse(
            "{ __schema { types { name } } }"
        )));
        assert!(selects_introspection(&parse(
            "{ a { ... on B { __type(name: \"C\") { name } } } }"
        )));
        assert!(selects_introspection(&parse(
            "query A { a } query B { ...F } fragment F on Q { __schema { queryType { name } } }"
        )));
    }

    #[test]
    fn a_page_policy_allows_exactly_its_own_scripts() {
        let policy = page_policy("<p><script>alert(1)</script><script>x()</script>");
        assert_eq!(policy.matches("'sha256-").count(), 2);
        assert!(!policy.contains("script-src 'self' 'unsafe-inline'"));
    }
}
