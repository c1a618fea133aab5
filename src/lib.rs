//! cardd: the backend of stored-value membership cards.
//!
//! A tokio daemon speaks a framed protobuf protocol (`proto/`) with cashier
//! terminals and owner consoles, applies their signed requests through one
//! deterministic state machine ([`state`]) and keeps every change as a
//! hash-linked record in a sled ledger ([`storage`]) covered by signed
//! checkpoints. See ARCHITECTURE.md for the map.
#![warn(missing_docs)]

pub mod audit;
pub mod backup;
pub mod card_number;
pub mod checkpoint;
pub mod client;
pub mod codec;
pub mod config;
pub mod crypto;
pub mod demo;
#[cfg(test)]
mod docs_sync;
pub mod error;
pub mod ledger;
pub mod limits;
pub mod merkle;
pub mod pb;
pub mod pin;
pub mod render;
pub mod replay;
pub mod replica;
pub mod server;
pub mod snapshot;
pub mod state;
pub mod stdout;
pub mod storage;
/// Fixtures for tests, benches, examples and fuzz targets; not used by the daemon.
pub mod testing;
#[cfg(test)]
mod tidy;
#[cfg(test)]
mod till_vectors;
pub mod tls;
pub mod web;
pub mod wire;
