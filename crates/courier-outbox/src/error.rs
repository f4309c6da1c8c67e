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
    /// Connecting failed for a reason retrying will not fix: the server's TLS certificate does
    /// not verify, the TLS handshake failed, or the server refused the credentials. `problem`
    /// says which in an operator's words; the sqlx error follows it in the message.
    #[error("{problem}: {error}")]
    Connect {
        /// What went wrong, e.g. "TLS certificate verification failed".
        problem: &'static str,
        /// The error sqlx returned.
        error: sqlx::Error,
    },
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
    /// The error of opening a connection: a [`Connect`](Self::Connect) naming the problem when
    /// it is one of TLS or authentication, else a [`Database`](Self::Database) error.
    #[cfg(any(feature = "postgres", feature = "mysql"))]
    pub(crate) fn connecting(error: sqlx::Error) -> Self {
        match connect_problem(&error) {
            Some(problem) => Self::Connect { problem, error },
            None => Self::Database(error),
        }
    }

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
            | Self::Connect { .. }
            | Self::Migrate(_)
            | Self::Config(_)
            | Self::Stopped(_) => false,
        }
    }
}

/// What a failed connection attempt says about TLS or authentication, if anything. sqlx reports
/// a rejected server certificate as an I/O error (the handshake runs inside its socket I/O),
/// which on its own reads like a network fault worth retrying.
#[cfg(any(feature = "postgres", feature = "mysql"))]
fn connect_problem(error: &sqlx::Error) -> Option<&'static str> {
    let tls = match error {
        sqlx::Error::Io(io) => io.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()),
        sqlx::Error::Tls(e) => e.downcast_ref::<rustls::Error>(),
        // SQLSTATE class 28, "invalid authorization specification": PostgreSQL's wrong password
        // (28P01) or refused certificate / pg_hba.conf entry (28000), MySQL's access denied.
        sqlx::Error::Database(e) => {
            return e.code().filter(|code| code.starts_with("28")).map(|_| "authentication failed")
        }
        _ => None,
    };
    tls.map(|tls| match tls {
        rustls::Error::InvalidCertificate(_) => "TLS certificate verification failed",
        rustls::Error::AlertReceived(_) => "the server refused the TLS handshake",
        _ => "TLS handshake failed",
    })
}

#[cfg(all(test, any(feature = "postgres", feature = "mysql")))]
mod tests {
    use std::borrow::Cow;

    use super::*;

    /// A database error with only a SQLSTATE, as a server sends when it refuses a login.
    #[derive(Debug)]
    struct Refused(&'static str);

    impl std::fmt::Display for Refused {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "refused ({})", self.0)
        }
    }

    impl std::error::Error for Refused {}

    impl sqlx::error::DatabaseError for Refused {
        fn message(&self) -> &str {
            "refused"
        }
        fn code(&self) -> Option<Cow<'_, str>> {
            Some(self.0.into())
        }
        fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            self
        }
        fn kind(&self) -> sqlx::error::ErrorKind {
            sqlx::error::ErrorKind::Other
        }
    }

    fn tls_io(error: rustls::Error) -> sqlx::Error {
        sqlx::Error::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, error))
    }

    #[test]
    fn tls_and_authentication_failures_are_named_and_final() {
        let cases = [
            (
                tls_io(rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)),
                "TLS certificate verification failed: ",
            ),
            (
                tls_io(rustls::Error::AlertReceived(rustls::AlertDescription::BadCertificate)),
                "the server refused the TLS handshake: ",
            ),
            (sqlx::Error::Tls(Box::new(rustls::Error::DecryptError)), "TLS handshake failed: "),
            (sqlx::Error::Database(Box::new(Refused("28P01"))), "authentication failed: "),
            (sqlx::Error::Database(Box::new(Refused("28000"))), "authentication failed: "),
        ];
        for (error, prefix) in cases {
            let error = OutboxError::connecting(error);
            assert!(error.to_string().starts_with(prefix), "{error}");
            assert!(!error.is_retryable(), "{error}");
        }
    }

    #[test]
    fn other_connection_failures_stay_database_errors() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let error = OutboxError::connecting(sqlx::Error::Io(refused));
        assert!(matches!(error, OutboxError::Database(_)) && error.is_retryable(), "{error}");
        let error = OutboxError::connecting(sqlx::Error::Database(Box::new(Refused("3D000"))));
        assert!(matches!(error, OutboxError::Database(_)), "{error}");
    }
}
