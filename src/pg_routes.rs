//! The cycle's two queries and the pure conversion of their rows into routes (feature
//! `postgres`): [`VPS_SQL`] finds this VPS, [`ROUTES_SQL`] reads its active routes as text, and
//! [`build_routes`] validates them, skipping a bad row with a message that names it. Kept apart
//! from the driver (`source_pg`) and the transport (`pg_conn`) because it does no I/O: every
//! exclusion and every bad value is unit-tested here without a server.
//!
//! Limits: at most [`MAX_ROUTES`] routes (the rest cut with one message); text fields longer
//! than [`MAX_FIELD_LEN`] are cut by the server to one character over, then rejected.

use std::time::Duration;

use crate::pg_wire;
use crate::route::{ClusterType, Route, MAX_FIELD_LEN, MAX_ROUTES};

/// The registration query: our `vps` rows. Exactly one is expected.
pub const VPS_SQL: &str = "SELECT id::text FROM vps \
     WHERE hostname = $1 AND (status IS NULL OR status NOT IN ('retired', 'deleted')) \
     ORDER BY id LIMIT $2";

/// The routes query: active routes with a backend, of active nodes, of the VPS found by
/// [`VPS_SQL`] (same predicate, same snapshot: the transaction is REPEATABLE READ). Its rows are
/// used only when that found exactly one VPS. Text fields are cut to one character over
/// [`MAX_FIELD_LEN`] so a huge value costs nothing and still fails validation. `LIMIT $2` is
/// [`MAX_ROUTES`] + 1, to notice the cap. The last three columns say how Envoy connects
/// (`envoy_nodes.admin_port`, `envoy_routes.cluster_type`, `connect_timeout_secs`; NULL when
/// not set). Indexes: `vps(hostname)`, the UNIQUE
/// `envoy_nodes(vps_id, node_id)` and `envoy_routes(envoy_node_id, listen_port)`.
pub const ROUTES_SQL: &str = "SELECT left(n.node_id, 254), left(r.name, 254), \
     r.listen_port::integer, left(r.backend_host, 254), r.backend_port::integer, \
     n.admin_port::integer, left(r.cluster_type, 32), r.connect_timeout_secs::integer \
     FROM vps v \
     JOIN envoy_nodes n ON n.vps_id = v.id \
     JOIN envoy_routes r ON r.envoy_node_id = n.id \
     WHERE v.hostname = $1 AND (v.status IS NULL OR v.status NOT IN ('retired', 'deleted')) \
       AND n.status = 'active' AND r.status = 'active' \
       AND r.backend_host IS NOT NULL AND r.backend_port IS NOT NULL \
     ORDER BY n.node_id, r.listen_port \
     LIMIT $2";

// `left(.., 254)` above is MAX_FIELD_LEN + 1; keep them in step.
const _: () = assert!(MAX_FIELD_LEN + 1 == 254);

/// Rows of [`ROUTES_SQL`] (text) → routes, and one message per skipped row (or for the cap).
pub(crate) fn routes_from_rows(rows: Vec<pg_wire::Row>) -> (Vec<Route>, Vec<String>) {
    let raw = rows.into_iter().map(|row| {
        let mut cols = row.into_iter();
        let mut text = |what: &str| -> Result<String, String> {
            cols.next()
                .flatten()
                .ok_or_else(|| format!("{what} is NULL or missing"))
        };
        let node = text("node_id")?;
        let name = text("name")?;
        let listen_port = text("listen_port")?;
        let host = text("backend_host")?;
        let port = text("backend_port")?;
        let admin_port = cols.next().flatten();
        let cluster_type = cols.next().flatten();
        let connect_timeout = cols.next().flatten();
        let int = |v: &str, what: &str| {
            v.parse::<i32>()
                .map_err(|_| format!("{what} '{}' is not an integer", v.escape_debug()))
        };
        let opt_int = |v: Option<String>, what: &str| v.map(|v| int(&v, what)).transpose();
        Ok(RawRoute {
            node,
            name,
            listen_port: int(&listen_port, "listen_port")?,
            host,
            port: int(&port, "backend_port")?,
            admin_port: opt_int(admin_port, "admin_port")?,
            cluster_type,
            connect_timeout_secs: opt_int(connect_timeout, "connect_timeout_secs")?,
        })
    });
    build_routes(raw)
}

/// One row of [`ROUTES_SQL`], as the database typed it.
#[derive(Debug, Clone)]
pub struct RawRoute {
    pub node: String,
    pub name: String,
    pub listen_port: i32,
    pub host: String,
    pub port: i32,
    /// How Envoy connects; `None` is SQL NULL.
    pub admin_port: Option<i32>,
    pub cluster_type: Option<String>,
    pub connect_timeout_secs: Option<i32>,
}

/// Validates rows into routes: a bad row is skipped with a message naming it; more than
/// [`MAX_ROUTES`] are cut with a message. Pure, for unit tests.
pub fn build_routes<I>(rows: I) -> (Vec<Route>, Vec<String>)
where
    I: IntoIterator<Item = Result<RawRoute, String>>,
{
    let mut routes = Vec::new();
    let mut skipped = Vec::new();
    for (i, raw) in rows.into_iter().enumerate() {
        if routes.len() == MAX_ROUTES {
            skipped.push(format!(
                "database: more than {MAX_ROUTES} active routes for this VPS; probing the first \
                 {MAX_ROUTES} by node and listen port (MAX_ROUTES)"
            ));
            break;
        }
        let raw = match raw {
            Ok(raw) => raw,
            Err(e) => {
                skipped.push(format!("database: route row {} skipped: {e}", i + 1));
                continue;
            }
        };
        let route = port_of(raw.listen_port, "listen port").and_then(|listen_port| {
            let port = port_of(raw.port, "backend port")?;
            Route::new(&raw.node, &raw.name, listen_port, &raw.host, port)
        });
        match route {
            Ok(route) => routes.push(with_envoy(route, &raw, &mut skipped)),
            Err(e) => skipped.push(format!(
                "database: route '{}' of node '{}' skipped: {e}",
                raw.name.escape_debug(),
                raw.node.escape_debug()
            )),
        }
    }
    (routes, skipped)
}

/// Adds how Envoy connects to a valid route. A bad value there does not lose the route: it is
/// probed as if the value were not set, with a message naming it.
fn with_envoy(route: Route, raw: &RawRoute, problems: &mut Vec<String>) -> Route {
    let mut problem = |what: String| {
        problems.push(format!(
            "database: route '{}' of node '{}': {what}; probing it as if not set",
            raw.name.escape_debug(),
            raw.node.escape_debug()
        ))
    };
    let admin_port = match raw.admin_port {
        None => None,
        Some(p) => match port_of(p, "admin_port") {
            Ok(p) => Some(p),
            Err(e) => {
                problem(e);
                None
            }
        },
    };
    let cluster_type = match raw.cluster_type.as_deref() {
        None | Some("") => ClusterType::Unspecified,
        Some(t) => ClusterType::parse(t).unwrap_or_else(|| {
            problem(format!(
                "cluster_type '{}' is not one of static, strict_dns, logical_dns",
                t.escape_debug()
            ));
            ClusterType::Unspecified
        }),
    };
    let connect_timeout = match raw.connect_timeout_secs {
        None => None,
        Some(secs) if secs > 0 => Some(Duration::from_secs(secs as u64)),
        Some(secs) => {
            problem(format!("connect_timeout_secs {secs} is not above 0"));
            None
        }
    };
    match route
        .clone()
        .with_envoy(admin_port, cluster_type, connect_timeout)
    {
        Ok(r) => r,
        Err(e) => {
            problem(e);
            route
        }
    }
}

fn port_of(v: i32, what: &str) -> Result<u16, String> {
    u16::try_from(v)
        .ok()
        .filter(|&p| p != 0)
        .ok_or_else(|| format!("{what} {v} is not 1-65535"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(node: &str, name: &str, listen_port: i32, host: &str, port: i32) -> RawRoute {
        RawRoute {
            node: node.into(),
            name: name.into(),
            listen_port,
            host: host.into(),
            port,
            admin_port: None,
            cluster_type: None,
            connect_timeout_secs: None,
        }
    }

    #[test]
    fn envoy_columns_fill_the_route_and_bad_ones_only_warn() {
        let envoy = |admin: Option<i32>, ct: Option<&str>, t: Option<i32>, host: &str| {
            let mut r = raw("n", "r", 10001, host, 443);
            r.admin_port = admin;
            r.cluster_type = ct.map(str::to_owned);
            r.connect_timeout_secs = t;
            Ok(r)
        };
        let (routes, problems) = build_routes(vec![
            envoy(Some(9901), Some("strict_dns"), Some(2), "hk01.example.com"),
            envoy(Some(70000), Some("eds"), Some(0), "hk02.example.com"),
            envoy(None, Some("static"), None, "hk03.example.com"),
            envoy(None, None, None, "10.0.0.1"),
        ]);
        assert_eq!(routes.len(), 4, "{problems:?}");
        assert_eq!(routes[0].admin_port, Some(9901));
        assert_eq!(routes[0].cluster_type, ClusterType::StrictDns);
        assert_eq!(routes[0].connect_timeout, Some(Duration::from_secs(2)));
        assert_eq!(routes[1].admin_port, None);
        assert_eq!(routes[1].cluster_type, ClusterType::Unspecified);
        assert_eq!(routes[1].connect_timeout, None);
        assert_eq!(routes[2].cluster_type, ClusterType::Unspecified);
        assert_eq!(routes[3].cluster_type, ClusterType::Unspecified);
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(problems[0].contains("admin_port 70000"));
        assert!(problems[1].contains("cluster_type 'eds'"));
        assert!(problems[2].contains("connect_timeout_secs 0"));
        assert!(problems[3].contains("static needs an IP"));
    }

    #[test]
    fn bad_rows_are_skipped_with_their_name() {
        let rows = vec![
            Ok(raw("n1", "good", 10001, "hk013.example.com", 443)),
            Ok(raw("n1", "big-listen", 70000, "h", 1)),
            Ok(raw("n1", "neg-port", 10003, "h", -1)),
            Ok(raw("n1", "zero-port", 10004, "h", 0)),
            Ok(raw("n1", "bad-host", 10005, "bad/host", 1)),
            Ok(raw("n1", "has space", 10006, "h", 1)),
            Err("backend_port is NULL or missing".into()),
            Ok(raw("n2", "v6", 10001, "2001:db8::1", 8443)),
        ];
        let (routes, skipped) = build_routes(rows);
        let names: Vec<_> = routes.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["good", "v6"]);
        assert_eq!(routes[1].backend, "[2001:db8::1]:8443");
        assert_eq!(skipped.len(), 6, "{skipped:?}");
        assert!(skipped[0].contains("'big-listen'") && skipped[0].contains("70000"));
        assert!(skipped[1].contains("'neg-port'") && skipped[1].contains("-1"));
        assert!(skipped[3].contains("'bad-host'"));
        assert!(skipped[5].contains("row 7"));
    }

    #[test]
    fn text_rows_become_routes_or_named_problems() {
        // Columns separated by spaces; `-` is NULL.
        let row = |cols: &str| {
            cols.split(' ')
                .map(|c| (c != "-").then(|| c.into()))
                .collect()
        };
        let (routes, skipped) = routes_from_rows(vec![
            row("n r 10001 127.0.0.1 22 9901 static -"),
            row("n r2 x h 22"),
            row("n r3 10003 - 22"),
            row("n"),
        ]);
        assert_eq!(routes.len(), 1);
        assert_eq!(routes[0].backend, "127.0.0.1:22");
        assert_eq!(routes[0].admin_port, Some(9901));
        assert_eq!(routes[0].cluster_type, ClusterType::Static);
        assert_eq!(skipped.len(), 3, "{skipped:?}");
        assert!(skipped[0].contains("listen_port 'x' is not an integer"));
        assert!(skipped[1].contains("backend_host is NULL"));
    }

    #[test]
    fn routes_are_capped() {
        let rows = (0..MAX_ROUTES as i32 + 1).map(|i| Ok(raw("n", "r", i % 60000 + 1, "h", 1)));
        let (routes, skipped) = build_routes(rows);
        assert_eq!(routes.len(), MAX_ROUTES);
        assert_eq!(skipped.len(), 1);
        assert!(skipped[0].contains("MAX_ROUTES"));
    }
}
