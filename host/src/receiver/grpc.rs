//! The OTLP/gRPC receiver: `opentelemetry.proto.collector.trace.v1.TraceService/Export`.
//!
//! The service is written out (rather than generated) so that it can take the request as raw
//! bytes through [`RawCodec`] and hand them to the wire walker without a protobuf decode.
//! With `tls`, connections are TLS (tonic's rustls); with `auth`, a call without the bearer
//! token is answered UNAUTHENTICATED before its message is read.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use tonic::body::Body;
use tonic::codec::CompressionEncoding;
use tonic::server::{Grpc, NamedService, UnaryService};

use super::deadline::{FirstBytes, HTTP2_PREFACE_LEN};
use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use tonic::{Code, Status};

use super::{Ingest, IngestError};
use crate::auth::BearerAuth;
use crate::config::{Extensions, GrpcProtocol};
use crate::otlp::codec::{EXPORT_PATH, RawCodec};
use crate::otlp::json::response;
use crate::shutdown::Shutdown;

/// The trace service, routing only `Export`.
#[derive(Debug, Clone)]
pub struct TraceService {
    ingest: Ingest,
    max_message_bytes: usize,
    auth: Option<Arc<BearerAuth>>,
}

/// Longest a TLS handshake may take before the connection is dropped.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest HTTP/2 frame a client may send (SETTINGS_MAX_FRAME_SIZE; HTTP/2's default is
/// 16 KiB). h2 reads a frame into one buffer, so with 16 KiB frames a 36 KiB request of 100
/// spans took five `recvfrom` calls, and with 64 KiB frames three; clients that honour the
/// setting (h2-based ones: tonic, the OpenTelemetry Rust SDK) send a request of up to this
/// size as one frame. It is also the most a connection's read buffer holds for one frame.
/// Measured in BENCHMARKS.md ("Changes measured so far").
pub const GRPC_MAX_FRAME_BYTES: u32 = 64 << 10;

/// What the OTLP/gRPC server needs beyond the pipeline: the message limit, TLS, authentication.
#[derive(Debug, Clone)]
pub struct GrpcSettings {
    /// Largest message, bytes after decompression (larger: RESOURCE_EXHAUSTED).
    pub max_message_bytes: usize,
    /// TLS, when configured.
    pub tls: Option<ServerTlsConfig>,
    /// The bearer-token check, when configured.
    pub auth: Option<Arc<BearerAuth>>,
    /// Time allowed from connecting to the HTTP/2 preface.
    pub header_timeout: Duration,
    /// Time allowed for a request to arrive whole and be answered.
    pub request_timeout: Duration,
}

impl GrpcSettings {
    /// The settings of `receivers.otlp.protocols.grpc` (reads the TLS and token files).
    pub fn from_config(g: &GrpcProtocol, extensions: &Extensions) -> anyhow::Result<Self> {
        const KEY: &str = "receivers.otlp.protocols.grpc.tls";
        let tls = match &g.tls {
            None => None,
            Some(t) => {
                // Checked with rustls first, for messages that name the key.
                crate::tls::server_config(t, KEY, &[crate::tls::ALPN_H2])?;
                let read = |p: &std::path::Path, k: &str| {
                    std::fs::read(p).map_err(|e| anyhow::anyhow!("{KEY}.{k}: {}: {e}", p.display()))
                };
                let mut config = ServerTlsConfig::new()
                    .identity(Identity::from_pem(
                        read(&t.cert_file, "cert_file")?,
                        read(&t.key_file, "key_file")?,
                    ))
                    .timeout(TLS_HANDSHAKE_TIMEOUT);
                if let Some(ca) = &t.client_ca_file {
                    config =
                        config.client_ca_root(Certificate::from_pem(read(ca, "client_ca_file")?));
                }
                Some(config)
            }
        };
        Ok(GrpcSettings {
            max_message_bytes: g.max_recv_msg_size_mib.saturating_mul(1 << 20),
            header_timeout: g
                .read_header_timeout
                .unwrap_or(crate::config::DEFAULT_READ_HEADER_TIMEOUT),
            request_timeout: g
                .read_timeout
                .unwrap_or(crate::config::DEFAULT_READ_TIMEOUT),
            tls,
            auth: super::auth_for(g.auth.as_ref(), extensions)?,
        })
    }
}

impl NamedService for TraceService {
    const NAME: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
}

#[derive(Clone)]
struct Export(Ingest);

impl UnaryService<Bytes> for Export {
    type Response = Bytes;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<tonic::Response<Bytes>, Status>> + Send>,
    >;

    fn call(&mut self, request: tonic::Request<Bytes>) -> Self::Future {
        let ingest = self.0.clone();
        Box::pin(async move {
            let body = request.into_inner();
            match ingest.submit(body, "grpc").await {
                Ok(a) => Ok(tonic::Response::new(Bytes::from(
                    response(a.rejected, &a.message).encode_to_vec(),
                ))),
                Err(IngestError::Malformed(m)) => Err(Status::invalid_argument(m)),
                Err(IngestError::Unavailable) => {
                    Err(Status::unavailable(IngestError::Unavailable.to_string()))
                }
                Err(IngestError::Busy) => Err(crate::backpressure::grpc_status(
                    crate::backpressure::Refusal::Busy,
                )),
            }
        })
    }
}

impl<B> tower_service::Service<http::Request<B>> for TraceService
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
        if let Some(auth) = &self.auth {
            let header = req.headers().get(http::header::AUTHORIZATION);
            if !auth.check(header.map(http::HeaderValue::as_bytes)) {
                return Box::pin(async move {
                    Ok(Status::unauthenticated("missing or invalid bearer token").into_http())
                });
            }
        }
        if req.uri().path() != EXPORT_PATH {
            return Box::pin(async move {
                Ok(Status::unimplemented("only TraceService/Export is served").into_http())
            });
        }
        let ingest = self.ingest.clone();
        let max = self.max_message_bytes;
        Box::pin(async move {
            let mut grpc = Grpc::new(RawCodec)
                .accept_compressed(CompressionEncoding::Gzip)
                .send_compressed(CompressionEncoding::Gzip)
                .max_decoding_message_size(max);
            let mut resp = grpc.unary(Export(ingest), req).await;
            too_large_is_resource_exhausted(&mut resp);
            Ok(resp)
        })
    }
}

/// tonic answers OUT_OF_RANGE for a message over the size limit; the OTLP spec's answer for
/// "too large" is RESOURCE_EXHAUSTED (which tonic already uses for decompression bombs).
fn too_large_is_resource_exhausted(resp: &mut http::Response<Body>) {
    let h = resp.headers_mut();
    let is_out_of_range = h
        .get(Status::GRPC_STATUS)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        == Some(Code::OutOfRange as i32);
    if is_out_of_range {
        h.insert(
            Status::GRPC_STATUS,
            http::HeaderValue::from(Code::ResourceExhausted as i32),
        );
    }
}

/// Serves OTLP/gRPC on `addr` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    ingest: Ingest,
    settings: GrpcSettings,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    let svc = TraceService {
        ingest,
        max_message_bytes: settings.max_message_bytes,
        auth: settings.auth,
    };
    let tls = settings.tls.is_some();
    let header_timeout = settings.header_timeout;
    tracing::info!(?addr, tls, "OTLP/gRPC receiver listening");
    // A request that does not arrive whole in time (a body that stalls) is cancelled; a
    // connection that never sends its preface is closed.
    let mut builder = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .max_frame_size(Some(GRPC_MAX_FRAME_BYTES))
        .timeout(settings.request_timeout);
    if let Some(config) = settings.tls {
        builder = builder
            .tls_config(config)
            .map_err(|e| anyhow::anyhow!("receivers.otlp.protocols.grpc.tls: {e}"))?;
    }
    builder
        .add_service(svc)
        .serve_with_incoming_shutdown(
            tokio_stream::StreamExt::map(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                move |conn| {
                    conn.map(|tcp| {
                        let _ = tcp.set_nodelay(true);
                        FirstBytes::new(tcp, header_timeout, HTTP2_PREFACE_LEN)
                    })
                },
            ),
            shutdown.wait(),
        )
        .await?;
    Ok(())
}
