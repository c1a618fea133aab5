//! Arbitrary bytes, fed in arbitrary chunks, to the daemon's frame codec
//! (`cardd::codec::frame_codec(64 KiB)`), every frame decoded as a
//! `ClientMessage`. Input layout and invariants: `checks::check_frame_input`.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "common/checks.rs"]
mod checks;

#[global_allocator]
static ALLOC: checks::TrackingAlloc = checks::TrackingAlloc;

fuzz_target!(|data: &[u8]| {
    checks::check_frame_input(data);
});
