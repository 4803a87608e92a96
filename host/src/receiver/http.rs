//! The OTLP/HTTP receiver: `POST /v1/traces` with protobuf or JSON bodies, optionally gzip.
//!
//! Answers as the OTLP spec names: 200 with an `ExportTraceServiceResponse` (partial success for
//! rejected spans) in the request's encoding; 400 for a body that is not a valid request; 413
//! for a body over `max_request_body_size` (before or after decompression); 415 for another
//! content type or encoding; 404/405 for other paths and methods; 503 while shutting down;
//! 401 without the bearer token when `auth` is configured; 408 for a body slower than
//! `read_timeout`. A client whose headers take longer than `read_header_timeout` is
//! disconnected (slowloris). With `tls`, connections are TLS (rustls, HTTP/1.1 and HTTP/2).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use prost::Message;

use super::deadline::{FirstBytes, HTTP2_PREFACE_LEN};
use super::gzip::{GunzipError, gunzip_limited};
use super::{Ingest, IngestError};
use crate::auth::BearerAuth;
use crate::config::{DEFAULT_READ_HEADER_TIMEOUT, DEFAULT_READ_TIMEOUT, Extensions, HttpProtocol};
use crate::otlp::json::{json_to_protobuf, response};
use crate::shutdown::Shutdown;

#[derive(Clone)]
struct HttpState {
    ingest: Ingest,
    max_body: usize,
    read_timeout: Duration,
}

/// Pause after a failed `accept` (e.g. out of file descriptors) before accepting again.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// What the OTLP/HTTP server needs beyond the pipeline: limits, timeouts, TLS, authentication.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// Largest body, bytes after decompression (larger: 413).
    pub max_body: usize,
    /// Time allowed for the request line and headers (also bounds the TLS handshake).
    pub read_header_timeout: Duration,
    /// Time allowed for the body (slower: 408).
    pub read_timeout: Duration,
    /// TLS, when configured.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// The bearer-token check, when configured.
    pub auth: Option<Arc<BearerAuth>>,
}

impl HttpSettings {
    /// Plaintext, no authentication, default timeouts.
    pub fn new(max_body: usize) -> Self {
        HttpSettings {
            max_body,
            read_header_timeout: DEFAULT_READ_HEADER_TIMEOUT,
            read_timeout: DEFAULT_READ_TIMEOUT,
            tls: None,
            auth: None,
        }
    }

    /// The settings of `receivers.otlp.protocols.http` (reads the TLS and token files).
    pub fn from_config(h: &HttpProtocol, extensions: &Extensions) -> anyhow::Result<Self> {
        let tls = match &h.tls {
            None => None,
            Some(t) => Some(crate::tls::server_config(
                t,
                "receivers.otlp.protocols.http.tls",
                &[crate::tls::ALPN_H2, crate::tls::ALPN_HTTP1],
            )?),
        };
        Ok(HttpSettings {
            max_body: h.max_request_body_size,
            read_header_timeout: h.read_header_timeout.unwrap_or(DEFAULT_READ_HEADER_TIMEOUT),
            read_timeout: h.read_timeout.unwrap_or(DEFAULT_READ_TIMEOUT),
            tls,
            auth: super::auth_for(h.auth.as_ref(), extensions)?,
        })
    }
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

/// Most bytes of a refused body (over the limit, or of a type not served) read and thrown away
/// after the refusal is decided, so that the client can finish sending and read the answer.
/// An HTTP/1.1 server that closes with part of the body unread makes the kernel reset the
/// connection, and a client still sending then sees a reset instead of the 413 or 415 (and an
/// OTLP exporter retries a reset, where it drops a 413). Past this, or past `read_timeout`, the
/// connection is closed all the same.
const DRAIN_LIMIT: usize = 64 << 20;

/// Why a body was not read whole.
enum BodyError {
    /// Over `max_body`; the rest of the body, to drain.
    TooLarge(Body),
    /// The connection failed while reading.
    Read(String),
}

/// Reads a body of at most `max` bytes (one chunk is taken as is; several are joined).
async fn read_body(body: Body, max: usize) -> Result<Bytes, BodyError> {
    use http_body_util::BodyExt;
    let mut body = body;
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| BodyError::Read(e.to_string()))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        total = total.saturating_add(data.len());
        if total > max {
            return Err(BodyError::TooLarge(body));
        }
        chunks.push(data);
    }
    Ok(match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.pop().unwrap_or_default(),
        _ => {
            let mut joined = bytes::BytesMut::with_capacity(total);
            for c in &chunks {
                joined.extend_from_slice(c);
            }
            joined.freeze()
        }
    })
}

/// Reads and throws away up to [`DRAIN_LIMIT`] bytes of `body` within `timeout`, then answers
/// `resp`, asking the client to close the connection.
async fn refuse(body: Body, timeout: Duration, resp: Response) -> Response {
    use http_body_util::BodyExt;
    let drain = async {
        let mut body = body;
        let mut seen = 0usize;
        while seen <= DRAIN_LIMIT {
            match body.frame().await {
                Some(Ok(frame)) => {
                    seen = seen.saturating_add(frame.data_ref().map_or(0, |d| d.len()));
                }
                Some(Err(_)) | None => break,
            }
        }
    };
    let _ = tokio::time::timeout(timeout, drain).await;
    closing(resp)
}

/// `resp`, asking the client to close the connection.
fn closing(mut resp: Response) -> Response {
    resp.headers_mut().insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    resp
}

/// 413 for a body over `max` bytes.
fn too_large(format: Format, max: usize) -> Response {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        Some(format),
        format!("request body over the limit of {max} bytes"),
    )
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
            let resp = error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                None,
                format!(
                    "unsupported content type {content_type:?}; use application/x-protobuf or application/json"
                ),
            );
            return refuse(body, state.read_timeout, resp).await;
        }
    };
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if !matches!(encoding.as_str(), "" | "identity" | "gzip") {
        let resp = error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Some(format),
            format!("unsupported content encoding {encoding:?}; use gzip or none"),
        );
        return refuse(body, state.read_timeout, resp).await;
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let expects_continue = headers
        .get(header::EXPECT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("100-continue"));
    if expects_continue && declared.is_some_and(|n| n > state.max_body as u64) {
        // The client waits for a 100 before sending: refuse without reading (hyper sends the
        // 100 only when the body is read), so there is nothing to drain.
        return closing(too_large(format, state.max_body));
    }
    let read = tokio::time::timeout(state.read_timeout, read_body(body, state.max_body));
    let raw = match read.await {
        Ok(Ok(b)) => b,
        Err(_) => {
            return closing(error(
                StatusCode::REQUEST_TIMEOUT,
                Some(format),
                format!("request body not received within {:?}", state.read_timeout),
            ));
        }
        Ok(Err(BodyError::TooLarge(rest))) => {
            return refuse(rest, state.read_timeout, too_large(format, state.max_body)).await;
        }
        Ok(Err(BodyError::Read(e))) => {
            return error(
                StatusCode::BAD_REQUEST,
                Some(format),
                format!("reading request body: {e}"),
            );
        }
    };
    // Other encodings were refused before the body was read.
    let body = if encoding == "gzip" {
        match gunzip_limited(&raw, state.max_body) {
            Ok(b) => Bytes::from(b),
            Err(e @ GunzipError::TooLarge(_)) => {
                return error(StatusCode::PAYLOAD_TOO_LARGE, Some(format), e.to_string());
            }
            Err(e @ GunzipError::Corrupt(_)) => {
                return error(StatusCode::BAD_REQUEST, Some(format), e.to_string());
            }
        }
    } else {
        raw
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

/// The router: `POST /v1/traces`, 405 for other methods on it, 404 elsewhere; every path behind
/// the bearer-token check when `auth` is configured.
pub fn router(ingest: Ingest, settings: &HttpSettings) -> Router {
    let router = Router::new()
        .route("/v1/traces", post(export))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                "not found; OTLP traces go to POST /v1/traces",
            )
        })
        .with_state(HttpState {
            ingest,
            max_body: settings.max_body,
            read_timeout: settings.read_timeout,
        });
    match &settings.auth {
        Some(auth) => router.layer(axum::middleware::from_fn_with_state(
            Arc::clone(auth),
            require_token,
        )),
        None => router,
    }
}

/// 401 unless the request carries an accepted bearer token.
async fn require_token(State(auth): State<Arc<BearerAuth>>, req: Request, next: Next) -> Response {
    let header = req.headers().get(header::AUTHORIZATION);
    if auth.check(header.map(header::HeaderValue::as_bytes)) {
        return next.run(req).await;
    }
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        "missing or invalid bearer token",
    )
        .into_response()
}

/// Serves OTLP/HTTP (HTTP/1.1 and h2c, or TLS) until `shutdown`, then lets requests in progress
/// finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    ingest: Ingest,
    settings: HttpSettings,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let tls = settings.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    tracing::info!(
        addr = ?listener.local_addr().ok(),
        tls = tls.is_some(),
        "OTLP/HTTP receiver listening"
    );
    let app = router(ingest, &settings);
    let header_timeout = settings.read_header_timeout;
    let graceful = GracefulShutdown::new();
    let stop = shutdown.wait();
    tokio::pin!(stop);
    loop {
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _peer)) => tcp,
                Err(e) => {
                    tracing::warn!("accepting an OTLP/HTTP connection: {e}");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        let _ = tcp.set_nodelay(true);
        // HTTP/1 headers have hyper's header timeout; an HTTP/2 (h2c) client must at least send
        // its preface in that time.
        let tcp = FirstBytes::new(tcp, header_timeout, HTTP2_PREFACE_LEN);
        let service = TowerToHyperService::new(app.clone());
        let watcher = graceful.watcher();
        let tls = tls.clone();
        tokio::spawn(async move {
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout);
            builder.http2().timer(TokioTimer::new());
            let result = match tls {
                None => {
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(tcp), service);
                    watcher.watch(conn.into_owned()).await
                }
                Some(acceptor) => {
                    match tokio::time::timeout(header_timeout, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let conn = builder
                                .serve_connection_with_upgrades(TokioIo::new(stream), service);
                            watcher.watch(conn.into_owned()).await
                        }
                        Ok(Err(e)) => {
                            tracing::debug!("OTLP/HTTP TLS handshake failed: {e}");
                            Ok(())
                        }
                        Err(_) => {
                            tracing::debug!("OTLP/HTTP TLS handshake timed out");
                            Ok(())
                        }
                    }
                }
            };
            if let Err(e) = result {
                tracing::debug!("OTLP/HTTP connection ended: {e}");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}
