//! The card's holder and PIN as the ledger sees them: that a card is named
//! (with a commitment to its holder, never the person), that it has a PIN
//! (never the PIN), and the owner's unlocks. The person and the PIN's hash
//! live in the server's stores (`server/holders.rs`, `server/pins.rs`).
use super::*;

/// A commitment to a holder: HMAC-SHA256 output.
const COMMITMENT_BYTES: usize = 32;

/// True if the brand's rules ask this card's PIN for a spend of `amount`
/// (a purchase's bill; `None` for a points redemption).
pub(super) fn pin_needed(rules: &pb::Rules, card: &Card, amount: Option<i64>) -> bool {
    card.has_pin
        && (rules.pin_all_spends
            || amount.is_some_and(|a| rules.pin_over_minor > 0 && a > rules.pin_over_minor))
}

/// Refuses a spend the rules ask a PIN for when the server did not verify
/// one (the verdict is the context's: see `Context::pin_verified`).
/// True if `op` carries a PIN the server may have checked: a purchase's or
/// a redemption's block, or the old PIN of a PIN change.
pub(super) fn pin_typed(op: &Op) -> bool {
    match op {
        Op::Purchase(p) => !p.pin_block.is_empty(),
        Op::RedeemPoints(r) => !r.pin_block.is_empty(),
        Op::SetPin(s) => !s.old_pin_block.is_empty(),
        _ => false,
    }
}

pub(super) fn require_pin(
    state: &BrandState,
    ctx: &Context,
    card: &Card,
    amount: Option<i64>,
) -> Result<(), Refusal> {
    if !pin_needed(&state.rules, card, amount) {
        return Ok(());
    }
    if card.pin_locked {
        return refuse(
            E::PinLocked,
            "the card is locked for PIN operations after too many wrong PINs; the owner unlocks it",
        );
    }
    if !ctx.pin_verified {
        return refuse(
            E::PinRequired,
            "this card's PIN is needed here: the cardholder types it at the till",
        );
    }
    Ok(())
}

pub(super) fn set_holder(
    state: &mut BrandState,
    ctx: &Context,
    req: &Request,
    h: &pb::SetHolder,
) -> Result<Outcome, Refusal> {
    require_owner(ctx)?;
    if h.commitment.len() != COMMITMENT_BYTES {
        return refuse(E::InvalidArgument, "the holder commitment is 32 bytes");
    }
    let (number, card) = find_card(state, &h.card)?;
    if card.status == CardStatus::Replaced {
        return refuse(E::CardBlocked, "a replaced card takes no holder");
    }
    let mut card = card.clone();
    card.named = true;
    let mut rec = base_record(state, ctx, req, RecordKind::HolderSet);
    fill_card(state, &mut rec, number, &card, day_of(state, ctx.time_ms));
    state.cards.insert(number, card);
    Ok(append(state, ctx, rec))
}

/// What [`apply`] would do now with a request, short of doing it: the
/// server asks before a step of its own that must agree with the record.
/// It makes its holder store forget the person only for an erase that
/// writes its record (an erase the state refuses changes nothing, its
/// holder stays), and hashes a new PIN only for a change that may write
/// one (a refusal is the state's own, and only a card the state does not
/// know is a probing miss).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate {
    /// A record would be written.
    Written,
    /// A resend of a request that stands: the ledger answers it.
    Seen,
    /// Refused, as `apply` refuses it.
    Refused(Refusal),
}

/// `apply`'s checks of every request of an owner or a till, in its order,
/// then `own`, the operation's: no record made (a pure read).
fn fate(
    state: &BrandState,
    ctx: &Context,
    req: &Request,
    own: impl FnOnce(&Op) -> Result<(), Refusal>,
) -> Fate {
    let checked = (|| {
        let Some(op) = &req.op else {
            return refuse(E::InvalidArgument, "request has no operation");
        };
        addressed(state, req)?;
        created(state)?;
        enrolled(state, ctx)?;
        signer_key_current(state, ctx)?;
        if ctx.pin_verified && !pin_typed(op) {
            return refuse(
                E::InvalidArgument,
                "a PIN verdict on a request that carries no PIN block",
            );
        }
        if already_seen(state, ctx, req)?.is_some() {
            return Ok(true);
        }
        own(op).map(|()| false)
    })();
    match checked {
        Ok(false) => Fate::Written,
        Ok(true) => Fate::Seen,
        Err(refusal) => Fate::Refused(refusal),
    }
}

/// The fate of `req`, an `EraseHolder` signed with `signer_key` by the
/// brand's owner, against `state` (`erase_fate_is_apply_s_answer` holds
/// it to `apply`'s answer).
pub fn erase_fate(state: &BrandState, signer_key: &[u8; 32], req: &Request) -> Fate {
    let ctx = Context {
        time_ms: 0,
        principal: Principal::Owner,
        signer_key,
        request: &[],
        signature: &[],
        pin_verified: false,
    };
    fate(state, &ctx, req, |op| {
        let Op::EraseHolder(e) = op else {
            return refuse(E::InvalidArgument, "not an erase");
        };
        require_owner(&ctx)?;
        find_card(state, &e.card).map(|_| ())
    })
}

/// The fate of `req`, a `SetPin` of `ctx`'s signer, against `state` at
/// `ctx`'s time (a card may have expired), the old PIN's verdict taken
/// from `ctx` (`set_pin_fate_is_apply_s_answer`). Asked before any Argon2
/// hash with the verdict a typed old PIN gets if right: the verdict is
/// the last thing `apply` asks, so a refusal then is the state's whatever
/// PIN was typed.
pub fn set_pin_fate(state: &BrandState, ctx: &Context, req: &Request) -> Fate {
    fate(state, ctx, req, |op| {
        let Op::SetPin(p) = op else {
            return refuse(E::InvalidArgument, "not a PIN change");
        };
        pin_settable(state, ctx, p).map(|_| ())
    })
}

pub(super) fn erase_holder(
    state: &mut BrandState,
    ctx: &Context,
    req: &Request,
    e: &pb::EraseHolder,
) -> Result<Outcome, Refusal> {
    require_owner(ctx)?;
    let (number, card) = find_card(state, &e.card)?;
    // Written even for a card without a holder: the server's store may
    // have held data sent without a SetHolder, and the erasure is evidence.
    let mut card = card.clone();
    card.named = false;
    let mut rec = base_record(state, ctx, req, RecordKind::HolderErased);
    fill_card(state, &mut rec, number, &card, day_of(state, ctx.time_ms));
    state.cards.insert(number, card);
    Ok(append(state, ctx, rec))
}

pub(super) fn set_pin(
    state: &mut BrandState,
    ctx: &Context,
    req: &Request,
    p: &pb::SetPin,
) -> Result<Outcome, Refusal> {
    let (number, mut card) = pin_settable(state, ctx, p)?;
    card.has_pin = true;
    // A new PIN starts with no wrong tries (only the owner can set one on
    // a locked card: a till is refused in `pin_settable`).
    card.pin_locked = false;
    let mut rec = base_record(state, ctx, req, RecordKind::PinSet);
    fill_card(state, &mut rec, number, &card, day_of(state, ctx.time_ms));
    state.cards.insert(number, card);
    Ok(append(state, ctx, rec))
}

/// The card whose PIN `p` sets, if `ctx`'s signer may set it now: the
/// checks of a PIN change, shared by `set_pin` and `set_pin_fate`.
fn pin_settable(state: &BrandState, ctx: &Context, p: &pb::SetPin) -> Result<(u64, Card), Refusal> {
    if p.pin_block.is_empty() {
        return refuse(E::InvalidArgument, "no PIN block: seal the new PIN");
    }
    match ctx.principal {
        Principal::Owner => {
            let (number, card) = find_card(state, &p.card)?;
            if card.status == CardStatus::Replaced {
                return refuse(E::CardBlocked, "a replaced card takes no PIN");
            }
            Ok((number, card.clone()))
        }
        Principal::Terminal(_) => {
            let (number, card) = find_active_card(state, ctx, &p.card)?;
            if card.pin_locked {
                return refuse(
                    E::PinLocked,
                    "the card's PIN is locked: the owner resets it",
                );
            }
            // At a till a PIN changes only with the old one typed.
            if card.has_pin && !ctx.pin_verified {
                return refuse(
                    E::PinRequired,
                    "the card has a PIN: the cardholder types the old one to change it",
                );
            }
            Ok((number, card))
        }
        _ => refuse(E::WrongRole, "PINs are set by the owner or at a till"),
    }
}

pub(super) fn unlock_pin(
    state: &mut BrandState,
    ctx: &Context,
    req: &Request,
    l: &pb::SetPinLock,
) -> Result<Outcome, Refusal> {
    require_owner(ctx)?;
    if l.locked {
        return refuse(
            E::WrongRole,
            "only the server locks a PIN (after five wrong tries)",
        );
    }
    let (number, card) = find_card(state, &l.card)?;
    if !card.has_pin {
        return refuse(E::InvalidArgument, "the card has no PIN to unlock");
    }
    let mut card = card.clone();
    card.pin_locked = false;
    let mut rec = base_record(state, ctx, req, RecordKind::PinUnlocked);
    fill_card(state, &mut rec, number, &card, day_of(state, ctx.time_ms));
    state.cards.insert(number, card);
    Ok(append(state, ctx, rec))
}

/// The server's lock after the fifth wrong PIN in a row: a record, so that
/// the ledger shows when a card was locked and no spend that needed the
/// PIN is accepted until the owner's unlock (wrong tries themselves are
/// not records). Refused for a card already locked: one record a lock.
pub(super) fn lock_pin(
    state: &mut BrandState,
    ctx: &Context,
    req: &Request,
    l: &pb::SetPinLock,
) -> Result<Outcome, Refusal> {
    if !l.locked || req.txn_id != 0 {
        return refuse(
            E::InvalidArgument,
            "the server's lock has locked set and no txn id",
        );
    }
    let (number, card) = find_card(state, &l.card)?;
    if !card.has_pin || card.pin_locked {
        return refuse(E::InvalidArgument, "no PIN, or the PIN is locked already");
    }
    let mut card = card.clone();
    card.pin_locked = true;
    let mut rec = base_record(state, ctx, req, RecordKind::CardPinLocked);
    fill_card(state, &mut rec, number, &card, day_of(state, ctx.time_ms));
    state.cards.insert(number, card);
    Ok(append(state, ctx, rec))
}

#[cfg(test)]
mod tests_support {
    use super::*;
    use crate::ledger::Submission;
    use crate::testing::{self, signed};

    /// A purchase with a (sealed, here opaque) PIN block typed.
    pub(super) fn typed_purchase(card: &str, amount: i64) -> Op {
        Op::Purchase(pb::Purchase {
            card: card.into(),
            amount_minor: amount,
            pin_block: vec![9; 80],
            ..Default::default()
        })
    }

    pub(super) const NOW: i64 = 1_800_000_000_000;

    pub(super) fn run(
        state: &mut BrandState,
        sub: &Submission,
        pin_verified: bool,
    ) -> Result<Outcome, Refusal> {
        let ctx = Context {
            time_ms: NOW,
            principal: sub.principal,
            signer_key: &sub.signer_key,
            request: &sub.request,
            signature: &sub.signature,
            pin_verified,
        };
        apply(state, &ctx, sub.decoded())
    }

    pub(super) fn written(out: Result<Outcome, Refusal>) -> Written {
        match out {
            Ok(Outcome::Written(w)) => w,
            other => panic!("expected a record, got {other:?}"),
        }
    }

    /// A brand whose one card holds 100.00 and has a PIN every spend needs.
    pub(super) fn brand_with_pin() -> (BrandState, String) {
        let (server, owner, till) = (
            testing::server_key(),
            testing::owner_key(),
            testing::terminal_key(),
        );
        // A fixed number: the records below are the same on every run.
        let card = "8000011234567890128".to_string();
        let mut state = BrandState::new(testing::BRAND);
        let create = testing::create_brand("b", &owner.verifying_key().to_bytes());
        written(run(
            &mut state,
            &signed(&server, Principal::Server, 1, Op::CreateBrand(create)),
            false,
        ));
        let setup = testing::owner_setup(
            &owner,
            "s",
            std::slice::from_ref(&till),
            std::slice::from_ref(&card),
        );
        for sub in &setup {
            written(run(&mut state, sub, false));
        }
        let load = signed(
            &till,
            Principal::Terminal(1),
            1,
            testing::top_up(&card, 10_000),
        );
        written(run(&mut state, &load, false));
        let set = Op::SetPin(pb::SetPin {
            card: card.clone(),
            pin_block: vec![1; 80],
            ..Default::default()
        });
        written(run(
            &mut state,
            &signed(&owner, Principal::Owner, 10, set),
            false,
        ));
        let mut rules = state.rules.clone();
        rules.pin_all_spends = true;
        let rules = Op::SetRules(pb::SetRules { rules: Some(rules) });
        written(run(
            &mut state,
            &signed(&owner, Principal::Owner, 11, rules),
            false,
        ));
        (state, card)
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::tests_support::*;
    use super::*;
    use crate::testing::{self, signed};

    #[test]
    fn a_spend_that_needs_the_pin_is_written_and_replayed_only_with_the_servers_verdict() {
        let (mut state, card) = brand_with_pin();
        let till = testing::terminal_key();
        let buy = signed(
            &till,
            Principal::Terminal(1),
            2,
            typed_purchase(&card, 2_500),
        );
        let before = state.clone();
        let refused = run(&mut state, &buy, false).unwrap_err();
        assert_eq!(refused.code, E::PinRequired);
        assert_eq!(state, before, "a refusal changes nothing");
        // A verdict on a request that typed no PIN is no verdict: refused,
        // as the independent verifier refuses such a record.
        let untyped = signed(
            &till,
            Principal::Terminal(1),
            2,
            testing::purchase(&card, 2_500, false),
        );
        let refused = run(&mut state, &untyped, true).unwrap_err();
        assert_eq!(refused.code, E::InvalidArgument);
        assert_eq!(state, before);
        let w = written(run(&mut state, &buy, true));
        assert!(w.record.pin_verified);
        assert_eq!(w.record.paid_balance_after_minor, 7_500);
        // Replay takes the verdict from the record: as written it replays;
        // with the verdict struck out (the chain re-linked as a dishonest
        // server would) the rules refuse it.
        let server = testing::server_key().verifying_key().to_bytes();
        let ok = crate::replay::replay_decoded(
            &mut before.clone(),
            w.record.seq,
            &w.record,
            &w.bytes,
            &server,
        );
        assert_eq!(ok.expect("replays").hash, w.hash);
        let mut forged = w.record.clone();
        forged.pin_verified = false;
        let bytes = forged.encode_to_vec();
        let err = crate::replay::replay_decoded(
            &mut before.clone(),
            forged.seq,
            &forged,
            &bytes,
            &server,
        )
        .unwrap_err();
        assert!(err.to_string().contains("PIN"), "{err}");
    }

    #[test]
    fn the_holder_makes_the_card_named_and_its_erasure_anonymous() {
        let (mut state, card) = brand_with_pin();
        let owner = testing::owner_key();
        let number = crate::card_number::parse_number(&card).unwrap().1;
        let set = |commitment: Vec<u8>| {
            Op::SetHolder(pb::SetHolder {
                card: card.clone(),
                commitment,
            })
        };
        let short = run(
            &mut state,
            &signed(&owner, Principal::Owner, 12, set(vec![1; 31])),
            false,
        );
        assert_eq!(short.unwrap_err().code, E::InvalidArgument);
        let w = written(run(
            &mut state,
            &signed(&owner, Principal::Owner, 12, set(vec![1; 32])),
            false,
        ));
        assert_eq!(w.record.kind(), RecordKind::HolderSet);
        assert!(state.cards[&number].named);
        let erase = Op::EraseHolder(pb::EraseHolder { card: card.clone() });
        let w = written(run(
            &mut state,
            &signed(&owner, Principal::Owner, 13, erase),
            false,
        ));
        assert_eq!(w.record.kind(), RecordKind::HolderErased);
        assert!(!state.cards[&number].named);
        // The person never reaches the state machine.
        let data = Op::HolderData(pb::HolderData {
            card,
            name: "n".into(),
            phone: "12345".into(),
        });
        let refused = run(
            &mut state,
            &signed(&owner, Principal::Owner, 14, data),
            false,
        );
        assert_eq!(refused.unwrap_err().code, E::InvalidArgument);
    }
}

#[cfg(test)]
mod lock_tests {
    use super::tests_support::*;
    use super::*;
    use crate::testing::{self, signed};

    #[test]
    fn a_locked_pin_refuses_spends_whatever_the_verdict_until_the_owner_unlocks_it() {
        let (mut state, card) = brand_with_pin();
        let (server, owner, till) = (
            testing::server_key(),
            testing::owner_key(),
            testing::terminal_key(),
        );
        let lock = |locked| {
            Op::SetPinLock(pb::SetPinLock {
                card: card.clone(),
                locked,
            })
        };
        // Only the server locks, without a txn id; the owner only unlocks.
        let by_owner = run(
            &mut state,
            &signed(&owner, Principal::Owner, 12, lock(true)),
            false,
        );
        assert_eq!(by_owner.unwrap_err().code, E::WrongRole);
        let with_txn = run(
            &mut state,
            &signed(&server, Principal::Server, 5, lock(true)),
            false,
        );
        assert_eq!(with_txn.unwrap_err().code, E::InvalidArgument);
        let w = written(run(
            &mut state,
            &signed(&server, Principal::Server, 0, lock(true)),
            false,
        ));
        assert_eq!(
            (w.record.kind(), w.record.signer()),
            (RecordKind::CardPinLocked, pb::Signer::Server)
        );
        let again = run(
            &mut state,
            &signed(&server, Principal::Server, 0, lock(true)),
            false,
        );
        assert_eq!(
            again.unwrap_err().code,
            E::InvalidArgument,
            "one record a lock"
        );
        let buy = signed(
            &till,
            Principal::Terminal(1),
            2,
            typed_purchase(&card, 2_500),
        );
        assert_eq!(run(&mut state, &buy, true).unwrap_err().code, E::PinLocked);
        written(run(
            &mut state,
            &signed(&owner, Principal::Owner, 12, lock(false)),
            false,
        ));
        let w = written(run(&mut state, &buy, true));
        assert_eq!(w.record.paid_balance_after_minor, 7_500);
    }
}

#[cfg(test)]
mod golden {
    use sha2::{Digest, Sha256};

    use super::tests_support::*;
    use super::*;
    use crate::testing::{self, signed};

    /// SHA-256 over every record the script below writes, in order: the
    /// byte layout of the holder and PIN records (kinds 110-114, field 60)
    /// is the ledger format; a change to it must show here.
    const RECORDS: &str = "e7a2166ead1ce0680e62258997d269c96b5914382f1fe5c387c7d3979f9bd3a2";

    #[test]
    fn holder_and_pin_records_are_pinned() {
        let (mut state, card) = brand_with_pin();
        let (server, owner, till) = (
            testing::server_key(),
            testing::owner_key(),
            testing::terminal_key(),
        );
        let mut digest = Sha256::new();
        let mut write = |state: &mut BrandState, sub, verdict| {
            digest.update(written(run(state, &sub, verdict)).bytes);
        };
        let holder = Op::SetHolder(pb::SetHolder {
            card: card.clone(),
            commitment: vec![7; 32],
        });
        write(
            &mut state,
            signed(&owner, Principal::Owner, 12, holder),
            false,
        );
        let buy = typed_purchase(&card, 2_500);
        write(
            &mut state,
            signed(&till, Principal::Terminal(1), 2, buy),
            true,
        );
        let lock = |locked| {
            Op::SetPinLock(pb::SetPinLock {
                card: card.clone(),
                locked,
            })
        };
        write(
            &mut state,
            signed(&server, Principal::Server, 0, lock(true)),
            false,
        );
        write(
            &mut state,
            signed(&owner, Principal::Owner, 13, lock(false)),
            false,
        );
        let change = Op::SetPin(pb::SetPin {
            card: card.clone(),
            pin_block: vec![2; 80],
            old_pin_block: vec![3; 80],
        });
        write(
            &mut state,
            signed(&till, Principal::Terminal(1), 3, change),
            true,
        );
        let erase = Op::EraseHolder(pb::EraseHolder { card: card.clone() });
        write(
            &mut state,
            signed(&owner, Principal::Owner, 14, erase),
            false,
        );
        assert_eq!(hex::encode(digest.finalize()), RECORDS);
    }
}

#[cfg(test)]
mod erase_tests {
    use super::tests_support::*;
    use super::*;
    use crate::testing;

    /// The owner's erase with `edit` made to its request, signed by `key`.
    fn erase_by(
        key: &ed25519_dalek::SigningKey,
        txn: u64,
        card: &str,
        edit: impl FnOnce(&mut Request),
    ) -> crate::ledger::Submission {
        let op = Op::EraseHolder(pb::EraseHolder { card: card.into() });
        let mut req = testing::request(txn, op);
        edit(&mut req);
        crate::ledger::Submission::signed(Principal::Owner, key, req)
    }

    /// The server erases the person only where `erase_fate` says Written:
    /// for each erase, it says what `apply` then does, and leaves the
    /// state as it was.
    #[test]
    fn erase_fate_is_apply_s_answer() {
        let (mut state, card) = brand_with_pin();
        let owner = testing::owner_key();
        let unknown = crate::card_number::generate(testing::BRAND);
        let cases = [
            erase_by(&owner, 40, &unknown, |_| {}),
            erase_by(&owner, 41, &card, |r| r.operator = "a\u{7}".into()),
            erase_by(&owner, 0, &card, |_| {}),
            erase_by(&testing::terminal_key(), 42, &card, |_| {}),
            erase_by(&owner, 43, &card, |r| r.brand_id += 1),
            erase_by(&owner, 44, &card, |_| {}),
            erase_by(&owner, 44, &card, |_| {}),
        ];
        let mut fates = Vec::new();
        for sub in &cases {
            let fate = erase_fate(&state, &sub.signer_key, sub.decoded());
            let seq = state.seq;
            let out = run(&mut state, sub, false);
            let expected = match &out {
                Ok(Outcome::Written(_)) => Fate::Written,
                Ok(Outcome::Seen { .. }) => Fate::Seen,
                Err(refusal) => Fate::Refused(refusal.clone()),
                Ok(other) => panic!("{other:?}"),
            };
            assert_eq!(fate, expected, "{:?}", sub.decoded());
            let written = u64::from(fate == Fate::Written);
            assert_eq!(state.seq, seq + written);
            fates.push(fate);
        }
        let codes: Vec<_> = fates
            .iter()
            .map(|f| match f {
                Fate::Refused(r) => Some(r.code),
                _ => None,
            })
            .collect();
        assert_eq!(
            codes,
            [
                Some(E::CardNotFound),
                Some(E::InvalidArgument),
                Some(E::InvalidArgument),
                Some(E::UnknownKey),
                Some(E::WrongBrand),
                None,
                None
            ]
        );
        assert_eq!(fates[5..], [Fate::Written, Fate::Seen]);
    }
}

#[cfg(test)]
mod set_pin_tests {
    use super::tests_support::*;
    use super::*;
    use crate::ledger::Submission;
    use crate::testing;

    /// A PIN change of `card` by `principal` with `edit` made to its
    /// request, signed by `key`; `old` types the old PIN.
    fn change(
        (principal, key): (Principal, &ed25519_dalek::SigningKey),
        txn: u64,
        (card, old): (&str, bool),
        edit: impl FnOnce(&mut Request),
    ) -> Submission {
        let op = Op::SetPin(pb::SetPin {
            card: card.into(),
            pin_block: vec![4; 80],
            old_pin_block: if old { vec![5; 80] } else { Vec::new() },
        });
        let mut req = testing::request(txn, op);
        edit(&mut req);
        Submission::signed(principal, key, req)
    }

    /// `set_pin_fate` of `sub` with the old PIN's verdict `verified`, at
    /// the time `run` applies it.
    fn fate_at_now(state: &BrandState, sub: &Submission, verified: bool) -> Fate {
        let ctx = Context {
            time_ms: NOW,
            principal: sub.principal,
            signer_key: &sub.signer_key,
            request: &[],
            signature: &[],
            pin_verified: verified,
        };
        set_pin_fate(state, &ctx, sub.decoded())
    }

    /// The server hashes a new PIN only where `set_pin_fate` says it may
    /// be written, and answers its refusal otherwise: for each change and
    /// verdict, it says what `apply` then does, and leaves the state as it
    /// was. An unknown card's malformed change is refused as malformed,
    /// as `apply` refuses it, not as a probing miss.
    #[test]
    fn set_pin_fate_is_apply_s_answer() {
        let (mut state, card) = brand_with_pin();
        let owner = (Principal::Owner, &testing::owner_key());
        let till = (Principal::Terminal(1), &testing::terminal_key());
        let stranger = (Principal::Terminal(9), &testing::terminal_key());
        let unknown = crate::card_number::generate(testing::BRAND);
        let no_block = |r: &mut Request| {
            if let Some(Op::SetPin(p)) = &mut r.op {
                p.pin_block.clear();
            }
        };
        let cases = [
            (change(owner, 0, (&unknown, false), |_| {}), false),
            (
                change(owner, 40, (&unknown, false), |r| {
                    r.operator = "a\u{7}".into()
                }),
                false,
            ),
            (change(owner, 41, (&unknown, false), no_block), false),
            (change(owner, 42, (&unknown, false), |_| {}), false),
            (
                change(owner, 43, (&card, false), |r| r.brand_id += 1),
                false,
            ),
            (change(stranger, 2, (&card, true), |_| {}), true),
            (change(till, 2, (&card, false), |_| {}), true),
            (change(till, 2, (&card, false), |_| {}), false),
            (change(till, 2, (&card, true), |_| {}), true),
            (change(till, 2, (&card, true), |_| {}), true),
            (change(owner, 44, (&card, false), |_| {}), false),
        ];
        let mut codes = Vec::new();
        for (sub, verified) in &cases {
            let fate = fate_at_now(&state, sub, *verified);
            let seq = state.seq;
            let expected = match run(&mut state, sub, *verified) {
                Ok(Outcome::Written(_)) => Fate::Written,
                Ok(Outcome::Seen { .. }) => Fate::Seen,
                Err(refusal) => Fate::Refused(refusal),
                Ok(other) => panic!("{other:?}"),
            };
            assert_eq!(fate, expected, "{:?}", sub.decoded());
            assert_eq!(state.seq, seq + u64::from(fate == Fate::Written));
            codes.push(match fate {
                Fate::Refused(r) => Err(r.code),
                other => Ok(other),
            });
        }
        assert_eq!(
            codes,
            [
                Err(E::InvalidArgument),
                Err(E::InvalidArgument),
                Err(E::InvalidArgument),
                Err(E::CardNotFound),
                Err(E::WrongBrand),
                Err(E::UnknownKey),
                Err(E::InvalidArgument),
                Err(E::PinRequired),
                Ok(Fate::Written),
                Ok(Fate::Seen),
                Ok(Fate::Written),
            ]
        );
    }
}
