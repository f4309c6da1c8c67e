//! Connection problems librdkafka reports only through a client's error callback, remembered so
//! that the failures they cause say why. A wrong SASL password or an untrusted broker certificate
//! otherwise shows as nothing but timeouts: librdkafka keeps reconnecting, and each event's
//! verdict is "message timed out".

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use courier_core::{Error, ErrorKind};
use rdkafka::error::{KafkaError, RDKafkaErrorCode as Code};
use rdkafka::ClientContext;

/// How long a reported problem explains later failures unless an operation succeeds first.
/// librdkafka reports it again at each reconnection attempt (every few seconds at most).
const MEMORY: Duration = Duration::from_secs(60);

/// The last authentication or TLS failure of a bus's clients (producer, admin client).
#[derive(Default)]
pub(crate) struct LastProblem {
    /// Whether `last` holds a problem: lets [`clear`](Self::clear), called on every delivery,
    /// skip the lock.
    set: AtomicBool,
    last: Mutex<Option<(Instant, String)>>,
}

impl LastProblem {
    /// Remembers what librdkafka's error callback reported, if it is a problem a timeout would
    /// hide. librdkafka's text names the broker and the mechanism, never the credential.
    pub(crate) fn record(&self, error: &KafkaError, reason: &str) {
        let what = match error.rdkafka_error_code() {
            Some(Code::Authentication | Code::SaslAuthenticationFailed) => "authentication failed",
            Some(Code::SSL) => "the TLS connection failed",
            _ => return,
        };
        *self.last.lock().expect("problem lock") = Some((Instant::now(), format!("{what}: {reason}")));
        self.set.store(true, Ordering::Release);
    }

    /// Forgets the problem: an operation went through, so it is over.
    pub(crate) fn clear(&self) {
        // A load first: the delivery path then writes nothing shared while all is well.
        if self.set.load(Ordering::Acquire) && self.set.swap(false, Ordering::AcqRel) {
            self.last.lock().expect("problem lock").take();
        }
    }

    /// `err` explained by a recent problem: a retryable failure (a timeout, a broker that did
    /// not answer) is then a connection error that names the problem first. It stays retryable:
    /// a credential or certificate can be fixed on the broker's side while the bus runs.
    pub(crate) fn explain(&self, err: Error) -> Error {
        let last = self.last.lock().expect("problem lock");
        let recent =
            last.as_ref().filter(|(at, _)| at.elapsed() < MEMORY).map(|(_, problem)| problem.clone());
        drop(last);
        match recent {
            Some(problem) if err.is_retryable() => {
                Error::new(ErrorKind::Connection, format!("{problem} ({})", err.message()))
            }
            _ => err,
        }
    }
}

/// What a client's error callback does: remember the problem, and log the error as
/// rust-rdkafka's default callback does.
pub(crate) fn on_error(problem: &LastProblem, error: KafkaError, reason: &str) {
    problem.record(&error, reason);
    tracing::error!("librdkafka: {error}: {reason}");
}

/// The context of the bus's admin client: its errors feed the bus's [`LastProblem`].
pub(crate) struct ProblemContext(pub(crate) Arc<LastProblem>);

impl ClientContext for ProblemContext {
    fn error(&self, error: KafkaError, reason: &str) {
        on_error(&self.0, error, reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn global(code: Code) -> KafkaError {
        KafkaError::Global(code)
    }

    #[test]
    fn a_recorded_authentication_failure_explains_timeouts_until_cleared() {
        let problem = LastProblem::default();
        let timeout = Error::new(ErrorKind::Timeout, "publishing event e: Message timed out");
        problem.record(&global(Code::AllBrokersDown), "1/1 brokers are down");
        assert_eq!(problem.explain(timeout.clone()).kind(), ErrorKind::Timeout, "not a hidden problem");
        problem.record(&global(Code::Authentication), "SASL authentication error: invalid credentials");
        let explained = problem.explain(timeout.clone());
        assert_eq!(explained.kind(), ErrorKind::Connection);
        assert!(explained.is_retryable());
        assert_eq!(
            explained.message(),
            "authentication failed: SASL authentication error: invalid credentials \
             (publishing event e: Message timed out)"
        );
        let refused = Error::new(ErrorKind::PayloadTooLarge, "too big");
        assert_eq!(problem.explain(refused).kind(), ErrorKind::PayloadTooLarge, "a final verdict stays");
        problem.clear();
        assert_eq!(problem.explain(timeout).kind(), ErrorKind::Timeout);
    }

    #[test]
    fn a_tls_failure_is_named() {
        let problem = LastProblem::default();
        problem.record(&global(Code::SSL), "SSL handshake failed: certificate verify failed");
        let explained = problem.explain(Error::new(ErrorKind::Connection, "no broker answered"));
        assert!(
            explained.message().starts_with("the TLS connection failed: SSL handshake failed"),
            "{explained}"
        );
    }
}
