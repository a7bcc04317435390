//! The server side of TLS: certificate chain and key from PEM, reloadable while the
//! listener serves ([`CertificateStore`]), TLS 1.3 and 1.2 only, ALPN `h2` and
//! `http/1.1`, and a self-signed certificate for the demo.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::{PemObject, SectionKind};
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
    #[error(
        "tls.cert_file {cert_file} holds a private key and tls.key_file {key_file} a certificate: \
         the two are swapped ({CERTBOT_NAMES})"
    )]
    Swapped { cert_file: String, key_file: String },
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
        challenge_answers: Mutex::new(HashMap::new()),
    });
    store.stamps_changed(); // remember the files as loaded
    // rustls offers only TLS 1.3 and 1.2, with forward-secret AEAD suites.
    let mut config = ServerConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(store.clone());
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    if matches!(tls, TlsSettings::Acme(_)) {
        // Last: a client offering h2 or http/1.1 too still gets those.
        config.alpn_protocols.push(ACME_TLS_ALPN.to_vec());
    }
    // The server's order of suites, not the client's (testssl.sh asks for it; every
    // suite offered is strong either way).
    config.ignore_client_order = true;
    Ok(Some((Arc::new(config), store)))
}

/// The chain and key from the settings, checked to belong together.
fn load(tls: &TlsSettings) -> Result<Option<Arc<CertifiedKey>>, TlsError> {
    let certified = match tls {
        TlsSettings::Off => return Ok(None),
        TlsSettings::Files {
            cert_file,
            key_file,
        } => pem_pair(cert_file, key_file)?,
        TlsSettings::Pem { cert_pem, key_pem } => pair_from_pem_text(cert_pem, key_pem)?,
        TlsSettings::Acme(acme) => super::acme::stored_or_placeholder(acme)?,
    };
    Ok(Some(Arc::new(certified)))
}

/// How certbot names its files, for the messages about files mixed up.
const CERTBOT_NAMES: &str = "with certbot, tls.cert_file is fullchain.pem and tls.key_file \
                             privkey.pem, both from the same live/<name>/ directory";

/// The certificate chain of `tls.cert_file` and the private key of `tls.key_file`,
/// checked to belong together: what startup, a reload and `ssogate check` load. Its
/// errors name the key and say what is wrong with the file: unreadable (and why, for
/// the service user), a certificate where the key belongs or the reverse, the two
/// swapped, an encrypted key, a key of another certificate, a chain out of order.
pub fn pem_pair(cert_file: &Path, key_file: &Path) -> Result<CertifiedKey, TlsError> {
    let cert_bytes = std::fs::read(cert_file).map_err(|e| TlsError::Certificate {
        path: cert_file.display().to_string(),
        reason: cannot_read(&e),
    })?;
    let key_bytes = std::fs::read(key_file).map_err(|e| TlsError::Key {
        path: key_file.display().to_string(),
        reason: cannot_read(&e),
    })?;
    pair_from_pem(
        PemText {
            role: Role::CertFile,
            shown: cert_file.display().to_string(),
            bytes: &cert_bytes,
        },
        PemText {
            role: Role::KeyFile,
            shown: key_file.display().to_string(),
            bytes: &key_bytes,
        },
    )
}

/// Why a file cannot be read, with what to do when it is a permission problem.
pub fn cannot_read(error: &std::io::Error) -> String {
    let advice = if error.kind() == std::io::ErrorKind::PermissionDenied {
        "; the service user must be able to read it (certbot's live/ and archive/ and its \
         keys are root-only: see config/OPERATIONS.md, \"Certificates\"), and check it as that \
         user: sudo -u ssogate ssogate check"
    } else {
        ""
    };
    format!("cannot read it: {error}{advice}")
}

/// A PEM text, which of the two files it is, and how to name it (its path).
struct PemText<'a> {
    role: Role,
    shown: String,
    bytes: &'a [u8],
}

/// Which setting a PEM text came from.
#[derive(Clone, Copy)]
enum Role {
    CertFile,
    KeyFile,
}

impl PemText<'_> {
    /// The error naming this text's setting and path.
    fn error(&self, reason: String) -> TlsError {
        let path = self.shown.clone();
        match self.role {
            Role::CertFile => TlsError::Certificate { path, reason },
            Role::KeyFile => TlsError::Key { path, reason },
        }
    }
}

/// What a PEM text holds, by kind of section.
#[derive(Default)]
struct PemContents {
    certificates: Vec<CertificateDer<'static>>,
    keys: Vec<PrivateKeyDer<'static>>,
    /// An `ENCRYPTED PRIVATE KEY` (PKCS #8) or a traditional key with
    /// `Proc-Type: 4,ENCRYPTED`: unusable without its passphrase.
    encrypted_key: bool,
}

impl PemContents {
    fn read(text: &PemText<'_>) -> Result<Self, TlsError> {
        let fail = |reason: String| text.error(reason);
        let lossy = String::from_utf8_lossy(text.bytes);
        let mut contents = Self {
            encrypted_key: lossy.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----")
                || lossy.contains("Proc-Type: 4,ENCRYPTED"),
            ..Self::default()
        };
        if contents.encrypted_key {
            // A traditional encrypted key's headers are not base64: read no further.
            return Ok(contents);
        }
        if !lossy.contains("-----BEGIN ") {
            return Err(fail(
                "holds no PEM text (no -----BEGIN line); a DER file converts with \
                 `openssl x509 -inform der` (a certificate) or `openssl pkey -inform der` (a key)"
                    .into(),
            ));
        }
        for section in <(SectionKind, Vec<u8>)>::pem_slice_iter(text.bytes) {
            let (kind, der) = section.map_err(|e| fail(format!("not readable as PEM: {e}")))?;
            match kind {
                SectionKind::Certificate => contents.certificates.push(der.into()),
                SectionKind::PrivateKey => contents.keys.push(PrivateKeyDer::Pkcs8(der.into())),
                SectionKind::RsaPrivateKey => contents.keys.push(PrivateKeyDer::Pkcs1(der.into())),
                SectionKind::EcPrivateKey => contents.keys.push(PrivateKeyDer::Sec1(der.into())),
                _ => {}
            }
        }
        Ok(contents)
    }
}

/// [`pem_pair`] on a chain and key held in memory.
pub(super) fn pair_from_pem_text(cert_pem: &str, key_pem: &str) -> Result<CertifiedKey, TlsError> {
    pair_from_pem(
        PemText {
            role: Role::CertFile,
            shown: "(in memory)".into(),
            bytes: cert_pem.as_bytes(),
        },
        PemText {
            role: Role::KeyFile,
            shown: "(in memory)".into(),
            bytes: key_pem.as_bytes(),
        },
    )
}

/// [`pem_pair`] on texts already read.
fn pair_from_pem(cert: PemText<'_>, key: PemText<'_>) -> Result<CertifiedKey, TlsError> {
    let certs = PemContents::read(&cert)?;
    let keys = PemContents::read(&key)?;
    let cert_error = |reason: String| cert.error(reason);
    let key_error = |reason: String| key.error(reason);
    let cert_file_holds_a_key = !certs.keys.is_empty() || certs.encrypted_key;
    if certs.certificates.is_empty()
        && cert_file_holds_a_key
        && !keys.certificates.is_empty()
        && keys.keys.is_empty()
    {
        return Err(TlsError::Swapped {
            cert_file: cert.shown.clone(),
            key_file: key.shown.clone(),
        });
    }
    if keys.encrypted_key && keys.keys.is_empty() {
        return Err(key_error(format!(
            "holds an encrypted private key, and the gateway asks for no passphrase; decrypt it \
             with `openssl pkey -in {shown} -out {shown}.plain` (it asks for the passphrase), \
             make that file readable by the service user only, and name it in tls.key_file",
            shown = key.shown
        )));
    }
    if certs.certificates.is_empty() {
        return Err(cert_error(if !cert_file_holds_a_key {
            "no PEM certificate in the file (-----BEGIN CERTIFICATE-----)".into()
        } else {
            format!("holds a private key, not a certificate ({CERTBOT_NAMES})")
        }));
    }
    let Some(private_key) = keys.keys.into_iter().next() else {
        return Err(key_error(if keys.certificates.is_empty() {
            "no PEM private key in the file (-----BEGIN PRIVATE KEY-----)".into()
        } else {
            format!("holds a certificate, not a private key ({CERTBOT_NAMES})")
        }));
    };
    let provider = crypto_provider();
    let signing_key = provider
        .key_provider
        .load_private_key(private_key)
        .map_err(|e| key_error(format!("not a usable private key: {e}")))?;
    let certified = CertifiedKey::new(certs.certificates, signing_key);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(certified)
        }
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            // The key's certificate may be in the file, just not first.
            let position = certified.cert.iter().skip(1).position(|other| {
                CertifiedKey::new(vec![other.clone()], certified.key.clone())
                    .keys_match()
                    .is_ok()
            });
            Err(match position {
                Some(index) => cert_error(format!(
                    "the certificate of tls.key_file's key comes {} in the file; the server's \
                     own certificate must come first, then the ones that sign it ({CERTBOT_NAMES}, \
                     already in that order)",
                    ordinal(index + 2)
                )),
                None => key_error(format!(
                    "is not the private key of the certificate in tls.cert_file {} ({CERTBOT_NAMES}; \
                     chain.pem holds only the CA's certificates)",
                    cert.shown
                )),
            })
        }
        Err(e) => Err(TlsError::Config(e)),
    }
}

/// "2nd", "3rd", "4th", ... for a position in a file.
fn ordinal(n: usize) -> String {
    let suffix = match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
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
    /// TLS-ALPN-01 answers (RFC 8737) by name, while an ACME order waits for them.
    challenge_answers: Mutex<HashMap<String, Arc<CertifiedKey>>>,
}

/// The ALPN protocol of TLS-ALPN-01 challenges (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

impl std::fmt::Debug for CertificateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateStore")
            .field("files", &self.files)
            .finish()
    }
}

impl ResolvesServerCert for CertificateStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let asks_for_challenge = hello
            .alpn()
            .is_some_and(|mut offered| offered.any(|protocol| protocol == ACME_TLS_ALPN));
        if asks_for_challenge {
            // Only the validation certificate, and only for a name being validated.
            let name = hello.server_name()?.to_ascii_lowercase();
            return self.challenge_answers.lock().unwrap().get(&name).cloned();
        }
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

    /// The certificate presented now.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.read().unwrap().clone()
    }

    /// Presents `certificate` from the next handshake on (connections open keep theirs).
    pub fn replace(&self, certificate: CertifiedKey) {
        *self.current.write().unwrap() = Arc::new(certificate);
    }

    /// Answers TLS-ALPN-01 handshakes for `name` with `certificate` (`None`: no more).
    pub fn set_challenge_answer(&self, name: &str, certificate: Option<CertifiedKey>) {
        let mut answers = self.challenge_answers.lock().unwrap();
        match certificate {
            Some(certificate) => answers.insert(name.to_ascii_lowercase(), Arc::new(certificate)),
            None => answers.remove(&name.to_ascii_lowercase()),
        };
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory holding `(name, contents)` files.
    fn files(contents: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in contents {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        dir
    }

    /// The message of loading `cert` and `key` from `dir`, with the directory shown
    /// as `DIR`.
    fn refusal(dir: &tempfile::TempDir, cert: &str, key: &str) -> String {
        let error = pem_pair(&dir.path().join(cert), &dir.path().join(key))
            .expect_err("the pair should be refused")
            .to_string();
        error.replace(&dir.path().display().to_string(), "DIR")
    }

    fn issued() -> LocalCertificate {
        local_certificate(&["sentry.example.com"]).unwrap()
    }

    #[test]
    fn a_full_chain_and_its_key_load_leaf_first() {
        let issued = issued();
        let fullchain = format!("{}{}", issued.cert_pem, issued.ca_pem);
        let dir = files(&[
            ("fullchain.pem", &fullchain),
            ("privkey.pem", &issued.key_pem),
        ]);
        let pair = pem_pair(
            &dir.path().join("fullchain.pem"),
            &dir.path().join("privkey.pem"),
        )
        .unwrap();
        assert_eq!(pair.cert.len(), 2);
    }

    #[test]
    fn a_key_file_holding_a_certificate_is_named_with_certbot_names() {
        let issued = issued();
        let dir = files(&[
            ("fullchain.pem", &issued.cert_pem),
            ("cert.pem", &issued.cert_pem),
        ]);
        assert_eq!(
            refusal(&dir, "fullchain.pem", "cert.pem"),
            "tls.key_file DIR/cert.pem: holds a certificate, not a private key (with certbot, \
             tls.cert_file is fullchain.pem and tls.key_file privkey.pem, both from the same \
             live/<name>/ directory)"
        );
    }

    #[test]
    fn a_certificate_file_holding_only_a_key_is_named() {
        let issued = issued();
        let dir = files(&[("privkey.pem", &issued.key_pem)]);
        assert_eq!(
            refusal(&dir, "privkey.pem", "privkey.pem"),
            "tls.cert_file DIR/privkey.pem: holds a private key, not a certificate (with certbot, \
             tls.cert_file is fullchain.pem and tls.key_file privkey.pem, both from the same \
             live/<name>/ directory)"
        );
    }

    #[test]
    fn the_two_files_swapped_are_named_together() {
        let issued = issued();
        let dir = files(&[
            ("fullchain.pem", &issued.cert_pem),
            ("privkey.pem", &issued.key_pem),
        ]);
        assert_eq!(
            refusal(&dir, "privkey.pem", "fullchain.pem"),
            "tls.cert_file DIR/privkey.pem holds a private key and tls.key_file DIR/fullchain.pem \
             a certificate: the two are swapped (with certbot, tls.cert_file is fullchain.pem and \
             tls.key_file privkey.pem, both from the same live/<name>/ directory)"
        );
    }

    #[test]
    fn a_certificate_file_without_a_key_is_not_called_swapped() {
        let issued = issued();
        let dir = files(&[
            ("fullchain.pem", &issued.cert_pem),
            (
                "notes.pem",
                "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
            ),
        ]);
        assert_eq!(
            refusal(&dir, "notes.pem", "fullchain.pem"),
            "tls.cert_file DIR/notes.pem: no PEM certificate in the file (-----BEGIN CERTIFICATE-----)"
        );
    }

    #[test]
    fn an_encrypted_key_says_how_to_decrypt_it() {
        let issued = issued();
        // The sections' labels are what is read: the contents need not be decryptable.
        let body = |pem: &str| {
            pem.lines()
                .filter(|line| !line.starts_with("-----"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        let pkcs8 = format!(
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\n{}\n-----END ENCRYPTED PRIVATE KEY-----\n",
            body(&issued.key_pem)
        );
        let traditional = format!(
            "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,\
             00112233445566778899AABBCCDDEEFF\n\n{}\n-----END RSA PRIVATE KEY-----\n",
            body(&issued.key_pem)
        );
        for key in [pkcs8, traditional] {
            let dir = files(&[("fullchain.pem", &issued.cert_pem), ("privkey.pem", &key)]);
            assert_eq!(
                refusal(&dir, "fullchain.pem", "privkey.pem"),
                "tls.key_file DIR/privkey.pem: holds an encrypted private key, and the gateway \
                 asks for no passphrase; decrypt it with `openssl pkey -in DIR/privkey.pem -out \
                 DIR/privkey.pem.plain` (it asks for the passphrase), make that file readable by \
                 the service user only, and name it in tls.key_file"
            );
        }
    }

    #[test]
    fn a_key_of_another_certificate_is_refused() {
        let issued = issued();
        let other = issued_other();
        let dir = files(&[
            ("fullchain.pem", &issued.cert_pem),
            ("privkey.pem", &other.key_pem),
        ]);
        assert_eq!(
            refusal(&dir, "fullchain.pem", "privkey.pem"),
            "tls.key_file DIR/privkey.pem: is not the private key of the certificate in \
             tls.cert_file DIR/fullchain.pem (with certbot, tls.cert_file is fullchain.pem and \
             tls.key_file privkey.pem, both from the same live/<name>/ directory; chain.pem \
             holds only the CA's certificates)"
        );
        // certbot's chain.pem: only the CA's certificate, not the one of the key.
        let dir = files(&[
            ("chain.pem", &issued.ca_pem),
            ("privkey.pem", &issued.key_pem),
        ]);
        assert!(
            refusal(&dir, "chain.pem", "privkey.pem")
                .starts_with("tls.key_file DIR/privkey.pem: is not the private key of the certificate in tls.cert_file DIR/chain.pem")
        );
    }

    fn issued_other() -> LocalCertificate {
        local_certificate(&["other.example.com"]).unwrap()
    }

    #[test]
    fn a_chain_with_the_servers_certificate_not_first_is_named() {
        let issued = issued();
        let reversed = format!("{}{}", issued.ca_pem, issued.cert_pem);
        let dir = files(&[
            ("fullchain.pem", &reversed),
            ("privkey.pem", &issued.key_pem),
        ]);
        assert_eq!(
            refusal(&dir, "fullchain.pem", "privkey.pem"),
            "tls.cert_file DIR/fullchain.pem: the certificate of tls.key_file's key comes 2nd in \
             the file; the server's own certificate must come first, then the ones that sign it \
             (with certbot, tls.cert_file is fullchain.pem and tls.key_file privkey.pem, both \
             from the same live/<name>/ directory, already in that order)"
        );
    }

    #[test]
    fn files_that_are_not_pem_or_missing_say_so() {
        let issued = issued();
        let dir = files(&[
            ("fullchain.pem", &issued.cert_pem),
            ("privkey.der", "\u{30}\u{82}binary"),
            ("empty.pem", ""),
        ]);
        assert_eq!(
            refusal(&dir, "fullchain.pem", "privkey.der"),
            "tls.key_file DIR/privkey.der: holds no PEM text (no -----BEGIN line); a DER file \
             converts with `openssl x509 -inform der` (a certificate) or `openssl pkey -inform \
             der` (a key)"
        );
        assert!(
            refusal(&dir, "fullchain.pem", "empty.pem")
                .starts_with("tls.key_file DIR/empty.pem: holds no PEM text")
        );
        assert!(
            refusal(&dir, "fullchain.pem", "absent.pem")
                .starts_with("tls.key_file DIR/absent.pem: cannot read it: No such file")
        );
    }

    #[test]
    fn an_unreadable_file_says_to_check_as_the_service_user() {
        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let why = cannot_read(&denied);
        assert!(
            why.starts_with("cannot read it: permission denied"),
            "{why}"
        );
        assert!(why.ends_with("sudo -u ssogate ssogate check"), "{why}");
        let missing = std::io::Error::from(std::io::ErrorKind::NotFound);
        assert!(!cannot_read(&missing).contains("sudo"));
    }

    #[tokio::test]
    async fn a_reload_refuses_a_broken_pair_and_keeps_the_current_one() {
        let issued = issued();
        let dir = files(&[
            ("fullchain.pem", &issued.cert_pem),
            ("privkey.pem", &issued.key_pem),
        ]);
        let settings = TlsSettings::Files {
            cert_file: dir.path().join("fullchain.pem"),
            key_file: dir.path().join("privkey.pem"),
        };
        let (_, store) = server_config(&settings).unwrap().unwrap();
        std::fs::write(dir.path().join("privkey.pem"), &issued.cert_pem).unwrap();
        let error = store.reload().unwrap_err().to_string();
        assert!(
            error.ends_with("privkey.pem: holds a certificate, not a private key (with certbot, tls.cert_file is fullchain.pem and tls.key_file privkey.pem, both from the same live/<name>/ directory)"),
            "{error}"
        );
        assert_eq!(
            store.current.read().unwrap().cert[0].as_ref(),
            rustls_pki_types::CertificateDer::from_pem_slice(issued.cert_pem.as_bytes())
                .unwrap()
                .as_ref()
        );
    }
}
