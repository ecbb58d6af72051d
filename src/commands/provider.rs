//! Provider commands: register a provider.

use serde::Serialize;

use super::authorize::Target;
use super::path::{authorized, begin, commit_one};
use super::{CommandOptions, Written};
use crate::domain::provider::{self, ProviderCommand};
use crate::domain::{Provider, ProviderId};
use crate::error::AppResult;
use crate::event_store::unit_of_work::CommandMeta;
use crate::event_store::EventStore;

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RegisterProvider {
    pub name: String,
    pub specialties: Vec<String>,
    pub licensed_regions: Vec<String>,
    #[serde(skip)]
    pub options: CommandOptions,
}

pub async fn register_provider(
    store: &EventStore,
    meta: CommandMeta,
    command: RegisterProvider,
) -> AppResult<Written<Provider>> {
    let mut uow = begin!(store, meta, command);
    authorized!(store, uow, Target::NewProvider);
    let events = provider::decide(
        None,
        ProviderCommand::Register {
            name: command.name,
            specialties: command.specialties,
            licensed_regions: command.licensed_regions,
        },
    )?;
    commit_one(uow, ProviderId::new_random(), None, None, events).await
}
