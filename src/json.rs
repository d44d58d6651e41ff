//! Strict, bounded JSON reader, and the [`Value`] it reads into.
//!
//! Why: the agent must not depend on serde at runtime, yet the MCP server
//! reads JSON-RPC requests from the network and every endpoint writes JSON.
//! This module is pure (no I/O) and never panics on any input.
//!
//! Reader ([`parse`]): strict RFC 8259. Exactly one value, optionally
//! surrounded by whitespace (space, tab, LF, CR). Rejected: trailing commas,
//! comments, leading zeros, `+1`, `.5`, `1.`, NaN/Infinity, raw control
//! characters in strings, invalid escapes, lone UTF-16 surrogates, invalid
//! UTF-8 anywhere in the input, and duplicate object keys.
//!
//! Limits (each a `pub const` below): input length ([`MAX_INPUT_LEN`]),
//! nesting depth ([`MAX_DEPTH`]; recursion is bounded by it, so no stack
//! overflow) and total number of values ([`MAX_VALUES`], bounds memory).
//!
//! Numbers are kept as their exact source text ([`Number::raw`]) so that a
//! JSON-RPC `id` can be echoed byte for byte; they are never out of range.
//!
//! The writer is `json_write.rs`; it depends on this module (for [`Value`]), never the other
//! way round.

use std::fmt;

/// Largest accepted input in bytes. MCP requests are small; this bounds the
/// work and memory of one `parse` before it starts.
pub const MAX_INPUT_LEN: usize = 1 << 20;

/// Deepest accepted nesting of arrays/objects (a top-level scalar has depth
/// 0, `[]` has depth 1). The parser recurses once per level, so this also
/// bounds its stack use. JSON-RPC/MCP messages need only a handful.
pub const MAX_DEPTH: usize = 64;

/// Most values (scalars, arrays and objects, not keys) in one document.
/// A `Value` takes tens of bytes plus heap, so `[0,0,...]` would otherwise
/// amplify 2 input bytes into ~60 bytes of memory per element.
pub const MAX_VALUES: usize = 1 << 16;

/// The bounds of one parse. [`parse`] uses [`MCP_LIMITS`]; a caller reading a larger trusted-
/// format document (Envoy's admin `/clusters`, `envoy.rs`) passes its own, each a named
/// `const` there. The depth bound also bounds recursion, so keep it small.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_input_len: usize,
    pub max_depth: usize,
    pub max_values: usize,
}

/// The limits of [`parse`]: [`MAX_INPUT_LEN`], [`MAX_DEPTH`], [`MAX_VALUES`].
pub const MCP_LIMITS: Limits = Limits {
    max_input_len: MAX_INPUT_LEN,
    max_depth: MAX_DEPTH,
    max_values: MAX_VALUES,
};

/// Why [`parse`] rejected its input. Every kind maps to JSON-RPC -32700;
/// the distinction is only for the error message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// The input is longer than [`MAX_INPUT_LEN`].
    InputTooLong { len: usize },
    /// The input is not valid UTF-8; `offset` is the first bad byte.
    InvalidUtf8 { offset: usize },
    /// The input ended before the value was complete.
    Truncated,
    /// The input is not JSON at byte `offset`.
    Syntax { offset: usize, what: &'static str },
    /// Nesting deeper than [`MAX_DEPTH`]; `offset` is the opening bracket.
    TooDeep { offset: usize },
    /// More than [`MAX_VALUES`] values; `offset` is where the next one starts.
    TooManyValues { offset: usize },
    /// An object has the same key twice; `offset` is the object's `{`.
    DuplicateKey { offset: usize },
}

impl Error {
    /// The byte offset the error refers to, if any.
    pub fn offset(&self) -> Option<usize> {
        match *self {
            Error::InputTooLong { .. } | Error::Truncated => None,
            Error::InvalidUtf8 { offset }
            | Error::Syntax { offset, .. }
            | Error::TooDeep { offset }
            | Error::TooManyValues { offset }
            | Error::DuplicateKey { offset } => Some(offset),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Error::InputTooLong { len } => {
                write!(f, "input is {len} bytes, limit is {MAX_INPUT_LEN}")
            }
            Error::InvalidUtf8 { offset } => write!(f, "invalid UTF-8 at byte {offset}"),
            Error::Truncated => f.write_str("unexpected end of input"),
            Error::Syntax { offset, what } => write!(f, "{what} at byte {offset}"),
            Error::TooDeep { offset } => {
                write!(f, "nesting deeper than {MAX_DEPTH} at byte {offset}")
            }
            Error::TooManyValues { offset } => {
                write!(f, "more than {MAX_VALUES} values at byte {offset}")
            }
            Error::DuplicateKey { offset } => {
                write!(f, "duplicate key in object at byte {offset}")
            }
        }
    }
}

impl std::error::Error for Error {}

/// A JSON number, kept as its exact (valid) JSON source text.
/// Equality is textual: `1` and `1.0` are different `Number`s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Number {
    raw: String,
}

impl Number {
    /// The number exactly as written in the source (or by `From`/`from_f64`).
    pub fn raw(&self) -> &str {
        &self.raw
    }

    /// The nearest `f64`, or `None` if the magnitude overflows `f64`.
    pub fn as_f64(&self) -> Option<f64> {
        self.raw.parse::<f64>().ok().filter(|x| x.is_finite())
    }

    /// The value if written as an integer (no `.`/exponent) that fits `i64`.
    pub fn as_i64(&self) -> Option<i64> {
        if self.is_integer_text() {
            self.raw.parse().ok()
        } else {
            None
        }
    }

    /// The value if written as an integer (no `.`/exponent) that fits `u64`.
    pub fn as_u64(&self) -> Option<u64> {
        if self.is_integer_text() {
            self.raw.parse().ok()
        } else {
            None
        }
    }

    /// A number for a finite `f64` (shortest round-tripping text), else `None`.
    pub fn from_f64(x: f64) -> Option<Number> {
        if x.is_finite() {
            Some(Number { raw: x.to_string() })
        } else {
            None
        }
    }

    fn is_integer_text(&self) -> bool {
        !self.raw.contains(['.', 'e', 'E'])
    }
}

impl From<u64> for Number {
    fn from(n: u64) -> Number {
        Number {
            raw: itoa::Buffer::new().format(n).to_owned(),
        }
    }
}

impl From<i64> for Number {
    fn from(n: i64) -> Number {
        Number {
            raw: itoa::Buffer::new().format(n).to_owned(),
        }
    }
}

/// A parsed JSON value. Objects keep their members in source order; keys
/// are unique (the parser rejects duplicates).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Number(Number),
    String(String),
    Array(Vec<Value>),
    Object(Vec<(String, Value)>),
}

impl Value {
    /// The member `key` if this is an object that has it.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.as_object()?
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    pub fn as_number(&self) -> Option<&Number> {
        match self {
            Value::Number(n) => Some(n),
            _ => None,
        }
    }

    /// See [`Number::as_f64`].
    pub fn as_f64(&self) -> Option<f64> {
        self.as_number()?.as_f64()
    }

    /// See [`Number::as_i64`].
    pub fn as_i64(&self) -> Option<i64> {
        self.as_number()?.as_i64()
    }

    /// See [`Number::as_u64`].
    pub fn as_u64(&self) -> Option<u64> {
        self.as_number()?.as_u64()
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    pub fn as_object(&self) -> Option<&[(String, Value)]> {
        match self {
            Value::Object(o) => Some(o),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// "null", "boolean", "number", "string", "array" or "object",
    /// for error messages such as "expected string, got number".
    pub fn kind_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        }
    }
}

// ---------------------------------------------------------------- reader

/// Parses exactly one JSON value from `input` (see the module docs for the
/// accepted grammar and limits). UTF-8 is checked before the syntax.
pub fn parse(input: &[u8]) -> Result<Value, Error> {
    parse_with_limits(input, &MCP_LIMITS)
}

/// [`parse`] under other bounds. The error variants are the same; their `Display` names the
/// default limits, so a caller with other limits words its own message.
pub fn parse_with_limits(input: &[u8], limits: &Limits) -> Result<Value, Error> {
    if input.len() > limits.max_input_len {
        return Err(Error::InputTooLong { len: input.len() });
    }
    let src = std::str::from_utf8(input).map_err(|e| Error::InvalidUtf8 {
        offset: e.valid_up_to(),
    })?;
    let mut p = Parser {
        src,
        bytes: input,
        pos: 0,
        values: 0,
        max_depth: limits.max_depth,
        max_values: limits.max_values,
    };
    p.skip_ws();
    let value = p.value(0)?;
    p.skip_ws();
    if p.pos < input.len() {
        return Err(p.syntax("unexpected data after the value"));
    }
    Ok(value)
}

struct Parser<'a> {
    src: &'a str,
    bytes: &'a [u8],
    pos: usize,
    /// Values started so far, checked against `max_values`.
    values: usize,
    max_depth: usize,
    max_values: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    /// The next byte, or `Truncated` at end of input.
    fn peek_some(&self) -> Result<u8, Error> {
        self.peek().ok_or(Error::Truncated)
    }

    fn syntax(&self, what: &'static str) -> Error {
        Error::Syntax {
            offset: self.pos,
            what,
        }
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    /// Consumes `want` or fails with `what`.
    fn expect(&mut self, want: u8, what: &'static str) -> Result<(), Error> {
        if self.peek_some()? == want {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.syntax(what))
        }
    }

    /// `src[start..end]`; both ends are at ASCII bytes, so this never fails
    /// in practice, but a bad index is reported instead of panicking.
    fn slice(&self, start: usize, end: usize) -> Result<&str, Error> {
        self.src.get(start..end).ok_or(Error::Syntax {
            offset: start,
            what: "internal error: not a character boundary",
        })
    }

    /// Parses one value; `depth` is the number of enclosing containers.
    fn value(&mut self, depth: usize) -> Result<Value, Error> {
        let b = self.peek_some()?;
        self.values += 1;
        if self.values > self.max_values {
            return Err(Error::TooManyValues { offset: self.pos });
        }
        match b {
            b'{' => self.object(depth + 1),
            b'[' => self.array(depth + 1),
            b'"' => self.string().map(Value::String),
            b't' => self.literal("true", Value::Bool(true)),
            b'f' => self.literal("false", Value::Bool(false)),
            b'n' => self.literal("null", Value::Null),
            b'-' | b'0'..=b'9' => self.number().map(Value::Number),
            _ => Err(self.syntax("expected a value")),
        }
    }

    fn literal(&mut self, word: &str, value: Value) -> Result<Value, Error> {
        for want in word.bytes() {
            self.expect(want, "invalid literal")?;
        }
        Ok(value)
    }

    fn object(&mut self, depth: usize) -> Result<Value, Error> {
        let start = self.pos;
        if depth > self.max_depth {
            return Err(Error::TooDeep { offset: start });
        }
        let mut members = Vec::new();
        self.items(b'}', "expected ',' or '}'", |p| {
            if p.peek_some()? != b'"' {
                return Err(p.syntax("expected a string key"));
            }
            let key = p.string()?;
            p.skip_ws();
            p.expect(b':', "expected ':'")?;
            p.skip_ws();
            members.push((key, p.value(depth)?));
            Ok(())
        })?;
        if has_duplicate_key(&members) {
            return Err(Error::DuplicateKey { offset: start });
        }
        Ok(Value::Object(members))
    }

    fn array(&mut self, depth: usize) -> Result<Value, Error> {
        if depth > self.max_depth {
            return Err(Error::TooDeep { offset: self.pos });
        }
        let mut items = Vec::new();
        self.items(b']', "expected ',' or ']'", |p| {
            items.push(p.value(depth)?);
            Ok(())
        })?;
        Ok(Value::Array(items))
    }

    /// The comma-separated items of an object or array, from its opening byte through
    /// `close`; `item` parses one (whitespace around it is skipped here). `what` is the error
    /// when neither `,` nor `close` follows an item.
    fn items(
        &mut self,
        close: u8,
        what: &'static str,
        mut item: impl FnMut(&mut Self) -> Result<(), Error>,
    ) -> Result<(), Error> {
        self.pos += 1; // '{' or '['
        self.skip_ws();
        if self.peek() == Some(close) {
            self.pos += 1;
            return Ok(());
        }
        loop {
            self.skip_ws();
            item(self)?;
            self.skip_ws();
            match self.peek_some()? {
                b',' => self.pos += 1,
                b if b == close => break,
                _ => return Err(self.syntax(what)),
            }
        }
        self.pos += 1; // close
        Ok(())
    }

    /// Parses a string starting at its opening quote.
    fn string(&mut self) -> Result<String, Error> {
        self.pos += 1; // '"'
        let mut out = String::new();
        let mut run = self.pos; // start of the pending unescaped run
        loop {
            match self.peek_some()? {
                b'"' => {
                    out.push_str(self.slice(run, self.pos)?);
                    self.pos += 1;
                    return Ok(out);
                }
                b'\\' => {
                    out.push_str(self.slice(run, self.pos)?);
                    self.pos += 1;
                    out.push(self.escape()?);
                    run = self.pos;
                }
                0x00..=0x1f => return Err(self.syntax("control character in string")),
                _ => self.pos += 1,
            }
        }
    }

    /// Parses the escape after a backslash.
    fn escape(&mut self) -> Result<char, Error> {
        let c = match self.peek_some()? {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => return self.unicode_escape(),
            _ => return Err(self.syntax("invalid escape")),
        };
        self.pos += 1;
        Ok(c)
    }

    /// Parses `uXXXX` (the `u` is next), plus a trailing surrogate's
    /// `\uXXXX` if the first one is a leading surrogate.
    fn unicode_escape(&mut self) -> Result<char, Error> {
        let start = self.pos - 1; // the backslash
        self.pos += 1; // 'u'
        let first = self.hex4()?;
        let code = match first {
            0xD800..=0xDBFF => {
                self.expect(b'\\', "lone leading surrogate in \\u escape")?;
                self.expect(b'u', "lone leading surrogate in \\u escape")?;
                let second = self.hex4()?;
                if !(0xDC00..=0xDFFF).contains(&second) {
                    return Err(Error::Syntax {
                        offset: start,
                        what: "lone leading surrogate in \\u escape",
                    });
                }
                0x1_0000 + ((first - 0xD800) << 10) + (second - 0xDC00)
            }
            0xDC00..=0xDFFF => {
                return Err(Error::Syntax {
                    offset: start,
                    what: "lone trailing surrogate in \\u escape",
                })
            }
            _ => first,
        };
        char::from_u32(code).ok_or(Error::Syntax {
            offset: start,
            what: "invalid \\u escape",
        })
    }

    fn hex4(&mut self) -> Result<u32, Error> {
        let mut n = 0;
        for _ in 0..4 {
            let digit = char::from(self.peek_some()?)
                .to_digit(16)
                .ok_or(self.syntax("invalid hex digit in \\u escape"))?;
            n = n * 16 + digit;
            self.pos += 1;
        }
        Ok(n)
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`
    fn number(&mut self) -> Result<Number, Error> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        if self.peek_some()? == b'0' {
            self.pos += 1;
            if matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(self.syntax("leading zero in number"));
            }
        } else {
            self.digits("expected a digit")?;
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            self.digits("expected a digit after '.'")?;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            self.digits("expected a digit in exponent")?;
        }
        Ok(Number {
            raw: self.slice(start, self.pos)?.to_owned(),
        })
    }

    /// One or more ASCII digits.
    fn digits(&mut self, what: &'static str) -> Result<(), Error> {
        if !self.peek_some()?.is_ascii_digit() {
            return Err(self.syntax(what));
        }
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.pos += 1;
        }
        Ok(())
    }
}

/// O(n log n) so a large object cannot make the check quadratic.
fn has_duplicate_key(members: &[(String, Value)]) -> bool {
    if members.len() < 2 {
        return false;
    }
    let mut keys: Vec<&str> = members.iter().map(|(k, _)| k.as_str()).collect();
    keys.sort_unstable();
    keys.windows(2).any(|w| w[0] == w[1])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> Value {
        match parse(s.as_bytes()) {
            Ok(v) => v,
            Err(e) => panic!("{s:?} rejected: {e}"),
        }
    }

    fn err(s: &[u8]) -> Error {
        match parse(s) {
            Ok(v) => panic!("{s:?} accepted as {v:?}"),
            Err(e) => e,
        }
    }

    fn is_syntax(e: Error) -> bool {
        matches!(e, Error::Syntax { .. })
    }

    fn num(s: &str) -> Number {
        match ok(s) {
            Value::Number(n) => n,
            v => panic!("{s:?} is {v:?}"),
        }
    }

    fn nested(depth: usize, open: &str, close: &str) -> String {
        format!("{}{}", open.repeat(depth), close.repeat(depth))
    }

    #[test]
    fn scalars_and_whitespace() {
        assert_eq!(ok("null"), Value::Null);
        assert_eq!(ok(" \t\r\ntrue\n"), Value::Bool(true));
        assert_eq!(ok("false"), Value::Bool(false));
        assert_eq!(ok(r#""hi""#), Value::String("hi".into()));
        assert_eq!(ok("[]"), Value::Array(vec![]));
        assert_eq!(ok("{ }"), Value::Object(vec![]));
    }

    #[test]
    fn containers_keep_order() {
        let v = ok(r#" { "b" : [1, {"x": null}] , "a": "s" } "#);
        let keys: Vec<&str> = v
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, _)| k.as_str())
            .collect();
        assert_eq!(keys, ["b", "a"]);
        assert_eq!(v.get("a").and_then(Value::as_str), Some("s"));
        let b = v.get("b").and_then(Value::as_array).unwrap();
        assert_eq!(b[0].as_i64(), Some(1));
        assert!(b[1].get("x").unwrap().is_null());
        assert_eq!(v.get("missing"), None);
        assert_eq!(b[0].get("a"), None);
    }

    #[test]
    fn accessors_and_kind_names() {
        let v = ok(r#"[null, true, 1, "s", [], {}]"#);
        let kinds: Vec<&str> = v.as_array().unwrap().iter().map(Value::kind_name).collect();
        assert_eq!(
            kinds,
            ["null", "boolean", "number", "string", "array", "object"]
        );
        assert_eq!(ok("true").as_bool(), Some(true));
        assert_eq!(ok("1").as_bool(), None);
        assert_eq!(ok("1").as_str(), None);
        assert!(!ok("0").is_null());
    }

    #[test]
    fn numbers_keep_raw_text() {
        for s in [
            "0",
            "-0",
            "1e5",
            "1.5E-3",
            "-12.50",
            "1E+2",
            "123456789012345678901234567890",
        ] {
            assert_eq!(num(s).raw(), s);
        }
        assert_eq!(num("-0").as_f64(), Some(-0.0));
        assert_eq!(num("-0").as_i64(), Some(0));
        assert_eq!(num("1e5").as_f64(), Some(100000.0));
        assert_eq!(num("1.5E-3").as_f64(), Some(0.0015));
        assert_eq!(num("1e400").as_f64(), None);
        assert_eq!(num("1e-400").as_f64(), Some(0.0));
    }

    #[test]
    fn number_integer_helpers() {
        assert_eq!(num("-9223372036854775808").as_i64(), Some(i64::MIN));
        assert_eq!(num("9223372036854775808").as_i64(), None);
        assert_eq!(num("18446744073709551615").as_u64(), Some(u64::MAX));
        assert_eq!(num("18446744073709551616").as_u64(), None);
        assert_eq!(num("-1").as_u64(), None);
        assert_eq!(num("1.0").as_i64(), None);
        assert_eq!(num("1e2").as_u64(), None);
        assert_eq!(Number::from(42u64).raw(), "42");
        assert_eq!(Number::from(-42i64).raw(), "-42");
        assert_eq!(
            Number::from_f64(0.1).map(|n| n.raw().to_owned()),
            Some("0.1".into())
        );
        assert_eq!(Number::from_f64(f64::NAN), None);
        assert_eq!(Number::from_f64(f64::INFINITY), None);
    }

    #[test]
    fn bad_numbers() {
        for s in [
            "01",
            "-01",
            "00",
            ".5",
            "+1",
            "1.e3",
            "1e",
            "1e+",
            "-",
            "1.",
            "--1",
            "0x1",
            "1.5.",
            "NaN",
            "Infinity",
            "-Infinity",
        ] {
            let e = err(s.as_bytes());
            assert!(is_syntax(e) || e == Error::Truncated, "{s}: {e:?}");
        }
        assert_eq!(
            err(b"01"),
            Error::Syntax {
                offset: 1,
                what: "leading zero in number"
            }
        );
        assert_eq!(err(b"1."), Error::Truncated);
        assert_eq!(err(b"-"), Error::Truncated);
        assert!(is_syntax(err(b"[1.]")));
    }

    #[test]
    fn strings_and_escapes() {
        let v = ok(r#""a\"b\\c\/d\b\f\n\r\t\u0041\u00e9\u20AC""#);
        assert_eq!(v.as_str(), Some("a\"b\\c/d\u{8}\u{c}\n\r\tAé€"));
        assert_eq!(ok("\"é€😀\u{7f}\"").as_str(), Some("é€😀\u{7f}"));
        assert!(is_syntax(err(br#""\x""#)));
        assert!(is_syntax(err(br#""\u12G4""#)));
        assert!(is_syntax(err(br#""\U0041""#)));
        assert_eq!(err(br#""\u12"#), Error::Truncated);
        assert_eq!(err(b"\"abc"), Error::Truncated);
        assert_eq!(err(b"\"abc\\"), Error::Truncated);
    }

    #[test]
    fn control_characters_rejected_in_strings() {
        for b in 0u8..0x20 {
            let input = [b'"', b, b'"'];
            assert_eq!(
                err(&input),
                Error::Syntax {
                    offset: 1,
                    what: "control character in string"
                }
            );
        }
    }

    #[test]
    fn surrogate_pairs() {
        assert_eq!(ok(r#""\uD83D\uDE00""#).as_str(), Some("😀"));
        assert_eq!(ok(r#""\ud800\udc00""#).as_str(), Some("\u{10000}"));
        assert_eq!(ok(r#""\uDBFF\uDFFF""#).as_str(), Some("\u{10FFFF}"));
        for s in [
            r#""\uD83D""#,
            r#""\uD83Dx""#,
            r#""\uD83D\n""#,
            r#""\uD83D\u0041""#,
            r#""\uD83D\uD83D""#,
            r#""\uDE00""#,
            r#""\uDE00\uD83D""#,
        ] {
            assert!(is_syntax(err(s.as_bytes())), "{s}");
        }
        assert_eq!(err(br#""\uD83D"#), Error::Truncated);
        assert_eq!(err(br#""\uD83D\uDE"#), Error::Truncated);
    }

    #[test]
    fn invalid_utf8() {
        assert_eq!(err(b"\"a\xff\""), Error::InvalidUtf8 { offset: 2 });
        assert_eq!(err(b"\"\xed\xa0\x80\""), Error::InvalidUtf8 { offset: 1 }); // encoded surrogate
        assert_eq!(err(b"\"\xc3"), Error::InvalidUtf8 { offset: 1 });
        assert_eq!(err(b"\xef\xbb\xbfnull").offset(), Some(0)); // BOM is not whitespace
    }

    #[test]
    fn structural_errors() {
        for s in [
            "",
            " ",
            "[1,]",
            "{\"a\":1,}",
            "[,1]",
            "{,}",
            "[1 2]",
            "{\"a\" 1}",
            "{\"a\":}",
            "{1:2}",
            "{a:1}",
            "null null",
            "[1]]",
            "// c\n1",
            "/* c */ 1",
            "'a'",
            "tru",
            "nul",
            "truex",
            "nulL",
            "[",
            "{",
            "{\"a\"",
            "{\"a\":",
            "[1",
            "]",
            "}",
            "\u{a0}1",
        ] {
            let e = err(s.as_bytes());
            assert!(is_syntax(e) || e == Error::Truncated, "{s:?}: {e:?}");
        }
        assert_eq!(err(b""), Error::Truncated);
        assert_eq!(err(b"[1"), Error::Truncated);
        assert_eq!(err(b"tru"), Error::Truncated);
        assert_eq!(
            err(b"[1,]"),
            Error::Syntax {
                offset: 3,
                what: "expected a value"
            }
        );
        assert_eq!(
            err(b"1 x"),
            Error::Syntax {
                offset: 2,
                what: "unexpected data after the value"
            }
        );
    }

    #[test]
    fn duplicate_keys_rejected() {
        assert_eq!(err(br#"{"a":1,"a":2}"#), Error::DuplicateKey { offset: 0 });
        assert_eq!(
            err(br#"[{"a":{"x":1,"y":2,"x":3}}]"#),
            Error::DuplicateKey { offset: 6 }
        );
        // Same key text via an escape is still a duplicate.
        assert_eq!(
            err(br#"{"a":1,"\u0061":2}"#),
            Error::DuplicateKey { offset: 0 }
        );
        // The same key in different objects is fine.
        ok(r#"[{"a":1},{"a":2,"b":{"a":3}}]"#);
    }

    #[test]
    fn depth_limit() {
        ok(&nested(MAX_DEPTH, "[", "]"));
        ok(&nested(MAX_DEPTH, "{\"k\":", "}").replace(":}", ":null}"));
        let mut mixed = "[{\"k\":".repeat(MAX_DEPTH / 2);
        mixed.push('1');
        mixed.push_str(&"}]".repeat(MAX_DEPTH / 2));
        ok(&mixed);

        let deep = nested(MAX_DEPTH + 1, "[", "]");
        assert_eq!(err(deep.as_bytes()), Error::TooDeep { offset: MAX_DEPTH });
        let deep = nested(MAX_DEPTH + 1, "{\"k\":", "}");
        assert_eq!(
            err(deep.as_bytes()),
            Error::TooDeep {
                offset: MAX_DEPTH * 5
            }
        );
        // Far beyond the limit: an error, not a stack overflow.
        let very_deep = "[".repeat(MAX_INPUT_LEN);
        assert_eq!(
            err(very_deep.as_bytes()),
            Error::TooDeep { offset: MAX_DEPTH }
        );
    }

    #[test]
    fn size_limits() {
        let long = vec![b' '; MAX_INPUT_LEN + 1];
        assert_eq!(
            err(&long),
            Error::InputTooLong {
                len: MAX_INPUT_LEN + 1
            }
        );
        let mut at_limit = vec![b' '; MAX_INPUT_LEN];
        at_limit[0] = b'0';
        ok(std::str::from_utf8(&at_limit).unwrap());

        // The outer array plus MAX_VALUES - 1 elements is exactly the limit.
        let fits = format!("[{}0]", "0,".repeat(MAX_VALUES - 2));
        assert_eq!(
            ok(&fits).as_array().map(<[Value]>::len),
            Some(MAX_VALUES - 1)
        );
        let over = format!("[{}0]", "0,".repeat(MAX_VALUES - 1));
        assert_eq!(
            err(over.as_bytes()),
            Error::TooManyValues {
                offset: 1 + 2 * (MAX_VALUES - 1)
            }
        );
    }

    #[test]
    fn error_display_and_offset() {
        let cases = [
            (
                Error::InputTooLong { len: 5 },
                "input is 5 bytes, limit is 1048576",
                None,
            ),
            (
                Error::InvalidUtf8 { offset: 3 },
                "invalid UTF-8 at byte 3",
                Some(3),
            ),
            (Error::Truncated, "unexpected end of input", None),
            (
                Error::Syntax {
                    offset: 4,
                    what: "expected ':'",
                },
                "expected ':' at byte 4",
                Some(4),
            ),
            (
                Error::TooDeep { offset: 64 },
                "nesting deeper than 64 at byte 64",
                Some(64),
            ),
            (
                Error::TooManyValues { offset: 9 },
                "more than 65536 values at byte 9",
                Some(9),
            ),
            (
                Error::DuplicateKey { offset: 0 },
                "duplicate key in object at byte 0",
                Some(0),
            ),
        ];
        for (e, text, offset) in cases {
            assert_eq!(e.to_string(), text);
            assert_eq!(e.offset(), offset);
        }
    }
}
