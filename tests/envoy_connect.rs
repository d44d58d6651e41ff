//! Probing as Envoy connects, in the real binary: `cluster_type=strict_dns` probes every
//! address of the answer, `logical_dns` the first, `connect_timeout` is the route's deadline.
//! Names resolve through the loopback DNS responder (`--dns-server`); every address is on
//! 127.0.0.0/8.

mod common;

use std::net::{Ipv4Addr, TcpListener};
use std::time::Duration;

use common::dns_server::{Behavior, DnsServer};
use common::*;

/// Listeners on 127.0.0.1 and 127.0.0.2 with one port number, free on 127.0.0.3 too (nothing
/// listens there, so a connect to it is refused).
fn two_of_three() -> (TcpListener, TcpListener, u16) {
    for _ in 0..50 {
        let a = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = a.local_addr().unwrap().port();
        let Ok(b) = TcpListener::bind(("127.0.0.2", port)) else {
            continue;
        };
        // Check the port is free on .3 (bind and drop): then connects there are refused.
        if TcpListener::bind(("127.0.0.3", port)).is_err() {
            continue;
        }
        return (a, b, port);
    }
    panic!("no port free on 127.0.0.1-3");
}

#[test]
fn strict_dns_probes_every_address_and_logical_dns_the_first() {
    let dns = DnsServer::start();
    let (_a, _b, port) = two_of_three();
    let three = vec![
        Ipv4Addr::new(127, 0, 0, 1),
        Ipv4Addr::new(127, 0, 0, 2),
        Ipv4Addr::new(127, 0, 0, 3),
    ];
    dns.set("pool.test", Behavior::v4(&three), 60);
    dns.set("two.test", Behavior::v4(&three[..2]), 60);
    let routes = write_routes(
        "strict-dns",
        &[
            format!("n1 strict 10001 pool.test:{port} cluster_type=strict_dns"),
            format!("n1 logical 10002 pool.test:{port} cluster_type=logical_dns"),
            format!("n1 plain 10003 pool.test:{port}"),
            format!("n1 both 10004 two.test:{port} cluster_type=strict_dns connect_timeout=1s"),
        ],
    );
    let agent = Agent::probing(&routes, &["--health-probe-interval", "300ms", &dns.flag()]);
    let m = agent.wait_cycles(2, Duration::from_secs(10));
    let b = format!("pool.test:{port}");
    let two = format!("two.test:{port}");
    // (route, listen port, backend, reachable, addresses, addresses reachable)
    for (route, lp, backend, reachable, addresses, answered) in [
        // strict_dns: three addresses, two answered, so the route is down (Envoy would send a
        // third of its connections to the closed one).
        ("strict", 10001, &b, 0.0, Some(3.0), Some(2.0)),
        // logical_dns and no type: the first address only, which listens.
        ("logical", 10002, &b, 1.0, None, None),
        ("plain", 10003, &b, 1.0, None, None),
        // strict_dns with every address listening is up, 2 of 2.
        ("both", 10004, &two, 1.0, Some(2.0), Some(2.0)),
    ] {
        let value = |name| sample(&m, &series(name, "n1", route, lp, backend));
        assert_eq!(
            value("sigma_backend_reachable"),
            Some(reachable),
            "{route}: {m}"
        );
        assert_eq!(value("sigma_backend_addresses"), addresses, "{route}: {m}");
        let reachable_addresses = value("sigma_backend_addresses_reachable");
        assert_eq!(reachable_addresses, answered, "{route}: {m}");
    }
    let refused = failures("n1", "strict", 10001, &b, "refused");
    assert!(sample(&m, &refused).unwrap_or(0.0) >= 1.0, "{m}");
    // The log names the address that failed and the count.
    let log = agent.log();
    assert!(
        log.contains("2 of 3 addresses answered; 127.0.0.3:"),
        "{log}"
    );
}

#[test]
fn connect_timeout_is_the_route_deadline() {
    let hole = blackhole();
    let routes = write_routes(
        "connect-timeout",
        &[format!(
            "n1 slow 10001 127.0.0.1:{} connect_timeout=300ms",
            hole.port
        )],
    );
    // The agent's own timeout is 3 s; the route's 300 ms must win.
    let flags = [
        "--health-probe-interval",
        "200ms",
        "--health-probe-timeout",
        "3s",
    ];
    let agent = Agent::probing(&routes, &flags);
    let m = agent.wait_cycles(2, Duration::from_secs(10));
    let b = format!("127.0.0.1:{}", hole.port);
    let timeout = failures("n1", "slow", 10001, &b, "timeout");
    assert!(sample(&m, &timeout).unwrap_or(0.0) >= 2.0, "{m}");
    let cycle = sample(&m, "sigma_probe_cycle_duration_seconds").unwrap();
    assert!(
        (0.25..1.0).contains(&cycle),
        "a cycle of one 300 ms timeout took {cycle}s:\n{m}"
    );
}

#[test]
fn a_bad_option_is_a_file_line_error() {
    let routes = write_routes(
        "bad-option",
        &[
            "n1 a 10001 127.0.0.1:1 admin_port=9901".to_string(),
            "n1 b 10002 127.0.0.1:2 cluster_type=eds".to_string(),
        ],
    );
    let out = std::process::Command::new(BIN)
        .args(["--health-probe", "--routes-file", routes.path()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{}:2: cluster_type 'eds'", routes.path())),
        "{err}"
    );
}
