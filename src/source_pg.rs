//! The PostgreSQL route source (feature `postgres`): reads this VPS's active Envoy L4 routes
//! from the fleet's database once per probe cycle, as a state machine on the agent's one
//! `mio::Poll`. Nothing here ever waits: the event loop calls [`PgSource::begin`] when a cycle
//! is due, [`PgSource::on_event`] for this source's tokens and [`PgSource::on_deadline`]
//! when [`PgSource::next_deadline`] passes; each returns the [`Fetch`] once it is known.
//!
//! A connection goes: the host's name through the agent's own resolver (`dns::Lookup`, same
//! loop) → a non-blocking connect (TCP or a unix socket) → `SSLRequest` and a rustls
//! handshake when the `sslmode` asks (feature `tls`; `rustls::ClientConnection` is sans-IO,
//! its bytes pumped here) → startup and authentication → idle, kept for the next cycle. The
//! protocol itself is the pure session in `pg_wire`; conninfo parsing is `pg_conninfo`.
//!
//! Bounds: DNS, connect, TLS and authentication together by [`CONNECT_TIMEOUT`]; the cycle's
//! one round trip by [`QUERY_TIMEOUT`] on our side and [`STATEMENT_TIMEOUT`] on the server's.
//! A reused connection found dead (the server restarted since the last cycle) is replaced at
//! once, within the same fetch. On any failure the connection is dropped and the next attempt
//! waits a random delay between 0 and a cap that doubles from [`BACKOFF_MIN`] to
//! [`BACKOFF_MAX`] (full jitter, counted from the end of the failed attempt), so that a fleet
//! does not reconnect in step after a database restart; the caller keeps its last routes.
//!
//! The password comes from the URL, `PGPASSWORD`, or a libpq password file (`passfile=`,
//! `PGPASSFILE`, else `~/.pgpass`; ignored with a warning unless it is a regular file without
//! group or world access, as libpq). It is sent only as the server's method needs it: SCRAM
//! or md5 anywhere, clear text only over TLS or to a local address. It never appears in
//! errors, logs or [`PgSource::describe`].
//!
//! Limits: one database host; at most [`MAX_ROUTES`] routes; fields longer than
//! [`MAX_FIELD_LEN`] are cut by the server before they are sent, then rejected; server
//! messages up to `pg_wire::MAX_MESSAGE_BYTES`.

use std::fs;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::event::Source;
use mio::net::{TcpStream, UnixStream};
use mio::{Interest, Registry, Token};
use postgres_protocol::message::frontend;

use crate::dns::{DnsFailure, Lookup, Resolver, ResolverConfig, Rng, Start};
use crate::pg_conninfo::{self, ConnInfo, Target, MAX_PGPASS_BYTES};
#[cfg(feature = "tls")]
use crate::pg_tls::{SslMode, TlsClient};
use crate::pg_wire::{self, Phase, Progress, Session, WireError};
use crate::route::{ClusterType, Route, MAX_FIELD_LEN, MAX_ROUTES};

pub use crate::pg_conninfo::{APPLICATION_NAME, DEFAULT_PORT};

/// Bound on resolving, connecting, TLS and authentication together. A database a LAN or a
/// region away answers in milliseconds; 2 s is generous, and the cycle waits at most this
/// long (plus [`QUERY_TIMEOUT`]) before it probes the routes it already knows.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Server-side bound on each statement (`SET LOCAL statement_timeout`, which also covers lock
/// waits). The routes query reads a few thousand rows by index in milliseconds; 1 s means
/// "the database is in trouble", and then we would rather keep the last routes.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(1);
/// Our bound on the cycle's transaction (one pipelined round trip). Longer than
/// [`STATEMENT_TIMEOUT`] so that a slow query ends with the server's clear error, not ours;
/// it is what bounds a server or pooler that accepts bytes and never answers.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// The first backoff cap after a failure: a restart of the database takes about a second.
pub const BACKOFF_MIN: Duration = Duration::from_secs(1);
/// The largest backoff cap: during a long outage one attempt a minute (at most) costs
/// nothing, and recovery is noticed within a minute.
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// Most `vps` ids read for one hostname: enough to name the duplicates in the warning.
pub const MAX_VPS_IDS: usize = 10;
/// Bytes read from the socket per read call.
const READ_CHUNK: usize = 16 * 1024;
/// Passwords shorter than this are not scrubbed from messages (replacing every "ab" would
/// garble the text); they are never put into messages in the first place anyway.
const MIN_SCRUBBED_PASSWORD_LEN: usize = 4;

const _: () = assert!(MAX_VPS_IDS <= pg_wire::MAX_VPS_ROWS);

/// The registration query: our `vps` rows. Exactly one is expected.
pub const VPS_SQL: &str = "SELECT id::text FROM vps \
     WHERE hostname = $1 AND (status IS NULL OR status NOT IN ('retired', 'deleted')) \
     ORDER BY id LIMIT $2";

/// The routes query: active routes with a backend, of active nodes, of the VPS found by
/// [`VPS_SQL`] (same predicate, same snapshot: the transaction is REPEATABLE READ). Its rows are
/// used only when that found exactly one VPS. Text fields are cut to one character over
/// [`MAX_FIELD_LEN`] so a huge value costs nothing and still fails validation. `LIMIT $2` is
/// [`MAX_ROUTES`] + 1, to notice the cap. The last three columns say how Envoy connects
/// (`envoy_nodes.admin_port`, `envoy_routes.cluster_type`, `connect_timeout_secs`; NULL when
/// not set). Indexes: `vps(hostname)`, the UNIQUE
/// `envoy_nodes(vps_id, node_id)` and `envoy_routes(envoy_node_id, listen_port)`.
pub const ROUTES_SQL: &str = "SELECT left(n.node_id, 254), left(r.name, 254), \
     r.listen_port::integer, left(r.backend_host, 254), r.backend_port::integer, \
     n.admin_port::integer, left(r.cluster_type, 32), r.connect_timeout_secs::integer \
     FROM vps v \
     JOIN envoy_nodes n ON n.vps_id = v.id \
     JOIN envoy_routes r ON r.envoy_node_id = n.id \
     WHERE v.hostname = $1 AND (v.status IS NULL OR v.status NOT IN ('retired', 'deleted')) \
       AND n.status = 'active' AND r.status = 'active' \
       AND r.backend_host IS NOT NULL AND r.backend_port IS NOT NULL \
     ORDER BY n.node_id, r.listen_port \
     LIMIT $2";

// `left(.., 254)` above is MAX_FIELD_LEN + 1; keep them in step.
const _: () = assert!(MAX_FIELD_LEN + 1 == 254);

/// What a fetch found.
#[derive(Debug, PartialEq, Eq)]
pub enum Fetch {
    /// Registered; these are the routes to probe (possibly none).
    Routes(Vec<Route>),
    /// No `vps` row for this hostname: probe nothing.
    NotRegistered,
    /// More than one `vps` row for this hostname: their ids (at most [`MAX_VPS_IDS`]).
    Ambiguous(Vec<String>),
    /// The database could not be read (the message has no password): keep the last routes.
    Failed(String),
    /// A reconnect is not due yet: keep the last routes.
    Backoff,
}

/// The socket: TCP or a unix socket, both non-blocking.
enum Io {
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
type Tls = Option<Box<rustls::ClientConnection>>;
#[cfg(not(feature = "tls"))]
type Tls = Option<std::convert::Infallible>;

/// Where a connection is.
enum Stage {
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
    /// Between two stages (never seen outside `pump_conn`).
    Gone,
}

impl Stage {
    /// What the stage is doing, for timeout messages.
    fn doing(&self) -> &'static str {
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
struct Conn {
    token: Token,
    stage: Stage,
    /// When the current phase must be done (connect, or the cycle's transaction).
    deadline: Option<Instant>,
    /// The address connected to, for messages.
    addr: String,
    /// Clear-text passwords may be sent: TLS, a unix socket or a loopback address.
    local: bool,
}

/// A fetch in progress.
struct InProgress {
    /// When it started, on the clock that measures its duration. (Decisions use the
    /// caller's `now`; a fetch may also end within the call that starts it, on one `now`.)
    started: Instant,
    /// The connection was open before this fetch (a failure may just mean it went stale).
    reused: bool,
}

/// Why a fetch failed.
struct Failure {
    /// The connection itself was found dead (closed, reset, server shutting down): worth one
    /// immediate retry when it was a reused connection.
    lost: bool,
    message: String,
}

impl Failure {
    fn new(message: String) -> Failure {
        Failure {
            lost: false,
            message,
        }
    }
    fn lost(message: String) -> Failure {
        Failure {
            lost: true,
            message,
        }
    }
}

/// What the cycle's transaction read.
struct ReadRows {
    vps_ids: Vec<String>,
    routes: Vec<pg_wire::Row>,
}

/// The PostgreSQL route source. See the module docs.
pub struct PgSource {
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
    hostname: String,
    described: String,
    begin_sql: String,
    conn: Option<Conn>,
    fetch: Option<InProgress>,
    /// The backoff cap after the last failure; None after a success.
    backoff: Option<Duration>,
    /// No reconnect before this instant.
    next_attempt: Option<Instant>,
    rng: Rng,
    last_duration: Option<Duration>,
    worst_duration: Option<Duration>,
    /// The skipped-row warnings of the last fetch, to log each problem once, not every cycle.
    last_skipped: Vec<String>,
}

impl PgSource {
    /// Parses a URL (`postgres://user@host:port/db`) or key=value string, as libpq, and loads
    /// the TLS roots the `sslmode` needs. `pgpassword` (the caller reads `PGPASSWORD`) is used
    /// when the string has no password. Errors never contain the password.
    pub fn new(
        database_url: &str,
        hostname: &str,
        pgpassword: Option<&str>,
    ) -> Result<PgSource, String> {
        let info = pg_conninfo::parse(database_url, pgpassword)
            .map_err(|e| format!("database URL: {e}"))?;
        if hostname.is_empty() {
            return Err("the hostname to register as is empty".into());
        }
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
        let begin_sql = format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; \
             SET LOCAL statement_timeout = {}; \
             SET LOCAL idle_in_transaction_session_timeout = {}",
            STATEMENT_TIMEOUT.as_millis(),
            QUERY_TIMEOUT.as_millis()
        );
        Ok(PgSource {
            described: info.describe(),
            passfile: info.passfile.as_ref().map(PathBuf::from),
            info,
            resolver: Resolver::new(ResolverConfig::system()),
            #[cfg(feature = "tls")]
            tls_client,
            passfile_warning: None,
            hostname: hostname.to_owned(),
            begin_sql,
            conn: None,
            fetch: None,
            backoff: None,
            next_attempt: None,
            rng: Rng::from_urandom(),
            last_duration: None,
            worst_duration: None,
            last_skipped: Vec::new(),
        })
    }

    /// `user@host:port/db`, safe to log.
    pub fn describe(&self) -> String {
        self.described.clone()
    }

    /// Uses these name servers for the database host instead of /etc/resolv.conf's (the
    /// agent's `--dns-server`).
    pub fn set_resolver(&mut self, config: ResolverConfig) {
        self.resolver = Resolver::new(config);
    }

    /// The password file (`PGPASSFILE`, else `~/.pgpass`) to read when no password is given;
    /// a `passfile=` in the URL wins over it.
    pub fn set_passfile(&mut self, path: Option<PathBuf>) {
        if self.info.passfile.is_none() {
            self.passfile = path;
        }
    }

    /// The host name this agent registers as.
    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    /// How long the last fetch that talked to the database took.
    pub fn last_fetch_duration(&self) -> Option<Duration> {
        self.last_duration
    }

    /// The longest fetch since start.
    pub fn worst_fetch_duration(&self) -> Option<Duration> {
        self.worst_duration
    }

    /// When the next reconnect is allowed, after a failure.
    pub fn next_attempt(&self) -> Option<Instant> {
        self.next_attempt
    }

    /// The backoff cap in force (None after a success).
    pub fn backoff_cap(&self) -> Option<Duration> {
        self.backoff
    }

    /// Whether the connection is open and ready for a cycle.
    fn idle(&self) -> bool {
        self.conn.as_ref().is_some_and(
            |c| matches!(&c.stage, Stage::Open { session, .. } if session.phase() == Phase::Idle),
        )
    }

    /// Whether `token` is this source's (its socket or its name lookup).
    pub fn owns(&self, token: Token) -> bool {
        self.conn.as_ref().is_some_and(|c| c.token == token)
    }

    /// When [`PgSource::on_deadline`] must be called at the latest.
    pub fn next_deadline(&self) -> Option<Instant> {
        // An idle connection between fetches waits for nothing.
        self.fetch.as_ref()?;
        let conn = self.conn.as_ref()?;
        match &conn.stage {
            Stage::Resolving(lookup) => Some(
                conn.deadline
                    .map_or(lookup.next_deadline(), |d| d.min(lookup.next_deadline())),
            ),
            _ => conn.deadline,
        }
    }

    /// Starts the cycle's fetch. `Some` when the answer is known at once (a reconnect not due
    /// yet, a failure that needs no waiting); `None` when it is under way: the result comes
    /// from [`PgSource::on_event`] or [`PgSource::on_deadline`]. While a fetch is under way
    /// another call does nothing and returns `None`.
    pub fn begin(
        &mut self,
        now: Instant,
        registry: &Registry,
        tokens: &mut dyn FnMut() -> Token,
    ) -> Option<Fetch> {
        if self.fetch.is_some() {
            return None;
        }
        if self.next_attempt.is_some_and(|due| now < due) {
            return Some(Fetch::Backoff);
        }
        let reused = self.idle();
        if !reused {
            // A half-open connection from before (cannot happen between fetches, but be sure).
            self.drop_conn(registry);
        }
        self.fetch = Some(InProgress {
            started: Instant::now(),
            reused,
        });
        let step = if reused {
            self.start_cycle(now)
                .and_then(|()| self.pump(now, registry))
        } else {
            self.connect(now, registry, tokens)
        };
        self.settle(step, now, registry, tokens)
    }

    /// An event for one of this source's tokens.
    pub fn on_event(
        &mut self,
        token: Token,
        now: Instant,
        registry: &Registry,
        tokens: &mut dyn FnMut() -> Token,
    ) -> Option<Fetch> {
        if !self.owns(token) {
            return None;
        }
        let step = self.pump(now, registry);
        if self.fetch.is_none() {
            // An idle connection spoke: the server closed it or is shutting down.
            if let Err(f) = step {
                debug!(
                    "database {}: idle connection ended: {}",
                    self.described, f.message
                );
                self.drop_conn(registry);
            }
            return None;
        }
        self.settle(step, now, registry, tokens)
    }

    /// The deadline of the current phase, or the name server's retry time, passed.
    pub fn on_deadline(
        &mut self,
        now: Instant,
        registry: &Registry,
        tokens: &mut dyn FnMut() -> Token,
    ) -> Option<Fetch> {
        self.fetch.as_ref()?;
        let conn = self.conn.as_mut()?;
        let expired = conn.deadline.is_some_and(|d| now >= d);
        let step = if expired {
            let (doing, bound, limit) = match &conn.stage {
                Stage::Open { session, .. } if session.phase() == Phase::Reading => (
                    conn.stage.doing().to_owned(),
                    "QUERY_TIMEOUT",
                    QUERY_TIMEOUT,
                ),
                Stage::Resolving(_) => (
                    format!("resolving '{}'", self.tls_host().escape_debug()),
                    "CONNECT_TIMEOUT",
                    CONNECT_TIMEOUT,
                ),
                stage => (
                    format!("{} {}", stage.doing(), conn.addr),
                    "CONNECT_TIMEOUT",
                    CONNECT_TIMEOUT,
                ),
            };
            Err(Failure::new(format!(
                "no answer within {} ms while {doing} ({bound})",
                limit.as_millis()
            )))
        } else if let Stage::Resolving(lookup) = &mut conn.stage {
            let result = lookup.on_timeout(&mut self.resolver, registry, now)?;
            let mut conn = self.conn.take()?;
            let resolved = self.resolved(result, &mut conn, registry);
            self.conn = Some(conn);
            resolved.map(|()| None)
        } else {
            return None;
        };
        self.settle(step, now, registry, tokens)
    }

    /// Turns a step's outcome into the fetch's result, retrying a stale reused connection once.
    fn settle(
        &mut self,
        step: Result<Option<ReadRows>, Failure>,
        now: Instant,
        registry: &Registry,
        tokens: &mut dyn FnMut() -> Token,
    ) -> Option<Fetch> {
        let failure = match step {
            Ok(None) => return None,
            Ok(Some(read)) => return Some(self.finish(Ok(read), now, registry)),
            Err(f) => f,
        };
        let retry = failure.lost && self.fetch.as_ref().is_some_and(|f| f.reused);
        if !retry {
            return Some(self.finish(Err(failure), now, registry));
        }
        debug!(
            "database {}: reused connection failed ({}); retrying on a new one",
            self.described, failure.message
        );
        self.drop_conn(registry);
        if let Some(f) = &mut self.fetch {
            f.reused = false;
        }
        let step = self.connect(now, registry, tokens);
        self.settle(step, now, registry, tokens)
    }

    /// Ends the fetch: durations, backoff, and the result.
    fn finish(
        &mut self,
        result: Result<ReadRows, Failure>,
        now: Instant,
        registry: &Registry,
    ) -> Fetch {
        let took = self
            .fetch
            .take()
            .map_or(Duration::ZERO, |f| f.started.elapsed());
        self.last_duration = Some(took);
        self.worst_duration = Some(self.worst_duration.map_or(took, |w| w.max(took)));
        match result {
            Ok(read) => {
                if self.backoff.take().is_some() {
                    info!("database {}: reachable again", self.described);
                }
                self.next_attempt = None;
                self.classify(read)
            }
            Err(failure) => {
                // A cycle the server refused (a statement timeout, a permission error) leaves
                // the connection idle and sound: keep it, and save a reconnect (and its SCRAM
                // work) for the next attempt.
                if self.idle() {
                    if let Some(conn) = &mut self.conn {
                        conn.deadline = None;
                    }
                } else {
                    self.drop_conn(registry);
                }
                let cap = self
                    .backoff
                    .map_or(BACKOFF_MIN, |d| d.saturating_mul(2).min(BACKOFF_MAX));
                self.backoff = Some(cap);
                self.next_attempt = Some(now + jitter(&mut self.rng, cap));
                Fetch::Failed(self.scrub(failure.message))
            }
        }
    }

    fn classify(&mut self, read: ReadRows) -> Fetch {
        match read.vps_ids.len() {
            0 => Fetch::NotRegistered,
            1 => {
                let (routes, skipped) = routes_from_rows(read.routes);
                for problem in &skipped {
                    if self.last_skipped.contains(problem) {
                        debug!("{problem}");
                    } else {
                        warn!("{problem}");
                    }
                }
                self.last_skipped = skipped;
                Fetch::Routes(routes)
            }
            _ => Fetch::Ambiguous(read.vps_ids),
        }
    }

    /// Starts a new connection: the name first if it is not an address.
    fn connect(
        &mut self,
        now: Instant,
        registry: &Registry,
        tokens: &mut dyn FnMut() -> Token,
    ) -> Result<Option<ReadRows>, Failure> {
        self.drop_conn(registry);
        let mut conn = Conn {
            token: tokens(),
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
                        self.conn = Some(conn);
                        return Ok(None);
                    }
                }
            }
        };
        watch(&mut conn, stage, registry)?;
        self.conn = Some(conn);
        Ok(None)
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

    /// Writes the cycle's pipeline on the idle session and starts its deadline.
    fn start_cycle(&mut self, now: Instant) -> Result<(), Failure> {
        let Some(mut conn) = self.conn.take() else {
            return Err(Failure::new("no connection".into()));
        };
        let begun = self.begin_pipeline(&mut conn, now);
        self.conn = Some(conn);
        begun
    }

    fn begin_pipeline(&self, conn: &mut Conn, now: Instant) -> Result<(), Failure> {
        let Stage::Open { session, .. } = &mut conn.stage else {
            return Err(Failure::new("the connection is not open".into()));
        };
        session
            .start_cycle(&pg_wire::Cycle {
                begin_sql: &self.begin_sql,
                vps_sql: VPS_SQL,
                vps_params: (&self.hostname, MAX_VPS_IDS as i64),
                routes_sql: ROUTES_SQL,
                routes_params: (&self.hostname, MAX_ROUTES as i64 + 1),
            })
            .map_err(|e| Failure::new(e.to_string()))?;
        conn.deadline = Some(now + QUERY_TIMEOUT);
        Ok(())
    }

    /// Moves the connection as far as it goes without waiting. `Some` is the cycle's read.
    fn pump(&mut self, now: Instant, registry: &Registry) -> Result<Option<ReadRows>, Failure> {
        let Some(mut conn) = self.conn.take() else {
            return Ok(None);
        };
        let result = self.pump_conn(&mut conn, now, registry);
        // Put back even on failure, so that `drop_conn` deregisters the socket.
        self.conn = Some(conn);
        match result? {
            Some(read) => read_rows(read).map(Some),
            None => Ok(None),
        }
    }

    fn pump_conn(
        &mut self,
        conn: &mut Conn,
        now: Instant,
        registry: &Registry,
    ) -> Result<Option<pg_wire::Read>, Failure> {
        loop {
            match &mut conn.stage {
                Stage::Gone => return Ok(None),
                Stage::Resolving(lookup) => {
                    match lookup.on_ready(&mut self.resolver, registry, now) {
                        None => return Ok(None),
                        Some(result) => self.resolved(result, conn, registry)?,
                    }
                }
                Stage::Connecting(io) => {
                    if let Some(e) = io.take_error().ok().flatten() {
                        return Err(Failure::new(format!("{}: {e}", conn.addr)));
                    }
                    match io.connected() {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::NotConnected => return Ok(None),
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
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
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
                    match self.pump_open(io, tls, session, &conn.addr)? {
                        Progress::Pending => return Ok(None),
                        Progress::Ready if self.fetch.is_none() => return Ok(None),
                        Progress::Ready => self.begin_pipeline(conn, now)?,
                        Progress::Done(read) => {
                            conn.deadline = None;
                            return Ok(Some(read));
                        }
                    }
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
    fn tls_host(&self) -> &str {
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

    fn drop_conn(&mut self, registry: &Registry) {
        if let Some(mut conn) = self.conn.take() {
            match &mut conn.stage {
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

    fn scrub(&self, message: String) -> String {
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

/// A random delay in `[0, cap]`: full jitter.
fn jitter(rng: &mut Rng, cap: Duration) -> Duration {
    let millis = cap.as_millis() as u64;
    Duration::from_millis(rng.next_u64() % (millis + 1))
}

/// What the session read → text rows, checked.
fn read_rows(read: pg_wire::Read) -> Result<ReadRows, Failure> {
    let mut vps_ids = Vec::with_capacity(read.vps_ids.len());
    for id in read.vps_ids {
        vps_ids.push(id.ok_or_else(|| Failure::new("a vps id is NULL".into()))?);
    }
    Ok(ReadRows {
        vps_ids,
        routes: read.routes,
    })
}

/// Rows of [`ROUTES_SQL`] (text) → routes, and one message per skipped row (or for the cap).
fn routes_from_rows(rows: Vec<pg_wire::Row>) -> (Vec<Route>, Vec<String>) {
    let raw = rows.into_iter().map(|row| {
        let mut cols = row.into_iter();
        let mut text = |what: &str| -> Result<String, String> {
            cols.next()
                .flatten()
                .ok_or_else(|| format!("{what} is NULL or missing"))
        };
        let node = text("node_id")?;
        let name = text("name")?;
        let listen_port = text("listen_port")?;
        let host = text("backend_host")?;
        let port = text("backend_port")?;
        let admin_port = cols.next().flatten();
        let cluster_type = cols.next().flatten();
        let connect_timeout = cols.next().flatten();
        let int = |v: &str, what: &str| {
            v.parse::<i32>()
                .map_err(|_| format!("{what} '{}' is not an integer", v.escape_debug()))
        };
        let opt_int = |v: Option<String>, what: &str| v.map(|v| int(&v, what)).transpose();
        Ok(RawRoute {
            node,
            name,
            listen_port: int(&listen_port, "listen_port")?,
            host,
            port: int(&port, "backend_port")?,
            admin_port: opt_int(admin_port, "admin_port")?,
            cluster_type,
            connect_timeout_secs: opt_int(connect_timeout, "connect_timeout_secs")?,
        })
    });
    build_routes(raw)
}

/// One row of [`ROUTES_SQL`], as the database typed it.
#[derive(Debug, Clone)]
pub struct RawRoute {
    pub node: String,
    pub name: String,
    pub listen_port: i32,
    pub host: String,
    pub port: i32,
    /// How Envoy connects; `None` is SQL NULL.
    pub admin_port: Option<i32>,
    pub cluster_type: Option<String>,
    pub connect_timeout_secs: Option<i32>,
}

/// Validates rows into routes: a bad row is skipped with a message naming it; more than
/// [`MAX_ROUTES`] are cut with a message. Pure, for unit tests.
pub fn build_routes<I>(rows: I) -> (Vec<Route>, Vec<String>)
where
    I: IntoIterator<Item = Result<RawRoute, String>>,
{
    let mut routes = Vec::new();
    let mut skipped = Vec::new();
    for (i, raw) in rows.into_iter().enumerate() {
        if routes.len() == MAX_ROUTES {
            skipped.push(format!(
                "database: more than {MAX_ROUTES} active routes for this VPS; probing the first \
                 {MAX_ROUTES} by node and listen port (MAX_ROUTES)"
            ));
            break;
        }
        let raw = match raw {
            Ok(raw) => raw,
            Err(e) => {
                skipped.push(format!("database: route row {} skipped: {e}", i + 1));
                continue;
            }
        };
        let route = port_of(raw.listen_port, "listen port").and_then(|listen_port| {
            let port = port_of(raw.port, "backend port")?;
            Route::new(&raw.node, &raw.name, listen_port, &raw.host, port)
        });
        match route {
            Ok(route) => routes.push(with_envoy(route, &raw, &mut skipped)),
            Err(e) => skipped.push(format!(
                "database: route '{}' of node '{}' skipped: {e}",
                raw.name.escape_debug(),
                raw.node.escape_debug()
            )),
        }
    }
    (routes, skipped)
}

/// Adds how Envoy connects to a valid route. A bad value there does not lose the route: it is
/// probed as if the value were not set, with a message naming it.
fn with_envoy(route: Route, raw: &RawRoute, problems: &mut Vec<String>) -> Route {
    let mut problem = |what: String| {
        problems.push(format!(
            "database: route '{}' of node '{}': {what}; probing it as if not set",
            raw.name.escape_debug(),
            raw.node.escape_debug()
        ))
    };
    let admin_port = match raw.admin_port {
        None => None,
        Some(p) => match port_of(p, "admin_port") {
            Ok(p) => Some(p),
            Err(e) => {
                problem(e);
                None
            }
        },
    };
    let cluster_type = match raw.cluster_type.as_deref() {
        None | Some("") => ClusterType::Unspecified,
        Some(t) => ClusterType::parse(t).unwrap_or_else(|| {
            problem(format!(
                "cluster_type '{}' is not one of static, strict_dns, logical_dns",
                t.escape_debug()
            ));
            ClusterType::Unspecified
        }),
    };
    let connect_timeout = match raw.connect_timeout_secs {
        None => None,
        Some(secs) if secs > 0 => Some(Duration::from_secs(secs as u64)),
        Some(secs) => {
            problem(format!("connect_timeout_secs {secs} is not above 0"));
            None
        }
    };
    match route
        .clone()
        .with_envoy(admin_port, cluster_type, connect_timeout)
    {
        Ok(r) => r,
        Err(e) => {
            problem(e);
            route
        }
    }
}

fn port_of(v: i32, what: &str) -> Result<u16, String> {
    u16::try_from(v)
        .ok()
        .filter(|&p| p != 0)
        .ok_or_else(|| format!("{what} {v} is not 1-65535"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(node: &str, name: &str, listen_port: i32, host: &str, port: i32) -> RawRoute {
        RawRoute {
            node: node.into(),
            name: name.into(),
            listen_port,
            host: host.into(),
            port,
            admin_port: None,
            cluster_type: None,
            connect_timeout_secs: None,
        }
    }

    #[test]
    fn envoy_columns_fill_the_route_and_bad_ones_only_warn() {
        let envoy = |admin: Option<i32>, ct: Option<&str>, t: Option<i32>, host: &str| {
            let mut r = raw("n", "r", 10001, host, 443);
            r.admin_port = admin;
            r.cluster_type = ct.map(str::to_owned);
            r.connect_timeout_secs = t;
            Ok(r)
        };
        let (routes, problems) = build_routes(vec![
            envoy(Some(9901), Some("strict_dns"), Some(2), "hk01.example.com"),
            envoy(Some(70000), Some("eds"), Some(0), "hk02.example.com"),
            envoy(None, Some("static"), None, "hk03.example.com"),
            envoy(None, None, None, "10.0.0.1"),
        ]);
        assert_eq!(routes.len(), 4, "{problems:?}");
        assert_eq!(routes[0].admin_port, Some(9901));
        assert_eq!(routes[0].cluster_type, ClusterType::StrictDns);
        assert_eq!(routes[0].connect_timeout, Some(Duration::from_secs(2)));
        assert_eq!(routes[1].admin_port, None);
        assert_eq!(routes[1].cluster_type, ClusterType::Unspecified);
        assert_eq!(routes[1].connect_timeout, None);
        assert_eq!(routes[2].cluster_type, ClusterType::Unspecified);
        assert_eq!(routes[3].cluster_type, ClusterType::Unspecified);
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(problems[0].contains("admin_port 70000"));
        assert!(problems[1].contains("cluster_type 'eds'"));
        assert!(problems[2].contains("connect_timeout_secs 0"));
        assert!(problems[3].contains("static needs an IP"));
    }

    #[test]
    fn bad_rows_are_skipped_with_their_name() {
        let rows = vec![
            Ok(raw("n1", "good", 10001, "hk013.example.com", 443)),
            Ok(raw("n1", "big-listen", 70000, "h", 1)),
            Ok(raw("n1", "neg-port", 10003, "h", -1)),
            Ok(raw("n1", "zero-port", 10004, "h", 0)),
            Ok(raw("n1", "bad-host", 10005, "bad/host", 1)),
            Ok(raw("n1", "has space", 10006, "h", 1)),
            Err("backend_port is NULL or missing".into()),
            Ok(raw("n2", "v6", 10001, "2001:db8::1", 8443)),
        ];
        let (routes, skipped) = build_routes(rows);
        let names: Vec<_> = routes.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["good", "v6"]);
        assert_eq!(routes[1].backend, "[2001:db8::1]:8443");
        assert_eq!(skipped.len(), 6, "{skipped:?}");
        assert!(skipped[0].contains("'big-listen'") && skipped[0].contains("70000"));
        assert!(skipped[1].contains("'neg-port'") && skipped[1].contains("-1"));
        assert!(skipped[3].contains("'bad-host'"));
        assert!(skipped[5].contains("row 7"));
    }

    #[test]
    fn text_rows_become_routes_or_named_problems() {
        let row = |v: &[Option<&str>]| v.iter().map(|c| c.map(str::to_owned)).collect();
        let (routes, skipped) = routes_from_rows(vec![
            row(&[
                Some("n"),
                Some("r"),
                Some("10001"),
                Some("127.0.0.1"),
                Some("22"),
                Some("9901"),
                Some("static"),
                None,
            ]),
            row(&[Some("n"), Some("r2"), Some("x"), Some("h"), Some("22")]),
            row(&[Some("n"), Some("r3"), Some("10003"), None, Some("22")]),
            row(&[Some("n")]),
        ]);
        assert_eq!(routes.len(), 1);
        assert_eq!(routes[0].backend, "127.0.0.1:22");
        assert_eq!(routes[0].admin_port, Some(9901));
        assert_eq!(routes[0].cluster_type, ClusterType::Static);
        assert_eq!(skipped.len(), 3, "{skipped:?}");
        assert!(skipped[0].contains("listen_port 'x' is not an integer"));
        assert!(skipped[1].contains("backend_host is NULL"));
    }

    #[test]
    fn routes_are_capped() {
        let rows = (0..MAX_ROUTES as i32 + 1).map(|i| Ok(raw("n", "r", i % 60000 + 1, "h", 1)));
        let (routes, skipped) = build_routes(rows);
        assert_eq!(routes.len(), MAX_ROUTES);
        assert_eq!(skipped.len(), 1);
        assert!(skipped[0].contains("MAX_ROUTES"));
    }

    #[test]
    fn new_checks_the_url_and_never_shows_the_password() {
        let s = PgSource::new(
            "postgres://sigma_agent:s3cret-pw@10.0.0.5:6432/sigma",
            "vps-1",
            None,
        )
        .unwrap();
        assert_eq!(s.describe(), "sigma_agent@10.0.0.5:6432/sigma");
        let s = PgSource::new("postgres://a:hunter22@h/d", "v", None).unwrap();
        assert_eq!(s.scrub("oops hunter22!".into()), "oops ********!");
        for (url, want) in [
            ("postgres://h/d", "no user"),
            ("postgres://u:pa@ss@db/x", "%40"),
            (
                "postgres://a:pw@h/d?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
                if cfg!(feature = "tls") {
                    "sslrootcert /nonexistent/ca.pem: No such file"
                } else {
                    "sslmode=verify-full needs TLS"
                },
            ),
        ] {
            let e = match PgSource::new(url, "v", None) {
                Ok(_) => panic!("{url} accepted"),
                Err(e) => e,
            };
            assert!(e.starts_with("database URL"), "{url}: {e}");
            assert!(e.contains(want), "{url}: {e}");
            assert!(!e.contains("pw") && !e.contains("ss@"), "{url}: {e}");
        }
        assert!(PgSource::new("postgres://a@h/d", "", None).is_err());
    }

    #[test]
    fn jitter_stays_within_the_cap_and_spreads() {
        let mut rng = Rng::from_urandom();
        let draws: Vec<Duration> = (0..1000).map(|_| jitter(&mut rng, BACKOFF_MIN)).collect();
        assert!(draws.iter().all(|d| *d <= BACKOFF_MIN));
        let early = draws.iter().filter(|d| **d < BACKOFF_MIN / 2).count();
        assert!(
            (350..650).contains(&early),
            "{early} of 1000 in the first half"
        );
    }
}
