//! `AppError`: the two tiers of failure and their one mapping to GraphQL errors.
//!
//! A domain error (the user asked for something impossible) is sent as it is, with a
//! machine-readable `extensions.code`. An infrastructure error (something broke) is
//! logged with a reference id and sent only as "internal error" plus that reference.
//!
//! `AppError` deliberately does not implement `Display`: async-graphql converts every
//! `Display` type into an error without a code, and leaving it out makes the compiler
//! route every `?` in a resolver through the mapping below.

use async_graphql::ErrorExtensions;

use crate::domain::DomainError;

/// Every `extensions.code` Careboard answers with, from the resolvers (through
/// [`AppError`]) and from the HTTP and websocket edges. The README's "Error codes" table
/// lists each one, and a test keeps the two in step: a code is added here (and to
/// [`ErrorCode::ALL`]) and to the table, or not at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// Bad input: ids, dates, names, documents, variables, limits, bodies.
    Validation,
    NotFound,
    InvalidTransition,
    Conflict,
    Stale,
    Unavailable,
    /// A mutation was carried out but its answer, which shows patient fields, could not
    /// be recorded in the access log, so it is withheld (`extensions.committed: true`).
    ResultWithheld,
    Timeout,
    Internal,
    /// No valid bearer token where one is required (HTTP 401).
    Unauthenticated,
    /// Not allowed: an origin outside the CORS allow-list (HTTP 403), or the caller's
    /// role or scope under the permission matrix.
    Forbidden,
    /// Over the per-client rate limit (HTTP 429).
    RateLimited,
    PersistedQueryNotFound,
    PersistedQueryNotSupported,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 14] = [
        ErrorCode::Validation,
        ErrorCode::NotFound,
        ErrorCode::InvalidTransition,
        ErrorCode::Conflict,
        ErrorCode::Stale,
        ErrorCode::Unavailable,
        ErrorCode::ResultWithheld,
        ErrorCode::Timeout,
        ErrorCode::Internal,
        ErrorCode::Unauthenticated,
        ErrorCode::Forbidden,
        ErrorCode::RateLimited,
        ErrorCode::PersistedQueryNotFound,
        ErrorCode::PersistedQueryNotSupported,
    ];

    /// A GraphQL error with this code and `message` (no position: an edge's refusal).
    pub fn error(self, message: impl Into<String>) -> async_graphql::ServerError {
        let mut error = async_graphql::ServerError::new(message, None);
        error
            .extensions
            .get_or_insert_with(Default::default)
            .set("code", self.as_str());
        error
    }

    /// The spelling clients see in `extensions.code`.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Validation => "VALIDATION",
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::InvalidTransition => "INVALID_TRANSITION",
            ErrorCode::Conflict => "CONFLICT",
            ErrorCode::Stale => "STALE",
            ErrorCode::Unavailable => "UNAVAILABLE",
            ErrorCode::ResultWithheld => "RESULT_WITHHELD",
            ErrorCode::Timeout => "TIMEOUT",
            ErrorCode::Internal => "INTERNAL",
            ErrorCode::Unauthenticated => "UNAUTHENTICATED",
            ErrorCode::Forbidden => "FORBIDDEN",
            ErrorCode::RateLimited => "RATE_LIMITED",
            ErrorCode::PersistedQueryNotFound => "PERSISTED_QUERY_NOT_FOUND",
            ErrorCode::PersistedQueryNotSupported => "PERSISTED_QUERY_NOT_SUPPORTED",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

#[derive(Debug)]
pub enum AppError {
    Domain(DomainError),
    /// Optimistic-concurrency or lock conflict: the client may re-read and retry.
    Conflict(String),
    /// A read-your-writes wait ran out before the projector reached the position.
    Stale(String),
    /// The database cannot be reached (or the pool is exhausted): retry shortly.
    Unavailable(String),
    /// The request ran past its time limit and was cancelled.
    Timeout(String),
    /// The permission matrix refuses the caller (DESIGN §9): says what is missing, in
    /// terms of role and scope, never what the target holds.
    Forbidden(String),
    Internal(anyhow::Error),
}

pub type AppResult<T> = Result<T, AppError>;

impl AppError {
    pub fn validation(msg: impl Into<String>) -> Self {
        AppError::Domain(DomainError::Validation(msg.into()))
    }

    pub fn not_found(msg: impl Into<String>) -> Self {
        AppError::Domain(DomainError::NotFound(msg.into()))
    }

    pub fn code(&self) -> ErrorCode {
        match self {
            AppError::Domain(DomainError::Validation(_)) => ErrorCode::Validation,
            AppError::Domain(DomainError::NotFound(_)) => ErrorCode::NotFound,
            AppError::Domain(DomainError::InvalidTransition(_)) => ErrorCode::InvalidTransition,
            AppError::Conflict(_) => ErrorCode::Conflict,
            AppError::Stale(_) => ErrorCode::Stale,
            AppError::Unavailable(_) => ErrorCode::Unavailable,
            AppError::Timeout(_) => ErrorCode::Timeout,
            AppError::Forbidden(_) => ErrorCode::Forbidden,
            AppError::Internal(_) => ErrorCode::Internal,
        }
    }

    /// The message a client may see.
    pub fn public_message(&self) -> String {
        match self {
            AppError::Domain(e) => e.to_string(),
            AppError::Conflict(m)
            | AppError::Stale(m)
            | AppError::Unavailable(m)
            | AppError::Timeout(m)
            | AppError::Forbidden(m) => m.clone(),
            AppError::Internal(_) => "internal error".to_string(),
        }
    }

    /// For logs and tests: the whole story, internal details included.
    pub fn describe(&self) -> String {
        match self {
            AppError::Internal(e) => format!("internal error: {e:#}"),
            other => format!("{}: {}", other.code(), other.public_message()),
        }
    }
}

impl From<DomainError> for AppError {
    fn from(e: DomainError) -> Self {
        AppError::Domain(e)
    }
}

impl From<sqlx::Error> for AppError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            // The database is down or every connection is busy: not a bug, and the
            // client can retry.
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
                tracing::warn!(error = %e, "database unavailable");
                AppError::unavailable()
            }
            // 57014: statement_timeout cancelled the query.
            sqlx::Error::Database(db) if db.code().as_deref() == Some("57014") => {
                AppError::Timeout("the request ran too long and was cancelled".into())
            }
            _ if time_out_of_range(&e) => AppError::validation(TIME_OUT_OF_RANGE),
            _ => AppError::Internal(e.into()),
        }
    }
}

/// A time the request gave (an `asOf`, a `from`) that PostgreSQL cannot hold: bad
/// input, not a fault of the service.
const TIME_OUT_OF_RANGE: &str =
    "a time outside what can be stored: give one between 4713 BC and 294276 AD";

/// 22008 (`datetime_field_overflow`): a time past PostgreSQL's range.
fn time_out_of_range(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("22008"))
}

impl AppError {
    pub fn unavailable() -> Self {
        AppError::Unavailable("the database is unavailable; retry shortly".into())
    }
}

impl From<anyhow::Error> for AppError {
    fn from(e: anyhow::Error) -> Self {
        let unavailable = e.chain().any(|cause| {
            matches!(
                cause.downcast_ref::<sqlx::Error>(),
                Some(sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_))
            )
        });
        if unavailable {
            tracing::warn!(error = %e, "database unavailable");
            return AppError::unavailable();
        }
        if e.chain().any(|cause| {
            cause
                .downcast_ref::<sqlx::Error>()
                .is_some_and(time_out_of_range)
        }) {
            return AppError::validation(TIME_OUT_OF_RANGE);
        }
        AppError::Internal(e)
    }
}

impl From<AppError> for async_graphql::Error {
    fn from(e: AppError) -> Self {
        let code = e.code();
        let message = match &e {
            AppError::Internal(inner) => {
                let reference = uuid::Uuid::new_v4();
                tracing::error!(%reference, error = ?inner, "internal error while serving a request");
                format!("internal error (reference {reference})")
            }
            other => other.public_message(),
        };
        async_graphql::Error::new(message).extend_with(|_, ext| ext.set("code", code.as_str()))
    }
}
