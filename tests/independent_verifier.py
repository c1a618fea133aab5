#!/usr/bin/env python3
"""An independent verifier of cardd ledger exports (docs/ledger-format.md).

A second implementation, written from the format document rather than from
the Rust code, using only the Python standard library and the
`cryptography` package (for Ed25519 signature verification). It carries its
own minimal protobuf wire-format reader; no protobuf library is used.

    python3 tests/independent_verifier.py EXPORT_FILE --server-key HEX
                                          [--sample N|all] [--seed S]

Checks, trusting nothing but the server public key given on the command line:
  * the magic bytes, the framing, the header's format string and server key;
  * every record: sequence numbers consecutive from 1, the prev_hash chain,
    the brand id, a canonical protobuf encoding, the signer's key being the
    one enrolled for that signer (server for record 1, owner from record 1's
    CreateBrand, terminals from TERMINAL_ENROLLED records, and each new key
    from the OWNER_KEY_ROTATED, TERMINAL_REKEYED and SERVER_KEY_ROTATED
    records signed by the key it replaces);
  * every record's signed request is an encoding the daemon accepts (the
    acceptance rule of docs/ledger-format.md section 3, as src/wire.rs);
  * every checkpoint: the server's Ed25519 signature over the fixed binary
    layout, and its tree size, head hash and RFC 9162 Merkle root against the
    records read so far;
  * every record covered by the last checkpoint; header and trailer counts;
    the trailer's key list;
  * the request signatures (and that the signed request matches the record)
    of a sample of records: all of them when the export holds at most 2,000
    records, else 500 spread evenly over the file including the first and
    the last (records that enrol keys are always checked);
  * per-card paid, bonus and points balances recomputed from the deltas
    equal the balances written in every record, and money is conserved.

It does NOT re-run the state machine (bonus rules, points multipliers,
tiers, refund and reversal eligibility): `cardd audit verify` does that.

Exit status: 0 when everything verifies (one summary line on stdout), 1 on
the first failure (`FAIL: record N: reason` or `FAIL: reason`), 2 on a usage
error. On stderr, the first line says that a sample of the request
signatures is checked (or, at a terminal, that all are), and a long run
prints its progress every 2 seconds.
"""

import argparse
import hashlib
import random
import sys
import time

try:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
except ImportError:  # pragma: no cover - reported to the user
    sys.stderr.write("independent_verifier.py needs the 'cryptography' package (pip install cryptography)\n")
    sys.exit(2)

MAGIC = b"CARDDEX1"
EXPORT_FORMAT = "cardd.v1 ledger export"
MAX_ITEM_BYTES = 64 * 1024 * 1024
DOMAIN_REQUEST = b"cardd.v1 request\x00"
DOMAIN_CHECKPOINT = b"cardd.v1 checkpoint\x00"
DOMAIN_OWNER_KEY = b"cardd.v1 owner-key\x00"
ZERO_HASH = bytes(32)

# Record kinds.
BRAND_CREATED, STORE_CREATED, TERMINAL_ENROLLED, CARD_ISSUED = 1, 2, 3, 4
CARD_BLOCKED_CHANGED, CARD_REPLACED, RULES_SET, TERMINAL_STATUS_CHANGED = 5, 6, 7, 8
PURCHASE, TOP_UP, REFUND, REVERSAL, POINTS_REDEEMED, SHIFT_CLOSED = 10, 11, 12, 13, 14, 15
KEY_ADDED, KEY_REMOVED = 9, 16
HOLDER_SET, HOLDER_ERASED, PIN_SET, PIN_UNLOCKED, CARD_PIN_LOCKED = 110, 111, 112, 113, 114
# Issue 15: corrections, expiry, key rotation.
CARD_ADJUSTED, TOP_UP_VOIDED, CARD_CLOSED, CARD_EXPIRY_SET = 100, 101, 102, 103
OWNER_KEY_ROTATED, TERMINAL_REKEYED, SERVER_KEY_ROTATED = 104, 105, 106
CORRECTION_KINDS = {CARD_ADJUSTED, TOP_UP_VOIDED, CARD_CLOSED}
ROTATION_KINDS = {OWNER_KEY_ROTATED, TERMINAL_REKEYED, SERVER_KEY_ROTATED}
KIND_NAMES = {
    1: "BRAND_CREATED", 2: "STORE_CREATED", 3: "TERMINAL_ENROLLED", 4: "CARD_ISSUED",
    5: "CARD_BLOCKED_CHANGED", 6: "CARD_REPLACED", 7: "RULES_SET", 8: "TERMINAL_STATUS_CHANGED", 10: "PURCHASE",
    11: "TOP_UP", 12: "REFUND", 13: "REVERSAL", 14: "POINTS_REDEEMED", 15: "SHIFT_CLOSED",
    9: "KEY_ADDED", 16: "KEY_REMOVED",
    110: "HOLDER_SET", 111: "HOLDER_ERASED", 112: "PIN_SET", 113: "PIN_UNLOCKED", 114: "CARD_PIN_LOCKED",
    100: "CARD_ADJUSTED", 101: "TOP_UP_VOIDED", 102: "CARD_CLOSED",
    103: "CARD_EXPIRY_SET", 104: "OWNER_KEY_ROTATED", 105: "TERMINAL_REKEYED", 106: "SERVER_KEY_ROTATED",
}
# Signers.
SIGNER_TERMINAL, SIGNER_OWNER, SIGNER_SERVER = 1, 2, 3

# Request.op field number -> the record kind it must produce.
OP_KIND = {
    11: PURCHASE, 12: TOP_UP, 13: REFUND, 14: REVERSAL, 15: POINTS_REDEEMED, 16: SHIFT_CLOSED,
    30: STORE_CREATED, 31: TERMINAL_ENROLLED, 32: CARD_ISSUED, 33: CARD_BLOCKED_CHANGED,
    34: CARD_REPLACED, 35: RULES_SET, 38: TERMINAL_STATUS_CHANGED, 46: KEY_ADDED, 47: KEY_REMOVED,
    50: BRAND_CREATED, 51: HOLDER_SET, 54: HOLDER_ERASED, 55: PIN_SET, 56: PIN_UNLOCKED,
    39: CARD_ADJUSTED, 40: TOP_UP_VOIDED, 41: CARD_CLOSED, 42: CARD_EXPIRY_SET, 43: OWNER_KEY_ROTATED, 44: TERMINAL_REKEYED, 60: SERVER_KEY_ROTATED,
}
# A till sets a PIN with the cardholder present.
TERMINAL_KINDS = {PURCHASE, TOP_UP, REFUND, REVERSAL, POINTS_REDEEMED, SHIFT_CLOSED, PIN_SET}
# Top-up channels (Record.channel, TopUp.channel): a till sells at STORE
# (absent from its record); the owner's loads name one of the others.
CHANNEL_STORE, CHANNEL_HEAD_OFFICE, CHANNEL_ONLINE, CHANNEL_CORPORATE = 0, 1, 2, 3
OWNER_KINDS = {TOP_UP, STORE_CREATED, TERMINAL_ENROLLED, CARD_ISSUED, CARD_BLOCKED_CHANGED, CARD_REPLACED, RULES_SET,
               TERMINAL_STATUS_CHANGED, KEY_ADDED, KEY_REMOVED, HOLDER_SET, HOLDER_ERASED, PIN_SET, PIN_UNLOCKED,
               CARD_ADJUSTED, TOP_UP_VOIDED, CARD_CLOSED, CARD_EXPIRY_SET, OWNER_KEY_ROTATED,
               TERMINAL_REKEYED}
# Records about a card's holder or PIN: they name the request's card and
# move nothing (the person and the PIN are never in the ledger).
CARD_ONLY_KINDS = {HOLDER_SET, HOLDER_ERASED, PIN_SET, PIN_UNLOCKED, CARD_PIN_LOCKED}


class Fail(Exception):
    """The first verification failure."""

    def __init__(self, what, seq=None):
        super().__init__(what)
        self.what = what
        self.seq = seq

    def line(self):
        if self.seq is not None:
            return "FAIL: record %d: %s" % (self.seq, self.what)
        return "FAIL: %s" % self.what


# ---------------------------------------------------------------------------
# Protobuf wire format (https://protobuf.dev/programming-guides/encoding/).
# ---------------------------------------------------------------------------

VARINT, I64, LEN, I32 = 0, 1, 2, 5


def read_varint(buf, pos):
    """Returns (value, new_pos, minimal) for the varint at buf[pos]."""
    start = pos
    result = 0
    shift = 0
    while True:
        if pos >= len(buf):
            raise Fail("truncated varint")
        b = buf[pos]
        pos += 1
        if shift == 63 and b > 1:
            raise Fail("varint exceeds 64 bits")
        result |= (b & 0x7F) << shift
        if b < 0x80:
            break
        shift += 7
    minimal = pos - start == 1 or buf[pos - 1] != 0
    return result, pos, minimal


def raw_fields(buf):
    """Splits a message into (field, wire_type, value, canonical) tuples.

    value is an int for VARINT/I64/I32 and bytes for LEN. canonical is False
    when the tag or a varint value is not minimally encoded.
    """
    out = []
    pos = 0
    n = len(buf)
    while pos < n:
        tag, pos, tag_ok = read_varint(buf, pos)
        field, wt = tag >> 3, tag & 7
        if field == 0 or field > 0x1FFFFFFF:
            raise Fail("invalid protobuf field number %d" % field)
        if wt == VARINT:
            value, pos, ok = read_varint(buf, pos)
            out.append((field, wt, value, tag_ok and ok))
        elif wt == I64:
            if pos + 8 > n:
                raise Fail("truncated fixed64 field")
            out.append((field, wt, int.from_bytes(buf[pos:pos + 8], "little"), tag_ok))
            pos += 8
        elif wt == I32:
            if pos + 4 > n:
                raise Fail("truncated fixed32 field")
            out.append((field, wt, int.from_bytes(buf[pos:pos + 4], "little"), tag_ok))
            pos += 4
        elif wt == LEN:
            length, pos, ok = read_varint(buf, pos)
            if length > n - pos:
                raise Fail("truncated length-delimited field")
            out.append((field, wt, bytes(buf[pos:pos + length]), tag_ok and ok))
            pos += length
        else:
            raise Fail("unsupported protobuf wire type %d (field %d)" % (wt, field))
    return out


# Field types of the schema below. Scalars are VARINT, the rest LEN.
U64, U32, I64T, ENUM, BOOL = "u64", "u32", "i64", "enum", "bool"
BYTES, STRING = "bytes", "string"
SCALARS = {U64, U32, I64T, ENUM, BOOL}


def to_value(kind, v, strict, field):
    if kind == U64:
        return v
    if kind == U32:
        if v > 0xFFFFFFFF:
            if strict:
                raise Fail("field %d: uint32 value out of range" % field)
            v &= 0xFFFFFFFF  # what protobuf decoders do (truncate)
        return v
    if kind == ENUM:  # int32 on the wire
        v &= 0xFFFFFFFF
        return v - (1 << 32) if v >= 1 << 31 else v
    if kind == I64T:
        return v - (1 << 64) if v >= 1 << 63 else v
    if kind == BOOL:
        return v != 0
    if kind == STRING:
        try:
            return v.decode("utf-8")
        except UnicodeDecodeError:
            raise Fail("field %d: string is not UTF-8" % field)
    return v  # BYTES


def default_of(kind):
    if kind in SCALARS:
        return False if kind == BOOL else 0
    if kind == STRING:
        return ""
    if kind == BYTES:
        return b""
    return None  # messages: absent


class Schema:
    """One protobuf message type: field number -> (name, kind).

    kind is a scalar type name, or ("msg", Schema), or ("repeated", Schema).
    `oneof` lists the field numbers of the message's oneof, if any.
    """

    def __init__(self, name, fields, oneof=()):
        self.name = name
        self.fields = fields
        self.oneof = set(oneof)


def decode(buf, schema, strict=False):
    """Decodes `buf` as `schema` into a dict (name -> value, absent = default).

    Proto3 semantics: the last occurrence of a scalar wins, occurrences of a
    message field are merged (which equals decoding their concatenation), a
    oneof holds its last member, unknown fields are skipped.

    strict: the encoding must be the canonical one a protobuf encoder
    produces (every field at most once and in ascending field order, minimal
    varints, default values omitted, no unknown fields), as the Rust
    verifier's byte-for-byte replay implies for records.
    """
    fields = raw_fields(buf)
    out = {}
    for number, (name, kind) in schema.fields.items():
        out[name] = [] if isinstance(kind, tuple) and kind[0] == "repeated" else default_of(kind)
    msg_parts = {}  # name -> list of payloads to merge
    oneof_case = None  # field number of the oneof member set last
    last_field = 0
    for number, wt, value, canonical in fields:
        spec = schema.fields.get(number)
        if strict:
            if spec is None:
                raise Fail("%s has unknown field %d" % (schema.name, number))
            if number <= last_field:
                raise Fail("%s: field %d repeated or out of order (not a canonical encoding)" % (schema.name, number))
            if not canonical:
                raise Fail("%s: field %d has a non-minimal varint" % (schema.name, number))
            last_field = number
        if spec is None:
            continue
        name, kind = spec
        want = VARINT if kind in SCALARS else LEN
        if wt != want:
            raise Fail("%s: field %d has wire type %d, expected %d" % (schema.name, number, wt, want))
        if number in schema.oneof and oneof_case != number:
            # Switching oneof member: the previous member is cleared.
            if oneof_case is not None:
                prev_name, prev_kind = schema.fields[oneof_case]
                out[prev_name] = default_of(prev_kind) if not isinstance(prev_kind, tuple) else None
                msg_parts.pop(prev_name, None)
            oneof_case = number
        if isinstance(kind, tuple):
            if kind[0] == "repeated":
                out[name].append(decode(value, kind[1], strict))
            else:
                msg_parts.setdefault(name, []).append(value)
        else:
            v = to_value(kind, value, strict, number)
            if strict and v == default_of(kind) and number not in schema.oneof:
                raise Fail("%s: field %d holds its default value (not a canonical encoding)" % (schema.name, number))
            out[name] = v
    for name, parts in msg_parts.items():
        number = next(n for n, (nm, _) in schema.fields.items() if nm == name)
        out[name] = decode(b"".join(parts), schema.fields[number][1][1], strict)
    out["_oneof"] = oneof_case
    return out


# The messages this verifier reads (proto/cardd/v1/cardd.proto).
SHIFT_TOTALS = Schema("ShiftTotals", {
    1: ("purchase_count", U32), 2: ("purchase_minor", I64T), 3: ("top_up_count", U32),
    4: ("top_up_minor", I64T), 5: ("refund_count", U32), 6: ("refund_minor", I64T),
    7: ("reversal_count", U32), 8: ("reversal_minor", I64T), 9: ("redeem_count", U32),
    10: ("redeem_points", I64T),
})
RECORD = Schema("Record", {
    1: ("seq", U64), 2: ("prev_hash", BYTES), 3: ("time_ms", I64T), 4: ("brand_id", U32),
    5: ("store_id", U32), 6: ("terminal_id", U32), 7: ("signer", ENUM), 8: ("operator", STRING),
    9: ("txn_id", U64), 10: ("kind", ENUM), 11: ("card", STRING),
    12: ("paid_in_minor", I64T), 13: ("bonus_in_minor", I64T), 14: ("paid_out_minor", I64T),
    15: ("bonus_out_minor", I64T), 16: ("points_in", I64T), 17: ("points_out", I64T),
    18: ("paid_balance_after_minor", I64T), 19: ("bonus_balance_after_minor", I64T),
    20: ("points_after", I64T), 21: ("tier_after", STRING), 22: ("request", BYTES),
    23: ("request_signature", BYTES), 24: ("signer_public_key", BYTES),
    25: ("original_seq", U64), 26: ("original_txn_id", U64), 27: ("requested_minor", I64T),
    28: ("shift_totals", ("msg", SHIFT_TOTALS)), 29: ("shift_number", U64),
    30: ("shift_balanced", BOOL), 31: ("new_id", U32), 32: ("other_card", STRING),
    33: ("card_status_after", ENUM), 34: ("total_spend_after_minor", I64T),
    35: ("visits_after", U32), 36: ("remaining_minor", I64T), 37: ("channel", ENUM),
    38: ("reference", STRING), 39: ("price_minor", I64T), 40: ("tier_before", STRING),
    41: ("points_value_minor", I64T), 42: ("points_expired", I64T), 43: ("tier_fell", BOOL),
    50: ("expires_ms", I64T), 51: ("reason", STRING), 52: ("new_public_key", BYTES), 60: ("pin_verified", BOOL),
})
CHECKPOINT = Schema("Checkpoint", {
    1: ("brand_id", U32), 2: ("tree_size", U64), 3: ("head_hash", BYTES), 4: ("root_hash", BYTES),
    5: ("time_ms", I64T), 6: ("signature", BYTES),
})
HEADER = Schema("ExportHeader", {
    1: ("format", STRING), 2: ("brand_id", U32), 3: ("server_public_key", BYTES),
    4: ("exported_at_ms", I64T), 5: ("tree_size", U64),
})
SIGNER_KEY = Schema("SignerKey", {
    1: ("signer", ENUM), 2: ("terminal_id", U32), 3: ("store_id", U32), 4: ("public_key", BYTES),
})
TRAILER = Schema("ExportTrailer", {
    1: ("records", U64), 2: ("checkpoints", U64), 3: ("keys", ("repeated", SIGNER_KEY)),
})
# Request operations, every field (the acceptance rule below needs them all).
BONUS_TIER = Schema("BonusTier", {1: ("min_load_minor", I64T), 2: ("fixed_bonus_minor", I64T), 3: ("bonus_bps", U32)})
TIER_RULE = Schema("TierRule", {1: ("name", STRING), 2: ("min_spend_minor", I64T), 3: ("min_visits", U32),
                                4: ("multiplier_milli", U32), 5: ("window_days", U32),
                                6: ("min_day_spend_minor", I64T), 7: ("promotion_line", STRING)})
STORE_REF = Schema("StoreRef", {1: ("store_id", U32)})
CAMPAIGN = Schema("Campaign", {1: ("name", STRING), 2: ("multiplier_milli", U32), 3: ("starts_ms", I64T),
                               4: ("ends_ms", I64T), 5: ("stores", ("repeated", STORE_REF)),
                               6: ("category", STRING)})
POINTS_REDEMPTION = Schema("PointsRedemption", {1: ("points", I64T), 2: ("value_minor", I64T)})
STORE_PROMOTION = Schema("StorePromotion", {1: ("store_id", U32), 2: ("line", STRING)})
RULES = Schema("Rules", {1: ("bonus_tiers", ("repeated", BONUS_TIER)), 2: ("points_per_unit", I64T),
                         3: ("tiers", ("repeated", TIER_RULE)), 4: ("promotion_line", STRING),
                         5: ("time_zone", STRING), 10: ("campaigns", ("repeated", CAMPAIGN)),
                         11: ("points_expire_after_days", U32),
                         12: ("points_redemption", ("msg", POINTS_REDEMPTION)),
                         13: ("store_promotions", ("repeated", STORE_PROMOTION)),
                         20: ("max_balance_named_minor", I64T),
                         21: ("max_balance_anonymous_minor", I64T), 22: ("max_top_up_minor", I64T),
                         23: ("max_daily_spend_minor", I64T), 24: ("card_validity_days", U32),
                         25: ("currency_default_limits", BOOL),
                         26: ("exact_refunds", BOOL),
                         30: ("pin_all_spends", BOOL), 31: ("pin_over_minor", I64T)})
OPS = {
    10: ("inquiry", Schema("Inquiry", {1: ("card", STRING)})),
    11: ("purchase", Schema("Purchase", {1: ("card", STRING), 2: ("amount_minor", I64T), 3: ("allow_partial", BOOL),
                                         4: ("category", STRING), 5: ("points", I64T),
                                         6: ("pin_block", BYTES)})),
    12: ("top_up", Schema("TopUp", {1: ("card", STRING), 2: ("amount_minor", I64T), 3: ("channel", U32),
                                    4: ("reference", STRING), 5: ("no_bonus", BOOL), 6: ("price_minor", I64T)})),
    13: ("refund", Schema("Refund", {1: ("original_seq", U64), 2: ("amount_minor", I64T)})),
    14: ("reversal", Schema("Reversal", {1: ("original_txn_id", U64)})),
    15: ("redeem_points", Schema("RedeemPoints", {1: ("card", STRING), 2: ("points", I64T), 3: ("reward", STRING),
                                                  10: ("pin_block", BYTES)})),
    16: ("close_shift", Schema("CloseShift", {1: ("terminal_totals", ("msg", SHIFT_TOTALS))})),
    17: ("txn_status", Schema("TxnStatus", {1: ("txn_id", U64)})),
    30: ("create_store", Schema("CreateStore", {1: ("name", STRING)})),
    31: ("enroll_terminal", Schema("EnrollTerminal", {1: ("store_id", U32), 2: ("public_key", BYTES),
                                                      3: ("label", STRING)})),
    32: ("issue_card", Schema("IssueCard", {1: ("card", STRING)})),
    33: ("set_card_blocked", Schema("SetCardBlocked", {1: ("card", STRING), 2: ("blocked", BOOL),
                                                       3: ("reason", STRING)})),
    34: ("replace_card", Schema("ReplaceCard", {1: ("old_card", STRING), 2: ("new_card", STRING)})),
    35: ("set_rules", Schema("SetRules", {1: ("rules", ("msg", RULES))})),
    36: ("export_ledger", Schema("ExportLedger", {90: ("after_size", U64)})),
    37: ("consistency_proof", Schema("GetConsistencyProof", {1: ("old_size", U64), 2: ("new_size", U64)})),
    38: ("set_terminal_disabled", Schema("SetTerminalDisabled", {1: ("terminal_id", U32), 2: ("disabled", BOOL),
                                                                 3: ("reason", STRING)})),
    39: ("adjust_card", Schema("AdjustCard", {1: ("card", STRING), 2: ("amount_minor", I64T), 3: ("bonus", BOOL),
                                              4: ("reason", STRING)})),
    40: ("void_top_up", Schema("VoidTopUp", {1: ("original_seq", U64), 2: ("reason", STRING)})),
    41: ("close_card", Schema("CloseCard", {1: ("card", STRING), 2: ("reason", STRING)})),
    42: ("set_card_expiry", Schema("SetCardExpiry", {1: ("card", STRING), 2: ("expires_ms", I64T)})),
    43: ("rotate_owner_key", Schema("RotateOwnerKey", {1: ("new_public_key", BYTES), 2: ("new_key_signature", BYTES)})),
    44: ("rekey_terminal", Schema("RekeyTerminal", {1: ("terminal_id", U32), 2: ("new_public_key", BYTES)})),
    45: ("report", Schema("GetReport", {1: ("kind", STRING), 2: ("from", STRING), 3: ("to", STRING),
                                        4: ("store_id", U32), 5: ("by", STRING), 6: ("idle_days", U32),
                                        7: ("date", STRING), 8: ("cursor", U64), 9: ("status", U32),
                                        10: ("card", STRING), 11: ("end_seq", U64)})),
    46: ("add_key", Schema("AddKey", {1: ("public_key", BYTES), 2: ("role", U32), 3: ("store_id", U32),
                                      4: ("label", STRING)})),
    47: ("remove_key", Schema("RemoveKey", {1: ("public_key", BYTES)})),
    # Read-only (never in a record); listed so the schemas match the proto.
    48: ("web_login", Schema("WebLogin", {})),
    50: ("create_brand", Schema("CreateBrand", {1: ("name", STRING), 2: ("currency", STRING),
                                                3: ("currency_exponent", U32), 4: ("owner_public_key", BYTES)})),
    51: ("set_holder", Schema("SetHolder", {1: ("card", STRING), 2: ("commitment", BYTES)})),
    52: ("holder_data", Schema("HolderData", {1: ("card", STRING), 2: ("name", STRING), 3: ("phone", STRING)})),
    53: ("find_card", Schema("FindCard", {1: ("phone", STRING)})),
    54: ("erase_holder", Schema("EraseHolder", {1: ("card", STRING)})),
    55: ("set_pin", Schema("SetPin", {1: ("card", STRING), 2: ("pin_block", BYTES), 3: ("old_pin_block", BYTES)})),
    56: ("set_pin_lock", Schema("SetPinLock", {1: ("card", STRING), 2: ("locked", BOOL)})),
    60: ("rotate_server_key", Schema("RotateServerKey", {1: ("new_public_key", BYTES)})),
}
_REQ_FIELDS = {1: ("txn_id", U64), 2: ("brand_id", U32), 3: ("operator", STRING),
               4: ("client_time_ms", I64T), 5: ("want_proof", BOOL)}
_REQ_FIELDS.update({n: ("op_%d" % n, ("msg", s)) for n, (_, s) in OPS.items()})
# Proto field names, for the acceptance rule's messages.
FIELD_NAMES = {"Request": {n: name for n, (name, _) in OPS.items()}}
REQUEST = Schema("Request", _REQ_FIELDS, oneof=[n for n in _REQ_FIELDS if n >= 10])


def check_request_encoding(buf, schema=None, path="Request"):
    """The daemon's acceptance rule for signed request bytes (src/wire.rs,
    docs/ledger-format.md section 3), with the daemon's refusal messages.

    Accepted: each known field at most once (a repeated field's elements
    consecutive), in ascending field order, with its declared wire type,
    minimal varints; explicitly encoded default values are fine. Refused:
    unknown fields, a singular field repeated, a second oneof member, wrong
    wire types, bools other than 0/1, uint32 over 2^32-1, invalid UTF-8,
    fields out of order, trailing bytes that do not form a field.
    """
    schema = schema or REQUEST
    names = FIELD_NAMES.get(schema.name, {})
    last, seen, member, pos, n = 0, set(), None, 0, len(buf)
    while pos < n:
        def trailing(problem):
            return Fail("%s: %d trailing bytes after field %d do not form a field (%s)" % (path, n - pos, last, problem))
        try:
            tag, after_tag, minimal = read_varint(buf, pos)
        except Fail:
            raise trailing("not a complete varint tag")
        field, wt = tag >> 3, tag & 7
        if not minimal:
            raise Fail("%s: non-minimal varint in the tag of field %d" % (path, field))
        if field == 0 or field > 0x1FFFFFFF:
            raise trailing("field number out of range")
        spec = schema.fields.get(field)
        if spec is None:
            raise Fail("%s: unknown field %d" % (path, field))
        name, kind = spec
        name = names.get(field, name)
        repeated = isinstance(kind, tuple) and kind[0] == "repeated"
        want = VARINT if kind in SCALARS else LEN
        if wt != want:
            raise Fail("%s: wrong wire type %d for field %d (%s), expected %d" % (path, wt, field, name, want))
        if field in seen and not repeated:
            raise Fail("%s: field %d (%s) repeated" % (path, field, name))
        if field < last:
            raise Fail("%s: field %d (%s) after field %d (fields must be in ascending order)" % (path, field, name, last))
        if field in schema.oneof:
            if member is not None and member != field:
                raise Fail("%s: field %d (%s) is a second member of oneof op (field %d is set)" % (path, field, name, member))
            member = field
        seen.add(field)
        last = field
        pos = check_field_value(buf, after_tag, field, name, kind, path)


def check_field_value(buf, pos, field, name, kind, path):
    """Checks the value of one field at buf[pos]; returns the position after it."""
    def bad(problem):
        return Fail("%s: field %d (%s): %s" % (path, field, name, problem))
    try:
        value, end, minimal = read_varint(buf, pos)
    except Fail:
        raise bad("varint truncated or over 64 bits")
    if not minimal:
        part = "value" if kind in SCALARS else "length"
        raise Fail("%s: non-minimal varint in the %s of field %d" % (path, part, field))
    if kind == U32 and value > 0xFFFFFFFF:
        raise bad("uint32 value over 2^32-1")
    if kind == BOOL and value > 1:
        raise bad("bool value other than 0 or 1")
    if kind in SCALARS:
        return end
    if value > len(buf) - end:
        raise bad("length runs past the end of the message")
    payload = bytes(buf[end:end + value])
    if kind == STRING:
        try:
            payload.decode("utf-8")
        except UnicodeDecodeError:
            raise bad("string is not UTF-8")
    elif isinstance(kind, tuple):
        check_request_encoding(payload, kind[1], "%s.%s" % (path, name))
    return end + value


def decode_request(raw):
    """Returns (request dict, op field number, op dict)."""
    req = decode(raw, REQUEST)
    op = req["_oneof"]
    return req, op, (req["op_%d" % op] if op is not None else None)


# ---------------------------------------------------------------------------
# Ed25519: strict verification.
# ---------------------------------------------------------------------------
# `cryptography` (OpenSSL) checks the signature equation and rejects a
# non-canonical S. The Rust side uses ed25519-dalek's verify_strict, which in
# addition refuses small-order public keys and small-order R: a small-order
# key lets one signature verify for many messages. Those two checks are done
# here with plain integer arithmetic on the curve.

_P = 2 ** 255 - 19
_L = 2 ** 252 + 27742317777372353535851937790883648493
_D = (-121665 * pow(121666, _P - 2, _P)) % _P
_SQRT_M1 = pow(2, (_P - 1) // 4, _P)


def _decompress(s):
    """(x, y) of the point encoded by 32 bytes (RFC 8032 5.1.3, y taken mod p
    as ed25519-dalek does), or None if it is not on the curve."""
    y = (int.from_bytes(s, "little") & ((1 << 255) - 1)) % _P
    u = (y * y - 1) % _P
    v = (_D * y * y + 1) % _P
    v3 = v * v * v % _P
    x = u * v3 * pow(u * v3 * v3 * v, (_P - 5) // 8, _P) % _P
    vxx = v * x * x % _P
    if vxx != u:
        if vxx != (-u) % _P:
            return None
        x = x * _SQRT_M1 % _P
    if x & 1 != s[31] >> 7:
        x = (_P - x) % _P
    return (x, y)


def small_order_or_invalid(encoded):
    """True when the 32 bytes are not a curve point, or a point of order <= 8
    (whose multiple by the cofactor 8 is the identity)."""
    pt = _decompress(encoded)
    if pt is None:
        return True
    # Three doublings in projective coordinates (X:Y:Z), a = -1; no inversions.
    x, y, z = pt[0], pt[1], 1
    for _ in range(3):
        a = x * x % _P
        b = y * y % _P
        c = 2 * z * z % _P
        e = ((x + y) * (x + y) - a - b) % _P
        g = (b - a) % _P
        f = (g - c) % _P
        h = (-a - b) % _P
        x, y, z = e * f % _P, g * h % _P, f * g % _P
    return x == 0 and y == z


_weak_cache = {}


def weak_key(key):
    if key not in _weak_cache:
        _weak_cache[key] = small_order_or_invalid(key)
    return _weak_cache[key]


def verify_strict(key, message, signature):
    """Ed25519 verification with the strictness of ed25519-dalek's verify_strict."""
    if len(key) != 32 or len(signature) != 64:
        return False
    if weak_key(key):
        return False
    if int.from_bytes(signature[32:], "little") >= _L:
        return False
    if small_order_or_invalid(signature[:32]):
        return False
    try:
        Ed25519PublicKey.from_public_bytes(key).verify(signature, message)
        return True
    except (InvalidSignature, ValueError):
        return False


# ---------------------------------------------------------------------------
# Hashes and the RFC 9162 Merkle tree.
# ---------------------------------------------------------------------------

def leaf_hash(data):
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left, right):
    return hashlib.sha256(b"\x01" + left + right).digest()


class MerkleFrontier:
    """The roots of the perfect subtrees covering the leaves so far.

    Leaves 0..n-1 split into perfect subtrees of sizes given by the binary
    digits of n, largest (leftmost) first. Appending a leaf merges equal-sized
    neighbours like a binary carry. The RFC 9162 tree head folds them from the
    right: MTH = H(1 || s0 || H(1 || s1 || ... s_k)), which equals the RFC's
    recursive split at the largest power of two smaller than n.
    """

    def __init__(self):
        self.size = 0
        self.stack = []  # (height, hash)

    def push(self, leaf):
        node, height = leaf, 0
        while self.stack and self.stack[-1][0] == height:
            _, left = self.stack.pop()
            node = node_hash(left, node)
            height += 1
        self.stack.append((height, node))
        self.size += 1

    def root(self):
        if not self.stack:
            return hashlib.sha256(b"").digest()
        acc = self.stack[-1][1]
        for _, left in reversed(self.stack[:-1]):
            acc = node_hash(left, acc)
        return acc


def checkpoint_message(c):
    """The exact bytes the server signs for a checkpoint."""
    return (DOMAIN_CHECKPOINT
            + c["brand_id"].to_bytes(4, "big")
            + c["tree_size"].to_bytes(8, "big")
            + c["head_hash"]
            + c["root_hash"]
            + (c["time_ms"] & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "big"))


# ---------------------------------------------------------------------------
# The verifier.
# ---------------------------------------------------------------------------

def sample_positions(total, n, seed):
    """The sequence numbers whose request signatures are checked."""
    if n is None:
        n = total if total <= 2000 else 500
    if n >= total:
        return None  # all of them
    n = max(n, 2)
    if seed is not None:
        rng = random.Random(seed)
        chosen = set(rng.sample(range(2, total), n - 2)) if total > 2 else set()
        return chosen | {1, total}
    return {1 + (i * (total - 1)) // (n - 1) for i in range(n)}


def say_scope(total, sample):
    """The first line on stderr: whether every request signature is checked
    or a sample, so that nobody takes a sample for the whole. A sample is
    always announced; a full check only to a person at a terminal (a script
    reads the summary line, which counts the signatures verified)."""
    if sample is None:
        if not sys.stderr.isatty():
            return
        line = "checking all %d records' request signatures" % total
    else:
        line = ("checking a SAMPLE of %d of %d records' request signatures, and every key enrolment "
                "(every link, checkpoint and balance is checked; --sample all checks every signature)"
                % (len(sample), total))
    print(line, file=sys.stderr, flush=True)


class Progress:
    """A line on stderr every few seconds on a long run (none on a short one)."""

    EVERY_SECONDS = 2.0

    def __init__(self, total):
        self.total = max(total, 1)
        self.next_at = time.monotonic() + self.EVERY_SECONDS

    def tick(self, done):
        if done % 1000 or time.monotonic() < self.next_at:
            return
        self.next_at = time.monotonic() + self.EVERY_SECONDS
        print("progress: %d/%d records (%d%%)" % (done, self.total, done * 100 // self.total),
              file=sys.stderr, flush=True)


class Verifier:
    def __init__(self, server_key, sample, seed):
        self.trusted_key = server_key  # the first server key: the trust anchor
        self.server_key = server_key  # the key in force (SERVER_KEY_ROTATED moves it)
        self.keys_ever = []  # (signer, terminal id, store id, key): what the trailer lists
        self.sample_n = sample
        self.seed = seed
        self.sample = None
        self.brand_id = None
        self.seq = 0
        self.head = ZERO_HASH
        self.tree = MerkleFrontier()
        self.last_time = None
        self.checkpoints = 0
        self.covered = 0
        self.owner_key = None
        self.terminals = {}  # terminal id -> (store id, key)
        self.disabled = set()  # terminal ids revoked by the owner
        self.cards = {}  # card number -> [paid, bonus, points]
        self.signatures = 0
        self.flows = {"loaded": 0, "bonus": 0, "spent": 0, "refunded": 0, "reversed": 0, "corrected": 0}

    # -- file -------------------------------------------------------------

    def items(self, f):
        if f.read(8) != MAGIC:
            raise Fail("not a cardd export (bad magic bytes)")
        while True:
            head = f.read(4)
            if not head:
                return
            if len(head) < 4:
                raise Fail("export file is truncated (partial length prefix)", self.seq + 1)
            length = int.from_bytes(head, "big")
            if length > MAX_ITEM_BYTES:
                raise Fail("export item of %d bytes exceeds the limit" % length, self.seq + 1)
            body = f.read(length)
            if len(body) < length:
                raise Fail("export file is truncated", self.seq + 1)
            fields = [x for x in raw_fields(body) if 1 <= x[0] <= 4]
            if len(fields) != 1:
                raise Fail("an export item must hold exactly one of header, record, checkpoint, trailer", self.seq + 1)
            number, wt, value, _ = fields[0]
            if wt != LEN:
                raise Fail("export item field %d has wire type %d" % (number, wt), self.seq + 1)
            yield number, value

    def run(self, f):
        items = self.items(f)
        first = next(items, None)
        if first is None or first[0] != 1:
            raise Fail("export does not start with a header")
        header = decode(first[1], HEADER)
        if header["format"] != EXPORT_FORMAT:
            raise Fail("unknown export format %r" % header["format"])
        if header["server_public_key"] != self.trusted_key:
            raise Fail("the export names a different server key than the one trusted")
        self.brand_id = header["brand_id"]
        self.sample = sample_positions(header["tree_size"], self.sample_n, self.seed)
        say_scope(header["tree_size"], self.sample)
        progress = Progress(header["tree_size"])
        trailer = None
        for number, value in items:
            if trailer is not None:
                raise Fail("data after the trailer")
            if number == 1:
                raise Fail("a second header", self.seq + 1)
            elif number == 2:
                self.record(value)
                progress.tick(self.seq)
            elif number == 3:
                self.checkpoint(decode(value, CHECKPOINT))
            else:
                trailer = decode(value, TRAILER)
        if trailer is None:
            raise Fail("export ends without a trailer (truncated?)", self.seq + 1)
        if self.seq == 0:
            raise Fail("the export holds no records")
        if self.covered != self.seq:
            raise Fail("not covered by any signed checkpoint", self.covered + 1)
        if header["tree_size"] != self.seq:
            raise Fail("header says %d records, the file holds %d" % (header["tree_size"], self.seq))
        if trailer["records"] != self.seq or trailer["checkpoints"] != self.checkpoints:
            raise Fail("trailer counts (%d records, %d checkpoints) differ from the file (%d, %d)"
                       % (trailer["records"], trailer["checkpoints"], self.seq, self.checkpoints))
        self.check_trailer_keys(trailer)
        paid = sum(c[0] for c in self.cards.values())
        bonus = sum(c[1] for c in self.cards.values())
        fl = self.flows
        net = fl["loaded"] + fl["bonus"] - fl["spent"] + fl["refunded"] + fl["reversed"] + fl["corrected"]
        if net != paid + bonus:
            raise Fail("money is not conserved: flows net %d, cards hold %d" % (net, paid + bonus))
        return ("OK: brand %d: %d records, %d checkpoints, %d request signatures verified, %d terminals, "
                "%d cards, outstanding paid %d bonus %d (minor units), root %s"
                % (self.brand_id, self.seq, self.checkpoints, self.signatures, len(self.terminals),
                   len(self.cards), paid, bonus, self.tree.root().hex()))

    # -- records ----------------------------------------------------------

    def record(self, raw):
        seq = self.seq + 1

        def fail(what):
            raise Fail(what, seq)

        try:
            rec = decode(raw, RECORD, strict=True)
        except Fail as e:
            fail("does not decode: %s" % e.what)
        if rec["seq"] != seq:
            fail("holds sequence number %d (a record is missing, duplicated or out of order)" % rec["seq"])
        if rec["prev_hash"] != self.head:
            fail("prev_hash is not the hash of the record before it")
        if rec["brand_id"] != self.brand_id:
            fail("names brand %d, the export is brand %d" % (rec["brand_id"], self.brand_id))
        if self.last_time is not None and rec["time_ms"] < self.last_time:
            fail("time goes backwards")
        self.last_time = rec["time_ms"]
        kind, signer, key = rec["kind"], rec["signer"], rec["signer_public_key"]
        if len(key) != 32:
            fail("signer key is not 32 bytes")

        # The key must be the one enrolled for the signer at this point.
        if seq == 1:
            if kind != BRAND_CREATED or signer != SIGNER_SERVER:
                fail("the first record must be BRAND_CREATED, signed by the server")
        elif kind == BRAND_CREATED:
            fail("only the first record is a BRAND_CREATED")
        elif (signer == SIGNER_SERVER) != (kind in (SERVER_KEY_ROTATED, CARD_PIN_LOCKED)):
            fail("after the first record the server signs SERVER_KEY_ROTATED and CARD_PIN_LOCKED records and nothing else")
        if signer == SIGNER_SERVER:
            enrolled = self.server_key
        elif signer == SIGNER_OWNER:
            if rec["terminal_id"] != 0:
                fail("an owner record names terminal %d" % rec["terminal_id"])
            if kind not in OWNER_KINDS:
                fail("kind %s is not an owner operation" % KIND_NAMES.get(kind, kind))
            enrolled = self.owner_key
        elif signer == SIGNER_TERMINAL:
            t = self.terminals.get(rec["terminal_id"])
            if t is None:
                fail("terminal %d is not enrolled" % rec["terminal_id"])
            if rec["terminal_id"] in self.disabled:
                fail("terminal %d signed while disabled by the owner" % rec["terminal_id"])
            if kind not in TERMINAL_KINDS:
                fail("kind %s is not a terminal operation" % KIND_NAMES.get(kind, kind))
            if rec["store_id"] != t[0]:
                fail("terminal %d belongs to store %d, the record says %d" % (rec["terminal_id"], t[0], rec["store_id"]))
            enrolled = t[1]
        else:
            fail("has no valid signer (%d)" % signer)
        if key != enrolled:
            fail("the signer's key is not the key enrolled for that signer")
        # Every request, sampled or not: the daemon's acceptance rule, which
        # `cardd audit verify` applies to every record it replays.
        try:
            check_request_encoding(rec["request"])
        except Fail as e:
            fail("request refused: %s" % e.what)

        # The signed request: always for records that enrol a key, and for
        # the sample.
        if (self.sample is None or seq in self.sample
                or kind in (BRAND_CREATED, TERMINAL_ENROLLED, TERMINAL_STATUS_CHANGED) or kind in ROTATION_KINDS):
            if not verify_strict(key, DOMAIN_REQUEST + rec["request"], rec["request_signature"]):
                fail("request signature does not verify")
            self.signatures += 1
            try:
                req, op, body = decode_request(rec["request"])
            except Fail as e:
                fail("request does not decode: %s" % e.what)
            self.check_request(rec, req, op, body, fail)
            if kind == BRAND_CREATED:
                owner = body["owner_public_key"]
                if len(owner) != 32 or weak_key(owner):
                    fail("the owner key is not a valid ed25519 public key")
                self.owner_key = owner
                self.keys_ever += [(SIGNER_SERVER, 0, 0, key), (SIGNER_OWNER, 0, 0, owner)]
            elif kind in ROTATION_KINDS:
                self.rotate(rec, kind, body, fail)
            elif kind == TERMINAL_ENROLLED:
                tid, tkey = rec["new_id"], body["public_key"]
                if tid == 0 or tid in self.terminals:
                    fail("enrols terminal id %d, which is zero or already used" % tid)
                if len(tkey) != 32 or weak_key(tkey):
                    fail("the terminal key is not a valid ed25519 public key")
                if tkey == self.owner_key or any(tkey == k for _, k in self.terminals.values()):
                    fail("the terminal key is already enrolled")
                self.terminals[tid] = (body["store_id"], tkey)
                self.keys_ever.append((SIGNER_TERMINAL, tid, body["store_id"], tkey))

        self.money(rec, kind, fail)
        h = leaf_hash(raw)
        self.tree.push(h)
        self.head = h
        self.seq = seq

    def key_used(self, key):
        return any(k == key for _, _, _, k in self.keys_ever)

    def rotate(self, rec, kind, body, fail):
        """A key rotation: the new key signs from the next record on."""
        new = rec["new_public_key"]
        if new != body["new_public_key"]:
            fail("the rotation's new key differs from the signed request")
        if len(new) != 32 or weak_key(new):
            fail("the new key is not a valid ed25519 public key")
        if self.key_used(new):
            fail("the new key was already used in this chain")
        if kind == OWNER_KEY_ROTATED:
            proof = DOMAIN_OWNER_KEY + self.brand_id.to_bytes(4, "big") + new
            if not verify_strict(new, proof, body["new_key_signature"]):
                fail("the new owner key's proof of possession does not verify")
            self.owner_key = new
            self.keys_ever.append((SIGNER_OWNER, 0, 0, new))
        elif kind == SERVER_KEY_ROTATED:
            self.server_key = new
            self.keys_ever.append((SIGNER_SERVER, 0, 0, new))
        else:
            tid = body["terminal_id"]
            if tid != rec["new_id"] or tid not in self.terminals:
                fail("re-keys terminal %d, which differs from the request or is not enrolled" % tid)
            store = self.terminals[tid][0]
            if rec["store_id"] != store:
                fail("terminal %d belongs to store %d, the record says %d" % (tid, store, rec["store_id"]))
            self.terminals[tid] = (store, new)
            self.keys_ever.append((SIGNER_TERMINAL, tid, store, new))

    def check_request(self, rec, req, op, body, fail):
        """The record must say what the signed request asked."""
        if op not in OP_KIND:
            fail("the signed request has no state-changing operation")
        # set_pin_lock: the server's lock, or the owner's unlock.
        expected = CARD_PIN_LOCKED if op == 56 and body["locked"] else OP_KIND[op]
        if expected != rec["kind"]:
            fail("the signed request is %s, the record is %s"
                 % (OPS[op][0], KIND_NAMES.get(rec["kind"], rec["kind"])))
        if req["brand_id"] != self.brand_id:
            fail("the signed request names brand %d" % req["brand_id"])
        # The server's lock keeps no transaction id; every other request has one.
        if req["txn_id"] != rec["txn_id"] or (req["txn_id"] == 0) != (rec["kind"] == CARD_PIN_LOCKED):
            fail("the record's txn_id differs from the signed request's")
        if req["operator"] != rec["operator"]:
            fail("the record's operator differs from the signed request's")
        kind = rec["kind"]
        moved = rec["paid_out_minor"] + rec["bonus_out_minor"]
        if kind == PURCHASE:
            if body["card"] != rec["card"] or body["amount_minor"] != rec["requested_minor"]:
                fail("the purchase's card or amount differs from the signed request")
            # Points may pay part of the bill (a discount funded by the
            # brand, not card value): the card's value and the points'
            # value together cover it, or less with allow_partial.
            covered = moved + rec["points_value_minor"]
            if covered > body["amount_minor"] or (not body["allow_partial"] and covered != body["amount_minor"]):
                fail("took %d for a bill of %d" % (covered, body["amount_minor"]))
            if body["points"] != rec["points_out"] or (rec["points_out"] == 0) != (rec["points_value_minor"] == 0):
                fail("the points spent differ from the signed request")
        elif kind == TOP_UP:
            if body["card"] != rec["card"] or body["amount_minor"] != rec["paid_in_minor"]:
                fail("the top-up's card or amount differs from the signed request")
            if body["channel"] != rec["channel"] or body["reference"] != rec["reference"]:
                fail("the top-up's channel or reference differs from the signed request")
            by_owner = rec["signer"] == SIGNER_OWNER
            if by_owner != (rec["channel"] != CHANNEL_STORE) or rec["channel"] > CHANNEL_CORPORATE:
                fail("channel %d is not the signer's" % rec["channel"])
            if by_owner and rec["store_id"] != 0:
                fail("an owner's top-up names store %d (the head office is store 0)" % rec["store_id"])
            if body["no_bonus"] and rec["bonus_in_minor"]:
                fail("bonus granted on a load signed without bonus")
            price = body["price_minor"] if body["price_minor"] != body["amount_minor"] else 0
            if price != rec["price_minor"] or not 0 <= price < max(rec["paid_in_minor"], 1):
                fail("the top-up's price differs from the signed request or is not below face value")
        elif kind == REFUND:
            if (body["original_seq"] != rec["original_seq"]
                    or body["amount_minor"] != rec["paid_in_minor"] + rec["bonus_in_minor"] + rec["points_value_minor"]):
                fail("the refund's original or amount differs from the signed request")
            if rec["original_seq"] >= rec["seq"]:
                fail("refunds a later record")
        elif kind == REVERSAL:
            if body["original_txn_id"] != rec["original_txn_id"]:
                fail("the reversal's original differs from the signed request")
            if rec["original_seq"] >= rec["seq"]:
                fail("reverses a later record")
        elif kind == POINTS_REDEEMED:
            if body["card"] != rec["card"] or body["points"] != rec["points_out"]:
                fail("the redemption's card or points differ from the signed request")
        elif kind == TERMINAL_ENROLLED:
            if body["store_id"] != rec["store_id"]:
                fail("the enrolment's store differs from the signed request")
        elif kind == TERMINAL_STATUS_CHANGED:
            if body["terminal_id"] != rec["new_id"] or body["terminal_id"] not in self.terminals:
                fail("the terminal named differs from the signed request or is not enrolled")
            if body["disabled"]:
                self.disabled.add(body["terminal_id"])
            else:
                self.disabled.discard(body["terminal_id"])
        elif kind in (CARD_ISSUED, CARD_BLOCKED_CHANGED):
            if body["card"] != rec["card"]:
                fail("the card differs from the signed request")
        elif kind == CARD_REPLACED:
            if body["new_card"] != rec["card"] or body["old_card"] != rec["other_card"]:
                fail("the replacement's cards differ from the signed request")
        elif kind in CARD_ONLY_KINDS:
            if body["card"] != rec["card"]:
                fail("the card differs from the signed request")
            if kind == HOLDER_SET and len(body["commitment"]) != 32:
                fail("the holder commitment is not 32 bytes")
            if kind == PIN_SET and not body["pin_block"]:
                fail("a PIN set without a sealed PIN")
        elif kind in CORRECTION_KINDS or kind == CARD_EXPIRY_SET:
            self.check_correction(rec, kind, body, fail)

        # The server's PIN verdict needs a PIN typed for this request.
        if rec["pin_verified"]:
            typed = body.get("old_pin_block") if kind == PIN_SET else body.get("pin_block")
            if kind not in (PURCHASE, POINTS_REDEEMED, PIN_SET) or not typed:
                fail("pin_verified on a record whose request typed no PIN")

    def check_correction(self, rec, kind, body, fail):
        """Issue 15's owner corrections say what the signed request asked."""
        if kind != TOP_UP_VOIDED and body["card"] != rec["card"]:
            fail("the card differs from the signed request")
        if kind != CARD_EXPIRY_SET and (body["reason"] != rec["reason"] or not body["reason"].strip()):
            fail("the reason differs from the signed request or is empty")
        if kind == CARD_ADJUSTED:
            amount, bonus = body["amount_minor"], body["bonus"]
            ins = [0, abs(amount)] if bonus else [abs(amount), 0]
            want = (ins + [0, 0]) if amount > 0 else ([0, 0] + ins)
            got = [rec["paid_in_minor"], rec["bonus_in_minor"], rec["paid_out_minor"], rec["bonus_out_minor"]]
            if amount == 0 or got != want:
                fail("the adjustment moves %s, the signed request asked %d%s" % (got, amount, " bonus" if bonus else ""))
        elif kind == TOP_UP_VOIDED:
            if body["original_seq"] != rec["original_seq"] or rec["original_seq"] >= rec["seq"]:
                fail("the void's original differs from the signed request or is not earlier")
        elif kind == CARD_EXPIRY_SET:
            if body["expires_ms"] != rec["expires_ms"]:
                fail("the expiry differs from the signed request")

    def money(self, rec, kind, fail):
        """Per-card balances recomputed from the deltas."""
        d = [rec[k] for k in ("paid_in_minor", "bonus_in_minor", "paid_out_minor", "bonus_out_minor",
                              "points_in", "points_out")]
        if any(v < 0 for v in d) or rec["points_expired"] < 0 or rec["points_value_minor"] < 0:
            fail("a negative delta")
        # Points that expired at this record leave the card before its own change.
        expired = rec["points_expired"]
        paid_in, bonus_in, paid_out, bonus_out, points_in, points_out = d
        card = rec["card"]
        if not card:
            if any(d) or expired or rec["other_card"]:
                fail("moves value without naming a card")
            return
        if kind == CARD_ISSUED:
            if card in self.cards:
                fail("issues card %s twice" % card)
            if any(d):
                fail("a new card with value")
            after = [0, 0, 0]
        elif kind == CARD_REPLACED:
            old = rec["other_card"]
            if old not in self.cards or old == card:
                fail("replaces card %s, which was never issued" % old)
            if card in self.cards:
                fail("the new card %s already exists" % card)
            if [paid_in, bonus_in, points_in] != self.cards[old] or paid_out or bonus_out or points_out:
                fail("the replacement does not move the old card's whole value")
            self.cards[old] = [0, 0, 0]
            after = [paid_in, bonus_in, points_in]
        else:
            if card not in self.cards:
                fail("card %s was never issued" % card)
            b = self.cards[card]
            after = [b[0] + paid_in - paid_out, b[1] + bonus_in - bonus_out,
                     b[2] + points_in - points_out - expired]
        written = [rec["paid_balance_after_minor"], rec["bonus_balance_after_minor"], rec["points_after"]]
        if after != written:
            fail("card %s: balances after (paid, bonus, points) are %s, the deltas give %s" % (card, written, after))
        if any(v < 0 for v in after):
            fail("card %s: a negative balance" % card)
        self.cards[card] = after
        fl = self.flows
        if kind == TOP_UP:
            fl["loaded"] += paid_in
            fl["bonus"] += bonus_in
        elif kind == PURCHASE:
            fl["spent"] += paid_out + bonus_out
        elif kind == REFUND:
            fl["refunded"] += paid_in + bonus_in
        elif kind == REVERSAL:
            fl["reversed"] += paid_in + bonus_in - paid_out - bonus_out
        elif kind in CORRECTION_KINDS:
            fl["corrected"] += paid_in + bonus_in - paid_out - bonus_out
            if kind == CARD_CLOSED and after != [0, 0, 0]:
                fail("card %s is closed with value left on it" % card)

    # -- checkpoints and trailer -------------------------------------------

    def checkpoint(self, c):
        seq = self.seq

        def fail(what):
            raise Fail("checkpoint at tree size %d: %s" % (c["tree_size"], what), seq if seq else None)

        if len(c["head_hash"]) != 32 or len(c["root_hash"]) != 32:
            fail("hashes are not 32 bytes")
        if not verify_strict(self.server_key, checkpoint_message(c), c["signature"]):
            fail("bad server signature")
        if c["brand_id"] != self.brand_id:
            fail("names brand %d" % c["brand_id"])
        if c["tree_size"] != self.seq:
            fail("placed after record %d" % self.seq)
        if c["head_hash"] != self.head:
            fail("head hash differs from the last record's hash")
        if c["root_hash"] != self.tree.root():
            fail("Merkle root differs from the records' tree")
        self.checkpoints += 1
        self.covered = c["tree_size"]

    def check_trailer_keys(self, trailer):
        expected = self.keys_ever
        listed = [(k["signer"], k["terminal_id"], k["store_id"], k["public_key"]) for k in trailer["keys"]]
        if sorted(expected) != sorted(listed):
            raise Fail("the trailer's key list differs from the keys the chain enrolled")


def main(argv=None):
    ap = argparse.ArgumentParser(description="Independent verifier of cardd ledger exports.")
    ap.add_argument("export", help="the export file (cardd audit export)")
    ap.add_argument("--server-key", required=True, help="the server's ed25519 public key, hex (the trust anchor)")
    ap.add_argument("--sample", default=None,
                    help="request signatures to check: a count, or 'all' (default: all up to 2000 records, else 500)")
    ap.add_argument("--seed", default=None,
                    help="pick the sample at random from this seed instead of evenly spread")
    args = ap.parse_args(argv)
    try:
        server_key = bytes.fromhex(args.server_key.strip())
    except ValueError:
        ap.error("--server-key is not hex")
    if len(server_key) != 32 or weak_key(server_key):
        ap.error("--server-key is not a valid 32-byte ed25519 public key")
    if args.sample is None or args.sample == "all":
        sample = None if args.sample is None else float("inf")
    else:
        try:
            sample = int(args.sample)
        except ValueError:
            ap.error("--sample takes a number or 'all'")
        if sample < 0:
            ap.error("--sample must not be negative")
    try:
        f = open(args.export, "rb")
    except OSError as e:
        ap.error("cannot open %s: %s" % (args.export, e))
    verifier = Verifier(server_key, sample, args.seed)
    try:
        with f:
            summary = verifier.run(f)
    except Fail as e:
        print(e.line())
        return 1
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
