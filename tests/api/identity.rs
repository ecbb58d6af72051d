//! Who is asking: bearer tokens verified against a JWKS served over real HTTP by the
//! test (an axum server on port 0), the development issuer and `careboard token`, and
//! the access log against real PostgreSQL.

use crate::helpers;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use careboard::identity::access_log::{
    self, AccessLog, AccessLogOptions, AccessRecord, AppointmentRef, Disclosure,
};
use careboard::identity::jwks::KeySource;
use careboard::identity::{
    AuthError, Principal, Role, Scope, TokenTypes, Verifier, VerifierConfig,
};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use uuid::Uuid;

const ISSUER: &str = "https://idp.example.test/realms/clinic";
const AUDIENCE: &str = "careboard-api";

// ---------------------------------------------------------------------------------
// An identity provider: signing keys, and a JWKS endpoint that can rotate or go down.

struct RsaKey {
    kid: String,
    encoding: EncodingKey,
    jwk: Value,
    /// The public key as PEM: what an attacker would use as an HMAC secret.
    public_pem: String,
}

fn rsa_key(kid: &str) -> RsaKey {
    use rsa::pkcs1::EncodeRsaPrivateKey;
    use rsa::pkcs8::{EncodePublicKey, LineEnding};
    use rsa::traits::PublicKeyParts;
    // Key generation is the slow part; one key per test binary is enough.
    static KEY: OnceLock<rsa::RsaPrivateKey> = OnceLock::new();
    let private = KEY.get_or_init(|| {
        rsa::RsaPrivateKey::new(&mut rand_core::OsRng, 2048).expect("RSA key generation")
    });
    let public = private.to_public_key();
    RsaKey {
        kid: kid.to_string(),
        encoding: EncodingKey::from_rsa_der(private.to_pkcs1_der().unwrap().as_bytes()),
        jwk: json!({
            "kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid,
            "n": URL_SAFE_NO_PAD.encode(public.n().to_bytes_be()),
            "e": URL_SAFE_NO_PAD.encode(public.e().to_bytes_be()),
        }),
        public_pem: public.to_public_key_pem(LineEnding::LF).unwrap(),
    }
}

struct EcKey {
    kid: String,
    encoding: EncodingKey,
    jwk: Value,
}

fn ec_key(kid: &str) -> EcKey {
    use p256::elliptic_curve::sec1::ToEncodedPoint;
    use p256::pkcs8::EncodePrivateKey;
    let secret = p256::SecretKey::random(&mut rand_core::OsRng);
    let point = secret.public_key().to_encoded_point(false);
    EcKey {
        kid: kid.to_string(),
        encoding: EncodingKey::from_ec_der(secret.to_pkcs8_der().unwrap().as_bytes()),
        jwk: json!({
            "kty": "EC", "crv": "P-256", "use": "sig", "kid": kid,
            "x": URL_SAFE_NO_PAD.encode(point.x().unwrap()),
            "y": URL_SAFE_NO_PAD.encode(point.y().unwrap()),
        }),
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Claims of a coordinator named Ana Ruiz, valid for ten minutes.
fn claims() -> Value {
    json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": "user-4711", "name": "Ana Ruiz",
        "role": "coordinator", "regions": ["TX"], "iat": now(), "nbf": now() - 5,
        "exp": now() + 600,
    })
}

fn sign(alg: Algorithm, kid: &str, key: &EncodingKey, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_string());
    jsonwebtoken::encode(&header, claims, key).expect("sign")
}

#[derive(Default)]
struct IdpState {
    keys: Mutex<Vec<Value>>,
    down: AtomicBool,
    jwks_fetches: AtomicUsize,
    issuer: Mutex<String>,
    base: Mutex<String>,
}

async fn jwks(State(s): State<Arc<IdpState>>) -> Response {
    s.jwks_fetches.fetch_add(1, Ordering::SeqCst);
    if s.down.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let keys = s.keys.lock().unwrap().clone();
    Json(json!({ "keys": keys })).into_response()
}

async fn discovery(State(s): State<Arc<IdpState>>) -> Response {
    if s.down.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let base = s.base.lock().unwrap().clone();
    Json(json!({
        "issuer": s.issuer.lock().unwrap().clone(),
        "jwks_uri": format!("{base}/protocol/openid-connect/certs"),
    }))
    .into_response()
}

/// A JWKS (and discovery document) served over HTTP on port 0.
struct Idp {
    state: Arc<IdpState>,
    base: String,
}

impl Idp {
    async fn start(keys: Vec<Value>) -> Idp {
        let state = Arc::new(IdpState::default());
        *state.keys.lock().unwrap() = keys;
        *state.issuer.lock().unwrap() = ISSUER.to_string();
        let app = Router::new()
            .route("/protocol/openid-connect/certs", get(jwks))
            .route("/.well-known/openid-configuration", get(discovery))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        *state.base.lock().unwrap() = base.clone();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Idp { state, base }
    }

    fn jwks_url(&self) -> String {
        format!("{}/protocol/openid-connect/certs", self.base)
    }

    fn fetches(&self) -> usize {
        self.state.jwks_fetches.load(Ordering::SeqCst)
    }

    fn set_down(&self, down: bool) {
        self.state.down.store(down, Ordering::SeqCst);
    }

    fn publish(&self, keys: Vec<Value>) {
        *self.state.keys.lock().unwrap() = keys;
    }

    fn verifier(&self) -> Verifier {
        self.verifier_with(|_| {})
    }

    fn verifier_with(&self, tweak: impl FnOnce(&mut VerifierConfig)) -> Verifier {
        let mut config = VerifierConfig::new(ISSUER, AUDIENCE, KeySource::JwksUrl(self.jwks_url()));
        config.jwks_min_refresh_interval = Duration::from_millis(300);
        tweak(&mut config);
        Verifier::new(config)
    }
}

/// Asserts the error and that its message repeats nothing from the token.
fn assert_refused(result: Result<Principal, AuthError>, expected: AuthError, token: &str) {
    let error = result.expect_err("the token must be refused");
    assert_eq!(error, expected);
    let message = error.to_string();
    for part in token.split('.').filter(|p| p.len() > 3) {
        assert!(!message.contains(part), "{message} echoes the token");
    }
    for secret in ["Ana Ruiz", "user-4711", "idp.example.test", "careboard-api"] {
        assert!(!message.contains(secret), "{message} echoes a claim");
    }
}

// ---------------------------------------------------------------------------------
// Tokens.

#[tokio::test]
async fn an_rs256_token_from_the_provider_names_its_principal() {
    let key = rsa_key("rsa-1");
    let idp = Idp::start(vec![key.jwk.clone()]).await;
    let verifier = idp.verifier();
    let token = sign(Algorithm::RS256, &key.kid, &key.encoding, &claims());
    let principal = verifier
        .verify_header(Some(&format!("Bearer {token}")))
        .await
        .expect("a valid token is accepted");
    assert_eq!(principal.subject, "user-4711");
    assert_eq!(principal.name, "Ana Ruiz");
    assert_eq!(principal.role, Role::Coordinator);
    assert!(principal.scope.covers("TX", "pediatrics"));
    assert!(!principal.scope.covers("CA", "pediatrics"));
    assert_eq!(idp.fetches(), 1);
    // Cached: a second token costs no fetch.
    verifier.verify(&token).await.unwrap();
    assert_eq!(idp.fetches(), 1);
}

#[tokio::test]
async fn es256_tokens_are_accepted_and_the_discovery_document_leads_to_the_keys() {
    let key = ec_key("ec-1");
    let idp = Idp::start(vec![key.jwk.clone()]).await;
    let verifier = idp.verifier_with(|c| {
        c.keys = KeySource::Discovery(format!("{}/.well-known/openid-configuration", idp.base))
    });
    let mut c = claims();
    c["role"] = json!("provider");
    let provider_id = Uuid::new_v4();
    c["provider_id"] = json!(provider_id.to_string());
    let token = sign(Algorithm::ES256, &key.kid, &key.encoding, &c);
    let principal = verifier.verify(&token).await.expect("ES256 via discovery");
    assert_eq!(principal.scope, Scope::Provider { provider_id });
}

#[tokio::test]
async fn a_discovery_document_for_another_issuer_yields_no_keys() {
    let key = ec_key("ec-1");
    let idp = Idp::start(vec![key.jwk.clone()]).await;
    *idp.state.issuer.lock().unwrap() = "https://evil.example".into();
    let verifier = idp.verifier_with(|c| {
        c.keys = KeySource::Discovery(format!("{}/.well-known/openid-configuration", idp.base))
    });
    let token = sign(Algorithm::ES256, &key.kid, &key.encoding, &claims());
    assert_refused(
        verifier.verify(&token).await,
        AuthError::KeysUnavailable,
        &token,
    );
}

#[tokio::test]
async fn missing_and_garbage_tokens_are_refused() {
    let key = rsa_key("rsa-1");
    let idp = Idp::start(vec![key.jwk.clone()]).await;
    let verifier = idp.verifier();
    assert_eq!(verifier.verify_header(None).await, Err(AuthError::Missing));
    assert_eq!(
        verifier.verify_header(Some("  ")).await,
        Err(AuthError::Missing)
    );
    assert_eq!(verifier.verify("").await, Err(AuthError::Missing));
    for garbage in ["Bearer not-a-token", "Bearer a.b.c", "Bearer ...."] {
        let result = verifier.verify_header(Some(garbage)).await;
        assert_refused(result, AuthError::Malformed, garbage);
    }
    // Not a bearer token at all: said so, not called a malformed JWT.
    let result = verifier.verify_header(Some("Basic dXNlcjpwYXNz")).await;
    assert_refused(result, AuthError::NotBearer, "Basic dXNlcjpwYXNz");
    assert_eq!(
        verifier.verify_header(Some("Bearer")).await,
        Err(AuthError::NotBearer)
    );
    let huge = "x".repeat(100_000);
    assert_eq!(verifier.verify(&huge).await, Err(AuthError::Malformed));
    // A well-formed header over a payload that is not JSON.
    let token = sign(Algorithm::RS256, &key.kid, &key.encoding, &claims());
    let mut parts: Vec<&str> = token.split('.').collect();
    let junk = URL_SAFE_NO_PAD.encode("not json");
    parts[1] = &junk;
    let bad = parts.join(".");
    assert!(verifier.verify(&bad).await.is_err());
}

#[tokio::test]
async fn a_token_with_a_bad_signature_is_refused() {
    let key = rsa_key("rsa-1");
    let ec = ec_key("ec-1");
    let impostor = ec_key("ec-1");
    let idp = Idp::start(vec![key.jwk.clone(), ec.jwk.clone()]).await;
    let verifier = idp.verifier();
    // Claims changed after signing: a coordinator promoting themselves to admin.
    let token = sign(Algorithm::RS256, &key.kid, &key.encoding, &claims());
    let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
    let mut forged = claims();
    forged["role"] = json!("admin");
    parts[1] = URL_SAFE_NO_PAD.encode(forged.to_string());
    let forged_token = parts.join(".");
    assert_refused(
        verifier.verify(&forged_token).await,
        AuthError::BadSignature,
        &forged_token,
    );
    // Signed by another key that claims the provider's key id.
    let token = sign(Algorithm::ES256, &ec.kid, &impostor.encoding, &claims());
    assert_refused(
        verifier.verify(&token).await,
        AuthError::BadSignature,
        &token,
    );
    // A key of one family named for another algorithm's token.
    let token = sign(Algorithm::ES256, &key.kid, &ec.encoding, &claims());
    assert_refused(verifier.verify(&token).await, AuthError::UnknownKey, &token);
}

#[tokio::test]
async fn expiry_and_not_before_are_checked_with_the_configured_leeway() {
    let key = rsa_key("rsa-1");
    let idp = Idp::start(vec![key.jwk.clone()]).await;
    let verifier = idp.verifier_with(|c| c.leeway = Duration::from_secs(30));
    let mut c = claims();
    c["exp"] = json!(now() - 120);
    let token = sign(Algorithm::RS256, &key.kid, &key.encoding, &c);
    assert_refused(verifier.verify(&token).await, AuthError::Expired, &token);
    c["exp"] = json!(now() - 10);
    let token = sign(Algorithm::RS256, &key.kid, &key.encoding, &c);
    assert!(verifier.verify(&token).await.is_ok(), "within the leeway");

    let mut c = claims();
    c["nbf"] = json!(now() + 300);
    let token = sign(Algorithm::RS256, &key.kid, &key.encoding, &c);
    assert_refused(
        verifier.verify(&token).await,
        AuthError::NotYetValid,
        &token,
    );
    c["nbf"] = json!(now() + 10);
    let token = sign(Algorithm::RS256, &key.kid, &key.encoding, &c);
    assert!(verifier.verify(&token).await.is_ok(), "within the leeway");

    let mut c = claims();
    c.as_object_mut().unwrap().remove("exp");
    let token = sign(Algorithm::RS256, &key.kid, &key.encoding, &c);
    assert_refused(
        verifier.verify(&token).await,
        AuthError::MissingClaim("exp".into()),
        &token,
    );
}

#[tokio::test]
async fn tokens_for_another_issuer_or_audience_are_refused() {
    let key = rsa_key("rsa-1");
    let idp = Idp::start(vec![key.jwk.clone()]).await;
    let verifier = idp.verifier();
    let mut c = claims();
    c["iss"] = json!("https://other-idp.example");
    let token = sign(Algorithm::RS256, &key.kid, &key.encoding, &c);
    assert_refused(
        verifier.verify(&token).await,
        AuthError::WrongIssuer,
        &token,
    );
    let mut c = claims();
    c["aud"] = json!("some-other-app");
    let token = sign(Algorithm::RS256, &key.kid, &key.encoding, &c);
    assert_refused(
        verifier.verify(&token).await,
        AuthError::WrongAudience,
        &token,
    );
    let mut c = claims();
    c["aud"] = json!(["some-other-app", AUDIENCE]);
    let token = sign(Algorithm::RS256, &key.kid, &key.encoding, &c);
    assert!(
        verifier.verify(&token).await.is_ok(),
        "one of several audiences"
    );
    let mut c = claims();
    c.as_object_mut().unwrap().remove("aud");
    let token = sign(Algorithm::RS256, &key.kid, &key.encoding, &c);
    assert_refused(
        verifier.verify(&token).await,
        AuthError::MissingClaim("aud".into()),
        &token,
    );
}

/// RFC 9068 access tokens say `typ: at+jwt`; ID tokens say `JWT`. Nothing looked at the
/// header's `typ`, so any signed JWT of the issuer with the right audience passed as an
/// access token. By default `at+jwt`, `JWT` and none are taken (what common providers
/// issue) and any other type is refused; in strict mode only `at+jwt` is.
#[tokio::test]
async fn the_token_type_in_the_header_is_checked_as_configured() {
    let key = ec_key("ec-typ");
    let idp = Idp::start(vec![key.jwk.clone()]).await;
    let typed = |typ: Option<&str>| {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(key.kid.clone());
        header.typ = typ.map(String::from);
        jsonwebtoken::encode(&header, &claims(), &key.encoding).expect("sign")
    };
    let compatible = idp.verifier();
    let strict = idp.verifier_with(|c| c.token_types = TokenTypes::Strict);
    for typ in [
        Some("at+jwt"),
        Some("application/at+jwt"),
        Some("JWT"),
        None,
    ] {
        let principal = compatible.verify(&typed(typ)).await;
        assert!(principal.is_ok(), "{typ:?} by default: {principal:?}");
    }
    for typ in [Some("at+jwt"), Some("Application/AT+JWT")] {
        let principal = strict.verify(&typed(typ)).await;
        assert!(principal.is_ok(), "{typ:?} in strict mode: {principal:?}");
    }
    for typ in ["logout+jwt", "secevent+jwt", "dpop+jwt"] {
        let token = typed(Some(typ));
        assert_refused(
            compatible.verify(&token).await,
            AuthError::WrongType(TokenTypes::Compatible),
            &token,
        );
    }
    for typ in [Some("JWT"), None, Some("logout+jwt")] {
        let token = typed(typ);
        let refused = strict.verify(&token).await;
        assert!(
            refused
                .as_ref()
                .is_err_and(|e| e.to_string().contains("`typ` must be at+jwt only")),
            "{typ:?}: {refused:?}"
        );
        assert_refused(refused, AuthError::WrongType(TokenTypes::Strict), &token);
    }
}

/// A server in strict mode (`--token-types strict`) answers a token of the wrong type
/// with 401 `UNAUTHENTICATED` and a message naming what it takes, writes nothing, and
/// refuses such a token on the websocket's upgrade too; an `at+jwt` token of the same
/// provider (its JWKS served over HTTP) acts.
#[tokio::test]
async fn a_strict_server_refuses_a_token_of_the_wrong_type_and_writes_nothing() {
    use clap::Parser;
    let cli =
        careboard::config::Cli::try_parse_from(["careboard", "--token-types", "strict"]).unwrap();
    assert_eq!(cli.serve.identity.token_types, TokenTypes::Strict);
    let pool = helpers::fresh_database().await;
    let mut state = careboard::app::state(
        pool.clone(),
        careboard::config::GraphqlLimits::default(),
        Duration::from_secs(5),
    );
    let provider = helpers::idp::idp();
    let mut config = provider.verifier_config();
    config.token_types = cli.serve.identity.token_types;
    state.auth = Some(Verifier::new(config));
    let server = careboard::app::RunningServer::start("127.0.0.1:0", state)
        .await
        .unwrap();
    let claims = helpers::idp::Who::coordinator().claims();
    let post = |token: String| {
        reqwest::Client::new()
            .post(server.url("/graphql"))
            .bearer_auth(token)
            .json(&json!({ "query": REGISTER }))
            .send()
    };
    let id_token = provider.sign_typed(&claims, Some("JWT"));
    let response = post(id_token.clone()).await.unwrap();
    assert_eq!(response.status(), 401);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["errors"][0]["extensions"]["code"], "UNAUTHENTICATED");
    let message = body["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(message.contains("`typ` must be at+jwt only"), "{body}");
    match crate::helpers::ws_upgrade(&server.url("/graphql/ws"), Some(&id_token)).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 401)
        }
        other => panic!("expected 401, got {:?}", other.map(|_| ())),
    }
    let events = || async {
        sqlx::query_scalar::<_, i64>("select count(*) from events")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    assert_eq!(events().await, 0, "nothing was written");
    let access_token = provider.sign_typed(&claims, Some("at+jwt"));
    let response = post(access_token).await.unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert!(body["errors"].is_null(), "{body}");
    assert_eq!(events().await, 1);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn unsigned_and_hmac_tokens_are_refused_even_with_the_public_key_as_secret() {
    let key = rsa_key("rsa-1");
    let idp = Idp::start(vec![key.jwk.clone()]).await;
    let verifier = idp.verifier();
    // alg: none, with and without a signature part.
    let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT","kid":"rsa-1"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims().to_string());
    for token in [
        format!("{header}.{payload}."),
        format!("{header}.{payload}.c2ln"),
    ] {
        assert_refused(
            verifier.verify(&token).await,
            AuthError::UnsupportedAlgorithm(Some("none")),
            &token,
        );
    }
    // HS256 "signed" with the provider's public key, in every form one might publish it.
    let n = key.jwk["n"].as_str().unwrap().to_string();
    for secret in [key.public_pem.as_bytes(), n.as_bytes()] {
        let token = sign(
            Algorithm::HS256,
            &key.kid,
            &EncodingKey::from_secret(secret),
            &claims(),
        );
        assert_refused(
            verifier.verify(&token).await,
            AuthError::UnsupportedAlgorithm(Some("HS256")),
            &token,
        );
    }
    // Other algorithms outside the allow-list.
    let token = sign(Algorithm::RS384, &key.kid, &key.encoding, &claims());
    assert_refused(
        verifier.verify(&token).await,
        AuthError::UnsupportedAlgorithm(Some("RS384")),
        &token,
    );
}

#[tokio::test]
async fn a_secret_key_in_the_jwks_is_never_used() {
    // A JWKS that (wrongly) publishes an HMAC secret: Careboard ignores it.
    let idp = Idp::start(vec![
        json!({"kty": "oct", "kid": "shared", "k": "c2VjcmV0"}),
    ])
    .await;
    let verifier = idp.verifier();
    let token = sign(
        Algorithm::HS256,
        "shared",
        &EncodingKey::from_secret(b"secret"),
        &claims(),
    );
    assert!(matches!(
        verifier.verify(&token).await,
        Err(AuthError::UnsupportedAlgorithm(_))
    ));
}

#[tokio::test]
async fn an_unknown_key_id_refreshes_the_jwks_at_most_once_per_interval() {
    let old = rsa_key("2024-key");
    let new = ec_key("2025-key");
    let idp = Idp::start(vec![old.jwk.clone()]).await;
    let verifier = idp.verifier_with(|c| c.jwks_min_refresh_interval = Duration::from_millis(300));
    let old_token = sign(Algorithm::RS256, &old.kid, &old.encoding, &claims());
    verifier.verify(&old_token).await.unwrap();
    assert_eq!(idp.fetches(), 1);

    // The provider rotates: the new key appears in its JWKS.
    idp.publish(vec![old.jwk.clone(), new.jwk.clone()]);
    tokio::time::sleep(Duration::from_millis(350)).await;
    let new_token = sign(Algorithm::ES256, &new.kid, &new.encoding, &claims());
    let principal = verifier
        .verify(&new_token)
        .await
        .expect("refreshed on the new kid");
    assert_eq!(principal.subject, "user-4711");
    assert_eq!(idp.fetches(), 2);

    // Made-up key ids cannot make Careboard hammer the provider.
    let fake = ec_key("made-up-1");
    for i in 0..20 {
        let t = sign(
            Algorithm::ES256,
            &format!("made-up-{i}"),
            &fake.encoding,
            &claims(),
        );
        assert_refused(verifier.verify(&t).await, AuthError::UnknownKey, &t);
    }
    assert_eq!(idp.fetches(), 2, "no fetch within the interval");
    tokio::time::sleep(Duration::from_millis(350)).await;
    let t = sign(Algorithm::ES256, "made-up-x", &fake.encoding, &claims());
    assert_refused(verifier.verify(&t).await, AuthError::UnknownKey, &t);
    assert_eq!(idp.fetches(), 3, "one fetch once the interval has passed");
    // Both keys still work.
    verifier.verify(&old_token).await.unwrap();
    verifier.verify(&new_token).await.unwrap();
}

#[tokio::test]
async fn cached_keys_keep_working_while_the_jwks_endpoint_is_down() {
    let key = rsa_key("rsa-1");
    let idp = Idp::start(vec![key.jwk.clone()]).await;
    let verifier = idp.verifier_with(|c| {
        c.jwks_min_refresh_interval = Duration::from_millis(50);
        c.jwks_max_age = Duration::from_millis(100);
    });
    let token = sign(Algorithm::RS256, &key.kid, &key.encoding, &claims());
    verifier.verify(&token).await.unwrap();
    idp.set_down(true);
    for _ in 0..3 {
        // The cache is stale: every round tries a refresh, which fails.
        tokio::time::sleep(Duration::from_millis(150)).await;
        verifier
            .verify(&token)
            .await
            .expect("served from the cache");
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        idp.fetches() >= 3,
        "refreshes were attempted: {}",
        idp.fetches()
    );
    // A key the cache does not hold is unknown, not a server failure.
    let other = ec_key("ec-9");
    let t = sign(Algorithm::ES256, &other.kid, &other.encoding, &claims());
    assert_refused(verifier.verify(&t).await, AuthError::UnknownKey, &t);
}

#[tokio::test]
async fn with_the_jwks_endpoint_down_and_nothing_cached_the_error_says_so() {
    let key = rsa_key("rsa-1");
    let idp = Idp::start(vec![key.jwk.clone()]).await;
    idp.set_down(true);
    let verifier = idp.verifier_with(|c| c.jwks_min_refresh_interval = Duration::from_millis(200));
    let token = sign(Algorithm::RS256, &key.kid, &key.encoding, &claims());
    let error = verifier.verify(&token).await.unwrap_err();
    assert_eq!(error, AuthError::KeysUnavailable);
    assert!(error.is_server_side());
    assert!(
        error
            .to_string()
            .contains("signing keys could not be fetched"),
        "{error}"
    );
    // Nothing listening at all.
    let nowhere = Verifier::new(VerifierConfig::new(
        ISSUER,
        AUDIENCE,
        KeySource::JwksUrl("http://127.0.0.1:9/certs".into()),
    ));
    assert_eq!(
        nowhere.verify(&token).await,
        Err(AuthError::KeysUnavailable)
    );
    // The provider comes back: after the refresh interval, tokens verify.
    idp.set_down(false);
    tokio::time::sleep(Duration::from_millis(250)).await;
    verifier.verify(&token).await.expect("recovered");
}

#[tokio::test]
async fn claims_that_make_no_principal_are_refused_without_echoing_them() {
    let key = rsa_key("rsa-1");
    let idp = Idp::start(vec![key.jwk.clone()]).await;
    let verifier = idp.verifier();
    let mut c = claims();
    c["role"] = json!("Ana Ruiz");
    let token = sign(Algorithm::RS256, &key.kid, &key.encoding, &c);
    let result = verifier.verify(&token).await;
    assert!(matches!(result, Err(AuthError::Claims(_))), "{result:?}");
    assert!(!result.unwrap_err().to_string().contains("Ana Ruiz"));
}

// ---------------------------------------------------------------------------------
// The development issuer and `careboard token`.

fn careboard(data_dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_careboard"))
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .env_remove("DATABASE_URL")
        .env_remove("CAREBOARD_OIDC_ISSUER")
        .output()
        .expect("run careboard")
}

/// The verifier a server with default settings builds for `data_dir`.
fn server_verifier(data_dir: &std::path::Path) -> Verifier {
    use clap::Parser;
    let cli = careboard::config::Cli::try_parse_from(["careboard"]).unwrap();
    Verifier::new(cli.serve.identity.verifier_config(data_dir).unwrap())
}

#[tokio::test]
async fn careboard_token_prints_a_token_the_server_on_the_same_data_dir_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let out = careboard(
        dir.path(),
        &[
            "token",
            "--role",
            "coordinator",
            "--name",
            "Ana Ruiz",
            "--region",
            "tx",
            "--specialty",
            "Pediatrics",
            "--ttl",
            "30m",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let key_file = dir.path().join(careboard::identity::dev_issuer::KEY_FILE);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let principal = server_verifier(dir.path()).verify(&token).await.unwrap();
    assert_eq!(principal.name, "Ana Ruiz");
    assert_eq!(principal.role, Role::Coordinator);
    assert!(principal.scope.covers("TX", "pediatrics"));
    assert!(!principal.scope.covers("CA", "pediatrics"));

    // Another data dir has another key: its server refuses this token.
    let other = tempfile::tempdir().unwrap();
    assert_eq!(
        server_verifier(other.path()).verify(&token).await,
        Err(AuthError::UnknownKey)
    );

    let provider_id = Uuid::new_v4().to_string();
    let out = careboard(
        dir.path(),
        &[
            "token",
            "--role",
            "provider",
            "--name",
            "Dr. Lee",
            "--provider-id",
            &provider_id,
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let principal = server_verifier(dir.path()).verify(&token).await.unwrap();
    assert_eq!(
        principal.scope.clone(),
        Scope::Provider {
            provider_id: provider_id.parse().unwrap()
        }
    );

    let out = careboard(
        dir.path(),
        &[
            "token",
            "--role",
            "patient",
            "--name",
            "Sam",
            "--patient-id",
            "patient-42",
            "--ttl",
            "90s",
        ],
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let principal = server_verifier(dir.path()).verify(&token).await.unwrap();
    assert_eq!(
        principal.scope,
        Scope::Patient {
            patient_id: "patient-42".into()
        }
    );
    assert_eq!(principal.subject, "patient-42");

    // Without --patient-id the token is for a new patient, and the id is named: a
    // newcomer could not tell which patient such a token was for.
    let out = careboard(dir.path(), &["token", "--role", "patient", "--name", "Sam"]);
    assert!(out.status.success());
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let principal = server_verifier(dir.path()).verify(&token).await.unwrap();
    let Scope::Patient { patient_id } = principal.scope else {
        panic!("{:?}", principal.scope)
    };
    let note = String::from_utf8_lossy(&out.stderr);
    assert!(
        note.contains(&format!("new patient, {patient_id}"))
            && note.contains(&format!("--patient-id {patient_id}")),
        "{note}"
    );

    let out = careboard(
        dir.path(),
        &["token", "--role", "provider", "--name", "Dr. Lee"],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--provider-id"));
    let out = careboard(dir.path(), &["token", "--role", "nurse", "--name", "X"]);
    assert!(!out.status.success());
}

/// `careboard token`'s options, parsed as the command line parses them.
fn token_args(args: &[&str]) -> careboard::identity::dev_issuer::TokenArgs {
    use clap::Parser;
    #[derive(clap::Parser)]
    struct TokenCli {
        #[command(flatten)]
        args: careboard::identity::dev_issuer::TokenArgs,
    }
    TokenCli::try_parse_from(std::iter::once("token").chain(args.iter().copied()))
        .unwrap()
        .args
}

#[tokio::test]
async fn an_expired_development_token_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = careboard::identity::dev_issuer::DevIssuer::load_or_create(dir.path()).unwrap();
    let args = token_args(&["--role", "admin", "--name", "Root", "--ttl", "1s"]);
    let token = issuer.issue(&args).unwrap();
    let verifier = server_verifier(dir.path());
    assert_eq!(verifier.verify(&token).await.unwrap().role, Role::Admin);
    let mut config = verifier.config().clone();
    config.leeway = Duration::ZERO;
    let strict = Verifier::new(config);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(strict.verify(&token).await, Err(AuthError::Expired));
}

// ---------------------------------------------------------------------------------
// The access log.

fn record(i: usize) -> AccessRecord {
    let principal = Principal::new(
        format!("user-{}", i % 7),
        "Ana Ruiz",
        Scope::Coordinator {
            regions: None,
            specialties: None,
        },
    );
    AccessRecord {
        principal,
        operation: "board".into(),
        operation_name: Some(format!("Op{i}")),
        correlation_id: Uuid::new_v4().to_string(),
        client_addr: Some("127.0.0.1:50000".into()),
        disclosed: if i % 2 == 0 {
            Disclosure::Board {
                board_id: Uuid::new_v4(),
                version: i as i64,
                patient_ids: Vec::new(),
            }
        } else {
            Disclosure::Appointments {
                appointments: vec![AppointmentRef {
                    appointment_id: Uuid::new_v4(),
                    patient_id: Some(format!("patient-{i}")),
                }],
            }
        },
    }
}

async fn write_records(log: &AccessLog, n: usize) -> Vec<i64> {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let log = log.clone();
            tokio::spawn(async move { log.record(record(i)).await })
        })
        .collect();
    let mut seqs = Vec::new();
    for t in tasks {
        seqs.push(t.await.unwrap().expect("recorded").seq);
    }
    seqs.sort();
    seqs
}

#[tokio::test]
async fn concurrent_records_are_chained_in_group_commits_and_verify() {
    let pool = helpers::fresh_database().await;
    let log = AccessLog::start(pool.clone(), AccessLogOptions::default());
    let seqs = write_records(&log, 300).await;
    assert_eq!(
        seqs,
        (1..=300).collect::<Vec<i64>>(),
        "every record, no gaps"
    );
    let groups: i64 = sqlx::query_scalar("select count(distinct recorded_at) from access_log")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(
        groups < 300,
        "records were committed in groups ({groups} commits)"
    );
    let report = access_log::verify(&pool).await.unwrap();
    assert_eq!(report.verified, 300);
    assert_eq!(report.first_broken, None);
}

#[tokio::test]
async fn writers_in_two_processes_share_one_chain() {
    let pool = helpers::fresh_database().await;
    let a = AccessLog::start(pool.clone(), AccessLogOptions::default());
    let b = AccessLog::start(
        pool.clone(),
        AccessLogOptions {
            max_batch: 3,
            ..Default::default()
        },
    );
    let (x, y) = tokio::join!(write_records(&a, 120), write_records(&b, 120));
    let mut all: Vec<i64> = x.into_iter().chain(y).collect();
    all.sort();
    assert_eq!(all, (1..=240).collect::<Vec<i64>>());
    let report = access_log::verify(&pool).await.unwrap();
    assert_eq!((report.verified, report.first_broken), (240, None));
}

#[tokio::test]
async fn the_database_refuses_to_update_delete_or_truncate_the_access_log() {
    let pool = helpers::fresh_database().await;
    let log = AccessLog::start(pool.clone(), AccessLogOptions::default());
    write_records(&log, 5).await;
    for statement in [
        "update access_log set subject = 'someone-else' where seq = 2",
        "delete from access_log where seq = 2",
        "delete from access_log",
        "truncate access_log",
        "update access_log_head set seq = 1",
        "delete from access_log_head",
        "truncate access_log_head",
    ] {
        let error = sqlx::query(statement)
            .execute(&pool)
            .await
            .expect_err(statement)
            .to_string();
        assert!(
            error.contains("append-only") || error.contains("only moves forward"),
            "{statement}: {error}"
        );
    }
    // A row that does not continue the chain cannot be slipped in either.
    let error = sqlx::query(
        "insert into access_log select seq + 1, recorded_at, subject, role, name, scope, \
         operation, operation_name, correlation_id, client_addr, disclosed, \
         decode(repeat('ab', 32), 'hex'), hash from access_log where seq = 5",
    )
    .execute(&pool)
    .await
    .expect_err("a forged link")
    .to_string();
    assert!(error.contains("does not continue the chain"), "{error}");
    let report = access_log::verify(&pool).await.unwrap();
    assert_eq!((report.verified, report.first_broken), (5, None));
}

/// Runs `statements` as the owner with the append-only triggers switched off, as an
/// attacker with database superuser access could.
async fn tamper(pool: &sqlx::PgPool, statements: &[&str]) {
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("alter table access_log disable trigger user")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("alter table access_log_head disable trigger user")
        .execute(&mut *tx)
        .await
        .unwrap();
    for s in statements {
        sqlx::query(s).execute(&mut *tx).await.unwrap();
    }
    sqlx::query("alter table access_log enable trigger user")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("alter table access_log_head enable trigger user")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

#[tokio::test]
async fn verify_finds_a_row_altered_with_the_triggers_off() {
    let pool = helpers::fresh_database().await;
    let log = AccessLog::start(pool.clone(), AccessLogOptions::default());
    write_records(&log, 10).await;
    tamper(
        &pool,
        &["update access_log set subject = 'nobody' where seq = 4"],
    )
    .await;
    let report = access_log::verify(&pool).await.unwrap();
    assert_eq!(report.verified, 3);
    let broken = report.first_broken.expect("found");
    assert_eq!(broken.seq, 4);
    assert!(broken.reason.contains("altered"), "{}", broken.reason);

    // Recomputing the row's hash does not help: the next row no longer follows it.
    let pool = helpers::fresh_database().await;
    let log = AccessLog::start(pool.clone(), AccessLogOptions::default());
    write_records(&log, 10).await;
    tamper(
        &pool,
        &["update access_log set disclosed = '{\"kind\":\"board\",\"boardId\":\"00000000-0000-0000-0000-000000000000\",\"version\":1}', \
           hash = sha256(hash) where seq = 6"],
    )
    .await;
    let broken = access_log::verify(&pool)
        .await
        .unwrap()
        .first_broken
        .unwrap();
    assert_eq!(broken.seq, 6, "{}", broken.reason);
}

#[tokio::test]
async fn verify_finds_deleted_rows_in_the_middle_and_at_the_end() {
    let pool = helpers::fresh_database().await;
    let log = AccessLog::start(pool.clone(), AccessLogOptions::default());
    write_records(&log, 10).await;
    tamper(&pool, &["delete from access_log where seq = 7"]).await;
    let report = access_log::verify(&pool).await.unwrap();
    let broken = report.first_broken.expect("found");
    assert_eq!((report.verified, broken.seq), (6, 7));
    assert!(broken.reason.contains("missing"), "{}", broken.reason);

    let pool = helpers::fresh_database().await;
    let log = AccessLog::start(pool.clone(), AccessLogOptions::default());
    write_records(&log, 10).await;
    tamper(&pool, &["delete from access_log where seq > 8"]).await;
    let report = access_log::verify(&pool).await.unwrap();
    let broken = report.first_broken.expect("found");
    assert_eq!((report.verified, broken.seq), (8, 9));
    assert!(
        broken.reason.contains("removed from the end"),
        "{}",
        broken.reason
    );
}

#[tokio::test]
async fn a_record_that_cannot_be_written_is_reported_to_the_request() {
    let pool = helpers::fresh_database().await;
    let log = AccessLog::start(pool.clone(), AccessLogOptions::default());
    write_records(&log, 2).await;
    pool.close().await;
    let result = log.record(record(3)).await;
    assert_eq!(result, Err(access_log::AccessLogError::NotRecorded));
}

#[tokio::test]
async fn careboard_audit_verify_reports_the_first_broken_record() {
    let (pool, url) = helpers::fresh_database_with_url().await;
    let log = AccessLog::start(pool.clone(), AccessLogOptions::default());
    write_records(&log, 6).await;
    let run = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_careboard"))
            .args(["audit", "verify"])
            .env("DATABASE_URL", &url)
            .output()
            .expect("run careboard audit verify")
    };
    let out = run();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("intact: 6 record(s)"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    tamper(
        &pool,
        &["update access_log set role = 'admin' where seq = 3"],
    )
    .await;
    let out = run();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("broken at record 3"), "{stderr}");
}

// ---------------------------------------------------------------------------------
// The HTTP edge with `--auth on`.

async fn server_with_auth(
    data_dir: &std::path::Path,
) -> (careboard::app::RunningServer, sqlx::PgPool) {
    let pool = helpers::fresh_database().await;
    let issuer = careboard::identity::dev_issuer::DevIssuer::load_or_create(data_dir).unwrap();
    let mut state = careboard::app::state(
        pool.clone(),
        careboard::config::GraphqlLimits::default(),
        Duration::from_secs(5),
    );
    state.auth = Some(Verifier::new(issuer.verifier_config()));
    let server = careboard::app::RunningServer::start("127.0.0.1:0", state)
        .await
        .unwrap();
    (server, pool)
}

fn dev_token(data_dir: &std::path::Path, args: &[&str]) -> String {
    let issuer = careboard::identity::dev_issuer::DevIssuer::load_or_create(data_dir).unwrap();
    issuer.issue(&token_args(args)).unwrap()
}

const REGISTER: &str = r#"mutation { registerProvider(input: {name: "Dr. Lee", specialties: ["pediatrics"], licensedRegions: ["TX"]}) { provider { id } } }"#;

#[tokio::test]
async fn with_auth_on_graphql_requests_need_a_valid_bearer_token() {
    let dir = tempfile::tempdir().unwrap();
    let (server, pool) = server_with_auth(dir.path()).await;
    let http = reqwest::Client::new();
    let post = |auth: Option<String>| {
        let mut request = http
            .post(server.url("/graphql"))
            .header("x-actor", "mallory")
            .json(&json!({ "query": REGISTER }));
        if let Some(a) = auth {
            request = request.header("authorization", a);
        }
        request.send()
    };

    let response = post(None).await.unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(
        response.headers()["www-authenticate"],
        r#"Bearer realm="careboard""#
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["errors"][0]["extensions"]["code"], "UNAUTHENTICATED");

    let garbage = "Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJldmUifQ.";
    let response = post(Some(garbage.into())).await.unwrap();
    assert_eq!(response.status(), 401);
    let challenge = response.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        challenge.starts_with(r#"Bearer realm="careboard", error="invalid_token""#),
        "{challenge}"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["errors"][0]["extensions"]["code"], "UNAUTHENTICATED");
    assert!(!body.to_string().contains("eyJ"), "{body}");

    // A token from another data dir's issuer is refused too.
    let other = tempfile::tempdir().unwrap();
    let foreign = dev_token(other.path(), &["--role", "admin", "--name", "Eve"]);
    let response = post(Some(format!("Bearer {foreign}"))).await.unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(
        sqlx::query_scalar::<_, i64>("select count(*) from events")
            .fetch_one(&pool)
            .await
            .unwrap(),
        0,
        "nothing was written"
    );

    let token = dev_token(dir.path(), &["--role", "coordinator", "--name", "Ana Ruiz"]);
    let response = post(Some(format!("Bearer {token}"))).await.unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert!(body["errors"].is_null(), "{body}");
    let actor: String = sqlx::query_scalar("select metadata->>'actor' from events limit 1")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        actor, "dev:ana-ruiz",
        "the verified subject, not the x-actor header"
    );
    let (role, name): (Option<String>, Option<String>) =
        sqlx::query_as("select metadata->>'actorRole', metadata->>'actorName' from events limit 1")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        (role.as_deref(), name.as_deref()),
        (Some("coordinator"), Some("Ana Ruiz")),
        "the principal's role and name are recorded beside the subject"
    );

    // A websocket upgrade with a bad token is refused before it is upgraded; one
    // without a token is upgraded (browsers cannot set headers there) and must bring
    // its token in connection_init.
    let ws = server.url("/graphql/ws");
    match crate::helpers::ws_upgrade(&ws, Some(&foreign)).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 401)
        }
        other => panic!("expected 401, got {:?}", other.map(|_| ())),
    }
    crate::helpers::ws_upgrade(&ws, None)
        .await
        .expect("an upgrade without a token waits for connection_init");
    crate::helpers::ws_upgrade(&ws, Some(&token))
        .await
        .expect("an authenticated upgrade is accepted");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn with_the_development_issuer_auth_on_refuses_a_network_reachable_bind() {
    let (_pool, url) = helpers::fresh_database_with_url().await;
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_careboard"))
        .args([
            "serve",
            "--auth",
            "on",
            "--bind",
            "0.0.0.0:0",
            "--projector",
            "off",
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .env("DATABASE_URL", &url)
        .env_remove("CAREBOARD_OIDC_ISSUER")
        .env("RUST_LOG", "warn")
        .output()
        .expect("run careboard serve");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("CAREBOARD_OIDC_ISSUER"), "{stderr}");
}

#[tokio::test]
async fn the_access_log_keeps_no_patient_name() {
    let pool = helpers::fresh_database().await;
    let log = AccessLog::start(pool.clone(), AccessLogOptions::default());
    let mut r = record(0);
    r.principal = Principal::new(
        "patient-77",
        "Zelda Quux-Marker",
        Scope::Patient {
            patient_id: "patient-77".into(),
        },
    );
    log.record(r).await.unwrap();
    log.record(record(1)).await.unwrap();
    let dump: String = sqlx::query_scalar("select string_agg(t::text, ' ') from access_log t")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(!dump.contains("Zelda"), "{dump}");
    assert!(dump.contains("patient-77"));
    assert!(dump.contains("Ana Ruiz"), "staff names are kept");
    let report = access_log::verify(&pool).await.unwrap();
    assert_eq!((report.verified, report.first_broken), (2, None));
}
