//! The OTLP/HTTP receiver: `POST /v1/traces` with protobuf or JSON bodies, optionally gzip.
//!
//! Answers as the OTLP spec names: 200 with an `ExportTraceServiceResponse` (partial success for
//! rejected spans) in the request's encoding; 400 for a body that is not a valid request; 413
//! for a body over `max_request_body_size` (before or after decompression); 415 for another
//! content type or encoding; 404/405 for other paths and methods; 503 while shutting down.

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use prost::Message;

use super::gzip::{GunzipError, gunzip_limited};
use super::{Ingest, IngestError};
use crate::otlp::json::{json_to_protobuf, response};
use crate::shutdown::Shutdown;

#[derive(Clone)]
struct HttpState {
    ingest: Ingest,
    max_body: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Protobuf,
    Json,
}

impl Format {
    fn content_type(self) -> &'static str {
        match self {
            Format::Protobuf => "application/x-protobuf",
            Format::Json => "application/json",
        }
    }
}

/// `google.rpc.Status`, the body of OTLP/HTTP error responses.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

fn error(status: StatusCode, format: Option<Format>, message: String) -> Response {
    // gRPC code numbers for the body, as OTLP/HTTP asks.
    let code = match status {
        StatusCode::BAD_REQUEST => 3,
        StatusCode::PAYLOAD_TOO_LARGE => 8,
        StatusCode::SERVICE_UNAVAILABLE => 14,
        _ => 2,
    };
    match format {
        Some(Format::Protobuf) => (
            status,
            [(header::CONTENT_TYPE, Format::Protobuf.content_type())],
            RpcStatus { code, message }.encode_to_vec(),
        )
            .into_response(),
        Some(Format::Json) => (
            status,
            [(header::CONTENT_TYPE, Format::Json.content_type())],
            serde_json::json!({"code": code, "message": message}).to_string(),
        )
            .into_response(),
        None => (status, message).into_response(),
    }
}

async fn export(State(state): State<HttpState>, headers: HeaderMap, body: Body) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let media = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let format = match media.as_str() {
        "application/x-protobuf" | "application/protobuf" => Format::Protobuf,
        "application/json" => Format::Json,
        _ => {
            return error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                None,
                format!(
                    "unsupported content type {content_type:?}; use application/x-protobuf or application/json"
                ),
            );
        }
    };
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let raw = match axum::body::to_bytes(body, state.max_body).await {
        Ok(b) => b,
        Err(e) => {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
                || e.to_string().contains("length limit");
            return if too_large {
                error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    Some(format),
                    format!("request body over the limit of {} bytes", state.max_body),
                )
            } else {
                error(
                    StatusCode::BAD_REQUEST,
                    Some(format),
                    format!("reading request body: {e}"),
                )
            };
        }
    };
    let body = match encoding.as_str() {
        "" | "identity" => raw,
        "gzip" => match gunzip_limited(&raw, state.max_body) {
            Ok(b) => Bytes::from(b),
            Err(e @ GunzipError::TooLarge(_)) => {
                return error(StatusCode::PAYLOAD_TOO_LARGE, Some(format), e.to_string());
            }
            Err(e @ GunzipError::Corrupt(_)) => {
                return error(StatusCode::BAD_REQUEST, Some(format), e.to_string());
            }
        },
        other => {
            return error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                Some(format),
                format!("unsupported content encoding {other:?}; use gzip or none"),
            );
        }
    };
    let protobuf = match format {
        Format::Protobuf => body,
        Format::Json => match json_to_protobuf(&body) {
            Ok(b) => Bytes::from(b),
            Err(m) => return error(StatusCode::BAD_REQUEST, Some(format), m),
        },
    };
    match state.ingest.submit(protobuf, "http").await {
        Ok(a) => {
            let resp = response(a.rejected, &a.message);
            let bytes = match format {
                Format::Protobuf => resp.encode_to_vec(),
                // An empty success is `{}` (serde would write `"partialSuccess": null`).
                Format::Json if resp.partial_success.is_none() => b"{}".to_vec(),
                Format::Json => serde_json::to_vec(&resp).unwrap_or_else(|_| b"{}".to_vec()),
            };
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, format.content_type())],
                bytes,
            )
                .into_response()
        }
        Err(IngestError::Malformed(m)) => error(StatusCode::BAD_REQUEST, Some(format), m),
        Err(IngestError::Unavailable) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            Some(format),
            IngestError::Unavailable.to_string(),
        ),
        Err(IngestError::Busy) => {
            let mut resp = error(
                StatusCode::SERVICE_UNAVAILABLE,
                Some(format),
                IngestError::Busy.to_string(),
            );
            if let Ok(v) = header::HeaderValue::from_str(&crate::backpressure::retry_after_header())
            {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
            resp
        }
    }
}

/// The router: `POST /v1/traces`, 405 for other methods on it, 404 elsewhere.
pub fn router(ingest: Ingest, max_body: usize) -> Router {
    Router::new()
        .route("/v1/traces", post(export))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                "not found; OTLP traces go to POST /v1/traces",
            )
        })
        .with_state(HttpState { ingest, max_body })
}

/// Serves OTLP/HTTP until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    ingest: Ingest,
    max_body: usize,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    tracing::info!(addr = ?listener.local_addr().ok(), "OTLP/HTTP receiver listening");
    axum::serve(listener, router(ingest, max_body))
        .with_graceful_shutdown(shutdown.wait())
        .await?;
    Ok(())
}
