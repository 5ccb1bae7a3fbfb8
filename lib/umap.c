// SPDX-License-Identifier: MIT
/*
 * umap's C API (include/lazymap-umap/umap/umap.h) on liblazymap's public
 * API alone: one lazymap for the process, opened at the first call with
 * umap's environment variables read into its options, and the regions
 * umap() made, for umap_flush and uunmap.
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
#define MAX_WINDOW_BYTES (64u << 20)

/* ------------------------------------------------------------ configuration */

/*
 * What the environment says, once, as umap reads it: a number, where 0 or
 * text that is no number means the default. A value umap would refuse (a
 * page size not a multiple of the system's, a percentage past 100, a
 * buffer larger than memory) makes every call fail with EINVAL, and says
 * why on stderr once.
 */
static struct {
	uint64_t page_size, max_fault_events, fillers, evictors, buffer_pages, read_ahead;
	int low_water, high_water;
	int err;                 /* 0, or the errno every call fails with */
	struct lazymap *lm;
} cfg;

static pthread_once_t cfg_once = PTHREAD_ONCE_INIT;

static uint64_t env_u64(const char *name, uint64_t dflt)
{
	const char *s = getenv(name);
	char *end;
	unsigned long long v;

	if (!s || !*s)
		return dflt;
	errno = 0;
	v = strtoull(s, &end, 10);
	return errno || end == s || v == 0 ? dflt : (uint64_t)v;
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

static void refuse(const char *what, unsigned long long v)
{
	fprintf(stderr, "liblazymap-umap: %s=%llu is refused: every umap call fails with EINVAL\n",
		what, v);
	cfg.err = EINVAL;
}

static void cfg_load(void)
{
	uint64_t sys = (uint64_t)sysconf(_SC_PAGESIZE), max_pages;
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	uint64_t fillers = ncpu > 8 ? 8 : 2;

	cfg.page_size = env_u64("UMAP_PAGESIZE", sys);
	cfg.max_fault_events = env_u64("UMAP_MAX_FAULT_EVENTS", 256);
	cfg.fillers = env_u64("UMAP_PAGE_FILLERS", fillers);
	cfg.evictors = env_u64("UMAP_PAGE_EVICTORS", fillers / 2);
	cfg.high_water = (int)env_u64("UMAP_EVICT_HIGH_WATER_THRESHOLD", 90);
	cfg.low_water = (int)env_u64("UMAP_EVICT_LOW_WATER_THRESHOLD", 70);
	cfg.read_ahead = env_u64("UMAP_READ_AHEAD", 0);
	if (cfg.page_size % sys || cfg.page_size > MAX_WINDOW_BYTES) {
		refuse("UMAP_PAGESIZE", (unsigned long long)cfg.page_size);
		return;
	}
	max_pages = free_pages(cfg.page_size);
	cfg.buffer_pages = env_u64("UMAP_BUFSIZE", max_pages);
	if (cfg.buffer_pages > max_pages && getenv("UMAP_BUFSIZE"))
		refuse("UMAP_BUFSIZE", (unsigned long long)cfg.buffer_pages);
	else if (cfg.high_water > 100 || cfg.high_water < 0)
		refuse("UMAP_EVICT_HIGH_WATER_THRESHOLD", (unsigned long long)cfg.high_water);
	else if (cfg.low_water > 100 || cfg.low_water < 0)
		refuse("UMAP_EVICT_LOW_WATER_THRESHOLD", (unsigned long long)cfg.low_water);
	else if (cfg.fillers > MAX_FILLERS)
		refuse("UMAP_PAGE_FILLERS", (unsigned long long)cfg.fillers);
	if (cfg.err)
		return;

	/*
	 * Fillers are handler threads; the buffer is the resident budget; a
	 * fill reads at least a umap page and, with read-ahead, that many
	 * more (the stream's window, which liblazymap grows from there).
	 */
	uint64_t window = cfg.page_size * (1 + cfg.read_ahead), budget;

	budget = cfg.buffer_pages * cfg.page_size;
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
	pthread_once(&cfg_once, cfg_load);
	if (cfg.err) {
		errno = cfg.err;
		return -1;
	}
	return 0;
}

/* ------------------------------------------------------------ regions */

/* The regions umap() made: umap_flush syncs them all, uunmap finds by start. */
static pthread_mutex_t regions_lock = PTHREAD_MUTEX_INITIALIZER;
static struct region {
	char *addr;
	size_t len;
} *regions;
static size_t nregions, regions_cap;

static int region_add(char *addr, size_t len)
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
	regions[nregions++] = (struct region){ addr, len };
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

/* Take the region that starts at addr off the list: its length, 0 if none. */
static size_t region_take(char *addr)
{
	size_t len = 0;

	pthread_mutex_lock(&regions_lock);
	for (size_t i = 0; i < nregions; i++)
		if (regions[i].addr == addr) {
			len = regions[i].len;
			regions[i] = regions[--nregions];
			break;
		}
	pthread_mutex_unlock(&regions_lock);
	return len;
}

/* ------------------------------------------------------------ the API */

UMAP_API void *umap_variable(void *addr, size_t length, int prot, int flags, int fd, off_t offset,
			     uint64_t page_size)
{
	void *p = addr;
	int ret, fl, lflags;

	if (ready())
		return UMAP_FAILED;
	if (!(flags & UMAP_PRIVATE) || (flags & ~(UMAP_PRIVATE | UMAP_FIXED)) ||
	    (prot & ~(PROT_READ | PROT_WRITE)) || length == 0 || offset < 0 ||
	    (page_size && page_size % cfg.page_size) ||
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
	if (length > SIZE_MAX - cfg.page_size) {
		errno = EINVAL;
		return UMAP_FAILED;
	}
	length = (length + cfg.page_size - 1) / cfg.page_size * cfg.page_size;
	lflags = (writable ? LAZYMAP_SHARED : LAZYMAP_PRIVATE) |
		 (flags & UMAP_FIXED ? LAZYMAP_FIXED : 0);
	ret = lazymap_map(cfg.lm, &p, length, prot, lflags, fd, offset);
	if (ret == -EEXIST && !region_overlaps(addr, length)) {
		/* UMAP_FIXED replaces what the program mapped there, as
		 * MAP_FIXED does (umap relies on it); another region, never */
		munmap(addr, length);
		p = addr;
		ret = lazymap_map(cfg.lm, &p, length, prot, lflags, fd, offset);
	}
	if (ret == 0 && (ret = region_add(p, length)) != 0)
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

UMAP_API int uunmap(void *addr, size_t length)
{
	size_t len;
	int ret;

	(void)length; /* as umap: the region that starts at addr, whole */
	if (ready())
		return -1;
	len = region_take(addr);
	if (!len) {
		errno = EINVAL;
		return -1;
	}
	ret = lazymap_unmap(cfg.lm, addr, len);
	if (ret) {
		region_add(addr, len); /* still mapped: still ours */
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
		int ret = lazymap_sync(cfg.lm, copy[i].addr, copy[i].len);

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
	if (ready() || npages <= 0 || !page_array)
		return;
	for (int i = 0; i < npages; i++)
		lazymap_prefetch(cfg.lm, page_array[i].page_base_addr, cfg.page_size);
}

UMAP_API void umap_fetch_and_pin(char *paddr, uint64_t size)
{
	size_t sys = (size_t)sysconf(_SC_PAGESIZE);
	char *end = NULL;

	if (ready() || !paddr || !size)
		return;
	/* within the region that holds paddr, as umap: nothing past its end */
	pthread_mutex_lock(&regions_lock);
	for (size_t i = 0; i < nregions && !end; i++)
		if (paddr >= regions[i].addr && paddr < regions[i].addr + regions[i].len)
			end = regions[i].addr + regions[i].len;
	pthread_mutex_unlock(&regions_lock);
	if (!end)
		return;
	if (size > (uint64_t)(end - paddr))
		size = (uint64_t)(end - paddr);
	/* in at once: the reads go out together, then each page is touched */
	lazymap_prefetch(cfg.lm, paddr, size);
	for (uint64_t at = 0; at < size; at += sys)
		(void)*(volatile char *)(paddr + at);
}

UMAP_API int umap_has_write_support(void)
{
	return 1;
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
