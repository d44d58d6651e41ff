//! sigma-agent-lite as a library: the modules the binary, the tests and the benches share.
//! The data path, one direction: config -> route source -> prober -> snapshot -> renderers ->
//! connections, all driven by the one event loop.

pub mod config;
pub mod dns;
pub mod envoy;
pub mod envoy_admin;
pub mod event_loop;
#[doc(hidden)]
pub mod fixtures;
pub mod gzip;
pub mod http;
pub mod http_client;
pub mod http_conn;
pub mod json;
pub mod json_write;
pub mod logging;
pub mod mcp;
pub mod mcp_peer;
pub mod metrics;
#[cfg(feature = "postgres")]
mod pg_conn;
#[cfg(feature = "postgres")]
pub mod pg_conninfo;
#[cfg(feature = "postgres")]
pub mod pg_routes;
#[cfg(feature = "postgres")]
pub mod pg_tls;
#[cfg(feature = "postgres")]
pub mod pg_wire;
pub mod prober;
pub mod report;
pub mod route;
pub mod scrape_cache;
pub mod signals;
pub mod snapshot;
pub mod source;
#[cfg(feature = "postgres")]
pub mod source_pg;
pub mod stdio;
pub mod web_tls;
