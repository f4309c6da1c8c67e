//! The event envelope and its validation.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};

use crate::{EventId, ValidationError};

/// Longest accepted `aggregate_id`; it becomes a Kafka key and a log field, so keep it short.
pub const MAX_AGGREGATE_ID_LEN: usize = 256;
/// Longest topic name valid on every backend (Kafka's limit).
pub const MAX_TOPIC_LEN: usize = 249;
/// Default payload limit, matching nats-server's default `max_payload` of 1 MiB.
pub const DEFAULT_MAX_PAYLOAD: usize = 1024 * 1024;

/// Header-name prefixes Courier and the brokers write themselves, compared case-insensitively:
/// CloudEvents attributes (`ce_`, `ce-`), the reference system's `X-Event-*`, NATS server headers
/// (`Nats-Msg-Id`, `Nats-Rollup`, `Nats-Expected-*`) and Courier's own (`courier-dead-letter-*`).
/// A user header with one of them would be read as the event's metadata or obeyed by the server.
pub const RESERVED_HEADER_PREFIXES: &[&str] = &["ce_", "ce-", "x-event-", "nats-", "courier-"];
/// Other header names Courier writes in JSON-envelope mode, reserved like the prefixes.
const RESERVED_HEADER_NAMES: &[&str] =
    &["x-aggregate-id", "x-aggregate-type", "x-trace-id", "x-correlation-id", "x-tenant-id"];

/// Whether `name` is reserved for Courier and the brokers (see [`RESERVED_HEADER_PREFIXES`]).
pub fn is_reserved_header(name: &str) -> bool {
    let starts_with = |prefix: &str| name.get(..prefix.len()).is_some_and(|p| p.eq_ignore_ascii_case(prefix));
    RESERVED_HEADER_PREFIXES.iter().any(|p| starts_with(p))
        || RESERVED_HEADER_NAMES.iter().any(|n| name.eq_ignore_ascii_case(n))
}

/// A domain event with its metadata, valid by construction (see [`EnvelopeBuilder::build`]).
#[derive(Clone, PartialEq, Eq)]
pub struct Envelope {
    event_id: EventId,
    aggregate_type: String,
    aggregate_id: String,
    event_type: String,
    event_version: i64,
    payload: Bytes,
    timestamp: DateTime<Utc>,
    trace: Option<TraceContext>,
    correlation_id: Option<String>,
    tenant: Option<String>,
    headers: BTreeMap<String, String>,
}

impl Envelope {
    /// Starts an envelope; the event id defaults to a new UUIDv7, the version to 1 and the
    /// timestamp to now.
    pub fn builder(
        aggregate_type: impl Into<String>,
        aggregate_id: impl Into<String>,
        event_type: impl Into<String>,
    ) -> EnvelopeBuilder {
        EnvelopeBuilder {
            envelope: Envelope {
                // Placeholders: `build` fills in the id and time given, or new ones.
                event_id: EventId::from_uuid(uuid::Uuid::nil()),
                aggregate_type: aggregate_type.into(),
                aggregate_id: aggregate_id.into(),
                event_type: event_type.into(),
                event_version: 1,
                payload: Bytes::new(),
                timestamp: DateTime::default(),
                trace: None,
                correlation_id: None,
                tenant: None,
                headers: BTreeMap::new(),
            },
            event_id: None,
            timestamp: None,
        }
    }

    /// The event's unique id; brokers drop re-publishes of the same id, consumers can
    /// de-duplicate by it.
    pub fn event_id(&self) -> EventId {
        self.event_id
    }
    /// The kind of aggregate the event belongs to (e.g. `order`).
    pub fn aggregate_type(&self) -> &str {
        &self.aggregate_type
    }
    /// The ordering key: events with the same aggregate id are delivered in order.
    pub fn aggregate_id(&self) -> &str {
        &self.aggregate_id
    }
    /// What happened (e.g. `OrderPlaced`); consumers route on it.
    pub fn event_type(&self) -> &str {
        &self.event_type
    }
    /// The version of the event type's payload schema, so consumers can read old and new
    /// payloads side by side.
    pub fn event_version(&self) -> i64 {
        self.event_version
    }
    /// The event body, opaque to Courier.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }
    /// When the event happened.
    pub fn timestamp(&self) -> DateTime<Utc> {
        self.timestamp
    }
    /// The W3C trace context the event carries from producer to consumers.
    pub fn trace(&self) -> Option<&TraceContext> {
        self.trace.as_ref()
    }
    /// Ties together events caused by one request or workflow.
    pub fn correlation_id(&self) -> Option<&str> {
        self.correlation_id.as_deref()
    }
    /// The tenant the event belongs to, for multi-tenant consumers. It travels as the
    /// CloudEvents `tenant` attribute, or as the reference envelope's `tenant_id` and
    /// `X-Tenant-ID` (see [`wire`](crate::wire)), and reads back the same in either mode.
    pub fn tenant(&self) -> Option<&str> {
        self.tenant.as_deref()
    }
    /// Free-form headers, carried to the broker as message headers.
    pub fn headers(&self) -> &BTreeMap<String, String> {
        &self.headers
    }

    /// Refuses a payload above `max_bytes` (the publisher's or broker's limit).
    pub fn check_payload_size(&self, max_bytes: usize) -> Result<(), ValidationError> {
        if self.payload.len() > max_bytes {
            return Err(ValidationError::new(
                "payload",
                format!("{} bytes exceeds the maximum of {max_bytes} bytes", self.payload.len()),
            ));
        }
        Ok(())
    }

    /// Turns the envelope back into a builder, e.g. to decode-then-amend or to re-validate.
    pub fn into_builder(self) -> EnvelopeBuilder {
        EnvelopeBuilder { event_id: Some(self.event_id), timestamp: Some(self.timestamp), envelope: self }
    }
}

impl fmt::Debug for Envelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Envelope")
            .field("event_id", &self.event_id)
            .field("aggregate_type", &self.aggregate_type)
            .field("aggregate_id", &self.aggregate_id)
            .field("event_type", &self.event_type)
            .field("event_version", &self.event_version)
            .field("payload_bytes", &self.payload.len())
            .field("timestamp", &self.timestamp)
            .field("trace", &self.trace)
            .field("correlation_id", &self.correlation_id)
            .field("tenant", &self.tenant)
            .field("headers", &self.headers)
            .finish()
    }
}

/// Builds an [`Envelope`]; [`build`](Self::build) validates every field.
#[derive(Debug, Clone)]
#[must_use]
pub struct EnvelopeBuilder {
    envelope: Envelope,
    /// The id and time given; a new UUIDv7 and the clock are read only when one is missing, as
    /// rebuilding a stored or received event (the relay, every decode) always gives both.
    event_id: Option<EventId>,
    timestamp: Option<DateTime<Utc>>,
}

impl EnvelopeBuilder {
    /// Sets the event id, e.g. to rebuild a stored event under its original id so a
    /// re-publish is recognised as a duplicate. Default: a new UUIDv7.
    pub fn event_id(mut self, id: EventId) -> Self {
        self.event_id = Some(id);
        self
    }
    /// Sets the payload schema version; must be positive. Default 1.
    pub fn event_version(mut self, version: i64) -> Self {
        self.envelope.event_version = version;
        self
    }
    /// Sets the body. Default empty.
    pub fn payload(mut self, payload: impl Into<Bytes>) -> Self {
        self.envelope.payload = payload.into();
        self
    }
    /// Sets when the event happened. Default: the time of [`build`](Self::build).
    pub fn timestamp(mut self, timestamp: DateTime<Utc>) -> Self {
        self.timestamp = Some(timestamp);
        self
    }
    /// Sets the trace context. Default: none, or with the `otel` feature the current span's.
    pub fn trace(mut self, trace: TraceContext) -> Self {
        self.envelope.trace = Some(trace);
        self
    }
    /// Sets the correlation id; must not be empty. Default: none.
    pub fn correlation_id(mut self, id: impl Into<String>) -> Self {
        self.envelope.correlation_id = Some(id.into());
        self
    }
    /// Sets the tenant; must not be empty. Default: none.
    pub fn tenant(mut self, tenant: impl Into<String>) -> Self {
        self.envelope.tenant = Some(tenant.into());
        self
    }
    /// Adds a free-form header, replacing one of the same name. Names must be non-empty without
    /// `:`, spaces or control characters, and not reserved ([`RESERVED_HEADER_PREFIXES`]);
    /// values without line breaks.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.envelope.headers.insert(name.into(), value.into());
        self
    }

    /// Validates and returns the envelope, or an error naming the first invalid field (or the
    /// reserved header). With the `otel` feature, an envelope without trace context takes the
    /// current span's.
    pub fn build(self) -> Result<Envelope, ValidationError> {
        #[allow(unused_mut)]
        let mut builder = self;
        #[cfg(feature = "otel")]
        if builder.envelope.trace.is_none() {
            builder.envelope.trace = TraceContext::current();
        }
        if let Some(name) = builder.envelope.headers.keys().find(|name| is_reserved_header(name)) {
            return Err(ValidationError::new(
                "headers",
                format!("header name {name:?} is reserved for Courier and the brokers (ce_*, ce-*, X-Event-*, Nats-*, courier-*, and the reference envelope's X-Aggregate-ID, X-Aggregate-Type, X-Trace-ID, X-Correlation-ID, X-Tenant-ID)"),
            ));
        }
        builder.validate()
    }

    /// Validates like [`build`](Self::build) an event Courier itself stored or received (the
    /// outbox relay reading a row back): the reserved headers Courier wrote on it (e.g.
    /// `courier-dead-letter-reason`) are accepted, and its trace context is what it carries,
    /// never the current span's. Application code builds events with `build`.
    pub fn rebuild(self) -> Result<Envelope, ValidationError> {
        self.validate()
    }

    /// Validation alone, for envelopes read back from a broker or amended on their way: their
    /// trace context is what they carry, never the current span's.
    pub(crate) fn validate(self) -> Result<Envelope, ValidationError> {
        let mut e = self.envelope;
        e.event_id = self.event_id.unwrap_or_default();
        e.timestamp = self.timestamp.unwrap_or_else(Utc::now);
        non_empty("aggregate_type", &e.aggregate_type)?;
        non_empty("event_type", &e.event_type)?;
        check_aggregate_id(&e.aggregate_id)?;
        if e.event_version <= 0 {
            return Err(ValidationError::new(
                "event_version",
                format!("must be > 0, got {}", e.event_version),
            ));
        }
        if let Some(id) = &e.correlation_id {
            non_empty("correlation_id", id)?;
        }
        if let Some(tenant) = &e.tenant {
            non_empty("tenant", tenant)?;
        }
        for (name, value) in &e.headers {
            check_header(name, value)?;
        }
        Ok(e)
    }
}

fn non_empty(field: &'static str, value: &str) -> Result<(), ValidationError> {
    if value.trim().is_empty() {
        return Err(ValidationError::new(field, "must not be empty"));
    }
    if value.chars().any(char::is_control) {
        return Err(ValidationError::new(field, "must not contain control characters"));
    }
    Ok(())
}

fn check_aggregate_id(id: &str) -> Result<(), ValidationError> {
    const FIELD: &str = "aggregate_id";
    if id.is_empty() {
        return Err(ValidationError::new(FIELD, "must not be empty"));
    }
    if id.len() > MAX_AGGREGATE_ID_LEN {
        return Err(ValidationError::new(
            FIELD,
            format!("{} characters exceeds the maximum of {MAX_AGGREGATE_ID_LEN}", id.len()),
        ));
    }
    if let Some(c) = id.chars().find(|c| !(c.is_ascii_alphanumeric() || ":_-./".contains(*c))) {
        return Err(ValidationError::new(
            FIELD,
            format!("character {c:?} is not allowed (use A-Z a-z 0-9 : _ - . /)"),
        ));
    }
    Ok(())
}

fn check_header(name: &str, value: &str) -> Result<(), ValidationError> {
    if name.is_empty() || name.chars().any(|c| c == ':' || c.is_whitespace() || c.is_control()) {
        return Err(ValidationError::new(
            "headers",
            format!("header name {name:?} must be non-empty without ':', spaces or control characters"),
        ));
    }
    if value.contains(['\r', '\n']) {
        return Err(ValidationError::new(
            "headers",
            format!("value of header {name:?} must not contain line breaks"),
        ));
    }
    Ok(())
}

/// A topic name valid on every backend: a NATS subject without wildcards and a Kafka topic.
/// Cheap to clone: every publish result carries one.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Topic(Arc<str>);

impl Topic {
    /// Validates `name`: 1–249 characters from `A-Z a-z 0-9 . _ -`, no empty `.`-separated part.
    pub fn new(name: impl Into<String>) -> Result<Self, ValidationError> {
        let name = name.into();
        const FIELD: &str = "topic";
        if name.is_empty() || name.len() > MAX_TOPIC_LEN {
            return Err(ValidationError::new(
                FIELD,
                format!("{name:?} must have 1 to {MAX_TOPIC_LEN} characters"),
            ));
        }
        if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || "._-".contains(*c))) {
            return Err(ValidationError::new(
                FIELD,
                format!("{name:?}: character {c:?} is not allowed (use A-Z a-z 0-9 . _ -)"),
            ));
        }
        if name.split('.').any(str::is_empty) {
            return Err(ValidationError::new(
                FIELD,
                format!("{name:?} must not start or end with '.' or contain '..'"),
            ));
        }
        Ok(Self(name.into()))
    }

    /// The topic name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Topic({})", self.0)
    }
}

impl std::str::FromStr for Topic {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// W3C trace context (`traceparent`, optional `tracestate`) carried from enqueue to the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    traceparent: String,
    tracestate: Option<String>,
}

impl TraceContext {
    /// Parses a `traceparent` of the form `00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`.
    pub fn new(traceparent: impl Into<String>, tracestate: Option<String>) -> Result<Self, ValidationError> {
        let traceparent = traceparent.into();
        let parts: Vec<&str> = traceparent.split('-').collect();
        let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
        let valid = parts.len() == 4
            && hex(parts[0], 2)
            && parts[0] != "ff"
            && hex(parts[1], 32)
            && parts[1] != "0".repeat(32)
            && hex(parts[2], 16)
            && parts[2] != "0".repeat(16)
            && hex(parts[3], 2);
        if !valid {
            return Err(ValidationError::new(
                "traceparent",
                format!("{traceparent:?} is not a W3C traceparent (00-<32 hex>-<16 hex>-<2 hex>)"),
            ));
        }
        Ok(Self { traceparent, tracestate })
    }

    /// The `traceparent` value: version, trace id, parent span id and flags.
    pub fn traceparent(&self) -> &str {
        &self.traceparent
    }

    /// The vendor-specific `tracestate` value, if any.
    pub fn tracestate(&self) -> Option<&str> {
        self.tracestate.as_deref()
    }

    /// The context of the current `tracing` span as OpenTelemetry sees it; `None` outside a
    /// sampled or remote-parented span.
    #[cfg(feature = "otel")]
    pub fn current() -> Option<Self> {
        use opentelemetry::trace::TraceContextExt as _;
        use tracing_opentelemetry::OpenTelemetrySpanExt as _;
        let context = tracing::Span::current().context();
        let span = context.span();
        let sc = span.span_context();
        if !sc.is_valid() {
            return None;
        }
        let traceparent = format!("00-{}-{}-{:02x}", sc.trace_id(), sc.span_id(), sc.trace_flags().to_u8());
        let state = sc.trace_state().header();
        Self::new(traceparent, (!state.is_empty()).then_some(state)).ok()
    }

    /// The 32-hex-digit trace id, used as the reference envelope's `trace_id`.
    pub fn trace_id(&self) -> &str {
        &self.traceparent[3..35]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> EnvelopeBuilder {
        Envelope::builder("order", "order-1", "OrderPlaced")
    }

    #[test]
    fn builds_a_valid_envelope_with_v7_id() {
        let e = valid().payload("{}").build().unwrap();
        assert_eq!(e.event_id().as_uuid().get_version_num(), 7);
        assert_eq!(e.event_version(), 1);
    }

    #[test]
    fn refusals_name_the_field() {
        let cases = [
            (Envelope::builder("", "a", "t").build(), "aggregate_type"),
            (Envelope::builder("o", "", "t").build(), "aggregate_id"),
            (Envelope::builder("o", "a b", "t").build(), "aggregate_id"),
            (Envelope::builder("o", "a".repeat(257), "t").build(), "aggregate_id"),
            (Envelope::builder("o", "a", " ").build(), "event_type"),
            (valid().event_version(0).build(), "event_version"),
            (valid().header("x y", "v").build(), "headers"),
            (valid().header("x", "a\nb").build(), "headers"),
            (valid().correlation_id("").build(), "correlation_id"),
        ];
        for (result, field) in cases {
            assert_eq!(result.unwrap_err().field, field);
        }
    }

    #[test]
    fn reserved_header_names_are_refused_naming_the_header() {
        for name in [
            "ce_id",
            "CE-Type",
            "X-Event-ID",
            "x-event-whatever",
            "Nats-Rollup",
            "nats-expected-stream",
            "courier-x",
            "X-Aggregate-Type",
            "X-Tenant-ID",
            "x-trace-id",
            "X-Correlation-ID",
        ] {
            let err = valid().header(name, "v").build().unwrap_err();
            assert_eq!(err.field, "headers");
            assert!(err.to_string().contains(&format!("{name:?}")), "{err}");
        }
        for name in ["ce", "cex", "x-eventual", "natsy", "courier", "X-Aggregate", "trace-id"] {
            valid().header(name, "v").build().unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn rebuilding_a_stored_event_keeps_couriers_own_headers() {
        let stored = valid().header("courier-dead-letter-reason", "boom").rebuild().unwrap();
        assert_eq!(stored.headers()["courier-dead-letter-reason"], "boom");
        assert_eq!(valid().header("a b", "v").rebuild().unwrap_err().field, "headers");
    }

    #[test]
    fn payload_limit_is_checked() {
        let e = valid().payload(vec![0u8; 11]).build().unwrap();
        assert!(e.check_payload_size(11).is_ok());
        assert_eq!(e.check_payload_size(10).unwrap_err().field, "payload");
    }

    #[test]
    fn topics_must_suit_every_backend() {
        assert!(Topic::new("orders.v1_events-x").is_ok());
        for bad in ["", "a b", "a.*", "a.>", ".a", "a.", "a..b", &"x".repeat(250)] {
            assert_eq!(Topic::new(bad).unwrap_err().field, "topic", "{bad:?}");
        }
    }

    #[cfg(feature = "otel")]
    #[test]
    fn the_current_span_becomes_the_trace_context() {
        use opentelemetry::trace::TracerProvider as _;
        use tracing_subscriber::layer::SubscriberExt as _;
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, || {
            assert!(valid().build().unwrap().trace().is_none(), "no span, no context");
            let span = tracing::info_span!("place_order");
            let _entered = span.enter();
            let e = valid().build().unwrap();
            let trace = e.trace().expect("captured from the span");
            use opentelemetry::trace::TraceContextExt as _;
            use tracing_opentelemetry::OpenTelemetrySpanExt as _;
            let expected = span.context().span().span_context().trace_id().to_string();
            assert_eq!(trace.trace_id(), expected);
        });
    }

    #[test]
    fn traceparent_is_validated() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(TraceContext::new(tp, None).unwrap().trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(TraceContext::new("00-xyz-00f067aa0ba902b7-01", None).is_err());
    }
}
