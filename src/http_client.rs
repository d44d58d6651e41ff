//! A sans-IO HTTP/1.1 client session: one `GET`, bytes in, one response (or one error) out.
//!
//! Why: the agent reads Envoy's admin interface (`envoy_admin.rs`) on its one mio loop, with
//! no async runtime and no HTTP crate. This file does no I/O and reads no clock: the driver
//! writes [`Session::output`] to its socket, feeds what it reads to [`Session::receive`] and
//! end of stream to [`Session::eof`], and owns the deadline. Tests drive it from byte scripts.
//!
//! What it accepts: a status line `HTTP/1.x CODE reason`, header lines ending in CRLF (a bare
//! LF is tolerated, as RFC 9112 allows), interim `1xx` heads skipped, then a body framed by
//! `Transfer-Encoding: chunked` (chunk extensions ignored, trailers read and dropped), by
//! `Content-Length`, or by the end of the stream. Only status 200 is a success: any other
//! ends the session at the head, unread. Rejected with a precise [`Error`]: a head over
//! [`MAX_HEAD_BYTES`] or with more than [`MAX_HEADERS`] lines, a malformed status line or
//! header, conflicting or non-numeric `Content-Length`, a transfer coding other than
//! `chunked`, a body over the caller's limit (at once when `Content-Length` announces it), a
//! bad chunk-size line (over [`MAX_CHUNK_LINE_BYTES`]), trailers over [`MAX_TRAILER_BYTES`],
//! and a stream that ends before the body does.
//!
//! Memory: the head is kept until parsed (at most `MAX_HEAD_BYTES`), the body up to the
//! caller's `max_body`; nothing else grows with the input.

use std::fmt;

/// Largest response head (status line and headers). Envoy's admin heads are ~200 bytes;
/// 16 KiB is what common servers accept for a request head.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Most header lines in one head; Envoy sends about eight.
pub const MAX_HEADERS: usize = 64;
/// Longest chunk-size line (hex size, extensions, CRLF). 16 hex digits plus room for a
/// short extension; anything longer is not a size line.
pub const MAX_CHUNK_LINE_BYTES: usize = 1024;
/// Most bytes of trailer lines after the last chunk; Envoy sends none.
pub const MAX_TRAILER_BYTES: usize = 16 * 1024;
/// Most interim (1xx) heads skipped before the final one: a server looping on `100 Continue`
/// would otherwise keep the session alive forever within its deadline.
pub const MAX_INTERIM_HEADS: usize = 8;

/// Why a response was not read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// The stream ended before the response did; `at` says where.
    Truncated { at: &'static str },
    /// The head is not HTTP/1.x.
    BadHead(String),
    /// The head is over [`MAX_HEAD_BYTES`] or [`MAX_HEADERS`].
    HeadTooLarge,
    /// A final status other than 200.
    Status(u16),
    /// The body is (or is announced) larger than the caller's limit.
    BodyTooLarge { limit: usize },
    /// A chunked body is malformed.
    BadChunk(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Truncated { at } => write!(f, "connection closed {at}"),
            Error::BadHead(what) => write!(f, "not an HTTP/1.1 response: {what}"),
            Error::HeadTooLarge => write!(
                f,
                "response head over {MAX_HEAD_BYTES} bytes or {MAX_HEADERS} lines"
            ),
            Error::Status(code) => write!(f, "HTTP status {code}, expected 200"),
            Error::BodyTooLarge { limit } => write!(f, "response body over {limit} bytes"),
            Error::BadChunk(what) => write!(f, "bad chunked body: {what}"),
        }
    }
}

/// A complete 200 response.
#[derive(Debug, PartialEq, Eq)]
pub struct Response {
    pub body: Vec<u8>,
    /// The body came chunked (for logs and tests).
    pub chunked: bool,
}

/// What feeding bytes gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    /// More bytes are needed.
    More,
    Done(Response),
    Failed(Error),
}

#[derive(Debug)]
enum Framing {
    Length { remaining: usize },
    Chunked(Chunk),
    UntilClose,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Reading a chunk-size line into `line`.
    Size,
    /// Reading chunk data.
    Data { remaining: usize },
    /// The CRLF after chunk data.
    DataEnd,
    /// Trailer lines after the last chunk, until an empty line.
    Trailers { bytes: usize },
}

#[derive(Debug)]
enum State {
    Head {
        interim: usize,
    },
    Body(Framing),
    /// Done or failed: further bytes are ignored.
    Over,
}

/// One `GET` and its response.
#[derive(Debug)]
pub struct Session {
    request: Vec<u8>,
    written: usize,
    state: State,
    /// The unparsed head, or the current chunk-size / trailer line.
    line: Vec<u8>,
    body: Vec<u8>,
    max_body: usize,
    received: usize,
}

impl Session {
    /// A `GET path` to `host` (the `Host` header, e.g. `127.0.0.1:9901`), accepting a body of
    /// at most `max_body` bytes. The request asks the server to close after the response.
    pub fn get(host: &str, path: &str, max_body: usize) -> Session {
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: sigma-agent-lite/{}\r\n\
             Accept: application/json\r\nConnection: close\r\n\r\n",
            env!("CARGO_PKG_VERSION")
        )
        .into_bytes();
        Session {
            request,
            written: 0,
            state: State::Head { interim: 0 },
            line: Vec::new(),
            body: Vec::new(),
            max_body,
            received: 0,
        }
    }

    /// Request bytes still to be written.
    pub fn output(&self) -> &[u8] {
        &self.request[self.written.min(self.request.len())..]
    }

    /// `n` bytes of [`Session::output`] were written.
    pub fn wrote(&mut self, n: usize) {
        self.written = (self.written + n).min(self.request.len());
    }

    /// Bytes received so far (head and body, framing included).
    pub fn received(&self) -> usize {
        self.received
    }

    /// Feeds bytes read from the socket.
    pub fn receive(&mut self, mut data: &[u8]) -> Progress {
        self.received = self.received.saturating_add(data.len());
        loop {
            let step = match &mut self.state {
                State::Over => return Progress::More,
                State::Head { .. } => self.head(data),
                State::Body(_) => self.body(data),
            };
            match step {
                Step::Need => return Progress::More,
                Step::Continue(consumed) => data = &data[consumed..],
                Step::Finish(progress) => {
                    self.state = State::Over;
                    return progress;
                }
            }
        }
    }

    /// The peer closed the stream (a read returned 0).
    pub fn eof(&mut self) -> Progress {
        let progress = match &self.state {
            State::Over => return Progress::More,
            State::Head { .. } => Progress::Failed(Error::Truncated {
                at: if self.line.is_empty() && self.received == 0 {
                    "before any response"
                } else {
                    "in the response head"
                },
            }),
            State::Body(Framing::UntilClose) => self.done(false),
            State::Body(Framing::Length { .. }) => Progress::Failed(Error::Truncated {
                at: "before Content-Length bytes of body",
            }),
            State::Body(Framing::Chunked(_)) => Progress::Failed(Error::Truncated {
                at: "before the last chunk",
            }),
        };
        self.state = State::Over;
        progress
    }

    fn done(&mut self, chunked: bool) -> Progress {
        Progress::Done(Response {
            body: std::mem::take(&mut self.body),
            chunked,
        })
    }

    /// Accumulates the head; parses it once complete.
    fn head(&mut self, data: &[u8]) -> Step {
        let before = self.line.len();
        // Look for the end of the head in the old tail plus the new bytes.
        let room = MAX_HEAD_BYTES.saturating_sub(before);
        let take = data.len().min(room);
        self.line.extend_from_slice(&data[..take]);
        let search_from = before.saturating_sub(3);
        let Some(end) = head_end(&self.line, search_from) else {
            if self.line.len() >= MAX_HEAD_BYTES {
                return Step::Finish(Progress::Failed(Error::HeadTooLarge));
            }
            return Step::Need;
        };
        let head = std::mem::take(&mut self.line);
        let consumed = end - before; // bytes of `data` that belonged to the head
        match parse_head(&head[..end]) {
            Err(e) => Step::Finish(Progress::Failed(e)),
            Ok(Head::Interim) => {
                let State::Head { interim } = &mut self.state else {
                    return Step::Need;
                };
                *interim += 1;
                if *interim > MAX_INTERIM_HEADS {
                    return Step::Finish(Progress::Failed(Error::BadHead(format!(
                        "more than {MAX_INTERIM_HEADS} interim (1xx) responses"
                    ))));
                }
                Step::Continue(consumed)
            }
            Ok(Head::Final { status, framing }) => {
                if status != 200 {
                    return Step::Finish(Progress::Failed(Error::Status(status)));
                }
                if let Framing::Length { remaining } = framing {
                    if remaining > self.max_body {
                        return Step::Finish(Progress::Failed(Error::BodyTooLarge {
                            limit: self.max_body,
                        }));
                    }
                    if remaining == 0 {
                        return Step::Finish(self.done(false));
                    }
                }
                self.state = State::Body(framing);
                Step::Continue(consumed)
            }
        }
    }

    fn body(&mut self, data: &[u8]) -> Step {
        if data.is_empty() {
            return Step::Need;
        }
        let State::Body(framing) = &mut self.state else {
            return Step::Need;
        };
        match framing {
            Framing::UntilClose => {
                if self.body.len() + data.len() > self.max_body {
                    return Step::Finish(Progress::Failed(Error::BodyTooLarge {
                        limit: self.max_body,
                    }));
                }
                self.body.extend_from_slice(data);
                Step::Continue(data.len())
            }
            Framing::Length { remaining } => {
                let take = data.len().min(*remaining);
                self.body.extend_from_slice(&data[..take]);
                *remaining -= take;
                if *remaining == 0 {
                    // Bytes after the body (there should be none with `close`) are ignored.
                    return Step::Finish(self.done(false));
                }
                Step::Continue(take)
            }
            Framing::Chunked(chunk) => {
                let chunk = *chunk;
                self.chunked(chunk, data)
            }
        }
    }

    /// One step of the chunked decoder over `data` (not empty).
    fn chunked(&mut self, chunk: Chunk, data: &[u8]) -> Step {
        let set = |s: &mut Session, c: Chunk| s.state = State::Body(Framing::Chunked(c));
        match chunk {
            Chunk::Size => {
                let Some(nl) = data.iter().position(|&b| b == b'\n') else {
                    if self.line.len() + data.len() > MAX_CHUNK_LINE_BYTES {
                        return bad_chunk(format!(
                            "chunk-size line over {MAX_CHUNK_LINE_BYTES} bytes"
                        ));
                    }
                    self.line.extend_from_slice(data);
                    return Step::Continue(data.len());
                };
                if self.line.len() + nl > MAX_CHUNK_LINE_BYTES {
                    return bad_chunk(format!("chunk-size line over {MAX_CHUNK_LINE_BYTES} bytes"));
                }
                self.line.extend_from_slice(&data[..nl]);
                let line = std::mem::take(&mut self.line);
                let size = match chunk_size(&line) {
                    Ok(size) => size,
                    Err(e) => return bad_chunk(e),
                };
                if size == 0 {
                    set(self, Chunk::Trailers { bytes: 0 });
                } else if self.body.len().saturating_add(size) > self.max_body {
                    return Step::Finish(Progress::Failed(Error::BodyTooLarge {
                        limit: self.max_body,
                    }));
                } else {
                    set(self, Chunk::Data { remaining: size });
                }
                Step::Continue(nl + 1)
            }
            Chunk::Data { remaining } => {
                let take = data.len().min(remaining);
                self.body.extend_from_slice(&data[..take]);
                let left = remaining - take;
                set(
                    self,
                    if left == 0 {
                        Chunk::DataEnd
                    } else {
                        Chunk::Data { remaining: left }
                    },
                );
                Step::Continue(take)
            }
            Chunk::DataEnd => {
                // CRLF (or a bare LF) after the data; the CR may come alone in one read.
                match data[0] {
                    b'\r' if self.line.is_empty() => {
                        self.line.push(b'\r');
                        Step::Continue(1)
                    }
                    b'\n' => {
                        self.line.clear();
                        set(self, Chunk::Size);
                        Step::Continue(1)
                    }
                    _ => bad_chunk("chunk data not followed by CRLF".into()),
                }
            }
            Chunk::Trailers { bytes } => {
                let Some(nl) = data.iter().position(|&b| b == b'\n') else {
                    if bytes + data.len() > MAX_TRAILER_BYTES {
                        return bad_chunk(format!("trailers over {MAX_TRAILER_BYTES} bytes"));
                    }
                    self.line.extend_from_slice(data);
                    set(
                        self,
                        Chunk::Trailers {
                            bytes: bytes + data.len(),
                        },
                    );
                    return Step::Continue(data.len());
                };
                if bytes + nl > MAX_TRAILER_BYTES {
                    return bad_chunk(format!("trailers over {MAX_TRAILER_BYTES} bytes"));
                }
                self.line.extend_from_slice(&data[..nl]);
                let empty = matches!(self.line.as_slice(), [] | [b'\r']);
                self.line.clear();
                if empty {
                    return Step::Finish(self.done(true));
                }
                set(
                    self,
                    Chunk::Trailers {
                        bytes: bytes + nl + 1,
                    },
                );
                Step::Continue(nl + 1)
            }
        }
    }
}

enum Step {
    Need,
    /// This many bytes of the input were used; go on with the rest.
    Continue(usize),
    Finish(Progress),
}

fn bad_chunk(what: String) -> Step {
    Step::Finish(Progress::Failed(Error::BadChunk(what)))
}

/// The end of a head (index just past the empty line) in `buf`, searching from `from`.
fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while i < buf.len() {
        if buf[i] == b'\n' {
            // "\n\n" or "\n\r\n"
            if buf.get(i + 1) == Some(&b'\n') {
                return Some(i + 2);
            }
            if buf.get(i + 1) == Some(&b'\r') && buf.get(i + 2) == Some(&b'\n') {
                return Some(i + 3);
            }
        }
        i += 1;
    }
    None
}

enum Head {
    Interim,
    Final { status: u16, framing: Framing },
}

/// Parses a complete head (status line, headers, the empty line).
fn parse_head(head: &[u8]) -> Result<Head, Error> {
    let text =
        std::str::from_utf8(head).map_err(|_| Error::BadHead("the head is not UTF-8".into()))?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let status_line = lines.next().unwrap_or("");
    let status = parse_status_line(status_line)?;
    if (100..200).contains(&status) {
        if status == 101 {
            return Err(Error::BadHead("101 Switching Protocols".into()));
        }
        return Ok(Head::Interim);
    }
    let mut length: Option<usize> = None;
    let mut chunked = false;
    let mut count = 0;
    for line in lines {
        if line.is_empty() {
            break;
        }
        count += 1;
        if count > MAX_HEADERS {
            return Err(Error::HeadTooLarge);
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(Error::BadHead(format!(
                "header line without ':' ({})",
                clip(line)
            )));
        };
        if name.is_empty() || name.bytes().any(|b| b.is_ascii_whitespace()) {
            return Err(Error::BadHead(format!("bad header name ({})", clip(name))));
        }
        let value = value.trim_matches([' ', '\t']);
        if name.eq_ignore_ascii_case("content-length") {
            if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                return Err(Error::BadHead(format!(
                    "Content-Length '{}' is not a number",
                    clip(value)
                )));
            }
            // Too many digits for usize: certainly over any body limit.
            let n = value.parse::<usize>().unwrap_or(usize::MAX);
            if length.is_some_and(|l| l != n) {
                return Err(Error::BadHead(
                    "two different Content-Length headers".into(),
                ));
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            let last = value.rsplit(',').next().unwrap_or("").trim();
            if !last.eq_ignore_ascii_case("chunked") {
                return Err(Error::BadHead(format!(
                    "Transfer-Encoding '{}' is not supported (only chunked)",
                    clip(value)
                )));
            }
            chunked = true;
        }
    }
    // Transfer-Encoding wins over Content-Length (RFC 9112 6.3).
    let framing = match (chunked, length) {
        (true, _) => Framing::Chunked(Chunk::Size),
        (false, Some(remaining)) => Framing::Length { remaining },
        (false, None) => Framing::UntilClose,
    };
    Ok(Head::Final { status, framing })
}

fn parse_status_line(line: &str) -> Result<u16, Error> {
    let mut parts = line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    if !matches!(version, "HTTP/1.1" | "HTTP/1.0") {
        return Err(Error::BadHead(format!(
            "status line '{}' is not HTTP/1.x",
            clip(line)
        )));
    }
    let code = parts.next().unwrap_or("");
    if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::BadHead(format!(
            "status code '{}' is not three digits",
            clip(code)
        )));
    }
    code.parse()
        .map_err(|_| Error::BadHead("bad status code".into()))
}

/// A chunk-size line: hex digits, optional `;extensions`, optional trailing CR/whitespace.
fn chunk_size(line: &[u8]) -> Result<usize, String> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let size = match line.iter().position(|&b| b == b';') {
        Some(at) => &line[..at],
        None => line,
    };
    let size = size.trim_ascii();
    if size.is_empty() || size.len() > 16 || !size.iter().all(u8::is_ascii_hexdigit) {
        return Err(format!(
            "chunk size '{}' is not hexadecimal",
            clip(&String::from_utf8_lossy(size))
        ));
    }
    let text = std::str::from_utf8(size).map_err(|_| "chunk size is not ASCII".to_string())?;
    usize::from_str_radix(text, 16).map_err(|_| format!("chunk size '{text}' is too large"))
}

/// At most 64 characters of peer text in an error message.
fn clip(s: &str) -> String {
    const MAX_ECHOED: usize = 64;
    let mut end = s.len().min(MAX_ECHOED);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].escape_debug().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: usize = 1000;

    /// Feeds `script` in pieces of `step` bytes, then EOF if `close`; returns the outcome.
    fn run(script: &[u8], step: usize, close: bool) -> Progress {
        let mut s = Session::get("127.0.0.1:9901", "/clusters?format=json", LIMIT);
        for piece in script.chunks(step.max(1)) {
            match s.receive(piece) {
                Progress::More => {}
                other => return other,
            }
        }
        if close {
            s.eof()
        } else {
            Progress::More
        }
    }

    /// Every split of the script gives the same outcome.
    fn all_splits(script: &[u8], close: bool) -> Progress {
        let whole = run(script, script.len(), close);
        for step in [1, 2, 3, 7, 64] {
            assert_eq!(run(script, step, close), whole, "step {step}");
        }
        whole
    }

    fn body(p: Progress) -> (Vec<u8>, bool) {
        match p {
            Progress::Done(r) => (r.body, r.chunked),
            other => panic!("not done: {other:?}"),
        }
    }

    #[test]
    fn request_is_a_closing_get() {
        let mut s = Session::get("127.0.0.1:9901", "/clusters?format=json", LIMIT);
        let req = String::from_utf8(s.output().to_vec()).unwrap();
        assert!(req.starts_with("GET /clusters?format=json HTTP/1.1\r\nHost: 127.0.0.1:9901\r\n"));
        assert!(req.contains("\r\nConnection: close\r\n"));
        assert!(req.ends_with("\r\n\r\n"));
        let n = s.output().len();
        s.wrote(5);
        assert_eq!(s.output().len(), n - 5);
        s.wrote(n);
        assert!(s.output().is_empty());
    }

    #[test]
    fn content_length_body() {
        let script =
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(body(all_splits(script, false)), (b"hello".to_vec(), false));
        // Bytes after the body are ignored.
        let extra = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhiJUNK";
        assert_eq!(body(all_splits(extra, false)), (b"hi".to_vec(), false));
        let empty = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(body(all_splits(empty, false)), (vec![], false));
    }

    #[test]
    fn chunked_body_with_extensions_and_trailers() {
        let script = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                       4\r\n{\"a\"\r\n9;ext=1\r\n:[1,2,3]}\r\n0\r\nX-Trailer: 1\r\n\r\n";
        assert_eq!(
            body(all_splits(script, false)),
            (b"{\"a\":[1,2,3]}".to_vec(), true)
        );
        // Bare LFs, upper-case hex, Content-Length ignored under chunked.
        let lf = b"HTTP/1.1 200 OK\nContent-Length: 99\nTransfer-Encoding: chunked\n\n1F\n0123456789abcdef0123456789abcde\n0\n\n";
        assert_eq!(
            body(all_splits(lf, false)).0,
            b"0123456789abcdef0123456789abcde".to_vec()
        );
    }

    #[test]
    fn body_until_close_and_interim_heads() {
        let script = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 200 OK\r\n\r\nuntil close";
        assert_eq!(
            body(all_splits(script, true)),
            (b"until close".to_vec(), false)
        );
        assert_eq!(all_splits(script, false), Progress::More);
    }

    #[test]
    fn truncations_are_errors() {
        let cases: [(&[u8], &str); 5] = [
            (b"", "before any response"),
            (b"HTTP/1.1 200 OK\r\nContent-", "in the response head"),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
                "Content-Length",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
                "last chunk",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n",
                "last chunk",
            ),
        ];
        for (script, want) in cases {
            match all_splits(script, true) {
                Progress::Failed(Error::Truncated { at }) => assert!(at.contains(want), "{at}"),
                other => panic!("{script:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn limits_and_garbage() {
        let fail = |script: &[u8]| match all_splits(script, true) {
            Progress::Failed(e) => e,
            other => panic!("{script:?}: {other:?}"),
        };
        assert_eq!(
            fail(b"HTTP/1.1 200 OK\r\nContent-Length: 1001\r\n\r\n"),
            Error::BodyTooLarge { limit: LIMIT }
        );
        assert_eq!(
            fail(b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n"),
            Error::BodyTooLarge { limit: LIMIT }
        );
        let mut close = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
        close.extend(vec![b'x'; LIMIT + 1]);
        assert_eq!(fail(&close), Error::BodyTooLarge { limit: LIMIT });
        assert_eq!(
            fail(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3E9\r\n"),
            Error::BodyTooLarge { limit: LIMIT }
        );
        assert_eq!(
            fail(b"HTTP/1.1 503 Unavailable\r\n\r\n"),
            Error::Status(503)
        );
        assert!(matches!(
            fail(b"SSH-2.0-OpenSSH_9.2\r\n\r\n"),
            Error::BadHead(_)
        ));
        assert!(matches!(
            fail(b"\x00\x01\x02garbage\n\n"),
            Error::BadHead(_)
        ));
        assert!(matches!(
            fail(b"HTTP/1.1 2000 OK\r\n\r\n"),
            Error::BadHead(_)
        ));
        assert!(matches!(
            fail(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            Error::BadHead(_)
        ));
        assert!(matches!(
            fail(b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n"),
            Error::BadHead(_)
        ));
        assert!(matches!(
            fail(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n"),
            Error::BadHead(_)
        ));
        assert!(matches!(
            fail(b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n"),
            Error::BadHead(_)
        ));
        assert!(matches!(
            fail(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"),
            Error::BadChunk(_)
        ));
        assert!(matches!(
            fail(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab\r\n"),
            Error::BadChunk(_)
        ));
        let mut long_size = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1;".to_vec();
        long_size.extend(vec![b'x'; MAX_CHUNK_LINE_BYTES]);
        assert!(matches!(fail(&long_size), Error::BadChunk(_)));
        let mut trailers = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n".to_vec();
        trailers.extend(b"X: y\r\n".repeat(MAX_TRAILER_BYTES / 6 + 1));
        assert!(matches!(fail(&trailers), Error::BadChunk(_)));
        let head = vec![b'a'; MAX_HEAD_BYTES + 10];
        assert_eq!(fail(&head), Error::HeadTooLarge);
        let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
        many.extend(b"X: y\r\n".repeat(MAX_HEADERS + 1));
        many.extend(b"\r\n");
        assert_eq!(fail(&many), Error::HeadTooLarge);
        let interim = b"HTTP/1.1 100 Continue\r\n\r\n".repeat(MAX_INTERIM_HEADS + 1);
        assert!(matches!(fail(&interim), Error::BadHead(_)));
    }

    #[test]
    fn bytes_after_the_end_are_ignored() {
        let mut s = Session::get("h", "/", LIMIT);
        let done = s.receive(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx");
        assert!(matches!(done, Progress::Done(_)));
        assert_eq!(s.receive(b"more"), Progress::More);
        assert_eq!(s.eof(), Progress::More);
    }
}
