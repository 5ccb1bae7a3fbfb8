// SPDX-License-Identifier: MIT
/*
 * The page cache of a file (the kernel's struct file and address_space): the
 * registry that gives one cache per file, the memfd that holds its pages, the
 * state of each page (claimed, cached, dirty), the faults waiting for a page
 * being read, and write-back. The fault path that fills it is filemap.c.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <liburing.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

/* A fault that found its page BUSY: woken when the fill lets go of it. */
struct cache_waiter {
	struct cache_waiter *next;
	struct mm *mm; /* a reference */
	uintptr_t addr;
	uint64_t fp;
};

/* Every cache of the process, found by device and inode. */
static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static struct cache *registry;

/* mmap's own checks of a descriptor, in its order. */
static int check_fd(int fd, bool write, struct stat *st)
{
	int fl = fcntl(fd, F_GETFL);
	void *probe;

	if (fl < 0 || (fl & O_PATH))
		return -EBADF;
	if ((fl & O_ACCMODE) == O_WRONLY)
		return -EACCES;
	if (write && (fl & O_ACCMODE) != O_RDWR)
		return -EACCES;
	if (fstat(fd, st))
		return -errno;
	if (!S_ISREG(st->st_mode))
		return -ENODEV;
	/*
	 * Whether the file may be mapped at all is the file system's say (the
	 * regular files of /proc and /sys may not: -ENODEV): ask mmap itself,
	 * with one page that is never touched.
	 */
	probe = mmap(NULL, lzm_page_size, PROT_READ, MAP_PRIVATE, fd, 0);
	if (probe == MAP_FAILED)
		return -errno;
	munmap(probe, lzm_page_size);
	return 0;
}

static void cache_free(struct cache *c)
{
	for (struct cache_chunk *ch = c->chunk_list, *next; ch; ch = next) {
		next = ch->next;
		free(ch);
	}
	if (c->chunks)
		munmap(c->chunks, c->nchunks * sizeof(*c->chunks));
	if (c->fill_win)
		munmap(c->fill_win, c->fill_win_len);
	int fds[] = { c->fd, c->dfd, c->wfd, c->memfd, c->aux_uffd, c->memfd_old };

	for (size_t i = 0; i < sizeof(fds) / sizeof(fds[0]); i++)
		if (fds[i] >= 0)
			close(fds[i]);
	while (c->waiters) { /* none: every fill lets go before its source goes */
		struct cache_waiter *w = c->waiters;

		c->waiters = w->next;
		lzm_mm_put(w->mm);
		free(w);
	}
	free(c->sharers);
	lzm_nbd_close(c->nbd);
	pthread_mutex_destroy(&c->lock);
	pthread_mutex_destroy(&c->wb_lock);
	free(c);
}

/*
 * SIGXFSZ blocked around our own writes and truncations: past RLIMIT_FSIZE
 * they are an error we handle (-EFBIG), not a signal that kills the program.
 * The signal they raise is taken back, unless one was pending already.
 */
struct no_xfsz {
	sigset_t set, old;
	bool had;
};

static void no_xfsz_begin(struct no_xfsz *x)
{
	sigset_t pending;

	sigemptyset(&x->set);
	sigaddset(&x->set, SIGXFSZ);
	pthread_sigmask(SIG_BLOCK, &x->set, &x->old);
	sigpending(&pending);
	x->had = sigismember(&pending, SIGXFSZ);
}

static void no_xfsz_end(struct no_xfsz *x)
{
	sigset_t pending;

	if (!x->had) {
		struct timespec zero = { 0, 0 };

		sigpending(&pending);
		if (sigismember(&pending, SIGXFSZ))
			sigtimedwait(&x->set, NULL, &zero);
	}
	pthread_sigmask(SIG_SETMASK, &x->old, NULL);
}

/*
 * The memfd is as large as any file the cache holds, sparse: a page beyond
 * the end of the file is then a hole like any other, whose fault reaches us,
 * and we decide as mmap does when it is touched (SIGBUS, or the bytes of a
 * file that has grown since). Under an RLIMIT_FSIZE lower than that, it is
 * as large as the limit allows: pages beyond are SIGBUS from the kernel.
 */
static int memfd_size(int memfd)
{
	off_t size = (off_t)1 << CACHE_MAX_SHIFT;
	struct no_xfsz x;
	struct rlimit rl;
	int ret;

	no_xfsz_begin(&x);
	ret = ftruncate(memfd, size);
	if (ret && errno == EFBIG && getrlimit(RLIMIT_FSIZE, &rl) == 0 &&
	    rl.rlim_cur >= lzm_page_size && rl.rlim_cur < (rlim_t)size)
		ret = ftruncate(memfd, (off_t)(rl.rlim_cur & ~(rlim_t)(lzm_page_size - 1)));
	no_xfsz_end(&x);
	return ret;
}

static int aux_open(struct cache *c)
{
	uint64_t features;
	int ret = lzm_uffd_open(&c->aux_uffd);

	if (ret == 0 && (ret = lzm_uffd_api(c->aux_uffd, UFFD_FEATURE_SIGBUS, &features))) {
		close(c->aux_uffd);
		c->aux_uffd = -1;
	}
	return ret;
}

/*
 * A window of ours on [off, off + len) of the memfd, registered with the
 * cache's aux_uffd: a page copied in there with UFFDIO_COPY is a 4 KiB page;
 * a hole touched there (a page the program punched, MADV_REMOVE) fails with
 * EFAULT in a system call, instead of becoming zeros in the cache. No child
 * inherits it (its copy would not be registered). NULL and errno on failure.
 */
static char *aux_window(struct cache *c, uint64_t off, size_t len, int prot)
{
	char *w = mmap(NULL, len, prot, MAP_SHARED | MAP_NORESERVE, c->memfd, (off_t)off);
	int ret;

	if (w == MAP_FAILED)
		return NULL;
	ret = madvise(w, len, MADV_DONTFORK) ? -errno : 0;
	if (ret == 0)
		ret = lzm_uffd_register(c->aux_uffd, (uintptr_t)w, len, UFFDIO_REGISTER_MODE_MISSING);
	if (ret) {
		munmap(w, len); /* no event: aux_uffd asked for none */
		errno = -ret;
		return NULL;
	}
	return w;
}

/*
 * A page present in the memfd is mapped by the kernel with no word to us,
 * so a page must enter it whole and with its data, never for an instant
 * without. pwrite() does not promise that: where shmem gives large folios
 * (shmem_enabled within_size, always, force), one page written makes its
 * whole folio present, the rest zeros; and a copy that faults on its
 * source midway (pwrite copies with page faults disabled, then retries)
 * leaves the new page present and zero-filled until the retry. So pages
 * enter through UFFDIO_COPY into a window of ours: shmem_mfill_atomic_pte()
 * copies into a fresh 4 KiB page and only then inserts it, whole. fill_win
 * covers the file's start as it is at creation (up to 1 GiB: address space
 * is not free, RLIMIT_AS); a fill beyond maps a window of its own for the
 * copy. The window's mappings of the pages are dropped after the copy, so
 * that they count once in RSS.
 */
#define FILL_WIN_ALIGN ((uint64_t)64 << 20)
#define FILL_WIN_MAX   ((uint64_t)1 << 30)

static void fill_window_init(struct cache *c, uint64_t size)
{
	uint64_t len = (size + lzm_page_size + FILL_WIN_ALIGN - 1) & ~(FILL_WIN_ALIGN - 1);

	c->fill_win = aux_window(c, 0, (size_t)(len < FILL_WIN_MAX ? len : FILL_WIN_MAX),
				 PROT_READ | PROT_WRITE);
	if (c->fill_win)
		c->fill_win_len = (size_t)(len < FILL_WIN_MAX ? len : FILL_WIN_MAX);
}

static int fill_copy(int uffd, char *dst, const char *buf, size_t len)
{
	unsigned again = 0;

	while (len) {
		size_t done = 0;
		int ret = lzm_uffd_copy(uffd, (uintptr_t)dst, buf, len, false, &done);

		if (ret == -EEXIST) {
			/* there already, though we hold its claim (a page the cache
			 * lost track of; lzm_cache_recheck no longer drops a page
			 * filled again behind its back): keep it, never overwrite */
			done += lzm_page_size;
		} else if (ret == -EAGAIN && !done && ++again > 100) {
			return ret; /* no events here, so it cannot last; never spin */
		} else if (ret && ret != -EAGAIN) {
			return ret;
		}
		dst += done;
		buf += done;
		len -= done;
	}
	return 0;
}

int lzm_cache_fill(struct cache *c, const char *buf, size_t len, uint64_t off)
{
	char *w;
	int ret;

	if (c->fill_win && off + len <= c->fill_win_len) {
		ret = fill_copy(c->aux_uffd, c->fill_win + off, buf, len);
		/* the pages stay in the cache; only our mapping of them goes (no
		 * event: aux_uffd asked for none) */
		madvise(c->fill_win + off, len, MADV_DONTNEED);
		return ret;
	}
	w = aux_window(c, off, len, PROT_READ | PROT_WRITE);
	if (!w)
		return -errno;
	ret = fill_copy(c->aux_uffd, w, buf, len);
	munmap(w, len);
	return ret;
}

int lzm_cache_copy_out(struct cache *c, int uffd, uintptr_t dst, uint64_t fp, size_t n, bool wp,
		       size_t *done)
{
	uint64_t off = fp << lzm_page_shift;
	size_t len = n << lzm_page_shift;
	bool own = !c->fill_win || off + len > c->fill_win_len;
	char *w = own ? aux_window(c, off, len, PROT_READ) : c->fill_win + off;
	int ret = 0;

	*done = 0;
	if (!w)
		return -errno;
	while (*done < len) {
		size_t d = 0;

		ret = lzm_uffd_copy(uffd, dst + *done, w + *done, len - *done, wp, &d);
		*done += d;
		if (ret && !(ret == -EAGAIN && d))
			break;
	}
	if (own)
		munmap(w, len);
	else
		madvise(w, len, MADV_DONTNEED); /* our mapping only, as after a fill */
	return ret;
}

/*
 * A new open file description of fd's file, with flags (and O_CLOEXEC),
 * through /proc: -1 and errno on failure. Ours are new descriptions where
 * the caller's has flags that would change what we do (O_DIRECT: every read
 * aligned, and taking the file's lock that a write(2) from one of our
 * regions holds; O_APPEND: every write an append), so that we never change
 * theirs either.
 */
static int fd_reopen(int fd, int flags)
{
	char path[64];

	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	return open(path, flags | O_CLOEXEC);
}

int lzm_cache_memfd(struct cache *c, bool write)
{
	int fd = write ? fcntl(c->memfd, F_DUPFD_CLOEXEC, 3) : fd_reopen(c->memfd, O_RDONLY);

	return fd < 0 ? -errno : fd;
}

static int cache_new(int fd, const struct stat *st, int memfd, const void *owner,
		     struct cache **cp)
{
	struct cache *c = calloc(1, sizeof(*c));

	if (!c)
		return -ENOMEM;
	static _Atomic uint64_t next_id = 1;

	c->id = atomic_fetch_add_explicit(&next_id, 1, memory_order_relaxed);
	c->fd = c->dfd = c->wfd = c->memfd = c->aux_uffd = c->memfd_old = -1;
	pthread_mutex_init(&c->lock, NULL);
	pthread_mutex_init(&c->wb_lock, NULL);
	atomic_init(&c->refs, 1);
	atomic_init(&c->size, (uint64_t)st->st_size);
	c->dev = st->st_dev;
	c->ino = st->st_ino;
	/* without /proc, a dup; an NBD export's (fd -1) has none */
	c->fd = fd >= 0 && fcntl(fd, F_GETFL) & O_DIRECT ? fd_reopen(fd, O_RDONLY) : -1;
	if (c->fd < 0 && fd >= 0)
		c->fd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
	c->owner = owner;
	c->memfd = memfd >= 0 ? memfd : memfd_create("lazymap-cache", MFD_CLOEXEC);
	if ((c->fd < 0 && fd >= 0) || c->memfd < 0 || (memfd < 0 && memfd_size(c->memfd))) {
		int err = errno;

		cache_free(c);
		return -err;
	}
	int ret = aux_open(c);

	if (ret) {
		cache_free(c);
		return ret;
	}
	/* Ours alone: a faultd client given a read-only descriptor of it must
	 * not reopen it for writing through /proc (a memfd is 0777). */
	if (memfd < 0)
		fchmod(c->memfd, 0600);
	fill_window_init(c, (uint64_t)st->st_size);
	/* The chunk table is reserved, not committed: a page of it per 2 GiB of file touched. */
	c->nchunks = (size_t)1 << (CACHE_MAX_SHIFT - lzm_page_shift - CHUNK_SHIFT);
	c->chunks = mmap(NULL, c->nchunks * sizeof(*c->chunks), PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (c->chunks == MAP_FAILED) {
		c->chunks = NULL;
		c->nchunks = 0;
		cache_free(c);
		return -ENOMEM;
	}
	*cp = c;
	return 0;
}

/* A descriptor of the file, made once, under c->lock: O_DIRECT, or writable. */
static int late_fd(struct cache *c, int *slot, int src_fd, int flags)
{
	int ret = 0;

	pthread_mutex_lock(&c->lock);
	if (*slot < 0) {
		*slot = flags < 0 ? fcntl(src_fd, F_DUPFD_CLOEXEC, 3) : fd_reopen(src_fd, flags);
		/* file systems without O_DIRECT refuse it with EINVAL (tmpfs
		 * did before Linux 6.6; it accepts it since) */
		if (*slot < 0)
			ret = -errno;
	}
	pthread_mutex_unlock(&c->lock);
	return ret;
}

int lzm_cache_direct(struct cache *c)
{
	return late_fd(c, &c->dfd, c->fd, O_RDONLY | O_DIRECT);
}

uint64_t *lzm_cache_ids(size_t *n)
{
	uint64_t *ids;
	size_t k = 0;

	pthread_mutex_lock(&registry_lock);
	for (struct cache *c = registry; c; c = c->next)
		k++;
	ids = malloc((k ? k : 1) * sizeof(*ids));
	*n = 0;
	for (struct cache *c = registry; c && ids; c = c->next)
		ids[(*n)++] = c->id;
	pthread_mutex_unlock(&registry_lock);
	return ids;
}

void lzm_cache_fork_child(void)
{
	/*
	 * The caches are the parent's: its threads may have held their locks
	 * at the fork, and its handlers serve our copies of its regions. A
	 * lazymap of ours opens caches of its own. The parent's copies here
	 * are left as they are, possibly mid-change: their descriptors stay
	 * open in the child.
	 */
	registry = NULL;
	pthread_mutex_init(&registry_lock, NULL);
}

/* The cache of st's file, or NULL; registry_lock held. */
static struct cache *registry_find(const struct stat *st, const void *owner)
{
	struct cache *c;

	for (c = registry; c; c = c->next)
		if (!c->nbd && c->dev == st->st_dev && c->ino == st->st_ino && c->owner == owner)
			break;
	return c;
}

/*
 * Whether c, found in the registry, is closing: its last region went and
 * its dirty pages are being written. Then wait a little (registry_lock
 * dropped meanwhile) and the caller looks again: it takes c back once
 * that is done. registry_lock held.
 */
static bool registry_closing(const struct cache *c)
{
	if (!c || !c->closing)
		return false;
	pthread_mutex_unlock(&registry_lock);
	usleep(100);
	pthread_mutex_lock(&registry_lock);
	return true;
}

/* Take a reference to a cache found in the registry (registry_lock held). */
static void registry_take(struct cache *c)
{
	/* an orphaned cache's dirty pages have no range to be synced by */
	if (!atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed))
		atomic_store(&c->orphans, true);
	c->orphaned = false;
}

static struct cache *registry_find_uri(const char *uri)
{
	struct cache *c;

	for (c = registry; c; c = c->next)
		if (c->nbd && !strcmp(lzm_nbd_uri(c->nbd), uri))
			break;
	return c;
}

int lzm_cache_open_nbd(const char *uri, unsigned timeout_ms, bool write, struct cache **cp)
{
	struct nbd_export *x = NULL;
	struct cache *c;
	int ret = 0;

	pthread_mutex_lock(&registry_lock);
	while (registry_closing(c = registry_find_uri(uri)))
		;
	if (c)
		registry_take(c);
	pthread_mutex_unlock(&registry_lock);
	if (!c) {
		/* asked without the lock: the server may take its time */
		ret = lzm_nbd_open(uri, timeout_ms, &x);
		if (ret)
			return ret;

		struct stat st = { .st_size = (off_t)lzm_nbd_size(x) };

		pthread_mutex_lock(&registry_lock);
		while (registry_closing(c = registry_find_uri(uri)))
			;
		if (c) {
			registry_take(c); /* another thread opened it meanwhile */
		} else if ((ret = cache_new(-1, &st, -1, NULL, &c)) == 0) {
			c->nbd = x;
			x = NULL;
			c->next = registry;
			registry = c;
		}
		pthread_mutex_unlock(&registry_lock);
		lzm_nbd_close(x);
		if (ret)
			return ret;
	}
	if (write && lzm_nbd_read_only(c->nbd)) {
		lzm_cache_put(c);
		return -EACCES;
	}
	*cp = c;
	return 0;
}

int lzm_cache_open(int fd, bool direct, bool write, struct cache **cp)
{
	return lzm_cache_open_remote(fd, direct, write, -1, NULL, 0, cp);
}

int lzm_cache_open_remote(int fd, bool direct, bool write, int memfd, const void *owner,
			  uint64_t remote_id, struct cache **cp)
{
	struct stat st;
	struct cache *c;
	int ret = check_fd(fd, write, &st);

	if (ret) {
		if (memfd >= 0)
			close(memfd);
		return ret;
	}
	pthread_mutex_lock(&registry_lock);
	while (registry_closing(c = registry_find(&st, owner)))
		;
	if (c) {
		registry_take(c);
		/* faultd's memfd again: a writable one replaces a read-only one
		 * (mappings made of the old one stay: they map the same file) */
		if (memfd >= 0 && c->memfd_ro && c->memfd_old < 0 &&
		    (fcntl(memfd, F_GETFL) & O_ACCMODE) == O_RDWR) {
			/* kept open: a map of the file may be using it now */
			c->memfd_old = c->memfd;
			c->memfd = memfd;
			c->memfd_ro = false;
			memfd = -1;
		}
		if (memfd >= 0)
			close(memfd);
	} else {
		ret = cache_new(fd, &st, memfd, owner, &c);
		if (ret == 0) {
			c->remote_id = remote_id;
			c->memfd_ro = memfd >= 0 && (fcntl(memfd, F_GETFL) & O_ACCMODE) != O_RDWR;
			c->next = registry;
			registry = c;
		}
	}
	pthread_mutex_unlock(&registry_lock);
	if (ret)
		return ret;
	if (direct)
		ret = lzm_cache_direct(c);
	/* O_APPEND would make every write-back an append, O_DIRECT refuse the
	 * file's last, partial page: reopen without them */
	if (write && ret == 0)
		ret = late_fd(c, &c->wfd, fd, fcntl(fd, F_GETFL) & (O_APPEND | O_DIRECT) ? O_RDWR : -1);
	if (ret) {
		lzm_cache_put(c);
		return ret;
	}
	*cp = c;
	return 0;
}

void lzm_cache_get(struct cache *c)
{
	atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
}

static int writeback(struct cache *c, uint64_t fp, uint64_t n, struct lazymap *lm, int how);

void lzm_cache_put(struct cache *c)
{
	struct lazymap *lm = lzm_current_handler ? lzm_current_handler->lm : NULL;
	struct cache **pp;
	int ret;

	if (!c)
		return;
	pthread_mutex_lock(&registry_lock);
	if (atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel) != 1) {
		pthread_mutex_unlock(&registry_lock);
		return;
	}
	c->closing = true;
	pthread_mutex_unlock(&registry_lock);
	/*
	 * No region maps the file any more, so no page table holds its pages:
	 * what is dirty is written without protecting anything first, and
	 * without wb_lock: nobody else can write back a cache nobody holds (a
	 * region of the file mapped now waits for closing to end), and our
	 * caller may hold an mm's lock, which a write-back takes after wb_lock.
	 */
	ret = writeback(c, 0, cache_max_pages(), lm, WB_DURABLE);
	pthread_mutex_lock(&registry_lock);
	c->closing = false;
	if (atomic_load(&c->refs)) {
		pthread_mutex_unlock(&registry_lock); /* mapped again meanwhile */
		return;
	}
	if (ret) {
		/* Kept with its dirty pages: the next region of the file takes
		 * them, and every lazymap_close tries again (orphaned caches). */
		c->orphaned = true;
		pthread_mutex_unlock(&registry_lock);
		lzm_log(lm, LOG_ERR, "write-back of a file no region maps any more failed: %s: "
			"kept for lazymap_close to try again", strerror(-ret));
		return;
	}
	for (pp = &registry; *pp != c; pp = &(*pp)->next)
		;
	*pp = c->next;
	pthread_mutex_unlock(&registry_lock);
	cache_free(c);
}

struct cache *lzm_cache_find_id(uint64_t id)
{
	struct cache *c;

	pthread_mutex_lock(&registry_lock);
	for (c = registry; c && c->id != id; c = c->next)
		;
	if (c && (c->closing || !atomic_load(&c->refs)))
		c = NULL; /* being written back for the last time, or orphaned */
	if (c)
		atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
	pthread_mutex_unlock(&registry_lock);
	return c;
}

int lzm_cache_retry_orphaned(struct lazymap *lm)
{
	struct cache *c;
	int ret = 0;

	for (;;) {
		pthread_mutex_lock(&registry_lock);
		for (c = registry; c && !(c->orphaned && !c->closing && !atomic_load(&c->refs));
		     c = c->next)
			;
		if (c) {
			c->orphaned = false;
			atomic_store(&c->refs, 1);
		}
		pthread_mutex_unlock(&registry_lock);
		if (!c)
			return ret;
		if (!ret)
			ret = lzm_cache_writeback(c, 0, cache_max_pages(), lm, WB_DURABLE);
		/* failed again: orphaned again, and left for the next close */
		lzm_cache_put(c);
		if (ret)
			return ret;
	}
}

uint64_t lzm_cache_refresh_size(struct cache *c)
{
	struct stat st;

	if (c->fd >= 0 && fstat(c->fd, &st) == 0)
		atomic_store_explicit(&c->size, (uint64_t)st.st_size, memory_order_relaxed);
	return atomic_load_explicit(&c->size, memory_order_relaxed);
}

/*
 * The page holding the file's end was written back up to the end: what a
 * shared region wrote past it is not the file's, and the kernel zeroes it in
 * its own page at write-back (so that a later growth shows zeros there); so
 * do we, in the cache. (Zeroing when the file is seen to grow instead would
 * also zero what the program wrote after the growth, which we cannot tell
 * from what it wrote before.)
 */
static void zero_past_end(struct cache *c, uint64_t size)
{
	uint64_t tail = lzm_page_size - (size & (lzm_page_size - 1));

	/* A hole punched inside a page zeroes that part of it, and puts no
	 * page where there is none (a write would: zeros before the end too).
	 * Best effort: the bytes past the end are never written back. */
	if (tail != lzm_page_size)
		fallocate(c->memfd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)size, (off_t)tail);
}

/* ------------------------------------------------------------ page state */

static struct cache_chunk *chunk_get(struct cache *c, uint64_t fp, bool alloc)
{
	size_t i = (size_t)(fp >> CHUNK_SHIFT);
	struct cache_chunk *ch, *none = NULL;

	if (i >= c->nchunks)
		return NULL;
	ch = atomic_load_explicit(&c->chunks[i], memory_order_acquire);
	if (ch || !alloc)
		return ch;
	ch = calloc(1, sizeof(*ch));
	if (!ch)
		return NULL;
	ch->index = i;
	if (!atomic_compare_exchange_strong_explicit(&c->chunks[i], &none, ch,
						     memory_order_acq_rel, memory_order_acquire)) {
		free(ch);
		return none;
	}
	ch->next = atomic_load_explicit(&c->chunk_list, memory_order_relaxed);
	while (!atomic_compare_exchange_weak_explicit(&c->chunk_list, &ch->next, ch,
						      memory_order_release, memory_order_relaxed))
		;
	return ch;
}

_Atomic uint8_t *lzm_cache_state(struct cache *c, uint64_t fp)
{
	struct cache_chunk *ch = chunk_get(c, fp, true);

	return ch ? &ch->s[fp & (CHUNK_PAGES - 1)] : NULL;
}

bool lzm_cache_has(struct cache *c, uint64_t fp)
{
	struct cache_chunk *ch = chunk_get(c, fp, false);

	return ch && (atomic_load_explicit(&ch->s[fp & (CHUNK_PAGES - 1)], memory_order_relaxed) &
		      CP_CACHED);
}

enum claim lzm_cache_claim(struct cache *c, _Atomic uint8_t *s, struct mm *mm, uintptr_t addr,
			   uint64_t fp)
{
	uint8_t old = atomic_load_explicit(s, memory_order_acquire);
	struct cache_waiter *w = NULL;

	for (;;) {
		if (old & CP_CACHED)
			break;
		if (!(old & CP_BUSY)) {
			if (atomic_compare_exchange_weak_explicit(s, &old, old | CP_BUSY,
								  memory_order_acq_rel,
								  memory_order_acquire)) {
				free(w);
				return CLAIM_OWNED;
			}
			continue;
		}
		/*
		 * Busy: join the waiters. The note and the list change under
		 * the lock, so that the owner, who looks at the list under it
		 * once it sees the note, cannot miss us.
		 */
		if (!w && !(w = malloc(sizeof(*w)))) {
			lzm_uffd_wake(mm->uffd, addr, lzm_page_size); /* no memory: fault again */
			return CLAIM_COALESCED;
		}
		pthread_mutex_lock(&c->lock);
		old = atomic_load_explicit(s, memory_order_acquire);
		while ((old & CP_BUSY) &&
		       !atomic_compare_exchange_weak_explicit(s, &old, old | CP_WAITER,
							      memory_order_acq_rel,
							      memory_order_acquire))
			;
		if (old & CP_BUSY) {
			lzm_mm_get(mm);
			*w = (struct cache_waiter){ .next = c->waiters, .mm = mm, .addr = addr,
						    .fp = fp };
			c->waiters = w;
			pthread_mutex_unlock(&c->lock);
			return CLAIM_COALESCED;
		}
		pthread_mutex_unlock(&c->lock); /* let go meanwhile: look again */
	}
	free(w);
	return CLAIM_PRESENT;
}

/*
 * A chunk's and the cache's counts move together: pages CACHED (dcached), and
 * pages DIRTY or under WRITEBACK (ddirty).
 */
static void count(struct cache *c, struct cache_chunk *ch, int dcached, int ddirty)
{
	if (dcached) {
		atomic_fetch_add_explicit(&ch->ncached, (unsigned)dcached, memory_order_relaxed);
		atomic_fetch_add_explicit(&c->ncached, (unsigned long)(long)dcached,
					  memory_order_relaxed);
	}
	if (ddirty) {
		atomic_fetch_add_explicit(&ch->ndirty, (unsigned)ddirty, memory_order_relaxed);
		atomic_fetch_add_explicit(&c->ndirty, (unsigned long)(long)ddirty, memory_order_relaxed);
	}
}

void lzm_cache_release(struct cache *c, uint64_t fp, size_t n, bool cached)
{
	struct cache_chunk *ch = chunk_get(c, fp, false);
	struct cache_waiter *w, **pp, *wake = NULL;
	uint8_t seen = 0;

	if (!ch || !n)
		return;
	for (size_t i = 0; i < n; i++) {
		_Atomic uint8_t *s = &ch->s[(fp + i) & (CHUNK_PAGES - 1)];

		if (cached)
			seen |= atomic_exchange_explicit(s, CP_CACHED, memory_order_acq_rel);
		else
			seen |= atomic_exchange_explicit(s, 0, memory_order_acq_rel);
	}
	if (cached)
		count(c, ch, (int)n, 0);
	if (!(seen & CP_WAITER))
		return;
	pthread_mutex_lock(&c->lock);
	for (pp = &c->waiters; (w = *pp);) {
		if (w->fp >= fp && w->fp - fp < n) {
			*pp = w->next;
			w->next = wake;
			wake = w;
		} else {
			pp = &w->next;
		}
	}
	pthread_mutex_unlock(&c->lock);
	/* They fault again and find the page (or the hole, and read it). */
	while ((w = wake)) {
		wake = w->next;
		lzm_uffd_wake(w->mm->uffd, w->addr, lzm_page_size);
		lzm_mm_put(w->mm);
		free(w);
	}
}

void lzm_cache_dirty(struct cache *c, uint64_t fp)
{
	struct cache_chunk *ch = chunk_get(c, fp, true);
	_Atomic uint8_t *s;
	uint8_t old;

	if (!ch)
		return; /* cannot be: a mapped page's chunk exists */
	s = &ch->s[fp & (CHUNK_PAGES - 1)];
	old = atomic_fetch_or_explicit(s, CP_DIRTY, memory_order_acq_rel);
	if (!(old & (CP_DIRTY | CP_WRITEBACK)))
		count(c, ch, 0, 1);
}

/* Whether the memfd has page fp (not a hole). */
static bool memfd_has(struct cache *c, uint64_t fp)
{
	off_t data = lseek(c->memfd, (off_t)(fp << lzm_page_shift), SEEK_DATA);

	return data >= 0 && (uint64_t)data < (fp + 1) << lzm_page_shift;
}

size_t lzm_cache_take_over(struct cache *c)
{
	off_t at = 0, end;
	size_t n = 0;

	while ((at = lseek(c->memfd, at, SEEK_DATA)) >= 0) {
		end = lseek(c->memfd, at, SEEK_HOLE);
		if (end < 0)
			break;
		for (uint64_t fp = (uint64_t)at >> lzm_page_shift;
		     fp < cache_max_pages() && (off_t)(fp << lzm_page_shift) < end; fp++) {
			struct cache_chunk *ch = chunk_get(c, fp, true);
			uint8_t old;

			if (!ch)
				return n;
			old = atomic_fetch_or_explicit(&ch->s[fp & (CHUNK_PAGES - 1)], CP_CACHED,
						       memory_order_acq_rel);
			count(c, ch, !(old & CP_CACHED), 0);
			n++;
		}
		at = end;
	}
	return n;
}

void lzm_cache_each(const void *owner, void (*fn)(struct cache *c, void *arg), void *arg)
{
	struct cache **list = NULL;
	size_t n = 0, cap = 0;

	/* with references, so that fn runs with no lock held */
	for (;;) {
		size_t want = 0;

		pthread_mutex_lock(&registry_lock);
		for (struct cache *c = registry; c; c = c->next)
			want += c->owner == owner && !c->closing;
		if (want <= cap) {
			for (struct cache *c = registry; c; c = c->next) {
				if (c->owner == owner && !c->closing) {
					lzm_cache_get(c);
					list[n++] = c;
				}
			}
		}
		pthread_mutex_unlock(&registry_lock);
		if (want <= cap)
			break;
		free(list);
		cap = want + 4;
		list = malloc(cap * sizeof(*list));
		if (!list)
			return;
	}
	for (size_t i = 0; i < n; i++) {
		fn(list[i], arg);
		lzm_cache_put(list[i]);
	}
	free(list);
}

size_t lzm_cache_recheck(struct cache *c, uint64_t fp, uint64_t n)
{
	size_t dropped = 0;

	for (uint64_t end = fp + n; fp < end; fp++) {
		struct cache_chunk *ch = chunk_get(c, fp, false);
		_Atomic uint8_t *s;
		uint8_t old;

		if (!ch) {
			fp |= CHUNK_PAGES - 1;
			continue;
		}
		s = &ch->s[fp & (CHUNK_PAGES - 1)];
		old = atomic_load_explicit(s, memory_order_acquire);
		if (!(old & CP_CACHED) || (old & CP_BUSY) || memfd_has(c, fp))
			continue;
		/*
		 * Punched: a hole again, its writes gone with it. Looked at again
		 * under the lock: the hole seen above may have been dropped and
		 * filled again since by another fault's recheck (two faults on
		 * one punched page, say a private reader's and a shared writer's),
		 * and that page, CACHED again and perhaps DIRTY and writable in a
		 * shared region, must not lose its state. Under the lock, CACHED
		 * and not BUSY, no fill of it can be under way (a fill holds BUSY,
		 * which only a drop, under this lock, makes possible): what lseek
		 * says then is the page's truth.
		 */
		pthread_mutex_lock(&c->lock);
		old = atomic_load_explicit(s, memory_order_acquire);
		if ((old & CP_CACHED) && !(old & CP_BUSY) && !memfd_has(c, fp)) {
			atomic_store_explicit(s, 0, memory_order_release);
			count(c, ch, -1, old & (CP_DIRTY | CP_WRITEBACK) ? -1 : 0);
			dropped++;
		}
		pthread_mutex_unlock(&c->lock);
	}
	return dropped;
}

void lzm_cache_removed(struct cache *c, uint64_t fp, uint64_t n)
{
	pthread_mutex_lock(&c->lock);
	if (c->nremoved < sizeof(c->removed) / sizeof(c->removed[0]))
		c->removed[c->nremoved++] = (typeof(c->removed[0])){ fp, n };
	else
		c->removed_overflow = true;
	pthread_mutex_unlock(&c->lock);
}

/* Before a write-back: the ranges REMOVE events named, looked at again. */
static void removed_recheck(struct cache *c)
{
	typeof(c->removed[0]) r[sizeof(c->removed) / sizeof(c->removed[0])];
	unsigned n;
	bool all;

	pthread_mutex_lock(&c->lock);
	n = c->nremoved;
	all = c->removed_overflow;
	memcpy(r, c->removed, n * sizeof(r[0]));
	c->nremoved = 0;
	c->removed_overflow = false;
	pthread_mutex_unlock(&c->lock);
	for (unsigned i = 0; i < n && !all; i++)
		lzm_cache_recheck(c, r[i].fp, r[i].n);
	if (!all)
		return;
	for (struct cache_chunk *ch = atomic_load_explicit(&c->chunk_list, memory_order_acquire); ch;
	     ch = ch->next) {
		if (!atomic_load_explicit(&ch->ndirty, memory_order_relaxed))
			continue;
		for (size_t i = 0; i < CHUNK_PAGES; i++)
			if (atomic_load_explicit(&ch->s[i], memory_order_relaxed) & CP_DIRTY)
				lzm_cache_recheck(c, ((uint64_t)ch->index << CHUNK_SHIFT) + i, 1);
	}
}

/* ------------------------------------------------------------ sharers */

int lzm_cache_share(struct cache *c, struct mm *mm)
{
	int ret = 0;

	pthread_mutex_lock(&c->lock);
	for (unsigned i = 0; i < c->nsharers; i++)
		if (c->sharers[i] == mm)
			goto out;
	if (c->nsharers == c->sharers_cap) {
		unsigned cap = c->sharers_cap ? 2 * c->sharers_cap : 4;
		struct mm **more = realloc(c->sharers, cap * sizeof(*more));

		if (!more) {
			ret = -ENOMEM;
			goto out;
		}
		c->sharers = more;
		c->sharers_cap = cap;
	}
	c->sharers[c->nsharers++] = mm;
out:
	pthread_mutex_unlock(&c->lock);
	return ret;
}

void lzm_cache_unshare_all(struct mm *mm)
{
	pthread_mutex_lock(&registry_lock);
	for (struct cache *c = registry; c; c = c->next) {
		pthread_mutex_lock(&c->lock);
		for (unsigned i = 0; i < c->nsharers; i++)
			if (c->sharers[i] == mm)
				c->sharers[i--] = c->sharers[--c->nsharers];
		pthread_mutex_unlock(&c->lock);
	}
	pthread_mutex_unlock(&registry_lock);
}

/* Whether a VMA before v maps c (no memory is allocated under the lock). */
static bool counted_before(const struct vma *v, const struct cache *c, struct cache *const *seen,
			   size_t nseen, size_t max)
{
	if (nseen < max) {
		for (size_t i = 0; i < nseen; i++)
			if (seen[i] == c)
				return true;
		return false;
	}
	for (const struct vma *u = lzm_vma_prev(v); u; u = lzm_vma_prev(u))
		if (u->src->cache == c)
			return true;
	return false;
}

void lzm_cache_count(struct mm *mm, uint64_t *cached, uint64_t *dirty)
{
	struct cache *seen[64];
	size_t nseen = 0;

	*cached = *dirty = 0;
	pthread_rwlock_rdlock(&mm->lock);
	for (struct vma *v = lzm_vma_first(&mm->tree); v; v = lzm_vma_next(v)) {
		struct cache *c = v->src->cache;

		if (!c || counted_before(v, c, seen, nseen, 64))
			continue;
		if (nseen < 64)
			seen[nseen] = c;
		nseen++;
		*cached += atomic_load_explicit(&c->ncached, memory_order_relaxed);
		*dirty += atomic_load_explicit(&c->ndirty, memory_order_relaxed);
	}
	pthread_rwlock_unlock(&mm->lock);
}

void lzm_cache_count_all(uint64_t *cached, uint64_t *dirty)
{
	*cached = *dirty = 0;
	pthread_mutex_lock(&registry_lock);
	for (struct cache *c = registry; c; c = c->next) {
		*cached += atomic_load_explicit(&c->ncached, memory_order_relaxed);
		*dirty += atomic_load_explicit(&c->ndirty, memory_order_relaxed);
	}
	pthread_mutex_unlock(&registry_lock);
}

/* ------------------------------------------------------------ write-back */

struct wb_run {
	uint64_t fp, n;
	int err;
	bool done; /* written whole by the ring */
};

struct wb {
	struct wb_run *runs;
	size_t nruns, cap;
};

static int wb_add(struct wb *wb, uint64_t fp)
{
	struct wb_run *last = wb->nruns ? &wb->runs[wb->nruns - 1] : NULL;

	if (last && last->fp + last->n == fp) {
		last->n++;
		return 0;
	}
	if (wb->nruns == wb->cap) {
		size_t cap = wb->cap ? 2 * wb->cap : 64;
		struct wb_run *more = realloc(wb->runs, cap * sizeof(*more));

		if (!more)
			return -ENOMEM;
		wb->runs = more;
		wb->cap = cap;
	}
	wb->runs[wb->nruns++] = (struct wb_run){ .fp = fp, .n = 1 };
	return 0;
}

/* Phase 1, under c->lock: the dirty pages of [fp, end) become WRITEBACK. */
static int wb_take(struct cache *c, uint64_t fp, uint64_t end, struct wb *wb)
{
	int ret = 0;

	if (!atomic_load_explicit(&c->ndirty, memory_order_acquire))
		return 0;
	if (end > (uint64_t)c->nchunks << CHUNK_SHIFT)
		end = (uint64_t)c->nchunks << CHUNK_SHIFT;
	pthread_mutex_lock(&c->lock);
	while (fp < end && ret == 0) {
		struct cache_chunk *ch = chunk_get(c, fp, false);
		uint64_t stop = (fp | (CHUNK_PAGES - 1)) + 1;

		if (stop > end)
			stop = end;
		if (ch && atomic_load_explicit(&ch->ndirty, memory_order_relaxed)) {
			for (; fp < stop && ret == 0; fp++) {
				_Atomic uint8_t *s = &ch->s[fp & (CHUNK_PAGES - 1)];
				uint8_t old = atomic_load_explicit(s, memory_order_relaxed);

				if (!(old & CP_DIRTY))
					continue;
				ret = wb_add(wb, fp);
				if (ret == 0)
					atomic_store_explicit(s, (old & ~CP_DIRTY) | CP_WRITEBACK,
							      memory_order_release);
			}
		}
		fp = stop;
	}
	pthread_mutex_unlock(&c->lock);
	return ret;
}

#define PROTECT_GAP 512 /* pages: what one page table maps */

/*
 * Phase 2: write-protect the pages taken wherever a shared region maps them,
 * so that a write from now on faults and marks its page dirty again: what
 * phase 3 reads is then either written back now, or dirty for the next time.
 * One mm at a time, its lock held for reading (never c->lock: a handler
 * holding an mm's lock takes c->lock).
 */
static void wb_protect(struct cache *c, const struct wb *wb)
{
	struct mm *mms[32];
	unsigned n = 0;

	pthread_mutex_lock(&c->lock);
	for (unsigned i = 0; i < c->nsharers && n < 32; i++) {
		struct mm *mm = c->sharers[i];
		unsigned refs = atomic_load(&mm->refs);

		/* a child going away (refs 0) maps nothing any more */
		while (refs && !atomic_compare_exchange_weak(&mm->refs, &refs, refs + 1))
			;
		if (refs)
			mms[n++] = mm;
	}
	pthread_mutex_unlock(&c->lock);
	for (unsigned i = 0; i < n; i++) {
		struct mm *mm = mms[i];
again:
		pthread_rwlock_rdlock(&mm->lock);
		for (struct vma *v = lzm_vma_first(&mm->tree); v; v = lzm_vma_next(v)) {
			uint64_t v0 = v->src->base + v->pgoff;
			uint64_t v1 = v0 + ((v->end - v->start) >> lzm_page_shift);

			if (v->src->cache != c || !vma_writeback(v))
				continue;
			for (size_t r = 0; r < wb->nruns; r++) {
				uint64_t a = wb->runs[r].fp, b = a + wb->runs[r].n;

				/*
				 * One ioctl for runs close together: protecting a
				 * clean page again changes nothing (only dirty pages
				 * are writable), and a gap of less than a page table
				 * costs no page table of its own.
				 */
				while (r + 1 < wb->nruns && wb->runs[r + 1].fp - b < PROTECT_GAP) {
					r++;
					b = wb->runs[r].fp + wb->runs[r].n;
				}

				if (a < v0)
					a = v0;
				if (b > v1)
					b = v1;
				if (a >= b)
					continue;
				if (lzm_uffd_writeprotect(mm->uffd,
							  v->start + ((a - v0) << lzm_page_shift),
							  (b - a) << lzm_page_shift, true) == -EAGAIN &&
				    !atomic_load(&mm->lm->broken)) {
					/*
					 * An event of this mm is pending: let the
					 * handler that applies it have the lock. The
					 * pages must be protected before they are read.
					 */
					pthread_rwlock_unlock(&mm->lock);
					usleep(50);
					goto again;
				}
			}
		}
		pthread_rwlock_unlock(&mm->lock);
		lzm_mm_put(mm);
	}
}

/* [off, off + len) of the file from buf; 0 or -errno. */
static int wb_put(struct cache *c, const char *buf, uint64_t off, uint64_t len, uint64_t *written)
{
	while (len) {
		ssize_t w = pwrite(c->wfd, buf, (size_t)len, (off_t)off);

		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return w < 0 ? -errno : -EIO;
		buf += w;
		off += (uint64_t)w;
		len -= (uint64_t)w;
		*written += (uint64_t)w;
	}
	return 0;
}

/*
 * [off, off + len) of the file from the window, a page at a time: a page
 * that cannot be read (EFAULT) was punched by the program meanwhile
 * (MADV_REMOVE): its writes went with it, and the file keeps its bytes.
 */
static int wb_put_pages(struct cache *c, const char *buf, uint64_t off, uint64_t len,
			uint64_t *written)
{
	while (len) {
		uint64_t n = len < lzm_page_size ? len : lzm_page_size;
		int ret = wb_put(c, buf, off, n, written);

		if (ret && ret != -EFAULT)
			return ret;
		buf += n;
		off += n;
		len -= n;
	}
	return 0;
}

/*
 * Phase 3: the pages, up to the file's end (a page beyond it was truncated
 * away: it is dropped, as the kernel drops it), SIGXFSZ blocked.
 */
/*
 * Many runs: written with io_uring, up to WB_RING_DEPTH at once (one system
 * call for many writes, which the file system may then run side by side).
 * A run it could not finish (short write, error, no ring) is left to the
 * synchronous loop, which says why.
 */
#define WB_RING_MIN   8
#define WB_RING_DEPTH 64

static void wb_write_ring(struct cache *c, struct wb *wb, const char *win, uint64_t first,
			  uint64_t size, uint64_t *written, uint64_t *nwrites)
{
	struct io_uring ring;
	size_t next = 0, inflight = 0;

	/*
	 * Whole pages go with O_DIRECT: no read-modify-write of the file's own
	 * page cache, and nothing left for fdatasync to write but metadata
	 * (the kernel's cached copies of those pages are dropped). A file
	 * system that refuses it gets buffered writes.
	 */
	int dfd = fd_reopen(c->wfd, O_WRONLY | O_DIRECT);
	if (lzm_ring_init(WB_RING_DEPTH, &ring)) {
		if (dfd >= 0)
			close(dfd);
		return;
	}
	while (next < wb->nruns || inflight) {
		struct io_uring_cqe *cqe;

		for (; next < wb->nruns && inflight < WB_RING_DEPTH; next++) {
			uint64_t off = wb->runs[next].fp << lzm_page_shift;
			uint64_t len = wb->runs[next].n << lzm_page_shift;
			struct io_uring_sqe *sqe;

			if (off >= size)
				continue;
			if (len > size - off) {
				len = size - off;
				zero_past_end(c, size);
			}
			sqe = io_uring_get_sqe(&ring);
			if (!sqe)
				break;
			io_uring_prep_write(sqe, dfd >= 0 && page_aligned(len) ? dfd : c->wfd,
					    win + (off - (first << lzm_page_shift)), (unsigned)len, off);
			io_uring_sqe_set_data64(sqe, next);
			inflight++;
		}
		if (io_uring_submit_and_wait(&ring, 1) < 0)
			break;
		while (io_uring_peek_cqe(&ring, &cqe) == 0) {
			struct wb_run *run = &wb->runs[io_uring_cqe_get_data64(cqe)];
			uint64_t want = run->n << lzm_page_shift, off = run->fp << lzm_page_shift;

			if (want > size - off)
				want = size - off;
			if (cqe->res > 0)
				*written += (uint64_t)cqe->res;
			/* whole: done; else the synchronous loop writes it again and tells */
			run->done = cqe->res >= 0 && (uint64_t)cqe->res == want;
			*nwrites += run->done;
			inflight--;
			io_uring_cqe_seen(&ring, cqe);
		}
	}
	/* an error out of submit with writes in flight: wait for them (their
	 * buffers are the window, unmapped after us) */
	while (inflight) {
		struct io_uring_cqe *cqe;

		if (io_uring_wait_cqe(&ring, &cqe))
			break;
		inflight--;
		io_uring_cqe_seen(&ring, cqe);
	}
	lzm_ring_exit(&ring);
	if (dfd >= 0)
		close(dfd);
}

/* An NBD export's runs, on its write-back connection (nbd.c); no flush here. */
static void wb_write_nbd(struct cache *c, struct wb *wb, const char *win, uint64_t first,
			 uint64_t size, struct lazymap *lm)
{
	struct nbd_wio *io = calloc(wb->nruns, sizeof(*io));
	uint64_t written = 0;
	size_t n = 0;

	if (!io) {
		for (size_t r = 0; r < wb->nruns; r++)
			wb->runs[r].err = -ENOMEM;
		return;
	}
	for (size_t r = 0; r < wb->nruns; r++) {
		uint64_t off = wb->runs[r].fp << lzm_page_shift;
		uint64_t len = wb->runs[r].n << lzm_page_shift;

		if (off >= size)
			continue; /* past the export's end: dropped, as a file's */
		if (len > size - off)
			len = size - off;
		io[n++] = (struct nbd_wio){ .src = win + (off - (first << lzm_page_shift)),
					    .off = off, .len = len };
	}
	lzm_nbd_write(c->nbd, io, n, false, &written);
	for (size_t r = 0, i = 0; r < wb->nruns && i < n; r++)
		if (io[i].off == wb->runs[r].fp << lzm_page_shift)
			wb->runs[r].err = io[i++].err;
	free(io);
	if (lm) {
		atomic_fetch_add(&lm->wstats.bytes_written, written);
		atomic_fetch_add(&lm->wstats.writebacks, n);
	}
}

static void wb_write(struct cache *c, struct wb *wb, struct lazymap *lm)
{
	uint64_t size = lzm_cache_refresh_size(c), written = 0, nwrites = 0;
	uint64_t first = wb->runs[0].fp, last = wb->runs[wb->nruns - 1].fp + wb->runs[wb->nruns - 1].n;
	size_t winlen = (size_t)(last - first) << lzm_page_shift;
	char *win = NULL;
	struct no_xfsz x;
	int err = 0;

	/*
	 * The pages are written straight from a window of ours on the memfd:
	 * no copy of ours. It is registered with the cache's SIGBUS
	 * userfaultfd: a page the program punched since we took it (its
	 * REMOVE event came after our look at the removed ranges) fails to be
	 * read (EFAULT), where it would otherwise become a page of zeros in
	 * the cache, and in the file.
	 */
	if (!(win = aux_window(c, first << lzm_page_shift, winlen, PROT_READ)))
		err = -errno;
	if (err) {
		/* nothing read, nothing written: the pages stay dirty */
		for (size_t r = 0; r < wb->nruns; r++)
			wb->runs[r].err = err;
		return;
	}
	if (c->nbd) {
		wb_write_nbd(c, wb, win, first, size, lm);
		munmap(win, winlen);
		return;
	}
	no_xfsz_begin(&x);
	if (c->wfd >= 0 && wb->nruns >= WB_RING_MIN)
		wb_write_ring(c, wb, win, first, size, &written, &nwrites);
	for (size_t r = 0; r < wb->nruns; r++) {
		uint64_t off = wb->runs[r].fp << lzm_page_shift;
		uint64_t len = wb->runs[r].n << lzm_page_shift;
		const char *from = win + (off - (first << lzm_page_shift));

		if (off >= size || wb->runs[r].done)
			continue;
		if (len > size - off) {
			len = size - off;
			zero_past_end(c, size);
		}
		if (c->wfd < 0)
			wb->runs[r].err = -EBADF;
		else if ((wb->runs[r].err = wb_put(c, from, off, len, &written)) == -EFAULT)
			wb->runs[r].err = wb_put_pages(c, from, off, len, &written);
		nwrites++;
	}
	no_xfsz_end(&x);
	munmap(win, winlen);
	if (lm) {
		atomic_fetch_add(&lm->wstats.bytes_written, written);
		atomic_fetch_add(&lm->wstats.writebacks, nwrites);
	}
}

/* Phase 4: WRITEBACK is done; the pages that failed are dirty again. */
static int wb_end(struct cache *c, struct wb *wb, int err)
{
	int ret = 0;

	pthread_mutex_lock(&c->lock);
	for (size_t r = 0; r < wb->nruns; r++) {
		int e = err ? err : wb->runs[r].err;

		if (e && !ret)
			ret = e;
		for (uint64_t fp = wb->runs[r].fp; fp < wb->runs[r].fp + wb->runs[r].n; fp++) {
			struct cache_chunk *ch = chunk_get(c, fp, false);
			_Atomic uint8_t *s = &ch->s[fp & (CHUNK_PAGES - 1)];
			/*
			 * Atomically: a page the program punched meanwhile was
			 * dropped (lzm_cache_recheck) and may be being read again
			 * by a fill, whose release does not take the lock.
			 */
			uint8_t old = atomic_fetch_and_explicit(s, (uint8_t)~CP_WRITEBACK,
								memory_order_acq_rel);

			if (!(old & CP_WRITEBACK))
				continue; /* dropped meanwhile: not ours any more */
			if (e)
				atomic_fetch_or_explicit(s, CP_DIRTY, memory_order_release);
			else if (!(old & CP_DIRTY))
				count(c, ch, 0, -1);
		}
	}
	pthread_mutex_unlock(&c->lock);
	return ret;
}

/* What was written reaches the disk: fdatasync, or an NBD flush. */
static int durable(struct cache *c)
{
	uint64_t none = 0;

	if (c->nbd)
		return lzm_nbd_write(c->nbd, NULL, 0, true, &none);
	return c->wfd >= 0 && fdatasync(c->wfd) ? -errno : 0;
}

/* The four phases; wb_lock held, or the cache closing (lzm_cache_put). */
static int writeback(struct cache *c, uint64_t fp, uint64_t n, struct lazymap *lm, int how)
{
	struct wb wb = { 0 };
	int ret;

	removed_recheck(c);
	ret = wb_take(c, fp, fp + n, &wb);
	if (wb.nruns) {
		int err = 0;

		if (how & WB_PROTECT)
			wb_protect(c, &wb);
		wb_write(c, &wb, lm);
		/* If fdatasync fails, the kernel may have dropped what it could
		 * not write: every page of this pass is dirty again. */
		if (how & (WB_DURABLE | WB_DURABLE_IF))
			err = durable(c);
		ret = wb_end(c, &wb, err) ?: ret;
	} else if (how & WB_DURABLE) {
		/* clean here, but an earlier pass (eviction) may not be durable yet */
		ret = durable(c);
	}
	free(wb.runs);
	return ret;
}

int lzm_cache_writeback(struct cache *c, uint64_t fp, uint64_t n, struct lazymap *lm, int how)
{
	int ret;

	pthread_mutex_lock(&c->wb_lock);
	ret = writeback(c, fp, n, lm, how);
	pthread_mutex_unlock(&c->wb_lock);
	return ret;
}

/* ------------------------------------------------------------ eviction */

/*
 * Claim the clean cached pages of [fp, fp + n) among want (bit i: fp + i)
 * for eviction: CACHED becomes BUSY, under the lock that write-protect
 * faults take (wp_fault), so that a page is either made writable before we
 * look (then it is DIRTY and stays) or waits for the eviction like a fault
 * on a page being read. Returns the pages claimed; *dirty gets the dirty.
 */
/* Bits 0 to n - 1 (n <= 64). */
static uint64_t low_bits(size_t n)
{
	return n >= 64 ? ~(uint64_t)0 : ((uint64_t)1 << n) - 1;
}

static uint64_t evict_claim(struct cache *c, struct cache_chunk *ch, uint64_t fp, size_t n,
			    uint64_t want, uint64_t *dirty)
{
	uint64_t claimed = 0;

	*dirty = 0;
	pthread_mutex_lock(&c->lock);
	for (size_t i = 0; i < n; i++) {
		_Atomic uint8_t *s = &ch->s[(fp + i) & (CHUNK_PAGES - 1)];
		uint8_t old = atomic_load_explicit(s, memory_order_acquire);

		if (!(want >> i & 1) || !(old & CP_CACHED) || (old & CP_BUSY))
			continue;
		if (old & (CP_DIRTY | CP_WRITEBACK)) {
			*dirty |= (uint64_t)1 << i;
			continue;
		}
		/* A fault that came for it meanwhile waits, as for a read. */
		if (atomic_compare_exchange_strong_explicit(s, &old, CP_BUSY | (old & CP_WAITER),
							    memory_order_acq_rel, memory_order_acquire))
			claimed |= (uint64_t)1 << i;
	}
	pthread_mutex_unlock(&c->lock);
	return claimed;
}

size_t lzm_cache_evict(struct cache *c, uint64_t fp, size_t n, struct lazymap *lm, uint64_t *kept)
{
	struct cache_chunk *ch = chunk_get(c, fp, false);
	uint64_t claimed, dirty, again;
	size_t dropped = 0;

	*kept = 0;
	if (!ch)
		return 0;
	claimed = evict_claim(c, ch, fp, n, low_bits(n), &dirty);
	if (dirty) {
		/* A dirty page is written back first: protected wherever it is
		 * mapped, written, clean; a write meanwhile makes it dirty again,
		 * and it stays. */
		unsigned lo = (unsigned)__builtin_ctzll(dirty), hi = 63u - (unsigned)__builtin_clzll(dirty);

		lzm_cache_writeback(c, fp + lo, hi - lo + 1, lm, WB_PROTECT);
		claimed |= evict_claim(c, ch, fp, n, dirty, &again);
		*kept |= again;
	}
	for (size_t i = 0; i < n;) {
		size_t len = 0;
		bool punched;

		if (!(claimed >> i & 1)) {
			i++;
			continue;
		}
		while (i + len < n && (claimed >> (i + len) & 1))
			len++;
		/*
		 * A hole punched in the memfd takes the pages from every mapping
		 * at once and raises no userfaultfd event (unlike MADV_DONTNEED or
		 * MADV_REMOVE in a region, which would block us until a handler
		 * read it): the next touch is a missing fault, read from the file
		 * again.
		 */
		punched = fallocate(c->memfd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
				    (off_t)((fp + i) << lzm_page_shift), (off_t)(len << lzm_page_shift)) == 0;
		if (punched)
			dropped += len;
		else
			*kept |= low_bits(len) << i;
		lzm_cache_release(c, fp + i, len, !punched);
		/* the claim took them out of CACHED uncounted; a release as
		 * cached counted them again */
		count(c, ch, -(int)len, 0);
		i += len;
	}
	return dropped;
}
