//! The processes the harness starts (agents, the floor, blackbox_exporter): how they are
//! started (output to a log file in the work directory), stopped (SIGTERM, then SIGKILL; only
//! ever our own children) and what the agent is given (its command line, its routes file).

use std::fs;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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
pub struct Running(Child);

impl Running {
    pub fn start(cmd: &mut Command, log: &Path) -> Result<Running, String> {
        spawn(cmd, log).map(Running)
    }
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
    pub fn exited(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(Some(_)))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        stop(&mut self.0);
    }
}

/// The agent probing every `interval`, serving HTTP on `addr`, logging at info; its route
/// source is for the caller to add.
fn agent_base(agent: &Path, interval: &str, addr: SocketAddr) -> Command {
    let mut cmd = Command::new(agent);
    cmd.args(["--health-probe", "--health-probe-interval", interval])
        .args(["--metrics-listen", &addr.to_string()])
        .env("RUST_LOG", "info");
    cmd
}

/// The agent with a routes file.
pub fn agent_command(agent: &Path, routes: &Path, interval: &str, addr: SocketAddr) -> Command {
    let mut cmd = agent_base(agent, interval, addr);
    cmd.arg("--routes-file").arg(routes);
    cmd
}

/// The agent with the PostgreSQL source: `url`, the routes of VPS `hostname`. PGPASSWORD is
/// not passed on (the URL holds the password).
pub fn pg_agent_command(
    agent: &Path,
    url: &str,
    hostname: &str,
    interval: &str,
    addr: SocketAddr,
) -> Command {
    let mut cmd = agent_base(agent, interval, addr);
    cmd.args(["--database-url", url])
        .args(["--hostname", hostname])
        .env_remove("PGPASSWORD");
    cmd
}

/// A routes file with one route per port (backend 127.0.0.1:port, listen port i + 1).
pub fn write_routes(path: &Path, ports: &[u16]) -> io::Result<()> {
    let mut text = String::from("# benchkit: loopback listeners of the farm\n");
    for (i, port) in ports.iter().enumerate() {
        text.push_str(&format!(
            "bench tcp-proxy-{i:05} {} 127.0.0.1:{port}\n",
            i + 1
        ));
    }
    fs::write(path, text)
}
