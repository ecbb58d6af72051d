//! The development issuer of the embedded default: with no identity provider
//! configured, Careboard signs its own tokens with an Ed25519 key generated into the
//! data dir, and verifies them with the same code as a provider's (its public JWKS is
//! handed to the verifier in-process). `careboard token` prints one.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use ed25519_dalek::SigningKey;
use jsonwebtoken::jwk::{
    AlgorithmParameters, CommonParameters, EllipticCurve, Jwk, KeyAlgorithm,
    OctetKeyPairParameters, OctetKeyPairType, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::jwks::KeySource;
use super::principal::Role;
use super::verifier::VerifierConfig;

/// The `iss` of development tokens: never a URL, so no one mistakes it for a provider.
pub const ISSUER: &str = "urn:careboard:development-issuer";
/// The `aud` of development tokens.
pub const AUDIENCE: &str = "careboard";
/// The key file, inside the data dir.
pub const KEY_FILE: &str = "development-issuer-key.pem";

/// The development issuer: its signing key and public JWK.
pub struct DevIssuer {
    path: PathBuf,
    encoding: EncodingKey,
    jwk: Jwk,
}

/// The key id: the RFC 7638 thumbprint of the public key.
fn thumbprint(x: &str) -> String {
    let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
}

impl DevIssuer {
    /// Loads the key from `data_dir`, generating it (mode 0600) the first time. Two
    /// processes starting at once agree on one key: the file appears whole or not at all.
    pub fn load_or_create(data_dir: &Path) -> Result<Self> {
        fs::create_dir_all(data_dir)
            .with_context(|| format!("creating the data dir {}", data_dir.display()))?;
        let path = data_dir.join(KEY_FILE);
        if !path.exists() {
            create_key_file(&path)?;
        }
        let meta = fs::metadata(&path)?;
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(path = %path.display(), "the development signing key was readable by others; restricting it to its owner (0600)");
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600))?;
        }
        let pem = fs::read_to_string(&path)
            .with_context(|| format!("reading the development signing key {}", path.display()))?;
        let signing = SigningKey::from_pkcs8_pem(&pem).map_err(|_| {
            anyhow::anyhow!(
                "{} is not an Ed25519 private key in PKCS#8 PEM; remove it to generate a new one",
                path.display()
            )
        })?;
        Self::from_signing_key(path, &signing)
    }

    fn from_signing_key(path: PathBuf, signing: &SigningKey) -> Result<Self> {
        let der = signing
            .to_pkcs8_der()
            .map_err(|_| anyhow::anyhow!("encoding the development signing key"))?;
        let x = URL_SAFE_NO_PAD.encode(signing.verifying_key().as_bytes());
        let jwk = Jwk {
            common: CommonParameters {
                public_key_use: Some(PublicKeyUse::Signature),
                key_algorithm: Some(KeyAlgorithm::EdDSA),
                key_id: Some(thumbprint(&x)),
                ..Default::default()
            },
            algorithm: AlgorithmParameters::OctetKeyPair(OctetKeyPairParameters {
                key_type: OctetKeyPairType::OctetKeyPair,
                curve: EllipticCurve::Ed25519,
                x,
            }),
        };
        Ok(DevIssuer {
            path,
            encoding: EncodingKey::from_ed_der(der.as_bytes()),
            jwk,
        })
    }

    pub fn key_path(&self) -> &Path {
        &self.path
    }

    /// The public key set (one key), as a provider would publish it.
    pub fn jwks(&self) -> Vec<Jwk> {
        vec![self.jwk.clone()]
    }

    /// The verifier settings that accept this issuer's tokens (and only them).
    pub fn verifier_config(&self) -> VerifierConfig {
        VerifierConfig::new(ISSUER, AUDIENCE, KeySource::Static(self.jwks()))
    }

    /// Signs a token for `request`.
    pub fn issue(&self, request: &TokenRequest) -> Result<String> {
        let claims = request.claims()?;
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = self.jwk.common.key_id.clone();
        // An access token (RFC 9068), so a server in strict `typ` mode takes it too.
        header.typ = Some("at+jwt".into());
        jsonwebtoken::encode(&header, &claims, &self.encoding).context("signing the token")
    }
}

/// Writes a new key to a temporary file and links it into place, so a reader never sees
/// half a key and a concurrent creator's key is kept rather than replaced.
fn create_key_file(path: &Path) -> Result<()> {
    let mut seed = [0u8; 32];
    {
        use rand::TryRngCore;
        rand::rngs::OsRng
            .try_fill_bytes(&mut seed)
            .context("reading randomness for the development signing key")?;
    }
    let signing = SigningKey::from_bytes(&seed);
    let pem = signing
        .to_pkcs8_pem(Default::default())
        .map_err(|_| anyhow::anyhow!("encoding the development signing key"))?;
    let tmp = path.with_extension(format!("tmp-{}", Uuid::new_v4().simple()));
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    file.write_all(pem.as_bytes())?;
    file.sync_all()?;
    drop(file);
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            tracing::info!(path = %path.display(), "generated the development issuer's signing key");
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e).with_context(|| format!("creating {}", path.display())),
    }
}

/// `careboard token`: a token from the development issuer.
#[derive(Debug, Clone, clap::Args)]
pub struct TokenArgs {
    /// patient, provider, coordinator or admin.
    #[arg(long)]
    pub role: Role,
    /// The person's name, as the audit trail shows it.
    #[arg(long)]
    pub name: String,
    /// The token's subject (default: the patient or provider id, else derived from the name).
    #[arg(long)]
    pub subject: Option<String>,
    /// The provider's id (required with --role provider).
    #[arg(long)]
    pub provider_id: Option<Uuid>,
    /// The patient's id: the practice's own identifier for the person, recorded as
    /// `patientId` on their appointments (with --role patient; default: a new one,
    /// named on stderr).
    #[arg(long)]
    pub patient_id: Option<String>,
    /// A region the coordinator works (repeatable; none = all regions).
    #[arg(long = "region")]
    pub regions: Vec<String>,
    /// A specialty the coordinator works (repeatable; none = all specialties).
    #[arg(long = "specialty")]
    pub specialties: Vec<String>,
    /// How long the token is valid: e.g. 90s, 30m, 8h, 2d (a bare number is seconds).
    #[arg(long, default_value = "8h", value_parser = parse_ttl)]
    pub ttl: Duration,
}

/// Parses `90s`, `30m`, `8h`, `2d` (a bare number is seconds).
pub fn parse_ttl(value: &str) -> Result<Duration, String> {
    let value = value.trim();
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| "expected a duration like 90s, 30m, 8h or 2d".to_string())?;
    let unit_seconds: u64 = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err("expected a duration like 90s, 30m, 8h or 2d".into()),
    };
    // Past u64 is past 30 days too (an overflow must not wrap into a short lifetime).
    let seconds = n.saturating_mul(unit_seconds);
    if seconds == 0 || seconds > 30 * 86_400 {
        return Err("a token lives between 1 second and 30 days".into());
    }
    Ok(Duration::from_secs(seconds))
}

/// What a development token says about its bearer.
pub type TokenRequest = TokenArgs;

impl TokenArgs {
    /// The claims, in the default claim names the verifier reads.
    pub fn claims(&self) -> Result<serde_json::Value> {
        if self.name.trim().is_empty() {
            bail!("--name must not be empty");
        }
        if self.provider_id.is_some() && self.role != Role::Provider {
            bail!("--provider-id goes with --role provider");
        }
        if self.patient_id.is_some() && self.role != Role::Patient {
            bail!("--patient-id goes with --role patient");
        }
        if (!self.regions.is_empty() || !self.specialties.is_empty())
            && self.role != Role::Coordinator
        {
            bail!("--region and --specialty go with --role coordinator");
        }
        let now = chrono::Utc::now().timestamp();
        let mut claims = json!({
            "iss": ISSUER,
            "aud": AUDIENCE,
            "name": self.name.trim(),
            "role": self.role.as_str(),
            "iat": now,
            "nbf": now,
            "exp": now + self.ttl.as_secs() as i64,
            "jti": Uuid::new_v4().to_string(),
        });
        let subject = match self.role {
            Role::Provider => {
                let Some(id) = self.provider_id else {
                    bail!("--role provider needs --provider-id (the provider's id from registerProvider)");
                };
                claims["provider_id"] = json!(id.to_string());
                self.subject.clone().unwrap_or_else(|| id.to_string())
            }
            Role::Patient => {
                let id = self
                    .patient_id
                    .clone()
                    .unwrap_or_else(|| Uuid::new_v4().to_string());
                claims["patient_id"] = json!(id);
                self.subject.clone().unwrap_or(id)
            }
            Role::Coordinator | Role::Admin => {
                if !self.regions.is_empty() {
                    claims["regions"] = json!(self.regions);
                }
                if !self.specialties.is_empty() {
                    claims["specialties"] = json!(self.specialties);
                }
                self.subject.clone().unwrap_or_else(|| {
                    let slug: String = self
                        .name
                        .trim()
                        .to_lowercase()
                        .chars()
                        .map(|c| if c.is_alphanumeric() { c } else { '-' })
                        .collect();
                    format!("dev:{slug}")
                })
            }
        };
        claims["sub"] = json!(subject);
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_read_like_people_write_them() {
        assert_eq!(parse_ttl("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_ttl("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_ttl("8h"), Ok(Duration::from_secs(28_800)));
        assert_eq!(parse_ttl("2d"), Ok(Duration::from_secs(172_800)));
        assert_eq!(parse_ttl("120"), Ok(Duration::from_secs(120)));
        // 213503982334602 days is 2^64 + 61,184 seconds: wrapped, it read as 17 hours.
        assert!(parse_ttl("213503982334602d").is_err());
        assert!(parse_ttl("1000000000000000d").is_err());
        assert!(parse_ttl("0s").is_err());
        assert!(parse_ttl("1y").is_err());
        assert!(parse_ttl("h").is_err());
        assert!(parse_ttl("31d").is_err());
    }

    #[test]
    fn the_key_file_is_made_once_and_only_its_owner_can_read_it() {
        let dir = tempfile::tempdir().unwrap();
        let a = DevIssuer::load_or_create(dir.path()).unwrap();
        let mode = fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let b = DevIssuer::load_or_create(dir.path()).unwrap();
        assert_eq!(a.jwks(), b.jwks(), "a second load reads the same key");
        let other = tempfile::tempdir().unwrap();
        let c = DevIssuer::load_or_create(other.path()).unwrap();
        assert_ne!(a.jwks(), c.jwks(), "each data dir has its own key");
    }

    #[test]
    fn a_key_file_readable_by_others_is_restricted() {
        let dir = tempfile::tempdir().unwrap();
        DevIssuer::load_or_create(dir.path()).unwrap();
        let path = dir.path().join(KEY_FILE);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        DevIssuer::load_or_create(dir.path()).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn token_options_that_do_not_fit_the_role_are_refused() {
        let base = TokenArgs {
            role: Role::Coordinator,
            name: "Ana Ruiz".into(),
            subject: None,
            provider_id: None,
            patient_id: None,
            regions: vec![],
            specialties: vec![],
            ttl: Duration::from_secs(60),
        };
        assert!(TokenArgs {
            provider_id: Some(Uuid::nil()),
            ..base.clone()
        }
        .claims()
        .is_err());
        assert!(TokenArgs {
            role: Role::Provider,
            ..base.clone()
        }
        .claims()
        .is_err());
        assert!(TokenArgs {
            role: Role::Admin,
            regions: vec!["TX".into()],
            ..base.clone()
        }
        .claims()
        .is_err());
        let claims = base.claims().unwrap();
        assert_eq!(claims["sub"], "dev:ana-ruiz");
        assert_eq!(claims["role"], "coordinator");
    }
}
