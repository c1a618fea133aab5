//! TLS set-up for both ends of the terminal port: the rustls provider, the
//! daemon's acceptor (`--tls-cert`/`--tls-key`) and the client's
//! configuration (`--tls-ca`). TLS 1.3 only, rustls with the ring provider
//! (aws-lc-rs needs cmake and nasm to build), no client certificates: TLS
//! adds confidentiality, the ed25519 sign-on and request signatures stay
//! the authentication.
//!
//! Both `server` and `client` import this module; it imports neither.
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Only one of certificate and key was given.
    #[error("TLS needs both --tls-cert and --tls-key")]
    Incomplete,
    /// The daemon's certificate file could not be read.
    #[error("reading the TLS certificate {}", .path.display())]
    ReadCert {
        /// The file.
        path: PathBuf,
        /// What the file system said.
        source: io::Error,
    },
    /// The daemon's key file could not be read.
    #[error("reading the TLS key {}", .path.display())]
    ReadKey {
        /// The file.
        path: PathBuf,
        /// What the file system said.
        source: io::Error,
    },
    /// The daemon's certificate file is not PEM.
    #[error("TLS certificate {}: not PEM", .path.display())]
    CertNotPem {
        /// The file.
        path: PathBuf,
        /// What the PEM parser said.
        source: pem::Error,
    },
    /// The daemon's certificate file holds no certificate.
    #[error("TLS certificate {}: no PEM certificate (BEGIN CERTIFICATE) found", .path.display())]
    NoCert {
        /// The file.
        path: PathBuf,
    },
    /// The daemon's key file is readable by group or others.
    #[error("TLS key file {} is readable by others (mode {mode:o}); chmod 600 it", .path.display())]
    KeyReadable {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The daemon's key file holds no private key.
    #[error("TLS key {}: no PEM private key found", .path.display())]
    NoKey {
        /// The file.
        path: PathBuf,
        /// What the PEM parser said.
        source: pem::Error,
    },
    /// rustls refused TLS 1.3 with the ring provider.
    #[error("TLS 1.3 with the ring provider")]
    Provider(#[source] rustls::Error),
    /// The certificate and the key do not belong together.
    #[error("TLS certificate {} and key {} do not make a usable pair", .cert.display(), .key.display())]
    Pair {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls said.
        source: rustls::Error,
    },
    /// The name to check the server's certificate against is not one.
    #[error("{0:?} is not a DNS name or an IP address")]
    ServerName(String),
    /// The client's CA file could not be read.
    #[error("reading {}", .path.display())]
    ReadCa {
        /// The file.
        path: PathBuf,
        /// What the file system said.
        source: io::Error,
    },
    /// The client's CA file has something that is not a PEM certificate.
    #[error("{}: not a PEM certificate", .path.display())]
    CaNotPem {
        /// The file.
        path: PathBuf,
        /// What the PEM parser said.
        source: pem::Error,
    },
    /// A certificate of the client's CA file cannot be a trust root.
    #[error("{}: certificate not usable", .path.display())]
    CaUnusable {
        /// The file.
        path: PathBuf,
        /// What rustls said.
        source: rustls::Error,
    },
    /// The client's CA file holds no certificate.
    #[error("{}: no PEM certificate (BEGIN CERTIFICATE) found", .path.display())]
    NoCa {
        /// The file.
        path: PathBuf,
    },
}

/// The rustls provider used on both ends: ring (aws-lc-rs needs cmake and
/// nasm to build).
pub fn tls_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The TLS acceptor for `--tls-cert`/`--tls-key`, or `None` for plain TCP.
/// TLS 1.3 only, rustls with the ring provider, no client certificates
/// (terminals authenticate with their ed25519 sign-on). The key file must
/// not be readable by group or others.
pub fn tls_acceptor(
    cert: Option<&Path>,
    key: Option<&Path>,
) -> Result<Option<TlsAcceptor>, TlsError> {
    let (cert, key) = match (cert, key) {
        (None, None) => return Ok(None),
        (Some(cert), Some(key)) => (cert, key),
        _ => return Err(TlsError::Incomplete),
    };
    let chain = read_cert_chain(cert)?;
    let private_key = read_private_key(key)?;
    let config = rustls::ServerConfig::builder_with_provider(tls_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::Provider)?
        .with_no_client_auth()
        .with_single_cert(chain, private_key)
        .map_err(|source| TlsError::Pair {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            source,
        })?;
    Ok(Some(TlsAcceptor::from(Arc::new(config))))
}

/// The daemon's certificate chain: every certificate in the PEM file.
fn read_cert_chain(cert: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let path = || cert.to_path_buf();
    let cert_pem = std::fs::read(cert).map_err(|source| TlsError::ReadCert {
        path: path(),
        source,
    })?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::CertNotPem {
            path: path(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCert { path: path() });
    }
    Ok(chain)
}

/// The daemon's private key, refused if others may read its file.
fn read_private_key(key: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let read_err = |source| TlsError::ReadKey {
        path: key.to_path_buf(),
        source,
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(key)
            .map_err(read_err)?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(TlsError::KeyReadable {
                path: key.to_path_buf(),
                mode: mode & 0o777,
            });
        }
    }
    let key_pem = std::fs::read(key).map_err(read_err)?;
    PrivateKeyDer::from_pem_slice(&key_pem).map_err(|source| TlsError::NoKey {
        path: key.to_path_buf(),
        source,
    })
}

/// How a client speaks TLS: the certificates it trusts and the name the
/// server's certificate must carry. Cheap to clone.
#[derive(Clone)]
pub struct TlsClient {
    connector: TlsConnector,
    server_name: ServerName<'static>,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl TlsClient {
    /// From a rustls client configuration and the name to check the
    /// server's certificate against (a DNS name or an IP address).
    pub fn new(config: Arc<rustls::ClientConfig>, server_name: &str) -> Result<Self, TlsError> {
        let server_name = ServerName::try_from(server_name.to_string())
            .map_err(|_| TlsError::ServerName(server_name.to_string()))?;
        Ok(TlsClient {
            connector: TlsConnector::from(config),
            server_name,
        })
    }

    /// Trusts the certificates in the PEM file `ca` (a CA, or the server's
    /// own self-signed certificate), and nothing else; TLS 1.3 only.
    pub fn from_ca_file(ca: &Path, server_name: &str) -> Result<Self, TlsError> {
        let path = || ca.to_path_buf();
        let pem = std::fs::read(ca).map_err(|source| TlsError::ReadCa {
            path: path(),
            source,
        })?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|source| TlsError::CaNotPem {
                path: path(),
                source,
            })?;
            roots.add(cert).map_err(|source| TlsError::CaUnusable {
                path: path(),
                source,
            })?;
        }
        if roots.is_empty() {
            return Err(TlsError::NoCa { path: path() });
        }
        let config = rustls::ClientConfig::builder_with_provider(tls_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(TlsError::Provider)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        TlsClient::new(Arc::new(config), server_name)
    }

    /// The name checked against the server's certificate.
    pub fn server_name(&self) -> &ServerName<'static> {
        &self.server_name
    }

    /// The client's TLS handshake over `tcp`.
    pub async fn connect(
        &self,
        tcp: TcpStream,
    ) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        self.connector
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(handshake_error)
    }
}

/// A failed client handshake, with a hint for the common mistake of a
/// self-signed certificate made as a CA (`openssl req -x509` does that by
/// default), which rustls refuses as a server's own certificate.
fn handshake_error(e: io::Error) -> io::Error {
    let hint = if e.to_string().contains("CaUsedAsEndEntity") {
        " (the daemon's certificate is a CA certificate: make it with \
         basicConstraints CA:FALSE, or sign it with a CA and trust that CA)"
    } else {
        ""
    };
    io::Error::new(e.kind(), format!("TLS handshake: {e}{hint}"))
}
