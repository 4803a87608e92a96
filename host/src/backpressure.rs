//! Backpressure: how the receivers learn that the pipeline cannot take more spans, and what they
//! answer instead of waiting forever or dropping silently.
//!
//! Two things make the pipeline "full":
//! - the trace buffer is at `num_traces` or `memory_limit_mib` and `block_on_overflow` is on:
//!   the worker raises the [`Pressure`] flag after each batch and the receivers refuse new
//!   requests at once;
//! - the worker's queue stays full for [`INGEST_QUEUE_WAIT`] (the worker itself is blocked, e.g.
//!   on a full export queue while the exporter's target is down).
//!
//! Either way a request is refused as a whole, before any of its spans is queued, with a
//! retryable answer: gRPC `UNAVAILABLE` with a `google.rpc.RetryInfo` detail, HTTP 503 with
//! `Retry-After`. OTLP clients retry those, so nothing is lost silently.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::SendTimeoutError;

use crate::telemetry::{Metrics, QueueLabel, ReasonLabel};

/// Longest wait for room on the worker's queue before a request is refused as retryable.
pub const INGEST_QUEUE_WAIT: Duration = Duration::from_secs(1);
/// The delay a refused client is asked to wait (gRPC `RetryInfo`, HTTP `Retry-After`).
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

/// The "full" flag the worker raises and the receivers check.
#[derive(Debug, Default)]
pub struct Pressure {
    full: AtomicBool,
}

impl Pressure {
    /// Raises (`true`) or lowers the flag.
    pub fn set_full(&self, full: bool) {
        self.full.store(full, Ordering::Relaxed);
    }

    /// Is the buffer full (with `block_on_overflow`)?
    pub fn is_full(&self) -> bool {
        self.full.load(Ordering::Relaxed)
    }
}

/// Why a request was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Full for now: the client should retry after [`RETRY_AFTER`].
    #[error("tracekeeper is at its buffer limit; retry later")]
    Busy,
    /// The worker is gone (shutting down).
    #[error("tracekeeper is shutting down")]
    Closed,
}

/// Queues `msg` for the worker unless the pipeline is full: refused at once while `pressure` is
/// raised, or after [`INGEST_QUEUE_WAIT`] without room on the queue. Refusals are counted in
/// `tracekeeper_requests_refused_total{reason}`.
pub async fn enqueue<T>(
    tx: &mpsc::Sender<T>,
    pressure: &Pressure,
    metrics: &Metrics,
    msg: T,
) -> Result<(), Refusal> {
    let refused = |reason: &'static str| {
        metrics
            .requests_refused
            .get_or_create(&ReasonLabel { reason })
            .inc();
        Refusal::Busy
    };
    if pressure.is_full() {
        return Err(refused("buffer_full"));
    }
    let result = tx.send_timeout(msg, INGEST_QUEUE_WAIT).await;
    metrics
        .queue_length
        .get_or_create(&QueueLabel { queue: "ingest" })
        .set((tx.max_capacity() - tx.capacity()) as i64);
    match result {
        Ok(()) => Ok(()),
        Err(SendTimeoutError::Timeout(_)) => Err(refused("queue_full")),
        Err(SendTimeoutError::Closed(_)) => Err(Refusal::Closed),
    }
}

/// `google.rpc.Status`, carried in `grpc-status-details-bin`.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<ProtoAny>,
}

/// `google.protobuf.Any`.
#[derive(Clone, PartialEq, prost::Message)]
struct ProtoAny {
    #[prost(string, tag = "1")]
    type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

/// `google.rpc.RetryInfo`.
#[derive(Clone, PartialEq, prost::Message)]
struct RetryInfo {
    #[prost(message, optional, tag = "1")]
    retry_delay: Option<ProtoDuration>,
}

/// `google.protobuf.Duration`.
#[derive(Clone, PartialEq, prost::Message)]
struct ProtoDuration {
    #[prost(int64, tag = "1")]
    seconds: i64,
    #[prost(int32, tag = "2")]
    nanos: i32,
}

/// The gRPC answer to a refusal: `UNAVAILABLE`, with `RetryInfo` ([`RETRY_AFTER`]) when busy.
pub fn grpc_status(refusal: Refusal) -> tonic::Status {
    let message = refusal.to_string();
    match refusal {
        Refusal::Closed => tonic::Status::unavailable(message),
        Refusal::Busy => {
            let retry = RetryInfo {
                retry_delay: Some(ProtoDuration {
                    seconds: i64::try_from(RETRY_AFTER.as_secs()).unwrap_or(i64::MAX),
                    nanos: i32::try_from(RETRY_AFTER.subsec_nanos()).unwrap_or(0),
                }),
            };
            let status = RpcStatus {
                code: tonic::Code::Unavailable as i32,
                message: message.clone(),
                details: vec![ProtoAny {
                    type_url: "type.googleapis.com/google.rpc.RetryInfo".into(),
                    value: retry.encode_to_vec(),
                }],
            };
            tonic::Status::with_details(
                tonic::Code::Unavailable,
                message,
                Bytes::from(status.encode_to_vec()),
            )
        }
    }
}

/// The `Retry-After` header value (whole seconds, at least 1) of an HTTP 503 refusal.
pub fn retry_after_header() -> String {
    RETRY_AFTER.as_secs().max(1).to_string()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn busy_status_carries_retry_info() {
        let s = grpc_status(Refusal::Busy);
        assert_eq!(s.code(), tonic::Code::Unavailable);
        let status = RpcStatus::decode(s.details()).unwrap();
        assert_eq!(status.code, tonic::Code::Unavailable as i32);
        let any = &status.details[0];
        assert!(any.type_url.ends_with("google.rpc.RetryInfo"));
        let info = RetryInfo::decode(any.value.as_slice()).unwrap();
        let delay = info.retry_delay.unwrap();
        assert_eq!(delay.seconds as u64, RETRY_AFTER.as_secs());
        assert!(grpc_status(Refusal::Closed).details().is_empty());
    }

    #[tokio::test]
    async fn refuses_while_full_and_when_the_queue_stays_full() {
        let metrics = Metrics::new();
        let pressure = Pressure::default();
        let (tx, mut rx) = mpsc::channel(1);
        assert_eq!(enqueue(&tx, &pressure, &metrics, 1).await, Ok(()));
        pressure.set_full(true);
        assert_eq!(
            enqueue(&tx, &pressure, &metrics, 2).await,
            Err(Refusal::Busy)
        );
        pressure.set_full(false);
        // The queue (capacity 1) holds 1: the bounded wait ends in a refusal.
        assert_eq!(
            enqueue(&tx, &pressure, &metrics, 3).await,
            Err(Refusal::Busy)
        );
        assert_eq!(rx.recv().await, Some(1));
        drop(rx);
        assert_eq!(
            enqueue(&tx, &pressure, &metrics, 4).await,
            Err(Refusal::Closed)
        );
        let text = metrics.render();
        assert!(text.contains("tracekeeper_requests_refused_total{reason=\"buffer_full\"} 1"));
        assert!(text.contains("tracekeeper_requests_refused_total{reason=\"queue_full\"} 1"));
    }
}
