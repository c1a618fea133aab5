//! Sequences of requests, raw protobuf bytes and structured operations with
//! extreme numbers, applied to a brand's state machine (`cardd::state::apply`)
//! with every invariant checked after every step and a replay of all written
//! records at the end. Input layout and invariants: `checks::check_request_input`.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "common/checks.rs"]
mod checks;

#[global_allocator]
static ALLOC: checks::TrackingAlloc = checks::TrackingAlloc;

fuzz_target!(|data: &[u8]| {
    checks::check_request_input(data);
});
