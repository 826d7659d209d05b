//! A VFS over SQLite's default one that hands each commit's WAL frames to the kernel in a
//! few large writes (of up to 124 KiB) instead of two a page.
//!
//! SQLite appends a commit to the WAL frame by frame, two `pwrite`s a frame (its 24-byte
//! header, then the page): at ~150 pages a commit that was ~300 system calls, each walking
//! the page cache on its own, and 9% of the gateway's CPU under load (BENCHMARKS.md). Only
//! the writer's connection opens the store through this VFS. For the WAL it keeps the
//! frames in memory as SQLite writes them, in order, and writes them out at once:
//!
//! - at the commit frame (its header names the database size, which only a commit frame
//!   does): with its header, and again with its page, inside SQLite's own `xWrite`, so a
//!   failure fails the commit as any failed write does, and before SQLite publishes the
//!   commit in the WAL index, which is when other connections (the reader, the
//!   checkpointer) may read its frames, and the syncer may fsync them;
//! - before any other call on the WAL (read, sync, size, truncate, file control, close), so
//!   SQLite never sees the file without what it wrote;
//! - when a write does not follow the last, or a large transaction has kept 1 MiB.
//!
//! Every other file, and every other call, goes straight to the default VFS. Durability is
//! unchanged: the syncer fsyncs the WAL only after the commit has returned, so after the
//! frames reached the kernel, and nothing here ever answers a sync without making it.

use std::ffi::{CStr, c_int, c_void};
use std::mem::{align_of, size_of};
use std::ptr;
use std::sync::OnceLock;

use rusqlite::ffi;

/// The name the writer's connection opens the store with.
pub(super) const NAME: &CStr = c"sessiongate-batched-wal";

/// The most a transaction keeps unwritten (one that spills its page cache into the WAL
/// before it commits writes in steps of this size).
const MAX_KEPT: usize = 1 << 20;

/// The most one write hands the default VFS: its `pwrite` takes at most 128 KiB - 1 (it
/// masks the length to 17 bits, and reports a longer write as a full disk).
const MAX_WRITE: usize = 124 * 1024;

/// A WAL frame's header; its bytes 4..8 are the database size in pages after a commit,
/// zero in every other frame.
const FRAME_HEADER: usize = 24;

/// The file SQLite allocates for us: our part first, the default VFS's file after it.
#[repr(C)]
struct File {
    base: ffi::sqlite3_file,
    inner: *mut ffi::sqlite3_file,
    /// A WAL's frames written but not yet handed to the kernel; null for other files.
    kept: *mut Kept,
}

/// Where in the allocation the default VFS's file starts.
const INNER_OFFSET: usize = size_of::<File>().next_multiple_of(align_of::<u64>() * 2);

#[derive(Default)]
struct Kept {
    bytes: Vec<u8>,
    /// The file offset of `bytes[0]`.
    offset: i64,
    /// The last write was a commit frame's header: its page completes the commit.
    commit_follows: bool,
}

/// The default VFS this one wraps.
struct Wrapped(*mut ffi::sqlite3_vfs);
// SAFETY: SQLite's VFS objects are immutable once registered and safe to use from any thread.
unsafe impl Send for Wrapped {}
unsafe impl Sync for Wrapped {}

static DEFAULT: OnceLock<Result<Wrapped, String>> = OnceLock::new();

/// Registers the VFS once per process (after [`super::schema::tune_library`], since it
/// starts SQLite). Fails if SQLite has no default VFS to wrap.
pub(super) fn register() -> anyhow::Result<()> {
    let registered = DEFAULT.get_or_init(|| {
        // SAFETY: `sqlite3_vfs_find(NULL)` answers the default VFS, a static of SQLite's;
        // the copy made of it lives for the rest of the process, as a registered VFS must.
        unsafe {
            let default = ffi::sqlite3_vfs_find(ptr::null());
            if default.is_null() {
                return Err("SQLite has no default VFS".to_owned());
            }
            let mut vfs = ptr::read(default);
            vfs.szOsFile = c_int::try_from(INNER_OFFSET)
                .ok()
                .and_then(|ours| ours.checked_add((*default).szOsFile))
                .ok_or("the default VFS's file is too large")?;
            vfs.pNext = ptr::null_mut();
            vfs.zName = NAME.as_ptr();
            vfs.xOpen = Some(open);
            let vfs = Box::into_raw(Box::new(vfs));
            let rc = ffi::sqlite3_vfs_register(vfs, 0);
            if rc != ffi::SQLITE_OK {
                drop(Box::from_raw(vfs));
                return Err(format!("sqlite3_vfs_register failed ({rc})"));
            }
            Ok(Wrapped(default))
        }
    });
    registered
        .as_ref()
        .map(drop)
        .map_err(|e| anyhow::anyhow!("Failed to register the SQLite VFS: {e}"))
}

fn default_vfs() -> *mut ffi::sqlite3_vfs {
    match DEFAULT.get() {
        Some(Ok(Wrapped(vfs))) => *vfs,
        // `open` is only reachable through the registered VFS.
        _ => unreachable!("the VFS is registered before it is used"),
    }
}

unsafe extern "C" fn open(
    _vfs: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    // SAFETY: SQLite hands us `szOsFile` bytes at `file`, uninitialised; the default VFS's
    // file lives at INNER_OFFSET within them.
    unsafe {
        let ours = file.cast::<File>();
        (*ours).base.pMethods = ptr::null();
        let inner = file
            .cast::<u8>()
            .add(INNER_OFFSET)
            .cast::<ffi::sqlite3_file>();
        (*inner).pMethods = ptr::null();
        let default = default_vfs();
        let xopen = (*default).xOpen.expect("every VFS opens files");
        let rc = xopen(default, name, inner, flags, out_flags);
        if rc != ffi::SQLITE_OK {
            // Per SQLite's contract, a file whose methods were set is closed even so.
            if let Some(close) = (*inner).pMethods.as_ref().and_then(|m| m.xClose) {
                close(inner);
            }
            return rc;
        }
        ptr::write(ptr::addr_of_mut!((*ours).inner), inner);
        let kept = if flags & ffi::SQLITE_OPEN_WAL != 0 {
            Box::into_raw(Box::<Kept>::default())
        } else {
            ptr::null_mut()
        };
        ptr::write(ptr::addr_of_mut!((*ours).kept), kept);
        (*ours).base.pMethods = &METHODS;
        ffi::SQLITE_OK
    }
}

/// The default VFS's file and its methods.
///
/// # Safety
/// `file` is one this VFS opened.
unsafe fn inner(
    file: *mut ffi::sqlite3_file,
) -> (*mut ffi::sqlite3_file, &'static ffi::sqlite3_io_methods) {
    // SAFETY: `open` set `inner`, whose methods stay valid while it is open.
    unsafe {
        let inner = (*file.cast::<File>()).inner;
        (inner, &*(*inner).pMethods)
    }
}

/// Hands what is kept to the kernel, in writes of up to [`MAX_WRITE`]. What fails is dropped with the error:
/// SQLite rolls the transaction back and writes its frames again.
///
/// # Safety
/// `file` is one this VFS opened.
unsafe fn flush(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: as the caller promises; `kept` is ours while the file is open.
    unsafe {
        let Some(kept) = (*file.cast::<File>()).kept.as_mut() else {
            return ffi::SQLITE_OK;
        };
        if kept.bytes.is_empty() {
            return ffi::SQLITE_OK;
        }
        let (inner, methods) = inner(file);
        let xwrite = methods.xWrite.expect("every file writes");
        let mut rc = ffi::SQLITE_OK;
        let mut offset = kept.offset;
        for chunk in kept.bytes.chunks(MAX_WRITE) {
            rc = xwrite(inner, chunk.as_ptr().cast(), chunk.len() as c_int, offset);
            #[cfg(test)]
            tests::WAL_WRITES.with(|n| n.set(n.get() + 1));
            if rc != ffi::SQLITE_OK {
                break;
            }
            offset += chunk.len() as i64;
        }
        kept.bytes.clear();
        rc
    }
}

unsafe extern "C" fn write(
    file: *mut ffi::sqlite3_file,
    data: *const c_void,
    amount: c_int,
    offset: i64,
) -> c_int {
    // SAFETY: SQLite passes `amount` readable bytes at `data`, on a file this VFS opened;
    // each borrow of `kept` ends before `flush` takes its own.
    unsafe {
        let kept = (*file.cast::<File>()).kept;
        if kept.is_null() {
            let (inner, methods) = inner(file);
            return (methods.xWrite.expect("every file writes"))(inner, data, amount, offset);
        }
        let data = std::slice::from_raw_parts(data.cast::<u8>(), amount.max(0) as usize);
        #[cfg(test)]
        tests::saw_write(data.len(), offset);
        let (start, len) = ((*kept).offset, (*kept).bytes.len());
        if len != 0 && offset != start + len as i64 {
            let rc = flush(file);
            if rc != ffi::SQLITE_OK {
                return rc;
            }
        }
        let complete = {
            let kept = &mut *kept;
            if kept.bytes.is_empty() {
                kept.offset = offset;
            }
            kept.bytes.extend_from_slice(data);
            if data.len() == FRAME_HEADER {
                // A commit frame's header is written out at once too: SQLite may write it
                // last, with no page after it, when it rewrites the checksums of frames a
                // transaction wrote twice (after spilling its cache).
                kept.commit_follows = data[4..8] != [0; 4];
                kept.commit_follows
            } else {
                std::mem::take(&mut kept.commit_follows) || kept.bytes.len() >= MAX_KEPT
            }
        };
        if complete {
            flush(file)
        } else {
            ffi::SQLITE_OK
        }
    }
}

unsafe extern "C" fn close(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: SQLite closes each file it opened once; nothing uses it afterwards.
    unsafe {
        let flushed = flush(file);
        let (inner, methods) = inner(file);
        let closed = (methods.xClose.expect("every file closes"))(inner);
        let ours = file.cast::<File>();
        if !(*ours).kept.is_null() {
            drop(Box::from_raw((*ours).kept));
            (*ours).kept = ptr::null_mut();
        }
        if flushed != ffi::SQLITE_OK {
            flushed
        } else {
            closed
        }
    }
}

/// Methods that write out a WAL's kept frames first, then call the default VFS's method
/// (a database file has none kept, so its calls go straight through).
macro_rules! after_flush {
    ($($name:ident => $method:ident($($arg:ident: $ty:ty),*);)*) => {$(
        unsafe extern "C" fn $name(file: *mut ffi::sqlite3_file, $($arg: $ty),*) -> c_int {
            // SAFETY: SQLite calls its methods only on files this VFS opened.
            unsafe {
                let rc = flush(file);
                if rc != ffi::SQLITE_OK {
                    return rc;
                }
                let (inner, methods) = inner(file);
                (methods.$method.expect(concat!("the default VFS's files have ", stringify!($method))))(
                    inner, $($arg),*
                )
            }
        }
    )*};
}

after_flush! {
    read => xRead(buf: *mut c_void, amount: c_int, offset: i64);
    truncate => xTruncate(size: i64);
    sync => xSync(flags: c_int);
    file_size => xFileSize(size: *mut i64);
    lock => xLock(level: c_int);
    unlock => xUnlock(level: c_int);
    check_reserved_lock => xCheckReservedLock(out: *mut c_int);
    file_control => xFileControl(op: c_int, arg: *mut c_void);
}

/// Methods that call the default VFS's method as they are (none touches a WAL's frames:
/// the WAL index belongs to the database file), or answer `$missing` where it has none.
macro_rules! straight {
    ($($name:ident => $method:ident($($arg:ident: $ty:ty),*) -> $ret:ty, or $missing:expr;)*) => {$(
        unsafe extern "C" fn $name(file: *mut ffi::sqlite3_file, $($arg: $ty),*) -> $ret {
            // SAFETY: SQLite calls its methods only on files this VFS opened.
            unsafe {
                let (inner, methods) = inner(file);
                methods.$method.map_or($missing, |f| f(inner, $($arg),*))
            }
        }
    )*};
}

straight! {
    sector_size => xSectorSize() -> c_int, or 4096;
    device_characteristics => xDeviceCharacteristics() -> c_int, or 0;
    shm_map => xShmMap(region: c_int, size: c_int, extend: c_int, out: *mut *mut c_void) -> c_int, or ffi::SQLITE_IOERR;
    shm_lock => xShmLock(offset: c_int, n: c_int, flags: c_int) -> c_int, or ffi::SQLITE_IOERR;
    shm_barrier => xShmBarrier() -> (), or ();
    shm_unmap => xShmUnmap(delete: c_int) -> c_int, or ffi::SQLITE_OK;
}

unsafe extern "C" fn fetch(
    file: *mut ffi::sqlite3_file,
    offset: i64,
    amount: c_int,
    out: *mut *mut c_void,
) -> c_int {
    // SAFETY: a file this VFS opened; `out` is SQLite's to write the mapping to.
    unsafe {
        let rc = flush(file);
        if rc != ffi::SQLITE_OK {
            return rc;
        }
        let (inner, m) = inner(file);
        match m.xFetch.filter(|_| m.iVersion >= 3) {
            Some(f) => f(inner, offset, amount, out),
            None => {
                *out = ptr::null_mut();
                ffi::SQLITE_OK
            }
        }
    }
}

unsafe extern "C" fn unfetch(
    file: *mut ffi::sqlite3_file,
    offset: i64,
    page: *mut c_void,
) -> c_int {
    // SAFETY: a file this VFS opened.
    unsafe {
        let (inner, m) = inner(file);
        match m.xUnfetch.filter(|_| m.iVersion >= 3) {
            Some(f) => f(inner, offset, page),
            None => ffi::SQLITE_OK,
        }
    }
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

#[cfg(test)]
pub(super) mod tests {
    use std::cell::Cell;

    use rusqlite::{Connection, OpenFlags};

    use super::*;

    thread_local! {
        /// The writes of WAL frames this thread handed the default VFS (SQLite's connections run on the caller's thread).
        pub(in crate::store::sqlite) static WAL_WRITES: Cell<u64> = const { Cell::new(0) };
    }

    thread_local! {
        /// Pages SQLite wrote over a frame of its own transaction (no header before them),
        /// and where this thread's last WAL write ended.
        static OVERWRITES: Cell<u64> = const { Cell::new(0) };
        static LAST_END: Cell<i64> = const { Cell::new(0) };
    }

    /// Counts a page written anywhere but right after its frame's header.
    pub(super) fn saw_write(len: usize, offset: i64) {
        let header = len == FRAME_HEADER || offset == 0;
        if !header && LAST_END.with(Cell::get) != offset {
            OVERWRITES.with(|n| n.set(n.get() + 1));
        }
        LAST_END.with(|end| end.set(offset + len as i64));
    }

    fn wal_bytes(dir: &std::path::Path) -> u64 {
        std::fs::metadata(dir.join("store.db-wal")).unwrap().len()
    }

    fn writes() -> u64 {
        WAL_WRITES.with(Cell::get)
    }

    fn writer(path: &std::path::Path) -> Connection {
        crate::store::sqlite::schema::tune_library();
        register().unwrap();
        let conn = Connection::open_with_flags_and_vfs(path, OpenFlags::default(), NAME).unwrap();
        conn.execute_batch(
            "PRAGMA page_size = 2048; PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;
             PRAGMA wal_autocheckpoint = 0;
             CREATE TABLE t (id INTEGER PRIMARY KEY, body BLOB NOT NULL);",
        )
        .unwrap();
        conn
    }

    fn insert(conn: &Connection, rows: usize, bytes: usize) {
        conn.execute_batch("BEGIN").unwrap();
        for _ in 0..rows {
            conn.execute(
                "INSERT INTO t (body) VALUES (randomblob(?1))",
                [bytes as i64],
            )
            .unwrap();
        }
        conn.execute_batch("COMMIT").unwrap();
    }

    fn count(conn: &Connection) -> i64 {
        conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap()
    }

    /// A commit of ~100 pages reaches the WAL in three writes (SQLite alone writes twice a frame),
    /// and another connection, on the default VFS, reads it as soon as the commit returns.
    #[test]
    fn a_commit_reaches_the_wal_in_three_writes_and_is_read_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        let conn = writer(&path);
        let reader = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        let wal = dir.path().join("store.db-wal");
        for round in 1..=5_i64 {
            let (before, wal_before) = (writes(), std::fs::metadata(&wal).unwrap().len());
            insert(&conn, 100, 1500);
            let made = writes() - before;
            assert!(
                made <= 3,
                "round {round}: {made} writes for ~210 KB of frames"
            );
            let grown = std::fs::metadata(&wal).unwrap().len() - wal_before;
            assert!(
                grown > 100 * 2048,
                "round {round}: the WAL grew by {grown} bytes"
            );
            assert_eq!(count(&reader), round * 100, "round {round}");
        }
    }

    /// Opens a copy of the store's database and WAL (not its WAL index), as a restart after
    /// a crash finds them: SQLite rebuilds the index from the WAL, checking every frame's
    /// checksum, so only what reached the files (the kernel) counts.
    fn reopened_copy(dir: &std::path::Path) -> (tempfile::TempDir, Connection) {
        let copy = tempfile::tempdir().unwrap();
        for name in ["store.db", "store.db-wal"] {
            std::fs::copy(dir.join(name), copy.path().join(name)).unwrap();
        }
        let conn = Connection::open(copy.path().join("store.db")).unwrap();
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok");
        (copy, conn)
    }

    /// A transaction larger than what is kept is written in steps, and is whole in the files.
    #[test]
    fn a_large_transaction_is_written_in_steps_and_is_whole_in_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let conn = writer(&dir.path().join("store.db"));
        let before = writes();
        insert(&conn, 2000, 1500);
        let steps = writes() - before;
        assert!(
            (20..=40).contains(&steps),
            "{steps} writes for ~3 MiB of frames"
        );
        insert(&conn, 10, 100);
        let (_copy, again) = reopened_copy(dir.path());
        assert_eq!(count(&again), 2010);
    }

    /// A transaction that spills its page cache into the WAL and then changes the same pages
    /// again has SQLite write them over its own frames and, at commit, rewrite the checksums
    /// of its frames, the commit frame's header last with no page after it: that header too
    /// is in the file when the commit returns (without its own write, the copy opened as
    /// after a crash stops at the broken checksum and loses the whole transaction).
    #[test]
    fn a_transaction_that_rewrote_its_frames_is_whole_in_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let conn = writer(&dir.path().join("store.db"));
        insert(&conn, 50, 100);
        conn.execute_batch("PRAGMA cache_size = 10; BEGIN").unwrap();
        for round in 0..20 {
            conn.execute("INSERT INTO t (body) VALUES (randomblob(1500))", [])
                .unwrap();
            for _ in 0..25 {
                conn.execute("INSERT INTO t (body) VALUES (randomblob(1500))", [])
                    .unwrap();
            }
            conn.execute(
                "UPDATE t SET body = randomblob(100 + ?1) WHERE id <= 50",
                [round],
            )
            .unwrap();
        }
        // The path under test: SQLite spilled, then wrote pages over its own frames.
        let (spilled, over) = (wal_bytes(dir.path()), OVERWRITES.with(Cell::get));
        assert!(
            spilled > 500 * 2048,
            "{spilled} WAL bytes before the commit"
        );
        assert!(over > 0, "no page was written over its own frame");
        conn.execute_batch("COMMIT").unwrap();
        let (_copy, again) = reopened_copy(dir.path());
        assert_eq!(count(&again), 570);
        let longest: i64 = again
            .query_row("SELECT max(length(body)) FROM t WHERE id <= 50", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(longest, 119, "the last update of the transaction is kept");
    }
}
