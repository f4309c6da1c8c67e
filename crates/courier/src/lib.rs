//! Courier: publish domain events to NATS JetStream, Kafka or an in-memory bus through one API,
//! with a per-event broker acknowledgement, and relay them from a transactional outbox.
//!
//! This facade re-exports the crates behind features, in the manner of sqlx: the core (event
//! model, publisher, subscriber dispatch, memory bus) is always present.

pub use courier_core::*;

/// The README's examples, compiled as doc tests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeExamples;
