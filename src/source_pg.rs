//! The PostgreSQL route source: reads this VPS's active Envoy L4 routes from the fleet's
//! database once per probe cycle (behind the `postgres` cargo feature).
//!
//! Why it looks like this: the agent is one thread around one `mio` poll, so a database call
//! blocks everything else while it runs. Every call here is therefore bounded — connect, startup
//! and authentication together by [`CONNECT_TIMEOUT`], the whole per-cycle transaction by
//! [`QUERY_TIMEOUT`] on our side and [`STATEMENT_TIMEOUT`] on the server's — and the duration of
//! each fetch is measured ([`PgSource::last_fetch_duration`], [`PgSource::worst_fetch_duration`]).
//! We drive `tokio-postgres` on a current-thread runtime of our own (the same thing the sync
//! `postgres` crate does inside, minus its unbounded calls): it starts no thread, and since we
//! open the socket ourselves and hand it to `connect_raw`, there is no getaddrinfo thread either.
//!
//! One cycle is one round trip: `BEGIN READ ONLY` + `SET LOCAL` timeouts, the registration query,
//! the routes query and `COMMIT` are pipelined. Registration (the one `vps` row with our hostname
//! that is not retired/deleted) is re-read every cycle, so a VPS added or deleted while the agent
//! runs is noticed within one interval. The queries use the unnamed statement of the extended
//! protocol (`query_typed`) and `SET LOCAL` only, so nothing outlives the transaction: this works
//! through PgBouncer in transaction pooling mode (which cannot keep named prepared statements
//! before 1.21, nor session settings, and rejects unknown startup parameters such as `options`).
//!
//! On any error the connection is dropped and reconnects back off exponentially
//! ([`BACKOFF_MIN`] doubling to [`BACKOFF_MAX`]); the caller keeps its last routes meanwhile.
//! A reused connection that fails (e.g. the server restarted since the last cycle) is retried
//! once at once on a fresh connection, so a restart between cycles costs no cycle.
//!
//! TLS (feature `tls`): `sslmode` and `sslrootcert` as libpq, parsed and verified in
//! [`crate::pg_tls`]; the handshake runs inside the connect bound, and its failures are
//! outages like any other, named by the check that failed.
//!
//! Limits: one database host (no multi-host failover); a database host name is resolved by
//! the agent's own resolver within [`DNS_TIMEOUT`] ([`resolve_db_host`]); at most
//! [`MAX_ROUTES`] routes; fields longer
//! than [`MAX_FIELD_LEN`] are cut by the server before they are sent, then rejected.
//! The password never appears in errors, logs or [`PgSource::describe`].

use std::future::{poll_fn, Future};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::pin::pin;
use std::str::FromStr;
use std::task::Poll;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;
use tokio_postgres::config::{Host, SslMode as TpSslMode};
use tokio_postgres::tls::TlsConnect;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Config, NoTls, Row};

use crate::dns::{Resolver, ResolverConfig};
#[cfg(feature = "tls")]
use crate::pg_tls::TlsClient;
use crate::pg_tls::{split_tls_params, SslMode, TlsSettings};
use crate::route::{Route, MAX_FIELD_LEN, MAX_ROUTES};

/// Bound on TCP connect + startup + authentication, all addresses together. A database a
/// LAN or a region away answers in milliseconds; 2 s is generous and still short enough that
/// a dead database blocks the loop for at most this long per attempt.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Server-side bound on each statement (`SET LOCAL statement_timeout`, which also covers lock
/// waits). The routes query reads a few thousand rows by index in milliseconds; 1 s means
/// "the database is in trouble", and then we would rather keep the last routes.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(1);
/// Client-side bound on the whole per-cycle transaction (one pipelined round trip). Longer
/// than [`STATEMENT_TIMEOUT`] so that a slow query ends with the server's clear error, not
/// ours; it is what bounds a server or pooler that accepts bytes and never answers.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// First reconnect delay after a failure: a restart of the database takes about a second.
pub const BACKOFF_MIN: Duration = Duration::from_secs(1);
/// Largest reconnect delay: during a long outage one blocked attempt (at most
/// [`CONNECT_TIMEOUT`]) a minute costs nothing, and recovery is noticed within a minute.
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// Most `vps` ids read for one hostname: enough to name the duplicates in the warning.
pub const MAX_VPS_IDS: usize = 10;
/// Longest wait for the database host's name (on reconnect only), on top of
/// [`CONNECT_TIMEOUT`]: the lookup blocks the loop like the connect does.
pub const DNS_TIMEOUT: Duration = Duration::from_secs(2);
/// The port when the URL names none, as libpq.
pub const DEFAULT_PORT: u16 = 5432;
/// Shown in `pg_stat_activity` and PgBouncer's `SHOW CLIENTS` unless the URL sets one.
pub const APPLICATION_NAME: &str = "sigma-agent-lite";
/// Passwords shorter than this are not scrubbed from messages (replacing every "ab" would
/// garble the text); they are never put into messages in the first place anyway.
const MIN_SCRUBBED_PASSWORD_LEN: usize = 4;

/// The registration query: our `vps` rows. Exactly one is expected.
pub const VPS_SQL: &str = "SELECT id::text FROM vps \
     WHERE hostname = $1 AND (status IS NULL OR status NOT IN ('retired', 'deleted')) \
     ORDER BY id LIMIT $2";

/// The routes query: active routes with a backend, of active nodes, of the VPS found by
/// [`VPS_SQL`] (same predicate, same snapshot: the transaction is REPEATABLE READ). Its rows are
/// used only when that found exactly one VPS. Text fields are cut to one character over
/// [`MAX_FIELD_LEN`] so a huge value costs nothing and still fails validation. `LIMIT $2` is
/// [`MAX_ROUTES`] + 1, to notice the cap. Indexes: `vps(hostname)`, the UNIQUE
/// `envoy_nodes(vps_id, node_id)` and `envoy_routes(envoy_node_id, listen_port)`.
pub const ROUTES_SQL: &str = "SELECT left(n.node_id, 254), left(r.name, 254), \
     r.listen_port::integer, left(r.backend_host, 254), r.backend_port::integer \
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

/// What one call of [`PgSource::fetch`] found.
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

/// Where the database is, decided once from the URL.
#[derive(Debug, Clone)]
enum Target {
    /// A host name or IP literal, resolved at each connect; `addrs` from `hostaddr=` if given.
    Tcp {
        host: String,
        port: u16,
        addrs: Vec<IpAddr>,
    },
    /// A unix-socket directory, as libpq: the socket is `DIR/.s.PGSQL.PORT`.
    Unix { dir: PathBuf, port: u16 },
}

/// An open connection: the client, and the task driving its socket on our runtime.
struct Conn {
    client: Client,
    task: JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        // Dropping the task drops the socket; nothing waits for the server.
        self.task.abort();
    }
}

/// The PostgreSQL route source. See the module docs.
pub struct PgSource {
    /// Looks up the database host's name when (re)connecting.
    resolver: Resolver,
    config: Config,
    target: Target,
    /// `sslmode`/`sslrootcert` as the URL gave them (see `pg_tls`).
    tls: TlsSettings,
    /// The TLS side, for TCP targets with any sslmode but `disable`.
    #[cfg(feature = "tls")]
    tls_client: Option<TlsClient>,
    hostname: String,
    described: String,
    /// For scrubbing, when long enough to scrub (see [`MIN_SCRUBBED_PASSWORD_LEN`]).
    password: Option<String>,
    begin_sql: String,
    runtime: Runtime,
    conn: Option<Conn>,
    /// The delay used after the last failure; None after a success.
    backoff: Option<Duration>,
    /// No reconnect before this instant (caller's clock).
    next_attempt: Option<Instant>,
    last_duration: Option<Duration>,
    worst_duration: Option<Duration>,
    /// The skipped-row warnings of the last fetch, to log each problem once, not every cycle.
    last_skipped: Vec<String>,
}

impl PgSource {
    /// Parses a URL (`postgres://user@host:port/db`) or key=value string, as libpq, and applies
    /// our bounds. `pgpassword` (the caller reads `PGPASSWORD`) is used when the URL has no
    /// password. Errors never contain the password.
    pub fn new(
        database_url: &str,
        hostname: &str,
        pgpassword: Option<&str>,
    ) -> Result<PgSource, String> {
        let (rest, tls) =
            split_tls_params(database_url).map_err(|e| format!("database URL: {e}"))?;
        let mut config =
            Config::from_str(&rest).map_err(|e| format!("database URL: {}", error_text(&e)))?;
        if hostname.is_empty() {
            return Err("the hostname to register as is empty".into());
        }
        let user = config
            .get_user()
            .ok_or("database URL names no user (e.g. postgres://sigma_agent@10.0.0.5/sigma)")?
            .to_owned();
        if config.get_password().is_none() {
            if let Some(pw) = pgpassword.filter(|p| !p.is_empty()) {
                config.password(pw);
            }
        }
        let password = config
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .filter(|p| p.len() >= MIN_SCRUBBED_PASSWORD_LEN);
        if config.get_application_name().is_none() {
            config.application_name(APPLICATION_NAME);
        }
        let target = target_of(&config)?;
        // As libpq, TLS is never used over a unix socket, whatever the sslmode.
        let tcp = matches!(target, Target::Tcp { .. });
        config.ssl_mode(match tls.mode {
            SslMode::Disable => TpSslMode::Disable,
            _ if !tcp => TpSslMode::Disable,
            SslMode::Prefer => TpSslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => TpSslMode::Require,
        });
        #[cfg(feature = "tls")]
        let tls_client = match tls.mode {
            SslMode::Disable => None,
            _ if !tcp => None,
            _ => Some(TlsClient::new(&tls).map_err(|e| format!("database URL: {e}"))?),
        };
        #[cfg(not(feature = "tls"))]
        if tcp && tls.mode.requires_tls() {
            return Err(format!(
                "database URL: sslmode={} needs TLS, which this build leaves out (built without \
                 the `tls` cargo feature); rebuild with it, or use sslmode=disable or prefer",
                tls.mode
            ));
        }
        let db = config.get_dbname().unwrap_or(&user).to_owned();
        let described = match &target {
            Target::Tcp { host, port, .. } if host.contains(':') => {
                format!("{user}@[{host}]:{port}/{db}")
            }
            Target::Tcp { host, port, .. } => format!("{user}@{host}:{port}/{db}"),
            Target::Unix { dir, port } => format!("{user}@{}:{port}/{db}", dir.display()),
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(|e| format!("cannot set up the database client's poller: {e}"))?;
        let begin_sql = format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; \
             SET LOCAL statement_timeout = {}; \
             SET LOCAL idle_in_transaction_session_timeout = {}",
            STATEMENT_TIMEOUT.as_millis(),
            QUERY_TIMEOUT.as_millis()
        );
        Ok(PgSource {
            config,
            target,
            tls,
            #[cfg(feature = "tls")]
            tls_client,
            hostname: hostname.to_owned(),
            described,
            password,
            begin_sql,
            runtime,
            conn: None,
            backoff: None,
            next_attempt: None,
            last_duration: None,
            worst_duration: None,
            last_skipped: Vec::new(),
            resolver: Resolver::new(ResolverConfig::system()),
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

    /// The host name this agent registers as.
    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    /// How long the last fetch that talked to the database blocked.
    pub fn last_fetch_duration(&self) -> Option<Duration> {
        self.last_duration
    }

    /// The longest any fetch has blocked since start.
    pub fn worst_fetch_duration(&self) -> Option<Duration> {
        self.worst_duration
    }

    /// One probe cycle's read. Blocks, but boundedly: on an open connection at most
    /// [`QUERY_TIMEOUT`]; when it must connect, [`CONNECT_TIMEOUT`] + [`QUERY_TIMEOUT`]. When an
    /// open connection turns out dead (closed or reset: the server restarted since the last
    /// cycle) it reconnects at once, so the theoretical worst is `CONNECT_TIMEOUT +
    /// 2 × QUERY_TIMEOUT` (6 s); a dead connection is normally noticed in well under 1 ms.
    /// `now` (the caller's clock) decides whether a reconnect is due.
    pub fn fetch(&mut self, now: Instant) -> Fetch {
        if self.conn.is_none() && self.next_attempt.is_some_and(|due| now < due) {
            return Fetch::Backoff;
        }
        let started = Instant::now();
        let reused = self.conn.is_some();
        let mut result = self.read_once();
        if let Err(Failure {
            stale: true,
            message,
            ..
        }) = &result
        {
            if reused {
                debug!("database: reused connection failed ({message}); retrying on a new one");
                result = self.read_once();
            }
        }
        let took = started.elapsed();
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
                self.conn = None;
                // Let the runtime run the aborted socket task now, so the socket closes now
                // rather than at the next attempt (up to BACKOFF_MAX away).
                self.runtime.block_on(tokio::task::yield_now());
                let delay = self
                    .backoff
                    .map_or(BACKOFF_MIN, |d| d.saturating_mul(2).min(BACKOFF_MAX));
                self.backoff = Some(delay);
                self.next_attempt = Some(now + delay);
                Fetch::Failed(self.scrub(failure.message))
            }
        }
    }

    fn classify(&mut self, read: Read) -> Fetch {
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

    /// Connects if needed, then runs the cycle's transaction.
    fn read_once(&mut self) -> Result<Read, Failure> {
        if self.conn.is_none() {
            self.conn = Some(self.connect()?);
        }
        let Some(conn) = &self.conn else {
            return Err(Failure::new("no connection".into()));
        };
        // The timer is created inside `block_on`: tokio's timers need the runtime's context.
        let reading = read_transaction(&conn.client, &self.begin_sql, &self.hostname);
        match self
            .runtime
            .block_on(async { tokio::time::timeout(QUERY_TIMEOUT, reading).await })
        {
            Ok(Ok(read)) => Ok(read),
            Ok(Err(e)) => {
                self.conn = None;
                Err(Failure {
                    stale: is_connection_lost(&e),
                    message: format!("reading routes from {}: {}", self.described, error_text(&e)),
                })
            }
            Err(_) => {
                self.conn = None;
                Err(Failure {
                    stale: false,
                    message: format!(
                        "reading routes from {}: no answer within {} ms (QUERY_TIMEOUT)",
                        self.described,
                        QUERY_TIMEOUT.as_millis()
                    ),
                })
            }
        }
    }

    fn connect(&mut self) -> Result<Conn, Failure> {
        let fail = |what: String| Failure::new(format!("connecting to {}: {what}", self.described));
        let resolved = match &self.target {
            Target::Tcp { host, addrs, .. } if addrs.is_empty() => {
                resolve_db_host(&mut self.resolver, host).map_err(fail)?
            }
            Target::Tcp { addrs, .. } => addrs.clone(),
            Target::Unix { .. } => Vec::new(),
        };
        let connecting = async {
            match &self.target {
                Target::Tcp { host, port, .. } => {
                    let addrs = resolved;
                    let mut last = String::from("no address");
                    for ip in addrs {
                        match tokio::net::TcpStream::connect(SocketAddr::new(ip, *port)).await {
                            Ok(stream) => {
                                // Small messages, one round trip each way: no Nagle delay.
                                let _ = stream.set_nodelay(true);
                                return self.handshake_tcp(stream, host).await;
                            }
                            Err(e) => last = format!("{ip} port {port}: {e}"),
                        }
                    }
                    Err(last)
                }
                Target::Unix { dir, port } => {
                    let path = dir.join(format!(".s.PGSQL.{port}"));
                    match tokio::net::UnixStream::connect(&path).await {
                        Ok(stream) => self.handshake(stream, NoTls).await,
                        Err(e) => Err(format!("{}: {e}", path.display())),
                    }
                }
            }
        };
        match self
            .runtime
            .block_on(async { tokio::time::timeout(CONNECT_TIMEOUT, connecting).await })
        {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(fail(e)),
            Err(_) => Err(Failure {
                stale: false,
                message: format!(
                    "connecting to {}: no answer within {} ms (CONNECT_TIMEOUT)",
                    self.described,
                    CONNECT_TIMEOUT.as_millis()
                ),
            }),
        }
    }

    /// TLS as the sslmode says (certificates checked for `host`, the URL's name, not the
    /// address), then [`Self::handshake`].
    async fn handshake_tcp(
        &self,
        stream: tokio::net::TcpStream,
        host: &str,
    ) -> Result<Conn, String> {
        #[cfg(feature = "tls")]
        if let Some(tls) = &self.tls_client {
            return self.handshake(stream, tls.connector(host)?).await;
        }
        let _ = host;
        self.handshake(stream, NoTls).await
    }

    /// Startup and authentication on an open socket; spawns the socket's driver task.
    async fn handshake<S, T>(&self, stream: S, tls: T) -> Result<Conn, String>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        T: TlsConnect<S>,
        T::Stream: Send + 'static,
    {
        let (client, connection) = self.config.connect_raw(stream, tls).await.map_err(|e| {
            let text = error_text(&e);
            if text.contains("server does not support TLS") {
                format!(
                    "{text} (sslmode={} requires TLS: turn on ssl in the server's \
                             postgresql.conf, or use sslmode=prefer)",
                    self.tls.mode
                )
            } else {
                text
            }
        })?;
        let task = tokio::spawn(async move {
            if let Err(e) = connection.await {
                debug!("database connection ended: {}", error_text(&e));
            }
        });
        Ok(Conn { client, task })
    }

    fn scrub(&self, message: String) -> String {
        match &self.password {
            Some(pw) if message.contains(pw.as_str()) => message.replace(pw.as_str(), "********"),
            _ => message,
        }
    }
}

/// What the cycle's transaction read.
struct Read {
    vps_ids: Vec<String>,
    routes: Vec<Row>,
}

struct Failure {
    /// The connection was found dead (closed, reset, server shut down), quickly: worth one
    /// immediate retry on a new connection. Never set for timeouts or query errors, which a
    /// retry would only repeat (and block as long again).
    stale: bool,
    message: String,
}

impl Failure {
    fn new(message: String) -> Failure {
        Failure {
            stale: false,
            message,
        }
    }
}

/// The connection itself is gone: closed, an I/O error, or the server said it is shutting
/// down or the connection failed (SQLSTATE classes 57P and 08).
fn is_connection_lost(e: &tokio_postgres::Error) -> bool {
    if let Some(db) = e.as_db_error() {
        let code = db.code().code();
        return code.starts_with("57P") || code.starts_with("08");
    }
    e.is_closed()
        || std::error::Error::source(e)
            .is_some_and(|c| c.downcast_ref::<std::io::Error>().is_some())
}

/// The cycle's transaction, pipelined into one round trip: every request is written before
/// any answer is awaited (tokio-postgres sends a request on its future's first poll and
/// answers come back in order). Only `SET LOCAL` and the unnamed statement: pooler-safe.
async fn read_transaction(
    client: &Client,
    begin_sql: &str,
    hostname: &str,
) -> Result<Read, tokio_postgres::Error> {
    let max_ids = MAX_VPS_IDS as i64;
    let max_rows = MAX_ROUTES as i64 + 1;
    let vps_params: [(&(dyn ToSql + Sync), Type); 2] =
        [(&hostname, Type::TEXT), (&max_ids, Type::INT8)];
    let routes_params: [(&(dyn ToSql + Sync), Type); 2] =
        [(&hostname, Type::TEXT), (&max_rows, Type::INT8)];
    let begin = client.simple_query(begin_sql);
    let vps = client.query_typed(VPS_SQL, &vps_params);
    let routes = client.query_typed(ROUTES_SQL, &routes_params);
    let commit = client.simple_query("COMMIT");
    let ((begin, vps), (routes, commit)) = join(join(begin, vps), join(routes, commit)).await;
    // The first error in order is the one that explains the others.
    begin?;
    let vps = vps?;
    let routes = routes?;
    commit?;
    let mut vps_ids = Vec::with_capacity(vps.len());
    for row in &vps {
        vps_ids.push(row.try_get::<_, String>(0)?);
    }
    Ok(Read { vps_ids, routes })
}

/// Polls both futures, `a` first, until both are done (a two-way `join!` without macros).
async fn join<A: Future, B: Future>(a: A, b: B) -> (A::Output, B::Output) {
    let mut a = pin!(a);
    let mut b = pin!(b);
    let mut ra = None;
    let mut rb = None;
    poll_fn(move |cx| {
        if ra.is_none() {
            if let Poll::Ready(v) = a.as_mut().poll(cx) {
                ra = Some(v);
            }
        }
        if rb.is_none() {
            if let Poll::Ready(v) = b.as_mut().poll(cx) {
                rb = Some(v);
            }
        }
        match (ra.take(), rb.take()) {
            (Some(x), Some(y)) => Poll::Ready((x, y)),
            (x, y) => {
                ra = x;
                rb = y;
                Poll::Pending
            }
        }
    })
    .await
}

/// Rows of [`ROUTES_SQL`] → routes, and one message per skipped row (or for the cap).
fn routes_from_rows(rows: Vec<Row>) -> (Vec<Route>, Vec<String>) {
    let raw = rows.iter().map(|row| {
        Ok(RawRoute {
            node: row.try_get(0).map_err(|e| error_text(&e))?,
            name: row.try_get(1).map_err(|e| error_text(&e))?,
            listen_port: row.try_get(2).map_err(|e| error_text(&e))?,
            host: row.try_get(3).map_err(|e| error_text(&e))?,
            port: row.try_get(4).map_err(|e| error_text(&e))?,
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
            Ok(route) => routes.push(route),
            Err(e) => skipped.push(format!(
                "database: route '{}' of node '{}' skipped: {e}",
                raw.name.escape_debug(),
                raw.node.escape_debug()
            )),
        }
    }
    (routes, skipped)
}

fn port_of(v: i32, what: &str) -> Result<u16, String> {
    u16::try_from(v)
        .ok()
        .filter(|&p| p != 0)
        .ok_or_else(|| format!("{what} {v} is not 1-65535"))
}

/// Where to connect, from the parsed config. One host only.
fn target_of(config: &Config) -> Result<Target, String> {
    let hosts = config.get_hosts();
    let addrs = config.get_hostaddrs().to_vec();
    if hosts.len() > 1 || addrs.len() > 1 {
        return Err("database URL names several hosts; this agent connects to one".into());
    }
    let port = match config.get_ports() {
        [] => DEFAULT_PORT,
        [port] => *port,
        _ => return Err("database URL names several ports; this agent connects to one".into()),
    };
    match hosts.first() {
        Some(Host::Tcp(host)) => Ok(Target::Tcp {
            host: host.clone(),
            port,
            addrs,
        }),
        Some(Host::Unix(dir)) => Ok(Target::Unix {
            dir: dir.clone(),
            port,
        }),
        None => match addrs.first() {
            Some(ip) => Ok(Target::Tcp {
                host: ip.to_string(),
                port,
                addrs,
            }),
            None => Err(
                "database URL names no host (e.g. postgres://sigma_agent@10.0.0.5:5432/sigma)"
                    .into(),
            ),
        },
    }
}

/// The database host's addresses: an IP literal as it is; a name through the agent's own
/// resolver (/etc/hosts, then the name servers), bounded by [`DNS_TIMEOUT`] — never a
/// blocking `getaddrinfo`.
pub fn resolve_db_host(resolver: &mut Resolver, host: &str) -> Result<Vec<IpAddr>, String> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(vec![ip]);
    }
    resolver.reload_if_changed();
    crate::dns::resolve_blocking(resolver, bare, DNS_TIMEOUT)
        .map(|ip| vec![ip])
        .map_err(|e| {
            format!(
                "database host '{}' did not resolve: {e}",
                host.escape_debug()
            )
        })
}

/// A tokio-postgres error as a person reads it: the server's severity, SQLSTATE and message
/// (e.g. `FATAL 28P01: password authentication failed for user "sigma_agent"`), or the
/// client's error and its causes.
fn error_text(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut s = format!("{} {}: {}", db.severity(), db.code().code(), db.message());
        if let Some(detail) = db.detail() {
            s.push_str(&format!(" ({detail})"));
        }
        if let Some(hint) = db.hint() {
            s.push_str(&format!(" hint: {hint}"));
        }
        return s;
    }
    let mut s = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    if s.contains("password missing") {
        s.push_str(" (the server asks for a password: put it in the URL or set PGPASSWORD)");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv6Addr;

    fn raw(node: &str, name: &str, listen_port: i32, host: &str, port: i32) -> RawRoute {
        RawRoute {
            node: node.into(),
            name: name.into(),
            listen_port,
            host: host.into(),
            port,
        }
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
            Err("error deserializing column 2".into()),
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
    fn routes_are_capped() {
        let rows = (0..MAX_ROUTES as i32 + 1).map(|i| Ok(raw("n", "r", i % 60000 + 1, "h", 1)));
        let (routes, skipped) = build_routes(rows);
        assert_eq!(routes.len(), MAX_ROUTES);
        assert_eq!(skipped.len(), 1);
        assert!(skipped[0].contains("MAX_ROUTES"));
    }

    #[test]
    fn resolves_literals_and_hosts_file_names_without_a_query() {
        // A name server nobody answers on: a lookup that reached the network would time out.
        let closed = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let server = closed.local_addr().unwrap();
        drop(closed);
        let mut resolver = Resolver::new(ResolverConfig::with_server(server));
        assert_eq!(
            resolve_db_host(&mut resolver, "[::1]"),
            Ok(vec![IpAddr::V6(Ipv6Addr::LOCALHOST)])
        );
        assert_eq!(
            resolve_db_host(&mut resolver, "127.0.2.1"),
            Ok(vec!["127.0.2.1".parse().unwrap()])
        );
        let local = resolve_db_host(&mut resolver, "localhost").unwrap();
        assert!(local[0].is_loopback(), "{local:?}");
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
        let s = PgSource::new("host=::1 user=a dbname=d", "vps-1", Some("pw-from-env")).unwrap();
        assert_eq!(s.describe(), "a@[::1]:5432/d");
        assert_eq!(s.config.get_password(), Some(&b"pw-from-env"[..]));
        let s = PgSource::new("postgres://a:url-pw@h/d", "v", Some("env-pw")).unwrap();
        assert_eq!(s.config.get_password(), Some(&b"url-pw"[..]));
        let s = PgSource::new("host=/run/postgresql port=5433 user=a", "v", None).unwrap();
        assert_eq!(s.describe(), "a@/run/postgresql:5433/a");
        assert_eq!(
            s.scrub("x /run y".into()),
            "x /run y",
            "nothing to scrub without a password"
        );
        let s = PgSource::new("postgres://a:hunter22@h/d", "v", None).unwrap();
        assert_eq!(s.scrub("oops hunter22!".into()), "oops ********!");

        for (url, want) in [
            ("postgres://h/d", "no user"),
            ("postgres://a@/d", "no host"),
            ("postgres://a@h1,h2/d", "several hosts"),
            ("postgres://a:pw@h/d?sslmode=verify", "sslmode 'verify'"),
            (
                "postgres://a:pw@h/d?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
                if cfg!(feature = "tls") {
                    "sslrootcert /nonexistent/ca.pem: No such file"
                } else {
                    "sslmode=verify-full needs TLS"
                },
            ),
            ("postgres://a:pw@h:notaport/d", "database URL"),
            ("postgres://a:pw@h/d%ff", "database URL"),
            ("nonsense = = =", "database URL"),
        ] {
            let e = match PgSource::new(url, "v", None) {
                Ok(_) => panic!("{url} accepted"),
                Err(e) => e,
            };
            assert!(e.contains(want), "{url}: {e}");
            assert!(!e.contains("pw") && !e.contains("word"), "{url}: {e}");
        }
        assert!(PgSource::new("postgres://a@h/d", "", None).is_err());
    }

    #[test]
    fn unresolvable_host_fails_fast_and_backs_off() {
        let mut s = PgSource::new("postgres://a:pw@no-such-db-host.invalid/d", "v", None).unwrap();
        // Its name server refuses at once (a closed loopback port): no query leaves the host.
        let closed = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_resolver(ResolverConfig::with_server(closed.local_addr().unwrap()));
        drop(closed);
        let t0 = Instant::now();
        match s.fetch(t0) {
            Fetch::Failed(e) => assert!(
                e.contains("'no-such-db-host.invalid' did not resolve"),
                "{e}"
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(s.fetch(t0 + BACKOFF_MIN / 2), Fetch::Backoff);
        assert!(matches!(s.fetch(t0 + BACKOFF_MIN), Fetch::Failed(_)));
        // The second failure doubled the delay.
        assert_eq!(
            s.fetch(t0 + BACKOFF_MIN + BACKOFF_MIN * 3 / 2),
            Fetch::Backoff
        );
        assert!(matches!(s.fetch(t0 + BACKOFF_MIN * 3), Fetch::Failed(_)));
    }

    #[test]
    fn join_polls_in_order_and_waits_for_both() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let order = std::cell::RefCell::new(Vec::new());
        let out = rt.block_on(join(
            async {
                order.borrow_mut().push("a");
                tokio::time::sleep(Duration::from_millis(5)).await;
                1
            },
            async {
                order.borrow_mut().push("b");
                2
            },
        ));
        assert_eq!(out, (1, 2));
        assert_eq!(*order.borrow(), ["a", "b"]);
    }
}
