//! Tills written with other protobuf libraries (issue 24): a request with
//! explicitly encoded proto3 defaults is served, its retry is a replay, the
//! lean encoding under the same txn id is a conflict, and every refused
//! encoding is named in the `MALFORMED` message.
use super::*;

/// Sends exact bytes, signed by the till; the refusal, or a panic if served.
async fn refusal_of(t: &mut Client, bytes: Vec<u8>) -> cardd::error::Refusal {
    let sig = sign_request(t.key(), &bytes);
    match bounded(t.call_signed(bytes, sig)).await {
        Err(ClientError::Refused(r)) => r,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn explicit_defaults_are_served_their_retry_replayed_and_the_lean_encoding_conflicts() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo(dir.path());
    let card = demo.manifest.cards[0].clone(); // paid 100.00
    let brand = demo.manifest.brand_id;
    let mut t = demo.terminal(d.addr, 0).await;

    let bytes = explicit_defaults_purchase(100, brand, &card, 1_000);
    let lean = lean_purchase(100, brand, &card, 1_000);
    assert_ne!(bytes, lean, "the hand-written bytes are not prost's");
    let sig = sign_request(t.key(), &bytes);
    let first = call_bytes(&mut t, &bytes, &sig).await.expect("served");
    assert!(!first.replayed);
    assert_eq!(seq(&first), FIRST_SEQ);
    assert_eq!(purchased(&first).approved_minor, 1_000);
    assert_money(card_of(&first), 9_000, 0, 10);

    // The same bytes again: a retry, answered from the record.
    let retry = call_bytes(&mut t, &bytes, &sig).await.expect("retry");
    assert!(retry.replayed);
    assert_eq!(retry.receipt, first.receipt);

    // The lean encoding of the same request under the same txn id: the
    // idempotency key binds the exact signed bytes, so it is a conflict.
    let lean_sig = sign_request(t.key(), &lean);
    assert_eq!(
        call_bytes(&mut t, &lean, &lean_sig).await.unwrap_err(),
        E::IdempotencyConflict
    );
    assert_money(&inquiry(&mut t, &card).await, 9_000, 0, 10);
    // Nothing was written by the retry or the conflict.
    let r = ok(&mut t, 101, purchase(&card, 500)).await;
    assert_eq!(seq(&r), FIRST_SEQ + 1);
}

#[tokio::test]
async fn each_refused_encoding_is_named_in_the_malformed_message() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo(dir.path());
    let card = demo.manifest.cards[0].clone();
    let brand = demo.manifest.brand_id;
    let mut t = demo.terminal(d.addr, 0).await;
    let base = explicit_defaults_purchase(200, brand, &card, 1_000);
    let with = |tail: &[u8]| [base.as_slice(), tail].concat();
    let mut wrong_type = vec![0x08, 0xc8, 0x01, 0x10];
    prost::encoding::encode_varint(u64::from(brand), &mut wrong_type);
    wrong_type.extend_from_slice(&[0x58, 0x01]);
    let cases = [
        (with(&[0x98, 0x06, 0x01]), "Request: unknown field 99"),
        (
            [&[0x08, 0x01][..], &base].concat(),
            "Request: field 1 (txn_id) repeated",
        ),
        (
            wrong_type,
            "Request: wrong wire type 0 for field 11 (purchase), expected 2",
        ),
        (
            with(&[0x00]),
            "Request: 1 trailing bytes after field 11 do not form a field (field number out of range)",
        ),
    ];
    for (bytes, reason) in cases {
        let r = refusal_of(&mut t, bytes).await;
        assert_eq!(r.code, E::Malformed, "{reason}");
        assert_eq!(r.message, format!("request refused: {reason}"));
    }
    // None of them wrote anything: the next record is the first new one.
    let r = ok(&mut t, 201, purchase(&card, 500)).await;
    assert_eq!(seq(&r), FIRST_SEQ);
    assert_money(card_of(&r), 9_500, 0, 5);
}
