//! A small DNS responder for tests, on 127.0.0.1 only (UDP and TCP on the
//! same port). Each name gets a [`Behavior`] and a TTL; unknown names get
//! NXDOMAIN. It counts the queries it receives.
//!
//! Written independently of `src/dns/` (`wire.rs`) so that it checks the resolver
//! rather than mirroring it.

use sigma_agent_lite::fixtures::dns_name as encode;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// How the server answers one name.
#[derive(Debug, Clone)]
pub enum Behavior {
    /// A and AAAA records; an empty list gives NODATA for that type.
    Addrs {
        v4: Vec<Ipv4Addr>,
        v6: Vec<Ipv6Addr>,
    },
    /// `name CNAME chain[0]`, `chain[0] CNAME chain[1]`, ..., last one `A v4`.
    CnameChain {
        chain: Vec<String>,
        v4: Vec<Ipv4Addr>,
    },
    NxDomain,
    ServFail,
    /// Never answers.
    Silent,
    /// Over UDP an empty reply with TC=1; over TCP the A records.
    TruncateUdp {
        v4: Vec<Ipv4Addr>,
    },
    /// First a reply with a wrong id (and a bogus address), then the right one.
    WrongIdFirst {
        v4: Vec<Ipv4Addr>,
    },
    /// First the right id from another port (bogus address), then the right one.
    WrongSourceFirst {
        v4: Vec<Ipv4Addr>,
    },
    /// Ignores the first query for the name, answers the next ones.
    DropFirst {
        v4: Vec<Ipv4Addr>,
    },
    /// An answer whose owner name is a pointer to itself.
    CompressionLoop,
}

impl Behavior {
    /// A records `v4`; AAAA queries get NODATA.
    pub fn v4(v4: &[Ipv4Addr]) -> Behavior {
        Behavior::Addrs {
            v4: v4.to_vec(),
            v6: vec![],
        }
    }
}

/// Address the misbehaving replies carry, so a test can tell if one was taken (on loopback,
/// so nothing leaves the machine even if one were).
pub const BOGUS: Ipv4Addr = Ipv4Addr::new(127, 6, 6, 6);

#[derive(Default)]
struct State {
    names: HashMap<String, (Behavior, u32)>,
    per_name: HashMap<String, usize>,
    udp_queries: usize,
    tcp_queries: usize,
}

pub struct DnsServer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl DnsServer {
    /// Binds UDP and TCP on 127.0.0.1 with the same free port and starts serving.
    pub fn start() -> DnsServer {
        let (udp, tcp) = bind_pair();
        let addr = udp.local_addr().expect("local addr");
        let spoof = UdpSocket::bind("127.0.0.1:0").expect("bind spoof socket");
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let udp_thread = {
            let (state, stop) = (state.clone(), stop.clone());
            std::thread::spawn(move || serve_udp(udp, spoof, state, stop))
        };
        let tcp_thread = {
            let (state, stop) = (state.clone(), stop.clone());
            std::thread::spawn(move || serve_tcp(tcp, state, stop))
        };
        DnsServer {
            addr,
            state,
            stop,
            threads: vec![udp_thread, tcp_thread],
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The agent's flag to resolve names through this server: `--dns-server=ADDR`.
    pub fn flag(&self) -> String {
        format!("--dns-server={}", self.addr)
    }

    pub fn set(&self, name: &str, behavior: Behavior, ttl: u32) {
        let mut state = self.state.lock().unwrap();
        state
            .names
            .insert(name.to_ascii_lowercase(), (behavior, ttl));
    }

    /// Queries received for `name` (any type, UDP and TCP).
    pub fn queries(&self, name: &str) -> usize {
        let state = self.state.lock().unwrap();
        state
            .per_name
            .get(&name.to_ascii_lowercase())
            .copied()
            .unwrap_or(0)
    }

    pub fn udp_queries(&self) -> usize {
        self.state.lock().unwrap().udp_queries
    }

    pub fn tcp_queries(&self) -> usize {
        self.state.lock().unwrap().tcp_queries
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

fn bind_pair() -> (UdpSocket, TcpListener) {
    for _ in 0..50 {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
        let addr = udp.local_addr().expect("local addr");
        if let Ok(tcp) = TcpListener::bind(addr) {
            return (udp, tcp);
        }
    }
    panic!("no port free for both UDP and TCP on 127.0.0.1");
}

fn serve_udp(socket: UdpSocket, spoof: UdpSocket, state: Arc<Mutex<State>>, stop: Arc<AtomicBool>) {
    socket
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let mut buf = [0u8; 1500];
    while !stop.load(Ordering::Relaxed) {
        let Ok((len, from)) = socket.recv_from(&mut buf) else {
            continue;
        };
        for (via_spoof, reply) in respond(&buf[..len], &state, false) {
            let sender = if via_spoof { &spoof } else { &socket };
            let _ = sender.send_to(&reply, from);
        }
    }
}

fn serve_tcp(listener: TcpListener, state: Arc<Mutex<State>>, stop: Arc<AtomicBool>) {
    listener.set_nonblocking(true).unwrap();
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => serve_tcp_conn(stream, &state),
            // Non-blocking accept, idle pauses: the stop flag is seen within 10 ms.
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

fn serve_tcp_conn(mut stream: TcpStream, state: &Mutex<State>) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut len = [0u8; 2];
    if stream.read_exact(&mut len).is_err() {
        return;
    }
    let mut query = vec![0u8; usize::from(u16::from_be_bytes(len))];
    if stream.read_exact(&mut query).is_err() {
        return;
    }
    for (_, reply) in respond(&query, state, true) {
        let mut framed = (reply.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&reply);
        let _ = stream.write_all(&framed);
    }
}

struct Query {
    id: u16,
    name: String,
    qtype: u16,
    /// Question section bytes, copied into the reply.
    question: Vec<u8>,
}

fn parse_query(packet: &[u8]) -> Option<Query> {
    let id = u16::from_be_bytes([*packet.first()?, *packet.get(1)?]);
    let mut pos = 12;
    let mut labels = Vec::new();
    loop {
        let len = usize::from(*packet.get(pos)?);
        pos += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(packet.get(pos..pos + len)?).to_ascii_lowercase());
        pos += len;
    }
    let qtype = u16::from_be_bytes([*packet.get(pos)?, *packet.get(pos + 1)?]);
    let question = packet.get(12..pos + 4)?.to_vec();
    Some(Query {
        id,
        name: labels.join("."),
        qtype,
        question,
    })
}

struct Reply {
    id: u16,
    tc: bool,
    rcode: u16,
    question: Vec<u8>,
    answers: Vec<Vec<u8>>,
}

impl Reply {
    fn new(query: &Query) -> Reply {
        Reply {
            id: query.id,
            tc: false,
            rcode: 0,
            question: query.question.clone(),
            answers: Vec::new(),
        }
    }

    fn add(&mut self, owner: Vec<u8>, rtype: u16, ttl: u32, rdata: &[u8]) {
        let mut rr = owner;
        rr.extend_from_slice(&rtype.to_be_bytes());
        rr.extend_from_slice(&1u16.to_be_bytes());
        rr.extend_from_slice(&ttl.to_be_bytes());
        rr.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        rr.extend_from_slice(rdata);
        self.answers.push(rr);
    }

    fn bytes(&self) -> Vec<u8> {
        let flags: u16 = 0x8180 | if self.tc { 0x0200 } else { 0 } | self.rcode;
        let mut out = Vec::new();
        for word in [self.id, flags, 1, self.answers.len() as u16, 0, 0] {
            out.extend_from_slice(&word.to_be_bytes());
        }
        out.extend_from_slice(&self.question);
        for rr in &self.answers {
            out.extend_from_slice(rr);
        }
        out
    }
}

const QNAME_PTR: [u8; 2] = [0xC0, 12];

fn add_v4(reply: &mut Reply, owner: Vec<u8>, qtype: u16, v4: &[Ipv4Addr], ttl: u32) {
    if qtype == 1 {
        for ip in v4 {
            reply.add(owner.clone(), 1, ttl, &ip.octets());
        }
    }
}

/// The packets to send for `packet`, each flagged "send from the spoof socket".
fn respond(packet: &[u8], state: &Mutex<State>, over_tcp: bool) -> Vec<(bool, Vec<u8>)> {
    let Some(query) = parse_query(packet) else {
        return Vec::new();
    };
    let (behavior, ttl, seen) = {
        let mut state = state.lock().unwrap();
        if over_tcp {
            state.tcp_queries += 1;
        } else {
            state.udp_queries += 1;
        }
        let seen = *state.per_name.get(&query.name).unwrap_or(&0);
        state.per_name.insert(query.name.clone(), seen + 1);
        match state.names.get(&query.name) {
            Some((behavior, ttl)) => (behavior.clone(), *ttl, seen),
            None => (Behavior::NxDomain, 0, seen),
        }
    };
    let mut reply = Reply::new(&query);
    let mut bogus = Reply::new(&query);
    add_v4(&mut bogus, QNAME_PTR.to_vec(), query.qtype, &[BOGUS], ttl);
    match behavior {
        Behavior::Addrs { v4, v6 } => {
            add_v4(&mut reply, QNAME_PTR.to_vec(), query.qtype, &v4, ttl);
            if query.qtype == 28 {
                for ip in v6 {
                    reply.add(QNAME_PTR.to_vec(), 28, ttl, &ip.octets());
                }
            }
        }
        Behavior::CnameChain { chain, v4 } => {
            let mut owner = QNAME_PTR.to_vec();
            for target in &chain {
                reply.add(owner, 5, ttl, &encode(target));
                owner = encode(target);
            }
            add_v4(&mut reply, owner, query.qtype, &v4, ttl);
        }
        Behavior::NxDomain => reply.rcode = 3,
        Behavior::ServFail => reply.rcode = 2,
        Behavior::Silent => return Vec::new(),
        Behavior::TruncateUdp { v4 } => {
            if over_tcp {
                add_v4(&mut reply, QNAME_PTR.to_vec(), query.qtype, &v4, ttl);
            } else {
                reply.tc = true;
            }
        }
        Behavior::WrongIdFirst { v4 } => {
            add_v4(&mut reply, QNAME_PTR.to_vec(), query.qtype, &v4, ttl);
            bogus.id = query.id.wrapping_add(1);
            return vec![(false, bogus.bytes()), (false, reply.bytes())];
        }
        Behavior::WrongSourceFirst { v4 } => {
            add_v4(&mut reply, QNAME_PTR.to_vec(), query.qtype, &v4, ttl);
            return vec![(true, bogus.bytes()), (false, reply.bytes())];
        }
        Behavior::DropFirst { v4 } => {
            if seen == 0 {
                return Vec::new();
            }
            add_v4(&mut reply, QNAME_PTR.to_vec(), query.qtype, &v4, ttl);
        }
        Behavior::CompressionLoop => {
            let owner_at = 12 + reply.question.len();
            reply.add(
                vec![0xC0 | (owner_at >> 8) as u8, owner_at as u8],
                1,
                ttl,
                &[1, 2, 3, 4],
            );
        }
    }
    vec![(false, reply.bytes())]
}
