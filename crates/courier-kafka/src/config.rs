//! Kafka bus settings.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use courier_core::wire::WireMode;
use courier_core::{is_secret_setting, Error, ErrorKind};
use rdkafka::ClientConfig;

use crate::owned;

/// Settings of a [`KafkaBus`](crate::KafkaBus): [`KafkaConfig::new`] or
/// [`KafkaConfig::from_url`], then the setters below, each of which documents its default.
///
/// ```
/// use std::time::Duration;
/// use courier_kafka::KafkaConfig;
///
/// let config = KafkaConfig::from_url("kafka://127.0.0.1:9092")?
///     .queue_full_timeout(Duration::from_secs(5))
///     .compression("lz4")
///     .set("client.id", "billing")
///     .producer_set("linger.ms", "10");
/// assert!(config.get_provision());
/// # Ok::<(), courier_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    pub(crate) bootstrap_servers: String,
    pub(crate) wire_mode: WireMode,
    pub(crate) queue_full_timeout: Duration,
    pub(crate) delivery_timeout: Duration,
    pub(crate) provision: bool,
    pub(crate) compression: Option<String>,
    pub(crate) admin_timeout: Duration,
    pub(crate) dedup_window: Duration,
    pub(crate) dedup_capacity: usize,
    pub(crate) commit_interval: Duration,
    pub(crate) revoke_timeout: Duration,
    pub(crate) flush_timeout: Duration,
    /// librdkafka settings for every client.
    settings: Settings,
    /// librdkafka settings for the producer only, applied after `settings`.
    producer_settings: Settings,
    /// librdkafka settings for consumers only, applied after `settings`.
    consumer_settings: Settings,
}

/// librdkafka properties by name. `Debug` shows the values of secret ones (`sasl.password`,
/// `ssl.key.pem`, …) as `***`, so that a logged config never carries a credential.
#[derive(Clone, Default)]
struct Settings(BTreeMap<String, String>);

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = self.0.iter().map(|(k, v)| (k, if is_secret_setting(k) { "***" } else { v.as_str() }));
        f.debug_map().entries(shown).finish()
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            bootstrap_servers: "127.0.0.1:9092".into(),
            wire_mode: WireMode::CloudEvents,
            queue_full_timeout: Duration::from_secs(1),
            delivery_timeout: Duration::from_secs(4),
            provision: true,
            compression: None,
            admin_timeout: Duration::from_secs(30),
            dedup_window: Duration::from_secs(120),
            dedup_capacity: 100_000,
            commit_interval: Duration::from_secs(1),
            revoke_timeout: Duration::from_secs(30),
            flush_timeout: Duration::from_secs(30),
            settings: Settings::default(),
            producer_settings: Settings::default(),
            consumer_settings: Settings::default(),
        }
    }
}

/// How often librdkafka looks for messages past `message.timeout.ms` (a fixed second).
const TIMEOUT_SCAN_INTERVAL: Duration = Duration::from_secs(1);

/// The librdkafka setting that makes a client start its own in-process mock cluster.
pub(crate) const MOCK_BROKERS_SETTING: &str = "test.mock.num.brokers";

impl KafkaConfig {
    /// Defaults with the given brokers (`bootstrap.servers`, `host:port[,host:port]`); the
    /// default is `127.0.0.1:9092`.
    pub fn new(bootstrap_servers: impl Into<String>) -> Self {
        Self { bootstrap_servers: bootstrap_servers.into(), ..Self::default() }
    }

    /// Parses a bus URL `kafka://host:port[,host:port]`.
    pub fn from_url(url: &str) -> Result<Self, Error> {
        let servers = url.strip_prefix("kafka://").filter(|s| !s.is_empty()).ok_or_else(|| {
            Error::new(ErrorKind::Config, format!("bus URL {url:?} is not kafka://host:port[,host:port]"))
        })?;
        Ok(Self::new(servers.trim_end_matches('/')))
    }

    /// A bus on librdkafka's in-process mock cluster with `brokers` brokers, for tests and
    /// demos without a Kafka broker. Topics are created through the mock cluster's API.
    ///
    /// Consumers use `session.timeout.ms=6000`: the mock's group coordinator, unlike a real
    /// broker's, does not mark a group empty when its last member leaves, and waits almost a
    /// session timeout before admitting the next member.
    pub fn mock(brokers: u32) -> Self {
        Self::new("")
            .producer_set(MOCK_BROKERS_SETTING, brokers.to_string())
            .consumer_set("session.timeout.ms", "6000")
    }

    /// How envelopes are written: CloudEvents `ce_*` headers, or the reference system's JSON
    /// envelope with `X-Event-*` headers for consumers that expect it. Consumers detect either.
    /// Default [`WireMode::CloudEvents`].
    pub fn wire_mode(mut self, mode: WireMode) -> Self {
        self.wire_mode = mode;
        self
    }

    /// How long a publish waits for room when librdkafka's local queue is full
    /// (`queue.buffering.max.messages`/`.kbytes`) before its verdict is
    /// [`ErrorKind::Backpressure`]; longer rides out slower brokers, shorter reports an overload
    /// sooner. It adds to the [`delivery_timeout`](Self::delivery_timeout) in the bound on a
    /// publish's verdict. Default 1 s.
    pub fn queue_full_timeout(mut self, timeout: Duration) -> Self {
        self.queue_full_timeout = timeout;
        self
    }

    /// How long librdkafka tries to deliver an event it queued (`message.timeout.ms`, retries
    /// included) before its verdict is [`ErrorKind::Timeout`]; from then on it does not send
    /// the event. librdkafka's own default is 300 s, far longer than an outbox relay's lease:
    /// an event still queued after a takeover would land after the new owner's events, out of
    /// order. Longer rides out longer broker outages in one attempt. A `message.timeout.ms`
    /// given to [`set`](Self::set) is refused, as the bound on a verdict rests on this setting.
    /// Default 4 s, which with
    /// the other defaults bounds a verdict at 6 s
    /// ([`get_verdict_timeout`](Self::get_verdict_timeout)), within what a relay's default
    /// 10 s lease allows.
    pub fn delivery_timeout(mut self, timeout: Duration) -> Self {
        self.delivery_timeout = timeout;
        self
    }

    /// Whether [`provision`](courier_core::Bus::provision) creates topics through the admin
    /// API; turn it off where topics are managed elsewhere (or the client may not create them),
    /// and provisioning only checks that the topic exists. Default on.
    pub fn provision(mut self, on: bool) -> Self {
        self.provision = on;
        self
    }

    /// `compression.type` set on topics created by provisioning (`producer`, `gzip`, `snappy`,
    /// `lz4`, `zstd`, `uncompressed`), to trade broker CPU for disk and network. Default: not
    /// set, so the broker's default applies.
    pub fn compression(mut self, compression: impl Into<String>) -> Self {
        self.compression = Some(compression.into());
        self
    }

    /// Timeout of admin and metadata requests (provisioning, deletion, topic validation).
    /// Default 30 s.
    pub fn admin_timeout(mut self, timeout: Duration) -> Self {
        self.admin_timeout = timeout;
        self
    }

    /// How long the producer at least remembers acknowledged event ids, so that re-publishing
    /// one is answered as a duplicate instead of being written again. Kafka has no broker-side
    /// de-duplication by event id; this covers re-publishes from the same bus only. Older ids
    /// are forgotten as new ones arrive; zero turns it off. Default 2 min.
    pub fn dedup_window(mut self, window: Duration) -> Self {
        self.dedup_window = window;
        self
    }

    /// Most event ids remembered for de-duplication, which bounds its memory; once half of it
    /// arrived within the window, older ids are forgotten early. Default 100,000.
    pub fn dedup_capacity(mut self, capacity: usize) -> Self {
        self.dedup_capacity = capacity;
        self
    }

    /// How often a consumer commits the offsets it may commit: shorter means fewer messages
    /// delivered again after a crash, at the cost of more commit requests. Commits also happen
    /// on rebalance and when the subscription is dropped. Default 1 s.
    pub fn commit_interval(mut self, interval: Duration) -> Self {
        self.commit_interval = interval;
        self
    }

    /// How long a rebalance that takes partitions away waits for the handlers still working on
    /// their messages, so that the new owner never handles an aggregate while the old one still
    /// does. What finishes in time is committed; past it the rebalance goes on and the new
    /// owner handles the rest again. Keep it below `max.poll.interval.ms` (the group's
    /// rebalance timeout, librdkafka default 300 s). Default 30 s.
    pub fn revoke_timeout(mut self, timeout: Duration) -> Self {
        self.revoke_timeout = timeout;
        self
    }

    /// How long [`Transport::flush`](courier_core::Transport::flush) (and so a publisher's
    /// close) waits for librdkafka to deliver what it holds. Default 30 s.
    pub fn flush_timeout(mut self, timeout: Duration) -> Self {
        self.flush_timeout = timeout;
        self
    }

    /// Sets a librdkafka property on every client (producer, consumers, admin), over Courier's
    /// defaults: security (`security.protocol`, `sasl.*`, `ssl.*`), client ids and tuning Courier
    /// has no setter for. Properties Courier sets itself (`enable.idempotence`, `acks`,
    /// `message.timeout.ms`, `enable.auto.commit`, `bootstrap.servers`, `group.id`,
    /// `transactional.id`, `partitioner=random`) make [`KafkaBus::connect`](crate::KafkaBus::connect)
    /// fail with an error that names the property and the Courier setting to use instead.
    /// Values of secret properties (`sasl.password`, `ssl.key.password`, `ssl.key.pem`, …) are
    /// shown as `***` in `Debug` output and never appear in errors. Default: none.
    pub fn set(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.settings.0.insert(key.into(), value.into());
        self
    }

    /// Sets a librdkafka property on the producer only, after [`set`](Self::set)'s, e.g.
    /// `linger.ms` or `message.max.bytes`; the same properties are refused. Default: none.
    pub fn producer_set(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.producer_settings.0.insert(key.into(), value.into());
        self
    }

    /// Sets a librdkafka property on consumers only, after [`set`](Self::set)'s; the same
    /// properties are refused. Default: none, except `auto.offset.reset=earliest`, so a new
    /// group reads the topic from its start.
    pub fn consumer_set(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.consumer_settings.0.insert(key.into(), value.into());
        self
    }

    /// Checks the librdkafka properties given to [`set`](Self::set),
    /// [`producer_set`](Self::producer_set) and [`consumer_set`](Self::consumer_set): one Courier
    /// owns is refused, naming it, why, and the setting to use instead.
    /// [`KafkaBus::connect`](crate::KafkaBus::connect) calls it.
    pub fn validate(&self) -> Result<(), Error> {
        let all = [&self.settings, &self.producer_settings, &self.consumer_settings];
        all.into_iter().flat_map(|s| &s.0).try_for_each(|(key, value)| owned::check(key, value))
    }

    /// `err` with the values of secret properties replaced by `***`: librdkafka's own errors
    /// about a property (e.g. an invalid value) quote the value. The wrapped librdkafka error,
    /// which would still hold it, is dropped from a scrubbed error.
    pub(crate) fn scrub(&self, err: Error) -> Error {
        let all = [&self.settings, &self.producer_settings, &self.consumer_settings];
        let secrets: Vec<&str> = all
            .into_iter()
            .flat_map(|s| &s.0)
            .filter(|(key, value)| is_secret_setting(key) && !value.is_empty())
            .map(|(_, value)| value.as_str())
            .collect();
        if !secrets.iter().any(|secret| err.message().contains(secret)) {
            return err;
        }
        let scrubbed =
            secrets.iter().fold(err.message().to_owned(), |text, secret| text.replace(secret, "***"));
        Error::new(err.kind(), scrubbed)
    }

    /// The brokers the bus connects to (`bootstrap.servers`).
    pub fn get_bootstrap_servers(&self) -> &str {
        &self.bootstrap_servers
    }

    /// How envelopes are written.
    pub fn get_wire_mode(&self) -> WireMode {
        self.wire_mode
    }

    /// Whether provisioning creates topics (else it only validates them).
    pub fn get_provision(&self) -> bool {
        self.provision
    }

    /// The producer's librdkafka configuration.
    pub(crate) fn producer_config(&self) -> ClientConfig {
        let mut config = self.base_config(&self.bootstrap_servers);
        config.extend(self.producer_settings.0.clone());
        // The ACK guarantee rests on these two (users may not set them; see `validate`).
        config.set("enable.idempotence", "true").set("acks", "all");
        // The bound on a verdict (`Transport::verdict_timeout`) rests on this one.
        config.set("message.timeout.ms", self.delivery_timeout.as_millis().max(1).to_string());
        config
    }

    /// The longest time from a publish to its verdict: waiting for queue room
    /// ([`queue_full_timeout`](Self::queue_full_timeout)), then delivery
    /// ([`delivery_timeout`](Self::delivery_timeout)), plus the interval at which librdkafka
    /// looks for timed-out messages (once a second), so a timeout is reported up to that late.
    pub fn get_verdict_timeout(&self) -> Duration {
        self.queue_full_timeout + self.delivery_timeout + TIMEOUT_SCAN_INTERVAL
    }

    /// A consumer's librdkafka configuration; `bootstrap` is the mock cluster's address when
    /// the producer started one.
    pub(crate) fn consumer_config(&self, bootstrap: &str, group: &str) -> ClientConfig {
        let mut config = self.base_config(bootstrap);
        config.set("auto.offset.reset", "earliest").set("enable.partition.eof", "false");
        config.extend(self.consumer_settings.0.clone());
        config.set("group.id", group).set("enable.auto.commit", "false");
        config
    }

    /// The admin client's librdkafka configuration; its metadata requests (topic validation)
    /// must not create the topic they ask about.
    pub(crate) fn admin_config(&self) -> ClientConfig {
        let mut config = self.base_config(&self.bootstrap_servers);
        config.set("allow.auto.create.topics", "false");
        config
    }

    fn base_config(&self, bootstrap: &str) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", bootstrap);
        config.extend(self.settings.0.clone());
        config
    }

    /// The largest message librdkafka accepts (`message.max.bytes`, librdkafka's default
    /// 1,000,000).
    pub(crate) fn message_max_bytes(&self) -> usize {
        self.producer_settings
            .0
            .get("message.max.bytes")
            .or_else(|| self.settings.0.get("message.max.bytes"))
            .and_then(|v| v.parse().ok())
            .unwrap_or(1_000_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_hides_secret_settings() {
        let config = KafkaConfig::new("broker:9093")
            .set("security.protocol", "SASL_SSL")
            .set("sasl.username", "courier")
            .set("sasl.password", "pw-not-shown")
            .producer_set("ssl.key.password", "key-pw-not-shown");
        let shown = format!("{config:?}");
        assert!(
            shown.contains(r#""sasl.username": "courier""#) && shown.contains(r#""sasl.password": "***""#),
            "{shown}"
        );
        assert!(!shown.contains("not-shown"), "{shown}");
    }

    #[test]
    fn url_parsing() {
        assert_eq!(KafkaConfig::from_url("kafka://a:1,b:2").unwrap().get_bootstrap_servers(), "a:1,b:2");
        assert_eq!(KafkaConfig::from_url("nats://a:1").unwrap_err().kind(), ErrorKind::Config);
        assert_eq!(KafkaConfig::from_url("kafka://").unwrap_err().kind(), ErrorKind::Config);
    }

    #[test]
    fn properties_courier_owns_are_refused_wherever_they_are_set() {
        let refused = [
            KafkaConfig::default().producer_set("enable.idempotence", "false"),
            KafkaConfig::default().set("acks", "1"),
            KafkaConfig::default().producer_set("message.timeout.ms", "300000"),
            KafkaConfig::default().consumer_set("enable.auto.commit", "true"),
        ];
        for config in refused {
            let err = config.validate().unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Config, "{err}");
            assert!(err.message().contains("cannot be set"), "{err}");
        }
        let config = KafkaConfig::default().consumer_set("auto.offset.reset", "latest").set("linger.ms", "5");
        config.validate().unwrap();
        let producer = config.producer_config();
        assert_eq!(producer.get("enable.idempotence"), Some("true"));
        assert_eq!(producer.get("acks"), Some("all"));
        assert_eq!(producer.get("message.timeout.ms"), Some("4000"));
        let consumer = config.consumer_config("x:1", "g");
        assert_eq!(consumer.get("enable.auto.commit"), Some("false"));
        assert_eq!(consumer.get("auto.offset.reset"), Some("latest"));
        assert_eq!(consumer.get("group.id"), Some("g"));
    }

    #[test]
    fn scrubbing_hides_secret_values_in_errors() {
        let config = KafkaConfig::default().set("sasl.password", "hunter2").set("sasl.username", "app");
        let err =
            Error::new(ErrorKind::Config, r#"Invalid value "hunter2" for property sasl.password (user app)"#);
        let scrubbed = config.scrub(err);
        assert_eq!(scrubbed.message(), r#"Invalid value "***" for property sasl.password (user app)"#);
        assert_eq!(scrubbed.kind(), ErrorKind::Config);
    }
}
