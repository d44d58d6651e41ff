//! One MCP peer's byte plumbing, the same for stdio and for a TCP client: read a bounded
//! chunk, frame lines, answer each from the snapshot, write the answers — and only read more
//! once the previous answers are written, so a client that sends faster than it reads can't
//! make the agent buffer more than one chunk of answers.
//!
//! Lines are fed to the framer one at a time, so one answer is built at a time; the memory a
//! peer holds is at most [`READ_CHUNK`] of input, the framer's [`mcp::MAX_LINE_BYTES`], and
//! the answer being written.

use std::io::{self, Read, Write};
use std::time::SystemTime;

use crate::mcp;
use crate::snapshot::Snapshot;
use crate::stdio::{StdIn, StdOut};

/// Bytes read from a peer at a time. A request line is usually under 200 bytes.
pub const READ_CHUNK: usize = 4096;
/// Answer buffers above this are freed once written (a 10,000-route answer is megabytes).
const KEEP_OUTPUT_BYTES: usize = 64 * 1024;
/// Bytes of answers being written to all MCP peers together past which a `tools/call` is
/// refused with a busy error instead of rendered: the answer for 10,000 routes is ~6 MiB, and
/// 64 clients each holding one unread would be 400 MiB on a 512 MiB host.
pub const MAX_ANSWER_BYTES_IN_FLIGHT: usize = 8 * 1024 * 1024;
/// Lines answered per `drive` call before yielding to the rest of the loop, so one busy
/// client (or a large file on stdin) can't hold up probes and scrapes.
pub const LINES_PER_TURN: usize = 32;
/// Capacity the framer keeps between lines. After a long line the buffer is freed instead of
/// holding up to 1 MiB per idle connection; typical lines fit without reallocating.
pub const RETAINED_BUFFER_BYTES: usize = 64 * 1024;

/// The two directions of a peer.
pub trait PeerIo {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    fn write(&mut self, buf: &[u8]) -> io::Result<usize>;
}

impl<T: Read + Write> PeerIo for T {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        Read::read(self, buf)
    }
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Write::write(self, buf)
    }
}

/// stdin and stdout as one peer.
pub struct Stdio<'a> {
    pub stdin: &'a mut StdIn,
    pub stdout: &'a mut StdOut,
}

impl PeerIo for Stdio<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stdin.read(buf)
    }
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stdout.write(buf)
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Status {
    /// Waiting for the socket (more input, or room to write).
    Continue,
    /// Has more to do but gave the loop a turn: drive again soon, without waiting for an event.
    Yield,
    /// The peer is done (EOF after all answers were written) or broken.
    Close,
}

#[derive(Default)]
pub struct Peer {
    framer: LineFramer,
    input: Vec<u8>,
    input_pos: usize,
    out: Vec<u8>,
    out_pos: usize,
    eof: bool,
}

impl Peer {
    pub fn new() -> Peer {
        Peer::default()
    }

    /// Bytes of the answer not yet written.
    pub fn pending(&self) -> usize {
        self.out.len() - self.out_pos
    }

    /// Reads, answers and writes until the peer would block or is done. `in_flight` is what
    /// the other peers still have to write ([`MAX_ANSWER_BYTES_IN_FLIGHT`]).
    pub fn drive(
        &mut self,
        io: &mut impl PeerIo,
        snap: &Snapshot,
        wall: SystemTime,
        in_flight: usize,
    ) -> Status {
        let busy = in_flight > MAX_ANSWER_BYTES_IN_FLIGHT;
        let mut lines = 0;
        loop {
            while self.out_pos < self.out.len() {
                match io.write(&self.out[self.out_pos..]) {
                    Ok(0) => return Status::Close,
                    Ok(n) => self.out_pos += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Status::Continue,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        log::debug!("mcp: write failed: {e}");
                        return Status::Close;
                    }
                }
            }
            if self.out.capacity() > KEEP_OUTPUT_BYTES {
                self.out = Vec::new();
            }
            self.out.clear();
            self.out_pos = 0;

            // Answer the next line already read, one line at a time.
            if self.input_pos < self.input.len() {
                if lines == LINES_PER_TURN {
                    return Status::Yield;
                }
                lines += 1;
                let rest = &self.input[self.input_pos..];
                let len = rest
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(rest.len(), |i| i + 1);
                let (framer, out) = (&mut self.framer, &mut self.out);
                framer.push(&rest[..len], |frame| answer(frame, snap, wall, busy, out));
                self.input_pos += len;
                continue;
            }
            if self.eof {
                return Status::Close;
            }
            self.input.resize(READ_CHUNK, 0);
            self.input_pos = 0;
            match io.read(&mut self.input) {
                Ok(0) => {
                    self.input.clear();
                    self.eof = true;
                    let (framer, out) = (&mut self.framer, &mut self.out);
                    framer.finish(|frame| answer(frame, snap, wall, busy, out));
                }
                Ok(n) => self.input.truncate(n),
                Err(e) => {
                    self.input.clear();
                    match e.kind() {
                        io::ErrorKind::WouldBlock => return Status::Continue,
                        io::ErrorKind::Interrupted => {}
                        _ => {
                            log::debug!("mcp: read failed: {e}");
                            return Status::Close;
                        }
                    }
                }
            }
        }
    }
}

fn answer(frame: Frame<'_>, snap: &Snapshot, wall: SystemTime, busy: bool, out: &mut Vec<u8>) {
    match frame {
        Frame::Line(line) if busy && mcp::busy_response(line, out) => {}
        Frame::Line(line) => mcp::handle_line(line, snap, wall, out),
        Frame::TooLong => mcp::too_long_response(out),
    }
}

// ---------------------------------------------------------------- framing

/// What [`LineFramer::push`] yields.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// One complete line, without its `\n` and without a `\r` before it.
    Line(&'a [u8]),
    /// A line longer than [`mcp::MAX_LINE_BYTES`]. Yielded once, when the limit is crossed; the
    /// rest of that line, up to its `\n`, is dropped without being buffered. Answer it with
    /// [`mcp::too_long_response`].
    TooLong,
}

/// Splits a byte stream into `\n`-terminated lines. Pure: bytes in, frames out. The buffer
/// holds only an unfinished line, never more than [`mcp::MAX_LINE_BYTES`] (capacity included).
#[derive(Debug, Default)]
pub struct LineFramer {
    buf: Vec<u8>,
    /// Inside a too-long line: drop bytes until the next `\n`.
    discarding: bool,
}

impl LineFramer {
    pub fn new() -> LineFramer {
        LineFramer::default()
    }

    /// Feeds bytes as they arrive; calls `on_frame` for each complete line or too-long line.
    /// Lines that arrive whole in `data` are passed on without copying.
    pub fn push(&mut self, mut data: &[u8], mut on_frame: impl FnMut(Frame<'_>)) {
        while !data.is_empty() {
            let Some(nl) = data.iter().position(|&b| b == b'\n') else {
                if self.discarding {
                    return;
                }
                if self.buf.len() + data.len() > mcp::MAX_LINE_BYTES {
                    self.reset();
                    self.discarding = true;
                    on_frame(Frame::TooLong);
                } else {
                    self.append(data);
                }
                return;
            };
            let head = &data[..nl];
            data = &data[nl + 1..];
            if self.discarding {
                self.discarding = false;
            } else if self.buf.len() + head.len() > mcp::MAX_LINE_BYTES {
                self.reset();
                on_frame(Frame::TooLong);
            } else if self.buf.is_empty() {
                on_frame(Frame::Line(strip_cr(head)));
            } else {
                self.append(head);
                on_frame(Frame::Line(strip_cr(&self.buf)));
                self.reset();
            }
        }
    }

    /// At end of input: yields the unterminated last line, if any (a client that wrote its
    /// last message without `\n` and closed), and resets the framer.
    pub fn finish(&mut self, mut on_frame: impl FnMut(Frame<'_>)) {
        if !self.discarding && !self.buf.is_empty() {
            on_frame(Frame::Line(strip_cr(&self.buf)));
        }
        self.reset();
        self.discarding = false;
    }

    /// Bytes of an unfinished line held.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Grows the buffer at most to the limit (Vec's own doubling could overshoot it).
    fn append(&mut self, bytes: &[u8]) {
        let need = self.buf.len() + bytes.len();
        if need > self.buf.capacity() {
            let target = need.max(self.buf.capacity() * 2).min(mcp::MAX_LINE_BYTES);
            self.buf.reserve_exact(target - self.buf.len());
        }
        self.buf.extend_from_slice(bytes);
    }

    fn reset(&mut self) {
        if self.buf.capacity() > RETAINED_BUFFER_BYTES {
            self.buf = Vec::new();
        } else {
            self.buf.clear();
        }
    }
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{self, Script};
    use crate::mcp::MAX_LINE_BYTES;

    fn snap() -> Snapshot {
        fixtures::snapshot(Vec::new())
    }

    #[test]
    fn answers_lines_split_across_reads_and_closes_at_eof() {
        let mut io = Script::new(
            &[
                b"{\"jsonrpc\":\"2.0\",\"id\":1,\"met",
                b"hod\":\"ping\"}\nnot json\n",
            ],
            true,
        );
        let mut peer = Peer::new();
        assert_eq!(
            peer.drive(&mut io, &snap(), SystemTime::UNIX_EPOCH, 0),
            Status::Close
        );
        let text = io.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0], r#"{"jsonrpc":"2.0","id":1,"result":{}}"#);
        assert!(lines[1].contains("-32700"), "{}", lines[1]);
    }

    #[test]
    fn tools_call_is_refused_while_other_answers_are_past_the_budget() {
        let call = br#"{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"query_backend_health"}}"#;
        let mut input = call.to_vec();
        input.extend_from_slice(b"\n{\"jsonrpc\":\"2.0\",\"id\":6,\"method\":\"ping\"}\n");
        let mut io = Script::new(&[&input], true);
        let busy = MAX_ANSWER_BYTES_IN_FLIGHT + 1;
        let mut peer = Peer::new();
        assert_eq!(
            peer.drive(&mut io, &snap(), SystemTime::UNIX_EPOCH, busy),
            Status::Close
        );
        let text = io.text();
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with(r#"{"jsonrpc":"2.0","id":5,"error":{"code":-32000,"#),
            "{text}"
        );
        assert_eq!(lines[1], r#"{"jsonrpc":"2.0","id":6,"result":{}}"#);
    }

    #[test]
    fn stops_reading_while_an_answer_is_unwritten() {
        let mut input = Vec::new();
        for id in 0..50 {
            input.extend_from_slice(
                format!("{{\"jsonrpc\":\"2.0\",\"id\":{id},\"method\":\"ping\"}}\n").as_bytes(),
            );
        }
        let mut io = Script::new(&[&input], false).with_room(10);
        let mut peer = Peer::new();
        assert_eq!(
            peer.drive(&mut io, &snap(), SystemTime::UNIX_EPOCH, 0),
            Status::Continue
        );
        // One answer built, 10 bytes of it written, nothing else answered yet.
        assert_eq!(io.written.len(), 10);
        assert!(peer.pending() > 0);
        assert_eq!(
            peer.out.len(),
            r#"{"jsonrpc":"2.0","id":0,"result":{}}"#.len() + 1
        );
        io.room = usize::MAX;
        // The first answer is written, then the rest comes LINES_PER_TURN lines per call.
        assert_eq!(
            peer.drive(&mut io, &snap(), SystemTime::UNIX_EPOCH, 0),
            Status::Yield
        );
        assert_eq!(io.text().lines().count(), 1 + LINES_PER_TURN);
        assert_eq!(
            peer.drive(&mut io, &snap(), SystemTime::UNIX_EPOCH, 0),
            Status::Continue
        );
        assert_eq!(io.text().lines().count(), 50);
    }

    // ------------------------------------------------------------ framer

    fn frames(framer: &mut LineFramer, data: &[u8]) -> Vec<Option<Vec<u8>>> {
        let mut got = Vec::new();
        framer.push(data, |f| {
            got.push(match f {
                Frame::Line(l) => Some(l.to_vec()),
                Frame::TooLong => None,
            })
        });
        got
    }

    #[test]
    fn framer_joins_lines_split_across_reads() {
        let mut f = LineFramer::new();
        assert!(frames(&mut f, b"{\"a\":").is_empty());
        assert_eq!(f.buffered(), 5);
        assert_eq!(
            frames(&mut f, b"1}\n{\"b\"\n\nc"),
            vec![
                Some(b"{\"a\":1}".to_vec()),
                Some(b"{\"b\"".to_vec()),
                Some(vec![])
            ]
        );
        assert_eq!(frames(&mut f, b"\n"), vec![Some(b"c".to_vec())]);
        assert_eq!(f.buffered(), 0);
    }

    #[test]
    fn framer_strips_crlf() {
        let mut f = LineFramer::new();
        assert_eq!(frames(&mut f, b"one\r\ntw"), vec![Some(b"one".to_vec())]);
        assert_eq!(frames(&mut f, b"o\r"), vec![]);
        assert_eq!(frames(&mut f, b"\n"), vec![Some(b"two".to_vec())]);
        // Only one CR before the LF is framing; anything else is content.
        assert_eq!(frames(&mut f, b"x\r\r\n"), vec![Some(b"x\r".to_vec())]);
    }

    #[test]
    fn framer_limit_exactly_at_and_over() {
        let mut f = LineFramer::new();
        let mut at = vec![b'x'; MAX_LINE_BYTES];
        at.push(b'\n');
        assert_eq!(
            frames(&mut f, &at),
            vec![Some(at[..MAX_LINE_BYTES].to_vec())]
        );
        // Same, arriving in pieces: buffered up to exactly the limit.
        assert!(frames(&mut f, &at[..MAX_LINE_BYTES]).is_empty());
        assert_eq!(f.buffered(), MAX_LINE_BYTES);
        assert_eq!(frames(&mut f, b"\n").len(), 1);
        // One byte over: TooLong, whole or in pieces.
        let mut over = vec![b'x'; MAX_LINE_BYTES + 1];
        over.push(b'\n');
        assert_eq!(frames(&mut f, &over), vec![None]);
        assert!(frames(&mut f, &over[..MAX_LINE_BYTES]).is_empty());
        assert_eq!(frames(&mut f, b"x"), vec![None]);
        assert_eq!(f.buffered(), 0);
        assert_eq!(
            frames(&mut f, b"\n"),
            vec![],
            "the rest of the long line is dropped"
        );
    }

    #[test]
    fn framer_too_long_line_then_good_line() {
        let mut f = LineFramer::new();
        let chunk = vec![b'y'; 300 * 1024];
        let mut events = Vec::new();
        for _ in 0..8 {
            events.extend(frames(&mut f, &chunk));
            assert!(f.buffered() <= MAX_LINE_BYTES);
            assert!(f.buf.capacity() <= MAX_LINE_BYTES);
        }
        assert_eq!(events, vec![None], "TooLong exactly once");
        assert_eq!(f.buffered(), 0, "nothing of the long line is kept");
        assert_eq!(
            frames(&mut f, b"yyy\n{\"ok\":1}\r\n"),
            vec![Some(b"{\"ok\":1}".to_vec())]
        );
        // The long buffer was released.
        assert!(f.buf.capacity() <= RETAINED_BUFFER_BYTES);
    }

    #[test]
    fn framer_finish_yields_unterminated_line() {
        let mut f = LineFramer::new();
        frames(&mut f, b"{\"last\":true}");
        let mut got = Vec::new();
        f.finish(|fr| got.push(format!("{fr:?}")));
        assert_eq!(got.len(), 1);
        f.finish(|_| panic!("nothing left"));
    }
}
