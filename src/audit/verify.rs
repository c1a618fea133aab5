//! Offline verify-and-replay of an export, trusting only the server's public
//! key (terminal and owner keys are taken from the chain's own enrolment
//! records, which the server's checkpoints cover).
//!
//! For every record: the signer's ed25519 signature over the request bytes
//! (batch-verified on a worker per core, see `signatures.rs`), the key
//! being the one enrolled for that signer at that point, the link to the
//! record before, and byte-equality with what the state machine produces
//! from the request. For every checkpoint: the server's signature and that
//! size, head hash and Merkle root match the records so far. Every record
//! must be covered by a checkpoint.
use std::io::Read;
use std::sync::mpsc;

use ed25519_dalek::VerifyingKey;
use prost::Message;
use serde::Serialize;

use super::file::{ExportFileError, ExportReader, EXPORT_FORMAT};
use super::signatures::{signature_worker, SigJob};
use crate::checkpoint;
use crate::crypto::request_message;
use crate::pb::{self, export_item::Item, CardStatus, Record, RecordKind};
use crate::replay::replay_decoded;
use crate::state::books::day_text;
use crate::state::reports::settlement_pairs;
use crate::state::{format_card, rules, BrandState};

/// Signatures verified per batch: the batch equation is grouped by signer,
/// so a larger batch holds more records per terminal key (measured in
/// docs/benchmarks.md: 4,096 beat 1,024 by a quarter with 256 terminals).
const SIG_BATCH: usize = 4096;

/// What the auditor trusts and asks.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// The server's public key (the trust anchor).
    pub server_key: [u8; 32],
    /// A checkpoint saved earlier: the export must extend it.
    pub old_checkpoint: Option<pb::Checkpoint>,
}

/// One card after replay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CardSummary {
    /// The full card number.
    pub card: String,
    /// ACTIVE, BLOCKED or REPLACED.
    pub status: String,
    /// Paid value.
    pub paid_minor: i64,
    /// Bonus value.
    pub bonus_minor: i64,
    /// Points.
    pub points: i64,
    /// Tier under the rules at the end of the chain.
    pub tier: String,
}

/// Money totals over the whole chain, in minor units.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    /// Paid value loaded by top-ups (the face value: what the cards owe).
    pub loaded_paid_minor: i128,
    /// Of that, the discount on sales below face value: face value less
    /// the cash received (`paid_in - price` of each TOP_UP with a price).
    /// The cash taken in for loads is `loaded_paid_minor - discount_minor`.
    pub discount_minor: i128,
    /// Bonus value granted by top-ups.
    pub bonus_granted_minor: i128,
    /// Value spent by purchases.
    pub spent_minor: i128,
    /// Value returned by refunds.
    pub refunded_minor: i128,
    /// Net value restored (+) or removed (-) by reversals.
    pub reversed_net_minor: i128,
    /// Net value the owner's corrections added (+) or took (-): CARD_ADJUSTED,
    /// TOP_UP_VOIDED and CARD_CLOSED (its cash-out and forfeited bonus).
    pub corrected_net_minor: i128,
    /// Paid value outstanding on all cards (a liability).
    pub outstanding_paid_minor: i128,
    /// Bonus value outstanding on all cards.
    pub outstanding_bonus_minor: i128,
}

/// Outstanding value of one store of issue, from the replayed books.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoreLiability {
    /// The store that sold the value (0 = head office).
    pub store_id: u32,
    /// Paid value.
    pub paid_minor: i64,
    /// Bonus value.
    pub bonus_minor: i64,
}

/// What one store owes another over the days the books keep, netted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoreOwes {
    /// The store of issue that owes.
    pub from_store: u32,
    /// The redeeming store owed.
    pub to_store: u32,
    /// Paid value.
    pub paid_minor: i64,
    /// Bonus value.
    pub bonus_minor: i64,
}

/// The result of a successful verification.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// The brand.
    pub brand_id: u32,
    /// Its name.
    pub brand_name: String,
    /// ISO 4217 currency.
    pub currency: String,
    /// Decimals of the currency.
    pub currency_exponent: u32,
    /// Records verified and replayed.
    pub records: u64,
    /// Checkpoints verified.
    pub checkpoints: u64,
    /// Merkle root of the whole chain (hex).
    pub root_hash: String,
    /// Hash of the last record (hex).
    pub head_hash: String,
    /// The newest checkpoint (to save for next time).
    #[serde(skip)]
    pub last_checkpoint: Option<pb::Checkpoint>,
    /// The newest checkpoint's signed server time (Unix ms): the export
    /// proves the ledger as of then. Its header and trailer are not signed,
    /// so anyone holding the file can cut it at an older checkpoint; this
    /// time (or `--compare`, or a checkpoint fetched apart) shows it.
    pub signed_through_ms: i64,
    /// The server key in force at the chain's end, after its rotations:
    /// the key a daemon serving this chain signs with.
    #[serde(skip)]
    pub server_key_now: [u8; 32],
    /// Whether the given old checkpoint was found extended (None if none given).
    pub extends_old_checkpoint: Option<bool>,
    /// Every card, by number.
    pub cards: Vec<CardSummary>,
    /// Totals.
    pub totals: Totals,
    /// Liability by store of issue (the daemon's `report liability`).
    pub liability: Vec<StoreLiability>,
    /// The days the books keep, first and last (`YYYY-MM-DD`).
    pub books_from: String,
    /// The last of them.
    pub books_to: String,
    /// Settlement over those days (the daemon's `report settlement`).
    pub settlement: Vec<StoreOwes>,
}

/// The first failure: which record (if any) and what.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{what}", seq.map(|s| format!("record {s}: ")).unwrap_or_default())]
pub struct VerifyError {
    /// The record's sequence number, when the failure belongs to one.
    pub seq: Option<u64>,
    /// What failed.
    pub what: String,
}

fn fail<T>(seq: Option<u64>, what: impl Into<String>) -> Result<T, VerifyError> {
    Err(VerifyError {
        seq,
        what: what.into(),
    })
}

/// Verifies and replays an export. `progress(bytes_read)` is called as it goes.
pub fn verify_export<R: Read>(
    input: R,
    opts: &VerifyOptions,
    mut progress: impl FnMut(u64),
) -> Result<VerifyReport, VerifyError> {
    // The old checkpoint's signature is checked when the replay reaches
    // its size, with the server key in force there (a rotation since may
    // have changed it); an old checkpoint the chain never reaches fails as
    // not extended.
    // Signatures cost ~20 us each, replay a few: verification gets a worker
    // per core and the replay thread hands batches out round-robin.
    let workers = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(1, 16);
    std::thread::scope(|scope| {
        let mut senders = Vec::with_capacity(workers);
        let mut handles = Vec::with_capacity(workers);
        for _ in 0..workers {
            let (tx, rx) = mpsc::sync_channel::<Vec<SigJob>>(4);
            senders.push(tx);
            handles.push(scope.spawn(move || signature_worker(rx)));
        }
        let replayed = replay_export(input, opts, SigDispatch { senders, next: 0 }, &mut progress);
        let bad_signature = handles
            .into_iter()
            .filter_map(|h| h.join().expect("signature thread panicked"))
            .min_by_key(|e| e.seq.unwrap_or(u64::MAX));
        // Report the earliest failing record, whichever check found it.
        match (replayed, bad_signature) {
            (Ok(report), None) => Ok(report),
            (Ok(_), Some(e)) => Err(e),
            (Err(e), None) => Err(e),
            (Err(e), Some(s)) => Err(if s.seq.unwrap_or(u64::MAX) < e.seq.unwrap_or(u64::MAX) {
                s
            } else {
                e
            }),
        }
    })
}

/// Hands signature batches to the workers in turn.
struct SigDispatch {
    senders: Vec<mpsc::SyncSender<Vec<SigJob>>>,
    next: usize,
}

impl SigDispatch {
    fn send(&mut self, batch: Vec<SigJob>) {
        // A closed channel means that worker already found a bad signature;
        // replay goes on so that the earliest failure is the one reported.
        let _ = self.senders[self.next].send(batch);
        self.next = (self.next + 1) % self.senders.len();
    }
}

/// The failure of an export's framing, as a `VerifyError` whose text is the
/// whole chain of causes (`what` is a plain string in the report).
fn file_error(seq: Option<u64>, e: &ExportFileError) -> VerifyError {
    VerifyError {
        seq,
        what: crate::error::causes(e),
    }
}

fn server_key(opts: &VerifyOptions) -> Result<VerifyingKey, VerifyError> {
    VerifyingKey::from_bytes(&opts.server_key).map_err(|_| VerifyError {
        seq: None,
        what: "server key is not a valid ed25519 key".into(),
    })
}

/// The next item of the export; a framing failure is blamed on `seq`.
fn read_item<R: Read>(r: &mut ExportReader<R>, seq: u64) -> Result<Option<Item>, VerifyError> {
    r.next_item().map_err(|e| file_error(Some(seq), &e))
}

/// The export's header, checked against the format and the trusted key.
fn read_header<R: Read>(
    reader: &mut ExportReader<R>,
    opts: &VerifyOptions,
) -> Result<pb::ExportHeader, VerifyError> {
    let header = match read_item(reader, 1)? {
        Some(Item::Header(h)) => h,
        _ => return fail(None, "export does not start with a header"),
    };
    if header.format != EXPORT_FORMAT {
        return fail(None, format!("unknown export format '{}'", header.format));
    }
    if header.server_public_key != opts.server_key {
        return fail(
            None,
            "the export names a different server key than the one trusted",
        );
    }
    Ok(header)
}

/// A replay in progress: the state rebuilt so far and what the report
/// will say about it.
struct Replay<'o> {
    opts: &'o VerifyOptions,
    server_vk: VerifyingKey,
    state: BrandState,
    totals: Totals,
    checkpoints: u64,
    last_checkpoint: Option<pb::Checkpoint>,
    /// The server time of the last record replayed (0 before the first).
    last_time_ms: i64,
    /// None without an old checkpoint; true once the chain passed it.
    extends_old: Option<bool>,
    sig_batch: Vec<SigJob>,
    /// Every key the chain enrolled or rotated in, as the trailer lists them.
    keys: Vec<TrailerKey>,
}

/// (signer, terminal id, store id, key) of a trailer entry.
type TrailerKey = (i32, u32, u32, Vec<u8>);

fn replay_export<R: Read>(
    input: R,
    opts: &VerifyOptions,
    mut sig_tx: SigDispatch,
    progress: &mut impl FnMut(u64),
) -> Result<VerifyReport, VerifyError> {
    let server_vk = server_key(opts)?;
    let mut reader = ExportReader::new(input).map_err(|e| file_error(None, &e))?;
    let header = read_header(&mut reader, opts)?;
    let mut replay = Replay {
        opts,
        server_vk,
        state: BrandState::new(header.brand_id),
        totals: Totals::default(),
        checkpoints: 0,
        last_checkpoint: None,
        last_time_ms: 0,
        extends_old: opts.old_checkpoint.as_ref().map(|_| false),
        sig_batch: Vec::with_capacity(SIG_BATCH),
        keys: Vec::new(),
    };
    let trailer = replay.items(&mut reader, &mut sig_tx, progress)?;
    sig_tx.send(std::mem::take(&mut replay.sig_batch));
    drop(sig_tx);
    if reader
        .next_item()
        .map_err(|e| file_error(None, &e))?
        .is_some()
    {
        return fail(None, "data after the trailer");
    }
    replay.check_complete(&header, &trailer)?;
    check_trailer_keys(&trailer, std::mem::take(&mut replay.keys))?;
    replay.check_conserved()?;
    progress(reader.offset);
    Ok(replay.report())
}

impl Replay<'_> {
    /// Replays every record and checks every checkpoint up to the trailer,
    /// which it returns. Full signature batches go to the workers.
    fn items<R: Read>(
        &mut self,
        reader: &mut ExportReader<R>,
        sig_tx: &mut SigDispatch,
        progress: &mut impl FnMut(u64),
    ) -> Result<pb::ExportTrailer, VerifyError> {
        loop {
            let next_seq = self.state.seq + 1;
            match read_item(reader, next_seq)? {
                None => return fail(Some(next_seq), "export ends without a trailer (truncated?)"),
                Some(Item::Header(_)) => return fail(Some(next_seq), "a second header"),
                Some(Item::Record(bytes)) => {
                    self.record(next_seq, &bytes, sig_tx)?;
                    if next_seq.is_multiple_of(8192) {
                        progress(reader.offset);
                    }
                }
                Some(Item::Checkpoint(c)) => self.checkpoint(c)?,
                Some(Item::Trailer(t)) => return Ok(t),
            }
        }
    }

    /// One record: its signature queued for the workers, then replayed
    /// byte for byte, counted in the totals and checked against the old
    /// checkpoint when the chain reaches its size.
    fn record(
        &mut self,
        seq: u64,
        bytes: &[u8],
        sig_tx: &mut SigDispatch,
    ) -> Result<(), VerifyError> {
        let rec = Record::decode(bytes).map_err(|e| VerifyError {
            seq: Some(seq),
            what: format!("does not decode: {e}"),
        })?;
        crate::replay::check_time(self.last_time_ms, &rec).map_err(|what| VerifyError {
            seq: Some(seq),
            what,
        })?;
        self.last_time_ms = rec.time_ms;
        let key: [u8; 32] =
            rec.signer_public_key
                .as_slice()
                .try_into()
                .map_err(|_| VerifyError {
                    seq: Some(seq),
                    what: "signer key is not 32 bytes".into(),
                })?;
        self.sig_batch.push(SigJob {
            seq,
            key,
            message: request_message(&rec.request),
            signature: rec.request_signature.clone(),
        });
        // Sent before the replay, so that a replay failure still leaves
        // the full batches checked and the earliest failure is reported.
        if self.sig_batch.len() == SIG_BATCH {
            let empty = Vec::with_capacity(SIG_BATCH);
            sig_tx.send(std::mem::replace(&mut self.sig_batch, empty));
        }
        let w = replay_decoded(&mut self.state, seq, &rec, bytes, &self.opts.server_key).map_err(
            |e| VerifyError {
                seq: Some(e.seq),
                what: e.what,
            },
        )?;
        add_totals(&mut self.totals, &w.record);
        collect_key(&mut self.keys, &self.state, &w.record);
        if let Some(old) = &self.opts.old_checkpoint {
            if old.tree_size == self.state.seq {
                let signed = VerifyingKey::from_bytes(&self.state.server_key)
                    .is_ok_and(|k| checkpoint::verify(old, &k, None).is_ok());
                if !signed {
                    return fail(
                        Some(seq),
                        "the old checkpoint's server signature does not verify",
                    );
                }
                if let Err(e) = checkpoint::matches(old, &self.state) {
                    return fail(
                        Some(seq),
                        format!("does not extend the old checkpoint: {e}"),
                    );
                }
                self.extends_old = Some(true);
            }
        }
        Ok(())
    }

    /// A checkpoint in the stream: signed by the server and describing the
    /// records so far exactly.
    fn checkpoint(&mut self, c: pb::Checkpoint) -> Result<(), VerifyError> {
        // After a SERVER_KEY_ROTATED record the chain's new key signs.
        if self.server_vk.to_bytes() != self.state.server_key && self.state.is_created() {
            self.server_vk =
                VerifyingKey::from_bytes(&self.state.server_key).map_err(|_| VerifyError {
                    seq: Some(self.state.seq),
                    what: "the rotated-in server key is not a valid ed25519 key".into(),
                })?;
        }
        checkpoint::verify(&c, &self.server_vk, Some(&self.state)).map_err(|e| VerifyError {
            seq: Some(self.state.seq),
            what: e.to_string(),
        })?;
        self.checkpoints += 1;
        self.last_checkpoint = Some(c);
        Ok(())
    }

    /// Every record covered by a checkpoint, the header's and trailer's
    /// counts right, and the old checkpoint (if any) extended.
    fn check_complete(
        &self,
        header: &pb::ExportHeader,
        trailer: &pb::ExportTrailer,
    ) -> Result<(), VerifyError> {
        let seq = self.state.seq;
        let covered = self.last_checkpoint.as_ref().map_or(0, |c| c.tree_size);
        if seq == 0 || covered != seq {
            return fail(
                Some(covered + 1),
                "record not covered by any signed checkpoint",
            );
        }
        if header.tree_size != seq
            || trailer.records != seq
            || trailer.checkpoints != self.checkpoints
        {
            return fail(
                None,
                "header or trailer counts do not match the records (records removed or added?)",
            );
        }
        if let Some(old) = &self.opts.old_checkpoint {
            if old.brand_id != self.state.brand_id
                || old.tree_size > seq
                || self.extends_old != Some(true)
            {
                return fail(
                    None,
                    format!(
                        "the export (size {seq}) does not extend the old checkpoint (size {})",
                        old.tree_size
                    ),
                );
            }
        }
        Ok(())
    }

    /// The money flows of the records must add up to what the cards hold.
    fn check_conserved(&mut self) -> Result<(), VerifyError> {
        let (paid, bonus) = self.state.liability();
        let t = &mut self.totals;
        t.outstanding_paid_minor = paid;
        t.outstanding_bonus_minor = bonus;
        let net = t.loaded_paid_minor + t.bonus_granted_minor - t.spent_minor
            + t.refunded_minor
            + t.reversed_net_minor
            + t.corrected_net_minor;
        if net != paid + bonus {
            return fail(
                None,
                format!(
                    "money is not conserved: flows net {net}, cards hold {}",
                    paid + bonus
                ),
            );
        }
        // The books' liability by store of issue adds up to the cards.
        let books = self
            .state
            .books
            .liability
            .values()
            .fold((0i128, 0i128), |(p, b), v| {
                (p + i128::from(v.paid), b + i128::from(v.bonus))
            });
        if books != (paid, bonus) {
            return fail(
                None,
                format!(
                    "the books' liability {books:?} is not the cards' {:?}",
                    (paid, bonus)
                ),
            );
        }
        Ok(())
    }

    fn report(self) -> VerifyReport {
        let state = self.state;
        let mut cards: Vec<CardSummary> = state
            .cards
            .iter()
            .map(|(number, c)| CardSummary {
                card: format_card(*number),
                status: CardStatus::try_from(c.status as i32)
                    .map_or("UNKNOWN", |s| s.as_str_name())
                    .to_string(),
                paid_minor: c.paid,
                bonus_minor: c.bonus,
                points: c.points,
                tier: rules::tier_of(&state.rules, c, state.books.today.day)
                    .0
                    .to_string(),
            })
            .collect();
        cards.sort_by(|a, b| a.card.cmp(&b.card));
        let (liability, books_from, books_to, settlement) = books_summary(&state);
        VerifyReport {
            brand_id: state.brand_id,
            brand_name: state.name.clone(),
            currency: state.currency.clone(),
            currency_exponent: state.exponent,
            records: state.seq,
            checkpoints: self.checkpoints,
            root_hash: hex::encode(state.merkle.root()),
            head_hash: hex::encode(state.head_hash),
            signed_through_ms: self.last_checkpoint.as_ref().map_or(0, |c| c.time_ms),
            last_checkpoint: self.last_checkpoint,
            extends_old_checkpoint: self.extends_old,
            server_key_now: state.server_key,
            cards,
            totals: self.totals,
            liability,
            books_from,
            books_to,
            settlement,
        }
    }
}

/// Liability by store of issue and settlement over every day the books
/// keep, by the same code as the daemon's reports.
fn books_summary(state: &BrandState) -> (Vec<StoreLiability>, String, String, Vec<StoreOwes>) {
    let liability = state
        .books
        .liability
        .iter()
        .filter(|(_, v)| v.paid != 0 || v.bonus != 0)
        .map(|(s, v)| StoreLiability {
            store_id: *s,
            paid_minor: v.paid,
            bonus_minor: v.bonus,
        })
        .collect();
    let to = state.books.today.day;
    let from = state.books.days.keys().next().copied().unwrap_or(to);
    let settlement = settlement_pairs(state, from, to)
        .into_iter()
        .map(|(from_store, to_store, v)| StoreOwes {
            from_store,
            to_store,
            paid_minor: v.paid,
            bonus_minor: v.bonus,
        })
        .collect();
    (liability, day_text(from), day_text(to), settlement)
}

fn add_totals(t: &mut Totals, r: &Record) {
    let i = |v: i64| i128::from(v);
    match r.kind() {
        RecordKind::TopUp => {
            t.loaded_paid_minor += i(r.paid_in_minor);
            t.bonus_granted_minor += i(r.bonus_in_minor);
            if r.price_minor != 0 {
                t.discount_minor += i(r.paid_in_minor) - i(r.price_minor);
            }
        }
        RecordKind::Purchase => t.spent_minor += i(r.paid_out_minor) + i(r.bonus_out_minor),
        RecordKind::Refund => t.refunded_minor += i(r.paid_in_minor) + i(r.bonus_in_minor),
        RecordKind::Reversal => {
            t.reversed_net_minor += i(r.paid_in_minor) + i(r.bonus_in_minor)
                - i(r.paid_out_minor)
                - i(r.bonus_out_minor)
        }
        RecordKind::CardAdjusted | RecordKind::TopUpVoided | RecordKind::CardClosed => {
            t.corrected_net_minor += i(r.paid_in_minor) + i(r.bonus_in_minor)
                - i(r.paid_out_minor)
                - i(r.bonus_out_minor)
        }
        _ => {}
    }
}

/// The key a replayed record enrolled or rotated in (the state after it
/// holds the key), as a trailer entry.
fn collect_key(keys: &mut Vec<TrailerKey>, state: &BrandState, r: &Record) {
    let (server, owner, terminal) = (
        pb::Signer::Server as i32,
        pb::Signer::Owner as i32,
        pb::Signer::Terminal as i32,
    );
    match r.kind() {
        RecordKind::BrandCreated => {
            keys.push((server, 0, 0, state.server_key.to_vec()));
            keys.push((owner, 0, 0, state.owner_key.to_vec()));
        }
        RecordKind::TerminalEnrolled | RecordKind::TerminalRekeyed => {
            let key = state.terminals[&r.new_id].public_key.to_vec();
            keys.push((terminal, r.new_id, r.store_id, key));
        }
        RecordKind::OwnerKeyRotated => keys.push((owner, 0, 0, state.owner_key.to_vec())),
        RecordKind::ServerKeyRotated => keys.push((server, 0, 0, state.server_key.to_vec())),
        _ => {}
    }
}

/// The trailer's key list must say exactly what the chain enrolled: every
/// key that ever signed in it (`expected`, from the replay).
fn check_trailer_keys(
    trailer: &pb::ExportTrailer,
    mut expected: Vec<TrailerKey>,
) -> Result<(), VerifyError> {
    let mut listed: Vec<(i32, u32, u32, Vec<u8>)> = trailer
        .keys
        .iter()
        .map(|k| (k.signer, k.terminal_id, k.store_id, k.public_key.clone()))
        .collect();
    expected.sort();
    listed.sort();
    if expected != listed {
        return fail(
            None,
            "the trailer's key list differs from the keys the chain enrolled",
        );
    }
    Ok(())
}
