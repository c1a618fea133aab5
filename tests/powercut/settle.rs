//! After the cut and the restart: every request's fate, checked against
//! what the tills were told.

use std::collections::BTreeMap;

use cardd::client::Client;
use cardd::pb::{self, request::Op};

use crate::common::reply::{card_of, receipt, status as status_of};
use crate::common::{bounded, call, inquiry};
use crate::load::Issued;

/// A request found in the ledger: where, and the balance it left.
struct Applied {
    seq: u64,
    balance_after: i64,
    delta: i64,
}

/// How the requests of a round ended.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Acknowledged before the cut (all found again).
    pub acked: usize,
    /// In flight at the cut and found committed.
    pub in_flight_committed: usize,
    /// In flight at the cut and unknown to the restarted daemon.
    pub in_flight_lost: usize,
}

fn balance(reply: &pb::Reply) -> i64 {
    card_of(reply).balance_minor
}

/// Re-sends the exact signed bytes: must come back as a replay of `seq`
/// with record hash `hash`, never as a new record.
async fn retry_is_replay(till: &mut Client, i: &Issued, seq: u64, hash: &[u8]) {
    let again = bounded(till.call_signed(i.request.clone(), i.signature.clone()))
        .await
        .unwrap_or_else(|e| panic!("retry of txn {} failed: {e}", i.txn));
    assert!(again.replayed, "txn {}: a retry was applied again", i.txn);
    assert_eq!(
        receipt(&again).seq,
        seq,
        "txn {}: retry got a new seq",
        i.txn
    );
    assert_eq!(
        receipt(&again).hash,
        hash,
        "txn {}: retry got a new hash",
        i.txn
    );
}

/// An acknowledged request: still committed, same seq, hash and balance.
async fn acked(till: &mut Client, i: &Issued, ack: &pb::Reply, status: &pb::StatusResult) {
    let r = receipt(ack);
    assert_eq!(
        status.state(),
        pb::TxnState::Committed,
        "acknowledged txn {} (seq {}) lost in the power cut",
        i.txn,
        r.seq
    );
    assert_eq!(status.seq, r.seq, "acknowledged txn {} moved", i.txn);
    let original = status.original.as_ref().expect("committed txn's answer");
    assert_eq!(
        receipt(original).hash,
        r.hash,
        "txn {}: hash changed",
        i.txn
    );
    assert_eq!(
        balance(original),
        balance(ack),
        "txn {}: balance changed",
        i.txn
    );
    retry_is_replay(till, i, r.seq, &r.hash).await;
}

/// Settles every issued request on the restarted daemon (one signed-on
/// client per key) and returns each card's balance as the ledger must now
/// hold it, with the tally.
pub async fn settle(
    tills: &mut [Client],
    issued: &[Issued],
    before: &BTreeMap<String, i64>,
) -> (BTreeMap<String, i64>, Outcome) {
    let mut applied: BTreeMap<String, Vec<Applied>> = BTreeMap::new();
    let mut lost_before: BTreeMap<&str, u64> = BTreeMap::new();
    let mut out = Outcome::default();
    for i in issued {
        let till = &mut tills[i.key];
        let op = Op::TxnStatus(pb::TxnStatus { txn_id: i.txn });
        let status = status_of(call(till, 0, op).await.expect("TxnStatus"));
        let found = match &i.ack {
            Some(ack) => {
                acked(till, i, ack, &status).await;
                out.acked += 1;
                Some((receipt(ack).seq, balance(ack)))
            }
            None if status.state() == pb::TxnState::Committed => {
                if let Some(lost) = lost_before.get(i.card.as_str()) {
                    panic!(
                        "txn {} committed after txn {lost} on its card was lost: not a prefix",
                        i.txn
                    );
                }
                let original = status.original.as_ref().expect("committed txn's answer");
                retry_is_replay(till, i, status.seq, &receipt(original).hash).await;
                out.in_flight_committed += 1;
                Some((status.seq, balance(original)))
            }
            None => {
                assert_eq!(status.state(), pb::TxnState::Unknown, "txn {}", i.txn);
                lost_before.entry(&i.card).or_insert(i.txn);
                out.in_flight_lost += 1;
                None
            }
        };
        if let Some((seq, balance_after)) = found {
            let delta = i.delta;
            let a = Applied {
                seq,
                balance_after,
                delta,
            };
            applied.entry(i.card.clone()).or_default().push(a);
        }
    }
    (explain(before, applied), out)
}

/// Each card's balance: the balance before the round plus the committed
/// requests in ledger order, every receipt's balance on the way matching.
fn explain(
    before: &BTreeMap<String, i64>,
    mut applied: BTreeMap<String, Vec<Applied>>,
) -> BTreeMap<String, i64> {
    let mut out = before.clone();
    for (card, list) in &mut applied {
        list.sort_by_key(|a| a.seq);
        let bal = out.get_mut(card).expect("a card of the round");
        for a in list.iter() {
            *bal = bal.checked_add(a.delta).expect("balance in range");
            assert_eq!(
                *bal, a.balance_after,
                "card {card}: record {} leaves a balance the requests do not explain",
                a.seq
            );
        }
    }
    out
}

/// Every card's live balance.
pub async fn live_balances(c: &mut Client, cards: &[String]) -> BTreeMap<String, i64> {
    let mut m = BTreeMap::new();
    for card in cards {
        m.insert(card.clone(), inquiry(c, card).await.balance_minor);
    }
    m
}
