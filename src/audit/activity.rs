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
use crate::limits::{MAX_ACTIVITY_ROWS, MAX_ACTIVITY_SCAN, MAX_REPORT_BYTES};

/// A row's field key and length prefix in its section (at most 1 + 3
/// bytes for a row under 2 MiB), beside the row's own encoding.
const ROW_FRAMING: usize = 4;
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
    let mut page_bytes = 0;
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
            let found = pb::ReportRow {
                cells: row(seq, &rec),
            };
            // A page fits one answer frame: a row that would not fit opens
            // the next page (rows of long operator names and reasons are
            // larger than MAX_ACTIVITY_ROWS allows for).
            let size = prost::Message::encoded_len(&found) + ROW_FRAMING;
            if page_bytes + size > MAX_REPORT_BYTES {
                next = seq;
                break;
            }
            page_bytes += size;
            rows.push(found);
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::ledger::Submission;
    use crate::limits::MAX_TEXT_BYTES;
    use crate::pb::request::Op;
    use crate::state::Principal;
    use crate::testing;

    /// Owner corrections with the longest operator name and reason, and
    /// amounts of ten-byte varints: rows larger than MAX_ACTIVITY_ROWS
    /// allows for. A page stops before it outgrows one answer frame, and
    /// the next page goes on from there.
    #[test]
    fn a_page_fits_one_frame_and_the_next_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn LogStore> =
            Arc::new(crate::storage::DiskStore::open(dir.path()).unwrap());
        let (mut ledger, card) = testing::provision(store.clone(), "s", 10_000);
        let (long, owner) = ("x".repeat(MAX_TEXT_BYTES), testing::owner_key());
        let subs: Vec<Submission> = (0..MAX_ACTIVITY_ROWS as u64)
            .map(|i| {
                let op = Op::AdjustCard(pb::AdjustCard {
                    card: card.clone(),
                    amount_minor: if i % 2 == 0 { -1 } else { 1 },
                    bonus: false,
                    reason: long.clone(),
                });
                let request = testing::request_as(testing::BRAND, 100 + i, &long, op);
                Submission::signed(Principal::Owner, &owner, request)
            })
            .collect();
        for sub in subs {
            ledger.submit_now(sub).unwrap().unwrap();
        }
        let mut ask = pb::GetReport {
            card: card.clone(),
            ..Default::default()
        };
        let first = scan_page(store.as_ref(), testing::BRAND, &ask).unwrap();
        let rows = first.sections[0].rows.len();
        assert!(prost::Message::encoded_len(&first) <= MAX_REPORT_BYTES);
        assert!(rows < MAX_ACTIVITY_ROWS, "{rows}");
        assert_ne!(first.next_cursor, 0, "more to read");
        ask.cursor = first.next_cursor;
        let second = scan_page(store.as_ref(), testing::BRAND, &ask).unwrap();
        // Every row once: the issue, the load and the corrections.
        assert_eq!(rows + second.sections[0].rows.len(), MAX_ACTIVITY_ROWS + 2);
    }
}
