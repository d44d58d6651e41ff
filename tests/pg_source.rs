//! The PostgreSQL route source against real servers (tests/common/pg.rs): registration,
//! every exclusion rule, changes between fetches, outages and recovery, timeouts, passwords,
//! PgBouncer in transaction mode, and the cost of 1,000 routes.
#![cfg(feature = "postgres")]

mod common;

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::time::{Duration, Instant};

use common::pg::{rows, Driven, PgBouncer, PgServer, AGENT, AGENT_PASSWORD, DB};

use sigma_agent_lite::pg_routes::ROUTES_SQL;
use sigma_agent_lite::route::{ClusterType, Route};
use sigma_agent_lite::source_pg::{
    Fetch, PgSource, BACKOFF_MIN, CONNECT_TIMEOUT, QUERY_TIMEOUT, STATEMENT_TIMEOUT,
};

fn source(url: &str, hostname: &str) -> Driven {
    Driven::new(PgSource::new(url, hostname, None).unwrap())
}

/// `node/name` of each route, or a panic naming what came instead.
fn names(fetch: Fetch) -> Vec<String> {
    match fetch {
        Fetch::Routes(routes) => routes
            .iter()
            .map(|r| format!("{}/{}", r.node, r.name))
            .collect(),
        other => panic!("expected routes, got {other:?}"),
    }
}

fn failed(fetch: Fetch) -> String {
    match fetch {
        Fetch::Failed(e) => e,
        other => panic!("expected Failed, got {other:?}"),
    }
}

#[test]
fn registered_vps_routes_in_node_and_port_order() {
    let pg = PgServer::shared();
    let mut db = pg.owner(DB);
    let vps = rows::vps(&mut db, "order-vps", Some("active"));
    let n2 = rows::node(&mut db, &vps, "layer4-02", "active");
    let n1 = rows::node(&mut db, &vps, "layer4-01", "active");
    rows::active_route(&mut db, &n2, ("b", 10001, "127.1.0.2", 22));
    rows::active_route(&mut db, &n1, ("c", 10002, "hk013.example.com", 443));
    rows::active_route(&mut db, &n1, ("a", 10001, "2001:db8::1", 8443));

    let mut src = source(&pg.agent_url(DB), "order-vps");
    assert_eq!(
        src.describe(),
        format!("sigma_agent@127.0.0.1:{}/sigma", pg.port)
    );
    assert!(!src.describe().contains(AGENT_PASSWORD));
    let Fetch::Routes(routes) = src.fetch(Instant::now()) else {
        panic!("not registered?")
    };
    // The fixture's nodes have admin port 9901, its routes logical_dns with a 5 s timeout.
    let envoy = |r: Route| {
        r.with_envoy(
            Some(9901),
            ClusterType::LogicalDns,
            Some(Duration::from_secs(5)),
        )
        .unwrap()
    };
    assert_eq!(
        routes,
        vec![
            envoy(Route::new("layer4-01", "a", 10001, "2001:db8::1", 8443).unwrap()),
            envoy(Route::new("layer4-01", "c", 10002, "hk013.example.com", 443).unwrap()),
            envoy(Route::new("layer4-02", "b", 10001, "127.1.0.2", 22).unwrap()),
        ]
    );
    assert!(src.last_fetch_duration().is_some());
    assert!(src.worst_fetch_duration() >= src.last_fetch_duration());
}

#[test]
fn missing_vps_is_found_once_added_and_lost_once_retired_or_deleted() {
    let pg = PgServer::shared();
    let mut db = pg.owner(DB);
    let mut src = source(&pg.agent_url(DB), "late-vps");
    assert_eq!(src.fetch(Instant::now()), Fetch::NotRegistered);

    let vps = rows::vps(&mut db, "late-vps", Some("provisioning"));
    assert_eq!(src.fetch(Instant::now()), Fetch::Routes(vec![]));
    let node = rows::node(&mut db, &vps, "layer4-01", "active");
    rows::active_route(&mut db, &node, ("r", 10001, "127.0.10.1", 80));
    assert_eq!(names(src.fetch(Instant::now())), ["layer4-01/r"]);

    for status in ["retired", "deleted"] {
        db.execute(
            "UPDATE vps SET status = $1 WHERE id = ($2::text)::uuid",
            &[&status, &vps],
        )
        .unwrap();
        assert_eq!(src.fetch(Instant::now()), Fetch::NotRegistered, "{status}");
    }
    // Every other status counts as registered, and so does none.
    for status in [Some("active"), Some("retiring"), Some("suspended"), None] {
        db.execute(
            "UPDATE vps SET status = $1 WHERE id = ($2::text)::uuid",
            &[&status, &vps],
        )
        .unwrap();
        assert_eq!(
            names(src.fetch(Instant::now())),
            ["layer4-01/r"],
            "{status:?}"
        );
    }
}

#[test]
fn duplicated_hostname_is_ambiguous_and_names_the_ids() {
    let pg = PgServer::shared();
    let mut db = pg.owner(DB);
    let mut ids = vec![
        rows::vps(&mut db, "twin-vps", Some("active")),
        rows::vps(&mut db, "twin-vps", Some("provisioning")),
    ];
    let retired = rows::vps(&mut db, "twin-vps", Some("retired"));
    ids.sort();
    let mut src = source(&pg.agent_url(DB), "twin-vps");
    match src.fetch(Instant::now()) {
        Fetch::Ambiguous(got) => {
            assert_eq!(got, ids);
            assert!(!got.contains(&retired));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn only_active_routes_with_a_backend_of_active_nodes_of_this_vps() {
    let pg = PgServer::shared();
    let mut db = pg.owner(DB);
    let vps = rows::vps(&mut db, "rules-vps", Some("active"));
    let on = rows::node(&mut db, &vps, "on", "active");
    let off = rows::node(&mut db, &vps, "off", "disabled");
    let h = Some("127.0.10.1");
    let p = Some(80);
    rows::route(&mut db, &on, "probed", 1, h, p, "active");
    rows::route(&mut db, &on, "disabled-route", 2, h, p, "disabled");
    rows::route(&mut db, &on, "placeholder", 3, h, p, "placeholder");
    rows::route(&mut db, &on, "null-host", 4, None, p, "active");
    rows::route(&mut db, &on, "null-port", 5, h, None, "active");
    rows::route(&mut db, &off, "of-disabled-node", 1, h, p, "active");
    // Rows that pass SQL but fail validation: skipped with a warning, not fatal.
    rows::route(&mut db, &on, "port-too-big", 6, h, Some(70000), "active");
    rows::route(&mut db, &on, "bad-host", 7, Some("bad/host"), p, "active");
    rows::route(&mut db, &on, "listen-too-big", 65536, h, p, "active");
    let long = "x".repeat(10_000);
    rows::route(&mut db, &on, "long-host", 8, Some(&long), p, "active");
    // Another VPS, and a retired VPS with our hostname: neither's routes are ours.
    let other = rows::vps(&mut db, "rules-other-vps", Some("active"));
    let other_node = rows::node(&mut db, &other, "on", "active");
    rows::route(&mut db, &other_node, "other-vps", 9, h, p, "active");
    let old = rows::vps(&mut db, "rules-vps", Some("retired"));
    let old_node = rows::node(&mut db, &old, "on", "active");
    rows::route(&mut db, &old_node, "retired-vps", 10, h, p, "active");

    let mut src = source(&pg.agent_url(DB), "rules-vps");
    assert_eq!(names(src.fetch(Instant::now())), ["on/probed"]);
}

#[test]
fn routes_added_and_deleted_between_fetches() {
    let pg = PgServer::shared();
    let mut db = pg.owner(DB);
    let node = rows::active(&mut db, "churn-vps", "n", &[]);
    let first = rows::active_route(&mut db, &node, ("first", 1, "127.0.10.1", 1));
    let mut src = source(&pg.agent_url(DB), "churn-vps");
    assert_eq!(names(src.fetch(Instant::now())), ["n/first"]);
    rows::active_route(&mut db, &node, ("second", 2, "127.0.10.2", 2));
    assert_eq!(names(src.fetch(Instant::now())), ["n/first", "n/second"]);
    db.execute(
        "DELETE FROM envoy_routes WHERE id = ($1::text)::uuid",
        &[&first],
    )
    .unwrap();
    assert_eq!(names(src.fetch(Instant::now())), ["n/second"]);
    db.execute(
        "UPDATE envoy_routes SET backend_port = 2222 WHERE name = 'second'",
        &[],
    )
    .unwrap();
    match src.fetch(Instant::now()) {
        Fetch::Routes(r) => assert_eq!(r[0].backend, "127.0.10.2:2222"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn unix_socket_and_pgpassword() {
    let pg = PgServer::shared();
    let mut db = pg.owner(DB);
    rows::active(&mut db, "sock-vps", "n", &[("r", 1, "127.0.10.1", 1)]);

    let mut src = source(&pg.agent_unix_dsn(DB), "sock-vps");
    assert!(src
        .describe()
        .ends_with(&format!("/sock:{}/sigma", pg.port)));
    assert_eq!(names(src.fetch(Instant::now())), ["n/r"]);

    let url = pg.agent_url_without_password(DB);
    let mut src = Driven::new(PgSource::new(&url, "sock-vps", Some(AGENT_PASSWORD)).unwrap());
    assert_eq!(names(src.fetch(Instant::now())), ["n/r"]);
}

#[test]
fn wrong_or_missing_password_is_a_clear_error_without_the_password() {
    let pg = PgServer::shared();
    let secret = "Wr0ng-secret-77";
    let url = format!("postgres://{AGENT}:{secret}@127.0.0.1:{}/{DB}", pg.port);
    let mut src = source(&url, "pw-vps");
    let e = failed(src.fetch(Instant::now()));
    println!("wrong password: {e}");
    assert!(
        e.contains("password authentication failed for user \"sigma_agent\""),
        "{e}"
    );
    assert!(!e.contains(secret), "{e}");
    assert!(!src.describe().contains(secret));

    let mut src = source(&pg.agent_url_without_password(DB), "pw-vps");
    let e = failed(src.fetch(Instant::now()));
    println!("no password: {e}");
    assert!(e.contains("PGPASSWORD"), "{e}");
}

#[test]
fn same_routes_through_pgbouncer_in_transaction_mode() {
    let pg = PgServer::shared();
    let mut db = pg.owner(DB);
    let vps = rows::vps(&mut db, "bouncer-vps", Some("active"));
    for node_name in ["layer4-01", "layer4-02"] {
        let node = rows::node(&mut db, &vps, node_name, "active");
        for port in 1..=20 {
            let name = format!("r{port}");
            rows::active_route(&mut db, &node, (&name, port, "127.0.10.1", 443));
        }
    }
    let bouncer = PgBouncer::start(&pg);
    let mut direct = source(&pg.agent_url(DB), "bouncer-vps");
    let want = direct.fetch(Instant::now());
    assert!(matches!(&want, Fetch::Routes(r) if r.len() == 40));
    // Three agents share pgbouncer's single server connection, interleaved, many times:
    // named statements or session state would collide here.
    let mut agents: Vec<Driven> = (0..3)
        .map(|_| source(&bouncer.agent_url(DB), "bouncer-vps"))
        .collect();
    for round in 0..10 {
        for (i, agent) in agents.iter_mut().enumerate() {
            assert_eq!(
                agent.fetch(Instant::now()),
                want,
                "agent {i} round {round}\n{}",
                bouncer.log()
            );
        }
    }
    let mut other = source(&bouncer.agent_url(DB), "no-such-vps");
    assert_eq!(other.fetch(Instant::now()), Fetch::NotRegistered);
}

/// A server that accepts the connection and never says a word: the kernel completes the
/// handshake from the listen backlog; nothing ever reads or answers.
#[test]
fn silent_server_blocks_at_most_connect_timeout() {
    let listener = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut src = source(&format!("postgres://a:pw@127.0.0.1:{port}/d"), "v");
    let started = Instant::now();
    let e = failed(src.fetch(Instant::now()));
    let took = started.elapsed();
    println!("silent server: blocked {took:?}: {e}");
    assert!(e.contains("CONNECT_TIMEOUT"), "{e}");
    assert!(took >= CONNECT_TIMEOUT && took < CONNECT_TIMEOUT + Duration::from_millis(500));
    assert_eq!(
        src.worst_fetch_duration(),
        Some(src.last_fetch_duration().unwrap())
    );
    // The agent's side is closed already: the server reads the startup message, then EOF.
    let (mut conn, _) = listener.accept().unwrap();
    conn.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut got = Vec::new();
    conn.read_to_end(&mut got)
        .expect("the agent closed its socket");
    assert!(!got.is_empty());
}

/// Sends SIGCONT on drop, so a failing test never leaves a backend stopped.
struct Resume(i32);

impl Drop for Resume {
    fn drop(&mut self) {
        // SAFETY: kill(2) takes no pointer; the pid is the test's own server process.
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

/// The connection is up, then the server process stops answering mid-session (SIGSTOP on
/// its backend: the kernel still acks, nothing replies). The fetch ends at QUERY_TIMEOUT.
#[test]
fn stalled_backend_blocks_at_most_query_timeout() {
    let pg = PgServer::shared();
    let mut db = pg.owner(DB);
    rows::active(&mut db, "stall-vps", "n", &[("r", 1, "127.0.10.1", 1)]);
    let url = format!("{}?application_name=stall-test", pg.agent_url(DB));
    let mut src = source(&url, "stall-vps");
    assert_eq!(names(src.fetch(Instant::now())), ["n/r"]);

    let mut su = pg.superuser(DB);
    let pid: i32 = su
        .query_one(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'stall-test'",
            &[],
        )
        .unwrap()
        .get(0);
    let resume = Resume(pid);
    // SAFETY: kill(2) takes no pointer; the pid is the test's own server process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    let started = Instant::now();
    let e = failed(src.fetch(started));
    let took = started.elapsed();
    println!("stalled backend: blocked {took:?}: {e}");
    assert!(e.contains("QUERY_TIMEOUT"), "{e}");
    assert!(took >= QUERY_TIMEOUT && took < QUERY_TIMEOUT + Duration::from_millis(500));
    drop(resume);
    // After the backoff, a new connection (a new backend) works.
    let due = src.due_within(BACKOFF_MIN);
    assert_eq!(names(src.fetch(due)), ["n/r"]);
}

/// A query that waits on a lock is cancelled by the server at STATEMENT_TIMEOUT.
#[test]
fn statement_timeout_bounds_a_blocked_query() {
    let pg = PgServer::shared();
    pg.create_database("sigma_lock");
    let mut db = pg.owner("sigma_lock");
    rows::active(&mut db, "lock-vps", "n", &[("r", 1, "127.0.10.1", 1)]);
    let mut src = source(&pg.agent_url("sigma_lock"), "lock-vps");
    assert_eq!(names(src.fetch(Instant::now())), ["n/r"]);

    let mut locker = db.transaction().unwrap();
    locker
        .batch_execute("LOCK TABLE envoy_routes IN ACCESS EXCLUSIVE MODE")
        .unwrap();
    let started = Instant::now();
    let e = failed(src.fetch(started));
    let took = started.elapsed();
    println!("locked table: blocked {took:?}: {e}");
    assert!(
        e.contains("57014") && e.contains("statement timeout"),
        "{e}"
    );
    assert!(
        took >= STATEMENT_TIMEOUT && took < QUERY_TIMEOUT,
        "{took:?}"
    );
    locker.rollback().unwrap();
    let due = src.due_within(BACKOFF_MIN);
    assert_eq!(names(src.fetch(due)), ["n/r"]);
}

/// Server stopped: Failed, then Backoff until due; started again: recovers by itself. A
/// restart between two fetches costs no cycle (the stale connection is replaced at once).
#[test]
fn outage_fails_backs_off_and_recovers_by_itself() {
    let pg = PgServer::start();
    let mut db = pg.owner(DB);
    rows::active(&mut db, "outage-vps", "n", &[("r", 1, "127.0.10.1", 1)]);
    drop(db);
    let mut src = source(&pg.agent_url(DB), "outage-vps");
    assert_eq!(names(src.fetch(Instant::now())), ["n/r"]);
    let normal = src.last_fetch_duration().unwrap();

    pg.stop();
    let mut outage_worst = Duration::ZERO;
    let e = failed(src.fetch(Instant::now()));
    outage_worst = outage_worst.max(src.last_fetch_duration().unwrap());
    println!("server stopped: {e}");
    assert!(e.contains("refused"), "{e}");
    let due = src.due_within(BACKOFF_MIN);
    failed(src.fetch(due));
    outage_worst = outage_worst.max(src.last_fetch_duration().unwrap());
    // The second failure doubled the cap: due within 2 s of its end.
    let due = src.due_within(BACKOFF_MIN * 2);

    pg.start_again();
    assert_eq!(names(src.fetch(due.max(Instant::now()))), ["n/r"]);
    // Restart between two fetches: no Failed cycle.
    pg.stop();
    pg.start_again();
    assert_eq!(names(src.fetch(Instant::now())), ["n/r"]);
    println!(
        "worst block: normal fetch {normal:?}, during the outage (refused) {outage_worst:?}, \
         overall {:?}",
        src.worst_fetch_duration().unwrap()
    );
}

#[test]
fn thousand_routes_fetch_time_and_plan() {
    let pg = PgServer::shared();
    pg.create_database("sigma_bulk");
    let mut db = pg.owner("sigma_bulk");
    // The rest of the fleet: 500 VPSs × 2 nodes × 20 routes. Ours: 10 nodes × 100 routes.
    db.batch_execute(
        "INSERT INTO vps (id, hostname, status)
           SELECT gen_random_uuid(), 'fleet-' || i, 'active' FROM generate_series(1, 500) i;
         INSERT INTO vps (id, hostname, status) VALUES (gen_random_uuid(), 'bulk-vps', 'active');
         INSERT INTO envoy_nodes (id, vps_id, node_id, status)
           SELECT gen_random_uuid(), v.id, 'layer4-' || lpad(n::text, 2, '0'), 'active'
           FROM vps v, generate_series(1, 2) n WHERE v.hostname LIKE 'fleet-%';
         INSERT INTO envoy_nodes (id, vps_id, node_id, status)
           SELECT gen_random_uuid(), v.id, 'layer4-' || lpad(n::text, 2, '0'), 'active'
           FROM vps v, generate_series(1, 10) n WHERE v.hostname = 'bulk-vps';
         INSERT INTO envoy_routes (id, envoy_node_id, name, listen_port, backend_host,
                                   backend_port, cluster_type, connect_timeout_secs,
                                   proxy_protocol, status, source)
           SELECT gen_random_uuid(), n.id, 'tcp-proxy-' || p, 10000 + p,
                  'hk' || p || '.example.com', 443, 'logical_dns', 5, 0, 'active', 'dynamic'
           FROM envoy_nodes n JOIN vps v ON v.id = n.vps_id,
                generate_series(1, 100) p
           WHERE v.hostname = 'bulk-vps' OR p <= 20;
         ANALYZE vps; ANALYZE envoy_nodes; ANALYZE envoy_routes;",
    )
    .unwrap();

    let mut src = source(&pg.agent_url("sigma_bulk"), "bulk-vps");
    let first = src.fetch(Instant::now());
    let with_connect = src.last_fetch_duration().unwrap();
    let Fetch::Routes(routes) = first else {
        panic!("{first:?}")
    };
    assert_eq!(routes.len(), 1000);
    assert_eq!(routes[0].node, "layer4-01");
    assert_eq!(routes[999].listen_port, 10100);
    let mut times: Vec<Duration> = (0..20)
        .map(|_| {
            assert!(matches!(src.fetch(Instant::now()), Fetch::Routes(r) if r.len() == 1000));
            src.last_fetch_duration().unwrap()
        })
        .collect();
    times.sort();
    println!(
        "1,000 routes (of 21,000 in the table): first fetch with connect+auth {with_connect:?}; \
         20 fetches on the open connection: min {:?}, median {:?}, max {:?}",
        times[0], times[10], times[19]
    );
    assert!(times[10] < Duration::from_millis(500));

    let sql = ROUTES_SQL
        .replace("$1", "'bulk-vps'")
        .replace("$2", "10001");
    let plan: Vec<String> = db
        .query(&format!("EXPLAIN (ANALYZE, BUFFERS) {sql}"), &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    println!("EXPLAIN ANALYZE of ROUTES_SQL:\n{}", plan.join("\n"));
}

/// How Envoy connects comes along: the node's admin port, the route's cluster type and
/// connect timeout; NULLs leave them unset.
#[test]
fn envoy_columns_are_read() {
    let pg = PgServer::shared();
    let mut db = pg.owner(DB);
    let node = rows::active(
        &mut db,
        "envoy-cols-vps",
        "n",
        &[("set", 1, "hk01.example.com", 443)],
    );
    rows::active_route(&mut db, &node, ("unset", 2, "127.0.10.1", 1));
    db.execute(
        "UPDATE envoy_nodes SET admin_port = 9901 WHERE node_id = 'n' AND vps_id = \
         (SELECT id FROM vps WHERE hostname = 'envoy-cols-vps')",
        &[],
    )
    .unwrap();
    db.execute(
        "UPDATE envoy_routes SET cluster_type = 'strict_dns', connect_timeout_secs = 2 \
         WHERE name = 'set' AND backend_host = 'hk01.example.com'",
        &[],
    )
    .unwrap();
    db.execute(
        "UPDATE envoy_routes SET cluster_type = NULL, connect_timeout_secs = NULL \
         WHERE name = 'unset' AND backend_host = '127.0.10.1'",
        &[],
    )
    .unwrap();
    let mut src = source(&pg.agent_url(DB), "envoy-cols-vps");
    let Fetch::Routes(routes) = src.fetch(Instant::now()) else {
        panic!("no routes")
    };
    assert_eq!(routes.len(), 2);
    assert_eq!(routes[0].admin_port, Some(9901));
    assert_eq!(routes[0].cluster_type, ClusterType::StrictDns);
    assert_eq!(routes[0].connect_timeout, Some(Duration::from_secs(2)));
    assert_eq!(
        routes[1].admin_port,
        Some(9901),
        "a node's port, for each of its routes"
    );
    assert_eq!(routes[1].connect_timeout, None);
    assert_eq!(routes[1].cluster_type, ClusterType::Unspecified);
}
