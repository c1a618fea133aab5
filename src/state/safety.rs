//! The card's safety rules that `apply` consults: the prepaid limits
//! (maximum balance for named and anonymous cards, maximum single top-up,
//! daily spend per card) and the card's validity.
//!
//! Limits bind loads and spends only. A refund or a reversal gives back
//! value the card held before, so it is never refused for a limit, even
//! when the owner lowered the limit since or the card would then hold
//! more than it may be loaded to: refusing it would keep the customer's
//! money on the merchant's side of a mistake. The balance limit is checked
//! on paid plus bonus value after the load (MOFCOM counts the card's
//! whole value).
use super::{BrandState, Card};
use crate::error::{refuse, Refusal};
use crate::limits::MAX_BALANCE_MINOR;
use crate::pb::{ErrorCode as E, Rules};

/// The limits in force for one brand, defaults resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CardLimits {
    /// Most a named card may hold (paid + bonus).
    pub named: i64,
    /// Most an anonymous card may hold.
    pub anonymous: i64,
    /// Largest single top-up (0 = only the daemon's `MAX_AMOUNT_MINOR`).
    pub top_up: i64,
    /// Most one card may spend per brand day (0 = no limit).
    pub daily_spend: i64,
}

/// The default maximum balances of a currency, (named, anonymous), in its
/// minor units: the MOFCOM figures for CNY (5,000 and 1,000 yuan), the
/// daemon's own cap elsewhere.
pub fn default_balance_limits(currency: &str, exponent: u32) -> (i64, i64) {
    let unit = 10i64.pow(exponent.min(4));
    match currency {
        "CNY" => (5_000 * unit, 1_000 * unit),
        _ => (MAX_BALANCE_MINOR, MAX_BALANCE_MINOR),
    }
}

/// The brand's limits: the rules' figures; where a balance limit is 0, the
/// currency's default if the rules ask for it (`currency_default_limits`,
/// off in rules older than the limits: their chains replay unchanged),
/// else the daemon's cap.
pub fn card_limits(rules: &Rules, currency: &str, exponent: u32) -> CardLimits {
    let (named, anonymous) = if rules.currency_default_limits {
        default_balance_limits(currency, exponent)
    } else {
        (MAX_BALANCE_MINOR, MAX_BALANCE_MINOR)
    };
    let or = |rule: i64, default: i64| if rule > 0 { rule } else { default };
    CardLimits {
        named: or(rules.max_balance_named_minor, named),
        anonymous: or(rules.max_balance_anonymous_minor, anonymous),
        top_up: rules.max_top_up_minor,
        daily_spend: rules.max_daily_spend_minor,
    }
}

fn limits_of(state: &BrandState) -> CardLimits {
    card_limits(&state.rules, &state.currency, state.exponent)
}

fn exceeded(limit: &str, detail: String) -> Result<(), Refusal> {
    refuse(E::LimitExceeded, format!("limit {limit}: {detail}"))
}

/// A load of `amount` (face value) onto `after`, the card as it would be
/// once loaded: the single top-up limit, then the balance limit of the
/// card's kind. The message names the rule key of the limit crossed.
pub fn check_load(state: &BrandState, amount: i64, after: &Card) -> Result<(), Refusal> {
    let limits = limits_of(state);
    if limits.top_up > 0 && amount > limits.top_up {
        return exceeded(
            "max_top_up_minor",
            format!("a single top-up is at most {} minor units", limits.top_up),
        );
    }
    check_balance(&limits, after)
}

/// The balance limit of the card's kind, on the card after a load.
pub fn check_balance_after(state: &BrandState, after: &Card) -> Result<(), Refusal> {
    check_balance(&limits_of(state), after)
}

fn check_balance(limits: &CardLimits, after: &Card) -> Result<(), Refusal> {
    let (max, key) = if after.named {
        (limits.named, "max_balance_named_minor")
    } else {
        (limits.anonymous, "max_balance_anonymous_minor")
    };
    let balance = after.paid.saturating_add(after.bonus);
    if balance > max {
        return exceeded(
            key,
            format!("the card would hold {balance} minor units, at most {max} minor units"),
        );
    }
    Ok(())
}

/// A spend of `amount` on `card` on brand day `day`: the daily limit.
/// Updates the copy's day tally (the caller commits the copy only when
/// the record is written).
pub fn spend_today(
    state: &BrandState,
    card: &mut Card,
    day: i32,
    amount: i64,
) -> Result<(), Refusal> {
    let spent = if card.spend_day == day {
        card.spent_today
    } else {
        0
    };
    let total = spent.saturating_add(amount);
    let limit = limits_of(state).daily_spend;
    if limit > 0 && total > limit {
        return exceeded(
            "max_daily_spend_minor",
            format!("the card has spent {spent} minor units of {limit} minor units today"),
        );
    }
    card.spend_day = day;
    card.spent_today = total;
    Ok(())
}

/// A reversed purchase of `amount` made on brand day `day` no longer
/// counts against that day's spend (a mis-rung sale, reversed and rung
/// again, is spent once).
pub fn unspend(card: &mut Card, day: i32, amount: i64) {
    if card.spend_day == day {
        card.spent_today = (card.spent_today - amount).max(0);
    }
}

/// `CARD_EXPIRED` when the record's own time is at or past the card's
/// expiry (0 = never): the record's time, not a clock, so replay agrees.
pub fn check_not_expired(card: &Card, time_ms: i64) -> Result<(), Refusal> {
    if card.expires_ms != 0 && time_ms >= card.expires_ms {
        return refuse(
            E::CardExpired,
            "the card's validity has ended; the owner can extend it",
        );
    }
    Ok(())
}

/// The expiry of a card issued at `time_ms` under `rules` (0 = never).
pub fn expiry_at_issue(rules: &Rules, time_ms: i64) -> i64 {
    match rules.card_validity_days {
        0 => 0,
        days => time_ms.saturating_add(i64::from(days) * 86_400_000),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cny_state() -> BrandState {
        let mut s = BrandState::new(1);
        s.currency = "CNY".into();
        s.exponent = 2;
        s.rules.currency_default_limits = true;
        s
    }

    fn card(paid: i64, bonus: i64, named: bool) -> Card {
        Card {
            paid,
            bonus,
            named,
            ..Card::default()
        }
    }

    fn refused_limit(r: Result<(), Refusal>) -> String {
        let e = r.expect_err("over the limit");
        assert_eq!(e.code, E::LimitExceeded);
        e.message
    }

    #[test]
    fn cny_defaults_are_the_mofcom_figures() {
        let s = cny_state();
        assert!(check_load(&s, 100, &card(90_000, 10_000, false)).is_ok());
        let m = refused_limit(check_load(&s, 100, &card(90_000, 10_001, false)));
        assert!(m.contains("max_balance_anonymous_minor"), "{m}");
        assert!(check_load(&s, 100, &card(500_000, 0, true)).is_ok());
        let m = refused_limit(check_load(&s, 100, &card(500_001, 0, true)));
        assert!(m.contains("max_balance_named_minor"), "{m}");
    }

    #[test]
    fn rules_override_and_other_currencies_keep_the_cap() {
        let mut s = cny_state();
        s.rules.max_balance_anonymous_minor = 50_000;
        s.rules.max_top_up_minor = 20_000;
        refused_limit(check_load(&s, 100, &card(50_001, 0, false)));
        let m = refused_limit(check_load(&s, 20_001, &card(20_001, 0, false)));
        assert!(m.contains("max_top_up_minor"), "{m}");
        let mut eur = BrandState::new(2);
        eur.currency = "EUR".into();
        eur.exponent = 2;
        eur.rules.currency_default_limits = true;
        assert!(check_load(&eur, 1, &card(MAX_BALANCE_MINOR, 0, false)).is_ok());
        // Rules from before the limits: no default applies.
        let mut old = cny_state();
        old.rules.currency_default_limits = false;
        assert!(check_load(&old, 1, &card(MAX_BALANCE_MINOR, 0, false)).is_ok());
    }

    #[test]
    fn the_daily_spend_resets_on_a_new_day_and_reversal_gives_back() {
        let mut s = cny_state();
        s.rules.max_daily_spend_minor = 1_000;
        let mut c = card(0, 0, false);
        spend_today(&s, &mut c, 10, 600).unwrap();
        refused_limit(spend_today(&s, &mut c.clone(), 10, 401));
        unspend(&mut c, 10, 600);
        spend_today(&s, &mut c, 10, 1_000).unwrap();
        spend_today(&s, &mut c, 11, 1_000).unwrap();
        assert_eq!((c.spend_day, c.spent_today), (11, 1_000));
    }

    #[test]
    fn expiry_is_decided_by_the_record_time() {
        let c = Card {
            expires_ms: 1_000,
            ..Card::default()
        };
        assert!(check_not_expired(&c, 999).is_ok());
        assert_eq!(
            check_not_expired(&c, 1_000).unwrap_err().code,
            E::CardExpired
        );
        assert!(check_not_expired(&Card::default(), i64::MAX).is_ok());
    }
}
