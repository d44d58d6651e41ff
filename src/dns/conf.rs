//! resolv.conf and hosts files, and the search list they give a name.
//!
//! # Why
//! The agent resolves names itself (see `mod.rs`), so it reads the same two files glibc reads
//! and walks the search list in glibc's order; operators expect the agent to see what `getent
//! hosts` sees. Pure: text in, values (and warnings for bad lines) out; the bounded file reads
//! live in the [`super::Resolver`].
//!
//! # What
//! [`parse_resolv_conf`] (the subset described in `mod.rs`, limits clamped as glibc),
//! [`parse_hosts`] into [`Hosts`], [`candidates`]: the names to query for one name, and
//! `Walk`: a lookup's position in them (candidate, then `A` before `AAAA`) with glibc's rules
//! for going on (NXDOMAIN, NODATA, SERVFAIL) or stopping (timeout, error).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use super::cache::Cache;
use super::wire::{normalize_name, validate_name};
use super::{
    DnsFailure, QType, DEFAULT_ATTEMPTS, DEFAULT_NDOTS, DEFAULT_TIMEOUT, DNS_PORT, MAX_ATTEMPTS,
    MAX_NAMESERVERS, MAX_NDOTS, MAX_SEARCH_DOMAINS, MAX_TIMEOUT,
};

/// The supported subset of resolv.conf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvConf {
    pub nameservers: Vec<SocketAddr>,
    /// Lower case, no trailing dot.
    pub search: Vec<String>,
    pub ndots: usize,
    /// Per-try timeout.
    pub timeout: Duration,
    /// Rounds over the servers.
    pub attempts: u32,
}

impl Default for ResolvConf {
    /// glibc defaults: 127.0.0.1:53, no search list, ndots 1, timeout 5 s, attempts 2.
    fn default() -> Self {
        ResolvConf {
            nameservers: vec![SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), DNS_PORT)],
            search: Vec::new(),
            ndots: DEFAULT_NDOTS,
            timeout: DEFAULT_TIMEOUT,
            attempts: DEFAULT_ATTEMPTS,
        }
    }
}

fn strip_comment(line: &str) -> &str {
    match line.find(['#', ';']) {
        Some(i) => &line[..i],
        None => line,
    }
}

/// Parses resolv.conf text. Never fails: malformed lines are skipped with a
/// warning naming the line number.
pub fn parse_resolv_conf(text: &str) -> (ResolvConf, Vec<String>) {
    let mut conf = ResolvConf {
        nameservers: Vec::new(),
        ..ResolvConf::default()
    };
    let mut warnings = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line_no = index + 1;
        let mut words = strip_comment(raw).split_whitespace();
        let Some(keyword) = words.next() else {
            continue;
        };
        match keyword {
            "nameserver" => match words.next() {
                None => warnings.push(format!("line {line_no}: nameserver without address")),
                Some(text) => match text.parse::<IpAddr>() {
                    Err(_) => {
                        warnings.push(format!("line {line_no}: bad nameserver address {text:?}"))
                    }
                    Ok(_) if conf.nameservers.len() >= MAX_NAMESERVERS => warnings.push(format!(
                        "line {line_no}: more than {MAX_NAMESERVERS} nameservers, ignored"
                    )),
                    Ok(ip) => conf.nameservers.push(SocketAddr::new(ip, DNS_PORT)),
                },
            },
            "domain" | "search" => {
                let mut list = Vec::new();
                for domain in words {
                    if domain == "." {
                        continue;
                    }
                    if let Err(e) = validate_name(domain) {
                        warnings.push(format!("line {line_no}: bad domain {domain:?}: {e}"));
                    } else if list.len() >= MAX_SEARCH_DOMAINS {
                        warnings.push(format!(
                            "line {line_no}: more than {MAX_SEARCH_DOMAINS} search domains, {domain:?} ignored"
                        ));
                    } else {
                        list.push(normalize_name(domain));
                    }
                    if keyword == "domain" {
                        break;
                    }
                }
                if list.is_empty() {
                    warnings.push(format!("line {line_no}: {keyword} without a usable domain"));
                }
                conf.search = list;
            }
            "options" => {
                for option in words {
                    if let Err(msg) = apply_option(&mut conf, option) {
                        warnings.push(format!("line {line_no}: {msg}"));
                    }
                }
            }
            "sortlist" => {
                log::debug!("resolv.conf line {line_no}: sortlist not supported, ignored")
            }
            other => warnings.push(format!("line {line_no}: unknown keyword {other:?}")),
        }
    }
    if conf.nameservers.is_empty() {
        conf.nameservers = ResolvConf::default().nameservers;
    }
    (conf, warnings)
}

fn apply_option(conf: &mut ResolvConf, option: &str) -> Result<(), String> {
    let (name, value) = match option.split_once(':') {
        Some((name, value)) => (name, Some(value)),
        None => (option, None),
    };
    let number = || -> Result<u64, String> {
        match value.map(str::parse::<u64>) {
            Some(Ok(n)) => Ok(n),
            _ => Err(format!("bad option {option:?}")),
        }
    };
    match name {
        "ndots" => conf.ndots = (number()?.min(MAX_NDOTS as u64)) as usize,
        "timeout" => {
            conf.timeout = Duration::from_secs(number()?.clamp(1, MAX_TIMEOUT.as_secs()));
        }
        "attempts" => conf.attempts = number()?.clamp(1, u64::from(MAX_ATTEMPTS)) as u32,
        other => log::debug!("resolv.conf option {other:?} not supported, ignored"),
    }
    Ok(())
}

/// Parsed hosts file: name (lower case) to addresses in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hosts {
    names: HashMap<String, Vec<IpAddr>>,
}

impl Hosts {
    /// All addresses for `name` (case-insensitive, trailing dot ignored).
    pub fn lookup(&self, name: &str) -> Option<&[IpAddr]> {
        self.names.get(&normalize_name(name)).map(Vec::as_slice)
    }

    /// The address to use: the first IPv4 one, else the first IPv6 one.
    pub fn first(&self, name: &str) -> Option<IpAddr> {
        let addrs = self.lookup(name)?;
        addrs
            .iter()
            .find(|ip| ip.is_ipv4())
            .or_else(|| addrs.first())
            .copied()
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// Parses hosts-file text (`ADDR NAME [ALIAS...]`, `#` comments). Lines with a
/// bad address (including IPv6 scope ids) are skipped.
pub fn parse_hosts(text: &str) -> Hosts {
    let mut hosts = Hosts::default();
    for (index, raw) in text.lines().enumerate() {
        let line = match raw.find('#') {
            Some(i) => &raw[..i],
            None => raw,
        };
        let mut words = line.split_whitespace();
        let Some(addr_text) = words.next() else {
            continue;
        };
        let Ok(addr) = addr_text.parse::<IpAddr>() else {
            log::debug!("hosts line {}: bad address {addr_text:?}", index + 1);
            continue;
        };
        for name in words {
            let list = hosts.names.entry(normalize_name(name)).or_default();
            if !list.contains(&addr) {
                list.push(addr);
            }
        }
    }
    hosts
}

/// Names to query for `name`, in order, as glibc's `res_nsearch`: a trailing
/// dot means only the name itself; with at least `ndots` dots the name itself
/// comes first, then the search domains; otherwise the search domains first
/// and the name itself last. Lower case, no trailing dot; candidates too long
/// to query are left out.
pub fn candidates(name: &str, conf: &ResolvConf) -> Vec<String> {
    let lower = name.to_ascii_lowercase();
    let mut out = Vec::new();
    let mut push = |candidate: String| {
        if validate_name(&candidate).is_ok() {
            out.push(candidate);
        }
    };
    if let Some(absolute) = lower.strip_suffix('.') {
        push(absolute.to_string());
        return out;
    }
    let as_is_first = lower.matches('.').count() >= conf.ndots;
    if as_is_first {
        push(lower.clone());
    }
    for domain in &conf.search {
        push(format!("{lower}.{domain}"));
    }
    if !as_is_first {
        push(lower);
    }
    out
}

// ---------------------------------------------------------------------------
// Walk: a lookup's position in the search list (candidate, A then AAAA)
// ---------------------------------------------------------------------------

/// Position in the (candidate, A then AAAA) sequence and what was seen.
#[derive(Debug)]
pub(super) struct Walk {
    pub(super) candidates: Vec<String>,
    index: usize,
    qtype: QType,
    /// Some candidate exists but had no address of the type asked.
    nodata: bool,
    servfail: bool,
    /// Every address of the answer that ended the walk (the first is the result).
    pub(super) answer: Vec<IpAddr>,
}

impl Walk {
    pub(super) fn new(candidates: Vec<String>) -> Walk {
        Walk {
            candidates,
            index: 0,
            qtype: QType::A,
            nodata: false,
            servfail: false,
            answer: Vec::new(),
        }
    }

    pub(super) fn current(&self) -> Option<(&str, QType)> {
        self.candidates
            .get(self.index)
            .map(|name| (name.as_str(), self.qtype))
    }

    /// Applies the result for the current position; `Some` ends the lookup.
    /// As glibc: NXDOMAIN, NODATA and SERVFAIL go on to the next candidate,
    /// a timeout or error ends the search.
    pub(super) fn apply(
        &mut self,
        result: Result<Vec<IpAddr>, DnsFailure>,
    ) -> Option<Result<IpAddr, DnsFailure>> {
        match result {
            Ok(addrs) => match addrs.first() {
                Some(ip) => {
                    let ip = *ip;
                    self.answer = addrs;
                    return Some(Ok(ip));
                }
                None => self.no_address(),
            },
            Err(DnsFailure::NoAddress) => self.no_address(),
            Err(DnsFailure::NxDomain) => self.next_candidate(),
            Err(DnsFailure::ServFail) => {
                self.servfail = true;
                self.next_candidate();
            }
            Err(other) => return Some(Err(other)),
        }
        if self.index >= self.candidates.len() {
            return Some(Err(self.final_failure()));
        }
        None
    }

    fn no_address(&mut self) {
        self.nodata = true;
        match self.qtype {
            QType::A => self.qtype = QType::Aaaa,
            QType::Aaaa => self.next_candidate(),
        }
    }

    fn next_candidate(&mut self) {
        self.index += 1;
        self.qtype = QType::A;
    }

    pub(super) fn final_failure(&self) -> DnsFailure {
        if self.nodata {
            DnsFailure::NoAddress
        } else if self.servfail {
            DnsFailure::ServFail
        } else {
            DnsFailure::NxDomain
        }
    }

    /// Advances over cached results; `None` means the current position
    /// needs a network query.
    pub(super) fn skip_cached(
        &mut self,
        cache: &mut Cache,
        now: Instant,
    ) -> Option<Result<IpAddr, DnsFailure>> {
        loop {
            let Some((name, qtype)) = self.current() else {
                return Some(Err(self.final_failure()));
            };
            let cached = cache.get(name, qtype, now)?;
            if let Some(done) = self.apply(cached) {
                return Some(done);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::testkit::*;
    use std::net::Ipv6Addr;

    // -- resolv.conf, hosts, candidates ---------------------------------------

    #[test]
    fn resolv_conf_full() {
        let text = "# comment\n\
                    ; other comment\n\
                    nameserver 10.0.0.1\n\
                    nameserver 2001:db8::53 # trailing\n\
                    search Svc.Cluster.Local cluster.local.\n\
                    options ndots:5 timeout:2 attempts:3 rotate edns0\n";
        let (conf, warnings) = parse_resolv_conf(text);
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(
            conf.nameservers,
            vec![
                "10.0.0.1:53".parse::<SocketAddr>().unwrap(),
                "[2001:db8::53]:53".parse::<SocketAddr>().unwrap()
            ]
        );
        assert_eq!(conf.search, vec!["svc.cluster.local", "cluster.local"]);
        assert_eq!(
            (conf.ndots, conf.timeout, conf.attempts),
            (5, Duration::from_secs(2), 3)
        );
    }

    #[test]
    fn resolv_conf_defaults_and_domain() {
        let (conf, warnings) = parse_resolv_conf("");
        assert!(warnings.is_empty());
        assert_eq!(conf, ResolvConf::default());
        assert_eq!(
            conf.nameservers,
            vec!["127.0.0.1:53".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(
            (conf.ndots, conf.timeout, conf.attempts),
            (1, Duration::from_secs(5), 2)
        );

        // Last of search/domain wins; domain takes one name.
        let (conf, _) = parse_resolv_conf("search a.com b.com\ndomain c.com d.com\n");
        assert_eq!(conf.search, vec!["c.com"]);
        let (conf, _) = parse_resolv_conf("domain c.com\nsearch a.com b.com\n");
        assert_eq!(conf.search, vec!["a.com", "b.com"]);
    }

    #[test]
    fn resolv_conf_malformed_lines() {
        let text = "nameserver\n\
                    nameserver not-an-ip\n\
                    nameserver 10.0.0.1\n\
                    nameserver 10.0.0.2\n\
                    nameserver 10.0.0.3\n\
                    nameserver 10.0.0.4\n\
                    nameserver fe80::1%eth0\n\
                    options ndots:x timeout: attempts:99 ndots:99 timeout:0\n\
                    frobnicate yes\n\
                    search\n\
                    search a..b ok.com\n\
                    sortlist 10.0.0.0/8\n";
        let (conf, warnings) = parse_resolv_conf(text);
        assert_eq!(conf.nameservers.len(), 3);
        assert_eq!(conf.attempts, MAX_ATTEMPTS);
        assert_eq!(conf.ndots, MAX_NDOTS);
        assert_eq!(conf.timeout, Duration::from_secs(1));
        assert_eq!(conf.search, vec!["ok.com"]);
        let expect_lines = [1, 2, 6, 7, 8, 8, 9, 10, 11];
        let got: Vec<usize> = warnings
            .iter()
            .map(|w| {
                w.trim_start_matches("line ")
                    .split(':')
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap()
            })
            .collect();
        assert_eq!(got, expect_lines, "{warnings:#?}");
    }

    #[test]
    fn resolv_conf_limits_search() {
        let (conf, warnings) = parse_resolv_conf("search a b c d e f g\n");
        assert_eq!(conf.search.len(), MAX_SEARCH_DOMAINS);
        assert_eq!(warnings.len(), 1);
    }

    #[test]
    fn hosts_file() {
        let text = "127.0.0.1 localhost\n\
                    ::1 localhost ip6-localhost   # loopback\n\
                    # 10.0.0.9 commented.out\n\
                    \n\
                    10.1.2.3\tDB.Internal db\n\
                    2001:db8::7 v6only.internal\n\
                    garbage line here\n\
                    10.1.2.4 db\n";
        let hosts = parse_hosts(text);
        assert_eq!(hosts.first("LOCALHOST."), Some(v4(127, 0, 0, 1)));
        assert_eq!(hosts.lookup("localhost").unwrap().len(), 2);
        assert_eq!(
            hosts.first("ip6-localhost"),
            Some(IpAddr::V6(Ipv6Addr::LOCALHOST))
        );
        assert_eq!(hosts.first("db.internal"), Some(v4(10, 1, 2, 3)));
        assert_eq!(
            hosts.lookup("db").unwrap(),
            &[v4(10, 1, 2, 3), v4(10, 1, 2, 4)]
        );
        assert_eq!(hosts.first("v6only.internal"), "2001:db8::7".parse().ok());
        assert_eq!(hosts.first("commented.out"), None);
        assert_eq!(hosts.first("garbage"), None);
        assert_eq!(hosts.len(), 5);
    }

    #[test]
    fn search_candidates() {
        let conf = ResolvConf {
            search: vec!["a.com".to_string(), "b.com".to_string()],
            ..ResolvConf::default()
        };
        assert_eq!(
            candidates("Foo", &conf),
            vec!["foo.a.com", "foo.b.com", "foo"]
        );
        assert_eq!(
            candidates("foo.bar", &conf),
            vec!["foo.bar", "foo.bar.a.com", "foo.bar.b.com"]
        );
        assert_eq!(candidates("foo.", &conf), vec!["foo"]);
        let conf5 = ResolvConf {
            ndots: 5,
            ..conf.clone()
        };
        assert_eq!(
            candidates("svc.ns.svc", &conf5),
            vec!["svc.ns.svc.a.com", "svc.ns.svc.b.com", "svc.ns.svc"]
        );
        let conf0 = ResolvConf { ndots: 0, ..conf };
        assert_eq!(
            candidates("foo", &conf0),
            vec!["foo", "foo.a.com", "foo.b.com"]
        );
        assert_eq!(candidates("foo", &ResolvConf::default()), vec!["foo"]);
        // A candidate that would be too long is left out.
        let long = [
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(55),
        ]
        .join(".");
        assert_eq!(
            candidates(
                &long,
                &ResolvConf {
                    ndots: 9,
                    ..ResolvConf::default()
                }
            )
            .len(),
            1
        );
    }

    #[test]
    fn walk_order_and_final_failure() {
        let mut walk = Walk::new(vec!["x.a.com".into(), "x".into()]);
        assert_eq!(walk.apply(Err(DnsFailure::NxDomain)), None);
        assert_eq!(walk.current(), Some(("x", QType::A)));
        assert_eq!(walk.apply(Ok(vec![])), None);
        assert_eq!(walk.current(), Some(("x", QType::Aaaa)));
        assert_eq!(
            walk.apply(Err(DnsFailure::NoAddress)),
            Some(Err(DnsFailure::NoAddress))
        );

        let mut walk = Walk::new(vec!["x".into()]);
        assert_eq!(
            walk.apply(Err(DnsFailure::ServFail)),
            Some(Err(DnsFailure::ServFail))
        );
        let mut walk = Walk::new(vec!["x".into(), "y".into()]);
        assert_eq!(
            walk.apply(Err(DnsFailure::Timeout)),
            Some(Err(DnsFailure::Timeout))
        );
    }
}
