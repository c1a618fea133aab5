//! Standard output for the binaries (`cardd`, `terminal-sim`): a line at a
//! time, and a closed pipe (`cardd audit verify ... | head -1`) is not a
//! failure. The rest of the output is dropped quietly and the command
//! finishes its work (a checkpoint to save, a till's state, an exit code)
//! as it would have. Any other write error loses output: the command still
//! finishes its work, and `cardd` then exits non-zero ([`write_failed`]).
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

/// Set once standard output turned out to be a closed pipe.
static CLOSED: AtomicBool = AtomicBool::new(false);
/// Set once a write failed for another reason (a full disk, an I/O
/// error). `cardd` checks it; `terminal-sim` does not: a till's answer is
/// durable by then, and its exit code says what the daemon did.
static FAILED: AtomicBool = AtomicBool::new(false);

/// True once output was lost to a write error other than a closed pipe:
/// `cardd` then exits non-zero, so that `cmd > file` on a full disk is not
/// taken for a success.
pub fn write_failed() -> bool {
    FAILED.load(Ordering::Relaxed)
}

/// Writes one line to standard output; `program` names the binary in the
/// one message a write error other than a closed pipe gets.
pub fn print_line(program: &str, args: std::fmt::Arguments) {
    if CLOSED.load(Ordering::Relaxed) {
        return;
    }
    let mut out = std::io::stdout().lock();
    let written = out
        .write_fmt(args)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush());
    if let Err(e) = written {
        CLOSED.store(true, Ordering::Relaxed);
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            FAILED.store(true, Ordering::Relaxed);
            eprintln!("{program}: writing to standard output: {e}");
        }
    }
}
