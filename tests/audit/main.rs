//! The auditor's side, end to end: exports from a live demo daemon and from
//! a stopped daemon's data directory, offline verification and replay,
//! tamper detection down to single bits, checkpoint consistency across a
//! forked history, and inclusion proofs in receipts.
//!
//! The demo brand holds records 1..=17 when a test starts (see
//! `src/demo.rs`): the owner used txn ids 1..=10, terminal 1 (store 1) txn
//! ids 1..=6, terminal 2 (store 2) none. Cards 0..5 hold 100.00, 200.00,
//! 300.00, 500.00 (+50.00 bonus) and 1000.00 (+150.00 bonus).
//!
//! Modules: `export` and `history` (the exports the tests take apart),
//! then the tests by concern: `verify`, `tamper`, `consistency`, `proofs`.
#[path = "../common/mod.rs"]
mod common;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Output;

use cardd::audit::file::write_item;
use cardd::audit::{verify_export, VerifyError, VerifyOptions, VerifyReport, EXPORT_MAGIC};
use cardd::crypto::{leaf_hash, parse_public_key, verify_strict};
use cardd::pb::{self, export_item::Item, reply::Detail, request::Op, CardStatus, ExportItem};
use common::reply::seq;
use common::{
    bounded, call, copy_dir, inquiry, ok, purchase, run, set_blocked, top_up, Daemon, Demo,
};
use prost::Message;

/// Records the demo brand holds before a test writes anything.
const DEMO_RECORDS: u64 = 17;
/// Concurrent small purchases in the full mixed history (32 operations).
const FULL_FILLER: usize = 12;
/// ... and in the one whose every byte is flipped (23 operations: every
/// kind of record, at a cost of one verification per byte).
const FLIP_FILLER: usize = 3;

// ---------------------------------------------------------------------------
// The CLI.
// ---------------------------------------------------------------------------

/// Runs `cardd` with `args` (bounded: killed after 60 s).
fn run_cardd(args: Vec<OsString>) -> Output {
    run::cardd(args)
}

/// `cardd!(arg, ...)`: each argument is anything `OsString::from` takes by
/// reference (`"text"`, `&path`, `&string`).
macro_rules! cardd {
    ($($a:expr),* $(,)?) => { run_cardd(vec![$(OsString::from($a)),*]) };
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Asserts that the command exited 0.
#[track_caller]
fn assert_ok(o: &Output, what: &str) {
    assert_eq!(
        o.status.code(),
        Some(0),
        "{what}: expected success\nstdout: {}\nstderr: {}",
        stdout(o),
        stderr(o)
    );
}

/// Asserts that the command failed (non-zero exit) and returns stderr.
#[track_caller]
fn assert_fails(o: &Output, what: &str) -> String {
    let code = o.status.code();
    assert!(
        code.is_some() && code != Some(0),
        "{what}: expected a non-zero exit, got {code:?}\nstdout: {}\nstderr: {}",
        stdout(o),
        stderr(o)
    );
    stderr(o)
}

// After the CLI macro: the modules use it.
mod consistency;
mod export;
mod history;
mod owner_loads;
mod proofs;
mod tamper;
mod verify;

use export::*;
use history::*;
use tamper::*;
