//! Courier's NATS JetStream backend.
//!
//! * **Publishing**: every event is a JetStream publish whose `Nats-Msg-Id` header is the event
//!   id, so the server drops re-publishes within the stream's duplicate window and answers them
//!   with `duplicate: true` and the original sequence. A dead-letter copy has its own id,
//!   `dlq:<dead-letter topic>:<event id>`, so it is stored even when one stream holds both the
//!   topic and its dead-letter subject. Envelope metadata travels as CloudEvents
//!   `ce-*` headers with the payload as the body, or, in [`WireMode::JsonEnvelope`], as the
//!   reference system's JSON envelope. One task per publisher awaits all PubAcks; each accepted
//!   event gets exactly one result: [`Position::Stream`] with the duplicate flag, or an error
//!   whose kind says whether to retry (no PubAck within the ack timeout: `Timeout`; no stream
//!   answering for the subject, the server's "no responders" or a JetStream 503 such as a stream
//!   without a leader: `Unavailable`, retryable because the stream may yet be provisioned or
//!   elected; larger than the server's or the stream's maximum: `PayloadTooLarge`; other
//!   refusals a retry cannot fix: `Rejected`; lost connection: `Connection`). Oversized events
//!   are refused before they reach the server, which would otherwise close the whole
//!   connection.
//! * **Streams**: [`Bus::provision`] creates one stream per topic (subject = topic name, stream
//!   name = topic with `.` as `_`) from [`TopicConfig`] and [`NatsConfig`] (storage, retention,
//!   max age/bytes/messages, duplicate window, replicas; `partitions` has no JetStream meaning and
//!   is ignored), or only checks that some stream holds the subject when provisioning is off.
//! * **Subscribing**: a durable pull consumer per (topic, group) with explicit acks, sent only
//!   after the handler succeeded, and `+WPI` (in progress) three times per `ack_wait` for every
//!   message handed out and not yet acknowledged, so one queued behind a slow event of its
//!   aggregate is not redelivered; see [`subscribe`] for messages that cannot be
//!   handed out. Dead-lettered events go to [`NatsBus::dead_letter`]'s topic by default.
//!   Consumers are never deleted, so a restarted subscriber resumes after its last ACK.
//! * **Security**: TLS with a private CA ([`NatsConfig::tls_ca_file`]) and client certificates
//!   ([`NatsConfig::tls_client_cert`]); user and password (also `nats://user:password@host` in the
//!   URL), token, NKey seed or `.creds` file. A refused credential or an untrusted server
//!   certificate fails the connect at once with an [`ErrorKind::Config`] error that says so; no
//!   secret appears in errors or in [`NatsConfig`]'s `Debug`.
//! * **Reconnect**: the client reconnects forever. Publishes made while disconnected wait in the
//!   client queue; every in-flight event still gets a verdict: its PubAck, or a retryable
//!   `Timeout`/`Connection` error, after which a re-publish is safe thanks to de-duplication.
//!
//! # What a JetStream ACK guarantees
//! A PubAck means the stream leader stored the message and, with `replicas > 1`, a majority of
//! replicas did too (JetStream uses RAFT). With file storage the server acknowledges **before
//! fsync**: the data is handed to the OS and fsynced every `sync_interval` (server option, default
//! 2 minutes). A crash of the nats-server process loses no acknowledged event (the restart test
//! kills the server with SIGKILL mid-stream), but an OS crash or power loss of a single server can
//! lose up to `sync_interval` of them, and with replicas only a simultaneous loss of a majority
//! (e.g. a power cut of the whole cluster) can. Set `sync_interval: always` in the server's
//! `jetstream` block when that matters, at a large throughput cost. Memory storage loses
//! everything when the server stops. The stream's duplicate window (default 2 minutes) bounds how
//! late a re-publish is still recognised as a duplicate.
//!
//! ```no_run
//! use courier_core::{Bus, Envelope, PublisherConfig, Topic, TopicConfig};
//! use courier_nats::{NatsBus, NatsConfig};
//!
//! # async fn run() -> Result<(), courier_core::Error> {
//! let bus = NatsBus::connect(NatsConfig::new("nats://127.0.0.1:4222")).await?;
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
//!
//! [`WireMode::JsonEnvelope`]: courier_core::wire::WireMode::JsonEnvelope
//! [`ErrorKind::Config`]: courier_core::ErrorKind::Config
//! [`Position::Stream`]: courier_core::Position::Stream
//! [`Bus::provision`]: courier_core::Bus::provision
//! [`TopicConfig`]: courier_core::TopicConfig

#![warn(missing_docs)]

mod bus;
mod config;
mod in_progress;
mod poison;
mod publish;
mod read;
mod security;
mod streams;
pub mod subscribe;

pub use bus::NatsBus;

/// Header of the dead-letter copy of a message whose header block async-nats cannot parse (not
/// UTF-8, an invalid header name): that block as text, bytes outside printable ASCII escaped
/// (`\xe9`, `\r\n`).
pub const DEAD_LETTER_HEADERS_HEADER: &str = "courier-dead-letter-headers";
pub use config::{stream_name, NatsConfig, Retention, Storage};
pub use publish::NatsTransport;
pub use subscribe::NatsDelivery;
