//! The projections: pure folds from events to documents, and how each document is
//! stored and read. The projector (`crate::projector`) decides when and in what order.
//!
//! - [`registry`]: the registered projections (names, fold versions, routing).
//! - [`doc`]: the `Doc` fold trait and the single-stream document.
//! - [`board_view`]: the Board's fold, and Board contents loaded straight from the log.
//! - [`store`]: loading and saving documents inside the projector's transaction.
//! - [`read`]: the live generation's documents, for queries and the live fan-out.
//! - [`legacy`]: shims for documents written by earlier builds, each with its removal
//!   condition.

pub mod board_view;
pub mod doc;
pub mod legacy;
pub mod read;
pub mod registry;
pub mod store;

pub use board_view::{load_board_contents, load_board_for_matching, BoardDoc};
pub use doc::{Doc, StreamDoc};
pub use registry::Projection;
pub use store::{encode_boards_through_value, save_rows, Row};
