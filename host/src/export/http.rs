//! The OTLP/HTTP exporter (`exporters.otlphttp`): POSTs protobuf to `<endpoint>/v1/traces`,
//! over TLS (rustls, the exporter's `tls` keys) for an `https://` endpoint.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::{SendError, compress, timeout_or_default};
use crate::config::{Compression, OtlpHttpExporter};
use crate::tls::client_config;

/// Largest response body read (error details are logged, nothing more is needed).
const MAX_RESPONSE_BYTES: usize = 64 << 10;

/// Sends to one OTLP/HTTP endpoint.
#[derive(Debug)]
pub struct HttpExporter {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    url: http::Uri,
    compression: Compression,
    timeout: Duration,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl HttpExporter {
    /// Builds the client for the configured URL.
    pub fn new(cfg: &OtlpHttpExporter) -> anyhow::Result<Self> {
        let url_text = cfg.url();
        let url: http::Uri = url_text
            .parse()
            .map_err(|e| anyhow::anyhow!("exporters.otlphttp.endpoint: {url_text:?}: {e}"))?;
        let mut headers = Vec::new();
        for (k, v) in &cfg.headers {
            let name = HeaderName::try_from(k.as_str())
                .map_err(|e| anyhow::anyhow!("exporters.otlphttp.headers.{k}: {e}"))?;
            let value = HeaderValue::try_from(v.as_str())
                .map_err(|e| anyhow::anyhow!("exporters.otlphttp.headers.{k}: {e}"))?;
            headers.push((name, value));
        }
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.enforce_http(false);
        // hyper-rustls sets the ALPN protocols itself (and refuses a config that has some).
        let tls = if url.scheme_str() == Some("https") {
            client_config(&cfg.tls, "exporters.otlphttp.tls", &[])?
        } else {
            // Never used for http:// URLs; no certificates needed.
            rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth()
        };
        let mut builder = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http();
        if let Some(name) = &cfg.tls.server_name_override {
            let name = crate::tls::server_name(
                &cfg.tls,
                name,
                "exporters.otlphttp.tls.server_name_override",
            )?;
            builder =
                builder.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name));
        }
        let connector = builder
            .enable_http1()
            .enable_http2()
            .wrap_connector(connector);
        Ok(HttpExporter {
            client: Client::builder(TokioExecutor::new()).build(connector),
            url,
            compression: cfg.compression,
            timeout: timeout_or_default(cfg.timeout),
            headers,
        })
    }

    /// One attempt.
    pub async fn send(&mut self, body: &Bytes) -> Result<u64, SendError> {
        let mut builder =
            Request::post(self.url.clone()).header(header::CONTENT_TYPE, "application/x-protobuf");
        if let Some(encoding) = self.compression.encoding() {
            builder = builder.header(header::CONTENT_ENCODING, encoding);
        }
        let payload = compress(body, self.compression).map_err(SendError::Permanent)?;
        for (k, v) in &self.headers {
            builder = builder.header(k, v);
        }
        let req = builder
            .body(Full::new(payload))
            .map_err(|e| SendError::Permanent(format!("building request: {e}")))?;
        let resp = tokio::time::timeout(self.timeout, self.client.request(req))
            .await
            .map_err(|_| SendError::Retryable("timed out".into(), None))?
            .map_err(|e| SendError::Retryable(format!("{e}"), None))?;
        let status = resp.status();
        if status.is_success() {
            // The body is an ExportTraceServiceResponse; a partial success names rejected spans.
            let body = http_body_util::Limited::new(resp.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            return Ok(super::grpc::partial_success(&body));
        }
        let retry_after = resp
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = http_body_util::Limited::new(resp.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
            .unwrap_or_default();
        let why = format!("HTTP {status}: {body}");
        match status {
            StatusCode::TOO_MANY_REQUESTS
            | StatusCode::BAD_GATEWAY
            | StatusCode::SERVICE_UNAVAILABLE
            | StatusCode::GATEWAY_TIMEOUT => Err(SendError::Retryable(why, retry_after)),
            _ => Err(SendError::Permanent(why)),
        }
    }
}
