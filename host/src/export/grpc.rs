//! The OTLP/gRPC exporter (`exporters.otlp`): sends the encoded request bytes as they are,
//! over TLS (rustls, the `tls` keys of the collector's exporter) unless `tls.insecure` or an
//! `http://` endpoint asks for plaintext.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::PathAndQuery;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tonic::codec::CompressionEncoding;
use tonic::metadata::{MetadataKey, MetadataValue};
use tonic::transport::{Channel, Endpoint};

use super::{SendError, timeout_or_default};
use crate::config::{Compression, OtlpExporter};
use crate::otlp::codec::{EXPORT_PATH, RawCodec};
use crate::tls::{ALPN_H2, client_config, server_name};

/// Sends to one OTLP/gRPC endpoint over one HTTP/2 connection.
#[derive(Debug)]
pub struct GrpcExporter {
    channel: Channel,
    compression: Compression,
    timeout: Duration,
    headers: Vec<(
        MetadataKey<tonic::metadata::Ascii>,
        MetadataValue<tonic::metadata::Ascii>,
    )>,
}

impl GrpcExporter {
    /// Connects lazily to the configured endpoint.
    pub fn new(cfg: &OtlpExporter) -> anyhow::Result<Self> {
        // tonic is given an http:// URL in every case; TLS, when asked for, is done by the
        // connector below, so that every `tls` key (insecure_skip_verify among them) is honoured.
        let plaintext = cfg.tls.insecure || cfg.endpoint.starts_with("http://");
        let authority = cfg
            .endpoint
            .split_once("://")
            .map_or(cfg.endpoint.as_str(), |(_, rest)| rest);
        let url = format!("http://{authority}");
        let timeout = timeout_or_default(cfg.timeout);
        let endpoint = Endpoint::from_shared(url.clone())
            .map_err(|e| anyhow::anyhow!("exporters.otlp.endpoint: {url:?}: {e}"))?
            .tcp_nodelay(true)
            .connect_timeout(timeout)
            .timeout(timeout);
        let channel = if plaintext {
            endpoint.connect_lazy()
        } else {
            let host = endpoint.uri().host().unwrap_or_default().to_string();
            let config = client_config(&cfg.tls, "exporters.otlp.tls", &[ALPN_H2])?;
            let name = server_name(&cfg.tls, &host, "exporters.otlp.tls.server_name_override")?;
            endpoint.connect_with_connector_lazy(TlsConnect {
                config: Arc::new(config),
                name,
                timeout,
            })
        };
        let mut headers = Vec::new();
        for (k, v) in &cfg.headers {
            let key = MetadataKey::from_bytes(k.to_lowercase().as_bytes())
                .map_err(|e| anyhow::anyhow!("exporters.otlp.headers.{k}: {e}"))?;
            let value = MetadataValue::try_from(v.as_str())
                .map_err(|e| anyhow::anyhow!("exporters.otlp.headers.{k}: {e}"))?;
            headers.push((key, value));
        }
        Ok(GrpcExporter {
            channel,
            compression: cfg.compression,
            timeout,
            headers,
        })
    }

    /// One attempt.
    pub async fn send(&mut self, body: &Bytes) -> Result<u64, SendError> {
        let mut grpc = tonic::client::Grpc::new(self.channel.clone());
        match self.compression {
            Compression::Gzip => grpc = grpc.send_compressed(CompressionEncoding::Gzip),
            Compression::Zstd => grpc = grpc.send_compressed(CompressionEncoding::Zstd),
            Compression::None => {}
        }
        grpc = grpc
            .accept_compressed(CompressionEncoding::Gzip)
            .accept_compressed(CompressionEncoding::Zstd);
        grpc.ready()
            .await
            .map_err(|e| SendError::Retryable(format!("connecting: {e}"), None))?;
        let mut req = tonic::Request::new(body.clone());
        req.set_timeout(self.timeout);
        for (k, v) in &self.headers {
            req.metadata_mut().insert(k.clone(), v.clone());
        }
        let path = PathAndQuery::from_static(EXPORT_PATH);
        match grpc.unary(req, path, RawCodec).await {
            Ok(resp) => Ok(partial_success(resp.get_ref())),
            Err(status) => Err(classify(&status)),
        }
    }
}

/// Connects TCP, then TLS with the exporter's rustls config (ALPN h2), within a timeout.
#[derive(Clone)]
struct TlsConnect {
    config: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
    timeout: Duration,
}

impl tower_service::Service<http::Uri> for TlsConnect {
    type Response = TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let host = uri
            .host()
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(DEFAULT_TLS_PORT);
        let connector = tokio_rustls::TlsConnector::from(Arc::clone(&self.config));
        let name = self.name.clone();
        let timeout = self.timeout;
        Box::pin(async move {
            let connect = async {
                let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
                tcp.set_nodelay(true)?;
                Ok(TokioIo::new(connector.connect(name, tcp).await?))
            };
            tokio::time::timeout(timeout, connect).await.map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS connect timed out")
            })?
        })
    }
}

/// Port of an endpoint that names none.
const DEFAULT_TLS_PORT: u16 = 443;

/// Retryable codes as the OTLP spec lists them.
fn classify(status: &tonic::Status) -> SendError {
    use tonic::Code::*;
    let why = format!("{:?}: {}", status.code(), status.message());
    match status.code() {
        Cancelled | DeadlineExceeded | Aborted | OutOfRange | Unavailable | DataLoss
        | ResourceExhausted => SendError::Retryable(why, None),
        // The connection failed under the request (tonic reports UNKNOWN with the transport
        // error as its source): the target never answered, so sending again is safe.
        Unknown if std::error::Error::source(status).is_some() => SendError::Retryable(why, None),
        _ => SendError::Permanent(why),
    }
}

/// The spans an `ExportTraceServiceResponse` (protobuf) says were rejected, logged with the
/// target's message; 0 for a full success or a response that does not decode.
pub(crate) fn partial_success(resp: &[u8]) -> u64 {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
    use prost::Message;
    let Ok(r) = ExportTraceServiceResponse::decode(resp) else {
        return 0;
    };
    let Some(p) = r.partial_success else {
        return 0;
    };
    if p.rejected_spans > 0 || !p.error_message.is_empty() {
        tracing::warn!(
            rejected_spans = p.rejected_spans,
            "the exporter's endpoint rejected spans: {}",
            p.error_message
        );
    }
    u64::try_from(p.rejected_spans).unwrap_or(0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use opentelemetry_proto::tonic::collector::trace::v1::{
        ExportTracePartialSuccess, ExportTraceServiceResponse,
    };
    use prost::Message;

    use super::partial_success;

    #[test]
    fn partial_success_counts_the_rejected_spans() {
        let with = |rejected: i64, message: &str| {
            ExportTraceServiceResponse {
                partial_success: Some(ExportTracePartialSuccess {
                    rejected_spans: rejected,
                    error_message: message.into(),
                }),
            }
            .encode_to_vec()
        };
        assert_eq!(partial_success(&with(3, "bad ids")), 3);
        assert_eq!(partial_success(&with(0, "just a warning")), 0);
        assert_eq!(partial_success(&with(-1, "nonsense")), 0);
        assert_eq!(
            partial_success(&ExportTraceServiceResponse::default().encode_to_vec()),
            0
        );
        assert_eq!(partial_success(b""), 0);
        assert_eq!(partial_success(b"\xff\xff garbage"), 0);
    }
}
