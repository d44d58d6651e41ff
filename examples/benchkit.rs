//! The whole-agent benchmark behind `make bench` (run by `scripts/bench.sh`, which builds it
//! and the other pieces first). Everything it sends goes to loopback (127.0.0.1) only, and
//! every loop in it is bounded in count and time.
//!
//! It opens N accepting loopback listeners in a thread of its own (the "farm", which accepts
//! and closes at once and counts what it accepted), then, in rounds, runs three probers in
//! turn over the same N targets with the same schedule (a cycle every second, one connect at
//! a time, 3 s deadline) and measures each over the same fixed window:
//!
//! - **agent**: the release `sigma-agent-lite` with a routes file;
//! - **floor**: `examples/floor.rs`, a bare mio connect loop (the kernel's own cost);
//! - **blackbox**: Prometheus' `blackbox_exporter` with a `tcp_connect` module, driven through
//!   `/probe` by a thread here over one keep-alive connection (the driver's CPU is reported
//!   apart and not charged to blackbox).
//!
//! With a database (see `PgSettings`), each round also runs the agent with the PostgreSQL
//! source (`--database-url`, routes read each cycle) right after the file-source agent, over
//! the same targets (inserted as one vps, one node and N routes) and the same window, then
//! scrapes it once per cycle for `sigma_route_fetch_duration_seconds`. After the rounds, the
//! database faults: for each of (a) a silent server (a relay here that stops answering),
//! (b) the agent's backend and the postmaster SIGSTOPped, (c) `envoy_routes` locked
//! (ACCESS EXCLUSIVE, by the admin connection), (d) the database host's name server silent
//! (a name server here on loopback UDP, `--dns-server`), a fresh agent reads its routes, the
//! fault starts, /metrics and /healthz are scraped every 20 ms for 10 s (p50, p99, max), the
//! probe cycles and probes in that window are counted, and after the fault is lifted the time
//! to read the database again is measured (about 1 minute in all).
//!
//! CPU per probe = (utime + stime from `/proc/PID/stat`, all threads) ÷ connections the farm
//! accepted in the window: every target accepts, so every probe is a reachable one, counted
//! the same way for the three. Peak RSS is `VmHWM` from `/proc/PID/status`. The agent is then
//! measured alone: scrape latency while probing (with one extra route to a listener whose
//! backlog is full, so a probe is always pending), exec → first 200 on /healthz, RSS and fds
//! after 100 cycles vs after 10, threads.
//!
//! Usage: `benchkit AGENT_BIN FLOOR_BIN WORK_DIR` with the settings in the environment:
//! `BENCH_ROUTES` (1000), `BENCH_WINDOW` seconds (8), `BENCH_ROUNDS` (5),
//! `BENCH_BLACKBOX` (path of blackbox_exporter; empty skips it), `BENCH_MICRO_JSON` (results
//! of `benches/micro.rs` to merge), `BENCH_JSON` (output, default `WORK_DIR/../bench.json`),
//! `BENCH_DATABASE_URL` and `BENCH_DATABASE_ADMIN_URL` (the PostgreSQL source, see
//! `PgSettings`; `scripts/bench.sh` sets them for its throwaway cluster), `BENCH_PG_HOSTNAME`,
//! `BENCH_PG_ORIGIN`, `BENCH_PG_SKIP` (why there is no database),
//! `BENCH_PG_FAULTS` (0 skips the database faults; they run by default only on the script's
//! throwaway cluster, `BENCH_PG_THROWAWAY=1`; 1 runs them on any database given: they SIGSTOP
//! its postmaster and lock `envoy_routes`), `BENCH_BASELINE_AGENT` (another agent
//! binary, e.g. an older build, run in the same rounds with both sources and reported next to
//! the agent), `BENCH_STRICT=1` (exit 1 when a target is missed; by default a miss is reported,
//! not fatal).

use std::fs;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token};
use serde_json::{json, Value};

/// Probe interval of all three probers in the CPU windows (the brief's `--health-probe-interval 1`).
const INTERVAL: Duration = Duration::from_secs(1);
/// Per-probe deadline of all three.
const DEADLINE: Duration = Duration::from_secs(3);
/// Longest anything here waits for a process to become ready or finish a cycle.
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// The farm and the blackbox driver stop by themselves after this, whatever happens.
const HELPER_LIFETIME: Duration = Duration::from_secs(600);
/// Batches of scrapes in the scrape-latency run (the median batch is reported), scrapes per
/// batch (5 s each: every batch spans a whole cycle, fast probes and the pending one), and
/// the gap between scrapes.
const SCRAPE_BATCHES: usize = 3;
const SCRAPES: usize = 250;
const SCRAPE_GAP: Duration = Duration::from_millis(20);
/// Runs of the exec → first 200 measurement.
const STARTS: usize = 7;
/// Cycle interval of the 10-vs-100-cycles run (the agent's minimum), so it takes ~10 s.
const LEAK_INTERVAL: &str = "100ms";
/// RSS growth from cycle 10 to cycle 100 still counted as "no growth": allocator noise.
const LEAK_RSS_SLACK_KIB: u64 = 64;
/// Footprint reads at cycle 10 and at cycle 100 (see `settled`).
const LEAK_SAMPLES: usize = 40;

// ---------------------------------------------------------------------------------------------
// The farm: N accepting listeners on loopback, in one thread.

struct Farm {
    ports: Vec<u16>,
    accepted: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Farm {
    fn start(n: usize) -> io::Result<Farm> {
        let mut poll = Poll::new()?;
        let mut listeners = Vec::with_capacity(n);
        let mut ports = Vec::with_capacity(n);
        for i in 0..n {
            let mut l = mio::net::TcpListener::bind("127.0.0.1:0".parse().expect("addr"))?;
            poll.registry()
                .register(&mut l, Token(i), Interest::READABLE)?;
            ports.push(l.local_addr()?.port());
            listeners.push(l);
        }
        let accepted = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, halt) = (accepted.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut events = Events::with_capacity(256);
            let until = Instant::now() + HELPER_LIFETIME;
            while !halt.load(Ordering::Relaxed) && Instant::now() < until {
                if let Err(e) = poll.poll(&mut events, Some(Duration::from_millis(100))) {
                    if e.kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    eprintln!("farm: poll failed: {e}");
                    return;
                }
                for event in events.iter() {
                    let Some(l) = listeners.get(event.token().0) else {
                        continue;
                    };
                    loop {
                        match l.accept() {
                            Ok((stream, _)) => {
                                drop(stream); // close at once: the backlog never fills
                                count.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                            Err(_) => break, // WouldBlock, or EMFILE: next event
                        }
                    }
                }
            }
        });
        Ok(Farm {
            ports,
            accepted,
            stop,
            thread: Some(thread),
        })
    }

    fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Waits until `count` more connections than `from` were accepted.
    fn wait_for(&self, from: u64, count: u64, what: &str) -> Result<(), String> {
        let until = Instant::now() + READY_TIMEOUT;
        while self.accepted() < from + count {
            if Instant::now() > until {
                return Err(format!(
                    "{what}: only {} of {count} probes arrived within {READY_TIMEOUT:?}",
                    self.accepted() - from
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }
}

impl Drop for Farm {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A loopback listener whose accept queue is full (backlog 0 plus connects that are never
/// accepted): a new connect's SYN is dropped, so a probe to it stays pending to its deadline.
struct Blackhole {
    port: u16,
    _listener: socket2::Socket,
    _fillers: Vec<socket2::Socket>,
}

fn blackhole() -> io::Result<Blackhole> {
    use socket2::{Domain, Socket, Type};
    let listener = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    listener.bind(&any.into())?;
    listener.listen(0)?;
    let port = listener
        .local_addr()?
        .as_socket()
        .map(|a| a.port())
        .ok_or_else(|| io::Error::other("no port"))?;
    let target: SocketAddr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut fillers = Vec::new();
    for _ in 0..8 {
        let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
        let done = s
            .connect_timeout(&target.into(), Duration::from_millis(200))
            .is_ok();
        fillers.push(s);
        if !done {
            return Ok(Blackhole {
                port,
                _listener: listener,
                _fillers: fillers,
            });
        }
    }
    Err(io::Error::other("could not fill a loopback accept backlog"))
}

fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

// ---------------------------------------------------------------------------------------------
// /proc figures of another process.

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// utime + stime of a process (all its threads) or a thread, in seconds, from a `stat` file.
fn cpu_seconds(stat_path: &str) -> Option<f64> {
    cpu_split(stat_path).map(|(u, s)| u + s)
}

/// (utime, stime) in seconds.
fn cpu_split(stat_path: &str) -> Option<(f64, f64)> {
    let stat = fs::read_to_string(stat_path).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let hz = clock_ticks_per_second();
    Some((utime as f64 / hz, stime as f64 / hz))
}

fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

fn count_entries(dir: &str) -> Option<u64> {
    Some(fs::read_dir(dir).ok()?.count() as u64)
}

#[derive(Clone, Copy, Default)]
struct Footprint {
    peak_rss_kib: u64,
    rss_kib: u64,
    /// The parts of `rss_kib`: anonymous (heap, stacks) and file-backed (code, libraries).
    rss_anon_kib: u64,
    rss_file_kib: u64,
    threads: u64,
    fds: u64,
    /// epoll instances: fds that are `anon_inode:[eventpoll]` (the design: exactly one).
    epolls: u64,
}

/// The fds of `pid` that are epoll instances.
fn count_epolls(pid: u32) -> u64 {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    dir.filter_map(Result::ok)
        .filter(|e| {
            fs::read_link(e.path()).is_ok_and(|l| l.as_os_str() == "anon_inode:[eventpoll]")
        })
        .count() as u64
}

fn footprint(pid: u32) -> Footprint {
    Footprint {
        peak_rss_kib: status_kib(pid, "VmHWM:").unwrap_or(0),
        rss_kib: status_kib(pid, "VmRSS:").unwrap_or(0),
        rss_anon_kib: status_kib(pid, "RssAnon:").unwrap_or(0),
        rss_file_kib: status_kib(pid, "RssFile:").unwrap_or(0),
        threads: count_entries(&format!("/proc/{pid}/task")).unwrap_or(0),
        fds: count_entries(&format!("/proc/{pid}/fd")).unwrap_or(0),
        epolls: count_epolls(pid),
    }
}

// ---------------------------------------------------------------------------------------------
// Processes.

fn spawn(cmd: &mut Command, log: &Path) -> Result<Child, String> {
    let out = fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    cmd.stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("cannot start {cmd:?}: {e}"))
}

/// SIGTERM, then SIGKILL if it has not exited within 2 s. Only ever our own children.
fn stop(child: &mut Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: kill(2) on the pid of a child we spawned and have not reaped yet.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A spawned child that is stopped when dropped (also on an early `?` return).
struct Running(Child);

impl Running {
    fn pid(&self) -> u32 {
        self.0.id()
    }
    fn exited(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(Some(_)))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        stop(&mut self.0);
    }
}

// ---------------------------------------------------------------------------------------------
// A minimal keep-alive HTTP/1.1 client (Content-Length responses only, which is what the agent
// and blackbox_exporter send).

struct Client {
    stream: TcpStream,
    host: String,
    buf: Vec<u8>,
    /// A chunked body, decoded.
    body: Vec<u8>,
}

impl Client {
    fn connect(addr: SocketAddr) -> io::Result<Client> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.set_nodelay(true)?;
        Ok(Client {
            stream,
            host: addr.to_string(),
            buf: Vec::with_capacity(512 * 1024),
            body: Vec::new(),
        })
    }

    /// GET `path`; the status and the body (Content-Length or chunked).
    fn get(&mut self, path: &str) -> io::Result<(u16, &[u8])> {
        let request = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", self.host);
        self.stream.write_all(request.as_bytes())?;
        self.buf.clear();
        let head_end = self.read_until(0, b"\r\n\r\n")?;
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        let status: u16 = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| io::Error::other(format!("bad response head: {head:?}")))?;
        let header = |name: &str| {
            head.lines().find_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
            })
        };
        if let Some(length) = header("content-length") {
            let length: usize = length
                .parse()
                .map_err(|_| io::Error::other("bad Content-Length"))?;
            while self.buf.len() < head_end + length {
                self.read_more()?;
            }
            return Ok((status, &self.buf[head_end..head_end + length]));
        }
        if !header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
            return Err(io::Error::other("response with neither length nor chunks"));
        }
        // Chunked: decode into `body`.
        self.body.clear();
        let mut at = head_end;
        loop {
            let line_end = self.read_until(at, b"\r\n")?;
            let size_text = String::from_utf8_lossy(&self.buf[at..line_end - 2]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| io::Error::other(format!("bad chunk size {size_text:?}")))?;
            while self.buf.len() < line_end + size + 2 {
                self.read_more()?;
            }
            self.body
                .extend_from_slice(&self.buf[line_end..line_end + size]);
            at = line_end + size + 2;
            if size == 0 {
                // No trailers from the servers measured here: the empty chunk ends it.
                return Ok((status, &self.body));
            }
        }
    }

    /// Reads until `pattern` appears at or after `from`; returns the offset just past it.
    fn read_until(&mut self, from: usize, pattern: &[u8]) -> io::Result<usize> {
        loop {
            if let Some(i) = self.buf[from..]
                .windows(pattern.len())
                .position(|w| w == pattern)
            {
                return Ok(from + i + pattern.len());
            }
            self.read_more()?;
        }
    }

    fn read_more(&mut self) -> io::Result<()> {
        let mut chunk = [0u8; 64 * 1024];
        match self.stream.read(&mut chunk)? {
            0 => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed",
            )),
            n => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
        }
    }
}

/// Connects and GETs `path` until a 200 comes back (or `timeout`).
fn wait_http_ok(addr: SocketAddr, path: &str, timeout: Duration) -> Result<Client, String> {
    let until = Instant::now() + timeout;
    loop {
        if let Ok(mut c) = Client::connect(addr) {
            if matches!(c.get(path), Ok((200, _))) {
                return Ok(c);
            }
        }
        if Instant::now() > until {
            return Err(format!(
                "no 200 from http://{addr}{path} within {timeout:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The value of an unlabelled sample in an exposition.
fn sample(body: &[u8], name: &str) -> Option<f64> {
    let text = std::str::from_utf8(body).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

// ---------------------------------------------------------------------------------------------
// The blackbox_exporter driver: probes the targets one after another through /probe.

struct Driver {
    stop: Arc<AtomicBool>,
    tid: u32,
    ok: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Driver {
    fn start(blackbox: SocketAddr, ports: Vec<u16>) -> Result<Driver, String> {
        let mut client = Client::connect(blackbox).map_err(|e| e.to_string())?;
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let (halt, good) = (stop.clone(), ok.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            // SAFETY: gettid has no preconditions.
            let tid = unsafe { libc::syscall(libc::SYS_gettid) } as u32;
            let _ = tx.send(tid);
            let until = Instant::now() + HELPER_LIFETIME;
            let mut cycle = Instant::now();
            while !halt.load(Ordering::Relaxed) && Instant::now() < until {
                for port in &ports {
                    if halt.load(Ordering::Relaxed) {
                        return;
                    }
                    let path = format!("/probe?module=tcp_connect&target=127.0.0.1:{port}");
                    match client.get(&path) {
                        Ok((200, body)) if sample(body, "probe_success") == Some(1.0) => {
                            good.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(_) => {}
                        Err(e) => {
                            eprintln!("blackbox driver: {e}");
                            return;
                        }
                    }
                }
                // Same schedule as the agent: a cycle every interval, or at once if it overran.
                cycle += INTERVAL;
                let now = Instant::now();
                if cycle > now {
                    std::thread::sleep(cycle - now);
                } else {
                    cycle = now;
                }
            }
        });
        let tid = rx
            .recv_timeout(Duration::from_secs(5))
            .map_err(|_| "blackbox driver did not start".to_owned())?;
        Ok(Driver {
            stop,
            tid,
            ok,
            thread: Some(thread),
        })
    }

    fn cpu_seconds(&self) -> f64 {
        cpu_seconds(&format!("/proc/self/task/{}/stat", self.tid)).unwrap_or(0.0)
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Measurements.

/// One prober over one window.
#[derive(Clone, Copy, Default)]
struct Window {
    cpu_s: f64,
    /// The user-space part of `cpu_s` (the rest is the kernel's, on the prober's behalf).
    user_s: f64,
    probes: u64,
    wall_s: f64,
    /// CPU of the blackbox driver thread (not charged to blackbox).
    driver_cpu_s: f64,
    /// Probes blackbox reported `probe_success 1` for.
    driver_ok: u64,
    foot: Footprint,
}

impl Window {
    fn us_per_probe(&self) -> f64 {
        if self.probes == 0 {
            f64::NAN
        } else {
            self.cpu_s * 1e6 / self.probes as f64
        }
    }
}

/// Measures `pid` over `window` once its first full cycle has arrived at the farm.
fn measure(
    farm: &Farm,
    pid: u32,
    window: Duration,
    what: &str,
    driver: Option<&Driver>,
) -> Result<Window, String> {
    farm.wait_for(farm.accepted(), farm.ports.len() as u64, what)?;
    let stat = format!("/proc/{pid}/stat");
    let read = || cpu_split(&stat).ok_or_else(|| format!("{what}: cannot read {stat}"));
    let ok = || driver.map_or(0, |d| d.ok.load(Ordering::Relaxed));
    let (c0, a0, d0, k0, t0) = (
        read()?,
        farm.accepted(),
        driver.map_or(0.0, Driver::cpu_seconds),
        ok(),
        Instant::now(),
    );
    std::thread::sleep(window);
    let (c1, a1, d1, k1, t1) = (
        read()?,
        farm.accepted(),
        driver.map_or(0.0, Driver::cpu_seconds),
        ok(),
        Instant::now(),
    );
    Ok(Window {
        cpu_s: (c1.0 + c1.1) - (c0.0 + c0.1),
        user_s: c1.0 - c0.0,
        probes: a1 - a0,
        wall_s: (t1 - t0).as_secs_f64(),
        driver_cpu_s: d1 - d0,
        driver_ok: k1 - k0,
        foot: footprint(pid),
    })
}

fn agent_command(agent: &Path, routes: &Path, interval: &str, port: u16) -> Command {
    let mut cmd = Command::new(agent);
    cmd.args(["--health-probe", "--health-probe-interval", interval])
        .arg("--routes-file")
        .arg(routes)
        .args(["--metrics-listen", &format!("127.0.0.1:{port}")])
        .env("RUST_LOG", "info");
    cmd
}

fn write_routes(path: &Path, ports: &[u16]) -> io::Result<()> {
    let mut text = String::from("# benchkit: loopback listeners of the farm\n");
    for (i, port) in ports.iter().enumerate() {
        text.push_str(&format!(
            "bench tcp-proxy-{i:05} {} 127.0.0.1:{port}\n",
            i + 1
        ));
    }
    fs::write(path, text)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

struct Settings {
    agent: PathBuf,
    floor: PathBuf,
    work: PathBuf,
    routes: usize,
    window: Duration,
    rounds: usize,
    blackbox: Option<PathBuf>,
    /// Another agent binary (e.g. an older build) measured in the same rounds, file and
    /// database source, next to the agent (`BENCH_BASELINE_AGENT`).
    baseline: Option<PathBuf>,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

// ---------------------------------------------------------------------------------------------
// The PostgreSQL source: the same agent and targets, routes read from a database each cycle.

/// Hostname of the bench's `vps` row (`--hostname` of the agent). Its rows are replaced at the
/// start and deleted at the end, so on an external database it must not be a real host's.
const PG_HOSTNAME_DEFAULT: &str = "sigma-agent-lite-bench";
/// Node id of the bench's `envoy_nodes` row (the file source's node column is the same).
const PG_NODE: &str = "bench";
/// After the CPU window, the agent is scraped for this long, once per cycle, to read
/// `sigma_route_fetch_duration_seconds` (outside the window, so the CPU figure is the same
/// kind as the file source's: probing only).
const PG_SCRAPE_PHASE: Duration = Duration::from_secs(3);

/// Where the database figures come from: `BENCH_DATABASE_URL` (the agent's URL, a read-only
/// role) and `BENCH_DATABASE_ADMIN_URL` (a role that may write the three tables: the bench's
/// rows are inserted and removed through it), set by `scripts/bench.sh` for its throwaway
/// cluster or by the user for an external database. `BENCH_PG_SKIP` is why the script did not
/// start one; `BENCH_PG_ORIGIN` says what the database is.
struct PgSettings {
    agent_url: String,
    admin_url: String,
    hostname: String,
    origin: String,
}

impl PgSettings {
    fn from_env() -> Result<PgSettings, String> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let Some(agent_url) = var("BENCH_DATABASE_URL") else {
            return Err(var("BENCH_PG_SKIP").unwrap_or_else(|| "BENCH_DATABASE_URL not set".into()));
        };
        let Some(admin_url) = var("BENCH_DATABASE_ADMIN_URL") else {
            return Err("BENCH_DATABASE_URL is set but BENCH_DATABASE_ADMIN_URL is not (needed to insert the bench's vps, node and routes)".into());
        };
        // The agent's URL may carry settings the test client does not know (sslrootcert):
        // checked when it parses, and the agent resolves no names anyway for an IP literal.
        if let Ok(config) = agent_url.parse::<postgres::Config>() {
            check_loopback(&config).map_err(|e| format!("BENCH_DATABASE_URL: {e}"))?;
        }
        Ok(PgSettings {
            agent_url,
            admin_url,
            hostname: var("BENCH_PG_HOSTNAME").unwrap_or_else(|| PG_HOSTNAME_DEFAULT.into()),
            origin: var("BENCH_PG_ORIGIN")
                .unwrap_or_else(|| "external database (BENCH_DATABASE_URL)".into()),
        })
    }
}

/// The bench's rows in the database: one `vps`, one node, one route per farm listener
/// (backend 127.0.0.1:port, status active). Deleted again on drop.
struct PgRows {
    admin: postgres::Client,
    hostname: String,
    server_version: String,
}

/// The bench sends traffic to loopback only: a database URL must name a loopback IP address
/// (or a unix socket).
fn check_loopback(config: &postgres::Config) -> Result<(), String> {
    for host in config.get_hosts() {
        if let postgres::config::Host::Tcp(h) = host {
            let ip: Option<std::net::IpAddr> = h.trim_matches(['[', ']']).parse().ok();
            if !ip.is_some_and(|ip| ip.is_loopback()) {
                return Err(format!(
                    "database host {h:?} is not a loopback address; the bench connects to loopback only"
                ));
            }
        }
    }
    Ok(())
}

fn pg_connect(url: &str) -> Result<postgres::Client, String> {
    let mut config: postgres::Config = url
        .parse()
        .map_err(|e| format!("BENCH_DATABASE_ADMIN_URL: {e}"))?;
    config.connect_timeout(Duration::from_secs(5));
    check_loopback(&config)?;
    config
        .connect(postgres::NoTls)
        .map_err(|e| format!("cannot connect with BENCH_DATABASE_ADMIN_URL: {e}"))
}

fn pg_delete_rows(
    db: &mut impl postgres::GenericClient,
    hostname: &str,
) -> Result<(), postgres::Error> {
    db.execute(
        "DELETE FROM envoy_routes WHERE envoy_node_id IN (SELECT n.id FROM envoy_nodes n \
         JOIN vps v ON v.id = n.vps_id WHERE v.hostname = $1)",
        &[&hostname],
    )?;
    db.execute(
        "DELETE FROM envoy_nodes WHERE vps_id IN (SELECT id FROM vps WHERE hostname = $1)",
        &[&hostname],
    )?;
    db.execute("DELETE FROM vps WHERE hostname = $1", &[&hostname])?;
    Ok(())
}

impl PgRows {
    fn insert(pg: &PgSettings, ports: &[u16]) -> Result<PgRows, String> {
        let mut admin = pg_connect(&pg.admin_url)?;
        let server_version: String = admin
            .query_one("SHOW server_version", &[])
            .map(|r| r.get(0))
            .map_err(|e| e.to_string())?;
        let ports: Vec<i32> = ports.iter().map(|&p| i32::from(p)).collect();
        let mut tx = admin.transaction().map_err(|e| e.to_string())?;
        pg_delete_rows(&mut tx, &pg.hostname)
            .map_err(|e| format!("removing old bench rows: {e}"))?;
        let vps: String = tx
            .query_one(
                "INSERT INTO vps (id, hostname, status, ip_addresses, extra) \
                 VALUES (gen_random_uuid(), $1, 'active', ARRAY['127.0.0.1'::inet], '{}') RETURNING id::text",
                &[&pg.hostname],
            )
            .map_err(|e| format!("inserting the vps row: {e}"))?
            .get(0);
        let node: String = tx
            .query_one(
                "INSERT INTO envoy_nodes (id, vps_id, node_id, admin_port, description, config_version, status) \
                 VALUES (gen_random_uuid(), $1::text::uuid, $2, 9901, 'sigma-agent-lite bench', 1, 'active') RETURNING id::text",
                &[&vps, &PG_NODE],
            )
            .map_err(|e| format!("inserting the node row: {e}"))?
            .get(0);
        // The same routes as the file source's: tcp-proxy-NNNNN, listen port i + 1.
        let inserted = tx
            .execute(
                "INSERT INTO envoy_routes (id, envoy_node_id, name, listen_port, backend_host, backend_port, \
                   cluster_type, connect_timeout_secs, proxy_protocol, status, source) \
                 SELECT gen_random_uuid(), $1::text::uuid, 'tcp-proxy-' || lpad((i - 1)::text, 5, '0'), i, \
                   '127.0.0.1', ($2::int4[])[i], 'static', 5, 0, 'active', 'dynamic' \
                 FROM generate_series(1, cardinality($2::int4[])) AS i",
                &[&node, &ports],
            )
            .map_err(|e| format!("inserting the routes: {e}"))?;
        tx.commit().map_err(|e| e.to_string())?;
        if inserted != ports.len() as u64 {
            return Err(format!(
                "inserted {inserted} routes, expected {}",
                ports.len()
            ));
        }
        Ok(PgRows {
            admin,
            hostname: pg.hostname.clone(),
            server_version,
        })
    }
}

impl Drop for PgRows {
    fn drop(&mut self) {
        if let Err(e) = pg_delete_rows(&mut self.admin, &self.hostname) {
            eprintln!(
                "warning: could not remove the bench's rows ({}): {e}",
                self.hostname
            );
        }
    }
}

/// One round of the agent with the PostgreSQL source.
#[derive(Clone, Default)]
struct PgRound {
    window: Window,
    /// `sigma_route_fetch_duration_seconds`, one per cycle seen in the scrape phase.
    fetch_s: Vec<f64>,
    /// Footprint after the scrape phase: probing and scraped.
    scraped: Footprint,
    source_errors: f64,
}

fn pg_agent_command(agent: &Path, pg: &PgSettings, interval: &str, port: u16) -> Command {
    pg_agent_command_url(agent, &pg.agent_url, &pg.hostname, interval, port)
}

fn pg_agent_command_url(
    agent: &Path,
    url: &str,
    hostname: &str,
    interval: &str,
    port: u16,
) -> Command {
    let mut cmd = Command::new(agent);
    cmd.args(["--health-probe", "--health-probe-interval", interval])
        .args(["--database-url", url])
        .args(["--hostname", hostname])
        .args(["--metrics-listen", &format!("127.0.0.1:{port}")])
        .env_remove("PGPASSWORD")
        .env("RUST_LOG", "info");
    cmd
}

/// The agent with `--database-url` over the farm: one CPU window (probing only, as the file
/// source's), then [`PG_SCRAPE_PHASE`] of scrapes once per cycle for the fetch duration.
fn pg_round(s: &Settings, agent: &Path, pg: &PgSettings, farm: &Farm) -> Result<PgRound, String> {
    let port = free_port().map_err(|e| e.to_string())?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let log = s.work.join("agent-pg.log");
    let mut child = Running(spawn(&mut pg_agent_command(agent, pg, "1", port), &log)?);
    let window = measure(
        farm,
        child.pid(),
        s.window,
        "agent (PostgreSQL source)",
        None,
    )
    .map_err(|e| format!("{e} (see {})", log.display()))?;
    if child.exited() {
        return Err(format!("the agent exited (see {})", log.display()));
    }
    let mut client = wait_http_ok(addr, "/healthz", READY_TIMEOUT)?;
    let mut fetch_s = Vec::new();
    let mut last_cycle = -1.0;
    let mut source_errors;
    let until = Instant::now() + PG_SCRAPE_PHASE;
    loop {
        let (status, body) = client.get("/metrics").map_err(|e| format!("scrape: {e}"))?;
        if status != 200 {
            return Err(format!("scrape: status {status}"));
        }
        let get = |name: &str| sample(body, name);
        if get("sigma_route_source_up") != Some(1.0) || get("sigma_vps_registered") != Some(1.0) {
            return Err(format!(
                "the database source is not up or the VPS not registered (see {})",
                log.display()
            ));
        }
        if get("sigma_routes") != Some(farm.ports.len() as f64) {
            return Err(format!(
                "the agent knows {:?} routes, expected {}",
                get("sigma_routes"),
                farm.ports.len()
            ));
        }
        source_errors = get("sigma_route_source_errors_total").unwrap_or(0.0);
        let cycle = get("sigma_probe_cycles_total").unwrap_or(0.0);
        if cycle != last_cycle {
            last_cycle = cycle;
            if let Some(f) = get("sigma_route_fetch_duration_seconds") {
                fetch_s.push(f);
            }
        }
        if Instant::now() >= until {
            break;
        }
        std::thread::sleep(INTERVAL.min(until.saturating_duration_since(Instant::now())));
    }
    Ok(PgRound {
        window,
        fetch_s,
        scraped: footprint(child.pid()),
        source_errors,
    })
}

/// What the PostgreSQL part found (or why it did not run).
enum PgOutcome {
    Skipped(String),
    Failed {
        origin: String,
        error: String,
        rounds: Vec<PgRound>,
    },
    Measured {
        origin: String,
        hostname: String,
        server_version: String,
        rounds: Vec<PgRound>,
    },
}

/// The PostgreSQL section of the report: a table file source vs PostgreSQL source (same
/// rounds, same targets), its JSON, and its targets.
fn pg_report(
    s: &Settings,
    file: &[Window],
    pg: &PgOutcome,
) -> (Value, Vec<(String, String, Option<bool>)>) {
    let rss_name = format!("peak RSS, {} routes, PostgreSQL source ≤ 4 MiB", s.routes);
    let threads_name = "threads with the PostgreSQL source: 1".to_owned();
    let epolls_name = "epoll instances with the PostgreSQL source: 1".to_owned();
    let (origin, rounds, error, extra) = match pg {
        PgOutcome::Skipped(why) => {
            println!();
            println!("== PostgreSQL source: skipped ({why}) ==");
            return (
                json!({"status": "skipped", "reason": why}),
                vec![
                    (rss_name, format!("not measured: {why}"), None),
                    (threads_name, "not measured".into(), None),
                    (epolls_name, "not measured".into(), None),
                ],
            );
        }
        PgOutcome::Failed {
            origin,
            error,
            rounds,
        } => (origin, rounds, Some(error), json!({})),
        PgOutcome::Measured {
            origin,
            hostname,
            server_version,
            rounds,
        } => (
            origin,
            rounds,
            None,
            json!({"hostname": hostname, "node": PG_NODE, "server_version": server_version}),
        ),
    };
    let windows: Vec<Window> = rounds.iter().map(|r| r.window).collect();
    let fetch_ms: Vec<f64> = rounds
        .iter()
        .flat_map(|r| r.fetch_s.iter().map(|x| x * 1e3))
        .collect();
    let fetch_med = median(&fetch_ms);
    let fetch_max = fetch_ms.iter().copied().fold(f64::NAN, f64::max);
    let scraped_peak = rounds
        .iter()
        .map(|r| r.scraped.peak_rss_kib)
        .max()
        .unwrap_or(0);
    let threads = rounds
        .iter()
        .flat_map(|r| [r.window.foot.threads, r.scraped.threads])
        .max();
    let epolls = rounds
        .iter()
        .flat_map(|r| [r.window.foot.epolls, r.scraped.epolls])
        .max();
    let (f, p) = (prober_json(file), prober_json(&windows));
    let (cpu_ratio, cpu_ratio_runs) = ratios(&windows, file);
    let num = |v: &Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    let peak = num(&p, "peak_rss_kib");
    let peak_max = num(&p, "peak_rss_kib_max");

    println!();
    println!(
        "== PostgreSQL source: the same {} targets, routes read each cycle from {}; {} of {} rounds ==",
        s.routes,
        origin,
        rounds.len(),
        s.rounds
    );
    if let Some(e) = error {
        println!("FAILED: {e}");
    }
    if !rounds.is_empty() {
        let two = |x: f64| format!("{x:.2}");
        let mib = |x: f64| format!("{:.2}", x / 1024.0);
        println!(
            "{:<34} {:>10} {:>12} {:>10}",
            "", "file", "PostgreSQL", "pg/file"
        );
        println!(
            "{:<34} {:>10} {:>12} {:>10}",
            "CPU per probe (µs)",
            two(num(&f, "cpu_us_per_probe")),
            two(num(&p, "cpu_us_per_probe")),
            two(cpu_ratio)
        );
        println!(
            "{:<34} {:>10} {:>12}",
            "  user space, pooled (µs)",
            two(num(&f, "user_us_per_probe")),
            two(num(&p, "user_us_per_probe"))
        );
        println!(
            "{:<34} {:>10} {:>12} {:>10}",
            "peak RSS (MiB, VmHWM)",
            mib(num(&f, "peak_rss_kib")),
            mib(peak),
            two(peak / num(&f, "peak_rss_kib"))
        );
        println!(
            "{:<34} {:>10} {:>12}",
            "  probing + scraped, max (MiB)",
            "",
            mib(scraped_peak as f64)
        );
        println!(
            "{:<34} {:>10} {:>12}",
            "RSS (MiB, VmRSS)",
            mib(num(&f, "rss_kib")),
            mib(num(&p, "rss_kib"))
        );
        println!(
            "{:<34} {:>10} {:>12}",
            "  anonymous (heap, stacks)",
            mib(num(&f, "rss_anon_kib")),
            mib(num(&p, "rss_anon_kib"))
        );
        println!(
            "{:<34} {:>10} {:>12}",
            "  file-backed (code, libraries)",
            mib(num(&f, "rss_file_kib")),
            mib(num(&p, "rss_file_kib"))
        );
        let int = |v: &Value, k: &str| v[k].as_u64().map_or("n/a".into(), |x| x.to_string());
        println!(
            "{:<34} {:>10} {:>12}",
            "threads",
            int(&f, "threads"),
            threads.map_or("n/a".into(), |t| t.to_string())
        );
        println!(
            "{:<34} {:>10} {:>12}",
            "open fds",
            int(&f, "open_fds"),
            int(&p, "open_fds")
        );
        println!(
            "{:<34} {:>10} {:>12}",
            "epoll instances",
            int(&f, "epoll_instances"),
            int(&p, "epoll_instances")
        );
        println!(
            "{:<34} {:>10} {:>12}",
            "route fetch (ms), median / max",
            "",
            format!("{fetch_med:.2} / {fetch_max:.2}")
        );
        println!(
            "(route fetch: sigma_route_fetch_duration_seconds of {} cycles, scraped once per cycle for {:?} after each window; the database server's own CPU is not counted)",
            fetch_ms.len(),
            PG_SCRAPE_PHASE
        );
        println!(
            "per-round ratios pg/file CPU: {:?}",
            cpu_ratio_runs
                .iter()
                .map(|x| (x * 100.0).round() / 100.0)
                .collect::<Vec<_>>()
        );
    }

    let measured = !rounds.is_empty() && error.is_none();
    let targets = vec![
        (
            rss_name,
            if measured {
                format!(
                    "{:.2} MiB probing (max {:.2}); {:.2} MiB probing + scraped",
                    peak / 1024.0,
                    peak_max / 1024.0,
                    scraped_peak as f64 / 1024.0
                )
            } else {
                format!("failed: {}", error.map_or("no rounds", |e| e.as_str()))
            },
            Some(measured && peak_max <= 4.0 * 1024.0 && scraped_peak <= 4 * 1024),
        ),
        (
            threads_name,
            threads.map_or("not measured".into(), |t| t.to_string()),
            Some(measured && threads == Some(1)),
        ),
        (
            epolls_name,
            epolls.map_or("not measured".into(), |t| t.to_string()),
            Some(measured && epolls == Some(1)),
        ),
    ];
    let mut out = json!({
        "status": if measured { "measured" } else { "failed" },
        "error": error,
        "database": origin,
        "routes": s.routes,
        "agent": p,
        "agent_over_file_cpu": cpu_ratio,
        "agent_over_file_cpu_runs": cpu_ratio_runs,
        "agent_over_file_peak_rss": peak / num(&f, "peak_rss_kib"),
        "peak_rss_scraped_kib_max": scraped_peak,
        "threads": threads,
        "epoll_instances": epolls,
        "route_fetch_duration_ms": {
            "median": fetch_med,
            "max": fetch_max,
            "samples": fetch_ms,
            "source": "sigma_route_fetch_duration_seconds, one scrape per cycle after each CPU window",
        },
        "source_errors_total": rounds.iter().map(|r| r.source_errors).collect::<Vec<_>>(),
    });
    if let (Value::Object(o), Value::Object(e)) = (&mut out, extra) {
        o.extend(e);
    }
    (out, targets)
}

// ---------------------------------------------------------------------------------------------
// Database faults: the agent with the PostgreSQL source while its database misbehaves. Each
// fault gets a fresh agent (1 s cycle, the same N routes); once it has read its routes, the
// fault starts and /metrics and /healthz are scraped every FAULT_SCRAPE_GAP for FAULT_WINDOW,
// then the fault is lifted and the agent gets FAULT_RECOVERY_WAIT to read its database again.

/// Length of each fault's window, scraped throughout.
const FAULT_WINDOW: Duration = Duration::from_secs(10);
/// Gap between scrape ticks in a fault window (a tick: GET /metrics, then GET /healthz, each
/// over its own keep-alive connection).
const FAULT_SCRAPE_GAP: Duration = Duration::from_millis(20);
/// After a fault is lifted, how long the agent gets to read its database again: its backoff
/// cap (1 s doubling per failure, full jitter) reaches 8 s after four failed attempts.
/// (7 s keeps the whole section under 90 s even when every wait runs out.)
const FAULT_RECOVERY_WAIT: Duration = Duration::from_secs(7);
/// A scrape slower than this during a fault fails the target (the integration tests' bound,
/// generous for a shared machine; a scrape normally takes about a millisecond).
const FAULT_SCRAPE_BOUND_MS: f64 = 100.0;
/// The database host name of the DNS fault: not in /etc/hosts, answered only by the bench's
/// own name server on loopback (the agent gets `--dns-server`), for A queries, as 127.0.0.1.
const FAULT_DB_NAME: &str = "db.sigma-bench.test";
/// The agent caches an answer at least 5 s (`dns::MIN_TTL`): the connection is cut this long
/// after the last answer, so that the reconnect has to ask the (by then silent) name server.
const DNS_CACHE_WAIT: Duration = Duration::from_millis(5_500);
/// `application_name` of the fault agents, to find their server processes.
const FAULT_APP_NAME: &str = "sigma-bench-fault";

#[derive(Clone, Copy, PartialEq)]
enum Fault {
    /// Nothing wrong: the same agent and scrapes, for the machine's own noise.
    Reference,
    /// Through a relay that goes silent: it accepts and reads, never answers.
    Silent,
    /// The agent's backend and the postmaster SIGSTOPped.
    Stopped,
    /// `LOCK TABLE envoy_routes IN ACCESS EXCLUSIVE MODE` held by the bench's admin connection.
    Locked,
    /// The database host is a name; its name server goes silent and the connection is cut.
    DnsSilent,
}

impl Fault {
    const ALL: [Fault; 5] = [
        Fault::Reference,
        Fault::Silent,
        Fault::Stopped,
        Fault::Locked,
        Fault::DnsSilent,
    ];

    fn key(self) -> &'static str {
        match self {
            Fault::Reference => "none",
            Fault::Silent => "silent_server",
            Fault::Stopped => "sigstop",
            Fault::Locked => "table_lock",
            Fault::DnsSilent => "dns_silent",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Fault::Reference => "no fault (reference)",
            Fault::Silent => "(a) silent server",
            Fault::Stopped => "(b) database SIGSTOPped",
            Fault::Locked => "(c) table lock",
            Fault::DnsSilent => "(d) DNS silent",
        }
    }

    fn description(self) -> &'static str {
        match self {
            Fault::Reference => "no fault: the same agent, database and scrapes, for the machine's own noise",
            Fault::Silent => "the agent reads through a loopback relay that goes silent (accepts, reads, never answers; a reconnect is accepted and never answered)",
            Fault::Stopped => "SIGSTOP to the agent's backend (pg_stat_activity, application_name) and to the postmaster (a reconnect is queued by the kernel, never answered)",
            Fault::Locked => "LOCK TABLE envoy_routes IN ACCESS EXCLUSIVE MODE held by the bench's admin connection (the agent's SET LOCAL statement_timeout ends each read)",
            Fault::DnsSilent => "database host given as a name, resolved by the bench's name server on loopback (--dns-server), which goes silent; the connection is then cut so the agent must resolve again",
        }
    }
}

/// Each fault's run (or why it could not run), and the seconds the section took.
type Faults = (Vec<(Fault, Result<FaultRun, String>)>, f64);

/// One fault's figures.
#[derive(Default)]
struct FaultRun {
    /// Every scrape of the window (both endpoints), in ms, sorted.
    scrapes_ms: Vec<f64>,
    metrics_max_ms: f64,
    healthz_max_ms: f64,
    /// Requests that failed (connection error or non-200); the client reconnects.
    failed: usize,
    /// `sigma_probe_cycles_total` at the start and the end of the window.
    cycles: (f64, f64),
    /// Connections the farm accepted during the window: the agent's probes, plus whatever
    /// else on the machine connected to those ports (hence not in the table).
    probes: u64,
    /// Longest time in the window without a probe cycle ending, as seen by the scrapes (s).
    cycle_gap_s: f64,
    /// The agent saw the fault: `sigma_route_source_up` read 0 during the window.
    source_down_seen: bool,
    /// `sigma_route_source_errors_total` increase over the window.
    source_errors: f64,
    /// `sigma_routes` stayed N throughout (the known routes were kept).
    routes_kept: bool,
    /// Seconds from lifting the fault to `sigma_route_source_up` 1 again (None: not within
    /// FAULT_RECOVERY_WAIT).
    recovered_s: Option<f64>,
    /// What the fault did (pids stopped, name-server queries left unanswered, ...).
    detail: String,
}

impl FaultRun {
    fn p(&self, q: f64) -> f64 {
        percentile(&self.scrapes_ms, q)
    }
    fn max(&self) -> f64 {
        self.scrapes_ms.last().copied().unwrap_or(f64::NAN)
    }
}

/// A TCP relay on loopback between an agent and the database that the bench can make silent
/// or cut. One thread accepts; each relayed connection has a thread per direction.
struct Relay {
    port: u16,
    silent: Arc<AtomicBool>,
    /// Bumped to close every connection opened before (a cut).
    generation: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Relay {
    fn start(upstream: SocketAddr) -> io::Result<Relay> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let silent = Arc::new(AtomicBool::new(false));
        let generation = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (quiet, gen, halt) = (silent.clone(), generation.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let until = Instant::now() + HELPER_LIFETIME;
            // Connections accepted while silent: held open, never read, never answered.
            let mut held: Vec<(u64, TcpStream)> = Vec::new();
            let mut pumps: Vec<JoinHandle<()>> = Vec::new();
            while !halt.load(Ordering::Relaxed) && Instant::now() < until {
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
                            let (quiet, gen, halt) = (quiet.clone(), gen.clone(), halt.clone());
                            pumps.push(std::thread::spawn(move || {
                                relay_pump(from, to, &quiet, &gen, now_gen, &halt)
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
            halt.store(true, Ordering::Relaxed);
            for p in pumps {
                let _ = p.join();
            }
        });
        Ok(Relay {
            port,
            silent,
            generation,
            stop,
            thread: Some(thread),
        })
    }

    /// Silent: bytes from either side are read and dropped; new connections are held.
    fn set_silent(&self, silent: bool) {
        self.silent.store(silent, Ordering::Relaxed);
        if !silent {
            // What was silenced is out of step with the protocol: close it.
            self.cut();
        }
    }

    /// Closes every connection open now (relayed or held).
    fn cut(&self) {
        self.generation.fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One direction of a relayed connection, until either side closes, a cut or the stop.
fn relay_pump(
    mut from: TcpStream,
    mut to: TcpStream,
    silent: &AtomicBool,
    generation: &AtomicU64,
    born: u64,
    stop: &AtomicBool,
) {
    let mut buf = [0u8; 16 * 1024];
    if from
        .set_read_timeout(Some(Duration::from_millis(20)))
        .is_ok()
    {
        while !stop.load(Ordering::Relaxed) && generation.load(Ordering::Relaxed) == born {
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
struct NameServer {
    addr: SocketAddr,
    silent: Arc<AtomicBool>,
    queries: Arc<AtomicU64>,
    unanswered: Arc<AtomicU64>,
    last_answer: Arc<std::sync::Mutex<Option<Instant>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl NameServer {
    fn start() -> io::Result<NameServer> {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
        socket.set_read_timeout(Some(Duration::from_millis(20)))?;
        let addr = socket.local_addr()?;
        let silent = Arc::new(AtomicBool::new(false));
        let queries = Arc::new(AtomicU64::new(0));
        let unanswered = Arc::new(AtomicU64::new(0));
        let last_answer = Arc::new(std::sync::Mutex::new(None));
        let stop = Arc::new(AtomicBool::new(false));
        let (quiet, asked, ignored, last, halt) = (
            silent.clone(),
            queries.clone(),
            unanswered.clone(),
            last_answer.clone(),
            stop.clone(),
        );
        let thread = std::thread::spawn(move || {
            let until = Instant::now() + HELPER_LIFETIME;
            let mut buf = [0u8; 512];
            while !halt.load(Ordering::Relaxed) && Instant::now() < until {
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
            stop,
            thread: Some(thread),
        })
    }

    fn set_silent(&self, silent: bool) {
        self.silent.store(silent, Ordering::Relaxed);
    }

    fn last_answer(&self) -> Option<Instant> {
        self.last_answer.lock().ok().and_then(|l| *l)
    }
}

impl Drop for NameServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
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

/// The agent's URL with another host and port and [`FAULT_APP_NAME`] as `application_name`
/// (URL form only: `postgres[ql]://[userinfo@]host[:port][/db][?params]`). Errors never echo
/// the URL (it holds a password).
fn fault_url(url: &str, host: &str, port: u16) -> Result<String, String> {
    let scheme_end = url
        .find("://")
        .filter(|_| url.starts_with("postgres://") || url.starts_with("postgresql://"))
        .ok_or("the database faults need BENCH_DATABASE_URL in URL form (postgres://...)")?
        + 3;
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let host_start = rest[..authority_end].rfind('@').map_or(0, |i| i + 1);
    let mut out = String::with_capacity(url.len() + 48);
    out.push_str(&url[..scheme_end + host_start]);
    out.push_str(&format!("{host}:{port}"));
    out.push_str(&rest[authority_end..]);
    out.push(if rest.contains('?') { '&' } else { '?' });
    out.push_str("application_name=");
    out.push_str(FAULT_APP_NAME);
    Ok(out)
}

/// SIGSTOPped processes, continued again when dropped (also on an early return).
struct Stopped(Vec<i32>);

impl Stopped {
    fn stop(pids: &[i32]) -> Result<Stopped, String> {
        let mut stopped = Stopped(Vec::new());
        for &pid in pids {
            // SAFETY: kill(2) on a PostgreSQL server process of the bench's database.
            if unsafe { libc::kill(pid, libc::SIGSTOP) } != 0 {
                return Err(format!(
                    "cannot SIGSTOP database process {pid}: {} (run the bench as root or as the server's OS user)",
                    io::Error::last_os_error()
                ));
            }
            stopped.0.push(pid);
        }
        Ok(stopped)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        for &pid in &self.0 {
            // SAFETY: as above; continues what `stop` stopped.
            unsafe { libc::kill(pid, libc::SIGCONT) };
        }
    }
}

/// The parent of `pid` if it is a PostgreSQL server process too (the postmaster).
fn postmaster_of(pid: i32) -> Option<i32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let ppid: i32 = stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let comm = fs::read_to_string(format!("/proc/{ppid}/comm")).ok()?;
    (comm.trim() == "postgres" || comm.trim() == "postmaster").then_some(ppid)
}

/// Scrapes `/metrics` until `done` holds for its body, or `timeout`; the time it took.
fn metrics_until(
    client: &mut Client,
    timeout: Duration,
    done: impl Fn(&[u8]) -> bool,
) -> Result<Option<Duration>, String> {
    let t0 = Instant::now();
    loop {
        let (status, body) = client.get("/metrics").map_err(|e| format!("scrape: {e}"))?;
        if status == 200 && done(body) {
            return Ok(Some(t0.elapsed()));
        }
        if t0.elapsed() > timeout {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The fault section: each fault in turn, each with its own agent. Stops at a setup error
/// (the runs done so far are kept).
fn pg_faults(s: &Settings, pg: &PgSettings, rows: &mut PgRows, farm: &Farm) -> Faults {
    let t0 = Instant::now();
    let mut out = Vec::new();
    let setup = (|| -> Result<(Relay, NameServer, u16), String> {
        let config: postgres::Config = pg
            .agent_url
            .parse()
            .map_err(|_| "BENCH_DATABASE_URL does not parse")?;
        let (Some(postgres::config::Host::Tcp(host)), Some(&port)) =
            (config.get_hosts().first(), config.get_ports().first())
        else {
            return Err("the database faults need a TCP database host".into());
        };
        let ip: std::net::IpAddr = host
            .trim_matches(['[', ']'])
            .parse()
            .map_err(|_| "the database faults need an IP address as database host")?;
        if !ip.is_loopback() {
            return Err("the database host is not a loopback address".into());
        }
        let relay = Relay::start(SocketAddr::new(ip, port)).map_err(|e| format!("relay: {e}"))?;
        let ns = NameServer::start().map_err(|e| format!("name server: {e}"))?;
        Ok((relay, ns, port))
    })();
    let (relay, ns, port) = match setup {
        Ok(x) => x,
        Err(e) => {
            for f in Fault::ALL {
                out.push((f, Err(e.clone())));
            }
            return (out, t0.elapsed().as_secs_f64());
        }
    };
    for fault in Fault::ALL {
        let run = fault_run(s, pg, rows, farm, fault, &relay, &ns, port);
        match &run {
            Ok(r) => println!(
                "fault {:<24} scrapes p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; {} cycles in {:?} (longest gap {:.2} s); {}",
                fault.label(),
                r.p(50.0),
                r.p(99.0),
                r.max(),
                r.cycles.1 - r.cycles.0,
                FAULT_WINDOW,
                r.cycle_gap_s,
                r.recovered_s.map_or(format!("not recovered within {FAULT_RECOVERY_WAIT:?}"), |t| format!("recovered after {t:.2} s"))
            ),
            Err(e) => println!("fault {:<24} failed: {e}", fault.label()),
        }
        out.push((fault, run));
    }
    (out, t0.elapsed().as_secs_f64())
}

#[allow(clippy::too_many_arguments)]
fn fault_run(
    s: &Settings,
    pg: &PgSettings,
    rows: &mut PgRows,
    farm: &Farm,
    fault: Fault,
    relay: &Relay,
    ns: &NameServer,
    db_port: u16,
) -> Result<FaultRun, String> {
    let n = farm.ports.len() as f64;
    let url = match fault {
        Fault::Silent => fault_url(&pg.agent_url, "127.0.0.1", relay.port)?,
        Fault::DnsSilent => fault_url(&pg.agent_url, FAULT_DB_NAME, relay.port)?,
        Fault::Reference | Fault::Stopped | Fault::Locked => {
            fault_url(&pg.agent_url, "127.0.0.1", db_port)?
        }
    };
    relay.set_silent(false);
    ns.set_silent(false);
    let port = free_port().map_err(|e| e.to_string())?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let log = s.work.join(format!("agent-fault-{}.log", fault.key()));
    let mut cmd = pg_agent_command_url(&s.agent, &url, &pg.hostname, "1", port);
    // Every fault agent gets the bench's name server: no name it resolves leaves loopback.
    cmd.args(["--dns-server", &ns.addr.to_string()]);
    let mut child = Running(spawn(&mut cmd, &log)?);
    let see_log = |e: String| format!("{e} (see {})", log.display());
    let mut metrics = wait_http_ok(addr, "/healthz", READY_TIMEOUT).map_err(see_log)?;
    let mut health = Client::connect(addr).map_err(|e| e.to_string())?;
    let ready = metrics_until(&mut metrics, READY_TIMEOUT, |b| {
        sample(b, "sigma_route_source_up") == Some(1.0)
            && sample(b, "sigma_routes") == Some(n)
            && sample(b, "sigma_probe_cycles_total").is_some_and(|c| c >= 1.0)
    })?;
    if ready.is_none() {
        return Err(see_log(format!(
            "the agent did not read its {n} routes within {READY_TIMEOUT:?}"
        )));
    }

    // Arm the fault.
    let mut run = FaultRun::default();
    let mut stopped = None;
    let mut lock = None;
    match fault {
        Fault::Reference | Fault::Silent => {}
        Fault::Stopped => {
            let pids: Vec<i32> = rows
                .admin
                .query(
                    "SELECT pid FROM pg_stat_activity WHERE application_name = $1",
                    &[&FAULT_APP_NAME],
                )
                .map_err(|e| format!("pg_stat_activity: {e}"))?
                .iter()
                .map(|r| r.get(0))
                .collect();
            let Some(&backend) = pids.first() else {
                return Err("the agent's backend is not in pg_stat_activity".into());
            };
            let postmaster = postmaster_of(backend)
                .ok_or("cannot find the postmaster (parent of the agent's backend)")?;
            run.detail = format!("stopped backend {pids:?} and postmaster {postmaster}");
            let mut all = pids.clone();
            all.push(postmaster);
            stopped = Some(all);
        }
        Fault::Locked => {}
        Fault::DnsSilent => {
            ns.set_silent(true);
            // The answer the agent holds must expire first (it has its connection meanwhile).
            if let Some(last) = ns.last_answer() {
                std::thread::sleep(
                    (last + DNS_CACHE_WAIT).saturating_duration_since(Instant::now()),
                );
            }
        }
    }
    let body = metrics
        .get("/metrics")
        .map_err(|e| format!("scrape: {e}"))?
        .1;
    let cycles0 = sample(body, "sigma_probe_cycles_total").unwrap_or(f64::NAN);
    let errors0 = sample(body, "sigma_route_source_errors_total").unwrap_or(0.0);
    let (probes0, unanswered0, queries0) = (
        farm.accepted(),
        ns.unanswered.load(Ordering::Relaxed),
        ns.queries.load(Ordering::Relaxed),
    );
    // Start it.
    let stopped = match stopped {
        Some(pids) => Some(Stopped::stop(&pids)?),
        None => None,
    };
    match fault {
        Fault::Silent => relay.set_silent(true),
        Fault::Locked => {
            let mut tx = rows.admin.transaction().map_err(|e| e.to_string())?;
            tx.batch_execute(
                "SET LOCAL lock_timeout = '5s'; LOCK TABLE envoy_routes IN ACCESS EXCLUSIVE MODE",
            )
            .map_err(|e| format!("LOCK TABLE: {e}"))?;
            lock = Some(tx);
        }
        Fault::DnsSilent => relay.cut(),
        Fault::Reference | Fault::Stopped => {}
    }

    // The window: scrape both endpoints every FAULT_SCRAPE_GAP.
    let start = Instant::now();
    let mut next = start;
    let mut cycles1 = cycles0;
    let mut errors1 = errors0;
    run.routes_kept = true;
    let mut last_cycle_end = start;
    while start.elapsed() < FAULT_WINDOW {
        for (path, client) in [("/metrics", &mut metrics), ("/healthz", &mut health)] {
            let t = Instant::now();
            let got = client.get(path).map(|(status, body)| {
                if path == "/metrics" && status == 200 {
                    let get = |k: &str| sample(body, k);
                    run.source_down_seen |= get("sigma_route_source_up") == Some(0.0);
                    run.routes_kept &= get("sigma_routes") == Some(n);
                    let cycles = get("sigma_probe_cycles_total").unwrap_or(cycles1);
                    if cycles != cycles1 {
                        run.cycle_gap_s = run.cycle_gap_s.max((t - last_cycle_end).as_secs_f64());
                        last_cycle_end = t;
                        cycles1 = cycles;
                    }
                    errors1 = get("sigma_route_source_errors_total").unwrap_or(errors1);
                }
                status
            });
            let ms = t.elapsed().as_secs_f64() * 1e3;
            run.scrapes_ms.push(ms);
            let max = if path == "/metrics" {
                &mut run.metrics_max_ms
            } else {
                &mut run.healthz_max_ms
            };
            *max = max.max(ms);
            if !matches!(got, Ok(200)) {
                run.failed += 1;
                if got.is_err() {
                    *client = Client::connect(addr).map_err(|e| format!("reconnect: {e}"))?;
                }
            }
        }
        next += FAULT_SCRAPE_GAP;
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    run.cycles = (cycles0, cycles1);
    run.cycle_gap_s = run.cycle_gap_s.max(last_cycle_end.elapsed().as_secs_f64());
    run.source_errors = errors1 - errors0;
    run.probes = farm.accepted() - probes0;
    if fault == Fault::DnsSilent {
        run.detail = format!(
            "the name server got {} queries in the window, left {} unanswered",
            ns.queries.load(Ordering::Relaxed) - queries0,
            ns.unanswered.load(Ordering::Relaxed) - unanswered0
        );
    }

    // Lift it, and see the agent read its database again.
    drop(stopped);
    if let Some(tx) = lock.take() {
        tx.rollback().map_err(|e| format!("ending the lock: {e}"))?;
    }
    relay.set_silent(false);
    ns.set_silent(false);
    run.recovered_s = metrics_until(&mut metrics, FAULT_RECOVERY_WAIT, |b| {
        sample(b, "sigma_route_source_up") == Some(1.0) && sample(b, "sigma_routes") == Some(n)
    })?
    .map(|d| d.as_secs_f64());
    if child.exited() {
        return Err(see_log("the agent exited".into()));
    }
    run.scrapes_ms.sort_by(f64::total_cmp);
    Ok(run)
}

/// The fault section of the report: a table, its JSON, and its targets.
fn faults_report(
    s: &Settings,
    faults: &Option<Faults>,
) -> (Value, Vec<(String, String, Option<bool>)>) {
    let scrape_name = format!("scrapes during each database fault < {FAULT_SCRAPE_BOUND_MS:.0} ms");
    let cycles_name = "probe cycles keep running during each database fault".to_owned();
    let Some((runs, took_s)) = faults else {
        return (
            json!({"status": "skipped"}),
            vec![
                (scrape_name, "not measured (no database)".into(), None),
                (cycles_name, "not measured (no database)".into(), None),
            ],
        );
    };
    let cycles_expected = FAULT_WINDOW.as_secs_f64() / INTERVAL.as_secs_f64();
    println!();
    println!(
        "== PostgreSQL source under database faults: {} routes, {:?} cycle, /metrics and /healthz scraped every {:?} for {:?} per fault ({:.0} s in all) ==",
        s.routes, INTERVAL, FAULT_SCRAPE_GAP, FAULT_WINDOW, took_s
    );
    println!(
        "{:<26} {:>8} {:>8} {:>8} {:>8} {:>7} {:>7} {:>9} {:>9} {:>10}",
        "fault",
        "scrapes",
        "p50 ms",
        "p99 ms",
        "max ms",
        "failed",
        "cycles",
        "max gap",
        "source 0",
        "recovered"
    );
    let mut json_runs = serde_json::Map::new();
    let (mut all_fast, mut all_cycles) = (true, true);
    let mut reference_cycles = f64::NAN;
    let (mut worst, mut fewest, mut gap) = (0.0f64, f64::INFINITY, 0.0f64);
    for (fault, run) in runs {
        let r = match run {
            Ok(r) => r,
            Err(e) => {
                println!("{:<26} failed: {e}", fault.label());
                json_runs.insert(
                    fault.key().into(),
                    json!({"error": e, "description": fault.description()}),
                );
                all_fast = false;
                all_cycles = false;
                continue;
            }
        };
        let cycles = r.cycles.1 - r.cycles.0;
        all_fast &= r.max() < FAULT_SCRAPE_BOUND_MS && r.failed == 0;
        worst = worst.max(r.max());
        if *fault == Fault::Reference {
            reference_cycles = cycles;
        } else {
            all_cycles &= cycles >= 1.0;
            fewest = fewest.min(cycles);
            gap = gap.max(r.cycle_gap_s);
        }
        println!(
            "{:<26} {:>8} {:>8.2} {:>8.2} {:>8.2} {:>7} {:>7} {:>9} {:>9} {:>10}",
            fault.label(),
            r.scrapes_ms.len(),
            r.p(50.0),
            r.p(99.0),
            r.max(),
            r.failed,
            cycles,
            format!("{:.2} s", r.cycle_gap_s),
            if r.source_down_seen { "yes" } else { "no" },
            match (fault, r.recovered_s) {
                (Fault::Reference, _) => "n/a".into(),
                (_, Some(t)) => format!("{t:.2} s"),
                (_, None) => "no".into(),
            }
        );
        json_runs.insert(
            fault.key().into(),
            json!({
                "description": fault.description(),
                "detail": r.detail,
                "scrapes": r.scrapes_ms.len(),
                "scrape_ms": {"p50": r.p(50.0), "p99": r.p(99.0), "max": r.max(), "metrics_max": r.metrics_max_ms, "healthz_max": r.healthz_max_ms},
                "failed_requests": r.failed,
                "probe_cycles": cycles,
                "probe_cycles_expected": cycles_expected,
                "longest_gap_between_cycle_ends_s": r.cycle_gap_s,
                "listener_connections": r.probes,
                "listener_connections_note": "connections the N listeners accepted in the window: the agent's probes plus any other loopback traffic to those ports on the machine",
                "routes_kept": r.routes_kept,
                "source_up_0_seen": r.source_down_seen,
                "source_errors": r.source_errors,
                "recovered_s": r.recovered_s,
                "recovery_wait_s": FAULT_RECOVERY_WAIT.as_secs_f64(),
            }),
        );
    }
    println!(
        "(cycles: sigma_probe_cycles_total over the window, {cycles_expected:.0} without a fault; max gap: longest time without a cycle ending, seen by the scrapes; source 0: sigma_route_source_up read 0, the agent saw the fault; recovered: from lifting the fault to sigma_route_source_up 1, at most {FAULT_RECOVERY_WAIT:?}; details in target/bench.json)"
    );
    for (fault, run) in runs {
        if let Ok(r) = run {
            if !r.detail.is_empty() {
                println!("  {}: {}", fault.label(), r.detail);
            }
        }
    }
    let out = json!({
        "status": "measured",
        "window_s": FAULT_WINDOW.as_secs_f64(),
        "scrape_gap_ms": FAULT_SCRAPE_GAP.as_secs_f64() * 1e3,
        "interval_s": INTERVAL.as_secs_f64(),
        "routes": s.routes,
        "section_s": took_s,
        "faults": json_runs,
    });
    let targets = vec![
        (
            scrape_name,
            format!("max {worst:.2} ms over {} faults", runs.len()),
            Some(all_fast),
        ),
        (
            cycles_name,
            format!(
                "fewest {fewest} cycles in {FAULT_WINDOW:?} ({reference_cycles} without a fault); longest gap {gap:.2} s at a {INTERVAL:?} interval"
            ),
            Some(all_cycles),
        ),
    ];
    (out, targets)
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().collect();
    let [_, agent, floor, work] = &args[..] else {
        return Err(
            "usage: benchkit AGENT_BIN FLOOR_BIN WORK_DIR (settings: see the source)".into(),
        );
    };
    let s = Settings {
        agent: PathBuf::from(agent),
        floor: PathBuf::from(floor),
        work: PathBuf::from(work),
        routes: env_or("BENCH_ROUTES", 1000usize),
        window: Duration::from_secs_f64(env_or("BENCH_WINDOW", 8.0f64)),
        rounds: env_or("BENCH_ROUNDS", 5usize).max(1),
        blackbox: std::env::var("BENCH_BLACKBOX")
            .ok()
            .filter(|p| !p.is_empty())
            .map(PathBuf::from),
        baseline: std::env::var("BENCH_BASELINE_AGENT")
            .ok()
            .filter(|p| !p.is_empty())
            .map(PathBuf::from),
    };
    fs::create_dir_all(&s.work).map_err(|e| format!("{}: {e}", s.work.display()))?;
    raise_fd_limit(s.routes as u64 + 512);

    let farm = Farm::start(s.routes).map_err(|e| format!("cannot open the listeners: {e}"))?;
    let hole = blackhole().map_err(|e| format!("cannot set up the full-backlog listener: {e}"))?;
    let routes_file = s.work.join("routes");
    write_routes(&routes_file, &farm.ports).map_err(|e| e.to_string())?;
    println!(
        "{} loopback listeners (+1 with a full backlog on port {}); window {:?}, {} rounds",
        s.routes, hole.port, s.window, s.rounds
    );

    // Side by side: agent, floor, blackbox in turn, each round over the same targets.
    let mut agent_w = Vec::new();
    let mut floor_w = Vec::new();
    let mut bb_w = Vec::new();
    let bb_config = s.work.join("blackbox.yml");
    fs::write(
        &bb_config,
        "modules:\n  tcp_connect:\n    prober: tcp\n    timeout: 3s\n    tcp:\n      preferred_ip_protocol: ip4\n      ip_protocol_fallback: false\n",
    )
    .map_err(|e| e.to_string())?;
    // The PostgreSQL source: the bench's rows in the database, then a run per round.
    let pg = PgSettings::from_env();
    let (mut pg_rows, mut pg_error, mut pg_w) = (None, None, Vec::new());
    let mut base = Baseline::default();
    match &pg {
        Ok(settings) => match PgRows::insert(settings, &farm.ports) {
            Ok(rows) => {
                println!(
                    "PostgreSQL source: {} (PostgreSQL {}), vps '{}' with {} routes",
                    settings.origin,
                    rows.server_version,
                    settings.hostname,
                    farm.ports.len()
                );
                pg_rows = Some(rows);
            }
            Err(e) => {
                println!("PostgreSQL source: cannot set up the rows: {e}");
                pg_error = Some(e);
            }
        },
        Err(why) => println!("PostgreSQL source: skipped ({why})"),
    }
    for round in 1..=s.rounds {
        let port = free_port().map_err(|e| e.to_string())?;
        let a = {
            let cmd = &mut agent_command(&s.agent, &routes_file, "1", port);
            let child = Running(spawn(cmd, &s.work.join("agent.log"))?);
            measure(&farm, child.pid(), s.window, "agent", None)?
        };
        println!(
            "round {round}: agent    {:>7.2} µs/probe ({} probes, {:.2} s CPU, {:.2} s of it user)",
            a.us_per_probe(),
            a.probes,
            a.cpu_s,
            a.user_s
        );
        agent_w.push(a);

        if let Some(bin) = &s.baseline {
            let port = free_port().map_err(|e| e.to_string())?;
            let cmd = &mut agent_command(bin, &routes_file, "1", port);
            let child = Running(spawn(cmd, &s.work.join("baseline.log"))?);
            let w = measure(&farm, child.pid(), s.window, "baseline agent", None)?;
            println!(
                "round {round}: baseline {:>7.2} µs/probe ({} probes), peak RSS {} KiB",
                w.us_per_probe(),
                w.probes,
                w.foot.peak_rss_kib
            );
            base.file.push(w);
        }

        if let (Ok(settings), Some(_), None) = (&pg, &pg_rows, &pg_error) {
            match pg_round(&s, &s.agent, settings, &farm) {
                Ok(r) => {
                    println!(
                        "round {round}: agent-pg {:>7.2} µs/probe ({} probes, {:.2} s CPU, {:.2} s of it user; route fetch {:.2?} ms)",
                        r.window.us_per_probe(),
                        r.window.probes,
                        r.window.cpu_s,
                        r.window.user_s,
                        r.fetch_s.iter().map(|x| (x * 1e5).round() / 100.0).collect::<Vec<_>>()
                    );
                    pg_w.push(r);
                }
                Err(e) => {
                    println!("round {round}: agent-pg failed: {e}");
                    pg_error = Some(e);
                }
            }
            if let (Some(bin), None) = (&s.baseline, &base.error) {
                match pg_round(&s, bin, settings, &farm) {
                    Ok(r) => {
                        println!(
                            "round {round}: baseline-pg {:>7.2} µs/probe ({} probes), peak RSS {} KiB",
                            r.window.us_per_probe(),
                            r.window.probes,
                            r.window.foot.peak_rss_kib
                        );
                        base.pg.push(r.window);
                    }
                    Err(e) => {
                        println!("round {round}: baseline-pg failed: {e}");
                        base.error = Some(e);
                    }
                }
            }
        }

        let f = {
            let mut cmd = Command::new(&s.floor);
            cmd.arg(&routes_file).args(["1", "3", "600"]);
            let child = Running(spawn(&mut cmd, &s.work.join("floor.log"))?);
            measure(&farm, child.pid(), s.window, "floor", None)?
        };
        println!(
            "round {round}: floor    {:>7.2} µs/probe ({} probes, {:.2} s CPU, {:.2} s of it user)",
            f.us_per_probe(),
            f.probes,
            f.cpu_s,
            f.user_s
        );
        floor_w.push(f);

        if let Some(bin) = &s.blackbox {
            let port = free_port().map_err(|e| e.to_string())?;
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let mut cmd = Command::new(bin);
            cmd.arg(format!("--config.file={}", bb_config.display()))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .arg("--log.level=warn");
            let child = Running(spawn(&mut cmd, &s.work.join("blackbox.log"))?);
            wait_http_ok(addr, "/metrics", READY_TIMEOUT)?;
            let driver = Driver::start(addr, farm.ports.clone())?;
            let b = measure(&farm, child.pid(), s.window, "blackbox", Some(&driver))?;
            drop(driver);
            println!(
                "round {round}: blackbox {:>7.2} µs/probe ({} probes, {} with probe_success 1, {:.2} s CPU; driver {:.2} s CPU apart)",
                b.us_per_probe(),
                b.probes,
                b.driver_ok,
                b.cpu_s,
                b.driver_cpu_s
            );
            bb_w.push(b);
        }
    }

    // The database faults, each with its own agent, while the bench's rows are still there.
    // They stop and lock the database: on the script's throwaway cluster, or when asked.
    let faults_wanted = match std::env::var("BENCH_PG_FAULTS").as_deref() {
        Ok("0") => false,
        Ok("1") => true,
        _ => std::env::var("BENCH_PG_THROWAWAY").as_deref() == Ok("1"),
    };
    if !faults_wanted && pg_rows.is_some() {
        println!();
        println!("== database faults: skipped (they SIGSTOP and lock the database: run on the throwaway cluster only, unless BENCH_PG_FAULTS=1) ==");
    }
    let faults = match (&pg, pg_rows.as_mut(), &pg_error) {
        (Ok(settings), Some(rows), None) if faults_wanted => {
            println!();
            println!("== database faults (each: a fresh agent, {FAULT_WINDOW:?} scraped, then recovery) ==");
            Some(pg_faults(&s, settings, rows, &farm))
        }
        _ => None,
    };

    let pg_windows: Vec<Window> = pg_w.iter().map(|r| r.window).collect();
    let pg_outcome = match (pg, pg_rows.take(), pg_error) {
        (Err(why), _, _) => PgOutcome::Skipped(why),
        (Ok(settings), _, Some(error)) => PgOutcome::Failed {
            origin: settings.origin,
            error,
            rounds: pg_w,
        },
        (Ok(settings), Some(rows), None) => PgOutcome::Measured {
            origin: settings.origin,
            hostname: settings.hostname,
            server_version: rows.server_version.clone(),
            rounds: pg_w,
        },
        (Ok(_), None, None) => PgOutcome::Skipped("no rows".into()),
    };
    // (rows, if any, were dropped above: the bench's vps, node and routes are deleted)

    let scrape = scrape_latency(&s, &farm, &hole)?;
    let starts = exec_to_first_200(&s, &routes_file)?;
    let leak = cycles_10_vs_100(&s, &farm)?;
    report(
        &s,
        &agent_w,
        &floor_w,
        &bb_w,
        scrape,
        &starts,
        leak,
        &pg_outcome,
        &faults,
        (&base, &pg_windows),
    )
}

fn raise_fd_limit(want: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < want {
            lim.rlim_cur = want.min(lim.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
    if lim.rlim_cur < want {
        eprintln!(
            "warning: open files limited to {} (want {want}); raise `ulimit -n`",
            lim.rlim_cur
        );
    }
}

struct Scrape {
    /// p99 of the scrapes that overlapped no connect of the N fast probes (only the pending
    /// one), and the latencies of those that did, all batches together.
    quiet_p99_ms: f64,
    burst_ms: Vec<f64>,
    /// Medians over the batches of each batch's p50 and p99.
    p50_ms: f64,
    p99_ms: f64,
    p99_runs: Vec<f64>,
    max_ms: f64,
    count: usize,
    body_kib: usize,
    cycle_duration_s: f64,
    threads: u64,
    /// VmHWM of the scraped agent: probing and serving /metrics.
    peak_rss_kib: u64,
}

/// Scrape latency while probing: the agent over the N targets plus the full-backlog one (so a
/// probe is pending for ~3 s of every cycle, and the N fast probes run between), scraped
/// every 20 ms over a keep-alive connection, as Prometheus does.
fn scrape_latency(s: &Settings, farm: &Farm, hole: &Blackhole) -> Result<Scrape, String> {
    let mut ports = farm.ports.clone();
    ports.push(hole.port);
    let file = s.work.join("routes-pending");
    write_routes(&file, &ports).map_err(|e| e.to_string())?;
    let port = free_port().map_err(|e| e.to_string())?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let cmd = &mut agent_command(&s.agent, &file, "1", port);
    let before = farm.accepted();
    let child = Running(spawn(cmd, &s.work.join("agent-scrape.log"))?);
    let mut client = wait_http_ok(addr, "/healthz", READY_TIMEOUT)?;
    // The first N probes done: from here the probe to the full backlog is pending.
    farm.wait_for(before, farm.ports.len() as u64, "agent")?;
    let mut body_kib = 0;
    let (mut p50s, mut p99s, mut max_ms) = (Vec::new(), Vec::new(), 0.0f64);
    let (mut in_burst, mut quiet) = (Vec::new(), Vec::new());
    for _ in 0..SCRAPE_BATCHES {
        let mut latencies = Vec::with_capacity(SCRAPES);
        let mut next = Instant::now();
        for _ in 0..SCRAPES {
            let (t, a) = (Instant::now(), farm.accepted());
            let (status, body) = client.get("/metrics").map_err(|e| format!("scrape: {e}"))?;
            let ms = t.elapsed().as_secs_f64() * 1e3;
            latencies.push(ms);
            // Probes arrived at the farm meanwhile: this scrape overlapped the fast part of a
            // cycle (the N connects), not only the pending probe.
            if farm.accepted() != a {
                in_burst.push(ms);
            } else {
                quiet.push(ms);
            }
            if status != 200 {
                return Err(format!("scrape: status {status}"));
            }
            body_kib = body.len() / 1024;
            next += SCRAPE_GAP;
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
        latencies.sort_by(f64::total_cmp);
        p50s.push(percentile(&latencies, 50.0));
        p99s.push(percentile(&latencies, 99.0));
        max_ms = max_ms.max(latencies.last().copied().unwrap_or(0.0));
    }
    let (_, body) = client.get("/metrics").map_err(|e| e.to_string())?;
    let cycle_duration_s = sample(body, "sigma_probe_cycle_duration_seconds").unwrap_or(0.0);
    let foot = footprint(child.pid());
    drop(child);
    in_burst.sort_by(f64::total_cmp);
    quiet.sort_by(f64::total_cmp);
    Ok(Scrape {
        quiet_p99_ms: percentile(&quiet, 99.0),
        burst_ms: in_burst,
        p50_ms: median(&p50s),
        p99_ms: median(&p99s),
        p99_runs: p99s,
        max_ms,
        count: SCRAPES,
        body_kib,
        cycle_duration_s,
        threads: foot.threads,
        peak_rss_kib: foot.peak_rss_kib,
    })
}

/// exec → first 200 on /healthz with the N-route file: spawn, then connect and GET in a tight
/// loop (a refused connect costs microseconds), STARTS times.
fn exec_to_first_200(s: &Settings, routes: &Path) -> Result<Vec<f64>, String> {
    let mut times = Vec::new();
    for _ in 0..STARTS {
        let port = free_port().map_err(|e| e.to_string())?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let cmd = &mut agent_command(&s.agent, routes, "1", port);
        let t0 = Instant::now();
        let mut child = Running(spawn(cmd, &s.work.join("agent-start.log"))?);
        let took = loop {
            if let Ok(mut c) = Client::connect(addr) {
                if let Ok((200, _)) = c.get("/healthz") {
                    break t0.elapsed();
                }
            }
            if t0.elapsed() > READY_TIMEOUT || child.exited() {
                return Err("the agent never answered /healthz".into());
            }
            std::thread::sleep(Duration::from_micros(100));
        };
        times.push(took.as_secs_f64() * 1e3);
    }
    Ok(times)
}

struct Leak {
    at10: Settled,
    at100: Settled,
    routes: usize,
}

/// Footprint figures sampled for a moment: a probe socket is open for part of every cycle,
/// so a single read of the fd count is one higher or not by chance. The fewest fds seen is
/// the agent's settled count (a leak raises it); RSS is the most seen.
#[derive(Clone, Copy, Default)]
struct Settled {
    fds_min: u64,
    fds_max: u64,
    rss_kib: u64,
    threads: u64,
}

/// [`LEAK_SAMPLES`] reads of `pid`'s footprint, 5 ms apart (two 100-ms cycles).
fn settled(pid: u32) -> Settled {
    let mut s = Settled {
        fds_min: u64::MAX,
        ..Settled::default()
    };
    for _ in 0..LEAK_SAMPLES {
        let f = footprint(pid);
        s.fds_min = s.fds_min.min(f.fds);
        s.fds_max = s.fds_max.max(f.fds);
        s.rss_kib = s.rss_kib.max(f.rss_kib);
        s.threads = s.threads.max(f.threads);
        std::thread::sleep(Duration::from_millis(5));
    }
    s
}

/// RSS and fds after 100 cycles vs after 10: the agent over the N targets plus a closed port
/// (so the failure path runs too), at the minimum interval (100 ms) so 100 cycles take ~10 s;
/// scraped every 250 ms meanwhile so the HTTP path runs too.
fn cycles_10_vs_100(s: &Settings, farm: &Farm) -> Result<Leak, String> {
    let closed = free_port().map_err(|e| e.to_string())?;
    let mut ports = farm.ports.clone();
    ports.push(closed);
    let file = s.work.join("routes-leak");
    write_routes(&file, &ports).map_err(|e| e.to_string())?;
    let port = free_port().map_err(|e| e.to_string())?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let cmd = &mut agent_command(&s.agent, &file, LEAK_INTERVAL, port);
    let child = Running(spawn(cmd, &s.work.join("agent-leak.log"))?);
    let mut client = wait_http_ok(addr, "/healthz", READY_TIMEOUT)?;
    let mut at10 = None;
    let until = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, body) = client.get("/metrics").map_err(|e| e.to_string())?;
        let cycles = sample(body, "sigma_probe_cycles_total").unwrap_or(0.0);
        if cycles >= 10.0 && at10.is_none() {
            at10 = Some(settled(child.pid()));
        }
        if cycles >= 100.0 {
            break;
        }
        if Instant::now() > until {
            return Err(format!("only {cycles} cycles in 120 s"));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let at100 = settled(child.pid());
    Ok(Leak {
        at10: at10.unwrap_or_default(),
        at100,
        routes: ports.len(),
    })
}

// ---------------------------------------------------------------------------------------------
// The report: a table, the targets, and target/bench.json.

fn command_line(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| {
            let text = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_owned()
        })
        .unwrap_or_default()
}

fn machine(s: &Settings) -> Value {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split_once(':').map(|x| x.1))
        .unwrap_or("")
        .trim()
        .to_owned();
    let mem_total_kib = cpuinfo_value("/proc/meminfo", "MemTotal:");
    json!({
        "date": command_line("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]),
        "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu": cpu,
        "mem_total_kib": mem_total_kib,
        "kernel": fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "rustc": command_line("rustc", &["--version"]),
        "blackbox_exporter": s.blackbox.as_ref().map(|b| command_line(&b.to_string_lossy(), &["--version"])),
    })
}

fn cpuinfo_value(path: &str, key: &str) -> Option<u64> {
    let text = fs::read_to_string(path).ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

fn prober_json(w: &[Window]) -> Value {
    if w.is_empty() {
        return Value::Null;
    }
    let per: Vec<f64> = w.iter().map(Window::us_per_probe).collect();
    let peaks: Vec<f64> = w.iter().map(|x| x.foot.peak_rss_kib as f64).collect();
    json!({
        "cpu_us_per_probe": median(&per),
        "cpu_us_per_probe_runs": per,
        // Pooled over the rounds: a window holds only a few 10-ms ticks of user time.
        "user_us_per_probe": w.iter().map(|x| x.user_s).sum::<f64>() * 1e6 / w.iter().map(|x| x.probes).sum::<u64>().max(1) as f64,
        "probes_per_window": w.iter().map(|x| x.probes).collect::<Vec<_>>(),
        "cpu_s_per_window": w.iter().map(|x| x.cpu_s).collect::<Vec<_>>(),
        "window_s": median(&w.iter().map(|x| x.wall_s).collect::<Vec<_>>()),
        "peak_rss_kib": median(&peaks),
        "peak_rss_kib_max": peaks.iter().copied().fold(0.0, f64::max),
        "rss_kib": median(&w.iter().map(|x| x.foot.rss_kib as f64).collect::<Vec<_>>()),
        "rss_anon_kib": median(&w.iter().map(|x| x.foot.rss_anon_kib as f64).collect::<Vec<_>>()),
        "rss_file_kib": median(&w.iter().map(|x| x.foot.rss_file_kib as f64).collect::<Vec<_>>()),
        "threads": w.last().map(|x| x.foot.threads),
        "open_fds": w.last().map(|x| x.foot.fds),
        "epoll_instances": w.iter().map(|x| x.foot.epolls).max(),
        "driver_cpu_us_per_probe": if w.iter().all(|x| x.driver_cpu_s == 0.0) {
            Value::Null
        } else {
            json!(median(&w.iter().map(|x| if x.probes == 0 { f64::NAN } else { x.driver_cpu_s * 1e6 / x.probes as f64 }).collect::<Vec<_>>()))
        },
    })
}

/// The baseline agent's windows (`BENCH_BASELINE_AGENT`), same rounds as the agent's.
#[derive(Default)]
struct Baseline {
    file: Vec<Window>,
    pg: Vec<Window>,
    error: Option<String>,
}

/// Agent vs baseline agent, file and database source, same rounds: a table and its JSON.
fn baseline_report(s: &Settings, file: &[Window], pg: &[Window], base: &Baseline) -> Value {
    let Some(bin) = &s.baseline else {
        return Value::Null;
    };
    let size = |p: &Path| fs::metadata(p).map(|m| m.len()).ok();
    let (af, bf, ap, bp) = (
        prober_json(file),
        prober_json(&base.file),
        prober_json(pg),
        prober_json(&base.pg),
    );
    let num = |v: &Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    println!();
    println!(
        "== baseline agent {} vs the agent: same rounds, same targets, median of {} rounds ==",
        bin.display(),
        base.file.len()
    );
    if let Some(e) = &base.error {
        println!("baseline with the PostgreSQL source FAILED: {e}");
    }
    println!(
        "{:<38} {:>10} {:>10} {:>10}",
        "", "agent", "baseline", "ratio"
    );
    let row = |name: &str, a: f64, b: f64, scale: f64| {
        println!(
            "{:<38} {:>10.2} {:>10.2} {:>10.2}",
            name,
            a / scale,
            b / scale,
            a / b
        );
    };
    for (what, a, b) in [("file source", &af, &bf), ("PostgreSQL source", &ap, &bp)] {
        row(
            &format!("peak RSS, {what} (MiB)"),
            num(a, "peak_rss_kib"),
            num(b, "peak_rss_kib"),
            1024.0,
        );
        row(
            "  RSS anonymous (MiB)",
            num(a, "rss_anon_kib"),
            num(b, "rss_anon_kib"),
            1024.0,
        );
        row(
            "  RSS file-backed (MiB)",
            num(a, "rss_file_kib"),
            num(b, "rss_file_kib"),
            1024.0,
        );
        row(
            &format!("CPU per probe, {what} (µs)"),
            num(a, "cpu_us_per_probe"),
            num(b, "cpu_us_per_probe"),
            1.0,
        );
        for k in ["threads", "epoll_instances", "open_fds"] {
            row(&format!("  {k}, {what}"), num(a, k), num(b, k), 1.0);
        }
    }
    let (sa, sb) = (size(&s.agent), size(bin));
    row(
        "binary size (KiB)",
        sa.map_or(f64::NAN, |x| x as f64),
        sb.map_or(f64::NAN, |x| x as f64),
        1024.0,
    );
    json!({
        "binary": bin.display().to_string(),
        "binary_bytes": sb,
        "agent_binary_bytes": sa,
        "file": {"agent": af, "baseline": bf},
        "postgres": {"agent": ap, "baseline": bp},
        "error": base.error,
    })
}

/// Per-round ratios of CPU per probe (same round, same targets), and their median.
fn ratios(a: &[Window], b: &[Window]) -> (f64, Vec<f64>) {
    let r: Vec<f64> = a
        .iter()
        .zip(b)
        .map(|(x, y)| x.us_per_probe() / y.us_per_probe())
        .collect();
    (median(&r), r)
}

#[allow(clippy::too_many_arguments)]
fn report(
    s: &Settings,
    agent: &[Window],
    floor: &[Window],
    bb: &[Window],
    scrape: Scrape,
    starts: &[f64],
    leak: Leak,
    pg: &PgOutcome,
    faults: &Option<Faults>,
    (base, pg_windows): (&Baseline, &[Window]),
) -> Result<(), String> {
    let micro: Value = std::env::var("BENCH_MICRO_JSON")
        .ok()
        .and_then(|p| fs::read_to_string(p).ok())
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null);
    let (a, f, b) = (prober_json(agent), prober_json(floor), prober_json(bb));
    let (af, af_runs) = ratios(agent, floor);
    let (ab, ab_runs) = ratios(agent, bb);
    let peak = |v: &Value| v["peak_rss_kib"].as_f64().unwrap_or(f64::NAN);
    let cpu = |v: &Value| v["cpu_us_per_probe"].as_f64().unwrap_or(f64::NAN);
    let cell = |v: &Value, x: f64, fmt: &dyn Fn(f64) -> String| {
        if v.is_null() {
            "n/a".to_owned()
        } else {
            fmt(x)
        }
    };
    let us = |x: f64| format!("{x:.2}");
    let mib = |x: f64| format!("{:.2}", x / 1024.0);
    let ratio = |x: f64| {
        if x.is_finite() {
            format!("{x:.2}")
        } else {
            "n/a".into()
        }
    };

    println!();
    println!(
        "== side by side: {} loopback targets, a cycle every 1 s, one connect at a time, {}-s windows, median of {} rounds ==",
        s.routes,
        s.window.as_secs_f64(),
        s.rounds
    );
    println!(
        "{:<28} {:>10} {:>10} {:>10} {:>12} {:>14}",
        "", "agent", "floor", "blackbox", "agent/floor", "agent/blackbox"
    );
    println!(
        "{:<28} {:>10} {:>10} {:>10} {:>12} {:>14}",
        "CPU per probe (µs)",
        cell(&a, cpu(&a), &us),
        cell(&f, cpu(&f), &us),
        cell(&b, cpu(&b), &us),
        ratio(af),
        ratio(ab)
    );
    let user = |v: &Value| v["user_us_per_probe"].as_f64().unwrap_or(f64::NAN);
    println!(
        "{:<28} {:>10} {:>10} {:>10}",
        "  user space, pooled (µs)",
        cell(&a, user(&a), &us),
        cell(&f, user(&f), &us),
        cell(&b, user(&b), &us),
    );
    let (pf, pb) = (peak(&a) / peak(&f), peak(&a) / peak(&b));
    println!(
        "{:<28} {:>10} {:>10} {:>10} {:>12} {:>14}",
        "peak RSS (MiB, VmHWM)",
        cell(&a, peak(&a), &mib),
        cell(&f, peak(&f), &mib),
        cell(&b, peak(&b), &mib),
        ratio(pf),
        ratio(pb)
    );
    let int = |v: &Value, k: &str| {
        v.get(k)
            .and_then(Value::as_u64)
            .map_or("n/a".into(), |x| x.to_string())
    };
    println!(
        "{:<28} {:>10} {:>10} {:>10}",
        "threads",
        int(&a, "threads"),
        int(&f, "threads"),
        int(&b, "threads")
    );
    println!(
        "{:<28} {:>10} {:>10} {:>10}",
        "open fds",
        int(&a, "open_fds"),
        int(&f, "open_fds"),
        int(&b, "open_fds")
    );
    if !b.is_null() {
        println!(
            "(blackbox's /probe driver used another {:.2} µs/probe of CPU, not counted above)",
            b["driver_cpu_us_per_probe"].as_f64().unwrap_or(f64::NAN)
        );
    } else {
        println!("(blackbox_exporter not run: not installed, see scripts/bench.sh)");
    }
    println!(
        "per-round ratios agent/floor: {:?}; agent/blackbox: {:?}",
        af_runs
            .iter()
            .map(|x| (x * 100.0).round() / 100.0)
            .collect::<Vec<_>>(),
        ab_runs
            .iter()
            .map(|x| (x * 100.0).round() / 100.0)
            .collect::<Vec<_>>()
    );

    let start_med = median(starts);
    let start_max = starts.iter().copied().fold(0.0, f64::max);
    println!();
    println!("== agent alone ==");
    println!(
        "scrape latency while probing ({} routes + 1 always-pending; median of {SCRAPE_BATCHES} batches of {} scrapes of {} KiB every {:?}, keep-alive): p50 {:.3} ms, p99 {:.3} ms (batches: {:.3?}), max {:.3} ms (last cycle took {:.2} s)",
        s.routes, scrape.count, scrape.body_kib, SCRAPE_GAP, scrape.p50_ms, scrape.p99_ms, scrape.p99_runs, scrape.max_ms, scrape.cycle_duration_s
    );
    println!(
        "  scrapes during the N-connect burst of a cycle: {} (median {:.3} ms, max {:.3} ms); p99 of the others: {:.3} ms",
        scrape.burst_ms.len(),
        median(&scrape.burst_ms),
        scrape.burst_ms.last().copied().unwrap_or(f64::NAN),
        scrape.quiet_p99_ms
    );
    println!(
        "peak RSS probing and scraped (VmHWM): {:.2} MiB",
        scrape.peak_rss_kib as f64 / 1024.0
    );
    println!(
        "exec → first 200 on /healthz, {} routes: median {:.2} ms, max {:.2} ms ({} starts)",
        s.routes, start_med, start_max, STARTS
    );
    println!(
        "after 10 / 100 cycles ({} routes, {LEAK_INTERVAL} interval): RSS {} / {} KiB, fds settled {} / {} (with a probe in flight {} / {}), threads {} / {}",
        leak.routes,
        leak.at10.rss_kib,
        leak.at100.rss_kib,
        leak.at10.fds_min,
        leak.at100.fds_min,
        leak.at10.fds_max,
        leak.at100.fds_max,
        leak.at10.threads,
        leak.at100.threads
    );

    let (pg_json, pg_targets) = pg_report(s, agent, pg);
    let (faults_json, faults_targets) = faults_report(s, faults);
    let baseline_json = baseline_report(s, agent, pg_windows, base);

    // Targets.
    let render_1k_ms = micro["render_1000"]["median_ns"].as_f64().map(|n| n / 1e6);
    let agent_threads = agent.last().map_or(0, |w| w.foot.threads);
    let rss_growth = leak.at100.rss_kib as i64 - leak.at10.rss_kib as i64;
    let fd_growth = leak.at100.fds_min as i64 - leak.at10.fds_min as i64;
    let mut targets: Vec<(String, String, Option<bool>)> = vec![
        (
            format!("peak RSS, {} routes, file source ≤ 3 MiB", s.routes),
            format!(
                "{:.2} MiB probing; {:.2} MiB probing + scraped",
                peak(&a) / 1024.0,
                scrape.peak_rss_kib as f64 / 1024.0
            ),
            Some(peak(&a) <= 3.0 * 1024.0 && scrape.peak_rss_kib <= 3 * 1024),
        ),
        (
            "CPU per reachable probe ≤ 1.25 × floor".into(),
            format!("{af:.2} × floor"),
            Some(af <= 1.25),
        ),
        (
            "CPU per reachable probe ≤ 50 µs".into(),
            format!("{:.2} µs", cpu(&a)),
            Some(cpu(&a) <= 50.0),
        ),
        (
            "render /metrics, 1,000 routes < 0.5 ms".into(),
            render_1k_ms.map_or("not measured".into(), |m| format!("{m:.3} ms")),
            render_1k_ms.map(|m| m < 0.5),
        ),
        (
            "scrape p99 while probing (probe pending) < 5 ms".into(),
            format!("{:.3} ms", scrape.p99_ms),
            Some(scrape.p99_ms < 5.0),
        ),
        (
            format!("exec → first 200 on /healthz, {} routes < 50 ms", s.routes),
            format!("{start_med:.2} ms (max {start_max:.2})"),
            Some(start_med < 50.0),
        ),
        (
            "RSS, settled fds after 100 cycles vs 10: no growth".into(),
            format!("RSS {rss_growth:+} KiB, fds {fd_growth:+}"),
            Some(fd_growth <= 0 && rss_growth <= LEAK_RSS_SLACK_KIB as i64),
        ),
        (
            "threads with the file source: 1".into(),
            format!("{agent_threads} (scrape run: {})", scrape.threads),
            Some(agent_threads == 1 && scrape.threads == 1),
        ),
    ];
    targets.extend(pg_targets);
    targets.extend(faults_targets);
    println!();
    println!("== targets ==");
    for (name, value, pass) in &targets {
        let verdict = match pass {
            Some(true) => "PASS",
            Some(false) => "FAIL",
            None => "SKIP",
        };
        println!("{verdict:<5} {name:<52} {value}");
    }

    let out = json!({
        "machine": machine(s),
        "settings": {
            "routes": s.routes,
            "interval_s": INTERVAL.as_secs_f64(),
            "deadline_s": DEADLINE.as_secs_f64(),
            "window_s": s.window.as_secs_f64(),
            "rounds": s.rounds,
            "cpu_source": "utime+stime from /proc/PID/stat (all threads), per connection accepted by the loopback listeners",
        },
        "micro": micro,
        "side_by_side": {
            "agent": a,
            "floor": f,
            "blackbox": b,
            "agent_over_floor_cpu": af,
            "agent_over_floor_cpu_runs": af_runs,
            "agent_over_blackbox_cpu": ab,
            "agent_over_blackbox_cpu_runs": ab_runs,
            "agent_over_floor_peak_rss": pf,
            "agent_over_blackbox_peak_rss": pb,
        },
        "agent": {
            "scrape_ms": {"p50": scrape.p50_ms, "p99": scrape.p99_ms, "p99_batches": scrape.p99_runs, "p99_outside_burst": scrape.quiet_p99_ms, "during_burst": scrape.burst_ms, "max": scrape.max_ms, "batches": SCRAPE_BATCHES, "scrapes_per_batch": scrape.count, "body_kib": scrape.body_kib, "pending_cycle_s": scrape.cycle_duration_s, "peak_rss_kib": scrape.peak_rss_kib},
            "exec_to_first_200_ms": {"median": start_med, "max": start_max, "runs": starts},
            "cycles_10_vs_100": {
                "routes": leak.routes, "interval": LEAK_INTERVAL,
                "rss_kib": [leak.at10.rss_kib, leak.at100.rss_kib],
                "fds_settled": [leak.at10.fds_min, leak.at100.fds_min],
                "fds_with_probe_in_flight": [leak.at10.fds_max, leak.at100.fds_max],
                "samples": LEAK_SAMPLES,
                "threads": [leak.at10.threads, leak.at100.threads],
            },
            "threads": agent_threads,
        },
        "postgres": pg_json,
        "postgres_faults": faults_json,
        "baseline": baseline_json,
        "targets": targets.iter().map(|(n, v, p)| json!({"target": n, "value": v, "pass": p})).collect::<Vec<_>>(),
    });
    let path = std::env::var("BENCH_JSON")
        .map(PathBuf::from)
        .unwrap_or_else(|_| s.work.join("../bench.json"));
    let text = serde_json::to_string_pretty(&out).map_err(|e| e.to_string())? + "\n";
    fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    println!();
    println!("figures written to {}", path.display());
    let missed = targets.iter().filter(|t| t.2 == Some(false)).count();
    if missed > 0 && std::env::var("BENCH_STRICT").is_ok_and(|v| v == "1") {
        return Err(format!("{missed} target(s) missed (BENCH_STRICT=1)"));
    }
    Ok(())
}
