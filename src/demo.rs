//! `ssogate demo`: everything on loopback for a first try. A development identity
//! provider ([`crate::devidp`]), a demo upstream that shows the headers it received
//! (a stand-in for Sentry), and the gateway with a self-signed certificate.

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};

use bytes::Bytes;
use http::{Request, Response, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::config::{Settings, TlsSettings};
use crate::devidp::{DevProvider, DevProviderConfig};
use crate::pages::escape;
use crate::server::{self, tls};
use crate::session::new_secret;

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot bind {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    #[error("development provider: {0}")]
    Provider(String),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Server(#[from] server::ServerError),
    #[error("cannot write the demo's CA file: {0}")]
    CaFile(std::io::Error),
}

/// The demo's three parts, started; used by `run` and by tests.
pub struct Demo {
    pub gateway: server::RunningGateway,
    pub provider: DevProvider,
    pub upstream_addr: SocketAddr,
    pub url: String,
    /// PEM of the throwaway CA that issued the gateway's certificate.
    pub ca_pem: String,
    /// The demo user's credentials.
    pub username: String,
    pub password: String,
}

/// Starts the demo with the gateway on `127.0.0.1:port` (0 picks a free port); it stops
/// gracefully when `stop` resolves ([`run`] gives it SIGINT/SIGTERM; tests, which share
/// one process, give their own and leave the process's signal handling alone).
pub async fn start(
    port: u16,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<Demo, DemoError> {
    // Bound first: the public URL (and so the provider's redirect URI) needs the port.
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let listener = TcpListener::bind(address)
        .await
        .map_err(|e| DemoError::Bind(address, e))?;
    let port = listener
        .local_addr()
        .map_err(|e| DemoError::Bind(address, e))?
        .port();
    let public_url = format!("https://127.0.0.1:{port}");
    let upstream_addr = start_demo_upstream().await?;
    let provider_config = DevProviderConfig::demo(
        &format!("{public_url}/oauth2/callback"),
        &format!("{public_url}/oauth2/sign_in"),
    );
    let client = provider_config.clients[0].clone();
    let user = provider_config.users[0].clone();
    let provider = DevProvider::start(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), provider_config)
        .await
        .map_err(|e| DemoError::Provider(e.to_string()))?;
    let config = format!(
        r#"
[server]
listen = "127.0.0.1:{port}"
public_url = "{public_url}"
[tls]
enabled = false
[upstream]
url = "http://{upstream_addr}"
[oidc]
issuer = "{issuer}"
client_id = "{client_id}"
client_secret = "{client_secret}"
provider_name = "the demo provider"
# Refresh tokens keep the demo's sessions confirmed past the 5-minute access tokens.
scopes = ["openid", "email", "profile", "offline_access"]
[session]
secrets = ["{secret}"]
[access]
preset = "sentry"
"#,
        issuer = provider.issuer(),
        client_id = client.client_id,
        client_secret = client.client_secret,
        secret = new_secret(),
    );
    let mut settings = Settings::from_toml(&config, "(demo)", std::iter::empty())?;
    let certificate = tls::local_certificate(&["127.0.0.1", "localhost"])?;
    settings.tls = TlsSettings::Pem {
        cert_pem: certificate.cert_pem,
        key_pem: certificate.key_pem,
    };
    let ca_pem = certificate.ca_pem;
    let gateway = server::start_on(listener, settings, stop).await?;
    Ok(Demo {
        gateway,
        provider,
        upstream_addr,
        url: format!("{public_url}/"),
        ca_pem,
        username: user.username,
        password: user.password,
    })
}

/// The demo's CA certificate in a file, `$TMPDIR/ssogate-demo-<port>-ca.pem`, for
/// clients that take a CA file (`ssogate bench --ca-file`, `curl --cacert`); removed
/// when dropped, as the demo stops.
struct CaFile(std::path::PathBuf);

impl CaFile {
    fn write(port: u16, ca_pem: &str) -> std::io::Result<CaFile> {
        let path = std::env::temp_dir().join(format!("ssogate-demo-{port}-ca.pem"));
        std::fs::write(&path, ca_pem)?;
        Ok(CaFile(path))
    }
}

impl Drop for CaFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Runs the demo until SIGINT/SIGTERM.
pub async fn run(port: u16) -> Result<(), DemoError> {
    let demo = start(port, server::shutdown_signal()).await?;
    let port = demo.gateway.local_addr.port();
    let ca_file = CaFile::write(port, &demo.ca_pem).map_err(DemoError::CaFile)?;
    println!(
        "\nssogate demo is running (all on loopback):\n\
         \n  open       {url}\n  sign in    user `{user}`, password `{password}`\n\
         \n  provider   {issuer}  (development provider; never use it for real)\n  upstream   http://{upstream}  (shows the headers it receives)\n\
         \n  CA file    {ca}  (trust it with `ssogate bench --ca-file` or `curl --cacert`)\n\
         \nThe certificate comes from a throwaway CA: your browser will warn once. Stop with Ctrl-C.\n",
        url = demo.url,
        user = demo.username,
        password = demo.password,
        issuer = demo.provider.issuer(),
        upstream = demo.upstream_addr,
        ca = ca_file.0.display(),
    );
    demo.gateway.stopped().await;
    drop(ca_file);
    Ok(())
}

/// A tiny upstream that answers every request with a page listing what it received.
async fn start_demo_upstream() -> Result<SocketAddr, DemoError> {
    let any = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let listener = TcpListener::bind(any)
        .await
        .map_err(|e| DemoError::Bind(any, e))?;
    let addr = listener.local_addr().map_err(|e| DemoError::Bind(any, e))?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|request: Request<Incoming>| async move {
                    let page = headers_page(&request);
                    // The body read to its end before the answer (an SDK's envelope, say):
                    // an answer before it would end the connection under the gateway's
                    // upload, which the gateway reports as a 502.
                    let mut body = request.into_body();
                    while let Some(Ok(_)) = body.frame().await {}
                    Ok::<_, Infallible>(page)
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

fn headers_page(request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let rows: String = request
        .headers()
        .iter()
        .map(|(name, value)| {
            let highlight = if name.as_str().starts_with("x-forwarded-") {
                " style=\"background:#efeaff\""
            } else {
                ""
            };
            format!(
                "<tr{highlight}><td><code>{}</code></td><td><code>{}</code></td></tr>",
                escape(name.as_str()),
                escape(&String::from_utf8_lossy(value.as_bytes()))
            )
        })
        .collect();
    let body = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Demo upstream</title>\
<style>body{{font-family:system-ui,sans-serif;margin:2rem}}td{{padding:.2rem .8rem;border-bottom:1px solid #ddd}}</style></head>\
<body><h1>Hello from the demo upstream</h1><p>This page stands in for Sentry. The gateway forwarded \
<code>{method} {path}</code> with these headers (identity headers highlighted):</p><table>{rows}</table>\
<p><a href=\"/oauth2/userinfo\">/oauth2/userinfo</a> &middot; <a href=\"/oauth2/sign_out\">Sign out</a></p></body></html>",
        method = escape(request.method().as_str()),
        path = escape(request.uri().path_and_query().map_or("/", |pq| pq.as_str())),
    );
    let mut response = Response::new(Full::new(Bytes::from(body)));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    response
}
