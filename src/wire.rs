//! Which encodings of a `Request` the daemon and the auditors accept, and why.
//!
//! The ledger keeps the exact signed request bytes, so what matters is that
//! every conformant protobuf parser (the daemon, `cardd audit verify`, the
//! independent Python verifier, any auditor's own) reads one meaning from
//! them, and that no bytes ride along unread. The rule, checked field by
//! field against the schema below (recursively for nested messages):
//!
//! * accepted: each known field at most once, in ascending field-number
//!   order, with its declared wire type; **explicitly encoded default values**
//!   (`0`, `false`, `""`) of singular scalar fields are accepted, because
//!   every conformant parser reads them exactly as if they were absent and
//!   mainstream libraries (protobufjs 7, some C encoders) emit them;
//! * refused: unknown fields (bytes no parser of this schema reads), a
//!   singular field repeated or two members of the `op` oneof (parsers keep
//!   the last, a human reading the bytes may stop at the first), wrong wire
//!   types, non-minimal varints, bools other than 0/1 and `uint32` values
//!   over 2^32-1 (no mainstream encoder emits them, and each would give one
//!   request several encodings for nothing), fields out of order (no
//!   mainstream encoder emits them for this schema), and trailing bytes that
//!   do not form a field.
//!
//! Each refusal names the message path, the field and the problem, so a till
//! vendor can fix an encoder from the `MALFORMED` message alone.
use prost::encoding::{decode_varint, WireType};
use prost::Message;

use crate::error::Refusal;
use crate::pb::{ErrorCode, Request};

/// Why request bytes are refused. `path` is the message holding the bad
/// field, e.g. `Request` or `Request.purchase`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// A field number the schema does not define.
    #[error("{path}: unknown field {field}")]
    UnknownField {
        /// The message.
        path: String,
        /// The field number.
        field: u32,
    },
    /// A singular field encoded more than once.
    #[error("{path}: field {field} ({name}) repeated")]
    Repeated {
        /// The message.
        path: String,
        /// The field number.
        field: u32,
        /// The field's name in the proto.
        name: &'static str,
    },
    /// A second member of a oneof.
    #[error(
        "{path}: field {field} ({name}) is a second member of oneof op (field {first} is set)"
    )]
    SecondOneofMember {
        /// The message.
        path: String,
        /// The second member's field number.
        field: u32,
        /// Its name.
        name: &'static str,
        /// The member seen first.
        first: u32,
    },
    /// A field encoded with another wire type than its declared one.
    #[error("{path}: wrong wire type {got} for field {field} ({name}), expected {want}")]
    WrongWireType {
        /// The message.
        path: String,
        /// The field number.
        field: u32,
        /// Its name.
        name: &'static str,
        /// The wire type found.
        got: u8,
        /// The declared wire type.
        want: u8,
    },
    /// A field after one with a higher number.
    #[error(
        "{path}: field {field} ({name}) after field {after} (fields must be in ascending order)"
    )]
    OutOfOrder {
        /// The message.
        path: String,
        /// The field number.
        field: u32,
        /// Its name.
        name: &'static str,
        /// The field before it.
        after: u32,
    },
    /// A varint (tag, length or value) longer than needed.
    #[error("{path}: non-minimal varint in the {part} of field {field}")]
    NonMinimalVarint {
        /// The message.
        path: String,
        /// The field number (0 if the tag itself could not be read).
        field: u32,
        /// `tag`, `length` or `value`.
        part: &'static str,
    },
    /// A value no conformant encoder of the field's type produces.
    #[error("{path}: field {field} ({name}): {problem}")]
    BadValue {
        /// The message.
        path: String,
        /// The field number.
        field: u32,
        /// Its name.
        name: &'static str,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// Bytes at the end that do not form a complete field.
    #[error("{path}: {len} trailing bytes after field {after} do not form a field ({problem})")]
    Trailing {
        /// The message.
        path: String,
        /// The last complete field (0 if none).
        after: u32,
        /// How many bytes are left.
        len: usize,
        /// Why they are not a field.
        problem: &'static str,
    },
    /// The bytes pass the rule but prost refuses them (a schema table out of
    /// step with the proto; a test guards against it).
    #[error("request does not decode: {0}")]
    Decode(String),
}

impl From<WireError> for Refusal {
    fn from(e: WireError) -> Self {
        Refusal::new(ErrorCode::Malformed, format!("request refused: {e}"))
    }
}

/// Checks `bytes` against the acceptance rule, then decodes them.
pub fn decode_request(bytes: &[u8]) -> Result<Request, WireError> {
    check(bytes, &REQUEST, "Request")?;
    Request::decode(bytes).map_err(|e| WireError::Decode(e.to_string()))
}

/// The declared type of a field, as far as the rule cares.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// int64, uint64: any minimal varint.
    Int,
    /// uint32: a minimal varint up to 2^32-1.
    U32,
    /// bool: 0 or 1.
    Bool,
    /// string: UTF-8.
    Str,
    /// bytes.
    Bytes,
    /// A nested message, checked by the same rule.
    Msg(&'static Schema),
}

/// One field of a message.
#[derive(Debug)]
struct Field {
    number: u32,
    name: &'static str,
    kind: Kind,
    repeated: bool,
}

/// One message type: its fields in ascending order and its oneof members.
#[derive(Debug)]
struct Schema {
    fields: &'static [Field],
    /// Field numbers in the message's only oneof (`Request.op`), if any.
    oneof: &'static [u32],
}

const fn f(number: u32, name: &'static str, kind: Kind) -> Field {
    Field {
        number,
        name,
        kind,
        repeated: false,
    }
}

const fn rep(number: u32, name: &'static str, kind: Kind) -> Field {
    Field {
        number,
        name,
        kind,
        repeated: true,
    }
}

const fn msg(fields: &'static [Field]) -> Schema {
    Schema { fields, oneof: &[] }
}

use Kind::{Bool, Bytes, Int, Msg, Str, U32};

const CARD_ONLY: Schema = msg(&[f(1, "card", Str)]);
const PURCHASE: Schema = msg(&[
    f(1, "card", Str),
    f(2, "amount_minor", Int),
    f(3, "allow_partial", Bool),
    f(4, "category", Str),
    f(5, "points", Int),
    f(6, "pin_block", Bytes),
]);
const TOP_UP: Schema = msg(&[
    f(1, "card", Str),
    f(2, "amount_minor", Int),
    f(3, "channel", U32),
    f(4, "reference", Str),
    f(5, "no_bonus", Bool),
    f(6, "price_minor", Int),
]);
const REFUND: Schema = msg(&[f(1, "original_seq", Int), f(2, "amount_minor", Int)]);
const REVERSAL: Schema = msg(&[f(1, "original_txn_id", Int)]);
const REDEEM_POINTS: Schema = msg(&[
    f(1, "card", Str),
    f(2, "points", Int),
    f(3, "reward", Str),
    f(10, "pin_block", Bytes),
]);
const SHIFT_TOTALS: Schema = msg(&[
    f(1, "purchase_count", U32),
    f(2, "purchase_minor", Int),
    f(3, "top_up_count", U32),
    f(4, "top_up_minor", Int),
    f(5, "refund_count", U32),
    f(6, "refund_minor", Int),
    f(7, "reversal_count", U32),
    f(8, "reversal_minor", Int),
    f(9, "redeem_count", U32),
    f(10, "redeem_points", Int),
]);
const CLOSE_SHIFT: Schema = msg(&[f(1, "terminal_totals", Msg(&SHIFT_TOTALS))]);
const TXN_STATUS: Schema = msg(&[f(1, "txn_id", Int)]);
const CREATE_STORE: Schema = msg(&[f(1, "name", Str)]);
const ENROLL_TERMINAL: Schema = msg(&[
    f(1, "store_id", U32),
    f(2, "public_key", Bytes),
    f(3, "label", Str),
]);
const SET_CARD_BLOCKED: Schema = msg(&[
    f(1, "card", Str),
    f(2, "blocked", Bool),
    f(3, "reason", Str),
]);
const REPLACE_CARD: Schema = msg(&[f(1, "old_card", Str), f(2, "new_card", Str)]);
const BONUS_TIER: Schema = msg(&[
    f(1, "min_load_minor", Int),
    f(2, "fixed_bonus_minor", Int),
    f(3, "bonus_bps", U32),
]);
const TIER_RULE: Schema = msg(&[
    f(1, "name", Str),
    f(2, "min_spend_minor", Int),
    f(3, "min_visits", U32),
    f(4, "multiplier_milli", U32),
    f(5, "window_days", U32),
    f(6, "min_day_spend_minor", Int),
    f(7, "promotion_line", Str),
]);
const STORE_REF: Schema = msg(&[f(1, "store_id", U32)]);
const CAMPAIGN: Schema = msg(&[
    f(1, "name", Str),
    f(2, "multiplier_milli", U32),
    f(3, "starts_ms", Int),
    f(4, "ends_ms", Int),
    rep(5, "stores", Msg(&STORE_REF)),
    f(6, "category", Str),
]);
const POINTS_REDEMPTION: Schema = msg(&[f(1, "points", Int), f(2, "value_minor", Int)]);
const STORE_PROMOTION: Schema = msg(&[f(1, "store_id", U32), f(2, "line", Str)]);
const RULES: Schema = msg(&[
    rep(1, "bonus_tiers", Msg(&BONUS_TIER)),
    f(2, "points_per_unit", Int),
    rep(3, "tiers", Msg(&TIER_RULE)),
    f(4, "promotion_line", Str),
    f(5, "time_zone", Str),
    f(30, "pin_all_spends", Bool),
    f(31, "pin_over_minor", Int),
    f(20, "max_balance_named_minor", Int),
    f(21, "max_balance_anonymous_minor", Int),
    f(22, "max_top_up_minor", Int),
    f(23, "max_daily_spend_minor", Int),
    f(24, "card_validity_days", U32),
    f(25, "currency_default_limits", Bool),
    f(26, "exact_refunds", Bool),
    rep(10, "campaigns", Msg(&CAMPAIGN)),
    f(11, "points_expire_after_days", U32),
    f(12, "points_redemption", Msg(&POINTS_REDEMPTION)),
    rep(13, "store_promotions", Msg(&STORE_PROMOTION)),
]);
const SET_HOLDER: Schema = msg(&[f(1, "card", Str), f(2, "commitment", Bytes)]);
const HOLDER_DATA: Schema = msg(&[f(1, "card", Str), f(2, "name", Str), f(3, "phone", Str)]);
const FIND_CARD: Schema = msg(&[f(1, "phone", Str)]);
const SET_PIN: Schema = msg(&[
    f(1, "card", Str),
    f(2, "pin_block", Bytes),
    f(3, "old_pin_block", Bytes),
]);
const SET_PIN_LOCK: Schema = msg(&[f(1, "card", Str), f(2, "locked", Bool)]);
const SET_RULES: Schema = msg(&[f(1, "rules", Msg(&RULES))]);
const SET_TERMINAL_DISABLED: Schema = msg(&[
    f(1, "terminal_id", U32),
    f(2, "disabled", Bool),
    f(3, "reason", Str),
]);
const GET_REPORT: Schema = msg(&[
    f(1, "kind", Str),
    f(2, "from", Str),
    f(3, "to", Str),
    f(4, "store_id", U32),
    f(5, "by", Str),
    f(6, "idle_days", U32),
    f(7, "date", Str),
    f(8, "cursor", Int),
    f(9, "status", U32),
    f(10, "card", Str),
    f(11, "end_seq", Int),
]);
const ADD_KEY: Schema = msg(&[
    f(1, "public_key", Bytes),
    f(2, "role", U32),
    f(3, "store_id", U32),
    f(4, "label", Str),
]);
const REMOVE_KEY: Schema = msg(&[f(1, "public_key", Bytes)]);
const WEB_LOGIN: Schema = msg(&[]);
const CONSISTENCY_PROOF: Schema = msg(&[f(1, "old_size", Int), f(2, "new_size", Int)]);
const EXPORT_LEDGER: Schema = msg(&[f(90, "after_size", Int)]);
const ADJUST_CARD: Schema = msg(&[
    f(1, "card", Str),
    f(2, "amount_minor", Int),
    f(3, "bonus", Bool),
    f(4, "reason", Str),
]);
const VOID_TOP_UP: Schema = msg(&[f(1, "original_seq", Int), f(2, "reason", Str)]);
const CLOSE_CARD: Schema = msg(&[f(1, "card", Str), f(2, "reason", Str)]);
const SET_CARD_EXPIRY: Schema = msg(&[f(1, "card", Str), f(2, "expires_ms", Int)]);
const ROTATE_OWNER_KEY: Schema = msg(&[
    f(1, "new_public_key", Bytes),
    f(2, "new_key_signature", Bytes),
]);
const REKEY_TERMINAL: Schema = msg(&[f(1, "terminal_id", U32), f(2, "new_public_key", Bytes)]);
const ROTATE_SERVER_KEY: Schema = msg(&[f(1, "new_public_key", Bytes)]);
const CREATE_BRAND: Schema = msg(&[
    f(1, "name", Str),
    f(2, "currency", Str),
    f(3, "currency_exponent", U32),
    f(4, "owner_public_key", Bytes),
]);

/// `cardd.v1.Request` (proto/cardd/v1/cardd.proto); a test compares this
/// table with the proto.
const REQUEST: Schema = Schema {
    fields: &[
        f(1, "txn_id", Int),
        f(2, "brand_id", U32),
        f(3, "operator", Str),
        f(4, "client_time_ms", Int),
        f(5, "want_proof", Bool),
        f(10, "inquiry", Msg(&CARD_ONLY)),
        f(11, "purchase", Msg(&PURCHASE)),
        f(12, "top_up", Msg(&TOP_UP)),
        f(13, "refund", Msg(&REFUND)),
        f(14, "reversal", Msg(&REVERSAL)),
        f(15, "redeem_points", Msg(&REDEEM_POINTS)),
        f(16, "close_shift", Msg(&CLOSE_SHIFT)),
        f(17, "txn_status", Msg(&TXN_STATUS)),
        f(30, "create_store", Msg(&CREATE_STORE)),
        f(31, "enroll_terminal", Msg(&ENROLL_TERMINAL)),
        f(32, "issue_card", Msg(&CARD_ONLY)),
        f(33, "set_card_blocked", Msg(&SET_CARD_BLOCKED)),
        f(34, "replace_card", Msg(&REPLACE_CARD)),
        f(35, "set_rules", Msg(&SET_RULES)),
        f(36, "export_ledger", Msg(&EXPORT_LEDGER)),
        f(37, "consistency_proof", Msg(&CONSISTENCY_PROOF)),
        f(38, "set_terminal_disabled", Msg(&SET_TERMINAL_DISABLED)),
        f(39, "adjust_card", Msg(&ADJUST_CARD)),
        f(40, "void_top_up", Msg(&VOID_TOP_UP)),
        f(41, "close_card", Msg(&CLOSE_CARD)),
        f(42, "set_card_expiry", Msg(&SET_CARD_EXPIRY)),
        f(43, "rotate_owner_key", Msg(&ROTATE_OWNER_KEY)),
        f(44, "rekey_terminal", Msg(&REKEY_TERMINAL)),
        f(45, "report", Msg(&GET_REPORT)),
        f(46, "add_key", Msg(&ADD_KEY)),
        f(47, "remove_key", Msg(&REMOVE_KEY)),
        f(48, "web_login", Msg(&WEB_LOGIN)),
        f(50, "create_brand", Msg(&CREATE_BRAND)),
        f(51, "set_holder", Msg(&SET_HOLDER)),
        f(52, "holder_data", Msg(&HOLDER_DATA)),
        f(53, "find_card", Msg(&FIND_CARD)),
        f(54, "erase_holder", Msg(&CARD_ONLY)),
        f(55, "set_pin", Msg(&SET_PIN)),
        f(56, "set_pin_lock", Msg(&SET_PIN_LOCK)),
        f(60, "rotate_server_key", Msg(&ROTATE_SERVER_KEY)),
    ],
    oneof: &[
        10, 11, 12, 13, 14, 15, 16, 17, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44,
        45, 46, 47, 48, 50, 51, 52, 53, 54, 55, 56, 60,
    ],
};

impl Kind {
    fn wire_type(self) -> WireType {
        match self {
            Kind::Int | Kind::U32 | Kind::Bool => WireType::Varint,
            Kind::Str | Kind::Bytes | Kind::Msg(_) => WireType::LengthDelimited,
        }
    }
}

/// Where the walk of one message stands: the last field read, the fields
/// seen (bit n for field n; every known field number is below 128) and the
/// oneof member seen, if any.
struct Walk<'a> {
    path: &'a str,
    last: u32,
    seen: u128,
    oneof_member: Option<u32>,
}

/// Checks one message (and, recursively, its nested messages).
fn check(mut buf: &[u8], schema: &Schema, path: &str) -> Result<(), WireError> {
    let mut walk = Walk {
        path,
        last: 0,
        seen: 0,
        oneof_member: None,
    };
    while !buf.is_empty() {
        let (field, wire) = read_tag(&mut buf, &walk)?;
        let spec = schema
            .fields
            .iter()
            .find(|s| s.number == field)
            .ok_or_else(|| WireError::UnknownField {
                path: path.into(),
                field,
            })?;
        check_placement(spec, wire, schema, &mut walk)?;
        check_value(&mut buf, spec, &walk)?;
    }
    Ok(())
}

/// Reads a tag; refuses field 0, a truncated or non-minimal tag.
fn read_tag(buf: &mut &[u8], walk: &Walk) -> Result<(u32, u8), WireError> {
    let trailing = |problem| WireError::Trailing {
        path: walk.path.into(),
        after: walk.last,
        len: buf.len(),
        problem,
    };
    let Some((tag, len)) = varint(buf) else {
        return Err(trailing("not a complete varint tag"));
    };
    if len != minimal_len(tag) {
        return Err(WireError::NonMinimalVarint {
            path: walk.path.into(),
            field: u32::try_from(tag >> 3).unwrap_or(0),
            part: "tag",
        });
    }
    let field = u32::try_from(tag >> 3).unwrap_or(0);
    if field == 0 || field > 0x1FFF_FFFF {
        return Err(trailing("field number out of range"));
    }
    *buf = &buf[len..];
    Ok((field, (tag & 7) as u8))
}

/// Wire type, order, repetition and oneof membership of the field just read.
fn check_placement(
    spec: &Field,
    wire: u8,
    schema: &Schema,
    walk: &mut Walk,
) -> Result<(), WireError> {
    let (path, field, name) = (walk.path.to_string(), spec.number, spec.name);
    let want = spec.kind.wire_type() as u8;
    if wire != want {
        return Err(WireError::WrongWireType {
            path,
            field,
            name,
            got: wire,
            want,
        });
    }
    let bit = 1u128 << field.min(127);
    if walk.seen & bit != 0 && !spec.repeated {
        return Err(WireError::Repeated { path, field, name });
    }
    // A repeated field's elements must be consecutive, as encoders write them.
    if field < walk.last {
        return Err(WireError::OutOfOrder {
            path,
            field,
            name,
            after: walk.last,
        });
    }
    walk.seen |= bit;
    if schema.oneof.contains(&field) {
        if let Some(first) = walk.oneof_member.filter(|&m| m != field) {
            return Err(WireError::SecondOneofMember {
                path,
                field,
                name,
                first,
            });
        }
        walk.oneof_member = Some(field);
    }
    walk.last = field;
    Ok(())
}

/// The value of the field just placed: minimal varints, in-range values,
/// complete length-delimited payloads, nested messages by the same rule.
fn check_value(buf: &mut &[u8], spec: &Field, walk: &Walk) -> Result<(), WireError> {
    let bad = |problem| WireError::BadValue {
        path: walk.path.into(),
        field: spec.number,
        name: spec.name,
        problem,
    };
    let non_minimal = |part| WireError::NonMinimalVarint {
        path: walk.path.into(),
        field: spec.number,
        part,
    };
    let part = if matches!(spec.kind.wire_type(), WireType::Varint) {
        "value"
    } else {
        "length"
    };
    let Some((value, len)) = varint(buf) else {
        return Err(bad("varint truncated or over 64 bits"));
    };
    if len != minimal_len(value) {
        return Err(non_minimal(part));
    }
    *buf = &buf[len..];
    match spec.kind {
        Kind::Int => Ok(()),
        Kind::U32 if value > u64::from(u32::MAX) => Err(bad("uint32 value over 2^32-1")),
        Kind::U32 => Ok(()),
        Kind::Bool if value > 1 => Err(bad("bool value other than 0 or 1")),
        Kind::Bool => Ok(()),
        Kind::Str | Kind::Bytes | Kind::Msg(_) => {
            let n = usize::try_from(value).ok().filter(|&n| n <= buf.len());
            let n = n.ok_or_else(|| bad("length runs past the end of the message"))?;
            let (payload, rest) = buf.split_at(n);
            *buf = rest;
            match spec.kind {
                Kind::Str if std::str::from_utf8(payload).is_err() => {
                    Err(bad("string is not UTF-8"))
                }
                Kind::Msg(inner) => check(payload, inner, &format!("{}.{}", walk.path, spec.name)),
                _ => Ok(()),
            }
        }
    }
}

/// A varint at the start of `buf`: its value and length, or `None` if it is
/// truncated or exceeds 64 bits.
fn varint(buf: &[u8]) -> Option<(u64, usize)> {
    let mut probe = buf;
    let value = decode_varint(&mut probe).ok()?;
    Some((value, buf.len() - probe.len()))
}

/// The length of the minimal varint encoding of `value`.
fn minimal_len(value: u64) -> usize {
    prost::encoding::encoded_len_varint(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::{self, request::Op};

    const PROTO: &str = include_str!("../proto/cardd/v1/cardd.proto");

    /// Every schema of the table under its proto message name.
    const TABLE: &[(&str, &Schema)] = &[
        ("Request", &REQUEST),
        ("Inquiry", &CARD_ONLY),
        ("Purchase", &PURCHASE),
        ("TopUp", &TOP_UP),
        ("Refund", &REFUND),
        ("Reversal", &REVERSAL),
        ("RedeemPoints", &REDEEM_POINTS),
        ("CloseShift", &CLOSE_SHIFT),
        ("ShiftTotals", &SHIFT_TOTALS),
        ("TxnStatus", &TXN_STATUS),
        ("CreateStore", &CREATE_STORE),
        ("EnrollTerminal", &ENROLL_TERMINAL),
        ("IssueCard", &CARD_ONLY),
        ("SetCardBlocked", &SET_CARD_BLOCKED),
        ("ReplaceCard", &REPLACE_CARD),
        ("SetRules", &SET_RULES),
        ("Rules", &RULES),
        ("BonusTier", &BONUS_TIER),
        ("TierRule", &TIER_RULE),
        ("Campaign", &CAMPAIGN),
        ("StoreRef", &STORE_REF),
        ("PointsRedemption", &POINTS_REDEMPTION),
        ("StorePromotion", &STORE_PROMOTION),
        ("SetTerminalDisabled", &SET_TERMINAL_DISABLED),
        ("ExportLedger", &EXPORT_LEDGER),
        ("GetConsistencyProof", &CONSISTENCY_PROOF),
        ("CreateBrand", &CREATE_BRAND),
        ("GetReport", &GET_REPORT),
        ("AddKey", &ADD_KEY),
        ("RemoveKey", &REMOVE_KEY),
        ("SetHolder", &SET_HOLDER),
        ("HolderData", &HOLDER_DATA),
        ("FindCard", &FIND_CARD),
        ("EraseHolder", &CARD_ONLY),
        ("SetPin", &SET_PIN),
        ("SetPinLock", &SET_PIN_LOCK),
        ("WebLogin", &WEB_LOGIN),
        ("AdjustCard", &ADJUST_CARD),
        ("VoidTopUp", &VOID_TOP_UP),
        ("CloseCard", &CLOSE_CARD),
        ("SetCardExpiry", &SET_CARD_EXPIRY),
        ("RotateOwnerKey", &ROTATE_OWNER_KEY),
        ("RekeyTerminal", &REKEY_TERMINAL),
        ("RotateServerKey", &ROTATE_SERVER_KEY),
    ];

    /// (number, name, type class, repeated) of a message's fields in the proto.
    fn proto_fields(message: &str) -> Vec<(u32, String, &'static str, bool)> {
        let start = PROTO
            .find(&format!("\nmessage {message} {{"))
            .unwrap_or_else(|| panic!("no message {message} in the proto"));
        let body = &PROTO[start + 1..];
        let body = &body[body.find('{').expect("brace") + 1..];
        let end = body.find("\n}").unwrap_or(usize::MAX).min(
            // A one-line message ends at its own closing brace.
            if body.lines().next().is_some_and(|l| l.contains('}')) {
                body.find('}').expect("brace")
            } else {
                usize::MAX
            },
        );
        let code: Vec<&str> = body[..end]
            .lines()
            .map(|l| l.split("//").next().unwrap_or(""))
            .collect();
        let code = code.join(" ").replace("oneof op {", " ");
        let mut out = Vec::new();
        for stmt in code.split(';') {
            let Some((left, number)) = stmt.split_once('=') else {
                continue;
            };
            let words: Vec<&str> = left.split_whitespace().collect();
            let (repeated, ty, name) = match words.as_slice() {
                ["repeated", ty, name] => (true, *ty, *name),
                // Explicit presence changes nothing on the wire.
                ["optional", ty, name] | [ty, name] => (false, *ty, *name),
                other => panic!("{message}: cannot read field {other:?}"),
            };
            let class = match ty {
                "int64" | "uint64" => "int",
                "uint32" => "u32",
                "bool" => "bool",
                "string" => "str",
                "bytes" => "bytes",
                _ => "msg",
            };
            let number = number.trim().parse().expect("field number");
            out.push((number, name.to_string(), class, repeated));
        }
        out
    }

    fn class(kind: Kind) -> &'static str {
        match kind {
            Kind::Int => "int",
            Kind::U32 => "u32",
            Kind::Bool => "bool",
            Kind::Str => "str",
            Kind::Bytes => "bytes",
            Kind::Msg(_) => "msg",
        }
    }

    #[test]
    fn the_schema_table_matches_the_proto() {
        for (name, schema) in TABLE {
            let ours: Vec<_> = schema
                .fields
                .iter()
                .map(|f| (f.number, f.name.to_string(), class(f.kind), f.repeated))
                .collect();
            assert_eq!(ours, proto_fields(name), "message {name}");
        }
        let ops: Vec<u32> = REQUEST
            .fields
            .iter()
            .map(|f| f.number)
            .filter(|&n| n >= 10)
            .collect();
        assert_eq!(REQUEST.oneof, ops.as_slice());
    }

    const CARD: &str = "6000000000000000000";

    /// The issue's protobufjs 7 purchase: txn 13, brand 1, every default
    /// written out (operator "", client_time_ms 0, want_proof false,
    /// allow_partial false).
    fn explicit_defaults() -> Vec<u8> {
        let mut purchase = vec![0x0a, 0x13];
        purchase.extend_from_slice(CARD.as_bytes());
        purchase.extend_from_slice(&[0x10, 0x01, 0x18, 0x00]);
        let mut bytes = vec![0x08, 0x0d, 0x10, 0x01, 0x1a, 0x00, 0x20, 0x00, 0x28, 0x00];
        bytes.extend_from_slice(&[0x5a, purchase.len() as u8]);
        bytes.extend_from_slice(&purchase);
        bytes
    }

    fn lean() -> pb::Request {
        let op = Op::Purchase(pb::Purchase {
            card: CARD.into(),
            amount_minor: 1,
            allow_partial: false,
            ..Default::default()
        });
        crate::testing::request(13, op)
    }

    fn refusal(bytes: &[u8]) -> String {
        decode_request(bytes).expect_err("accepted").to_string()
    }

    #[test]
    fn explicit_defaults_decode_as_the_lean_encoding() {
        let bytes = explicit_defaults();
        assert_eq!(hex::encode(&bytes[..14]), "080d10011a00200028005a190a13");
        assert_eq!(decode_request(&bytes), Ok(lean()));
        assert_eq!(decode_request(&lean().encode_to_vec()), Ok(lean()));
        assert_ne!(bytes, lean().encode_to_vec());
    }

    #[test]
    fn each_refused_encoding_names_its_field_and_problem() {
        let base = explicit_defaults();
        let with = |tail: &[u8]| [base.as_slice(), tail].concat();
        assert_eq!(
            refusal(&with(&[0x98, 0x06, 0x01])),
            "Request: unknown field 99"
        );
        assert_eq!(
            refusal(&[&[0x08, 0x01][..], &base].concat()),
            "Request: field 1 (txn_id) repeated"
        );
        assert_eq!(
            refusal(&[0x08, 0x01, 0x58, 0x01]),
            "Request: wrong wire type 0 for field 11 (purchase), expected 2"
        );
        assert_eq!(
            refusal(&with(&[0x00])),
            "Request: 1 trailing bytes after field 11 do not form a field (field number out of range)"
        );
        assert_eq!(
            refusal(&with(&[0x80])),
            "Request: 1 trailing bytes after field 11 do not form a field (not a complete varint tag)"
        );
        assert_eq!(
            refusal(&[0x08, 0x8d, 0x00]),
            "Request: non-minimal varint in the value of field 1"
        );
        assert_eq!(
            refusal(&[0x88, 0x00, 0x01]),
            "Request: non-minimal varint in the tag of field 1"
        );
        assert_eq!(
            refusal(&[0x10, 0x01, 0x08, 0x01]),
            "Request: field 1 (txn_id) after field 2 (fields must be in ascending order)"
        );
        assert_eq!(
            refusal(&[0x28, 0x02]),
            "Request: field 5 (want_proof): bool value other than 0 or 1"
        );
        assert_eq!(
            refusal(&[0x10, 0x80, 0x80, 0x80, 0x80, 0x10]),
            "Request: field 2 (brand_id): uint32 value over 2^32-1"
        );
        assert_eq!(
            refusal(&[0x52, 0x00, 0x5a, 0x00]),
            "Request: field 11 (purchase) is a second member of oneof op (field 10 is set)"
        );
        assert_eq!(
            refusal(&[0x5a, 0x02, 0x48, 0x01]),
            "Request.purchase: unknown field 9"
        );
        assert_eq!(
            refusal(&[0x5a, 0x04, 0x10, 0x01, 0x10, 0x02]),
            "Request.purchase: field 2 (amount_minor) repeated"
        );
        assert_eq!(
            refusal(&[0x5a, 0x03, 0x0a, 0x01, 0xff]),
            "Request.purchase: field 1 (card): string is not UTF-8"
        );
        assert_eq!(
            refusal(&[0x5a, 0x05, 0x0a, 0x01]),
            "Request: field 11 (purchase): length runs past the end of the message"
        );
    }

    #[test]
    fn repeated_fields_take_consecutive_elements_only() {
        // SetRules{rules: Rules{bonus_tiers: [{}, {}], tiers: [{}]}}
        let rules = [0x0a, 0x00, 0x0a, 0x00, 0x1a, 0x00];
        let ok = [&[0x9a, 0x02, 0x08, 0x0a, 0x06][..], &rules].concat();
        let decoded = decode_request(&ok).expect("consecutive repeated elements");
        let Some(Op::SetRules(set)) = decoded.op else {
            panic!("not set_rules")
        };
        assert_eq!(set.rules.expect("rules").bonus_tiers.len(), 2);
        let split = [
            0x9a, 0x02, 0x08, 0x0a, 0x06, 0x0a, 0x00, 0x1a, 0x00, 0x0a, 0x00,
        ];
        assert_eq!(
            refusal(&split),
            "Request.set_rules.rules: field 1 (bonus_tiers) after field 3 (fields must be in ascending order)"
        );
    }

    #[test]
    fn a_refusal_is_malformed_with_the_reason() {
        let r = Refusal::from(decode_request(&[0x98, 0x06, 0x01]).expect_err("unknown field"));
        assert_eq!(r.code, ErrorCode::Malformed);
        assert_eq!(r.message, "request refused: Request: unknown field 99");
    }

    /// Shift totals and rules with every field set, for the encoding test.
    fn full_totals_and_rules() -> (pb::ShiftTotals, pb::Rules) {
        let totals = pb::ShiftTotals {
            purchase_count: 1,
            purchase_minor: 2,
            top_up_count: 3,
            top_up_minor: 4,
            refund_count: 5,
            refund_minor: 6,
            reversal_count: 7,
            reversal_minor: 8,
            redeem_count: 9,
            redeem_points: 10,
        };
        let rules = pb::Rules {
            bonus_tiers: vec![
                pb::BonusTier {
                    min_load_minor: 1,
                    fixed_bonus_minor: 2,
                    bonus_bps: 3,
                };
                2
            ],
            points_per_unit: 4,
            tiers: vec![
                pb::TierRule {
                    name: "gold".into(),
                    min_spend_minor: 5,
                    min_visits: 6,
                    multiplier_milli: 7,
                    window_days: 8,
                    min_day_spend_minor: 9,
                    promotion_line: "tier promo".into(),
                };
                2
            ],
            promotion_line: "promo".into(),
            time_zone: "Asia/Shanghai".into(),
            pin_all_spends: true,
            pin_over_minor: 8,
            max_balance_named_minor: 8,
            max_balance_anonymous_minor: 9,
            max_top_up_minor: 10,
            max_daily_spend_minor: 11,
            card_validity_days: 12,
            currency_default_limits: true,
            exact_refunds: true,
            campaigns: vec![
                pb::Campaign {
                    name: "VIP 6x".into(),
                    multiplier_milli: 6_000,
                    starts_ms: 1,
                    ends_ms: 2,
                    stores: vec![pb::StoreRef { store_id: 1 }; 2],
                    category: "bakery".into(),
                };
                2
            ],
            points_expire_after_days: 10,
            points_redemption: Some(pb::PointsRedemption {
                points: 100,
                value_minor: 50,
            }),
            store_promotions: vec![
                pb::StorePromotion {
                    store_id: 1,
                    line: "store promo".into(),
                };
                2
            ],
        };
        (totals, rules)
    }

    /// Every operation with every field set to a non-default value.
    fn every_operation() -> Vec<Op> {
        let (card, key) = (CARD.to_string(), vec![7u8; 32]);
        [
            till_operations(&card),
            owner_operations(&card, &key),
            personal_operations(&card),
            corrections(&card),
            key_operations(key),
        ]
        .concat()
    }

    /// A till's operations, every field set.
    fn till_operations(card: &str) -> Vec<Op> {
        let (totals, _) = full_totals_and_rules();
        vec![
            Op::Inquiry(pb::Inquiry {
                card: card.to_string(),
            }),
            Op::Purchase(pb::Purchase {
                card: card.to_string(),
                amount_minor: -1,
                allow_partial: true,
                category: "bakery".into(),
                points: 100,
                pin_block: vec![1; 80],
            }),
            Op::TopUp(pb::TopUp {
                card: card.to_string(),
                amount_minor: i64::MAX,
                ..Default::default()
            }),
            Op::Refund(pb::Refund {
                original_seq: u64::MAX,
                amount_minor: 1,
            }),
            Op::Reversal(pb::Reversal { original_txn_id: 1 }),
            Op::RedeemPoints(pb::RedeemPoints {
                card: card.to_string(),
                points: 1,
                reward: "r".into(),
                pin_block: vec![2; 80],
            }),
            Op::CloseShift(pb::CloseShift {
                terminal_totals: Some(totals),
            }),
            Op::CloseShift(pb::CloseShift {
                terminal_totals: Some(pb::ShiftTotals::default()),
            }),
            Op::TxnStatus(pb::TxnStatus { txn_id: 1 }),
        ]
    }

    /// The owner's setup and audit operations, every field set.
    fn owner_operations(card: &str, key: &[u8]) -> Vec<Op> {
        let (_, rules) = full_totals_and_rules();
        vec![
            Op::CreateStore(pb::CreateStore { name: "s".into() }),
            Op::EnrollTerminal(pb::EnrollTerminal {
                store_id: u32::MAX,
                public_key: key.to_vec(),
                label: "l".into(),
            }),
            Op::IssueCard(pb::IssueCard {
                card: card.to_string(),
            }),
            Op::SetCardBlocked(pb::SetCardBlocked {
                card: card.to_string(),
                blocked: true,
                reason: "r".into(),
            }),
            Op::ReplaceCard(pb::ReplaceCard {
                old_card: card.to_string(),
                new_card: card.to_string(),
            }),
            Op::SetRules(pb::SetRules { rules: Some(rules) }),
            Op::ExportLedger(pb::ExportLedger::default()),
            Op::ConsistencyProof(pb::GetConsistencyProof {
                old_size: 1,
                new_size: 2,
            }),
            Op::SetTerminalDisabled(pb::SetTerminalDisabled {
                terminal_id: 1,
                disabled: true,
                reason: "r".into(),
            }),
        ]
    }

    /// Holder and PIN operations, every field set.
    fn personal_operations(card: &str) -> Vec<Op> {
        vec![
            Op::SetHolder(pb::SetHolder {
                card: card.to_string(),
                commitment: vec![3; 32],
            }),
            Op::HolderData(pb::HolderData {
                card: card.to_string(),
                name: "n".into(),
                phone: "+8613800000000".into(),
            }),
            Op::FindCard(pb::FindCard { phone: "1".into() }),
            Op::EraseHolder(pb::EraseHolder {
                card: card.to_string(),
            }),
            Op::SetPin(pb::SetPin {
                card: card.to_string(),
                pin_block: vec![4; 80],
                old_pin_block: vec![5; 80],
            }),
            Op::SetPinLock(pb::SetPinLock {
                card: card.to_string(),
                locked: true,
            }),
        ]
    }

    /// The owner's corrections, every field set.
    fn corrections(card: &str) -> Vec<Op> {
        vec![
            Op::AdjustCard(pb::AdjustCard {
                card: card.to_string(),
                amount_minor: -5,
                bonus: true,
                reason: "r".into(),
            }),
            Op::VoidTopUp(pb::VoidTopUp {
                original_seq: 9,
                reason: "r".into(),
            }),
            Op::CloseCard(pb::CloseCard {
                card: card.to_string(),
                reason: "r".into(),
            }),
            Op::SetCardExpiry(pb::SetCardExpiry {
                card: card.to_string(),
                expires_ms: 1,
            }),
        ]
    }

    /// Key rotations and the brand's creation, every field set.
    fn key_operations(key: Vec<u8>) -> Vec<Op> {
        vec![
            Op::RotateOwnerKey(pb::RotateOwnerKey {
                new_public_key: key.clone(),
                new_key_signature: vec![1; 64],
            }),
            Op::RekeyTerminal(pb::RekeyTerminal {
                terminal_id: 2,
                new_public_key: key.clone(),
            }),
            Op::RotateServerKey(pb::RotateServerKey {
                new_public_key: key.clone(),
            }),
            Op::CreateBrand(pb::CreateBrand {
                name: "b".into(),
                currency: "CNY".into(),
                currency_exponent: 2,
                owner_public_key: key,
            }),
        ]
    }

    /// Every operation with every field set to a non-default value, as
    /// prost encodes it: the rule accepts what the daemon's own client sends.
    #[test]
    fn prost_encodings_of_every_operation_are_accepted() {
        let ops = every_operation();
        for op in ops {
            let req = pb::Request {
                txn_id: u64::MAX,
                brand_id: u32::MAX,
                operator: "op".into(),
                client_time_ms: -5,
                want_proof: true,
                op: Some(op),
            };
            assert_eq!(decode_request(&req.encode_to_vec()), Ok(req));
        }
    }
}
