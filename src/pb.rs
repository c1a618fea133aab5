//! Protobuf types generated from `proto/cardd/v1/cardd.proto` (package
//! `cardd.v1`): the wire messages and the ledger record format.
#![allow(
    missing_docs,
    clippy::large_enum_variant,
    clippy::doc_lazy_continuation
)]

include!(concat!(env!("OUT_DIR"), "/cardd.v1.rs"));
