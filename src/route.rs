//! Routes: what the agent probes, and the parser of the routes file (the embedded source).
//!
//! A route is one Envoy L4 listener of one node and the backend it forwards to. Both route
//! sources (this file format, and the fleet's PostgreSQL behind the `postgres` feature) yield
//! the same `Vec<Route>`; nothing else in the agent knows where routes came from.
//!
//! File format, one route per line, whitespace-separated:
//! `NODE ROUTE LISTEN_PORT HOST:PORT [KEY=VALUE ...]`, e.g.
//! `layer4-01 tcp-proxy-hk01 10001 hk013.example.com:443 admin_port=9901 cluster_type=strict_dns`.
//! `#` starts a comment, blank lines are skipped, IPv6 backends are written `[2001:db8::1]:443`.
//! A UTF-8 byte-order mark at the start (editors on Windows add one) is skipped; anywhere else
//! it is an error, as are other invisible characters in a name.
//! A route name is any run of non-whitespace characters (it may contain `"` or `\`).
//!
//! The optional fields say how Envoy itself reaches the backend (the fleet database's
//! `envoy_nodes.admin_port`, `envoy_routes.cluster_type`, `envoy_routes.connect_timeout_secs`):
//! - `admin_port=9901`: Envoy's admin interface of this node on 127.0.0.1; every route of a
//!   node that gives it must give the same port (a node has one admin interface).
//! - `cluster_type=static|strict_dns|logical_dns`: how Envoy turns the host into addresses;
//!   the prober probes as Envoy connects (see `prober.rs`). Not given: the first address.
//! - `connect_timeout=2s` (or `500ms`, `1.5`): Envoy's connect timeout, used as this route's
//!   probe deadline (still clamped to 3 s, and raised to 10 ms, `config::MIN_PROBE_TIMEOUT`).
//!
//! Each key at most once per line; an unknown key or a bad value is a `file:line` error.
//!
//! The parser is pure (`&str` in, routes or a `file:line` error out) so it is tested and
//! benchmarked without files. Limits: [`MAX_ROUTES`], [`MAX_FIELD_LEN`], [`MAX_FILE_BYTES`].

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

/// Most routes one agent probes. At one route at a time under a 3 s clamp, 10,000 routes is
/// already a worst-case cycle of 8 hours; a larger set is a configuration mistake, not a load.
pub const MAX_ROUTES: usize = 10_000;
/// Longest node name, route name or host. DNS names are at most 253 characters; node and
/// route names in the fleet's schema are short identifiers. Bounds label sizes in /metrics.
pub const MAX_FIELD_LEN: usize = 253;
/// Largest routes file read: 10,000 routes of ~100 bytes plus comments fit with room to spare.
pub const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// Longest `connect_timeout` accepted from a source. Envoy's own default is 5 s and probes are
/// clamped to 3 s anyway; an hour is a typo (`3600` meant as milliseconds), not a setting.
pub const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(3600);

/// How Envoy's cluster turns the backend host into addresses (`envoy_routes.cluster_type`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ClusterType {
    /// Not given: probe the first address, as before these fields existed.
    #[default]
    Unspecified,
    /// The host is an IP literal, connected to as written.
    Static,
    /// Envoy resolves the name and balances across every address: probe each.
    StrictDns,
    /// Envoy resolves the name and connects to the first address.
    LogicalDns,
}

impl ClusterType {
    /// Parses the routes-file / database spelling.
    pub fn parse(s: &str) -> Option<ClusterType> {
        match s {
            "static" => Some(ClusterType::Static),
            "strict_dns" => Some(ClusterType::StrictDns),
            "logical_dns" => Some(ClusterType::LogicalDns),
            _ => None,
        }
    }

    /// The spelling in the routes file and in MCP; `None` when not given.
    pub fn as_str(self) -> Option<&'static str> {
        match self {
            ClusterType::Unspecified => None,
            ClusterType::Static => Some("static"),
            ClusterType::StrictDns => Some("strict_dns"),
            ClusterType::LogicalDns => Some("logical_dns"),
        }
    }
}

/// One route to probe. `backend` is the label value as the operator wrote it (`host:port`,
/// `[v6]:port`); `host` is without brackets. Built only by [`Route::new`], which validates,
/// and [`Route::with_envoy`], which adds how Envoy connects (validated too).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub node: String,
    pub name: String,
    pub listen_port: u16,
    pub host: String,
    pub port: u16,
    pub backend: String,
    /// `host` parsed once, when it is an IP literal (probes don't re-parse it every cycle).
    ip: Option<IpAddr>,
    /// Envoy's admin interface of this route's node, on 127.0.0.1 (`envoy_nodes.admin_port`).
    pub admin_port: Option<u16>,
    /// How Envoy resolves the host (`envoy_routes.cluster_type`).
    pub cluster_type: ClusterType,
    /// Envoy's connect timeout for this backend (`envoy_routes.connect_timeout_secs`), not
    /// clamped here: the prober clamps it to 3 s.
    pub connect_timeout: Option<Duration>,
}

impl Route {
    /// Builds a route from already-split fields, validating each (shared by both sources).
    pub fn new(
        node: &str,
        name: &str,
        listen_port: u16,
        host: &str,
        port: u16,
    ) -> Result<Route, String> {
        check_field("node", node)?;
        check_field("route name", name)?;
        if listen_port == 0 {
            return Err("listen port 0 is not a port; use 1-65535".into());
        }
        check_host(host)?;
        if port == 0 {
            return Err(format!(
                "backend port 0 for '{host}' is not a port; use 1-65535"
            ));
        }
        let backend = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        Ok(Route {
            node: node.to_owned(),
            name: name.to_owned(),
            listen_port,
            host: host.to_owned(),
            port,
            backend,
            ip: host.parse().ok(),
            admin_port: None,
            cluster_type: ClusterType::Unspecified,
            connect_timeout: None,
        })
    }

    /// Adds how Envoy reaches this backend, validating each field: `admin_port` is 1-65535,
    /// `static` needs an IP literal, `connect_timeout` is above 0 and at most
    /// [`MAX_CONNECT_TIMEOUT`]. Whether the routes of one node agree on the admin port is
    /// checked over the whole set by [`check_admin_ports`].
    pub fn with_envoy(
        mut self,
        admin_port: Option<u16>,
        cluster_type: ClusterType,
        connect_timeout: Option<Duration>,
    ) -> Result<Route, String> {
        if admin_port == Some(0) {
            return Err("admin_port 0 is not a port; use 1-65535".into());
        }
        if cluster_type == ClusterType::Static && self.ip.is_none() {
            return Err(format!(
                "cluster_type static needs an IP address, but the backend host is the name '{}' (use strict_dns or logical_dns)",
                self.host
            ));
        }
        if let Some(t) = connect_timeout {
            if t.is_zero() {
                return Err("connect_timeout must be above 0".into());
            }
            if t > MAX_CONNECT_TIMEOUT {
                return Err(format!(
                    "connect_timeout {t:?} is over {MAX_CONNECT_TIMEOUT:?} (MAX_CONNECT_TIMEOUT)"
                ));
            }
        }
        self.admin_port = admin_port;
        self.cluster_type = cluster_type;
        self.connect_timeout = connect_timeout;
        Ok(self)
    }

    /// The host as an IP address, when it is a literal.
    pub fn ip(&self) -> Option<IpAddr> {
        self.ip
    }
}

/// Checks that the routes of each node that give an admin port give the same one (a node has
/// one admin interface). The error names the node, both ports and the two routes, and the
/// index of the second route so a file parser can point at its line.
pub fn check_admin_ports(routes: &[Route]) -> Result<(), (usize, String)> {
    let mut first: HashMap<&str, usize> = HashMap::new();
    for (i, r) in routes.iter().enumerate() {
        let Some(port) = r.admin_port else { continue };
        match first.get(r.node.as_str()) {
            None => {
                first.insert(&r.node, i);
            }
            Some(&j) if routes[j].admin_port == Some(port) => {}
            Some(&j) => {
                return Err((
                    i,
                    format!(
                        "node '{}': admin_port={port} here but admin_port={} on route '{}' (routes of one node must agree)",
                        r.node,
                        routes[j].admin_port.unwrap_or(0),
                        routes[j].name
                    ),
                ))
            }
        }
    }
    Ok(())
}

/// A routes-file error: where, and what is wrong.
#[derive(Debug, PartialEq, Eq)]
pub struct RouteError {
    pub line: usize,
    pub message: String,
}

impl fmt::Display for RouteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

/// Parses a whole routes file. Errors name the line; the first error wins.
pub fn parse_routes(text: &str) -> Result<Vec<Route>, RouteError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut routes: Vec<Route> = Vec::new();
    let mut lines: Vec<usize> = Vec::new();
    let mut seen: HashMap<(String, u16), usize> = HashMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let err = |message: String| RouteError { line, message };
        let content = match raw.find('#') {
            Some(at) => &raw[..at],
            None => raw,
        };
        let fields: Vec<&str> = content.split_whitespace().collect();
        if fields.is_empty() {
            continue;
        }
        if fields.len() < 4 {
            return Err(err(format!(
                "expected 4 fields `NODE ROUTE LISTEN_PORT HOST:PORT` (then optional KEY=VALUE fields), found {}",
                fields.len()
            )));
        }
        if routes.len() == MAX_ROUTES {
            return Err(err(format!("more than {MAX_ROUTES} routes (MAX_ROUTES)")));
        }
        let listen_port = parse_port(fields[2])
            .ok_or_else(|| err(format!("listen port '{}' is not 1-65535", fields[2])))?;
        let (host, port) = split_host_port(fields[3]).map_err(err)?;
        let route = Route::new(fields[0], fields[1], listen_port, host, port).map_err(err)?;
        let (admin_port, cluster_type, connect_timeout) =
            parse_options(&fields[4..]).map_err(err)?;
        let route = route
            .with_envoy(admin_port, cluster_type, connect_timeout)
            .map_err(err)?;
        let key = (route.node.clone(), route.listen_port);
        if let Some(&other) = seen.get(&key) {
            return Err(err(format!(
                "node '{}' listen port {} is already used by route '{}' (node and listen port must be unique)",
                route.node,
                route.listen_port,
                routes[other].name
            )));
        }
        seen.insert(key, routes.len());
        routes.push(route);
        lines.push(line);
    }
    check_admin_ports(&routes).map_err(|(i, message)| RouteError {
        line: lines.get(i).copied().unwrap_or(0),
        message,
    })?;
    Ok(routes)
}

/// Envoy's view of a route, from the optional fields of a routes-file line.
type Options = (Option<u16>, ClusterType, Option<Duration>);

/// Parses the optional `KEY=VALUE` fields after the backend.
fn parse_options(fields: &[&str]) -> Result<Options, String> {
    let mut admin_port = None;
    let mut cluster_type = None;
    let mut connect_timeout = None;
    for field in fields {
        let Some((key, value)) = field.split_once('=') else {
            return Err(format!(
                "unexpected field '{}' after the backend: expected KEY=VALUE with KEY admin_port, cluster_type or connect_timeout",
                field.escape_debug()
            ));
        };
        let twice = || format!("{key} is given twice");
        match key {
            "admin_port" => {
                let port = parse_port(value)
                    .ok_or_else(|| format!("admin_port '{}' is not 1-65535", value.escape_debug()))?;
                if admin_port.replace(port).is_some() {
                    return Err(twice());
                }
            }
            "cluster_type" => {
                let t = ClusterType::parse(value).ok_or_else(|| {
                    format!(
                        "cluster_type '{}' is not static, strict_dns or logical_dns",
                        value.escape_debug()
                    )
                })?;
                if cluster_type.replace(t).is_some() {
                    return Err(twice());
                }
            }
            "connect_timeout" => {
                let t = crate::config::parse_duration(value).map_err(|e| {
                    format!("connect_timeout '{}': {e}", value.escape_debug())
                })?;
                if connect_timeout.replace(t).is_some() {
                    return Err(twice());
                }
            }
            _ => {
                return Err(format!(
                    "unknown key '{}': the optional fields are admin_port, cluster_type and connect_timeout",
                    key.escape_debug()
                ))
            }
        }
    }
    Ok((
        admin_port,
        cluster_type.unwrap_or_default(),
        connect_timeout,
    ))
}

/// Splits `host:port` or `[v6]:port`.
pub fn split_host_port(s: &str) -> Result<(&str, u16), String> {
    let bad = || format!("backend '{s}' is not HOST:PORT (IPv6 as [2001:db8::1]:443)");
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or_else(bad)?;
        let port = after.strip_prefix(':').ok_or_else(bad)?;
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!(
                "backend '{s}': '{host}' in brackets is not an IPv6 address"
            ));
        }
        (host, port)
    } else {
        let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
        if host.contains(':') {
            return Err(bad());
        }
        (host, port)
    };
    let port =
        parse_port(port).ok_or_else(|| format!("backend '{s}': port '{port}' is not 1-65535"))?;
    Ok((host, port))
}

fn parse_port(s: &str) -> Option<u16> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<u16>().ok().filter(|&p| p != 0)
}

fn check_field(what: &str, v: &str) -> Result<(), String> {
    if v.is_empty() {
        return Err(format!("{what} is empty"));
    }
    if v.len() > MAX_FIELD_LEN {
        return Err(format!(
            "{what} is {} bytes long, over {MAX_FIELD_LEN}",
            v.len()
        ));
    }
    if v.chars()
        .any(|c| c.is_whitespace() || c.is_control() || is_invisible(c))
    {
        return Err(format!(
            "{what} '{}' contains whitespace, control or invisible characters",
            v.escape_debug()
        ));
    }
    Ok(())
}

/// Characters that show as nothing: a byte-order mark, zero-width spaces and joiners, the
/// word joiner. In a name they make two routes look alike in /metrics and alerts.
fn is_invisible(c: char) -> bool {
    matches!(c, '\u{feff}' | '\u{200b}'..='\u{200d}' | '\u{2060}')
}

/// A host is an IP literal or a DNS name (letters, digits, `-`, `_`, `.`; labels of 1-63).
fn check_host(host: &str) -> Result<(), String> {
    check_field("backend host", host)?;
    if host.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    let ok = !name.is_empty()
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "backend host '{}' is neither an IP address nor a DNS name",
            host.escape_debug()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_comments_blank_lines_ipv6_and_odd_names() {
        let text = "# fleet routes\n\nlayer4-01 tcp-proxy-hk01 10001 hk013.example.com:443 # main\n\
                    layer4-01 we\"ird\\name 10002 [2001:db8::1]:8443\n  layer4-02\ttcp 10001 192.0.2.7:22\n";
        let routes = parse_routes(text).unwrap();
        assert_eq!(routes.len(), 3);
        assert_eq!(
            routes[0],
            Route {
                node: "layer4-01".into(),
                name: "tcp-proxy-hk01".into(),
                listen_port: 10001,
                host: "hk013.example.com".into(),
                port: 443,
                backend: "hk013.example.com:443".into(),
                ip: None,
                admin_port: None,
                cluster_type: ClusterType::Unspecified,
                connect_timeout: None,
            }
        );
        assert_eq!(routes[1].name, "we\"ird\\name");
        assert_eq!(routes[1].host, "2001:db8::1");
        assert_eq!(routes[1].backend, "[2001:db8::1]:8443");
        assert_eq!(routes[2].ip(), Some("192.0.2.7".parse().unwrap()));
    }

    #[test]
    fn errors_name_the_line_and_the_problem() {
        let cases = [
            ("a b 1\n", 1, "expected 4 fields"),
            ("\na b 0 h:1\n", 2, "listen port '0'"),
            ("a b 70000 h:1\n", 1, "listen port '70000'"),
            ("a b 1 h\n", 1, "not HOST:PORT"),
            ("a b 1 h:0\n", 1, "port '0'"),
            ("a b 1 2001:db8::1:443\n", 1, "not HOST:PORT"),
            ("a b 1 [nope]:443\n", 1, "not an IPv6 address"),
            (
                "a b 1 bad/host:443\n",
                1,
                "neither an IP address nor a DNS name",
            ),
            ("a b 1 h:1\na c 1 g:2\n", 2, "already used by route 'b'"),
            ("a b 1 h:1 admin_port=0\n", 1, "admin_port '0'"),
            ("a b 1 h:1 admin_port=x\n", 1, "admin_port 'x'"),
            ("a b 1 h:1 cluster_type=eds\n", 1, "not static, strict_dns"),
            ("a b 1 h:1 cluster_type=static\n", 1, "needs an IP address"),
            ("a b 1 h:1 connect_timeout=0s\n", 1, "above 0"),
            ("a b 1 h:1 connect_timeout=2x\n", 1, "connect_timeout '2x'"),
            ("a b 1 h:1 connect_timeout=2h\n", 1, "MAX_CONNECT_TIMEOUT"),
            ("a b 1 h:1 colour=blue\n", 1, "unknown key 'colour'"),
            ("a b 1 h:1 extra\n", 1, "unexpected field 'extra'"),
            ("a b 1 h:1 admin_port=1 admin_port=1\n", 1, "given twice"),
            (
                "a b 1 h:1 admin_port=9901\n# c\na c 2 h:1 admin_port=9902\n",
                3,
                "admin_port=9902 here but admin_port=9901 on route 'b'",
            ),
        ];
        for (text, line, want) in cases {
            let e = parse_routes(text).unwrap_err();
            assert_eq!(e.line, line, "{text:?}");
            assert!(e.message.contains(want), "{text:?}: {e}");
        }
    }

    #[test]
    fn shipped_examples_parse() {
        assert!(
            parse_routes(include_str!("../scripts/routes.example"))
                .unwrap()
                .len()
                >= 5
        );
        assert_eq!(
            parse_routes(include_str!("../scripts/routes.local"))
                .unwrap()
                .len(),
            3
        );
    }

    #[test]
    fn byte_order_mark_is_skipped_at_the_start_only() {
        let routes = parse_routes("\u{feff}node r 1 h:1\n").unwrap();
        assert_eq!(routes[0].node, "node");
        let e = parse_routes("a r 1 h:1\n\u{feff}b r 1 h:1\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.message.contains("invisible"), "{e}");
        assert!(parse_routes("a r\u{200b} 1 h:1\n").is_err());
    }

    #[test]
    fn optional_envoy_fields() {
        let text = "n a 1 127.0.0.1:1 admin_port=9901 cluster_type=static connect_timeout=250ms\n\
                    n b 2 svc.example:80 cluster_type=strict_dns\n\
                    n c 3 svc.example:80 connect_timeout=2 cluster_type=logical_dns admin_port=9901\n\
                    m d 1 h:1 admin_port=9902\n";
        let routes = parse_routes(text).unwrap();
        assert_eq!(routes[0].admin_port, Some(9901));
        assert_eq!(routes[0].cluster_type, ClusterType::Static);
        assert_eq!(routes[0].connect_timeout, Some(Duration::from_millis(250)));
        assert_eq!(routes[1].admin_port, None);
        assert_eq!(routes[1].cluster_type, ClusterType::StrictDns);
        assert_eq!(routes[1].connect_timeout, None);
        assert_eq!(routes[2].cluster_type, ClusterType::LogicalDns);
        assert_eq!(routes[2].connect_timeout, Some(Duration::from_secs(2)));
        assert_eq!(routes[3].admin_port, Some(9902));
        // Defaults are today's behaviour: Route::new alone equals a line without options.
        let plain = Route::new("n", "b", 2, "svc.example", 80).unwrap();
        assert_eq!(plain.cluster_type, ClusterType::Unspecified);
        assert_eq!(plain.admin_port, None);
        assert_eq!(plain.connect_timeout, None);
    }

    #[test]
    fn with_envoy_validates_for_the_database_source() {
        let r = Route::new("n", "r", 1, "10.0.0.1", 5).unwrap();
        let ok = r
            .clone()
            .with_envoy(
                Some(9901),
                ClusterType::Static,
                Some(Duration::from_secs(1)),
            )
            .unwrap();
        assert_eq!(ok.admin_port, Some(9901));
        assert!(r
            .clone()
            .with_envoy(Some(0), ClusterType::Unspecified, None)
            .is_err());
        assert!(r
            .with_envoy(None, ClusterType::Unspecified, Some(Duration::ZERO))
            .is_err());
        let named = Route::new("n", "r", 1, "db.example", 5).unwrap();
        assert!(named.with_envoy(None, ClusterType::Static, None).is_err());
    }

    #[test]
    fn same_port_on_two_nodes_is_fine() {
        assert_eq!(parse_routes("a r 1 h:1\nb r 1 h:1\n").unwrap().len(), 2);
    }

    #[test]
    fn max_routes_is_enforced() {
        let mut text = String::new();
        for i in 0..MAX_ROUTES {
            text.push_str(&format!("n{} r {} 127.0.0.1:1\n", i / 60000, i % 60000 + 1));
        }
        assert_eq!(parse_routes(&text).unwrap().len(), MAX_ROUTES);
        text.push_str("m r 1 127.0.0.1:1\n");
        let e = parse_routes(&text).unwrap_err();
        assert_eq!(e.line, MAX_ROUTES + 1);
        assert!(e.message.contains("MAX_ROUTES"));
    }

    #[test]
    fn field_length_is_bounded() {
        let long = "x".repeat(MAX_FIELD_LEN + 1);
        let e = parse_routes(&format!("{long} r 1 h:1\n")).unwrap_err();
        assert!(e.message.contains("over 253"), "{e}");
    }
}
