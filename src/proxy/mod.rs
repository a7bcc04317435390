//! Forwarding to the upstream (Sentry): a pooled client, streaming bodies both ways,
//! hop-by-hop headers removed, upgrades (WebSocket) tunnelled, and a 502/504 page when
//! the upstream fails. It decides nothing about who may pass: the gateway calls it
//! only for requests that are allowed, with identity headers already set.

pub mod headers;

use std::cell::Cell;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use url::Url;

use crate::config::UpstreamSettings;
use crate::oidc::error_chain;
use crate::pages::{Link, Page};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body of every response the gateway sends: streamed from the upstream, or a page.
pub type ResponseBody = UnsyncBoxBody<Bytes, BoxError>;

/// Boxes any body into a [`ResponseBody`].
pub fn boxed<B>(body: B) -> ResponseBody
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// Idle upstream connections are closed after this (below Sentry nginx's 75 s).
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

thread_local! {
    /// Which serving thread this is (0 for the thread that started the gateway).
    static SERVING_THREAD: Cell<usize> = const { Cell::new(0) };
}

/// Called once by each serving thread ([`crate::server`]): from then on its requests
/// use its own upstream connection pool.
pub fn set_serving_thread(index: usize) {
    SERVING_THREAD.set(index);
}

pub struct Upstream {
    /// One connection pool per serving thread, so that a request and the upstream
    /// connection it travels on are driven by the same thread, with no hand-over
    /// between threads.
    clients: Box<[Client<HttpsConnector<HttpConnector>, Incoming>]>,
    base: Url,
    /// The scheme and authority of `base`, ready for each request's URI.
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    read_timeout: Duration,
    pass_host_header: bool,
}

impl Upstream {
    pub fn new(
        settings: &UpstreamSettings,
        connector: HttpsConnector<HttpConnector>,
        threads: usize,
    ) -> Self {
        let clients = (0..threads.max(1))
            .map(|_| {
                Client::builder(TokioExecutor::new())
                    .pool_idle_timeout(POOL_IDLE_TIMEOUT)
                    .pool_max_idle_per_host(64)
                    .pool_timer(TokioTimer::new())
                    .timer(TokioTimer::new())
                    .build(connector.clone())
            })
            .collect();
        // Validated by the config (an http or https URL with a host).
        let origin: Uri = settings.url[..url::Position::BeforePath]
            .parse()
            .expect("upstream.url is an absolute URL");
        Self {
            clients,
            scheme: origin.scheme().cloned().expect("upstream.url has a scheme"),
            authority: origin
                .authority()
                .cloned()
                .expect("upstream.url has a host"),
            base: settings.url.clone(),
            read_timeout: settings.read_timeout,
            pass_host_header: settings.pass_host_header,
        }
    }

    /// The upstream URI for a request path (the upstream URL's own path is a prefix).
    fn target(&self, path_and_query: &str) -> Result<Uri, http::Error> {
        let prefix = self.base.path().trim_end_matches('/');
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = Some(if prefix.is_empty() {
            path_and_query.parse()?
        } else {
            format!("{prefix}{path_and_query}").parse()?
        });
        Ok(Uri::from_parts(parts)?)
    }

    /// Sends the request on and streams the answer back. `host` is the host the client
    /// asked for. Never fails: upstream trouble becomes a 502 or 504 page.
    pub async fn forward(
        &self,
        mut request: Request<Incoming>,
        host: Option<&str>,
    ) -> Response<ResponseBody> {
        let path_and_query = request
            .uri()
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .to_owned();
        let upgrade = upgrade_protocol(&request);
        let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut request));

        let headers = request.headers_mut();
        headers::remove_hop_by_hop(headers);
        if let Some(protocol) = &upgrade {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, protocol.clone());
        }
        match (
            self.pass_host_header,
            host.and_then(|h| HeaderValue::from_str(h).ok()),
        ) {
            (true, Some(host)) => {
                headers.insert(header::HOST, host);
            }
            _ => {
                headers.remove(header::HOST);
            }
        }
        match self.target(&path_and_query) {
            Ok(uri) => *request.uri_mut() = uri,
            Err(e) => {
                tracing::warn!(error = %e, "cannot build the upstream URI");
                return failure_page(
                    StatusCode::BAD_REQUEST,
                    "Bad request",
                    "The request path cannot be forwarded.",
                );
            }
        }
        *request.version_mut() = Version::HTTP_11;

        let client = &self.clients[SERVING_THREAD.get() % self.clients.len()];
        let sent = tokio::time::timeout(self.read_timeout, client.request(request)).await;
        let mut response = match sent {
            Ok(Ok(response)) => response,
            Ok(Err(e)) => {
                tracing::warn!(upstream = %self.base, error = %error_chain(&e), "upstream request failed");
                return failure_page(
                    StatusCode::BAD_GATEWAY,
                    "Upstream unavailable",
                    "The application behind the sign-in gateway did not answer. Try again in a moment.",
                );
            }
            Err(_) => {
                tracing::warn!(upstream = %self.base, timeout = ?self.read_timeout, "upstream did not answer in time");
                return failure_page(
                    StatusCode::GATEWAY_TIMEOUT,
                    "Upstream timed out",
                    "The application behind the sign-in gateway took too long to answer. Try again in a moment.",
                );
            }
        };

        if response.status() == StatusCode::SWITCHING_PROTOCOLS
            && let Some(client_upgrade) = client_upgrade
        {
            let upstream_upgrade = hyper::upgrade::on(&mut response);
            tokio::spawn(tunnel(client_upgrade, upstream_upgrade));
            let (parts, body) = response.into_parts();
            return Response::from_parts(parts, boxed(body));
        }
        headers::remove_hop_by_hop(response.headers_mut());
        let (parts, body) = response.into_parts();
        Response::from_parts(parts, boxed(body))
    }
}

/// The protocol of an HTTP/1.1 upgrade request (`Connection: upgrade` + `Upgrade`).
fn upgrade_protocol<B>(request: &Request<B>) -> Option<HeaderValue> {
    if request.version() != Version::HTTP_11 {
        return None;
    }
    let asks = request
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    asks.then(|| request.headers().get(header::UPGRADE).cloned())
        .flatten()
}

/// Copies bytes both ways between the client and the upstream after a 101.
async fn tunnel(client: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade did not complete");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut upstream = TokioIo::new(upstream);
    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        tracing::debug!(error = %e, "upgraded connection closed with an error");
    }
}

fn failure_page(status: StatusCode, title: &str, message: &str) -> Response<ResponseBody> {
    let page = Page {
        status,
        title,
        message,
        links: &[Link {
            href: "",
            label: "Try again",
        }],
    }
    .render();
    page.map(boxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(url: &str) -> Upstream {
        let settings = UpstreamSettings {
            url: Url::parse(url).unwrap(),
            connect_timeout: Duration::from_secs(1),
            read_timeout: Duration::from_secs(1),
            ca_file: None,
            pass_host_header: true,
        };
        let roots = rustls::RootCertStore::empty();
        Upstream::new(
            &settings,
            crate::outbound::connector(roots, Duration::from_secs(1)).unwrap(),
            1,
        )
    }

    #[test]
    fn upstream_path_is_a_prefix() {
        let u = upstream("http://127.0.0.1:9000/sentry/");
        assert_eq!(
            u.target("/api/0/?x=1").unwrap(),
            "http://127.0.0.1:9000/sentry/api/0/?x=1"
        );
        let u = upstream("https://sentry.internal");
        assert_eq!(u.target("/").unwrap(), "https://sentry.internal/");
    }
}
