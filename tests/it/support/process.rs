//! The `ssogate` binary as an operator runs it: its own process, a config file, plain
//! HTTP on loopback, the test provider and upstream of this process behind it, and
//! its standard output kept for the test to read.

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ssogate::devidp::{DevProvider, DevProviderConfig};

use super::{GatewayToml, TestUpstream, alice, unused_address};

pub const SESSION_SECRET: &str = "process-session-secret-0123456789abcdef";

pub struct GatewayProcess {
    pub child: Child,
    pub base: String,
    pub addr: SocketAddr,
    /// The process's provider, running as long as the process is kept.
    _provider: DevProvider,
    pub upstream: TestUpstream,
    pub config: PathBuf,
    /// The CA of the listener's certificate, when it serves TLS.
    pub ca_pem: String,
    /// Where `tls.cert_file` and `tls.key_file` are, when it serves TLS.
    pub dir: tempfile::TempDir,
    /// Standard output so far, read continuously (a full pipe would stall the process).
    output: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
    /// Cleared to leave the output pipe unread, as a stalled log collector would.
    reading: Arc<AtomicBool>,
}

impl GatewayProcess {
    /// Starts the binary with `args` after `run --config <file>`, and waits until it
    /// listens. `extra` is appended to the `[server]` section. With `tls`, it serves
    /// HTTPS (and HSTS) with `cert.pem` and `key.pem` in [`GatewayProcess::dir`],
    /// issued by the CA in `ca.pem` there.
    pub async fn start(args: &[&str], server_extra: &str, tls: bool) -> GatewayProcess {
        let addr = unused_address();
        let base = format!("{}://{addr}", if tls { "https" } else { "http" });
        let dir = tempfile::tempdir().unwrap();
        let (tls_section, ca_pem) = if tls {
            let certificate = ssogate::server::tls::local_certificate(&["127.0.0.1"]).unwrap();
            std::fs::write(dir.path().join("cert.pem"), &certificate.cert_pem).unwrap();
            std::fs::write(dir.path().join("key.pem"), &certificate.key_pem).unwrap();
            std::fs::write(dir.path().join("ca.pem"), &certificate.ca_pem).unwrap();
            let section = format!(
                "cert_file = \"{0}/cert.pem\"\nkey_file = \"{0}/key.pem\"\nhsts_max_age = \"365d\"",
                dir.path().display()
            );
            (section, certificate.ca_pem)
        } else {
            ("enabled = false".to_owned(), String::new())
        };
        let upstream = TestUpstream::start().await;
        let provider = DevProvider::start(
            SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            DevProviderConfig::new(super::test_client(&base), vec![alice()]),
        )
        .await
        .expect("test provider starts");
        let config = dir.path().join("ssogate.toml");
        std::fs::write(
            &config,
            GatewayToml::new(
                &base,
                &format!("http://{}", upstream.addr),
                &provider.issuer(),
            )
            .server(&format!("listen = \"{addr}\"\nthreads = 2"))
            .server(server_extra)
            .tls(&tls_section)
            .secrets(&[SESSION_SECRET])
            .access("preset = \"sentry\"")
            .render(),
        )
        .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_ssogate"))
            .args(["run", "--config"])
            .arg(&config)
            .args(args)
            .env_remove("SSOGATE_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the ssogate binary starts");
        let output = Arc::new(Mutex::new(String::new()));
        let reading = Arc::new(AtomicBool::new(true));
        let mut stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn({
            let output = output.clone();
            let reading = reading.clone();
            move || {
                let mut buf = [0u8; 8192];
                loop {
                    while !reading.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    let Ok(n) = stdout.read(&mut buf) else {
                        break;
                    };
                    if n == 0 {
                        break;
                    }
                    output
                        .lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            }
        });
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return GatewayProcess {
                    child,
                    base,
                    addr,
                    _provider: provider,
                    upstream,
                    config,
                    ca_pem,
                    dir,
                    output,
                    reader: Some(reader),
                    reading,
                };
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("ssogate did not listen on {addr}");
    }

    /// Sends a signal (`TERM`, `HUP`) with kill(1).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits (up to 20 s) for the process to exit; its exit code and standard output.
    pub async fn exit(mut self) -> (Option<i32>, String) {
        for _ in 0..400 {
            if let Some(status) = self.child.try_wait().unwrap() {
                let _ = self.reader.take().unwrap().join();
                return (status.code(), self.output());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = self.child.kill();
        panic!("ssogate did not exit");
    }
}

impl GatewayProcess {
    /// Standard output so far.
    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// Stops or resumes reading standard output: unread, the pipe fills and the
    /// process's log writes block, as behind a stalled log collector.
    pub fn read_output(&self, read: bool) {
        self.reading.store(read, Ordering::Relaxed);
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
