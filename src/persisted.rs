//! Automatic persisted queries: a bounded, least-recently-used map from a query's
//! SHA-256 to its document, shared by every request of this process, bounded both in
//! documents and in the bytes they hold.

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
    documents: Mutex<Documents>,
}

/// The remembered documents and what they hold.
struct Documents {
    by_hash: lru::LruCache<String, Arc<str>>,
    /// Bytes of hashes and documents held: a count bound alone would let callers park
    /// `capacity` documents of the largest body each (hundreds of megabytes).
    bytes: usize,
    max_bytes: usize,
}

impl Documents {
    fn cost(hash: &str, document: &str) -> usize {
        hash.len() + document.len()
    }

    /// Remembers `document`, forgetting the least recently used ones until what is
    /// held fits `max_bytes`; one that alone exceeds it is not remembered (the client
    /// keeps sending it whole, which it must be able to anyway).
    fn put(&mut self, hash: String, document: &str) {
        let cost = Self::cost(&hash, document);
        if cost > self.max_bytes {
            return;
        }
        if let Some((old_hash, old)) = self.by_hash.push(hash, Arc::from(document)) {
            self.bytes -= Self::cost(&old_hash, &old);
        }
        self.bytes += cost;
        while self.bytes > self.max_bytes {
            let Some((old_hash, old)) = self.by_hash.pop_lru() else {
                break;
            };
            self.bytes -= Self::cost(&old_hash, &old);
        }
    }
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
    /// At most `capacity` documents holding at most `max_bytes` together.
    pub fn new(capacity: usize, max_bytes: usize) -> Self {
        Self {
            documents: Mutex::new(Documents {
                by_hash: lru::LruCache::new(NonZeroUsize::new(capacity.max(1)).expect("non-zero")),
                bytes: 0,
                max_bytes,
            }),
        }
    }

    /// Bytes of hashes and documents held now.
    pub fn bytes(&self) -> usize {
        self.documents
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .bytes
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
            return match documents.by_hash.get(&hash) {
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
        documents.put(hash, &request.query);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::PersistedQueries;

    fn remember(queries: &PersistedQueries, query: &str) {
        use sha2::Digest;
        let hash = format!("{:x}", sha2::Sha256::digest(query.as_bytes()));
        let mut request: async_graphql::Request = serde_json::from_value(serde_json::json!({
            "query": query,
            "extensions": {"persistedQuery": {"version": 1, "sha256Hash": hash}},
        }))
        .unwrap();
        queries.resolve(&mut request).unwrap();
    }

    #[test]
    fn documents_are_held_within_the_byte_budget() {
        let queries = PersistedQueries::new(100, 10_000);
        for i in 0..50 {
            remember(&queries, &format!("{{ a }} # {i:02} {}", "x".repeat(1_000)));
            assert!(queries.bytes() <= 10_000, "{} bytes held", queries.bytes());
        }
        assert!(queries.bytes() > 8_000, "{} bytes held", queries.bytes());
        // One bigger than the whole budget runs but is not remembered.
        remember(&queries, &"y".repeat(20_000));
        assert!(queries.bytes() <= 10_000, "{} bytes held", queries.bytes());
        // The same document twice is counted once.
        let again = PersistedQueries::new(100, 10_000);
        remember(&again, "{ b }");
        let once = again.bytes();
        remember(&again, "{ b }");
        assert_eq!(again.bytes(), once);
    }
}
