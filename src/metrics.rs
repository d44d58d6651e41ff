//! Prometheus text exposition (format 0.0.4), rendered by hand from the snapshot.
//!
//! `render` is pure: snapshot and process figures in, bytes appended to a reused
//! buffer. Metric names are `const`s here and nowhere else; `# HELP`/`# TYPE` are written
//! once per family; label values are escaped in exactly one function, [`write_label_value`].
//! The process figures are read from `/proc/self` by [`ProcessStats::read`], the one function
//! in this file that does I/O, called by the HTTP handler at each scrape. The rest depends
//! only on the snapshot and is split off ([`render_snapshot`]) so that it can be rendered once
//! per change and cached (`scrape_cache.rs`).
//!
//! Per-route series: `sigma_backend_reachable` once the route has been probed, the latency
//! while its last probe succeeded, a failure counter per reason that has happened (zero-valued
//! reasons are left out: five series per route would triple the scrape for nothing), and the
//! DNS lookup time for routes given by name.

use std::io::Write;
use std::time::{Duration, SystemTime};

use crate::envoy::Mismatch;
use crate::snapshot::{EnvoyNode, Outcome, Reason, RouteState, Snapshot};

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

pub const BACKEND_REACHABLE: &str = "sigma_backend_reachable";
pub const BACKEND_LATENCY_MS: &str = "sigma_backend_probe_latency_ms";
pub const BACKEND_FAILURES: &str = "sigma_backend_probe_failures_total";
pub const BACKEND_DNS_SECONDS: &str = "sigma_backend_dns_lookup_seconds";
pub const BACKEND_ADDRESSES: &str = "sigma_backend_addresses";
pub const BACKEND_ADDRESSES_REACHABLE: &str = "sigma_backend_addresses_reachable";
pub const ENVOY_BACKEND_HEALTHY: &str = "sigma_envoy_backend_healthy";
pub const VIEW_MISMATCH: &str = "sigma_backend_view_mismatch";
pub const ENVOY_ADMIN_UP: &str = "sigma_envoy_admin_up";
pub const ENVOY_ADMIN_FETCH_DURATION: &str = "sigma_envoy_admin_fetch_duration_seconds";
pub const ENVOY_ADMIN_ERRORS: &str = "sigma_envoy_admin_errors_total";
pub const ENVOY_ADMIN_BYTES: &str = "sigma_envoy_admin_response_bytes";
pub const CYCLES: &str = "sigma_probe_cycles_total";
pub const OVERRUNS: &str = "sigma_probe_cycle_overruns_total";
pub const CYCLE_DURATION: &str = "sigma_probe_cycle_duration_seconds";
pub const INTERVAL: &str = "sigma_probe_interval_seconds";
pub const LAST_CYCLE_END: &str = "sigma_probe_last_cycle_end_timestamp_seconds";
pub const ROUTES: &str = "sigma_routes";
pub const SOURCE_UP: &str = "sigma_route_source_up";
pub const SOURCE_ERRORS: &str = "sigma_route_source_errors_total";
pub const FETCH_DURATION: &str = "sigma_route_fetch_duration_seconds";
pub const VPS_REGISTERED: &str = "sigma_vps_registered";
pub const PROBE_ENABLED: &str = "sigma_health_probe_enabled";
pub const AGENT_RESOURCE_ERRORS: &str = "sigma_agent_resource_errors_total";
pub const LOG_LINES_DROPPED: &str = "sigma_log_lines_dropped_total";
pub const BUILD_INFO: &str = "sigma_build_info";
pub const PROCESS_RSS: &str = "process_resident_memory_bytes";
pub const PROCESS_CPU: &str = "process_cpu_seconds_total";
pub const PROCESS_OPEN_FDS: &str = "process_open_fds";
pub const PROCESS_MAX_FDS: &str = "process_max_fds";
pub const PROCESS_VIRTUAL: &str = "process_virtual_memory_bytes";
pub const PROCESS_VIRTUAL_MAX: &str = "process_virtual_memory_max_bytes";
pub const PROCESS_START: &str = "process_start_time_seconds";

/// This binary's version, as in Cargo.toml.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The git revision it was built from (build.rs; `unknown` outside a checkout).
pub const REVISION: &str = env!("SIGMA_REVISION");
/// The rustc that built it (build.rs).
pub const RUSTC: &str = env!("SIGMA_RUSTC");
/// The cargo features compiled in, comma-separated (`none` for `--no-default-features`), so
/// a default and a minimal build can be told apart on a dashboard.
pub const FEATURES: &str = match (cfg!(feature = "postgres"), cfg!(feature = "tls")) {
    (true, true) => "postgres,tls",
    (true, false) => "postgres",
    (false, true) => "tls",
    (false, false) => "none",
};

/// The `--version` line: the same four facts as `sigma_build_info`.
pub fn version_line() -> String {
    format!("sigma-agent-lite {VERSION} (revision {REVISION}, features {FEATURES}, rustc {RUSTC})")
}

/// Figures about this process, from `/proc/self`. Missing ones are left out of the output.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProcessStats {
    pub resident_bytes: Option<u64>,
    pub cpu_seconds: Option<f64>,
    pub open_fds: Option<u64>,
    pub max_fds: Option<u64>,
    pub virtual_bytes: Option<u64>,
    /// The address-space limit (`RLIMIT_AS`); unlimited is `u64::MAX`, as client_golang and
    /// node_exporter report it.
    pub virtual_max_bytes: Option<u64>,
    /// Log lines dropped because stderr would have blocked (`logging::dropped`).
    pub log_lines_dropped: u64,
}

impl ProcessStats {
    /// Reads `/proc/self/{stat,fd,limits}`. Never fails: what can't be read is `None`.
    pub fn read() -> ProcessStats {
        let mut stats = ProcessStats {
            log_lines_dropped: crate::logging::dropped(),
            ..ProcessStats::default()
        };
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
            let (cpu_ticks, rss_pages, vsize) = parse_stat(&stat);
            stats.virtual_bytes = vsize;
            // SAFETY: sysconf has no preconditions; it only reads system configuration.
            let (tck, page) = unsafe {
                (
                    libc::sysconf(libc::_SC_CLK_TCK),
                    libc::sysconf(libc::_SC_PAGESIZE),
                )
            };
            if tck > 0 {
                stats.cpu_seconds = cpu_ticks.map(|t| t as f64 / tck as f64);
            }
            if page > 0 {
                stats.resident_bytes = rss_pages.map(|p| p * page as u64);
            }
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            // One entry is the directory handle itself, open while we count.
            stats.open_fds = Some(dir.count().saturating_sub(1) as u64);
        }
        if let Ok(limits) = std::fs::read_to_string("/proc/self/limits") {
            stats.max_fds = parse_limit(&limits, "Max open files");
            stats.virtual_max_bytes = parse_limit(&limits, "Max address space");
        }
        stats
    }
}

/// From `/proc/self/stat`: (utime + stime in clock ticks, rss in pages, vsize in bytes). The
/// command name is in parentheses and may contain spaces, so fields are counted after the
/// last `)`.
fn parse_stat(stat: &str) -> (Option<u64>, Option<u64>, Option<u64>) {
    let Some(after) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return (None, None, None);
    };
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the `)`: field 3 (state) is index 0, utime (14) is 11, stime (15) 12, vsize (23)
    // 20, rss (24) 21.
    let num = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    let cpu = match (num(11), num(12)) {
        (Some(u), Some(s)) => Some(u + s),
        _ => None,
    };
    (cpu, num(21), num(20))
}

/// The soft limit of one line of `/proc/self/limits`; `unlimited` is `u64::MAX`.
fn parse_limit(limits: &str, name: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with(name))?;
    match line[name.len()..].split_whitespace().next()? {
        "unlimited" => Some(u64::MAX),
        v => v.parse().ok(),
    }
}

/// Renders the whole exposition into `out` (appending): [`render_snapshot`] then
/// [`render_process`].
pub fn render(snap: &Snapshot, process: &ProcessStats, out: &mut Vec<u8>) {
    render_snapshot(snap, out);
    render_process(snap, process, out);
}

/// The part that depends only on the snapshot (everything but `process_*`): cached per
/// snapshot generation and served to every scrape until the next change.
pub fn render_snapshot(snap: &Snapshot, out: &mut Vec<u8>) {
    let routes = &snap.routes;
    per_item(
        out,
        routes,
        BACKEND_REACHABLE,
        Kind::Gauge,
        "1 if this host could open a TCP connection to the backend in the last probe, else 0.",
        |s| s.reachable().map(Sample::Bool),
    );
    per_item(
        out,
        routes,
        BACKEND_LATENCY_MS,
        Kind::Gauge,
        "TCP connect time of the last successful probe, in milliseconds (absent while down).",
        |s| match s.last.as_ref()?.0.outcome {
            Outcome::Reachable { latency } => Some(Sample::Millis(latency)),
            _ => None,
        },
    );
    family(
        out,
        BACKEND_FAILURES,
        Kind::Counter,
        "Failed probes of the backend by reason (refused, timeout, unreachable, dns, error).",
    );
    for s in routes {
        for reason in Reason::ALL {
            let n = s.failures(reason);
            if n > 0 {
                series(out, BACKEND_FAILURES, s, Some(reason));
                Sample::U64(n).write(out);
            }
        }
    }
    per_item(
        out,
        routes,
        BACKEND_DNS_SECONDS,
        Kind::Gauge,
        "Time the last lookup of the backend's host name took (routes given by name only).",
        |s| s.last.as_ref()?.0.dns_duration.map(Sample::Seconds),
    );
    let counts = |s: &RouteState| s.last.as_ref().and_then(|(r, _)| r.addresses);
    per_item(
        out,
        routes,
        BACKEND_ADDRESSES,
        Kind::Gauge,
        "strict_dns routes: addresses the backend's name resolved to in the last probe (each is probed).",
        |s| counts(s).map(|c| Sample::U64(c.total.into())),
    );
    per_item(
        out,
        routes,
        BACKEND_ADDRESSES_REACHABLE,
        Kind::Gauge,
        "strict_dns routes: addresses that accepted a TCP connection in the last probe.",
        |s| counts(s).map(|c| Sample::U64(c.reachable.into())),
    );

    render_envoy(snap, out);

    let source = &snap.source;
    single(
        out,
        CYCLES,
        Kind::Counter,
        "Probe cycles completed.",
        Sample::U64(snap.cycles_total),
    );
    single(
        out,
        OVERRUNS,
        Kind::Counter,
        "Probe cycles that took longer than the interval.",
        Sample::U64(snap.overruns_total),
    );
    single(
        out,
        CYCLE_DURATION,
        Kind::Gauge,
        "Duration of the last completed probe cycle.",
        Sample::F64(snap.last_cycle_duration.map_or(0.0, seconds_f64)),
    );
    single(
        out,
        INTERVAL,
        Kind::Gauge,
        "Configured time between probe-cycle starts.",
        Sample::F64(seconds_f64(snap.interval)),
    );
    single(
        out,
        LAST_CYCLE_END,
        Kind::Gauge,
        "Unix time the last probe cycle completed (0 before the first).",
        Sample::F64(snap.last_cycle_end.map_or(0.0, unix_seconds)),
    );
    single(
        out,
        ROUTES,
        Kind::Gauge,
        "Routes currently known to the agent.",
        Sample::U64(routes.len() as u64),
    );
    single(
        out,
        SOURCE_UP,
        Kind::Gauge,
        "1 if the last read of the route source succeeded.",
        Sample::Bool(source.up),
    );
    single(
        out,
        SOURCE_ERRORS,
        Kind::Counter,
        "Failed reads of the route source (invalid file, database errors).",
        Sample::U64(source.errors_total),
    );
    single(
        out,
        FETCH_DURATION,
        Kind::Gauge,
        "Duration of the last read of the route source.",
        Sample::F64(source.fetch_duration.map_or(0.0, seconds_f64)),
    );
    single(
        out,
        VPS_REGISTERED,
        Kind::Gauge,
        "1 if this host's VPS is known to the route source (always 1 for a routes file).",
        Sample::Bool(source.vps_registered),
    );
    single(
        out,
        PROBE_ENABLED,
        Kind::Gauge,
        "1 if health probing is enabled.",
        Sample::Bool(snap.probe_enabled),
    );
    family(
        out,
        AGENT_RESOURCE_ERRORS,
        Kind::Counter,
        "Failures of the agent itself, not of a backend: connections it could not accept and probes it could not run for lack of file descriptors, buffers or memory.",
    );
    for (op, n) in [
        ("accept", snap.agent_errors.accept),
        ("probe", snap.agent_errors.probe),
    ] {
        one_label(out, AGENT_RESOURCE_ERRORS, "op", op);
        Sample::U64(n).write(out);
    }
    family(
        out,
        BUILD_INFO,
        Kind::Gauge,
        "Build information; the value is always 1.",
    );
    out.extend_from_slice(BUILD_INFO.as_bytes());
    out.extend_from_slice(b"{version=\"");
    write_label_value(out, VERSION);
    out.extend_from_slice(b"\",revision=\"");
    write_label_value(out, REVISION);
    out.extend_from_slice(b"\",features=\"");
    write_label_value(out, FEATURES);
    out.extend_from_slice(b"\",rustc=\"");
    write_label_value(out, RUSTC);
    out.extend_from_slice(b"\"} 1\n");
}

/// The `process_*` families: read at each scrape (CPU, memory and fds change between
/// snapshot changes), a few hundred bytes rendered after the cached part.
pub fn render_process(snap: &Snapshot, process: &ProcessStats, out: &mut Vec<u8>) {
    // Read at each scrape like the process figures (not part of the snapshot).
    single(
        out,
        LOG_LINES_DROPPED,
        Kind::Counter,
        "Log lines dropped because stderr would have blocked the agent (nobody reading it).",
        Sample::U64(process.log_lines_dropped),
    );
    // As client_golang: the address-space limit is a float, so unlimited (u64::MAX) reads
    // 1.8446744073709552e+19.
    let virtual_max = |v| match v {
        u64::MAX => Sample::Text("1.8446744073709552e+19"),
        v => Sample::U64(v),
    };
    // A figure that could not be read is left out, family and all.
    single(
        out,
        PROCESS_CPU,
        Kind::Counter,
        "Total user and system CPU time spent in seconds.",
        process.cpu_seconds.map(Sample::F64),
    );
    single(
        out,
        PROCESS_RSS,
        Kind::Gauge,
        "Resident memory size in bytes.",
        process.resident_bytes.map(Sample::U64),
    );
    single(
        out,
        PROCESS_VIRTUAL,
        Kind::Gauge,
        "Virtual memory size in bytes.",
        process.virtual_bytes.map(Sample::U64),
    );
    single(
        out,
        PROCESS_VIRTUAL_MAX,
        Kind::Gauge,
        "Maximum amount of virtual memory available in bytes.",
        process.virtual_max_bytes.map(virtual_max),
    );
    single(
        out,
        PROCESS_OPEN_FDS,
        Kind::Gauge,
        "Number of open file descriptors.",
        process.open_fds.map(Sample::U64),
    );
    single(
        out,
        PROCESS_MAX_FDS,
        Kind::Gauge,
        "Maximum number of open file descriptors.",
        process.max_fds.map(Sample::U64),
    );
    single(
        out,
        PROCESS_START,
        Kind::Gauge,
        "Start time of the process since unix epoch in seconds.",
        Sample::F64(unix_seconds(snap.started_at)),
    );
}

/// Envoy's view: per route its verdict and the mismatch with ours, per node the admin read.
fn render_envoy(snap: &Snapshot, out: &mut Vec<u8>) {
    per_item(
        out,
        &snap.routes,
        ENVOY_BACKEND_HEALTHY,
        Kind::Gauge,
        "1 if Envoy would send traffic to the backend (per its admin interface), 0 if it excluded it; absent when unknown.",
        |s| s.envoy.as_ref()?.healthy.map(Sample::Bool),
    );
    family(
        out,
        VIEW_MISMATCH,
        Kind::Gauge,
        "1 if Envoy and this host's probe disagree about the backend, by direction; absent while either view is unknown.",
    );
    for s in snap.routes.iter().filter(|s| s.views_known()) {
        for m in Mismatch::ALL {
            labelled_series(out, VIEW_MISMATCH, s, "direction", m.as_str());
            Sample::Bool(s.mismatch.is_some_and(|(now, _)| now == m)).write(out);
        }
    }
    let nodes = &snap.envoy_nodes;
    per_item(
        out,
        nodes,
        ENVOY_ADMIN_UP,
        Kind::Gauge,
        "1 if the last read of the node's Envoy admin interface (/clusters?format=json) succeeded.",
        |n| n.up.map(Sample::Bool),
    );
    per_item(
        out,
        nodes,
        ENVOY_ADMIN_FETCH_DURATION,
        Kind::Gauge,
        "Duration of the last read of the node's Envoy admin interface.",
        |n| n.fetch_duration.map(Sample::Seconds),
    );
    per_item(
        out,
        nodes,
        ENVOY_ADMIN_ERRORS,
        Kind::Counter,
        "Failed reads of the node's Envoy admin interface.",
        |n| Some(Sample::U64(n.errors_total)),
    );
    per_item(
        out,
        nodes,
        ENVOY_ADMIN_BYTES,
        Kind::Gauge,
        "Bytes received in the last successful read of the node's Envoy admin interface.",
        |n| (n.up == Some(true)).then_some(Sample::U64(n.body_bytes as u64)),
    );
}

/// A metric family's type, as `# TYPE` names it.
#[derive(Clone, Copy)]
enum Kind {
    Gauge,
    Counter,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
        }
    }
}

/// One sample's value; [`Sample::write`] appends ` value\n` after the series name and labels.
#[derive(Clone, Copy)]
enum Sample {
    /// `1` or `0`.
    Bool(bool),
    U64(u64),
    F64(f64),
    /// A duration in milliseconds ([`write_millis`]).
    Millis(Duration),
    /// A duration in seconds ([`write_seconds`]).
    Seconds(Duration),
    /// A value already in exposition form.
    Text(&'static str),
}

impl Sample {
    fn write(self, out: &mut Vec<u8>) {
        out.push(b' ');
        match self {
            Sample::Bool(b) => out.push(if b { b'1' } else { b'0' }),
            Sample::U64(n) => write_u64(out, n),
            Sample::F64(x) => write_f64(out, x),
            Sample::Millis(d) => write_millis(out, d),
            Sample::Seconds(d) => write_seconds(out, d),
            Sample::Text(t) => out.extend_from_slice(t.as_bytes()),
        }
        out.push(b'\n');
    }
}

/// What the series of a per-item family are labelled by: a route or an Envoy node.
trait Labels {
    /// Writes `name{labels}` without the value.
    fn series(&self, out: &mut Vec<u8>, name: &str);
}

impl Labels for RouteState {
    fn series(&self, out: &mut Vec<u8>, name: &str) {
        series(out, name, self, None);
    }
}

impl Labels for EnvoyNode {
    fn series(&self, out: &mut Vec<u8>, name: &str) {
        one_label(out, name, "node", &self.node);
    }
}

/// A family with a series per item that has a value (`value` gives `None` to leave an item
/// out): `# HELP`/`# TYPE` even when no item has one, then each series.
fn per_item<T: Labels>(
    out: &mut Vec<u8>,
    items: &[T],
    name: &str,
    kind: Kind,
    help: &str,
    value: impl Fn(&T) -> Option<Sample>,
) {
    family(out, name, kind, help);
    for item in items {
        if let Some(v) = value(item) {
            item.series(out, name);
            v.write(out);
        }
    }
}

/// A family of one series without labels; left out, family and all, when `value` is `None`
/// (a process figure that could not be read).
fn single(out: &mut Vec<u8>, name: &str, kind: Kind, help: &str, value: impl Into<Option<Sample>>) {
    if let Some(value) = value.into() {
        family(out, name, kind, help);
        out.extend_from_slice(name.as_bytes());
        value.write(out);
    }
}

/// `name{key=".."}` without value.
fn one_label(out: &mut Vec<u8>, name: &str, key: &str, value: &str) {
    out.extend_from_slice(name.as_bytes());
    out.push(b'{');
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"=\"");
    write_label_value(out, value);
    out.extend_from_slice(b"\"}");
}

/// A route's series with one more label.
fn labelled_series(out: &mut Vec<u8>, name: &str, s: &RouteState, key: &str, value: &str) {
    series(out, name, s, None);
    out.pop(); // the closing `}`
    out.push(b',');
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"=\"");
    write_label_value(out, value);
    out.extend_from_slice(b"\"}");
}

/// Escapes a label value as the exposition format requires: `\` `"` and newline.
/// The one place label values are escaped.
pub fn write_label_value(out: &mut Vec<u8>, value: &str) {
    for b in value.bytes() {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'"' => out.extend_from_slice(b"\\\""),
            b'\n' => out.extend_from_slice(b"\\n"),
            _ => out.push(b),
        }
    }
}

/// `# HELP` and `# TYPE`, once per family.
fn family(out: &mut Vec<u8>, name: &str, kind: Kind, help: &str) {
    out.extend_from_slice(b"# HELP ");
    out.extend_from_slice(name.as_bytes());
    out.push(b' ');
    out.extend_from_slice(help.as_bytes());
    out.extend_from_slice(b"\n# TYPE ");
    out.extend_from_slice(name.as_bytes());
    out.push(b' ');
    out.extend_from_slice(kind.as_str().as_bytes());
    out.push(b'\n');
}

/// `name{node="..",route="..",listen_port="..",backend=".."[,reason=".."]}` without value.
fn series(out: &mut Vec<u8>, name: &str, s: &RouteState, reason: Option<Reason>) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"{node=\"");
    write_label_value(out, &s.route.node);
    out.extend_from_slice(b"\",route=\"");
    write_label_value(out, &s.route.name);
    out.extend_from_slice(b"\",listen_port=\"");
    write_u64(out, s.route.listen_port.into());
    out.extend_from_slice(b"\",backend=\"");
    write_label_value(out, &s.route.backend);
    if let Some(r) = reason {
        out.extend_from_slice(b"\",reason=\"");
        out.extend_from_slice(r.as_str().as_bytes());
    }
    out.extend_from_slice(b"\"}");
}

fn write_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

/// Shortest text that reads back as the same f64 (Rust's `Display`), no exponent for the
/// magnitudes we write.
fn write_f64(out: &mut Vec<u8>, v: f64) {
    let _ = write!(out, "{v}");
}

/// A duration in milliseconds with at most microsecond precision (see [`millis_f64`]).
fn write_millis(out: &mut Vec<u8>, d: Duration) {
    write_f64(out, millis_f64(d));
}

/// A duration in seconds with at most microsecond precision (see [`millis_f64`]).
fn write_seconds(out: &mut Vec<u8>, d: Duration) {
    write_f64(out, seconds_f64(d));
}

/// A duration in milliseconds with at most microsecond precision: `34.842`, not
/// `34.842000000000005`. One division of an exact integer by a power of ten gives the double
/// nearest the decimal, and `Display` (and the JSON writer) prints the shortest text that
/// reads back as it: the decimal itself. Shared with `report.rs`, the tool's answer.
pub(crate) fn millis_f64(d: Duration) -> f64 {
    d.as_micros() as f64 / 1e3
}

/// A duration in seconds with at most microsecond precision (`0.000343`), likewise.
pub(crate) fn seconds_f64(d: Duration) -> f64 {
    d.as_micros() as f64 / 1e6
}

/// Unix time in seconds, microsecond precision (2^53 µs is year 2255: exact in an f64).
fn unix_seconds(t: SystemTime) -> f64 {
    seconds_f64(
        t.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{self, failed, reachable, route};
    use crate::snapshot::{AddressCount, ProbeResult};

    #[test]
    fn label_values_are_escaped() {
        let mut out = Vec::new();
        write_label_value(&mut out, "we\"ird\\name\nx");
        assert_eq!(out, b"we\\\"ird\\\\name\\nx");
    }

    #[test]
    fn stat_and_limits_parsing() {
        let stat = "1234 (my (odd) comm) S 1 1234 1234 0 -1 4194560 100 0 0 0 7 5 0 0 20 0 1 0 \
                    100 12345678 321 18446744073709551615";
        assert_eq!(parse_stat(stat), (Some(12), Some(321), Some(12345678)));
        assert_eq!(parse_stat("garbage"), (None, None, None));
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 524288               files\n\
                      Max address space         unlimited            unlimited            bytes\n";
        assert_eq!(parse_limit(limits, "Max open files"), Some(1024));
        assert_eq!(parse_limit(limits, "Max address space"), Some(u64::MAX));
        assert_eq!(parse_limit(limits, "Max locked memory"), None);
    }

    #[test]
    fn durations_print_at_most_microseconds_without_float_noise() {
        // 34,842 µs was `0.034842000000000005` s before; every value up to 10 s must print as
        // its decimal with at most 3 (ms) or 6 (s) fractional digits.
        for micros in (0..10_000_000u64).step_by(7) {
            let d = Duration::from_micros(micros);
            let (mut ms, mut secs) = (Vec::new(), Vec::new());
            write_millis(&mut ms, d);
            write_seconds(&mut secs, d);
            let (ms, secs) = (
                String::from_utf8(ms).unwrap(),
                String::from_utf8(secs).unwrap(),
            );
            let frac = |t: &str| t.split_once('.').map_or(0, |(_, f)| f.len());
            assert!(frac(&ms) <= 3 && frac(&secs) <= 6, "{micros}: {ms} {secs}");
            let want_ms = format!("{}.{:03}", micros / 1000, micros % 1000);
            let want_ms = want_ms.trim_end_matches('0').trim_end_matches('.');
            assert_eq!(ms, want_ms, "{micros}");
        }
    }

    #[test]
    fn whole_exposition() {
        let t0 = fixtures::t0();
        let mut snap = fixtures::snapshot(vec![
            route("n1", "we\"ird\\name", 10001, "127.0.0.1", 8080),
            route("n1", "down", 10002, "::1", 9),
            route("n2", "new", 10001, "example.com", 443),
        ]);
        snap.record(0, reachable(Duration::from_micros(34_842)), t0);
        for reason in [Reason::Refused, Reason::Refused, Reason::Timeout] {
            let result = ProbeResult {
                dns_duration: Some(Duration::from_millis(5)),
                addresses: Some(AddressCount {
                    total: 3,
                    reachable: 2,
                }),
                ..failed(reason)
            };
            snap.record(1, result, t0);
        }
        snap.cycle_done(
            Duration::from_millis(1500),
            false,
            t0 + Duration::from_secs(2),
        );
        snap.source.errors_total = 1;
        // Envoy says both backends of n1 are healthy; the second is down here.
        let healthy = crate::envoy::EnvoyMatch {
            healthy: Some(true),
            cluster: "c".into(),
            hosts: 1,
            flags: 0,
            eds_health_status: "HEALTHY".into(),
        };
        for i in 0..2 {
            snap.routes[i].envoy = Some(healthy.clone());
            snap.refresh_mismatch(i, t0);
        }
        let node = |name: &str, up: bool, ms: u64, errors: u64| crate::snapshot::EnvoyNode {
            node: name.into(),
            admin_port: 9901,
            up: Some(up),
            errors_total: errors,
            last_error: None,
            fetch_duration: Some(Duration::from_micros(ms)),
            body_bytes: 10464,
            hosts: 10,
        };
        snap.envoy_nodes = vec![node("n1", true, 4200, 0), node("n2", false, 3_000_000, 4)];
        let process = ProcessStats {
            resident_bytes: Some(2_000_000),
            cpu_seconds: Some(0.25),
            open_fds: Some(7),
            max_fds: Some(1024),
            virtual_bytes: Some(12_345_678),
            virtual_max_bytes: Some(u64::MAX),
            log_lines_dropped: 3,
        };
        let mut out = Vec::new();
        render(&snap, &process, &mut out);
        let text = String::from_utf8(out).unwrap();
        let want = format!(
            r#"# HELP sigma_backend_reachable 1 if this host could open a TCP connection to the backend in the last probe, else 0.
# TYPE sigma_backend_reachable gauge
sigma_backend_reachable{{node="n1",route="we\"ird\\name",listen_port="10001",backend="127.0.0.1:8080"}} 1
sigma_backend_reachable{{node="n1",route="down",listen_port="10002",backend="[::1]:9"}} 0
# HELP sigma_backend_probe_latency_ms TCP connect time of the last successful probe, in milliseconds (absent while down).
# TYPE sigma_backend_probe_latency_ms gauge
sigma_backend_probe_latency_ms{{node="n1",route="we\"ird\\name",listen_port="10001",backend="127.0.0.1:8080"}} 34.842
# HELP sigma_backend_probe_failures_total Failed probes of the backend by reason (refused, timeout, unreachable, dns, error).
# TYPE sigma_backend_probe_failures_total counter
sigma_backend_probe_failures_total{{node="n1",route="down",listen_port="10002",backend="[::1]:9",reason="refused"}} 2
sigma_backend_probe_failures_total{{node="n1",route="down",listen_port="10002",backend="[::1]:9",reason="timeout"}} 1
# HELP sigma_backend_dns_lookup_seconds Time the last lookup of the backend's host name took (routes given by name only).
# TYPE sigma_backend_dns_lookup_seconds gauge
sigma_backend_dns_lookup_seconds{{node="n1",route="down",listen_port="10002",backend="[::1]:9"}} 0.005
# HELP sigma_backend_addresses strict_dns routes: addresses the backend's name resolved to in the last probe (each is probed).
# TYPE sigma_backend_addresses gauge
sigma_backend_addresses{{node="n1",route="down",listen_port="10002",backend="[::1]:9"}} 3
# HELP sigma_backend_addresses_reachable strict_dns routes: addresses that accepted a TCP connection in the last probe.
# TYPE sigma_backend_addresses_reachable gauge
sigma_backend_addresses_reachable{{node="n1",route="down",listen_port="10002",backend="[::1]:9"}} 2
# HELP sigma_envoy_backend_healthy 1 if Envoy would send traffic to the backend (per its admin interface), 0 if it excluded it; absent when unknown.
# TYPE sigma_envoy_backend_healthy gauge
sigma_envoy_backend_healthy{{node="n1",route="we\"ird\\name",listen_port="10001",backend="127.0.0.1:8080"}} 1
sigma_envoy_backend_healthy{{node="n1",route="down",listen_port="10002",backend="[::1]:9"}} 1
# HELP sigma_backend_view_mismatch 1 if Envoy and this host's probe disagree about the backend, by direction; absent while either view is unknown.
# TYPE sigma_backend_view_mismatch gauge
sigma_backend_view_mismatch{{node="n1",route="we\"ird\\name",listen_port="10001",backend="127.0.0.1:8080",direction="envoy_healthy_agent_down"}} 0
sigma_backend_view_mismatch{{node="n1",route="we\"ird\\name",listen_port="10001",backend="127.0.0.1:8080",direction="envoy_unhealthy_agent_up"}} 0
sigma_backend_view_mismatch{{node="n1",route="down",listen_port="10002",backend="[::1]:9",direction="envoy_healthy_agent_down"}} 1
sigma_backend_view_mismatch{{node="n1",route="down",listen_port="10002",backend="[::1]:9",direction="envoy_unhealthy_agent_up"}} 0
# HELP sigma_envoy_admin_up 1 if the last read of the node's Envoy admin interface (/clusters?format=json) succeeded.
# TYPE sigma_envoy_admin_up gauge
sigma_envoy_admin_up{{node="n1"}} 1
sigma_envoy_admin_up{{node="n2"}} 0
# HELP sigma_envoy_admin_fetch_duration_seconds Duration of the last read of the node's Envoy admin interface.
# TYPE sigma_envoy_admin_fetch_duration_seconds gauge
sigma_envoy_admin_fetch_duration_seconds{{node="n1"}} 0.0042
sigma_envoy_admin_fetch_duration_seconds{{node="n2"}} 3
# HELP sigma_envoy_admin_errors_total Failed reads of the node's Envoy admin interface.
# TYPE sigma_envoy_admin_errors_total counter
sigma_envoy_admin_errors_total{{node="n1"}} 0
sigma_envoy_admin_errors_total{{node="n2"}} 4
# HELP sigma_envoy_admin_response_bytes Bytes received in the last successful read of the node's Envoy admin interface.
# TYPE sigma_envoy_admin_response_bytes gauge
sigma_envoy_admin_response_bytes{{node="n1"}} 10464
# HELP sigma_probe_cycles_total Probe cycles completed.
# TYPE sigma_probe_cycles_total counter
sigma_probe_cycles_total 1
# HELP sigma_probe_cycle_overruns_total Probe cycles that took longer than the interval.
# TYPE sigma_probe_cycle_overruns_total counter
sigma_probe_cycle_overruns_total 0
# HELP sigma_probe_cycle_duration_seconds Duration of the last completed probe cycle.
# TYPE sigma_probe_cycle_duration_seconds gauge
sigma_probe_cycle_duration_seconds 1.5
# HELP sigma_probe_interval_seconds Configured time between probe-cycle starts.
# TYPE sigma_probe_interval_seconds gauge
sigma_probe_interval_seconds 30
# HELP sigma_probe_last_cycle_end_timestamp_seconds Unix time the last probe cycle completed (0 before the first).
# TYPE sigma_probe_last_cycle_end_timestamp_seconds gauge
sigma_probe_last_cycle_end_timestamp_seconds 1700000002
# HELP sigma_routes Routes currently known to the agent.
# TYPE sigma_routes gauge
sigma_routes 3
# HELP sigma_route_source_up 1 if the last read of the route source succeeded.
# TYPE sigma_route_source_up gauge
sigma_route_source_up 1
# HELP sigma_route_source_errors_total Failed reads of the route source (invalid file, database errors).
# TYPE sigma_route_source_errors_total counter
sigma_route_source_errors_total 1
# HELP sigma_route_fetch_duration_seconds Duration of the last read of the route source.
# TYPE sigma_route_fetch_duration_seconds gauge
sigma_route_fetch_duration_seconds 0
# HELP sigma_vps_registered 1 if this host's VPS is known to the route source (always 1 for a routes file).
# TYPE sigma_vps_registered gauge
sigma_vps_registered 1
# HELP sigma_health_probe_enabled 1 if health probing is enabled.
# TYPE sigma_health_probe_enabled gauge
sigma_health_probe_enabled 1
# HELP sigma_agent_resource_errors_total Failures of the agent itself, not of a backend: connections it could not accept and probes it could not run for lack of file descriptors, buffers or memory.
# TYPE sigma_agent_resource_errors_total counter
sigma_agent_resource_errors_total{{op="accept"}} 0
sigma_agent_resource_errors_total{{op="probe"}} 0
# HELP sigma_build_info Build information; the value is always 1.
# TYPE sigma_build_info gauge
sigma_build_info{{version="{version}",revision="{revision}",features="{features}",rustc="{rustc}"}} 1
# HELP sigma_log_lines_dropped_total Log lines dropped because stderr would have blocked the agent (nobody reading it).
# TYPE sigma_log_lines_dropped_total counter
sigma_log_lines_dropped_total 3
# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.
# TYPE process_cpu_seconds_total counter
process_cpu_seconds_total 0.25
# HELP process_resident_memory_bytes Resident memory size in bytes.
# TYPE process_resident_memory_bytes gauge
process_resident_memory_bytes 2000000
# HELP process_virtual_memory_bytes Virtual memory size in bytes.
# TYPE process_virtual_memory_bytes gauge
process_virtual_memory_bytes 12345678
# HELP process_virtual_memory_max_bytes Maximum amount of virtual memory available in bytes.
# TYPE process_virtual_memory_max_bytes gauge
process_virtual_memory_max_bytes 1.8446744073709552e+19
# HELP process_open_fds Number of open file descriptors.
# TYPE process_open_fds gauge
process_open_fds 7
# HELP process_max_fds Maximum number of open file descriptors.
# TYPE process_max_fds gauge
process_max_fds 1024
# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.
# TYPE process_start_time_seconds gauge
process_start_time_seconds 1700000000
"#,
            version = VERSION,
            revision = REVISION,
            features = FEATURES,
            rustc = RUSTC,
        );
        assert_eq!(text, want);
    }
}
