//! /metrics as exporters serve it: gzip when asked (decoded here by the system's `gzip`, not
//! by our own code), the cached body staying exact, the exporter conventions (`/-/healthy`,
//! `/-/ready`, `sigma_build_info` and `--version`, the process metrics). Loopback only.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// A raw request; returns (head, body bytes).
fn fetch(addr: SocketAddr, raw: &str) -> (String, Vec<u8>) {
    let buf = send(addr, raw.as_bytes());
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8(buf[..end].to_vec()).unwrap();
    (head, buf[end + 4..].to_vec())
}

fn gunzip(gz: &[u8]) -> String {
    let mut child = Command::new("gzip")
        .arg("-dc")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("the gzip command");
    child.stdin.take().unwrap().write_all(gz).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "gzip -dc refused the body");
    String::from_utf8(out.stdout).unwrap()
}

/// The lines before the process_* families (those change between two scrapes).
fn snapshot_part(text: &str) -> String {
    text.lines()
        .take_while(|l| !l.contains(" process_") && !l.starts_with("process_"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn gzip_when_asked_identity_otherwise_and_both_exact() {
    // Refused at once (an accepting listener nobody accepts on would fill its backlog).
    let port = closed_port();
    let lines: Vec<String> = (0..300)
        .map(|i| format!("n{} r{i} {} 127.0.0.1:{port}", i % 7, 10000 + i))
        .collect();
    let routes = write_routes("scrape-gzip", &lines);
    // A long interval: after the first cycle nothing changes, so both forms see one snapshot.
    let agent = Agent::probing(&routes, &["--health-probe-interval", "1h"]);
    agent.wait_cycles(1, Duration::from_secs(10));
    let ask = |accept: &str| {
        fetch(
            agent.http,
            &format!("GET /metrics HTTP/1.1\r\nHost: t\r\n{accept}Connection: close\r\n\r\n"),
        )
    };
    let (head, plain) = ask("");
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(!head.contains("Content-Encoding"), "{head}");
    assert!(head.contains("\r\nVary: Accept-Encoding"), "{head}");
    let plain = String::from_utf8(plain).unwrap();

    // What Prometheus sends.
    let (head, gz) = ask("Accept-Encoding: gzip\r\n");
    assert!(head.contains("\r\nContent-Encoding: gzip"), "{head}");
    assert!(
        head.contains(&format!("\r\nContent-Length: {}", gz.len())),
        "{head}"
    );
    assert!(
        gz.len() * 5 < plain.len(),
        "{} vs {}",
        gz.len(),
        plain.len()
    );
    let unzipped = gunzip(&gz);
    assert_eq!(snapshot_part(&unzipped), snapshot_part(&plain));
    assert!(unzipped.contains("\nprocess_resident_memory_bytes "));
    assert!(unzipped.ends_with('\n'));

    // q-values: refused or outweighed gzip gives identity.
    for accept in [
        "Accept-Encoding: gzip;q=0\r\n",
        "Accept-Encoding: gzip;q=0.5, identity\r\n",
        "Accept-Encoding: br\r\n",
    ] {
        let (head, body) = ask(accept);
        assert!(!head.contains("Content-Encoding"), "{accept}: {head}");
        assert_eq!(
            snapshot_part(&String::from_utf8(body).unwrap()),
            snapshot_part(&plain)
        );
    }
    // HEAD tells the gzip length without a body.
    let (head, body) = fetch(
        agent.http,
        "HEAD /metrics HTTP/1.1\r\nHost: t\r\nAccept-Encoding: gzip\r\nConnection: close\r\n\r\n",
    );
    assert!(
        body.is_empty() && head.contains("Content-Encoding: gzip"),
        "{head}"
    );

    // Each scrape reads the process figures afresh (not cached with the body): the CPU
    // counter never goes back and the figures are present every time.
    let cpu = |m: &str| sample(m, "process_cpu_seconds_total").expect("cpu seconds");
    let first = cpu(&gunzip(&ask("Accept-Encoding: gzip\r\n").1));
    let what = format!("process_cpu_seconds_total moves from {first}");
    agent.wait_until(Duration::from_secs(10), &what, || {
        // Burn a little of the agent's CPU with identity scrapes until the counter moves.
        for _ in 0..20 {
            let _ = ask("");
        }
        let now = cpu(&gunzip(&ask("Accept-Encoding: gzip\r\n").1));
        assert!(now >= first);
        (now > first).then_some(())
    });
}

#[test]
fn cached_body_follows_every_change() {
    let open = accepting();
    let port = open.local_addr().unwrap().port();
    let routes = write_routes("scrape-change", &[format!("n1 up 10001 127.0.0.1:{port}")]);
    let agent = Agent::probing(&routes, &["--health-probe-interval", "200ms"]);
    let gz = || {
        gunzip(
            &fetch(
                agent.http,
                "GET /metrics HTTP/1.1\r\nHost: t\r\nAccept-Encoding: gzip\r\nConnection: close\r\n\r\n",
            )
            .1,
        )
    };
    let up = series(
        "sigma_backend_reachable",
        "n1",
        "up",
        10001,
        &format!("127.0.0.1:{port}"),
    );
    agent.wait_until(
        Duration::from_secs(10),
        "the gzip form shows the route up",
        || (sample(&gz(), &up) == Some(1.0)).then_some(()),
    );
    // The cycle counter moves every 200 ms: successive gzip scrapes must see it move.
    let cycles = |m: &str| sample(m, "sigma_probe_cycles_total").unwrap();
    let before = cycles(&gz());
    agent.wait_until(
        Duration::from_secs(5),
        "the gzip form shows 2 more cycles",
        || (cycles(&gz()) >= before + 2.0).then_some(()),
    );
    // A route that goes away disappears from both forms.
    drop(open);
    routes.replace(&format!("n1 other 10002 127.0.0.1:{}\n", closed_port()));
    agent.wait_until(
        Duration::from_secs(10),
        "the route is gone from both forms",
        || (!gz().contains(&up) && !agent.metrics().contains(&up)).then_some(()),
    );
}

#[test]
fn healthy_ready_build_info_and_process_metrics() {
    let hole = blackhole();
    let routes = write_routes(
        "scrape-ready",
        &[format!("n1 slow 10001 127.0.0.1:{}", hole.port)],
    );
    // The first cycle waits for a probe that times out after 1 s: not ready until then.
    let agent = Agent::probing(&routes, &["--health-probe-timeout", "1s"]);
    assert_eq!(agent.get("/-/healthy").status, 200);
    let r = agent.get("/-/ready");
    assert_eq!(r.status, 503, "{r:?}");
    agent.wait_until(Duration::from_secs(5), "/-/ready answers 200", || {
        (agent.get("/-/ready").status == 200).then_some(())
    });
    let r = agent.get("/-/ready");
    assert_eq!(r.body, "sigma-agent-lite is Ready.\n");
    assert_eq!(
        agent.get("/-/healthy").body,
        "sigma-agent-lite is Healthy.\n"
    );

    let m = agent.metrics();
    let info = m
        .lines()
        .find(|l| l.starts_with("sigma_build_info{"))
        .expect("sigma_build_info");
    let version = Command::new(BIN).arg("--version").output().unwrap();
    let version = String::from_utf8(version.stdout).unwrap();
    // The same four facts in both places.
    let label = |name: &str| {
        let start = info.find(&format!("{name}=\"")).unwrap() + name.len() + 2;
        info[start..].split('"').next().unwrap().to_owned()
    };
    let (v, rev, features, rustc) = (
        label("version"),
        label("revision"),
        label("features"),
        label("rustc"),
    );
    assert_eq!(v, env!("CARGO_PKG_VERSION"));
    assert!(rev == "unknown" || rev.len() >= 7, "{info}");
    let want_features = if cfg!(feature = "tls") {
        "postgres,tls"
    } else if cfg!(feature = "postgres") {
        "postgres"
    } else {
        "none"
    };
    assert_eq!(features, want_features);
    assert!(rustc.starts_with("1."), "{info}");
    assert_eq!(
        version.trim(),
        format!("sigma-agent-lite {v} (revision {rev}, features {features}, rustc {rustc})")
    );
    for name in [
        "process_virtual_memory_bytes",
        "process_virtual_memory_max_bytes",
        "process_max_fds",
        "process_open_fds",
        "process_resident_memory_bytes",
    ] {
        let v = sample(&m, name).unwrap_or_else(|| panic!("{name} missing:\n{m}"));
        assert!(v > 0.0, "{name} {v}");
    }
    // Latencies carry at most microseconds: no float noise.
    let hist = m
        .lines()
        .filter(|l| {
            l.starts_with("sigma_backend_dns") || l.starts_with("sigma_probe_cycle_duration")
        })
        .collect::<Vec<_>>();
    for l in hist {
        let value = l.rsplit(' ').next().unwrap();
        let decimals = value.split_once('.').map_or(0, |(_, f)| f.len());
        assert!(decimals <= 6, "{l}");
    }
}
