//! The configuration file: the OpenTelemetry Collector's layout for the parts tracekeeper has.
//!
//! `receivers`, `exporters`, `extensions`, `service` and the host's own `guest` section are read
//! here, with every unknown key an error that names its path. `processors` (the collector's
//! `tail_sampling` section, unchanged, plus `completeness`) belongs to the guest: the host passes
//! it to the guest as JSON and the guest checks it (see `guest::GuestModule::instantiate`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// The configuration the binary uses when no `--config` is given.
pub const DEFAULT_CONFIG: &str = include_str!("default_config.yaml");

/// Default OTLP/gRPC endpoint when a `grpc` protocol section has none (the collector's).
pub const DEFAULT_GRPC_ENDPOINT: &str = "localhost:4317";
/// Default OTLP/HTTP endpoint when an `http` protocol section has none (the collector's).
pub const DEFAULT_HTTP_ENDPOINT: &str = "localhost:4318";
/// Default health-check endpoint.
pub const DEFAULT_HEALTH_ENDPOINT: &str = "127.0.0.1:13133";
/// Default Prometheus metrics address.
pub const DEFAULT_METRICS_ADDRESS: &str = "127.0.0.1:8888";
/// Default limit of one request, after decompression (the OTLP spec's recommendation).
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 << 20;
/// Default exporter timeout per request.
pub const DEFAULT_EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default time allowed for flushing on shutdown.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// A configuration error, with the path of the offending key.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where spans come in.
    #[serde(default)]
    pub receivers: Receivers,
    /// The guest's sections (`tail_sampling`, `completeness`), passed through as JSON.
    #[serde(default)]
    pub processors: serde_json::Value,
    /// Where kept spans go (exactly one).
    #[serde(default)]
    pub exporters: Exporters,
    /// Health check.
    #[serde(default)]
    pub extensions: Extensions,
    /// Own telemetry and shutdown.
    #[serde(default)]
    pub service: Service,
    /// The sampler guest and its sandbox limits.
    #[serde(default)]
    pub guest: GuestSection,
}

/// `receivers:`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receivers {
    /// `receivers.otlp`
    #[serde(default)]
    pub otlp: OtlpReceiver,
}

/// `receivers.otlp`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpReceiver {
    /// `receivers.otlp.protocols`
    #[serde(default)]
    pub protocols: Protocols,
}

/// `receivers.otlp.protocols`: a protocol is enabled when its key is present (even empty).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Protocols {
    /// OTLP/gRPC.
    #[serde(default, deserialize_with = "present")]
    pub grpc: Option<GrpcProtocol>,
    /// OTLP/HTTP.
    #[serde(default, deserialize_with = "present")]
    pub http: Option<HttpProtocol>,
}

/// `receivers.otlp.protocols.grpc`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcProtocol {
    /// Listen address.
    #[serde(default = "default_grpc_endpoint")]
    pub endpoint: String,
    /// Largest request accepted, MiB (after decompression).
    #[serde(default = "default_max_recv_msg_size_mib")]
    pub max_recv_msg_size_mib: usize,
    /// Time allowed from connecting to the HTTP/2 preface (default
    /// [`DEFAULT_READ_HEADER_TIMEOUT`]); a silent client is disconnected (slowloris).
    #[serde(default, deserialize_with = "opt_duration")]
    pub read_header_timeout: Option<Duration>,
    /// Time allowed for a request to arrive whole and be answered (default
    /// [`DEFAULT_READ_TIMEOUT`]); a slower one is cancelled (`CANCELLED`).
    #[serde(default, deserialize_with = "opt_duration")]
    pub read_timeout: Option<Duration>,
    /// TLS (absent: plaintext).
    #[serde(default)]
    pub tls: Option<ServerTls>,
    /// Client authentication (absent: none).
    #[serde(default)]
    pub auth: Option<ReceiverAuth>,
}

impl Default for GrpcProtocol {
    fn default() -> Self {
        GrpcProtocol {
            endpoint: default_grpc_endpoint(),
            max_recv_msg_size_mib: default_max_recv_msg_size_mib(),
            read_header_timeout: None,
            read_timeout: None,
            tls: None,
            auth: None,
        }
    }
}

/// `receivers.otlp.protocols.http`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpProtocol {
    /// Listen address.
    #[serde(default = "default_http_endpoint")]
    pub endpoint: String,
    /// Largest request body accepted, bytes (after decompression).
    #[serde(default = "default_max_body")]
    pub max_request_body_size: usize,
    /// Time allowed for a request's headers to arrive (default [`DEFAULT_READ_HEADER_TIMEOUT`]);
    /// a client that takes longer is disconnected (slowloris).
    #[serde(default, deserialize_with = "opt_duration")]
    pub read_header_timeout: Option<Duration>,
    /// Time allowed for a request's body to arrive (default [`DEFAULT_READ_TIMEOUT`]); a slower
    /// body is answered 408.
    #[serde(default, deserialize_with = "opt_duration")]
    pub read_timeout: Option<Duration>,
    /// TLS (absent: plaintext).
    #[serde(default)]
    pub tls: Option<ServerTls>,
    /// Client authentication (absent: none).
    #[serde(default)]
    pub auth: Option<ReceiverAuth>,
}

impl Default for HttpProtocol {
    fn default() -> Self {
        HttpProtocol {
            endpoint: default_http_endpoint(),
            max_request_body_size: default_max_body(),
            read_header_timeout: None,
            read_timeout: None,
            tls: None,
            auth: None,
        }
    }
}

/// Default `receivers.otlp.protocols.http.read_header_timeout`.
pub const DEFAULT_READ_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `receivers.otlp.protocols.http.read_timeout`.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// `tls:` of a receiver protocol, as the collector's `configtls` server settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTls {
    /// The server's certificate chain (PEM).
    pub cert_file: PathBuf,
    /// The server's private key (PEM).
    pub key_file: PathBuf,
    /// CA certificates (PEM) that client certificates must chain to; when given, every client
    /// must present one (mutual TLS).
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
}

/// `auth:` of a receiver protocol: which authenticator extension checks clients.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiverAuth {
    /// Name of the extension (`bearertokenauth`).
    pub authenticator: String,
}

/// `exporters:` (exactly one of them).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Exporters {
    /// OTLP/gRPC.
    #[serde(default, deserialize_with = "present")]
    pub otlp: Option<OtlpExporter>,
    /// OTLP/HTTP (protobuf).
    #[serde(default, deserialize_with = "present")]
    pub otlphttp: Option<OtlpHttpExporter>,
    /// OTLP JSON lines to a file.
    #[serde(default, deserialize_with = "present")]
    pub file: Option<FileExporter>,
    /// One summary line per kept trace on stdout.
    #[serde(default, deserialize_with = "present")]
    pub debug: Option<DebugExporter>,
}

/// `tls:` of an exporter, as the collector's `configtls` client settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientTls {
    /// Plaintext connection (gRPC exporter; an `http://` endpoint is plaintext too).
    #[serde(default)]
    pub insecure: bool,
    /// CA certificates (PEM) to verify the server with, instead of the system's.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain (PEM), for servers that ask for one.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// Client private key (PEM).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Accept any server certificate (testing only: no protection against interception).
    #[serde(default)]
    pub insecure_skip_verify: bool,
    /// Name to verify the server certificate against, instead of the endpoint's host.
    #[serde(default)]
    pub server_name_override: Option<String>,
}

/// Request compression of an exporter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// gzip (the collector's default).
    #[default]
    Gzip,
    /// zstd.
    Zstd,
    /// No compression.
    None,
}

impl Compression {
    /// The name of the encoding on the wire (`grpc-encoding`, `Content-Encoding`), if any.
    pub fn encoding(self) -> Option<&'static str> {
        match self {
            Compression::Gzip => Some("gzip"),
            Compression::Zstd => Some("zstd"),
            Compression::None => None,
        }
    }
}

/// `exporters.otlp`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpExporter {
    /// `host:port` or `http://host:port`.
    pub endpoint: String,
    /// TLS settings.
    #[serde(default)]
    pub tls: ClientTls,
    /// Request compression.
    #[serde(default)]
    pub compression: Compression,
    /// Timeout of one export request.
    #[serde(default, deserialize_with = "opt_duration")]
    pub timeout: Option<Duration>,
    /// Extra request headers (gRPC metadata).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// `exporters.otlphttp`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpHttpExporter {
    /// Base URL; requests go to `<endpoint>/v1/traces`.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Full URL for traces, overriding `endpoint`.
    #[serde(default)]
    pub traces_endpoint: Option<String>,
    /// Request compression.
    #[serde(default)]
    pub compression: Compression,
    /// Timeout of one export request.
    #[serde(default, deserialize_with = "opt_duration")]
    pub timeout: Option<Duration>,
    /// Extra request headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// TLS settings for an `https://` endpoint.
    #[serde(default)]
    pub tls: ClientTls,
}

/// `exporters.file`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileExporter {
    /// Output file (appended to).
    pub path: PathBuf,
}

/// `exporters.debug`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DebugExporter {
    /// Accepted for collector compatibility; output is always one line per kept trace.
    #[serde(default)]
    pub verbosity: Option<String>,
}

/// `extensions:`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Extensions {
    /// `extensions.health_check`
    #[serde(default, deserialize_with = "present")]
    pub health_check: Option<HealthCheck>,
    /// `extensions.bearertokenauth`: the token clients of receivers with
    /// `auth: {authenticator: bearertokenauth}` must send.
    #[serde(default)]
    pub bearertokenauth: Option<BearerTokenAuth>,
}

/// `extensions.bearertokenauth`, as the collector's extension: `Authorization: <scheme> <token>`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BearerTokenAuth {
    /// The scheme before the token (default `Bearer`).
    #[serde(default)]
    pub scheme: Option<String>,
    /// The token.
    #[serde(default)]
    pub token: Option<String>,
    /// Several accepted tokens (for rotation).
    #[serde(default)]
    pub tokens: Vec<String>,
    /// A file holding the token (read at start; surrounding whitespace ignored).
    #[serde(default)]
    pub filename: Option<PathBuf>,
}

/// `extensions.health_check`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// Listen address.
    #[serde(default = "default_health_endpoint")]
    pub endpoint: String,
    /// Answer 503 once every export attempt has failed for longer than this
    /// (default [`DEFAULT_EXPORTER_UNHEALTHY_AFTER`]).
    #[serde(default, deserialize_with = "opt_duration")]
    pub exporter_unhealthy_after: Option<Duration>,
}

/// Default `extensions.health_check.exporter_unhealthy_after`.
pub const DEFAULT_EXPORTER_UNHEALTHY_AFTER: Duration = Duration::from_secs(60);

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck {
            endpoint: default_health_endpoint(),
            exporter_unhealthy_after: None,
        }
    }
}

/// `service:`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// `service.telemetry`
    #[serde(default)]
    pub telemetry: Telemetry,
    /// Accepted for collector compatibility (extensions configured above are always on).
    #[serde(default)]
    pub extensions: Vec<String>,
    /// Time allowed to decide and export pending traces on SIGTERM.
    #[serde(default, deserialize_with = "opt_duration")]
    pub shutdown_timeout: Option<Duration>,
}

/// `service.telemetry`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Telemetry {
    /// `service.telemetry.metrics`
    #[serde(default)]
    pub metrics: MetricsTelemetry,
    /// `service.telemetry.logs`
    #[serde(default)]
    pub logs: LogsTelemetry,
}

/// `service.telemetry.metrics`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsTelemetry {
    /// Prometheus endpoint address.
    #[serde(default = "default_metrics_address")]
    pub address: String,
}

impl Default for MetricsTelemetry {
    fn default() -> Self {
        MetricsTelemetry {
            address: default_metrics_address(),
        }
    }
}

/// `service.telemetry.logs`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogsTelemetry {
    /// `debug`, `info`, `warn` or `error` (default `info`; `RUST_LOG` overrides).
    #[serde(default)]
    pub level: Option<String>,
    /// `console` or `json`.
    #[serde(default)]
    pub encoding: Option<String>,
}

/// `guest:` — which sampler component runs, its sandbox limits, and what the host does when it
/// keeps failing. Absent keys take the defaults named in `guest` and `worker`
/// (`guest::GuestLimits::from_section`, `worker::FaultPolicy::from_section`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestSection {
    /// A guest component file instead of the embedded default (`--guest` overrides).
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Cap on the guest's linear memory, MiB.
    #[serde(default)]
    pub memory_limit_mib: Option<usize>,
    /// Deadline of one guest call.
    #[serde(default, deserialize_with = "opt_duration")]
    pub call_timeout: Option<Duration>,
    /// Largest wasm stack of one call, KiB.
    #[serde(default)]
    pub stack_limit_kib: Option<usize>,
    /// Consecutive guest faults after which the host stops asking the guest, keeps every trace
    /// (fail open) and reports itself degraded.
    #[serde(default)]
    pub max_consecutive_faults: Option<u32>,
    /// First wait before re-trying a guest that made the host degraded.
    #[serde(default, deserialize_with = "opt_duration")]
    pub retry_initial_interval: Option<Duration>,
    /// Longest wait between re-tries (the wait doubles after each failed re-try).
    #[serde(default, deserialize_with = "opt_duration")]
    pub retry_max_interval: Option<Duration>,
    /// Worker threads, each with its own guest instance and its share of the traces (by trace
    /// id) and of the buffer limits. Default: one per three CPUs (1 to 8) when the guest
    /// exports the `shard` interface, else 1.
    #[serde(default)]
    pub workers: Option<u32>,
}

#[cfg(feature = "runtime")]
impl GuestSection {
    /// Checks the values against their bounds, naming the key.
    pub fn check(&self) -> Result<(), ConfigError> {
        use crate::guest::{
            EPOCH_TICK, MAX_MEMORY_LIMIT_MIB, MAX_STACK_LIMIT_KIB, MIN_STACK_LIMIT_KIB,
        };
        if let Some(mib) = self.memory_limit_mib
            && !(1..=MAX_MEMORY_LIMIT_MIB).contains(&mib)
        {
            return Err(ConfigError(format!(
                "guest.memory_limit_mib: {mib} is out of range (1 to {MAX_MEMORY_LIMIT_MIB})"
            )));
        }
        if let Some(t) = self.call_timeout
            && t < EPOCH_TICK
        {
            return Err(ConfigError(format!(
                "guest.call_timeout: {t:?} is below the deadline resolution of {EPOCH_TICK:?}"
            )));
        }
        if let Some(kib) = self.stack_limit_kib
            && !(MIN_STACK_LIMIT_KIB..=MAX_STACK_LIMIT_KIB).contains(&kib)
        {
            return Err(ConfigError(format!(
                "guest.stack_limit_kib: {kib} is out of range ({MIN_STACK_LIMIT_KIB} to {MAX_STACK_LIMIT_KIB})"
            )));
        }
        if let Some(n) = self.workers
            && !(1..=crate::shard::MAX_WORKERS).contains(&n)
        {
            return Err(ConfigError(format!(
                "guest.workers: {n} is out of range (1 to {})",
                crate::shard::MAX_WORKERS
            )));
        }
        if self.max_consecutive_faults == Some(0) {
            return Err(ConfigError(
                "guest.max_consecutive_faults: must be at least 1".into(),
            ));
        }
        for (key, v) in [
            ("retry_initial_interval", self.retry_initial_interval),
            ("retry_max_interval", self.retry_max_interval),
        ] {
            if v == Some(Duration::ZERO) {
                return Err(ConfigError(format!("guest.{key}: must be above 0")));
            }
        }
        if let (Some(a), Some(b)) = (self.retry_initial_interval, self.retry_max_interval)
            && a > b
        {
            return Err(ConfigError(format!(
                "guest.retry_initial_interval: {a:?} is above guest.retry_max_interval ({b:?})"
            )));
        }
        Ok(())
    }
}

/// The parts of `processors.tail_sampling` the host itself uses (the guest checks the rest).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct HostTailSampling {
    /// Traces held at once.
    #[serde(default)]
    pub num_traces: Option<u64>,
    /// Late-span decision caches.
    #[serde(default)]
    pub decision_cache: DecisionCacheConfig,
    /// Drop instead of decide on shutdown.
    #[serde(default)]
    pub drop_pending_traces_on_shutdown: bool,
    /// When the buffer is full, refuse new spans with a retryable error (gRPC UNAVAILABLE,
    /// HTTP 503) instead of deciding the oldest traces early.
    #[serde(default)]
    pub block_on_overflow: bool,
    /// Most memory (MiB) buffered spans may hold (a host key: not passed to the guest).
    #[serde(default)]
    pub memory_limit_mib: Option<u64>,
}

/// Keys of `processors.tail_sampling` only the host reads; they are removed from the guest's
/// configuration.
pub const HOST_ONLY_TAIL_SAMPLING_KEYS: [&str; 1] = ["memory_limit_mib"];

/// `processors.tail_sampling.decision_cache`
#[derive(Debug, Clone, Default, Deserialize)]
pub struct DecisionCacheConfig {
    /// Kept trace ids remembered for late spans.
    #[serde(default)]
    pub sampled_cache_size: Option<usize>,
    /// Not-kept trace ids remembered for late spans.
    #[serde(default)]
    pub non_sampled_cache_size: Option<usize>,
}

fn default_grpc_endpoint() -> String {
    DEFAULT_GRPC_ENDPOINT.to_string()
}
fn default_http_endpoint() -> String {
    DEFAULT_HTTP_ENDPOINT.to_string()
}
fn default_health_endpoint() -> String {
    DEFAULT_HEALTH_ENDPOINT.to_string()
}
fn default_metrics_address() -> String {
    DEFAULT_METRICS_ADDRESS.to_string()
}
fn default_max_recv_msg_size_mib() -> usize {
    DEFAULT_MAX_BODY_BYTES >> 20
}
fn default_max_body() -> usize {
    DEFAULT_MAX_BODY_BYTES
}

/// A section that is enabled when its key is present, even with an empty (null) value.
fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Some(Option::<T>::deserialize(d)?.unwrap_or_default()))
}

fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    tracekeeper_guest::config::duration::deserialize_option(d)
}

impl Config {
    /// Reads, expands `${VAR}` / `${env:VAR}`, parses and checks a configuration text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let expanded = expand_env(text)?;
        let de = serde_yaml_ng::Deserializer::from_str(&expanded);
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner().to_string();
            ConfigError(describe(&path, &inner))
        })?;
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<(), ConfigError> {
        let e = &self.exporters;
        let n = [
            e.otlp.is_some(),
            e.otlphttp.is_some(),
            e.file.is_some(),
            e.debug.is_some(),
        ]
        .iter()
        .filter(|x| **x)
        .count();
        if n != 1 {
            return Err(ConfigError(format!(
                "exporters: exactly one exporter (otlp, otlphttp, file or debug) must be configured, found {n}"
            )));
        }
        if let Some(o) = &e.otlp {
            if o.endpoint.is_empty() {
                return Err(ConfigError(
                    "exporters.otlp.endpoint: missing (e.g. 127.0.0.1:4317)".into(),
                ));
            }
            check_client_tls(&o.tls, "exporters.otlp.tls")?;
        }
        if let Some(h) = &e.otlphttp {
            let url = h.url();
            if url.is_empty() {
                return Err(ConfigError(
                    "exporters.otlphttp.endpoint: missing (e.g. http://127.0.0.1:4318)".into(),
                ));
            }
            if !url.starts_with("http://") && !url.starts_with("https://") {
                return Err(ConfigError(format!(
                    "exporters.otlphttp.endpoint: {url:?} must start with http:// or https://"
                )));
            }
            check_client_tls(&h.tls, "exporters.otlphttp.tls")?;
        }
        if let Some(g) = &self.receivers.otlp.protocols.grpc {
            resolve(&g.endpoint, "receivers.otlp.protocols.grpc.endpoint")?;
            self.check_auth(g.auth.as_ref(), "receivers.otlp.protocols.grpc.auth")?;
        }
        if let Some(h) = &self.receivers.otlp.protocols.http {
            resolve(&h.endpoint, "receivers.otlp.protocols.http.endpoint")?;
            self.check_auth(h.auth.as_ref(), "receivers.otlp.protocols.http.auth")?;
            for (key, t) in [
                ("read_header_timeout", h.read_header_timeout),
                ("read_timeout", h.read_timeout),
            ] {
                if t == Some(Duration::ZERO) {
                    return Err(ConfigError(format!(
                        "receivers.otlp.protocols.http.{key}: must be above 0"
                    )));
                }
            }
        }
        if let Some(b) = &self.extensions.bearertokenauth {
            let sources = usize::from(b.token.is_some())
                + usize::from(!b.tokens.is_empty())
                + usize::from(b.filename.is_some());
            if sources != 1 {
                return Err(ConfigError(
                    "extensions.bearertokenauth: give exactly one of token, tokens and filename"
                        .into(),
                ));
            }
        }
        if self.receivers.otlp.protocols.grpc.is_none()
            && self.receivers.otlp.protocols.http.is_none()
        {
            return Err(ConfigError(
                "receivers.otlp.protocols: enable at least one of grpc and http".into(),
            ));
        }
        resolve(&self.health_endpoint(), "extensions.health_check.endpoint")?;
        resolve(
            &self.service.telemetry.metrics.address,
            "service.telemetry.metrics.address",
        )?;
        if !self.processors.is_null() && !self.processors.is_object() {
            return Err(ConfigError("processors: expected a mapping".into()));
        }
        if let Some(level) = &self.service.telemetry.logs.level
            && !["debug", "info", "warn", "error"].contains(&level.to_lowercase().as_str())
        {
            return Err(ConfigError(format!(
                "service.telemetry.logs.level: {level:?} is not one of debug, info, warn, error"
            )));
        }
        self.host_tail_sampling()?;
        #[cfg(feature = "runtime")]
        self.guest.check()?;
        Ok(())
    }

    /// The health endpoint (default when the extension is not configured).
    pub fn health_endpoint(&self) -> String {
        self.extensions
            .health_check
            .as_ref()
            .map(|h| h.endpoint.clone())
            .unwrap_or_else(default_health_endpoint)
    }

    /// The JSON handed to the guest's `configure`.
    pub fn guest_json(&self) -> String {
        if self.processors.is_null() {
            return "{}".to_string();
        }
        let mut processors = self.processors.clone();
        if let Some(ts) = processors
            .get_mut("tail_sampling")
            .and_then(serde_json::Value::as_object_mut)
        {
            for key in HOST_ONLY_TAIL_SAMPLING_KEYS {
                ts.remove(key);
            }
        }
        processors.to_string()
    }

    /// The keys of `processors.tail_sampling` the host uses.
    pub fn host_tail_sampling(&self) -> Result<HostTailSampling, ConfigError> {
        match self.processors.get("tail_sampling") {
            None | Some(serde_json::Value::Null) => Ok(HostTailSampling::default()),
            Some(v) => serde_path_to_error::deserialize(v).map_err(|e| {
                let path = format!("processors.tail_sampling.{}", e.path());
                ConfigError(describe(&path, &e.into_inner().to_string()))
            }),
        }
    }
}

/// Checks the combinations of an exporter's `tls` keys.
fn check_client_tls(tls: &ClientTls, key: &str) -> Result<(), ConfigError> {
    if tls.cert_file.is_some() != tls.key_file.is_some() {
        return Err(ConfigError(format!(
            "{key}: cert_file and key_file go together"
        )));
    }
    Ok(())
}

impl Config {
    /// Checks a receiver's `auth` names a configured authenticator extension.
    fn check_auth(&self, auth: Option<&ReceiverAuth>, key: &str) -> Result<(), ConfigError> {
        let Some(auth) = auth else {
            return Ok(());
        };
        if auth.authenticator != "bearertokenauth" {
            return Err(ConfigError(format!(
                "{key}.authenticator: {:?} is not a supported authenticator (bearertokenauth)",
                auth.authenticator
            )));
        }
        if self.extensions.bearertokenauth.is_none() {
            return Err(ConfigError(format!(
                "{key}.authenticator: extensions.bearertokenauth is not configured"
            )));
        }
        Ok(())
    }
}

/// Resolves `host:port` (with `localhost` and names) to a socket address.
pub fn resolve(endpoint: &str, key: &str) -> Result<SocketAddr, ConfigError> {
    use std::net::ToSocketAddrs;
    endpoint
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| {
            ConfigError(format!(
                "{key}: {endpoint:?} is not a host:port address (e.g. 127.0.0.1:4317)"
            ))
        })
}

/// Turns a serde error at `path` into `path.key: message`, naming an unknown key in the path.
fn describe(path: &str, inner: &str) -> String {
    let path = if path == "." { "" } else { path };
    if let Some(at) = inner.find("unknown field `") {
        let rest = &inner[at + "unknown field `".len()..];
        if let Some((key, expected)) = rest.split_once('`') {
            // serde_path_to_error's path may or may not already end with the unknown key.
            let full = if path.is_empty() {
                key.to_string()
            } else if path.ends_with(key) {
                path.to_string()
            } else {
                format!("{path}.{key}")
            };
            return format!("{full}: unknown key{expected}");
        }
    }
    // serde_yaml_ng prefixes its own path; keep one.
    let inner = inner
        .strip_prefix(path)
        .and_then(|r| r.strip_prefix(": "))
        .unwrap_or(inner);
    if path.is_empty() {
        inner.to_string()
    } else {
        format!("{path}: {inner}")
    }
}

/// Expands `${VAR}` and `${env:VAR}` from the environment, and `$$` to `$`, as the collector does.
/// An unset variable expands to the empty string.
pub fn expand_env(text: &str) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix("$$") {
            out.push('$');
            rest = after;
        } else if let Some(after) = tail.strip_prefix("${") {
            let end = after.find('}').ok_or_else(|| {
                ConfigError("unterminated ${ in configuration (write $$ for a literal $)".into())
            })?;
            let name = &after[..end];
            let name = name.strip_prefix("env:").unwrap_or(name);
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(ConfigError(format!(
                    "invalid environment reference ${{{name}}} in configuration"
                )));
            }
            out.push_str(&std::env::var(name).unwrap_or_default());
            rest = &after[end + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

impl OtlpHttpExporter {
    /// The URL requests are posted to.
    pub fn url(&self) -> String {
        if let Some(t) = &self.traces_endpoint {
            return t.clone();
        }
        match &self.endpoint {
            Some(e) => format!("{}/v1/traces", e.trim_end_matches('/')),
            None => String::new(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn default_config_parses() {
        let c = Config::parse(DEFAULT_CONFIG).unwrap();
        assert!(c.exporters.debug.is_some());
        assert!(c.receivers.otlp.protocols.grpc.is_some());
        assert!(c.processors.get("tail_sampling").is_some());
    }

    #[test]
    fn unknown_keys_name_their_path() {
        let e = Config::parse(
            "receivers: {otlp: {protocols: {grpc: {endpiont: 1}}}}\nexporters: {debug: {}}",
        )
        .unwrap_err();
        assert!(
            e.0.starts_with("receivers.otlp.protocols.grpc.endpiont: unknown key"),
            "{e}"
        );
        let e = Config::parse("exporters: {debug: {}}\nfoo: 1").unwrap_err();
        assert!(e.0.starts_with("foo: unknown key"), "{e}");
    }

    #[test]
    fn exactly_one_exporter() {
        let e = Config::parse(
            "receivers: {otlp: {protocols: {grpc: {}}}}\nexporters: {debug: {}, file: {path: x}}",
        )
        .unwrap_err();
        assert!(e.0.contains("exactly one exporter"), "{e}");
        let e = Config::parse("receivers: {otlp: {protocols: {grpc: {}}}}").unwrap_err();
        assert!(e.0.contains("found 0"), "{e}");
    }

    #[test]
    fn empty_sections_enable_with_defaults() {
        let c = Config::parse(
            "receivers:\n  otlp:\n    protocols:\n      grpc:\nexporters:\n  debug:\n",
        )
        .unwrap();
        let g = c.receivers.otlp.protocols.grpc.unwrap();
        assert_eq!(g.endpoint, DEFAULT_GRPC_ENDPOINT);
        assert!(c.receivers.otlp.protocols.http.is_none());
    }

    #[test]
    fn env_expansion() {
        // set_var is unsafe in edition 2024; read an existing variable instead.
        let path = std::env::var("PATH").unwrap_or_default();
        assert_eq!(expand_env("a ${PATH} b").unwrap(), format!("a {path} b"));
        assert_eq!(expand_env("${env:PATH}").unwrap(), path);
        assert_eq!(expand_env("$$x $y").unwrap(), "$x $y");
        assert_eq!(expand_env("${TRACEKEEPER_SURELY_UNSET_VAR}").unwrap(), "");
        assert!(expand_env("${oops").is_err());
    }

    #[test]
    fn host_keys_of_tail_sampling() {
        let c = Config::parse(
            "receivers: {otlp: {protocols: {grpc: {}}}}\nexporters: {debug: {}}\nprocessors: {tail_sampling: {num_traces: 7, decision_cache: {sampled_cache_size: 3}}}",
        )
        .unwrap();
        let t = c.host_tail_sampling().unwrap();
        assert_eq!(t.num_traces, Some(7));
        assert_eq!(t.decision_cache.sampled_cache_size, Some(3));
        let e = Config::parse(
            "receivers: {otlp: {protocols: {grpc: {}}}}\nexporters: {debug: {}}\nprocessors: {tail_sampling: {num_traces: many}}",
        )
        .unwrap_err();
        assert!(
            e.0.starts_with("processors.tail_sampling.num_traces:"),
            "{e}"
        );
    }
}
