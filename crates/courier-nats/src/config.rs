//! [`NatsConfig`]: connection, wire format, stream and consumer settings, with documented defaults.

use std::path::PathBuf;
use std::time::Duration;

use courier_core::wire::WireMode;
use courier_core::{Error, ErrorKind, Topic};

use crate::security::{Credentials, Tls};

/// Where a provisioned stream keeps its messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Storage {
    /// On disk; survives a server restart. The default.
    #[default]
    File,
    /// In memory only; lost when the server stops.
    Memory,
}

/// When a provisioned stream drops messages (besides its age/size/count limits).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Retention {
    /// Keep messages until a limit is reached; consumers do not remove them. The default, and
    /// the only policy that lets a new consumer group read history.
    #[default]
    Limits,
    /// Remove a message once every consumer that existed when it arrived acknowledged it.
    Interest,
    /// Remove a message once one consumer acknowledged it; one consumer group per stream.
    WorkQueue,
}

/// Settings of a [`NatsBus`](crate::NatsBus). Build with [`NatsConfig::new`] and the setters;
/// each setter documents its default.
///
/// ```
/// use std::time::Duration;
/// use courier_nats::{NatsConfig, Storage};
///
/// let config = NatsConfig::new("nats://127.0.0.1:4222")
///     .ack_timeout(Duration::from_secs(10))
///     .storage(Storage::Memory);
/// assert!(config.get_provision());
/// ```
#[derive(Clone)]
pub struct NatsConfig {
    pub(crate) url: String,
    pub(crate) wire_mode: WireMode,
    pub(crate) ack_timeout: Duration,
    pub(crate) provision: bool,
    pub(crate) storage: Storage,
    pub(crate) retention: Retention,
    pub(crate) dead_letter_suffix: String,
    pub(crate) ack_wait: Duration,
    pub(crate) max_deliveries: Option<u32>,
    pub(crate) max_ack_pending: i64,
    pub(crate) pull_batch: usize,
    pub(crate) connection_name: String,
    pub(crate) credentials: Credentials,
    pub(crate) tls: Tls,
}

/// Every setting, with the URL's password or token and every credential masked: a logged config
/// never carries a secret.
impl std::fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsConfig")
            .field("url", &self.shown_url())
            .field("wire_mode", &self.wire_mode)
            .field("ack_timeout", &self.ack_timeout)
            .field("provision", &self.provision)
            .field("storage", &self.storage)
            .field("retention", &self.retention)
            .field("dead_letter_suffix", &self.dead_letter_suffix)
            .field("ack_wait", &self.ack_wait)
            .field("max_deliveries", &self.max_deliveries)
            .field("max_ack_pending", &self.max_ack_pending)
            .field("pull_batch", &self.pull_batch)
            .field("connection_name", &self.connection_name)
            .field("credentials", &self.credentials)
            .field("tls", &self.tls)
            .finish()
    }
}

impl NatsConfig {
    /// Settings for the server(s) at `url` (`nats://host:port`, comma-separated for a cluster).
    /// The URL may carry credentials, `nats://user:password@host:port` or `nats://token@host:port`
    /// (percent-encoded); the setters below are the alternative, and setting both is refused at
    /// connect time.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            wire_mode: WireMode::CloudEvents,
            ack_timeout: Duration::from_secs(5),
            provision: true,
            storage: Storage::File,
            retention: Retention::Limits,
            dead_letter_suffix: ".dlq".into(),
            ack_wait: Duration::from_secs(30),
            max_deliveries: None,
            max_ack_pending: 10_000,
            pull_batch: 256,
            connection_name: "courier".into(),
            credentials: Credentials::None,
            tls: Tls::default(),
        }
    }

    /// How envelopes are written: [`WireMode::CloudEvents`] puts `ce-*` headers around the
    /// untouched payload; [`WireMode::JsonEnvelope`] writes the reference system's JSON envelope, for
    /// consumers that read that format. Subscribers read both. Default
    /// [`WireMode::CloudEvents`].
    pub fn wire_mode(mut self, mode: WireMode) -> Self {
        self.wire_mode = mode;
        self
    }

    /// How long a publish waits for its PubAck before its result is a retryable
    /// [`ErrorKind::Timeout`]; also the timeout of JetStream API calls. Default 5 s.
    pub fn ack_timeout(mut self, timeout: Duration) -> Self {
        self.ack_timeout = timeout;
        self
    }

    /// Whether [`Bus::provision`](courier_core::Bus::provision) creates or updates streams
    /// (`true`) or only checks that a stream holds the topic's subject (`false`, for servers
    /// whose streams are managed elsewhere). Default `true`.
    pub fn provision(mut self, provision: bool) -> Self {
        self.provision = provision;
        self
    }

    /// Storage of provisioned streams. Default [`Storage::File`].
    pub fn storage(mut self, storage: Storage) -> Self {
        self.storage = storage;
        self
    }

    /// Retention policy of provisioned streams. Default [`Retention::Limits`].
    pub fn retention(mut self, retention: Retention) -> Self {
        self.retention = retention;
        self
    }

    /// Appended to a topic's name to name its dead-letter topic: with `.dlq`, `orders`
    /// dead-letters to `orders.dlq` (its own stream, `orders_dlq`). Default `.dlq`.
    pub fn dead_letter_suffix(mut self, suffix: impl Into<String>) -> Self {
        self.dead_letter_suffix = suffix.into();
        self
    }

    /// Consumer `ack_wait`: how long JetStream waits for an acknowledgement before redelivering.
    /// Every message a subscriber holds (being handled, retried, or queued behind its aggregate's
    /// earlier events) gets an in-progress ack three times per `ack_wait`, so `ack_wait` only
    /// bounds how long the messages of a subscriber that died wait. Default 30 s.
    pub fn ack_wait(mut self, ack_wait: Duration) -> Self {
        self.ack_wait = ack_wait;
        self
    }

    /// Deliveries of one message (JetStream's `delivered` count) after which the subscriber
    /// dead-letters it instead of handing it out again, e.g. a message whose handler crashes the
    /// process. The dispatch engine's `max_attempts` governs ordinary handler failures; this
    /// limit only catches messages that never get acknowledged at all. Default `None`: no limit.
    pub fn max_deliveries(mut self, max: Option<u32>) -> Self {
        self.max_deliveries = max;
        self
    }

    /// Consumer `max_ack_pending`: messages handed out but not acknowledged before JetStream
    /// pauses delivery. It also bounds what a subscription holds in memory ahead of its handlers
    /// (every message received is taken and kept alive at once). Keep it above the dispatch
    /// engine's `max_buffered`. Values below 1 (JetStream's "unlimited") count as 1.
    /// Default 10,000.
    pub fn max_ack_pending(mut self, max: i64) -> Self {
        self.max_ack_pending = max.max(1);
        self
    }

    /// Messages requested per pull: larger batches mean fewer round trips, smaller ones hand
    /// out fewer messages ahead of the handlers. Values below 1 count as 1. Default 256.
    pub fn pull_batch(mut self, batch: usize) -> Self {
        self.pull_batch = batch.max(1);
        self
    }

    /// Client name shown in the server's connection list. Default `courier`.
    pub fn connection_name(mut self, name: impl Into<String>) -> Self {
        self.connection_name = name.into();
        self
    }

    /// Authenticate with a user name and password. Replaces any other credential set here.
    /// Default: none (or what the URL carries).
    pub fn user_password(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.credentials = Credentials::UserPassword { user: user.into(), password: password.into() };
        self
    }

    /// Authenticate with a token. Replaces any other credential set here. Default: none.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.credentials = Credentials::Token(token.into());
        self
    }

    /// Authenticate with a user NKey: its seed (`SU…`) signs the server's nonce, so the seed never
    /// leaves the process. Replaces any other credential set here. Default: none.
    pub fn nkey_seed(mut self, seed: impl Into<String>) -> Self {
        self.credentials = Credentials::NKeySeed(seed.into());
        self
    }

    /// Authenticate with a `.creds` file (user JWT and NKey seed, as `nsc` writes it), for servers
    /// in operator (JWT) mode. Read at connect time. Replaces any other credential set here.
    /// Default: none.
    pub fn credentials_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.credentials = Credentials::File(path.into());
        self
    }

    /// Refuse to talk to a server that does not offer TLS. A `tls://` URL, a CA file or a client
    /// certificate require TLS too. Default `false`: TLS when the server asks for it.
    pub fn require_tls(mut self, required: bool) -> Self {
        self.tls.required = required;
        self
    }

    /// Trust the certificate authority in this PEM file (a private CA) for the server's
    /// certificate, besides the built-in web roots. Default: the built-in roots only.
    pub fn tls_ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.tls.ca_file = Some(path.into());
        self
    }

    /// Present this certificate and private key (PEM files) to servers that verify clients
    /// (`verify: true` in their `tls` block). Default: none.
    pub fn tls_client_cert(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.tls.client_cert = Some((cert.into(), key.into()));
        self
    }

    /// The server URL(s) with passwords and tokens masked, for logs and error messages.
    pub fn shown_url(&self) -> String {
        crate::security::redact(&self.url)
    }

    /// The server URL(s); see [`new`](Self::new).
    pub fn get_url(&self) -> &str {
        &self.url
    }

    /// The wire format; see [`wire_mode`](Self::wire_mode).
    pub fn get_wire_mode(&self) -> WireMode {
        self.wire_mode
    }

    /// The PubAck timeout; see [`ack_timeout`](Self::ack_timeout).
    pub fn get_ack_timeout(&self) -> Duration {
        self.ack_timeout
    }

    /// Whether streams are provisioned; see [`provision`](Self::provision).
    pub fn get_provision(&self) -> bool {
        self.provision
    }

    /// The topic `topic`'s dead-lettered events go to.
    pub fn dead_letter_topic(&self, topic: &Topic) -> Result<Topic, Error> {
        Topic::new(format!("{topic}{}", self.dead_letter_suffix)).map_err(|err| {
            Error::with_source(
                ErrorKind::Config,
                format!("dead-letter suffix {:?} makes an invalid topic", self.dead_letter_suffix),
                err,
            )
        })
    }
}

/// The stream provisioned for `topic`: its name with `.` (not allowed in stream names) as `_`.
/// Two topics that differ only there (`a.b`, `a_b`) would share a name; provisioning the second
/// fails with a clear error instead of mixing them.
pub fn stream_name(topic: &Topic) -> String {
    topic.as_str().replace('.', "_")
}
