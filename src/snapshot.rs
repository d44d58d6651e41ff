//! The snapshot: the one shared state of the agent — the current routes, the last result and
//! counters of each, and the agent-wide counters. The prober writes it; the /metrics and MCP
//! renderers read it. It lives in one `RefCell` owned by the event loop; there is no second
//! copy of the route list or of the results anywhere.
//!
//! Nothing here does I/O or reads the clock: times come in as arguments, so tests use made-up
//! instants. Memory is bounded by the route count (`route::MAX_ROUTES`).
//!
//! Every change bumps [`Snapshot::generation`]: the /metrics body is rendered once per
//! generation and served from a cache until the next change (`scrape_cache.rs`). The methods
//! here bump it themselves; code that writes a field directly calls [`Snapshot::touch`].

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use crate::envoy::{EnvoyMatch, Mismatch};
use crate::route::Route;
use crate::source::Refresh;

/// Why a probe failed. The order is the order of the failure counters in `RouteState`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    Refused,
    Timeout,
    Unreachable,
    Dns,
    Error,
}

impl Reason {
    pub const ALL: [Reason; 5] = [
        Reason::Refused,
        Reason::Timeout,
        Reason::Unreachable,
        Reason::Dns,
        Reason::Error,
    ];

    /// The label value in /metrics and the `reason` field in MCP.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Refused => "refused",
            Reason::Timeout => "timeout",
            Reason::Unreachable => "unreachable",
            Reason::Dns => "dns",
            Reason::Error => "error",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The outcome of one probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Reachable { latency: Duration },
    Failed(Reason),
}

/// One finished probe, as the prober reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeResult {
    pub outcome: Outcome,
    /// The address connected to, when resolution got that far.
    pub address: Option<SocketAddr>,
    /// How long resolving the host name took (None for IP literals).
    pub dns_duration: Option<Duration>,
    /// A short human detail for failures (the OS error, the DNS failure kind), for MCP and logs.
    pub detail: Option<String>,
    /// A strict_dns route: how many addresses its name had and how many answered.
    pub addresses: Option<AddressCount>,
}

impl ProbeResult {
    /// A result with only its outcome known (no address, DNS time, detail or address count).
    pub fn new(outcome: Outcome) -> ProbeResult {
        ProbeResult {
            outcome,
            address: None,
            dns_duration: None,
            detail: None,
            addresses: None,
        }
    }
}

/// The addresses of a strict_dns route's answer, and how many of them answered a connect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddressCount {
    pub total: u16,
    pub reachable: u16,
}

/// What the snapshot knows about one route.
#[derive(Clone, Debug)]
pub struct RouteState {
    pub route: Route,
    /// The last finished probe and when it finished; None until the first one.
    pub last: Option<(ProbeResult, SystemTime)>,
    /// Failures since the route appeared, per `Reason::ALL` index.
    pub failures: [u64; 5],
    pub consecutive_failures: u64,
    /// When reachability last flipped (or the first result arrived).
    pub last_change: Option<SystemTime>,
    /// Envoy's verdict on this backend from the node's last admin read; None when the node
    /// has no admin port, the read failed, or Envoy has no such host.
    pub envoy: Option<EnvoyMatch>,
    /// The two views disagree (both known), and since when.
    pub mismatch: Option<(Mismatch, SystemTime)>,
}

impl RouteState {
    fn new(route: Route) -> RouteState {
        RouteState {
            route,
            last: None,
            failures: [0; 5],
            consecutive_failures: 0,
            last_change: None,
            envoy: None,
            mismatch: None,
        }
    }

    /// Whether the two views are both known (then `mismatch` says if they disagree).
    pub fn views_known(&self) -> bool {
        Mismatch::between(
            self.envoy.as_ref().and_then(|e| e.healthy),
            self.reachable(),
        )
        .is_some()
    }

    pub fn failures(&self, reason: Reason) -> u64 {
        self.failures[reason.index()]
    }

    /// Reachable per the last probe; None before the first.
    pub fn reachable(&self) -> Option<bool> {
        self.last
            .as_ref()
            .map(|(r, _)| matches!(r.outcome, Outcome::Reachable { .. }))
    }
}

/// A change of reachability, returned by [`Snapshot::record`] so the caller can log it once.
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    /// First result for this route.
    First,
    Down,
    /// Back up after being down for this long.
    Up {
        down_for: Duration,
    },
    Same,
}

/// Where the routes come from and how that source is doing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceStatus {
    /// The last fetch or read succeeded.
    pub up: bool,
    /// This VPS was found in the database (always true for the file source).
    pub vps_registered: bool,
    pub errors_total: u64,
    /// How long the last fetch took.
    pub fetch_duration: Option<Duration>,
    /// The source has answered once (found this VPS or not): a first "not registered" is
    /// worth a warning.
    pub answered: bool,
}

/// Failures of the agent itself, not of any backend: resources it ran out of.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AgentErrors {
    /// `accept` failures for lack of a file descriptor (EMFILE/ENFILE).
    pub accept: u64,
    /// Probes not run because the agent could not get a socket (out of file descriptors,
    /// buffers or memory): the backend keeps its last state.
    pub probe: u64,
}

/// How reading one node's Envoy admin interface is doing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvoyNode {
    pub node: String,
    pub admin_port: u16,
    /// The last read succeeded; None before the first one ended.
    pub up: Option<bool>,
    pub errors_total: u64,
    /// What went wrong in the last read, while it is failing.
    pub last_error: Option<String>,
    /// How long the last read took, how many body bytes and hosts it gave.
    pub fetch_duration: Option<Duration>,
    pub body_bytes: usize,
    pub hosts: usize,
}

/// A mismatch began or ended, returned by [`Snapshot::refresh_mismatch`] to be logged once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MismatchChange {
    Started(Mismatch),
    /// Ended after this long; `known` is false when it ended because a view became unknown.
    Ended {
        was: Mismatch,
        lasted: Duration,
        known: bool,
    },
}

/// The agent's shared state. See the module docs.
#[derive(Debug)]
pub struct Snapshot {
    pub routes: Vec<RouteState>,
    pub probe_enabled: bool,
    pub interval: Duration,
    pub cycles_total: u64,
    pub overruns_total: u64,
    pub last_cycle_duration: Option<Duration>,
    pub last_cycle_end: Option<SystemTime>,
    pub source: SourceStatus,
    pub agent_errors: AgentErrors,
    /// When the agent started (process_start_time_seconds).
    pub started_at: SystemTime,
    /// Bumped by every change (see the module docs).
    generation: u64,
    /// Envoy admin interfaces read once per cycle, one per node that has an admin port.
    pub envoy_nodes: Vec<EnvoyNode>,
}

impl Snapshot {
    pub fn new(probe_enabled: bool, interval: Duration, started_at: SystemTime) -> Snapshot {
        Snapshot {
            routes: Vec::new(),
            probe_enabled,
            interval,
            cycles_total: 0,
            overruns_total: 0,
            last_cycle_duration: None,
            last_cycle_end: None,
            source: SourceStatus {
                up: true,
                vps_registered: true,
                errors_total: 0,
                fetch_duration: None,
                answered: false,
            },
            agent_errors: AgentErrors::default(),
            started_at,
            generation: 0,
            envoy_nodes: Vec::new(),
        }
    }

    /// Changes with every change of the snapshot: equal generations mean equal contents.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Marks a change made by writing fields directly.
    pub fn touch(&mut self) {
        self.generation = self.generation.wrapping_add(1);
    }

    /// Re-derives the mismatch of route `index` from its two views; returns a change to log.
    pub fn refresh_mismatch(&mut self, index: usize, at: SystemTime) -> Option<MismatchChange> {
        self.touch();
        let state = self.routes.get_mut(index)?;
        let envoy = state.envoy.as_ref().and_then(|e| e.healthy);
        let verdict = Mismatch::between(envoy, state.reachable());
        let now = verdict.flatten();
        match (state.mismatch, now) {
            (None, None) => None,
            (Some((was, _)), Some(is)) if was == is => None,
            (old, Some(is)) => {
                state.mismatch = Some((is, at));
                match old {
                    None => Some(MismatchChange::Started(is)),
                    // Flipped direction: log it as a start of the new one.
                    Some(_) => Some(MismatchChange::Started(is)),
                }
            }
            (Some((was, since)), None) => {
                state.mismatch = None;
                Some(MismatchChange::Ended {
                    was,
                    lasted: at.duration_since(since).unwrap_or_default(),
                    known: verdict.is_some(),
                })
            }
        }
    }

    /// Routes whose two views disagree.
    pub fn mismatches(&self) -> usize {
        self.routes.iter().filter(|s| s.mismatch.is_some()).count()
    }

    /// Applies a read of the route source (how long it took, for the fetch-duration gauge):
    /// the route set, the registration and the source's health, with one log line for each
    /// change worth one. The one path for the first read at start and every later read.
    /// Returns whether the route set changed.
    pub fn apply(&mut self, refresh: Refresh, took: Duration) -> bool {
        if !matches!(refresh, Refresh::Unchanged) {
            self.touch(); // the source fields below are written directly
        }
        let routes = match refresh {
            Refresh::Unchanged => return false,
            Refresh::Routes(routes) => {
                self.source.vps_registered = true;
                self.source.answered = true;
                routes
            }
            Refresh::NotRegistered(message) => {
                if self.source.vps_registered || !self.source.answered {
                    log::warn!("{message}");
                }
                self.source.answered = true;
                self.source.vps_registered = false;
                Vec::new()
            }
            Refresh::Failed(message) => {
                self.source.up = false;
                self.source.errors_total += 1;
                self.source.fetch_duration = Some(took);
                log::warn!(
                    "{message}; keeping the {} routes already known",
                    self.routes.len()
                );
                return false;
            }
        };
        if !self.source.up {
            log::info!("route source is back");
        }
        self.source.up = true;
        self.source.fetch_duration = Some(took);
        let count = routes.len();
        let changed = self.set_routes(routes);
        if changed {
            log::info!("route set changed: {count} routes");
        }
        changed
    }

    /// Replaces the route set. A route whose node, name, listen port and backend are all
    /// unchanged keeps its results and counters; any other route starts fresh, and routes
    /// no longer in the set disappear. Returns whether anything changed.
    pub fn set_routes(&mut self, routes: Vec<Route>) -> bool {
        if routes.len() == self.routes.len()
            && routes.iter().zip(&self.routes).all(|(a, b)| *a == b.route)
        {
            return false;
        }
        self.touch();
        let mut old: std::collections::HashMap<(String, u16), RouteState> = self
            .routes
            .drain(..)
            .map(|s| ((s.route.node.clone(), s.route.listen_port), s))
            .collect();
        self.routes = routes
            .into_iter()
            .map(
                |route| match old.remove(&(route.node.clone(), route.listen_port)) {
                    Some(state) if state.route == route => state,
                    _ => RouteState::new(route),
                },
            )
            .collect();
        true
    }

    /// Records a finished probe of route `index` at wall time `at`.
    pub fn record(&mut self, index: usize, result: ProbeResult, at: SystemTime) -> Change {
        self.generation = self.generation.wrapping_add(1);
        let Some(state) = self.routes.get_mut(index) else {
            return Change::Same;
        };
        let was = state.reachable();
        let now_up = matches!(result.outcome, Outcome::Reachable { .. });
        match result.outcome {
            Outcome::Reachable { .. } => state.consecutive_failures = 0,
            Outcome::Failed(reason) => {
                state.failures[reason.index()] += 1;
                state.consecutive_failures += 1;
            }
        }
        state.last = Some((result, at));
        let change = match was {
            None => Change::First,
            Some(w) if w == now_up => Change::Same,
            Some(_) if now_up => Change::Up {
                down_for: state
                    .last_change
                    .and_then(|t| at.duration_since(t).ok())
                    .unwrap_or_default(),
            },
            Some(_) => Change::Down,
        };
        if change != Change::Same {
            state.last_change = Some(at);
        }
        change
    }

    /// Records the end of a probe cycle that took `duration`.
    pub fn cycle_done(&mut self, duration: Duration, overran: bool, at: SystemTime) {
        self.touch();
        self.cycles_total += 1;
        if overran {
            self.overruns_total += 1;
        }
        self.last_cycle_duration = Some(duration);
        self.last_cycle_end = Some(at);
    }

    /// Counts of (reachable, unreachable, not yet probed).
    pub fn summary(&self) -> (usize, usize, usize) {
        let mut up = 0;
        let mut down = 0;
        for s in &self.routes {
            match s.reachable() {
                Some(true) => up += 1,
                Some(false) => down += 1,
                None => {}
            }
        }
        (up, down, self.routes.len() - up - down)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(node: &str, port: u16, backend_port: u16) -> Route {
        crate::fixtures::route(node, "r", port, "127.0.0.1", backend_port)
    }

    #[test]
    fn apply_reads_of_the_source() {
        let ms = Duration::from_millis;
        let mut snap = Snapshot::new(true, Duration::from_secs(30), SystemTime::UNIX_EPOCH);
        snap.source.vps_registered = false; // a database source starts unregistered
        assert!(!snap.apply(Refresh::Unchanged, ms(1)));
        assert_eq!(snap.source.fetch_duration, None);
        assert!(snap.apply(Refresh::Routes(vec![route("n", 1, 2)]), ms(3)));
        assert!(snap.source.up && snap.source.vps_registered && snap.source.answered);
        assert_eq!(snap.source.fetch_duration, Some(ms(3)));
        // The same set again: nothing changed.
        assert!(!snap.apply(Refresh::Routes(vec![route("n", 1, 2)]), ms(2)));
        // A failure keeps the routes, marks the source down and counts.
        assert!(!snap.apply(Refresh::Failed("db down".into()), ms(2000)));
        assert_eq!(snap.routes.len(), 1);
        assert!(!snap.source.up);
        assert_eq!(snap.source.errors_total, 1);
        assert_eq!(snap.source.fetch_duration, Some(ms(2000)));
        // Not registered: nothing to probe, source up again.
        assert!(snap.apply(Refresh::NotRegistered("gone".into()), ms(4)));
        assert!(snap.routes.is_empty());
        assert!(snap.source.up && !snap.source.vps_registered);
    }

    #[test]
    fn record_counts_failures_and_reports_changes() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let mut s = Snapshot::new(true, Duration::from_secs(30), t0);
        s.set_routes(vec![route("a", 1, 1)]);
        let up = ProbeResult::new(Outcome::Reachable {
            latency: Duration::from_millis(2),
        });
        let down = ProbeResult::new(Outcome::Failed(Reason::Refused));
        assert_eq!(s.record(0, up.clone(), t0), Change::First);
        assert_eq!(
            s.record(0, up.clone(), t0 + Duration::from_secs(1)),
            Change::Same
        );
        assert_eq!(
            s.record(0, down.clone(), t0 + Duration::from_secs(2)),
            Change::Down
        );
        assert_eq!(s.record(0, down, t0 + Duration::from_secs(3)), Change::Same);
        assert_eq!(s.routes[0].consecutive_failures, 2);
        assert_eq!(s.routes[0].failures(Reason::Refused), 2);
        assert_eq!(
            s.record(0, up, t0 + Duration::from_secs(12)),
            Change::Up {
                down_for: Duration::from_secs(10)
            }
        );
        assert_eq!(s.routes[0].consecutive_failures, 0);
        assert_eq!(s.routes[0].last_change, Some(t0 + Duration::from_secs(12)));
        assert_eq!(
            s.record(7, ProbeResult::new(Outcome::Failed(Reason::Dns)), t0),
            Change::Same
        );
    }

    #[test]
    fn set_routes_keeps_unchanged_routes_only() {
        let t0 = SystemTime::UNIX_EPOCH;
        let mut s = Snapshot::new(true, Duration::from_secs(30), t0);
        assert!(s.set_routes(vec![route("a", 1, 1), route("a", 2, 2), route("b", 1, 1)]));
        for i in 0..3 {
            s.record(i, ProbeResult::new(Outcome::Failed(Reason::Timeout)), t0);
        }
        assert!(!s.set_routes(vec![route("a", 1, 1), route("a", 2, 2), route("b", 1, 1)]));
        // a:2 changes its backend port, b:1 goes away, c:1 is new.
        assert!(s.set_routes(vec![route("c", 1, 1), route("a", 2, 3), route("a", 1, 1)]));
        let kept: Vec<_> = s
            .routes
            .iter()
            .map(|r| r.failures(Reason::Timeout))
            .collect();
        assert_eq!(kept, vec![0, 0, 1]);
        assert_eq!(s.summary(), (0, 1, 2));
    }
}
