//! The operator documentation stays true: the configuration reference
//! (`config/README.md`) and `config/ssogate.example.toml` list exactly the keys the code
//! accepts; the docker compose override starts the config it mounts; every relative
//! link of the Markdown pages leads somewhere.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use ssogate::devidp::{DevClient, DevProvider, DevProviderConfig, DevUser};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(repo().join(relative))
        .unwrap_or_else(|e| panic!("cannot read {relative}: {e}"))
}

/// Every key the code accepts, as `section.key` (`access.rules.path` for a rule's).
fn accepted_keys() -> Vec<String> {
    ssogate::config::all_keys()
        .into_iter()
        .map(|(section, key)| format!("{section}.{key}"))
        .collect()
}

/// A row of the settings table: the key and its environment cell.
struct Row {
    key: String,
    environment: String,
}

/// The rows of `config/README.md`'s settings table: rows whose first cell is one
/// backquoted dotted key (the migration table's first cells are oauth2-proxy flags).
fn reference_rows() -> Vec<Row> {
    let key = regex::Regex::new(r"^`([a-z_0-9]+(?:\.[a-z_0-9]+)+)`$").unwrap();
    read("config/README.md")
        .lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.trim().strip_prefix('|')?.split(" | ").collect();
            let found = key.captures(cells.first()?.trim())?;
            Some(Row {
                key: found[1].to_owned(),
                environment: cells.get(3)?.trim().to_owned(),
            })
        })
        .collect()
}

/// The keys `config/ssogate.example.toml` shows, commented-out ones included, as
/// `section.key` (a `[[access.rules]]` entry's keys as `access.rules.<key>`).
fn example_keys() -> Vec<String> {
    let key_line = regex::Regex::new(r"^#? ?([a-z_0-9]+) *=").unwrap();
    let mut section = String::new();
    let mut shown = Vec::new();
    for line in read("config/ssogate.example.toml").lines() {
        let line = line.trim();
        if let Some(header) = line.strip_prefix("[[").or_else(|| line.strip_prefix('[')) {
            section = header.trim_end_matches(']').to_owned();
        } else if let Some(key) = key_line.captures(line) {
            shown.push(format!("{section}.{}", &key[1]));
        }
    }
    shown
}

#[test]
fn the_configuration_reference_lists_every_key_the_code_accepts_and_no_other() {
    let accepted = accepted_keys();
    let rows = reference_rows();
    let documented: Vec<&str> = rows.iter().map(|r| r.key.as_str()).collect();
    let missing: Vec<&String> = accepted
        .iter()
        .filter(|k| !documented.contains(&k.as_str()))
        .collect();
    let unknown: Vec<&&str> = documented
        .iter()
        .filter(|k| !accepted.iter().any(|a| a == *k))
        .collect();
    assert!(
        missing.is_empty(),
        "keys the code accepts that config/README.md's settings table lacks: {missing:?}"
    );
    assert!(
        unknown.is_empty(),
        "keys in config/README.md's settings table that the code does not accept: {unknown:?}"
    );
    let mut seen = std::collections::HashSet::new();
    let twice: Vec<&&str> = documented.iter().filter(|k| !seen.insert(**k)).collect();
    assert!(twice.is_empty(), "keys listed twice: {twice:?}");

    // The environment column names the variable the code reads for the key.
    for row in &rows {
        let (section, key) = row.key.rsplit_once('.').unwrap();
        let expected = if section.starts_with("access.rules") || row.key == "access.rules" {
            "none".to_owned()
        } else {
            format!("`SSOGATE_{}_{}`", section, key).to_ascii_uppercase()
        };
        let first = row.environment.split(", ").next().unwrap_or_default();
        assert_eq!(
            first, expected,
            "config/README.md: the environment cell of `{}`",
            row.key
        );
    }
}

#[test]
fn the_example_config_shows_every_documented_key() {
    let documented: Vec<String> = reference_rows().into_iter().map(|r| r.key).collect();
    let shown = example_keys();
    let undocumented: Vec<&String> = shown.iter().filter(|k| !documented.contains(k)).collect();
    assert!(
        undocumented.is_empty(),
        "keys in config/ssogate.example.toml that config/README.md does not document: {undocumented:?}"
    );
    // The example shows every key but the rules list itself, which is its [[access.rules]].
    let not_shown: Vec<&String> = documented
        .iter()
        .filter(|k| *k != "access.rules" && !shown.contains(k))
        .collect();
    assert!(
        not_shown.is_empty(),
        "documented keys that config/ssogate.example.toml does not show: {not_shown:?}"
    );
}

#[test]
fn the_oauth2_proxy_migration_table_names_only_keys_the_code_accepts() {
    let accepted = accepted_keys();
    let sections: Vec<String> = ssogate::config::all_keys()
        .into_iter()
        .map(|(section, _)| section.to_owned())
        .collect();
    let key = regex::Regex::new(r"`([a-z_0-9]+(?:\.[a-z_0-9]+)+)`").unwrap();
    let mut rows = 0;
    for line in read("config/README.md").lines() {
        let Some(rest) = line.strip_prefix("| `--") else {
            continue;
        };
        rows += 1;
        let cells: Vec<&str> = rest.split(" | ").collect();
        let ours = cells.get(1).copied().unwrap_or_default();
        assert!(
            !ours.trim().is_empty(),
            "a row without ssogate's side: {line}"
        );
        for found in key.captures_iter(ours) {
            let name = &found[1];
            let section = name.rsplit_once('.').unwrap().0;
            if sections.iter().any(|s| s == section) {
                assert!(
                    accepted.iter().any(|a| a == name),
                    "the migration table names `{name}`, which the code does not accept: {line}"
                );
            }
        }
    }
    assert!(rows > 30, "the migration table has {rows} rows");
}

/// Markdown pages an operator reads.
const PAGES: &[&str] = &[
    "README.md",
    "config/README.md",
    "config/SENTRY.md",
    "config/OPERATIONS.md",
    "config/TROUBLESHOOTING.md",
    "tests/README.md",
    "benches/README.md",
    "certs/README.md",
];

/// GitHub's anchor for a heading: lower case, punctuation other than `-` and `_`
/// dropped, spaces as `-`.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

fn anchors(text: &str) -> Vec<String> {
    let mut fenced = false;
    let mut found = Vec::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        } else if !fenced && line.starts_with('#') {
            found.push(anchor(line.trim_start_matches('#')));
        }
    }
    found
}

#[test]
fn every_relative_link_of_the_pages_leads_to_a_file_and_heading_that_exist() {
    let link = regex::Regex::new(r"\]\(([^)\s]+)\)").unwrap();
    let mut broken = Vec::new();
    let mut checked = 0;
    for page in PAGES {
        let text = read(page);
        let dir = repo().join(page).parent().unwrap().to_owned();
        let mut fenced = false;
        for line in text.lines() {
            if line.trim_start().starts_with("```") {
                fenced = !fenced;
                continue;
            }
            if fenced {
                continue;
            }
            for found in link.captures_iter(line) {
                let target = &found[1];
                if target.starts_with("http://")
                    || target.starts_with("https://")
                    || target.starts_with("mailto:")
                {
                    continue;
                }
                checked += 1;
                let (path, fragment) = target.split_once('#').unwrap_or((target, ""));
                let file = if path.is_empty() {
                    repo().join(page)
                } else {
                    dir.join(path)
                };
                if !file.exists() {
                    broken.push(format!("{page}: {target} (no such file)"));
                    continue;
                }
                if !fragment.is_empty() && file.extension().is_some_and(|e| e == "md") {
                    let headings = anchors(&std::fs::read_to_string(&file).unwrap());
                    if !headings.iter().any(|h| h == fragment) {
                        broken.push(format!("{page}: {target} (no such heading)"));
                    }
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
    assert!(checked > 40, "only {checked} links were checked");
}

// ----- the docker compose override -----

/// A YAML node, as far as a compose file needs: mappings, sequences, scalars.
#[derive(Debug, Clone)]
enum Yaml {
    Map(Vec<(String, Yaml)>),
    List(Vec<Yaml>),
    Text(String),
}

impl Yaml {
    fn get(&self, key: &str) -> Option<&Yaml> {
        match self {
            Yaml::Map(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    fn at(&self, path: &[&str]) -> &Yaml {
        path.iter().fold(self, |node, key| {
            node.get(key)
                .unwrap_or_else(|| panic!("the compose file has no {}", path.join(".")))
        })
    }

    fn text(&self) -> &str {
        match self {
            Yaml::Text(t) => t,
            other => panic!("expected a scalar, found {other:?}"),
        }
    }

    fn texts(&self) -> Vec<String> {
        match self {
            Yaml::List(items) => items.iter().map(|i| i.text().to_owned()).collect(),
            other => panic!("expected a list, found {other:?}"),
        }
    }
}

/// One line of a block: its indentation and its content, comments and blank lines gone.
struct Line {
    indent: usize,
    text: String,
}

fn unquote(text: &str) -> String {
    let text = text.trim();
    for quote in ['"', '\''] {
        if text.len() >= 2 && text.starts_with(quote) && text.ends_with(quote) {
            return text[1..text.len() - 1].to_owned();
        }
    }
    text.to_owned()
}

/// A scalar or a flow sequence (`[a, "b"]`, `!reset []`).
fn inline(value: &str) -> Yaml {
    let value = value.trim();
    let list = value.strip_prefix("!reset").map(str::trim).unwrap_or(value);
    if let Some(inner) = list.strip_prefix('[').and_then(|v| v.strip_suffix(']')) {
        return Yaml::List(
            inner
                .split(',')
                .map(str::trim)
                .filter(|i| !i.is_empty())
                .map(|i| Yaml::Text(unquote(i)))
                .collect(),
        );
    }
    Yaml::Text(unquote(value))
}

/// Parses the block of lines at `indent` starting at `lines[*at]`.
fn block(lines: &[Line], at: &mut usize, indent: usize) -> Yaml {
    if lines[*at].text.starts_with("- ") {
        let mut items = Vec::new();
        while *at < lines.len() && lines[*at].indent == indent && lines[*at].text.starts_with("- ")
        {
            items.push(inline(&lines[*at].text[2..]));
            *at += 1;
        }
        return Yaml::List(items);
    }
    let mut entries = Vec::new();
    while *at < lines.len() && lines[*at].indent == indent {
        let line = &lines[*at];
        let (key, value) = line
            .text
            .split_once(':')
            .unwrap_or_else(|| panic!("not a `key: value` line: {}", line.text));
        let (key, value) = (key.trim().to_owned(), value.trim());
        *at += 1;
        let node = if value == "|" {
            let mut text = String::new();
            while *at < lines.len() && lines[*at].indent > indent {
                text.push_str(&lines[*at].text);
                text.push('\n');
                *at += 1;
            }
            Yaml::Text(text)
        } else if value.is_empty() {
            if *at < lines.len() && lines[*at].indent > indent {
                let inner = lines[*at].indent;
                block(lines, at, inner)
            } else {
                Yaml::Text(String::new())
            }
        } else {
            inline(value)
        };
        entries.push((key, node));
    }
    Yaml::Map(entries)
}

/// Reads the plain YAML the compose file is written in (no anchors, no multi-line
/// flow collections).
fn parse_yaml(text: &str) -> Yaml {
    let lines: Vec<Line> = text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(|l| Line {
            indent: l.len() - l.trim_start().len(),
            text: match l.trim_start() {
                // A comment after a value (never inside the quoted values used here).
                t if !t.starts_with('"') && t.contains(" #") => {
                    t.split(" #").next().unwrap().trim_end().to_owned()
                }
                t => t.trim_end().to_owned(),
            },
        })
        .collect();
    let mut at = 0;
    let root = block(&lines, &mut at, 0);
    assert_eq!(at, lines.len(), "the compose file was not read to its end");
    root
}

/// `${NAME}`, `${NAME:-default}` and `${NAME:?message}` replaced from `vars`; a
/// variable the test does not give and that has no default fails the test.
fn interpolate(text: &str, vars: &BTreeMap<&str, String>) -> String {
    let variable = regex::Regex::new(r"\$\{([A-Z_0-9]+)(?::([-?])([^}]*))?\}").unwrap();
    variable
        .replace_all(text, |c: &regex::Captures| {
            let name = &c[1];
            match (vars.get(name), c.get(2).map(|m| m.as_str())) {
                (Some(value), _) => value.clone(),
                (None, Some("-")) => c[3].to_owned(),
                _ => panic!("the compose file needs ${{{name}}}, which this test does not set"),
            }
        })
        .into_owned()
}

/// A plain-HTTP stand-in for self-hosted Sentry's nginx: 200 `ok` to everything
/// (`/_health/` included).
fn sentry_stand_in() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buffer = [0u8; 4096];
            let _ = stream.read(&mut buffer);
            let _ = stream.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
            );
        }
    });
    address
}

fn free_address() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// One HTTP/1.1 GET over `stream`; the whole answer.
async fn get<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut stream: S,
    path: &str,
) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let request = format!("GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compose_override_runs_the_config_it_mounts() {
    let compose = parse_yaml(&read("config/docker-compose.ssogate.yml"));

    // Sentry's nginx keeps no host port: nobody reaches Sentry around the gateway.
    match compose.at(&["services", "nginx", "ports"]) {
        Yaml::List(ports) => assert!(ports.is_empty(), "nginx still publishes {ports:?}"),
        other => panic!("services.nginx.ports: {other:?}"),
    }
    let service = compose.at(&["services", "ssogate"]);

    // The host side of the mounts: this repository, and a folder of secrets and
    // certificates made here, as SSOGATE_ETC names on a real host.
    let etc = tempfile::tempdir().unwrap();
    let gateway = free_address();
    let public_url = format!("https://127.0.0.1:{}", gateway.port());
    let client = DevClient {
        client_id: "sentry".into(),
        client_secret: "compose-client-secret".into(),
        redirect_uris: vec![format!("{public_url}/oauth2/callback")],
        post_logout_redirect_uris: vec![format!("{public_url}/oauth2/sign_in")],
    };
    let user = DevUser {
        username: "alice".into(),
        password: "pw".into(),
        claims: serde_json::json!({"sub": "alice", "email": "alice@example.com",
            "email_verified": true, "permissions": ["sentry:admin"]})
        .as_object()
        .unwrap()
        .clone(),
    };
    let provider = DevProvider::start(
        "127.0.0.1:0".parse().unwrap(),
        DevProviderConfig::new(client, vec![user]),
    )
    .await
    .unwrap();
    let vars: BTreeMap<&str, String> = [
        ("SSOGATE_HOME", repo().display().to_string()),
        ("SSOGATE_ETC", etc.path().display().to_string()),
        ("SSOGATE_PUBLIC_URL", public_url.clone()),
        ("OIDC_DOMAIN", provider.issuer()),
        ("OIDC_CLIENT_ID", "sentry".to_owned()),
    ]
    .into();

    // The command names the config file, and a mount puts one of config/ there.
    let command = service.at(&["command"]).texts();
    assert_eq!(command[0], "run", "{command:?}");
    let config_at = command
        .iter()
        .position(|a| a == "--config")
        .map(|i| command[i + 1].clone())
        .expect("the command names --config");
    let mounts: Vec<(PathBuf, String)> = service
        .at(&["volumes"])
        .texts()
        .iter()
        .map(|volume| {
            let volume = interpolate(volume, &vars);
            let parts: Vec<&str> = volume.split(':').collect();
            assert!(
                parts.len() == 2 || (parts.len() == 3 && parts[2] == "ro"),
                "a mount `source:target[:ro]`: {volume}"
            );
            (PathBuf::from(parts[0]), parts[1].to_owned())
        })
        .collect();
    let config = mounts
        .iter()
        .find(|(_, target)| *target == config_at)
        .map(|(source, _)| source.clone())
        .unwrap_or_else(|| panic!("no mount puts a file at {config_at}"));
    assert!(
        config.starts_with(repo().join("config")) && config.is_file(),
        "the mounted config {} is not a file of config/",
        config.display()
    );

    // Every file the config names is inside a mount; here it is made where the mount's
    // source is, and the key is pointed at it, as the mount shows it to the container.
    let table: toml::Table = std::fs::read_to_string(&config).unwrap().parse().unwrap();
    assert_eq!(
        table["upstream"]["url"].as_str(),
        Some("http://nginx:80"),
        "the upstream is self-hosted's nginx service on the compose network"
    );
    let certificate = ssogate::server::tls::local_certificate(&["127.0.0.1"]).unwrap();
    let mut env: Vec<(String, String)> = Vec::new();
    for (section, keys) in &table {
        let Some(keys) = keys.as_table() else {
            continue;
        };
        for (key, value) in keys {
            let Some(path) = value.as_str().filter(|v| v.starts_with('/')) else {
                continue;
            };
            let (source, target) = mounts
                .iter()
                .find(|(_, target)| path.starts_with(target.as_str()))
                .unwrap_or_else(|| panic!("{section}.{key} = {path:?} is in no mount"));
            let host = source.join(path[target.len()..].trim_start_matches('/'));
            let host = if path == target { source.clone() } else { host };
            let content = match (section.as_str(), key.as_str()) {
                ("tls", "cert_file") => certificate.cert_pem.clone(),
                ("tls", "key_file") => certificate.key_pem.clone(),
                ("session", "secret_file") => "compose-session-secret-0123456789abcdef".into(),
                ("oidc", "client_secret_file") => "compose-client-secret".into(),
                other => panic!("the test does not know what {other:?} holds"),
            };
            assert!(
                host.starts_with(etc.path()),
                "{section}.{key} comes from {}, outside SSOGATE_ETC",
                host.display()
            );
            std::fs::create_dir_all(host.parent().unwrap()).unwrap();
            std::fs::write(&host, content).unwrap();
            env.push((
                format!("SSOGATE_{section}_{key}").to_ascii_uppercase(),
                host.display().to_string(),
            ));
        }
    }
    for (name, value) in match service.at(&["environment"]) {
        Yaml::Map(entries) => entries.clone(),
        other => panic!("environment: {other:?}"),
    } {
        env.push((name, interpolate(value.text(), &vars)));
    }
    // What differs here from a container: loopback addresses for the listeners and
    // for the `nginx` service.
    let redirect = free_address();
    let nginx = sentry_stand_in();
    env.push(("SSOGATE_SERVER_LISTEN".into(), gateway.to_string()));
    env.push((
        "SSOGATE_SERVER_HTTP_REDIRECT_LISTEN".into(),
        redirect.to_string(),
    ));
    env.push(("SSOGATE_UPSTREAM_URL".into(), format!("http://{nginx}")));
    env.push(("SSOGATE_SERVER_THREADS".into(), "1".into()));
    let ssogate = |args: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_ssogate"));
        command
            .args(args)
            .arg("--config")
            .arg(&config)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env.iter().map(|(k, v)| (k, v)));
        command
    };

    let mut check = ssogate(&["check"]);
    let output = tokio::task::spawn_blocking(move || check.output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("all checks passed"),
        "ssogate check on the compose config failed:\n{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let mut child = ssogate(&["run"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut listening = false;
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(gateway).await.is_ok() {
            listening = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    if !listening {
        let _ = child.kill();
        let mut stderr = String::new();
        let _ = child.stderr.take().unwrap().read_to_string(&mut stderr);
        panic!("ssogate did not listen on {gateway}: {stderr}");
    }
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(certificate.ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let tls = rustls::ClientConfig::builder_with_provider(ssogate::outbound::crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connect = || async {
        let tcp = tokio::net::TcpStream::connect(gateway).await.unwrap();
        tokio_rustls::TlsConnector::from(Arc::new(tls.clone()))
            .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
            .await
            .expect("a TLS handshake with the mounted certificate")
    };
    let ping = get(connect().await, "/ping").await;
    let page = get(connect().await, "/organizations/").await;
    let plain = get(
        tokio::net::TcpStream::connect(redirect).await.unwrap(),
        "/organizations/",
    )
    .await;
    let _ = child.kill();
    let _ = child.wait();
    assert!(ping.starts_with("HTTP/1.1 200"), "/ping: {ping}");
    assert!(
        page.starts_with("HTTP/1.1 302") && page.to_lowercase().contains("location: /oauth2/"),
        "a page load without a session goes to the sign-in: {page}"
    );
    assert!(
        plain.starts_with("HTTP/1.1 30") && plain.contains(&format!("{public_url}/organizations/")),
        "the plain-HTTP listener redirects to public_url: {plain}"
    );
}
