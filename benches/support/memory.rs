//! Resident memory of the in-memory session store, shared by the `session_memory` and
//! `load` benches. Each measurement runs in a fresh process (the bench runs itself
//! with `--measure <fill> <count>`): memory freed by an earlier measurement stays in
//! the allocator and would be reused, hiding growth.
//!
//! Each session has the sizes of a real Encvoy ID login with `offline_access`: an
//! opaque refresh token (the ID and access tokens are checked and not kept), a provider
//! `sid`, an email, a login and three permissions.

use std::process::Command;
use std::time::Duration;

use ssogate::config::{SessionSettings, StoreSettings};
use ssogate::session::{SessionKey, SessionStore, new_session_id};

use crate::sample::session;

/// What one measurement fills a store with.
#[derive(Clone, Copy)]
pub enum Fill {
    /// Real-sized sessions in the gateway's memory store.
    Sessions,
    /// The same moka cache (same keys, policy and expiry) with one-byte values: the
    /// part of a session's cost that is the cache's own bookkeeping.
    CacheOnly,
}

impl Fill {
    fn arg(self) -> &'static str {
        match self {
            Fill::Sessions => "sessions",
            Fill::CacheOnly => "cache-only",
        }
    }
}

/// One measurement: the process's resident set with the empty store, and after
/// `count` entries.
#[derive(Clone, Copy, Debug)]
pub struct Resident {
    pub count: usize,
    pub before: u64,
    pub after: u64,
}

impl Resident {
    pub fn growth(&self) -> u64 {
        self.after.saturating_sub(self.before)
    }

    pub fn per_entry(&self) -> u64 {
        self.growth() / self.count.max(1) as u64
    }
}

/// Runs one measurement in a fresh process of the current bench executable.
pub fn measure_in_fresh_process(fill: Fill, count: usize) -> Resident {
    let output = Command::new(std::env::current_exe().unwrap())
        .args(["--bench", "--measure", fill.arg(), &count.to_string()])
        .output()
        .expect("the bench runs itself");
    let text = String::from_utf8_lossy(&output.stdout);
    let fields: Vec<u64> = text
        .lines()
        .find_map(|l| l.strip_prefix("RESIDENT "))
        .unwrap_or_else(|| {
            let errors = String::from_utf8_lossy(&output.stderr);
            panic!("no measurement from the child: {text}{errors}")
        })
        .split_whitespace()
        .map(|f| f.parse().unwrap())
        .collect();
    Resident {
        count,
        before: fields[0],
        after: fields[1],
    }
}

/// In the child: when the arguments ask for a measurement, makes it, prints it for
/// [`measure_in_fresh_process`] and returns true.
pub fn child_measurement(args: &[String]) -> bool {
    let Some(at) = args.iter().position(|a| a == "--measure") else {
        return false;
    };
    let fill = match args[at + 1].as_str() {
        "sessions" => Fill::Sessions,
        _ => Fill::CacheOnly,
    };
    let resident = measure(fill, args[at + 2].parse().expect("a count"));
    println!("RESIDENT {} {}", resident.before, resident.after);
    true
}

/// The resident set of process `pid` ("self" for this one), in bytes, from the
/// `/proc/<pid>/status` line `field` (`VmRSS`, or `VmHWM` for the peak).
pub fn status_bytes(pid: &str, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("Linux /proc");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} line"));
    kib * 1024
}

/// Fills a store with `count` entries; the resident set before and after.
fn measure(fill: Fill, count: usize) -> Resident {
    let settings = SessionSettings {
        cookie_name: "_ssogate".into(),
        secrets: vec!["x".repeat(32)],
        lifetime: Duration::from_secs(86_400),
        idle_timeout: Duration::from_secs(28_800),
        max_sessions: count.max(1) as u64,
        revalidate_every: None,
        expired_token_grace: Duration::ZERO,
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
        let before = status_bytes("self", "VmRSS");
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
        let after = status_bytes("self", "VmRSS");
        let live = store.len() + cache_only.entry_count();
        assert_eq!(live, count as u64, "every entry is held");
        Resident {
            count,
            before,
            after,
        }
    })
}
