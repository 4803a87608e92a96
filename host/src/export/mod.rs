//! Exporters: where kept spans go (OTLP gRPC, OTLP HTTP, an OTLP JSON file, or stdout).
//!
//! The worker hands finished requests to a bounded queue ([`EXPORT_QUEUE_LEN`]); one task sends
//! them in order, retrying retryable failures with exponential backoff and jitter for as long as
//! they stay retryable (an outage of the target loses nothing); permanent errors drop the request
//! (counted). When the queue is full the worker waits, its own queue fills, and the receivers
//! answer retryable errors after a bounded wait (see [`crate::backpressure`]): backpressure
//! instead of loss. While every attempt fails the health endpoint turns 503 after
//! `extensions.health_check.exporter_unhealthy_after`.

pub mod builder;
mod debug;
mod file;
mod grpc;
mod http;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::config::{Compression, Config, DEFAULT_EXPORT_TIMEOUT};
use crate::telemetry::{Health, Metrics, OutcomeLabel};

/// Requests waiting to be sent.
pub const EXPORT_QUEUE_LEN: usize = 64;
/// First retry delay; doubles per attempt up to [`MAX_BACKOFF`].
pub const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
/// Longest delay between attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// One encoded `ExportTraceServiceRequest`.
#[derive(Debug)]
pub struct ExportRequest {
    /// The protobuf bytes.
    pub body: bytes::Bytes,
    /// Spans in it.
    pub spans: usize,
}

/// How one attempt failed.
#[derive(Debug)]
pub enum SendError {
    /// Worth retrying (unavailable, timeout, 429/502/503/504), maybe after a server-given delay.
    Retryable(String, Option<Duration>),
    /// Not worth retrying (bad request, unimplemented, ...).
    Permanent(String),
}

/// A configured exporter.
#[derive(Debug)]
pub enum Exporter {
    /// OTLP/gRPC.
    Grpc(Box<grpc::GrpcExporter>),
    /// OTLP/HTTP protobuf.
    Http(Box<http::HttpExporter>),
    /// OTLP JSON lines.
    File(file::FileExporter),
    /// Summary lines on stdout.
    Debug(debug::DebugExporter),
}

impl Exporter {
    /// Builds the exporter the config names (the config check guarantees exactly one).
    pub fn from_config(config: &Config) -> anyhow::Result<Exporter> {
        let e = &config.exporters;
        if let Some(o) = &e.otlp {
            return Ok(Exporter::Grpc(Box::new(grpc::GrpcExporter::new(o)?)));
        }
        if let Some(h) = &e.otlphttp {
            return Ok(Exporter::Http(Box::new(http::HttpExporter::new(h)?)));
        }
        if let Some(f) = &e.file {
            return Ok(Exporter::File(file::FileExporter::new(&f.path)?));
        }
        Ok(Exporter::Debug(debug::DebugExporter))
    }

    /// A short name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Exporter::Grpc(_) => "otlp",
            Exporter::Http(_) => "otlphttp",
            Exporter::File(_) => "file",
            Exporter::Debug(_) => "debug",
        }
    }

    /// Sends one request; `Ok` carries the spans the target rejected in a partial success.
    async fn send(&mut self, req: &ExportRequest) -> Result<u64, SendError> {
        match self {
            Exporter::Grpc(g) => g.send(&req.body).await,
            Exporter::Http(h) => h.send(&req.body).await,
            Exporter::File(f) => f.send(&req.body).map(|()| 0),
            Exporter::Debug(d) => d.send(&req.body).map(|()| 0),
        }
    }
}

/// Starts the export task; returns the queue's sender and the task handle (which ends when
/// every sender is dropped and the queue is drained).
pub fn spawn(
    mut exporter: Exporter,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
) -> (mpsc::Sender<ExportRequest>, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<ExportRequest>(EXPORT_QUEUE_LEN);
    let handle = tokio::spawn(async move {
        while let Some(req) = rx.recv().await {
            let mut backoff = INITIAL_BACKOFF;
            let mut attempt: u32 = 1;
            loop {
                let result = exporter.send(&req).await;
                // The failing period is about reaching the target: a permanent error is an
                // answer (the request is dropped and counted), so it ends the period too.
                health.export_attempt(!matches!(result, Err(SendError::Retryable(..))));
                match result {
                    Ok(rejected) => {
                        // A partial success: the target took the request but refused some
                        // spans (permanently, per the OTLP spec).
                        let rejected = rejected.min(req.spans as u64);
                        if rejected > 0 {
                            metrics.drop_spans("export_rejected", rejected);
                        }
                        metrics.spans_exported.inc_by(req.spans as u64 - rejected);
                        metrics
                            .export_requests
                            .get_or_create(&OutcomeLabel { outcome: "success" })
                            .inc();
                        break;
                    }
                    Err(SendError::Retryable(why, after)) => {
                        metrics.export_retries.inc();
                        let wait = after.unwrap_or(backoff).min(MAX_BACKOFF);
                        tracing::warn!(
                            exporter = exporter.name(),
                            attempt,
                            spans = req.spans,
                            "export failed, retrying in {wait:?}: {why}"
                        );
                        tokio::time::sleep(jitter(wait)).await;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        attempt = attempt.saturating_add(1);
                    }
                    Err(SendError::Permanent(why)) => {
                        tracing::error!(
                            exporter = exporter.name(),
                            attempt,
                            spans = req.spans,
                            "export failed, dropping the request: {why}"
                        );
                        metrics.drop_spans("export_failed", req.spans as u64);
                        metrics
                            .export_requests
                            .get_or_create(&OutcomeLabel { outcome: "failed" })
                            .inc();
                        break;
                    }
                }
            }
        }
    });
    (tx, handle)
}

/// Adds up to ±20% of random jitter to a delay so retrying clients do not move in lockstep.
fn jitter(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.subsec_nanos())
        .unwrap_or(0);
    let factor = 0.8 + 0.4 * f64::from(nanos % 1000) / 1000.0;
    d.mul_f64(factor)
}

/// The per-request timeout of an exporter.
pub(crate) fn timeout_or_default(t: Option<Duration>) -> Duration {
    t.unwrap_or(DEFAULT_EXPORT_TIMEOUT)
}

/// zstd level of exported bodies (zstd's fast default).
const ZSTD_LEVEL: i32 = 3;

/// An export request body compressed as configured, for both OTLP exporters. gzip runs at level
/// 1: at level 6 (tonic's fixed level, which the gRPC exporter used before it framed its
/// messages itself) gzip cost 0.48x the prost floor per exported span with zlib-rs, at level 1
/// 0.09x (criterion `hot_path` `export/gzip6`, BENCHMARKS.md).
pub(crate) fn compress(
    body: &bytes::Bytes,
    compression: Compression,
) -> Result<bytes::Bytes, String> {
    match compression {
        Compression::Gzip => {
            let mut enc = flate2::write::GzEncoder::new(
                Vec::with_capacity(body.len() / 4),
                flate2::Compression::fast(),
            );
            std::io::Write::write_all(&mut enc, body)
                .and_then(|()| enc.finish())
                .map(bytes::Bytes::from)
                .map_err(|e| format!("gzip: {e}"))
        }
        Compression::Zstd => zstd::bulk::compress(body, ZSTD_LEVEL)
            .map(bytes::Bytes::from)
            .map_err(|e| format!("zstd: {e}")),
        Compression::None => Ok(body.clone()),
    }
}
