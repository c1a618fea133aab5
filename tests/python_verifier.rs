//! The independent Python verifier (tests/independent_verifier.py), written
//! from docs/ledger-format.md, against a real daemon's export: it must accept
//! the export as it comes, and reject tampered copies — including copies
//! that the server itself re-chained and re-signed, where only the request
//! signatures, the enrolled keys or the balances give the forgery away.
//!
//! Python: `$CARDD_PYTHON` if set (it must then work), else `python3` when it
//! can import `cryptography`. Without one the test fails under CI (env `CI`
//! set) and is skipped, loudly, elsewhere. `.ci/run` provides a venv.
mod common;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cardd::audit::file::write_item;
use cardd::audit::{ExportReader, EXPORT_MAGIC};
use cardd::crypto::{leaf_hash, read_key_file, sign_request};
use cardd::merkle::Frontier;
use cardd::pb::{self, export_item::Item, reply::Detail, request::Op, RecordKind};
use common::reply::seq;
use common::{ok, purchase, run, top_up, Daemon};
use ed25519_dalek::{Signer, SigningKey};
use prost::Message;

// ---------------------------------------------------------------------------
// Python.
// ---------------------------------------------------------------------------

fn python_works(python: &str) -> bool {
    Command::new(python)
        .args([
            "-c",
            "import cryptography.hazmat.primitives.asymmetric.ed25519",
        ])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The interpreter to use, or None (after saying why) to skip.
fn python() -> Option<String> {
    if let Some(p) = std::env::var_os("CARDD_PYTHON").filter(|p| !p.is_empty()) {
        let p = p.to_string_lossy().into_owned();
        assert!(
            python_works(&p),
            "CARDD_PYTHON={p} cannot run or cannot import the 'cryptography' package"
        );
        return Some(p);
    }
    if python_works("python3") {
        return Some("python3".into());
    }
    let why = "no Python with the 'cryptography' package: set CARDD_PYTHON, or \
               `python3 -m venv .venv-ci && .venv-ci/bin/pip install cryptography` and \
               CARDD_PYTHON=.venv-ci/bin/python";
    if std::env::var_os("CI").is_some() {
        panic!("python_verifier must run in CI, but there is {why}");
    }
    let bar = "!".repeat(78);
    eprintln!("\n{bar}\n!! SKIPPED python_verifier: {why}\n{bar}\n");
    None
}

/// How long one run of the Python verifier may take.
const PYTHON_LIMIT: Duration = Duration::from_secs(300);

fn verifier_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/independent_verifier.py")
}

/// Runs the Python verifier; returns its exit code and its output.
fn run_python(python: &str, export: &Path, server_key: &str) -> (i32, String) {
    let out = run::run_bounded(
        Command::new(python)
            .arg(verifier_script())
            .arg(export)
            .args(["--server-key", server_key]),
        PYTHON_LIMIT,
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// Asserts that the Python verifier rejects `export` with exit code 1 and a
/// message containing `expect`.
#[track_caller]
fn assert_rejected(python: &str, export: &Path, server_key: &str, expect: &str) {
    let (code, text) = run_python(python, export, server_key);
    assert_eq!(
        code,
        1,
        "{}: expected exit 1, got {code}:\n{text}",
        export.display()
    );
    assert!(
        text.starts_with("FAIL: "),
        "{}: no FAIL line:\n{text}",
        export.display()
    );
    assert!(
        text.contains(expect),
        "{}: expected a failure mentioning '{expect}', got:\n{text}",
        export.display()
    );
}

/// `cardd audit verify`; returns (success, output).
fn run_rust_verify(export: &Path, server_key: &str) -> (bool, String) {
    let out = run::cardd([
        OsStr::new("audit"),
        OsStr::new("verify"),
        export.as_os_str(),
        OsStr::new("--server-key"),
        OsStr::new(server_key),
    ]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

// ---------------------------------------------------------------------------
// Export files.
// ---------------------------------------------------------------------------

fn read_items(path: &Path) -> Vec<Item> {
    let f = std::fs::File::open(path).expect("open export");
    let mut r = ExportReader::new(std::io::BufReader::new(f)).expect("export magic");
    let mut items = Vec::new();
    while let Some(item) = r.next_item().expect("export item") {
        items.push(item);
    }
    items
}

/// Writes items with proper framing (magic, then length-prefixed items).
fn write_items(path: &Path, items: &[Item]) {
    let mut out = EXPORT_MAGIC.to_vec();
    for item in items {
        write_item(&mut out, item.clone()).expect("frame");
    }
    std::fs::write(path, out).expect("write export");
}

/// The file offset of the only occurrence of `needle` in `hay`.
fn find_unique(hay: &[u8], needle: &[u8]) -> usize {
    let hits: Vec<usize> = hay
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(
        hits.len(),
        1,
        "expected the bytes exactly once in the export"
    );
    hits[0]
}

/// A copy of `original` with one byte (inside `needle`) flipped.
fn flip_inside(original: &[u8], needle: &[u8], out: &Path) {
    let mut bytes = original.to_vec();
    let at = find_unique(&bytes, needle) + needle.len() / 2;
    bytes[at] ^= 0x40;
    std::fs::write(out, bytes).expect("write tampered copy");
}

fn record_of(item: &Item) -> Option<pb::Record> {
    match item {
        Item::Record(bytes) => Some(pb::Record::decode(bytes.as_slice()).expect("record decodes")),
        _ => None,
    }
}

/// What a dishonest server can do: rewrite records, then re-chain them and
/// re-sign every checkpoint with its own key, so that the chain, the Merkle
/// roots and the server signatures are all valid again.
fn server_rewrite(
    items: &[Item],
    server: &SigningKey,
    edit: impl FnMut(&mut pb::Record),
) -> Vec<Item> {
    server_rewrite_keyed(items, |_| server.clone(), edit)
}

/// [`server_rewrite`] re-signing each checkpoint with the key `signer`
/// gives for its tree size.
fn server_rewrite_keyed(
    items: &[Item],
    signer: impl Fn(u64) -> SigningKey,
    mut edit: impl FnMut(&mut pb::Record),
) -> Vec<Item> {
    let mut out = Vec::with_capacity(items.len());
    let mut head = [0u8; 32];
    let mut tree = Frontier::new();
    for item in items {
        match item {
            Item::Record(bytes) => {
                let mut rec = pb::Record::decode(bytes.as_slice()).expect("record decodes");
                edit(&mut rec);
                rec.prev_hash = head.to_vec();
                let bytes = rec.encode_to_vec();
                head = leaf_hash(&bytes);
                tree.push(head);
                out.push(Item::Record(bytes));
            }
            Item::Checkpoint(c) => {
                let mut c = c.clone();
                assert_eq!(c.tree_size, tree.size());
                c.head_hash = head.to_vec();
                c.root_hash = tree.root().to_vec();
                c.signature = signer(c.tree_size)
                    .sign(&cardd::checkpoint::signed_message(&c))
                    .to_bytes()
                    .to_vec();
                out.push(Item::Checkpoint(c));
            }
            other => out.push(other.clone()),
        }
    }
    out
}

// ---------------------------------------------------------------------------
// The test.
// ---------------------------------------------------------------------------

/// The next transaction id of a signer.
fn next(n: &mut u64) -> u64 {
    *n += 1;
    *n
}

/// The hand-written purchase with explicit defaults that `business` sends.
fn explicit_purchase(manifest: &cardd::demo::Manifest, txn_id: u64) -> Vec<u8> {
    common::raw::explicit_defaults_purchase(txn_id, manifest.brand_id, &manifest.cards[0], 250)
}

/// A few dozen operations of every money kind; returns the last record's seq.
async fn business(d: &Daemon, demo: &common::Demo) -> u64 {
    let cards = demo.manifest.cards.clone();
    let mut t1 = demo.terminal(d.addr, 0).await;
    let mut t2 = demo.terminal(d.addr, 1).await;
    let mut owner = demo.owner(d.addr).await;
    t1.operator = "alice".into();
    t2.operator = "bob".into();
    owner.operator = "owner".into();
    // Terminal 1 used txn ids 1..=6 and the owner 1..=10 in the demo.
    let (mut n1, mut n2, mut no) = (100u64, 100u64, 100u64);
    // A purchase as protobufjs 7 encodes it (explicit defaults, txn 101):
    // served, and kept verbatim in the ledger.
    let bytes = explicit_purchase(&demo.manifest, next(&mut n1));
    let sig = sign_request(t1.key(), &bytes);
    t1.call_signed(bytes, sig)
        .await
        .expect("explicit defaults are served");
    // Purchases in both stores, on every card.
    let mut t1_purchases = Vec::new();
    for i in 0..10 {
        let card = &cards[i % cards.len()];
        let r = ok(
            &mut t1,
            next(&mut n1),
            purchase(card, 1_000 + 137 * i as i64),
        )
        .await;
        t1_purchases.push(seq(&r));
        ok(&mut t2, next(&mut n2), purchase(card, 500 + 71 * i as i64)).await;
    }
    // Top-ups, two of them large enough for the bonus tiers.
    for (i, amount) in [5_000i64, 50_000, 120_000, 800].into_iter().enumerate() {
        ok(&mut t1, next(&mut n1), top_up(&cards[i], amount)).await;
    }
    ok(&mut t2, next(&mut n2), top_up(&cards[4], 2_500)).await;
    // A partial refund of a store-1 purchase, at store 1.
    let r = ok(
        &mut t1,
        next(&mut n1),
        Op::Refund(pb::Refund {
            original_seq: t1_purchases[3],
            amount_minor: 400,
        }),
    )
    .await;
    assert!(matches!(r.detail, Some(Detail::Refund(_))));
    // A reversal of terminal 2's last purchase (same shift).
    let p = next(&mut n2);
    ok(&mut t2, p, purchase(&cards[1], 3_333)).await;
    let r = ok(
        &mut t2,
        next(&mut n2),
        Op::Reversal(pb::Reversal { original_txn_id: p }),
    )
    .await;
    match &r.detail {
        Some(Detail::Reversal(x)) => assert!(x.original_found),
        other => panic!("expected a reversal, got {other:?}"),
    }
    // A reversal of a transaction that never arrived (a tombstone record).
    ok(
        &mut t2,
        next(&mut n2),
        Op::Reversal(pb::Reversal {
            original_txn_id: 99_999,
        }),
    )
    .await;
    // Points redeemed.
    ok(
        &mut t1,
        next(&mut n1),
        Op::RedeemPoints(pb::RedeemPoints {
            card: cards[0].clone(),
            points: 5,
            reward: "cookie".into(),
            ..Default::default()
        }),
    )
    .await;
    // The owner blocks and unblocks a card, then replaces another one; the
    // new card is used at once.
    for blocked in [true, false] {
        ok(
            &mut owner,
            next(&mut no),
            Op::SetCardBlocked(pb::SetCardBlocked {
                card: cards[4].clone(),
                blocked,
                reason: "lost".into(),
            }),
        )
        .await;
    }
    let new_card = cardd::card_number::generate(demo.manifest.brand_id);
    let r = ok(
        &mut owner,
        next(&mut no),
        Op::ReplaceCard(pb::ReplaceCard {
            old_card: cards[2].clone(),
            new_card: new_card.clone(),
        }),
    )
    .await;
    let view = r.card.expect("card view");
    assert_eq!(view.card, new_card);
    assert!(view.balance_minor > 0, "the value moved to the new card");
    ok(&mut t1, next(&mut n1), top_up(&new_card, 1_000)).await;
    ok(&mut t2, next(&mut n2), purchase(&new_card, 777)).await;
    // The owner loads value (issue 25): from the head office with the
    // bonus, online below face value without it; and a till sells below
    // face value.
    let owner_load = |card: &str, channel: pb::Channel, no_bonus, price_minor| {
        Op::TopUp(pb::TopUp {
            card: card.into(),
            amount_minor: 60_000,
            channel: channel as u32,
            reference: "INV-77".into(),
            no_bonus,
            price_minor,
        })
    };
    let head_office = owner_load(&cards[0], pb::Channel::HeadOffice, false, 0);
    ok(&mut owner, next(&mut no), head_office).await;
    let online = owner_load(&new_card, pb::Channel::Online, true, 54_000);
    ok(&mut owner, next(&mut no), online).await;
    let below_face = pb::TopUp {
        card: cards[1].clone(),
        amount_minor: 10_000,
        price_minor: 9_000,
        ..Default::default()
    };
    ok(&mut t1, next(&mut n1), Op::TopUp(below_face)).await;
    // A named holder (the person goes to the holder store, the ledger
    // keeps a commitment), a PIN set by the owner and typed at a till,
    // an unlock and an erasure (issue 15).
    let data = Op::HolderData(pb::HolderData {
        card: cards[3].clone(),
        name: "Li Na".into(),
        phone: "+8613900139000".into(),
    });
    let commitment = ok(&mut owner, 0, data).await.holder_commitment;
    let set = Op::SetHolder(pb::SetHolder {
        card: cards[3].clone(),
        commitment,
    });
    ok(&mut owner, next(&mut no), set).await;
    let txn = next(&mut no);
    let pin_block = owner
        .pin_block(txn, &cards[3], cardd::pin::Purpose::New, "2468")
        .expect("seal");
    let set_pin = Op::SetPin(pb::SetPin {
        card: cards[3].clone(),
        pin_block,
        ..Default::default()
    });
    ok(&mut owner, txn, set_pin).await;
    // Five wrong PINs: refused without records, then the server's lock
    // (a server-signed CARD_PIN_LOCKED), lifted by the owner.
    for _ in 0..5 {
        let txn = next(&mut n1);
        let pin_block = t1
            .pin_block(txn, &cards[3], cardd::pin::Purpose::Present, "1357")
            .expect("seal");
        let wrong = Op::Purchase(pb::Purchase {
            card: cards[3].clone(),
            amount_minor: 100,
            pin_block,
            ..Default::default()
        });
        let refused = common::call(&mut t1, txn, wrong).await.unwrap_err();
        assert_eq!(refused, pb::ErrorCode::WrongPin);
    }
    let card = cards[3].clone();
    let unlock = Op::SetPinLock(pb::SetPinLock {
        card,
        locked: false,
    });
    ok(&mut owner, next(&mut no), unlock).await;
    let txn = next(&mut n1);
    let pin_block = t1
        .pin_block(txn, &cards[3], cardd::pin::Purpose::Present, "2468")
        .expect("seal");
    let with_pin = Op::Purchase(pb::Purchase {
        card: cards[3].clone(),
        amount_minor: 1_250,
        pin_block,
        ..Default::default()
    });
    ok(&mut t1, txn, with_pin).await;
    let card = cards[3].clone();
    ok(
        &mut owner,
        next(&mut no),
        Op::SetPinLock(pb::SetPinLock {
            card,
            locked: false,
        }),
    )
    .await;
    let card = cards[3].clone();
    ok(
        &mut owner,
        next(&mut no),
        Op::EraseHolder(pb::EraseHolder { card }),
    )
    .await;
    loyalty(&mut owner, &mut t1, &cards[1], (&mut no, &mut n1)).await;
    // Terminal 2 closes its shift (without totals: an unbalanced close).
    // Records are written one at a time here, so the last is the newest.
    let r = ok(
        &mut t2,
        next(&mut n2),
        Op::CloseShift(pb::CloseShift {
            terminal_totals: None,
        }),
    )
    .await;
    seq(&r)
}

/// The loyalty programme (issue 14) in the ledger: rules with a campaign,
/// expiry and points as payment; a purchase paid partly by points and a
/// partial refund of it (records with `points_value_minor`).
async fn loyalty(
    owner: &mut cardd::client::Client,
    t1: &mut cardd::client::Client,
    card: &str,
    (no, n1): (&mut u64, &mut u64),
) {
    let mut rules = cardd::demo::demo_rules();
    rules.campaigns = vec![pb::Campaign {
        name: "VIP 6x".into(),
        multiplier_milli: 6_000,
        starts_ms: 0,
        ends_ms: i64::MAX,
        stores: vec![pb::StoreRef { store_id: 1 }],
        category: String::new(),
    }];
    rules.points_expire_after_days = 365;
    rules.points_redemption = Some(pb::PointsRedemption {
        points: 10,
        value_minor: 100,
    });
    let set = Op::SetRules(pb::SetRules { rules: Some(rules) });
    ok(owner, next(no), set).await;
    let paid = Op::Purchase(pb::Purchase {
        card: card.into(),
        amount_minor: 2_000,
        points: 20,
        ..Default::default()
    });
    let r = ok(t1, next(n1), paid).await;
    let p = common::reply::purchased(&r);
    assert_eq!(
        (p.points_spent, p.points_value_minor, p.approved_minor),
        (20, 200, 1_800)
    );
    let refund = Op::Refund(pb::Refund {
        original_seq: seq(&r),
        amount_minor: 1_000,
    });
    let back = ok(t1, next(n1), refund).await;
    assert_eq!(common::reply::refunded(&back).points_returned, 10);
}

#[test]
fn python_verifier_accepts_real_exports_and_rejects_tampering() {
    let Some(python) = python() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let (daemon, demo) = Daemon::demo(dir.path());
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let last_seq = rt.block_on(business(&daemon, &demo));
    assert!(
        last_seq >= 17 + 30,
        "a few dozen records were written (last seq {last_seq})"
    );

    // The trust anchor, from the server's own command.
    let out = run::cardd([
        OsStr::new("server-key"),
        OsStr::new("--data"),
        daemon.data.as_os_str(),
    ]);
    assert!(out.status.success(), "cardd server-key failed");
    let server_key = String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_string();
    assert_eq!(server_key.len(), 64);

    let export = dir.path().join("ledger.cardd");
    let addr = daemon.addr.to_string();
    let out = run::cardd([
        OsStr::new("audit"),
        OsStr::new("export"),
        OsStr::new("--connect"),
        OsStr::new(&addr),
        OsStr::new("--key"),
        demo.owner_key_path().as_os_str(),
        OsStr::new("--out"),
        export.as_os_str(),
    ]);
    assert!(
        out.status.success(),
        "export failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let items = read_items(&export);
    let records: Vec<pb::Record> = items.iter().filter_map(record_of).collect();
    assert_eq!(
        records.len() as u64,
        last_seq,
        "the export holds every record written"
    );

    let explicit = explicit_purchase(&demo.manifest, 101);
    assert!(
        records.iter().any(|r| r.request == explicit),
        "the export holds the request with explicit defaults verbatim"
    );

    // The untouched export passes, and both verifiers agree on the root.
    let (code, text) = run_python(&python, &export, &server_key);
    assert_eq!(
        code, 0,
        "the Python verifier rejects a real export:\n{text}"
    );
    assert!(text.starts_with("OK: "), "{text}");
    assert!(text.contains(&format!("{last_seq} records")), "{text}");
    let (ok_rust, rust_text) = run_rust_verify(&export, &server_key);
    assert!(
        ok_rust,
        "cardd audit verify rejects the export:\n{rust_text}"
    );
    let root = rust_text
        .lines()
        .find_map(|l| l.strip_prefix("root "))
        .expect("cardd audit verify prints the root")
        .trim();
    assert!(
        text.trim_end().ends_with(&format!("root {root}")),
        "roots differ:\n{text}\n{rust_text}"
    );

    // The wrong trust anchor.
    let other_key = hex::encode(SigningKey::from_bytes(&[7; 32]).verifying_key().to_bytes());
    assert_rejected(&python, &export, &other_key, "different server key");

    let original = std::fs::read(&export).expect("read export");
    // A middle terminal purchase and a middle checkpoint to tamper with.
    let victim = records
        .iter()
        .filter(|r| r.kind() == RecordKind::Purchase && r.seq > 20)
        .nth(3)
        .expect("a purchase")
        .clone();
    let v = victim.seq;

    // (a) One byte flipped inside a record's request signature.
    let a = dir.path().join("a-request-signature.cardd");
    flip_inside(&original, &victim.request_signature, &a);
    assert_rejected(
        &python,
        &a,
        &server_key,
        &format!("record {v}: request signature does not verify"),
    );

    // (b) One byte flipped inside a checkpoint's server signature.
    let checkpoint = items
        .iter()
        .find_map(|i| match i {
            Item::Checkpoint(c) if c.tree_size == v => Some(c.clone()),
            _ => None,
        })
        .expect("a checkpoint after the victim");
    let b = dir.path().join("b-checkpoint-signature.cardd");
    flip_inside(&original, &checkpoint.signature, &b);
    assert_rejected(
        &python,
        &b,
        &server_key,
        &format!("checkpoint at tree size {v}: bad server signature"),
    );

    // (c) The victim record removed, with its checkpoints, and the header
    // and trailer counts adjusted: only the gap in the chain remains.
    let mut removed = Vec::new();
    let mut dropped_checkpoints = 0;
    for item in &items {
        match item {
            Item::Record(_) if record_of(item).unwrap().seq == v => continue,
            Item::Checkpoint(c) if c.tree_size == v => {
                dropped_checkpoints += 1;
                continue;
            }
            Item::Header(h) => removed.push(Item::Header(pb::ExportHeader {
                tree_size: h.tree_size - 1,
                ..h.clone()
            })),
            Item::Trailer(t) => removed.push(Item::Trailer(pb::ExportTrailer {
                records: t.records - 1,
                checkpoints: t.checkpoints - dropped_checkpoints,
                ..t.clone()
            })),
            other => removed.push(other.clone()),
        }
    }
    let c = dir.path().join("c-record-removed.cardd");
    write_items(&c, &removed);
    assert_eq!(
        read_items(&c).len(),
        items.len() - 1 - dropped_checkpoints as usize,
        "framing is intact"
    );
    assert_rejected(
        &python,
        &c,
        &server_key,
        &format!("record {v}: holds sequence number {}", v + 1),
    );

    // The server itself rewrites history and re-signs everything. First a
    // faithful rewrite: it must still verify (the tampering below is then
    // the only difference).
    let server = read_key_file(&cardd::server::server_key_path(&daemon.data)).expect("server key");
    let faithful = dir.path().join("d-rewritten-faithfully.cardd");
    write_items(&faithful, &server_rewrite(&items, &server, |_| {}));
    let (code, text) = run_python(&python, &faithful, &server_key);
    assert_eq!(code, 0, "a faithful server rewrite must verify:\n{text}");

    // (d) A request signature broken, everything re-chained and re-signed.
    let d = dir.path().join("d-resigned-bad-request.cardd");
    write_items(
        &d,
        &server_rewrite(&items, &server, |r| {
            if r.seq == v {
                r.request_signature[10] ^= 1;
            }
        }),
    );
    assert_rejected(
        &python,
        &d,
        &server_key,
        &format!("record {v}: request signature does not verify"),
    );

    // (e) A purchase "signed" by a key the server made up.
    let rogue = SigningKey::from_bytes(&[42; 32]);
    let e = dir.path().join("e-resigned-rogue-key.cardd");
    write_items(
        &e,
        &server_rewrite(&items, &server, |r| {
            if r.seq == v {
                r.signer_public_key = rogue.verifying_key().to_bytes().to_vec();
                r.request_signature = sign_request(&rogue, &r.request);
            }
        }),
    );
    assert_rejected(
        &python,
        &e,
        &server_key,
        &format!("record {v}: the signer's key is not the key enrolled"),
    );

    // (f) A balance inflated in one record.
    let f = dir.path().join("f-resigned-balance.cardd");
    write_items(
        &f,
        &server_rewrite(&items, &server, |r| {
            if r.seq == v {
                r.paid_balance_after_minor += 10_000;
            }
        }),
    );
    assert_rejected(
        &python,
        &f,
        &server_key,
        &format!("record {v}: card {}: balances after", victim.card),
    );

    // (g) A request carrying an unknown field, validly signed by its own
    // terminal: both verifiers apply the daemon's acceptance rule.
    let till = demo.terminal_key_path(victim.terminal_id as usize - 1);
    let till = read_key_file(&till).expect("terminal key");
    let g = dir.path().join("g-request-unknown-field.cardd");
    write_items(
        &g,
        &server_rewrite(&items, &server, |r| {
            if r.seq == v {
                r.request.extend_from_slice(&[0x98, 0x06, 0x01]);
                r.request_signature = sign_request(&till, &r.request);
            }
        }),
    );
    let refused = format!("record {v}: request refused: Request: unknown field 99");
    assert_rejected(&python, &g, &server_key, &refused);
    let (ok_rust, text) = run_rust_verify(&g, &server_key);
    assert!(
        !ok_rust && text.contains("request refused: Request: unknown field 99"),
        "{text}"
    );

    // (h) An owner's load whose record the server re-labels (another
    // reference than the order the owner signed for).
    let owner_load = records
        .iter()
        .find(|r| r.kind() == RecordKind::TopUp && r.signer() == pb::Signer::Owner)
        .expect("an owner load")
        .seq;
    let h = dir.path().join("h-owner-load-reference.cardd");
    write_items(
        &h,
        &server_rewrite(&items, &server, |r| {
            if r.seq == owner_load {
                r.reference = "INV-78".into();
            }
        }),
    );
    let relabelled = format!(
        "record {owner_load}: the top-up's channel or reference differs from the signed request"
    );
    assert_rejected(&python, &h, &server_key, &relabelled);

    // (i) A record moved back in time (into an earlier brand day, before a
    // card's expiry) and everything re-signed: time never goes backwards.
    let before = records
        .iter()
        .find(|r| r.seq == v - 1)
        .expect("record before v");
    let i = dir.path().join("i-time-backwards.cardd");
    write_items(
        &i,
        &server_rewrite(&items, &server, |r| {
            if r.seq == v {
                r.time_ms = before.time_ms - 1;
            }
        }),
    );
    assert_rejected(
        &python,
        &i,
        &server_key,
        &format!("record {v}: time goes backwards"),
    );
    let (ok_rust, text) = run_rust_verify(&i, &server_key);
    assert!(
        !ok_rust && text.contains(&format!("record {v}")) && text.contains("time goes backwards"),
        "{text}"
    );

    // The Rust verifier agrees on every tampered copy.
    for bad in [&a, &b, &c, &d, &e, &f, &g, &h, &i] {
        let (ok_rust, text) = run_rust_verify(bad, &server_key);
        assert!(
            !ok_rust,
            "cardd audit verify accepts {}:\n{text}",
            bad.display()
        );
    }
    drop(daemon);
}

/// The request acceptance rule, differentially: the Python verifier's
/// `check_request_encoding` and the daemon's `cardd::wire` give the same
/// verdict and the same message for a hand-written purchase and every
/// single-byte corruption and truncation of it.
#[test]
fn python_and_rust_apply_the_same_request_acceptance_rule() {
    let Some(python) = python() else { return };
    let base = common::raw::explicit_defaults_purchase(300, 1, "8000010000000000422", 1_250);
    let mut cases = vec![base.clone(), Vec::new()];
    for at in 0..base.len() {
        cases.push(base[..at].to_vec());
        for value in [0x00, 0x01, 0x02, 0x07, 0x7f, 0x80, 0xff] {
            let mut c = base.clone();
            c[at] = value;
            cases.push(c);
        }
    }
    for tail in [
        &[0x98, 0x06, 0x01][..],
        &[0x08, 0x01],
        &[0x00],
        &[0x5a, 0x00],
    ] {
        cases.push([base.as_slice(), tail].concat());
    }
    let rust = same_verdicts(&python, &cases);
    assert!(rust.iter().filter(|v| *v == "OK").count() > 1);
}

/// Runs the acceptance rule of both implementations on every case and
/// demands the same verdict (the refusal's text included); returns them.
fn same_verdicts(python: &str, cases: &[Vec<u8>]) -> Vec<String> {
    let verdict = |c: &Vec<u8>| match cardd::wire::decode_request(c) {
        Ok(_) => "OK".to_string(),
        Err(e) => e.to_string(),
    };
    let rust: Vec<String> = cases.iter().map(verdict).collect();
    let script = "import importlib.util, sys\n\
        spec = importlib.util.spec_from_file_location('v', sys.argv[1])\n\
        v = importlib.util.module_from_spec(spec)\n\
        spec.loader.exec_module(v)\n\
        for h in sys.argv[2:]:\n\
        \x20   try:\n\
        \x20       v.check_request_encoding(bytes.fromhex(h.lstrip('x')))\n\
        \x20       print('OK')\n\
        \x20   except v.Fail as e:\n\
        \x20       print(e.what)\n";
    let out = run::run_bounded(
        Command::new(python)
            .args(["-c", script])
            .arg(verifier_script())
            .args(cases.iter().map(|c| format!("x{}", hex::encode(c)))),
        PYTHON_LIMIT,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let python_verdicts: Vec<&str> = text.lines().collect();
    assert_eq!(python_verdicts.len(), cases.len());
    for ((c, r), p) in cases.iter().zip(&rust).zip(&python_verdicts) {
        assert_eq!(r, p, "verdicts differ on {}", hex::encode(c));
    }
    rust
}

/// Issue 15's operations and rule fields, every field set: both rules
/// accept them, and agree on every truncation and on an unknown field
/// added to each.
#[test]
fn python_and_rust_agree_on_the_corrections_limits_and_rotations() {
    let Some(python) = python() else { return };
    let card = "8000010000000000422".to_string();
    let key = SigningKey::from_bytes(&[5; 32])
        .verifying_key()
        .to_bytes()
        .to_vec();
    let rules = pb::Rules {
        max_balance_named_minor: 1,
        max_balance_anonymous_minor: 2,
        max_top_up_minor: 3,
        max_daily_spend_minor: 4,
        card_validity_days: 1_096,
        currency_default_limits: true,
        ..Default::default()
    };
    let ops = [
        Op::AdjustCard(pb::AdjustCard {
            card: card.clone(),
            amount_minor: -5,
            bonus: true,
            reason: "r".into(),
        }),
        Op::VoidTopUp(pb::VoidTopUp {
            original_seq: 9,
            reason: "r".into(),
        }),
        Op::CloseCard(pb::CloseCard {
            card: card.clone(),
            reason: "r".into(),
        }),
        Op::SetCardExpiry(pb::SetCardExpiry {
            card,
            expires_ms: 1,
        }),
        Op::RotateOwnerKey(pb::RotateOwnerKey {
            new_public_key: key.clone(),
            new_key_signature: vec![1; 64],
        }),
        Op::RekeyTerminal(pb::RekeyTerminal {
            terminal_id: 2,
            new_public_key: key.clone(),
        }),
        Op::RotateServerKey(pb::RotateServerKey {
            new_public_key: key,
        }),
        Op::SetRules(pb::SetRules { rules: Some(rules) }),
    ];
    let (mut cases, mut whole) = (Vec::new(), Vec::new());
    for op in ops {
        let bytes = cardd::testing::request_as(1, 7, "o", op).encode_to_vec();
        cases.extend((0..bytes.len()).map(|at| bytes[..at].to_vec()));
        cases.push([bytes.as_slice(), &[0x98, 0x06, 0x01]].concat());
        whole.push(cases.len());
        cases.push(bytes);
    }
    let verdicts = same_verdicts(&python, &cases);
    for at in whole {
        assert_eq!(verdicts[at], "OK", "{}", hex::encode(&cases[at]));
        assert!(
            verdicts[at - 1].contains("unknown field 99"),
            "{}",
            verdicts[at - 1]
        );
    }
}

// ---------------------------------------------------------------------------
// Issue 15: corrections and key rotations, in both verifiers.
// ---------------------------------------------------------------------------

/// Submits `op` as `principal` signed by `key` and demands a record; its seq.
fn accepted(
    ledger: &mut cardd::ledger::BrandLedger,
    key: &SigningKey,
    principal: cardd::state::Principal,
    txn: u64,
    op: Op,
) -> u64 {
    let reply = ledger
        .submit_now(cardd::testing::signed(key, principal, txn, op))
        .expect("committed")
        .unwrap_or_else(|r| panic!("refused: {r:?}"));
    reply.receipt.expect("a record").seq
}

/// A brand (fixture keys: server seed 1, owner 2, till 3) whose chain holds
/// an adjustment, a void after a shift close, a close-card, an owner key
/// rotation, a terminal re-key and two server key rotations; exported
/// through the library. Returns the export, the seq of the first server
/// rotation and the keys that followed (owner, till, server, server).
fn rotated_export(dir: &Path) -> (PathBuf, u64, [SigningKey; 4]) {
    use cardd::state::Principal::{Owner, Terminal};
    use cardd::testing::{key, owner_key, provision, terminal_key};
    let store = std::sync::Arc::new(cardd::storage::DiskStore::open(&dir.join("data")).unwrap());
    let (mut ledger, card) = provision(store.clone(), "Rotating Tea", 50_000);
    let (owner, till) = (owner_key(), terminal_key());
    let adjust = |amount_minor: i64| {
        Op::AdjustCard(pb::AdjustCard {
            card: card.clone(),
            amount_minor,
            bonus: false,
            reason: "mis-keyed".into(),
        })
    };
    accepted(&mut ledger, &owner, Owner, 4, adjust(-5_000));
    let load = accepted(
        &mut ledger,
        &till,
        Terminal(1),
        2,
        cardd::testing::top_up(&card, 10_000),
    );
    let close_shift = Op::CloseShift(pb::CloseShift::default());
    accepted(&mut ledger, &till, Terminal(1), 3, close_shift);
    let void = Op::VoidTopUp(pb::VoidTopUp {
        original_seq: load,
        reason: "keyed twice".into(),
    });
    accepted(&mut ledger, &owner, Owner, 5, void);
    let (new_owner, new_till) = (key(40), key(41));
    let pk = new_owner.verifying_key().to_bytes();
    let proof = new_owner.sign(&cardd::crypto::owner_key_message(
        cardd::testing::BRAND,
        &pk,
    ));
    let rotate = Op::RotateOwnerKey(pb::RotateOwnerKey {
        new_public_key: pk.to_vec(),
        new_key_signature: proof.to_bytes().to_vec(),
    });
    accepted(&mut ledger, &owner, Owner, 6, rotate);
    accepted(&mut ledger, &new_owner, Owner, 7, adjust(100));
    let rekey = Op::RekeyTerminal(pb::RekeyTerminal {
        terminal_id: 1,
        new_public_key: new_till.verifying_key().to_bytes().to_vec(),
    });
    accepted(&mut ledger, &new_owner, Owner, 8, rekey);
    accepted(
        &mut ledger,
        &new_till,
        Terminal(1),
        4,
        purchase_op(&card, 1_000),
    );
    let (server2, server3) = (key(42), key(43));
    let rotation = ledger.state.seq + 1;
    ledger
        .rotate_server_key(std::sync::Arc::new(server2.clone()))
        .unwrap()
        .expect("rotated");
    accepted(
        &mut ledger,
        &new_till,
        Terminal(1),
        5,
        purchase_op(&card, 1_000),
    );
    ledger
        .rotate_server_key(std::sync::Arc::new(server3.clone()))
        .unwrap()
        .expect("rotated again");
    let close = Op::CloseCard(pb::CloseCard {
        card: card.clone(),
        reason: "member left".into(),
    });
    accepted(&mut ledger, &new_owner, Owner, 9, close);
    assert_eq!(ledger.state.liability(), (0, 0));
    let export = dir.join("rotated.cardd");
    let mut out = std::fs::File::create(&export).unwrap();
    let current = server3.verifying_key().to_bytes();
    cardd::audit::write_export(
        store.as_ref(),
        cardd::testing::BRAND,
        &current,
        &mut out,
        |_, _| {},
    )
    .expect("export");
    (export, rotation, [new_owner, new_till, server2, server3])
}

fn purchase_op(card: &str, amount_minor: i64) -> Op {
    cardd::testing::purchase(card, amount_minor, false)
}

#[test]
fn both_verifiers_follow_key_rotations_from_the_first_server_key() {
    let Some(python) = python() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let (export, rotation, [.., server3]) = rotated_export(dir.path());
    let first = hex::encode(cardd::testing::server_key().verifying_key().to_bytes());
    let (code, text) = run_python(&python, &export, &first);
    assert_eq!(code, 0, "{text}");
    assert!(text.starts_with("OK: "), "{text}");
    assert!(text.contains("outstanding paid 0 bonus 0"), "{text}");
    let (ok, text) = run_rust_verify(&export, &first);
    assert!(ok, "{text}");
    // The trust anchor is the first key, not the one in force now.
    let now = hex::encode(server3.verifying_key().to_bytes());
    assert_rejected(&python, &export, &now, "different server key");
    assert!(!run_rust_verify(&export, &now).0);

    // A forged rotation: someone holding only a key of their own endorses
    // it in the old key's place, re-chains and re-signs what follows.
    let thief = SigningKey::from_bytes(&[66; 32]);
    let items = read_items(&export);
    let forged = server_rewrite_keyed(
        &items,
        |size| {
            if size >= rotation {
                thief.clone()
            } else {
                cardd::testing::server_key().as_ref().clone()
            }
        },
        |rec| {
            if rec.seq != rotation {
                return;
            }
            let request = pb::Request {
                txn_id: rec.txn_id,
                brand_id: rec.brand_id,
                operator: rec.operator.clone(),
                op: Some(Op::RotateServerKey(pb::RotateServerKey {
                    new_public_key: thief.verifying_key().to_bytes().to_vec(),
                })),
                ..Default::default()
            }
            .encode_to_vec();
            rec.request_signature = sign_request(&thief, &request);
            rec.request = request;
            rec.signer_public_key = thief.verifying_key().to_bytes().to_vec();
            rec.new_public_key = thief.verifying_key().to_bytes().to_vec();
        },
    );
    let bad = dir.path().join("forged-rotation.cardd");
    write_items(&bad, &forged);
    assert_rejected(
        &python,
        &bad,
        &first,
        &format!("record {rotation}: the signer's key is not the key enrolled"),
    );
    let (ok, text) = run_rust_verify(&bad, &first);
    assert!(!ok, "{text}");
    assert!(
        text.contains("not enrolled with the key in the record"),
        "{text}"
    );
    // Checkpoints after the rotation signed by the old key: refused too.
    let stale = server_rewrite_keyed(
        &items,
        |_| cardd::testing::server_key().as_ref().clone(),
        |_| {},
    );
    let bad = dir.path().join("stale-checkpoints.cardd");
    write_items(&bad, &stale);
    assert_rejected(&python, &bad, &first, "bad server signature");
    assert!(!run_rust_verify(&bad, &first).0);
}

/// `cardd rotate-server-key` on a stopped daemon: the daemon serves on
/// under the new key, `cardd check` passes, and both verifiers accept the
/// export trusting only the first key. A rotation left unfinished stops
/// every start until it is run again.
#[test]
fn a_server_key_rotation_on_the_daemon_verifies_from_the_first_key() {
    let Some(python) = python() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut daemon, demo) = Daemon::demo(dir.path());
    let data = daemon.data.clone();
    let server_key = |data: &Path| {
        run::cardd_ok([
            OsStr::new("server-key"),
            OsStr::new("--data"),
            data.as_os_str(),
        ])
        .trim()
        .to_string()
    };
    let first = server_key(&data);
    let card = demo.manifest.cards[0].clone();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let mut till = demo.terminal(daemon.addr, 0).await;
        ok(&mut till, 100, purchase(&card, 10_00)).await;
    });
    daemon.kill9();
    let rotate = || {
        run::cardd([
            OsStr::new("rotate-server-key"),
            OsStr::new("--data"),
            data.as_os_str(),
        ])
    };
    let out = rotate();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let second = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_ne!(second, first);
    assert_eq!(server_key(&data), second);
    run::cardd_check(&data);

    // Interrupted: a new key is waiting in server.key.next. Nothing opens
    // the directory until the rotation is run again.
    cardd::crypto::write_key_file(
        &data.join("server.key.next"),
        &SigningKey::from_bytes(&[77; 32]),
    )
    .unwrap();
    let refused = run::cardd([OsStr::new("check"), OsStr::new("--data"), data.as_os_str()]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("rotation is unfinished"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let out = rotate();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let third = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_eq!(
        third,
        hex::encode(SigningKey::from_bytes(&[77; 32]).verifying_key().to_bytes())
    );

    let mut daemon = Daemon::start(&data, &[]);
    rt.block_on(async {
        let mut till = demo.terminal(daemon.addr, 0).await;
        ok(&mut till, 101, purchase(&card, 10_00)).await;
    });
    daemon.kill9();
    let export = dir.path().join("rotated-daemon.cardd");
    run::cardd_ok([
        OsStr::new("audit"),
        OsStr::new("export"),
        OsStr::new("--data"),
        data.as_os_str(),
        OsStr::new("--brand"),
        OsStr::new(&demo.manifest.brand_id.to_string()),
        OsStr::new("--out"),
        export.as_os_str(),
    ]);
    let (code, text) = run_python(&python, &export, &first);
    assert_eq!(code, 0, "{text}");
    let (ok, text) = run_rust_verify(&export, &first);
    assert!(ok, "{text}");
    assert!(
        !run_rust_verify(&export, &third).0,
        "the anchor is the first key"
    );
    // A backup across the rotations: the independent verifier accepts it
    // from the first key too (tests/backup/rotation.rs runs one on).
    let backups = dir.path().join("backups");
    run::cardd_ok([
        OsStr::new("backup"),
        OsStr::new("--data"),
        data.as_os_str(),
        OsStr::new("--out-dir"),
        backups.as_os_str(),
    ]);
    let backup = backups.join(format!("brand-{}.cardd-backup", demo.manifest.brand_id));
    let (code, text) = run_python(&python, &backup, &first);
    assert_eq!(code, 0, "{text}");
}
