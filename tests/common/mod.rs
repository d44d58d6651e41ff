//! Helpers for the tests that start the real binary and talk to it over loopback sockets.
//! Every address used here is on 127.0.0.1. Waits poll until a deadline, never sleep blindly.
#![allow(dead_code, unused_imports)]

pub mod dns_server;
pub mod envoy_admin;
#[cfg(feature = "postgres")]
pub mod pg;
#[cfg(feature = "tls")]
pub mod pg_tls;
pub mod web_pki;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_sigma-agent-lite");

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
        let log = agent.wait_log("; http 127.0.0.1:", Duration::from_secs(10));
        let at = log.find("; http 127.0.0.1:").unwrap() + "; http ".len();
        let addr: String = log[at..]
            .chars()
            .take_while(|c| !c.is_whitespace() && *c != ';')
            .collect();
        agent.http = addr.parse().expect("bound address in the log");
        agent
    }

    /// Waits until stderr contains `needle`; returns all of stderr.
    pub fn wait_log(&mut self, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let s = self.stderr.lock().unwrap().clone();
            if s.contains(needle) {
                return s;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("agent exited with {status} before logging {needle:?}; stderr:\n{s}");
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in stderr within {within:?}:\n{s}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
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
        let deadline = Instant::now() + within;
        loop {
            let m = self.metrics();
            if pred(&m) {
                return m;
            }
            assert!(
                Instant::now() < deadline,
                "condition not met within {within:?}; last scrape:\n{m}\nstderr:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill with a pid we own and a valid signal number.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, sig) }, 0);
    }

    /// Waits for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "agent still running after {within:?}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
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
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(raw.as_bytes()).unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    parse_response(&buf)
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
