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

    pub fn code(&self) -> &'static str {
        match self {
            AppError::Domain(DomainError::Validation(_)) => "VALIDATION",
            AppError::Domain(DomainError::NotFound(_)) => "NOT_FOUND",
            AppError::Domain(DomainError::InvalidTransition(_)) => "INVALID_TRANSITION",
            AppError::Conflict(_) => "CONFLICT",
            AppError::Stale(_) => "STALE",
            AppError::Unavailable(_) => "UNAVAILABLE",
            AppError::Timeout(_) => "TIMEOUT",
            AppError::Forbidden(_) => "FORBIDDEN",
            AppError::Internal(_) => "INTERNAL",
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
            _ => AppError::Internal(e.into()),
        }
    }
}

impl From<crate::identity::Forbidden> for AppError {
    fn from(f: crate::identity::Forbidden) -> Self {
        AppError::Forbidden(f.to_string())
    }
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
        async_graphql::Error::new(message).extend_with(|_, ext| ext.set("code", code))
    }
}
