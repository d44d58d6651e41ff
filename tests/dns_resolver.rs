//! Resolver against a DNS responder on 127.0.0.1, driven by a tiny mio loop.
//! All traffic stays on loopback: every resolver here uses `with_server`.

mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::dns_server::{Behavior, DnsServer};
use mio::{Events, Poll, Token};
use sigma_agent_lite::dns::{DnsFailure, Lookup, Resolver, ResolverConfig, Start, MIN_TTL};

/// The probe's deadline in the agent.
const CALLER_DEADLINE: Duration = Duration::from_secs(3);

struct Outcome {
    result: Result<IpAddr, DnsFailure>,
    /// False if `start` answered at once (literal, hosts, cache).
    network: bool,
    elapsed: Duration,
}

/// Resolves `name` the way the agent's loop would, with the clock shifted to
/// start at `base` (so tests can jump past TTLs), giving up after `deadline`.
fn resolve_at(resolver: &mut Resolver, name: &str, base: Instant, deadline: Duration) -> Outcome {
    let real_start = Instant::now();
    let clock = || base + real_start.elapsed();
    let mut lookup = match resolver.start(name, clock()) {
        Start::Done(result) => {
            return Outcome {
                result,
                network: false,
                elapsed: real_start.elapsed(),
            }
        }
        Start::Pending(lookup) => lookup,
    };
    Outcome {
        result: drive(&mut lookup, resolver, clock, base + deadline),
        network: true,
        elapsed: real_start.elapsed(),
    }
}

/// Pumps `lookup` on a mio loop of its own until it ends, or `give_up` (by `clock`) passes.
fn drive(
    lookup: &mut Lookup,
    resolver: &mut Resolver,
    clock: impl Fn() -> Instant,
    give_up: Instant,
) -> Result<IpAddr, DnsFailure> {
    let mut poll = Poll::new().expect("poll");
    let mut events = Events::with_capacity(8);
    lookup
        .register(poll.registry(), Token(7))
        .expect("register");
    loop {
        let now = clock();
        if now >= give_up {
            lookup.deregister(poll.registry());
            break Err(DnsFailure::Timeout);
        }
        let wake = lookup.next_deadline().min(give_up);
        poll.poll(&mut events, Some(wake.saturating_duration_since(now)))
            .expect("poll");
        let now = clock();
        if events.iter().any(|e| e.token() == Token(7)) {
            if let Some(result) = lookup.on_ready(resolver, poll.registry(), now) {
                break result;
            }
        }
        if now >= lookup.next_deadline() {
            if let Some(result) = lookup.on_timeout(resolver, poll.registry(), now) {
                break result;
            }
        }
    }
}

fn resolve(resolver: &mut Resolver, name: &str) -> Outcome {
    resolve_at(resolver, name, Instant::now(), CALLER_DEADLINE)
}

fn setup() -> (DnsServer, Resolver) {
    let server = DnsServer::start();
    let resolver = Resolver::new(ResolverConfig::with_server(server.addr()));
    (server, resolver)
}

/// A fresh server answering `name` with `behavior` (TTL 60 s), its resolver, and the outcome
/// of the first lookup of `name`.
fn first_lookup(name: &str, behavior: Behavior) -> (DnsServer, Resolver, Outcome) {
    let (server, mut resolver) = setup();
    server.set(name, behavior, 60);
    let outcome = resolve(&mut resolver, name);
    (server, resolver, outcome)
}

fn v4(a: u8, b: u8, c: u8, d: u8) -> Ipv4Addr {
    Ipv4Addr::new(a, b, c, d)
}

#[test]
fn a_record_then_cache_hit() {
    let (server, mut resolver) = setup();
    server.set(
        "a.test",
        Behavior::v4(&[v4(127, 0, 2, 10), v4(127, 0, 2, 11)]),
        60,
    );
    let first = resolve(&mut resolver, "A.Test");
    assert_eq!(first.result, Ok(IpAddr::V4(v4(127, 0, 2, 10))));
    assert!(first.network);
    assert_eq!(server.queries("a.test"), 1);
    eprintln!("loopback lookup (start to result): {:?}", first.elapsed);

    let second = resolve(&mut resolver, "a.test.");
    assert_eq!(second.result, first.result);
    assert!(!second.network, "second lookup is a cache hit");
    assert_eq!(server.queries("a.test"), 1);
}

#[test]
fn loopback_lookup_time() {
    let (server, mut resolver) = setup();
    let mut times = Vec::new();
    for i in 0..20 {
        let name = format!("host{i}.test");
        server.set(&name, Behavior::v4(&[v4(10, 0, 0, i)]), 60);
        let outcome = resolve(&mut resolver, &name);
        assert_eq!(outcome.result, Ok(IpAddr::V4(v4(10, 0, 0, i))));
        times.push(outcome.elapsed);
    }
    times.sort();
    eprintln!(
        "loopback lookups over 20 names: min {:?}, median {:?}, max {:?}",
        times[0], times[10], times[19]
    );
}

#[test]
fn aaaa_when_no_a() {
    let ip: Ipv6Addr = "2001:db8::42".parse().unwrap();
    let v6 = vec![ip];
    let (server, mut resolver, outcome) =
        first_lookup("v6.test", Behavior::Addrs { v4: vec![], v6 });
    assert_eq!(outcome.result, Ok(IpAddr::V6(ip)));
    assert_eq!(server.queries("v6.test"), 2, "A (NODATA) then AAAA");
    // Both answers are cached: no new query.
    assert!(!resolve(&mut resolver, "v6.test").network);
}

#[test]
fn no_address_at_all() {
    let (server, _, outcome) = first_lookup("empty.test", Behavior::v4(&[]));
    assert_eq!(outcome.result, Err(DnsFailure::NoAddress));
    assert_eq!(server.queries("empty.test"), 2);
    assert_eq!(DnsFailure::NoAddress.as_str(), "no address");
}

#[test]
fn cname_chain() {
    let chain = vec!["edge.cdn.test".into(), "pop1.cdn.test".into()];
    let addrs = vec![v4(198, 51, 100, 9)];
    let behavior = Behavior::CnameChain { chain, v4: addrs };
    let (server, _, outcome) = first_lookup("www.test", behavior);
    assert_eq!(outcome.result, Ok(IpAddr::V4(v4(198, 51, 100, 9))));
    assert_eq!(server.queries("www.test"), 1);
}

#[test]
fn nxdomain_and_servfail_are_negatively_cached() {
    let (server, mut resolver) = setup();
    server.set("sick.test", Behavior::ServFail, 0);
    assert_eq!(
        resolve(&mut resolver, "missing.test").result,
        Err(DnsFailure::NxDomain)
    );
    assert_eq!(
        resolve(&mut resolver, "sick.test").result,
        Err(DnsFailure::ServFail)
    );
    assert_eq!(
        (server.queries("missing.test"), server.queries("sick.test")),
        (1, 1)
    );

    let again = resolve(&mut resolver, "missing.test");
    assert_eq!(again.result, Err(DnsFailure::NxDomain));
    assert!(!again.network);
    let later = Instant::now() + MIN_TTL + Duration::from_secs(1);
    let expired = resolve_at(&mut resolver, "sick.test", later, CALLER_DEADLINE);
    assert_eq!(expired.result, Err(DnsFailure::ServFail));
    assert_eq!(server.queries("sick.test"), 2, "negative entry expired");
}

#[test]
fn silent_server_times_out_at_caller_deadline() {
    let (server, mut resolver) = setup();
    server.set("silent.test", Behavior::Silent, 0);
    let deadline = Duration::from_millis(300);
    let outcome = resolve_at(&mut resolver, "silent.test", Instant::now(), deadline);
    assert_eq!(outcome.result, Err(DnsFailure::Timeout));
    assert!(
        outcome.elapsed >= deadline && outcome.elapsed < deadline * 3,
        "{:?}",
        outcome.elapsed
    );
    assert_eq!(server.queries("silent.test"), 1);
}

#[test]
fn silent_server_exhausts_tries() {
    // With a 3 s caller deadline the resolver's own tries (2 x 1 s) end first.
    let (server, mut resolver) = setup();
    server.set("silent.test", Behavior::Silent, 0);
    let outcome = resolve(&mut resolver, "silent.test");
    assert_eq!(outcome.result, Err(DnsFailure::Timeout));
    assert_eq!(server.queries("silent.test"), 2, "one retransmission");
    assert!(outcome.elapsed < CALLER_DEADLINE);
}

/// Servers that lose, or race with, a first answer: the lookup still ends with the right
/// address, after this many queries.
#[test]
fn lost_and_spoofed_replies_still_give_the_right_address() {
    let ip = v4(10, 9, 9, 9);
    for (name, behavior, queries) in [
        // A lost datagram is retransmitted.
        ("lossy.test", Behavior::DropFirst { v4: vec![ip] }, 2),
        // A reply with the wrong id, or from the wrong address, is dropped; the right one is
        // taken (no new query).
        (
            "spoofed-id.test",
            Behavior::WrongIdFirst { v4: vec![ip] },
            1,
        ),
        (
            "spoofed-source.test",
            Behavior::WrongSourceFirst { v4: vec![ip] },
            1,
        ),
    ] {
        let (server, _, outcome) = first_lookup(name, behavior);
        assert_eq!(outcome.result, Ok(IpAddr::V4(ip)), "{name}");
        assert_eq!(server.queries(name), queries, "{name}");
    }
}

#[test]
fn truncated_udp_retried_over_tcp() {
    let addrs = vec![v4(203, 0, 113, 5)];
    let (server, _, outcome) = first_lookup("big.test", Behavior::TruncateUdp { v4: addrs });
    assert_eq!(outcome.result, Ok(IpAddr::V4(v4(203, 0, 113, 5))));
    assert_eq!((server.udp_queries(), server.tcp_queries()), (1, 1));
}

#[test]
fn compression_loop_reply_is_an_error() {
    let (server, mut resolver, outcome) = first_lookup("loop.test", Behavior::CompressionLoop);
    match &outcome.result {
        Err(DnsFailure::Error(msg)) => assert!(msg.contains("BadPointer"), "{msg}"),
        other => panic!("expected an error, got {other:?}"),
    }
    assert_eq!(server.queries("loop.test"), 2, "each try fails at once");
    assert!(outcome.elapsed < Duration::from_millis(500));
    // Errors are not cached.
    assert!(resolve(&mut resolver, "loop.test").network);
}

#[test]
fn ttl_expiry_causes_new_query() {
    let (server, mut resolver) = setup();
    server.set("short.test", Behavior::v4(&[v4(10, 3, 3, 3)]), 1);
    let t0 = Instant::now();
    assert!(resolve_at(&mut resolver, "short.test", t0, CALLER_DEADLINE).network);
    // TTL 1 s is clamped up to MIN_TTL: still cached 2 s later.
    let cached = resolve_at(
        &mut resolver,
        "short.test",
        t0 + Duration::from_secs(2),
        CALLER_DEADLINE,
    );
    assert!(!cached.network);
    assert_eq!(server.queries("short.test"), 1);
    let later = t0 + MIN_TTL + Duration::from_secs(1);
    let refreshed = resolve_at(&mut resolver, "short.test", later, CALLER_DEADLINE);
    assert!(refreshed.network);
    assert_eq!(refreshed.result, Ok(IpAddr::V4(v4(10, 3, 3, 3))));
    assert_eq!(server.queries("short.test"), 2);
}

#[test]
fn localhost_and_literals_need_no_query() {
    let (server, mut resolver) = setup();
    let outcome = resolve(&mut resolver, "localhost");
    assert_eq!(outcome.result, Ok(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    assert!(!outcome.network);
    let outcome = resolve(&mut resolver, "127.0.2.1");
    assert_eq!(outcome.result, Ok(IpAddr::V4(v4(127, 0, 2, 1))));
    let outcome = resolve(&mut resolver, "::1");
    assert_eq!(outcome.result, Ok(IpAddr::V6(Ipv6Addr::LOCALHOST)));
    assert!(!outcome.network);
    assert_eq!(server.udp_queries() + server.tcp_queries(), 0);
}

#[test]
fn invalid_name_fails_without_query() {
    let (server, mut resolver) = setup();
    let outcome = resolve(&mut resolver, "bad..name");
    assert!(matches!(outcome.result, Err(DnsFailure::Error(_))));
    assert!(!outcome.network);
    assert_eq!(server.udp_queries(), 0);
}

fn temp_path(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("sigma-dns-{}-{tag}", std::process::id()))
}

#[test]
fn hosts_file_reloaded_when_changed() {
    let (server, _) = setup();
    let hosts = temp_path("hosts");
    std::fs::write(&hosts, "127.7.7.7 custom.host\n").unwrap();
    let mut config = ResolverConfig::with_server(server.addr());
    config.hosts_path = hosts.clone();
    let mut resolver = Resolver::new(config);
    assert_eq!(
        resolve(&mut resolver, "custom.host").result,
        Ok(IpAddr::V4(v4(127, 7, 7, 7)))
    );
    assert!(!resolver.reload_if_changed());
    std::fs::write(&hosts, "127.8.8.8 custom.host other.host\n").unwrap();
    assert!(resolver.reload_if_changed());
    assert_eq!(
        resolve(&mut resolver, "custom.host").result,
        Ok(IpAddr::V4(v4(127, 8, 8, 8)))
    );
    assert_eq!(server.udp_queries(), 0);
    let _ = std::fs::remove_file(&hosts);
}

#[test]
fn system_mode_reads_and_reloads_resolv_conf() {
    // Only configuration is checked here: no lookup is started, so nothing is sent.
    let resolv = temp_path("resolv.conf");
    std::fs::write(&resolv, "nameserver 127.0.0.1\nsearch one.test\n").unwrap();
    let config = ResolverConfig {
        server: None,
        resolv_conf_path: resolv.clone(),
        hosts_path: temp_path("no-such-hosts"),
    };
    let mut resolver = Resolver::new(config);
    assert_eq!(resolver.resolv_conf().search, vec!["one.test"]);
    assert_eq!(
        resolver.warnings().len(),
        1,
        "missing hosts file: {:?}",
        resolver.warnings()
    );
    std::fs::write(
        &resolv,
        "nameserver 127.0.0.2\nsearch two.test three.test\nbogus\n",
    )
    .unwrap();
    assert!(resolver.reload_if_changed());
    assert_eq!(
        resolver.resolv_conf().search,
        vec!["two.test", "three.test"]
    );
    assert_eq!(
        resolver.resolv_conf().nameservers[0].ip(),
        IpAddr::V4(v4(127, 0, 0, 2))
    );
    assert!(resolver.warnings().iter().any(|w| w.contains("line 3")));
    let _ = std::fs::remove_file(&resolv);
}

/// `start_all` (strict_dns routes): every address of the answer, from the network (through
/// `Lookup::addresses`), from the cache and from the hosts file (IPv4 ones, as lookups prefer).
#[test]
fn start_all_gives_every_address_of_the_answer() {
    let (server, _) = setup();
    let three = vec![v4(127, 0, 0, 1), v4(127, 0, 0, 2), v4(127, 0, 0, 3)];
    server.set("pool.test", Behavior::v4(&three), 60);
    let hosts = temp_path("hosts-all");
    std::fs::write(
        &hosts,
        "127.9.9.1 multi.host\n::1 multi.host\n127.9.9.2 multi.host\n",
    )
    .unwrap();
    let mut config = ResolverConfig::with_server(server.addr());
    config.hosts_path = hosts.clone();
    let mut resolver = Resolver::new(config);
    let want: Vec<IpAddr> = three.iter().copied().map(IpAddr::V4).collect();
    // From the network: pending, then every address once it ends.
    let (start, all) = resolver.start_all("pool.test", Instant::now());
    assert!(all.is_empty());
    let Start::Pending(mut lookup) = start else {
        panic!("expected a network lookup");
    };
    let result = drive(
        &mut lookup,
        &mut resolver,
        Instant::now,
        Instant::now() + CALLER_DEADLINE,
    );
    assert_eq!(result, Ok(want[0]));
    assert_eq!(lookup.addresses(), want.as_slice());
    // From the cache: at once, all three.
    let (start, all) = resolver.start_all("pool.test", Instant::now());
    assert!(matches!(start, Start::Done(Ok(ip)) if ip == want[0]));
    assert_eq!(all, want);
    // From the hosts file: the IPv4 addresses, in file order.
    let (start, all) = resolver.start_all("multi.host", Instant::now());
    assert!(matches!(start, Start::Done(Ok(_))));
    assert_eq!(
        all,
        vec![IpAddr::V4(v4(127, 9, 9, 1)), IpAddr::V4(v4(127, 9, 9, 2))]
    );
    // A literal is its own one address.
    let (_, all) = resolver.start_all("127.0.0.5", Instant::now());
    assert_eq!(all, vec![IpAddr::V4(v4(127, 0, 0, 5))]);
    let _ = std::fs::remove_file(&hosts);
}
