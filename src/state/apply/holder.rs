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

/// What [`apply`] would do now with an owner's `EraseHolder`, short of
/// doing it: the server makes its holder store forget the person only
/// for an erase that writes its record, so that an erase the state
/// refuses changes nothing (its holder stays), while the person is still
/// forgotten before the record that says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EraseFate {
    /// A HOLDER_ERASED record would be written.
    Written,
    /// A resend of an erase that stands: the ledger answers it (its
    /// person was forgotten before its record was written).
    Seen,
    /// Refused, as `apply` refuses it.
    Refused(Refusal),
}

/// The fate of `req`, an `EraseHolder` signed with `signer_key` by the
/// brand's owner, against `state`: `apply`'s checks for it, in its order,
/// with no record made (a pure read; `erase_fate_is_apply_s_answer`
/// holds the two together).
pub fn erase_fate(state: &BrandState, signer_key: &[u8; 32], req: &Request) -> EraseFate {
    let ctx = Context {
        time_ms: 0,
        principal: Principal::Owner,
        signer_key,
        request: &[],
        signature: &[],
        pin_verified: false,
    };
    let checked = (|| {
        let Some(Op::EraseHolder(e)) = &req.op else {
            return refuse(E::InvalidArgument, "not an erase");
        };
        addressed(state, req)?;
        created(state)?;
        signer_key_current(state, &ctx)?;
        if let Some(seen) = already_seen(state, &ctx, req)? {
            return Ok(Some(seen));
        }
        require_owner(&ctx)?;
        find_card(state, &e.card).map(|_| None)
    })();
    match checked {
        Ok(None) => EraseFate::Written,
        Ok(Some(_)) => EraseFate::Seen,
        Err(refusal) => EraseFate::Refused(refusal),
    }
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
    if p.pin_block.is_empty() {
        return refuse(E::InvalidArgument, "no PIN block: seal the new PIN");
    }
    let (number, card) = match ctx.principal {
        Principal::Owner => {
            let (number, card) = find_card(state, &p.card)?;
            if card.status == CardStatus::Replaced {
                return refuse(E::CardBlocked, "a replaced card takes no PIN");
            }
            (number, card.clone())
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
            (number, card)
        }
        _ => return refuse(E::WrongRole, "PINs are set by the owner or at a till"),
    };
    let mut card = card;
    card.has_pin = true;
    // A new PIN starts with no wrong tries (only the owner can set one on
    // a locked card: a till is refused above).
    card.pin_locked = false;
    let mut rec = base_record(state, ctx, req, RecordKind::PinSet);
    fill_card(state, &mut rec, number, &card, day_of(state, ctx.time_ms));
    state.cards.insert(number, card);
    Ok(append(state, ctx, rec))
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

    const NOW: i64 = 1_800_000_000_000;

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
                Ok(Outcome::Written(_)) => EraseFate::Written,
                Ok(Outcome::Seen { .. }) => EraseFate::Seen,
                Err(refusal) => EraseFate::Refused(refusal.clone()),
                Ok(other) => panic!("{other:?}"),
            };
            assert_eq!(fate, expected, "{:?}", sub.decoded());
            let written = u64::from(fate == EraseFate::Written);
            assert_eq!(state.seq, seq + written);
            fates.push(fate);
        }
        let codes: Vec<_> = fates
            .iter()
            .map(|f| match f {
                EraseFate::Refused(r) => Some(r.code),
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
        assert_eq!(fates[5..], [EraseFate::Written, EraseFate::Seen]);
    }
}
