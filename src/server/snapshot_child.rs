//! Snapshots written by a forked child, so that a brand's applier does not
//! wait while a large state is encoded.
//!
//! At a snapshot point the applier forks. The child holds a copy-on-write
//! image of the process as it was at that instant, so the state it encodes
//! is exactly the state after the snapshot's record, while the parent's
//! applier goes on at once: its pause is the fork (page tables copied),
//! not the encoding and signing of the whole state (about half a second at
//! a million cards). Redis's background save works the same way.
//!
//! The child runs only code that takes no lock another thread could hold
//! at the fork: encoding and signing (they allocate; glibc's own fork
//! handlers leave malloc usable in the child) and plain file writes, then
//! `_exit`. It logs nothing (another thread may have held the log writer's
//! lock), closes every descriptor it inherited (a killed daemon's child
//! holds nothing a restart needs), and runs at a low priority (tills
//! first).

use crate::snapshot::job::GenerationJob;

/// A snapshot being written by a child process.
#[derive(Debug)]
pub(super) struct Child {
    pid: libc::pid_t,
}

/// Why a child's snapshot was not stored.
#[derive(Debug, thiserror::Error)]
pub(super) enum ChildError {
    /// The fork itself failed (no memory or process slots).
    #[error("fork failed")]
    Fork(#[source] std::io::Error),
    /// Waiting for the child failed.
    #[error("waiting for the snapshot process failed")]
    Wait(#[source] std::io::Error),
    /// The child ended without storing the snapshot.
    #[error("the snapshot process ended with status {0:#x}")]
    Failed(i32),
}

/// The child's scheduling priority: below tills and the commit path
/// (not SCHED_IDLE: under a long full load that would starve the child,
/// and the copy-on-write image would grow toward a second copy).
const CHILD_NICE: i32 = 10;
/// Exit codes of the child.
const STORED: i32 = 0;
const NOT_STORED: i32 = 1;
const ORPHANED: i32 = 2;

/// Forks a child that writes `job`'s generation of the state, and returns
/// at once in the parent.
pub(super) fn spawn(job: &GenerationJob<'_>) -> Result<Child, ChildError> {
    // SAFETY: getpid takes nothing.
    let parent = unsafe { libc::getpid() };
    // SAFETY: fork has no preconditions; what the child may do after it in
    // a threaded process is the module's rule (no locks, no logging, _exit).
    match unsafe { libc::fork() } {
        -1 => Err(ChildError::Fork(std::io::Error::last_os_error())),
        0 => in_child(parent, job),
        pid => Ok(Child { pid }),
    }
}

/// The child's whole life: never returns.
fn in_child(parent: libc::pid_t, job: &GenerationJob<'_>) -> ! {
    // SAFETY: these calls take no pointers. Every inherited descriptor but
    // stdio is closed first: the child writes only files it opens itself,
    // and must not keep the data directory's lock, the listening sockets or
    // the log's files open a moment longer than the daemon (a restart right
    // after a kill would find them held). No parent-death signal: it fires
    // when the forking *thread* ends, and tokio retires worker threads
    // (block_in_place), which would kill a snapshot half written. A child
    // whose daemon died finishes its snapshot (on the chain or ignored, as
    // any snapshot) and exits.
    let orphaned = unsafe {
        if libc::close_range(3, libc::c_uint::MAX, 0) != 0 {
            for fd in 3..4096 {
                libc::close(fd);
            }
        }
        libc::setpriority(libc::PRIO_PROCESS, 0, CHILD_NICE);
        libc::getppid() != parent
    };
    let code = if orphaned {
        ORPHANED
    } else {
        let written = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job.write_slices()));
        match written {
            Ok(Ok(_)) => STORED,
            _ => NOT_STORED,
        }
    };
    // SAFETY: _exit ends the child without running the parent's destructors
    // or atexit handlers (they belong to the parent's threads and files).
    unsafe { libc::_exit(code) }
}

impl Child {
    /// Blocks until the child ends; Ok once its snapshot is stored.
    pub(super) fn wait(self) -> Result<(), ChildError> {
        let mut status = 0;
        loop {
            // SAFETY: status is a valid out-pointer for the call.
            let got = unsafe { libc::waitpid(self.pid, &mut status, 0) };
            if got == self.pid {
                break;
            }
            let error = std::io::Error::last_os_error();
            if error.kind() != std::io::ErrorKind::Interrupted {
                return Err(ChildError::Wait(error));
            }
        }
        if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == STORED {
            Ok(())
        } else {
            Err(ChildError::Failed(status))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot;
    use crate::state::BrandState;
    use ed25519_dalek::SigningKey;

    /// A generation of `state` into `dir`, its log (which a child never
    /// reads) in `logs`.
    fn job<'a>(
        dir: &'a std::path::Path,
        state: &'a BrandState,
        key: &'a SigningKey,
        logs: &tempfile::TempDir,
    ) -> GenerationJob<'a> {
        let store = crate::storage::DiskStore::open(logs.path()).unwrap();
        GenerationJob {
            chain: crate::snapshot::parts::Chain::after_generation(dir, state, 1),
            state,
            key,
            store: std::sync::Arc::new(store),
        }
    }

    #[test]
    fn a_child_stores_the_state_as_it_was_at_the_fork() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::from_bytes(&[3; 32]);
        let mut state = BrandState::new(7);
        state.seq = 0;
        let logs = tempfile::tempdir().unwrap();
        let child = spawn(&job(dir.path(), &state, &key, &logs)).unwrap();
        // The parent changes its state at once; the child's copy is not.
        state.name = "changed after the fork".into();
        child.wait().unwrap();
        let stored = snapshot::read(dir.path(), 7, &key.verifying_key())
            .unwrap()
            .expect("a snapshot was stored");
        assert_eq!(stored, BrandState::new(7));
    }

    #[test]
    fn a_child_that_cannot_store_says_so() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let key = SigningKey::from_bytes(&[3; 32]);
        // A file where the directory should be: the write fails.
        let state = BrandState::new(7);
        let logs = tempfile::tempdir().unwrap();
        let child = spawn(&job(file.path(), &state, &key, &logs)).unwrap();
        assert!(matches!(child.wait(), Err(ChildError::Failed(_))));
    }
}
