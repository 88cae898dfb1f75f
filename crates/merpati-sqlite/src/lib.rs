//! merpati's SQLite backend.
//!
//! One writer thread owns the only write connection and commits in groups (`writer`); a
//! syncer thread makes each group durable before its callers are answered, and a
//! checkpointer thread copies most of the log back into the database beside the writer
//! (`checkpoint`). Reads go to a small pool of read-only connections (`reader`). Every
//! feature's storage trait is implemented in a module of its own; what the product decides
//! (fan-out, dedup, outcomes, health, announcements, retention's cut) it asks the domain's
//! rules, and only runs the statements.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use merpati_domain::{Store, StoreError, StoreResult};
use merpati_keyring::Sealer;
use rusqlite::{Connection, OpenFlags};
use tokio::sync::mpsc;

mod accounts;
mod alert_tx;
mod alerts;
mod audit;
mod checkpoint;
mod cluster;
mod connectors;
mod delivery;
mod devices;
mod endpoint_cache;
mod endpoint_stats;
mod endpoints;
mod error;
mod events;
mod fanout;
mod ingest;
mod jobs;
mod migrations;
mod presence;
mod presence_machines;
mod reader;
mod rows;
mod sealed;
mod slots;
mod table;
mod wal_writes;
mod writer;

#[cfg(test)]
mod index_plans;
#[cfg(test)]
mod testing;

use error::{closed, DbResult};
use reader::ReadPool;
use writer::{Guard, Job, Tx, WriteJob, WriterState};

pub use merpati_keyring::Resealed;

const STATEMENT_CACHE: usize = 128;

/// How the database is opened.
#[derive(Debug, Clone)]
pub struct Options {
    /// `full` makes every commit durable against power loss; `normal` only against a crash
    /// of the process.
    pub synchronous_full: bool,
    pub read_connections: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            synchronous_full: true,
            read_connections: 4,
        }
    }
}

pub struct SqliteStore {
    writer: Mutex<Option<mpsc::Sender<Box<dyn WriteJob>>>>,
    /// The writer, then the syncer and the checkpointer, which end after it.
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    readers: Arc<ReadPool>,
    commits: Arc<merpati_domain::commit_stats::CommitStats>,
    resealed: Resealed,
}

impl SqliteStore {
    /// Opens (and migrates) the database at `path`, creating it and its directory if need
    /// be. Secrets are sealed and opened with `sealer`; any stored in clear or under
    /// another of its keys are sealed again with the key that seals now (see `resealed`).
    pub async fn open(
        path: &Path,
        options: &Options,
        sealer: Arc<Sealer>,
    ) -> StoreResult<SqliteStore> {
        let path = path.to_owned();
        let options = options.clone();
        tokio::task::spawn_blocking(move || Self::open_blocking(&path, &options, sealer))
            .await
            .map_err(|e| StoreError::Internal(format!("the open task failed: {e}")))?
            .map_err(StoreError::from)
    }

    fn open_blocking(path: &Path, options: &Options, sealer: Arc<Sealer>) -> DbResult<SqliteStore> {
        private_files(path).map_err(|e| {
            StoreError::Internal(format!("cannot make {} private: {e}", path.display()))
        })?;
        // The writer's connection writes the log through a VFS that gathers each commit's
        // frames into one write (see `wal_writes`); the readers use the default VFS.
        let vfs = wal_writes::register().map_err(StoreError::Internal)?;
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
        migrations::migrate(&mut conn)?;
        sealed::register(&conn, &sealer)?;
        let resealed = sealed::reseal_all(&conn, &sealer)?;
        let state = WriterState::new(endpoint_cache::EndpointCache::watching(&conn));
        // From here on the writer checkpoints at `checkpoint::WRITER_CHECKPOINT` frames,
        // after a background thread copied most of the log back (see `checkpoint`).
        conn.wal_hook(Some(checkpoint::after_commit));
        let checkpointer = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        checkpointer.execute_batch("PRAGMA synchronous = NORMAL;")?;
        let unopened = |what: &str, e: std::io::Error| {
            StoreError::Internal(format!("cannot open the {what}: {e}"))
        };
        let database = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| unopened("database file", e))?;
        // Open while the store is: SQLite removes the log only when its last connection
        // closes, so this stays the file the commits write to.
        let log = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(wal_path(path))
            .map_err(|e| unopened("write-ahead log", e))?;
        // The default (16) is fewer than the statements the writer uses, so it would
        // prepare most of them again on every use.
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        let readers = ReadPool::open(path, options.read_connections, STATEMENT_CACHE, &sealer)?;

        let (tx, rx) = mpsc::channel(writer::WRITE_QUEUE);
        let (to_sync, committed) = std::sync::mpsc::sync_channel(writer::SYNC_QUEUE);
        let (background, checkpoint_asked) = checkpoint::channel();
        let sync = options.synchronous_full;
        let commits = Arc::new(merpati_domain::commit_stats::CommitStats::default());
        let syncer_stats = commits.clone();
        let thread_error =
            |e| StoreError::Internal(format!("cannot start a thread of the store: {e}"));
        let writer = std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || writer::writer_loop(conn, state, rx, to_sync, background))
            .map_err(thread_error)?;
        let syncer = std::thread::Builder::new()
            .name("sqlite-sync".into())
            .spawn(move || writer::sync_loop(log, sync, committed, syncer_stats))
            .map_err(thread_error)?;
        let checkpointer = std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || {
                checkpoint::run(checkpointer, database, checkpoint_asked);
            })
            .map_err(thread_error)?;
        Ok(SqliteStore {
            commits,
            writer: Mutex::new(Some(tx)),
            threads: Mutex::new(vec![writer, syncer, checkpointer]),
            readers: Arc::new(readers),
            resealed,
        })
    }

    /// What opening did to the stored secrets.
    pub fn resealed(&self) -> &Resealed {
        &self.resealed
    }

    /// Runs `f` in the next group commit; answers once that commit is durable.
    pub(crate) async fn write<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Tx<'_>) -> DbResult<T> + Send + 'static,
    {
        self.submit(f, |t| t, Guard::Savepoint).await
    }

    /// As `write`, for a write that can fail only before it changes anything (it reads and
    /// checks first), so that it needs no savepoint of its own: opening one costs a copy
    /// of every page the write then touches. Should it fail after changing rows after all
    /// (the disk, say), the whole group is undone and every write in it fails.
    pub(crate) async fn write_checked<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Tx<'_>) -> DbResult<T> + Send + 'static,
    {
        self.submit(f, |t| t, Guard::ChecksFirst).await
    }

    /// As `write_checked`, and `committed` turns what `f` returned into the answer on the
    /// writer's side as soon as the commit is durable, whether or not the caller still
    /// waits.
    pub(crate) async fn write_checked_then<R, T, F>(
        &self,
        f: F,
        committed: fn(R) -> T,
    ) -> StoreResult<T>
    where
        R: Send + 'static,
        T: Send + 'static,
        F: FnOnce(&mut Tx<'_>) -> DbResult<R> + Send + 'static,
    {
        self.submit(f, committed, Guard::ChecksFirst).await
    }

    async fn submit<R, T, F>(&self, f: F, committed: fn(R) -> T, guard: Guard) -> StoreResult<T>
    where
        R: Send + 'static,
        T: Send + 'static,
        F: FnOnce(&mut Tx<'_>) -> DbResult<R> + Send + 'static,
    {
        let sender = self
            .writer
            .lock()
            .expect("writer lock")
            .clone()
            .ok_or_else(closed)?;
        let (job, answer) = Job::new(f, guard, committed);
        sender.send(Box::new(job)).await.map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }

    /// Runs `f` on a read connection, off the async threads.
    pub(crate) async fn read<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> DbResult<T> + Send + 'static,
    {
        self.readers.read(f).await
    }
}

/// The database holds endpoints' and connectors' secrets: its directory is its owner's
/// alone (0700), and so are the database and its `-wal` and `-shm` files (0600; SQLite
/// gives the log files the database file's mode, so the file is made before SQLite opens it).
fn private_files(path: &Path) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(dir)?;
        set_mode(dir, 0o700)?;
    }
    if !path.exists() {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        options.open(path)?;
    }
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        let file = std::path::PathBuf::from(file);
        if file.exists() {
            set_mode(&file, 0o600)?;
        }
    }
    Ok(())
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_mode(_: &Path, _: u32) -> std::io::Result<()> {
    Ok(())
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn schema_version(&self) -> StoreResult<i64> {
        self.read(migrations::version).await
    }

    async fn ping(&self) -> StoreResult<()> {
        self.read(|c| Ok(c.query_row("SELECT 1", [], |_| Ok(()))?))
            .await
    }

    async fn counts(&self) -> StoreResult<merpati_domain::store::Counts> {
        self.read(|c| {
            let mut counts = merpati_domain::store::Counts::default();
            let mut s = c.prepare_cached(
                "SELECT status, COUNT(*) FROM deliveries WHERE status IN ('pending', 'held')
                 GROUP BY status",
            )?;
            let mut rows = s.query([])?;
            while let Some(r) = rows.next()? {
                let (status, n): (String, i64) = (r.get(0)?, r.get(1)?);
                match status.as_str() {
                    "pending" => counts.deliveries_pending = n,
                    _ => counts.deliveries_held = n,
                }
            }
            let mut s = c.prepare_cached(
                "SELECT d.presence, ch.engine, COUNT(*) FROM devices d
                 JOIN channels ch ON ch.account_id = d.account_id AND ch.id = d.channel_id
                 GROUP BY d.presence, ch.engine",
            )?;
            let mut rows = s.query([])?;
            while let Some(r) = rows.next()? {
                let presence: String = r.get(0)?;
                let status = match devices::presence_from_db(&presence) {
                    merpati_domain::device::Presence::Connected => "connected",
                    merpati_domain::device::Presence::Disconnected => "disconnected",
                    merpati_domain::device::Presence::Unknown => "unknown",
                };
                counts.devices.push((status, r.get(1)?, r.get(2)?));
            }
            let mut s = c.prepare_cached(
                "SELECT state, COUNT(*) FROM incidents WHERE state IN ('open', 'acknowledged')
                 GROUP BY state",
            )?;
            let mut rows = s.query([])?;
            while let Some(r) = rows.next()? {
                let (state, n): (String, i64) = (r.get(0)?, r.get(1)?);
                match state.as_str() {
                    "open" => counts.incidents_open = n,
                    _ => counts.incidents_acknowledged = n,
                }
            }
            Ok(counts)
        })
        .await
        .map(|mut counts| {
            counts.commits = self.commits.snapshot();
            counts
        })
    }

    async fn shrink_caches(&self) -> StoreResult<()> {
        // Clean pages only: a page a write in the same group has changed stays.
        self.write_checked(|c| Ok(c.execute_batch("PRAGMA shrink_memory")?))
            .await?;
        Ok(self.readers.shrink()?)
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

fn wal_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push("-wal");
    name.into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::DbResult;

    async fn scratch_store(dir: &Path) -> SqliteStore {
        let config = Options {
            synchronous_full: false,
            read_connections: 1,
        };
        let store = SqliteStore::open(
            &dir.join("merpati.db"),
            &config,
            Arc::new(Sealer::ephemeral()),
        )
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

    fn insert(c: &Connection, n: i64) -> DbResult<()> {
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
        let (running, is_running) = tokio::sync::oneshot::channel();
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
                store
                    .write_checked(|_| Err::<(), _>(StoreError::Conflict("refused".into()).into())),
                store.write(|c| {
                    insert(c, 2)?;
                    Err::<(), _>(StoreError::Conflict("refused after writing".into()).into())
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
                    Err::<(), _>(StoreError::Conflict("refused after writing".into()).into())
                }),
                store.write(|c| insert(c, 3)),
            )
        })
        .await;
        for result in [a, b, c] {
            assert!(matches!(result, Err(StoreError::Internal(_))), "{result:?}");
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
        let config = Options {
            synchronous_full: false,
            read_connections: 1,
        };
        let store = Arc::new(
            SqliteStore::open(&path, &config, Arc::new(Sealer::ephemeral()))
                .await
                .unwrap(),
        );
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
        // The log's header counts the times it started over; its size alone depends on
        // how far past the checkpoint size a busy machine let it run before each.
        let log = std::fs::read(wal_path(&path)).unwrap();
        let started_over = u32::from_be_bytes(log[12..16].try_into().unwrap());
        let written = (ROWS * 16 * 1024) as u64;
        assert!(
            started_over >= 2 && (log.len() as u64) < written,
            "the log started over {started_over} times and is {} bytes after {written} bytes were written",
            log.len()
        );
        store.close().await;
    }
}
