//! One name being resolved: a sans-IO [`Session`] and the thin [`Lookup`] driver that pumps
//! its socket on the caller's mio loop.
//!
//! # Why
//! Retries, server rotation, the TC=1 fallback to TCP and the checks that drop packets that
//! are not ours are where a stub resolver goes wrong, and they are hard to reach through a
//! real server. So the decisions live in [`Session`], which does no I/O and reads no clock:
//! datagrams (with their source address), TCP stream bytes, socket errors and `now` go in;
//! an [`Action`] comes out ("send this query over UDP to that server", "connect over TCP to
//! that server and write these bytes", "keep waiting", or the result). Every path is unit
//! tested below from byte scripts, without sockets. [`Lookup`] owns the socket of the
//! current try, does exactly what the session asks, and keeps the API the prober and the
//! database source use (`register`, `on_ready`, `on_timeout`, `next_deadline`, ...).
//!
//! # What the session does
//! For each search candidate in order, an `A` query, then `AAAA` only if the name exists
//! without an `A` record (NODATA). NXDOMAIN, NODATA and SERVFAIL go on to the next
//! candidate, a timeout or error ends the search (as glibc). Each try gets a fresh random
//! id (and, in the driver, a fresh UDP socket); tries rotate over the servers, `attempts`
//! rounds of `timeout` each. A datagram from another address, or with another id or
//! question, is dropped and the try keeps waiting; a malformed reply from our server fails
//! the try. TC=1 over UDP retries the same try over TCP to the same server with the same
//! id; a TCP reply is at most [`super::MAX_TCP_MESSAGE`] bytes (its 16-bit length prefix) and the
//! session buffers no more than that. SERVFAIL with several servers fails the try (the
//! next server is asked); with one server it is final for the candidate. Results (also
//! negative ones) go into the resolver's [`Cache`], which is consulted before every query.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use mio::net::{TcpStream, UdpSocket};
use mio::{Interest, Registry, Token};

use super::cache::{later, Cache};
use super::conf::{candidates, ResolvConf, Walk};
use super::wire::{build_query, parse_response, Answer, Status};
use super::{DnsFailure, Resolver, Rng, Start, DNS_PORT, MAX_DATAGRAMS_PER_EVENT, UDP_RECV_BUF};

/// Bytes read from the TCP stream per `read` call: a whole typical reply in one read, a
/// stack buffer small enough for the one thread; larger replies take several reads.
const TCP_READ_CHUNK: usize = 4096;

// ---------------------------------------------------------------------------
// Session: the sans-IO lookup
// ---------------------------------------------------------------------------

/// What the driver must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Nothing: wait for input or for [`Session::deadline`].
    Wait,
    /// Drop the current socket; send `packet` from a fresh UDP socket connected to `server`.
    /// If that fails, report it with [`Session::on_send_failed`].
    SendUdp { server: SocketAddr, packet: Vec<u8> },
    /// Drop the current socket; connect over TCP to `server` and write `bytes` (the query
    /// with its length prefix); feed what is read to [`Session::on_stream`]. If the connect
    /// fails at once, report it with [`Session::on_send_failed`].
    SendTcp { server: SocketAddr, bytes: Vec<u8> },
    /// The lookup is over: close the socket.
    Done(Result<IpAddr, DnsFailure>),
}

/// Which transport the current try waits on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Idle,
    Udp,
    Tcp,
}

/// The lookup of one name, without I/O. The resolver's cache and id source are passed in
/// with every call (`cache`, `rng`), and so is the time (`now`).
#[derive(Debug)]
pub struct Session {
    /// The name as asked, for logs.
    name: String,
    walk: Walk,
    servers: Vec<SocketAddr>,
    try_timeout: Duration,
    tries_total: usize,
    try_index: usize,
    last_failure: DnsFailure,
    id: u16,
    server: SocketAddr,
    transport: Transport,
    deadline: Instant,
    /// TCP bytes of the reply so far (length prefix included), at most 2 + [`super::MAX_TCP_MESSAGE`].
    stream_in: Vec<u8>,
}

impl Session {
    /// A lookup of `name` (already validated) with the servers, search list and options of
    /// `conf`. Nothing happens until [`Session::start`].
    pub fn new(name: &str, conf: &ResolvConf, now: Instant) -> Session {
        let servers = conf.nameservers.clone();
        let tries_total = servers.len().max(1) * conf.attempts.max(1) as usize;
        let server = servers
            .first()
            .copied()
            .unwrap_or(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), DNS_PORT));
        Session {
            name: name.to_string(),
            walk: Walk::new(candidates(name, conf)),
            servers,
            try_timeout: conf.timeout,
            tries_total,
            try_index: 0,
            last_failure: DnsFailure::Timeout,
            id: 0,
            server,
            transport: Transport::Idle,
            deadline: now,
            stream_in: Vec::new(),
        }
    }

    /// Answers from the cache if it can, else asks for the first query.
    pub fn start(&mut self, cache: &mut Cache, rng: &mut Rng, now: Instant) -> Action {
        if let Some(done) = self.walk.skip_cached(cache, now) {
            log::debug!("dns: {} from cache: {done:?}", self.name);
            return Action::Done(done);
        }
        self.start_query(cache, rng, now)
    }

    /// When [`Session::on_timeout`] must be called (retransmission or next server).
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// The name being queried now (a search candidate), for logs.
    pub fn current_name(&self) -> &str {
        self.walk.current().map(|(name, _)| name).unwrap_or("")
    }

    /// Every address of the answer once the session gave `Done(Ok(ip))` (`ip` first).
    pub fn addresses(&self) -> &[IpAddr] {
        &self.walk.answer
    }

    fn take_answer(&mut self) -> Vec<IpAddr> {
        std::mem::take(&mut self.walk.answer)
    }

    /// A datagram arrived on the current try's UDP socket from `from`.
    pub fn on_datagram(
        &mut self,
        cache: &mut Cache,
        rng: &mut Rng,
        from: SocketAddr,
        packet: &[u8],
        now: Instant,
    ) -> Action {
        if self.transport != Transport::Udp {
            return Action::Wait;
        }
        let server = self.server;
        if from != server {
            log::debug!("dns: dropped datagram from {from}, expected {server}");
            return Action::Wait;
        }
        let Some((qname, qtype)) = self.walk.current() else {
            return Action::Wait;
        };
        match parse_response(packet, self.id, qname, qtype) {
            Ok(answer) => self.on_answer(cache, rng, now, answer),
            Err(e) if e.is_foreign() => {
                log::debug!("dns: dropped reply from {server}: {e}");
                Action::Wait
            }
            Err(e) => {
                let failure = DnsFailure::Error(format!("bad reply from {server}: {e}"));
                self.fail_try(cache, rng, now, failure)
            }
        }
    }

    /// Bytes arrived on the current try's TCP stream (any split).
    pub fn on_stream(
        &mut self,
        cache: &mut Cache,
        rng: &mut Rng,
        mut bytes: &[u8],
        now: Instant,
    ) -> Action {
        if self.transport != Transport::Tcp {
            return Action::Wait;
        }
        // Take only what the message needs: the prefix, then the length it gives.
        if self.stream_in.len() < 2 {
            let take = (2 - self.stream_in.len()).min(bytes.len());
            self.stream_in.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
        }
        let need = match self.stream_in.get(..2) {
            Some(&[hi, lo]) => 2 + usize::from(u16::from_be_bytes([hi, lo])),
            _ => return Action::Wait,
        };
        let take = need.saturating_sub(self.stream_in.len()).min(bytes.len());
        self.stream_in.extend_from_slice(&bytes[..take]);
        if self.stream_in.len() < need {
            return Action::Wait;
        }
        let Some((qname, qtype)) = self.walk.current() else {
            return Action::Wait;
        };
        match parse_response(&self.stream_in[2..], self.id, qname, qtype) {
            Ok(answer) => self.on_answer(cache, rng, now, answer),
            Err(e) => {
                let failure = DnsFailure::Error(format!("bad tcp reply: {e}"));
                self.fail_try(cache, rng, now, failure)
            }
        }
    }

    /// The current try's socket failed (read/write error, TCP closed early): the try fails.
    pub fn on_io_error(
        &mut self,
        cache: &mut Cache,
        rng: &mut Rng,
        failure: DnsFailure,
        now: Instant,
    ) -> Action {
        if self.transport == Transport::Idle {
            return Action::Wait;
        }
        self.fail_try(cache, rng, now, failure)
    }

    /// The driver could not carry out the last `SendUdp`/`SendTcp` (no socket, connect or
    /// send refused at once): go on to the next try without waiting.
    pub fn on_send_failed(
        &mut self,
        cache: &mut Cache,
        rng: &mut Rng,
        error: &dyn fmt::Display,
        now: Instant,
    ) -> Action {
        match self.transport {
            Transport::Idle => Action::Wait,
            Transport::Tcp => {
                let failure = DnsFailure::Error(format!("tcp: {error}"));
                self.fail_try(cache, rng, now, failure)
            }
            Transport::Udp => {
                let server = self.server;
                log::debug!("dns: udp to {server}: {error}");
                self.last_failure = DnsFailure::Error(format!("udp {server}: {error}"));
                self.try_index += 1;
                self.open_try(cache, rng, now)
            }
        }
    }

    /// Handles the try deadline: before it, nothing; at or after it, the try failed.
    pub fn on_timeout(&mut self, cache: &mut Cache, rng: &mut Rng, now: Instant) -> Action {
        if now < self.deadline || self.transport == Transport::Idle {
            return Action::Wait;
        }
        log::debug!(
            "dns: {} try {} timed out",
            self.current_name(),
            self.try_index + 1
        );
        self.fail_try(cache, rng, now, DnsFailure::Timeout)
    }

    fn on_answer(
        &mut self,
        cache: &mut Cache,
        rng: &mut Rng,
        now: Instant,
        answer: Answer,
    ) -> Action {
        match answer.status {
            Status::NoError => self.finish_query(cache, rng, now, Ok(answer.addrs), answer.ttl),
            Status::NxDomain => self.finish_query(cache, rng, now, Err(DnsFailure::NxDomain), 0),
            Status::ServFail if self.servers.len() > 1 => {
                self.fail_try(cache, rng, now, DnsFailure::ServFail)
            }
            Status::ServFail => self.finish_query(cache, rng, now, Err(DnsFailure::ServFail), 0),
            Status::Truncated if self.transport == Transport::Udp => {
                log::debug!(
                    "dns: {} truncated over UDP, retrying over TCP",
                    self.current_name()
                );
                self.open_tcp(cache, rng, now)
            }
            Status::Truncated => {
                let failure = DnsFailure::Error("truncated reply over TCP".to_string());
                self.fail_try(cache, rng, now, failure)
            }
        }
    }

    /// Starts the query for the walk's current position.
    fn start_query(&mut self, cache: &mut Cache, rng: &mut Rng, now: Instant) -> Action {
        self.try_index = 0;
        self.last_failure = DnsFailure::Timeout;
        self.open_try(cache, rng, now)
    }

    /// Asks for the current try over UDP; when the tries are used up, the query's result
    /// is the last try's failure.
    fn open_try(&mut self, cache: &mut Cache, rng: &mut Rng, now: Instant) -> Action {
        loop {
            if self.try_index >= self.tries_total {
                let failure = self.last_failure.clone();
                return self.finish_query(cache, rng, now, Err(failure), 0);
            }
            let Some((qname, qtype)) = self.walk.current() else {
                self.transport = Transport::Idle;
                return Action::Done(Err(self.walk.final_failure()));
            };
            let server = match self.servers.get(self.try_index % self.servers.len().max(1)) {
                Some(server) => *server,
                None => self.server,
            };
            let id = rng.next_id();
            log::debug!(
                "dns: query {qname} {qtype:?} id {id} to {server} (try {})",
                self.try_index + 1
            );
            match build_query(id, qname, qtype) {
                Ok(packet) => {
                    self.id = id;
                    self.server = server;
                    self.transport = Transport::Udp;
                    self.deadline = later(now, self.try_timeout);
                    return Action::SendUdp { server, packet };
                }
                Err(e) => {
                    log::debug!("dns: udp to {server}: {e}");
                    self.last_failure = DnsFailure::Error(format!("udp {server}: {e}"));
                    self.try_index += 1;
                }
            }
        }
    }

    /// The same try (server, id) again over TCP.
    fn open_tcp(&mut self, cache: &mut Cache, rng: &mut Rng, now: Instant) -> Action {
        let Some((qname, qtype)) = self.walk.current() else {
            return Action::Wait;
        };
        let packet = match build_query(self.id, qname, qtype) {
            Ok(packet) => packet,
            Err(e) => {
                let failure = DnsFailure::Error(format!("tcp: {e}"));
                return self.fail_try(cache, rng, now, failure);
            }
        };
        let mut bytes = Vec::with_capacity(packet.len() + 2);
        bytes.extend_from_slice(&(packet.len() as u16).to_be_bytes());
        bytes.extend_from_slice(&packet);
        self.transport = Transport::Tcp;
        self.stream_in.clear();
        self.deadline = later(now, self.try_timeout);
        Action::SendTcp {
            server: self.server,
            bytes,
        }
    }

    fn fail_try(
        &mut self,
        cache: &mut Cache,
        rng: &mut Rng,
        now: Instant,
        failure: DnsFailure,
    ) -> Action {
        log::debug!(
            "dns: {} try {} failed: {failure}",
            self.current_name(),
            self.try_index + 1
        );
        self.last_failure = failure;
        self.try_index += 1;
        self.open_try(cache, rng, now)
    }

    /// Caches the result of the current query and moves the walk on.
    fn finish_query(
        &mut self,
        cache: &mut Cache,
        rng: &mut Rng,
        now: Instant,
        result: Result<Vec<IpAddr>, DnsFailure>,
        ttl: u32,
    ) -> Action {
        if let Some((name, qtype)) = self.walk.current() {
            log::debug!("dns: {name} {qtype:?}: {result:?} ttl {ttl}");
            cache.insert(name, qtype, result.clone(), ttl, now);
        }
        self.transport = Transport::Idle;
        if let Some(done) = self.walk.apply(result) {
            return Action::Done(done);
        }
        if let Some(done) = self.walk.skip_cached(cache, now) {
            return Action::Done(done);
        }
        self.start_query(cache, rng, now)
    }
}

// ---------------------------------------------------------------------------
// Lookup: the driver
// ---------------------------------------------------------------------------

/// The socket of the current try.
#[derive(Debug)]
enum Io {
    Idle,
    Udp {
        socket: UdpSocket,
        server: SocketAddr,
    },
    Tcp {
        stream: TcpStream,
        out: Vec<u8>,
        written: usize,
    },
}

/// One name being resolved. Owns the socket of its current try; the caller
/// registers it with one token and calls `on_ready` on events for that token
/// and `on_timeout` once `next_deadline` has passed. Dropping it abandons
/// the lookup (this is how the caller's overall deadline is applied).
#[derive(Debug)]
pub struct Lookup {
    session: Session,
    io: Io,
    token: Option<Token>,
}

impl Lookup {
    /// Starts `name` (already validated): from the cache, or with its first query sent.
    pub(super) fn begin(res: &mut Resolver, name: &str, now: Instant) -> Start {
        let mut lookup = Lookup {
            session: Session::new(name, &res.conf, now),
            io: Io::Idle,
            token: None,
        };
        let action = lookup.session.start(&mut res.cache, &mut res.rng, now);
        match lookup.perform(res, None, now, action) {
            Some(done) => {
                res.last_answer = lookup.session.take_answer();
                Start::Done(done)
            }
            None => Start::Pending(Box::new(lookup)),
        }
    }

    /// Every address of the answer, once `on_ready`/`on_timeout` returned `Some(Ok(ip))`
    /// (`ip` is the first); empty before that or after a failure.
    pub fn addresses(&self) -> &[IpAddr] {
        self.session.addresses()
    }

    /// The name being queried now (a search candidate), for logs.
    pub fn current_name(&self) -> &str {
        self.session.current_name()
    }

    /// Registers the current socket; later sockets (retries, TCP) are
    /// registered with the same token by `on_ready` / `on_timeout`.
    pub fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        self.token = Some(token);
        register_io(&mut self.io, registry, token)
    }

    /// Deregisters the current socket (dropping the lookup also closes it).
    pub fn deregister(&mut self, registry: &Registry) {
        deregister_io(&mut self.io, registry);
        self.token = None;
    }

    /// When `on_timeout` must be called (retransmission or next server).
    pub fn next_deadline(&self) -> Instant {
        self.session.deadline()
    }

    /// Reads the socket; `Some` is the final result of the lookup.
    pub fn on_ready(
        &mut self,
        res: &mut Resolver,
        registry: &Registry,
        now: Instant,
    ) -> Option<Result<IpAddr, DnsFailure>> {
        let (cache, rng) = (&mut res.cache, &mut res.rng);
        let session = &mut self.session;
        let action = match &mut self.io {
            Io::Idle => Action::Wait,
            Io::Udp { socket, server } => pump_udp(socket, *server, session, cache, rng, now),
            Io::Tcp {
                stream,
                out,
                written,
            } => pump_tcp(stream, out, written, session, cache, rng, now),
        };
        self.perform(res, Some(registry), now, action)
    }

    /// Handles the try deadline; `Some` is the final result of the lookup.
    pub fn on_timeout(
        &mut self,
        res: &mut Resolver,
        registry: &Registry,
        now: Instant,
    ) -> Option<Result<IpAddr, DnsFailure>> {
        if matches!(self.io, Io::Idle) {
            return None;
        }
        let action = self.session.on_timeout(&mut res.cache, &mut res.rng, now);
        self.perform(res, Some(registry), now, action)
    }

    /// Carries out what the session asks until it waits or is done.
    fn perform(
        &mut self,
        res: &mut Resolver,
        registry: Option<&Registry>,
        now: Instant,
        mut action: Action,
    ) -> Option<Result<IpAddr, DnsFailure>> {
        loop {
            let opened = match action {
                Action::Wait => return None,
                Action::Done(result) => {
                    if let Some(registry) = registry {
                        deregister_io(&mut self.io, registry);
                    }
                    self.io = Io::Idle;
                    return Some(result);
                }
                Action::SendUdp { server, packet } => open_udp(server, &packet)
                    .and_then(|socket| self.replace_io(Io::Udp { socket, server }, registry)),
                Action::SendTcp { server, bytes } => {
                    TcpStream::connect(server).and_then(|stream| {
                        let io = Io::Tcp {
                            stream,
                            out: bytes,
                            written: 0,
                        };
                        self.replace_io(io, registry)
                    })
                }
            };
            match opened {
                Ok(()) => return None,
                // No socket for want of the agent's own resources: other servers would fare
                // no better, and it says nothing about the name.
                Err(e) if super::is_agent_shortage(&e) => {
                    action = Action::Done(Err(DnsFailure::Local(format!("dns socket: {e}"))))
                }
                Err(e) => {
                    action = self
                        .session
                        .on_send_failed(&mut res.cache, &mut res.rng, &e, now)
                }
            }
        }
    }

    fn replace_io(&mut self, io: Io, registry: Option<&Registry>) -> io::Result<()> {
        if let Some(registry) = registry {
            deregister_io(&mut self.io, registry);
        }
        self.io = io;
        match (registry, self.token) {
            (Some(registry), Some(token)) => register_io(&mut self.io, registry, token),
            _ => Ok(()),
        }
    }
}

fn register_io(io: &mut Io, registry: &Registry, token: Token) -> io::Result<()> {
    match io {
        Io::Idle => Ok(()),
        Io::Udp { socket, .. } => registry.register(socket, token, Interest::READABLE),
        Io::Tcp { stream, .. } => {
            registry.register(stream, token, Interest::READABLE | Interest::WRITABLE)
        }
    }
}

fn deregister_io(io: &mut Io, registry: &Registry) {
    let result = match io {
        Io::Idle => Ok(()),
        Io::Udp { socket, .. } => registry.deregister(socket),
        Io::Tcp { stream, .. } => registry.deregister(stream),
    };
    if let Err(e) = result {
        log::debug!("dns: deregister: {e}");
    }
}

/// A fresh UDP socket on an OS-chosen port, connected to `server`, with the query sent.
fn open_udp(server: SocketAddr, packet: &[u8]) -> io::Result<UdpSocket> {
    let local = match server {
        SocketAddr::V4(_) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        SocketAddr::V6(_) => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
    };
    let socket = UdpSocket::bind(local)?;
    socket.connect(server)?;
    let sent = socket.send(packet)?;
    if sent != packet.len() {
        return Err(io::Error::other("short send"));
    }
    Ok(socket)
}

/// Reads datagrams (at most [`MAX_DATAGRAMS_PER_EVENT`]) into the session until it acts.
fn pump_udp(
    socket: &UdpSocket,
    server: SocketAddr,
    session: &mut Session,
    cache: &mut Cache,
    rng: &mut Rng,
    now: Instant,
) -> Action {
    let mut buf = [0u8; UDP_RECV_BUF];
    for _ in 0..MAX_DATAGRAMS_PER_EVENT {
        match socket.recv_from(&mut buf) {
            Ok((len, from)) => match session.on_datagram(cache, rng, from, &buf[..len], now) {
                Action::Wait => {}
                action => return action,
            },
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Action::Wait,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                let failure = DnsFailure::Error(format!("udp {server}: {e}"));
                return session.on_io_error(cache, rng, failure, now);
            }
        }
    }
    Action::Wait
}

/// Writes the query, then reads the stream into the session until it acts or the socket
/// has nothing more for now.
fn pump_tcp(
    stream: &mut TcpStream,
    out: &[u8],
    written: &mut usize,
    session: &mut Session,
    cache: &mut Cache,
    rng: &mut Rng,
    now: Instant,
) -> Action {
    let pending = |e: &io::Error| {
        matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::NotConnected
        )
    };
    match stream.take_error() {
        Ok(None) => {}
        Ok(Some(e)) | Err(e) => {
            return session.on_io_error(cache, rng, DnsFailure::Error(format!("tcp: {e}")), now)
        }
    }
    while *written < out.len() {
        match stream.write(&out[*written..]) {
            Ok(0) => {
                return session.on_io_error(
                    cache,
                    rng,
                    DnsFailure::Error("tcp: write returned 0".to_string()),
                    now,
                )
            }
            Ok(n) => *written += n,
            Err(e) if pending(&e) => return Action::Wait,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                return session.on_io_error(cache, rng, DnsFailure::Error(format!("tcp: {e}")), now)
            }
        }
    }
    let mut chunk = [0u8; TCP_READ_CHUNK];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => {
                return session.on_io_error(
                    cache,
                    rng,
                    DnsFailure::Error("tcp: closed before reply".to_string()),
                    now,
                )
            }
            Ok(n) => match session.on_stream(cache, rng, &chunk[..n], now) {
                Action::Wait => {}
                action => return action,
            },
            Err(e) if pending(&e) => return Action::Wait,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                return session.on_io_error(cache, rng, DnsFailure::Error(format!("tcp: {e}")), now)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The session from byte scripts: no sockets, no clock (instants are made up).
    use super::*;
    use crate::dns::testkit::*;
    use crate::dns::QType;

    const TRY: Duration = Duration::from_secs(1);

    fn srv(last: u8) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)), DNS_PORT)
    }

    fn conf(servers: &[SocketAddr], search: &[&str], attempts: u32) -> ResolvConf {
        ResolvConf {
            nameservers: servers.to_vec(),
            search: search.iter().map(|d| d.to_string()).collect(),
            ndots: 1,
            timeout: TRY,
            attempts,
        }
    }

    /// A session with its own cache and id source, started at `t0`.
    struct Script {
        session: Session,
        cache: Cache,
        rng: Rng,
        t0: Instant,
    }

    impl Script {
        fn start(name: &str, conf: &ResolvConf) -> (Script, Action) {
            Script::start_with(name, conf, Cache::new())
        }

        fn start_with(name: &str, conf: &ResolvConf, mut cache: Cache) -> (Script, Action) {
            let t0 = Instant::now();
            let mut rng = Rng::from_seed(16);
            let mut session = Session::new(name, conf, t0);
            let action = session.start(&mut cache, &mut rng, t0);
            let script = Script {
                session,
                cache,
                rng,
                t0,
            };
            (script, action)
        }

        fn at(&self, millis: u64) -> Instant {
            self.t0 + Duration::from_millis(millis)
        }

        fn datagram(&mut self, from: SocketAddr, packet: &[u8], now: Instant) -> Action {
            let (cache, rng) = (&mut self.cache, &mut self.rng);
            self.session.on_datagram(cache, rng, from, packet, now)
        }

        fn stream(&mut self, bytes: &[u8], now: Instant) -> Action {
            self.session
                .on_stream(&mut self.cache, &mut self.rng, bytes, now)
        }

        fn timeout(&mut self, now: Instant) -> Action {
            self.session.on_timeout(&mut self.cache, &mut self.rng, now)
        }

        fn io_error(&mut self, text: &str, now: Instant) -> Action {
            let failure = DnsFailure::Error(text.to_string());
            self.session
                .on_io_error(&mut self.cache, &mut self.rng, failure, now)
        }

        fn send_failed(&mut self, text: &str, now: Instant) -> Action {
            self.session
                .on_send_failed(&mut self.cache, &mut self.rng, &text, now)
        }
    }

    /// What a `SendUdp` asks: (server, the query packet).
    fn udp(action: &Action) -> (SocketAddr, Vec<u8>) {
        match action {
            Action::SendUdp { server, packet } => (*server, packet.clone()),
            other => panic!("expected SendUdp, got {other:?}"),
        }
    }

    /// The (id, name, type) of a query packet, decoded by hand.
    fn asked(packet: &[u8]) -> (u16, String, u16) {
        let id = u16::from_be_bytes([packet[0], packet[1]]);
        let mut pos = HEADER;
        let mut labels = Vec::new();
        while packet[pos] != 0 {
            let len = usize::from(packet[pos]);
            labels.push(String::from_utf8(packet[pos + 1..pos + 1 + len].to_vec()).unwrap());
            pos += 1 + len;
        }
        let qtype = u16::from_be_bytes([packet[pos + 1], packet[pos + 2]]);
        (id, labels.join("."), qtype)
    }

    const HEADER: usize = 12;

    /// A reply to `query` (same id and question) with these flags and answer records.
    fn reply(query: &[u8], flags: u16, answers: &[Vec<u8>]) -> Vec<u8> {
        let id = u16::from_be_bytes([query[0], query[1]]);
        let mut p = header(id, flags, 1, answers.len() as u16);
        p.extend_from_slice(&query[HEADER..]);
        for answer in answers {
            p.extend_from_slice(answer);
        }
        p
    }

    /// An answer record owned by the question's name.
    fn rr(rtype: u16, ttl: u32, rdata: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        record(&mut out, &PTR_QNAME, rtype, ttl, rdata);
        out
    }

    fn a(ip: [u8; 4]) -> Vec<u8> {
        rr(TYPE_A, 60, &ip)
    }

    fn with_prefix(message: &[u8]) -> Vec<u8> {
        let mut out = (message.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(message);
        out
    }

    #[test]
    fn udp_answer_ends_the_lookup_and_is_cached() {
        let (mut s, first) = Script::start("www.example.com", &conf(&[srv(1)], &[], 2));
        let (server, query) = udp(&first);
        assert_eq!(server, srv(1));
        assert_eq!(asked(&query).1, "www.example.com");
        assert_eq!(asked(&query).2, TYPE_A);
        assert_eq!(s.session.deadline(), s.at(1000));
        let answer = reply(&query, RESPONSE, &[a([192, 0, 2, 1]), a([192, 0, 2, 2])]);
        assert_eq!(
            s.datagram(srv(1), &answer, s.at(10)),
            Action::Done(Ok(v4(192, 0, 2, 1)))
        );
        assert_eq!(s.session.addresses(), &[v4(192, 0, 2, 1), v4(192, 0, 2, 2)]);
        // Over: nothing more happens, whatever arrives.
        assert_eq!(s.datagram(srv(1), &answer, s.at(20)), Action::Wait);
        assert_eq!(s.timeout(s.at(5000)), Action::Wait);
        // The next lookup of the name is answered from the cache without a query.
        let (_, again) = Script::start_with("www.example.com", &conf(&[srv(1)], &[], 2), s.cache);
        assert_eq!(again, Action::Done(Ok(v4(192, 0, 2, 1))));
    }

    #[test]
    fn timeouts_rotate_over_servers_for_attempts_rounds() {
        let (mut s, first) = Script::start("a.test", &conf(&[srv(1), srv(2)], &[], 2));
        let mut ids = vec![asked(&udp(&first).1).0];
        assert_eq!(
            s.timeout(s.at(999)),
            Action::Wait,
            "before the try deadline"
        );
        let mut servers = vec![udp(&first).0];
        for (n, due) in [1000u64, 2000, 3000].into_iter().enumerate() {
            let next = s.timeout(s.at(due));
            let (server, query) = udp(&next);
            servers.push(server);
            ids.push(asked(&query).0);
            assert_eq!(asked(&query).1, "a.test", "try {}", n + 2);
            assert_eq!(s.session.deadline(), s.at(due + 1000));
        }
        assert_eq!(servers, [srv(1), srv(2), srv(1), srv(2)]);
        ids.dedup();
        assert_eq!(ids.len(), 4, "a fresh id per try: {ids:?}");
        assert_eq!(
            s.timeout(s.at(4000)),
            Action::Done(Err(DnsFailure::Timeout))
        );
        assert!(s.cache.is_empty(), "timeouts are not cached");
    }

    #[test]
    fn late_reply_to_an_earlier_try_is_dropped() {
        let (mut s, first) = Script::start("a.test", &conf(&[srv(1), srv(2)], &[], 1));
        let old = udp(&first).1;
        let second = udp(&s.timeout(s.at(1000))).1;
        let late = reply(&old, RESPONSE, &[a([10, 0, 0, 1])]);
        assert_eq!(s.datagram(srv(1), &late, s.at(1100)), Action::Wait);
        assert_eq!(
            s.datagram(srv(2), &late, s.at(1100)),
            Action::Wait,
            "old id"
        );
        let good = reply(&second, RESPONSE, &[a([10, 0, 0, 2])]);
        assert_eq!(
            s.datagram(srv(2), &good, s.at(1200)),
            Action::Done(Ok(v4(10, 0, 0, 2)))
        );
    }

    #[test]
    fn reply_from_a_foreign_address_is_dropped() {
        let (mut s, first) = Script::start("a.test", &conf(&[srv(1)], &[], 1));
        let good = reply(&udp(&first).1, RESPONSE, &[a([10, 0, 0, 1])]);
        assert_eq!(s.datagram(srv(9), &good, s.at(1)), Action::Wait);
        let other_port = SocketAddr::new(srv(1).ip(), 5353);
        assert_eq!(s.datagram(other_port, &good, s.at(1)), Action::Wait);
        assert_eq!(s.session.deadline(), s.at(1000), "still the same try");
        assert_eq!(
            s.datagram(srv(1), &good, s.at(2)),
            Action::Done(Ok(v4(10, 0, 0, 1)))
        );
    }

    #[test]
    fn packets_that_are_not_our_reply_are_dropped() {
        let (mut s, first) = Script::start("a.test", &conf(&[srv(1)], &[], 1));
        let query = udp(&first).1;
        let (id, _, _) = asked(&query);
        let mut wrong_id = reply(&query, RESPONSE, &[a([10, 0, 0, 1])]);
        wrong_id[..2].copy_from_slice(&id.wrapping_add(1).to_be_bytes());
        let mut other_question = header(id, RESPONSE, 1, 0);
        question(&mut other_question, "b.test", TYPE_A);
        let our_query_echoed = query.clone(); // QR=0
        for junk in [wrong_id, other_question, our_query_echoed, vec![0; 5]] {
            assert_eq!(s.datagram(srv(1), &junk, s.at(1)), Action::Wait, "{junk:?}");
        }
        let good = reply(&query, RESPONSE, &[a([10, 0, 0, 1])]);
        assert_eq!(
            s.datagram(srv(1), &good, s.at(2)),
            Action::Done(Ok(v4(10, 0, 0, 1)))
        );
    }

    #[test]
    fn malformed_reply_from_our_server_fails_the_try() {
        let (mut s, first) = Script::start("a.test", &conf(&[srv(1), srv(2)], &[], 1));
        // Our id and question, one answer announced, none present.
        let mut broken = reply(&udp(&first).1, RESPONSE, &[]);
        broken[7] = 1;
        let next = s.datagram(srv(1), &broken, s.at(5));
        let (server, query) = udp(&next);
        assert_eq!(server, srv(2), "the next server is asked at once");
        assert_eq!(s.session.deadline(), s.at(1005));
        let mut broken = reply(&query, RESPONSE, &[]);
        broken[7] = 1;
        match s.datagram(srv(2), &broken, s.at(6)) {
            Action::Done(Err(DnsFailure::Error(msg))) => {
                assert!(msg.starts_with("bad reply from 127.0.0.2:53"), "{msg}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn truncated_udp_reply_retries_the_same_try_over_tcp() {
        let (mut s, first) = Script::start("big.test", &conf(&[srv(1), srv(2)], &[], 2));
        let query = udp(&first).1;
        let tcp = s.datagram(srv(1), &reply(&query, RESPONSE | TC, &[]), s.at(300));
        assert_eq!(
            tcp,
            Action::SendTcp {
                server: srv(1),
                bytes: with_prefix(&query),
            },
            "same server, same id and question, with the length prefix"
        );
        assert_eq!(
            s.session.deadline(),
            s.at(1300),
            "the TCP try gets a full timeout"
        );
        // UDP is done with: even a good datagram is ignored now.
        let good = reply(&query, RESPONSE, &[a([10, 0, 0, 7])]);
        assert_eq!(s.datagram(srv(1), &good, s.at(301)), Action::Wait);
        // The reply arrives one byte at a time, followed by junk that is not read.
        let mut bytes = with_prefix(&good);
        let last = bytes.len() - 1;
        bytes.extend_from_slice(b"trailing");
        for (i, byte) in bytes[..last].iter().enumerate() {
            assert_eq!(s.stream(&[*byte], s.at(400)), Action::Wait, "byte {i}");
        }
        assert_eq!(
            s.stream(&bytes[last..], s.at(400)),
            Action::Done(Ok(v4(10, 0, 0, 7)))
        );
    }

    #[test]
    fn tcp_failures_move_on_to_the_next_try() {
        let (mut s, first) = Script::start("big.test", &conf(&[srv(1), srv(2)], &[], 2));
        let tc = |query: &[u8]| reply(query, RESPONSE | TC, &[]);
        // Try 1: TC, then the stream closes before a reply.
        let q1 = udp(&first).1;
        assert!(matches!(
            s.datagram(srv(1), &tc(&q1), s.at(1)),
            Action::SendTcp { .. }
        ));
        let (server, q2) = udp(&s.io_error("tcp: closed before reply", s.at(2)));
        assert_eq!(server, srv(2));
        // Try 2: TC, then a TCP reply that is truncated too.
        assert!(matches!(
            s.datagram(srv(2), &tc(&q2), s.at(3)),
            Action::SendTcp { .. }
        ));
        let (server, q3) = udp(&s.stream(&with_prefix(&tc(&q2)), s.at(4)));
        assert_eq!(server, srv(1));
        // Try 3: TC, then TCP connect refused at once; try 4 is sent without waiting.
        assert!(matches!(
            s.datagram(srv(1), &tc(&q3), s.at(5)),
            Action::SendTcp { .. }
        ));
        let (server, q4) = udp(&s.send_failed("connection refused", s.at(6)));
        assert_eq!(server, srv(2));
        // Try 4: TC, then a TCP reply with another id (over TCP that fails the try).
        assert!(matches!(
            s.datagram(srv(2), &tc(&q4), s.at(7)),
            Action::SendTcp { .. }
        ));
        let mut wrong = reply(&q4, RESPONSE, &[a([10, 0, 0, 1])]);
        wrong[0] ^= 0xFF;
        assert_eq!(
            s.stream(&with_prefix(&wrong), s.at(8)),
            Action::Done(Err(DnsFailure::Error("bad tcp reply: WrongId".into())))
        );
    }

    #[test]
    fn tcp_try_times_out_to_the_next_server_over_udp() {
        let (mut s, first) = Script::start("big.test", &conf(&[srv(1), srv(2)], &[], 1));
        let q1 = udp(&first).1;
        let tcp = s.datagram(srv(1), &reply(&q1, RESPONSE | TC, &[]), s.at(500));
        assert!(matches!(tcp, Action::SendTcp { .. }));
        assert_eq!(
            s.timeout(s.at(1000)),
            Action::Wait,
            "the TCP try has its own deadline"
        );
        let (server, _) = udp(&s.timeout(s.at(1500)));
        assert_eq!(server, srv(2));
        assert_eq!(
            s.stream(&[0, 1], s.at(1501)),
            Action::Wait,
            "TCP is done with"
        );
    }

    #[test]
    fn udp_send_failures_use_up_the_tries_at_once() {
        let (mut s, first) = Script::start("a.test", &conf(&[srv(1), srv(2)], &[], 2));
        let mut servers = vec![udp(&first).0];
        let mut action = s.send_failed("network unreachable", s.t0);
        while let Action::SendUdp { server, .. } = action {
            servers.push(server);
            action = s.send_failed("network unreachable", s.t0);
        }
        assert_eq!(servers, [srv(1), srv(2), srv(1), srv(2)]);
        assert_eq!(
            action,
            Action::Done(Err(DnsFailure::Error(
                "udp 127.0.0.2:53: network unreachable".into()
            )))
        );
    }

    #[test]
    fn search_list_is_walked_in_order_past_nxdomain() {
        let conf = conf(&[srv(1)], &["a.test", "b.test"], 1);
        let (mut s, first) = Script::start("web", &conf);
        let mut action = first;
        let mut names = Vec::new();
        for n in 0..2 {
            let query = udp(&action).1;
            names.push(asked(&query).1);
            action = s.datagram(srv(1), &reply(&query, RESPONSE | NXDOMAIN, &[]), s.at(n));
        }
        let query = udp(&action).1;
        names.push(asked(&query).1);
        assert_eq!(names, ["web.a.test", "web.b.test", "web"]);
        let done = s.datagram(
            srv(1),
            &reply(&query, RESPONSE, &[a([10, 9, 8, 7])]),
            s.at(3),
        );
        assert_eq!(done, Action::Done(Ok(v4(10, 9, 8, 7))));
        assert_eq!(
            s.cache.get("web.a.test", QType::A, s.at(4)),
            Some(Err(DnsFailure::NxDomain)),
            "negative answers are cached"
        );
        // The next lookup skips the cached candidates and answers from the cache.
        let (_, again) = Script::start_with("web", &conf, s.cache);
        assert_eq!(again, Action::Done(Ok(v4(10, 9, 8, 7))));
    }

    #[test]
    fn cached_nxdomain_skips_a_candidate() {
        let conf = conf(&[srv(1)], &["a.test", "b.test"], 1);
        let mut cache = Cache::new();
        cache.insert(
            "web.a.test",
            QType::A,
            Err(DnsFailure::NxDomain),
            0,
            Instant::now(),
        );
        let (_, first) = Script::start_with("web", &conf, cache);
        assert_eq!(asked(&udp(&first).1).1, "web.b.test");
    }

    #[test]
    fn every_candidate_nxdomain_is_nxdomain() {
        let (mut s, first) = Script::start("web", &conf(&[srv(1)], &["a.test"], 1));
        let q1 = udp(&first).1;
        let next = s.datagram(srv(1), &reply(&q1, RESPONSE | NXDOMAIN, &[]), s.at(1));
        let q2 = udp(&next).1;
        assert_eq!(
            s.datagram(srv(1), &reply(&q2, RESPONSE | NXDOMAIN, &[]), s.at(2)),
            Action::Done(Err(DnsFailure::NxDomain))
        );
    }

    #[test]
    fn nodata_for_a_asks_aaaa_of_the_same_name() {
        let (mut s, first) = Script::start("v6.test", &conf(&[srv(1)], &[], 1));
        let q1 = udp(&first).1;
        let next = s.datagram(srv(1), &reply(&q1, RESPONSE, &[]), s.at(1));
        let q2 = udp(&next).1;
        assert_eq!(asked(&q2).1, "v6.test");
        assert_eq!(asked(&q2).2, TYPE_AAAA);
        let six: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        let answer = reply(&q2, RESPONSE, &[rr(TYPE_AAAA, 60, &six)]);
        assert_eq!(
            s.datagram(srv(1), &answer, s.at(2)),
            Action::Done(Ok(IpAddr::from(six)))
        );
    }

    #[test]
    fn nodata_for_both_families_is_no_address() {
        let (mut s, first) = Script::start("none.test", &conf(&[srv(1)], &[], 1));
        let q1 = udp(&first).1;
        let q2 = udp(&s.datagram(srv(1), &reply(&q1, RESPONSE, &[]), s.at(1))).1;
        assert_eq!(
            s.datagram(srv(1), &reply(&q2, RESPONSE, &[]), s.at(2)),
            Action::Done(Err(DnsFailure::NoAddress))
        );
    }

    #[test]
    fn servfail_from_the_only_server_is_final_for_the_candidate() {
        let (mut s, first) = Script::start("sf.test", &conf(&[srv(1)], &[], 2));
        let q1 = udp(&first).1;
        assert_eq!(
            s.datagram(srv(1), &reply(&q1, RESPONSE | SERVFAIL, &[]), s.at(1)),
            Action::Done(Err(DnsFailure::ServFail))
        );
        assert_eq!(
            s.cache.get("sf.test", QType::A, s.at(2)),
            Some(Err(DnsFailure::ServFail))
        );
    }

    #[test]
    fn servfail_with_several_servers_asks_the_next_one() {
        let (mut s, first) = Script::start("sf.test", &conf(&[srv(1), srv(2)], &[], 1));
        let q1 = udp(&first).1;
        let next = s.datagram(srv(1), &reply(&q1, RESPONSE | SERVFAIL, &[]), s.at(1));
        let (server, q2) = udp(&next);
        assert_eq!(server, srv(2));
        assert_eq!(
            s.datagram(srv(2), &reply(&q2, RESPONSE | SERVFAIL, &[]), s.at(2)),
            Action::Done(Err(DnsFailure::ServFail))
        );
    }

    #[test]
    fn cname_chain_in_the_answer_is_followed() {
        let (mut s, first) = Script::start("www.test", &conf(&[srv(1)], &[], 1));
        let q1 = udp(&first).1;
        let mut edge = Vec::new();
        record(
            &mut edge,
            &wire_name("edge.cdn.test"),
            TYPE_CNAME,
            60,
            &wire_name("node.cdn.test"),
        );
        let mut node = Vec::new();
        record(
            &mut node,
            &wire_name("node.cdn.test"),
            TYPE_A,
            60,
            &[10, 1, 1, 1],
        );
        let answers = [rr(TYPE_CNAME, 60, &wire_name("edge.cdn.test")), edge, node];
        assert_eq!(
            s.datagram(srv(1), &reply(&q1, RESPONSE, &answers), s.at(1)),
            Action::Done(Ok(v4(10, 1, 1, 1)))
        );
    }
}
