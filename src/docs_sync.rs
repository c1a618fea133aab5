//! Keeps `docs/ledger-format.md` true to the proto: a verifier or a client
//! written from the doc alone must know every record kind and every request
//! operation, or it rejects real exports (as it did for kind 8).
use crate::pb::RecordKind;

const DOC: &str = include_str!("../docs/ledger-format.md");
const PROTO: &str = include_str!("../proto/cardd/v1/cardd.proto");

/// The lines between `header {` and the `}` that closes it.
fn block<'a>(text: &'a str, header: &str) -> Vec<&'a str> {
    let mut lines = text
        .lines()
        .skip_while(|l| !l.trim_start().starts_with(header));
    lines
        .next()
        .unwrap_or_else(|| panic!("no `{header}` in the proto"));
    lines.take_while(|l| l.trim() != "}").collect()
}

/// `NAME = N;` entries of an enum, or `Type name = N;` fields, with the
/// comments stripped: (name, number).
fn numbered(lines: &[&str]) -> Vec<(String, u32)> {
    lines
        .iter()
        .filter_map(|l| {
            let code = l.split("//").next()?.trim().strip_suffix(';')?;
            let (left, number) = code.split_once('=')?;
            let name = left.split_whitespace().last()?;
            Some((name.to_string(), number.trim().parse().ok()?))
        })
        .collect()
}

fn record_kinds() -> Vec<(String, u32)> {
    numbered(&block(PROTO, "enum RecordKind {"))
        .into_iter()
        .filter(|(_, n)| *n != 0)
        .collect()
}

fn request_ops() -> Vec<(String, u32)> {
    numbered(&block(PROTO, "oneof op {"))
}

#[test]
fn the_proto_parser_sees_what_prost_generated() {
    let kinds = record_kinds();
    for (name, n) in &kinds {
        let generated = RecordKind::try_from(*n as i32).expect("a generated kind");
        assert_eq!(generated.as_str_name(), name);
    }
    // Issue 15's kinds are numbered from 100, the holder's and PIN's from 110.
    let generated = (1..256)
        .filter(|n| RecordKind::try_from(*n).is_ok())
        .count();
    assert_eq!(kinds.len(), generated);
    let ops = request_ops();
    assert!(
        ops.contains(&("set_terminal_disabled".into(), 38)),
        "{ops:?}"
    );
    assert!(ops.contains(&("create_brand".into(), 50)), "{ops:?}");
}

#[test]
fn every_record_kind_is_in_the_doc_kind_table() {
    let missing: Vec<_> = record_kinds()
        .into_iter()
        .filter(|(name, n)| !DOC.contains(&format!("\n| {n} | {name} |")))
        .collect();
    assert!(
        missing.is_empty(),
        "record kinds missing from the kind table of docs/ledger-format.md: {missing:?}"
    );
}

#[test]
fn every_request_operation_is_in_the_doc() {
    // The operations are listed as `name (field number)`.
    let missing: Vec<_> = request_ops()
        .into_iter()
        .filter(|(name, n)| !DOC.contains(&format!("{name} ({n})")))
        .collect();
    assert!(
        missing.is_empty(),
        "request operations missing from docs/ledger-format.md: {missing:?}"
    );
}
