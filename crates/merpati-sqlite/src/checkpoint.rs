//! Copying the write-ahead log back into the database beside the writer, in steps.
//!
//! SQLite checkpoints inside the commit that takes the log past a set number of frames: it
//! syncs the log, copies back every page written since the last checkpoint, syncs the
//! database, and every write queued behind that commit waits. At 2,000 events a second that
//! was five stalls a second of 10–15 ms, most of it the database's sync.
//!
//! Here a thread of its own runs a passive checkpoint each time the log grows by `STEP`
//! frames and then syncs the database, while the writer goes on committing. The writer's
//! own checkpoint, at `WRITER_CHECKPOINT` frames, then has only the last step to copy and
//! to sync; it is still the one that reaches the log's end, which lets the next commit
//! start the log over. Only a writer with time to spare asks for the passes: under full
//! load their syncs of the database slow the syncer's syncs of the log by more than they
//! save the writer.
//!
//! Both are SQLite's own checkpoints, so what keeps the database whole is SQLite's: a
//! checkpoint syncs the log before it copies a frame, and syncs the database before it
//! records that the log has been copied to its end, which alone lets the log start over.
//! A pass beside a busy writer rarely reaches the end, so SQLite would leave the database
//! unsynced; the extra sync here only moves that work off the writer.

use std::cell::Cell;
use std::ffi::c_int;
use std::sync::mpsc::{Receiver, SyncSender};
use std::time::{Duration, Instant};

use rusqlite::hooks::Wal;
use rusqlite::Connection;

/// The writer checkpoints when a commit leaves the log at this many frames (16 MiB of 4 KiB
/// pages): the hot pages (the ends of the append-only tables and indexes) are copied back
/// a quarter as often as at SQLite's default of 1,000.
pub(crate) const WRITER_CHECKPOINT: c_int = 4000;
/// The log's growth between two background passes.
const STEP: c_int = 1000;

/// The writer's end: asks for a background pass as the log grows.
pub(crate) struct Background {
    wake: SyncSender<()>,
    /// `STEP`s the log had reached at the last commit.
    steps: c_int,
    /// The writer's time in groups since `since`, the last step.
    busy: Duration,
    since: Instant,
}

thread_local! {
    /// The frames in the log after the writer's last commit, as SQLite's hook reported
    /// them. SQLite calls the hook through a plain function pointer, so this is the only
    /// way out of it; the writer takes it after each group.
    static LOG_FRAMES: Cell<Option<c_int>> = const { Cell::new(None) };
}

/// The writer's end and the checkpointer thread's.
pub(crate) fn channel() -> (Background, Receiver<()>) {
    // One pass asked for at most: a request made while one is queued adds nothing.
    let (wake, woken) = std::sync::mpsc::sync_channel(1);
    let background = Background {
        wake,
        steps: 0,
        busy: Duration::ZERO,
        since: Instant::now(),
    };
    (background, woken)
}

impl Background {
    fn log_at(&mut self, frames: c_int, now: Instant) {
        let steps = frames / STEP;
        // From `WRITER_CHECKPOINT` on the writer has just checkpointed itself; a pass then
        // would only hold the locks the log's start-over at the next commit needs.
        if steps > self.steps && frames < WRITER_CHECKPOINT {
            // At full speed the passes cost 4–15% of the events a second (measured); the
            // writer is then in groups most of the time.
            if self.busy < now.saturating_duration_since(self.since) / 2 {
                let _ = self.wake.try_send(());
            }
            self.busy = Duration::ZERO;
            self.since = now;
        }
        // Fewer after the log started over.
        self.steps = steps;
    }

    /// After each group: looks at the log its commit left (asking for a pass as it grows),
    /// then counts the group's time (from its first statement to its commit, checkpoint
    /// included) towards the writer's share of the time, which decides whether it asks.
    pub(crate) fn after_group(&mut self, group: Duration) {
        if let Some(frames) = LOG_FRAMES.take() {
            self.log_at(frames, Instant::now());
        }
        self.busy += group;
    }
}

/// SQLite calls this after every commit of the connection it is set on, with the frames
/// now in the log. It takes the place of `wal_autocheckpoint`.
pub(crate) fn after_commit(wal: &Wal, frames: c_int) -> rusqlite::Result<()> {
    if frames >= WRITER_CHECKPOINT {
        // As SQLite's own hook, the outcome is not the commit's: the transaction is
        // committed whatever happens here, and a checkpoint that could not run (the
        // background pass holds the checkpoint lock, say) runs at the next commit.
        if let Err(e) = wal.checkpoint() {
            tracing::debug!(error = %e, "checkpoint put off");
        }
    }
    LOG_FRAMES.set(Some(frames));
    Ok(())
}

/// The checkpointer thread: a passive checkpoint and a sync of the database each time it is
/// woken, until the writer's end is dropped. Returns how many passes it made.
pub(crate) fn run(conn: Connection, database: std::fs::File, woken: Receiver<()>) -> usize {
    let mut passes = 0;
    while woken.recv().is_ok() {
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(error = %e, "background checkpoint failed");
            continue;
        }
        if let Err(e) = database.sync_data() {
            tracing::warn!(error = %e, "cannot sync the database after a checkpoint");
        }
        passes += 1;
    }
    passes
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database in WAL mode with a table `t (n, filler)`, and a connection to it.
    fn table_in_wal_mode(dir: &std::path::Path, pragmas: &str) -> (std::path::PathBuf, Connection) {
        let path = dir.join("db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(&format!(
            "PRAGMA journal_mode = WAL; {pragmas} CREATE TABLE t (n INTEGER, filler BLOB);"
        ))
        .unwrap();
        (path, conn)
    }

    #[test]
    fn a_pass_is_asked_for_each_step_the_log_grows() {
        let (mut background, woken) = channel();
        // A writer that was never busy, committing once a second.
        let mut now = background.since;
        let mut asked = |frames| {
            now += Duration::from_secs(1);
            background.log_at(frames, now);
            woken.try_recv().is_ok()
        };
        assert!(!asked(10));
        assert!(!asked(STEP - 1));
        assert!(asked(STEP));
        assert!(!asked(STEP + 500), "the same step");
        assert!(asked(3 * STEP + 1), "two steps on, one pass");
        assert!(!asked(WRITER_CHECKPOINT), "the writer checkpoints");
        assert!(!asked(40), "the log started over");
        assert!(!asked(STEP - 1));
        assert!(asked(STEP));
    }

    #[test]
    fn a_writer_busy_most_of_the_time_checkpoints_alone() {
        let (mut background, woken) = channel();
        let start = background.since;
        background.busy = Duration::from_millis(60);
        background.log_at(STEP, start + Duration::from_millis(100));
        assert!(woken.try_recv().is_err(), "busy 60% of the time");
        background.busy = Duration::from_millis(40);
        background.log_at(2 * STEP, start + Duration::from_millis(200));
        assert!(
            woken.try_recv().is_ok(),
            "busy 40% of the time since the last step"
        );
    }

    /// The passes run beside the writer's commits and its own checkpoints, which still let
    /// the log start over; nothing is lost or broken on the way.
    #[test]
    fn passes_beside_a_committing_writer_leave_the_log_short_and_the_database_whole() {
        let dir = tempfile::tempdir().unwrap();
        let (path, writer) = table_in_wal_mode(dir.path(), "PRAGMA synchronous = NORMAL;");
        writer.wal_hook(Some(after_commit));
        let (mut background, woken) = channel();
        let checkpointer = Connection::open(&path).unwrap();
        let database = std::fs::File::open(&path).unwrap();
        let thread = std::thread::spawn(move || run(checkpointer, database, woken));
        // This thread is the writer, a commit a group, never busy by its own count: a pass
        // at every step.
        const ROWS: i64 = 12_000;
        for n in 0..ROWS {
            writer
                .execute("INSERT INTO t VALUES (?1, zeroblob(3000))", [n])
                .unwrap();
            background.after_group(Duration::ZERO);
        }
        drop(background);
        let passes = thread.join().unwrap();
        // About 24,000 frames: up to 23 passes, fewer when asked while one runs.
        assert!(passes >= 3, "{passes} passes");

        let frame = 24 + 4096;
        let log = std::fs::metadata(dir.path().join("db-wal")).unwrap().len();
        assert!(
            log < 2 * WRITER_CHECKPOINT as u64 * frame,
            "the log grew to {log} bytes"
        );
        drop(writer);
        let reader = Connection::open(&path).unwrap();
        let (count, sum): (i64, i64) = reader
            .query_row("SELECT COUNT(*), SUM(n) FROM t", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!((count, sum), (ROWS, ROWS * (ROWS - 1) / 2));
        crate::testing::assert_whole(&reader);
    }

    #[test]
    fn a_pass_copies_the_log_into_the_database_beside_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let (path, writer) = table_in_wal_mode(dir.path(), "PRAGMA wal_autocheckpoint = 0;");
        for n in 0..500 {
            writer
                .execute("INSERT INTO t VALUES (?1, zeroblob(3000))", [n])
                .unwrap();
        }
        let size = || std::fs::metadata(&path).unwrap().len();
        let before = size();

        let (background, woken) = channel();
        let checkpointer = Connection::open(&path).unwrap();
        let database = std::fs::File::open(&path).unwrap();
        let thread = std::thread::spawn(move || run(checkpointer, database, woken));
        let Background { wake, .. } = background;
        wake.send(()).unwrap();
        drop(wake);
        assert_eq!(thread.join().unwrap(), 1);

        assert!(
            size() > before + 500 * 3000,
            "{} bytes, from {before}",
            size()
        );
        // Commits go on, and the database reads whole through a fresh connection.
        writer
            .execute("INSERT INTO t VALUES (500, zeroblob(3000))", [])
            .unwrap();
        let reader = Connection::open(&path).unwrap();
        let count: i64 = reader
            .query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(count, 501);
        crate::testing::assert_whole(&reader);
    }
}
