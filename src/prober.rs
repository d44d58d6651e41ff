//! The prober: probe cycles, one route at a time, each a non-blocking TCP connect under a
//! deadline of `min(timeout, 3 s)`.
//!
//! A cycle starts every interval (or right away when the last one overran it) and walks the
//! snapshot's routes in order; the next route starts as soon as the previous one ends, so at
//! most one probe socket is open. The connect is a small state machine (mio's recipe):
//! `connect` failing at once is an outcome; otherwise the socket is registered WRITABLE and on
//! its event `take_error()` decides failure, then `peer_addr()` success (`NotConnected` means
//! a spurious wake-up: keep waiting). A probe that never gets an event ends when the loop's
//! sweep finds its deadline passed. Everything takes `now` as an argument.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use crate::snapshot::{Change, Outcome, ProbeResult, Reason, Snapshot};

/// A probe in flight.
struct InFlight {
    token: Token,
    stream: TcpStream,
    /// Index of the route in the snapshot.
    index: usize,
    address: SocketAddr,
    started: Instant,
    deadline: Instant,
}

struct Cycle {
    started: Instant,
    /// The next route to probe.
    next: usize,
}

/// What the caller should do after [`Prober::advance`].
#[derive(Debug, PartialEq, Eq)]
pub enum Advance {
    /// Nothing to do until [`Prober::next_deadline`] or an event.
    Wait,
    /// A cycle is due: refresh the route source, then call [`Prober::start_cycle`].
    CycleDue,
}

pub struct Prober {
    enabled: bool,
    interval: Duration,
    timeout: Duration,
    next_cycle: Instant,
    cycle: Option<Cycle>,
    inflight: Option<InFlight>,
}

impl Prober {
    /// `timeout` is already clamped by the config. The first cycle is due at `now`.
    pub fn new(enabled: bool, interval: Duration, timeout: Duration, now: Instant) -> Prober {
        Prober {
            enabled,
            interval,
            timeout,
            next_cycle: now,
            cycle: None,
            inflight: None,
        }
    }

    /// When the loop must wake up for the prober at the latest.
    pub fn next_deadline(&self) -> Option<Instant> {
        match (&self.inflight, &self.cycle) {
            (Some(f), _) => Some(f.deadline),
            (None, Some(_)) => None, // advance() always leaves a probe in flight mid-cycle
            (None, None) if self.enabled => Some(self.next_cycle),
            (None, None) => None,
        }
    }

    /// The token of the probe in flight, to route its events here.
    pub fn token(&self) -> Option<Token> {
        self.inflight.as_ref().map(|f| f.token)
    }

    pub fn start_cycle(&mut self, now: Instant) {
        self.cycle = Some(Cycle {
            started: now,
            next: 0,
        });
    }

    /// Abandons the cycle in progress (the route set changed under it) and makes the next one
    /// due now.
    pub fn restart(&mut self, registry: &Registry, now: Instant) {
        if let Some(mut f) = self.inflight.take() {
            let _ = registry.deregister(&mut f.stream);
        }
        self.cycle = None;
        self.next_cycle = now;
    }

    /// Moves probing forward as far as it can go without waiting: ends an expired probe,
    /// starts the next route's probe (recording synchronous outcomes), ends a finished cycle.
    pub fn advance(
        &mut self,
        now: Instant,
        wall: SystemTime,
        registry: &Registry,
        snap: &mut Snapshot,
        next_token: &mut impl FnMut() -> Token,
    ) -> Advance {
        loop {
            if let Some(f) = &self.inflight {
                if now < f.deadline {
                    return Advance::Wait;
                }
                let result = failure(
                    Reason::Timeout,
                    Some(f.address),
                    "no answer before the deadline",
                );
                self.finish(registry, snap, result, wall);
                continue;
            }
            let Some(cycle) = &mut self.cycle else {
                if self.enabled && now >= self.next_cycle {
                    return Advance::CycleDue;
                }
                return Advance::Wait;
            };
            let index = cycle.next;
            let Some(state) = snap.routes.get(index) else {
                let started = cycle.started;
                let duration = now.saturating_duration_since(started);
                let overran = duration > self.interval;
                snap.cycle_done(duration, overran, wall);
                self.cycle = None;
                self.next_cycle = if overran {
                    now
                } else {
                    started + self.interval
                };
                log::debug!(
                    "probe cycle done in {duration:?}, {} routes",
                    snap.routes.len()
                );
                continue;
            };
            cycle.next += 1;
            let port = state.route.port;
            let ip = match resolve(&state.route.host) {
                Some(ip) => ip,
                None => {
                    let result = failure(
                        Reason::Dns,
                        None,
                        "host names other than localhost are not resolved yet",
                    );
                    record(snap, index, result, wall);
                    continue;
                }
            };
            let address = SocketAddr::new(ip, port);
            let deadline = now + self.timeout;
            match connect(address, registry, next_token) {
                Ok((stream, token)) => {
                    self.inflight = Some(InFlight {
                        token,
                        stream,
                        index,
                        address,
                        started: now,
                        deadline,
                    });
                }
                Err(e) => record(snap, index, from_error(&e, address), wall),
            }
        }
    }

    /// Handles an event for the probe's token. Returns true if the probe ended (the caller
    /// then calls `advance` to start the next one).
    pub fn on_event(
        &mut self,
        now: Instant,
        wall: SystemTime,
        registry: &Registry,
        snap: &mut Snapshot,
    ) -> bool {
        let Some(f) = &self.inflight else {
            return false;
        };
        let result = match connected(&f.stream) {
            Connect::Pending => return false,
            Connect::Done(Ok(())) => ProbeResult {
                outcome: Outcome::Reachable {
                    latency: now.saturating_duration_since(f.started),
                },
                address: Some(f.address),
                dns_duration: None,
                detail: None,
            },
            Connect::Done(Err(e)) => from_error(&e, f.address),
        };
        self.finish(registry, snap, result, wall);
        true
    }

    fn finish(
        &mut self,
        registry: &Registry,
        snap: &mut Snapshot,
        result: ProbeResult,
        wall: SystemTime,
    ) {
        if let Some(mut f) = self.inflight.take() {
            let _ = registry.deregister(&mut f.stream);
            record(snap, f.index, result, wall);
        }
    }
}

/// Resolution without blocking: IP literals and `localhost` only (for now).
fn resolve(host: &str) -> Option<IpAddr> {
    if let Ok(ip) = host.parse() {
        return Some(ip);
    }
    host.eq_ignore_ascii_case("localhost")
        .then_some(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

fn connect(
    address: SocketAddr,
    registry: &Registry,
    next_token: &mut impl FnMut() -> Token,
) -> io::Result<(TcpStream, Token)> {
    let mut stream = TcpStream::connect(address)?;
    let token = next_token();
    registry.register(&mut stream, token, Interest::WRITABLE)?;
    Ok((stream, token))
}

enum Connect {
    Pending,
    Done(io::Result<()>),
}

/// mio's connect recipe: `take_error`, then `peer_addr`.
fn connected(stream: &TcpStream) -> Connect {
    match stream.take_error() {
        Ok(Some(e)) | Err(e) => return Connect::Done(Err(e)),
        Ok(None) => {}
    }
    match stream.peer_addr() {
        Ok(_) => Connect::Done(Ok(())),
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Connect::Pending,
        Err(e) => Connect::Done(Err(e)),
    }
}

fn record(snap: &mut Snapshot, index: usize, result: ProbeResult, wall: SystemTime) {
    let route = snap
        .routes
        .get(index)
        .map(|s| format!("{}/{} ({})", s.route.node, s.route.name, s.route.backend));
    let detail = result.detail.clone();
    let reason = match result.outcome {
        Outcome::Failed(r) => Some(r),
        Outcome::Reachable { .. } => None,
    };
    let change = snap.record(index, result, wall);
    let (Some(route), detail) = (route, detail.unwrap_or_default()) else {
        return;
    };
    match (change, reason) {
        (Change::Down | Change::First, Some(r)) => {
            log::info!("backend {route} is down: {} ({detail})", r.as_str())
        }
        (Change::Up { down_for }, _) => log::info!(
            "backend {route} is up again after {:.1}s down",
            down_for.as_secs_f64()
        ),
        (Change::First, None) => log::debug!("backend {route} is up"),
        (_, Some(r)) => log::debug!("backend {route} still down: {} ({detail})", r.as_str()),
        _ => {}
    }
}

fn failure(reason: Reason, address: Option<SocketAddr>, detail: &str) -> ProbeResult {
    ProbeResult {
        outcome: Outcome::Failed(reason),
        address,
        dns_duration: None,
        detail: Some(detail.to_owned()),
    }
}

/// Maps a connect error to a reason.
pub fn reason_for(e: &io::Error) -> Reason {
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => Reason::Refused,
        Some(libc::ETIMEDOUT) => Reason::Timeout,
        Some(libc::ENETUNREACH | libc::EHOSTUNREACH) => Reason::Unreachable,
        _ => Reason::Error,
    }
}

fn from_error(e: &io::Error, address: SocketAddr) -> ProbeResult {
    let reason = reason_for(e);
    if reason == Reason::Error {
        log::debug!("probe of {address} failed: {e}");
    }
    failure(reason, Some(address), &e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::Route;
    use mio::{Events, Poll};

    fn snapshot(routes: Vec<Route>) -> Snapshot {
        let mut s = Snapshot::new(true, Duration::from_secs(1), SystemTime::UNIX_EPOCH);
        s.set_routes(routes);
        s
    }

    #[test]
    fn reasons_from_os_errors() {
        let e = |code| io::Error::from_raw_os_error(code);
        assert_eq!(reason_for(&e(libc::ECONNREFUSED)), Reason::Refused);
        assert_eq!(reason_for(&e(libc::ETIMEDOUT)), Reason::Timeout);
        assert_eq!(reason_for(&e(libc::ENETUNREACH)), Reason::Unreachable);
        assert_eq!(reason_for(&e(libc::EHOSTUNREACH)), Reason::Unreachable);
        assert_eq!(reason_for(&e(libc::EACCES)), Reason::Error);
    }

    /// Cycle bookkeeping with made-up instants: no sockets are opened because the only
    /// route's host can't be resolved, so each probe ends synchronously.
    #[test]
    fn cycles_schedule_by_interval_and_count_overruns() {
        let poll = Poll::new().unwrap();
        let t0 = Instant::now();
        let mut p = Prober::new(true, Duration::from_secs(1), Duration::from_secs(3), t0);
        let mut snap = snapshot(vec![Route::new("n", "r", 1, "name.invalid", 1).unwrap()]);
        let mut tok = || Token(100);
        let wall = SystemTime::UNIX_EPOCH;
        assert_eq!(
            p.advance(t0, wall, poll.registry(), &mut snap, &mut tok),
            Advance::CycleDue
        );
        p.start_cycle(t0);
        assert_eq!(
            p.advance(t0, wall, poll.registry(), &mut snap, &mut tok),
            Advance::Wait
        );
        assert_eq!(snap.cycles_total, 1);
        assert_eq!(snap.routes[0].failures(Reason::Dns), 1);
        assert_eq!(p.next_deadline(), Some(t0 + Duration::from_secs(1)));
        let t1 = t0 + Duration::from_millis(999);
        assert_eq!(
            p.advance(t1, wall, poll.registry(), &mut snap, &mut tok),
            Advance::Wait
        );
        let t2 = t0 + Duration::from_secs(1);
        assert_eq!(
            p.advance(t2, wall, poll.registry(), &mut snap, &mut tok),
            Advance::CycleDue
        );
        // A cycle that ends 1.5 s after it started overran the 1 s interval.
        p.start_cycle(t2);
        let t3 = t2 + Duration::from_millis(1500);
        assert_eq!(
            p.advance(t3, wall, poll.registry(), &mut snap, &mut tok),
            Advance::CycleDue
        );
        assert_eq!(snap.overruns_total, 1);
        assert_eq!(snap.last_cycle_duration, Some(Duration::from_millis(1500)));
    }

    #[test]
    fn disabled_prober_never_starts_a_cycle() {
        let poll = Poll::new().unwrap();
        let t0 = Instant::now();
        let mut p = Prober::new(false, Duration::from_secs(1), Duration::from_secs(3), t0);
        let mut snap = snapshot(vec![]);
        let mut tok = || Token(100);
        assert_eq!(
            p.advance(
                t0,
                SystemTime::UNIX_EPOCH,
                poll.registry(),
                &mut snap,
                &mut tok
            ),
            Advance::Wait
        );
        assert_eq!(p.next_deadline(), None);
    }

    /// The connect state machine against real loopback sockets: reachable, refused, and a
    /// deadline that passes (a made-up `now` past it) before any event.
    #[test]
    fn connect_outcomes_on_loopback() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let open = listener.local_addr().unwrap().port();
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let mut snap = snapshot(vec![
            Route::new("n", "open", 1, "127.0.0.1", open).unwrap(),
            Route::new("n", "closed", 2, "127.0.0.1", closed).unwrap(),
        ]);
        let mut poll = Poll::new().unwrap();
        let mut events = Events::with_capacity(8);
        let t0 = Instant::now();
        let mut p = Prober::new(true, Duration::from_secs(10), Duration::from_secs(3), t0);
        let mut n = 100;
        let mut tok = || {
            n += 1;
            Token(n)
        };
        let wall = SystemTime::UNIX_EPOCH;
        assert_eq!(
            p.advance(t0, wall, poll.registry(), &mut snap, &mut tok),
            Advance::CycleDue
        );
        p.start_cycle(t0);
        let deadline = Instant::now() + Duration::from_secs(5);
        while snap.cycles_total == 0 && Instant::now() < deadline {
            p.advance(Instant::now(), wall, poll.registry(), &mut snap, &mut tok);
            poll.poll(&mut events, Some(Duration::from_millis(100)))
                .unwrap();
            for ev in events.iter() {
                if Some(ev.token()) == p.token() {
                    p.on_event(Instant::now(), wall, poll.registry(), &mut snap);
                }
            }
        }
        assert_eq!(snap.routes[0].reachable(), Some(true));
        assert_eq!(snap.routes[1].failures(Reason::Refused), 1);

        // A deadline in the past ends the probe as a timeout without waiting for an event.
        p.start_cycle(t0);
        assert_eq!(
            p.advance(t0, wall, poll.registry(), &mut snap, &mut tok),
            Advance::Wait
        );
        assert!(p.token().is_some());
        let late = t0 + Duration::from_secs(3);
        p.advance(late, wall, poll.registry(), &mut snap, &mut tok);
        assert_eq!(snap.routes[0].failures(Reason::Timeout), 1);
    }
}
