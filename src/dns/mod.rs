//! Non-blocking DNS stub resolver for the single-threaded mio loop.
//!
//! # Why
//! The agent probes backends given as `host:port`, where `host` is usually a
//! DNS name. It runs one mio loop on one thread with no async runtime, so a
//! blocking `getaddrinfo(3)` (seconds when a server is slow or silent) would
//! freeze every probe and the metrics endpoint. Like nginx and HAProxy, the
//! agent therefore resolves names itself: queries go out over non-blocking
//! sockets that the caller's loop polls, and the caller bounds each lookup
//! with its own deadline.
//!
//! # What (one file per room)
//! * `wire.rs` (pure): [`build_query`], [`parse_response`], [`validate_name`].
//! * `conf.rs` (pure): [`parse_resolv_conf`], [`parse_hosts`], [`candidates`]
//!   and the walk of a lookup over them (A, then AAAA, then the next name).
//! * `cache.rs` (pure, `now` passed in): the TTL [`Cache`].
//! * `lookup.rs`: [`Session`], the sans-IO lookup of one name (datagrams and
//!   TCP bytes in; "send this query to that server over UDP", "open TCP to
//!   that server and write this", or the result out), and [`Lookup`], the
//!   thin driver that owns the socket of the current try and pumps it on the
//!   caller's loop (`register`, `on_ready`, `next_deadline`, `on_timeout`,
//!   `deregister`).
//! * This file: the limits, the shared types, and the [`Resolver`] holding
//!   configuration, `/etc/hosts` and the cache (its file reads are the only
//!   I/O outside the driver).
//!
//! Lookup order: IP literal, then `/etc/hosts` (name as given), then the
//! cache, then the network. On the network, for each search candidate in
//! glibc order, an `A` query is sent first and an `AAAA` query only if the
//! name has no `A` record (NODATA): IPv4 is preferred, the result is
//! deterministic, and dual-stack names cost one round trip. The first
//! address of the answer is returned. Each try uses a fresh UDP socket on an
//! OS-chosen ephemeral port and a random query id; replies from another
//! address, with another id or another question are dropped and the lookup
//! keeps waiting. A reply with TC=1 is retried over TCP to the same server.
//! Tries rotate over the servers, `attempts` rounds of `timeout` each.
//!
//! # resolv.conf support
//! Supported: `nameserver` (IPv4/IPv6, port 53, at most [`MAX_NAMESERVERS`]
//! as glibc), `search` and `domain` (the last one wins, as glibc),
//! `options ndots:N timeout:N attempts:N` (clamped as glibc). With no
//! `nameserver` line, 127.0.0.1:53 is used, as glibc does. Comments start
//! with `#` or `;`. Malformed lines yield warnings and are skipped.
//! Not supported (ignored): other options (`rotate`, `edns0`, `use-vc`,
//! `single-request`, `inet6`, ...), `sortlist`, IPv6 scope ids
//! (`fe80::1%eth0`), the `LOCALDOMAIN`/`RES_OPTIONS` environment variables,
//! the hostname's domain as implicit search list, and `nsswitch.conf` (the
//! order is always hosts file, then DNS).
//!
//! # Limits
//! Every limit is a `const` with its reason (`pub` below; `lookup.rs` has
//! its read chunk). Other known limits:
//! no EDNS0 (UDP replies are at most 512 bytes, larger ones come back with
//! TC=1 and go over TCP), no DNSSEC, CNAME targets missing from the answer
//! section are not chased (reported as "no address"), SERVFAIL from the
//! only server is final (with several servers the next one is tried), and
//! with a single `--dns-server` the per-try timeout is [`OVERRIDE_TIMEOUT`].
//! Reading `/etc/hosts` and `/etc/resolv.conf` is a plain (blocking) local
//! file read, bounded in size; it happens at start and in
//! [`Resolver::reload_if_changed`].
//!
//! Nothing here panics on any input: packets and files are untrusted.

mod cache;
mod conf;
mod lookup;
#[cfg(test)]
mod testkit;
mod wire;

pub use cache::Cache;
pub use conf::{candidates, parse_hosts, parse_resolv_conf, Hosts, ResolvConf};
pub use lookup::{Action, Lookup, Session};
pub use wire::{
    build_query, normalize_name, parse_response, validate_name, Answer, NameError, ParseError,
    Status,
};

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

/// DNS server port; resolv.conf has no syntax for another one.
pub const DNS_PORT: u16 = 53;
/// Size of the fixed DNS header (RFC 1035 4.1.1).
pub const HEADER_LEN: usize = 12;
/// Longest name in wire form, length bytes and final zero included (RFC 1035 2.3.4).
pub const MAX_NAME_LEN: usize = 255;
/// Longest label (RFC 1035 2.3.4); the two top bits of a length byte mark pointers.
pub const MAX_LABEL_LEN: usize = 63;
/// Most compression pointers followed while reading one name. A legal name has
/// at most 127 labels and a sane encoder emits one pointer per name, so 127 is
/// generous; it bounds the work a hostile packet can cause.
pub const MAX_POINTER_HOPS: usize = 127;
/// Longest CNAME chain followed inside one answer. Real chains are 1-3 long
/// (CDNs); the bound stops loops such as `a CNAME b`, `b CNAME a`.
pub const MAX_CNAME_CHAIN: usize = 16;
/// Most addresses kept from one answer: the agent uses only the first one and
/// this bounds the memory of each cache entry.
pub const MAX_ADDRS_PER_ANSWER: usize = 16;
/// Most `nameserver` lines used, as glibc (`MAXNS`).
pub const MAX_NAMESERVERS: usize = 3;
/// Most search domains used, as glibc's historical `MAXDNSRCH`; each one costs
/// up to two queries per lookup of a short name.
pub const MAX_SEARCH_DOMAINS: usize = 6;
/// Largest `ndots`, as glibc (`RES_MAXNDOTS`).
pub const MAX_NDOTS: usize = 15;
/// Largest per-try `timeout`, as glibc (`RES_MAXRETRANS`).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest `attempts`, as glibc (`RES_MAXRETRY`).
pub const MAX_ATTEMPTS: u32 = 5;
/// glibc default `ndots`.
pub const DEFAULT_NDOTS: usize = 1;
/// glibc default per-try timeout (`RES_TIMEOUT`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// glibc default number of rounds over the servers (`RES_DFLRETRY`).
pub const DEFAULT_ATTEMPTS: u32 = 2;
/// Per-try timeout with `--dns-server`: the probe deadline is 3 s, so a lost
/// datagram is retransmitted once within it instead of never (glibc's 5 s).
pub const OVERRIDE_TIMEOUT: Duration = Duration::from_secs(1);
/// Shortest time a positive answer is cached: a TTL of 0 or 1 would otherwise
/// mean one query per probe.
pub const MIN_TTL: Duration = Duration::from_secs(5);
/// Longest time a positive answer is cached, so that backends that move are
/// followed within minutes even if their TTL is a day.
pub const MAX_TTL: Duration = Duration::from_secs(300);
/// How long NXDOMAIN, SERVFAIL and "no address" are cached: short, so a name
/// that appears is picked up quickly, yet a broken name is not queried on
/// every probe.
pub const NEGATIVE_TTL: Duration = Duration::from_secs(5);
/// Most cache entries; beyond it the entry expiring soonest is evicted. The
/// agent probes a few hundred backends; at about 220 bytes per entry (measured
/// by `cache_memory_for_1000_names`) this bounds the cache near 1 MiB.
pub const MAX_CACHE_ENTRIES: usize = 4096;
/// UDP receive buffer. Without EDNS0 servers send at most 512 bytes; the
/// larger buffer tolerates servers that send more anyway.
pub const UDP_RECV_BUF: usize = 4096;
/// Most datagrams read per readiness event, so a flood of junk on the lookup's
/// port cannot starve the loop; the rest wait for the next event or try.
pub const MAX_DATAGRAMS_PER_EVENT: usize = 64;
/// Largest DNS message over TCP: the length prefix is 16 bits.
pub const MAX_TCP_MESSAGE: usize = 65535;
/// Largest resolv.conf read; real ones are a few hundred bytes.
pub const MAX_RESOLV_CONF_BYTES: u64 = 64 * 1024;
/// Largest hosts file read; ad-blocking hosts files reach a few MiB.
pub const MAX_HOSTS_BYTES: u64 = 8 * 1024 * 1024;

/// Query type; also the address family of a cache entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QType {
    A,
    Aaaa,
}

impl QType {
    /// The RR type code on the wire.
    pub fn code(self) -> u16 {
        match self {
            QType::A => 1,
            QType::Aaaa => 28,
        }
    }
}

/// Why a lookup gave no address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsFailure {
    NxDomain,
    ServFail,
    Timeout,
    NoAddress,
    Error(String),
    /// The agent could not open a socket for the query (out of descriptors, buffers or
    /// memory): its own failure, which says nothing about the name. Never cached.
    Local(String),
}

impl DnsFailure {
    /// Short label for metrics and logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            DnsFailure::NxDomain => "nxdomain",
            DnsFailure::ServFail => "servfail",
            DnsFailure::Timeout => "timeout",
            DnsFailure::NoAddress => "no address",
            DnsFailure::Error(_) => "error",
            DnsFailure::Local(_) => "local",
        }
    }
}

/// The agent itself is short of something a socket needs: descriptors (EMFILE for the
/// process, ENFILE for the system), buffers or memory. Not a fact about a name or a backend.
pub fn is_agent_shortage(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

impl fmt::Display for DnsFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DnsFailure::Error(msg) => write!(f, "error: {msg}"),
            DnsFailure::Local(msg) => write!(f, "local: {msg}"),
            other => f.write_str(other.as_str()),
        }
    }
}

// ---------------------------------------------------------------------------
// Resolver
// ---------------------------------------------------------------------------

/// Where the resolver gets its servers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolverConfig {
    /// `None`: servers, search list and options from `resolv_conf_path`.
    /// `Some` (`--dns-server`): only this server, no search list, ndots 1,
    /// timeout [`OVERRIDE_TIMEOUT`], attempts 2; resolv.conf is not read.
    pub server: Option<SocketAddr>,
    pub resolv_conf_path: PathBuf,
    /// Consulted in both modes.
    pub hosts_path: PathBuf,
}

impl ResolverConfig {
    /// `/etc/resolv.conf` and `/etc/hosts`.
    pub fn system() -> ResolverConfig {
        ResolverConfig {
            server: None,
            resolv_conf_path: PathBuf::from("/etc/resolv.conf"),
            hosts_path: PathBuf::from("/etc/hosts"),
        }
    }

    /// The `--dns-server ADDR:PORT` mode; `/etc/hosts` is still consulted.
    pub fn with_server(server: SocketAddr) -> ResolverConfig {
        ResolverConfig {
            server: Some(server),
            ..ResolverConfig::system()
        }
    }
}

/// Cheap PRNG (splitmix64) for query ids (and the database source's backoff jitter),
/// seeded from /dev/urandom.
#[derive(Debug)]
pub struct Rng {
    state: u64,
}

impl Rng {
    pub fn from_urandom() -> Rng {
        let mut seed = [0u8; 8];
        let read = File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut seed));
        let state = match read {
            Ok(()) => u64::from_ne_bytes(seed),
            Err(e) => {
                log::warn!("dns: cannot read /dev/urandom ({e}); query ids seeded from the clock");
                let nanos = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(0);
                nanos ^ (u64::from(std::process::id()) << 32)
            }
        };
        Rng { state }
    }

    /// A fixed seed, for tests that need known query ids.
    pub fn from_seed(seed: u64) -> Rng {
        Rng { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn next_id(&mut self) -> u16 {
        (self.next_u64() >> 48) as u16
    }
}

/// Size and modification time of a file; `None` if it cannot be stat'ed.
type FileStamp = Option<(Option<SystemTime>, u64)>;

fn stamp(path: &Path) -> FileStamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok(), meta.len()))
}

fn read_limited(path: &Path, limit: u64) -> io::Result<String> {
    let mut bytes = Vec::new();
    File::open(path)?.take(limit).read_to_end(&mut bytes)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Configuration, hosts and cache shared by all lookups.
#[derive(Debug)]
pub struct Resolver {
    config: ResolverConfig,
    conf: ResolvConf,
    hosts: Hosts,
    cache: Cache,
    rng: Rng,
    resolv_stamp: FileStamp,
    hosts_stamp: FileStamp,
    warnings: Vec<String>,
    /// Every address of the last answer `start_walk` gave at once, for `start_all`.
    last_answer: Vec<IpAddr>,
}

/// What [`Resolver::start`] gives.
#[derive(Debug)]
pub enum Start {
    /// Answered without waiting: IP literal, hosts file, cache, or a failure
    /// known at once (bad name, no socket).
    Done(Result<IpAddr, DnsFailure>),
    /// A query is in flight: register the lookup and drive it.
    Pending(Box<Lookup>),
}

impl Resolver {
    /// Reads the files named by `config`. Never fails: a missing or malformed
    /// file gives defaults and warnings (logged, and see [`Resolver::warnings`]).
    pub fn new(config: ResolverConfig) -> Resolver {
        let conf = match config.server {
            Some(server) => ResolvConf {
                nameservers: vec![server],
                timeout: OVERRIDE_TIMEOUT,
                ..ResolvConf::default()
            },
            None => ResolvConf::default(),
        };
        let mut resolver = Resolver {
            config,
            conf,
            hosts: Hosts::default(),
            cache: Cache::new(),
            rng: Rng::from_urandom(),
            resolv_stamp: None,
            hosts_stamp: None,
            warnings: Vec::new(),
            last_answer: Vec::new(),
        };
        resolver.load_hosts();
        if resolver.config.server.is_none() {
            resolver.load_resolv_conf();
        }
        resolver
    }

    fn load_hosts(&mut self) {
        self.hosts_stamp = stamp(&self.config.hosts_path);
        match read_limited(&self.config.hosts_path, MAX_HOSTS_BYTES) {
            Ok(text) => self.hosts = parse_hosts(&text),
            Err(e) => {
                let msg = format!("{}: {e}", self.config.hosts_path.display());
                log::warn!("dns: {msg}");
                self.warnings.push(msg);
                self.hosts = Hosts::default();
            }
        }
    }

    fn load_resolv_conf(&mut self) {
        let path = self.config.resolv_conf_path.clone();
        self.resolv_stamp = stamp(&path);
        let (conf, warnings) = match read_limited(&path, MAX_RESOLV_CONF_BYTES) {
            Ok(text) => parse_resolv_conf(&text),
            Err(e) => (ResolvConf::default(), vec![format!("cannot read: {e}")]),
        };
        for warning in warnings {
            let msg = format!("{}: {warning}", path.display());
            log::warn!("dns: {msg}");
            self.warnings.push(msg);
        }
        self.conf = conf;
        self.cache.clear();
    }

    /// Re-reads the hosts file and (in system mode) resolv.conf if their
    /// size or mtime changed; a new resolv.conf also empties the cache.
    /// Returns true if anything was re-read. Call it now and then (e.g. once
    /// per probe round): it costs one or two `stat` calls.
    pub fn reload_if_changed(&mut self) -> bool {
        let mut changed = false;
        if stamp(&self.config.hosts_path) != self.hosts_stamp {
            log::info!("dns: re-reading {}", self.config.hosts_path.display());
            self.warnings.clear();
            self.load_hosts();
            changed = true;
        }
        if self.config.server.is_none() && stamp(&self.config.resolv_conf_path) != self.resolv_stamp
        {
            log::info!("dns: re-reading {}", self.config.resolv_conf_path.display());
            self.load_resolv_conf();
            changed = true;
        }
        changed
    }

    /// Warnings from reading the files.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The effective resolv.conf (servers, search list, options).
    pub fn resolv_conf(&self) -> &ResolvConf {
        &self.conf
    }

    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    pub fn cache_mut(&mut self) -> &mut Cache {
        &mut self.cache
    }

    /// Starts resolving `name`: IP literal, hosts file, cache, then network.
    pub fn start(&mut self, name: &str, now: Instant) -> Start {
        self.start_all(name, now).0
    }

    /// As [`Resolver::start`], and when the answer is known at once, every address of it
    /// (at most [`MAX_ADDRS_PER_ANSWER`], in answer order; the first is the one `start`
    /// gives). For a pending lookup, [`Lookup::addresses`] gives them once it ends. This is
    /// what a strict_dns route needs: Envoy balances across every address of the answer.
    pub fn start_all(&mut self, name: &str, now: Instant) -> (Start, Vec<IpAddr>) {
        let name = name.trim();
        if let Ok(ip) = name.parse::<IpAddr>() {
            return (Start::Done(Ok(ip)), vec![ip]);
        }
        if let Some(ip) = self.hosts.first(name) {
            // As a lookup prefers A records: the IPv4 addresses when there are any.
            let all: Vec<IpAddr> = self
                .hosts
                .lookup(name)
                .unwrap_or_default()
                .iter()
                .filter(|a| a.is_ipv4() == ip.is_ipv4())
                .take(MAX_ADDRS_PER_ANSWER)
                .copied()
                .collect();
            log::debug!("dns: {name} -> {ip} from hosts file");
            return (Start::Done(Ok(ip)), all);
        }
        let start = self.start_walk(name, now);
        let all = match &start {
            Start::Done(Ok(_)) => std::mem::take(&mut self.last_answer),
            _ => Vec::new(),
        };
        (start, all)
    }

    fn start_walk(&mut self, name: &str, now: Instant) -> Start {
        if let Err(e) = validate_name(name) {
            return Start::Done(Err(DnsFailure::Error(format!(
                "invalid name {name:?}: {e}"
            ))));
        }
        Lookup::begin(self, name, now)
    }
}
