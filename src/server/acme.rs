//! Certificates the gateway gets and renews itself from an ACME CA (RFC 8555,
//! `tls.acme_*`), as Caddy, Pomerium's autocert and Apache's mod_md do.
//!
//! The account key and the certificate live in `tls.acme_state_dir` (keys readable by
//! the service user only). Until a first certificate is issued the listener presents a
//! self-signed placeholder. Challenges are answered by the gateway itself: TLS-ALPN-01
//! (RFC 8737) on its own TLS listener, through the [`CertificateStore`]'s challenge
//! answers, or HTTP-01 on the plain-HTTP listener (`server.http_redirect_listen`) when
//! there is one, through [`Http01Answers`]. The certificate is renewed when a third of
//! its lifetime is left (a little earlier, at random, so that replicas and restarts
//! spread out); a failed order is retried after a minute, doubling up to an hour, and
//! meanwhile the current certificate stays. Every order is logged and counted
//! (`ssogate_acme_orders_total`).
//!
//! With several replicas sharing Redis (`session.store = "redis"`), one orders at a
//! time ([`SharedOrders`]): a replica takes the lock `acme:order` (`SET NX PX`, extended
//! while the order runs, given back by compare-and-delete) before ordering, and shares
//! what it got: the certificate with its key (`acme:certificate`) and the account
//! (`acme:account`), each sealed (AES-256-GCM) with a key derived from the first session
//! secret, so Redis never holds a private key readable. A replica that finds the lock
//! taken waits for the holder to finish and installs the shared certificate (in its own
//! state directory too) instead of ordering one. The CA's validation may reach any
//! replica, so the ordering one shares its challenge answers too (`acme:challenges`),
//! and every replica puts them up ([`spawn_challenge_mirror`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use rustls::sign::CertifiedKey;
use rustls_pki_types::PrivatePkcs8KeyDer;
use tokio::sync::watch;

use super::tls::{CertificateStore, TlsError, local_certificate, pair_from_pem_text, pem_pair};
use crate::config::AcmeSettings;
use crate::observe::Metrics;
use crate::session::{SharedStore, StoreUnavailable};

/// The account (its key and URL at the CA) in `tls.acme_state_dir`.
const ACCOUNT_FILE: &str = "account.json";
/// The certificate chain, leaf first, in `tls.acme_state_dir`.
pub const CERT_FILE: &str = "fullchain.pem";
/// The certificate's private key, in `tls.acme_state_dir`.
pub const KEY_FILE: &str = "privkey.pem";
/// The wait after a first failed order; it doubles after each failure, up to
/// [`LAST_RETRY`].
const FIRST_RETRY: Duration = Duration::from_secs(60);
const LAST_RETRY: Duration = Duration::from_secs(3600);
/// How long the CA may take to validate the challenges, and to issue.
const CA_PATIENCE: Duration = Duration::from_secs(90);
/// The lock of the replica that orders, in Redis (under `session.redis_key_prefix`).
const ORDER_LOCK: &str = "acme:order";
/// The challenge answers of the order running now, for every replica to give.
const SHARED_CHALLENGES: &str = "acme:challenges";
/// How often each replica looks for another one's challenge answers.
const MIRROR_INTERVAL: Duration = Duration::from_secs(1);
/// The certificate and key the ordering replica shares, sealed.
const SHARED_CERTIFICATE: &str = "acme:certificate";
/// The account the ordering replica shares, sealed.
const SHARED_ACCOUNT: &str = "acme:account";
/// How long the order lock lives unless its holder extends it (it does, every third
/// of this, while the order runs): a replica that dies holding it holds it no longer.
const LOCK_TTL: Duration = Duration::from_secs(30);
/// How long a replica waits for another one's order before it counts as failed: an
/// order takes at most twice [`CA_PATIENCE`], and a little more.
const LOCK_WAIT: Duration = Duration::from_secs(4 * 60);
/// How often a waiting replica looks whether the lock is free.
const LOCK_POLL: Duration = Duration::from_secs(1);

/// Why an order failed: the step, and what the CA or the system said.
#[derive(Debug, thiserror::Error)]
#[error("{step}: {reason}")]
pub struct AcmeError {
    step: String,
    reason: String,
}

impl AcmeError {
    fn at(step: impl Into<String>) -> impl FnOnce(instant_acme::Error) -> Self {
        let step = step.into();
        move |error| Self {
            step,
            reason: error.to_string(),
        }
    }

    fn new(step: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        Self {
            step: step.into(),
            reason: reason.to_string(),
        }
    }
}

/// HTTP-01 answers by token, while an order waits for them: what the plain-HTTP
/// listener serves at `/.well-known/acme-challenge/<token>`.
#[derive(Debug, Default)]
pub struct Http01Answers(Mutex<HashMap<String, String>>);

impl Http01Answers {
    /// The key authorization for `token`, while its challenge is open.
    pub fn answer(&self, token: &str) -> Option<String> {
        self.0.lock().unwrap().get(token).cloned()
    }

    fn set(&self, token: &str, key_authorization: Option<&str>) {
        let mut answers = self.0.lock().unwrap();
        match key_authorization {
            Some(answer) => answers.insert(token.to_owned(), answer.to_owned()),
            None => answers.remove(token),
        };
    }
}

/// The certificate and key files in the state directory.
fn stored_files(acme: &AcmeSettings) -> (PathBuf, PathBuf) {
    (
        acme.state_dir.join(CERT_FILE),
        acme.state_dir.join(KEY_FILE),
    )
}

/// The certificate ACME issued before, or a self-signed placeholder for the names
/// until there is one (or when the stored one does not load, which is logged).
pub fn stored_or_placeholder(acme: &AcmeSettings) -> Result<CertifiedKey, TlsError> {
    let (cert_file, key_file) = stored_files(acme);
    if cert_file.exists() {
        match pem_pair(&cert_file, &key_file) {
            Ok(pair) => return Ok(pair),
            Err(e) => {
                tracing::warn!(error = %e, "the stored ACME certificate does not load; a new one is ordered")
            }
        }
    }
    let names: Vec<&str> = acme.names.iter().map(String::as_str).collect();
    let placeholder = local_certificate(&names)?;
    pair_from_pem_text(&placeholder.cert_pem, &placeholder.key_pem)
}

/// Presents the stored certificate if it is not the one presented: another replica
/// sharing the state directory renewed it first.
fn present_stored(acme: &AcmeSettings, store: &CertificateStore) {
    let (cert_file, key_file) = stored_files(acme);
    if let Ok(stored) = pem_pair(&cert_file, &key_file)
        && stored.cert != store.current().cert
    {
        tracing::info!(
            "the stored ACME certificate is newer than the one presented: now presented"
        );
        store.replace(stored);
    }
}

/// The validity (not before, not after) of the stored certificate, if it loads and
/// is for every name of `tls.acme_names` (after the names changed, a new one is due).
pub fn stored_validity(acme: &AcmeSettings) -> Option<(SystemTime, SystemTime)> {
    let (cert_file, key_file) = stored_files(acme);
    validity_for_names(acme, &pem_pair(&cert_file, &key_file).ok()?)
}

/// What the state directory holds (for `ssogate check`).
#[derive(Debug, PartialEq, Eq)]
pub enum StoredCertificate {
    /// No certificate yet.
    None,
    /// A certificate that does not load, and why.
    Unusable(String),
    /// A certificate that is not for this name of `tls.acme_names`.
    NotForName(String),
    /// A certificate for every name, valid from, until.
    Valid(SystemTime, SystemTime),
}

/// The certificate in the state directory, told apart as [`StoredCertificate`].
pub fn stored_certificate(acme: &AcmeSettings) -> StoredCertificate {
    let (cert_file, key_file) = stored_files(acme);
    if !cert_file.exists() {
        return StoredCertificate::None;
    }
    match pem_pair(&cert_file, &key_file) {
        Ok(pair) => examine(acme, &pair),
        Err(e) => StoredCertificate::Unusable(e.to_string()),
    }
}

/// The validity of `pair`'s certificate, if it is for every name of `tls.acme_names`.
fn validity_for_names(
    acme: &AcmeSettings,
    pair: &CertifiedKey,
) -> Option<(SystemTime, SystemTime)> {
    match examine(acme, pair) {
        StoredCertificate::Valid(not_before, not_after) => Some((not_before, not_after)),
        StoredCertificate::NotForName(name) => {
            tracing::info!(%name, "the ACME certificate is not for this name: a new one is ordered");
            None
        }
        _ => None,
    }
}

/// Whether `pair`'s certificate is for every name of `tls.acme_names`, and its validity.
fn examine(acme: &AcmeSettings, pair: &CertifiedKey) -> StoredCertificate {
    let parsed = pair
        .cert
        .first()
        .map(|leaf| x509_parser::parse_x509_certificate(leaf));
    let Some(Ok((_, certificate))) = parsed else {
        return StoredCertificate::Unusable("the certificate does not parse".into());
    };
    let on_it: Vec<String> = certificate
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|names| {
            names
                .value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    x509_parser::extensions::GeneralName::DNSName(dns) => {
                        Some(dns.to_ascii_lowercase())
                    }
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    if let Some(missing) = acme.names.iter().find(|name| !on_it.contains(name)) {
        return StoredCertificate::NotForName(missing.clone());
    }
    match validity(&certificate) {
        Some((not_before, not_after)) => StoredCertificate::Valid(not_before, not_after),
        None => StoredCertificate::Unusable("its validity dates are out of range".into()),
    }
}

/// A certificate's validity period.
fn validity(
    certificate: &x509_parser::certificate::X509Certificate<'_>,
) -> Option<(SystemTime, SystemTime)> {
    let at = |time: x509_parser::time::ASN1Time| {
        let seconds = u64::try_from(time.timestamp()).ok()?;
        Some(SystemTime::UNIX_EPOCH + Duration::from_secs(seconds))
    };
    let validity = certificate.validity();
    Some((at(validity.not_before)?, at(validity.not_after)?))
}

/// When a certificate valid from `not_before` to `not_after` is renewed: when a third
/// of its lifetime is left, less up to a twentieth of it at random.
pub fn renewal_time(not_before: SystemTime, not_after: SystemTime) -> SystemTime {
    let (earliest, latest) = renewal_window(not_before, not_after);
    let spread = latest.duration_since(earliest).unwrap_or_default();
    latest - spread.mul_f64(rand::random::<f64>())
}

/// The earliest and the latest [`renewal_time`] of a certificate.
pub fn renewal_window(not_before: SystemTime, not_after: SystemTime) -> (SystemTime, SystemTime) {
    let lifetime = not_after
        .duration_since(not_before)
        .unwrap_or(Duration::ZERO);
    let latest = not_after - lifetime / 3;
    (latest - lifetime / 20, latest)
}

/// The wait before the next attempt after `failures` failed ones in a row.
fn retry_after(failures: u32) -> Duration {
    FIRST_RETRY
        .saturating_mul(1 << failures.saturating_sub(1).min(6))
        .min(LAST_RETRY)
}

/// The replicas' coordination through the Redis session store (see the module docs).
pub struct SharedOrders {
    store: Arc<SharedStore>,
    /// The session secrets now (`session.secrets`, which a reload may rotate): the
    /// first seals, any opens.
    secrets: Box<dyn Fn() -> Vec<String> + Send + Sync>,
    /// Whether this replica holds the order lock and orders now.
    ordering_here: AtomicBool,
}

/// An issued certificate: the chain (leaf first) and its key, PEM; also what
/// `acme:certificate` holds (sealed).
#[derive(serde::Serialize, serde::Deserialize)]
struct SharedCertificate {
    chain: String,
    key: String,
}

impl SharedOrders {
    pub(crate) fn new(
        store: Arc<SharedStore>,
        secrets: impl Fn() -> Vec<String> + Send + Sync + 'static,
    ) -> Self {
        Self {
            store,
            secrets: Box::new(secrets),
            ordering_here: AtomicBool::new(false),
        }
    }

    /// What is stored sealed under `name`, if any.
    async fn get(&self, name: &str) -> Result<Option<Vec<u8>>, AcmeError> {
        self.store
            .get_sealed(name, &(self.secrets)())
            .await
            .map_err(shared_store_error)
    }

    /// Stores `value` sealed under `name`, for `ttl` if given.
    async fn put(
        &self,
        name: &str,
        value: &impl serde::Serialize,
        ttl: Option<Duration>,
    ) -> Result<(), AcmeError> {
        let plain = serde_json::to_vec(value).map_err(|e| AcmeError::new("sharing", e))?;
        let secrets = (self.secrets)();
        let secret = secrets
            .first()
            .ok_or_else(|| AcmeError::new("sharing", "no session secret"))?;
        self.store
            .put_sealed(name, secret, &plain, ttl)
            .await
            .map_err(shared_store_error)
    }
}

fn shared_store_error(error: StoreUnavailable) -> AcmeError {
    AcmeError::new("the shared store (session.redis_url)", error)
}

/// How a certificate came.
enum Obtained {
    /// This replica ordered it.
    Issued,
    /// Another replica did, and shared it.
    Shared,
}

/// Orders the certificate now if there is none, and renews it when due, until `stop`;
/// with `shared`, one replica at a time orders and the others install its certificate.
pub fn spawn_renewal(
    acme: AcmeSettings,
    store: Arc<CertificateStore>,
    http01: Option<Arc<Http01Answers>>,
    shared: Option<Arc<SharedOrders>>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    tokio::spawn(async move {
        let mut failures = 0;
        loop {
            let wait = if failures > 0 {
                retry_after(failures)
            } else {
                match stored_validity(&acme) {
                    Some((not_before, not_after)) => {
                        present_stored(&acme, &store);
                        let due = renewal_time(not_before, not_after);
                        let wait = due
                            .duration_since(SystemTime::now())
                            .unwrap_or(Duration::ZERO);
                        tracing::info!(
                            expires = %chrono::DateTime::<chrono::Utc>::from(not_after).to_rfc3339(),
                            renewal_in = ?wait,
                            "ACME certificate in use"
                        );
                        wait
                    }
                    None => Duration::ZERO,
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = super::stopped(&mut stop) => return,
            }
            match obtain(&acme, &store, http01.as_deref(), shared.as_deref()).await {
                Ok(Obtained::Issued) => {
                    failures = 0;
                    metrics.acme_order(true);
                    tracing::info!(names = ?acme.names, "ACME certificate issued; new connections get it");
                }
                Ok(Obtained::Shared) => {
                    failures = 0;
                    tracing::info!(names = ?acme.names, "ACME certificate shared by another replica installed; new connections get it");
                }
                Err(e) => {
                    failures += 1;
                    metrics.acme_order(false);
                    tracing::error!(
                        error = %e,
                        retry_in = ?retry_after(failures),
                        "ACME order failed; the current certificate stays"
                    );
                }
            }
        }
    });
}

/// A new certificate: ordered here, or, with `shared`, from the replica that holds the
/// order lock (waiting for it to finish when another one does).
async fn obtain(
    acme: &AcmeSettings,
    store: &CertificateStore,
    http01: Option<&Http01Answers>,
    shared: Option<&SharedOrders>,
) -> Result<Obtained, AcmeError> {
    let Some(shared) = shared else {
        order(acme, store, http01, None).await?;
        return Ok(Obtained::Issued);
    };
    let deadline = tokio::time::Instant::now() + LOCK_WAIT;
    let mut said_waiting = false;
    loop {
        if install_shared(acme, store, shared).await? {
            return Ok(Obtained::Shared);
        }
        let lock = shared
            .store
            .try_lock(ORDER_LOCK, LOCK_TTL)
            .await
            .map_err(shared_store_error)?;
        if let Some(token) = lock {
            let obtained = order_holding_the_lock(acme, store, http01, shared, &token).await;
            if let Err(e) = shared.store.unlock(ORDER_LOCK, &token).await {
                tracing::warn!(error = %e, "the ACME order lock was not given back; it expires by itself");
            }
            return obtained;
        }
        if !said_waiting {
            tracing::info!("ACME: another replica is ordering the certificate; waiting for it");
            said_waiting = true;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(AcmeError::new(
                "waiting for another replica's order",
                format!("the lock was held for {LOCK_WAIT:?} and no certificate shared"),
            ));
        }
        tokio::time::sleep(LOCK_POLL).await;
    }
}

/// Orders (unless the holder before shared a certificate just now), extending the
/// lock while the order runs, and shares the certificate.
async fn order_holding_the_lock(
    acme: &AcmeSettings,
    store: &CertificateStore,
    http01: Option<&Http01Answers>,
    shared: &SharedOrders,
    token: &str,
) -> Result<Obtained, AcmeError> {
    if install_shared(acme, store, shared).await? {
        return Ok(Obtained::Shared);
    }
    shared.ordering_here.store(true, Ordering::Release);
    let ordering = order(acme, store, http01, Some(shared));
    tokio::pin!(ordering);
    let mut extend =
        tokio::time::interval_at(tokio::time::Instant::now() + LOCK_TTL / 3, LOCK_TTL / 3);
    let issued = loop {
        tokio::select! {
            issued = &mut ordering => {
                shared.ordering_here.store(false, Ordering::Release);
                break issued?;
            }
            _ = extend.tick() => match shared.store.extend_lock(ORDER_LOCK, token, LOCK_TTL).await {
                Ok(true) => {}
                Ok(false) => tracing::warn!("the ACME order lock expired while ordering: another replica may order too"),
                Err(e) => tracing::warn!(error = %e, "the ACME order lock could not be extended"),
            },
        }
    };
    if let Err(e) = shared.put(SHARED_CERTIFICATE, &issued, None).await {
        tracing::warn!(error = %e, "the ACME certificate could not be shared: the other replicas order their own");
    }
    Ok(Obtained::Issued)
}

/// Installs the certificate another replica shared, when it is not the one presented,
/// is for every name and is not due for renewal: stored in the state directory and
/// presented. Whether it did.
async fn install_shared(
    acme: &AcmeSettings,
    store: &CertificateStore,
    shared: &SharedOrders,
) -> Result<bool, AcmeError> {
    let Some(plain) = shared.get(SHARED_CERTIFICATE).await? else {
        return Ok(false);
    };
    let Ok(certificate) = serde_json::from_slice::<SharedCertificate>(&plain) else {
        tracing::warn!("the shared ACME certificate does not load; a new one is ordered");
        return Ok(false);
    };
    let pair = match pair_from_pem_text(&certificate.chain, &certificate.key) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::warn!(error = %e, "the shared ACME certificate does not load; a new one is ordered");
            return Ok(false);
        }
    };
    if pair.cert == store.current().cert {
        return Ok(false);
    }
    let Some((not_before, not_after)) = validity_for_names(acme, &pair) else {
        return Ok(false);
    };
    if renewal_time(not_before, not_after) <= SystemTime::now() {
        return Ok(false);
    }
    store_files(acme, &certificate)?;
    store.replace(pair);
    Ok(true)
}

/// Writes the certificate and key into the state directory (the key first: a reader
/// of the new certificate never finds the old key).
fn store_files(acme: &AcmeSettings, certificate: &SharedCertificate) -> Result<(), AcmeError> {
    let (cert_file, key_file) = stored_files(acme);
    write_private(&key_file, &certificate.key).map_err(|e| AcmeError::new("storing the key", e))?;
    write_private(&cert_file, &certificate.chain)
        .map_err(|e| AcmeError::new("storing the certificate", e))
}

/// One order: the account, the challenges answered, the certificate issued, stored
/// and swapped in; what was issued, to share.
async fn order(
    acme: &AcmeSettings,
    store: &CertificateStore,
    http01: Option<&Http01Answers>,
    shared: Option<&SharedOrders>,
) -> Result<SharedCertificate, AcmeError> {
    tracing::info!(names = ?acme.names, directory = %acme.directory, "ACME: ordering a certificate");
    let account = account(acme, shared).await?;
    let identifiers: Vec<Identifier> = acme
        .names
        .iter()
        .map(|name| Identifier::Dns(name.clone()))
        .collect();
    let mut order = account
        .new_order(&NewOrder::new(&identifiers))
        .await
        .map_err(AcmeError::at(format!("ordering {:?}", acme.names)))?;
    let mut opened = Vec::new();
    let ready = answer_challenges(&mut order, store, http01, shared, &mut opened).await;
    if let Some(shared) = shared
        && !opened.is_empty()
        && let Err(e) = shared
            .put(
                SHARED_CHALLENGES,
                &Vec::<ChallengeAnswer>::new(),
                Some(LOCK_WAIT),
            )
            .await
    {
        tracing::debug!(error = %e, "the shared ACME challenge answers expire by themselves");
    }
    for answer in &opened {
        answer.take_down(store, http01);
    }
    if ready? != OrderStatus::Ready {
        return Err(AcmeError::new(
            "validation",
            format!(
                "the CA did not validate the challenges{}",
                challenge_problems(&mut order).await
            ),
        ));
    }
    let key = rcgen::KeyPair::generate().map_err(|e| AcmeError::new("making a key", e))?;
    let mut params = rcgen::CertificateParams::new(acme.names.clone())
        .map_err(|e| AcmeError::new("making the request", e))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params
        .serialize_request(&key)
        .map_err(|e| AcmeError::new("making the request", e))?;
    order
        .finalize_csr(csr.der())
        .await
        .map_err(AcmeError::at("finalizing the order"))?;
    let chain = order
        .poll_certificate(&RetryPolicy::new().timeout(CA_PATIENCE))
        .await
        .map_err(AcmeError::at("downloading the certificate"))?;
    let issued = SharedCertificate {
        chain,
        key: key.serialize_pem(),
    };
    let pair = pair_from_pem_text(&issued.chain, &issued.key)
        .map_err(|e| AcmeError::new("the issued certificate", e))?;
    store_files(acme, &issued)?;
    store.replace(pair);
    Ok(issued)
}

/// One challenge's answer: what the gateway presents to the CA's validation, for
/// `name` (TLS-ALPN-01: a certificate carrying `digest`) or at `token` (HTTP-01:
/// `key_authorization`). Also what the ordering replica shares, so that every replica
/// answers (`acme:challenges`): none of it is secret, the CA's validation sees it all.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct ChallengeAnswer {
    http01: bool,
    name: String,
    token: String,
    key_authorization: String,
    digest: Vec<u8>,
}

impl ChallengeAnswer {
    /// Presents it (an HTTP-01 answer only where there is a plain-HTTP listener).
    fn put_up(
        &self,
        store: &CertificateStore,
        http01: Option<&Http01Answers>,
    ) -> Result<(), TlsError> {
        match (self.http01, http01) {
            (true, Some(http01)) => http01.set(&self.token, Some(&self.key_authorization)),
            (true, None) => {}
            (false, _) => store
                .set_challenge_answer(&self.name, Some(tls_alpn_answer(&self.name, &self.digest)?)),
        }
        Ok(())
    }

    fn take_down(&self, store: &CertificateStore, http01: Option<&Http01Answers>) {
        match (self.http01, http01) {
            (true, Some(http01)) => http01.set(&self.token, None),
            (true, None) => {}
            (false, _) => store.set_challenge_answer(&self.name, None),
        }
    }
}

/// The challenge this replica answers: HTTP-01 when there is a plain-HTTP listener,
/// else TLS-ALPN-01.
fn challenge_kind(http01: Option<&Http01Answers>) -> ChallengeType {
    if http01.is_some() {
        ChallengeType::Http01
    } else {
        ChallengeType::TlsAlpn01
    }
}

/// Puts up an answer for each pending authorization; `opened` gets each, to take
/// down afterwards.
async fn put_up_answers(
    order: &mut instant_acme::Order,
    store: &CertificateStore,
    http01: Option<&Http01Answers>,
    opened: &mut Vec<ChallengeAnswer>,
) -> Result<(), AcmeError> {
    let kind = challenge_kind(http01);
    let mut authorizations = order.authorizations();
    while let Some(authorization) = authorizations.next().await {
        let mut authorization =
            authorization.map_err(AcmeError::at("reading the authorizations"))?;
        match authorization.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            other => {
                return Err(AcmeError::new(
                    "authorization",
                    format!("{other:?} for {}", authorization.identifier()),
                ));
            }
        }
        let challenge = authorization.challenge(kind.clone()).ok_or_else(|| {
            AcmeError::new(
                "authorization",
                format!("the CA offers no {kind:?} challenge"),
            )
        })?;
        let key_authorization = challenge.key_authorization();
        let answer = ChallengeAnswer {
            http01: http01.is_some(),
            name: challenge.identifier().to_string(),
            token: challenge.token.clone(),
            key_authorization: key_authorization.as_str().to_owned(),
            digest: key_authorization.digest().as_ref().to_vec(),
        };
        answer
            .put_up(store, http01)
            .map_err(|e| AcmeError::new("making the TLS-ALPN-01 answer", e))?;
        opened.push(answer);
    }
    Ok(())
}

/// Tells the CA that the answers to the pending authorizations are up.
async fn start_challenges(
    order: &mut instant_acme::Order,
    http01: Option<&Http01Answers>,
) -> Result<(), AcmeError> {
    let kind = challenge_kind(http01);
    let mut authorizations = order.authorizations();
    while let Some(authorization) = authorizations.next().await {
        let mut authorization =
            authorization.map_err(AcmeError::at("reading the authorizations"))?;
        if authorization.status != AuthorizationStatus::Pending {
            continue;
        }
        let name = authorization.identifier().to_string();
        let mut challenge = authorization.challenge(kind.clone()).ok_or_else(|| {
            AcmeError::new(
                "authorization",
                format!("the CA offers no {kind:?} challenge"),
            )
        })?;
        challenge
            .set_ready()
            .await
            .map_err(AcmeError::at(format!("starting the challenge for {name}")))?;
    }
    Ok(())
}

/// Puts up the answers (shared with the other replicas, with `shared`), tells the CA,
/// and waits for its validation: the order's status then.
async fn answer_challenges(
    order: &mut instant_acme::Order,
    store: &CertificateStore,
    http01: Option<&Http01Answers>,
    shared: Option<&SharedOrders>,
    opened: &mut Vec<ChallengeAnswer>,
) -> Result<OrderStatus, AcmeError> {
    put_up_answers(order, store, http01, opened).await?;
    if let Some(shared) = shared
        && !opened.is_empty()
    {
        share_answers(shared, opened).await?;
    }
    start_challenges(order, http01).await?;
    order
        .poll_ready(&RetryPolicy::new().timeout(CA_PATIENCE))
        .await
        .map_err(AcmeError::at("waiting for the CA to validate"))
}

/// Shares the answers of this replica's order, and gives the other replicas' mirrors
/// ([`spawn_challenge_mirror`]) the time to put them up.
async fn share_answers(
    shared: &SharedOrders,
    answers: &[ChallengeAnswer],
) -> Result<(), AcmeError> {
    shared
        .put(SHARED_CHALLENGES, &answers, Some(LOCK_WAIT))
        .await?;
    tokio::time::sleep(MIRROR_INTERVAL * 2).await;
    Ok(())
}

/// Every [`MIRROR_INTERVAL`], puts up the challenge answers another replica's order
/// shared, and takes them down when it is over: the CA's validation may reach any
/// replica behind the load balancer, and each must answer.
pub fn spawn_challenge_mirror(
    store: Arc<CertificateStore>,
    http01: Option<Arc<Http01Answers>>,
    shared: Arc<SharedOrders>,
    mut stop: watch::Receiver<bool>,
) {
    tokio::spawn(async move {
        let mut up: Vec<ChallengeAnswer> = Vec::new();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(MIRROR_INTERVAL) => {}
                _ = super::stopped(&mut stop) => return,
            }
            let shared_now = match shared.get(SHARED_CHALLENGES).await {
                Ok(plain) => plain
                    .and_then(|plain| serde_json::from_slice::<Vec<ChallengeAnswer>>(&plain).ok())
                    .unwrap_or_default(),
                // Redis unreachable: what is up stays up.
                Err(_) => continue,
            };
            let wanted = if shared.ordering_here.load(Ordering::Acquire) {
                Vec::new() // this replica's own order: its answers are up already
            } else {
                shared_now
            };
            if wanted == up {
                continue;
            }
            for answer in up.iter().filter(|answer| !wanted.contains(answer)) {
                answer.take_down(&store, http01.as_deref());
            }
            for answer in wanted.iter().filter(|answer| !up.contains(answer)) {
                match answer.put_up(&store, http01.as_deref()) {
                    Ok(()) => {
                        tracing::info!(name = %answer.name, "ACME: answering the challenge of another replica's order")
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "ACME: another replica's challenge answer cannot be put up")
                    }
                }
            }
            up = wanted;
        }
    });
}

/// What the CA said about each failed challenge, for the log line.
async fn challenge_problems(order: &mut instant_acme::Order) -> String {
    let mut said = String::new();
    let mut authorizations = order.authorizations();
    while let Some(Ok(authorization)) = authorizations.next().await {
        for challenge in &authorization.challenges {
            if let Some(problem) = &challenge.error {
                said.push_str(&format!(
                    "; {} ({:?}): {problem}",
                    authorization.identifier(),
                    challenge.r#type
                ));
            }
        }
    }
    said
}

/// The self-signed certificate of a TLS-ALPN-01 answer (RFC 8737, section 3): the
/// name, and the key authorization's digest in the critical acmeIdentifier extension.
fn tls_alpn_answer(name: &str, digest: &[u8]) -> Result<CertifiedKey, TlsError> {
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()])?;
    params
        .custom_extensions
        .push(rcgen::CustomExtension::new_acme_identifier(digest));
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    // Not through `pair_from_pem_text`: its check that key and certificate fit parses
    // the certificate, and refuses the critical extension it does not know.
    let signing_key = crate::outbound::crypto_provider()
        .key_provider
        .load_private_key(PrivatePkcs8KeyDer::from(key.serialize_der()).into())?;
    Ok(CertifiedKey::new(vec![cert.der().clone()], signing_key))
}

/// The account stored for this directory, or the one another replica shared, or a
/// new one (then stored, and shared).
async fn account(acme: &AcmeSettings, shared: Option<&SharedOrders>) -> Result<Account, AcmeError> {
    let file = acme.state_dir.join(ACCOUNT_FILE);
    let directory = acme.directory.as_str();
    if let Ok(text) = std::fs::read_to_string(&file) {
        match serde_json::from_str::<StoredAccount>(&text) {
            Ok(stored) if stored.directory == directory => {
                return existing_account(acme, stored).await;
            }
            Ok(_) => tracing::info!(
                file = %file.display(),
                "the stored ACME account is for another directory: a new one is made"
            ),
            Err(e) => tracing::warn!(
                file = %file.display(),
                error = %e,
                "the stored ACME account does not load: a new one is made"
            ),
        }
    }
    if let Some(shared) = shared
        && let Some(plain) = shared.get(SHARED_ACCOUNT).await?
        && let Ok(stored) = serde_json::from_slice::<StoredAccount>(&plain)
        && stored.directory == directory
    {
        write_private(&file, &String::from_utf8_lossy(&plain))
            .map_err(|e| AcmeError::new("storing the account", e))?;
        tracing::info!(file = %file.display(), directory, "ACME account shared by another replica: used");
        return existing_account(acme, stored).await;
    }
    let binding = acme.external_account.as_ref().map(|binding| {
        instant_acme::ExternalAccountKey::new(binding.kid.clone(), &binding.hmac_key)
    });
    let (account, credentials) = account_builder(acme)?
        .create(
            &NewAccount {
                contact: &[&acme.contact],
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            directory.to_owned(),
            binding.as_ref(),
        )
        .await
        .map_err(AcmeError::at(format!(
            "creating the account at {directory}"
        )))?;
    let stored = StoredAccount {
        directory: directory.to_owned(),
        credentials,
    };
    let text = serde_json::to_string_pretty(&stored)
        .map_err(|e| AcmeError::new("storing the account", e))?;
    write_private(&file, &text).map_err(|e| AcmeError::new("storing the account", e))?;
    tracing::info!(file = %file.display(), directory, "ACME account created");
    if let Some(shared) = shared
        && let Err(e) = shared.put(SHARED_ACCOUNT, &stored, None).await
    {
        tracing::warn!(error = %e, "the ACME account could not be shared");
    }
    Ok(account)
}

/// The account client for `acme`'s directory (trusting `tls.acme_ca_file` if set).
fn account_builder(acme: &AcmeSettings) -> Result<instant_acme::AccountBuilder, AcmeError> {
    match &acme.ca_file {
        Some(ca_file) => Account::builder_with_root(ca_file),
        None => Account::builder(),
    }
    .map_err(AcmeError::at("the HTTPS client"))
}

/// The account `stored` describes.
async fn existing_account(
    acme: &AcmeSettings,
    stored: StoredAccount,
) -> Result<Account, AcmeError> {
    account_builder(acme)?
        .from_credentials(stored.credentials)
        .await
        .map_err(AcmeError::at(format!("the directory {}", stored.directory)))
}

/// `account.json`: the directory the account belongs to, and its credentials.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredAccount {
    directory: String,
    credentials: AccountCredentials,
}

/// Whether the account file is there, for `ssogate check`.
pub fn account_stored(acme: &AcmeSettings) -> bool {
    acme.state_dir.join(ACCOUNT_FILE).is_file()
}

/// Writes `text` to `path` readable by the owner only, replacing the file at once (a
/// reader sees the old or the new file, never half of one).
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let partial = path.with_extension("partial");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&partial)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&partial, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_comes_when_a_third_of_the_lifetime_is_left_or_a_little_sooner() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let lifetime = Duration::from_secs(90 * 86400);
        for _ in 0..100 {
            let due = renewal_time(start, start + lifetime);
            let left = start + lifetime - due.duration_since(start).unwrap();
            let left = left.duration_since(start).unwrap();
            assert!(left >= lifetime / 3, "{left:?}");
            assert!(left <= lifetime / 3 + lifetime / 20, "{left:?}");
        }
    }

    #[test]
    fn retries_wait_a_minute_doubling_up_to_an_hour() {
        let waits: Vec<u64> = (1..=8).map(|n| retry_after(n).as_secs()).collect();
        assert_eq!(waits, [60, 120, 240, 480, 960, 1920, 3600, 3600]);
    }

    #[test]
    fn a_tls_alpn_answer_names_the_name_and_carries_the_digest() {
        let digest = [7u8; 32];
        let answer = tls_alpn_answer("sentry.example.com", &digest).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(answer.cert[0].as_ref()).unwrap();
        let extension = cert
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .expect("the acmeIdentifier extension");
        assert!(extension.critical);
        // An OCTET STRING of the 32-byte digest.
        assert_eq!(extension.value, [&[0x04, 32][..], &digest].concat());
    }
}
