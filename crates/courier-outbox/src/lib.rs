//! Courier's transactional outbox: events are written to an outbox table in the same database
//! transaction as the business change ([`Outbox::enqueue`]), and a [`Relay`] publishes them to a
//! [`courier_core::Bus`], marking a row published only once the broker acknowledged it.
//!
//! Databases (one cargo feature each): PostgreSQL (`postgres`), MySQL 8 / MariaDB ≥ 10.6
//! (`mysql`) and SQLite (`sqlite`). [`Store`] holds a pool to one of them and carries the
//! migrations ([`Store::migrate`]) and the operator API: [`Store::stats`],
//! [`Store::list_dead`], [`Store::list_events`], [`Store::event`], [`Store::parked`],
//! [`Store::relay_instances`], [`Store::requeue`], [`Store::discard_dead`],
//! [`Store::purge_published`].
//!
//! Consumers: an [`Inbox`] records in the handler's own transaction which events a consumer has
//! processed, so that a redelivered event changes nothing ([`Inbox::handler`] wraps a dispatch
//! handler in one line); [`Store::purge_inbox`] deletes rows past their retention.
//!
//! Row lifecycle: `pending` → `published` (ACK received); a failed ACK or NACK counts as an
//! attempt and schedules a retry with exponential backoff and jitter; after
//! [`RelayConfig::max_attempts`], or at once for a non-retryable error, the row is `dead`.
//! See [`relay`] for ordering and multi-relay guarantees, and the `testing` module (feature
//! `testing`) for proving that a consumer copes with a relay crashing between ACK and mark.

#![warn(missing_docs)]
// Without a database feature there is no backend: the crate builds (e.g. for documentation) but
// every database operation is unreachable.
#![cfg_attr(not(any(feature = "postgres", feature = "mysql", feature = "sqlite")), allow(unused))]

mod admin;
mod enqueue;
mod error;
mod inbox;
pub mod relay;
mod row;
mod sql;
mod store;
#[cfg(feature = "testing")]
pub mod testing;

pub use admin::{
    Backlog, EventDetail, EventFilter, EventStatus, EventSummary, OutboxStats, ParkedAggregate, RelayInstance,
};
pub use enqueue::{Enqueue, Outbox, TopicMapper};
pub use error::OutboxError;
pub use inbox::{Inbox, InboxConnection, InboxHandler, InboxPool, Recorded};
pub use relay::{AckedEvent, FailedEvent, Relay, RelayConfig, RelayHandle, RelayObserver, RelayStats};
/// Public for the tests comparing it with the databases' `courier_outbox_shard`.
#[doc(hidden)]
pub use row::shard_of;
pub use sql::OutboxConnection;
pub use store::{Store, StoreTransaction};
