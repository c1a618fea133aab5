//! Incremental snapshots: a brand's state spread over a rolling window of
//! `WINDOW` part files, so that no snapshot ever encodes or writes the
//! whole state while the brand serves.
//!
//! `DATA/snapshots/brand-<id>.parts/<generation>-<index>.part`, each framed
//! and signed as a whole snapshot is (`mod.rs`, magic `CARDDSP1`), holding:
//! its place (brand, generation, index, window, the sequence number it is
//! at and the one its predecessor was at), the small rest of the state
//! whole, the entities that **changed** since its predecessor (their
//! values at its sequence number) and the entities it **carried** over
//! from the part leaving the window.
//!
//! A generation starts with `WINDOW` slices of one state (indexes 1 to
//! `WINDOW`, every entity in exactly one). Each later part `i` holds what
//! changed, plus whatever of part `i - WINDOW` no newer part holds (its
//! newest copy is about to leave the window); then part `i - WINDOW` is
//! deleted. So every entity of the state lives in one of the newest
//! `WINDOW` parts, and its newest copy there is its value now (a later
//! change would have put it in a later part). Recovery merges the window
//! oldest first, the newest copy of each entity winning, and takes the
//! rest of the state from the newest part. A part costs what changed
//! plus a `WINDOW`th of the state; a start reads the state once plus
//! `WINDOW` deltas.
//!
//! The layout of a part (`Place`, `Part`, `Entities`) is named by the same
//! `FORMAT` as the whole-state file: change one, bump it (the test
//! `the_encoding_of_a_part_is_pinned` fails until then).
//!
//! A part is written only once its records are durable (a crash cannot
//! leave a window ahead of the log). A generation is written from the
//! applier's state, which may be ahead of the log: it replaces the older
//! files only once its record is durable (`job::Settle`), and a start
//! passes over a generation whose record the log does not hold. Any gap,
//! failed signature or mismatch makes a window unusable; recovery then
//! takes the next older usable window, a newer whole-state file, or
//! replays the whole chain.
use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use super::{consistent, ensure, io, peek, read_file, seal, unseal, OnLog, Result, SnapshotError};
use crate::state::delta::{Delta, Entities, Keys};
use crate::state::{BrandState, Effects, FastMap};
use crate::storage::fsutil::{create_dir_all_durable, replace_durably};

/// Parts a brand's state is spread over.
pub const WINDOW: u64 = 8;

/// The most entries of one map a start reserves room for ahead.
const ROOM_LIMIT: u64 = 1 << 26;

const MAGIC: &[u8; 8] = b"CARDDSP1";

/// Where one part sits in its brand's snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Place {
    brand: u32,
    generation: u64,
    index: u64,
    window: u64,
    /// The state's sequence number and head hash at this part.
    seq: u64,
    head_hash: [u8; 32],
    /// The predecessor's sequence number and head hash (its own for a
    /// generation's first parts).
    prev_seq: u64,
    prev_head_hash: [u8; 32],
    /// The whole state's cards, refundable records, index entries and
    /// windows at this part: the room a start reserves.
    sizes: [u64; 4],
    /// Drawn at random for each generation: a part of another generation
    /// under the same number (a forked writer orphaned by a crash, say)
    /// never passes for one of this.
    nonce: u64,
}

/// One part file's body.
#[derive(Debug, Serialize, Deserialize)]
struct Part {
    place: Place,
    rest: BrandState,
    changed: Entities,
    carried: Entities,
}

/// A brand's window of parts as last written or read: what the next part
/// needs to know.
#[derive(Debug, Clone)]
pub struct Chain {
    dir: PathBuf,
    brand: u32,
    generation: u64,
    nonce: u64,
    /// The newest part's head hash.
    head_hash: [u8; 32],
    /// The newest part's index and sequence number.
    index: u64,
    seq: u64,
    /// The keys each part of the window changed, oldest first
    /// (`WINDOW` of them).
    changed: VecDeque<Keys>,
    /// Read at a start, no part written since: the next part also deletes
    /// every other generation's files (older ones it replaces; newer ones
    /// were passed over, past the log's end) and the whole-state file.
    recovered: bool,
}

/// The directory of a brand's parts.
pub fn brand_dir(dir: &Path, brand: u32) -> PathBuf {
    dir.join(format!("brand-{brand}.parts"))
}

fn part_path(dir: &Path, brand: u32, generation: u64, index: u64) -> PathBuf {
    brand_dir(dir, brand).join(format!("{generation:020}-{index:020}.part"))
}

/// The (generation, index) of every part file of the brand, sorted.
fn listed(dir: &Path, brand: u32) -> Result<Vec<(u64, u64)>> {
    let bdir = brand_dir(dir, brand);
    let entries = match std::fs::read_dir(&bdir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(format!("listing {}", bdir.display()))(e)),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io(format!("listing {}", bdir.display())))?;
        let name = entry.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".part")) else {
            continue;
        };
        if let Some((g, i)) = stem.split_once('-') {
            if let (Ok(g), Ok(i)) = (g.parse(), i.parse()) {
                found.push((g, i));
            }
        }
    }
    found.sort_unstable();
    Ok(found)
}

/// The generation a new one should take: above every one on disk.
pub fn next_generation(dir: &Path, brand: u32) -> Result<u64> {
    let on_disk = listed(dir, brand)?.last().map_or(0, |(g, _)| *g);
    // Numbers handed out in this process too: a child may not have made
    // the first file of its generation yet when another writer of the
    // brand here (a follower, after the lease went) asks.
    Ok(with_brand_files(dir, brand, |files| {
        files.handed_out = files.handed_out.max(on_disk) + 1;
        files.handed_out
    }))
}

/// The lock on a brand's snapshot files in this process: whoever writes
/// or deletes them (a part, a generation settling) or reads them for a
/// start holds it, and a writer checks there that its brand still serves
/// here. Two writers of one brand meet only on a replicated node whose
/// writer stopped (its lease lost) while a follower took the brand up
/// from the same files; without it, the stopped writer's part could land
/// over the follower's window.
pub fn files_lock(dir: &Path, brand: u32) -> std::sync::Arc<std::sync::Mutex<()>> {
    with_brand_files(dir, brand, |files| files.lock.clone())
}

/// What this process keeps about one brand's snapshot files.
#[derive(Default)]
struct BrandFiles {
    /// Held while the files are written, deleted, or read for a start.
    lock: std::sync::Arc<std::sync::Mutex<()>>,
    /// The newest generation number handed out in this process.
    handed_out: u64,
}

/// Runs `f` on the process's record of `brand`'s files under `dir`.
fn with_brand_files<T>(dir: &Path, brand: u32, f: impl FnOnce(&mut BrandFiles) -> T) -> T {
    static BRAND_FILES: std::sync::Mutex<std::collections::BTreeMap<(PathBuf, u32), BrandFiles>> =
        std::sync::Mutex::new(std::collections::BTreeMap::new());
    let mut all = BRAND_FILES.lock().unwrap_or_else(|e| e.into_inner());
    f(all.entry((dir.to_path_buf(), brand)).or_default())
}

fn write_part(dir: &Path, part: &Part, key: &SigningKey) -> Result<u64> {
    let p = part.place;
    let bytes = seal(MAGIC, part, key)?;
    let bdir = brand_dir(dir, p.brand);
    create_dir_all_durable(&bdir).map_err(io(format!("creating {}", bdir.display())))?;
    let path = part_path(dir, p.brand, p.generation, p.index);
    replace_durably(&path, &bytes, true).map_err(io(format!("writing {}", path.display())))?;
    Ok(bytes.len() as u64)
}

/// Writes `state` as a new generation of `WINDOW` slices under
/// `generation` (from [`next_generation`]), then deletes every older file
/// of the brand's snapshots. Returns the chain that the next parts follow.
/// For a state the log already holds (tests, tools); the live writer's
/// state may be ahead of the log (`job::GenerationJob`).
pub fn write_generation(
    dir: &Path,
    state: &BrandState,
    key: &SigningKey,
    generation: u64,
) -> Result<Chain> {
    let chain = write_generation_as(state, key, Chain::after_generation(dir, state, generation))?;
    chain.replace_older()?;
    Ok(chain)
}

/// Writes the slices of the generation `chain` (from
/// [`Chain::after_generation`] of this state) starts; the older files stay
/// (see [`Chain::replace_older`]).
pub fn write_generation_as(state: &BrandState, key: &SigningKey, chain: Chain) -> Result<Chain> {
    assert_eq!(
        (chain.seq, chain.index),
        (state.seq, WINDOW),
        "a new generation"
    );
    let (dir, generation) = (chain.dir.clone(), chain.generation);
    let dir = dir.as_path();
    let rest = state.rest();
    for index in 1..=WINDOW {
        let part = Part {
            place: Place {
                brand: state.brand_id,
                generation,
                index,
                window: WINDOW,
                seq: state.seq,
                head_hash: state.head_hash,
                prev_seq: state.seq,
                prev_head_hash: state.head_hash,
                sizes: state.sizes(),
                nonce: chain.nonce,
            },
            rest: rest.clone(),
            changed: Entities::default(),
            carried: state.slice(index - 1, WINDOW),
        };
        write_part(dir, &part, key)?;
    }
    Ok(chain)
}

impl Chain {
    /// The chain a generation of `state` starts, with its nonce drawn
    /// here: the generation is written with this chain's nonce (by
    /// [`write_generation`], or by a forked child given a copy of it).
    pub fn after_generation(dir: &Path, state: &BrandState, generation: u64) -> Chain {
        Chain {
            dir: dir.to_path_buf(),
            brand: state.brand_id,
            generation,
            nonce: rand::random(),
            head_hash: state.head_hash,
            index: WINDOW,
            seq: state.seq,
            changed: (0..WINDOW).map(|_| Keys::default()).collect(),
            recovered: false,
        }
    }

    /// The snapshot directory the chain's files are in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The newest part's sequence number.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Writes the next part from `delta` (what changed since this chain's
    /// newest part, taken at its sequence number), carrying over what
    /// only the part leaving the window holds, then deletes that part.
    /// Returns the part's size in bytes.
    pub fn write_next(&mut self, delta: Delta, key: &SigningKey) -> Result<u64> {
        let leaving = self.index + 1 - WINDOW;
        let old = self.read_own(leaving, &key.verifying_key())?;
        let (rest, sizes, changed) = delta.into_parts();
        let changed_keys = changed.keys();
        let newer: Vec<&Keys> = self.changed.iter().skip(1).chain([&changed_keys]).collect();
        let carried = carry(old, &newer, rest.effects.forgotten_up_to());
        let part = Part {
            place: Place {
                brand: self.brand,
                generation: self.generation,
                index: self.index + 1,
                window: WINDOW,
                seq: rest.seq,
                head_hash: rest.head_hash,
                prev_seq: self.seq,
                prev_head_hash: self.head_hash,
                sizes,
                nonce: self.nonce,
            },
            rest,
            changed,
            carried,
        };
        let size = write_part(&self.dir, &part, key)?;
        (self.index, self.seq, self.head_hash) =
            (part.place.index, part.place.seq, part.place.head_hash);
        self.changed.pop_front();
        self.changed.push_back(changed_keys);
        // The leaving part, and any a crash left behind before it.
        for (g, i) in listed(&self.dir, self.brand)? {
            if g == self.generation && i <= leaving {
                let path = part_path(&self.dir, self.brand, g, i);
                std::fs::remove_file(&path).map_err(io(format!("deleting {}", path.display())))?;
            }
        }
        if std::mem::take(&mut self.recovered) {
            if let Err(e) = self.remove_files(|g| g != self.generation) {
                // The part stands; the files go with the next generation.
                let (brand, error) = (self.brand, crate::error::causes(&e));
                tracing::warn!(brand, error, "other snapshot generations not deleted");
            }
        }
        Ok(size)
    }

    fn read_own(&self, index: u64, key: &VerifyingKey) -> Result<Part> {
        let path = part_path(&self.dir, self.brand, self.generation, index);
        let bytes = read_file(&path)?
            .ok_or_else(|| SnapshotError::Invalid(format!("part {} is missing", path.display())))?;
        let part: Part = unseal(MAGIC, &bytes, key)?;
        let p = part.place;
        ensure(
            p.brand == self.brand && p.generation == self.generation && p.index == index,
            || format!("part {} is not where it was written", path.display()),
        )?;
        ensure(p.nonce == self.nonce, || {
            format!("part {} is of another generation", path.display())
        })?;
        Ok(part)
    }

    /// Whether every slice of this chain's generation is its own (its
    /// nonce): a forked child whose daemon died may still be writing a
    /// generation under the same number, and a mixed one must not replace
    /// anything.
    pub fn own_generation(&self) -> Result<()> {
        for index in 1..=WINDOW {
            let place = peek_place(&self.dir, self.brand, self.generation, index);
            ensure(place.is_some_and(|p| p.nonce == self.nonce), || {
                format!(
                    "slice {index} of generation {} is not this writer's",
                    self.generation
                )
            })?;
        }
        Ok(())
    }

    /// Deletes every snapshot file of the brand older than this chain's
    /// generation, and the whole-state file: the generation replaces them
    /// (once the log holds its record: until then they are what a start
    /// falls back to).
    pub fn replace_older(&self) -> Result<()> {
        self.remove_files(|g| g < self.generation)
    }

    /// Deletes the brand's part files of the generations `doomed` names,
    /// temporary files and the whole-state file.
    fn remove_files(&self, doomed: impl Fn(u64) -> bool) -> Result<()> {
        for (g, i) in listed(&self.dir, self.brand)? {
            if doomed(g) {
                let path = part_path(&self.dir, self.brand, g, i);
                std::fs::remove_file(&path).map_err(io(format!("deleting {}", path.display())))?;
            }
        }
        // Temporary files of writes a crash cut short.
        let bdir = brand_dir(&self.dir, self.brand);
        for entry in std::fs::read_dir(&bdir).map_err(io(format!("listing {}", bdir.display())))? {
            let path = entry
                .map_err(io(format!("listing {}", bdir.display())))?
                .path();
            if path.extension().is_some_and(|e| e == "tmp") {
                std::fs::remove_file(&path).map_err(io(format!("deleting {}", path.display())))?;
            }
        }
        let whole = super::path(&self.dir, self.brand);
        match std::fs::remove_file(&whole) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(io(format!("deleting {}", whole.display()))(e))
            }
            _ => Ok(()),
        }
    }
}

/// What of the leaving part `old` no newer part holds: its entities whose
/// keys are in none of `newer`, less the refundable records forgotten
/// since (at or below `forgotten_up_to`) and removal marks (nothing older
/// is kept for them to hide).
fn carry(old: Part, newer: &[&Keys], forgotten_up_to: u64) -> Entities {
    let held = |f: &dyn Fn(&Keys) -> bool| newer.iter().any(|k| f(k));
    let mut out = Entities::default();
    for e in [old.carried, old.changed] {
        out.cards
            .extend((e.cards.into_iter()).filter(|(k, _)| !held(&|n: &Keys| n.cards.contains(k))));
        out.effects.extend(
            e.effects
                .into_iter()
                .filter(|(s, _)| *s > forgotten_up_to && !held(&|n: &Keys| n.effects.contains(s))),
        );
        out.txns.extend(
            e.txns
                .into_iter()
                .filter(|(k, v)| v.is_some() && !held(&|n: &Keys| n.txns.contains(k))),
        );
        out.windows.extend(
            (e.windows.into_iter()).filter(|(k, _)| !held(&|n: &Keys| n.windows.contains(k))),
        );
    }
    out
}

/// The brand's state from its newest usable window of parts (one that
/// verifies and that `on_log` accepts), with the chain to continue it;
/// None if it has no part files.
pub fn read(
    dir: &Path,
    brand: u32,
    key: &VerifyingKey,
    on_log: OnLog<'_>,
) -> Result<Option<(BrandState, Chain)>> {
    let found = listed(dir, brand)?;
    let mut generations: Vec<u64> = found.iter().map(|(g, _)| *g).collect();
    generations.dedup();
    let mut why = None;
    for generation in generations.into_iter().rev() {
        let newest = found
            .iter()
            .filter(|(g, _)| *g == generation)
            .map(|(_, i)| *i);
        let newest = newest.max().expect("listed");
        if newest < WINDOW {
            // A generation a crash cut short: as if never begun (the
            // files it would have replaced are still there).
            continue;
        }
        if let Some(p) = peek_place(dir, brand, generation, newest) {
            // Not merged at all (seconds on a big state) when its newest
            // part already says it is past the log.
            if !on_log(p.seq, &p.head_hash) {
                passed_over(brand, generation, p.seq);
                continue;
            }
        }
        match read_window(dir, brand, generation, newest, key) {
            Ok(found) if on_log(found.0.seq, &found.0.head_hash) => return Ok(Some(found)),
            Ok((state, _)) => passed_over(brand, generation, state.seq),
            Err(e) => {
                // Told here too: an older window may serve instead.
                let error = crate::error::causes(&e);
                tracing::warn!(
                    brand,
                    generation,
                    error,
                    "snapshot parts not usable; trying older ones"
                );
                why = why.or(Some(e));
            }
        }
    }
    why.map_or(Ok(None), Err)
}

/// The window of `generation` ending at part `newest`, merged. One thread
/// reads and decodes the parts in order while this one merges them (a
/// start's time is mostly this): at most two parts are held besides the
/// state being built.
fn read_window(
    dir: &Path,
    brand: u32,
    generation: u64,
    newest: u64,
    key: &VerifyingKey,
) -> Result<(BrandState, Chain)> {
    let first = newest + 1 - WINDOW;
    let no_thread = |e| io("starting a thread to read the snapshot's parts")(e);
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel(0);
        std::thread::Builder::new()
            .spawn_scoped(scope, move || {
                for index in first..=newest {
                    let part = read_part(dir, brand, generation, index, key);
                    let failed = part.is_err();
                    if tx.send(part).is_err() || failed {
                        return;
                    }
                }
            })
            .map_err(no_thread)?;
        // The transaction index, the largest map, is merged on a third
        // thread.
        let (txns_tx, txns_rx) = std::sync::mpsc::sync_channel::<(usize, TxnsRun)>(2);
        let txns = std::thread::Builder::new()
            .spawn_scoped(scope, move || {
                let mut txns = FastMap::default();
                for (room, run) in txns_rx {
                    if txns.capacity() == 0 {
                        txns.reserve(room);
                    }
                    merge_txns(&mut txns, run);
                }
                txns
            })
            .map_err(no_thread)?;
        let mut merge = Merge::default();
        let mut chain: Option<Chain> = None;
        let mut rest = None;
        for index in first..=newest {
            let mut part = rx.recv().map_err(|_| {
                SnapshotError::Invalid(format!("part {generation}-{index} was not read"))
            })??;
            follow(&mut chain, &part, dir, index)?;
            // Room as the window's oldest part counted (within a few
            // deltas of the end), so the maps are not grown by rehashing
            // millions of entries; bounded, a part is only signed data.
            let [cards, effects, txns, windows] =
                part.place.sizes.map(|n| n.min(ROOM_LIMIT) as usize);
            if index == first {
                merge.cards.reserve(cards);
                merge.effects.reserve(effects);
                merge.windows.reserve(windows);
            }
            for run in [&mut part.carried.txns, &mut part.changed.txns] {
                // The thread only ends when this loop drops the sender.
                let _ = txns_tx.send((txns, std::mem::take(run)));
            }
            merge.add(part.carried);
            merge.add(part.changed);
            rest = Some(part.rest);
        }
        drop(txns_tx);
        merge.txns = txns.join().expect("merging the index does not panic");
        let state = merge.into_state(rest.expect("WINDOW > 0 parts read"));
        consistent(&state)?;
        Ok((state, chain.expect("WINDOW > 0 parts read")))
    })
}

/// Checks that `part` (at `index`) follows the window read so far, and
/// adds it to `chain`.
fn follow(chain: &mut Option<Chain>, part: &Part, dir: &Path, index: u64) -> Result<()> {
    let p = part.place;
    let generation = p.generation;
    let follows = chain
        .as_ref()
        .is_none_or(|c| (p.prev_seq, p.prev_head_hash, p.nonce) == (c.seq, c.head_hash, c.nonce));
    ensure(p.window == WINDOW && follows && p.seq >= p.prev_seq, || {
        format!("part {generation}-{index} does not follow its predecessor")
    })?;
    ensure(
        p.seq == part.rest.seq && p.head_hash == part.rest.head_hash,
        || format!("part {generation}-{index} names another state"),
    )?;
    let c = chain.get_or_insert_with(|| Chain {
        dir: dir.to_path_buf(),
        brand: p.brand,
        generation,
        nonce: p.nonce,
        head_hash: p.head_hash,
        index,
        seq: p.seq,
        changed: VecDeque::new(),
        recovered: true,
    });
    (c.index, c.seq, c.head_hash) = (index, p.seq, p.head_hash);
    c.changed.push_back(part.changed.keys());
    Ok(())
}

/// A complete generation whose record the log does not hold: taken ahead
/// of a log that a crash then cut short (the files it was to replace are
/// still there), or of a branch the log no longer has. Not an error: as a
/// generation never finished, it is passed over.
fn passed_over(brand: u32, generation: u64, seq: u64) {
    tracing::warn!(
        brand,
        generation,
        seq,
        "snapshot parts not on the stored log; trying older ones"
    );
}

/// Where part `index` of `generation` says it stands, unverified (see
/// `peek`); None if it cannot be read.
fn peek_place(dir: &Path, brand: u32, generation: u64, index: u64) -> Option<Place> {
    peek(MAGIC, &part_path(dir, brand, generation, index))
}

/// One part, verified and in its place (its nonce is checked against its
/// window's by the caller).
fn read_part(
    dir: &Path,
    brand: u32,
    generation: u64,
    index: u64,
    key: &VerifyingKey,
) -> Result<Part> {
    let path = part_path(dir, brand, generation, index);
    let bytes = read_file(&path)?
        .ok_or_else(|| SnapshotError::Invalid(format!("part {} is missing", path.display())))?;
    let part: Part = unseal(MAGIC, &bytes, key)?;
    let p = part.place;
    ensure(
        p.brand == brand && p.generation == generation && p.index == index,
        || format!("part {} is not where it was written", path.display()),
    )?;
    Ok(part)
}

/// Transaction index entries of one part, in its order.
type TxnsRun = Vec<((u32, u64), Option<crate::state::TxnEntry>)>;

/// Merges a later run of index entries: a later copy replaces an earlier
/// one, a removal mark removes.
fn merge_txns(txns: &mut FastMap<(u32, u64), crate::state::TxnEntry>, run: TxnsRun) {
    for (key, entry) in run {
        match entry {
            Some(entry) => txns.insert(key, entry),
            None => txns.remove(&key),
        };
    }
}

/// Entities merged oldest first, straight into the state's own maps: a
/// later copy replaces an earlier one, a removal mark removes.
#[derive(Default)]
struct Merge {
    cards: FastMap<u64, crate::state::Card>,
    /// In the order read; sorted and the last copy of each kept at the end
    /// (a map of two million records would cost more than the sort).
    effects: Vec<(u64, crate::state::Effect)>,
    txns: FastMap<(u32, u64), crate::state::TxnEntry>,
    windows: FastMap<u32, crate::state::TxnWindow>,
}

impl Merge {
    fn add(&mut self, e: Entities) {
        self.cards.extend(e.cards);
        self.effects.extend(e.effects);
        merge_txns(&mut self.txns, e.txns);
        self.windows.extend(e.windows);
    }

    fn into_state(self, mut state: BrandState) -> BrandState {
        let forgotten = state.effects.forgotten_up_to();
        // By sequence number, the last copy read of each first.
        let mut order: Vec<(u64, std::cmp::Reverse<usize>)> = (self.effects.iter().enumerate())
            .map(|(i, (seq, _))| (*seq, std::cmp::Reverse(i)))
            .collect();
        order.sort_unstable();
        order.dedup_by_key(|(seq, _)| *seq);
        let mut slots: Vec<Option<(u64, crate::state::Effect)>> =
            self.effects.into_iter().map(Some).collect();
        let kept: VecDeque<_> = (order.into_iter())
            .filter(|(seq, _)| *seq > forgotten)
            .filter_map(|(_, std::cmp::Reverse(i))| slots[i].take())
            .collect();
        state.effects = Effects::from_parts(kept, forgotten);
        state.cards = self.cards.into();
        state.txns = self.txns.into();
        state.txn_windows = self.windows.into();
        state
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(seq: u64) -> BrandState {
        let mut s = BrandState::new(9);
        for i in 0..seq {
            s.merkle.push_with([i as u8; 32], |_, _, _| {});
        }
        (s.seq, s.head_hash) = (seq, [seq as u8; 32]);
        s.cards.insert(42, crate::state::Card::default());
        s
    }

    #[test]
    fn the_encoding_of_a_part_is_pinned() {
        // A change to Place, Part or Entities changes this encoding: bump
        // FORMAT (mod.rs), then pin the new hash. Never only the hash.
        let s = state(3);
        let mut changed = s.slice(0, 1);
        changed.txns.push(((1, 7), None));
        let part = Part {
            place: Place {
                brand: 9,
                generation: 2,
                index: 9,
                window: WINDOW,
                seq: 3,
                head_hash: s.head_hash,
                prev_seq: 2,
                prev_head_hash: [2; 32],
                sizes: s.sizes(),
                nonce: 0x0123_4567_89ab_cdef,
            },
            rest: s.rest(),
            changed,
            carried: Entities::default(),
        };
        let bytes = postcard::to_stdvec(&part).unwrap();
        assert_eq!(
            (
                super::super::FORMAT,
                hex::encode(crate::crypto::sha256(&bytes))
            ),
            (
                13,
                "52bef080923b7c1f422789e5341ee670c06bb7cbde775061c315f907120de38b".to_string()
            )
        );
    }

    #[test]
    fn a_generation_cut_short_is_passed_over_and_one_of_another_nonce_refused() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::from_bytes(&[3; 32]);
        let vk = key.verifying_key();
        let first = state(3);
        write_generation(dir.path(), &first, &key, 1).unwrap();
        // Generation 2 cut short after its first part: generation 1 serves.
        let second = state(5);
        let chain = Chain::after_generation(dir.path(), &second, 2);
        let part = |index, nonce| Part {
            place: Place {
                brand: 9,
                generation: 2,
                index,
                window: WINDOW,
                seq: 5,
                head_hash: second.head_hash,
                prev_seq: 5,
                prev_head_hash: second.head_hash,
                sizes: second.sizes(),
                nonce,
            },
            rest: second.rest(),
            changed: Entities::default(),
            carried: second.slice(index - 1, WINDOW),
        };
        write_part(dir.path(), &part(1, chain.nonce), &key).unwrap();
        assert_eq!(
            read(dir.path(), 9, &vk, &|_, _| true).unwrap().unwrap().0,
            first
        );
        // Completed, but one part is another writer's under the same
        // number: refused, and generation 1 serves again.
        for index in 2..=WINDOW {
            write_part(dir.path(), &part(index, chain.nonce), &key).unwrap();
        }
        assert_eq!(
            read(dir.path(), 9, &vk, &|_, _| true).unwrap().unwrap().0,
            second
        );
        chain.own_generation().unwrap();
        write_part(dir.path(), &part(4, chain.nonce ^ 1), &key).unwrap();
        assert!(
            chain.own_generation().is_err(),
            "a mixed generation replaces nothing"
        );
        assert_eq!(
            read(dir.path(), 9, &vk, &|_, _| true).unwrap().unwrap().0,
            first
        );
    }

    #[test]
    fn a_generation_past_the_logs_end_leaves_the_older_one_to_start_from() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::from_bytes(&[3; 32]);
        let vk = key.verifying_key();
        let (first, second) = (state(3), state(5));
        write_generation(dir.path(), &first, &key, 1).unwrap();
        // Generation 2 is written ahead of the log: until its record is
        // durable it replaces nothing.
        let chain = Chain::after_generation(dir.path(), &second, 2);
        write_generation_as(&second, &key, chain.clone()).unwrap();
        let all = read(dir.path(), 9, &vk, &|_, _| true).unwrap().unwrap();
        assert_eq!(all.0, second);
        // A crash cut the log at record 4: generation 1 serves.
        let log_ends_at_4 = |seq: u64, _: &[u8; 32]| seq <= 4;
        let start = read(dir.path(), 9, &vk, &log_ends_at_4).unwrap().unwrap();
        assert_eq!((start.0, start.1.generation), (first, 1));
        // Nothing on the log: no start from parts (a full replay).
        assert!(read(dir.path(), 9, &vk, &|_, _| false).unwrap().is_none());
        // Its record durable, generation 2 (all its own) replaces
        // generation 1.
        chain.own_generation().unwrap();
        chain.replace_older().unwrap();
        let left: Vec<u64> = listed(dir.path(), 9)
            .unwrap()
            .iter()
            .map(|(g, _)| *g)
            .collect();
        assert_eq!(left, vec![2; WINDOW as usize]);
    }
}
