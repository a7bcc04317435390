//! `ssogate check` on the TLS files: readable by this user, a key where the key
//! belongs, a certificate valid for `server.public_url`'s host and not about to expire.

use std::path::Path;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, NaiveDate, Utc};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};

/// A certificate expiring sooner than this fails the check (renewal is overdue).
pub const RENEW_WITHIN: Duration = Duration::from_secs(14 * 24 * 3600);

/// Checks the certificate and key files for `host`, as of `now`.
pub fn check(
    cert_file: &Path,
    key_file: &Path,
    host: &url::Host<&str>,
    now: SystemTime,
) -> Result<String, String> {
    let cert_pem = read("tls.cert_file", cert_file)?;
    let key_pem = read("tls.key_file", key_file)?;
    let key_text = String::from_utf8_lossy(&key_pem);
    if key_text.contains("-----BEGIN CERTIFICATE") && !key_text.contains("PRIVATE KEY-----") {
        return Err(format!(
            "tls.key_file {}: holds a certificate, not a private key (with certbot, the key is \
             privkey.pem and the certificate chain fullchain.pem)",
            key_file.display()
        ));
    }
    let shown = cert_file.display();
    let leaf = CertificateDer::pem_slice_iter(&cert_pem)
        .next()
        .and_then(Result::ok)
        .ok_or_else(|| format!("tls.cert_file {shown}: no PEM certificate in the file"))?;
    let name = match host {
        url::Host::Domain(domain) => ServerName::try_from(domain.to_string()),
        url::Host::Ipv4(ip) => Ok(ServerName::from(std::net::IpAddr::V4(*ip))),
        url::Host::Ipv6(ip) => Ok(ServerName::from(std::net::IpAddr::V6(*ip))),
    }
    .map_err(|e| format!("server.public_url's host {host} is not a server name: {e}"))?;
    let parsed = rustls::server::ParsedCertificate::try_from(&leaf)
        .map_err(|e| format!("tls.cert_file {shown}: {e}"))?;
    rustls::client::verify_server_name(&parsed, &name).map_err(|e| {
        format!("tls.cert_file {shown}: not valid for {host}, server.public_url's host ({e})")
    })?;
    let expires = not_after(&leaf).ok_or_else(|| {
        format!("tls.cert_file {shown}: cannot read the certificate's expiry date")
    })?;
    let now = DateTime::<Utc>::from(now);
    let date = expires.format("%Y-%m-%d %H:%M UTC");
    if expires <= now {
        return Err(format!(
            "tls.cert_file {shown}: the certificate expired on {date}"
        ));
    }
    let left = (expires - now).to_std().unwrap_or_default();
    if left < RENEW_WITHIN {
        return Err(format!(
            "tls.cert_file {shown}: the certificate expires on {date}, in {} day(s); renew it \
             (certbot renew), then `systemctl reload ssogate`",
            left.as_secs() / 86_400
        ));
    }
    Ok(format!("valid for {host} until {date}"))
}

/// The file's bytes, or why this user cannot read them.
fn read(key: &str, path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| unreadable(key, path, &e))
}

/// Why a file cannot be read, with what to do when it is a permission problem.
pub fn unreadable(key: &str, path: &Path, error: &std::io::Error) -> String {
    let advice = if error.kind() == std::io::ErrorKind::PermissionDenied {
        "; the service user must be able to read it (certbot's live/ and archive/ and its \
         keys are root-only: see config/OPERATIONS.md, \"Certificates\"), and check it as that user: \
         sudo -u ssogate ssogate check"
    } else {
        ""
    };
    format!("{key} {}: cannot read it: {error}{advice}", path.display())
}

/// The certificate's notAfter, read from its DER (Certificate, TBSCertificate, Validity).
pub fn not_after(der: &[u8]) -> Option<DateTime<Utc>> {
    let (_, certificate, _) = element(der)?;
    let (_, tbs, _) = element(certificate)?;
    let mut rest = tbs;
    let (tag, _, after_version) = element(rest)?;
    if tag == 0xA0 {
        rest = after_version;
    }
    // serialNumber, signature, issuer
    for _ in 0..3 {
        rest = element(rest)?.2;
    }
    let (_, validity, _) = element(rest)?;
    let (_, _, after_not_before) = element(validity)?;
    let (tag, time, _) = element(after_not_before)?;
    let text = std::str::from_utf8(time).ok()?.strip_suffix('Z')?;
    let digits = match tag {
        // UTCTime: YYMMDDHHMMSS, years 1950-2049
        0x17 => {
            let year: u32 = text.get(..2)?.parse().ok()?;
            format!("{}{text}", if year < 50 { "20" } else { "19" })
        }
        // GeneralizedTime: YYYYMMDDHHMMSS
        0x18 => text.to_owned(),
        _ => return None,
    };
    let number = |range: std::ops::Range<usize>| digits.get(range)?.parse::<u32>().ok();
    let date = NaiveDate::from_ymd_opt(number(0..4)? as i32, number(4..6)?, number(6..8)?)?;
    let time = date.and_hms_opt(number(8..10)?, number(10..12)?, number(12..14)?)?;
    Some(time.and_utc())
}

/// One DER element: its tag, its content, and what follows it.
fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (length, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let length = rest[..count]
            .iter()
            .fold(0usize, |length, byte| length << 8 | usize::from(*byte));
        (length, &rest[count..])
    };
    (rest.len() >= length).then(|| (tag, &rest[..length], &rest[length..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A certificate for `names` valid until `year-month-day`, and its key, as PEM files.
    fn files(
        dir: &Path,
        names: &[&str],
        until: (i32, u8, u8),
    ) -> (std::path::PathBuf, std::path::PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(until.0, until.1, until.2);
        let cert = params.self_signed(&key).unwrap();
        let cert_file = dir.join("fullchain.pem");
        let key_file = dir.join("privkey.pem");
        std::fs::write(&cert_file, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        (cert_file, key_file)
    }

    fn at(year: i32, month: u32, day: u32) -> SystemTime {
        NaiveDate::from_ymd_opt(year, month, day)
            .unwrap()
            .and_hms_opt(12, 0, 0)
            .unwrap()
            .and_utc()
            .into()
    }

    const HOST: url::Host<&str> = url::Host::Domain("sentry.example.com");

    #[test]
    fn a_certificate_for_the_host_far_from_expiry_passes() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = files(dir.path(), &["sentry.example.com"], (2031, 3, 4));
        assert_eq!(
            check(&cert, &key, &HOST, at(2030, 1, 1)),
            Ok("valid for sentry.example.com until 2031-03-04 00:00 UTC".into())
        );
    }

    #[test]
    fn a_certificate_for_other_names_fails_naming_the_host() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = files(dir.path(), &["other.example.com"], (2031, 3, 4));
        let why = check(&cert, &key, &HOST, at(2030, 1, 1)).unwrap_err();
        assert!(
            why.contains("not valid for sentry.example.com, server.public_url's host"),
            "{why}"
        );
    }

    #[test]
    fn a_certificate_expiring_within_14_days_fails_with_the_date() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = files(dir.path(), &["sentry.example.com"], (2030, 1, 10));
        let why = check(&cert, &key, &HOST, at(2030, 1, 1)).unwrap_err();
        assert!(
            why.ends_with(
                "the certificate expires on 2030-01-10 00:00 UTC, in 8 day(s); renew it \
                 (certbot renew), then `systemctl reload ssogate`"
            ),
            "{why}"
        );
        let why = check(&cert, &key, &HOST, at(2030, 2, 1)).unwrap_err();
        assert!(
            why.ends_with("the certificate expired on 2030-01-10 00:00 UTC"),
            "{why}"
        );
    }

    #[test]
    fn a_key_file_holding_the_certificate_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, _) = files(dir.path(), &["sentry.example.com"], (2031, 3, 4));
        let why = check(&cert, &cert, &HOST, at(2030, 1, 1)).unwrap_err();
        assert!(
            why.contains("holds a certificate, not a private key"),
            "{why}"
        );
    }

    #[test]
    fn an_unreadable_file_says_to_check_as_the_service_user() {
        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let why = unreadable(
            "tls.key_file",
            Path::new("/etc/letsencrypt/live/x/privkey.pem"),
            &denied,
        );
        assert!(
            why.starts_with("tls.key_file /etc/letsencrypt/live/x/privkey.pem: cannot read it: "),
            "{why}"
        );
        assert!(why.ends_with("sudo -u ssogate ssogate check"), "{why}");
        let missing = std::io::Error::from(std::io::ErrorKind::NotFound);
        assert!(!unreadable("tls.key_file", Path::new("/x"), &missing).contains("sudo"));
    }
}
