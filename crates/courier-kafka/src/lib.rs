//! Courier's Kafka backend on rust-rdkafka (librdkafka).
//!
//! [`KafkaBus`] implements [`courier_core::Bus`]:
//! - **Publish**: one idempotent producer per bus (`enable.idempotence=true`, `acks=all`,
//!   always enforced), polled by one dedicated thread whose delivery-report callback turns each
//!   report into the event's verdict: a [`Receipt`](courier_core::Receipt) with
//!   [`Position::Partition`](courier_core::Position::Partition), or a typed error whose
//!   [`is_retryable`](courier_core::Error::is_retryable) says whether re-publishing can help.
//!   The record key is the `aggregate_id`, so an aggregate's events share one partition and keep
//!   their order; metadata travels as CloudEvents `ce_*` headers (or, in
//!   [`WireMode::JsonEnvelope`](courier_core::wire::WireMode::JsonEnvelope), as the reference JSON
//!   envelope plus `X-Event-*` headers). A full librdkafka queue makes the publish wait up to
//!   [`KafkaConfig::queue_full_timeout`], then fail with `Backpressure`: nothing is dropped.
//!   A queued event has its verdict within [`KafkaConfig::delivery_timeout`]
//!   (`message.timeout.ms`); past it librdkafka reports a timeout and no longer sends the event.
//!   When librdkafka declares the producer dead (a fatal error, e.g. the idempotent producer
//!   losing track of its sequence numbers), the bus replaces it by a new one with the same
//!   configuration: the events the old one still held get their verdicts (queued ones are
//!   purged and reported `Lost`, which is retryable), and later publishes go to the new one.
//!   [`KafkaBus::producer_restarts`] counts replacements.
//! - **Topics**: created through the admin API from [`TopicConfig`]
//!   (partitions, replication factor, `retention.ms` from `max_age`, `retention.bytes` from
//!   `max_bytes` (per partition), `compression.type` from [`KafkaConfig::compression`]), or only
//!   validated when [`KafkaConfig::provision`] is off.
//! - **Subscribe**: a consumer-group member; offsets are committed by hand and only over the
//!   contiguous prefix of acknowledged messages of each partition, never past one that is not
//!   done. Retries, dead-lettering and per-aggregate order come from the shared
//!   [`dispatch`](courier_core::dispatch) engine. See [`KafkaDelivery`]. A record that is not a
//!   Courier event (written by another client: a value that does not decode, header bytes that
//!   are not UTF-8) is forwarded as it is to the topic's dead-letter topic
//!   ([`KafkaBus::dead_letter_topic`]) with the reason and its position, and committed only
//!   after that copy is acknowledged.
//! - **Read** ([`Bus::read`]): a consumer assigned every partition at offsets resolved up front
//!   (beginning, the current end, or `offsets_for_times` for a time). Without a group it commits
//!   nothing. With one it resumes at the group's committed offsets and
//!   commits what is acknowledged, but it is assigned the partitions rather than joining the
//!   group, so it shares no work with the group's subscribers.
//!
//! # What an ACK guarantees on Kafka
//! A successful verdict means the partition leader appended the event and every replica in
//! the in-sync replica set (ISR) has it (`acks=all`). How many copies that is depends on the
//! topic's `min.insync.replicas` (broker default 1): with replication factor 3 and
//! `min.insync.replicas=2` an ACK survives the loss of one broker; with the default of 1 the ISR
//! may have shrunk to the leader alone, and an ACK then survives only what the leader's disk
//! survives. Brokers acknowledge once the write is in the page cache, not after fsync
//! (`log.flush.interval.messages`); durability comes from replication. Idempotence makes
//! librdkafka's internal retries write each record once and in order within a partition, for
//! the life of the producer; an event re-published later is a new record, which is why the bus
//! also remembers recently acknowledged event ids ([`KafkaConfig::dedup_window`]) and answers a
//! re-publish from the same bus as a duplicate. Across processes, consumers must tolerate
//! duplicates (at-least-once); the event id is the key to de-duplicate them.
//!
//! # Allocation
//! librdkafka allocates every message and each of its headers (seven CloudEvents headers per
//! event) on the publishing thread and frees them on its delivery-report thread, a hand-over
//! glibc's malloc handles poorly. An application publishing at high rates should give the C
//! libraries an allocator built for it, such as mimalloc with its `override` feature, as the
//! `courier` binary does.
//!
//! ```no_run
//! use courier_core::{Bus, Envelope, PublisherConfig, Topic, TopicConfig};
//! use courier_kafka::{KafkaBus, KafkaConfig};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), courier_core::Error> {
//! let bus = KafkaBus::connect(KafkaConfig::from_url("kafka://127.0.0.1:9092")?)?;
//! let topic = Topic::new("orders")?;
//! bus.provision(&TopicConfig::new(topic.clone())).await?;
//! let publisher = bus.publisher(PublisherConfig::default());
//! let event = Envelope::builder("order", "order-42", "OrderPlaced").payload("{}").build()?;
//! let receipt = publisher.publish(&topic, event).await?.await?;
//! println!("stored at {:?}", receipt.position);
//! publisher.close().await?;
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

mod admin;
mod config;
mod consumer;
mod dedup;
mod error;
mod native;
mod owned;
mod problem;
mod producer;
mod reader;
mod record;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};

use courier_core::{
    Bus, DeadLetterTopic, Error, ErrorKind, Publisher, PublisherConfig, ReadOptions, Reader, Topic,
    TopicConfig,
};
use futures::stream::BoxStream;
use rdkafka::admin::AdminClient;
use rdkafka::client::Client;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::Producer as _;
use rdkafka::ClientConfig;

pub use config::KafkaConfig;
pub use consumer::{GroupContext, KafkaDelivery};
pub use producer::{DeliveryContext, KafkaTransport};

use crate::config::MOCK_BROKERS_SETTING;
use crate::dedup::Dedup;
use crate::error::from_kafka;
use crate::problem::{LastProblem, ProblemContext};
use crate::producer::ProducerInstance;

/// How long [`KafkaBus::health`](Bus::health) waits for metadata: under the 2 s a readiness
/// check typically allows, so that the caller gets the probe's answer, which may name an
/// authentication or TLS failure, rather than its own timeout.
pub const HEALTH_PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(1500);

/// Appended to a topic's name to name its dead-letter topic: `orders` dead-letters to
/// `orders.dlq`.
pub const DEAD_LETTER_SUFFIX: &str = ".dlq";

/// The topic `topic`'s dead-lettered records go to (see [`DEAD_LETTER_SUFFIX`]).
fn dead_letter_topic(topic: &Topic) -> Result<Topic, Error> {
    Topic::new(format!("{topic}{DEAD_LETTER_SUFFIX}")).map_err(|err| {
        Error::new(ErrorKind::InvalidInput, format!("no dead-letter topic for {topic}: {err}"))
    })
}

/// A Kafka bus. Cheap to clone; clones share the producer.
#[derive(Clone)]
pub struct KafkaBus {
    shared: Arc<Shared>,
}

pub(crate) struct Shared {
    config: KafkaConfig,
    /// The producer in use; replaced when librdkafka declares it dead (a fatal error).
    producer: RwLock<Arc<ProducerInstance>>,
    /// What a replacement producer is made from: the first producer's configuration, pointed at
    /// the first producer's mock cluster when it started one.
    producer_config: ClientConfig,
    /// The first producer when it started the mock cluster, which lives as long as it does.
    /// Declared after `producer`: clients of the cluster go before it.
    mock_owner: Option<Arc<ProducerInstance>>,
    /// Replaced producers, while they still drain.
    retired: Mutex<Vec<Weak<ProducerInstance>>>,
    /// How often the producer was replaced.
    restarts: AtomicU64,
    dedup: Arc<Dedup>,
    /// Where consumers connect: the configured servers, or the producer's mock cluster.
    bootstrap: String,
    /// `None` on the mock cluster, which has no CreateTopics request.
    admin: Option<AdminClient<ProblemContext>>,
    /// The last authentication or TLS failure the producer or admin client reported.
    problem: Arc<LastProblem>,
}

impl Shared {
    /// The bus's mock cluster, if it runs on one.
    pub(crate) fn mock_cluster(&self) -> Option<MockCluster<'_, DeliveryContext>> {
        self.mock_owner.as_ref()?.producer.client().mock_cluster()
    }
}

impl KafkaBus {
    /// Creates the producer (and admin client). librdkafka connects in the background, so this
    /// fails only on invalid configuration (including a librdkafka property Courier owns, see
    /// [`KafkaConfig::set`]); broker trouble shows in verdicts, provisioning and
    /// [`health`](Bus::health). When authentication or the TLS handshake fails, those errors
    /// say so (with librdkafka's reason) instead of reporting a bare timeout.
    pub fn connect(config: KafkaConfig) -> Result<Self, Error> {
        config.validate()?;
        let dedup = Arc::new(Dedup::new(config.dedup_window, config.dedup_capacity));
        let problem = Arc::new(LastProblem::default());
        let mut producer_config = config.producer_config();
        let producer = ProducerInstance::new(&producer_config, Arc::clone(&dedup), &problem);
        let producer = Arc::new(producer.map_err(|e| config.scrub(e))?);
        let mock_bootstrap = producer.producer.client().mock_cluster().map(|mock| mock.bootstrap_servers());
        let (bootstrap, admin, mock_owner) = match mock_bootstrap {
            Some(bootstrap) => {
                // A replacement joins this cluster instead of starting its own.
                producer_config.remove(MOCK_BROKERS_SETTING).set("bootstrap.servers", &bootstrap);
                (bootstrap, None, Some(Arc::clone(&producer)))
            }
            None => {
                let admin = config
                    .admin_config()
                    .create_with_context(ProblemContext(Arc::clone(&problem)))
                    .map_err(|e| config.scrub(from_kafka("creating the Kafka admin client", e)))?;
                (config.bootstrap_servers.clone(), Some(admin), None)
            }
        };
        Ok(Self {
            shared: Arc::new(Shared {
                config,
                producer: RwLock::new(producer),
                producer_config,
                mock_owner,
                retired: Mutex::default(),
                restarts: AtomicU64::new(0),
                dedup,
                bootstrap,
                admin,
                problem,
            }),
        })
    }

    /// A bus on a fresh librdkafka mock cluster of `brokers` brokers (see [`KafkaConfig::mock`]).
    pub fn mock(brokers: u32) -> Result<Self, Error> {
        Self::connect(KafkaConfig::mock(brokers))
    }

    /// The settings the bus was made with.
    pub fn config(&self) -> &KafkaConfig {
        &self.shared.config
    }

    /// The brokers consumers connect to (the mock cluster's listeners on a mock bus).
    pub fn bootstrap_servers(&self) -> &str {
        &self.shared.bootstrap
    }

    /// The topic to which subscribers of `topic` forward records that are not Courier events:
    /// `topic` plus [`DEAD_LETTER_SUFFIX`]. Provision it like any topic (or use
    /// [`dead_letter`](Self::dead_letter)): until it exists, such a record is retried and its
    /// partition waits.
    pub fn dead_letter_topic(&self, topic: &Topic) -> Result<Topic, Error> {
        dead_letter_topic(topic)
    }

    /// The dead-letter destination for handlers of `topic`: its dead-letter topic, provisioned
    /// (or validated) here, so events a handler gives up on land beside the records the
    /// subscriber could not decode.
    pub async fn dead_letter(&self, topic: &Topic) -> Result<DeadLetterTopic<KafkaTransport>, Error> {
        let dlq = dead_letter_topic(topic)?;
        self.provision(&TopicConfig::new(dlq.clone())).await?;
        Ok(DeadLetterTopic::new(self.publisher(PublisherConfig::default()), dlq))
    }

    /// The in-process mock cluster when the bus runs on one (librdkafka setting
    /// `test.mock.num.brokers`), for fault injection: brokers down/up, request errors.
    pub fn mock_cluster(&self) -> Option<MockCluster<'_, DeliveryContext>> {
        self.shared.mock_cluster()
    }

    /// Events handed to librdkafka and still waiting for their delivery report.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight()
    }

    /// How often the producer was replaced because librdkafka declared it dead (a fatal error,
    /// e.g. the idempotent producer losing track of its sequence numbers); worth an alert.
    pub fn producer_restarts(&self) -> u64 {
        self.shared.restarts.load(Ordering::Relaxed)
    }

    /// Runs `f` on the librdkafka client of the producer in use, e.g. to read its state or, on
    /// the mock cluster, to inject a fatal error with `rd_kafka_test_fatal_error`.
    pub fn with_producer_client<R>(&self, f: impl FnOnce(&Client<DeliveryContext>) -> R) -> R {
        f(self.shared.producer().producer.client())
    }
}

impl Bus for KafkaBus {
    type Transport = KafkaTransport;
    type Delivery = KafkaDelivery;

    fn name(&self) -> &'static str {
        "kafka"
    }

    /// Asks a broker for cluster metadata: answers only when one is reachable, within
    /// [`HEALTH_PROBE_TIMEOUT`], and says so when authentication or TLS failed.
    async fn health(&self) -> Result<(), Error> {
        let shared = Arc::clone(&self.shared);
        let probe = tokio::task::spawn_blocking(move || {
            let producer = shared.producer();
            producer.producer.client().fetch_metadata(None, HEALTH_PROBE_TIMEOUT).map(drop)
        });
        match probe.await {
            Ok(Ok(())) => {
                self.shared.problem.clear();
                Ok(())
            }
            Ok(Err(e)) => Err(self.shared.problem.explain(Error::with_source(
                ErrorKind::Connection,
                "no Kafka broker answered a metadata request",
                e,
            ))),
            Err(e) => Err(Error::new(ErrorKind::Lost, format!("the metadata probe failed: {e}"))),
        }
    }

    fn publisher(&self, config: PublisherConfig) -> Publisher<KafkaTransport> {
        Publisher::new(KafkaTransport { shared: Arc::clone(&self.shared) }, config)
    }

    async fn provision(&self, config: &TopicConfig) -> Result<(), Error> {
        admin::provision(&self.shared, config).await
    }

    /// Deletes `topic` through the admin API. Close its publishers and subscribers first: the
    /// bundled librdkafka can crash the process (SIGSEGV in its metadata-cache update) when a
    /// topic is deleted under a live consumer or publisher.
    async fn delete_topic(&self, topic: &Topic) -> Result<(), Error> {
        self.shared.producer().topics.forget(topic);
        admin::delete(&self.shared, topic).await?;
        // A topic created again under this name starts empty: its first publishes are new.
        self.shared.dedup.forget_topic(topic);
        Ok(())
    }

    async fn subscribe(
        &self,
        topic: &Topic,
        group: &str,
    ) -> Result<BoxStream<'static, KafkaDelivery>, Error> {
        consumer::subscribe(&self.shared, topic, group)
    }

    /// Reads through a consumer assigned every partition (see **Read** in the crate docs): with
    /// a group it resumes at the group's offsets but does not join the group.
    async fn read(&self, topic: &Topic, options: ReadOptions) -> Result<Reader, Error> {
        reader::read(&self.shared, topic, options).await
    }
}
