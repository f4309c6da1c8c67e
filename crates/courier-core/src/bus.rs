//! The backend abstraction the conformance suite, the relay and the CLI are generic over.

use std::future::Future;
use std::time::Duration;

use futures::stream::BoxStream;

use crate::dispatch::{DeadLetter, DeadLetterReason, Delivery};
use crate::read::{ReadOptions, Reader};
use crate::{Envelope, Error, Publisher, PublisherConfig, Topic, Transport};

/// A message broker: publishes through a [`Transport`], subscribes as a consumer group.
pub trait Bus: Clone + Send + Sync + 'static {
    /// Hands this bus's publishers' events to the broker.
    type Transport: Transport;
    /// One message received by this bus's subscriptions.
    type Delivery: Delivery;

    /// Short backend name for logs, metrics and benchmark rows (`memory`, `nats`, `kafka`).
    fn name(&self) -> &'static str;

    /// A publisher with its own window and results stream.
    fn publisher(&self, config: PublisherConfig) -> Publisher<Self::Transport>;

    /// Creates the topic (stream, Kafka topic) from `config`, or validates it when the backend
    /// is set not to provision.
    fn provision(&self, config: &TopicConfig) -> impl Future<Output = Result<(), Error>> + Send;

    /// Deletes `topic` and every event in it, for tools that make throwaway topics (benchmarks,
    /// the demo). A topic that does not exist is already deleted; one the backend did not
    /// provision, and which may hold more than this topic, is refused.
    fn delete_topic(&self, topic: &Topic) -> impl Future<Output = Result<(), Error>> + Send;

    /// Whether the broker is reachable right now, for readiness probes. `Err` names the problem.
    fn health(&self) -> impl Future<Output = Result<(), Error>> + Send {
        async { Ok(()) }
    }

    /// Receives `topic` as member of consumer `group`, resuming where the group stopped.
    /// Dropping the stream leaves the group's position in place.
    fn subscribe(
        &self,
        topic: &Topic,
        group: &str,
    ) -> impl Future<Output = Result<BoxStream<'static, Self::Delivery>, Error>> + Send;

    /// Reads `topic` from `options`' start position, in the options' consumer group or, without
    /// one, as an ephemeral reader that changes no group's position. Unlike
    /// [`subscribe`](Self::subscribe), a message that is not a Courier event is handed out as
    /// [`Undecodable`](crate::Undecodable), not dead-lettered. See [`Reader`].
    fn read(&self, topic: &Topic, options: ReadOptions)
        -> impl Future<Output = Result<Reader, Error>> + Send;
}

/// Backend-neutral topic settings for [`Bus::provision`]: build with [`TopicConfig::new`] and
/// the setters. Each backend maps what it supports and documents what it ignores.
///
/// ```
/// use std::time::Duration;
/// use courier_core::{Topic, TopicConfig};
///
/// # fn main() -> Result<(), courier_core::Error> {
/// let config = TopicConfig::new(Topic::new("orders")?)
///     .partitions(6)
///     .max_age(Some(Duration::from_secs(7 * 24 * 3600)));
/// assert_eq!(config.get_partitions(), 6);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct TopicConfig {
    topic: Topic,
    partitions: u32,
    replicas: u32,
    max_age: Option<Duration>,
    max_bytes: Option<u64>,
    max_messages: Option<u64>,
    duplicate_window: Duration,
}

impl TopicConfig {
    /// Settings for `topic`, every other setting at its default.
    pub fn new(topic: Topic) -> Self {
        Self {
            topic,
            partitions: 1,
            replicas: 1,
            max_age: None,
            max_bytes: None,
            max_messages: None,
            duplicate_window: Duration::from_secs(120),
        }
    }

    /// Kafka partitions: order holds per aggregate within one partition, and more partitions
    /// let more consumers of a group share the work. No meaning for JetStream. Default 1.
    pub fn partitions(mut self, partitions: u32) -> Self {
        self.partitions = partitions;
        self
    }

    /// Copies kept by the broker (JetStream replicas, Kafka replication factor), so an
    /// acknowledged event survives the loss of a broker. Default 1.
    pub fn replicas(mut self, replicas: u32) -> Self {
        self.replicas = replicas;
        self
    }

    /// Drops events older than this, bounding storage by time. Default `None`: keep forever.
    pub fn max_age(mut self, max_age: Option<Duration>) -> Self {
        self.max_age = max_age;
        self
    }

    /// Drops the oldest events beyond this many bytes (Kafka: per partition). Default `None`:
    /// unlimited.
    pub fn max_bytes(mut self, max_bytes: Option<u64>) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    /// Drops the oldest events beyond this many messages (Kafka has no such limit and ignores
    /// it). Default `None`: unlimited.
    pub fn max_messages(mut self, max_messages: Option<u64>) -> Self {
        self.max_messages = max_messages;
        self
    }

    /// How long the broker remembers event ids to drop re-publishes, i.e. how late a retried
    /// publish is still recognised as a duplicate. Default 2 min.
    pub fn duplicate_window(mut self, window: Duration) -> Self {
        self.duplicate_window = window;
        self
    }

    /// The topic these settings are for.
    pub fn get_topic(&self) -> &Topic {
        &self.topic
    }

    /// See [`partitions`](Self::partitions).
    pub fn get_partitions(&self) -> u32 {
        self.partitions
    }

    /// See [`replicas`](Self::replicas).
    pub fn get_replicas(&self) -> u32 {
        self.replicas
    }

    /// See [`max_age`](Self::max_age).
    pub fn get_max_age(&self) -> Option<Duration> {
        self.max_age
    }

    /// See [`max_bytes`](Self::max_bytes).
    pub fn get_max_bytes(&self) -> Option<u64> {
        self.max_bytes
    }

    /// See [`max_messages`](Self::max_messages).
    pub fn get_max_messages(&self) -> Option<u64> {
        self.max_messages
    }

    /// See [`duplicate_window`](Self::duplicate_window).
    pub fn get_duplicate_window(&self) -> Duration {
        self.duplicate_window
    }
}

/// Header naming why an event was dead-lettered.
pub const DEAD_LETTER_REASON_HEADER: &str = "courier-dead-letter-reason";
/// Header with the number of handler attempts before dead-lettering.
pub const DEAD_LETTER_ATTEMPTS_HEADER: &str = "courier-dead-letter-attempts";
/// Where the broker holds the original (`stream S sequence N`, `partition P offset O`,
/// `topic T partition P offset O`, `sequence N`): on a dead-letter *record*, stored instead of a
/// copy the destination refused permanently (e.g. too large), which has no payload and no user
/// headers; and on the copy a subscriber makes of a message it cannot decode.
pub const DEAD_LETTER_POSITION_HEADER: &str = "courier-dead-letter-position";
/// Header of a dead-letter record: why the full copy was refused.
pub const DEAD_LETTER_ERROR_HEADER: &str = "courier-dead-letter-error";
/// Longest dead-letter reason or error header value, in bytes: a long error message must not
/// make the copy too large to store.
pub const MAX_DEAD_LETTER_REASON_LEN: usize = 1024;

/// `text` as a header value: line breaks become spaces, and text beyond
/// [`MAX_DEAD_LETTER_REASON_LEN`] bytes is cut at a character boundary, ending in `…`.
pub fn bounded_header_value(text: &str) -> String {
    let mut value = text.replace(['\r', '\n'], " ");
    if value.len() > MAX_DEAD_LETTER_REASON_LEN {
        let mut end = MAX_DEAD_LETTER_REASON_LEN - '…'.len_utf8();
        while !value.is_char_boundary(end) {
            end -= 1;
        }
        value.truncate(end);
        value.push('…');
    }
    value
}

/// Dead-letters by publishing the event, original headers plus the failure reason, to a topic.
/// The transport checks the copy's size before sending it; a copy too large is refused with
/// `PayloadTooLarge` and the dispatch engine stores a record instead.
pub struct DeadLetterTopic<T> {
    publisher: Publisher<T>,
    topic: Topic,
}

impl<T: Transport> DeadLetterTopic<T> {
    /// Dead-letters to `topic` through `publisher`, waiting for each event's broker ACK.
    pub fn new(publisher: Publisher<T>, topic: Topic) -> Self {
        Self { publisher, topic }
    }
}

impl<T: Transport> DeadLetter for DeadLetterTopic<T> {
    async fn dead_letter(&self, envelope: &Envelope, reason: &DeadLetterReason) -> Result<(), Error> {
        let marked = envelope
            .clone()
            .into_builder()
            .header(DEAD_LETTER_REASON_HEADER, bounded_header_value(reason.error.message()))
            .header(DEAD_LETTER_ATTEMPTS_HEADER, reason.attempts.to_string())
            .rebuild()?;
        self.publisher.publish(&self.topic, marked).await?.await.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_are_bounded_and_on_one_line() {
        assert_eq!(bounded_header_value("a\r\nb"), "a  b");
        let long = bounded_header_value(&"é".repeat(2 * MAX_DEAD_LETTER_REASON_LEN));
        assert!(long.len() <= MAX_DEAD_LETTER_REASON_LEN && long.ends_with('…'), "{}", long.len());
    }
}
