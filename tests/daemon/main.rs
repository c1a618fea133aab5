//! End-to-end tests of the real `cardd` binary over TCP on 127.0.0.1.
//!
//! Every test starts its own daemon on a fresh temporary data directory and
//! an ephemeral port (see `common`), then checks exact outcomes: balances,
//! bonus balances, points, tiers, record sequence numbers and error codes.
//!
//! What the demo brand holds when a test starts (see `src/demo.rs`):
//! - records 1..=17 (brand, rules, two stores with a terminal each, five
//!   cards issued and topped up, then terminal 1's first shift closed), so
//!   the first new record is seq 18;
//! - the owner used txn ids 1..=10, terminal 1 (store 1, "Downtown") used
//!   txn ids 1..=5 for the demo top-ups (records 8, 10, .., 16) and 6 for
//!   the shift close, terminal 2 (store 2, "Airport") none;
//! - cards[0..5] hold 100.00, 200.00, 300.00, 500.00 (+50.00 bonus) and
//!   1000.00 (+150.00 bonus), no points, tier "silver".
//!
//! The tests are grouped by concern in the modules below; the helpers they
//! share with other targets are in `tests/common`.
#[path = "../common/mod.rs"]
mod common;

mod brands;
mod idempotency;
mod interop;
mod isolation;
mod money;
mod owner;
mod personal;
mod probing;
mod protocol;
mod restart;
mod reversal;
mod safety;
mod sign_on;
mod topup;

use std::collections::HashMap;
use std::path::Path;

use cardd::card_number;

use cardd::client::{recv, Client, ClientError};
use cardd::crypto::{generate_key, read_key_file, sign_on_message, sign_request};
use cardd::limits::{DEFAULT_MAX_FRAME_BYTES, MAX_AMOUNT_MINOR};
use cardd::pb::{
    self, client_message::Body, request::Op, server_message, CardStatus, ErrorCode as E, Role,
    ShiftTotals, TxnState,
};
use common::raw::*;
use common::reply::*;
use common::run::{brand_create, brand_create_ok};
use common::*;
use ed25519_dalek::Signer;
use prost::Message;
use tokio::io::AsyncWriteExt;

/// The first sequence number written after the demo brand is provisioned.
const FIRST_SEQ: u64 = 18;
/// The promotion line of the demo rules.
const DEMO_PROMO: &str = "Top up 500 get 50 free; 1000 gets 15% more";

/// A request signed by the client's key: (bytes, signature).
fn signed_bytes(c: &Client, req: &pb::Request) -> (Vec<u8>, Vec<u8>) {
    let bytes = req.encode_to_vec();
    let sig = sign_request(c.key(), &bytes);
    (bytes, sig)
}

/// The same card number with its check digit changed (so it is invalid).
fn bad_check_digit(card: &str) -> String {
    let mut b = card.as_bytes().to_vec();
    let last = b.len() - 1;
    b[last] = if b[last] == b'9' { b'0' } else { b[last] + 1 };
    String::from_utf8(b).expect("digits")
}

/// A request of the demo brand for `op` under `txn_id`.
fn demo_request(txn_id: u64, op: Op) -> pb::Request {
    request(1, txn_id, "test", op)
}
