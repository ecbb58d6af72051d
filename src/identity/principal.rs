//! Who is asking: the [`Principal`] a verified token names, and how its claims are read.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// The four roles of DESIGN §9. Anything else in a token is no Careboard role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Patient,
    Provider,
    Coordinator,
    Admin,
}

impl Role {
    pub const ALL: [Role; 4] = [
        Role::Patient,
        Role::Provider,
        Role::Coordinator,
        Role::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Patient => "patient",
            Role::Provider => "provider",
            Role::Coordinator => "coordinator",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "patient" => Ok(Role::Patient),
            "provider" => Ok(Role::Provider),
            "coordinator" => Ok(Role::Coordinator),
            "admin" => Ok(Role::Admin),
            _ => Err("expected patient, provider, coordinator or admin".into()),
        }
    }
}

/// What a role is limited to. Each role has exactly one shape, so a provider without a
/// provider id (or a patient without a patient id) cannot exist.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "camelCase")]
pub enum Scope {
    /// A patient sees their own appointments; `patient_id` is what appointments record.
    #[serde(rename_all = "camelCase")]
    Patient {
        patient_id: String,
    },
    /// A provider acts on their own shifts and the Boards they joined.
    #[serde(rename_all = "camelCase")]
    Provider {
        provider_id: Uuid,
    },
    /// A coordinator works the Boards of these regions and specialties (`None` = all).
    /// Regions are upper-case, specialties lower-case, as the domain stores them.
    #[serde(rename_all = "camelCase")]
    Coordinator {
        regions: Option<BTreeSet<String>>,
        specialties: Option<BTreeSet<String>>,
    },
    Admin,
}

impl Scope {
    pub fn role(&self) -> Role {
        match self {
            Scope::Patient { .. } => Role::Patient,
            Scope::Provider { .. } => Role::Provider,
            Scope::Coordinator { .. } => Role::Coordinator,
            Scope::Admin => Role::Admin,
        }
    }

    /// A coordinator's region/specialty limits hold for a Board of `region`/`specialty`.
    pub fn covers(&self, region: &str, specialty: &str) -> bool {
        match self {
            Scope::Coordinator {
                regions,
                specialties,
            } => {
                regions
                    .as_ref()
                    .is_none_or(|r| r.contains(&region.to_uppercase()))
                    && specialties
                        .as_ref()
                        .is_none_or(|s| s.contains(&specialty.to_lowercase()))
            }
            _ => false,
        }
    }
}

/// The verified caller: `{subject, name, role, scope}` (DESIGN §9).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    /// The token's `sub`: stable for the person at their identity provider.
    pub subject: String,
    /// For people reading the audit trail; never used to decide anything.
    pub name: String,
    pub role: Role,
    pub scope: Scope,
}

impl Principal {
    /// The only constructor: `role` always agrees with `scope`.
    pub fn new(subject: impl Into<String>, name: impl Into<String>, scope: Scope) -> Self {
        Principal {
            subject: subject.into(),
            name: name.into(),
            role: scope.role(),
            scope,
        }
    }
}

/// Where the claims that make a principal are found in a token. Names may be dotted
/// paths into nested objects (Keycloak puts roles in `realm_access.roles`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimNames {
    pub role: String,
    pub name: String,
    pub provider_id: String,
    pub patient_id: String,
    pub regions: String,
    pub specialties: String,
}

impl Default for ClaimNames {
    fn default() -> Self {
        ClaimNames {
            role: "role".into(),
            name: "name".into(),
            provider_id: "provider_id".into(),
            patient_id: "patient_id".into(),
            regions: "regions".into(),
            specialties: "specialties".into(),
        }
    }
}

/// Why verified claims make no principal. Messages name the claim, never its value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClaimError {
    #[error("the token has no `{0}` claim")]
    Missing(String),
    #[error("the token's `{0}` claim is not in the expected form ({1})")]
    Invalid(String, &'static str),
    #[error(
        "the token's `{0}` claim names no Careboard role (patient, provider, coordinator or admin)"
    )]
    NoRole(String),
    #[error("the token's `{0}` claim names more than one Careboard role")]
    SeveralRoles(String),
}

/// Looks a dotted claim path up in the claims object.
fn claim<'a>(claims: &'a Value, path: &str) -> Option<&'a Value> {
    if let Some(v) = claims.get(path) {
        return Some(v);
    }
    path.split('.')
        .try_fold(claims, |v, key| v.get(key))
        .filter(|v| !v.is_null())
}

/// Strings from a claim that is a string, a space- or comma-separated string, or an
/// array of strings.
fn strings(name: &str, value: &Value) -> Result<Vec<String>, ClaimError> {
    match value {
        Value::String(s) if s.contains('\0') => Err(ClaimError::Invalid(
            name.to_string(),
            "a string without the NUL character",
        )),
        Value::String(s) => Ok(s
            .split([' ', ','])
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .collect()),
        Value::Array(items) => items
            .iter()
            .map(|i| {
                i.as_str()
                    .filter(|s| !s.contains('\0'))
                    .map(|s| s.trim().to_string())
                    .ok_or_else(|| ClaimError::Invalid(name.to_string(), "a list of strings"))
            })
            .collect(),
        _ => Err(ClaimError::Invalid(
            name.to_string(),
            "a string or a list of strings",
        )),
    }
}

fn optional_set(
    claims: &Value,
    name: &str,
    normalize: fn(&str) -> String,
) -> Result<Option<BTreeSet<String>>, ClaimError> {
    match claim(claims, name) {
        None => Ok(None),
        Some(v) => Ok(Some(
            strings(name, v)?.iter().map(|s| normalize(s)).collect(),
        )),
    }
}

fn text(claims: &Value, name: &str) -> Result<Option<String>, ClaimError> {
    match claim(claims, name) {
        None => Ok(None),
        Some(Value::String(s)) if s.contains('\0') => Err(ClaimError::Invalid(
            name.to_string(),
            "a string without the NUL character",
        )),
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(Some(s.trim().to_string())),
        Some(_) => Err(ClaimError::Invalid(name.to_string(), "a non-empty string")),
    }
}

impl Principal {
    /// The principal named by claims whose signature, issuer, audience and times have
    /// already been verified.
    pub fn from_claims(claims: &Value, names: &ClaimNames) -> Result<Principal, ClaimError> {
        let subject = text(claims, "sub")?.ok_or_else(|| ClaimError::Missing("sub".into()))?;
        let name = match text(claims, &names.name)? {
            Some(n) => n,
            None => text(claims, "preferred_username")?.unwrap_or_else(|| subject.clone()),
        };
        let role_value =
            claim(claims, &names.role).ok_or_else(|| ClaimError::Missing(names.role.clone()))?;
        // Identity providers put unrelated roles next to ours (Keycloak's
        // `offline_access`); those are ignored, but two of ours are ambiguous.
        let mut roles: Vec<Role> = strings(&names.role, role_value)?
            .iter()
            .filter_map(|r| r.parse().ok())
            .collect();
        roles.sort();
        roles.dedup();
        let role = match roles.as_slice() {
            [] => return Err(ClaimError::NoRole(names.role.clone())),
            [one] => *one,
            _ => return Err(ClaimError::SeveralRoles(names.role.clone())),
        };
        let scope = match role {
            Role::Patient => Scope::Patient {
                // A patient is their subject unless the token says otherwise.
                patient_id: text(claims, &names.patient_id)?.unwrap_or_else(|| subject.clone()),
            },
            Role::Provider => {
                let id = text(claims, &names.provider_id)?
                    .ok_or_else(|| ClaimError::Missing(names.provider_id.clone()))?;
                Scope::Provider {
                    provider_id: Uuid::parse_str(&id).map_err(|_| {
                        ClaimError::Invalid(names.provider_id.clone(), "a provider id (UUID)")
                    })?,
                }
            }
            Role::Coordinator => Scope::Coordinator {
                regions: optional_set(claims, &names.regions, |s| s.to_uppercase())?,
                specialties: optional_set(claims, &names.specialties, |s| s.to_lowercase())?,
            },
            Role::Admin => Scope::Admin,
        };
        Ok(Principal::new(subject, name, scope))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(claims: Value) -> Result<Principal, ClaimError> {
        Principal::from_claims(&claims, &ClaimNames::default())
    }

    #[test]
    fn a_coordinator_token_with_regions_and_specialties_is_scoped_to_them() {
        let p = parse(
            json!({"sub": "u1", "name": "Ana Ruiz", "role": "coordinator",
            "regions": ["tx", "OK"], "specialties": "Pediatrics cardiology"}),
        )
        .unwrap();
        assert_eq!(p.role, Role::Coordinator);
        assert_eq!(p.name, "Ana Ruiz");
        assert!(p.scope.covers("TX", "pediatrics"));
        assert!(p.scope.covers("ok", "Cardiology"));
        assert!(!p.scope.covers("CA", "pediatrics"));
        assert!(!p.scope.covers("TX", "dermatology"));
    }

    #[test]
    fn a_coordinator_without_limits_covers_every_board() {
        let p = parse(json!({"sub": "u1", "role": "coordinator"})).unwrap();
        assert!(p.scope.covers("CA", "anything"));
        assert_eq!(p.name, "u1", "the subject stands in for a missing name");
    }

    #[test]
    fn a_provider_token_must_carry_a_provider_id() {
        assert_eq!(
            parse(json!({"sub": "u1", "role": "provider"})),
            Err(ClaimError::Missing("provider_id".into()))
        );
        let err = parse(json!({"sub": "u1", "role": "provider", "provider_id": "not-a-uuid"}))
            .unwrap_err();
        assert!(!err.to_string().contains("not-a-uuid"), "{err}");
        let id = Uuid::new_v4();
        let p =
            parse(json!({"sub": "u1", "role": "provider", "provider_id": id.to_string()})).unwrap();
        assert_eq!(p.scope, Scope::Provider { provider_id: id });
    }

    #[test]
    fn a_patient_is_their_subject_unless_the_token_names_a_patient_id() {
        let p = parse(json!({"sub": "p-7", "role": "patient"})).unwrap();
        assert_eq!(
            p.scope,
            Scope::Patient {
                patient_id: "p-7".into()
            }
        );
        let p = parse(json!({"sub": "p-7", "role": "patient", "patient_id": "mrn-1"})).unwrap();
        assert_eq!(
            p.scope,
            Scope::Patient {
                patient_id: "mrn-1".into()
            }
        );
    }

    #[test]
    fn roles_may_sit_in_a_nested_list_next_to_foreign_roles() {
        let names = ClaimNames {
            role: "realm_access.roles".into(),
            ..Default::default()
        };
        let claims = json!({"sub": "u", "realm_access": {"roles": ["offline_access", "admin"]}});
        assert_eq!(
            Principal::from_claims(&claims, &names).unwrap().role,
            Role::Admin
        );
        let two = json!({"sub": "u", "realm_access": {"roles": ["admin", "patient"]}});
        assert_eq!(
            Principal::from_claims(&two, &names),
            Err(ClaimError::SeveralRoles("realm_access.roles".into()))
        );
    }

    #[test]
    fn a_token_without_a_careboard_role_makes_no_principal() {
        assert_eq!(
            parse(json!({"sub": "u", "role": "superuser"})),
            Err(ClaimError::NoRole("role".into()))
        );
        assert_eq!(
            parse(json!({"sub": "u"})),
            Err(ClaimError::Missing("role".into()))
        );
        assert_eq!(
            parse(json!({"role": "admin"})),
            Err(ClaimError::Missing("sub".into()))
        );
    }
}
