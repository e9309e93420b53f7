//! The node's connections to the cluster database: at most a set number open, each lent to one
//! caller at a time and taken back when the caller is done, so a long transaction (a merge, a
//! retention pass) does not hold up a flush or a lease renewal behind it.

use std::ops::{Deref, DerefMut};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{Semaphore, SemaphorePermit};
use tokio_postgres::{Client, NoTls};
use weir_storage::locks;

use crate::{ClusterError, Result};

/// Default of the connections a node keeps to the cluster database.
pub const DB_CONNECTIONS_DEFAULT: usize = 8;
/// Most connections a node may be set to keep to the cluster database.
pub const DB_CONNECTIONS_MAX: usize = 64;

/// Connections to one database, opened on demand up to a bound.
pub(crate) struct Pool {
    url: String,
    /// Connections open and not lent; a closed one is dropped when it is next picked.
    idle: Mutex<Vec<Client>>,
    /// One permit per connection that may be lent at once.
    permits: Semaphore,
    size: usize,
    /// Callers that found every connection lent and waited for one.
    waits: AtomicU64,
}

/// What the pool holds and has done, for `/metrics`.
#[derive(Debug, Clone, Copy)]
pub struct PoolStats {
    /// Connections lent now.
    pub lent: u64,
    /// The bound: connections that may be lent at once.
    pub lent_max: u64,
    /// Callers that waited for a connection.
    pub waits: u64,
}

/// A connection lent by the pool; it goes back when dropped, unless it was closed.
pub(crate) struct Pooled<'a> {
    /// Some until the connection goes back in `drop`.
    client: Option<Client>,
    pool: &'a Pool,
    _permit: SemaphorePermit<'a>,
}

impl Pool {
    /// A pool of at most `size` connections to `url`, with `first` (already open) idle in it.
    pub(crate) fn new(url: &str, size: usize, first: Client) -> Result<Pool> {
        if !(1..=DB_CONNECTIONS_MAX).contains(&size) {
            return Err(ClusterError::Config(format!(
                "db_connections {size} is not within 1 to {DB_CONNECTIONS_MAX}"
            )));
        }
        Ok(Pool {
            url: url.to_string(),
            idle: Mutex::new(vec![first]),
            permits: Semaphore::new(size),
            size,
            waits: AtomicU64::new(0),
        })
    }

    /// A connection, once one is free: an idle one still open, or a new one. A failure to
    /// connect is retriable.
    pub(crate) async fn get(&self) -> Result<Pooled<'_>> {
        let permit = match self.permits.try_acquire() {
            Ok(permit) => permit,
            Err(_) => {
                self.waits.fetch_add(1, Ordering::Relaxed);
                self.permits
                    .acquire()
                    .await
                    .map_err(|_| ClusterError::Config("the connection pool is closed".into()))?
            }
        };
        let reused = {
            let mut idle = locks::lock(&self.idle);
            // Connections the database or the network closed are dropped here.
            idle.retain(|c| !c.is_closed());
            idle.pop()
        };
        let client = match reused {
            Some(client) => client,
            None => connect(&self.url).await?,
        };
        Ok(Pooled {
            client: Some(client),
            pool: self,
            _permit: permit,
        })
    }

    pub(crate) fn stats(&self) -> PoolStats {
        PoolStats {
            lent: (self.size - self.permits.available_permits()) as u64,
            lent_max: self.size as u64,
            waits: self.waits.load(Ordering::Relaxed),
        }
    }
}

impl Deref for Pooled<'_> {
    type Target = Client;

    fn deref(&self) -> &Client {
        self.client
            .as_ref()
            .expect("a lent connection until dropped")
    }
}

impl DerefMut for Pooled<'_> {
    fn deref_mut(&mut self) -> &mut Client {
        self.client
            .as_mut()
            .expect("a lent connection until dropped")
    }
}

impl Drop for Pooled<'_> {
    fn drop(&mut self) {
        if let Some(client) = self.client.take().filter(|c| !c.is_closed()) {
            locks::lock(&self.pool.idle).push(client);
        }
    }
}

/// A connection to the cluster database, driven on a task of its own.
pub(crate) async fn connect(db_url: &str) -> Result<Client> {
    let (db, connection) = tokio_postgres::connect(db_url, NoTls).await?;
    tokio::spawn(connection);
    Ok(db)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use weir_tests::postgres::Postgres;

    use super::{DB_CONNECTIONS_MAX, Pool, connect};

    /// The pid of the server process behind a connection.
    async fn backend(client: &impl tokio_postgres::GenericClient) -> i32 {
        let row = client.query_one("SELECT pg_backend_pid()", &[]).await;
        row.expect("a pid").get(0)
    }

    #[tokio::test]
    async fn connections_are_lent_up_to_the_bound_and_a_closed_one_is_opened_again() {
        let Some(pg) = Postgres::start() else {
            return;
        };
        let url = pg.url();
        for size in [0, DB_CONNECTIONS_MAX + 1] {
            let first = connect(&url).await.expect("a connection");
            let refused = Pool::new(&url, size, first).err().expect("refused");
            assert!(
                refused.to_string().contains("not within 1 to 64"),
                "{refused}"
            );
        }
        let pool = Pool::new(&url, 2, connect(&url).await.expect("a connection")).unwrap();

        // Two callers hold a connection each, one of them inside a transaction; the other's
        // queries go on meanwhile.
        let mut a = pool.get().await.unwrap();
        let tx = a.transaction().await.unwrap();
        tx.execute("CREATE TEMP TABLE held (x int)", &[])
            .await
            .unwrap();
        let b = pool.get().await.unwrap();
        let (pid_a, pid_b) = (backend(&tx).await, backend(&*b).await);
        assert_ne!(pid_a, pid_b, "two connections");
        assert_eq!((pool.stats().lent, pool.stats().lent_max), (2, 2));
        assert_eq!(pool.stats().waits, 0);

        // A third caller waits until one is given back, and gets that one.
        let third = tokio::time::timeout(Duration::from_millis(300), pool.get()).await;
        assert!(third.is_err(), "no third connection past the bound");
        assert_eq!(pool.stats().waits, 1);
        drop(tx);
        drop(a);
        let c = pool.get().await.unwrap();
        assert_eq!(
            backend(&*c).await,
            pid_a,
            "the connection given back is lent again"
        );
        assert_eq!(pool.stats().lent, 2);

        // A connection the server closed is not lent again: callers get a new one.
        let closed = b
            .query_one("SELECT pg_terminate_backend($1)", &[&pid_a])
            .await;
        assert!(closed.unwrap().get::<_, bool>(0));
        for _ in 0..100 {
            if c.is_closed() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(c.is_closed(), "the terminated connection is seen closed");
        drop(b);
        drop(c);
        let (d, e) = (pool.get().await.unwrap(), pool.get().await.unwrap());
        let pids = [backend(&*d).await, backend(&*e).await];
        assert!(pids.contains(&pid_b) && !pids.contains(&pid_a), "{pids:?}");
        drop((d, e));
        assert_eq!(pool.stats().lent, 0);
    }
}
