//! Reaching the server: a single node, a Cluster or a Sentinel-managed
//! master behind one `ConnectionLike`, plus direct connections to each
//! Cluster master for the commands that must visit every node (`SCAN`).

use std::time::Duration;

use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{
    Client, Cmd, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, Pipeline, RedisFuture,
    TlsCertificates, Value,
};
use tierstack_core::{Error, Operation, Result, paths};

use crate::config::{CONNECT_TIMEOUT, RESPONSE_TIMEOUT, RedisConfig};
use crate::error;

/// A connection to whichever deployment the config names. Cloning is cheap
/// (each variant is a handle on a shared, multiplexed connection).
#[derive(Clone)]
pub(crate) enum Conn {
    /// A single server or a Sentinel-managed master; reconnects by itself.
    Single(ConnectionManager),
    /// A Redis Cluster; routes each command to the node owning its keys.
    Cluster(ClusterConnection),
}

/// Implements `ConnectionLike` for an enum of connections by handing each
/// call to the variant's own connection.
macro_rules! delegate_connection_like {
    ($name:ident: $($variant:ident),+) => {
        impl ConnectionLike for $name {
            fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
                match self {
                    $(Self::$variant(c) => c.req_packed_command(cmd),)+
                }
            }

            fn req_packed_commands<'a>(
                &'a mut self,
                pipeline: &'a Pipeline,
                offset: usize,
                count: usize,
            ) -> RedisFuture<'a, Vec<Value>> {
                match self {
                    $(Self::$variant(c) => c.req_packed_commands(pipeline, offset, count),)+
                }
            }

            fn get_db(&self) -> i64 {
                match self {
                    $(Self::$variant(c) => c.get_db(),)+
                }
            }
        }
    };
}

delegate_connection_like!(Conn: Single, Cluster);

/// Everything needed to (re)connect.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    mode: Mode,
    username: Option<String>,
    password: Option<String>,
    ca: Option<Vec<u8>>,
    connect_timeout: Duration,
    response_timeout: Duration,
    retries: u32,
}

#[derive(Debug, Clone)]
enum Mode {
    Single(ConnectionInfo),
    Cluster(Vec<ConnectionInfo>),
    Sentinel {
        master: String,
        nodes: Vec<ConnectionInfo>,
    },
}

fn config_error(message: String) -> Error {
    Error::config(message).with_operation(Operation::Build)
}

impl Target {
    /// Reads the config: expands `$VAR`s, parses URLs, loads the CA file.
    /// Contacts no server.
    pub(crate) fn from_config(config: &RedisConfig) -> Result<Self> {
        let expand = |what: &str, text: &str| {
            paths::expand_text(text).map_err(|e| config_error(format!("redis {what}: {e}")))
        };
        let username = config
            .username
            .as_deref()
            .map(|u| expand("username", u))
            .transpose()?;
        let password = config
            .password
            .as_deref()
            .map(|p| expand("password", p))
            .transpose()?;
        let info = |url: &str| -> Result<ConnectionInfo> {
            let expanded = expand("url", url)?;
            expanded.as_str().into_connection_info().map_err(|e| {
                // The URL may hold a password: name the host only.
                let shown = expanded.rsplit('@').next().unwrap_or_default().to_owned();
                config_error(format!("invalid Redis URL (…{shown}): {e}"))
            })
        };
        let chosen = usize::from(config.url.is_some())
            + usize::from(!config.cluster.is_empty())
            + usize::from(config.sentinel.is_some());
        if chosen > 1 {
            return Err(config_error(
                "redis: set one of `url`, `cluster` and `sentinel`".to_owned(),
            ));
        }
        let mode = if let Some(sentinel) = &config.sentinel {
            if sentinel.nodes.is_empty() {
                return Err(config_error("redis.sentinel.nodes is empty".to_owned()));
            }
            Mode::Sentinel {
                master: sentinel.master.clone(),
                nodes: sentinel
                    .nodes
                    .iter()
                    .map(|u| info(u))
                    .collect::<Result<_>>()?,
            }
        } else if !config.cluster.is_empty() {
            Mode::Cluster(
                config
                    .cluster
                    .iter()
                    .map(|u| info(u))
                    .collect::<Result<_>>()?,
            )
        } else {
            Mode::Single(info(
                config.url.as_deref().unwrap_or("redis://127.0.0.1:6379"),
            )?)
        };
        let ca = match &config.tls_ca_file {
            Some(file) => {
                let path = paths::expand(file)
                    .map_err(|e| config_error(format!("redis.tls_ca_file: {e}")))?;
                Some(std::fs::read(&path).map_err(|e| {
                    config_error(format!(
                        "cannot read redis.tls_ca_file {}: {e}",
                        path.display()
                    ))
                })?)
            }
            None => None,
        };
        Ok(Self {
            mode,
            username,
            password,
            ca,
            connect_timeout: config.connect_timeout.unwrap_or(CONNECT_TIMEOUT),
            response_timeout: config.response_timeout.unwrap_or(RESPONSE_TIMEOUT),
            retries: config.retries,
        })
    }

    /// `info` with the configured credentials.
    fn with_credentials(&self, info: ConnectionInfo) -> ConnectionInfo {
        let mut settings = info.redis_settings().clone();
        if let Some(user) = &self.username {
            settings = settings.set_username(user);
        }
        if let Some(password) = &self.password {
            settings = settings.set_password(password);
        }
        info.set_redis_settings(settings)
    }

    fn client(&self, info: ConnectionInfo) -> Result<Client> {
        let info = self.with_credentials(info);
        let client = match &self.ca {
            Some(ca) => Client::build_with_tls(
                info,
                TlsCertificates {
                    client_tls: None,
                    root_cert: Some(ca.clone()),
                },
            ),
            None => Client::open(info),
        };
        client.map_err(|e| error::redis(e, Operation::Build))
    }

    fn manager_config(&self) -> ConnectionManagerConfig {
        ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.response_timeout))
            .set_number_of_retries(self.retries as usize)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500))
    }

    /// A connection that may not be established yet: a single server
    /// connects on first use, so a server that is down when the program
    /// starts does not stop it from starting.
    pub(crate) fn lazy(&self) -> Result<Option<Conn>> {
        match &self.mode {
            Mode::Single(info) => {
                let client = self.client(info.clone())?;
                ConnectionManager::new_lazy_with_config(client, self.manager_config())
                    .map(|m| Some(Conn::Single(m)))
                    .map_err(|e| error::redis(e, Operation::Build))
            }
            Mode::Cluster(_) | Mode::Sentinel { .. } => Ok(None),
        }
    }

    /// Connects (Cluster: learns the slot map; Sentinel: asks the sentinels
    /// for the current master).
    pub(crate) async fn connect(&self) -> Result<Conn> {
        let failed = |e| error::redis(e, Operation::Build);
        match &self.mode {
            Mode::Single(info) => {
                let client = self.client(info.clone())?;
                client
                    .get_connection_manager_with_config(self.manager_config())
                    .await
                    .map(Conn::Single)
                    .map_err(failed)
            }
            Mode::Cluster(seeds) => {
                let seeds: Vec<ConnectionInfo> = seeds.clone();
                let mut builder = ClusterClientBuilder::new(seeds)
                    .connection_timeout(self.connect_timeout)
                    .response_timeout(self.response_timeout)
                    .retries(self.retries);
                if let Some(user) = &self.username {
                    builder = builder.username(user);
                }
                if let Some(password) = &self.password {
                    builder = builder.password(password);
                }
                if let Some(ca) = &self.ca {
                    builder = builder.certs(TlsCertificates {
                        client_tls: None,
                        root_cert: Some(ca.clone()),
                    });
                }
                let client = builder.build().map_err(failed)?;
                client
                    .get_async_connection()
                    .await
                    .map(Conn::Cluster)
                    .map_err(failed)
            }
            Mode::Sentinel { master, nodes } => {
                let node_info = SentinelNodeConnectionInfo::default().set_redis_connection_info(
                    self.with_credentials(nodes[0].clone())
                        .redis_settings()
                        .clone(),
                );
                let mut sentinel = SentinelClient::build(
                    nodes.clone(),
                    master.clone(),
                    Some(node_info),
                    SentinelServerType::Master,
                )
                .map_err(failed)?;
                let client = sentinel.async_get_client().await.map_err(failed)?;
                client
                    .get_connection_manager_with_config(self.manager_config())
                    .await
                    .map(Conn::Single)
                    .map_err(failed)
            }
        }
    }

    /// Whether the deployment is a Cluster (keys spread over nodes).
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self.mode, Mode::Cluster(_))
    }

    /// Whether the master may move (Sentinel failover), so a reconnect
    /// must ask again where it is.
    pub(crate) fn may_move(&self) -> bool {
        matches!(self.mode, Mode::Sentinel { .. })
    }

    /// Direct connections to every Cluster master, for `SCAN`; for other
    /// deployments, `conn` itself.
    pub(crate) async fn nodes(&self, conn: &Conn) -> Result<Vec<NodeConn>> {
        let Conn::Cluster(cluster) = conn else {
            return Ok(vec![NodeConn::Shared(conn.clone())]);
        };
        let Mode::Cluster(seeds) = &self.mode else {
            return Ok(vec![NodeConn::Shared(conn.clone())]);
        };
        let mut cluster = cluster.clone();
        let text: String = redis::cmd("CLUSTER")
            .arg("NODES")
            .query_async(&mut cluster)
            .await
            .map_err(|e| error::redis(e, Operation::Scan))?;
        let mut masters = masters(&text);
        // Any node may answer CLUSTER NODES, each in its own order; a scan
        // cursor names a node by its place in this list, so fix the order.
        masters.sort();
        let mut out = Vec::new();
        for (host, port) in masters {
            let addr = match seeds[0].addr() {
                ConnectionAddr::TcpTls {
                    insecure,
                    tls_params,
                    ..
                } => ConnectionAddr::TcpTls {
                    host,
                    port,
                    insecure: *insecure,
                    tls_params: tls_params.clone(),
                },
                _ => ConnectionAddr::Tcp(host, port),
            };
            let client = self.client(seeds[0].clone().set_addr(addr))?;
            let node = client
                .get_multiplexed_async_connection()
                .await
                .map_err(|e| error::redis(e, Operation::Scan))?;
            out.push(NodeConn::Direct(node));
        }
        Ok(out)
    }

    /// The time one command's answer may take.
    pub(crate) fn response_timeout(&self) -> Duration {
        self.response_timeout
    }

    /// How long subscribing may take: [`Target::pubsub_client`] may try
    /// every Cluster seed (or ask a sentinel) before the connection and the
    /// `SUBSCRIBE` answer.
    pub(crate) fn subscribe_timeout(&self) -> Duration {
        let attempts = match &self.mode {
            Mode::Single(_) => 1,
            Mode::Cluster(seeds) => seeds.len(),
            Mode::Sentinel { nodes, .. } => nodes.len(),
        };
        let attempts = u32::try_from(attempts)
            .unwrap_or(u32::MAX)
            .saturating_add(1);
        self.connect_timeout
            .saturating_mul(attempts)
            .saturating_add(self.response_timeout)
    }

    /// A client for pub/sub: the single server, the first reachable Cluster
    /// seed (Cluster pub/sub reaches every node), or the current master.
    pub(crate) async fn pubsub_client(&self) -> Result<Client> {
        match &self.mode {
            Mode::Single(info) => self.client(info.clone()),
            Mode::Cluster(seeds) => {
                let mut last = None;
                for seed in seeds {
                    let client = self.client(seed.clone())?;
                    match client.get_multiplexed_async_connection().await {
                        Ok(_) => return Ok(client),
                        Err(e) => last = Some(error::redis(e, Operation::Build)),
                    }
                }
                Err(last.unwrap_or_else(|| config_error("redis.cluster is empty".to_owned())))
            }
            Mode::Sentinel { master, nodes } => {
                let mut sentinel = SentinelClient::build(
                    nodes.clone(),
                    master.clone(),
                    Some(
                        SentinelNodeConnectionInfo::default().set_redis_connection_info(
                            self.with_credentials(nodes[0].clone())
                                .redis_settings()
                                .clone(),
                        ),
                    ),
                    SentinelServerType::Master,
                )
                .map_err(|e| error::redis(e, Operation::Build))?;
                sentinel
                    .async_get_client()
                    .await
                    .map_err(|e| error::redis(e, Operation::Build))
            }
        }
    }
}

/// A connection that `SCAN` can walk.
#[derive(Clone)]
pub(crate) enum NodeConn {
    /// The tier's own connection (single server, Sentinel master).
    Shared(Conn),
    /// A direct connection to one Cluster master.
    Direct(MultiplexedConnection),
}

delegate_connection_like!(NodeConn: Shared, Direct);

/// The `host:port` of each healthy master in `CLUSTER NODES` output.
fn masters(text: &str) -> Vec<(String, u16)> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let flags = fields.get(2)?;
            if !flags.split(',').any(|f| f == "master") || flags.contains("fail") {
                return None;
            }
            // ip:port@cport[,hostname]
            let addr = fields.get(1)?.split('@').next()?;
            let (host, port) = addr.rsplit_once(':')?;
            Some((host.to_owned(), port.parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masters_are_read_from_cluster_nodes() {
        let text = "\
07c3 127.0.0.1:30004@40004 slave e7d1 0 1426238317239 4 connected
67ed 127.0.0.1:30002@40002 master - 0 1426238316232 2 connected 5461-10922
292f 127.0.0.1:30003@40003 master,fail - 0 1426238318243 3 connected 10923-16383
e7d1 127.0.0.1:30001@40001 myself,master - 0 0 1 connected 0-5460
";
        assert_eq!(
            masters(text),
            [
                ("127.0.0.1".to_owned(), 30002),
                ("127.0.0.1".to_owned(), 30001)
            ]
        );
    }
}
