//! `cardd admin set-holder`, `find-card`, `erase-holder`, `set-pin` and
//! `unlock-pin`: the owner's side of a card's holder and PIN
//! (docs/security.md, "Personal data and PINs").
use std::process::ExitCode;

use cardd::client::{Client, ClientError, ClientStream};
use cardd::pb::{self, request::Op};
use cardd::pin::Purpose;
use cardd::render::reply_json;

use super::admin::print_refusal;
use crate::AdminOp;

/// What `prepare` made of an admin command.
pub enum Step {
    /// Not a holder or PIN command: the caller builds it.
    Other(AdminOp),
    /// The request to sign and send under the command's txn id.
    Send(Op),
    /// Done here (printed); exit with this.
    Exit(ExitCode),
}

/// Turns a holder or PIN command into the request to send, doing what
/// comes first: set-holder hands the person to the holder store and signs
/// only the commitment it answers; find-card is answered here; set-pin
/// seals the PIN.
pub async fn prepare(
    client: &mut Client<ClientStream>,
    op: AdminOp,
    json: bool,
    txn: u64,
) -> anyhow::Result<Step> {
    Ok(match op {
        AdminOp::SetHolder { card, name, phone } => {
            // In this order: with both as `-`, the name is the first line.
            let name = arg_or_stdin(name)?;
            let phone = arg_or_stdin(phone)?;
            let data = Op::HolderData(pb::HolderData {
                card: card.clone(),
                name,
                phone,
            });
            // Never recorded, so it takes no transaction id.
            match call(client, Op::clone(&data), json).await? {
                Ok(reply) => Step::Send(Op::SetHolder(pb::SetHolder {
                    card,
                    commitment: reply.holder_commitment,
                })),
                Err(code) => Step::Exit(code),
            }
        }
        AdminOp::FindCard { phone } => {
            let find = Op::FindCard(pb::FindCard { phone });
            match call(client, find, json).await? {
                Ok(reply) => {
                    print_found(&reply, json);
                    Step::Exit(ExitCode::SUCCESS)
                }
                Err(code) => Step::Exit(code),
            }
        }
        AdminOp::EraseHolder { card } => Step::Send(Op::EraseHolder(pb::EraseHolder { card })),
        AdminOp::SetPin { card, pin } => {
            let pin = arg_or_stdin(pin)?;
            let pin_block = client.pin_block(txn, &card, Purpose::New, &pin)?;
            Step::Send(Op::SetPin(pb::SetPin {
                card,
                pin_block,
                old_pin_block: Vec::new(),
            }))
        }
        AdminOp::UnlockPin { card } => Step::Send(Op::SetPinLock(pb::SetPinLock {
            card,
            locked: false,
        })),
        other => Step::Other(other),
    })
}

/// The value given, or with `-` the next line of standard input (so that
/// a PIN or a person is not in the process list or the shell's history).
fn arg_or_stdin(value: String) -> anyhow::Result<String> {
    if value != "-" {
        return Ok(value);
    }
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

/// Sends a request that is never recorded (txn id 0): its reply, or the
/// exit code after printing its refusal.
async fn call(
    client: &mut Client<ClientStream>,
    op: Op,
    json: bool,
) -> anyhow::Result<Result<pb::Reply, ExitCode>> {
    let req = client.request(0, op);
    match client.call(&req).await {
        Ok(reply) => Ok(Ok(reply)),
        Err(ClientError::Refused(r)) => Ok(Err(print_refusal(&r, &client.session, json))),
        Err(e) => Err(anyhow::anyhow!("{e}")),
    }
}

/// The cards found: one number a line, or the reply as JSON.
fn print_found(reply: &pb::Reply, json: bool) {
    let cards = reply.holder.as_ref().map_or(&[][..], |h| &h.cards[..]);
    if json {
        outln!("{}", reply_json(reply));
    } else if cards.is_empty() {
        outln!("No card has a holder with this phone.");
    } else {
        for card in cards {
            outln!("{card}");
        }
    }
}
