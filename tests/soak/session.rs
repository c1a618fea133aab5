//! A till on the wire: storms of pipelined requests, dropped connections,
//! and settling what it never heard back.
use super::*;

impl Worker {
    pub(crate) async fn status(
        &self,
        c: &mut Client,
        txn: u64,
        killed: &AtomicBool,
    ) -> Result<pb::StatusResult, Lost> {
        let req = pb::Request {
            txn_id: 0,
            brand_id: self.brand,
            operator: self.operator.clone(),
            client_time_ms: now_ms(),
            want_proof: false,
            op: Some(Op::TxnStatus(pb::TxnStatus { txn_id: txn })),
        };
        let bytes = req.encode_to_vec();
        let sig = sign_request(&self.key, &bytes);
        match roundtrip(c, bytes, sig, killed).await? {
            Ok(pb::Reply {
                detail: Some(Detail::Status(s)),
                ..
            }) => Ok(*s),
            other => panic!("TxnStatus {txn}: {other:?}"),
        }
    }

    /// TxnStatus, then the identical signed bytes again; checks that the
    /// answer agrees with the status (a committed txn is replayed, never
    /// re-applied). `strict`: nothing of ours is still inside the daemon
    /// (after a restart), so an unknown txn must be applied fresh.
    pub(crate) async fn retry(
        &mut self,
        c: &mut Client,
        s: &Sent,
        strict: bool,
        killed: &AtomicBool,
    ) -> Result<Result<pb::Reply, ErrorCode>, Lost> {
        let st = self.status(c, s.txn, killed).await?;
        let ans = roundtrip(c, s.request.clone(), s.signature.clone(), killed).await?;
        let state = st.state();
        match state {
            TxnState::Committed | TxnState::Reversed => {
                let r = ans.as_ref().unwrap_or_else(|code| {
                    panic!(
                        "txn {} is {state:?}, yet its retry was refused: {code:?}",
                        s.txn
                    )
                });
                assert!(
                    r.replayed,
                    "txn {} is {state:?}, yet its retry was applied again",
                    s.txn
                );
                let original = st
                    .original
                    .as_ref()
                    .expect("status holds the original answer");
                assert_eq!(
                    receipt(r).seq,
                    st.seq,
                    "txn {}: replay names another record",
                    s.txn
                );
                assert_eq!(
                    receipt(r).hash,
                    receipt(original).hash,
                    "txn {}: replay hash",
                    s.txn
                );
                self.stats.found_committed += 1;
            }
            TxnState::Tombstoned => {
                assert_eq!(
                    ans.as_ref().err(),
                    Some(&ErrorCode::TxnReversed),
                    "txn {} is tombstoned, yet its retry answered {ans:?}",
                    s.txn
                );
                self.stats.refused_on_retry += 1;
            }
            TxnState::Unknown => match &ans {
                Ok(r) => {
                    if strict {
                        assert!(
                            !r.replayed,
                            "txn {} was unknown after the restart, yet its retry claims a replay",
                            s.txn
                        );
                    }
                    // Again: now it must be a replay of the same record.
                    let again = roundtrip(c, s.request.clone(), s.signature.clone(), killed)
                        .await?
                        .unwrap_or_else(|code| panic!("txn {}: second retry {code:?}", s.txn));
                    assert!(again.replayed, "txn {}: second retry applied again", s.txn);
                    assert_eq!(receipt(&again).seq, receipt(r).seq);
                    assert_eq!(receipt(&again).hash, receipt(r).hash);
                    if r.replayed {
                        // The dropped connection's copy landed in between.
                        self.stats.found_committed += 1;
                    } else {
                        self.stats.applied_by_retry += 1;
                    }
                }
                Err(_) => self.stats.refused_on_retry += 1,
            },
            TxnState::Unspecified => panic!("txn {}: status unspecified", s.txn),
            // Retries here are of the newest few ids, far inside the window.
            TxnState::Expired => panic!("txn {}: status expired", s.txn),
        }
        Ok(ans)
    }

    /// Settles every request whose answer never came, as a till does after
    /// reconnecting.
    pub(crate) async fn resolve_pending(
        &mut self,
        c: &mut Client,
        strict: bool,
        rng: &mut StdRng,
        killed: &AtomicBool,
    ) -> Result<(), Lost> {
        while !self.pending.is_empty() {
            let p = self.pending[0].clone();
            let reversal = match p.reversal {
                Some(r) => Some(r),
                None => match p.sent.planned {
                    Planned::Purchase { card, .. } | Planned::TopUp { card, .. }
                        if rng.gen_bool(P_REVERSE_UNKNOWN) =>
                    {
                        let insufficient_ok =
                            card == BONUS_CARD && matches!(p.sent.planned, Planned::TopUp { .. });
                        let expect = Expect {
                            ok: true,
                            refusal: insufficient_ok.then_some(ErrorCode::InsufficientFunds),
                        };
                        let txn = self.fresh_txn();
                        let target = p.sent.txn;
                        let r = self.make(
                            txn,
                            Planned::Reversal {
                                target,
                                found: None,
                            },
                            expect,
                        );
                        // Kept before it is sent: if the daemon dies now,
                        // this reversal is what gets settled next time.
                        self.pending[0].reversal = Some(r.clone());
                        Some(r)
                    }
                    _ => None,
                },
            };
            match reversal {
                None => match self.retry(c, &p.sent, strict, killed).await? {
                    Ok(reply) => self.settle(&p.sent, &reply),
                    Err(code) => self.check_refusal(&p.sent, code),
                },
                Some(r) => {
                    let ans = self.retry(c, &r, strict, killed).await?;
                    let st = self.status(c, p.sent.txn, killed).await?;
                    match (st.state(), &ans) {
                        (TxnState::Reversed, Ok(reply)) => {
                            let original = st.original.as_ref().expect("original answer");
                            self.settle(&p.sent, original);
                            self.settle(&r, reply);
                            self.stats.reversed_unknown += 1;
                        }
                        (TxnState::Tombstoned, Ok(reply)) => {
                            self.settle(&r, reply);
                            self.stats.tombstoned_unknown += 1;
                        }
                        (TxnState::Committed, Err(code)) => {
                            self.check_refusal(&r, *code);
                            let original = st.original.as_ref().expect("original answer");
                            self.settle(&p.sent, original);
                        }
                        (state, ans) => panic!(
                            "txn {} reversed by txn {}: original is {state:?}, reversal answered {ans:?}",
                            p.sent.txn, r.txn
                        ),
                    }
                }
            }
            if strict {
                self.stats.resolved_after_crash += 1;
            } else {
                self.stats.resolved_in_cycle += 1;
            }
            self.unlock(&p.sent);
            self.pending.remove(0);
        }
        Ok(())
    }

    /// Pipelines operations on `c` until a drop, the daemon's death or the
    /// cycle's quota. Now and then a till that waited too long sends the
    /// identical bytes again on the same connection, the first copy still
    /// in flight: at most one copy may be applied, the other is a replay.
    pub(crate) async fn storm(
        &mut self,
        c: &mut Client,
        rng: &mut StdRng,
        acks: &AtomicUsize,
        killed: &AtomicBool,
    ) -> Flow {
        // Request id -> request; a duplicate is a second entry of one txn.
        let mut in_flight: BTreeMap<u64, Sent> = BTreeMap::new();
        // Txn -> copies still in flight, and whether it was sent twice.
        let mut copies: HashMap<u64, (usize, bool)> = HashMap::new();
        // Txn -> (seq, hash, fresh answer seen) of what this storm applied.
        let mut answered: HashMap<u64, (u64, Vec<u8>, bool)> = HashMap::new();
        let mut next_request_id = 1u64 << 40;
        let mut tick = tokio::time::interval(PACE);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let flow = loop {
            let can_send = self.sent_this_cycle < MAX_OPS_PER_CYCLE && in_flight.len() < WINDOW;
            if !can_send && in_flight.is_empty() {
                break Flow::Done;
            }
            tokio::select! {
                _ = tick.tick(), if can_send => {
                    let s = if !in_flight.is_empty() && rng.gen_bool(P_DUPLICATE) {
                        let n = rng.gen_range(0..in_flight.len());
                        let s = in_flight.values().nth(n).expect("in flight").clone();
                        copies.get_mut(&s.txn).expect("copies").1 = true;
                        self.stats.duplicates += 1;
                        s
                    } else {
                        let s = self.plan(rng);
                        self.stats.sent += 1;
                        self.sent_this_cycle += 1;
                        s
                    };
                    copies.entry(s.txn).or_insert((0, false)).0 += 1;
                    next_request_id += 1;
                    let msg = ClientMessage {
                        request_id: next_request_id,
                        body: Some(Body::Signed(pb::SignedRequest {
                            request: s.request.clone(),
                            signature: s.signature.clone(),
                        })),
                    };
                    // Recorded before the write: a request half-written when
                    // the daemon dies still has a fate to settle.
                    in_flight.insert(next_request_id, s);
                    if c.framed().send(Bytes::from(msg.encode_to_vec())).await.is_err() {
                        assert!(killed.load(Ordering::SeqCst), "send failed with a live daemon");
                        break Flow::Lost;
                    }
                    if rng.gen_bool(P_DROP) {
                        self.stats.drops += 1;
                        break Flow::Dropped;
                    }
                }
                frame = tokio::time::timeout(ANSWER_TIMEOUT, c.framed().next()) => {
                    let frame = match frame {
                        Ok(Some(Ok(frame))) => frame,
                        Ok(_) if killed.load(Ordering::SeqCst) => break Flow::Lost,
                        Ok(other) => panic!("worker {}: connection lost with a live daemon: {other:?}", self.id),
                        Err(_) if killed.load(Ordering::SeqCst) => break Flow::Lost,
                        Err(_) => panic!(
                            "worker {}: no answer in {ANSWER_TIMEOUT:?} with {} requests in flight",
                            self.id,
                            in_flight.len()
                        ),
                    };
                    let msg = ServerMessage::decode(frame).expect("server frames decode");
                    let s = in_flight
                        .remove(&msg.request_id)
                        .unwrap_or_else(|| panic!("answer to unknown request {}: {msg:?}", msg.request_id));
                    let (left, duplicated) = {
                        let e = copies.get_mut(&s.txn).expect("copies");
                        e.0 -= 1;
                        *e
                    };
                    match msg.body {
                        Some(server_message::Body::Reply(r)) => {
                            if let Some((seq, hash, fresh)) = answered.get_mut(&s.txn) {
                                assert_eq!(receipt(&r).seq, *seq, "txn {}: copies answered with two records", s.txn);
                                assert_eq!(&receipt(&r).hash, hash, "txn {}: copies answered with two hashes", s.txn);
                                if !r.replayed {
                                    assert!(!*fresh, "txn {}: both copies applied", s.txn);
                                    *fresh = true;
                                }
                                self.stats.replays_checked += 1;
                            } else {
                                assert!(
                                    !r.replayed || duplicated,
                                    "txn {}: a fresh request answered as a replay",
                                    s.txn
                                );
                                self.settle(&s, &r);
                                answered.insert(s.txn, (receipt(&r).seq, receipt(&r).hash.clone(), !r.replayed));
                                self.stats.acked += 1;
                                acks.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Some(server_message::Body::Error(e)) => {
                            assert!(
                                !answered.contains_key(&s.txn),
                                "txn {}: a copy of an applied request was refused: {e:?}",
                                s.txn
                            );
                            self.check_refusal(&s, e.code());
                            self.stats.refused_as_expected += 1;
                        }
                        other => panic!("txn {}: unexpected answer {other:?}", s.txn),
                    }
                    if left == 0 {
                        copies.remove(&s.txn);
                        self.unlock(&s);
                    }
                }
            }
        };
        // Whatever is still in flight has an unknown outcome, unless another
        // copy of it was answered with a result (the rest can only replay).
        let mut seen = HashSet::new();
        for (_, s) in in_flight {
            if !seen.insert(s.txn) {
                continue;
            }
            if answered.contains_key(&s.txn) {
                self.unlock(&s);
            } else {
                self.pending.push(Pending {
                    sent: s,
                    reversal: None,
                });
            }
        }
        flow
    }

    /// One storm: connect, settle what is unknown, pipeline, and again after
    /// every drop, until the quota is done or the daemon dies.
    pub(crate) async fn run_cycle(
        mut self,
        addr: SocketAddr,
        seed: u64,
        acks: Arc<AtomicUsize>,
        killed: Arc<AtomicBool>,
    ) -> Worker {
        let mut rng = StdRng::seed_from_u64(seed);
        self.sent_this_cycle = 0;
        loop {
            let mut c =
                match tokio::time::timeout(ANSWER_TIMEOUT, Client::connect(addr, self.key.clone()))
                    .await
                {
                    Ok(Ok(c)) => c,
                    _ if killed.load(Ordering::SeqCst) => return self,
                    Ok(Err(e)) => {
                        panic!("worker {}: sign-on failed with a live daemon: {e}", self.id)
                    }
                    Err(_) => panic!("worker {}: sign-on timed out with a live daemon", self.id),
                };
            if self
                .resolve_pending(&mut c, false, &mut rng, &killed)
                .await
                .is_err()
            {
                return self;
            }
            match self.storm(&mut c, &mut rng, &acks, &killed).await {
                Flow::Dropped => continue,
                Flow::Lost | Flow::Done => return self,
            }
        }
    }

    /// A single operation between storms that must succeed.
    pub(crate) async fn direct(&mut self, c: &mut Client, planned: Planned, killed: &AtomicBool) {
        let txn = self.fresh_txn();
        let s = self.make(txn, planned, OK);
        let reply = roundtrip(c, s.request.clone(), s.signature.clone(), killed)
            .await
            .expect("daemon alive")
            .unwrap_or_else(|code| panic!("{planned:?} refused: {code:?}"));
        assert!(!reply.replayed);
        self.settle(&s, &reply);
        // Loads and drains are the test's own bookkeeping, not targets for
        // the storm's refunds and reversals (taking back a 20,000,000 load
        // would depend on what other tills spent meanwhile).
        self.recent.retain(|t| *t != txn);
    }
}
