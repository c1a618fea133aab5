//! The file-system steps that make new names survive a power cut: a file's
//! fsync covers its data, not the directory entry that names it, so every
//! created or renamed entry is followed by an fsync of its directory.
use std::fs::{self, File};
use std::io;
use std::path::Path;

/// Fsyncs a directory, making the entries created or renamed in it durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(non_empty(dir))?.sync_all()
}

/// The fsync-able form of a path: `""` (the parent of a relative name) is `"."`.
fn non_empty(dir: &Path) -> &Path {
    if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    }
}

/// Creates `dir` and any missing parents (mode 0700 on unix: a data
/// directory holds keys and every card's balance), fsyncing the parent of
/// each directory created so that a power cut cannot lose the entry.
pub fn create_dir_all_durable(dir: &Path) -> io::Result<()> {
    let dir = non_empty(dir);
    if dir.is_dir() {
        return Ok(());
    }
    let parent = dir.parent().unwrap_or(Path::new("."));
    create_dir_all_durable(parent)?;
    let mut builder = fs::DirBuilder::new();
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    match builder.create(dir) {
        Ok(()) => sync_dir(parent),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(e),
    }
}

/// Writes `bytes` to `path` through a temporary file: write, fsync, rename,
/// fsync of the directory. A reader sees the old file or the new one whole.
pub fn replace_durably(path: &Path, bytes: &[u8], private: bool) -> io::Result<()> {
    use std::io::Write;
    let mut next = Replacement::create(path, private)?;
    for chunk in bytes.chunks(WRITEBACK_CHUNK) {
        next.file().write_all(chunk)?;
        if bytes.len() > WRITEBACK_CHUNK {
            write_back(next.file())?;
        }
    }
    next.commit()
}

/// Creates (or truncates) `path`; with `private`, only its owner can read
/// it (mode 0600 on unix): backups, exports and card lists hold card
/// numbers and balances.
pub fn create_file(path: &Path, private: bool) -> io::Result<File> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    options.open(path)
}

/// A file written in full beside `path` (`path.tmp`) that replaces it only
/// once complete ([`Replacement::commit`]): an export or a report that
/// fails half way leaves the previous file as it was. Dropped uncommitted,
/// the temporary file is deleted.
pub struct Replacement {
    path: std::path::PathBuf,
    tmp: std::path::PathBuf,
    file: Option<File>,
}

impl Replacement {
    /// Creates `path.tmp` (mode 0600 on unix if `private`).
    pub fn create(path: &Path, private: bool) -> io::Result<Self> {
        let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
        tmp_name.push(".tmp");
        let tmp = path.with_file_name(tmp_name);
        let file = create_file(&tmp, private)?;
        Ok(Replacement {
            path: path.to_path_buf(),
            tmp,
            file: Some(file),
        })
    }

    /// The temporary file, to write.
    pub fn file(&mut self) -> &mut File {
        self.file.as_mut().expect("open until committed")
    }

    /// Fsyncs the file, renames it over `path` and fsyncs the directory.
    pub fn commit(mut self) -> io::Result<()> {
        let file = self.file.take().expect("committed once");
        file.sync_all()?;
        drop(file);
        fs::rename(&self.tmp, &self.path)?;
        self.tmp.clear();
        sync_dir(self.path.parent().unwrap_or(Path::new(".")))
    }
}

impl Drop for Replacement {
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// A large file (a snapshot of a big brand is 100+ MB) is written back in
/// pieces of this size as it is written.
pub const WRITEBACK_CHUNK: usize = 1024 * 1024;

/// Starts the write-back of what `file` holds dirty and waits for it. On
/// ext4 (data=ordered) an fsync commits the journal, and the commit waits
/// for the data of every file with blocks in it: a snapshot's 100+ MB
/// written whole and fsynced once made each group commit of the ledger
/// wait for it (p99 of purchases went from ~6 to ~70 ms while a snapshot
/// was written). Written back a megabyte at a time, the ledger's fsync
/// never queues behind more than one piece.
#[cfg(target_os = "linux")]
fn write_back(file: &File) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
        | libc::SYNC_FILE_RANGE_WRITE
        | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    // SAFETY: the descriptor is open for the call; offset 0 and length 0
    // name the whole file.
    if unsafe { libc::sync_file_range(file.as_raw_fd(), 0, 0, flags) } == 0 {
        return Ok(());
    }
    let error = io::Error::last_os_error();
    match error.raw_os_error() {
        // A file system or sandbox without the call: the final fsync
        // writes everything back, as it did before.
        Some(libc::ENOSYS | libc::EINVAL | libc::EOPNOTSUPP | libc::ESPIPE) => Ok(()),
        _ => Err(error),
    }
}

/// Elsewhere the final fsync writes everything back at once.
#[cfg(not(target_os = "linux"))]
fn write_back(_file: &File) -> io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_directories_are_created_and_an_existing_one_is_fine() {
        let root = tempfile::tempdir().unwrap();
        let deep = root.path().join("a/b/c");
        create_dir_all_durable(&deep).unwrap();
        assert!(deep.is_dir());
        create_dir_all_durable(&deep).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&deep).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "mode {mode:o}");
        }
    }

    #[test]
    fn a_replaced_file_holds_the_new_bytes_and_no_temporary_stays() {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join("f.json");
        replace_durably(&path, b"one", true).unwrap();
        replace_durably(&path, b"two", true).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(root.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn a_file_larger_than_a_writeback_piece_is_written_whole() {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join("big");
        let bytes: Vec<u8> = (0..WRITEBACK_CHUNK * 5 / 2)
            .map(|i| (i % 251) as u8)
            .collect();
        replace_durably(&path, &bytes, true).unwrap();
        assert_eq!(fs::read(&path).unwrap(), bytes);
    }
}
