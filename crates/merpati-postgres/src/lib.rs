//! merpati's PostgreSQL backend.
//!
//! One writer connection per node commits in groups (`writer`): many requests' writes in
//! one transaction, durable when PostgreSQL answers the commit (`synchronous_commit` on).
//! Reads go to a small pool of connections beside it (`reader`). Every feature's storage
//! trait is implemented in a module of its own; what the product decides (fan-out, dedup,
//! outcomes, health, announcements, retention's cut) it asks the domain's rules, and only
//! runs the statements. Secrets are sealed and opened in the process with the keyring's
//! `Sealer`: the server only ever holds them sealed.

use std::sync::{Arc, Mutex};

use merpati_domain::commit_stats::CommitStats;
use merpati_domain::store::Counts;
use merpati_domain::{Store, StoreError, StoreResult};
use merpati_keyring::{Resealed, Sealer};
use tokio::sync::mpsc;

mod accounts;
mod alert_tx;
mod alerts;
mod audit;
mod cluster;
mod conn;
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
mod listener;
mod log_parts;
mod migrations;
mod notices;
mod offer_targets;
mod outbox;
mod presence;
mod presence_machines;
mod reader;
mod rows;
pub mod scratch;
mod sealed;
mod slots;
mod table;
mod writer;

use conn::{Conn, Server};
use error::{closed, postgres_error, DbResult};
use reader::ReadPool;
use writer::{Commit, Guard, Job, Tx, WriteJob};

/// How the database is used.
#[derive(Debug, Clone)]
pub struct Options {
    pub read_connections: usize,
    /// Connections committing groups side by side: one group's statements run while
    /// another's commit is under way (one by default: on 2 cores a second gained nothing,
    /// BENCHMARKS.md).
    pub writers: usize,
    /// How long a connection may leave a transaction waiting for its next statement before
    /// the server ends it (`idle_in_transaction_session_timeout`): the node's lease, so that
    /// a node frozen half-way through a transaction holds its locks no longer than its
    /// slots.
    pub idle_in_transaction: std::time::Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            read_connections: 4,
            writers: 1,
            idle_in_transaction: std::time::Duration::from_secs(5),
        }
    }
}

/// Whether `url` is a connection URL the driver takes; the reason when not, without the
/// URL itself (it may hold a password).
pub fn check_url(url: &str) -> Result<(), String> {
    url.parse::<postgres::Config>()
        .map(drop)
        .map_err(|e| format!("not a PostgreSQL connection URL: {e}"))
}

/// The database a URL names, as a log may show it: user, hosts and database, never the
/// password.
pub fn describe_url(url: &str) -> String {
    let Ok(config) = url.parse::<postgres::Config>() else {
        return "a PostgreSQL database".into();
    };
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            postgres::config::Host::Tcp(name) => name.clone(),
            postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    format!(
        "PostgreSQL database {} of {} on {}",
        config.get_dbname().unwrap_or("(default)"),
        config.get_user().unwrap_or("(default user)"),
        hosts.join(", ")
    )
}

pub struct PostgresStore {
    writer: Mutex<Option<mpsc::Sender<Box<dyn WriteJob>>>>,
    /// The background writer: a connection of its own for the alert engine's writes and
    /// retention's, so that a long one never holds up ingest, claims and records.
    aside: Mutex<Option<mpsc::Sender<Box<dyn WriteJob>>>>,
    /// The lease writer: a connection of its own for claims, committed without waiting
    /// for the disk (see `write_lease`), so that a claim waits neither for a group of
    /// requests nor for their flush.
    leases: Mutex<Option<mpsc::Sender<Box<dyn WriteJob>>>>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    readers: ReadPool,
    commits: Arc<CommitStats>,
    resealed: Resealed,
    url: String,
    /// Set when the store closes: the listener's thread ends.
    closing: Arc<std::sync::atomic::AtomicBool>,
    /// The targets of endpoints whose deliveries other nodes offer carried.
    offer_targets: Arc<Mutex<offer_targets::OfferTargets>>,
    /// What the listener listens for, and as which node: the slots the node holds or is to
    /// take.
    listened: listener::Listened,
}

impl PostgresStore {
    /// Connects to the database at `url` and brings its schema to the newest version.
    /// Secrets are sealed and opened with `sealer`.
    pub async fn open(url: &str, options: &Options, sealer: Arc<Sealer>) -> StoreResult<Self> {
        let url = url.to_owned();
        let options = options.clone();
        tokio::task::spawn_blocking(move || Self::open_blocking(url, &options, sealer))
            .await
            .map_err(|e| StoreError::Internal(format!("the open task failed: {e}")))?
    }

    fn open_blocking(url: String, options: &Options, sealer: Arc<Sealer>) -> StoreResult<Self> {
        let server = Server {
            url: url.clone(),
            sealer: sealer.clone(),
            idle_in_transaction: options.idle_in_transaction,
        };
        let mut conn = Conn::connect(&server).map_err(|e| postgres_error(&e))?;
        migrations::migrate(&mut conn)?;
        let resealed = sealed::reseal_all(&mut conn, &sealer)?;
        let commits = Arc::new(CommitStats::default());
        let (tx, rx) = mpsc::channel(writer::WRITE_QUEUE);
        let outages = Arc::new(std::sync::atomic::AtomicU64::new(0));
        // The writers for requests, the background writer and the lease writer: the same
        // loop, each on a queue of its own.
        let writers_on = |queue, commit| {
            Arc::new(writer::Writers {
                server: server.clone(),
                queue: Arc::new(Mutex::new(queue)),
                stats: commits.clone(),
                pass: ingest::store_requests,
                commit,
                outages: outages.clone(),
            })
        };
        let writers = writers_on(rx, Commit::Durable);
        let (aside_tx, aside_rx) = mpsc::channel(writer::WRITE_QUEUE);
        let aside = writers_on(aside_rx, Commit::Durable);
        let (leases_tx, leases_rx) = mpsc::channel(writer::WRITE_QUEUE);
        let leases = writers_on(leases_rx, Commit::WithoutFlush);
        let start = |name: &str, writers: Arc<writer::Writers>, conn| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(move || writer::writer_loop(&writers, conn))
                .map_err(|e| StoreError::Internal(format!("cannot start a writer: {e}")))
        };
        let mut threads = vec![
            start("postgres-aside", aside, None)?,
            start("postgres-leases", leases, None)?,
        ];
        let mut first = Some(conn);
        for i in 0..options.writers.max(1) {
            threads.push(start(
                &format!("postgres-writer-{i}"),
                writers.clone(),
                first.take(),
            )?);
        }
        Ok(PostgresStore {
            writer: Mutex::new(Some(tx)),
            aside: Mutex::new(Some(aside_tx)),
            leases: Mutex::new(Some(leases_tx)),
            threads: Mutex::new(threads),
            readers: ReadPool::start(server, options.read_connections, outages)
                .map_err(|e| StoreError::Internal(format!("cannot start the readers: {e}")))?,
            commits,
            resealed,
            url,
            closing: Arc::default(),
            offer_targets: Arc::default(),
            listened: Arc::default(),
        })
    }

    /// Starts listening for other nodes' wakes (see `listener`).
    fn start_listener(&self, wake: listener::Wake) -> StoreResult<()> {
        let thread = listener::start(
            self.url.clone(),
            wake,
            self.listened.clone(),
            self.closing.clone(),
        )
        .map_err(|e| StoreError::Internal(format!("cannot start the listener: {e}")))?;
        self.threads.lock().expect("thread lock").push(thread);
        Ok(())
    }

    /// What opening did to the stored secrets.
    pub fn resealed(&self) -> &Resealed {
        &self.resealed
    }

    /// Brings the schema at `url` to the newest version without opening a store; answers
    /// the version.
    pub fn migrate(url: &str) -> StoreResult<i64> {
        let mut conn = Conn::connect(&Server::plain(url)).map_err(|e| postgres_error(&e))?;
        Ok(migrations::migrate(&mut conn)?)
    }

    /// Runs `f` in the next group commit, in a savepoint of its own; answers once that
    /// commit is durable.
    pub(crate) async fn write<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Tx<'_>) -> DbResult<T> + Send + 'static,
    {
        self.submit(f, |t| t, Guard::Savepoint).await
    }

    /// As `write`, for a write that can fail only before it changes anything (it reads and
    /// checks first), so that it needs no savepoint. Should the server refuse one of its
    /// statements after all, the whole group is undone and every write in it fails.
    pub(crate) async fn write_checked<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Tx<'_>) -> DbResult<T> + Send + 'static,
    {
        self.submit(f, |t| t, Guard::ChecksFirst).await
    }

    async fn submit<R, T, F>(&self, f: F, committed: fn(R) -> T, guard: Guard) -> StoreResult<T>
    where
        R: Send + 'static,
        T: Send + 'static,
        F: FnOnce(&mut Tx<'_>) -> DbResult<R> + Send + 'static,
    {
        self.submit_to(&self.writer, f, committed, guard).await
    }

    /// Queues `f` as a write for the writers that take from `queue`; answers once it is
    /// committed.
    async fn submit_to<R, T, F>(
        &self,
        queue: &Mutex<Option<mpsc::Sender<Box<dyn WriteJob>>>>,
        f: F,
        committed: fn(R) -> T,
        guard: Guard,
    ) -> StoreResult<T>
    where
        R: Send + 'static,
        T: Send + 'static,
        F: FnOnce(&mut Tx<'_>) -> DbResult<R> + Send + 'static,
    {
        let (job, answer) = Job::new(f, guard, committed);
        Self::queue(queue, Box::new(job)).await?;
        answer.await.map_err(|_| closed())?
    }

    /// As `write`, on the background writer: for the alert engine's writes and
    /// retention's, which may run long and are waited for by nobody's request.
    pub(crate) async fn write_aside<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Tx<'_>) -> DbResult<T> + Send + 'static,
    {
        self.submit_to(&self.aside, f, |t| t, Guard::Savepoint)
            .await
    }

    /// As `write_checked`, on the lease writer: for a claim, a lease on deliveries that
    /// may be lost without harm. Its commit does not wait for the disk; should PostgreSQL
    /// crash before the flush, the deliveries are due again as before the claim (at least
    /// once allows it), and any later durable commit, such as the record of an attempt the
    /// claim led to, flushes it first.
    pub(crate) async fn write_lease<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Tx<'_>) -> DbResult<T> + Send + 'static,
    {
        self.submit_to(&self.leases, f, |t| t, Guard::ChecksFirst)
            .await
    }

    /// Queues a write for the writer.
    pub(crate) async fn send(&self, job: Box<dyn WriteJob>) -> StoreResult<()> {
        Self::queue(&self.writer, job).await
    }

    async fn queue(
        writer: &Mutex<Option<mpsc::Sender<Box<dyn WriteJob>>>>,
        job: Box<dyn WriteJob>,
    ) -> StoreResult<()> {
        let sender = writer
            .lock()
            .expect("writer lock")
            .clone()
            .ok_or_else(closed)?;
        sender.send(job).await.map_err(|_| closed())
    }

    /// Runs `f` on a read connection, off the async threads.
    pub(crate) async fn read<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Conn) -> DbResult<T> + Send + 'static,
    {
        self.readers.read(f).await
    }
}

#[async_trait::async_trait]
impl Store for PostgresStore {
    async fn schema_version(&self) -> StoreResult<i64> {
        self.read(migrations::version).await
    }

    async fn ping(&self) -> StoreResult<()> {
        self.read(|c| {
            c.query_one("SELECT 1", &[])?;
            Ok(())
        })
        .await
    }

    async fn counts(&self) -> StoreResult<Counts> {
        self.read(|c| {
            let mut counts = Counts::default();
            for r in c.query(
                "SELECT status, COUNT(*) FROM deliveries WHERE status IN ('pending', 'held')
                 GROUP BY status",
                &[],
            )? {
                let (status, n): (&str, i64) = (r.get(0), r.get(1));
                match status {
                    "pending" => counts.deliveries_pending = n,
                    _ => counts.deliveries_held = n,
                }
            }
            for r in c.query(
                "SELECT d.presence, ch.engine, COUNT(*) FROM devices d
                 JOIN channels ch ON ch.account_id = d.account_id AND ch.id = d.channel_id
                 GROUP BY d.presence, ch.engine",
                &[],
            )? {
                let status = match devices::presence_from_db(r.get(0)) {
                    merpati_domain::device::Presence::Connected => "connected",
                    merpati_domain::device::Presence::Disconnected => "disconnected",
                    merpati_domain::device::Presence::Unknown => "unknown",
                };
                counts.devices.push((status, r.get(1), r.get(2)));
            }
            for r in c.query(
                "SELECT state, COUNT(*) FROM incidents WHERE state IN ('open', 'acknowledged')
                 GROUP BY state",
                &[],
            )? {
                let (state, n): (&str, i64) = (r.get(0), r.get(1));
                match state {
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
        // The pages are the server's; a connection keeps only its prepared statements.
        Ok(())
    }

    async fn close(&self) {
        // Dropping the last sender lets the writer finish its queue and exit.
        self.writer.lock().expect("writer lock").take();
        self.aside.lock().expect("writer lock").take();
        self.leases.lock().expect("writer lock").take();
        self.closing
            .store(true, std::sync::atomic::Ordering::Release);
        let mut threads = self.readers.close();
        threads.extend(std::mem::take(
            &mut *self.threads.lock().expect("thread lock"),
        ));
        let _ = tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scratch::ScratchServer;

    use crate::scratch::shared as server;

    fn one_writer() -> Options {
        Options {
            writers: 1,
            ..Options::default()
        }
    }

    async fn scratch_store() -> PostgresStore {
        let url = tokio::task::spawn_blocking(|| server().empty_database().unwrap())
            .await
            .unwrap();
        // One writer, so that writes queued together make one group.
        let options = Options {
            read_connections: 1,
            writers: 1,
            ..Options::default()
        };
        let store = PostgresStore::open(&url, &options, Arc::new(Sealer::ephemeral()))
            .await
            .unwrap();
        store
            .write(|c| {
                c.execute("CREATE TABLE scratch (n BIGINT NOT NULL UNIQUE)", &[])?;
                Ok(())
            })
            .await
            .unwrap();
        store
    }

    async fn scratch_rows(store: &PostgresStore) -> Vec<i64> {
        store
            .read(|c| {
                Ok(c.query("SELECT n FROM scratch ORDER BY n", &[])?
                    .iter()
                    .map(|r| r.get(0))
                    .collect())
            })
            .await
            .unwrap()
    }

    fn insert(c: &mut Tx<'_>, n: i64) -> DbResult<()> {
        c.execute("INSERT INTO scratch (n) VALUES ($1)", &[&n])?;
        Ok(())
    }

    /// Holds the writer until `queued` writes wait behind it, then lets `writes` finish:
    /// they make one group.
    async fn in_one_group<T>(
        store: &PostgresStore,
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

    /// A checked write that fails on its own checks costs the others of its group nothing,
    /// and neither does a savepoint write whose statement the server refused.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_that_fails_undoes_only_itself() {
        let store = scratch_store().await;
        let (a, b, c, d) = in_one_group(&store, 4, async {
            tokio::join!(
                store.write_checked(|c| insert(c, 1)),
                store
                    .write_checked(|_| Err::<(), _>(StoreError::Conflict("refused".into()).into())),
                store.write(|c| {
                    insert(c, 2)?;
                    // The server refuses this one: the row is there already.
                    insert(c, 2)
                }),
                store.write_checked(|c| insert(c, 3)),
            )
        })
        .await;
        assert!(a.is_ok() && d.is_ok(), "{a:?} {d:?}");
        assert!(matches!(b, Err(StoreError::Conflict(_))), "{b:?}");
        assert!(matches!(c, Err(StoreError::Internal(_))), "{c:?}");
        assert_eq!(scratch_rows(&store).await, [1, 3]);
        store.close().await;
    }

    /// Claims commit without waiting for the flush; every other write waits for it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_the_lease_writer_commits_without_the_flush() {
        let store = scratch_store().await;
        let setting = |tx: &mut Tx<'_>| -> DbResult<String> {
            Ok(tx.query_one("SHOW synchronous_commit", &[])?.get(0))
        };
        assert_eq!(store.write_lease(setting).await.unwrap(), "off");
        assert_eq!(store.write(setting).await.unwrap(), "on");
        assert_eq!(store.write_aside(setting).await.unwrap(), "on");
    }

    /// A checked write whose statement the server refused has aborted the transaction:
    /// every write of its group fails and none is kept, and the writer goes on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_checked_write_the_server_refuses_undoes_its_group() {
        let store = scratch_store().await;
        let (a, b, c) = in_one_group(&store, 3, async {
            tokio::join!(
                store.write_checked(|c| insert(c, 1)),
                store.write_checked(|c| {
                    insert(c, 2)?;
                    insert(c, 2)
                }),
                store.write(|c| insert(c, 3)),
            )
        })
        .await;
        for result in [a, b, c] {
            assert!(matches!(result, Err(StoreError::Internal(_))), "{result:?}");
        }
        assert!(scratch_rows(&store).await.is_empty());
        store.write_checked(|c| insert(c, 4)).await.unwrap();
        assert_eq!(scratch_rows(&store).await, [4]);
        // So does one that changed rows and then refused on a check of its own.
        let (a, b) = in_one_group(&store, 2, async {
            tokio::join!(
                store.write_checked(|c| insert(c, 5)),
                store.write_checked(|c| {
                    insert(c, 6)?;
                    Err::<(), _>(StoreError::Conflict("refused after writing".into()).into())
                }),
            )
        })
        .await;
        for result in [a, b] {
            assert!(matches!(result, Err(StoreError::Internal(_))), "{result:?}");
        }
        assert_eq!(scratch_rows(&store).await, [4]);
        store.close().await;
    }

    /// The requests of one group are stored in one pass, each as if alone in its turn: a
    /// request sees what an earlier one of the group stored, and one refused by the rules
    /// changes nothing while the others of its group are kept.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_group_of_requests_is_stored_in_one_pass_each_in_its_turn() {
        use merpati_store_contract::support::{endpoint, sms, tree, Room, T0};
        let url = tokio::task::spawn_blocking(|| server().empty_database().unwrap())
            .await
            .unwrap();
        let store = Arc::new(
            PostgresStore::open(&url, &one_writer(), Arc::new(Sealer::ephemeral()))
                .await
                .unwrap(),
        );
        let shared: merpati_domain::SharedStore = store.clone();
        let t = tree(&shared, "acct", 2).await;
        endpoint(&shared, &t.account, "ep", |_| {}).await;
        let (d0, d1) = (&t.devices[0], &t.devices[1]);
        let ingest = |d: &Arc<merpati_domain::device::DeviceContext>, items| {
            shared.ingest(d.clone(), items, T0, Room::none())
        };
        let (first, again, reused, other) = in_one_group(&store, 4, async {
            tokio::join!(
                ingest(d0, vec![sms(d0, 1, "hello"), sms(d0, 2, "world")]),
                ingest(d0, vec![sms(d0, 2, "world"), sms(d0, 3, "new")]),
                ingest(d0, vec![sms(d0, 4, "fine"), sms(d0, 1, "changed")]),
                ingest(d1, vec![sms(d1, 1, "hello")]),
            )
        })
        .await;
        let (first, again, other) = (first.unwrap(), again.unwrap(), other.unwrap());
        assert!(first.items.iter().all(|i| i.new));
        assert_eq!(
            again.items[0].id, first.items[1].id,
            "the earlier request's event"
        );
        assert!(!again.items[0].new && again.items[1].new);
        assert!(again.items[1].id > first.items[1].id);
        assert!(matches!(reused, Err(StoreError::Conflict(_))), "{reused:?}");
        assert!(other.items[0].new, "another device's rid 1 is its own");
        let events: i64 = store
            .read(|c| Ok(c.query_one("SELECT COUNT(*) FROM events", &[])?.get(0)))
            .await
            .unwrap();
        let deliveries: i64 = store
            .read(|c| Ok(c.query_one("SELECT COUNT(*) FROM deliveries", &[])?.get(0)))
            .await
            .unwrap();
        assert_eq!(
            (events, deliveries),
            (4, 4),
            "rid 4 of the refused request is not kept"
        );
        store.close().await;
    }

    /// A server that goes away fails what is under way as unavailable (callers answer 503),
    /// and once it is back the writer and the readers connect again by themselves.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_store_connects_again_after_the_server_comes_back() {
        let (server, url) = tokio::task::spawn_blocking(|| {
            let server = ScratchServer::start(Default::default()).unwrap();
            let url = server.empty_database().unwrap();
            (server, url)
        })
        .await
        .unwrap();
        // Two writers: each must find its connection gone and make it again.
        let two_writers = Options {
            writers: 2,
            ..Options::default()
        };
        let store = PostgresStore::open(&url, &two_writers, Arc::new(Sealer::ephemeral()))
            .await
            .unwrap();
        store
            .write(|c| {
                c.execute("CREATE TABLE scratch (n BIGINT NOT NULL UNIQUE)", &[])?;
                Ok(())
            })
            .await
            .unwrap();
        store.write(|c| insert(c, 1)).await.unwrap();
        let server = tokio::task::spawn_blocking(move || {
            server.stop(true);
            server
        })
        .await
        .unwrap();
        let down = store.write(|c| insert(c, 2)).await;
        assert!(matches!(down, Err(StoreError::Unavailable(_))), "{down:?}");
        assert!(matches!(
            store.ping().await,
            Err(StoreError::Unavailable(_))
        ));
        let server = tokio::task::spawn_blocking(move || {
            server.run().unwrap();
            server
        })
        .await
        .unwrap();
        store.write(|c| insert(c, 3)).await.unwrap();
        store.ping().await.unwrap();
        assert_eq!(scratch_rows(&store).await, [1, 3]);
        store.close().await;
        drop(server);
    }
}
