//! One signed-on terminal: the client connection plus the terminal's state
//! file. Sends one operation at a time, choosing transaction ids, resending
//! the exact bytes of an earlier request on a retry, and keeping the shift
//! totals. (A later load generator can drive many of these.)
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use cardd::client::{AnyClient, ClientError};
use cardd::crypto::sign_request;
use cardd::error::Refusal;
use cardd::pb::{self, request::Op};
use prost::Message;

use crate::state::{old_state_path, prepare_dir, state_path, Counting, Identity, TerminalState};

/// The answer to one operation.
#[derive(Debug)]
pub struct Outcome {
    /// The request as sent (for a retry: the earlier request, resent).
    pub request: pb::Request,
    /// The server's reply, or its refusal.
    pub result: Result<pb::Reply, Refusal>,
    /// How the answer entered the shift totals.
    pub counting: Counting,
}

/// A signed-on terminal with its state.
pub struct Terminal {
    /// The connection; `client.session` is what the server said at sign-on.
    pub client: AnyClient,
    /// The terminal's memory (saved with [`Terminal::save`]).
    pub state: TerminalState,
    state_path: PathBuf,
    timeout: Duration,
    /// Ask for the record's inclusion proof (`want_proof`) on new
    /// state-changing requests.
    pub want_proof: bool,
    /// PINs the cardholder typed, sealed into the request once its
    /// transaction id is known (a block is bound to one request).
    pub pins: Pins,
}

/// PINs typed at the till for this operation, in clear only in this
/// process: they leave it sealed to the server's PIN key.
#[derive(Debug, Default, Clone)]
pub struct Pins {
    /// The card's PIN (`--pin`): authorises a spend or a PIN change.
    pub present: Option<String>,
    /// The PIN to set (`set-pin --new-pin`).
    pub new: Option<String>,
}

/// True for operations that change nothing and use no transaction id.
pub fn is_read_only(op: &Op) -> bool {
    matches!(op, Op::Inquiry(_) | Op::TxnStatus(_))
}

/// True when two requests ask for the same thing: equal apart from the
/// client clock, whether a proof was asked for (a retry must resend the
/// original bytes to get the original answer) and, for a shift close, the
/// totals, which the earlier request carried as they were then.
fn same_intent(earlier: &pb::Request, new: &pb::Request) -> bool {
    let mut a = earlier.clone();
    let mut b = new.clone();
    a.client_time_ms = 0;
    b.client_time_ms = 0;
    a.want_proof = false;
    b.want_proof = false;
    if let (Some(Op::CloseShift(x)), Some(Op::CloseShift(y))) = (&mut a.op, &mut b.op) {
        x.terminal_totals = None;
        y.terminal_totals = None;
    }
    // Sealing a PIN twice gives two blocks (a fresh ephemeral key each
    // time): a retry resends the block first sent.
    for op in [&mut a.op, &mut b.op].into_iter().flatten() {
        match op {
            Op::Purchase(p) => p.pin_block.clear(),
            Op::RedeemPoints(r) => r.pin_block.clear(),
            Op::SetPin(s) => {
                s.pin_block.clear();
                s.old_pin_block.clear();
            }
            _ => {}
        }
    }
    a == b
}

impl Terminal {
    /// Binds a signed-on client to its state file in `state_dir`.
    /// Warnings for the user (e.g. a state file of another terminal set
    /// aside) are returned, not printed.
    pub fn open(
        client: AnyClient,
        key_path: &Path,
        state_dir: &Path,
        timeout: Duration,
    ) -> anyhow::Result<(Self, Vec<String>)> {
        let role = client.session.role();
        if role != pb::Role::Terminal {
            bail!(
                "the key {} signs on as {}, not as a terminal (owners use `cardd admin`)",
                key_path.display(),
                role.as_str_name()
            );
        }
        prepare_dir(state_dir)?;
        let state_path = state_path(state_dir, &client.key().verifying_key().to_bytes());
        let mut warnings = Vec::new();
        let mut state = TerminalState::load(&state_path)?;
        let old = old_state_path(key_path);
        if !state_path.exists() && old.is_file() {
            // An earlier version kept the state beside the key: carry on
            // from it (its transaction ids and shift totals) and move it.
            state = TerminalState::load(&old)?;
            state.save(&state_path)?;
            std::fs::remove_file(&old)
                .with_context(|| format!("removing the old state file {}", old.display()))?;
            warnings.push(format!(
                "moved the state file {} to {}",
                old.display(),
                state_path.display()
            ));
        }
        let identity = Identity::of(&client.session, &client.server_key);
        if state.adopt(identity, client.session.last_txn_id) {
            warnings.push(format!(
                "{} belonged to another server, brand or terminal; starting a fresh shift",
                state_path.display()
            ));
        }
        Ok((
            Terminal {
                client,
                state,
                state_path,
                timeout,
                want_proof: false,
                pins: Pins::default(),
            },
            warnings,
        ))
    }

    /// Writes the state file.
    pub fn save(&self) -> anyhow::Result<()> {
        self.state.save(&self.state_path)
    }

    /// Sends `op` and waits for the answer. State-changing operations use
    /// `txn` if given, else the next unused transaction id; the id is saved
    /// as used before the request leaves, so a crash never reuses it. If this
    /// terminal sent an equivalent request under the same id before, exactly
    /// those bytes are sent again (the server recognises a retry only by
    /// identical bytes). An error means no answer: the outcome is unknown.
    pub async fn submit(&mut self, txn: Option<u64>, op: Op) -> anyhow::Result<Outcome> {
        if is_read_only(&op) {
            if txn.is_some() {
                bail!("--txn is for state-changing operations; inquiry and status use no transaction id");
            }
            let request = self.client.request(0, op);
            let bytes = request.encode_to_vec();
            let signature = sign_request(self.client.key(), &bytes);
            let result = self.exchange(bytes, signature).await.context("no answer")?;
            return Ok(Outcome {
                request,
                result,
                counting: Counting::NotCounted,
            });
        }
        let txn = self.state.take_txn(txn);
        let op = self.seal_pins(txn, op)?;
        let mut fresh = self.client.request(txn, op);
        fresh.want_proof = self.want_proof;
        let earlier = self.state.sent(txn).and_then(|(bytes, sig)| {
            pb::Request::decode(bytes.as_slice())
                .ok()
                .map(|r| (r, bytes, sig))
        });
        let (request, bytes, signature) = match earlier {
            Some((r, bytes, sig)) if same_intent(&r, &fresh) => (r, bytes, sig),
            other => {
                let bytes = fresh.encode_to_vec();
                let sig = sign_request(self.client.key(), &bytes);
                if other.is_none() {
                    self.state.remember_sent(txn, &bytes, &sig);
                }
                (fresh, bytes, sig)
            }
        };
        // Reserve the id (and keep the request for a retry) before sending.
        self.save().context("not sent")?;
        let result = self.exchange(bytes.clone(), signature.clone()).await.with_context(|| {
            format!(
                "no answer for transaction {txn}; its outcome is unknown: ask with `status --txn {txn}`, \
                 retry with `--txn {txn}` and the same operation, or void it with `reverse --original-txn {txn}`"
            )
        })?;
        let counting = match &result {
            Ok(reply) => {
                // The server holds these bytes under this id now.
                self.state.remember_sent(txn, &bytes, &signature);
                self.state.count(txn, reply)
            }
            Err(_) => Counting::NotCounted,
        };
        Ok(Outcome {
            request,
            result,
            counting,
        })
    }

    /// Seals the PINs typed for `op` into it, for transaction `txn`.
    fn seal_pins(&self, txn: u64, mut op: Op) -> anyhow::Result<Op> {
        use cardd::pin::Purpose;
        let seal = |card: &str, purpose, pin: &str| {
            self.client
                .pin_block(txn, card, purpose, pin)
                .map_err(|e| crate::output::Failure {
                    code: "INVALID_ARGUMENT",
                    message: format!("PIN: {e}"),
                })
        };
        let present = self.pins.present.as_deref();
        match &mut op {
            Op::Purchase(p) => {
                if let Some(pin) = present {
                    p.pin_block = seal(&p.card, Purpose::Present, pin)?;
                }
            }
            Op::RedeemPoints(r) => {
                if let Some(pin) = present {
                    r.pin_block = seal(&r.card, Purpose::Present, pin)?;
                }
            }
            Op::SetPin(s) => {
                let new = self
                    .pins
                    .new
                    .as_deref()
                    .context("set-pin needs --new-pin")?;
                s.pin_block = seal(&s.card, Purpose::New, new)?;
                if let Some(pin) = present {
                    s.old_pin_block = seal(&s.card, Purpose::Present, pin)?;
                }
            }
            _ if present.is_some() => {
                bail!("--pin is for purchase, redeem-points and set-pin")
            }
            _ => {}
        }
        Ok(op)
    }

    /// One signed request and its answer, within the timeout.
    async fn exchange(
        &mut self,
        bytes: Vec<u8>,
        signature: Vec<u8>,
    ) -> anyhow::Result<Result<pb::Reply, Refusal>> {
        let call = self.client.call_signed(bytes, signature);
        match tokio::time::timeout(self.timeout, call).await {
            Err(_) => Err(anyhow!(
                "the server did not answer within {:?}",
                self.timeout
            )),
            Ok(Ok(reply)) => Ok(Ok(reply)),
            Ok(Err(ClientError::Refused(r))) => Ok(Err(r)),
            Ok(Err(e)) => Err(anyhow!("{e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_ignore_the_clock_only() {
        let purchase = |amount| {
            Op::Purchase(pb::Purchase {
                card: "1".into(),
                amount_minor: amount,
                allow_partial: false,
                ..Default::default()
            })
        };
        let a = pb::Request {
            txn_id: 5,
            client_time_ms: 1,
            op: Some(purchase(1250)),
            ..Default::default()
        };
        let b = pb::Request {
            client_time_ms: 2,
            ..a.clone()
        };
        assert!(same_intent(&a, &b));
        let c = pb::Request {
            op: Some(purchase(1300)),
            ..b.clone()
        };
        assert!(!same_intent(&a, &c));
        let d = pb::Request {
            operator: "someone else".into(),
            ..b.clone()
        };
        assert!(!same_intent(&a, &d));
        // Asking for a proof on a retry is still a retry.
        let p = pb::Request {
            want_proof: true,
            ..b
        };
        assert!(same_intent(&a, &p));
        let close = |n| {
            Op::CloseShift(pb::CloseShift {
                terminal_totals: Some(pb::ShiftTotals {
                    purchase_count: n,
                    ..Default::default()
                }),
            })
        };
        let e = pb::Request {
            op: Some(close(1)),
            ..a.clone()
        };
        let f = pb::Request {
            op: Some(close(0)),
            ..a
        };
        assert!(same_intent(&e, &f));
    }
}
