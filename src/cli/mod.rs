//! The code of each `cardd` command. Everything that prints, draws progress
//! bars or chooses an exit code lives here, in the binary, not in the library.
pub mod admin;
pub mod audit;
pub mod backup;
pub mod brand;
pub mod changes;
pub mod holder;
pub mod issue_cards;
pub mod keys;
pub mod list;
pub mod report;
pub mod safety;
pub mod serve;

/// A single-threaded runtime for the commands that talk to a daemon once.
pub fn current_thread_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// Writes one line to standard output (see `cardd::stdout`).
pub fn print_line(args: std::fmt::Arguments) {
    cardd::stdout::print_line("cardd", args);
}

/// Prints text of whole lines through [`print_line`], without doubling its
/// last newline.
pub fn print_text(text: &str) {
    print_line(format_args!("{}", text.strip_suffix('\n').unwrap_or(text)));
}

/// The machine-readable code of a failure that happened on this side (no
/// refusal from the daemon): what `--json` prints as `"error"`.
pub fn failure_code(e: &anyhow::Error) -> &'static str {
    if let Some(c) = e.downcast_ref::<cardd::client::ConnectError>() {
        return match c.error {
            cardd::client::ClientError::Refused(_) => "SIGN_ON_REFUSED",
            _ => "CONNECTION_FAILED",
        };
    }
    if e.downcast_ref::<cardd::crypto::KeyFileError>().is_some() {
        return "KEY_FILE";
    }
    if e.downcast_ref::<clap::Error>().is_some() {
        return "USAGE";
    }
    if let Some(f) = e.downcast_ref::<Failure>() {
        return f.code;
    }
    "FAILED"
}

/// A failure on this side with the code `--json` prints for it: a mistake
/// in the command line found after parsing (a bad amount), an export that
/// does not verify.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    /// The code, e.g. `AMOUNT_OUT_OF_RANGE` or `USAGE`.
    pub code: &'static str,
    /// What is wrong, in words.
    pub message: String,
}

/// Parses the decimal amount given to `flag` in minor units; a negative,
/// malformed or over-precise amount is a [`Failure`].
pub fn amount_arg(flag: &str, text: &str, exponent: u32) -> Result<i64, Failure> {
    cardd::render::parse_amount(text, exponent).map_err(|e| Failure {
        code: if text.starts_with('-') {
            "AMOUNT_OUT_OF_RANGE"
        } else {
            "INVALID_ARGUMENT"
        },
        message: format!("{flag}: {e}"),
    })
}
