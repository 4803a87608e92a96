//! tracekeeper: a tail-sampling processor for OpenTelemetry traces whose sampling logic runs as
//! a WebAssembly component. This library is the host: OTLP in and out, the trace buffer, the
//! wasmtime runtime for the guest, and the host's own telemetry.
//!
//! Feature `runtime` (default) builds everything. Without it the library is the parts that read
//! bytes from outside without running a guest (OTLP wire walker, views, JSON, config, gzip), which
//! is what the fuzz targets (`fuzz/`) link, so that they do not compile wasmtime.

#[cfg(feature = "runtime")]
pub mod app;
pub mod arena;
pub mod auth;
pub mod backpressure;
pub mod buffer;
#[cfg(feature = "runtime")]
pub mod clock;
pub mod completeness_metrics;
pub mod config;
pub mod export;
#[cfg(feature = "runtime")]
pub mod guest;
pub mod otlp;
pub mod receiver;
pub mod shard;
pub mod shutdown;
pub mod tags;
pub mod telemetry;
pub mod tls;
pub mod trim;
#[cfg(feature = "runtime")]
pub mod worker;
