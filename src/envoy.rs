//! Envoy's own view of its upstream hosts, and the matching of routes to it. Pure: bytes in,
//! hosts out; routes and hosts in, one verdict per route out.
//!
//! Why: the agent exists for the case "Envoy thinks an upstream is healthy but this host can't
//! TCP-connect to it". Envoy says what it thinks on its admin interface: `GET
//! /clusters?format=json` answers an `envoy.admin.v3.Clusters` message in proto3 JSON
//! (`cluster_statuses[].host_statuses[]`, each with `address.socket_address{address,
//! port_value}`, `hostname` and `health_status`). [`parse_clusters`] reads it with the agent's
//! own JSON reader under [`ADMIN_JSON_LIMITS`]; fields we don't use are ignored, defaults
//! omitted by proto3 JSON read as their defaults, an enum value we don't know is kept as
//! text. The format follows Envoy's API documentation of `admin.v3.Clusters`, `ClusterStatus`,
//! `HostStatus` and `HostHealthStatus` (v1.26 to v1.34 list the same fields, and the admin
//! handler `clusters_handler.cc` fills them; see the README).
//!
//! Whether Envoy would send traffic to a host ([`Host::would_send`]): not if it is failing
//! active health checks, ejected as an outlier, excluded by an immediate health-check failure,
//! or its EDS status is `UNHEALTHY`, `DRAINING` or `TIMEOUT`; yes if none of that holds and its
//! EDS status is `HEALTHY`, `DEGRADED`, `UNKNOWN` or absent (degraded hosts still get traffic,
//! at lower priority). An EDS status we don't know leaves the answer unknown, never a guess.
//!
//! Matching ([`match_route`]): a route's backend is an Envoy host of its node when the ports
//! are equal and either the IP literal equals the host's address, or (backend by name) the
//! name equals the host's `hostname` (Envoy reports it for DNS clusters) or the address the
//! probe connected to equals the host's address. Matching spans every cluster of the node.

use std::collections::HashMap;
use std::net::IpAddr;

use crate::json::{self, Value};
use crate::route::Route;

/// Largest `/clusters?format=json` body read. Envoy pretty-prints about 1 KiB per host (eight
/// per-host stats each); 16 MiB is ~15,000 hosts, far above the few hundred an L4 node has.
/// Past it the fetch fails (`sigma_envoy_admin_up 0`) rather than buffer a runaway answer.
pub const MAX_ADMIN_BODY_BYTES: usize = 16 << 20;

/// JSON bounds for the admin body: its size, a depth Envoy's message never nears (it nests 7
/// deep at most, circuit breakers included), and ~45 values per host for 15,000 hosts.
pub const ADMIN_JSON_LIMITS: json::Limits = json::Limits {
    max_input_len: MAX_ADMIN_BODY_BYTES,
    max_depth: 32,
    max_values: 1 << 20,
};

/// The `HostHealthStatus` booleans, in the order of [`Host::flags`] bits.
pub const FLAG_NAMES: [&str; 7] = [
    "failed_active_health_check",
    "failed_outlier_check",
    "failed_active_degraded_check",
    "pending_dynamic_removal",
    "pending_active_hc",
    "excluded_via_immediate_hc_fail",
    "active_hc_timeout",
];

/// Flags that take a host out of Envoy's load balancing.
const EXCLUDING: u8 = 1 << 0 | 1 << 1 | 1 << 5;

/// One upstream host as Envoy reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    /// Index into [`View::clusters`].
    pub cluster: usize,
    pub address: IpAddr,
    pub port: u16,
    /// `hostname` (DNS clusters); empty when absent.
    pub hostname: String,
    /// `health_status.eds_health_status` as text; empty when absent (UNKNOWN).
    pub eds_health_status: String,
    /// Bits of [`FLAG_NAMES`] that are true.
    pub flags: u8,
}

impl Host {
    /// Would Envoy send traffic to this host? `None` when its EDS status is one we don't know.
    pub fn would_send(&self) -> Option<bool> {
        if self.flags & EXCLUDING != 0 {
            return Some(false);
        }
        match self.eds_health_status.as_str() {
            "" | "UNKNOWN" | "HEALTHY" | "DEGRADED" => Some(true),
            "UNHEALTHY" | "DRAINING" | "TIMEOUT" => Some(false),
            _ => None,
        }
    }
}

/// Envoy's hosts of one node. Hosts that are not IP sockets (pipes, internal addresses) are
/// left out: no route can name them. Indexed by address and by host name (with the port), so
/// matching a node's routes costs one lookup each, not a scan of every host.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct View {
    pub clusters: Vec<String>,
    pub hosts: Vec<Host>,
    by_address: HashMap<(IpAddr, u16), Vec<usize>>,
    by_name: HashMap<(String, u16), Vec<usize>>,
}

impl View {
    fn add(&mut self, host: Host) {
        let i = self.hosts.len();
        self.by_address
            .entry((host.address, host.port))
            .or_default()
            .push(i);
        if !host.hostname.is_empty() {
            self.by_name
                .entry((name_key(&host.hostname), host.port))
                .or_default()
                .push(i);
        }
        self.hosts.push(host);
    }
}

/// A host name as the index keys it: lower case, without a trailing dot.
fn name_key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// Parses a `/clusters?format=json` body. Errors say what is wrong and where (for the log and
/// MCP); the admin interface is then counted down for this cycle.
pub fn parse_clusters(body: &[u8]) -> Result<View, String> {
    let doc = json::parse_with_limits(body, &ADMIN_JSON_LIMITS).map_err(|e| match e {
        json::Error::InputTooLong { len } => {
            format!("body of {len} bytes is over {MAX_ADMIN_BODY_BYTES} (MAX_ADMIN_BODY_BYTES)")
        }
        json::Error::TooManyValues { offset } => format!(
            "more than {} JSON values (ADMIN_JSON_LIMITS) at byte {offset}",
            ADMIN_JSON_LIMITS.max_values
        ),
        json::Error::TooDeep { offset } => format!(
            "JSON nested deeper than {} at byte {offset}",
            ADMIN_JSON_LIMITS.max_depth
        ),
        other => format!("not JSON: {other}"),
    })?;
    if doc.as_object().is_none() {
        return Err(format!(
            "expected an admin.v3.Clusters object, got {}",
            doc.kind_name()
        ));
    }
    let mut view = View::default();
    for (i, cluster) in array(&doc, "cluster_statuses", "")?.iter().enumerate() {
        let at = format!("cluster_statuses[{i}]");
        if cluster.as_object().is_none() {
            return Err(format!("{at} is {}, not an object", cluster.kind_name()));
        }
        let name = string(cluster, "name", &at)?.to_owned();
        let index = view.clusters.len();
        view.clusters.push(name);
        for (j, host) in array(cluster, "host_statuses", &at)?.iter().enumerate() {
            let at = format!("{at}.host_statuses[{j}]");
            if let Some(host) = parse_host(host, index, &at)? {
                view.add(host);
            }
        }
    }
    Ok(view)
}

fn parse_host(host: &Value, cluster: usize, at: &str) -> Result<Option<Host>, String> {
    if host.as_object().is_none() {
        return Err(format!("{at} is {}, not an object", host.kind_name()));
    }
    let Some(address) = host.get("address") else {
        return Ok(None);
    };
    let Some(socket) = address.get("socket_address") else {
        return Ok(None); // a pipe or an internal address
    };
    let sat = format!("{at}.address.socket_address");
    let text = string(socket, "address", &sat)?;
    let Ok(ip) = text.parse::<IpAddr>() else {
        return Err(format!(
            "{sat}.address '{}' is not an IP address",
            text.escape_debug()
        ));
    };
    let port = match socket.get("port_value") {
        None => 0,
        Some(v) => v
            .as_u64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            .and_then(|p| u16::try_from(p).ok())
            .ok_or_else(|| format!("{sat}.port_value is not a port"))?,
    };
    let hostname = string(host, "hostname", at)?.to_owned();
    let mut eds = String::new();
    let mut flags = 0u8;
    if let Some(health) = host.get("health_status") {
        let hat = format!("{at}.health_status");
        if health.as_object().is_none() {
            return Err(format!("{hat} is {}, not an object", health.kind_name()));
        }
        eds = match health.get("eds_health_status") {
            None => String::new(),
            Some(Value::String(s)) => s.clone(),
            // proto3 JSON prints an enum number it has no name for as the number.
            Some(Value::Number(n)) => n.raw().to_owned(),
            Some(other) => {
                return Err(format!(
                    "{hat}.eds_health_status is {}, not a string",
                    other.kind_name()
                ))
            }
        };
        for (bit, name) in FLAG_NAMES.iter().enumerate() {
            match health.get(name) {
                None | Some(Value::Bool(false)) => {}
                Some(Value::Bool(true)) => flags |= 1 << bit,
                Some(other) => {
                    return Err(format!(
                        "{hat}.{name} is {}, not a boolean",
                        other.kind_name()
                    ))
                }
            }
        }
    }
    Ok(Some(Host {
        cluster,
        address: ip,
        port,
        hostname,
        eds_health_status: eds,
        flags,
    }))
}

/// `v[key]` as an array; absent is empty (proto3 JSON omits empty repeated fields).
fn array<'a>(v: &'a Value, key: &str, at: &str) -> Result<&'a [Value], String> {
    match v.get(key) {
        None => Ok(&[]),
        Some(Value::Array(items)) => Ok(items),
        Some(other) => Err(format!(
            "{at}{}{key} is {}, not an array",
            if at.is_empty() { "" } else { "." },
            other.kind_name()
        )),
    }
}

/// `v[key]` as a string; absent is empty.
fn string<'a>(v: &'a Value, key: &str, at: &str) -> Result<&'a str, String> {
    match v.get(key) {
        None => Ok(""),
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(format!("{at}.{key} is {}, not a string", other.kind_name())),
    }
}

/// Envoy's verdict on one route's backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvoyMatch {
    /// Envoy would send traffic to every matching host (`Some(true)`), has excluded at least
    /// one (`Some(false)`), or reports a status we don't know (`None`).
    pub healthy: Option<bool>,
    /// The cluster of the first matching host.
    pub cluster: String,
    /// How many hosts matched (a strict_dns cluster has one per address).
    pub hosts: usize,
    /// Union of the true [`FLAG_NAMES`] bits over the matching hosts.
    pub flags: u8,
    /// The EDS status of the first host Envoy excluded, else of the first host.
    pub eds_health_status: String,
}

impl EnvoyMatch {
    /// The names of the true flags.
    pub fn flag_names(&self) -> impl Iterator<Item = &'static str> + '_ {
        FLAG_NAMES
            .iter()
            .enumerate()
            .filter(move |(bit, _)| self.flags & (1 << bit) != 0)
            .map(|(_, name)| *name)
    }
}

/// Matches `route` against its node's `view`; `probed` is the address the last probe
/// connected to, if any. `None` when Envoy has no such host.
pub fn match_route(view: &View, route: &Route, probed: Option<IpAddr>) -> Option<EnvoyMatch> {
    let none = Vec::new();
    let at = |ip: IpAddr| view.by_address.get(&(ip, route.port)).unwrap_or(&none);
    let mut indices: Vec<usize> = match route.ip() {
        Some(ip) => at(ip).clone(),
        None => {
            let mut v = view
                .by_name
                .get(&(name_key(&route.host), route.port))
                .unwrap_or(&none)
                .clone();
            if let Some(ip) = probed {
                v.extend_from_slice(at(ip));
            }
            v
        }
    };
    indices.sort_unstable();
    indices.dedup();
    let mut found: Option<EnvoyMatch> = None;
    let mut unknown = false;
    for host in indices.iter().filter_map(|&i| view.hosts.get(i)) {
        let verdict = host.would_send();
        unknown |= verdict.is_none();
        let m = found.get_or_insert_with(|| EnvoyMatch {
            healthy: Some(true),
            cluster: view.clusters.get(host.cluster).cloned().unwrap_or_default(),
            hosts: 0,
            flags: 0,
            eds_health_status: host.eds_health_status.clone(),
        });
        m.hosts += 1;
        m.flags |= host.flags;
        if verdict == Some(false) && m.healthy != Some(false) {
            m.healthy = Some(false);
            m.eds_health_status = host.eds_health_status.clone();
        }
    }
    if let Some(m) = &mut found {
        if unknown && m.healthy != Some(false) {
            m.healthy = None;
        }
    }
    found
}

/// Which way the two views disagree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mismatch {
    /// The seed's case: Envoy would send traffic to a backend this host can't connect to.
    EnvoyHealthyAgentDown,
    /// Envoy excluded a backend this host can connect to.
    EnvoyUnhealthyAgentUp,
}

impl Mismatch {
    pub const ALL: [Mismatch; 2] = [
        Mismatch::EnvoyHealthyAgentDown,
        Mismatch::EnvoyUnhealthyAgentUp,
    ];

    /// The `direction` label value and the MCP `mismatch` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Mismatch::EnvoyHealthyAgentDown => "envoy_healthy_agent_down",
            Mismatch::EnvoyUnhealthyAgentUp => "envoy_unhealthy_agent_up",
        }
    }

    /// Compares Envoy's verdict with the agent's last probe. `None` when either is unknown
    /// (no admin view, no such host, an unknown status, not probed yet): no false mismatch.
    pub fn between(envoy: Option<bool>, agent: Option<bool>) -> Option<Option<Mismatch>> {
        match (envoy?, agent?) {
            (true, false) => Some(Some(Mismatch::EnvoyHealthyAgentDown)),
            (false, true) => Some(Some(Mismatch::EnvoyUnhealthyAgentUp)),
            _ => Some(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::ClusterType;

    /// A fixture in Envoy's pretty-printed proto3 JSON, field for field as the admin handler
    /// writes it: a static cluster, a strict_dns cluster (hostname per address), a
    /// logical_dns one, IPv6, a pipe host, stats and circuit breakers we ignore.
    pub const FIXTURE: &str = include_str!("../tests/fixtures/envoy/clusters.json");

    fn view() -> View {
        parse_clusters(FIXTURE.as_bytes()).expect("fixture parses")
    }

    #[test]
    fn fixture_hosts_and_health() {
        let v = view();
        assert_eq!(
            v.clusters,
            [
                "static_backends",
                "pool_strict_dns",
                "db_logical_dns",
                "v6_static",
                "uds"
            ]
        );
        let h = |addr: &str, port: u16| {
            v.hosts
                .iter()
                .find(|h| h.address == addr.parse::<IpAddr>().unwrap() && h.port == port)
                .unwrap_or_else(|| panic!("no host {addr}:{port}"))
        };
        assert_eq!(h("127.0.0.1", 8080).would_send(), Some(true));
        assert_eq!(h("127.0.0.1", 8080).eds_health_status, "HEALTHY");
        let failed = h("127.0.0.1", 8081);
        assert_eq!(failed.would_send(), Some(false));
        assert_eq!(failed.flags, 1 << 0 | 1 << 6);
        assert_eq!(h("127.0.0.2", 443).hostname, "pool.example.internal");
        assert_eq!(h("127.0.0.3", 443).would_send(), Some(false)); // outlier
        assert_eq!(h("::1", 9000).would_send(), Some(true));
        assert_eq!(h("::1", 9001).would_send(), None); // unknown EDS status number
        assert_eq!(h("::1", 9001).eds_health_status, "7");
        assert_eq!(h("127.0.0.5", 5432).would_send(), Some(true)); // DEGRADED still serves
        assert_eq!(h("127.0.0.6", 5432).would_send(), Some(false)); // DRAINING
                                                                    // The pipe host is left out.
        assert_eq!(v.hosts.len(), 10);
    }

    fn route(host: &str, port: u16) -> Route {
        Route::new("n", "r", 1, host, port).unwrap()
    }

    #[test]
    fn matching_by_literal_hostname_and_probed_address() {
        let v = view();
        let m = match_route(&v, &route("127.0.0.1", 8080), None).unwrap();
        assert_eq!(
            (m.healthy, m.hosts, m.cluster.as_str()),
            (Some(true), 1, "static_backends")
        );
        let m = match_route(&v, &route("127.0.0.1", 8081), None).unwrap();
        assert_eq!(m.healthy, Some(false));
        assert_eq!(
            m.flag_names().collect::<Vec<_>>(),
            ["failed_active_health_check", "active_hc_timeout"]
        );
        assert_eq!(match_route(&v, &route("127.0.0.1", 9), None), None);
        // strict_dns: three hosts share the hostname; one is an outlier.
        let strict = route("POOL.example.internal.", 443)
            .with_envoy(None, ClusterType::StrictDns, None)
            .unwrap();
        let m = match_route(&v, &strict, None).unwrap();
        assert_eq!((m.healthy, m.hosts), (Some(false), 3));
        assert_eq!(m.flag_names().collect::<Vec<_>>(), ["failed_outlier_check"]);
        // A name Envoy does not report as hostname matches by the probed address.
        let m = match_route(
            &v,
            &route("db.other", 5432),
            Some("127.0.0.5".parse().unwrap()),
        );
        assert_eq!(m.unwrap().healthy, Some(true));
        assert_eq!(match_route(&v, &route("db.other", 5432), None), None);
        // IPv6, and an unknown status: no verdict.
        assert_eq!(
            match_route(&v, &route("::1", 9000), None).unwrap().healthy,
            Some(true)
        );
        assert_eq!(
            match_route(&v, &route("::1", 9001), None).unwrap().healthy,
            None
        );
    }

    #[test]
    fn mismatch_directions() {
        use Mismatch::*;
        assert_eq!(
            Mismatch::between(Some(true), Some(false)),
            Some(Some(EnvoyHealthyAgentDown))
        );
        assert_eq!(
            Mismatch::between(Some(false), Some(true)),
            Some(Some(EnvoyUnhealthyAgentUp))
        );
        assert_eq!(Mismatch::between(Some(true), Some(true)), Some(None));
        assert_eq!(Mismatch::between(Some(false), Some(false)), Some(None));
        assert_eq!(Mismatch::between(None, Some(false)), None);
        assert_eq!(Mismatch::between(Some(true), None), None);
    }

    #[test]
    fn proto3_defaults_and_errors() {
        // Omitted repeated fields and messages are empty.
        assert_eq!(parse_clusters(b"{}").unwrap(), View::default());
        let v = parse_clusters(br#"{"cluster_statuses":[{"name":"c"}]}"#).unwrap();
        assert_eq!((v.clusters.len(), v.hosts.len()), (1, 0));
        let bare = br#"{"cluster_statuses":[{"host_statuses":[{"address":{"socket_address":{"address":"127.0.0.9"}}}]}]}"#;
        let v = parse_clusters(bare).unwrap();
        assert_eq!(v.hosts[0].port, 0);
        assert_eq!(v.hosts[0].would_send(), Some(true));
        let errors: [(&[u8], &str); 8] = [
            (b"[]", "got array"),
            (b"not json", "not JSON"),
            (br#"{"cluster_statuses":{}}"#, "cluster_statuses is object, not an array"),
            (br#"{"cluster_statuses":[1]}"#, "cluster_statuses[0] is number"),
            (
                br#"{"cluster_statuses":[{"host_statuses":[{"address":{"socket_address":{"address":"x"}}}]}]}"#,
                "'x' is not an IP address",
            ),
            (
                br#"{"cluster_statuses":[{"host_statuses":[{"address":{"socket_address":{"address":"::1","port_value":70000}}}]}]}"#,
                "port_value is not a port",
            ),
            (
                br#"{"cluster_statuses":[{"host_statuses":[{"address":{"socket_address":{"address":"::1"}},"health_status":{"failed_outlier_check":"yes"}}]}]}"#,
                "failed_outlier_check is string, not a boolean",
            ),
            (b"{\"cluster_statuses\":[", "not JSON"),
        ];
        for (body, want) in errors {
            let e = parse_clusters(body).unwrap_err();
            assert!(e.contains(want), "{e}");
        }
        let deep = format!("{}{}", "[".repeat(40), "]".repeat(40));
        assert!(parse_clusters(deep.as_bytes())
            .unwrap_err()
            .contains("deeper than 32"));
    }
}
