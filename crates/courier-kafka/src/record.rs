//! A received record as bytes, as it arrived: decoded into an event when it is one, and
//! otherwise turned into the dead-letter copy that stores it, bytes unchanged.
//!
//! Headers are read as bytes (see [`crate::native::header_bytes`]) and checked for UTF-8 here, so
//! a header another client wrote with bytes that are not UTF-8 makes the record undecodable, with
//! an error naming the header, instead of a panic or a silently altered value.

use bytes::Bytes;
use courier_core::{
    bounded_header_value, wire, Envelope, DEAD_LETTER_ERROR_HEADER, DEAD_LETTER_POSITION_HEADER,
    DEAD_LETTER_REASON_HEADER,
};

use crate::native::RawHeader;

/// Bytes of a value shown in an error about it.
const SHOWN_VALUE_BYTES: usize = 64;
/// Bytes counted per header beside its name and value (length varints), and per record (its
/// own framing), when sizing a dead-letter copy.
const HEADER_FRAMING: usize = 10;

/// One received record.
pub(crate) struct Received {
    pub(crate) topic: String,
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    /// `None`: a null key.
    pub(crate) key: Option<Vec<u8>>,
    pub(crate) headers: Vec<RawHeader>,
    pub(crate) value: Bytes,
}

impl Received {
    /// The Courier event this record carries; `Err` says why it is none.
    pub(crate) fn decode(&self) -> Result<Envelope, String> {
        let headers = text_headers(&self.headers)?;
        wire::decode(&headers, self.value.clone()).map_err(|err| err.message().to_owned())
    }

    /// Where the record is stored, as a dead-letter position header says it.
    pub(crate) fn position(&self) -> String {
        format!("topic {} partition {} offset {}", self.topic, self.partition, self.offset)
    }

    /// The dead-letter copy of this record: its key, headers and value unchanged plus
    /// `courier-dead-letter-reason` and `courier-dead-letter-position`, except header names that
    /// are not UTF-8, which are written escaped (`\xff`): Kafka's record format defines a header
    /// name as a UTF-8 string and clients fail on one that is not (rust-rdkafka panics,
    /// kafka-python raises), so copying it as it is would make the dead-letter topic unreadable
    /// to them as well. Values are bytes in Kafka and go unchanged. A copy larger than
    /// `max_bytes` would be refused by the broker, so a record of it goes instead: no key, value
    /// or original headers, and `courier-dead-letter-error` saying why.
    pub(crate) fn dead_letter_copy(&self, reason: &str, max_bytes: usize) -> Copy {
        let marks = [
            (DEAD_LETTER_REASON_HEADER, bounded_header_value(reason)),
            (DEAD_LETTER_POSITION_HEADER, self.position()),
        ];
        let mark = |headers: &mut Vec<RawHeader>| {
            for (name, value) in &marks {
                headers.push((name.as_bytes().to_vec(), Some(value.clone().into_bytes())));
            }
        };
        let headers = self.headers.iter().map(|(name, value)| (readable_name(name), value.clone())).collect();
        let mut copy = Copy { key: self.key.clone().unwrap_or_default(), headers, value: self.value.clone() };
        mark(&mut copy.headers);
        let size = copy.size();
        if size <= max_bytes {
            return copy;
        }
        let refused = format!("the copy is {size} bytes, above the {max_bytes} bytes a record may have");
        let mut record = Copy { key: Vec::new(), headers: Vec::new(), value: Bytes::new() };
        mark(&mut record.headers);
        record.headers.push((DEAD_LETTER_ERROR_HEADER.as_bytes().to_vec(), Some(refused.into_bytes())));
        record
    }
}

/// What goes to the dead-letter topic for one record.
pub(crate) struct Copy {
    pub(crate) key: Vec<u8>,
    pub(crate) headers: Vec<RawHeader>,
    pub(crate) value: Bytes,
}

impl Copy {
    /// About the bytes the record takes in a batch.
    fn size(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|(name, value)| name.len() + value.as_ref().map_or(0, Vec::len) + HEADER_FRAMING)
            .sum();
        HEADER_FRAMING + self.key.len() + self.value.len() + headers
    }
}

/// `name` when it is UTF-8, else its bytes with those outside printable ASCII escaped.
fn readable_name(name: &[u8]) -> Vec<u8> {
    match std::str::from_utf8(name) {
        Ok(_) => name.to_vec(),
        Err(_) => name.escape_ascii().to_string().into_bytes(),
    }
}

/// `headers` as text (a null value reads as empty), or an error naming the first header whose
/// name or value is not UTF-8.
pub(crate) fn text_headers(headers: &[RawHeader]) -> Result<Vec<(String, String)>, String> {
    headers
        .iter()
        .map(|(name, value)| {
            let name = std::str::from_utf8(name)
                .map_err(|_| format!("header name \"{}\" is not UTF-8", name.escape_ascii()))?;
            let value = value.as_deref().unwrap_or_default();
            let value = std::str::from_utf8(value).map_err(|_| {
                let shown = &value[..value.len().min(SHOWN_VALUE_BYTES)];
                let more = if value.len() > shown.len() { "…" } else { "" };
                format!("the value of header {name:?} is not UTF-8: \"{}\"{more}", shown.escape_ascii())
            })?;
            Ok((name.to_owned(), value.to_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(name: &[u8], value: &[u8]) -> RawHeader {
        (name.to_vec(), Some(value.to_vec()))
    }

    #[test]
    fn headers_that_are_not_utf8_are_named_with_their_bytes() {
        let bad_name = text_headers(&[header(b"ok", b"1"), header(b"ce_\xff", b"x")]).unwrap_err();
        assert_eq!(bad_name, r#"header name "ce_\xff" is not UTF-8"#);
        let bad_value = text_headers(&[header(b"ce_type", b"Order\xc3")]).unwrap_err();
        assert_eq!(bad_value, r#"the value of header "ce_type" is not UTF-8: "Order\xc3""#);
        let long = text_headers(&[header(b"h", &[0xfe; 100])]).unwrap_err();
        assert!(long.ends_with("\"…") && long.matches("\\xfe").count() == SHOWN_VALUE_BYTES, "{long}");
    }

    #[test]
    fn utf8_headers_and_null_values_read_as_text() {
        let headers = [header("é".as_bytes(), "ü".as_bytes()), (b"null".to_vec(), None)];
        assert_eq!(
            text_headers(&headers).unwrap(),
            [("é".to_owned(), "ü".to_owned()), ("null".to_owned(), String::new())]
        );
    }

    fn received() -> Received {
        Received {
            topic: "orders".into(),
            partition: 2,
            offset: 41,
            key: Some(b"k\xff".to_vec()),
            headers: vec![header(b"n\xff", b"v\xfe")],
            value: Bytes::from_static(b"\x00garbage"),
        }
    }

    fn value_of<'a>(copy: &'a Copy, name: &str) -> Option<&'a [u8]> {
        copy.headers.iter().find(|(n, _)| n == name.as_bytes()).and_then(|(_, v)| v.as_deref())
    }

    #[test]
    fn a_dead_letter_copy_keeps_the_bytes_and_names_reason_and_position() {
        let record = received();
        let copy = record.dead_letter_copy("undecodable message: x", 10_000);
        assert_eq!(copy.key, b"k\xff");
        assert_eq!(copy.value, record.value);
        assert_eq!(copy.headers[0], header(br"n\xff", b"v\xfe"), "name escaped, value as it was");
        assert_eq!(value_of(&copy, DEAD_LETTER_REASON_HEADER), Some(&b"undecodable message: x"[..]));
        assert_eq!(
            value_of(&copy, DEAD_LETTER_POSITION_HEADER),
            Some(&b"topic orders partition 2 offset 41"[..])
        );
        assert_eq!(value_of(&copy, DEAD_LETTER_ERROR_HEADER), None);
    }

    #[test]
    fn a_copy_too_large_becomes_a_record_without_the_original_bytes() {
        let record = received();
        let copy = record.dead_letter_copy(&"long reason ".repeat(1000), 100);
        assert!(copy.key.is_empty() && copy.value.is_empty());
        assert_eq!(copy.headers.len(), 3, "reason, position, error");
        let reason = value_of(&copy, DEAD_LETTER_REASON_HEADER).unwrap();
        assert!(reason.len() <= courier_core::MAX_DEAD_LETTER_REASON_LEN, "reason bounded");
        let error = String::from_utf8(value_of(&copy, DEAD_LETTER_ERROR_HEADER).unwrap().to_vec()).unwrap();
        assert!(error.contains("above the 100 bytes"), "{error}");
    }
}
