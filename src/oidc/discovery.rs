//! One retry schedule for the provider's metadata while it is not loaded.
//!
//! When discovery fails (the provider was down when the gateway started), the
//! background retry, login starts, callbacks, back-channel logouts and session upkeep
//! all want the metadata. They share one schedule: after the n-th failure in a row the
//! next attempt is due [`retry_delay`] later (2 s, doubling, at most 60 s), and only one
//! attempt runs at a time. A caller that arrives while one runs waits for it and takes
//! its outcome; one that arrives before the next attempt is due takes the last failure.
//! So requests strangers send cannot make the gateway call the provider more often
//! than the background retry would.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::ProviderError;

/// The pause after the first failure; it doubles with each further failure in a row.
pub const FIRST_RETRY: Duration = Duration::from_secs(2);

/// The longest pause between two attempts.
pub const MAX_RETRY: Duration = Duration::from_secs(60);

/// The pause before the next attempt after `failures` failures in a row.
pub fn retry_delay(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    FIRST_RETRY.saturating_mul(1 << doublings).min(MAX_RETRY)
}

#[derive(Default)]
struct State {
    /// Failures in a row (0 after a success).
    failures: u32,
    /// When the next attempt is due; `None` before the first failure.
    next_attempt: Option<Instant>,
    last_error: Option<ProviderError>,
}

/// The shared schedule; attempts themselves are serialised by the caller's lock.
#[derive(Default)]
pub(super) struct DiscoveryRetry {
    state: Mutex<State>,
    /// How many attempts have finished.
    finished: AtomicU64,
}

impl DiscoveryRetry {
    /// A ticket taken on arrival, before waiting for the attempt lock.
    pub fn arrival(&self) -> u64 {
        self.finished.load(Ordering::Acquire)
    }

    /// For a caller holding the attempt lock, that arrived with ticket `arrival`: the
    /// failure to answer with instead of a new attempt, when an attempt finished
    /// while it waited, or the next one is not due yet. `None`: make the attempt.
    pub fn instead_of_attempt(&self, arrival: u64) -> Option<ProviderError> {
        let state = self.state.lock().unwrap();
        let error = state.last_error.clone()?;
        let waited_for_one = self.finished.load(Ordering::Acquire) != arrival;
        let not_due = state.next_attempt.is_some_and(|due| Instant::now() < due);
        (waited_for_one || not_due).then_some(error)
    }

    /// Records an attempt's outcome.
    pub fn record(&self, result: &Result<(), ProviderError>) {
        let mut state = self.state.lock().unwrap();
        match result {
            Ok(()) => *state = State::default(),
            Err(error) => {
                state.failures = state.failures.saturating_add(1);
                state.next_attempt = Some(Instant::now() + retry_delay(state.failures));
                state.last_error = Some(error.clone());
            }
        }
        self.finished.fetch_add(1, Ordering::AcqRel);
    }

    /// When the next attempt is due; `None` while nothing failed.
    pub fn next_attempt(&self) -> Option<Instant> {
        self.state.lock().unwrap().next_attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn down() -> ProviderError {
        ProviderError::Status {
            url: "https://id.example.com/.well-known/openid-configuration".into(),
            status: 503,
        }
    }

    #[test]
    fn the_pause_doubles_from_two_seconds_to_a_minute() {
        let pauses: Vec<u64> = (1..=8).map(|n| retry_delay(n).as_secs()).collect();
        assert_eq!(pauses, [2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(retry_delay(u32::MAX), MAX_RETRY);
    }

    #[test]
    fn after_a_failure_callers_take_it_until_the_next_attempt_is_due() {
        let retry = DiscoveryRetry::default();
        let first = retry.arrival();
        assert!(
            retry.instead_of_attempt(first).is_none(),
            "nothing tried yet"
        );
        retry.record(&Err(down()));
        assert!(
            retry.instead_of_attempt(first).is_some(),
            "it waited for that attempt"
        );
        let later = retry.arrival();
        assert!(retry.instead_of_attempt(later).is_some(), "not due for 2 s");
        assert!(retry.next_attempt().is_some_and(|due| due > Instant::now()));
        retry.record(&Ok(()));
        assert!(retry.instead_of_attempt(retry.arrival()).is_none());
        assert!(retry.next_attempt().is_none());
    }
}
