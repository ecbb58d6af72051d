//! Careboard's integration tests: one binary (one link, one harness) with a module per
//! area. Every test starts what it needs against a fresh database from [`helpers`]:
//! the real server on port 0 spoken to over HTTP and websocket, or the store, projector
//! and matcher directly where the test is about them.

mod helpers;

mod demo;
mod event_store;
mod graphql;
mod hardening;
mod identity;
mod live;
mod matching;
mod page;
mod projector;
mod schema;
mod time_travel;
