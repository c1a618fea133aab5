//! Arbitrary bytes verified as a ledger export (`cardd::audit::verify_export`)
//! trusting the key of the server that wrote the seed export. Invariants:
//! `checks::check_export_input`.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "common/checks.rs"]
mod checks;

#[global_allocator]
static ALLOC: checks::TrackingAlloc = checks::TrackingAlloc;

fuzz_target!(|data: &[u8]| {
    let _ = checks::check_export_input(data);
});
