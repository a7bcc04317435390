//! The Redis session store, shared by every replica of the gateway.
//!
//! Layout, under `session.redis_key_prefix` (default `ssogate:`):
//! - `s:<key>`: one session, AES-256-GCM sealed with a key derived from the session
//!   id, so Redis holds neither ids nor readable tokens. Expires after the idle
//!   timeout (renewed on reads) and never after the session's lifetime.
//! - `sid:<hash>`, `sub:<hash>`: the session keys of a provider session or person,
//!   for back-channel logout.
//! - `lease:<key>`: which replica runs the session's refresh right now, so a rotating
//!   refresh token is used once, whichever replica the requests reach (a lock: `SET NX
//!   PX` with a random token, extended and given back only by its holder).
//! - `acme:order`: the lock of the replica ordering the ACME certificate;
//!   `acme:challenges`: its challenge answers while the order runs; `acme:certificate`
//!   and `acme:account`: what it got; these three sealed with the first session secret
//!   (see `server::acme`).
//! - `once:<purpose>:<hash>`: values that may be used only once (a logout token's
//!   `jti`, a login's `state`).
//! - channel `invalidate`: `<replica> <key>` after every change, so other replicas
//!   drop their cached copy at once.
//!
//! redis-rs's connection manager reconnects by itself and, over RESP3, subscribes
//! again after a reconnect. A health check (PING every second) says whether Redis is
//! reachable; while it is not, sessions in the local cache keep working, new logins
//! get 503, and removals and updates wait in memory until Redis is back. After an
//! outage the local cache is emptied, since invalidations may have been missed.
//!
//! With Redis Sentinel (`session.redis_sentinels`), the health check also asks the
//! master for its `ROLE`; when that fails or the server is no master any more, it asks
//! the sentinels which server is the master now and, if it changed, connects there and
//! subscribes again. Only the health check switches, so one switch runs at a time, and
//! requests served from the local cache never wait for it.
//!
//! With Redis Cluster (`session.redis_cluster_nodes`), redis-rs's cluster client
//! routes each command to the node that owns its key's slot and follows the cluster's
//! slot map, reconnecting and subscribing again by itself. Commands that touch keys
//! in different slots cannot share a pipeline there, so each write is a list of
//! [`Step`]s: one pipeline with one server or Sentinel (a `MULTI` where it was one),
//! one step after another in Cluster, the session's own key last on a login and the
//! invalidation last on a change. The health check asks every master whether the
//! cluster's state is `ok`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwapOption;
use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use moka::future::Cache;
use rand::RngCore;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{ProtocolVersion, PushKind};
use serde::{Deserialize, Serialize};
use url::Url;

use super::{GroupLists, Identity, Session, SessionKey, Tokens, Upkeep, hash, random_token};
use crate::config::{RedisSettings, SentinelSettings};

/// How long one replica may hold a session's refresh lease (longer than any refresh).
const LEASE_TTL: Duration = Duration::from_secs(15);
/// How often the health check pings Redis.
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);
/// Compare-and-delete: give a lock back only if it is still ours.
const RELEASE_SCRIPT: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";
/// Compare-and-extend: keep a lock longer only if it is still ours.
const EXTEND_SCRIPT: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0";

#[derive(Debug, thiserror::Error)]
pub enum SharedStoreError {
    #[error("session.redis_url: {0}")]
    Url(redis::RedisError),
    #[error("session.redis_ca_file {0}: {1}")]
    CaFile(String, std::io::Error),
}

/// Redis could not be asked (down, unreachable, too slow) or gave an answer that is
/// not ours.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the session store (Redis) cannot be reached: {0}")]
pub struct StoreUnavailable(pub String);

impl From<redis::RedisError> for StoreUnavailable {
    fn from(e: redis::RedisError) -> Self {
        Self(e.to_string())
    }
}

/// A session as stored in Redis (sealed as JSON).
#[derive(Serialize, Deserialize)]
struct Record {
    identity: Identity,
    provider_sid: Option<Box<str>>,
    created_at: SystemTime,
    tokens: Tokens,
    validated_at: SystemTime,
}

/// The connection to the data nodes: one server (or Sentinel's master), or a cluster.
#[derive(Clone)]
enum Connection {
    Server(ConnectionManager),
    Cluster(ClusterConnection),
}

impl redis::aio::ConnectionLike for Connection {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Self::Server(connection) => connection.req_packed_command(cmd),
            Self::Cluster(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Self::Server(connection) => connection.req_packed_commands(pipeline, offset, count),
            Self::Cluster(connection) => connection.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Server(connection) => connection.get_db(),
            Self::Cluster(connection) => connection.get_db(),
        }
    }
}

/// Commands on the keys of one slot (one key, or the invalidation channel), sent
/// together in any topology.
type Step = redis::Pipeline;

/// A change Redis could not take yet, carried out when it is back.
enum Deferred {
    Remove,
    Save { sealed: Vec<u8>, ttl: Duration },
}

pub struct SharedStore {
    /// To the master or the cluster; `None` until the sentinels named a master.
    connection: ArcSwapOption<Connection>,
    /// The data nodes' URL (with Sentinel: its host is replaced by the master's).
    url: Url,
    /// The extra CA for TLS (`session.redis_ca_file`), PEM.
    ca_pem: Option<Vec<u8>>,
    sentinel: Option<SentinelSettings>,
    /// Redis Cluster's seed nodes.
    cluster_nodes: Option<Vec<Url>>,
    /// The master the connection goes to (Sentinel only).
    master: Mutex<Option<(String, u16)>>,
    /// How long cached sessions outlive an outage (`session.local_cache_ttl`).
    local_cache_ttl: Duration,
    /// When Redis stopped answering after having answered, while it does not.
    unreachable_since: Mutex<Option<Instant>>,
    push_sender: tokio::sync::mpsc::UnboundedSender<redis::PushInfo>,
    prefix: String,
    timeout: Duration,
    lifetime: Duration,
    idle_timeout: Duration,
    /// The local cache in front (also held by [`super::SessionStore`]).
    local: Cache<SessionKey, Arc<Session>>,
    group_lists: GroupLists,
    /// Tells this replica's own invalidations from the others'.
    replica: String,
    reachable: AtomicBool,
    last_error: Mutex<String>,
    deferred: Mutex<HashMap<SessionKey, Deferred>>,
    /// Pushed messages (invalidations, disconnect notices), taken by [`Self::start`].
    pushes: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<redis::PushInfo>>>,
}

impl SharedStore {
    pub fn new(
        settings: &RedisSettings,
        lifetime: Duration,
        idle_timeout: Duration,
        local: Cache<SessionKey, Arc<Session>>,
        group_lists: GroupLists,
    ) -> Result<Self, SharedStoreError> {
        let ca_pem = match &settings.ca_file {
            None => None,
            Some(path) => Some(
                std::fs::read(path)
                    .map_err(|e| SharedStoreError::CaFile(path.display().to_string(), e))?,
            ),
        };
        let (push_sender, pushes) = tokio::sync::mpsc::unbounded_channel();
        let mut store = Self {
            connection: ArcSwapOption::empty(),
            url: settings.url.clone(),
            ca_pem,
            sentinel: settings.sentinel.clone(),
            cluster_nodes: settings.cluster_nodes.clone(),
            master: Mutex::new(None),
            local_cache_ttl: settings.local_cache_ttl,
            unreachable_since: Mutex::new(None),
            push_sender,
            prefix: settings.key_prefix.clone(),
            timeout: settings.timeout,
            lifetime,
            idle_timeout,
            local,
            group_lists,
            replica: random_token()[..12].to_owned(),
            reachable: AtomicBool::new(false),
            last_error: Mutex::new("not connected yet".into()),
            deferred: Mutex::new(HashMap::new()),
            pushes: Mutex::new(Some(pushes)),
        };
        if let Some(nodes) = &store.cluster_nodes {
            let connection = store
                .cluster_connection(nodes)
                .map_err(SharedStoreError::Url)?;
            store.connection = ArcSwapOption::from_pointee(Connection::Cluster(connection));
        } else if store.sentinel.is_none() {
            let connection = store
                .connection_to(&settings.url)
                .map_err(SharedStoreError::Url)?;
            store.connection = ArcSwapOption::from_pointee(Connection::Server(connection));
        }
        Ok(store)
    }

    /// A RESP3 client for `url`, over TLS with the configured CA for `rediss://`.
    fn client_for(&self, url: &Url) -> redis::RedisResult<redis::Client> {
        use redis::IntoConnectionInfo;
        let info = url.as_str().into_connection_info()?;
        let redis_settings = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let info = info.set_redis_settings(redis_settings);
        match &self.ca_pem {
            None => redis::Client::open(info),
            Some(pem) => redis::Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem.clone()),
                },
            ),
        }
    }

    /// A reconnecting connection to the data node at `url`, its pushes sent to
    /// [`Self::on_push`].
    fn connection_to(&self, url: &Url) -> redis::RedisResult<ConnectionManager> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1)
            .set_push_sender(self.push_sender.clone())
            .set_automatic_resubscription();
        ConnectionManager::new_lazy_with_config(self.client_for(url)?, config)
    }

    /// A connection to the cluster the seed `nodes` belong to (made in the
    /// background), its pushes sent to [`Self::on_push`].
    fn cluster_connection(&self, nodes: &[Url]) -> redis::RedisResult<ClusterConnection> {
        let mut builder = redis::cluster::ClusterClientBuilder::new(nodes.iter().map(Url::as_str))
            .use_protocol(ProtocolVersion::RESP3)
            .connection_timeout(self.timeout)
            .response_timeout(self.timeout)
            .retries(1);
        if let Some(pem) = &self.ca_pem {
            builder = builder.certs(redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem.clone()),
            });
        }
        let config = redis::cluster::ClusterConfig::new()
            .set_connection_timeout(self.timeout)
            .set_response_timeout(self.timeout)
            .set_push_sender(self.push_sender.clone());
        Ok(builder
            .build()?
            .get_pending_async_connection_with_config(config))
    }
    /// Starts the health check and the invalidation listener.
    pub fn start(self: Arc<Self>) {
        if let Some(mut pushes) = self.pushes.lock().unwrap().take() {
            let store = Arc::downgrade(&self);
            tokio::spawn(async move {
                while let Some(push) = pushes.recv().await {
                    let Some(store) = store.upgrade() else { break };
                    store.on_push(push).await;
                }
            });
        }
        let store = Arc::downgrade(&self);
        tokio::spawn(async move {
            let mut subscribed = false;
            loop {
                let Some(store) = store.upgrade() else { break };
                subscribed = store.check_health(subscribed).await;
                drop(store);
                tokio::time::sleep(HEALTH_INTERVAL).await;
            }
        });
    }

    /// One health check (PING, and the first subscription to the invalidation
    /// channel; the connection manager renews it after reconnects, and in Cluster it
    /// is made again after an outage). Returns whether the channel is subscribed.
    async fn check_health(&self, subscribed: bool) -> bool {
        let switched = self.follow_master().await;
        // In Cluster the subscription lives on the node that owns the channel's slot;
        // after an outage (that node failed over, perhaps) it is made again, on the
        // node the client's refreshed slot map names.
        let renew = self.cluster_nodes.is_some() && !self.reachable.load(Ordering::Acquire);
        let subscribed = subscribed && !switched && !renew;
        let result = match self.ping().await {
            Ok(()) if subscribed => Ok(()),
            Ok(()) => self.subscribe().await,
            Err(e) => Err(e),
        };
        let healthy = result.is_ok();
        match result {
            Ok(()) if !self.reachable.load(Ordering::Acquire) => self.recovered().await,
            Ok(()) => {}
            Err(e) => self.lost(&e.0),
        }
        subscribed || healthy
    }

    /// Whether Redis answers: `PING`; in Cluster, every master that has slots must
    /// say the cluster's state is `ok` (`CLUSTER INFO`): a master down is an outage
    /// before the cluster marks it failed (redis-rs stops asking a node it lost), and
    /// after its restart each master says `ok` only once it sees every slot served.
    async fn ping(&self) -> Result<(), StoreUnavailable> {
        let Connection::Cluster(mut connection) = self.connection()? else {
            return self
                .run::<redis::Value>(&redis::cmd("PING"))
                .await
                .map(drop);
        };
        let nodes: String = self.run(redis::cmd("CLUSTER").arg("NODES")).await?;
        let mut info = redis::cmd("CLUSTER");
        info.arg("INFO");
        for node in ClusterNode::parse_all(&nodes) {
            let Some((host, port)) = node.address.filter(|_| node.serves_slots) else {
                continue;
            };
            let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                host: host.to_owned(),
                port,
            });
            let master =
                |reason: String| StoreUnavailable(format!("the master at {host}:{port}: {reason}"));
            let answer = self
                .within(connection.route_command(info.clone(), routing))
                .await
                .map_err(|e| master(e.0))?;
            let answer: String =
                redis::from_redis_value(answer).map_err(|e| master(e.to_string()))?;
            match cluster_state(&answer) {
                "ok" => {}
                state => return Err(master(format!("the cluster's state is {state}"))),
            }
        }
        Ok(())
    }

    /// With Sentinel: makes sure the connection goes to the master, asking the
    /// sentinels when the server does not say it is the master (or does not answer).
    /// Returns whether it switched to another server (whose channel is not subscribed
    /// yet).
    async fn follow_master(&self) -> bool {
        let Some(sentinel) = &self.sentinel else {
            return false;
        };
        let role = self.run::<Vec<redis::Value>>(&redis::cmd("ROLE")).await;
        let is_master = role.is_ok_and(|role| {
            role.first()
                .and_then(|first| redis::from_redis_value::<String>(first.clone()).ok())
                .as_deref()
                == Some("master")
        });
        if is_master {
            return false;
        }
        tracing::debug!(
            name = sentinel.master_name,
            "session store (Redis): asking the sentinels which server is the master"
        );
        let (host, port) = match self.master_from_sentinels(sentinel).await {
            Ok(address) => address,
            Err(reason) => {
                self.lost(&reason);
                return false;
            }
        };
        if self.master.lock().unwrap().as_ref() == Some(&(host.clone(), port)) {
            return false;
        }
        let mut url = self.url.clone();
        if url.set_host(Some(&host)).is_err() || url.set_port(Some(port)).is_err() {
            self.lost(&format!(
                "the sentinels named an unusable master address {host}:{port}"
            ));
            return false;
        }
        match self.connection_to(&url) {
            Ok(connection) => {
                tracing::info!(
                    master = %format!("{host}:{port}"),
                    name = sentinel.master_name,
                    "session store (Redis): following the master the sentinels name"
                );
                self.connection
                    .store(Some(Arc::new(Connection::Server(connection))));
                *self.master.lock().unwrap() = Some((host, port));
                true
            }
            Err(e) => {
                self.lost(&e.to_string());
                false
            }
        }
    }

    /// The master's address, from the first sentinel that knows it.
    async fn master_from_sentinels(
        &self,
        sentinel: &SentinelSettings,
    ) -> Result<(String, u16), String> {
        let mut failures = Vec::new();
        for (host, port) in &sentinel.addresses {
            let asked = self
                .ask_sentinel::<Option<(String, u16)>>(
                    sentinel,
                    host,
                    *port,
                    redis::cmd("SENTINEL")
                        .arg("GET-MASTER-ADDR-BY-NAME")
                        .arg(&sentinel.master_name),
                )
                .await;
            match asked {
                Ok(Some(address)) => return Ok(address),
                Ok(None) => failures.push(format!(
                    "{host}:{port} knows no master named `{}`",
                    sentinel.master_name
                )),
                Err(e) => failures.push(format!("{host}:{port}: {e}")),
            }
        }
        Err(format!(
            "no sentinel names the master `{}`: {}",
            sentinel.master_name,
            failures.join("; ")
        ))
    }

    /// One command to one sentinel, on a connection of its own (sentinels are asked
    /// only when the master changes, and by `ssogate check`).
    async fn ask_sentinel<T: redis::FromRedisValue>(
        &self,
        sentinel: &SentinelSettings,
        host: &str,
        port: u16,
        command: &redis::Cmd,
    ) -> Result<T, String> {
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_owned()
        };
        let mut url = Url::parse(&format!("{}://{host}:{port}", self.url.scheme()))
            .map_err(|e| e.to_string())?;
        if let Some(password) = &sentinel.password {
            let _ = url.set_password(Some(password));
        }
        let client = self.client_for(&url).map_err(|e| e.to_string())?;
        let mut connection = self
            .within(client.get_multiplexed_async_connection())
            .await
            .map_err(|e| e.0)?;
        self.within(command.query_async(&mut connection))
            .await
            .map_err(|e| e.0)
    }

    /// With Sentinel or Cluster, the topology found (`ssogate check`); `None` with
    /// one server.
    pub async fn topology(&self) -> Option<Result<String, String>> {
        if self.cluster_nodes.is_some() {
            return Some(self.cluster_topology().await);
        }
        self.sentinel_topology().await
    }

    /// What the cluster says of itself: its state and its nodes (masters that serve
    /// slots, replicas, those it sees failing, such as a master whose replica took
    /// over).
    async fn cluster_topology(&self) -> Result<String, String> {
        let unreachable = |e: StoreUnavailable| format!("{} (session.redis_cluster_nodes)", e.0);
        let info: String = self
            .run(redis::cmd("CLUSTER").arg("INFO"))
            .await
            .map_err(unreachable)?;
        let nodes: String = self
            .run(redis::cmd("CLUSTER").arg("NODES"))
            .await
            .map_err(unreachable)?;
        let state = cluster_state(&info);
        let nodes = ClusterNode::parse_all(&nodes);
        let serving = nodes.iter().filter(|node| node.serves_slots).count();
        let replicas = nodes.iter().filter(|node| !node.master).count();
        let failing = nodes.iter().filter(|node| node.failing).count();
        let found = format!(
            "cluster: state {state}, {} node(s): {serving} master(s) serving slots, {replicas} replica(s), {failing} failing",
            nodes.len()
        );
        if state == "ok" {
            Ok(found)
        } else {
            Err(format!("{found} (session.redis_cluster_nodes)"))
        }
    }

    /// With Sentinel, what the sentinels say: the master, its replicas that are up,
    /// the sentinels that answer; `None` without Sentinel.
    async fn sentinel_topology(&self) -> Option<Result<String, String>> {
        let sentinel = self.sentinel.as_ref()?;
        let name = &sentinel.master_name;
        let mut answering = Vec::new();
        let mut failures = Vec::new();
        for (host, port) in &sentinel.addresses {
            let master = self
                .ask_sentinel::<HashMap<String, String>>(
                    sentinel,
                    host,
                    *port,
                    redis::cmd("SENTINEL").arg("MASTER").arg(name),
                )
                .await;
            match master {
                Ok(master) => answering.push((host, *port, master)),
                Err(e) if e.contains("No such master") => {
                    return Some(Err(format!(
                        "the sentinel at {host}:{port} knows no master named `{name}` (session.redis_master_name)"
                    )));
                }
                Err(e) => failures.push(format!("{host}:{port}: {e}")),
            }
        }
        let Some((host, port, master)) = answering.first() else {
            return Some(Err(format!(
                "no sentinel answers (session.redis_sentinels): {}",
                failures.join("; ")
            )));
        };
        let replicas = self
            .ask_sentinel::<Vec<HashMap<String, String>>>(
                sentinel,
                host,
                *port,
                redis::cmd("SENTINEL").arg("REPLICAS").arg(name),
            )
            .await
            .map(|replicas| {
                replicas
                    .iter()
                    .filter(|replica| {
                        let flags = replica.get("flags").map_or("", String::as_str);
                        !["s_down", "o_down", "disconnected"]
                            .iter()
                            .any(|down| flags.contains(down))
                    })
                    .count()
            });
        let field = |key: &str| master.get(key).map_or("?", String::as_str);
        Some(match replicas {
            Ok(replicas) => Ok(format!(
                "sentinel: master {name} at {}:{}, {replicas} replica(s), {} sentinel(s) reachable",
                field("ip"),
                field("port"),
                answering.len()
            )),
            Err(e) => Err(format!("the sentinel at {host}:{port}: {e}")),
        })
    }

    async fn subscribe(&self) -> Result<(), StoreUnavailable> {
        match self.connection()? {
            Connection::Server(mut connection) => {
                self.within(connection.subscribe(self.channel())).await
            }
            Connection::Cluster(mut connection) => {
                self.within(connection.subscribe(self.channel())).await
            }
        }
    }

    /// Redis answers again: carry out what waited, forget what may have gone stale.
    async fn recovered(&self) {
        let deferred: Vec<(SessionKey, Deferred)> = self.deferred.lock().unwrap().drain().collect();
        let count = deferred.len();
        for (key, change) in deferred {
            let result = match &change {
                Deferred::Remove => self.remove_in_redis(key).await,
                Deferred::Save { sealed, ttl } => self.save_in_redis(key, sealed, *ttl).await,
            };
            if let Err(e) = result {
                self.deferred.lock().unwrap().entry(key).or_insert(change);
                self.lost(&e.0);
                return;
            }
        }
        self.local.invalidate_all();
        *self.unreachable_since.lock().unwrap() = None;
        self.reachable.store(true, Ordering::Release);
        tracing::info!(deferred_changes = count, "session store (Redis) reachable");
    }

    fn lost(&self, reason: &str) {
        *self.last_error.lock().unwrap() = reason.to_owned();
        if self.reachable.swap(false, Ordering::AcqRel) {
            *self.unreachable_since.lock().unwrap() = Some(Instant::now());
            tracing::error!(
                error = reason,
                "session store (Redis) unreachable: cached sessions go on, new logins wait"
            );
        } else {
            tracing::debug!(error = reason, "session store (Redis) still unreachable");
        }
    }

    async fn on_push(&self, push: redis::PushInfo) {
        match push.kind {
            PushKind::Message => {
                let payload = push.data.get(1).and_then(|v| match v {
                    redis::Value::BulkString(bytes) => std::str::from_utf8(bytes).ok(),
                    redis::Value::SimpleString(text) => Some(text.as_str()),
                    _ => None,
                });
                let Some((replica, key)) = payload.and_then(|p| p.split_once(' ')) else {
                    return;
                };
                if replica != self.replica
                    && let Some(key) = SessionKey::from_text(key)
                {
                    self.local.invalidate(&key).await;
                }
            }
            PushKind::Disconnection => self.lost("connection closed"),
            _ => {}
        }
    }

    pub async fn server_version(&self) -> Result<String, StoreUnavailable> {
        if self.connection.load().is_none() {
            self.follow_master().await;
        }
        let info: String = self
            .run_on_one_node(redis::cmd("INFO").arg("server"))
            .await?;
        Ok(info
            .lines()
            .find_map(|line| line.strip_prefix("redis_version:"))
            .unwrap_or("(version unknown)")
            .trim()
            .to_owned())
    }

    pub fn unavailable(&self) -> Option<String> {
        (!self.reachable.load(Ordering::Acquire)).then(|| self.last_error.lock().unwrap().clone())
    }

    /// Why this replica should not get traffic, if it should not (`/ready`). Redis
    /// being unreachable is such a reason, except with Sentinel or Cluster while a
    /// failover or a node's restart may be under way: for `session.local_cache_ttl`
    /// after Redis stopped answering, the people this replica served keep working from
    /// its local cache.
    pub fn not_ready(&self) -> Option<String> {
        let reason = self.unavailable()?;
        let failing_over = (self.sentinel.is_some() || self.cluster_nodes.is_some())
            && self
                .unreachable_since
                .lock()
                .unwrap()
                .is_some_and(|since| since.elapsed() < self.local_cache_ttl);
        (!failing_over).then_some(reason)
    }

    /// The connection to the master or the cluster (a cheap handle onto a shared one).
    fn connection(&self) -> Result<Connection, StoreUnavailable> {
        self.connection
            .load()
            .as_deref()
            .cloned()
            .ok_or_else(|| StoreUnavailable("the sentinels have named no master yet".into()))
    }

    fn ensure_reachable(&self) -> Result<(), StoreUnavailable> {
        match self.unavailable() {
            Some(reason) => Err(StoreUnavailable(reason)),
            None => Ok(()),
        }
    }

    /// Runs one command, within the configured timeout.
    async fn run<T: redis::FromRedisValue>(
        &self,
        command: &redis::Cmd,
    ) -> Result<T, StoreUnavailable> {
        let mut connection = self.connection()?;
        self.within(command.query_async(&mut connection)).await
    }

    /// Runs a command without keys on one node (in Cluster, a random one; plain
    /// routing would ask every master and answer with a map).
    async fn run_on_one_node<T: redis::FromRedisValue>(
        &self,
        command: &redis::Cmd,
    ) -> Result<T, StoreUnavailable> {
        let Connection::Cluster(mut connection) = self.connection()? else {
            return self.run(command).await;
        };
        let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random);
        let value = self
            .within(connection.route_command(command.clone(), routing))
            .await?;
        redis::from_redis_value(value).map_err(|e| StoreUnavailable(e.to_string()))
    }

    async fn run_pipeline<T: redis::FromRedisValue>(
        &self,
        pipeline: &redis::Pipeline,
    ) -> Result<T, StoreUnavailable> {
        let mut connection = self.connection()?;
        self.within(pipeline.query_async(&mut connection)).await
    }

    /// Runs `steps` whose results nobody needs: as one pipeline (a `MULTI`
    /// transaction if `atomic`) with one server or Sentinel, one step after another in
    /// Cluster, where a pipeline must stay within one slot.
    async fn run_steps(&self, steps: Vec<Step>, atomic: bool) -> Result<(), StoreUnavailable> {
        if self.cluster_nodes.is_some() {
            for step in &steps {
                self.run_pipeline::<()>(step).await?;
            }
            return Ok(());
        }
        let mut pipeline = redis::pipe();
        if atomic {
            pipeline.atomic();
        }
        for command in steps.iter().flat_map(|step| step.cmd_iter()) {
            pipeline.add_command(command.clone()).ignore();
        }
        self.run_pipeline(&pipeline).await
    }

    /// Awaits one exchange with Redis for at most `session.redis_timeout`.
    async fn within<T>(
        &self,
        exchange: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreUnavailable> {
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(result) => result.map_err(StoreUnavailable::from),
            Err(_) => Err(StoreUnavailable(format!(
                "no answer within {:?}",
                self.timeout
            ))),
        }
    }

    fn channel(&self) -> String {
        format!("{}invalidate", self.prefix)
    }

    fn session_key(&self, key: SessionKey) -> String {
        format!("{}s:{}", self.prefix, key.text())
    }

    fn index_key(&self, kind: &str, value: &str) -> String {
        let digest = hash(&format!("ssogate {kind} index"), value);
        format!("{}{kind}:{}", self.prefix, URL_SAFE_NO_PAD.encode(digest))
    }

    fn invalidation(&self, key: SessionKey) -> String {
        format!("{} {}", self.replica, key.text())
    }

    /// How long a session stored now may live in Redis: the idle timeout, never past
    /// its lifetime.
    fn ttl(&self, created_at: SystemTime) -> Duration {
        let age = created_at.elapsed().unwrap_or_default();
        self.idle_timeout
            .min(self.lifetime.saturating_sub(age))
            .max(Duration::from_millis(1))
    }

    pub async fn insert(
        &self,
        key: SessionKey,
        id: &str,
        session: &Session,
    ) -> Result<(), StoreUnavailable> {
        self.ensure_reachable()?;
        let name = self.session_key(key);
        let sealed = seal_record(id, &name, session, &*session.upkeep.lock().await);
        let member = key.text();
        let indexes = [
            session
                .provider_sid
                .as_deref()
                .map(|sid| self.index_key("sid", sid)),
            Some(self.index_key("sub", &session.identity.sub)),
        ];
        // The indexes first: in Cluster, a failed login leaves at most an index entry
        // for a session that does not exist, never a session back-channel logout
        // cannot find.
        let mut steps: Vec<Step> = indexes
            .into_iter()
            .flatten()
            .map(|index| {
                let mut step = redis::pipe();
                step.cmd("SADD")
                    .arg(&index)
                    .arg(&member)
                    .cmd("PEXPIRE")
                    .arg(&index)
                    .arg(millis(self.lifetime));
                step
            })
            .collect();
        let mut session_step = redis::pipe();
        session_step
            .cmd("SET")
            .arg(&name)
            .arg(sealed)
            .arg("PX")
            .arg(millis(self.ttl(session.created_at)));
        steps.push(session_step);
        self.run_steps(steps, true).await
    }

    /// Reads a session from Redis (not the local cache) and renews its idle expiry.
    pub async fn load(
        &self,
        key: SessionKey,
        id: &str,
    ) -> Result<Option<Session>, StoreUnavailable> {
        let name = self.session_key(key);
        let sealed: Option<Vec<u8>> = self
            .run(redis::cmd("GET").arg(&name))
            .await
            .inspect_err(|e| self.lost(&e.0))?;
        let Some(sealed) = sealed else {
            return Ok(None);
        };
        let Some(record) = open_record(id, &name, &sealed) else {
            // Not sealed with this id's key: not a session this cookie may use.
            tracing::warn!("a stored session did not decrypt; treated as absent");
            return Ok(None);
        };
        let ttl = self.ttl(record.created_at);
        if let Err(e) = self
            .run::<()>(redis::cmd("PEXPIRE").arg(&name).arg(millis(ttl)))
            .await
        {
            tracing::debug!(error = %e, "could not renew a session's idle expiry");
        }
        let mut identity = record.identity;
        identity.groups = self.group_lists.intern(&identity.groups);
        Ok(Some(Session {
            identity,
            provider_sid: record.provider_sid,
            created_at: record.created_at,
            upkeep: tokio::sync::Mutex::new(Upkeep {
                validated_at: record.validated_at,
                ..Upkeep::confirmed_now(record.tokens)
            }),
        }))
    }

    /// Ends a session in Redis now, or says it could not (nothing is deferred): for
    /// a sign-out the person is told about.
    pub async fn end(&self, key: SessionKey) -> Result<(), StoreUnavailable> {
        self.remove_in_redis(key)
            .await
            .inspect_err(|e| self.lost(&e.0))
    }

    pub async fn remove(&self, key: SessionKey) {
        if let Err(e) = self.remove_in_redis(key).await {
            tracing::warn!(error = %e.0, "session removal deferred until Redis is back");
            self.deferred.lock().unwrap().insert(key, Deferred::Remove);
            self.lost(&e.0);
        }
    }

    async fn remove_in_redis(&self, key: SessionKey) -> Result<(), StoreUnavailable> {
        let mut delete = redis::pipe();
        delete.cmd("DEL").arg(self.session_key(key));
        self.run_steps(vec![delete, self.publication(&[key])], false)
            .await
    }

    /// Tells the other replicas to drop their copies of `keys` (the last step of a
    /// change, so that they read the changed session).
    fn publication(&self, keys: &[SessionKey]) -> Step {
        let mut step = redis::pipe();
        for key in keys {
            step.cmd("PUBLISH")
                .arg(self.channel())
                .arg(self.invalidation(*key));
        }
        step
    }

    pub async fn save(&self, key: SessionKey, id: &str, session: &Session, upkeep: &Upkeep) {
        let sealed = seal_record(id, &self.session_key(key), session, upkeep);
        let ttl = self.ttl(session.created_at);
        if let Err(e) = self.save_in_redis(key, &sealed, ttl).await {
            tracing::warn!(error = %e.0, "session update deferred until Redis is back");
            let mut deferred = self.deferred.lock().unwrap();
            if !matches!(deferred.get(&key), Some(Deferred::Remove)) {
                deferred.insert(key, Deferred::Save { sealed, ttl });
            }
            drop(deferred);
            self.lost(&e.0);
        }
    }

    /// Overwrites a session that still exists (`XX`: an update never brings back a
    /// session that was ended meanwhile) and tells the other replicas.
    async fn save_in_redis(
        &self,
        key: SessionKey,
        sealed: &[u8],
        ttl: Duration,
    ) -> Result<(), StoreUnavailable> {
        let mut update = redis::pipe();
        update
            .cmd("SET")
            .arg(self.session_key(key))
            .arg(sealed)
            .arg("XX")
            .arg("PX")
            .arg(millis(ttl));
        self.run_steps(vec![update, self.publication(&[key])], false)
            .await
    }

    pub async fn end_provider_sessions(
        &self,
        sid: Option<&str>,
        sub: Option<&str>,
    ) -> Result<usize, StoreUnavailable> {
        let members: Vec<String> = match (sid, sub) {
            // In Cluster the two indexes live in different slots: no SINTER.
            (Some(sid), Some(sub)) if self.cluster_nodes.is_some() => {
                let of_sid: Vec<String> = self
                    .run(redis::cmd("SMEMBERS").arg(self.index_key("sid", sid)))
                    .await?;
                let of_sub: std::collections::HashSet<String> = self
                    .run(redis::cmd("SMEMBERS").arg(self.index_key("sub", sub)))
                    .await?;
                of_sid
                    .into_iter()
                    .filter(|member| of_sub.contains(member))
                    .collect()
            }
            (Some(sid), Some(sub)) => {
                self.run(
                    redis::cmd("SINTER")
                        .arg(self.index_key("sid", sid))
                        .arg(self.index_key("sub", sub)),
                )
                .await?
            }
            (Some(sid), None) => {
                self.run(redis::cmd("SMEMBERS").arg(self.index_key("sid", sid)))
                    .await?
            }
            (None, Some(sub)) => {
                self.run(redis::cmd("SMEMBERS").arg(self.index_key("sub", sub)))
                    .await?
            }
            (None, None) => Vec::new(),
        };
        let keys: Vec<SessionKey> = members
            .iter()
            .filter_map(|m| SessionKey::from_text(m))
            .collect();
        if keys.is_empty() {
            return Ok(0);
        }
        let mut delete = redis::cmd("DEL");
        for key in &keys {
            delete.arg(self.session_key(*key));
        }
        // In Cluster, redis-rs splits the DEL by slot and adds up the answers.
        let ended: usize = self.run(&delete).await?;
        for key in &keys {
            self.local.invalidate(key).await;
        }
        self.run_pipeline::<()>(&self.publication(&keys)).await?;
        Ok(ended)
    }

    fn lease_name(key: SessionKey) -> String {
        format!("lease:{}", key.text())
    }

    pub async fn lease(&self, key: SessionKey) -> super::Lease {
        match self.try_lock(&Self::lease_name(key), LEASE_TTL).await {
            Ok(Some(token)) => super::Lease::Held(token),
            Ok(None) => super::Lease::Busy,
            Err(e) => {
                self.lost(&e.0);
                super::Lease::Unavailable(e)
            }
        }
    }

    pub async fn release(&self, key: SessionKey, token: &str) {
        if self.unlock(&Self::lease_name(key), token).await.is_err() {
            tracing::debug!("a refresh lease was not given back; it expires by itself");
        }
    }

    /// Waits until the lease on this session is free (or [`LEASE_TTL`] passed).
    pub async fn await_lease(&self, key: SessionKey) {
        let deadline = tokio::time::Instant::now() + LEASE_TTL;
        let name = Self::lease_name(key);
        while tokio::time::Instant::now() < deadline {
            match self.locked(&name).await {
                Ok(true) => tokio::time::sleep(Duration::from_millis(25)).await,
                _ => return,
            }
        }
    }

    /// The Redis key of `name`: under `session.redis_key_prefix`.
    fn prefixed(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Takes the lock `name` (under the key prefix) for `ttl` if no replica holds it
    /// (`SET NX PX`): the token that proves it is ours, or `None` when it is taken.
    /// Used for the refresh leases (`lease:<key>`) and the ACME order (`acme:order`).
    pub async fn try_lock(
        &self,
        name: &str,
        ttl: Duration,
    ) -> Result<Option<String>, StoreUnavailable> {
        let token = random_token();
        let taken: Option<String> = self
            .run(
                redis::cmd("SET")
                    .arg(self.prefixed(name))
                    .arg(&token)
                    .arg("NX")
                    .arg("PX")
                    .arg(millis(ttl)),
            )
            .await?;
        Ok(taken.map(|_| token))
    }

    /// Keeps the lock `name` for another `ttl`, if it is still ours: whether it is.
    pub async fn extend_lock(
        &self,
        name: &str,
        token: &str,
        ttl: Duration,
    ) -> Result<bool, StoreUnavailable> {
        let extended: i64 = self
            .run_lock_script(EXTEND_SCRIPT, name, &[token, &millis(ttl).to_string()])
            .await?;
        Ok(extended == 1)
    }

    /// Gives the lock `name` back, if it is still ours (compare-and-delete).
    pub async fn unlock(&self, name: &str, token: &str) -> Result<(), StoreUnavailable> {
        self.run_lock_script::<i64>(RELEASE_SCRIPT, name, &[token])
            .await
            .map(drop)
    }

    /// Runs one of the lock's scripts on the lock `name` (its only key).
    async fn run_lock_script<T: redis::FromRedisValue>(
        &self,
        script: &str,
        name: &str,
        args: &[&str],
    ) -> Result<T, StoreUnavailable> {
        let script = redis::Script::new(script);
        let mut invocation = script.key(self.prefixed(name));
        for arg in args {
            invocation.arg(*arg);
        }
        let mut connection = self.connection()?;
        self.within(invocation.invoke_async(&mut connection)).await
    }

    /// Whether some replica holds the lock `name`.
    pub async fn locked(&self, name: &str) -> Result<bool, StoreUnavailable> {
        self.run(redis::cmd("EXISTS").arg(self.prefixed(name)))
            .await
    }

    /// Stores `plain` under `name` (under the key prefix; expiring after `ttl`, if
    /// given), sealed with a key derived from `secret` (the first session secret) and
    /// bound to the name: Redis never holds it readable. For what the replicas share
    /// besides sessions (the ACME certificate and its key, account and challenges).
    pub async fn put_sealed(
        &self,
        name: &str,
        secret: &str,
        plain: &[u8],
        ttl: Option<Duration>,
    ) -> Result<(), StoreUnavailable> {
        let name = self.prefixed(name);
        let sealed = seal(&sealing_key("shared value", secret), &name, plain);
        let mut command = redis::cmd("SET");
        command.arg(&name).arg(sealed);
        if let Some(ttl) = ttl {
            command.arg("PX").arg(millis(ttl));
        }
        self.run(&command).await
    }

    /// What [`Self::put_sealed`] stored under `name`, opened with whichever of
    /// `secrets` sealed it; `None` when there is nothing, or nothing these secrets open
    /// (then a warning is logged).
    pub async fn get_sealed(
        &self,
        name: &str,
        secrets: &[String],
    ) -> Result<Option<Vec<u8>>, StoreUnavailable> {
        let name = self.prefixed(name);
        let sealed: Option<Vec<u8>> = self.run(redis::cmd("GET").arg(&name)).await?;
        let Some(sealed) = sealed else {
            return Ok(None);
        };
        let opened = secrets
            .iter()
            .find_map(|secret| open(&sealing_key("shared value", secret), &name, &sealed));
        if opened.is_none() {
            tracing::warn!(key = %name, "a shared value in Redis does not open with any session secret; ignored");
        }
        Ok(opened)
    }

    pub async fn already_used(&self, purpose: &str, value: &str) -> Result<bool, StoreUnavailable> {
        let name = self.index_key(&format!("once:{purpose}"), value);
        self.run(redis::cmd("EXISTS").arg(name)).await
    }

    pub async fn first_use(
        &self,
        purpose: &str,
        value: &str,
        ttl: Duration,
    ) -> Result<bool, StoreUnavailable> {
        let name = self.index_key(&format!("once:{purpose}"), value);
        let set: Option<String> = self
            .run(
                redis::cmd("SET")
                    .arg(name)
                    .arg(1)
                    .arg("NX")
                    .arg("PX")
                    .arg(millis(ttl)),
            )
            .await?;
        Ok(set.is_some())
    }
}

/// One line of `CLUSTER NODES`.
#[derive(Debug, PartialEq)]
struct ClusterNode<'a> {
    /// Where clients reach it (`None` while the cluster does not know).
    address: Option<(&'a str, u16)>,
    master: bool,
    /// Some node sees it failing (`fail` or `fail?`).
    failing: bool,
    /// A master with slots assigned.
    serves_slots: bool,
}

impl<'a> ClusterNode<'a> {
    /// `<id> <ip:port@cport[,hostname]> <flags> <master> <ping> <pong> <epoch> <link>
    /// <slot>...` per line.
    fn parse_all(answer: &'a str) -> Vec<ClusterNode<'a>> {
        answer
            .lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split(' ').collect();
                let flags: Vec<&str> = fields.get(2)?.split(',').collect();
                let address = fields[1]
                    .split(['@', ','])
                    .next()
                    .and_then(|address| address.rsplit_once(':'))
                    .and_then(|(host, port)| Some((host, port.parse().ok()?)))
                    .filter(|(host, port)| !host.is_empty() && *port != 0);
                let master = flags.contains(&"master");
                Some(ClusterNode {
                    address,
                    master,
                    failing: flags.iter().any(|flag| flag.starts_with("fail")),
                    serves_slots: master && fields.len() > 8,
                })
            })
            .collect()
    }
}

/// `cluster_state` in the answer to `CLUSTER INFO`.
fn cluster_state(info: &str) -> &str {
    info.lines()
        .find_map(|line| line.strip_prefix("cluster_state:"))
        .unwrap_or("unknown")
        .trim()
}

fn millis(duration: Duration) -> u64 {
    (duration.as_millis() as u64).max(1)
}

/// The AES-256 key that seals what belongs to one secret value (a session id):
/// whoever does not have the value cannot read it.
fn sealing_key(purpose: &str, secret: &str) -> LessSafeKey {
    let bytes = hash(&format!("ssogate {purpose} sealing"), secret);
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &bytes).expect("a 32-byte AES key"))
}

/// `nonce || ciphertext || tag`, with the Redis key name as associated data, so a
/// value copied under another name does not open.
fn seal(key: &LessSafeKey, name: &str, plain: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; NONCE_LEN];
    rand::rng().fill_bytes(&mut nonce);
    let mut sealed = plain.to_vec();
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(name.as_bytes()),
        &mut sealed,
    )
    .expect("AES-GCM seals any length we store");
    let mut out = nonce.to_vec();
    out.append(&mut sealed);
    out
}

fn open(key: &LessSafeKey, name: &str, sealed: &[u8]) -> Option<Vec<u8>> {
    if sealed.len() < NONCE_LEN {
        return None;
    }
    let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
    let mut buffer = ciphertext.to_vec();
    let plain = key
        .open_in_place(nonce, Aad::from(name.as_bytes()), &mut buffer)
        .ok()?;
    Some(plain.to_vec())
}

fn seal_record(id: &str, name: &str, session: &Session, upkeep: &Upkeep) -> Vec<u8> {
    let record = Record {
        identity: session.identity.clone(),
        provider_sid: session.provider_sid.clone(),
        created_at: session.created_at,
        tokens: upkeep.tokens.clone(),
        validated_at: upkeep.validated_at,
    };
    let plain = serde_json::to_vec(&record).expect("a session serialises");
    seal(&sealing_key("session", id), name, &plain)
}

fn open_record(id: &str, name: &str, sealed: &[u8]) -> Option<Record> {
    let plain = open(&sealing_key("session", id), name, sealed)?;
    serde_json::from_slice(&plain).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sentinel_store(local_cache_ttl: Duration) -> SharedStore {
        let settings = RedisSettings {
            url: Url::parse("redis://sessions/0").unwrap(),
            ca_file: None,
            key_prefix: "ssogate:".into(),
            timeout: Duration::from_millis(100),
            local_cache_ttl,
            sentinel: Some(SentinelSettings {
                addresses: vec![("127.0.0.1".into(), 1)],
                master_name: "sessions".into(),
                password: None,
            }),
            cluster_nodes: None,
        };
        let local = Cache::builder().build();
        let lifetime = Duration::from_secs(3600);
        SharedStore::new(&settings, lifetime, lifetime, local, GroupLists::new()).unwrap()
    }

    #[test]
    fn with_sentinel_ready_holds_through_an_outage_only_for_the_local_cache_ttl() {
        let store = sentinel_store(Duration::from_millis(200));
        assert!(
            store.not_ready().is_some(),
            "not ready before Redis ever answered"
        );
        store.reachable.store(true, Ordering::Release);
        assert_eq!(store.not_ready(), None);
        store.lost("connection closed");
        assert_eq!(store.not_ready(), None, "a failover may be under way");
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(store.not_ready().as_deref(), Some("connection closed"));
    }

    #[test]
    fn cluster_nodes_lines_give_addresses_roles_and_slots() {
        let answer = "07c3 127.0.0.1:30004@31004,node-4.example slave e7d1 0 1426238317239 4 connected\n\
             67ed 127.0.0.1:30002@31002 master - 0 1426238316232 2 connected 5461-10922\n\
             292f 127.0.0.1:30003@31003 master,fail - 1426238316232 0 3 disconnected 10923-16383\n\
             e7d1 :0@0 myself,master,noaddr - 0 0 1 connected\n";
        let nodes = ClusterNode::parse_all(answer);
        assert_eq!(
            nodes,
            [
                ClusterNode {
                    address: Some(("127.0.0.1", 30004)),
                    master: false,
                    failing: false,
                    serves_slots: false
                },
                ClusterNode {
                    address: Some(("127.0.0.1", 30002)),
                    master: true,
                    failing: false,
                    serves_slots: true
                },
                ClusterNode {
                    address: Some(("127.0.0.1", 30003)),
                    master: true,
                    failing: true,
                    serves_slots: true
                },
                ClusterNode {
                    address: None,
                    master: true,
                    failing: false,
                    serves_slots: false
                },
            ]
        );
    }

    #[test]
    fn sealed_values_open_only_with_their_secret_and_name() {
        let key = sealing_key("session", "id-1");
        let sealed = seal(&key, "p:s:1", b"hello");
        assert_eq!(open(&key, "p:s:1", &sealed).as_deref(), Some(&b"hello"[..]));
        assert_eq!(
            open(&sealing_key("session", "id-2"), "p:s:1", &sealed),
            None
        );
        assert_eq!(open(&key, "p:s:2", &sealed), None, "moved to another key");
        let mut flipped = sealed.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(open(&key, "p:s:1", &flipped), None, "corrupted");
        assert_eq!(open(&key, "p:s:1", b"short"), None);
        assert!(!sealed.windows(5).any(|w| w == b"hello"));
    }
}
