//! `cardd server-key` and `cardd keygen`.
use std::path::Path;

use cardd::crypto::write_key_file;

/// `cardd server-key`: prints the server's public key in hex (the key is
/// created on first use).
pub fn server_key(data: &Path) -> anyhow::Result<()> {
    let key = cardd::server::open_data_dir(data)?;
    outln!("{}", hex::encode(key.verifying_key().to_bytes()));
    Ok(())
}

/// `cardd keygen`: writes a new key file (0600) and prints its public key.
pub fn keygen(out: &Path) -> anyhow::Result<()> {
    let key = cardd::crypto::generate_key();
    write_key_file(out, &key)?;
    outln!("{}", hex::encode(key.verifying_key().to_bytes()));
    Ok(())
}
