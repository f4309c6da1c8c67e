//! Types of the operator API on [`Store`](crate::Store): stats, dead events, requeue, purge.

use std::time::Duration;

use chrono::{DateTime, Utc};

/// Row counts by status and the age of the oldest pending event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboxStats {
    /// Events waiting to be published (including those waiting for a retry).
    pub pending: u64,
    /// Published events kept for the retention period.
    pub published: u64,
    /// Events that failed for good, waiting for an operator to requeue or discard them.
    pub dead: u64,
    /// How long the oldest pending event has waited since it was enqueued; `None` when nothing
    /// is pending.
    pub oldest_pending_age: Option<Duration>,
}

/// The pending backlog, as the relay's gauges read it every few seconds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Backlog {
    /// Events waiting to be published (including those waiting for a retry).
    pub pending: u64,
    /// How long the oldest pending event (the lowest id) has waited since it was enqueued;
    /// `None` when nothing is pending.
    pub oldest_pending_age: Option<Duration>,
}

/// Selects dead events for listing, requeueing or discarding. An empty filter selects all.
#[derive(Debug, Clone, Default)]
pub struct DeadFilter {
    /// Row ids (the outbox's `id` column); empty means any.
    pub ids: Vec<i64>,
    /// Only events for this topic.
    pub topic: Option<String>,
    /// Only events of this aggregate type.
    pub aggregate_type: Option<String>,
    /// Only events of this aggregate.
    pub aggregate_id: Option<String>,
    /// Only events of this type.
    pub event_type: Option<String>,
}

impl DeadFilter {
    /// Every dead event.
    pub fn all() -> Self {
        Self::default()
    }

    /// The dead events with these row ids.
    pub fn ids(ids: impl IntoIterator<Item = i64>) -> Self {
        Self { ids: ids.into_iter().collect(), ..Self::default() }
    }

    /// Narrows the filter to events for `topic`.
    pub fn topic(mut self, topic: impl Into<String>) -> Self {
        self.topic = Some(topic.into());
        self
    }

    /// Narrows the filter to events of `aggregate_type`.
    pub fn aggregate_type(mut self, aggregate_type: impl Into<String>) -> Self {
        self.aggregate_type = Some(aggregate_type.into());
        self
    }

    /// Narrows the filter to events of the aggregate `aggregate_id`.
    pub fn aggregate_id(mut self, aggregate_id: impl Into<String>) -> Self {
        self.aggregate_id = Some(aggregate_id.into());
        self
    }

    /// Narrows the filter to events of `event_type`.
    pub fn event_type(mut self, event_type: impl Into<String>) -> Self {
        self.event_type = Some(event_type.into());
        self
    }
}

/// A dead event as listed for operators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadEvent {
    /// The row id, which [`DeadFilter::ids`] selects by.
    pub id: i64,
    /// The event's id, as stored (text).
    pub event_id: String,
    /// The topic it was to be published to.
    pub topic: String,
    /// Its aggregate type.
    pub aggregate_type: String,
    /// Its aggregate, whose later events wait while the relay parks dead events.
    pub aggregate_id: String,
    /// Its event type.
    pub event_type: String,
    /// Publish attempts made.
    pub attempts: u32,
    /// The error of the last attempt.
    pub last_error: Option<String>,
    /// When it was enqueued.
    pub created_at: DateTime<Utc>,
}
