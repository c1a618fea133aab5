//! What the soak's tills plan, send and know: operations, their expected
//! outcomes, the model built from replies, and the world the checks read.
use super::*;

#[derive(Debug)]
pub(crate) struct Lost;

/// What a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Planned {
    Purchase {
        card: usize,
        amount: i64,
    },
    TopUp {
        card: usize,
        amount: i64,
    },
    /// Refund of this connection's own purchase (by its txn id).
    Refund {
        purchase: u64,
        amount: i64,
    },
    /// Reversal of `target`; `found` is what the reply must say, when known.
    Reversal {
        target: u64,
        found: Option<bool>,
    },
    /// A purchase sent under a txn id that was tombstoned by a reversal.
    Late {
        card: usize,
        amount: i64,
    },
}

/// The answers a request may get: success, and at most one refusal code.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Expect {
    pub(crate) ok: bool,
    pub(crate) refusal: Option<ErrorCode>,
}

pub(crate) const OK: Expect = Expect {
    ok: true,
    refusal: None,
};

pub(crate) fn expect_refusal(code: ErrorCode) -> Expect {
    Expect {
        ok: false,
        refusal: Some(code),
    }
}

/// One signed request, kept verbatim so that a retry sends identical bytes.
#[derive(Debug, Clone)]
pub(crate) struct Sent {
    pub(crate) txn: u64,
    pub(crate) planned: Planned,
    pub(crate) expect: Expect,
    pub(crate) request: Vec<u8>,
    pub(crate) signature: Vec<u8>,
    /// Own txns this request works on (no other request may touch them
    /// until this one is settled).
    pub(crate) locks: Vec<u64>,
}

/// A request whose answer never came, and the reversal sent to settle it
/// (once chosen, the reversal's bytes are reused: never a second one).
#[derive(Debug, Clone)]
pub(crate) struct Pending {
    pub(crate) sent: Sent,
    pub(crate) reversal: Option<Sent>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OwnKind {
    Purchase,
    TopUp,
    Refund,
}

/// A money operation of this connection, in the ledger.
#[derive(Debug, Clone)]
pub(crate) struct Own {
    pub(crate) kind: OwnKind,
    pub(crate) seq: u64,
    pub(crate) card: usize,
    /// Purchase: approved; top-up: paid + bonus; refund: refunded.
    pub(crate) value: i64,
    /// Refund: the purchase's txn.
    pub(crate) purchase: u64,
    /// Purchase: the value of its live (not reversed) refunds.
    pub(crate) refunded: i64,
    pub(crate) reversed: bool,
}

/// One record this test caused, as its reply described it.
#[derive(Debug, Clone)]
pub(crate) struct Applied {
    pub(crate) terminal_id: u32,
    pub(crate) txn: u64,
    pub(crate) seq: u64,
    pub(crate) hash: Vec<u8>,
    pub(crate) request: Vec<u8>,
    pub(crate) signature: Vec<u8>,
    pub(crate) kind: RecordKind,
    pub(crate) card: Option<usize>,
    /// Signed change of the card's value (paid + bonus).
    pub(crate) delta: i64,
    pub(crate) view: Option<pb::CardView>,
    pub(crate) cycle: u64,
}

#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Stats {
    /// Fresh requests sent (not counting retries).
    pub(crate) sent: u64,
    /// Fresh requests answered with a result.
    pub(crate) acked: u64,
    /// Fresh requests answered with the refusal the model predicted.
    pub(crate) refused_as_expected: u64,
    /// Connections dropped with answers outstanding (simulated timeouts).
    pub(crate) drops: u64,
    /// Unknown outcomes settled after a drop, daemon alive.
    pub(crate) resolved_in_cycle: u64,
    /// Unknown outcomes settled after a crash and restart.
    pub(crate) resolved_after_crash: u64,
    /// ... of which: found committed (retry answered as a replay).
    pub(crate) found_committed: u64,
    /// ... not in the ledger, applied once by the retry.
    pub(crate) applied_by_retry: u64,
    /// ... refused again on retry, as predicted.
    pub(crate) refused_on_retry: u64,
    /// ... settled by a reversal that found the original.
    pub(crate) reversed_unknown: u64,
    /// ... settled by a reversal that left a tombstone.
    pub(crate) tombstoned_unknown: u64,
    /// Retries of acknowledged requests answered as replays.
    pub(crate) replays_checked: u64,
    /// Requests sent twice on one connection while the first was in flight.
    pub(crate) duplicates: u64,
}

impl Stats {
    pub(crate) fn add(&mut self, o: &Stats) {
        self.sent += o.sent;
        self.acked += o.acked;
        self.refused_as_expected += o.refused_as_expected;
        self.drops += o.drops;
        self.resolved_in_cycle += o.resolved_in_cycle;
        self.resolved_after_crash += o.resolved_after_crash;
        self.found_committed += o.found_committed;
        self.applied_by_retry += o.applied_by_retry;
        self.refused_on_retry += o.refused_on_retry;
        self.reversed_unknown += o.reversed_unknown;
        self.tombstoned_unknown += o.tombstoned_unknown;
        self.replays_checked += o.replays_checked;
        self.duplicates += o.duplicates;
    }
}

/// How a storm on one connection ended.
pub(crate) enum Flow {
    /// Dropped on purpose: reconnect and settle.
    Dropped,
    /// The daemon is gone.
    Lost,
    /// The cycle's quota is done.
    Done,
}

/// Sends signed bytes and waits (bounded) for the answer.
pub(crate) async fn roundtrip(
    c: &mut Client,
    request: Vec<u8>,
    signature: Vec<u8>,
    killed: &AtomicBool,
) -> Result<Result<pb::Reply, ErrorCode>, Lost> {
    match tokio::time::timeout(ANSWER_TIMEOUT, c.call_signed(request, signature)).await {
        Ok(Ok(r)) => Ok(Ok(r)),
        Ok(Err(ClientError::Refused(r))) => Ok(Err(r.code)),
        Ok(Err(e)) if killed.load(Ordering::SeqCst) => {
            let _ = e;
            Err(Lost)
        }
        Ok(Err(e)) => panic!("transport failure with a live daemon: {e}"),
        Err(_) if killed.load(Ordering::SeqCst) => Err(Lost),
        Err(_) => panic!("no answer within {ANSWER_TIMEOUT:?} from a live daemon"),
    }
}

/// One terminal connection's till: its key, its txn id range, what it knows
/// of its own operations, and what it has not heard back.
pub(crate) struct Worker {
    pub(crate) id: usize,
    pub(crate) terminal_id: u32,
    pub(crate) key: SigningKey,
    pub(crate) brand: u32,
    pub(crate) cards: Arc<Vec<String>>,
    pub(crate) operator: String,
    pub(crate) txn_base: u64,
    pub(crate) next_txn: u64,
    pub(crate) cycle: u64,
    /// Own money operations in the ledger, by txn.
    pub(crate) book: HashMap<u64, Own>,
    /// Own money txns, oldest first (targets for refunds and reversals).
    pub(crate) recent: Vec<u64>,
    /// Tombstoned txn ids not yet sent late.
    pub(crate) tombstones_unsent: Vec<u64>,
    /// Every tombstoned txn id.
    pub(crate) tombstones: Vec<u64>,
    pub(crate) pending: Vec<Pending>,
    pub(crate) locked: HashSet<u64>,
    pub(crate) applied: Vec<Applied>,
    pub(crate) stats: Stats,
    pub(crate) sent_this_cycle: usize,
}

/// A card as the daemon (or the auditor) shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CardState {
    pub(crate) paid: i64,
    pub(crate) bonus: i64,
    pub(crate) points: i64,
}

/// Everything the checks need.
pub(crate) struct World {
    pub(crate) brand: u32,
    pub(crate) data: std::path::PathBuf,
    pub(crate) owner_key: SigningKey,
    pub(crate) cards: Arc<Vec<String>>,
    /// Cards as they were before the test's first money operation.
    pub(crate) baseline: Vec<CardState>,
    /// The ledger's size then: every later record is one of ours.
    pub(crate) baseline_seq: u64,
    pub(crate) workers: Vec<Worker>,
    /// Records in the newest verified export.
    pub(crate) records: u64,
}
