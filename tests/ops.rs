//! The operations files against the real binary: every metric the alert rules and the Grafana
//! dashboard name exists in a running agent's /metrics, so a rename breaks the build, not the
//! dashboard.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

/// A scrape of an agent that has probed one reachable and one refused backend, so that every
/// family has samples.
fn one_scrape_with_every_series(name: &str) -> String {
    let open = accepting();
    let port = open.local_addr().unwrap().port();
    let lines = [
        format!("n1 up 10001 127.0.0.1:{port}"),
        format!("n1 down 10002 127.0.0.1:{}", closed_port()),
    ];
    let routes = write_routes(name, &lines);
    let agent = Agent::probing(&routes, &["--health-probe-interval", "200ms"]);
    agent.wait_cycles(1, Duration::from_secs(5))
}

#[test]
fn every_metric_named_by_rules_and_dashboard_is_exported() {
    let out = Command::new("bash")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/metric-names.sh"
        ))
        .output()
        .expect("run scripts/metric-names.sh");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let names: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert!(names.len() >= 15, "too few names found: {names:?}");

    let m = one_scrape_with_every_series("ops-names");
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| !m.contains(&format!("# TYPE {n} ")))
        .collect();
    assert!(
        missing.is_empty(),
        "named by the rules or dashboard but not exported: {missing:?}"
    );
}

#[test]
fn promtool_check_metrics_finds_nothing_but_the_seeds_ms_name() {
    use std::io::Write;
    let m = one_scrape_with_every_series("ops-promtool");
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; .ci/run installs it)");
    child.stdin.take().unwrap().write_all(m.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let complaints: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        complaints,
        vec!["sigma_backend_probe_latency_ms metric names should not contain abbreviated units"],
        "promtool check metrics:\n{text}"
    );
}
