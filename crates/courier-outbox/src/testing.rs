//! Crash-consistency testing (feature `testing`): stop a relay between "the broker acknowledged
//! the event" and "its row is marked published", to prove that what consumes the events copes.
//!
//! The relay marks a row published only after the broker's ACK, so a relay that dies in
//! between leaves rows pending whose events the broker already has. The relay that takes over
//! publishes them again: NATS JetStream and the memory bus recognise the event id within their
//! duplicate window and acknowledge the re-publish as a duplicate, storing nothing; Kafka stores
//! a second copy, which its consumers receive. No event is lost, and every consumer must be
//! ready for one it has seen before.
//!
//! A [`MarkGate`] holds the relay's outcome writes while it is held; aborting the relay then
//! ([`RelayHandle::abort`](crate::RelayHandle::abort)) is that crash, reproducibly. Together
//! with the memory bus's injected broker faults
//! ([`MemoryBus::inject`](courier_core::MemoryBus::inject) with a
//! [`Fault`](courier_core::memory::Fault)), a test plays the failures a consumer meets in
//! production in milliseconds.
//!
//! The feature adds this module and [`Relay::mark_gate`](crate::Relay::mark_gate); enable it
//! in `[dev-dependencies]` only, so that production builds carry no hook:
//!
//! ```toml
//! [dev-dependencies]
//! courier-outbox = { version = "*", features = ["postgres", "testing"] }
//! ```
//!
//! # Example: a consumer that sees every event again
//! The relay crashes after the broker acknowledged every event and before any row was marked.
//! The relay that starts next publishes them all again, and the bus delivers each a second time
//! (as Kafka would, here with [`Fault::DuplicateDelivery`](courier_core::memory::Fault)). The
//! consumer under test must apply each event once.
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use courier_core::memory::Fault;
//! use courier_core::{Envelope, MemoryBus, Topic};
//! use courier_outbox::testing::MarkGate;
//! use courier_outbox::{Enqueue, Outbox, Relay, RelayConfig, Store};
//!
//! # async fn consume_payments(_: MemoryBus, _: Topic) {}
//! # async fn payments_taken_once() -> bool { true }
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let store = Store::connect("sqlite://crash-test.db?mode=rwc").await?;
//! store.migrate().await?;
//! let (bus, topic) = (MemoryBus::default(), Topic::new("payments")?);
//! tokio::spawn(consume_payments(bus.clone(), topic.clone())); // the consumer under test
//!
//! let events: Vec<Envelope> = (0..10)
//!     .map(|n| Envelope::builder("payment", format!("payment-{n}"), "PaymentTaken").build())
//!     .collect::<Result<_, _>>()?;
//! let rows: Vec<Enqueue<'_>> = events.iter().map(|e| Enqueue::new(e).topic(&topic)).collect();
//! store.enqueue(&Outbox::default(), &rows).await?;
//!
//! // A short lease, so that the next relay takes the crashed one's partitions over quickly.
//! let config = RelayConfig::default().lease_ttl(Duration::from_secs(1));
//! let gate = MarkGate::held();
//! let relay = Relay::new(store.clone(), bus.clone(), config.clone()).mark_gate(&gate).start();
//! while relay.stats().published < 10 {
//!     tokio::time::sleep(Duration::from_millis(10)).await; // until the broker has them all
//! }
//! relay.abort(); // the crash: acknowledged, never marked
//! assert_eq!(store.stats().await?.pending, 10);
//!
//! bus.inject(Fault::DuplicateDelivery, 10); // the re-publishes reach the consumer again
//! let relay = Relay::new(store.clone(), bus.clone(), config).start();
//! while store.stats().await?.pending > 0 {
//!     tokio::time::sleep(Duration::from_millis(10)).await;
//! }
//! relay.shutdown().await?;
//! assert_eq!(bus.events(&topic).len(), 20); // every event was delivered twice,
//! assert!(payments_taken_once().await); // and the consumer applied each once
//! # Ok(())
//! # }
//! ```

use std::sync::Arc;

use tokio::sync::watch;

/// Holds a relay's outcome writes (the marks of acknowledged rows and the records of failed
/// attempts) while it is held, so a test can stop the relay between the broker's ACK and the
/// row's mark. Give it to a relay with [`Relay::mark_gate`](crate::Relay::mark_gate). Cheap to
/// clone; clones are one gate.
///
/// While held, acknowledged events pile up in the relay's memory (one write's worth waits at
/// the gate) and [`RelayHandle::stats`](crate::RelayHandle::stats) counts them as published.
/// A graceful shutdown waits for the gate up to the relay's drain timeout.
#[derive(Debug, Clone)]
pub struct MarkGate {
    held: Arc<watch::Sender<bool>>,
}

impl MarkGate {
    /// A gate that holds every write until [`release`](Self::release).
    pub fn held() -> Self {
        Self { held: Arc::new(watch::Sender::new(true)) }
    }

    /// A gate that lets writes pass until [`hold`](Self::hold).
    pub fn open() -> Self {
        Self { held: Arc::new(watch::Sender::new(false)) }
    }

    /// Holds the writes that start from now on; one already in progress completes.
    pub fn hold(&self) {
        self.held.send_replace(true);
    }

    /// Lets the held writes and every later one through.
    pub fn release(&self) {
        self.held.send_replace(false);
    }

    /// Whether writes are held.
    pub fn is_held(&self) -> bool {
        *self.held.borrow()
    }

    /// Waits while the gate is held.
    pub(crate) async fn pass(&self) {
        let mut held = self.held.subscribe();
        // The sender lives in `self`, so the wait ends only by a release.
        let _ = held.wait_for(|held| !held).await;
    }
}
