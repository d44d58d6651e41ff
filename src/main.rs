//! sigma-agent-lite: parse the command line, start logging, read the routes, run the loop.
//! Exit codes: 0 on SIGTERM/SIGINT, 1 on a runtime failure, 2 on a usage error.

use std::process::ExitCode;
use std::time::{Instant, SystemTime};

use sigma_agent_lite::config::{self, Command, Config, Env};
use sigma_agent_lite::event_loop::Agent;
use sigma_agent_lite::logging;
use sigma_agent_lite::snapshot::Snapshot;
use sigma_agent_lite::source::{FileSource, Refresh, RouteSource};

fn main() -> ExitCode {
    let command = match config::parse_args(lexopt::Parser::from_env(), Env::from_process()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let config = match command {
        Command::Help => {
            print!("{}", config::HELP);
            return ExitCode::SUCCESS;
        }
        Command::Version => {
            println!("{}", sigma_agent_lite::metrics::version_line());
            return ExitCode::SUCCESS;
        }
        Command::Run(c) => c,
    };
    // Logs must never block the one thread: see logging.rs.
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .target(env_logger::Target::Pipe(Box::new(logging::Stderr::new())))
        .init();
    match run(&config) {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, message)) => {
            eprintln!("error: {message}");
            ExitCode::from(code)
        }
    }
}

fn run(config: &Config) -> Result<(), (u8, String)> {
    if let Some(asked) = config.timeout_clamped_from {
        log::warn!(
            "--health-probe-timeout {:?} is above the 3s maximum; using 3s",
            asked
        );
    }
    let mut snapshot = Snapshot::new(config.health_probe, config.interval, SystemTime::now());
    let source = match (&config.routes_file, &config.database) {
        #[cfg(feature = "postgres")]
        (_, Some(db)) => {
            let mut pg = sigma_agent_lite::source_pg::PgSource::new(
                &db.url,
                &db.hostname,
                db.pgpassword.as_deref(),
            )
            .map_err(|e| (2, format!("{e}, --database-url")))?;
            if let Some(server) = config.dns_server {
                pg.set_resolver(sigma_agent_lite::dns::ResolverConfig::with_server(server));
            }
            pg.set_passfile(db.passfile.clone());
            // Unknown until a read finds this VPS (so that SigmaVpsNotRegistered can fire).
            snapshot.source.vps_registered = false;
            log::info!(
                "routes from database {} as host '{}'",
                pg.describe(),
                db.hostname
            );
            RouteSource::Pg(Box::new(pg))
        }
        (None, _) => RouteSource::None,
        (Some(path), _) => {
            let mut file = FileSource::new(path.clone());
            let started = Instant::now();
            match file.refresh(true, started, SystemTime::now()) {
                Refresh::Failed(message) | Refresh::NotRegistered(message) => {
                    return Err((2, format!("{message}, --routes-file")))
                }
                read => {
                    snapshot.apply(read, started.elapsed());
                }
            }
            RouteSource::File(file)
        }
    };
    let routes = snapshot.routes.len();
    let mut agent = Agent::new(config, source, snapshot).map_err(|e| (1, e.0))?;
    let mut listen = agent
        .http_addr()
        .map_or_else(|| "off".to_owned(), |a| a.to_string());
    if config.web.tls_cert.is_some() {
        listen.push_str(if config.web.client_ca.is_some() {
            " (TLS, client certificates required)"
        } else {
            " (TLS)"
        });
    }
    if config.web.token_file.is_some() {
        listen.push_str(" (bearer token for /metrics)");
    } else if config.web.tls_cert.is_none()
        && agent.http_addr().is_some_and(|a| !a.ip().is_loopback())
    {
        log::warn!(
            "/metrics on {listen} is served in clear without authentication and its labels name every backend; see --web-tls-cert and --web-auth-token-file"
        );
    }
    if let Some(mcp) = agent.mcp_addr() {
        if !mcp.ip().is_loopback() {
            log::warn!(
                "MCP listens on {mcp}, not loopback: whoever reaches it can read this host's backend health (no authentication)"
            );
        }
        listen = format!("{listen}; mcp {mcp}");
    }
    if config.mcp_stdio {
        listen.push_str("; mcp on stdio");
    }
    match (config.health_probe, &config.routes_file) {
        (false, _) => log::info!(
            "health probing is off (--health-probe not given): serving metrics only; {routes} routes known; http {listen}"
        ),
        (true, None) if config.database.is_some() => log::info!(
            "probing the database's routes every {:?} (timeout {:?}); http {listen}",
            config.interval,
            config.timeout
        ),
        (true, None) => log::warn!("health probing is on but no route source is given (--routes-file): nothing to probe; http {listen}"),
        (true, Some(_)) => log::info!(
            "probing {routes} routes every {:?} (timeout {:?}); http {listen}",
            config.interval,
            config.timeout
        ),
    }
    agent.run().map_err(|e| (1, e.0))
}
