//! The protocol: frame limits, signatures, sign-on, echo, amounts, and
//! requests that are malformed or carry unknown fields.
use super::*;

// ---------------------------------------------------------------------------
// 11. Protocol.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn an_oversized_frame_is_refused_and_closes_only_its_connection() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo_with(dir.path(), &["--max-frame-bytes", "1024"]);
    let card = demo.manifest.cards[0].clone();
    let mut other = demo.terminal(d.addr, 1).await;
    let mut victim = demo.terminal(d.addr, 0).await;
    assert_eq!(victim.session.max_frame_bytes, 1024);
    // Frames up to the limit are fine.
    assert_eq!(
        bounded(victim.echo(vec![7; 900])).await.expect("echo"),
        vec![7; 900]
    );

    let mut frame = 2000u32.to_be_bytes().to_vec();
    frame.extend_from_slice(&[0u8; 2000]);
    bounded(victim.framed().get_mut().write_all(&frame))
        .await
        .expect("write");
    let m = bounded(recv(victim.framed()))
        .await
        .expect("an answer before the close");
    assert_eq!((m.request_id, expect_error(&m)), (0, E::FrameTooLarge));
    assert!(
        matches!(
            bounded(recv(victim.framed())).await,
            Err(ClientError::Io(_))
        ),
        "the connection is closed"
    );

    // Other connections, old and new, keep working.
    let r = ok(&mut other, 1, purchase(&card, 1_000)).await;
    assert_eq!(seq(&r), FIRST_SEQ);
    assert_money(card_of(&r), 9_000, 0, 10);
    let mut fresh = demo.terminal(d.addr, 0).await;
    let r = ok(&mut fresh, 100, purchase(&card, 1_000)).await;
    assert_eq!(seq(&r), FIRST_SEQ + 1);
    assert_money(&inquiry(&mut other, &card).await, 8_000, 0, 20);
}

#[tokio::test]
async fn a_bad_request_signature_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo(dir.path());
    let card = demo.manifest.cards[0].clone();
    let mut t = demo.terminal(d.addr, 0).await;
    let req = t.request(100, purchase(&card, 1_000));
    let (bytes, sig) = signed_bytes(&t, &req);

    let stranger = sign_request(&generate_key(), &bytes);
    assert_eq!(
        call_bytes(&mut t, &bytes, &stranger).await.unwrap_err(),
        E::BadSignature
    );
    let mut flipped = sig.clone();
    flipped[5] ^= 1;
    assert_eq!(
        call_bytes(&mut t, &bytes, &flipped).await.unwrap_err(),
        E::BadSignature
    );
    assert_eq!(
        call_bytes(&mut t, &bytes, &sig[..10]).await.unwrap_err(),
        E::BadSignature
    );
    // The right signature over other bytes (amount raised in transit).
    let tampered = t.request(100, purchase(&card, 9_000)).encode_to_vec();
    assert_eq!(
        call_bytes(&mut t, &tampered, &sig).await.unwrap_err(),
        E::BadSignature
    );
    // A signature made for a sign-on is no request signature.
    let other_domain = t.key().sign(&bytes).to_bytes().to_vec();
    assert_eq!(
        call_bytes(&mut t, &bytes, &other_domain).await.unwrap_err(),
        E::BadSignature
    );

    assert_money(&inquiry(&mut t, &card).await, 10_000, 0, 0);
    assert_eq!(status_of(&mut t, 100).await.state(), TxnState::Unknown);
    // The connection still works and the txn id is still free.
    let r = call_bytes(&mut t, &bytes, &sig).await.expect("purchase");
    assert!(!r.replayed);
    assert_eq!(seq(&r), FIRST_SEQ);
    assert_money(card_of(&r), 9_000, 0, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_keeps_sending_bad_signatures_is_closed() {
    use cardd::limits::MAX_BAD_SIGNATURES_PER_CONNECTION as LIMIT;
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo(dir.path());
    let card = demo.manifest.cards[0].clone();
    let mut good = demo.terminal(d.addr, 1).await;
    let key = read_key_file(&demo.terminal_key_path(0)).unwrap();
    let mut f = sign_on(d.addr, &key).await;
    let req = request(1, 100, "test", purchase(&card, 1_00));
    let mut sig = sign_request(&key, &req.encode_to_vec());
    sig[5] ^= 1;
    let bad = signed(req.encode_to_vec(), sig);
    // Each is refused as it comes, the session going on, up to the limit.
    for i in 1..=u64::from(LIMIT) {
        raw_send(&mut f, i, bad.clone()).await;
        let m = raw_recv(&mut f).await;
        assert_eq!(expect_error(&m), E::BadSignature, "bad signature {i}");
        // The till on another connection is served all along.
        ok(&mut good, 200 + i, purchase(&card, 1)).await;
    }
    // The last one closed the connection: nothing more is read or answered.
    let closed = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        raw_send(&mut f, 99, signed_body(&key, &req)).await;
        recv(&mut f).await
    })
    .await;
    assert!(
        matches!(closed, Ok(Err(ClientError::Io(_)))),
        "the connection is still open after {LIMIT} bad signatures: {closed:?}"
    );
    // Nothing was bought with them; the good till goes on.
    let r = ok(&mut good, 300, purchase(&card, 1)).await;
    assert_eq!(card_of(&r).balance_minor, 10_000 - i64::from(LIMIT) - 1);
}

#[tokio::test]
async fn bad_signatures_block_their_own_key_not_the_tills_beside_it() {
    use cardd::limits::{DEFAULT_SIGN_ON_FAILURES_PER_MINUTE, MAX_BAD_SIGNATURES_PER_CONNECTION};
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo(dir.path());
    let card = demo.manifest.cards[0].clone();
    let key = read_key_file(&demo.terminal_key_path(0)).unwrap();
    let req = request(1, 100, "test", purchase(&card, 1_00));
    let mut sig = sign_request(&key, &req.encode_to_vec());
    sig[5] ^= 1;
    let bad = signed(req.encode_to_vec(), sig);
    // One broken till, on sessions one after another, past the per-minute
    // budget: each session is closed at its limit and the till signs on
    // again, as a till's reconnect logic would.
    let mut sent = 0;
    while sent <= DEFAULT_SIGN_ON_FAILURES_PER_MINUTE {
        let mut f = sign_on(d.addr, &key).await;
        for _ in
            0..MAX_BAD_SIGNATURES_PER_CONNECTION.min(DEFAULT_SIGN_ON_FAILURES_PER_MINUTE + 1 - sent)
        {
            sent += 1;
            raw_send(&mut f, u64::from(sent), bad.clone()).await;
            assert_eq!(expect_error(&raw_recv(&mut f).await), E::BadSignature);
        }
    }
    // Its key is refused sign-on for the cooldown...
    match bounded(Client::connect(d.addr, key)).await {
        Err(e) => assert_eq!(e.code(), Some(E::RateLimited)),
        Ok(_) => panic!("the key that sent {sent} bad signatures signed on again"),
    }
    // ...while another till behind the same address signs on and sells.
    let mut neighbour = demo.terminal(d.addr, 1).await;
    let r = ok(&mut neighbour, 1, purchase(&card, 1)).await;
    assert_eq!(card_of(&r).balance_minor, 10_000 - 1);
}

#[tokio::test]
async fn sign_on_refuses_unknown_keys_and_bad_proofs() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo(dir.path());
    let till = read_key_file(&demo.terminal_key_path(0)).unwrap();

    match bounded(Client::connect(d.addr, generate_key())).await {
        Err(e) => assert_eq!(e.code(), Some(E::UnknownKey)),
        Ok(_) => panic!("an unknown key signed on"),
    }

    // The right key, a signature over the wrong server key.
    let mut f = raw_connect(d.addr).await;
    let ch = raw_challenge(&mut f, &till).await;
    assert_eq!((ch.nonce.len(), ch.server_public_key.len()), (32, 32));
    let signature = till
        .sign(&sign_on_message(&ch.nonce, &[0u8; 32]))
        .to_bytes()
        .to_vec();
    raw_send(&mut f, 2, Body::SignOnProof(pb::SignOnProof { signature })).await;
    assert_eq!(expect_error(&raw_recv(&mut f).await), E::SignOnFailed);
    assert!(raw_closed(&mut f).await);

    // Another key's signature over the right message.
    let mut f = raw_connect(d.addr).await;
    let ch = raw_challenge(&mut f, &till).await;
    let msg = sign_on_message(&ch.nonce, &ch.server_public_key);
    let signature = generate_key().sign(&msg).to_bytes().to_vec();
    raw_send(&mut f, 2, Body::SignOnProof(pb::SignOnProof { signature })).await;
    assert_eq!(expect_error(&raw_recv(&mut f).await), E::SignOnFailed);
    assert!(raw_closed(&mut f).await);

    // A proof for an old nonce does not answer a new challenge.
    let mut f = raw_connect(d.addr).await;
    let fresh = raw_challenge(&mut f, &till).await;
    assert_ne!(fresh.nonce, ch.nonce, "every challenge has a fresh nonce");
    raw_send(
        &mut f,
        2,
        Body::SignOnProof(pb::SignOnProof {
            signature: till.sign(&msg).to_bytes().to_vec(),
        }),
    )
    .await;
    assert_eq!(expect_error(&raw_recv(&mut f).await), E::SignOnFailed);

    // The right proof signs on (the same steps, done properly).
    let mut f = raw_connect(d.addr).await;
    let ch = raw_challenge(&mut f, &till).await;
    let signature = till
        .sign(&sign_on_message(&ch.nonce, &ch.server_public_key))
        .to_bytes()
        .to_vec();
    raw_send(&mut f, 2, Body::SignOnProof(pb::SignOnProof { signature })).await;
    let m = raw_recv(&mut f).await;
    match m.body {
        Some(server_message::Body::SignOnOk(ok)) => {
            assert_eq!((ok.brand_id, ok.terminal_id), (1, 1))
        }
        other => panic!("expected sign-on, got {other:?}"),
    }
    assert_eq!(m.request_id, 2);
    // A second hello on a signed-on connection is refused; the session stays.
    raw_send(&mut f, 3, hello(&till)).await;
    let m = raw_recv(&mut f).await;
    assert_eq!((m.request_id, expect_error(&m)), (3, E::AlreadySignedOn));
    let card = demo.manifest.cards[0].clone();
    raw_send(
        &mut f,
        4,
        signed_body(&till, &demo_request(100, purchase(&card, 100))),
    )
    .await;
    match raw_recv(&mut f).await.body {
        Some(server_message::Body::Reply(r)) => assert_money(card_of(&r), 9_900, 0, 1),
        other => panic!("expected a reply, got {other:?}"),
    }

    // An unsupported protocol version.
    let mut f = raw_connect(d.addr).await;
    let body = Body::Hello(pb::Hello {
        protocol_version: 2,
        public_key: till.verifying_key().to_bytes().to_vec(),
    });
    raw_send(&mut f, 1, body).await;
    assert_eq!(expect_error(&raw_recv(&mut f).await), E::UnsupportedVersion);
    assert!(raw_closed(&mut f).await);
}

#[tokio::test]
async fn operations_before_sign_on_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo(dir.path());
    let till = read_key_file(&demo.terminal_key_path(0)).unwrap();
    let card = demo.manifest.cards[0].clone();
    let body = || signed_body(&till, &demo_request(100, purchase(&card, 1_000)));

    let mut f = raw_connect(d.addr).await;
    raw_send(&mut f, 9, body()).await;
    let m = raw_recv(&mut f).await;
    assert_eq!((m.request_id, expect_error(&m)), (9, E::NotSignedOn));
    // Garbage is refused without closing the connection.
    bounded(futures::SinkExt::send(
        &mut f,
        bytes::Bytes::from_static(&[0xff, 0xff, 0xff]),
    ))
    .await
    .unwrap();
    assert_eq!(expect_error(&raw_recv(&mut f).await), E::Malformed);
    // Half-way through sign-on is not signed on either.
    let _challenge = raw_challenge(&mut f, &till).await;
    raw_send(&mut f, 10, body()).await;
    let m = raw_recv(&mut f).await;
    assert_eq!((m.request_id, expect_error(&m)), (10, E::NotSignedOn));
    raw_send(
        &mut f,
        11,
        Body::Echo(pb::Echo {
            payload: b"still here".to_vec(),
        }),
    )
    .await;
    let m = raw_recv(&mut f).await;
    assert_eq!(m.request_id, 11);
    assert!(matches!(m.body, Some(server_message::Body::Echo(e)) if e.payload == b"still here"));

    let mut t = demo.terminal(d.addr, 0).await;
    assert_money(&inquiry(&mut t, &card).await, 10_000, 0, 0);
    assert_eq!(status_of(&mut t, 100).await.state(), TxnState::Unknown);
}

#[tokio::test]
async fn echo_returns_its_payload() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo(dir.path());
    // Before sign-on (keep-alive during sign-on).
    let mut f = raw_connect(d.addr).await;
    raw_send(
        &mut f,
        77,
        Body::Echo(pb::Echo {
            payload: b"ping".to_vec(),
        }),
    )
    .await;
    let m = raw_recv(&mut f).await;
    assert_eq!(m.request_id, 77);
    assert!(matches!(m.body, Some(server_message::Body::Echo(e)) if e.payload == b"ping"));
    // After sign-on.
    let mut t = demo.terminal(d.addr, 0).await;
    let payload: Vec<u8> = (0..=255u8).collect();
    assert_eq!(
        bounded(t.echo(payload.clone())).await.expect("echo"),
        payload
    );
    assert_eq!(
        bounded(t.echo(Vec::new())).await.expect("echo"),
        Vec::<u8>::new()
    );
    match bounded(t.echo(vec![1; 1025])).await {
        Err(e) => assert_eq!(e.code(), Some(E::InvalidArgument)),
        Ok(_) => panic!("an echo over 1024 bytes was answered"),
    }
    assert_eq!(
        bounded(t.echo(vec![2; 1024])).await.expect("echo"),
        vec![2; 1024]
    );
}

#[tokio::test]
async fn amounts_out_of_range_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo(dir.path());
    let card = demo.manifest.cards[4].clone();
    let mut t = demo.terminal(d.addr, 0).await;
    let p = ok(&mut t, 100, purchase(&card, 1_000)).await;
    let mut txn = 101;
    for amount in [0, -1, -10_000, i64::MIN, MAX_AMOUNT_MINOR + 1, i64::MAX] {
        for op in [
            purchase(&card, amount),
            partial(&card, amount),
            top_up(&card, amount),
            refund(seq(&p), amount),
        ] {
            assert_eq!(
                refused(&mut t, txn, op).await,
                E::AmountOutOfRange,
                "amount {amount}"
            );
            txn += 1;
        }
    }
    assert_money(&inquiry(&mut t, &card).await, 99_000, 15_000, 10);
    let r = ok(&mut t, txn, purchase(&card, 1)).await;
    assert_eq!(seq(&r), FIRST_SEQ + 1);
}

#[tokio::test]
async fn malformed_requests_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo(dir.path());
    let card = demo.manifest.cards[0].clone();
    let mut t = demo.terminal(d.addr, 0).await;
    // A state-changing request needs a txn id.
    assert_eq!(
        refused(&mut t, 0, purchase(&card, 100)).await,
        E::InvalidArgument
    );
    // A request without an operation.
    let mut req = t.request(100, purchase(&card, 100));
    req.op = None;
    assert_eq!(
        call_req(&mut t, &req).await.unwrap_err(),
        E::InvalidArgument
    );
    // An operator name that is too long or has control characters.
    let mut req = t.request(100, purchase(&card, 100));
    req.operator = "x".repeat(65);
    assert_eq!(
        call_req(&mut t, &req).await.unwrap_err(),
        E::InvalidArgument
    );
    req.operator = "cashier\n2".into();
    assert_eq!(
        call_req(&mut t, &req).await.unwrap_err(),
        E::InvalidArgument
    );
    // Signed bytes that are not a Request.
    let garbage = vec![0xff, 0xff, 0xff, 0xff];
    let sig = sign_request(t.key(), &garbage);
    assert_eq!(
        call_bytes(&mut t, &garbage, &sig).await.unwrap_err(),
        E::Malformed
    );
    // A proof before any hello, and an unknown key, end the connection.
    let mut f = raw_connect(d.addr).await;
    raw_send(
        &mut f,
        1,
        Body::SignOnProof(pb::SignOnProof {
            signature: vec![0; 64],
        }),
    )
    .await;
    assert_eq!(expect_error(&raw_recv(&mut f).await), E::Malformed);
    assert!(raw_closed(&mut f).await);
    let mut f = raw_connect(d.addr).await;
    raw_send(&mut f, 1, hello(&generate_key())).await;
    assert_eq!(expect_error(&raw_recv(&mut f).await), E::UnknownKey);
    assert!(raw_closed(&mut f).await);

    assert_money(&inquiry(&mut t, &card).await, 10_000, 0, 0);
    let mut req = t.request(100, purchase(&card, 100));
    req.operator = "Ann".into();
    let r = call_req(&mut t, &req).await.expect("purchase");
    assert_eq!(seq(&r), FIRST_SEQ);
}

#[tokio::test]
async fn a_request_with_unknown_fields_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo(dir.path());
    let card = demo.manifest.cards[0].clone();
    let mut t = demo.terminal(d.addr, 0).await;
    let mut bytes = t.request(100, purchase(&card, 1_000)).encode_to_vec();
    bytes.extend_from_slice(&[0xf8, 0x06, 0x01]); // field 111 (varint) = 1: not in cardd.v1
    let sig = sign_request(t.key(), &bytes);
    let answer = call_bytes(&mut t, &bytes, &sig).await;
    assert!(
        matches!(answer, Err(E::Malformed | E::InvalidArgument)),
        "a request with a field this server does not know was answered {answer:?}"
    );
    assert_money(&inquiry(&mut t, &card).await, 10_000, 0, 0);
}

#[tokio::test]
async fn answers_over_a_low_read_limit_are_sent_and_the_session_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo_with(dir.path(), &["--max-frame-bytes", "1024"]);
    let mut o = demo.owner(d.addr).await;
    // The limit bounds what the daemon reads; its answers (an export's
    // chunks here) are bounded by what clients read.
    let mut export = Vec::new();
    let size = bounded(o.export(&mut export)).await.expect("the export");
    assert!(size > 1024, "an export of {size} bytes");
    assert_eq!(export.len() as u64, size);
    // The same session goes on, within the limit as before.
    assert_eq!(
        bounded(o.echo(vec![7; 900])).await.expect("echo"),
        vec![7; 900]
    );
    let card = demo.manifest.cards[0].clone();
    let mut t = demo.terminal(d.addr, 0).await;
    let r = ok(&mut t, 100, purchase(&card, 1_000)).await;
    assert_eq!(seq(&r), FIRST_SEQ);
}
