//! Name resolution in the real binary: backends given by name, resolved through a DNS
//! responder the test runs on 127.0.0.1 (`--dns-server`), never the machine's resolver.

mod common;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use common::dns_server::{Behavior, DnsServer};
use common::*;

const LOOPBACK: Ipv4Addr = Ipv4Addr::LOCALHOST;

fn series(name: &str, route: &str, listen_port: u16, backend: &str) -> String {
    format!("{name}{{node=\"n1\",route=\"{route}\",listen_port=\"{listen_port}\",backend=\"{backend}\"}}")
}

fn failures(route: &str, listen_port: u16, backend: &str, reason: &str) -> String {
    format!(
        "sigma_backend_probe_failures_total{{node=\"n1\",route=\"{route}\",listen_port=\"{listen_port}\",backend=\"{backend}\",reason=\"{reason}\"}}"
    )
}

#[test]
fn names_resolve_on_the_loop_and_failures_are_reason_dns() {
    let dns = DnsServer::start();
    let open = accepting();
    let port = open.local_addr().unwrap().port();
    dns.set(
        "up.test",
        Behavior::Addrs {
            v4: vec![LOOPBACK],
            v6: vec![],
        },
        60,
    );
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
    let dns_addr = dns.addr().to_string();
    let agent = Agent::start(&[
        "--health-probe",
        "--health-probe-interval",
        "200ms",
        "--dns-server",
        &dns_addr,
        "--routes-file",
        routes.path(),
    ]);
    let m = agent.wait_metrics(Duration::from_secs(10), |m| {
        m.contains("sigma_probe_cycles_total 2")
    });
    for (route, lp, host) in [
        ("up", 10001, "up.test"),
        ("alias", 10002, "alias.test"),
        ("big", 10005, "big.test"),
    ] {
        let b = format!("{host}:{port}");
        assert_eq!(
            sample(&m, &series("sigma_backend_reachable", route, lp, &b)),
            Some(1.0),
            "{route}\n{m}"
        );
        let took = sample(
            &m,
            &series("sigma_backend_dns_lookup_seconds", route, lp, &b),
        )
        .unwrap();
        assert!(took < 3.0, "{route}: {took}");
    }
    for (route, lp, host) in [
        ("gone", 10003, "gone.test"),
        ("broken", 10004, "broken.test"),
    ] {
        let b = format!("{host}:{port}");
        assert_eq!(
            sample(&m, &series("sigma_backend_reachable", route, lp, &b)),
            Some(0.0),
            "{route}"
        );
        assert!(
            sample(&m, &failures(route, lp, &b, "dns")).unwrap() >= 1.0,
            "{route}\n{m}"
        );
    }
    // IP literals and /etc/hosts names are not looked up on the network, and have no lookup time.
    let literal = format!("127.0.0.1:{port}");
    assert_eq!(
        sample(
            &m,
            &series("sigma_backend_reachable", "literal", 10006, &literal)
        ),
        Some(1.0)
    );
    assert!(!m.contains(&series(
        "sigma_backend_dns_lookup_seconds",
        "literal",
        10006,
        &literal
    )));
    let hosts = format!("localhost:{port}");
    assert_eq!(
        sample(
            &m,
            &series("sigma_backend_reachable", "hosts", 10007, &hosts)
        ),
        Some(1.0)
    );
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
    let dns_addr = dns.addr().to_string();
    let started = Instant::now();
    let agent = Agent::start(&[
        "--health-probe",
        "--health-probe-timeout",
        "1500ms",
        "--dns-server",
        &dns_addr,
        "--routes-file",
        routes.path(),
    ]);
    // While the lookup is pending, /metrics answers at once.
    std::thread::sleep(Duration::from_millis(200));
    let mut best = Duration::MAX;
    let mut m = String::new();
    for _ in 0..3 {
        let t = Instant::now();
        m = agent.metrics();
        best = best.min(t.elapsed());
    }
    assert!(best < Duration::from_millis(100), "scrape took {best:?}");
    assert!(m.contains("sigma_probe_cycles_total 0"));
    let m = agent.wait_metrics(Duration::from_secs(5), |m| {
        m.contains("sigma_probe_cycles_total 1")
    });
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1400),
        "gave up after {took:?}, before the deadline"
    );
    assert!(
        sample(&m, &failures("silent", 10001, "silent.test:443", "dns")) == Some(1.0),
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
    dns.set(
        "short.test",
        Behavior::Addrs {
            v4: vec![LOOPBACK],
            v6: vec![],
        },
        1,
    );
    let routes = write_routes("dns-ttl", &[format!("n1 short 10001 short.test:{port}")]);
    let dns_addr = dns.addr().to_string();
    let agent = Agent::start(&[
        "--health-probe",
        "--health-probe-interval",
        "1s",
        "--dns-server",
        &dns_addr,
        "--routes-file",
        routes.path(),
    ]);
    agent.wait_metrics(Duration::from_secs(5), |m| {
        m.contains("sigma_probe_cycles_total 3")
    });
    assert_eq!(dns.queries("short.test"), 1);
    agent.wait_metrics(Duration::from_secs(10), |_| dns.queries("short.test") >= 2);
}
