//! TLS settings and connectors for the gateway's own outbound calls: to the upstream
//! (Sentry) and to the identity provider.
//!
//! Trust is the system's root store plus an optional operator CA file (a private CA is
//! common for in-house identity providers). Nothing here follows redirects.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// The one crypto provider used for every TLS configuration of the process.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

#[derive(Debug, thiserror::Error)]
pub enum OutboundTlsError {
    #[error("cannot read CA file {path}: {reason}")]
    CaFile { path: String, reason: String },
    #[error("CA file {path} holds no PEM certificate")]
    EmptyCaFile { path: String },
    #[error("TLS setup failed: {0}")]
    Tls(#[from] rustls::Error),
}

/// Roots: the system store, plus every certificate in `ca_file`.
pub fn root_store(ca_file: Option<&Path>) -> Result<RootCertStore, OutboundTlsError> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        // A broken system certificate is not the operator's problem; skip it.
        let _ = roots.add(cert);
    }
    if let Some(path) = ca_file {
        let shown = path.display().to_string();
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| OutboundTlsError::CaFile {
                path: shown.clone(),
                reason: e.to_string(),
            })?
            .collect::<Result<_, _>>()
            .map_err(|e| OutboundTlsError::CaFile {
                path: shown.clone(),
                reason: e.to_string(),
            })?;
        if certs.is_empty() {
            return Err(OutboundTlsError::EmptyCaFile { path: shown });
        }
        for cert in certs {
            roots.add(cert).map_err(|e| OutboundTlsError::CaFile {
                path: shown.clone(),
                reason: e.to_string(),
            })?;
        }
    }
    Ok(roots)
}

/// A connector for `http://` and `https://` URLs with the given roots. ALPN offers
/// HTTP/2 and HTTP/1.1 on TLS; plain connections use HTTP/1.1.
pub fn connector(
    roots: RootCertStore,
    connect_timeout: Duration,
) -> Result<HttpsConnector<HttpConnector>, OutboundTlsError> {
    let tls = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_nodelay(true);
    Ok(HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_all_versions()
        .wrap_connector(http))
}
