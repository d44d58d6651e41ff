//! Authentication against a real PostgreSQL: SCRAM-SHA-256 (the default role), md5, clear
//! text over loopback and trust, by role through pg_hba.conf lines the test writes; and the
//! password from a libpq password file (mode checks as libpq), through the source and
//! through the real binary's PGPASSFILE. Every address is on 127.0.0.1.
#![cfg(feature = "postgres")]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use common::pg::{agent_args, rows, Driven, PgServer, AGENT, AGENT_PASSWORD, DB};
use common::*;
use sigma_agent_lite::source_pg::{Fetch, PgSource};

/// One cluster for this file, with a role per method and an hba line for each, ahead of the
/// default `scram-sha-256` lines.
fn server() -> Arc<PgServer> {
    static SERVER: OnceLock<Arc<PgServer>> = OnceLock::new();
    SERVER
        .get_or_init(|| {
            let pg = PgServer::start();
            let mut su = pg.superuser("postgres");
            su.batch_execute(
                "SET password_encryption = 'md5';
                 CREATE ROLE md5_agent LOGIN PASSWORD 'md5-Pw-51ab';
                 CREATE ROLE clear_agent LOGIN PASSWORD 'clear-Pw-77cd';
                 RESET password_encryption;
                 CREATE ROLE trust_agent LOGIN;",
            )
            .unwrap();
            drop(su);
            let mut db = pg.superuser(DB);
            db.batch_execute(
                "GRANT SELECT ON vps, envoy_nodes, envoy_routes TO md5_agent, clear_agent, trust_agent",
            )
            .unwrap();
            let hba = pg.dir.join("data/pg_hba.conf");
            let old = std::fs::read_to_string(&hba).unwrap();
            std::fs::write(
                &hba,
                format!(
                    "host all md5_agent 127.0.0.1/32 md5\n\
                     host all clear_agent 127.0.0.1/32 password\n\
                     host all trust_agent 127.0.0.1/32 trust\n{old}"
                ),
            )
            .unwrap();
            pg.superuser("postgres")
                .batch_execute("SELECT pg_reload_conf()")
                .unwrap();
            let mut owner = pg.owner(DB);
            rows::active(&mut owner, "auth-vps", "n", &[("r", 1, "127.0.10.1", 1)]);
            Arc::new(pg)
        })
        .clone()
}

fn routes(url: &str) -> Result<usize, String> {
    let mut src = Driven::new(PgSource::new(url, "auth-vps", None).unwrap());
    match src.fetch(Instant::now()) {
        Fetch::Routes(r) => Ok(r.len()),
        Fetch::Failed(e) => Err(e),
        other => panic!("{other:?}"),
    }
}

/// The method pg_hba.conf gives `user` (the first line naming it).
fn hba_method(pg: &PgServer, user: &str) -> String {
    let mut su = pg.superuser("postgres");
    let row = su
        .query_one(
            "SELECT auth_method FROM pg_hba_file_rules WHERE $1 = ANY(user_name) LIMIT 1",
            &[&user],
        )
        .unwrap();
    row.get(0)
}

#[test]
fn scram_md5_cleartext_and_trust_roles() {
    let pg = server();
    let port = pg.port;
    assert_eq!(hba_method(&pg, "md5_agent"), "md5");
    assert_eq!(hba_method(&pg, "clear_agent"), "password");
    assert_eq!(hba_method(&pg, "trust_agent"), "trust");
    for (user, pw) in [
        (AGENT, AGENT_PASSWORD),
        ("md5_agent", "md5-Pw-51ab"),
        ("clear_agent", "clear-Pw-77cd"),
    ] {
        let url = format!("postgres://{user}:{pw}@127.0.0.1:{port}/{DB}?sslmode=disable");
        assert_eq!(routes(&url), Ok(1), "{user}");
        let wrong = format!("postgres://{user}:not-it@127.0.0.1:{port}/{DB}?sslmode=disable");
        let e = routes(&wrong).unwrap_err();
        assert!(e.contains("28P01"), "{user}: {e}");
        assert!(!e.contains("not-it"), "{e}");
    }
    let url = format!("postgres://trust_agent@127.0.0.1:{port}/{DB}?sslmode=disable");
    assert_eq!(routes(&url), Ok(1));
}

/// SCRAM without a password: the error says where a password can come from.
#[test]
fn a_missing_password_names_its_sources() {
    let pg = server();
    let url = format!("postgres://{AGENT}@127.0.0.1:{}/{DB}", pg.port);
    let e = routes(&url).unwrap_err();
    assert!(e.contains("PGPASSWORD") && e.contains(".pgpass"), "{e}");
}

#[test]
fn password_file_with_libpq_rules() {
    let pg = server();
    let dir = std::env::temp_dir().join(format!("sigma-pgpass-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("pgpass");
    std::fs::write(
        &file,
        format!(
            "# other hosts first\n\
             otherhost:*:*:*:nope\n\
             127.0.0.1:{}:{DB}:md5_agent:md5-Pw-51ab\n\
             *:*:*:{AGENT}:{AGENT_PASSWORD}\n",
            pg.port
        ),
    )
    .unwrap();
    let url = |user: &str| format!("postgres://{user}@127.0.0.1:{}/{DB}", pg.port);
    let fetch = |user: &str| {
        let mut src = Driven::new(PgSource::new(&url(user), "auth-vps", None).unwrap());
        src.set_passfile(Some(file.clone()));
        src.fetch(Instant::now())
    };
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(matches!(fetch(AGENT), Fetch::Routes(r) if r.len() == 1));
    assert!(matches!(fetch("md5_agent"), Fetch::Routes(r) if r.len() == 1));

    // Readable by others: ignored, as libpq does; the error says there is no password.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    match fetch(AGENT) {
        Fetch::Failed(e) => assert!(e.contains("none is given"), "{e}"),
        other => panic!("{other:?}"),
    }

    // The binary: PGPASSFILE, and the warning for a file with group access.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
    let file_str = file.to_str().unwrap().to_owned();
    let agent_url = url(AGENT);
    let mut agent = Agent::start_with_env(
        &agent_args(&agent_url, "auth-vps", "200ms"),
        &[("PGPASSFILE", &file_str)],
    );
    agent.wait_log("has group or world access", Duration::from_secs(10));
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    // Read again at the next connection attempt: no restart needed.
    agent.wait_metrics(Duration::from_secs(75), |m| {
        sample(m, "sigma_routes") == Some(1.0)
    });
    assert!(!agent.log().contains(AGENT_PASSWORD));
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
}
