//! The read pool: a few read-only connections beside the writer, which WAL lets run at the
//! same time. A read may see a commit a few milliseconds before it is durable; nothing is
//! answered, nor handed on, before it is.

use std::sync::Mutex;

use merpati_domain::{StoreError, StoreResult};
use rusqlite::{Connection, OpenFlags};
use tokio::sync::Semaphore;

use crate::error::{closed, DbResult};

pub(crate) struct ReadPool {
    idle: Mutex<Vec<Connection>>,
    available: Semaphore,
}

impl ReadPool {
    pub(crate) fn open(
        path: &std::path::Path,
        connections: usize,
        statement_cache: usize,
        sealer: &std::sync::Arc<merpati_keyring::Sealer>,
    ) -> DbResult<ReadPool> {
        let mut readers = Vec::with_capacity(connections);
        for _ in 0..connections {
            let r = Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )?;
            r.execute_batch("PRAGMA busy_timeout = 5000; PRAGMA query_only = ON;")?;
            r.set_prepared_statement_cache_capacity(statement_cache);
            crate::sealed::register(&r, sealer)?;
            readers.push(r);
        }
        Ok(ReadPool {
            available: Semaphore::new(readers.len()),
            idle: Mutex::new(readers),
        })
    }

    /// Runs `f` on a read connection, off the async threads.
    pub(crate) async fn read<T, F>(self: &std::sync::Arc<Self>, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> DbResult<T> + Send + 'static,
    {
        let pool = self.clone();
        let _permit = pool.available.acquire().await.map_err(|_| closed())?;
        let conn = pool
            .idle
            .lock()
            .expect("reader lock")
            .pop()
            .ok_or_else(closed)?;
        let (conn, result) = tokio::task::spawn_blocking(move || {
            let result = f(&conn);
            (conn, result)
        })
        .await
        .map_err(|e| StoreError::Internal(format!("a read task failed: {e}")))?;
        pool.idle.lock().expect("reader lock").push(conn);
        Ok(result?)
    }

    /// Gives back the pages cached by the readers not busy now; one that is will have
    /// little cached (any commit empties a reader's cache), and is shrunk the next time.
    pub(crate) fn shrink(&self) -> DbResult<()> {
        for reader in self.idle.lock().expect("reader lock").iter() {
            reader.execute_batch("PRAGMA shrink_memory")?;
        }
        Ok(())
    }
}
