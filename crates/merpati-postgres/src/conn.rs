//! One connection to the server with its prepared statements: each statement's text is
//! prepared once per connection and kept, as SQLite's statement cache does.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use merpati_domain::StoreError;
use merpati_keyring::Sealer;

use postgres::types::ToSql;
use postgres::{Client, NoTls, Row, Statement};

use crate::error::DbResult;

pub(crate) type Param<'a> = &'a (dyn ToSql + Sync);

/// What every connection of a store is made with.
#[derive(Clone)]
pub(crate) struct Server {
    pub(crate) url: String,
    pub(crate) sealer: Arc<Sealer>,
    /// How long the server waits, inside a transaction, for the connection's next
    /// statement before it ends the session: a node frozen half-way through a transaction
    /// (a paused process or machine) holds its locks no longer than its lease.
    pub(crate) idle_in_transaction: Duration,
}

impl Server {
    /// A server as tests and `migrate` use it: secrets sealed with a key of its own.
    pub(crate) fn plain(url: &str) -> Server {
        Server {
            url: url.to_owned(),
            sealer: Arc::new(Sealer::ephemeral()),
            idle_in_transaction: crate::Options::default().idle_in_transaction,
        }
    }
}

pub(crate) struct Conn {
    client: Client,
    statements: HashMap<String, Statement>,
    sealer: Arc<Sealer>,
}

impl Conn {
    pub(crate) fn connect(server: &Server) -> Result<Conn, postgres::Error> {
        let mut client = Client::connect(&server.url, NoTls)?;
        // A write that waits this long for a row or table another holds gives up, and its
        // caller is told to come back (as SQLite's busy timeout does). No JIT: a prepared
        // statement's generic plan can be estimated at millions of rows (an UPDATE joined to
        // a CTE) and then compiled at every run, 570 ms of a core for a claim that takes 3.
        client.batch_execute(&format!(
            "SET lock_timeout = '5s'; SET jit = off; \
             SET idle_in_transaction_session_timeout = '{}ms'",
            server.idle_in_transaction.as_millis().max(1)
        ))?;
        Ok(Conn {
            client,
            statements: HashMap::new(),
            sealer: server.sealer.clone(),
        })
    }

    /// Seals a secret for its column and owner (`context`).
    pub(crate) fn seal(&self, context: &str, plain: &str) -> String {
        self.sealer.seal(context, plain)
    }

    /// Opens a sealed secret; a value that does not open is the store's fault, named by
    /// its context.
    pub(crate) fn open(&self, context: &str, sealed: &str) -> DbResult<String> {
        self.sealer
            .open(context, sealed)
            .map_err(|e| StoreError::Internal(format!("{context}: {e}")).into())
    }

    fn statement(&mut self, sql: &str) -> DbResult<Statement> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(sql)?;
        self.statements.insert(sql.to_owned(), s.clone());
        Ok(s)
    }

    pub(crate) fn query(&mut self, sql: &str, params: &[Param<'_>]) -> DbResult<Vec<Row>> {
        let s = self.statement(sql)?;
        Ok(self.client.query(&s, params)?)
    }

    pub(crate) fn query_opt(&mut self, sql: &str, params: &[Param<'_>]) -> DbResult<Option<Row>> {
        let s = self.statement(sql)?;
        Ok(self.client.query_opt(&s, params)?)
    }

    pub(crate) fn query_one(&mut self, sql: &str, params: &[Param<'_>]) -> DbResult<Row> {
        let s = self.statement(sql)?;
        Ok(self.client.query_one(&s, params)?)
    }

    /// Rows changed.
    pub(crate) fn execute(&mut self, sql: &str, params: &[Param<'_>]) -> DbResult<u64> {
        let s = self.statement(sql)?;
        Ok(self.client.execute(&s, params)?)
    }

    /// Statements without parameters, in one round trip (not prepared).
    pub(crate) fn batch(&mut self, sql: &str) -> DbResult<()> {
        Ok(self.client.batch_execute(sql)?)
    }

    /// Runs `f` in a transaction of its own that waits at most `lock_wait` (as PostgreSQL
    /// writes it: "200ms") for a lock; commits what it did, or rolls it back on an error.
    pub(crate) fn in_transaction<T>(
        &mut self,
        lock_wait: &str,
        f: impl FnOnce(&mut Conn) -> DbResult<T>,
    ) -> DbResult<T> {
        self.batch(&format!("BEGIN; SET LOCAL lock_timeout = '{lock_wait}'"))?;
        match f(self) {
            Ok(value) => {
                self.batch("COMMIT")?;
                Ok(value)
            }
            Err(e) => {
                let _ = self.batch("ROLLBACK");
                Err(e)
            }
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.client.is_closed()
    }
}

/// How many times any connection of a store found the server gone (or could not reach
/// it): a connection made before the last of those has been closed by the server.
pub(crate) type Outages = Arc<std::sync::atomic::AtomicU64>;

/// A thread's connection, made when first needed and made again when the server dropped
/// it, or when another connection of the store found the server gone since it was made
/// (so that a request is not the one to find out).
pub(crate) struct KeptConn {
    conn: Option<Conn>,
    made_after: u64,
    outages: Outages,
}

impl KeptConn {
    pub(crate) fn new(conn: Option<Conn>, outages: Outages) -> KeptConn {
        let made_after = outages.load(std::sync::atomic::Ordering::Acquire);
        KeptConn {
            conn,
            made_after,
            outages,
        }
    }

    /// The connection, fresh.
    pub(crate) fn get(&mut self, server: &Server) -> Result<&mut Conn, postgres::Error> {
        let seen = self.outages.load(std::sync::atomic::Ordering::Acquire);
        if self.conn.as_ref().is_none_or(Conn::is_closed) || self.made_after < seen {
            self.conn = None;
            self.made_after = seen;
            match Conn::connect(server) {
                Ok(c) => self.conn = Some(c),
                Err(e) => {
                    self.saw_outage();
                    return Err(e);
                }
            }
        }
        Ok(self.conn.as_mut().expect("connected"))
    }

    /// After a use: a connection the server closed tells every other one.
    pub(crate) fn used(&self) {
        if self.conn.as_ref().is_some_and(Conn::is_closed) {
            self.saw_outage();
        }
    }

    fn saw_outage(&self) {
        self.outages
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every connection of the store gives up on a lock after a while, never compiles a
    /// plan, and is ended when it leaves a transaction idle for long: the server's
    /// defaults would do none of these.
    #[test]
    fn a_connection_waits_for_locks_a_while_and_compiles_no_plan() {
        let url = crate::scratch::shared().empty_database().unwrap();
        let mut conn = Conn::connect(&Server::plain(&url)).unwrap();
        let show = |conn: &mut Conn, what: &str| -> String {
            conn.query_one(&format!("SHOW {what}"), &[]).unwrap().get(0)
        };
        assert_eq!(show(&mut conn, "jit"), "off");
        assert_eq!(show(&mut conn, "lock_timeout"), "5s");
        assert_eq!(show(&mut conn, "idle_in_transaction_session_timeout"), "5s");
    }

    /// A connection left idle inside its transaction, as a node frozen half-way through
    /// one leaves it, is ended by the server: what it had locked is free again for the
    /// others, and nothing it wrote stays.
    #[test]
    fn a_transaction_left_idle_gives_up_its_locks() {
        let url = crate::scratch::shared().empty_database().unwrap();
        let frozen_node = Server {
            idle_in_transaction: Duration::from_millis(300),
            ..Server::plain(&url)
        };
        let mut frozen = Conn::connect(&frozen_node).unwrap();
        frozen
            .batch("CREATE TABLE held (id INT PRIMARY KEY, n INT); INSERT INTO held VALUES (1, 0)")
            .unwrap();
        frozen
            .batch("BEGIN; UPDATE held SET n = 1 WHERE id = 1")
            .unwrap();
        let mut other = Conn::connect(&Server::plain(&url)).unwrap();
        // Waits for the row (at most its lock_timeout, 5 s) until the server ends the
        // frozen session.
        let changed = other.execute("UPDATE held SET n = 2 WHERE id = 1", &[]);
        assert_eq!(changed.unwrap(), 1);
        assert!(
            frozen.batch("COMMIT").is_err(),
            "the frozen session was ended"
        );
        assert!(frozen.is_closed());
        let n: i32 = other
            .query_one("SELECT n FROM held WHERE id = 1", &[])
            .unwrap()
            .get(0);
        assert_eq!(n, 2);
    }
}
