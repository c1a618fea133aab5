//! Builds a large ledger directly through the state machine and storage
//! (no network), for benchmarks: `cardd audit verify` speed, restart time,
//! disk use.
//!
//!     cargo run --release --example gen_ledger -- DATA_DIR RECORDS [CARDS] [TERMINALS] [DAYS]
//!
//! Records are committed in batches of 1,000 with one checkpoint each, as
//! the daemon's group commit does under load, and spread evenly over the
//! DAYS (default 365) before now, so that the refund window forgets what a
//! real brand's ledger would. Requests are signed on every core before they
//! are applied. Snapshots are written as the daemon writes them.
use std::sync::Arc;
use std::time::Instant;

use cardd::ledger::{BrandLedger, Submission};
use cardd::pb::request::Op;
use cardd::state::Principal;
use cardd::testing;
use ed25519_dalek::SigningKey;

const BATCH: usize = 1_000;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        anyhow::bail!("usage: gen_ledger DATA_DIR RECORDS [CARDS] [TERMINALS] [DAYS]");
    }
    let data = std::path::PathBuf::from(&args[1]);
    let records: u64 = args[2].parse()?;
    let cards: usize = args.get(3).map_or(Ok(10_000), |c| c.parse())?;
    // Terminals sign the purchases round-robin; the auditor's batch check
    // groups by signer, so its speed depends on this.
    let terminal_count: u32 = args.get(4).map_or(Ok(16), |t| t.parse())?;
    let days: i64 = args.get(5).map_or(Ok(365), |d| d.parse())?;
    let span_ms = days * 86_400_000;
    let start_ms = cardd::ledger::now_ms() - span_ms;
    let started = Instant::now();
    let (store, server_key, ledgers) = cardd::server::load(&data)?;
    anyhow::ensure!(
        ledgers.is_empty(),
        "{} already holds a ledger",
        data.display()
    );
    let owner = testing::key(7);
    // The owner's key beside the ledger, for `cardd admin --key` (reports).
    cardd::crypto::write_key_file(&data.join("owner.key"), &owner)?;
    let create = testing::create_brand("Bench", &owner.verifying_key().to_bytes());
    let mut ledger = BrandLedger::create(store, Arc::clone(&server_key), testing::BRAND, create)?;
    ledger.snapshot_into(
        &cardd::snapshot::dir(&data),
        cardd::limits::SNAPSHOT_EVERY_RECORDS,
    );
    // The server time of the record about to be written.
    let clock = move |seq: u64| {
        start_ms + (i128::from(seq) * i128::from(span_ms) / i128::from(records.max(1))) as i64
    };
    let terminals: Vec<SigningKey> = (0..terminal_count)
        .map(|i| {
            let mut seed = [0x5a; 32];
            seed[..4].copy_from_slice(&i.to_le_bytes());
            SigningKey::from_bytes(&seed)
        })
        .collect();
    // Random numbers: at a million cards some would collide (12 random
    // digits), and the ledger refuses a second card under one number.
    let mut seen = std::collections::HashSet::new();
    let card_numbers: Vec<String> =
        std::iter::repeat_with(|| cardd::card_number::generate(testing::BRAND))
            .filter(|c| seen.insert(c.clone()))
            .take(cards)
            .collect();
    let owner_subs = testing::owner_setup(&owner, "Bench store", &terminals, &card_numbers);
    commit_all(&mut ledger, owner_subs, &clock)?;
    // Fund every card once, then purchases (with a top-up every 50th).
    let total = records.saturating_sub(ledger.state.seq);
    let mut next_txn = vec![0u64; terminals.len()];
    let mut done = 0u64;
    while done < total {
        let n = (total - done).min(100_000);
        let plan: Vec<(usize, u64, Op)> = (0..n)
            .map(|k| {
                let i = done + k;
                let term = (i as usize) % terminals.len();
                next_txn[term] += 1;
                let card = card_numbers[(i % cards as u64) as usize].clone();
                let op = if i < cards as u64 || i.is_multiple_of(50) {
                    testing::top_up(&card, 1_000_000)
                } else {
                    testing::purchase(&card, 100 + (i % 5_000) as i64, true)
                };
                (term, next_txn[term], op)
            })
            .collect();
        let subs = sign_parallel(&terminals, plan);
        commit_all(&mut ledger, subs, &clock)?;
        done += n;
        eprintln!(
            "{} records, {:.1} s",
            ledger.state.seq,
            started.elapsed().as_secs_f64()
        );
    }
    println!(
        "{} records in {:.1} s",
        ledger.state.seq,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn sign_parallel(terminals: &[SigningKey], plan: Vec<(usize, u64, Op)>) -> Vec<Submission> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let chunk = plan.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = plan
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .map(|(term, txn, op)| {
                            let signer = Principal::Terminal(*term as u32 + 1);
                            testing::signed(&terminals[*term], signer, *txn, op.clone())
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("signer thread"))
            .collect()
    })
}

fn commit_all(
    ledger: &mut BrandLedger,
    subs: Vec<Submission>,
    clock: &impl Fn(u64) -> i64,
) -> anyhow::Result<()> {
    for chunk in subs.chunks(BATCH) {
        let batch = ledger.apply_batch_at(chunk, clock(ledger.state.seq));
        if let Some(Err(e)) = batch.answers.iter().find(|a| a.is_err()) {
            anyhow::bail!("generator request refused: {e}");
        }
        BrandLedger::commit(
            ledger.store().as_ref(),
            ledger.brand_id(),
            &batch.written,
            &ledger.checkpoint(),
        )?;
        if ledger.snapshot_due() {
            ledger.write_snapshot()?;
        }
    }
    Ok(())
}
