//! TLS to a real PostgreSQL (tests/common/pg_tls.rs: `ssl = on`, certificates made by the
//! test): every sslmode against a server with TLS and one without, a right CA, a wrong CA, a
//! name the certificate does not list, and the real binary probing with verify-full.
#![cfg(feature = "tls")]

mod common;

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use common::pg::{agent_args, reachable, rows, shared, Driven, PgServer, AGENT_PASSWORD, DB};
use common::pg_tls::{uses_tls, TlsServer};
use common::*;

use sigma_agent_lite::source_pg::{Fetch, PgSource, BACKOFF_MIN};

const WAIT: Duration = Duration::from_secs(10);

/// One TLS server for the tests of this binary (each uses its own hostnames).
fn tls_server() -> Arc<TlsServer> {
    static SHARED: Mutex<Weak<TlsServer>> = Mutex::new(Weak::new());
    shared(&SHARED, TlsServer::start)
}

/// A registered VPS with one route to 127.0.0.1:`port`.
fn register(pg: &PgServer, hostname: &str, port: u16) {
    let mut db = pg.owner(DB);
    rows::active(
        &mut db,
        hostname,
        "layer4-01",
        &[("r", 10001, "127.0.0.1", i32::from(port))],
    );
}

fn fetch_ok(url: &str, hostname: &str) -> Driven {
    let mut src = Driven::new(PgSource::new(url, hostname, None).unwrap());
    match src.fetch(Instant::now()) {
        Fetch::Routes(routes) => assert_eq!(routes.len(), 1, "{routes:?}"),
        other => panic!("{url}: expected routes, got {other:?}"),
    }
    src
}

fn fetch_err(url: &str) -> String {
    let mut src = Driven::new(PgSource::new(url, "any-vps", None).unwrap());
    let t0 = Instant::now();
    let e = match src.fetch(t0) {
        Fetch::Failed(e) => e,
        other => panic!("{url}: expected a failure, got {other:?}"),
    };
    assert!(!e.contains(AGENT_PASSWORD), "password in {e}");
    // Retried like any other outage: backoff, then another attempt that fails the same way.
    assert_eq!(src.fetch(t0), Fetch::Backoff);
    let due = src.due_within(BACKOFF_MIN);
    match src.fetch(due) {
        Fetch::Failed(again) => assert_eq!(again, e),
        other => panic!("{url}: expected a failure again, got {other:?}"),
    }
    e
}

/// Whether a fetch from `url` (whose `application_name` is `app`) went over TLS, as `pg`
/// sees it while the connection is still open.
fn fetch_encrypted(pg: &PgServer, url: &str, hostname: &str, app: &str) -> bool {
    let src = fetch_ok(url, hostname);
    let tls = encrypted(pg, app);
    drop(src);
    tls
}

/// Whether the one connection named `app` is encrypted, as the server sees it. Tests run in
/// parallel on one server: each names its connections (`application_name` in the URL).
fn encrypted(pg: &PgServer, app: &str) -> bool {
    match uses_tls(pg, app)[..] {
        [tls] => tls,
        ref other => panic!("expected one agent connection, found {other:?}"),
    }
}

#[test]
fn verify_full_with_the_right_ca_connects_encrypted() {
    let s = tls_server();
    register(&s.pg, "tls-full-vps", 1);
    let url = s.url(
        "localhost",
        &format!(
            "sslmode=verify-full&sslrootcert={}&application_name=t-full",
            s.pki.ca.display()
        ),
    );
    assert!(fetch_encrypted(&s.pg, &url, "tls-full-vps", "t-full"));
}

#[test]
fn verify_full_key_value_form() {
    let s = tls_server();
    register(&s.pg, "tls-kv-vps", 1);
    let dsn = format!(
        "host=localhost port={} user=sigma_agent password={AGENT_PASSWORD} dbname={DB} \
         sslmode=verify-full sslrootcert='{}' application_name=t-kv",
        s.pg.port,
        s.pki.ca.display()
    );
    assert!(fetch_encrypted(&s.pg, &dsn, "tls-kv-vps", "t-kv"));
}

#[test]
fn wrong_ca_fails_under_verify_ca_verify_full_and_require_with_a_root_file() {
    let s = tls_server();
    for mode in ["verify-full", "verify-ca", "require"] {
        let url = s.url(
            "localhost",
            &format!("sslmode={mode}&sslrootcert={}", s.pki.other_ca.display()),
        );
        let e = fetch_err(&url);
        assert!(e.contains("unknown CA"), "{mode}: {e}");
        assert!(
            e.contains("server certificate of 'localhost'")
                && e.contains(&s.pki.other_ca.display().to_string()),
            "{mode}: {e}"
        );
    }
}

#[test]
fn system_roots_do_not_trust_the_test_ca() {
    let s = tls_server();
    for params in [
        "sslmode=verify-full",
        "sslmode=verify-ca&sslrootcert=system",
    ] {
        let e = fetch_err(&s.url("localhost", params));
        assert!(e.contains("unknown CA"), "{params}: {e}");
        assert!(e.contains("the system's trusted CAs"), "{params}: {e}");
    }
}

#[test]
fn verify_full_by_ip_with_a_certificate_for_localhost_fails_verify_ca_connects() {
    let s = tls_server();
    let root = format!("sslrootcert={}", s.pki.ca.display());
    let e = fetch_err(&s.url("127.0.0.1", &format!("sslmode=verify-full&{root}")));
    assert!(
        e.contains("server certificate for 'localhost' is not valid for '127.0.0.1'"),
        "{e}"
    );
    assert!(e.contains("host name mismatch"), "{e}");
    // verify-ca checks the chain only: the same address connects.
    register(&s.pg, "tls-ca-vps", 1);
    let src = fetch_ok(
        &s.url("127.0.0.1", &format!("sslmode=verify-ca&{root}")),
        "tls-ca-vps",
    );
    drop(src);
}

#[test]
fn require_without_a_root_file_encrypts_without_verifying() {
    let s = tls_server();
    register(&s.pg, "tls-require-vps", 1);
    assert!(fetch_encrypted(
        &s.pg,
        &s.url("127.0.0.1", "sslmode=require&application_name=t-require"),
        "tls-require-vps",
        "t-require"
    ));
}

#[test]
fn require_against_a_server_without_tls_fails() {
    let pg = PgServer::shared();
    let e = fetch_err(&format!("{}?sslmode=require", pg.agent_url(DB)));
    assert!(e.contains("server does not support TLS"), "{e}");
    assert!(e.contains("sslmode=require requires TLS"), "{e}");
    let e = fetch_err(&format!("{}?sslmode=verify-full", pg.agent_url(DB)));
    assert!(e.contains("sslmode=verify-full requires TLS"), "{e}");
}

#[test]
fn prefer_encrypts_when_offered_and_connects_in_clear_when_not() {
    let s = tls_server();
    register(&s.pg, "tls-prefer-vps", 1);
    // The default is prefer; the certificate is not checked (127.0.0.1, unknown CA).
    for (params, app) in [
        ("application_name=t-default", "t-default"),
        ("sslmode=prefer&application_name=t-prefer", "t-prefer"),
    ] {
        assert!(
            fetch_encrypted(&s.pg, &s.url("127.0.0.1", params), "tls-prefer-vps", app),
            "{params}"
        );
    }
    let plain = PgServer::shared();
    register(&plain, "plain-prefer-vps", 1);
    assert!(!fetch_encrypted(
        &plain,
        &format!(
            "{}?sslmode=prefer&application_name=t-plain",
            plain.agent_url(DB)
        ),
        "plain-prefer-vps",
        "t-plain"
    ));
    // disable stays in clear even when the server offers TLS.
    assert!(!fetch_encrypted(
        &s.pg,
        &s.url("127.0.0.1", "sslmode=disable&application_name=t-disable"),
        "tls-prefer-vps",
        "t-disable"
    ));
}

#[test]
fn agent_probes_routes_read_over_verify_full() {
    let s = tls_server();
    let open = accepting();
    let port = open.local_addr().unwrap().port();
    register(&s.pg, "tls-agent-vps", port);
    let url = s.url(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={}", s.pki.ca.display()),
    );
    let agent = Agent::start(&agent_args(&url, "tls-agent-vps", "200ms"));
    let series = reachable("layer4-01", "r", 10001, port);
    let m = agent.wait_metrics(WAIT, |m| m.contains(&series));
    assert_eq!(sample(&m, &series), Some(1.0));
    assert_eq!(sample(&m, "sigma_route_source_errors_total"), Some(0.0));
}

#[test]
fn agent_logs_a_certificate_failure_and_keeps_retrying() {
    let s = tls_server();
    let url = s.url(
        "127.0.0.1",
        &format!("sslmode=verify-full&sslrootcert={}", s.pki.ca.display()),
    );
    let mut agent = Agent::start(&agent_args(&url, "tls-agent-bad-vps", "200ms"));
    let log = agent.wait_log(
        "server certificate for 'localhost' is not valid for '127.0.0.1'",
        WAIT,
    );
    assert!(!log.contains(AGENT_PASSWORD), "{log}");
    // The source is down and retried (backoff 1 s, 2 s...): a second error comes.
    let m = agent.wait_metrics(WAIT, |m| {
        sample(m, "sigma_route_source_errors_total").unwrap_or(0.0) >= 2.0
    });
    assert_eq!(sample(&m, "sigma_route_source_up"), Some(0.0));
}
