//! Errors shared by every backend: a kind that says whether retrying can help, and a message that
//! names what went wrong.

use std::fmt;
use std::sync::Arc;

/// What class of failure an [`Error`] is; decides [`ErrorKind::is_retryable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The input (envelope, topic, option) is invalid; nothing was written.
    InvalidInput,
    /// The payload exceeds the configured or broker maximum.
    PayloadTooLarge,
    /// The destination does not exist (no stream for the subject, unknown topic).
    NotFound,
    /// The broker refused the event for a reason retrying will not fix.
    Rejected,
    /// Configuration is missing or inconsistent.
    Config,
    /// The publisher or subscriber was closed before the operation.
    Closed,
    /// A bounded queue stayed full for longer than allowed.
    Backpressure,
    /// No verdict arrived in time (ACK timeout, flush timeout).
    Timeout,
    /// The connection to the broker or database failed or was lost.
    Connection,
    /// The broker is temporarily unable to accept the event (leader election, not enough replicas).
    Unavailable,
    /// The transport lost track of an accepted event without a verdict; the event may or may not
    /// have reached the broker, so it must be re-published (brokers de-duplicate by event id).
    Lost,
}

impl ErrorKind {
    /// Whether the same operation may succeed if tried again later.
    pub const fn is_retryable(self) -> bool {
        matches!(self, Self::Backpressure | Self::Timeout | Self::Connection | Self::Unavailable | Self::Lost)
    }

    const fn as_str(self) -> &'static str {
        match self {
            Self::InvalidInput => "invalid input",
            Self::PayloadTooLarge => "payload too large",
            Self::NotFound => "not found",
            Self::Rejected => "rejected",
            Self::Config => "configuration error",
            Self::Closed => "closed",
            Self::Backpressure => "backpressure",
            Self::Timeout => "timeout",
            Self::Connection => "connection error",
            Self::Unavailable => "unavailable",
            Self::Lost => "lost",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A Courier error: a kind plus a human message, optionally wrapping the client library's error.
///
/// Cheap to clone so one broker failure can be reported for every event it affected.
///
/// A wrapped error's text is part of the message, so `to_string()` (what logs and the outbox's
/// `last_error` record) says everything. As with [`std::io::Error`], [`source`] then continues
/// with the wrapped error's own source, so that printing the chain (`{:#}` with anyhow) shows
/// each cause once; [`get_ref`](Self::get_ref) gives the wrapped error itself.
///
/// [`source`]: std::error::Error::source
#[derive(Debug, Clone)]
pub struct Error {
    kind: ErrorKind,
    message: Arc<str>,
    wrapped: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.wrapped.as_deref()?.source()
    }
}

impl Error {
    /// An error of `kind` described by `message`, which should name what failed and why.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into().into(), wrapped: None }
    }

    /// Wraps a client library error: the message is `context: <the error's text>`.
    pub fn with_source(
        kind: ErrorKind,
        context: impl fmt::Display,
        error: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self { kind, message: format!("{context}: {error}").into(), wrapped: Some(Arc::new(error)) }
    }

    /// What kind of failure this is; callers decide on retries by it.
    pub const fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The human-readable description, without the kind.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The client library's error this one wraps, e.g. to downcast it.
    pub fn get_ref(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        self.wrapped.as_deref()
    }

    /// Whether the same operation may succeed if tried again; see [`ErrorKind::is_retryable`].
    pub const fn is_retryable(&self) -> bool {
        self.kind.is_retryable()
    }
}

impl From<ValidationError> for Error {
    fn from(err: ValidationError) -> Self {
        let kind = match err.field {
            "payload" => ErrorKind::PayloadTooLarge,
            _ => ErrorKind::InvalidInput,
        };
        Self { kind, message: err.to_string().into(), wrapped: Some(Arc::new(err)) }
    }
}

/// Input refused at construction or enqueue, naming the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {reason}")]
pub struct ValidationError {
    /// The envelope field or option that is invalid, e.g. `aggregate_id`.
    pub field: &'static str,
    /// Why the value was refused.
    pub reason: String,
}

impl ValidationError {
    /// Refuses `field` for `reason`.
    pub fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self { field, reason: reason.into() }
    }
}

/// A subscriber handler's failure. Retryable failures are retried with backoff; the others go to
/// the dead-letter destination at once.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct HandlerError {
    message: String,
    retryable: bool,
}

impl HandlerError {
    /// A failure that may pass on a later attempt (a database hiccup, a timeout).
    pub fn retryable(message: impl Into<String>) -> Self {
        Self { message: message.into(), retryable: true }
    }

    /// A failure no retry will fix (malformed payload); the event is dead-lettered at once.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self { message: message.into(), retryable: false }
    }

    /// Whether the dispatch engine retries the handler (until `max_attempts`).
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }

    /// The description, carried into the dead-letter reason header.
    pub fn message(&self) -> &str {
        &self.message
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    /// Every message in the chain, outermost first.
    fn chain(error: &Error) -> Vec<String> {
        let mut texts = vec![error.to_string()];
        let mut next = error.source();
        while let Some(cause) = next {
            texts.push(cause.to_string());
            next = cause.source();
        }
        texts
    }

    #[test]
    fn a_wrapped_error_is_printed_once() {
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        let error = Error::with_source(ErrorKind::Connection, "connecting to NATS at nats://h:4222", refused);
        assert_eq!(
            chain(&error),
            ["connection error: connecting to NATS at nats://h:4222: connection refused"]
        );
        assert!(error.get_ref().unwrap().downcast_ref::<std::io::Error>().is_some());
    }

    #[test]
    fn a_validation_error_is_printed_once_and_still_reachable() {
        let error = Error::from(ValidationError::new("aggregate_id", "must not be empty"));
        assert_eq!(chain(&error), ["invalid input: invalid aggregate_id: must not be empty"]);
        assert_eq!(error.get_ref().unwrap().downcast_ref::<ValidationError>().unwrap().field, "aggregate_id");
    }
}
