//! Automatic persisted queries: a bounded, least-recently-used map from a query's
//! SHA-256 to its document, shared by every request of this process.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use async_graphql::ServerError;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::error::ErrorCode;

/// Automatic persisted queries (the protocol Apollo clients speak): a client sends the
/// SHA-256 of its query in `extensions.persistedQuery`; if this process knows the
/// document it runs it, otherwise it answers `PERSISTED_QUERY_NOT_FOUND` and the client
/// sends hash and document together once, which is checked and remembered.
pub struct PersistedQueries {
    documents: Mutex<lru::LruCache<String, Arc<str>>>,
}

/// Why a persisted query could not be used.
#[derive(Debug)]
pub struct PersistedQueryError {
    status: StatusCode,
    code: ErrorCode,
    message: String,
}

impl PersistedQueryError {
    /// `graphql_response_media`: the client asked for `application/graphql-response+json`,
    /// whose status codes say what went wrong (plain JSON answers 200).
    pub fn into_response(self, graphql_response_media: bool) -> Response {
        let mut error = ServerError::new(self.message, None);
        error
            .extensions
            .get_or_insert_with(Default::default)
            .set("code", self.code.as_str());
        let status = if graphql_response_media {
            self.status
        } else {
            StatusCode::OK
        };
        (status, Json(json!({ "errors": [error] }))).into_response()
    }
}

impl PersistedQueries {
    pub fn new(capacity: usize) -> Self {
        Self {
            documents: Mutex::new(lru::LruCache::new(
                NonZeroUsize::new(capacity.max(1)).expect("non-zero"),
            )),
        }
    }

    /// Fills in `request.query` from its hash, or remembers the document it carries.
    pub fn resolve(&self, request: &mut async_graphql::Request) -> Result<(), PersistedQueryError> {
        let Some(persisted) = request.extensions.0.get("persistedQuery") else {
            return Ok(());
        };
        let persisted = persisted.clone().into_json().unwrap_or_default();
        let invalid = |message: &str| PersistedQueryError {
            status: StatusCode::BAD_REQUEST,
            code: ErrorCode::Validation,
            message: message.to_string(),
        };
        if persisted["version"] != 1 {
            return Err(PersistedQueryError {
                status: StatusCode::BAD_REQUEST,
                code: ErrorCode::PersistedQueryNotSupported,
                message: "PersistedQueryNotSupported: only persistedQuery version 1 is supported"
                    .into(),
            });
        }
        let hash = persisted["sha256Hash"]
            .as_str()
            .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
            .map(str::to_ascii_lowercase)
            .ok_or_else(|| invalid("persistedQuery.sha256Hash must be 64 hexadecimal digits"))?;
        let mut documents = self.documents.lock().unwrap_or_else(|e| e.into_inner());
        if request.query.is_empty() {
            return match documents.get(&hash) {
                Some(document) => {
                    request.query = document.to_string();
                    Ok(())
                }
                None => Err(PersistedQueryError {
                    status: StatusCode::OK,
                    code: ErrorCode::PersistedQueryNotFound,
                    message: "PersistedQueryNotFound".into(),
                }),
            };
        }
        let actual = format!("{:x}", Sha256::digest(request.query.as_bytes()));
        if actual != hash {
            return Err(invalid(
                "persistedQuery.sha256Hash is not the SHA-256 of the query sent with it",
            ));
        }
        documents.put(hash, Arc::from(request.query.as_str()));
        Ok(())
    }
}
