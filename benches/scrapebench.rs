//! Scrape load, before and after the cached /metrics body (part of `make bench`, run by
//! `scripts/bench.sh`): S concurrent scrapers, each on its own keep-alive connection, scrape
//! an agent of N routes as fast as it answers for a fixed window, while one more client times
//! `/healthz`. Side by side in one run: the binary from before the cache (built by bench.sh
//! from main's history) and the current one; identity and gzip (`Accept-Encoding: gzip`, what
//! Prometheus sends; the old binary ignores it and answers identity).
//!
//! The agents probe N routes to a closed loopback port (refused at once) with a long
//! interval: the load starts after the first cycle, so the snapshot is steady and the window
//! measures serving, not probing. Reported per (binary, encoding): scrapes/s, scrape latency
//! p50/p99, /healthz p50/p99, agent CPU per scrape (utime+stime from /proc/PID/stat over the
//! window ÷ 200 responses), bytes per scrape, 503s (the in-flight budget), peak RSS.
//!
//! Usage: `scrapebench BEFORE_BIN AFTER_BIN WORK_DIR` with `BENCH_SCRAPE_ROUTES` (10000,
//! comma-separated list allowed), `BENCH_SCRAPERS` (100), `BENCH_SCRAPE_WINDOW` seconds (5),
//! `BENCH_SCRAPE_JSON` (output file). Loopback only; every loop is bounded in time.

// The /proc readers of benchkit (which uses the rest of the module: footprints).
#[allow(dead_code)]
#[path = "common/procfs.rs"]
mod procfs;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const READY_TIMEOUT: Duration = Duration::from_secs(60);
const IO_TIMEOUT: Duration = Duration::from_secs(30);

struct Agent {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

fn start(bin: &str, routes: &std::path::Path, log: &std::path::Path) -> Agent {
    let mut child = Command::new(bin)
        .args(["--health-probe", "--health-probe-interval", "1h"])
        .args(["--health-probe-timeout", "1s", "--routes-file"])
        .arg(routes)
        .args(["--metrics-listen", "127.0.0.1:0"])
        // info for the start-up line with the bound address (main's target); the per-route
        // state changes that follow are drained and dropped.
        .env("RUST_LOG", "warn,sigma_agent_lite=info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the agent");
    let mut stderr = child.stderr.take().unwrap();
    let log = log.to_owned();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        let mut sent = false;
        while let Ok(n) = stderr.read(&mut buf) {
            if n == 0 {
                break;
            }
            if sent {
                continue; // drain only
            }
            all.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&all);
            {
                if let Some(i) = text.find("; http 127.0.0.1:") {
                    let rest = &text[i + "; http ".len()..];
                    let addr: String = rest
                        .chars()
                        .take_while(|c| !c.is_whitespace() && *c != ';')
                        .collect();
                    if let Ok(a) = addr.parse::<SocketAddr>() {
                        let _ = tx.send(a);
                        sent = true;
                    }
                }
            }
            let _ = std::fs::write(&log, &all);
        }
    });
    let addr = rx
        .recv_timeout(READY_TIMEOUT)
        .expect("the agent's listen address");
    let agent = Agent { child, addr };
    // Wait for the first cycle: the snapshot is steady from then on (interval 1 h).
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Ok((200, body)) = get(agent.addr, "/metrics", false) {
            if String::from_utf8_lossy(&body).contains("\nsigma_probe_cycles_total 1\n") {
                return agent;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no first cycle within {READY_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One request on a fresh connection (setup only).
fn get(addr: SocketAddr, path: &str, gzip: bool) -> std::io::Result<(u16, Vec<u8>)> {
    let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    let mut conn = Conn { s, buf: Vec::new() };
    conn.request(path, gzip)
}

struct Conn {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    /// Sends a keep-alive GET, reads one response by its Content-Length.
    fn request(&mut self, path: &str, gzip: bool) -> std::io::Result<(u16, Vec<u8>)> {
        let enc = if gzip {
            "Accept-Encoding: gzip\r\n"
        } else {
            ""
        };
        // One write: a request split over several segments waits for the agent's delayed ACK
        // (Nagle), adding ~40 ms to every request.
        let req = format!("GET {path} HTTP/1.1\r\nHost: bench\r\n{enc}\r\n");
        self.s.write_all(req.as_bytes())?;
        let mut chunk = [0u8; 65536];
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = self.s.read(&mut chunk)?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        let status: u16 = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while self.buf.len() < head_end + len {
            let n = self.s.read(&mut chunk)?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
        let body = self.buf[head_end..head_end + len].to_vec();
        self.buf.drain(..head_end + len);
        if head.contains("Connection: close") {
            return Err(std::io::Error::other(format!("closed after {status}")));
        }
        Ok((status, body))
    }
}

/// utime + stime of `pid` (all its threads), in seconds; 0 if it cannot be read.
fn cpu_seconds(pid: u32) -> f64 {
    procfs::cpu_seconds(&format!("/proc/{pid}/stat")).unwrap_or(0.0)
}

fn peak_rss_kib(pid: u32) -> u64 {
    procfs::kib_field(&format!("/proc/{pid}/status"), "VmHWM:").unwrap_or(0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

struct Row {
    binary: &'static str,
    encoding: &'static str,
    routes: usize,
    scrapes: usize,
    rate: f64,
    p50: f64,
    p99: f64,
    health_p50: f64,
    health_p99: f64,
    cpu_ms: f64,
    bytes: usize,
    busy: usize,
    errors: usize,
    rss_kib: u64,
}

fn load(agent: &Agent, scrapers: usize, window: Duration, gzip: bool) -> Row {
    let stop = Arc::new(AtomicBool::new(false));
    let pid = agent.child.id();
    let cpu0 = cpu_seconds(pid);
    let started = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..scrapers {
        let (addr, stop) = (agent.addr, stop.clone());
        handles.push(std::thread::spawn(move || {
            let mut lat = Vec::new();
            let (mut bytes, mut busy, mut errors) = (0, 0, 0);
            let mut conn: Option<Conn> = None;
            while !stop.load(Ordering::Relaxed) && started.elapsed() < window * 4 {
                let c = match conn.as_mut() {
                    Some(c) => c,
                    None => match TcpStream::connect_timeout(&addr, IO_TIMEOUT) {
                        Ok(s) => {
                            let _ = s.set_read_timeout(Some(IO_TIMEOUT));
                            conn.insert(Conn { s, buf: Vec::new() })
                        }
                        Err(_) => {
                            errors += 1;
                            std::thread::sleep(Duration::from_millis(10));
                            continue;
                        }
                    },
                };
                let t = Instant::now();
                match c.request("/metrics", gzip) {
                    Ok((200, body)) => {
                        lat.push(t.elapsed().as_secs_f64());
                        bytes = body.len();
                    }
                    Ok((503, _)) => busy += 1,
                    Ok(_) | Err(_) => {
                        errors += 1;
                        conn = None;
                    }
                }
            }
            (lat, bytes, busy, errors)
        }));
    }
    // /healthz latency under the load, one request every 20 ms on its own connection.
    let mut health = Vec::new();
    let mut hconn: Option<Conn> = None;
    while started.elapsed() < window {
        if hconn.is_none() {
            if let Ok(s) = TcpStream::connect_timeout(&agent.addr, IO_TIMEOUT) {
                let _ = s.set_read_timeout(Some(IO_TIMEOUT));
                hconn = Some(Conn { s, buf: Vec::new() });
            }
        }
        if let Some(c) = hconn.as_mut() {
            let t = Instant::now();
            match c.request("/healthz", false) {
                Ok((200, _)) => health.push(t.elapsed().as_secs_f64()),
                _ => hconn = None,
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    let mut lat = Vec::new();
    let (mut bytes, mut busy, mut errors) = (0, 0, 0);
    for h in handles {
        let (l, b, bz, e) = h.join().unwrap();
        lat.extend(l);
        bytes = bytes.max(b);
        busy += bz;
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid) - cpu0;
    lat.sort_by(f64::total_cmp);
    health.sort_by(f64::total_cmp);
    let responses = (lat.len() + busy).max(1);
    Row {
        binary: "",
        encoding: if gzip { "gzip" } else { "identity" },
        routes: 0,
        scrapes: lat.len(),
        rate: lat.len() as f64 / elapsed,
        p50: percentile(&lat, 0.5),
        p99: percentile(&lat, 0.99),
        health_p50: percentile(&health, 0.5),
        health_p99: percentile(&health, 0.99),
        cpu_ms: cpu * 1e3 / responses as f64,
        bytes,
        busy,
        errors,
        rss_kib: peak_rss_kib(pid),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [before, after, work] = &args[..] else {
        eprintln!("usage: scrapebench BEFORE_BIN AFTER_BIN WORK_DIR");
        std::process::exit(2);
    };
    let scrapers: usize = env_or("BENCH_SCRAPERS", "100")
        .parse()
        .expect("BENCH_SCRAPERS");
    let window = Duration::from_secs_f64(
        env_or("BENCH_SCRAPE_WINDOW", "5")
            .parse()
            .expect("BENCH_SCRAPE_WINDOW"),
    );
    let sizes: Vec<usize> = env_or("BENCH_SCRAPE_ROUTES", "10000")
        .split(',')
        .map(|v| v.trim().parse().expect("BENCH_SCRAPE_ROUTES"))
        .collect();
    let work = std::path::Path::new(work);
    std::fs::create_dir_all(work).unwrap();
    // A port nothing listens on: every probe is refused at once.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut rows = Vec::new();
    for &n in &sizes {
        let routes = work.join(format!("scrape-routes-{n}"));
        let mut text = String::new();
        for i in 0..n {
            text.push_str(&format!(
                "edge-node-{:02} route-{i:05} {} 127.0.0.1:{closed}\n",
                i % 50,
                10000 + i % 50000
            ));
        }
        std::fs::write(&routes, text).unwrap();
        for (name, bin) in [("before", before), ("after", after)] {
            for gzip in [false, true] {
                let agent = start(bin, &routes, &work.join(format!("scrape-{name}-{n}.log")));
                let mut row = load(&agent, scrapers, window, gzip);
                row.binary = name;
                row.routes = n;
                rows.push(row);
            }
        }
    }
    println!(
        "{:>6} {:>7} {:>9} {:>8} {:>9} {:>9} {:>10} {:>10} {:>9} {:>9} {:>6} {:>6} {:>8}",
        "routes",
        "binary",
        "encoding",
        "scrape/s",
        "p50 ms",
        "p99 ms",
        "healthz50",
        "healthz99",
        "cpu ms",
        "bytes",
        "503s",
        "errors",
        "rss MiB"
    );
    let mut json = Vec::new();
    for r in &rows {
        println!(
            "{:>6} {:>7} {:>9} {:>8.1} {:>9.2} {:>9.2} {:>10.2} {:>10.2} {:>9.3} {:>9} {:>6} {:>6} {:>8.1}",
            r.routes, r.binary, r.encoding, r.rate, r.p50 * 1e3, r.p99 * 1e3,
            r.health_p50 * 1e3, r.health_p99 * 1e3, r.cpu_ms, r.bytes, r.busy, r.errors,
            r.rss_kib as f64 / 1024.0
        );
        json.push(format!(
            "{{\"routes\":{},\"binary\":\"{}\",\"encoding\":\"{}\",\"scrapes\":{},\"scrapes_per_s\":{:.1},\"p50_ms\":{:.3},\"p99_ms\":{:.3},\"healthz_p50_ms\":{:.3},\"healthz_p99_ms\":{:.3},\"cpu_ms_per_scrape\":{:.4},\"bytes_per_scrape\":{},\"busy_503\":{},\"errors\":{},\"peak_rss_kib\":{}}}",
            r.routes, r.binary, r.encoding, r.scrapes, r.rate, r.p50 * 1e3, r.p99 * 1e3,
            r.health_p50 * 1e3, r.health_p99 * 1e3, r.cpu_ms, r.bytes, r.busy, r.errors, r.rss_kib
        ));
    }
    let out = env_or(
        "BENCH_SCRAPE_JSON",
        &work.join("scrape.json").to_string_lossy(),
    );
    std::fs::write(&out, format!("[\n{}\n]\n", json.join(",\n"))).unwrap();
    println!("(scrapers: {scrapers}, window: {window:?}; JSON in {out})");
}
