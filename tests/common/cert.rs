//! Self-signed TLS certificates for tests (`tests/tls.rs`, `tests/ops`):
//! made with rcgen, written with exact file modes.
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use cardd::client::TlsClient;

/// A self-signed certificate for `names`: (certificate PEM, key PEM).
pub fn self_signed(names: &[&str]) -> (String, String) {
    let ck =
        rcgen::generate_simple_self_signed(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .expect("generate a certificate");
    (ck.cert.pem(), ck.signing_key.serialize_pem())
}

/// Writes `text` to `path` with file mode `mode`.
pub fn write_mode(path: &Path, text: &str, mode: u32) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .expect("create file");
    f.write_all(text.as_bytes()).expect("write file");
    // The umask may have narrowed the mode: set it exactly.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// A certificate and its key (0600) for "localhost" in `dir`.
pub struct Cert {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Cert {
    pub fn new(dir: &Path, name: &str) -> Cert {
        let (cert_pem, key_pem) = self_signed(&["localhost"]);
        let cert = dir.join(format!("{name}.crt.pem"));
        let key = dir.join(format!("{name}.key.pem"));
        write_mode(&cert, &cert_pem, 0o644);
        write_mode(&key, &key_pem, 0o600);
        Cert { cert, key }
    }

    pub fn cert_str(&self) -> &str {
        self.cert.to_str().expect("utf-8 path")
    }

    pub fn key_str(&self) -> &str {
        self.key.to_str().expect("utf-8 path")
    }

    /// A client that trusts this certificate, expecting `name`.
    pub fn trusting(&self, name: &str) -> TlsClient {
        TlsClient::from_ca_file(&self.cert, name).expect("TLS client")
    }
}
