//! `ssogate check` on an upstream reachable around the gateway: self-hosted Sentry's
//! nginx listens on every interface by default (`SENTRY_BIND=9000`), so a loopback
//! `upstream.url` says nothing about who else reaches it. Real listeners, on every
//! interface and on loopback only.

use crate::cli::{check_from_environment, serve_on};

/// `ssogate check`'s output for an upstream at `upstream`.
fn check_output(upstream: &str) -> String {
    let output = check_from_environment(upstream, &format!("{upstream}/api/oidc"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// True (and says so) when `ssogate check` found no address but loopback to try.
fn skipped(stdout: &str) -> bool {
    let skipped = stdout.lines().any(|line| {
        line == "     upstream around the gateway: skipped: this host has no address other than \
                 loopback to try"
    });
    if skipped {
        eprintln!("this host has no address other than loopback: nothing to probe");
    }
    skipped
}

#[test]
fn check_warns_when_the_upstream_also_answers_on_another_address_of_this_host() {
    // Like self-hosted Sentry's nginx with the default SENTRY_BIND=9000: every interface.
    let everywhere = serve_on("0.0.0.0:0", |_, _| (200, "text/plain", "ok".into()));
    let port = everywhere.port();
    let stdout = check_output(&format!("http://127.0.0.1:{port}"));
    if skipped(&stdout) {
        return;
    }
    let warnings: Vec<&str> = stdout
        .lines()
        .filter(|line| line.starts_with("WARN upstream around the gateway: "))
        .collect();
    assert!(!warnings.is_empty(), "no warning in:\n{stdout}");
    for warning in warnings {
        let address = warning
            .strip_prefix("WARN upstream around the gateway: its port also answers on ")
            .and_then(|rest| rest.split(", ").next())
            .unwrap_or_else(|| panic!("{warning}"));
        let address: std::net::SocketAddr = address.parse().expect(warning);
        assert!(!address.ip().is_loopback(), "{warning}");
        assert_eq!(address.port(), port, "{warning}");
        assert!(
            warning.ends_with(&format!(
                ", an address of this host other than loopback: people can reach Sentry around \
                 the gateway; set SENTRY_BIND=127.0.0.1:{port} in Sentry's .env.custom and \
                 restart its nginx (docker compose up -d nginx), or bind it to the docker \
                 network"
            )),
            "{warning}"
        );
    }
}

#[test]
fn check_is_quiet_about_an_upstream_on_loopback_only() {
    let loopback = serve_on("127.0.0.1:0", |_, _| (200, "text/plain", "ok".into()));
    let port = loopback.port();
    let stdout = check_output(&format!("http://127.0.0.1:{port}"));
    if skipped(&stdout) {
        return;
    }
    assert!(!stdout.contains("WARN upstream"), "{stdout}");
    assert!(
        stdout.lines().any(|line| line.starts_with(&format!(
            "OK   upstream around the gateway: port {port} answers on loopback only (tried "
        ))),
        "{stdout}"
    );
}

#[test]
fn check_notes_that_an_upstream_elsewhere_cannot_be_judged() {
    // The docker network's name for self-hosted Sentry's nginx.
    let stdout = check_output("http://nginx:80");
    assert!(!stdout.contains("WARN upstream"), "{stdout}");
    let expected = "     upstream around the gateway: not checked: upstream.url's host nginx is \
                    not on loopback, so whether Sentry also answers where the gateway is not in \
                    front cannot be told from here; make sure its port is published on no public \
                    interface (self-hosted Sentry: SENTRY_BIND in .env.custom, or no host port \
                    with ssogate on its docker network)";
    assert!(
        stdout.lines().any(|line| line == expected),
        "missing line `{expected}` in:\n{stdout}"
    );
}

#[test]
fn the_first_step_of_the_quick_starts_binds_sentry_to_loopback() {
    for page in ["README.md", "config/SENTRY.md"] {
        let text =
            std::fs::read_to_string(format!("{}/{page}", env!("CARGO_MANIFEST_DIR"))).unwrap();
        let first_step = text
            .lines()
            .skip_while(|line| !line.starts_with("1. "))
            .take_while(|line| !line.starts_with("2. "))
            .collect::<Vec<_>>()
            .join(" ");
        assert!(
            first_step.contains("SENTRY_BIND=127.0.0.1:9000"),
            "{page}'s first step does not bind Sentry to loopback: {first_step}"
        );
    }
}
