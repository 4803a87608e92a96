//! tracekeeper: a tail-sampling processor for OpenTelemetry traces whose sampling logic runs as
//! a WebAssembly component. This library is the host: OTLP in and out, the trace buffer, the
//! wasmtime runtime for the guest, and the host's own telemetry.

pub mod app;
pub mod buffer;
pub mod completeness_metrics;
pub mod config;
pub mod export;
pub mod guest;
pub mod otlp;
pub mod receiver;
pub mod shutdown;
pub mod tags;
pub mod telemetry;
pub mod worker;
