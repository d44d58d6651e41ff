//! TLS to PostgreSQL starts no thread: counted in /proc/self/task before, during (a sampler
//! thread watches while verify-full fetches run, and one that fails on a certificate) and
//! after. Alone in its test binary so no other test's threads are counted.
#![cfg(feature = "tls")]

mod common;

use std::time::Instant;

use common::pg::{assert_starts_no_thread, rows, Driven, DB};
use common::pg_tls::TlsServer;

use sigma_agent_lite::source_pg::{Fetch, PgSource};

#[test]
fn tls_fetch_starts_no_thread() {
    let s = TlsServer::start();
    let mut db = s.pg.owner(DB);
    rows::vps(&mut db, "tls-threads-vps", Some("active"));
    drop(db);
    let root = format!("sslrootcert={}", s.pki.ca.display());

    assert_starts_no_thread("TLS fetches", || {
        let full = s.url("localhost", &format!("sslmode=verify-full&{root}"));
        let mut src = Driven::new(PgSource::new(&full, "tls-threads-vps", None).unwrap());
        for _ in 0..3 {
            assert_eq!(src.fetch(Instant::now()), Fetch::Routes(vec![]));
        }
        let mismatch = s.url("127.0.0.1", &format!("sslmode=verify-full&{root}"));
        let mut bad = Driven::new(PgSource::new(&mismatch, "v", None).unwrap());
        assert!(matches!(bad.fetch(Instant::now()), Fetch::Failed(_)));
        // The system roots are loaded too (verify-ca without sslrootcert).
        let mut sys = Driven::new(
            PgSource::new(&s.url("localhost", "sslmode=verify-ca"), "v", None).unwrap(),
        );
        assert!(matches!(sys.fetch(Instant::now()), Fetch::Failed(_)));
    });
}
