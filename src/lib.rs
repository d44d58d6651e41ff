//! sigma-agent-lite as a library: the modules the binary, the tests and the benches share.

pub mod json;
pub mod mcp;
pub mod route;
pub mod snapshot;
pub mod stdio;
