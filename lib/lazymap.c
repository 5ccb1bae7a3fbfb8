// SPDX-License-Identifier: MIT
/*
 * The public API: argument checks at the edge, the registry of open handles
 * (so that a closed handle gets -EBADF instead of a crash), and the glue from
 * lazymap_* calls to the mm, the sources and the handler threads.
 */
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "compat.h"
#include "internal.h"
#include "proto.h"

#define DEFAULT_READAHEAD   (512u << 10)
#define MAX_READAHEAD       (64u << 20)
#define DEFAULT_REMOTE_TIMEOUT_MS 5000u
#define MAX_REMOTE_TIMEOUT_MS     86400000u
#define MAX_HANDLER_THREADS 256u
#define MAX_QUEUE_DEPTH     32768u
#define DEFAULT_SPIN_US     50u
/* Below this, eviction would only ever make room for the fill that waits. */
#define MIN_RESIDENT_LIMIT  (4u << 20)
#define DEFAULT_QUEUE_DEPTH 128u

/* ------------------------------------------------------------ registry */

/*
 * Open handles, so that every call can tell a live lazymap from a closed one
 * without touching freed memory. registry_lock protects the list and every
 * lazymap's users and closing; registry_cond signals users dropping to 0.
 */
static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t registry_cond = PTHREAD_COND_INITIALIZER;
static struct lazymap *registry;

static void lazymap_put(struct lazymap *lm);

/*
 * A child made by fork has none of our threads, and the descriptors it
 * inherited are the parent's lazymaps' own (a userfaultfd acts on the mm
 * that opened it: an unregister from the child would drop the parent's
 * regions). So the child forgets its copies of the handles: every call on
 * one is -EBADF there and touches nothing (their memory stays, copied).
 */
static void registry_prefork(void)
{
	pthread_mutex_lock(&registry_lock);
	for (struct lazymap *lm = registry; lm; lm = lm->next_open)
		lzm_fork_prepare(lm);
}

static void registry_parent(void)
{
	for (struct lazymap *lm = registry; lm; lm = lm->next_open)
		lzm_fork_parent(lm);
	pthread_mutex_unlock(&registry_lock);
}

static void registry_child(void)
{
	for (struct lazymap *lm = registry; lm; lm = lm->next_open)
		lzm_fork_child(lm);
	lzm_fork_child_done();
	lzm_cache_fork_child();
	registry = NULL;
	pthread_mutex_init(&registry_lock, NULL);
	pthread_cond_init(&registry_cond, NULL);
}

static void registry_atfork(void)
{
	pthread_atfork(registry_prefork, registry_parent, registry_child);
}

/* Pin lm for one API call; -EBADF if it is not open. Broken or not. */
static int lazymap_get_any(struct lazymap *lm)
{
	struct lazymap *it;
	int ret = -EBADF;

	pthread_mutex_lock(&registry_lock);
	for (it = registry; it; it = it->next_open) {
		if (it == lm && !lm->closing) {
			lm->users++;
			ret = 0;
			break;
		}
	}
	pthread_mutex_unlock(&registry_lock);
	return ret;
}

/* Pin lm for a call that needs its handlers: -EIO once they have broken. */
static int lazymap_get(struct lazymap *lm)
{
	int ret = lazymap_get_any(lm);

	if (ret == 0 && atomic_load_explicit(&lm->broken, memory_order_acquire)) {
		lazymap_put(lm);
		ret = -EIO;
	}
	return ret;
}

static void lazymap_put(struct lazymap *lm)
{
	pthread_mutex_lock(&registry_lock);
	if (--lm->users == 0 && lm->closing)
		pthread_cond_broadcast(&registry_cond);
	pthread_mutex_unlock(&registry_lock);
}

/*
 * A fill callback runs on a handler thread that holds its mm's lock for
 * reading: a call on the same lazymap that takes the lock again would wait
 * for itself (or, the lock preferring writers, for a writer waiting for it).
 */
static bool in_own_handler(struct lazymap *lm)
{
	return lzm_current_handler && lzm_current_handler->lm == lm;
}

/* ------------------------------------------------------- argument checks */

static bool prot_ok(int prot)
{
	return (prot & ~(PROT_READ | PROT_WRITE)) == 0;
}

/*
 * A range given to unmap/protect/prefetch/sync: page-aligned start, non-zero
 * length rounded up to pages (as munmap does), no wrap-around.
 */
static int range_ok(void *addr, size_t len, uintptr_t *startp, size_t *lenp)
{
	uintptr_t start = (uintptr_t)addr;

	if (!page_aligned(start) || len == 0 || len > UINTPTR_MAX - start - (lzm_page_size - 1))
		return -EINVAL;
	*startp = start;
	*lenp = (len + lzm_page_size - 1) & ~(lzm_page_size - 1);
	return 0;
}

/* ------------------------------------------------------------ open/close */

static void lazymap_free(struct lazymap *lm)
{
	lzm_remote_close(lm);
	lzm_fork_reader_stop(lm);
	lzm_handlers_stop(lm);
	lzm_fillers_stop(lm);
	lzm_evict_stop(lm);
	lzm_children_close(lm);
	pthread_mutex_destroy(&lm->children_lock);
	free(lm->handlers);
	if (lm->fillers.f) {
		free(lm->fillers.f);
		pthread_mutex_destroy(&lm->fillers.lock);
		pthread_cond_destroy(&lm->fillers.cond);
	}
	/* before the mm goes: a prefetch the handlers left holds a reference
	 * to it, which lzm_mm_fini waits for */
	while (lm->work) {
		struct prefetch *pf = lm->work;

		lm->work = pf->next;
		lzm_mm_put(pf->mm);
		free(pf);
	}
	if (lm->mm.uffd >= 0)
		lzm_mm_destroy(&lm->mm);
	if (lm->stop_efd >= 0)
		close(lm->stop_efd);
	if (lm->work_efd >= 0)
		close(lm->work_efd);
	if (lm->fork_efd >= 0)
		close(lm->fork_efd);
	if (lm->reserve_fd >= 0)
		close(lm->reserve_fd);
	pthread_mutex_destroy(&lm->work_lock);
	free(lm);
}

/*
 * The features we ask for; all are optional but POISON (failed fills must
 * become SIGBUS, never zeros) and MOVE when LAZYMAP_INSTALL_MOVE is asked.
 * The events keep the tree true when the program changes its mappings
 * itself; FORK needs CAP_SYS_PTRACE and is dropped without it (mm.c).
 * Shared file regions need minor faults and write protection on shmem
 * (filemap.c); without them they are -EOPNOTSUPP.
 */
#define SHARED_FEATURES (UFFD_FEATURE_MINOR_SHMEM | UFFD_FEATURE_WP_HUGETLBFS_SHMEM)
#define WANTED_FEATURES                                                                    \
	(UFFD_FEATURE_MISSING_SHMEM | UFFD_FEATURE_POISON | UFFD_FEATURE_MOVE |             \
	 UFFD_FEATURE_EVENT_UNMAP | UFFD_FEATURE_EVENT_REMAP | UFFD_FEATURE_EVENT_REMOVE |  \
	 UFFD_FEATURE_EVENT_FORK | UFFD_FEATURE_THREAD_ID | SHARED_FEATURES)

/*
 * The caller's options, whatever the size of the struct they were built
 * with (the kernel's copy_struct_from_user): fields they do not have are
 * zero, bytes we do not know must be zero.
 */
static int opts_copy(struct lazymap_opts *o, const struct lazymap_opts *opts, size_t size)
{
	memset(o, 0, sizeof(*o));
	if (!opts)
		return 0;
	if (size < LAZYMAP_OPTS_SIZE_VER0)
		return -EINVAL;
	if (size > 4096)
		return -E2BIG; /* as openat2: no struct of ours will be that large */
	for (size_t i = sizeof(*o); i < size; i++)
		if (((const char *)opts)[i])
			return -E2BIG;
	memcpy(o, opts, size < sizeof(*o) ? size : sizeof(*o));
	return 0;
}

int lazymap_open_sized(struct lazymap **lmp, const struct lazymap_opts *opts, size_t size)
{
	struct lazymap_opts o;
	struct lazymap *lm;
	uint64_t features;
	int ret;

	if (!lmp)
		return -EINVAL;
	ret = opts_copy(&o, opts, size);
	if (ret)
		return ret;
	/* served by faultd: its budget is faultd's, and pages cannot be
	 * moved between processes */
	if (o.daemon && (!*o.daemon || o.resident_limit || o.install == LAZYMAP_INSTALL_MOVE))
		return -EINVAL;
	if ((o.handler_threads > MAX_HANDLER_THREADS && o.handler_threads != LAZYMAP_HANDLERS_PER_CPU) ||
	    o.queue_depth > MAX_QUEUE_DEPTH ||
	    o.readahead_max > MAX_READAHEAD || o.install > LAZYMAP_INSTALL_MOVE ||
	    (o.spin_us > 1000000 && o.spin_us != LAZYMAP_SPIN_NONE) ||
	    (o.resident_limit && o.resident_limit < MIN_RESIDENT_LIMIT) ||
	    o.remote_timeout_ms > MAX_REMOTE_TIMEOUT_MS)
		return -EINVAL;
	if (!o.handler_threads)
		o.handler_threads = 1;
	if (!o.readahead_max)
		o.readahead_max = DEFAULT_READAHEAD;
	if (!o.spin_us)
		o.spin_us = DEFAULT_SPIN_US;
	if (!o.queue_depth)
		o.queue_depth = DEFAULT_QUEUE_DEPTH;
	if (!o.remote_timeout_ms)
		o.remote_timeout_ms = DEFAULT_REMOTE_TIMEOUT_MS;

	ret = lzm_uffd_probe(&features);
	if (ret)
		return ret;
	if (!(features & UFFD_FEATURE_POISON))
		return -EOPNOTSUPP; /* Linux < 6.6 */
	if (o.install == LAZYMAP_INSTALL_MOVE && !(features & UFFD_FEATURE_MOVE))
		return -EOPNOTSUPP; /* Linux < 6.8 */

	lm = calloc(1, sizeof(*lm));
	if (!lm)
		return -ENOMEM;
	lm->opts = o;
	lm->log_stderr = !o.log && lzm_log_env();
	lm->ra_pages = (o.readahead_max + lzm_page_size - 1) >> lzm_page_shift;
	if (o.handler_threads == LAZYMAP_HANDLERS_PER_CPU) {
		cpu_set_t cpus;

		if (sched_getaffinity(0, sizeof(cpus), &cpus) == 0 && CPU_COUNT(&cpus) > 0) {
			lm->pin = true;
			lm->cpus = cpus;
			lm->nhandlers = (unsigned)CPU_COUNT(&cpus);
			if (lm->nhandlers > MAX_HANDLER_THREADS)
				lm->nhandlers = MAX_HANDLER_THREADS;
		} else {
			lm->nhandlers = 1;
		}
	} else {
		lm->nhandlers = o.handler_threads;
	}
	lm->mm.uffd = lm->stop_efd = lm->work_efd = lm->fork_efd = -1;
	atomic_init(&lm->reserve_fd, -1);
	lm->fork_peer = -1;
	atomic_init(&lm->fork_watch, -1);
	atomic_init(&lm->next_mm_id, 1);
	pthread_mutex_init(&lm->work_lock, NULL);
	pthread_mutex_init(&lm->children_lock, NULL);

	ret = -ENOMEM;
	lm->stop_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	lm->work_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	lm->fork_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	atomic_init(&lm->reserve_fd, eventfd(0, EFD_CLOEXEC));
	if (lm->stop_efd < 0 || lm->work_efd < 0 || lm->fork_efd < 0 || lm->reserve_fd < 0) {
		ret = -errno;
		goto fail;
	}
	/* Fork events would go to faultd, and a child's mm be faultd's to
	 * serve: not yet (a child gets no copy of file regions, see above). */
	ret = lzm_mm_open(&lm->mm, lm,
			  features & WANTED_FEATURES & (o.daemon ? ~(uint64_t)UFFD_FEATURE_EVENT_FORK
								: ~(uint64_t)0));
	if (ret) {
		lm->mm.uffd = -1;
		goto fail;
	}
	ret = lzm_fillers_init(lm);
	if (ret)
		goto fail;
	if (o.daemon) {
		ret = lzm_remote_open(lm, o.daemon);
		lm->opts.daemon = NULL; /* the caller's string: not looked at again */
	} else {
		ret = lzm_evict_start(lm);
		if (ret == 0)
			ret = lzm_handlers_start(lm);
		atomic_store_explicit(&lm->handlers_up, ret == 0, memory_order_release);
	}
	if (ret)
		goto fail;

	static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

	pthread_once(&atfork_once, registry_atfork);
	pthread_mutex_lock(&registry_lock);
	lm->next_open = registry;
	registry = lm;
	pthread_mutex_unlock(&registry_lock);
	*lmp = lm;
	return 0;
fail:
	lazymap_free(lm);
	return ret;
}

int lazymap_close(struct lazymap *lm)
{
	struct lazymap **pp;

	if (in_own_handler(lm))
		return -EDEADLK; /* a fill callback cannot join its own thread */
	pthread_mutex_lock(&registry_lock);
	for (pp = &registry; *pp && *pp != lm; pp = &(*pp)->next_open)
		;
	if (!*pp || lm->closing) {
		pthread_mutex_unlock(&registry_lock);
		return -EBADF;
	}
	*pp = lm->next_open;
	lm->closing = true;
	while (lm->users)
		pthread_cond_wait(&registry_cond, &registry_lock);
	pthread_mutex_unlock(&registry_lock);

	/*
	 * Unmap first: unregistering wakes every thread still waiting on a
	 * fault, so the handlers have nothing left to serve when they stop.
	 * Every part of ours: events applied, tails grown in place found.
	 */
	lzm_mm_sync_events(&lm->mm);
	lzm_mm_adopt_growth(&lm->mm);
	/* faultd writes back what we wrote, and serves us until we are gone */
	int ret = lzm_remote_bye(lm);

	if (atomic_load(&lm->fills))
		ret = lazymap_close(atomic_load(&lm->fills)) ?: ret;

	ret = lzm_mm_unmap_all(&lm->mm) ?: ret;

	lazymap_free(lm);
	/* files no region maps any more whose write-back failed: once more */
	ret = lzm_cache_retry_orphaned(NULL) ?: ret;
	return ret;
}

/* ------------------------------------------------------------- mappings */

/* The end of every map call: check the handle, map src, drop our reference
 * to src (the VMA holds its own). */
static int map_source(struct lazymap *lm, void **addrp, size_t len, int prot, int flags,
		      struct source *src)
{
	/* *addrp is read only when it means something */
	uintptr_t addr = flags & (LAZYMAP_HINT | LAZYMAP_FIXED) ? (uintptr_t)*addrp : 0;
	int ret = in_own_handler(lm) ? -EDEADLK : lazymap_get(lm);

	if (ret == 0) {
		ret = lzm_mm_map(&lm->mm, &addr, len, prot, flags, src);
		lazymap_put(lm);
	}
	lzm_source_put(src);
	if (ret == 0)
		*addrp = (void *)addr;
	return ret;
}

/* Length rounded up to pages, as mmap does; 0 and wrap-around are -EINVAL. */
static int map_len(size_t len, size_t *out)
{
	if (len == 0 || len > SIZE_MAX - (lzm_page_size - 1))
		return -EINVAL;
	*out = (len + lzm_page_size - 1) & ~(lzm_page_size - 1);
	return 0;
}

/*
 * The checks every map of a source makes: addrp, prot, len (rounded up),
 * flags within allowed and PRIVATE or SHARED, and a fixed address page
 * aligned, with room for len and no hint beside it.
 */
static int map_args(void **addrp, size_t *len, int prot, int flags, int allowed)
{
	int kind = flags & (LAZYMAP_PRIVATE | LAZYMAP_SHARED);

	if (!addrp || !prot_ok(prot) || map_len(*len, len) || (flags & ~allowed) ||
	    (kind != LAZYMAP_PRIVATE && kind != LAZYMAP_SHARED))
		return -EINVAL;
	if ((flags & LAZYMAP_FIXED) &&
	    ((flags & LAZYMAP_HINT) || !page_aligned((uintptr_t)*addrp) ||
	     (uintptr_t)*addrp > UINTPTR_MAX - *len))
		return -EINVAL;
	return 0;
}

/* A file's or an export's offset: page aligned, and within what a cache holds. */
static int map_offset(uint64_t offset, size_t len)
{
	if (!page_aligned((uintptr_t)offset) || len > INT64_MAX || offset > INT64_MAX - len)
		return -EINVAL;
	if (offset + len > (uint64_t)1 << CACHE_MAX_SHIFT)
		return -EINVAL; /* beyond the largest file a cache holds */
	return 0;
}

int lazymap_map(struct lazymap *lm, void **addrp, size_t len, int prot, int flags, int fd,
		off_t offset)
{
	int kind = flags & (LAZYMAP_PRIVATE | LAZYMAP_SHARED);
	struct source *src;
	int ret;

	if (map_args(addrp, &len, prot, flags,
		     LAZYMAP_PRIVATE | LAZYMAP_SHARED | LAZYMAP_ANON | LAZYMAP_DIRECT |
			     LAZYMAP_HINT | LAZYMAP_FIXED))
		return -EINVAL;
	if (flags & LAZYMAP_ANON) {
		if (fd != -1 || offset != 0 || (flags & LAZYMAP_DIRECT))
			return -EINVAL;
		ret = lzm_source_new_zero(len >> lzm_page_shift, &src);
		return ret ? ret : map_source(lm, addrp, len, prot, flags, src);
	}
	if (offset < 0 || map_offset((uint64_t)offset, len))
		return -EINVAL;
	if (fd < 0)
		return -EBADF;

	/*
	 * As mmap: a shared map may be made writable (now, or later by
	 * lazymap_protect) only if fd was open for reading and writing. The
	 * descriptor's own errors come first.
	 */
	int fl = fcntl(fd, F_GETFL);
	bool maywrite = kind == LAZYMAP_SHARED && fl >= 0 && (fl & O_ACCMODE) == O_RDWR;
	struct cache *c;

	/* lm is looked at from here on: pinned (map_source pins it again) */
	ret = lazymap_get(lm);
	if (ret)
		return ret;
	if (lm->remote)
		ret = lzm_remote_cache(lm, fd, flags & LAZYMAP_DIRECT, maywrite, &c);
	else
		ret = lzm_cache_open(fd, flags & LAZYMAP_DIRECT, maywrite, &c);
	if (ret) {
		lazymap_put(lm);
		return ret;
	}
	if (kind == LAZYMAP_SHARED && (prot & PROT_WRITE) && !maywrite)
		ret = -EACCES;
	else if (maywrite && (lm->mm.features & SHARED_FEATURES) != SHARED_FEATURES)
		ret = -EOPNOTSUPP; /* Linux < 5.19 */
	/*
	 * Under a budget, a writable private map holds copies: an anonymous
	 * VMA whose pages come from the cache or the file (fault.c), so that
	 * what the program writes there is counted and can go to swap like
	 * any anonymous page (UFFDIO_MOVE takes anonymous pages only; a
	 * written page of a map of the memfd could not be taken out without
	 * an event, nor told from the cache's page when it faults again). A
	 * read-only one maps the cache, and costs nothing of its own.
	 */
	bool copied = (kind == LAZYMAP_PRIVATE && (prot & PROT_WRITE) && lm->ev) ||
		      (c->memfd_ro && !lzm_remote_served(lm)); /* (remote.c: copy_read_only) */

	if (ret == 0)
		ret = lzm_source_new_file(len >> lzm_page_shift, c, (uint64_t)offset >> lzm_page_shift,
					  flags & LAZYMAP_DIRECT, copied, &src);
	lzm_cache_put(c); /* the source holds its own reference */
	lazymap_put(lm);
	if (ret)
		return ret;
	src->maywrite = maywrite;
	return map_source(lm, addrp, len, prot, flags, src);
}

/*
 * Served by faultd, a lazymap serves its fill-callback regions in process:
 * a second lazymap of its own (lm->fills, opened at the first such region
 * with lm's options), to which the calls on their ranges go (range_begin).
 * lm pinned.
 */
static pthread_mutex_t fills_lock = PTHREAD_MUTEX_INITIALIZER;

static int fills_open(struct lazymap *lm, struct lazymap **fillsp)
{
	int ret = 0;

	pthread_mutex_lock(&fills_lock);
	if (!atomic_load(&lm->fills)) {
		struct lazymap_opts o = lm->opts;
		struct lazymap *fills;

		o.daemon = NULL;
		if (o.handler_threads > MAX_HANDLER_THREADS)
			o.handler_threads = LAZYMAP_HANDLERS_PER_CPU;
		ret = lazymap_open(&fills, &o);
		if (ret == 0)
			atomic_store(&lm->fills, fills);
	}
	*fillsp = atomic_load(&lm->fills);
	pthread_mutex_unlock(&fills_lock);
	return ret;
}

/* Served by faultd, the regions served in process (fill callbacks, NBD
 * exports) are lm->fills': *fillsp, or NULL when lm serves them itself. */
static int served_in_process(struct lazymap *lm, struct lazymap **fillsp)
{
	*fillsp = NULL;
	return lm->remote ? fills_open(lm, fillsp) : 0;
}

int lazymap_map_fill(struct lazymap *lm, void **addrp, size_t len, int prot,
		     lazymap_fill_fn fill, void *arg)
{
	struct lazymap *fills;
	struct source *src;
	int ret;

	if (!addrp || !fill || !prot_ok(prot) || map_len(len, &len))
		return -EINVAL;
	ret = lazymap_get(lm);
	if (ret)
		return ret;
	/* the callback runs here, not in faultd */
	ret = served_in_process(lm, &fills);
	lazymap_put(lm);
	if (ret || fills)
		return ret ? ret : lazymap_map_fill(fills, addrp, len, prot, fill, arg);
	ret = lzm_source_new_fill(len >> lzm_page_shift, fill, arg, &src);
	return ret ? ret : map_source(lm, addrp, len, prot, LAZYMAP_PRIVATE | LAZYMAP_ANON, src);
}

/* The calls on a range: check it, pin lm, refuse the ones that would
 * deadlock from a fill callback (they need the lock the fault path holds). */
static int range_begin(struct lazymap **lmp, void *addr, size_t *len, uintptr_t *start)
{
	struct lazymap *lm = *lmp, *fills;
	int ret = range_ok(addr, *len, start, len);

	if (ret)
		return ret;
	if (in_own_handler(lm))
		return -EDEADLK;
	ret = lazymap_get(lm);
	/* served by faultd, the range of a fill-callback region is the call of
	 * the lazymap that serves it here: *lmp becomes that one, pinned */
	fills = ret ? NULL : atomic_load_explicit(&lm->fills, memory_order_acquire);
	if (fills && lzm_mm_owned(&fills->mm, *start, *len) == 0) {
		ret = in_own_handler(fills) ? -EDEADLK : lazymap_get(fills);
		lazymap_put(lm);
		if (ret == 0)
			*lmp = fills;
	}
	return ret;
}

/*
 * Served by faultd: it does its part of a call on a range first (write-back,
 * its tree), and only for a range that is ours. 0 also once faultd has gone:
 * the whole call is ours then.
 */
static int remote_first(struct lazymap *lm, unsigned type, uintptr_t start, size_t len,
			unsigned arg)
{
	int ret;

	if (!lm->remote)
		return 0;
	ret = lzm_mm_owned(&lm->mm, start, len);
	if (ret == 0)
		ret = lzm_remote_range(lm, type, start, len, arg);
	return ret == -ECONNRESET ? 0 : ret;
}

/* The same for a call faultd does whole: 1 when it did. */
static int remote_only(struct lazymap *lm, unsigned type, uintptr_t start, size_t len)
{
	int ret;

	if (!lm->remote)
		return 0;
	ret = lzm_remote_range(lm, type, start, len, 0);
	return ret == -ECONNRESET ? 0 : ret ? ret : 1;
}

int lazymap_unmap(struct lazymap *lm, void *addr, size_t len)
{
	uintptr_t start;
	int ret = range_begin(&lm, addr, &len, &start);

	if (ret)
		return ret;
	ret = remote_first(lm, MSG_UNMAP, start, len, 0);
	if (ret == 0)
		ret = lzm_mm_unmap(&lm->mm, start, len);
	lazymap_put(lm);
	return ret;
}

int lazymap_protect(struct lazymap *lm, void *addr, size_t len, int prot)
{
	uintptr_t start;
	int ret;

	if (!prot_ok(prot))
		return -EINVAL;
	ret = range_begin(&lm, addr, &len, &start);
	if (ret)
		return ret;
	ret = remote_first(lm, MSG_PROTECT, start, len, (unsigned)prot);
	if (ret == 0)
		ret = lzm_mm_protect(&lm->mm, start, len, prot);
	lazymap_put(lm);
	return ret;
}

/* An advice (lzm_mm_advise's: LAZYMAP_ADV_* or a fill unit) on a range, faultd's first. */
static int advise_range(struct lazymap *lm, void *addr, size_t len, unsigned advice)
{
	uintptr_t start;
	int ret = range_begin(&lm, addr, &len, &start);

	if (ret)
		return ret;
	ret = remote_first(lm, MSG_ADVISE, start, len, advice);
	if (ret == 0)
		ret = lzm_mm_advise(&lm->mm, start, len, advice);
	lazymap_put(lm);
	return ret;
}

int lazymap_advise(struct lazymap *lm, void *addr, size_t len, int advice)
{
	if (advice < LAZYMAP_ADV_NORMAL || advice > LAZYMAP_ADV_WILLNEED)
		return -EINVAL;
	if (advice == LAZYMAP_ADV_WILLNEED)
		return lazymap_prefetch(lm, addr, len);
	return advise_range(lm, addr, len, (unsigned)advice);
}

int lazymap_fill_unit(struct lazymap *lm, void *addr, size_t len, size_t unit)
{
	if (unit % lzm_page_size || unit > LAZYMAP_FILL_UNIT_MAX)
		return -EINVAL;
	return advise_range(lm, addr, len, LZM_ADV_FILL_UNIT | (unsigned)(unit >> lzm_page_shift));
}

int lazymap_prefetch(struct lazymap *lm, void *addr, size_t len)
{
	struct prefetch *pf;
	uintptr_t start;
	int ret = range_begin(&lm, addr, &len, &start);

	if (ret)
		return ret;
	ret = lzm_mm_owned(&lm->mm, start, len);
	if (ret == 0)
		ret = remote_only(lm, MSG_PREFETCH, start, len);
	if (ret)
		goto out;
	ret = -ENOMEM;
	pf = malloc(sizeof(*pf));
	if (!pf)
		goto out;
	pf->mm = &lm->mm;
	lzm_mm_get(pf->mm);
	pf->start = start;
	pf->end = start + len;
	lzm_handlers_queue(lm, pf);
	ret = 0;
out:
	lazymap_put(lm);
	return ret < 0 ? ret : 0;
}

int lazymap_sync(struct lazymap *lm, void *addr, size_t len)
{
	uintptr_t start;
	int ret = range_begin(&lm, addr, &len, &start);

	if (ret)
		return ret;
	ret = lzm_mm_owned(&lm->mm, start, len);
	if (ret == 0)
		ret = remote_only(lm, MSG_SYNC, start, len);
	if (ret == 0)
		ret = lzm_mm_writeback(&lm->mm, start, len, WB_DURABLE);
	lazymap_put(lm);
	return ret < 0 ? ret : 0;
}

/* ------------------------------------------------------------ reporting */

int lzm_quiesce(struct lazymap *lm, unsigned timeout_ms)
{
	struct timespec tick = { .tv_nsec = 200000 };
	uint64_t waited_us = 0;

	while (atomic_load(&lm->mm.busy) || atomic_load(&lm->work_pending)) {
		if (waited_us >= timeout_ms * 1000ull)
			return -ETIMEDOUT;
		nanosleep(&tick, NULL);
		waited_us += 200;
	}
	return 0;
}

static uint64_t max_u64(uint64_t a, uint64_t b)
{
	return a > b ? a : b;
}

/* Counters of the moment (NOW), kept outside the handlers; no lock: a
 * fill callback may ask for stats. */
static uint64_t stat_now(struct lazymap *lm, size_t field)
{
	if (field == offsetof(struct lazymap_stats, regions))
		return atomic_load_explicit(&lm->mm.nr_vmas, memory_order_relaxed);
	if (field == offsetof(struct lazymap_stats, broken))
		return (uint64_t)atomic_load_explicit(&lm->broken, memory_order_relaxed);
	if (field == offsetof(struct lazymap_stats, children))
		return atomic_load_explicit(&lm->nchildren, memory_order_relaxed);
	if (field == offsetof(struct lazymap_stats, fork_followed))
		return !!(lm->mm.features & UFFD_FEATURE_EVENT_FORK);
	if (field == offsetof(struct lazymap_stats, swap_bytes))
		return lzm_swap_bytes(lm->swap);
	if (field == offsetof(struct lazymap_stats, resident_bytes) ||
	    field == offsetof(struct lazymap_stats, resident_peak))
		return lzm_evict_resident(lm, field == offsetof(struct lazymap_stats, resident_peak));
	if (field == offsetof(struct lazymap_stats, cache_pages) ||
	    field == offsetof(struct lazymap_stats, dirty_pages)) {
		uint64_t cached, dirty;

		lzm_cache_count(&lm->mm, &cached, &dirty);
		return field == offsetof(struct lazymap_stats, cache_pages) ? cached : dirty;
	}
	return 0;
}

int lazymap_stats_sized(struct lazymap *lm, struct lazymap_stats *st, size_t size)
{
	struct lazymap_stats all = { 0 };
	int ret;

	if (!st || size < LAZYMAP_STATS_SIZE_VER0)
		return -EINVAL;
	ret = lazymap_get_any(lm);
	if (ret)
		return ret;
	/*
	 * Events the program's calls raised are counted once applied: wait for
	 * what was read. Not from a fill callback: the handler running it may
	 * be the one that would apply them.
	 */
	if (!lzm_current_handler && !atomic_load_explicit(&lm->broken, memory_order_relaxed)) {
		lzm_mm_sync_events(&lm->mm);
		/* and for the batch of eviction in flight: the pages of a region
		 * just gone that it took count until it ends */
		lzm_evict_settle(lm);
	}
	/* The handlers' counters (once started: faultd may serve instead),
	 * the fillers', and the API threads' (write-back) */
	bool up = atomic_load_explicit(&lm->handlers_up, memory_order_acquire);

	for (unsigned i = up ? 0 : lm->nhandlers; i <= lm->nhandlers + MAX_FILLERS; i++) {
		struct hstats *h = i < lm->nhandlers		     ? &lm->handlers[i].stats
				   : i < lm->nhandlers + MAX_FILLERS ? &lm->fillers.f[i - lm->nhandlers].stats
								     : &lm->wstats;

#define SUM(f) all.f += atomic_load_explicit(&h->f, memory_order_relaxed)
#define MAX(f) all.f = max_u64(all.f, atomic_load_explicit(&h->f, memory_order_relaxed))
#define NOW(f)
#define STAT(name, how, what) how(name);
		LAZYMAP_COUNTERS(STAT)
#undef NOW
#undef MAX
#undef SUM
	}
#define SUM(f)
#define MAX(f)
#define NOW(f) all.f = stat_now(lm, offsetof(struct lazymap_stats, f));
	LAZYMAP_COUNTERS(STAT)
#undef STAT
#undef NOW
#undef MAX
#undef SUM
	/* our fill-callback regions' lazymap's, when faultd serves the rest */
	struct lazymap *fills = atomic_load_explicit(&lm->fills, memory_order_acquire);
	struct lazymap_stats f;

	if (fills && lazymap_stats(fills, &f) == 0) {
#define SUM(x) all.x += f.x;
#define MAX(x) all.x = max_u64(all.x, f.x);
#define NOW(x)
#define STAT(name, how, what) how(name)
		LAZYMAP_COUNTERS(STAT)
#undef STAT
#undef NOW
#undef MAX
#undef SUM
		/* of the moment too: its caches are others than faultd's */
		all.regions += f.regions;
		all.cache_pages += f.cache_pages;
		all.dirty_pages += f.dirty_pages;
	}
	/* faultd's, of what it did for us: the faults it served, what it read
	 * for them, the pages it could not read (in LAZYMAP_COUNTERS order) */
	if (lm->remote && !lzm_current_handler) {
		uint64_t v[LZM_STAT_io_errors + 1] = { 0 };

		if (lzm_remote_stats(lm, v, LZM_STAT_io_errors + 1) == 0) {
			all.faults += v[LZM_STAT_faults];
			all.bytes_read += v[LZM_STAT_bytes_read];
			all.io_errors += v[LZM_STAT_io_errors];
		}
	}
	/* The two are read one after the other, and the count rises before
	 * the peak follows it: a snapshot never shows one above the other. */
	all.resident_peak = max_u64(all.resident_peak, all.resident_bytes);
	lazymap_put(lm);
	/* Exactly the caller's size: a newer caller's extra counters read 0. */
	if (size > sizeof(all)) {
		memset((char *)st + sizeof(all), 0, size - sizeof(all));
		size = sizeof(all);
	}
	memcpy(st, &all, size);
	return 0;
}

int lazymap_dump(struct lazymap *lm, FILE *out)
{
	int ret;

	if (!out)
		return -EINVAL;
	if (in_own_handler(lm))
		return -EDEADLK;
	ret = lazymap_get(lm);
	if (ret)
		return ret;
	/* A faultd client's fill regions are its own lazymap's: one listing */
	struct lazymap *fills = atomic_load(&lm->fills);

	if (fills && in_own_handler(fills)) {
		lazymap_put(lm);
		return -EDEADLK;
	}
	lzm_mm_sync_events(&lm->mm);
	lzm_mm_adopt_growth(&lm->mm);
	if (fills) {
		lzm_mm_sync_events(&fills->mm);
		lzm_mm_adopt_growth(&fills->mm);
	}
	ret = lzm_mm_dump(&lm->mm, fills ? &fills->mm : NULL, out);

	/* Then each child, from a list taken at once (with references). */
	struct mm **kids = NULL;
	size_t nkids = 0, cap = atomic_load(&lm->nchildren) + 4;

	if (ret >= 0 && cap > 4) {
		kids = calloc(cap, sizeof(*kids));
		if (!kids)
			ret = -ENOMEM;
	}
	if (kids) {
		pthread_mutex_lock(&lm->children_lock);
		for (struct mm *mm = lm->children; mm && nkids < cap; mm = mm->next_child) {
			lzm_mm_get(mm);
			kids[nkids++] = mm;
		}
		pthread_mutex_unlock(&lm->children_lock);
	}
	for (size_t i = 0; i < nkids; i++) {
		int n = ret >= 0 ? lzm_mm_dump(kids[i], NULL, out) : 0;

		ret = n < 0 ? n : ret + n;
		lzm_mm_put(kids[i]);
	}
	free(kids);
	lazymap_put(lm);
	return ret;
}

/* ------------------------------------------------------------ NBD exports */

int lazymap_map_uri(struct lazymap *lm, void **addrp, size_t len, int prot, int flags,
		    const char *uri, uint64_t offset)
{
	int kind = flags & (LAZYMAP_PRIVATE | LAZYMAP_SHARED);
	struct lazymap *fills;
	struct source *src;
	struct cache *c;
	int ret;

	if (map_args(addrp, &len, prot, flags,
		     LAZYMAP_PRIVATE | LAZYMAP_SHARED | LAZYMAP_HINT | LAZYMAP_FIXED) ||
	    !uri || map_offset(offset, len))
		return -EINVAL;
	ret = lazymap_get(lm);
	if (ret)
		return ret;
	/* faultd pages files by descriptor: an export is served here */
	ret = served_in_process(lm, &fills);
	if (ret || fills) {
		lazymap_put(lm);
		return ret ? ret : lazymap_map_uri(fills, addrp, len, prot, flags, uri, offset);
	}
	ret = in_own_handler(lm) ? -EDEADLK
				 : lzm_cache_open_nbd(uri, lm->opts.remote_timeout_ms,
						      kind == LAZYMAP_SHARED && (prot & PROT_WRITE), &c);
	if (ret) {
		lazymap_put(lm);
		return ret;
	}
	/* as a file's descriptor: a shared map of a writable export may write */
	bool maywrite = kind == LAZYMAP_SHARED && !lzm_nbd_read_only(c->nbd);
	/* under a budget a writable private map holds copies (lazymap_map) */
	bool copied = kind == LAZYMAP_PRIVATE && (prot & PROT_WRITE) && lm->ev;

	if (maywrite && (lm->mm.features & SHARED_FEATURES) != SHARED_FEATURES)
		ret = -EOPNOTSUPP; /* Linux < 5.19 */
	else
		ret = lzm_source_new_nbd(len >> lzm_page_shift, c, offset >> lzm_page_shift, copied,
					 &src);
	lzm_cache_put(c);
	lazymap_put(lm);
	if (ret)
		return ret;
	src->maywrite = maywrite;
	return map_source(lm, addrp, len, prot, flags, src);
}
