//! Accessors that take a reply apart, or fail the test when the part is
//! missing or of another kind.
use cardd::pb::{self, reply::Detail};

/// The receipt of a reply that wrote a record.
#[track_caller]
pub fn receipt(r: &pb::Reply) -> &pb::Receipt {
    r.receipt.as_ref().expect("reply has a receipt")
}

/// The sequence number of the record a reply wrote.
#[track_caller]
pub fn seq(r: &pb::Reply) -> u64 {
    receipt(r).seq
}

/// The card view of a reply.
#[track_caller]
pub fn card_of(r: &pb::Reply) -> &pb::CardView {
    r.card.as_ref().expect("reply has a card view")
}

/// The purchase result of a reply.
#[track_caller]
pub fn purchased(r: &pb::Reply) -> &pb::PurchaseResult {
    match &r.detail {
        Some(Detail::Purchase(p)) => p,
        other => panic!("expected a purchase result, got {other:?}"),
    }
}

/// The top-up result of a reply.
#[track_caller]
pub fn topped_up(r: &pb::Reply) -> &pb::TopUpResult {
    match &r.detail {
        Some(Detail::TopUp(t)) => t,
        other => panic!("expected a top-up result, got {other:?}"),
    }
}

/// The refund result of a reply.
#[track_caller]
pub fn refunded(r: &pb::Reply) -> &pb::RefundResult {
    match &r.detail {
        Some(Detail::Refund(x)) => x,
        other => panic!("expected a refund result, got {other:?}"),
    }
}

/// The reversal result of a reply.
#[track_caller]
pub fn reversed(r: &pb::Reply) -> &pb::ReversalResult {
    match &r.detail {
        Some(Detail::Reversal(x)) => x,
        other => panic!("expected a reversal result, got {other:?}"),
    }
}

/// The shift result of a reply.
#[track_caller]
pub fn shift_of(r: &pb::Reply) -> &pb::ShiftResult {
    match &r.detail {
        Some(Detail::Shift(x)) => x,
        other => panic!("expected a shift result, got {other:?}"),
    }
}

/// The points result of a reply.
#[track_caller]
pub fn redeemed(r: &pb::Reply) -> &pb::PointsResult {
    match &r.detail {
        Some(Detail::Points(x)) => x,
        other => panic!("expected a points result, got {other:?}"),
    }
}

/// The id of the store a reply opened.
#[track_caller]
pub fn store_created(r: &pb::Reply) -> u32 {
    match &r.detail {
        Some(Detail::Store(x)) => x.store_id,
        other => panic!("expected a store result, got {other:?}"),
    }
}

/// The enrolment result of a reply.
#[track_caller]
pub fn terminal_enrolled(r: &pb::Reply) -> &pb::TerminalEnrolled {
    match &r.detail {
        Some(Detail::Terminal(x)) => x,
        other => panic!("expected a terminal result, got {other:?}"),
    }
}

/// The status result of a `TxnStatus` reply.
#[track_caller]
pub fn status(r: pb::Reply) -> pb::StatusResult {
    match r.detail {
        Some(Detail::Status(s)) => *s,
        other => panic!("expected a status result, got {other:?}"),
    }
}

/// Asserts paid, bonus (and so total) balance and points of a card view.
#[track_caller]
pub fn assert_money(v: &pb::CardView, paid: i64, bonus: i64, points: i64) {
    assert_eq!(
        (
            v.balance_minor,
            v.paid_balance_minor,
            v.bonus_balance_minor,
            v.points
        ),
        (paid + bonus, paid, bonus, points),
        "card {} (balance, paid, bonus, points)",
        v.card
    );
}
