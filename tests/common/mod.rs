//! Helpers for the tests that start the real binary and talk to it over loopback sockets.
//! Every address used here is on 127.0.0.1. Waits poll until a deadline ([`wait_until`]), never
//! sleep blindly.
#![allow(dead_code, unused_imports)]

pub mod dns_server;
pub mod envoy_admin;
#[cfg(feature = "postgres")]
pub mod pg;
#[cfg(feature = "tls")]
pub mod pg_tls;
pub mod web_pki;

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_sigma-agent-lite");

/// How often a wait looks again: far below every deadline the tests give, long enough that
/// the checks (often a scrape) do not load the shared 2-core CI machine.
pub const POLL_EVERY: Duration = Duration::from_millis(10);

/// Calls `check` every [`POLL_EVERY`] until it gives `Some`, for at most `within`; `None` if it
/// never did. The one poll loop of the tests: use [`wait_until`] unless the failure message
/// needs state the check saw.
pub fn poll_until<T>(within: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(POLL_EVERY);
    }
}

/// Polls `check` until it gives `Some` and returns that value; fails the test after `within`,
/// saying `what` was awaited. (A yes/no check gives `cond.then_some(())`.)
pub fn wait_until<T>(within: Duration, what: &str, check: impl FnMut() -> Option<T>) -> T {
    poll_until(within, check)
        .unwrap_or_else(|| panic!("timed out after {within:?} waiting until {what}"))
}

/// Calls `check` (which asserts) every [`POLL_EVERY`] for `during`: for what must not happen
/// within a window, where the waiting is the test.
pub fn hold_for(during: Duration, mut check: impl FnMut()) {
    let until = Instant::now() + during;
    while Instant::now() < until {
        check();
        std::thread::sleep(POLL_EVERY);
    }
}

/// Waits for `child` to exit and returns its exit code; kills it and fails the test if it is
/// still running after `within`.
pub fn wait_exit(child: &mut Child, within: Duration) -> Option<i32> {
    let status = poll_until(within, || child.try_wait().expect("try_wait"));
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("still running after {within:?}");
    };
    status.code()
}

/// A running agent; killed on drop.
pub struct Agent {
    pub child: Child,
    pub http: SocketAddr,
    pub stderr: Arc<Mutex<String>>,
}

impl Agent {
    /// Starts the agent with `--metrics-listen 127.0.0.1:0` plus `args`, and waits for the
    /// address it bound (from its start-up log line).
    pub fn start(args: &[&str]) -> Agent {
        Self::start_with_env(args, &[])
    }

    /// Starts the agent probing the routes in `routes`, with `flags` (such as
    /// `--health-probe-interval 200ms`) besides `--health-probe --routes-file`.
    pub fn probing(routes: &TempFile, flags: &[&str]) -> Agent {
        Self::probing_command(Command::new(BIN), routes, flags)
    }

    /// As [`Agent::probing`], with a command the caller prepared (see [`Agent::start_command`]).
    pub fn probing_command(cmd: Command, routes: &TempFile, flags: &[&str]) -> Agent {
        let mut args = vec!["--health-probe", "--routes-file", routes.path()];
        args.extend_from_slice(flags);
        Self::start_command(cmd, &args)
    }

    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Agent {
        let mut cmd = Command::new(BIN);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Self::start_command(cmd, args)
    }

    /// As [`Agent::start`], with a command the caller prepared (environment, `pre_exec`).
    pub fn start_command(mut cmd: Command, args: &[&str]) -> Agent {
        cmd.arg("--metrics-listen").arg("127.0.0.1:0").args(args);
        if cmd.get_envs().all(|(k, _)| k != "RUST_LOG") {
            cmd.env("RUST_LOG", "debug");
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the agent binary");
        let stderr = Arc::new(Mutex::new(String::new()));
        let pipe = child.stderr.take().expect("stderr pipe");
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        let mut agent = Agent {
            child,
            http: "127.0.0.1:0".parse().unwrap(),
            stderr,
        };
        agent.http = agent.listening("http");
        agent
    }

    /// The address of the agent's `kind` listener (`http`, `mcp`), from the start-up log line
    /// (`...; http 127.0.0.1:PORT; mcp 127.0.0.1:PORT`).
    fn listening(&mut self, kind: &str) -> SocketAddr {
        let key = format!("; {kind} 127.0.0.1:");
        let log = self.wait_log(&key, Duration::from_secs(10));
        let at = log.find(&key).unwrap() + key.len() - "127.0.0.1:".len();
        let addr: String = log[at..]
            .chars()
            .take_while(|c| !c.is_whitespace() && *c != ';')
            .collect();
        addr.parse().expect("bound address in the log")
    }

    /// The address of the MCP listener (`--mcp-listen 127.0.0.1:0`).
    pub fn mcp_addr(&mut self) -> SocketAddr {
        self.listening("mcp")
    }

    /// Waits until stderr contains `needle`; returns all of stderr.
    pub fn wait_log(&mut self, needle: &str, within: Duration) -> String {
        let child = &mut self.child;
        let stderr = &self.stderr;
        let found = poll_until(within, || {
            let s = stderr.lock().unwrap().clone();
            if s.contains(needle) {
                return Some(s);
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("agent exited with {status} before logging {needle:?}; stderr:\n{s}");
            }
            None
        });
        found
            .unwrap_or_else(|| panic!("no {needle:?} in stderr within {within:?}:\n{}", self.log()))
    }

    pub fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// As [`wait_until`], the failure message followed by the agent's stderr.
    pub fn wait_until<T>(
        &self,
        within: Duration,
        what: &str,
        check: impl FnMut() -> Option<T>,
    ) -> T {
        poll_until(within, check).unwrap_or_else(|| {
            panic!(
                "timed out after {within:?} waiting until {what}; stderr:\n{}",
                self.log()
            )
        })
    }

    pub fn get(&self, path: &str) -> Response {
        request(
            self.http,
            &format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"),
        )
    }

    pub fn metrics(&self) -> String {
        let r = self.get("/metrics");
        assert_eq!(r.status, 200, "{}", r.body);
        r.body
    }

    /// Polls /metrics until `pred` holds; returns that scrape.
    pub fn wait_metrics(&self, within: Duration, pred: impl Fn(&str) -> bool) -> String {
        let mut last = String::new();
        let found = poll_until(within, || {
            last = self.metrics();
            pred(&last).then(|| last.clone())
        });
        found.unwrap_or_else(|| {
            panic!(
                "condition not met within {within:?}; last scrape:\n{last}\nstderr:\n{}",
                self.log()
            )
        })
    }

    /// Polls /metrics until at least `cycles` probe cycles have ended; returns that scrape.
    pub fn wait_cycles(&self, cycles: u32, within: Duration) -> String {
        self.wait_metrics(within, |m| {
            sample(m, "sigma_probe_cycles_total").unwrap_or(0.0) >= f64::from(cycles)
        })
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill with a pid we own and a valid signal number.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, sig) }, 0);
    }

    /// Waits for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        wait_exit(&mut self.child, within)
    }

    /// Connections waiting in the accept queue of the agent's HTTP listener: 0 once the agent
    /// has taken every connection made so far.
    pub fn accept_queue(&self) -> usize {
        let port = self.http.port();
        self.tcp_sockets()
            .iter()
            .find(|s| s.state == TCP_LISTEN && s.local_port == port)
            .expect("the agent's HTTP listener in /proc/PID/net/tcp")
            .rx_queue
    }

    /// Whether the agent has a connect to `port` in flight (SYN sent, no answer yet): a
    /// pending probe.
    pub fn connecting_to(&self, port: u16) -> bool {
        self.tcp_sockets()
            .iter()
            .any(|s| s.state == TCP_SYN_SENT && s.remote_port == port)
    }

    /// The agent's IPv4 TCP sockets, from Linux's /proc: the rows of `/proc/PID/net/tcp` whose
    /// inode is one of the agent's descriptors.
    fn tcp_sockets(&self) -> Vec<TcpSocket> {
        let pid = self.child.id();
        let inodes: HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|fd| std::fs::read_link(fd.path()).ok())
            .filter_map(|link| {
                let link = link.to_str()?;
                Some(link.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
            })
            .collect();
        let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap_or_default();
        table
            .lines()
            .skip(1)
            .filter_map(|row| {
                // sl local_address rem_address st tx_queue:rx_queue tr:when retrnsmt uid timeout inode
                let f: Vec<&str> = row.split_whitespace().collect();
                if !inodes.contains(*f.get(9)?) {
                    return None;
                }
                let port = |a: &str| u16::from_str_radix(a.rsplit(':').next()?, 16).ok();
                Some(TcpSocket {
                    state: u8::from_str_radix(f[3], 16).ok()?,
                    local_port: port(f[1])?,
                    remote_port: port(f[2])?,
                    rx_queue: usize::from_str_radix(f[4].split(':').nth(1)?, 16).ok()?,
                })
            })
            .collect()
    }
}

/// Linux's TCP states as /proc/net/tcp numbers them.
const TCP_SYN_SENT: u8 = 0x02;
const TCP_LISTEN: u8 = 0x0A;

/// One row of /proc/net/tcp; for a listening socket `rx_queue` is its accept queue.
struct TcpSocket {
    state: u8,
    local_port: u16,
    remote_port: u16,
    rx_queue: usize,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[allow(unused_imports)] // not every test binary sends signals
pub use libc::{SIGHUP, SIGINT, SIGTERM};

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub head: String,
    pub body: String,
}

/// Sends raw bytes and reads the whole response (the request should ask for close).
pub fn request(addr: SocketAddr, raw: &str) -> Response {
    parse_response(&send(addr, raw.as_bytes()))
}

/// Sends `raw` on a new connection and returns all it reads back until the peer closes (or 5 s
/// of silence).
pub fn send(addr: SocketAddr, raw: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(raw).unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    buf
}

pub fn parse_response(buf: &[u8]) -> Response {
    let text = String::from_utf8_lossy(buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    Response {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    }
}

/// The value of the sample whose line starts with `series` (name and labels), if present.
pub fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

/// The series `name{node=..,route=..,listen_port=..,backend=..}` of one route's backend, as
/// the agent writes it (for label values that need no escaping).
pub fn series(name: &str, node: &str, route: &str, listen_port: u16, backend: &str) -> String {
    labelled(name, node, route, listen_port, backend, "")
}

/// The failure counter of one route's backend for `reason` (`refused`, `timeout`, `dns`, ...).
pub fn failures(node: &str, route: &str, listen_port: u16, backend: &str, reason: &str) -> String {
    let reason = format!(",reason=\"{reason}\"");
    labelled(
        "sigma_backend_probe_failures_total",
        node,
        route,
        listen_port,
        backend,
        &reason,
    )
}

/// As [`series`], with `more` (`,label="value"`) after the `backend` label.
pub fn labelled(
    name: &str,
    node: &str,
    route: &str,
    listen_port: u16,
    backend: &str,
    more: &str,
) -> String {
    format!("{name}{{node=\"{node}\",route=\"{route}\",listen_port=\"{listen_port}\",backend=\"{backend}\"{more}}}")
}

/// An MCP `tools/call` of `query_backend_health` with `arguments` (a JSON object), as one line.
pub fn health_call(arguments: &str) -> String {
    format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{{\"name\":\"query_backend_health\",\"arguments\":{arguments}}}}}\n"
    )
}

/// A temp file holding `text`; removed on drop.
pub struct TempFile {
    pub path: PathBuf,
}

impl TempFile {
    pub fn new(name: &str, text: &str) -> TempFile {
        let dir =
            std::env::temp_dir().join(format!("sigma-agent-lite-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        TempFile { path }
    }

    pub fn path(&self) -> &str {
        self.path.to_str().unwrap()
    }

    /// Replaces the content atomically (write + rename), as an editor or config tool does.
    pub fn replace(&self, text: &str) {
        let tmp = self.path.with_extension("new");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &self.path).unwrap();
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// An accepting listener on loopback: probes to it succeed.
pub fn accepting() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").unwrap()
}

/// A port on loopback nothing listens on: probes get `refused`.
pub fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A listener whose accept backlog is full: a new connect's SYN is dropped, so a probe to it
/// stays pending until its deadline (`timeout`). Keep the returned value alive.
pub struct Blackhole {
    pub listener: socket2::Socket,
    pub fillers: Vec<socket2::Socket>,
    pub port: u16,
}

pub fn blackhole() -> Blackhole {
    use socket2::{Domain, Socket, Type};
    let listener = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    listener.bind(&addr.into()).unwrap();
    listener.listen(0).unwrap();
    let port = listener.local_addr().unwrap().as_socket().unwrap().port();
    let target: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut fillers = Vec::new();
    // Connect until one does not complete: from then on the backlog is full.
    for _ in 0..8 {
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        let done = s
            .connect_timeout(&target.into(), Duration::from_millis(200))
            .is_ok();
        fillers.push(s);
        if !done {
            return Blackhole {
                listener,
                fillers,
                port,
            };
        }
    }
    panic!("could not fill the accept backlog of a loopback listener");
}

/// Limits the open files of the process `cmd` starts to `n` (RLIMIT_NOFILE soft limit).
pub fn limit_open_files(cmd: &mut Command, n: u64) {
    use std::os::unix::process::CommandExt;
    // SAFETY: only async-signal-safe calls (getrlimit, setrlimit) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let mut r = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            r.rlim_cur = n.min(r.rlim_max);
            if libc::setrlimit(libc::RLIMIT_NOFILE, &r) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

pub fn write_routes(name: &str, lines: &[String]) -> TempFile {
    TempFile::new(name, &(lines.join("\n") + "\n"))
}
