//! The agent with the PostgreSQL source, in the same rounds as the file source: the same
//! agent and targets, routes read from a database each cycle. The bench's rows (one vps, one
//! node, one route per farm listener) are inserted through the admin role and deleted again
//! at the end; the agent reads them as the read-only role. Each round: one CPU window (probing
//! only, as the file source's), then a few scrapes for the route fetch duration. Then this
//! section of the report: file source vs PostgreSQL source, its JSON and its targets.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::farm::{free_addr, Farm};
use crate::http::{sample, wait_http_ok};
use crate::measure::{measure, median, num, prober_json, ratios, rounded, Window};
use crate::process::{pg_agent_command, Running};
use crate::procfs::{footprint, Footprint};
use crate::report::{table_row, Target};
use crate::{Settings, INTERVAL, READY_TIMEOUT};

/// Hostname of the bench's `vps` row (`--hostname` of the agent). Its rows are replaced at the
/// start and deleted at the end, so on an external database it must not be a real host's.
const PG_HOSTNAME_DEFAULT: &str = "sigma-agent-lite-bench";
/// Node id of the bench's `envoy_nodes` row (the file source's node column is the same).
pub const PG_NODE: &str = "bench";
/// After the CPU window, the agent is scraped for this long, once per cycle, to read
/// `sigma_route_fetch_duration_seconds` (outside the window, so the CPU figure is the same
/// kind as the file source's: probing only).
const PG_SCRAPE_PHASE: Duration = Duration::from_secs(3);

/// Where the database figures come from: `BENCH_DATABASE_URL` (the agent's URL, a read-only
/// role) and `BENCH_DATABASE_ADMIN_URL` (a role that may write the three tables: the bench's
/// rows are inserted and removed through it), set by `scripts/bench.sh` for its throwaway
/// cluster or by the user for an external database. `BENCH_PG_SKIP` is why the script did not
/// start one; `BENCH_PG_ORIGIN` says what the database is.
pub struct PgSettings {
    pub agent_url: String,
    pub admin_url: String,
    pub hostname: String,
    pub origin: String,
}

impl PgSettings {
    pub fn from_env() -> Result<PgSettings, String> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let Some(agent_url) = var("BENCH_DATABASE_URL") else {
            return Err(var("BENCH_PG_SKIP").unwrap_or_else(|| "BENCH_DATABASE_URL not set".into()));
        };
        let Some(admin_url) = var("BENCH_DATABASE_ADMIN_URL") else {
            return Err("BENCH_DATABASE_URL is set but BENCH_DATABASE_ADMIN_URL is not (needed to insert the bench's vps, node and routes)".into());
        };
        // The agent's URL may carry settings the test client does not know (sslrootcert):
        // checked when it parses, and the agent resolves no names anyway for an IP literal.
        if let Ok(config) = agent_url.parse::<postgres::Config>() {
            check_loopback(&config).map_err(|e| format!("BENCH_DATABASE_URL: {e}"))?;
        }
        Ok(PgSettings {
            agent_url,
            admin_url,
            hostname: var("BENCH_PG_HOSTNAME").unwrap_or_else(|| PG_HOSTNAME_DEFAULT.into()),
            origin: var("BENCH_PG_ORIGIN")
                .unwrap_or_else(|| "external database (BENCH_DATABASE_URL)".into()),
        })
    }
}

/// The bench's rows in the database: one `vps`, one node, one route per farm listener
/// (backend 127.0.0.1:port, status active). Deleted again on drop.
pub struct PgRows {
    pub admin: postgres::Client,
    pub hostname: String,
    pub server_version: String,
}

/// The bench sends traffic to loopback only: a database URL must name a loopback IP address
/// (or a unix socket).
fn check_loopback(config: &postgres::Config) -> Result<(), String> {
    for host in config.get_hosts() {
        if let postgres::config::Host::Tcp(h) = host {
            let ip: Option<std::net::IpAddr> = h.trim_matches(['[', ']']).parse().ok();
            if !ip.is_some_and(|ip| ip.is_loopback()) {
                return Err(format!(
                    "database host {h:?} is not a loopback address; the bench connects to loopback only"
                ));
            }
        }
    }
    Ok(())
}

fn pg_connect(url: &str) -> Result<postgres::Client, String> {
    let mut config: postgres::Config = url
        .parse()
        .map_err(|e| format!("BENCH_DATABASE_ADMIN_URL: {e}"))?;
    config.connect_timeout(Duration::from_secs(5));
    check_loopback(&config)?;
    config
        .connect(postgres::NoTls)
        .map_err(|e| format!("cannot connect with BENCH_DATABASE_ADMIN_URL: {e}"))
}

fn pg_delete_rows(
    db: &mut impl postgres::GenericClient,
    hostname: &str,
) -> Result<(), postgres::Error> {
    db.execute(
        "DELETE FROM envoy_routes WHERE envoy_node_id IN (SELECT n.id FROM envoy_nodes n \
         JOIN vps v ON v.id = n.vps_id WHERE v.hostname = $1)",
        &[&hostname],
    )?;
    db.execute(
        "DELETE FROM envoy_nodes WHERE vps_id IN (SELECT id FROM vps WHERE hostname = $1)",
        &[&hostname],
    )?;
    db.execute("DELETE FROM vps WHERE hostname = $1", &[&hostname])?;
    Ok(())
}

impl PgRows {
    pub fn insert(pg: &PgSettings, ports: &[u16]) -> Result<PgRows, String> {
        let mut admin = pg_connect(&pg.admin_url)?;
        let server_version: String = admin
            .query_one("SHOW server_version", &[])
            .map(|r| r.get(0))
            .map_err(|e| e.to_string())?;
        let ports: Vec<i32> = ports.iter().map(|&p| i32::from(p)).collect();
        let mut tx = admin.transaction().map_err(|e| e.to_string())?;
        pg_delete_rows(&mut tx, &pg.hostname)
            .map_err(|e| format!("removing old bench rows: {e}"))?;
        let vps: String = tx
            .query_one(
                "INSERT INTO vps (id, hostname, status, ip_addresses, extra) \
                 VALUES (gen_random_uuid(), $1, 'active', ARRAY['127.0.0.1'::inet], '{}') RETURNING id::text",
                &[&pg.hostname],
            )
            .map_err(|e| format!("inserting the vps row: {e}"))?
            .get(0);
        let node: String = tx
            .query_one(
                "INSERT INTO envoy_nodes (id, vps_id, node_id, admin_port, description, config_version, status) \
                 VALUES (gen_random_uuid(), $1::text::uuid, $2, 9901, 'sigma-agent-lite bench', 1, 'active') RETURNING id::text",
                &[&vps, &PG_NODE],
            )
            .map_err(|e| format!("inserting the node row: {e}"))?
            .get(0);
        // The same routes as the file source's: tcp-proxy-NNNNN, listen port i + 1.
        let inserted = tx
            .execute(
                "INSERT INTO envoy_routes (id, envoy_node_id, name, listen_port, backend_host, backend_port, \
                   cluster_type, connect_timeout_secs, proxy_protocol, status, source) \
                 SELECT gen_random_uuid(), $1::text::uuid, 'tcp-proxy-' || lpad((i - 1)::text, 5, '0'), i, \
                   '127.0.0.1', ($2::int4[])[i], 'static', 5, 0, 'active', 'dynamic' \
                 FROM generate_series(1, cardinality($2::int4[])) AS i",
                &[&node, &ports],
            )
            .map_err(|e| format!("inserting the routes: {e}"))?;
        tx.commit().map_err(|e| e.to_string())?;
        if inserted != ports.len() as u64 {
            return Err(format!(
                "inserted {inserted} routes, expected {}",
                ports.len()
            ));
        }
        Ok(PgRows {
            admin,
            hostname: pg.hostname.clone(),
            server_version,
        })
    }
}

impl Drop for PgRows {
    fn drop(&mut self) {
        if let Err(e) = pg_delete_rows(&mut self.admin, &self.hostname) {
            eprintln!(
                "warning: could not remove the bench's rows ({}): {e}",
                self.hostname
            );
        }
    }
}

/// One round of the agent with the PostgreSQL source.
#[derive(Clone, Default)]
pub struct PgRound {
    pub window: Window,
    /// `sigma_route_fetch_duration_seconds`, one per cycle seen in the scrape phase.
    pub fetch_s: Vec<f64>,
    /// Footprint after the scrape phase: probing and scraped.
    pub scraped: Footprint,
    pub source_errors: f64,
}

/// The agent with `--database-url` over the farm: one CPU window (probing only, as the file
/// source's), then [`PG_SCRAPE_PHASE`] of scrapes once per cycle for the fetch duration.
pub fn pg_round(
    s: &Settings,
    agent: &Path,
    pg: &PgSettings,
    farm: &Farm,
) -> Result<PgRound, String> {
    let addr = free_addr()?;
    let log = s.work.join("agent-pg.log");
    let mut child = Running::start(
        &mut pg_agent_command(agent, &pg.agent_url, &pg.hostname, "1", addr),
        &log,
    )?;
    let window = measure(
        farm,
        child.pid(),
        s.window,
        "agent (PostgreSQL source)",
        None,
    )
    .map_err(|e| format!("{e} (see {})", log.display()))?;
    if child.exited() {
        return Err(format!("the agent exited (see {})", log.display()));
    }
    let mut client = wait_http_ok(addr, "/healthz", READY_TIMEOUT)?;
    let mut fetch_s = Vec::new();
    let mut last_cycle = -1.0;
    let mut source_errors;
    let until = Instant::now() + PG_SCRAPE_PHASE;
    loop {
        let (status, body) = client.get("/metrics").map_err(|e| format!("scrape: {e}"))?;
        if status != 200 {
            return Err(format!("scrape: status {status}"));
        }
        let get = |name: &str| sample(body, name);
        if get("sigma_route_source_up") != Some(1.0) || get("sigma_vps_registered") != Some(1.0) {
            return Err(format!(
                "the database source is not up or the VPS not registered (see {})",
                log.display()
            ));
        }
        if get("sigma_routes") != Some(farm.ports.len() as f64) {
            return Err(format!(
                "the agent knows {:?} routes, expected {}",
                get("sigma_routes"),
                farm.ports.len()
            ));
        }
        source_errors = get("sigma_route_source_errors_total").unwrap_or(0.0);
        let cycle = get("sigma_probe_cycles_total").unwrap_or(0.0);
        if cycle != last_cycle {
            last_cycle = cycle;
            if let Some(f) = get("sigma_route_fetch_duration_seconds") {
                fetch_s.push(f);
            }
        }
        if Instant::now() >= until {
            break;
        }
        std::thread::sleep(INTERVAL.min(until.saturating_duration_since(Instant::now())));
    }
    Ok(PgRound {
        window,
        fetch_s,
        scraped: footprint(child.pid()),
        source_errors,
    })
}

/// What the PostgreSQL part found (or why it did not run).
pub enum PgOutcome {
    Skipped(String),
    Failed {
        origin: String,
        error: String,
        rounds: Vec<PgRound>,
    },
    Measured {
        origin: String,
        hostname: String,
        server_version: String,
        rounds: Vec<PgRound>,
    },
}

/// The PostgreSQL section of the report: a table file source vs PostgreSQL source (same
/// rounds, same targets), its JSON, and its targets.
pub fn pg_report(s: &Settings, file: &[Window], pg: &PgOutcome) -> (Value, Vec<Target>) {
    let rss_name = format!("peak RSS, {} routes, PostgreSQL source ≤ 4 MiB", s.routes);
    let threads_name = "threads with the PostgreSQL source: 1".to_owned();
    let epolls_name = "epoll instances with the PostgreSQL source: 1".to_owned();
    let (origin, rounds, error, extra) = match pg {
        PgOutcome::Skipped(why) => {
            println!();
            println!("== PostgreSQL source: skipped ({why}) ==");
            return (
                json!({"status": "skipped", "reason": why}),
                vec![
                    (rss_name, format!("not measured: {why}"), None),
                    (threads_name, "not measured".into(), None),
                    (epolls_name, "not measured".into(), None),
                ],
            );
        }
        PgOutcome::Failed {
            origin,
            error,
            rounds,
        } => (origin, rounds, Some(error), json!({})),
        PgOutcome::Measured {
            origin,
            hostname,
            server_version,
            rounds,
        } => (
            origin,
            rounds,
            None,
            json!({"hostname": hostname, "node": PG_NODE, "server_version": server_version}),
        ),
    };
    let windows: Vec<Window> = rounds.iter().map(|r| r.window).collect();
    let fetch_ms: Vec<f64> = rounds
        .iter()
        .flat_map(|r| r.fetch_s.iter().map(|x| x * 1e3))
        .collect();
    let fetch_med = median(&fetch_ms);
    let fetch_max = fetch_ms.iter().copied().fold(f64::NAN, f64::max);
    let scraped_peak = rounds
        .iter()
        .map(|r| r.scraped.peak_rss_kib)
        .max()
        .unwrap_or(0);
    let threads = rounds
        .iter()
        .flat_map(|r| [r.window.foot.threads, r.scraped.threads])
        .max();
    let epolls = rounds
        .iter()
        .flat_map(|r| [r.window.foot.epolls, r.scraped.epolls])
        .max();
    let (f, p) = (prober_json(file), prober_json(&windows));
    let (cpu_ratio, cpu_ratio_runs) = ratios(&windows, file);
    let peak = num(&p, "peak_rss_kib");
    let peak_max = num(&p, "peak_rss_kib_max");

    println!();
    println!(
        "== PostgreSQL source: the same {} targets, routes read each cycle from {}; {} of {} rounds ==",
        s.routes,
        origin,
        rounds.len(),
        s.rounds
    );
    if let Some(e) = error {
        println!("FAILED: {e}");
    }
    if !rounds.is_empty() {
        let two = |x: f64| format!("{x:.2}");
        let mib = |x: f64| format!("{:.2}", x / 1024.0);
        let int = |v: &Value, k: &str| v[k].as_u64().map_or("n/a".into(), |x| x.to_string());
        let row = |cells: &[&str]| table_row(&[34, 10, 12, 10], cells);
        row(&["", "file", "PostgreSQL", "pg/file"]);
        row(&[
            "CPU per probe (µs)",
            &two(num(&f, "cpu_us_per_probe")),
            &two(num(&p, "cpu_us_per_probe")),
            &two(cpu_ratio),
        ]);
        row(&[
            "  user space, pooled (µs)",
            &two(num(&f, "user_us_per_probe")),
            &two(num(&p, "user_us_per_probe")),
        ]);
        row(&[
            "peak RSS (MiB, VmHWM)",
            &mib(num(&f, "peak_rss_kib")),
            &mib(peak),
            &two(peak / num(&f, "peak_rss_kib")),
        ]);
        row(&[
            "  probing + scraped, max (MiB)",
            "",
            &mib(scraped_peak as f64),
        ]);
        for (name, k) in [
            ("RSS (MiB, VmRSS)", "rss_kib"),
            ("  anonymous (heap, stacks)", "rss_anon_kib"),
            ("  file-backed (code, libraries)", "rss_file_kib"),
        ] {
            row(&[name, &mib(num(&f, k)), &mib(num(&p, k))]);
        }
        let threads = threads.map_or("n/a".into(), |t| t.to_string());
        row(&["threads", &int(&f, "threads"), &threads]);
        for (name, k) in [
            ("open fds", "open_fds"),
            ("epoll instances", "epoll_instances"),
        ] {
            row(&[name, &int(&f, k), &int(&p, k)]);
        }
        let fetch = format!("{fetch_med:.2} / {fetch_max:.2}");
        row(&["route fetch (ms), median / max", "", &fetch]);
        println!(
            "(route fetch: sigma_route_fetch_duration_seconds of {} cycles, scraped once per cycle for {:?} after each window; the database server's own CPU is not counted)",
            fetch_ms.len(),
            PG_SCRAPE_PHASE
        );
        println!(
            "per-round ratios pg/file CPU: {:?}",
            rounded(&cpu_ratio_runs)
        );
    }

    let measured = !rounds.is_empty() && error.is_none();
    let targets = vec![
        (
            rss_name,
            if measured {
                format!(
                    "{:.2} MiB probing (max {:.2}); {:.2} MiB probing + scraped",
                    peak / 1024.0,
                    peak_max / 1024.0,
                    scraped_peak as f64 / 1024.0
                )
            } else {
                format!("failed: {}", error.map_or("no rounds", |e| e.as_str()))
            },
            Some(measured && peak_max <= 4.0 * 1024.0 && scraped_peak <= 4 * 1024),
        ),
        (
            threads_name,
            threads.map_or("not measured".into(), |t| t.to_string()),
            Some(measured && threads == Some(1)),
        ),
        (
            epolls_name,
            epolls.map_or("not measured".into(), |t| t.to_string()),
            Some(measured && epolls == Some(1)),
        ),
    ];
    let mut out = json!({
        "status": if measured { "measured" } else { "failed" },
        "error": error,
        "database": origin,
        "routes": s.routes,
        "agent": p,
        "agent_over_file_cpu": cpu_ratio,
        "agent_over_file_cpu_runs": cpu_ratio_runs,
        "agent_over_file_peak_rss": peak / num(&f, "peak_rss_kib"),
        "peak_rss_scraped_kib_max": scraped_peak,
        "threads": threads,
        "epoll_instances": epolls,
        "route_fetch_duration_ms": {
            "median": fetch_med,
            "max": fetch_max,
            "samples": fetch_ms,
            "source": "sigma_route_fetch_duration_seconds, one scrape per cycle after each CPU window",
        },
        "source_errors_total": rounds.iter().map(|r| r.source_errors).collect::<Vec<_>>(),
    });
    if let (Value::Object(o), Value::Object(e)) = (&mut out, extra) {
        o.extend(e);
    }
    (out, targets)
}
