//! OTLP/protobuf request bodies (`POST /v1/traces` and gRPC `Export`): the wire walker that
//! checks and splits them, the span views built from what it accepts, and the export encoding of
//! accepted spans with tags appended.
//!
//! Beyond "no panic": whatever the walker accepts must also be accepted by prost (a stricter
//! downstream decoder must never choke on what tracekeeper forwards), the views built from it
//! must read back whole and equal the views built from the attributes the checking walk picked
//! (what the receivers do), and the re-encoded export request must decode with every span.
#![no_main]

use libfuzzer_sys::fuzz_target;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use tracekeeper::export::builder::ExportBuilder;
use tracekeeper::otlp::request::{parse_request, parse_request_with};
use tracekeeper::otlp::view::{Interest, ViewBuilder};
use tracekeeper::tags::TraceTags;
use tracekeeper_abi::{Completeness, ThresholdOp};

fuzz_target!(|data: &[u8]| {
    let Ok(parsed) = parse_request(data) else {
        return;
    };
    // What a guest interested in everything sees, or one that names a few keys.
    let interest = if data.len() % 2 == 0 {
        Interest::new(&[], &[], true, true, true, true)
    } else {
        let keys = ["service.name".to_string(), "k".to_string(), String::new()];
        Interest::new(&keys, &keys, false, false, true, false)
    };
    let mut view = ViewBuilder::new();
    for s in &parsed.spans {
        let group = &parsed.groups[s.group];
        view.add(&interest, group, s.bytes, &s.info);
        if let Err(e) = Span::decode(s.bytes) {
            panic!("accepted span does not decode with prost: {e}");
        }
    }
    let n = view.span_count();
    assert_eq!(n, parsed.spans.len());
    let Ok(picked) = parse_request_with(data, &interest) else {
        panic!("a request accepted without an interest is refused with one");
    };
    let mut from_picks = ViewBuilder::new();
    for s in &picked.spans {
        let group = &picked.groups[s.group];
        from_picks.add_picked(&interest, group, s.bytes, &s.info, picked.picks_of(s), |_| true);
    }
    assert_eq!(
        from_picks.as_bytes(),
        view.as_bytes(),
        "views from the picked attributes"
    );
    let batch = view.into_bytes();
    match tracekeeper_fuzz::walk_batch(&batch) {
        Ok(spans) => assert_eq!(spans, n, "span records in the view"),
        Err(e) => panic!("a view built by the host does not read back: {e}"),
    }

    let tags = TraceTags::new(
        "fuzz".into(),
        Some(Completeness::Incomplete),
        vec!["root".into()],
        ThresholdOp::Raise(1 << 55),
        false,
        vec![("x".into(), "y".into())],
    );
    let mut out = ExportBuilder::new();
    for (i, s) in parsed.spans.iter().enumerate() {
        out.add(&parsed.groups[s.group], s.bytes, &tags, i % 3 == 0);
    }
    let encoded = out.finish();
    match ExportTraceServiceRequest::decode(encoded.as_slice()) {
        Ok(req) => {
            let spans: usize = req
                .resource_spans
                .iter()
                .flat_map(|r| &r.scope_spans)
                .map(|s| s.spans.len())
                .sum();
            assert_eq!(spans, n, "spans in the export request");
        }
        Err(e) => panic!("the export request does not decode: {e}"),
    }
});
