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
//!
//! Two rules keep a backend's reported state about the backend:
//! - A probe the agent could not run for want of its own resources (no file descriptor,
//!   buffer or memory for the socket) is not a backend failure: the route keeps its last
//!   result, `Snapshot::agent_errors.probe` counts it, and one warning says so when it starts.
//! - A completed TCP handshake is "reachable", even when the backend resets the connection
//!   before we look: the connect then reports ECONNRESET (or EPIPE after a FIN), which only an
//!   established connection can get (a reset during the handshake is ECONNREFUSED). So a
//!   backend that accepts and resets at once is up every time, whatever the timing.
//!
//! A backend given by name is first resolved by the agent's own resolver (`src/dns/`) on the
//! same loop; the lookup and the connect share the route's one deadline. Latency is the
//! connect time alone; the lookup time is reported apart.
//!
//! Probing as Envoy connects (the route's `cluster_type` and `connect_timeout`): the deadline
//! is the route's `connect_timeout` when it has one, else `--health-probe-timeout`, clamped to
//! 3 s either way. A `strict_dns` route probes every address of the answer (at most
//! `dns::MAX_ADDRS_PER_ANSWER`), still one connect at a time, each under its own deadline (the
//! first shares it with the lookup), and is up only when all of them answered; the result
//! carries how many there were and how many answered. `logical_dns`, `static` and routes
//! without a type probe the first address (a literal is its own first address).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use crate::config::{MAX_PROBE_TIMEOUT, MIN_PROBE_TIMEOUT};
use crate::dns::{is_agent_shortage, DnsFailure, Lookup, Resolver, Start};
use crate::route::{ClusterType, Route};
use crate::snapshot::{AddressCount, Change, Outcome, ProbeResult, Reason, Snapshot};

/// A probe in flight.
struct InFlight {
    token: Token,
    /// Index of the route in the snapshot.
    index: usize,
    port: u16,
    /// When the probe (lookup included) started, and its one deadline.
    started: Instant,
    deadline: Instant,
    /// The route's own deadline span (its `connect_timeout` or the agent's), for each address.
    timeout: Duration,
    stage: Stage,
    /// A strict_dns route: the addresses still to probe and what the others gave.
    spread: Option<Box<Spread>>,
}

/// The state of a strict_dns probe across the addresses of its answer.
struct Spread {
    /// Addresses not probed yet, in answer order.
    rest: std::collections::VecDeque<IpAddr>,
    total: u16,
    reachable: u16,
    /// The first address that failed, with its result (the route's reason and detail).
    first_failure: Option<ProbeResult>,
    /// The first address, reported as the route's address when all answered.
    first: Option<SocketAddr>,
    slowest: Duration,
}

impl Spread {
    /// A spread over `all` (the lookup's answer); the first address is probed by the caller.
    fn new(all: &[IpAddr]) -> Option<Box<Spread>> {
        let all = &all[..all.len().min(crate::dns::MAX_ADDRS_PER_ANSWER)];
        let rest = all.iter().skip(1).copied().collect();
        Some(Box::new(Spread {
            rest,
            total: all.len().max(1) as u16,
            reachable: 0,
            first_failure: None,
            first: None,
            slowest: Duration::ZERO,
        }))
    }
}

/// The deadline span of one route's probe: its `connect_timeout` when set (as Envoy uses it),
/// else the agent's `--health-probe-timeout`; never above the 3 s clamp nor below
/// `MIN_PROBE_TIMEOUT` (a shorter deadline measures the agent's loop, not the backend).
pub fn route_timeout(route: &Route, default: Duration) -> Duration {
    route
        .connect_timeout
        .unwrap_or(default)
        .clamp(MIN_PROBE_TIMEOUT, MAX_PROBE_TIMEOUT)
}

enum Stage {
    /// Not started yet: the name is being looked up at once or the address is a literal.
    New,
    /// Waiting for the name server.
    Resolving(Box<Lookup>),
    /// An address to connect to: the name just resolved (connected within the same call), or
    /// the next address of a strict_dns answer.
    Resolved { ip: IpAddr, dns: Duration },
    Connecting {
        stream: TcpStream,
        address: SocketAddr,
        connect_started: Instant,
        dns: Option<Duration>,
    },
}

/// What an in-flight probe needs, found by [`Prober::step`].
enum Step {
    Wait(InFlight),
    /// The lookup could not be run for want of the agent's own resources: not the
    /// backend's failure (see [`Prober::skip`]).
    Skip(InFlight, DnsFailure),
    /// The current attempt ended (its socket is closed): conclude it.
    Done(InFlight, ProbeResult),
    Connect(InFlight, IpAddr, Duration),
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
    resolver: Resolver,
    enabled: bool,
    interval: Duration,
    timeout: Duration,
    next_cycle: Instant,
    /// With a phase (see [`Prober::set_phase`]): an instant on the cycle grid.
    grid: Option<Instant>,
    cycle: Option<Cycle>,
    inflight: Option<InFlight>,
    /// Probes skipped in a row for lack of the agent's own resources (logged when it starts
    /// and when it ends).
    skipped: u64,
}

impl Prober {
    /// `timeout` is already clamped by the config. The first cycle is due at `now`.
    pub fn new(
        resolver: Resolver,
        enabled: bool,
        interval: Duration,
        timeout: Duration,
        now: Instant,
    ) -> Prober {
        Prober {
            resolver,
            enabled,
            interval,
            timeout,
            next_cycle: now,
            grid: None,
            cycle: None,
            inflight: None,
            skipped: 0,
        }
    }

    /// Puts cycles on a grid: after the first (due at once), each starts when the wall clock
    /// is `phase` past a multiple of the interval, the grid point nearest to when it would be
    /// due. A fleet whose phases are spread (derived from each host's name, so stable across
    /// restarts) spreads its route fetches over the interval instead of sending them in step.
    pub fn set_phase(&mut self, phase: Duration, now: Instant, wall: SystemTime) {
        let period = self.interval.as_nanos().max(1);
        let since_epoch = wall
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let past_grid = (since_epoch + period - phase.as_nanos() % period) % period;
        self.grid = now.checked_sub(Duration::from_nanos(past_grid as u64));
    }

    /// `due` moved to the nearest grid point (unchanged without a phase).
    fn align(&self, due: Instant) -> Instant {
        let Some(grid) = self.grid else {
            return due;
        };
        let period = self.interval.as_nanos().max(1);
        let off = due.saturating_duration_since(grid).as_nanos() % period;
        if off * 2 < period {
            due - Duration::from_nanos(off as u64)
        } else {
            due + Duration::from_nanos((period - off) as u64)
        }
    }

    /// When the loop must wake up for the prober at the latest.
    pub fn next_deadline(&self) -> Option<Instant> {
        match (&self.inflight, &self.cycle) {
            (Some(f), _) => match &f.stage {
                Stage::Resolving(lookup) => Some(f.deadline.min(lookup.next_deadline())),
                Stage::New | Stage::Resolved { .. } => Some(f.started),
                Stage::Connecting { .. } => Some(f.deadline),
            },
            (None, Some(_)) => None, // advance() always leaves a probe in flight mid-cycle
            (None, None) if self.enabled => Some(self.next_cycle),
            (None, None) => None,
        }
    }

    /// The token of the probe in flight, to route its events here.
    pub fn token(&self) -> Option<Token> {
        self.inflight.as_ref().map(|f| f.token)
    }

    /// Starts a cycle; re-reads /etc/hosts and /etc/resolv.conf first if they changed.
    pub fn start_cycle(&mut self, now: Instant) {
        self.resolver.reload_if_changed();
        self.cycle = Some(Cycle {
            started: now,
            next: 0,
        });
    }

    /// Abandons the cycle in progress (the route set changed under it) and makes the next one
    /// due now.
    pub fn restart(&mut self, registry: &Registry, now: Instant) {
        if let Some(f) = self.inflight.take() {
            close(f.stage, registry);
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
            if let Some(f) = self.inflight.take() {
                match self.step(f, now, registry) {
                    Step::Wait(f) => {
                        self.inflight = Some(f);
                        return Advance::Wait;
                    }
                    Step::Done(f, result) => self.conclude(f, result, now, snap, wall),
                    Step::Skip(f, e) => self.skip(snap, f.index, &e),
                    Step::Connect(f, ip, dns) => {
                        let address = SocketAddr::new(ip, f.port);
                        self.connect(registry, snap, f, address, Some(dns), now, wall, next_token);
                    }
                }
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
                    self.align(started + self.interval)
                };
                log::debug!(
                    "probe cycle done in {duration:?}, {} routes",
                    snap.routes.len()
                );
                continue;
            };
            cycle.next += 1;
            let timeout = route_timeout(&state.route, self.timeout);
            let strict = state.route.cluster_type == ClusterType::StrictDns;
            let mut f = InFlight {
                token: Token(usize::MAX),
                index,
                port: state.route.port,
                started: now,
                deadline: now + timeout,
                timeout,
                stage: Stage::New,
                spread: None,
            };
            if let Some(ip) = state.route.ip() {
                if strict {
                    f.spread = Spread::new(&[ip]);
                }
                let address = SocketAddr::new(ip, f.port);
                self.connect(registry, snap, f, address, None, now, wall, next_token);
                continue;
            }
            let looked_up = Instant::now();
            let (start, all) = self.resolver.start_all(&state.route.host, now);
            if strict {
                f.spread = Spread::new(&all);
            }
            match start {
                Start::Done(Ok(ip)) => {
                    let address = SocketAddr::new(ip, f.port);
                    let dns = Some(looked_up.elapsed());
                    self.connect(registry, snap, f, address, dns, now, wall, next_token);
                }
                Start::Done(Err(e @ DnsFailure::Local(_))) => self.skip(snap, index, &e),
                Start::Done(Err(e)) => {
                    record(snap, index, dns_failure(looked_up.elapsed(), &e), wall)
                }
                Start::Pending(mut lookup) => {
                    let token = next_token();
                    match lookup.register(registry, token) {
                        Ok(()) => {
                            self.inflight = Some(InFlight {
                                token,
                                stage: Stage::Resolving(lookup),
                                ..f
                            })
                        }
                        Err(e) => self.skip(snap, index, &e),
                    }
                }
            }
        }
    }

    /// What the probe in flight needs at `now`, without an event: its deadline passed, a
    /// lookup's retry is due, or a resolved name is ready to connect.
    fn step(&mut self, mut f: InFlight, now: Instant, registry: &Registry) -> Step {
        if now >= f.deadline {
            let result = match &f.stage {
                Stage::New | Stage::Resolving(_) => {
                    dns_failure(now - f.started, &DnsFailure::Timeout)
                }
                // The next address of a strict_dns answer, not started before its deadline.
                Stage::Resolved { ip, dns } => ProbeResult {
                    dns_duration: Some(*dns),
                    ..failure(
                        Reason::Timeout,
                        Some(SocketAddr::new(*ip, f.port)),
                        "no answer before the deadline",
                    )
                },
                Stage::Connecting { address, dns, .. } => ProbeResult {
                    dns_duration: *dns,
                    ..failure(
                        Reason::Timeout,
                        Some(*address),
                        "no answer before the deadline",
                    )
                },
            };
            close(std::mem::replace(&mut f.stage, Stage::New), registry);
            return Step::Done(f, result);
        }
        match &mut f.stage {
            Stage::Resolving(lookup) if now >= lookup.next_deadline() => {
                match lookup.on_timeout(&mut self.resolver, registry, now) {
                    None => Step::Wait(f),
                    Some(resolved) => lookup_done(f, resolved, registry, now),
                }
            }
            Stage::Resolved { ip, dns } => {
                let (ip, dns) = (*ip, *dns);
                Step::Connect(f, ip, dns)
            }
            _ => Step::Wait(f),
        }
    }

    /// Starts the connect of `f`'s route to `address`; a synchronous outcome is recorded.
    #[allow(clippy::too_many_arguments)]
    fn connect(
        &mut self,
        registry: &Registry,
        snap: &mut Snapshot,
        f: InFlight,
        address: SocketAddr,
        dns: Option<Duration>,
        now: Instant,
        wall: SystemTime,
        next_token: &mut impl FnMut() -> Token,
    ) {
        let mut stream = match TcpStream::connect(address) {
            Ok(stream) => stream,
            Err(e) if is_agent_shortage(&e) => return self.skip(snap, f.index, &e),
            Err(e) => {
                self.resumed();
                let result = ProbeResult {
                    dns_duration: dns,
                    ..from_error(&e, address)
                };
                self.conclude(f, result, now, snap, wall);
                return;
            }
        };
        let token = next_token();
        if let Err(e) = registry.register(&mut stream, token, Interest::WRITABLE) {
            // epoll could not take the socket: the agent's failure, whatever the errno.
            return self.skip(snap, f.index, &e);
        }
        self.resumed();
        self.inflight = Some(InFlight {
            token,
            stage: Stage::Connecting {
                stream,
                address,
                connect_started: now,
                dns,
            },
            ..f
        });
    }

    /// A probe of route `index` not run for want of the agent's own resources: counted apart,
    /// the route keeps its last result, and a warning is logged when such a run starts.
    fn skip(&mut self, snap: &mut Snapshot, index: usize, e: &dyn std::fmt::Display) {
        snap.agent_errors.probe += 1;
        snap.touch();
        if self.skipped == 0 {
            let route = snap.routes.get(index).map_or_else(String::new, |s| {
                format!(" ({}/{})", s.route.node, s.route.name)
            });
            log::warn!(
                "cannot open a probe socket{route}: {e}: the agent is short of resources, not the backend; keeping each backend's last state until probes run again (counted in sigma_agent_resource_errors_total{{op=\"probe\"}})"
            );
        }
        self.skipped += 1;
    }

    /// A probe socket was opened: ends a run of skipped probes.
    fn resumed(&mut self) {
        if self.skipped > 0 {
            log::info!(
                "probe sockets available again after {} skipped probes",
                self.skipped
            );
            self.skipped = 0;
        }
    }

    /// One attempt of `f` ended with `result`. A plain probe records it. A strict_dns probe
    /// counts it and moves on to the next address of its answer (a fresh deadline; the
    /// connect starts on the next `advance`); after the last one it records the route's
    /// result: up only if every address answered.
    fn conclude(
        &mut self,
        mut f: InFlight,
        result: ProbeResult,
        now: Instant,
        snap: &mut Snapshot,
        wall: SystemTime,
    ) {
        let Some(spread) = f.spread.as_mut() else {
            record(snap, f.index, result, wall);
            return;
        };
        if result.address.is_none() {
            // The name did not resolve: there are no addresses to go through.
            record(snap, f.index, result, wall);
            return;
        }
        if spread.first.is_none() {
            spread.first = result.address;
        }
        match result.outcome {
            Outcome::Reachable { latency } => {
                spread.reachable += 1;
                spread.slowest = spread.slowest.max(latency);
            }
            Outcome::Failed(_) => {
                if spread.first_failure.is_none() {
                    spread.first_failure = Some(result.clone());
                }
            }
        }
        if let Some(ip) = spread.rest.pop_front() {
            let dns = result.dns_duration.unwrap_or_default();
            f.stage = Stage::Resolved { ip, dns };
            f.started = now;
            f.deadline = now + f.timeout;
            self.inflight = Some(f);
            return;
        }
        let counts = AddressCount {
            total: spread.total,
            reachable: spread.reachable,
        };
        let done = match spread.first_failure.take() {
            Some(failed) => {
                let at = failed.address.map(|a| a.to_string()).unwrap_or_default();
                let detail = format!(
                    "{} of {} addresses answered; {at}: {}",
                    counts.reachable,
                    counts.total,
                    failed.detail.as_deref().unwrap_or("failed")
                );
                ProbeResult {
                    addresses: Some(counts),
                    detail: Some(detail),
                    dns_duration: result.dns_duration,
                    ..failed
                }
            }
            None => ProbeResult {
                outcome: Outcome::Reachable {
                    latency: spread.slowest,
                },
                address: spread.first,
                dns_duration: result.dns_duration,
                detail: None,
                addresses: Some(counts),
            },
        };
        record(snap, f.index, done, wall);
    }

    /// Handles an event for the probe's token. A name that resolved is connected at once (and
    /// so is the next address of a strict_dns answer). Returns true if the probe moved on (the
    /// caller's next `advance` starts what comes next).
    pub fn on_event(
        &mut self,
        now: Instant,
        wall: SystemTime,
        registry: &Registry,
        snap: &mut Snapshot,
        next_token: &mut impl FnMut() -> Token,
    ) -> bool {
        let moved = self.handle_event(now, wall, registry, snap);
        if let Some(f) = self.inflight.take() {
            match f.stage {
                Stage::Resolved { ip, dns } => {
                    let address = SocketAddr::new(ip, f.port);
                    self.connect(registry, snap, f, address, Some(dns), now, wall, next_token);
                }
                _ => self.inflight = Some(f),
            }
        }
        moved
    }

    fn handle_event(
        &mut self,
        now: Instant,
        wall: SystemTime,
        registry: &Registry,
        snap: &mut Snapshot,
    ) -> bool {
        let Some(mut f) = self.inflight.take() else {
            return false;
        };
        let result = match &mut f.stage {
            Stage::Resolving(lookup) => match lookup.on_ready(&mut self.resolver, registry, now) {
                None => None,
                Some(resolved) => match lookup_done(f, resolved, registry, now) {
                    Step::Connect(mut f, ip, dns) => {
                        // Connected by `on_event` right after this returns.
                        f.stage = Stage::Resolved { ip, dns };
                        self.inflight = Some(f);
                        return true;
                    }
                    Step::Done(f, result) => {
                        self.conclude(f, result, now, snap, wall);
                        return true;
                    }
                    Step::Skip(f, e) => {
                        self.skip(snap, f.index, &e);
                        return true;
                    }
                    Step::Wait(f) => {
                        self.inflight = Some(f);
                        return false;
                    }
                },
            },
            Stage::Connecting {
                stream,
                address,
                connect_started,
                dns,
            } => match connected(stream) {
                Connect::Pending => None,
                Connect::Done(Ok(())) => Some(ProbeResult {
                    outcome: Outcome::Reachable {
                        latency: now.saturating_duration_since(*connect_started),
                    },
                    address: Some(*address),
                    dns_duration: *dns,
                    detail: None,
                    addresses: None,
                }),
                Connect::Done(Err(e)) if handshake_completed(&e) => Some(ProbeResult {
                    outcome: Outcome::Reachable {
                        latency: now.saturating_duration_since(*connect_started),
                    },
                    address: Some(*address),
                    dns_duration: *dns,
                    detail: Some(format!("connected, then the backend closed it: {e}")),
                    addresses: None,
                }),
                Connect::Done(Err(e)) => Some(ProbeResult {
                    dns_duration: *dns,
                    ..from_error(&e, *address)
                }),
            },
            Stage::New | Stage::Resolved { .. } => None,
        };
        match result {
            None => {
                self.inflight = Some(f);
                false
            }
            Some(result) => {
                close(std::mem::replace(&mut f.stage, Stage::New), registry);
                self.conclude(f, result, now, snap, wall);
                true
            }
        }
    }
}

/// A lookup ended: connect next, or the probe failed with reason `dns`.
fn lookup_done(
    mut f: InFlight,
    resolved: Result<IpAddr, DnsFailure>,
    registry: &Registry,
    now: Instant,
) -> Step {
    if let Stage::Resolving(lookup) = &mut f.stage {
        lookup.deregister(registry);
    }
    let dns = now.saturating_duration_since(f.started);
    if let (Stage::Resolving(lookup), Some(_)) = (&f.stage, &f.spread) {
        f.spread = Spread::new(lookup.addresses());
    }
    match resolved {
        Ok(ip) => Step::Connect(f, ip, dns),
        Err(e) => {
            close(std::mem::replace(&mut f.stage, Stage::New), registry);
            match e {
                DnsFailure::Local(_) => Step::Skip(f, e),
                e => Step::Done(f, dns_failure(dns, &e)),
            }
        }
    }
}

/// Deregisters whatever socket a stage holds; dropping it closes it.
fn close(stage: Stage, registry: &Registry) {
    match stage {
        Stage::Resolving(mut lookup) => lookup.deregister(registry),
        Stage::Connecting { mut stream, .. } => {
            let _ = registry.deregister(&mut stream);
        }
        Stage::New | Stage::Resolved { .. } => {}
    }
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

/// Records a result, and logs a change of state at info (one line per change, never per
/// probe); the label is only formatted when a line is written.
fn record(snap: &mut Snapshot, index: usize, result: ProbeResult, wall: SystemTime) {
    let change = snap.record(index, result, wall);
    if let Some(m) = snap.refresh_mismatch(index, wall) {
        if let Some(state) = snap.routes.get(index) {
            crate::envoy_admin::log_mismatch(state, m);
        }
    }
    if change == Change::Same && !log::log_enabled!(log::Level::Debug) {
        return;
    }
    let Some(state) = snap.routes.get(index) else {
        return;
    };
    let Some((last, _)) = &state.last else {
        return;
    };
    let r = &state.route;
    let detail = last.detail.as_deref().unwrap_or("");
    match (change, last.outcome) {
        (Change::Down | Change::First, Outcome::Failed(reason)) => log::info!(
            "backend {}/{} ({}) is down: {} ({detail})",
            r.node,
            r.name,
            r.backend,
            reason.as_str()
        ),
        (Change::Up { down_for }, _) => log::info!(
            "backend {}/{} ({}) is up again after {:.1}s down",
            r.node,
            r.name,
            r.backend,
            down_for.as_secs_f64()
        ),
        (Change::First, Outcome::Reachable { .. }) => {
            log::debug!("backend {}/{} ({}) is up", r.node, r.name, r.backend)
        }
        (_, Outcome::Failed(reason)) => log::debug!(
            "backend {}/{} ({}) still down: {} ({detail})",
            r.node,
            r.name,
            r.backend,
            reason.as_str()
        ),
        _ => {}
    }
}

fn dns_failure(took: Duration, e: &DnsFailure) -> ProbeResult {
    ProbeResult {
        dns_duration: Some(took),
        ..failure(Reason::Dns, None, &e.to_string())
    }
}

fn failure(reason: Reason, address: Option<SocketAddr>, detail: &str) -> ProbeResult {
    ProbeResult {
        outcome: Outcome::Failed(reason),
        address,
        dns_duration: None,
        detail: Some(detail.to_owned()),
        addresses: None,
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

/// A connect error only an established connection can get: reset (ECONNRESET) or, after the
/// backend's FIN, EPIPE. During the handshake a reset is ECONNREFUSED.
fn handshake_completed(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ECONNRESET | libc::EPIPE))
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
    use crate::fixtures::{self, route};
    use mio::{Events, Poll};

    #[test]
    fn phase_puts_cycles_on_the_wall_clock_grid() {
        let interval = Duration::from_secs(30);
        let resolver = Resolver::new(crate::dns::ResolverConfig::system());
        let now = Instant::now();
        // The wall clock is 10 s past a multiple of 30 s; the phase is 25 s.
        let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(30 * 1000 + 10);
        let mut p = Prober::new(resolver, true, interval, Duration::from_secs(1), now);
        p.set_phase(Duration::from_secs(25), now, wall);
        // Grid points: now + 15 s, now + 45 s, ...; now - 15 s.
        assert_eq!(p.align(now + interval), now + Duration::from_secs(45));
        assert_eq!(
            p.align(now + Duration::from_secs(16)),
            now + Duration::from_secs(15)
        );
        assert_eq!(
            p.align(now + Duration::from_secs(15)),
            now + Duration::from_secs(15)
        );
        assert_eq!(
            p.align(now - Duration::from_secs(1)),
            now - Duration::from_secs(15)
        );
        // A phase past the interval wraps.
        p.set_phase(Duration::from_secs(55), now, wall);
        assert_eq!(p.align(now + interval), now + Duration::from_secs(45));
    }

    /// A prober with a 3 s probe timeout and a resolver on a closed loopback port: these
    /// tests only probe IP literals.
    fn prober(enabled: bool, interval: Duration, t0: Instant) -> Prober {
        let resolver = Resolver::new(crate::dns::ResolverConfig::with_server(
            "127.0.0.1:9".parse().unwrap(),
        ));
        Prober::new(resolver, enabled, interval, Duration::from_secs(3), t0)
    }

    /// A route's own connect_timeout is held between the 10 ms floor and the 3 s clamp.
    #[test]
    fn route_deadline_is_bounded_both_ways() {
        let r = |t: Option<Duration>| {
            route("n", "r", 1, "127.0.0.1", 1)
                .with_envoy(None, crate::route::ClusterType::Unspecified, t)
                .unwrap()
        };
        let agent = Duration::from_secs(1);
        assert_eq!(route_timeout(&r(None), agent), agent);
        assert_eq!(
            route_timeout(&r(Some(Duration::from_nanos(1))), agent),
            MIN_PROBE_TIMEOUT
        );
        assert_eq!(
            route_timeout(&r(Some(Duration::from_secs(60))), agent),
            MAX_PROBE_TIMEOUT
        );
    }

    /// Connect errors only an established connection gets mean "reachable"; the agent's own
    /// shortages are not the backend's.
    #[test]
    fn errors_that_are_not_the_backends_failure() {
        let e = |code| io::Error::from_raw_os_error(code);
        assert!(handshake_completed(&e(libc::ECONNRESET)));
        assert!(handshake_completed(&e(libc::EPIPE)));
        assert!(!handshake_completed(&e(libc::ECONNREFUSED)));
        for code in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM] {
            assert!(is_agent_shortage(&e(code)), "{code}");
        }
        assert!(!is_agent_shortage(&e(libc::ENETUNREACH)));
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

    /// A prober with no routes (so no socket is ever opened) and what `advance` needs, for
    /// the cycle bookkeeping tests with made-up instants.
    struct Idle {
        poll: Poll,
        p: Prober,
        snap: Snapshot,
    }

    impl Idle {
        fn new(enabled: bool, interval: Duration, t0: Instant) -> Idle {
            Idle {
                poll: Poll::new().unwrap(),
                p: prober(enabled, interval, t0),
                snap: fixtures::snapshot(vec![]),
            }
        }

        fn advance(&mut self, now: Instant) -> Advance {
            let wall = SystemTime::UNIX_EPOCH;
            let registry = self.poll.registry();
            self.p
                .advance(now, wall, registry, &mut self.snap, &mut || Token(100))
        }
    }

    /// A cycle ends when `advance` is called at the instant given.
    #[test]
    fn cycles_schedule_by_interval_and_count_overruns() {
        let t0 = Instant::now();
        let mut idle = Idle::new(true, Duration::from_secs(1), t0);
        assert_eq!(idle.advance(t0), Advance::CycleDue);
        idle.p.start_cycle(t0);
        assert_eq!(idle.advance(t0), Advance::Wait);
        assert_eq!(idle.snap.cycles_total, 1);
        assert_eq!(idle.p.next_deadline(), Some(t0 + Duration::from_secs(1)));
        assert_eq!(idle.advance(t0 + Duration::from_millis(999)), Advance::Wait);
        let t2 = t0 + Duration::from_secs(1);
        assert_eq!(idle.advance(t2), Advance::CycleDue);
        // A cycle that ends 1.5 s after it started overran the 1 s interval.
        idle.p.start_cycle(t2);
        assert_eq!(
            idle.advance(t2 + Duration::from_millis(1500)),
            Advance::CycleDue
        );
        assert_eq!(idle.snap.overruns_total, 1);
        assert_eq!(
            idle.snap.last_cycle_duration,
            Some(Duration::from_millis(1500))
        );
    }

    #[test]
    fn disabled_prober_never_starts_a_cycle() {
        let t0 = Instant::now();
        let mut idle = Idle::new(false, Duration::from_secs(1), t0);
        assert_eq!(idle.advance(t0), Advance::Wait);
        assert_eq!(idle.p.next_deadline(), None);
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
        let mut snap = fixtures::snapshot(vec![
            route("n", "open", 1, "127.0.0.1", open),
            route("n", "closed", 2, "127.0.0.1", closed),
        ]);
        let mut poll = Poll::new().unwrap();
        let mut events = Events::with_capacity(8);
        let t0 = Instant::now();
        let mut p = prober(true, Duration::from_secs(10), t0);
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
                    p.on_event(Instant::now(), wall, poll.registry(), &mut snap, &mut tok);
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
