//! The reference system's JSON envelope (its Go `eventbus.Envelope`), which
//! [`WireMode::JsonEnvelope`](super::WireMode::JsonEnvelope) reads and writes.
//!
//! - `payload` is a `json.RawMessage` in the reference, so a JSON payload is embedded as JSON;
//!   its outbox adapter's variant is a `[]byte`, which Go writes as a base64 string. Reading takes
//!   an embedded value as the payload text, byte for byte, and a string as base64 when it decodes
//!   as base64 (else as the embedded JSON string). Writing embeds a payload that is exactly one
//!   JSON value other than a string, and writes any other payload (not JSON, surrounded by
//!   whitespace, a JSON string, empty) in base64, which the reference decoder also accepts (its
//!   `RawMessage` then holds a JSON string): every payload reads back byte for byte.
//! - `tenant_id` was a string in the reference and is an `int` since February 2026. Reading
//!   accepts both; writing gives a tenant that is a decimal integer as a JSON number (what the
//!   current reference decodes) and any other tenant as a string. It is the envelope's
//!   [`tenant`](crate::Envelope::tenant), which CloudEvents mode carries as `ce-tenant`/`ce_tenant`.
//! - `trace_id` is the W3C trace id when the event has a trace context. A `trace_id` read without
//!   a `traceparent` header is not a full context: it is kept in [`TRACE_ID_HEADER`].
//! - On Kafka the reference mirrors the metadata in `X-*` headers; on NATS it sends the document
//!   alone. The document's fields win; headers fill in what it lacks.

use std::fmt;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

use super::{
    is_broker_header, malformed, HeaderSink, ORIGINAL_EVENT_ID_HEADER, TRACE_ID_HEADER, X_AGGREGATE_ID,
    X_AGGREGATE_TYPE, X_CORRELATION_ID, X_EVENT_ID, X_EVENT_TYPE, X_EVENT_VERSION, X_TENANT_ID, X_TRACE_ID,
};
use crate::{Envelope, Error, EventId, TraceContext};

/// The W3C header Courier adds in this mode, so a Courier consumer gets the whole trace context.
const TRACEPARENT: &str = "traceparent";

/// The document as the reference writes it: its Go struct's fields, in its order.
#[derive(Serialize)]
struct Outgoing<'a> {
    event_id: &'a str,
    aggregate_id: &'a str,
    event_type: &'a str,
    event_version: i64,
    timestamp: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    trace_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    correlation_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tenant_id: Option<TenantId<'a>>,
    payload: Payload<'a>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum TenantId<'a> {
    Number(i64),
    Text(&'a str),
}

#[derive(Serialize)]
#[serde(untagged)]
enum Payload<'a> {
    Embedded(&'a RawValue),
    Base64(String),
}

/// The document as read: either reference variant, with `tenant_id` as a string or an integer.
#[derive(Deserialize)]
struct Incoming<'a> {
    event_id: String,
    aggregate_id: String,
    event_type: String,
    event_version: i64,
    timestamp: DateTime<Utc>,
    #[serde(default)]
    trace_id: Option<String>,
    #[serde(default)]
    correlation_id: Option<String>,
    #[serde(default, deserialize_with = "tenant_id")]
    tenant_id: Option<String>,
    #[serde(borrow)]
    payload: &'a RawValue,
}

/// Writes `envelope` as the reference document plus its `X-*` headers; `event_id` and `version`
/// are the envelope's, already formatted by the caller.
pub(super) fn encode(
    envelope: &Envelope,
    event_id: &str,
    version: &str,
    sink: &mut impl HeaderSink,
) -> Bytes {
    let trace_id = match envelope.trace() {
        Some(trace) => Some(trace.trace_id()),
        None => envelope.headers().get(TRACE_ID_HEADER).map(String::as_str),
    };
    sink.put_static(X_EVENT_ID, event_id);
    sink.put_static(X_AGGREGATE_ID, envelope.aggregate_id());
    sink.put_static(X_EVENT_TYPE, envelope.event_type());
    sink.put_static(X_EVENT_VERSION, version);
    sink.put_static(X_AGGREGATE_TYPE, envelope.aggregate_type());
    if let Some(trace) = envelope.trace() {
        sink.put_static(TRACEPARENT, trace.traceparent());
    }
    if let Some(id) = trace_id {
        sink.put_static(X_TRACE_ID, id);
    }
    if let Some(id) = envelope.correlation_id() {
        sink.put_static(X_CORRELATION_ID, id);
    }
    if let Some(tenant) = envelope.tenant() {
        sink.put_static(X_TENANT_ID, tenant);
    }
    let document = Outgoing {
        event_id,
        aggregate_id: envelope.aggregate_id(),
        event_type: envelope.event_type(),
        event_version: envelope.event_version(),
        timestamp: envelope.timestamp(),
        trace_id,
        correlation_id: envelope.correlation_id(),
        tenant_id: envelope.tenant().map(tenant_id_of),
        payload: payload_of(envelope.payload()),
    };
    Bytes::from(serde_json::to_vec(&document).expect("the reference envelope always serializes"))
}

/// A tenant that a Go `int` holds (written back as the same text) goes as a number.
fn tenant_id_of(tenant: &str) -> TenantId<'_> {
    match tenant.parse::<i64>() {
        Ok(number) if number.to_string() == tenant => TenantId::Number(number),
        _ => TenantId::Text(tenant),
    }
}

/// Embedded when the payload is exactly one JSON value and not a string (a string in `payload`
/// reads as base64), else base64.
fn payload_of(payload: &[u8]) -> Payload<'_> {
    match serde_json::from_slice::<&RawValue>(payload) {
        Ok(raw) if raw.get().len() == payload.len() && !raw.get().starts_with('"') => Payload::Embedded(raw),
        _ => Payload::Base64(BASE64.encode(payload)),
    }
}

/// Reads a reference document, filling in from the reference's Kafka headers what it lacks.
pub(super) fn decode(headers: &[(String, String)], body: &[u8]) -> Result<Envelope, Error> {
    let document: Incoming<'_> = serde_json::from_slice(body)
        .map_err(|e| malformed(format!("body is neither CloudEvents nor a reference JSON envelope: {e}")))?;
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    };
    // Go's `omitempty` leaves empty strings out; one written anyway means "none" all the same.
    let field = |value: Option<String>| value.filter(|v| !v.is_empty());
    let mut builder = Envelope::builder(
        header(X_AGGREGATE_TYPE).unwrap_or("unknown"),
        document.aggregate_id,
        document.event_type,
    )
    .event_version(document.event_version)
    .payload(payload_from(document.payload)?)
    .timestamp(document.timestamp);
    let ours = [
        X_EVENT_ID,
        X_AGGREGATE_ID,
        X_EVENT_TYPE,
        X_EVENT_VERSION,
        X_AGGREGATE_TYPE,
        X_TRACE_ID,
        X_CORRELATION_ID,
        X_TENANT_ID,
        TRACEPARENT,
    ];
    for (k, v) in headers {
        if !ours.iter().any(|r| k.eq_ignore_ascii_case(r)) && !is_broker_header(k) {
            builder = builder.header(k, v);
        }
    }
    if document.event_id.trim().is_empty() {
        return Err(malformed("event_id must not be empty".to_owned()));
    }
    builder = match document.event_id.parse::<EventId>() {
        Ok(id) => builder.event_id(id),
        // The reference system made ids like "aggregate:type:version:nanos"; map them to a stable
        // UUID so de-duplication still works, and keep the original.
        Err(_) => builder
            .event_id(EventId::from_uuid(Uuid::new_v5(&Uuid::NAMESPACE_OID, document.event_id.as_bytes())))
            .header(ORIGINAL_EVENT_ID_HEADER, document.event_id),
    };
    match header(TRACEPARENT) {
        Some(tp) => builder = builder.trace(TraceContext::new(tp, None)?),
        None => {
            if let Some(id) = field(document.trace_id).or_else(|| header(X_TRACE_ID).map(str::to_owned)) {
                builder = builder.header(TRACE_ID_HEADER, id);
            }
        }
    }
    if let Some(id) = field(document.correlation_id).or_else(|| header(X_CORRELATION_ID).map(str::to_owned)) {
        builder = builder.correlation_id(id);
    }
    if let Some(tenant) = field(document.tenant_id).or_else(|| header(X_TENANT_ID).map(str::to_owned)) {
        builder = builder.tenant(tenant);
    }
    Ok(builder.validate()?)
}

/// An embedded value is the payload as written; a string is base64 (the `[]byte` variant) when
/// it decodes as base64, else the embedded JSON string itself.
fn payload_from(raw: &RawValue) -> Result<Bytes, Error> {
    let text = raw.get();
    if text.starts_with('"') {
        let string: String = serde_json::from_str(text)
            .map_err(|e| malformed(format!("payload is not a valid JSON string: {e}")))?;
        if let Ok(bytes) = BASE64.decode(&string) {
            return Ok(bytes.into());
        }
    }
    Ok(Bytes::copy_from_slice(text.as_bytes()))
}

/// `tenant_id` as a string or an integer; `null` and `""` mean none.
fn tenant_id<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    struct Visitor;
    impl serde::de::Visitor<'_> for Visitor {
        type Value = Option<String>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("tenant_id as a string or an integer")
        }
        fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(v.to_owned()).filter(|v| !v.is_empty()))
        }
        fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
    }
    deserializer.deserialize_any(Visitor)
}

#[cfg(test)]
mod tests {
    //! The reference system's messages are `courier_conformance::reference_vectors`, shared
    //! with the interop tests, where independent clients publish them.

    use super::*;
    use crate::wire::{self, HeaderStyle, WireMode};
    use courier_conformance::reference_vectors::{OUTBOX_VARIANT, REFERENCE, REFERENCE_KAFKA_HEADERS};

    const TRACEPARENT_VALUE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn kafka_headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn reads_the_reference_document_with_an_embedded_payload_and_an_integer_tenant() {
        // As its NATS publisher sends it: the document alone, no headers.
        let e = wire::decode(&[], Bytes::from_static(REFERENCE.as_bytes())).unwrap();
        assert_eq!(e.event_id().to_string(), "019c4a3e-8f1a-7b2c-9d3e-4f5a6b7c8d9e");
        assert_eq!(
            (e.aggregate_type(), e.aggregate_id(), e.event_type()),
            ("unknown", "order-7", "OrderPlaced")
        );
        assert_eq!(e.event_version(), 3);
        assert_eq!(e.timestamp(), at("2026-02-09T22:02:29.123456789Z"));
        assert_eq!(
            e.payload().as_ref(),
            br#"{"total":7,"items":["a","b"]}"#,
            "the embedded JSON, byte for byte"
        );
        assert_eq!(e.tenant(), Some("42"));
        assert_eq!(e.correlation_id(), Some("corr-1"));
        assert_eq!(e.trace(), None, "a trace id alone is not a W3C trace context");
        assert_eq!(e.headers()[TRACE_ID_HEADER], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(e.headers().len(), 1);
    }

    #[test]
    fn reads_the_outbox_variant_with_a_base64_payload_and_a_string_tenant() {
        let e = wire::decode(&[], Bytes::from_static(OUTBOX_VARIANT.as_bytes())).unwrap();
        assert_eq!(e.payload().as_ref(), br#"{"total":7}"#);
        assert_eq!(e.tenant(), Some("acme"));
        assert_eq!(e.correlation_id(), None);
        assert_eq!(e.headers()[ORIGINAL_EVENT_ID_HEADER], "order-8:OrderPlaced:1:1707516149000000000");
        assert!(!e.headers().contains_key(TRACE_ID_HEADER));
    }

    #[test]
    fn reads_the_reference_kafka_headers_as_metadata_not_as_free_form_headers() {
        // Its Kafka publisher: the same document plus X-Event-* and the optional X-* headers.
        let headers = kafka_headers(REFERENCE_KAFKA_HEADERS);
        let from_kafka = wire::decode(&headers, Bytes::from_static(REFERENCE.as_bytes())).unwrap();
        let from_nats = wire::decode(&[], Bytes::from_static(REFERENCE.as_bytes())).unwrap();
        assert_eq!(from_kafka, from_nats);

        // A document without the optional fields takes them from the headers.
        let bare = r#"{"event_id":"019c4a3e-8f1a-7b2c-9d3e-4f5a6b7c8d9e","aggregate_id":"order-7","event_type":"OrderPlaced","event_version":3,"timestamp":"2026-02-10T06:02:29.123456789+08:00","payload":{"total":7,"items":["a","b"]}}"#;
        let e = wire::decode(&headers, Bytes::from_static(bare.as_bytes())).unwrap();
        assert_eq!(e, from_nats);
    }

    #[test]
    fn the_document_wins_over_the_headers() {
        let headers = kafka_headers(&[("X-Tenant-ID", "7"), ("X-Correlation-ID", "other")]);
        let e = wire::decode(&headers, Bytes::from_static(REFERENCE.as_bytes())).unwrap();
        assert_eq!((e.tenant(), e.correlation_id()), (Some("42"), Some("corr-1")));
    }

    fn fixed() -> Envelope {
        Envelope::builder("order", "order-7", "OrderPlaced")
            .event_id("0192b3c4-d5e6-7f80-9a1b-2c3d4e5f6a7b".parse().unwrap())
            .event_version(3)
            .timestamp(at("2023-11-14T22:13:20.123456789Z"))
            .payload(r#"{"total":7}"#)
            .trace(TraceContext::new(TRACEPARENT_VALUE, None).unwrap())
            .correlation_id("corr-1")
            .tenant("42")
            .build()
            .unwrap()
    }

    #[test]
    fn writes_the_reference_document_byte_for_byte() {
        let mut headers = Vec::new();
        let body = wire::encode(&fixed(), WireMode::JsonEnvelope, HeaderStyle::Kafka, &mut headers);
        let expected = r#"{"event_id":"0192b3c4-d5e6-7f80-9a1b-2c3d4e5f6a7b","aggregate_id":"order-7","event_type":"OrderPlaced","event_version":3,"timestamp":"2023-11-14T22:13:20.123456789Z","trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","correlation_id":"corr-1","tenant_id":42,"payload":{"total":7}}"#;
        assert_eq!(std::str::from_utf8(&body).unwrap(), expected);
        assert_eq!(
            headers,
            kafka_headers(&[
                ("X-Event-ID", "0192b3c4-d5e6-7f80-9a1b-2c3d4e5f6a7b"),
                ("X-Aggregate-ID", "order-7"),
                ("X-Event-Type", "OrderPlaced"),
                ("X-Event-Version", "3"),
                ("X-Aggregate-Type", "order"),
                ("traceparent", TRACEPARENT_VALUE),
                ("X-Trace-ID", "4bf92f3577b34da6a3ce929d0e0e4736"),
                ("X-Correlation-ID", "corr-1"),
                ("X-Tenant-ID", "42"),
            ])
        );
    }

    #[test]
    fn a_tenant_is_a_number_when_a_go_int_holds_it_and_a_string_otherwise() {
        for (tenant, written) in [
            ("42", "42"),
            ("-5", "-5"),
            ("acme", r#""acme""#),
            ("007", r#""007""#),
            ("+1", r#""+1""#),
            ("9223372036854775808", r#""9223372036854775808""#),
        ] {
            let e = fixed().into_builder().tenant(tenant).build().unwrap();
            let mut headers = Vec::new();
            let body = wire::encode(&e, WireMode::JsonEnvelope, HeaderStyle::Nats, &mut headers);
            let text = std::str::from_utf8(&body).unwrap();
            assert!(text.contains(&format!(r#""tenant_id":{written},"#)), "{tenant}: {text}");
            assert_eq!(wire::decode(&headers, body).unwrap().tenant(), Some(tenant));
        }
    }

    #[test]
    fn every_payload_is_embedded_or_base64_and_reads_back_byte_for_byte() {
        let cases: [(&[u8], &str); 11] = [
            (br#"{"total":7}"#, r#"{"total":7}"#),
            (br#"{ "b": 1, "a": [2, 3.50] }"#, r#"{ "b": 1, "a": [2, 3.50] }"#),
            (b"[1,2]", "[1,2]"),
            (b"12345", "12345"),
            (b"null", "null"),
            (b"true", "true"),
            // A JSON string would read as base64, so it travels in base64 itself.
            (br#""abc""#, r#""ImFiYyI=""#),
            (br#" {"total":7}"#, r#""IHsidG90YWwiOjd9""#),
            (b"not json", r#""bm90IGpzb24=""#),
            (b"", r#""""#),
            (&[0xff, 0x00], r#""/wA=""#),
        ];
        for (payload, written) in cases {
            let e = fixed().into_builder().payload(payload.to_vec()).build().unwrap();
            let mut headers = Vec::new();
            let body = wire::encode(&e, WireMode::JsonEnvelope, HeaderStyle::Kafka, &mut headers);
            let text = std::str::from_utf8(&body).unwrap();
            assert!(text.ends_with(&format!(r#","payload":{written}}}"#)), "{payload:?}: {text}");
            assert_eq!(wire::decode(&headers, body).unwrap(), e, "{payload:?}");
        }
    }

    #[test]
    fn a_string_payload_that_is_not_base64_is_the_embedded_json_string() {
        let body = OUTBOX_VARIANT.replace(r#""eyJ0b3RhbCI6N30=""#, r#""hello""#);
        let e = wire::decode(&[], Bytes::from(body)).unwrap();
        assert_eq!(e.payload().as_ref(), br#""hello""#);
    }

    #[test]
    fn a_trace_id_without_a_traceparent_is_written_back() {
        let e = wire::decode(&[], Bytes::from_static(REFERENCE.as_bytes())).unwrap();
        let mut headers = Vec::new();
        let body = wire::encode(&e, WireMode::JsonEnvelope, HeaderStyle::Nats, &mut headers);
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(wire::decode(&headers, body).unwrap(), e);
    }

    #[test]
    fn invalid_documents_are_refused_naming_the_problem() {
        let cases = [
            (
                REFERENCE.replace(r#""tenant_id":42"#, r#""tenant_id":true"#),
                "tenant_id as a string or an integer",
            ),
            (
                REFERENCE.replace(r#""tenant_id":42"#, r#""tenant_id":4.2"#),
                "tenant_id as a string or an integer",
            ),
            (REFERENCE.replace(r#","payload":{"total":7,"items":["a","b"]}"#, ""), "missing field `payload`"),
            (REFERENCE.replace(r#""event_version":3"#, r#""event_version":"3""#), "expected i64"),
            (
                REFERENCE.replace("2026-02-10T06:02:29.123456789+08:00", "yesterday"),
                "input contains invalid characters",
            ),
            (REFERENCE.replace(r#""aggregate_id":"order-7""#, r#""aggregate_id":"order 7""#), "aggregate_id"),
            (REFERENCE.replace(r#""event_version":3"#, r#""event_version":0"#), "event_version"),
            (REFERENCE.replace("019c4a3e-8f1a-7b2c-9d3e-4f5a6b7c8d9e", " "), "event_id must not be empty"),
            (REFERENCE.replace(r#"{"total":7,"items":["a","b"]}}"#, r#"{"total":7"#), "EOF"),
        ];
        for (body, problem) in cases {
            let err = wire::decode(&[], Bytes::from(body.clone())).unwrap_err();
            assert!(err.to_string().contains(problem), "{body}: {err}");
        }
    }
}
