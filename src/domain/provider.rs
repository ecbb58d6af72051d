//! Provider: reference data (name, specialties, the regions where they are licensed).

use serde::{Deserialize, Serialize};

use super::ids::ProviderId;
use super::{
    fold_error, region, required_text, specialty, Aggregate, DomainError, DomainEvent,
    EventContext, FoldError, StreamType,
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Provider {
    pub id: ProviderId,
    pub name: String,
    pub specialties: Vec<String>,
    pub licensed_regions: Vec<String>,
    pub version: i64,
}

impl Provider {
    pub fn has_specialty(&self, specialty: &str) -> bool {
        self.specialties.iter().any(|s| s == specialty)
    }

    pub fn is_licensed_in(&self, region: &str) -> bool {
        self.licensed_regions.iter().any(|r| r == region)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum ProviderEvent {
    #[serde(rename_all = "camelCase")]
    ProviderRegistered {
        name: String,
        specialties: Vec<String>,
        licensed_regions: Vec<String>,
    },
}

impl DomainEvent for ProviderEvent {
    fn event_type(&self) -> &'static str {
        match self {
            ProviderEvent::ProviderRegistered { .. } => "ProviderRegistered",
        }
    }
}

#[derive(Debug, Clone)]
pub enum ProviderCommand {
    Register {
        name: String,
        specialties: Vec<String>,
        licensed_regions: Vec<String>,
    },
}

/// Normalises a list, dropping duplicates but keeping the caller's order.
fn normalised_list(
    field: &str,
    values: &[String],
    normalise: fn(&str, &str) -> Result<String, DomainError>,
) -> Result<Vec<String>, DomainError> {
    if values.is_empty() {
        return Err(DomainError::Validation(format!(
            "{field} must list at least one entry"
        )));
    }
    if values.len() > 64 {
        return Err(DomainError::Validation(format!(
            "{field} must list at most 64 entries"
        )));
    }
    let mut out: Vec<String> = Vec::with_capacity(values.len());
    for value in values {
        let value = normalise(field, value)?;
        if !out.contains(&value) {
            out.push(value);
        }
    }
    Ok(out)
}

pub fn decide(
    state: Option<&Provider>,
    command: ProviderCommand,
) -> Result<Vec<ProviderEvent>, DomainError> {
    match (state, command) {
        (
            None,
            ProviderCommand::Register {
                name,
                specialties,
                licensed_regions,
            },
        ) => Ok(vec![ProviderEvent::ProviderRegistered {
            name: required_text("name", &name, 200)?,
            specialties: normalised_list("specialties", &specialties, specialty)?,
            licensed_regions: normalised_list("licensedRegions", &licensed_regions, region)?,
        }]),
        (Some(p), ProviderCommand::Register { .. }) => Err(DomainError::InvalidTransition(
            format!("provider {} is already registered", p.id),
        )),
    }
}

impl Aggregate for Provider {
    const STREAM_TYPE: StreamType = StreamType::Provider;
    type Event = ProviderEvent;
    type Command = ProviderCommand;

    fn decide(
        state: Option<&Self>,
        command: ProviderCommand,
    ) -> Result<Vec<ProviderEvent>, DomainError> {
        decide(state, command)
    }

    fn apply(
        state: Option<Self>,
        event: &ProviderEvent,
        ctx: &EventContext,
    ) -> Result<Self, FoldError> {
        match (state, event) {
            (
                None,
                ProviderEvent::ProviderRegistered {
                    name,
                    specialties,
                    licensed_regions,
                },
            ) => Ok(Provider {
                id: ctx.stream_id.into(),
                name: name.clone(),
                specialties: specialties.clone(),
                licensed_regions: licensed_regions.clone(),
                version: ctx.version,
            }),
            (Some(_), e) => Err(fold_error(e, ctx, "provider is already registered")),
        }
    }

    fn version(&self) -> i64 {
        self.version
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::testing::*;

    fn register(specialties: &[&str], regions: &[&str]) -> ProviderCommand {
        ProviderCommand::Register {
            name: "Dr. Ada Park".into(),
            specialties: specialties.iter().map(|s| s.to_string()).collect(),
            licensed_regions: regions.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn registering_normalises_and_deduplicates_lists() {
        let events = decide(
            None,
            register(
                &["Pediatrics", "pediatrics ", "Dermatology"],
                &["tx", "TX", "ca"],
            ),
        )
        .unwrap();
        assert_eq!(
            events,
            vec![ProviderEvent::ProviderRegistered {
                name: "Dr. Ada Park".into(),
                specialties: vec!["pediatrics".into(), "dermatology".into()],
                licensed_regions: vec!["TX".into(), "CA".into()],
            }]
        );
        let provider = given::<Provider>(&events).unwrap();
        assert!(provider.has_specialty("pediatrics"));
        assert!(provider.is_licensed_in("CA"));
        assert!(!provider.is_licensed_in("NY"));
    }

    #[test]
    fn registering_without_specialties_is_a_validation_error() {
        assert_eq!(
            rejected_with(decide(None, register(&[], &["TX"]))),
            DomainError::Validation("specialties must list at least one entry".into())
        );
    }

    #[test]
    fn registering_without_licences_is_a_validation_error() {
        assert_eq!(
            rejected_with(decide(None, register(&["pediatrics"], &[]))),
            DomainError::Validation("licensedRegions must list at least one entry".into())
        );
    }

    #[test]
    fn registering_with_a_blank_specialty_is_a_validation_error() {
        assert_eq!(
            rejected_with(decide(None, register(&[" "], &["TX"]))),
            DomainError::Validation("specialties must not be empty".into())
        );
    }

    #[test]
    fn registering_twice_is_rejected() {
        let existing = given::<Provider>(&decide(None, register(&["x"], &["TX"])).unwrap());
        assert!(matches!(
            rejected_with(decide(existing.as_ref(), register(&["x"], &["TX"]))),
            DomainError::InvalidTransition(_)
        ));
    }
}
