//! The brand's loyalty rules: validation, top-up bonus, points and tiers.
//!
//! Rounding rule (one, documented): every fractional result (bonus from a
//! percentage, points from a fractional multiplier) is rounded down, toward
//! zero, in integer arithmetic on i128. The merchant never gives away a
//! fraction it did not promise.
use crate::error::{refuse, Refusal};
use crate::limits::*;
use crate::pb::{Campaign, ErrorCode, Rules, TierRule};

use super::{points, Card};

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
        campaigns: vec![],
        points_expire_after_days: 0,
        points_redemption: None,
        store_promotions: vec![],
        ..Rules::default()
    }
}

fn text_ok(s: &str, max: usize) -> bool {
    s.len() <= max && !s.chars().any(char::is_control)
}

/// Checks that `rules` are within limits and ordered; `store_exists` says
/// whether a store id names one of the brand's stores. A refusal names the
/// field (by its key in the rules file) and nothing changes.
pub fn validate(rules: &Rules, store_exists: &dyn Fn(u32) -> bool) -> Result<(), Refusal> {
    let bad = |m: String| refuse(ErrorCode::InvalidArgument, m);
    if rules.bonus_tiers.len() > MAX_RULE_TIERS || rules.tiers.len() > MAX_RULE_TIERS {
        return bad(format!(
            "tiers: at most {MAX_RULE_TIERS} (and as many bonus_tiers)"
        ));
    }
    if !(0..=MAX_AMOUNT_MINOR).contains(&rules.pin_over_minor) {
        return bad("pin_over_minor out of range".into());
    }
    if !(0..=MAX_POINTS_PER_UNIT).contains(&rules.points_per_unit) {
        return bad(format!(
            "points_per_unit: must be 0..={MAX_POINTS_PER_UNIT}"
        ));
    }
    if !text_ok(&rules.promotion_line, MAX_PROMOTION_BYTES) {
        return bad("promotion_line: too long or has control characters".into());
    }
    if !rules.time_zone.is_empty()
        && (!text_ok(&rules.time_zone, MAX_TEXT_BYTES)
            || super::books::zone_named(&rules.time_zone).is_err())
    {
        return bad("time_zone: not an IANA time zone name (e.g. Asia/Shanghai)".into());
    }
    validate_limits(rules)?;
    let mut prev: Option<i64> = None;
    for (i, t) in rules.bonus_tiers.iter().enumerate() {
        if !(0..=MAX_AMOUNT_MINOR).contains(&t.min_load_minor)
            || !(0..=MAX_AMOUNT_MINOR).contains(&t.fixed_bonus_minor)
            || t.bonus_bps > MAX_BONUS_BPS
        {
            return bad(format!("bonus_tiers[{i}]: out of range"));
        }
        if prev.is_some_and(|p| p >= t.min_load_minor) {
            return bad(format!(
                "bonus_tiers[{i}].min_load_minor: bonus tiers must ascend by min_load_minor"
            ));
        }
        prev = Some(t.min_load_minor);
    }
    validate_tiers(rules)?;
    validate_loyalty(rules, store_exists)
}

/// Tiers: in range and in ascending order. Two tiers overlap when a higher
/// one is reached as easily as a lower one by a way in both share.
fn validate_tiers(rules: &Rules) -> Result<(), Refusal> {
    let bad = |m: String| refuse(ErrorCode::InvalidArgument, m);
    for (i, t) in rules.tiers.iter().enumerate() {
        let at = format!("tiers[{i}]");
        if t.name.is_empty() || !text_ok(&t.name, MAX_TEXT_BYTES) {
            return bad(format!(
                "{at}.name: empty, too long or has control characters"
            ));
        }
        if !(0..=MAX_BALANCE_MINOR).contains(&t.min_spend_minor)
            || !(0..=MAX_BALANCE_MINOR).contains(&t.min_day_spend_minor)
        {
            return bad(format!("{at}: a spend threshold out of range"));
        }
        if !(1..=MAX_MULTIPLIER_MILLI).contains(&t.multiplier_milli) {
            return bad(format!(
                "{at}.multiplier_milli: must be 1..={MAX_MULTIPLIER_MILLI} (1000 = 1x)"
            ));
        }
        if t.window_days > MAX_TIER_WINDOW_DAYS {
            return bad(format!("{at}.window_days: at most {MAX_TIER_WINDOW_DAYS}"));
        }
        if !text_ok(&t.promotion_line, MAX_PROMOTION_BYTES) {
            return bad(format!(
                "{at}.promotion_line: too long or has control characters"
            ));
        }
        for p in &rules.tiers[..i] {
            overlap(p, t).map_err(|field| {
                invalid(format!(
                    "{at}.{field}: tiers overlap (each tier must need more than every tier before it)"
                ))
            })?;
        }
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

/// The way into `t` that a lower tier `p` needs as much of, if any.
/// Visits are an extra way in, in any order (as rules always allowed, so
/// older ledgers replay).
fn overlap(p: &TierRule, t: &TierRule) -> Result<(), &'static str> {
    if by_spend(p) && by_spend(t) && p.min_spend_minor >= t.min_spend_minor {
        return Err("min_spend_minor");
    }
    if p.min_day_spend_minor > 0
        && t.min_day_spend_minor > 0
        && p.min_day_spend_minor >= t.min_day_spend_minor
    {
        return Err("min_day_spend_minor");
    }
    Ok(())
}

/// Campaigns, expiry, points as payment and store promotion lines.
fn validate_loyalty(rules: &Rules, store_exists: &dyn Fn(u32) -> bool) -> Result<(), Refusal> {
    let bad = |m: String| refuse(ErrorCode::InvalidArgument, m);
    if rules.campaigns.len() > MAX_CAMPAIGNS {
        return bad(format!("campaigns: at most {MAX_CAMPAIGNS}"));
    }
    for (i, c) in rules.campaigns.iter().enumerate() {
        let at = format!("campaigns[{i}]");
        if c.name.is_empty() || !text_ok(&c.name, MAX_TEXT_BYTES) {
            return bad(format!(
                "{at}.name: empty, too long or has control characters"
            ));
        }
        if !(1..=MAX_MULTIPLIER_MILLI).contains(&c.multiplier_milli) {
            return bad(format!(
                "{at}.multiplier_milli: must be 1..={MAX_MULTIPLIER_MILLI} (1000 = 1x)"
            ));
        }
        if c.ends_ms <= c.starts_ms {
            return bad(format!("{at}.ends: must be after starts"));
        }
        if !text_ok(&c.category, MAX_TEXT_BYTES) {
            return bad(format!("{at}.category: too long or has control characters"));
        }
        let stores: Vec<u32> = c.stores.iter().map(|s| s.store_id).collect();
        stores_ok(&stores, store_exists).map_err(|m| invalid(format!("{at}.stores: {m}")))?;
    }
    if rules.points_expire_after_days > MAX_POINTS_EXPIRE_DAYS {
        return bad(format!(
            "points_expire_after_days: at most {MAX_POINTS_EXPIRE_DAYS}"
        ));
    }
    if let Some(r) = &rules.points_redemption {
        if !(1..=MAX_REDEMPTION_POINTS).contains(&r.points)
            || !(1..=MAX_AMOUNT_MINOR).contains(&r.value_minor)
        {
            return bad(format!(
                "points_redemption: points must be 1..={MAX_REDEMPTION_POINTS}, \
                 value_minor 1..={MAX_AMOUNT_MINOR}"
            ));
        }
    }
    let stores: Vec<u32> = rules.store_promotions.iter().map(|s| s.store_id).collect();
    stores_ok(&stores, store_exists).map_err(|m| invalid(format!("store_promotions: {m}")))?;
    for (i, s) in rules.store_promotions.iter().enumerate() {
        if !text_ok(&s.line, MAX_PROMOTION_BYTES) {
            return bad(format!(
                "store_promotions[{i}].line: too long or has control characters"
            ));
        }
    }
    Ok(())
}

fn invalid(m: String) -> Refusal {
    Refusal::new(ErrorCode::InvalidArgument, m)
}

/// A list of store ids: bounded, each a store of the brand, none twice.
fn stores_ok(stores: &[u32], store_exists: &dyn Fn(u32) -> bool) -> Result<(), String> {
    if stores.len() > MAX_CAMPAIGN_STORES {
        return Err(format!("at most {MAX_CAMPAIGN_STORES} stores"));
    }
    for (i, s) in stores.iter().enumerate() {
        if !store_exists(*s) {
            return Err(format!("unknown store {s}"));
        }
        if stores[..i].contains(s) {
            return Err(format!("store {s} named twice"));
        }
    }
    Ok(())
}

/// True if cumulative (or window) spend is a way into tier `t`: a positive
/// threshold, or a tier with no other way in (0 = every card). A tier
/// reached by a day's spend with `min_spend_minor` 0 is not open to all.
fn by_spend(t: &TierRule) -> bool {
    t.min_spend_minor > 0 || (t.min_day_spend_minor == 0)
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

/// The card's tier under `rules` on brand day `today`: name and points
/// multiplier (thousandths). The highest tier reached by any of its ways
/// in: spend, visits or a single day's spend, counted over the tier's
/// window when it has one (so a card falls back once its window no longer
/// reaches the tier: at its next record, or an inquiry).
pub fn tier_of<'r>(rules: &'r Rules, card: &Card, today: i32) -> (&'r str, u32) {
    let index = tier_index(rules, card, today);
    let multiplier = index.map_or(1_000, |i| rules.tiers[i].multiplier_milli);
    (tier_name(rules, index), multiplier)
}

/// The position of the card's tier in `rules.tiers` (`None`: the base tier).
pub fn tier_index(rules: &Rules, card: &Card, today: i32) -> Option<usize> {
    rules.tiers.iter().rposition(|t| reaches(t, card, today))
}

/// The name of the tier at `index` (`None`: the base tier).
pub fn tier_name(rules: &Rules, index: Option<usize>) -> &str {
    index.map_or(BASE_TIER, |i| rules.tiers[i].name.as_str())
}

fn reaches(t: &TierRule, card: &Card, today: i32) -> bool {
    let (spend, visits, best_day) = if t.window_days == 0 {
        let best = match t.min_day_spend_minor {
            0 => 0,
            _ => points::window(&card.loyalty, today, 0).2,
        };
        (card.total_spend, card.visits, best)
    } else {
        points::window(&card.loyalty, today, t.window_days)
    };
    (by_spend(t) && spend >= t.min_spend_minor)
        || (t.min_visits > 0 && visits >= t.min_visits)
        || (t.min_day_spend_minor > 0 && best_day >= t.min_day_spend_minor)
}

/// True if `rules` use any key of the loyalty programme added after the
/// first ledgers (campaigns, expiry, points as payment, store lines, tier
/// windows, day spend, tier lines). Only then does a purchase record name
/// the tier it left (`tier_before`): records under older rules keep the
/// bytes they were written with, so that their ledgers replay.
pub fn names_tier_changes(rules: &Rules) -> bool {
    !rules.campaigns.is_empty()
        || rules.points_expire_after_days > 0
        || rules.points_redemption.is_some()
        || !rules.store_promotions.is_empty()
        || rules
            .tiers
            .iter()
            .any(|t| t.window_days > 0 || t.min_day_spend_minor > 0 || !t.promotion_line.is_empty())
}

/// Days of spend a card keeps for the tiers (0 = none needed).
pub fn day_history(rules: &Rules) -> u32 {
    rules
        .tiers
        .iter()
        .filter(|t| t.window_days > 0 || t.min_day_spend_minor > 0)
        .map(|t| t.window_days.max(1))
        .max()
        .unwrap_or(0)
}

/// The promotion line for a receipt: the card's tier's, else the store's,
/// else the brand's (most specific wins; empty lines do not count).
pub fn promotion_for<'r>(rules: &'r Rules, store: u32, tier: &str) -> &'r str {
    let tier_line = rules
        .tiers
        .iter()
        .find(|t| t.name == tier && !t.promotion_line.is_empty());
    if let Some(t) = tier_line {
        return &t.promotion_line;
    }
    rules
        .store_promotions
        .iter()
        .find(|s| s.store_id == store && store != 0 && !s.line.is_empty())
        .map_or(&rules.promotion_line, |s| &s.line)
}

/// Where and when a purchase is made, for the campaigns.
#[derive(Debug, Clone, Copy)]
pub struct Sale<'a> {
    /// The till's store.
    pub store: u32,
    /// The record's time (Unix ms).
    pub time_ms: i64,
    /// The till's category code ("" = none).
    pub category: &'a str,
}

/// True if campaign `c` covers `sale`: its store (or every store), its
/// category (or every one), and `starts <= time < ends`.
pub fn covers(c: &Campaign, sale: &Sale) -> bool {
    (c.starts_ms..c.ends_ms).contains(&sale.time_ms)
        && (c.category.is_empty() || c.category == sale.category)
        && (c.stores.is_empty() || c.stores.iter().any(|s| s.store_id == sale.store))
}

/// Points earned by spending `amount` at tier multiplier `tier_milli`:
/// floor(amount x points_per_unit x tier x every covering campaign), the
/// multipliers exact in thousandths and rounded down once at the end.
/// `OVERFLOW` only past `MAX_POINTS`-sized results.
pub fn earned(
    rules: &Rules,
    exponent: u32,
    amount: i64,
    tier_milli: u32,
    sale: &Sale,
) -> Result<i64, Refusal> {
    // No campaign in force: nothing to scan or multiply.
    if rules.campaigns.is_empty() {
        return Ok(points_for(rules, exponent, amount, tier_milli));
    }
    let x = i128::from(amount) * i128::from(rules.points_per_unit) * i128::from(tier_milli);
    let d = 10i128.pow(exponent) * 1_000;
    let covering = || rules.campaigns.iter().filter(|c| covers(c, sale));
    // Usually the whole product fits 64 bits: one exact division.
    let (mut num, mut den) = (Some(x), Some(d));
    for c in covering() {
        num = num.and_then(|n| n.checked_mul(i128::from(c.multiplier_milli)));
        den = den.and_then(|n| n.checked_mul(1_000));
    }
    let q = match (
        num.and_then(|n| u64::try_from(n).ok()),
        den.and_then(|n| u64::try_from(n).ok()),
    ) {
        (Some(n), Some(d)) => i128::from(n / d),
        _ => exact_mixed(x, d, covering())?,
    };
    i64::try_from(q).map_err(|_| overflow())
}

fn overflow() -> Refusal {
    Refusal::new(ErrorCode::Overflow, "points would exceed the limit")
}

/// floor(x / d x every multiplier / 1000) for products past 64 bits: the
/// value is kept as q + r/d (r < d, d growing by 1000 a campaign), exact
/// with no big numerator.
fn exact_mixed<'c>(
    x: i128,
    mut d: i128,
    campaigns: impl Iterator<Item = &'c Campaign>,
) -> Result<i128, Refusal> {
    let (mut q, mut r) = (x / d, x % d);
    for c in campaigns {
        let m = i128::from(c.multiplier_milli);
        let qm = q.checked_mul(m).ok_or_else(overflow)?;
        let big = r * m + (qm % 1_000) * d;
        d *= 1_000;
        q = qm / 1_000 + big / d;
        r = big % d;
    }
    Ok(q)
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
                    ..Default::default()
                },
                TierRule {
                    name: "gold".into(),
                    min_spend_minor: 100_000,
                    min_visits: 10,
                    multiplier_milli: 3_800,
                    ..Default::default()
                },
            ],
            ..default_rules()
        }
    }

    fn stores(id: u32) -> bool {
        (1..=3).contains(&id)
    }

    fn campaign(multiplier_milli: u32, starts_ms: i64, ends_ms: i64, stores: &[u32]) -> Campaign {
        Campaign {
            name: "VIP".into(),
            multiplier_milli,
            starts_ms,
            ends_ms,
            stores: stores
                .iter()
                .map(|&store_id| crate::pb::StoreRef { store_id })
                .collect(),
            category: String::new(),
        }
    }

    fn sale(store: u32, time_ms: i64, category: &str) -> Sale<'_> {
        Sale {
            store,
            time_ms,
            category,
        }
    }

    #[test]
    fn campaigns_multiply_exactly_and_round_down_once() {
        let mut r = rules();
        r.campaigns = vec![
            campaign(6_000, 0, 1_000, &[2]),
            campaign(3_800, 0, 1_000, &[]),
        ];
        // 12.34 at tier 2x: store 2 is covered by both campaigns:
        // 12.34 x 2 x 6 x 3.8 = 562.704 -> 562 (rounding each step: 24 -> 144 -> 547).
        assert_eq!(earned(&r, 2, 1_234, 2_000, &sale(2, 10, "")).unwrap(), 562);
        // Store 1: only the all-store campaign: 12.34 x 2 x 3.8 = 93.784 -> 93.
        assert_eq!(earned(&r, 2, 1_234, 2_000, &sale(1, 10, "")).unwrap(), 93);
        // After the end instant neither covers: 24.68 -> 24.
        assert_eq!(
            earned(&r, 2, 1_234, 2_000, &sale(2, 1_000, "")).unwrap(),
            24
        );
        // A category campaign covers only its category.
        r.campaigns = vec![Campaign {
            category: "bakery".into(),
            ..campaign(6_000, 0, 1_000, &[])
        }];
        assert_eq!(
            earned(&r, 2, 1_000, 1_000, &sale(1, 0, "bakery")).unwrap(),
            60
        );
        assert_eq!(earned(&r, 2, 1_000, 1_000, &sale(1, 0, "")).unwrap(), 10);
    }

    #[test]
    fn the_64_bit_division_and_the_mixed_fraction_agree() {
        let ms = [
            1u32,
            999,
            1_000,
            1_001,
            3_800,
            6_000,
            99_999,
            MAX_MULTIPLIER_MILLI,
        ];
        for (i, amount) in [1i64, 7, 1_234, 99_999, 123_456_789, MAX_AMOUNT_MINOR]
            .into_iter()
            .enumerate()
        {
            for k in 0..=3usize {
                let campaigns: Vec<Campaign> = (0..k)
                    .map(|j| campaign(ms[(i + 3 * j) % ms.len()], 0, 10, &[]))
                    .collect();
                let x = i128::from(amount) * 7 * i128::from(ms[(i + k) % ms.len()]);
                let mixed = exact_mixed(x, 100_000, campaigns.iter()).unwrap();
                let num = campaigns
                    .iter()
                    .fold(x, |n, c| n * i128::from(c.multiplier_milli));
                let den = 100_000 * 1_000i128.pow(k as u32);
                assert_eq!(mixed, num / den, "amount {amount}, {k} campaigns");
            }
        }
    }

    #[test]
    fn the_largest_multipliers_still_compute_exactly() {
        let mut r = rules();
        r.points_per_unit = MAX_POINTS_PER_UNIT;
        r.campaigns = vec![campaign(MAX_MULTIPLIER_MILLI, 0, 10, &[]); MAX_CAMPAIGNS];
        // Over the limit of points: refused as an overflow, no panic.
        let e = earned(
            &r,
            4,
            MAX_AMOUNT_MINOR,
            MAX_MULTIPLIER_MILLI,
            &sale(1, 0, ""),
        );
        assert_eq!(e.unwrap_err().code, ErrorCode::Overflow);
        // 0.0001 x 1000 points x 1.001^8 = 0.1008... -> 0; x1.5^2 at 2 units -> 0.45 -> 0.
        r.campaigns = vec![campaign(1_001, 0, 10, &[]); MAX_CAMPAIGNS];
        assert_eq!(earned(&r, 4, 1, 1_000, &sale(1, 0, "")).unwrap(), 0);
        r.points_per_unit = 1;
        r.campaigns = vec![campaign(1_500, 0, 10, &[]); 2];
        // 3.00 x 1.5 x 1.5 = 6.75 -> 6.
        assert_eq!(earned(&r, 2, 300, 1_000, &sale(1, 0, "")).unwrap(), 6);
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
        assert_eq!(tier_of(&r, &c, 0).0, "silver");
        c.visits = 10;
        assert_eq!(tier_of(&r, &c, 0), ("gold", 3_800));
        c.visits = 0;
        c.total_spend = 100_000;
        assert_eq!(tier_of(&r, &c, 0).0, "gold");
    }

    #[test]
    fn window_and_day_spend_tiers() {
        let mut r = rules();
        r.tiers[1].window_days = 7;
        r.tiers.push(TierRule {
            name: "vip".into(),
            min_day_spend_minor: 50_000,
            multiplier_milli: 6_000,
            ..Default::default()
        });
        let mut c = Card::default();
        points::add_day_spend(&mut c.loyalty, 100, 100, 7, 60_000);
        points::add_day_spend(&mut c.loyalty, 103, 103, 7, 40_000);
        c.total_spend = 100_000;
        // One day of 600.00: vip for good (no window on it).
        assert_eq!(tier_of(&r, &c, 103).0, "vip");
        r.tiers.pop();
        // 1000.00 in the 7 days to day 106: gold; on day 107 day 100 left.
        assert_eq!(tier_of(&r, &c, 106).0, "gold");
        assert_eq!(tier_of(&r, &c, 107).0, "silver");
    }

    #[test]
    fn an_entry_threshold_and_visits_in_a_window() {
        let mut r = rules();
        r.tiers[0].min_spend_minor = 50_000; // silver needs 500.00 first
        r.tiers[1].window_days = 3;
        let mut c = Card {
            total_spend: 49_999,
            ..Card::default()
        };
        assert_eq!(tier_of(&r, &c, 10).0, BASE_TIER);
        c.total_spend = 50_000;
        assert_eq!(tier_of(&r, &c, 10).0, "silver");
        // Gold by 10 visits within 3 days is out of reach; by spend in them
        // it is not (1,000.00 on day 9, seen from day 11 but not 12).
        c.visits = 10;
        assert_eq!(tier_of(&r, &c, 10).0, "silver");
        points::add_day_spend(&mut c.loyalty, 9, 9, 3, 100_000);
        assert_eq!(tier_of(&r, &c, 11).0, "gold");
        assert_eq!(tier_of(&r, &c, 12).0, "silver");
    }

    #[test]
    fn the_most_specific_promotion_line_wins() {
        let mut r = rules();
        r.promotion_line = "brand".into();
        r.store_promotions = vec![crate::pb::StorePromotion {
            store_id: 2,
            line: "store two".into(),
        }];
        r.tiers[1].promotion_line = "gold line".into();
        assert_eq!(promotion_for(&r, 1, "silver"), "brand");
        assert_eq!(promotion_for(&r, 2, "silver"), "store two");
        assert_eq!(promotion_for(&r, 2, "gold"), "gold line");
    }

    #[test]
    fn validation_refuses_unordered_and_oversized() {
        let mut r = rules();
        assert!(validate(&r, &stores).is_ok());
        r.bonus_tiers.swap(0, 1);
        assert_eq!(
            validate(&r, &stores).unwrap_err().code,
            ErrorCode::InvalidArgument
        );
        let mut r = rules();
        r.tiers[1].multiplier_milli = MAX_MULTIPLIER_MILLI + 1;
        assert!(validate(&r, &stores).is_err());
    }

    /// Each bad rule is refused with a message that starts with its field.
    #[test]
    fn bad_rules_are_refused_naming_the_field() {
        type Spoil = Box<dyn Fn(&mut Rules)>;
        let cases: Vec<(&str, Spoil)> = vec![
            (
                "tiers[1].min_spend_minor",
                Box::new(|r| r.tiers[1].min_spend_minor = 0),
            ),
            (
                "tiers[1].multiplier_milli",
                Box::new(|r| r.tiers[1].multiplier_milli = 0),
            ),
            (
                "campaigns[0].multiplier_milli",
                Box::new(|r| r.campaigns[0].multiplier_milli = 0),
            ),
            (
                "campaigns[0].multiplier_milli",
                Box::new(|r| r.campaigns[0].multiplier_milli = MAX_MULTIPLIER_MILLI + 1),
            ),
            (
                "campaigns[0].ends",
                Box::new(|r| r.campaigns[0].ends_ms = 5),
            ),
            (
                "campaigns[0].stores",
                Box::new(|r| r.campaigns[0].stores[0].store_id = 9),
            ),
            (
                "store_promotions",
                Box::new(|r| r.store_promotions[0].store_id = 4),
            ),
            (
                "points_redemption",
                Box::new(|r| r.points_redemption = Some(Default::default())),
            ),
            (
                "points_expire_after_days",
                Box::new(|r| r.points_expire_after_days = MAX_POINTS_EXPIRE_DAYS + 1),
            ),
        ];
        for (field, spoil) in cases {
            let mut r = rules();
            r.campaigns = vec![campaign(6_000, 5, 10, &[1])];
            r.store_promotions = vec![crate::pb::StorePromotion {
                store_id: 3,
                line: "three".into(),
            }];
            assert!(validate(&r, &stores).is_ok());
            spoil(&mut r);
            let e = validate(&r, &stores).unwrap_err();
            assert!(e.message.starts_with(field), "{field}: {}", e.message);
        }
    }
}
