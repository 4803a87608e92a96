//! The floor: CPU per span of a prost decode + encode of the same requests, in one thread.
//!
//! This is what any OTLP processor that decodes its input into structs and encodes its output
//! pays at least; tracekeeper's end-to-end CPU per span is reported as a ratio to it.

use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

use crate::procstat::thread_cpu;

/// Fewest passes over the requests per measurement.
pub const MIN_PASSES: usize = 3;

/// CPU per span of the floor's two parts.
#[derive(Debug, Clone, Copy)]
pub struct Floor {
    /// prost decode only, ns of CPU per span.
    pub decode_ns: f64,
    /// prost decode + encode, ns of CPU per span.
    pub decode_encode_ns: f64,
    /// Spans processed per measurement.
    pub spans: u64,
}

/// Decodes (and encodes) `requests` until `min_time` of wall time passed and at least
/// [`MIN_PASSES`] passes were made, on the calling thread; measures that thread's CPU time.
pub fn measure(
    requests: &[Vec<u8>],
    spans_per_request: u64,
    min_time: Duration,
) -> anyhow::Result<Floor> {
    let run = |encode: bool| -> anyhow::Result<(Duration, u64)> {
        let cpu0 = thread_cpu()?;
        let wall0 = Instant::now();
        let mut spans = 0u64;
        let mut passes = 0usize;
        let mut out = Vec::new();
        while passes < MIN_PASSES || wall0.elapsed() < min_time {
            for r in requests {
                let req = ExportTraceServiceRequest::decode(&r[..])?;
                if encode {
                    out.clear();
                    req.encode(&mut out)?;
                    std::hint::black_box(&out);
                } else {
                    std::hint::black_box(&req);
                }
                spans += spans_per_request;
            }
            passes += 1;
        }
        Ok((thread_cpu()? - cpu0, spans))
    };
    let (decode_cpu, decode_spans) = run(false)?;
    let (both_cpu, both_spans) = run(true)?;
    Ok(Floor {
        decode_ns: decode_cpu.as_nanos() as f64 / decode_spans.max(1) as f64,
        decode_encode_ns: both_cpu.as_nanos() as f64 / both_spans.max(1) as f64,
        spans: both_spans,
    })
}
