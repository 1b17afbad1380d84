//! The SQLite VFSes of the store's two connections that write: the platform's default VFS,
//! except where named here.
//!
//! The writer's (`NAME`): SQLite writes every WAL frame with two `pwrite`s (its 24-byte header,
//! then the page), so a commit of 14 frames made 28 system calls; here the frames of a commit
//! are gathered in memory and written with one call when SQLite syncs the WAL at the commit's
//! end (`synchronous=FULL`), before it publishes the commit to other connections. Any other use
//! of the WAL file (a read, its size, a truncation, closing it) first writes what is gathered,
//! so the file is exactly what SQLite wrote whenever anyone can look. The sync is one
//! `fdatasync` (SQLite's bundled build would `fsync`, which also writes the inode's times).
//!
//! The checkpointer's (`CHECKPOINT_NAME`): SQLite begins every checkpoint with a sync of the
//! WAL, which is redundant here: every frame a checkpoint can see was synced by the writer
//! before its commit was published, and the WAL a previous process left is synced once when the
//! writer opens (`schema::open_writer`). So the WAL's sync does nothing when this connection
//! wrote nothing to it (it never does; if it did, the sync would be real). The database file's
//! writes go to the default VFS at once, one page a call, as SQLite makes them: gathered into
//! runs, the last run's failure could only be reported at the end of the copy
//! (`SQLITE_FCNTL_CKPT_DONE`), whose answer SQLite ignores before it tells readers to read the
//! copied pages from the file. Its sync is an `fdatasync`.
//!
//! **Failures reach SQLite as the default VFS reports them.** A write the default VFS cuts
//! short is `SQLITE_FULL`, a failed one `SQLITE_IOERR_WRITE`, a failed sync
//! `SQLITE_IOERR_FSYNC`. A gathered write that fails when it is finally written, and any failed
//! sync, leaves the file failed: every later write, read and sync through it answers that
//! failure, so SQLite fails the commit and no later sync can pass for one that covers the lost
//! bytes (after a failed `fdatasync`, Linux may drop the pages it could not write and report
//! success the next time). Only a new connection (the writer opens one: `writer::run`) writes
//! again. What failed, and where, is kept for the thread that made the call ([`take_failure`]).
//!
//! The bytes the writer's WAL received (frames with their headers, as written) are counted for
//! the thread that wrote them ([`take_wal_written`]); the writer adds them to a metric.
//!
//! The shared memory index and every other file are the default VFS's own, untouched.

use rusqlite::ffi;
use std::ffi::{CStr, c_char, c_int, c_void};
use std::path::PathBuf;

/// The name the writer's VFS is registered under.
pub const NAME: &CStr = c"ferry-wal";

/// The name the checkpointer's VFS is registered under.
pub const CHECKPOINT_NAME: &CStr = c"ferry-checkpoint";

/// Whose connection a VFS serves, and so what it changes.
#[derive(Clone, Copy, PartialEq)]
enum Role {
    Writer,
    Checkpointer,
}

/// Past this many gathered bytes (a very large transaction), they are written at once.
const MAX_GATHERED: usize = 8 << 20;

/// The most bytes handed to one write of the default VFS: the unix VFS masks a write's length
/// to 17 bits (`nBuf & 0x1ffff`), so a longer one would be cut short. 31 pages.
const MAX_CALL: usize = 0x1ffff & !0xfff;

thread_local! {
    /// The last failure of a file of these VFSes on this thread, described for people.
    static LAST_FAILURE: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// What the last failed write or sync through these VFSes on this thread was, and where (the
/// file, the offset, the system's error), if one failed since the last call. The writer and the
/// checkpointer each own their connection's thread, so this is the failure of their last call.
pub fn take_failure() -> Option<String> {
    LAST_FAILURE.with(|f| f.borrow_mut().take())
}

fn note_failure(what: String) {
    LAST_FAILURE.with(|f| *f.borrow_mut() = Some(what));
}

thread_local! {
    /// Bytes written to the writer's WAL on this thread since the last [`take_wal_written`].
    static WAL_WRITTEN: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// The bytes written to the writer's WAL by this thread since the last call (the writer owns
/// its connection's thread, so these are its commits' frames, headers included).
pub fn take_wal_written() -> u64 {
    WAL_WRITTEN.with(|w| w.replace(0))
}

/// Registers both VFSes with SQLite once per process (SQLite's list of VFSes is
/// process-wide) and answers whether they are there to use.
pub fn register() -> Result<(), String> {
    static REGISTERED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            register_as(NAME, Role::Writer)?;
            register_as(CHECKPOINT_NAME, Role::Checkpointer)
        })
        .clone()
}

fn register_as(name: &'static CStr, role: Role) -> Result<(), String> {
    // SAFETY: `sqlite3_vfs_find` initialises SQLite and returns a VFS that lives as long as
    // the process; the copy handed to SQLite is leaked, so it does too.
    unsafe {
        let inner = ffi::sqlite3_vfs_find(std::ptr::null());
        if inner.is_null() {
            return Err("SQLite has no default VFS".into());
        }
        let mut base = std::ptr::read(inner);
        base.szOsFile = (HEADER + (*inner).szOsFile as usize) as c_int;
        base.zName = name.as_ptr();
        base.pNext = std::ptr::null_mut();
        base.xOpen = Some(open);
        let vfs = Box::leak(Box::new(Vfs { base, inner, role }));
        match ffi::sqlite3_vfs_register(&mut vfs.base, 0) {
            ffi::SQLITE_OK => Ok(()),
            rc => Err(format!(
                "SQLite refused the VFS {} (code {rc})",
                name.to_string_lossy()
            )),
        }
    }
}

/// What SQLite knows as the VFS, and the default VFS it hands everything to.
#[repr(C)]
struct Vfs {
    base: ffi::sqlite3_vfs,
    inner: *mut ffi::sqlite3_vfs,
    role: Role,
}

/// A file these VFSes change (the writer's WAL; the checkpointer's WAL and database file):
/// SQLite sees `base`; the default VFS's file lives right after this header in the same
/// allocation (SQLite allocates `szOsFile` bytes).
#[repr(C)]
struct WrappedFile {
    base: ffi::sqlite3_file,
    inner: *mut ffi::sqlite3_file,
    state: Box<FileState>,
}

/// What a wrapped file keeps beside the default VFS's file.
struct FileState {
    /// Whether writes are gathered until the next sync (the writer's WAL) or passed on at once.
    gather: bool,
    /// Bytes written but not yet in the file: one run starting at `at`.
    bytes: Vec<u8>,
    at: i64,
    path: PathBuf,
    /// Opened at the first sync (`sync::sync_file`): `fdatasync` of any descriptor of the file
    /// syncs it.
    sync: Option<std::fs::File>,
    /// What a sync does.
    on_sync: OnSync,
    /// Whether anything was written through this file since its last sync.
    written: bool,
    /// `SQLITE_OK`, or the failure every later write, read and sync answers: a gathered write
    /// that could not be written, or a sync that failed.
    failed: c_int,
}

#[derive(Clone, Copy, PartialEq)]
enum OnSync {
    /// Write what is gathered and `fdatasync`.
    DataSync,
    /// The checkpointer's WAL: `fdatasync` only if this connection wrote to the WAL since its
    /// last sync (the writer synced every frame it can see).
    WhenWritten,
}

/// The header's size, rounded up so the default VFS's file after it is 8-byte aligned.
const HEADER: usize = std::mem::size_of::<WrappedFile>().div_ceil(8) * 8;

unsafe extern "C" fn open(
    vfs: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    // SAFETY: SQLite passes the VFS registered above and `szOsFile` bytes at `file`.
    unsafe {
        let inner_vfs = (*(vfs as *mut Vfs)).inner;
        let Some(inner_open) = (*inner_vfs).xOpen else {
            (*file).pMethods = std::ptr::null();
            return ffi::SQLITE_CANTOPEN;
        };
        let role = (*(vfs as *mut Vfs)).role;
        let wal = flags & ffi::SQLITE_OPEN_WAL != 0;
        let main_db = flags & ffi::SQLITE_OPEN_MAIN_DB != 0;
        let wrapped = match role {
            _ if name.is_null() => None,
            Role::Writer if wal => Some((true, OnSync::DataSync)),
            Role::Checkpointer if wal => Some((false, OnSync::WhenWritten)),
            Role::Checkpointer if main_db => Some((false, OnSync::DataSync)),
            _ => None,
        };
        let Some((gather, on_sync)) = wrapped else {
            // The default VFS's file itself, with nothing in between.
            return inner_open(inner_vfs, name, file, flags, out_flags);
        };
        let inner = (file as *mut u8).add(HEADER) as *mut ffi::sqlite3_file;
        let rc = inner_open(inner_vfs, name, inner, flags, out_flags);
        if rc != ffi::SQLITE_OK {
            // SQLite closes a file whose methods are set even when the open failed; the
            // inner file is closed here instead, and this one is left without methods.
            if !(*inner).pMethods.is_null()
                && let Some(close) = (*(*inner).pMethods).xClose
            {
                close(inner);
            }
            (*file).pMethods = std::ptr::null();
            return rc;
        }
        let path = path_of(CStr::from_ptr(name as *const c_char).to_bytes());
        std::ptr::write(
            file as *mut WrappedFile,
            WrappedFile {
                base: ffi::sqlite3_file { pMethods: &METHODS },
                inner,
                state: Box::new(FileState {
                    gather,
                    bytes: Vec::new(),
                    at: 0,
                    path,
                    sync: None,
                    on_sync,
                    written: false,
                    failed: ffi::SQLITE_OK,
                }),
            },
        );
        ffi::SQLITE_OK
    }
}

/// The WAL's path as SQLite names it (bytes on Unix; UTF-8 elsewhere).
#[cfg(unix)]
fn path_of(name: &[u8]) -> PathBuf {
    PathBuf::from(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(name))
}

#[cfg(not(unix))]
fn path_of(name: &[u8]) -> PathBuf {
    PathBuf::from(String::from_utf8_lossy(name).into_owned())
}

static METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 3,
    xClose: Some(close),
    xRead: Some(read),
    xWrite: Some(write),
    xTruncate: Some(truncate),
    xSync: Some(sync),
    xFileSize: Some(file_size),
    xLock: Some(lock),
    xUnlock: Some(unlock),
    xCheckReservedLock: Some(check_reserved_lock),
    xFileControl: Some(file_control),
    xSectorSize: Some(sector_size),
    xDeviceCharacteristics: Some(device_characteristics),
    xShmMap: Some(shm_map),
    xShmLock: Some(shm_lock),
    xShmBarrier: Some(shm_barrier),
    xShmUnmap: Some(shm_unmap),
    xFetch: Some(fetch),
    xUnfetch: Some(unfetch),
};

/// The wrapped file behind a file SQLite passes to these methods.
///
/// # Safety
/// `file` must be a file `open` wrapped (it set these methods) and not yet closed.
unsafe fn wrapped<'a>(file: *mut ffi::sqlite3_file) -> &'a mut WrappedFile {
    unsafe { &mut *(file as *mut WrappedFile) }
}

/// The default VFS's methods of the file inside.
unsafe fn inner_methods<'a>(f: &WrappedFile) -> &'a ffi::sqlite3_io_methods {
    unsafe { &*(*f.inner).pMethods }
}

/// One write of the default VFS; a failure is described for [`take_failure`].
///
/// # Safety
/// `data` must fit in a `c_int` (at most [`MAX_CALL`] bytes when the file is the unix VFS's).
unsafe fn write_through(f: &mut WrappedFile, data: &[u8], offset: i64) -> c_int {
    let rc = match (unsafe { inner_methods(f) }).xWrite {
        // SAFETY: `data` is readable for its length.
        Some(write) => unsafe {
            write(
                f.inner,
                data.as_ptr() as *const c_void,
                data.len() as c_int,
                offset,
            )
        },
        None => ffi::SQLITE_IOERR_WRITE,
    };
    if rc != ffi::SQLITE_OK {
        // Read at once: the default VFS made no other system call after the failed one.
        let os = std::io::Error::last_os_error();
        let why = match rc & 0xff {
            ffi::SQLITE_FULL => format!("the disk is full (the write was cut short; {os})"),
            _ => format!("{os} (SQLite code {rc})"),
        };
        note_failure(format!(
            "cannot write {} bytes to {} at offset {offset}: {why}",
            data.len(),
            f.state.path.display()
        ));
    }
    rc
}

/// Writes what is gathered, in as few calls of the default VFS as it takes (one for a commit
/// of up to 31 pages). A failure leaves the file failed: SQLite was told those writes were
/// done, and only a failed sync can tell it otherwise.
unsafe fn flush(f: &mut WrappedFile) -> c_int {
    if f.state.failed != ffi::SQLITE_OK {
        return f.state.failed;
    }
    let bytes = std::mem::take(&mut f.state.bytes);
    let mut offset = f.state.at;
    for chunk in bytes.chunks(MAX_CALL) {
        // SAFETY: a chunk is at most MAX_CALL bytes.
        let rc = unsafe { write_through(f, chunk, offset) };
        if rc != ffi::SQLITE_OK {
            f.state.failed = rc;
            return rc;
        }
        offset += chunk.len() as i64;
    }
    WAL_WRITTEN.with(|w| w.set(w.get() + bytes.len() as u64));
    // The allocation is kept for the next commit's frames.
    f.state.bytes = bytes;
    f.state.bytes.clear();
    ffi::SQLITE_OK
}

unsafe extern "C" fn write(
    file: *mut ffi::sqlite3_file,
    buf: *const c_void,
    amount: c_int,
    offset: i64,
) -> c_int {
    // SAFETY: SQLite passes `amount` readable bytes at `buf`.
    unsafe {
        let f = wrapped(file);
        if f.state.failed != ffi::SQLITE_OK {
            return f.state.failed;
        }
        let data = std::slice::from_raw_parts(buf as *const u8, amount.max(0) as usize);
        f.state.written = true;
        if !f.state.gather {
            return write_through(f, data, offset);
        }
        let g = &mut f.state;
        let end = g.at + g.bytes.len() as i64;
        if !g.bytes.is_empty() && offset >= g.at && offset + data.len() as i64 <= end {
            // A frame rewritten within the same commit: change the gathered copy.
            let from = (offset - g.at) as usize;
            g.bytes[from..from + data.len()].copy_from_slice(data);
            return ffi::SQLITE_OK;
        }
        if !g.bytes.is_empty() && offset != end {
            let rc = flush(f);
            if rc != ffi::SQLITE_OK {
                return rc;
            }
        }
        let g = &mut f.state;
        if g.bytes.is_empty() {
            g.at = offset;
        }
        g.bytes.extend_from_slice(data);
        if g.bytes.len() >= MAX_GATHERED {
            return flush(f);
        }
        ffi::SQLITE_OK
    }
}

unsafe extern "C" fn sync(file: *mut ffi::sqlite3_file, _flags: c_int) -> c_int {
    unsafe {
        let f = wrapped(file);
        let rc = flush(f);
        if rc != ffi::SQLITE_OK {
            return rc;
        }
        let g = &mut f.state;
        if g.on_sync == OnSync::WhenWritten && !g.written {
            return ffi::SQLITE_OK;
        }
        match synced(g) {
            Ok(()) => {
                g.written = false;
                ffi::SQLITE_OK
            }
            Err(e) => {
                note_failure(format!("cannot sync {}: {e}", g.path.display()));
                g.failed = ffi::SQLITE_IOERR_FSYNC;
                ffi::SQLITE_IOERR_FSYNC
            }
        }
    }
}

/// `fdatasync`s the file (and, in the tests, fails when asked to).
fn synced(g: &mut FileState) -> std::io::Result<()> {
    #[cfg(test)]
    if tests::FAIL_SYNCS.get() {
        return Err(std::io::Error::other("a sync failure injected by a test"));
    }
    super::sync::sync_file(&mut g.sync, &g.path)
}

unsafe extern "C" fn close(file: *mut ffi::sqlite3_file) -> c_int {
    unsafe {
        let f = wrapped(file);
        // Bytes of a failed file are dropped: SQLite rolled back the commit they belonged to.
        let flushed = match f.state.failed {
            ffi::SQLITE_OK => flush(f),
            _ => ffi::SQLITE_OK,
        };
        let closed = match inner_methods(f).xClose {
            Some(close) => close(f.inner),
            None => ffi::SQLITE_OK,
        };
        // SQLite frees the allocation after this; what the header owns is freed here.
        std::ptr::drop_in_place(&mut f.state);
        if flushed != ffi::SQLITE_OK {
            flushed
        } else {
            closed
        }
    }
}

/// Forwards a call to the default VFS's file, after writing what is gathered.
macro_rules! flushed_then {
    ($file:ident, $method:ident ( $($arg:expr),* )) => {
        unsafe {
            let f = wrapped($file);
            let rc = flush(f);
            if rc != ffi::SQLITE_OK {
                return rc;
            }
            match inner_methods(f).$method {
                Some(method) => method(f.inner $(, $arg)*),
                None => ffi::SQLITE_IOERR,
            }
        }
    };
}

/// Forwards a call that does not look at the file's bytes to the default VFS's file.
macro_rules! forwarded {
    ($file:ident, $method:ident ( $($arg:expr),* ), $absent:expr) => {
        unsafe {
            let f = wrapped($file);
            match inner_methods(f).$method {
                Some(method) => method(f.inner $(, $arg)*),
                None => $absent,
            }
        }
    };
}

unsafe extern "C" fn read(
    file: *mut ffi::sqlite3_file,
    buf: *mut c_void,
    amount: c_int,
    offset: i64,
) -> c_int {
    flushed_then!(file, xRead(buf, amount, offset))
}

unsafe extern "C" fn truncate(file: *mut ffi::sqlite3_file, size: i64) -> c_int {
    flushed_then!(file, xTruncate(size))
}

unsafe extern "C" fn file_size(file: *mut ffi::sqlite3_file, size: *mut i64) -> c_int {
    flushed_then!(file, xFileSize(size))
}

/// Writes what is gathered first, but answers the file control whatever that write did: SQLite
/// ignores the answer of some file controls (hints), and a failed write leaves the file failed,
/// which the commit's sync reports.
unsafe extern "C" fn file_control(
    file: *mut ffi::sqlite3_file,
    op: c_int,
    arg: *mut c_void,
) -> c_int {
    unsafe {
        let f = wrapped(file);
        flush(f);
        match inner_methods(f).xFileControl {
            Some(method) => method(f.inner, op, arg),
            None => ffi::SQLITE_NOTFOUND,
        }
    }
}

unsafe extern "C" fn fetch(
    file: *mut ffi::sqlite3_file,
    offset: i64,
    amount: c_int,
    out: *mut *mut c_void,
) -> c_int {
    flushed_then!(file, xFetch(offset, amount, out))
}

unsafe extern "C" fn unfetch(file: *mut ffi::sqlite3_file, offset: i64, p: *mut c_void) -> c_int {
    forwarded!(file, xUnfetch(offset, p), ffi::SQLITE_OK)
}

unsafe extern "C" fn lock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    forwarded!(file, xLock(level), ffi::SQLITE_OK)
}

unsafe extern "C" fn unlock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    forwarded!(file, xUnlock(level), ffi::SQLITE_OK)
}

unsafe extern "C" fn check_reserved_lock(file: *mut ffi::sqlite3_file, out: *mut c_int) -> c_int {
    forwarded!(file, xCheckReservedLock(out), ffi::SQLITE_OK)
}

unsafe extern "C" fn sector_size(file: *mut ffi::sqlite3_file) -> c_int {
    forwarded!(file, xSectorSize(), 4096)
}

unsafe extern "C" fn device_characteristics(file: *mut ffi::sqlite3_file) -> c_int {
    forwarded!(file, xDeviceCharacteristics(), 0)
}

unsafe extern "C" fn shm_map(
    file: *mut ffi::sqlite3_file,
    page: c_int,
    size: c_int,
    extend: c_int,
    out: *mut *mut c_void,
) -> c_int {
    forwarded!(file, xShmMap(page, size, extend, out), ffi::SQLITE_IOERR)
}

unsafe extern "C" fn shm_lock(
    file: *mut ffi::sqlite3_file,
    offset: c_int,
    n: c_int,
    flags: c_int,
) -> c_int {
    forwarded!(file, xShmLock(offset, n, flags), ffi::SQLITE_IOERR)
}

unsafe extern "C" fn shm_barrier(file: *mut ffi::sqlite3_file) {
    forwarded!(file, xShmBarrier(), ())
}

unsafe extern "C" fn shm_unmap(file: *mut ffi::sqlite3_file, delete: c_int) -> c_int {
    forwarded!(file, xShmUnmap(delete), ffi::SQLITE_OK)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tmpfs::Tmpfs;
    use rusqlite::{Connection, OpenFlags};

    thread_local! {
        /// Set by a test: every sync through these VFSes on its thread fails.
        pub(super) static FAIL_SYNCS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    /// A connection through the writer's VFS, configured as the store's writer is.
    fn connect(path: &std::path::Path) -> Connection {
        register().unwrap();
        let conn = Connection::open_with_flags_and_vfs(path, OpenFlags::default(), NAME).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.pragma_update(None, "synchronous", "FULL").unwrap();
        conn.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
        // A small page cache, so a large transaction spills frames to the WAL before its commit
        // and reads them back.
        conn.pragma_update(None, "cache_size", 20).unwrap();
        conn
    }

    /// A connection through the checkpointer's VFS, as the store's checkpointer has.
    fn checkpointer(path: &std::path::Path) -> Connection {
        let conn = Connection::open_with_flags_and_vfs(path, OpenFlags::default(), CHECKPOINT_NAME)
            .unwrap();
        conn.pragma_update(None, "synchronous", "FULL").unwrap();
        conn
    }

    fn writer(path: &std::path::Path) -> Connection {
        let conn = connect(path);
        conn.execute_batch("CREATE TABLE t (n INTEGER PRIMARY KEY, body BLOB NOT NULL)")
            .unwrap();
        conn
    }

    fn body(n: i64, len: usize) -> Vec<u8> {
        (0..len).map(|i| (n as usize * 31 + i) as u8).collect()
    }

    /// Commits of 1, 40 (more than one write of the default VFS) and 600 rows (spilled before
    /// the commit), each checked from a connection of the default VFS right after it.
    fn commit_batches(conn: &Connection, reader: &Connection) -> i64 {
        let mut next = 0;
        for rows in [1, 40, 600, 3] {
            conn.execute_batch("BEGIN IMMEDIATE").unwrap();
            for _ in 0..rows {
                conn.execute(
                    "INSERT INTO t VALUES (?1, ?2)",
                    rusqlite::params![next, body(next, 1500)],
                )
                .unwrap();
                next += 1;
            }
            conn.execute_batch("COMMIT").unwrap();
            let (count, last): (i64, Vec<u8>) = reader
                .query_row(
                    "SELECT COUNT(*), (SELECT body FROM t ORDER BY n DESC LIMIT 1) FROM t",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .unwrap();
            assert_eq!(count, next, "a reader sees every committed row");
            assert_eq!(last, body(next - 1, 1500), "and the bytes of the last one");
        }
        next
    }

    /// A folder with a database written through the VFS by `commit_batches`: the folder, the
    /// writer (still open), a reader of the default VFS and the rows committed.
    fn committed() -> (tempfile::TempDir, Connection, Connection, i64) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let conn = writer(&path);
        let reader = Connection::open(&path).unwrap();
        let rows = commit_batches(&conn, &reader);
        (dir, conn, reader, rows)
    }

    #[test]
    fn other_connections_see_each_commit_whole() {
        let (_dir, _conn, reader, rows) = committed();
        // A checkpoint from the default VFS reads every frame back from the file.
        reader
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
            .unwrap();
        let count: i64 = reader
            .query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(count, rows);
    }

    /// The rows of `t` read from `conn`, each checked byte for byte.
    fn assert_rows(conn: &Connection, rows: i64, what: &str) {
        let mut read = conn.prepare("SELECT n, body FROM t ORDER BY n").unwrap();
        let read: Vec<(i64, Vec<u8>)> = read
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(read.len() as i64, rows, "{what}: every row");
        for (n, body_read) in read {
            assert!(
                body_read == body(n, 1500),
                "{what}: row {n} has other bytes"
            );
        }
    }

    /// Inserts `rows` rows of 1,500 bytes from `from` in one transaction.
    fn insert(conn: &Connection, from: i64, rows: i64) {
        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        for n in from..from + rows {
            conn.execute(
                "INSERT INTO t VALUES (?1, ?2)",
                rusqlite::params![n, body(n, 1500)],
            )
            .unwrap();
        }
        conn.execute_batch("COMMIT").unwrap();
    }

    fn checkpoint(conn: &Connection) -> (i64, i64) {
        conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((r.get(1)?, r.get(2)?))
        })
        .unwrap()
    }

    #[test]
    fn a_checkpoint_through_the_checkpointers_vfs_puts_every_page_in_the_database_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let conn = writer(&path);
        let checkpointer = checkpointer(&path);
        insert(&conn, 0, 300);
        // A reader holding its snapshot stops the checkpoint there: SQLite then neither
        // truncates nor syncs the database file before readers are told to read the copied
        // pages from it.
        let holder = Connection::open(&path).unwrap();
        holder.execute_batch("BEGIN").unwrap();
        assert_rows(&holder, 300, "the snapshot held");
        insert(&conn, 300, 300);
        let (frames, copied) = checkpoint(&checkpointer);
        assert!(
            copied > 0 && copied < frames,
            "a partial checkpoint ({copied} of {frames} frames)"
        );
        let fresh = Connection::open(&path).unwrap();
        assert_rows(&fresh, 600, "a reader after a partial checkpoint");
        holder.execute_batch("COMMIT").unwrap();
        let (frames, copied) = checkpoint(&checkpointer);
        assert_eq!(copied, frames, "the checkpoint copied every frame");
        let fresh = Connection::open(&path).unwrap();
        assert_rows(&fresh, 600, "a reader after the whole WAL was copied");
        // And the database file holds every row without the WAL beside it.
        let copy = tempfile::tempdir().unwrap();
        std::fs::copy(&path, copy.path().join("t.db")).unwrap();
        let alone = Connection::open(copy.path().join("t.db")).unwrap();
        assert_rows(&alone, 600, "the database file alone");
    }

    #[test]
    fn the_files_hold_every_commit_when_the_process_stops_without_closing() {
        let (dir, conn, _reader, rows) = committed();
        // What a crash leaves: the database and the WAL as they are on disk now, with the
        // writer still open and nothing checkpointed. SQLite recovers from the WAL alone.
        let copy = tempfile::tempdir().unwrap();
        for name in ["t.db", "t.db-wal"] {
            std::fs::copy(dir.path().join(name), copy.path().join(name)).unwrap();
        }
        let wal_len = std::fs::metadata(copy.path().join("t.db-wal"))
            .unwrap()
            .len();
        assert!(
            wal_len > 600 * 1500,
            "the rows are in the WAL, not yet in the database file"
        );
        let recovered = Connection::open(copy.path().join("t.db")).unwrap();
        let count: i64 = recovered
            .query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(count, rows);
        let mut rows_read = recovered.prepare("SELECT n, body FROM t").unwrap();
        let rows_read = rows_read
            .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)))
            .unwrap();
        for row in rows_read {
            let (n, read) = row.unwrap();
            assert!(read == body(n, 1500), "row {n} recovered with other bytes");
        }
        drop(conn);
    }

    /// Whether `e` is SQLite's `code` (its primary code: `SQLITE_FULL`, `SQLITE_IOERR`).
    fn is_code(e: &rusqlite::Error, code: rusqlite::ErrorCode) -> bool {
        e.sqlite_error_code() == Some(code)
    }

    fn integrity(conn: &Connection) -> String {
        conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap()
    }

    /// Inserts `rows` rows from `from` in one transaction, answering the first error.
    fn try_insert(conn: &Connection, from: i64, rows: i64) -> rusqlite::Result<()> {
        conn.execute_batch("BEGIN IMMEDIATE")?;
        let inserted = (from..from + rows).try_for_each(|n| {
            conn.execute(
                "INSERT INTO t VALUES (?1, ?2)",
                rusqlite::params![n, body(n, 1500)],
            )
            .map(drop)
        });
        let done = inserted.and_then(|()| conn.execute_batch("COMMIT"));
        if done.is_err() && !conn.is_autocommit() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        done
    }

    /// The database and WAL at `dir`, as a crash would leave them, opened from a copy.
    fn recovered(dir: &std::path::Path) -> (tempfile::TempDir, Connection) {
        let copy = tempfile::tempdir().unwrap();
        for name in ["t.db", "t.db-wal"] {
            if dir.join(name).exists() {
                std::fs::copy(dir.join(name), copy.path().join(name)).unwrap();
            }
        }
        let conn = Connection::open(copy.path().join("t.db")).unwrap();
        (copy, conn)
    }

    #[test]
    fn a_full_disk_fails_the_commit_with_sqlite_full_and_the_file_stays_failed() {
        let disk = Tmpfs::mount("1m");
        let ballast = disk.path().join("ballast");
        std::fs::write(&ballast, vec![0u8; 128 * 1024]).unwrap();
        let path = disk.path().join("t.db");
        let conn = writer(&path);
        let reader = Connection::open(&path).unwrap();
        // Commits of 10 rows (about 15 KB) until one does not fit.
        let mut committed = 0;
        let failure = loop {
            match try_insert(&conn, committed, 10) {
                Ok(()) => committed += 10,
                Err(e) => break e,
            }
            assert!(committed < 2_000, "a 1 MiB file system never filled up");
        };
        assert!(committed > 0, "the first commits fit");
        assert!(
            is_code(&failure, rusqlite::ErrorCode::DiskFull),
            "the commit fails as the default VFS fails it: SQLITE_FULL, not {failure}"
        );
        let described = take_failure().expect("the failure is described");
        assert!(
            described.contains("t.db-wal") && described.contains("disk is full"),
            "{described}"
        );
        assert_rows(&reader, committed, "a reader after the failed commit");
        assert_eq!(integrity(&reader), "ok");
        // The WAL this connection could not write stays failed, even with room again.
        std::fs::remove_file(&ballast).unwrap();
        let again = try_insert(&conn, committed, 1).expect_err("the failed WAL file refuses");
        assert!(is_code(&again, rusqlite::ErrorCode::DiskFull), "{again}");
        // What a crash leaves now holds every commit and nothing of the failed one.
        let (_copy, after_crash) = recovered(disk.path());
        assert_rows(&after_crash, committed, "the files after the failure");
        assert_eq!(integrity(&after_crash), "ok");
        // A new connection writes.
        drop(conn);
        let conn = connect(&path);
        insert(&conn, committed, 10);
        assert_rows(
            &reader,
            committed + 10,
            "a reader after a new connection's commit",
        );
        assert_eq!(integrity(&reader), "ok");
    }

    #[test]
    fn a_checkpoint_that_cannot_grow_the_database_file_fails_and_readers_keep_the_wal() {
        let disk = Tmpfs::mount("2m");
        let path = disk.path().join("t.db");
        let conn = writer(&path);
        let checkpointer = checkpointer(&path);
        insert(&conn, 0, 200);
        // A reader holding its snapshot makes the checkpoint stop part way, where SQLite
        // neither truncates nor syncs the database file: the end of the copy is the last
        // moment a failed write can be told.
        let holder = Connection::open(&path).unwrap();
        holder.execute_batch("BEGIN").unwrap();
        assert_rows(&holder, 200, "the snapshot held");
        insert(&conn, 200, 100);
        let filler = disk.fill("filler");
        let failed = checkpointer
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(0))
            .expect_err("a checkpoint that cannot write the database file fails");
        assert!(
            is_code(&failed, rusqlite::ErrorCode::DiskFull),
            "SQLITE_FULL, not {failed}"
        );
        let described = take_failure().expect("the failure is described");
        assert!(described.contains("t.db "), "{described}");
        holder.execute_batch("COMMIT").unwrap();
        // Readers still find every page in the WAL, not half-copied ones in the file.
        let fresh = Connection::open(&path).unwrap();
        assert_rows(&fresh, 300, "a reader after the failed checkpoint");
        assert_eq!(integrity(&fresh), "ok");
        let (_copy, after_crash) = recovered(disk.path());
        assert_rows(&after_crash, 300, "the files after the failed checkpoint");
        // With room again, the checkpoint copies everything and the file alone holds it.
        std::fs::remove_file(&filler).unwrap();
        let (frames, copied) = checkpoint(&checkpointer);
        assert_eq!(copied, frames, "the checkpoint copied every frame");
        let copy = tempfile::tempdir().unwrap();
        std::fs::copy(&path, copy.path().join("t.db")).unwrap();
        let alone = Connection::open(copy.path().join("t.db")).unwrap();
        assert_rows(&alone, 300, "the database file alone");
        assert_eq!(integrity(&alone), "ok");
    }

    #[test]
    fn a_failed_sync_fails_the_commit_and_no_later_sync_passes_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let conn = writer(&path);
        let reader = Connection::open(&path).unwrap();
        insert(&conn, 0, 10);
        FAIL_SYNCS.set(true);
        let failed = try_insert(&conn, 10, 10).expect_err("the sync fails");
        FAIL_SYNCS.set(false);
        assert_eq!(
            failed.sqlite_error().map(|e| e.extended_code),
            Some(ffi::SQLITE_IOERR_FSYNC),
            "{failed}"
        );
        let described = take_failure().expect("the failure is described");
        assert!(described.starts_with("cannot sync") && described.contains("t.db-wal"));
        // The disk syncs again, but this WAL file does not pretend the lost writes are there.
        let again = try_insert(&conn, 10, 10).expect_err("the failed WAL file refuses");
        assert!(
            is_code(&again, rusqlite::ErrorCode::SystemIoFailure),
            "{again}"
        );
        assert_rows(&reader, 10, "a reader after the failed sync");
        drop(conn);
        let conn = connect(&path);
        insert(&conn, 10, 10);
        assert_rows(&reader, 20, "a reader after a new connection's commit");
        assert_eq!(integrity(&reader), "ok");
    }
}
