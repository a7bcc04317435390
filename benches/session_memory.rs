//! Resident memory per session in the in-memory store, at 100k and 1M sessions.
//!
//! `cargo bench --bench session_memory` (add `-- 100000` to pick the counts). The
//! session shape is described in `support/sample.rs`. The figure is the growth of the
//! resident set (VmRSS) divided by the number of sessions, so it includes moka's
//! bookkeeping and the allocator's overhead; a second line shows moka's share, the
//! same cache holding one-byte values. Each line is measured in a fresh process.

#[path = "support/memory.rs"]
mod memory;
#[path = "support/sample.rs"]
mod sample;

use memory::Fill;

/// The allocator the `ssogate` binary runs with, so that its overhead is the one
/// measured.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this unoptimised
    // and without it, where a measurement would mean nothing.
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        println!("session_memory: measured only under `cargo bench`");
        return;
    }
    if memory::child_measurement(&args) {
        return;
    }
    let counts: Vec<usize> = args.iter().skip(1).filter_map(|a| a.parse().ok()).collect();
    let counts = if counts.is_empty() {
        vec![100_000, 1_000_000]
    } else {
        counts
    };
    println!("what                       sessions   resident growth    per session");
    for count in counts {
        for (fill, label) in [
            (Fill::Sessions, "memory store"),
            (Fill::CacheOnly, "  of which moka's own"),
        ] {
            let resident = memory::measure_in_fresh_process(fill, count);
            println!(
                "{label:<24} {count:>9}   {:>10.1} MiB   {:>8} bytes",
                resident.growth() as f64 / (1024.0 * 1024.0),
                resident.per_entry(),
            );
        }
    }
}
