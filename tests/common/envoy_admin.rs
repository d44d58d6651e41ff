//! A fake Envoy admin interface for tests, on 127.0.0.1 only: answers `GET
//! /clusters?format=json` with JSON written field for field as Envoy's admin handler writes
//! `admin.v3.Clusters` (pretty-printed proto3 JSON: per-host stats with uint64 values as
//! strings, zero values and default enums omitted, `locality`, `weight`, circuit breakers per
//! cluster), or misbehaves as a [`Mode`] says. One thread per connection, so a slow answer
//! never holds up the next one.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One upstream host in the fake's answer.
#[derive(Clone, Debug)]
pub struct FakeHost {
    pub cluster: String,
    pub address: String,
    pub port: u16,
    /// `hostname` (DNS clusters); empty for none.
    pub hostname: String,
    /// `eds_health_status`; empty to omit it.
    pub eds: String,
    /// `HostHealthStatus` booleans that are true, by name.
    pub flags: Vec<&'static str>,
}

impl FakeHost {
    pub fn healthy(cluster: &str, address: &str, port: u16) -> FakeHost {
        FakeHost {
            cluster: cluster.into(),
            address: address.into(),
            port,
            hostname: String::new(),
            eds: "HEALTHY".into(),
            flags: Vec::new(),
        }
    }

    pub fn failing(mut self, flag: &'static str) -> FakeHost {
        self.flags.push(flag);
        self
    }
}

/// How the fake answers.
#[derive(Clone, Debug)]
pub enum Mode {
    /// The hosts, with Content-Length.
    Json,
    /// The hosts, chunked in pieces of this many bytes.
    Chunked(usize),
    /// Reads the request, answers (with the hosts) only after this long.
    Slow(Duration),
    /// An endless-looking body without length: this many bytes of JSON-ish filler, then close.
    Huge(usize),
    /// Bytes that are not HTTP.
    Garbage,
    /// A head announcing the whole body, half the body, then close.
    Truncated,
}

struct State {
    mode: Mode,
    hosts: Vec<FakeHost>,
}

pub struct FakeAdmin {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    requests: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl FakeAdmin {
    pub fn start(mode: Mode, hosts: Vec<FakeHost>) -> FakeAdmin {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let state = Arc::new(Mutex::new(State { mode, hosts }));
        let requests = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        {
            let (state, requests, stop) = (state.clone(), requests.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((conn, _)) => {
                            let (state, requests) = (state.clone(), requests.clone());
                            std::thread::spawn(move || serve(conn, &state, &requests));
                        }
                        // Non-blocking accept, idle pauses: the stop flag is seen at once.
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            });
        }
        FakeAdmin {
            addr,
            state,
            requests,
            stop,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn set_hosts(&self, hosts: Vec<FakeHost>) {
        self.state.lock().unwrap().hosts = hosts;
    }

    /// Requests received so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::Relaxed)
    }
}

impl Drop for FakeAdmin {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve(mut conn: TcpStream, state: &Mutex<State>, requests: &AtomicUsize) {
    conn.set_nonblocking(false).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    requests.fetch_add(1, Ordering::Relaxed);
    let (mode, hosts) = {
        let s = state.lock().unwrap();
        (s.mode.clone(), s.hosts.clone())
    };
    let wanted = head.starts_with(b"GET /clusters?format=json HTTP/1.1\r\n");
    let body = if wanted {
        clusters_json(&hosts)
    } else {
        b"{\"error\":\"not found\"}".to_vec()
    };
    let status = if wanted { "200 OK" } else { "404 Not Found" };
    let json_head = |extra: &str| {
        format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncache-control: no-cache, max-age=0\r\nx-content-type-options: nosniff\r\ndate: Wed, 02 Dec 2026 03:00:00 GMT\r\nserver: envoy\r\n{extra}\r\n"
        )
    };
    let _ = match mode {
        Mode::Json => conn
            .write_all(json_head(&format!("content-length: {}\r\n", body.len())).as_bytes())
            .and_then(|_| conn.write_all(&body)),
        Mode::Chunked(size) => {
            let mut out = json_head("transfer-encoding: chunked\r\n").into_bytes();
            for piece in body.chunks(size.max(1)) {
                out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
                out.extend_from_slice(piece);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"0\r\n\r\n");
            conn.write_all(&out)
        }
        Mode::Slow(delay) => {
            // The slowness is the behaviour under test.
            std::thread::sleep(delay);
            conn.write_all(json_head(&format!("content-length: {}\r\n", body.len())).as_bytes())
                .and_then(|_| conn.write_all(&body))
        }
        Mode::Huge(total) => {
            let filler = format!(
                "{{\"cluster_statuses\":[{}",
                "{\"name\":\"x\"},".repeat(5000)
            );
            let mut sent = 0;
            let mut r = conn.write_all(json_head("").as_bytes());
            while r.is_ok() && sent < total {
                r = conn.write_all(filler.as_bytes());
                sent += filler.len();
            }
            r
        }
        Mode::Garbage => conn
            .write_all(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage, not HTTP\r\n\r\n{]"),
        Mode::Truncated => conn
            .write_all(json_head(&format!("content-length: {}\r\n", body.len())).as_bytes())
            .and_then(|_| conn.write_all(&body[..body.len() / 2])),
    };
    let _ = conn.flush();
}

/// `admin.v3.Clusters` as Envoy's admin handler prints it (see `tests/fixtures/envoy`).
pub fn clusters_json(hosts: &[FakeHost]) -> Vec<u8> {
    let mut clusters: Vec<&str> = Vec::new();
    for h in hosts {
        if !clusters.contains(&h.cluster.as_str()) {
            clusters.push(&h.cluster);
        }
    }
    let mut out = String::from("{\n \"cluster_statuses\": [");
    for (ci, cluster) in clusters.iter().enumerate() {
        out.push_str(if ci == 0 { "\n" } else { ",\n" });
        out.push_str(&format!(
            "  {{\n   \"name\": \"{cluster}\",\n   \"host_statuses\": ["
        ));
        let mut first = true;
        for (i, h) in hosts.iter().filter(|h| h.cluster == *cluster).enumerate() {
            out.push_str(if first { "\n" } else { ",\n" });
            first = false;
            out.push_str(&host_json(h, i));
        }
        out.push_str(
            "\n   ],\n   \"circuit_breakers\": {\n    \"thresholds\": [\n     {\n      \"max_connections\": 1024,\n      \"max_pending_requests\": 1024,\n      \"max_requests\": 1024,\n      \"max_retries\": 3\n     },\n     {\n      \"priority\": \"HIGH\",\n      \"max_connections\": 1024,\n      \"max_pending_requests\": 1024,\n      \"max_requests\": 1024,\n      \"max_retries\": 3\n     }\n    ]\n   },\n",
        );
        out.push_str(&format!("   \"observability_name\": \"{cluster}\"\n  }}"));
    }
    out.push_str("\n ]\n}\n");
    out.into_bytes()
}

fn host_json(h: &FakeHost, i: usize) -> String {
    let mut health = String::new();
    for flag in &h.flags {
        health.push_str(&format!("\n      \"{flag}\": true,"));
    }
    if !h.eds.is_empty() {
        health.push_str(&format!("\n      \"eds_health_status\": \"{}\"", h.eds));
    } else if health.ends_with(',') {
        health.pop();
    }
    let hostname = if h.hostname.is_empty() {
        String::new()
    } else {
        format!("     \"hostname\": \"{}\",\n", h.hostname)
    };
    format!(
        "    {{\n     \"address\": {{\n      \"socket_address\": {{\n       \"address\": \"{addr}\",\n       \"port_value\": {port}\n      }}\n     }},\n     \"stats\": [\n      {{\n       \"name\": \"cx_connect_fail\"\n      }},\n      {{\n       \"value\": \"{cx}\",\n       \"name\": \"cx_total\"\n      }},\n      {{\n       \"name\": \"rq_error\"\n      }},\n      {{\n       \"name\": \"rq_success\"\n      }},\n      {{\n       \"name\": \"rq_timeout\"\n      }},\n      {{\n       \"name\": \"rq_total\"\n      }},\n      {{\n       \"value\": \"1\",\n       \"type\": \"GAUGE\",\n       \"name\": \"cx_active\"\n      }},\n      {{\n       \"type\": \"GAUGE\",\n       \"name\": \"rq_active\"\n      }}\n     ],\n     \"health_status\": {{{health}\n     }},\n     \"weight\": 1,\n{hostname}     \"locality\": {{}}\n    }}",
        addr = h.address,
        port = h.port,
        cx = 100 + i,
    )
}
