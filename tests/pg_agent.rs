//! The real binary with `--database-url` against a real PostgreSQL (and PgBouncer) started by
//! the test: registration, changes while running, an outage and recovery, a wrong password.
//! Every backend probed is on 127.0.0.1.
#![cfg(feature = "postgres")]

mod common;

use std::time::Duration;

use common::pg::{agent_args, reachable, rows, PgBouncer, PgServer, AGENT_PASSWORD, DB};
use common::*;

const WAIT: Duration = Duration::from_secs(10);

fn start(url: &str, hostname: &str) -> Agent {
    Agent::start(&agent_args(url, hostname, "200ms"))
}

#[test]
fn registration_late_then_routes_added_and_removed_while_running() {
    let pg = PgServer::shared();
    let mut db = pg.owner(DB);
    let open = accepting();
    let port = open.local_addr().unwrap().port();

    let mut agent = start(&pg.agent_url(DB), "late-vps");
    agent.wait_log("no vps row for host name 'late-vps'", WAIT);
    let m = agent.wait_metrics(WAIT, |m| {
        sample(m, "sigma_probe_cycles_total").unwrap_or(0.0) >= 2.0
    });
    assert_eq!(sample(&m, "sigma_vps_registered"), Some(0.0));
    assert_eq!(sample(&m, "sigma_route_source_up"), Some(1.0));
    assert_eq!(sample(&m, "sigma_routes"), Some(0.0));

    // The VPS is registered while the agent runs: found within an interval or two.
    let node = rows::active(
        &mut db,
        "late-vps",
        "layer4-01",
        &[("first", 10001, "127.0.0.1", i32::from(port))],
    );
    let m = agent.wait_metrics(WAIT, |m| {
        m.contains(&reachable("layer4-01", "first", 10001, port))
    });
    assert_eq!(
        sample(&m, &reachable("layer4-01", "first", 10001, port)),
        Some(1.0)
    );
    assert_eq!(sample(&m, "sigma_vps_registered"), Some(1.0));
    assert!(sample(&m, "sigma_route_fetch_duration_seconds").unwrap() > 0.0);

    // Added, edited and removed in the database: /metrics follows.
    rows::active_route(
        &mut db,
        &node,
        ("second", 10002, "127.0.0.1", i32::from(port)),
    );
    agent.wait_metrics(WAIT, |m| {
        m.contains(&reachable("layer4-01", "second", 10002, port))
    });
    db.execute(
        "DELETE FROM envoy_routes WHERE name = 'first' AND envoy_node_id = $1::text::uuid",
        &[&node],
    )
    .unwrap();
    let m = agent.wait_metrics(WAIT, |m| !m.contains("route=\"first\""));
    assert_eq!(sample(&m, "sigma_routes"), Some(1.0));
    db.execute(
        "UPDATE envoy_routes SET status = 'disabled' WHERE envoy_node_id = $1::text::uuid",
        &[&node],
    )
    .unwrap();
    let m = agent.wait_metrics(WAIT, |m| sample(m, "sigma_routes") == Some(0.0));
    assert!(!m.contains("sigma_backend_reachable{"), "{m}");
}

#[test]
fn duplicate_registration_probes_nothing_and_names_the_ids() {
    let pg = PgServer::shared();
    let mut db = pg.owner(DB);
    let a = rows::vps(&mut db, "twin-vps", Some("active"));
    let b = rows::vps(&mut db, "twin-vps", Some("provisioning"));
    let mut agent = start(&pg.agent_url(DB), "twin-vps");
    let log = agent.wait_log("2 vps rows for host name 'twin-vps'", WAIT);
    assert!(log.contains(&a) && log.contains(&b), "{log}");
    let m = agent.wait_metrics(WAIT, |m| {
        sample(m, "sigma_probe_cycles_total").unwrap_or(0.0) >= 1.0
    });
    assert_eq!(sample(&m, "sigma_vps_registered"), Some(0.0));
}

#[test]
fn outage_keeps_probing_known_routes_and_recovers_by_itself() {
    let pg = PgServer::start();
    let open = rows::listening(&mut pg.owner(DB), "outage-vps", "layer4-01", "r");
    let port = open.local_addr().unwrap().port();

    let mut agent = start(&pg.agent_url(DB), "outage-vps");
    agent.wait_metrics(WAIT, |m| {
        m.contains(&reachable("layer4-01", "r", 10001, port))
    });
    pg.stop();
    let m = agent.wait_metrics(WAIT, |m| sample(m, "sigma_route_source_up") == Some(0.0));
    let cycles = sample(&m, "sigma_probe_cycles_total").unwrap();
    assert!(sample(&m, "sigma_route_source_errors_total").unwrap() >= 1.0);
    // Probing goes on with the routes already known.
    let m = agent.wait_metrics(WAIT, |m| {
        sample(m, "sigma_probe_cycles_total").unwrap() >= cycles + 3.0
    });
    assert_eq!(
        sample(&m, &reachable("layer4-01", "r", 10001, port)),
        Some(1.0)
    );
    assert_eq!(sample(&m, "sigma_routes"), Some(1.0));

    pg.start_again();
    // Reconnects back off from 1 s doubling; the recovery comes within a few seconds.
    let m = agent.wait_metrics(Duration::from_secs(20), |m| {
        sample(m, "sigma_route_source_up") == Some(1.0)
    });
    assert_eq!(sample(&m, "sigma_routes"), Some(1.0));
    agent.wait_log("route source is back", WAIT);
}

#[test]
fn wrong_password_is_a_clear_error_without_the_password() {
    let pg = PgServer::shared();
    let secret = "Wr0ng-Secret-77";
    let url = pg.agent_url(DB).replace(AGENT_PASSWORD, secret);
    let mut agent = start(&url, "any-vps");
    let log = agent.wait_log("password authentication failed", WAIT);
    assert!(
        !log.contains(secret),
        "the password leaked into the log:\n{log}"
    );
    let m = agent.metrics();
    assert!(!m.contains(secret));
    assert_eq!(sample(&m, "sigma_route_source_up"), Some(0.0));
}

#[test]
fn same_routes_through_pgbouncer_in_transaction_mode() {
    let pg = PgServer::shared();
    let bouncer = PgBouncer::start(&pg);
    let mut db = pg.owner(DB);
    let open = rows::listening(&mut db, "bouncer-vps", "layer4-09", "via-pool");
    let port = open.local_addr().unwrap().port();
    let agent = start(&bouncer.agent_url(DB), "bouncer-vps");
    let m = agent.wait_metrics(WAIT, |m| {
        sample(m, "sigma_probe_cycles_total").unwrap_or(0.0) >= 5.0
    });
    assert_eq!(
        sample(&m, &reachable("layer4-09", "via-pool", 10001, port)),
        Some(1.0)
    );
    assert_eq!(
        sample(&m, "sigma_route_source_errors_total"),
        Some(0.0),
        "{}",
        bouncer.log()
    );
}

#[test]
fn database_and_routes_file_together_is_a_usage_error() {
    let out = std::process::Command::new(BIN)
        .args([
            "--database-url",
            "postgresql://a@127.0.0.1/x",
            "--routes-file",
            "/dev/null",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("use one route source"), "{err}");
}

#[test]
fn database_host_name_is_resolved_by_the_agents_own_resolver() {
    use common::dns_server::{Behavior, DnsServer};
    let pg = PgServer::shared();
    let dns = DnsServer::start();
    dns.set(
        "db.test",
        Behavior::Addrs {
            v4: vec![std::net::Ipv4Addr::LOCALHOST],
            v6: vec![],
        },
        60,
    );
    let mut db = pg.owner(DB);
    let open = rows::listening(&mut db, "named-db-vps", "layer4-01", "r");
    let port = open.local_addr().unwrap().port();
    let url = pg.agent_url(DB).replace("@127.0.0.1:", "@db.test:");
    let dns_addr = dns.addr().to_string();
    let mut args = agent_args(&url, "named-db-vps", "200ms");
    args.extend(["--dns-server", &dns_addr]);
    let agent = Agent::start(&args);
    agent.wait_metrics(WAIT, |m| {
        m.contains(&reachable("layer4-01", "r", 10001, port))
    });
    assert!(dns.queries("db.test") >= 1);
}
