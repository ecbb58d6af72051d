//! Who may see what (DESIGN §9), from the outside: the real server with authentication
//! on, tokens per role from the test identity provider, every query field and subscription
//! × every role in and out of scope (generated from the matrix the server uses), masked
//! patient fields checked with a unique marker, and the access records reads leave.

use std::time::Duration;

use careboard::identity::matrix::{self, Operation, Rule};
use careboard::identity::Role;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{self, idp::Who, TestApp};

/// A marker no other text in the system contains: found anywhere in an answer means a
/// patient's data leaked.
const MARKER: &str = "Qx7Marker";

/// The real server with authentication on (the harness's identity provider), and
/// tokens for any role and scope.
struct AuthApp {
    app: TestApp,
}

impl AuthApp {
    async fn spawn() -> AuthApp {
        AuthApp {
            app: TestApp::spawn().await,
        }
    }

    fn token(&self, who: Who) -> String {
        self.app.token(who)
    }

    fn admin(&self) -> String {
        self.token(Who::admin())
    }

    async fn gql(&self, token: &str, query: &str, variables: Value) -> Value {
        self.app.gql_as(token, query, variables).await
    }

    async fn data(&self, token: &str, query: &str, variables: Value) -> Value {
        self.app.data_as(token, query, variables).await
    }

    /// Reads Board `id` as `token`, selecting `selection` (the `data` of the answer).
    async fn board(&self, token: &str, id: &str, selection: &str) -> Value {
        let query = format!("query($id: ID!) {{ board(id: $id) {{ {selection} }} }}");
        self.data(token, &query, json!({ "id": id })).await
    }

    async fn access_records(&self) -> Vec<Value> {
        sqlx::query_scalar::<_, Value>(
            "select jsonb_build_object('subject', subject, 'role', role, 'operation', operation, \
             'operationName', operation_name, 'clientAddr', client_addr, 'disclosed', disclosed) \
             from access_log order by seq",
        )
        .fetch_all(&self.app.pool)
        .await
        .unwrap()
    }

    /// Opens a websocket with `token` in the upgrade's `Authorization` header (and in
    /// `connection_init`) and starts one subscription.
    async fn open_subscription(&self, token: &str, query: &str, variables: Value) -> Sub {
        let (socket, _) = crate::helpers::ws_upgrade(&self.app.url("/graphql/ws"), Some(token))
            .await
            .expect("the websocket connects");
        let mut sub = Sub { socket };
        sub.send(json!({"type": "connection_init", "payload": {"authorization": format!("Bearer {token}")}}))
            .await;
        sub.send(json!({"id": "1", "type": "subscribe", "payload": {"query": query, "variables": variables}}))
            .await;
        sub
    }

    /// One subscription's messages: the first (`next`/`error`), and any more arriving
    /// within `wait` of the previous one, until it completes.
    async fn subscribe(
        &self,
        token: &str,
        query: &str,
        variables: Value,
        wait: Duration,
    ) -> Vec<Value> {
        let mut sub = self.open_subscription(token, query, variables).await;
        let mut messages = Vec::new();
        let mut limit = Duration::from_secs(10);
        while let Some(message) = sub.next(limit).await {
            limit = wait;
            if message["type"] == "complete" {
                break;
            }
            let done = message["type"] == "error" || message.get("close").is_some();
            messages.push(message);
            if done {
                break;
            }
        }
        sub.close().await;
        messages
    }
}

struct Sub {
    socket: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

impl Sub {
    async fn send(&mut self, message: Value) {
        self.socket
            .send(tokio_tungstenite::tungstenite::Message::Text(
                message.to_string().into(),
            ))
            .await
            .unwrap();
    }

    /// The next message other than acks and pings (`{"close": code}` for a close).
    async fn next(&mut self, timeout: Duration) -> Option<Value> {
        use tokio_tungstenite::tungstenite::Message;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let Ok(Some(Ok(frame))) = tokio::time::timeout_at(deadline, self.socket.next()).await
            else {
                return None;
            };
            match frame {
                Message::Text(text) => {
                    let v: Value = serde_json::from_str(&text).unwrap();
                    if matches!(
                        v["type"].as_str(),
                        Some("connection_ack" | "ping" | "pong" | "ka")
                    ) {
                        continue;
                    }
                    return Some(v);
                }
                Message::Close(frame) => {
                    return Some(json!({"close": frame.map(|f| u16::from(f.code))}))
                }
                _ => continue,
            }
        }
    }

    async fn close(mut self) {
        let _ = self.socket.close(None).await;
    }
}

/// The day every test works on: two Boards (one in the coordinator's scope, one not),
/// providers in every relation to them, appointments whose patient data carry MARKER.
struct Day {
    /// Pediatrics in Texas: the scoped coordinator's.
    board_in: String,
    /// Cardiology in California: nobody's but admins' and unlimited coordinators'.
    board_out: String,
    /// Joined `board_in`, assigned `assigned`.
    provider: String,
    shift: String,
    /// Joined `board_in`, assigned nothing.
    other_provider: String,
    other_shift: String,
    /// Joined `board_out`.
    out_shift: String,
    /// On `board_in`, scheduled with `provider`.
    assigned: String,
    /// On `board_in`, waiting.
    waiting: String,
    /// On `board_out`.
    appointment_out: String,
    /// On `board_in`, requested by [`PATIENT`] for themselves.
    own: String,
    position: i64,
}

const OPEN: &str =
    "mutation($i: OpenBoardInput!) { openBoard(input: $i) { board { id } position } }";
const REGISTER: &str =
    "mutation($i: RegisterProviderInput!) { registerProvider(input: $i) { provider { id } } }";
const JOIN: &str = "mutation($i: JoinBoardInput!) { joinBoard(input: $i) { shift { id } } }";
const REQUEST: &str = "mutation($i: RequestAppointmentInput!) { requestAppointment(input: $i) { appointment { id } position } }";
const SCHEDULE: &str =
    "mutation($i: ScheduleAppointmentInput!) { scheduleAppointment(input: $i) { position } }";

async fn seed(app: &AuthApp) -> Day {
    let admin = app.admin();
    let today = chrono::Utc::now().date_naive().to_string();
    let open = |specialty: &'static str, region: &'static str| {
        let admin = admin.clone();
        let today = today.clone();
        async move {
            app.data(
                &admin,
                OPEN,
                json!({"i": {"name": format!("{specialty} {region}"), "specialty": specialty, "region": region, "date": today}}),
            )
            .await["openBoard"]["board"]["id"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    let board_in = open("pediatrics", "TX").await;
    let board_out = open("cardiology", "CA").await;
    let register = |specialty: &'static str, region: &'static str| {
        let admin = admin.clone();
        async move {
            app.data(
                &admin,
                REGISTER,
                json!({"i": {"name": "Dr. Test", "specialties": [specialty], "licensedRegions": [region]}}),
            )
            .await["registerProvider"]["provider"]["id"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    let provider = register("pediatrics", "TX").await;
    let other_provider = register("pediatrics", "TX").await;
    let out_provider = register("cardiology", "CA").await;
    let join = |board: String, provider: String| {
        let admin = admin.clone();
        async move {
            app.data(
                &admin,
                JOIN,
                json!({"i": {"boardId": board, "providerId": provider}}),
            )
            .await["joinBoard"]["shift"]["id"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    let shift = join(board_in.clone(), provider.clone()).await;
    let other_shift = join(board_in.clone(), other_provider.clone()).await;
    let out_shift = join(board_out.clone(), out_provider).await;
    let request = |board: String, specialty: &'static str, region: &'static str, n: u32| {
        let admin = admin.clone();
        async move {
            let d = app
                .data(
                    &admin,
                    REQUEST,
                    json!({"i": {"boardId": board, "patientName": format!("Pat {MARKER}{n}"),
                        "specialty": specialty, "region": region, "reason": format!("pain {MARKER}{n}")}}),
                )
                .await;
            (
                d["requestAppointment"]["appointment"]["id"]
                    .as_str()
                    .unwrap()
                    .to_string(),
                d["requestAppointment"]["position"].as_i64().unwrap(),
            )
        }
    };
    let (assigned, _) = request(board_in.clone(), "pediatrics", "TX", 1).await;
    let (waiting, _) = request(board_in.clone(), "pediatrics", "TX", 2).await;
    let (appointment_out, _) = request(board_out.clone(), "cardiology", "CA", 3).await;
    // The patient asks for themselves: their id comes from their token.
    let own = app
        .data(
            &app.token(Who::patient(PATIENT)),
            REQUEST,
            json!({"i": {"boardId": board_in, "patientName": format!("Pat {MARKER}4"),
                "specialty": "pediatrics", "region": "TX", "reason": format!("pain {MARKER}4")}}),
        )
        .await["requestAppointment"]["appointment"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let scheduled = app
        .data(
            &admin,
            SCHEDULE,
            json!({"i": {"appointmentId": assigned, "shiftId": shift}}),
        )
        .await;
    let position = scheduled["scheduleAppointment"]["position"]
        .as_i64()
        .unwrap();
    // Every read below sees the whole day.
    for board in [&board_in, &board_out] {
        app.data(
            &admin,
            "query($id: ID!, $p: Int) { board(id: $id, minPosition: $p) { id } }",
            json!({"id": board, "p": position}),
        )
        .await;
    }
    Day {
        board_in,
        board_out,
        provider,
        shift,
        other_provider,
        other_shift,
        out_shift,
        assigned,
        waiting,
        appointment_out,
        own,
        position,
    }
}

/// The patient whose token the matrix test uses.
const PATIENT: &str = "patient-own";

/// One principal per role: the coordinator works pediatrics in Texas, the provider is
/// `day.provider`, the patient is [`PATIENT`].
fn principal(role: Role, day: &Day) -> Who {
    match role {
        Role::Provider => Who::provider(&day.provider),
        Role::Coordinator => Who::coordinator()
            .regions(["TX"])
            .specialties(["pediatrics"]),
        Role::Patient => Who::patient(PATIENT),
        Role::Admin => Who::admin(),
    }
}

/// How an operation is asked, and of what: `target(in_scope)` names something the
/// role's scoped rule covers (`true`) or does not (`false`).
struct Ask {
    query: &'static str,
    subscription: bool,
}

fn ask(op: Operation) -> Option<Ask> {
    use Operation as Op;
    let query = match op {
        Op::Board => "query($id: ID!) { board(id: $id) { id appointments { id patientName } } }",
        Op::BoardAsOf => "query($id: ID!, $t: DateTime!) { board(id: $id, asOf: $t) { id } }",
        Op::Boards => "{ boards { edges { node { id } } } }",
        Op::BoardDates => "{ boardDates }",
        Op::BoardHistory => "query($id: ID!, $from: DateTime!, $t: DateTime!) { boardHistory(boardId: $id, from: $from, to: $t) { version } }",
        Op::BoardChanged => "subscription($id: ID!) { boardChanged(boardId: $id) { id version } }",
        Op::Appointment => "query($id: ID!) { appointment(id: $id) { id status } }",
        Op::AppointmentChanged => "subscription($id: ID!) { appointmentChanged(appointmentId: $id) { id status } }",
        Op::ProviderShift => "query($id: ID!) { providerShift(id: $id) { id } }",
        Op::Provider => "query($id: ID!) { provider(id: $id) { id } }",
        Op::Providers => "{ providers { edges { node { id } } } }",
        Op::Events => "query($id: ID) { events(boardId: $id) { edges { node { position } } } }",
        Op::BoardEvents => "subscription($id: ID!) { boardEvents(boardId: $id) { position } }",
        Op::WaitTimeEstimate => "query($id: ID!) { waitTimeEstimate(boardId: $id, specialty: \"pediatrics\") { queueAhead } }",
        Op::Projections => "{ projections { name } }",
        Op::AccessLog => "{ accessLog { edges { node { seq } } } }",
        Op::MyAppointments => "{ myAppointments { id } }",
        Op::MyAccessLog => "{ myAccessLog { edges { node { seq } } } }",
        // Mutations: see `mutations_a_role_may_never_run_are_refused_and_change_nothing`.
        _ => return None,
    };
    Some(Ask {
        query,
        subscription: query.starts_with("subscription"),
    })
}

/// The target of `op` for `role`: inside the role's scope or outside it.
fn target(op: Operation, role: Role, day: &Day, inside: bool) -> Value {
    use Operation as Op;
    let pick = |a: &String, b: &String| if inside { a.clone() } else { b.clone() };
    let now = chrono::Utc::now();
    match op {
        Op::Board | Op::BoardChanged | Op::BoardEvents | Op::Events | Op::WaitTimeEstimate => {
            json!({"id": pick(&day.board_in, &day.board_out)})
        }
        Op::BoardAsOf => json!({"id": pick(&day.board_in, &day.board_out), "t": now}),
        Op::BoardHistory => json!({
            "id": pick(&day.board_in, &day.board_out),
            "from": now - chrono::Duration::hours(1),
            "t": now,
        }),
        Op::Appointment | Op::AppointmentChanged => match role {
            Role::Patient => json!({"id": pick(&day.own, &day.waiting)}),
            Role::Provider => json!({"id": pick(&day.assigned, &day.waiting)}),
            _ => json!({"id": pick(&day.assigned, &day.appointment_out)}),
        },
        Op::ProviderShift => match role {
            Role::Provider => json!({"id": pick(&day.shift, &day.other_shift)}),
            _ => json!({"id": pick(&day.shift, &day.out_shift)}),
        },
        Op::Provider => json!({"id": day.other_provider}),
        _ => json!({}),
    }
}

/// What answering `ask` with `variables` as `token` came to: allowed, or FORBIDDEN.
async fn outcome(app: &AuthApp, token: &str, ask: &Ask, variables: Value) -> Result<Value, String> {
    let answer = if ask.subscription {
        let messages = app
            .subscribe(token, ask.query, variables, Duration::from_millis(50))
            .await;
        let first = messages.first().cloned().unwrap_or(json!({"none": true}));
        match first["type"].as_str() {
            // A refused subscription answers one result with the errors, then completes.
            Some("next") => first["payload"].clone(),
            Some("error") => json!({"errors": first["payload"]}),
            _ => panic!("unexpected subscription answer {first}"),
        }
    } else {
        app.gql(token, ask.query, variables).await
    };
    match answer["errors"][0]["extensions"]["code"].as_str() {
        None => {
            assert!(answer["errors"].is_null(), "{answer:#}");
            Ok(answer["data"].clone())
        }
        Some("FORBIDDEN") => {
            // A field error, as the GraphQL spec has it: where in the document, and
            // which field of the answer.
            let error = &answer["errors"][0];
            assert!(
                error["path"].as_array().is_some_and(|p| !p.is_empty()),
                "{answer:#}"
            );
            let at = &error["locations"][0];
            assert!(
                at["line"].as_u64() >= Some(1) && at["column"].as_u64() >= Some(1),
                "{answer:#}"
            );
            Err(error["message"].as_str().unwrap().to_string())
        }
        Some(other) => panic!("{other}: {answer:#}"),
    }
}

#[tokio::test]
async fn every_query_field_and_subscription_follows_the_matrix_for_every_role_in_and_out_of_scope()
{
    let app = AuthApp::spawn().await;
    let day = seed(&app).await;
    let mut checked = 0;
    for op in Operation::ALL {
        let Some(ask) = ask(*op) else { continue };
        for role in Role::ALL {
            let token = app.token(principal(role, &day));
            let rule = matrix::rule(*op, role);
            for inside in [true, false] {
                let result = outcome(&app, &token, &ask, target(*op, role, &day, inside)).await;
                let expected_allowed = match rule {
                    Rule::Allowed => true,
                    Rule::Denied => false,
                    Rule::Scoped(_) => inside,
                };
                let case = format!(
                    "{role} {op} ({})",
                    if inside { "in scope" } else { "out of scope" }
                );
                match (&result, expected_allowed) {
                    (Ok(_), true) | (Err(_), false) => {}
                    _ => {
                        // A list is filtered rather than refused.
                        if !(*op == Operation::Boards && result.is_ok()) {
                            panic!("{case}: expected allowed={expected_allowed}, got {result:?}");
                        }
                    }
                }
                if let Err(message) = &result {
                    assert!(message.contains(role.as_str()), "{case}: {message}");
                    assert!(!message.contains(MARKER), "{case}: {message}");
                }
                if *op == Operation::Boards {
                    let ids: Vec<String> = result
                        .as_ref()
                        .map(|d| {
                            d["boards"]["edges"]
                                .as_array()
                                .unwrap()
                                .iter()
                                .map(|e| e["node"]["id"].as_str().unwrap().to_string())
                                .collect()
                        })
                        .unwrap_or_default();
                    let expected: Vec<String> = match role {
                        Role::Patient => vec![],
                        Role::Admin => vec![day.board_in.clone(), day.board_out.clone()],
                        _ => vec![day.board_in.clone()],
                    };
                    let mut ids = ids;
                    ids.sort();
                    let mut expected = expected;
                    expected.sort();
                    assert_eq!(ids, expected, "{case}: only the Boards in scope are listed");
                }
                checked += 1;
            }
        }
    }
    assert!(checked >= 140, "{checked} cases");
}

/// A mutation's document and input for `role`, on a target inside the role's scope
/// (`inside`) or outside it.
fn mutation_for(op: Operation, role: Role, day: &Day, inside: bool) -> (String, Value) {
    use Operation as Op;
    let pick = |a: &String, b: &String| if inside { a.clone() } else { b.clone() };
    let today = chrono::Utc::now().date_naive().to_string();
    let (input, vars) = match op {
        Op::OpenBoard => {
            let (specialty, region) = if inside {
                ("pediatrics", "TX")
            } else {
                ("cardiology", "CA")
            };
            (
                "OpenBoardInput",
                json!({"name": "X", "specialty": specialty, "region": region, "date": today}),
            )
        }
        Op::CloseBoard => (
            "CloseBoardInput",
            json!({"boardId": pick(&day.board_in, &day.board_out)}),
        ),
        Op::RegisterProvider => (
            "RegisterProviderInput",
            json!({"name": "X", "specialties": ["pediatrics"], "licensedRegions": ["TX"]}),
        ),
        Op::JoinBoard => match role {
            Role::Provider => (
                "JoinBoardInput",
                json!({"boardId": day.board_in, "providerId": pick(&day.provider, &day.other_provider)}),
            ),
            _ => (
                "JoinBoardInput",
                json!({"boardId": pick(&day.board_in, &day.board_out), "providerId": day.other_provider}),
            ),
        },
        Op::MarkProviderReady | Op::PauseProvider | Op::CompleteCharting | Op::SignOffProvider => {
            let shift = match role {
                Role::Provider => pick(&day.shift, &day.other_shift),
                _ => pick(&day.other_shift, &day.out_shift),
            };
            ("ShiftInput", json!({"shiftId": shift}))
        }
        Op::RequestAppointment => {
            let (board, specialty, region, patient) = match (role, inside) {
                (Role::Patient, true) => (&day.board_in, "pediatrics", "TX", None),
                (Role::Patient, false) => (&day.board_in, "pediatrics", "TX", Some("someone-else")),
                (_, true) => (&day.board_in, "pediatrics", "TX", Some(PATIENT)),
                (_, false) => (&day.board_out, "cardiology", "CA", Some(PATIENT)),
            };
            (
                "RequestAppointmentInput",
                json!({"boardId": board, "patientId": patient, "patientName": "X",
                    "specialty": specialty, "region": region, "reason": "X"}),
            )
        }
        Op::ScheduleAppointment => {
            let (a, shift) = if inside {
                (&day.waiting, &day.other_shift)
            } else {
                (&day.appointment_out, &day.out_shift)
            };
            (
                "ScheduleAppointmentInput",
                json!({"appointmentId": a, "shiftId": shift}),
            )
        }
        Op::StartAppointment | Op::FinishAppointment => {
            let a = match role {
                Role::Provider => pick(&day.assigned, &day.waiting),
                _ => pick(&day.assigned, &day.appointment_out),
            };
            ("AppointmentInput", json!({"appointmentId": a}))
        }
        Op::CancelAppointment => {
            let a = match role {
                Role::Patient => pick(&day.own, &day.waiting),
                _ => pick(&day.waiting, &day.appointment_out),
            };
            (
                "CancelAppointmentInput",
                json!({"appointmentId": a, "reason": "X"}),
            )
        }
        Op::RebuildProjection | Op::ReplayDeadLetters => ("String", json!("board_view")),
        _ => unreachable!("{op} is no mutation"),
    };
    let query = match op {
        Op::RebuildProjection | Op::ReplayDeadLetters => {
            format!(
                "mutation($i: String!) {{ {}(name: $i) {{ __typename }} }}",
                op.name()
            )
        }
        _ => format!(
            "mutation($i: {input}!) {{ {}(input: $i) {{ __typename }} }}",
            op.name()
        ),
    };
    (query, vars)
}

#[tokio::test]
async fn every_mutation_follows_the_matrix_for_every_role_in_and_out_of_scope_and_a_refusal_changes_nothing(
) {
    let app = AuthApp::spawn().await;
    let day = seed(&app).await;
    let events = || async {
        sqlx::query_scalar::<_, i64>("select count(*) from events")
            .fetch_one(&app.app.pool)
            .await
            .unwrap()
    };
    let mut checked = 0;
    for op in Operation::ALL {
        if careboard::graphql::access::field_operations("Mutation", op.name()).is_none() {
            continue;
        }
        for role in Role::ALL {
            let token = app.token(principal(role, &day));
            let rule = matrix::rule(*op, role);
            for inside in [true, false] {
                let (query, input) = mutation_for(*op, role, &day, inside);
                let before = events().await;
                let answer = app.gql(&token, &query, json!({"i": input})).await;
                let code = answer["errors"][0]["extensions"]["code"].as_str();
                let expected_allowed = match rule {
                    Rule::Allowed => true,
                    Rule::Denied => false,
                    Rule::Scoped(_) => inside,
                };
                let case = format!(
                    "{role} {op} ({})",
                    if inside { "in scope" } else { "out of scope" }
                );
                if expected_allowed {
                    // Past the matrix; the domain may still say no (a Board with open
                    // work does not close), never FORBIDDEN.
                    assert_ne!(code, Some("FORBIDDEN"), "{case}: {answer:#}");
                } else {
                    assert_eq!(code, Some("FORBIDDEN"), "{case}: {answer:#}");
                    let message = helpers::error_message(&answer);
                    assert!(
                        message.starts_with(&format!("the {role} role may")),
                        "{case}: {message}"
                    );
                    assert_eq!(
                        events().await,
                        before,
                        "{case}: a refused mutation changed nothing"
                    );
                }
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 15 * 4 * 2);
}

/// Every answer a caller who may not see the marked patients can get.
async fn everything_visible_to(app: &AuthApp, token: &str, day: &Day) -> Vec<String> {
    let now = chrono::Utc::now();
    let from = now - chrono::Duration::hours(1);
    let mut bodies = Vec::new();
    let appointment_fields = "id patientName reason cancellationReason status";
    let queries: Vec<(String, Value)> = vec![
        (format!("query($id: ID!) {{ board(id: $id) {{ appointments {{ {appointment_fields} }} }} }}"), json!({"id": day.board_in})),
        (format!("query($id: ID!, $t: DateTime!) {{ board(id: $id, asOf: $t) {{ appointments {{ {appointment_fields} }} }} }}"), json!({"id": day.board_in, "t": now})),
        (format!("{{ boards {{ edges {{ node {{ appointments {{ {appointment_fields} }} }} }} }} }}"), json!({})),
        ("query($id: ID!, $f: DateTime!, $t: DateTime!) { boardHistory(boardId: $id, from: $f, to: $t) { event { data metadata } } }".into(), json!({"id": day.board_in, "f": from, "t": now})),
        (format!("query($id: ID!) {{ appointment(id: $id) {{ {appointment_fields} }} }}"), json!({"id": day.assigned})),
        (format!("query($id: ID!, $t: DateTime!) {{ appointment(id: $id, asOf: $t) {{ {appointment_fields} }} }}"), json!({"id": day.assigned, "t": now})),
        (format!("query($id: ID!) {{ appointment(id: $id, version: 1) {{ {appointment_fields} }} }}"), json!({"id": day.waiting})),
        ("{ events { edges { node { data metadata } } } }".into(), json!({})),
        ("query($id: ID!) { events(boardId: $id) { edges { node { data metadata } } } }".into(), json!({"id": day.board_in})),
        ("query($id: ID!) { providerShift(id: $id) { id appointmentId } }".into(), json!({"id": day.shift})),
        (format!("{{ myAppointments {{ {appointment_fields} }} }}"), json!({})),
        ("{ myAccessLog { edges { node { disclosed } } } }".into(), json!({})),
        ("{ accessLog { edges { node { disclosed } } } }".into(), json!({})),
        ("query($id: ID!) { waitTimeEstimate(boardId: $id, specialty: \"pediatrics\") { queueAhead } }".into(), json!({"id": day.board_in})),
        // Errors: bad ids, bad input, a mutation on someone else's appointment.
        ("query($id: ID!) { appointment(id: $id) { patientName } }".into(), json!({"id": "not-an-id"})),
        ("query($id: ID!) { board(id: $id) { name } }".into(), json!({"id": Uuid::new_v4()})),
        (format!("mutation($id: ID!) {{ cancelAppointment(input: {{appointmentId: $id, reason: \"x\"}}) {{ appointment {{ {appointment_fields} }} }} }}"), json!({"id": day.appointment_out})),
        (format!("mutation($id: ID!) {{ startAppointment(input: {{appointmentId: $id}}) {{ appointment {{ {appointment_fields} }} }} }}"), json!({"id": day.waiting})),
    ];
    for (query, variables) in queries {
        let answer = app.gql(token, &query, variables).await;
        bodies.push(answer.to_string());
    }
    let subscriptions = [
        (format!("subscription($id: ID!) {{ boardChanged(boardId: $id) {{ appointments {{ {appointment_fields} }} }} }}"), json!({"id": day.board_in})),
        ("subscription($id: ID!) { boardEvents(boardId: $id) { data metadata } }".to_string(), json!({"id": day.board_in})),
        (format!("subscription($id: ID!) {{ appointmentChanged(appointmentId: $id) {{ {appointment_fields} }} }}"), json!({"id": day.assigned})),
    ];
    for (query, variables) in subscriptions {
        for frame in app
            .subscribe(token, &query, variables, Duration::from_millis(300))
            .await
        {
            bodies.push(frame.to_string());
        }
    }
    bodies
}

#[tokio::test]
async fn another_patient_and_a_provider_not_assigned_find_no_patient_data_anywhere() {
    let app = AuthApp::spawn().await;
    let day = seed(&app).await;
    let patient = (Role::Patient, Who::patient("someone-else"));
    let other_provider = (Role::Provider, Who::provider(&day.other_provider));
    for (role, who) in [patient, other_provider] {
        let token = app.token(who);
        let bodies = everything_visible_to(&app, &token, &day).await;
        assert!(bodies.len() >= 20, "{bodies:?}");
        for body in &bodies {
            assert!(!body.contains(MARKER), "{role} saw patient data: {body}");
        }
        if role == Role::Provider {
            // The provider did see the Board they joined, masked: the test reached it.
            assert!(
                bodies
                    .iter()
                    .any(|b| b.contains(&day.assigned) && b.contains("\"patientName\":null")),
                "{bodies:#?}"
            );
        }
    }
    // Nothing was disclosed, so nothing was recorded.
    assert_eq!(app.access_records().await, Vec::<Value>::new());

    // The checks bite: the coordinator in scope and the assigned provider do see it.
    let coordinator = app.token(principal(Role::Coordinator, &day));
    let seen = app
        .board(
            &coordinator,
            &day.board_in,
            "appointments { patientName reason }",
        )
        .await;
    assert!(seen.to_string().contains(MARKER), "{seen}");
    let provider = app.token(principal(Role::Provider, &day));
    let seen = app
        .board(&provider, &day.board_in, "appointments { id patientName }")
        .await;
    for a in seen["board"]["appointments"].as_array().unwrap() {
        let shown = a["patientName"].is_string();
        assert_eq!(
            shown,
            a["id"] == day.assigned.as_str(),
            "only the assigned one: {seen}"
        );
    }
    // In the Board's timeline too: the assigned appointment's request, no other.
    let now = chrono::Utc::now();
    let history = app
        .data(
            &provider,
            "query($id: ID!, $f: DateTime!, $t: DateTime!) { boardHistory(boardId: $id, from: $f, to: $t) { event { data } } }",
            json!({"id": day.board_in, "f": now - chrono::Duration::hours(1), "t": now}),
        )
        .await
        .to_string();
    assert!(history.contains(&format!("Pat {MARKER}1")), "{history}");
    assert!(!history.contains(&format!("{MARKER}2")), "{history}");
    assert!(!history.contains(&format!("{MARKER}4")), "{history}");
    // Admins run the system; they do not treat patients.
    let seen = app
        .data(
            &app.admin(),
            "query($id: ID!) { board(id: $id) { appointments { patientName reason } } events { edges { node { data } } } }",
            json!({"id": day.board_in}),
        )
        .await;
    assert!(!seen.to_string().contains(MARKER), "{seen}");
}

#[tokio::test]
async fn every_read_that_discloses_patient_data_leaves_one_access_record_and_the_chain_verifies() {
    let app = AuthApp::spawn().await;
    let day = seed(&app).await;
    assert!(
        app.access_records().await.is_empty(),
        "seeding as admin disclosed nothing"
    );
    let coordinator = app.token(principal(Role::Coordinator, &day));
    let provider = app.token(principal(Role::Provider, &day));
    const N: usize = 5;
    let board = "query Front($id: ID!) { board(id: $id) { version appointments { patientName } } }";
    let mut versions = Vec::new();
    for _ in 0..N {
        let d = app
            .data(&coordinator, board, json!({"id": day.board_in}))
            .await;
        versions.push(d["board"]["version"].as_i64().unwrap());
    }
    for _ in 0..N {
        app.data(
            &provider,
            "query($id: ID!) { appointment(id: $id) { reason } }",
            json!({"id": day.assigned}),
        )
        .await;
    }
    // Reads that disclose nothing leave nothing: no patient field asked for, or masked.
    app.board(&coordinator, &day.board_in, "name appointments { status }")
        .await;
    app.board(&provider, &day.board_in, "appointments { id }")
        .await;
    app.data(&app.admin(), board, json!({"id": day.board_in}))
        .await;
    // A subscription frame is a disclosure too.
    let frames = app
        .subscribe(
            &coordinator,
            "subscription($id: ID!) { boardChanged(boardId: $id) { version appointments { patientName } } }",
            json!({"id": day.board_in}),
            Duration::from_millis(200),
        )
        .await;
    assert_eq!(frames.len(), 1, "{frames:?}");

    let records = app.access_records().await;
    assert_eq!(records.len(), 2 * N + 1, "{records:#?}");
    for (i, r) in records[..N].iter().enumerate() {
        assert_eq!(r["role"], "coordinator");
        assert_eq!(r["operation"], "board");
        assert_eq!(r["operationName"], "Front");
        assert!(
            r["clientAddr"].as_str().unwrap().starts_with("127.0.0.1:"),
            "{r}"
        );
        assert_eq!(r["disclosed"]["kind"], "board");
        assert_eq!(r["disclosed"]["boardId"], day.board_in.as_str());
        assert_eq!(r["disclosed"]["version"], versions[i]);
    }
    for r in &records[N..2 * N] {
        assert_eq!(r["role"], "provider");
        assert_eq!(r["subject"], format!("provider-{}", day.provider));
        assert_eq!(r["operation"], "appointment");
        assert_eq!(r["disclosed"]["kind"], "appointments");
        assert_eq!(
            r["disclosed"]["appointments"][0]["appointmentId"],
            day.assigned.as_str()
        );
    }
    let last = &records[2 * N];
    assert_eq!(last["operation"], "boardChanged");
    assert_eq!(last["disclosed"]["boardId"], day.board_in.as_str());
    assert!(!records.iter().any(|r| r.to_string().contains(MARKER)));

    // Admins read them back, filtered.
    let page = app
        .data(
            &app.admin(),
            "query($s: String) { accessLog(subject: $s, first: 3) { edges { node { seq subject operation disclosed } } pageInfo { hasNextPage } } }",
            json!({"s": format!("provider-{}", day.provider)}),
        )
        .await;
    let edges = page["accessLog"]["edges"].as_array().unwrap();
    assert_eq!(edges.len(), 3);
    assert!(edges
        .iter()
        .all(|e| e["node"]["subject"] == format!("provider-{}", day.provider).as_str()));
    assert_eq!(page["accessLog"]["pageInfo"]["hasNextPage"], true);
    let by_appointment = app
        .data(
            &app.admin(),
            "query($a: ID) { accessLog(appointmentId: $a) { edges { node { seq } } } }",
            json!({"a": day.assigned}),
        )
        .await;
    // The provider's N reads named it; the coordinator's N Board reads and the frame
    // showed its Board after it was requested (it names no patient: a coordinator
    // asked on someone's behalf), so they may have shown it too.
    let seqs = |page: &Value| -> Vec<i64> {
        page["accessLog"]["edges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["node"]["seq"].as_i64().unwrap())
            .collect()
    };
    assert_eq!(seqs(&by_appointment).len(), 2 * N + 1, "{by_appointment}");
    // The patient's own request names them: the Board records that showed them match.
    let own = app
        .data(
            &app.admin(),
            "query($a: ID) { accessLog(appointmentId: $a) { edges { node { seq } } } }",
            json!({"a": day.own}),
        )
        .await;
    assert_eq!(seqs(&own).len(), N + 1, "{own}");
    // An appointment of another Board is not matched by this Board's records.
    let elsewhere = app
        .data(
            &app.admin(),
            "query($a: ID) { accessLog(appointmentId: $a) { edges { node { seq } } } }",
            json!({"a": day.appointment_out}),
        )
        .await;
    assert!(seqs(&elsewhere).is_empty(), "{elsewhere}");

    // A time range: all of them are from the last minute, none from the future.
    let now = chrono::Utc::now();
    let count = |from: chrono::DateTime<chrono::Utc>, to: chrono::DateTime<chrono::Utc>| {
        let admin = app.admin();
        let app = &app;
        async move {
            app.data(
                &admin,
                "query($f: DateTime, $t: DateTime) { accessLog(from: $f, to: $t, first: 500) { edges { node { seq } } } }",
                json!({"f": from, "t": to}),
            )
            .await["accessLog"]["edges"]
                .as_array()
                .unwrap()
                .len()
        }
    };
    let minute = chrono::Duration::minutes(1);
    assert_eq!(count(now - minute, now + minute).await, 2 * N + 1);
    assert_eq!(count(now + minute, now + minute * 2).await, 0);
    // Patients and providers may not read it.
    for who in [Who::patient(PATIENT), Who::provider(&day.provider)] {
        let answer = app
            .gql(
                &app.token(who),
                "{ accessLog { edges { node { seq } } } }",
                json!({}),
            )
            .await;
        assert_eq!(helpers::error_code(&answer), "FORBIDDEN");
    }

    // The chain verifies; a row altered with the triggers off is found.
    let report = careboard::identity::access_log::verify(&app.app.pool)
        .await
        .unwrap();
    assert_eq!(report.verified, (2 * N + 1) as i64);
    assert!(report.first_broken.is_none(), "{report:?}");
    sqlx::query("alter table access_log disable trigger access_log_append_only")
        .execute(&app.app.pool)
        .await
        .unwrap();
    sqlx::query("update access_log set subject = 'nobody' where seq = 3")
        .execute(&app.app.pool)
        .await
        .unwrap();
    sqlx::query("alter table access_log enable trigger access_log_append_only")
        .execute(&app.app.pool)
        .await
        .unwrap();
    let report = careboard::identity::access_log::verify(&app.app.pool)
        .await
        .unwrap();
    assert_eq!(report.first_broken.map(|b| b.seq), Some(3));
}

#[tokio::test]
async fn a_read_whose_access_record_cannot_be_written_is_not_answered() {
    let app = AuthApp::spawn().await;
    let day = seed(&app).await;
    let coordinator = app.token(principal(Role::Coordinator, &day));
    sqlx::query("revoke insert on access_log from careboard_app")
        .execute(&app.app.pool)
        .await
        .unwrap();
    let board = "query($id: ID!) { board(id: $id) { appointments { patientName } } }";
    let answer = app
        .gql(&coordinator, board, json!({"id": day.board_in}))
        .await;
    assert_eq!(helpers::error_code(&answer), "UNAVAILABLE", "{answer:#}");
    assert!(answer["data"].is_null(), "{answer:#}");
    assert!(!answer.to_string().contains(MARKER), "{answer}");
    // A subscription frame that cannot be recorded is not sent either.
    let frames = app
        .subscribe(
            &coordinator,
            "subscription($id: ID!) { boardChanged(boardId: $id) { appointments { patientName } } }",
            json!({"id": day.board_in}),
            Duration::from_millis(200),
        )
        .await;
    assert!(!frames.is_empty());
    assert!(!format!("{frames:?}").contains(MARKER), "{frames:?}");
    // Nothing of it ran: an `error` message, as for any request error.
    assert_eq!(frames[0]["type"], "error", "{frames:?}");
    assert_eq!(
        frames[0]["payload"][0]["extensions"]["code"], "UNAVAILABLE",
        "{frames:?}"
    );
    assert_eq!(frames.len(), 1, "the subscription ended there: {frames:?}");
    // Reads that disclose nothing are still answered.
    let d = app.board(&coordinator, &day.board_in, "name").await;
    assert!(d["board"]["name"].is_string());
    sqlx::query("grant insert on access_log to careboard_app")
        .execute(&app.app.pool)
        .await
        .unwrap();
    let answer = app
        .data(&coordinator, board, json!({"id": day.board_in}))
        .await;
    assert!(answer.to_string().contains(MARKER));
    let _ = day.position;
}

/// A mutation commits before its answer is recorded; when the record cannot be written
/// the answer is withheld, and the client is told the command was carried out (not to
/// send it again as a new one) and that a retry with the same `commandId` answers it.
#[tokio::test]
async fn a_mutation_whose_answer_cannot_be_recorded_is_committed_withheld_and_replayed() {
    let app = AuthApp::spawn().await;
    let day = seed(&app).await;
    let coordinator = app.token(principal(Role::Coordinator, &day));
    let events = || async {
        sqlx::query_scalar::<_, i64>("select count(*) from events")
            .fetch_one(&app.app.pool)
            .await
            .unwrap()
    };
    sqlx::query("revoke insert on access_log from careboard_app")
        .execute(&app.app.pool)
        .await
        .unwrap();
    let before = events().await;
    let request = "mutation($i: RequestAppointmentInput!) { requested: requestAppointment(input: $i) { appointment { id patientName } version } }";
    let input = json!({"i": {"boardId": day.board_in, "patientName": format!("Pat {MARKER}9"),
        "specialty": "pediatrics", "region": "TX", "reason": "checkup", "commandId": "withheld-1"}});
    let answer = app.gql(&coordinator, request, input.clone()).await;
    assert!(!answer.to_string().contains(MARKER), "{answer}");
    assert!(answer["data"].is_null(), "{answer:#}");
    let errors = answer["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{answer:#}");
    assert_eq!(
        errors[0]["extensions"]["code"], "RESULT_WITHHELD",
        "{answer:#}"
    );
    assert_eq!(errors[0]["extensions"]["committed"], true, "{answer:#}");
    assert_eq!(errors[0]["path"], json!(["requested"]), "{answer:#}");
    assert!(
        errors[0]["message"].as_str().unwrap().contains("commandId"),
        "{answer:#}"
    );
    assert_eq!(events().await, before + 1, "the command was committed");
    // A mutation whose answer discloses nothing is answered as usual meanwhile.
    let quiet = app
        .data(
            &coordinator,
            "mutation($i: RequestAppointmentInput!) { requestAppointment(input: $i) { version } }",
            json!({"i": {"boardId": day.board_in, "patientName": format!("Pat {MARKER}8"),
                "specialty": "pediatrics", "region": "TX", "reason": "checkup"}}),
        )
        .await;
    assert_eq!(quiet["requestAppointment"]["version"], 1, "{quiet}");
    assert_eq!(events().await, before + 2);
    // Once records can be written, the same commandId answers with what was committed.
    sqlx::query("grant insert on access_log to careboard_app")
        .execute(&app.app.pool)
        .await
        .unwrap();
    let replayed = app.data(&coordinator, request, input).await;
    assert_eq!(
        replayed["requested"]["appointment"]["patientName"],
        format!("Pat {MARKER}9"),
        "{replayed}"
    );
    assert_eq!(events().await, before + 2, "the retry wrote nothing");
    let records = app.access_records().await;
    assert!(
        records
            .iter()
            .any(|r| r["operation"] == "requestAppointment"
                && r["disclosed"]
                    .to_string()
                    .contains(replayed["requested"]["appointment"]["id"].as_str().unwrap())),
        "{records:#?}"
    );
}

#[tokio::test]
async fn the_assigned_provider_follows_their_appointment_live_and_each_frame_is_recorded() {
    let app = AuthApp::spawn().await;
    let day = seed(&app).await;
    let provider = app.token(principal(Role::Provider, &day));
    let mut sub = app
        .open_subscription(
            &provider,
            "subscription($id: ID!) { appointmentChanged(appointmentId: $id) { status patientName } }",
            json!({"id": day.assigned}),
        )
        .await;
    let mut statuses = Vec::new();
    let first = sub
        .next(Duration::from_secs(10))
        .await
        .expect("the current state");
    statuses.push(first["payload"]["data"]["appointmentChanged"]["status"].clone());
    assert!(
        first.to_string().contains(MARKER),
        "the assigned provider sees it: {first}"
    );
    for op in ["startAppointment", "finishAppointment"] {
        app.data(
            &app.admin(),
            &format!("mutation($id: ID!) {{ {op}(input: {{appointmentId: $id}}) {{ version }} }}"),
            json!({"id": day.assigned}),
        )
        .await;
        let frame = sub
            .next(Duration::from_secs(10))
            .await
            .expect("a frame per change");
        statuses.push(frame["payload"]["data"]["appointmentChanged"]["status"].clone());
    }
    assert_eq!(
        statuses,
        vec![json!("SCHEDULED"), json!("STARTED"), json!("FINISHED")]
    );
    let end = sub.next(Duration::from_secs(5)).await.expect("completes");
    assert_eq!(end["type"], "complete", "{end}");
    sub.close().await;
    let records = app.access_records().await;
    assert_eq!(records.len(), 3, "{records:#?}");
    for r in &records {
        assert_eq!(r["operation"], "appointmentChanged");
        assert_eq!(
            r["disclosed"]["appointments"][0]["appointmentId"],
            day.assigned.as_str()
        );
    }
}

#[tokio::test]
async fn scoped_mutations_are_refused_outside_the_callers_scope_and_change_nothing() {
    let app = AuthApp::spawn().await;
    let day = seed(&app).await;
    let events = || async {
        sqlx::query_scalar::<_, i64>("select count(*) from events")
            .fetch_one(&app.app.pool)
            .await
            .unwrap()
    };
    let before = events().await;
    let coordinator = app.token(principal(Role::Coordinator, &day));
    let provider = app.token(principal(Role::Provider, &day));
    let patient = app.token(principal(Role::Patient, &day));
    let today = chrono::Utc::now().date_naive().to_string();
    let refused = [
        (
            &coordinator,
            "mutation($i: OpenBoardInput!) { openBoard(input: $i) { version } }".to_string(),
            json!({"name": "X", "specialty": "cardiology", "region": "CA", "date": today}),
            "the coordinator role may use openBoard only on Boards within their regions and specialties",
        ),
        (
            &coordinator,
            "mutation($i: CloseBoardInput!) { closeBoard(input: $i) { version } }".to_string(),
            json!({"boardId": day.board_out}),
            "the coordinator role may use closeBoard only on Boards within their regions and specialties",
        ),
        (
            &provider,
            "mutation($i: ShiftInput!) { pauseProvider(input: $i) { version } }".to_string(),
            json!({"shiftId": day.other_shift}),
            "the provider role may use pauseProvider only on their own shifts",
        ),
        (
            &provider,
            "mutation($i: JoinBoardInput!) { joinBoard(input: $i) { version } }".to_string(),
            json!({"boardId": day.board_out, "providerId": day.other_provider}),
            "the provider role may use joinBoard only for themselves",
        ),
        (
            &provider,
            "mutation($i: AppointmentInput!) { startAppointment(input: $i) { version } }"
                .to_string(),
            json!({"appointmentId": day.waiting}),
            "the provider role may use startAppointment only on appointments assigned to them",
        ),
        (
            &patient,
            "mutation($i: CancelAppointmentInput!) { cancelAppointment(input: $i) { version } }"
                .to_string(),
            json!({"appointmentId": day.waiting, "reason": "not mine"}),
            "the patient role may use cancelAppointment only on their own appointments",
        ),
        (
            &patient,
            "mutation($i: RequestAppointmentInput!) { requestAppointment(input: $i) { version } }"
                .to_string(),
            json!({"boardId": day.board_in, "patientId": "someone-else", "patientName": "X",
                "specialty": "pediatrics", "region": "TX", "reason": "X"}),
            "the patient role may use requestAppointment only for themselves: leave patientId out",
        ),
        (
            &coordinator,
            "mutation($i: RequestAppointmentInput!) { requestAppointment(input: $i) { version } }"
                .to_string(),
            json!({"boardId": day.board_out, "patientId": "p-9", "patientName": "X",
                "specialty": "cardiology", "region": "CA", "reason": "X"}),
            "the coordinator role may use requestAppointment only on Boards within their regions and specialties",
        ),
    ];
    for (token, query, input, message) in refused {
        let answer = app.gql(token, &query, json!({"i": input})).await;
        assert_eq!(
            helpers::error_code(&answer),
            "FORBIDDEN",
            "{query}: {answer:#}"
        );
        assert_eq!(helpers::error_message(&answer), message);
    }
    assert_eq!(
        events().await,
        before,
        "no refused mutation changed anything"
    );

    // Inside their scope the same roles succeed.
    app.data(
        &provider,
        "mutation($i: AppointmentInput!) { startAppointment(input: $i) { version } }",
        json!({"i": {"appointmentId": day.assigned}}),
    )
    .await;
    let cancelled = app
        .data(
            &patient,
            "mutation($i: CancelAppointmentInput!) { cancelAppointment(input: $i) { appointment { status cancellationReason } } }",
            json!({"i": {"appointmentId": day.own, "reason": "feeling better"}}),
        )
        .await;
    assert_eq!(
        cancelled["cancelAppointment"]["appointment"]["status"],
        "CANCELLED"
    );
    assert_eq!(
        cancelled["cancelAppointment"]["appointment"]["cancellationReason"], "feeling better",
        "their own"
    );
    // The actor recorded is the patient, whose name is masked for an admin reading
    // the log.
    let log = app
        .data(
            &app.admin(),
            "query($id: ID!) { events(streamId: $id) { edges { node { type data metadata } } } }",
            json!({"id": day.own}),
        )
        .await;
    let text = log.to_string();
    assert!(
        !text.contains(MARKER) && !text.contains("feeling better"),
        "{text}"
    );
    assert!(text.contains("\"actorRole\":\"patient\""), "{text}");
    assert!(!text.contains(PATIENT), "{text}");
}

#[tokio::test]
async fn my_appointments_are_found_by_index_not_by_reading_every_appointment() {
    let app = AuthApp::spawn().await;
    seed(&app).await;
    let mut tx = app.app.pool.begin().await.unwrap();
    // With few rows the planner would rightly scan; forbid that to see whether the
    // statement can be served by the index at all.
    sqlx::query("set local enable_seqscan = off")
        .execute(&mut *tx)
        .await
        .unwrap();
    let plan: Vec<String> = sqlx::query_scalar(&format!(
        "explain {}",
        careboard::projections::read::patient_appointments_sql()
    ))
    .bind(PATIENT)
    .bind(50_i64)
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    let plan = plan.join("\n");
    assert!(plan.contains("appointment_view_by_patient"), "{plan}");
}

#[tokio::test]
async fn a_patient_sees_their_own_appointments_and_who_has_seen_their_record() {
    let app = AuthApp::spawn().await;
    let day = seed(&app).await;
    let patient = app.token(Who::patient(PATIENT));
    // A coordinator requests one on behalf of the same patient.
    let coordinator = app.token(principal(Role::Coordinator, &day));
    let on_behalf = app
        .data(
            &coordinator,
            REQUEST,
            json!({"i": {"boardId": day.board_in, "patientId": PATIENT, "patientName": "Pat Lee",
                "specialty": "pediatrics", "region": "TX", "reason": "follow-up"}}),
        )
        .await["requestAppointment"]["appointment"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let wait_for = |n: usize| {
        let patient = patient.clone();
        let app = &app;
        async move {
            for _ in 0..100 {
                let d = app
                    .data(
                        &patient,
                        "{ myAppointments { id patientName reason status } }",
                        json!({}),
                    )
                    .await;
                if d["myAppointments"].as_array().unwrap().len() == n {
                    return d;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("myAppointments never listed {n}");
        }
    };
    let mine = wait_for(2).await;
    let ids: Vec<&str> = mine["myAppointments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&day.own.as_str()) && ids.contains(&on_behalf.as_str()),
        "{mine}"
    );
    assert!(
        mine.to_string().contains(&format!("pain {MARKER}4")),
        "their own reason: {mine}"
    );
    // Someone else's appointments are not theirs.
    assert!(!mine.to_string().contains(&day.waiting));

    // The coordinator looks at the Board; the provider not assigned looks too (masked).
    app.board(&coordinator, &day.board_in, "appointments { patientName }")
        .await;
    app.board(
        &app.token(Who::provider(&day.other_provider)),
        &day.board_in,
        "appointments { patientName }",
    )
    .await;
    let seen = app
        .data(
            &patient,
            "{ myAccessLog { edges { node { subject role operation disclosed } } } }",
            json!({}),
        )
        .await;
    let entries: Vec<&Value> = seen["myAccessLog"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["node"])
        .collect();
    // Their own myAppointments reads, and the coordinator's Board read; not the
    // provider's (nothing of theirs was shown to them).
    assert!(
        entries.iter().any(|e| e["role"] == "coordinator"
            && e["operation"] == "board"
            && e["disclosed"]["patientIds"]
                .as_array()
                .unwrap()
                .contains(&json!(PATIENT))),
        "{seen:#}"
    );
    assert!(entries.iter().all(|e| e["role"] != "provider"), "{seen:#}");
    assert!(entries.iter().any(|e| e["role"] == "patient"), "{seen:#}");
    // Another patient's log holds none of this.
    let other = app
        .data(
            &app.token(Who::patient("someone-else")),
            "{ myAccessLog { edges { node { seq } } } myAppointments { id } }",
            json!({}),
        )
        .await;
    assert_eq!(other["myAccessLog"]["edges"], json!([]));
    assert_eq!(other["myAppointments"], json!([]));
}

/// Time travel masks by the assignment as it stood at the moment asked for (DESIGN §9:
/// a provider sees the patient fields of the appointments assigned to them): a
/// provider given a waiting appointment later does not see its patient as of a moment
/// before (masked in `board(asOf)`, refused by `appointment(asOf)`), and does as of a
/// moment after; only
/// the later reads disclose it in the access log.
#[tokio::test]
async fn a_provider_sees_a_patient_as_of_a_moment_only_if_assigned_then() {
    let app = AuthApp::spawn().await;
    let day = seed(&app).await;
    let admin = app.admin();
    let provider = app.token(Who::provider(&day.other_provider));
    let before = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let scheduled = app
        .data(
            &admin,
            SCHEDULE,
            json!({"i": {"appointmentId": day.waiting, "shiftId": day.other_shift}}),
        )
        .await;
    let position = scheduled["scheduleAppointment"]["position"]
        .as_i64()
        .unwrap();
    app.data(
        &admin,
        "query($id: ID!, $p: Int) { board(id: $id, minPosition: $p) { id } }",
        json!({"id": day.board_in, "p": position}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let after = chrono::Utc::now();

    let board = "query($id: ID!, $t: DateTime!) { board(id: $id, asOf: $t) { appointments { id patientName reason } } }";
    let appointment = "query($id: ID!, $t: DateTime!) { appointment(id: $id, asOf: $t) { patientName reason providerId } }";
    let waiting_on = |answer: &Value| -> Value {
        answer["board"]["appointments"]
            .as_array()
            .expect("appointments")
            .iter()
            .find(|a| a["id"] == day.waiting.as_str())
            .expect("the appointment is on the Board")
            .clone()
    };
    let log_before = app.access_records().await.len();

    let then = app
        .data(&provider, board, json!({"id": day.board_in, "t": before}))
        .await;
    assert!(
        waiting_on(&then)["patientName"].is_null() && waiting_on(&then)["reason"].is_null(),
        "not yet assigned then: {then:#}"
    );
    assert!(!then.to_string().contains(MARKER), "{then:#}");
    // The appointment alone, as it stood before: not theirs then, so refused whole.
    let alone = app
        .gql(
            &provider,
            appointment,
            json!({"id": day.waiting, "t": before}),
        )
        .await;
    assert_eq!(
        helpers::error_code(&alone),
        "FORBIDDEN",
        "not assigned then: {alone:#}"
    );
    assert!(!alone.to_string().contains(MARKER), "{alone:#}");
    let mid = app.access_records().await;
    assert!(
        mid[log_before..].iter().all(|r| r["role"] != "provider"),
        "nothing was disclosed to the provider, so nothing is recorded: {mid:#?}"
    );
    let mid = mid.len();

    let now = app
        .data(&provider, board, json!({"id": day.board_in, "t": after}))
        .await;
    assert_eq!(
        waiting_on(&now)["patientName"],
        format!("Pat {MARKER}2"),
        "assigned then: {now:#}"
    );
    assert!(
        !now.to_string().contains(&format!("{MARKER}1")),
        "another provider's appointment stays masked: {now:#}"
    );
    let alone = app
        .data(
            &provider,
            appointment,
            json!({"id": day.waiting, "t": after}),
        )
        .await;
    assert_eq!(
        alone["appointment"]["reason"],
        format!("pain {MARKER}2"),
        "{alone:#}"
    );
    // The access log: a Board read that disclosed patient fields is recorded as the
    // Board's version as seen by the reader's role and scope (DESIGN §9); the
    // appointment read names the appointment.
    let records = app.access_records().await;
    let board_version = |records: &[Value]| -> i64 {
        let found: Vec<i64> = records
            .iter()
            .filter(|r| r["role"] == "provider" && r["disclosed"]["kind"] == "board")
            .map(|r| {
                assert_eq!(r["disclosed"]["boardId"], day.board_in.as_str(), "{r:#}");
                r["disclosed"]["version"].as_i64().expect("a version")
            })
            .collect();
        assert_eq!(found.len(), 1, "one Board read recorded: {records:#?}");
        found[0]
    };
    assert!(
        board_version(&records[mid..]) >= 1,
        "the Board read is recorded with its version: {records:#?}"
    );
    let appointment_reads: Vec<&Value> = records[mid..]
        .iter()
        .filter(|r| r["role"] == "provider" && r["disclosed"]["kind"] == "appointments")
        .collect();
    assert_eq!(appointment_reads.len(), 1, "{records:#?}");
    assert_eq!(
        appointment_reads[0]["disclosed"]["appointments"][0]["appointmentId"],
        day.waiting.as_str()
    );
}

/// Found from outside: a coordinator of every region and specialty was refused
/// (FORBIDDEN, "only on Boards within their regions and specialties") for an id that
/// does not exist, where an admin learns NOT_FOUND or null. Whoever could act on a
/// target whatever it were now learns it is missing; a limited coordinator is still
/// refused as for a Board out of scope, so that a missing id tells them nothing.
#[tokio::test]
async fn a_missing_target_is_not_found_for_whoever_could_see_it_whatever_it_were() {
    let app = TestApp::spawn().await;
    let missing = Uuid::new_v4().to_string();
    let everywhere = app.token(Who::coordinator());
    let limited = app.token(Who::coordinator().regions(["CA"]));
    let reads = [
        "query($id: ID!) { board(id: $id) { id } }",
        "query($id: ID!) { board(id: $id, asOf: \"2030-01-01T00:00:00Z\") { id } }",
        "query($id: ID!) { appointment(id: $id) { id } }",
        "query($id: ID!) { providerShift(id: $id) { id } }",
    ];
    for query in reads {
        let r = app.gql_as(&everywhere, query, json!({"id": missing})).await;
        assert!(r.get("errors").is_none(), "{query}: {r}");
        let field = r["data"].as_object().unwrap().values().next().unwrap();
        assert!(field.is_null(), "{query}: {r}");
        let r = app.gql_as(&limited, query, json!({"id": missing})).await;
        assert_eq!(helpers::error_code(&r), "FORBIDDEN", "{query}: {r}");
    }
    let commands = [
        ("startAppointment", "mutation($id: ID!) { startAppointment(input: {appointmentId: $id}) { version } }"),
        ("cancelAppointment", "mutation($id: ID!) { cancelAppointment(input: {appointmentId: $id, reason: \"no\"}) { version } }"),
        ("completeCharting", "mutation($id: ID!) { completeCharting(input: {shiftId: $id}) { version } }"),
        ("closeBoard", "mutation($id: ID!) { closeBoard(input: {boardId: $id}) { version } }"),
    ];
    for (name, mutation) in commands {
        let r = app
            .gql_as(&everywhere, mutation, json!({"id": missing}))
            .await;
        assert_eq!(helpers::error_code(&r), "NOT_FOUND", "{name}: {r}");
        let r = app.gql_as(&limited, mutation, json!({"id": missing})).await;
        assert_eq!(helpers::error_code(&r), "FORBIDDEN", "{name}: {r}");
    }
    // A subscription to a missing Board.
    for (token, code) in [(&everywhere, "NOT_FOUND"), (&limited, "FORBIDDEN")] {
        let mut ws = helpers::WsClient::open_as(&app, "graphql-transport-ws", Some(token)).await;
        ws.subscribe(
            "1",
            "subscription($id: ID!) { boardChanged(boardId: $id) { version } }",
            json!({"id": missing}),
        )
        .await;
        let m = ws.next(Duration::from_secs(5)).await.expect("an answer");
        let errors = if m["type"] == "error" {
            m["payload"].clone()
        } else {
            m["payload"]["errors"].clone()
        };
        assert_eq!(errors[0]["extensions"]["code"], code, "{m}");
    }
}

/// Scheduling an appointment of one's Board with a shift of a Board out of one's scope
/// is FORBIDDEN, and the refusal names nothing of the other Board. Found from outside:
/// the domain's VALIDATION ("provider shift … is on board …") ran first and told a
/// scoped coordinator that the shift exists and which Board it is on.
#[tokio::test]
async fn a_shift_out_of_scope_is_refused_before_the_domain_names_its_board() {
    let app = AuthApp::spawn().await;
    let day = seed(&app).await;
    let scoped = app.token(
        Who::coordinator()
            .regions(["TX"])
            .specialties(["pediatrics"]),
    );
    let before = app.app.event_count().await;
    let answer = app
        .gql(
            &scoped,
            SCHEDULE,
            json!({"i": {"appointmentId": day.waiting, "shiftId": day.out_shift}}),
        )
        .await;
    assert_eq!(helpers::error_code(&answer), "FORBIDDEN", "{answer}");
    let text = answer.to_string();
    assert!(!text.contains(&day.board_out), "{text}");
    assert!(!text.contains(&day.out_shift), "{text}");
    assert_eq!(app.app.event_count().await, before, "nothing was appended");
    // An admin is told what is wrong with the pair.
    let answer = app
        .gql(
            &app.admin(),
            SCHEDULE,
            json!({"i": {"appointmentId": day.waiting, "shiftId": day.out_shift}}),
        )
        .await;
    assert_eq!(helpers::error_code(&answer), "VALIDATION", "{answer}");
}
