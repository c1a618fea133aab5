//! The FUSE side: each request is answered from [`State`] and the backing
//! directory.

use std::ffi::OsStr;
use std::fs::Metadata;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::consts::FOPEN_DIRECT_IO;
use fuser::{
    FileAttr, FileType, Filesystem, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyWrite, Request, TimeOrNow,
};

use crate::state::{errno, State};

/// Nothing is cached by the kernel: every lookup and stat comes back here,
/// so sizes always reflect the cached view.
const TTL: Duration = Duration::ZERO;

/// The file system a session runs.
pub(crate) struct LazyFsImpl {
    pub(crate) state: Arc<Mutex<State>>,
}

/// The errno of an io::Error (EIO when it has none).
fn code(e: io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

fn time(secs: i64, nsecs: i64) -> SystemTime {
    match u64::try_from(secs) {
        Ok(s) => UNIX_EPOCH + Duration::new(s, nsecs as u32),
        Err(_) => UNIX_EPOCH,
    }
}

/// FUSE attributes of a backing entry, with the cached size if any.
fn attr(ino: u64, m: &Metadata, cached: Option<u64>) -> FileAttr {
    let kind = if m.is_dir() {
        FileType::Directory
    } else if m.file_type().is_symlink() {
        FileType::Symlink
    } else {
        FileType::RegularFile
    };
    let size = cached.unwrap_or(m.size());
    FileAttr {
        ino,
        size,
        blocks: size.div_ceil(512),
        atime: time(m.atime(), m.atime_nsec()),
        mtime: time(m.mtime(), m.mtime_nsec()),
        ctime: time(m.ctime(), m.ctime_nsec()),
        crtime: time(m.ctime(), m.ctime_nsec()),
        kind,
        perm: (m.mode() & 0o7777) as u16,
        nlink: m.nlink() as u32,
        uid: m.uid(),
        gid: m.gid(),
        rdev: m.rdev() as u32,
        blksize: 4096,
        flags: 0,
    }
}

impl LazyFsImpl {
    /// Runs `f` on the state unless the power is already cut.
    fn with<T>(&self, f: impl FnOnce(&mut State) -> io::Result<T>) -> Result<T, i32> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.crashed {
            return Err(libc::EIO);
        }
        f(&mut s).map_err(code)
    }

    /// The attributes of the entry at `path`, numbering it if new.
    fn entry(s: &mut State, path: &Path) -> io::Result<FileAttr> {
        let m = std::fs::symlink_metadata(path)?;
        let ino = s.ino_of(path);
        Ok(attr(ino, &m, s.cached_size(ino)))
    }
}

/// Creates a backing file or directory for `create`/`mkdir`.
fn make(path: &Path, mode: u32, dir: bool) -> io::Result<()> {
    if dir {
        std::fs::DirBuilder::new().mode(mode).create(path)
    } else {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
            .map(drop)
    }
}

impl Filesystem for LazyFsImpl {
    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        match self.with(|s| {
            let path = s.child(parent, name)?;
            Self::entry(s, &path)
        }) {
            Ok(a) => reply.entry(&TTL, &a, 0),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        match self.with(|s| {
            let path = s.path(ino)?;
            Self::entry(s, &path)
        }) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<u64>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<u32>,
        reply: ReplyAttr,
    ) {
        match self.with(|s| {
            let path = s.path(ino)?;
            if let Some(mode) = mode {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
            }
            if let Some(size) = size {
                s.dirty_mut(ino)?.set_size(size);
            }
            Self::entry(s, &path)
        }) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        match self.with(|s| {
            let path = s.child(parent, name)?;
            make(&path, mode & !umask & 0o7777, true)?;
            s.created(parent, &path);
            Self::entry(s, &path)
        }) {
            Ok(a) => reply.entry(&TTL, &a, 0),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        match self.with(|s| {
            let path = s.child(parent, name)?;
            s.remove(parent, &path)
        }) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        match self.with(|s| {
            let path = s.child(parent, name)?;
            if std::fs::read_dir(&path)?.next().is_some() {
                return Err(errno(libc::ENOTEMPTY));
            }
            s.remove(parent, &path)
        }) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
        reply: ReplyEmpty,
    ) {
        // RENAME_NOREPLACE is cheap to honour; EXCHANGE and WHITEOUT are not
        // supported (cardd does not use them).
        let noreplace = flags == libc::RENAME_NOREPLACE;
        if flags != 0 && !noreplace {
            return reply.error(libc::EINVAL);
        }
        match self.with(|s| {
            let from = s.child(parent, name)?;
            let to = s.child(newparent, newname)?;
            if noreplace && std::fs::symlink_metadata(&to).is_ok() {
                return Err(errno(libc::EEXIST));
            }
            s.rename([parent, newparent], &from, &to)
        }) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, _flags: i32, reply: ReplyOpen) {
        match self.with(|s| s.path(ino).and_then(std::fs::symlink_metadata)) {
            Ok(_) => reply.opened(0, FOPEN_DIRECT_IO),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyData,
    ) {
        let offset = u64::try_from(offset).unwrap_or(0);
        match self.with(|s| s.read(ino, offset, u64::from(size))) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        data: &[u8],
        _write_flags: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyWrite,
    ) {
        let offset = u64::try_from(offset).unwrap_or(0);
        match self.with(|s| {
            s.dirty_mut(ino)?.write(offset, data);
            Ok(())
        }) {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(&mut self, _req: &Request<'_>, _ino: u64, _fh: u64, _lo: u64, reply: ReplyEmpty) {
        // close() is no sync point: the data stays cached.
        reply.ok();
    }

    fn fsync(&mut self, _req: &Request<'_>, ino: u64, _fh: u64, _ds: bool, reply: ReplyEmpty) {
        match self.with(|s| s.fsync(ino)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        mut reply: ReplyDirectory,
    ) {
        let entries = self.with(|s| {
            let dir = s.path(ino)?;
            let mut out = vec![(ino, FileType::Directory, ".".into())];
            out.push((ino, FileType::Directory, "..".into()));
            for e in std::fs::read_dir(&dir)? {
                let e = e?;
                let kind = match e.file_type()?.is_dir() {
                    true => FileType::Directory,
                    false => FileType::RegularFile,
                };
                out.push((s.ino_of(&e.path()), kind, e.file_name()));
            }
            Ok(out)
        });
        match entries {
            Ok(entries) => {
                let skip = usize::try_from(offset).unwrap_or(0);
                for (i, (ino, kind, name)) in entries.into_iter().enumerate().skip(skip) {
                    if reply.add(ino, (i + 1) as i64, kind, name) {
                        break;
                    }
                }
                reply.ok()
            }
            Err(e) => reply.error(e),
        }
    }

    fn fsyncdir(&mut self, _req: &Request<'_>, ino: u64, _fh: u64, _ds: bool, reply: ReplyEmpty) {
        match self.with(|s| {
            s.fsyncdir(ino);
            Ok(())
        }) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        match self.with(|s| {
            let path = s.child(parent, name)?;
            make(&path, mode & !umask & 0o7777, false)?;
            s.created(parent, &path);
            Self::entry(s, &path)
        }) {
            Ok(a) => reply.created(&TTL, &a, 0, 0, FOPEN_DIRECT_IO),
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        length: i64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let end = u64::try_from(offset.saturating_add(length)).unwrap_or(0);
        match self.with(|s| match mode {
            0 => {
                let d = s.dirty_mut(ino)?;
                d.set_size(d.size.max(end));
                Ok(())
            }
            libc::FALLOC_FL_KEEP_SIZE => Ok(()),
            _ => Err(errno(libc::EOPNOTSUPP)),
        }) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }
}
