//! Messages as the reference system (the Go SDK whose JSON envelope
//! [`WireMode::JsonEnvelope`](courier_core::wire::WireMode::JsonEnvelope) speaks) puts them on
//! the wire, written by hand from its `eventbus.Envelope` struct as Go's `encoding/json` (and
//! the compatible `jsoniter` configuration it uses) writes it: fields in declaration order,
//! `omitempty` fields left out, `time.Time` in RFC 3339 with nanoseconds and the writer's offset.
//! Courier's unit tests decode them, and the interop tests have independent clients publish them.

use courier_core::wire::{ORIGINAL_EVENT_ID_HEADER, TRACE_ID_HEADER};
use courier_core::Envelope;

/// `eventbus.Envelope` today (`TenantID int`, `Payload json.RawMessage`: the payload embedded as
/// JSON), as its NATS publisher sends it: this document alone, no headers.
pub const REFERENCE: &str = r#"{"event_id":"019c4a3e-8f1a-7b2c-9d3e-4f5a6b7c8d9e","aggregate_id":"order-7","event_type":"OrderPlaced","event_version":3,"timestamp":"2026-02-10T06:02:29.123456789+08:00","trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","correlation_id":"corr-1","tenant_id":42,"payload":{"total":7,"items":["a","b"]}}"#;

/// The headers its Kafka publisher adds to [`REFERENCE`] (the record key is the aggregate id).
pub const REFERENCE_KAFKA_HEADERS: &[(&str, &str)] = &[
    ("X-Event-ID", "019c4a3e-8f1a-7b2c-9d3e-4f5a6b7c8d9e"),
    ("X-Aggregate-ID", "order-7"),
    ("X-Event-Version", "3"),
    ("X-Event-Type", "OrderPlaced"),
    ("X-Trace-ID", "4bf92f3577b34da6a3ce929d0e0e4736"),
    ("X-Correlation-ID", "corr-1"),
    ("X-Tenant-ID", "42"),
];

/// The outbox adapter's variant (`Payload []byte`, so base64) with the earlier `TenantID string`
/// and an id in the reference's old `aggregate:type:version:nanos` form; no trace or correlation.
pub const OUTBOX_VARIANT: &str = r#"{"event_id":"order-8:OrderPlaced:1:1707516149000000000","aggregate_id":"order-8","event_type":"OrderPlaced","event_version":1,"timestamp":"2026-02-10T06:02:29+08:00","tenant_id":"acme","payload":"eyJ0b3RhbCI6N30="}"#;

/// The trace id [`REFERENCE`] carries.
pub const REFERENCE_TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// Panics unless `e` is what [`REFERENCE`] says, with or without its Kafka headers.
pub fn assert_is_reference(e: &Envelope) {
    assert_eq!(e.event_id().to_string(), "019c4a3e-8f1a-7b2c-9d3e-4f5a6b7c8d9e");
    assert_eq!((e.aggregate_id(), e.event_type(), e.event_version()), ("order-7", "OrderPlaced", 3));
    assert_eq!(e.timestamp().to_rfc3339(), "2026-02-09T22:02:29.123456789+00:00");
    assert_eq!(e.payload().as_ref(), br#"{"total":7,"items":["a","b"]}"#, "the embedded JSON, byte for byte");
    assert_eq!(e.tenant(), Some("42"));
    assert_eq!(e.correlation_id(), Some("corr-1"));
    assert_eq!(e.trace(), None, "a trace id alone is not a W3C trace context");
    assert_eq!(e.headers()[TRACE_ID_HEADER], REFERENCE_TRACE_ID);
    assert_eq!(e.headers().len(), 1, "no other headers: {:?}", e.headers());
}

/// Panics unless `e` is what [`OUTBOX_VARIANT`] says.
pub fn assert_is_outbox_variant(e: &Envelope) {
    assert_eq!((e.aggregate_id(), e.event_type(), e.event_version()), ("order-8", "OrderPlaced", 1));
    assert_eq!(e.payload().as_ref(), br#"{"total":7}"#, "the base64 payload, decoded");
    assert_eq!(e.tenant(), Some("acme"));
    assert_eq!(e.correlation_id(), None);
    assert_eq!(e.headers()[ORIGINAL_EVENT_ID_HEADER], "order-8:OrderPlaced:1:1707516149000000000");
    assert_eq!(e.headers().len(), 1, "no other headers: {:?}", e.headers());
}
