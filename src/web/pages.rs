//! Which reports each page shows, and the read that answers them on the
//! brand's writer: the same `reports::report` that `GetReport` calls, with
//! the same store-manager scope, so a page's figures are the report's.
use std::collections::{BTreeMap, HashMap};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::oneshot;

use super::logins::Grant;
use super::Brands;
use crate::error::Refusal;
use crate::pb::{self, ErrorCode as E};
use crate::server::writer::{Deliver, ReadFn};
use crate::state::books::{day_of_text, day_text};
use crate::state::{reports, BrandState, Principal};

/// Days the overview's chart covers (the sales report's default span).
pub const CHART_DAYS: i32 = 30;

/// The pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Page {
    /// Today and this month per store, outstanding value, 30-day chart.
    Overview,
    /// The netted matrix of who owes whom over a period.
    Settlement,
    /// Outstanding value by store of issue, and its aging.
    Liability,
    /// Dormant cards to call, and RFM segments.
    Members,
    /// One card by number, and a page of its records.
    Card,
    /// One record by sequence number, with its hash.
    Record,
}

/// What a page was asked for (its query string, checked).
#[derive(Clone, Debug, Default)]
pub struct Query {
    /// First day (settlement), `YYYY-MM-DD`; empty = the month's first.
    pub from: String,
    /// Last day (settlement); empty = today.
    pub to: String,
    /// Dormant: days without a visit (0 = the report's default).
    pub idle_days: u32,
    /// The card asked for (card page).
    pub card: String,
    /// Card page: its records from this sequence number on (0 = the
    /// start of the range).
    pub cursor: u64,
    /// Record page: the record.
    pub seq: u64,
}

/// One report on a page: its request and the answer.
pub struct Shown {
    /// What was asked.
    pub request: pb::GetReport,
    /// The report, or why it was refused (shown in its place).
    pub answer: Result<pb::Report, Refusal>,
}

/// Everything one page shows, read from one state.
pub struct Snapshot {
    /// The brand's name.
    pub brand: String,
    /// ISO 4217 code and minor-unit exponent.
    pub currency: (String, u32),
    /// The brand day the page was read on.
    pub today: i32,
    /// The query, with the defaults filled in.
    pub query: Query,
    /// Store names by id (the brand's, for labels).
    pub stores: BTreeMap<u32, String>,
    /// The page's reports, in the order shown.
    pub reports: Vec<Shown>,
    /// The card page's card (None: none asked).
    pub card: Option<Result<pb::CardView, Refusal>>,
    /// The brand's time zone (IANA name, "" = UTC), for times shown.
    pub zone: String,
    /// The record page's record (None: none asked).
    pub record: Option<Result<Stored, Refusal>>,
}

/// A record read from storage: its sequence number, the record, its hash.
pub type Stored = (u64, pb::Record, [u8; 32]);

impl Page {
    /// The page's name (its path and its CSV's).
    pub fn name(self) -> &'static str {
        match self {
            Page::Overview => "overview",
            Page::Settlement => "settlement",
            Page::Liability => "liability",
            Page::Members => "members",
            Page::Card => "card",
            Page::Record => "record",
        }
    }

    /// The page named `name`.
    pub fn from_name(name: &str) -> Option<Page> {
        [
            Page::Overview,
            Page::Settlement,
            Page::Liability,
            Page::Members,
            Page::Card,
        ]
        .into_iter()
        .find(|p| p.name() == name)
    }

    /// The page's query from the request's parameters.
    pub fn query(self, params: &HashMap<String, String>) -> Query {
        let get = |k: &str| params.get(k).cloned().unwrap_or_default();
        Query {
            from: get("from"),
            to: get("to"),
            idle_days: get("idle_days").parse().unwrap_or(0),
            card: get("card"),
            cursor: get("cursor").parse().unwrap_or(0),
            seq: get("seq").parse().unwrap_or(0),
        }
    }

    /// The reports the page shows on `today`; fills the query's defaults.
    fn requests(self, query: &mut Query, today: i32, scoped: bool) -> Vec<pb::GetReport> {
        let day = day_text(today);
        let month_start = day_text(month_start(today));
        let sales = |from: &str, to: &str, by: &str| pb::GetReport {
            kind: "sales".into(),
            from: from.into(),
            to: to.into(),
            by: by.into(),
            ..Default::default()
        };
        let kind = |k: &str| pb::GetReport {
            kind: k.into(),
            ..Default::default()
        };
        match self {
            Page::Overview => vec![
                sales(&day, &day, "store"),
                sales(&month_start, &day, "store"),
                kind("liability"),
                sales(&day_text(today - (CHART_DAYS - 1)), &day, "day"),
            ],
            Page::Settlement => {
                if query.from.is_empty() {
                    query.from = month_start;
                }
                if query.to.is_empty() {
                    query.to = day;
                }
                vec![pb::GetReport {
                    from: query.from.clone(),
                    to: query.to.clone(),
                    ..kind("settlement")
                }]
            }
            Page::Liability => vec![kind("liability")],
            Page::Members => vec![
                pb::GetReport {
                    idle_days: query.idle_days,
                    ..kind("dormant")
                },
                kind("rfm"),
            ],
            // The card's records over the chart's days: first the range of
            // sequence numbers (from the books), then the page from storage
            // (`from_storage`). A store manager reads no card.
            Page::Card if !query.card.is_empty() && !scoped => vec![pb::GetReport {
                card: query.card.clone(),
                from: day_text(today - (CHART_DAYS - 1)),
                to: day,
                cursor: query.cursor,
                ..kind("activity")
            }],
            Page::Card | Page::Record => vec![],
        }
    }
}

/// The first day of `day`'s month.
fn month_start(day: i32) -> i32 {
    let text = day_text(day);
    day_of_text(&format!("{}01", &text[..8])).unwrap_or(day)
}

/// The read for `page`: on the writer, the reports for `grant` (None when
/// its key was removed), delivered to `tx` once durable.
pub fn read(
    page: Page,
    mut query: Query,
    grant: Grant,
    tx: oneshot::Sender<Option<Snapshot>>,
) -> ReadFn {
    Box::new(move |state: &BrandState| -> Deliver {
        let snapshot = key_live(state, grant.principal, &grant.key).then(|| {
            let now_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
            let today = state.books.day_of(&state.rules.time_zone, now_ms);
            let reports = page
                .requests(&mut query, today, grant.scope().is_some())
                .into_iter()
                .map(|request| Shown {
                    answer: reports::report(state, &request, now_ms, today, grant.scope()),
                    request,
                })
                .collect();
            let card = (page == Page::Card && !query.card.is_empty())
                .then(|| card(state, &query.card, grant, now_ms));
            Snapshot {
                brand: state.name.clone(),
                currency: (state.currency.clone(), state.exponent),
                today,
                stores: state
                    .stores
                    .iter()
                    .map(|(id, s)| (*id, s.name.clone()))
                    .collect(),
                query,
                reports,
                card,
                zone: state.rules.time_zone.clone(),
                record: None,
            }
        });
        Box::new(move || {
            let _ = tx.send(snapshot);
        })
    })
}

/// The owner, or a read-only key not removed (sessions outlive nothing).
/// The session's key is still the brand's: an owner key rotated away (or
/// a read-only key removed) ends what it opened at once.
fn key_live(state: &BrandState, principal: Principal, key: &[u8; 32]) -> bool {
    match principal {
        Principal::Owner => state.owner_key == *key,
        Principal::Auditor(id) | Principal::StoreManager(id, _) => state
            .read_keys
            .get(&id)
            .is_some_and(|k| !k.removed && k.public_key == *key),
        _ => false,
    }
}

/// One card by number, as an inquiry shows it; a store manager reads its
/// store's figures, not cards (as with `GetReport`).
fn card(
    state: &BrandState,
    number: &str,
    grant: Grant,
    now_ms: i64,
) -> Result<pb::CardView, Refusal> {
    if grant.scope().is_some() {
        return Err(Refusal::new(
            E::WrongRole,
            "a store manager reads its store's figures, not a card's",
        ));
    }
    crate::card_number::parse_number(number)
        .filter(|(brand, _)| *brand == state.brand_id)
        .and_then(|(_, n)| state.cards.get(&n).map(|c| state.card_view(n, c, now_ms)))
        .ok_or_else(|| Refusal::new(E::CardNotFound, "card not found"))
}

/// The part of a page read from durable storage, after the state read:
/// the card page's records (the activity range becomes its page) and the
/// record page's record. Only what the grant may read: a store manager
/// reads its own store's records.
pub async fn from_storage(brands: &dyn Brands, page: Page, grant: Grant, snap: &mut Snapshot) {
    if let Some(shown) = snap
        .reports
        .first_mut()
        .filter(|s| s.request.kind == "activity")
    {
        if let Ok(range) = &shown.answer {
            let scan = scan_request(range, &shown.request);
            let answer = brands.activity(grant, scan.clone()).await;
            *shown = Shown {
                request: scan,
                answer,
            };
        }
    }
    if page == Page::Record && snap.query.seq != 0 {
        let seq = snap.query.seq;
        let stored = brands.record(grant, seq).await;
        snap.record = Some(stored.and_then(|bytes| {
            let missing = || Refusal::new(E::InvalidArgument, format!("no record {seq}"));
            let bytes = bytes.ok_or_else(missing)?;
            let rec = <pb::Record as prost::Message>::decode(bytes.as_slice())
                .map_err(|e| Refusal::new(E::StorageFailure, format!("record {seq}: {e}")))?;
            if grant.scope().is_some_and(|s| s != rec.store_id) {
                return Err(Refusal::new(
                    E::WrongRole,
                    "a store manager reads its own store's records",
                ));
            }
            Ok((seq, rec, crate::crypto::leaf_hash(&bytes)))
        }));
    }
}

/// The activity page's scan for the range the books answered (as
/// `cardd admin report activity` asks it).
fn scan_request(range: &pb::Report, asked: &pb::GetReport) -> pb::GetReport {
    let cells: Vec<Option<&pb::report_cell::Value>> = range
        .sections
        .first()
        .and_then(|s| s.rows.first())
        .map(|r| r.cells.iter().map(|c| c.value.as_ref()).collect())
        .unwrap_or_default();
    let int = |i: usize| match cells.get(i) {
        Some(Some(pb::report_cell::Value::Int(v))) => u64::try_from(*v).unwrap_or(0),
        _ => 0,
    };
    let card = match cells.get(2) {
        Some(Some(pb::report_cell::Value::Text(t))) => t.clone(),
        _ => asked.card.clone(),
    };
    pb::GetReport {
        kind: "activity-scan".into(),
        cursor: int(0),
        end_seq: int(1),
        card,
        ..Default::default()
    }
}
