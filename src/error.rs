//! The typed refusal every layer returns: an error code from the protocol and
//! a human message. A refusal never changes state.
use crate::pb::ErrorCode;

/// A refusal with its protocol error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct Refusal {
    /// The machine-readable code sent to the client.
    pub code: ErrorCode,
    /// A short human explanation (never containing secrets or full card numbers).
    pub message: String,
}

impl Refusal {
    /// A refusal with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Refusal {
            code,
            message: message.into(),
        }
    }
}

/// Shorthand for returning a refusal from a function.
pub fn refuse<T>(code: ErrorCode, message: impl Into<String>) -> Result<T, Refusal> {
    Err(Refusal::new(code, message))
}

impl From<Refusal> for crate::pb::Error {
    fn from(r: Refusal) -> Self {
        crate::pb::Error {
            code: r.code as i32,
            message: r.message,
            active_address: String::new(),
        }
    }
}

/// An error and its chain of causes on one line (`a: b: c`), for logs and
/// reports: library errors keep their causes as `source()`, not in their
/// own text.
pub fn causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
