//! The outbox's error type.

use courier_core::ValidationError;

/// Why an outbox operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OutboxError {
    /// The envelope, topic or an option is invalid; nothing was written.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// An event with this idempotency key is already in the outbox. The caller's transaction
    /// should be rolled back.
    #[error("duplicate idempotency key {key:?}: an event with this key was already enqueued")]
    DuplicateKey {
        /// The duplicate key.
        key: String,
    },
    /// The database refused an operation or could not be reached. The message includes the
    /// sqlx error's, so it is not also the `source` (a printed chain would repeat it).
    #[error("database error: {0}")]
    Database(sqlx::Error),
    /// Creating or upgrading the outbox tables failed (its message includes the cause's).
    #[error("outbox migration failed: {0}")]
    Migrate(sqlx::migrate::MigrateError),
    /// Missing or inconsistent configuration (unknown URL scheme, partition count mismatch).
    #[error("outbox configuration error: {0}")]
    Config(String),
    /// The bus failed, e.g. closing the relay's publisher at shutdown.
    #[error(transparent)]
    Bus(#[from] courier_core::Error),
    /// The relay task panicked or was aborted.
    #[error("the relay stopped abnormally: {0}")]
    Stopped(String),
}

impl From<sqlx::Error> for OutboxError {
    fn from(error: sqlx::Error) -> Self {
        Self::Database(error)
    }
}

impl From<sqlx::migrate::MigrateError> for OutboxError {
    fn from(error: sqlx::migrate::MigrateError) -> Self {
        Self::Migrate(error)
    }
}

impl OutboxError {
    /// Whether retrying the same operation later may succeed (a lost connection, a broker
    /// that is temporarily unavailable), as opposed to bad input or configuration.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Database(err) => matches!(
                err,
                sqlx::Error::Io(_)
                    | sqlx::Error::PoolTimedOut
                    | sqlx::Error::PoolClosed
                    | sqlx::Error::WorkerCrashed
                    | sqlx::Error::Protocol(_)
            ),
            Self::Bus(err) => err.is_retryable(),
            Self::Invalid(_)
            | Self::DuplicateKey { .. }
            | Self::Migrate(_)
            | Self::Config(_)
            | Self::Stopped(_) => false,
        }
    }
}
