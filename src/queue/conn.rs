//! One Redis server or a Redis Cluster, behind one connection type.
//!
//! `REDIS_URL` names one server (`redis://host:6379`) or the nodes of a cluster, separated by
//! commas (`redis://10.0.0.1:7000,redis://10.0.0.2:7000`). Every key of a queue shares its
//! hash tag, so each script touches one slot and the cluster routes it by its first key.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{Client, Cmd, FromRedisValue, Pipeline, RedisFuture, RedisResult, Value};

use crate::config::SecretUrl;
use crate::error::{Error, Result, bounded};

/// How long a connection attempt may take.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A connection to one server or to a cluster; cheap to clone (multiplexed).
#[derive(Clone)]
pub(crate) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

impl Conn {
    /// Sends `cmd`, a command that names no key (SCAN), to the server holding the slot of
    /// `key`: a cluster would send it to any node, and only one holds a queue's keys.
    pub(crate) async fn query_at<T: FromRedisValue>(&mut self, key: &str, cmd: &Cmd) -> RedisResult<T> {
        match self {
            Conn::Single(c) => cmd.query_async(c).await,
            Conn::Cluster(c) => {
                let node = SingleNodeRoutingInfo::SpecificNode(Route::with_key(key, SlotAddr::Master));
                let value = c.route_command(cmd.clone(), RoutingInfo::SingleNode(node)).await?;
                Ok(redis::from_redis_value(value)?)
            }
        }
    }
}

/// Where Redis is.
#[derive(Clone)]
pub(crate) enum Endpoint {
    Single(Box<Client>),
    Cluster(Vec<String>),
}

impl Endpoint {
    pub(crate) fn open(url: &SecretUrl) -> Result<Endpoint> {
        let nodes: Vec<&str> = url.expose().split(',').map(str::trim).collect();
        if nodes.len() == 1 {
            let client = Client::open(nodes[0])
                .map_err(|e| Error::usage(format!("REDIS_URL {url} is not usable: {e}")))?;
            return Ok(Endpoint::Single(Box::new(client)));
        }
        // validate now, so a bad node list is a usage error rather than a connect failure
        ClusterClient::new(nodes.clone())
            .map_err(|e| Error::usage(format!("REDIS_URL {url} is not a usable cluster: {e}")))?;
        Ok(Endpoint::Cluster(nodes.into_iter().map(String::from).collect()))
    }

    fn cluster(nodes: &[String], response_timeout: Duration) -> Result<ClusterClient> {
        Ok(ClusterClient::builder(nodes.iter().map(String::as_str))
            .connection_timeout(CONNECT_TIMEOUT)
            .response_timeout(response_timeout)
            .retries(3)
            .min_retry_wait(50)
            .max_retry_wait(500)
            .build()?)
    }

    /// The shared, reconnecting connection for scripts and acknowledgements.
    pub(crate) async fn shared(&self, response_timeout: Duration) -> Result<Conn> {
        self.connect(Some(response_timeout)).await
    }

    /// A dedicated connection for one consumer's BLMOVE, so that nothing queues behind it.
    /// It has no response timeout of its own: the wait is bounded by BLMOVE's timeout
    /// argument and by the caller.
    pub(crate) async fn blocking(&self) -> Result<Conn> {
        self.connect(None).await
    }

    async fn connect(&self, response_timeout: Option<Duration>) -> Result<Conn> {
        match self {
            Endpoint::Single(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(response_timeout)
                    .set_number_of_retries(1)
                    .set_min_delay(Duration::from_millis(50))
                    .set_max_delay(Duration::from_millis(500));
                let conn = bounded(
                    "redis (connect)",
                    CONNECT_TIMEOUT * 2,
                    client.get_connection_manager_with_config(config),
                )
                .await?;
                Ok(Conn::Single(conn))
            }
            Endpoint::Cluster(nodes) => {
                // the cluster client wants a response timeout: an hour stands for none
                let client = Self::cluster(nodes, response_timeout.unwrap_or(Duration::from_secs(3600)))?;
                let conn =
                    bounded("redis (connect)", CONNECT_TIMEOUT * 3, client.get_async_connection()).await?;
                Ok(Conn::Cluster(conn))
            }
        }
    }
}
