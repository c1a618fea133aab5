//! Signed snapshots of a brand's state: a restart loads the newest one and
//! replays only the records written after it, instead of the whole chain.
//!
//! One file per brand, `DATA/snapshots/brand-<id>.snap`, replaced
//! atomically (temporary file, fsync, rename, fsync of the directory):
//!
//! ```text
//! "CARDDSN1" | body | body length (u64, big-endian) | signature (64 bytes)
//! ```
//!
//! The body is the `BrandState` in postcard; the signature is the server
//! key's over `"cardd.v1 snapshot\0" ‖ SHA-256(body)`. A snapshot is a
//! shortcut, never evidence: recovery uses one only if it verifies, names
//! its brand and lies on the stored chain (its head hash is the hash of the
//! stored record at its sequence number), then replays the rest and checks
//! the newest checkpoint as before; otherwise it replays the whole chain.
//! `cardd check` always replays in full and compares the snapshot with the
//! replayed state at the snapshot's sequence number.
use std::fs::{self, File};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, ensure, Context};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::crypto::{sha256, DOMAIN_SNAPSHOT};
use crate::limits::MAX_SNAPSHOT_BYTES;
use crate::state::BrandState;

const MAGIC: &[u8; 8] = b"CARDDSN1";
/// Body length and signature.
const TRAILER: usize = 8 + 64;

/// Where a data directory keeps its snapshots.
pub fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("snapshots")
}

fn path(dir: &Path, brand: u32) -> PathBuf {
    dir.join(format!("brand-{brand}.snap"))
}

fn signed_message(body_digest: &[u8; 32]) -> Vec<u8> {
    [DOMAIN_SNAPSHOT, body_digest.as_slice()].concat()
}

/// Hashes and counts what passes through, so the body is streamed to disk
/// without a second copy of it in memory.
struct HashingWriter<W> {
    inner: W,
    hash: Sha256,
    len: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Writes `state`'s snapshot durably, replacing the brand's previous one.
/// Returns the file's size in bytes.
pub fn write(dir: &Path, state: &BrandState, key: &SigningKey) -> anyhow::Result<u64> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let final_path = path(dir, state.brand_id);
    let tmp = final_path.with_extension("snap.tmp");
    let file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut inner = BufWriter::new(file);
    inner.write_all(MAGIC)?;
    let body = HashingWriter {
        inner,
        hash: Sha256::new(),
        len: 0,
    };
    let HashingWriter {
        mut inner,
        hash,
        len,
    } = postcard::to_io(state, body).context("encoding the snapshot")?;
    let digest: [u8; 32] = hash.finalize().into();
    inner.write_all(&len.to_be_bytes())?;
    inner.write_all(&key.sign(&signed_message(&digest)).to_bytes())?;
    let file = inner.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    fs::rename(&tmp, &final_path)?;
    // The rename is durable only once the directory is.
    File::open(dir)?.sync_all()?;
    Ok(len + (MAGIC.len() + TRAILER) as u64)
}

/// The brand's snapshot, verified against the server key; None if there is
/// none. An error says why one exists but cannot be used.
pub fn read(dir: &Path, brand: u32, key: &VerifyingKey) -> anyhow::Result<Option<BrandState>> {
    let path = path(dir, brand);
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    let size = file.metadata()?.len();
    ensure!(
        size <= MAX_SNAPSHOT_BYTES,
        "snapshot of {size} bytes is over the limit"
    );
    let min = (MAGIC.len() + TRAILER) as u64;
    ensure!(size >= min, "snapshot is truncated");
    let mut bytes = Vec::with_capacity(usize::try_from(size)?);
    file.take(size).read_to_end(&mut bytes)?;
    ensure!(bytes.len() as u64 == size, "snapshot changed while read");
    ensure!(
        bytes.starts_with(MAGIC),
        "not a snapshot of this format version"
    );
    let (body, trailer) = bytes[MAGIC.len()..].split_at(bytes.len() - MAGIC.len() - TRAILER);
    let (len, signature) = trailer.split_at(8);
    let len = u64::from_be_bytes(len.try_into().expect("8 bytes"));
    ensure!(len == body.len() as u64, "snapshot length does not match");
    let signature = Signature::from_bytes(signature.try_into().expect("64 bytes"));
    key.verify_strict(&signed_message(&sha256(body)), &signature)
        .map_err(|_| anyhow!("snapshot signature does not verify"))?;
    let state: BrandState = postcard::from_bytes(body).context("snapshot does not decode")?;
    ensure!(
        state.brand_id == brand,
        "snapshot names brand {}",
        state.brand_id
    );
    ensure!(
        state.merkle.well_formed() && state.merkle.size() == state.seq,
        "snapshot's Merkle frontier does not match its size"
    );
    Ok(Some(state))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> BrandState {
        let mut s = BrandState::new(9);
        s.name = "Snap".into();
        s.cards.insert(42, crate::state::Card::default());
        s
    }

    #[test]
    fn a_snapshot_reads_back_equal_and_only_with_its_key_and_brand() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::from_bytes(&[3; 32]);
        let size = write(dir.path(), &state(), &key).unwrap();
        assert_eq!(size, fs::metadata(path(dir.path(), 9)).unwrap().len());
        let back = read(dir.path(), 9, &key.verifying_key()).unwrap();
        assert_eq!(back, Some(state()));
        assert_eq!(read(dir.path(), 8, &key.verifying_key()).unwrap(), None);
        let other = SigningKey::from_bytes(&[4; 32]).verifying_key();
        assert!(read(dir.path(), 9, &other).is_err());
    }

    #[test]
    fn any_changed_byte_makes_a_snapshot_unusable() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::from_bytes(&[3; 32]);
        write(dir.path(), &state(), &key).unwrap();
        let p = path(dir.path(), 9);
        let good = fs::read(&p).unwrap();
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x20;
            fs::write(&p, &bad).unwrap();
            assert!(
                read(dir.path(), 9, &key.verifying_key()).is_err(),
                "byte {i} changed, yet the snapshot was accepted"
            );
        }
        fs::write(&p, &good[..good.len() - 1]).unwrap();
        assert!(read(dir.path(), 9, &key.verifying_key()).is_err());
    }
}
