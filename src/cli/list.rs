//! `cardd admin list stores|terminals|cards` and `cardd admin rules`:
//! listings from the daemon's state, and the rules in force printed as a
//! file `cardd admin set-rules --file` accepts.
use std::process::ExitCode;

use clap::Subcommand;
use serde_json::{json, Value};

use cardd::client::AnyClient;
use cardd::pb::{self, request::Op, CardStatus};

use super::report::Format;

/// What `cardd admin list` lists.
#[derive(Subcommand)]
pub enum ListKind {
    /// Stores: name, terminals, last activity.
    #[command(after_help = "Example:\n  cardd admin --key owner.key list stores")]
    Stores,
    /// Terminals: store, label, status, last transaction, last activity.
    #[command(after_help = "Example:\n  cardd admin --key owner.key list terminals --store 2")]
    Terminals {
        /// Only this store's.
        #[arg(long)]
        store: Option<u32>,
    },
    /// Cards in number order, a page at a time.
    #[command(after_help = "Example:\n  cardd admin --key owner.key list cards --status blocked")]
    Cards {
        /// Only cards with this status.
        #[arg(long, value_parser = ["active", "blocked", "replaced"])]
        status: Option<String>,
        /// The page after this card number (the `more:` line of a page).
        #[arg(long, default_value_t = 0)]
        cursor: u64,
    },
}

/// The request for a listing.
pub fn request_for(kind: ListKind) -> pb::GetReport {
    match kind {
        ListKind::Stores => pb::GetReport {
            kind: "stores".into(),
            ..Default::default()
        },
        ListKind::Terminals { store } => pb::GetReport {
            kind: "terminals".into(),
            store_id: store,
            ..Default::default()
        },
        ListKind::Cards { status, cursor } => {
            let status = match status.as_deref() {
                Some("active") => CardStatus::Active as u32,
                Some("blocked") => CardStatus::Blocked as u32,
                Some("replaced") => CardStatus::Replaced as u32,
                _ => 0,
            };
            pb::GetReport {
                kind: "cards".into(),
                cursor,
                status,
                ..Default::default()
            }
        }
    }
}

/// Prints the rules in force as the JSON file `set-rules` reads.
pub async fn print_rules(client: &mut AnyClient, format: Format) -> anyhow::Result<ExitCode> {
    let req = client.request(
        0,
        Op::Report(pb::GetReport {
            kind: "rules".into(),
            ..Default::default()
        }),
    );
    match client.call(&req).await {
        Ok(reply) => {
            let rules = reply.report.and_then(|r| r.rules).unwrap_or_default();
            outln!("{}", serde_json::to_string_pretty(&rules_file(&rules))?);
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => super::report::failed(e, format),
    }
}

/// The rules in the JSON form of `cardd admin set-rules` (README).
pub fn rules_file(r: &pb::Rules) -> Value {
    let bonus: Vec<Value> = r
        .bonus_tiers
        .iter()
        .map(|b| {
            json!({
                "min_load_minor": b.min_load_minor,
                "fixed_bonus_minor": b.fixed_bonus_minor,
                "bonus_bps": b.bonus_bps,
            })
        })
        .collect();
    let tiers: Vec<Value> = r
        .tiers
        .iter()
        .map(|t| {
            json!({
                "name": t.name,
                "min_spend_minor": t.min_spend_minor,
                "min_visits": t.min_visits,
                "multiplier_milli": t.multiplier_milli,
                "window_days": t.window_days,
                "min_day_spend_minor": t.min_day_spend_minor,
                "promotion_line": t.promotion_line,
            })
        })
        .collect();
    let mut rules = json!({
        "bonus_tiers": bonus,
        "points_per_unit": r.points_per_unit,
        "tiers": tiers,
        "promotion_line": r.promotion_line,
        "time_zone": r.time_zone,
        "max_balance_named_minor": r.max_balance_named_minor,
        "max_balance_anonymous_minor": r.max_balance_anonymous_minor,
        "max_top_up_minor": r.max_top_up_minor,
        "max_daily_spend_minor": r.max_daily_spend_minor,
        "card_validity_days": r.card_validity_days,
        "currency_default_limits": r.currency_default_limits,
        "exact_refunds": r.exact_refunds,
        "campaigns": r.campaigns.iter().map(campaign_file).collect::<Vec<_>>(),
        "points_expire_after_days": r.points_expire_after_days,
        "points_redemption": r.points_redemption.as_ref().map(|p| json!({
            "points": p.points,
            "value_minor": p.value_minor,
        })),
        "store_promotions": r.store_promotions.iter().map(|s| json!({
            "store_id": s.store_id,
            "line": s.line,
        })).collect::<Vec<_>>(),
    });
    // The PIN rules only when set: a brand without them reads as before.
    if r.pin_all_spends || r.pin_over_minor != 0 {
        rules["pin_all_spends"] = json!(r.pin_all_spends);
        rules["pin_over_minor"] = json!(r.pin_over_minor);
    }
    rules
}

/// A campaign as the rules file writes it: times in RFC 3339 (UTC).
fn campaign_file(c: &pb::Campaign) -> Value {
    let time = |ms: i64| {
        jiff::Timestamp::from_millisecond(ms).map_or_else(|_| ms.to_string(), |t| t.to_string())
    };
    let mut v = json!({
        "name": c.name,
        "multiplier_milli": c.multiplier_milli,
        "starts": time(c.starts_ms),
        "ends": time(c.ends_ms),
        "stores": c.stores.iter().map(|s| s.store_id).collect::<Vec<_>>(),
    });
    if !c.category.is_empty() {
        v["category"] = json!(c.category);
    }
    v
}
