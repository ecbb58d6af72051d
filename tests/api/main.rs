//! Careboard's integration tests: one binary (one link, one harness) with a module per
//! area. Every test starts what it needs against a fresh database from [`helpers`]:
//! the real server on port 0 spoken to over HTTP and websocket, or the store, projector
//! and matcher directly where the test is about them.

mod attacks;
mod authorization;
mod board_pages;
mod demo;
mod edge;
mod error_codes;
mod event_store;
mod first_hour;
mod first_hour_cli;
mod frames;
mod graphql;
mod graphql_http_audit;
mod graphql_ws_client;
mod hardening;
mod helpers;
mod identity;
mod layout;
mod live;
mod matching;
mod outside;
mod packaging;
mod page;
mod projector;
mod readme_walkthrough;
mod rebuild;
mod schema;
mod time_travel;
