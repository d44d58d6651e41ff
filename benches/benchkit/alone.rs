//! The agent measured alone, after the side-by-side rounds: scrape latency while a probe is
//! pending, exec → first 200 on /healthz, and RSS and fds after 100 cycles vs after 10.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::farm::{free_addr, Blackhole, Farm};
use crate::http::{sample, wait_http_ok, Client};
use crate::measure::{median, percentile};
use crate::process::{agent_command, write_routes, Running};
use crate::procfs::footprint;
use crate::{Settings, READY_TIMEOUT};

/// Batches of scrapes in the scrape-latency run (the median batch is reported), scrapes per
/// batch (5 s each: every batch spans a whole cycle, fast probes and the pending one), and
/// the gap between scrapes.
pub const SCRAPE_BATCHES: usize = 3;
pub const SCRAPES: usize = 250;
pub const SCRAPE_GAP: Duration = Duration::from_millis(20);
/// Runs of the exec → first 200 measurement.
pub const STARTS: usize = 7;
/// Cycle interval of the 10-vs-100-cycles run (the agent's minimum), so it takes ~10 s.
pub const LEAK_INTERVAL: &str = "100ms";
/// RSS growth from cycle 10 to cycle 100 still counted as "no growth": allocator noise.
pub const LEAK_RSS_SLACK_KIB: u64 = 64;
/// Footprint reads at cycle 10 and at cycle 100 (see `settled`).
pub const LEAK_SAMPLES: usize = 40;

pub struct Scrape {
    /// p99 of the scrapes that overlapped no connect of the N fast probes (only the pending
    /// one), and the latencies of those that did, all batches together.
    pub quiet_p99_ms: f64,
    pub burst_ms: Vec<f64>,
    /// Medians over the batches of each batch's p50 and p99.
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p99_runs: Vec<f64>,
    pub max_ms: f64,
    pub count: usize,
    pub body_kib: usize,
    pub cycle_duration_s: f64,
    pub threads: u64,
    /// VmHWM of the scraped agent: probing and serving /metrics.
    pub peak_rss_kib: u64,
}

/// Scrape latency while probing: the agent over the N targets plus the full-backlog one (so a
/// probe is pending for ~3 s of every cycle, and the N fast probes run between), scraped
/// every 20 ms over a keep-alive connection, as Prometheus does.
pub fn scrape_latency(s: &Settings, farm: &Farm, hole: &Blackhole) -> Result<Scrape, String> {
    let mut ports = farm.ports.clone();
    ports.push(hole.port);
    let file = s.work.join("routes-pending");
    write_routes(&file, &ports).map_err(|e| e.to_string())?;
    let addr = free_addr()?;
    let cmd = &mut agent_command(&s.agent, &file, "1", addr);
    let before = farm.accepted();
    let child = Running::start(cmd, &s.work.join("agent-scrape.log"))?;
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
pub fn exec_to_first_200(s: &Settings, routes: &Path) -> Result<Vec<f64>, String> {
    let mut times = Vec::new();
    for _ in 0..STARTS {
        let addr = free_addr()?;
        let cmd = &mut agent_command(&s.agent, routes, "1", addr);
        let t0 = Instant::now();
        let mut child = Running::start(cmd, &s.work.join("agent-start.log"))?;
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

pub struct Leak {
    pub at10: Settled,
    pub at100: Settled,
    pub routes: usize,
}

/// Footprint figures sampled for a moment: a probe socket is open for part of every cycle,
/// so a single read of the fd count is one higher or not by chance. The fewest fds seen is
/// the agent's settled count (a leak raises it); RSS is the most seen.
#[derive(Clone, Copy, Default)]
pub struct Settled {
    pub fds_min: u64,
    pub fds_max: u64,
    pub rss_kib: u64,
    pub threads: u64,
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
pub fn cycles_10_vs_100(s: &Settings, farm: &Farm) -> Result<Leak, String> {
    let closed = free_addr()?.port();
    let mut ports = farm.ports.clone();
    ports.push(closed);
    let file = s.work.join("routes-leak");
    write_routes(&file, &ports).map_err(|e| e.to_string())?;
    let addr = free_addr()?;
    let cmd = &mut agent_command(&s.agent, &file, LEAK_INTERVAL, addr);
    let child = Running::start(cmd, &s.work.join("agent-leak.log"))?;
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
