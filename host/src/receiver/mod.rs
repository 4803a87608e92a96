//! The OTLP receivers (gRPC and HTTP) and what they share: turning a request body into an
//! [`IngestBatch`](crate::worker::IngestBatch) for the worker, and the bounded gzip inflater.
//!
//! The servers and the ingest path need the guest runtime (feature `runtime`, on by default);
//! [`gzip`] does not, so the fuzz targets can build it without wasmtime.

#[cfg(feature = "runtime")]
pub mod deadline;
pub mod gzip;

#[cfg(feature = "runtime")]
pub mod grpc;
#[cfg(feature = "runtime")]
pub mod http;
#[cfg(feature = "runtime")]
mod ingest;

#[cfg(feature = "runtime")]
pub use ingest::{Accepted, Ingest, IngestError, WorkerQueue};

/// The bearer-token check a receiver's `auth` asks for (the config check guarantees the
/// extension it names is configured).
#[cfg(feature = "runtime")]
fn auth_for(
    auth: Option<&crate::config::ReceiverAuth>,
    extensions: &crate::config::Extensions,
) -> anyhow::Result<Option<std::sync::Arc<crate::auth::BearerAuth>>> {
    let (Some(_), Some(cfg)) = (auth, &extensions.bearertokenauth) else {
        return Ok(None);
    };
    Ok(Some(std::sync::Arc::new(
        crate::auth::BearerAuth::from_config(cfg)?,
    )))
}
