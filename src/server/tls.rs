//! The server side of TLS: certificate chain and key from PEM, reloadable while the
//! listener serves ([`CertificateStore`]), TLS 1.3 and 1.2 only, ALPN `h2` and
//! `http/1.1`, and a self-signed certificate for the demo.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsSettings;
use crate::observe::Metrics;
use crate::outbound::crypto_provider;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("tls.cert_file {path}: {reason}")]
    Certificate { path: String, reason: String },
    #[error("tls.key_file {path}: {reason}")]
    Key { path: String, reason: String },
    #[error("the certificate and key do not fit together, or the key is not usable: {0}")]
    Config(#[from] rustls::Error),
    #[error("generating a certificate failed: {0}")]
    Generate(#[from] rcgen::Error),
}

/// A listener's TLS: the rustls configuration and the certificate it presents.
pub type ServerTls = (Arc<ServerConfig>, Arc<CertificateStore>);

/// The rustls server configuration and its certificate, or `None` when TLS is off.
pub fn server_config(tls: &TlsSettings) -> Result<Option<ServerTls>, TlsError> {
    let Some(certificate) = load(tls)? else {
        return Ok(None);
    };
    let store = Arc::new(CertificateStore {
        current: RwLock::new(certificate),
        files: tls
            .files()
            .map(|(cert, key)| (cert.to_owned(), key.to_owned())),
        stamps: Mutex::new(None),
    });
    store.stamps_changed(); // remember the files as loaded
    // rustls offers only TLS 1.3 and 1.2, with forward-secret AEAD suites.
    let mut config = ServerConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(store.clone());
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // The server's order of suites, not the client's (testssl.sh asks for it; every
    // suite offered is strong either way).
    config.ignore_client_order = true;
    Ok(Some((Arc::new(config), store)))
}

/// The chain and key from the settings, checked to belong together.
fn load(tls: &TlsSettings) -> Result<Option<Arc<CertifiedKey>>, TlsError> {
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
    let certified = CertifiedKey::from_der(certs, key, &crypto_provider())?;
    Ok(Some(Arc::new(certified)))
}

/// The certificate the listener presents, replaceable while it serves: a reload
/// (SIGHUP, or the files changing on disk) swaps it for new handshakes, and a broken
/// new one is refused while the old one stays.
pub struct CertificateStore {
    current: RwLock<Arc<CertifiedKey>>,
    /// The files it came from (none for a certificate held in memory).
    files: Option<(PathBuf, PathBuf)>,
    /// Modification times of the files when last looked at.
    stamps: Mutex<Option<(SystemTime, SystemTime)>>,
}

impl std::fmt::Debug for CertificateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateStore")
            .field("files", &self.files)
            .finish()
    }
}

impl ResolvesServerCert for CertificateStore {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().unwrap().clone())
    }
}

impl CertificateStore {
    /// Reads the files again; on success new handshakes use them. On failure the
    /// current certificate stays, and the error says why.
    pub fn reload(&self) -> Result<(), TlsError> {
        let Some((cert_file, key_file)) = &self.files else {
            return Ok(());
        };
        let files = TlsSettings::Files {
            cert_file: cert_file.clone(),
            key_file: key_file.clone(),
        };
        if let Some(certificate) = load(&files)? {
            *self.current.write().unwrap() = certificate;
        }
        Ok(())
    }

    /// True when either file's modification time changed since last asked.
    fn stamps_changed(&self) -> bool {
        let Some((cert_file, key_file)) = &self.files else {
            return false;
        };
        let modified = |path: &PathBuf| {
            std::fs::metadata(path)
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH)
        };
        let now = Some((modified(cert_file), modified(key_file)));
        let mut stamps = self.stamps.lock().unwrap();
        let changed = *stamps != now;
        *stamps = now;
        changed
    }

    /// Reloads whenever the files change (certbot and the like renew them in place),
    /// checking every [`WATCH_INTERVAL`] until the store is dropped.
    pub fn watch(self: &Arc<Self>, metrics: Arc<Metrics>) {
        if self.files.is_none() {
            return;
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(WATCH_INTERVAL).await;
                let Some(store) = weak.upgrade() else { return };
                if store.stamps_changed() {
                    store.reload_and_log("the certificate files changed", &metrics);
                }
            }
        });
    }

    /// [`CertificateStore::reload`], with a log line and the reload metric.
    pub fn reload_and_log(&self, why: &str, metrics: &Metrics) {
        match self.reload() {
            Ok(()) => {
                tracing::info!(reason = why, "TLS certificate reloaded");
                metrics.reload(true);
            }
            Err(e) => {
                tracing::error!(reason = why, error = %e, "TLS certificate reload refused; the current certificate stays");
                metrics.reload(false);
            }
        }
    }
}

/// How often the certificate files are checked for changes.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(2);

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
    // Valid from yesterday for 90 days, like a certificate from a public CA.
    let day = |offset: i64| {
        let date = (chrono::Utc::now() + chrono::Duration::days(offset)).date_naive();
        rcgen::date_time_ymd(
            chrono::Datelike::year(&date),
            chrono::Datelike::month(&date) as u8,
            chrono::Datelike::day(&date) as u8,
        )
    };
    params.not_before = day(-1);
    params.not_after = day(90);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok(LocalCertificate {
        ca_pem: ca_cert.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}
