//! Turning event content into HTML text. Everything an event carries (payload, headers, ids,
//! errors) comes from applications or foreign writers, so it is escaped before it reaches a page.

use std::fmt::Write as _;

/// `text` with the characters that HTML gives a meaning (`& < > " '`) replaced by entities:
/// safe in element content and in quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// How a payload is shown: `("json", pretty-printed)` when it is one JSON document, else
/// `("hex", bytes in hex, 32 per line)`. Not escaped: the caller escapes for its output.
pub fn payload_text(payload: &[u8]) -> (&'static str, String) {
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(payload) {
        return ("json", serde_json::to_string_pretty(&value).expect("a JSON value serializes"));
    }
    let mut hex = String::with_capacity(payload.len() * 3);
    for (i, chunk) in payload.chunks(32).enumerate() {
        if i > 0 {
            hex.push('\n');
        }
        for (j, byte) in chunk.iter().enumerate() {
            if j > 0 {
                hex.push(' ');
            }
            let _ = write!(hex, "{byte:02x}");
        }
    }
    ("hex", hex)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_is_escaped_and_text_kept() {
        assert_eq!(escape("<script>alert('x')</script>"), "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;");
        assert_eq!(escape(r#"a="b" & c"#), "a=&quot;b&quot; &amp; c");
        assert_eq!(escape("plain ü 日本"), "plain ü 日本");
        assert_eq!(escape("&amp;"), "&amp;amp;");
    }

    #[test]
    fn a_json_payload_is_pretty_printed() {
        let (kind, text) = payload_text(br#"{"a":1,"b":[true]}"#);
        assert_eq!(kind, "json");
        assert_eq!(text, "{\n  \"a\": 1,\n  \"b\": [\n    true\n  ]\n}");
    }

    #[test]
    fn anything_else_is_hex() {
        assert_eq!(payload_text(b"not json"), ("hex", "6e 6f 74 20 6a 73 6f 6e".to_owned()));
        assert_eq!(payload_text(&[0xff, 0]), ("hex", "ff 00".to_owned()));
        let (_, long) = payload_text(&[7; 33]);
        assert_eq!(long.lines().count(), 2);
        assert_eq!(payload_text(b""), ("hex", String::new()));
    }
}
