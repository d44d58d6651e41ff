//! Envoy's view beside ours, in the real binary: each node's admin interface is a fake on
//! 127.0.0.1 (`common::envoy_admin`) answering `admin.v3.Clusters` as Envoy does, or
//! misbehaving (closed, slow, huge, garbage, truncated); chunked answers are read too.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::envoy_admin::{FakeAdmin, FakeHost, Mode};
use common::*;

fn mismatch(node: &str, route: &str, lp: u16, backend: &str, direction: &str) -> String {
    let direction = format!(",direction=\"{direction}\"");
    labelled(
        "sigma_backend_view_mismatch",
        node,
        route,
        lp,
        backend,
        &direction,
    )
}

/// One `tools/call` over TCP; returns the answer line.
fn tool_call(addr: SocketAddr, args: &str) -> String {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(health_call(args).as_bytes()).unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    line
}

#[test]
fn mismatches_both_ways_in_metrics_mcp_and_log() {
    let a = accepting(); // Envoy excluded it, but it answers: envoy_unhealthy_agent_up
    let pa = a.local_addr().unwrap().port();
    let pb = closed_port(); // Envoy says healthy, nothing listens: the seed's case
    let c = accepting(); // both agree it is fine
    let pc = c.local_addr().unwrap().port();
    let pd = closed_port(); // Envoy has no such host: no verdict
    let hosts = vec![
        FakeHost::healthy("svc_static", "127.0.0.1", pa).failing("failed_active_health_check"),
        FakeHost::healthy("svc_static", "127.0.0.1", pb),
        FakeHost::healthy("other", "127.0.0.1", pc),
        FakeHost::healthy("v6", "::1", 443),
    ];
    let admin = FakeAdmin::start(Mode::Json, hosts.clone());
    let ap = admin.port();
    let routes = write_routes(
        "envoy-mismatch",
        &[
            format!("n1 a 10001 127.0.0.1:{pa} admin_port={ap} cluster_type=static"),
            format!("n1 b 10002 127.0.0.1:{pb} admin_port={ap}"),
            format!("n1 c 10003 127.0.0.1:{pc} admin_port={ap}"),
            format!("n1 d 10004 127.0.0.1:{pd} admin_port={ap}"),
            format!("n2 e 10001 127.0.0.1:{pc}"),
        ],
    );
    let flags = [
        "--health-probe-interval",
        "300ms",
        "--mcp-listen",
        "127.0.0.1:0",
    ];
    let mut agent = Agent::probing(&routes, &flags);
    let (ba, bb, bc, bd) = (
        format!("127.0.0.1:{pa}"),
        format!("127.0.0.1:{pb}"),
        format!("127.0.0.1:{pc}"),
        format!("127.0.0.1:{pd}"),
    );
    let m = agent.wait_cycles(2, Duration::from_secs(10));
    let v = |s: &str| sample(&m, s);
    assert_eq!(v("sigma_envoy_admin_up{node=\"n1\"}"), Some(1.0), "{m}");
    assert_eq!(v("sigma_envoy_admin_up{node=\"n2\"}"), None, "{m}");
    assert_eq!(
        v("sigma_envoy_admin_errors_total{node=\"n1\"}"),
        Some(0.0),
        "{m}"
    );
    assert!(v("sigma_envoy_admin_fetch_duration_seconds{node=\"n1\"}").unwrap() < 3.0);
    assert!(v("sigma_envoy_admin_response_bytes{node=\"n1\"}").unwrap() > 1000.0);
    let healthy =
        |r: &str, lp: u16, b: &str| v(&series("sigma_envoy_backend_healthy", "n1", r, lp, b));
    assert_eq!(healthy("a", 10001, &ba), Some(0.0), "{m}");
    assert_eq!(healthy("b", 10002, &bb), Some(1.0), "{m}");
    assert_eq!(healthy("c", 10003, &bc), Some(1.0), "{m}");
    assert_eq!(healthy("d", 10004, &bd), None, "{m}");
    let down = "envoy_healthy_agent_down";
    let up = "envoy_unhealthy_agent_up";
    assert_eq!(v(&mismatch("n1", "a", 10001, &ba, up)), Some(1.0), "{m}");
    assert_eq!(v(&mismatch("n1", "a", 10001, &ba, down)), Some(0.0), "{m}");
    assert_eq!(v(&mismatch("n1", "b", 10002, &bb, down)), Some(1.0), "{m}");
    assert_eq!(v(&mismatch("n1", "b", 10002, &bb, up)), Some(0.0), "{m}");
    assert_eq!(v(&mismatch("n1", "c", 10003, &bc, down)), Some(0.0), "{m}");
    assert_eq!(v(&mismatch("n1", "d", 10004, &bd, down)), None, "{m}");
    assert!(
        !m.lines()
            .any(|l| l.contains("view_mismatch") && l.contains("node=\"n2\"")),
        "n2 has no admin port: {m}"
    );
    // One log line per mismatch start.
    let log = agent.wait_log("views disagree on backend n1/b", Duration::from_secs(5));
    assert!(log.contains(&format!("views disagree on backend n1/b (127.0.0.1:{pb}): envoy_healthy_agent_down (Envoy cluster 'svc_static')")), "{log}");
    assert!(log.contains(&format!("views disagree on backend n1/a (127.0.0.1:{pa}): envoy_unhealthy_agent_up (Envoy cluster 'svc_static', flags failed_active_health_check)")), "{log}");
    assert_eq!(
        log.matches("views disagree on backend n1/b").count(),
        1,
        "{log}"
    );

    // MCP: the envoy object, the mismatch_only filter, the nodes' admin reads.
    let mcp = agent.mcp_addr();
    let all = tool_call(mcp, "{}");
    assert!(all.contains(r#""mismatches":2"#), "{all}");
    assert!(
        all.contains(&format!(
            r#""envoy_admin":[{{"node":"n1","admin_port":{ap},"up":true,"error":null,"#
        )),
        "{all}"
    );
    assert!(
        all.contains(r#""route":"e""#) && all.contains(r#""envoy":null"#),
        "{all}"
    );
    let only = tool_call(mcp, r#"{"mismatch_only":true}"#);
    assert!(
        only.contains(r#""route":"a""#) && only.contains(r#""route":"b""#),
        "{only}"
    );
    assert!(
        !only.contains(r#""route":"c""#) && !only.contains(r#""route":"d""#),
        "{only}"
    );
    assert!(
        only.contains(
            r#""envoy":{"healthy":true,"mismatch":"envoy_healthy_agent_down","mismatch_since":"#
        ),
        "{only}"
    );
    assert!(
        only.contains(r#""cluster":"svc_static","hosts":1,"eds_health_status":"HEALTHY","failing":["failed_active_health_check"]}"#),
        "{only}"
    );
    let both = tool_call(mcp, r#"{"mismatch_only":true,"unreachable_only":true}"#);
    assert!(
        both.contains(r#""route":"b""#) && !both.contains(r#""route":"a""#),
        "{both}"
    );
    let bad = tool_call(mcp, r#"{"mismatch_only":"yes"}"#);
    assert!(
        bad.contains(r#""isError":true"#) && bad.contains("mismatch_only must be a JSON boolean"),
        "{bad}"
    );

    // Envoy catches up: it excludes b too, and a passes its health checks again. Both
    // mismatches end, with one log line each.
    admin.set_hosts(vec![
        FakeHost::healthy("svc_static", "127.0.0.1", pa),
        FakeHost::healthy("svc_static", "127.0.0.1", pb).failing("failed_outlier_check"),
        FakeHost::healthy("other", "127.0.0.1", pc),
    ]);
    let log = agent.wait_log("views agree again on backend n1/b", Duration::from_secs(5));
    agent.wait_log("views agree again on backend n1/a", Duration::from_secs(5));
    assert!(
        log.contains("after ") && log.contains("s of envoy_healthy_agent_down"),
        "{log}"
    );
    let m = agent.wait_metrics(Duration::from_secs(5), |m| {
        sample(m, &mismatch("n1", "b", 10002, &bb, down)) == Some(0.0)
            && sample(m, &mismatch("n1", "a", 10001, &ba, up)) == Some(0.0)
    });
    assert_eq!(
        sample(
            &m,
            &series("sigma_envoy_backend_healthy", "n1", "b", 10002, &bb)
        ),
        Some(0.0)
    );
    assert!(tool_call(mcp, "{}").contains(r#""mismatches":0"#));
}

#[test]
fn hostile_admin_interfaces_cost_nothing_else() {
    let open = accepting();
    let port = open.local_addr().unwrap().port();
    let closed = closed_port();
    let backend = format!("127.0.0.1:{port}");
    let dead = format!("127.0.0.1:{closed}");
    // Every fake says both backends are healthy: had one of the bad answers been believed,
    // route `dead` would show a mismatch.
    let hosts = vec![
        FakeHost::healthy("c", "127.0.0.1", port),
        FakeHost::healthy("c", "127.0.0.1", closed),
    ];
    let slow = FakeAdmin::start(Mode::Slow(Duration::from_secs(10)), hosts.clone());
    let huge = FakeAdmin::start(Mode::Huge(100 << 20), hosts.clone());
    let garbage = FakeAdmin::start(Mode::Garbage, hosts.clone());
    let truncated = FakeAdmin::start(Mode::Truncated, hosts.clone());
    let chunked = FakeAdmin::start(Mode::Chunked(1000), hosts.clone());
    let nodes = [
        ("closed", closed_port()),
        ("slow", slow.port()),
        ("huge", huge.port()),
        ("garbage", garbage.port()),
        ("truncated", truncated.port()),
        ("chunked", chunked.port()),
    ];
    let mut lines = Vec::new();
    for (node, ap) in nodes {
        lines.push(format!("{node} up 10001 {backend} admin_port={ap}"));
        lines.push(format!("{node} dead 10002 {dead} admin_port={ap}"));
    }
    let routes = write_routes("envoy-hostile", &lines);
    let flags = [
        "--health-probe-interval",
        "1s",
        "--mcp-listen",
        "127.0.0.1:0",
    ];
    let mut agent = Agent::probing(&routes, &flags);
    let m = agent.wait_cycles(3, Duration::from_secs(15));
    for (node, _) in nodes {
        let up = sample(&m, &format!("sigma_envoy_admin_up{{node=\"{node}\"}}"));
        let want = if node == "chunked" { 1.0 } else { 0.0 };
        assert_eq!(up, Some(want), "{node}: {m}");
        // Probes are all there, whatever the admin interface did.
        let r = |route: &str, lp: u16, b: &str| {
            sample(&m, &series("sigma_backend_reachable", node, route, lp, b))
        };
        assert_eq!(r("up", 10001, &backend), Some(1.0), "{node}: {m}");
        assert_eq!(r("dead", 10002, &dead), Some(0.0), "{node}: {m}");
        let mm = sample(
            &m,
            &mismatch(node, "dead", 10002, &dead, "envoy_healthy_agent_down"),
        );
        if node == "chunked" {
            assert_eq!(mm, Some(1.0), "chunked is read: {m}");
        } else {
            assert_eq!(mm, None, "{node}: no false mismatch: {m}");
            let errors = sample(
                &m,
                &format!("sigma_envoy_admin_errors_total{{node=\"{node}\"}}"),
            );
            assert!(errors.unwrap() >= 2.0, "{node}: {m}");
        }
    }
    // The slow one is cut at the deadline (min(3 s, interval)), never waited for.
    let slow_took = sample(
        &m,
        "sigma_envoy_admin_fetch_duration_seconds{node=\"slow\"}",
    )
    .unwrap();
    assert!(
        (0.9..1.5).contains(&slow_took),
        "slow read took {slow_took}s"
    );
    let huge_took = sample(
        &m,
        "sigma_envoy_admin_fetch_duration_seconds{node=\"huge\"}",
    )
    .unwrap();
    assert!(huge_took < 1.0, "huge read took {huge_took}s");
    // The agent stays responsive while the slow and huge ones are in flight: scrapes and MCP
    // answer at once, every time.
    let mcp = agent.mcp_addr();
    for _ in 0..10 {
        let t = Instant::now();
        let _ = agent.metrics();
        let answer = tool_call(mcp, r#"{"mismatch_only":true}"#);
        assert!(answer.contains(r#""route":"dead""#), "{answer}");
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "took {:?}",
            t.elapsed()
        );
        // Spread over a second, so that some checks fall while the slow read is in flight.
        std::thread::sleep(Duration::from_millis(100));
    }
    let all = tool_call(mcp, "{}");
    assert!(
        all.contains(r#""node":"slow","admin_port":"#) && all.contains("no complete answer within"),
        "{all}"
    );
    assert!(all.contains("response body over 16777216 bytes"), "{all}");
    assert!(all.contains("not an HTTP/1.1 response"), "{all}");
    assert!(
        all.contains("connection closed before Content-Length bytes of body"),
        "{all}"
    );
    assert!(all.contains("Connection refused"), "{all}");
    let log = agent.log();
    assert_eq!(
        log.matches("envoy admin of node slow (127.0.0.1:").count(),
        1,
        "one warning, not one per cycle: {log}"
    );
    assert!(slow.requests() >= 2 && huge.requests() >= 1 && chunked.requests() >= 2);
}
