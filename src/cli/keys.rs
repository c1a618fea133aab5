//! `cardd server-key` and `cardd keygen`.
use std::path::Path;

use cardd::crypto::write_key_file;

/// `cardd server-key`: prints the server's public key in hex. It reads an
/// existing data directory only: a mistyped `--data` must not leave a new
/// directory and a stray signing key behind (the daemon's first start
/// makes the key).
pub fn server_key(data: &Path) -> anyhow::Result<()> {
    let key = cardd::server::open_existing_data_dir(data)?;
    outln!("{}", hex::encode(key.verifying_key().to_bytes()));
    Ok(())
}

/// `cardd rotate-server-key`: prints the new server public key alone on
/// standard output, and what was done on standard error.
pub fn rotate_server_key(data: &Path) -> anyhow::Result<()> {
    let done = cardd::server::rotate_server_key(data)?;
    outln!("{}", hex::encode(done.new_key));
    eprintln!(
        "server key rotated in {}: {} brand(s) now endorse the new key ({} had already); \
         auditors keep trusting the first server key, tills that pin the server key need the new one",
        data.display(),
        done.rotated.len(),
        done.already.len()
    );
    Ok(())
}

/// `cardd keygen`: writes a new key file (0600) and prints its public key.
pub fn keygen(out: &Path) -> anyhow::Result<()> {
    let key = cardd::crypto::generate_key();
    write_key_file(out, &key)?;
    outln!("{}", hex::encode(key.verifying_key().to_bytes()));
    Ok(())
}
