//! The two servers the database faults put between the agent and its database, both on
//! loopback: a TCP relay that can go silent or cut every connection, and a name server for
//! the database's host name that can go silent.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::faults::FAULT_DB_NAME;
use crate::helper::{Alive, Helper};

/// A TCP relay on loopback between an agent and the database that the bench can make silent
/// or cut. One thread accepts; each relayed connection has a thread per direction.
pub struct Relay {
    pub port: u16,
    silent: Arc<AtomicBool>,
    /// Bumped to close every connection opened before (a cut).
    generation: Arc<AtomicU64>,
    _thread: Helper,
}

impl Relay {
    pub fn start(upstream: SocketAddr) -> io::Result<Relay> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let silent = Arc::new(AtomicBool::new(false));
        let generation = Arc::new(AtomicU64::new(0));
        let (quiet, gen) = (silent.clone(), generation.clone());
        let thread = Helper::spawn(move |alive| {
            // Connections accepted while silent: held open, never read, never answered.
            let mut held: Vec<(u64, TcpStream)> = Vec::new();
            let mut pumps: Vec<JoinHandle<()>> = Vec::new();
            while alive.running() {
                let now_gen = gen.load(Ordering::Relaxed);
                held.retain(|(g, _)| *g == now_gen);
                match listener.accept() {
                    Ok((agent, _)) if quiet.load(Ordering::Relaxed) => held.push((now_gen, agent)),
                    Ok((agent, _)) => {
                        let Ok(db) = TcpStream::connect_timeout(&upstream, Duration::from_secs(2))
                        else {
                            continue; // dropping `agent` closes it: the agent sees a failure
                        };
                        for (from, to) in [(&agent, &db), (&db, &agent)] {
                            let (Ok(from), Ok(to)) = (from.try_clone(), to.try_clone()) else {
                                continue;
                            };
                            let (quiet, gen, alive) = (quiet.clone(), gen.clone(), alive.clone());
                            pumps.push(std::thread::spawn(move || {
                                relay_pump(from, to, &quiet, &gen, now_gen, &alive)
                            }));
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
                pumps.retain(|p| !p.is_finished());
            }
            alive.stop();
            for p in pumps {
                let _ = p.join();
            }
        });
        Ok(Relay {
            port,
            silent,
            generation,
            _thread: thread,
        })
    }

    /// Silent: bytes from either side are read and dropped; new connections are held.
    pub fn set_silent(&self, silent: bool) {
        self.silent.store(silent, Ordering::Relaxed);
        if !silent {
            // What was silenced is out of step with the protocol: close it.
            self.cut();
        }
    }

    /// Closes every connection open now (relayed or held).
    pub fn cut(&self) {
        self.generation.fetch_add(1, Ordering::Relaxed);
    }
}

/// One direction of a relayed connection, until either side closes, a cut or the stop.
fn relay_pump(
    mut from: TcpStream,
    mut to: TcpStream,
    silent: &AtomicBool,
    generation: &AtomicU64,
    born: u64,
    alive: &Alive,
) {
    let mut buf = [0u8; 16 * 1024];
    if from
        .set_read_timeout(Some(Duration::from_millis(20)))
        .is_ok()
    {
        while !alive.stopped() && generation.load(Ordering::Relaxed) == born {
            match from.read(&mut buf) {
                Ok(0) => break,
                Ok(_) if silent.load(Ordering::Relaxed) => {} // read, dropped, never answered
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(_) => break,
            }
        }
    }
    let _ = from.shutdown(std::net::Shutdown::Both);
    let _ = to.shutdown(std::net::Shutdown::Both);
}

/// A name server on loopback UDP for [`FAULT_DB_NAME`] (A: 127.0.0.1, TTL 1; AAAA: no data;
/// any other name: NXDOMAIN) that the bench can make silent: it then reads queries and never
/// answers.
pub struct NameServer {
    pub addr: SocketAddr,
    silent: Arc<AtomicBool>,
    queries: Arc<AtomicU64>,
    unanswered: Arc<AtomicU64>,
    last_answer: Arc<Mutex<Option<Instant>>>,
    _thread: Helper,
}

impl NameServer {
    pub fn start() -> io::Result<NameServer> {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
        socket.set_read_timeout(Some(Duration::from_millis(20)))?;
        let addr = socket.local_addr()?;
        let silent = Arc::new(AtomicBool::new(false));
        let queries = Arc::new(AtomicU64::new(0));
        let unanswered = Arc::new(AtomicU64::new(0));
        let last_answer = Arc::new(Mutex::new(None));
        let (quiet, asked, ignored, last) = (
            silent.clone(),
            queries.clone(),
            unanswered.clone(),
            last_answer.clone(),
        );
        let thread = Helper::spawn(move |alive| {
            let mut buf = [0u8; 512];
            while alive.running() {
                let Ok((n, from)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                asked.fetch_add(1, Ordering::Relaxed);
                if quiet.load(Ordering::Relaxed) {
                    ignored.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                if let Some(answer) = dns_answer(&buf[..n]) {
                    if socket.send_to(&answer, from).is_ok() {
                        if let Ok(mut l) = last.lock() {
                            *l = Some(Instant::now());
                        }
                    }
                }
            }
        });
        Ok(NameServer {
            addr,
            silent,
            queries,
            unanswered,
            last_answer,
            _thread: thread,
        })
    }

    pub fn set_silent(&self, silent: bool) {
        self.silent.store(silent, Ordering::Relaxed);
    }

    /// Queries received so far, and those left unanswered (while silent).
    pub fn counts(&self) -> (u64, u64) {
        (
            self.queries.load(Ordering::Relaxed),
            self.unanswered.load(Ordering::Relaxed),
        )
    }

    pub fn last_answer(&self) -> Option<Instant> {
        self.last_answer.lock().ok().and_then(|l| *l)
    }
}

/// The answer to a DNS query (RFC 1035 §4.1): for [`FAULT_DB_NAME`] an A record 127.0.0.1 or
/// no data; NXDOMAIN for any other name. None for what is not a one-question query.
fn dns_answer(query: &[u8]) -> Option<Vec<u8>> {
    if query.len() < 12 || query[2] & 0x80 != 0 || query[4..6] != [0, 1] {
        return None;
    }
    let mut name = String::new();
    let mut at = 12;
    loop {
        let len = usize::from(*query.get(at)?);
        at += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None;
        }
        let label = query.get(at..at + len)?;
        if !name.is_empty() {
            name.push('.');
        }
        name.push_str(&String::from_utf8_lossy(label).to_ascii_lowercase());
        at += len;
    }
    let qtype = u16::from_be_bytes([*query.get(at)?, *query.get(at + 1)?]);
    let question = query.get(12..at + 4)?;
    let ours = name == FAULT_DB_NAME;
    let answer_a = ours && qtype == 1;
    let mut out = Vec::with_capacity(question.len() + 28);
    out.extend_from_slice(&query[0..2]);
    // QR, AA, RD copied; RA; RCODE 0 or 3 (NXDOMAIN).
    out.push(0x84 | (query[2] & 0x01));
    out.push(if ours { 0x80 } else { 0x83 });
    out.extend_from_slice(&[0, 1, 0, u8::from(answer_a), 0, 0, 0, 0]);
    out.extend_from_slice(question);
    if answer_a {
        // Name: a pointer to the question's; type A, class IN, TTL 1, 4 bytes.
        out.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 1, 0, 4, 127, 0, 0, 1]);
    }
    Some(out)
}
