//! Inclusion proofs in receipts.
use super::*;

// ---------------------------------------------------------------------------
// 5. Inclusion proofs in receipts.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn receipts_carry_inclusion_proofs_that_verify() {
    let dir = tempfile::tempdir().unwrap();
    let (d, demo) = Daemon::demo(dir.path());
    let cards = demo.manifest.cards.clone();
    let mut t = demo.terminal(d.addr, 0).await;
    let server_key = parse_public_key(&t.server_key).expect("server key");

    // Without asking, no proof.
    let r = ok(&mut t, 100, purchase(&cards[0], 100)).await;
    assert!(r.proof.is_none());

    let mut proven = Vec::new();
    for (i, txn) in (101..=111u64).enumerate() {
        let op = if i % 3 == 2 {
            top_up(&cards[i % 5], 1_000)
        } else {
            purchase(&cards[i % 5], 50 + i as i64)
        };
        let mut req = t.request(txn, op);
        req.want_proof = true;
        let reply = bounded(t.call(&req)).await.expect("reply");
        let receipt = reply.receipt.clone().expect("receipt");
        let proof = reply
            .proof
            .clone()
            .expect("an inclusion proof was asked for");
        let cp = proof
            .checkpoint
            .clone()
            .expect("proof names its checkpoint");
        assert_eq!(proof.leaf_index, receipt.seq - 1);
        assert_eq!(proof.tree_size, cp.tree_size);
        assert!(proof.tree_size >= receipt.seq);
        assert_eq!(cp.brand_id, demo.manifest.brand_id);
        assert!(
            verify_strict(
                &server_key,
                &cardd::checkpoint::signed_message(&cp),
                &cp.signature
            ),
            "the proof's checkpoint is signed by the server"
        );
        let leaf: [u8; 32] = receipt.hash.as_slice().try_into().expect("32-byte hash");
        let root: [u8; 32] = cp.root_hash.as_slice().try_into().expect("32-byte root");
        let path: Vec<[u8; 32]> = proof
            .path
            .iter()
            .map(|p| p.as_slice().try_into().expect("32-byte path element"))
            .collect();
        assert!(
            !path.is_empty(),
            "a tree of {} leaves has a path",
            proof.tree_size
        );
        let ok_proof = |leaf: &[u8; 32], m: u64, path: &[[u8; 32]], root: &[u8; 32]| {
            cardd::merkle::verify_inclusion(leaf, m, proof.tree_size, path, root)
        };
        assert!(
            ok_proof(&leaf, proof.leaf_index, &path, &root),
            "seq {}",
            receipt.seq
        );
        // Every bit of every path element matters.
        for e in 0..path.len() {
            for bit in 0..256 {
                let mut bad = path.clone();
                bad[e][bit / 8] ^= 1 << (bit % 8);
                assert!(
                    !ok_proof(&leaf, proof.leaf_index, &bad, &root),
                    "element {e} bit {bit}"
                );
            }
        }
        // Another leaf, another index, a shorter or longer path, another
        // root: all refused.
        let mut other = leaf;
        other[31] ^= 1;
        assert!(!ok_proof(&other, proof.leaf_index, &path, &root));
        assert!(!ok_proof(&leaf, proof.leaf_index - 1, &path, &root));
        assert!(!ok_proof(
            &leaf,
            proof.leaf_index,
            &path[..path.len() - 1],
            &root
        ));
        let mut longer = path.clone();
        longer.push([0; 32]);
        assert!(!ok_proof(&leaf, proof.leaf_index, &longer, &root));
        let mut other_root = root;
        other_root[0] ^= 0x80;
        assert!(!ok_proof(&leaf, proof.leaf_index, &path, &other_root));
        // A checkpoint whose signed root was changed fails its signature.
        let mut forged = cp.clone();
        forged.root_hash[0] ^= 1;
        assert!(!verify_strict(
            &server_key,
            &cardd::checkpoint::signed_message(&forged),
            &forged.signature
        ));
        proven.push((receipt, cp));
    }

    // The receipts' hashes are the leaf hashes of the exported records, and
    // the proofs' checkpoints are the exported ones.
    let bytes = export_online(d.addr, &demo).await;
    let all = items(&bytes);
    for (receipt, cp) in &proven {
        let rec = all
            .iter()
            .find_map(|i| match i {
                Item::Record(r) if record_seq(r) == receipt.seq => Some(r),
                _ => None,
            })
            .expect("record in export");
        assert_eq!(leaf_hash(rec).to_vec(), receipt.hash, "seq {}", receipt.seq);
        assert!(
            all.iter()
                .any(|i| matches!(i, Item::Checkpoint(c) if c == cp)),
            "checkpoint of size {} in the export",
            cp.tree_size
        );
    }
}
