//! The decision layout the host reads from the guest (`tracekeeper_abi::DecisionReader`),
//! walked as the worker does: records, their missing and extra entries, the metrics section,
//! and the tags built from each record applied to a span.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracekeeper::tags::TraceTags;
use tracekeeper_abi::DecisionReader;

/// An encoded span with a tracestate, for the threshold rewrite.
const SPAN: &[u8] = b"\x0a\x10AAAAAAAAAAAAAAAA\x12\x08BBBBBBBB\x1a\x0dot=th:8;rv:01";

fuzz_target!(|data: &[u8]| {
    let Ok(reader) = DecisionReader::new(data) else {
        return;
    };
    let announced = reader.len();
    let mut read = 0;
    for record in reader.clone() {
        let Ok(r) = record else {
            return;
        };
        read += 1;
        let missing: Vec<String> = r.missing().map(str::to_owned).collect();
        assert!(missing.len() <= r.missing_count());
        let extra = r
            .extra_attributes()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let tags = TraceTags::new(
            r.policy.to_owned(),
            Some(r.completeness),
            missing,
            r.threshold,
            false,
            extra,
        );
        let mut out = Vec::new();
        tags.write_span(&mut out, SPAN, read % 2 == 0);
        assert!(out.len() > SPAN.len());
    }
    assert!(read <= announced);
    let _ = reader.into_metrics().map(|m| {
        m.map(|m| {
            assert_eq!(m.queues().count(), m.queue_count());
            assert_eq!(m.roots().count(), m.root_count());
        })
    });
});
