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
        }
    }
}
