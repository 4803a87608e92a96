//! gzip request bodies (`Content-Encoding: gzip` on OTLP/HTTP): the bounded inflater never
//! returns more than its limit, whatever the stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracekeeper::receiver::gzip::{GunzipError, gunzip_limited};

/// Inflation limit used here (small, so bombs are cut early and runs stay fast).
const LIMIT: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    // The first byte varies the limit, so the boundary itself is explored.
    let Some((&first, body)) = data.split_first() else {
        return;
    };
    let limit = LIMIT >> (first % 16);
    match gunzip_limited(body, limit) {
        Ok(out) => assert!(out.len() <= limit),
        Err(GunzipError::TooLarge(l)) => assert_eq!(l, limit),
        Err(GunzipError::Corrupt(_)) => {}
    }
});
