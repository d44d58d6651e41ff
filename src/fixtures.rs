//! Made-up routes, probe results and snapshots for unit tests and benchmarks: one place that
//! builds the data the renderers, the MCP server and the prober are tested and measured on.
//!
//! It is compiled into the library, not behind `cfg(test)`, because `benches/` is a separate
//! crate that sees only the library's public items; the agent never calls it, so the linker
//! drops it from the binary. Nothing here reads input: a fixture that can't be built is a bug
//! in the fixture, and says so.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::route::Route;
use crate::snapshot::{Outcome, ProbeResult, Reason, Snapshot};

/// The wall time fixtures start at: 2023-11-14T22:13:20Z.
pub fn t0() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

/// One route; the arguments are [`Route::new`]'s.
pub fn route(node: &str, name: &str, listen_port: u16, backend: &str, port: u16) -> Route {
    Route::new(node, name, listen_port, backend, port).expect("fixture route is valid")
}

/// `n` loopback routes, the shape of a real fleet's (node, route name, listen port, backend).
pub fn routes(n: usize) -> Vec<Route> {
    (0..n)
        .map(|i| {
            route(
                &format!("layer4-{:02}", i / 1000),
                &format!("tcp-proxy-{i:05}"),
                (10_000 + i % 1000) as u16,
                "127.0.0.1",
                (20_000 + i % 40_000) as u16,
            )
        })
        .collect()
}

/// A snapshot with probing on, a 30 s interval, started at [`t0`], holding `routes`.
pub fn snapshot(routes: Vec<Route>) -> Snapshot {
    let mut snap = Snapshot::new(true, Duration::from_secs(30), t0());
    snap.set_routes(routes);
    snap
}

/// A reachable result, connected in `latency`.
pub fn reachable(latency: Duration) -> ProbeResult {
    ProbeResult::new(Outcome::Reachable { latency })
}

/// A failed result for `reason`.
pub fn failed(reason: Reason) -> ProbeResult {
    ProbeResult::new(Outcome::Failed(reason))
}

/// `n` routes after three cycles 30 s apart, as the prober leaves them: every route has a
/// result with the address connected to; 90 % reachable, 10 % down (timed out in the first
/// cycle, refused with the OS error as detail since), so every metric family and the MCP
/// `unreachable_only` filter have something to show. Returns the snapshot and a wall time 5 s
/// after the last cycle ended (the MCP status is "current" then).
pub fn fleet(n: usize) -> (Snapshot, SystemTime) {
    let mut snap = snapshot(routes(n));
    for cycle in 0..3u64 {
        let at = t0() + Duration::from_secs(30 * cycle);
        for i in 0..n {
            let address = Some(SocketAddr::from((
                [127, 0, 0, 1],
                snap.routes[i].route.port,
            )));
            let result = match (i % 10 == 9, cycle) {
                (true, 0) => ProbeResult {
                    address,
                    detail: Some("connect timed out".into()),
                    ..failed(Reason::Timeout)
                },
                (true, _) => ProbeResult {
                    address,
                    detail: Some("Connection refused (os error 111)".into()),
                    ..failed(Reason::Refused)
                },
                (false, _) => ProbeResult {
                    address,
                    ..reachable(Duration::from_micros(40 + (i as u64 * 7) % 300))
                },
            };
            snap.record(i, result, at);
        }
        snap.cycle_done(Duration::from_millis(80), false, at);
    }
    // The last cycle ended at t0 + 60 s.
    (snap, t0() + Duration::from_secs(65))
}

/// `name` in DNS wire form (length-prefixed labels, then a zero byte), assembled by hand
/// rather than by `dns::wire`, so the parser and the lookup are checked against bytes they
/// did not make. Used by the resolver's unit tests and by the tests' DNS responder.
pub fn dns_name(name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for label in name.split('.').filter(|l| !l.is_empty()) {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    out
}

/// A stream that plays a script, for driving a connection's state machine without a socket:
/// reads hand out `pieces` one at a time (a piece larger than the caller's buffer is split),
/// then `WouldBlock`, or end of file once `eof` is set; writes accept at most `room` bytes
/// in all, then `WouldBlock` until the test makes more room.
#[derive(Debug, Default)]
pub struct Script {
    pub pieces: Vec<Vec<u8>>,
    pub eof: bool,
    pub written: Vec<u8>,
    pub room: usize,
}

impl Script {
    /// A peer that sends `pieces`, then closes if `eof`, and reads everything written.
    pub fn new(pieces: &[&[u8]], eof: bool) -> Script {
        Script {
            pieces: pieces.iter().map(|p| p.to_vec()).collect(),
            eof,
            written: Vec::new(),
            room: usize::MAX,
        }
    }

    /// The same script, but the peer takes only `room` bytes of writes until the test gives
    /// it more (a slow reader).
    pub fn with_room(mut self, room: usize) -> Script {
        self.room = room;
        self
    }

    /// What was written, as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.written).into_owned()
    }
}

impl Read for Script {
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
}

impl Write for Script {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.room == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(self.room);
        self.room -= n;
        self.written.extend_from_slice(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
