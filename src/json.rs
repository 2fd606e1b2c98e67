//! Just enough JSON output for the CLI's and the bench's `--json`: string escaping and byte
//! strings. Keys and values that are valid UTF-8 print as JSON strings; others as
//! `{"hex": "..."}`. Standalone on purpose: perf/etcd-bench compiles it by path.

use std::fmt::Write;

/// `text` as a JSON string literal.
pub fn string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Bytes as a JSON value: a string when they are UTF-8, else an object holding their hex.
pub fn bytes(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) => string(text),
        Err(_) => {
            let mut hex = String::with_capacity(bytes.len() * 2);
            for byte in bytes {
                let _ = write!(hex, "{byte:02x}");
            }
            format!("{{\"hex\":\"{hex}\"}}")
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn escapes() {
        assert_eq!(
            super::string("a\"b\\c\nd\u{1}"),
            "\"a\\\"b\\\\c\\nd\\u0001\""
        );
        assert_eq!(super::bytes(b"ok"), "\"ok\"");
        assert_eq!(super::bytes(&[0xff, 0x01]), "{\"hex\":\"ff01\"}");
    }
}
