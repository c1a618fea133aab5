//! The activity report's pages: the records of one card or one store,
//! read from storage in sequence order, a bounded page at a time.
//!
//! The state machine turns the days asked for into a range of sequence
//! numbers (`GetReport` kind `activity`, from the books' first record of
//! each day); this reads that range (`activity-scan`), examining at most
//! `MAX_ACTIVITY_SCAN` records and returning at most `MAX_ACTIVITY_ROWS`, with
//! the sequence number to go on from (`next_cursor`, 0 = done). A page
//! costs the same whatever the ledger's length.
use prost::Message;

use crate::error::Refusal;
use crate::limits::{MAX_ACTIVITY_ROWS, MAX_ACTIVITY_SCAN};
use crate::pb::{self, report_cell::Value as Cell, ErrorCode as E, Record};
use crate::storage::LogStore;

fn int(v: i64) -> pb::ReportCell {
    pb::ReportCell {
        value: Some(Cell::Int(v)),
    }
}

fn text(v: impl Into<String>) -> pb::ReportCell {
    pb::ReportCell {
        value: Some(Cell::Text(v.into())),
    }
}

/// The columns of an activity row.
pub const COLUMNS: [&str; 12] = [
    "seq",
    "time",
    "kind",
    "card",
    "store_id",
    "terminal_id",
    "operator",
    "amount_minor",
    "paid_minor",
    "bonus_minor",
    "balance_after_minor",
    // An owner's correction: why (the operator is in its own column).
    "reason",
];

/// True if `rec` belongs to the card (or the store) asked for.
fn wanted(rec: &Record, r: &pb::GetReport) -> bool {
    if !r.card.is_empty() {
        rec.card == r.card || rec.other_card == r.card
    } else {
        r.store_id.is_some_and(|s| s == rec.store_id) && rec.card.len() == 19
    }
}

fn row(seq: u64, rec: &Record) -> Vec<pb::ReportCell> {
    let paid = rec.paid_in_minor - rec.paid_out_minor;
    let bonus = rec.bonus_in_minor - rec.bonus_out_minor;
    let time = jiff::Timestamp::from_millisecond(rec.time_ms)
        .map_or_else(|_| rec.time_ms.to_string(), |t| t.to_string());
    let kind = rec.kind().as_str_name().to_ascii_lowercase();
    vec![
        int(i64::try_from(seq).unwrap_or(i64::MAX)),
        text(time),
        text(kind),
        text(rec.card.clone()),
        int(i64::from(rec.store_id)),
        int(i64::from(rec.terminal_id)),
        text(rec.operator.clone()),
        int(paid + bonus),
        int(paid),
        int(bonus),
        int(rec.paid_balance_after_minor + rec.bonus_balance_after_minor),
        text(rec.reason.clone()),
    ]
}

/// One page of the activity of `r.card` (or `r.store_id`) in brand
/// `brand`, from `r.cursor` up to `r.end_seq` (0 = the chain's end).
pub fn scan_page(
    store: &dyn LogStore,
    brand: u32,
    r: &pb::GetReport,
) -> Result<pb::Report, Refusal> {
    if r.card.is_empty() && r.store_id.is_none() {
        return Err(Refusal::new(
            E::InvalidArgument,
            "activity needs a card or a store",
        ));
    }
    let failed = |e: &dyn std::fmt::Display| {
        Refusal::new(E::StorageFailure, format!("reading the ledger: {e}"))
    };
    let mut rows = Vec::new();
    let mut next = 0;
    for (examined, item) in store.scan(brand, r.cursor.max(1)).enumerate() {
        let (seq, bytes) = item.map_err(|e| failed(&e))?;
        if r.end_seq != 0 && seq >= r.end_seq {
            break;
        }
        if examined >= MAX_ACTIVITY_SCAN || rows.len() >= MAX_ACTIVITY_ROWS {
            next = seq;
            break;
        }
        let rec = Record::decode(bytes.as_slice()).map_err(|e| failed(&e))?;
        if wanted(&rec, r) {
            rows.push(pb::ReportRow {
                cells: row(seq, &rec),
            });
        }
    }
    Ok(pb::Report {
        kind: "activity".into(),
        sections: vec![pb::ReportSection {
            name: "activity".into(),
            columns: COLUMNS.iter().map(|c| c.to_string()).collect(),
            rows,
        }],
        next_cursor: next,
        ..Default::default()
    })
}
