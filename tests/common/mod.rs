//! Shared helpers of the integration tests.
#![allow(dead_code)]

#[cfg(feature = "postgres")]
pub mod pg;

/// Fixture rows, written as the table owner. Ids are returned as text.
#[cfg(feature = "postgres")]
pub mod rows {
    use postgres::Client;

    pub fn vps(db: &mut Client, hostname: &str, status: Option<&str>) -> String {
        db.query_one(
            "INSERT INTO vps (id, hostname, status, ip_addresses, extra) \
             VALUES (gen_random_uuid(), $1, $2, ARRAY['192.0.2.10'::inet], '{}') RETURNING id::text",
            &[&hostname, &status],
        )
        .unwrap()
        .get(0)
    }

    pub fn node(db: &mut Client, vps_id: &str, node_id: &str, status: &str) -> String {
        db.query_one(
            "INSERT INTO envoy_nodes (id, vps_id, node_id, admin_port, description, config_version, status) \
             VALUES (gen_random_uuid(), ($1::text)::uuid, $2, 9901, 'test node', 1, $3) RETURNING id::text",
            &[&vps_id, &node_id, &status],
        )
        .unwrap()
        .get(0)
    }

    #[allow(clippy::too_many_arguments)]
    pub fn route(
        db: &mut Client,
        node: &str,
        name: &str,
        listen_port: i32,
        host: Option<&str>,
        port: Option<i32>,
        status: &str,
    ) -> String {
        db.query_one(
            "INSERT INTO envoy_routes (id, envoy_node_id, name, listen_port, backend_host, backend_port, \
               cluster_type, connect_timeout_secs, proxy_protocol, status, source) \
             VALUES (gen_random_uuid(), ($1::text)::uuid, $2, $3, $4, $5, 'logical_dns', 5, 0, $6, 'dynamic') \
             RETURNING id::text",
            &[&node, &name, &listen_port, &host, &port, &status],
        )
        .unwrap()
        .get(0)
    }
}
