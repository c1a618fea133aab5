//! `cardd serve --standby --replicate`: a second node with its own data
//! directory and the same server key follows the active node's log,
//! checking every record, and ends up with the same ledger byte for byte.
use std::net::SocketAddr;
use std::path::Path;

use crate::common::http::{free_addr, metrics, sample};
use crate::common::run::export_and_verify;
use crate::common::{ok, purchase, wait_until, Daemon};

/// Starts a standby on `data` with the server key of the active's `from`.
pub fn start_standby(from: &Path, data: &Path, urls: &str) -> (Daemon, SocketAddr) {
    std::fs::create_dir_all(data).unwrap();
    std::fs::copy(from.join("server.key"), data.join("server.key")).unwrap();
    let http = free_addr();
    let http_arg = http.to_string();
    // No failure budgets: a till signing on before the standby serves its
    // brand fails, and the failover test retries until it serves.
    let mut args = vec!["--standby", "--replicate", urls, "--http-listen", &http_arg];
    args.extend(Daemon::NO_RATE_LIMITS);
    let d = Daemon::start(data, &args);
    (d, http)
}

/// The standby's record count for `brand`, from its metrics.
pub fn records_on(http: SocketAddr, brand: u32) -> Option<u64> {
    sample(
        &metrics(http),
        &format!("cardd_records{{brand=\"{brand}\"}}"),
    )
    .map(|v| v as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_follows_every_commit_and_exports_the_same_bytes() {
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
    let card = demo.manifest.cards[4].clone();
    let mut t = demo.terminal(active.addr, 0).await;
    for txn in 100..103 {
        ok(&mut t, txn, purchase(&card, 1_000)).await;
    }
    // Started behind: it reads what it missed, then follows live commits.
    let standby_data = dir.path().join("standby");
    let (mut standby, http) = start_standby(&demo.data, &standby_data, &urls);
    for txn in 103..109 {
        ok(&mut t, txn, purchase(&card, 1_000)).await;
    }
    // A till enrolled while the standby follows.
    let new_till = cardd::crypto::generate_key();
    let mut owner = demo.owner(active.addr).await;
    ok(
        &mut owner,
        50,
        crate::common::enroll(1, &new_till, "Downtown till 2"),
    )
    .await;
    let target = 17 + 10;
    assert!(
        wait_until(|| records_on(http, brand) == Some(target)),
        "the standby reached record {target}: it holds {:?}",
        records_on(http, brand)
    );
    // A till that signs on at the standby, even one enrolled after it
    // started, is told where the brand is served: NOT_ACTIVE at once, and
    // the address once the standby's lease loop has read who holds the
    // lease (each look, every 0.5 s; a loaded cluster can time a read out).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let mut f = crate::common::raw::send_sign_on_proof(standby.addr, &new_till).await;
        let refusal = match crate::common::raw::raw_recv(&mut f).await.body {
            Some(cardd::pb::server_message::Body::Error(e)) => e,
            other => panic!("expected NOT_ACTIVE, got {other:?}"),
        };
        assert_eq!(
            refusal.code,
            cardd::pb::ErrorCode::NotActive as i32,
            "{refusal:?}"
        );
        if refusal.active_address == active.addr.to_string() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the standby never named the active node: {refusal:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    active.kill9();
    standby.kill9();
    let a = dir.path().join("active.export");
    let s = dir.path().join("standby.export");
    let report = export_and_verify(&demo.data, brand, &a);
    export_and_verify(&standby_data, brand, &s);
    assert_eq!(report["records"], target, "{report}");
    let (a_header, a_body) = export_parts(&a);
    let (s_header, s_body) = export_parts(&s);
    assert!(
        a_body == s_body,
        "the standby's records and checkpoints are the active's, byte for byte"
    );
    assert_eq!(
        (a_header.tree_size, a_header.server_public_key),
        (s_header.tree_size, s_header.server_public_key)
    );
}

/// An export file's header and the bytes after it (the header alone holds
/// the moment of the export, which differs between two exports).
pub fn export_parts(path: &Path) -> (cardd::pb::ExportHeader, Vec<u8>) {
    use prost::Message;
    let bytes = std::fs::read(path).unwrap();
    let magic = b"CARDDEX1".len();
    let len = u32::from_be_bytes(bytes[magic..magic + 4].try_into().unwrap()) as usize;
    let header = &bytes[magic + 4..magic + 4 + len];
    let item = cardd::pb::ExportItem::decode(header).expect("an export item");
    let Some(cardd::pb::export_item::Item::Header(header)) = item.item else {
        panic!("the export does not start with its header");
    };
    (header, bytes[magic + 4 + len..].to_vec())
}
