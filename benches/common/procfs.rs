//! What `/proc` says about another process (or a thread): CPU time (utime + stime, all
//! threads), peak and current RSS and their parts, threads, fds and epoll instances. Reads
//! that fail give `None` or 0: a process that has just exited has no figures.

use std::fs;

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// The fields of a `stat` file after the command name: `state` is 0, `ppid` 1, `utime` 11,
/// `stime` 12 (proc(5) numbers them from 3).
pub fn stat_fields(stat_path: &str) -> Option<Vec<String>> {
    let stat = fs::read_to_string(stat_path).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    Some(after.split_whitespace().map(str::to_owned).collect())
}

/// utime + stime of a process (all its threads) or a thread, in seconds, from a `stat` file.
pub fn cpu_seconds(stat_path: &str) -> Option<f64> {
    cpu_split(stat_path).map(|(u, s)| u + s)
}

/// (utime, stime) in seconds.
pub fn cpu_split(stat_path: &str) -> Option<(f64, f64)> {
    let fields = stat_fields(stat_path)?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let hz = clock_ticks_per_second();
    Some((utime as f64 / hz, stime as f64 / hz))
}

/// The number after `key` in a `key: value kB` file (`/proc/PID/status`, `/proc/meminfo`).
pub fn kib_field(path: &str, key: &str) -> Option<u64> {
    let text = fs::read_to_string(path).ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

fn status_kib(pid: u32, key: &str) -> Option<u64> {
    kib_field(&format!("/proc/{pid}/status"), key)
}

fn count_entries(dir: &str) -> Option<u64> {
    Some(fs::read_dir(dir).ok()?.count() as u64)
}

#[derive(Clone, Copy, Default)]
pub struct Footprint {
    pub peak_rss_kib: u64,
    pub rss_kib: u64,
    /// The parts of `rss_kib`: anonymous (heap, stacks) and file-backed (code, libraries).
    pub rss_anon_kib: u64,
    pub rss_file_kib: u64,
    pub threads: u64,
    pub fds: u64,
    /// epoll instances: fds that are `anon_inode:[eventpoll]` (the design: exactly one).
    pub epolls: u64,
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

pub fn footprint(pid: u32) -> Footprint {
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
