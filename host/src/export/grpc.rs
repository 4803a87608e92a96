//! The OTLP/gRPC exporter (`exporters.otlp`): sends the encoded request bytes as they are.

use std::time::Duration;

use bytes::Bytes;
use http::uri::PathAndQuery;
use tonic::codec::CompressionEncoding;
use tonic::metadata::{MetadataKey, MetadataValue};
use tonic::transport::{Channel, Endpoint};

use super::{SendError, timeout_or_default};
use crate::config::{Compression, OtlpExporter};
use crate::otlp::codec::{EXPORT_PATH, RawCodec};

/// Sends to one OTLP/gRPC endpoint over one HTTP/2 connection.
#[derive(Debug)]
pub struct GrpcExporter {
    channel: Channel,
    gzip: bool,
    timeout: Duration,
    headers: Vec<(
        MetadataKey<tonic::metadata::Ascii>,
        MetadataValue<tonic::metadata::Ascii>,
    )>,
}

impl GrpcExporter {
    /// Connects lazily to the configured endpoint.
    pub fn new(cfg: &OtlpExporter) -> anyhow::Result<Self> {
        let url = if cfg.endpoint.contains("://") {
            cfg.endpoint.clone()
        } else {
            format!("http://{}", cfg.endpoint)
        };
        let timeout = timeout_or_default(cfg.timeout);
        let endpoint = Endpoint::from_shared(url.clone())
            .map_err(|e| anyhow::anyhow!("exporters.otlp.endpoint: {url:?}: {e}"))?
            .tcp_nodelay(true)
            .connect_timeout(timeout)
            .timeout(timeout);
        let mut headers = Vec::new();
        for (k, v) in &cfg.headers {
            let key = MetadataKey::from_bytes(k.to_lowercase().as_bytes())
                .map_err(|e| anyhow::anyhow!("exporters.otlp.headers.{k}: {e}"))?;
            let value = MetadataValue::try_from(v.as_str())
                .map_err(|e| anyhow::anyhow!("exporters.otlp.headers.{k}: {e}"))?;
            headers.push((key, value));
        }
        Ok(GrpcExporter {
            channel: endpoint.connect_lazy(),
            gzip: cfg.compression == Compression::Gzip,
            timeout,
            headers,
        })
    }

    /// One attempt.
    pub async fn send(&mut self, body: &Bytes) -> Result<(), SendError> {
        let mut grpc = tonic::client::Grpc::new(self.channel.clone());
        if self.gzip {
            grpc = grpc.send_compressed(CompressionEncoding::Gzip);
        }
        grpc = grpc.accept_compressed(CompressionEncoding::Gzip);
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
            Ok(resp) => {
                log_partial_success(resp.get_ref());
                Ok(())
            }
            Err(status) => Err(classify(&status)),
        }
    }
}

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

fn log_partial_success(resp: &Bytes) {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
    use prost::Message;
    if let Ok(r) = ExportTraceServiceResponse::decode(resp.as_ref())
        && let Some(p) = r.partial_success
        && (p.rejected_spans > 0 || !p.error_message.is_empty())
    {
        tracing::warn!(
            rejected_spans = p.rejected_spans,
            "the exporter's endpoint rejected spans: {}",
            p.error_message
        );
    }
}
