//! A start that fails leaves nothing behind (issue 23): the listeners are
//! bound before the data directory or the server key exist.
use std::net::TcpListener;

use crate::common::run::cardd;

#[test]
fn a_serve_on_a_taken_port_leaves_no_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let data = dir.path().join("data");
    let data_arg = data.to_str().unwrap();
    let out = cardd(["serve", "--data", data_arg, "--listen", &addr]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&addr), "the address is named: {err}");
    assert!(!data.exists(), "a failed start made {}", data.display());

    // The HTTP listener's address too.
    let out = cardd([
        "serve",
        "--data",
        data_arg,
        "--listen",
        "127.0.0.1:0",
        "--http-listen",
        &addr,
    ]);
    assert!(!out.status.success());
    assert!(!data.exists(), "a failed start made {}", data.display());
}

#[test]
fn a_missing_tls_file_leaves_no_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let missing = dir.path().join("missing.pem");
    let out = cardd([
        "serve".as_ref(),
        "--data".as_ref(),
        data.as_os_str(),
        "--listen".as_ref(),
        "127.0.0.1:0".as_ref(),
        "--tls-cert".as_ref(),
        missing.as_os_str(),
        "--tls-key".as_ref(),
        missing.as_os_str(),
    ]);
    assert!(!out.status.success());
    assert!(!data.exists(), "a failed start made {}", data.display());
}
