//! Types of the operator API on [`Store`](crate::Store): stats, browsing events, dead events,
//! parked aggregates, relay instances, requeue, purge. `courier outbox …` and the dashboard both
//! work through these, so there is one implementation of each operation.

use std::collections::BTreeMap;
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

/// A row's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventStatus {
    /// Waiting to be published (including a retry scheduled after a failed attempt).
    Pending,
    /// Acknowledged by the broker, kept for the retention period.
    Published,
    /// Failed for good; waits for an operator.
    Dead,
}

impl EventStatus {
    /// The value stored in the `status` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => crate::row::PENDING,
            Self::Published => crate::row::PUBLISHED,
            Self::Dead => crate::row::DEAD,
        }
    }
}

impl std::str::FromStr for EventStatus {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "pending" => Ok(Self::Pending),
            "published" => Ok(Self::Published),
            "dead" => Ok(Self::Dead),
            other => Err(format!("unknown status {other:?}: expected pending, published or dead")),
        }
    }
}

impl std::fmt::Display for EventStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Selects events for listing, and dead events for requeueing or discarding. An empty filter
/// selects all. Every field narrows the selection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
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
    /// Only events whose last error contains this text (case sensitivity follows the
    /// database's collation: sensitive on PostgreSQL, insensitive on MySQL and, for ASCII, SQLite).
    pub error_contains: Option<String>,
    /// Only events enqueued at or after this time.
    pub created_from: Option<DateTime<Utc>>,
    /// Only events enqueued before this time.
    pub created_to: Option<DateTime<Utc>>,
}

impl EventFilter {
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

    /// Narrows the filter to events whose last error contains `text`.
    pub fn error_contains(mut self, text: impl Into<String>) -> Self {
        self.error_contains = Some(text.into());
        self
    }

    /// Narrows the filter to events enqueued in `from..to` (either end open when `None`).
    pub fn created(mut self, from: Option<DateTime<Utc>>, to: Option<DateTime<Utc>>) -> Self {
        self.created_from = from;
        self.created_to = to;
        self
    }

    /// Whether the filter selects every event.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// `text` as a `LIKE` pattern matching any value that contains it, with `!` as the escape
/// character (the same in every database's string syntax, unlike a backslash).
pub(crate) fn contains_pattern(text: &str) -> String {
    let mut pattern = String::with_capacity(text.len() + 2);
    pattern.push('%');
    for c in text.chars() {
        if matches!(c, '!' | '%' | '_') {
            pattern.push('!');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// An event as listed for operators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventSummary {
    /// The row id, which [`EventFilter::ids`] selects by and pages are keyed on.
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
    /// Its status.
    pub status: EventStatus,
    /// Publish attempts made.
    pub attempts: u32,
    /// The error of the last attempt.
    pub last_error: Option<String>,
    /// When it was enqueued.
    pub created_at: DateTime<Utc>,
    /// When the relay recorded its last failed attempt: for a dead event, when it went dead.
    /// `None` if it never failed (or failed before the outbox tables had this column).
    pub last_attempt_at: Option<DateTime<Utc>>,
}

/// Every column of one event, for its detail page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventDetail {
    /// What a listing shows.
    pub summary: EventSummary,
    /// The ordering hash (`shard % partitions` picks the relay partition).
    pub shard: i64,
    /// The event's version.
    pub event_version: i64,
    /// The payload bytes, as enqueued.
    pub payload: Vec<u8>,
    /// The free-form headers; a row a foreign writer inserted may hold headers that are not a
    /// JSON object of strings, kept as text in [`headers_text`](Self::headers_text).
    pub headers: BTreeMap<String, String>,
    /// The `headers` column as stored.
    pub headers_text: String,
    /// The W3C `traceparent`, if the event carries a trace context.
    pub traceparent: Option<String>,
    /// The W3C `tracestate`.
    pub tracestate: Option<String>,
    /// The correlation id.
    pub correlation_id: Option<String>,
    /// The tenant.
    pub tenant: Option<String>,
    /// The idempotency key it was enqueued with.
    pub idempotency_key: Option<String>,
    /// When the event occurred, as its producer says.
    pub occurred_at: DateTime<Utc>,
    /// When a scheduled retry is due.
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// When the broker's ACK was recorded.
    pub published_at: Option<DateTime<Utc>>,
}

impl EventDetail {
    /// The trace id of the `traceparent` (`00-<trace id>-<span id>-<flags>`), which tracing
    /// tools search by.
    pub fn trace_id(&self) -> Option<&str> {
        self.traceparent.as_deref()?.split('-').nth(1)
    }
}

/// An aggregate whose events wait behind a dead event: the relay publishes none of its later
/// events until an operator requeues or discards the head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParkedAggregate {
    /// The dead event that blocks the aggregate (its oldest dead event).
    pub head: EventSummary,
    /// Pending events of the aggregate waiting behind it.
    pub waiting: u64,
}

/// A relay instance sharing the outbox, with the partitions it leases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayInstance {
    /// Its instance id.
    pub instance_id: String,
    /// Milliseconds until its heartbeat expires (negative once it has); `None` for an owner of
    /// leases that has no heartbeat row any more.
    pub heartbeat_left_ms: Option<i64>,
    /// `(partition, milliseconds until the lease expires)` of each partition it holds, in
    /// partition order; a negative time means the lease has expired and may be taken over.
    pub partitions: Vec<(i64, i64)>,
}

/// Joins heartbeats `(instance, ms left)` and leases `(partition, owner, ms left)` into one entry
/// per instance, in instance order: an owner without a heartbeat (it left, its leases not yet
/// taken over) is listed too.
pub(crate) fn relay_instances(
    heartbeats: Vec<(String, i64)>,
    leases: Vec<(i64, String, i64)>,
) -> Vec<RelayInstance> {
    let mut instances: BTreeMap<String, RelayInstance> = heartbeats
        .into_iter()
        .map(|(instance_id, left)| {
            let instance = RelayInstance {
                instance_id: instance_id.clone(),
                heartbeat_left_ms: Some(left),
                partitions: vec![],
            };
            (instance_id, instance)
        })
        .collect();
    for (partition, owner, left) in leases {
        instances
            .entry(owner.clone())
            .or_insert_with(|| RelayInstance {
                instance_id: owner,
                heartbeat_left_ms: None,
                partitions: vec![],
            })
            .partitions
            .push((partition, left));
    }
    instances
        .into_values()
        .map(|mut i| {
            i.partitions.sort_unstable();
            i
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_contains_pattern_escapes_like_wildcards() {
        assert_eq!(contains_pattern("timeout"), "%timeout%");
        assert_eq!(contains_pattern("50%_done!"), "%50!%!_done!!%");
        assert_eq!(contains_pattern(""), "%%");
    }

    #[test]
    fn statuses_parse_from_their_column_values_only() {
        for status in [EventStatus::Pending, EventStatus::Published, EventStatus::Dead] {
            assert_eq!(status.as_str().parse::<EventStatus>(), Ok(status));
        }
        let error = "Dead".parse::<EventStatus>().unwrap_err();
        assert!(error.contains("\"Dead\"") && error.contains("pending, published or dead"), "{error}");
    }

    #[test]
    fn relay_instances_group_leases_by_owner_and_keep_owners_without_heartbeat() {
        let instances = relay_instances(
            vec![("b".into(), 900), ("a".into(), 1000)],
            vec![(3, "a".into(), 500), (1, "a".into(), 400), (2, "gone".into(), -10)],
        );
        assert_eq!(
            instances,
            vec![
                RelayInstance {
                    instance_id: "a".into(),
                    heartbeat_left_ms: Some(1000),
                    partitions: vec![(1, 400), (3, 500)]
                },
                RelayInstance { instance_id: "b".into(), heartbeat_left_ms: Some(900), partitions: vec![] },
                RelayInstance {
                    instance_id: "gone".into(),
                    heartbeat_left_ms: None,
                    partitions: vec![(2, -10)]
                },
            ]
        );
    }

    #[test]
    fn the_trace_id_is_the_second_field_of_the_traceparent() {
        let summary = EventSummary {
            id: 1,
            event_id: String::new(),
            topic: String::new(),
            aggregate_type: String::new(),
            aggregate_id: String::new(),
            event_type: String::new(),
            status: EventStatus::Pending,
            attempts: 0,
            last_error: None,
            last_attempt_at: None,
            created_at: DateTime::default(),
        };
        let mut detail = EventDetail {
            summary,
            shard: 0,
            event_version: 1,
            payload: vec![],
            headers: BTreeMap::new(),
            headers_text: "{}".into(),
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
            tracestate: None,
            correlation_id: None,
            tenant: None,
            idempotency_key: None,
            occurred_at: DateTime::default(),
            next_attempt_at: None,
            published_at: None,
        };
        assert_eq!(detail.trace_id(), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        detail.traceparent = None;
        assert_eq!(detail.trace_id(), None);
    }
}
