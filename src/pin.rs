//! PINs: the sealed block a till sends, and the slow hash the server keeps.
//!
//! A PIN never travels or rests in clear. The till seals the PIN the
//! cardholder typed to the server's X25519 key (libsodium's sealed box:
//! a fresh ephemeral key per block, so two blocks of one PIN differ and a
//! stored block cannot be guessed at without the server's secret). The
//! sealed plaintext binds the block to one request (brand, signer, txn id,
//! card, purpose), the way ISO 9564 format 0 binds a PIN to its card: a
//! block captured from one request opens for no other. The server keeps
//! only an Argon2id salted hash of each PIN, outside the ledger and the
//! export (`server/pins.rs`).
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use crypto_box::{PublicKey, SecretKey};
use ed25519_dalek::SigningKey;

use crate::crypto::sha256;
use crate::limits::*;

/// Domain separation of the sealed plaintext.
const BLOCK_DOMAIN: &[u8] = b"cardd.v1 pin block\0";
/// Domain separation of the X25519 secret derived from the server's key.
const KEY_DOMAIN: &[u8] = b"cardd.v1 pin key\0";

/// What a PIN block is for, sealed inside it: a block typed as the card's
/// current PIN cannot be replayed as a new PIN, nor the reverse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// The card's PIN, to authorise this request.
    Present = 1,
    /// The PIN to set (`SetPin.pin_block`).
    New = 2,
}

/// The request a block belongs to; it must match the request carrying it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Binding<'a> {
    /// The request's brand.
    pub brand_id: u32,
    /// The signer's ed25519 public key.
    pub signer: &'a [u8; 32],
    /// The request's transaction id.
    pub txn_id: u64,
    /// The card number exactly as the request spells it.
    pub card: &'a str,
    /// Which field of the request carries the block.
    pub purpose: Purpose,
}

impl Binding<'_> {
    fn encode(&self, pin: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(BLOCK_DOMAIN.len() + 64 + self.card.len() + pin.len());
        out.extend_from_slice(BLOCK_DOMAIN);
        out.extend_from_slice(&self.brand_id.to_be_bytes());
        out.extend_from_slice(self.signer);
        out.extend_from_slice(&self.txn_id.to_be_bytes());
        out.push(self.purpose as u8);
        // A card number is at most 20 digits; longer text is no card.
        out.push(u8::try_from(self.card.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(self.card.as_bytes());
        out.extend_from_slice(pin.as_bytes());
        out
    }
}

/// Why a PIN or a PIN block was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PinError {
    /// Not 4 to 12 ASCII digits.
    #[error("a PIN is {MIN_PIN_DIGITS} to {MAX_PIN_DIGITS} digits")]
    BadPin,
    /// Not a sealed box to this server's key, or damaged.
    #[error("the PIN block does not open with this server's key")]
    Unsealed,
    /// Opened, but made for another request, card or purpose.
    #[error("the PIN block was made for another request")]
    OtherRequest,
    /// The server published no PIN key at sign-on (an older server).
    #[error("the server published no PIN key: it does not take PINs")]
    NoServerKey,
    /// Sealing failed (the system's random source).
    #[error("sealing the PIN block failed")]
    Seal,
}

/// Checks a PIN's form: 4 to 12 ASCII digits.
pub fn pin_ok(pin: &str) -> Result<(), PinError> {
    let digits = pin.len();
    if (MIN_PIN_DIGITS..=MAX_PIN_DIGITS).contains(&digits)
        && pin.bytes().all(|b| b.is_ascii_digit())
    {
        Ok(())
    } else {
        Err(PinError::BadPin)
    }
}

/// Seals `pin` to the server's PIN key (`SignOnOk.pin_public_key`) for
/// the request `binding` describes.
pub fn seal(server_pin_key: &[u8; 32], binding: &Binding, pin: &str) -> Result<Vec<u8>, PinError> {
    pin_ok(pin)?;
    let plain = binding.encode(pin);
    PublicKey::from_bytes(*server_pin_key)
        .seal(&mut rand::rngs::OsRng, &plain)
        .map_err(|_| PinError::Seal)
}

/// The server's PIN key: an X25519 key derived from its ed25519 signing
/// key (domain-separated), so it needs no file of its own and every start
/// publishes the same one.
pub struct PinKey {
    secret: SecretKey,
}

impl PinKey {
    /// The PIN key of the server whose signing key is `server`.
    pub fn derive(server: &SigningKey) -> Self {
        let mut input = KEY_DOMAIN.to_vec();
        input.extend_from_slice(&server.to_bytes());
        PinKey {
            secret: SecretKey::from_bytes(sha256(&input)),
        }
    }

    /// Its public half, sent at sign-on.
    pub fn public(&self) -> [u8; 32] {
        self.secret.public_key().to_bytes()
    }

    /// Opens `block` and returns the PIN, if it was sealed to this key for
    /// exactly the request `binding` describes.
    pub fn open(&self, block: &[u8], binding: &Binding) -> Result<String, PinError> {
        if block.len() > MAX_PIN_BLOCK_BYTES {
            return Err(PinError::Unsealed);
        }
        let plain = self.secret.unseal(block).map_err(|_| PinError::Unsealed)?;
        let expected = binding.encode("");
        let pin = plain
            .strip_prefix(expected.as_slice())
            .ok_or(PinError::OtherRequest)?;
        let pin = std::str::from_utf8(pin).map_err(|_| PinError::BadPin)?;
        pin_ok(pin)?;
        Ok(pin.to_string())
    }
}

impl std::fmt::Debug for PinKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        write!(f, "PinKey({})", hex::encode(self.public()))
    }
}

fn hasher() -> Argon2<'static> {
    let params = Params::new(PIN_HASH_MEMORY_KIB, PIN_HASH_PASSES, 1, None)
        .expect("constant Argon2 parameters are valid");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// The Argon2id hash of `pin` under a fresh random salt, as a PHC string
/// (it names its own parameters, so they can change later). Slow by
/// design: call it on a blocking thread.
pub fn hash_pin(pin: &str) -> String {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    hasher()
        .hash_password(pin.as_bytes(), &salt)
        .expect("Argon2id over a short input with valid parameters")
        .to_string()
}

/// True if `pin` matches the PHC string `hash`; false for another PIN or
/// a damaged hash. Slow by design: call it on a blocking thread.
pub fn verify_pin(hash: &str, pin: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    hasher().verify_password(pin.as_bytes(), &parsed).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding<'a>(signer: &'a [u8; 32], txn_id: u64, card: &'a str) -> Binding<'a> {
        Binding {
            brand_id: 7,
            signer,
            txn_id,
            card,
            purpose: Purpose::Present,
        }
    }

    #[test]
    fn a_block_opens_only_for_its_own_request() {
        let key = PinKey::derive(&SigningKey::from_bytes(&[9; 32]));
        let signer = [1u8; 32];
        let card = "8000070000000000011";
        let block = seal(&key.public(), &binding(&signer, 5, card), "4321").unwrap();
        assert!(!block.windows(4).any(|w| w == b"4321"));
        assert_eq!(
            key.open(&block, &binding(&signer, 5, card)).unwrap(),
            "4321"
        );
        let other_txn = binding(&signer, 6, card);
        assert_eq!(key.open(&block, &other_txn), Err(PinError::OtherRequest));
        let other_card = binding(&signer, 5, "8000070000000000029");
        assert_eq!(key.open(&block, &other_card), Err(PinError::OtherRequest));
        let mut as_new = binding(&signer, 5, card);
        as_new.purpose = Purpose::New;
        assert_eq!(key.open(&block, &as_new), Err(PinError::OtherRequest));
        let other_server = PinKey::derive(&SigningKey::from_bytes(&[8; 32]));
        let mine = binding(&signer, 5, card);
        assert_eq!(other_server.open(&block, &mine), Err(PinError::Unsealed));
    }

    #[test]
    fn pins_are_four_to_twelve_digits() {
        for bad in ["", "123", "1234567890123", "12a4", "١٢٣٤"] {
            assert_eq!(pin_ok(bad), Err(PinError::BadPin), "{bad}");
        }
        assert!(pin_ok("0000").is_ok() && pin_ok("123456789012").is_ok());
    }

    #[test]
    fn the_hash_accepts_its_pin_only() {
        let hash = hash_pin("2468");
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(!hash.contains("2468"));
        assert!(verify_pin(&hash, "2468"));
        assert!(!verify_pin(&hash, "2469"));
        assert!(!verify_pin("not a hash", "2468"));
    }
}
