//! Routes: what the agent probes, and the parser of the routes file (the embedded source).
//!
//! A route is one Envoy L4 listener of one node and the backend it forwards to. Both route
//! sources (this file format, and the fleet's PostgreSQL behind the `postgres` feature) yield
//! the same `Vec<Route>`; nothing else in the agent knows where routes came from.
//!
//! File format, one route per line, whitespace-separated:
//! `NODE ROUTE LISTEN_PORT HOST:PORT`, e.g. `layer4-01 tcp-proxy-hk01 10001 hk013.example.com:443`.
//! `#` starts a comment, blank lines are skipped, IPv6 backends are written `[2001:db8::1]:443`.
//! A UTF-8 byte-order mark at the start (editors on Windows add one) is skipped; anywhere else
//! it is an error, as are other invisible characters in a name.
//! A route name is any run of non-whitespace characters (it may contain `"` or `\`).
//!
//! The parser is pure (`&str` in, routes or a `file:line` error out) so it is tested and
//! benchmarked without files. Limits: [`MAX_ROUTES`], [`MAX_FIELD_LEN`], [`MAX_FILE_BYTES`].

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;

/// Most routes one agent probes. At one route at a time under a 3 s clamp, 10,000 routes is
/// already a worst-case cycle of 8 hours; a larger set is a configuration mistake, not a load.
pub const MAX_ROUTES: usize = 10_000;
/// Longest node name, route name or host. DNS names are at most 253 characters; node and
/// route names in the fleet's schema are short identifiers. Bounds label sizes in /metrics.
pub const MAX_FIELD_LEN: usize = 253;
/// Largest routes file read: 10,000 routes of ~100 bytes plus comments fit with room to spare.
pub const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// One route to probe. `backend` is the label value as the operator wrote it (`host:port`,
/// `[v6]:port`); `host` is without brackets. Built only by [`Route::new`], which validates.
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
        })
    }

    /// The host as an IP address, when it is a literal.
    pub fn ip(&self) -> Option<IpAddr> {
        self.ip
    }
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
        if fields.len() != 4 {
            return Err(err(format!(
                "expected 4 fields `NODE ROUTE LISTEN_PORT HOST:PORT`, found {}",
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
    }
    Ok(routes)
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
