//! Idempotency and pipelining: a retry is a replay, each request is
//! answered once.
use super::*;

// ---------------------------------------------------------------------------
// 8. Idempotency.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_retry_of_the_same_signed_bytes_is_replayed_not_reapplied() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo(dir.path());
    let card = demo.manifest.cards[0].clone(); // paid 100.00
    let mut t = demo.terminal(d.addr, 0).await;

    let req = t.request(100, purchase(&card, 1_000));
    let (bytes, sig) = signed_bytes(&t, &req);
    let first = call_bytes(&mut t, &bytes, &sig).await.expect("purchase");
    assert!(!first.replayed);
    assert_eq!(seq(&first), FIRST_SEQ);
    assert_money(card_of(&first), 9_000, 0, 10);

    let retry = call_bytes(&mut t, &bytes, &sig).await.expect("retry");
    assert!(retry.replayed);
    assert_eq!(retry.receipt, first.receipt, "same seq, hash, time and txn");
    assert_eq!((&retry.card, &retry.detail), (&first.card, &first.detail));
    // Re-signing the same request gives the same bytes and signature.
    let retry = call_req(&mut t, &req).await.expect("retry");
    assert!(retry.replayed);
    assert_eq!(retry.receipt, first.receipt);
    assert_money(&inquiry(&mut t, &card).await, 9_000, 0, 10);

    // A different request under the same txn id is refused.
    assert_eq!(
        refused(&mut t, 100, purchase(&card, 2_000)).await,
        E::IdempotencyConflict
    );
    assert_eq!(
        refused(&mut t, 100, top_up(&card, 5_000)).await,
        E::IdempotencyConflict
    );
    let mut changed = req.clone();
    changed.operator = "someone else".into();
    assert_eq!(
        call_req(&mut t, &changed).await.unwrap_err(),
        E::IdempotencyConflict
    );
    assert_money(&inquiry(&mut t, &card).await, 9_000, 0, 10);

    // Nothing was written by the retries or the conflicts.
    let r = ok(&mut t, 101, purchase(&card, 500)).await;
    assert_eq!(seq(&r), FIRST_SEQ + 1);

    // A new connection: the retry is still recognised.
    let mut t = demo.terminal(d.addr, 0).await;
    assert_eq!(t.session.last_txn_id, 101);
    let retry = call_bytes(&mut t, &bytes, &sig).await.expect("retry");
    assert!(retry.replayed);
    assert_eq!(retry.receipt, first.receipt);
    assert_money(&inquiry(&mut t, &card).await, 8_500, 0, 15);
}

#[tokio::test]
async fn sign_on_reports_the_highest_recorded_txn_id() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo(dir.path());
    let card = demo.manifest.cards[0].clone();
    let mut t = demo.terminal(d.addr, 1).await;
    assert_eq!(t.session.last_txn_id, 0);
    ok(&mut t, 41, purchase(&card, 100)).await;
    ok(&mut t, 42, top_up(&card, 100)).await;
    // Refused: not in the ledger, so not the last txn id.
    assert_eq!(
        refused(&mut t, 43, purchase(&card, 10_000_000)).await,
        E::InsufficientFunds
    );
    drop(t);
    let mut t = demo.terminal(d.addr, 1).await;
    assert_eq!(t.session.last_txn_id, 42);
    // The highest recorded, not the newest: pipelined requests can reach
    // the writer out of order, and a till continues from highest + 1.
    ok(&mut t, 7, purchase(&card, 100)).await;
    let t = demo.terminal(d.addr, 1).await;
    assert_eq!(t.session.last_txn_id, 42);
    // The owner's too.
    let mut o = demo.owner(d.addr).await;
    assert_eq!(o.session.last_txn_id, 10);
    ok(&mut o, 11, issue(&card_number::generate(1))).await;
    let o = demo.owner(d.addr).await;
    assert_eq!(o.session.last_txn_id, 11);
}

#[tokio::test]
async fn a_retry_of_a_terminal_enrolment_is_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo(dir.path());
    let mut o = demo.owner(d.addr).await;
    let key = generate_key();
    let req = o.request(11, enroll(1, &key, "Downtown till 2"));
    let first = call_req(&mut o, &req).await.expect("enrol");
    assert_eq!(terminal_enrolled(&first).terminal_id, 3);
    let retry = call_req(&mut o, &req)
        .await
        .expect("a retry is answered with the original reply");
    assert!(retry.replayed);
    assert_eq!(retry.receipt, first.receipt);
    assert_eq!(retry.detail, first.detail);
}

// ---------------------------------------------------------------------------
// 12. Pipelining.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn pipelined_purchases_are_each_answered_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo(dir.path());
    let card = demo.manifest.cards[4].clone(); // 1150.00
    let mut t = demo.terminal(d.addr, 0).await;
    let key = t.key().clone();
    let amounts: Vec<i64> = (0..20).map(|i| 101 + 37 * i).collect();
    let bodies: Vec<(u64, Body)> = amounts
        .iter()
        .enumerate()
        .map(|(i, &a)| {
            (
                1_000 + i as u64,
                signed_body(&key, &t.request(100 + i as u64, purchase(&card, a))),
            )
        })
        .collect();
    let f = t.framed();
    for (rid, body) in bodies {
        raw_send(f, rid, body).await;
    }
    let mut answers: HashMap<u64, pb::Reply> = HashMap::new();
    for _ in 0..20 {
        let m = raw_recv(f).await;
        let reply = match m.body {
            Some(server_message::Body::Reply(r)) => r,
            other => panic!("request {}: expected a reply, got {other:?}", m.request_id),
        };
        assert!(
            answers.insert(m.request_id, reply).is_none(),
            "request {} answered twice",
            m.request_id
        );
    }
    // Nothing else is queued: the next answer is to the next request.
    raw_send(
        f,
        5_000,
        Body::Echo(pb::Echo {
            payload: b"end".to_vec(),
        }),
    )
    .await;
    assert_eq!(raw_recv(f).await.request_id, 5_000);

    let mut seqs = Vec::new();
    for (i, amount) in amounts.iter().enumerate() {
        let r = answers
            .get(&(1_000 + i as u64))
            .unwrap_or_else(|| panic!("request {i} unanswered"));
        let p = purchased(r);
        assert_eq!((p.approved_minor, p.points_earned), (*amount, amount / 100));
        assert_eq!(receipt(r).txn_id, 100 + i as u64);
        seqs.push(seq(r));
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (FIRST_SEQ..FIRST_SEQ + 20).collect::<Vec<_>>());
    let sum: i64 = amounts.iter().sum();
    let points: i64 = amounts.iter().map(|a| a / 100).sum();
    assert_eq!(sum, 9_050);
    assert_money(&inquiry(&mut t, &card).await, 100_000 - sum, 15_000, points);
}

#[tokio::test]
async fn pipelined_copies_of_one_request_are_applied_once() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo(dir.path());
    let card = demo.manifest.cards[0].clone();
    let mut t = demo.terminal(d.addr, 0).await;
    let req = t.request(100, purchase(&card, 2_500));
    let (request, signature) = signed_bytes(&t, &req);
    let f = t.framed();
    for rid in 1..=3 {
        let body = Body::Signed(pb::SignedRequest {
            request: request.clone(),
            signature: signature.clone(),
        });
        raw_send(f, rid, body).await;
    }
    let mut replies = Vec::new();
    for _ in 0..3 {
        match raw_recv(f).await.body {
            Some(server_message::Body::Reply(r)) => replies.push(r),
            other => panic!("expected a reply, got {other:?}"),
        }
    }
    assert_eq!(
        replies.iter().filter(|r| !r.replayed).count(),
        1,
        "applied exactly once"
    );
    for r in &replies {
        assert_eq!(receipt(r), receipt(&replies[0]));
        assert_eq!(seq(r), FIRST_SEQ);
        assert_money(card_of(r), 7_500, 0, 25);
    }
    assert_money(&inquiry(&mut t, &card).await, 7_500, 0, 25);
}
