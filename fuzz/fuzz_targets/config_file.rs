//! The configuration file (`Config::parse`: `${VAR}` expansion, YAML, the collector-shaped
//! sections, the checks). Runs without a network: the endpoints a fuzzed file names are resolved,
//! and must not be looked up over DNS.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracekeeper::config::Config;

fuzz_target!(|data: &[u8]| {
    tracekeeper_fuzz::isolate_from_network();
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = Config::parse(text) {
        let _ = config.host_tail_sampling();
        let _ = config.guest_json();
    }
});
