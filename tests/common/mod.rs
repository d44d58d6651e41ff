//! Shared helpers of the integration tests.
#![allow(dead_code)]

#[cfg(feature = "postgres")]
pub mod pg;
