//! `cardd backup` takes the TLS options of the other online commands.
use std::os::unix::fs::PermissionsExt;

use common::Daemon;

use super::*;

#[tokio::test]
async fn backup_over_tls_trusts_only_the_given_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
    let cert = dir.path().join("server.crt.pem");
    let key = dir.path().join("server.key.pem");
    std::fs::write(&cert, ck.cert.pem()).expect("cert");
    std::fs::write(&key, ck.signing_key.serialize_pem()).expect("key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let tls_args = [
        "--tls-cert",
        cert.to_str().expect("utf-8"),
        "--tls-key",
        key.to_str().expect("utf-8"),
    ];
    let (d, demo) = Daemon::demo_with(dir.path(), &tls_args);
    let addr = d.addr.to_string();
    let file = dir.path().join("brand-1.cardd-backup");

    // Plain TCP to a TLS port: refused, and no file is left.
    assert_fails(
        &backup_online(&addr, &demo.owner_key_path(), &file),
        "backup without --tls-ca",
    );
    assert!(!file.exists());

    let o = cardd!(
        "backup",
        "--connect",
        &addr,
        "--key",
        demo.owner_key_path(),
        "--out",
        &file,
        "--tls-ca",
        &cert
    );
    assert_ok(&o, "backup over TLS");
    let key_hex = server_key_hex(&demo.data);
    assert_eq!(verify_json(&file, &key_hex)["records"], 17);
}
