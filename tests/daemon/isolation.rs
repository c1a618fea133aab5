//! Isolation under abuse (issue 22): one key or one brand never takes the
//! daemon from the others. Quotas per key and brand, revocation that
//! closes a till's sessions, exports that leave no thread behind, and
//! unread exports that never delay another brand's purchases.
use std::time::{Duration, Instant};

use cardd::crypto::generate_key;
use ed25519_dalek::SigningKey;
use futures::future::join_all;

use super::*;

/// One brand made for these tests: its owner, two tills (store 1) and a
/// card holding 1,000,000.00.
struct Brand {
    id: u32,
    owner: SigningKey,
    tills: [SigningKey; 2],
    card: String,
}

/// Two brands on a fresh data directory, served with `extra` flags.
async fn two_brands(dir: &Path, extra: &[&str]) -> (Daemon, [Brand; 2]) {
    let data = dir.join("data");
    let mut owners = Vec::new();
    for (i, name) in ["Brand One", "Brand Two"].into_iter().enumerate() {
        let key = dir.join(format!("owner{i}.key"));
        assert_eq!(brand_create_ok(&data, name, &key), i as u32 + 1);
        owners.push(read_key_file(&key).unwrap());
    }
    let d = Daemon::start(&data, extra);
    let mut brands = Vec::new();
    for (i, owner) in owners.into_iter().enumerate() {
        let id = i as u32 + 1;
        let mut o = connect(d.addr, owner.clone()).await;
        ok(&mut o, 1, create_store("Main")).await;
        let tills = [generate_key(), generate_key()];
        ok(&mut o, 2, enroll(1, &tills[0], "till 1")).await;
        ok(&mut o, 3, enroll(1, &tills[1], "till 2")).await;
        let card = card_number::generate(id);
        ok(&mut o, 4, issue(&card)).await;
        let mut t = connect(d.addr, tills[0].clone()).await;
        ok(&mut t, 1, top_up(&card, 100_000_000)).await;
        brands.push(Brand {
            id,
            owner,
            tills,
            card,
        });
    }
    let brands: [Brand; 2] = brands.try_into().ok().expect("two brands");
    (d, brands)
}

/// The sign-on refusal of one more connection of `key`: its code, after
/// which the daemon closes the connection.
async fn sign_on_refused(addr: std::net::SocketAddr, key: &SigningKey) -> E {
    let mut f = common::raw::send_sign_on_proof(addr, key).await;
    let code = expect_error(&raw_recv(&mut f).await);
    assert!(raw_closed(&mut f).await, "a refused sign-on is closed");
    code
}

#[tokio::test]
async fn a_till_past_its_quota_is_refused_while_other_brands_and_the_owner_get_in() {
    let dir = tempfile::tempdir().unwrap();
    let (d, [one, two]) = two_brands(dir.path(), &["--connections-per-terminal", "4"]).await;
    let till = &one.tills[0];
    // The till's own quota: four sessions, and every one of them works.
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(connect(d.addr, till.clone()).await);
    }
    // A flood of further sign-ons by the same key: each refused, at once.
    let flood = join_all((0..40).map(|_| sign_on_refused(d.addr, till))).await;
    assert!(flood.iter().all(|c| *c == E::QuotaExceeded), "{flood:?}");
    // Nobody else lost anything: the other brand's till and this brand's
    // owner and other till sign on and work.
    let mut other = connect(d.addr, two.tills[0].clone()).await;
    ok(&mut other, 10, purchase(&two.card, 1_00)).await;
    let mut owner = connect(d.addr, one.owner.clone()).await;
    let mut sibling = connect(d.addr, one.tills[1].clone()).await;
    ok(&mut sibling, 10, purchase(&one.card, 1_00)).await;
    assert_eq!(
        inquiry(&mut owner, &one.card).await.paid_balance_minor,
        99_999_900
    );
    // The till's held sessions still work; one closed frees one slot.
    for (i, c) in held.iter_mut().enumerate() {
        ok(c, 100 + i as u64, purchase(&one.card, 1)).await;
    }
    drop(held.pop());
    let again = bounded(async {
        loop {
            match Client::connect(d.addr, till.clone()).await {
                Ok(c) => break c,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await;
    assert_eq!(again.session.terminal_id, 1);
}

#[tokio::test]
async fn disabling_a_till_closes_all_its_sessions_within_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let quotas = [
        "--connections-per-terminal",
        "4",
        "--connections-per-brand",
        "4",
    ];
    let (d, [one, _two]) = two_brands(dir.path(), &quotas).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(sign_on(d.addr, &one.tills[0]).await);
    }
    // The brand is full: its other till is refused until slots come free.
    assert_eq!(
        sign_on_refused(d.addr, &one.tills[1]).await,
        E::QuotaExceeded
    );
    let mut owner = connect(d.addr, one.owner.clone()).await;
    let disable = Op::SetTerminalDisabled(pb::SetTerminalDisabled {
        terminal_id: 1,
        disabled: true,
        reason: "stolen".into(),
    });
    let started = Instant::now();
    ok(&mut owner, 20, disable).await;
    // Each is told why, then closed.
    let closed = tokio::time::timeout(
        Duration::from_secs(1),
        join_all(held.iter_mut().map(told_and_closed)),
    )
    .await
    .expect("every session of the disabled till closed within a second");
    assert!(
        closed
            .iter()
            .all(|c| *c == (Some(E::TerminalDisabled), true)),
        "{closed:?}"
    );
    eprintln!(
        "4 sessions closed {:?} after the disable was sent",
        started.elapsed()
    );
    // Its slots are free: the brand's other till signs on and sells.
    let mut t2 = connect(d.addr, one.tills[1].clone()).await;
    ok(&mut t2, 1, purchase(&one.card, 5_00)).await;
    assert_eq!(
        sign_on_refused(d.addr, &one.tills[0]).await,
        E::TerminalDisabled
    );
}

/// The message a cut session gets, and whether the connection then closed.
async fn told_and_closed(f: &mut Raw) -> (Option<E>, bool) {
    let told = error_code(&raw_recv(f).await);
    (told, raw_closed(f).await)
}

/// Writes about `rounds` x 64 records to `brand` from its first till,
/// 64 pipelined requests at a time (one group commit each).
async fn fill(addr: std::net::SocketAddr, brand: &Brand, rounds: u64) {
    let key = &brand.tills[1];
    let mut f = sign_on(addr, key).await;
    for round in 0..rounds {
        for i in 0..64 {
            let txn = 1_000 + round * 64 + i;
            let req = request(brand.id, txn, "filler", top_up(&brand.card, 1));
            raw_send(&mut f, txn, signed_body(key, &req)).await;
        }
        for _ in 0..64 {
            let m = raw_recv(&mut f).await;
            assert!(error_code(&m).is_none(), "{m:?}");
        }
    }
}

/// An export asked for on its own owner connection.
async fn start_export(addr: std::net::SocketAddr, brand: &Brand) -> Raw {
    let mut f = sign_on(addr, &brand.owner).await;
    let req = request(
        brand.id,
        0,
        "audit",
        Op::ExportLedger(pb::ExportLedger::default()),
    );
    raw_send(&mut f, 3, signed_body(&brand.owner, &req)).await;
    f
}

/// The daemon's threads right now.
fn threads(d: &Daemon) -> usize {
    std::fs::read_dir(format!("/proc/{}/task", d.child.id()))
        .expect("/proc/PID/task")
        .count()
}

#[tokio::test]
async fn thirty_exports_dropped_mid_stream_leave_no_thread_behind() {
    let dir = tempfile::tempdir().unwrap();
    let quotas = [
        "--connections-per-owner",
        "40",
        "--audit-streams-per-key",
        "40",
        "--audit-streams-per-brand",
        "40",
        "--audit-streams",
        "40",
    ];
    let (d, [one, _two]) = two_brands(dir.path(), &quotas).await;
    fill(d.addr, &one, 100).await;
    // One whole export first, so that whatever starts lazily has started.
    let mut owner = connect(d.addr, one.owner.clone()).await;
    let size = bounded(owner.export(&mut std::io::sink()))
        .await
        .expect("export");
    assert!(
        size > 1_000_000,
        "the export is long enough to drop mid-stream: {size}"
    );
    std::thread::sleep(Duration::from_millis(300));
    let before = threads(&d);
    let mut streams = join_all((0..30).map(|_| start_export(d.addr, &one))).await;
    for f in &mut streams {
        let m = raw_recv(f).await;
        assert!(
            matches!(m.body, Some(server_message::Body::ExportChunk(_))),
            "{m:?}"
        );
    }
    let during = threads(&d);
    drop(streams);
    let settled = wait_until(|| threads(&d) <= before);
    let after = threads(&d);
    eprintln!("threads: {before} before, {during} streaming, {after} after");
    assert!(
        settled,
        "threads: {before} before the exports, {after} after"
    );
    // The daemon still serves: a purchase and a whole export.
    let mut t = connect(d.addr, one.tills[0].clone()).await;
    ok(&mut t, 50, purchase(&one.card, 1_00)).await;
    assert_eq!(
        bounded(owner.export(&mut std::io::sink()))
            .await
            .ok()
            .map(|n| n > size),
        Some(true)
    );
}

/// Waits (at most 3 s) until the daemon has used no more than 20 ms of CPU
/// in the last 200 ms: the unread exports have filled what they can.
fn settle(d: &Daemon) {
    let ticks = || -> u64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", d.child.id())).unwrap_or_default();
        let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let f: Vec<&str> = after_name.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the whole line.
        f.get(11).and_then(|u| u.parse().ok()).unwrap_or(0)
            + f.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0)
    };
    let end = Instant::now() + Duration::from_secs(3);
    loop {
        let before = ticks();
        std::thread::sleep(Duration::from_millis(200));
        if ticks().saturating_sub(before) <= 2 || Instant::now() > end {
            return;
        }
    }
}

/// Latencies of `n` purchases from `till`, in order.
async fn purchases(c: &mut Client, card: &str, first_txn: u64, n: u64) -> Vec<Duration> {
    let mut v = Vec::new();
    for txn in first_txn..first_txn + n {
        let started = Instant::now();
        ok(c, txn, purchase(card, 1)).await;
        v.push(started.elapsed());
    }
    v
}

fn p99(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[(v.len() * 99 / 100).min(v.len() - 1)]
}

/// Brand one's owner: every connection its key may hold, each with
/// exports pipelined and never read (past its audit quota they are
/// refused, and the refusals are not read either).
async fn unread_exports(addr: std::net::SocketAddr, one: &Brand) -> Vec<Raw> {
    let mut unread = Vec::new();
    for _ in 0..8 {
        let mut f = start_export(addr, one).await;
        for rid in 4..20 {
            let req = request(
                one.id,
                0,
                "audit",
                Op::ExportLedger(pb::ExportLedger::default()),
            );
            raw_send(&mut f, rid, signed_body(&one.owner, &req)).await;
        }
        unread.push(f);
    }
    unread
}

#[tokio::test]
async fn unread_exports_of_one_brand_never_delay_another_brands_purchases() {
    let dir = tempfile::tempdir().unwrap();
    let (d, [one, two]) = two_brands(dir.path(), &[]).await;
    fill(d.addr, &one, 600).await;
    let mut till = connect(d.addr, two.tills[0].clone()).await;
    // Rounds alternate between purchases alone and purchases beside unread
    // exports, so that whatever else the machine does falls on both sides
    // alike. Right after the exports are asked for, the daemon verifies
    // their 128 signed requests and fills their socket buffers: that
    // burst is load like any other brand's and is bounded only loosely
    // (`first`); once the exports sit unread, purchases must go as usual.
    let (mut alone, mut first, mut beside) = (Vec::new(), Vec::new(), Vec::new());
    let mut txn = 100;
    for _ in 0..3 {
        // Both sides start from a daemon at rest (the first purchase after
        // a pause is slower whatever else is open).
        settle(&d);
        alone.extend(purchases(&mut till, &two.card, txn, 150).await);
        let unread = unread_exports(d.addr, &one).await;
        first.extend(purchases(&mut till, &two.card, txn + 150, 10).await);
        settle(&d);
        beside.extend(purchases(&mut till, &two.card, txn + 160, 150).await);
        drop(unread);
        txn += 400;
    }
    let burst = *first.iter().max().expect("purchases");
    let (usual, loaded) = (p99(alone), p99(beside));
    eprintln!(
        "brand two purchase p99: {usual:?} alone, {loaded:?} beside unread exports (worst while they start {burst:?})"
    );
    // Before exports were paced and kept off tokio's blocking pool, such
    // purchases waited for as long as the exports hung. The bound is wide
    // so that a busy CI machine (the target's other tests run beside this
    // one) does not fail it: 20 ms beside 2 ms alone was seen with a build
    // running. The figures measured on a quiet one are in docs/security.md.
    assert!(
        loaded <= usual * 3 + Duration::from_millis(50) && burst < Duration::from_secs(1),
        "brand two's purchase p99 {loaded:?} beside unread exports, {usual:?} alone (worst while they start {burst:?})"
    );
    // Brand two's own owner still signs on and exports whole.
    let mut o2 = connect(d.addr, two.owner.clone()).await;
    bounded(o2.export(&mut std::io::sink()))
        .await
        .expect("brand two's export");
}

#[tokio::test]
async fn exports_whose_reader_stalls_are_stopped_and_free_their_slots() {
    let dir = tempfile::tempdir().unwrap();
    let (d, [one, _two]) = two_brands(dir.path(), &["--audit-stall-secs", "1"]).await;
    fill(d.addr, &one, 600).await;
    let mut owner = connect(d.addr, one.owner.clone()).await;
    let size = bounded(owner.export(&mut std::io::sink()))
        .await
        .expect("export");
    std::thread::sleep(Duration::from_millis(300));
    let before = threads(&d);
    // The key's two audit streams, each read for one chunk, then not at all.
    let mut stalled = join_all((0..2).map(|_| start_export(d.addr, &one))).await;
    for f in &mut stalled {
        let m = raw_recv(f).await;
        assert!(
            matches!(m.body, Some(server_message::Body::ExportChunk(_))),
            "{m:?}"
        );
    }
    let started = Instant::now();
    // Stopped past the deadline: their threads end while the readers still
    // hold their connections, and the key may export again.
    assert!(wait_until(|| threads(&d) <= before), "audit threads stayed");
    let freed = started.elapsed();
    let again = bounded(owner.export(&mut std::io::sink())).await;
    assert!(
        again.is_ok_and(|n| n >= size),
        "a new export after the stalled ones"
    );
    // What a stalled reader gets when it reads again: what was queued, then
    // the end of the connection, never the whole export.
    for mut f in stalled {
        let mut got = 0;
        let end = loop {
            match bounded(recv(&mut f)).await {
                Ok(m) => match m.body {
                    Some(server_message::Body::ExportChunk(c)) if !c.last => got += c.data.len(),
                    other => break format!("{other:?}"),
                },
                Err(e) => break format!("closed: {e}"),
            }
        };
        assert!(
            end.starts_with("closed"),
            "ended with {end} after {got} bytes"
        );
        assert!((got as u64) < size, "{got} of {size} bytes");
    }
    eprintln!("export of {size} bytes; stalled streams freed after {freed:?}");
}

#[tokio::test]
async fn exports_are_paced_to_the_daemons_audit_rate() {
    let dir = tempfile::tempdir().unwrap();
    let (d, [one, _two]) = two_brands(dir.path(), &["--audit-mib-per-sec", "1"]).await;
    fill(d.addr, &one, 100).await;
    let mut owner = connect(d.addr, one.owner.clone()).await;
    let started = Instant::now();
    let size = bounded(owner.export(&mut std::io::sink()))
        .await
        .expect("export");
    let took = started.elapsed();
    // At 1 MiB/s, everything past the first burst takes its time: a lower
    // bound, which a slow machine only exceeds.
    let paced = (size as u64).saturating_sub(u64::from(cardd::limits::AUDIT_BURST_KIB) * 1024);
    let least = Duration::from_secs_f64(paced as f64 / (1024.0 * 1024.0));
    eprintln!("{size} bytes exported in {took:?} at 1 MiB/s");
    assert!(size > 1_000_000, "export of {size} bytes");
    assert!(
        took >= least,
        "{size} bytes in {took:?}: not paced (at least {least:?})"
    );
}

/// Sends echo frames of the largest payload on `stream` and reads nothing,
/// until the daemon stops taking them (a write waits 500 ms: its answers
/// filled both socket buffers, and it stopped reading too) or 256 MiB went
/// out; returns the bytes sent.
async fn flood_unread(stream: &mut tokio::net::TcpStream) -> usize {
    let payload = vec![7; cardd::limits::MAX_ECHO_BYTES];
    let batch = msg(9, Body::Echo(pb::Echo { payload })).repeat(64);
    let mut sent = 0;
    while sent < 256 << 20 {
        let write = tokio::time::timeout(Duration::from_millis(500), stream.write_all(&batch));
        match write.await {
            Ok(Ok(())) => sent += batch.len(),
            Ok(Err(e)) => panic!("closed after {sent} bytes, before it stalled: {e}"),
            Err(_) => return sent,
        }
    }
    panic!("the daemon took {sent} bytes of echoes without stalling");
}

#[tokio::test]
async fn a_peer_that_stops_reading_is_closed_at_the_write_timeout_and_frees_its_slots() {
    let dir = tempfile::tempdir().unwrap();
    let http = common::http::free_addr().to_string();
    let flags = [
        "--connections-per-terminal",
        "1",
        "--write-timeout-secs",
        "3",
        "--http-listen",
        &http,
    ];
    let (d, [one, _two]) = two_brands(dir.path(), &flags).await;
    let http = http.parse().expect("address");
    let open = || common::http::sample(&common::http::metrics(http), "cardd_connections");
    assert!(
        wait_until(|| open() == Some(0.0)),
        "set-up connections left"
    );
    let till = &one.tills[0];
    // A keyless peer (echo is answered before sign-on) and a till's only
    // session, both sending without ever reading.
    let mut keyless = raw_connect(d.addr).await.into_inner();
    let mut session = sign_on(d.addr, till).await.into_inner();
    let sent = [
        flood_unread(&mut keyless).await,
        flood_unread(&mut session).await,
    ];
    let stalled = Instant::now();
    // While stuck, the session holds the till's one slot.
    assert_eq!(sign_on_refused(d.addr, till).await, E::QuotaExceeded);
    // The daemon closes both within the write timeout (3 s, well inside
    // the 10 s sign-on deadline and the 600 s idle one), though the peers
    // still hold them open, and every slot comes back.
    assert!(
        wait_until(|| open() == Some(0.0)),
        "stuck connections still open after {:?} ({sent:?} bytes sent)",
        stalled.elapsed()
    );
    let freed = stalled.elapsed();
    assert!(freed < Duration::from_secs(10), "freed after {freed:?}");
    let mut again = connect(d.addr, till.clone()).await;
    ok(&mut again, 50, purchase(&one.card, 1_00)).await;
    drop((keyless, session));
    eprintln!("{sent:?} bytes sent unread; closed after {freed:?}");
}

/// Writes echo frames of the largest payload on `w` until a write fails
/// (the daemon closed the connection); returns when that was.
async fn echo_until_closed(mut w: tokio::net::tcp::OwnedWriteHalf) -> Instant {
    let payload = vec![7; cardd::limits::MAX_ECHO_BYTES];
    let batch = msg(9, Body::Echo(pb::Echo { payload })).repeat(16);
    while w.write_all(&batch).await.is_ok() {}
    Instant::now()
}

/// Reads 2 KiB every 100 ms from `r` until it ends: far faster than a
/// write timeout needs, far slower than echoes are asked for, so the
/// daemon's queue for this peer stays full.
async fn read_slowly(mut r: tokio::net::tcp::OwnedReadHalf) {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 2048];
    while matches!(r.read(&mut buf).await, Ok(n) if n > 0) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyless_peer_that_reads_slowly_is_closed_at_the_sign_on_deadline() {
    use cardd::limits::SIGN_ON_TIMEOUT_SECS;
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo(dir.path());
    let started = Instant::now();
    // Echo is answered before sign-on: a peer that never signs on keeps
    // asking for echoes and takes its answers slowly.
    let (r, w) = raw_connect(d.addr).await.into_inner().into_split();
    let reader = tokio::spawn(read_slowly(r));
    let writer = tokio::spawn(echo_until_closed(w));
    let limit = Duration::from_secs(SIGN_ON_TIMEOUT_SECS + 15);
    let closed = tokio::time::timeout(limit, writer).await;
    reader.abort();
    let closed = closed.expect("a keyless peer is still connected 15 s past the sign-on deadline");
    let after = closed.expect("writer task") - started;
    assert!(
        after >= Duration::from_secs(SIGN_ON_TIMEOUT_SECS - 1)
            && after < Duration::from_secs(SIGN_ON_TIMEOUT_SECS + 3),
        "closed after {after:?}, not at the {SIGN_ON_TIMEOUT_SECS} s deadline"
    );
    // The daemon serves on.
    let mut till = demo.terminal(d.addr, 0).await;
    inquiry(&mut till, &demo.manifest.cards[0]).await;
}

#[tokio::test]
async fn a_peer_silent_after_its_challenge_is_told_at_the_sign_on_deadline() {
    use cardd::limits::SIGN_ON_TIMEOUT_SECS;
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo(dir.path());
    let mut f = raw_connect(d.addr).await;
    let started = Instant::now();
    let key = read_key_file(&demo.terminal_key_path(0)).unwrap();
    raw_challenge(&mut f, &key).await;
    // No proof: the daemon's answer, when it comes, is the refusal.
    let told = raw_recv(&mut f).await;
    let after = started.elapsed();
    assert_eq!(expect_error(&told), E::NotSignedOn, "{told:?}");
    assert!(
        after >= Duration::from_secs(SIGN_ON_TIMEOUT_SECS - 1),
        "told after {after:?}, before the {SIGN_ON_TIMEOUT_SECS} s deadline"
    );
    assert!(raw_closed(&mut f).await, "still open after the refusal");
}

#[tokio::test]
async fn refused_enrolments_keep_no_key_from_another_brand() {
    let dir = tempfile::tempdir().unwrap();
    let (d, [one, two]) = two_brands(dir.path(), &[]).await;
    let keys: Vec<SigningKey> = (0..4).map(|_| generate_key()).collect();
    // A till of brand one may not enrol anything; its owner's enrolments
    // that the state machine refuses (no such store, a key twice) stand
    // for nothing either.
    let mut till = connect(d.addr, one.tills[0].clone()).await;
    let by_till = refused(&mut till, 20, enroll(1, &keys[0], "rogue")).await;
    assert_eq!(by_till, E::WrongRole);
    let by_till = refused(&mut till, 21, add_auditor(&keys[1])).await;
    assert_eq!(by_till, E::WrongRole);
    let mut owner = connect(d.addr, one.owner.clone()).await;
    let nowhere = refused(&mut owner, 20, enroll(99, &keys[2], "nowhere")).await;
    assert_eq!(nowhere, E::StoreNotFound);
    // Brand two's owner enrols every one of those keys, and they work.
    let mut other = connect(d.addr, two.owner.clone()).await;
    ok(&mut other, 20, enroll(1, &keys[0], "till 3")).await;
    ok(&mut other, 21, add_auditor(&keys[1])).await;
    ok(&mut other, 22, enroll(1, &keys[2], "till 4")).await;
    let mut t = connect(d.addr, keys[0].clone()).await;
    ok(&mut t, 1, purchase(&two.card, 1_00)).await;
    // A key enrolled stays its brand's: brand one's owner cannot take it.
    let taken = refused(&mut owner, 21, enroll(1, &keys[2], "taken")).await;
    assert_eq!(taken, E::KeyInUse);
    // Brand one's own enrolment of a fresh key still works.
    ok(&mut owner, 22, enroll(1, &keys[3], "till 3")).await;
}
