//! The listener's TLS, graded by testssl.sh (Debian's package, installed by
//! tests/install-peers.sh): only TLS 1.3 and 1.2, forward-secret AEAD suites in the
//! server's order, no known vulnerability, and the security headers.

use std::process::Command;

use crate::support::process::GatewayProcess;

/// Findings that come from the test's private CA, not from the gateway.
const PRIVATE_CA: [(&str, &str); 2] = [
    ("cert_revocation", "a private CA publishes no CRL or OCSP"),
    ("DNS_CAArecord", "127.0.0.1 has no DNS CAA record"),
];

#[tokio::test]
async fn testssl_finds_nothing_to_fix() {
    let gateway = GatewayProcess::start(&[], "", true).await;
    let report = gateway.dir.path().join("testssl.json");
    let output = Command::new("testssl")
        .args([
            "--quiet",
            "--color",
            "0",
            "--warnings",
            "off",
            "--ip",
            "one",
        ])
        // protocols, cipher lists, forward secrecy, certificate, server order,
        // vulnerabilities, headers (not the slow client simulation)
        .args(["-p", "-s", "-f", "-S", "-P", "-U", "-h"])
        .arg("--add-ca")
        .arg(gateway.dir.path().join("ca.pem"))
        .arg("--jsonfile-pretty")
        .arg(&report)
        .arg(gateway.addr.to_string())
        .output()
        .expect("testssl.sh is installed (tests/install-peers.sh: apt-get install testssl.sh)");
    let text = std::fs::read_to_string(&report).unwrap_or_else(|e| {
        panic!(
            "no report ({e}); testssl said:\n{}",
            String::from_utf8_lossy(&output.stdout)
        )
    });
    let report: serde_json::Value = serde_json::from_str(&text).unwrap();
    let findings: Vec<&serde_json::Value> = report["scanResult"][0]
        .as_object()
        .unwrap()
        .values()
        .filter_map(|section| section.as_array())
        .flatten()
        .collect();
    let finding = |id: &str| -> (String, String) {
        let found = findings.iter().find(|f| f["id"] == id).unwrap_or_else(|| {
            let ids: Vec<&serde_json::Value> = findings.iter().map(|f| &f["id"]).collect();
            panic!("no `{id}` in the report: {ids:?}")
        });
        (
            found["severity"].as_str().unwrap().to_owned(),
            found["finding"].as_str().unwrap().to_owned(),
        )
    };
    for old in ["SSLv2", "SSLv3", "TLS1", "TLS1_1"] {
        assert_eq!(finding(old).1, "not offered", "{old}");
    }
    for current in ["TLS1_2", "TLS1_3"] {
        assert!(finding(current).1.starts_with("offered"), "{current}");
    }
    assert_eq!(finding("cipher_order").0, "OK");
    // max-age of a year: testssl.sh rates it OK (a shorter one is LOW).
    assert_eq!(finding("HSTS_time").0, "OK");
    assert_eq!(finding("cert_chain_of_trust").0, "OK");

    let problems: Vec<String> = findings
        .iter()
        .filter(|f| {
            matches!(
                f["severity"].as_str(),
                Some("LOW" | "MEDIUM" | "HIGH" | "CRITICAL")
            )
        })
        .filter(|f| !PRIVATE_CA.iter().any(|(id, _)| f["id"] == *id))
        .map(|f| format!("{} {}: {}", f["severity"], f["id"], f["finding"]))
        .collect();
    assert!(
        problems.is_empty(),
        "testssl.sh findings:\n{}",
        problems.join("\n")
    );
}
