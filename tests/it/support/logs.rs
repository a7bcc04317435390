//! A log destination a test reads: the gateway's subscriber writes into it
//! (`ssogate::observe::logging::subscriber(format, false, buffer.clone())`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The log lines the gateway writes on the test's thread.
#[derive(Clone, Default)]
pub struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl LogBuffer {
    /// What was written, as it was.
    pub fn bytes(&self) -> Vec<u8> {
        self.0.lock().unwrap().clone()
    }

    /// What was written, invalid UTF-8 replaced.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// Waits (up to `patience`) until the log holds `line` `times` times.
    pub async fn wait_for(&self, line: &str, times: usize, patience: Duration) -> String {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let text = self.text();
            if text.matches(line).count() >= times {
                return text;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no {times}× `{line}` in the log:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuffer {
    type Writer = LogBuffer;
    fn make_writer(&'a self) -> LogBuffer {
        self.clone()
    }
}
