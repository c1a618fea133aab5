//! The auditor's batch check of request signatures.
//!
//! A ledger holds millions of records signed by a few hundred terminals, so
//! the batch equation is grouped by signer (ed25519-zebra's batch verifier):
//! each key is decompressed once per batch and contributes one term to the
//! multiscalar multiplication, not one per record. That halves the curve
//! work per record against an ungrouped batch.
//!
//! ed25519-zebra follows ZIP 215 (cofactored equation, lenient encodings).
//! Before a signature joins a batch it must also pass what `verify_strict`
//! adds and bytes alone can tell: a canonical `R` that is not of small
//! order, and a signer key that is valid and not weak. `S < L` is checked by
//! the batch itself. What remains is the cofactored equation, which only
//! the key's holder could exploit, and only to make a second valid
//! signature of their own message. When a batch fails, its signatures are
//! checked one by one with `verify_strict` to name the first bad record.
use std::collections::HashSet;
use std::sync::mpsc;

use ed25519_dalek::VerifyingKey;
use ed25519_zebra::{batch, Signature, VerificationKeyBytes};

use super::verify::VerifyError;
use crate::crypto::{parse_public_key, verify_strict};

/// One record's request signature, queued for the batch check.
pub(super) struct SigJob {
    /// The record's sequence number (to name it on failure).
    pub seq: u64,
    /// The signer's public key.
    pub key: [u8; 32],
    /// The domain-separated signed message.
    pub message: Vec<u8>,
    /// The signature as stored.
    pub signature: Vec<u8>,
}

/// The y-coordinates (little-endian, sign bit clear) of the eight points of
/// small order: 1 (the identity), p - 1 (order 2), 0 (order 4, x = +-i)
/// and the two of order 8. libsodium's `has_small_order` blocks the same
/// values. A test checks the set against curve25519-dalek.
const SMALL_ORDER_Y: [[u8; 32]; 5] = {
    let mut one = [0u8; 32];
    one[0] = 1;
    let mut minus_one = [0xff; 32];
    minus_one[0] = 0xec;
    minus_one[31] = 0x7f;
    let zero = [0u8; 32];
    let order8: [u8; 32] = [
        0xc7, 0x17, 0x6a, 0x70, 0x3d, 0x4d, 0xd8, 0x4f, 0xba, 0x3c, 0x0b, 0x76, 0x0d, 0x10, 0x67,
        0x0f, 0x2a, 0x20, 0x53, 0xfa, 0x2c, 0x39, 0xcc, 0xc6, 0x4e, 0xc7, 0xfd, 0x77, 0x92, 0xac,
        0x03, 0x7a,
    ];
    let order8_other: [u8; 32] = [
        0x26, 0xe8, 0x95, 0x8f, 0xc2, 0xb2, 0x27, 0xb0, 0x45, 0xc3, 0xf4, 0x89, 0xf2, 0xef, 0x98,
        0xf0, 0xd5, 0xdf, 0xac, 0x05, 0xd3, 0xc6, 0x33, 0x39, 0xb1, 0x38, 0x02, 0x88, 0x6d, 0x53,
        0xfc, 0x05,
    ];
    [one, minus_one, zero, order8, order8_other]
};

/// Whether `r` is a canonical point encoding (y < p = 2^255 - 19) whose y
/// is not that of a small-order point, whatever its sign bit (x = 0 with
/// the sign bit set decodes too, to the same small-order point). Whether it
/// is on the curve at all is left to the batch (decompression fails).
fn r_is_strict(r: &[u8; 32]) -> bool {
    let mut y = *r;
    y[31] &= 0x7f;
    let y_at_least_p = y[0] >= 0xed && y[1..31].iter().all(|b| *b == 0xff) && y[31] == 0x7f;
    !y_at_least_p && !SMALL_ORDER_Y.contains(&y)
}

/// Verifies batches of request signatures; returns the first bad record.
pub(super) fn signature_worker(rx: mpsc::Receiver<Vec<SigJob>>) -> Option<VerifyError> {
    // Keys already found valid and not weak: few terminals, many records.
    let mut good_keys: HashSet<[u8; 32]> = HashSet::new();
    for jobs in rx {
        let mut verifier = batch::Verifier::new();
        for (i, job) in jobs.iter().enumerate() {
            let sig = match precheck(&mut good_keys, job) {
                Ok(sig) => sig,
                // An earlier record in this batch may fail the equation: the
                // first failure is the one to name.
                Err(what) => {
                    return Some(first_bad(&jobs[..i]).unwrap_or_else(|| bad(job.seq, what)))
                }
            };
            verifier.queue((VerificationKeyBytes::from(job.key), sig, &job.message));
        }
        if verifier.verify(rand::thread_rng()).is_err() {
            return Some(first_bad(&jobs).unwrap_or_else(|| {
                bad(
                    jobs.first().map_or(0, |j| j.seq),
                    "signature batch fails though each signature verifies alone",
                )
            }));
        }
    }
    None
}

/// The signature, once it passes what `verify_strict` would refuse and the
/// batch would not look at: an invalid or weak key, a malformed signature,
/// a non-strict R.
fn precheck(good_keys: &mut HashSet<[u8; 32]>, job: &SigJob) -> Result<Signature, &'static str> {
    if !good_keys.contains(&job.key) {
        parse_public_key(&job.key).ok_or("signer key is invalid or weak")?;
        good_keys.insert(job.key);
    }
    let sig =
        Signature::from_slice(&job.signature).map_err(|_| "request signature is malformed")?;
    if !r_is_strict(sig.r_bytes()) {
        return Err("request signature's R is non-canonical or of small order");
    }
    Ok(sig)
}

/// The first of `jobs` whose signature fails on its own (strictly).
fn first_bad(jobs: &[SigJob]) -> Option<VerifyError> {
    jobs.iter()
        .find(|job| {
            !VerifyingKey::from_bytes(&job.key)
                .is_ok_and(|key| verify_strict(&key, &job.message, &job.signature))
        })
        .map(|job| bad(job.seq, "request signature does not verify"))
}

fn bad(seq: u64, what: &str) -> VerifyError {
    VerifyError {
        seq: Some(seq),
        what: what.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{request_message, sign_request};
    use curve25519_dalek::edwards::CompressedEdwardsY;
    use ed25519_dalek::SigningKey;

    #[test]
    fn small_order_table_is_exactly_the_eight_torsion_points_with_either_sign() {
        let mut points = Vec::new();
        for y in SMALL_ORDER_Y {
            for sign in [0u8, 0x80] {
                let mut enc = y;
                enc[31] |= sign;
                let p = CompressedEdwardsY(enc)
                    .decompress()
                    .expect("a table entry is not a curve point");
                assert!(
                    p.is_small_order(),
                    "{} is not of small order",
                    hex::encode(enc)
                );
                assert!(
                    !r_is_strict(&enc),
                    "{} passes the R check",
                    hex::encode(enc)
                );
                if !points.contains(&p) {
                    points.push(p);
                }
            }
        }
        // There are exactly eight points of small order: all are covered.
        assert_eq!(points.len(), 8);
    }

    #[test]
    fn r_check_refuses_non_canonical_and_small_order() {
        let mut p_itself = [0xff; 32];
        p_itself[0] = 0xed;
        p_itself[31] = 0x7f;
        assert!(!r_is_strict(&p_itself));
        let mut p_plus_one_signed = p_itself;
        p_plus_one_signed[0] = 0xee;
        p_plus_one_signed[31] = 0xff;
        assert!(!r_is_strict(&p_plus_one_signed));
        assert!(!r_is_strict(&SMALL_ORDER_Y[3]));
        // x = 0 with the sign bit set: the identity and the point of order 2.
        let mut identity_neg = SMALL_ORDER_Y[0];
        identity_neg[31] |= 0x80;
        assert!(!r_is_strict(&identity_neg));
        let key = SigningKey::from_bytes(&[7; 32]);
        let sig = sign_request(&key, b"req");
        assert!(r_is_strict(sig[..32].try_into().unwrap()));
    }

    fn jobs(n: u64, keys: &[SigningKey]) -> Vec<SigJob> {
        (1..=n)
            .map(|seq| {
                let key = &keys[seq as usize % keys.len()];
                let request = format!("request {seq}").into_bytes();
                SigJob {
                    seq,
                    key: key.verifying_key().to_bytes(),
                    signature: sign_request(key, &request),
                    message: request_message(&request),
                }
            })
            .collect()
    }

    fn run(batches: Vec<Vec<SigJob>>) -> Option<VerifyError> {
        let (tx, rx) = mpsc::sync_channel(batches.len());
        for b in batches {
            tx.send(b).unwrap();
        }
        drop(tx);
        signature_worker(rx)
    }

    #[test]
    fn grouped_batches_accept_good_and_name_the_first_bad_record() {
        let keys: Vec<SigningKey> = (1..=3u8)
            .map(|i| SigningKey::from_bytes(&[i; 32]))
            .collect();
        assert_eq!(run(vec![jobs(50, &keys), jobs(7, &keys)]), None);

        let mut tampered = jobs(50, &keys);
        tampered[20].message.push(0); // seq 21
        tampered[30].signature[40] ^= 1; // seq 31
        let err = run(vec![tampered]).expect("a tampered batch passed");
        assert_eq!(err.seq, Some(21));

        // A refusal found before the batch (a weak key at seq 31) does not
        // hide an earlier bad signature (seq 21).
        let mut both = jobs(50, &keys);
        both[20].message.push(0);
        both[30].key = SMALL_ORDER_Y[0]; // the identity: a weak key
        assert_eq!(run(vec![both]).map(|e| e.seq), Some(Some(21)));

        // An R of small order (here the identity, sign bit set) is refused
        // before the batch, whose cofactored equation would ignore it.
        let mut small_r = jobs(5, &keys);
        small_r[2].signature[..32].copy_from_slice(&SMALL_ORDER_Y[0]);
        small_r[2].signature[31] |= 0x80;
        let err = run(vec![small_r]).expect("small-order R passed");
        assert_eq!(err.seq, Some(3));
        assert!(err.what.contains("small order"), "{}", err.what);

        // A valid signature under the wrong signer's key.
        let mut swapped = jobs(10, &keys);
        // seq 5 was signed by keys[2]; claim keys[0] signed it.
        swapped[4].key = keys[0].verifying_key().to_bytes();
        assert_eq!(run(vec![swapped]).map(|e| e.seq), Some(Some(5)));
    }

    #[test]
    fn s_not_below_the_group_order_is_refused() {
        let keys = [SigningKey::from_bytes(&[9; 32])];
        let mut js = jobs(3, &keys);
        // S + L: the same scalar modulo L, a malleable non-canonical encoding.
        let l: [u8; 32] = [
            0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9,
            0xde, 0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        ];
        let mut carry = 0u16;
        for (s_byte, l_byte) in js[1].signature[32..].iter_mut().zip(l) {
            let v = u16::from(*s_byte) + u16::from(l_byte) + carry;
            *s_byte = v as u8;
            carry = v >> 8;
        }
        assert_eq!(carry, 0, "S + L overflowed 256 bits");
        assert_eq!(run(vec![js]).map(|e| e.seq), Some(Some(2)));
    }
}
