//! Outbox rows: what enqueue writes and what the relay reads back.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use courier_core::{Envelope, Error, ErrorKind, EventId, Topic, TraceContext};

/// The row status values stored in the `status` column.
pub(crate) const PENDING: &str = "pending";
pub(crate) const PUBLISHED: &str = "published";
pub(crate) const DEAD: &str = "dead";

/// Microseconds since the Unix epoch, the unit of the outbox's `*_us` columns.
pub(crate) fn now_us() -> i64 {
    Utc::now().timestamp_micros()
}

/// A stable hash of the ordering key: `shard % partitions` picks the partition, so every event of
/// an aggregate belongs to the same relay lease (FNV-1a, fixed forever because it is stored).
/// The `courier_outbox_shard` SQL function computes the same value for plain SQL inserts.
pub fn shard_of(aggregate_id: &str) -> i64 {
    let hash =
        aggregate_id.bytes().fold(0x811c_9dc5_u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193));
    i64::from(hash & 0x7fff_ffff)
}

/// One row to insert; built (and validated) by [`crate::Outbox`].
#[derive(Debug, Clone)]
pub struct NewRow {
    pub(crate) event_id: String,
    pub(crate) topic: String,
    pub(crate) aggregate_type: String,
    pub(crate) aggregate_id: String,
    pub(crate) shard: i64,
    pub(crate) event_type: String,
    pub(crate) event_version: i64,
    pub(crate) payload: Vec<u8>,
    pub(crate) headers: String,
    pub(crate) traceparent: Option<String>,
    pub(crate) tracestate: Option<String>,
    pub(crate) correlation_id: Option<String>,
    pub(crate) tenant: Option<String>,
    pub(crate) occurred_at_us: i64,
    pub(crate) created_at_us: i64,
    pub(crate) idempotency_key: Option<String>,
}

impl NewRow {
    pub(crate) fn new(topic: &Topic, envelope: &Envelope, idempotency_key: Option<String>) -> Self {
        Self {
            event_id: envelope.event_id().to_string(),
            topic: topic.as_str().to_owned(),
            aggregate_type: envelope.aggregate_type().to_owned(),
            aggregate_id: envelope.aggregate_id().to_owned(),
            shard: shard_of(envelope.aggregate_id()),
            event_type: envelope.event_type().to_owned(),
            event_version: envelope.event_version(),
            payload: envelope.payload().to_vec(),
            headers: serde_json::to_string(envelope.headers()).expect("string map serializes"),
            traceparent: envelope.trace().map(|t| t.traceparent().to_owned()),
            tracestate: envelope.trace().and_then(|t| t.tracestate()).map(str::to_owned),
            correlation_id: envelope.correlation_id().map(str::to_owned),
            tenant: envelope.tenant().map(str::to_owned),
            occurred_at_us: envelope.timestamp().timestamp_micros(),
            created_at_us: now_us(),
            idempotency_key,
        }
    }
}

/// The columns the relay reads from `courier_outbox o`, in the order [`ClaimedRow`] decodes them;
/// `previous_pending_id` follows from [`previous_pending`].
pub(crate) const CLAIM_COLUMNS: &str =
    "id, event_id, topic, aggregate_type, aggregate_id, shard, event_type, \
     event_version, payload, headers, traceparent, tracestate, correlation_id, tenant, occurred_at_us, \
     created_at_us, attempts";

/// The claimed row's `previous_pending_id` column, reading `courier_outbox p` with `hint` (an
/// index hint, or empty): one step back on the pending-aggregate index.
pub(crate) fn previous_pending(hint: &str) -> String {
    format!(
        "(SELECT p.id FROM courier_outbox p{hint} \
         WHERE p.aggregate_id = o.aggregate_id AND p.status = 'pending' AND p.id < o.id \
         ORDER BY p.id DESC LIMIT 1) AS previous_pending_id"
    )
}

/// A pending row claimed by the relay.
pub(crate) struct ClaimedRow {
    pub(crate) id: i64,
    pub(crate) shard: i64,
    pub(crate) aggregate_id: Arc<str>,
    pub(crate) attempts: i64,
    pub(crate) created_at_us: i64,
    /// The aggregate's pending row just before this one when it was read, if any.
    pub(crate) previous_pending_id: Option<i64>,
    /// The event to publish, or why the row cannot be turned into one (it then goes dead).
    pub(crate) event: Result<(Topic, Envelope), Error>,
}

/// The raw column values of a claimed row, decoded by each database module.
pub(crate) struct RawRow {
    pub(crate) id: i64,
    pub(crate) event_id: String,
    pub(crate) topic: String,
    pub(crate) aggregate_type: String,
    pub(crate) aggregate_id: String,
    pub(crate) shard: i64,
    pub(crate) event_type: String,
    pub(crate) event_version: i64,
    pub(crate) payload: Vec<u8>,
    pub(crate) headers: String,
    pub(crate) traceparent: Option<String>,
    pub(crate) tracestate: Option<String>,
    pub(crate) correlation_id: Option<String>,
    pub(crate) tenant: Option<String>,
    pub(crate) occurred_at_us: i64,
    pub(crate) created_at_us: i64,
    pub(crate) attempts: i64,
    pub(crate) previous_pending_id: Option<i64>,
}

impl RawRow {
    pub(crate) fn into_claimed(self) -> ClaimedRow {
        let aggregate_id: Arc<str> = self.aggregate_id.as_str().into();
        let (id, shard, attempts, created_at_us, previous_pending_id) =
            (self.id, self.shard, self.attempts, self.created_at_us, self.previous_pending_id);
        let event = self.into_event().map_err(|reason| {
            Error::new(ErrorKind::InvalidInput, format!("outbox row {id} cannot be published: {reason}"))
        });
        ClaimedRow { id, shard, aggregate_id, attempts, created_at_us, previous_pending_id, event }
    }

    fn into_event(self) -> Result<(Topic, Envelope), String> {
        let topic = Topic::new(self.topic).map_err(|e| e.to_string())?;
        let event_id: EventId = self.event_id.parse().map_err(|e| format!("invalid event_id: {e}"))?;
        let headers: BTreeMap<String, String> =
            serde_json::from_str(&self.headers).map_err(|e| format!("invalid headers JSON: {e}"))?;
        let timestamp = DateTime::<Utc>::from_timestamp_micros(self.occurred_at_us)
            .ok_or_else(|| format!("occurred_at_us {} is out of range", self.occurred_at_us))?;
        let mut builder = Envelope::builder(self.aggregate_type, self.aggregate_id, self.event_type)
            .event_id(event_id)
            .event_version(self.event_version)
            .payload(self.payload)
            .timestamp(timestamp);
        if let Some(traceparent) = self.traceparent {
            builder =
                builder.trace(TraceContext::new(traceparent, self.tracestate).map_err(|e| e.to_string())?);
        }
        if let Some(id) = self.correlation_id {
            builder = builder.correlation_id(id);
        }
        if let Some(tenant) = self.tenant {
            builder = builder.tenant(tenant);
        }
        for (name, value) in headers {
            builder = builder.header(name, value);
        }
        Ok((topic, builder.rebuild().map_err(|e| e.to_string())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip_to_the_same_envelope() {
        let envelope = Envelope::builder("order", "order-1", "OrderPlaced")
            .payload("{}")
            .correlation_id("c-1")
            .tenant("acme")
            .header("k", "v")
            .trace(
                TraceContext::new("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", None).unwrap(),
            )
            .build()
            .unwrap();
        let topic = Topic::new("orders").unwrap();
        let row = NewRow::new(&topic, &envelope, None);
        let raw = RawRow {
            id: 7,
            event_id: row.event_id,
            topic: row.topic,
            aggregate_type: row.aggregate_type,
            aggregate_id: row.aggregate_id,
            shard: row.shard,
            event_type: row.event_type,
            event_version: row.event_version,
            payload: row.payload,
            headers: row.headers,
            traceparent: row.traceparent,
            tracestate: row.tracestate,
            correlation_id: row.correlation_id,
            tenant: row.tenant,
            occurred_at_us: row.occurred_at_us,
            created_at_us: row.created_at_us,
            attempts: 0,
            previous_pending_id: Some(7),
        };
        let (read_topic, read) = raw.into_claimed().event.unwrap();
        assert_eq!(read_topic, topic);
        // Stored with microsecond precision.
        let expected = envelope.clone().into_builder().timestamp(read.timestamp()).build().unwrap();
        assert_eq!(read, expected);
        assert_eq!(read.timestamp().timestamp_micros(), envelope.timestamp().timestamp_micros());
    }

    #[test]
    fn shards_are_stable_and_non_negative() {
        assert_eq!(shard_of("order-1"), shard_of("order-1"));
        assert!((0..1000).all(|i| shard_of(&format!("a-{i}")) >= 0));
    }
}
