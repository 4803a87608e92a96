//! A test guest built against a future version of the contract: `wit/tracekeeper.wit` here is
//! a copy of the real one with the package version changed to 2.0.0, so the component exports
//! `tracekeeper:sampler/sampler@2.0.0`. The host must refuse it with a message naming both
//! versions. Its functions do nothing useful: it is never run.
#![cfg(target_arch = "wasm32")]
#![allow(unsafe_code)] // the code wit-bindgen generates

wit_bindgen::generate!({ world: "sampler-guest", path: "wit" });

use exports::tracekeeper::sampler::sampler::{Guest, Interest};

struct V2;

impl Guest for V2 {
    fn configure(_config: String) -> Result<Interest, String> {
        Err("contract-v2 test guest: never meant to run".into())
    }
    fn ingest(_batch: Vec<u8>, _now: u64) -> Result<Vec<u8>, String> {
        Err("never meant to run".into())
    }
    fn tick(_now: u64) -> Result<Vec<u8>, String> {
        Err("never meant to run".into())
    }
    fn decide_now(_ids: Vec<u8>, _now: u64) -> Result<Vec<u8>, String> {
        Err("never meant to run".into())
    }
    fn flush(_now: u64) -> Result<Vec<u8>, String> {
        Err("never meant to run".into())
    }
}

export!(V2);
