//! Keys and signatures: domain-separated messages, ed25519 key files.
//!
//! Every signed message starts with its own domain string so that a
//! signature made for one purpose (a sign-on nonce) can never be replayed as
//! another (a request or a checkpoint).
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

/// Domain of a terminal's or owner's sign-on signature.
pub const DOMAIN_SIGN_ON: &[u8] = b"cardd.v1 sign-on\0";
/// Domain of a signed request.
pub const DOMAIN_REQUEST: &[u8] = b"cardd.v1 request\0";
/// Domain of a server checkpoint signature.
pub const DOMAIN_CHECKPOINT: &[u8] = b"cardd.v1 checkpoint\0";
/// Domain of a server signature over a state snapshot's SHA-256.
pub const DOMAIN_SNAPSHOT: &[u8] = b"cardd.v1 snapshot\0";
/// Domain of a new owner key's proof of possession (`RotateOwnerKey`).
pub const DOMAIN_OWNER_KEY: &[u8] = b"cardd.v1 owner-key\0";

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// RFC 9162 leaf hash: SHA-256(0x00 || data). Also the record hash.
pub fn leaf_hash(data: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(data);
    h.finalize().into()
}

/// RFC 9162 interior node hash: SHA-256(0x01 || left || right).
pub fn node_hash(left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

fn domain_message(domain: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let len = domain.len() + parts.iter().map(|p| p.len()).sum::<usize>();
    let mut msg = Vec::with_capacity(len);
    msg.extend_from_slice(domain);
    for p in parts {
        msg.extend_from_slice(p);
    }
    msg
}

/// The message a client signs to answer a sign-on challenge.
pub fn sign_on_message(nonce: &[u8], server_key: &[u8]) -> Vec<u8> {
    domain_message(DOMAIN_SIGN_ON, &[nonce, server_key])
}

/// The message a client signs for a request.
pub fn request_message(request: &[u8]) -> Vec<u8> {
    domain_message(DOMAIN_REQUEST, &[request])
}

/// The message a new owner key signs to prove it is held:
/// domain || brand_id (u32 BE) || the new key.
pub fn owner_key_message(brand_id: u32, new_key: &[u8]) -> Vec<u8> {
    domain_message(DOMAIN_OWNER_KEY, &[&brand_id.to_be_bytes(), new_key])
}

/// Signs a request's bytes as a terminal or owner does.
pub fn sign_request(key: &SigningKey, request: &[u8]) -> Vec<u8> {
    key.sign(&request_message(request)).to_bytes().to_vec()
}

/// Parses a 32-byte public key, refusing weak (small-order) keys, which
/// would let one signature verify for many messages.
pub fn parse_public_key(bytes: &[u8]) -> Option<VerifyingKey> {
    let arr: [u8; 32] = bytes.try_into().ok()?;
    let key = VerifyingKey::from_bytes(&arr).ok()?;
    if key.is_weak() {
        return None;
    }
    Some(key)
}

/// Verifies a domain-separated signature strictly (no malleable encodings).
pub fn verify_strict(key: &VerifyingKey, message: &[u8], signature: &[u8]) -> bool {
    let Ok(sig) = Signature::from_slice(signature) else {
        return false;
    };
    key.verify_strict(message, &sig).is_ok()
}

/// Generates a fresh signing key from the operating system's RNG.
pub fn generate_key() -> SigningKey {
    SigningKey::generate(&mut rand::rngs::OsRng)
}

/// Why a key file could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// The file could not be created (it may exist already).
    #[error("creating key file {}", .path.display())]
    Create {
        /// The file.
        path: PathBuf,
        /// What the file system said.
        source: io::Error,
    },
    /// The key could not be written and synced.
    #[error("writing key file {}", .path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// What the file system said.
        source: io::Error,
    },
    /// The file could not be read.
    #[error("reading key file {}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the file system said.
        source: io::Error,
    },
    /// Group or others may read the file.
    #[error("key file {} is readable by others (mode {mode:o}); chmod 600 it", .path.display())]
    ReadableByOthers {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The content is not hex.
    #[error("key file is not hex")]
    NotHex(#[source] hex::FromHexError),
    /// The content is not a 32-byte seed.
    #[error("key file must hold 32 bytes")]
    Length,
}

/// Writes a signing key (hex of the 32-byte seed) to `path` with mode 0600.
/// Refuses to overwrite an existing file.
pub fn write_key_file(path: &Path, key: &SigningKey) -> Result<(), KeyFileError> {
    // Written whole through a temporary file (fsync, rename, directory
    // fsync): a crash leaves no key file or a whole one, never an empty one
    // that would stop every later start. A hard link would refuse an
    // existing name atomically, but not every file system has them, so an
    // existing key is refused before anything is written.
    if path.exists() {
        return Err(KeyFileError::Create {
            path: path.to_path_buf(),
            source: io::ErrorKind::AlreadyExists.into(),
        });
    }
    let text = format!("{}\n", hex::encode(key.to_bytes()));
    crate::storage::fsutil::replace_durably(path, text.as_bytes(), true).map_err(|source| {
        KeyFileError::Write {
            path: path.to_path_buf(),
            source,
        }
    })
}

/// Reads a signing key written by [`write_key_file`]. Refuses a file that
/// other users can read: a key anyone on the machine can copy is no key.
pub fn read_key_file(path: &Path) -> Result<SigningKey, KeyFileError> {
    let read_err = |source| KeyFileError::Read {
        path: path.to_path_buf(),
        source,
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(path).map_err(read_err)?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(KeyFileError::ReadableByOthers {
                path: path.to_path_buf(),
                mode: mode & 0o777,
            });
        }
    }
    let text = fs::read_to_string(path).map_err(read_err)?;
    let bytes = hex::decode(text.trim()).map_err(KeyFileError::NotHex)?;
    let seed: [u8; 32] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| KeyFileError::Length)?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Loads the key at `path`, creating it on first use.
pub fn load_or_create_key(path: &Path) -> Result<SigningKey, KeyFileError> {
    if path.exists() {
        read_key_file(path)
    } else {
        let key = generate_key();
        write_key_file(path, &key)?;
        Ok(key)
    }
}
