//! Framing: a 4-byte big-endian length, then one protobuf message.
//!
//! tokio-util's `LengthDelimitedCodec` checks the announced length against
//! the limit before it reserves any buffer, so a hostile length prefix
//! cannot make us allocate.
use tokio_util::codec::LengthDelimitedCodec;

/// The codec both ends use, refusing frames over `max_frame_bytes`.
pub fn frame_codec(max_frame_bytes: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_length(4)
        .big_endian()
        .max_frame_length(max_frame_bytes)
        .new_codec()
}

/// True if a codec error means "frame over the limit" (as opposed to I/O).
pub fn is_frame_too_large(err: &std::io::Error) -> bool {
    err.kind() == std::io::ErrorKind::InvalidData
}
