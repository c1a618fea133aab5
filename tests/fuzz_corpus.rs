//! Replays the fuzz corpus on stable Rust, without libFuzzer: every file in
//! `fuzz/corpus/<target>/` (and `fuzz/regressions/<target>/`, if any) goes
//! through the very checking functions the fuzz targets call
//! (`fuzz/fuzz_targets/common/checks.rs`, included here as a module), so a
//! plain `cargo test` keeps every input the fuzzer ever found interesting
//! passing. See docs/fuzzing.md.
//!
//! The seed files (`seed-*`) are written by the ignored test
//! `write_seed_corpus`:
//!
//!     cargo test --test fuzz_corpus -- --ignored write_seed_corpus
//!
//! except the two real exports in `fuzz/corpus/export_parser/`, which were
//! made with `cardd serve --demo` and `cardd audit export` (docs/fuzzing.md).
use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use cardd::pb::{self, client_message::Body, export_item::Item, request::Op, RecordKind};
use checks::{card_for, principal_byte as pbyte, raw_step_bytes, tag, BRAND};
use prost::Message;

#[path = "../fuzz/fuzz_targets/common/checks.rs"]
mod checks;

#[global_allocator]
static ALLOC: checks::TrackingAlloc = checks::TrackingAlloc;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// Every input of `target`: its corpus, then its regressions, by name.
fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = vec![];
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(fuzz_dir().join(dir).join(target)) else {
            continue;
        };
        let mut files: Vec<PathBuf> = entries
            .map(|e| e.expect("dir entry").path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        out.extend(files.into_iter().map(|p| {
            let bytes = std::fs::read(&p).expect("read corpus file");
            (p, bytes)
        }));
    }
    assert!(
        !out.is_empty(),
        "no corpus for {target} in {}",
        fuzz_dir().display()
    );
    out
}

/// Runs `check` on every input of `target`; fails naming every input that
/// panicked (each panic message is printed as it happens).
fn replay<T>(target: &str, check: impl Fn(&[u8]) -> T) -> Vec<(PathBuf, T)> {
    let mut ok = vec![];
    let mut failed = vec![];
    for (path, bytes) in inputs(target) {
        match catch_unwind(AssertUnwindSafe(|| check(&bytes))) {
            Ok(t) => ok.push((path, t)),
            Err(_) => failed.push(path),
        }
    }
    assert!(
        failed.is_empty(),
        "{target}: {} input(s) break an invariant: {failed:#?}",
        failed.len()
    );
    ok
}

fn name(p: &Path) -> &str {
    p.file_name().and_then(|n| n.to_str()).unwrap_or("")
}

/// Open bugs: reproducers in `fuzz/known-bugs/<target>/` break an invariant
/// today (docs/fuzzing.md, "Bugs found"). They are kept out of the corpus so
/// that libFuzzer can keep running; once the bug is fixed in src/, this test
/// fails and names the file to move to `fuzz/regressions/<target>/`.
#[test]
fn known_bugs_still_reproduce() {
    type Check = fn(&[u8]);
    let targets: [(&str, Check); 3] = [
        ("frame_decoder", |d| {
            checks::check_frame_input(d);
        }),
        ("request_handler", |d| {
            checks::check_request_input(d);
        }),
        ("export_parser", |d| {
            let _ = checks::check_export_input(d);
        }),
    ];
    for (target, check) in targets {
        let Ok(entries) = std::fs::read_dir(fuzz_dir().join("known-bugs").join(target)) else {
            continue;
        };
        for path in entries.map(|e| e.expect("dir entry").path()) {
            let bytes = std::fs::read(&path).expect("read reproducer");
            let fixed = catch_unwind(AssertUnwindSafe(|| check(&bytes))).is_ok();
            assert!(
                !fixed,
                "{} no longer breaks an invariant: the bug is fixed, move it to fuzz/regressions/{target}/",
                path.display()
            );
        }
    }
}

#[test]
fn frame_decoder_corpus() {
    let runs = replay("frame_decoder", checks::check_frame_input);
    assert!(
        runs.iter().any(|(_, r)| r.messages >= 3),
        "no seed with pipelined messages"
    );
    assert!(
        runs.iter().any(|(_, r)| r.too_large),
        "no seed with an oversized length prefix"
    );
    assert!(
        runs.iter().any(|(_, r)| r.truncated),
        "no seed ending inside a frame"
    );
}

#[test]
fn request_handler_corpus() {
    let runs = replay("request_handler", checks::check_request_input);
    let mut written: BTreeMap<i32, usize> = BTreeMap::new();
    let mut refused: BTreeMap<i32, usize> = BTreeMap::new();
    for (_, r) in &runs {
        for (k, n) in &r.written {
            *written.entry(*k).or_default() += n;
        }
        for (k, n) in &r.refused {
            *refused.entry(*k).or_default() += n;
        }
    }
    for kind in [
        RecordKind::StoreCreated,
        RecordKind::TerminalEnrolled,
        RecordKind::CardIssued,
        RecordKind::CardBlockedChanged,
        RecordKind::CardReplaced,
        RecordKind::RulesSet,
        RecordKind::Purchase,
        RecordKind::TopUp,
        RecordKind::Refund,
        RecordKind::Reversal,
        RecordKind::PointsRedeemed,
        RecordKind::ShiftClosed,
    ] {
        assert!(
            written.contains_key(&(kind as i32)),
            "no corpus input writes a {kind:?} record"
        );
    }
    assert!(
        refused.len() >= 5,
        "the corpus reaches only {} refusal codes",
        refused.len()
    );
    assert!(
        runs.iter().any(|(_, r)| r.answers > 0),
        "no inquiry or status answered"
    );
}

#[test]
fn export_parser_corpus() {
    let runs = replay("export_parser", checks::check_export_input);
    let verified: BTreeMap<&str, u64> = runs
        .iter()
        .filter_map(|(p, r)| r.as_ref().ok().map(|rep| (name(p), rep.records)))
        .collect();
    // The real exports verify with the embedded server key.
    assert_eq!(
        verified.get("seed-demo-17-records.export"),
        Some(&17),
        "verified: {verified:?}"
    );
    assert_eq!(
        verified.get("seed-demo-30-records-ops.export"),
        Some(&30),
        "verified: {verified:?}"
    );
    // Every mutation of them is refused.
    for (p, r) in &runs {
        if name(p).starts_with("seed-mut-") {
            assert!(r.is_err(), "{} verified", p.display());
        }
    }
}

// ---------------------------------------------------------------------------
// Edges too large for a corpus file (libFuzzer's max_len would follow them).
// ---------------------------------------------------------------------------

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

#[test]
fn frame_exactly_at_the_limit_is_returned_and_one_byte_more_is_refused() {
    let echo = |n: usize| {
        // An Echo message whose encoding is exactly n bytes.
        (0..n)
            .map(|p| pb::ClientMessage {
                request_id: 1,
                body: Some(Body::Echo(pb::Echo {
                    payload: vec![7; p],
                })),
            })
            .find(|m| m.encoded_len() == n)
            .expect("an echo of that size")
            .encode_to_vec()
    };
    let at_limit = echo(checks::MAX_FRAME);
    let run = checks::check_frame_input(&checks::frame_input(&[], &frame(&at_limit)));
    assert_eq!((run.frames, run.messages, run.too_large), (1, 1, false));
    let run = checks::check_frame_input(&checks::frame_input(&[256, 1, 77], &frame(&at_limit)));
    assert_eq!((run.frames, run.messages, run.too_large), (1, 1, false));
    let over = frame(&vec![0; checks::MAX_FRAME + 1]);
    let run = checks::check_frame_input(&checks::frame_input(&[], &over));
    assert_eq!((run.frames, run.too_large), (0, true));
    // A u32::MAX announcement with nothing behind it: refused, no 4 GiB buffer.
    let run = checks::check_frame_input(&checks::frame_input(&[1], &[0xff, 0xff, 0xff, 0xff]));
    assert!(run.too_large);
}

/// Observation (not an invariant the target asserts): the export reader
/// allocates an item's announced length, up to MAX_EXPORT_ITEM_BYTES
/// (64 MiB), before it knows the file holds that many bytes; 12 bytes of
/// input are enough. This pins that bound so that a change is noticed.
#[test]
fn export_item_allocation_is_bounded_by_the_item_limit() {
    let mut input = cardd::audit::EXPORT_MAGIC.to_vec();
    input.extend_from_slice(&(cardd::audit::MAX_EXPORT_ITEM_BYTES as u32).to_be_bytes());
    checks::reset_largest_allocation();
    let err = checks::check_export_input(&input).expect_err("a truncated file");
    let largest = checks::largest_allocation();
    assert!(err.what.contains("truncated"), "{err}");
    // The buffer grows with the bytes present, not the length announced.
    assert!(largest < 1 << 20, "allocated {largest} for a 12-byte file");
    let mut over = cardd::audit::EXPORT_MAGIC.to_vec();
    over.extend_from_slice(&u32::MAX.to_be_bytes());
    checks::reset_largest_allocation();
    assert!(checks::check_export_input(&over).is_err());
    assert!(
        checks::largest_allocation() < 1 << 20,
        "an over-limit item was allocated"
    );
}

// ---------------------------------------------------------------------------
// The seed corpus.
// ---------------------------------------------------------------------------

fn write_seed(target: &str, name: &str, bytes: &[u8]) {
    let dir = fuzz_dir().join("corpus").join(target);
    std::fs::create_dir_all(&dir).expect("corpus dir");
    std::fs::write(dir.join(format!("seed-{name}")), bytes).expect("write seed");
}

fn client(request_id: u64, body: Body) -> Vec<u8> {
    pb::ClientMessage {
        request_id,
        body: Some(body),
    }
    .encode_to_vec()
}

fn request(txn_id: u64, op: Op) -> pb::Request {
    pb::Request {
        txn_id,
        brand_id: BRAND,
        operator: "ana".into(),
        client_time_ms: 1_790_000_000_000,
        op: Some(op),
        ..Default::default()
    }
}

fn frame_seeds() {
    let key = ed25519_dalek::SigningKey::from_bytes(&[3; 32]);
    let hello = client(
        1,
        Body::Hello(pb::Hello {
            protocol_version: 1,
            public_key: key.verifying_key().to_bytes().to_vec(),
        }),
    );
    let proof = client(
        2,
        Body::SignOnProof(pb::SignOnProof {
            signature: vec![0x11; 64],
        }),
    );
    let purchase = request(
        4,
        Op::Purchase(pb::Purchase {
            card: card_for(BRAND, 0),
            amount_minor: 1_250,
            allow_partial: true,
            ..Default::default()
        }),
    )
    .encode_to_vec();
    let signature = cardd::crypto::sign_request(&key, &purchase);
    let signed = client(
        3,
        Body::Signed(pb::SignedRequest {
            request: purchase,
            signature,
        }),
    );
    let echo = client(
        4,
        Body::Echo(pb::Echo {
            payload: b"ping".to_vec(),
        }),
    );
    let session = [frame(&hello), frame(&proof), frame(&signed), frame(&echo)].concat();
    let w = |name: &str, chunks: &[usize], stream: &[u8]| {
        write_seed("frame_decoder", name, &checks::frame_input(chunks, stream));
    };
    w("hello", &[], &frame(&hello));
    w("sign-on-proof-bytewise", &[1], &frame(&proof));
    w("signed-purchase-split", &[3, 7], &frame(&signed));
    w("echo", &[2], &frame(&echo));
    w("session-pipelined", &[5, 200, 17], &session);
    w("session-one-chunk", &[], &session);
    w(
        "empty-frames",
        &[1, 2],
        &[frame(&[]), frame(&[]), frame(&echo)].concat(),
    );
    w("not-protobuf", &[], &frame(&[0xff; 9]));
    w("truncated-frame", &[4], &frame(&signed)[..20]);
    w("truncated-head", &[], &[0, 0]);
    w(
        "oversize-u32-max-after-frame",
        &[3],
        &[frame(&echo), vec![0xff; 4], echo.clone()].concat(),
    );
    w(
        "oversize-limit-plus-one",
        &[],
        &[
            &((checks::MAX_FRAME as u32) + 1).to_be_bytes()[..],
            &[0; 16],
        ]
        .concat(),
    );
    w(
        "limit-exact-announced-truncated",
        &[],
        &[&(checks::MAX_FRAME as u32).to_be_bytes()[..], &[0x2a; 64]].concat(),
    );
}

fn request_seeds() {
    let c = |i: u64| card_for(BRAND, i);
    let t1 = pbyte::TERMINAL_1;
    let t2 = pbyte::TERMINAL_2;
    let own = pbyte::OWNER;
    let mut rules = cardd::demo::demo_rules();
    rules.promotion_line = "double points week".into();
    rules.tiers[1].multiplier_milli = 6_000;
    // Against the starting world (checks::World::start): the purchase of
    // card 0 by terminal 1 is record 14; terminal 1 used txn ids 1..=3.
    let steps: Vec<(&str, Vec<u8>)> = vec![
        (
            "inquiry",
            raw_step_bytes(t1, &request(0, Op::Inquiry(pb::Inquiry { card: c(0) }))),
        ),
        (
            "purchase",
            raw_step_bytes(
                t1,
                &request(
                    100,
                    Op::Purchase(pb::Purchase {
                        card: c(0),
                        amount_minor: 2_000,
                        allow_partial: false,
                        ..Default::default()
                    }),
                ),
            ),
        ),
        (
            "top-up",
            raw_step_bytes(
                t1,
                &request(
                    101,
                    Op::TopUp(pb::TopUp {
                        card: c(2),
                        amount_minor: 60_000,
                        ..Default::default()
                    }),
                ),
            ),
        ),
        (
            "refund",
            raw_step_bytes(
                t1,
                &request(
                    102,
                    Op::Refund(pb::Refund {
                        original_seq: 14,
                        amount_minor: 345,
                    }),
                ),
            ),
        ),
        (
            "reversal",
            raw_step_bytes(
                t1,
                &request(
                    103,
                    Op::Reversal(pb::Reversal {
                        original_txn_id: 100,
                    }),
                ),
            ),
        ),
        (
            "redeem-points",
            raw_step_bytes(
                t1,
                &request(
                    104,
                    Op::RedeemPoints(pb::RedeemPoints {
                        card: c(0),
                        points: 10,
                        reward: "cup".into(),
                    }),
                ),
            ),
        ),
        (
            "txn-status",
            raw_step_bytes(
                t1,
                &request(0, Op::TxnStatus(pb::TxnStatus { txn_id: 101 })),
            ),
        ),
        (
            "close-shift",
            raw_step_bytes(
                t1,
                &request(
                    105,
                    Op::CloseShift(pb::CloseShift {
                        terminal_totals: None,
                    }),
                ),
            ),
        ),
        (
            "purchase-partial",
            raw_step_bytes(
                t2,
                &request(
                    200,
                    Op::Purchase(pb::Purchase {
                        card: c(1),
                        amount_minor: 999_999,
                        allow_partial: true,
                        ..Default::default()
                    }),
                ),
            ),
        ),
        (
            "reversal-tombstone",
            raw_step_bytes(
                t2,
                &request(
                    201,
                    Op::Reversal(pb::Reversal {
                        original_txn_id: 555,
                    }),
                ),
            ),
        ),
        (
            "create-store",
            raw_step_bytes(
                own,
                &request(50, Op::CreateStore(pb::CreateStore { name: "C".into() })),
            ),
        ),
        (
            "enroll-terminal",
            raw_step_bytes(
                own,
                &request(
                    51,
                    Op::EnrollTerminal(pb::EnrollTerminal {
                        store_id: 2,
                        public_key: ed25519_dalek::SigningKey::from_bytes(&[5; 32])
                            .verifying_key()
                            .to_bytes()
                            .to_vec(),
                        label: "till 3".into(),
                    }),
                ),
            ),
        ),
        (
            "issue-card",
            raw_step_bytes(
                own,
                &request(52, Op::IssueCard(pb::IssueCard { card: c(500) })),
            ),
        ),
        (
            "block-card",
            raw_step_bytes(
                own,
                &request(
                    53,
                    Op::SetCardBlocked(pb::SetCardBlocked {
                        card: c(3),
                        blocked: true,
                        reason: "lost".into(),
                    }),
                ),
            ),
        ),
        (
            "replace-card",
            raw_step_bytes(
                own,
                &request(
                    54,
                    Op::ReplaceCard(pb::ReplaceCard {
                        old_card: c(1),
                        new_card: c(501),
                    }),
                ),
            ),
        ),
        (
            "set-rules",
            raw_step_bytes(
                own,
                &request(55, Op::SetRules(pb::SetRules { rules: Some(rules) })),
            ),
        ),
        (
            "export-ledger",
            raw_step_bytes(
                own,
                &request(56, Op::ExportLedger(pb::ExportLedger::default())),
            ),
        ),
        (
            "consistency-proof",
            raw_step_bytes(
                own,
                &request(
                    57,
                    Op::ConsistencyProof(pb::GetConsistencyProof {
                        old_size: 3,
                        new_size: 0,
                    }),
                ),
            ),
        ),
        (
            "create-brand-again",
            raw_step_bytes(
                pbyte::SERVER,
                &request(
                    2,
                    Op::CreateBrand(pb::CreateBrand {
                        name: "Again".into(),
                        currency: "EUR".into(),
                        currency_exponent: 2,
                        owner_public_key: vec![9; 32],
                    }),
                ),
            ),
        ),
    ];
    let mut all = vec![];
    for (name, bytes) in &steps {
        write_seed("request_handler", &format!("raw-{name}"), bytes);
        all.extend_from_slice(bytes);
    }
    // The purchase again, byte for byte (a retry), then every kind in turn.
    all.extend_from_slice(&steps[1].1);
    write_seed("request_handler", "raw-all-kinds", &all);
    // Undecodable bytes in a raw step are skipped.
    write_seed(
        "request_handler",
        "raw-undecodable",
        &[tag::RAW, t1, 3, 0, 0xff, 0xff, 0xff],
    );

    // Structured steps: tag, principal (0 = the operation's own), txn
    // (0 = fresh), flags, operator text, then the operation's fields.
    let s = |t: u8, fields: &[u8]| [&[t, 0, 0, 0, 0][..], fields].concat();
    let session = [
        s(tag::TOP_UP, &[0, 150, 0x10, 0x27]), // card 0, 1 + 10000*7
        s(tag::PURCHASE, &[0, 150, 0xe8, 0x03, 0]), // card 0, 7001
        s(tag::REFUND, &[0, 0, 150, 0x64, 0]), // newest purchase, 701
        s(tag::REDEEM_POINTS, &[0, 0, 5, 0, 0]), // card 0, 6 points
        s(tag::REVERSAL, &[0, 0]),             // the redemption
        s(tag::INQUIRY, &[0]),
        s(tag::TXN_STATUS, &[0, 1]),
        s(tag::CLOSE_SHIFT, &[0]), // balanced
        s(tag::CREATE_STORE, &[0]),
        s(tag::ENROLL_TERMINAL, &[2, 0, 0, 2, 0]), // store 3, pool key 2
        s(tag::ISSUE_CARD, &[0]),
        s(tag::SET_CARD_BLOCKED, &[1, 1, 0]),
        s(tag::SET_CARD_BLOCKED, &[1, 0, 0]),
        s(tag::REPLACE_CARD, &[2, 0]),
        s(tag::SET_RULES, &[0]),
        s(tag::EXPORT_LEDGER, &[]),
        s(tag::CONSISTENCY_PROOF, &[0; 16]),
        s(tag::CREATE_BRAND, &[0, 0, 0, 0, 0]),
        vec![tag::RETRY, 0],
        vec![tag::CONFLICT, 3, 9],
        vec![tag::CLOCK, 0, 1],
        s(tag::PURCHASE, &[0, 150, 0x10, 0x00, 0]),
    ]
    .concat();
    write_seed("request_handler", "structured-session", &session);
    // A purchase, two partial refunds, the first refund reversed, a third
    // refund: the refund bookkeeping after a reversal.
    let refunds = [
        s(tag::PURCHASE, &[0, 150, 0xe8, 0x03, 0]), // card 0, 7001
        s(tag::REFUND, &[0, 0, 150, 0x64, 0]),      // newest purchase, 701
        s(tag::REFUND, &[0, 0, 150, 0x64, 0]),
        s(tag::REVERSAL, &[0, 1]), // the first refund
        s(tag::REFUND, &[0, 0, 150, 0x64, 0]),
        s(tag::INQUIRY, &[0]),
    ]
    .concat();
    write_seed("request_handler", "structured-refund-reversal", &refunds);
    let extremes = [
        s(tag::PURCHASE, &[0, 202, 0]),      // i64::MIN
        s(tag::PURCHASE, &[0, 203, 1]),      // i64::MAX, partial
        s(tag::TOP_UP, &[0, 204]),           // MAX_AMOUNT_MINOR
        s(tag::TOP_UP, &[0, 205]),           // MAX_AMOUNT_MINOR + 1
        s(tag::TOP_UP, &[0, 201]),           // -1
        s(tag::TOP_UP, &[0, 200]),           // 0
        s(tag::REFUND, &[0, 0, 203]),        // i64::MAX
        s(tag::REDEEM_POINTS, &[0, 203, 0]), // i64::MAX points
        s(tag::REDEEM_POINTS, &[0, 204, 0]), // MAX_POINTS
        s(tag::PURCHASE, &[0, 211, 0, 0]),   // exactly the card's balance
        [&[tag::TOP_UP, 0, 241, 0, 0][..], &[0, 150, 1, 0]].concat(), // txn u64::MAX
        [&[tag::TOP_UP, 0, 240, 0, 0][..], &[0, 150, 1, 0]].concat(), // txn 0
        [&[tag::TOP_UP, 0xe1, 0, 0, 0][..], &[0, 150, 1, 0]].concat(), // by the owner
        [
            &[tag::TOP_UP, 0, 0, 0x80, 0][..],
            &[0, 150, 1, 0, 8, 0, 0, 0],
        ]
        .concat(), // brand 8
        [&[tag::TOP_UP, 0, 0, 0x20, 0][..], &[0, 150, 1, 0]].concat(), // no op
        [&[tag::TOP_UP, 0, 0, 0, 221][..], &[0, 150, 1, 0]].concat(), // operator too long
        vec![tag::CLOCK, 200],
        s(tag::PURCHASE, &[1, 150, 1, 0, 0]),
        vec![tag::CLOCK, 201],
        s(tag::PURCHASE, &[1, 150, 1, 0, 0]),
        s(
            tag::CLOSE_SHIFT,
            &[203, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0x80],
        ),
        s(
            tag::SET_RULES,
            &[
                100, 2, 0, 1, 0, 0, 0, 0, 0, 0, 204, 204, 201, 1, 0, 0, 0, 0, 0, 0, 201, 0,
            ],
        ),
        s(tag::CREATE_BRAND, &[0, 0, 201, 0, 0]),
    ]
    .concat();
    write_seed("request_handler", "structured-extremes", &extremes);
}

fn split_items(export: &[u8]) -> Vec<Vec<u8>> {
    let mut items = vec![];
    let mut rest = &export[8..];
    while !rest.is_empty() {
        let len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
        items.push(rest[..4 + len].to_vec());
        rest = &rest[4 + len..];
    }
    items
}

fn join_items(items: &[Vec<u8>]) -> Vec<u8> {
    [cardd::audit::EXPORT_MAGIC.to_vec(), items.concat()].concat()
}

fn item(framed: &[u8]) -> Item {
    pb::ExportItem::decode(&framed[4..])
        .expect("export item")
        .item
        .expect("item")
}

fn framed(i: Item) -> Vec<u8> {
    frame(&pb::ExportItem { item: Some(i) }.encode_to_vec())
}

fn export_seeds() {
    let real = std::fs::read(fuzz_dir().join("corpus/export_parser/seed-demo-17-records.export"))
        .expect("real export");
    let items = split_items(&real);
    assert_eq!(join_items(&items), real);
    let w = |name: &str, bytes: &[u8]| write_seed("export_parser", &format!("mut-{name}"), bytes);
    let with = |f: &dyn Fn(&mut Vec<Vec<u8>>)| {
        let mut v = items.clone();
        f(&mut v);
        join_items(&v)
    };
    let first_record = items
        .iter()
        .position(|i| matches!(item(i), Item::Record(_)))
        .unwrap();
    let first_checkpoint = items
        .iter()
        .position(|i| matches!(item(i), Item::Checkpoint(_)))
        .unwrap();
    w("truncated-half", &real[..real.len() / 2]);
    w("last-byte-missing", &real[..real.len() - 1]);
    w(
        "trailer-dropped",
        &with(&|v| {
            v.pop();
        }),
    );
    w(
        "record-dropped",
        &with(&|v| {
            v.remove(first_record + 4);
        }),
    );
    w(
        "records-swapped",
        &with(&|v| v.swap(first_record + 2, first_record + 4)),
    );
    w(
        "bit-flip-in-record",
        &with(&|v| {
            let i = &mut v[first_record + 6];
            let mid = i.len() / 2;
            i[mid] ^= 0x01;
        }),
    );
    w(
        "checkpoint-signature-flipped",
        &with(&|v| {
            let Item::Checkpoint(mut c) = item(&v[first_checkpoint]) else {
                unreachable!()
            };
            c.signature[0] ^= 0x80;
            v[first_checkpoint] = framed(Item::Checkpoint(c));
        }),
    );
    w(
        "record-amount-changed",
        &with(&|v| {
            let top_up = v
                .iter()
                .position(|i| match item(i) {
                    Item::Record(r) => {
                        pb::Record::decode(r.as_slice()).unwrap().kind() == RecordKind::TopUp
                    }
                    _ => false,
                })
                .unwrap();
            let Item::Record(r) = item(&v[top_up]) else {
                unreachable!()
            };
            let mut rec = pb::Record::decode(r.as_slice()).unwrap();
            rec.paid_in_minor += 100;
            rec.paid_balance_after_minor += 100;
            v[top_up] = framed(Item::Record(rec.encode_to_vec()));
        }),
    );
    w(
        "header-other-server-key",
        &with(&|v| {
            let Item::Header(mut h) = item(&v[0]) else {
                unreachable!()
            };
            h.server_public_key[5] ^= 1;
            v[0] = framed(Item::Header(h));
        }),
    );
    w(
        "data-after-trailer",
        &[real.clone(), items[first_record].clone()].concat(),
    );
    w(
        "no-records",
        &join_items(&[items[0].clone(), items.last().unwrap().clone()]),
    );
    w("bad-magic", &[b"CARDDEX2".as_slice(), &real[8..]].concat());
    w(
        "item-length-u32-max",
        &[cardd::audit::EXPORT_MAGIC.as_slice(), &[0xff; 4], &[0; 8]].concat(),
    );
    w(
        "empty-item",
        &[cardd::audit::EXPORT_MAGIC.as_slice(), &[0; 4]].concat(),
    );
}

/// Writes the seed files (`seed-*`, except the real exports). Run by hand:
/// `cargo test --test fuzz_corpus -- --ignored write_seed_corpus`.
#[test]
#[ignore = "writes fuzz/corpus seed files"]
fn write_seed_corpus() {
    frame_seeds();
    request_seeds();
    export_seeds();
}
