//! The OTLP receivers (gRPC and HTTP) and what they share: turning a request body into an
//! [`IngestBatch`](crate::worker::IngestBatch) for the worker, and the bounded gzip inflater.
//!
//! The servers and the ingest path need the guest runtime (feature `runtime`, on by default);
//! [`gzip`] does not, so the fuzz targets can build it without wasmtime.

pub mod gzip;

#[cfg(feature = "runtime")]
pub mod grpc;
#[cfg(feature = "runtime")]
pub mod http;
#[cfg(feature = "runtime")]
mod ingest;

#[cfg(feature = "runtime")]
pub use ingest::{Accepted, Ingest, IngestError};
