/* The power-loss harness's write recorder, preloaded (LD_PRELOAD) into a gateway process.
 *
 * For every file under POWERLOSS_DIR it logs, before the process may go on, each write and
 * truncate together with the bytes it replaced, and each fsync/fdatasync with the log
 * position at which it started. After the process is gone, the harness (tests/api/
 * powerloss.rs) reads the log and undoes every write that no completed fsync covered:
 * the files as a power cut would have left them. With POWERLOSS_CUT=K the process
 * SIGKILLs itself just before its K-th write, truncate or sync: a cut at a chosen moment;
 * with POWERLOSS_TRIGGER=PATH, just before the first one after PATH exists (the harness
 * creates it the moment it has an answer, to cut right after an acknowledgement); with
 * POWERLOSS_CUT_AFTER_WAL_HEADER=N, two operations after the N-th write of a WAL header
 * (offset 0 of a -wal file: its creation, then each time the WAL is started over).
 *
 * Record layout (little-endian), one after another in POWERLOSS_LOG:
 *   'O' u32 id, u32 path length, path        a tracked file opened (id per path)
 *   'W' u32 id, u64 offset, u64 size before, u64 old length, old bytes, u64 new length, new bytes
 *   'T' u32 id, u64 new size, u64 size before, u64 old length, old bytes (cut off)
 *   'S' u32 id, u64 records before the sync started           a sync that returned 0
 *   'U' u32 id                                                   the path was unlinked
 * Operations the model does not cover on a tracked file (vectored or mapped writes,
 * O_TRUNC, fallocate) stop the process with exit code 97, so the harness fails loudly
 * instead of modelling them wrong. Directory entries are taken as durable at once.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

#define MAX_FD 4096
#define MAX_IDS 256

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static char prefix[4096];
static size_t prefix_len;
static int log_fd = -1;
static long long cut_at = -1;
static char trigger[4096];
static long long cut_after_header = -1;
static long long wal_headers;
static long long ops;
static unsigned long long records;
static int fd_id[MAX_FD]; /* 0 = untracked, else id + 1 */
static char *id_path[MAX_IDS];
static unsigned id_count;
static int ready;

#define REAL(ret, name, ...)                                                                 \
    static ret (*real_##name)(__VA_ARGS__);                                                  \
    static ret (*get_##name(void))(__VA_ARGS__) {                                            \
        if (!real_##name) real_##name = (ret(*)(__VA_ARGS__))dlsym(RTLD_NEXT, #name);        \
        return real_##name;                                                                  \
    }

REAL(int, open, const char *, int, ...)
REAL(int, open64, const char *, int, ...)
REAL(int, openat, int, const char *, int, ...)
REAL(int, openat64, int, const char *, int, ...)
REAL(int, close, int)
REAL(ssize_t, write, int, const void *, size_t)
REAL(ssize_t, pwrite, int, const void *, size_t, off_t)
REAL(ssize_t, pwrite64, int, const void *, size_t, off64_t)
REAL(ssize_t, writev, int, const struct iovec *, int)
REAL(ssize_t, pwritev, int, const struct iovec *, int, off_t)
REAL(int, ftruncate, int, off_t)
REAL(int, ftruncate64, int, off64_t)
REAL(int, fsync, int)
REAL(int, fdatasync, int)
REAL(int, unlink, const char *)
REAL(int, unlinkat, int, const char *, int)
REAL(int, fallocate, int, int, off_t, off_t)
REAL(int, posix_fallocate, int, off_t, off_t)
REAL(void *, mmap, void *, size_t, int, int, int, off_t)
REAL(void *, mmap64, void *, size_t, int, int, int, off64_t)

static void fail(const char *what) {
    char msg[256];
    int n = snprintf(msg, sizeof msg, "powerloss shim: %s on a tracked file is not modelled\n", what);
    if (n > 0) get_write()(2, msg, (size_t)n);
    _exit(97);
}

static void out(const void *p, size_t n) {
    const char *c = p;
    while (n > 0) {
        ssize_t w = get_write()(log_fd, c, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            fail("a write to the log failed");
        }
        c += w;
        n -= (size_t)w;
    }
}
static void out_u8(uint8_t v) { out(&v, 1); }
static void out_u32(uint32_t v) { out(&v, 4); }
static void out_u64(uint64_t v) { out(&v, 8); }

__attribute__((constructor)) static void init(void) {
    const char *dir = getenv("POWERLOSS_DIR");
    const char *log = getenv("POWERLOSS_LOG");
    const char *cut = getenv("POWERLOSS_CUT");
    const char *when = getenv("POWERLOSS_TRIGGER");
    const char *header = getenv("POWERLOSS_CUT_AFTER_WAL_HEADER");
    if (!dir || !log) return;
    snprintf(prefix, sizeof prefix, "%s/", dir);
    prefix_len = strlen(prefix);
    log_fd = get_open()(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (log_fd < 0) fail("opening the log");
    if (cut) cut_at = atoll(cut);
    if (when) snprintf(trigger, sizeof trigger, "%s", when);
    if (header) cut_after_header = atoll(header);
    ready = 1;
}

/* Counts one operation; at the chosen one the power goes. Called with `mu` held. */
static void tick(void) {
    ops++;
    if ((cut_at > 0 && ops >= cut_at) || (trigger[0] && access(trigger, F_OK) == 0))
        kill(getpid(), SIGKILL);
}

static int tracked_path(const char *path) {
    return ready && path && strncmp(path, prefix, prefix_len) == 0 &&
           !strstr(path + prefix_len, "-shm") && !strstr(path + prefix_len, ".lock");
}

static int id_of(int fd) { return fd >= 0 && fd < MAX_FD ? fd_id[fd] - 1 : -1; }

static void track(int fd, const char *path, int flags) {
    if (fd < 0 || !tracked_path(path)) return;
    if (flags & O_TRUNC) fail("O_TRUNC");
    if (fd >= MAX_FD) fail("a descriptor past the table");
    pthread_mutex_lock(&mu);
    unsigned id = 0;
    while (id < id_count && strcmp(id_path[id], path) != 0) id++;
    if (id == id_count) {
        if (id_count == MAX_IDS) fail("too many files");
        id_path[id_count++] = strdup(path);
        out_u8('O');
        out_u32(id);
        out_u32((uint32_t)strlen(path));
        out(path, strlen(path));
        records++;
    }
    fd_id[fd] = (int)id + 1;
    pthread_mutex_unlock(&mu);
}

/* The mode that open and openat take only when they may create the file. */
#define MODE_ARG(mode, flags)                                                                \
    mode_t mode = 0;                                                                         \
    if ((flags) & (O_CREAT | O_TMPFILE)) {                                                   \
        va_list ap;                                                                          \
        va_start(ap, flags);                                                                 \
        mode = va_arg(ap, mode_t);                                                           \
        va_end(ap);                                                                          \
    }

#define OPEN_WRAPPER(name)                                                              \
    int name(const char *path, int flags, ...) {                                             \
        MODE_ARG(mode, flags);                                                               \
        int fd = get_##name()(path, flags, mode);                                            \
        track(fd, path, flags);                                                              \
        return fd;                                                                           \
    }
OPEN_WRAPPER(open)
OPEN_WRAPPER(open64)

#define OPENAT_WRAPPER(name)                                                                 \
    int name(int dirfd, const char *path, int flags, ...) {                                  \
        MODE_ARG(mode, flags);                                                               \
        int fd = get_##name()(dirfd, path, flags, mode);                                     \
        if (path[0] == '/') track(fd, path, flags);                                          \
        return fd;                                                                           \
    }
OPENAT_WRAPPER(openat)
OPENAT_WRAPPER(openat64)

int close(int fd) {
    if (fd >= 0 && fd < MAX_FD && fd_id[fd]) {
        pthread_mutex_lock(&mu);
        fd_id[fd] = 0;
        pthread_mutex_unlock(&mu);
    }
    return get_close()(fd);
}

/* Logs a write of `n` bytes at `off` (done with `mu` held, before it happens). */
static void log_write(int id, int fd, const void *buf, size_t n, off_t off) {
    struct stat st;
    if (fstat(fd, &st) != 0) fail("fstat");
    uint64_t size = (uint64_t)st.st_size;
    uint64_t old_len = (uint64_t)off < size ? size - (uint64_t)off : 0;
    if (old_len > n) old_len = n;
    out_u8('W');
    out_u32((uint32_t)id);
    out_u64((uint64_t)off);
    out_u64(size);
    out_u64(old_len);
    if (old_len > 0) {
        char *old = malloc(old_len);
        if (!old || pread(fd, old, old_len, off) != (ssize_t)old_len) fail("reading old bytes");
        out(old, old_len);
        free(old);
    }
    out_u64(n);
    out(buf, n);
    records++;
    size_t len = strlen(id_path[id]);
    if (off == 0 && len > 4 && strcmp(id_path[id] + len - 4, "-wal") == 0 &&
        ++wal_headers == cut_after_header)
        cut_at = ops + 3;
}

ssize_t write(int fd, const void *buf, size_t n) {
    int id = id_of(fd);
    if (id < 0 || fd == log_fd) return get_write()(fd, buf, n);
    pthread_mutex_lock(&mu);
    tick();
    off_t off = lseek(fd, 0, SEEK_CUR);
    if (off < 0) fail("lseek");
    log_write(id, fd, buf, n, off);
    ssize_t w = get_write()(fd, buf, n);
    pthread_mutex_unlock(&mu);
    return w;
}

/* pwrite and pwrite64 (one and the same on 64-bit Linux): logged, then done. */
#define PWRITE_WRAPPER(name, off_type)                                                       \
    ssize_t name(int fd, const void *buf, size_t n, off_type off) {                          \
        int id = id_of(fd);                                                                  \
        if (id < 0) return get_##name()(fd, buf, n, off);                                    \
        pthread_mutex_lock(&mu);                                                             \
        tick();                                                                              \
        log_write(id, fd, buf, n, (off_t)off);                                               \
        ssize_t w = get_##name()(fd, buf, n, off);                                           \
        pthread_mutex_unlock(&mu);                                                           \
        return w;                                                                            \
    }
PWRITE_WRAPPER(pwrite, off_t)
PWRITE_WRAPPER(pwrite64, off64_t)

ssize_t writev(int fd, const struct iovec *iov, int count) {
    if (id_of(fd) >= 0) fail("writev");
    return get_writev()(fd, iov, count);
}

ssize_t pwritev(int fd, const struct iovec *iov, int count, off_t off) {
    if (id_of(fd) >= 0) fail("pwritev");
    return get_pwritev()(fd, iov, count, off);
}

static void log_truncate(int id, int fd, uint64_t len) {
    struct stat st;
    if (fstat(fd, &st) != 0) fail("fstat");
    uint64_t size = (uint64_t)st.st_size;
    uint64_t old_len = size > len ? size - len : 0;
    out_u8('T');
    out_u32((uint32_t)id);
    out_u64(len);
    out_u64(size);
    out_u64(old_len);
    if (old_len > 0) {
        char *old = malloc(old_len);
        if (!old || pread(fd, old, old_len, (off_t)len) != (ssize_t)old_len) fail("reading cut bytes");
        out(old, old_len);
        free(old);
    }
    records++;
}

/* ftruncate and ftruncate64: logged with the bytes cut off, then done. */
#define FTRUNCATE_WRAPPER(name, off_type)                                                    \
    int name(int fd, off_type len) {                                                         \
        int id = id_of(fd);                                                                  \
        if (id < 0) return get_##name()(fd, len);                                            \
        pthread_mutex_lock(&mu);                                                             \
        tick();                                                                              \
        log_truncate(id, fd, (uint64_t)len);                                                 \
        int r = get_##name()(fd, len);                                                       \
        pthread_mutex_unlock(&mu);                                                           \
        return r;                                                                            \
    }
FTRUNCATE_WRAPPER(ftruncate, off_t)
FTRUNCATE_WRAPPER(ftruncate64, off64_t)

/* A sync covers what was written before it started; it is logged once it has returned. */
static int synced(int fd, int (*real)(int)) {
    int id = id_of(fd);
    if (id < 0) return real(fd);
    pthread_mutex_lock(&mu);
    tick();
    unsigned long long before = records;
    pthread_mutex_unlock(&mu);
    int r = real(fd);
    if (r == 0) {
        pthread_mutex_lock(&mu);
        out_u8('S');
        out_u32((uint32_t)id);
        out_u64(before);
        records++;
        pthread_mutex_unlock(&mu);
    }
    return r;
}

int fsync(int fd) { return synced(fd, get_fsync()); }
int fdatasync(int fd) { return synced(fd, get_fdatasync()); }

static void log_unlink(const char *path) {
    if (!tracked_path(path)) return;
    pthread_mutex_lock(&mu);
    for (unsigned id = 0; id < id_count; id++) {
        if (strcmp(id_path[id], path) == 0) {
            out_u8('U');
            out_u32(id);
            records++;
        }
    }
    pthread_mutex_unlock(&mu);
}

int unlink(const char *path) {
    int r = get_unlink()(path);
    if (r == 0) log_unlink(path);
    return r;
}

int unlinkat(int dirfd, const char *path, int flags) {
    int r = get_unlinkat()(dirfd, path, flags);
    if (r == 0 && path[0] == '/') log_unlink(path);
    return r;
}

int fallocate(int fd, int mode, off_t off, off_t len) {
    if (id_of(fd) >= 0) fail("fallocate");
    return get_fallocate()(fd, mode, off, len);
}

int posix_fallocate(int fd, off_t off, off_t len) {
    if (id_of(fd) >= 0) fail("posix_fallocate");
    return get_posix_fallocate()(fd, off, len);
}

void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off) {
    if (id_of(fd) >= 0 && (prot & PROT_WRITE) && (flags & MAP_SHARED)) fail("a shared writable mmap");
    return get_mmap()(addr, len, prot, flags, fd, off);
}

void *mmap64(void *addr, size_t len, int prot, int flags, int fd, off64_t off) {
    if (id_of(fd) >= 0 && (prot & PROT_WRITE) && (flags & MAP_SHARED)) fail("a shared writable mmap");
    return get_mmap64()(addr, len, prot, flags, fd, off);
}
