//! The database connection's transport (feature `postgres`): a non-blocking connect over TCP
//! or a unix socket, on the agent's one `mio::Poll`, after the host's name through the agent's
//! own resolver (`dns::Lookup`, same loop); `SSLRequest` and a rustls handshake when the
//! `sslmode` asks (feature `tls`; `rustls::ClientConnection` is sans-IO, its bytes pumped
//! here); then the bytes of the pure protocol session (`pg_wire::Session`) moved between it
//! and the socket. [`Dialer`] holds what a connection needs (the parsed conninfo, the resolver,
//! the TLS client, the password); [`Conn`] is one connection, open or on its way. Kept apart
//! from the driver (`source_pg`), which decides when to connect, what a cycle sends, and what
//! a failure costs (retry, backoff).
//!
//! The password comes from the URL, `PGPASSWORD`, or a libpq password file (`passfile=`,
//! `PGPASSFILE`, else `~/.pgpass`; ignored with a warning unless it is a regular file without
//! group or world access, as libpq). It is given to the session, which sends it only as the
//! server's method needs it: SCRAM or md5 anywhere, clear text only over TLS or to a local
//! address. [`Dialer::scrub`] keeps it out of messages.
//!
//! Limits: DNS, connect, TLS and authentication together within [`CONNECT_TIMEOUT`] (the
//! driver enforces it from [`Conn::deadline`]); reads of [`READ_CHUNK`] bytes, drained until
//! the socket would block (the poll is edge-triggered).

use std::fs;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use log::warn;
use mio::event::Source;
use mio::net::{TcpStream, UnixStream};
use mio::{Interest, Registry, Token};
use postgres_protocol::message::frontend;

use crate::dns::{DnsFailure, Lookup, Resolver, ResolverConfig, Start};
use crate::pg_conninfo::{self, ConnInfo, Target, MAX_PGPASS_BYTES};
#[cfg(feature = "tls")]
use crate::pg_tls::{SslMode, TlsClient};
use crate::pg_wire::{self, Phase, Progress, Session, WireError};

/// Bound on resolving, connecting, TLS and authentication together. A database a LAN or a
/// region away answers in milliseconds; 2 s is generous, and the cycle waits at most this
/// long (plus `source_pg::QUERY_TIMEOUT`) before it probes the routes it already knows.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Bytes read from the socket per read call.
pub(crate) const READ_CHUNK: usize = 16 * 1024;
/// Passwords shorter than this are not scrubbed from messages (replacing every "ab" would
/// garble the text); they are never put into messages in the first place anyway.
const MIN_SCRUBBED_PASSWORD_LEN: usize = 4;

/// The socket: TCP or a unix socket, both non-blocking.
pub(crate) enum Io {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Io {
    fn source(&mut self) -> &mut dyn Source {
        match self {
            Io::Tcp(s) => s,
            Io::Unix(s) => s,
        }
    }

    fn take_error(&self) -> io::Result<Option<io::Error>> {
        match self {
            Io::Tcp(s) => s.take_error(),
            Io::Unix(s) => s.take_error(),
        }
    }

    /// `Ok` once the connect completed; `NotConnected` while it is in progress.
    fn connected(&self) -> io::Result<()> {
        match self {
            Io::Tcp(s) => s.peer_addr().map(drop),
            Io::Unix(s) => s.peer_addr().map(drop),
        }
    }
}

impl Read for Io {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Io::Tcp(s) => s.read(buf),
            Io::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Io {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Io::Tcp(s) => s.write(buf),
            Io::Unix(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The TLS session of a connection, when there is one.
#[cfg(feature = "tls")]
pub(crate) type Tls = Option<Box<rustls::ClientConnection>>;
#[cfg(not(feature = "tls"))]
pub(crate) type Tls = Option<std::convert::Infallible>;

/// Where a connection is.
pub(crate) enum Stage {
    /// Waiting for the name server.
    Resolving(Box<Lookup>),
    /// Waiting for the connect to complete (WRITABLE).
    Connecting(Io),
    /// `SSLRequest` sent; waiting for the server's one-byte answer.
    SslRequest(Io),
    /// Connected: TLS (if any) and the protocol session on top (boxed: it is the large one).
    Open {
        io: Io,
        tls: Tls,
        session: Box<Session>,
    },
    /// Between two stages (never seen outside `Dialer::pump`).
    Gone,
}

impl Stage {
    /// What the stage is doing, for timeout messages.
    pub(crate) fn doing(&self) -> &'static str {
        match self {
            Stage::Resolving(_) => "resolving the host name",
            Stage::Connecting(_) => "connecting",
            Stage::SslRequest(_) => "asking for TLS",
            Stage::Gone => "closing",
            Stage::Open { session, .. } => match session.phase() {
                Phase::Starting => "starting up and authenticating",
                _ => "reading routes",
            },
        }
    }
}

/// A connection, open or on its way.
pub(crate) struct Conn {
    pub(crate) token: Token,
    pub(crate) stage: Stage,
    /// When the current phase must be done (connect, or the cycle's transaction).
    pub(crate) deadline: Option<Instant>,
    /// The address connected to, for messages.
    pub(crate) addr: String,
    /// Clear-text passwords may be sent: TLS, a unix socket or a loopback address.
    local: bool,
}

/// Why a fetch failed.
pub(crate) struct Failure {
    /// The connection itself was found dead (closed, reset, server shutting down): worth one
    /// immediate retry when it was a reused connection.
    pub(crate) lost: bool,
    pub(crate) message: String,
}

impl Failure {
    pub(crate) fn new(message: String) -> Failure {
        Failure {
            lost: false,
            message,
        }
    }
    pub(crate) fn lost(message: String) -> Failure {
        Failure {
            lost: true,
            message,
        }
    }
}

impl Conn {
    /// Whether the connection is open and ready for a cycle.
    pub(crate) fn idle(&self) -> bool {
        matches!(&self.stage, Stage::Open { session, .. } if session.phase() == Phase::Idle)
    }

    /// The phase's deadline, or the name server's retry time if that comes first.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        match &self.stage {
            Stage::Resolving(lookup) => Some(
                self.deadline
                    .map_or(lookup.next_deadline(), |d| d.min(lookup.next_deadline())),
            ),
            _ => self.deadline,
        }
    }

    /// Deregisters the socket (or the name lookup) and drops the connection.
    pub(crate) fn close(mut self, registry: &Registry) {
        match &mut self.stage {
            Stage::Gone => {}
            Stage::Resolving(lookup) => lookup.deregister(registry),
            Stage::Connecting(io) | Stage::SslRequest(io) => {
                let _ = registry.deregister(io.source());
            }
            Stage::Open { io, tls, session } => {
                // A polite goodbye if the socket takes it at once; never waited for.
                if session.phase() == Phase::Idle && tls.is_none() {
                    session.terminate();
                    let _ = io.write(session.output());
                }
                let _ = registry.deregister(io.source());
            }
        }
    }
}

/// What a connection to the database needs: where, how (TLS), and as whom.
pub(crate) struct Dialer {
    info: ConnInfo,
    /// Looks up the database host's name when (re)connecting.
    resolver: Resolver,
    /// The TLS side, for TCP targets with any sslmode but `disable`.
    #[cfg(feature = "tls")]
    tls_client: Option<TlsClient>,
    /// The password file to read when the URL and the environment give no password.
    passfile: Option<PathBuf>,
    /// The last warning about the password file, to say it once.
    passfile_warning: Option<String>,
}

impl Dialer {
    /// Loads the TLS roots the `sslmode` needs. Errors never contain the password.
    pub(crate) fn new(info: ConnInfo) -> Result<Dialer, String> {
        // As libpq, TLS is never used over a unix socket, whatever the sslmode.
        let tcp = matches!(info.target, Target::Tcp { .. });
        #[cfg(feature = "tls")]
        let tls_client = match info.tls.mode {
            SslMode::Disable => None,
            _ if !tcp => None,
            _ => Some(TlsClient::new(&info.tls).map_err(|e| format!("database URL: {e}"))?),
        };
        #[cfg(not(feature = "tls"))]
        if tcp && info.tls.mode.requires_tls() {
            return Err(format!(
                "database URL: sslmode={} needs TLS, which this build leaves out (built without \
                 the `tls` cargo feature); rebuild with it, or use sslmode=disable or prefer",
                info.tls.mode
            ));
        }
        Ok(Dialer {
            passfile: info.passfile.as_ref().map(PathBuf::from),
            info,
            resolver: Resolver::new(ResolverConfig::system()),
            #[cfg(feature = "tls")]
            tls_client,
            passfile_warning: None,
        })
    }

    /// `user@host:port/db`, safe to log.
    pub(crate) fn describe(&self) -> String {
        self.info.describe()
    }

    /// Uses these name servers for the database host instead of /etc/resolv.conf's.
    pub(crate) fn set_resolver(&mut self, config: ResolverConfig) {
        self.resolver = Resolver::new(config);
    }

    /// The password file to read when no password is given; a `passfile=` in the URL wins.
    pub(crate) fn set_passfile(&mut self, path: Option<PathBuf>) {
        if self.info.passfile.is_none() {
            self.passfile = path;
        }
    }

    /// Starts a new connection on `token`, due by `now` + [`CONNECT_TIMEOUT`]: the name first
    /// if it is not an address.
    pub(crate) fn connect(
        &mut self,
        token: Token,
        now: Instant,
        registry: &Registry,
    ) -> Result<Conn, Failure> {
        let mut conn = Conn {
            token,
            stage: Stage::Gone,
            deadline: Some(now + CONNECT_TIMEOUT),
            addr: String::new(),
            local: false,
        };
        let stage = match &self.info.target {
            Target::Unix { dir, port } => {
                let path = format!("{dir}/.s.PGSQL.{port}");
                let stream =
                    UnixStream::connect(&path).map_err(|e| Failure::new(format!("{path}: {e}")))?;
                conn.addr = path;
                conn.local = true;
                Stage::Connecting(Io::Unix(stream))
            }
            Target::Tcp { addr: Some(ip), .. } => self.connect_tcp(*ip, &mut conn)?,
            Target::Tcp { host, .. } => {
                self.resolver.reload_if_changed();
                match self.resolver.start(host, now) {
                    Start::Done(result) => {
                        let ip = result.map_err(|e| self.not_resolved(e))?;
                        self.connect_tcp(ip, &mut conn)?
                    }
                    Start::Pending(mut lookup) => {
                        lookup
                            .register(registry, conn.token)
                            .map_err(|e| Failure::new(format!("cannot watch a DNS socket: {e}")))?;
                        conn.stage = Stage::Resolving(lookup);
                        return Ok(conn);
                    }
                }
            }
        };
        watch(&mut conn, stage, registry)?;
        Ok(conn)
    }

    fn not_resolved(&self, e: DnsFailure) -> Failure {
        Failure::new(format!(
            "database host '{}' did not resolve: {e}",
            self.tls_host().escape_debug()
        ))
    }

    /// A non-blocking TCP connect to `ip`; an immediate error (refused, unreachable) is this
    /// attempt's outcome.
    fn connect_tcp(&self, ip: IpAddr, conn: &mut Conn) -> Result<Stage, Failure> {
        let addr = SocketAddr::new(ip, self.info.port());
        let stream = TcpStream::connect(addr).map_err(|e| Failure::new(format!("{addr}: {e}")))?;
        // Small messages, one round trip each way: no Nagle delay.
        let _ = stream.set_nodelay(true);
        conn.addr = addr.to_string();
        conn.local = ip.is_loopback();
        Ok(Stage::Connecting(Io::Tcp(stream)))
    }

    /// The name lookup ended: connect to its address, on the same token and deadline.
    fn resolved(
        &self,
        result: Result<IpAddr, DnsFailure>,
        conn: &mut Conn,
        registry: &Registry,
    ) -> Result<(), Failure> {
        if let Stage::Resolving(lookup) = &mut conn.stage {
            lookup.deregister(registry);
        }
        let ip = result.map_err(|e| self.not_resolved(e))?;
        let stage = self.connect_tcp(ip, conn)?;
        watch(conn, stage, registry)
    }

    /// The name server's retry time passed: `Some` once the lookup ended (and the connect
    /// started, or failed).
    pub(crate) fn on_lookup_timeout(
        &mut self,
        conn: &mut Conn,
        now: Instant,
        registry: &Registry,
    ) -> Option<Result<(), Failure>> {
        let Stage::Resolving(lookup) = &mut conn.stage else {
            return None;
        };
        let result = lookup.on_timeout(&mut self.resolver, registry, now)?;
        Some(self.resolved(result, conn, registry))
    }

    /// Moves the connection as far as it goes without waiting: through the name lookup, the
    /// connect and `SSLRequest`, then bytes between the socket, TLS and the session until the
    /// socket would block (`Pending`) or the session has news (`Ready`, `Done`).
    pub(crate) fn pump(
        &mut self,
        conn: &mut Conn,
        now: Instant,
        registry: &Registry,
    ) -> Result<Progress, Failure> {
        loop {
            match &mut conn.stage {
                Stage::Gone => return Ok(Progress::Pending),
                Stage::Resolving(lookup) => {
                    match lookup.on_ready(&mut self.resolver, registry, now) {
                        None => return Ok(Progress::Pending),
                        Some(result) => self.resolved(result, conn, registry)?,
                    }
                }
                Stage::Connecting(io) => {
                    if let Some(e) = io.take_error().ok().flatten() {
                        return Err(Failure::new(format!("{}: {e}", conn.addr)));
                    }
                    match io.connected() {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::NotConnected => {
                            return Ok(Progress::Pending)
                        }
                        Err(e) => return Err(Failure::new(format!("{}: {e}", conn.addr))),
                    }
                    if self.wants_tls() {
                        let mut request = bytes::BytesMut::with_capacity(8);
                        frontend::ssl_request(&mut request);
                        // 8 bytes into a fresh socket's empty buffer: written whole or not at all.
                        match io.write(&request) {
                            Ok(n) if n == request.len() => {}
                            Ok(_) => return Err(Failure::new("short write of SSLRequest".into())),
                            Err(e) => return Err(Failure::lost(format!("{}: {e}", conn.addr))),
                        }
                        conn.stage = match std::mem::replace(&mut conn.stage, Stage::Gone) {
                            Stage::Connecting(io) => Stage::SslRequest(io),
                            other => other,
                        };
                    } else {
                        let session = self.session(conn.local);
                        conn.stage = match std::mem::replace(&mut conn.stage, Stage::Gone) {
                            Stage::Connecting(io) => Stage::Open {
                                io,
                                tls: None,
                                session,
                            },
                            other => other,
                        };
                    }
                }
                Stage::SslRequest(io) => {
                    let mut answer = [0u8; 1];
                    match io.read(&mut answer) {
                        Ok(1) => {}
                        Ok(_) => {
                            return Err(Failure::lost(format!(
                                "{}: the server closed the connection after SSLRequest",
                                conn.addr
                            )))
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            return Ok(Progress::Pending)
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(Failure::lost(format!("{}: {e}", conn.addr))),
                    }
                    let (tls, session) = match answer[0] {
                        // Over TLS a clear-text password is as safe as the channel.
                        b'S' => (self.tls_session()?, self.session(true)),
                        b'N' if self.info.tls.mode.requires_tls() => {
                            return Err(Failure::new(format!(
                                "server does not support TLS (sslmode={} requires TLS: turn on \
                                 ssl in the server's postgresql.conf, or use sslmode=prefer)",
                                self.info.tls.mode
                            )))
                        }
                        b'N' => (None, self.session(conn.local)),
                        other => {
                            return Err(Failure::new(format!(
                                "unexpected answer {:?} to SSLRequest: is this a PostgreSQL \
                                 server?",
                                char::from(other)
                            )))
                        }
                    };
                    conn.stage = match std::mem::replace(&mut conn.stage, Stage::Gone) {
                        Stage::SslRequest(io) => Stage::Open { io, tls, session },
                        other => other,
                    };
                }
                Stage::Open { io, tls, session } => {
                    return self.pump_open(io, tls, session, &conn.addr)
                }
            }
        }
    }

    /// Moves bytes between the socket, TLS and the session until the socket would block or the
    /// session has news. Reads are drained (the poll is edge-triggered).
    fn pump_open(
        &self,
        io: &mut Io,
        tls: &mut Tls,
        session: &mut Session,
        addr: &str,
    ) -> Result<Progress, Failure> {
        let lost = |e: io::Error| Failure::lost(format!("{addr}: {e}"));
        let closed = || Failure::lost(format!("{addr}: the server closed the connection"));
        let wire = |e: WireError| {
            let lost = e.is_connection_lost();
            Failure {
                lost,
                message: e.to_string(),
            }
        };
        let mut buf = [0u8; READ_CHUNK];
        loop {
            let mut moved = false;
            // Write what the session has.
            #[cfg(feature = "tls")]
            if let Some(tls) = tls.as_mut() {
                if !session.output().is_empty() {
                    let n = tls.writer().write(session.output()).map_err(lost)?;
                    session.sent(n);
                    moved |= n > 0;
                }
                while tls.wants_write() {
                    match tls.write_tls(io) {
                        Ok(0) => break,
                        Ok(_) => moved = true,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(lost(e)),
                    }
                }
            }
            if tls.is_none() {
                while !session.output().is_empty() {
                    match io.write(session.output()) {
                        Ok(0) => return Err(closed()),
                        Ok(n) => {
                            session.sent(n);
                            moved = true;
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(lost(e)),
                    }
                }
            }
            // Read what the server sent.
            #[cfg(feature = "tls")]
            if let Some(tls) = tls.as_mut() {
                match tls.read_tls(io) {
                    Ok(0) => return Err(closed()),
                    Ok(_) => {
                        moved = true;
                        if let Err(e) = tls.process_new_packets() {
                            let message = match &self.tls_client {
                                Some(client) => client.explain(&e, self.tls_host()),
                                None => e.to_string(),
                            };
                            return Err(Failure::new(message));
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => moved = true,
                    Err(e) => return Err(lost(e)),
                }
                loop {
                    match tls.reader().read(&mut buf) {
                        Ok(0) => return Err(closed()),
                        Ok(n) => match session.receive(&buf[..n]).map_err(wire)? {
                            Progress::Pending => {}
                            news => return Ok(news),
                        },
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => return Err(lost(e)),
                    }
                }
            }
            if tls.is_none() {
                match io.read(&mut buf) {
                    Ok(0) => return Err(closed()),
                    Ok(n) => {
                        moved = true;
                        match session.receive(&buf[..n]).map_err(wire)? {
                            Progress::Pending => {}
                            news => return Ok(news),
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => moved = true,
                    Err(e) => return Err(lost(e)),
                }
            }
            if !moved {
                return Ok(Progress::Pending);
            }
        }
    }

    fn wants_tls(&self) -> bool {
        #[cfg(feature = "tls")]
        {
            self.tls_client.is_some()
        }
        #[cfg(not(feature = "tls"))]
        {
            false
        }
    }

    /// The name certificates are checked for: the URL's host, not the address.
    pub(crate) fn tls_host(&self) -> &str {
        match &self.info.target {
            Target::Tcp { host, .. } => host,
            Target::Unix { .. } => "",
        }
    }

    #[cfg(feature = "tls")]
    fn tls_session(&self) -> Result<Tls, Failure> {
        match &self.tls_client {
            Some(client) => client
                .connection(self.tls_host())
                .map(|c| Some(Box::new(c)))
                .map_err(Failure::new),
            None => Ok(None),
        }
    }

    #[cfg(not(feature = "tls"))]
    fn tls_session(&self) -> Result<Tls, Failure> {
        Ok(None)
    }

    /// A protocol session with the password it may need.
    fn session(&mut self, cleartext_allowed: bool) -> Box<Session> {
        let password = self.password();
        Box::new(Session::new(
            &pg_wire::Startup {
                user: &self.info.user,
                database: &self.info.dbname,
                application_name: &self.info.application_name,
            },
            password.as_deref().map(str::as_bytes),
            cleartext_allowed,
        ))
    }

    /// The URL's or PGPASSWORD's password, else the password file's line for this connection.
    fn password(&mut self) -> Option<String> {
        if let Some(pw) = &self.info.password {
            return Some(pw.clone());
        }
        let path = self.passfile.clone()?;
        let host = match &self.info.target {
            Target::Tcp { host, .. } => host.clone(),
            Target::Unix { .. } => "localhost".to_owned(),
        };
        match read_passfile(&path) {
            Ok(text) => pg_conninfo::pgpass_lookup(
                &text,
                &host,
                self.info.port(),
                &self.info.dbname,
                &self.info.user,
            ),
            Err(None) => None,
            Err(Some(warning)) => {
                if self.passfile_warning.as_ref() != Some(&warning) {
                    warn!("{warning}");
                    self.passfile_warning = Some(warning);
                }
                None
            }
        }
    }

    /// The message without the password, if the password is long enough to find.
    pub(crate) fn scrub(&self, message: String) -> String {
        match &self.info.password {
            Some(pw) if pw.len() >= MIN_SCRUBBED_PASSWORD_LEN && message.contains(pw.as_str()) => {
                message.replace(pw.as_str(), "********")
            }
            _ => message,
        }
    }
}

/// Registers a new socket (once, for both directions) and makes it the connection's stage.
fn watch(conn: &mut Conn, mut stage: Stage, registry: &Registry) -> Result<(), Failure> {
    if let Stage::Connecting(io) = &mut stage {
        registry
            .register(
                io.source(),
                conn.token,
                Interest::READABLE | Interest::WRITABLE,
            )
            .map_err(|e| Failure::new(format!("cannot watch the database socket: {e}")))?;
    }
    conn.stage = stage;
    Ok(())
}

/// Reads the password file if it is safe to use. `Err(None)`: there is none (not an error);
/// `Err(Some(warning))`: it is unusable, and why.
fn read_passfile(path: &std::path::Path) -> Result<String, Option<String>> {
    let shown = path.display();
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(None),
        Err(e) => return Err(Some(format!("password file {shown}: {e}"))),
    };
    if !meta.is_file() {
        return Err(Some(format!(
            "password file {shown} is not a plain file; ignored"
        )));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(Some(format!(
            "password file {shown} has group or world access; permissions should be u=rw \
             (0600) or less; ignored"
        )));
    }
    let mut text = String::new();
    fs::File::open(path)
        .and_then(|f| f.take(MAX_PGPASS_BYTES + 1).read_to_string(&mut text))
        .map_err(|e| Some(format!("password file {shown}: {e}")))?;
    if text.len() as u64 > MAX_PGPASS_BYTES {
        return Err(Some(format!(
            "password file {shown} is over {MAX_PGPASS_BYTES} bytes (MAX_PGPASS_BYTES); ignored"
        )));
    }
    Ok(text)
}
