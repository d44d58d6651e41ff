//! The PostgreSQL route source (feature `postgres`): reads this VPS's active Envoy L4 routes
//! from the fleet's database once per probe cycle, as a state machine on the agent's one
//! `mio::Poll`. Nothing here ever waits: the event loop calls [`PgSource::begin`] when a cycle
//! is due, [`PgSource::on_event`] for this source's tokens and [`PgSource::on_deadline`]
//! when [`PgSource::next_deadline`] passes; each returns the [`Fetch`] once it is known.
//!
//! A connection goes: the host's name through the agent's own resolver → a non-blocking
//! connect (TCP or a unix socket) → `SSLRequest` and a rustls handshake when the `sslmode`
//! asks → startup and authentication → idle, kept for the next cycle. That transport is
//! `pg_conn`; the protocol itself is the pure session in `pg_wire`; conninfo parsing is
//! `pg_conninfo`; the cycle's SQL and its rows → routes are `pg_routes`. This file is the
//! driver: when to connect, the cycle, timeouts, retry and backoff.
//!
//! Bounds: DNS, connect, TLS and authentication together by [`CONNECT_TIMEOUT`]; the cycle's
//! one round trip by [`QUERY_TIMEOUT`] on our side and [`STATEMENT_TIMEOUT`] on the server's.
//! A reused connection found dead (the server restarted since the last cycle) is replaced at
//! once, within the same fetch. On any failure the connection is dropped and the next attempt
//! waits a random delay between 0 and a cap that doubles from [`BACKOFF_MIN`] to
//! [`BACKOFF_MAX`] (full jitter, counted from the end of the failed attempt), so that a fleet
//! does not reconnect in step after a database restart; the caller keeps its last routes.
//!
//! The password (from the URL, `PGPASSWORD` or a password file; see `pg_conn`) never appears
//! in errors, logs or [`PgSource::describe`].
//!
//! Limits: one database host; at most [`MAX_ROUTES`] routes; fields longer than
//! [`MAX_FIELD_LEN`](crate::route::MAX_FIELD_LEN) are cut by the server before they are sent, then rejected; server
//! messages up to `pg_wire::MAX_MESSAGE_BYTES`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::{Registry, Token};

use crate::dns::{ResolverConfig, Rng};
use crate::pg_conn::{Conn, Dialer, Failure, Stage};
use crate::pg_conninfo;
use crate::pg_routes::routes_from_rows;
use crate::pg_wire::{self, Phase, Progress};
use crate::route::{Route, MAX_ROUTES};

use crate::pg_routes::{ROUTES_SQL, VPS_SQL};

/// The bound on DNS, connect, TLS and authentication together (the transport's own, public
/// here because `pg_conn` is private to the crate).
pub use crate::pg_conn::CONNECT_TIMEOUT;

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

const _: () = assert!(MAX_VPS_IDS <= pg_wire::MAX_VPS_ROWS);

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

/// A fetch in progress.
struct InProgress {
    /// When it started, on the clock that measures its duration. (Decisions use the
    /// caller's `now`; a fetch may also end within the call that starts it, on one `now`.)
    started: Instant,
    /// The connection was open before this fetch (a failure may just mean it went stale).
    reused: bool,
}

/// What the cycle's transaction read.
struct ReadRows {
    vps_ids: Vec<String>,
    routes: Vec<pg_wire::Row>,
}

/// The PostgreSQL route source. See the module docs.
pub struct PgSource {
    /// Where and how to connect (conninfo, resolver, TLS, password).
    dialer: Dialer,
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
        let dialer = Dialer::new(info)?;
        let begin_sql = format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; \
             SET LOCAL statement_timeout = {}; \
             SET LOCAL idle_in_transaction_session_timeout = {}",
            STATEMENT_TIMEOUT.as_millis(),
            QUERY_TIMEOUT.as_millis()
        );
        Ok(PgSource {
            described: dialer.describe(),
            dialer,
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
        self.dialer.set_resolver(config);
    }

    /// The password file (`PGPASSFILE`, else `~/.pgpass`) to read when no password is given;
    /// a `passfile=` in the URL wins over it.
    pub fn set_passfile(&mut self, path: Option<PathBuf>) {
        self.dialer.set_passfile(path);
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
        self.conn.as_ref().is_some_and(Conn::idle)
    }

    /// Whether `token` is this source's (its socket or its name lookup).
    pub fn owns(&self, token: Token) -> bool {
        self.conn.as_ref().is_some_and(|c| c.token == token)
    }

    /// When [`PgSource::on_deadline`] must be called at the latest.
    pub fn next_deadline(&self) -> Option<Instant> {
        // An idle connection between fetches waits for nothing.
        self.fetch.as_ref()?;
        self.conn.as_ref()?.next_deadline()
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
                    format!("resolving '{}'", self.dialer.tls_host().escape_debug()),
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
        } else {
            self.dialer
                .on_lookup_timeout(conn, now, registry)?
                .map(|()| None)
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
                Fetch::Failed(self.dialer.scrub(failure.message))
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
        let conn = self.dialer.connect(tokens(), now, registry)?;
        self.conn = Some(conn);
        Ok(None)
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

    /// Pumps the connection; starts the cycle's pipeline once a fresh session is ready.
    fn pump_conn(
        &mut self,
        conn: &mut Conn,
        now: Instant,
        registry: &Registry,
    ) -> Result<Option<pg_wire::Read>, Failure> {
        loop {
            match self.dialer.pump(conn, now, registry)? {
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

    fn drop_conn(&mut self, registry: &Registry) {
        if let Some(conn) = self.conn.take() {
            conn.close(registry);
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(s.dialer.scrub("oops hunter22!".into()), "oops ********!");
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
