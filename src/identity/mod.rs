//! Who is asking (DESIGN §9): bearer token verification against an OpenID Connect
//! provider's JWKS or the development issuer, the [`Principal`] a token names, the
//! permission [`matrix`] every check and test is made from, and the hash-chained
//! [`access_log`] of patient-data reads.
//!
//! - [`verifier`]: allow-listed algorithms, signature, issuer, audience, `exp`/`nbf`.
//! - [`jwks`]: the provider's keys, fetched, cached, refreshed, used while it is down.
//! - [`principal`]: `{subject, name, role, scope}` from verified claims.
//! - [`dev_issuer`]: the embedded default's own issuer and `careboard token`.
//! - [`matrix`]: operation × role → allowed / scoped / denied; `authorize`.
//! - [`access_log`]: group-committed, append-only, hash-chained; `careboard audit verify`.
//! - [`edge`]: `Authorization: Bearer` at the HTTP edge, and the 401 refusing it.

pub mod access_log;
pub mod dev_issuer;
pub mod edge;
pub mod jwks;
pub mod matrix;
pub mod principal;
pub mod verifier;

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Result};

pub use access_log::{AccessLog, AccessRecord, Disclosure};
pub use matrix::{authorize, may_see_patient_fields, Facts, Forbidden, Operation};
pub use principal::{Principal, Role, Scope};
pub use verifier::{AuthError, Verifier, VerifierConfig};

use crate::config::{AuditCommand, DatabaseArgs, IdentityArgs};
use dev_issuer::DevIssuer;
use jwks::KeySource;
use principal::ClaimNames;

impl IdentityArgs {
    /// Whether tokens come from an OpenID Connect provider (else the development issuer).
    pub fn uses_provider(&self) -> bool {
        self.oidc_issuer.is_some()
    }

    /// The verifier settings: the configured provider's, or the development issuer's
    /// (its key loaded or generated in `data_dir`).
    pub fn verifier_config(&self, data_dir: &Path) -> Result<VerifierConfig> {
        let claims = ClaimNames {
            role: self.role_claim.clone(),
            name: self.name_claim.clone(),
            provider_id: self.provider_id_claim.clone(),
            patient_id: self.patient_id_claim.clone(),
            regions: self.regions_claim.clone(),
            specialties: self.specialties_claim.clone(),
        };
        let mut config = match &self.oidc_issuer {
            None => {
                if self.oidc_audience.is_some()
                    || self.oidc_jwks_url.is_some()
                    || self.oidc_discovery_url.is_some()
                {
                    bail!("--oidc-audience, --oidc-jwks-url and --oidc-discovery-url need --oidc-issuer (CAREBOARD_OIDC_ISSUER)");
                }
                let mut config = DevIssuer::load_or_create(data_dir)?.verifier_config();
                // The development issuer writes the default claim names.
                config.claims = ClaimNames::default();
                return Ok(VerifierConfig {
                    leeway: Duration::from_secs(self.token_leeway_secs),
                    ..config
                });
            }
            Some(issuer) => {
                let Some(audience) = &self.oidc_audience else {
                    bail!("--oidc-issuer needs --oidc-audience (CAREBOARD_OIDC_AUDIENCE): the client id or API identifier tokens are issued for");
                };
                let keys = match (&self.oidc_jwks_url, &self.oidc_discovery_url) {
                    (Some(_), Some(_)) => {
                        bail!("give either --oidc-jwks-url or --oidc-discovery-url, not both")
                    }
                    (Some(url), None) => KeySource::JwksUrl(url.clone()),
                    (None, Some(url)) => KeySource::Discovery(url.clone()),
                    (None, None) => KeySource::Discovery(format!(
                        "{}/.well-known/openid-configuration",
                        issuer.trim_end_matches('/')
                    )),
                };
                VerifierConfig::new(issuer.clone(), audience.clone(), keys)
            }
        };
        config.claims = claims;
        config.leeway = Duration::from_secs(self.token_leeway_secs);
        Ok(config)
    }
}

/// `careboard token`: prints a development token (only the token, for `$(...)`).
pub fn print_token(database: &DatabaseArgs, args: &dev_issuer::TokenArgs) -> Result<()> {
    if std::env::var_os("CAREBOARD_OIDC_ISSUER").is_some() {
        eprintln!(
            "note: CAREBOARD_OIDC_ISSUER is set; a server configured with it does not accept \
             development tokens"
        );
    }
    let issuer = DevIssuer::load_or_create(&database.data_dir)?;
    println!("{}", issuer.issue(args)?);
    Ok(())
}

/// `careboard audit verify`.
pub async fn audit(database: &DatabaseArgs, action: AuditCommand) -> Result<()> {
    match action {
        AuditCommand::Verify => {
            let db = crate::app::open_database(database).await?;
            crate::postgres::migrate(&db.pool).await?;
            let report = access_log::verify(&db.pool).await;
            db.pool.close().await;
            let report = report?;
            match report.first_broken {
                None => {
                    println!(
                        "access log intact: {} record(s), head {}",
                        report.verified, report.head_hash
                    );
                    Ok(())
                }
                Some(broken) => bail!(
                    "access log broken at record {}: {} ({} record(s) before it verify)",
                    broken.seq,
                    broken.reason,
                    report.verified
                ),
            }
        }
    }
}
