//! Running cardd as a service (issue 16): settings from flags, environment
//! and a TOML file; the HTTP listener (metrics, health) and its limits;
//! JSON logs; the graceful shutdown; a start that fails leaves nothing
//! behind.
//!
//! Each test runs the real `cardd` binary on its own temporary directory
//! and loopback ports, with the shared kit of `tests/common`.
#[path = "../common/mod.rs"]
mod common;

mod config;
mod http;
mod logs;
mod shutdown;
mod start;
