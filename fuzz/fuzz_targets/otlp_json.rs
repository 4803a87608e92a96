//! OTLP/JSON request bodies (`POST /v1/traces` with `application/json`): the conversion to
//! protobuf, then the same wire walk as protobuf bodies. Whatever JSON converts must be a
//! request the walker accepts, unless it is nested deeper than the walker's limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracekeeper::otlp::json::json_to_protobuf;
use tracekeeper::otlp::request::{RequestError, parse_request};
use tracekeeper::otlp::wire::WireError;

fuzz_target!(|data: &[u8]| {
    let Ok(protobuf) = json_to_protobuf(data) else {
        return;
    };
    match parse_request(&protobuf) {
        Ok(_) | Err(RequestError::Wire(WireError::TooDeep)) => {}
        Err(e) => panic!("converted JSON is refused by the wire walker: {e}"),
    }
});
