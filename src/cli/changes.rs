//! What an owner's operation changed, in one sentence: the owner's console
//! prints it above the receipt, so that `block-card` says more than
//! `RECORDED`.
use cardd::card_number::mask;
use cardd::pb::{self, reply::Detail, request::Op};
use cardd::render::money;

/// The sentence for `op` answered with `reply`, or `None` when the receipt
/// already says it all (loads, inquiries).
pub fn changed(op: &Op, reply: &pb::Reply, session: &pb::SignOnOk) -> Option<String> {
    let card = || {
        reply
            .card
            .as_ref()
            .map_or(String::new(), |c| c.card.clone())
    };
    Some(match op {
        Op::CreateStore(s) => match &reply.detail {
            Some(Detail::Store(d)) => format!("Opened store {} \"{}\".", d.store_id, s.name),
            _ => format!("Opened store \"{}\".", s.name),
        },
        Op::EnrollTerminal(e) => match &reply.detail {
            Some(Detail::Terminal(t)) => format!(
                "Enrolled terminal {} in store {}: it can sign on now.",
                t.terminal_id, e.store_id
            ),
            _ => format!("Enrolled a terminal in store {}.", e.store_id),
        },
        Op::IssueCard(_) => format!("Issued card {}: active, balance 0.", card()),
        Op::SetCardBlocked(b) if b.blocked => format!(
            "Blocked card {}: it can no longer pay or be loaded until unblocked.",
            b.card
        ),
        Op::SetCardBlocked(b) => format!("Unblocked card {}: it is active again.", b.card),
        Op::ReplaceCard(r) => replaced(r, reply, session),
        Op::SetRules(s) => rules_changed(s.rules.as_ref().cloned().unwrap_or_default()),
        Op::SetTerminalDisabled(t) if t.disabled => format!(
            "Disabled terminal {}: it cannot sign on, and its open sessions are closed.",
            t.terminal_id
        ),
        Op::SetTerminalDisabled(t) => {
            format!("Enabled terminal {}: it can sign on again.", t.terminal_id)
        }
        Op::SetHolder(h) => format!(
            "Card {} is named: its holder is in the daemon's holder store; the ledger keeps only a commitment.",
            h.card
        ),
        Op::EraseHolder(e) => format!(
            "Erased the holder of card {}: name, phone and commitment key are gone; the card is anonymous.",
            e.card
        ),
        Op::SetPin(p) => format!("Set the PIN of card {}; any PIN lock is lifted.", p.card),
        Op::SetPinLock(l) if l.locked => format!("Locked the PIN of card {}.", l.card),
        Op::SetPinLock(l) => format!("Unlocked the PIN of card {}: five tries again.", l.card),
        _ => return None,
    })
}

/// A replacement: where the value went.
fn replaced(r: &pb::ReplaceCard, reply: &pb::Reply, s: &pb::SignOnOk) -> String {
    let Some(c) = &reply.card else {
        return format!("Replaced card {} by {}.", r.old_card, r.new_card);
    };
    format!(
        "Replaced card {} ({}) by {}: {} and {} points moved; the old number is REPLACED and holds nothing.",
        r.old_card,
        mask(&r.old_card),
        c.card,
        money(c.balance_minor, s.currency_exponent, &s.currency),
        c.points
    )
}

/// New rules, summed up: they apply at once in every store.
fn rules_changed(r: pb::Rules) -> String {
    let tiers: Vec<&str> = r.tiers.iter().map(|t| t.name.as_str()).collect();
    let promotion = if r.promotion_line.is_empty() {
        "no promotion line".to_string()
    } else {
        format!("promotion line \"{}\"", r.promotion_line)
    };
    format!(
        "Rules set, in force in every store now: {} bonus tier(s), {} point(s) per unit, \
         tiers [{}], {promotion}.{}",
        r.bonus_tiers.len(),
        r.points_per_unit,
        tiers.join(", "),
        loyalty_changed(&r)
    )
}

/// The loyalty programme's part of new rules, when it is used.
fn loyalty_changed(r: &pb::Rules) -> String {
    let mut parts = Vec::new();
    if !r.campaigns.is_empty() {
        let names: Vec<&str> = r.campaigns.iter().map(|c| c.name.as_str()).collect();
        parts.push(format!("campaigns [{}]", names.join(", ")));
    }
    if r.points_expire_after_days > 0 {
        parts.push(format!(
            "points expire {} day(s) after they are earned",
            r.points_expire_after_days
        ));
    }
    if let Some(p) = &r.points_redemption {
        parts.push(format!(
            "{} point(s) pay {} minor unit(s) of a bill",
            p.points, p.value_minor
        ));
    }
    match parts.is_empty() {
        true => String::new(),
        false => format!(" Loyalty: {}.", parts.join("; ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> pb::SignOnOk {
        pb::SignOnOk {
            currency: "CNY".into(),
            currency_exponent: 2,
            ..Default::default()
        }
    }

    #[test]
    fn new_rules_name_their_campaigns_expiry_and_points_payment() {
        let mut r = pb::Rules {
            points_per_unit: 1,
            ..Default::default()
        };
        assert!(!rules_changed(r.clone()).contains("Loyalty"));
        r.campaigns = vec![pb::Campaign {
            name: "VIP 6x".into(),
            ..Default::default()
        }];
        r.points_expire_after_days = 365;
        r.points_redemption = Some(pb::PointsRedemption {
            points: 100,
            value_minor: 500,
        });
        assert!(rules_changed(r).ends_with(
            " Loyalty: campaigns [VIP 6x]; points expire 365 day(s) after they are earned; \
             100 point(s) pay 500 minor unit(s) of a bill."
        ));
    }

    #[test]
    fn owner_operations_say_what_changed() {
        let reply = pb::Reply {
            card: Some(pb::CardView {
                card: "8000010000000000002".into(),
                balance_minor: 65_000,
                points: 12,
                ..Default::default()
            }),
            ..Default::default()
        };
        let replace = Op::ReplaceCard(pb::ReplaceCard {
            old_card: "8000010000000000001".into(),
            new_card: "8000010000000000002".into(),
        });
        assert_eq!(
            changed(&replace, &reply, &session()).as_deref(),
            Some(
                "Replaced card 8000010000000000001 (****0001) by 8000010000000000002: \
                 650.00 CNY and 12 points moved; the old number is REPLACED and holds nothing."
            )
        );
        let block = Op::SetCardBlocked(pb::SetCardBlocked {
            card: "8000010000000000002".into(),
            blocked: true,
            reason: String::new(),
        });
        let text = changed(&block, &reply, &session()).expect("a sentence");
        assert!(
            text.starts_with("Blocked card 8000010000000000002"),
            "{text}"
        );
        let inquiry = Op::Inquiry(pb::Inquiry::default());
        assert_eq!(changed(&inquiry, &reply, &session()), None);
    }
}
