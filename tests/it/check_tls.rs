//! `ssogate check` on the TLS files, as an operator runs it: the pair loaded as startup
//! loads it (the same function, the same messages), and every name the gateway answers
//! for covered by the certificate.

use crate::cli::{config_file, ssogate};
use crate::support::GatewayToml;

use std::path::PathBuf;

/// A certificate for `names` and its key, as PEM texts.
fn issued(names: &[&str]) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap()
            .self_signed(&key)
            .unwrap();
    (cert.pem(), key.serialize_pem())
}

/// A certificate for `names` and its key, written as certbot names them:
/// `fullchain.pem` and `privkey.pem` in a fresh directory.
fn certbot_files(names: &[&str]) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let (cert, key) = issued(names);
    write_certbot_files(&cert, &key)
}

/// `fullchain.pem` and `privkey.pem` with these PEM texts, in a fresh directory.
fn write_certbot_files(cert: &str, key: &str) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let cert_file = dir.path().join("fullchain.pem");
    let key_file = dir.path().join("privkey.pem");
    std::fs::write(&cert_file, cert).unwrap();
    std::fs::write(&key_file, key).unwrap();
    (dir, cert_file, key_file)
}

/// The output of `ssogate check` on a config with these TLS files and `server` keys.
fn check_with(
    dir: &tempfile::TempDir,
    cert_file: &std::path::Path,
    key_file: &std::path::Path,
    server: &str,
) -> (Option<i32>, String) {
    let text = GatewayToml::new(
        "https://sentry.example.com",
        // Nothing listens there: the TLS lines come first and do not depend on it.
        &format!("http://{}", crate::support::unused_address()),
        "https://id.does-not-exist.invalid/api/oidc",
    )
    .server(server)
    .tls(&format!(
        "cert_file = {cert_file:?}\nkey_file = {key_file:?}"
    ))
    .render();
    let config = config_file(dir, &text);
    let output = ssogate()
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

#[test]
fn check_says_the_key_file_holds_a_certificate_and_startup_says_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, _) = issued(&["sentry.example.com"]);
    let cert_file = dir.path().join("cert.pem");
    std::fs::write(&cert_file, &cert).unwrap();
    // The operator named certbot's cert.pem for both.
    let (code, stdout) = check_with(&dir, &cert_file, &cert_file, "");
    assert_eq!(code, Some(1), "{stdout}");
    let expected = format!(
        "FAIL tls certificate: tls.key_file {}: holds a certificate, not a private key (with \
         certbot, tls.cert_file is fullchain.pem and tls.key_file privkey.pem, both from the \
         same live/<name>/ directory)",
        cert_file.display()
    );
    assert!(
        stdout.lines().any(|line| line == expected),
        "missing line `{expected}` in:\n{stdout}"
    );
    // `ssogate run` stops on the same config with the same words.
    let config = dir.path().join("ssogate.toml");
    let output = ssogate()
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_ne!(output.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(expected.trim_start_matches("FAIL tls certificate: ")),
        "{stderr}"
    );
}

#[test]
fn check_names_swapped_files_and_an_encrypted_key() {
    let (dir, cert_file, key_file) = certbot_files(&["sentry.example.com"]);
    let (_, stdout) = check_with(&dir, &key_file, &cert_file, "");
    let expected = format!(
        "FAIL tls certificate: tls.cert_file {} holds a private key and tls.key_file {} a \
         certificate: the two are swapped",
        key_file.display(),
        cert_file.display()
    );
    assert!(
        stdout.contains(&expected),
        "missing `{expected}` in:\n{stdout}"
    );

    let encrypted = std::fs::read_to_string(&key_file)
        .unwrap()
        .replace("BEGIN PRIVATE KEY", "BEGIN ENCRYPTED PRIVATE KEY")
        .replace("END PRIVATE KEY", "END ENCRYPTED PRIVATE KEY");
    std::fs::write(&key_file, encrypted).unwrap();
    let (_, stdout) = check_with(&dir, &cert_file, &key_file, "");
    let key_shown = key_file.display();
    let expected = format!(
        "FAIL tls certificate: tls.key_file {key_shown}: holds an encrypted private key, and the \
         gateway asks for no passphrase; decrypt it with `openssl pkey -in {key_shown} -out \
         {key_shown}.plain` (it asks for the passphrase), make that file readable by the \
         service user only, and name it in tls.key_file"
    );
    assert!(
        stdout.lines().any(|line| line == expected),
        "missing line `{expected}` in:\n{stdout}"
    );
}

#[test]
fn check_fails_for_each_host_alias_the_certificate_does_not_cover() {
    let (dir, cert_file, key_file) = certbot_files(&["sentry.example.com", "sentry.internal"]);
    let (code, stdout) = check_with(
        &dir,
        &cert_file,
        &key_file,
        r#"host_aliases = ["sentry.internal", "old.example.com", "192.0.2.10"]"#,
    );
    assert_eq!(code, Some(1), "{stdout}");
    let failures: Vec<&str> = stdout
        .lines()
        .filter(|line| line.starts_with("FAIL tls certificate: "))
        .collect();
    assert_eq!(failures.len(), 2, "{stdout}");
    for (line, alias) in failures.iter().zip(["old.example.com", "192.0.2.10"]) {
        assert!(
            line.starts_with(&format!(
                "FAIL tls certificate: tls.cert_file {}: not valid for {alias}, one of \
                 server.host_aliases (",
                cert_file.display()
            )),
            "{line}"
        );
        assert!(
            line.ends_with(&format!(
                "add the name to the certificate (certbot: another -d {alias}) or remove it \
                 from server.host_aliases"
            )),
            "{line}"
        );
    }

    // Covering names: one OK line naming them all.
    let (_, stdout) = check_with(
        &dir,
        &cert_file,
        &key_file,
        r#"host_aliases = ["sentry.internal"]"#,
    );
    assert!(
        stdout.lines().any(|line| line.starts_with(
            "OK   tls certificate: valid for sentry.example.com, sentry.internal until "
        )),
        "{stdout}"
    );
}

#[test]
fn check_as_the_service_user_says_it_cannot_read_a_root_only_key() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let (dir, cert_file, key_file) = certbot_files(&["sentry.example.com"]);
    let mode = |path: &std::path::Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    let text = GatewayToml::new(
        "https://sentry.example.com",
        &format!("http://{}", crate::support::unused_address()),
        "https://id.does-not-exist.invalid/api/oidc",
    )
    .tls(&format!(
        "cert_file = {cert_file:?}\nkey_file = {key_file:?}"
    ))
    .render();
    let config = config_file(&dir, &text);
    // certbot's way: the directory and certificate readable, the key for its owner only.
    mode(dir.path(), 0o755);
    mode(&config, 0o644);
    mode(&cert_file, 0o644);
    let mut command = if std::fs::metadata(&key_file).unwrap().uid() == 0 {
        // Root reads everything: check as another user, like `sudo -u ssogate`.
        mode(&key_file, 0o600);
        let mut command = std::process::Command::new("setpriv");
        command
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(env!("CARGO_BIN_EXE_ssogate"));
        command
    } else {
        mode(&key_file, 0o000);
        ssogate()
    };
    let output = command
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    let expected = format!(
        "FAIL tls certificate: tls.key_file {}: cannot read it: Permission denied (os error 13); \
         the service user must be able to read it (certbot's live/ and archive/ and its keys \
         are root-only: see config/OPERATIONS.md, \"Certificates\"), and check it as that user: \
         sudo -u ssogate ssogate check",
        key_file.display()
    );
    assert!(
        stdout.lines().any(|line| line == expected),
        "missing line `{expected}` in:\n{stdout}"
    );
}

#[test]
fn check_fails_on_a_certificate_that_expires_within_14_days() {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["sentry.example.com".to_string()]).unwrap();
    let in_five_days = (chrono::Utc::now() + chrono::Duration::days(5)).date_naive();
    params.not_after = rcgen::date_time_ymd(
        chrono::Datelike::year(&in_five_days),
        chrono::Datelike::month(&in_five_days) as u8,
        chrono::Datelike::day(&in_five_days) as u8,
    );
    let cert = params.self_signed(&key).unwrap();
    let (dir, cert_file, key_file) = write_certbot_files(&cert.pem(), &key.serialize_pem());
    let (code, stdout) = check_with(&dir, &cert_file, &key_file, "");
    assert_eq!(code, Some(1), "{stdout}");
    let expected = format!(
        "FAIL tls certificate: tls.cert_file {}: the certificate expires on {} 00:00 UTC, in ",
        cert_file.display(),
        in_five_days.format("%Y-%m-%d")
    );
    let line = stdout
        .lines()
        .find(|line| line.starts_with(&expected))
        .unwrap_or_else(|| panic!("no line starting `{expected}` in:\n{stdout}"));
    assert!(
        line.ends_with(" day(s); renew it (certbot renew), then `systemctl reload ssogate`"),
        "{line}"
    );
}
