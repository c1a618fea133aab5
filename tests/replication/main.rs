//! Replication on NATS JetStream (`cardd serve --replicate`, `--standby`;
//! docs/replication.md), on a 3-node cluster of real `nats-server`
//! processes on loopback ports (`common::nats`). Without a server binary
//! these tests skip, except under CI.
//!
//! - `engine`: the JetStream behaviour the design rests on (fencing by
//!   expected subject sequence, de-duplication by message id, a quorum
//!   that survives one node), checked on the server itself.
#[path = "../common/mod.rs"]
mod common;

mod engine;
