//! Replacing the gateway's settings while it serves (SIGHUP).
//!
//! A reload builds a new [`Gateway`] from the new settings and swaps it in: each
//! request takes the gateway current when it arrives, and requests already running
//! finish with the one they started with. Nothing is dropped and nobody is signed
//! out: the new gateway shares the session store (and the login states already used)
//! and the metrics (logins in flight carry their own state, in the browser's sealed
//! cookie), and the provider (its discovered metadata and keys) when the provider's
//! settings did not change. A new provider must answer discovery before the swap.
//!
//! Some keys shape what was set up at start (listeners, threads, connection limits,
//! the session store): a change to one of them keeps its running value, and the reload
//! names it as needing a restart. A config that does not validate, or a provider that
//! cannot be reached, refuses the reload and the running gateway stays.

use std::sync::Arc;

use arc_swap::ArcSwap;

use super::{Gateway, GatewayError};
use crate::config::Settings;

/// The gateway in service, replaceable while requests run.
pub struct LiveGateway {
    current: ArcSwap<Gateway>,
    /// One reload at a time.
    reloading: tokio::sync::Mutex<()>,
}

impl LiveGateway {
    pub fn new(gateway: Arc<Gateway>) -> Self {
        Self {
            current: ArcSwap::new(gateway),
            reloading: tokio::sync::Mutex::new(()),
        }
    }

    /// The gateway new requests go to.
    pub fn current(&self) -> Arc<Gateway> {
        self.current.load_full()
    }

    /// Swaps in a gateway for `settings`; on success, the keys whose change waits for
    /// a restart (empty when every change took effect).
    pub async fn reload(&self, settings: Settings) -> Result<Vec<&'static str>, GatewayError> {
        let _one_at_a_time = self.reloading.lock().await;
        let running = self.current();
        let (next, restart_keys) = running.reloaded(settings).await?;
        self.current.store(Arc::new(next));
        Ok(restart_keys)
    }
}

impl Gateway {
    /// The gateway that takes over from this one with `settings` (see the module docs).
    async fn reloaded(
        &self,
        mut settings: Settings,
    ) -> Result<(Gateway, Vec<&'static str>), GatewayError> {
        let restart_keys = keep_running_values(&self.settings, &mut settings);
        let next = Gateway::build(settings, Some(self))?;
        if !Arc::ptr_eq(&next.provider, &self.provider) {
            next.provider
                .discover()
                .await
                .map_err(|e| GatewayError::Provider(e.to_string()))?;
        }
        if let Some(file) = &next.allowed_emails_file {
            file.watch();
        }
        Ok((next, restart_keys))
    }
}

/// Puts the running value back into `next` for every key that takes effect only at
/// a restart, and names those that the new settings had changed.
fn keep_running_values(running: &Settings, next: &mut Settings) -> Vec<&'static str> {
    let mut kept = Vec::new();
    // Each key once, as its field path in `Settings`, which is also its name in the config.
    macro_rules! keep {
        ($($first:ident $(.$rest:ident)*),+ $(,)?) => {$(
            if running.$first$(.$rest)* != next.$first$(.$rest)* {
                next.$first$(.$rest)* = running.$first$(.$rest)*.clone();
                kept.push(concat!(stringify!($first) $(, ".", stringify!($rest))*));
            }
        )+};
    }
    keep!(
        server.listen,
        server.http_redirect_listen,
        server.acme_webroot,
        server.metrics_listen,
        server.threads,
        server.max_connections,
        server.max_connections_per_address,
        server.max_tunnels,
        server.send_timeout,
        server.header_read_timeout,
        server.max_header_size,
        server.http2_max_streams,
        server.shutdown_grace,
        server.idle_timeout,
        upstream.max_in_flight,
        upstream.max_in_flight_per_client,
        tls,
        session.store,
        session.max_sessions,
        session.lifetime,
        session.idle_timeout,
    );
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal config ([`crate::config::tests::minimal`]) with `extra_server` keys.
    fn settings(extra_server: &str) -> Settings {
        let text = crate::config::tests::minimal().replacen(
            "[server]\n",
            &format!("[server]\n{extra_server}\n"),
            1,
        );
        Settings::from_toml(&text, "(test)", std::iter::empty()).unwrap()
    }

    #[test]
    fn restart_only_keys_keep_their_running_values_and_are_named() {
        let running = settings("listen = \"0.0.0.0:8080\"\nthreads = 2");
        let mut next = settings(
            "listen = \"0.0.0.0:9090\"\nthreads = 2\nmax_body_size = \"1MiB\"\n\
             max_connections_per_address = 7",
        );
        let kept = keep_running_values(&running, &mut next);
        assert_eq!(
            kept,
            ["server.listen", "server.max_connections_per_address"]
        );
        assert_eq!(next.server.listen, running.server.listen);
        assert_eq!(
            next.server.max_connections_per_address,
            running.server.max_connections_per_address
        );
        assert_eq!(
            next.server.max_body_size,
            1024 * 1024,
            "other changes apply"
        );
    }
}
