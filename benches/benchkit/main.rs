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
//! - **floor**: `benches/floor.rs`, a bare mio connect loop (the kernel's own cost);
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
//!
//! Built as a Cargo example from `benches/` (see Cargo.toml: run with arguments by the script,
//! in the release profile like the agent). The files, one concern each: `farm.rs` (the
//! targets), `helper.rs` (the harness's threads), `process.rs` (starting and stopping what is
//! measured), `../common/procfs.rs` (what /proc says about it), `http.rs` (a keep-alive
//! client), `measure.rs` (the CPU window and the statistics), `blackbox.rs`, `pg.rs`,
//! `faults.rs` with `fault_servers.rs`, `baseline.rs` and `alone.rs` (one section each, with
//! its part of the report), `report.rs` (the tables, the targets, the JSON), and this file
//! (the settings and the order of the rounds).

mod alone;
mod baseline;
mod blackbox;
mod farm;
mod fault_servers;
mod faults;
mod helper;
mod http;
mod measure;
#[path = "../common/pace.rs"]
mod pace;
mod pg;
mod process;
#[path = "../common/procfs.rs"]
mod procfs;
mod report;

use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use baseline::Baseline;
use farm::{blackhole, free_addr, Farm};
use faults::{pg_faults, FAULT_WINDOW};
use measure::{measure_command, Window};
use pg::{pg_round, PgOutcome, PgRows, PgSettings};
use process::{agent_command, write_routes};

/// Probe interval of all three probers in the CPU windows (the brief's `--health-probe-interval 1`).
const INTERVAL: Duration = Duration::from_secs(1);
/// Per-probe deadline of all three.
const DEADLINE: Duration = Duration::from_secs(3);
/// Longest anything here waits for a process to become ready or finish a cycle.
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// The harness's threads (the farm, the blackbox driver, the relay, the name server) stop by
/// themselves after this, whatever happens.
const HELPER_LIFETIME: Duration = Duration::from_secs(600);

pub struct Settings {
    pub agent: PathBuf,
    pub floor: PathBuf,
    pub work: PathBuf,
    pub routes: usize,
    pub window: Duration,
    pub rounds: usize,
    pub blackbox: Option<PathBuf>,
    /// Another agent binary (e.g. an older build) measured in the same rounds, file and
    /// database source, next to the agent (`BENCH_BASELINE_AGENT`).
    pub baseline: Option<PathBuf>,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A path from the environment; unset or empty is none.
fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var(name)
        .ok()
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
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
        blackbox: env_path("BENCH_BLACKBOX"),
        baseline: env_path("BENCH_BASELINE_AGENT"),
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
    let bb_config = blackbox::write_config(&s.work)?;
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
    let agent_on_file = |bin: &std::path::Path, log: &str, what: &str| {
        let cmd = &mut agent_command(bin, &routes_file, "1", free_addr()?);
        measure_command(&s, &farm, cmd, log, what)
    };
    for round in 1..=s.rounds {
        let a = agent_on_file(&s.agent, "agent.log", "agent")?;
        println!(
            "round {round}: agent    {:>7.2} µs/probe ({} probes, {:.2} s CPU, {:.2} s of it user)",
            a.us_per_probe(),
            a.probes,
            a.cpu_s,
            a.user_s
        );
        agent_w.push(a);

        if let Some(bin) = &s.baseline {
            let w = agent_on_file(bin, "baseline.log", "baseline agent")?;
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
            measure_command(&s, &farm, &mut cmd, "floor.log", "floor")?
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
            let b = blackbox::round(&s, bin, &bb_config, &farm)?;
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

    let scrape = alone::scrape_latency(&s, &farm, &hole)?;
    let starts = alone::exec_to_first_200(&s, &routes_file)?;
    let leak = alone::cycles_10_vs_100(&s, &farm)?;
    report::report(
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
