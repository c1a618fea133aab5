//! The checking logic of the fuzz targets, shared by the libFuzzer targets
//! (`fuzz/fuzz_targets/*.rs`) and by the stable corpus replay test
//! (`tests/fuzz_corpus.rs`). Both include this file as a module with
//! `#[path]`, so it may use only what both crates have: cardd, prost,
//! tokio-util, bytes and ed25519-dalek (no `arbitrary`, no libfuzzer-sys).
//! The request_handler checks are in the two `checks_request*.rs` files
//! beside it, included from here.
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

// The world and its invariants, and the steps an input drives it through.
#[path = "checks_request.rs"]
mod request;
// Not every fuzz target uses them.
#[allow(unused_imports)]
pub use request::*;

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
