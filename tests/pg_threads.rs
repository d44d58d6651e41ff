//! The PostgreSQL source starts no thread: counted in /proc/self/task before, during (a
//! sampler thread watches while fetches run, including one blocked on a silent server) and
//! after. Alone in its test binary so no other test's threads are counted.
#![cfg(feature = "postgres")]

mod common;

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::time::Instant;

use common::pg::{assert_starts_no_thread, rows, Driven, PgServer, DB};

use sigma_agent_lite::source_pg::{Fetch, PgSource};

#[test]
fn fetch_starts_no_thread() {
    let pg = PgServer::start();
    let mut db = pg.owner(DB);
    rows::active(&mut db, "threads-vps", "n", &[("r", 1, "127.0.10.1", 1)]);
    drop(db);
    let silent = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)).unwrap();
    let silent_url = format!(
        "postgres://a:pw@127.0.0.1:{}/d",
        silent.local_addr().unwrap().port()
    );

    assert_starts_no_thread("fetches", || {
        let mut src = Driven::new(PgSource::new(&pg.agent_url(DB), "threads-vps", None).unwrap());
        let mut dead = Driven::new(PgSource::new(&silent_url, "v", None).unwrap());
        for _ in 0..3 {
            assert!(matches!(src.fetch(Instant::now()), Fetch::Routes(r) if r.len() == 1));
        }
        assert!(matches!(dead.fetch(Instant::now()), Fetch::Failed(_)));
    });
}
