//! Several stores of one brand, and brands isolated from each other.
use super::*;

// ---------------------------------------------------------------------------
// 9. Multi-store and cross-brand.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn one_card_works_in_both_stores_and_each_record_names_its_store() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo(dir.path());
    let card = demo.manifest.cards[2].clone(); // paid 300.00
    let mut t1 = demo.terminal(d.addr, 0).await;
    let mut t2 = demo.terminal(d.addr, 1).await;

    let a = ok(&mut t1, 100, purchase(&card, 1_000)).await;
    let rc = receipt(&a);
    assert_eq!((rc.seq, rc.store_id, rc.terminal_id), (FIRST_SEQ, 1, 1));
    assert_money(card_of(&a), 29_000, 0, 10);
    // The same txn id from another terminal is another transaction.
    let b = ok(&mut t2, 100, purchase(&card, 2_000)).await;
    let rc = receipt(&b);
    assert_eq!(
        (rc.seq, rc.store_id, rc.terminal_id, rc.txn_id),
        (FIRST_SEQ + 1, 2, 2, 100)
    );
    assert!(!b.replayed);
    assert_money(card_of(&b), 27_000, 0, 30);
    let c = ok(&mut t2, 101, top_up(&card, 50_000)).await;
    assert_eq!(receipt(&c).store_id, 2);
    assert_money(card_of(&c), 77_000, 5_000, 30);
    assert_money(&inquiry(&mut t1, &card).await, 77_000, 5_000, 30);
    let s = status_of(&mut t1, 100).await;
    assert_eq!(
        s.original.as_ref().map(|o| purchased(o).approved_minor),
        Some(1_000)
    );
    let s = status_of(&mut t2, 100).await;
    assert_eq!(
        s.original.as_ref().map(|o| purchased(o).approved_minor),
        Some(2_000)
    );
}

#[tokio::test]
async fn brands_are_isolated_from_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (k1, k2) = (dir.path().join("owner1.key"), dir.path().join("owner2.key"));
    assert_eq!(brand_create_ok(&data, "Brand One", &k1), 1);
    assert_eq!(brand_create_ok(&data, "Brand Two", &k2), 2);
    let d = Daemon::start(&data, &[]);
    let mut o1 = connect(d.addr, read_key_file(&k1).unwrap()).await;
    let mut o2 = connect(d.addr, read_key_file(&k2).unwrap()).await;
    assert_eq!(
        (o1.session.brand_id, o1.session.brand_name.as_str()),
        (1, "Brand One")
    );
    assert_eq!(
        (o2.session.brand_id, o2.session.brand_name.as_str()),
        (2, "Brand Two")
    );
    assert_eq!(
        (o1.session.role(), o2.session.role()),
        (Role::Owner, Role::Owner)
    );

    // Each brand: a store, a terminal, a card; ids and seqs are per brand.
    let (key1, key2) = (generate_key(), generate_key());
    let (card1, card2) = (card_number::generate(1), card_number::generate(2));
    for (o, key, card, name) in [
        (&mut o1, &key1, &card1, "One Main"),
        (&mut o2, &key2, &card2, "Two Main"),
    ] {
        let r = ok(o, 1, create_store(name)).await;
        assert_eq!((store_created(&r), seq(&r)), (1, 2));
        let r = ok(o, 2, enroll(1, key, "till")).await;
        assert_eq!((terminal_enrolled(&r).terminal_id, seq(&r)), (1, 3));
        let r = ok(o, 3, issue(card)).await;
        assert_eq!(seq(&r), 4);
    }
    // One key never speaks for two brands.
    assert_eq!(
        refused(&mut o2, 4, enroll(1, &key1, "stolen")).await,
        E::KeyInUse
    );
    assert_eq!(
        refused(&mut o1, 4, enroll(1, &key2, "stolen")).await,
        E::KeyInUse
    );
    let owner2 = read_key_file(&k2).unwrap();
    assert_eq!(
        refused(&mut o1, 4, enroll(1, &owner2, "owner")).await,
        E::KeyInUse
    );
    assert_eq!(
        refused(&mut o1, 4, issue(&card_number::generate(2))).await,
        E::CardOtherBrand
    );

    let mut t1 = connect(d.addr, key1).await;
    let mut t2 = connect(d.addr, key2).await;
    assert_eq!(
        (
            t1.session.brand_id,
            t1.session.store_id,
            t1.session.terminal_id
        ),
        (1, 1, 1)
    );
    assert_eq!(
        (
            t2.session.brand_id,
            t2.session.store_id,
            t2.session.terminal_id
        ),
        (2, 1, 1)
    );
    assert_eq!(t2.session.store_name, "Two Main");

    // Brand 2 runs on the default rules: no bonus, 1 point per unit.
    let r = ok(&mut t2, 1, top_up(&card2, 10_000)).await;
    assert_eq!((topped_up(&r).bonus_minor, seq(&r)), (0, 5));
    let r = ok(&mut t2, 2, purchase(&card2, 2_500)).await;
    assert_eq!(seq(&r), 6);
    assert_money(card_of(&r), 7_500, 0, 25);
    assert_eq!(card_of(&r).tier, "member");
    let r = ok(&mut t1, 1, top_up(&card1, 5_000)).await;
    assert_eq!(seq(&r), 5, "brand 1 has its own chain");

    // Brand 1's terminal cannot use brand 2's card.
    assert_eq!(
        refused(&mut t1, 2, purchase(&card2, 100)).await,
        E::CardOtherBrand
    );
    assert_eq!(
        refused(&mut t1, 2, top_up(&card2, 100)).await,
        E::CardOtherBrand
    );
    assert_eq!(
        refused(
            &mut t1,
            0,
            Op::Inquiry(pb::Inquiry {
                card: card2.clone()
            })
        )
        .await,
        E::CardOtherBrand
    );
    // A request naming the other brand is refused.
    let mut req = t1.request(2, purchase(&card1, 100));
    req.brand_id = 2;
    assert_eq!(call_req(&mut t1, &req).await.unwrap_err(), E::WrongBrand);
    let mut req = t2.request(3, purchase(&card2, 100));
    req.brand_id = 1;
    assert_eq!(call_req(&mut t2, &req).await.unwrap_err(), E::WrongBrand);
    let mut req = o1.request(5, create_store("Elsewhere"));
    req.brand_id = 2;
    assert_eq!(call_req(&mut o1, &req).await.unwrap_err(), E::WrongBrand);

    assert_money(&inquiry(&mut t1, &card1).await, 5_000, 0, 0);
    assert_money(&inquiry(&mut t2, &card2).await, 7_500, 0, 25);
    let r = ok(&mut t2, 3, purchase(&card2, 100)).await;
    assert_eq!(seq(&r), 7);
}

#[test]
fn brand_create_refuses_an_owner_key_already_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let key = dir.path().join("owner.key");
    assert_eq!(brand_create_ok(&data, "Brand One", &key), 1);
    let out = brand_create(&data, "Brand Two", &key);
    assert!(
        !out.status.success(),
        "a second brand was created with the first brand's owner key (stdout {:?})",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[tokio::test]
async fn one_key_is_never_enrolled_in_two_brands_even_concurrently() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (k1, k2) = (dir.path().join("owner1.key"), dir.path().join("owner2.key"));
    brand_create_ok(&data, "Brand One", &k1);
    brand_create_ok(&data, "Brand Two", &k2);
    let d = Daemon::start(&data, &[]);
    let mut o1 = connect(d.addr, read_key_file(&k1).unwrap()).await;
    let mut o2 = connect(d.addr, read_key_file(&k2).unwrap()).await;
    ok(&mut o1, 1, create_store("One")).await;
    ok(&mut o2, 1, create_store("Two")).await;
    let (s1, s2) = (o1.key().clone(), o2.key().clone());
    for i in 0..20u64 {
        let key = generate_key();
        // Both enrolments in flight at once, one per brand.
        let b1 = signed_body(&s1, &o1.request(2 + i, enroll(1, &key, "till")));
        let b2 = signed_body(&s2, &o2.request(2 + i, enroll(1, &key, "till")));
        raw_send(o1.framed(), 100 + i, b1).await;
        raw_send(o2.framed(), 100 + i, b2).await;
        let a = raw_recv(o1.framed()).await;
        let b = raw_recv(o2.framed()).await;
        let won = |m: &pb::ServerMessage| matches!(m.body, Some(server_message::Body::Reply(_)));
        assert!(
            won(&a) != won(&b),
            "attempt {i}: the key must be enrolled in exactly one brand (brand 1 {:?}, brand 2 {:?})",
            a.body,
            b.body
        );
        let loser = if won(&a) { &b } else { &a };
        assert_eq!(expect_error(loser), E::KeyInUse);
    }
}
