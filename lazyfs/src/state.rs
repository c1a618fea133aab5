//! What the file system remembers: inode numbers, unsynced file data and
//! the undo log of namespace changes no directory fsync has made durable.

use std::collections::{BTreeSet, HashMap};
use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use crate::dirty::Dirty;
use crate::Stats;

/// Inode number of the root directory (FUSE's fixed root id).
pub(crate) const ROOT: u64 = 1;

/// How to take back one namespace change at a power cut.
#[derive(Debug)]
enum Undo {
    /// A file or directory was created here: remove it (and what is under it).
    Created(PathBuf),
    /// `from` was renamed to `to`; `displaced` holds what `to` replaced.
    Renamed {
        from: PathBuf,
        to: PathBuf,
        displaced: Option<PathBuf>,
    },
    /// `path` was removed; its entry now lives at `trash`.
    Removed { path: PathBuf, trash: PathBuf },
}

/// One namespace change and the directories whose fsync it still waits for.
#[derive(Debug)]
struct Pending {
    undo: Undo,
    dirs: BTreeSet<u64>,
}

/// All mutable state, behind one mutex shared by the FUSE session and the
/// test's [`crate::Mounted`] handle.
#[derive(Debug)]
pub(crate) struct State {
    trash: PathBuf,
    trash_seq: u64,
    paths: HashMap<u64, PathBuf>,
    inos: HashMap<PathBuf, u64>,
    next_ino: u64,
    dirty: HashMap<u64, Dirty>,
    log: Vec<Pending>,
    /// Set at the power cut: every later request fails with EIO.
    pub(crate) crashed: bool,
    pub(crate) stats: Stats,
}

impl State {
    /// State of a fresh mount of `backing`, moving removed entries to `trash`.
    pub(crate) fn new(backing: &Path, trash: &Path) -> State {
        let mut s = State {
            trash: trash.to_path_buf(),
            trash_seq: 0,
            paths: HashMap::new(),
            inos: HashMap::new(),
            next_ino: ROOT + 1,
            dirty: HashMap::new(),
            log: Vec::new(),
            crashed: false,
            stats: Stats::default(),
        };
        s.paths.insert(ROOT, backing.to_path_buf());
        s.inos.insert(backing.to_path_buf(), ROOT);
        s
    }

    /// Backing path of an inode.
    pub(crate) fn path(&self, ino: u64) -> io::Result<PathBuf> {
        self.paths
            .get(&ino)
            .cloned()
            .ok_or_else(|| errno(libc::ENOENT))
    }

    /// Backing path of `name` in directory `parent`.
    pub(crate) fn child(&self, parent: u64, name: &std::ffi::OsStr) -> io::Result<PathBuf> {
        Ok(self.path(parent)?.join(name))
    }

    /// The inode number of a backing path, assigned on first sight.
    pub(crate) fn ino_of(&mut self, path: &Path) -> u64 {
        if let Some(ino) = self.inos.get(path) {
            return *ino;
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.paths.insert(ino, path.to_path_buf());
        self.inos.insert(path.to_path_buf(), ino);
        ino
    }

    /// Size of the cached view, if the file has unsynced changes.
    pub(crate) fn cached_size(&self, ino: u64) -> Option<u64> {
        self.dirty.get(&ino).map(|d| d.size)
    }

    /// The unsynced view of a file, started from its backing size.
    pub(crate) fn dirty_mut(&mut self, ino: u64) -> io::Result<&mut Dirty> {
        if !self.dirty.contains_key(&ino) {
            let len = std::fs::metadata(self.path(ino)?)?.len();
            self.dirty.insert(ino, Dirty::over(len));
        }
        Ok(self.dirty.get_mut(&ino).expect("inserted above"))
    }

    /// Reads through the cached view (or straight from the backing file).
    pub(crate) fn read(&self, ino: u64, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        let file = File::open(self.path(ino)?)?;
        let view = match self.dirty.get(&ino) {
            Some(d) => return d.read(&file, offset, len),
            None => Dirty::over(file.metadata()?.len()),
        };
        view.read(&file, offset, len)
    }

    /// fsync of a file: its cached view goes to the backing file, fsynced.
    pub(crate) fn fsync(&mut self, ino: u64) -> io::Result<()> {
        self.stats.fsyncs += 1;
        let Some(d) = self.dirty.get(&ino) else {
            return Ok(());
        };
        let file = OpenOptions::new().write(true).open(self.path(ino)?)?;
        d.flush_to(&file)?;
        self.stats.bytes_synced += d.pending_bytes();
        self.dirty.remove(&ino);
        Ok(())
    }

    /// fsync of a directory: the changes that waited for it become durable.
    pub(crate) fn fsyncdir(&mut self, ino: u64) {
        self.stats.dir_fsyncs += 1;
        for p in &mut self.log {
            p.dirs.remove(&ino);
        }
        self.log.retain(|p| !p.dirs.is_empty());
    }

    /// Records a new entry at `path` in `parent`, not durable yet.
    pub(crate) fn created(&mut self, parent: u64, path: &Path) {
        self.push(Undo::Created(path.to_path_buf()), &[parent]);
    }

    /// Removes `path` (a file or an empty directory) from `parent`,
    /// keeping it in the trash until the removal is durable.
    pub(crate) fn remove(&mut self, parent: u64, path: &Path) -> io::Result<()> {
        let trash = self.park(path)?;
        self.push(
            Undo::Removed {
                path: path.to_path_buf(),
                trash,
            },
            &[parent],
        );
        Ok(())
    }

    /// rename(2) without flags: a replaced target goes to the trash.
    pub(crate) fn rename(&mut self, dirs: [u64; 2], from: &Path, to: &Path) -> io::Result<()> {
        let displaced = match std::fs::symlink_metadata(to) {
            Ok(_) => Some(self.park(to)?),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        std::fs::rename(from, to)?;
        self.moved(from, to);
        let undo = Undo::Renamed {
            from: from.to_path_buf(),
            to: to.to_path_buf(),
            displaced,
        };
        self.push(undo, &dirs);
        Ok(())
    }

    /// Power cut: drops every unsynced write and takes back, newest first,
    /// every namespace change no directory fsync made durable.
    pub(crate) fn crash(&mut self) -> io::Result<()> {
        self.crashed = true;
        for d in self.dirty.values() {
            self.stats.bytes_dropped += d.pending_bytes();
        }
        self.dirty.clear();
        while let Some(p) = self.log.pop() {
            self.stats.namespace_undone += 1;
            undo(p.undo)?;
        }
        Ok(())
    }

    /// Clean shutdown: everything cached is written and fsynced, every
    /// namespace change kept.
    pub(crate) fn sync_all(&mut self) -> io::Result<()> {
        let inos: Vec<u64> = self.dirty.keys().copied().collect();
        for ino in inos {
            self.fsync(ino)?;
        }
        self.log.clear();
        Ok(())
    }

    fn push(&mut self, undo: Undo, dirs: &[u64]) {
        let dirs = dirs.iter().copied().collect();
        self.log.push(Pending { undo, dirs });
    }

    /// Moves `path` into the trash and points its inode (and those under
    /// it) there, so that open files keep working.
    fn park(&mut self, path: &Path) -> io::Result<PathBuf> {
        self.trash_seq += 1;
        let trash = self.trash.join(self.trash_seq.to_string());
        std::fs::rename(path, &trash)?;
        self.moved(path, &trash);
        Ok(trash)
    }

    /// Re-points the inodes at or under `from` to `to` after a rename.
    fn moved(&mut self, from: &Path, to: &Path) {
        let affected: Vec<(PathBuf, u64)> = self
            .inos
            .iter()
            .filter(|(p, _)| p.starts_with(from))
            .map(|(p, i)| (p.clone(), *i))
            .collect();
        for (old, ino) in affected {
            // join("") would add a trailing slash: the entry itself maps to `to`.
            let rest = old.strip_prefix(from).expect("filtered on prefix");
            let new = match rest.as_os_str().is_empty() {
                true => to.to_path_buf(),
                false => to.join(rest),
            };
            self.inos.remove(&old);
            self.inos.insert(new.clone(), ino);
            self.paths.insert(ino, new);
        }
    }
}

/// Takes back one change on the backing directory.
fn undo(u: Undo) -> io::Result<()> {
    match u {
        Undo::Created(path) => remove_any(&path),
        Undo::Renamed {
            from,
            to,
            displaced,
        } => {
            std::fs::rename(&to, &from)?;
            match displaced {
                Some(trash) => std::fs::rename(trash, to),
                None => Ok(()),
            }
        }
        Undo::Removed { path, trash } => std::fs::rename(trash, path),
    }
}

/// Removes a file or a whole directory tree (a directory whose own entry
/// was never durable takes everything under it along).
fn remove_any(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// An io::Error carrying a raw errno.
pub(crate) fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}
