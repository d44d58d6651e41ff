//! The JSON writer: [`write_str`], [`write_value`], and the [`ObjectWriter`] / [`ArrayWriter`]
//! builders that append compact JSON straight into a reused `Vec<u8>`.
//!
//! Why apart from the reader (`json.rs`): writing is what every JSON endpoint does on each
//! answer and reading is what the MCP server does with untrusted input; they share only
//! [`Value`]. Like the reader it is pure (appends to a buffer, no I/O) and never panics.
//!
//! Strings are escaped as RFC 8259 requires and no more (`"`, `\`, control characters);
//! non-finite floats, which JSON cannot carry, are written as `null`.

use std::io::Write as _;

use crate::json::Value;

/// Appends `s` as a JSON string: quoted, with `"` `\` and control
/// characters escaped (`\n \r \t \b \f`, others as `\u00XX`). Everything
/// else, including non-ASCII, is copied through as UTF-8.
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut run = 0; // start of the pending run of bytes that need no escape
    for (i, &b) in bytes.iter().enumerate() {
        let short = match b {
            b'"' => b'"',
            b'\\' => b'\\',
            b'\n' => b'n',
            b'\r' => b'r',
            b'\t' => b't',
            0x08 => b'b',
            0x0c => b'f',
            0x00..=0x1f => b'u',
            _ => continue,
        };
        out.extend_from_slice(&bytes[run..i]);
        out.push(b'\\');
        out.push(short);
        if short == b'u' {
            out.extend_from_slice(b"00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        }
        run = i + 1;
    }
    out.extend_from_slice(&bytes[run..]);
    out.push(b'"');
}

/// Appends `value` as compact JSON; numbers are written from their raw
/// text. Recursion follows the value's nesting (bounded by
/// [`MAX_DEPTH`](crate::json::MAX_DEPTH) for values from [`parse`](crate::json::parse)).
pub fn write_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(b) => write_bool(out, *b),
        Value::Number(n) => out.extend_from_slice(n.raw().as_bytes()),
        Value::String(s) => write_str(out, s),
        Value::Array(items) => {
            let mut a = ArrayWriter::new(out);
            for item in items {
                a.value(item);
            }
        }
        Value::Object(members) => {
            let mut o = ObjectWriter::new(out);
            for (k, v) in members {
                o.value(k, v);
            }
        }
    }
}

fn write_bool(out: &mut Vec<u8>, b: bool) {
    out.extend_from_slice(if b { b"true" } else { b"false" });
}

fn write_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

fn write_i64(out: &mut Vec<u8>, n: i64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Finite values use `{}` (shortest text that round-trips); NaN and
/// infinities have no JSON form and become `null`.
fn write_f64(out: &mut Vec<u8>, x: f64) {
    if x.is_finite() {
        // Writing to a Vec cannot fail.
        let _ = write!(out, "{x}");
    } else {
        out.extend_from_slice(b"null");
    }
}

/// Writes a JSON object member by member straight into a buffer.
/// `new` writes `{`; dropping the writer (or [`ObjectWriter::finish`])
/// writes `}`. Keys are not checked for duplicates.
///
/// ```
/// use sigma_agent_lite::json_write::ObjectWriter;
/// let mut out = Vec::new();
/// let mut o = ObjectWriter::new(&mut out);
/// o.str("jsonrpc", "2.0").raw("id", "7");
/// o.object("result").bool("ok", true);
/// o.finish();
/// assert_eq!(out, br#"{"jsonrpc":"2.0","id":7,"result":{"ok":true}}"#);
/// ```
pub struct ObjectWriter<'a> {
    out: &'a mut Vec<u8>,
    empty: bool,
}

impl<'a> ObjectWriter<'a> {
    pub fn new(out: &'a mut Vec<u8>) -> Self {
        out.push(b'{');
        ObjectWriter { out, empty: true }
    }

    /// Writes the separator and `"key":`.
    fn key(&mut self, key: &str) -> &mut Vec<u8> {
        if !self.empty {
            self.out.push(b',');
        }
        self.empty = false;
        write_str(self.out, key);
        self.out.push(b':');
        self.out
    }

    pub fn str(&mut self, key: &str, value: &str) -> &mut Self {
        write_str(self.key(key), value);
        self
    }

    pub fn u64(&mut self, key: &str, n: u64) -> &mut Self {
        write_u64(self.key(key), n);
        self
    }

    pub fn i64(&mut self, key: &str, n: i64) -> &mut Self {
        write_i64(self.key(key), n);
        self
    }

    /// Non-finite values are written as `null`.
    pub fn f64(&mut self, key: &str, x: f64) -> &mut Self {
        write_f64(self.key(key), x);
        self
    }

    pub fn bool(&mut self, key: &str, b: bool) -> &mut Self {
        write_bool(self.key(key), b);
        self
    }

    pub fn null(&mut self, key: &str) -> &mut Self {
        self.key(key).extend_from_slice(b"null");
        self
    }

    /// `raw_json` is copied verbatim; the caller guarantees it is valid
    /// JSON (e.g. a `Number::raw` or previously written output).
    pub fn raw(&mut self, key: &str, raw_json: &str) -> &mut Self {
        self.key(key).extend_from_slice(raw_json.as_bytes());
        self
    }

    pub fn value(&mut self, key: &str, value: &Value) -> &mut Self {
        write_value(self.key(key), value);
        self
    }

    /// Starts a nested object under `key`; it is closed when dropped.
    pub fn object(&mut self, key: &str) -> ObjectWriter<'_> {
        ObjectWriter::new(self.key(key))
    }

    /// Starts a nested array under `key`; it is closed when dropped.
    pub fn array(&mut self, key: &str) -> ArrayWriter<'_> {
        ArrayWriter::new(self.key(key))
    }

    /// Writes the closing `}` (same as dropping the writer).
    pub fn finish(self) {}
}

impl Drop for ObjectWriter<'_> {
    fn drop(&mut self) {
        self.out.push(b'}');
    }
}

/// Writes a JSON array element by element straight into a buffer.
/// `new` writes `[`; dropping the writer (or [`ArrayWriter::finish`])
/// writes `]`.
pub struct ArrayWriter<'a> {
    out: &'a mut Vec<u8>,
    empty: bool,
}

impl<'a> ArrayWriter<'a> {
    pub fn new(out: &'a mut Vec<u8>) -> Self {
        out.push(b'[');
        ArrayWriter { out, empty: true }
    }

    /// Writes the separator, if needed.
    fn next(&mut self) -> &mut Vec<u8> {
        if !self.empty {
            self.out.push(b',');
        }
        self.empty = false;
        self.out
    }

    pub fn str(&mut self, value: &str) -> &mut Self {
        write_str(self.next(), value);
        self
    }

    pub fn u64(&mut self, n: u64) -> &mut Self {
        write_u64(self.next(), n);
        self
    }

    pub fn i64(&mut self, n: i64) -> &mut Self {
        write_i64(self.next(), n);
        self
    }

    /// Non-finite values are written as `null`.
    pub fn f64(&mut self, x: f64) -> &mut Self {
        write_f64(self.next(), x);
        self
    }

    pub fn bool(&mut self, b: bool) -> &mut Self {
        write_bool(self.next(), b);
        self
    }

    pub fn null(&mut self) -> &mut Self {
        self.next().extend_from_slice(b"null");
        self
    }

    /// `raw_json` is copied verbatim; the caller guarantees it is valid JSON.
    pub fn raw(&mut self, raw_json: &str) -> &mut Self {
        self.next().extend_from_slice(raw_json.as_bytes());
        self
    }

    pub fn value(&mut self, value: &Value) -> &mut Self {
        write_value(self.next(), value);
        self
    }

    /// Starts a nested object; it is closed when dropped.
    pub fn object(&mut self) -> ObjectWriter<'_> {
        ObjectWriter::new(self.next())
    }

    /// Starts a nested array; it is closed when dropped.
    pub fn array(&mut self) -> ArrayWriter<'_> {
        ArrayWriter::new(self.next())
    }

    /// Writes the closing `]` (same as dropping the writer).
    pub fn finish(self) {}
}

impl Drop for ArrayWriter<'_> {
    fn drop(&mut self) {
        self.out.push(b']');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::parse;

    fn parsed(s: &str) -> Value {
        parse(s.as_bytes()).expect("valid JSON")
    }

    fn written(v: &Value) -> String {
        let mut out = Vec::new();
        write_value(&mut out, v);
        String::from_utf8(out).expect("writer output is UTF-8")
    }

    #[test]
    fn write_str_escapes() {
        let mut out = Vec::new();
        write_str(&mut out, "a\"b\\c\n\r\t\u{8}\u{c}\u{0}\u{1f}\u{7f}é😀/");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "\"a\\\"b\\\\c\\n\\r\\t\\b\\f\\u0000\\u001f\u{7f}é😀/\""
        );
        let mut out = Vec::new();
        write_str(&mut out, "");
        assert_eq!(out, b"\"\"");
    }

    #[test]
    fn write_str_round_trips_every_control_char() {
        let s: String = (0u8..0x80).map(char::from).collect();
        let mut out = Vec::new();
        write_str(&mut out, &s);
        assert_eq!(parse(&out), Ok(Value::String(s)));
    }

    #[test]
    fn write_value_round_trips() {
        let src = r#"{"id":-0,"n":[1e5,1.5E-3,123456789012345678901234567890],"s":"\u0000\"\\é😀","t":true,"f":false,"z":null,"o":{"a":[],"b":{}}}"#;
        let v = parsed(src);
        assert_eq!(written(&v), src);
        assert_eq!(parsed(&written(&v)), v);
        let spaced = parsed(" [ 1 , { \"a\" : \"\\n\" } ] ");
        assert_eq!(written(&spaced), r#"[1,{"a":"\n"}]"#);
    }

    #[test]
    fn builders() {
        let mut out = Vec::new();
        {
            let mut o = ObjectWriter::new(&mut out);
            o.str("jsonrpc", "2.0")
                .raw("id", "\"abc\"")
                .u64("u", u64::MAX)
                .i64("i", i64::MIN)
                .f64("f", 0.1)
                .f64("nan", f64::NAN)
                .f64("inf", f64::NEG_INFINITY)
                .bool("t", true)
                .bool("f2", false)
                .null("z")
                .value("v", &Value::Array(vec![Value::Null]));
            o.object("empty");
            {
                let mut a = o.array("arr");
                a.u64(1)
                    .i64(-2)
                    .f64(2.5)
                    .str("x")
                    .bool(true)
                    .null()
                    .raw("{}");
                a.value(&Value::Bool(false));
                a.object().str("k", "v");
                a.array().array();
            }
            o.object("q\"k").array("e");
        }
        let expected = concat!(
            r#"{"jsonrpc":"2.0","id":"abc","u":18446744073709551615,"i":-9223372036854775808,"#,
            r#""f":0.1,"nan":null,"inf":null,"t":true,"f2":false,"z":null,"v":[null],"#,
            r#""empty":{},"arr":[1,-2,2.5,"x",true,null,{},false,{"k":"v"},[[]]],"q\"k":{"e":[]}}"#,
        );
        assert_eq!(String::from_utf8(out.clone()).unwrap(), expected);
        assert!(parse(&out).is_ok());

        let mut out = Vec::new();
        ArrayWriter::new(&mut out).finish();
        ObjectWriter::new(&mut out).finish();
        assert_eq!(out, b"[]{}");
    }

    #[test]
    fn f64_written_round_trips() {
        for x in [
            0.0,
            -0.0,
            0.1,
            1e300,
            5e-324,
            f64::MAX,
            f64::MIN_POSITIVE,
            -1.5,
            1e21,
        ] {
            let mut out = Vec::new();
            ArrayWriter::new(&mut out).f64(x);
            let v = parse(&out).unwrap();
            let back = v.as_array().unwrap()[0].as_f64().unwrap();
            assert_eq!(back.to_bits(), x.to_bits(), "{x}");
        }
    }
}
