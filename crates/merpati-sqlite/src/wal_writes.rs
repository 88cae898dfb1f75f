//! A VFS for the writer's connection that hands each commit's log frames to the kernel in
//! one write.
//!
//! SQLite writes every frame of the write-ahead log as two `pwrite`s (its 24-byte header,
//! then the page), and a commit of a group touches tens to hundreds of pages: under load a
//! quarter of the writer thread's time went into those system calls. This VFS wraps the
//! default one. For the log file only, it gathers writes that follow each other and writes
//! them at once when the commit's last frame (the only one whose header carries the
//! database size) has been written: before SQLite publishes the commit in the shared index,
//! so a reader on another connection that sees the commit finds its frames in the file.
//! Reads, syncs, truncation, size queries and closing write what is gathered first, so the
//! writer's own view of the file is never behind either. Every other file, and every other
//! call, goes straight to the default VFS.
//!
//! A failed write surfaces where SQLite expects one: in the write of the commit's last
//! frame, which fails the commit.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::OnceLock;

use rusqlite::ffi;

/// The name to open the writer's connection with.
pub const NAME: &CStr = c"merpati-wal-writes";

/// The size of a log frame's header; its bytes 4..8 are the database size in pages on a
/// commit's last frame, zero on every other.
const FRAME_HEADER: usize = 24;
/// Gathered bytes are written once they reach this (a large transaction spilling pages),
/// and the buffer keeps at most this much room between commits.
const MAX_GATHERED: usize = 4 << 20;

/// The most the default VFS writes in one call (it writes at most 128 KiB − 1 at once).
const MAX_WRITE: usize = 0x1ffff & !0xfff;

static BASE: AtomicPtr<ffi::sqlite3_vfs> = AtomicPtr::new(std::ptr::null_mut());

/// Registers the VFS once per process (not as the default). Fails only if SQLite has no
/// default VFS or refuses the registration.
pub fn register() -> Result<&'static CStr, String> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            // SAFETY: sqlite3_vfs_find and sqlite3_vfs_register are thread-safe; the VFS
            // registered is leaked, so it outlives every connection that uses it.
            unsafe {
                let base = ffi::sqlite3_vfs_find(std::ptr::null());
                if base.is_null() {
                    return Err("SQLite has no default VFS".into());
                }
                BASE.store(base, Ordering::Release);
                let mut vfs = *base;
                vfs.iVersion = vfs.iVersion.min(2);
                vfs.szOsFile = (std::mem::size_of::<LogFile>() as c_int) + (*base).szOsFile;
                vfs.pNext = std::ptr::null_mut();
                vfs.zName = NAME.as_ptr();
                vfs.xOpen = Some(open);
                vfs.xDelete = Some(delete);
                vfs.xAccess = Some(access);
                vfs.xFullPathname = Some(full_pathname);
                vfs.xRandomness = Some(randomness);
                vfs.xSleep = Some(sleep);
                vfs.xCurrentTime = Some(current_time);
                vfs.xGetLastError = Some(get_last_error);
                if vfs.iVersion >= 2 {
                    vfs.xCurrentTimeInt64 = Some(current_time_int64);
                }
                // The xDl* calls (extension loading, which the server never does) keep the
                // default VFS's functions, which do not look at the VFS they are given.
                let rc = ffi::sqlite3_vfs_register(Box::leak(Box::new(vfs)), 0);
                if rc != ffi::SQLITE_OK {
                    return Err(format!("cannot register the log VFS (SQLite error {rc})"));
                }
                Ok(())
            }
        })
        .clone()
        .map(|()| NAME)
}

fn base() -> *mut ffi::sqlite3_vfs {
    BASE.load(Ordering::Acquire)
}

/// The log file as this VFS opens it: SQLite's header, the default VFS's file right after
/// this struct, and the bytes gathered for it.
#[repr(C)]
struct LogFile {
    file: ffi::sqlite3_file,
    real: *mut ffi::sqlite3_file,
    gathered: Gathered,
}

/// Writes that follow each other, not yet handed to the kernel.
struct Gathered {
    /// The file offset of `bytes[0]`.
    start: i64,
    bytes: Vec<u8>,
    /// The last write was a commit frame's header: its page completes the commit.
    commit_page_next: bool,
}

impl Gathered {
    fn end(&self) -> i64 {
        self.start + self.bytes.len() as i64
    }
}

static LOG_METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 1,
    xClose: Some(log_close),
    xRead: Some(log_read),
    xWrite: Some(log_write),
    xTruncate: Some(log_truncate),
    xSync: Some(log_sync),
    xFileSize: Some(log_file_size),
    xLock: Some(log_lock),
    xUnlock: Some(log_unlock),
    xCheckReservedLock: Some(log_check_reserved_lock),
    xFileControl: Some(log_file_control),
    xSectorSize: Some(log_sector_size),
    xDeviceCharacteristics: Some(log_device_characteristics),
    xShmMap: None,
    xShmLock: None,
    xShmBarrier: None,
    xShmUnmap: None,
    xFetch: None,
    xUnfetch: None,
};

unsafe extern "C" fn open(
    _vfs: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    let base = base();
    let base_open = (*base).xOpen.expect("a VFS opens files");
    if flags & ffi::SQLITE_OPEN_WAL == 0 {
        // Not the log: the default VFS's own file, in the room SQLite gave (ours is larger).
        return base_open(base, name, file, flags, out_flags);
    }
    let log = file.cast::<LogFile>();
    let real = file
        .cast::<u8>()
        .add(std::mem::size_of::<LogFile>())
        .cast::<ffi::sqlite3_file>();
    let rc = base_open(base, name, real, flags, out_flags);
    if rc != ffi::SQLITE_OK {
        // SQLite calls no method, not even xClose, on a file whose pMethods is null.
        (*file).pMethods = std::ptr::null();
        return rc;
    }
    std::ptr::write(
        log,
        LogFile {
            file: ffi::sqlite3_file {
                pMethods: &LOG_METHODS,
            },
            real,
            gathered: Gathered {
                start: 0,
                bytes: Vec::new(),
                commit_page_next: false,
            },
        },
    );
    ffi::SQLITE_OK
}

/// The default VFS's method `$m` of the real file, called with `$args`.
macro_rules! real {
    ($log:expr, $m:ident $(, $arg:expr)*) => {{
        let real = (*$log).real;
        ((*(*real).pMethods).$m.expect(concat!("the default VFS has ", stringify!($m))))(
            real $(, $arg)*
        )
    }};
}

/// The default VFS's method `$m` of the real file, once what is gathered is written: a
/// read, sync, truncation, size or file control sees the file as SQLite wrote it.
macro_rules! after_flush {
    ($file:expr, $m:ident $(, $arg:expr)*) => {{
        let log = $file.cast::<LogFile>();
        match flush(log) {
            ffi::SQLITE_OK => real!(log, $m $(, $arg)*),
            rc => rc,
        }
    }};
}

/// Hands what is gathered to the kernel.
unsafe fn flush(log: *mut LogFile) -> c_int {
    let gathered = &mut (*log).gathered;
    if gathered.bytes.is_empty() {
        return ffi::SQLITE_OK;
    }
    let mut rc = ffi::SQLITE_OK;
    let mut offset = gathered.start;
    for chunk in gathered.bytes.chunks(MAX_WRITE) {
        rc = real!(
            log,
            xWrite,
            chunk.as_ptr().cast::<c_void>(),
            chunk.len() as c_int,
            offset
        );
        #[cfg(test)]
        tests::LOG_WRITES.with(|n| n.set(n.get() + 1));
        if rc != ffi::SQLITE_OK {
            break;
        }
        offset += chunk.len() as i64;
    }
    // Failed or not, these bytes are done with: SQLite learns of the failure from this
    // call's caller and undoes the commit, whose frames it will write again if it retries.
    let gathered = &mut (*log).gathered;
    gathered.bytes.clear();
    if gathered.bytes.capacity() > MAX_GATHERED {
        gathered.bytes.shrink_to(MAX_GATHERED);
    }
    rc
}

unsafe extern "C" fn log_write(
    file: *mut ffi::sqlite3_file,
    data: *const c_void,
    amount: c_int,
    offset: i64,
) -> c_int {
    let log = file.cast::<LogFile>();
    let Ok(len) = usize::try_from(amount) else {
        return ffi::SQLITE_IOERR_WRITE;
    };
    // Taken before anything is written: this write completes a commit even if it does not
    // follow on from what is gathered.
    let completes_commit = (*log).gathered.commit_page_next;
    if !(*log).gathered.bytes.is_empty() && (*log).gathered.end() != offset {
        let rc = flush(log);
        if rc != ffi::SQLITE_OK {
            return rc;
        }
    }
    let bytes = std::slice::from_raw_parts(data.cast::<u8>(), len);
    let gathered = &mut (*log).gathered;
    if gathered.bytes.is_empty() {
        gathered.start = offset;
    }
    gathered.bytes.extend_from_slice(bytes);
    gathered.commit_page_next = len == FRAME_HEADER && bytes[4..8] != [0; 4];
    if completes_commit || gathered.bytes.len() >= MAX_GATHERED {
        return flush(log);
    }
    ffi::SQLITE_OK
}

unsafe extern "C" fn log_close(file: *mut ffi::sqlite3_file) -> c_int {
    let log = file.cast::<LogFile>();
    let flushed = flush(log);
    let closed = real!(log, xClose);
    std::ptr::drop_in_place(&mut (*log).gathered);
    (*file).pMethods = std::ptr::null();
    if flushed != ffi::SQLITE_OK {
        flushed
    } else {
        closed
    }
}

unsafe extern "C" fn log_read(
    file: *mut ffi::sqlite3_file,
    data: *mut c_void,
    amount: c_int,
    offset: i64,
) -> c_int {
    after_flush!(file, xRead, data, amount, offset)
}

unsafe extern "C" fn log_truncate(file: *mut ffi::sqlite3_file, size: i64) -> c_int {
    after_flush!(file, xTruncate, size)
}

unsafe extern "C" fn log_sync(file: *mut ffi::sqlite3_file, flags: c_int) -> c_int {
    after_flush!(file, xSync, flags)
}

unsafe extern "C" fn log_file_size(file: *mut ffi::sqlite3_file, size: *mut i64) -> c_int {
    after_flush!(file, xFileSize, size)
}

unsafe extern "C" fn log_lock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    real!(file.cast::<LogFile>(), xLock, level)
}

unsafe extern "C" fn log_unlock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    real!(file.cast::<LogFile>(), xUnlock, level)
}

unsafe extern "C" fn log_check_reserved_lock(
    file: *mut ffi::sqlite3_file,
    out: *mut c_int,
) -> c_int {
    real!(file.cast::<LogFile>(), xCheckReservedLock, out)
}

unsafe extern "C" fn log_file_control(
    file: *mut ffi::sqlite3_file,
    op: c_int,
    arg: *mut c_void,
) -> c_int {
    after_flush!(file, xFileControl, op, arg)
}

unsafe extern "C" fn log_sector_size(file: *mut ffi::sqlite3_file) -> c_int {
    real!(file.cast::<LogFile>(), xSectorSize)
}

unsafe extern "C" fn log_device_characteristics(file: *mut ffi::sqlite3_file) -> c_int {
    real!(file.cast::<LogFile>(), xDeviceCharacteristics)
}

// The rest of the VFS passes the default VFS itself, not this one, to its functions.

unsafe extern "C" fn delete(
    _vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    sync: c_int,
) -> c_int {
    let base = base();
    ((*base).xDelete.expect("a VFS deletes"))(base, name, sync)
}

unsafe extern "C" fn access(
    _vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    flags: c_int,
    out: *mut c_int,
) -> c_int {
    let base = base();
    ((*base).xAccess.expect("a VFS checks access"))(base, name, flags, out)
}

unsafe extern "C" fn full_pathname(
    _vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    size: c_int,
    out: *mut c_char,
) -> c_int {
    let base = base();
    ((*base).xFullPathname.expect("a VFS names paths"))(base, name, size, out)
}

unsafe extern "C" fn randomness(
    _vfs: *mut ffi::sqlite3_vfs,
    size: c_int,
    out: *mut c_char,
) -> c_int {
    let base = base();
    ((*base).xRandomness.expect("a VFS has randomness"))(base, size, out)
}

unsafe extern "C" fn sleep(_vfs: *mut ffi::sqlite3_vfs, micros: c_int) -> c_int {
    let base = base();
    ((*base).xSleep.expect("a VFS sleeps"))(base, micros)
}

unsafe extern "C" fn current_time(_vfs: *mut ffi::sqlite3_vfs, out: *mut f64) -> c_int {
    let base = base();
    ((*base).xCurrentTime.expect("a VFS tells the time"))(base, out)
}

unsafe extern "C" fn get_last_error(
    _vfs: *mut ffi::sqlite3_vfs,
    size: c_int,
    out: *mut c_char,
) -> c_int {
    let base = base();
    ((*base).xGetLastError.expect("a VFS tells its last error"))(base, size, out)
}

unsafe extern "C" fn current_time_int64(_vfs: *mut ffi::sqlite3_vfs, out: *mut i64) -> c_int {
    let base = base();
    ((*base)
        .xCurrentTimeInt64
        .expect("a version 2 VFS tells the time"))(base, out)
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::path::Path;

    use rusqlite::{Connection, OpenFlags};

    thread_local! {
        /// The log writes handed to the default VFS on this thread.
        pub(crate) static LOG_WRITES: Cell<usize> = const { Cell::new(0) };
    }

    const FRAME: u64 = 24 + 4096;

    fn writer(path: &Path) -> Connection {
        let vfs = super::register().unwrap();
        let c = Connection::open_with_flags_and_vfs(path, OpenFlags::default(), vfs).unwrap();
        c.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;
             CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v BLOB NOT NULL);",
        )
        .unwrap();
        c
    }

    fn reader(path: &Path) -> Connection {
        Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap()
    }

    fn log_len(path: &Path) -> u64 {
        let mut log = path.as_os_str().to_owned();
        log.push("-wal");
        std::fs::metadata(log).map(|m| m.len()).unwrap_or(0)
    }

    fn rows_and_bytes(c: &Connection) -> (i64, i64) {
        c.query_row(
            "SELECT count(*), coalesce(sum(length(v)), 0) FROM t",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap()
    }

    #[test]
    fn a_commit_reaches_the_log_in_one_write_and_readers_see_it_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let mut w = writer(&path);
        let r = reader(&path);
        let before = log_len(&path);
        LOG_WRITES.with(|n| n.set(0));
        let tx = w.transaction().unwrap();
        for i in 0..60 {
            tx.execute("INSERT INTO t (id, v) VALUES (?1, zeroblob(3000))", [i])
                .unwrap();
        }
        tx.commit().unwrap();
        let frames = (log_len(&path) - before) / FRAME;
        assert!(frames >= 40, "the commit wrote {frames} frames");
        // Two writes a frame without gathering; gathered, one per 124 KiB.
        let writes = LOG_WRITES.with(Cell::get) as u64;
        assert_eq!(writes, (frames * FRAME).div_ceil(super::MAX_WRITE as u64));
        assert_eq!(rows_and_bytes(&r), (60, 60 * 3000));
    }

    #[test]
    fn large_transactions_and_checkpoints_keep_the_database_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        {
            let mut w = writer(&path);
            // A small cache makes the large transaction spill pages to the log before it
            // commits; frequent checkpoints read the log back and start it over.
            w.execute_batch("PRAGMA cache_size = 50; PRAGMA wal_autocheckpoint = 100;")
                .unwrap();
            let tx = w.transaction().unwrap();
            for i in 0..3000 {
                tx.execute("INSERT INTO t (id, v) VALUES (?1, randomblob(2000))", [i])
                    .unwrap();
            }
            tx.commit().unwrap();
            for i in 3000..4000 {
                w.execute("INSERT INTO t (id, v) VALUES (?1, randomblob(500))", [i])
                    .unwrap();
            }
            w.execute("DELETE FROM t WHERE id % 3 = 0", []).unwrap();
            crate::testing::assert_whole(&w);
            assert_eq!(
                rows_and_bytes(&reader(&path)),
                (2666, 2000 * 2000 + 666 * 500)
            );
        }
        // Closed and opened again, from the log and the database as they are on disk.
        let r = reader(&path);
        assert_eq!(rows_and_bytes(&r), (2666, 2000 * 2000 + 666 * 500));
        crate::testing::assert_whole(&r);
    }

    #[test]
    fn a_reader_beside_the_writer_never_sees_a_commit_without_its_frames() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let w = writer(&path);
        w.execute_batch("PRAGMA wal_autocheckpoint = 200;").unwrap();
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reading = {
            let (path, done) = (path.clone(), done.clone());
            std::thread::spawn(move || {
                let r = reader(&path);
                let mut seen = 0;
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    let (rows, bytes) = rows_and_bytes(&r);
                    assert_eq!(
                        bytes,
                        rows * 1500,
                        "a row read before its frame was written"
                    );
                    assert!(rows >= seen, "rows went back from {seen} to {rows}");
                    seen = rows;
                }
                seen
            })
        };
        for i in 0..2000 {
            w.execute("INSERT INTO t (id, v) VALUES (?1, randomblob(1500))", [i])
                .unwrap();
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(reading.join().unwrap() <= 2000);
        assert_eq!(rows_and_bytes(&reader(&path)), (2000, 2000 * 1500));
    }
}
