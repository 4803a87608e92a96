//! Backpressure: how the receivers learn that the pipeline cannot take more spans, and what they
//! answer instead of waiting forever or dropping silently.
//!
//! Two things make the pipeline "full":
//! - the trace buffer is at `num_traces` or `memory_limit_mib` and `block_on_overflow` is on:
//!   the worker raises the [`Pressure`] flag after each batch and the receivers refuse new
//!   requests at once;
//! - a worker's queue stays full for [`INGEST_QUEUE_WAIT`] (the worker itself is blocked, e.g.
//!   on a full export queue while the exporter's target is down);
//! - the request bodies queued for the workers already hold [`MAX_QUEUED_BYTES`] (queues are
//!   bounded in requests, and a request may be 64 MiB: this bounds their memory).
//!
//! Either way a request is refused as a whole, before any of its spans is queued, with a
//! retryable answer: gRPC `UNAVAILABLE` with a `google.rpc.RetryInfo` detail, HTTP 503 with
//! `Retry-After`. OTLP clients retry those, so nothing is lost silently.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use tokio::sync::mpsc;

use crate::shard::ShardStates;
use crate::telemetry::{Metrics, ReasonLabel};

/// Longest wait for room on the worker's queue before a request is refused as retryable.
pub const INGEST_QUEUE_WAIT: Duration = Duration::from_secs(1);
/// The delay a refused client is asked to wait (gRPC `RetryInfo`, HTTP `Retry-After`).
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Most bytes of request bodies queued for the workers at once (a request is always let in when
/// nothing is queued, whatever its size).
pub const MAX_QUEUED_BYTES: usize = 256 << 20;

/// The bytes of request bodies queued for the workers, bounded.
#[derive(Debug)]
pub struct QueuedBytes {
    used: AtomicUsize,
    limit: usize,
}

/// A request body's place in [`QueuedBytes`], given back when dropped (when the last worker is
/// done with the request).
#[derive(Debug)]
pub struct BodyTicket {
    owner: Arc<QueuedBytes>,
    bytes: usize,
}

impl Drop for BodyTicket {
    fn drop(&mut self) {
        self.owner.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

impl QueuedBytes {
    /// A bound of `limit` bytes.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(QueuedBytes {
            used: AtomicUsize::new(0),
            limit,
        })
    }

    /// Bytes queued now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    /// Takes room for a body of `bytes`, unless that would pass the limit (a body is always let
    /// in when nothing is queued).
    pub fn try_acquire(self: &Arc<Self>, bytes: usize) -> Option<BodyTicket> {
        let mut used = self.used.load(Ordering::Acquire);
        loop {
            if used != 0 && used.saturating_add(bytes) > self.limit {
                return None;
            }
            match self.used.compare_exchange_weak(
                used,
                used.saturating_add(bytes),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    return Some(BodyTicket {
                        owner: Arc::clone(self),
                        bytes,
                    });
                }
                Err(now) => used = now,
            }
        }
    }
}

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

/// One message for one worker's queue.
#[derive(Debug)]
pub struct Delivery<'a, T> {
    /// The worker (index in [`ShardStates`]).
    pub shard: u32,
    /// Its queue.
    pub tx: &'a mpsc::Sender<T>,
    /// Its "full" flag.
    pub pressure: &'a Pressure,
    /// The message.
    pub msg: T,
}

/// Queues each message for its worker, all or none, unless the pipeline is full: refused at
/// once while any target's `pressure` is raised, or after [`INGEST_QUEUE_WAIT`] without room on
/// every target queue. Room is reserved on every queue (in the given order, so two requests
/// never wait on each other) before anything is sent, so a refused request left nothing behind
/// and the client's retry duplicates nothing. Refusals are counted in
/// `tracekeeper_requests_refused_total{reason}`.
pub async fn enqueue<T>(
    deliveries: Vec<Delivery<'_, T>>,
    metrics: &Metrics,
    states: &ShardStates,
) -> Result<(), Refusal> {
    let refused = |reason: &'static str| {
        metrics
            .requests_refused
            .get_or_create(&ReasonLabel { reason })
            .inc();
        Refusal::Busy
    };
    if deliveries.iter().any(|d| d.pressure.is_full()) {
        return Err(refused("buffer_full"));
    }
    let (targets, msgs): (Vec<(u32, &mpsc::Sender<T>)>, Vec<T>) = deliveries
        .into_iter()
        .map(|d| ((d.shard, d.tx), d.msg))
        .unzip();
    let reserved = tokio::time::timeout(INGEST_QUEUE_WAIT, async {
        let mut permits = Vec::with_capacity(targets.len());
        for (_, tx) in &targets {
            permits.push(tx.reserve().await?);
        }
        Ok::<_, mpsc::error::SendError<()>>(permits)
    })
    .await;
    let result = match reserved {
        Err(_) => Err(refused("queue_full")),
        Ok(Err(_)) => Err(Refusal::Closed),
        Ok(Ok(permits)) => {
            for (permit, msg) in permits.into_iter().zip(msgs) {
                permit.send(msg);
            }
            Ok(())
        }
    };
    for (shard, tx) in &targets {
        states.set_ingest_queue(metrics, *shard, tx.max_capacity() - tx.capacity());
    }
    result
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
    use crate::shard::ShardStates;

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

    fn one<'a>(
        tx: &'a mpsc::Sender<u32>,
        pressure: &'a Pressure,
        msg: u32,
    ) -> Vec<Delivery<'a, u32>> {
        vec![Delivery {
            shard: 0,
            tx,
            pressure,
            msg,
        }]
    }

    #[tokio::test]
    async fn refuses_while_full_and_when_the_queue_stays_full() {
        let metrics = Metrics::new();
        let states = ShardStates::new(1);
        let pressure = Pressure::default();
        let (tx, mut rx) = mpsc::channel(1);
        let send = |msg| enqueue(one(&tx, &pressure, msg), &metrics, &states);
        assert_eq!(send(1).await, Ok(()));
        pressure.set_full(true);
        assert_eq!(send(2).await, Err(Refusal::Busy));
        pressure.set_full(false);
        // The queue (capacity 1) holds 1: the bounded wait ends in a refusal.
        assert_eq!(send(3).await, Err(Refusal::Busy));
        assert_eq!(rx.recv().await, Some(1));
        drop(rx);
        assert_eq!(send(4).await, Err(Refusal::Closed));
        let text = metrics.render();
        assert!(text.contains("tracekeeper_requests_refused_total{reason=\"buffer_full\"} 1"));
        assert!(text.contains("tracekeeper_requests_refused_total{reason=\"queue_full\"} 1"));
    }

    #[test]
    fn queued_bytes_are_bounded_and_given_back() {
        let q = QueuedBytes::new(100);
        // Anything fits when nothing is queued.
        let big = q.try_acquire(500).unwrap();
        assert!(q.try_acquire(1).is_none());
        drop(big);
        assert_eq!(q.used(), 0);
        let a = q.try_acquire(60).unwrap();
        let b = q.try_acquire(40).unwrap();
        assert!(q.try_acquire(1).is_none(), "at the limit");
        drop(a);
        let c = q.try_acquire(50).unwrap();
        assert_eq!(q.used(), 90);
        drop((b, c));
        assert_eq!(q.used(), 0);
    }

    #[tokio::test]
    async fn a_request_for_several_workers_is_queued_whole_or_not_at_all() {
        let metrics = Metrics::new();
        let states = ShardStates::new(2);
        let (p0, p1) = (Pressure::default(), Pressure::default());
        let (tx0, mut rx0) = mpsc::channel(4);
        let (tx1, mut rx1) = mpsc::channel(1);
        let both = |a, b| {
            vec![
                Delivery {
                    shard: 0,
                    tx: &tx0,
                    pressure: &p0,
                    msg: a,
                },
                Delivery {
                    shard: 1,
                    tx: &tx1,
                    pressure: &p1,
                    msg: b,
                },
            ]
        };
        assert_eq!(enqueue(both(1, 2), &metrics, &states).await, Ok(()));
        // Worker 1's queue is full: nothing of the next request reaches worker 0 either.
        assert_eq!(
            enqueue(both(3, 4), &metrics, &states).await,
            Err(Refusal::Busy)
        );
        // Worker 1 full by its flag: refused at once, nothing queued.
        assert_eq!(rx1.recv().await, Some(2));
        p1.set_full(true);
        assert_eq!(
            enqueue(both(5, 6), &metrics, &states).await,
            Err(Refusal::Busy)
        );
        assert_eq!(rx0.recv().await, Some(1));
        assert!(
            rx0.try_recv().is_err(),
            "refused requests left nothing behind"
        );
        assert!(rx1.try_recv().is_err());
        // The ingest queue gauge is the sum over the workers.
        p1.set_full(false);
        assert_eq!(enqueue(both(7, 8), &metrics, &states).await, Ok(()));
        let text = metrics.render();
        assert!(
            text.contains("tracekeeper_queue_length{queue=\"ingest\"} 2"),
            "{text}"
        );
    }
}
