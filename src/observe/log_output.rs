//! Log lines leave the serving threads in batches.
//!
//! A serving thread that wrote each access line to standard output itself would make
//! a system call per request, and would wait whenever the disk or the log collector
//! behind the pipe is slow. Instead each thread appends its lines to a buffer of its
//! own (one of [`SHARDS`], picked once per thread, so a thread's lines keep their
//! order and threads do not wait on each other); one writer thread takes every
//! buffer's lines at least every [`FLUSH_EVERY`], sooner when a buffer passes
//! [`WAKE_AT`], and writes each in one go.
//!
//! When the writer cannot keep up and a buffer already holds [`MAX_PENDING`] bytes,
//! further lines for it are dropped and counted ([`LineBatcher::lines_dropped`],
//! `ssogate_log_lines_dropped_total`), and the writer says so in a line of its own:
//! a slow disk slows no request, and memory stays bounded. [`LineBatcher::flush`]
//! writes whatever is pending (the process calls it before it exits).

use std::io::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// Buffers; threads beyond this many share them (lines from one thread stay in order).
pub const SHARDS: usize = 16;
/// Pending lines are written at least this often.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// A buffer this full wakes the writer at once.
pub const WAKE_AT: usize = 64 * 1024;
/// A buffer this full takes no more lines until the writer has taken it.
pub const MAX_PENDING: usize = 2 * 1024 * 1024;

/// Lines on their way to one output ([`MakeWriter`] for the log formatter).
pub struct LineBatcher {
    shards: [Mutex<Vec<u8>>; SHARDS],
    output: Mutex<Box<dyn Write + Send>>,
    max_pending: usize,
    dropped: AtomicU64,
    /// Set when a buffer passed [`WAKE_AT`]; the writer thread waits on it.
    wake: (Mutex<bool>, Condvar),
}

/// Which shard this thread's lines go to.
fn shard_of_this_thread() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Relaxed) % SHARDS;
    }
    SHARD.with(|shard| *shard)
}

impl LineBatcher {
    /// Lines for `output`, written by a thread of their own.
    pub fn start(output: Box<dyn Write + Send>) -> Arc<Self> {
        let batcher = Arc::new(Self::new(output, MAX_PENDING));
        let writer = batcher.clone();
        std::thread::Builder::new()
            .name("ssogate-log".into())
            .spawn(move || writer.write_forever())
            .expect("the log writer thread starts");
        batcher
    }

    fn new(output: Box<dyn Write + Send>, max_pending: usize) -> Self {
        Self {
            shards: std::array::from_fn(|_| Mutex::new(Vec::new())),
            output: Mutex::new(output),
            max_pending,
            dropped: AtomicU64::new(0),
            wake: (Mutex::new(false), Condvar::new()),
        }
    }

    /// Takes one formatted line (or several), or drops and counts it when its buffer
    /// is full. Never waits for the output.
    pub fn append(&self, lines: &[u8]) {
        let mut shard = lock(&self.shards[shard_of_this_thread()]);
        let before = shard.len();
        if before + lines.len() > self.max_pending {
            drop(shard);
            let count = lines.iter().filter(|&&b| b == b'\n').count().max(1);
            self.dropped.fetch_add(count as u64, Relaxed);
            return;
        }
        shard.extend_from_slice(lines);
        let wake = before < WAKE_AT && shard.len() >= WAKE_AT;
        drop(shard);
        if wake {
            *lock(&self.wake.0) = true;
            self.wake.1.notify_one();
        }
    }

    /// Lines dropped so far because the output did not keep up.
    pub fn lines_dropped(&self) -> u64 {
        self.dropped.load(Relaxed)
    }

    /// Writes every pending line now.
    pub fn flush(&self) {
        // Holding the output for the whole pass keeps two passes from reordering a
        // thread's lines.
        let mut output = lock(&self.output);
        // Each buffer taken is replaced by an empty one with room, so that serving
        // threads do not grow their buffer again after every pass.
        let mut taken = Vec::with_capacity(2 * WAKE_AT);
        for shard in &self.shards {
            {
                let mut shard = lock(shard);
                if shard.is_empty() {
                    continue;
                }
                std::mem::swap(&mut *shard, &mut taken);
            }
            // Nowhere to report a failing log output; the lines are lost.
            let _ = output.write_all(&taken);
            taken.clear();
        }
        let _ = output.flush();
    }

    fn write_forever(&self) {
        let mut reported = 0;
        loop {
            {
                let woken = lock(&self.wake.0);
                let (mut woken, _) = self
                    .wake
                    .1
                    .wait_timeout_while(woken, FLUSH_EVERY, |woken| !*woken)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                *woken = false;
            }
            self.flush();
            let dropped = self.lines_dropped();
            if dropped > reported {
                tracing::warn!(
                    dropped = dropped - reported,
                    "log lines dropped: the log output did not keep up"
                );
                reported = dropped;
            }
        }
    }
}

/// A lock whose holder panicked is still good: the data is bytes, whole or not.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The formatter's writer for one event: it hands over the whole line in one write.
pub struct BatchWriter<'a>(&'a LineBatcher);

impl Write for BatchWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.append(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Shared by the subscriber and [`super::logging::flush`].
#[derive(Clone)]
pub struct Batched(pub Arc<LineBatcher>);

impl<'a> MakeWriter<'a> for Batched {
    type Writer = BatchWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        BatchWriter(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::logging::tests::Buffer;

    fn text(sink: &Buffer) -> String {
        String::from_utf8(sink.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn lines_wait_for_the_writer_and_keep_each_threads_order() {
        let sink = Buffer::default();
        let batcher = Arc::new(LineBatcher::new(Box::new(sink.clone()), MAX_PENDING));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let batcher = batcher.clone();
                std::thread::spawn(move || {
                    for i in 0..500 {
                        batcher.append(format!("thread {t} line {i}\n").as_bytes());
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        // Nothing written by a serving thread itself.
        assert!(text(&sink).is_empty());
        batcher.flush();
        let out = text(&sink);
        assert_eq!(out.lines().count(), 2000);
        for t in 0..4 {
            let numbers: Vec<usize> = out
                .lines()
                .filter_map(|l| l.strip_prefix(&format!("thread {t} line ")))
                .map(|n| n.parse().unwrap())
                .collect();
            assert_eq!(numbers, (0..500).collect::<Vec<_>>(), "thread {t}");
        }
        assert_eq!(batcher.lines_dropped(), 0);
    }

    #[test]
    fn a_full_buffer_drops_and_counts_lines_instead_of_growing() {
        let sink = Buffer::default();
        let line = "x".repeat(99) + "\n";
        let batcher = LineBatcher::new(Box::new(sink.clone()), 1000);
        for _ in 0..25 {
            batcher.append(line.as_bytes());
        }
        // Ten fit in 1000 bytes; the other fifteen were dropped, not queued.
        assert_eq!(batcher.lines_dropped(), 15);
        batcher.flush();
        assert_eq!(text(&sink).lines().count(), 10);
        // Taken by the writer: room again.
        batcher.append(line.as_bytes());
        batcher.flush();
        assert_eq!(text(&sink).lines().count(), 11);
        assert_eq!(batcher.lines_dropped(), 15);
    }

    #[test]
    fn the_writer_thread_writes_pending_lines_without_being_asked() {
        let sink = Buffer::default();
        let batcher = LineBatcher::start(Box::new(sink.clone()));
        batcher.append(b"one quiet line\n");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while text(&sink).is_empty() {
            assert!(std::time::Instant::now() < deadline, "never written");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(text(&sink), "one quiet line\n");
    }
}
