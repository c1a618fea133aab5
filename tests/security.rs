//! Rate limits against key guessing and card-number probing, on the real
//! daemon over loopback.
mod common;

use cardd::client::Client;
use cardd::crypto::{generate_key, read_key_file};
use cardd::pb::{self, request::Op, ErrorCode};
use common::{bounded, call, inquiry, Daemon};

fn unknown_card(brand: u32) -> String {
    cardd::card_number::generate(brand)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_sign_on_failures_block_the_address() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo_with(dir.path(), &["--sign-on-failures-per-minute", "5"]);
    // Five unknown keys are refused as unknown; the sixth failure blocks
    // the address; from then on even a valid key is refused.
    for i in 0..6 {
        let err = bounded(Client::connect(d.addr, generate_key()))
            .await
            .err()
            .expect("unknown key refused");
        assert_eq!(err.code(), Some(ErrorCode::UnknownKey), "attempt {i}");
    }
    let till = read_key_file(&demo.terminal_key_path(0)).unwrap();
    let err = bounded(Client::connect(d.addr, till))
        .await
        .err()
        .expect("blocked address");
    assert_eq!(err.code(), Some(ErrorCode::RateLimited));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn card_number_probing_is_cut_off_per_terminal_and_address() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo_with(dir.path(), &["--card-misses-per-minute", "10"]);
    let brand = demo.manifest.brand_id;
    let card = demo.manifest.cards[0].clone();
    let mut prober = demo.terminal(d.addr, 0).await;
    // An honest till on another connection, opened before the probing.
    let mut other = demo.terminal(d.addr, 1).await;
    let before = inquiry(&mut other, &card).await;

    let mut not_found = 0;
    let mut limited = 0;
    for _ in 0..30 {
        match call(
            &mut prober,
            0,
            Op::Inquiry(pb::Inquiry {
                card: unknown_card(brand),
            }),
        )
        .await
        {
            Err(ErrorCode::CardNotFound) => not_found += 1,
            Err(ErrorCode::RateLimited) => limited += 1,
            other => panic!("unexpected answer to a probe: {other:?}"),
        }
    }
    // 10 allowed, the 11th miss blocks; everything after is refused unseen.
    assert_eq!(not_found, 11);
    assert_eq!(limited, 19);
    // A real card is refused too while the terminal is blocked: a prober
    // cannot tell a hit from a miss.
    let err = call(
        &mut prober,
        0,
        Op::Inquiry(pb::Inquiry { card: card.clone() }),
    )
    .await
    .unwrap_err();
    assert_eq!(err, ErrorCode::RateLimited);
    // Every test connection comes from 127.0.0.1, so the per-address budget
    // is spent too: the honest till behind the same address waits as well.
    let err = call(
        &mut other,
        0,
        Op::Inquiry(pb::Inquiry { card: card.clone() }),
    )
    .await
    .unwrap_err();
    assert_eq!(
        err,
        ErrorCode::RateLimited,
        "the per-address limit covers every terminal behind it"
    );
    // Nothing was written by the probing: a fresh connection after the
    // daemon restarts (limits are in memory) sees the same card.
    drop((prober, other));
    let mut d = d;
    d.kill9();
    let d = Daemon::start(&demo.data, &[]);
    let mut till = demo.terminal(d.addr, 1).await;
    assert_eq!(inquiry(&mut till, &card).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_files_readable_by_others_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("till.key");
    cardd::crypto::write_key_file(&path, &generate_key()).unwrap();
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(read_key_file(&path).is_ok());
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = read_key_file(&path).unwrap_err().to_string();
    assert!(err.contains("readable by others"), "{err}");
    // The server key created by the daemon is 0600 too.
    let (d, demo) = Daemon::demo(dir.path());
    let mode = std::fs::metadata(demo.data.join("server.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    drop(d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_terminal_is_refused_until_enabled_again() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo(dir.path());
    let card = demo.manifest.cards[1].clone();
    let mut owner = demo.owner(d.addr).await;
    let mut stolen = demo.terminal(d.addr, 1).await;
    let before = inquiry(&mut stolen, &card).await;
    let tid = demo.manifest.stores[1].terminals[0].terminal_id;
    let disable = Op::SetTerminalDisabled(pb::SetTerminalDisabled {
        terminal_id: tid,
        disabled: true,
        reason: "stolen".into(),
    });
    let rec = call(&mut owner, 100, disable)
        .await
        .expect("owner disables");
    assert!(rec.receipt.is_some(), "revocation is a ledger record");
    // The connection already open is refused from now on...
    let err = call(&mut stolen, 900, common::purchase(&card, 100))
        .await
        .unwrap_err();
    assert_eq!(err, ErrorCode::TerminalDisabled);
    // ...and the key can no longer sign on.
    let key = read_key_file(&demo.terminal_key_path(1)).unwrap();
    let err = bounded(Client::connect(d.addr, key.clone()))
        .await
        .err()
        .expect("refused");
    assert_eq!(err.code(), Some(ErrorCode::TerminalDisabled));
    // Nothing moved; only the owner can undo it (a terminal cannot).
    let mut other = demo.terminal(d.addr, 0).await;
    assert_eq!(inquiry(&mut other, &card).await, before);
    let enable = Op::SetTerminalDisabled(pb::SetTerminalDisabled {
        terminal_id: tid,
        disabled: false,
        reason: String::new(),
    });
    assert_eq!(
        call(&mut other, 901, enable.clone()).await.unwrap_err(),
        ErrorCode::WrongRole
    );
    call(&mut owner, 101, enable).await.expect("owner enables");
    let mut back = bounded(Client::connect(d.addr, key))
        .await
        .expect("signs on again");
    let r = call(&mut back, 902, common::purchase(&card, 100))
        .await
        .expect("purchase");
    assert_eq!(r.card.unwrap().balance_minor, before.balance_minor - 100);
}
