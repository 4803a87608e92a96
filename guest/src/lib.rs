//! The default tracekeeper sampler: tail-sampling policies, completeness tagging and decisions.
//!
//! The logic is a plain Rust library ([`Sampler`]) so it can be tested natively; compiled for
//! `wasm32` it is also the `sharded-sampler-guest` component (see `component.rs`), which delegates every
//! call of the WIT `sampler` interface (and of the optional `shard` interface) to one
//! [`Sampler`]. The guest does no I/O: the host passes the configuration, the span views and the
//! clock, and receives decision buffers.

pub mod completeness;
pub mod config;
pub mod interest;
pub mod policy;
pub mod sampler;
pub mod schedule;
pub mod shard;
pub mod threshold;
pub mod trace;
pub mod verdict;

// The generated component-model glue (lifting and lowering across the canonical ABI) is the only
// `unsafe` code of the crate; the code written here is safe.
#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)]
mod component;

pub use config::{
    CompletenessConfig, DecisionCacheConfig, PolicyConfig, ProcessorsConfig, TailSamplingConfig,
};
pub use interest::Interest;
pub use sampler::Sampler;
