//! How many upstream requests may be in flight: in total (`upstream.max_in_flight`)
//! and per client address (`upstream.max_in_flight_per_client`). A request holds its
//! [`InFlightSlot`] from before it is sent until its response body has been delivered
//! or abandoned (see [`super::bodies`]), which is as long as it occupies an upstream
//! connection. Beyond either bound the request is answered 503 without reaching the
//! upstream.
//!
//! The per-client counts live in a fixed table of atomic counters indexed by a keyed
//! hash of the client address: no lock, no allocation and nothing to clean up per
//! request. Two clients whose addresses land in the same counter share its bound; the
//! hash key is random per process, so a client cannot choose whom it shares with, and
//! with [`BUCKETS`] counters two given clients share one with a chance of 1 in 16384.
//!
//! The client address is the one the gateway reports to the upstream
//! ([`super::headers::client_address`]): the connection's peer; behind a trusted
//! proxy, the first address in `X-Forwarded-For` counted from the right that is not a
//! trusted proxy, so that everyone behind a load balancer is not one client. When that
//! is still a trusted proxy (it named no client), the request gets no per-client bound
//! (only the total), since its requests are many people's. IPv6 addresses count per
//! /64, the block one subscriber is usually given.

use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

/// Per-client counters in the table.
const BUCKETS: usize = 16 * 1024;

/// Which bound refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// `upstream.max_in_flight`
    Total,
    /// `upstream.max_in_flight_per_client`
    PerClient,
}

impl Refusal {
    pub fn key(self) -> &'static str {
        match self {
            Self::Total => "upstream.max_in_flight",
            Self::PerClient => "upstream.max_in_flight_per_client",
        }
    }
}

/// The in-flight counts, shared by every serving thread (and kept across reloads).
pub struct InFlight {
    max_total: usize,
    max_per_client: u32,
    total: AtomicUsize,
    per_client: Box<[AtomicU32]>,
    hasher: std::collections::hash_map::RandomState,
}

impl InFlight {
    pub fn new(max_total: usize, max_per_client: usize) -> Self {
        Self {
            max_total: max_total.max(1),
            max_per_client: u32::try_from(max_per_client.max(1)).unwrap_or(u32::MAX),
            total: AtomicUsize::new(0),
            per_client: (0..BUCKETS).map(|_| AtomicU32::new(0)).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }

    /// A place for one upstream request from `client` (None: no per-client bound).
    pub fn try_acquire(self: &Arc<Self>, client: Option<IpAddr>) -> Result<InFlightSlot, Refusal> {
        if self.total.fetch_add(1, Ordering::AcqRel) >= self.max_total {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::Total);
        }
        let bucket = client.map(|ip| self.bucket(ip));
        if let Some(bucket) = bucket
            && self.per_client[bucket].fetch_add(1, Ordering::AcqRel) >= self.max_per_client
        {
            self.per_client[bucket].fetch_sub(1, Ordering::AcqRel);
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::PerClient);
        }
        Ok(InFlightSlot {
            limits: self.clone(),
            bucket,
        })
    }

    /// Requests in flight now (all clients).
    pub fn total(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }

    fn bucket(&self, ip: IpAddr) -> usize {
        let key = match ip {
            IpAddr::V4(v4) => u128::from(v4.to_bits()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => u128::from(v4.to_bits()),
                // The /64, marked apart from every IPv4 address.
                None => (v6.to_bits() & !((1u128 << 64) - 1)) | 1,
            },
        };
        (self.hasher.hash_one(key) % BUCKETS as u64) as usize
    }
}

/// One request's place in the bounds, given back when dropped.
pub struct InFlightSlot {
    limits: Arc<InFlight>,
    bucket: Option<usize>,
}

impl Drop for InFlightSlot {
    fn drop(&mut self) {
        if let Some(bucket) = self.bucket {
            self.limits.per_client[bucket].fetch_sub(1, Ordering::AcqRel);
        }
        self.limits.total.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn bounds_hold_per_client_and_in_total_and_slots_give_back() {
        let limits = Arc::new(InFlight::new(3, 2));
        let a = Some(ip("192.0.2.1"));
        let b = Some(ip("192.0.2.2"));
        let a1 = limits.try_acquire(a).unwrap();
        let _a2 = limits.try_acquire(a).unwrap();
        assert_eq!(limits.try_acquire(a).err(), Some(Refusal::PerClient));
        let _b1 = limits.try_acquire(b).unwrap();
        assert_eq!(limits.try_acquire(b).err(), Some(Refusal::Total));
        assert_eq!(limits.try_acquire(None).err(), Some(Refusal::Total));
        drop(a1);
        assert_eq!(limits.total(), 2);
        let _a3 = limits.try_acquire(a).unwrap();
        assert_eq!(limits.total(), 3);
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let limits = Arc::new(InFlight::new(100, 1));
        let _one = limits.try_acquire(Some(ip("2001:db8:1:2::1"))).unwrap();
        assert_eq!(
            limits.try_acquire(Some(ip("2001:db8:1:2::ffff"))).err(),
            Some(Refusal::PerClient)
        );
        let _v4 = limits.try_acquire(Some(ip("192.0.2.9"))).unwrap();
        assert_eq!(
            limits.try_acquire(Some(ip("::ffff:192.0.2.9"))).err(),
            Some(Refusal::PerClient)
        );
    }
}
