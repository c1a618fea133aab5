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
use crate::crypto::verify_strict;

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

/// Canonical encodings of the eight points of small order (RFC 8032
/// encodings; the list libsodium's `has_small_order` blocks, canonical part).
/// A test checks each against curve25519-dalek.
const SMALL_ORDER_ENCODINGS: [[u8; 32]; 8] = {
    let mut identity = [0u8; 32];
    identity[0] = 1;
    let mut minus_one = [0xff; 32];
    minus_one[0] = 0xec;
    minus_one[31] = 0x7f;
    let zero = [0u8; 32];
    let mut zero_neg = [0u8; 32];
    zero_neg[31] = 0x80;
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
    let mut order8_neg = order8;
    order8_neg[31] |= 0x80;
    let mut order8_other_neg = order8_other;
    order8_other_neg[31] |= 0x80;
    [
        identity,
        minus_one,
        zero,
        zero_neg,
        order8,
        order8_neg,
        order8_other,
        order8_other_neg,
    ]
};

/// Whether `r` is a canonical point encoding (y < p = 2^255 - 19) that is
/// not one of the small-order points. Whether it is on the curve at all is
/// left to the batch (decompression fails otherwise).
fn r_is_strict(r: &[u8; 32]) -> bool {
    let y_at_least_p = r[0] >= 0xed && r[1..31].iter().all(|b| *b == 0xff) && r[31] & 0x7f == 0x7f;
    !y_at_least_p && !SMALL_ORDER_ENCODINGS.contains(r)
}

/// Verifies batches of request signatures; returns the first bad record.
pub(super) fn signature_worker(rx: mpsc::Receiver<Vec<SigJob>>) -> Option<VerifyError> {
    // Keys already found valid and not weak: few terminals, many records.
    let mut good_keys: HashSet<[u8; 32]> = HashSet::new();
    for jobs in rx {
        let mut verifier = batch::Verifier::new();
        for job in &jobs {
            if !good_keys.contains(&job.key) {
                match VerifyingKey::from_bytes(&job.key) {
                    Ok(k) if !k.is_weak() => {
                        good_keys.insert(job.key);
                    }
                    _ => return Some(bad(job.seq, "signer key is invalid or weak")),
                }
            }
            let Ok(sig) = Signature::from_slice(&job.signature) else {
                return Some(bad(job.seq, "request signature is malformed"));
            };
            if !r_is_strict(sig.r_bytes()) {
                return Some(bad(
                    job.seq,
                    "request signature's R is non-canonical or of small order",
                ));
            }
            verifier.queue((VerificationKeyBytes::from(job.key), sig, &job.message));
        }
        if verifier.verify(rand::thread_rng()).is_err() {
            return Some(first_bad(&jobs));
        }
    }
    None
}

/// After a failed batch: the first signature that fails on its own.
fn first_bad(jobs: &[SigJob]) -> VerifyError {
    for job in jobs {
        let ok = VerifyingKey::from_bytes(&job.key)
            .is_ok_and(|key| verify_strict(&key, &job.message, &job.signature));
        if !ok {
            return bad(job.seq, "request signature does not verify");
        }
    }
    bad(
        jobs.first().map_or(0, |j| j.seq),
        "signature batch fails though each signature verifies alone",
    )
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
    fn small_order_table_is_exactly_the_eight_torsion_points() {
        let mut points = Vec::new();
        for enc in SMALL_ORDER_ENCODINGS {
            let p = CompressedEdwardsY(enc)
                .decompress()
                .expect("a table entry is not a curve point");
            assert!(
                p.is_small_order(),
                "{} is not of small order",
                hex::encode(enc)
            );
            assert_eq!(p.compress().to_bytes(), enc, "entry is not canonical");
            points.push(p);
        }
        for (i, p) in points.iter().enumerate() {
            assert!(points[i + 1..].iter().all(|q| q != p), "duplicate entry");
        }
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
        assert!(!r_is_strict(&SMALL_ORDER_ENCODINGS[4]));
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
