//! [`NatsTransport`]: JetStream publishes with `Nats-Msg-Id` = event id, and one ack-collector
//! task per publisher that awaits every PubAck and resolves the event's completion.

use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::header::{HeaderName, IntoHeaderName};
use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::publish::PublishAck;
use async_nats::jetstream::{self, ErrorCode};
use async_nats::{Client, HeaderMap};
use courier_core::wire::{self, HeaderSink, HeaderStyle, WireMode};
use courier_core::{
    Completion, Envelope, Error, ErrorKind, EventId, Position, Receipt, Topic, Transport,
    DEAD_LETTER_REASON_HEADER,
};
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::time::{timeout_at, Instant};

/// The header JetStream de-duplicates by.
pub(crate) const MSG_ID_HEADER: &str = "Nats-Msg-Id";

/// The `Nats-Msg-Id` of the dead-letter copy, on `dead_letter_topic`, of the message whose id is
/// `original_id`. It must differ from the original's: a stream holding both subjects (a user's
/// `orders.>`) would answer "duplicate" and store nothing. It is derived, not random, so
/// dead-lettering the same message again (after a redelivery) is still de-duplicated.
pub(crate) fn dead_letter_msg_id(dead_letter_topic: &Topic, original_id: &str) -> String {
    format!("dlq:{dead_letter_topic}:{original_id}")
}

type PubAckFuture = Pin<Box<dyn Future<Output = Result<PublishAck, PublishError>> + Send>>;

/// An accepted event whose PubAck is awaited by the collector.
struct Pending {
    ack: PubAckFuture,
    topic: Topic,
    completion: Completion,
    /// When its verdict is due: the ack timeout after `send` started.
    deadline: Instant,
}

/// The server's `max_payload`, re-read after every (re)connect because a restarted or different
/// server may announce another limit.
#[derive(Default)]
pub(crate) struct ServerLimit {
    max_payload: AtomicUsize,
    stale: AtomicBool,
}

impl ServerLimit {
    pub(crate) fn mark_stale(&self) {
        self.stale.store(true, Ordering::Release);
    }

    pub(crate) fn get(&self, client: &Client) -> usize {
        if self.stale.swap(false, Ordering::AcqRel) || self.max_payload.load(Ordering::Acquire) == 0 {
            let max = client.server_info().max_payload;
            self.max_payload.store(max, Ordering::Release);
        }
        self.max_payload.load(Ordering::Acquire)
    }
}

/// Publishes accepted events to JetStream. Made by [`NatsBus::publisher`](crate::NatsBus);
/// each publisher has its own JetStream context and ack collector.
pub struct NatsTransport {
    client: Client,
    context: jetstream::Context,
    wire_mode: WireMode,
    limit: Arc<ServerLimit>,
    ack_timeout: Duration,
    pending: mpsc::UnboundedSender<Pending>,
}

impl NatsTransport {
    pub(crate) fn new(
        client: Client,
        wire_mode: WireMode,
        limit: Arc<ServerLimit>,
        ack_timeout: Duration,
        window: usize,
    ) -> Self {
        // The context's own in-flight limit is the window, so it never blocks below it.
        let context = jetstream::ContextBuilder::new()
            .timeout(ack_timeout)
            .max_ack_inflight(window.max(1))
            .backpressure_on_inflight(true)
            .build(client.clone());
        let (pending, rx) = mpsc::unbounded_channel();
        tokio::spawn(collect_acks(rx, ack_timeout));
        Self { client, context, wire_mode, limit, ack_timeout, pending }
    }
}

/// An async-nats header map filled straight from the encoder, counting the bytes the headers
/// take on the wire.
#[derive(Default)]
struct NatsHeaders {
    map: HeaderMap,
    /// `name: value\r\n` lines so far.
    line_bytes: usize,
}

impl NatsHeaders {
    fn insert(&mut self, name: HeaderName, value: &str) {
        self.line_bytes += AsRef::<str>::as_ref(&name).len() + value.len() + 4;
        self.map.insert(name, value);
    }
}

impl HeaderSink for NatsHeaders {
    fn put(&mut self, name: &str, value: &str) {
        self.insert(name.into_header_name(), value);
    }

    fn put_static(&mut self, name: &'static str, value: &str) {
        self.insert(HeaderName::from_static(name), value);
    }
}

/// Builds the message; `Err` when it cannot be sent at all (too large for the server).
fn message(
    topic: &Topic,
    envelope: &Envelope,
    mode: WireMode,
    max_payload: usize,
) -> Result<PublishMessage, Error> {
    let mut headers = NatsHeaders::default();
    let body = wire::encode(envelope, mode, HeaderStyle::Nats, &mut headers);
    let mut id_buffer = [0; EventId::TEXT_LEN];
    let event_id = envelope.event_id().encode(&mut id_buffer);
    if envelope.headers().contains_key(DEAD_LETTER_REASON_HEADER) {
        headers.put_static(MSG_ID_HEADER, &dead_letter_msg_id(topic, event_id));
    } else {
        headers.put_static(MSG_ID_HEADER, event_id);
    }
    // The server counts the serialized header block plus the body against `max_payload`, and
    // closes the connection of a client that exceeds it, so oversized events stop here.
    let size = b"NATS/1.0\r\n\r\n".len() + headers.line_bytes + body.len();
    if size > max_payload {
        return Err(Error::new(
            ErrorKind::PayloadTooLarge,
            format!(
                "event {}: payload with headers is {size} bytes, above the server's max_payload of {max_payload} bytes",
                envelope.event_id()
            ),
        ));
    }
    Ok(PublishMessage::build().headers(headers.map).payload(body))
}

impl Transport for NatsTransport {
    async fn send(&self, topic: &Topic, envelope: Envelope, completion: Completion) {
        // One deadline for the whole publish, queueing included, so the verdict comes within
        // `verdict_timeout` of this call.
        let deadline = Instant::now() + self.ack_timeout;
        let max_payload = self.limit.get(&self.client);
        let message = match message(topic, &envelope, self.wire_mode, max_payload) {
            Ok(message) => message,
            Err(err) => return completion.complete(Err(err)),
        };
        // Awaits the client's outgoing queue (backpressure while disconnected).
        let sent = timeout_at(deadline, self.context.send_publish(topic.as_str().to_owned(), message)).await;
        let sent = sent.unwrap_or_else(|_| Err(PublishError::new(PublishErrorKind::TimedOut)));
        match sent {
            Ok(ack) => {
                let pending = Pending { ack: ack.into_future(), topic: topic.clone(), completion, deadline };
                if let Err(unsent) = self.pending.send(pending) {
                    // Unreachable while the transport lives: the collector ends only after this
                    // sender is dropped. Report it rather than hide it.
                    let Pending { completion, .. } = unsent.0;
                    completion.complete(Err(Error::new(ErrorKind::Lost, "the ack collector stopped")));
                }
            }
            Err(err) => {
                let verdict = verdict(&completion, topic, Err(err), self.ack_timeout);
                completion.complete(verdict);
            }
        }
    }

    async fn flush(&self) {
        if let Err(err) = self.client.flush().await {
            tracing::warn!(%err, "flushing the NATS connection failed; outstanding PubAcks will time out");
        }
    }

    fn max_payload(&self) -> usize {
        self.limit.get(&self.client)
    }

    /// The ack timeout, from `send` to the verdict. A message the client already took (written
    /// to a stalled server's socket, or buffered while reconnecting) cannot be called back: it
    /// may still be stored later, and JetStream then drops it as a duplicate of a re-publish
    /// made within the stream's duplicate window.
    fn verdict_timeout(&self) -> Duration {
        self.ack_timeout
    }
}

/// Awaits all PubAcks of one publisher concurrently and resolves their completions. Ends when the
/// transport is dropped and every PubAck has arrived or timed out.
async fn collect_acks(mut rx: mpsc::UnboundedReceiver<Pending>, ack_timeout: Duration) {
    let mut inflight = FuturesUnordered::new();
    let mut open = true;
    let resolve = |p: Pending| async move {
        let Pending { ack, topic, completion, deadline } = p;
        let result = timeout_at(deadline, ack)
            .await
            .unwrap_or_else(|_| Err(PublishError::new(PublishErrorKind::TimedOut)));
        let verdict = verdict(&completion, &topic, result, ack_timeout);
        completion.complete(verdict);
    };
    loop {
        tokio::select! {
            next = rx.recv(), if open => match next {
                Some(p) => {
                    inflight.push(resolve(p));
                    while let Ok(p) = rx.try_recv() {
                        inflight.push(resolve(p));
                    }
                }
                None => open = false,
            },
            Some(()) = inflight.next(), if !inflight.is_empty() => {}
            else => break,
        }
    }
}

/// Maps a PubAck or publish failure to the event's verdict.
fn verdict(
    completion: &Completion,
    topic: &Topic,
    result: Result<PublishAck, PublishError>,
    ack_timeout: Duration,
) -> Result<Receipt, Error> {
    let event_id = completion.event_id();
    let ack = result.map_err(|err| publish_error(err, topic, ack_timeout))?;
    Ok(Receipt {
        event_id,
        position: Position::Stream { stream: ack.stream, sequence: ack.sequence },
        duplicate: ack.duplicate,
    })
}

fn publish_error(err: PublishError, topic: &Topic, ack_timeout: Duration) -> Error {
    let subject = topic.as_str();
    let (kind, message) = match err.kind() {
        // The server's "no responders" answer: nothing listens on the subject. Either no stream
        // holds it yet (provisioning may still come) or its stream is between leaders (election,
        // restart), so a later attempt can succeed.
        PublishErrorKind::StreamNotFound => (ErrorKind::Unavailable, missing_stream(subject)),
        PublishErrorKind::TimedOut => (
            ErrorKind::Timeout,
            format!(
                "no PubAck for subject {subject:?} within {ack_timeout:?}; the event may or may not be stored"
            ),
        ),
        PublishErrorKind::BrokenPipe => {
            (ErrorKind::Connection, format!("the NATS connection lost the PubAck for subject {subject:?}"))
        }
        PublishErrorKind::MaxAckPending => {
            (ErrorKind::Backpressure, "too many PubAcks outstanding on this connection".to_owned())
        }
        _ => {
            // A JetStream API error in the PubAck, or a client failure (connection closed).
            match std::error::Error::source(&err).and_then(|source| source.downcast_ref::<jetstream::Error>())
            {
                // The stream was deleted, or is not (yet) known to the answering server.
                Some(api) if api.error_code() == ErrorCode::STREAM_NOT_FOUND => {
                    (ErrorKind::Unavailable, missing_stream(subject))
                }
                Some(api) => (api_error_kind(api), format!("publishing to subject {subject:?} failed")),
                None => (ErrorKind::Connection, format!("publishing to subject {subject:?} failed")),
            }
        }
    };
    Error::with_source(kind, message, err)
}

/// Names what a publish found missing; it ends up in the outbox row's `last_error`.
fn missing_stream(subject: &str) -> String {
    format!(
        "no JetStream stream holds subject {subject:?} (or its stream is electing a leader or restarting); \
         retrying until the topic is provisioned or the stream is back"
    )
}

/// Classifies a JetStream API error by whether retrying can help.
///
/// `STREAM_NOT_FOUND` is `NotFound` here, for management calls that name a stream which does
/// not exist; a publish treats a missing stream as transient instead (see [`publish_error`]).
pub(crate) fn api_error_kind(err: &jetstream::Error) -> ErrorKind {
    match err.error_code() {
        ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM => ErrorKind::PayloadTooLarge,
        ErrorCode::STREAM_NOT_FOUND => ErrorKind::NotFound,
        ErrorCode::CLUSTER_NOT_AVAILABLE
        | ErrorCode::CLUSTER_NOT_ACTIVE
        | ErrorCode::CLUSTER_NOT_LEADER
        | ErrorCode::CLUSTER_NOT_ASSIGNED
        | ErrorCode::INSUFFICIENT_RESOURCES
        | ErrorCode::STREAM_STORE_FAILED => ErrorKind::Unavailable,
        _ if err.code() == 503 => ErrorKind::Unavailable,
        _ => ErrorKind::Rejected,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(code: u16, err_code: u64) -> PublishError {
        let body = format!(r#"{{"code":{code},"err_code":{err_code},"description":"from the server"}}"#);
        let api: jetstream::Error = serde_json::from_str(&body).unwrap();
        PublishError::with_source(PublishErrorKind::Other, api)
    }

    /// Every way a publish can find its stream missing is retryable and names the subject;
    /// errors no retry can fix stay non-retryable.
    #[test]
    fn missing_streams_are_retryable_and_permanent_refusals_are_not() {
        let topic = Topic::new("orders").unwrap();
        let timeout = Duration::from_secs(1);
        let missing = [
            PublishError::new(PublishErrorKind::StreamNotFound),
            api_error(404, ErrorCode::STREAM_NOT_FOUND.0),
            api_error(503, ErrorCode::CLUSTER_NOT_LEADER.0),
            api_error(503, 0),
        ];
        for err in missing {
            let what = err.to_string();
            let err = publish_error(err, &topic, timeout);
            assert_eq!(err.kind(), ErrorKind::Unavailable, "{what}: {err}");
            assert!(err.is_retryable());
        }
        let err = publish_error(PublishError::new(PublishErrorKind::StreamNotFound), &topic, timeout);
        assert!(err.message().contains(r#"subject "orders""#), "{err}");

        let permanent = [
            (api_error(400, ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM.0), ErrorKind::PayloadTooLarge),
            (api_error(400, ErrorCode::STREAM_WRONG_LAST_SEQUENCE.0), ErrorKind::Rejected),
        ];
        for (err, kind) in permanent {
            let err = publish_error(err, &topic, timeout);
            assert_eq!(err.kind(), kind, "{err}");
            assert!(!err.is_retryable());
        }
    }
}
