//! Brand creation (by the server) and the owner's operations: stores, terminals, cards, rules.
use super::*;

pub(super) fn create_brand(
    state: &mut BrandState,
    ctx: &Context,
    req: &Request,
    cb: &pb::CreateBrand,
) -> Result<Outcome, Refusal> {
    if ctx.principal != Principal::Server {
        return refuse(E::WrongRole, "only the server creates brands");
    }
    if state.is_created() {
        return refuse(E::InvalidArgument, "brand already exists");
    }
    if cb.name.is_empty() || !text_ok(&cb.name) {
        return refuse(E::InvalidArgument, "brand name empty or too long");
    }
    if cb.currency.len() != 3 || !cb.currency.bytes().all(|b| b.is_ascii_uppercase()) {
        return refuse(E::InvalidArgument, "currency must be an ISO 4217 code");
    }
    if cb.currency_exponent > 4 {
        return refuse(E::InvalidArgument, "currency exponent must be 0..=4");
    }
    let Some(owner) = parse_public_key(&cb.owner_public_key) else {
        return refuse(
            E::InvalidArgument,
            "owner key is not a valid ed25519 public key",
        );
    };
    if !(1..=MAX_BRAND_ID).contains(&state.brand_id) {
        return refuse(E::InvalidArgument, "brand id out of range");
    }
    let rec = base_record(state, ctx, req, RecordKind::BrandCreated);
    state.name = cb.name.clone();
    state.currency = cb.currency.clone();
    state.exponent = cb.currency_exponent;
    state.owner_key = owner.to_bytes();
    state.server_key = *ctx.signer_key;
    Ok(append(state, ctx, rec))
}

pub(super) fn create_store(
    state: &mut BrandState,
    ctx: &Context,
    req: &Request,
    c: &pb::CreateStore,
) -> Result<Outcome, Refusal> {
    require_owner(ctx)?;
    if c.name.is_empty() || !text_ok(&c.name) {
        return refuse(E::InvalidArgument, "store name empty or too long");
    }
    if state.stores.len() >= MAX_STORES_PER_BRAND {
        return refuse(E::LimitExceeded, "too many stores");
    }
    let id = u32::try_from(state.stores.len() + 1).expect("bounded by limit");
    let mut rec = base_record(state, ctx, req, RecordKind::StoreCreated);
    rec.new_id = id;
    rec.store_id = id;
    state.stores.insert(
        id,
        Store {
            name: c.name.clone(),
        },
    );
    Ok(append(state, ctx, rec))
}

pub(super) fn enroll_terminal(
    state: &mut BrandState,
    ctx: &Context,
    req: &Request,
    e: &pb::EnrollTerminal,
) -> Result<Outcome, Refusal> {
    require_owner(ctx)?;
    if !state.stores.contains_key(&e.store_id) {
        return refuse(E::StoreNotFound, "no such store");
    }
    let Some(key) = parse_public_key(&e.public_key) else {
        return refuse(E::InvalidArgument, "not a valid ed25519 public key");
    };
    let key = key.to_bytes();
    if key_in_use(state, &key) {
        return refuse(E::KeyInUse, "this key is already enrolled");
    }
    if !text_ok(&e.label) {
        return refuse(E::InvalidArgument, "label too long");
    }
    if state.terminals.len() >= MAX_TERMINALS_PER_BRAND {
        return refuse(E::LimitExceeded, "too many terminals");
    }
    let id = u32::try_from(state.terminals.len() + 1).expect("bounded by limit");
    let mut rec = base_record(state, ctx, req, RecordKind::TerminalEnrolled);
    rec.new_id = id;
    rec.store_id = e.store_id;
    state.terminals.insert(
        id,
        Terminal {
            store_id: e.store_id,
            public_key: key,
            label: e.label.clone(),
            last_txn_id: 0,
            shift: ShiftTotals::default(),
            shift_number: 1,
            disabled: false,
        },
    );
    Ok(append(state, ctx, rec))
}

pub(super) fn issue_card(
    state: &mut BrandState,
    ctx: &Context,
    req: &Request,
    i: &pb::IssueCard,
) -> Result<Outcome, Refusal> {
    require_owner(ctx)?;
    let number = parse_card(state, &i.card).map_err(|r| match r.code {
        E::CardNotFound => {
            Refusal::new(E::InvalidArgument, "not a valid card number for this brand")
        }
        _ => r,
    })?;
    if state.cards.contains_key(&number) {
        return refuse(E::CardExists, "card number already issued");
    }
    if state.cards.len() >= MAX_CARDS_PER_BRAND {
        return refuse(E::LimitExceeded, "too many cards");
    }
    let mut card = Card::new();
    card.last_active_day = day_of(state, ctx.time_ms);
    card.expires_ms = crate::state::safety::expiry_at_issue(&state.rules, ctx.time_ms);
    let mut rec = base_record(state, ctx, req, RecordKind::CardIssued);
    rec.expires_ms = card.expires_ms;
    fill_card(state, &mut rec, number, &card, day_of(state, ctx.time_ms));
    state.cards.insert(number, card);
    Ok(append(state, ctx, rec))
}

pub(super) fn set_card_blocked(
    state: &mut BrandState,
    ctx: &Context,
    req: &Request,
    b: &pb::SetCardBlocked,
) -> Result<Outcome, Refusal> {
    require_owner(ctx)?;
    if !text_ok(&b.reason) {
        return refuse(E::InvalidArgument, "reason too long");
    }
    let (number, card) = find_card(state, &b.card)?;
    if card.status == CardStatus::Replaced {
        return refuse(E::CardBlocked, "a replaced card stays blocked");
    }
    if card.closed {
        return refuse(E::CardBlocked, "a closed card stays closed");
    }
    let mut card = card.clone();
    card.status = if b.blocked {
        CardStatus::Blocked
    } else {
        CardStatus::Active
    };
    let mut rec = base_record(state, ctx, req, RecordKind::CardBlockedChanged);
    fill_card(state, &mut rec, number, &card, day_of(state, ctx.time_ms));
    state.cards.insert(number, card);
    Ok(append(state, ctx, rec))
}

pub(super) fn replace_card(
    state: &mut BrandState,
    ctx: &Context,
    req: &Request,
    r: &pb::ReplaceCard,
) -> Result<Outcome, Refusal> {
    require_owner(ctx)?;
    let (old_number, old) = find_card(state, &r.old_card)?;
    if old.status == CardStatus::Replaced {
        return refuse(E::CardBlocked, "card was already replaced");
    }
    if old.closed {
        return refuse(E::CardBlocked, "a closed card cannot be replaced");
    }
    let new_number = parse_card(state, &r.new_card).map_err(|r| match r.code {
        E::CardNotFound => {
            Refusal::new(E::InvalidArgument, "not a valid card number for this brand")
        }
        _ => r,
    })?;
    if state.cards.contains_key(&new_number) {
        return refuse(E::CardExists, "the new card number is already issued");
    }
    if state.cards.len() >= MAX_CARDS_PER_BRAND {
        return refuse(E::LimitExceeded, "too many cards");
    }
    // Everything moves: value, points, spend history and visits.
    let new = Card {
        status: CardStatus::Active,
        ..old.clone()
    };
    let retired = Card {
        paid: 0,
        bonus: 0,
        points: 0,
        status: CardStatus::Replaced,
        lots: Lots::Empty,
        // Its points lots and day history moved with its points.
        loyalty: None,
        ..old.clone()
    };
    let mut rec = base_record(state, ctx, req, RecordKind::CardReplaced);
    rec.paid_in_minor = old.paid;
    rec.bonus_in_minor = old.bonus;
    rec.points_in = old.points;
    rec.other_card = format_card(old_number);
    fill_card(
        state,
        &mut rec,
        new_number,
        &new,
        day_of(state, ctx.time_ms),
    );
    state.cards.insert(old_number, retired);
    state.cards.insert(new_number, new);
    state.replaced_by.insert(old_number, new_number);
    Ok(append(state, ctx, rec))
}

pub(super) fn set_rules(
    state: &mut BrandState,
    ctx: &Context,
    req: &Request,
    s: &pb::SetRules,
) -> Result<Outcome, Refusal> {
    require_owner(ctx)?;
    let Some(new_rules) = &s.rules else {
        return refuse(E::InvalidArgument, "rules missing");
    };
    rules::validate(new_rules, &|id| state.stores.contains_key(&id))?;
    let rec = base_record(state, ctx, req, RecordKind::RulesSet);
    if new_rules.time_zone != state.rules.time_zone {
        // Days are cut in the new zone from this record on.
        state.books.reset_day();
    }
    state.rules = new_rules.clone();
    Ok(append(state, ctx, rec))
}

pub(super) fn set_terminal_disabled(
    state: &mut BrandState,
    ctx: &Context,
    req: &Request,
    s: &pb::SetTerminalDisabled,
) -> Result<Outcome, Refusal> {
    require_owner(ctx)?;
    if !text_ok(&s.reason) {
        return refuse(E::InvalidArgument, "reason too long");
    }
    let Some(store_id) = state.terminals.get(&s.terminal_id).map(|t| t.store_id) else {
        return refuse(E::TerminalNotFound, "no such terminal");
    };
    let mut rec = base_record(state, ctx, req, RecordKind::TerminalStatusChanged);
    rec.new_id = s.terminal_id;
    rec.store_id = store_id;
    state
        .terminals
        .get_mut(&s.terminal_id)
        .expect("checked")
        .disabled = s.disabled;
    Ok(append(state, ctx, rec))
}

/// True if `key` is the owner's, a terminal's or a read-only key's (even
/// a removed one: a key is never given a second meaning).
pub(super) fn key_in_use(state: &BrandState, key: &[u8; 32]) -> bool {
    *key == state.owner_key
        || state.terminals.values().any(|t| t.public_key == *key)
        || state.read_keys.values().any(|k| k.public_key == *key)
        || state.retired_keys.contains(key)
}

pub(super) fn add_key(
    state: &mut BrandState,
    ctx: &Context,
    req: &Request,
    a: &pb::AddKey,
) -> Result<Outcome, Refusal> {
    require_owner(ctx)?;
    let store_id = match pb::KeyRole::try_from(i32::try_from(a.role).unwrap_or(-1)) {
        Ok(pb::KeyRole::Auditor) if a.store_id == 0 => 0,
        Ok(pb::KeyRole::StoreManager) if state.stores.contains_key(&a.store_id) => a.store_id,
        Ok(pb::KeyRole::StoreManager) => return refuse(E::StoreNotFound, "no such store"),
        _ => {
            return refuse(
                E::InvalidArgument,
                "role must be auditor (no store) or store manager (with a store)",
            )
        }
    };
    let Some(key) = parse_public_key(&a.public_key) else {
        return refuse(E::InvalidArgument, "not a valid ed25519 public key");
    };
    let key = key.to_bytes();
    if key_in_use(state, &key) {
        return refuse(E::KeyInUse, "this key is already enrolled");
    }
    if !text_ok(&a.label) {
        return refuse(E::InvalidArgument, "label too long");
    }
    if state.read_keys.len() >= MAX_READ_KEYS_PER_BRAND {
        return refuse(E::LimitExceeded, "too many read-only keys");
    }
    let id = u32::try_from(state.read_keys.len() + 1).expect("bounded by limit");
    let mut rec = base_record(state, ctx, req, RecordKind::KeyAdded);
    rec.new_id = id;
    rec.store_id = store_id;
    let read_key = ReadKey {
        public_key: key,
        store_id,
        label: a.label.clone(),
        removed: false,
    };
    state.read_keys.insert(id, read_key);
    Ok(append(state, ctx, rec))
}

pub(super) fn remove_key(
    state: &mut BrandState,
    ctx: &Context,
    req: &Request,
    r: &pb::RemoveKey,
) -> Result<Outcome, Refusal> {
    require_owner(ctx)?;
    let found = state
        .read_keys
        .iter()
        .find(|(_, k)| k.public_key.as_slice() == r.public_key.as_slice() && !k.removed)
        .map(|(id, k)| (*id, k.store_id));
    let Some((id, store_id)) = found else {
        return refuse(E::InvalidArgument, "no read-only key with that public key");
    };
    let mut rec = base_record(state, ctx, req, RecordKind::KeyRemoved);
    rec.new_id = id;
    rec.store_id = store_id;
    state.read_keys.get_mut(&id).expect("found").removed = true;
    Ok(append(state, ctx, rec))
}
