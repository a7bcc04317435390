//! Listeners and connections: TLS handshake, HTTP/1.1 and HTTP/2 (hyper-util auto),
//! the connection limits (header size and read timeout, concurrent connections and
//! HTTP/2 streams), the optional plain-HTTP redirect and metrics listeners, and
//! graceful shutdown (in-flight requests finish, up to `server.shutdown_grace`).
//!
//! The header-read timeout is also the keep-alive timeout of HTTP/1.1: hyper starts
//! it whenever a connection waits for a request head, so an idle connection and a
//! slow-loris one are both closed `server.header_read_timeout` after their last
//! request.
//!
//! Threads: `server.threads` serving threads (one per core by default), each with its
//! own single-threaded tokio runtime and its own accept loop on the shared listening
//! socket, as nginx runs one worker per core. A connection, its requests and their
//! upstream connections then stay on one thread, with no hand-over between threads.
//! The thread that calls [`start`] is serving thread 0 and also runs the background work
//! (provider discovery, Redis); each thread tells [`crate::serving_thread`] its
//! number, by which the upstream pool of the thread is found.

#[macro_use]
mod pass_to_io;
pub mod acme;
mod acme_webroot;
pub mod framing;
mod limits;
mod linger;
pub mod tls;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_rustls::TlsAcceptor;

use crate::body::{ResponseBody, boxed};
use crate::config::{ServerSettings, Settings, TlsSettings};
use std::path::{Path, PathBuf};

use crate::gateway::{Gateway, GatewayError, LiveGateway, TlsServerName, TunnelPass};
use crate::observe::{LoggedBody, Metrics, REQUEST_ID};
use crate::problem::{Audience, Kind, Problem};
use crate::proxy::tunnel::{self, TunnelEnd, TunnelTerms};
use framing::StrictFraming;
use limits::{AddressSlot, Limits};
use linger::LingeringClose;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {address} ({key}): {source}")]
    Bind {
        key: &'static str,
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Gateway(#[from] GatewayError),
    #[error("cannot start a serving thread (server.threads): {0}")]
    Thread(std::io::Error),
}

/// The gateway as a tower service for one connection (it knows the peer address).
/// Each request goes to the gateway current when it arrives (see [`LiveGateway`]).
#[derive(Clone)]
pub struct GatewayService {
    /// What every request of the connection shares (one `Arc` clone per request).
    connection: Arc<ServedConnection>,
    /// The server name the TLS client sent (SNI), given to each request.
    tls_name: Option<TlsServerName>,
}

/// One client connection, as its requests see it.
struct ServedConnection {
    live: Arc<LiveGateway>,
    peer: SocketAddr,
    /// Set once a request on this connection was answered with 101 (upgraded).
    upgraded: Arc<AtomicBool>,
    activity: Arc<Activity>,
    /// The connection's place in the limits; a tunnel keeps it while it lasts.
    open: Arc<OpenConnection>,
    tunnels: Arc<Semaphore>,
}

impl tower::Service<Request<Incoming>> for GatewayService {
    type Response = Response<LoggedBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request<Incoming>) -> Self::Future {
        if let Some(name) = &self.tls_name {
            request.extensions_mut().insert(name.clone());
        }
        let connection = self.connection.clone();
        let gateway = connection.live.current();
        connection.activity.request_started();
        Box::pin(async move {
            let mut response = gateway.handle(request, connection.peer).await;
            connection.activity.request_answered();
            if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                response = start_tunnel(response, &gateway, &connection);
                if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                    connection.upgraded.store(true, Ordering::Relaxed);
                }
            }
            Ok(response)
        })
    }
}

/// Runs the tunnel an accepted upgrade brought (see [`tunnel`]): it holds its
/// connection's place in `server.max_connections` and one of `server.max_tunnels`
/// (none left: 503 instead of the 101), and is checked against the gateway current at
/// each check, so a reload's rules apply to tunnels already open.
fn start_tunnel(
    mut response: Response<LoggedBody>,
    gateway: &Gateway,
    connection: &ServedConnection,
) -> Response<LoggedBody> {
    let pair = response.extensions_mut().remove::<tunnel::Upgraded>();
    let pass = response.extensions_mut().remove::<Arc<TunnelPass>>();
    let (Some(pair), Some(pass)) = (pair, pass) else {
        tracing::warn!("a 101 without a tunnel to run; refused");
        return refused_upgrade(
            response,
            gateway,
            Kind::UpgradeRefused,
            "The connection could not be upgraded.",
        );
    };
    let Ok(slot) = connection.tunnels.clone().try_acquire_owned() else {
        tracing::warn!("upgrade refused: server.max_tunnels tunnels are open");
        return refused_upgrade(
            response,
            gateway,
            Kind::TooManyTunnels,
            "Too many upgraded connections are open. Try again in a moment.",
        );
    };
    let server = &gateway.settings().server;
    let terms = TunnelTerms {
        idle_timeout: server.tunnel_idle_timeout,
        check_every: server.tunnel_check_every,
    };
    let (live, open) = (connection.live.clone(), connection.open.clone());
    tokio::spawn(async move {
        let _held = (open, slot);
        let still_allowed = || {
            let (live, pass) = (live.clone(), pass.clone());
            async move { live.current().tunnel_may_continue(&pass).await }
        };
        match tunnel::run(pair, terms, still_allowed).await {
            TunnelEnd::Refused => {
                tracing::info!("tunnel closed: its session ended or the rules refuse it now");
            }
            TunnelEnd::Idle => tracing::debug!("tunnel closed: idle"),
            end => tracing::debug!(?end, "tunnel closed"),
        }
    });
    response
}

/// The refusal sent instead of an accepted upgrade's 101, with its request id and
/// `Strict-Transport-Security`; the access line and the request metrics count the
/// refusal, not the 101.
fn refused_upgrade(
    accepted: Response<LoggedBody>,
    gateway: &Gateway,
    kind: Kind,
    message: &'static str,
) -> Response<LoggedBody> {
    let refusal = Problem::new(kind, Audience::Api, message).respond(gateway.metrics());
    let (mut parts, body) = refusal.into_parts();
    let (accepted, logged) = accepted.into_parts();
    for name in [REQUEST_ID, http::header::STRICT_TRANSPORT_SECURITY] {
        if let Some(value) = accepted.headers.get(&name) {
            parts.headers.insert(name, value.clone());
        }
    }
    let body = logged.answered_instead(parts.status, body);
    Response::from_parts(parts, body)
}

/// A started gateway. Dropping it does not stop it; call [`RunningGateway::shutdown`].
pub struct RunningGateway {
    pub local_addr: SocketAddr,
    pub redirect_addr: Option<SocketAddr>,
    pub metrics_addr: Option<SocketAddr>,
    live: Arc<LiveGateway>,
    /// The listener's certificate (None without TLS).
    pub certificate: Option<Arc<tls::CertificateStore>>,
    stop: watch::Sender<bool>,
    finished: tokio::task::JoinHandle<()>,
}

impl RunningGateway {
    /// Stops accepting, lets in-flight requests finish (bounded by the grace period).
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.finished.await;
    }

    /// The gateway requests go to now (it changes on reload).
    pub fn gateway(&self) -> Arc<Gateway> {
        self.live.current()
    }

    /// Replaces the settings while serving ([`LiveGateway::reload`]); also what
    /// SIGHUP does, after reading the config again.
    /// Returns the keys whose change waits for a restart.
    pub async fn reload(&self, settings: Settings) -> Result<Vec<&'static str>, GatewayError> {
        reload_settings(&self.live, settings).await
    }

    /// On every SIGHUP: [`Self::reload_from_config`]. (The certificate files are also
    /// watched for changes, without a signal.)
    pub fn reload_on_sighup(&self, config: Option<PathBuf>) {
        #[cfg(unix)]
        {
            let live = Arc::downgrade(&self.live);
            let certificate = self.certificate.as_ref().map(Arc::downgrade);
            tokio::spawn(async move {
                use tokio::signal::unix::{SignalKind, signal};
                let Ok(mut hangups) = signal(SignalKind::hangup()) else {
                    return;
                };
                while hangups.recv().await.is_some() {
                    let Some(live) = live.upgrade() else { return };
                    tracing::info!("SIGHUP received: reloading the config and the TLS certificate");
                    let certificate = certificate.as_ref().and_then(|c| c.upgrade());
                    reload_config_and_certificate(&live, certificate.as_deref(), config.as_deref())
                        .await;
                }
            });
        }
    }

    /// What SIGHUP does: reads the config (`config`, and the environment) again and
    /// swaps it in, then reloads the TLS certificate files. A config or certificate
    /// that does not load is refused with a log line, and the running one stays. An
    /// ACME certificate stays as it is, and so does its renewal (`tls` is one of the
    /// keys that wait for a restart).
    pub async fn reload_from_config(&self, config: Option<&Path>) {
        reload_config_and_certificate(&self.live, self.certificate.as_deref(), config).await;
    }

    /// Waits until the gateway has stopped (after [`shutdown_signal`] fires, say).
    pub async fn stopped(self) {
        let _ = self.finished.await;
    }
}

/// Binds the listeners, loads provider metadata (retrying in the background if the
/// provider is down) and serves until `stop` resolves.
pub async fn start(
    settings: Settings,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<RunningGateway, ServerError> {
    let listener = bind("server.listen", settings.server.listen).await?;
    start_on(listener, settings, stop).await
}

/// Binds `address`, the value of the setting `key` (named when it cannot be bound).
async fn bind(key: &'static str, address: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| ServerError::Bind {
            key,
            address,
            source,
        })
}

/// [`bind`] for an optional listener: `None` when the setting is not set.
async fn bind_if_set(
    key: &'static str,
    address: Option<SocketAddr>,
) -> Result<Option<TcpListener>, ServerError> {
    match address {
        Some(address) => Ok(Some(bind(key, address).await?)),
        None => Ok(None),
    }
}

/// [`start`] on a listener the caller already bound (instead of `server.listen`):
/// for the demo and tests, which need the port before they can write the settings.
pub async fn start_on(
    listener: TcpListener,
    settings: Settings,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<RunningGateway, ServerError> {
    let (tls, certificate) = tls::server_config(&settings.tls)?.unzip();
    let settings_tls = settings.tls.clone();
    let listen = settings.server.listen;
    let local_addr = listener.local_addr().map_err(|source| ServerError::Bind {
        key: "server.listen",
        address: listen,
        source,
    })?;
    let redirect_listener = bind_if_set(
        "server.http_redirect_listen",
        settings.server.http_redirect_listen,
    )
    .await?;
    let redirect_addr = redirect_listener.as_ref().and_then(|l| l.local_addr().ok());
    let metrics_listener =
        bind_if_set("server.metrics_listen", settings.server.metrics_listen).await?;
    let metrics_addr = metrics_listener.as_ref().and_then(|l| l.local_addr().ok());

    let gateway = Arc::new(Gateway::new(settings)?);
    gateway.start_background().await;
    let live = Arc::new(LiveGateway::new(gateway.clone()));
    if let Some(certificate) = &certificate {
        certificate.watch(gateway.metrics().clone());
    }

    let (stop_sender, stop_receiver) = watch::channel(false);
    let http01 = match (&settings_tls, &certificate) {
        (TlsSettings::Acme(acme), Some(store)) => {
            let http01 = redirect_listener
                .is_some()
                .then(|| Arc::new(acme::Http01Answers::default()));
            let shared = gateway.shared_store().map(|shared| {
                let live = Arc::downgrade(&live);
                Arc::new(acme::SharedOrders::new(shared.clone(), move || {
                    live.upgrade()
                        .map(|live| live.current().settings().session.secrets.clone())
                        .unwrap_or_default()
                }))
            });
            if let Some(shared) = &shared {
                acme::spawn_challenge_mirror(
                    store.clone(),
                    http01.clone(),
                    shared.clone(),
                    stop_receiver.clone(),
                );
            }
            acme::spawn_renewal(
                acme.clone(),
                store.clone(),
                http01.clone(),
                shared,
                gateway.metrics().clone(),
                stop_receiver.clone(),
            );
            http01
        }
        _ => None,
    };
    // First, so that if a thread cannot start, those already started see the stop
    // sender dropped and end.
    let finished = spawn_serving_threads(listener, tls, &live, stop_receiver.clone())?;
    let external_stop = stop_sender.clone();
    let grace = gateway.settings().server.shutdown_grace;
    tokio::spawn(async move {
        stop.await;
        tracing::info!(?grace, "shutting down: waiting for in-flight requests");
        let _ = external_stop.send(true);
    });
    let server = &gateway.settings().server;
    if let Some(listener) = redirect_listener {
        tokio::spawn(serve_redirects(
            listener,
            server.clone(),
            http01,
            gateway.metrics().clone(),
            stop_receiver.clone(),
        ));
    }
    if let Some(listener) = metrics_listener {
        tokio::spawn(serve_metrics(
            listener,
            server.clone(),
            live.clone(),
            stop_receiver,
        ));
    }
    tracing::info!(%local_addr, public_url = %gateway.settings().server.public_url, threads = gateway.settings().server.threads, "ssogate listening");
    Ok(RunningGateway {
        local_addr,
        redirect_addr,
        metrics_addr,
        live,
        certificate,
        stop: stop_sender,
        finished,
    })
}

/// Serving thread 0 is a task on the caller's runtime; threads 1.. each get their own
/// runtime and a clone of the listening socket. The returned task ends when all have
/// finished their graceful shutdown.
fn spawn_serving_threads(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    live: &Arc<LiveGateway>,
    stop: watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>, ServerError> {
    let settings = live.current().settings().server.clone();
    let listener = listener.into_std().map_err(ServerError::Thread)?;
    // One budget of connections, tunnels and places per address for all threads.
    let limits = Limits::new(&settings);
    let mut threads = Vec::new();
    for index in 1..settings.threads {
        let listener = listener.try_clone().map_err(ServerError::Thread)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(ServerError::Thread)?;
        let (tls, live, stop) = (tls.clone(), live.clone(), stop.clone());
        let limits = limits.clone();
        let thread = std::thread::Builder::new()
            .name(format!("ssogate-serve-{index}"))
            .spawn(move || {
                crate::serving_thread::set(index);
                runtime.block_on(async move {
                    match TcpListener::from_std(listener) {
                        Ok(listener) => serve(listener, tls, live, limits, stop).await,
                        Err(e) => tracing::error!(thread = index, error = %e, "serving thread cannot use the listener"),
                    }
                });
            })
            .map_err(ServerError::Thread)?;
        threads.push(thread);
    }
    let listener = TcpListener::from_std(listener).map_err(ServerError::Thread)?;
    let live = live.clone();
    Ok(tokio::spawn(async move {
        serve(listener, tls, live, limits, stop).await;
        for thread in threads {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }))
}

/// HTTP/1.1 and HTTP/2 as every listener speaks them: the head read timeout and size
/// limit, and `server.http2_max_streams`.
fn connection_builder(server: &ServerSettings) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(server.header_read_timeout)
        // hyper answers 431 when a request head does not fit its read buffer.
        .max_buf_size(server.max_header_size);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(server.http2_max_streams)
        .max_header_list_size(u32::try_from(server.max_header_size).unwrap_or(u32::MAX));
    builder
}

/// How an accepted connection is served: the protocols' settings, and when it is asked
/// to close (see [`drive`]).
#[derive(Clone)]
struct ConnectionTerms {
    builder: Arc<auto::Builder<TokioExecutor>>,
    idle_timeout: Duration,
    send_timeout: Duration,
    stop: watch::Receiver<bool>,
}

impl ConnectionTerms {
    fn new(
        builder: auto::Builder<TokioExecutor>,
        server: &ServerSettings,
        stop: watch::Receiver<bool>,
    ) -> Self {
        Self {
            builder: Arc::new(builder),
            idle_timeout: server.idle_timeout,
            send_timeout: server.send_timeout,
            stop,
        }
    }

    /// Serves HTTP/1.1 or HTTP/2 (and upgrades) on `io` until the connection ends,
    /// counting what it writes into `activity`.
    async fn serve<IO, S, B>(
        self,
        io: IO,
        activity: &Arc<Activity>,
        service: S,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
        S: hyper::service::Service<Request<Incoming>, Response = Response<B>>,
        S::Future: 'static,
        S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        B: hyper::body::Body<Data = Bytes> + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        TokioExecutor: auto::HttpServerConnExec<S::Future, B>,
    {
        let io = TokioIo::new(CountWrites::new(io, activity.clone()));
        let connection = self.builder.serve_connection_with_upgrades(io, service);
        drive(
            connection,
            auto::UpgradeableConnection::graceful_shutdown,
            activity,
            self.idle_timeout,
            self.send_timeout,
            self.stop,
        )
        .await
    }
}

/// A connection's place in `server.max_connections`, and its count in the metrics,
/// both given back when the connection ends.
struct OpenConnection {
    _permit: OwnedSemaphorePermit,
    _address: AddressSlot,
    metrics: Arc<Metrics>,
}

impl OpenConnection {
    fn new(permit: OwnedSemaphorePermit, address: AddressSlot, metrics: &Arc<Metrics>) -> Self {
        metrics.connection_opened();
        Self {
            _permit: permit,
            _address: address,
            metrics: metrics.clone(),
        }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.metrics.connection_closed();
    }
}

async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    live: Arc<LiveGateway>,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) {
    // Connection settings take effect at start (a reload keeps them; see LiveGateway).
    let gateway = live.current();
    let server = &gateway.settings().server;
    let mut builder = connection_builder(server);
    builder
        .http2()
        .keep_alive_interval(Some(Duration::from_secs(30)));
    let terms = ConnectionTerms::new(builder, server, stop.clone());
    let acceptor = tls.map(TlsAcceptor::from);
    let handshake_timeout = server.header_read_timeout;
    let mut open_connections = tokio::task::JoinSet::new();
    loop {
        while open_connections.try_join_next().is_some() {} // forget finished ones
        // At the limit, wait for a connection to end before accepting another: new
        // clients queue in the kernel's backlog instead of being dropped.
        let permit = tokio::select! {
            permit = limits.connections.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            _ = stopped(&mut stop) => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut stop) => break,
        };
        let Some(address_slot) = limits.per_address.take(peer.ip()) else {
            refused_for_address(peer);
            continue; // closed at once: its place and permit go back
        };
        let _ = stream.set_nodelay(true);
        let upgraded = Arc::new(AtomicBool::new(false));
        let activity = Arc::new(Activity::new());
        let open = Arc::new(OpenConnection::new(permit, address_slot, gateway.metrics()));
        let service = GatewayService {
            connection: Arc::new(ServedConnection {
                live: live.clone(),
                peer,
                upgraded: upgraded.clone(),
                activity: activity.clone(),
                open,
                tunnels: limits.tunnels.clone(),
            }),
            tls_name: None,
        };
        let (terms, acceptor) = (terms.clone(), acceptor.clone());
        // The service holds the connection's place (and a tunnel after it, if any):
        // it goes back when both are gone.
        open_connections.spawn(async move {
            let result = match acceptor {
                Some(acceptor) => {
                    let handshake = acceptor.accept(stream);
                    let tls_stream = match tokio::time::timeout(handshake_timeout, handshake).await
                    {
                        Ok(Ok(tls_stream)) => tls_stream,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    };
                    let connection = tls_stream.get_ref().1;
                    if connection.alpn_protocol() == Some(tls::ACME_TLS_ALPN) {
                        // A CA validating TLS-ALPN-01: the handshake was the answer.
                        tracing::info!(%peer, "ACME TLS-ALPN-01 challenge answered");
                        return;
                    }
                    let h2 = connection.alpn_protocol() == Some(b"h2");
                    let service = GatewayService {
                        tls_name: connection
                            .server_name()
                            .map(|name| TlsServerName(name.into())),
                        ..service
                    };
                    let mut stream = StrictFraming::new(tls_stream, upgraded);
                    if h2 {
                        stream = stream.unchecked();
                    }
                    let service = TowerToHyperService::new(service);
                    terms
                        .serve(LingeringClose::new(stream), &activity, service)
                        .await
                }
                None => {
                    let stream = StrictFraming::new(stream, upgraded);
                    let service = TowerToHyperService::new(service);
                    terms
                        .serve(LingeringClose::new(stream), &activity, service)
                        .await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    let grace = gateway.settings().server.shutdown_grace;
    tracing::debug!(?grace, "shutting down: waiting for in-flight requests");
    let drained = async { while open_connections.join_next().await.is_some() {} };
    if tokio::time::timeout(grace, drained).await.is_err() {
        tracing::warn!("grace period over; closing remaining connections");
        open_connections.shutdown().await;
    }
}

/// Logs a connection closed for `server.max_connections_per_address`: at most one
/// warning every 10 seconds (a flood must not flood the log), the rest at debug.
fn refused_for_address(peer: SocketAddr) {
    static LAST_WARNING: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let last = LAST_WARNING.load(Ordering::Relaxed);
    if now >= last + 10
        && LAST_WARNING
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        tracing::warn!(address = %peer.ip(), "connection closed: this address has server.max_connections_per_address open (further ones for 10 s at debug)");
    } else {
        tracing::debug!(address = %peer.ip(), "connection closed: server.max_connections_per_address");
    }
}

/// Serves one connection until it ends. It is asked to close gracefully, by `close`
/// (hyper finishes the requests in flight; HTTP/2 sends GOAWAY), when the gateway
/// stops, or when no request has started on it for `idle_timeout`. Once closing, it
/// is closed outright when it wrote less than [`CLOSING_PROGRESS`] bytes in a
/// `send_timeout` (a client that takes nothing would otherwise keep it, and its
/// streams, forever; a slow download still finishes).
async fn drive<C, E>(
    connection: C,
    close: impl Fn(Pin<&mut C>),
    activity: &Activity,
    idle_timeout: Duration,
    send_timeout: Duration,
    mut stop: watch::Receiver<bool>,
) -> Result<(), E>
where
    C: Future<Output = Result<(), E>>,
{
    let mut connection = std::pin::pin!(connection);
    let mut closing = false;
    let check = tokio::time::sleep(send_timeout);
    let mut check = std::pin::pin!(check);
    let mut written_at_check = 0;
    loop {
        tokio::select! {
            result = connection.as_mut() => return result,
            _ = stopped(&mut stop), if !closing => {}
            _ = activity.idle_for(idle_timeout), if !closing => {}
            () = check.as_mut(), if closing => {
                let written = activity.written.load(Ordering::Relaxed);
                if written - written_at_check < CLOSING_PROGRESS {
                    tracing::debug!(?send_timeout, "closing connection took nothing for server.send_timeout; closed");
                    return Ok(());
                }
                written_at_check = written;
                check.as_mut().reset(tokio::time::Instant::now() + send_timeout);
                continue;
            }
        }
        close(connection.as_mut());
        closing = true;
        written_at_check = activity.written.load(Ordering::Relaxed);
        check
            .as_mut()
            .reset(tokio::time::Instant::now() + send_timeout);
    }
}

/// Fewer bytes than this written in a `server.send_timeout` while closing (pings and
/// a GOAWAY are less) end a connection: see [`drive`].
const CLOSING_PROGRESS: u64 = 1024;

/// Counts what a connection writes into its [`Activity`].
struct CountWrites<IO> {
    io: IO,
    activity: Arc<Activity>,
}

impl<IO> CountWrites<IO> {
    fn new(io: IO, activity: Arc<Activity>) -> Self {
        Self { io, activity }
    }

    /// Adds what a write wrote to the connection's count, and passes its result on.
    fn count(&self, written: Poll<std::io::Result<usize>>) -> Poll<std::io::Result<usize>> {
        if let Poll::Ready(Ok(n)) = written {
            self.activity.written.fetch_add(n as u64, Ordering::Relaxed);
        }
        written
    }
}

impl<IO: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for CountWrites<IO> {
    pass_to_io!(poll_read);
}

impl<IO: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for CountWrites<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.io).poll_write(cx, data);
        self.count(written)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.io).poll_write_vectored(cx, data);
        self.count(written)
    }

    pass_to_io!(is_write_vectored, poll_flush, poll_shutdown);
}

/// When a connection last answered a request, and how many it has in flight.
struct Activity {
    since: std::time::Instant,
    /// Milliseconds after `since` when the last request was answered (0: none yet).
    last_answer: std::sync::atomic::AtomicU64,
    in_flight: std::sync::atomic::AtomicUsize,
    /// Bytes written to the connection ([`CountWrites`]).
    written: std::sync::atomic::AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            since: std::time::Instant::now(),
            last_answer: std::sync::atomic::AtomicU64::new(0),
            in_flight: std::sync::atomic::AtomicUsize::new(0),
            written: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        self.since.elapsed().as_millis() as u64
    }

    fn request_started(&self) {
        // No clock read: while a request is in flight the connection is not idle,
        // and its answer sets `last_answer`.
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// The request's response headers are out (its body may still be streaming:
    /// a graceful close lets it finish).
    fn request_answered(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.last_answer.store(self.now_ms(), Ordering::Relaxed);
    }

    /// Resolves once no request has been in flight or started for `timeout`.
    async fn idle_for(&self, timeout: Duration) {
        let timeout_ms = timeout.as_millis() as u64;
        loop {
            let quiet = self.now_ms() - self.last_answer.load(Ordering::Relaxed);
            if self.in_flight.load(Ordering::Relaxed) == 0 && quiet >= timeout_ms {
                return;
            }
            let wait = timeout_ms
                .saturating_sub(quiet)
                .max(timeout_ms / 10)
                .max(10);
            tokio::time::sleep(Duration::from_millis(wait)).await;
        }
    }
}

/// Plain-HTTP listener: every request gets a permanent redirect to the HTTPS address,
/// but ACME challenges: those of the gateway's own orders ([`acme::Http01Answers`]),
/// and certbot's when `server.acme_webroot` is set ([`acme_webroot`]).
async fn serve_redirects(
    listener: TcpListener,
    server: ServerSettings,
    http01: Option<Arc<acme::Http01Answers>>,
    metrics: Arc<Metrics>,
    stop: watch::Receiver<bool>,
) {
    let public_url = server.public_url.clone();
    let webroot = server.acme_webroot.clone().map(Arc::new);
    let answer: SideService = Arc::new(move |request: Request<Incoming>| {
        let target = request.uri().path_and_query().map_or("/", |pq| pq.as_str());
        let location = format!("{}{}", public_url.as_str().trim_end_matches('/'), target);
        let mut redirect = crate::pages::text(StatusCode::PERMANENT_REDIRECT, "").map(boxed);
        if let Ok(value) = http::HeaderValue::from_str(&location) {
            redirect.headers_mut().insert(http::header::LOCATION, value);
        }
        let (webroot, metrics) = (webroot.clone(), metrics.clone());
        let path = request.uri().path().to_owned();
        let own_answer = http01.as_ref().and_then(|answers| {
            let token = path.strip_prefix(acme_webroot::CHALLENGE_PATH)?;
            answers.answer(token)
        });
        Box::pin(async move {
            if let Some(answer) = own_answer {
                tracing::info!(path, "ACME HTTP-01 challenge answered");
                return crate::pages::text(StatusCode::OK, answer).map(boxed);
            }
            match webroot {
                Some(webroot) => acme_webroot::answer(&webroot, &path, &metrics)
                    .await
                    .unwrap_or(redirect),
                None => redirect,
            }
        })
    });
    serve_side(listener, &server, answer, stop).await;
}

/// The metrics listener (`server.metrics_listen`): `/metrics`, and 404 for anything else.
async fn serve_metrics(
    listener: TcpListener,
    server: ServerSettings,
    live: Arc<LiveGateway>,
    stop: watch::Receiver<bool>,
) {
    let answer: SideService = Arc::new(move |request: Request<Incoming>| {
        let gateway = live.current();
        Box::pin(async move {
            if request.uri().path() == "/metrics" {
                gateway.metrics_page().await
            } else {
                Problem::new(Kind::NotFound, Audience::Probe, "Not found: try /metrics\n")
                    .respond(gateway.metrics())
            }
        })
    });
    serve_side(listener, &server, answer, stop).await;
}

/// What a side listener answers.
type SideService = Arc<
    dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Response<ResponseBody>> + Send>>
        + Send
        + Sync,
>;

/// A side listener gets the main listener's protections on a budget of its own: at
/// most [`limits::SIDE_LISTENER_CONNECTIONS`] connections (more wait in the kernel's
/// backlog, holding no descriptor of ours), the head read timeout and size limit,
/// closed when idle for `server.idle_timeout`, accept errors (descriptors exhausted)
/// backed off rather than retried in a loop.
async fn serve_side(
    listener: TcpListener,
    server: &ServerSettings,
    answer: SideService,
    mut stop: watch::Receiver<bool>,
) {
    let terms = ConnectionTerms::new(connection_builder(server), server, stop.clone());
    let places = Arc::new(Semaphore::new(limits::SIDE_LISTENER_CONNECTIONS));
    loop {
        let place = tokio::select! {
            place = places.clone().acquire_owned() => match place {
                Ok(place) => place,
                Err(_) => return,
            },
            _ = stopped(&mut stop) => return,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed on a side listener");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stopped(&mut stop) => return,
        };
        let (terms, answer) = (terms.clone(), answer.clone());
        tokio::spawn(async move {
            let _place = place;
            let activity = Arc::new(Activity::new());
            let counted = activity.clone();
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let (answer, activity) = (answer.clone(), counted.clone());
                activity.request_started();
                async move {
                    let response = answer(request).await;
                    activity.request_answered();
                    Ok::<_, Infallible>(response)
                }
            });
            let _ = terms.serve(stream, &activity, service).await;
        });
    }
}

/// [`RunningGateway::reload_from_config`].
async fn reload_config_and_certificate(
    live: &LiveGateway,
    certificate: Option<&tls::CertificateStore>,
    config: Option<&Path>,
) {
    match Settings::load(config) {
        Ok(settings) => {
            let _ = reload_settings(live, settings).await;
        }
        Err(e) => {
            tracing::error!(error = %e, "config reload refused; the running config stays");
            live.current().metrics().reload(false);
        }
    }
    let gateway = live.current();
    match (&gateway.settings().tls, certificate) {
        (TlsSettings::Acme(_), Some(_)) => {
            tracing::info!("TLS certificate kept: ACME renews it (tls.acme_*)");
        }
        (_, Some(store)) => store.reload_and_log("SIGHUP", gateway.metrics()),
        (_, None) => {}
    }
}

/// Swaps in `settings`, with a log line and the reload metric either way.
async fn reload_settings(
    live: &LiveGateway,
    settings: Settings,
) -> Result<Vec<&'static str>, GatewayError> {
    let metrics = live.current().metrics().clone();
    let outcome = live.reload(settings).await;
    match &outcome {
        Ok(restart_keys) => {
            metrics.reload(true);
            if restart_keys.is_empty() {
                tracing::info!("config reloaded");
            } else {
                tracing::warn!(
                    keys = ?restart_keys,
                    "config reloaded; changes to these keys take effect at the next restart"
                );
            }
        }
        Err(e) => {
            metrics.reload(false);
            tracing::error!(error = %e, "config reload refused; the running config stays");
        }
    }
    outcome
}

/// Resolves once the stop flag is set (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    while !*stop.borrow_and_update() {
        if stop.changed().await.is_err() {
            return;
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    // Registered now, not when the future is first polled: a SIGTERM that arrives
    // right after startup must stop the gateway gracefully, not kill it.
    #[cfg(unix)]
    let (mut interrupt, mut terminate) = {
        use tokio::signal::unix::{SignalKind, signal};
        (
            signal(SignalKind::interrupt()).ok(),
            signal(SignalKind::terminate()).ok(),
        )
    };
    async move {
        #[cfg(unix)]
        {
            let interrupted = async {
                match interrupt.as_mut() {
                    Some(signal) => signal.recv().await,
                    None => std::future::pending().await,
                }
            };
            let terminated = async {
                match terminate.as_mut() {
                    Some(signal) => signal.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = interrupted => tracing::info!("SIGINT received"),
                _ = terminated => tracing::info!("SIGTERM received"),
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            tracing::info!("interrupted");
        }
    }
}
