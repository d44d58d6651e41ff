//! Command line and environment: what the agent is asked to do, validated once at start.
//!
//! lexopt's own `parse_args` shape: defaults as locals, one `match` per flag, and the
//! environment fallbacks resolved in one place ([`Env`]) after the loop, so tests pass a
//! made-up environment. Every error names the flag (or variable), the value and what would be
//! valid; `main` prints it and exits 2.

use std::ffi::OsString;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::web_tls::WebSecurityConfig;

/// The seed's `MAX_PROBE_TIMEOUT_SECS`: no probe waits longer, whatever is asked, so one stuck
/// backend can never stall the cycle for long.
pub const MAX_PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// Shortest probe deadline accepted. The loop's timer has millisecond resolution and one turn
/// of it (a scrape of 10,000 routes renders in a few ms) can delay noticing a connect: a
/// deadline shorter than that measures the agent, not the backend, and reported backends "up"
/// with a latency above their own deadline.
pub const MIN_PROBE_TIMEOUT: Duration = Duration::from_millis(10);
/// Below this the agent would spend its one core on starting cycles.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);
/// Longest interval accepted (a day): longer is surely a typo, and keeps deadline math far
/// from overflow.
pub const MAX_INTERVAL: Duration = Duration::from_secs(86_400);
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
pub const DEFAULT_METRICS_LISTEN: &str = "0.0.0.0:9102";

pub const HELP: &str = "\
sigma-agent-lite: TCP-probes the backends of this host's Envoy L4 routes and reports which
it cannot reach, on Prometheus /metrics and through an MCP tool.

USAGE:
    sigma-agent-lite [OPTIONS]

OPTIONS (each has an environment fallback; the flag wins):
    --health-probe                    Probe the routes' backends. Without it the agent serves
                                      /metrics but probes nothing.
                                      env AGENT_HEALTH_PROBE (1/true/0/false), default off
    --health-probe-interval D         Time between probe-cycle starts: 30, 30s, 1.5, 500ms, 2m
                                      (minimum 100ms). env AGENT_HEALTH_PROBE_INTERVAL, default 30s
    --health-probe-timeout D          Per-probe deadline (name lookup + connect), at least 10ms;
                                      above 3s it is clamped to 3s.
                                      env AGENT_HEALTH_PROBE_TIMEOUT, default 3s
    --routes-file PATH                Routes to probe, one per line:
                                      NODE ROUTE LISTEN_PORT HOST:PORT [KEY=VALUE...]
                                      (# comments). Optional, how Envoy connects:
                                      admin_port=9901 (Envoy's admin on 127.0.0.1, read
                                      once per cycle beside the probes), cluster_type=
                                      static|strict_dns|logical_dns, connect_timeout=2s.
                                      Re-read when it changes (once unmodified for 2s:
                                      write it aside and rename it) and on SIGHUP.
                                      env AGENT_ROUTES_FILE
    --metrics-listen ADDR:PORT        HTTP listener for /metrics, /healthz and /.
                                      env AGENT_METRICS_LISTEN, default 0.0.0.0:9102
    --metrics-port PORT               Keep the listen address, change the port; 0 turns the
                                      HTTP listener off. env AGENT_METRICS_PORT
    --web-tls-cert PATH               Serve the HTTP listener over TLS with this PEM certificate
                                      chain (with --web-tls-key). Re-read on SIGHUP.
                                      env AGENT_WEB_TLS_CERT (builds with the tls feature)
    --web-tls-key PATH                The PEM private key of --web-tls-cert (PKCS#8, PKCS#1 or
                                      SEC1). env AGENT_WEB_TLS_KEY
    --web-client-ca PATH              Require client certificates signed by a CA in this PEM
                                      file (mutual TLS; needs --web-tls-cert).
                                      env AGENT_WEB_CLIENT_CA
    --web-auth-token-file PATH        /metrics needs `Authorization: Bearer <token>`, the token
                                      being this file's content (surrounding whitespace
                                      ignored); else 401. /healthz, /-/healthy, /-/ready stay
                                      open. Re-read on SIGHUP. env AGENT_WEB_AUTH_TOKEN_FILE
    --database-url URL                Read the routes from the fleet's PostgreSQL instead of a
                                      file: postgresql://USER@HOST:PORT/DB or key=value form.
                                      The password may come from PGPASSWORD or a password
                                      file (PGPASSFILE, else ~/.pgpass, mode 0600) instead.
                                      env AGENT_DATABASE_URL (builds with the postgres feature)
    --hostname NAME                   This VPS's name in the database's vps table.
                                      env AGENT_HOSTNAME, default the system host name
    --mcp-stdio                       Serve MCP (JSON-RPC 2.0, one message per line) on
                                      stdin/stdout; EOF on stdin stops the agent (exit 0).
                                      env AGENT_MCP_STDIO (1/true/0/false), default off
    --mcp-listen ADDR:PORT            Serve MCP over TCP, same framing; keep it on loopback
                                      (127.0.0.1:9103) unless you mean otherwise.
                                      env AGENT_MCP_LISTEN, default off
    --mcp-http                        Serve MCP over Streamable HTTP at POST /mcp on the HTTP
                                      listener (its TLS and token apply).
                                      env AGENT_MCP_HTTP (1/true/0/false), default off
    --dns-server ADDR:PORT            Name server for backend host names, instead of those in
                                      /etc/resolv.conf (/etc/hosts is still read first).
                                      env AGENT_DNS_SERVER
    -h, --help                        Print this help.
    -V, --version                     Print the version.

LOGGING:
    Logs go to stderr; RUST_LOG sets the level (error, warn, info, debug; default info).

EXIT STATUS:
    0 on SIGTERM/SIGINT, 1 on a runtime failure (e.g. the port is in use), 2 on bad usage.
";

/// Everything the agent needs to know, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub health_probe: bool,
    pub interval: Duration,
    /// Already clamped to [`MAX_PROBE_TIMEOUT`].
    pub timeout: Duration,
    /// The timeout asked for was above the clamp (main warns once).
    pub timeout_clamped_from: Option<Duration>,
    pub routes_file: Option<PathBuf>,
    /// None when the HTTP listener is off (`--metrics-port 0`).
    pub metrics_listen: Option<SocketAddr>,
    /// Overrides the name servers of /etc/resolv.conf.
    pub dns_server: Option<SocketAddr>,
    /// Read routes from PostgreSQL (never printed: it may hold a password).
    pub database: Option<Database>,
    /// Serve MCP on stdin/stdout.
    pub mcp_stdio: bool,
    /// Serve MCP over TCP.
    pub mcp_listen: Option<SocketAddr>,
    /// Serve MCP over Streamable HTTP (`POST /mcp`) on the HTTP listener.
    pub mcp_http: bool,
    /// TLS and token for the HTTP listener.
    pub web: WebSecurityConfig,
}

/// The database source's settings. `Debug` shows no secret.
#[derive(Clone, PartialEq)]
pub struct Database {
    pub url: String,
    /// `PGPASSWORD`, used when the URL has no password.
    pub pgpassword: Option<String>,
    /// The libpq password file: `PGPASSFILE`, else `$HOME/.pgpass` (a `passfile=` in the URL
    /// wins); read when neither the URL nor `PGPASSWORD` gives a password.
    pub passfile: Option<std::path::PathBuf>,
    pub hostname: String,
}

impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Database {{ url: <hidden>, hostname: {:?} }}",
            self.hostname
        )
    }
}

/// What `parse_args` found: run, or print help/version.
#[derive(Debug, PartialEq)]
#[allow(clippy::large_enum_variant)] // one value, made once at start
pub enum Command {
    Run(Config),
    Help,
    Version,
}

/// A usage error: exit 2 with this message.
#[derive(Debug, PartialEq, Eq)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<lexopt::Error> for UsageError {
    fn from(e: lexopt::Error) -> Self {
        UsageError(format!("{e}; see --help"))
    }
}

/// The environment fallbacks, looked up in one place.
#[derive(Default, Debug)]
pub struct Env {
    pub health_probe: Option<String>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub routes_file: Option<OsString>,
    pub metrics_listen: Option<String>,
    pub metrics_port: Option<String>,
    pub dns_server: Option<String>,
    pub mcp_stdio: Option<String>,
    pub mcp_listen: Option<String>,
    pub mcp_http: Option<String>,
    pub web_tls_cert: Option<OsString>,
    pub web_tls_key: Option<OsString>,
    pub web_client_ca: Option<OsString>,
    pub web_auth_token_file: Option<OsString>,
    pub database_url: Option<String>,
    pub pgpassword: Option<String>,
    pub pgpassfile: Option<OsString>,
    /// `HOME`, for `~/.pgpass`.
    pub home: Option<OsString>,
    pub hostname: Option<String>,
    /// The system host name (the default for `--hostname`).
    pub system_hostname: Option<String>,
}

impl Env {
    /// Reads the process environment. An empty variable counts as unset.
    pub fn from_process() -> Env {
        let s = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let os = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
        Env {
            health_probe: s("AGENT_HEALTH_PROBE"),
            interval: s("AGENT_HEALTH_PROBE_INTERVAL"),
            timeout: s("AGENT_HEALTH_PROBE_TIMEOUT"),
            routes_file: std::env::var_os("AGENT_ROUTES_FILE").filter(|v| !v.is_empty()),
            metrics_listen: s("AGENT_METRICS_LISTEN"),
            metrics_port: s("AGENT_METRICS_PORT"),
            dns_server: s("AGENT_DNS_SERVER"),
            mcp_stdio: s("AGENT_MCP_STDIO"),
            mcp_listen: s("AGENT_MCP_LISTEN"),
            mcp_http: s("AGENT_MCP_HTTP"),
            web_tls_cert: os("AGENT_WEB_TLS_CERT"),
            web_tls_key: os("AGENT_WEB_TLS_KEY"),
            web_client_ca: os("AGENT_WEB_CLIENT_CA"),
            web_auth_token_file: os("AGENT_WEB_AUTH_TOKEN_FILE"),
            database_url: s("AGENT_DATABASE_URL"),
            pgpassword: s("PGPASSWORD"),
            pgpassfile: std::env::var_os("PGPASSFILE").filter(|v| !v.is_empty()),
            home: std::env::var_os("HOME").filter(|v| !v.is_empty()),
            hostname: s("AGENT_HOSTNAME"),
            system_hostname: std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty()),
        }
    }
}

/// Parses the command line, falling back to `env` for what the flags don't say.
pub fn parse_args(mut parser: lexopt::Parser, env: Env) -> Result<Command, UsageError> {
    use lexopt::prelude::*;

    let mut health_probe: Option<bool> = None;
    let mut interval: Option<String> = None;
    let mut timeout: Option<String> = None;
    let mut routes_file: Option<PathBuf> = None;
    let mut metrics_listen: Option<String> = None;
    let mut metrics_port: Option<String> = None;
    let mut dns_server: Option<String> = None;
    let mut mcp_stdio: Option<bool> = None;
    let mut mcp_listen: Option<String> = None;
    let mut mcp_http: Option<bool> = None;
    let mut database_url: Option<String> = None;
    let mut hostname: Option<String> = None;
    let mut web_tls_cert: Option<PathBuf> = None;
    let mut web_tls_key: Option<PathBuf> = None;
    let mut web_client_ca: Option<PathBuf> = None;
    let mut web_auth_token_file: Option<PathBuf> = None;

    while let Some(arg) = parser.next()? {
        match arg {
            Long("health-probe") => health_probe = Some(true),
            Long("health-probe-interval") => {
                interval = Some(string(&mut parser, "--health-probe-interval")?)
            }
            Long("health-probe-timeout") => {
                timeout = Some(string(&mut parser, "--health-probe-timeout")?)
            }
            Long("routes-file") => routes_file = Some(parser.value()?.into()),
            Long("metrics-listen") => {
                metrics_listen = Some(string(&mut parser, "--metrics-listen")?)
            }
            Long("metrics-port") => metrics_port = Some(string(&mut parser, "--metrics-port")?),
            Long("database-url") => database_url = Some(string(&mut parser, "--database-url")?),
            Long("hostname") => hostname = Some(string(&mut parser, "--hostname")?),
            Long("mcp-stdio") => mcp_stdio = Some(true),
            Long("mcp-http") => mcp_http = Some(true),
            Long("mcp-listen") => mcp_listen = Some(string(&mut parser, "--mcp-listen")?),
            Long("dns-server") => dns_server = Some(string(&mut parser, "--dns-server")?),
            Long("web-tls-cert") => web_tls_cert = Some(parser.value()?.into()),
            Long("web-tls-key") => web_tls_key = Some(parser.value()?.into()),
            Long("web-client-ca") => web_client_ca = Some(parser.value()?.into()),
            Long("web-auth-token-file") => web_auth_token_file = Some(parser.value()?.into()),
            Short('h') | Long("help") => return Ok(Command::Help),
            Short('V') | Long("version") => return Ok(Command::Version),
            _ => return Err(arg.unexpected().into()),
        }
    }

    // Environment fallbacks, all here.
    let health_probe = flag_or_env(health_probe, env.health_probe, "AGENT_HEALTH_PROBE")?;
    let mcp_stdio = flag_or_env(mcp_stdio, env.mcp_stdio, "AGENT_MCP_STDIO")?;
    let mcp_http = flag_or_env(mcp_http, env.mcp_http, "AGENT_MCP_HTTP")?;
    let (mcp_listen, mcp_src) = pick(
        mcp_listen,
        env.mcp_listen,
        "--mcp-listen",
        "AGENT_MCP_LISTEN",
    );
    let (interval, interval_src) = pick(
        interval,
        env.interval,
        "--health-probe-interval",
        "AGENT_HEALTH_PROBE_INTERVAL",
    );
    let (timeout, timeout_src) = pick(
        timeout,
        env.timeout,
        "--health-probe-timeout",
        "AGENT_HEALTH_PROBE_TIMEOUT",
    );
    let routes_file = routes_file.or(env.routes_file.map(PathBuf::from));
    let web = WebSecurityConfig {
        tls_cert: web_tls_cert.or(env.web_tls_cert.map(PathBuf::from)),
        tls_key: web_tls_key.or(env.web_tls_key.map(PathBuf::from)),
        client_ca: web_client_ca.or(env.web_client_ca.map(PathBuf::from)),
        token_file: web_auth_token_file.or(env.web_auth_token_file.map(PathBuf::from)),
    };
    if (web.tls_cert.is_some() || web.tls_key.is_some() || web.client_ca.is_some())
        && !cfg!(feature = "tls")
    {
        return Err(UsageError(
            "--web-tls-cert, --web-tls-key and --web-client-ca (or AGENT_WEB_TLS_*, AGENT_WEB_CLIENT_CA) need a build with the tls feature (this one was built without it); --web-auth-token-file works without TLS but sends the token in clear".into(),
        ));
    }
    match (&web.tls_cert, &web.tls_key) {
        (Some(_), None) => {
            return Err(UsageError(
                "--web-tls-cert (or AGENT_WEB_TLS_CERT) needs --web-tls-key (or AGENT_WEB_TLS_KEY)"
                    .into(),
            ))
        }
        (None, Some(_)) => {
            return Err(UsageError(
                "--web-tls-key (or AGENT_WEB_TLS_KEY) needs --web-tls-cert (or AGENT_WEB_TLS_CERT)"
                    .into(),
            ))
        }
        _ => {}
    }
    if web.client_ca.is_some() && web.tls_cert.is_none() {
        return Err(UsageError(
            "--web-client-ca (or AGENT_WEB_CLIENT_CA) needs --web-tls-cert and --web-tls-key: client certificates come with TLS".into(),
        ));
    }
    let (metrics_listen, listen_src) = pick(
        metrics_listen,
        env.metrics_listen,
        "--metrics-listen",
        "AGENT_METRICS_LISTEN",
    );
    let (metrics_port, port_src) = pick(
        metrics_port,
        env.metrics_port,
        "--metrics-port",
        "AGENT_METRICS_PORT",
    );

    let (dns_server, dns_src) = pick(
        dns_server,
        env.dns_server,
        "--dns-server",
        "AGENT_DNS_SERVER",
    );

    let interval = match interval {
        None => DEFAULT_INTERVAL,
        Some(v) => duration_in(
            &v,
            interval_src,
            MIN_INTERVAL..=MAX_INTERVAL,
            "must be between 100ms and 24h",
        )?,
    };
    let asked_timeout = match timeout {
        None => MAX_PROBE_TIMEOUT,
        Some(v) => duration_in(
            &v,
            timeout_src,
            MIN_PROBE_TIMEOUT..=Duration::MAX,
            "must be at least 10ms (MIN_PROBE_TIMEOUT); above 3s, 3s is used",
        )?,
    };
    let timeout = asked_timeout.min(MAX_PROBE_TIMEOUT);
    let timeout_clamped_from = (asked_timeout > MAX_PROBE_TIMEOUT).then_some(asked_timeout);

    let listen_text = metrics_listen.unwrap_or_else(|| DEFAULT_METRICS_LISTEN.to_owned());
    let mut listen: SocketAddr = listen_text.parse().map_err(|_| {
        UsageError(format!(
            "invalid value '{listen_text}' for {listen_src}, expected ADDR:PORT such as 0.0.0.0:9102 or [::]:9102"
        ))
    })?;
    let metrics_listen = match metrics_port {
        None => Some(listen),
        Some(p) => match p.parse::<u16>() {
            Ok(0) => None,
            Ok(port) => {
                listen.set_port(port);
                Some(listen)
            }
            Err(_) => {
                return Err(UsageError(format!(
                    "invalid value '{p}' for {port_src}, expected a port 0-65535 (0 turns the listener off)"
                )))
            }
        },
    };

    let (database_url, db_src) = pick(
        database_url,
        env.database_url,
        "--database-url",
        "AGENT_DATABASE_URL",
    );
    let database = match database_url {
        None => None,
        Some(_) if !cfg!(feature = "postgres") => {
            return Err(UsageError(format!(
                "{db_src} needs a build with the postgres feature (this one was built with --no-default-features); use --routes-file"
            )))
        }
        Some(_) if routes_file.is_some() => {
            return Err(UsageError(format!(
                "{db_src} and --routes-file (or AGENT_ROUTES_FILE) are both given; use one route source"
            )))
        }
        Some(url) => {
            let hostname = hostname.or(env.hostname).or(env.system_hostname).ok_or_else(|| {
                UsageError("no host name to register as: give --hostname NAME (or AGENT_HOSTNAME)".into())
            })?;
            let passfile = env
                .pgpassfile
                .map(std::path::PathBuf::from)
                .or_else(|| env.home.map(|h| std::path::PathBuf::from(h).join(".pgpass")));
            Some(Database {
                url,
                pgpassword: env.pgpassword,
                passfile,
                hostname,
            })
        }
    };
    let mcp_listen = match mcp_listen {
        None => None,
        Some(v) => Some(v.parse::<SocketAddr>().map_err(|_| {
            UsageError(format!(
                "invalid value '{v}' for {mcp_src}, expected ADDR:PORT such as 127.0.0.1:9103"
            ))
        })?),
    };
    let dns_server = match dns_server {
        None => None,
        Some(v) => Some(v.parse::<SocketAddr>().map_err(|_| {
            UsageError(format!(
                "invalid value '{v}' for {dns_src}, expected ADDR:PORT such as 127.0.0.1:53 or [::1]:53"
            ))
        })?),
    };

    Ok(Command::Run(Config {
        health_probe,
        interval,
        timeout,
        timeout_clamped_from,
        routes_file,
        metrics_listen,
        dns_server,
        database,
        mcp_stdio,
        mcp_listen,
        mcp_http,
        web,
    }))
}

fn string(parser: &mut lexopt::Parser, flag: &str) -> Result<String, UsageError> {
    parser
        .value()?
        .into_string()
        .map_err(|v| UsageError(format!("invalid value {v:?} for {flag}: not UTF-8")))
}

/// The flag's value if given, else the environment's; with the name to blame in errors.
fn pick(
    flag: Option<String>,
    env: Option<String>,
    flag_name: &'static str,
    env_name: &'static str,
) -> (Option<String>, &'static str) {
    match (flag, env) {
        (Some(v), _) => (Some(v), flag_name),
        (None, Some(v)) => (Some(v), env_name),
        (None, None) => (None, flag_name),
    }
}

/// `v` ([`parse_duration`]) if it is in `range`; errors name `src` (the flag or environment
/// variable) and, out of range, say `bounds`.
fn duration_in(
    v: &str,
    src: &str,
    range: std::ops::RangeInclusive<Duration>,
    bounds: &str,
) -> Result<Duration, UsageError> {
    let invalid = |why: &str| UsageError(format!("invalid value '{v}' for {src}: {why}"));
    let d = parse_duration(v).map_err(|e| invalid(&e))?;
    if !range.contains(&d) {
        return Err(invalid(bounds));
    }
    Ok(d)
}

/// A boolean flag if given, else its environment variable, else false.
fn flag_or_env(
    flag: Option<bool>,
    env: Option<String>,
    env_name: &str,
) -> Result<bool, UsageError> {
    match (flag, env) {
        (Some(v), _) => Ok(v),
        (None, Some(v)) => parse_bool(&v).ok_or_else(|| {
            UsageError(format!(
                "invalid value '{v}' for {env_name}, expected 1, true, 0 or false"
            ))
        }),
        (None, None) => Ok(false),
    }
}

fn parse_bool(s: &str) -> Option<bool> {
    match s.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// Parses `30`, `30s`, `1.5`, `500ms`, `2m`, `1h` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    const EXPECTED: &str = "expected a duration such as 30, 30s, 1.5, 500ms or 2m";
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let scale = match unit {
        "" | "s" => 1.0,
        "ms" => 0.001,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(EXPECTED.into()),
    };
    let valid_number = !number.is_empty()
        && number.matches('.').count() <= 1
        && !number.starts_with('.')
        && !number.ends_with('.');
    if !valid_number {
        return Err(EXPECTED.into());
    }
    let value: f64 = number.parse().map_err(|_| EXPECTED.to_string())?;
    let secs = value * scale;
    if !secs.is_finite() || secs > 1e9 {
        return Err("duration is too large".into());
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str], env: Env) -> Result<Command, UsageError> {
        let mut all = vec!["sigma-agent-lite"];
        all.extend_from_slice(args);
        parse_args(lexopt::Parser::from_iter(all), env)
    }

    fn run(args: &[&str]) -> Config {
        match parse(args, Env::default()) {
            Ok(Command::Run(c)) => c,
            other => panic!("{other:?}"),
        }
    }

    /// For options that need a cargo feature: with it `built`, the parsed config; without,
    /// `None` once the error is checked to say `needs`.
    fn run_if_built(
        result: Result<Command, UsageError>,
        built: bool,
        needs: &str,
    ) -> Option<Config> {
        match result {
            Ok(Command::Run(c)) if built => Some(c),
            Err(e) if !built && e.0.contains(needs) => None,
            other => panic!("built with the feature: {built}; got {other:?}"),
        }
    }

    #[test]
    fn defaults() {
        let c = run(&[]);
        assert!(!c.health_probe);
        assert_eq!(c.interval, Duration::from_secs(30));
        assert_eq!(c.timeout, Duration::from_secs(3));
        assert_eq!(c.timeout_clamped_from, None);
        assert_eq!(c.routes_file, None);
        assert_eq!(c.metrics_listen, Some("0.0.0.0:9102".parse().unwrap()));
    }

    #[test]
    fn durations() {
        let ok = [
            ("30", 30_000),
            ("30s", 30_000),
            ("1.5", 1_500),
            ("500ms", 500),
            ("2m", 120_000),
            ("1h", 3_600_000),
        ];
        for (s, ms) in ok {
            assert_eq!(parse_duration(s), Ok(Duration::from_millis(ms)), "{s}");
        }
        for bad in ["", "s", "1.2.3", ".5", "5.", "-1", "1x", "1 s", "1e3"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn flags_win_over_env_and_timeout_is_clamped() {
        let env = Env {
            health_probe: Some("true".into()),
            interval: Some("5s".into()),
            timeout: Some("10s".into()),
            metrics_port: Some("9200".into()),
            ..Env::default()
        };
        let Ok(Command::Run(c)) = parse(&["--health-probe-interval", "500ms"], env) else {
            panic!()
        };
        assert!(c.health_probe);
        assert_eq!(c.interval, Duration::from_millis(500));
        assert_eq!(c.timeout, MAX_PROBE_TIMEOUT);
        assert_eq!(c.timeout_clamped_from, Some(Duration::from_secs(10)));
        assert_eq!(c.metrics_listen, Some("0.0.0.0:9200".parse().unwrap()));
    }

    #[test]
    fn ipv6_listen_port_shorthand_and_off() {
        let c = run(&["--metrics-listen", "[::1]:9102", "--metrics-port", "9300"]);
        assert_eq!(c.metrics_listen, Some("[::1]:9300".parse().unwrap()));
        assert_eq!(run(&["--metrics-port", "0"]).metrics_listen, None);
    }

    #[test]
    fn errors_name_flag_value_and_what_is_valid() {
        let cases: &[(&[&str], &str)] = &[
            (
                &["--health-probe-interval", "50ms"],
                "'50ms' for --health-probe-interval: must be between 100ms and 24h",
            ),
            (
                &["--health-probe-interval", "soon"],
                "'soon' for --health-probe-interval: expected a duration",
            ),
            (
                &["--health-probe-timeout", "0"],
                "'0' for --health-probe-timeout: must be at least 10ms",
            ),
            (
                &["--health-probe-timeout", "0.000000001"],
                "'0.000000001' for --health-probe-timeout: must be at least 10ms",
            ),
            (
                &["--health-probe-timeout", "9ms"],
                "'9ms' for --health-probe-timeout: must be at least 10ms",
            ),
            (
                &["--metrics-listen", "9102"],
                "'9102' for --metrics-listen, expected ADDR:PORT",
            ),
            (
                &["--metrics-port", "x"],
                "'x' for --metrics-port, expected a port",
            ),
            (&["--bogus"], "invalid option '--bogus'"),
            (
                &["--routes-file"],
                "missing argument for option '--routes-file'",
            ),
        ];
        for (args, want) in cases {
            let e = parse(args, Env::default()).unwrap_err();
            assert!(e.0.contains(want), "{args:?}: {e}");
        }
        let env = Env {
            interval: Some("fast".into()),
            ..Env::default()
        };
        let e = parse(&[], env).unwrap_err();
        assert!(e.0.contains("AGENT_HEALTH_PROBE_INTERVAL"), "{e}");
        let env = Env {
            health_probe: Some("maybe".into()),
            ..Env::default()
        };
        assert!(parse(&[], env)
            .unwrap_err()
            .0
            .contains("AGENT_HEALTH_PROBE"));
    }

    #[test]
    fn database_source() {
        let env = Env {
            pgpassword: Some("s3cret".into()),
            system_hostname: Some("edge-hk-01".into()),
            ..Env::default()
        };
        let result = parse(&["--database-url", "postgresql://agent@db/sigma"], env);
        let needs = "needs a build with the postgres feature";
        if let Some(c) = run_if_built(result, cfg!(feature = "postgres"), needs) {
            let db = c.database.unwrap();
            assert_eq!(db.hostname, "edge-hk-01");
            assert_eq!(db.pgpassword.as_deref(), Some("s3cret"));
            assert!(!format!("{db:?}").contains("s3cret") && !format!("{db:?}").contains("agent@"));
            let e = parse(
                &["--database-url", "x", "--routes-file", "r"],
                Env::default(),
            )
            .unwrap_err();
            assert!(e.0.contains("use one route source"), "{e}");
            let e = parse(&["--database-url", "x"], Env::default()).unwrap_err();
            assert!(e.0.contains("give --hostname"), "{e}");
        }
    }

    #[test]
    fn web_security_flags_and_env() {
        let env = Env {
            web_tls_cert: Some("/env/cert.pem".into()),
            web_tls_key: Some("/env/key.pem".into()),
            web_auth_token_file: Some("/env/token".into()),
            ..Env::default()
        };
        let result = parse(&["--web-tls-key", "/flag/key.pem"], env);
        let needs = "need a build with the tls feature";
        if let Some(c) = run_if_built(result, cfg!(feature = "tls"), needs) {
            assert_eq!(c.web.tls_cert, Some("/env/cert.pem".into()));
            assert_eq!(c.web.tls_key, Some("/flag/key.pem".into()));
            assert_eq!(c.web.token_file, Some("/env/token".into()));
            assert_eq!(c.web.client_ca, None);
            for (args, want) in [
                (&["--web-tls-cert", "c"][..], "needs --web-tls-key"),
                (&["--web-tls-key", "k"][..], "needs --web-tls-cert"),
                (
                    &["--web-client-ca", "ca"][..],
                    "needs --web-tls-cert and --web-tls-key",
                ),
            ] {
                let e = parse(args, Env::default()).unwrap_err();
                assert!(e.0.contains(want), "{args:?}: {e}");
            }
        }
        // The token alone works in every build.
        let c = run(&["--web-auth-token-file", "/t"]);
        assert_eq!(c.web.token_file, Some("/t".into()));
        assert_eq!(c.web.tls_cert, None);
    }

    #[test]
    fn help_and_version() {
        assert_eq!(parse(&["--help"], Env::default()), Ok(Command::Help));
        assert_eq!(parse(&["-V"], Env::default()), Ok(Command::Version));
    }
}
