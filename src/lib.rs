//! sigma-agent-lite as a library: the modules the binary, the tests and the benches share.

pub mod route;
pub mod snapshot;
#[cfg(feature = "postgres")]
pub mod source_pg;
