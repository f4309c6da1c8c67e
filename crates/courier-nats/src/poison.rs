//! Messages async-nats cannot receive: their header block is not UTF-8 or has a header line it
//! refuses, and its protocol parser drops the connection such a message arrives on, so the
//! subscriber never sees it and cannot acknowledge it the usual way.
//!
//! After its connection came back, a subscription looks for them among the messages its consumer
//! has delivered but not seen acknowledged, reading each from the stream as JSON
//! (`STREAM.MSG.GET`, headers base64-encoded, which async-nats does not parse), dead-letters each
//! one found and acknowledges it on the subject JetStream delivered it with.

use base64::Engine as _;
use bytes::Bytes;

/// Bytes of a header block shown in a reason.
const SHOWN_BYTES: usize = 64;

/// Why async-nats's parser refuses `block`, a message's raw header block (`NATS/1.0` line,
/// header lines), following its rules: UTF-8, a `NATS/1.0` first line, and `name: value` lines
/// whose name has no `:` and only bytes 33 to 126. `None` when it parses.
pub(crate) fn unreadable_headers(block: &[u8]) -> Option<String> {
    let text = match std::str::from_utf8(block) {
        Ok(text) => text,
        Err(err) => {
            let at = err.valid_up_to();
            let start = at.saturating_sub(SHOWN_BYTES / 2);
            let shown = &block[start..(at + SHOWN_BYTES / 2).min(block.len())];
            return Some(format!("its header block is not UTF-8 at byte {at}: \"{}\"", shown.escape_ascii()));
        }
    };
    let mut lines = text.lines();
    if !lines.next().unwrap_or_default().starts_with("NATS/1.0") {
        return Some("its header block does not begin with NATS/1.0".to_owned());
    }
    for line in lines.filter(|line| !line.is_empty() && !line.starts_with(char::is_whitespace)) {
        let Some((name, _)) = line.split_once(':') else {
            return Some(format!("its header line {line:?} has no ':'"));
        };
        // async-nats compares each character truncated to a byte; so does this.
        if name.is_empty() || name.chars().any(|c| (c as u8) < 33 || (c as u8) > 126) {
            return Some(format!("its header name {name:?} is invalid"));
        }
    }
    None
}

/// A message as `STREAM.MSG.GET` returns it.
pub(crate) struct StoredMessage {
    pub(crate) subject: String,
    /// The raw header block, if any.
    pub(crate) headers: Option<Vec<u8>>,
    pub(crate) body: Bytes,
}

/// Reads a `STREAM.MSG.GET` response: `Ok(None)` when the message is gone (deleted),
/// `Err` when the response is not what the JetStream API documents.
pub(crate) fn parse_stored(value: &serde_json::Value) -> Result<Option<StoredMessage>, String> {
    if value.get("error").is_some() {
        return Ok(None);
    }
    let message = value.get("message").ok_or("STREAM.MSG.GET answered without a message")?;
    let base64 = |field: &str| -> Result<Option<Vec<u8>>, String> {
        message
            .get(field)
            .and_then(serde_json::Value::as_str)
            .map(|text| base64::engine::general_purpose::STANDARD.decode(text))
            .transpose()
            .map_err(|err| format!("STREAM.MSG.GET answered with a {field} that is not base64: {err}"))
    };
    let subject = message.get("subject").and_then(serde_json::Value::as_str).unwrap_or_default().to_owned();
    let headers = base64("hdrs")?;
    let body = base64("data")?.unwrap_or_default().into();
    Ok(Some(StoredMessage { subject, headers, body }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_blocks_async_nats_refuses_are_named() {
        assert_eq!(unreadable_headers(b"NATS/1.0\r\nce-id: 1\r\nx-a: b\r\n  folded\r\n\r\n"), None);
        let latin1 = unreadable_headers(b"NATS/1.0\r\nx-note: caf\xe9\r\n\r\n").unwrap();
        assert!(
            latin1.starts_with("its header block is not UTF-8 at byte 21") && latin1.contains(r"caf\xe9"),
            "{latin1}"
        );
        assert_eq!(
            unreadable_headers("NATS/1.0\r\nnamé: x\r\n\r\n".as_bytes()).unwrap(),
            r#"its header name "namé" is invalid"#
        );
        assert_eq!(
            unreadable_headers(b"NATS/1.0\r\nno colon\r\n\r\n").unwrap(),
            r#"its header line "no colon" has no ':'"#
        );
        assert!(unreadable_headers(b"HTTP/1.1\r\n\r\n").is_some());
    }

    #[test]
    fn stored_messages_are_read_from_the_api_json() {
        let response = br#"{"type":"io.nats.jetstream.api.v1.stream_msg_get_response","message":{"subject":"t","seq":3,"hdrs":"TkFUUy8xLjANCng6IOkNCg0K","data":"aGk=","time":"2026-01-01T00:00:00Z"}}"#;
        let stored = parse_stored(&serde_json::from_slice(response).unwrap()).unwrap().unwrap();
        assert_eq!(stored.subject, "t");
        assert_eq!(stored.headers.as_deref(), Some(&b"NATS/1.0\r\nx: \xe9\r\n\r\n"[..]));
        assert_eq!(stored.body.as_ref(), b"hi");
        let missing =
            br#"{"type":"x","error":{"code":404,"err_code":10037,"description":"no message found"}}"#;
        assert!(parse_stored(&serde_json::from_slice(missing).unwrap()).unwrap().is_none());
    }
}
