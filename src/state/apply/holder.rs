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
pub(super) fn require_pin(
    state: &BrandState,
    ctx: &Context,
    card: &Card,
    amount: Option<i64>,
) -> Result<(), Refusal> {
    if pin_needed(&state.rules, card, amount) && !ctx.pin_verified {
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
    fill_card(state, &mut rec, number, &card);
    state.cards.insert(number, card);
    Ok(append(state, ctx, rec))
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
    fill_card(state, &mut rec, number, &card);
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
            let (number, card) = find_active_card(state, &p.card)?;
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
    let mut rec = base_record(state, ctx, req, RecordKind::PinSet);
    fill_card(state, &mut rec, number, &card);
    state.cards.insert(number, card);
    Ok(append(state, ctx, rec))
}

pub(super) fn unlock_pin(
    state: &mut BrandState,
    ctx: &Context,
    req: &Request,
    u: &pb::UnlockPin,
) -> Result<Outcome, Refusal> {
    require_owner(ctx)?;
    let (number, card) = find_card(state, &u.card)?;
    if !card.has_pin {
        return refuse(E::InvalidArgument, "the card has no PIN to unlock");
    }
    let card = card.clone();
    let mut rec = base_record(state, ctx, req, RecordKind::PinUnlocked);
    fill_card(state, &mut rec, number, &card);
    Ok(append(state, ctx, rec))
}
