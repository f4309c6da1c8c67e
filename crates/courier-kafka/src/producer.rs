//! Publishing: one idempotent librdkafka producer per bus, polled by one dedicated thread whose
//! delivery-report callback resolves each event's [`Completion`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use courier_core::wire::{self, HeaderStyle, WireMode};
use courier_core::{Completion, Envelope, Error, ErrorKind, EventId, Position, Receipt, Topic, Transport};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{DeliveryResult, Producer as _, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;

use crate::dedup::Dedup;
use crate::error::from_kafka;
use crate::native::{self, DeliveryOpaque, Headers, InFlight};
use crate::Shared;

/// Room kept under `message.max.bytes` for headers and record framing.
const RECORD_OVERHEAD: usize = 16 * 1024;
/// Longest pause between retries of a send refused because librdkafka's queue is full.
const MAX_QUEUE_FULL_PAUSE: Duration = Duration::from_millis(10);

pub(crate) type KafkaProducer = ThreadedProducer<DeliveryContext>;

/// Turns delivery reports into verdicts; runs on the producer's polling thread.
pub struct DeliveryContext {
    dedup: Arc<Dedup>,
}

impl DeliveryContext {
    pub(crate) fn new(dedup: Arc<Dedup>) -> Self {
        Self { dedup }
    }
}

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    // `native::produce` accepts only this type, so what it turns into the pointer is what
    // rust-rdkafka turns back for this callback.
    type DeliveryOpaque = DeliveryOpaque;

    fn delivery(&self, result: &DeliveryResult<'_>, in_flight: DeliveryOpaque) {
        let completion = in_flight.into_completion();
        let (event_id, topic) = (completion.event_id(), completion.topic());
        let outcome = match result {
            Ok(message) => {
                let position =
                    Position::Partition { partition: message.partition(), offset: message.offset() };
                self.dedup.insert(topic, event_id, &position);
                Ok(Receipt { event_id, position, duplicate: false })
            }
            Err((err, _)) => Err(delivery_error(topic, event_id, err)),
        };
        completion.complete(outcome);
    }
}

fn delivery_error(topic: &Topic, event_id: EventId, err: &KafkaError) -> Error {
    from_kafka(format_args!("publishing event {event_id} to topic {topic}"), err.clone())
}

/// Headers librdkafka is told to expect: the CloudEvents attributes Courier writes, a trace
/// context and a few of the envelope's own.
const HEADERS_CAPACITY: usize = 12;

/// Publishes into Kafka through the bus's shared producer. Cheap to clone.
#[derive(Clone)]
pub struct KafkaTransport {
    pub(crate) shared: Arc<Shared>,
}

impl Transport for KafkaTransport {
    async fn send(&self, topic: &Topic, envelope: Envelope, completion: Completion) {
        let shared = &*self.shared;
        let event_id = envelope.event_id();
        if let Some(position) = shared.dedup.get(topic, event_id) {
            completion.complete(Ok(Receipt { event_id, position, duplicate: true }));
            return;
        }
        let handle = match shared.topics.get(shared.producer.client(), topic) {
            Ok(handle) => handle,
            Err(err) => {
                completion.complete(Err(err));
                return;
            }
        };
        let mut headers = Headers::with_capacity(HEADERS_CAPACITY);
        let body = wire::encode(&envelope, shared.config.wire_mode, HeaderStyle::Kafka, &mut headers);
        let mut in_flight = Box::new(InFlight::new(completion, body));
        let key = envelope.aggregate_id().as_bytes();
        // Set when librdkafka first refuses the event for a full queue.
        let mut deadline = None;
        let mut pause = Duration::from_micros(200);
        loop {
            let code;
            let produced = native::produce(shared.producer.client(), &handle, key, headers, in_flight);
            (code, headers, in_flight) = match produced {
                Ok(()) => return,
                Err(refused) => refused,
            };
            if code != RDKafkaErrorCode::QueueFull {
                let err = KafkaError::MessageProduction(code);
                let completion = in_flight.into_completion();
                completion.complete(Err(delivery_error(topic, event_id, &err)));
                return;
            }
            let deadline = *deadline.get_or_insert_with(|| Instant::now() + shared.config.queue_full_timeout);
            if Instant::now() >= deadline {
                let completion = in_flight.into_completion();
                completion.complete(Err(Error::new(
                    ErrorKind::Backpressure,
                    format!(
                        "librdkafka's queue stayed full for {:?}; event {event_id} was not sent",
                        shared.config.queue_full_timeout
                    ),
                )));
                return;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_QUEUE_FULL_PAUSE);
        }
    }

    /// Waits (up to the configured flush timeout) until librdkafka has a delivery report for
    /// every message it holds, sending lingering batches at once.
    async fn flush(&self) {
        let shared = Arc::clone(&self.shared);
        let flushed =
            tokio::task::spawn_blocking(move || shared.producer.flush(shared.config.flush_timeout)).await;
        if let Ok(Err(err)) = flushed {
            tracing::warn!(error = %err, "producer flush did not finish; close reports what is still pending");
        }
    }

    fn max_payload(&self) -> usize {
        let room = self.shared.config.message_max_bytes().saturating_sub(RECORD_OVERHEAD);
        match self.shared.config.wire_mode {
            WireMode::CloudEvents => room,
            // The reference envelope carries the payload as base64 inside JSON.
            WireMode::JsonEnvelope => room / 4 * 3,
        }
    }
}
