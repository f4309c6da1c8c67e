//! `courier tail`: prints the messages of a topic as they arrive, like `nats sub` or `kcat -C`.
//!
//! Every message is printed, those that are not Courier events too, with the reason they do not
//! decode. In a group (`--group`) each message is acknowledged once printed; without one, the
//! reader is ephemeral and moves no group's position.

use std::io::Write as _;
use std::time::SystemTime;

use anyhow::Context as _;
use base64::Engine as _;
use courier_core::{Bus, Envelope, Message, Position, ReadOptions, StartAt, Topic};
use futures::StreamExt as _;
use serde_json::{json, Map, Value};

use crate::args::TailArgs;
use crate::bus_url::with_bus;

impl TailArgs {
    /// Reads until `--limit` messages were printed, or SIGINT/SIGTERM.
    pub async fn run(self) -> anyhow::Result<bool> {
        with_bus!(self.bus.clone(), |bus| tail(bus, self).await)
    }
}

async fn tail<B: Bus>(bus: B, args: TailArgs) -> anyhow::Result<bool> {
    let mut options = ReadOptions::new(args.from);
    if let Some(group) = &args.group {
        options = options.group(group);
    }
    let mut stop = crate::serve::stop_on_signal()?;
    let mut reader = bus
        .read(&args.topic, options)
        .await
        .with_context(|| format!("reading topic {} on {}", args.topic, args.bus))?;
    // On stderr, so that scripts can tell when later publishes will be seen.
    eprintln!("reading topic {} from {}", args.topic, describe_start(args.from));
    let mut stdout = std::io::stdout().lock();
    let mut printed = 0;
    while args.limit.is_none_or(|limit| printed < limit) {
        let message = tokio::select! {
            _ = stop.changed() => break,
            message = reader.next() => match message {
                Some(message) => message,
                None => break,
            },
        };
        let line = if args.json { json_line(&message).to_string() } else { text(&message) };
        writeln!(stdout, "{line}").and_then(|()| stdout.flush()).context("writing to stdout")?;
        message.ack().await.context("acknowledging a printed message")?;
        printed += 1;
    }
    drop(stdout);
    reader.close().await;
    Ok(true)
}

/// Parses `--from`: `start`, `new`, an RFC 3339 time, or a duration before `now` (`10m`).
pub fn parse_start(text: &str, now: SystemTime) -> Result<StartAt, String> {
    match text {
        "start" => Ok(StartAt::Earliest),
        "new" => Ok(StartAt::Latest),
        _ => humantime::parse_rfc3339_weak(text)
            .ok()
            .or_else(|| humantime::parse_duration(text).ok().and_then(|ago| now.checked_sub(ago)))
            .map(StartAt::Time)
            .ok_or_else(|| {
                format!(
                    "{text:?} is not start, new, an RFC 3339 UTC time (2026-12-01T14:00:00Z) or a duration ago (10m)"
                )
            }),
    }
}

/// Clap's parser for `--from`.
pub fn start_arg(text: &str) -> Result<StartAt, String> {
    parse_start(text, SystemTime::now())
}

/// Clap's parser for the topic argument.
pub fn topic_arg(text: &str) -> Result<Topic, String> {
    Topic::new(text).map_err(|e| e.to_string())
}

fn describe_start(start: StartAt) -> String {
    match start {
        StartAt::Earliest => "the start".into(),
        StartAt::Latest => "new messages on".into(),
        StartAt::Time(time) => humantime::format_rfc3339_millis(time).to_string(),
    }
}

fn position(position: &Position) -> (String, Value) {
    match position {
        Position::Memory { sequence } => (format!("sequence {sequence}"), json!({ "sequence": sequence })),
        Position::Stream { stream, sequence } => (
            format!("stream {stream} sequence {sequence}"),
            json!({ "stream": stream, "sequence": sequence }),
        ),
        Position::Partition { partition, offset } => (
            format!("partition {partition} offset {offset}"),
            json!({ "partition": partition, "offset": offset }),
        ),
        other => (format!("{other:?}"), Value::String(format!("{other:?}"))),
    }
}

fn time(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}

/// The header pairs a decoded event carries: its trace context and correlation and tenant ids,
/// which the envelope keeps apart, then its own headers.
fn event_headers(envelope: &Envelope) -> Vec<(String, String)> {
    let mut headers = Vec::new();
    if let Some(trace) = envelope.trace() {
        headers.push(("traceparent".to_owned(), trace.traceparent().to_owned()));
        if let Some(state) = trace.tracestate() {
            headers.push(("tracestate".to_owned(), state.to_owned()));
        }
    }
    if let Some(id) = envelope.correlation_id() {
        headers.push(("correlation_id".to_owned(), id.to_owned()));
    }
    if let Some(tenant) = envelope.tenant() {
        headers.push(("tenant".to_owned(), tenant.to_owned()));
    }
    headers.extend(envelope.headers().iter().map(|(k, v)| (k.clone(), v.clone())));
    headers
}

/// A payload as text when it is UTF-8, else as `hex:` and its bytes in hex.
fn payload_text(payload: &[u8]) -> String {
    match std::str::from_utf8(payload) {
        Ok(text) => text.to_owned(),
        Err(_) => format!("hex:{}", payload.iter().map(|b| format!("{b:02x}")).collect::<String>()),
    }
}

/// A message as a block of text: a line with its position, then one line per field.
pub fn text(message: &Message) -> String {
    let mut out = position(message.position()).0;
    if let Some(at) = message.stored_at() {
        out += &format!(" stored {}", time(at));
    }
    let headers = |pairs: &[(String, String)]| {
        pairs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
    };
    match message.content() {
        Ok(event) => {
            out += &format!(
                "\n  id: {}\n  aggregate: {} {}\n  type: {} version {}\n  time: {}\n  headers: {}\n  payload: {}",
                event.event_id(),
                event.aggregate_type(),
                event.aggregate_id(),
                event.event_type(),
                event.event_version(),
                time(event.timestamp().into()),
                headers(&event_headers(event)),
                payload_text(event.payload()),
            );
        }
        Err(undecodable) => {
            out += &format!(
                "\n  undecodable: {}\n  headers: {}\n  payload: {}",
                undecodable.reason,
                headers(&undecodable.headers),
                payload_text(&undecodable.payload),
            );
        }
    }
    out
}

/// A message as one JSON object. The payload is a string: the text when it is UTF-8
/// (`"payload_encoding": "utf8"`), else base64 (`"payload_encoding": "base64"`).
pub fn json_line(message: &Message) -> Value {
    let mut object = Map::new();
    object.insert("position".into(), position(message.position()).1);
    object.insert("stored_at".into(), message.stored_at().map(time).into());
    let (headers, payload) = match message.content() {
        Ok(event) => {
            object.insert("event_id".into(), event.event_id().to_string().into());
            object.insert("aggregate_type".into(), event.aggregate_type().into());
            object.insert("aggregate_id".into(), event.aggregate_id().into());
            object.insert("event_type".into(), event.event_type().into());
            object.insert("event_version".into(), event.event_version().into());
            object.insert("timestamp".into(), time(event.timestamp().into()).into());
            (event_headers(event), event.payload().as_ref())
        }
        Err(undecodable) => {
            object.insert("error".into(), undecodable.reason.clone().into());
            (undecodable.headers.clone(), undecodable.payload.as_ref())
        }
    };
    let headers: Map<String, Value> = headers.into_iter().map(|(k, v)| (k, v.into())).collect();
    object.insert("headers".into(), headers.into());
    let (payload, encoding) = match std::str::from_utf8(payload) {
        Ok(text) => (text.to_owned(), "utf8"),
        Err(_) => (base64::engine::general_purpose::STANDARD.encode(payload), "base64"),
    };
    object.insert("payload".into(), payload.into());
    object.insert("payload_encoding".into(), encoding.into());
    object.into()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use courier_core::Undecodable;

    use super::*;

    #[test]
    fn start_positions_are_words_times_or_durations_ago() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(parse_start("start", now), Ok(StartAt::Earliest));
        assert_eq!(parse_start("new", now), Ok(StartAt::Latest));
        assert_eq!(parse_start("10m", now), Ok(StartAt::Time(now - Duration::from_secs(600))));
        let time = humantime::parse_rfc3339("2026-12-01T14:00:00Z").unwrap();
        assert_eq!(parse_start("2026-12-01T14:00:00Z", now), Ok(StartAt::Time(time)));
        let err = parse_start("yesterday", now).unwrap_err();
        assert!(err.contains("\"yesterday\" is not start, new"), "{err}");
    }

    fn garbage() -> Message {
        let undecodable = Undecodable::new(
            "no ce-specversion",
            vec![("k".into(), "v".into())],
            Bytes::from_static(b"\xff\x00"),
        );
        Message::new(Position::Partition { partition: 2, offset: 7 }, None, Err(undecodable))
    }

    #[test]
    fn undecodable_messages_show_the_reason_and_their_bytes() {
        assert_eq!(
            text(&garbage()),
            "partition 2 offset 7\n  undecodable: no ce-specversion\n  headers: k=v\n  payload: hex:ff00"
        );
        let line = json_line(&garbage());
        assert_eq!(line["error"], "no ce-specversion");
        assert_eq!(
            (line["payload"].as_str(), line["payload_encoding"].as_str()),
            (Some("/wA="), Some("base64"))
        );
        assert_eq!(line["position"], json!({ "partition": 2, "offset": 7 }));
    }

    #[test]
    fn events_show_every_field_with_a_text_payload() {
        let event = Envelope::builder("order", "order-1", "OrderPlaced")
            .event_version(2)
            .payload(r#"{"total":42}"#)
            .header("source", "shop")
            .build()
            .unwrap();
        let message =
            Message::new(Position::Stream { stream: "orders".into(), sequence: 3 }, None, Ok(event.clone()));
        let shown = text(&message);
        for expected in [
            "stream orders sequence 3\n",
            &format!("id: {}", event.event_id()),
            "aggregate: order order-1",
            "type: OrderPlaced version 2",
            "headers: source=shop",
            r#"payload: {"total":42}"#,
        ] {
            assert!(shown.contains(expected), "{expected:?} in {shown}");
        }
        let line = json_line(&message);
        assert_eq!(
            (line["event_version"].as_i64(), line["payload_encoding"].as_str()),
            (Some(2), Some("utf8"))
        );
        assert_eq!(line["headers"], json!({ "source": "shop" }));
    }
}
