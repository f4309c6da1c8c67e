//! Publishing: one idempotent librdkafka producer per bus, polled by one dedicated thread whose
//! delivery-report callback resolves each event's [`Completion`].

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use courier_core::wire::{self, HeaderSink, HeaderStyle, WireMode};
use courier_core::{Completion, Envelope, Error, ErrorKind, EventId, Position, Receipt, Topic, Transport};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer as _, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;

use crate::error::from_kafka;
use crate::Shared;

/// Room kept under `message.max.bytes` for headers and record framing.
const RECORD_OVERHEAD: usize = 16 * 1024;
/// Longest pause between retries of a send refused because librdkafka's queue is full.
const MAX_QUEUE_FULL_PAUSE: Duration = Duration::from_millis(10);

pub(crate) type KafkaProducer = ThreadedProducer<DeliveryContext>;

/// What travels through librdkafka with each message and comes back in its delivery report
/// (opaque outside this crate).
pub struct InFlight {
    completion: Completion,
    topic: Topic,
}

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
    type DeliveryOpaque = Box<InFlight>;

    fn delivery(&self, result: &DeliveryResult<'_>, in_flight: Box<InFlight>) {
        let InFlight { completion, topic } = *in_flight;
        let event_id = completion.event_id();
        let outcome = match result {
            Ok(message) => {
                let position =
                    Position::Partition { partition: message.partition(), offset: message.offset() };
                self.dedup.insert(&topic, event_id, &position);
                Ok(Receipt { event_id, position, duplicate: false })
            }
            Err((err, _)) => Err(delivery_error(&topic, event_id, err)),
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

/// librdkafka headers filled straight from the encoder (librdkafka copies each one).
struct KafkaHeaders(Option<OwnedHeaders>);

impl HeaderSink for KafkaHeaders {
    fn put(&mut self, key: &str, value: &str) {
        self.0 = self.0.take().map(|headers| headers.insert(Header { key, value: Some(value) }));
    }
}

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
        let mut sink = KafkaHeaders(Some(OwnedHeaders::new_with_capacity(HEADERS_CAPACITY)));
        let body = wire::encode(&envelope, shared.config.wire_mode, HeaderStyle::Kafka, &mut sink);
        let mut headers = sink.0.expect("the sink always holds its headers");
        let mut in_flight = Box::new(InFlight { completion, topic: topic.clone() });
        // Set when librdkafka first refuses the event for a full queue.
        let mut deadline = None;
        let mut pause = Duration::from_micros(200);
        loop {
            let record = BaseRecord::with_opaque_to(topic.as_str(), in_flight)
                .key(envelope.aggregate_id())
                .payload(body.as_ref())
                .headers(headers);
            let (err, record) = match shared.producer.send(record) {
                Ok(()) => return,
                Err(refused) => refused,
            };
            let queue_full = err == KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull);
            if !queue_full {
                let InFlight { completion, topic } = *record.delivery_opaque;
                completion.complete(Err(delivery_error(&topic, event_id, &err)));
                return;
            }
            let deadline = *deadline.get_or_insert_with(|| Instant::now() + shared.config.queue_full_timeout);
            if Instant::now() >= deadline {
                let InFlight { completion, .. } = *record.delivery_opaque;
                completion.complete(Err(Error::new(
                    ErrorKind::Backpressure,
                    format!(
                        "librdkafka's queue stayed full for {:?}; event {event_id} was not sent",
                        shared.config.queue_full_timeout
                    ),
                )));
                return;
            }
            in_flight = record.delivery_opaque;
            headers = record.headers.expect("the record was built with headers");
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
            WireMode::Reference => room / 4 * 3,
        }
    }
}

/// Event ids acknowledged recently, per topic, so a re-publish is answered as a duplicate with
/// the stored position instead of being written twice. Bounded by age and count.
pub(crate) struct Dedup {
    window: Duration,
    capacity: usize,
    state: Mutex<DedupState>,
}

#[derive(Default)]
struct DedupState {
    positions: HashMap<Key, (Position, Instant), BuildHasherDefault<IdHasher>>,
    order: VecDeque<(Instant, Key)>,
}

/// An event id in a topic. Hashed by the id alone: ids are unique, random and cheap to hash,
/// while hashing the topic name would cost more than the rest of a lookup.
#[derive(Clone, PartialEq, Eq)]
struct Key {
    event_id: EventId,
    topic: Topic,
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.event_id.hash(state);
    }
}

/// FxHash's mixing step; enough for UUIDs, whose bits are mostly random already.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 =
                (self.0.rotate_left(5) ^ u64::from_le_bytes(word)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }
}

impl Dedup {
    pub(crate) fn new(window: Duration, capacity: usize) -> Self {
        Self { window, capacity, state: Mutex::default() }
    }

    fn enabled(&self) -> bool {
        !self.window.is_zero() && self.capacity > 0
    }

    /// The stored position of `event_id` in `topic` if it was acknowledged within the window.
    /// Reads the clock only on a hit, so the common miss costs one lock and one lookup.
    fn get(&self, topic: &Topic, event_id: EventId) -> Option<Position> {
        if !self.enabled() {
            return None;
        }
        let key = Key { event_id, topic: topic.clone() };
        let state = self.state.lock().expect("dedup lock");
        let (position, at) = state.positions.get(&key)?;
        (at.elapsed() < self.window).then(|| position.clone())
    }

    fn insert(&self, topic: &Topic, event_id: EventId, position: &Position) {
        if !self.enabled() {
            return;
        }
        let key = Key { event_id, topic: topic.clone() };
        let now = Instant::now();
        let mut state = self.state.lock().expect("dedup lock");
        state.expire(now, self.window);
        if state.positions.insert(key.clone(), (position.clone(), now)).is_none() {
            state.order.push_back((now, key));
        }
        while state.order.len() > self.capacity {
            state.pop_oldest();
        }
    }
}

impl DedupState {
    fn expire(&mut self, now: Instant, window: Duration) {
        while self.order.front().is_some_and(|(at, _)| now.duration_since(*at) >= window) {
            self.pop_oldest();
        }
    }

    fn pop_oldest(&mut self) {
        if let Some((_, key)) = self.order.pop_front() {
            self.positions.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedup_remembers_per_topic_within_window_and_capacity() {
        let dedup = Dedup::new(Duration::from_secs(60), 2);
        let (a, b) = (Topic::new("a").unwrap(), Topic::new("b").unwrap());
        let at = |offset| Position::Partition { partition: 0, offset };
        let ids: Vec<EventId> = (0..3).map(|_| EventId::new()).collect();
        dedup.insert(&a, ids[0], &at(1));
        assert_eq!(dedup.get(&a, ids[0]), Some(at(1)));
        assert_eq!(dedup.get(&b, ids[0]), None, "the same id in another topic is another event");
        dedup.insert(&b, ids[0], &at(7));
        dedup.insert(&a, ids[1], &at(2));
        assert_eq!(dedup.get(&a, ids[0]), None, "the oldest is forgotten beyond capacity");
        assert_eq!(dedup.get(&b, ids[0]), Some(at(7)));

        let off = Dedup::new(Duration::ZERO, 10);
        off.insert(&a, ids[2], &at(3));
        assert_eq!(off.get(&a, ids[2]), None);
    }
}
