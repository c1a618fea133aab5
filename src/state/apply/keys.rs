//! Key rotation (issue 6 of #15): the owner's key, a terminal's key under
//! its same id, and the server's key, each replaced by a record signed by
//! the key in force, so that the chain itself says which key signs what
//! from which record on (docs/ledger-format.md section 6).
use super::*;
use crate::crypto::{owner_key_message, verify_strict};

/// A new key for a rotation: a valid ed25519 key (not weak) that no one in
/// the brand holds or held.
fn fresh_key(state: &BrandState, bytes: &[u8]) -> Result<[u8; 32], Refusal> {
    let Some(key) = parse_public_key(bytes) else {
        return refuse(E::InvalidArgument, "not a valid ed25519 public key");
    };
    let key = key.to_bytes();
    if owner::key_in_use(state, &key) || key == state.server_key {
        return refuse(E::KeyInUse, "this key is already in use");
    }
    if state.retired_keys.len() >= MAX_RETIRED_KEYS {
        return refuse(E::LimitExceeded, "too many key rotations in this brand");
    }
    Ok(key)
}

pub(super) fn rotate_owner_key(
    state: &mut BrandState,
    ctx: &Context,
    req: &Request,
    r: &pb::RotateOwnerKey,
) -> Result<Outcome, Refusal> {
    require_owner(ctx)?;
    let key = fresh_key(state, &r.new_public_key)?;
    let vk = parse_public_key(&key).expect("checked");
    let message = owner_key_message(state.brand_id, &key);
    if !verify_strict(&vk, &message, &r.new_key_signature) {
        return refuse(
            E::BadSignature,
            "the new key's proof of possession does not verify",
        );
    }
    let mut rec = base_record(state, ctx, req, RecordKind::OwnerKeyRotated);
    rec.new_public_key = key.to_vec();
    let old = std::mem::replace(&mut state.owner_key, key);
    state.retired_keys.push(old);
    Ok(append(state, ctx, rec))
}

pub(super) fn rekey_terminal(
    state: &mut BrandState,
    ctx: &Context,
    req: &Request,
    r: &pb::RekeyTerminal,
) -> Result<Outcome, Refusal> {
    require_owner(ctx)?;
    let Some(store_id) = state.terminals.get(&r.terminal_id).map(|t| t.store_id) else {
        return refuse(E::TerminalNotFound, "no such terminal");
    };
    let key = fresh_key(state, &r.new_public_key)?;
    let mut rec = base_record(state, ctx, req, RecordKind::TerminalRekeyed);
    rec.new_id = r.terminal_id;
    rec.store_id = store_id;
    rec.new_public_key = key.to_vec();
    let terminal = state.terminals.get_mut(&r.terminal_id).expect("checked");
    let old = std::mem::replace(&mut terminal.public_key, key);
    state.retired_keys.push(old);
    Ok(append(state, ctx, rec))
}

pub(super) fn rotate_server_key(
    state: &mut BrandState,
    ctx: &Context,
    req: &Request,
    r: &pb::RotateServerKey,
) -> Result<Outcome, Refusal> {
    if ctx.principal != Principal::Server {
        return refuse(E::WrongRole, "only the server rotates its key");
    }
    let key = fresh_key(state, &r.new_public_key)?;
    let mut rec = base_record(state, ctx, req, RecordKind::ServerKeyRotated);
    rec.new_public_key = key.to_vec();
    let old = std::mem::replace(&mut state.server_key, key);
    state.retired_keys.push(old);
    Ok(append(state, ctx, rec))
}
