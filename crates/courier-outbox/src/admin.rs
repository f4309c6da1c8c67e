//! Types of the operator API on [`Store`](crate::Store): stats, dead events, requeue, purge.

use std::time::Duration;

use chrono::{DateTime, Utc};

/// Row counts by status and the age of the oldest pending event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboxStats {
    pub pending: u64,
    pub published: u64,
    pub dead: u64,
    /// How long the oldest pending event has waited since it was enqueued; `None` when nothing
    /// is pending.
    pub oldest_pending_age: Option<Duration>,
}

/// Selects dead events for listing, requeueing or discarding. An empty filter selects all.
#[derive(Debug, Clone, Default)]
pub struct DeadFilter {
    /// Row ids (the outbox's `id` column); empty means any.
    pub ids: Vec<i64>,
    pub topic: Option<String>,
    pub aggregate_type: Option<String>,
    pub aggregate_id: Option<String>,
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

    pub fn topic(mut self, topic: impl Into<String>) -> Self {
        self.topic = Some(topic.into());
        self
    }

    pub fn aggregate_type(mut self, aggregate_type: impl Into<String>) -> Self {
        self.aggregate_type = Some(aggregate_type.into());
        self
    }

    pub fn aggregate_id(mut self, aggregate_id: impl Into<String>) -> Self {
        self.aggregate_id = Some(aggregate_id.into());
        self
    }

    pub fn event_type(mut self, event_type: impl Into<String>) -> Self {
        self.event_type = Some(event_type.into());
        self
    }
}

/// A dead event as listed for operators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadEvent {
    pub id: i64,
    pub event_id: String,
    pub topic: String,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub event_type: String,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
}
