//! What a projected document is: a fold over events, one stream version at a time,
//! that knows which versions it has passed. [`StreamDoc`] is the document of the
//! single-stream views; the Board's is [`super::BoardDoc`].

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::{Aggregate, FoldError};
use crate::event_store::{decode_apply, RecordedEvent};

/// A projected document: folds events one stream version at a time.
pub trait Doc: Default + Clone + Serialize + DeserializeOwned + Send + Sync {
    /// The last version of `stream_id` applied to (or skipped by) this document.
    fn applied_version(&self, stream_id: Uuid) -> i64;
    /// Applies the event (whose version must be the next of its stream). On error the
    /// document is unchanged.
    fn apply(&mut self, e: &RecordedEvent) -> Result<(), FoldError>;
    /// Records a dead-lettered event as passed, without its effect.
    fn skip(&mut self, e: &RecordedEvent);
    /// Every stream this document has passed events of, with the last version passed.
    fn streams(&self, document_id: Uuid) -> Vec<(Uuid, i64)>;
    /// Events this document has passed: when to snapshot it.
    fn count(&self) -> i64;
    /// The snapshot's `max_recorded_at`, if this document may be snapshotted.
    fn snapshot_ready(&self) -> Option<chrono::DateTime<chrono::Utc>>;
}

/// A document that is one stream's folded state (appointment and shift views).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(bound = "A: Serialize + DeserializeOwned")]
pub struct StreamDoc<A> {
    pub state: Option<A>,
    pub applied: i64,
    #[serde(default)]
    pub max_recorded_at: Option<chrono::DateTime<chrono::Utc>>,
    #[serde(default)]
    pub skipped: i64,
}

impl<A> Default for StreamDoc<A> {
    fn default() -> Self {
        Self {
            state: None,
            applied: 0,
            max_recorded_at: None,
            skipped: 0,
        }
    }
}

impl<A: Aggregate + Serialize + DeserializeOwned + Send + Sync> Doc for StreamDoc<A> {
    fn applied_version(&self, _: Uuid) -> i64 {
        self.applied
    }

    fn apply(&mut self, e: &RecordedEvent) -> Result<(), FoldError> {
        self.state = Some(decode_apply::<A>(self.state.clone(), e)?);
        self.applied = e.version;
        self.max_recorded_at = self.max_recorded_at.max(Some(e.recorded_at));
        Ok(())
    }

    fn skip(&mut self, e: &RecordedEvent) {
        self.applied = e.version;
        self.max_recorded_at = self.max_recorded_at.max(Some(e.recorded_at));
        self.skipped += 1;
    }

    fn count(&self) -> i64 {
        self.applied
    }

    fn snapshot_ready(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        (self.skipped == 0)
            .then_some(self.max_recorded_at)
            .flatten()
    }

    fn streams(&self, document_id: Uuid) -> Vec<(Uuid, i64)> {
        vec![(document_id, self.applied)]
    }
}
