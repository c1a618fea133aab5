//! `--config FILE`, `CARDD_<NAME>` and flags: precedence and errors.
use std::path::Path;
use std::process::Command;

use crate::common::run::{cardd, run_bounded, CARDD_LIMIT};
use crate::common::{cardd_bin, Daemon};

/// `cardd serve --config FILE ARGS…` with `env`, RUST_LOG=warn.
fn serve_with(file: &Path, args: &[&str], env: &[(&str, &Path)]) -> Command {
    let mut cmd = Command::new(cardd_bin());
    cmd.arg("serve").arg("--config").arg(file).args(args);
    cmd.env("RUST_LOG", "warn").env_remove("CARDD_DATA");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

#[test]
fn a_flag_beats_the_environment_which_beats_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (from_file, from_env, from_flag) = (
        dir.path().join("from-file"),
        dir.path().join("from-env"),
        dir.path().join("from-flag"),
    );
    let file = dir.path().join("cardd.toml");
    let text = format!(
        "data = {:?}\nlisten = \"127.0.0.1:0\"\nlog_format = \"json\"\n",
        from_file.to_str().unwrap()
    );
    std::fs::write(&file, text).unwrap();

    // The file alone: its data directory (and its listen address: port 0).
    let d = Daemon::start_command(serve_with(&file, &[], &[]), &from_file);
    assert!(from_file.join("server.key").exists());
    drop(d);

    // The environment over the file.
    let env = [("CARDD_DATA", from_env.as_path())];
    let d = Daemon::start_command(serve_with(&file, &[], &env), &from_env);
    assert!(from_env.join("server.key").exists());
    drop(d);

    // The flag over both.
    let flag = ["--data", from_flag.to_str().unwrap()];
    let d = Daemon::start_command(serve_with(&file, &flag, &env), &from_flag);
    assert!(from_flag.join("server.key").exists());
    drop(d);
    // Each start used only its own winner.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 4);
}

#[test]
fn config_check_prints_the_effective_settings_environment_included() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cardd.toml");
    std::fs::write(&file, "snapshot_every = 1000\naudit_streams = 4\n").unwrap();
    let out = run_bounded(
        Command::new(cardd_bin())
            .args(["config", "check"])
            .arg(&file)
            .env("CARDD_AUDIT_STREAMS", "6")
            .env("CARDD_HTTP_LISTEN", "127.0.0.1:9700"),
        CARDD_LIMIT,
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.lines().any(|l| l == "snapshot_every = 1000"), "{text}");
    assert!(text.lines().any(|l| l == "audit_streams = 6"), "{text}");
    assert!(
        text.lines()
            .any(|l| l == "http_listen = \"127.0.0.1:9700\""),
        "{text}"
    );
    // A default, and an unset option shown as such.
    assert!(
        text.lines().any(|l| l == "listen = \"127.0.0.1:7700\""),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l == "# tls_cert = (not set)"),
        "{text}"
    );
}

/// `cardd config check` on `text`: fails, and its message names `names`.
fn refused(text: &str, names: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cardd.toml");
    std::fs::write(&file, text).unwrap();
    let out = cardd(["config".as_ref(), "check".as_ref(), file.as_os_str()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text:?} was accepted");
    for name in names {
        assert!(err.contains(name), "{text:?}: {name} not named in: {err}");
    }
    // And serve refuses it the same way, before it makes a data directory.
    let data = dir.path().join("data");
    let out = run_bounded(
        &mut serve_with(&file, &["--data", data.to_str().unwrap()], &[]),
        CARDD_LIMIT,
    );
    assert!(!out.status.success());
    assert!(
        !data.exists(),
        "a refused configuration made {}",
        data.display()
    );
}

#[test]
fn an_unknown_key_is_named() {
    refused(
        "listen_addr = \"127.0.0.1:7700\"\n",
        &["listen_addr", "unknown field"],
    );
}

#[test]
fn a_value_of_the_wrong_type_is_named() {
    refused("snapshot_every = \"often\"\n", &["snapshot_every", "often"]);
    refused("log_format = \"xml\"\n", &["log_format", "xml"]);
}

#[test]
fn a_value_out_of_range_is_named_with_its_flag_and_variable() {
    refused(
        "audit_streams = 0\n",
        &[
            "audit_streams = 0",
            "--audit-streams",
            "CARDD_AUDIT_STREAMS",
        ],
    );
    refused("tls_cert = \"c.pem\"\n", &["tls_key"]);
    // Both named, neither there: config check reads them as serve would.
    refused(
        "tls_cert = \"/nonexistent/c.pem\"\ntls_key = \"/nonexistent/k.pem\"\n",
        &["tls_cert / tls_key", "/nonexistent/c.pem"],
    );
}

#[test]
fn a_bad_environment_value_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cardd.toml");
    std::fs::write(&file, "").unwrap();
    let out = run_bounded(
        Command::new(cardd_bin())
            .args(["config", "check"])
            .arg(&file)
            .env("CARDD_SNAPSHOT_EVERY", "lots"),
        CARDD_LIMIT,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("--snapshot-every") && err.contains("lots"),
        "{err}"
    );
}
