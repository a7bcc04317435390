//! The floor under the gateway: the leanest HTTP/1.1 reverse proxy hyper allows, run
//! as its own process (this bench binary with `--bare-proxy PORT UPSTREAM_PORT`) and
//! measured like every other target. One thread, as a serving thread of the gateway;
//! each client connection gets one upstream connection of its own
//! (`hyper::client::conn::http1`), and each request goes to it as it came: no header
//! read or written, no log line, no timer, no session. What ssogate spends per request
//! above this row is its own work (and what its safety asks of hyper: timeouts, the
//! pool, the framing check); what this row spends above nginx's proxy is hyper's and
//! tokio's.

use std::sync::Arc;

use hyper::Request;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

/// Runs the proxy until the process is stopped: `args` are the listening port and
/// the upstream's port, both on 127.0.0.1.
pub fn serve(args: &[String]) {
    let port = |i: usize| -> u16 {
        args.get(i)
            .and_then(|a| a.parse().ok())
            .expect("--bare-proxy PORT UPSTREAM_PORT")
    };
    let (listen_port, upstream_port) = (port(0), port(1));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let listener = TcpListener::bind(("127.0.0.1", listen_port)).await.unwrap();
        loop {
            let Ok((client, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(relay(client, upstream_port));
        }
    });
}

/// Serves one client connection over one upstream connection of its own.
async fn relay(
    client: TcpStream,
    upstream_port: u16,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    client.set_nodelay(true)?;
    let upstream = TcpStream::connect(("127.0.0.1", upstream_port)).await?;
    upstream.set_nodelay(true)?;
    let (sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(upstream)).await?;
    tokio::spawn(connection);
    // HTTP/1.1: one request at a time on the client connection, so one at a time on
    // its upstream connection too; the lock is never contended.
    let sender = Arc::new(tokio::sync::Mutex::new(sender));
    let service = service_fn(move |request: Request<Incoming>| {
        let sender = sender.clone();
        async move {
            let mut sender = sender.lock().await;
            sender.ready().await?;
            sender.send_request(request).await
        }
    });
    hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(client), service)
        .await?;
    Ok(())
}
