//! The identity provider's signing keys: fetched over HTTP (a JWKS URL, or the
//! `jwks_uri` of an OpenID Connect discovery document), cached, refreshed when a token
//! names an unknown key id or the cache grows old (at most once per
//! `min_refresh_interval`), and kept in use while the endpoint is down.

use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;

/// The only algorithms Careboard accepts. Never `none`, never HMAC: a verifier that
/// holds only public keys must not accept a token "signed" with one as a shared secret.
pub const ALLOWED_ALGORITHMS: [Algorithm; 3] =
    [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA];

/// Largest JWKS or discovery document read.
const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;

/// Where the keys come from.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// Keys held in this process (the development issuer): never fetched.
    Static(Vec<Jwk>),
    /// A JWKS URL.
    JwksUrl(String),
    /// An OpenID Connect discovery document (`.../.well-known/openid-configuration`)
    /// whose `jwks_uri` is used; its `issuer` must be the configured issuer.
    Discovery(String),
}

/// A usable verification key.
#[derive(Clone)]
pub struct VerificationKey {
    pub kid: Option<String>,
    /// The one algorithm this key verifies.
    pub algorithm: Algorithm,
    pub key: DecodingKey,
}

/// Why no key could be found for a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyLookupError {
    /// The keys are known, and none has this id (or fits this algorithm).
    Unknown,
    /// No keys at all: the endpoint has not answered yet (or never with usable keys).
    Unavailable,
}

/// The algorithm a JWK verifies, if it is one Careboard accepts; `None` for keys meant
/// for encryption, HMAC secrets, other curves and malformed keys.
fn usable(jwk: &Jwk) -> Option<VerificationKey> {
    if matches!(
        jwk.common.public_key_use,
        Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))
    ) {
        return None;
    }
    let by_shape = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Algorithm::ES256,
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            // The verifier slices 32 bytes off the key: a shorter one must not get there.
            let x = URL_SAFE_NO_PAD.decode(p.x.as_bytes()).ok()?;
            if x.len() != 32 {
                return None;
            }
            Algorithm::EdDSA
        }
        _ => return None,
    };
    let declared = match jwk.common.key_algorithm {
        None => None,
        Some(KeyAlgorithm::RS256) => Some(Algorithm::RS256),
        Some(KeyAlgorithm::ES256) => Some(Algorithm::ES256),
        Some(KeyAlgorithm::EdDSA) => Some(Algorithm::EdDSA),
        Some(_) => return None,
    };
    if declared.is_some_and(|d| d != by_shape) {
        return None;
    }
    if let AlgorithmParameters::EllipticCurve(p) = &jwk.algorithm {
        // Both coordinates of a P-256 point are 32 bytes.
        let ok = |c: &str| URL_SAFE_NO_PAD.decode(c).is_ok_and(|b| b.len() == 32);
        if !ok(&p.x) || !ok(&p.y) {
            return None;
        }
    }
    Some(VerificationKey {
        kid: jwk.common.key_id.clone(),
        algorithm: by_shape,
        key: DecodingKey::from_jwk(jwk).ok()?,
    })
}

/// Parses a JWKS document key by key: one key Careboard cannot use (an encryption key,
/// an algorithm this version of the library does not know) does not spoil the others.
pub fn parse_jwks(body: &[u8]) -> Result<Vec<VerificationKey>, String> {
    #[derive(Deserialize)]
    struct Document {
        keys: Vec<serde_json::Value>,
    }
    let doc: Document =
        serde_json::from_slice(body).map_err(|e| format!("not a JWKS document: {e}"))?;
    Ok(doc
        .keys
        .into_iter()
        .filter_map(|k| serde_json::from_value::<Jwk>(k).ok())
        .filter_map(|k| usable(&k))
        .collect())
}

struct Cached {
    keys: Vec<VerificationKey>,
    fetched_at: Option<Instant>,
}

struct RefreshState {
    last_attempt: Option<Instant>,
    /// The discovery document's `jwks_uri`, once read.
    jwks_uri: Option<String>,
}

/// The cache. Cheap to share (`Arc`); every method is safe to call concurrently.
pub struct JwksCache {
    source: KeySource,
    issuer: String,
    http: reqwest::Client,
    min_refresh_interval: Duration,
    max_age: Duration,
    cached: StdMutex<Cached>,
    /// Held while fetching: one fetch at a time, whoever asks.
    refresh: tokio::sync::Mutex<RefreshState>,
}

impl JwksCache {
    pub fn new(
        source: KeySource,
        issuer: String,
        min_refresh_interval: Duration,
        max_age: Duration,
    ) -> Arc<Self> {
        let keys = match &source {
            KeySource::Static(jwks) => jwks.iter().filter_map(usable).collect(),
            _ => Vec::new(),
        };
        let fetched_at = matches!(source, KeySource::Static(_)).then(Instant::now);
        Arc::new(JwksCache {
            source,
            issuer,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .expect("an HTTP client without custom TLS settings builds"),
            min_refresh_interval,
            max_age,
            cached: StdMutex::new(Cached { keys, fetched_at }),
            refresh: tokio::sync::Mutex::new(RefreshState {
                last_attempt: None,
                jwks_uri: None,
            }),
        })
    }

    fn find(&self, kid: Option<&str>, alg: Algorithm) -> (Option<VerificationKey>, bool, bool) {
        let cached = self.cached.lock().expect("JWKS cache lock");
        let fits = |k: &&VerificationKey| k.algorithm == alg;
        let key = match kid {
            Some(kid) => cached
                .keys
                .iter()
                .filter(fits)
                .find(|k| k.kid.as_deref() == Some(kid)),
            // Without a key id, only an unambiguous key will do.
            None => {
                let mut candidates = cached.keys.iter().filter(fits);
                match (candidates.next(), candidates.next()) {
                    (Some(one), None) => Some(one),
                    _ => None,
                }
            }
        };
        let stale = cached
            .fetched_at
            .is_none_or(|at| at.elapsed() >= self.max_age);
        (key.cloned(), stale, cached.keys.is_empty())
    }

    /// The key for a token's `kid` and `alg`, fetching the JWKS if needed.
    pub async fn key(
        self: &Arc<Self>,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<VerificationKey, KeyLookupError> {
        let is_static = matches!(self.source, KeySource::Static(_));
        let (found, stale, _) = self.find(kid, alg);
        if let Some(key) = found {
            if stale && !is_static {
                // Answer now with the old keys; refresh behind the request.
                let this = self.clone();
                tokio::spawn(async move { this.refresh().await });
            }
            return Ok(key);
        }
        if !is_static {
            // An unknown key id: the provider may have rotated its keys.
            self.refresh().await;
        }
        match self.find(kid, alg) {
            (Some(key), _, _) => Ok(key),
            (None, _, true) => Err(KeyLookupError::Unavailable),
            (None, _, false) => Err(KeyLookupError::Unknown),
        }
    }

    /// Fetches the JWKS unless a fetch was tried within `min_refresh_interval` (so a
    /// stream of tokens with made-up key ids cannot hammer the provider). On failure
    /// the cached keys stay.
    pub async fn refresh(&self) {
        let mut state = self.refresh.lock().await;
        if state
            .last_attempt
            .is_some_and(|at| at.elapsed() < self.min_refresh_interval)
        {
            return;
        }
        state.last_attempt = Some(Instant::now());
        match self.fetch(&mut state).await {
            Ok(keys) if keys.is_empty() => {
                tracing::warn!("the identity provider's JWKS has no usable signing key (RS256, ES256 or EdDSA); keeping the cached keys");
            }
            Ok(keys) => {
                tracing::debug!(keys = keys.len(), "JWKS refreshed");
                let mut cached = self.cached.lock().expect("JWKS cache lock");
                cached.keys = keys;
                cached.fetched_at = Some(Instant::now());
            }
            Err(error) => {
                let cached = self.cached.lock().expect("JWKS cache lock").keys.len();
                tracing::warn!(%error, cached_keys = cached, "cannot fetch the identity provider's JWKS; using the cached keys");
            }
        }
    }

    async fn fetch(&self, state: &mut RefreshState) -> Result<Vec<VerificationKey>, String> {
        let url = match &self.source {
            KeySource::Static(_) => return Err("static keys are not fetched".into()),
            KeySource::JwksUrl(url) => url.clone(),
            KeySource::Discovery(url) => match &state.jwks_uri {
                Some(uri) => uri.clone(),
                None => {
                    let uri = self.discover(url).await?;
                    state.jwks_uri = Some(uri.clone());
                    uri
                }
            },
        };
        parse_jwks(&self.get(&url).await?)
    }

    async fn discover(&self, url: &str) -> Result<String, String> {
        #[derive(Deserialize)]
        struct Discovery {
            issuer: String,
            jwks_uri: String,
        }
        let doc: Discovery = serde_json::from_slice(&self.get(url).await?)
            .map_err(|e| format!("{url} is not an OpenID Connect discovery document: {e}"))?;
        if doc.issuer != self.issuer {
            return Err(format!(
                "the discovery document at {url} is for issuer {:?}, not the configured {:?}",
                doc.issuer, self.issuer
            ));
        }
        Ok(doc.jwks_uri)
    }

    async fn get(&self, url: &str) -> Result<Vec<u8>, String> {
        let mut response = self
            .http
            .get(url)
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("GET {url}: HTTP {}", response.status()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?
        {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_DOCUMENT_BYTES {
                return Err(format!("GET {url}: more than {MAX_DOCUMENT_BYTES} bytes"));
            }
        }
        Ok(body)
    }
}
