//! `ssogate check` on the TLS files: the pair loads as startup loads it
//! ([`tls::pem_pair`]: readable by this user, a key where the key belongs, the two
//! belonging together), and the certificate is valid for `server.public_url`'s host and
//! every `server.host_aliases` name, and not about to expire.

use std::path::Path;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, NaiveDate, Utc};
use rustls_pki_types::ServerName;

use super::Line;
use crate::server::tls;

/// A certificate expiring sooner than this fails the check (renewal is overdue).
pub const RENEW_WITHIN: Duration = Duration::from_secs(14 * 24 * 3600);

/// Checks the certificate and key files for `host` and the `aliases`, as of `now`:
/// one OK line, or one failure per problem (each name not covered is one), and a
/// warning for a certificate without the chain that signs it.
pub fn check(
    cert_file: &Path,
    key_file: &Path,
    host: &url::Host<&str>,
    aliases: &[String],
    now: SystemTime,
) -> Vec<Line> {
    let pair = match tls::pem_pair(cert_file, key_file) {
        Ok(pair) => pair,
        Err(e) => return vec![Line::Fail(e.to_string())],
    };
    let shown = cert_file.display();
    let leaf = &pair.cert[0];
    let parsed = match rustls::server::ParsedCertificate::try_from(leaf) {
        Ok(parsed) => parsed,
        Err(e) => return vec![Line::Fail(format!("tls.cert_file {shown}: {e}"))],
    };
    let mut failures = Vec::new();
    match server_name(&host.to_string()) {
        Err(e) => failures.push(format!(
            "server.public_url's host {host} is not a server name: {e}"
        )),
        Ok(name) => {
            if let Err(e) = rustls::client::verify_server_name(&parsed, &name) {
                failures.push(format!(
                    "tls.cert_file {shown}: not valid for {host}, server.public_url's host ({e})"
                ));
            }
        }
    }
    for alias in aliases {
        let covered = server_name(alias)
            .map_err(|e| e.to_string())
            .and_then(|name| {
                rustls::client::verify_server_name(&parsed, &name).map_err(|e| e.to_string())
            });
        if let Err(e) = covered {
            failures.push(format!(
                "tls.cert_file {shown}: not valid for {alias}, one of server.host_aliases ({e}); \
                 add the name to the certificate (certbot: another -d {alias}) or remove it \
                 from server.host_aliases"
            ));
        }
    }
    let mut lines: Vec<Line> = match expiry(leaf, now, &shown.to_string()) {
        Ok(date) if failures.is_empty() => {
            let names = std::iter::once(host.to_string())
                .chain(aliases.iter().cloned())
                .collect::<Vec<_>>()
                .join(", ");
            vec![Line::Pass(format!("valid for {names} until {date}"))]
        }
        Ok(_) => failures.into_iter().map(Line::Fail).collect(),
        Err(e) => failures
            .into_iter()
            .chain(std::iter::once(e))
            .map(Line::Fail)
            .collect(),
    };
    if pair.cert.len() == 1 && is_self_signed(leaf) == Some(false) {
        lines.push(Line::Warn(format!(
            "tls.cert_file {shown} holds the server's certificate alone, without the \
             certificates that sign it: browsers may cope, but sentry-cli, SDKs and curl \
             refuse it (unable to get local issuer certificate); with certbot, name \
             fullchain.pem, not cert.pem"
        )));
    }
    lines
}

/// Whether the certificate names itself as its issuer (a self-signed one, which has no
/// chain to send), or `None` when its DER cannot be read that far.
fn is_self_signed(der: &[u8]) -> Option<bool> {
    let tbs = tbs_fields(der)?;
    Some(tbs.issuer == tbs.subject)
}

/// The fields of a certificate's TBSCertificate this check reads, each its DER content.
struct TbsFields<'a> {
    issuer: &'a [u8],
    validity: &'a [u8],
    subject: &'a [u8],
}

/// Walks a certificate's DER (Certificate, TBSCertificate) to the fields it reads.
fn tbs_fields(der: &[u8]) -> Option<TbsFields<'_>> {
    let (_, certificate, _) = element(der)?;
    let (_, tbs, _) = element(certificate)?;
    let mut rest = tbs;
    let (tag, _, after_version) = element(rest)?;
    if tag == 0xA0 {
        rest = after_version;
    }
    // serialNumber, signature
    for _ in 0..2 {
        rest = element(rest)?.2;
    }
    let (_, issuer, rest) = element(rest)?;
    let (_, validity, rest) = element(rest)?;
    let (_, subject, _) = element(rest)?;
    Some(TbsFields {
        issuer,
        validity,
        subject,
    })
}

/// A host as a TLS server name: a DNS name, or an IP address (IPv6 in brackets or not).
fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<std::net::IpAddr>() {
        Ok(ip) => Ok(ServerName::from(ip)),
        Err(_) => ServerName::try_from(bare.to_owned()).map_err(|e| e.to_string()),
    }
}

/// The leaf's expiry date as text, or why it fails the check (`shown`: the file).
fn expiry(leaf: &[u8], now: SystemTime, shown: &str) -> Result<String, String> {
    let expires = not_after(leaf).ok_or_else(|| {
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
    Ok(date.to_string())
}

/// The certificate's notAfter, read from its DER (Certificate, TBSCertificate, Validity).
pub fn not_after(der: &[u8]) -> Option<DateTime<Utc>> {
    let validity = tbs_fields(der)?.validity;
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

    fn only_failure(lines: Vec<Line>) -> String {
        match &lines[..] {
            [Line::Fail(why)] => why.clone(),
            _ => panic!("not one failure: {lines:?}"),
        }
    }

    const HOST: url::Host<&str> = url::Host::Domain("sentry.example.com");

    #[test]
    fn a_certificate_for_the_host_far_from_expiry_passes() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = files(dir.path(), &["sentry.example.com"], (2031, 3, 4));
        assert_eq!(
            check(&cert, &key, &HOST, &[], at(2030, 1, 1)),
            [Line::Pass(
                "valid for sentry.example.com until 2031-03-04 00:00 UTC".into()
            )]
        );
    }

    #[test]
    fn a_certificate_for_other_names_fails_naming_the_host() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = files(dir.path(), &["other.example.com"], (2031, 3, 4));
        let why = only_failure(check(&cert, &key, &HOST, &[], at(2030, 1, 1)));
        assert!(
            why.contains("not valid for sentry.example.com, server.public_url's host"),
            "{why}"
        );
    }

    #[test]
    fn a_certificate_expiring_within_14_days_fails_with_the_date() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = files(dir.path(), &["sentry.example.com"], (2030, 1, 10));
        let why = only_failure(check(&cert, &key, &HOST, &[], at(2030, 1, 1)));
        assert!(
            why.ends_with(
                "the certificate expires on 2030-01-10 00:00 UTC, in 8 day(s); renew it \
                 (certbot renew), then `systemctl reload ssogate`"
            ),
            "{why}"
        );
        let why = only_failure(check(&cert, &key, &HOST, &[], at(2030, 2, 1)));
        assert!(
            why.ends_with("the certificate expired on 2030-01-10 00:00 UTC"),
            "{why}"
        );
    }

    #[test]
    fn each_host_alias_the_certificate_does_not_cover_fails_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = files(
            dir.path(),
            &["sentry.example.com", "sentry.internal", "192.0.2.10"],
            (2031, 3, 4),
        );
        let aliases = |list: &[&str]| list.iter().map(|a| a.to_string()).collect::<Vec<_>>();
        assert_eq!(
            check(&cert, &key, &HOST, &aliases(&["sentry.internal", "192.0.2.10"]), at(2030, 1, 1)),
            [Line::Pass("valid for sentry.example.com, sentry.internal, 192.0.2.10 until 2031-03-04 00:00 UTC".to_owned())]
        );
        let lines = check(
            &cert,
            &key,
            &HOST,
            &aliases(&["sentry.internal", "old.example.com", "[2001:db8::1]"]),
            at(2030, 1, 1),
        );
        let shown = cert.display();
        // One failure per name not covered, in the order of server.host_aliases.
        let failures: Vec<&String> = lines
            .iter()
            .filter_map(|line| match line {
                Line::Fail(why) => Some(why),
                _ => None,
            })
            .collect();
        assert_eq!(failures.len(), 2, "{lines:?}");
        assert_eq!(lines.len(), 2, "{lines:?}");
        for (failure, alias) in failures.iter().zip(["old.example.com", "[2001:db8::1]"]) {
            assert!(
                failure.starts_with(&format!(
                    "tls.cert_file {shown}: not valid for {alias}, one of server.host_aliases ("
                )),
                "{failure}"
            );
            assert!(
                failure.ends_with(&format!(
                    "); add the name to the certificate (certbot: another -d {alias}) or remove \
                     it from server.host_aliases"
                )),
                "{failure}"
            );
        }
    }

    #[test]
    fn a_certificate_without_its_chain_is_a_warning_naming_fullchain() {
        let issued = tls::local_certificate(&["sentry.example.com"]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("cert.pem");
        let fullchain = dir.path().join("fullchain.pem");
        let key = dir.path().join("privkey.pem");
        std::fs::write(&cert, &issued.cert_pem).unwrap();
        std::fs::write(&fullchain, format!("{}{}", issued.cert_pem, issued.ca_pem)).unwrap();
        std::fs::write(&key, &issued.key_pem).unwrap();
        let now = SystemTime::now();
        let lines = check(&cert, &key, &HOST, &[], now);
        assert!(matches!(lines[0], Line::Pass(_)), "{lines:?}");
        assert_eq!(
            lines[1..],
            [Line::Warn(format!(
                "tls.cert_file {} holds the server's certificate alone, without the \
                 certificates that sign it: browsers may cope, but sentry-cli, SDKs and curl \
                 refuse it (unable to get local issuer certificate); with certbot, name \
                 fullchain.pem, not cert.pem",
                cert.display()
            ))]
        );
        let lines = check(&fullchain, &key, &HOST, &[], now);
        assert!(matches!(&lines[..], [Line::Pass(_)]), "{lines:?}");
    }
}
