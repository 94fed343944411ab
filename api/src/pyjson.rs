//! Serialise JSON byte-for-byte as Python's `json.dumps` does with default arguments:
//! `", "` and `": "` separators and `ensure_ascii` escaping (non-ASCII as `\uXXXX`,
//! astral characters as surrogate pairs).
//!
//! The original API answers with `json.dumps(...)` and stores list fields (`filter`,
//! `exclude`, `ssh_ping_host_keys`) as `json.dumps(value, sort_keys=True)`, then compares
//! the stored text with freshly serialised values to detect changes. Producing the same
//! text keeps those comparisons stable across a database imported from the original.

use std::io;

use serde::Serialize;
use serde_json::ser::{CharEscape, Formatter, Serializer};

/// A `serde_json` formatter reproducing Python's `json.dumps` defaults.
#[derive(Debug, Default, Clone, Copy)]
pub struct PythonFormatter;

impl Formatter for PythonFormatter {
    fn begin_array_value<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }

    fn begin_object_key<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }

    fn begin_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(b": ")
    }

    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        // Fast path: pure ASCII fragments need no escaping beyond what serde_json already did.
        if fragment.is_ascii() {
            return w.write_all(fragment.as_bytes());
        }
        let mut buf = [0u16; 2];
        for ch in fragment.chars() {
            if ch.is_ascii() {
                let mut b = [0u8; 1];
                w.write_all(ch.encode_utf8(&mut b).as_bytes())?;
            } else {
                for unit in ch.encode_utf16(&mut buf) {
                    write!(w, "\\u{unit:04x}")?;
                }
            }
        }
        Ok(())
    }

    fn write_char_escape<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        escape: CharEscape,
    ) -> io::Result<()> {
        // Python writes control characters as lowercase `\u00XX`, like serde_json, but
        // spells the short escapes the same way too; only the hex case needs care.
        let s: &[u8] = match escape {
            CharEscape::Quote => b"\\\"",
            CharEscape::ReverseSolidus => b"\\\\",
            CharEscape::Solidus => b"\\/",
            CharEscape::Backspace => b"\\b",
            CharEscape::FormFeed => b"\\f",
            CharEscape::LineFeed => b"\\n",
            CharEscape::CarriageReturn => b"\\r",
            CharEscape::Tab => b"\\t",
            CharEscape::AsciiControl(byte) => return write!(w, "\\u{byte:04x}"),
        };
        w.write_all(s)
    }
}

/// Serialise `value` as Python's `json.dumps(value)` would.
pub fn to_string<T: Serialize + ?Sized>(value: &T) -> Result<String, serde_json::Error> {
    let mut out = Vec::with_capacity(128);
    let mut ser = Serializer::with_formatter(&mut out, PythonFormatter);
    value.serialize(&mut ser)?;
    // The formatter only ever writes ASCII (non-ASCII is escaped), so this cannot fail; the
    // lossy conversion avoids an `expect` on a path fed by untrusted input.
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// `json.dumps(list, sort_keys=True)` for a list of strings (keys are irrelevant for lists,
/// so this is simply the Python rendering).
pub fn string_list(items: &[String]) -> String {
    to_string(items).unwrap_or_else(|_| String::from("[]"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn separators_match_python() {
        let v = json!({"a": [1, 2, {"b": null}], "c": true});
        assert_eq!(
            to_string(&v).expect("serialise"),
            r#"{"a": [1, 2, {"b": null}], "c": true}"#
        );
    }

    #[test]
    fn non_ascii_is_escaped_like_ensure_ascii() {
        assert_eq!(
            to_string("é€😀").expect("serialise"),
            r#""\u00e9\u20ac\ud83d\ude00""#
        );
        assert_eq!(
            to_string("a\u{1}\n\"\\").expect("serialise"),
            r#""a\u0001\n\"\\""#
        );
    }

    #[test]
    fn empty_containers() {
        assert_eq!(to_string(&json!({})).expect("serialise"), "{}");
        assert_eq!(string_list(&[]), "[]");
        assert_eq!(string_list(&["x".into(), "y".into()]), r#"["x", "y"]"#);
    }
}
