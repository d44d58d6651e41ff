//! Prometheus' blackbox_exporter as the third prober: its `tcp_connect` module, driven
//! through `/probe` by a thread here (the driver) that keeps the agent's schedule over one
//! keep-alive connection. The driver's CPU is read from its own thread's `stat` and reported
//! apart: it is not charged to blackbox (in production that is Prometheus's work).

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::farm::{free_addr, Farm};
use crate::helper::Helper;
use crate::http::{sample, wait_http_ok, Client};
use crate::measure::{measure, Window};
use crate::pace::next_cycle;
use crate::process::Running;
use crate::procfs::cpu_seconds;
use crate::{Settings, INTERVAL, READY_TIMEOUT};

/// The exporter's configuration: a TCP connect over IPv4, the same 3 s deadline as the others.
const CONFIG: &str = "modules:\n  tcp_connect:\n    prober: tcp\n    timeout: 3s\n    tcp:\n      preferred_ip_protocol: ip4\n      ip_protocol_fallback: false\n";

/// Writes the exporter's configuration into the work directory; its path.
pub fn write_config(work: &Path) -> Result<PathBuf, String> {
    let path = work.join("blackbox.yml");
    fs::write(&path, CONFIG).map_err(|e| e.to_string())?;
    Ok(path)
}

/// One round of blackbox_exporter (`bin`) over the farm, driven through `/probe`.
pub fn round(s: &Settings, bin: &Path, config: &Path, farm: &Farm) -> Result<Window, String> {
    let addr = free_addr()?;
    let mut cmd = Command::new(bin);
    cmd.arg(format!("--config.file={}", config.display()))
        .arg(format!("--web.listen-address={addr}"))
        .arg("--log.level=warn");
    let child = Running::start(&mut cmd, &s.work.join("blackbox.log"))?;
    wait_http_ok(addr, "/metrics", READY_TIMEOUT)?;
    let driver = Driver::start(addr, farm.ports.clone())?;
    measure(farm, child.pid(), s.window, "blackbox", Some(&driver))
}

/// The driver: probes the targets one after another through /probe, a cycle every interval.
pub struct Driver {
    tid: u32,
    ok: Arc<AtomicU64>,
    _thread: Helper,
}

impl Driver {
    fn start(blackbox: SocketAddr, ports: Vec<u16>) -> Result<Driver, String> {
        let mut client = Client::connect(blackbox).map_err(|e| e.to_string())?;
        let ok = Arc::new(AtomicU64::new(0));
        let good = ok.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = Helper::spawn(move |alive| {
            // SAFETY: gettid has no preconditions.
            let tid = unsafe { libc::syscall(libc::SYS_gettid) } as u32;
            let _ = tx.send(tid);
            let mut cycle = Instant::now();
            while alive.running() {
                for port in &ports {
                    if alive.stopped() {
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
                next_cycle(&mut cycle, INTERVAL);
            }
        });
        let tid = rx
            .recv_timeout(Duration::from_secs(5))
            .map_err(|_| "blackbox driver did not start".to_owned())?;
        Ok(Driver {
            tid,
            ok,
            _thread: thread,
        })
    }

    /// CPU seconds of the driver's thread so far.
    pub fn cpu_seconds(&self) -> f64 {
        cpu_seconds(&format!("/proc/self/task/{}/stat", self.tid)).unwrap_or(0.0)
    }

    /// Probes blackbox answered `probe_success 1` for so far.
    pub fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }
}
