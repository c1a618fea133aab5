//! The checking logic of the fuzz targets, shared by the libFuzzer targets
//! (`fuzz/fuzz_targets/*.rs`) and by the stable corpus replay test
//! (`tests/fuzz_corpus.rs`). Both include this file as a module with
//! `#[path]`, so it may use only what both crates have: cardd, prost,
//! tokio-util, bytes and ed25519-dalek (no `arbitrary`, no libfuzzer-sys).
//!
//! Every `check_*` function takes the raw fuzz input and panics when an
//! invariant breaks; a panic is what libFuzzer reports as a crash.
#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::OnceLock;

use bytes::BytesMut;
use cardd::audit::{verify_export, VerifyError, VerifyOptions, VerifyReport};
use cardd::error::Refusal;
use cardd::limits::{MAX_AMOUNT_MINOR, MAX_BALANCE_MINOR, MAX_POINTS};
use cardd::pb::{self, client_message::Body, request::Op, ErrorCode, RecordKind};
use cardd::replay::replay_record;
use cardd::state::{apply, BrandState, Card, Context, Outcome, Principal, TxnEntry, Written};
use cardd::testing;
use prost::Message;
use tokio_util::codec::Decoder;

// ---------------------------------------------------------------------------
// Allocation tracking: the largest single allocation made by this thread.
// ---------------------------------------------------------------------------

/// A global allocator that remembers, per thread, the largest single
/// allocation since the last reset. The fuzz targets and the corpus test
/// install it with `#[global_allocator]`; `check_frame_input` asserts that it
/// is installed.
pub struct TrackingAlloc;

thread_local! {
    // const-initialised and without a destructor: safe to touch from the
    // allocator itself (no lazy initialisation, no allocation).
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note_allocation(size: usize) {
    let _ = LARGEST.try_with(|l| {
        if size > l.get() {
            l.set(size)
        }
    });
}

unsafe impl GlobalAlloc for TrackingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_allocation(layout.size());
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_allocation(layout.size());
        System.alloc_zeroed(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_allocation(new_size);
        System.realloc(ptr, layout, new_size)
    }
}

/// Forgets the largest allocation seen so far on this thread.
pub fn reset_largest_allocation() {
    LARGEST.with(|l| l.set(0));
}

/// The largest single allocation on this thread since the last reset.
pub fn largest_allocation() -> usize {
    LARGEST.with(|l| l.get())
}

/// True if `TrackingAlloc` is the global allocator of this binary.
pub fn allocation_tracking_installed() -> bool {
    reset_largest_allocation();
    let v: Vec<u8> = Vec::with_capacity(std::hint::black_box(12_345));
    drop(std::hint::black_box(v));
    let seen = largest_allocation();
    reset_largest_allocation();
    seen >= 12_345
}

/// Reads fuzz input from the front; past the end every read yields zeros
/// (like `arbitrary::Unstructured::fill_buffer`), so every input decodes.
pub struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Reader { data }
    }
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
    pub fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }
    fn fill<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let n = N.min(self.data.len());
        out[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        out
    }
    pub fn bool(&mut self) -> bool {
        self.byte() & 1 == 1
    }
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.fill())
    }
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.fill())
    }
    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.fill())
    }
    pub fn i64(&mut self) -> i64 {
        i64::from_le_bytes(self.fill())
    }
    /// Up to `n` bytes (fewer at the end of the input).
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        head
    }
}

// ---------------------------------------------------------------------------
// Target 1: frame_decoder.
// ---------------------------------------------------------------------------

/// The frame limit the targets use (the daemon's default).
pub const MAX_FRAME: usize = 64 * 1024;

/// What one frame_decoder input did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameRun {
    /// Frames returned by the codec.
    pub frames: usize,
    /// Frames that decoded as a ClientMessage.
    pub messages: usize,
    /// The codec refused an oversized length prefix.
    pub too_large: bool,
    /// The stream ended inside a frame (decode_eof reported leftovers).
    pub truncated: bool,
}

/// What a simple, independent reading of the stream expects.
struct FrameModel<'a> {
    frames: Vec<&'a [u8]>,
    too_large: bool,
    leftover: usize,
}

fn frame_model(stream: &[u8], limit: usize) -> FrameModel<'_> {
    let mut frames = Vec::new();
    let mut rest = stream;
    loop {
        if rest.len() < 4 {
            return FrameModel {
                frames,
                too_large: false,
                leftover: rest.len(),
            };
        }
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if len > limit {
            return FrameModel {
                frames,
                too_large: true,
                leftover: 0,
            };
        }
        // The codec consumes a complete head as soon as it has one, so only
        // the payload bytes are left over at the end.
        if rest.len() - 4 < len {
            return FrameModel {
                frames,
                too_large: false,
                leftover: rest.len() - 4,
            };
        }
        frames.push(&rest[4..4 + len]);
        rest = &rest[4 + len..];
    }
}

/// Splits a frame_decoder input into chunk sizes and the byte stream:
/// byte 0 gives the number of chunk-size bytes that follow (0..=7; 0 means
/// the whole stream at once); each is a chunk size of 1..=256 bytes, used in
/// turn until the stream is fed.
pub fn frame_input_parts(data: &[u8]) -> (Vec<usize>, &[u8]) {
    let Some((&head, rest)) = data.split_first() else {
        return (vec![], data);
    };
    let n = usize::from(head % 8).min(rest.len());
    let sizes = rest[..n].iter().map(|&b| usize::from(b) + 1).collect();
    (sizes, &rest[n..])
}

/// Builds a frame_decoder input from chunk sizes (each 1..=256) and a stream.
pub fn frame_input(chunks: &[usize], stream: &[u8]) -> Vec<u8> {
    assert!(chunks.len() < 8 && chunks.iter().all(|c| (1..=256).contains(c)));
    let mut out = vec![chunks.len() as u8];
    out.extend(chunks.iter().map(|&c| (c - 1) as u8));
    out.extend_from_slice(stream);
    out
}

/// Feeds the stream to `cardd::codec::frame_codec(MAX_FRAME)` in the input's
/// chunks, decoding every frame as a `ClientMessage`. Invariants: the frames
/// are exactly those of an independent reading of the stream (same bytes,
/// same order), none is over the limit, an oversized length prefix is an
/// "invalid data" error at exactly the frame where it appears, and no single
/// allocation is anywhere near an oversized announced length.
pub fn check_frame_input(data: &[u8]) -> FrameRun {
    assert!(
        allocation_tracking_installed(),
        "TrackingAlloc is not the global allocator"
    );
    let (sizes, stream) = frame_input_parts(data);
    let model = frame_model(stream, MAX_FRAME);
    // Nothing the codec or prost does may allocate more than a frame plus
    // what was fed, with room for the buffer's doubling growth.
    let allocation_bound = 2 * (MAX_FRAME + 4 + stream.len()) + 4096;

    let mut codec = cardd::codec::frame_codec(MAX_FRAME);
    let mut buf = BytesMut::new();
    let mut run = FrameRun {
        frames: 0,
        messages: 0,
        too_large: false,
        truncated: false,
    };
    let mut fed = 0usize;
    let mut next_chunk = 0usize;
    reset_largest_allocation();
    'feed: while fed < stream.len() {
        let n = if sizes.is_empty() {
            stream.len()
        } else {
            sizes[next_chunk % sizes.len()]
        };
        next_chunk += 1;
        let chunk = &stream[fed..(fed + n).min(stream.len())];
        fed += chunk.len();
        buf.extend_from_slice(chunk);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => {
                    assert!(
                        frame.len() <= MAX_FRAME,
                        "frame of {} bytes over the limit",
                        frame.len()
                    );
                    assert!(
                        run.frames < model.frames.len(),
                        "codec returned a frame the stream does not hold"
                    );
                    assert_eq!(
                        &frame[..],
                        model.frames[run.frames],
                        "frame {} differs",
                        run.frames
                    );
                    run.frames += 1;
                    if check_client_message(&frame) {
                        run.messages += 1;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    assert!(
                        cardd::codec::is_frame_too_large(&e),
                        "unexpected codec error {e}"
                    );
                    assert!(
                        model.too_large,
                        "codec refused a stream with no oversized prefix: {e}"
                    );
                    assert_eq!(
                        run.frames,
                        model.frames.len(),
                        "error before all valid frames were returned"
                    );
                    run.too_large = true;
                    break 'feed;
                }
            }
        }
        let largest = largest_allocation();
        assert!(
            largest <= allocation_bound,
            "allocated {largest} bytes at once after {fed} of {} bytes (bound {allocation_bound})",
            stream.len()
        );
    }
    if !run.too_large {
        assert!(!model.too_large, "oversized length prefix was not refused");
        assert_eq!(run.frames, model.frames.len(), "codec missed frames");
        match codec.decode_eof(&mut buf) {
            Ok(None) => assert_eq!(
                model.leftover, 0,
                "a partial frame at the end was not reported"
            ),
            Ok(Some(_)) => panic!("decode_eof found a frame decode missed"),
            Err(_) => {
                assert!(model.leftover > 0, "decode_eof failed on a clean end");
                run.truncated = true;
            }
        }
    }
    let largest = largest_allocation();
    assert!(
        largest <= allocation_bound,
        "allocated {largest} bytes at once (bound {allocation_bound})"
    );
    run
}

/// Decodes a frame as the server does. A message that decodes must
/// re-encode to no more bytes than it came in, and decode back to itself;
/// a signed request inside must round-trip too.
fn check_client_message(frame: &[u8]) -> bool {
    let Ok(msg) = pb::ClientMessage::decode(frame) else {
        return false;
    };
    let again = msg.encode_to_vec();
    assert!(again.len() <= frame.len(), "re-encoding grew the message");
    assert_eq!(
        pb::ClientMessage::decode(again.as_slice()).expect("re-encoded message decodes"),
        msg
    );
    if let Some(Body::Signed(s)) = &msg.body {
        if let Ok(req) = pb::Request::decode(s.request.as_slice()) {
            let enc = req.encode_to_vec();
            assert_eq!(
                pb::Request::decode(enc.as_slice()).expect("re-encoded request decodes"),
                req
            );
        }
    }
    true
}

// ---------------------------------------------------------------------------
// Target 2: request_handler.
// ---------------------------------------------------------------------------

/// The brand the request_handler world runs.
pub const BRAND: u32 = 7;
/// Cards issued and funded in the starting state.
pub const START_CARDS: usize = 4;
/// Steps taken from one input at most.
pub const MAX_STEPS: usize = 256;
/// Signature bytes kept in records (the state machine does not check them).
const SIGNATURE: [u8; 64] = [0x5a; 64];

struct Keys {
    server: [u8; 32],
    owner: [u8; 32],
    /// Valid keys for terminals (the first two are enrolled at the start).
    pool: Vec<[u8; 32]>,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| Keys {
        server: cardd::testing::key(1).verifying_key().to_bytes(),
        owner: cardd::testing::key(2).verifying_key().to_bytes(),
        pool: (3..11)
            .map(|s| cardd::testing::key(s).verifying_key().to_bytes())
            .collect(),
    })
}

/// A valid card number (prefix and Luhn digit) of `brand` from a counter.
pub fn card_for(brand: u32, i: u64) -> String {
    let body = format!("8{brand:05}{:012}", i % 1_000_000_000_000);
    (0..10)
        .map(|d| format!("{body}{d}"))
        .find(|n| cardd::card_number::parse(n) == Some(brand))
        .expect("one check digit fits")
}

/// Step tags of the structured mode (tag byte < `RAW_TAG`, modulo 20).
pub mod tag {
    pub const INQUIRY: u8 = 0;
    pub const PURCHASE: u8 = 1;
    pub const TOP_UP: u8 = 2;
    pub const REFUND: u8 = 3;
    pub const REVERSAL: u8 = 4;
    pub const REDEEM_POINTS: u8 = 5;
    pub const CLOSE_SHIFT: u8 = 6;
    pub const TXN_STATUS: u8 = 7;
    pub const CREATE_STORE: u8 = 8;
    pub const ENROLL_TERMINAL: u8 = 9;
    pub const ISSUE_CARD: u8 = 10;
    pub const SET_CARD_BLOCKED: u8 = 11;
    pub const REPLACE_CARD: u8 = 12;
    pub const SET_RULES: u8 = 13;
    pub const EXPORT_LEDGER: u8 = 14;
    pub const CONSISTENCY_PROOF: u8 = 15;
    pub const CREATE_BRAND: u8 = 16;
    /// Send an earlier written request again, byte for byte.
    pub const RETRY: u8 = 17;
    /// Send a different request under an earlier request's txn id.
    pub const CONFLICT: u8 = 18;
    /// Move the clock (a day, or to an extreme).
    pub const CLOCK: u8 = 19;
    pub const COUNT: u8 = 20;
    /// A tag byte at or above this is a raw step: principal byte, u16 LE
    /// length, then that many bytes decoded with `Request::decode`.
    pub const RAW: u8 = 0xC0;
}

/// What one request_handler input did (for the test's coverage checks).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestRun {
    pub steps: usize,
    pub raw_undecodable: usize,
    pub refused: BTreeMap<i32, usize>,
    pub written: BTreeMap<i32, usize>,
    pub answers: usize,
}

/// The state machine plus everything the invariants are checked against.
#[derive(Clone)]
pub struct World {
    pub state: BrandState,
    /// Every record written, in order (`written[i].record.seq == i + 1`).
    pub written: Vec<Written>,
    /// (principal, exact request bytes) of written requests with a txn id.
    pub sent: Vec<(Principal, Vec<u8>)>,
    /// Next fresh txn id per principal namespace.
    next_txn: BTreeMap<u32, u64>,
    pub time_ms: i64,
    /// Card numbers named so far (issued, replaced, or tried).
    pub cards: Vec<String>,
    fresh_cards: u64,
    /// Net value and points the records moved (replacements excluded).
    net_paid: i128,
    net_bonus: i128,
    net_points: i128,
    /// Each terminal's shift totals recomputed from its records.
    shifts: BTreeMap<u32, pb::ShiftTotals>,
    pub run: RequestRun,
}

impl World {
    /// The starting world: a brand with the demo rules, two stores, one
    /// terminal in each, four cards (three funded, one with a purchase).
    pub fn start() -> World {
        static START: OnceLock<World> = OnceLock::new();
        START.get_or_init(World::build_start).clone()
    }

    fn build_start() -> World {
        let k = keys();
        let mut w = World {
            state: BrandState::new(BRAND),
            written: vec![],
            sent: vec![],
            next_txn: BTreeMap::new(),
            time_ms: 1_790_000_000_000,
            cards: vec![],
            fresh_cards: 1_000,
            net_paid: 0,
            net_bonus: 0,
            net_points: 0,
            shifts: BTreeMap::new(),
            run: RequestRun::default(),
        };
        let must = |w: &mut World, p: Principal, op: Op| {
            let txn = w.fresh_txn(p);
            match w.submit(p, txn, String::new(), op) {
                Ok(Outcome::Written(_)) => {}
                other => panic!("start-up step failed: {other:?}"),
            }
        };
        must(
            &mut w,
            Principal::Server,
            Op::CreateBrand(testing::create_brand("Fuzz", &k.owner)),
        );
        must(
            &mut w,
            Principal::Owner,
            Op::SetRules(pb::SetRules {
                rules: Some(cardd::demo::demo_rules()),
            }),
        );
        for name in ["A", "B"] {
            must(&mut w, Principal::Owner, testing::create_store(name));
        }
        for (i, key) in k.pool[..2].iter().enumerate() {
            must(
                &mut w,
                Principal::Owner,
                testing::enroll_terminal(i as u32 + 1, key, &format!("till {}", i + 1)),
            );
        }
        for i in 0..START_CARDS {
            let card = card_for(BRAND, i as u64);
            must(&mut w, Principal::Owner, testing::issue_card(&card));
        }
        for (card, term, amount) in [(0, 1, 120_000), (1, 2, 50_000), (2, 1, 1_000)] {
            let card = w.cards[card].clone();
            must(
                &mut w,
                Principal::Terminal(term),
                testing::top_up(&card, amount),
            );
        }
        let card = w.cards[0].clone();
        must(
            &mut w,
            Principal::Terminal(1),
            testing::purchase(&card, 12_345, false),
        );
        w.run = RequestRun::default();
        w
    }

    fn fresh_txn(&mut self, p: Principal) -> u64 {
        let next = self.next_txn.entry(p.txn_namespace()).or_insert(1);
        let t = *next;
        *next = next.wrapping_add(1).max(1);
        t
    }

    fn terminal_count(&self) -> u32 {
        self.state.terminals.len() as u32
    }

    /// The key enrolled for `p` (the server checks it before the state
    /// machine runs; records keep it and replay compares it).
    fn signer_key(&self, p: Principal) -> [u8; 32] {
        match p {
            Principal::Server => keys().server,
            Principal::Owner => self.state.owner_key,
            Principal::Terminal(id) => self.state.terminals[&id].public_key,
        }
    }

    fn submit(
        &mut self,
        p: Principal,
        txn: u64,
        operator: String,
        op: Op,
    ) -> Result<Outcome, Refusal> {
        let req = testing::request_as(BRAND, txn, &operator, op);
        let bytes = req.encode_to_vec();
        self.apply_checked(p, &bytes, &req)
    }

    /// Applies `req` (whose exact bytes are `bytes`) as `p` and checks every
    /// invariant against the state before.
    pub fn apply_checked(
        &mut self,
        p: Principal,
        bytes: &[u8],
        req: &pb::Request,
    ) -> Result<Outcome, Refusal> {
        self.run.steps += 1;
        self.time_ms = self.time_ms.saturating_add(61_000);
        let key = self.signer_key(p);
        let ctx = Context {
            time_ms: self.time_ms,
            principal: p,
            signer_key: &key,
            request: bytes,
            signature: &SIGNATURE,
        };
        let before = self.state.clone();
        let out = apply(&mut self.state, &ctx, req);
        match &out {
            Err(refusal) => {
                assert!(
                    self.state == before,
                    "refusal {refusal:?} changed the state"
                );
                assert!(
                    !matches!(
                        refusal.code,
                        ErrorCode::Unspecified | ErrorCode::Internal | ErrorCode::StorageFailure
                    ),
                    "refusal without a proper code: {refusal:?}"
                );
                *self.run.refused.entry(refusal.code as i32).or_default() += 1;
            }
            Ok(Outcome::Written(w)) => {
                self.check_written(&before, &ctx, req, w);
                *self.run.written.entry(w.record.kind).or_default() += 1;
                if req.txn_id != 0 && p != Principal::Server {
                    self.sent.push((p, bytes.to_vec()));
                }
                self.written.push(w.clone());
            }
            Ok(Outcome::Seen { seq }) => {
                assert!(self.state == before, "a seen txn changed the state");
                assert!(
                    (1..=self.state.seq).contains(seq),
                    "seen seq {seq} out of range"
                );
                let rec = &self.written[*seq as usize - 1].record;
                assert_eq!(rec.txn_id, req.txn_id, "seen record has another txn id");
                let rp = cardd::replay::principal_of(rec).expect("record has a signer");
                assert_eq!(
                    rp.txn_namespace(),
                    p.txn_namespace(),
                    "seen record of another signer"
                );
            }
            Ok(Outcome::Status { state: s, seq }) => {
                assert!(self.state == before, "a status query changed the state");
                assert!(
                    matches!(req.op, Some(Op::TxnStatus(_))),
                    "status answer to {:?}",
                    req.op
                );
                match s {
                    pb::TxnState::Unknown | pb::TxnState::Expired => assert_eq!(*seq, 0),
                    _ => assert!(
                        (1..=self.state.seq).contains(seq),
                        "status seq {seq} out of range"
                    ),
                }
                self.run.answers += 1;
            }
            Ok(Outcome::Answer(reply)) => {
                assert!(self.state == before, "an inquiry changed the state");
                let Some(Op::Inquiry(q)) = &req.op else {
                    panic!("answer to {:?}", req.op)
                };
                let view = reply.card.as_ref().expect("inquiry answer has the card");
                let number: u64 = q.card.parse().expect("an answered card number parses");
                assert_eq!(
                    view,
                    &self.state.card_view(number, &self.state.cards[&number])
                );
                self.run.answers += 1;
            }
        }
        self.check_state();
        out
    }

    fn check_written(
        &mut self,
        before: &BrandState,
        ctx: &Context,
        req: &pb::Request,
        w: &Written,
    ) {
        let rec = &w.record;
        assert_eq!(rec.seq, before.seq + 1, "record seq does not follow");
        assert_eq!(self.state.seq, rec.seq);
        assert_eq!(
            rec.prev_hash,
            before.head_hash.to_vec(),
            "record does not link to the one before"
        );
        assert_eq!(w.hash, cardd::crypto::leaf_hash(&w.bytes), "record hash");
        assert_eq!(self.state.head_hash, w.hash);
        assert_eq!(self.state.merkle.size(), self.state.seq);
        assert_eq!(
            rec.encode_to_vec(),
            w.bytes,
            "record bytes are not its encoding"
        );
        assert_eq!(
            &pb::Record::decode(w.bytes.as_slice()).expect("record decodes"),
            rec
        );
        assert_eq!(
            rec.request, ctx.request,
            "record does not keep the signed bytes"
        );
        assert_eq!(rec.request_signature, ctx.signature);
        assert_eq!(rec.signer_public_key, ctx.signer_key.to_vec());
        assert_eq!(rec.signer, ctx.principal.signer() as i32);
        assert_eq!(
            (rec.time_ms, rec.brand_id, rec.txn_id),
            (ctx.time_ms, BRAND, req.txn_id)
        );
        assert_eq!(rec.operator, req.operator);
        for (name, v) in [
            ("paid_in", rec.paid_in_minor),
            ("bonus_in", rec.bonus_in_minor),
            ("paid_out", rec.paid_out_minor),
            ("bonus_out", rec.bonus_out_minor),
            ("points_in", rec.points_in),
            ("points_out", rec.points_out),
        ] {
            assert!(
                v >= 0,
                "record {} ({:?}) has negative {name} = {v}",
                rec.seq,
                rec.kind()
            );
        }
        if rec.txn_id != 0 && ctx.principal != Principal::Server {
            assert_eq!(
                self.state
                    .txns
                    .get(&(ctx.principal.txn_namespace(), rec.txn_id)),
                Some(&TxnEntry::Committed(rec.seq)),
                "written txn is not in the idempotency index"
            );
        }
        let kind = rec.kind();
        // The card the record names holds what the record says.
        let mut touched = vec![];
        if !rec.card.is_empty() {
            let number: u64 = rec.card.parse().expect("record card parses");
            let card = &self.state.cards[&number];
            assert_eq!(
                (
                    rec.paid_balance_after_minor,
                    rec.bonus_balance_after_minor,
                    rec.points_after,
                    rec.card_status_after,
                    rec.total_spend_after_minor,
                    rec.visits_after
                ),
                (
                    card.paid,
                    card.bonus,
                    card.points,
                    card.status as i32,
                    card.total_spend,
                    card.visits
                ),
                "record {} disagrees with its card",
                rec.seq
            );
            let old = before.cards.get(&number).cloned().unwrap_or_default();
            if kind == RecordKind::CardReplaced {
                let other: u64 = rec.other_card.parse().expect("replaced card parses");
                let was = &before.cards[&other];
                assert!(old == Card::default(), "replacement onto an existing card");
                assert_eq!(
                    (card.paid, card.bonus, card.points),
                    (was.paid, was.bonus, was.points)
                );
                assert_eq!(
                    (rec.paid_in_minor, rec.bonus_in_minor, rec.points_in),
                    (was.paid, was.bonus, was.points)
                );
                let retired = &self.state.cards[&other];
                assert_eq!((retired.paid, retired.bonus, retired.points), (0, 0, 0));
                touched.push(other);
            } else {
                assert_eq!(
                    i128::from(card.paid) - i128::from(old.paid),
                    i128::from(rec.paid_in_minor) - i128::from(rec.paid_out_minor),
                    "paid delta of record {}",
                    rec.seq
                );
                assert_eq!(
                    i128::from(card.bonus) - i128::from(old.bonus),
                    i128::from(rec.bonus_in_minor) - i128::from(rec.bonus_out_minor),
                    "bonus delta of record {}",
                    rec.seq
                );
                assert_eq!(
                    i128::from(card.points) - i128::from(old.points),
                    i128::from(rec.points_in) - i128::from(rec.points_out),
                    "points delta of record {}",
                    rec.seq
                );
            }
            touched.push(number);
            if matches!(kind, RecordKind::CardIssued | RecordKind::CardReplaced)
                && !self.cards.contains(&rec.card)
            {
                self.cards.push(rec.card.clone());
            }
        } else {
            let net =
                rec.paid_in_minor | rec.bonus_in_minor | rec.paid_out_minor | rec.bonus_out_minor;
            assert_eq!(
                net | rec.points_in | rec.points_out,
                0,
                "a record without a card moves value"
            );
        }
        // No other card changed.
        assert_eq!(
            self.state.cards.len(),
            before.cards.len()
                + usize::from(matches!(
                    kind,
                    RecordKind::CardIssued | RecordKind::CardReplaced
                ))
        );
        for (number, card) in &self.state.cards {
            if !touched.contains(number) {
                assert!(
                    before.cards.get(number) == Some(card),
                    "record {} changed card {number} it does not name",
                    rec.seq
                );
            }
        }
        if kind != RecordKind::CardReplaced {
            self.net_paid += i128::from(rec.paid_in_minor) - i128::from(rec.paid_out_minor);
            self.net_bonus += i128::from(rec.bonus_in_minor) - i128::from(rec.bonus_out_minor);
            self.net_points += i128::from(rec.points_in) - i128::from(rec.points_out);
        }
        // Shift totals recomputed from the terminal's own records.
        if kind == RecordKind::TerminalEnrolled {
            self.shifts.insert(rec.new_id, pb::ShiftTotals::default());
        }
        if let Principal::Terminal(t) = ctx.principal {
            let s = self.shifts.entry(t).or_default();
            let value = |a: i64, b: i64| a.checked_add(b).expect("record values fit");
            match kind {
                RecordKind::Purchase => {
                    s.purchase_count += 1;
                    s.purchase_minor += value(rec.paid_out_minor, rec.bonus_out_minor);
                }
                RecordKind::TopUp => {
                    s.top_up_count += 1;
                    s.top_up_minor += rec.paid_in_minor;
                }
                RecordKind::Refund => {
                    s.refund_count += 1;
                    s.refund_minor += value(rec.paid_in_minor, rec.bonus_in_minor);
                }
                RecordKind::Reversal => {
                    s.reversal_count += 1;
                    s.reversal_minor += value(
                        value(rec.paid_in_minor, rec.bonus_in_minor),
                        value(rec.paid_out_minor, rec.bonus_out_minor),
                    );
                }
                RecordKind::PointsRedeemed => {
                    s.redeem_count += 1;
                    s.redeem_points += rec.points_out;
                }
                RecordKind::ShiftClosed => {
                    assert_eq!(
                        rec.shift_totals.as_ref(),
                        Some(&*s),
                        "shift close totals differ from the records"
                    );
                    let asked = match &req.op {
                        Some(Op::CloseShift(c)) => c.terminal_totals.as_ref(),
                        _ => None,
                    };
                    assert_eq!(
                        rec.shift_balanced,
                        asked == Some(&*s),
                        "shift_balanced is wrong"
                    );
                    *s = pb::ShiftTotals::default();
                }
                other => panic!("a terminal wrote a {other:?} record"),
            }
        }
    }

    /// Invariants of the whole state, checked after every step.
    fn check_state(&self) {
        let (mut paid, mut bonus, mut points) = (0i128, 0i128, 0i128);
        for (number, c) in &self.state.cards {
            assert!(
                c.paid >= 0 && c.bonus >= 0 && c.points >= 0 && c.total_spend >= 0,
                "card {number} is negative: {c:?}"
            );
            assert!(
                c.paid + c.bonus <= MAX_BALANCE_MINOR,
                "card {number} over the balance limit: {c:?}"
            );
            assert!(
                c.points <= MAX_POINTS,
                "card {number} over the points limit: {c:?}"
            );
            if c.status == pb::CardStatus::Replaced {
                assert_eq!(
                    (c.paid, c.bonus, c.points),
                    (0, 0, 0),
                    "a replaced card holds value"
                );
            }
            paid += i128::from(c.paid);
            bonus += i128::from(c.bonus);
            points += i128::from(c.points);
        }
        assert_eq!(self.state.liability(), (paid, bonus));
        assert_eq!(
            paid, self.net_paid,
            "paid balances differ from the records' net paid deltas"
        );
        assert_eq!(
            bonus, self.net_bonus,
            "bonus balances differ from the records' net bonus deltas"
        );
        assert_eq!(
            points, self.net_points,
            "points differ from the records' net points deltas"
        );
        // A purchase's refund bookkeeping: never more than it spent, and
        // points taken back in proportion to the value refunded, rounded
        // down (the rule in src/state/apply.rs, `refund`).
        for (seq, e) in self.state.effects.iter() {
            if e.kind != RecordKind::Purchase {
                continue;
            }
            assert!(
                (0..=e.paid_out).contains(&e.refunded_paid)
                    && (0..=e.bonus_out).contains(&e.refunded_bonus)
                    && e.refunded_points >= 0,
                "purchase {seq} refund bookkeeping out of range: {e:?}"
            );
            let approved = i128::from(e.paid_out) + i128::from(e.bonus_out);
            let refunded = i128::from(e.refunded_paid) + i128::from(e.refunded_bonus);
            let at_most = i128::from(e.points_in) * refunded / approved;
            assert!(
                i128::from(e.refunded_points) <= at_most,
                "purchase {seq}: {} points taken back for {refunded} of {approved} refunded \
                 (at most {at_most}): {e:?}",
                e.refunded_points
            );
        }
        for (id, t) in &self.state.terminals {
            assert_eq!(
                Some(&t.shift),
                self.shifts.get(id),
                "terminal {id} shift totals differ from its records"
            );
        }
    }

    /// Replays every written record into a fresh state: each must come out
    /// byte for byte, and the result must equal the live state.
    pub fn check_replay(&self) {
        let mut rebuilt = BrandState::new(BRAND);
        for w in &self.written {
            let again = replay_record(&mut rebuilt, w.record.seq, &w.bytes, &keys().server)
                .unwrap_or_else(|e| panic!("replay failed: {e}"));
            assert!(&again == w, "replayed record {} differs", w.record.seq);
        }
        assert!(
            rebuilt == self.state,
            "state rebuilt from the records differs from the live state"
        );
    }

    // -- structured mode: choices from the input --------------------------

    fn any_principal(&self, p: u8) -> Principal {
        match p % 4 {
            0 => Principal::Server,
            1 => Principal::Owner,
            _ => Principal::Terminal(1 + u32::from(p / 4) % self.terminal_count()),
        }
    }

    /// Mostly the principal the operation belongs to; from 0xE0 any.
    fn principal(&self, r: &mut Reader, tag: u8) -> Principal {
        let p = r.byte();
        if p >= 0xE0 {
            return self.any_principal(p);
        }
        match tag {
            tag::CREATE_BRAND => Principal::Server,
            tag::CREATE_STORE..=tag::SET_RULES | tag::EXPORT_LEDGER | tag::CONSISTENCY_PROOF => {
                Principal::Owner
            }
            _ => Principal::Terminal(1 + u32::from(p) % self.terminal_count()),
        }
    }

    fn txn(&mut self, r: &mut Reader, p: Principal) -> u64 {
        match r.byte() {
            0..=239 => self.fresh_txn(p),
            240 => 0,
            241 => u64::MAX,
            242 => r.u64(),
            _ => {
                // Reuse one of this signer's earlier ids.
                let last = self.next_txn.get(&p.txn_namespace()).copied().unwrap_or(1);
                last.saturating_sub(1 + u64::from(r.byte() % 8)).max(1)
            }
        }
    }

    fn text(&mut self, r: &mut Reader) -> String {
        match r.byte() {
            0..=199 => String::new(),
            200..=219 => "cashier".into(),
            220 => "x".repeat(64),
            221 => "x".repeat(65),
            222 => "é".repeat(32),
            223 => "tab\there".into(),
            224 => "\u{7f}".into(),
            225 => "y".repeat(201),
            _ => {
                let n = usize::from(r.byte() % 80);
                String::from_utf8_lossy(r.take(n)).into_owned()
            }
        }
    }

    fn card(&mut self, r: &mut Reader) -> String {
        let c = r.byte();
        match c {
            0..=199 => self.cards[usize::from(c) % self.cards.len()].clone(),
            200..=219 => {
                self.fresh_cards += 1;
                card_for(BRAND, self.fresh_cards)
            }
            220 => card_for(BRAND + 1, 1),
            221 => String::new(),
            222 => {
                // A known number with a wrong check digit.
                let mut s = self.cards[0].clone().into_bytes();
                s[18] = b'0' + (s[18] - b'0' + 1) % 10;
                String::from_utf8(s).expect("digits")
            }
            223 => "8".repeat(19),
            224 => "9".repeat(40),
            225 => format!("{}x", &self.cards[0][..18]),
            226 => "18446744073709551615".into(),
            227 => "-800007000000000000".into(),
            228 => card_for(0, 5),
            229 => card_for(99_999, 5),
            _ => {
                let n = usize::from(r.byte() % 24);
                String::from_utf8_lossy(r.take(n)).into_owned()
            }
        }
    }

    fn amount(&mut self, r: &mut Reader) -> i64 {
        match r.byte() {
            // Small sums, where rounding and refund bookkeeping bite.
            0..=99 => 1 + i64::from(r.byte()),
            100..=199 => 1 + i64::from(r.u16()) * 7,
            200 => 0,
            201 => -1,
            202 => i64::MIN,
            203 => i64::MAX,
            204 => MAX_AMOUNT_MINOR,
            205 => MAX_AMOUNT_MINOR + 1,
            206 => MAX_BALANCE_MINOR,
            207 => MAX_BALANCE_MINOR + 1,
            208 => i64::from(r.u32()),
            209 => -i64::from(r.u32()),
            210 => 1,
            // The balance of a known card: the exact boundary.
            211 => {
                let card = self.card(r);
                card.parse::<u64>()
                    .ok()
                    .and_then(|n| self.state.cards.get(&n))
                    .map_or(0, Card::balance)
            }
            _ => r.i64(),
        }
    }

    fn points(&mut self, r: &mut Reader) -> i64 {
        match r.byte() {
            0..=199 => 1 + i64::from(r.u16() % 1_000),
            200 => 0,
            201 => -1,
            202 => i64::MIN,
            203 => i64::MAX,
            204 => MAX_POINTS,
            205 => MAX_POINTS + 1,
            _ => r.i64(),
        }
    }

    fn u32_extreme(&mut self, r: &mut Reader, normal: u32) -> u32 {
        match r.byte() {
            0..=199 => normal,
            200 => 0,
            201 => u32::MAX,
            202 => i32::MAX as u32,
            _ => r.u32(),
        }
    }

    /// A seq: mostly one of the records written so far.
    fn seq(&mut self, r: &mut Reader, want: Option<RecordKind>) -> u64 {
        match r.byte() {
            0..=199 => {
                let pick = usize::from(r.byte());
                let of_kind: Vec<u64> = self
                    .written
                    .iter()
                    .filter(|w| want.is_none_or(|k| w.record.kind() == k))
                    .map(|w| w.record.seq)
                    .collect();
                if of_kind.is_empty() {
                    1
                } else {
                    // Count from the newest: recent purchases are the usual target.
                    of_kind[of_kind.len() - 1 - pick % of_kind.len()]
                }
            }
            200 => 0,
            201 => u64::MAX,
            202 => self.state.seq + 1,
            _ => r.u64(),
        }
    }

    /// A txn id of `p`: mostly one it used, else a fresh or odd one.
    fn txn_ref(&mut self, r: &mut Reader, p: Principal, own: u64) -> u64 {
        match r.byte() {
            0..=199 => {
                let last = self.next_txn.get(&p.txn_namespace()).copied().unwrap_or(1);
                last.saturating_sub(2 + u64::from(r.byte() % 8)).max(1)
            }
            200..=219 => {
                self.next_txn.get(&p.txn_namespace()).copied().unwrap_or(1)
                    + 1
                    + u64::from(r.byte())
            }
            220 => 0,
            221 => own,
            222 => u64::MAX,
            _ => r.u64(),
        }
    }

    fn public_key(&mut self, r: &mut Reader) -> Vec<u8> {
        let k = keys();
        match r.byte() {
            0..=199 => k.pool[usize::from(r.byte()) % k.pool.len()].to_vec(),
            200 => k.owner.to_vec(),
            201 => k.server.to_vec(),
            202 => vec![],
            203 => k.pool[2][..31].to_vec(),
            204 => [k.pool[2].as_slice(), &[0]].concat(),
            205 => [0u8; 32].to_vec(),
            206 => {
                // The identity point: a small-order (weak) key.
                let mut id = [0u8; 32];
                id[0] = 1;
                id.to_vec()
            }
            207 => [0xffu8; 32].to_vec(),
            _ => r.take(32).to_vec(),
        }
    }

    fn shift_totals(&mut self, r: &mut Reader, p: Principal) -> Option<pb::ShiftTotals> {
        let server = match p {
            Principal::Terminal(id) => self.state.terminals[&id].shift,
            _ => pb::ShiftTotals::default(),
        };
        match r.byte() {
            0..=199 => Some(server),
            200 => None,
            201 => Some(pb::ShiftTotals {
                purchase_count: server.purchase_count.wrapping_add(1),
                ..server
            }),
            202 => Some(pb::ShiftTotals {
                top_up_minor: server.top_up_minor.wrapping_sub(1),
                ..server
            }),
            _ => Some(pb::ShiftTotals {
                purchase_count: r.u32(),
                purchase_minor: r.i64(),
                top_up_count: r.u32(),
                top_up_minor: r.i64(),
                refund_count: r.u32(),
                refund_minor: r.i64(),
                reversal_count: r.u32(),
                reversal_minor: r.i64(),
                redeem_count: r.u32(),
                redeem_points: r.i64(),
            }),
        }
    }

    fn rules(&mut self, r: &mut Reader) -> Option<pb::Rules> {
        let shape = r.byte();
        if shape >= 250 {
            return None;
        }
        if shape < 100 {
            return Some(cardd::demo::demo_rules());
        }
        // Ascending thresholds unless the input says otherwise.
        let ascending = shape < 200;
        let n_bonus = usize::from(r.byte() % 18);
        let mut bonus_tiers = Vec::with_capacity(n_bonus);
        let mut floor = 0i64;
        for _ in 0..n_bonus {
            let step = self.amount(r);
            let min_load_minor = if ascending {
                floor.saturating_add(step.max(1))
            } else {
                step
            };
            floor = min_load_minor;
            let fixed_bonus_minor = self.amount(r);
            let normal_bps = u32::from(r.u16() % 10_001);
            let bonus_bps = self.u32_extreme(r, normal_bps);
            bonus_tiers.push(pb::BonusTier {
                min_load_minor,
                fixed_bonus_minor,
                bonus_bps,
            });
        }
        let points_per_unit = match r.byte() {
            0..=199 => i64::from(r.byte()) * 4,
            200 => 1_000,
            201 => 1_001,
            202 => -1,
            203 => i64::MAX,
            204 => i64::MIN,
            _ => r.i64(),
        };
        let n_tiers = usize::from(r.byte() % 18);
        let mut tiers = Vec::with_capacity(n_tiers);
        let mut floor = -1i64;
        for i in 0..n_tiers {
            let step = self.amount(r);
            let min_spend_minor = if ascending {
                floor.saturating_add(step.max(1))
            } else {
                step
            };
            floor = min_spend_minor;
            let name = match r.byte() {
                0..=199 => format!("tier{i}"),
                _ => self.text(r),
            };
            let normal_visits = u32::from(r.byte());
            let min_visits = self.u32_extreme(r, normal_visits);
            let multiplier_milli = match r.byte() {
                0..=199 => 1_000 + u32::from(r.u16() % 10_000),
                200 => 0,
                201 => 100_000,
                202 => 100_001,
                203 => u32::MAX,
                _ => r.u32(),
            };
            tiers.push(pb::TierRule {
                name,
                min_spend_minor,
                min_visits,
                multiplier_milli,
            });
        }
        let promotion_line = self.text(r);
        Some(pb::Rules {
            bonus_tiers,
            points_per_unit,
            tiers,
            promotion_line,
        })
    }

    /// One structured step: `tag` picks the operation, the rest of its
    /// fields come from the input.
    fn structured_step(&mut self, r: &mut Reader, tag: u8) {
        let tag = tag % tag::COUNT;
        match tag {
            tag::RETRY | tag::CONFLICT => {
                let pick = usize::from(r.byte());
                if self.sent.is_empty() {
                    return;
                }
                let (p, bytes) = self.sent[self.sent.len() - 1 - pick % self.sent.len()].clone();
                let mut req = pb::Request::decode(bytes.as_slice()).expect("sent requests decode");
                let original = self.state.txns[&(p.txn_namespace(), req.txn_id)];
                let (TxnEntry::Committed(seq) | TxnEntry::Reversed(seq)) = original else {
                    panic!("sent txn is not committed")
                };
                let bytes = if tag == tag::RETRY {
                    bytes
                } else {
                    req.operator = format!("other {}", r.byte());
                    req.client_time_ms ^= 1;
                    req.encode_to_vec()
                };
                let out = self.apply_checked(p, &bytes, &req);
                // The state machine answers Seen for both; the server then
                // compares the bytes (retry or idempotency conflict).
                assert_eq!(
                    out,
                    Ok(Outcome::Seen { seq }),
                    "repeat of txn {} by {p:?}",
                    req.txn_id
                );
            }
            tag::CLOCK => {
                self.time_ms = match r.byte() {
                    0..=199 => self
                        .time_ms
                        .saturating_add(86_400_000 * (1 + i64::from(r.byte() % 100))),
                    200 => i64::MAX - 1,
                    201 => i64::MIN,
                    202 => 0,
                    203 => -1,
                    204 => self.time_ms.saturating_sub(86_400_000),
                    _ => r.i64(),
                };
            }
            _ => {
                let p = self.principal(r, tag);
                let txn = self.txn(r, p);
                let flags = r.byte();
                let operator = self.text(r);
                let op = self.structured_op(r, tag, p, txn);
                let req = pb::Request {
                    txn_id: txn,
                    brand_id: if flags & 0x80 != 0 { r.u32() } else { BRAND },
                    operator,
                    client_time_ms: if flags & 0x40 != 0 { r.i64() } else { 0 },
                    want_proof: flags & 1 == 1,
                    op: if flags & 0x20 != 0 { None } else { Some(op) },
                };
                let bytes = req.encode_to_vec();
                let _ = self.apply_checked(p, &bytes, &req);
            }
        }
    }

    fn structured_op(&mut self, r: &mut Reader, tag: u8, p: Principal, txn: u64) -> Op {
        match tag {
            tag::INQUIRY => Op::Inquiry(pb::Inquiry { card: self.card(r) }),
            tag::PURCHASE => Op::Purchase(pb::Purchase {
                card: self.card(r),
                amount_minor: self.amount(r),
                allow_partial: r.bool(),
            }),
            tag::TOP_UP => Op::TopUp(pb::TopUp {
                card: self.card(r),
                amount_minor: self.amount(r),
            }),
            tag::REFUND => Op::Refund(pb::Refund {
                original_seq: self.seq(r, Some(RecordKind::Purchase)),
                amount_minor: self.amount(r),
            }),
            tag::REVERSAL => Op::Reversal(pb::Reversal {
                original_txn_id: self.txn_ref(r, p, txn),
            }),
            tag::REDEEM_POINTS => Op::RedeemPoints(pb::RedeemPoints {
                card: self.card(r),
                points: self.points(r),
                reward: self.text(r),
            }),
            tag::CLOSE_SHIFT => Op::CloseShift(pb::CloseShift {
                terminal_totals: self.shift_totals(r, p),
            }),
            tag::TXN_STATUS => Op::TxnStatus(pb::TxnStatus {
                txn_id: self.txn_ref(r, p, txn),
            }),
            tag::CREATE_STORE => Op::CreateStore(pb::CreateStore {
                name: match r.byte() {
                    0..=199 => format!("store {}", self.state.stores.len() + 1),
                    _ => self.text(r),
                },
            }),
            tag::ENROLL_TERMINAL => {
                let store = 1 + u32::from(r.byte()) % (self.state.stores.len() as u32 + 1);
                Op::EnrollTerminal(pb::EnrollTerminal {
                    store_id: self.u32_extreme(r, store),
                    public_key: self.public_key(r),
                    label: self.text(r),
                })
            }
            tag::ISSUE_CARD => Op::IssueCard(pb::IssueCard {
                card: match r.byte() {
                    0..=199 => {
                        self.fresh_cards += 1;
                        card_for(BRAND, self.fresh_cards)
                    }
                    _ => self.card(r),
                },
            }),
            tag::SET_CARD_BLOCKED => Op::SetCardBlocked(pb::SetCardBlocked {
                card: self.card(r),
                blocked: r.bool(),
                reason: self.text(r),
            }),
            tag::REPLACE_CARD => {
                let old_card = self.card(r);
                let new_card = match r.byte() {
                    0..=199 => {
                        self.fresh_cards += 1;
                        card_for(BRAND, self.fresh_cards)
                    }
                    _ => self.card(r),
                };
                Op::ReplaceCard(pb::ReplaceCard { old_card, new_card })
            }
            tag::SET_RULES => Op::SetRules(pb::SetRules {
                rules: self.rules(r),
            }),
            tag::EXPORT_LEDGER => Op::ExportLedger(pb::ExportLedger {}),
            tag::CONSISTENCY_PROOF => Op::ConsistencyProof(pb::GetConsistencyProof {
                old_size: r.u64(),
                new_size: r.u64(),
            }),
            tag::CREATE_BRAND => Op::CreateBrand(pb::CreateBrand {
                name: match r.byte() {
                    0..=199 => "Again".into(),
                    _ => self.text(r),
                },
                currency: match r.byte() {
                    0..=199 => "CNY".into(),
                    200 => "cny".into(),
                    201 => "CNYX".into(),
                    _ => String::new(),
                },
                currency_exponent: self.u32_extreme(r, 2),
                owner_public_key: self.public_key(r),
            }),
            _ => unreachable!("tag {tag} handled by the caller"),
        }
    }

    /// One raw step: a principal byte, a u16 LE length, then that many bytes
    /// decoded as a `Request` (skipped if they do not decode) and applied
    /// with exactly those bytes as the signed request.
    fn raw_step(&mut self, r: &mut Reader) {
        let p = self.any_principal(r.byte());
        let len = usize::from(r.u16());
        let bytes = r.take(len);
        match pb::Request::decode(bytes) {
            Ok(req) => {
                let _ = self.apply_checked(p, bytes, &req);
            }
            Err(_) => self.run.raw_undecodable += 1,
        }
    }
}

/// Runs a request_handler input from the starting world: a sequence of
/// steps, each a tag byte then its fields (see `tag`), checking every
/// invariant after every step and the replay at the end.
pub fn check_request_input(data: &[u8]) -> RequestRun {
    let mut w = World::start();
    let mut r = Reader::new(data);
    let mut steps = 0;
    while !r.is_empty() && steps < MAX_STEPS {
        steps += 1;
        let t = r.byte();
        if t >= tag::RAW {
            w.raw_step(&mut r);
        } else {
            w.structured_step(&mut r, t);
        }
    }
    w.check_replay();
    w.run
}

/// A raw step's bytes, for building seeds.
pub fn raw_step_bytes(principal_byte: u8, req: &pb::Request) -> Vec<u8> {
    let enc = req.encode_to_vec();
    let len = u16::try_from(enc.len()).expect("seed request fits a raw step");
    let mut out = vec![tag::RAW, principal_byte];
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&enc);
    out
}

/// Principal bytes for raw steps (`any_principal`).
pub mod principal_byte {
    pub const SERVER: u8 = 0;
    pub const OWNER: u8 = 1;
    /// Terminal 1 (store 1); TERMINAL_1 + 4 is terminal 2 (store 2).
    pub const TERMINAL_1: u8 = 2;
    pub const TERMINAL_2: u8 = 6;
}

// ---------------------------------------------------------------------------
// Target 3: export_parser.
// ---------------------------------------------------------------------------

/// The public key of the server that wrote the seed export
/// (`fuzz/corpus/export_parser/seed-demo-*`): `cardd server-key --data D`
/// after `cardd serve --data D --demo`.
pub const EXPORT_SERVER_KEY_HEX: &str =
    "52c5d8bb249235a7c2cdcb70b103fdc374555d51aabe743e074a0277bc64fba6";

/// `EXPORT_SERVER_KEY_HEX` as bytes.
pub fn export_server_key() -> [u8; 32] {
    let h = EXPORT_SERVER_KEY_HEX.as_bytes();
    let nibble = |c: u8| match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        _ => panic!("bad hex"),
    };
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = nibble(h[2 * i]) << 4 | nibble(h[2 * i + 1]);
    }
    out
}

/// Verifies arbitrary bytes as an export trusting the seed server's key.
/// Never panics inside cardd; progress offsets never decrease nor pass the
/// input; the answer is deterministic; an Ok report is internally
/// consistent (records > 0, every record covered by the last checkpoint,
/// the whole input consumed, money conserved) and the export then also
/// verifies as extending its own newest checkpoint.
pub fn check_export_input(data: &[u8]) -> Result<VerifyReport, VerifyError> {
    let opts = VerifyOptions {
        server_key: export_server_key(),
        old_checkpoint: None,
    };
    let run = |opts: &VerifyOptions| {
        let mut offsets: Vec<u64> = vec![];
        let out = verify_export(data, opts, |o| offsets.push(o));
        assert!(
            offsets.windows(2).all(|w| w[0] <= w[1]),
            "progress went backwards: {offsets:?}"
        );
        assert!(
            offsets.iter().all(|&o| o <= data.len() as u64),
            "progress past the input: {offsets:?}"
        );
        (out, offsets)
    };
    let (out, offsets) = run(&opts);
    let (again, _) = run(&opts);
    match (&out, &again) {
        (Err(a), Err(b)) => assert_eq!(a, b, "verification is not deterministic"),
        (Ok(a), Ok(b)) => assert_eq!(
            (a.records, a.checkpoints, &a.root_hash, &a.head_hash),
            (b.records, b.checkpoints, &b.root_hash, &b.head_hash),
            "verification is not deterministic"
        ),
        _ => panic!("verification is not deterministic: {out:?} then {again:?}"),
    }
    match &out {
        Err(e) => assert!(!e.what.is_empty(), "an error without a message"),
        Ok(rep) => {
            assert!(rep.records > 0, "an export without records verified");
            assert!(
                rep.checkpoints > 0,
                "an export without checkpoints verified"
            );
            let last = rep
                .last_checkpoint
                .as_ref()
                .expect("a verified export has a checkpoint");
            assert_eq!(
                last.tree_size, rep.records,
                "records past the last checkpoint"
            );
            assert_eq!(
                offsets.last().copied(),
                Some(data.len() as u64),
                "bytes left unread"
            );
            let t = &rep.totals;
            assert_eq!(
                t.loaded_paid_minor + t.bonus_granted_minor - t.spent_minor
                    + t.refunded_minor
                    + t.reversed_net_minor,
                t.outstanding_paid_minor + t.outstanding_bonus_minor,
                "a verified export does not conserve money"
            );
            assert!(
                rep.cards.windows(2).all(|w| w[0].card < w[1].card),
                "cards not sorted and unique"
            );
            let paid: i128 = rep.cards.iter().map(|c| i128::from(c.paid_minor)).sum();
            let bonus: i128 = rep.cards.iter().map(|c| i128::from(c.bonus_minor)).sum();
            assert_eq!(
                (paid, bonus),
                (t.outstanding_paid_minor, t.outstanding_bonus_minor)
            );
            assert!(rep
                .cards
                .iter()
                .all(|c| c.paid_minor >= 0 && c.bonus_minor >= 0 && c.points >= 0));
            let extend = VerifyOptions {
                server_key: opts.server_key,
                old_checkpoint: Some(last.clone()),
            };
            let (ext, _) = run(&extend);
            let ext = ext.unwrap_or_else(|e| {
                panic!("a verified export does not extend its own checkpoint: {e}")
            });
            assert_eq!(ext.extends_old_checkpoint, Some(true));
            assert_eq!(ext.root_hash, rep.root_hash);
        }
    }
    out
}
