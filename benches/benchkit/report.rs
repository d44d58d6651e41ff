//! The report: the side-by-side table, the agent-alone figures, each section's table (from
//! its own module), the targets with PASS/FAIL/SKIP, and every figure as JSON
//! (`BENCH_JSON`, by default `target/bench.json`), with the machine it ran on.

use std::fs;
use std::path::PathBuf;
use std::process::Command;

use serde_json::{json, Value};

use crate::alone::{
    Leak, Scrape, LEAK_INTERVAL, LEAK_RSS_SLACK_KIB, LEAK_SAMPLES, SCRAPE_BATCHES, SCRAPE_GAP,
    STARTS,
};
use crate::baseline::{baseline_report, Baseline};
use crate::faults::{faults_report, Faults};
use crate::measure::{median, num, prober_json, ratios, rounded, Window};
use crate::pg::{pg_report, PgOutcome};
use crate::procfs::kib_field;
use crate::{Settings, DEADLINE, INTERVAL};

/// A target: what it is, the figure measured, and whether it was met (None: not measured).
pub type Target = (String, String, Option<bool>);

/// One row of a text table: the first cell left-aligned, the others right-aligned, each in
/// its width, one space apart (as many cells as given: a row may end early).
pub fn table_row(widths: &[usize], cells: &[&str]) {
    let mut line = String::new();
    for (i, (cell, &w)) in cells.iter().zip(widths).enumerate() {
        if i == 0 {
            line.push_str(&format!("{cell:<w$}"));
        } else {
            line.push_str(&format!(" {cell:>w$}"));
        }
    }
    println!("{line}");
}

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
    let mem_total_kib = kib_field("/proc/meminfo", "MemTotal:");
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

#[allow(clippy::too_many_arguments)]
pub fn report(
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
    let widths = [28, 10, 10, 10, 12, 14];
    let row = |cells: &[&str]| table_row(&widths, cells);
    row(&[
        "",
        "agent",
        "floor",
        "blackbox",
        "agent/floor",
        "agent/blackbox",
    ]);
    // A figure of the three probers, formatted (n/a for one that did not run).
    let cells =
        |k: &str, fmt: &dyn Fn(f64) -> String| [&a, &f, &b].map(|v| cell(v, num(v, k), fmt));
    let [ca, cf, cb] = cells("cpu_us_per_probe", &us);
    row(&["CPU per probe (µs)", &ca, &cf, &cb, &ratio(af), &ratio(ab)]);
    let [ua, uf, ub] = cells("user_us_per_probe", &us);
    row(&["  user space, pooled (µs)", &ua, &uf, &ub]);
    let peak = |v: &Value| num(v, "peak_rss_kib");
    let (pf, pb) = (peak(&a) / peak(&f), peak(&a) / peak(&b));
    let [pa, pfl, pbb] = cells("peak_rss_kib", &mib);
    row(&[
        "peak RSS (MiB, VmHWM)",
        &pa,
        &pfl,
        &pbb,
        &ratio(pf),
        &ratio(pb),
    ]);
    let int = |v: &Value, k: &str| {
        v.get(k)
            .and_then(Value::as_u64)
            .map_or("n/a".into(), |x| x.to_string())
    };
    for (name, k) in [("threads", "threads"), ("open fds", "open_fds")] {
        row(&[name, &int(&a, k), &int(&f, k), &int(&b, k)]);
    }
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
        rounded(&af_runs),
        rounded(&ab_runs)
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
    let mut targets: Vec<Target> = vec![
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
            format!("{:.2} µs", num(&a, "cpu_us_per_probe")),
            Some(num(&a, "cpu_us_per_probe") <= 50.0),
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
