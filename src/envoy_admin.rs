//! Reading Envoy's admin interfaces on the loop: once per probe cycle, one `GET
//! /clusters?format=json` per node that has an admin port, to `127.0.0.1:ADMIN_PORT`.
//!
//! A thin driver: the HTTP is the sans-IO [`http_client::Session`](crate::http_client::Session), the body is read by the
//! pure [`envoy::parse_clusters`] and matched to routes by [`envoy::match_route`]. This file
//! owns the sockets, their tokens (from the loop's counter; [`EnvoyAdmin::owns`] tells the
//! loop whose they are) and the deadline of each read: [`ADMIN_FETCH_TIMEOUT`], and never
//! beyond the probe interval, so a read never overlaps the next cycle's. Reads of different
//! nodes run side by side (a node has one admin interface; a host runs a few nodes); a node
//! whose read is still in flight when a cycle starts is not read twice.
//!
//! Nothing here waits: connect, write and read are non-blocking and driven by events; a read
//! drains the socket until `WouldBlock`, bounded by `envoy::MAX_ADMIN_BODY_BYTES`. A failed
//! read (refused, slow, huge, garbage, truncated) sets the node's `sigma_envoy_admin_up 0`
//! and drops Envoy's view of its routes for this cycle, so no mismatch is claimed on stale or
//! missing data.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use crate::envoy::{self, View};
use crate::http_client::{Progress, Session};
use crate::snapshot::{EnvoyNode, MismatchChange, RouteState, Snapshot};

/// Longest one admin read may take, connect to last byte: the probe deadline's 3 s clamp.
/// Envoy answers /clusters in milliseconds; a slower one is as good as down for this cycle.
pub const ADMIN_FETCH_TIMEOUT: Duration = Duration::from_secs(3);
/// Bytes read per `read` call; the buffer is kept and reused between reads.
pub const READ_BUFFER_BYTES: usize = 64 * 1024;
/// A read that received more than this many bytes hands the freed memory back to the system
/// afterwards (`release_freed_memory`): ~350 hosts; smaller answers leave little to return.
pub const TRIM_AFTER_BYTES: usize = 256 * 1024;
/// The path read: Envoy's `admin.v3.Clusters` in JSON.
pub const CLUSTERS_PATH: &str = "/clusters?format=json";

struct Fetch {
    node: String,
    port: u16,
    stream: TcpStream,
    session: Session,
    started: Instant,
    deadline: Instant,
}

/// The admin reads in flight, by token.
#[derive(Default)]
pub struct EnvoyAdmin {
    fetches: HashMap<Token, Fetch>,
    buf: Vec<u8>,
}

impl EnvoyAdmin {
    pub fn new() -> EnvoyAdmin {
        EnvoyAdmin::default()
    }

    /// Whether `token` is one of the reads in flight.
    pub fn owns(&self, token: Token) -> bool {
        self.fetches.contains_key(&token)
    }

    /// The earliest deadline of the reads in flight.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.fetches.values().map(|f| f.deadline).min()
    }

    /// A probe cycle starts: brings `snap.envoy_nodes` in line with the routes' admin ports
    /// and starts a read for each node that has none in flight.
    pub fn start_cycle(
        &mut self,
        snap: &mut Snapshot,
        registry: &Registry,
        now: Instant,
        interval: Duration,
        next_token: &mut impl FnMut() -> Token,
    ) {
        sync_nodes(snap);
        let timeout = ADMIN_FETCH_TIMEOUT.min(interval);
        for i in 0..snap.envoy_nodes.len() {
            let (node, port) = {
                let n = &snap.envoy_nodes[i];
                (n.node.clone(), n.admin_port)
            };
            if self
                .fetches
                .values()
                .any(|f| f.node == node && f.port == port)
            {
                log::debug!("envoy admin of node {node}: previous read still in flight");
                continue;
            }
            let address = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
            let started = TcpStream::connect(address).and_then(|mut stream| {
                let token = next_token();
                registry.register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)?;
                Ok((stream, token))
            });
            match started {
                Ok((stream, token)) => {
                    let session = Session::get(
                        &address.to_string(),
                        CLUSTERS_PATH,
                        envoy::MAX_ADMIN_BODY_BYTES,
                    );
                    self.fetches.insert(
                        token,
                        Fetch {
                            node,
                            port,
                            stream,
                            session,
                            started: now,
                            deadline: now + timeout,
                        },
                    );
                }
                Err(e) => {
                    let result = Err(format!("connect to {address}: {e}"));
                    apply(
                        snap,
                        &node,
                        port,
                        result,
                        Duration::ZERO,
                        0,
                        SystemTime::now(),
                    );
                }
            }
        }
    }

    /// Drives the read behind `token` after an event.
    pub fn on_event(
        &mut self,
        token: Token,
        registry: &Registry,
        now: Instant,
        snap: &mut Snapshot,
    ) {
        let Some(fetch) = self.fetches.get_mut(&token) else {
            return;
        };
        if self.buf.len() != READ_BUFFER_BYTES {
            self.buf = vec![0; READ_BUFFER_BYTES];
        }
        let Some(outcome) = pump(fetch, &mut self.buf) else {
            return;
        };
        if let Some(mut fetch) = self.fetches.remove(&token) {
            let _ = registry.deregister(&mut fetch.stream);
            finish(snap, fetch, outcome, now);
        }
    }

    /// Ends the reads whose deadline passed.
    pub fn expire(&mut self, now: Instant, registry: &Registry, snap: &mut Snapshot) {
        if !self.fetches.values().any(|f| now >= f.deadline) {
            return;
        }
        let expired: Vec<Token> = self
            .fetches
            .iter()
            .filter(|(_, f)| now >= f.deadline)
            .map(|(t, _)| *t)
            .collect();
        for token in expired {
            if let Some(mut fetch) = self.fetches.remove(&token) {
                let _ = registry.deregister(&mut fetch.stream);
                let got = fetch.session.received();
                let took = now.saturating_duration_since(fetch.started);
                let message =
                    format!("no complete answer within {took:.1?} ({got} bytes received)");
                finish(snap, fetch, Err(message), now);
            }
        }
    }
}

/// Writes the request and reads what arrived; `Some` when the read ended.
fn pump(fetch: &mut Fetch, buf: &mut [u8]) -> Option<Result<Vec<u8>, String>> {
    match fetch.stream.take_error() {
        Ok(Some(e)) | Err(e) => return Some(Err(format!("connect: {e}"))),
        Ok(None) => {}
    }
    match fetch.stream.peer_addr() {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotConnected => return None,
        Err(e) => return Some(Err(format!("connect: {e}"))),
    }
    while !fetch.session.output().is_empty() {
        match fetch.stream.write(fetch.session.output()) {
            Ok(0) => return Some(Err("connection closed while sending the request".into())),
            Ok(n) => fetch.session.wrote(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Some(Err(format!("write: {e}"))),
        }
    }
    loop {
        let progress = match fetch.stream.read(buf) {
            Ok(0) => fetch.session.eof(),
            Ok(n) => fetch.session.receive(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Some(Err(format!("read: {e}"))),
        };
        match progress {
            Progress::More => {}
            Progress::Done(response) => return Some(Ok(response.body)),
            Progress::Failed(e) => return Some(Err(e.to_string())),
        }
    }
}

/// A read ended: parse, match, record, log.
fn finish(snap: &mut Snapshot, fetch: Fetch, outcome: Result<Vec<u8>, String>, now: Instant) {
    let took = now.saturating_duration_since(fetch.started);
    let bytes = fetch.session.received();
    let view = outcome.and_then(|body| envoy::parse_clusters(&body));
    apply(
        snap,
        &fetch.node,
        fetch.port,
        view,
        took,
        bytes,
        SystemTime::now(),
    );
    if bytes > TRIM_AFTER_BYTES {
        release_freed_memory();
    }
}

/// The body and its JSON tree (about 6 MB at peak for 1,000 hosts) are freed once a read is
/// applied, but glibc's allocator keeps the freed pages; hand them back, so the resident size
/// between cycles is what the agent holds, not its peak. It costs the next read the page
/// faults (measured with 1,000 hosts: RSS between cycles 9.3 MB -> 4.3 MB, CPU per read
/// +~5 ms), so only after reads larger than [`TRIM_AFTER_BYTES`].
fn release_freed_memory() {
    // SAFETY: malloc_trim takes no pointers and only returns free memory to the system; it is
    // safe to call at any time.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Records the result of one node's read in the snapshot and re-derives its routes'
/// mismatches. A result for a node no longer configured (the routes changed) is dropped.
pub fn apply(
    snap: &mut Snapshot,
    node: &str,
    port: u16,
    view: Result<View, String>,
    took: Duration,
    bytes: usize,
    wall: SystemTime,
) {
    snap.touch(); // the fields below are written directly (the /metrics cache follows)
    let Some(n) = snap
        .envoy_nodes
        .iter_mut()
        .find(|n| n.node == node && n.admin_port == port)
    else {
        return;
    };
    n.fetch_duration = Some(took);
    let was = n.up;
    match &view {
        Ok(v) => {
            n.up = Some(true);
            n.last_error = None;
            n.body_bytes = bytes;
            n.hosts = v.hosts.len();
            if was != Some(true) {
                log::info!(
                    "envoy admin of node {node} (127.0.0.1:{port}) is up: {} hosts in {} clusters, {bytes} bytes in {took:.1?}",
                    v.hosts.len(),
                    v.clusters.len()
                );
            }
        }
        Err(e) => {
            n.up = Some(false);
            n.errors_total += 1;
            n.last_error = Some(e.clone());
            if was != Some(false) {
                log::warn!(
                    "envoy admin of node {node} (127.0.0.1:{port}) failed: {e}; Envoy's view of its routes is unknown until it answers"
                );
            } else {
                log::debug!("envoy admin read of node {node} failed again: {e}");
            }
        }
    }
    for i in 0..snap.routes.len() {
        let state = &mut snap.routes[i];
        if state.route.node != node || state.route.admin_port != Some(port) {
            continue;
        }
        state.envoy = match &view {
            Ok(v) => {
                let probed = state
                    .last
                    .as_ref()
                    .and_then(|(r, _)| r.address)
                    .map(|a| a.ip());
                envoy::match_route(v, &state.route, probed)
            }
            Err(_) => None,
        };
        if let Some(change) = snap.refresh_mismatch(i, wall) {
            log_mismatch(&snap.routes[i], change);
        }
    }
}

/// Makes `snap.envoy_nodes` one entry per (node, admin port) of the routes, in route order,
/// keeping the state of entries that stay.
fn sync_nodes(snap: &mut Snapshot) {
    snap.touch();
    let mut wanted: Vec<(&str, u16)> = Vec::new();
    for s in &snap.routes {
        if let Some(port) = s.route.admin_port {
            let key = (s.route.node.as_str(), port);
            if !wanted.contains(&key) {
                wanted.push(key);
            }
        }
    }
    let same = wanted.len() == snap.envoy_nodes.len()
        && wanted
            .iter()
            .zip(&snap.envoy_nodes)
            .all(|((node, port), n)| n.node == *node && n.admin_port == *port);
    if same {
        return;
    }
    let mut old: HashMap<(String, u16), EnvoyNode> = snap
        .envoy_nodes
        .drain(..)
        .map(|n| ((n.node.clone(), n.admin_port), n))
        .collect();
    let nodes = wanted
        .into_iter()
        .map(|(node, port)| {
            old.remove(&(node.to_owned(), port)).unwrap_or(EnvoyNode {
                node: node.to_owned(),
                admin_port: port,
                up: None,
                errors_total: 0,
                last_error: None,
                fetch_duration: None,
                body_bytes: 0,
                hosts: 0,
            })
        })
        .collect();
    snap.envoy_nodes = nodes;
}

/// One log line when a mismatch starts and one when it ends.
pub fn log_mismatch(state: &RouteState, change: MismatchChange) {
    let r = &state.route;
    let cluster = state.envoy.as_ref().map_or("", |e| e.cluster.as_str());
    match change {
        MismatchChange::Started(m) => log::warn!(
            "views disagree on backend {}/{} ({}): {} (Envoy cluster '{cluster}'{})",
            r.node,
            r.name,
            r.backend,
            m.as_str(),
            match &state.envoy {
                Some(e) if e.flags != 0 =>
                    format!(", flags {}", e.flag_names().collect::<Vec<_>>().join(",")),
                _ => String::new(),
            }
        ),
        MismatchChange::Ended { was, lasted, known } => log::info!(
            "views agree again on backend {}/{} ({}) after {:.1}s of {}{}",
            r.node,
            r.name,
            r.backend,
            lasted.as_secs_f64(),
            was.as_str(),
            if known {
                ""
            } else {
                " (Envoy's view or the probe result is now unknown)"
            }
        ),
    }
}
