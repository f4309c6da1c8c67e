//! Publishing: one idempotent librdkafka producer per bus, polled by one dedicated thread whose
//! delivery-report callback resolves each event's [`Completion`], and replaced by a new one
//! when librdkafka declares it dead (a fatal error). The same producer forwards records that are
//! not events, as bytes, to their dead-letter topic ([`forward`]).

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use courier_core::wire::{self, HeaderStyle, WireMode};
use courier_core::{Completion, Envelope, Error, ErrorKind, Position, Receipt, Topic, Transport};
use rdkafka::config::FromClientConfigAndContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{DeliveryResult, Producer as _, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext};
use tokio::sync::oneshot;

use crate::dedup::{self, Dedup};
use crate::error::from_kafka;
use crate::native::{self, DeliveryOpaque, Headers, InFlight, Reply, TopicHandles};
use crate::problem::{self, LastProblem};
use crate::Shared;

/// Room kept under `message.max.bytes` for headers and record framing.
const RECORD_OVERHEAD: usize = 16 * 1024;
/// Longest pause between retries of a send refused because librdkafka's queue is full.
const MAX_QUEUE_FULL_PAUSE: Duration = Duration::from_millis(10);

pub(crate) type KafkaProducer = ThreadedProducer<DeliveryContext>;

/// Turns delivery reports into verdicts; runs on the producer's polling thread.
pub struct DeliveryContext {
    dedup: Arc<Dedup>,
    /// Explains failed verdicts by an authentication or TLS failure reported meanwhile.
    problem: Arc<LastProblem>,
}

impl DeliveryContext {
    pub(crate) fn new(dedup: Arc<Dedup>, problem: Arc<LastProblem>) -> Self {
        Self { dedup, problem }
    }
}

impl ClientContext for DeliveryContext {
    fn error(&self, error: KafkaError, reason: &str) {
        problem::on_error(&self.problem, error, reason);
    }
}

impl ProducerContext for DeliveryContext {
    // `native::produce` accepts only this type, so what it turns into the pointer is what
    // rust-rdkafka turns back for this callback.
    type DeliveryOpaque = DeliveryOpaque;

    fn delivery(&self, result: &DeliveryResult<'_>, in_flight: DeliveryOpaque) {
        let stored = result.as_ref().map(|message| (message.partition(), message.offset()));
        match in_flight.into_reply() {
            Reply::Event(completion, key) => {
                let (event_id, topic) = (completion.event_id(), completion.topic());
                let outcome = match stored {
                    Ok((partition, offset)) => {
                        let position = Position::Partition { partition, offset };
                        self.dedup.insert(key, partition, offset);
                        self.problem.clear();
                        Ok(Receipt { event_id, position, duplicate: false })
                    }
                    Err((err, _)) => {
                        Err(self.problem.explain(delivery_error(topic, &format!("event {event_id}"), err)))
                    }
                };
                completion.complete(outcome);
            }
            Reply::Record(tx) => {
                let outcome = match stored {
                    Ok((partition, offset)) => Ok(Position::Partition { partition, offset }),
                    Err((err, message)) => Err(self.problem.explain(from_kafka(
                        format_args!("forwarding a record to topic {}", message.topic()),
                        err.clone(),
                    ))),
                };
                // A dropped receiver means nobody waits any more.
                let _ = tx.send(outcome);
            }
        }
    }
}

fn delivery_error(topic: &Topic, what: &str, err: &KafkaError) -> Error {
    from_kafka(format_args!("publishing {what} to topic {topic}"), err.clone())
}

/// One librdkafka producer and the topic handles made on it, replaced as a whole after a fatal
/// error.
pub(crate) struct ProducerInstance {
    /// Declared before `producer`: handles are released before the client they belong to.
    pub(crate) topics: TopicHandles,
    pub(crate) producer: KafkaProducer,
}

impl ProducerInstance {
    pub(crate) fn new(
        config: &ClientConfig,
        dedup: Arc<Dedup>,
        problem: &Arc<LastProblem>,
    ) -> Result<Self, Error> {
        let context = DeliveryContext::new(dedup, Arc::clone(problem));
        let producer = KafkaProducer::from_config_and_context(config, context)
            .map_err(|e| from_kafka("creating the Kafka producer", e))?;
        Ok(Self { topics: TopicHandles::default(), producer })
    }
}

impl Shared {
    /// The producer in use.
    pub(crate) fn producer(&self) -> Arc<ProducerInstance> {
        Arc::clone(&self.producer.read().expect("producer lock"))
    }

    /// Replaces `failed`, which raised a fatal error and refuses every message from now on, by
    /// a new producer with the same configuration, unless another send replaced it already.
    /// Returns the producer to use.
    ///
    /// The failed producer keeps polling until its messages have their delivery reports: those
    /// still queued are purged by librdkafka (reported as `Lost`, retryable), those sent get
    /// the broker's answer; what is left after the flush timeout is purged when it is dropped.
    pub(crate) fn replace_failed(
        &self,
        failed: &Arc<ProducerInstance>,
    ) -> Result<Arc<ProducerInstance>, Error> {
        let mut current = self.producer.write().expect("producer lock");
        if !Arc::ptr_eq(&current, failed) {
            return Ok(Arc::clone(&current));
        }
        let fresh =
            Arc::new(ProducerInstance::new(&self.producer_config, Arc::clone(&self.dedup), &self.problem)?);
        let old = std::mem::replace(&mut *current, Arc::clone(&fresh));
        drop(current);
        let restarts = self.restarts.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let reason = old.producer.client().fatal_error().map(|(code, reason)| format!("{code:?}: {reason}"));
        tracing::error!(
            reason = reason.as_deref().unwrap_or("unknown"),
            restarts,
            "the Kafka producer raised a fatal error; publishing continues on a new producer"
        );
        let mut retired = self.retired.lock().expect("retired producers lock");
        retired.retain(|r| r.strong_count() > 0);
        retired.push(Arc::downgrade(&old));
        drop(retired);
        let owns_mock = self.mock_owner.as_ref().is_some_and(|owner| Arc::ptr_eq(owner, &old));
        if !owns_mock {
            // The mock cluster's owner stays for the bus's life; others are drained and dropped.
            retire(old, self.config.flush_timeout);
        }
        Ok(fresh)
    }

    /// The largest record Courier sends, keeping [`RECORD_OVERHEAD`] under `message.max.bytes`.
    pub(crate) fn max_record_bytes(&self) -> usize {
        self.config.message_max_bytes().saturating_sub(RECORD_OVERHEAD)
    }

    /// Messages the producers of this bus (the current one and any failed one still draining)
    /// hold without a delivery report.
    pub(crate) fn in_flight(&self) -> usize {
        let current = self.producer();
        let retired: Vec<_> =
            self.retired.lock().expect("retired producers lock").iter().filter_map(Weak::upgrade).collect();
        std::iter::once(current)
            .chain(retired)
            .map(|p| usize::try_from(p.producer.in_flight_count()).unwrap_or(0))
            .sum()
    }
}

/// Drains a failed producer on a thread of its own: waits up to `timeout` for the delivery
/// reports of what it holds, then drops it (which purges the rest, reported as `Lost`). Dropping
/// blocks, so it must not happen on an async task.
fn retire(old: Arc<ProducerInstance>, timeout: Duration) {
    let drain = move || {
        if let Err(err) = old.producer.flush(timeout) {
            tracing::warn!(error = %err, "the failed Kafka producer still held messages after the flush timeout; purging them");
        }
        // A send may still hold the producer for a moment (to find it replaced).
        let mut old = old;
        loop {
            match Arc::try_unwrap(old) {
                Ok(instance) => return drop(instance),
                Err(shared) => old = shared,
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    if let Err(err) = std::thread::Builder::new().name("courier-kafka-retire".into()).spawn(drain) {
        tracing::error!(error = %err, "no thread to drain the failed Kafka producer; it is leaked");
    }
}

/// Sends a record as it is (key, headers and value as bytes, none of them decoded) to `topic`
/// through the bus's producer, for dead-letter copies of records that are not events. Returns
/// where the broker stored it once the broker has acknowledged it.
pub(crate) async fn forward(
    shared: &Shared,
    topic: &Topic,
    key: &[u8],
    headers: Headers,
    body: Bytes,
) -> Result<Position, Error> {
    let (tx, rx) = oneshot::channel();
    hand_over(shared, topic, key, headers, Box::new(InFlight::new(Reply::Record(tx), body))).await;
    rx.await.unwrap_or_else(|_| {
        Err(Error::new(
            ErrorKind::Lost,
            format!("the producer dropped a record for topic {topic} without a verdict"),
        ))
    })
}

/// Hands one message to the producer in use. While librdkafka's queue is full it waits (up to
/// [`KafkaConfig::queue_full_timeout`](crate::KafkaConfig::queue_full_timeout)); a dead producer
/// is replaced once. A refusal resolves `in_flight`'s reply with the error; otherwise the
/// delivery report does.
async fn hand_over(
    shared: &Shared,
    topic: &Topic,
    key: &[u8],
    mut headers: Headers,
    mut in_flight: DeliveryOpaque,
) {
    let mut producer = shared.producer();
    // Set when librdkafka first refuses the message for a full queue.
    let mut deadline = None;
    let mut pause = Duration::from_micros(200);
    let mut replaced = false;
    loop {
        let produced = {
            // Taken and released while `producer`, whose client it was made on, is held.
            let client = producer.producer.client();
            let handle = match producer.topics.get(client, topic) {
                Ok(handle) => handle,
                Err(err) => return in_flight.into_reply().fail(err),
            };
            native::produce(client, &handle, key, headers, in_flight)
        };
        let refused = match produced {
            Ok(()) => return,
            Err(refused) => refused,
        };
        let code = refused.code;
        (headers, in_flight) = (refused.headers, refused.in_flight);
        if refused.fatal && !replaced {
            // This producer will refuse everything from now on; the message goes to its
            // replacement (tried once, so a replacement failing at once is reported).
            replaced = true;
            match shared.replace_failed(&producer) {
                Ok(fresh) => {
                    producer = fresh;
                    continue;
                }
                Err(err) => return in_flight.into_reply().fail(err),
            }
        }
        if code != RDKafkaErrorCode::QueueFull {
            let err = delivery_error(topic, &in_flight.describe(), &KafkaError::MessageProduction(code));
            return in_flight.into_reply().fail(err);
        }
        let deadline = *deadline.get_or_insert_with(|| Instant::now() + shared.config.queue_full_timeout);
        if Instant::now() >= deadline {
            let err = Error::new(
                ErrorKind::Backpressure,
                format!(
                    "librdkafka's queue stayed full for {:?}; {} was not sent",
                    shared.config.queue_full_timeout,
                    in_flight.describe()
                ),
            );
            return in_flight.into_reply().fail(err);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX_QUEUE_FULL_PAUSE);
    }
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
        let key = dedup::Key::new(topic, event_id);
        if let Some(position) = shared.dedup.get(&key) {
            completion.complete(Ok(Receipt { event_id, position, duplicate: true }));
            return;
        }
        let mut headers = Headers::with_capacity(HEADERS_CAPACITY);
        let body = wire::encode(&envelope, shared.config.wire_mode, HeaderStyle::Kafka, &mut headers);
        let in_flight = Box::new(InFlight::new(Reply::Event(completion, key), body));
        hand_over(shared, topic, envelope.aggregate_id().as_bytes(), headers, in_flight).await;
    }

    /// Waits (up to the configured flush timeout) until librdkafka has a delivery report for
    /// every message it holds, sending lingering batches at once.
    async fn flush(&self) {
        let (producer, timeout) = (self.shared.producer(), self.shared.config.flush_timeout);
        let flushed = tokio::task::spawn_blocking(move || producer.producer.flush(timeout)).await;
        if let Ok(Err(err)) = flushed {
            tracing::warn!(error = %err, "producer flush did not finish; close reports what is still pending");
        }
    }

    /// [`KafkaConfig::queue_full_timeout`](crate::KafkaConfig::queue_full_timeout) plus
    /// [`KafkaConfig::delivery_timeout`](crate::KafkaConfig::delivery_timeout).
    fn verdict_timeout(&self) -> Duration {
        self.shared.config.get_verdict_timeout()
    }

    fn max_payload(&self) -> usize {
        let room = self.shared.max_record_bytes();
        match self.shared.config.wire_mode {
            WireMode::CloudEvents => room,
            // The reference envelope carries a payload that is not JSON as base64 inside JSON (the
            // worst case; JSON payloads are embedded as they are).
            WireMode::JsonEnvelope => room / 4 * 3,
        }
    }
}
