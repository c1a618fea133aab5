//! The `cardd audit` commands: export, verify, consistency. Progress bars,
//! printing and exit codes live here, in the binary; the library's `audit`
//! module only computes.
use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use prost::Message;

use cardd::audit::{verify_export, ExportReader, VerifyOptions, VerifyReport};
use cardd::client::{connect_to, TlsClient};
use cardd::crypto::{leaf_hash, read_key_file};
use cardd::merkle::{consistency_proof, verify_consistency, MemoryTree};
use cardd::pb::{self, export_item::Item, request::Op};

use super::current_thread_runtime;
use crate::AuditCommand;

fn bar(len: u64, what: &str) -> ProgressBar {
    // indicatif draws on stderr only when it is a terminal.
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({per_sec}, {eta})")
            .expect("static template")
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

/// Parses a server key given in hex.
pub fn parse_server_key(hex_key: &str) -> anyhow::Result<[u8; 32]> {
    let bytes = hex::decode(hex_key.trim()).context("server key is not hex")?;
    let key: [u8; 32] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| anyhow::anyhow!("server key must be 32 bytes"))?;
    cardd::crypto::parse_public_key(&key)
        .ok_or_else(|| anyhow::anyhow!("server key is not a valid ed25519 key"))?;
    Ok(key)
}

/// Reads a checkpoint file (an encoded `Checkpoint`).
pub fn read_checkpoint(path: &Path) -> anyhow::Result<pb::Checkpoint> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    pb::Checkpoint::decode(bytes.as_slice())
        .with_context(|| format!("{} is not a checkpoint", path.display()))
}

fn checkpoint_signed(c: &pb::Checkpoint, server_key: &[u8; 32]) -> bool {
    cardd::crypto::parse_public_key(server_key)
        .is_some_and(|k| cardd::checkpoint::verify(c, &k, None).is_ok())
}

/// `cardd audit export --data DIR --brand ID --out FILE` (daemon stopped).
pub fn export_offline(data: &Path, brand: u32, out: &Path) -> anyhow::Result<()> {
    let server_key = cardd::server::open_existing_data_dir(data)?;
    let store = cardd::storage::DiskStore::open_existing(data)
        .with_context(|| format!("opening the ledger in {}", data.display()))?;
    let mut next = ExportOut::create(out)?;
    let mut file = BufWriter::new(next.file());
    let pb = bar(0, "exporting");
    let summary = cardd::audit::write_export(
        &store,
        brand,
        &server_key.verifying_key().to_bytes(),
        &mut file,
        |done, total| {
            pb.set_length(total);
            pb.set_position(done);
        },
    )?;
    file.into_inner().map_err(|e| e.into_error())?;
    next.finish(out)?;
    pb.finish_and_clear();
    eprintln!(
        "exported {} records and {} checkpoints to {}",
        summary.records,
        summary.checkpoints,
        out.display()
    );
    Ok(())
}

/// `cardd audit export --connect ADDR --key OWNER_KEY --out FILE`.
pub async fn export_online(
    addr: &str,
    owner_key: &Path,
    out: &Path,
    tls: Option<&TlsClient>,
) -> anyhow::Result<()> {
    let key = read_key_file(owner_key)?;
    let mut client = connect_to(addr, key, tls).await?;
    let mut next = ExportOut::create(out)?;
    let mut file = BufWriter::new(next.file());
    let pb = ProgressBar::new_spinner();
    pb.set_message("receiving export");
    let bytes = client
        .export(&mut ProgressWriter {
            inner: &mut file,
            pb: &pb,
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    file.into_inner().map_err(|e| e.into_error())?;
    next.finish(out)?;
    pb.finish_and_clear();
    eprintln!("exported {bytes} bytes to {}", out.display());
    Ok(())
}

/// Where an export is written: beside `out`, readable by its owner only
/// (it holds every card number and balance, as a backup does), and put in
/// `out`'s place only once complete, so a failed export leaves the
/// previous file as it was. An `out` that exists and is not a regular file
/// (`/dev/stdout`, a pipe, a link a script set up) is written through.
enum ExportOut {
    Replace(cardd::storage::fsutil::Replacement),
    Through(File),
}

impl ExportOut {
    fn create(out: &Path) -> anyhow::Result<Self> {
        let through = std::fs::symlink_metadata(out).is_ok_and(|m| !m.file_type().is_file());
        if through {
            let file = std::fs::OpenOptions::new().write(true).open(out);
            return Ok(ExportOut::Through(
                file.with_context(|| format!("opening {}", out.display()))?,
            ));
        }
        let next = cardd::storage::fsutil::Replacement::create(out, true)
            .with_context(|| format!("creating {}.tmp", out.display()))?;
        Ok(ExportOut::Replace(next))
    }

    fn file(&mut self) -> &mut File {
        match self {
            ExportOut::Replace(next) => next.file(),
            ExportOut::Through(file) => file,
        }
    }

    fn finish(self, out: &Path) -> anyhow::Result<()> {
        match self {
            ExportOut::Replace(next) => next.commit(),
            ExportOut::Through(mut file) => std::io::Write::flush(&mut file),
        }
        .with_context(|| format!("writing {}", out.display()))
    }
}

struct ProgressWriter<'a, W> {
    inner: &'a mut W,
    pb: &'a ProgressBar,
}

impl<W: Write> Write for ProgressWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.pb.inc(buf.len() as u64);
        self.inner.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// `cardd audit verify FILE --server-key HEX`: verifies and replays, then
/// prints the report. Returns the report (for comparison with a live daemon).
pub fn verify_file(
    file: &Path,
    server_key: [u8; 32],
    old_checkpoint: Option<&Path>,
) -> anyhow::Result<VerifyReport> {
    let old_checkpoint = old_checkpoint.map(read_checkpoint).transpose()?;
    let f = File::open(file).with_context(|| format!("opening {}", file.display()))?;
    let len = f.metadata()?.len();
    let pb = bar(len, "verifying");
    let opts = VerifyOptions {
        server_key,
        old_checkpoint,
    };
    let report = verify_export(BufReader::with_capacity(1 << 20, f), &opts, |done| {
        pb.set_position(done)
    });
    pb.finish_and_clear();
    report.map_err(|e| {
        super::Failure {
            code: "VERIFY_FAILED",
            message: format!("VERIFY FAILED: {e}"),
        }
        .into()
    })
}

/// Prints a verification report as one JSON object (every card in it), or
/// as text: a summary, and one line per card only when `cards` asks (a
/// brand of 2,000 cards would print 2,000 lines).
pub fn print_report(r: &VerifyReport, json: bool, cards: bool) {
    let exponent = r.currency_exponent;
    if json {
        outln!("{}", serde_json::to_string(r).expect("report serializes"));
        return;
    }
    let amt =
        |v: i128| cardd::render::format_amount(i64::try_from(v).unwrap_or(i64::MAX), exponent);
    outln!(
        "brand {} ({}): {} records, {} checkpoints verified and replayed",
        r.brand_id,
        r.brand_name,
        r.records,
        r.checkpoints
    );
    outln!("root {}", r.root_hash);
    // The header and trailer are not signed: a file cut at an older
    // checkpoint verifies too, so say how far the signatures reach.
    outln!(
        "signed through {} (the newest checkpoint; nothing after it is proven: --compare or a \
         checkpoint saved from the daemon shows whether the export is whole)",
        cardd::render::utc_time(r.signed_through_ms)
    );
    if let Some(ok) = r.extends_old_checkpoint {
        outln!(
            "extends the old checkpoint: {}",
            if ok { "yes" } else { "NO" }
        );
    }
    if cards {
        print_cards(r, &amt);
    } else {
        let count = |status: &str| r.cards.iter().filter(|c| c.status == status).count();
        outln!(
            "cards              {} ({} active, {} blocked, {} replaced; --cards lists them)",
            r.cards.len(),
            count("ACTIVE"),
            count("BLOCKED"),
            count("REPLACED")
        );
    }
    let t = &r.totals;
    let with_currency = |v: i128| format!("{} {}", amt(v), r.currency);
    for (label, value) in [
        ("loaded (paid)", t.loaded_paid_minor),
        ("  of which discount", t.discount_minor),
        ("bonus granted", t.bonus_granted_minor),
        ("spent", t.spent_minor),
        ("refunded", t.refunded_minor),
        ("reversals (net)", t.reversed_net_minor),
        ("outstanding paid", t.outstanding_paid_minor),
        ("outstanding bonus", t.outstanding_bonus_minor),
    ] {
        outln!("{label:<20}{:>24}", with_currency(value));
    }
    print_books(r);
}

/// One line per card of a report.
fn print_cards(r: &VerifyReport, amt: &dyn Fn(i128) -> String) {
    outln!(
        "{:<20} {:<9} {:>14} {:>14} {:>10} tier",
        "card",
        "status",
        "paid",
        "bonus",
        "points"
    );
    for c in &r.cards {
        outln!(
            "{:<20} {:<9} {:>14} {:>14} {:>10} {}",
            c.card,
            c.status,
            amt(i128::from(c.paid_minor)),
            amt(i128::from(c.bonus_minor)),
            c.points,
            c.tier
        );
    }
}

/// Liability by store of issue and settlement between stores, as the
/// daemon's `admin report liability` and `settlement` print them.
fn print_books(r: &VerifyReport) {
    let amt = |v: i64| cardd::render::format_amount(v, r.currency_exponent);
    outln!("liability by store of issue");
    outln!("{:>8} {:>14} {:>14}", "store", "paid", "bonus");
    for l in &r.liability {
        outln!(
            "{:>8} {:>14} {:>14}",
            l.store_id,
            amt(l.paid_minor),
            amt(l.bonus_minor)
        );
    }
    outln!(
        "settlement {} to {} (from_store owes to_store)",
        r.books_from,
        r.books_to
    );
    outln!(
        "{:>10} {:>10} {:>14} {:>14}",
        "from_store",
        "to_store",
        "paid",
        "bonus"
    );
    for o in &r.settlement {
        outln!(
            "{:>10} {:>10} {:>14} {:>14}",
            o.from_store,
            o.to_store,
            amt(o.paid_minor),
            amt(o.bonus_minor)
        );
    }
}

/// Compares a verified report with what a live daemon reports for every
/// card (owner inquiries). Returns the differences.
pub async fn compare_live(
    r: &VerifyReport,
    addr: &str,
    owner_key: &Path,
    tls: Option<&TlsClient>,
) -> anyhow::Result<Vec<String>> {
    let key = read_key_file(owner_key)?;
    let mut client = connect_to(addr, key, tls).await?;
    if client.session.brand_id != r.brand_id {
        bail!(
            "the owner key is for brand {}, the export is brand {}",
            client.session.brand_id,
            r.brand_id
        );
    }
    let mut diffs = Vec::new();
    for c in &r.cards {
        let req = client.request(
            0,
            Op::Inquiry(pb::Inquiry {
                card: c.card.clone(),
            }),
        );
        let live = client
            .call(&req)
            .await
            .map_err(|e| anyhow::anyhow!("inquiry of {}: {e}", c.card))?;
        let v = live.card.unwrap_or_default();
        let status = pb::CardStatus::try_from(v.status).map_or("UNKNOWN", |s| s.as_str_name());
        if (
            v.paid_balance_minor,
            v.bonus_balance_minor,
            v.points,
            v.tier.as_str(),
            status,
        ) != (
            c.paid_minor,
            c.bonus_minor,
            c.points,
            c.tier.as_str(),
            c.status.as_str(),
        ) {
            diffs.push(format!(
                "{}: replayed paid {} bonus {} points {} {} {}; live paid {} bonus {} points {} {} {}",
                c.card, c.paid_minor, c.bonus_minor, c.points, c.tier, c.status,
                v.paid_balance_minor, v.bonus_balance_minor, v.points, v.tier, status
            ));
        }
    }
    diffs.extend(compare_books(r, &mut client).await?);
    Ok(diffs)
}

/// Compares the replayed liability by store of issue and settlement with
/// the live daemon's `report liability` and `report settlement` over the
/// same days.
async fn compare_books(
    r: &VerifyReport,
    client: &mut cardd::client::AnyClient,
) -> anyhow::Result<Vec<String>> {
    let ask = |kind: &str| {
        let req = pb::GetReport {
            kind: kind.into(),
            from: r.books_from.clone(),
            to: r.books_to.clone(),
            ..Default::default()
        };
        client.request(0, Op::Report(req))
    };
    let (liability, settlement) = (ask("liability"), ask("settlement"));
    let mut diffs = Vec::new();
    let live = client
        .call(&liability)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let rows = report_rows(live.report.as_ref(), 3);
    let replayed: Vec<Vec<i64>> = r
        .liability
        .iter()
        .map(|l| vec![i64::from(l.store_id), l.paid_minor, l.bonus_minor])
        .collect();
    if rows != replayed {
        diffs.push(format!("liability: replayed {replayed:?}; live {rows:?}"));
    }
    let live = client
        .call(&settlement)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let rows = report_rows(live.report.as_ref(), 4);
    let replayed: Vec<Vec<i64>> = r
        .settlement
        .iter()
        .map(|o| {
            vec![
                i64::from(o.from_store),
                i64::from(o.to_store),
                o.paid_minor,
                o.bonus_minor,
            ]
        })
        .collect();
    if rows != replayed {
        diffs.push(format!("settlement: replayed {replayed:?}; live {rows:?}"));
    }
    Ok(diffs)
}

/// The first `n` integer cells of each row of a report's first section.
fn report_rows(report: Option<&pb::Report>, n: usize) -> Vec<Vec<i64>> {
    let rows = report
        .and_then(|r| r.sections.first())
        .map_or(&[][..], |s| &s.rows);
    rows.iter()
        .map(|row| {
            let cells = row.cells.iter().take(n);
            cells
                .map(|c| match c.value {
                    Some(pb::report_cell::Value::Int(i)) => i,
                    _ => 0,
                })
                .collect()
        })
        .collect()
}

/// `cardd audit consistency OLD NEW`: proves with an RFC 9162 consistency
/// proof that the tree of checkpoint NEW extends the tree of checkpoint OLD.
/// The proof comes from an export file (computed from its records) or from a
/// live daemon; either way it is checked here against both signed heads.
pub async fn consistency(
    old: &Path,
    new: &Path,
    server_key: [u8; 32],
    export: Option<&Path>,
    live: Option<(&str, &Path)>,
    tls: Option<&TlsClient>,
) -> anyhow::Result<()> {
    let old = read_checkpoint(old)?;
    let new = read_checkpoint(new)?;
    for (name, c) in [("old", &old), ("new", &new)] {
        if !checkpoint_signed(c, &server_key) {
            // Both heads are checked against the one key given; a rotation
            // between them is followed only by a full replay.
            bail!(
                "the {name} checkpoint's server signature does not verify with this key (if the \
                 server key was rotated since the old checkpoint, `cardd audit verify EXPORT \
                 --old-checkpoint OLD` follows the rotations in the chain)"
            );
        }
    }
    if old.brand_id != new.brand_id {
        bail!("the checkpoints are of different brands");
    }
    if old.tree_size == 0 || old.tree_size > new.tree_size {
        bail!(
            "the old tree (size {}) cannot be extended by the new (size {})",
            old.tree_size,
            new.tree_size
        );
    }
    let path: Vec<[u8; 32]> = match (export, live) {
        (Some(file), None) => proof_from_export(file, old.tree_size, new.tree_size)?,
        (None, Some((addr, key))) => {
            let mut client = connect_to(addr, read_key_file(key)?, tls).await?;
            let p = client
                .consistency_proof(old.tree_size, new.tree_size)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            p.path
                .iter()
                .map(|h| {
                    <[u8; 32]>::try_from(h.as_slice())
                        .map_err(|_| anyhow::anyhow!("proof hash is not 32 bytes"))
                })
                .collect::<anyhow::Result<_>>()?
        }
        _ => bail!("give --export FILE or --connect ADDR --key OWNER_KEY"),
    };
    let root = |c: &pb::Checkpoint| <[u8; 32]>::try_from(c.root_hash.as_slice()).unwrap_or([0; 32]);
    if !verify_consistency(
        old.tree_size,
        new.tree_size,
        &root(&old),
        &root(&new),
        &path,
    ) {
        bail!(
            "INCONSISTENT: the tree of size {} is not an extension of the tree of size {} (history rewritten or forked)",
            new.tree_size,
            old.tree_size
        );
    }
    outln!(
        "consistent: the tree of size {} extends the tree of size {}",
        new.tree_size,
        old.tree_size
    );
    Ok(())
}

/// Computes a consistency proof from the records in an export file.
fn proof_from_export(file: &Path, old: u64, new: u64) -> anyhow::Result<Vec<[u8; 32]>> {
    let f = File::open(file).with_context(|| format!("opening {}", file.display()))?;
    let mut reader = ExportReader::new(BufReader::new(f)).map_err(|e| anyhow::anyhow!(e))?;
    let mut tree = MemoryTree::default();
    while let Some(item) = reader.next_item().map_err(|e| anyhow::anyhow!(e))? {
        if let Item::Record(bytes) = item {
            if tree.size() == new {
                break;
            }
            tree.push(leaf_hash(&bytes));
        }
    }
    if tree.size() < new {
        bail!("the export holds {} records, fewer than {new}", tree.size());
    }
    consistency_proof(&tree, old, new).map_err(|e| anyhow::anyhow!(e))
}

/// Writes `c` to `path` (for `--save-checkpoint`).
pub fn save_checkpoint(c: &pb::Checkpoint, path: &Path) -> anyhow::Result<()> {
    std::fs::write(path, c.encode_to_vec()).with_context(|| format!("writing {}", path.display()))
}

/// Runs one `cardd audit` command; the exit code is 3 when `--compare`
/// finds cards that differ from the live daemon.
pub fn run(command: AuditCommand, tls: Option<&TlsClient>) -> anyhow::Result<ExitCode> {
    match command {
        AuditCommand::Export {
            connect,
            key,
            data,
            brand,
            out,
        } => match (connect, key, data, brand) {
            (Some(addr), Some(key), None, None) => {
                current_thread_runtime()?.block_on(export_online(&addr, &key, &out, tls))?
            }
            (None, None, Some(data), Some(brand)) => export_offline(&data, brand, &out)?,
            _ => bail!("give --connect ADDR --key OWNER_KEY, or --data DIR --brand ID"),
        },
        AuditCommand::Verify {
            file,
            server_key,
            json,
            cards,
            old_checkpoint,
            save_checkpoint: save,
            compare,
            key,
        } => {
            let report = verify_file(
                &file,
                parse_server_key(&server_key)?,
                old_checkpoint.as_deref(),
            )?;
            print_report(&report, json, cards);
            if let (Some(path), Some(c)) = (save, &report.last_checkpoint) {
                save_checkpoint(c, &path)?;
            }
            if let (Some(addr), Some(key)) = (compare, key) {
                return compare_and_print(&report, &addr, &key, tls);
            }
        }
        AuditCommand::Consistency {
            old,
            new,
            server_key,
            export,
            connect,
            key,
        } => {
            let server_key = parse_server_key(&server_key)?;
            let live = connect.as_deref().zip(key.as_deref());
            current_thread_runtime()?.block_on(consistency(
                &old,
                &new,
                server_key,
                export.as_deref(),
                live,
                tls,
            ))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `--compare`: prints each card that differs from the live daemon; exit
/// code 3 when any does.
fn compare_and_print(
    report: &VerifyReport,
    addr: &str,
    key: &Path,
    tls: Option<&TlsClient>,
) -> anyhow::Result<ExitCode> {
    let diffs = current_thread_runtime()?.block_on(compare_live(report, addr, key, tls))?;
    for d in &diffs {
        eprintln!("DIFFERS: {d}");
    }
    if !diffs.is_empty() {
        eprintln!("{} cards or books differ from the live daemon", diffs.len());
        return Ok(ExitCode::from(3));
    }
    eprintln!(
        "all {} cards match the live daemon (and its liability and settlement)",
        report.cards.len()
    );
    Ok(ExitCode::SUCCESS)
}
