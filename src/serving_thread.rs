//! Which serving thread runs the current code: the server numbers its threads, the
//! upstream connection pools (one per thread) are picked by that number.

use std::cell::Cell;

thread_local! {
    /// 0 for the thread that started the gateway (and any thread not numbered).
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// Numbers this thread; called once by each serving thread the server starts.
pub fn set(index: usize) {
    INDEX.set(index);
}

/// This thread's number (0 unless [`set`]).
pub fn index() -> usize {
    INDEX.get()
}

#[cfg(test)]
mod tests {
    #[test]
    fn each_thread_has_its_own_number() {
        super::set(3);
        assert_eq!(super::index(), 3);
        let other = std::thread::spawn(super::index).join().unwrap();
        assert_eq!(other, 0);
    }
}
