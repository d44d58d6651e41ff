//! The agent core, end to end: the real binary against loopback listeners the test opens.

mod common;

use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn each_outcome_shows_in_metrics() {
    let open = accepting();
    let open_port = open.local_addr().unwrap().port();
    let closed = closed_port();
    let hole = blackhole();
    let routes = write_routes(
        "outcomes",
        &[
            format!("n1 open 10001 127.0.0.1:{open_port}"),
            format!("n1 closed 10002 127.0.0.1:{closed}"),
            format!("n1 hole 10003 127.0.0.1:{}", hole.port),
            format!("n1 byname 10004 localhost:{open_port}"),
        ],
    );
    let agent = Agent::probing(
        &routes,
        &[
            "--health-probe-interval",
            "200ms",
            "--health-probe-timeout",
            "300ms",
        ],
    );
    let m = agent.wait_cycles(2, Duration::from_secs(10));
    let (open_b, closed_b) = (
        format!("127.0.0.1:{open_port}"),
        format!("127.0.0.1:{closed}"),
    );
    let (hole_b, by_name) = (
        format!("127.0.0.1:{}", hole.port),
        format!("localhost:{open_port}"),
    );
    // (route, listen port, backend, reachable, failures counted under this reason)
    for (route, lp, b, reachable, reason) in [
        ("open", 10001, &open_b, 1.0, None),
        ("closed", 10002, &closed_b, 0.0, Some("refused")),
        ("hole", 10003, &hole_b, 0.0, Some("timeout")),
        ("byname", 10004, &by_name, 1.0, None),
    ] {
        let reachable_series = series("sigma_backend_reachable", "n1", route, lp, b);
        assert_eq!(sample(&m, &reachable_series), Some(reachable), "{route}");
        if let Some(reason) = reason {
            let failed = sample(&m, &failures("n1", route, lp, b, reason));
            assert!(failed.unwrap() >= 2.0, "{route}: {m}");
        }
    }
    let latency = |route, lp, b| {
        sample(
            &m,
            &series("sigma_backend_probe_latency_ms", "n1", route, lp, b),
        )
    };
    let open_latency = latency("open", 10001, &open_b).unwrap();
    assert!(open_latency > 0.0 && open_latency < 300.0, "{open_latency}");
    assert_eq!(latency("closed", 10002, &closed_b), None);
    assert_eq!(sample(&m, "sigma_routes"), Some(4.0));
    assert_eq!(sample(&m, "sigma_health_probe_enabled"), Some(1.0));
    // Each cycle holds a 300 ms timeout, so cycles take longer than the 200 ms interval.
    assert!(
        sample(&m, "sigma_probe_cycle_overruns_total").unwrap() >= 1.0,
        "{m}"
    );
    assert!(sample(&m, "process_resident_memory_bytes").unwrap() > 0.0);
    assert!(sample(&m, "process_open_fds").unwrap() > 0.0);
    // State changes are logged once at info, with the reason.
    let log = agent.log();
    assert!(
        log.contains(&format!("backend n1/closed ({closed_b}) is down: refused")),
        "{log}"
    );
    assert_eq!(
        log.matches(&format!("backend n1/closed ({closed_b}) is down"))
            .count(),
        1,
        "logged once, not per probe:\n{log}"
    );
}

#[test]
fn timeout_above_three_seconds_is_clamped() {
    let hole = blackhole();
    let routes = write_routes("clamp", &[format!("n1 hole 10001 127.0.0.1:{}", hole.port)]);
    let started = Instant::now();
    let mut agent = Agent::probing(&routes, &["--health-probe-timeout", "10s"]);
    agent.wait_log("above the 3s maximum; using 3s", Duration::from_secs(5));
    let m = agent.wait_cycles(1, Duration::from_secs(8));
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(2900),
        "timed out after {took:?}, before 3s"
    );
    assert!(
        took < Duration::from_secs(6),
        "timed out after {took:?}, not clamped to 3s"
    );
    let d = sample(&m, "sigma_probe_cycle_duration_seconds").unwrap();
    assert!((2.9..3.5).contains(&d), "cycle took {d}s");
}

#[test]
fn label_values_are_escaped() {
    let open = accepting();
    let port = open.local_addr().unwrap().port();
    let routes = write_routes(
        "escape",
        &[format!("n1 we\"ird\\name 10001 127.0.0.1:{port}")],
    );
    let agent = Agent::probing(&routes, &[]);
    let m = agent.wait_cycles(1, Duration::from_secs(5));
    let want = format!(
        "sigma_backend_reachable{{node=\"n1\",route=\"we\\\"ird\\\\name\",listen_port=\"10001\",backend=\"127.0.0.1:{port}\"}} 1\n"
    );
    assert!(m.contains(&want), "{want}\n{m}");
}

#[test]
fn http_errors_and_keep_alive() {
    let agent = Agent::start(&[]);
    let a = agent.http;
    let r = agent.get("/healthz");
    assert_eq!((r.status, r.body.as_str()), (200, "ok\n"));
    assert!(agent.get("/").body.contains("/metrics"));
    assert_eq!(agent.get("/nope").status, 404);
    let r = request(
        a,
        "POST /metrics HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(r.status, 405);
    assert!(r.head.contains("Allow: GET, HEAD"), "{}", r.head);
    assert_eq!(request(a, "GARBAGE\r\n\r\n").status, 400);
    assert_eq!(
        request(a, "GET /metrics HTTP/1.1\r\n\r\n").status,
        400,
        "no Host"
    );
    let big = format!(
        "GET /metrics HTTP/1.1\r\nHost: t\r\nX: {}\r\n\r\n",
        "a".repeat(9000)
    );
    assert_eq!(request(a, &big).status, 431);
    let r = request(
        a,
        "HEAD /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    assert!(r
        .head
        .contains("Content-Type: text/plain; version=0.0.4; charset=utf-8"));
    assert!(r.body.is_empty());

    // Two requests on one keep-alive connection, the second pipelined behind the first.
    let buf = send(a, b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\nGET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    let text = String::from_utf8(buf).unwrap();
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 2, "{text}");
    // After errors, the agent still serves.
    assert_eq!(agent.get("/healthz").status, 200);
}

#[test]
fn scrape_does_not_wait_for_a_pending_probe() {
    let hole = blackhole();
    let routes = write_routes(
        "pending",
        &[format!("n1 hole 10001 127.0.0.1:{}", hole.port)],
    );
    let agent = Agent::probing(&routes, &[]);
    // The first cycle starts at once and its only probe stays pending for 3 s.
    agent.wait_until(Duration::from_secs(2), "the probe is pending", || {
        agent.connecting_to(hole.port).then_some(())
    });
    let pending = Instant::now();
    let mut best = Duration::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        let m = agent.metrics();
        best = best.min(t.elapsed());
        assert!(
            m.contains("sigma_probe_cycles_total 0"),
            "the probe should still be pending ({:?} after it was seen pending)",
            pending.elapsed()
        );
    }
    assert!(
        best < Duration::from_millis(50),
        "scrape took {best:?} while a probe was pending"
    );
}

#[test]
fn silent_clients_do_not_lock_out_a_scrape() {
    let agent = Agent::start(&[]);
    let silent: Vec<TcpStream> = (0..300)
        .map(|_| TcpStream::connect(agent.http).unwrap())
        .collect();
    agent.wait_until(
        Duration::from_secs(5),
        "the agent accepted them all",
        || (agent.accept_queue() == 0).then_some(()),
    );
    // The first scrape must evict a silent client to get in (else 503); timings on a shared
    // CI machine are noisy, so the best of three is held to the 100 ms.
    let mut best = Duration::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        let r = agent.get("/metrics");
        best = best.min(t.elapsed());
        assert_eq!(r.status, 200);
    }
    assert!(
        best < Duration::from_millis(100),
        "scrape took {best:?} with 300 silent clients"
    );
    drop(silent);
}

#[test]
fn sigterm_and_sigint_exit_zero_promptly_with_a_probe_pending() {
    for sig in [SIGTERM, SIGINT] {
        let hole = blackhole();
        let routes = write_routes("sig", &[format!("n1 hole 10001 127.0.0.1:{}", hole.port)]);
        let mut agent = Agent::probing(&routes, &[]);
        agent.wait_until(Duration::from_secs(2), "the probe is pending", || {
            agent.connecting_to(hole.port).then_some(())
        });
        let t = Instant::now();
        agent.signal(sig);
        assert_eq!(agent.wait_exit(Duration::from_secs(2)), Some(0));
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "exit took {:?}",
            t.elapsed()
        );
    }
}

#[test]
fn routes_file_changes_are_picked_up_and_invalid_edits_keep_the_old_set() {
    let open = accepting();
    let port = open.local_addr().unwrap().port();
    let routes = write_routes("edit", &[format!("n1 first 10001 127.0.0.1:{port}")]);
    let mut agent = Agent::probing(&routes, &["--health-probe-interval", "100ms"]);
    let b = format!("127.0.0.1:{port}");
    let reachable = |route, lp| series("sigma_backend_reachable", "n1", route, lp, &b);
    agent.wait_metrics(Duration::from_secs(5), |m| {
        m.contains(&reachable("first", 10001))
    });

    routes.replace(&format!("n1 second 10002 127.0.0.1:{port}\n"));
    let m = agent.wait_metrics(Duration::from_secs(5), |m| {
        m.contains(&reachable("second", 10002))
    });
    assert!(
        !m.contains("route=\"first\""),
        "a removed route disappears:\n{m}"
    );

    routes.replace("n1 broken\n");
    let m = agent.wait_metrics(Duration::from_secs(5), |m| {
        sample(m, "sigma_route_source_errors_total") == Some(1.0)
    });
    assert!(
        m.contains(&reachable("second", 10002)),
        "old set kept:\n{m}"
    );
    assert_eq!(sample(&m, "sigma_route_source_up"), Some(0.0));
    agent.wait_log(":1: expected 4 fields", Duration::from_secs(2));

    // SIGHUP re-reads at once, even with a long interval.
    routes.replace(&format!("n1 third 10003 127.0.0.1:{port}\n"));
    agent.signal(SIGHUP);
    let m = agent.wait_metrics(Duration::from_secs(5), |m| {
        m.contains(&reachable("third", 10003))
    });
    assert_eq!(sample(&m, "sigma_route_source_up"), Some(1.0));
}

#[test]
fn usage_and_runtime_errors_exit_with_clear_messages() {
    let run = |args: &[&str]| {
        let out = Command::new(BIN).args(args).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, err, _) = run(&["--health-probe-interval", "10ms"]);
    assert_eq!(code, Some(2));
    assert!(
        err.starts_with("error: invalid value '10ms' for --health-probe-interval"),
        "{err}"
    );
    let (code, err, _) = run(&["--frobnicate"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--frobnicate"), "{err}");
    let bad = TempFile::new(
        "bad-routes",
        "n1 r 10001 127.0.0.1:80\nn1 r2 10001 127.0.0.1:81\n",
    );
    let (code, err, _) = run(&["--routes-file", bad.path(), "--metrics-port", "0"]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains(&format!(
            "{}:2: node 'n1' listen port 10001 is already used",
            bad.path()
        )),
        "{err}"
    );
    let (code, err, _) = run(&["--routes-file", "/nonexistent/routes"]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("cannot read routes file /nonexistent/routes"),
        "{err}"
    );
    let taken = accepting();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, err, _) = run(&["--metrics-listen", &addr]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains(&format!("error: cannot listen on {addr}")),
        "{err}"
    );
    let (code, _, out) = run(&["--help"]);
    assert_eq!(code, Some(0));
    for flag in [
        "--health-probe-interval",
        "AGENT_HEALTH_PROBE_TIMEOUT",
        "--metrics-port",
        "RUST_LOG",
    ] {
        assert!(out.contains(flag), "--help lacks {flag}");
    }
}

#[test]
fn environment_fallbacks_apply() {
    let open = accepting();
    let port = open.local_addr().unwrap().port();
    let routes = write_routes("env", &[format!("n1 r 10001 127.0.0.1:{port}")]);
    let agent = Agent::start_with_env(
        &[],
        &[
            ("AGENT_HEALTH_PROBE", "true"),
            ("AGENT_HEALTH_PROBE_INTERVAL", "100ms"),
            ("AGENT_ROUTES_FILE", routes.path()),
        ],
    );
    let m = agent.wait_cycles(3, Duration::from_secs(5));
    assert_eq!(sample(&m, "sigma_probe_interval_seconds"), Some(0.1));
}

#[test]
fn without_health_probe_nothing_is_probed() {
    let open = accepting();
    let port = open.local_addr().unwrap().port();
    let routes = write_routes("off", &[format!("n1 r 10001 127.0.0.1:{port}")]);
    let mut agent = Agent::start(&["--routes-file", routes.path()]);
    agent.wait_log("health probing is off", Duration::from_secs(2));
    // Nothing is to happen: the window in which a probe would show is the test.
    hold_for(Duration::from_millis(200), || {
        let m = agent.metrics();
        assert_eq!(sample(&m, "sigma_health_probe_enabled"), Some(0.0));
        assert_eq!(sample(&m, "sigma_probe_cycles_total"), Some(0.0));
        assert_eq!(sample(&m, "sigma_routes"), Some(1.0));
        assert!(!m.contains("sigma_backend_reachable{"));
    });
}
