//! A test guest for the host's fault handling. For each span in a batch, by span name:
//! `print` writes to stdout and stderr, `trap` panics (a wasm trap), anything else is fine.
//! Every trace of a batch is decided at once as sampled by policy `noisy`.
#![cfg(target_arch = "wasm32")]
#![allow(unsafe_code)] // the code wit-bindgen generates

use tracekeeper_abi::{
    BatchReader, Completeness, Decision, DecisionWriter, Record, ThresholdOp, TraceId,
};

wit_bindgen::generate!({ world: "sampler-guest", path: "../../../wit" });

use exports::tracekeeper::sampler::sampler::{Guest, Interest};

struct Noisy;

fn empty() -> Vec<u8> {
    DecisionWriter::new().finish(0)
}

impl Guest for Noisy {
    fn configure(_config: String) -> Result<Interest, String> {
        Ok(Interest {
            span_attributes: vec![],
            resource_attributes: vec![],
            all_span_attributes: false,
            all_resource_attributes: false,
            links: false,
            events: false,
        })
    }

    fn ingest(batch: Vec<u8>, _now: u64) -> Result<Vec<u8>, String> {
        let mut traces: Vec<TraceId> = Vec::new();
        for rec in BatchReader::new(&batch).map_err(|e| e.to_string())? {
            if let Record::Span(s) = rec.map_err(|e| e.to_string())? {
                match s.name {
                    "print" => {
                        println!("noisy guest: hello on stdout");
                        eprintln!("noisy guest: hello on stderr");
                    }
                    "trap" => panic!("noisy guest: trapping as asked"),
                    _ => {}
                }
                if !traces.contains(&s.fixed.trace_id) {
                    traces.push(s.fixed.trace_id);
                }
            }
        }
        let mut w = DecisionWriter::new();
        for t in traces {
            w.push(
                t,
                Decision::Sampled,
                Completeness::Complete,
                ThresholdOp::Keep,
                "noisy",
                [],
                &[],
            );
        }
        Ok(w.finish(0))
    }

    fn tick(_now: u64) -> Result<Vec<u8>, String> {
        Ok(empty())
    }

    fn decide_now(_ids: Vec<u8>, _now: u64) -> Result<Vec<u8>, String> {
        Ok(empty())
    }

    fn flush(_now: u64) -> Result<Vec<u8>, String> {
        Ok(empty())
    }
}

export!(Noisy);
