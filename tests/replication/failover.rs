//! Failover: the active node is killed (-9) under a till's purchases; the
//! standby takes the brand's lapsed lease, reads the stream to its end and
//! serves. Every acknowledged purchase is there exactly once (a retry of
//! one is answered from the ledger, not applied again), money is
//! conserved, and the old active, back as a standby, ends with the same
//! ledger byte for byte.
use std::time::{Duration, Instant};

use cardd::client::Client;
use cardd::crypto::read_key_file;

use crate::common::reply::{card_of, receipt};
use crate::common::{bounded, call_req, inquiry, ok, purchase, wait_until, Daemon};
use crate::standby::{export_parts, records_on, start_standby};

/// Signs on at `addr` until it works (the node serves the brand), for at
/// most `limit`.
async fn sign_on_until(
    addr: std::net::SocketAddr,
    key_path: &std::path::Path,
    limit: Duration,
) -> Client {
    let deadline = Instant::now() + limit;
    loop {
        let key = read_key_file(key_path).expect("terminal key");
        match tokio::time::timeout(Duration::from_secs(5), Client::connect(addr, key)).await {
            Ok(Ok(c)) => return c,
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(200)).await,
            other => panic!(
                "no sign-on at {addr} within {limit:?}: {:?}",
                other.map(|r| r.err())
            ),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standby_takes_over_a_killed_active_and_nothing_acknowledged_is_lost() {
    let Some(crate::ReplicatedDemo {
        cluster: _cluster,
        dir,
        urls,
        mut active,
        demo,
    }) = crate::replicated_demo()
    else {
        return;
    };
    let brand = demo.manifest.brand_id;
    let card = demo.manifest.cards[4].clone(); // paid 1000.00, bonus 150.00
    let standby_data = dir.path().join("standby");
    let (mut standby, http) = start_standby(&demo.data, &standby_data, &urls);

    let mut t = demo.terminal(active.addr, 0).await;
    let mut acknowledged = Vec::new();
    for txn in 100..110 {
        let req = t.request(txn, purchase(&card, 1_000));
        let r = bounded(call_req(&mut t, &req)).await.expect("a purchase");
        acknowledged.push((req, receipt(&r).seq));
    }
    active.kill9();

    // The standby takes over once the lease lapses (3 s) and serves.
    let took = Instant::now();
    let mut t = sign_on_until(
        standby.addr,
        &demo.terminal_key_path(0),
        Duration::from_secs(20),
    )
    .await;
    eprintln!(
        "failover: the standby answered {:?} after the kill",
        took.elapsed()
    );
    // A till retrying its last purchase gets the same receipt: not applied twice.
    let (req, seq) = acknowledged.last().unwrap();
    let again = bounded(call_req(&mut t, req)).await.expect("the retry");
    assert_eq!(
        receipt(&again).seq,
        *seq,
        "the retry is answered from the ledger"
    );
    for txn in 110..115 {
        ok(&mut t, txn, purchase(&card, 1_000)).await;
    }
    // 15 purchases of 10.00, each once: paid value first.
    let view = inquiry(&mut t, &card).await;
    assert_eq!(
        (view.paid_balance_minor, view.bonus_balance_minor),
        (100_000 - 15 * 1_000, 15_000)
    );
    let r = ok(&mut t, 115, purchase(&card, 1_000)).await;
    assert_eq!(card_of(&r).paid_balance_minor, 100_000 - 16 * 1_000);
    let end = receipt(&r).seq;
    drop(t);

    // The old active comes back as a standby and follows the new writer.
    let (mut back, back_http) = {
        let old = demo.data.clone();
        let mut cmd_args = vec!["--standby", "--replicate", &urls];
        let http = crate::common::http::free_addr();
        let http_arg = http.to_string();
        cmd_args.extend(["--http-listen", &http_arg]);
        (Daemon::start(&old, &cmd_args), http)
    };
    assert!(
        wait_until(|| records_on(back_http, brand) == Some(end)),
        "the old active caught up"
    );
    assert_eq!(records_on(http, brand), Some(end));
    back.kill9();
    standby.kill9();
    let a = dir.path().join("a.export");
    let b = dir.path().join("b.export");
    let report = crate::common::run::export_and_verify(&demo.data, brand, &a);
    crate::common::run::export_and_verify(&standby_data, brand, &b);
    assert_eq!(report["records"], end, "{report}");
    assert!(
        export_parts(&a).1 == export_parts(&b).1,
        "both nodes hold the same ledger byte for byte"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_active_paused_past_its_lease_answers_not_active_and_writes_nothing() {
    let Some(crate::ReplicatedDemo {
        cluster: _cluster,
        dir,
        urls,
        active,
        demo,
    }) = crate::replicated_demo()
    else {
        return;
    };
    let card = demo.manifest.cards[4].clone();
    let (standby, _) = start_standby(&demo.data, &dir.path().join("standby"), &urls);
    let mut on_old = demo.terminal(active.addr, 0).await;
    ok(&mut on_old, 100, purchase(&card, 1_000)).await;

    active.signal(libc::SIGSTOP);
    let mut on_new = sign_on_until(
        standby.addr,
        &demo.terminal_key_path(1),
        Duration::from_secs(20),
    )
    .await;
    ok(&mut on_new, 100, purchase(&card, 1_000)).await;
    // A read asked while it sleeps is answered once it wakes: NOT_ACTIVE,
    // not the balance it had before the other node's purchase. Its own
    // clock ran on through the pause, so it knows before any look at the
    // lease.
    let inquiry_op = cardd::pb::request::Op::Inquiry(cardd::pb::Inquiry { card: card.clone() });
    let wake = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        active.signal(libc::SIGCONT);
    };
    let (code, ()) = tokio::join!(crate::common::refused(&mut on_old, 0, inquiry_op), wake);
    assert_eq!(code, cardd::pb::ErrorCode::NotActive, "a stale read");
    // Its first look at the lease after waking finds it taken.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let code = crate::common::refused(&mut on_old, 101, purchase(&card, 1_000)).await;
    assert_eq!(code, cardd::pb::ErrorCode::NotActive);
    let view = inquiry(&mut on_new, &card).await;
    assert_eq!(
        view.paid_balance_minor,
        100_000 - 2 * 1_000,
        "the paused node wrote nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_hands_the_lease_over() {
    let Some(crate::ReplicatedDemo {
        cluster,
        dir,
        urls,
        mut active,
        demo,
    }) = crate::replicated_demo()
    else {
        return;
    };
    let brand = demo.manifest.brand_id;
    let card = demo.manifest.cards[4].clone();
    let (standby, _) = start_standby(&demo.data, &dir.path().join("standby"), &urls);
    let mut t = demo.terminal(active.addr, 0).await;
    ok(&mut t, 100, purchase(&card, 1_000)).await;
    drop(t);

    let kv = crate::lease_bucket(&cluster).await;
    let before = crate::lease_entry(&kv, brand).await;
    assert!(
        before.as_ref().is_some_and(|(op, h)| {
            *op == async_nats::jetstream::kv::Operation::Put
                && h.ends_with(&active.addr.to_string())
        }),
        "the active holds the lease: {before:?}"
    );
    active.signal(libc::SIGTERM);
    assert!(
        active
            .wait_exit(Duration::from_secs(30))
            .is_some_and(|s| s.success()),
        "the active stopped cleanly"
    );
    // At once after the stop: the lease was deleted (a delete marker), or
    // the standby already wrote it. Left to lapse, it would still name the
    // stopped node for up to 3 s, then be gone with no marker.
    let after = crate::lease_entry(&kv, brand).await;
    let handed_over = match &after {
        Some((async_nats::jetstream::kv::Operation::Delete, _)) => true,
        Some((async_nats::jetstream::kv::Operation::Put, h)) => {
            h.ends_with(&standby.addr.to_string())
        }
        _ => false,
    };
    assert!(handed_over, "the lease was not handed over: {after:?}");
    let mut on_new = sign_on_until(
        standby.addr,
        &demo.terminal_key_path(1),
        Duration::from_secs(20),
    )
    .await;
    ok(&mut on_new, 100, purchase(&card, 1_000)).await;
    let view = inquiry(&mut on_new, &card).await;
    assert_eq!(view.paid_balance_minor, 100_000 - 2 * 1_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_renewal_whose_answer_was_lost_keeps_the_brand() {
    let Some(crate::ReplicatedDemo {
        cluster,
        dir: _dir,
        urls: _,
        active,
        demo,
    }) = crate::replicated_demo()
    else {
        return;
    };
    let card = demo.manifest.cards[4].clone();
    let mut t = demo.terminal(active.addr, 0).await;
    ok(&mut t, 100, purchase(&card, 1_000)).await;

    // The node's own value written once more, as a renewal whose answer
    // never came back would have: the node's revision is now stale.
    let kv = crate::lease_bucket(&cluster).await;
    let key = format!("brand-{}", demo.manifest.brand_id);
    let mut tries = 0;
    loop {
        let written = match kv.entry(&key).await {
            Ok(Some(entry)) => kv
                .update(&key, entry.value.clone(), entry.revision)
                .await
                .map_err(|e| e.to_string()),
            other => Err(format!("no lease to read: {other:?}")),
        };
        match written {
            Ok(_) => break,
            // The node renewed in between (or a busy cluster timed out).
            Err(_) if tries < 20 => tries += 1,
            Err(e) => panic!("could not write the lease: {e}"),
        }
    }
    // Purchases every 100 ms past the node's own 2 s trust in its last
    // renewal and past the lease's 3 s TTL: a node that gave the brand up
    // at the refused renewal answers NOT_ACTIVE to one of them (until it
    // took the lapsed lease back).
    let deadline = Instant::now() + cardd::replica::lease::LEASE_TTL + Duration::from_millis(500);
    let mut txn = 101;
    while Instant::now() < deadline {
        ok(&mut t, txn, purchase(&card, 100)).await;
        txn += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let bought = (txn - 101) as i64;
    let view = inquiry(&mut t, &card).await;
    assert_eq!(view.paid_balance_minor, 100_000 - 1_000 - bought * 100);
    let holder = crate::lease_entry(&kv, demo.manifest.brand_id).await;
    assert!(
        holder.is_some_and(|(_, h)| h.ends_with(&active.addr.to_string())),
        "the node still holds its lease"
    );
}
