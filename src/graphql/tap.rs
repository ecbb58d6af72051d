//! What a shared subscription execution learns about each frame as it runs: the Board
//! version shown (set by the `boardChanged` resolver) and what it disclosed (set by the
//! access edge). The fan-out (`crate::frames`) reads it; GraphQL depends on nothing above it.

use std::sync::Mutex;

use crate::identity::access_log::Disclosure;

/// Set by a group's execution as it goes: the Board version a frame shows (by the
/// `boardChanged` resolver) and what the frame disclosed (by the access edge, which
/// leaves the recording to each receiving socket).
#[derive(Default)]
pub struct FrameTap {
    version: Mutex<Option<i64>>,
    disclosed: Mutex<Option<Disclosed>>,
}

/// What one frame disclosed, as each receiver's access record states it.
#[derive(Debug, Clone)]
pub struct Disclosed {
    /// The root field (`boardChanged`).
    pub operation: String,
    /// The operation's name in the document, if it has one.
    pub operation_name: Option<String>,
    pub disclosed: Disclosure,
}

impl FrameTap {
    pub fn set_version(&self, version: i64) {
        *self.version.lock().expect("frame tap") = Some(version);
    }

    pub fn set_disclosed(&self, disclosed: Option<Disclosed>) {
        *self.disclosed.lock().expect("frame tap") = disclosed;
    }

    pub(crate) fn take(&self) -> (Option<i64>, Option<Disclosed>) {
        (
            self.version.lock().expect("frame tap").take(),
            self.disclosed.lock().expect("frame tap").take(),
        )
    }
}
