//! The OTLP/gRPC exporter (`exporters.otlp`): sends the encoded request bytes as they are, in a
//! gRPC frame of its own (so that gzip runs at the level the host picks), over TLS (rustls, the
//! `tls` keys of the collector's exporter) unless `tls.insecure` or an `http://` endpoint asks
//! for plaintext.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tonic::transport::{Channel, Endpoint};

use super::{SendError, compress, timeout_or_default};
use crate::config::{Compression, OtlpExporter};
use crate::otlp::codec::EXPORT_PATH;
use crate::receiver::gzip::gunzip_limited;
use crate::tls::{ALPN_H2, client_config, server_name};

/// Sends to one OTLP/gRPC endpoint over one HTTP/2 connection.
#[derive(Debug)]
pub struct GrpcExporter {
    channel: Channel,
    compression: Compression,
    timeout: Duration,
    headers: Vec<(http::HeaderName, http::HeaderValue)>,
}

/// Headers the gRPC request itself sets, which `exporters.otlp.headers` may not (nor any
/// `grpc-` header).
const RESERVED_HEADERS: [&str; 3] = ["content-type", "te", "user-agent"];

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
            let key = http::HeaderName::from_bytes(k.to_lowercase().as_bytes())
                .map_err(|e| anyhow::anyhow!("exporters.otlp.headers.{k}: {e}"))?;
            if RESERVED_HEADERS.contains(&key.as_str())
                || key.as_str().starts_with("grpc-")
                || key.as_str().ends_with("-bin")
            {
                anyhow::bail!(
                    "exporters.otlp.headers.{k}: reserved by gRPC (binary `-bin` metadata is not \
                     supported either)"
                );
            }
            let value = http::HeaderValue::from_str(v)
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

    /// One attempt: the unary call `TraceService/Export` framed here (one message, compressed
    /// by [`compress`] when configured) rather than by tonic's client, whose gzip is fixed at
    /// level 6; the channel still does the connection, TLS, the origin and the user agent.
    pub async fn send(&mut self, body: &Bytes) -> Result<u64, SendError> {
        let encoding = self.compression.encoding();
        let message = compress(body, self.compression).map_err(SendError::Permanent)?;
        let framed = frame(&message, encoding.is_some()).map_err(SendError::Permanent)?;
        let mut req = http::Request::post(EXPORT_PATH)
            .version(http::Version::HTTP_2)
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .header(http::header::TE, "trailers")
            .header("grpc-timeout", grpc_timeout(self.timeout))
            .header("grpc-accept-encoding", "gzip,zstd");
        if let Some(encoding) = encoding {
            req = req.header("grpc-encoding", encoding);
        }
        for (k, v) in &self.headers {
            req = req.header(k, v);
        }
        let req = req
            .body(tonic::body::Body::new(Full::new(framed)))
            .map_err(|e| SendError::Permanent(format!("building the request: {e}")))?;
        let mut channel = self.channel.clone();
        std::future::poll_fn(|cx| tower_service::Service::poll_ready(&mut channel, cx))
            .await
            .map_err(|e| SendError::Retryable(format!("connecting: {e}"), None))?;
        let resp = tower_service::Service::call(&mut channel, req)
            .await
            .map_err(|e| classify(&tonic::Status::from_error(Box::new(e))))?;
        if resp.status() != http::StatusCode::OK {
            return Err(classify(&status_of_http(resp.status())));
        }
        // A trailers-only response carries the status in its headers.
        let mut answered = false;
        if let Some(status) = grpc_status(resp.headers()) {
            if status.code() != tonic::Code::Ok {
                return Err(classify(&status));
            }
            answered = true;
        }
        let response_encoding = resp
            .headers()
            .get("grpc-encoding")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let collected = http_body_util::Limited::new(resp.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| classify(&tonic::Status::from_error(e)))?;
        if let Some(status) = collected.trailers().and_then(grpc_status) {
            if status.code() != tonic::Code::Ok {
                return Err(classify(&status));
            }
            answered = true;
        }
        if !answered {
            // Not a gRPC answer (an HTTP/2 server that is not a gRPC endpoint, say): as tonic's
            // client does, an error rather than a success that would lose the spans unseen.
            return Err(classify(&tonic::Status::internal(
                "the response carried no grpc-status",
            )));
        }
        let data = collected.to_bytes();
        Ok(unframe(&data, response_encoding.as_deref())
            .map(|message| partial_success(&message))
            .unwrap_or(0))
    }
}

/// Largest response read: an `ExportTraceServiceResponse` is a few bytes, or an error message.
const MAX_RESPONSE_BYTES: usize = 64 << 10;

/// The gRPC length-prefixed message: a compressed flag, the length (big-endian u32), the bytes.
fn frame(message: &[u8], compressed: bool) -> Result<Bytes, String> {
    let len = u32::try_from(message.len())
        .map_err(|_| format!("a message of {} bytes is too large for gRPC", message.len()))?;
    let mut out = Vec::with_capacity(message.len() + 5);
    out.push(u8::from(compressed));
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(message);
    Ok(Bytes::from(out))
}

/// The first message of a response body, decompressed if its flag says so (gzip or zstd, as
/// the response's `grpc-encoding` names); `None` when there is none or it does not read.
fn unframe(data: &[u8], encoding: Option<&str>) -> Option<Vec<u8>> {
    let (&flag, rest) = data.split_first()?;
    let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    let message = rest.get(4..4usize.checked_add(len)?)?;
    if flag == 0 {
        return Some(message.to_vec());
    }
    match encoding {
        Some("gzip") => gunzip_limited(message, MAX_RESPONSE_BYTES).ok(),
        Some("zstd") => zstd::bulk::decompress(message, MAX_RESPONSE_BYTES).ok(),
        _ => None,
    }
}

/// The status in `grpc-status` and `grpc-message`, if there is one. Read here rather than with
/// tonic's `Status::from_header_map`, which panics on a malformed `grpc-status-details-bin`
/// header, and the target's headers are outside data.
fn grpc_status(headers: &http::HeaderMap) -> Option<tonic::Status> {
    let code = tonic::Code::from_bytes(headers.get("grpc-status")?.as_bytes());
    let message = headers
        .get("grpc-message")
        .map(|m| String::from_utf8_lossy(m.as_bytes()).into_owned())
        .unwrap_or_default();
    Some(tonic::Status::new(code, message))
}

/// The `grpc-timeout` header value of a deadline (milliseconds, at most the 8 digits gRPC
/// allows).
fn grpc_timeout(timeout: Duration) -> String {
    format!("{}m", timeout.as_millis().min(99_999_999))
}

/// The gRPC status of a response whose HTTP status is not 200, as gRPC maps them.
fn status_of_http(status: http::StatusCode) -> tonic::Status {
    use http::StatusCode as H;
    let code = match status {
        H::BAD_REQUEST => tonic::Code::Internal,
        H::UNAUTHORIZED => tonic::Code::Unauthenticated,
        H::FORBIDDEN => tonic::Code::PermissionDenied,
        H::NOT_FOUND => tonic::Code::Unimplemented,
        H::TOO_MANY_REQUESTS | H::BAD_GATEWAY | H::SERVICE_UNAVAILABLE | H::GATEWAY_TIMEOUT => {
            tonic::Code::Unavailable
        }
        _ => tonic::Code::Unknown,
    };
    tonic::Status::new(code, format!("HTTP status {status}"))
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

    use super::{frame, grpc_status, partial_success, status_of_http, unframe};

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

    /// A message framed here reads back; compressed answers are decompressed by the encoding
    /// their response names; truncated or unknown ones read as nothing (0 rejected), never a
    /// panic.
    #[test]
    fn frames_read_back_and_bad_ones_read_as_nothing() {
        let framed = frame(b"message", false).unwrap();
        assert_eq!(&framed[..5], &[0, 0, 0, 0, 7]);
        assert_eq!(unframe(&framed, None).as_deref(), Some(&b"message"[..]));
        let gzip = crate::export::compress(
            &bytes::Bytes::from_static(b"message"),
            crate::config::Compression::Gzip,
        )
        .unwrap();
        let zstd = crate::export::compress(
            &bytes::Bytes::from_static(b"message"),
            crate::config::Compression::Zstd,
        )
        .unwrap();
        for (body, encoding) in [(gzip, "gzip"), (zstd, "zstd")] {
            let framed = frame(&body, true).unwrap();
            assert_eq!(framed[0], 1);
            assert_eq!(
                unframe(&framed, Some(encoding)).as_deref(),
                Some(&b"message"[..])
            );
            assert_eq!(unframe(&framed, Some("snappy")), None);
            assert_eq!(unframe(&framed, None), None);
        }
        for cut in 0..framed.len() {
            assert_eq!(unframe(&framed[..cut], None), None, "cut {cut}");
        }
        assert_eq!(unframe(&[1, 0, 0, 0, 3, 1, 2, 3], Some("gzip")), None);
    }

    /// HTTP statuses map to gRPC codes as gRPC specifies, so that `classify` retries the ones a
    /// proxy answers when the target is away.
    #[test]
    fn http_statuses_map_to_grpc_codes() {
        use http::StatusCode as H;
        use tonic::Code;
        for (http, code) in [
            (H::BAD_REQUEST, Code::Internal),
            (H::UNAUTHORIZED, Code::Unauthenticated),
            (H::FORBIDDEN, Code::PermissionDenied),
            (H::NOT_FOUND, Code::Unimplemented),
            (H::TOO_MANY_REQUESTS, Code::Unavailable),
            (H::BAD_GATEWAY, Code::Unavailable),
            (H::SERVICE_UNAVAILABLE, Code::Unavailable),
            (H::GATEWAY_TIMEOUT, Code::Unavailable),
            (H::INTERNAL_SERVER_ERROR, Code::Unknown),
        ] {
            assert_eq!(status_of_http(http).code(), code, "{http}");
        }
        assert!(matches!(
            super::classify(&status_of_http(H::SERVICE_UNAVAILABLE)),
            crate::export::SendError::Retryable(..)
        ));
        assert!(matches!(
            super::classify(&status_of_http(H::NOT_FOUND)),
            crate::export::SendError::Permanent(..)
        ));
    }

    /// The status headers are read without tonic's parser, which panics on a malformed
    /// `grpc-status-details-bin`: a target's headers must not crash the exporter.
    #[test]
    fn status_headers_are_read_without_panicking() {
        let mut h = http::HeaderMap::new();
        assert!(grpc_status(&h).is_none());
        h.insert("grpc-status", http::HeaderValue::from_static("14"));
        h.insert("grpc-message", http::HeaderValue::from_static("busy"));
        h.insert(
            "grpc-status-details-bin",
            http::HeaderValue::from_static("not base64 !!"),
        );
        let status = grpc_status(&h).unwrap();
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert_eq!(status.message(), "busy");
        h.insert("grpc-status", http::HeaderValue::from_static("nonsense"));
        assert_eq!(grpc_status(&h).unwrap().code(), tonic::Code::Unknown);
    }
}
