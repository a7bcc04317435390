//! `ssogate check`: can people reach the upstream around the gateway?
//!
//! Self-hosted Sentry's nginx listens on every interface by default
//! (`SENTRY_BIND=9000`): with the gateway on the same host and `upstream.url =
//! "http://127.0.0.1:9000"`, anyone who reaches the host's other addresses on port
//! 9000 gets Sentry without signing in. When the upstream is on loopback, the check
//! connects to the same port on this host's other addresses and names each one that
//! answers. The addresses come from the kernel without a crate:
//! - the source address of a UDP socket `connect`ed to a public address (the outward
//!   address of the default route; nothing is sent),
//! - the local (`/32 host LOCAL`) entries of `/proc/net/fib_trie` (IPv4),
//! - `/proc/net/if_inet6` (IPv6, link-local ones with their interface).
//!
//! An upstream elsewhere (a docker network address, another host) cannot be judged
//! from here: the check says so instead of guessing.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::time::Duration;

use super::Line;

/// How long one probe waits for a connection: a port that answers on this host's own
/// address does so at once.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// What the probe found.
#[derive(Debug, PartialEq, Eq)]
pub enum Around {
    /// The upstream is not on loopback: nothing to compare it with here.
    NotOnLoopback { host: String },
    /// This host has no address other than loopback to try.
    NoOtherAddress,
    /// These addresses answered on the upstream's port.
    Answers(Vec<SocketAddr>),
    /// None of these addresses answered on `port`.
    LoopbackOnly { port: u16, tried: Vec<IpAddr> },
}

impl Around {
    /// The line `ssogate check` prints: a warning for each address that answers, a
    /// note when nothing can be told, an OK line otherwise.
    pub fn lines(&self) -> Vec<Line> {
        match self {
            Self::NotOnLoopback { host } => vec![Line::Note(format!(
                "not checked: upstream.url's host {host} is not on loopback, so whether Sentry \
                 also answers where the gateway is not in front cannot be told from here; make \
                 sure its port is published on no public interface (self-hosted Sentry: \
                 SENTRY_BIND in .env.custom, or no host port with ssogate on its docker network)"
            ))],
            Self::NoOtherAddress => vec![Line::Note(
                "skipped: this host has no address other than loopback to try".into(),
            )],
            Self::Answers(addresses) => addresses
                .iter()
                .map(|address| {
                    Line::Warn(format!(
                        "its port also answers on {address}, an address of this host other \
                         than loopback: people can reach Sentry around the gateway; set \
                         SENTRY_BIND=127.0.0.1:{port} in Sentry's .env.custom and restart its \
                         nginx (docker compose up -d nginx), or bind it to the docker network",
                        port = address.port()
                    ))
                })
                .collect(),
            Self::LoopbackOnly { port, tried } => vec![Line::Pass(format!(
                "port {port} answers on loopback only (tried {})",
                tried
                    .iter()
                    .map(IpAddr::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))],
        }
    }
}

/// Probes the upstream's port on this host's other addresses when the upstream is on
/// loopback.
pub async fn probe(upstream: &url::Url) -> Around {
    let on_loopback = match upstream.host() {
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    let port = upstream.port_or_known_default().unwrap_or(80);
    if !on_loopback {
        return Around::NotOnLoopback {
            host: upstream.host_str().unwrap_or_default().to_owned(),
        };
    }
    let addresses = this_hosts_addresses();
    if addresses.is_empty() {
        return Around::NoOtherAddress;
    }
    let mut probes = tokio::task::JoinSet::new();
    for address in &addresses {
        let target = address.with_port(port);
        probes.spawn(async move {
            let connect = tokio::net::TcpStream::connect(target);
            matches!(
                tokio::time::timeout(PROBE_TIMEOUT, connect).await,
                Ok(Ok(_))
            )
            .then_some(target)
        });
    }
    let mut answers: Vec<SocketAddr> = probes.join_all().await.into_iter().flatten().collect();
    if answers.is_empty() {
        return Around::LoopbackOnly {
            port,
            tried: addresses.iter().map(Address::ip).collect(),
        };
    }
    answers.sort();
    Around::Answers(answers)
}

/// An address of this host; a link-local IPv6 one with its interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Address {
    Ip(IpAddr),
    LinkLocal { ip: Ipv6Addr, interface: u32 },
}

impl Address {
    fn ip(&self) -> IpAddr {
        match self {
            Self::Ip(ip) => *ip,
            Self::LinkLocal { ip, .. } => IpAddr::V6(*ip),
        }
    }

    fn with_port(&self, port: u16) -> SocketAddr {
        match self {
            Self::Ip(ip) => SocketAddr::new(*ip, port),
            Self::LinkLocal { ip, interface } => {
                SocketAddr::V6(SocketAddrV6::new(*ip, port, 0, *interface))
            }
        }
    }
}

/// This host's addresses other than loopback (and other than unspecified ones).
pub fn this_hosts_addresses() -> Vec<Address> {
    let mut found = BTreeSet::new();
    for public in ["203.0.113.1:9", "[2001:db8::1]:9"] {
        if let Some(ip) = outward_address(public) {
            found.insert(Address::Ip(ip));
        }
    }
    if let Ok(text) = std::fs::read_to_string("/proc/net/fib_trie") {
        found.extend(
            local_ipv4(&text)
                .into_iter()
                .map(IpAddr::V4)
                .map(Address::Ip),
        );
    }
    if let Ok(text) = std::fs::read_to_string("/proc/net/if_inet6") {
        found.extend(ipv6_addresses(&text));
    }
    found
        .into_iter()
        .filter(|address| {
            let ip = address.ip();
            !ip.is_loopback() && !ip.is_unspecified()
        })
        .collect()
}

/// The source address the kernel would use to reach `public` (a UDP `connect` sends
/// nothing).
fn outward_address(public: &str) -> Option<IpAddr> {
    let bind = if public.starts_with('[') {
        "[::]:0"
    } else {
        "0.0.0.0:0"
    };
    let socket = std::net::UdpSocket::bind(bind).ok()?;
    socket.connect(public).ok()?;
    Some(socket.local_addr().ok()?.ip())
}

/// The IPv4 addresses of this host in `/proc/net/fib_trie`: an entry `|-- a.b.c.d`
/// followed by `/32 host LOCAL`.
fn local_ipv4(fib_trie: &str) -> BTreeSet<Ipv4Addr> {
    let mut found = BTreeSet::new();
    let mut last: Option<Ipv4Addr> = None;
    for line in fib_trie.lines() {
        let line = line.trim();
        if let Some(address) = line.strip_prefix("|-- ") {
            last = address.parse().ok();
        } else if line.starts_with("/32 host LOCAL")
            && let Some(ip) = last.take()
        {
            found.insert(ip);
        }
    }
    found
}

/// The IPv6 addresses in `/proc/net/if_inet6`: 32 hex digits, the interface index,
/// prefix length, scope and flags (hex), the interface's name.
fn ipv6_addresses(if_inet6: &str) -> BTreeSet<Address> {
    const LINK_SCOPE: u8 = 0x20;
    if_inet6
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let ip = Ipv6Addr::from(u128::from_str_radix(fields.next()?, 16).ok()?);
            let interface = u32::from_str_radix(fields.next()?, 16).ok()?;
            let _prefix = fields.next()?;
            let scope = u8::from_str_radix(fields.next()?, 16).ok()?;
            Some(if scope == LINK_SCOPE {
                Address::LinkLocal { ip, interface }
            } else {
                Address::Ip(IpAddr::V6(ip))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_local_ipv4_entries_of_fib_trie_are_read() {
        let fib_trie = "Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 127.0.0.0/8 2 0 2
        +-- 127.0.0.0/31 1 0 0
           |-- 127.0.0.0
              /8 host LOCAL
           |-- 127.0.0.1
              /32 host LOCAL
     +-- 192.0.2.0/24 2 0 2
           |-- 192.0.2.0
              /24 link UNICAST
           |-- 192.0.2.2
              /32 host LOCAL
        |-- 192.0.2.255
           /32 link BROADCAST
Local:
           |-- 192.0.2.2
              /32 host LOCAL
           |-- 172.17.0.1
              /32 host LOCAL
";
        assert_eq!(
            local_ipv4(fib_trie).into_iter().collect::<Vec<_>>(),
            [
                Ipv4Addr::new(127, 0, 0, 1),
                Ipv4Addr::new(172, 17, 0, 1),
                Ipv4Addr::new(192, 0, 2, 2)
            ]
        );
    }

    #[test]
    fn if_inet6_gives_global_and_link_local_addresses() {
        let if_inet6 = "fd000000000000000000000000000002 04 40 00 82     eth0
fe8000000000000000fc00fffe000001 04 40 20 80     eth0
00000000000000000000000000000001 01 80 10 80       lo
";
        assert_eq!(
            ipv6_addresses(if_inet6).into_iter().collect::<Vec<_>>(),
            [
                Address::Ip("::1".parse().unwrap()),
                Address::Ip("fd00::2".parse().unwrap()),
                Address::LinkLocal {
                    ip: "fe80::fc:ff:fe00:1".parse().unwrap(),
                    interface: 4
                },
            ]
        );
    }

    #[test]
    fn this_hosts_addresses_leave_out_loopback() {
        assert!(
            this_hosts_addresses()
                .iter()
                .all(|a| !a.ip().is_loopback() && !a.ip().is_unspecified())
        );
    }

    #[tokio::test]
    async fn an_upstream_elsewhere_gets_a_note_not_a_warning() {
        for url in [
            "http://nginx:80",
            "http://172.18.0.5:9000",
            "https://sentry.internal",
        ] {
            let around = probe(&url.parse().unwrap()).await;
            assert!(matches!(around, Around::NotOnLoopback { .. }), "{url}");
            let lines = around.lines();
            assert!(
                matches!(&lines[..], [Line::Note(text)] if text.starts_with("not checked: upstream.url's host ")),
                "{lines:?}"
            );
        }
    }

    #[test]
    fn each_answering_address_is_a_warning_with_the_fix() {
        let lines = Around::Answers(vec!["192.0.2.2:9000".parse().unwrap()]).lines();
        assert_eq!(
            lines,
            [Line::Warn(
                "its port also answers on 192.0.2.2:9000, an address of this host other than \
                 loopback: people can reach Sentry around the gateway; set \
                 SENTRY_BIND=127.0.0.1:9000 in Sentry's .env.custom and restart its nginx \
                 (docker compose up -d nginx), or bind it to the docker network"
                    .into()
            )]
        );
    }
}
