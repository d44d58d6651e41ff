//! The PostgreSQL source starts no thread: counted in /proc/self/task before, during (a
//! sampler thread watches while fetches run, including one blocked on a silent server) and
//! after. Alone in its test binary so no other test's threads are counted.
#![cfg(feature = "postgres")]

mod common;

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::pg::{rows, Driven, PgServer, DB};

use sigma_agent_lite::source_pg::{Fetch, PgSource};

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

#[test]
fn fetch_starts_no_thread() {
    let pg = PgServer::start();
    let mut db = pg.owner(DB);
    let vps = rows::vps(&mut db, "threads-vps", Some("active"));
    let node = rows::node(&mut db, &vps, "n", "active");
    rows::route(
        &mut db,
        &node,
        "r",
        1,
        Some("127.0.10.1"),
        Some(1),
        "active",
    );
    drop(db);
    let silent = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)).unwrap();
    let silent_url = format!(
        "postgres://a:pw@127.0.0.1:{}/d",
        silent.local_addr().unwrap().port()
    );

    let before = threads();
    let stop = Arc::new(AtomicBool::new(false));
    let most = Arc::new(AtomicUsize::new(0));
    let sampler = {
        let (stop, most) = (stop.clone(), most.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                most.fetch_max(threads(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    let mut src = Driven::new(PgSource::new(&pg.agent_url(DB), "threads-vps", None).unwrap());
    let mut dead = Driven::new(PgSource::new(&silent_url, "v", None).unwrap());
    for _ in 0..3 {
        assert!(matches!(src.fetch(Instant::now()), Fetch::Routes(r) if r.len() == 1));
    }
    assert!(matches!(dead.fetch(Instant::now()), Fetch::Failed(_)));
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let during = most.load(Ordering::Relaxed) - 1; // less the sampler
    let after = threads();
    println!(
        "threads: before {before}, most during fetches {during} (sampler excluded), after {after}"
    );
    assert_eq!(during, before);
    assert_eq!(after, before);
}
