//! The CPU window every prober is measured over, and the statistics of the rounds: CPU per
//! probe = (utime + stime from `/proc/PID/stat`, all threads) ÷ connections the farm accepted
//! in the window; the footprint at its end; medians, percentiles, per-round ratios, and a
//! prober's rounds as JSON.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::blackbox::Driver;
use crate::farm::Farm;
use crate::process::Running;
use crate::procfs::{cpu_split, footprint, Footprint};
use crate::Settings;

/// One prober over one window.
#[derive(Clone, Copy, Default)]
pub struct Window {
    pub cpu_s: f64,
    /// The user-space part of `cpu_s` (the rest is the kernel's, on the prober's behalf).
    pub user_s: f64,
    pub probes: u64,
    pub wall_s: f64,
    /// CPU of the blackbox driver thread (not charged to blackbox).
    pub driver_cpu_s: f64,
    /// Probes blackbox reported `probe_success 1` for.
    pub driver_ok: u64,
    pub foot: Footprint,
}

impl Window {
    pub fn us_per_probe(&self) -> f64 {
        if self.probes == 0 {
            f64::NAN
        } else {
            self.cpu_s * 1e6 / self.probes as f64
        }
    }
}

/// Starts `cmd` (its output to `log` in the work directory), measures it over one window,
/// and stops it.
pub fn measure_command(
    s: &Settings,
    farm: &Farm,
    cmd: &mut Command,
    log: &str,
    what: &str,
) -> Result<Window, String> {
    let child = Running::start(cmd, &s.work.join(log))?;
    measure(farm, child.pid(), s.window, what, None)
}

/// Measures `pid` over `window` once its first full cycle has arrived at the farm.
pub fn measure(
    farm: &Farm,
    pid: u32,
    window: Duration,
    what: &str,
    driver: Option<&Driver>,
) -> Result<Window, String> {
    farm.wait_for(farm.accepted(), farm.ports.len() as u64, what)?;
    let stat = format!("/proc/{pid}/stat");
    let read = || cpu_split(&stat).ok_or_else(|| format!("{what}: cannot read {stat}"));
    // (CPU, probes accepted, driver CPU, driver successes, when), at each end of the window.
    let reading = || -> Result<_, String> {
        Ok((
            read()?,
            farm.accepted(),
            driver.map_or(0.0, Driver::cpu_seconds),
            driver.map_or(0, Driver::ok),
            Instant::now(),
        ))
    };
    let (c0, a0, d0, k0, t0) = reading()?;
    std::thread::sleep(window);
    let (c1, a1, d1, k1, t1) = reading()?;
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

/// The `p`th percentile (nearest rank) of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The median of the finite values.
pub fn median(values: &[f64]) -> f64 {
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

/// One prober's rounds as JSON: medians, and the figures of every round.
pub fn prober_json(w: &[Window]) -> Value {
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

/// A figure of [`prober_json`]'s output (NaN where there is none).
pub fn num(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or(f64::NAN)
}

/// Per-round ratios of CPU per probe (same round, same targets), and their median.
pub fn ratios(a: &[Window], b: &[Window]) -> (f64, Vec<f64>) {
    let r: Vec<f64> = a
        .iter()
        .zip(b)
        .map(|(x, y)| x.us_per_probe() / y.us_per_probe())
        .collect();
    (median(&r), r)
}

/// Values rounded to two decimals, for a line of per-round figures.
pub fn rounded(values: &[f64]) -> Vec<f64> {
    values.iter().map(|x| (x * 100.0).round() / 100.0).collect()
}
