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
    macro_rules! keep {
        ($key:literal, $($field:ident).+) => {
            if running.$($field).+ != next.$($field).+ {
                next.$($field).+ = running.$($field).+.clone();
                kept.push($key);
            }
        };
    }
    keep!("server.listen", server.listen);
    keep!("server.http_redirect_listen", server.http_redirect_listen);
    keep!("server.acme_webroot", server.acme_webroot);
    keep!("server.metrics_listen", server.metrics_listen);
    keep!("server.threads", server.threads);
    keep!("server.max_connections", server.max_connections);
    keep!(
        "server.max_connections_per_address",
        server.max_connections_per_address
    );
    keep!("server.max_tunnels", server.max_tunnels);
    keep!("server.send_timeout", server.send_timeout);
    keep!("server.header_read_timeout", server.header_read_timeout);
    keep!("server.max_header_size", server.max_header_size);
    keep!("server.http2_max_streams", server.http2_max_streams);
    keep!("server.shutdown_grace", server.shutdown_grace);
    keep!("server.idle_timeout", server.idle_timeout);
    keep!("upstream.max_in_flight", upstream.max_in_flight);
    keep!(
        "upstream.max_in_flight_per_client",
        upstream.max_in_flight_per_client
    );
    keep!("tls", tls);
    keep!("session.store", session.store);
    keep!("session.max_sessions", session.max_sessions);
    keep!("session.lifetime", session.lifetime);
    keep!("session.idle_timeout", session.idle_timeout);
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(extra_server: &str) -> Settings {
        Settings::from_toml(
            &format!(
                r#"
[server]
public_url = "https://sentry.example.com"
{extra_server}
[tls]
enabled = false
[upstream]
url = "http://127.0.0.1:9000"
[oidc]
issuer = "https://id.example.com/api/oidc"
client_id = "sentry"
client_secret = "secret"
[session]
secrets = ["0123456789abcdef0123456789abcdef"]
"#
            ),
            "(test)",
            std::iter::empty(),
        )
        .unwrap()
    }

    #[test]
    fn restart_only_keys_keep_their_running_values_and_are_named() {
        let running = settings("listen = \"0.0.0.0:8080\"\nthreads = 2");
        let mut next = settings("listen = \"0.0.0.0:9090\"\nthreads = 2\nmax_body_size = \"1MiB\"");
        let kept = keep_running_values(&running, &mut next);
        assert_eq!(kept, ["server.listen"]);
        assert_eq!(next.server.listen, running.server.listen);
        assert_eq!(
            next.server.max_body_size,
            1024 * 1024,
            "other changes apply"
        );
    }
}
