//! The answer to a terminal, built from a record alone, so that a retry
//! answered from the stored record says exactly what the first answer said.
use crate::pb::{self, reply::Detail, RecordKind};

/// The reply for a written record with hash `hash`.
pub fn reply_for_record(rec: &pb::Record, hash: &[u8; 32], promotion_line: &str) -> pb::Reply {
    let card = (!rec.card.is_empty()).then(|| pb::CardView {
        card: rec.card.clone(),
        status: rec.card_status_after,
        balance_minor: rec.paid_balance_after_minor + rec.bonus_balance_after_minor,
        paid_balance_minor: rec.paid_balance_after_minor,
        bonus_balance_minor: rec.bonus_balance_after_minor,
        points: rec.points_after,
        tier: rec.tier_after.clone(),
        total_spend_minor: rec.total_spend_after_minor,
        visits: rec.visits_after,
        // A record's card is the one it moved value on: never a replaced
        // number (an inquiry of one names its successor).
        replaced_by: String::new(),
        // Not in the record (a retry answers from it alone): an inquiry
        // tells them.
        named: false,
        has_pin: false,
        // Only the records that set it carry the expiry (CARD_ISSUED,
        // CARD_EXPIRY_SET); an inquiry always shows it.
        expires_ms: rec.expires_ms,
        closed: rec.kind() == RecordKind::CardClosed,
        // Lots are not in the record: an inquiry shows them.
        points_next_expiring: 0,
        points_next_expiry_ms: 0,
    });
    let detail = match rec.kind() {
        RecordKind::Purchase => Some(Detail::Purchase(pb::PurchaseResult {
            requested_minor: rec.requested_minor,
            approved_minor: rec.paid_out_minor + rec.bonus_out_minor,
            remaining_due_minor: rec.remaining_minor,
            points_earned: rec.points_in,
            // The record names the tier before only when it changed.
            tier_before: if rec.tier_before.is_empty() {
                rec.tier_after.clone()
            } else {
                rec.tier_before.clone()
            },
            tier: rec.tier_after.clone(),
            points_spent: rec.points_out,
            points_value_minor: rec.points_value_minor,
            tier_fell: rec.tier_fell,
        })),
        RecordKind::TopUp => Some(Detail::TopUp(pb::TopUpResult {
            paid_minor: rec.paid_in_minor,
            bonus_minor: rec.bonus_in_minor,
            channel: rec.channel,
            reference: rec.reference.clone(),
            price_minor: rec.price_minor,
        })),
        RecordKind::Refund => Some(Detail::Refund(pb::RefundResult {
            refunded_minor: rec.paid_in_minor + rec.bonus_in_minor,
            refundable_left_minor: rec.remaining_minor,
            points_removed: rec.points_out,
            points_returned: rec.points_in,
            points_value_minor: rec.points_value_minor,
        })),
        RecordKind::Reversal => Some(Detail::Reversal(pb::ReversalResult {
            original_txn_id: rec.original_txn_id,
            original_found: rec.original_seq != 0,
            original_seq: rec.original_seq,
            value_minor: rec.paid_in_minor
                + rec.bonus_in_minor
                + rec.paid_out_minor
                + rec.bonus_out_minor,
        })),
        RecordKind::PointsRedeemed => Some(Detail::Points(pb::PointsResult {
            points_redeemed: rec.points_out,
        })),
        RecordKind::ShiftClosed => Some(Detail::Shift(pb::ShiftResult {
            server_totals: rec.shift_totals,
            balanced: rec.shift_balanced,
            shift_number: rec.shift_number,
        })),
        RecordKind::StoreCreated => Some(Detail::Store(pb::StoreCreated {
            store_id: rec.new_id,
        })),
        RecordKind::TerminalEnrolled => Some(Detail::Terminal(pb::TerminalEnrolled {
            terminal_id: rec.new_id,
            store_id: rec.store_id,
        })),
        _ => None,
    };
    pb::Reply {
        receipt: Some(pb::Receipt {
            seq: rec.seq,
            hash: hash.to_vec(),
            time_ms: rec.time_ms,
            store_id: rec.store_id,
            terminal_id: rec.terminal_id,
            txn_id: rec.txn_id,
        }),
        card,
        detail,
        promotion_line: promotion_line.to_string(),
        ..Default::default()
    }
}
