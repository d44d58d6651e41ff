//! HTTP/1.1 for `/metrics`, `/healthz` and `/`: a pure request-head parser, the responses,
//! and the per-connection state the event loop drives.
//!
//! Only GET and HEAD of three fixed paths are served, so a request body is never needed: a
//! request that announces one is answered and the connection closed (its bytes would
//! otherwise be read as the next request). Keep-alive (HTTP/1.1 default, HTTP/1.0 with
//! `Connection: keep-alive`) and `Connection: close` are honoured; pipelined requests are
//! answered one at a time, the next parsed only once the previous response is written, so a
//! client cannot make us buffer more than one response.
//!
//! Limits (named below): [`MAX_CONNECTIONS`], [`MAX_HEAD_BYTES`], [`IDLE_TIMEOUT`],
//! [`HEAD_TIMEOUT`], [`WRITE_TIMEOUT`].

use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use mio::net::TcpStream;

use crate::metrics::{self, ProcessStats};
use crate::snapshot::Snapshot;

/// Connections served at once. Prometheus needs one; 256 leaves room for curls and
/// dashboards while bounding memory (~8 KiB of head buffer each at most, plus the response
/// being written). Past it a new connection closes the least recently active one that is not
/// being written a response (see [`Conn::evictable`]): a kept-alive or silent connection costs
/// its owner a reconnect, where refusing the newcomer would let any 256 clients lock
/// Prometheus out for as long as they like.
pub const MAX_CONNECTIONS: usize = 256;
/// Largest request head (request line + headers): a scrape's is ~200 bytes; 8 KiB is what
/// common servers accept. Larger gets 431.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;
/// A connection with nothing to say for this long (before its first request, or between
/// keep-alive requests) is closed. Prometheus reuses its connection every scrape interval
/// and reconnects transparently.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Once a request head has started, it must be complete within this (slowloris bound).
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// A response that makes no progress for this long is abandoned (a peer that stopped reading);
/// every write that makes progress restarts it.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes of responses being written, all connections together, past which a new /metrics
/// scrape gets 503 instead of another rendered copy: a scrape of 10,000 routes is 2.5 MiB, so
/// 256 slow readers could otherwise hold 640 MiB on a 512 MiB host. 8 MiB lets ~30 scrapes of
/// 1,000 routes (or 3 of 10,000) be in flight at once; the unit's `MemoryMax` is 32 MiB.
pub const MAX_RESPONSE_BYTES_IN_FLIGHT: usize = 8 * 1024 * 1024;
/// Response buffers above this are freed after use, so one big scrape doesn't pin memory in
/// every keep-alive connection.
const KEEP_BUFFER_BYTES: usize = 64 * 1024;
/// Room reserved before a rendered body for the status line and headers, so the head can be
/// written in front of the body without moving it.
const HEAD_RESERVE: usize = 256;

const INDEX_HTML: &str = "<html><head><title>sigma-agent-lite</title></head><body>\
<h1>sigma-agent-lite</h1><p><a href=\"/metrics\">/metrics</a> \
<a href=\"/healthz\">/healthz</a></p></body></html>\n";

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Method {
    Get,
    Head,
    Other,
}

/// A parsed request head. Borrowed from the input buffer.
#[derive(Debug, PartialEq, Eq)]
pub struct Request<'a> {
    pub method: Method,
    /// The path without its query string.
    pub path: &'a str,
    /// The connection is to be closed after the response.
    pub close: bool,
}

/// The result of looking at the bytes received so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Parse<'a> {
    /// Need more bytes.
    Incomplete,
    /// A whole head, and its length in bytes (terminator included).
    Complete(Request<'a>, usize),
    /// Answer with this status and close.
    Error(u16),
}

/// Parses one request head from the start of `buf`. Pure.
///
/// RFC 9112 leniencies a server should have: empty lines before the request line are skipped
/// (§2.2), a bare LF ends a line as CRLF does (§2.2), and the absolute form of the target
/// (`GET http://host/metrics`, §3.2.2) is served by its path. Header values may carry obs-text
/// (bytes 0x80-0xFF, §5.5); any other control byte in a value (NUL, a bare CR...) is a 400.
pub fn parse_head(buf: &[u8]) -> Parse<'_> {
    let window = &buf[..buf.len().min(MAX_HEAD_BYTES)];
    // Empty lines before the request line: skipped, all of them (the head limit bounds them).
    let mut start = 0;
    loop {
        match &window[start..] {
            [b'\r', b'\n', ..] => start += 2,
            [b'\n', ..] => start += 1,
            _ => break,
        }
    }
    let Some((end, terminator)) = head_end(&window[start..]) else {
        return if buf.len() >= MAX_HEAD_BYTES {
            Parse::Error(431)
        } else {
            Parse::Incomplete
        };
    };
    let mut lines = window[start..start + end]
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let Ok(request_line) = std::str::from_utf8(lines.next().unwrap_or(b"")) else {
        return Parse::Error(400);
    };
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Parse::Error(400);
    };
    if method.is_empty() || !method.bytes().all(is_token_byte) {
        return Parse::Error(400);
    }
    if target.bytes().any(|b| b <= b' ' || b >= 0x7f) {
        return Parse::Error(400);
    }
    let Some(target) = origin_path(target) else {
        return Parse::Error(400);
    };
    let http11 = match version {
        "HTTP/1.1" => true,
        "HTTP/1.0" => false,
        v if v.starts_with("HTTP/") => return Parse::Error(505),
        _ => return Parse::Error(400),
    };
    let mut close = !http11;
    let mut host = false;
    let mut body = false;
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return Parse::Error(400);
        };
        let (name, value) = (&line[..colon], trim_ows(&line[colon + 1..]));
        if name.is_empty() || !name.iter().copied().all(is_token_byte) {
            return Parse::Error(400); // includes obsolete line folding and space before ':'
        }
        if !value.iter().all(|&b| is_field_value_byte(b)) {
            return Parse::Error(400);
        }
        // The values looked at are ASCII; obs-text in them means nothing to us.
        let value = std::str::from_utf8(value).unwrap_or("");
        let name = std::str::from_utf8(name).unwrap_or("");
        if name.eq_ignore_ascii_case("host") {
            if host {
                return Parse::Error(400);
            }
            host = true;
        } else if name.eq_ignore_ascii_case("connection") {
            for option in value.split(',').map(str::trim) {
                if option.eq_ignore_ascii_case("close") {
                    close = true;
                } else if option.eq_ignore_ascii_case("keep-alive") && !http11 {
                    close = false;
                }
            }
        } else if name.eq_ignore_ascii_case("content-length") {
            match value.parse::<u64>() {
                Ok(0) => {}
                Ok(_) => body = true,
                Err(_) => return Parse::Error(400),
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            body = true;
        }
    }
    if http11 && !host {
        return Parse::Error(400); // RFC 9112 §3.2: a 1.1 request without Host gets 400
    }
    let method = match method {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        _ => Method::Other,
    };
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    Parse::Complete(
        Request {
            method,
            path,
            close: close || body,
        },
        start + end + terminator,
    )
}

/// Where the empty line that ends a head starts in `buf` (the head's lines are before it) and
/// how long it is with the line end before it (`\n\n`, `\n\r\n`), or None yet.
fn head_end(buf: &[u8]) -> Option<(usize, usize)> {
    let mut from = 0;
    while let Some(at) = buf[from..].iter().position(|&b| b == b'\n') {
        let lf = from + at;
        match &buf[lf + 1..] {
            [b'\n', ..] => return Some((lf, 2)),
            [b'\r', b'\n', ..] => return Some((lf, 3)),
            _ => from = lf + 1,
        }
    }
    None
}

/// The path (and query) of an origin-form target, or of an absolute-form one
/// (`http://host:port/path?q`; no path is `/`). None for any other form.
fn origin_path(target: &str) -> Option<&str> {
    if target.starts_with('/') {
        return Some(target);
    }
    let scheme_end = target.find("://")?;
    let scheme = &target[..scheme_end];
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return None;
    }
    let rest = &target[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    if authority_end == 0 {
        return None;
    }
    let path = &rest[authority_end..];
    if path.starts_with('/') {
        Some(path)
    } else {
        Some("/")
    }
}

/// Optional whitespace (SP, HTAB) trimmed from both ends.
fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// field-vchar, SP or HTAB (RFC 9110 §5.5): visible ASCII and obs-text; no other control byte.
fn is_field_value_byte(b: u8) -> bool {
    b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Error",
    }
}

/// Completes a response whose body is already in `out` after [`HEAD_RESERVE`] bytes of room:
/// writes the head into that room, right before the body (dropping the body for `head_only`),
/// and returns the offset in `out` where the response starts.
fn finish_response(
    out: &mut Vec<u8>,
    status: u16,
    content_type: &str,
    extra: &str,
    close: bool,
    head_only: bool,
) -> usize {
    let body_len = out.len() - HEAD_RESERVE;
    let mut head = Vec::with_capacity(HEAD_RESERVE);
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(itoa::Buffer::new().format(status).as_bytes());
    head.push(b' ');
    head.extend_from_slice(reason_phrase(status).as_bytes());
    head.extend_from_slice(b"\r\nContent-Type: ");
    head.extend_from_slice(content_type.as_bytes());
    head.extend_from_slice(b"\r\nContent-Length: ");
    head.extend_from_slice(itoa::Buffer::new().format(body_len).as_bytes());
    head.extend_from_slice(b"\r\n");
    head.extend_from_slice(extra.as_bytes());
    if close {
        head.extend_from_slice(b"Connection: close\r\n");
    }
    head.extend_from_slice(b"\r\n");
    if head_only {
        out.truncate(HEAD_RESERVE);
    }
    // The head is short and bounded (fixed strings); HEAD_RESERVE has room for it.
    let start = HEAD_RESERVE.saturating_sub(head.len());
    out[start..HEAD_RESERVE].copy_from_slice(&head[..HEAD_RESERVE - start]);
    start
}

/// Builds the response to `req` into `out` (cleared first); returns where it starts.
/// `in_flight` is what other connections still have to write ([`MAX_RESPONSE_BYTES_IN_FLIGHT`]).
pub fn respond(
    req: &Request<'_>,
    snap: &Snapshot,
    process: impl FnOnce() -> ProcessStats,
    in_flight: usize,
    out: &mut Vec<u8>,
) -> usize {
    out.clear();
    out.resize(HEAD_RESERVE, 0);
    let head_only = req.method == Method::Head;
    let known = matches!(req.path, "/metrics" | "/healthz" | "/");
    let (status, content_type, extra) = match (req.method, req.path) {
        (Method::Other, _) if known => (405, "text/plain; charset=utf-8", "Allow: GET, HEAD\r\n"),
        (_, "/metrics") if in_flight > MAX_RESPONSE_BYTES_IN_FLIGHT => {
            log::warn!("http: {in_flight} bytes of responses still being written, answering 503");
            (503, "text/plain; charset=utf-8", "Retry-After: 1\r\n")
        }
        (_, "/metrics") => {
            metrics::render(snap, &process(), out);
            (200, metrics::CONTENT_TYPE, "")
        }
        (_, "/healthz") => {
            out.extend_from_slice(b"ok\n");
            (200, "text/plain; charset=utf-8", "")
        }
        (_, "/") => {
            out.extend_from_slice(INDEX_HTML.as_bytes());
            (200, "text/html; charset=utf-8", "")
        }
        _ => (404, "text/plain; charset=utf-8", ""),
    };
    if status != 200 {
        out.extend_from_slice(reason_phrase(status).as_bytes());
        out.push(b'\n');
    }
    finish_response(out, status, content_type, extra, req.close, head_only)
}

/// Builds an error response (the connection closes after it); returns where it starts.
pub fn respond_error(status: u16, out: &mut Vec<u8>) -> usize {
    out.clear();
    out.resize(HEAD_RESERVE, 0);
    out.extend_from_slice(reason_phrase(status).as_bytes());
    out.push(b'\n');
    finish_response(out, status, "text/plain; charset=utf-8", "", true, false)
}

/// What the event loop should do with a connection after driving it.
#[derive(Debug, PartialEq, Eq)]
pub enum Status {
    Continue,
    Close,
}

/// One HTTP client connection.
pub struct Conn {
    pub stream: TcpStream,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    out_pos: usize,
    close_after_write: bool,
    /// When bytes last arrived or a response was last completed (or the accept): the least
    /// recently active connection is the one closed to make room.
    pub last_active: Instant,
    /// When this connection times out (idle, slow head, or stalled write).
    pub deadline: Instant,
}

impl Conn {
    pub fn new(stream: TcpStream, now: Instant) -> Conn {
        Conn {
            stream,
            inbuf: Vec::new(),
            out: Vec::new(),
            out_pos: 0,
            close_after_write: false,
            last_active: now,
            deadline: now + IDLE_TIMEOUT,
        }
    }

    /// Bytes of the response not yet written.
    pub fn pending(&self) -> usize {
        self.out.len() - self.out_pos
    }

    /// May be closed to make room: it is not being written a response (idle, kept alive
    /// between requests, or sending a head). A response in progress is never cut; those are
    /// bounded by [`WRITE_TIMEOUT`] and [`MAX_RESPONSE_BYTES_IN_FLIGHT`].
    pub fn evictable(&self) -> bool {
        self.pending() == 0
    }

    /// Reads, answers and writes until the socket would block. `process` reads the process
    /// figures, only when a /metrics response is built.
    pub fn drive(
        &mut self,
        now: Instant,
        snap: &Snapshot,
        process: &dyn Fn() -> ProcessStats,
        in_flight: usize,
    ) -> Status {
        loop {
            if self.out_pos < self.out.len() {
                let before = self.out_pos;
                let flushed = self.flush();
                if self.out_pos > before {
                    // A slow reader that keeps reading is not stalled.
                    self.deadline = now + WRITE_TIMEOUT;
                }
                match flushed {
                    Ok(true) => {}
                    Ok(false) => return Status::Continue,
                    Err(e) => {
                        log::debug!("http: write failed: {e}");
                        return Status::Close;
                    }
                }
                if self.close_after_write {
                    return Status::Close;
                }
                self.last_active = now;
                self.deadline = now + IDLE_TIMEOUT;
                if self.out.capacity() > KEEP_BUFFER_BYTES {
                    self.out = Vec::new();
                }
                self.out.clear();
                self.out_pos = 0;
            }
            match parse_head(&self.inbuf) {
                Parse::Complete(req, len) => {
                    self.close_after_write = req.close;
                    self.out_pos = respond(&req, snap, process, in_flight, &mut self.out);
                    self.inbuf.drain(..len);
                    self.deadline = now + WRITE_TIMEOUT;
                    continue;
                }
                Parse::Error(status) => {
                    log::debug!("http: bad request, answering {status}");
                    self.close_after_write = true;
                    self.out_pos = respond_error(status, &mut self.out);
                    self.inbuf.clear();
                    self.deadline = now + WRITE_TIMEOUT;
                    continue;
                }
                Parse::Incomplete => {}
            }
            let mut chunk = [0u8; 4096];
            let room = (MAX_HEAD_BYTES + 4 - self.inbuf.len()).min(chunk.len());
            match self.stream.read(&mut chunk[..room]) {
                Ok(0) => return Status::Close,
                Ok(n) => {
                    self.last_active = now;
                    if self.inbuf.is_empty() {
                        self.deadline = self.deadline.min(now + HEAD_TIMEOUT);
                    }
                    self.inbuf.extend_from_slice(&chunk[..n]);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Status::Continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::debug!("http: read failed: {e}");
                    return Status::Close;
                }
            }
        }
    }

    /// Writes pending output; Ok(true) when all is written, Ok(false) on WouldBlock.
    fn flush(&mut self) -> io::Result<bool> {
        while self.out_pos < self.out.len() {
            match self.stream.write(&self.out[self.out_pos..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.out_pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }
}

/// Answers a connection we won't keep (over the limit) with a 503, best effort.
pub fn refuse(mut stream: TcpStream) {
    let mut out = Vec::new();
    let start = respond_error(503, &mut out);
    let _ = stream.write(&out[start..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(buf: &[u8]) -> (Request<'_>, usize) {
        match parse_head(buf) {
            Parse::Complete(r, n) => (r, n),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn parses_a_scrape() {
        let buf = b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\nGET / HTTP/1.1\r\n";
        let (req, len) = complete(buf);
        assert_eq!(
            req,
            Request {
                method: Method::Get,
                path: "/metrics",
                close: false
            }
        );
        assert_eq!(&buf[len..len + 3], b"GET");
    }

    #[test]
    fn connection_semantics() {
        assert!(
            complete(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                .0
                .close
        );
        assert!(complete(b"GET / HTTP/1.0\r\n\r\n").0.close);
        assert!(
            !complete(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
                .0
                .close
        );
        assert!(
            complete(b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n")
                .0
                .close
        );
        assert!(
            !complete(b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
                .0
                .close
        );
        assert_eq!(
            complete(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n").0.method,
            Method::Head
        );
        assert_eq!(
            complete(b"POST / HTTP/1.1\r\nHost: a\r\n\r\n").0.method,
            Method::Other
        );
    }

    #[test]
    fn incomplete_and_errors() {
        assert_eq!(parse_head(b""), Parse::Incomplete);
        assert_eq!(
            parse_head(b"GET / HTTP/1.1\r\nHost: a\r\n"),
            Parse::Incomplete
        );
        let bad: &[&[u8]] = &[
            b"GET / HTTP/1.1\r\n\r\n",                  // no Host
            b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n",      // double space
            b"GET metrics HTTP/1.1\r\nHost: a\r\n\r\n", // not origin-form
            b"GET / FTP/1.1\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: x\r\n\r\n",
            b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET /\xff HTTP/1.1\r\nHost: a\r\n\r\n",
        ];
        for b in bad {
            assert_eq!(
                parse_head(b),
                Parse::Error(400),
                "{}",
                String::from_utf8_lossy(b)
            );
        }
        assert_eq!(parse_head(b"GET / HTTP/2.0\r\n\r\n"), Parse::Error(505));
    }

    /// RFC 9112 leniencies: bare LF line ends, empty lines before the request line,
    /// absolute-form targets, obs-text in values; and what stays an error.
    #[test]
    fn lenient_where_the_rfc_asks() {
        let buf = b"GET /metrics HTTP/1.1\nHost: a\n\nNEXT";
        let (req, len) = complete(buf);
        assert_eq!(req.path, "/metrics");
        assert_eq!(&buf[len..], b"NEXT");
        let buf = b"GET / HTTP/1.1\r\nHost: a\n\r\nNEXT";
        let (_, len) = complete(buf);
        assert_eq!(&buf[len..], b"NEXT");
        let buf = b"\r\n\nGET /healthz HTTP/1.1\r\nHost: a\r\n\r\nNEXT";
        let (req, len) = complete(buf);
        assert_eq!((req.path, &buf[len..]), ("/healthz", &b"NEXT"[..]));
        assert_eq!(parse_head(b"\r\n\r\n"), Parse::Incomplete);
        assert_eq!(
            parse_head(b"GET / HTTP/1.1\r\nHost: a\r\n\r"),
            Parse::Incomplete
        );
        for (target, path) in [
            ("http://a:9102/metrics?x=1", "/metrics"),
            ("HTTP://a/", "/"),
            ("https://a", "/"),
            ("http://a?x", "/"),
        ] {
            let buf = format!("GET {target} HTTP/1.1\r\nHost: a\r\n\r\n");
            assert_eq!(complete(buf.as_bytes()).0.path, path, "{target}");
        }
        complete(b"GET / HTTP/1.1\r\nHost: a\r\nX-Name: caf\xe9 \xff\tok\r\n\r\n");
        let bad: &[&[u8]] = &[
            b"GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX: \x01\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX: \x7f\r\n\r\n",
            b"GET / HTTP/1.1\rHost: a\r\n\r\n",
            b"GET ftp://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET http:///metrics HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET * HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET http://a/metrics HTTP/1.1\r\n\r\n", // absolute form still needs Host (§3.2)
        ];
        for b in bad {
            assert_eq!(
                parse_head(b),
                Parse::Error(400),
                "{}",
                String::from_utf8_lossy(b)
            );
        }
    }

    #[test]
    fn head_size_limit() {
        let mut big = b"GET / HTTP/1.1\r\nHost: a\r\nX: ".to_vec();
        big.resize(MAX_HEAD_BYTES - 4, b'a');
        big.extend_from_slice(b"\r\n\r\n");
        assert_eq!(big.len(), MAX_HEAD_BYTES);
        assert!(matches!(parse_head(&big), Parse::Complete(..)));
        let mut over = big[..MAX_HEAD_BYTES - 4].to_vec();
        over.extend_from_slice(b"a\r\n\r\n");
        assert_eq!(parse_head(&over), Parse::Error(431));
    }

    fn response(req: &Request<'_>) -> String {
        let snap = Snapshot::new(
            false,
            Duration::from_secs(30),
            std::time::SystemTime::UNIX_EPOCH,
        );
        let mut out = Vec::new();
        let start = respond(req, &snap, ProcessStats::default, 0, &mut out);
        String::from_utf8(out[start..].to_vec()).unwrap()
    }

    #[test]
    fn responses() {
        let get = |path| Request {
            method: Method::Get,
            path,
            close: false,
        };
        assert_eq!(
            response(&get("/healthz")),
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 3\r\n\r\nok\n"
        );
        assert_eq!(
            response(&get("/nope")),
            "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 10\r\n\r\nNot Found\n"
        );
        let post = Request {
            method: Method::Other,
            path: "/metrics",
            close: true,
        };
        assert_eq!(
            response(&post),
            "HTTP/1.1 405 Method Not Allowed\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 19\r\nAllow: GET, HEAD\r\nConnection: close\r\n\r\nMethod Not Allowed\n"
        );
        let head = Request {
            method: Method::Head,
            path: "/metrics",
            close: false,
        };
        let text = response(&head);
        assert!(text.starts_with("HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: "));
        assert!(text.ends_with("\r\n\r\n"), "HEAD has no body: {text}");
        let len: usize = text
            .split("Content-Length: ")
            .nth(1)
            .unwrap()
            .split("\r\n")
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let full = response(&get("/metrics"));
        assert_eq!(full.len() - full.find("\r\n\r\n").unwrap() - 4, len);
        // Too much already being written elsewhere: a scrape is refused, /healthz still served.
        let snap = Snapshot::new(
            false,
            Duration::from_secs(30),
            std::time::SystemTime::UNIX_EPOCH,
        );
        let mut out = Vec::new();
        let busy = MAX_RESPONSE_BYTES_IN_FLIGHT + 1;
        let start = respond(
            &get("/metrics"),
            &snap,
            ProcessStats::default,
            busy,
            &mut out,
        );
        assert!(out[start..].starts_with(b"HTTP/1.1 503 Service Unavailable\r\n"));
        assert!(String::from_utf8_lossy(&out[start..]).contains("Retry-After: 1\r\n"));
        let start = respond(
            &get("/healthz"),
            &snap,
            ProcessStats::default,
            busy,
            &mut out,
        );
        assert!(out[start..].starts_with(b"HTTP/1.1 200 OK\r\n"));

        let mut out = Vec::new();
        let start = respond_error(431, &mut out);
        assert_eq!(
            &out[start..],
            b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 32\r\nConnection: close\r\n\r\nRequest Header Fields Too Large\n"
        );
    }
}
