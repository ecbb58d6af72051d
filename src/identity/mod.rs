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
//! - [`actor`]: who a command acts for (a principal, an unverified caller, Careboard).
//! - [`edge`]: `Authorization: Bearer` at the HTTP edge, and the 401 refusing it.

pub mod access_log;
pub mod actor;
pub mod dev_issuer;
pub mod edge;
pub mod jwks;
pub mod matrix;
pub mod principal;
pub mod verifier;

pub use access_log::{AccessLog, AccessRecord, Disclosure};
pub use actor::Actor;
pub use matrix::{authorize, may_see_patient_fields, Facts, Forbidden, Operation};
pub use principal::{Principal, Role, Scope};
pub use verifier::{AuthError, TokenTypes, Verifier, VerifierConfig};
