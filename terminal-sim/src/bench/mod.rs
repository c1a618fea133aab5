//! `terminal-sim bench`: a load generator for cardd.
//!
//! Setup, outside the measured window:
//! 1. plan every terminal's request stream (mix, cards, amounts) from a
//!    seed, so what each card will be charged is known in advance;
//! 2. with the owner key: create a store of the bench's own, enrol N fresh
//!    terminal keys to it and issue M cards (pipelined);
//! 3. sign every terminal on (a real connection each, its own key), load
//!    every card with what the plan will spend from it, and make the
//!    purchases that planned refunds refer to;
//! 4. encode and sign every planned request (bounded by `--max-requests`).
//!
//! Then the clock starts: each terminal sends its pre-signed requests one
//! at a time, as a till does, or with `--pipeline P` keeps up to P in
//! flight; latency runs from writing a request to reading its answer. When
//! the window closes, no new request is sent and answers still in flight
//! are awaited for at most `--drain-timeout` seconds.
//!
//! With `--rate R` the load is open loop instead: requests go on a fixed
//! schedule, R per second across the terminals (see `schedule.rs`), still
//! at most P in flight per terminal; latency runs from when each request
//! was due, so a slow answer also counts in the requests it held back.
mod cpu;
mod plan;
mod pool;
mod provision;
mod report;
mod run;
mod schedule;
mod scratch;
mod wire;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use cardd::client::{connect_to, AnyClient, TlsClient};
use cardd::crypto::read_key_file;

use crate::output::EXIT_REFUSED;
use cpu::{CpuMeter, CpuUse};
use plan::{plan_terminal, Amounts, Funding, Mix, Spread, TerminalPlan};
use pool::{sign_all, Pool, PoolSpec};
use provision::BenchTerminal;
use report::{Params, Report, Setup};
use run::{drive, Live, TerminalResult, Window};
use schedule::{Pacer, Schedule, MAX_RATE};

/// Most terminals (connections) one bench run opens.
pub const MAX_TERMINALS: u32 = 4_096;
/// Most cards one bench run issues.
pub const MAX_CARDS: u32 = 1_000_000;
/// Most pre-signed requests in all (memory: ~170 bytes each).
pub const MAX_POOL: u64 = 5_000_000;
/// Default pool: this many requests per second of the window in all...
const DEFAULT_POOL_PER_SEC: u64 = 40_000;
/// ...but no more than this in all...
const DEFAULT_POOL_CAP: u64 = 2_000_000;
/// ...and no more than this per second per request in flight for one
/// terminal (a connection waits a round trip and a group commit per
/// request).
const POOL_PER_SEC_PER_SLOT: u64 = 10_000;

/// `terminal-sim bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// The brand owner's key file (for `cardd serve --demo`:
    /// DATA/demo/owner.key). Provisioning uses it to create the bench's
    /// store, enrol its terminals and issue its cards.
    #[arg(long, value_name = "FILE")]
    owner_key: PathBuf,
    /// Simulated terminals: each is its own connection with its own enrolled key.
    #[arg(long, value_name = "N", default_value_t = 16,
          value_parser = clap::value_parser!(u32).range(1..=MAX_TERMINALS as i64))]
    terminals: u32,
    /// Length of the measured window, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    duration: u64,
    /// Operation mix in percent: purchase, topup, inquiry and refund
    /// (refunds return part of purchases made during setup).
    #[arg(long, value_name = "KIND=PCT,...", default_value = "purchase=90,topup=5,inquiry=5",
          value_parser = Mix::parse)]
    mix: Mix,
    /// Cards issued (and loaded) for the run.
    #[arg(long, value_name = "M", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..=MAX_CARDS as i64))]
    cards: u32,
    /// Send --hot-share percent of the traffic to the first K cards
    /// (contention on a few balances). Default: uniform over all cards.
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u32).range(1..=MAX_CARDS as i64))]
    hot_cards: Option<u32>,
    /// Percent of the traffic that goes to the hot cards.
    #[arg(long, value_name = "PCT", default_value_t = 90, requires = "hot_cards",
          value_parser = clap::value_parser!(u32).range(1..=100))]
    hot_share: u32,
    /// Requests each terminal keeps in flight (1 = one at a time, as a till).
    #[arg(long, value_name = "P", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=64))]
    pipeline: u32,
    /// Open loop: R requests per second in all (at most 1,000,000), sent on
    /// a fixed schedule rather than when answers arrive. Terminal i of N
    /// sends request k at (k*N + i)/R s into the window, so each sends
    /// every N/R s; it still keeps at most --pipeline in flight, and a
    /// request that comes due while the pipeline is full is sent as soon as
    /// a place frees and counted in late_sends. Latency is then measured
    /// from when each request was due, not when it was written (corrected
    /// for coordinated omission: a slow answer counts in every request it
    /// held back). The report adds the latency from the write (service_*),
    /// the generator's send lag and the requests never sent.
    #[arg(long, value_name = "R",
          value_parser = clap::value_parser!(u64).range(1..=MAX_RATE))]
    rate: Option<u64>,
    /// Most requests pre-signed in all (default: 40,000 per second of the
    /// window, at most 2,000,000). A terminal that uses up its share stops
    /// early, and the report says so.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=MAX_POOL))]
    max_requests: Option<u64>,
    /// Seconds to wait, after the window, for answers still in flight.
    #[arg(long, value_name = "SECS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=600))]
    drain_timeout: u64,
    /// Seed of the request plan (default: random; printed in the report).
    #[arg(long)]
    seed: Option<u64>,
    /// Write into a brand that holds records other than a bench's (a live
    /// brand, or a demo brand): without it the bench refuses, because
    /// everything it writes stays in the brand's signed ledger for good.
    #[arg(long)]
    into_live_brand: bool,
}

fn bar(len: u64, what: &str) -> ProgressBar {
    // indicatif draws on stderr only when it is a terminal.
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{msg:>12} [{bar:40}] {pos}/{len} ({per_sec}, {eta})")
            .expect("static template")
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

/// How many requests each terminal gets pre-signed.
fn pool_share(args: &BenchArgs) -> usize {
    if let (Some(rate), None) = (args.rate, args.max_requests) {
        // Open loop: exactly what the schedule asks for in the window (the
        // first terminals get one more than the rest when R·T does not
        // split evenly). The total was checked against MAX_POOL.
        let total = rate.saturating_mul(args.duration);
        let share = total.div_ceil(u64::from(args.terminals)).max(1);
        return usize::try_from(share).unwrap_or(usize::MAX);
    }
    let total = args.max_requests.unwrap_or_else(|| {
        args.duration
            .saturating_mul(DEFAULT_POOL_PER_SEC)
            .min(DEFAULT_POOL_CAP)
    });
    let per_terminal = total.div_ceil(u64::from(args.terminals));
    let per_slot = args
        .duration
        .saturating_mul(POOL_PER_SEC_PER_SLOT)
        .saturating_mul(u64::from(args.pipeline));
    let share = if args.max_requests.is_some() {
        per_terminal
    } else {
        per_terminal.min(per_slot)
    };
    usize::try_from(share.max(1)).unwrap_or(usize::MAX)
}

/// Runs the bench; prints the report on stdout (one JSON object with
/// `json`). Exit code 0: measured without errors; 2: measured, but some
/// requests were refused or got no answer; 1: could not run.
pub async fn run(
    addr: &str,
    tls: Option<&TlsClient>,
    json: bool,
    timeout_secs: u64,
    args: &BenchArgs,
) -> anyhow::Result<ExitCode> {
    let timeout = Duration::from_secs(timeout_secs);
    let hot = check_args(args)?;
    let seed = args.seed.unwrap_or_else(rand::random);
    let setup_started = std::time::Instant::now();
    if !args.into_live_brand {
        let key = read_key_file(&args.owner_key).context("--owner-key")?;
        scratch::refuse_live_brand(addr, tls, key, timeout).await?;
    }
    let mut owner = connect_owner(addr, tls, args, timeout_secs).await?;
    let amounts = Amounts::new(owner.session.currency_exponent).map_err(anyhow::Error::msg)?;

    // 1. The plan.
    let plans = make_plans(args, hot, amounts, seed).await?;
    let pool_requests: u64 = plans.iter().map(|p| p.ops.len() as u64).sum();
    let funding =
        Funding::for_plans(&plans, args.cards, 100 * amounts.unit()).map_err(anyhow::Error::msg)?;

    // 2. Owner provisioning.
    let pb = bar(0, "provisioning");
    let owned = provision::provision(&mut owner, args.terminals, args.cards, timeout, &pb)
        .await
        .context("provisioning")?;
    pb.finish_and_clear();
    let brand_id = owner.session.brand_id;
    drop(owner);

    // 3. Terminals sign on; cards are loaded; refund originals are made.
    let (terminals, prepared) =
        prepare_terminals(addr, tls, &owned, &plans, &funding, timeout).await?;
    let provision_secs = setup_started.elapsed().as_secs_f64();

    // 4. Sign every planned request, on every core, before the clock.
    let sign_started = std::time::Instant::now();
    let pools = sign_pools(&terminals, plans, &owned.cards, brand_id, pool_requests).await?;
    let sign_secs = sign_started.elapsed().as_secs_f64();

    // The measured window.
    let (results, cpu) = measure(addr, args, terminals, pools).await?;
    let report = Report::new(
        Params {
            terminals: args.terminals,
            duration_secs: args.duration,
            pipeline: args.pipeline,
            rate: args.rate,
            mix: args.mix,
            cards: args.cards,
            hot_cards: hot,
            hot_share: args.hot_share,
            pool_requests,
            seed,
        },
        Setup {
            brand_id,
            store_id: owned.store_id,
            store_name: owned.store_name.clone(),
            records: owned.records + prepared.fund_records + prepared.seed_records,
            purchase_minor: prepared.seed_minor,
            funded_minor: funding.per_card.iter().sum(),
            provision_secs,
            sign_secs,
        },
        results,
        cpu,
    );
    Ok(print_report(&report, json))
}

/// Checks what clap cannot: the hot cards fit in the cards, and an open
/// loop's pool fits in memory. Returns the number of hot cards.
fn check_args(args: &BenchArgs) -> anyhow::Result<u32> {
    let hot = args.hot_cards.unwrap_or(0);
    if hot > args.cards {
        bail!("--hot-cards {hot} is more than --cards {}", args.cards);
    }
    if let Some(rate) = args.rate {
        let total = rate.saturating_mul(args.duration);
        if args.max_requests.is_none() && total > MAX_POOL {
            bail!(
                "--rate {rate} for {} s needs {total} pre-signed requests, more than {MAX_POOL}: \
                 lower --rate or --duration",
                args.duration
            );
        }
    }
    Ok(hot)
}

/// Signs on with the owner key, and checks that the server allows the
/// pipeline asked for.
async fn connect_owner(
    addr: &str,
    tls: Option<&TlsClient>,
    args: &BenchArgs,
    timeout_secs: u64,
) -> anyhow::Result<AnyClient> {
    let owner_key = read_key_file(&args.owner_key).context("--owner-key")?;
    let timeout = Duration::from_secs(timeout_secs);
    let owner = match tokio::time::timeout(timeout, connect_to(addr, owner_key, tls)).await {
        Err(_) => bail!("connecting to {addr}: no sign-on within {timeout_secs}s"),
        Ok(Err(e)) => return Err(e.into()),
        Ok(Ok(c)) => c,
    };
    let max_in_flight = owner.session.max_in_flight;
    if max_in_flight > 0 && args.pipeline > max_in_flight {
        bail!(
            "--pipeline {} is more than the {max_in_flight} requests the server allows in flight",
            args.pipeline
        );
    }
    Ok(owner)
}

/// Every terminal's request plan, made off the runtime.
async fn make_plans(
    args: &BenchArgs,
    hot: u32,
    amounts: Amounts,
    seed: u64,
) -> anyhow::Result<Vec<TerminalPlan>> {
    let share = pool_share(args);
    let spread = Spread {
        cards: args.cards,
        hot,
        hot_share: args.hot_share,
    };
    let (mix, n) = (args.mix, args.terminals);
    Ok(tokio::task::spawn_blocking(move || {
        (0..n)
            .map(|i| plan_terminal(i, share, &mix, &spread, &amounts, seed))
            .collect()
    })
    .await?)
}

/// What the setup of step 3 wrote.
struct Prepared {
    fund_records: u64,
    seed_records: u64,
    seed_minor: i64,
}

/// Signs every terminal on, loads every card with what the plan will spend
/// from it, and makes the purchases that planned refunds refer to.
async fn prepare_terminals(
    addr: &str,
    tls: Option<&TlsClient>,
    owned: &provision::Owned,
    plans: &[TerminalPlan],
    funding: &Funding,
    timeout: Duration,
) -> anyhow::Result<(Vec<BenchTerminal>, Prepared)> {
    let pb = bar(owned.terminal_keys.len() as u64, "signing on");
    let mut terminals = provision::connect_all(
        addr,
        tls,
        &owned.terminal_keys,
        owned.store_id,
        timeout,
        &pb,
    )
    .await?;
    pb.finish_and_clear();
    let pb = bar(0, "loading cards");
    let fund_records = provision::fund(
        &mut terminals,
        &owned.cards,
        &funding.top_ups(),
        timeout,
        &pb,
    )
    .await
    .context("loading the cards")?;
    pb.finish_and_clear();
    let (seed_records, seed_minor) =
        provision::seed_purchases(&mut terminals, plans, &owned.cards, timeout)
            .await
            .context("setup purchases")?;
    let prepared = Prepared {
        fund_records,
        seed_records,
        seed_minor,
    };
    Ok((terminals, prepared))
}

/// Encodes and signs every planned request on every core, with a progress bar.
async fn sign_pools(
    terminals: &[BenchTerminal],
    plans: Vec<TerminalPlan>,
    cards: &[String],
    brand_id: u32,
    pool_requests: u64,
) -> anyhow::Result<Vec<Pool>> {
    let pb = bar(pool_requests, "signing");
    let signed = Arc::new(AtomicU64::new(0));
    let ticker = {
        let (pb, signed) = (pb.clone(), signed.clone());
        tokio::spawn(async move {
            loop {
                pb.set_position(signed.load(Ordering::Relaxed));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let keys: Vec<_> = terminals.iter().map(|t| t.client.key().clone()).collect();
    let firsts: Vec<u64> = terminals.iter().map(|t| t.next_txn).collect();
    let seeds: Vec<Vec<u64>> = terminals.iter().map(|t| t.seed_seqs.clone()).collect();
    let cards = cards.to_vec();
    let pools = tokio::task::spawn_blocking(move || {
        let specs: Vec<PoolSpec<'_>> = (0..plans.len())
            .map(|i| PoolSpec {
                key: &keys[i],
                brand_id,
                first_txn: firsts[i],
                ops: &plans[i].ops,
                seed_seqs: &seeds[i],
            })
            .collect();
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        sign_all(&specs, &cards, threads, &signed)
    })
    .await?;
    ticker.abort();
    pb.finish_and_clear();
    Ok(pools)
}

/// The measured window: every terminal drives its pool; returns each
/// terminal's result and the CPU time this process (and the daemon, when
/// it listens on this machine) used meanwhile.
async fn measure(
    addr: &str,
    args: &BenchArgs,
    terminals: Vec<BenchTerminal>,
    pools: Vec<Pool>,
) -> anyhow::Result<(Vec<TerminalResult>, CpuUse)> {
    let meter = CpuMeter::start(addr);
    let live = Arc::new(Live::default());
    let start = tokio::time::Instant::now() + Duration::from_millis(100);
    let window = Window {
        start,
        end: start + Duration::from_secs(args.duration),
        drain: Duration::from_secs(args.drain_timeout),
    };
    let handles: Vec<_> = terminals
        .into_iter()
        .zip(pools)
        .enumerate()
        .map(|(i, (t, pool))| {
            let pacer = args.rate.map(|rate| {
                let i = u32::try_from(i).expect("terminals are bounded");
                Pacer::new(Schedule::new(i, args.terminals, rate))
            });
            tokio::spawn(drive(
                t.client,
                pool,
                args.pipeline as usize,
                window,
                pacer,
                live.clone(),
            ))
        })
        .collect();
    let (progress, ticker) = window_progress(args.duration, start, live);
    let mut results = Vec::with_capacity(handles.len());
    for h in handles {
        results.push(h.await.context("a terminal task failed")?);
    }
    ticker.abort();
    progress.finish_and_clear();
    Ok((results, meter.finish()))
}

/// A progress bar over the window with the live counts, and its ticker.
fn window_progress(
    duration: u64,
    start: tokio::time::Instant,
    live: Arc<Live>,
) -> (ProgressBar, tokio::task::JoinHandle<()>) {
    let progress = ProgressBar::new(duration);
    progress.set_style(
        ProgressStyle::with_template("{spinner} [{bar:40}] {pos}/{len} s  {msg}")
            .expect("static template")
            .progress_chars("=> "),
    );
    let pb = progress.clone();
    let ticker = tokio::spawn(async move {
        tokio::time::sleep_until(start).await;
        loop {
            let secs = start.elapsed().as_secs_f64();
            let ok = live.ok.load(Ordering::Relaxed);
            let errors = live.errors.load(Ordering::Relaxed);
            pb.set_position(secs as u64);
            pb.set_message(format!(
                "{ok} ok, {:.0} ops/s, {errors} errors",
                ok as f64 / secs.max(0.001)
            ));
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    (progress, ticker)
}

/// Prints the report (JSON on stdout with warnings on stderr, or text);
/// exit code 2 when some requests were refused or got no answer.
fn print_report(report: &Report, json: bool) -> ExitCode {
    if json {
        outln!("{}", report.to_json());
        for w in report.warnings() {
            eprintln!("{w}");
        }
    } else {
        outln!("{}", report.to_text());
    }
    if report.error_count() > 0 {
        ExitCode::from(EXIT_REFUSED)
    } else {
        ExitCode::SUCCESS
    }
}
