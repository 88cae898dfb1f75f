//! The writers: each owns a connection and commits in groups. It takes every write waiting
//! in the queue, runs each inside one transaction and commits once (while another writer
//! takes the next writes and runs them on its own connection); with
//! `synchronous_commit` on, the commit's answer means durable, and only then is each
//! caller answered. One failing write never undoes another: each runs in a savepoint of
//! its own, except the hot ones that check everything before they change anything and so
//! need none.
//!
//! What the writer keeps is its [`WriterState`], read inside a group and emptied at the
//! group's end, but for what it read of endpoints: other nodes write too, so that is
//! checked at the start of each transaction (`EndpointCache`).

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use merpati_domain::endpoint::{Subscription, Target};
use merpati_domain::ids::{AccountId, EndpointId};
use merpati_domain::StoreError;
use tokio::sync::{mpsc, oneshot};

use crate::conn::{Conn, KeptConn, Outages, Param, Server};
use crate::endpoint_cache::EndpointCache;
use crate::error::{connection_lost, is_broken, postgres_error, DbError, DbResult};
use crate::outbox::Outbox;
use merpati_domain::commit_stats::CommitStats;

/// At most this many writes share one commit.
pub(crate) const MAX_GROUP: usize = 512;
pub(crate) const WRITE_QUEUE: usize = 8192;

/// What the writer reads once in a group and uses for every write of it.
#[derive(Default)]
pub(crate) struct WriterState {
    pub(crate) endpoints: EndpointCache,
    /// Event numbers and delivery ids taken from their sequences for the write under way
    /// and not used yet (taken many at a time, never kept for another write: a device's
    /// next request, on whichever node, must get greater numbers).
    seqs: std::collections::VecDeque<i64>,
    delivery_ids: std::collections::VecDeque<i64>,
    /// The write's new events and deliveries, sent as arrays when it is done.
    pub(crate) outbox: Outbox,
    /// Whether the write under way has run a statement that changes rows.
    wrote: bool,
    /// Device queues the transaction holds (`fanout::lock_queues`).
    pub(crate) locked_queues: std::collections::HashSet<String>,
    /// The group runs without a transaction until a statement needs one
    /// (`Tx::open_transaction`): a group of requests alone, whose one write is the outbox's
    /// statement, commits with that statement.
    deferred_begin: bool,
}

impl WriterState {
    /// Empties what the writer keeps, when a write is undone or the group ends.
    pub(crate) fn forget(&mut self) {
        self.endpoints.forget();
        // A write undone gave back the locks it took; what is no longer known held is
        // taken again if needed.
        self.locked_queues.clear();
        self.end_write();
    }

    /// The group's transaction committed: what it read of endpoints stays, to be checked
    /// by the next (`EndpointCache`); its locks are gone with it.
    fn end_group(&mut self) {
        self.endpoints.end_transaction();
        self.locked_queues.clear();
        self.end_write();
    }

    /// What one write alone may use.
    fn end_write(&mut self) {
        self.wrote = false;
        self.seqs.clear();
        self.delivery_ids.clear();
        self.outbox.clear();
    }
}

/// A write's view of the writer: its connection, inside the open transaction, the
/// writer's state and the sealer.
pub(crate) struct Tx<'a> {
    conn: &'a mut Conn,
    pub(crate) state: &'a mut WriterState,
}

impl<'a> Tx<'a> {
    pub(crate) fn new(conn: &'a mut Conn, state: &'a mut WriterState) -> Self {
        Tx { conn, state }
    }

    /// An account's endpoints, as fan-out matches events against them.
    pub(crate) fn subscriptions(
        &mut self,
        account: &AccountId,
    ) -> DbResult<Arc<Vec<Subscription>>> {
        self.state.endpoints.subscriptions(self.conn, account)
    }

    /// Where deliveries to the endpoint go, with the secrets live at `now`.
    pub(crate) fn target(&mut self, endpoint: &EndpointId, now: i64) -> DbResult<Arc<Target>> {
        self.state.endpoints.target(self.conn, endpoint, now)
    }

    /// Rows changed. A statement that changes endpoints or their secrets empties what the
    /// group read of them.
    pub(crate) fn execute(&mut self, sql: &str, params: &[Param<'_>]) -> DbResult<u64> {
        self.note(sql);
        self.conn.execute(sql, params)
    }

    pub(crate) fn query(
        &mut self,
        sql: &str,
        params: &[Param<'_>],
    ) -> DbResult<Vec<postgres::Row>> {
        self.note(sql);
        self.conn.query(sql, params)
    }

    pub(crate) fn query_opt(
        &mut self,
        sql: &str,
        params: &[Param<'_>],
    ) -> DbResult<Option<postgres::Row>> {
        self.note(sql);
        self.conn.query_opt(sql, params)
    }

    pub(crate) fn query_one(&mut self, sql: &str, params: &[Param<'_>]) -> DbResult<postgres::Row> {
        self.note(sql);
        self.conn.query_one(sql, params)
    }

    /// Makes sure the write has at least `events` event numbers and `deliveries` delivery
    /// ids in hand, taking what is missing of both from their sequences in one round trip.
    /// Numbers a write took and did not use are skipped.
    pub(crate) fn reserve(&mut self, events: usize, deliveries: usize) -> DbResult<()> {
        let need_events = events.saturating_sub(self.state.seqs.len()) as i64;
        let need_deliveries = deliveries.saturating_sub(self.state.delivery_ids.len()) as i64;
        if need_events == 0 && need_deliveries == 0 {
            return Ok(());
        }
        let row = self.conn.query_one(
            "SELECT ARRAY(SELECT nextval('event_numbers') FROM generate_series(1, $1::BIGINT)),
                    ARRAY(SELECT nextval('delivery_numbers')
                          FROM generate_series(1, $2::BIGINT))",
            &[&need_events, &need_deliveries],
        )?;
        self.state.seqs.extend(row.get::<_, Vec<i64>>(0));
        self.state.delivery_ids.extend(row.get::<_, Vec<i64>>(1));
        Ok(())
    }

    /// Event numbers and delivery ids taken by a statement of the write's own.
    pub(crate) fn take_numbers(&mut self, seqs: Vec<i64>, delivery_ids: Vec<i64>) {
        self.state.seqs.extend(seqs);
        self.state.delivery_ids.extend(delivery_ids);
    }

    /// The next event number (in hand, or taken now).
    pub(crate) fn next_seq(&mut self) -> DbResult<i64> {
        self.reserve(1, 0)?;
        Ok(self.state.seqs.pop_front().expect("a number in hand"))
    }

    /// The next delivery id (in hand, or taken now).
    pub(crate) fn next_delivery_id(&mut self) -> DbResult<i64> {
        self.reserve(0, 1)?;
        Ok(self.state.delivery_ids.pop_front().expect("an id in hand"))
    }

    /// Opens the group's transaction, if it runs without one so far: before a statement
    /// whose effect must last until the commit (a lock), or that must commit with others.
    pub(crate) fn open_transaction(&mut self) -> DbResult<()> {
        if self.state.deferred_begin {
            self.conn.batch("BEGIN")?;
            self.state.deferred_begin = false;
        }
        Ok(())
    }

    /// Sends the write's new events and deliveries.
    pub(crate) fn flush(&mut self) -> DbResult<()> {
        let outbox = std::mem::take(&mut self.state.outbox);
        outbox.flush(self.conn)
    }

    pub(crate) fn conn(&mut self) -> &mut Conn {
        self.conn
    }

    /// Seals a secret for its column and owner.
    pub(crate) fn seal(&self, context: &str, plain: &str) -> String {
        self.conn.seal(context, plain)
    }

    pub(crate) fn open(&self, context: &str, sealed: &str) -> DbResult<String> {
        self.conn.open(context, sealed)
    }
}

impl Tx<'_> {
    /// What a statement about to run means for the write: it changes rows, and perhaps
    /// endpoints (what the group read of them goes).
    fn note(&mut self, sql: &str) {
        let s = sql.trim_start();
        if ["INSERT", "UPDATE", "DELETE", "WITH"]
            .iter()
            .any(|w| s.starts_with(w))
        {
            self.state.wrote = true;
        }
        if changes_endpoints(sql) {
            self.state.endpoints.forget();
        }
    }
}

/// Whether a statement writes endpoints, their secrets, or the accounts owning them.
fn changes_endpoints(sql: &str) -> bool {
    let s = sql.trim_start();
    let writes = s.starts_with("INSERT")
        || s.starts_with("UPDATE")
        || s.starts_with("DELETE")
        || s.starts_with("WITH");
    writes
        && (s.contains(" endpoints") || s.contains(" endpoint_secrets") || s.contains(" accounts"))
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
    /// For a group pass to find the writes it stores itself.
    fn as_any(&mut self) -> &mut dyn std::any::Any;
    /// Stored already, by the group pass.
    fn done(&self) -> bool {
        false
    }
    /// Stored by the group pass, whose reads need no transaction and whose one write is
    /// the outbox's statement (unless it opens one).
    fn stored_by_pass(&self) -> bool {
        false
    }
    /// It ran a statement that changes rows (before it failed, for a checked write).
    fn wrote(&self) -> bool {
        false
    }
    /// Answers the caller once the commit's fate is known, or that it cannot be
    /// (`StoreError::Unanswered`).
    fn finish(self: Box<Self>, commit: Result<(), StoreError>);
}

pub(crate) struct Job<F, R, T> {
    f: Option<F>,
    guard: Guard,
    result: Option<Result<R, StoreError>>,
    /// It ran a statement that changes rows.
    wrote: bool,
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
            wrote: false,
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
        tx.state.end_write();
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
            f(tx).and_then(|r| tx.flush().map(|()| r))
        }))
        .map(|r| r.map_err(StoreError::from))
        .unwrap_or_else(|_| Err(StoreError::Internal("a write panicked".into())));
        self.wrote = tx.state.wrote;
        tx.state.end_write();
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

    fn as_any(&mut self) -> &mut dyn std::any::Any {
        self
    }

    fn wrote(&self) -> bool {
        self.wrote
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

/// The writer thread: takes every write waiting, runs them as one group, answers them once
/// the commit is durable. A lost connection is made again before the next group.
/// The writers' shared queue: each writer takes a group from it in turn.
pub(crate) type Queue = Arc<std::sync::Mutex<mpsc::Receiver<Box<dyn WriteJob>>>>;

/// What every writer of a store shares.
pub(crate) struct Writers {
    pub(crate) server: Server,
    pub(crate) queue: Queue,
    pub(crate) stats: Arc<CommitStats>,
    pub(crate) pass: GroupPass,
    pub(crate) commit: Commit,
    pub(crate) outages: Outages,
}

/// Takes every write waiting (the first waited for), up to a group's worth.
fn next_group(queue: &Queue) -> Option<Vec<Box<dyn WriteJob>>> {
    let mut queue = queue.lock().expect("write queue lock");
    let first = queue.blocking_recv()?;
    let mut group = vec![first];
    while group.len() < MAX_GROUP {
        match queue.try_recv() {
            Ok(job) => group.push(job),
            Err(_) => break,
        }
    }
    Some(group)
}

pub(crate) fn writer_loop(w: &Writers, conn: Option<Conn>) {
    let Writers {
        server,
        queue,
        stats,
        pass,
        commit,
        outages,
    } = w;
    let mut state = WriterState::default();
    let mut conn = KeptConn::new(conn, outages.clone());
    while let Some(mut group) = next_group(queue) {
        let c = match conn.get(server) {
            Ok(c) => c,
            Err(e) => {
                let e = postgres_error(&e);
                for job in group {
                    job.finish(Err(e.clone()));
                }
                continue;
            }
        };
        let started = std::time::Instant::now();
        let committed = run_group(c, &mut state, &mut group, *pass, *commit);
        if committed.is_ok() {
            state.end_group();
        } else {
            state.forget();
        }
        conn.used();
        match committed {
            Ok(()) => {
                stats.observe(started.elapsed());
                for job in group {
                    job.finish(Ok(()));
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

/// A failed commit: unanswered when its connection was lost before the server answered,
/// for it may have been made.
fn commit_lost(e: DbError) -> StoreError {
    if connection_lost(&e) {
        return StoreError::Unanswered(StoreError::from(e).to_string());
    }
    commit_failed(e)
}

fn commit_failed(e: DbError) -> StoreError {
    match StoreError::from(e) {
        StoreError::Internal(message) => StoreError::Internal(format!("commit failed: {message}")),
        retryable => retryable,
    }
}

/// What runs over a whole group before its writes run one by one (storing many requests in
/// one pass); the writes it stores it marks done.
pub(crate) type GroupPass = fn(&mut Tx<'_>, &mut [Box<dyn WriteJob>]) -> DbResult<()>;

/// How a writer's groups commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Commit {
    /// Answered once the commit is on disk (`synchronous_commit` on).
    Durable,
    /// Answered before the flush: for leases, which a crash may lose without harm.
    WithoutFlush,
}

impl Commit {
    /// What opens a group's transaction, in one round trip either way.
    fn begin(self) -> &'static str {
        match self {
            Commit::Durable => "BEGIN",
            Commit::WithoutFlush => "BEGIN; SET LOCAL synchronous_commit TO OFF",
        }
    }
}

pub(crate) fn run_group(
    conn: &mut Conn,
    state: &mut WriterState,
    group: &mut [Box<dyn WriteJob>],
    pass: GroupPass,
    commit: Commit,
) -> Result<(), StoreError> {
    let rollback = |conn: &mut Conn| {
        if let Err(DbError::Postgres(e)) = conn.batch("ROLLBACK") {
            if is_broken(&e) {
                tracing::warn!(error = %e, "the writer's connection is lost");
            }
        }
    };
    // Requests alone: their reads go without a transaction, and their one write, if none
    // was opened meanwhile, commits by itself: two round trips fewer, BEGIN and COMMIT.
    let deferred = commit == Commit::Durable && group.iter().all(|j| j.stored_by_pass());
    if deferred {
        state.deferred_begin = true;
    } else {
        conn.batch(commit.begin()).map_err(commit_failed)?;
    }
    state.end_write();
    let passed = {
        let mut tx = Tx::new(conn, state);
        pass(&mut tx, group).and_then(|()| tx.flush())
    };
    state.end_write();
    let in_transaction = !std::mem::take(&mut state.deferred_begin);
    if let Err(e) = passed {
        state.forget();
        if in_transaction {
            rollback(conn);
            return Err(commit_failed(e));
        }
        // Without a transaction, the write commits as it runs.
        return Err(commit_lost(e));
    }
    if !in_transaction {
        debug_assert!(group.iter().all(|j| j.done()));
        return Ok(());
    }
    for job in group.iter_mut() {
        if job.done() {
            continue;
        }
        if job.guard() == Guard::ChecksFirst {
            // A write that failed on its own checks before changing anything leaves the
            // transaction as it was. One that changed rows and then failed, or whose
            // statement the server refused (which aborts the transaction), is undone only
            // with the whole group; a retryable refusal (a lost connection, a deadlock)
            // lets every write of the group be sent again.
            if !job.run(&mut Tx::new(conn, state))
                && (job.wrote() || conn.batch("SELECT 1").is_err())
            {
                state.forget();
                rollback(conn);
                return Err(match job.failure() {
                    Some(retryable @ StoreError::Unavailable(_)) => retryable,
                    _ => StoreError::Internal(
                        "a write failed after changing rows; its group is undone".into(),
                    ),
                });
            }
            continue;
        }
        let step = conn.batch("SAVEPOINT job").and_then(|()| {
            if job.run(&mut Tx::new(conn, state)) {
                conn.batch("RELEASE job")
            } else {
                state.forget();
                conn.batch("ROLLBACK TO job; RELEASE job")
            }
        });
        if let Err(e) = step {
            state.forget();
            rollback(conn);
            return Err(commit_failed(e));
        }
    }
    conn.batch("COMMIT").map_err(|e| {
        state.forget();
        rollback(conn);
        commit_lost(e)
    })
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    /// A write the test's pass stores.
    struct Stored {
        by_pass: bool,
        done: bool,
    }

    impl WriteJob for Stored {
        fn guard(&self) -> Guard {
            Guard::ChecksFirst
        }
        fn run(&mut self, _: &mut Tx<'_>) -> bool {
            self.done = true;
            true
        }
        fn failure(&self) -> Option<StoreError> {
            None
        }
        fn as_any(&mut self) -> &mut dyn std::any::Any {
            self
        }
        fn done(&self) -> bool {
            self.done
        }
        fn stored_by_pass(&self) -> bool {
            self.by_pass
        }
        fn finish(self: Box<Self>, _: Result<(), StoreError>) {}
    }

    /// Two statements in one transaction share its id.
    fn in_transaction(tx: &mut Tx<'_>) -> bool {
        let mut id = || -> i64 { tx.query_one("SELECT txid_current()", &[]).unwrap().get(0) };
        id() == id()
    }

    fn group(by_pass: &[bool]) -> Vec<Box<dyn WriteJob>> {
        by_pass
            .iter()
            .map(|&by_pass| {
                Box::new(Stored {
                    by_pass,
                    done: false,
                }) as Box<dyn WriteJob>
            })
            .collect()
    }

    /// A group of requests alone runs without a transaction until a statement needs one;
    /// any other group, or a lock, runs in one, committed at the end either way.
    #[test]
    fn requests_alone_commit_with_their_one_write_and_a_lock_opens_a_transaction() {
        let url = crate::scratch::shared().empty_database().unwrap();
        let mut conn = Conn::connect(&Server::plain(&url)).unwrap();
        conn.batch("CREATE TABLE t (n INT)").unwrap();
        let mut state = WriterState::default();
        // Whether the pass's statements ran inside a transaction.
        thread_local!(static SEEN: Cell<Option<bool>> = const { Cell::new(None) });
        fn store(tx: &mut Tx<'_>, group: &mut [Box<dyn WriteJob>], lock: bool) -> DbResult<()> {
            tx.query_one("SELECT 1", &[])?;
            if lock {
                tx.open_transaction()?;
                tx.query_one("SELECT pg_advisory_xact_lock(7)", &[])?;
            }
            SEEN.with(|s| s.set(Some(in_transaction(tx))));
            tx.execute("INSERT INTO t VALUES (1)", &[])?;
            for job in group.iter_mut().filter(|j| j.stored_by_pass()) {
                job.run(tx);
            }
            Ok(())
        }
        fn plain(tx: &mut Tx<'_>, group: &mut [Box<dyn WriteJob>]) -> DbResult<()> {
            store(tx, group, false)
        }
        fn locking(tx: &mut Tx<'_>, group: &mut [Box<dyn WriteJob>]) -> DbResult<()> {
            store(tx, group, true)
        }
        let mut ran = |jobs: &[bool], pass: GroupPass, commit: Commit| {
            SEEN.with(|s| s.set(None));
            run_group(&mut conn, &mut state, &mut group(jobs), pass, commit).unwrap();
            SEEN.with(|s| s.get()).expect("the pass ran")
        };
        assert!(
            !ran(&[true, true], plain, Commit::Durable),
            "requests alone"
        );
        assert!(
            ran(&[true, true], locking, Commit::Durable),
            "a lock opened one"
        );
        assert!(ran(&[true, false], plain, Commit::Durable), "another write");
        assert!(
            ran(&[true], plain, Commit::WithoutFlush),
            "a lease writer's"
        );
        // Every group committed, and none is left open.
        let rows: i64 = conn
            .query_one("SELECT COUNT(*) FROM t", &[])
            .unwrap()
            .get(0);
        assert_eq!(rows, 4);
        let id = |conn: &mut Conn| -> i64 {
            conn.query_one("SELECT txid_current()", &[]).unwrap().get(0)
        };
        assert_ne!(id(&mut conn), id(&mut conn));
    }
    /// A group whose write commits as it runs (requests alone) and loses its connection
    /// meanwhile may be stored: it is told unanswered. One in a transaction is not stored,
    /// nor is one whose statement the server refused.
    #[test]
    fn a_write_that_commits_as_it_runs_and_loses_its_connection_is_unanswered() {
        let url = crate::scratch::shared().empty_database().unwrap();
        fn lost(tx: &mut Tx<'_>, _: &mut [Box<dyn WriteJob>]) -> DbResult<()> {
            tx.query_one("SELECT pg_terminate_backend(pg_backend_pid())", &[])?;
            Ok(())
        }
        fn refused(tx: &mut Tx<'_>, _: &mut [Box<dyn WriteJob>]) -> DbResult<()> {
            tx.query_one("SELECT 1 / 0", &[])?;
            Ok(())
        }
        let run = |jobs: &[bool], pass: GroupPass| {
            let mut conn = Conn::connect(&Server::plain(&url)).unwrap();
            let mut state = WriterState::default();
            run_group(
                &mut conn,
                &mut state,
                &mut group(jobs),
                pass,
                Commit::Durable,
            )
            .expect_err("the group failed")
        };
        let failed = run(&[true], lost);
        assert!(matches!(failed, StoreError::Unanswered(_)), "{failed:?}");
        let failed = run(&[true, false], lost);
        assert!(
            matches!(failed, StoreError::Unavailable(_)),
            "in a transaction, never committed: {failed:?}"
        );
        let failed = run(&[true], refused);
        assert!(
            matches!(failed, StoreError::Internal(_)),
            "refused, never committed: {failed:?}"
        );
    }
}
