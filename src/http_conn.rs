//! One HTTP client connection as a state machine the event loop drives on readable/writable
//! events: read until a request head is complete, answer it (`http.rs`, pure), write the
//! answer, and only then parse the next request, so a pipelining client never makes us hold
//! more than one response. With TLS the same steps run through rustls' sans-IO session
//! (`web_tls.rs`).
//!
//! Generic over the stream (`Read + Write`): the agent drives mio's `TcpStream`, the tests a
//! scripted stream that hands out bytes in chosen pieces and takes writes a few bytes at a
//! time, so keep-alive, pipelining, partial writes and every deadline are tested without a
//! socket.
//!
//! Limits (named below): [`MAX_CONNECTIONS`], [`IDLE_TIMEOUT`], [`HEAD_TIMEOUT`],
//! [`HANDSHAKE_TIMEOUT`], [`WRITE_TIMEOUT`]; the head size and the bytes in flight are
//! `http::MAX_HEAD_BYTES` and `http::MAX_RESPONSE_BYTES_IN_FLIGHT`.

use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use mio::net::TcpStream;

use crate::http::{self, parse_head, reads_body, respond, respond_error, Body, Parse, Serve};
use crate::mcp;
#[cfg(feature = "tls")]
use crate::web_tls::TlsIo;

/// Connections served at once. Prometheus needs one; 256 leaves room for curls and
/// dashboards while bounding memory (~8 KiB of head buffer each at most, plus the response
/// being written). Past it a new connection closes the least recently active one that is not
/// being written a response (see [`Conn::evictable`]): a kept-alive or silent connection costs
/// its owner a reconnect, where refusing the newcomer would let any 256 clients lock
/// Prometheus out for as long as they like.
pub const MAX_CONNECTIONS: usize = 256;
/// A connection with nothing to say for this long (before its first request, or between
/// keep-alive requests) is closed. Prometheus reuses its connection every scrape interval
/// and reconnects transparently.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Once a request head has started, it must be complete within this (slowloris bound).
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// A TLS client must finish its handshake and send its first request head within this: a
/// loopback handshake takes ~2 ms, a distant Prometheus a few round trips. A peer that
/// stalls holds its own slot until then and delays no one else.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// A response that makes no progress for this long is abandoned (a peer that stopped reading);
/// every write that makes progress restarts it.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Response buffers above this are freed after use, so one big scrape doesn't pin memory in
/// every keep-alive connection.
const KEEP_BUFFER_BYTES: usize = 64 * 1024;

/// What the event loop should do with a connection after driving it.
#[derive(Debug, PartialEq, Eq)]
pub enum Status {
    Continue,
    Close,
}

/// One HTTP client connection over `S`: mio's `TcpStream` in the agent, a scripted stream
/// ([`crate::fixtures::Script`]) in the tests.
pub struct Conn<S = TcpStream> {
    pub stream: S,
    /// The TLS session, on a TLS listener.
    #[cfg(feature = "tls")]
    tls: Option<TlsIo>,
    /// The response was the last: only TLS records (close_notify) remain to send.
    closing: bool,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    out_pos: usize,
    close_after_write: bool,
    /// Bytes of head + body the request being read needs in `inbuf` (a `POST /mcp`).
    need: usize,
    /// When bytes last arrived or a response was last completed (or the accept): the least
    /// recently active connection is the one closed to make room.
    pub last_active: Instant,
    /// When this connection times out (idle, slow head, or stalled write).
    pub deadline: Instant,
}

impl<S: Read + Write> Conn<S> {
    pub fn new(stream: S, now: Instant) -> Conn<S> {
        Conn {
            stream,
            #[cfg(feature = "tls")]
            tls: None,
            closing: false,
            inbuf: Vec::new(),
            out: Vec::new(),
            out_pos: 0,
            close_after_write: false,
            need: 0,
            last_active: now,
            deadline: now + IDLE_TIMEOUT,
        }
    }

    /// A connection on the TLS listener: the handshake must be done within
    /// [`HANDSHAKE_TIMEOUT`].
    #[cfg(feature = "tls")]
    pub fn with_tls(
        stream: S,
        config: std::sync::Arc<rustls::ServerConfig>,
        now: Instant,
    ) -> io::Result<Conn<S>> {
        let mut conn = Conn::new(stream, now);
        conn.tls = Some(TlsIo::new(config)?);
        conn.deadline = now + HANDSHAKE_TIMEOUT;
        Ok(conn)
    }

    fn read_some(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        #[cfg(feature = "tls")]
        if let Some(tls) = &mut self.tls {
            return tls.read(&mut self.stream, buf);
        }
        self.stream.read(buf)
    }

    fn write_some(&mut self, from: usize) -> io::Result<usize> {
        #[cfg(feature = "tls")]
        if let Some(tls) = &mut self.tls {
            return tls.write(&mut self.stream, &self.out[from..]);
        }
        self.stream.write(&self.out[from..])
    }

    /// Sends TLS records already made (handshake, encrypted response); Ok(true) when none is
    /// left. Always true without TLS.
    fn flush_tls(&mut self) -> io::Result<bool> {
        #[cfg(feature = "tls")]
        if let Some(tls) = &mut self.tls {
            return tls.flush(&mut self.stream);
        }
        Ok(true)
    }

    /// Queues TLS close_notify after the last response; false without TLS (close now).
    fn start_tls_close(&mut self) -> bool {
        #[cfg(feature = "tls")]
        if let Some(tls) = &mut self.tls {
            tls.close();
            self.closing = true;
            return true;
        }
        false
    }

    /// Bytes of the response not yet written.
    pub fn pending(&self) -> usize {
        self.out.len() - self.out_pos
    }

    /// May be closed to make room: it is not being written a response (idle, kept alive
    /// between requests, or sending a head). A response in progress is never cut; those are
    /// bounded by [`WRITE_TIMEOUT`] and [`http::MAX_RESPONSE_BYTES_IN_FLIGHT`].
    pub fn evictable(&self) -> bool {
        self.pending() == 0
    }

    /// Reads, answers and writes until the socket would block. `process` reads the process
    /// figures, only when a /metrics response is built.
    pub fn drive(&mut self, now: Instant, serve: &mut Serve<'_>) -> Status {
        loop {
            match self.flush_tls() {
                Ok(true) if self.closing => return Status::Close,
                Ok(true) => {}
                Ok(false) => return Status::Continue,
                Err(e) => {
                    log::debug!("http: TLS write failed: {e}");
                    return Status::Close;
                }
            }
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
                    if self.start_tls_close() {
                        continue; // send close_notify, then close
                    }
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
                Parse::Complete(req, len) if reads_body(&req, serve.mcp_http) => {
                    let n = match req.body {
                        Body::Length(n) if n <= mcp::MAX_LINE_BYTES as u64 => n as usize,
                        Body::Length(_) => {
                            log::debug!(
                                "http: POST /mcp body over {} bytes, answering 413",
                                mcp::MAX_LINE_BYTES
                            );
                            self.answer_error(413, now);
                            continue;
                        }
                        Body::Encoded => {
                            self.answer_error(411, now);
                            continue;
                        }
                        Body::None => 0,
                    };
                    if self.inbuf.len() < len + n {
                        self.need = len + n; // read on, under the head's deadline
                    } else {
                        self.need = 0;
                        self.close_after_write = req.close;
                        self.out_pos =
                            respond(&req, &self.inbuf[len..len + n], serve, &mut self.out);
                        self.inbuf.drain(..len + n);
                        self.deadline = now + WRITE_TIMEOUT;
                        continue;
                    }
                }
                Parse::Complete(req, len) => {
                    self.close_after_write = req.close || req.body != Body::None;
                    self.out_pos = respond(&req, &[], serve, &mut self.out);
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
            let limit = (http::MAX_HEAD_BYTES + 4).max(self.need);
            let room = limit.saturating_sub(self.inbuf.len()).min(chunk.len());
            match self.read_some(&mut chunk[..room]) {
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

    /// Answers `status` and closes after it.
    fn answer_error(&mut self, status: u16, now: Instant) {
        self.close_after_write = true;
        self.out_pos = respond_error(status, &mut self.out);
        self.inbuf.clear();
        self.need = 0;
        self.deadline = now + WRITE_TIMEOUT;
    }

    /// Writes pending output; Ok(true) when all is written, Ok(false) on WouldBlock.
    fn flush(&mut self) -> io::Result<bool> {
        while self.out_pos < self.out.len() {
            match self.write_some(self.out_pos) {
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
pub fn refuse(mut stream: impl Write) {
    let mut out = Vec::new();
    let start = respond_error(503, &mut out);
    let _ = stream.write(&out[start..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{self, Script};
    use crate::http::tests::serve;
    use crate::snapshot::Snapshot;

    const SCRAPE: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n";
    const OK: &str = "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 3\r\n\r\nok\n";

    fn snap() -> Snapshot {
        fixtures::snapshot(Vec::new())
    }

    /// Drives `conn` once at `now` with default settings.
    fn drive(conn: &mut Conn<Script>, snap: &Snapshot, now: Instant) -> Status {
        conn.drive(now, &mut serve(snap, 0))
    }

    #[test]
    fn keep_alive_answers_request_after_request_on_one_connection() {
        let (snap, t0) = (snap(), Instant::now());
        let mut conn = Conn::new(Script::new(&[SCRAPE], false), t0);
        assert_eq!(drive(&mut conn, &snap, t0), Status::Continue);
        assert_eq!(conn.stream.text(), OK);
        // Answered and idle: the idle deadline runs from the last response.
        assert_eq!(conn.deadline, t0 + IDLE_TIMEOUT);
        assert!(conn.evictable());
        let later = t0 + Duration::from_secs(3);
        conn.stream.pieces.push(SCRAPE.to_vec());
        assert_eq!(drive(&mut conn, &snap, later), Status::Continue);
        assert_eq!(conn.stream.text(), OK.repeat(2));
        assert_eq!(conn.deadline, later + IDLE_TIMEOUT);
        assert_eq!(conn.last_active, later);
        // The client closes: so do we.
        conn.stream.eof = true;
        assert_eq!(drive(&mut conn, &snap, later), Status::Close);
    }

    #[test]
    fn pipelined_requests_are_answered_in_order_one_at_a_time() {
        let (snap, t0) = (snap(), Instant::now());
        let both = [SCRAPE, b"GET /nope HTTP/1.1\r\nHost: a\r\n\r\n"].concat();
        let mut conn = Conn::new(Script::new(&[&both], false).with_room(10), t0);
        // The peer takes 10 bytes: the first answer is under way, the second not yet built.
        assert_eq!(drive(&mut conn, &snap, t0), Status::Continue);
        assert_eq!(conn.stream.written.len(), 10);
        assert_eq!(conn.pending(), OK.len() - 10);
        assert!(!conn.evictable(), "a response in progress is never cut");
        assert_eq!(conn.deadline, t0 + WRITE_TIMEOUT);
        conn.stream.room = usize::MAX;
        assert_eq!(drive(&mut conn, &snap, t0), Status::Continue);
        let text = conn.stream.text();
        assert!(text.starts_with(OK), "{text}");
        assert!(
            text[OK.len()..].starts_with("HTTP/1.1 404 Not Found\r\n"),
            "{text}"
        );
    }

    #[test]
    fn a_slow_reader_is_held_to_the_write_timeout_from_its_last_progress() {
        let (snap, t0) = (snap(), Instant::now());
        let mut conn = Conn::new(Script::new(&[SCRAPE], false).with_room(1), t0);
        assert_eq!(drive(&mut conn, &snap, t0), Status::Continue);
        assert_eq!(conn.stream.written.len(), 1);
        // One more byte of progress later restarts the write deadline.
        let later = t0 + Duration::from_secs(7);
        conn.stream.room = 1;
        assert_eq!(drive(&mut conn, &snap, later), Status::Continue);
        assert_eq!(conn.deadline, later + WRITE_TIMEOUT);
        // No progress: the deadline stays where it was.
        assert_eq!(
            drive(&mut conn, &snap, later + WRITE_TIMEOUT),
            Status::Continue
        );
        assert_eq!(conn.deadline, later + WRITE_TIMEOUT);
    }

    #[test]
    fn a_started_head_must_finish_within_the_head_timeout() {
        let (snap, t0) = (snap(), Instant::now());
        let mut conn = Conn::new(Script::new(&[b"GET /heal"], false), t0);
        let now = t0 + Duration::from_secs(1);
        assert_eq!(drive(&mut conn, &snap, now), Status::Continue);
        assert_eq!(conn.deadline, now + HEAD_TIMEOUT);
        assert!(conn.stream.written.is_empty());
        // The rest arrives in pieces: still answered once, byte for byte.
        conn.stream.pieces = vec![b"thz HTTP/1.1\r".to_vec(), b"\nHost: a\r\n\r\n".to_vec()];
        assert_eq!(drive(&mut conn, &snap, now), Status::Continue);
        assert_eq!(conn.stream.text(), OK);
    }

    #[test]
    fn connection_close_and_bad_requests_close_after_the_answer() {
        let (snap, t0) = (snap(), Instant::now());
        let close =
            b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\nGET /healthz HTTP/1.1\r\nHost: a\r\n\r\n";
        let mut conn = Conn::new(Script::new(&[close], false), t0);
        assert_eq!(drive(&mut conn, &snap, t0), Status::Close);
        let text = conn.stream.text();
        assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 1, "{text}");

        let mut conn = Conn::new(Script::new(&[b"BREW /pot\x01 HTTP/1.1\r\n\r\n"], false), t0);
        assert_eq!(drive(&mut conn, &snap, t0), Status::Close);
        assert!(conn
            .stream
            .text()
            .starts_with("HTTP/1.1 400 Bad Request\r\n"));

        let huge = vec![b'a'; http::MAX_HEAD_BYTES + 100];
        let mut conn = Conn::new(Script::new(&[b"GET / HTTP/1.1\r\nX: ", &huge], false), t0);
        assert_eq!(drive(&mut conn, &snap, t0), Status::Close);
        assert!(conn.stream.text().starts_with("HTTP/1.1 431 "));
        // Never more than the head limit (and a chunk) was buffered.
        assert!(
            conn.stream.pieces.concat().len() >= 90,
            "the rest was not read"
        );
    }

    #[test]
    fn a_failing_peer_closes_the_connection() {
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::ErrorKind::ConnectionReset.into())
            }
        }
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let (snap, t0) = (snap(), Instant::now());
        let mut conn = Conn::new(Broken, t0);
        assert_eq!(conn.drive(t0, &mut serve(&snap, 0)), Status::Close);
        // A peer that accepts zero bytes of a response is gone too.
        let mut conn = Conn::new(Script::new(&[SCRAPE], false).with_room(0), t0);
        assert_eq!(drive(&mut conn, &snap, t0), Status::Continue);
        assert_eq!(conn.pending(), OK.len());
    }

    #[test]
    fn mcp_post_body_is_read_across_pieces_and_bounded() {
        let (snap, t0) = (snap(), Instant::now());
        let body = br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
        let head = format!(
            "POST /mcp HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n\
             Accept: application/json, text/event-stream\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let mut conn = Conn::new(
            Script::new(&[head.as_bytes(), &body[..10], &body[10..]], false),
            t0,
        );
        let mut settings = serve(&snap, 0);
        settings.mcp_http = true;
        assert_eq!(conn.drive(t0, &mut settings), Status::Continue);
        let text = conn.stream.text();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(
            text.ends_with("\r\n\r\n{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}"),
            "{text:?}"
        );

        let big = format!(
            "POST /mcp HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n",
            mcp::MAX_LINE_BYTES + 1
        );
        let mut conn = Conn::new(Script::new(&[big.as_bytes()], false), t0);
        assert_eq!(conn.drive(t0, &mut settings), Status::Close);
        assert!(conn.stream.text().starts_with("HTTP/1.1 413 "));
    }

    #[test]
    fn refuse_answers_503() {
        let mut out = Vec::new();
        refuse(&mut out);
        assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 503 Service Unavailable\r\n"));
    }
}
