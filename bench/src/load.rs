//! The load generator: sends the workload's requests over OTLP/gRPC or OTLP/HTTP, on several
//! connections with one request in flight each (TCP_NODELAY set), at a target rate or as fast
//! as the receiver accepts, and records when each request was sent.
//!
//! Requests are numbered from 0 in the order they are handed out; the pacer schedules request
//! `k` at `k × spans_per_request ÷ rate` seconds after the start, so a slow receiver makes the
//! generator fall behind (the achieved rate is reported) rather than queue without bound.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tonic::transport::{Channel, Endpoint};
use tracekeeper::otlp::codec::{EXPORT_PATH, RawCodec};

use crate::workload::Workload;

/// Most connections the generator opens.
pub const MAX_CONNECTIONS: usize = 256;
/// Timeout of one request (a request that takes longer counts as failed).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Timeout for connecting.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    /// OTLP/gRPC (`TraceService/Export`).
    Grpc,
    /// OTLP/HTTP protobuf (`POST /v1/traces`).
    Http,
}

/// How to send.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// Receiver address.
    pub addr: SocketAddr,
    /// Transport.
    pub protocol: Protocol,
    /// Connections, each with one request in flight.
    pub connections: usize,
    /// Target spans per second; 0 = as fast as accepted.
    pub rate: f64,
    /// How long to send.
    pub duration: Duration,
}

/// One request sent.
#[derive(Debug, Clone, Copy)]
pub struct Sent {
    /// Request number.
    pub request: u64,
    /// When it was sent (ns since the run's epoch).
    pub at: u64,
    /// Whether the receiver accepted it.
    pub ok: bool,
}

/// What a load phase did.
#[derive(Debug, Clone, Default)]
pub struct LoadResult {
    /// Every request, sorted by number.
    pub sent: Vec<Sent>,
    /// Wall time from the first send to the last answer.
    pub elapsed: Duration,
    /// The first error seen, if any request failed.
    pub first_error: Option<String>,
}

impl LoadResult {
    /// Requests accepted.
    pub fn accepted(&self) -> u64 {
        self.sent.iter().filter(|s| s.ok).count() as u64
    }

    /// Requests refused or failed.
    pub fn failed(&self) -> u64 {
        self.sent.len() as u64 - self.accepted()
    }

    /// Send time of request `k` (ns since the epoch), if it was sent.
    pub fn send_time(&self, k: u64) -> Option<u64> {
        self.sent
            .binary_search_by_key(&k, |s| s.request)
            .ok()
            .map(|i| self.sent[i].at)
    }
}

/// One connection's client.
enum Client1 {
    Grpc(tonic::client::Grpc<Channel>),
    Http(Box<Client<HttpConnector, Full<Bytes>>>, http::Uri),
}

impl Client1 {
    async fn connect(spec: &LoadSpec) -> anyhow::Result<Self> {
        match spec.protocol {
            Protocol::Grpc => {
                let channel = Endpoint::from_shared(format!("http://{}", spec.addr))?
                    .tcp_nodelay(true)
                    .connect_timeout(CONNECT_TIMEOUT)
                    .timeout(REQUEST_TIMEOUT)
                    .connect()
                    .await
                    .with_context(|| format!("connecting to {} (OTLP/gRPC)", spec.addr))?;
                Ok(Client1::Grpc(tonic::client::Grpc::new(channel)))
            }
            Protocol::Http => {
                let mut connector = HttpConnector::new();
                connector.set_nodelay(true);
                connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
                let client = Client::builder(TokioExecutor::new())
                    .pool_max_idle_per_host(1)
                    .build(connector);
                let uri: http::Uri = format!("http://{}/v1/traces", spec.addr).parse()?;
                Ok(Client1::Http(Box::new(client), uri))
            }
        }
    }

    async fn send(&mut self, body: Bytes) -> Result<(), String> {
        match self {
            Client1::Grpc(grpc) => {
                grpc.ready().await.map_err(|e| format!("not ready: {e}"))?;
                let path = http::uri::PathAndQuery::from_static(EXPORT_PATH);
                grpc.unary(tonic::Request::new(body), path, RawCodec)
                    .await
                    .map(|_| ())
                    .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
            }
            Client1::Http(client, uri) => {
                let req = http::Request::post(uri.clone())
                    .header(http::header::CONTENT_TYPE, "application/x-protobuf")
                    .body(Full::new(body))
                    .map_err(|e| e.to_string())?;
                let resp = tokio::time::timeout(REQUEST_TIMEOUT, client.request(req))
                    .await
                    .map_err(|_| "timed out".to_string())?
                    .map_err(|e| e.to_string())?;
                let status = resp.status();
                // Read the whole answer so the connection can carry the next request.
                let _ = resp.into_body().collect().await;
                if status.is_success() {
                    Ok(())
                } else {
                    Err(format!("HTTP {status}"))
                }
            }
        }
    }
}

/// Live counts of a load that is still running (read by the soak's sampler).
#[derive(Debug, Default)]
pub struct Progress {
    /// Requests answered (accepted or not).
    pub sent: AtomicU64,
    /// Requests the receiver accepted.
    pub accepted: AtomicU64,
}

/// Sends the workload as `spec` says; `epoch` is the run's time origin.
pub async fn run(
    workload: Arc<Workload>,
    spec: &LoadSpec,
    epoch: Instant,
) -> anyhow::Result<LoadResult> {
    run_with_progress(workload, spec, epoch, Arc::new(Progress::default())).await
}

/// [`run`], counting answered and accepted requests in `progress` as they happen.
pub async fn run_with_progress(
    workload: Arc<Workload>,
    spec: &LoadSpec,
    epoch: Instant,
    progress: Arc<Progress>,
) -> anyhow::Result<LoadResult> {
    let connections = spec.connections.clamp(1, MAX_CONNECTIONS);
    let mut clients = Vec::with_capacity(connections);
    for _ in 0..connections {
        clients.push(Client1::connect(spec).await?);
    }
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let end = start + spec.duration;
    let per_request = if spec.rate > 0.0 {
        Some(Duration::from_secs_f64(
            workload.spans_per_request() as f64 / spec.rate,
        ))
    } else {
        None
    };
    let mut tasks = Vec::with_capacity(connections);
    for mut client in clients {
        let workload = Arc::clone(&workload);
        let next = Arc::clone(&next);
        let progress = Arc::clone(&progress);
        tasks.push(tokio::spawn(async move {
            let mut sent = Vec::new();
            let mut first_error = None;
            let mut buf = Vec::new();
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if let Some(step) = per_request {
                    let due = start + step.mul_f64(k as f64);
                    if due >= end {
                        break;
                    }
                    tokio::time::sleep_until(due.into()).await;
                } else if Instant::now() >= end {
                    break;
                }
                workload.encode_request(k, &mut buf);
                let body = Bytes::copy_from_slice(&buf);
                let at = epoch.elapsed().as_nanos() as u64;
                let r = client.send(body).await;
                if let Err(e) = &r
                    && first_error.is_none()
                {
                    first_error = Some(e.clone());
                }
                progress.sent.fetch_add(1, Ordering::Relaxed);
                if r.is_ok() {
                    progress.accepted.fetch_add(1, Ordering::Relaxed);
                }
                sent.push(Sent {
                    request: k,
                    at,
                    ok: r.is_ok(),
                });
            }
            (sent, first_error)
        }));
    }
    let mut result = LoadResult::default();
    for t in tasks {
        let (sent, err) = t.await?;
        result.sent.extend(sent);
        if result.first_error.is_none() {
            result.first_error = err;
        }
    }
    result.elapsed = start.elapsed();
    result.sent.sort_by_key(|s| s.request);
    Ok(result)
}
