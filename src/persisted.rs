//! Automatic persisted queries: a bounded, least-recently-used map from a query's
//! SHA-256 to its document, shared by every request of this process, bounded both in
//! documents and in the bytes they hold.

use std::collections::HashMap;
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
///
/// Documents are remembered per caller (the verified token's subject; anonymous
/// requests share one scope of their own): a hash finds only what the same caller
/// registered, so no one learns from a hash whether someone else ran a text (a text
/// may hold patient names as literals). The bounds on count and bytes are global, and
/// each caller may hold at most its share of them: past that share a caller forgets its
/// own least recently used documents, so one caller can push out at most its share of
/// everyone else's.
pub struct PersistedQueries {
    documents: Mutex<Documents>,
}

/// Whose documents: `None` for anonymous requests.
type Caller = Option<Arc<str>>;

/// One caller's documents, least recently used first, and what they cost.
struct Held {
    order: lru::LruCache<String, ()>,
    bytes: usize,
}

/// The remembered documents and what they hold.
struct Documents {
    by_key: lru::LruCache<(Caller, String), Arc<str>>,
    callers: HashMap<Caller, Held>,
    /// Bytes of hashes and documents held: a count bound alone would let callers park
    /// `capacity` documents of the largest body each (hundreds of megabytes).
    bytes: usize,
    max_bytes: usize,
    caller_capacity: usize,
    caller_bytes: usize,
}

impl Default for Held {
    fn default() -> Self {
        Held {
            order: lru::LruCache::unbounded(),
            bytes: 0,
        }
    }
}

impl Documents {
    fn cost(hash: &str, document: &str) -> usize {
        hash.len() + document.len()
    }

    fn get(&mut self, caller: &Caller, hash: &str) -> Option<Arc<str>> {
        let document = self
            .by_key
            .get(&(caller.clone(), hash.to_string()))?
            .clone();
        if let Some(held) = self.callers.get_mut(caller) {
            held.order.promote(hash);
        }
        Some(document)
    }

    /// Forgets one document, wherever it is counted.
    fn forget(&mut self, caller: &Caller, hash: &str) {
        let Some(old) = self.by_key.pop(&(caller.clone(), hash.to_string())) else {
            return;
        };
        let cost = Self::cost(hash, &old);
        self.bytes -= cost;
        if let Some(held) = self.callers.get_mut(caller) {
            held.order.pop(hash);
            held.bytes -= cost;
            if held.order.is_empty() {
                self.callers.remove(caller);
            }
        }
    }

    /// Remembers `document` for `caller`, forgetting that caller's least recently used
    /// ones until it holds no more than its share, then anyone's least recently used
    /// until what is held fits the global bounds; one that alone exceeds the caller's
    /// byte share is not remembered (the client keeps sending it whole, which it must
    /// be able to anyway).
    fn put(&mut self, caller: Caller, hash: String, document: &str) {
        let cost = Self::cost(&hash, document);
        if cost > self.max_bytes.min(self.caller_bytes) {
            return;
        }
        self.forget(&caller, &hash);
        loop {
            let held = self.callers.entry(caller.clone()).or_default();
            let over = held.order.len() + 1 > self.caller_capacity
                || held.bytes + cost > self.caller_bytes;
            if !over {
                break;
            }
            let Some((old_hash, ())) = held.order.peek_lru().map(|(h, _)| (h.clone(), ())) else {
                break;
            };
            self.forget(&caller, &old_hash);
        }
        while self.by_key.len() >= self.by_key.cap().get() || self.bytes + cost > self.max_bytes {
            let Some(((old_caller, old_hash), _)) =
                self.by_key.peek_lru().map(|(k, v)| (k.clone(), v.clone()))
            else {
                break;
            };
            self.forget(&old_caller, &old_hash);
        }
        let held = self.callers.entry(caller.clone()).or_default();
        held.order.push(hash.clone(), ());
        held.bytes += cost;
        self.by_key.push((caller, hash), Arc::from(document));
        self.bytes += cost;
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
    /// At most `capacity` documents holding at most `max_bytes` together, of which one
    /// caller holds at most `capacity / callers_share` documents and
    /// `max_bytes / callers_share` bytes.
    pub fn new(capacity: usize, max_bytes: usize, callers_share: usize) -> Self {
        let callers_share = callers_share.max(1);
        Self {
            documents: Mutex::new(Documents {
                by_key: lru::LruCache::new(NonZeroUsize::new(capacity.max(1)).expect("non-zero")),
                callers: HashMap::new(),
                bytes: 0,
                max_bytes,
                caller_capacity: (capacity / callers_share).max(1),
                caller_bytes: max_bytes / callers_share,
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

    /// Fills in `request.query` from its hash among the documents `caller` (the
    /// verified subject, `None` when anonymous) registered, or remembers the document it
    /// carries for that caller.
    pub fn resolve(
        &self,
        caller: Option<&str>,
        request: &mut async_graphql::Request,
    ) -> Result<(), PersistedQueryError> {
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
        let caller: Caller = caller.map(Arc::from);
        let mut documents = self.documents.lock().unwrap_or_else(|e| e.into_inner());
        if request.query.is_empty() {
            return match documents.get(&caller, &hash) {
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
        documents.put(caller, hash, &request.query);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::PersistedQueries;

    fn remember(queries: &PersistedQueries, query: &str) {
        remember_for(queries, None, query)
    }

    fn remember_for(queries: &PersistedQueries, caller: Option<&str>, query: &str) {
        use sha2::Digest;
        let hash = format!("{:x}", sha2::Sha256::digest(query.as_bytes()));
        let mut request: async_graphql::Request = serde_json::from_value(serde_json::json!({
            "query": query,
            "extensions": {"persistedQuery": {"version": 1, "sha256Hash": hash}},
        }))
        .unwrap();
        queries.resolve(caller, &mut request).unwrap();
    }

    #[test]
    fn documents_are_held_within_the_byte_budget() {
        let queries = PersistedQueries::new(100, 10_000, 1);
        for i in 0..50 {
            remember(&queries, &format!("{{ a }} # {i:02} {}", "x".repeat(1_000)));
            assert!(queries.bytes() <= 10_000, "{} bytes held", queries.bytes());
        }
        assert!(queries.bytes() > 8_000, "{} bytes held", queries.bytes());
        // One bigger than the whole budget runs but is not remembered.
        remember(&queries, &"y".repeat(20_000));
        assert!(queries.bytes() <= 10_000, "{} bytes held", queries.bytes());
        // The same document twice is counted once.
        let again = PersistedQueries::new(100, 10_000, 1);
        remember(&again, "{ b }");
        let once = again.bytes();
        remember(&again, "{ b }");
        assert_eq!(again.bytes(), once);
    }

    fn known(queries: &PersistedQueries, caller: Option<&str>, query: &str) -> bool {
        use sha2::Digest;
        let hash = format!("{:x}", sha2::Sha256::digest(query.as_bytes()));
        let mut request: async_graphql::Request = serde_json::from_value(serde_json::json!({
            "extensions": {"persistedQuery": {"version": 1, "sha256Hash": hash}},
        }))
        .unwrap();
        queries.resolve(caller, &mut request).is_ok()
    }

    #[test]
    fn one_caller_pushes_out_at_most_its_share_of_the_others() {
        let queries = PersistedQueries::new(8, 1_000_000, 4);
        for i in 0..6 {
            remember_for(&queries, Some("b"), &format!("{{ b{i} }}"));
        }
        // b holds its share (2) only: its own oldest went first.
        assert!(!known(&queries, Some("b"), "{ b3 }"));
        assert!(known(&queries, Some("b"), "{ b4 }") && known(&queries, Some("b"), "{ b5 }"));
        for c in ["c", "d", "e"] {
            for i in 0..2 {
                remember_for(&queries, Some(c), &format!("{{ {c}{i} }}"));
            }
        }
        // Full (8). a registering many displaces at most 2 of the others' 8.
        for i in 0..50 {
            remember_for(&queries, Some("a"), &format!("{{ a{i} }}"));
        }
        let others = ["b4", "b5", "c0", "c1", "d0", "d1", "e0", "e1"]
            .iter()
            .filter(|q| known(&queries, Some(&q[..1]), &format!("{{ {q} }}")))
            .count();
        assert!(others >= 6, "{others} of the others' documents left");
        // A hash finds only the caller's own documents.
        assert!(!known(&queries, Some("a"), "{ e1 }"));
        assert!(!known(&queries, None, "{ a49 }"));
        assert!(known(&queries, Some("a"), "{ a49 }"));
    }
}
