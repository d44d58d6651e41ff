//! Name resolution in the real binary: backends given by name, resolved through a DNS
//! responder the test runs on 127.0.0.1 (`--dns-server`), never the machine's resolver.

mod common;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use common::dns_server::{Behavior, DnsServer};
use common::*;

const LOOPBACK: Ipv4Addr = Ipv4Addr::LOCALHOST;

#[test]
fn names_resolve_on_the_loop_and_failures_are_reason_dns() {
    let dns = DnsServer::start();
    let open = accepting();
    let port = open.local_addr().unwrap().port();
    dns.set("up.test", Behavior::v4(&[LOOPBACK]), 60);
    dns.set(
        "alias.test",
        Behavior::CnameChain {
            chain: vec!["mid.test".into(), "end.test".into()],
            v4: vec![LOOPBACK],
        },
        60,
    );
    dns.set("gone.test", Behavior::NxDomain, 60);
    dns.set("broken.test", Behavior::ServFail, 60);
    dns.set("big.test", Behavior::TruncateUdp { v4: vec![LOOPBACK] }, 60);
    let routes = write_routes(
        "dns-names",
        &[
            format!("n1 up 10001 up.test:{port}"),
            format!("n1 alias 10002 alias.test:{port}"),
            format!("n1 gone 10003 gone.test:{port}"),
            format!("n1 broken 10004 broken.test:{port}"),
            format!("n1 big 10005 big.test:{port}"),
            format!("n1 literal 10006 127.0.0.1:{port}"),
            format!("n1 hosts 10007 localhost:{port}"),
        ],
    );
    let agent = Agent::probing(&routes, &["--health-probe-interval", "200ms", &dns.flag()]);
    let m = agent.wait_cycles(2, Duration::from_secs(10));
    // (route, listen port, name, reachable): the failed lookups are counted as reason dns.
    for (route, lp, host, up) in [
        ("up", 10001, "up.test", true),
        ("alias", 10002, "alias.test", true),
        ("big", 10005, "big.test", true),
        ("gone", 10003, "gone.test", false),
        ("broken", 10004, "broken.test", false),
    ] {
        let b = format!("{host}:{port}");
        let reachable = sample(&m, &series("sigma_backend_reachable", "n1", route, lp, &b));
        assert_eq!(reachable, Some(if up { 1.0 } else { 0.0 }), "{route}\n{m}");
        if up {
            let lookup = series("sigma_backend_dns_lookup_seconds", "n1", route, lp, &b);
            let took = sample(&m, &lookup).unwrap();
            assert!(took < 3.0, "{route}: {took}");
        } else {
            let failed = sample(&m, &failures("n1", route, lp, &b, "dns"));
            assert!(failed.unwrap() >= 1.0, "{route}\n{m}");
        }
    }
    // IP literals and /etc/hosts names are not looked up on the network; a literal has no
    // lookup time (a hosts name has one: it is a name).
    let (literal, hosts) = (format!("127.0.0.1:{port}"), format!("localhost:{port}"));
    for (route, lp, b) in [("literal", 10006, &literal), ("hosts", 10007, &hosts)] {
        let reachable = series("sigma_backend_reachable", "n1", route, lp, b);
        assert_eq!(sample(&m, &reachable), Some(1.0), "{route}");
    }
    let lookup = series(
        "sigma_backend_dns_lookup_seconds",
        "n1",
        "literal",
        10006,
        &literal,
    );
    assert!(!m.contains(&lookup), "{m}");
    assert_eq!(dns.queries("localhost"), 0);
    assert!(
        dns.tcp_queries() >= 1,
        "the truncated answer was retried over TCP"
    );
    // Answers are cached for their TTL: two cycles, one lookup of each name.
    assert_eq!(dns.queries("up.test"), 1, "cached for its TTL");
}

#[test]
fn a_silent_name_server_ends_the_probe_at_its_deadline_and_scrapes_go_on() {
    let dns = DnsServer::start();
    dns.set("silent.test", Behavior::Silent, 60);
    let routes = write_routes(
        "dns-silent",
        &["n1 silent 10001 silent.test:443".to_string()],
    );
    let started = Instant::now();
    let agent = Agent::probing(&routes, &["--health-probe-timeout", "1500ms", &dns.flag()]);
    // While the lookup is pending, /metrics answers at once.
    agent.wait_until(Duration::from_secs(2), "the lookup is sent", || {
        (dns.queries("silent.test") >= 1).then_some(())
    });
    let mut best = Duration::MAX;
    let mut m = String::new();
    for _ in 0..3 {
        let t = Instant::now();
        m = agent.metrics();
        best = best.min(t.elapsed());
    }
    assert!(best < Duration::from_millis(100), "scrape took {best:?}");
    assert!(m.contains("sigma_probe_cycles_total 0"));
    let m = agent.wait_cycles(1, Duration::from_secs(5));
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1400),
        "gave up after {took:?}, before the deadline"
    );
    assert!(
        sample(
            &m,
            &failures("n1", "silent", 10001, "silent.test:443", "dns")
        ) == Some(1.0),
        "{m}"
    );
    assert!(
        dns.queries("silent.test") >= 2,
        "retransmitted within the deadline"
    );
}

#[test]
fn short_ttl_answers_are_asked_again_after_they_expire() {
    let dns = DnsServer::start();
    let open = accepting();
    let port = open.local_addr().unwrap().port();
    // TTL 1 s is raised to the 5 s floor: cycles every 1 s ask again after ~5 s, not every cycle.
    dns.set("short.test", Behavior::v4(&[LOOPBACK]), 1);
    let routes = write_routes("dns-ttl", &[format!("n1 short 10001 short.test:{port}")]);
    let agent = Agent::probing(&routes, &["--health-probe-interval", "1s", &dns.flag()]);
    agent.wait_cycles(3, Duration::from_secs(5));
    assert_eq!(dns.queries("short.test"), 1);
    agent.wait_until(Duration::from_secs(10), "the name is asked again", || {
        (dns.queries("short.test") >= 2).then_some(())
    });
}
