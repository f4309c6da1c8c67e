//! The backend abstraction the conformance suite, the relay and the CLI are generic over.

use std::future::Future;
use std::time::Duration;

use futures::stream::BoxStream;

use crate::dispatch::{DeadLetter, DeadLetterReason, Delivery};
use crate::{Envelope, Error, Publisher, PublisherConfig, Topic, Transport};

/// A message broker: publishes through a [`Transport`], subscribes as a consumer group.
pub trait Bus: Clone + Send + Sync + 'static {
    type Transport: Transport;
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
}

/// Backend-neutral topic settings; each backend maps what it supports and documents the rest.
#[derive(Debug, Clone)]
pub struct TopicConfig {
    pub topic: Topic,
    /// Kafka partitions. Default 1.
    pub partitions: u32,
    /// Copies kept by the broker (JetStream replicas, Kafka replication factor). Default 1.
    pub replicas: u32,
    /// Drop events older than this. Default: keep forever.
    pub max_age: Option<Duration>,
    /// Drop the oldest events beyond this many bytes. Default: unlimited.
    pub max_bytes: Option<u64>,
    /// Drop the oldest events beyond this many messages. Default: unlimited.
    pub max_messages: Option<u64>,
    /// How long the broker remembers event ids to drop re-publishes. Default 2 min.
    pub duplicate_window: Duration,
}

impl TopicConfig {
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
}

/// Header naming why an event was dead-lettered.
pub const DEAD_LETTER_REASON_HEADER: &str = "courier-dead-letter-reason";
/// Header with the number of handler attempts before dead-lettering.
pub const DEAD_LETTER_ATTEMPTS_HEADER: &str = "courier-dead-letter-attempts";

/// Dead-letters by publishing the event, original headers plus the failure reason, to a topic.
pub struct DeadLetterTopic<T> {
    publisher: Publisher<T>,
    topic: Topic,
}

impl<T: Transport> DeadLetterTopic<T> {
    pub fn new(publisher: Publisher<T>, topic: Topic) -> Self {
        Self { publisher, topic }
    }
}

impl<T: Transport> DeadLetter for DeadLetterTopic<T> {
    async fn dead_letter(&self, envelope: &Envelope, reason: &DeadLetterReason) -> Result<(), Error> {
        let marked = envelope
            .clone()
            .into_builder()
            .header(DEAD_LETTER_REASON_HEADER, reason.error.message().replace(['\r', '\n'], " "))
            .header(DEAD_LETTER_ATTEMPTS_HEADER, reason.attempts.to_string())
            .validate()?;
        self.publisher.publish(&self.topic, marked).await?.await.map(drop)
    }
}
