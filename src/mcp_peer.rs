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

use crate::mcp::{self, Frame, LineFramer};
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A scripted peer: hands out input in the given pieces, then WouldBlock or EOF; accepts
    /// at most `room` bytes of output per write call until WouldBlock.
    struct Script {
        pieces: Vec<Vec<u8>>,
        eof: bool,
        written: Vec<u8>,
        room: usize,
    }

    impl PeerIo for Script {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.pieces.is_empty() {
                return if self.eof {
                    Ok(0)
                } else {
                    Err(io::ErrorKind::WouldBlock.into())
                };
            }
            let piece = self.pieces.remove(0);
            let n = piece.len().min(buf.len());
            buf[..n].copy_from_slice(&piece[..n]);
            if n < piece.len() {
                self.pieces.insert(0, piece[n..].to_vec());
            }
            Ok(n)
        }
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.room == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.room);
            self.room -= n;
            self.written.extend_from_slice(&buf[..n]);
            Ok(n)
        }
    }

    fn snap() -> Snapshot {
        Snapshot::new(true, Duration::from_secs(30), SystemTime::UNIX_EPOCH)
    }

    #[test]
    fn answers_lines_split_across_reads_and_closes_at_eof() {
        let mut io = Script {
            pieces: vec![
                b"{\"jsonrpc\":\"2.0\",\"id\":1,\"met".to_vec(),
                b"hod\":\"ping\"}\nnot json\n".to_vec(),
            ],
            eof: true,
            written: Vec::new(),
            room: usize::MAX,
        };
        let mut peer = Peer::new();
        assert_eq!(
            peer.drive(&mut io, &snap(), SystemTime::UNIX_EPOCH, 0),
            Status::Close
        );
        let text = String::from_utf8(io.written).unwrap();
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
        let mut io = Script {
            pieces: vec![input],
            eof: true,
            written: Vec::new(),
            room: usize::MAX,
        };
        let busy = MAX_ANSWER_BYTES_IN_FLIGHT + 1;
        let mut peer = Peer::new();
        assert_eq!(
            peer.drive(&mut io, &snap(), SystemTime::UNIX_EPOCH, busy),
            Status::Close
        );
        let text = String::from_utf8(io.written).unwrap();
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
        let mut io = Script {
            pieces: vec![input],
            eof: false,
            written: Vec::new(),
            room: 10,
        };
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
        assert_eq!(
            String::from_utf8(io.written.clone())
                .unwrap()
                .lines()
                .count(),
            1 + LINES_PER_TURN
        );
        assert_eq!(
            peer.drive(&mut io, &snap(), SystemTime::UNIX_EPOCH, 0),
            Status::Continue
        );
        assert_eq!(String::from_utf8(io.written).unwrap().lines().count(), 50);
    }
}
