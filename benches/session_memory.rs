//! Resident memory per session in the in-memory store, at 100k and 1M sessions.
//!
//! `cargo bench --bench session_memory` (add `-- 100000` to pick the counts). Each
//! session has the sizes of a real Encvoy ID login with `offline_access`: an opaque
//! refresh token (the ID and access tokens are checked and not kept), a provider
//! `sid`, an email, a login and three permissions. The figure is the growth of the
//! resident set (VmRSS) divided by the number of sessions, so it includes moka's
//! bookkeeping and the allocator's overhead; a second line shows moka's share, the
//! same cache holding one-byte values. Each line is measured in a fresh process.

use std::time::{Duration, SystemTime};

use ssogate::config::{SessionSettings, StoreSettings};
use ssogate::session::{
    Identity, Renewal, Session, SessionKey, SessionStore, Tokens, new_session_id, random_token,
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

/// What one measurement fills a store with.
#[derive(Clone, Copy)]
enum Fill {
    /// Real-sized sessions in the gateway's memory store.
    Sessions,
    /// The same moka cache (same keys, policy and expiry) with one-byte values: the
    /// part of a session's cost that is the cache's own bookkeeping.
    CacheOnly,
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this unoptimised
    // and without it, where a measurement would mean nothing.
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        println!("session_memory: measured only under `cargo bench`");
        return;
    }
    if let Some(at) = args.iter().position(|a| a == "--measure") {
        let fill = match args[at + 1].as_str() {
            "sessions" => Fill::Sessions,
            _ => Fill::CacheOnly,
        };
        measure(fill, args[at + 2].parse().expect("a count"));
        return;
    }
    let counts: Vec<usize> = args.iter().skip(1).filter_map(|a| a.parse().ok()).collect();
    let counts = if counts.is_empty() {
        vec![100_000, 1_000_000]
    } else {
        counts
    };
    // Each measurement runs in a fresh process: memory freed by an earlier one stays
    // in the allocator and would be reused, hiding growth.
    println!("what                       sessions   resident growth    per session");
    for count in counts {
        for (name, label) in [
            ("sessions", "memory store"),
            ("cache-only", "  of which moka's own"),
        ] {
            let output = std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--bench", "--measure", name, &count.to_string()])
                .output()
                .expect("the bench runs itself");
            let line = String::from_utf8_lossy(&output.stdout);
            println!("{label:<24} {}", line.trim_end());
        }
    }
}

/// Fills a store with `count` entries and prints how much the resident set grew.
fn measure(fill: Fill, count: usize) {
    let settings = SessionSettings {
        cookie_name: "_ssogate".into(),
        secrets: vec!["x".repeat(32)],
        lifetime: Duration::from_secs(86_400),
        idle_timeout: Duration::from_secs(28_800),
        max_sessions: count as u64,
        revalidate_every: None,
        store: StoreSettings::Memory,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = SessionStore::new(&settings).expect("a memory store");
        // As `SessionStore::new` builds it for the memory store.
        let cache_only = moka::future::Cache::builder()
            .max_capacity(settings.max_sessions)
            .eviction_policy(moka::policy::EvictionPolicy::lru())
            .time_to_idle(settings.idle_timeout)
            .build();
        let before = resident_bytes();
        for n in 0..count {
            let id = new_session_id();
            match fill {
                Fill::Sessions => {
                    let inserted = store.insert(&id, session(n)).await;
                    inserted.expect("the memory store takes every session");
                }
                Fill::CacheOnly => cache_only.insert(SessionKey::of(&id), 0u8).await,
            }
        }
        store.sync().await;
        cache_only.run_pending_tasks().await;
        let growth = resident_bytes().saturating_sub(before);
        let live = store.len() + cache_only.entry_count();
        assert_eq!(live, count as u64, "every entry is held");
        println!(
            "{count:>9}   {:>10.1} MiB   {:>8} bytes",
            growth as f64 / (1024.0 * 1024.0),
            growth / count as u64,
        );
    });
}
