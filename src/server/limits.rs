//! What strangers' connections may hold: places in `server.max_connections` (sized to
//! fit the process's descriptor limit, with a reserve), places for tunnels, places per
//! client address (`server.max_connections_per_address`; trusted proxies, which carry
//! everyone's traffic, are exempt), and small fixed budgets for the side listeners
//! (the HTTP redirect and the metrics listener), so that a flood on one listener can
//! never take the descriptors another needs.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use ipnet::IpNet;
use tokio::sync::Semaphore;

use crate::config::{DEFAULT_MAX_CONNECTIONS, ServerSettings};

/// Connections each side listener serves at once (more wait in the kernel's backlog).
pub const SIDE_LISTENER_CONNECTIONS: usize = 64;
/// Descriptors kept for everything but client connections: listeners, logs, Redis,
/// calls to the provider.
const RESERVED_DESCRIPTORS: u64 = 64;

/// What every serving thread shares.
#[derive(Clone)]
pub struct Limits {
    pub connections: Arc<Semaphore>,
    pub tunnels: Arc<Semaphore>,
    pub per_address: Arc<PerAddress>,
}

impl Limits {
    pub fn new(server: &ServerSettings) -> Self {
        Self {
            connections: Arc::new(Semaphore::new(max_connections(
                server.max_connections,
                open_files_limit(),
            ))),
            tunnels: Arc::new(Semaphore::new(server.max_tunnels)),
            per_address: Arc::new(PerAddress {
                cap: server.max_connections_per_address,
                exempt: server.trusted_proxies.clone(),
                counts: Mutex::new(HashMap::new()),
            }),
        }
    }
}

/// `server.max_connections`, or by default [`DEFAULT_MAX_CONNECTIONS`], lowered to
/// what the descriptor limit allows: each client connection may hold two descriptors
/// (its own and one to the upstream), after the reserve and the side listeners. A
/// default lowered is logged at info; a value the operator set, as a warning.
fn max_connections(configured: Option<usize>, open_files: Option<u64>) -> usize {
    let wanted = configured.unwrap_or(DEFAULT_MAX_CONNECTIONS);
    let Some(open_files) = open_files else {
        return wanted;
    };
    let side = 2 * SIDE_LISTENER_CONNECTIONS as u64;
    let fits = (open_files.saturating_sub(RESERVED_DESCRIPTORS + side) / 2).max(1);
    let fits = usize::try_from(fits).unwrap_or(usize::MAX);
    if wanted <= fits {
        return wanted;
    }
    if configured.is_some() {
        tracing::warn!(
            configured = wanted,
            open_files,
            using = fits,
            "server.max_connections is more than the open-files limit allows (two descriptors per connection, plus a reserve); raise LimitNOFILE to serve more"
        );
    } else {
        tracing::info!(
            open_files,
            using = fits,
            "server.max_connections (not set) fitted to the open-files limit"
        );
    }
    fits
}

/// The soft open-files limit (`RLIMIT_NOFILE`), from `/proc/self/limits`; `None`
/// where that cannot be read (not Linux) or says "unlimited".
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    parse_open_files(&limits)
}

fn parse_open_files(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Open connections per client address.
pub struct PerAddress {
    cap: usize,
    /// Trusted proxies carry many people's connections: not capped.
    exempt: Vec<IpNet>,
    counts: Mutex<HashMap<IpAddr, usize>>,
}

impl PerAddress {
    /// A place for one more connection from `address`; `None` when it has
    /// `server.max_connections_per_address` already.
    pub fn take(self: &Arc<Self>, address: IpAddr) -> Option<AddressSlot> {
        if self.exempt.iter().any(|net| net.contains(&address)) {
            return Some(AddressSlot {
                table: None,
                address,
            });
        }
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let count = counts.entry(address).or_insert(0);
        if *count >= self.cap {
            return None;
        }
        *count += 1;
        Some(AddressSlot {
            table: Some(self.clone()),
            address,
        })
    }
}

/// A connection's place among its address's; given back on drop.
pub struct AddressSlot {
    table: Option<Arc<PerAddress>>,
    address: IpAddr,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let Some(table) = &self.table else { return };
        let mut counts = table.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = counts.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.address);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_open_files_limit_is_read_from_proc() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max cpu time              unlimited            unlimited            seconds   \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(parse_open_files(limits), Some(1024));
        assert_eq!(
            parse_open_files("Max open files  unlimited unlimited files"),
            None
        );
    }

    #[test]
    fn max_connections_fit_the_descriptors() {
        assert_eq!(max_connections(None, None), 10_000);
        assert_eq!(max_connections(Some(20_000), None), 20_000);
        assert_eq!(max_connections(None, Some(65_536)), 10_000);
        // 1024 descriptors: 64 reserved, 128 for the side listeners, two per connection.
        assert_eq!(max_connections(None, Some(1024)), 416);
        assert_eq!(max_connections(Some(10_000), Some(1024)), 416);
        assert_eq!(max_connections(Some(100), Some(1024)), 100);
    }

    #[test]
    fn each_address_gets_its_share_and_proxies_are_exempt() {
        let table = Arc::new(PerAddress {
            cap: 2,
            exempt: vec!["10.0.0.0/8".parse().unwrap()],
            counts: Mutex::new(HashMap::new()),
        });
        let a: IpAddr = "203.0.113.1".parse().unwrap();
        let b: IpAddr = "203.0.113.2".parse().unwrap();
        let first = table.take(a).unwrap();
        let _second = table.take(a).unwrap();
        assert!(table.take(a).is_none());
        assert!(table.take(b).is_some(), "another address is not affected");
        drop(first);
        assert!(
            table.take(a).is_some(),
            "a closed connection gives its place back"
        );
        let proxy: IpAddr = "10.1.2.3".parse().unwrap();
        let held: Vec<_> = (0..10).map(|_| table.take(proxy).unwrap()).collect();
        assert_eq!(held.len(), 10);
    }
}
