//! Several `ssogate` processes (the real binary) sharing one real `redis-server`,
//! behind one public address, as an operator runs replicas behind a load balancer.
//! The identity provider and the upstream run in the test process.
//!
//! `redis-server` comes from Debian's package (`tests/install-peers.sh` installs it).
//! Each Redis runs on a free loopback port with its own directory and append-only
//! file, so stopping and starting it keeps its data, as a production Redis should.
//!
//! With [`ClusterOptions::sentinel`], that Redis is the master of a Sentinel setup:
//! one replica and three sentinels (`redis-server --sentinel`, same package), all on
//! loopback, with a short `down-after-milliseconds` so a failover takes seconds.
//!
//! With [`ClusterOptions::redis_cluster`], that Redis is the first of three masters of
//! a Redis Cluster (`--cluster-enabled yes`, joined with `redis-cli --cluster create`,
//! with [`ClusterOptions::redis_cluster_replicas`] a replica for each), each node with
//! its own directory and `nodes.conf`, so a node restarted keeps its place.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use ssogate::devidp::{DevProvider, DevProviderConfig, DevUser};
use ssogate::server::tls::{self, LocalCertificate};

use super::browser::Browser;
use super::{GatewayToml, TestUpstream, alice, unused_address, user};

/// A certificate for 127.0.0.1 from a throwaway CA, for every server of a setup.
fn loopback_certificate() -> LocalCertificate {
    tls::local_certificate(&["127.0.0.1"]).unwrap()
}

/// Writes `cert.pem`, `key.pem` and `ca.pem` into `dir`; returns the CA's path.
fn write_certificate(dir: &Path, certificate: &LocalCertificate) -> PathBuf {
    std::fs::write(dir.join("cert.pem"), &certificate.cert_pem).unwrap();
    std::fs::write(dir.join("key.pem"), &certificate.key_pem).unwrap();
    std::fs::write(dir.join("ca.pem"), &certificate.ca_pem).unwrap();
    dir.join("ca.pem")
}

/// A `redis-server` child process.
pub struct RedisServer {
    pub port: u16,
    dir: PathBuf,
    /// Serving TLS only (`rediss://`), with a certificate from this CA file.
    pub tls_ca_file: Option<PathBuf>,
    /// More `redis-server` arguments (e.g. `--replicaof`).
    extra_args: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
    pub fn start(dir: &Path) -> RedisServer {
        Self::start_with(dir, false)
    }

    /// `tls`: serve only TLS, with a certificate for 127.0.0.1 from a throwaway CA.
    pub fn start_with(dir: &Path, tls: bool) -> RedisServer {
        let certificate = tls.then(loopback_certificate);
        Self::start_named(dir, "redis", certificate.as_ref(), Vec::new())
    }

    /// A Redis in `dir/name`, with more arguments for `redis-server`; with a
    /// `certificate`, it serves only TLS (and replicates and talks to its cluster over
    /// TLS).
    pub fn start_named(
        dir: &Path,
        name: &str,
        certificate: Option<&LocalCertificate>,
        extra_args: Vec<String>,
    ) -> RedisServer {
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let tls_ca_file = certificate.map(|certificate| write_certificate(&dir, certificate));
        let mut server = RedisServer {
            port: unused_address().port(),
            dir,
            tls_ca_file,
            extra_args,
            child: None,
        };
        server.start_again();
        server
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls_ca_file.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}/0", self.port)
    }

    /// Starts it (again) on the same port and directory, and waits until it answers.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "redis-server is already running");
        let log = std::fs::File::create(self.dir.join("redis.log")).unwrap();
        let port = self.port.to_string();
        let mut command = Command::new("redis-server");
        command.args(["--bind", "127.0.0.1"]);
        if self.tls_ca_file.is_some() {
            let file = |name: &str| self.dir.join(name).display().to_string();
            command
                .args(["--port", "0", "--tls-port", &port])
                .args(["--tls-cert-file", &file("cert.pem")])
                .args(["--tls-key-file", &file("key.pem")])
                .args(["--tls-ca-cert-file", &file("ca.pem")])
                .args(["--tls-auth-clients", "no"])
                .args(["--tls-replication", "yes", "--tls-cluster", "yes"]);
        } else {
            command.args(["--port", &port]);
        }
        let child = command
            .arg("--dir")
            .arg(&self.dir)
            .args(["--appendonly", "yes", "--save", "", "--protected-mode", "yes"])
            .args(&self.extra_args)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run redis-server ({e}); install it with `bash tests/install-peers.sh` (Debian package redis-server)")
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.listening() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not start: {}",
                std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops it the way an operator or a service manager does (SIGTERM: Redis
    /// flushes its append-only file and exits).
    pub fn stop(&mut self) {
        let mut child = self.child.take().expect("redis-server is running");
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        child.wait().unwrap();
    }

    /// Kills it the way a crash does (SIGKILL: nothing flushed, no goodbye).
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("redis-server is running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// How many keys Redis holds (`DBSIZE`; plain Redis only).
    pub fn key_count(&self) -> u64 {
        self.integer_answer("DBSIZE")
    }

    /// `WAIT 1 <ms>`: how many replicas acknowledged every write made so far.
    pub fn replicas_in_sync(&self, within: Duration) -> u64 {
        let answer = self.redis_cli(&["WAIT", "1", &within.as_millis().to_string()]);
        answer
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("WAIT answered {answer:?}"))
    }

    /// Whether this cluster node owns `key`'s slot (it answers rather than `MOVED`).
    pub fn owns(&self, key: &str) -> bool {
        self.answer_lines(&format!("EXISTS {key}"), 1)[0].starts_with(':')
    }

    /// How many keys match `pattern` on this node.
    pub fn keys_matching(&self, pattern: &str) -> u64 {
        self.integer_answer(&format!(
            "EVAL \"return #redis.call('KEYS', ARGV[1])\" 0 {pattern}"
        ))
    }

    /// The bytes the keys matching `pattern` take on this node (`MEMORY USAGE`,
    /// added up).
    pub fn memory_of_keys(&self, pattern: &str) -> u64 {
        self.integer_answer(&format!(
            "EVAL \"local total = 0 for _, key in ipairs(redis.call('KEYS', ARGV[1])) do total = total + redis.call('MEMORY', 'USAGE', key, 'SAMPLES', 0) end return total\" 0 {pattern}"
        ))
    }

    /// How many data commands (not `PING`, `INFO`, `CLUSTER` and the like) this
    /// server ran so far (`INFO commandstats`).
    pub fn data_commands(&self) -> u64 {
        const DATA: [&str; 10] = [
            "get", "set", "del", "exists", "pexpire", "sadd", "smembers", "sinter", "publish",
            "evalsha",
        ];
        self.bulk_answer("INFO commandstats")
            .lines()
            .filter_map(|line| line.strip_prefix("cmdstat_")?.split_once(":calls="))
            .filter(|(name, _)| DATA.contains(name))
            .filter_map(|(_, rest)| rest.split(',').next()?.parse::<u64>().ok())
            .sum()
    }

    /// `cluster_state` of `CLUSTER INFO` (`ok` or `fail`).
    pub fn cluster_state(&self) -> String {
        self.redis_cli(&["CLUSTER", "INFO"])
            .lines()
            .find_map(|line| line.strip_prefix("cluster_state:"))
            .unwrap_or("none")
            .trim()
            .to_owned()
    }

    /// `master` or `slave` (the first line of `ROLE`'s answer).
    pub fn role(&self) -> String {
        let lines = self.answer_lines("ROLE", 3);
        lines[2].clone()
    }

    /// The value of `key` as Redis holds it (`GET`; plain Redis only), if there is one.
    pub fn value(&self, key: &str) -> Option<Vec<u8>> {
        use std::io::{BufRead, BufReader, Read, Write};
        let mut stream = std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)).unwrap();
        stream
            .write_all(format!("GET {key}\r\n").as_bytes())
            .unwrap();
        let mut reader = BufReader::new(stream);
        let mut header = String::new();
        reader.read_line(&mut header).unwrap();
        let length: usize = header.trim().strip_prefix('$')?.parse().ok()?;
        let mut value = vec![0; length];
        reader.read_exact(&mut value).unwrap();
        Some(value)
    }

    /// One inline command whose answer is an integer (plain Redis only).
    fn integer_answer(&self, command: &str) -> u64 {
        let answer = &self.answer_lines(command, 1)[0];
        answer
            .strip_prefix(':')
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{command} answered {answer:?}"))
    }

    /// The first `count` lines of the answer to one inline command.
    fn answer_lines(&self, command: &str, count: usize) -> Vec<String> {
        use std::io::{BufRead, BufReader, Write};
        assert!(self.tls_ca_file.is_none(), "the test speaks plain RESP");
        let mut stream = std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)).unwrap();
        stream
            .write_all(format!("{command}\r\n").as_bytes())
            .unwrap();
        let mut reader = BufReader::new(stream);
        (0..count)
            .map(|_| {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                line.trim().to_owned()
            })
            .collect()
    }

    /// `redis-cli` with the arguments to reach this server (over TLS when it serves
    /// TLS), then `args`.
    fn redis_cli_command(&self, port: bool) -> Command {
        let mut command = Command::new("redis-cli");
        if port {
            command.args(["-h", "127.0.0.1", "-p", &self.port.to_string()]);
        }
        if let Some(ca) = &self.tls_ca_file {
            command.arg("--tls").arg("--cacert").arg(ca);
        }
        command
    }

    /// What `redis-cli` prints for `args` sent to this server.
    fn redis_cli(&self, args: &[&str]) -> String {
        let output = self
            .redis_cli_command(true)
            .args(args)
            .output()
            .expect("redis-cli runs (Debian package redis-tools)");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// The answer to one inline command whose answer is one bulk string.
    fn bulk_answer(&self, command: &str) -> String {
        use std::io::{BufRead, BufReader, Read, Write};
        assert!(self.tls_ca_file.is_none(), "the test speaks plain RESP");
        let mut stream = std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)).unwrap();
        stream
            .write_all(format!("{command}\r\n").as_bytes())
            .unwrap();
        let mut reader = BufReader::new(stream);
        let mut header = String::new();
        reader.read_line(&mut header).unwrap();
        let length: usize = header
            .trim()
            .strip_prefix('$')
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{command} answered {header:?}"));
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        String::from_utf8(body).unwrap()
    }

    /// Answers PING (plain), or accepts connections (TLS: the gateway's own client is
    /// the test of the handshake).
    fn listening(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut stream) = std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)) else {
            return false;
        };
        if self.tls_ca_file.is_some() {
            return true;
        }
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        let mut answer = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut answer).is_ok()
            && &answer == b"+PONG\r\n"
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One `redis-server --sentinel` child process.
pub struct Sentinel {
    pub port: u16,
    child: Child,
}

/// The name the sentinels monitor the master under.
pub const MASTER_NAME: &str = "sessions";

impl Sentinel {
    /// A sentinel in `dir/name` watching the master on `master_port` (quorum 2),
    /// waiting until it answers.
    /// With a `certificate`, it serves only TLS and reaches the servers over TLS.
    fn start(
        dir: &Path,
        name: &str,
        master_port: u16,
        certificate: Option<&LocalCertificate>,
    ) -> Sentinel {
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let port = unused_address().port();
        let config = dir.join("sentinel.conf");
        let listen = match certificate {
            None => format!("port {port}\n"),
            Some(certificate) => {
                write_certificate(&dir, certificate);
                format!(
                    "port 0\ntls-port {port}\ntls-cert-file {0}/cert.pem\ntls-key-file {0}/key.pem\n\
                     tls-ca-cert-file {0}/ca.pem\ntls-auth-clients no\ntls-replication yes\n",
                    dir.display()
                )
            }
        };
        std::fs::write(
            &config,
            format!(
                "{listen}bind 127.0.0.1\nprotected-mode no\ndir {dir}\n\
                 sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 2\n\
                 sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
                 sentinel failover-timeout {MASTER_NAME} 3000\n\
                 sentinel parallel-syncs {MASTER_NAME} 1\n",
                dir = dir.display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("sentinel.log")).unwrap();
        let child = Command::new("redis-server")
            .arg(&config)
            .arg("--sentinel")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("redis-server --sentinel runs");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
            assert!(Instant::now() < deadline, "the sentinel did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Sentinel { port, child }
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The rest of a Sentinel setup around [`Cluster::redis`] (its first master).
pub struct SentinelSetup {
    /// Replicates the first master; promoted when it fails.
    pub replica: RedisServer,
    pub sentinels: Vec<Sentinel>,
    /// Everything serves only TLS.
    tls: bool,
}

impl SentinelSetup {
    fn start(
        dir: &Path,
        master: &RedisServer,
        certificate: Option<&LocalCertificate>,
    ) -> SentinelSetup {
        let replica = RedisServer::start_named(
            dir,
            "redis-replica",
            certificate,
            vec![
                "--replicaof".into(),
                "127.0.0.1".into(),
                master.port.to_string(),
            ],
        );
        let sentinels = (0..3)
            .map(|index| {
                Sentinel::start(dir, &format!("sentinel-{index}"), master.port, certificate)
            })
            .collect();
        SentinelSetup {
            replica,
            sentinels,
            tls: certificate.is_some(),
        }
    }

    /// The gateway's `[session]` keys for this setup.
    pub fn session_toml(&self) -> String {
        let addresses: Vec<String> = self
            .sentinels
            .iter()
            .map(|sentinel| format!("\"127.0.0.1:{}\"", sentinel.port))
            .collect();
        let url = if self.tls {
            format!("\nredis_url = \"rediss://{MASTER_NAME}/0\"")
        } else {
            String::new()
        };
        format!(
            "store = \"redis\"\nredis_sentinels = [{}]\nredis_master_name = \"{MASTER_NAME}\"{url}",
            addresses.join(", ")
        )
    }
}

/// The other nodes of a Redis Cluster whose first master is [`Cluster::redis`].
pub struct RedisClusterSetup {
    pub others: Vec<RedisServer>,
}

/// `redis-server` arguments for a cluster node: it fails a silent peer after a second;
/// its cluster bus port is a free one of its own (by default it would be the port plus
/// 10000, past 65535 for a high free port).
fn cluster_node_args() -> Vec<String> {
    let bus_port = unused_address().port().to_string();
    [
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        "nodes.conf",
        "--cluster-node-timeout",
        "1000",
        "--cluster-port",
        &bus_port,
    ]
    .map(String::from)
    .to_vec()
}

impl RedisClusterSetup {
    /// Two more masters (and with `replicas`, three nodes that `redis-cli --cluster
    /// create` makes their replicas), the cluster made over them; waits until every
    /// node says `cluster_state:ok`.
    fn start(
        dir: &Path,
        first: &RedisServer,
        certificate: Option<&LocalCertificate>,
        replicas: bool,
    ) -> RedisClusterSetup {
        let count = if replicas { 6 } else { 3 };
        let others: Vec<RedisServer> = (1..count)
            .map(|index| {
                let name = format!("redis-{index}");
                RedisServer::start_named(dir, &name, certificate, cluster_node_args())
            })
            .collect();
        let mut create = first.redis_cli_command(false);
        create.args(["--cluster", "create"]);
        for node in std::iter::once(first).chain(&others) {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        if replicas {
            create.args(["--cluster-replicas", "1"]);
        }
        let output = create
            .arg("--cluster-yes")
            .output()
            .expect("redis-cli runs (Debian package redis-tools)");
        assert!(
            output.status.success(),
            "redis-cli --cluster create: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let setup = RedisClusterSetup { others };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !setup
            .nodes(first)
            .iter()
            .all(|node| node.cluster_state() == "ok")
        {
            assert!(Instant::now() < deadline, "the cluster did not come up");
            std::thread::sleep(Duration::from_millis(100));
        }
        setup
    }

    /// Every node, `first` first.
    pub fn nodes<'a>(&'a self, first: &'a RedisServer) -> Vec<&'a RedisServer> {
        std::iter::once(first).chain(&self.others).collect()
    }

    /// The gateway's `[session]` keys for this cluster.
    fn session_toml(&self, first: &RedisServer) -> String {
        let nodes: Vec<String> = self
            .nodes(first)
            .iter()
            .map(|node| {
                let url = node.url();
                format!("\"{}\"", url.trim_end_matches("/0"))
            })
            .collect();
        format!(
            "store = \"redis\"\nredis_cluster_nodes = [{}]",
            nodes.join(", ")
        )
    }
}

/// One `ssogate run` process.
pub struct Replica {
    /// `https://127.0.0.1:<port>` of this replica.
    pub base: String,
    log: PathBuf,
    child: Child,
}

impl Replica {
    /// What it logged so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How a test wants its replicas.
pub struct ClusterOptions {
    /// One entry per replica: its `session.secrets`.
    pub secrets: Vec<Vec<&'static str>>,
    /// Extra keys for every replica's `[session]` section.
    pub session_toml: String,
    /// Extra keys for every replica's `[oidc]` section.
    pub oidc_toml: String,
    pub access_token_ttl: Duration,
    pub users: Vec<DevUser>,
    /// Redis serves only TLS (`rediss://` with `session.redis_ca_file`): every server,
    /// sentinel and cluster node, with certificates from one CA, replicating and
    /// talking to each other over TLS too.
    pub redis_tls: bool,
    /// Redis is a master with a replica and three sentinels; the gateways are given
    /// the sentinels.
    pub sentinel: bool,
    /// Redis is the first of three masters of a Redis Cluster; the gateways are given
    /// the three.
    pub redis_cluster: bool,
    /// With `redis_cluster`: each master has a replica (six nodes, all given).
    pub redis_cluster_replicas: bool,
}

pub const SECRET_OLD: &str = "the-old-session-secret-0123456789abcdef";
pub const SECRET_NEW: &str = "the-new-session-secret-9876543210fedcba";

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            secrets: vec![vec![SECRET_OLD], vec![SECRET_OLD]],
            session_toml: String::new(),
            oidc_toml: String::new(),
            access_token_ttl: Duration::from_secs(1800),
            users: vec![
                alice(),
                user("bob", "bob@corp.example", true, &["sentry:member"]),
            ],
            redis_tls: false,
            sentinel: false,
            redis_cluster: false,
            redis_cluster_replicas: false,
        }
    }
}

/// A provider, an upstream, a Redis and the gateway replicas.
pub struct Cluster {
    pub provider: DevProvider,
    pub upstream: TestUpstream,
    pub redis: RedisServer,
    /// With [`ClusterOptions::sentinel`].
    pub sentinel: Option<SentinelSetup>,
    /// With [`ClusterOptions::redis_cluster`].
    pub redis_cluster: Option<RedisClusterSetup>,
    pub replicas: Vec<Replica>,
    /// The public address (the first replica stands in for the load balancer's).
    pub public_url: String,
    pub ca_pem: String,
    dir: tempfile::TempDir,
}

impl Cluster {
    pub async fn start(options: ClusterOptions) -> Cluster {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let node_args = if options.redis_cluster {
            cluster_node_args()
        } else {
            Vec::new()
        };
        let certificate = options.redis_tls.then(loopback_certificate);
        let certificate = certificate.as_ref();
        let redis = RedisServer::start_named(dir.path(), "redis", certificate, node_args);
        let sentinel = options
            .sentinel
            .then(|| SentinelSetup::start(dir.path(), &redis, certificate));
        let redis_cluster = options.redis_cluster.then(|| {
            let replicas = options.redis_cluster_replicas;
            RedisClusterSetup::start(dir.path(), &redis, certificate, replicas)
        });
        let store_toml = match (&sentinel, &redis_cluster) {
            (Some(sentinel), _) => sentinel.session_toml(),
            (None, Some(redis_cluster)) => redis_cluster.session_toml(&redis),
            (None, None) => format!("store = \"redis\"\nredis_url = \"{}\"", redis.url()),
        };
        let redis_ca = match &redis.tls_ca_file {
            Some(file) => format!("redis_ca_file = \"{}\"", file.display()),
            None => String::new(),
        };
        let upstream = TestUpstream::start().await;
        let ports: Vec<u16> = options
            .secrets
            .iter()
            .map(|_| unused_address().port())
            .collect();
        let public_url = format!("https://127.0.0.1:{}", ports[0]);
        let provider = DevProvider::start(
            SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            DevProviderConfig {
                access_token_ttl: options.access_token_ttl,
                ..DevProviderConfig::new(super::test_client(&public_url), options.users)
            },
        )
        .await
        .expect("test provider starts");
        let certificate = tls::local_certificate(&["127.0.0.1"]).unwrap();
        std::fs::write(dir.path().join("cert.pem"), &certificate.cert_pem).unwrap();
        std::fs::write(dir.path().join("key.pem"), &certificate.key_pem).unwrap();
        let mut replicas = Vec::new();
        for (index, (port, secrets)) in ports.iter().zip(&options.secrets).enumerate() {
            let config = GatewayToml::new(
                &public_url,
                &format!("http://{}", upstream.addr),
                &provider.issuer(),
            )
            .server(&format!(
                "listen = \"127.0.0.1:{port}\"\nshutdown_grace = \"1s\""
            ))
            .tls(&format!(
                "cert_file = \"{0}/cert.pem\"\nkey_file = \"{0}/key.pem\"",
                dir.path().display()
            ))
            .upstream("read_timeout = \"5s\"")
            .oidc(&options.oidc_toml)
            .secrets(secrets)
            .session(&store_toml)
            .session(&redis_ca)
            .session(&options.session_toml)
            .render();
            let config_path = dir.path().join(format!("replica-{index}.toml"));
            std::fs::write(&config_path, config).unwrap();
            let log = dir.path().join(format!("replica-{index}.log"));
            let log_file = std::fs::File::create(&log).unwrap();
            let child = Command::new(env!("CARGO_BIN_EXE_ssogate"))
                .arg("run")
                .arg("--config")
                .arg(&config_path)
                .env("SSOGATE_LOG", "ssogate=debug,info")
                .stdout(log_file.try_clone().unwrap())
                .stderr(log_file)
                .spawn()
                .expect("the ssogate binary runs");
            replicas.push(Replica {
                base: format!("https://127.0.0.1:{port}"),
                log,
                child,
            });
        }
        let cluster = Cluster {
            provider,
            upstream,
            redis,
            sentinel,
            redis_cluster,
            replicas,
            public_url,
            ca_pem: certificate.ca_pem,
            dir,
        };
        for index in 0..cluster.replicas.len() {
            cluster.await_ready(index).await;
        }
        cluster
    }

    /// Replica `index`'s configuration file.
    pub fn config_path(&self, index: usize) -> PathBuf {
        self.dir.path().join(format!("replica-{index}.toml"))
    }

    /// `ssogate check` with replica `index`'s configuration: its output.
    pub async fn check_output(&self, index: usize) -> String {
        let config = self.config_path(index);
        tokio::task::spawn_blocking(move || {
            let output = Command::new(env!("CARGO_BIN_EXE_ssogate"))
                .arg("check")
                .arg("--config")
                .arg(&config)
                .output()
                .unwrap();
            String::from_utf8_lossy(&output.stdout).into_owned()
                + &String::from_utf8_lossy(&output.stderr)
        })
        .await
        .unwrap()
    }

    /// A browser pointed at replica `index`.
    pub fn browser(&self, index: usize) -> Browser {
        Browser::new(&self.ca_pem, &self.replicas[index].base)
    }

    /// The same browser (its cookies), with its requests reaching replica `index`, as
    /// a load balancer without sticky sessions would send them.
    pub fn on(&self, index: usize, browser: &Browser) -> Browser {
        let mut moved = self.browser(index);
        moved.cookies = browser.cookies.clone();
        moved
    }

    /// `/ready` of replica `index`: status and body.
    pub async fn ready(&self, index: usize) -> (u16, String) {
        let answer = self.browser(index).navigate("/ready").await;
        (answer.status.as_u16(), answer.body)
    }

    /// Waits (at most 20 s) until replica `index` says it is ready.
    pub async fn await_ready(&self, index: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let probe = tokio::time::timeout(Duration::from_secs(2), async {
                let mut browser = self.browser(index);
                let request = browser
                    .request(http::Method::GET, "/ready")
                    .body(super::browser::empty())
                    .unwrap();
                browser.send(request).await.status
            });
            let listening = std::net::TcpStream::connect(
                self.replicas[index].base.trim_start_matches("https://"),
            )
            .is_ok();
            if listening && matches!(probe.await, Ok(status) if status == 200) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "replica {index} not ready within 20 s; its log:\n{}",
                self.replicas[index].log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
