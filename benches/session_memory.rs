//! Resident memory per session in the in-memory store, at 100k and 1M sessions.
//!
//! `cargo bench --bench session_memory` (add `-- 100000` to pick the counts). Each
//! session has the sizes of a real Encvoy ID login with `offline_access`: an opaque
//! refresh token (the ID and access tokens are checked and not kept), a provider
//! `sid`, an email, a login and three permissions. The
//! figure is the growth of the process's resident set (VmRSS) divided by the number
//! of sessions, so it includes moka's own bookkeeping and allocator overhead.

use std::time::{Duration, SystemTime};

use ssogate::config::{SessionSettings, StoreSettings};
use ssogate::session::{
    Identity, Renewal, Session, SessionStore, Tokens, new_session_id, random_token,
};

fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("Linux /proc");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS line");
    kib * 1024
}

fn session(n: usize) -> Session {
    let identity = Identity {
        sub: format!("{:08}", 10_000_000 + n).into(),
        email: Some(format!("person{n}@example.com").into()),
        email_verified: true,
        preferred_username: Some(format!("person{n}").into()),
        groups: vec![
            "sentry:member".into(),
            "sentry:viewer".into(),
            "billing:read".into(),
        ]
        .into(),
    };
    let tokens = Tokens {
        renewal: Renewal::RefreshToken(random_token().into()),
        issued_at: SystemTime::now(),
        expires_at: SystemTime::now() + Duration::from_secs(1800),
    };
    Session::new(identity, Some(random_token().into()), tokens)
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this unoptimised
    // and without it, where a measurement would mean nothing.
    if !std::env::args().any(|a| a == "--bench") {
        println!("session_memory: measured only under `cargo bench`");
        return;
    }
    let counts: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let counts = if counts.is_empty() {
        vec![100_000, 1_000_000]
    } else {
        counts
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    println!("sessions     resident growth   per session");
    for count in counts {
        let settings = SessionSettings {
            cookie_name: "_ssogate".into(),
            secrets: vec!["x".repeat(32)],
            lifetime: Duration::from_secs(86_400),
            idle_timeout: Duration::from_secs(28_800),
            max_sessions: count as u64,
            revalidate_every: None,
            store: StoreSettings::Memory,
        };
        runtime.block_on(async {
            let store = SessionStore::new(&settings).expect("a memory store");
            let before = resident_bytes();
            for n in 0..count {
                let inserted = store.insert(&new_session_id(), session(n)).await;
                inserted.expect("the memory store takes every session");
            }
            store.sync().await;
            let growth = resident_bytes().saturating_sub(before);
            println!(
                "{count:>9}   {:>10.1} MiB   {:>8} bytes   ({} live)",
                growth as f64 / (1024.0 * 1024.0),
                growth / count as u64,
                store.len()
            );
        });
    }
}
