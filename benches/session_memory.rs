//! Resident memory per session in the in-memory store, at 100k and 1M sessions.
//!
//! `cargo bench --bench session_memory` (add `-- 100000` to pick the counts). Each
//! session has the sizes of a real Encvoy ID login: a ~900-byte RS256 ID token, opaque
//! access and refresh tokens, an email, a login, a name and three permissions. The
//! figure is the growth of the process's resident set (VmRSS) divided by the number
//! of sessions, so it includes moka's own bookkeeping and allocator overhead.

use std::time::{Duration, SystemTime};

use ssogate::config::SessionSettings;
use ssogate::session::{Identity, Session, SessionStore, Tokens, new_session_id, random_token};

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
        issuer: "https://id.example.com/api/oidc".into(),
        sub: format!("{:08}", 10_000_000 + n),
        email: Some(format!("person{n}@example.com")),
        email_verified: true,
        preferred_username: Some(format!("person{n}")),
        name: Some(format!("Person Number {n}")),
        groups: vec![
            "sentry:member".into(),
            "sentry:viewer".into(),
            "billing:read".into(),
        ],
    };
    let id_token = format!("eyJhbGciOiJSUzI1NiIsImtpZCI6Ij{}", "x".repeat(870));
    let tokens = Tokens {
        id_token,
        access_token: random_token(),
        refresh_token: Some(random_token()),
        issued_at: SystemTime::now(),
        expires_at: SystemTime::now() + Duration::from_secs(1800),
    };
    Session::new(identity, Some(random_token()), tokens)
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
        };
        runtime.block_on(async {
            let store = SessionStore::new(&settings);
            let before = resident_bytes();
            for n in 0..count {
                store.insert(new_session_id(), session(n)).await;
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
