//! A Redis connection that is either one server or a cluster.

use redis::{
    Cmd, Pipeline, RedisFuture, Value,
    aio::{ConnectionLike, ConnectionManager},
    cluster_async::ClusterConnection,
};

use crate::Result;

/// A cheap-to-clone Redis connection: one server through a reconnecting
/// [`ConnectionManager`], or a Redis Cluster. Both pipeline requests over one socket per
/// node.
#[derive(Clone)]
pub struct RedisConnection {
    inner: Inner,
}

#[derive(Clone)]
enum Inner {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.inner {
            Inner::Single(_) => "RedisConnection::Single",
            Inner::Cluster(_) => "RedisConnection::Cluster",
        })
    }
}

impl RedisConnection {
    /// Connects to one server (`redis://host:port/db`), reconnecting by itself after a drop.
    /// Connecting times out after 5 s and a reply after 10 s, so a silent network is an
    /// error within seconds for readers too (a timed-out batch may still have been applied:
    /// the runner resumes from the stored checkpoint, so it is never applied twice). See
    /// [`RedisConnection::single_with_timeouts`] to choose them.
    ///
    /// # Errors
    /// [`Error::Redis`](crate::Error::Redis) when the url is invalid or the server is down.
    pub async fn single(url: &str) -> Result<Self> {
        Self::single_with_timeouts(
            url,
            std::time::Duration::from_secs(5),
            std::time::Duration::from_secs(10),
        )
        .await
    }

    /// [`RedisConnection::single`] with its bounds: how long connecting may take, and how long
    /// a reply.
    ///
    /// # Errors
    /// [`Error::Redis`](crate::Error::Redis) when the url is invalid or the server is down.
    pub async fn single_with_timeouts(
        url: &str,
        connect: std::time::Duration,
        response: std::time::Duration,
    ) -> Result<Self> {
        let client = redis::Client::open(url)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(connect))
            .set_response_timeout(Some(response))
            .set_number_of_retries(2)
            .set_max_delay(std::time::Duration::from_secs(1));
        let manager = ConnectionManager::new_with_config(client, config).await?;
        Ok(Self {
            inner: Inner::Single(manager),
        })
    }

    /// Connects to a Redis Cluster through any of its nodes; connecting times out after 5 s
    /// and a reply after 10 s, as for one server.
    ///
    /// # Errors
    /// [`Error::Redis`](crate::Error::Redis) when no node answers.
    pub async fn cluster<I, T>(nodes: I) -> Result<Self>
    where
        I: IntoIterator<Item = T>,
        T: redis::IntoConnectionInfo,
    {
        let client = redis::cluster::ClusterClientBuilder::new(nodes)
            .connection_timeout(std::time::Duration::from_secs(5))
            .response_timeout(std::time::Duration::from_secs(10))
            .build()?;
        let connection = client.get_async_connection().await?;
        Ok(Self {
            inner: Inner::Cluster(connection),
        })
    }

    /// Wraps an existing connection manager.
    pub fn from_manager(manager: ConnectionManager) -> Self {
        Self {
            inner: Inner::Single(manager),
        }
    }

    /// Wraps an existing cluster connection.
    pub fn from_cluster(connection: ClusterConnection) -> Self {
        Self {
            inner: Inner::Cluster(connection),
        }
    }
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match &mut self.inner {
            Inner::Single(c) => c.req_packed_command(cmd),
            Inner::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match &mut self.inner {
            Inner::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Inner::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match &self.inner {
            Inner::Single(c) => c.get_db(),
            Inner::Cluster(c) => c.get_db(),
        }
    }
}
