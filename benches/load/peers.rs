//! The servers under test, each a private process on loopback with its configuration
//! in the run's temp directory, started through `taskset` so that every thread and
//! forked worker stays on the server cores: nginx (upstream and reverse proxy), Apache
//! httpd + mod_auth_openidc, and ssogate itself (the release binary, `ssogate run`).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use ssogate::devidp::{DevClient, DevProvider, DevProviderConfig, DevUser};

pub const CLIENT_ID: &str = "sentry";
pub const CLIENT_SECRET: &str = "load-bench-secret";
/// A page of the Sentry UI: protected, so a session is needed.
pub const PAGE: &str = "/organizations/acme/issues/?project=1";

/// A running server process; stopped (and waited for) when dropped.
pub struct Server {
    child: Child,
    stop_signal: &'static str,
    /// Where its output goes (shown when it fails to start).
    log: PathBuf,
}

impl Server {
    fn spawn(
        program: &Path,
        args: &[&str],
        cores: &str,
        stop_signal: &'static str,
        log: PathBuf,
    ) -> Server {
        let output = std::fs::File::create(&log).unwrap();
        let child = Command::new("taskset")
            .args(["-c", cores])
            .arg(program)
            .args(args)
            .stdout(output.try_clone().unwrap())
            .stderr(output)
            .env("SSOGATE_LOG", "info") // read by ssogate only: access lines on, as by default
            .spawn()
            .unwrap_or_else(|e| panic!("{} starts: {e}", program.display()));
        Server {
            child,
            stop_signal,
            log,
        }
    }

    /// Waits until the server accepts TCP connections on `port`.
    pub fn await_port(&self, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the server logging to {} did not start listening on {port}; its output:\n{}",
                self.log.display(),
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU time (user + system) the server has used so far: the process and its
    /// children (nginx and Apache serve from forked workers; ssogate's threads are
    /// counted in its own process).
    pub fn cpu_time(&self) -> Duration {
        let pid = self.pid();
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        children
            .split_whitespace()
            .filter_map(|child| child.parse().ok())
            .chain([pid])
            .map(process_cpu_time)
            .sum()
    }
}

/// CPU time (user + system) of one process so far (0 once it is gone).
fn process_cpu_time(pid: u32) -> Duration {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return Duration::ZERO;
    };
    // Fields after the command name (which may hold spaces) start at index 2; utime
    // and stime are fields 14 and 15, in clock ticks (100 per second on Linux).
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<u64> = after_name
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    Duration::from_millis((fields[11] + fields[12]) * 10)
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args([self.stop_signal, &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// A private nginx: its own prefix directory, config and logs.
pub fn nginx(dir: &Path, name: &str, config: &str, cores: &str) -> Server {
    let prefix = dir.join(name);
    std::fs::create_dir_all(prefix.join("logs")).unwrap();
    let config_file = prefix.join("nginx.conf");
    std::fs::write(&config_file, config).unwrap();
    let (prefix, config_file, error_log) = (
        prefix.display().to_string(),
        config_file.display().to_string(),
        prefix.join("logs/error.log").display().to_string(),
    );
    Server::spawn(
        &which("nginx").unwrap(),
        &["-p", &prefix, "-c", &config_file, "-e", &error_log],
        cores,
        "-QUIT",
        dir.join(format!("{name}.log")),
    )
}

/// An nginx configuration: one worker (the servers share the server cores), in the
/// foreground, no access log, unlimited keep-alive requests and body sizes, and
/// `http_block` inside `http { }`.
fn nginx_config(http_block: &str) -> String {
    format!(
        r#"worker_processes 1;
daemon off;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    client_max_body_size 0;
{http_block}
}}
"#
    )
}

/// The upstream: a small fixed page for any request; request bodies are discarded.
/// With `uploads` (a path and a port), requests to that path are streamed on to that
/// port ([`crate::extras::upload_sink`]), which reads every byte before it answers, as
/// Sentry does. (nginx's own `return` answers at once and discards the body, so a
/// proxy in front of it, told the answer came, would stop forwarding the upload.)
pub fn upstream_config(port: u16, uploads: Option<(&str, u16)>) -> String {
    let uploads = uploads.map_or(String::new(), |(path, sink)| {
        format!(
            r#"
        location = {path} {{
            proxy_pass http://127.0.0.1:{sink};
            proxy_http_version 1.1;
            proxy_request_buffering off;
        }}"#
        )
    });
    nginx_config(&format!(
        r#"    server {{
        listen 127.0.0.1:{port};
        location / {{ default_type text/plain; return 200 "ok\n"; }}{uploads}
    }}"#
    ))
}

/// A plain reverse proxy to the upstream with keep-alive upstream connections (as the
/// gateway's) and request bodies streamed rather than spooled to disk; plain on
/// `port`, TLS with HTTP/2 on `tls_port`.
pub fn proxy_config(
    port: u16,
    tls_port: u16,
    upstream_port: u16,
    cert: &Path,
    key: &Path,
) -> String {
    nginx_config(&format!(
        r#"    upstream app {{ server 127.0.0.1:{upstream_port}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port};
        listen 127.0.0.1:{tls_port} ssl http2;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_request_buffering off;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Forwarded-Proto $scheme;
        }}
    }}"#,
        cert = cert.display(),
        key = key.display(),
    ))
}

/// The Apache modules the comparison needs, or `None` (with what to install) when
/// Apache or mod_auth_openidc is missing.
pub fn apache_installed() -> Result<PathBuf, &'static str> {
    let binary = which("apache2").ok_or("apache2 is not installed")?;
    if !Path::new(APACHE_MODULES)
        .join("mod_auth_openidc.so")
        .is_file()
    {
        return Err("mod_auth_openidc is not installed");
    }
    Ok(binary)
}

const APACHE_MODULES: &str = "/usr/lib/apache2/modules";

/// Apache httpd (event MPM, one process, like nginx's one worker) with
/// mod_auth_openidc in front of the upstream: the most-deployed OIDC gateway.
pub fn apache(dir: &Path, port: u16, upstream_port: u16, issuer: &str, cores: &str) -> Server {
    let binary = apache_installed().expect("checked before");
    let root = dir.join("apache");
    std::fs::create_dir_all(&root).unwrap();
    // Apache refuses to serve as root; its workers then run as www-data.
    let run_as = if is_root() {
        "User www-data\nGroup www-data"
    } else {
        ""
    };
    let config = format!(
        r#"ServerRoot "{root}"
ServerName 127.0.0.1
Listen 127.0.0.1:{port}
PidFile "{root}/httpd.pid"
ErrorLog /dev/stderr
LogLevel warn
{run_as}
LoadModule mpm_event_module {modules}/mod_mpm_event.so
LoadModule authn_core_module {modules}/mod_authn_core.so
LoadModule authz_core_module {modules}/mod_authz_core.so
LoadModule authz_user_module {modules}/mod_authz_user.so
LoadModule proxy_module {modules}/mod_proxy.so
LoadModule proxy_http_module {modules}/mod_proxy_http.so
LoadModule auth_openidc_module {modules}/mod_auth_openidc.so
StartServers 1
ServerLimit 1
ThreadLimit 64
ThreadsPerChild 64
MaxRequestWorkers 64
KeepAlive On
MaxKeepAliveRequests 0
KeepAliveTimeout 60

OIDCProviderMetadataURL {issuer}/.well-known/openid-configuration
OIDCClientID {CLIENT_ID}
OIDCClientSecret {CLIENT_SECRET}
OIDCRedirectURI http://127.0.0.1:{port}/redirect_uri
OIDCCryptoPassphrase {passphrase}
OIDCPKCEMethod S256
OIDCScope "openid email profile"
OIDCRemoteUserClaim sub
OIDCSessionInactivityTimeout 3600

<Location />
    AuthType openid-connect
    Require valid-user
</Location>
ProxyPass / http://127.0.0.1:{upstream_port}/
"#,
        root = root.display(),
        modules = APACHE_MODULES,
        passphrase = ssogate::session::random_token(),
    );
    let config_file = root.join("httpd.conf");
    std::fs::write(&config_file, config).unwrap();
    let server = Server::spawn(
        &binary,
        &["-f", &config_file.display().to_string(), "-DFOREGROUND"],
        cores,
        "-TERM",
        dir.join("apache.log"),
    );
    server.await_port(port);
    server
}

/// The bare hyper proxy ([`crate::bare`]): this bench binary, started again.
pub fn bare_proxy(dir: &Path, port: u16, upstream_port: u16, cores: &str) -> Server {
    let server = Server::spawn(
        &std::env::current_exe().expect("the bench binary's path"),
        &[
            "--bare-proxy",
            &port.to_string(),
            &upstream_port.to_string(),
        ],
        cores,
        "-TERM",
        dir.join("bare-proxy.log"),
    );
    server.await_port(port);
    server
}

/// `ssogate run` with `config`: the release binary Cargo built for this bench, or the
/// one `BENCH_GATEWAY_BINARY` names (to compare two builds with the same bench).
pub fn ssogate(dir: &Path, name: &str, config: &str, port: u16, cores: &str) -> Server {
    let config_file = dir.join(format!("{name}.toml"));
    std::fs::write(&config_file, config).unwrap();
    let binary = std::env::var_os("BENCH_GATEWAY_BINARY")
        .map_or_else(|| env!("CARGO_BIN_EXE_ssogate").into(), PathBuf::from);
    let server = Server::spawn(
        &binary,
        &["run", "--config", &config_file.display().to_string()],
        cores,
        "-TERM",
        dir.join(format!("{name}.log")),
    );
    server.await_port(port);
    server
}

/// A fresh P-256 key for `[assertion]` (PKCS#8 PEM), written to `dir`.
pub fn assertion_key(dir: &Path) -> PathBuf {
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
    use base64::Engine;
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(
        &ECDSA_P256_SHA256_FIXED_SIGNING,
        &aws_lc_rs::rand::SystemRandom::new(),
    )
    .unwrap();
    let path = dir.join("assertion-key.pem");
    let body = base64::engine::general_purpose::STANDARD.encode(pkcs8.as_ref());
    std::fs::write(
        &path,
        format!("-----BEGIN PRIVATE KEY-----\n{body}\n-----END PRIVATE KEY-----\n"),
    )
    .unwrap();
    path
}

/// The configuration of a gateway in front of the upstream, with the Sentry preset.
pub fn ssogate_config(
    public_url: &str,
    port: u16,
    tls: Option<(&Path, &Path)>,
    upstream_port: u16,
    issuer: &str,
) -> String {
    let tls = match tls {
        Some((cert, key)) => format!(
            "cert_file = \"{}\"\nkey_file = \"{}\"",
            cert.display(),
            key.display()
        ),
        None => "enabled = false".into(),
    };
    format!(
        r#"
[server]
listen = "127.0.0.1:{port}"
public_url = "{public_url}"
# The upload section sends 1 GiB in one request (the default limit is 200 MiB).
max_body_size = "2GiB"
[tls]
{tls}
[upstream]
url = "http://127.0.0.1:{upstream_port}"
[oidc]
issuer = "{issuer}"
client_id = "{CLIENT_ID}"
client_secret = "{CLIENT_SECRET}"
[session]
secrets = ["{secret}"]
[access]
preset = "sentry"
"#,
        secret = ssogate::session::new_secret(),
    )
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

pub fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
        .map(|dir| Path::new(dir).join(tool))
        .find(|path| path.is_file())
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The development provider, with the gateway as its client (one redirect URI per
/// relying party of the run) and one user, `user`, whose password is its name.
pub async fn start_provider(user: &str, redirect_uris: Vec<String>) -> DevProvider {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let claims = serde_json::json!({
        "sub": "10000001", "email": format!("{user}@example.com"), "email_verified": true,
        "login": user, "permissions": ["sentry:member"],
    });
    DevProvider::start(
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        DevProviderConfig::new(
            DevClient {
                client_id: CLIENT_ID.into(),
                client_secret: CLIENT_SECRET.into(),
                redirect_uris,
                post_logout_redirect_uris: vec![],
            },
            vec![DevUser {
                username: user.into(),
                password: user.into(),
                claims: claims.as_object().unwrap().clone(),
            }],
        ),
    )
    .await
    .unwrap()
}
