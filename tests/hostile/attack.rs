//! Running one attack and checking the daemon's answer; the victim that
//! must stay served through all of them.
use super::*;

pub(crate) enum Who {
    /// A fresh connection that never signs on.
    Anonymous,
    /// A fresh connection signed on with the attacker's (enrolled) key.
    SignedOn,
}

pub(crate) enum Expect {
    /// This error code; the connection stays usable (an echo still answers).
    Open(E),
    /// This error code, then the daemon closes the connection.
    Close(E),
    /// No answer at all; the daemon closes the connection.
    SilentClose,
    /// Some error, code not specified (signed random garbage).
    AnyError,
    /// Anything but a challenge, a sign-on or a reply (random garbage);
    /// the daemon closes the connection once we stop sending.
    NoSuccess,
}

pub(crate) struct Case {
    pub(crate) name: String,
    pub(crate) who: Who,
    /// Written to the socket as they are (framing included, or not).
    pub(crate) bytes: Vec<u8>,
    /// Shut down our write half after writing.
    pub(crate) half_close: bool,
    pub(crate) expect: Expect,
}

pub(crate) fn case(name: impl Into<String>, who: Who, bytes: Vec<u8>, expect: Expect) -> Case {
    Case {
        name: name.into(),
        who,
        bytes,
        half_close: false,
        expect,
    }
}

pub(crate) enum Got {
    Msg(Box<ServerMessage>),
    Closed,
    Timeout,
}

pub(crate) async fn next(conn: &mut Raw) -> Got {
    match tokio::time::timeout(WAIT, conn.next()).await {
        Err(_) => Got::Timeout,
        Ok(None) | Ok(Some(Err(_))) => Got::Closed,
        Ok(Some(Ok(f))) => Got::Msg(Box::new(
            ServerMessage::decode(f).expect("the daemon's frames decode"),
        )),
    }
}

/// Runs one attack and checks the daemon's answer to it.
pub(crate) async fn attack(addr: SocketAddr, attacker: &SigningKey, c: &Case) {
    let name = &c.name;
    let mut conn = match c.who {
        Who::Anonymous => raw_connect(addr).await,
        Who::SignedOn => sign_on(addr, attacker).await,
    };
    // Written raw; the daemon may close before it has read everything.
    let _ = bounded(conn.get_mut().write_all(&c.bytes)).await;
    if c.half_close {
        let _ = bounded(conn.get_mut().shutdown()).await;
    }
    match c.expect {
        Expect::Open(code) | Expect::Close(code) => {
            let got = loop {
                match next(&mut conn).await {
                    Got::Msg(m) if matches!(m.body, Some(server_message::Body::Challenge(_))) => {
                        continue
                    }
                    Got::Msg(m) => break m,
                    Got::Closed => panic!("{name}: connection closed without an error"),
                    Got::Timeout => panic!("{name}: no answer"),
                }
            };
            assert_eq!(error_code(&got), Some(code), "{name}: answered {got:?}");
            if let Expect::Close(_) = c.expect {
                loop {
                    match next(&mut conn).await {
                        Got::Closed => break,
                        Got::Msg(m) => {
                            assert!(error_code(&m).is_some(), "{name}: after the refusal: {m:?}")
                        }
                        Got::Timeout => {
                            panic!("{name}: the connection was left open after {code:?}")
                        }
                    }
                }
            } else {
                let echo = ClientMessage {
                    request_id: ECHO_ID,
                    body: Some(Body::Echo(pb::Echo {
                        payload: b"ping".to_vec(),
                    })),
                };
                bounded(conn.send(bytes::Bytes::from(echo.encode_to_vec())))
                    .await
                    .unwrap_or_else(|e| panic!("{name}: send echo: {e}"));
                loop {
                    match next(&mut conn).await {
                        Got::Msg(m) if m.request_id == ECHO_ID => {
                            assert!(
                                matches!(m.body, Some(server_message::Body::Echo(_))),
                                "{name}: echo answered {m:?}"
                            );
                            break;
                        }
                        Got::Msg(_) => continue,
                        Got::Closed => panic!("{name}: the connection was closed after {code:?}"),
                        Got::Timeout => panic!("{name}: no echo after {code:?}"),
                    }
                }
            }
        }
        Expect::SilentClose => match next(&mut conn).await {
            Got::Closed => {}
            Got::Msg(m) => panic!("{name}: expected no answer, got {m:?}"),
            Got::Timeout => panic!("{name}: connection left open"),
        },
        Expect::AnyError => loop {
            match next(&mut conn).await {
                Got::Msg(m) if matches!(m.body, Some(server_message::Body::Challenge(_))) => {
                    continue
                }
                Got::Msg(m) => {
                    assert!(
                        error_code(&m).is_some(),
                        "{name}: garbage was answered with {m:?}"
                    );
                    break;
                }
                Got::Closed => panic!("{name}: closed without an error"),
                Got::Timeout => panic!("{name}: no answer"),
            }
        },
        Expect::NoSuccess => loop {
            match next(&mut conn).await {
                Got::Closed => break,
                Got::Msg(m) => assert!(
                    matches!(
                        m.body,
                        Some(server_message::Body::Error(_)) | Some(server_message::Body::Echo(_))
                    ),
                    "{name}: garbage was answered with {m:?}"
                ),
                Got::Timeout => panic!("{name}: connection left open after we stopped sending"),
            }
        },
    }
}

/// The terminal connection opened before any attack, and what it expects.
pub(crate) struct Victim {
    pub(crate) client: Client,
    pub(crate) card: String,
    pub(crate) balance: i64,
    pub(crate) seq: u64,
    pub(crate) next_txn: u64,
    pub(crate) txns: Vec<u64>,
}

impl Victim {
    /// The victim's balance is unchanged and its purchase still works,
    /// writing the one record right after its previous one.
    pub(crate) async fn still_served(&mut self, daemon: &mut Daemon, after: &str) {
        assert!(daemon.is_running(), "the daemon died after: {after}");
        let hwm = peak_rss_kib(daemon.child.id());
        assert!(
            hwm < 512 * 1024,
            "the daemon's peak memory is {hwm} KiB after: {after}"
        );
        let view = inquiry(&mut self.client, &self.card).await;
        assert_eq!(
            view.balance_minor, self.balance,
            "the victim's balance changed after: {after}"
        );
        let txn = self.next_txn;
        self.next_txn += 1;
        let reply = call(&mut self.client, txn, purchase(&self.card, 1))
            .await
            .unwrap_or_else(|e| panic!("the victim's purchase was refused ({e:?}) after: {after}"));
        let receipt = reply.receipt.expect("receipt");
        assert_eq!(
            receipt.seq,
            self.seq + 1,
            "a record was written by: {after}"
        );
        self.balance -= 1;
        assert_eq!(
            reply.card.expect("card").balance_minor,
            self.balance,
            "after: {after}"
        );
        self.seq = receipt.seq;
        self.txns.push(txn);
    }
}

/// Peak resident memory of a process, in KiB (Linux /proc).
pub(crate) fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

pub(crate) fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}
