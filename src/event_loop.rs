//! The event loop: one `mio::Poll` on one thread owns every socket, the clock and the
//! snapshot, and calls into each part; the parts don't call each other sideways.
//!
//! Listeners and the signalfd have fixed tokens; every other socket gets the next value of a
//! counter that only goes up (tokens are never reused, so a stale event can't reach a new
//! socket) and an entry in one map. Events for unknown tokens are ignored. `poll` sleeps until
//! the earliest deadline (the probe in flight, the next cycle, connection timeouts), and every
//! wake-up sweeps what is due, whether or not events arrived.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};

use crate::config::Config;
use crate::dns::{Resolver, ResolverConfig};
use crate::envoy_admin::EnvoyAdmin;
use crate::mcp_peer::{self, Peer};
use crate::metrics::ProcessStats;
use crate::prober::{Advance, Prober};
use crate::scrape_cache::ScrapeCache;
use crate::signals::Signals;
use crate::snapshot::Snapshot;
use crate::source::{Refresh, RouteSource};
use crate::stdio::{StdIn, StdOut};
use crate::web_tls::{WebSecurity, WebSecurityConfig};
use crate::{http, http_conn};

const SIGNALS: Token = Token(0);
const HTTP_LISTENER: Token = Token(1);
const MCP_LISTENER: Token = Token(2);
const STDIN: Token = Token(3);
const STDOUT: Token = Token(4);
/// The first token handed to a connection or probe socket.
const FIRST_DYNAMIC_TOKEN: usize = 16;
/// Events taken per `poll` call; more simply wait for the next call.
const EVENTS_CAPACITY: usize = 256;

/// MCP clients over TCP served at once: a few operators' AI clients per host; more is a
/// leak or an attack. Past it the least recently active client is closed.
pub const MCP_MAX_CONNECTIONS: usize = 64;
/// An MCP client silent this long is closed (clients reconnect; sessions hold no state).
pub const MCP_IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// When `accept` fails and nothing can be freed to retry it at once (no reserve descriptor, or
/// an error such as ENOBUFS), the listeners are tried again this soon: readiness is
/// edge-triggered, so connections already queued would otherwise wait for the next newcomer.
/// 100 ms keeps a queued scrape well inside Prometheus' timeout without spinning.
pub const ACCEPT_RETRY: Duration = Duration::from_millis(100);
/// The reserve descriptor: held open so that, when the process is out of descriptors, closing
/// it lets one queued connection be accepted and answered (503, or closed for MCP) instead of
/// being left in the queue (the libev/nginx "reserve fd" recipe).
const RESERVE_PATH: &str = "/dev/null";

/// How long a due cycle waits for the route source's fetch before it probes the routes it
/// already knows. A healthy fetch takes milliseconds (p99 50 ms at 333 fetches/s through
/// PgBouncer on a loaded 2-core machine, `make fleet`); one still running after 250 ms is a
/// database in trouble, and probes keep their schedule. A fetch that ends later still applies
/// its routes (a changed set restarts the cycle with it).
pub const FETCH_WAIT: Duration = Duration::from_millis(250);

/// Which listener a connection came from (also its name in logs).
#[derive(Clone, Copy, Debug)]
enum Kind {
    Http,
    Mcp,
}

/// A socket with a token from the counter.
enum Entry {
    Http(http_conn::Conn),
    Mcp(McpConn),
}

impl Entry {
    fn deadline(&self) -> Instant {
        match self {
            Entry::Http(c) => c.deadline,
            Entry::Mcp(c) => c.deadline,
        }
    }
}

struct McpConn {
    stream: mio::net::TcpStream,
    peer: Peer,
    deadline: Instant,
}

/// MCP on stdin/stdout.
struct StdioPeer {
    stdin: StdIn,
    stdout: StdOut,
    peer: Peer,
}

/// Whether the loop goes on after driving a peer.
#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Go,
    /// stdin reached EOF under --mcp-stdio: stop (exit 0).
    Stop,
}

/// A failure that stops the agent (exit 1).
#[derive(Debug)]
pub struct RuntimeError(pub String);

pub struct Agent {
    poll: Poll,
    signals: Signals,
    http_listener: Option<TcpListener>,
    mcp_listener: Option<TcpListener>,
    stdio: Option<StdioPeer>,
    entries: HashMap<Token, Entry>,
    /// Entries (and STDIN) that yielded with work left: driven again without waiting.
    again: Vec<Token>,
    next_token: usize,
    /// See [`RESERVE_PATH`]; None while it is spent (or could not be opened).
    reserve: Option<std::fs::File>,
    /// When the listeners are to be tried again after an accept failure ([`ACCEPT_RETRY`]).
    accept_retry: Option<Instant>,
    /// Out of descriptors at the last accept: a shortage is logged once, when it starts.
    fd_short: bool,
    prober: Prober,
    /// Envoy admin reads, started with each probe cycle.
    envoy: EnvoyAdmin,
    interval: Duration,
    source: RouteSource,
    /// A cycle is due and waits for the route source's fetch, until this instant at the
    /// latest ([`FETCH_WAIT`]); then it probes the routes already known.
    cycle_waits: Option<Instant>,
    /// The route set was just read outside a cycle (SIGHUP, a late fetch) and the cycle
    /// restarted with it: the next cycle need not read the source again.
    routes_fresh: bool,
    snapshot: RefCell<Snapshot>,
    /// The /metrics body rendered for the snapshot's current generation.
    scrape_cache: ScrapeCache,
    /// TLS and token of the HTTP listener, and the files they come from (re-read on SIGHUP).
    security: WebSecurity,
    security_config: WebSecurityConfig,
    /// `--mcp-http`: MCP over Streamable HTTP on the HTTP listener.
    mcp_http: bool,
}

impl Agent {
    /// Binds the listeners and prepares everything. `snapshot` holds the initial route set,
    /// already read and validated by the caller, so a bad file fails before anything is bound.
    pub fn new(
        config: &Config,
        source: RouteSource,
        mut snapshot: Snapshot,
    ) -> Result<Agent, RuntimeError> {
        let poll =
            Poll::new().map_err(|e| RuntimeError(format!("cannot create the event loop: {e}")))?;
        let signals = Signals::new()
            .map_err(|e| RuntimeError(format!("cannot set up signal handling: {e}")))?;
        signals
            .register(poll.registry(), SIGNALS)
            .map_err(|e| RuntimeError(format!("cannot watch signals: {e}")))?;
        // Read before binding: a bad certificate or token file fails before anything listens.
        let security = WebSecurity::load(&config.web).map_err(RuntimeError)?;
        let http_listener = match config.metrics_listen {
            None => None,
            Some(addr) => Some(listen(&poll, addr, HTTP_LISTENER, "--metrics-listen")?),
        };
        let mcp_listener = match config.mcp_listen {
            None => None,
            Some(addr) => Some(listen(&poll, addr, MCP_LISTENER, "--mcp-listen")?),
        };
        let stdio = if config.mcp_stdio {
            let io_err = |e: io::Error| {
                RuntimeError(format!("cannot use stdin/stdout for --mcp-stdio: {e}"))
            };
            let mut stdin = StdIn::new().map_err(io_err)?;
            let mut stdout = StdOut::new().map_err(io_err)?;
            stdin.register(poll.registry(), STDIN).map_err(io_err)?;
            stdout.register(poll.registry(), STDOUT).map_err(io_err)?;
            Some(StdioPeer {
                stdin,
                stdout,
                peer: Peer::new(),
            })
        } else {
            None
        };
        snapshot.probe_enabled = config.health_probe;
        let resolver = Resolver::new(match config.dns_server {
            Some(server) => ResolverConfig::with_server(server),
            None => ResolverConfig::system(),
        });
        let now = Instant::now();
        let mut prober = Prober::new(
            resolver,
            config.health_probe,
            config.interval,
            config.timeout,
            now,
        );
        if let Some(db) = &config.database {
            prober.set_phase(
                phase_of(&db.hostname, config.interval),
                now,
                SystemTime::now(),
            );
        }
        Ok(Agent {
            poll,
            signals,
            http_listener,
            mcp_listener,
            stdio,
            entries: HashMap::new(),
            // Stdin may hold input already (a file, a pipe written before we started).
            again: vec![STDIN],
            next_token: FIRST_DYNAMIC_TOKEN,
            reserve: std::fs::File::open(RESERVE_PATH).ok(),
            accept_retry: None,
            fd_short: false,
            prober,
            envoy: EnvoyAdmin::new(),
            interval: config.interval,
            source,
            cycle_waits: None,
            routes_fresh: false,
            snapshot: RefCell::new(snapshot),
            scrape_cache: ScrapeCache::new(),
            security,
            security_config: config.web.clone(),
            mcp_http: config.mcp_http,
        })
    }

    /// The address the HTTP listener is bound to (useful with port 0).
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// The address the MCP listener is bound to.
    pub fn mcp_addr(&self) -> Option<SocketAddr> {
        self.mcp_listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Runs until SIGTERM or SIGINT.
    pub fn run(&mut self) -> Result<(), RuntimeError> {
        let mut events = Events::with_capacity(EVENTS_CAPACITY);
        loop {
            let now = Instant::now();
            if self.accept_retry.is_some_and(|at| at <= now) {
                self.accept_retry = None;
                self.accept(Kind::Http, now);
                self.accept(Kind::Mcp, now);
            }
            self.sweep(now);
            for token in std::mem::take(&mut self.again) {
                if self.drive(token, now) == Flow::Stop {
                    return Ok(());
                }
            }
            let timeout = if self.again.is_empty() {
                self.next_deadline()
                    .map(|d| d.saturating_duration_since(now))
            } else {
                Some(Duration::ZERO)
            };
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(RuntimeError(format!("event loop failed: {e}"))),
            }
            let now = Instant::now();
            let wall = SystemTime::now();
            for event in events.iter() {
                match event.token() {
                    SIGNALS => {
                        let pending = self.signals.drain();
                        if pending.quit {
                            log::info!("stopping on signal");
                            return Ok(());
                        }
                        if pending.reload {
                            log::info!("SIGHUP: re-reading the route source");
                            self.refresh_routes(true, now);
                            self.reload_security();
                        }
                    }
                    HTTP_LISTENER => self.accept(Kind::Http, now),
                    MCP_LISTENER => self.accept(Kind::Mcp, now),
                    token if self.source.owns(token) => {
                        let mut tokens = token_counter(&mut self.next_token);
                        let registry = self.poll.registry();
                        let done = self.source.on_event(token, now, registry, &mut tokens);
                        drop(tokens);
                        if let Some(done) = done {
                            self.source_done(done, now);
                        }
                    }
                    token if Some(token) == self.prober.token() => {
                        let snap = &mut *self.snapshot.borrow_mut();
                        let mut tokens = token_counter(&mut self.next_token);
                        let registry = self.poll.registry();
                        self.prober.on_event(now, wall, registry, snap, &mut tokens);
                    }
                    token if self.envoy.owns(token) => {
                        let snap = &mut *self.snapshot.borrow_mut();
                        self.envoy.on_event(token, self.poll.registry(), now, snap);
                    }
                    token => {
                        if self.drive(token, now) == Flow::Stop {
                            return Ok(());
                        }
                    }
                }
            }
        }
    }

    /// Everything that is due at `now`: expired connections, the route source's deadline,
    /// Envoy admin reads, probes and cycles.
    fn sweep(&mut self, now: Instant) {
        self.envoy
            .expire(now, self.poll.registry(), &mut self.snapshot.borrow_mut());
        // Connections rarely expire: look before collecting, so a wake-up allocates nothing.
        if self.entries.values().any(|e| e.deadline() <= now) {
            let expired: Vec<Token> = self
                .entries
                .iter()
                .filter(|(_, e)| e.deadline() <= now)
                .map(|(t, _)| *t)
                .collect();
            for token in expired {
                log::debug!("connection {} timed out", token.0);
                self.close(token);
            }
        }
        if self.source.next_deadline().is_some_and(|d| d <= now) {
            let mut tokens = token_counter(&mut self.next_token);
            let done = self
                .source
                .on_deadline(now, self.poll.registry(), &mut tokens);
            drop(tokens);
            if let Some(done) = done {
                self.source_done(done, now);
            }
        }
        if self.cycle_waits.is_some_and(|until| now >= until) {
            log::debug!(
                "the route source has not answered within {FETCH_WAIT:?}: probing the routes known"
            );
            self.cycle_waits = None;
            self.start_cycle(now);
        }
        while self.cycle_waits.is_none() {
            let wall = SystemTime::now();
            let advance = {
                let snap = &mut *self.snapshot.borrow_mut();
                let mut tokens = token_counter(&mut self.next_token);
                self.prober
                    .advance(now, wall, self.poll.registry(), snap, &mut tokens)
            };
            match advance {
                Advance::Wait => break,
                // The cycle starts once the source has answered (at once for a file).
                Advance::CycleDue if std::mem::take(&mut self.routes_fresh) => {
                    self.start_cycle(now);
                }
                Advance::CycleDue => {
                    self.cycle_waits = Some(now + FETCH_WAIT);
                    self.refresh_routes(false, now);
                }
            }
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let conns = self.entries.values().map(Entry::deadline);
        let prober = match self.cycle_waits {
            Some(until) => Some(until),
            None => self.prober.next_deadline(),
        };
        conns
            .chain(prober)
            .chain(self.source.next_deadline())
            .chain(self.envoy.next_deadline())
            .chain(self.accept_retry)
            .min()
    }

    /// Starts this cycle's reads of the nodes' Envoy admin interfaces (`envoy_admin.rs`).
    /// Starts the probe cycle, and with it this cycle's reads of Envoy's admin interfaces.
    fn start_cycle(&mut self, now: Instant) {
        self.prober.start_cycle(now);
        self.start_envoy_reads(now);
    }

    fn start_envoy_reads(&mut self, now: Instant) {
        let snap = &mut *self.snapshot.borrow_mut();
        let mut tokens = token_counter(&mut self.next_token);
        self.envoy
            .start_cycle(snap, self.poll.registry(), now, self.interval, &mut tokens);
    }

    /// Re-reads the listener's certificate, key, client CA and token files (SIGHUP). New
    /// connections use them; on any error the previous settings stay.
    fn reload_security(&mut self) {
        let c = &self.security_config;
        if c.tls_cert.is_none() && c.token_file.is_none() {
            return;
        }
        match WebSecurity::load(c) {
            Ok(security) => {
                log::info!("SIGHUP: re-read the HTTP listener's TLS and token files");
                self.security = security;
            }
            Err(e) => log::error!("SIGHUP: {e}; keeping the previous TLS and token settings"),
        }
    }

    /// Asks the route source again (`force`: SIGHUP, read the file even if unchanged). A
    /// database fetch answers later, through [`Agent::source_done`].
    fn refresh_routes(&mut self, force: bool, now: Instant) {
        let mut tokens = token_counter(&mut self.next_token);
        let done = self
            .source
            .begin(force, now, self.poll.registry(), &mut tokens);
        drop(tokens);
        if let Some(done) = done {
            self.source_done(done, now);
        }
    }

    /// The route source answered: apply it; start the cycle that waited for it, or (a read
    /// outside a cycle, e.g. SIGHUP) start over if the set changed under a cycle in progress.
    fn source_done(&mut self, (refresh, took): (Refresh, Duration), now: Instant) {
        let changed = self.snapshot.borrow_mut().apply(refresh, took);
        if self.cycle_waits.take().is_some() {
            self.start_cycle(now);
        } else if changed {
            self.routes_fresh = true;
            self.prober.restart(self.poll.registry(), now);
        }
    }

    /// Drives the connection (or stdio) behind `token` after an event or a yield.
    fn drive(&mut self, token: Token, now: Instant) -> Flow {
        let snap = self.snapshot.borrow();
        if token == STDIN || token == STDOUT {
            // What the other peers still have to write bounds a new tools/call answer.
            let in_flight = self.pending(Kind::Mcp);
            let Some(stdio) = &mut self.stdio else {
                return Flow::Go;
            };
            let mut io = mcp_peer::Stdio {
                stdin: &mut stdio.stdin,
                stdout: &mut stdio.stdout,
            };
            return match stdio
                .peer
                .drive(&mut io, &snap, SystemTime::now(), in_flight)
            {
                mcp_peer::Status::Continue => Flow::Go,
                mcp_peer::Status::Yield => {
                    self.again.push(STDIN);
                    Flow::Go
                }
                mcp_peer::Status::Close => {
                    log::info!("stdin closed: stopping");
                    Flow::Stop
                }
            };
        }
        let in_flight = match self.entries.get(&token) {
            None => return Flow::Go, // stale or spurious: ignore
            Some(Entry::Http(_)) => self.pending(Kind::Http),
            Some(Entry::Mcp(_)) => self.pending(Kind::Mcp),
        };
        let close = match self.entries.get_mut(&token) {
            None => false,
            Some(Entry::Http(conn)) => {
                let mut serve = http::Serve {
                    snap: &snap,
                    cache: &mut self.scrape_cache,
                    security: &self.security,
                    process: &ProcessStats::read,
                    in_flight,
                    mcp_http: self.mcp_http,
                    wall: SystemTime::now(),
                };
                conn.drive(now, &mut serve) == http_conn::Status::Close
            }
            Some(Entry::Mcp(conn)) => {
                conn.deadline = now + MCP_IDLE_TIMEOUT;
                let wall = SystemTime::now();
                match conn.peer.drive(&mut conn.stream, &snap, wall, in_flight) {
                    mcp_peer::Status::Continue => false,
                    mcp_peer::Status::Yield => {
                        self.again.push(token);
                        false
                    }
                    mcp_peer::Status::Close => true,
                }
            }
        };
        drop(snap);
        if close {
            self.close(token);
        }
        Flow::Go
    }

    /// Bytes of answers still to be written by one kind of peer (stdio counts as MCP): what
    /// bounds building another large answer (`MAX_RESPONSE_BYTES_IN_FLIGHT`,
    /// `MAX_ANSWER_BYTES_IN_FLIGHT`).
    fn pending(&self, kind: Kind) -> usize {
        let conns: usize = self
            .entries
            .values()
            .map(|e| match (kind, e) {
                (Kind::Http, Entry::Http(c)) => c.pending(),
                (Kind::Mcp, Entry::Mcp(c)) => c.peer.pending(),
                _ => 0,
            })
            .sum();
        match kind {
            Kind::Http => conns,
            Kind::Mcp => conns + self.stdio.as_ref().map_or(0, |s| s.peer.pending()),
        }
    }

    /// Accepts every pending connection of one listener, until it would block: edge-triggered
    /// readiness reports a queue only once. Out of descriptors (EMFILE/ENFILE), it closes the
    /// connection best spared ([`Agent::make_room`]) and tries again; with none to spare it
    /// spends the reserve descriptor to accept the next one and answer it 503 (MCP: close),
    /// so no queued client is left waiting; failing that, it tries again in [`ACCEPT_RETRY`].
    fn accept(&mut self, kind: Kind, now: Instant) {
        // Whether a connection was already closed for the queued one at the head.
        let mut freed = false;
        loop {
            let listener = match kind {
                Kind::Http => &self.http_listener,
                Kind::Mcp => &self.mcp_listener,
            };
            let Some(listener) = listener else {
                return;
            };
            let (mut stream, peer) = match listener.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e)
                    if e.kind() == io::ErrorKind::Interrupted
                        || e.kind() == io::ErrorKind::ConnectionAborted =>
                {
                    continue
                }
                Err(e) if is_fd_shortage(&e) => {
                    // accept4 takes a descriptor before it looks at the queue: with the
                    // table full it says EMFILE even when no one is waiting.
                    if !has_queued(listener) {
                        return;
                    }
                    {
                        let mut snap = self.snapshot.borrow_mut();
                        snap.agent_errors.accept += 1;
                        snap.touch();
                    }
                    if !self.fd_short {
                        self.fd_short = true;
                        log::warn!(
                            "{kind:?}: out of file descriptors accepting a connection ({e}): closing idle connections to make room, else answering 503; raise LimitNOFILE (counted in sigma_agent_resource_errors_total{{op=\"accept\"}})"
                        );
                    }
                    if !freed && self.make_room(kind, true) {
                        freed = true;
                        continue;
                    }
                    if self.shed(kind) {
                        freed = false;
                        continue;
                    }
                    self.accept_retry = Some(now + ACCEPT_RETRY);
                    return;
                }
                Err(e) => {
                    log::warn!("{kind:?}: accept failed: {e}; trying again in {ACCEPT_RETRY:?}");
                    self.accept_retry = Some(now + ACCEPT_RETRY);
                    return;
                }
            };
            if !freed && self.fd_short {
                self.fd_short = false;
                log::info!("{kind:?}: file descriptors available again");
            }
            freed = false;
            if !self.make_room(kind, false) {
                log::warn!("{kind:?}: every connection is busy, refusing {peer} with 503");
                http_conn::refuse(stream);
                continue;
            }
            let token = token_counter(&mut self.next_token)();
            let interest = Interest::READABLE | Interest::WRITABLE;
            if let Err(e) = self.poll.registry().register(&mut stream, token, interest) {
                log::warn!("{kind:?}: cannot register a connection: {e}");
                continue;
            }
            log::debug!("{kind:?}: {peer} connected");
            let entry = match kind {
                Kind::Http => match self.http_conn(stream, now) {
                    Ok(conn) => Entry::Http(conn),
                    Err(e) => {
                        log::warn!("Http: cannot start TLS for {peer}: {e}");
                        continue;
                    }
                },
                Kind::Mcp => Entry::Mcp(McpConn {
                    stream,
                    peer: Peer::new(),
                    deadline: now + MCP_IDLE_TIMEOUT,
                }),
            };
            self.entries.insert(token, entry);
            // Edge-triggered: bytes that arrived with the connection must be read now.
            self.drive(token, now);
        }
    }

    /// A new HTTP connection: TLS when the listener has a certificate.
    fn http_conn(&self, stream: mio::net::TcpStream, now: Instant) -> io::Result<http_conn::Conn> {
        #[cfg(feature = "tls")]
        if let Some(config) = &self.security.tls {
            return http_conn::Conn::with_tls(stream, config.clone(), now);
        }
        Ok(http_conn::Conn::new(stream, now))
    }

    /// Out of descriptors with none to free: closes the reserve descriptor, accepts one queued
    /// connection with it, answers it 503 (MCP: closes it) and reopens the reserve. False when
    /// the reserve is spent or the accept still fails (then the caller retries later).
    fn shed(&mut self, kind: Kind) -> bool {
        if self.reserve.take().is_none() {
            self.reserve = std::fs::File::open(RESERVE_PATH).ok();
            return false;
        }
        let listener = match kind {
            Kind::Http => &self.http_listener,
            Kind::Mcp => &self.mcp_listener,
        };
        let accepted = listener.as_ref().map(|l| l.accept());
        let shed = match accepted {
            Some(Ok((stream, peer))) => {
                log::debug!("{kind:?}: out of file descriptors, refusing {peer}");
                if let Kind::Http = kind {
                    http_conn::refuse(stream);
                }
                true
            }
            _ => false,
        };
        self.reserve = std::fs::File::open(RESERVE_PATH).ok();
        shed
    }

    /// Makes room for one more connection of `kind`: at the listener's limit (or always, with
    /// `force`: out of descriptors) closes the least recently active connection that can be
    /// spared (for HTTP one not being written a response, see `http_conn::Conn::evictable`).
    /// True when there is room; false when none can go (only HTTP, all mid-response), or with
    /// `force` when there is no connection of that kind to close.
    fn make_room(&mut self, kind: Kind, force: bool) -> bool {
        let mut count = 0;
        let mut victim: Option<(Instant, Token)> = None;
        for (token, entry) in &self.entries {
            let candidate = match (kind, entry) {
                (Kind::Http, Entry::Http(c)) => c.evictable().then_some(c.last_active),
                (Kind::Mcp, Entry::Mcp(c)) => Some(c.deadline),
                _ => continue,
            };
            count += 1;
            if let Some(at) = candidate {
                if victim.is_none_or(|(oldest, _)| at < oldest) {
                    victim = Some((at, *token));
                }
            }
        }
        let limit = match kind {
            Kind::Http => http_conn::MAX_CONNECTIONS,
            Kind::Mcp => MCP_MAX_CONNECTIONS,
        };
        if count < limit && !force {
            return true;
        }
        match victim {
            Some((_, token)) => {
                log::debug!("{kind:?}: {count} connections, closing the least recently active one");
                self.close(token);
                true
            }
            None => false,
        }
    }

    fn close(&mut self, token: Token) {
        if let Some(entry) = self.entries.remove(&token) {
            match entry {
                Entry::Http(mut c) => {
                    let _ = self.poll.registry().deregister(&mut c.stream);
                }
                Entry::Mcp(mut c) => {
                    let _ = self.poll.registry().deregister(&mut c.stream);
                }
            }
        }
    }
}

/// Hands out the next token of the counter (tokens are never reused).
fn token_counter(next: &mut usize) -> impl FnMut() -> Token + '_ {
    move || {
        let t = Token(*next);
        *next += 1;
        t
    }
}

/// This host's place in the interval: a hash of its name (FNV-1a), so it stays the same
/// across restarts and differs across a fleet.
pub fn phase_of(hostname: &str, interval: Duration) -> Duration {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in hostname.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    let millis = interval.as_millis().max(1) as u64;
    Duration::from_millis(hash % millis)
}

fn listen(
    poll: &Poll,
    addr: SocketAddr,
    token: Token,
    flag: &str,
) -> Result<TcpListener, RuntimeError> {
    let mut listener = TcpListener::bind(addr).map_err(|e| {
        RuntimeError(format!(
            "cannot listen on {addr}: {e}, {flag}, use a free port"
        ))
    })?;
    poll.registry()
        .register(&mut listener, token, Interest::READABLE)
        .map_err(|e| RuntimeError(format!("cannot watch {addr}: {e}")))?;
    Ok(listener)
}

/// The process (EMFILE) or the system (ENFILE) is out of file descriptors.
fn is_fd_shortage(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// Whether a connection waits in the listener's accept queue (asked with `poll`, which needs
/// no descriptor; if it fails, assume one does).
fn has_queued(listener: &TcpListener) -> bool {
    use std::os::fd::AsRawFd;
    let mut fd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call; a zero timeout never blocks.
    let n = unsafe { libc::poll(&mut fd, 1, 0) };
    n != 0
}
