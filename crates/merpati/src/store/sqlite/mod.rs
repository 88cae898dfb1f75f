//! The SQLite backend.
//!
//! One writer thread owns the only write connection and commits in groups: it takes every
//! write waiting in its queue, runs each inside one transaction and commits once. One
//! failing write never undoes another: each runs in a savepoint of its own, except the hot
//! ones that check everything before they change anything and so need none. A syncer thread then makes the
//! log durable (one fsync for every group committed meanwhile) and only then answers each
//! caller, while the writer goes on with the next group: the writer waits for the disk
//! only when it checkpoints (copies the log back into the database), which it does itself
//! so that the log can start over rather than grow while commits never stop; a checkpointer
//! thread copies most of the log back beside it first (see `checkpoint`). Reads go to
//! a small pool of read-only connections, which WAL lets run beside the writer; they may
//! see a commit a few milliseconds before it is durable, but nothing is answered, nor
//! handed on, before.

use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OpenFlags};
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::{Store, StoreError, StoreResult};
use crate::config::DatabaseConfig;

mod accounts;
mod checkpoint;
mod delivery;
mod devices;
mod endpoint_cache;
mod endpoints;
mod events;
mod fanout;
mod ingest;
mod jobs;
mod presence;
mod wal_writes;

/// Versioned migrations, applied in order, each in its own transaction.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "init",
        include_str!("../migrations/sqlite/0001_init.sql"),
    ),
    (
        2,
        "presence",
        include_str!("../migrations/sqlite/0002_presence.sql"),
    ),
    (
        3,
        "endpoint_health",
        include_str!("../migrations/sqlite/0003_endpoint_health.sql"),
    ),
    (
        4,
        "retention",
        include_str!("../migrations/sqlite/0004_retention.sql"),
    ),
    (
        5,
        "jobs",
        include_str!("../migrations/sqlite/0005_jobs.sql"),
    ),
    (
        6,
        "lanes",
        include_str!("../migrations/sqlite/0006_lanes.sql"),
    ),
    (
        7,
        "child_indexes",
        include_str!("../migrations/sqlite/0007_child_indexes.sql"),
    ),
    (
        8,
        "endpoint_status_indexes",
        include_str!("../migrations/sqlite/0008_endpoint_status_indexes.sql"),
    ),
    (
        9,
        "inbound_on_events",
        include_str!("../migrations/sqlite/0009_inbound_on_events.sql"),
    ),
    (
        10,
        "background_deletion",
        include_str!("../migrations/sqlite/0010_background_deletion.sql"),
    ),
];

/// At most this many writes share one commit.
const MAX_GROUP: usize = 512;
const WRITE_QUEUE: usize = 8192;
const STATEMENT_CACHE: usize = 128;
/// Committed groups waiting for the syncer; beyond this the writer waits for the disk.
const SYNC_QUEUE: usize = 64;

pub struct SqliteStore {
    writer: Mutex<Option<mpsc::Sender<Box<dyn WriteJob>>>>,
    /// The writer, then the syncer and the checkpointer, which end after it.
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    readers: Arc<ReadPool>,
}

struct ReadPool {
    idle: Mutex<Vec<Connection>>,
    available: Semaphore,
}

impl SqliteStore {
    pub async fn open(path: &Path, config: &DatabaseConfig) -> StoreResult<SqliteStore> {
        let path = path.to_owned();
        let config = config.clone();
        tokio::task::spawn_blocking(move || Self::open_blocking(&path, &config))
            .await
            .map_err(|e| StoreError::Corrupt(format!("open task failed: {e}")))?
    }

    fn open_blocking(path: &Path, config: &DatabaseConfig) -> StoreResult<SqliteStore> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Corrupt(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        // The writer's connection writes the log through a VFS that gathers each commit's
        // frames into one write (see `wal_writes`); the readers use the default VFS.
        let vfs = wal_writes::register().map_err(StoreError::Corrupt)?;
        let mut conn = Connection::open_with_flags_and_vfs(path, OpenFlags::default(), vfs)?;
        // Commits write the log without syncing it; the syncer thread syncs it (with
        // `synchronous = full`), as SQLite's FULL would at every commit, but once for many.
        // An 8 MiB page cache keeps the indexes every event touches in memory.
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             PRAGMA foreign_keys = ON;
             PRAGMA busy_timeout = 5000;
             PRAGMA temp_store = MEMORY;
             PRAGMA cache_size = -8192;",
        )?;
        migrate(&mut conn)?;
        endpoint_cache::watch(&conn);
        // From here on the writer checkpoints at `checkpoint::WRITER_CHECKPOINT` frames,
        // after a background thread copied most of the log back (see `checkpoint`).
        conn.wal_hook(Some(checkpoint::after_commit));
        let checkpointer = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        checkpointer.execute_batch("PRAGMA synchronous = NORMAL;")?;
        let database = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| StoreError::Corrupt(format!("cannot open the database file: {e}")))?;
        // Open while the store is: SQLite removes the log only when its last connection
        // closes, so this stays the file the commits write to.
        let log = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(wal_path(path))
            .map_err(|e| StoreError::Corrupt(format!("cannot open the write-ahead log: {e}")))?;
        // The default (16) is fewer than the statements the writer uses, so it would
        // prepare most of them again on every use.
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);

        let mut readers = Vec::with_capacity(config.read_connections);
        for _ in 0..config.read_connections {
            let r = Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )?;
            r.execute_batch("PRAGMA busy_timeout = 5000; PRAGMA query_only = ON;")?;
            r.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
            readers.push(r);
        }

        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        let (to_sync, committed) = std::sync::mpsc::sync_channel(SYNC_QUEUE);
        let (background, checkpoint_asked) = checkpoint::channel();
        let sync = config.synchronous_full;
        let thread_error = |e| StoreError::Corrupt(format!("cannot start a store thread: {e}"));
        let writer = std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || writer_loop(conn, rx, to_sync, background))
            .map_err(thread_error)?;
        let syncer = std::thread::Builder::new()
            .name("sqlite-sync".into())
            .spawn(move || sync_loop(log, sync, committed))
            .map_err(thread_error)?;
        let checkpointer = std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || {
                checkpoint::run(checkpointer, database, checkpoint_asked);
            })
            .map_err(thread_error)?;
        Ok(SqliteStore {
            writer: Mutex::new(Some(tx)),
            threads: Mutex::new(vec![writer, syncer, checkpointer]),
            readers: Arc::new(ReadPool {
                available: Semaphore::new(readers.len()),
                idle: Mutex::new(readers),
            }),
        })
    }

    /// Runs `f` in the next group commit; answers once that commit is durable.
    pub(crate) async fn write<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        self.write_then(f, |t| t).await
    }

    /// As `write`, and `committed` turns what `f` returned into the answer on the writer
    /// thread as soon as the commit is durable, whether or not the caller still waits.
    pub(crate) async fn write_then<R, T, F>(&self, f: F, committed: fn(R) -> T) -> StoreResult<T>
    where
        R: Send + 'static,
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<R> + Send + 'static,
    {
        self.submit(f, committed, Guard::Savepoint).await
    }

    /// As `write`, for a write that can fail only before it changes anything (it reads and
    /// checks first), so that it needs no savepoint of its own: opening one costs a copy
    /// of every page the write then touches. Should it fail after changing rows after all
    /// (the disk, say), the whole group is undone and every write in it fails.
    pub(crate) async fn write_checked<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        self.submit(f, |t| t, Guard::ChecksFirst).await
    }

    /// As `write_then`, for a write that can fail only before it changes anything.
    pub(crate) async fn write_checked_then<R, T, F>(
        &self,
        f: F,
        committed: fn(R) -> T,
    ) -> StoreResult<T>
    where
        R: Send + 'static,
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<R> + Send + 'static,
    {
        self.submit(f, committed, Guard::ChecksFirst).await
    }

    async fn submit<R, T, F>(&self, f: F, committed: fn(R) -> T, guard: Guard) -> StoreResult<T>
    where
        R: Send + 'static,
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<R> + Send + 'static,
    {
        let sender = self
            .writer
            .lock()
            .expect("writer lock")
            .clone()
            .ok_or(StoreError::Closed)?;
        let (reply, answer) = oneshot::channel();
        let job = Box::new(Job {
            f: Some(f),
            guard,
            result: None,
            committed,
            reply,
        });
        sender.send(job).await.map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Runs `f` on a read connection, off the async threads.
    pub(crate) async fn read<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        let pool = self.readers.clone();
        let _permit = pool
            .available
            .acquire()
            .await
            .map_err(|_| StoreError::Closed)?;
        let conn = pool
            .idle
            .lock()
            .expect("reader lock")
            .pop()
            .ok_or(StoreError::Closed)?;
        let (conn, result) = tokio::task::spawn_blocking(move || {
            let result = f(&conn);
            (conn, result)
        })
        .await
        .map_err(|e| StoreError::Corrupt(format!("read task failed: {e}")))?;
        pool.idle.lock().expect("reader lock").push(conn);
        result
    }
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> StoreResult<()> {
        self.read(|c| Ok(c.query_row("SELECT 1", [], |_| Ok(()))?))
            .await
    }

    async fn shrink_caches(&self) -> StoreResult<()> {
        // Clean pages only: a page a write in the same group has changed stays.
        self.write_checked(|c| Ok(c.execute_batch("PRAGMA shrink_memory")?))
            .await?;
        // The readers not busy now; one that is will have little cached (any commit
        // empties a reader's cache), and is shrunk the next time.
        for reader in self.readers.idle.lock().expect("reader lock").iter() {
            reader.execute_batch("PRAGMA shrink_memory")?;
        }
        Ok(())
    }

    async fn close(&self) {
        // Dropping the last sender lets the writer finish its queue and exit, and the
        // syncer after it.
        self.writer.lock().expect("writer lock").take();
        let threads = std::mem::take(&mut *self.threads.lock().expect("threads lock"));
        let _ = tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
        })
        .await;
    }
}

/// How a write that fails is undone without undoing the others in its group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Guard {
    /// Its own savepoint, rolled back on failure.
    Savepoint,
    /// None needed: it fails only before changing anything.
    ChecksFirst,
}

trait WriteJob: Send {
    fn guard(&self) -> Guard;
    /// Runs inside the open transaction; true when the work should be kept.
    fn run(&mut self, conn: &Connection) -> bool;
    /// Answers the caller once the commit's fate is known.
    fn finish(self: Box<Self>, commit: Result<(), String>);
}

struct Job<F, R, T> {
    f: Option<F>,
    guard: Guard,
    result: Option<StoreResult<R>>,
    committed: fn(R) -> T,
    reply: oneshot::Sender<StoreResult<T>>,
}

impl<F, R, T> WriteJob for Job<F, R, T>
where
    R: Send + 'static,
    T: Send + 'static,
    F: FnOnce(&Connection) -> StoreResult<R> + Send + 'static,
{
    fn guard(&self) -> Guard {
        self.guard
    }

    fn run(&mut self, conn: &Connection) -> bool {
        let Some(f) = self.f.take() else {
            return false;
        };
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| f(conn)))
            .unwrap_or_else(|_| Err(StoreError::Corrupt("a write panicked".into())));
        let keep = result.is_ok();
        self.result = Some(result);
        keep
    }

    fn finish(self: Box<Self>, commit: Result<(), String>) {
        let answer = match commit {
            Ok(()) => self
                .result
                .unwrap_or_else(|| Err(StoreError::Corrupt("write did not run".into())))
                .map(self.committed),
            Err(message) => Err(StoreError::Corrupt(format!("commit failed: {message}"))),
        };
        let _ = self.reply.send(answer);
    }
}

type Group = Vec<Box<dyn WriteJob>>;

fn writer_loop(
    conn: Connection,
    mut queue: mpsc::Receiver<Box<dyn WriteJob>>,
    to_sync: std::sync::mpsc::SyncSender<Group>,
    background: checkpoint::Background,
) {
    checkpoint::install(background);
    while let Some(first) = queue.blocking_recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match queue.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let started = std::time::Instant::now();
        let committed = run_group(&conn, &mut group);
        checkpoint::writer_was_busy(started.elapsed());
        match committed {
            Ok(()) => {
                if let Err(unsent) = to_sync.send(group) {
                    for job in unsent.0 {
                        job.finish(Err("the store is closing".into()));
                    }
                }
            }
            Err(message) => {
                tracing::error!(%message, jobs = group.len(), "group commit failed");
                for job in group {
                    job.finish(Err(message.clone()));
                }
            }
        }
    }
    checkpoint::uninstall();
}

/// A database in memory with the whole schema and one account, `a`, for the tests of the
/// statements that store events.
#[cfg(test)]
fn schema_with_account() -> Connection {
    let mut c = Connection::open_in_memory().unwrap();
    migrate(&mut c).unwrap();
    c.execute(
        "INSERT INTO accounts (id, name, created_at, updated_at) VALUES ('a', 'a', 0, 0)",
        [],
    )
    .unwrap();
    c
}

/// The first column of every row `sql` returns, for tests that look at what is stored.
#[cfg(test)]
fn column<T: rusqlite::types::FromSql>(c: &Connection, sql: &str) -> Vec<T> {
    c.prepare(sql)
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// The single number `sql` gives (a count, say).
#[cfg(test)]
fn count(c: &Connection, sql: &str) -> i64 {
    c.query_row(sql, [], |r| r.get(0)).unwrap()
}

/// An endpoint `id` of `account` with the least every column needs, and a secret.
#[cfg(test)]
fn insert_endpoint(c: &Connection, account: &str, id: &str) {
    c.execute(
        "INSERT INTO endpoints (account_id, id, url, business_ids, channel_ids, device_ids,
             format, secret_in_body, headers, created_at, updated_at)
         VALUES (?1, ?2, 'https://example.com', '[]', '[]', '[]', 'json', 0, '{}', 0, 0)",
        [account, id],
    )
    .unwrap();
    c.execute(
        "INSERT INTO endpoint_secrets (endpoint_id, secret, created_at) VALUES (?1, 's', 0)",
        [id],
    )
    .unwrap();
}

/// SQLite's own check that the database is whole, for the tests of the log's writes and of
/// checkpoints, which work on connections of their own.
#[cfg(test)]
fn assert_whole(conn: &Connection) {
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
}

/// Makes committed groups durable, as many at a time as have committed, then answers them.
fn sync_loop(log: std::fs::File, sync: bool, committed: std::sync::mpsc::Receiver<Group>) {
    while let Ok(first) = committed.recv() {
        let mut groups = vec![first];
        groups.extend(committed.try_iter());
        let synced = if sync {
            log.sync_data()
                .map_err(|e| format!("cannot sync the write-ahead log: {e}"))
        } else {
            Ok(())
        };
        if let Err(message) = &synced {
            tracing::error!(%message, "commit not durable");
        }
        for job in groups.into_iter().flatten() {
            job.finish(synced.clone());
        }
    }
}

fn wal_path(db: &Path) -> std::path::PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push("-wal");
    name.into()
}

fn run_group(conn: &Connection, group: &mut [Box<dyn WriteJob>]) -> Result<(), String> {
    let exec = |sql: &str| -> Result<(), String> {
        conn.prepare_cached(sql)
            .and_then(|mut s| s.execute([]))
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    exec("BEGIN IMMEDIATE")?;
    for job in group.iter_mut() {
        if job.guard() == Guard::ChecksFirst {
            let before = conn.total_changes();
            let failed = !job.run(conn);
            // SQLite ends the transaction itself on some errors (a full disk, say).
            if failed && (conn.total_changes() != before || conn.is_autocommit()) {
                // It changed rows and then failed: only the whole transaction undoes that.
                forget_cached();
                let _ = exec("ROLLBACK");
                return Err("a write failed after changing rows; its group is undone".into());
            }
            continue;
        }
        let step = exec("SAVEPOINT job").and_then(|()| {
            if job.run(conn) {
                exec("RELEASE job")
            } else {
                // What the job read into the writer's caches may be undone with it.
                forget_cached();
                exec("ROLLBACK TO job").and_then(|()| exec("RELEASE job"))
            }
        });
        if let Err(message) = step {
            forget_cached();
            let _ = exec("ROLLBACK");
            return Err(message);
        }
    }
    exec("COMMIT").inspect_err(|_| {
        forget_cached();
        let _ = exec("ROLLBACK");
    })
}

/// Empties what the writer keeps of the database between writes, when a write is undone.
fn forget_cached() {
    endpoint_cache::forget();
    fanout::forget_next_seq();
}

fn migrate(conn: &mut Connection) -> StoreResult<()> {
    migrate_to(conn, i64::MAX)
}

/// Applies the migrations up to `target` (a test starts from an older schema this way).
fn migrate_to(conn: &mut Connection, target: i64) -> StoreResult<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version    INTEGER PRIMARY KEY,
             name       TEXT NOT NULL,
             applied_at INTEGER NOT NULL
         )",
    )?;
    let current: i64 = conn.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
        [],
        |r| r.get(0),
    )?;
    let newest = MIGRATIONS.last().map(|m| m.0).unwrap_or(0);
    if current > newest {
        return Err(StoreError::Migration {
            version: current,
            message: format!(
                "the database is at version {current}, newer than this merpati ({newest})"
            ),
        });
    }
    let to_apply = MIGRATIONS.iter().filter(|m| m.0 > current && m.0 <= target);
    for (version, name, sql) in to_apply {
        let fail = |e: rusqlite::Error| StoreError::Migration {
            version: *version,
            message: e.to_string(),
        };
        let tx = conn.transaction().map_err(fail)?;
        tx.execute_batch(sql).map_err(fail)?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?1, ?2, ?3)",
            rusqlite::params![version, name, now_ms()],
        )
        .map_err(fail)?;
        tx.commit().map_err(fail)?;
        tracing::info!(version, name, "applied migration");
    }
    Ok(())
}

/// The schema version the database is at.
pub fn schema_version(
    store: &SqliteStore,
) -> impl std::future::Future<Output = StoreResult<i64>> + '_ {
    store.read(|c| {
        Ok(c.query_row(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            [],
            |r| r.get(0),
        )?)
    })
}

fn now_ms() -> i64 {
    use crate::clock::Clock;
    crate::clock::SystemClock.now_ms()
}

/// JSON text of a list of strings, for the list columns.
fn json_list(items: &[String]) -> String {
    serde_json::to_string(items).expect("strings serialize")
}

fn parse_json_column<T: serde::de::DeserializeOwned>(text: &str) -> rusqlite::Result<T> {
    serde_json::from_str(text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

/// True when the error is a UNIQUE or PRIMARY KEY violation.
fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::SqliteFailure(f, _)
            if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
                || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn scratch_store(dir: &Path) -> SqliteStore {
        let config = DatabaseConfig {
            synchronous_full: false,
            read_connections: 1,
        };
        let store = SqliteStore::open(&dir.join("merpati.db"), &config)
            .await
            .unwrap();
        store
            .write(|c| Ok(c.execute_batch("CREATE TABLE scratch (n INTEGER NOT NULL)")?))
            .await
            .unwrap();
        store
    }

    async fn scratch_rows(store: &SqliteStore) -> Vec<i64> {
        store
            .read(|c| {
                let mut s = c.prepare("SELECT n FROM scratch ORDER BY n")?;
                let rows = s.query_map([], |r| r.get(0))?;
                Ok(rows.collect::<Result<_, _>>()?)
            })
            .await
            .unwrap()
    }

    fn insert(c: &Connection, n: i64) -> StoreResult<()> {
        c.execute("INSERT INTO scratch (n) VALUES (?1)", [n])?;
        Ok(())
    }

    /// Holds the writer until `queued` writes wait behind it, then lets `writes` finish:
    /// they make one group.
    async fn in_one_group<T>(
        store: &SqliteStore,
        queued: usize,
        writes: impl std::future::Future<Output = T>,
    ) -> T {
        let (running, is_running) = oneshot::channel();
        let (release, hold) = std::sync::mpsc::channel::<()>();
        let occupied = store.write(move |_| {
            let _ = running.send(());
            let _ = hold.recv();
            Ok(())
        });
        let rest = async {
            is_running.await.unwrap();
            let release = async {
                loop {
                    let waiting = store
                        .writer
                        .lock()
                        .unwrap()
                        .as_ref()
                        .map_or(0, |s| s.max_capacity() - s.capacity());
                    if waiting >= queued {
                        break;
                    }
                    tokio::task::yield_now().await;
                }
                release.send(()).unwrap();
            };
            tokio::join!(writes, release).0
        };
        let (occupied, out) = tokio::join!(occupied, rest);
        occupied.unwrap();
        out
    }

    /// A checked write that fails before changing anything costs the others of its group
    /// nothing, and neither does a savepoint write that fails after changing rows.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_that_fails_undoes_only_itself() {
        let dir = tempfile::tempdir().unwrap();
        let store = scratch_store(dir.path()).await;
        let (a, b, c, d) = in_one_group(&store, 4, async {
            tokio::join!(
                store.write_checked(|c| insert(c, 1)),
                store.write_checked(|_| Err::<(), _>(StoreError::Conflict("refused".into()))),
                store.write(|c| {
                    insert(c, 2)?;
                    Err::<(), _>(StoreError::Conflict("refused after writing".into()))
                }),
                store.write_checked(|c| insert(c, 3)),
            )
        })
        .await;
        assert!(a.is_ok() && d.is_ok(), "{a:?} {d:?}");
        assert!(matches!(b, Err(StoreError::Conflict(_))), "{b:?}");
        assert!(matches!(c, Err(StoreError::Conflict(_))), "{c:?}");
        assert_eq!(scratch_rows(&store).await, [1, 3]);
        store.close().await;
    }

    /// A checked write that fails after changing rows breaks its promise: nothing but the
    /// whole transaction undoes it, so every write of its group fails and none is kept.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_checked_write_that_fails_after_changing_rows_undoes_its_group() {
        let dir = tempfile::tempdir().unwrap();
        let store = scratch_store(dir.path()).await;
        let (a, b, c) = in_one_group(&store, 3, async {
            tokio::join!(
                store.write_checked(|c| insert(c, 1)),
                store.write_checked(|c| {
                    insert(c, 2)?;
                    Err::<(), _>(StoreError::Conflict("refused after writing".into()))
                }),
                store.write(|c| insert(c, 3)),
            )
        })
        .await;
        for result in [a, b, c] {
            assert!(matches!(result, Err(StoreError::Corrupt(_))), "{result:?}");
        }
        assert!(scratch_rows(&store).await.is_empty());
        // The writer goes on.
        store.write_checked(|c| insert(c, 4)).await.unwrap();
        assert_eq!(scratch_rows(&store).await, [4]);
        store.close().await;
    }

    /// The log has to start over while commits never pause: one that only grew would fill
    /// the disk.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_log_starts_over_while_commits_never_pause() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("merpati.db");
        let config = DatabaseConfig {
            synchronous_full: false,
            read_connections: 1,
        };
        let store = Arc::new(SqliteStore::open(&path, &config).await.unwrap());
        store
            .write(|c| Ok(c.execute_batch("CREATE TABLE scratch (b BLOB NOT NULL)")?))
            .await
            .unwrap();
        // 48 MiB in all, three times the log's checkpoint size, from writers that keep the
        // queue full so that the writer never finds it empty.
        const ROWS: usize = 3072;
        let mut writers = tokio::task::JoinSet::new();
        for w in 0..8 {
            let store = store.clone();
            writers.spawn(async move {
                for _ in 0..ROWS / 8 {
                    let blob = vec![w as u8; 16 * 1024];
                    store
                        .write(move |c| {
                            c.execute("INSERT INTO scratch (b) VALUES (?1)", [blob])?;
                            Ok(())
                        })
                        .await
                        .unwrap();
                }
            });
        }
        while let Some(done) = writers.join_next().await {
            done.unwrap();
        }
        let rows: i64 = store
            .read(|c| Ok(c.query_row("SELECT COUNT(*) FROM scratch", [], |r| r.get(0))?))
            .await
            .unwrap();
        assert_eq!(rows, ROWS as i64);
        let check: String = store
            .read(|c| Ok(c.query_row("PRAGMA integrity_check", [], |r| r.get(0))?))
            .await
            .unwrap();
        assert_eq!(check, "ok");
        let log = std::fs::metadata(wal_path(&path)).unwrap().len();
        let written = (ROWS * 16 * 1024) as u64;
        assert!(
            log < written / 2,
            "the log is {log} bytes after {written} bytes were written"
        );
        store.close().await;
    }

    /// A device's items sent before the dedup keys moved onto events are still known.
    #[test]
    fn inbound_items_move_onto_their_events() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("PRAGMA foreign_keys = ON").unwrap();
        migrate_to(&mut conn, 8).unwrap();
        conn.execute_batch(
            "INSERT INTO accounts (id, name, created_at, updated_at) VALUES ('a', 'a', 0, 0);
             INSERT INTO events (seq, id, account_id, type, device_id, payload, created_at)
             VALUES (1, 'evt_1', 'a', 'sms.received', 'd', '{}', 10),
                    (2, 'evt_2', 'a', 'device.connected', 'd', '{}', 20),
                    (3, 'evt_3', 'a', 'sms.received', 'd', '{}', 30);
             INSERT INTO inbound_items VALUES ('a', 'd', 'i:1', x'01', 1), ('a', 'd', 's:x', x'03', 3);",
        )
        .unwrap();
        migrate(&mut conn).unwrap();
        use rusqlite::OptionalExtension;
        let sent = |rid: &str| -> Option<(Vec<u8>, i64, String)> {
            conn.query_row(ingest::SENT_BEFORE, ["a", "d", rid], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .optional()
            .unwrap()
        };
        assert_eq!(sent("i:1"), Some((vec![1], 1, "evt_1".into())));
        assert_eq!(sent("s:x"), Some((vec![3], 3, "evt_3".into())));
        assert_eq!(sent("i:2"), None);
        let events: i64 = conn
            .query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0))
            .unwrap();
        assert_eq!(events, 3, "the migration deleted no event");
        assert_whole(&conn);
    }

    /// The queries meant for a partial index use it (an endpoint's deliveries by status, a
    /// device's item by rid): SQLite uses a partial index only when the query implies its
    /// condition, and a miss would walk an endpoint's or an account's whole history.
    #[test]
    fn lookups_meant_for_partial_indexes_use_them() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        let candidates = format!("SELECT d.id {}", jobs::CANDIDATES);
        let queries = [
            (endpoints::HOLD_PENDING, &["deliveries_due"][..]),
            (endpoints::UNQUEUE_PENDING, &["deliveries_queue"]),
            (endpoints::UNQUEUE_HELD, &["deliveries_held"]),
            (fanout::QUEUE_BUSY, &["deliveries_queue"]),
            (fanout::ADVANCE_QUEUE, &["deliveries_queue"]),
            (fanout::RELEASE_UNQUEUED, &["deliveries_held"]),
            (fanout::RELEASE_QUEUED, &["deliveries_held"]),
            (fanout::PENDING_QUEUES, &["deliveries_queue"]),
            (delivery::UNPARK, &["deliveries_parked"]),
            (&candidates, &["deliveries_failed", "deliveries_event"]),
            (ingest::SENT_BEFORE, &["events_rid"]),
            (endpoints::DELETED_ENDPOINT, &["endpoints_deleted"]),
            (endpoints::ENDPOINT_DELIVERIES, &["deliveries_endpoint"]),
            (accounts::DELETED_ACCOUNT, &["accounts_deleted"]),
            (accounts::ACCOUNT_EVENTS, &["events_account"]),
        ];
        for (sql, indexes) in queries {
            // Planned with the parameters unbound: the plan does not depend on their values.
            let mut explain = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            let mut rows = explain.raw_query();
            let mut plan: Vec<String> = Vec::new();
            while let Some(row) = rows.next().unwrap() {
                plan.push(row.get(3).unwrap());
            }
            for index in indexes {
                assert!(
                    plan.iter()
                        .any(|step| format!("{step} ").contains(&format!("INDEX {index} "))),
                    "{sql}\n uses {plan:?}, not {index}"
                );
            }
        }
    }

    /// Deleting a parent row looks up its children by the child column: without an index
    /// that is a scan of the whole child table for every row deleted (pruning, say).
    #[test]
    fn every_foreign_key_column_leads_an_index() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        let tables: Vec<String> =
            column(&conn, "SELECT name FROM sqlite_master WHERE type = 'table'");
        let strings = |sql: &str, arg: &str| -> Vec<(i64, String)> {
            conn.prepare(sql)
                .unwrap()
                .query_map([arg], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap()
        };
        let mut missing = Vec::new();
        for table in &tables {
            // (foreign key id, column), in the key's column order.
            let keys = strings(
                "SELECT id, \"from\" FROM pragma_foreign_key_list(?1) ORDER BY id, seq",
                table,
            );
            // A partial index holds only some rows, so it cannot stand in.
            let indexes: Vec<Vec<String>> = strings(
                "SELECT seq, name FROM pragma_index_list(?1) WHERE partial = 0",
                table,
            )
            .into_iter()
            .map(|(_, index)| {
                strings(
                    "SELECT seqno, name FROM pragma_index_info(?1) ORDER BY seqno",
                    &index,
                )
                .into_iter()
                .map(|(_, column)| column)
                .collect()
            })
            .collect();
            let mut ids: Vec<i64> = keys.iter().map(|k| k.0).collect();
            ids.dedup();
            for id in ids {
                let mut columns: Vec<&str> = keys
                    .iter()
                    .filter(|k| k.0 == id)
                    .map(|k| k.1.as_str())
                    .collect();
                columns.sort_unstable();
                // Some index starts with exactly the key's columns, in any order.
                let covered = indexes.iter().any(|index| {
                    let mut lead: Vec<&str> = index
                        .iter()
                        .take(columns.len())
                        .map(String::as_str)
                        .collect();
                    lead.sort_unstable();
                    lead == columns
                });
                if !covered {
                    missing.push(format!("{table}({})", columns.join(", ")));
                }
            }
        }
        assert!(
            missing.is_empty(),
            "foreign keys without an index: {missing:?}"
        );
    }
}
