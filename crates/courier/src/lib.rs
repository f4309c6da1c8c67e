//! Courier: publish domain events to NATS JetStream, Kafka or an in-memory bus through one API,
//! with a per-event broker acknowledgement, and relay them from a transactional outbox.
//!
//! This facade re-exports the crates behind features, in the manner of sqlx: the core (event
//! model, publisher, subscriber dispatch, memory bus) is always present; `nats`, `kafka` and
//! `outbox` (with `postgres`, `mysql`, `sqlite` for its databases) add the rest, and `testing` the
//! outbox's crash-consistency test helpers (for dev-dependencies).

#![warn(missing_docs)]

pub use courier_core::*;

/// NATS JetStream backend (feature `nats`).
#[cfg(feature = "nats")]
pub use courier_nats as nats;

/// Kafka backend on librdkafka (feature `kafka`).
#[cfg(feature = "kafka")]
pub use courier_kafka as kafka;

/// Transactional outbox and relay (feature `outbox`; databases by `postgres`, `mysql`, `sqlite`).
#[cfg(feature = "outbox")]
pub use courier_outbox as outbox;

/// The README's examples, compiled as doc tests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeExamples;
