// SPDX-License-Identifier: MIT
/*
 * umap's C API (include/lazymap-umap/umap/umap.h) on liblazymap's public
 * API alone: one lazymap for the process, opened at the first call with
 * umap's environment variables read into its options, and the regions
 * umap() made, for umap_flush, uunmap and their page sizes. A child made
 * by fork() starts afresh: its own lazymap at its first call.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "lazymap.h"
#include "umap/umap.h"

#define UMAP_API __attribute__((visibility("default")))

/* lazymap's own bounds (lazymap_open refuses what is past them) */
#define MAX_FILLERS      256u
#define MIN_BUFFER_BYTES (4u << 20)
#define MAX_WINDOW_BYTES LAZYMAP_FILL_UNIT_MAX

/* ------------------------------------------------------------ configuration */

/*
 * What the environment says, once, as umap reads it: the number its
 * leading digits make, where 0 or text that starts with no digit means the
 * default. A value umap would refuse (a page size not a multiple of the
 * system's, a buffer larger than memory), and values it would take without
 * a word but that can only be mistakes (a negative number, a percentage
 * past 100, a page size past LAZYMAP_FILL_UNIT_MAX), make every call fail
 * with EINVAL, and say why on stderr once.
 */
static struct {
	uint64_t page_size, max_fault_events, fillers, evictors, buffer_pages, read_ahead;
	int low_water, high_water;
	int err;                 /* 0, or the errno every call fails with */
	struct lazymap *lm;
} cfg;

/* cfg is read once per process: a child made by fork() reads it again.
 * cfg_lock: taken before regions_lock. */
static pthread_mutex_t cfg_lock = PTHREAD_MUTEX_INITIALIZER;
static bool cfg_loaded;

static void refuse(const char *what, const char *v);

static uint64_t env_u64(const char *name, uint64_t dflt)
{
	const char *s = getenv(name), *t = s;
	char *end;
	unsigned long long v;

	if (!s || !*s)
		return dflt;
	while (*t == ' ' || *t == '\t')
		t++;
	if (*t == '-') {
		/* umap would read 2^64 - n: no count or size is meant that way */
		refuse(name, s);
		return dflt;
	}
	errno = 0;
	v = strtoull(t, &end, 10);
	if (errno == ERANGE)
		refuse(name, s);
	return errno || end == t || v == 0 ? dflt : (uint64_t)v;
}

/* 90% of the memory free now, in umap pages: umap's default buffer. */
static uint64_t free_pages(uint64_t page_size)
{
	FILE *f = fopen("/proc/meminfo", "re");
	unsigned long long kb = 0;
	char line[128];

	while (f && fgets(line, sizeof(line), f))
		if (sscanf(line, "MemFree: %llu kB", &kb) == 1)
			break;
	if (f)
		fclose(f);
	return kb * 1024 / page_size * 90 / 100;
}

static void refuse(const char *what, const char *v)
{
	if (!cfg.err)
		fprintf(stderr, "liblazymap-umap: %s=%s is refused: every umap call fails with EINVAL\n",
			what, v);
	cfg.err = EINVAL;
}

static void refuse_u64(const char *what, unsigned long long v)
{
	char s[24];

	snprintf(s, sizeof(s), "%llu", v);
	refuse(what, s);
}

static void forked_child(void);

static void cfg_load(void)
{
	uint64_t sys = (uint64_t)sysconf(_SC_PAGESIZE), max_pages, high, low;
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	uint64_t threads = ncpu > 0 ? (uint64_t)ncpu : 16; /* umap's: one per CPU */

	cfg.page_size = env_u64("UMAP_PAGESIZE", sys);
	cfg.max_fault_events = env_u64("UMAP_MAX_FAULT_EVENTS", 256);
	cfg.fillers = env_u64("UMAP_PAGE_FILLERS", threads);
	cfg.evictors = env_u64("UMAP_PAGE_EVICTORS", threads);
	high = env_u64("UMAP_EVICT_HIGH_WATER_THRESHOLD", 90);
	low = env_u64("UMAP_EVICT_LOW_WATER_THRESHOLD", 70);
	cfg.read_ahead = env_u64("UMAP_READ_AHEAD", 0);
	cfg.high_water = high > 100 ? 101 : (int)high;
	cfg.low_water = low > 100 ? 101 : (int)low;
	if (cfg.err)
		return;
	if (cfg.page_size % sys || cfg.page_size > MAX_WINDOW_BYTES) {
		refuse_u64("UMAP_PAGESIZE", (unsigned long long)cfg.page_size);
		return;
	}
	max_pages = free_pages(cfg.page_size);
	cfg.buffer_pages = env_u64("UMAP_BUFSIZE", max_pages);
	if (cfg.buffer_pages > max_pages && getenv("UMAP_BUFSIZE"))
		refuse_u64("UMAP_BUFSIZE", (unsigned long long)cfg.buffer_pages);
	else if (high > 100)
		refuse_u64("UMAP_EVICT_HIGH_WATER_THRESHOLD", (unsigned long long)high);
	else if (low > 100)
		refuse_u64("UMAP_EVICT_LOW_WATER_THRESHOLD", (unsigned long long)low);
	else if (cfg.fillers > MAX_FILLERS)
		refuse_u64("UMAP_PAGE_FILLERS", (unsigned long long)cfg.fillers);
	if (cfg.err)
		return;

	/*
	 * Fillers are handler threads; the buffer is the resident budget; a
	 * fill reads at least a umap page and, with read-ahead, that many
	 * more (the stream's window, which liblazymap grows from there).
	 */
	uint64_t window = cfg.read_ahead >= MAX_WINDOW_BYTES / cfg.page_size
				  ? MAX_WINDOW_BYTES : cfg.page_size * (1 + cfg.read_ahead);
	uint64_t budget;

	budget = cfg.buffer_pages > SIZE_MAX / cfg.page_size ? SIZE_MAX
								: cfg.buffer_pages * cfg.page_size;
	struct lazymap_opts o = {
		.handler_threads = (unsigned)cfg.fillers,
		.readahead_max = window > MAX_WINDOW_BYTES ? MAX_WINDOW_BYTES
			       : window > (512u << 10) ? window : 0,
		.resident_limit = budget < MIN_BUFFER_BYTES ? MIN_BUFFER_BYTES : budget,
	};
	int ret = lazymap_open(&cfg.lm, &o);

	if (ret) {
		fprintf(stderr, "liblazymap-umap: lazymap_open: %s\n", strerror(-ret));
		cfg.err = -ret;
	}
}

/* 0 once the configuration is read and the lazymap open; else errno set. */
static int ready(void)
{
	static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

	pthread_once(&atfork_once, forked_child);
	pthread_mutex_lock(&cfg_lock);
	if (!cfg_loaded) {
		cfg_load();
		cfg_loaded = true;
	}
	pthread_mutex_unlock(&cfg_lock);
	if (cfg.err) {
		errno = cfg.err;
		return -1;
	}
	return 0;
}

/* ------------------------------------------------------------ regions */

/*
 * The regions umap() made: umap_flush syncs them all, uunmap finds them by
 * start, umap_prefetch by address. Lock order: cfg_lock, then regions_lock.
 */
static pthread_mutex_t regions_lock = PTHREAD_MUTEX_INITIALIZER;
static struct region {
	char *addr;
	size_t len;
	uint64_t page_size; /* the region's umap page: its unit of a fill */
	bool inherited;     /* a forked child's copy of its parent's region */
} *regions;
static size_t nregions, regions_cap;

static int region_add(char *addr, size_t len, uint64_t page_size, bool inherited)
{
	pthread_mutex_lock(&regions_lock);
	if (nregions == regions_cap) {
		size_t cap = regions_cap ? regions_cap * 2 : 16;
		struct region *r = realloc(regions, cap * sizeof(*r));

		if (!r) {
			pthread_mutex_unlock(&regions_lock);
			return -ENOMEM;
		}
		regions = r;
		regions_cap = cap;
	}
	regions[nregions++] = (struct region){ addr, len, page_size, inherited };
	pthread_mutex_unlock(&regions_lock);
	return 0;
}

/* Whether [addr, addr + len) meets a region of ours. */
static bool region_overlaps(const void *addr, size_t len)
{
	const char *a = addr;
	bool meets = false;

	pthread_mutex_lock(&regions_lock);
	for (size_t i = 0; i < nregions && !meets; i++)
		meets = a < regions[i].addr + regions[i].len && regions[i].addr < a + len;
	pthread_mutex_unlock(&regions_lock);
	return meets;
}

/* Take the region that starts at addr off the list into *r: false if none. */
static bool region_take(char *addr, struct region *r)
{
	bool found = false;

	pthread_mutex_lock(&regions_lock);
	for (size_t i = 0; i < nregions; i++)
		if (regions[i].addr == addr) {
			*r = regions[i];
			regions[i] = regions[--nregions];
			found = true;
			break;
		}
	pthread_mutex_unlock(&regions_lock);
	return found;
}

/* The region that holds addr, copied into *r: false if none. */
static bool region_find(const char *addr, struct region *r)
{
	bool found = false;

	pthread_mutex_lock(&regions_lock);
	for (size_t i = 0; i < nregions && !found; i++)
		if (addr >= regions[i].addr && addr < regions[i].addr + regions[i].len) {
			*r = regions[i];
			found = true;
		}
	pthread_mutex_unlock(&regions_lock);
	return found;
}

/*
 * fork(): the child's copies of our regions stay its parent's (the
 * parent's lazymap serves them, and writes to a file's region reach the
 * parent's page cache: they are shared, as MAP_SHARED is); uunmap there
 * unmaps the child's copy and nothing else. The child's own calls get a
 * lazymap of its own, opened at its first call (its parent's handle is
 * EBADF in it).
 *
 * Only regions_lock is held across a fork: nothing is called under it.
 * cfg_lock is held while lazymap_open runs, whose own fork handlers take
 * the library's locks; the child starts cfg (and its lock) afresh instead,
 * whatever another thread was doing with it at the fork.
 */
static void fork_prepare(void)
{
	pthread_mutex_lock(&regions_lock);
}

static void fork_parent(void)
{
	pthread_mutex_unlock(&regions_lock);
}

static void fork_child(void)
{
	for (size_t i = 0; i < nregions; i++)
		regions[i].inherited = true;
	memset(&cfg, 0, sizeof(cfg));
	cfg_loaded = false;
	pthread_mutex_init(&cfg_lock, NULL);
	pthread_mutex_unlock(&regions_lock);
}

static void forked_child(void)
{
	pthread_atfork(fork_prepare, fork_parent, fork_child);
}

/* ------------------------------------------------------------ the API */

/* A region's page size: a multiple of the umap page size that a fill unit can be. */
static bool page_size_ok(uint64_t page_size)
{
	return page_size && page_size % cfg.page_size == 0 && page_size <= LAZYMAP_FILL_UNIT_MAX;
}

/*
 * Map a region of length at an address aligned to align, as umap places
 * its regions on their page size: where a reservation of length + align
 * found room a moment ago. Another thread may map there meanwhile
 * (LAZYMAP_FIXED then fails with EEXIST, replacing nothing): tried again,
 * then placed wherever the library likes.
 */
static int map_aligned(void **p, size_t length, uint64_t align, int prot, int lflags, int fd,
		       off_t offset)
{
	for (int tries = 0; tries < 4 && length <= SIZE_MAX - align; tries++) {
		char *r = mmap(NULL, length + align, PROT_NONE,
			       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
		int ret;

		if (r == MAP_FAILED)
			break;
		munmap(r, length + align);
		*p = (void *)(((uintptr_t)r + align - 1) / align * align);
		ret = lazymap_map(cfg.lm, p, length, prot, lflags | LAZYMAP_FIXED, fd, offset);
		if (ret != -EEXIST)
			return ret;
	}
	*p = NULL;
	return lazymap_map(cfg.lm, p, length, prot, lflags, fd, offset);
}

UMAP_API void *umap_variable(void *addr, size_t length, int prot, int flags, int fd, off_t offset,
			     uint64_t page_size)
{
	void *p = addr;
	int ret, fl, lflags;

	if (ready())
		return UMAP_FAILED;
	if (!page_size)
		page_size = cfg.page_size;
	if (!(flags & UMAP_PRIVATE) || (flags & ~(UMAP_PRIVATE | UMAP_FIXED)) ||
	    (prot & ~(PROT_READ | PROT_WRITE)) || length == 0 || offset < 0 ||
	    !page_size_ok(page_size) ||
	    ((flags & UMAP_FIXED) && (uintptr_t)addr % cfg.page_size)) {
		errno = EINVAL;
		return UMAP_FAILED;
	}
	fl = fcntl(fd, F_GETFL);
	if (fl < 0) {
		errno = EBADF;
		return UMAP_FAILED;
	}
	/* a file open for writing is written back; one open read-only is a
	 * read-only view */
	bool writable = (fl & O_ACCMODE) == O_RDWR;

	if ((prot & PROT_WRITE) && !writable) {
		errno = EACCES;
		return UMAP_FAILED;
	}
	if (length > SIZE_MAX - page_size) {
		errno = EINVAL;
		return UMAP_FAILED;
	}
	/* as umap: the region is a whole number of its pages */
	length = (length + page_size - 1) / page_size * page_size;
	lflags = (writable ? LAZYMAP_SHARED : LAZYMAP_PRIVATE) |
		 (flags & UMAP_FIXED ? LAZYMAP_FIXED : 0);
	if (!(flags & UMAP_FIXED) && page_size > (uint64_t)sysconf(_SC_PAGESIZE))
		ret = map_aligned(&p, length, page_size, prot, lflags, fd, offset);
	else
		ret = lazymap_map(cfg.lm, &p, length, prot, lflags, fd, offset);
	if (ret == -EEXIST && (flags & UMAP_FIXED) && !region_overlaps(addr, length)) {
		/* UMAP_FIXED replaces what the program mapped there, as
		 * MAP_FIXED does (umap relies on it); another region, never */
		munmap(addr, length);
		p = addr;
		ret = lazymap_map(cfg.lm, &p, length, prot, lflags, fd, offset);
	}
	/* a fault reads the whole umap page that holds it */
	if (ret == 0 && page_size > (uint64_t)sysconf(_SC_PAGESIZE) &&
	    (ret = lazymap_fill_unit(cfg.lm, p, length, page_size)) != 0)
		lazymap_unmap(cfg.lm, p, length);
	else if (ret == 0 && (ret = region_add(p, length, page_size, false)) != 0)
		lazymap_unmap(cfg.lm, p, length);
	if (ret) {
		errno = -ret;
		return UMAP_FAILED;
	}
	return p;
}

UMAP_API void *umap(void *addr, size_t length, int prot, int flags, int fd, off_t offset)
{
	return umap_variable(addr, length, prot, flags, fd, offset, 0);
}

UMAP_API void umap_adapt_pagesize(void *addr, uint64_t page_size)
{
	struct region r;
	int ret;

	if (ready())
		return;
	if (!region_find(addr, &r) || r.addr != addr || r.inherited || !page_size_ok(page_size)) {
		errno = EINVAL;
		return;
	}
	ret = lazymap_fill_unit(cfg.lm, r.addr, r.len, page_size);
	if (ret) {
		errno = -ret;
		return;
	}
	pthread_mutex_lock(&regions_lock);
	for (size_t i = 0; i < nregions; i++)
		if (regions[i].addr == addr && !regions[i].inherited)
			regions[i].page_size = page_size;
	pthread_mutex_unlock(&regions_lock);
}

UMAP_API int uunmap(void *addr, size_t length)
{
	struct region r;
	int ret;

	(void)length; /* as umap: the region that starts at addr, whole */
	if (ready())
		return -1;
	if (!region_take(addr, &r)) {
		errno = EINVAL;
		return -1;
	}
	/* a child's copy: its parent writes back what it wrote */
	ret = r.inherited ? (munmap(r.addr, r.len) ? -errno : 0)
			  : lazymap_unmap(cfg.lm, r.addr, r.len);
	if (ret) {
		region_add(r.addr, r.len, r.page_size, r.inherited); /* still mapped: still ours */
		errno = -ret;
		return -1;
	}
	return 0;
}

UMAP_API int umap_flush(void)
{
	struct region *copy;
	size_t n;
	int err = 0;

	if (ready())
		return -1;
	/* synced without the lock: another thread's uunmap may take one
	 * meanwhile (its own write-back covers it; EINVAL then) */
	pthread_mutex_lock(&regions_lock);
	n = nregions;
	copy = malloc((n ? n : 1) * sizeof(*copy));
	if (copy)
		memcpy(copy, regions, n * sizeof(*copy));
	pthread_mutex_unlock(&regions_lock);
	if (!copy) {
		errno = ENOMEM;
		return -1;
	}
	for (size_t i = 0; i < n; i++) {
		int ret = copy[i].inherited ? 0 : lazymap_sync(cfg.lm, copy[i].addr, copy[i].len);

		if (ret && ret != -EINVAL && !err)
			err = -ret;
	}
	free(copy);
	if (err) {
		errno = err;
		return -1;
	}
	return 0;
}

UMAP_API void umap_prefetch(int npages, struct umap_prefetch_item *page_array)
{
	struct region r;

	if (ready() || npages <= 0 || !page_array)
		return;
	for (int i = 0; i < npages; i++) {
		char *page = page_array[i].page_base_addr;

		/* the umap page of its region that holds it */
		if (region_find(page, &r) && !r.inherited) {
			page -= (uint64_t)(page - r.addr) % r.page_size;
			lazymap_prefetch(cfg.lm, page, r.page_size);
		}
	}
}

UMAP_API void umap_fetch_and_pin(char *paddr, uint64_t size)
{
	size_t sys = (size_t)sysconf(_SC_PAGESIZE);
	struct region r;
	uint64_t room;

	if (ready() || !paddr || !size)
		return;
	/* within the region that holds paddr, as umap: nothing past its end */
	if (!region_find(paddr, &r))
		return;
	room = (uint64_t)(r.addr + r.len - paddr);
	if (size > room)
		size = room;
	/* in at once: the reads go out together, then each page is touched */
	char *first = (char *)((uintptr_t)paddr & ~(uintptr_t)(sys - 1)), *end = paddr + size;

	if (!r.inherited)
		lazymap_prefetch(cfg.lm, first, (size_t)(end - first));
	for (char *at = first; at < end; at += sys)
		(void)*(volatile char *)(at < paddr ? paddr : at);
}

UMAP_API int umap_has_write_support(void)
{
	return 1;
}

UMAP_API long umapcfg_get_system_page_size(void)
{
	return sysconf(_SC_PAGESIZE);
}

UMAP_API uint64_t umapcfg_get_umap_page_size(void)
{
	ready();
	return cfg.page_size;
}

UMAP_API uint64_t umapcfg_get_max_fault_events(void)
{
	ready();
	return cfg.max_fault_events;
}

UMAP_API uint64_t umapcfg_get_num_fillers(void)
{
	ready();
	return cfg.fillers;
}

UMAP_API uint64_t umapcfg_get_num_evictors(void)
{
	ready();
	return cfg.evictors;
}

UMAP_API uint64_t umapcfg_get_max_pages_in_buffer(void)
{
	ready();
	return cfg.buffer_pages;
}

UMAP_API uint64_t umapcfg_get_read_ahead(void)
{
	ready();
	return cfg.read_ahead;
}

UMAP_API int umapcfg_get_evict_low_water_threshold(void)
{
	ready();
	return cfg.low_water;
}

UMAP_API int umapcfg_get_evict_high_water_threshold(void)
{
	ready();
	return cfg.high_water;
}
