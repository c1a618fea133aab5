//! The load: tills that buy and top up concurrently, each on cards of its
//! own, pipelining a few requests, until the daemon dies under them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cardd::client::Client;
use cardd::crypto::sign_request;
use cardd::pb::{self, client_message::Body, server_message, ClientMessage, ServerMessage};
use futures::{SinkExt, StreamExt};
use prost::Message;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::common::{purchase, top_up};

/// Requests one till keeps in flight.
const WINDOW: usize = 4;
/// A till sends at most one request per this interval ...
const PACE: Duration = Duration::from_millis(3);
/// ... and at most this many per round (bounds the checks after the cut).
const MAX_PER_TILL: usize = 400;
/// Purchases are 1..=MAX_PURCHASE minor units.
const MAX_PURCHASE: i64 = 500;
/// Top-ups stay below the demo rules' smallest bonus tier (50,000), so a
/// top-up adds exactly its amount.
const MAX_TOP_UP: i64 = 5_000;

/// One request a till sent (or was about to send).
#[derive(Debug, Clone)]
pub struct Issued {
    /// Which terminal key signed it (index into the round's keys).
    pub key: usize,
    /// Its terminal txn id.
    pub txn: u64,
    /// The card it is for.
    pub card: String,
    /// Its effect on the card's balance if applied.
    pub delta: i64,
    /// The signed bytes, to re-send unchanged.
    pub request: Vec<u8>,
    /// Their signature.
    pub signature: Vec<u8>,
    /// The answer, if it arrived before the cut.
    pub ack: Option<pb::Reply>,
}

/// What a till is given: its connection, its cards with their balances,
/// and where its txn ids start.
pub struct Till {
    /// A signed-on connection.
    pub client: Client,
    /// Index of the key it signed on with.
    pub key: usize,
    /// Its cards and their balances before the round.
    pub cards: Vec<(String, i64)>,
    /// Txn ids are txn_base + 1, + 2, ...
    pub txn_base: u64,
    /// Its RNG seed.
    pub seed: u64,
}

/// Per card, the lowest balance it can have whatever happens to the
/// requests in flight: a purchase is sent only if it cannot be declined.
struct Floors(HashMap<String, i64>);

impl Floors {
    fn next_op(&mut self, rng: &mut StdRng, card: &str) -> (pb::request::Op, i64) {
        let floor = self.0.get_mut(card).expect("till's card");
        let amount = rng.gen_range(1..=MAX_PURCHASE);
        if rng.gen_bool(0.7) && *floor >= amount {
            *floor -= amount;
            (purchase(card, amount), -amount)
        } else {
            let amount = rng.gen_range(1..=MAX_TOP_UP);
            (top_up(card, amount), amount)
        }
    }

    fn acked(&mut self, card: &str, delta: i64) {
        if delta > 0 {
            *self.0.get_mut(card).expect("till's card") += delta;
        }
    }
}

/// Runs one till until its connection dies or it reaches its cap, and
/// returns everything it sent, in order, with the answers it got.
pub async fn run(till: Till, acks: Arc<AtomicUsize>) -> Vec<Issued> {
    let Till {
        mut client,
        key,
        cards,
        txn_base,
        seed,
    } = till;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut floors = Floors(cards.iter().cloned().collect());
    let mut issued: Vec<Issued> = Vec::new();
    let mut by_txn: HashMap<u64, usize> = HashMap::new();
    let mut tick = tokio::time::interval(PACE);
    let mut in_flight = 0usize;
    loop {
        let can_send = issued.len() < MAX_PER_TILL && in_flight < WINDOW;
        if !can_send && in_flight == 0 {
            break;
        }
        tokio::select! {
            _ = tick.tick(), if can_send => {
                let card = cards[rng.gen_range(0..cards.len())].0.clone();
                let (op, delta) = floors.next_op(&mut rng, &card);
                let txn = txn_base + issued.len() as u64 + 1;
                let request = client.request(txn, op).encode_to_vec();
                let signature = sign_request(client.key(), &request);
                by_txn.insert(txn, issued.len());
                let msg = ClientMessage {
                    request_id: txn,
                    body: Some(Body::Signed(pb::SignedRequest { request: request.clone(), signature: signature.clone() })),
                };
                // Recorded before the write: a request half-written at the
                // cut is still one whose fate must be settled.
                issued.push(Issued { key, txn, card, delta, request, signature, ack: None });
                if client.framed().send(Bytes::from(msg.encode_to_vec())).await.is_err() {
                    break;
                }
                in_flight += 1;
            }
            frame = client.framed().next() => {
                let Some(Ok(frame)) = frame else { break };
                let msg = ServerMessage::decode(frame).expect("server frames decode");
                let i = *by_txn.get(&msg.request_id).expect("answer to a request sent");
                match msg.body {
                    Some(server_message::Body::Reply(r)) => {
                        assert!(issued[i].ack.is_none(), "two answers to txn {}", issued[i].txn);
                        assert!(!r.replayed, "a fresh request was answered as a replay");
                        floors.acked(&issued[i].card, issued[i].delta);
                        issued[i].ack = Some(r);
                        in_flight -= 1;
                        acks.fetch_add(1, Ordering::Relaxed);
                    }
                    other => panic!("txn {} refused during the load: {other:?}", issued[i].txn),
                }
            }
        }
    }
    issued
}
