//! The tests' identity provider: one ES256 key pair per test process, its JWKS served
//! over real HTTP on port 0 (from a thread of its own, so it outlives every test's
//! runtime), and tokens minted for any role and scope. Every [`super::TestApp`]
//! verifies against it, as a server configured with an OpenID Connect provider does.

use std::sync::OnceLock;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use careboard::identity::jwks::KeySource;
use careboard::identity::VerifierConfig;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use uuid::Uuid;

pub const ISSUER: &str = "https://idp.careboard.test/realms/clinic";
pub const AUDIENCE: &str = "careboard-api";
/// The key id the provider publishes its key under.
pub const KID: &str = "test-es256";

/// The provider: its signing key and where its JWKS is served.
pub struct TestIdp {
    encoding: EncodingKey,
    jwks_url: String,
}

/// The one provider of this test process (started on first use).
pub fn idp() -> &'static TestIdp {
    static IDP: OnceLock<TestIdp> = OnceLock::new();
    IDP.get_or_init(TestIdp::start)
}

impl TestIdp {
    fn start() -> TestIdp {
        use p256::elliptic_curve::sec1::ToEncodedPoint;
        use p256::pkcs8::EncodePrivateKey;
        let secret = p256::SecretKey::random(&mut rand_core::OsRng);
        let point = secret.public_key().to_encoded_point(false);
        let jwks = json!({ "keys": [{
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": KID,
            "x": URL_SAFE_NO_PAD.encode(point.x().unwrap()),
            "y": URL_SAFE_NO_PAD.encode(point.y().unwrap()),
        }]});
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the JWKS server");
        listener.set_nonblocking(true).unwrap();
        let jwks_url = format!(
            "http://{}/protocol/openid-connect/certs",
            listener.local_addr().unwrap()
        );
        std::thread::Builder::new()
            .name("test-idp".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async move {
                    let app = axum::Router::new().route(
                        "/protocol/openid-connect/certs",
                        axum::routing::get(move || {
                            let jwks = jwks.clone();
                            async move { axum::Json(jwks) }
                        }),
                    );
                    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                    axum::serve(listener, app).await.unwrap();
                });
            })
            .expect("start the JWKS server");
        TestIdp {
            encoding: EncodingKey::from_ec_der(secret.to_pkcs8_der().unwrap().as_bytes()),
            jwks_url,
        }
    }

    pub fn jwks_url(&self) -> &str {
        &self.jwks_url
    }

    /// What a server trusting this provider is configured with: its issuer, audience and
    /// JWKS URL, and a one-second leeway (tests of expiry need not wait half a minute).
    pub fn verifier_config(&self) -> VerifierConfig {
        let mut config =
            VerifierConfig::new(ISSUER, AUDIENCE, KeySource::JwksUrl(self.jwks_url.clone()));
        config.leeway = Duration::from_secs(1);
        config
    }

    /// Signs any claims with the provider's key (for tokens a test shapes itself).
    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(KID.to_string());
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("sign")
    }

    /// Signs `claims` with `typ` in the header (none when `None`); [`TestIdp::sign`]
    /// writes `JWT`, as most providers do.
    pub fn sign_typed(&self, claims: &Value, typ: Option<&str>) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(KID.to_string());
        header.typ = typ.map(String::from);
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("sign")
    }

    /// A token for `who`.
    pub fn token(&self, who: &Who) -> String {
        self.sign(&who.claims())
    }
}

/// Whom a token names: a role with its scope, a name, and how long it lives. Start from
/// [`Who::admin`], [`Who::coordinator`], [`Who::provider`] or [`Who::patient`].
#[derive(Debug, Clone)]
pub struct Who {
    role: &'static str,
    subject: String,
    name: String,
    provider_id: Option<Uuid>,
    patient_id: Option<String>,
    regions: Option<Vec<String>>,
    specialties: Option<Vec<String>>,
    ttl: Duration,
}

impl Who {
    fn new(role: &'static str, subject: String, name: &str) -> Who {
        Who {
            role,
            subject,
            name: name.to_string(),
            provider_id: None,
            patient_id: None,
            regions: None,
            specialties: None,
            ttl: Duration::from_secs(3600),
        }
    }

    pub fn admin() -> Who {
        Who::new("admin", "admin-1".into(), "Test Admin")
    }

    /// A coordinator of every region and specialty (narrow with `regions`/`specialties`).
    pub fn coordinator() -> Who {
        Who::new("coordinator", "coordinator-1".into(), "Ana Ruiz")
    }

    /// The provider with this id (from `registerProvider`).
    pub fn provider(provider_id: impl ToString) -> Who {
        let id: Uuid = provider_id
            .to_string()
            .parse()
            .expect("a provider id is a UUID");
        Who {
            provider_id: Some(id),
            ..Who::new("provider", format!("provider-{id}"), "Dr. Test")
        }
    }

    /// The patient with this id (what `requestAppointment` records as `patientId`).
    pub fn patient(patient_id: impl ToString) -> Who {
        let id = patient_id.to_string();
        Who {
            patient_id: Some(id.clone()),
            ..Who::new("patient", format!("patient-{id}"), "Test Patient")
        }
    }

    pub fn regions<S: ToString>(mut self, regions: impl IntoIterator<Item = S>) -> Who {
        self.regions = Some(regions.into_iter().map(|r| r.to_string()).collect());
        self
    }

    pub fn specialties<S: ToString>(mut self, specialties: impl IntoIterator<Item = S>) -> Who {
        self.specialties = Some(specialties.into_iter().map(|s| s.to_string()).collect());
        self
    }

    pub fn subject(mut self, subject: impl ToString) -> Who {
        self.subject = subject.to_string();
        self
    }

    pub fn name(mut self, name: impl ToString) -> Who {
        self.name = name.to_string();
        self
    }

    /// How long the token is valid from now.
    pub fn ttl(mut self, ttl: Duration) -> Who {
        self.ttl = ttl;
        self
    }

    /// The same person as `careboard token` arguments (for the development issuer).
    pub fn token_args(&self) -> careboard::identity::dev_issuer::TokenArgs {
        careboard::identity::dev_issuer::TokenArgs {
            role: self.role.parse().expect("a role"),
            name: self.name.clone(),
            subject: Some(self.subject.clone()),
            provider_id: self.provider_id,
            patient_id: self.patient_id.clone(),
            regions: self.regions.clone().unwrap_or_default(),
            specialties: self.specialties.clone().unwrap_or_default(),
            ttl: self.ttl,
        }
    }

    /// The claims as the provider would issue them.
    pub fn claims(&self) -> Value {
        let now = chrono::Utc::now().timestamp();
        let mut claims = json!({
            "iss": ISSUER, "aud": AUDIENCE, "sub": self.subject, "name": self.name,
            "role": self.role, "iat": now, "nbf": now,
            "exp": now + self.ttl.as_secs() as i64,
            "jti": Uuid::new_v4().to_string(),
        });
        if let Some(id) = self.provider_id {
            claims["provider_id"] = json!(id.to_string());
        }
        if let Some(id) = &self.patient_id {
            claims["patient_id"] = json!(id);
        }
        if let Some(regions) = &self.regions {
            claims["regions"] = json!(regions);
        }
        if let Some(specialties) = &self.specialties {
            claims["specialties"] = json!(specialties);
        }
        claims
    }
}
