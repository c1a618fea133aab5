//! A test-only FUSE file system that loses what was not fsynced, like a
//! machine losing power (after LazyFS, the fault-injection file system
//! Jepsen uses).
//!
//! It passes every request through to a backing directory, except:
//!
//! - **File data and sizes** (`write`, truncation through `setattr`,
//!   `fallocate` mode 0) are held in memory per inode and reach the backing
//!   file only on `fsync`/`fdatasync` of that file, which writes them and
//!   fsyncs the backing file. Reads and `stat` see the cached view. `close`
//!   syncs nothing.
//! - **Namespace changes** (`create`, `mkdir`, `unlink`, `rmdir`, `rename`)
//!   happen on the backing directory at once, but each is kept in an undo
//!   log until the directories it touched are fsynced (`fsyncdir`): a
//!   created or removed entry waits for its parent, a rename for both its
//!   old and new parent. Removed entries are parked in a trash directory
//!   beside the backing one, so that they can come back.
//!
//! [`Mounted::power_cut`] forgets every unsynced write, takes back, newest
//! first, every namespace change still in the undo log, and unmounts. What
//! is left in the backing directory is exactly what fsync and fsyncdir made
//! durable. Approximations, all on the strict side: a file's fsync does not
//! make its own directory entry durable (ext4 often would); undoing a
//! created directory removes everything under it; metadata other than the
//! size (mode, times) is applied at once and never rolled back; hard links
//! and symlinks are not supported.
//!
//! The kernel caches nothing that could outlive a cut: files are opened with
//! `FOPEN_DIRECT_IO`, entry and attribute timeouts are zero, there is no
//! writeback cache, and a remount is a new session with new inodes.
#![deny(missing_docs)]

mod dirty;
mod fs;
mod state;

use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use fuser::{BackgroundSession, MountOption};

use crate::state::State;

/// What the file system saw and did; for assertions.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    /// `fsync`/`fdatasync` calls on files.
    pub fsyncs: u64,
    /// `fsync` calls on directories.
    pub dir_fsyncs: u64,
    /// Bytes written to backing files by fsyncs.
    pub bytes_synced: u64,
    /// Unsynced bytes a power cut threw away.
    pub bytes_dropped: u64,
    /// Namespace changes a power cut took back.
    pub namespace_undone: u64,
}

/// Failures of mounting and cutting.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The mount itself failed (no /dev/fuse, no permission, no fusermount3).
    #[error("cannot mount lazyfs on {mountpoint}: {source}")]
    Mount {
        /// Where the mount was tried.
        mountpoint: PathBuf,
        /// Why it failed.
        source: std::io::Error,
    },
    /// Undoing the namespace or syncing the backing directory failed.
    #[error("lazyfs backing directory: {0}")]
    Backing(#[from] std::io::Error),
}

/// Entry point: mounts the file system.
#[derive(Debug)]
pub struct LazyFs;

impl LazyFs {
    /// Mounts a lazy view of `backing` on `mountpoint` (both directories
    /// must exist). Removed entries wait in a trash directory beside
    /// `backing`, removed again on unmount.
    pub fn mount(backing: &Path, mountpoint: &Path) -> Result<Mounted, Error> {
        let backing = backing.canonicalize()?;
        let trash = trash_dir(&backing);
        let _ = std::fs::remove_dir_all(&trash);
        std::fs::create_dir(&trash)?;
        let state = Arc::new(Mutex::new(State::new(&backing, &trash)));
        let fs = fs::LazyFsImpl {
            state: state.clone(),
        };
        let options = [
            MountOption::FSName("lazyfs".into()),
            MountOption::Subtype("lazyfs".into()),
            MountOption::RW,
            MountOption::NoAtime,
        ];
        let session =
            fuser::spawn_mount2(fs, mountpoint, &options).map_err(|source| Error::Mount {
                mountpoint: mountpoint.to_path_buf(),
                source,
            })?;
        Ok(Mounted {
            session: Some(session),
            state,
            mountpoint: mountpoint.to_path_buf(),
            trash,
        })
    }
}

/// Where removed entries wait: beside the backing directory (the same file
/// system, so that a rename takes them there and back).
fn trash_dir(backing: &Path) -> PathBuf {
    let name = backing
        .file_name()
        .map(|n| n.to_string_lossy().into_owned());
    backing.with_file_name(format!(".{}.lazyfs-trash", name.unwrap_or_default()))
}

/// A mounted lazyfs. Dropping it is a clean shutdown: everything cached is
/// written back and fsynced, then it unmounts.
#[derive(Debug)]
pub struct Mounted {
    session: Option<BackgroundSession>,
    state: Arc<Mutex<State>>,
    mountpoint: PathBuf,
    trash: PathBuf,
}

impl Mounted {
    /// The directory the file system is mounted on.
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// Counters so far.
    pub fn stats(&self) -> Stats {
        self.lock().stats.clone()
    }

    /// Power cut: from now on every request fails with EIO; unsynced data
    /// and undurable namespace changes are dropped; then it unmounts. Works
    /// while files are still open (the unmount is lazy). Returns the final
    /// counters.
    pub fn power_cut(mut self) -> Result<Stats, Error> {
        let stats = {
            let mut s = self.lock();
            s.crash()?;
            s.stats.clone()
        };
        self.stop()?;
        Ok(stats)
    }

    /// Clean shutdown: writes back and fsyncs everything, then unmounts.
    pub fn unmount(mut self) -> Result<Stats, Error> {
        let stats = {
            let mut s = self.lock();
            s.sync_all()?;
            s.crashed = true;
            s.stats.clone()
        };
        self.stop()?;
        Ok(stats)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Detaches the mount and waits (bounded) for the session thread.
    fn stop(&mut self) -> Result<(), Error> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        detach(&self.mountpoint);
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            session.join();
            let _ = tx.send(());
        });
        let _ = std::fs::remove_dir_all(&self.trash);
        // A file still open on the detached mount keeps the connection (and
        // the session thread) alive until it is closed; every request on it
        // fails with EIO meanwhile, so the thread is left to end on its own.
        let _ = rx.recv_timeout(Duration::from_secs(2));
        Ok(())
    }
}

/// Lazy unmount: the kernel lets go even if a killed process's files are
/// still being closed. Falls back to fusermount3 when not root.
fn detach(mountpoint: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(mountpoint.as_os_str().as_bytes()) else {
        return;
    };
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
    let rc = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    if rc != 0 {
        let _ = std::process::Command::new("fusermount3")
            .args(["-u", "-z"])
            .arg(mountpoint)
            .status();
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if self.session.is_some() {
            let _ = self.lock().sync_all();
            let _ = self.stop();
        }
    }
}
