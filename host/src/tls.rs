//! TLS for the receivers and the exporters (rustls with the ring provider): PEM files named in
//! the configuration (the collector's `configtls` keys) turned into server and client configs.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

use crate::config::{ClientTls, ServerTls};

/// ALPN protocol of gRPC (HTTP/2).
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN protocol of HTTP/1.1.
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// Why a TLS configuration could not be built; names the configuration key.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("{key}: reading {path}: {source}")]
    Read {
        /// Configuration key.
        key: String,
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file holds no usable PEM item of the expected kind.
    #[error("{key}: {path}: {what}")]
    Pem {
        /// Configuration key.
        key: String,
        /// The file.
        path: String,
        /// What is wrong.
        what: String,
    },
    /// rustls refused the certificates or key.
    #[error("{key}: {source}")]
    Rustls {
        /// Configuration key.
        key: String,
        /// The rustls error.
        source: rustls::Error,
    },
    /// The client-certificate verifier could not be built.
    #[error("{key}: {what}")]
    Verifier {
        /// Configuration key.
        key: String,
        /// What is wrong.
        what: String,
    },
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path, key: &str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        key: key.to_string(),
        path: path.display().to_string(),
        source,
    })
}

/// Reads every certificate of a PEM file (at least one).
pub fn load_certs(path: &Path, key: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path, key)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            key: key.to_string(),
            path: path.display().to_string(),
            what: format!("not PEM certificates: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            key: key.to_string(),
            path: path.display().to_string(),
            what: "no CERTIFICATE in the file".into(),
        });
    }
    Ok(certs)
}

/// Reads the private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path, key: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path, key)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::Pem {
        key: key.to_string(),
        path: path.display().to_string(),
        what: format!("no private key: {e}"),
    })
}

fn roots(path: &Path, key: &str) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    for cert in load_certs(path, key)? {
        store.add(cert).map_err(|source| TlsError::Rustls {
            key: key.to_string(),
            source,
        })?;
    }
    Ok(store)
}

/// A server config from a receiver's `tls` section (`key` is its path, for messages), offering
/// the ALPN protocols `alpn`. With `client_ca_file`, clients must present a certificate that
/// chains to it.
pub fn server_config(
    tls: &ServerTls,
    key: &str,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = load_certs(&tls.cert_file, &format!("{key}.cert_file"))?;
    let private = load_key(&tls.key_file, &format!("{key}.key_file"))?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Rustls {
            key: key.to_string(),
            source,
        })?;
    let builder = match &tls.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let ca_key = format!("{key}.client_ca_file");
            let verifier = WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots(ca, &ca_key)?),
                provider(),
            )
            .build()
            .map_err(|e| TlsError::Verifier {
                key: ca_key,
                what: e.to_string(),
            })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config =
        builder
            .with_single_cert(certs, private)
            .map_err(|source| TlsError::Rustls {
                key: format!("{key}.key_file"),
                source,
            })?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// A client config from an exporter's `tls` section, offering the ALPN protocols `alpn`: the
/// server is verified against `ca_file` (or the system's roots), unless `insecure_skip_verify`.
pub fn client_config(tls: &ClientTls, key: &str, alpn: &[&[u8]]) -> Result<ClientConfig, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Rustls {
            key: key.to_string(),
            source,
        })?;
    let builder = if tls.insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyServer(provider())))
    } else {
        let store = match &tls.ca_file {
            Some(ca) => roots(ca, &format!("{key}.ca_file"))?,
            None => system_roots(key)?,
        };
        builder.with_root_certificates(store)
    };
    let mut config = match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(private)) => builder
            .with_client_auth_cert(
                load_certs(cert, &format!("{key}.cert_file"))?,
                load_key(private, &format!("{key}.key_file"))?,
            )
            .map_err(|source| TlsError::Rustls {
                key: format!("{key}.key_file"),
                source,
            })?,
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// The system's CA certificates (as the collector uses without `ca_file`).
fn system_roots(key: &str) -> Result<RootCertStore, TlsError> {
    let found = rustls_native_certs::load_native_certs();
    let mut store = RootCertStore::empty();
    let (added, _ignored) = store.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(TlsError::Verifier {
            key: format!("{key}.ca_file"),
            what: "no system CA certificates found; give ca_file".into(),
        });
    }
    Ok(store)
}

/// The server name to verify: `server_name_override`, or the endpoint's host.
pub fn server_name(
    tls: &ClientTls,
    host: &str,
    key: &str,
) -> Result<ServerName<'static>, TlsError> {
    let name = tls.server_name_override.as_deref().unwrap_or(host);
    let name = name.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(name.to_string()).map_err(|e| TlsError::Verifier {
        key: key.to_string(),
        what: format!("{name:?} is not a valid server name: {e}"),
    })
}

/// `insecure_skip_verify`: accepts any certificate, still checking the handshake signatures.
#[derive(Debug)]
struct AcceptAnyServer(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
