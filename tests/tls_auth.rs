//! End-to-end tests of TLS and bearer-token authentication with the real `tracekeeper` binary:
//! certificates made at test time (rcgen); the right client gets through on gRPC and HTTP, a
//! wrong or missing token is refused (UNAUTHENTICATED / 401), a plaintext client to a TLS port
//! fails cleanly (and the host keeps serving), mutual TLS refuses a client without a
//! certificate, and the exporters talk TLS to TLS receivers (an in-test tonic server for
//! `otlp`, a second tracekeeper for `otlphttp`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message as _;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity, ServerTlsConfig};

const TOKEN: &str = "s3cret-token";

/// A CA, a server certificate for localhost / 127.0.0.1 and a client certificate, as PEM files.
struct Pki {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    ca_pem: String,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "tracekeeper test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let leaf = |names: Vec<String>, cn: &str| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(names).unwrap();
            params.distinguished_name.push(DnType::CommonName, cn);
            let cert = params.signed_by(&key, &ca).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let (server_cert, server_key) =
            leaf(vec!["localhost".into(), "127.0.0.1".into()], "localhost");
        let (client_cert, client_key) = leaf(vec!["client.test".into()], "client.test");
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        Pki {
            ca: write("ca.pem", &ca.pem()),
            server_cert: write("server.pem", &server_cert),
            server_key: write("server-key.pem", &server_key),
            client_cert: write("client.pem", &client_cert),
            client_key: write("client-key.pem", &client_key),
            ca_pem: ca.pem(),
            _dir: dir,
        }
    }

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path).unwrap()
    }
}

/// A host with TLS (and, with `mtls`, client certificates required) and the bearer token on both
/// receivers, exporting plaintext gRPC to `receiver_port`.
fn secured_host(pki: &Pki, receiver_port: u16, mtls: bool) -> Host {
    let ports = Ports::new();
    let client_ca = if mtls {
        format!(", client_ca_file: \"{}\"", pki.ca.display())
    } else {
        String::new()
    };
    let tls = format!(
        "tls: {{cert_file: \"{}\", key_file: \"{}\"{client_ca}}}",
        pki.server_cert.display(),
        pki.server_key.display()
    );
    let yaml = format!(
        r#"receivers:
  otlp:
    protocols:
      grpc: {{endpoint: "127.0.0.1:{grpc}", {tls}, auth: {{authenticator: bearertokenauth}}}}
      http: {{endpoint: "127.0.0.1:{http}", {tls}, auth: {{authenticator: bearertokenauth}}}}
processors:
  tail_sampling:
    decision_wait: 1s
    policies:
      - {{name: errors, type: status_code, status_code: {{status_codes: [ERROR]}}}}
exporters:
  otlp: {{endpoint: "127.0.0.1:{receiver_port}", tls: {{insecure: true}}}}
extensions:
  health_check: {{endpoint: "127.0.0.1:{health}"}}
  bearertokenauth: {{token: "{TOKEN}"}}
service:
  telemetry: {{metrics: {{address: "127.0.0.1:{metrics}"}}}}
"#,
        grpc = ports.grpc,
        http = ports.http,
        health = ports.health,
        metrics = ports.metrics,
    );
    Host::start_yaml(ports, &yaml)
}

/// A TLS channel to the host's gRPC port, trusting the test CA (with a client certificate when
/// `identity`).
async fn tls_channel(pki: &Pki, port: u16, identity: bool) -> Result<Channel, tonic::Status> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca_pem))
        .domain_name("localhost");
    if identity {
        tls = tls.identity(Identity::from_pem(
            Pki::read(&pki.client_cert),
            Pki::read(&pki.client_key),
        ));
    }
    Channel::from_shared(format!("https://127.0.0.1:{port}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("TLS connect: {e:?}")))
}

/// Exports `request` over TLS gRPC with an optional `authorization` value.
async fn grpc_tls_export(
    pki: &Pki,
    port: u16,
    identity: bool,
    authorization: Option<&str>,
    request: ExportTraceServiceRequest,
) -> Result<ExportTraceServiceResponse, tonic::Status> {
    let channel = tls_channel(pki, port, identity).await?;
    let mut req = tonic::Request::new(request);
    if let Some(a) = authorization {
        req.metadata_mut()
            .insert("authorization", a.parse().unwrap());
    }
    TraceServiceClient::new(channel)
        .export(req)
        .await
        .map(tonic::Response::into_inner)
}

/// POSTs protobuf over HTTPS (rustls, trusting the test CA, HTTP/1.1 or h2 by ALPN); returns
/// the status, or the connection error.
async fn https_post(
    pki: &Pki,
    port: u16,
    identity: bool,
    authorization: Option<&str>,
    body: Vec<u8>,
) -> Result<u16, String> {
    let tls = tracekeeper::config::ClientTls {
        ca_file: Some(pki.ca.clone()),
        cert_file: identity.then(|| pki.client_cert.clone()),
        key_file: identity.then(|| pki.client_key.clone()),
        ..Default::default()
    };
    // No ALPN here: hyper-rustls sets it from enable_http1/enable_http2.
    let config = tracekeeper::tls::client_config(&tls, "test", &[]).unwrap();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_only()
        .enable_http1()
        .enable_http2()
        .build();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build::<_, Full<Bytes>>(connector);
    let mut req = http::Request::post(format!("https://localhost:{port}/v1/traces"))
        .header("content-type", "application/x-protobuf");
    if let Some(a) = authorization {
        req = req.header("authorization", a);
    }
    let resp = client
        .request(req.body(Full::new(Bytes::from(body))).unwrap())
        .await
        .map_err(|e| format!("{e:?}"))?;
    let status = resp.status().as_u16();
    let _ = resp.into_body().collect().await;
    Ok(status)
}

fn bearer() -> String {
    format!("Bearer {TOKEN}")
}

#[test]
fn the_right_client_gets_through_and_others_are_refused() {
    let pki = Pki::new();
    let receiver = Receiver::start();
    let mut host = secured_host(&pki, receiver.port, false);
    let rt = runtime();

    // gRPC over TLS with the token: accepted, and the spans come out.
    let (request, grpc_sent) = error_trace("tls-grpc", "scope", 2);
    rt.block_on(grpc_tls_export(
        &pki,
        host.ports.grpc,
        false,
        Some(&bearer()),
        request,
    ))
    .expect("TLS gRPC export with the token");
    // gRPC over TLS, wrong or missing token: UNAUTHENTICATED, nothing comes out.
    let (request, wrong_sent) = error_trace("tls-grpc-wrong", "scope", 1);
    for (auth, what) in [
        (Some("Bearer not-the-token"), "a wrong token"),
        (Some(TOKEN), "the token without its scheme"),
        (None, "no token"),
    ] {
        let status = rt
            .block_on(grpc_tls_export(
                &pki,
                host.ports.grpc,
                false,
                auth,
                request.clone(),
            ))
            .expect_err("a gRPC call without the right token must fail");
        assert_eq!(
            status.code(),
            tonic::Code::Unauthenticated,
            "{what}: {status:?}"
        );
    }

    // HTTP over TLS with the token: 200; wrong or missing: 401.
    let (request, http_sent) = error_trace("tls-http", "scope", 2);
    let status = rt
        .block_on(https_post(
            &pki,
            host.ports.http,
            false,
            Some(&bearer()),
            request.encode_to_vec(),
        ))
        .expect("HTTPS POST");
    assert_eq!(status, 200, "HTTPS POST with the token");
    let (request, http_wrong) = error_trace("tls-http-wrong", "scope", 1);
    for auth in [Some("Bearer nope"), Some("Basic czNjcmV0LXRva2Vu"), None] {
        let status = rt
            .block_on(https_post(
                &pki,
                host.ports.http,
                false,
                auth,
                request.encode_to_vec(),
            ))
            .expect("HTTPS POST");
        assert_eq!(status, 401, "HTTPS POST with authorization {auth:?}");
    }

    // Plaintext clients to the TLS ports fail cleanly: an error, not a hang, not a crash.
    let (request, plain_sent) = error_trace("plaintext", "scope", 1);
    let plain_grpc = rt.block_on(async {
        tokio::time::timeout(
            std::time::Duration::from_secs(30),
            grpc_export(host.ports.grpc, request.clone()),
        )
        .await
    });
    match plain_grpc {
        Ok(Err(status)) => eprintln!("plaintext gRPC to the TLS port: {status:?}"),
        Ok(Ok(r)) => panic!("a plaintext gRPC export to a TLS port succeeded: {r:?}"),
        Err(_) => panic!("a plaintext gRPC export to a TLS port hung"),
    }
    let plain_http = http_post(
        &http_client(),
        &host.http_url("/v1/traces"),
        &[
            ("content-type", "application/x-protobuf"),
            ("authorization", &bearer()),
        ],
        request.encode_to_vec(),
    );
    match plain_http {
        Err(e) => eprintln!("plaintext HTTP to the TLS port: {e}"),
        Ok(answer) => assert!(
            answer.status >= 400,
            "a plaintext HTTP request to a TLS port was answered {answer:?}"
        ),
    }
    host.assert_healthy();

    // Still serving the right client after all that.
    let (request, after_sent) = error_trace("tls-after", "scope", 1);
    rt.block_on(grpc_tls_export(
        &pki,
        host.ports.grpc,
        false,
        Some(&bearer()),
        request,
    ))
    .expect("TLS gRPC export after the refused clients");

    let mut keys = grpc_sent.keys();
    keys.extend(http_sent.keys());
    keys.extend(after_sent.keys());
    receiver.wait_for(&keys, "the authenticated clients' spans", &host);
    host.terminate_cleanly();
    let received = receiver.spans();
    assert_kept(&received, &grpc_sent, "errors", "complete");
    assert_kept(&received, &http_sent, "errors", "complete");
    assert_kept(&received, &after_sent, "errors", "complete");
    for (sent, what) in [
        (
            &wrong_sent,
            "a trace sent without the right token over gRPC",
        ),
        (
            &http_wrong,
            "a trace sent without the right token over HTTP",
        ),
        (&plain_sent, "a trace sent in plaintext to a TLS port"),
    ] {
        assert_absent(&received, &sent.trace_id, what);
    }
}

#[test]
fn mutual_tls_requires_a_client_certificate() {
    let pki = Pki::new();
    let receiver = Receiver::start();
    let mut host = secured_host(&pki, receiver.port, true);
    let rt = runtime();

    let (request, sent) = error_trace("mtls", "scope", 1);
    let without = rt.block_on(grpc_tls_export(
        &pki,
        host.ports.grpc,
        false,
        Some(&bearer()),
        request.clone(),
    ));
    assert!(
        without.is_err(),
        "gRPC without a client certificate: {without:?}"
    );
    let without = rt.block_on(https_post(
        &pki,
        host.ports.http,
        false,
        Some(&bearer()),
        request.encode_to_vec(),
    ));
    assert!(
        without.is_err(),
        "HTTPS without a client certificate: {without:?}"
    );
    host.assert_healthy();

    rt.block_on(grpc_tls_export(
        &pki,
        host.ports.grpc,
        true,
        Some(&bearer()),
        request.clone(),
    ))
    .expect("gRPC with a client certificate");
    let (request2, sent2) = error_trace("mtls-http", "scope", 1);
    let status = rt
        .block_on(https_post(
            &pki,
            host.ports.http,
            true,
            Some(&bearer()),
            request2.encode_to_vec(),
        ))
        .expect("HTTPS with a client certificate");
    assert_eq!(status, 200);
    let mut keys = sent.keys();
    keys.extend(sent2.keys());
    receiver.wait_for(&keys, "spans sent with a client certificate", &host);
    host.terminate_cleanly();
}

/// An in-test OTLP/gRPC receiver over TLS (tonic's own TLS, independent of tracekeeper's).
struct TlsReceiver {
    runtime: Option<tokio::runtime::Runtime>,
    port: u16,
    requests: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
}

struct Store(Arc<Mutex<Vec<ExportTraceServiceRequest>>>);

#[tonic::async_trait]
impl TraceService for Store {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl TlsReceiver {
    fn start(pki: &Pki) -> TlsReceiver {
        let runtime = runtime();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let tls = ServerTlsConfig::new().identity(Identity::from_pem(
            Pki::read(&pki.server_cert),
            Pki::read(&pki.server_key),
        ));
        let service = TraceServiceServer::new(Store(requests.clone()))
            .accept_compressed(tonic::codec::CompressionEncoding::Gzip);
        runtime.spawn(async move {
            tonic::transport::Server::builder()
                .tls_config(tls)
                .unwrap()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
                .unwrap();
        });
        TlsReceiver {
            runtime: Some(runtime),
            port,
            requests,
        }
    }

    fn spans(&self) -> Vec<Received> {
        flatten(&self.requests.lock().unwrap())
    }
}

impl Drop for TlsReceiver {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// A plaintext host exporting with `exporter` (YAML of one exporter).
fn exporting_host(exporter: &str) -> Host {
    let ports = Ports::new();
    let yaml = format!(
        r#"receivers:
  otlp:
    protocols:
      grpc: {{endpoint: "127.0.0.1:{grpc}"}}
processors:
  tail_sampling:
    decision_wait: 1s
    policies:
      - {{name: errors, type: status_code, status_code: {{status_codes: [ERROR]}}}}
exporters:
  {exporter}
extensions:
  health_check: {{endpoint: "127.0.0.1:{health}"}}
service:
  telemetry: {{metrics: {{address: "127.0.0.1:{metrics}"}}}}
"#,
        grpc = ports.grpc,
        health = ports.health,
        metrics = ports.metrics,
    );
    Host::start_yaml(ports, &yaml)
}

#[test]
fn the_otlp_exporter_talks_tls() {
    let pki = Pki::new();
    let tls_receiver = TlsReceiver::start(&pki);
    let rt = runtime();
    // Verifying the server against ca_file, and (another host) skipping verification.
    for tls in [
        format!("{{ca_file: \"{}\"}}", pki.ca.display()),
        "{insecure_skip_verify: true}".to_string(),
    ] {
        let mut host = exporting_host(&format!(
            "otlp: {{endpoint: \"localhost:{}\", tls: {tls}}}",
            tls_receiver.port
        ));
        let (request, sent) = error_trace("exported-over-tls", "scope", 2);
        rt.block_on(grpc_export(host.ports.grpc, request)).unwrap();
        wait_for_keys(
            &sent.keys(),
            EXPORT_TIMEOUT,
            &format!("spans exported over TLS with tls: {tls}"),
            || tls_receiver.spans(),
            || host.stderr(),
        );
        host.terminate_cleanly();
        assert_kept(&tls_receiver.spans(), &sent, "errors", "complete");
    }
}

#[test]
fn the_otlphttp_exporter_talks_tls_to_a_tls_receiver() {
    let pki = Pki::new();
    let receiver = Receiver::start();
    // The downstream: a second tracekeeper with TLS and the token on its HTTP receiver.
    let downstream = secured_host(&pki, receiver.port, false);
    let mut host = exporting_host(&format!(
        "otlphttp: {{endpoint: \"https://localhost:{}\", tls: {{ca_file: \"{}\"}}, headers: {{authorization: \"{}\"}}}}",
        downstream.ports.http,
        pki.ca.display(),
        bearer()
    ));
    let (request, sent) = error_trace("otlphttp-over-tls", "scope", 2);
    runtime()
        .block_on(grpc_export(host.ports.grpc, request))
        .unwrap();
    receiver.wait_for(&sent.keys(), "spans relayed over HTTPS", &downstream);
    host.terminate_cleanly();
    let received = receiver.spans();
    assert_eq!(
        count_by_key(&received).values().copied().max(),
        Some(1),
        "every span once"
    );
}

/// The configuration names the key of every TLS or authentication mistake, at parse time or at
/// start-up.
#[test]
fn tls_and_auth_mistakes_name_their_key() {
    use tracekeeper::config::Config;
    let base = |receivers: &str, extra: &str| {
        format!(
            "receivers: {{otlp: {{protocols: {receivers}}}}}\nexporters: {{debug: {{}}}}\n{extra}"
        )
    };
    for (yaml, want) in [
        (
            base("{grpc: {auth: {authenticator: bearertokenauth}}}", ""),
            "receivers.otlp.protocols.grpc.auth.authenticator: extensions.bearertokenauth is not configured",
        ),
        (
            base(
                "{http: {auth: {authenticator: oidc}}}",
                "extensions: {bearertokenauth: {token: t}}",
            ),
            "receivers.otlp.protocols.http.auth.authenticator: \"oidc\" is not a supported",
        ),
        (
            base("{http: {}}", "extensions: {bearertokenauth: {token: t, filename: f}}"),
            "extensions.bearertokenauth: give exactly one of token, tokens and filename",
        ),
        (
            base("{http: {tls: {cert_file: c.pem}}}", ""),
            "receivers.otlp.protocols.http.tls",
        ),
        (
            base("{http: {read_timeout: 0s}}", ""),
            "receivers.otlp.protocols.http.read_timeout: must be above 0",
        ),
        (
            "receivers: {otlp: {protocols: {grpc: {}}}}\nexporters: {otlp: {endpoint: \"h:1\", tls: {cert_file: c.pem}}}".to_string(),
            "exporters.otlp.tls: cert_file and key_file go together",
        ),
        (
            "receivers: {otlp: {protocols: {grpc: {}}}}\nexporters: {otlphttp: {endpoint: \"ftp://h:1\"}}".to_string(),
            "exporters.otlphttp.endpoint",
        ),
    ] {
        let e = Config::parse(&yaml).expect_err(&yaml);
        assert!(e.0.contains(want), "{yaml}\n-> {e}\nwanted {want:?}");
    }

    // Files that cannot be read are named at start-up, with their key.
    let ports = Ports::new();
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "receivers: {{otlp: {{protocols: {{http: {{endpoint: \"127.0.0.1:{}\", tls: {{cert_file: /nonexistent/c.pem, key_file: /nonexistent/k.pem}}}}}}}}}}\nexporters: {{debug: {{}}}}\nextensions: {{health_check: {{endpoint: \"127.0.0.1:{}\"}}}}\nservice: {{telemetry: {{metrics: {{address: \"127.0.0.1:{}\"}}}}}}\n",
        ports.http, ports.health, ports.metrics
    );
    let path = write_config(dir.path(), "bad-tls.yaml", &yaml);
    let (status, _out, err) = run_binary(
        &["run", "--config", path.to_str().unwrap()],
        &[],
        std::time::Duration::from_secs(60),
    );
    assert!(
        !status.success(),
        "a missing certificate must stop the start"
    );
    assert!(
        err.contains("receivers.otlp.protocols.http.tls.cert_file"),
        "stderr should name the key: {err}"
    );
}

/// Health and metrics listen on localhost unless configured otherwise (and the receivers, as in
/// the collector, default to localhost too).
#[test]
fn telemetry_endpoints_default_to_localhost() {
    use tracekeeper::config::{Config, DEFAULT_CONFIG};
    for yaml in [
        DEFAULT_CONFIG.to_string(),
        "receivers: {otlp: {protocols: {grpc: {}, http: {}}}}\nexporters: {debug: {}}".to_string(),
    ] {
        let c = Config::parse(&yaml).unwrap();
        let health = tracekeeper::config::resolve(&c.health_endpoint(), "health").unwrap();
        let metrics =
            tracekeeper::config::resolve(&c.service.telemetry.metrics.address, "metrics").unwrap();
        assert!(health.ip().is_loopback(), "health on {health}");
        assert!(metrics.ip().is_loopback(), "metrics on {metrics}");
    }
    let c = Config::parse(
        "receivers: {otlp: {protocols: {grpc: {}, http: {}}}}\nexporters: {debug: {}}",
    )
    .unwrap();
    let p = &c.receivers.otlp.protocols;
    for endpoint in [
        &p.grpc.as_ref().unwrap().endpoint,
        &p.http.as_ref().unwrap().endpoint,
    ] {
        let addr = tracekeeper::config::resolve(endpoint, "receiver").unwrap();
        assert!(addr.ip().is_loopback(), "receiver default {endpoint}");
    }
}
