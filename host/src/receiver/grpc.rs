//! The OTLP/gRPC receiver: `opentelemetry.proto.collector.trace.v1.TraceService/Export`.
//!
//! The service is written out (rather than generated) so that it can take the request as raw
//! bytes and hand them to the wire walker without a protobuf decode. It reads the gRPC message
//! and writes the answer itself, on tonic's server (connections, HTTP/2, TLS, timeouts,
//! shutdown): `read_message` says why.
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
use tonic::server::NamedService;

use super::deadline::{FirstBytes, HTTP2_PREFACE_LEN};
use tonic::Status;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use super::{Ingest, IngestError};
use crate::auth::BearerAuth;
use crate::config::{Extensions, GrpcProtocol};
use crate::otlp::codec::EXPORT_PATH;
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

impl<B> tower_service::Service<http::Request<B>> for TraceService
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
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
        let early = |status: Status| -> Self::Future {
            Box::pin(std::future::ready(Ok(status.into_http())))
        };
        if let Some(auth) = &self.auth {
            let header = req.headers().get(http::header::AUTHORIZATION);
            if !auth.check(header.map(http::HeaderValue::as_bytes)) {
                return early(Status::unauthenticated("missing or invalid bearer token"));
            }
        }
        if req.uri().path() != EXPORT_PATH {
            return early(Status::unimplemented("only TraceService/Export is served"));
        }
        let gzip = match request_encoding(req.headers()) {
            Ok(gzip) => gzip,
            Err(status) => return early(status),
        };
        let ingest = self.ingest.clone();
        let max = self.max_message_bytes;
        Box::pin(async move {
            let message = match read_message(req.into_body(), gzip, max).await {
                Ok(m) => m,
                Err(status) => return Ok(status.into_http()),
            };
            Ok(match ingest.submit(message, "grpc").await {
                Ok(a) => ok_response(&response(a.rejected, &a.message).encode_to_vec()),
                Err(IngestError::Malformed(m)) => Status::invalid_argument(m).into_http(),
                Err(IngestError::Unavailable) => {
                    Status::unavailable(IngestError::Unavailable.to_string()).into_http()
                }
                Err(IngestError::Busy) => {
                    crate::backpressure::grpc_status(crate::backpressure::Refusal::Busy).into_http()
                }
            })
        })
    }
}

/// Length of a gRPC message's prefix: the compressed flag and the length (big-endian u32).
const PREFIX_LEN: usize = 5;

/// Whether the request's message is gzip-compressed (`grpc-encoding`); any encoding but gzip
/// and identity is UNIMPLEMENTED, naming the one accepted, as tonic answers.
fn request_encoding(headers: &http::HeaderMap) -> Result<bool, Status> {
    match headers
        .get("grpc-encoding")
        .map(http::HeaderValue::as_bytes)
    {
        None | Some(b"identity") => Ok(false),
        Some(b"gzip") => Ok(true),
        Some(other) => {
            let mut status = Status::unimplemented(format!(
                "Content is compressed with `{}` which isn't supported",
                String::from_utf8_lossy(other)
            ));
            status.metadata_mut().insert(
                "grpc-accept-encoding",
                tonic::metadata::MetadataValue::from_static("gzip"),
            );
            Err(status)
        }
    }
}

/// Reads the one message of a unary call, at most `max` bytes (after decompression).
///
/// Written here rather than taken from tonic's `Grpc::unary` for what it saves per request
/// (measured in BENCHMARKS.md, "Changes measured so far"): tonic copies every DATA frame into
/// a buffer of its own and, once it has read the prefix, reserves the message's length again
/// on top of a buffer that already holds it, so a 36 KB request grew a 73 KB buffer. Here a
/// message that arrives in one DATA frame (the usual case with 64 KiB frames) is a slice of
/// that frame, with no copy; one split over several frames is joined into one buffer as its
/// frames arrive (see [`Received::push`]).
async fn read_message<B>(body: B, gzip: bool, max: usize) -> Result<Bytes, Status>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use http_body_util::BodyExt;
    let mut body = std::pin::pin!(body);
    let mut got = Received::Nothing;
    let mut received = 0usize;
    // The whole message's length with its prefix, once the prefix is in.
    let mut expected: Option<usize> = None;
    let more_than_one = || Status::invalid_argument("more than one message in a unary call");
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Status::from_error(e.into()))?;
        let Ok(data) = frame.into_data() else {
            continue; // request trailers: nothing in them is read
        };
        if data.is_empty() {
            continue;
        }
        received = received.saturating_add(data.len());
        if expected.is_some_and(|total| received > total) {
            return Err(more_than_one());
        }
        got.push(data, expected.unwrap_or(0));
        if expected.is_none()
            && let Some(prefix) = got.bytes().get(..PREFIX_LEN)
        {
            let len = usize::try_from(u32::from_be_bytes([
                prefix[1], prefix[2], prefix[3], prefix[4],
            ]))
            .unwrap_or(usize::MAX);
            if len > max {
                return Err(too_large(len, max));
            }
            let total = PREFIX_LEN + len;
            if received > total {
                return Err(more_than_one());
            }
            expected = Some(total);
        }
    }
    let Some(total) = expected else {
        return Err(Status::invalid_argument(if received == 0 {
            "missing request message"
        } else {
            "message prefix cut short"
        }));
    };
    if received < total {
        return Err(Status::invalid_argument(format!(
            "message cut short: {} of {} bytes",
            received.saturating_sub(PREFIX_LEN),
            total - PREFIX_LEN
        )));
    }
    let framed = got.into_bytes();
    let flag = framed.first().copied().unwrap_or(0);
    let message = framed.slice(PREFIX_LEN..);
    match (flag, gzip) {
        (0, _) => Ok(message),
        (1, true) => match super::gzip::gunzip_limited(&message, max) {
            Ok(inflated) => Ok(Bytes::from(inflated)),
            Err(super::gzip::GunzipError::TooLarge(_)) => Err(Status::resource_exhausted(format!(
                "message inflates to more than the limit of {max} bytes"
            ))),
            Err(e) => Err(Status::invalid_argument(e.to_string())),
        },
        (1, false) => Err(Status::invalid_argument(
            "compressed message without a grpc-encoding",
        )),
        (f, _) => Err(Status::invalid_argument(format!(
            "invalid compressed flag {f}"
        ))),
    }
}

/// A unary call's body as it arrives: the first DATA frame as it came (usually the whole
/// message, kept without a copy), then, from the second on, all of them joined in one buffer.
/// (Keeping a handle per frame instead would let a client sending 1-byte frames make the
/// receiver hold some 32 bytes per byte.)
enum Received {
    Nothing,
    One(Bytes),
    Joined(bytes::BytesMut),
}

impl Received {
    /// Adds a frame's data; `whole` is the whole message's length when known (0 if not).
    ///
    /// The buffer is sized for the whole message, but for no more than twice what has
    /// arrived, growing from there: a prefix that claims the limit followed by a byte does
    /// not make the receiver set the limit aside (tonic's decoder reserved it).
    fn push(&mut self, data: Bytes, whole: usize) {
        *self = match std::mem::replace(self, Received::Nothing) {
            Received::Nothing => Received::One(data),
            Received::One(first) => {
                let arrived = first.len() + data.len();
                let mut joined =
                    bytes::BytesMut::with_capacity(whole.min(2 * arrived).max(arrived));
                joined.extend_from_slice(&first);
                joined.extend_from_slice(&data);
                Received::Joined(joined)
            }
            Received::Joined(mut joined) => {
                joined.extend_from_slice(&data);
                Received::Joined(joined)
            }
        };
    }

    /// What has arrived so far.
    fn bytes(&self) -> &[u8] {
        match self {
            Received::Nothing => &[],
            Received::One(b) => b,
            Received::Joined(b) => b,
        }
    }

    fn into_bytes(self) -> Bytes {
        match self {
            Received::Nothing => Bytes::new(),
            Received::One(b) => b,
            Received::Joined(b) => b.freeze(),
        }
    }
}

/// RESOURCE_EXHAUSTED for a message over the limit: the OTLP spec's answer for "too large"
/// (tonic's own is OUT_OF_RANGE).
fn too_large(len: usize, max: usize) -> Status {
    Status::resource_exhausted(format!(
        "message of {len} bytes is over the limit of {max} bytes"
    ))
}

/// An OK answer carrying `message`: the message, uncompressed, then `grpc-status: 0` in the
/// trailers.
fn ok_response(message: &[u8]) -> http::Response<Body> {
    use bytes::BufMut;
    use http_body_util::BodyExt;
    let mut framed = bytes::BytesMut::with_capacity(PREFIX_LEN + message.len());
    framed.put_u8(0);
    framed.put_u32(u32::try_from(message.len()).unwrap_or(u32::MAX));
    framed.put_slice(message);
    let mut trailers = http::HeaderMap::new();
    trailers.insert(Status::GRPC_STATUS, http::HeaderValue::from_static("0"));
    let body = http_body_util::Full::new(framed.freeze())
        .with_trailers(std::future::ready(Some(Ok(trailers))));
    let mut resp = http::Response::new(Body::new(body));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    resp
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::gzip::tests::gzip;
    use super::*;
    use http_body_util::StreamBody;
    use hyper::body::Frame;

    /// Reads `chunks` as a request body's DATA frames.
    fn read(chunks: Vec<Bytes>, gzip: bool, max: usize) -> Result<Bytes, Status> {
        let frames = chunks
            .into_iter()
            .map(|c| Ok::<_, Infallible>(Frame::data(c)));
        let body = StreamBody::new(tokio_stream::iter(frames));
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(read_message(body, gzip, max))
    }

    fn framed(flag: u8, message: &[u8]) -> Bytes {
        let mut v = vec![flag];
        v.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
        v.extend_from_slice(message);
        Bytes::from(v)
    }

    #[test]
    fn a_message_in_one_frame_is_a_slice_of_it() {
        let message: Vec<u8> = (0..=255u8).cycle().take(40_000).collect();
        let frame = framed(0, &message);
        let got = read(vec![frame.clone()], false, 1 << 20).unwrap();
        assert_eq!(got, message);
        assert_eq!(got.as_ptr(), frame[PREFIX_LEN..].as_ptr(), "copied");
    }

    #[test]
    fn a_message_over_several_frames_is_joined() {
        let message: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let whole = framed(0, &message);
        // Split inside the prefix, then inside the message.
        for cuts in [[1, 3], [4, 5], [5, 700], [2, 999]] {
            let chunks = vec![
                whole.slice(..cuts[0]),
                whole.slice(cuts[0]..cuts[1]),
                Bytes::new(),
                whole.slice(cuts[1]..),
            ];
            assert_eq!(read(chunks, false, 1 << 20).unwrap(), message, "{cuts:?}");
        }
        let bytewise = (0..whole.len()).map(|i| whole.slice(i..=i)).collect();
        assert_eq!(
            read(bytewise, false, 1 << 20).unwrap(),
            message,
            "1-byte frames"
        );
    }

    #[test]
    fn frames_after_the_first_are_joined_in_one_buffer() {
        let mut got = Received::Nothing;
        got.push(Bytes::from_static(b"ab"), 0);
        assert!(matches!(got, Received::One(_)));
        for b in [b"c", b"d", b"e"] {
            got.push(Bytes::from_static(b), 0);
        }
        let Received::Joined(joined) = &got else {
            panic!("three more frames are not one buffer");
        };
        assert_eq!(&joined[..], b"abcde");
        let mut sized = Received::Nothing;
        sized.push(Bytes::from(vec![1u8; 60]), 200);
        sized.push(Bytes::from(vec![2u8; 60]), 200);
        let Received::Joined(joined) = &sized else {
            panic!("two frames are not one buffer");
        };
        assert!(joined.capacity() >= 200, "sized for the whole message");
        let mut claimed = Received::Nothing;
        claimed.push(Bytes::from_static(b"abc"), 4 << 20);
        claimed.push(Bytes::from_static(b"d"), 4 << 20);
        let Received::Joined(joined) = &claimed else {
            panic!("two frames are not one buffer");
        };
        assert!(
            joined.capacity() < 1 << 20,
            "4 bytes in, {} bytes set aside for a claimed 4 MiB",
            joined.capacity()
        );
    }

    #[test]
    fn framing_faults_are_invalid_argument() {
        let whole = framed(0, b"0123456789");
        let mut two = whole.to_vec();
        two.extend_from_slice(&whole);
        for (what, chunks) in [
            ("no message", vec![]),
            ("a prefix cut short", vec![whole.slice(..3)]),
            ("a message cut short", vec![whole.slice(..9)]),
            ("two messages", vec![Bytes::from(two)]),
            (
                "a byte after the message",
                vec![whole.clone(), Bytes::from_static(b"x")],
            ),
            (
                "compressed flag without grpc-encoding",
                vec![framed(1, b"x")],
            ),
            ("compressed flag 2", vec![framed(2, b"x")]),
        ] {
            let status = read(chunks, false, 1 << 20).unwrap_err();
            assert_eq!(
                status.code(),
                tonic::Code::InvalidArgument,
                "{what}: {status:?}"
            );
        }
        let status = read(vec![framed(1, b"not gzip")], true, 1 << 20).unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    }

    #[test]
    fn over_the_limit_is_resource_exhausted_from_the_prefix() {
        // Only the prefix arrives: the length in it is enough to refuse.
        let prefix = framed(0, &[0u8; 101]).slice(..PREFIX_LEN);
        let status = read(vec![prefix], false, 100).unwrap_err();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
        assert!(read(vec![framed(0, &[7u8; 100])], false, 100).is_ok());
    }

    #[test]
    fn gzip_is_inflated_within_the_limit() {
        let message = vec![b'z'; 5000];
        let got = read(vec![framed(1, &gzip(&message))], true, 5000).unwrap();
        assert_eq!(got, message);
        let bomb = gzip(&vec![0u8; 1 << 20]);
        let status = read(vec![framed(1, &bomb)], true, 100_000).unwrap_err();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
        // Uncompressed messages are still accepted on a gzip request (flag 0).
        assert_eq!(read(vec![framed(0, b"plain")], true, 100).unwrap(), "plain");
    }

    #[test]
    fn only_gzip_and_identity_are_accepted() {
        let with = |v: &'static str| {
            let mut h = http::HeaderMap::new();
            h.insert("grpc-encoding", http::HeaderValue::from_static(v));
            request_encoding(&h)
        };
        assert!(!request_encoding(&http::HeaderMap::new()).unwrap());
        assert!(!with("identity").unwrap());
        assert!(with("gzip").unwrap());
        let status = with("zstd").unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unimplemented);
        assert_eq!(
            status.metadata().get("grpc-accept-encoding").unwrap(),
            "gzip"
        );
    }

    #[test]
    fn ok_answers_carry_the_message_and_status_in_trailers() {
        use http_body_util::BodyExt;
        let resp = ok_response(b"abc");
        assert_eq!(
            resp.headers()[http::header::CONTENT_TYPE],
            "application/grpc"
        );
        let collected = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(resp.into_body().collect())
            .unwrap();
        assert_eq!(collected.trailers().unwrap()[Status::GRPC_STATUS], "0");
        assert_eq!(collected.to_bytes(), framed(0, b"abc"));
    }
}
