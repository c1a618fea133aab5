//! Setup through the protocol, outside the measured window: with the owner
//! key, a store of the bench's own, its terminals' keys enrolled and the
//! cards issued (all pipelined); then every terminal signs on, the cards
//! are loaded with what the plan will spend, and the purchases that the
//! planned refunds refer to are made.
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use cardd::client::{AnyClient, Client, ClientError, TlsClient};
use cardd::crypto::generate_key;
use cardd::error::Refusal;
use cardd::pb::{self, reply::Detail, request::Op};
use ed25519_dalek::SigningKey;
use futures::future::try_join_all;
use indicatif::ProgressBar;
use tokio::sync::Semaphore;

use super::plan::{Seed, TerminalPlan};
use super::wire::pipeline;

/// The operator name recorded on every bench request.
pub const OPERATOR: &str = "bench";
/// Requests one setup connection keeps in flight (the server allows 64;
/// see `wire::pipeline` for why not all of them).
const SETUP_WINDOW: usize = 32;
/// Terminals signing on at the same time.
const CONNECT_CONCURRENCY: usize = 32;

/// What the owner provisioned.
pub struct Owned {
    /// The new store.
    pub store_id: u32,
    /// Its name.
    pub store_name: String,
    /// One key per terminal, enrolled to the store.
    pub terminal_keys: Vec<SigningKey>,
    /// The issued card numbers.
    pub cards: Vec<String>,
    /// Ledger records written (store, enrolments, cards).
    pub records: u64,
}

fn first_refusal(what: &str, answers: &[Result<pb::Reply, Refusal>]) -> anyhow::Result<()> {
    let failed: Vec<&Refusal> = answers.iter().filter_map(|a| a.as_ref().err()).collect();
    if let Some(r) = failed.first() {
        bail!(
            "{what}: {} of {} refused, the first with {} ({})",
            failed.len(),
            answers.len(),
            r.code.as_str_name(),
            r.message
        );
    }
    Ok(())
}

/// Sends `requests` pipelined, except the last, which goes alone after all
/// the others are answered: requests in flight together may be applied in
/// any order, and the server tells a signer at sign-on the transaction id
/// of its newest record, which must be its highest for the next run.
async fn pipeline_last_alone(
    client: &mut AnyClient,
    requests: &[pb::Request],
    timeout: Duration,
    bar: &ProgressBar,
) -> anyhow::Result<Vec<Result<pb::Reply, Refusal>>> {
    let Some((last, rest)) = requests.split_last() else {
        return Ok(Vec::new());
    };
    let mut answers = pipeline(client, rest, SETUP_WINDOW, timeout, || bar.inc(1)).await?;
    answers.extend(
        pipeline(client, std::slice::from_ref(last), 1, timeout, || {
            bar.inc(1)
        })
        .await?,
    );
    Ok(answers)
}

/// Creates a store of the bench's own (a fresh name each run) with
/// transaction `txn`; returns its id and name.
async fn create_store(
    owner: &mut AnyClient,
    txn: u64,
    timeout: Duration,
) -> anyhow::Result<(u32, String)> {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let store_name = format!("bench {secs}-{:04x}", rand::random::<u16>());
    let req = owner.request(
        txn,
        Op::CreateStore(pb::CreateStore {
            name: store_name.clone(),
        }),
    );
    let reply = match tokio::time::timeout(timeout, owner.call(&req)).await {
        Err(_) => bail!("creating the bench store: no answer within {timeout:?}"),
        Ok(Err(ClientError::Refused(r))) => bail!(
            "creating the bench store: refused with {} ({})",
            r.code.as_str_name(),
            r.message
        ),
        Ok(Err(e)) => bail!("creating the bench store: {e}"),
        Ok(Ok(r)) => r,
    };
    let Some(Detail::Store(store)) = reply.detail else {
        bail!("creating the bench store: the answer names no store");
    };
    Ok((store.store_id, store_name))
}

/// Creates the bench's store, enrols `terminals` fresh keys to it and
/// issues `cards` cards.
pub async fn provision(
    owner: &mut AnyClient,
    terminals: u32,
    cards: u32,
    timeout: Duration,
    bar: &ProgressBar,
) -> anyhow::Result<Owned> {
    if owner.session.role() != pb::Role::Owner {
        bail!(
            "--owner-key signs on as {}, not as the brand's owner",
            owner.session.role().as_str_name()
        );
    }
    owner.operator = OPERATOR.into();
    let brand = owner.session.brand_id;
    let mut txn = owner.session.last_txn_id + 1;
    let (store_id, store_name) = create_store(owner, txn, timeout).await?;
    txn += 1;

    let terminal_keys: Vec<SigningKey> = (0..terminals).map(|_| generate_key()).collect();
    let card_numbers: Vec<String> = (0..cards)
        .map(|_| cardd::card_number::generate(brand))
        .collect();
    let mut requests = Vec::with_capacity((terminals + cards) as usize);
    for (i, key) in terminal_keys.iter().enumerate() {
        requests.push(owner.request(
            txn,
            Op::EnrollTerminal(pb::EnrollTerminal {
                store_id,
                public_key: key.verifying_key().to_bytes().to_vec(),
                label: format!("bench till {}", i + 1),
            }),
        ));
        txn += 1;
    }
    for card in &card_numbers {
        requests.push(owner.request(txn, Op::IssueCard(pb::IssueCard { card: card.clone() })));
        txn += 1;
    }
    bar.set_length(requests.len() as u64);
    let answers = pipeline_last_alone(owner, &requests, timeout, bar).await?;
    first_refusal("enrolling terminals and issuing cards", &answers)?;
    Ok(Owned {
        store_id,
        store_name,
        terminal_keys,
        cards: card_numbers,
        records: 1 + answers.len() as u64,
    })
}

/// A signed-on bench terminal.
pub struct BenchTerminal {
    /// Its connection.
    pub client: AnyClient,
    /// Its next unused transaction id.
    pub next_txn: u64,
    /// The record sequence numbers of its setup purchases (for refunds).
    pub seed_seqs: Vec<u64>,
}

/// Signs every terminal on (a bounded number at a time).
pub async fn connect_all(
    addr: &str,
    tls: Option<&TlsClient>,
    keys: &[SigningKey],
    store_id: u32,
    timeout: Duration,
    bar: &ProgressBar,
) -> anyhow::Result<Vec<BenchTerminal>> {
    let gate = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let tasks = keys.iter().enumerate().map(|(i, key)| {
        let gate = gate.clone();
        let key = key.clone();
        let addr = addr.to_string();
        let tls = tls.cloned();
        let bar = bar.clone();
        async move {
            let _permit = gate.acquire().await.expect("never closed");
            let connect = Client::connect_with(addr.as_str(), key, tls.as_ref());
            let client = match tokio::time::timeout(timeout, connect).await {
                Err(_) => bail!("terminal {}: no sign-on to {addr} within {timeout:?}", i + 1),
                Ok(Err(e)) => bail!("terminal {}: sign-on to {addr}: {e}", i + 1),
                Ok(Ok(c)) => c,
            };
            if client.session.role() != pb::Role::Terminal || client.session.store_id != store_id {
                bail!(
                    "terminal {} signed on as {} of store {}, not as a terminal of store {store_id}",
                    i + 1,
                    client.session.role().as_str_name(),
                    client.session.store_id
                );
            }
            bar.inc(1);
            let next_txn = client.session.last_txn_id + 1;
            let mut client = client;
            client.operator = OPERATOR.into();
            Ok(BenchTerminal {
                client,
                next_txn,
                seed_seqs: Vec::new(),
            })
        }
    });
    // Spawned so that sign-ons run on every core.
    let handles: Vec<_> = tasks.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.map_err(|e| anyhow!("sign-on task: {e}"))??);
    }
    Ok(out)
}

/// Loads the cards: `top_ups` (card index, amount) are shared round-robin
/// among the terminals, each sending its share pipelined. Returns the
/// records written.
pub async fn fund(
    terminals: &mut [BenchTerminal],
    cards: &[String],
    top_ups: &[(u32, i64)],
    timeout: Duration,
    bar: &ProgressBar,
) -> anyhow::Result<u64> {
    bar.set_length(top_ups.len() as u64);
    let n = terminals.len();
    let jobs = terminals.iter_mut().enumerate().map(|(t, term)| {
        let requests: Vec<pb::Request> = top_ups
            .iter()
            .skip(t)
            .step_by(n)
            .map(|(card, amount)| {
                let r = term.client.request(
                    term.next_txn,
                    Op::TopUp(pb::TopUp {
                        card: cards[*card as usize].clone(),
                        amount_minor: *amount,
                        ..Default::default()
                    }),
                );
                term.next_txn += 1;
                r
            })
            .collect();
        let bar = bar.clone();
        async move {
            let answers = pipeline(&mut term.client, &requests, SETUP_WINDOW, timeout, || {
                bar.inc(1)
            })
            .await?;
            first_refusal("loading the cards", &answers)?;
            Ok::<u64, anyhow::Error>(answers.len() as u64)
        }
    });
    Ok(try_join_all(jobs).await?.into_iter().sum())
}

/// Makes each terminal's setup purchases (the originals its planned refunds
/// refer to) and keeps their record sequence numbers. Returns the records
/// written and the value spent.
pub async fn seed_purchases(
    terminals: &mut [BenchTerminal],
    plans: &[TerminalPlan],
    cards: &[String],
    timeout: Duration,
) -> anyhow::Result<(u64, i64)> {
    let jobs = terminals.iter_mut().zip(plans).map(|(term, plan)| {
        let requests: Vec<pb::Request> = plan
            .seeds
            .iter()
            .map(|Seed { card, amount }| {
                let r = term.client.request(
                    term.next_txn,
                    Op::Purchase(pb::Purchase {
                        card: cards[*card as usize].clone(),
                        amount_minor: *amount,
                        allow_partial: false,
                        ..Default::default()
                    }),
                );
                term.next_txn += 1;
                r
            })
            .collect();
        async move {
            let answers =
                pipeline(&mut term.client, &requests, SETUP_WINDOW, timeout, || {}).await?;
            first_refusal("the purchases that refunds refer to", &answers)?;
            let mut spent = 0i64;
            for (a, seed) in answers.iter().zip(&plan.seeds) {
                let reply = a.as_ref().expect("checked above");
                let seq = reply
                    .receipt
                    .as_ref()
                    .map(|r| r.seq)
                    .context("a setup purchase without a receipt")?;
                match &reply.detail {
                    Some(Detail::Purchase(p)) if p.approved_minor == seed.amount => {}
                    _ => bail!("setup purchase {seq} was not approved in full"),
                }
                spent += seed.amount;
                term.seed_seqs.push(seq);
            }
            Ok::<(u64, i64), anyhow::Error>((answers.len() as u64, spent))
        }
    });
    let done = try_join_all(jobs).await?;
    Ok(done
        .into_iter()
        .fold((0, 0), |(r, s), (r2, s2)| (r + r2, s + s2)))
}
