//! Inquiry and sign-on: what a fresh session sees.
use super::*;

// ---------------------------------------------------------------------------
// 1. Inquiry and sign-on.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn inquiry_shows_what_the_demo_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo(dir.path());
    let cards = &demo.manifest.cards;
    let mut t = demo.terminal(d.addr, 0).await;
    let expected = [
        (10_000, 0),
        (20_000, 0),
        (30_000, 0),
        (50_000, 5_000),
        (100_000, 15_000),
    ];
    assert_eq!(cards.len(), expected.len());
    for (card, (paid, bonus)) in cards.iter().zip(expected) {
        let v = inquiry(&mut t, card).await;
        assert_eq!(&v.card, card);
        assert_eq!(v.status(), CardStatus::Active);
        assert_money(&v, paid, bonus, 0);
        assert_eq!(v.tier, "silver");
        assert_eq!((v.total_spend_minor, v.visits), (0, 0));
    }
    // An inquiry writes nothing and carries the promotion line.
    let r = ok(
        &mut t,
        0,
        Op::Inquiry(pb::Inquiry {
            card: cards[4].clone(),
        }),
    )
    .await;
    assert!(r.receipt.is_none());
    assert_eq!(r.promotion_line, DEMO_PROMO);
    // The owner sees the same card.
    let mut o = demo.owner(d.addr).await;
    assert_money(&inquiry(&mut o, &cards[4]).await, 100_000, 15_000, 0);
    // Unknown and malformed numbers get the same answer.
    let unknown = card_number::generate(1);
    assert_eq!(
        refused(&mut t, 0, Op::Inquiry(pb::Inquiry { card: unknown })).await,
        E::CardNotFound
    );
    assert_eq!(
        refused(
            &mut t,
            0,
            Op::Inquiry(pb::Inquiry {
                card: "12345".into()
            })
        )
        .await,
        E::CardNotFound
    );
    let typo = bad_check_digit(&cards[0]);
    assert_eq!(
        refused(&mut t, 0, Op::Inquiry(pb::Inquiry { card: typo })).await,
        E::CardNotFound
    );
    // The first record written now is FIRST_SEQ: inquiries wrote nothing.
    let r = ok(&mut t, 100, purchase(&cards[0], 1)).await;
    assert_eq!(seq(&r), FIRST_SEQ);
}

#[tokio::test]
async fn sign_on_describes_the_session() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo(dir.path());
    let t1 = demo.terminal(d.addr, 0).await;
    let s = &t1.session;
    assert_eq!(s.role(), Role::Terminal);
    assert_eq!((s.brand_id, s.brand_name.as_str()), (1, "Demo Coffee"));
    assert_eq!((s.currency.as_str(), s.currency_exponent), ("CNY", 2));
    assert_eq!(
        (s.store_id, s.store_name.as_str(), s.terminal_id),
        (1, "Downtown", 1)
    );
    assert_eq!(
        s.last_txn_id, 6,
        "the demo top-ups and shift close were txn ids 1..=6 of terminal 1"
    );
    assert_eq!(s.max_frame_bytes, DEFAULT_MAX_FRAME_BYTES as u64);
    assert_eq!(s.max_in_flight, 64);
    let t2 = demo.terminal(d.addr, 1).await;
    let s = &t2.session;
    assert_eq!(
        (
            s.store_id,
            s.store_name.as_str(),
            s.terminal_id,
            s.last_txn_id
        ),
        (2, "Airport", 2, 0)
    );
    let o = demo.owner(d.addr).await;
    let s = &o.session;
    assert_eq!(s.role(), Role::Owner);
    assert_eq!(
        (s.brand_id, s.store_id, s.terminal_id, s.last_txn_id),
        (1, 0, 0, 10)
    );
}
