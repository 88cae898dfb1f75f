//! The writer: one thread owns the only write connection and commits in groups. It takes
//! every write waiting in its queue, runs each inside one transaction and commits once. One
//! failing write never undoes another: each runs in a savepoint of its own, except the hot
//! ones that check everything before they change anything and so need none. The syncer
//! thread then makes the log durable (one fsync for every group committed meanwhile) and
//! only then answers each caller, while the writer goes on with the next group.
//!
//! What the writer keeps between writes (the endpoint cache, the next event number) is its
//! [`WriterState`], handed to every write as part of its [`Tx`] and emptied whenever a write
//! is undone.

use std::panic::AssertUnwindSafe;

use std::sync::Arc;

use merpati_domain::endpoint::{Subscription, Target};
use merpati_domain::ids::{AccountId, EndpointId};
use merpati_domain::StoreError;
use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use crate::checkpoint;
use crate::endpoint_cache::EndpointCache;
use crate::error::{closed, sqlite_error, DbResult};
use merpati_domain::commit_stats::CommitStats;

/// At most this many writes share one commit.
pub(crate) const MAX_GROUP: usize = 512;
pub(crate) const WRITE_QUEUE: usize = 8192;
/// Committed groups waiting for the syncer; beyond this the writer waits for the disk.
pub(crate) const SYNC_QUEUE: usize = 64;

/// What the writer keeps of the database between writes: only it writes, so what it read
/// stays true until it changes it, or a write is undone.
pub(crate) struct WriterState {
    pub(crate) endpoints: EndpointCache,
    /// The number the writer gives its next event, once it has read it.
    pub(crate) next_seq: Option<i64>,
}

impl WriterState {
    pub(crate) fn new(endpoints: EndpointCache) -> WriterState {
        WriterState {
            endpoints,
            next_seq: None,
        }
    }

    /// Empties what the writer keeps, when a write is undone.
    pub(crate) fn forget(&mut self) {
        self.endpoints.forget();
        self.next_seq = None;
    }
}

/// A write's view of the writer: its connection, inside the open transaction, and the
/// writer's state.
pub(crate) struct Tx<'a> {
    conn: &'a Connection,
    pub(crate) state: &'a mut WriterState,
}

impl<'a> Tx<'a> {
    pub(crate) fn new(conn: &'a Connection, state: &'a mut WriterState) -> Tx<'a> {
        Tx { conn, state }
    }

    pub(crate) fn conn(&self) -> &'a Connection {
        self.conn
    }

    /// An account's endpoints, as fan-out matches events against them (the writer's copy).
    pub(crate) fn subscriptions(
        &mut self,
        account: &AccountId,
    ) -> DbResult<Arc<Vec<Subscription>>> {
        self.state.endpoints.subscriptions(self.conn, account)
    }

    /// Where deliveries to the endpoint go, with the secrets live at `now` (the writer's
    /// copy).
    pub(crate) fn target(&mut self, endpoint: &EndpointId, now: i64) -> DbResult<Arc<Target>> {
        self.state.endpoints.target(self.conn, endpoint, now)
    }
}

impl std::ops::Deref for Tx<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        self.conn
    }
}

/// How a write that fails is undone without undoing the others in its group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Guard {
    /// Its own savepoint, rolled back on failure.
    Savepoint,
    /// None needed: it fails only before changing anything.
    ChecksFirst,
}

pub(crate) trait WriteJob: Send {
    fn guard(&self) -> Guard;
    /// Runs inside the open transaction; true when the work should be kept.
    fn run(&mut self, tx: &mut Tx<'_>) -> bool;
    /// Why it failed, once it ran and failed.
    fn failure(&self) -> Option<StoreError>;
    /// Answers the caller once the commit's fate is known.
    fn finish(self: Box<Self>, commit: Result<(), StoreError>);
}

pub(crate) struct Job<F, R, T> {
    f: Option<F>,
    guard: Guard,
    result: Option<Result<R, StoreError>>,
    committed: fn(R) -> T,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<F, R, T> Job<F, R, T> {
    pub(crate) fn new(
        f: F,
        guard: Guard,
        committed: fn(R) -> T,
    ) -> (Self, oneshot::Receiver<Result<T, StoreError>>) {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            f: Some(f),
            guard,
            result: None,
            committed,
            reply,
        };
        (job, answer)
    }
}

impl<F, R, T> WriteJob for Job<F, R, T>
where
    R: Send + 'static,
    T: Send + 'static,
    F: FnOnce(&mut Tx<'_>) -> DbResult<R> + Send + 'static,
{
    fn guard(&self) -> Guard {
        self.guard
    }

    fn run(&mut self, tx: &mut Tx<'_>) -> bool {
        let Some(f) = self.f.take() else {
            return false;
        };
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| f(tx)))
            .map(|r| r.map_err(StoreError::from))
            .unwrap_or_else(|_| Err(StoreError::Internal("a write panicked".into())));
        let keep = result.is_ok();
        self.result = Some(result);
        keep
    }

    fn failure(&self) -> Option<StoreError> {
        match &self.result {
            Some(Err(e)) => Some(e.clone()),
            _ => None,
        }
    }

    fn finish(self: Box<Self>, commit: Result<(), StoreError>) {
        let answer = match commit {
            Ok(()) => self
                .result
                .unwrap_or_else(|| Err(StoreError::Internal("the write did not run".into())))
                .map(self.committed),
            Err(e) => Err(e),
        };
        let _ = self.reply.send(answer);
    }
}

/// A group's commit failed: what the caller is told, by what the database said (a full
/// disk or a busy database may take the write later; anything else is the store's fault).
fn commit_failed(e: &rusqlite::Error) -> StoreError {
    match sqlite_error(e) {
        StoreError::Internal(message) => StoreError::Internal(format!("commit failed: {message}")),
        retryable => retryable,
    }
}

/// The log could not be made durable: a full disk may take it later.
fn sync_failed(e: &std::io::Error) -> StoreError {
    let message = format!("cannot sync the write-ahead log: {e}");
    if e.raw_os_error() == Some(28) {
        StoreError::Unavailable(format!("the disk is full: {message}"))
    } else {
        StoreError::Internal(message)
    }
}

/// A committed group on its way to the syncer, and when its transaction began.
pub(crate) struct Group {
    jobs: Vec<Box<dyn WriteJob>>,
    began: std::time::Instant,
}

/// The writer thread: takes every write waiting, runs them as one group, hands the group
/// to the syncer.
pub(crate) fn writer_loop(
    conn: Connection,
    mut state: WriterState,
    mut queue: mpsc::Receiver<Box<dyn WriteJob>>,
    to_sync: std::sync::mpsc::SyncSender<Group>,
    mut background: checkpoint::Background,
) {
    while let Some(first) = queue.blocking_recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match queue.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let started = std::time::Instant::now();
        let committed = run_group(&conn, &mut state, &mut group);
        background.after_group(started.elapsed());
        match committed {
            Ok(()) => {
                let group = Group {
                    jobs: group,
                    began: started,
                };
                if let Err(unsent) = to_sync.send(group) {
                    for job in unsent.0.jobs {
                        job.finish(Err(closed()));
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, jobs = group.len(), "group commit failed");
                for job in group {
                    job.finish(Err(e.clone()));
                }
            }
        }
    }
}

/// Makes committed groups durable, as many at a time as have committed, then answers them.
pub(crate) fn sync_loop(
    log: std::fs::File,
    sync: bool,
    committed: std::sync::mpsc::Receiver<Group>,
    stats: std::sync::Arc<CommitStats>,
) {
    while let Ok(first) = committed.recv() {
        let mut groups = vec![first];
        groups.extend(committed.try_iter());
        let synced = if sync {
            log.sync_data().map_err(|e| sync_failed(&e))
        } else {
            Ok(())
        };
        if let Err(e) = &synced {
            tracing::error!(error = %e, "commit not durable");
        }
        for group in groups {
            if synced.is_ok() {
                stats.observe(group.began.elapsed());
            }
            for job in group.jobs {
                job.finish(synced.clone());
            }
        }
    }
}

pub(crate) fn run_group(
    conn: &Connection,
    state: &mut WriterState,
    group: &mut [Box<dyn WriteJob>],
) -> Result<(), StoreError> {
    let exec = |sql: &str| -> Result<(), StoreError> {
        conn.prepare_cached(sql)
            .and_then(|mut s| s.execute([]))
            .map(|_| ())
            .map_err(|e| commit_failed(&e))
    };
    // What the writer keeps is read inside writes that may be undone: it goes with them.
    let undo = WriterState::forget;
    exec("BEGIN IMMEDIATE")?;
    for job in group.iter_mut() {
        if job.guard() == Guard::ChecksFirst {
            let before = conn.total_changes();
            let failed = !job.run(&mut Tx::new(conn, state));
            // SQLite ends the transaction itself on some errors (a full disk, say).
            if failed && (conn.total_changes() != before || conn.is_autocommit()) {
                // It changed rows and then failed: only the whole transaction undoes that.
                undo(state);
                let _ = exec("ROLLBACK");
                // A full disk or a busy database undoes the group, and every write in it
                // may be sent again.
                return Err(match job.failure() {
                    Some(retryable @ StoreError::Unavailable(_)) => retryable,
                    _ => StoreError::Internal(
                        "a write failed after changing rows; its group is undone".into(),
                    ),
                });
            }
            continue;
        }
        let step = exec("SAVEPOINT job").and_then(|()| {
            if job.run(&mut Tx::new(conn, state)) {
                exec("RELEASE job")
            } else {
                undo(state);
                exec("ROLLBACK TO job").and_then(|()| exec("RELEASE job"))
            }
        });
        if let Err(e) = step {
            undo(state);
            let _ = exec("ROLLBACK");
            return Err(e);
        }
    }
    exec("COMMIT").inspect_err(|_| {
        undo(state);
        let _ = exec("ROLLBACK");
    })
}
