//! The span-view layout a guest reads (`tracekeeper_abi::BatchReader`): any bytes, walked
//! completely, give records or an error, never a panic or a runaway loop.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = tracekeeper_fuzz::walk_batch(data);
});
