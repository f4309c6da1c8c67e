//! Writing events into the outbox inside the caller's transaction.

use std::collections::{HashMap, HashSet};

use courier_core::{Envelope, EventId, Topic, ValidationError, DEFAULT_MAX_PAYLOAD};

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
    max_payload: usize,
}

impl Default for Outbox {
    fn default() -> Self {
        Self { mapper: TopicMapper::default(), max_payload: DEFAULT_MAX_PAYLOAD }
    }
}

impl Outbox {
    /// An outbox whose events without an explicit topic go where `mapper` says.
    pub fn new(mapper: TopicMapper) -> Self {
        Self { mapper, ..Self::default() }
    }

    /// Refuses payloads above `bytes` at enqueue; set it to the broker's limit so an oversized
    /// event is refused in the business transaction rather than dying in the relay.
    /// Default 1 MiB.
    pub fn max_payload(mut self, bytes: usize) -> Self {
        self.max_payload = bytes;
        self
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
        let envelope_checked = envelope.clone().into_builder().build()?;
        envelope_checked.check_payload_size(self.max_payload)?;
        let topic = match event.topic {
            Some(topic) => topic.clone(),
            None => self.mapper.topic_for(envelope.aggregate_type())?,
        };
        if let Some(key) = event.idempotency_key {
            if key.trim().is_empty() || key.len() > 255 {
                return Err(ValidationError::new("idempotency_key", "must have 1 to 255 characters"));
            }
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
    fn payload_over_the_limit_is_refused_naming_the_field() {
        let outbox = Outbox::default().max_payload(4);
        let e = Envelope::builder("order", "o-1", "Placed").payload("12345").build().unwrap();
        assert_eq!(outbox.row(&Enqueue::new(&e)).unwrap_err().field, "payload");
    }
}
