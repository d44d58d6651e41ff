//! The PostgreSQL source against a scripted server on loopback: what a real server rarely does
//! on cue. The server drops the connection in the middle of the cycle's answers; an
//! ErrorResponse arrives in the middle of the pipeline; NoticeResponse and ParameterStatus
//! arrive between every message; a message is absurdly long. The source must fail with the
//! right words (or succeed), never hang past its deadline, and stay usable.
#![cfg(feature = "postgres")]

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::pg::Driven;
use sigma_agent_lite::source_pg::{Fetch, PgSource, QUERY_TIMEOUT};

fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    m.extend_from_slice(body);
    m
}
fn ready(status: u8) -> Vec<u8> {
    msg(b'Z', &[status])
}
fn complete(tag: &str) -> Vec<u8> {
    msg(b'C', format!("{tag}\0").as_bytes())
}
fn error(code: &str, message: &str) -> Vec<u8> {
    msg(b'E', format!("SERROR\0C{code}\0M{message}\0\0").as_bytes())
}
fn notice() -> Vec<u8> {
    msg(b'N', b"SNOTICE\0C00000\0Mjust so you know\0\0")
}
fn param(k: &str, v: &str) -> Vec<u8> {
    msg(b'S', format!("{k}\0{v}\0").as_bytes())
}
fn row(values: &[&str]) -> Vec<u8> {
    let mut b = (values.len() as u16).to_be_bytes().to_vec();
    for v in values {
        b.extend_from_slice(&(v.len() as i32).to_be_bytes());
        b.extend_from_slice(v.as_bytes());
    }
    msg(b'D', &b)
}

/// Startup answered with trust; then each connection gets `answer` once the cycle's pipeline
/// (up to its COMMIT) has arrived, and is closed if `close` says so.
fn fake_server(answer: Vec<u8>, close: bool, connections: usize) -> (u16, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = std::thread::spawn(move || {
        for _ in 0..connections {
            let (mut s, _) = listener.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            serve(&mut s, &answer, close);
        }
    });
    (port, handle)
}

fn serve(s: &mut TcpStream, answer: &[u8], close: bool) {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let mut startup = vec![0u8; u32::from_be_bytes(len) as usize - 4];
    s.read_exact(&mut startup).unwrap();
    let mut hello = msg(b'R', &0u32.to_be_bytes());
    hello.extend(param("server_version", "15.0"));
    hello.extend(msg(b'K', &[0, 0, 0, 1, 0, 0, 0, 2]));
    hello.extend(ready(b'I'));
    s.write_all(&hello).unwrap();
    loop {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&got).contains("COMMIT\0") {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        s.write_all(answer).unwrap();
        if close {
            return;
        }
    }
}

fn url(port: u16) -> String {
    format!("postgres://agent:pw@127.0.0.1:{port}/sigma?sslmode=disable")
}

/// The four parts of a good answer, with one route; `between` goes before every message.
fn good_answer(between: &[u8]) -> Vec<u8> {
    let parts = [
        complete("BEGIN"),
        complete("SET"),
        complete("SET"),
        ready(b'T'),
        msg(b'1', &[]),
        msg(b'2', &[]),
        row(&["vps-id"]),
        complete("SELECT 1"),
        ready(b'T'),
        msg(b'1', &[]),
        msg(b'2', &[]),
        row(&["n", "r", "10001", "127.0.0.1", "22"]),
        complete("SELECT 1"),
        ready(b'T'),
        complete("COMMIT"),
        ready(b'I'),
    ];
    let mut out = Vec::new();
    for p in parts {
        out.extend_from_slice(between);
        out.extend(p);
    }
    out
}

#[test]
fn notices_and_parameter_status_between_every_message() {
    let mut between = notice();
    between.extend(param("TimeZone", "UTC"));
    let (port, server) = fake_server(good_answer(&between), false, 1);
    let mut src = Driven::new(PgSource::new(&url(port), "vps-1", None).unwrap());
    for _ in 0..3 {
        match src.fetch(Instant::now()) {
            Fetch::Routes(r) => assert_eq!(r[0].backend, "127.0.0.1:22"),
            other => panic!("{other:?}"),
        }
    }
    drop(src);
    server.join().unwrap();
}

#[test]
fn server_drops_the_connection_mid_pipeline() {
    let half = [
        complete("BEGIN"),
        ready(b'T'),
        msg(b'1', &[]),
        msg(b'2', &[]),
    ]
    .concat();
    let (port, server) = fake_server(half, true, 1);
    let mut src = Driven::new(PgSource::new(&url(port), "vps-1", None).unwrap());
    let started = Instant::now();
    match src.fetch(Instant::now()) {
        Fetch::Failed(e) => assert!(e.contains("closed the connection"), "{e}"),
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() < QUERY_TIMEOUT, "noticed at once");
    server.join().unwrap();
}

#[test]
fn an_error_in_the_middle_of_the_pipeline_is_the_one_reported() {
    let answer = [
        complete("BEGIN"),
        ready(b'T'),
        error("XX000", "the registration query broke"),
        ready(b'E'),
        error("25P02", "current transaction is aborted"),
        ready(b'E'),
        complete("ROLLBACK"),
        ready(b'I'),
    ]
    .concat();
    let (port, server) = fake_server(answer, false, 1);
    let mut src = Driven::new(PgSource::new(&url(port), "vps-1", None).unwrap());
    match src.fetch(Instant::now()) {
        Fetch::Failed(e) => {
            assert!(
                e.contains("XX000") && e.contains("registration query broke"),
                "{e}"
            );
            assert!(!e.contains("25P02"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    // The connection was left idle by the server: the next attempt reuses it.
    let due = src.next_attempt().unwrap();
    assert!(matches!(src.fetch(due), Fetch::Failed(_)));
    drop(src);
    server.join().unwrap();
}

#[test]
fn an_absurdly_long_message_is_refused_without_waiting_for_it() {
    let mut huge = vec![b'D'];
    huge.extend_from_slice(&(1u32 << 30).to_be_bytes());
    huge.extend_from_slice(&[0u8; 64]);
    let (port, server) = fake_server(huge, false, 1);
    let mut src = Driven::new(PgSource::new(&url(port), "vps-1", None).unwrap());
    let started = Instant::now();
    match src.fetch(Instant::now()) {
        Fetch::Failed(e) => assert!(e.contains("MAX_MESSAGE_BYTES"), "{e}"),
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() < QUERY_TIMEOUT);
    drop(src);
    server.join().unwrap();
}
