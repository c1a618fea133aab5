//! A key enrolment whose commit failed keeps its key from every other
//! brand until a restart (`server::keys::Reservation::keep`): its record
//! may be on disk, and only recovery can tell which brand owns the key.
//! The commit fails for real here: the power is cut under the running
//! daemon, so every write and fsync it makes afterwards fails with EIO.
use cardd::crypto::{generate_key, read_key_file};
use cardd::pb::ErrorCode as E;

use super::{proc, sign_on, Rig};
use crate::common::run::brand_create_ok;
use crate::common::{add_auditor, call};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_whose_enrolment_failed_to_commit_is_kept_from_other_brands() {
    let Some(mut rig) = Rig::new() else { return };
    let data = rig.data();
    let keys = rig.root.path().join("keys");
    std::fs::create_dir(&keys).expect("keys dir");
    let owners = ["One", "Two"].map(|name| {
        let path = keys.join(name);
        brand_create_ok(&data, name, &path);
        read_key_file(&path).expect("owner key")
    });
    let serve = proc::serve(&data, &[]).expect_listening("two brands");
    let mut one = sign_on(&serve, &owners[0]).await;
    let mut two = sign_on(&serve, &owners[1]).await;
    // Both brands commit before the cut.
    let before = generate_key();
    call(&mut one, 1, add_auditor(&before))
        .await
        .expect("an enrolment");
    call(&mut two, 1, add_auditor(&generate_key()))
        .await
        .expect("an enrolment");
    assert_eq!(
        call(&mut two, 2, add_auditor(&before)).await.unwrap_err(),
        E::KeyInUse,
        "a key enrolled in another brand"
    );

    rig.cut();
    let key = generate_key();
    assert_eq!(
        call(&mut one, 2, add_auditor(&key)).await.unwrap_err(),
        E::StorageFailure,
        "the enrolment's commit"
    );
    // Brand two never gets as far as its own (failing) commit: the key is
    // still brand one's.
    assert_eq!(
        call(&mut two, 3, add_auditor(&key)).await.unwrap_err(),
        E::KeyInUse,
        "the key of a failed enrolment, offered to another brand"
    );
    drop(serve);
}
