//! Writing events into the outbox inside the caller's transaction.

use std::collections::{HashMap, HashSet};

use courier_core::wire::{self, WireMode};
use courier_core::{Envelope, EventId, Topic, ValidationError};

use crate::row::NewRow;
use crate::sql::{OutboxConnection, INSERT_CHUNK};
use crate::OutboxError;

/// Chooses the topic of an event from its aggregate type: an explicit mapping if one is set,
/// else the aggregate type itself, optionally with a prefix (`order` → `events.order`).
#[derive(Debug, Clone, Default)]
pub struct TopicMapper {
    prefix: String,
    overrides: HashMap<String, Topic>,
}

impl TopicMapper {
    /// Maps every aggregate type to the topic of the same name.
    pub fn new() -> Self {
        Self::default()
    }

    /// Prepends `prefix` to the aggregate type for types without an explicit mapping.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Sends events of `aggregate_type` to `topic`.
    pub fn map(mut self, aggregate_type: impl Into<String>, topic: Topic) -> Self {
        self.overrides.insert(aggregate_type.into(), topic);
        self
    }

    /// The topic for `aggregate_type`, validated for every backend.
    pub fn topic_for(&self, aggregate_type: &str) -> Result<Topic, ValidationError> {
        match self.overrides.get(aggregate_type) {
            Some(topic) => Ok(topic.clone()),
            None => Topic::new(format!("{}{aggregate_type}", self.prefix)),
        }
    }
}

/// One event to enqueue, with an optional explicit topic and idempotency key.
#[derive(Debug, Clone, Copy)]
#[must_use]
pub struct Enqueue<'a> {
    envelope: &'a Envelope,
    topic: Option<&'a Topic>,
    idempotency_key: Option<&'a str>,
}

impl<'a> Enqueue<'a> {
    /// `envelope`, to the topic the [`Outbox`]'s [`TopicMapper`] picks, without idempotency key.
    pub fn new(envelope: &'a Envelope) -> Self {
        Self { envelope, topic: None, idempotency_key: None }
    }

    /// Publishes to `topic` instead of the [`TopicMapper`]'s choice.
    pub fn topic(mut self, topic: &'a Topic) -> Self {
        self.topic = Some(topic);
        self
    }

    /// A business key that must be unique across the outbox (e.g. `order-42:placed`): a second
    /// enqueue with the same key fails with [`OutboxError::DuplicateKey`].
    pub fn idempotency_key(mut self, key: &'a str) -> Self {
        self.idempotency_key = Some(key);
        self
    }
}

impl<'a> From<&'a Envelope> for Enqueue<'a> {
    fn from(envelope: &'a Envelope) -> Self {
        Self::new(envelope)
    }
}

/// Writes events into the outbox table on a connection of a supported database: pass the
/// caller's transaction (`&mut *tx`) so the events commit or roll back with the business data.
///
/// ```no_run
/// # #[cfg(feature = "postgres")]
/// # async fn example(pool: sqlx::PgPool) -> Result<(), courier_outbox::OutboxError> {
/// use courier_core::Envelope;
/// use courier_outbox::{Enqueue, Outbox};
///
/// let outbox = Outbox::default();
/// let placed = Envelope::builder("order", "order-42", "OrderPlaced").payload(r#"{"total":42}"#).build()?;
/// let mut tx = pool.begin().await?;
/// sqlx::query("UPDATE orders SET state = 'placed' WHERE id = 42").execute(&mut *tx).await?;
/// outbox.enqueue(&mut *tx, Enqueue::new(&placed).idempotency_key("order-42:placed")).await?;
/// tx.commit().await?; // the relay publishes the event after this commit, never before
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Outbox {
    mapper: TopicMapper,
    max_encoded_size: usize,
    wire_mode: WireMode,
}

/// librdkafka's default `message.max.bytes` less the room the Kafka transport keeps for the
/// record key and framing; see [`Outbox::max_encoded_size`].
const DEFAULT_MAX_ENCODED_SIZE: usize = 1_000_000 - 16 * 1024;

impl Default for Outbox {
    fn default() -> Self {
        Self {
            mapper: TopicMapper::default(),
            max_encoded_size: DEFAULT_MAX_ENCODED_SIZE,
            wire_mode: WireMode::default(),
        }
    }
}

impl Outbox {
    /// An outbox whose events without an explicit topic go where `mapper` says.
    pub fn new(mapper: TopicMapper) -> Self {
        Self { mapper, ..Self::default() }
    }

    /// Refuses at enqueue an event whose encoded size (payload plus headers in the
    /// [`wire_mode`](Self::wire_mode), see [`wire::encoded_size`]) is above `bytes`, so an event
    /// the broker can never take fails in the business transaction instead of going dead in the
    /// relay and parking its aggregate. Raise it together with the broker's limit (nats-server
    /// `max_payload`, Kafka `message.max.bytes` on the broker and the producer), keeping room for
    /// the broker's framing; lower it to keep events small.
    ///
    /// Default 983,616 bytes: librdkafka's `message.max.bytes` of 1,000,000, the smallest default
    /// limit among the backends (Kafka brokers take 1,048,588, or 1,000,012 before Kafka 1.1;
    /// nats-server's `max_payload` is 1,048,576), less the 16 KiB the Kafka transport keeps for
    /// the record key and framing. All of these limits count the headers too.
    pub fn max_encoded_size(mut self, bytes: usize) -> Self {
        self.max_encoded_size = bytes;
        self
    }

    /// The limit set by [`max_encoded_size`](Self::max_encoded_size).
    pub fn get_max_encoded_size(&self) -> usize {
        self.max_encoded_size
    }

    /// The wire mode in which events are measured against
    /// [`max_encoded_size`](Self::max_encoded_size); set it to the relay's bus's mode (the JSON
    /// envelope adds its fields, and a payload that is not JSON goes in base64, a third larger).
    /// Default
    /// [`WireMode::CloudEvents`].
    pub fn wire_mode(mut self, mode: WireMode) -> Self {
        self.wire_mode = mode;
        self
    }

    /// The mode set by [`wire_mode`](Self::wire_mode).
    pub fn get_wire_mode(&self) -> WireMode {
        self.wire_mode
    }

    /// How event topics are chosen.
    pub fn mapper(&self) -> &TopicMapper {
        &self.mapper
    }

    /// Writes one event on `conn` (pass `&mut *tx` to join a transaction); returns its id.
    pub async fn enqueue<'a, C: OutboxConnection>(
        &self,
        conn: &mut C,
        event: impl Into<Enqueue<'a>>,
    ) -> Result<EventId, OutboxError> {
        let event = event.into();
        let row = self.row(&event)?;
        conn.insert(vec![row]).await?;
        Ok(event.envelope.event_id())
    }

    /// Writes up to 1000 events in one statement on `conn`. All rows are validated first: one
    /// invalid event or a repeated idempotency key refuses the whole batch.
    pub async fn enqueue_batch<'a, C, I>(&self, conn: &mut C, events: I) -> Result<Vec<EventId>, OutboxError>
    where
        C: OutboxConnection,
        I: IntoIterator,
        I::Item: Into<Enqueue<'a>>,
    {
        let events: Vec<Enqueue<'a>> = events.into_iter().map(Into::into).collect();
        if events.is_empty() {
            return Ok(Vec::new());
        }
        if events.len() > INSERT_CHUNK {
            return Err(ValidationError::new(
                "events",
                format!("{} events exceeds the batch maximum of {INSERT_CHUNK}", events.len()),
            )
            .into());
        }
        let mut keys = HashSet::new();
        for key in events.iter().filter_map(|e| e.idempotency_key) {
            if !keys.insert(key) {
                return Err(OutboxError::DuplicateKey { key: key.to_owned() });
            }
        }
        let rows = events.iter().map(|e| self.row(e)).collect::<Result<Vec<_>, _>>()?;
        conn.insert(rows).await?;
        Ok(events.iter().map(|e| e.envelope.event_id()).collect())
    }

    fn row(&self, event: &Enqueue<'_>) -> Result<NewRow, ValidationError> {
        let envelope = event.envelope;
        // Envelopes are valid by construction; re-check in case it was decoded from elsewhere.
        envelope.clone().into_builder().build()?;
        let topic = match event.topic {
            Some(topic) => topic.clone(),
            None => self.mapper.topic_for(envelope.aggregate_type())?,
        };
        if let Some(key) = event.idempotency_key {
            if key.trim().is_empty() || key.len() > 255 {
                return Err(ValidationError::new("idempotency_key", "must have 1 to 255 characters"));
            }
        }
        // Last: in JSON-envelope mode measuring serializes the event.
        let size = wire::encoded_size(envelope, self.wire_mode);
        if size > self.max_encoded_size {
            let mode = match self.wire_mode {
                WireMode::CloudEvents => "CloudEvents",
                WireMode::JsonEnvelope => "JSON envelope",
            };
            return Err(ValidationError::new(
                "payload",
                format!(
                    "event encodes to {size} bytes ({} bytes of payload plus headers, {mode} wire mode), \
                     above the maximum encoded size of {} bytes",
                    envelope.payload().len(),
                    self.max_encoded_size
                ),
            ));
        }
        Ok(NewRow::new(&topic, envelope, event.idempotency_key.map(str::to_owned)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapper_defaults_to_the_aggregate_type_and_validates() {
        let mapper = TopicMapper::new().prefix("events.").map("payment", Topic::new("billing").unwrap());
        assert_eq!(mapper.topic_for("order").unwrap().as_str(), "events.order");
        assert_eq!(mapper.topic_for("payment").unwrap().as_str(), "billing");
        assert_eq!(mapper.topic_for("bad type").unwrap_err().field, "topic");
    }

    #[test]
    fn event_over_the_encoded_size_limit_is_refused_naming_the_field_and_both_sizes() {
        let e =
            Envelope::builder("order", "o-1", "Placed").payload("12345").header("x-a", "b").build().unwrap();
        let size = wire::encoded_size(&e, WireMode::CloudEvents);
        assert!(size > 5 + 4, "headers count: {size}");
        assert!(Outbox::default().max_encoded_size(size).row(&Enqueue::new(&e)).is_ok());
        let err = Outbox::default().max_encoded_size(size - 1).row(&Enqueue::new(&e)).unwrap_err();
        assert_eq!(err.field, "payload");
        assert!(err.reason.contains(&format!("{size} bytes")), "{err}");
        assert!(err.reason.contains(&format!("maximum encoded size of {} bytes", size - 1)), "{err}");
        // The JSON envelope is larger; measured in that mode the same limit refuses the event.
        let json = Outbox::default().max_encoded_size(size).wire_mode(WireMode::JsonEnvelope);
        assert!(wire::encoded_size(&e, WireMode::JsonEnvelope) > size);
        assert_eq!(json.row(&Enqueue::new(&e)).unwrap_err().field, "payload");
    }

    #[test]
    fn defaults() {
        let outbox = Outbox::default();
        assert_eq!(outbox.get_max_encoded_size(), 983_616);
        assert_eq!(outbox.get_wire_mode(), WireMode::CloudEvents);
    }
}
