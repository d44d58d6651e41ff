//! HTTP/1.1 for `/metrics`, `/healthz`, `/-/healthy`, `/-/ready` and `/`: a pure request-head
//! parser and the responses (bytes in, bytes out, no I/O).
//!
//! `/-/healthy` and `/-/ready` follow the Prometheus exporters' convention: healthy is 200
//! whenever the loop answers (like `/healthz`), ready is 200 once the first probe cycle has
//! completed (at once when probing is off) and 503 before, so a rollout can wait for real
//! data.
//!
//! Only GET and HEAD of fixed paths are served, plus `POST /mcp` with `--mcp-http`; only that
//! one reads a request body (by `Content-Length`, at most [`mcp::MAX_LINE_BYTES`]). Any other
//! request that announces a body is answered and the connection closed (its bytes would
//! otherwise be read as the next request).
//!
//! MCP over Streamable HTTP (`--mcp-http`): each `POST /mcp` carries one JSON-RPC message and
//! gets its answer as `application/json` (200), or 202 with no body for a notification or a
//! response; nothing is ever in flight, so no SSE stream is offered and `GET /mcp` is 405.
//! The server is stateless (no `Mcp-Session-Id` is issued): both eras work as on stdio, the
//! 2025-11-25 handshake and the per-request 2026-07-28. An `Origin` header must name this
//! listener's own `Host` (DNS-rebinding defence, 403 otherwise); an `MCP-Protocol-Version`
//! header must be a version we speak (400 otherwise). Keep-alive (HTTP/1.1 default, HTTP/1.0 with
//! `Connection: keep-alive`) and `Connection: close` are honoured; pipelined requests are
//! answered one at a time, the next parsed only once the previous response is written, so a
//! client cannot make us buffer more than one response.
//!
//! `/metrics` comes from the [`ScrapeCache`] (rendered once per snapshot change), gzipped when
//! the request's `Accept-Encoding` allows it and does not weigh identity higher (q-values
//! honoured: `gzip;q=0` refuses it, `identity;q=1, gzip;q=0.5` prefers plain text, `*`
//! counts for gzip when gzip is not named); every /metrics response carries `Vary: Accept-Encoding`.
//!
//! With `--web-tls-cert`/`--web-tls-key` the connection speaks TLS (`web_tls.rs`: rustls'
//! sans-IO session, pumped here on readable/writable events); with `--web-auth-token-file`,
//! `/metrics` answers 401 with `WWW-Authenticate: Bearer` unless the request carries
//! `Authorization: Bearer <token>`. `/healthz`, `/-/healthy`, `/-/ready` and `/` stay open
//! (liveness probes and load balancers carry no token; they reveal nothing about backends).
//!
//! The connection that reads requests and writes these responses is `http_conn.rs`.
//!
//! Limits (named below): [`MAX_HEAD_BYTES`], [`MAX_RESPONSE_BYTES_IN_FLIGHT`]; the
//! connection's own (count, timeouts) are in `http_conn.rs`.

use crate::mcp;
use crate::metrics::{self, ProcessStats};
use crate::scrape_cache::ScrapeCache;
use crate::snapshot::Snapshot;
use crate::web_tls::WebSecurity;

/// Largest request head (request line + headers): a scrape's is ~200 bytes; 8 KiB is what
/// common servers accept. Larger gets 431.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;
/// Bytes of responses being written, all connections together, past which a new /metrics
/// scrape gets 503 instead of another rendered copy: a scrape of 10,000 routes is 2.5 MiB, so
/// 256 slow readers could otherwise hold 640 MiB on a 512 MiB host. 8 MiB lets ~30 scrapes of
/// 1,000 routes (or 3 of 10,000) be in flight at once; the unit's `MemoryMax` is 32 MiB.
pub const MAX_RESPONSE_BYTES_IN_FLIGHT: usize = 8 * 1024 * 1024;
/// Room reserved before a rendered body for the status line and headers, so the head can be
/// written in front of the body without moving it.
const HEAD_RESERVE: usize = 256;

const INDEX_HTML: &str = "<html><head><title>sigma-agent-lite</title></head><body>\
<h1>sigma-agent-lite</h1><p><a href=\"/metrics\">/metrics</a> \
<a href=\"/healthz\">/healthz</a> <a href=\"/-/healthy\">/-/healthy</a> \
<a href=\"/-/ready\">/-/ready</a></p></body></html>\n";

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Method {
    Get,
    Head,
    Post,
    Other,
}

/// The body a request announces.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Body {
    None,
    /// `Content-Length: n`, n > 0.
    Length(u64),
    /// `Transfer-Encoding` (chunked or other): never read, the connection is closed.
    Encoded,
}

/// A parsed request head. Borrowed from the input buffer.
#[derive(Debug, PartialEq, Eq)]
pub struct Request<'a> {
    pub method: Method,
    /// The path without its query string.
    pub path: &'a str,
    /// The connection is to be closed after the response (from `Connection` and the version;
    /// a body we don't read closes it too, decided by the connection).
    pub close: bool,
    pub body: Body,
    /// `Accept-Encoding` prefers gzip to identity.
    pub gzip: bool,
    /// The `Authorization` header's value, if any.
    pub authorization: Option<&'a str>,
    /// Headers `POST /mcp` looks at.
    pub host: Option<&'a str>,
    pub origin: Option<&'a str>,
    pub content_type: Option<&'a str>,
    pub mcp_protocol_version: Option<&'a str>,
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
    let mut body = Body::None;
    let (mut host_value, mut origin, mut content_type, mut mcp_version) = (None, None, None, None);
    let mut codings = Codings::default();
    let mut authorization = None;
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
            host_value = Some(value);
        } else if name.eq_ignore_ascii_case("connection") {
            for option in value.split(',').map(str::trim) {
                if option.eq_ignore_ascii_case("close") {
                    close = true;
                } else if option.eq_ignore_ascii_case("keep-alive") && !http11 {
                    close = false;
                }
            }
        } else if name.eq_ignore_ascii_case("content-length") {
            match (value.parse::<u64>(), body) {
                (Ok(0), Body::None) => {}
                (Ok(n), Body::None) => body = Body::Length(n),
                // Two lengths, or a length with Transfer-Encoding: smuggling, 400.
                _ => return Parse::Error(400),
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            if matches!(body, Body::Length(_)) {
                return Parse::Error(400);
            }
            body = Body::Encoded;
        } else if name.eq_ignore_ascii_case("origin") {
            origin.get_or_insert(value);
        } else if name.eq_ignore_ascii_case("content-type") {
            content_type.get_or_insert(value);
        } else if name.eq_ignore_ascii_case("mcp-protocol-version") {
            mcp_version.get_or_insert(value);
        } else if name.eq_ignore_ascii_case("accept-encoding") {
            codings.add(value);
        } else if name.eq_ignore_ascii_case("authorization") {
            if authorization.is_some() {
                return Parse::Error(400);
            }
            authorization = Some(value);
        }
    }
    if http11 && !host {
        return Parse::Error(400); // RFC 9112 §3.2: a 1.1 request without Host gets 400
    }
    let method = match method {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        _ => Method::Other,
    };
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    Parse::Complete(
        Request {
            method,
            path,
            close,
            body,
            gzip: codings.prefers_gzip(),
            authorization,
            host: host_value,
            origin,
            content_type,
            mcp_protocol_version: mcp_version,
        },
        start + end + terminator,
    )
}

/// What `Accept-Encoding` says of the codings we have (RFC 9110 §12.5.3), as weights in
/// thousandths. Unnamed codings fall under `*`; without the header only identity is
/// acceptable.
#[derive(Default, Debug)]
struct Codings {
    gzip: Option<u16>,
    identity: Option<u16>,
    star: Option<u16>,
}

impl Codings {
    /// Reads one header line (several lines add up).
    fn add(&mut self, value: &str) {
        for element in value.split(',') {
            let mut parts = element.split(';');
            let coding = parts.next().unwrap_or("").trim();
            let mut q = Some(1000);
            for param in parts {
                let (k, v) = param.split_once('=').unwrap_or((param, ""));
                if k.trim().eq_ignore_ascii_case("q") {
                    q = parse_qvalue(v.trim());
                }
            }
            let Some(q) = q else {
                continue; // an unreadable weight: ignore the element
            };
            if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
                self.gzip = Some(q);
            } else if coding.eq_ignore_ascii_case("identity") {
                self.identity = Some(q);
            } else if coding == "*" {
                self.star = Some(q);
            }
        }
    }

    /// gzip is acceptable and weighs at least as much as identity when identity is weighed
    /// (by name or by `*`); an unweighed identity is only the fallback, as in common servers.
    fn prefers_gzip(&self) -> bool {
        let gzip = self.gzip.or(self.star).unwrap_or(0);
        let identity = self.identity.or(self.star).unwrap_or(0);
        gzip > 0 && gzip >= identity
    }
}

/// `0`, `0.5`, `1.000` (RFC 9110 §12.4.2) in thousandths; None when malformed.
fn parse_qvalue(v: &str) -> Option<u16> {
    let (int, frac) = v.split_once('.').unwrap_or((v, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut thousandths: u16 = frac
        .bytes()
        .fold(0, |acc, b| acc * 10 + u16::from(b - b'0'));
    thousandths *= 10u16.pow(3 - frac.len() as u32);
    match (int, thousandths) {
        ("0", t) => Some(t),
        ("1", 0) => Some(1000),
        _ => None,
    }
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
        202 => "Accepted",
        401 => "Unauthorized",
        403 => "Forbidden",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
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

/// What a response may need besides the request; the event loop lends it for one drive.
pub struct Serve<'a> {
    pub snap: &'a Snapshot,
    pub cache: &'a mut ScrapeCache,
    pub security: &'a WebSecurity,
    /// Reads the process figures (only when a /metrics response is built).
    pub process: &'a dyn Fn() -> ProcessStats,
    /// What other connections still have to write ([`MAX_RESPONSE_BYTES_IN_FLIGHT`]).
    pub in_flight: usize,
    /// `--mcp-http`: serve `POST /mcp`.
    pub mcp_http: bool,
    /// Wall time, for MCP answers (`generated_at`, staleness).
    pub wall: std::time::SystemTime,
}

/// Whether the connection should read the body `req` announces (only `POST /mcp`).
pub fn reads_body(req: &Request<'_>, mcp_http: bool) -> bool {
    mcp_http && req.method == Method::Post && req.path == "/mcp"
}

/// Builds the response to `req` (with its `body`, read only for `POST /mcp`) into `out`
/// (cleared first); returns where it starts.
pub fn respond(req: &Request<'_>, body: &[u8], serve: &mut Serve<'_>, out: &mut Vec<u8>) -> usize {
    out.clear();
    out.resize(HEAD_RESERVE, 0);
    let head_only = req.method == Method::Head;
    let mcp = serve.mcp_http && req.path == "/mcp";
    let known = matches!(
        req.path,
        "/metrics" | "/healthz" | "/-/healthy" | "/-/ready" | "/"
    );
    let (snap, in_flight) = (serve.snap, serve.in_flight);
    let protected = req.path == "/metrics" || mcp;
    let (status, content_type, extra) = match (req.method, req.path) {
        (Method::Other | Method::Post, _) if known => {
            (405, "text/plain; charset=utf-8", "Allow: GET, HEAD\r\n")
        }
        _ if protected
            && !serve
                .security
                .authorized(req.authorization.map(str::as_bytes)) =>
        {
            log::debug!(
                "http: {} without a valid bearer token, answering 401",
                req.path
            );
            (
                401,
                "text/plain; charset=utf-8",
                "WWW-Authenticate: Bearer realm=\"sigma-agent-lite\"\r\n",
            )
        }
        _ if mcp => mcp_over_http(req, body, serve, out),
        (_, "/metrics") if in_flight > MAX_RESPONSE_BYTES_IN_FLIGHT => {
            log::warn!("http: {in_flight} bytes of responses still being written, answering 503");
            (503, "text/plain; charset=utf-8", "Retry-After: 1\r\n")
        }
        (_, "/metrics") => {
            serve.cache.write(snap, &(serve.process)(), req.gzip, out);
            log::debug!(
                "http: /metrics answered, {} bytes {}",
                out.len() - HEAD_RESERVE,
                if req.gzip { "gzip" } else { "identity" }
            );
            let extra = if req.gzip {
                "Content-Encoding: gzip\r\nVary: Accept-Encoding\r\n"
            } else {
                "Vary: Accept-Encoding\r\n"
            };
            (200, metrics::CONTENT_TYPE, extra)
        }
        (_, "/healthz") => {
            out.extend_from_slice(b"ok\n");
            (200, "text/plain; charset=utf-8", "")
        }
        (_, "/-/healthy") => {
            out.extend_from_slice(b"sigma-agent-lite is Healthy.\n");
            (200, "text/plain; charset=utf-8", "")
        }
        (_, "/-/ready") if snap.cycles_total > 0 || !snap.probe_enabled => {
            out.extend_from_slice(b"sigma-agent-lite is Ready.\n");
            (200, "text/plain; charset=utf-8", "")
        }
        (_, "/-/ready") => (503, "text/plain; charset=utf-8", ""),
        (_, "/") => {
            out.extend_from_slice(INDEX_HTML.as_bytes());
            (200, "text/html; charset=utf-8", "")
        }
        _ => (404, "text/plain; charset=utf-8", ""),
    };
    if status >= 400 && out.len() == HEAD_RESERVE {
        out.extend_from_slice(reason_phrase(status).as_bytes());
        out.push(b'\n');
    }
    finish_response(out, status, content_type, extra, req.close, head_only)
}

/// `POST /mcp`: one JSON-RPC message in, its answer out (see the module docs). Error bodies
/// are plain text saying what to fix.
fn mcp_over_http(
    req: &Request<'_>,
    body: &[u8],
    serve: &Serve<'_>,
    out: &mut Vec<u8>,
) -> (u16, &'static str, &'static str) {
    const TEXT: &str = "text/plain; charset=utf-8";
    if req.method != Method::Post {
        return (405, TEXT, "Allow: POST\r\n");
    }
    if let Some(origin) = req.origin {
        if !same_origin(origin, req.host) {
            log::warn!(
                "mcp-http: refused a request from Origin {:?} (Host {:?}): 403",
                origin.escape_debug().to_string(),
                req.host.map(|h| h.escape_debug().to_string())
            );
            out.extend_from_slice(b"Forbidden: Origin does not match this server's Host\n");
            return (403, TEXT, "");
        }
    }
    if let Some(v) = req.mcp_protocol_version {
        if !mcp::SUPPORTED_VERSIONS.contains(&v) {
            out.extend_from_slice(b"Bad Request: unsupported MCP-Protocol-Version; supported: ");
            out.extend_from_slice(mcp::SUPPORTED_VERSIONS.join(", ").as_bytes());
            out.push(b'\n');
            return (400, TEXT, "");
        }
    }
    let json = req.content_type.is_some_and(|t| {
        let media = t.split(';').next().unwrap_or("").trim();
        media.eq_ignore_ascii_case("application/json")
    });
    if !json {
        out.extend_from_slice(b"Unsupported Media Type: POST /mcp takes application/json\n");
        return (415, TEXT, "");
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        out.extend_from_slice(b"Bad Request: POST /mcp needs one JSON-RPC message as its body\n");
        return (400, TEXT, "");
    }
    let busy = serve.in_flight > MAX_RESPONSE_BYTES_IN_FLIGHT;
    if !(busy && mcp::busy_response(body, out)) {
        mcp::handle_line(body, serve.snap, serve.wall, out);
    }
    if out.len() == HEAD_RESERVE {
        return (202, "application/json", ""); // a notification or a response: no answer
    }
    if out.last() == Some(&b'\n') {
        out.pop();
    }
    (200, "application/json", "")
}

/// Whether `origin` (`scheme://host[:port]`) names the same authority as the `Host` header,
/// default ports aside. `null` and unparsable origins don't.
fn same_origin(origin: &str, host: Option<&str>) -> bool {
    let Some(host) = host else {
        return false;
    };
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false;
    };
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "http" => ":80",
        "https" => ":443",
        _ => return false,
    };
    let authority = authority.trim_end_matches('/');
    let strip = |a: &str| -> String {
        let a = a.to_ascii_lowercase();
        a.strip_suffix(default_port)
            .map_or(a.clone(), str::to_owned)
    };
    !authority.is_empty() && strip(authority) == strip(host)
}

/// Builds an error response (the connection closes after it); returns where it starts.
pub fn respond_error(status: u16, out: &mut Vec<u8>) -> usize {
    out.clear();
    out.resize(HEAD_RESERVE, 0);
    out.extend_from_slice(reason_phrase(status).as_bytes());
    out.push(b'\n');
    finish_response(out, status, "text/plain; charset=utf-8", "", true, false)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::time::Duration;

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
                close: false,
                gzip: false,
                authorization: None,
                body: Body::None,
                host: Some("a"),
                origin: None,
                content_type: None,
                mcp_protocol_version: None,
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
        // A body is announced (the connection decides to read it or to close after answering).
        let (req, _) = complete(b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n");
        assert_eq!((req.close, req.body), (false, Body::Length(3)));
        let (req, _) = complete(b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n");
        assert_eq!((req.close, req.body), (false, Body::None));
        let chunked = b"POST /mcp HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(complete(chunked).0.body, Body::Encoded);
        // Smuggling shapes: two lengths, or a length and a transfer coding.
        for bad in [
            &b"POST /mcp HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n"[..],
            b"POST /mcp HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST /mcp HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
        ] {
            assert_eq!(parse_head(bad), Parse::Error(400));
        }
        assert_eq!(
            complete(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n").0.method,
            Method::Head
        );
        assert_eq!(
            complete(b"POST / HTTP/1.1\r\nHost: a\r\n\r\n").0.method,
            Method::Post
        );
        assert_eq!(
            complete(b"PUT / HTTP/1.1\r\nHost: a\r\n\r\n").0.method,
            Method::Other
        );
    }

    /// Each head is answered 400.
    fn assert_all_400(heads: &[&[u8]]) {
        for head in heads {
            let text = String::from_utf8_lossy(head);
            assert_eq!(parse_head(head), Parse::Error(400), "{text}");
        }
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
        assert_all_400(bad);
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
        assert_all_400(bad);
    }

    #[test]
    fn bearer_token_guards_metrics_only() {
        let snap = unprobed();
        let security = WebSecurity::with_token(b"tok");
        let mut cache = ScrapeCache::new();
        let mut ask = |raw: &str| {
            let raw = format!("{raw}\r\n");
            let Parse::Complete(req, _) = parse_head(raw.as_bytes()) else {
                panic!("{raw}")
            };
            let mut serve = Serve {
                snap: &snap,
                cache: &mut cache,
                security: &security,
                process: &ProcessStats::default,
                in_flight: 0,
                mcp_http: false,
                wall: std::time::SystemTime::UNIX_EPOCH,
            };
            let mut out = Vec::new();
            let start = respond(&req, &[], &mut serve, &mut out);
            String::from_utf8_lossy(&out[start..]).into_owned()
        };
        let denied = ask("GET /metrics HTTP/1.1\r\nHost: a\r\n");
        assert!(
            denied.starts_with("HTTP/1.1 401 Unauthorized\r\n"),
            "{denied}"
        );
        assert!(denied.contains("\r\nWWW-Authenticate: Bearer realm=\"sigma-agent-lite\"\r\n"));
        assert!(!denied.contains("sigma_"), "{denied}");
        for wrong in ["Bearer tok2", "Basic tok", "tok"] {
            let r = ask(&format!(
                "GET /metrics HTTP/1.1\r\nHost: a\r\nAuthorization: {wrong}\r\n"
            ));
            assert!(r.starts_with("HTTP/1.1 401 "), "{wrong}: {r}");
        }
        let ok = ask("GET /metrics HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer tok\r\n");
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        for open in ["/healthz", "/-/healthy", "/-/ready", "/"] {
            let r = ask(&format!("GET {open} HTTP/1.1\r\nHost: a\r\n"));
            assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{open}: {r}");
        }
        // Two Authorization headers are ambiguous: 400.
        let two = "GET /metrics HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer tok\r\nAuthorization: Bearer x\r\n\r\n";
        assert_eq!(parse_head(two.as_bytes()), Parse::Error(400));
    }

    #[test]
    fn accept_encoding_q_values() {
        let gzip = |headers: &str| {
            let raw = format!("GET /metrics HTTP/1.1\r\nHost: a\r\n{headers}\r\n");
            match parse_head(raw.as_bytes()) {
                Parse::Complete(r, _) => r.gzip,
                other => panic!("{other:?}"),
            }
        };
        // What Prometheus sends, and the usual browser and curl forms.
        assert!(gzip("Accept-Encoding: gzip\r\n"));
        assert!(gzip("Accept-Encoding: gzip, deflate, br\r\n"));
        assert!(gzip("accept-encoding: deflate, GZIP;q=0.8\r\n"));
        assert!(gzip("Accept-Encoding: *\r\n"));
        assert!(gzip("Accept-Encoding: x-gzip\r\n"));
        assert!(gzip("Accept-Encoding: identity;q=0.5, gzip;q=0.5\r\n"));
        assert!(gzip(
            "Accept-Encoding: br\r\nAccept-Encoding: gzip;q=1.000\r\n"
        ));
        assert!(!gzip(""));
        assert!(!gzip("Accept-Encoding: identity\r\n"));
        assert!(!gzip("Accept-Encoding: deflate, br\r\n"));
        assert!(!gzip("Accept-Encoding: gzip;q=0\r\n"));
        assert!(!gzip("Accept-Encoding: gzip;q=0.000\r\n"));
        assert!(!gzip("Accept-Encoding: gzip;q=0.5, identity\r\n"));
        assert!(!gzip("Accept-Encoding: *, gzip;q=0\r\n"));
        assert!(!gzip("Accept-Encoding: gzip;q=1.5\r\n")); // malformed weight: ignored
        assert!(!gzip("Accept-Encoding: gzip;q=0.1234\r\n"));
        assert!(!gzip("Accept-Encoding: gzipx\r\n"));
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

    /// Probing off, nothing known: what the plain endpoints need.
    fn unprobed() -> Snapshot {
        Snapshot::new(
            false,
            Duration::from_secs(30),
            std::time::SystemTime::UNIX_EPOCH,
        )
    }

    /// A request as `parse_head` would give for `method path` with no headers.
    fn request(method: Method, path: &str) -> Request<'_> {
        Request {
            method,
            path,
            close: false,
            gzip: false,
            authorization: None,
            body: Body::None,
            host: None,
            origin: None,
            content_type: None,
            mcp_protocol_version: None,
        }
    }

    /// What a connection needs to answer from `snap`, with default settings (no token, no TLS,
    /// no MCP over HTTP); `http_conn`'s tests use it too.
    pub(crate) fn serve(snap: &Snapshot, in_flight: usize) -> Serve<'_> {
        Serve {
            snap,
            // Leaked: a test helper's cache and settings live as long as the test process.
            cache: Box::leak(Box::new(ScrapeCache::new())),
            security: Box::leak(Box::new(WebSecurity::default())),
            process: &ProcessStats::default,
            in_flight,
            mcp_http: false,
            wall: std::time::SystemTime::UNIX_EPOCH,
        }
    }

    fn response(req: &Request<'_>) -> String {
        let snap = unprobed();
        let mut out = Vec::new();
        let start = respond(req, &[], &mut serve(&snap, 0), &mut out);
        String::from_utf8(out[start..].to_vec()).unwrap()
    }

    #[test]
    fn responses() {
        let get = |path| request(Method::Get, path);
        assert_eq!(
            response(&get("/healthz")),
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 3\r\n\r\nok\n"
        );
        assert_eq!(
            response(&get("/-/healthy")),
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 29\r\n\r\nsigma-agent-lite is Healthy.\n"
        );
        // Probing on, no cycle completed yet: not ready; after one: ready.
        let mut snap = crate::fixtures::snapshot(Vec::new());
        let mut out = Vec::new();
        let start = respond(&get("/-/ready"), &[], &mut serve(&snap, 0), &mut out);
        assert_eq!(
            &out[start..],
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 20\r\n\r\nService Unavailable\n"
        );
        snap.cycle_done(
            Duration::from_millis(5),
            false,
            std::time::SystemTime::UNIX_EPOCH,
        );
        let start = respond(&get("/-/ready"), &[], &mut serve(&snap, 0), &mut out);
        assert!(out[start..].ends_with(b"\r\n\r\nsigma-agent-lite is Ready.\n"));
        assert_eq!(
            response(&get("/nope")),
            "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 10\r\n\r\nNot Found\n"
        );
        let post = Request {
            close: true,
            ..request(Method::Other, "/metrics")
        };
        assert_eq!(
            response(&post),
            "HTTP/1.1 405 Method Not Allowed\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 19\r\nAllow: GET, HEAD\r\nConnection: close\r\n\r\nMethod Not Allowed\n"
        );
        let head = request(Method::Head, "/metrics");
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
        let snap = unprobed();
        let mut out = Vec::new();
        let busy = MAX_RESPONSE_BYTES_IN_FLIGHT + 1;
        let start = respond(&get("/metrics"), &[], &mut serve(&snap, busy), &mut out);
        assert!(out[start..].starts_with(b"HTTP/1.1 503 Service Unavailable\r\n"));
        assert!(String::from_utf8_lossy(&out[start..]).contains("Retry-After: 1\r\n"));
        let start = respond(&get("/healthz"), &[], &mut serve(&snap, busy), &mut out);
        assert!(out[start..].starts_with(b"HTTP/1.1 200 OK\r\n"));

        let mut out = Vec::new();
        let start = respond_error(431, &mut out);
        assert_eq!(
            &out[start..],
            b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 32\r\nConnection: close\r\n\r\nRequest Header Fields Too Large\n"
        );
    }
}
