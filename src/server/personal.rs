//! Requests that touch a holder or a PIN: the server's part, done on a
//! task of their own (never on the brand's applier), before or after the
//! state machine's part.
//!
//! * `HolderData`, `FindCard`: answered by the holder store alone; no
//!   record (the person never enters the ledger).
//! * `SetHolder`: submitted only if its commitment is the one the store
//!   answered for the card's holder.
//! * `EraseHolder`: if the state would write its record, the store forgets
//!   first (durably), then the record; otherwise the store is untouched.
//! * A purchase or redemption with a PIN block, `SetPin` with an old PIN:
//!   the block is opened and checked (Argon2id, bounded, on a blocking
//!   thread); a wrong PIN is counted and refused without a record; a right
//!   one is submitted with `pin_verified`, the server's verdict the record
//!   keeps. The fifth wrong try in a row locks the card: the server signs
//!   a `SetPinLock` of its own (CARD_PIN_LOCKED) before it answers.
//!   `SetPin` stores the new hash once its record is durable (a resent one
//!   too, if its hash was never stored), the owner's
//!   `SetPinLock` (unlock) zeroes the count once its record is. Both hold
//!   the card (`pins::Held`) from before the record until the store has
//!   changed, so no PIN try sees the store and the ledger disagree.
use std::sync::Arc;

use super::guard::Probe;
use super::holders::HolderStore;
use super::pins::Verdict;
use super::reply::ReplyTo;
use super::writer::BrandHandle;
use super::Shared;
use crate::card_number::parse_number;
use crate::error::Refusal;
use crate::ledger::{Answer, Submission};
use crate::pb::request::Op;
use crate::pb::{self, ErrorCode as E};
use crate::pin::{Binding, PinError, Purpose};
use crate::state::{Fate, Principal};

/// Who sent the request (from its session).
#[derive(Debug, Clone, Copy)]
pub(super) struct Who {
    pub(super) principal: Principal,
    pub(super) key: [u8; 32],
    pub(super) brand_id: u32,
}

/// True if the request needs the server's part here rather than going
/// straight to the writer.
pub(super) fn is_personal(op: &Op) -> bool {
    match op {
        Op::Purchase(p) => !p.pin_block.is_empty(),
        Op::RedeemPoints(r) => !r.pin_block.is_empty(),
        Op::HolderData(_)
        | Op::FindCard(_)
        | Op::SetHolder(_)
        | Op::EraseHolder(_)
        | Op::SetPin(_)
        | Op::SetPinLock(_)
        | Op::ReplaceCard(_) => true,
        _ => false,
    }
}

/// What became of the request.
// One per personal request, consumed at once: boxing buys nothing.
#[allow(clippy::large_enum_variant)]
enum Done {
    /// Passed the server's part: to the writer, whose answer goes to the
    /// connection once durable.
    Submit(Submission),
    /// Answered here (a refusal, a store's answer, or the writer's answer
    /// after which the server did its part).
    Answer(Answer),
}

/// Serves one personal request (on its own task) and answers it.
pub(super) async fn serve(
    shared: Arc<Shared>,
    brand: BrandHandle,
    who: Who,
    sub: Submission,
    reply: ReplyTo,
) {
    // A PIN check costs an Argon2 hash: none for a signer or address over
    // its probing budget. A wrong PIN counts at once (`guard`).
    if let Err(refusal) = reply.admit() {
        return reply.send(Err(refusal));
    }
    match run(&shared, &brand, who, sub, reply.probe()).await {
        Done::Submit(sub) => {
            if let Err(reply) = brand.submit_to(sub, reply) {
                reply.send(Err(Refusal::new(E::Internal, "server stopping")));
            }
        }
        Done::Answer(answer) => {
            reply.found(&answer);
            reply.send(answer)
        }
    }
}

async fn run(
    shared: &Arc<Shared>,
    brand: &BrandHandle,
    who: Who,
    sub: Submission,
    probe: &Probe,
) -> Done {
    let req = sub.decoded();
    if req.brand_id != who.brand_id {
        return refused(E::WrongBrand, "request names another brand");
    }
    let result = match req.op.clone() {
        Some(Op::HolderData(h)) => holder_data(shared, brand, who, &h).await.map(Done::Answer),
        Some(Op::FindCard(f)) => find_card(shared, who, &f).await.map(Done::Answer),
        Some(Op::SetHolder(h)) => set_holder(shared, who, &h, sub).await,
        Some(Op::EraseHolder(e)) => erase_holder(shared, (brand, probe), who, &e.card, sub).await,
        Some(Op::Purchase(p)) => {
            spend(shared, (brand, probe), who, (&p.card, &p.pin_block), sub).await
        }
        Some(Op::RedeemPoints(r)) => {
            spend(shared, (brand, probe), who, (&r.card, &r.pin_block), sub).await
        }
        Some(Op::SetPin(p)) => set_pin(shared, (brand, probe), who, &p, sub).await,
        Some(Op::SetPinLock(l)) => unlock_pin(shared, brand, who, &l.card, sub).await,
        Some(Op::ReplaceCard(r)) => replace_card(shared, brand, who, &r, sub).await,
        _ => unreachable!("only personal requests come here"),
    };
    result.unwrap_or_else(|refusal| Done::Answer(Err(refusal)))
}

fn refused(code: E, message: &str) -> Done {
    Done::Answer(Err(Refusal::new(code, message)))
}

fn require_owner(who: Who) -> Result<(), Refusal> {
    match who.principal {
        Principal::Owner => Ok(()),
        _ => Err(Refusal::new(
            E::WrongRole,
            "a card's holder and PIN unlock are the owner's operations",
        )),
    }
}

/// The card's number in the session's brand, refused as the state machine
/// refuses it (a malformed and an unknown number alike).
fn card_of(who: Who, card: &str) -> Result<u64, Refusal> {
    match parse_number(card) {
        None => Err(Refusal::new(E::CardNotFound, "card not found")),
        Some((brand, _)) if brand != who.brand_id => Err(Refusal::new(
            E::CardOtherBrand,
            "card belongs to another brand",
        )),
        Some((_, number)) => Ok(number),
    }
}

/// Runs `f` on the holder store off the runtime's workers, if `brand`
/// has a place left among its calls (`HolderStore::admit`).
async fn bounded<T: Send + 'static>(
    shared: &Arc<Shared>,
    brand: u32,
    f: impl FnOnce(&HolderStore) -> Result<T, super::holders::HolderError> + Send + 'static,
) -> Result<T, Refusal> {
    let admitted = shared.holders.admit(brand)?;
    let store = shared.holders.clone();
    blocking(move || {
        let _place = admitted;
        f(&store)
    })
    .await
}

/// Runs a blocking holder-store call off the runtime's workers (fsync).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, super::holders::HolderError> + Send + 'static,
) -> Result<T, Refusal> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => {
            if !matches!(e, super::holders::HolderError::Refused(_)) {
                // The error names a file, never a person.
                tracing::error!(error = %e, "holder store");
            }
            Err(e.refusal())
        }
        Err(_) => Err(Refusal::new(E::Internal, "holder store task failed")),
    }
}

async fn holder_data(
    shared: &Arc<Shared>,
    brand: &BrandHandle,
    who: Who,
    h: &pb::HolderData,
) -> Result<Answer, Refusal> {
    require_owner(who)?;
    let card = card_of(who, &h.card)?;
    // No person is kept for a card that is not there to be named.
    match brand.has_card(card).await {
        Some(true) => {}
        Some(false) => return Err(Refusal::new(E::CardNotFound, "card not found")),
        None => return Err(Refusal::new(E::Internal, "server stopping")),
    }
    let (name, phone) = (h.name.clone(), h.phone.clone());
    let put = move |store: &HolderStore| store.put(who.brand_id, card, &name, &phone);
    let commitment = bounded(shared, who.brand_id, put).await?;
    Ok(Ok(pb::Reply {
        holder_commitment: commitment.to_vec(),
        ..Default::default()
    }))
}

async fn find_card(shared: &Arc<Shared>, who: Who, f: &pb::FindCard) -> Result<Answer, Refusal> {
    require_owner(who)?;
    let phone = f.phone.clone();
    let max = crate::limits::MAX_FOUND_CARDS;
    let find = move |store: &HolderStore| store.find(who.brand_id, &phone, max);
    let cards = bounded(shared, who.brand_id, find).await?;
    Ok(Ok(pb::Reply {
        holder: Some(pb::HolderFound {
            cards: cards.into_iter().map(crate::state::format_card).collect(),
        }),
        ..Default::default()
    }))
}

async fn set_holder(
    shared: &Arc<Shared>,
    who: Who,
    h: &pb::SetHolder,
    sub: Submission,
) -> Result<Done, Refusal> {
    require_owner(who)?;
    let card = card_of(who, &h.card)?;
    let commitment = h.commitment.clone();
    let holds = move |store: &HolderStore| store.holds(who.brand_id, card, &commitment);
    if !bounded(shared, who.brand_id, holds).await? {
        return Err(Refusal::new(
            E::InvalidArgument,
            "no holder with this commitment for the card: send the holder's data first (HolderData)",
        ));
    }
    Ok(Done::Submit(sub))
}

async fn erase_holder(
    shared: &Arc<Shared>,
    (brand, probe): (&BrandHandle, &Probe),
    who: Who,
    card: &str,
    sub: Submission,
) -> Result<Done, Refusal> {
    require_owner(who)?;
    let card = card_of(who, card)?;
    // Asked first: an erase the state refuses changes nothing (the person
    // stays), and a resend of one that stands is answered from the ledger
    // without forgetting a holder named since.
    let fate = brand
        .erase_fate(sub.signer_key, sub.decoded().clone())
        .await;
    let fate = fate.ok_or_else(|| Refusal::new(E::Internal, "server stopping"))?;
    // The probing budget is asked once the fate is known, and an unknown
    // card counted with nothing awaited between: erasures pipelined to
    // guessed cards, all admitted on arrival, would otherwise each pass
    // it. Also so that the applier's refusal of a written one does not
    // come after the person is forgotten.
    if admitted(probe, fate)? {
        return Ok(Done::Submit(sub));
    }
    // Forgotten before the record: a record saying "erased" must never
    // stand beside a person still kept. Should it be refused after all
    // (the state changed between the question and the record, or the
    // address's probing budget ran out: see docs/security.md), the person
    // is gone and no record says so; the owner's resend writes it.
    let erase = move |store: &HolderStore| store.erase(who.brand_id, card);
    bounded(shared, who.brand_id, erase).await?;
    Ok(Done::Submit(sub))
}

/// The refusal for a block that does not open for this request.
fn block_refusal(e: PinError) -> Refusal {
    let message = match e {
        PinError::BadPin => "the PIN block holds no valid PIN (4 to 12 digits)".to_string(),
        other => other.to_string(),
    };
    Refusal::new(E::PinBlockInvalid, message)
}

/// Opens a block of the request `sub` for `card` and checks its PIN:
/// `Ok(true)` verified, `Ok(false)` no PIN on file, a refusal otherwise.
async fn check_block(
    shared: &Arc<Shared>,
    (brand, probe): (&BrandHandle, &Probe),
    who: Who,
    sub: &Submission,
    (card_text, card): (&str, u64),
    block: &[u8],
) -> Result<bool, Refusal> {
    let binding = Binding {
        brand_id: who.brand_id,
        signer: &who.key,
        txn_id: sub.decoded().txn_id,
        card: card_text,
        purpose: Purpose::Present,
    };
    // Guesses admitted together are asked here one by one, and a block
    // that does not open counts before the next is opened.
    probe.admit()?;
    let pin = match shared.pins.key().open(block, &binding) {
        Ok(pin) => pin,
        Err(e) => {
            let refusal = block_refusal(e);
            probe.count(refusal.code);
            return Err(refusal);
        }
    };
    let held = shared.pins.claim(who.brand_id, card)?;
    let verdict = held.check(pin, Some(probe)).await?;
    if matches!(verdict, Verdict::Wrong { left: 0 } | Verdict::Locked) {
        // Still held: an owner's unlock waiting for the card comes after
        // this lock in the ledger, never before it.
        lock(shared, brand, who.brand_id, card_text).await;
    }
    drop(held);
    if let Some(refusal) = verdict.refusal() {
        tracing::info!(brand = who.brand_id, principal = ?who.principal, code = ?refusal.code, "PIN refused");
        return Err(refusal);
    }
    Ok(verdict == Verdict::Verified)
}

/// Writes the server's lock of `card` (CARD_PIN_LOCKED) unless the ledger
/// has it already: after the fifth wrong try, and again whenever the store
/// finds the card locked, so that a stop between the count and the record
/// leaves no lock without its record for long. Its refusal (locked
/// already, no such PIN in the ledger) is expected and ignored.
async fn lock(shared: &Arc<Shared>, brand: &BrandHandle, brand_id: u32, card: &str) {
    let sub = shared.pins.lock_request(brand_id, card);
    if let Some(Ok(_)) = brand.submit(sub).await {
        tracing::info!(brand = brand_id, "PIN locked after wrong tries");
    }
}

/// True if `sub`'s txn id is one the ledger already holds: a till resending
/// a request whose answer it lost. The state machine answers it from the
/// ledger, so its PIN is not checked again (the PIN may have changed since,
/// or the card been locked, and a wrong try must not be counted against a
/// request that already stands).
async fn is_retry(brand: &BrandHandle, who: Who, sub: &Submission) -> bool {
    let txn_id = sub.decoded().txn_id;
    txn_id != 0 && brand.txn_known(who.principal, txn_id).await == Some(true)
}

async fn spend(
    shared: &Arc<Shared>,
    (brand, probe): (&BrandHandle, &Probe),
    who: Who,
    (card_text, block): (&str, &[u8]),
    mut sub: Submission,
) -> Result<Done, Refusal> {
    if !matches!(who.principal, Principal::Terminal(_)) {
        return Err(Refusal::new(E::WrongRole, "a PIN is typed at a till"));
    }
    // A number that is no card of the brand: the state machine refuses it.
    let Ok(card) = card_of(who, card_text) else {
        return Ok(Done::Submit(sub));
    };
    if is_retry(brand, who, &sub).await {
        return Ok(Done::Submit(sub));
    }
    let at = (brand, probe);
    sub.pin_verified = check_block(shared, at, who, &sub, (card_text, card), block).await?;
    Ok(Done::Submit(sub))
}

async fn set_pin(
    shared: &Arc<Shared>,
    (brand, probe): (&BrandHandle, &Probe),
    who: Who,
    p: &pb::SetPin,
    mut sub: Submission,
) -> Result<Done, Refusal> {
    if !matches!(who.principal, Principal::Owner | Principal::Terminal(_)) {
        return Err(Refusal::new(
            E::WrongRole,
            "PINs are set by the owner or at a till",
        ));
    }
    let typed = !p.old_pin_block.is_empty();
    let retry = set_pin_fate(brand, probe, who, &sub, typed).await?;
    let card = card_of(who, &p.card)?;
    if !retry && typed {
        let old = (p.card.as_str(), card);
        let at = (brand, probe);
        sub.pin_verified = check_block(shared, at, who, &sub, old, &p.old_pin_block).await?;
    }
    let binding = Binding {
        brand_id: who.brand_id,
        signer: &who.key,
        txn_id: sub.decoded().txn_id,
        card: &p.card,
        purpose: Purpose::New,
    };
    let open = || {
        let opened = shared.pins.key().open(&p.pin_block, &binding);
        opened.map_err(block_refusal)
    };
    if retry {
        // The ledger answers a resend first: its block may no longer open
        // (the server key rotated, the till re-keyed since), and is opened
        // only if its PIN must still be kept.
        return set_pin_after(shared, brand, (who.brand_id, card), open, sub).await;
    }
    let hash = shared.pins.hash(open()?).await?;
    // Held from before the record (which lifts any lock) until the new
    // hash and its fresh count are kept: see `unlock_pin`.
    let held = shared.pins.hold(who.brand_id, card).await?;
    let answer = brand
        .submit(sub)
        .await
        .ok_or_else(|| Refusal::new(E::Internal, "server stopping"))?;
    // The hash is kept only once the record stands: a refused change
    // leaves the old PIN in force.
    if let Ok(reply) = &answer {
        held.set(hash, at_head(brand, reply).await?).await?;
    }
    Ok(Done::Answer(answer))
}

/// The state's answer to a PIN change, asked before any Argon2 hash:
/// `Ok(true)` a resend, `Ok(false)` one it may write, or its refusal,
/// the one `apply` gives (`typed`: the old PIN's verdict assumed is a
/// typed one's if right, as `apply` asks it last). Held to the probing
/// budget as each is taken up, and only a card the state does not know
/// counted as a miss, with nothing awaited between: a till pipelining PIN
/// changes to guessed cards learns no more than the budget, at no Argon2
/// cost.
async fn set_pin_fate(
    brand: &BrandHandle,
    probe: &Probe,
    who: Who,
    sub: &Submission,
    typed: bool,
) -> Result<bool, Refusal> {
    let signer = (who.principal, sub.signer_key);
    let fate = brand
        .set_pin_fate(signer, sub.decoded().clone(), typed)
        .await;
    let fate = fate.ok_or_else(|| Refusal::new(E::Internal, "server stopping"))?;
    admitted(probe, fate)
}

/// A request's fate, asked of the state, held to the probing budget with
/// nothing awaited between: `Ok(true)` a resend (the ledger answers it),
/// `Ok(false)` one to write, or the refusal (a probing miss counted).
fn admitted(probe: &Probe, fate: Fate) -> Result<bool, Refusal> {
    probe.admit()?;
    match fate {
        Fate::Refused(refusal) => {
            probe.count(refusal.code);
            Err(refusal)
        }
        Fate::Seen => Ok(true),
        Fate::Written => Ok(false),
    }
}

/// A resent PIN change (its txn id is in the ledger), answered by the
/// writer before its PIN is hashed: the ledger answers it, and its old PIN
/// is not checked again. Should its record stand without the hash (the
/// daemon stopped, or the PIN store failed, after the record), the new PIN
/// is hashed and kept now, as the ledger says it is the card's, unless a
/// later change stands in the store already. Only then: resending a
/// stored change costs no hash.
async fn set_pin_after(
    shared: &Arc<Shared>,
    brand: &BrandHandle,
    (brand_id, card): (u32, u64),
    pin: impl FnOnce() -> Result<String, Refusal>,
    sub: Submission,
) -> Result<Done, Refusal> {
    let answer = brand
        .submit(sub)
        .await
        .ok_or_else(|| Refusal::new(E::Internal, "server stopping"))?;
    if let Ok(reply) = &answer {
        let (seq, head) = at_head(brand, reply).await?;
        if shared.pins.lacks(brand_id, card, (seq, head)).await? {
            // The change stands in the ledger: its answer goes back even
            // if its block no longer opens (the server key rotated since).
            let Ok(pin) = pin() else {
                tracing::warn!(
                    brand = brand_id,
                    seq,
                    "a PIN change stands in the ledger without its PIN and its block no longer \
                     opens: the owner must set the card's PIN again"
                );
                return Ok(Done::Answer(answer));
            };
            let hash = shared.pins.hash(pin).await?;
            shared.pins.set(brand_id, card, hash, (seq, head)).await?;
            tracing::info!(brand = brand_id, seq, "PIN kept after its record");
        }
    }
    Ok(Done::Answer(answer))
}

/// The seq of the record `reply` answers, and the brand's newest record
/// (a PIN entry stored past it is not this ledger's: `pins::ahead`).
async fn at_head(brand: &BrandHandle, reply: &pb::Reply) -> Result<(u64, u64), Refusal> {
    let head = brand.head_seq().await;
    let head = head.ok_or_else(|| Refusal::new(E::Internal, "server stopping"))?;
    Ok((seq_of(reply), head))
}

/// The seq of the record a reply answers (0 if it has no receipt).
fn seq_of(reply: &pb::Reply) -> u64 {
    reply.receipt.as_ref().map_or(0, |r| r.seq)
}

/// A replacement (a lost named card): once its record stands, the holder
/// and the PIN move to the new number with the value.
async fn replace_card(
    shared: &Arc<Shared>,
    brand: &BrandHandle,
    who: Who,
    r: &pb::ReplaceCard,
    sub: Submission,
) -> Result<Done, Refusal> {
    let (Ok(old), Ok(new)) = (card_of(who, &r.old_card), card_of(who, &r.new_card)) else {
        // The state machine refuses it, with the code it gives.
        return Ok(Done::Submit(sub));
    };
    let answer = brand
        .submit(sub)
        .await
        .ok_or_else(|| Refusal::new(E::Internal, "server stopping"))?;
    // Also on a retry: a daemon stopped between the record and the moves
    // moves them now (a move with nothing to move does nothing).
    if answer.is_ok() {
        let store = shared.holders.clone();
        // The record stands whatever happens here: a failed move is the
        // operator's to repair (set-holder, set-pin), and is logged. Not
        // `bounded`: a move refused as busy would be one more to repair.
        if let Err(refusal) = blocking(move || store.rename(who.brand_id, old, new)).await {
            tracing::error!(brand = who.brand_id, %refusal, "holder not moved to the new card");
        }
        if let Err(refusal) = shared.pins.rename(who.brand_id, old, new).await {
            tracing::error!(brand = who.brand_id, %refusal, "PIN not moved to the new card");
        }
    }
    Ok(Done::Answer(answer))
}

async fn unlock_pin(
    shared: &Arc<Shared>,
    brand: &BrandHandle,
    who: Who,
    card_text: &str,
    sub: Submission,
) -> Result<Done, Refusal> {
    require_owner(who)?;
    let card = card_of(who, card_text)?;
    // Held from before the record until the count is reset, so that the
    // two are one step for PIN tries: a try between them would find the
    // old count, five, and lock the card again (a CARD_PIN_LOCKED record
    // right after the owner's unlock). Tries meanwhile are turned away
    // (SERVER_BUSY), and a lock being written goes before the unlock.
    let held = shared.pins.hold(who.brand_id, card).await?;
    let answer = brand
        .submit(sub)
        .await
        .ok_or_else(|| Refusal::new(E::Internal, "server stopping"))?;
    // A resent unlock resets the count only while the ledger still says
    // unlocked, and only if its own reset was not kept (it repairs a reset
    // a crash lost): after a later lock, or wrong tries since its reset,
    // the count stays, or a thief's five tries would start over.
    let relocked = match &answer {
        Ok(reply) if reply.replayed => brand.card_pin_locked(card).await != Some(false),
        _ => false,
    };
    if let (Ok(reply), false) = (&answer, relocked) {
        held.unlock(at_head(brand, reply).await?).await?;
    }
    Ok(Done::Answer(answer))
}
