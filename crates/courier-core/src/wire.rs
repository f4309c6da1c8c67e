//! Wire formats shared by the broker backends: CloudEvents binary mode (metadata in headers,
//! payload as the body) and the reference system's JSON envelope. Consumers detect the mode from
//! the headers, so both can flow through one topic during a migration.

mod reference;

use std::borrow::Cow;

use bytes::Bytes;
use chrono::{DateTime, Datelike, SecondsFormat, Timelike, Utc};
use serde::{Deserialize, Serialize};

use crate::{Envelope, Error, ErrorKind, EventId, TraceContext};

/// How envelopes are written to the broker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WireMode {
    /// CloudEvents binary content mode: `ce*` headers, the payload untouched as the body.
    #[default]
    CloudEvents,
    /// The reference system's JSON envelope as the body (a JSON payload embedded as JSON), plus
    /// its `X-*` headers, for consumers that read that format.
    JsonEnvelope,
}

/// The header prefix of the CloudEvents protocol binding in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderStyle {
    /// Kafka binding: `ce_id`, `ce_type`, …
    Kafka,
    /// NATS binding: `ce-id`, `ce-type`, …
    Nats,
}

impl HeaderStyle {
    fn prefix(self) -> &'static str {
        match self {
            Self::Kafka => "ce_",
            Self::Nats => "ce-",
        }
    }

    fn names(self) -> &'static CeNames {
        match self {
            Self::Kafka => &KAFKA_NAMES,
            Self::Nats => &NATS_NAMES,
        }
    }
}

/// Receives an encoded envelope's headers one at a time, so a backend fills its client's header
/// type directly instead of copying them out of an intermediate list.
pub trait HeaderSink {
    /// Any header, e.g. one of the envelope's free-form headers.
    fn put(&mut self, name: &str, value: &str);

    /// A header named by one of Courier's constants, which a client may keep without copying.
    fn put_static(&mut self, name: &'static str, value: &str) {
        self.put(name, value);
    }
}

impl HeaderSink for Vec<(String, String)> {
    fn put(&mut self, name: &str, value: &str) {
        self.push((name.to_owned(), value.to_owned()));
    }
}

/// JSON-envelope mode header carrying the event id.
pub const X_EVENT_ID: &str = "X-Event-ID";
/// JSON-envelope mode header carrying the aggregate id.
pub const X_AGGREGATE_ID: &str = "X-Aggregate-ID";
/// JSON-envelope mode header carrying the event type.
pub const X_EVENT_TYPE: &str = "X-Event-Type";
/// JSON-envelope mode header carrying the event version.
pub const X_EVENT_VERSION: &str = "X-Event-Version";
/// JSON-envelope mode header carrying the aggregate type, which the JSON envelope itself lacks
/// (Courier's addition to the reference system's headers).
pub const X_AGGREGATE_TYPE: &str = "X-Aggregate-Type";
/// JSON-envelope mode header carrying the trace id (the reference envelope's `trace_id`).
pub const X_TRACE_ID: &str = "X-Trace-ID";
/// JSON-envelope mode header carrying the correlation id.
pub const X_CORRELATION_ID: &str = "X-Correlation-ID";
/// JSON-envelope mode header carrying the tenant (the reference envelope's `tenant_id`).
pub const X_TENANT_ID: &str = "X-Tenant-ID";
/// Set when a decoded JSON envelope's event id was not a UUID; holds the original string.
pub const ORIGINAL_EVENT_ID_HEADER: &str = "courier-original-event-id";
/// Set when a decoded JSON envelope has a `trace_id` but no W3C `traceparent` to make a trace
/// context of; holds that trace id, which JSON-envelope mode writes back as `trace_id`.
pub const TRACE_ID_HEADER: &str = "courier-trace-id";

/// `source` is this prefix plus the aggregate type, so decode recovers the type from it.
const SOURCE_PREFIX: &str = "/courier/";

/// Declares the CloudEvents attributes Courier writes: their header names in each protocol
/// binding, and the list that decode recognises as its own.
macro_rules! ce_attributes {
    ($($field:ident: $attr:literal),* $(,)?) => {
        /// The header names of Courier's CloudEvents attributes in one protocol binding.
        struct CeNames {
            $($field: &'static str,)*
        }
        const KAFKA_NAMES: CeNames = CeNames { $($field: concat!("ce_", $attr),)* };
        const NATS_NAMES: CeNames = CeNames { $($field: concat!("ce-", $attr),)* };
        const CE_ATTRIBUTES: &[&str] = &[$($attr,)*];
    };
}

ce_attributes! {
    specversion: "specversion",
    id: "id",
    source: "source",
    event_type: "type",
    subject: "subject",
    time: "time",
    eventversion: "eventversion",
    traceparent: "traceparent",
    tracestate: "tracestate",
    correlationid: "correlationid",
    tenant: "tenant",
}

/// Encodes `envelope` for a broker using `style`'s header names: the headers go to `sink`, the
/// body is returned.
pub fn encode(envelope: &Envelope, mode: WireMode, style: HeaderStyle, sink: &mut impl HeaderSink) -> Bytes {
    for (name, value) in envelope.headers() {
        sink.put(name, value);
    }
    let mut id_buffer = [0; EventId::TEXT_LEN];
    let event_id = envelope.event_id().encode(&mut id_buffer);
    let mut version_buffer = itoa::Buffer::new();
    let version = version_buffer.format(envelope.event_version());
    match mode {
        WireMode::CloudEvents => {
            let n = style.names();
            sink.put_static(n.specversion, "1.0");
            sink.put_static(n.id, event_id);
            sink.put_static(n.source, &[SOURCE_PREFIX, envelope.aggregate_type()].concat());
            sink.put_static(n.event_type, envelope.event_type());
            sink.put_static(n.subject, envelope.aggregate_id());
            let mut time_buffer = [0; RFC3339_MAX_LEN];
            sink.put_static(n.time, &rfc3339(&envelope.timestamp(), &mut time_buffer));
            sink.put_static(n.eventversion, version);
            if let Some(trace) = envelope.trace() {
                sink.put_static(n.traceparent, trace.traceparent());
                if let Some(state) = trace.tracestate() {
                    sink.put_static(n.tracestate, state);
                }
            }
            if let Some(id) = envelope.correlation_id() {
                sink.put_static(n.correlationid, id);
            }
            if let Some(tenant) = envelope.tenant() {
                sink.put_static(n.tenant, tenant);
            }
            envelope.payload().clone()
        }
        WireMode::JsonEnvelope => reference::encode(envelope, event_id, version, sink),
    }
}

/// Adds up the header names and values [`encode`] writes, without keeping them.
struct HeaderBytes(usize);

impl HeaderSink for HeaderBytes {
    fn put(&mut self, name: &str, value: &str) {
        self.0 += name.len() + value.len();
    }
}

/// The bytes `envelope` takes on the wire in `mode`: the body [`encode`] returns (the payload in
/// CloudEvents mode, the JSON document in JSON-envelope mode) plus the name and value of every
/// header it writes (Courier's metadata headers and the envelope's own headers). Compare it with
/// a broker's message limit before accepting an event that will be published later, e.g. at
/// outbox enqueue.
///
/// It is the same in both [`HeaderStyle`]s (`ce_` and `ce-` are equally long). A broker's own
/// framing is not included (NATS's header block markup and `Nats-Msg-Id`, Kafka's record fields
/// and key), so a limit compared with this size must leave room for it. It runs the encoder, so
/// in JSON-envelope mode it serializes the envelope once.
pub fn encoded_size(envelope: &Envelope, mode: WireMode) -> usize {
    let mut headers = HeaderBytes(0);
    let body = encode(envelope, mode, HeaderStyle::Kafka, &mut headers);
    body.len() + headers.0
}

/// Decodes a broker message in either mode: CloudEvents when a `ce_specversion`/`ce-specversion`
/// header is present, the reference JSON envelope otherwise. Broker-internal headers
/// (`Nats-*`) are dropped; other headers become envelope headers.
pub fn decode(headers: &[(String, String)], body: Bytes) -> Result<Envelope, Error> {
    let find =
        |name: &str| headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str());
    let style = [HeaderStyle::Kafka, HeaderStyle::Nats]
        .into_iter()
        .find(|s| find(&format!("{}specversion", s.prefix())).is_some());
    match style {
        Some(style) => decode_cloudevents(headers, body, style.prefix()),
        None => reference::decode(headers, &body),
    }
}

fn decode_cloudevents(headers: &[(String, String)], body: Bytes, p: &str) -> Result<Envelope, Error> {
    let attr = |name: &str| {
        let key = format!("{p}{name}");
        headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(&key)).map(|(_, v)| v.as_str())
    };
    let required = |name: &str| attr(name).ok_or_else(|| malformed(format!("missing header {p}{name}")));
    let event_id: EventId =
        required("id")?.parse().map_err(|e| malformed(format!("header {p}id is not a UUID: {e}")))?;
    let aggregate_type = attr("source").map(aggregate_type_of).unwrap_or("unknown");
    let mut builder = Envelope::builder(aggregate_type, required("subject")?, required("type")?)
        .event_id(event_id)
        .payload(body);
    if let Some(version) = attr("eventversion") {
        builder = builder.event_version(parse_version(version)?);
    }
    if let Some(time) = attr("time") {
        builder = builder.timestamp(parse_time(time)?);
    }
    if let Some(tp) = attr("traceparent") {
        builder = builder.trace(TraceContext::new(tp, attr("tracestate").map(str::to_owned))?);
    }
    if let Some(id) = attr("correlationid") {
        builder = builder.correlation_id(id);
    }
    if let Some(tenant) = attr("tenant") {
        builder = builder.tenant(tenant);
    }
    let is_ours = |k: &str| {
        k.len() > p.len()
            && k[..p.len()].eq_ignore_ascii_case(p)
            && CE_ATTRIBUTES.iter().any(|a| k[p.len()..].eq_ignore_ascii_case(a))
    };
    for (k, v) in headers.iter().filter(|(k, _)| !is_ours(k) && !is_broker_header(k)) {
        builder = builder.header(k, v);
    }
    Ok(builder.validate()?)
}

/// The aggregate type in a `source`: whole after Courier's prefix, else the last path segment
/// (other producers' sources end with some name at best).
fn aggregate_type_of(source: &str) -> &str {
    source.strip_prefix(SOURCE_PREFIX).unwrap_or_else(|| source.rsplit('/').next().unwrap_or(source))
}

fn is_broker_header(name: &str) -> bool {
    name.len() >= 5 && name[..5].eq_ignore_ascii_case("nats-")
}

fn parse_version(text: &str) -> Result<i64, Error> {
    text.parse().map_err(|_| malformed(format!("event version {text:?} is not an integer")))
}

/// The longest [`rfc3339`] text written into its buffer: seconds with nine digits and `Z`.
const RFC3339_MAX_LEN: usize = "2006-01-02T15:04:05.999999999Z".len();

/// `time` as chrono's `to_rfc3339_opts(SecondsFormat::AutoSi, true)` writes it (UTC, `Z`, 0, 3,
/// 6 or 9 fractional digits as needed), but into `buffer` instead of a `String` through `fmt`:
/// it runs for every published event, where chrono's path showed in profiles. Years outside
/// 0..=9999, which need chrono's signed form, are left to chrono.
fn rfc3339<'a>(time: &DateTime<Utc>, buffer: &'a mut [u8; RFC3339_MAX_LEN]) -> Cow<'a, str> {
    let Some(year) = u32::try_from(time.year()).ok().filter(|&year| year <= 9999) else {
        return Cow::Owned(time.to_rfc3339_opts(SecondsFormat::AutoSi, true));
    };
    let (mut second, mut nano) = (time.second(), time.nanosecond());
    if nano >= 1_000_000_000 {
        // A leap second, written as :60 like chrono does.
        second += 1;
        nano -= 1_000_000_000;
    }
    buffer[..19].copy_from_slice(b"0000-00-00T00:00:00");
    for (range, value) in [
        (0..4, year),
        (5..7, time.month()),
        (8..10, time.day()),
        (11..13, time.hour()),
        (14..16, time.minute()),
        (17..19, second),
    ] {
        write_digits(&mut buffer[range], value);
    }
    let (fraction, width) = match nano {
        0 => (0, 0),
        n if n % 1_000_000 == 0 => (n / 1_000_000, 3),
        n if n % 1_000 == 0 => (n / 1_000, 6),
        n => (n, 9),
    };
    let mut len = 19;
    if width > 0 {
        buffer[19] = b'.';
        write_digits(&mut buffer[20..20 + width], fraction);
        len = 20 + width;
    }
    buffer[len] = b'Z';
    Cow::Borrowed(std::str::from_utf8(&buffer[..=len]).expect("only ASCII digits and separators"))
}

/// Fills `out` with the last `out.len()` decimal digits of `value`, zero-padded.
fn write_digits(out: &mut [u8], mut value: u32) {
    for byte in out.iter_mut().rev() {
        *byte = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

fn parse_time(text: &str) -> Result<DateTime<Utc>, Error> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| malformed(format!("time {text:?} is not RFC 3339: {e}")))
}

fn malformed(message: String) -> Error {
    Error::new(ErrorKind::InvalidInput, format!("malformed message: {message}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_matches_chrono() {
        use chrono::{NaiveDate, TimeZone};
        let chrono = |t: &DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::AutoSi, true);
        let date = |y, mo, d, h, mi, s, nano| {
            Utc.from_utc_datetime(
                &NaiveDate::from_ymd_opt(y, mo, d).unwrap().and_hms_nano_opt(h, mi, s, nano).unwrap(),
            )
        };
        let mut times = vec![
            date(2026, 11, 22, 1, 2, 3, 0),
            date(2026, 11, 22, 1, 2, 3, 120_000_000),
            date(2026, 11, 22, 1, 2, 3, 123_456_000),
            date(2026, 11, 22, 1, 2, 3, 123_456_789),
            date(2026, 11, 22, 1, 2, 3, 1_000),
            date(2026, 11, 22, 1, 2, 3, 7),
            date(2016, 12, 31, 23, 59, 59, 1_500_000_000), // leap second
            date(0, 1, 1, 0, 0, 0, 0),
            date(9999, 12, 31, 23, 59, 59, 999_999_999),
            date(10_000, 1, 1, 0, 0, 0, 0), // chrono's signed form
            date(-1, 6, 1, 12, 0, 0, 5_000_000),
            Utc::now(),
        ];
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        for _ in 0..10_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            // Any second of the years 1970..=9999, at nanosecond, microsecond and millisecond steps.
            let (secs, nano) = ((seed >> 20) as i64 % 253_402_300_800, (seed % 1_000_000_000) as u32);
            for step in [1, 1_000, 1_000_000] {
                times.push(DateTime::from_timestamp(secs, nano / step * step).unwrap());
            }
        }
        for time in times {
            let mut buffer = [0; RFC3339_MAX_LEN];
            assert_eq!(rfc3339(&time, &mut buffer), chrono(&time), "{time:?}");
        }
    }

    fn sample() -> Envelope {
        Envelope::builder("order", "order-7", "OrderPlaced")
            .event_version(3)
            .payload(r#"{"total":7}"#)
            .trace(
                TraceContext::new("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", None).unwrap(),
            )
            .correlation_id("corr-1")
            .tenant("acme")
            .header("x-custom", "yes")
            .build()
            .unwrap()
    }

    #[test]
    fn cloudevents_round_trips_in_both_styles() {
        for style in [HeaderStyle::Kafka, HeaderStyle::Nats] {
            let e = sample();
            let mut headers = Vec::new();
            let body = encode(&e, WireMode::CloudEvents, style, &mut headers);
            assert_eq!(body, e.payload());
            headers.push(("Nats-Msg-Id".into(), e.event_id().to_string()));
            assert_eq!(decode(&headers, body).unwrap(), e);
        }
    }

    #[test]
    fn the_aggregate_type_travels_whole_in_the_source() {
        let e = Envelope::builder("billing/order v2", "order-7", "OrderPlaced").build().unwrap();
        let mut headers = Vec::new();
        let body = encode(&e, WireMode::CloudEvents, HeaderStyle::Nats, &mut headers);
        assert!(headers.contains(&("ce-source".into(), "/courier/billing/order v2".into())));
        assert_eq!(decode(&headers, body).unwrap(), e);
    }

    #[test]
    fn json_envelope_round_trips_in_both_styles() {
        for style in [HeaderStyle::Kafka, HeaderStyle::Nats] {
            let e = sample();
            let mut headers = Vec::new();
            let body = encode(&e, WireMode::JsonEnvelope, style, &mut headers);
            let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(json["payload"], serde_json::json!({"total": 7}), "embedded, not base64");
            assert_eq!(json["tenant_id"], "acme");
            headers.push(("Nats-Msg-Id".into(), e.event_id().to_string()));
            assert_eq!(decode(&headers, body).unwrap(), e);
        }
    }

    #[test]
    fn the_tenant_survives_a_trip_through_both_modes() {
        for tenant in ["acme", "42"] {
            let e = sample().into_builder().tenant(tenant).build().unwrap();
            let mut headers = Vec::new();
            let body = encode(&e, WireMode::CloudEvents, HeaderStyle::Kafka, &mut headers);
            let read = decode(&headers, body).unwrap();
            let mut headers = Vec::new();
            let body = encode(&read, WireMode::JsonEnvelope, HeaderStyle::Kafka, &mut headers);
            let read = decode(&headers, body).unwrap();
            let mut headers = Vec::new();
            let body = encode(&read, WireMode::CloudEvents, HeaderStyle::Nats, &mut headers);
            assert_eq!(decode(&headers, body).unwrap(), e, "tenant {tenant}");
        }
    }

    /// What [`encode`] puts on the wire: body length plus every header name and value.
    fn encoded_len(e: &Envelope, mode: WireMode, style: HeaderStyle) -> usize {
        let mut headers: Vec<(String, String)> = Vec::new();
        let body = encode(e, mode, style, &mut headers);
        body.len() + headers.iter().map(|(name, value)| name.len() + value.len()).sum::<usize>()
    }

    #[test]
    fn encoded_size_is_what_the_encoders_write_in_every_mode_and_style() {
        let bare = Envelope::builder("order", "order-7", "OrderPlaced").build().unwrap();
        let big = sample().into_builder().payload(vec![0xff; 100_000]).build().unwrap();
        for e in [sample(), bare, big] {
            for mode in [WireMode::CloudEvents, WireMode::JsonEnvelope] {
                for style in [HeaderStyle::Kafka, HeaderStyle::Nats] {
                    assert_eq!(encoded_size(&e, mode), encoded_len(&e, mode, style), "{mode:?} {style:?}");
                }
            }
        }
    }

    #[test]
    fn encoded_size_counts_the_payload_and_every_header() {
        let at = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let id: EventId = "0192b3c4-d5e6-7f80-9a1b-2c3d4e5f6a7b".parse().unwrap();
        let e = Envelope::builder("order", "order-7", "OrderPlaced")
            .event_id(id)
            .timestamp(at)
            .payload("12345")
            .header("x-custom", "yes")
            .build()
            .unwrap();
        let cloudevents = [
            ("ce_specversion", "1.0"),
            ("ce_id", "0192b3c4-d5e6-7f80-9a1b-2c3d4e5f6a7b"),
            ("ce_source", "/courier/order"),
            ("ce_type", "OrderPlaced"),
            ("ce_subject", "order-7"),
            ("ce_time", "2023-11-14T22:13:20Z"),
            ("ce_eventversion", "1"),
            ("x-custom", "yes"),
        ];
        let header_bytes: usize = cloudevents.iter().map(|(name, value)| name.len() + value.len()).sum();
        assert_eq!(encoded_size(&e, WireMode::CloudEvents), 5 + header_bytes);

        // JSON envelope: the document (the payload, valid JSON, embedded) plus the `X-*` headers.
        let document = format!(
            r#"{{"event_id":"{id}","aggregate_id":"order-7","event_type":"OrderPlaced","event_version":1,"timestamp":"2023-11-14T22:13:20Z","payload":12345}}"#
        );
        let json_headers = [
            (X_EVENT_ID, "0192b3c4-d5e6-7f80-9a1b-2c3d4e5f6a7b"),
            (X_AGGREGATE_ID, "order-7"),
            (X_EVENT_TYPE, "OrderPlaced"),
            (X_EVENT_VERSION, "1"),
            (X_AGGREGATE_TYPE, "order"),
            ("x-custom", "yes"),
        ];
        let header_bytes: usize = json_headers.iter().map(|(name, value)| name.len() + value.len()).sum();
        assert_eq!(encoded_size(&e, WireMode::JsonEnvelope), document.len() + header_bytes);
    }

    #[test]
    fn wire_modes_have_their_configuration_names() {
        assert_eq!(serde_json::to_string(&WireMode::CloudEvents).unwrap(), r#""cloud_events""#);
        assert_eq!(serde_json::to_string(&WireMode::JsonEnvelope).unwrap(), r#""json_envelope""#);
    }

    #[test]
    fn json_envelope_ids_that_are_not_uuids_map_to_stable_ids() {
        let body = br#"{"event_id":"order-1:Placed:1:1700000000","aggregate_id":"order-1","event_type":"Placed","event_version":1,"payload":"e30=","timestamp":"2024-01-01T00:00:00Z"}"#;
        let a = decode(&[], Bytes::from_static(body)).unwrap();
        let b = decode(&[], Bytes::from_static(body)).unwrap();
        assert_eq!(a.event_id(), b.event_id());
        assert_eq!(a.headers()[ORIGINAL_EVENT_ID_HEADER], "order-1:Placed:1:1700000000");
        assert_eq!(a.payload().as_ref(), b"{}");
    }

    #[test]
    fn garbage_is_a_clear_error() {
        let err = decode(&[], Bytes::from_static(b"not json")).unwrap_err();
        assert!(err.message().contains("neither CloudEvents nor a reference JSON envelope"), "{err}");
        let err = decode(&[("ce_specversion".into(), "1.0".into())], Bytes::new()).unwrap_err();
        assert!(err.message().contains("missing header ce_id"), "{err}");
    }
}
