//! Courier core: the event model, two-stage publishing with per-event ACKs, the subscriber
//! dispatch engine shared by every backend, and the in-memory bus.
//!
//! ```
//! use courier_core::{Bus, Envelope, MemoryBus, PublisherConfig, Topic};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), courier_core::Error> {
//! let bus = MemoryBus::default();
//! let publisher = bus.publisher(PublisherConfig::default());
//! let topic = Topic::new("orders")?;
//! let event = Envelope::builder("order", "order-42", "OrderPlaced")
//!     .payload(r#"{"total":42}"#)
//!     .build()?;
//! let ack = publisher.publish(&topic, event).await?; // accepted
//! let receipt = ack.await?; // the broker's verdict
//! assert!(!receipt.duplicate);
//! publisher.close().await?;
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

mod backoff;
mod bus;
pub mod dispatch;
mod envelope;
mod error;
mod event_id;
pub mod memory;
mod offsets;
mod publish;
mod read;
mod redact;
pub mod wire;

pub use backoff::Backoff;
pub use bus::{
    bounded_header_value, Bus, DeadLetterTopic, TopicConfig, DEAD_LETTER_ATTEMPTS_HEADER,
    DEAD_LETTER_ERROR_HEADER, DEAD_LETTER_POSITION_HEADER, DEAD_LETTER_REASON_HEADER,
    MAX_DEAD_LETTER_REASON_LEN,
};
pub use envelope::{
    is_reserved_header, Envelope, EnvelopeBuilder, Topic, TraceContext, DEFAULT_MAX_PAYLOAD,
    MAX_AGGREGATE_ID_LEN, MAX_TOPIC_LEN, RESERVED_HEADER_PREFIXES,
};
pub use error::{Error, ErrorKind, HandlerError, ValidationError};
pub use event_id::{EventId, EventIdHasher, EventIdMap};
pub use memory::{MemoryBus, MemoryConfig};
pub use offsets::OffsetTracker;
pub use publish::{
    Ack, Completion, Position, PublishResult, Publisher, PublisherConfig, Receipt, Results, Transport,
};
pub use read::{Message, ReadOptions, Reader, StartAt, Undecodable};
pub use redact::{is_secret_setting, redact_url};
