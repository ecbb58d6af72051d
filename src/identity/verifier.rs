//! Bearer token verification: algorithm allow-list, the header's `typ` (access tokens,
//! not ID tokens, where the provider marks them), signature against the issuer's keys,
//! issuer, audience, `exp`/`nbf` with a leeway; then the claims make a [`Principal`].
//!
//! Errors say what is wrong with a token, never what is in it.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};

use super::jwks::{JwksCache, KeyLookupError, KeySource, ALLOWED_ALGORITHMS};
use super::principal::{ClaimError, ClaimNames, Principal};

/// Longest token considered (identity providers' tokens are a few kilobytes).
const MAX_TOKEN_BYTES: usize = 16 * 1024;

#[derive(Debug, Clone)]
pub struct VerifierConfig {
    /// The `iss` every token must carry (also the discovery document's `issuer`).
    pub issuer: String,
    /// The `aud` every token must include: this service's client id or API identifier.
    pub audience: String,
    pub keys: KeySource,
    /// Clock skew tolerated on `exp` and `nbf`.
    pub leeway: Duration,
    pub claims: ClaimNames,
    /// Fetch the JWKS at most this often (unknown key ids included).
    pub jwks_min_refresh_interval: Duration,
    /// Refresh cached keys this old (in the background; they stay in use meanwhile).
    pub jwks_max_age: Duration,
    /// Which header `typ` values are accepted.
    pub token_types: TokenTypes,
}

/// Which header `typ` values a token may carry. RFC 9068 access tokens say `at+jwt`
/// (or `application/at+jwt`); ID tokens, and the access tokens of many identity
/// providers, say `JWT` or nothing. Media types compare case-insensitively, with or
/// without `application/` (RFC 7515 §4.1.9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum TokenTypes {
    /// `at+jwt`, `JWT` or no `typ`: what common providers issue as access tokens. Any
    /// other type (a logout token, a security event, `dpop+jwt`…) is refused.
    #[default]
    Compatible,
    /// `at+jwt` only: an ID token, or any token not marked as an RFC 9068 access
    /// token, is refused. For providers that mark their access tokens so.
    Strict,
}

impl TokenTypes {
    fn accepts(self, typ: TokenType) -> bool {
        matches!(
            (self, typ),
            (_, TokenType::Access) | (TokenTypes::Compatible, TokenType::Jwt | TokenType::Absent)
        )
    }

    /// What this setting accepts, in words (for the refusal's message).
    fn accepted(self) -> &'static str {
        match self {
            TokenTypes::Compatible => "at+jwt, JWT or none",
            TokenTypes::Strict => "at+jwt only",
        }
    }
}

/// The header's `typ`, as far as the check needs it (its text is never kept: the
/// header is the caller's, and errors must not repeat it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TokenType {
    Access,
    Jwt,
    Absent,
    Other,
}

impl TokenType {
    fn of(typ: Option<&str>) -> TokenType {
        let Some(typ) = typ else {
            return TokenType::Absent;
        };
        let typ = typ.to_ascii_lowercase();
        match typ.strip_prefix("application/").unwrap_or(&typ) {
            "at+jwt" => TokenType::Access,
            "jwt" => TokenType::Jwt,
            _ => TokenType::Other,
        }
    }
}

impl VerifierConfig {
    /// Settings for an issuer whose keys come from `keys`, with the defaults for the rest.
    pub fn new(issuer: impl Into<String>, audience: impl Into<String>, keys: KeySource) -> Self {
        VerifierConfig {
            issuer: issuer.into(),
            audience: audience.into(),
            keys,
            leeway: Duration::from_secs(30),
            claims: ClaimNames::default(),
            jwks_min_refresh_interval: Duration::from_secs(10),
            jwks_max_age: Duration::from_secs(600),
            token_types: TokenTypes::default(),
        }
    }
}

/// Why a request is not authenticated. Every variant is the client's problem except
/// [`AuthError::KeysUnavailable`], which is the server's (the provider is unreachable).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no bearer token: send `Authorization: Bearer <token>`")]
    Missing,
    #[error("the bearer token is not a well-formed JWT")]
    Malformed,
    /// An `Authorization` header of another scheme (`Basic …`), or no scheme.
    #[error("the Authorization header does not carry a bearer token: send `Authorization: Bearer <token>`")]
    NotBearer,
    /// More than one `Authorization` header: which one speaks for the caller would
    /// depend on the order a proxy put them in.
    #[error("the request carries more than one Authorization header: send exactly one")]
    SeveralHeaders,
    #[error("the token's signing algorithm{} is not accepted (accepted: RS256, ES256, EdDSA)", .0.map(|a| format!(" {a}")).unwrap_or_default())]
    UnsupportedAlgorithm(Option<&'static str>),
    #[error("the token is signed with a key the identity provider does not publish")]
    UnknownKey,
    #[error("the token's signature is not valid")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet (its nbf is in the future)")]
    NotYetValid,
    #[error("the token was issued by another issuer than the one this server trusts")]
    WrongIssuer,
    #[error("the token is not meant for this service (wrong audience)")]
    WrongAudience,
    /// The header's `typ` is not one the server accepts (an ID token where access
    /// tokens are required, or another kind of JWT).
    #[error("the token is not an access token this server accepts: its header's `typ` must be {}", .0.accepted())]
    WrongType(TokenTypes),
    #[error("the token has no `{0}` claim")]
    MissingClaim(String),
    #[error("the token's `{0}` claim is not in the expected form")]
    InvalidClaim(String),
    #[error("{0}")]
    Claims(#[from] ClaimError),
    #[error("cannot verify tokens now: the identity provider's signing keys could not be fetched and none are cached")]
    KeysUnavailable,
}

impl AuthError {
    /// Whether the fault is the server's (answer 503), not the token's (401).
    pub fn is_server_side(&self) -> bool {
        matches!(self, AuthError::KeysUnavailable)
    }
}

/// JOSE algorithm names worth naming back in an error (the header's `alg` is
/// attacker-controlled; only these fixed strings are ever echoed).
const KNOWN_ALGORITHMS: [&str; 14] = [
    "none", "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
    "ES256", "ES384", "ES512", "EdDSA",
];

/// What the check reads from a token's header: `alg`, `kid` and `typ`.
#[derive(Debug, PartialEq, Eq)]
struct JoseHeader {
    algorithm: Algorithm,
    kid: Option<String>,
    typ: TokenType,
}

/// Reads `alg`, `kid` and `typ` from the header without trusting anything else in it.
fn header(token: &str) -> Result<JoseHeader, AuthError> {
    let mut parts = token.split('.');
    let (Some(h), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed);
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(h.trim_end_matches('='))
        .map_err(|_| AuthError::Malformed)?;
    let value: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|_| AuthError::Malformed)?;
    let alg = value
        .get("alg")
        .and_then(|a| a.as_str())
        .ok_or(AuthError::Malformed)?;
    let algorithm = ALLOWED_ALGORITHMS
        .iter()
        .find(|a| format!("{a:?}") == alg)
        .copied()
        .ok_or_else(|| {
            AuthError::UnsupportedAlgorithm(
                KNOWN_ALGORITHMS
                    .iter()
                    .find(|k| k.eq_ignore_ascii_case(alg))
                    .copied(),
            )
        })?;
    // Keys named by the token itself (`jwk`, `jku`, `x5u`, `x5c`) are never used; the
    // keys come from the configured issuer only. Extensions the token marks critical
    // are not understood, so such a token must be refused (RFC 7515 §4.1.11).
    if value.get("crit").is_some() {
        return Err(AuthError::Malformed);
    }
    let kid = match value.get("kid") {
        None => None,
        Some(serde_json::Value::String(k)) if k.len() <= 256 => Some(k.clone()),
        Some(_) => return Err(AuthError::Malformed),
    };
    let typ = match value.get("typ") {
        None => TokenType::of(None),
        Some(serde_json::Value::String(t)) => TokenType::of(Some(t)),
        Some(_) => return Err(AuthError::Malformed),
    };
    Ok(JoseHeader {
        algorithm,
        kid,
        typ,
    })
}

/// Verifies bearer tokens of one issuer. Cheap to clone.
#[derive(Clone)]
pub struct Verifier {
    config: Arc<VerifierConfig>,
    keys: Arc<JwksCache>,
}

impl Verifier {
    pub fn new(config: VerifierConfig) -> Self {
        let keys = JwksCache::new(
            config.keys.clone(),
            config.issuer.clone(),
            config.jwks_min_refresh_interval,
            config.jwks_max_age,
        );
        Verifier {
            config: Arc::new(config),
            keys,
        }
    }

    pub fn config(&self) -> &VerifierConfig {
        &self.config
    }

    /// Fetches the keys now (at startup, so the first request need not wait).
    pub async fn prefetch(&self) {
        if !matches!(self.config.keys, KeySource::Static(_)) {
            self.keys.refresh().await;
        }
    }

    /// Verifies the value of an `Authorization` header (`Bearer <token>`).
    pub async fn verify_header(&self, header: Option<&str>) -> Result<Principal, AuthError> {
        let value = header.map(str::trim).filter(|h| !h.is_empty());
        let Some(value) = value else {
            return Err(AuthError::Missing);
        };
        let (scheme, token) = value.split_once(' ').ok_or(AuthError::NotBearer)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(AuthError::NotBearer);
        }
        self.verify(token.trim()).await
    }

    /// Verifies a token and reads its principal.
    pub async fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        self.verify_expiring(token)
            .await
            .map(|(principal, _)| principal)
    }

    /// Verifies a token: its principal, and when it expires (its `exp`, a Unix time in
    /// seconds), so a long-lived connection can end when its token does.
    pub async fn verify_expiring(&self, token: &str) -> Result<(Principal, i64), AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::Malformed);
        }
        let JoseHeader {
            algorithm,
            kid,
            typ,
        } = header(token)?;
        // Before the keys are looked up: a token of the wrong kind is refused whatever
        // its signature, and costs no JWKS fetch.
        if !self.config.token_types.accepts(typ) {
            return Err(AuthError::WrongType(self.config.token_types));
        }
        let key = self
            .keys
            .key(kid.as_deref(), algorithm)
            .await
            .map_err(|e| match e {
                KeyLookupError::Unknown => AuthError::UnknownKey,
                KeyLookupError::Unavailable => AuthError::KeysUnavailable,
            })?;
        let mut validation = Validation::new(algorithm);
        validation.algorithms = vec![key.algorithm];
        validation.leeway = self.config.leeway.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&[&self.config.audience]);
        validation.required_spec_claims =
            HashSet::from(["exp", "iss", "aud", "sub"].map(String::from));
        let data = jsonwebtoken::decode::<serde_json::Value>(token, &key.key, &validation)
            .map_err(|e| match e.into_kind() {
                ErrorKind::InvalidSignature => AuthError::BadSignature,
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
                ErrorKind::InvalidAudience => AuthError::WrongAudience,
                ErrorKind::MissingRequiredClaim(c) => AuthError::MissingClaim(c),
                ErrorKind::InvalidClaimFormat(c) => AuthError::InvalidClaim(c),
                ErrorKind::InvalidAlgorithm => AuthError::UnsupportedAlgorithm(None),
                ErrorKind::InvalidEcdsaKey
                | ErrorKind::InvalidEddsaKey
                | ErrorKind::InvalidRsaKey(_)
                | ErrorKind::InvalidKeyFormat => {
                    tracing::warn!(
                        "a key from the identity provider's JWKS cannot verify signatures"
                    );
                    AuthError::BadSignature
                }
                _ => AuthError::Malformed,
            })?;
        let expires_at = data
            .claims
            .get("exp")
            .and_then(|e| e.as_f64())
            .ok_or_else(|| AuthError::InvalidClaim("exp".into()))? as i64;
        let principal = Principal::from_claims(&data.claims, &self.config.claims)?;
        Ok((principal, expires_at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        URL_SAFE_NO_PAD.encode(s)
    }

    #[test]
    fn the_header_names_only_algorithms_from_the_allow_list() {
        let token = |h: &str| format!("{}.{}.sig", b64(h), b64("{}"));
        assert_eq!(
            header(&token(r#"{"alg":"none"}"#)),
            Err(AuthError::UnsupportedAlgorithm(Some("none")))
        );
        assert_eq!(
            header(&token(r#"{"alg":"HS256","kid":"k"}"#)),
            Err(AuthError::UnsupportedAlgorithm(Some("HS256")))
        );
        let odd = header(&token(r#"{"alg":"secret-stuff-from-the-token"}"#)).unwrap_err();
        assert_eq!(odd, AuthError::UnsupportedAlgorithm(None));
        assert!(!odd.to_string().contains("secret"));
        assert_eq!(
            header(&token(r#"{"alg":"ES256","kid":"k1"}"#)),
            Ok(JoseHeader {
                algorithm: Algorithm::ES256,
                kid: Some("k1".into()),
                typ: TokenType::Absent,
            })
        );
        assert_eq!(
            header(&token(r#"{"alg":"ES256","crit":["exp-ext"],"exp-ext":1}"#)),
            Err(AuthError::Malformed)
        );
        assert_eq!(header("a.b"), Err(AuthError::Malformed));
        assert_eq!(header("!!.b.c"), Err(AuthError::Malformed));
    }

    #[test]
    fn the_type_is_read_as_a_media_type_and_judged_by_the_setting() {
        let typ = |h: &str| header(&format!("{}.{}.sig", b64(h), b64("{}"))).map(|h| h.typ);
        assert_eq!(
            typ(r#"{"alg":"ES256","typ":"at+jwt"}"#),
            Ok(TokenType::Access)
        );
        assert_eq!(
            typ(r#"{"alg":"ES256","typ":"application/AT+JWT"}"#),
            Ok(TokenType::Access)
        );
        assert_eq!(typ(r#"{"alg":"ES256","typ":"JWT"}"#), Ok(TokenType::Jwt));
        assert_eq!(
            typ(r#"{"alg":"ES256","typ":"logout+jwt"}"#),
            Ok(TokenType::Other)
        );
        assert_eq!(typ(r#"{"alg":"ES256","typ":7}"#), Err(AuthError::Malformed));
        let all = [
            TokenType::Access,
            TokenType::Jwt,
            TokenType::Absent,
            TokenType::Other,
        ];
        let accepted = |setting: TokenTypes| {
            all.iter()
                .filter(|t| setting.accepts(**t))
                .copied()
                .collect::<Vec<_>>()
        };
        assert_eq!(
            accepted(TokenTypes::Compatible),
            [TokenType::Access, TokenType::Jwt, TokenType::Absent]
        );
        assert_eq!(accepted(TokenTypes::Strict), [TokenType::Access]);
    }
}
