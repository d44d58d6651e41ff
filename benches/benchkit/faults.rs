//! Database faults: the agent with the PostgreSQL source while its database misbehaves (a
//! silent server, the server SIGSTOPped, `envoy_routes` locked, the database host's name
//! server silent), after a reference run with no fault. Each fault gets a fresh agent (1 s
//! cycle, the same N routes); once it has read its routes, the fault starts and /metrics and
//! /healthz are scraped every [`FAULT_SCRAPE_GAP`] for [`FAULT_WINDOW`], then the fault is
//! lifted and the agent gets [`FAULT_RECOVERY_WAIT`] to read its database again. Then this
//! section of the report: a table, its JSON and its targets. They stop and lock the database:
//! `main` runs them on the script's throwaway cluster only, unless asked.

use std::fs;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::farm::{free_addr, Farm};
use crate::fault_servers::{NameServer, Relay};
use crate::http::{sample, wait_http_ok, Client};
use crate::measure::percentile;
use crate::pg::{PgRows, PgSettings};
use crate::process::{pg_agent_command, Running};
use crate::procfs::stat_fields;
use crate::report::{table_row, Target};
use crate::{Settings, INTERVAL, READY_TIMEOUT};

/// Length of each fault's window, scraped throughout.
pub const FAULT_WINDOW: Duration = Duration::from_secs(10);
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
pub const FAULT_DB_NAME: &str = "db.sigma-bench.test";
/// The agent caches an answer at least 5 s (`dns::MIN_TTL`): the connection is cut this long
/// after the last answer, so that the reconnect has to ask the (by then silent) name server.
const DNS_CACHE_WAIT: Duration = Duration::from_millis(5_500);
/// `application_name` of the fault agents, to find their server processes.
const FAULT_APP_NAME: &str = "sigma-bench-fault";

#[derive(Clone, Copy, PartialEq)]
pub enum Fault {
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
pub type Faults = (Vec<(Fault, Result<FaultRun, String>)>, f64);

/// One fault's figures.
#[derive(Default)]
pub struct FaultRun {
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
    let ppid: i32 = stat_fields(&format!("/proc/{pid}/stat"))?
        .get(1)?
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
pub fn pg_faults(s: &Settings, pg: &PgSettings, rows: &mut PgRows, farm: &Farm) -> Faults {
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
    let addr = free_addr()?;
    let log = s.work.join(format!("agent-fault-{}.log", fault.key()));
    let mut cmd = pg_agent_command(&s.agent, &url, &pg.hostname, "1", addr);
    // Every fault agent gets the bench's name server: no name it resolves leaves loopback.
    cmd.args(["--dns-server", &ns.addr.to_string()]);
    let mut child = Running::start(&mut cmd, &log)?;
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
    let (probes0, (queries0, unanswered0)) = (farm.accepted(), ns.counts());
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
        let (queries1, unanswered1) = ns.counts();
        run.detail = format!(
            "the name server got {} queries in the window, left {} unanswered",
            queries1 - queries0,
            unanswered1 - unanswered0
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
pub fn faults_report(s: &Settings, faults: &Option<Faults>) -> (Value, Vec<Target>) {
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
    let widths = [26, 8, 8, 8, 8, 7, 7, 9, 9, 10];
    table_row(
        &widths,
        &[
            "fault",
            "scrapes",
            "p50 ms",
            "p99 ms",
            "max ms",
            "failed",
            "cycles",
            "max gap",
            "source 0",
            "recovered",
        ],
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
        let ms = |x: f64| format!("{x:.2}");
        let recovered = match (fault, r.recovered_s) {
            (Fault::Reference, _) => "n/a".into(),
            (_, Some(t)) => format!("{t:.2} s"),
            (_, None) => "no".into(),
        };
        table_row(
            &widths,
            &[
                fault.label(),
                &r.scrapes_ms.len().to_string(),
                &ms(r.p(50.0)),
                &ms(r.p(99.0)),
                &ms(r.max()),
                &r.failed.to_string(),
                &cycles.to_string(),
                &format!("{:.2} s", r.cycle_gap_s),
                if r.source_down_seen { "yes" } else { "no" },
                &recovered,
            ],
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
