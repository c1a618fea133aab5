//! Reading and writing export files, and exporting through the CLI or the
//! protocol.
use super::*;

/// One export frame: where it lies in the file and what it holds.
#[derive(Debug, Clone)]
pub(crate) struct Frame {
    pub(crate) start: usize,
    pub(crate) end: usize,
    pub(crate) item: Item,
}

/// Parses the export framing independently of `ExportReader`.
pub(crate) fn frames(bytes: &[u8]) -> Vec<Frame> {
    assert_eq!(&bytes[..8], EXPORT_MAGIC, "magic bytes");
    let mut at = 8;
    let mut out = Vec::new();
    while at < bytes.len() {
        let len = u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        let body = &bytes[at + 4..at + 4 + len];
        let item = ExportItem::decode(body)
            .expect("export item decodes")
            .item
            .expect("export item is not empty");
        out.push(Frame {
            start: at,
            end: at + 4 + len,
            item,
        });
        at += 4 + len;
    }
    assert_eq!(at, bytes.len(), "frames end exactly at the end of the file");
    out
}

/// Writes `items` as an export file.
pub(crate) fn assemble(items: &[Item]) -> Vec<u8> {
    let mut out = EXPORT_MAGIC.to_vec();
    for i in items {
        write_item(&mut out, i.clone()).expect("write to a Vec");
    }
    out
}

pub(crate) fn items(bytes: &[u8]) -> Vec<Item> {
    frames(bytes).into_iter().map(|f| f.item).collect()
}

pub(crate) fn record_seq(bytes: &[u8]) -> u64 {
    pb::Record::decode(bytes).expect("record decodes").seq
}

/// Verifies an in-memory export with the library.
pub(crate) fn verify(
    bytes: &[u8],
    server_key: [u8; 32],
    old: Option<pb::Checkpoint>,
) -> Result<VerifyReport, VerifyError> {
    verify_export(
        bytes,
        &VerifyOptions {
            server_key,
            old_checkpoint: old,
        },
        |_| {},
    )
}

/// Exports over the protocol with the owner key, in process.
pub(crate) async fn export_online(addr: std::net::SocketAddr, demo: &Demo) -> Vec<u8> {
    let mut owner = demo.owner(addr).await;
    let mut out = Vec::new();
    let n = bounded(owner.export(&mut out)).await.expect("export");
    assert_eq!(n as usize, out.len());
    out
}

/// `cardd server-key --data DIR`.
pub(crate) fn server_key_hex(data: &Path) -> String {
    let o = cardd!("server-key", "--data", data);
    assert_ok(&o, "server-key");
    stdout(&o).trim().to_string()
}

pub(crate) fn status_name(v: &pb::CardView) -> &'static str {
    CardStatus::try_from(v.status).map_or("UNKNOWN", |s| s.as_str_name())
}

pub(crate) fn read_checkpoint(path: &Path) -> pb::Checkpoint {
    pb::Checkpoint::decode(std::fs::read(path).expect("checkpoint file").as_slice())
        .expect("checkpoint decodes")
}

/// Exports over the CLI and verifies it (extending `old`, if given), saving
/// the newest checkpoint next to it. Returns (export, checkpoint) paths.
pub(crate) fn cli_export_and_save(
    dir: &Path,
    name: &str,
    addr: std::net::SocketAddr,
    demo: &Demo,
    key_hex: &str,
    old: Option<&Path>,
) -> (PathBuf, PathBuf) {
    let export = dir.join(format!("{name}.export"));
    let save = dir.join(format!("{name}.checkpoint"));
    let o = cardd!(
        "audit",
        "export",
        "--connect",
        &addr.to_string(),
        "--key",
        &demo.owner_key_path(),
        "--out",
        &export
    );
    assert_ok(&o, "audit export --connect");
    let mut args: Vec<OsString> = ["audit", "verify"].map(OsString::from).to_vec();
    args.push(export.clone().into());
    args.extend(["--server-key", key_hex, "--save-checkpoint"].map(OsString::from));
    args.push(save.clone().into());
    if let Some(old) = old {
        args.push("--old-checkpoint".into());
        args.push(old.into());
    }
    let o = run_cardd(args);
    assert_ok(&o, "audit verify --save-checkpoint");
    (export, save)
}

/// An export file holds every card number and balance: readable by its
/// owner only, and a failed export leaves the previous file as it was.
#[tokio::test]
async fn an_export_is_private_and_replaces_the_old_file_only_when_complete() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo(dir.path());
    let key_hex = server_key_hex(&d.data);
    let (export, _) = cli_export_and_save(dir.path(), "first", d.addr, &demo, &key_hex, None);
    let mode = std::fs::metadata(&export).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
    let before = std::fs::read(&export).unwrap();
    let export_with = |key: &Path, out: &Path| {
        cardd!(
            "audit",
            "export",
            "--connect",
            &d.addr.to_string(),
            "--key",
            key,
            "--out",
            out
        )
    };
    // A till's key may not export: the command fails after opening its file.
    let o = export_with(&demo.terminal_key_path(0), &export);
    assert!(!o.status.success(), "a till exported: {}", stderr(&o));
    assert_eq!(
        std::fs::read(&export).unwrap(),
        before,
        "the old export is intact"
    );
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.ends_with(".tmp")), "{names:?}");
    // What is not a regular file is written through: `--out /dev/stdout`.
    let o = export_with(&demo.owner_key_path(), Path::new("/dev/stdout"));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(&o.stdout[..8], EXPORT_MAGIC, "an export on standard output");
}
