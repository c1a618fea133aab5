//! The brand's loyalty rules: validation, top-up bonus, points and tiers.
//!
//! Rounding rule (one, documented): every fractional result (bonus from a
//! percentage, points from a fractional multiplier) is rounded down, toward
//! zero, in integer arithmetic on i128. The merchant never gives away a
//! fraction it did not promise.
use crate::error::{refuse, Refusal};
use crate::limits::*;
use crate::pb::{ErrorCode, Rules};

use super::Card;

/// Tier name used when the brand has no tier rules or a card reaches none.
pub const BASE_TIER: &str = "member";

/// The rules a new brand starts with: 1 point per unit spent, no bonus, a
/// single tier.
pub fn default_rules() -> Rules {
    Rules {
        bonus_tiers: vec![],
        points_per_unit: 1,
        tiers: vec![],
        promotion_line: String::new(),
        time_zone: String::new(),
        pin_all_spends: false,
        pin_over_minor: 0,
        ..Rules::default()
    }
}

fn text_ok(s: &str, max: usize) -> bool {
    s.len() <= max && !s.chars().any(char::is_control)
}

/// Checks that `rules` are within limits and ordered.
pub fn validate(rules: &Rules) -> Result<(), Refusal> {
    let bad = |m: &str| refuse(ErrorCode::InvalidArgument, m.to_string());
    if rules.bonus_tiers.len() > MAX_RULE_TIERS || rules.tiers.len() > MAX_RULE_TIERS {
        return bad("too many tiers");
    }
    if !(0..=MAX_AMOUNT_MINOR).contains(&rules.pin_over_minor) {
        return bad("pin_over_minor out of range");
    }
    if !(0..=MAX_POINTS_PER_UNIT).contains(&rules.points_per_unit) {
        return bad("points_per_unit out of range");
    }
    if !text_ok(&rules.promotion_line, MAX_PROMOTION_BYTES) {
        return bad("promotion line too long or has control characters");
    }
    if !rules.time_zone.is_empty()
        && (!text_ok(&rules.time_zone, MAX_TEXT_BYTES)
            || super::books::zone_named(&rules.time_zone).is_err())
    {
        return bad("time_zone is not an IANA time zone name (e.g. Asia/Shanghai)");
    }
    validate_limits(rules)?;
    let mut prev: Option<i64> = None;
    for t in &rules.bonus_tiers {
        if !(0..=MAX_AMOUNT_MINOR).contains(&t.min_load_minor)
            || !(0..=MAX_AMOUNT_MINOR).contains(&t.fixed_bonus_minor)
            || t.bonus_bps > MAX_BONUS_BPS
        {
            return bad("bonus tier out of range");
        }
        if prev.is_some_and(|p| p >= t.min_load_minor) {
            return bad("bonus tiers must ascend by min_load_minor");
        }
        prev = Some(t.min_load_minor);
    }
    let mut prev: Option<i64> = None;
    for t in &rules.tiers {
        if t.name.is_empty() || !text_ok(&t.name, MAX_TEXT_BYTES) {
            return bad("tier name empty or too long");
        }
        if !(0..=MAX_BALANCE_MINOR).contains(&t.min_spend_minor)
            || t.multiplier_milli > MAX_MULTIPLIER_MILLI
        {
            return bad("tier out of range");
        }
        // Ordered by spend; a visit threshold is an extra way in (0 = none).
        if prev.is_some_and(|p| p >= t.min_spend_minor) {
            return bad("tiers must ascend by min_spend_minor");
        }
        prev = Some(t.min_spend_minor);
    }
    Ok(())
}

/// The limits and the validity rule (issue 15): 0 = the default;
/// a validity shorter than three years is refused (anonymous cards).
fn validate_limits(rules: &Rules) -> Result<(), Refusal> {
    let in_range = |v: i64, max: i64| (0..=max).contains(&v);
    let limits = [
        (
            "max_balance_named_minor",
            rules.max_balance_named_minor,
            MAX_BALANCE_MINOR,
        ),
        (
            "max_balance_anonymous_minor",
            rules.max_balance_anonymous_minor,
            MAX_BALANCE_MINOR,
        ),
        ("max_top_up_minor", rules.max_top_up_minor, MAX_AMOUNT_MINOR),
        (
            "max_daily_spend_minor",
            rules.max_daily_spend_minor,
            MAX_BALANCE_MINOR,
        ),
    ];
    for (key, value, max) in limits {
        if !in_range(value, max) {
            return refuse(
                ErrorCode::InvalidArgument,
                format!("{key} must be 0 (the default) ..= {max} minor units"),
            );
        }
    }
    let days = rules.card_validity_days;
    if days != 0 && !(MIN_CARD_VALIDITY_DAYS..=MAX_CARD_VALIDITY_DAYS).contains(&days) {
        return refuse(
            ErrorCode::InvalidArgument,
            format!(
                "card_validity_days must be 0 (no expiry) or {MIN_CARD_VALIDITY_DAYS}..={MAX_CARD_VALIDITY_DAYS}: anonymous cards stay valid at least three years"
            ),
        );
    }
    Ok(())
}

/// The bonus granted for a top-up of `amount` (already range-checked).
pub fn bonus_for(rules: &Rules, amount: i64) -> i64 {
    let Some(tier) = rules
        .bonus_tiers
        .iter()
        .rev()
        .find(|t| t.min_load_minor <= amount)
    else {
        return 0;
    };
    let pct = i128::from(amount) * i128::from(tier.bonus_bps) / 10_000;
    let bonus = i128::from(tier.fixed_bonus_minor) + pct;
    // Both parts are bounded by MAX_AMOUNT_MINOR (bps <= 100%), so the sum fits.
    i64::try_from(bonus).expect("bonus bounded by rule limits")
}

/// The card's tier under `rules`: name and points multiplier (thousandths).
pub fn tier_of<'r>(rules: &'r Rules, card: &Card) -> (&'r str, u32) {
    rules
        .tiers
        .iter()
        .rev()
        .find(|t| {
            card.total_spend >= t.min_spend_minor
                || (t.min_visits > 0 && card.visits >= t.min_visits)
        })
        .map(|t| (t.name.as_str(), t.multiplier_milli))
        .unwrap_or((BASE_TIER, 1_000))
}

/// Points earned by spending `amount` minor units at `multiplier_milli`:
/// floor(amount * points_per_unit * multiplier / (10^exponent * 1000)).
pub fn points_for(rules: &Rules, exponent: u32, amount: i64, multiplier_milli: u32) -> i64 {
    let unit = 10i128.pow(exponent);
    let p = i128::from(amount) * i128::from(rules.points_per_unit) * i128::from(multiplier_milli)
        / (unit * 1_000);
    // amount <= 1e9, per_unit <= 1e3, multiplier <= 1e5: p <= 1e17 fits i64.
    i64::try_from(p).expect("points bounded by rule limits")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::{BonusTier, TierRule};

    fn rules() -> Rules {
        Rules {
            bonus_tiers: vec![
                BonusTier {
                    min_load_minor: 50_000,
                    fixed_bonus_minor: 5_000,
                    bonus_bps: 0,
                },
                BonusTier {
                    min_load_minor: 100_000,
                    fixed_bonus_minor: 0,
                    bonus_bps: 1_500,
                },
            ],
            points_per_unit: 1,
            tiers: vec![
                TierRule {
                    name: "silver".into(),
                    min_spend_minor: 0,
                    min_visits: 0,
                    multiplier_milli: 1_000,
                },
                TierRule {
                    name: "gold".into(),
                    min_spend_minor: 100_000,
                    min_visits: 10,
                    multiplier_milli: 3_800,
                },
            ],
            promotion_line: String::new(),
            time_zone: String::new(),
            ..Default::default()
        }
    }

    #[test]
    fn bonus_picks_highest_reached_tier() {
        let r = rules();
        assert_eq!(bonus_for(&r, 49_999), 0);
        assert_eq!(bonus_for(&r, 50_000), 5_000);
        assert_eq!(bonus_for(&r, 100_000), 15_000);
        assert_eq!(bonus_for(&r, 100_007), 15_001); // 15% of 1000.07 = 150.0105 -> 150.01
    }

    #[test]
    fn fractional_multiplier_rounds_down() {
        let r = rules();
        // 12.34 spent at 3.8x = 46.892 points -> 46
        assert_eq!(points_for(&r, 2, 1_234, 3_800), 46);
        assert_eq!(points_for(&r, 2, 99, 1_000), 0);
    }

    #[test]
    fn tier_by_spend_or_visits() {
        let r = rules();
        let mut c = Card::default();
        assert_eq!(tier_of(&r, &c).0, "silver");
        c.visits = 10;
        assert_eq!(tier_of(&r, &c), ("gold", 3_800));
        c.visits = 0;
        c.total_spend = 100_000;
        assert_eq!(tier_of(&r, &c).0, "gold");
    }

    #[test]
    fn validation_refuses_unordered_and_oversized() {
        let mut r = rules();
        assert!(validate(&r).is_ok());
        r.bonus_tiers.swap(0, 1);
        assert_eq!(validate(&r).unwrap_err().code, ErrorCode::InvalidArgument);
        let mut r = rules();
        r.tiers[1].multiplier_milli = MAX_MULTIPLIER_MILLI + 1;
        assert!(validate(&r).is_err());
    }
}
