//! The counting sink: an OTLP/gRPC receiver that counts the spans it gets, by span id, and
//! records when each trace's spans arrived.
//!
//! Requests are taken as raw bytes and split with tracekeeper's wire walker (no prost decode),
//! so the sink costs little of the machine the measured process shares with it. Spans whose ids
//! the [workload](crate::workload) did not generate are counted as foreign.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::watch;
use tonic::Status;
use tonic::body::Body;
use tonic::codec::CompressionEncoding;
use tonic::server::{Grpc, NamedService, UnaryService};
use tracekeeper::otlp::codec::{EXPORT_PATH, RawCodec};
use tracekeeper::otlp::request::parse_request;

use crate::workload::{span_index, trace_index};

/// Most span indexes tracked one by one (one byte each); spans beyond count as untracked.
pub const MAX_TRACKED_SPANS: u64 = 1 << 26;
/// Largest request the sink accepts.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// What the sink has seen since the last reset.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    /// Receipts per span index (saturating).
    seen: Vec<u8>,
    /// Per trace index: latest arrival (ns since the sink's epoch) + 1; 0 = not seen.
    trace_arrival: Vec<u64>,
    /// Distinct generated spans received.
    pub distinct: u64,
    /// Receipts of a span already received.
    pub duplicates: u64,
    /// Spans whose ids the workload did not generate, or beyond [`MAX_TRACKED_SPANS`].
    pub foreign: u64,
    /// Requests that were not valid OTLP.
    pub malformed: u64,
}

impl Tally {
    /// Was span `index` received?
    pub fn has_span(&self, index: u64) -> bool {
        self.seen.get(index as usize).is_some_and(|&n| n > 0)
    }

    /// When the last span of trace `index` arrived (ns since the sink's epoch).
    pub fn trace_arrival(&self, index: u64) -> Option<u64> {
        self.trace_arrival
            .get(index as usize)
            .and_then(|&t| t.checked_sub(1))
    }

    /// Trace indexes seen, with their last arrival.
    pub fn traces(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.trace_arrival
            .iter()
            .enumerate()
            .filter(|(_, t)| **t > 0)
            .map(|(i, t)| (i as u64, t - 1))
    }

    fn record(&mut self, trace: Option<u64>, span: Option<u64>, at: u64) {
        let (Some(t), Some(s)) = (trace, span) else {
            self.foreign += 1;
            return;
        };
        if s >= MAX_TRACKED_SPANS {
            self.foreign += 1;
            return;
        }
        let s = s as usize;
        if self.seen.len() <= s {
            self.seen.resize((s + 1).next_power_of_two(), 0);
        }
        if self.seen[s] == 0 {
            self.distinct += 1;
        } else {
            self.duplicates += 1;
        }
        self.seen[s] = self.seen[s].saturating_add(1);
        let t = t as usize;
        if t < self.seen.len() {
            if self.trace_arrival.len() <= t {
                self.trace_arrival.resize((t + 1).next_power_of_two(), 0);
            }
            self.trace_arrival[t] = self.trace_arrival[t].max(at + 1);
        }
    }
}

/// The sink's shared state.
#[derive(Debug)]
struct Shared {
    epoch: Instant,
    tally: Mutex<Tally>,
    spans: AtomicU64,
}

impl Shared {
    fn tally(&self) -> MutexGuard<'_, Tally> {
        match self.tally.lock() {
            Ok(t) => t,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

/// A running sink.
#[derive(Debug)]
pub struct Sink {
    shared: Arc<Shared>,
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Sink {
    /// Starts a sink on `addr` (port 0 for any), with arrival times counted from `epoch`.
    pub async fn start(addr: SocketAddr, epoch: Instant) -> anyhow::Result<Sink> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            epoch,
            tally: Mutex::new(Tally::default()),
            spans: AtomicU64::new(0),
        });
        let (stop, mut stopped) = watch::channel(false);
        let svc = SinkService {
            shared: Arc::clone(&shared),
        };
        let task = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .tcp_nodelay(true)
                .add_service(svc)
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    async move {
                        let _ = stopped.wait_for(|s| *s).await;
                    },
                )
                .await?;
            Ok(())
        });
        Ok(Sink {
            shared,
            addr,
            stop,
            task,
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Spans received since the last reset (generated or not).
    pub fn spans(&self) -> u64 {
        self.shared.spans.load(Ordering::Relaxed)
    }

    /// A copy of the tally.
    pub fn tally(&self) -> Tally {
        self.shared.tally().clone()
    }

    /// Forgets everything received.
    pub fn reset(&self) {
        *self.shared.tally() = Tally::default();
        self.shared.spans.store(0, Ordering::Relaxed);
    }

    /// Stops serving.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        self.task.await?
    }
}

#[derive(Debug, Clone)]
struct SinkService {
    shared: Arc<Shared>,
}

impl NamedService for SinkService {
    const NAME: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
}

#[derive(Clone)]
struct Export(Arc<Shared>);

impl UnaryService<Bytes> for Export {
    type Response = Bytes;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<tonic::Response<Bytes>, Status>> + Send>,
    >;

    fn call(&mut self, request: tonic::Request<Bytes>) -> Self::Future {
        let shared = Arc::clone(&self.0);
        Box::pin(async move {
            let body = request.into_inner();
            let at = shared.epoch.elapsed().as_nanos() as u64;
            let ids: Vec<(Option<u64>, Option<u64>)> = match parse_request(&body) {
                Ok(p) => p
                    .spans
                    .iter()
                    .map(|s| {
                        (
                            trace_index(&s.info.trace_id.0),
                            span_index(&s.info.span_id.0),
                        )
                    })
                    .collect(),
                Err(e) => {
                    shared.tally().malformed += 1;
                    return Err(Status::invalid_argument(e.to_string()));
                }
            };
            shared.spans.fetch_add(ids.len() as u64, Ordering::Relaxed);
            let mut tally = shared.tally();
            for (t, s) in ids {
                tally.record(t, s, at);
            }
            // An empty ExportTraceServiceResponse encodes to no bytes.
            Ok(tonic::Response::new(Bytes::new()))
        })
    }
}

impl<B> tower_service::Service<http::Request<B>> for SinkService
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Infallible>> + Send>,
    >;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != EXPORT_PATH {
            return Box::pin(async move {
                Ok(Status::unimplemented("only TraceService/Export is served").into_http())
            });
        }
        let shared = Arc::clone(&self.shared);
        Box::pin(async move {
            let mut grpc = Grpc::new(RawCodec)
                .accept_compressed(CompressionEncoding::Gzip)
                .max_decoding_message_size(MAX_MESSAGE_BYTES);
            Ok(grpc.unary(Export(shared), req).await)
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn tally_counts_distinct_duplicate_and_foreign() {
        let mut t = Tally::default();
        t.record(Some(0), Some(0), 10);
        t.record(Some(0), Some(1), 20);
        t.record(Some(0), Some(1), 30);
        t.record(None, Some(2), 30);
        t.record(Some(1), Some(MAX_TRACKED_SPANS), 30);
        assert_eq!((t.distinct, t.duplicates, t.foreign), (2, 1, 2));
        assert!(t.has_span(1) && !t.has_span(2));
        assert_eq!(t.trace_arrival(0), Some(30));
        assert_eq!(t.trace_arrival(1), None);
        assert_eq!(t.traces().count(), 1);
    }
}
