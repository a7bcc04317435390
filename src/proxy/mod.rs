//! Forwarding to the upstream (Sentry): pooled HTTP/1.1 connections ([`pool`]),
//! streaming bodies both ways,
//! hop-by-hop headers removed ([`headers`]), upgrades (WebSocket) handed over as
//! [`tunnel`]s, request
//! bodies held to `server.max_body_size` (413), and a 502/504 answer when the upstream
//! fails (each a [`Problem`], answered by [`Problem::respond`]). It decides nothing about who may pass: the gateway calls it only for
//! requests that are allowed, with identity headers already set.
//!
//! What one client can hold of the upstream is bounded: requests in flight in total
//! and per client address ([`limits`], 503 beyond), a request body that stops
//! delivering (`server.body_idle_timeout`, 408) and a response the client stops
//! taking (`server.send_timeout`, abandoned) ([`bodies`]).

pub mod bodies;
pub mod headers;
pub mod limits;
pub mod pool;
pub mod tunnel;

use std::future::{Future, poll_fn};
use std::net::IpAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::{LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use tokio::time::Sleep;
use url::Url;

use crate::body::{ResponseBody, boxed};
use crate::config::UpstreamSettings;
use crate::errors::error_chain;
use crate::observe::Metrics;
use crate::problem::{Audience, Kind, Problem};
use crate::serving_thread;
use bodies::{BUFFERED_MAX, BodyIdle, Delivery, IdleRequestBody};
use limits::{InFlight, InFlightSlot};
use pool::{Pool, PooledBody};

pub struct Upstream {
    /// One connection pool per serving thread, so that a request and the upstream
    /// connection it travels on are driven by the same thread, with no hand-over
    /// between threads.
    pools: Box<[Arc<Pool<RequestBody>>]>,
    base: Url,
    /// `Host` when the public host is not passed on: the upstream URL's host, and
    /// its port unless the scheme's default.
    upstream_host: HeaderValue,
    read_timeout: Duration,
    pass_host_header: bool,
    /// Largest request body forwarded (`server.max_body_size`).
    max_body_size: u64,
    /// Upstream requests in flight, in total and per client (shared across reloads).
    in_flight: Arc<InFlight>,
    /// `server.send_timeout`: a response the client takes nothing of for this long
    /// is abandoned.
    send_timeout: Duration,
    /// `server.body_idle_timeout`: a request body that delivers nothing for this long
    /// is cut (408).
    body_idle_timeout: Duration,
    metrics: Arc<Metrics>,
}

/// A request body as it goes upstream: the client's, held to the idle timeout and the
/// size limit (or none, in a copy of a request sent again: [`pool`]).
type RequestBody = bodies::OrEmpty<Limited<IdleRequestBody<Incoming>>>;
/// A response body as it comes from the upstream: it returns its connection at its end.
type UpstreamBody = PooledBody<RequestBody>;

/// The time bounds of forwarding, and the in-flight counts to hold requests to.
pub struct Bounds {
    pub in_flight: Arc<InFlight>,
    pub send_timeout: Duration,
    pub body_idle_timeout: Duration,
}

impl Upstream {
    pub fn new(
        settings: &UpstreamSettings,
        connector: HttpsConnector<HttpConnector>,
        threads: usize,
        max_body_size: u64,
        bounds: Bounds,
        metrics: Arc<Metrics>,
    ) -> Self {
        // Validated by the config (an http or https URL with a host).
        let origin: Uri = settings.url[..url::Position::BeforePath]
            .parse()
            .expect("upstream.url is an absolute URL");
        let pools = (0..threads.max(1))
            .map(|_| Arc::new(Pool::new(connector.clone(), origin.clone())))
            .collect();
        // As the legacy client set it from the URI: the port only when not the
        // scheme's default (which `Url::port` leaves out).
        let host = settings.url.host_str().expect("upstream.url has a host");
        let upstream_host = match settings.url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        };
        Self {
            pools,
            upstream_host: HeaderValue::from_str(&upstream_host)
                .expect("a URL's host is a valid header value"),
            base: settings.url.clone(),
            read_timeout: settings.read_timeout,
            pass_host_header: settings.pass_host_header,
            max_body_size,
            in_flight: bounds.in_flight,
            send_timeout: bounds.send_timeout,
            body_idle_timeout: bounds.body_idle_timeout,
            metrics,
        }
    }

    /// The in-flight counts, for the gateway that takes over on reload.
    pub fn in_flight(&self) -> Arc<InFlight> {
        self.in_flight.clone()
    }

    /// The upstream URI for a request's URI, in origin form (path and query, as an
    /// HTTP/1.1 connection sends it); the upstream URL's own path is a prefix. `None`
    /// when the request's URI is that already (origin form, no prefix): it stays as
    /// it is. Without a prefix, an absolute URI (HTTP/2) keeps its path and query
    /// as they were parsed.
    fn target(&self, uri: &Uri) -> Result<Option<Uri>, http::Error> {
        let prefix = self.base.path().trim_end_matches('/');
        let path_and_query = uri.path_and_query();
        let origin_form = uri.scheme().is_none() && uri.authority().is_none();
        if prefix.is_empty() && origin_form && path_and_query.is_some() {
            return Ok(None);
        }
        let mut parts = http::uri::Parts::default();
        parts.path_and_query = Some(match path_and_query {
            Some(pq) if prefix.is_empty() => pq.clone(),
            pq => format!("{prefix}{}", pq.map_or("/", |pq| pq.as_str())).parse()?,
        });
        Ok(Some(Uri::from_parts(parts)?))
    }

    /// Sends the request on and streams the answer back. `public_host` is
    /// `public_url`'s host (and port), sent as `Host` unless `upstream.pass_host_header`
    /// is off (then the upstream URL's); `client` the address the request counts
    /// against in `upstream.max_in_flight_per_client` (None: only the total bound).
    /// The client's hop-by-hop headers must be gone already
    /// ([`headers::remove_client_hop_by_hop`], before anything decided on the request);
    /// a real upgrade keeps `Connection: upgrade` and its `Upgrade`, and is tunnelled.
    /// Never fails: a body over the limit becomes a 413, upstream trouble a 502 or 504,
    /// each a page or JSON as the request wants ([`Problem::respond`]).
    pub async fn forward(
        &self,
        mut request: Request<Incoming>,
        public_host: &HeaderValue,
        client: Option<IpAddr>,
    ) -> Response<ResponseBody> {
        let audience = Audience::of(&request);
        let version = request.version();
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|length| length > self.max_body_size) {
            return unread_body_closes(self.body_too_large(audience), version);
        }
        let slot = match self.in_flight.try_acquire(client) {
            Ok(slot) => slot,
            Err(refusal) => {
                tracing::warn!(
                    client = ?client,
                    bound = refusal.key(),
                    "request refused: too many upstream requests in flight"
                );
                let busy = Problem::new(
                    Kind::UpstreamBusy,
                    audience,
                    "Too many requests are waiting for the application behind the sign-in gateway. Try again in a moment.",
                )
                .respond(&self.metrics);
                return if hyper::body::Body::is_end_stream(request.body()) {
                    busy
                } else {
                    unread_body_closes(busy, version)
                };
            }
        };
        let client_upgrade = upgrade_protocol(&request)
            .is_some()
            .then(|| hyper::upgrade::on(&mut request));

        let host = if self.pass_host_header {
            public_host
        } else {
            &self.upstream_host
        };
        request.headers_mut().insert(header::HOST, host.clone());
        match self.target(request.uri()) {
            Ok(None) => {}
            Ok(Some(uri)) => *request.uri_mut() = uri,
            Err(e) => {
                tracing::warn!(error = %e, "cannot build the upstream URI");
                return Problem::new(
                    Kind::Malformed,
                    audience,
                    "The request path cannot be forwarded.",
                )
                .respond(&self.metrics);
            }
        }
        *request.version_mut() = Version::HTTP_11;
        let limit = usize::try_from(self.max_body_size).unwrap_or(usize::MAX);
        let idle_timeout = self.body_idle_timeout;
        let request = request.map(|body| {
            bodies::OrEmpty::Body(Limited::new(
                IdleRequestBody::new(body, idle_timeout),
                limit,
            ))
        });

        let pool = &self.pools[serving_thread::index() % self.pools.len()];
        // One timer for the answer: its head, and a small body read whole. It was
        // set from the clock just now, so it also tells when the request left
        // (a timeout too long for the clock: tokio caps it, so read the clock).
        let mut deadline = pin!(tokio::time::sleep(self.read_timeout));
        let started = (deadline.deadline().into_std())
            .checked_sub(self.read_timeout)
            .unwrap_or_else(std::time::Instant::now);
        let sent = within(deadline.as_mut(), pin!(pool.send(request))).await;
        let mut response = match sent {
            Some(Ok(response)) => response,
            Some(Err(e)) if caused_by::<LengthLimitError>(&*e) => {
                return unread_body_closes(self.body_too_large(audience), version);
            }
            Some(Err(e)) if caused_by::<BodyIdle>(&*e) => {
                tracing::info!(timeout = ?self.body_idle_timeout, "request refused: its body delivered nothing for server.body_idle_timeout");
                let idle = Problem::new(
                    Kind::BodyIdle,
                    audience,
                    "The request body stopped arriving.",
                )
                .respond(&self.metrics);
                return unread_body_closes(idle, version);
            }
            Some(Err(e)) if client_body_failed(&*e) => {
                tracing::info!(error = %error_chain(&*e), "request refused: the client's body broke off or was malformed");
                return Problem::new(
                    Kind::Malformed,
                    audience,
                    "The request body could not be read: it was malformed or cut short.",
                )
                .respond(&self.metrics);
            }
            Some(Err(e)) if caused_by_timeout(&*e) => {
                tracing::warn!(upstream = %self.base, error = %error_chain(&*e), "upstream connection timed out");
                return self.timed_out(audience);
            }
            Some(Err(e)) => {
                tracing::warn!(upstream = %self.base, error = %error_chain(&*e), "upstream request failed");
                return Problem::new(
                    Kind::UpstreamUnavailable,
                    audience,
                    "The application behind the sign-in gateway did not answer. Try again in a moment.",
                )
                .respond(&self.metrics);
            }
            None => {
                tracing::warn!(upstream = %self.base, timeout = ?self.read_timeout, "upstream did not answer in time");
                return self.timed_out(audience);
            }
        };
        self.metrics.upstream_response(started.elapsed());

        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            let Some(client_upgrade) = client_upgrade else {
                // The client would be told its connection now speaks another protocol
                // it never asked for; the upstream's connection goes with the answer.
                tracing::warn!(upstream = %self.base, "upstream answered 101 Switching Protocols to a request that asked for no upgrade; answered 502");
                return Problem::new(
                    Kind::UpstreamError,
                    audience,
                    "The application behind the sign-in gateway gave an answer that cannot be passed on.",
                )
                .respond(&self.metrics);
            };
            headers::remove_front_server_instructions(response.headers_mut());
            let upstream_upgrade = hyper::upgrade::on(&mut response);
            let (parts, body) = response.into_parts();
            let mut response = Response::from_parts(parts, boxed(body));
            // The server runs the tunnel (it owns connections and their limits).
            response
                .extensions_mut()
                .insert(tunnel::Upgraded::new(client_upgrade, upstream_upgrade));
            // The tunnel counts in server.max_tunnels instead.
            return response;
        }
        headers::sanitize_upstream_response(response.headers_mut());
        let (parts, body) = response.into_parts();
        let body = match self.deliverable(&parts.headers, body, slot, deadline).await {
            Ok(body) => body,
            Err(kind) => {
                let message = match kind {
                    Kind::UpstreamTimeout => TOOK_TOO_LONG,
                    _ => {
                        "The application behind the sign-in gateway broke off its answer. Try again in a moment."
                    }
                };
                return Problem::new(kind, audience, message).respond(&self.metrics);
            }
        };
        Response::from_parts(parts, body)
    }

    /// The upstream body as it goes to the client. A small declared body is read
    /// whole first (before the read timeout's `deadline`), which releases the
    /// upstream connection (back to the pool) and the slot at once; any other is
    /// watched for send stalls ([`Delivery`]), holding the slot until it ends or is
    /// abandoned. Either way the connection goes back to the pool only when the body
    /// ended, and closes when it did not. A body that fails or is late is the
    /// upstream's failure, of that kind.
    async fn deliverable(
        &self,
        headers: &http::HeaderMap,
        body: UpstreamBody,
        slot: InFlightSlot,
        deadline: Pin<&mut Sleep>,
    ) -> Result<ResponseBody, Kind> {
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if hyper::body::Body::is_end_stream(&body)
            || declared.is_some_and(|length| length <= BUFFERED_MAX)
        {
            return match within(deadline, pin!(bodies::read_whole(body))).await {
                Some(Ok(whole)) => Ok(boxed(http_body_util::Full::new(whole))),
                Some(Err(e)) => {
                    tracing::warn!(upstream = %self.base, error = %error_chain(&e), "upstream response body failed");
                    Err(Kind::UpstreamUnavailable)
                }
                None => {
                    tracing::warn!(upstream = %self.base, timeout = ?self.read_timeout, "upstream did not send its response body in time");
                    Err(Kind::UpstreamTimeout)
                }
            };
        }
        Ok(boxed(Delivery::watch(body, slot, self.send_timeout)))
    }

    fn body_too_large(&self, audience: Audience) -> Response<ResponseBody> {
        tracing::info!(
            limit = self.max_body_size,
            "request refused: body too large"
        );
        let message = format!(
            "The request body is larger than this gateway accepts ({} bytes).",
            self.max_body_size
        );
        Problem::new(Kind::BodyTooLarge, audience, message).respond(&self.metrics)
    }

    fn timed_out(&self, audience: Audience) -> Response<ResponseBody> {
        Problem::new(Kind::UpstreamTimeout, audience, TOOK_TOO_LONG).respond(&self.metrics)
    }
}

/// What a client reads when the upstream took too long.
const TOOK_TOO_LONG: &str =
    "The application behind the sign-in gateway took too long to answer. Try again in a moment.";

/// `future`'s output, or `None` when `deadline` passes first (`tokio::time::timeout`
/// on a timer that several steps share). `future` comes pinned by the caller: taken by
/// value, an `async fn` holds it twice (as its argument, and pinned), and here it is
/// the upstream exchange, the largest part of a forwarded request's future.
async fn within<F: Future>(
    mut deadline: Pin<&mut Sleep>,
    mut future: Pin<&mut F>,
) -> Option<F::Output> {
    poll_fn(|cx| match future.as_mut().poll(cx) {
        Poll::Ready(output) => Poll::Ready(Some(output)),
        Poll::Pending => deadline.as_mut().poll(cx).map(|()| None),
    })
    .await
}

/// True when `E` is among the causes of `error`.
fn caused_by<E: std::error::Error + 'static>(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if e.is::<E>() {
            return true;
        }
        cause = e.source();
    }
    false
}

/// True when the request body (the client's, the only body the client sends
/// upstream) failed: hyper reports that as a "user" error of the sending side.
fn client_body_failed(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if e.downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_user)
        {
            return true;
        }
        cause = e.source();
    }
    false
}

/// True when a timed-out I/O operation (the connect timeout) is among the causes.
fn caused_by_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        {
            return true;
        }
        cause = e.source();
    }
    false
}

/// The protocol of an HTTP/1.1 upgrade request (`Connection: upgrade` + `Upgrade`),
/// unless it asks for `h2c`: HTTP/2 over a plain upgrade is never forwarded, since
/// the upstream would then take requests the gateway never saw.
pub fn upgrade_protocol<B>(request: &Request<B>) -> Option<HeaderValue> {
    let fields = request.headers();
    let mut upgrades = fields.get_all(header::UPGRADE).iter();
    let (Some(protocol), None) = (upgrades.next(), upgrades.next()) else {
        return None;
    };
    let asks = headers::list_items(fields, &header::CONNECTION)
        .any(|token| token.eq_ignore_ascii_case("upgrade"));
    let h2c = headers::list_items(fields, &header::UPGRADE)
        .any(|protocol| protocol.eq_ignore_ascii_case("h2c"));
    (request.version() == Version::HTTP_11 && asks && !h2c).then(|| protocol.clone())
}

/// An answer the gateway gives before it has read the request's body to its end. On
/// HTTP/1.1 it says `Connection: close`: hyper reads what has already come of the rest
/// and, when more is on its way, closes the connection after this answer (RFC 9112
/// section 9.6). Without the header a client would send its next request on that
/// connection and lose it (nginx says `close` on its 413 too). HTTP/2 ends the
/// stream alone.
fn unread_body_closes(
    mut response: Response<ResponseBody>,
    version: Version,
) -> Response<ResponseBody> {
    if version < Version::HTTP_2 {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
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
            max_in_flight: 8,
            max_in_flight_per_client: 8,
        };
        let roots = rustls::RootCertStore::empty();
        Upstream::new(
            &settings,
            crate::outbound::connector(roots, Duration::from_secs(1)).unwrap(),
            1,
            1024,
            Bounds {
                in_flight: Arc::new(InFlight::new(8, 8)),
                send_timeout: Duration::from_secs(1),
                body_idle_timeout: Duration::from_secs(1),
            },
            Arc::new(Metrics::new()),
        )
    }

    /// The URI the upstream receives for a request URI.
    fn sent(upstream: &Upstream, uri: &str) -> String {
        let uri: Uri = uri.parse().unwrap();
        match upstream.target(&uri).unwrap() {
            Some(rebuilt) => rebuilt.to_string(),
            None => uri.to_string(),
        }
    }

    #[test]
    fn upstream_path_is_a_prefix() {
        let u = upstream("http://127.0.0.1:9000/sentry/");
        assert_eq!(sent(&u, "/api/0/?x=1"), "/sentry/api/0/?x=1");
        assert_eq!(sent(&u, "https://gw.example/a?b"), "/sentry/a?b");
        let u = upstream("https://sentry.internal");
        assert_eq!(sent(&u, "/"), "/");
        assert_eq!(sent(&u, "/a?b"), "/a?b");
        assert_eq!(sent(&u, "*"), "*");
        // HTTP/2 requests (and HTTP/1.1 absolute-form ones) go in origin form.
        assert_eq!(sent(&u, "https://gw.example/a/%2F?b=1"), "/a/%2F?b=1");
        assert_eq!(sent(&u, "https://gw.example"), "/");
    }

    #[test]
    fn upstream_host_leaves_out_the_default_port_only() {
        assert_eq!(
            upstream("https://sentry.internal/").upstream_host,
            "sentry.internal"
        );
        assert_eq!(
            upstream("http://sentry.internal:80/").upstream_host,
            "sentry.internal"
        );
        assert_eq!(
            upstream("https://sentry.internal:80/").upstream_host,
            "sentry.internal:80"
        );
        assert_eq!(
            upstream("http://127.0.0.1:9000/x").upstream_host,
            "127.0.0.1:9000"
        );
        assert_eq!(upstream("http://[::1]:9000/").upstream_host, "[::1]:9000");
    }
}

#[cfg(test)]
mod classify_tests;
