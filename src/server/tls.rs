//! The server side of TLS: certificate chain and key from PEM, ALPN `h2` and
//! `http/1.1`, and a self-signed certificate for the demo.

use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsSettings;
use crate::outbound::crypto_provider;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("tls.cert_file {path}: {reason}")]
    Certificate { path: String, reason: String },
    #[error("tls.key_file {path}: {reason}")]
    Key { path: String, reason: String },
    #[error("the certificate and key do not fit together: {0}")]
    Config(#[from] rustls::Error),
    #[error("generating a certificate failed: {0}")]
    Generate(#[from] rcgen::Error),
}

/// The rustls server configuration, or `None` when TLS is off.
pub fn server_config(tls: &TlsSettings) -> Result<Option<Arc<ServerConfig>>, TlsError> {
    let (certs, key) = match tls {
        TlsSettings::Off => return Ok(None),
        TlsSettings::Files {
            cert_file,
            key_file,
        } => {
            let shown = cert_file.display().to_string();
            let certs = CertificateDer::pem_file_iter(cert_file)
                .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
                .map_err(|e| TlsError::Certificate {
                    path: shown.clone(),
                    reason: e.to_string(),
                })?;
            let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| TlsError::Key {
                path: key_file.display().to_string(),
                reason: e.to_string(),
            })?;
            if certs.is_empty() {
                return Err(TlsError::Certificate {
                    path: shown,
                    reason: "no PEM certificate in the file".into(),
                });
            }
            (certs, key)
        }
        TlsSettings::Pem { cert_pem, key_pem } => {
            let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| TlsError::Certificate {
                    path: "(in memory)".into(),
                    reason: e.to_string(),
                })?;
            let key =
                PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| TlsError::Key {
                    path: "(in memory)".into(),
                    reason: e.to_string(),
                })?;
            (certs, key)
        }
    };
    let mut config = ServerConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Some(Arc::new(config)))
}

/// A certificate for loopback use (the demo, tests), issued by a throwaway CA made
/// on the spot, so a client can trust the CA like a real one.
pub struct LocalCertificate {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// Makes a throwaway CA and a server certificate for `names` (host names or IPs).
pub fn local_certificate(names: &[&str]) -> Result<LocalCertificate, TlsError> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "ssogate local CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut params = CertificateParams::new(names)?;
    params
        .distinguished_name
        .push(DnType::CommonName, "ssogate");
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok(LocalCertificate {
        ca_pem: ca_cert.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}
