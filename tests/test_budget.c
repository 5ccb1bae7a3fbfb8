// SPDX-License-Identifier: MIT
/*
 * The resident budget (opts.resident_limit) on file regions: under a budget
 * far smaller than the file, every byte a thread reads is right, shared
 * writes reach the file (written back before their pages are dropped), a
 * private region's own writes stay and never reach the file, no write is
 * lost to an eviction racing it, and the resident count stays within the
 * limit and a fill's worth.
 */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>

static void fx_teardown(void);
#define skip_cleanup() fx_teardown()

#include "common.h"

#define MiB (1ull << 20)

static struct {
	char dir[PATH_MAX / 2];
} fx;

static void fx_setup(void)
{
	scratch_setup(fx.dir, sizeof(fx.dir), "budget");
}

static void fx_teardown(void)
{
	scratch_drop(fx.dir);
}

#define FIXTURE .init = fx_setup, .fini = fx_teardown

static struct lazymap *open_budget(size_t limit)
{
	return open_or_skip(&(struct lazymap_opts){ .resident_limit = limit });
}

static struct lazymap_stats stats_of(struct lazymap *lm)
{
	struct lazymap_stats st;

	cr_assert_eq(lazymap_stats(lm, &st), 0);
	return st;
}

/* The peak may pass the limit by the fills in flight when it was reached. */
static void expect_peak(const struct lazymap_stats *st, size_t limit, size_t slack)
{
	cr_assert_gt(st->evictions, 0, "nothing was evicted under a budget of %zu MiB",
		     limit / MiB);
	cr_assert_leq(st->resident_peak, limit + slack,
		      "resident peak %llu KiB, over the limit of %zu KiB by more than %zu KiB",
		      (unsigned long long)st->resident_peak >> 10, limit >> 10, slack >> 10);
}

/* ------------------------------------------------------------ shared writes */

/*
 * Two threads write random words into their own pages (even and odd) of a
 * 256 MiB shared mapping under a 16 MiB budget, and read back words they
 * wrote; then sync and close: the file is the model.
 */
#define SW_SIZE  (256 * MiB)
#define SW_LIMIT (16 * MiB)
#define SW_OPS   20000

struct sw {
	char *base;
	uint8_t *model;
	size_t npages;
	uint64_t seed;
	unsigned id;
	size_t bad;
	uint64_t bad_off;
	pthread_t th;
};

static void *sw_main(void *arg)
{
	struct sw *w = arg;
	size_t ps = pgsz();
	uint64_t s = w->seed;

	for (size_t i = 0; i < SW_OPS; i++) {
		size_t pg = (size_t)(rng_next(&s) % (w->npages / 2)) * 2 + w->id;
		uint64_t off = pg * ps + (rng_next(&s) % (ps / 8)) * 8, v = rng_next(&s);

		if (i % 4 == 3) {
			/* read back a word of our own */
			if (memcmp(w->base + off, w->model + off, 8) && !w->bad++)
				w->bad_off = off;
			continue;
		}
		memcpy(w->base + off, &v, 8);
		memcpy(w->model + off, &v, 8);
	}
	return NULL;
}

Test(budget, shared_writes_under_a_budget_reach_the_file, FIXTURE, .timeout = 240)
{
	size_t ps = pgsz(), npages = SW_SIZE / ps;
	uint64_t seed = test_seed(), s = seed;
	struct lazymap *lm = open_budget(SW_LIMIT);
	struct lazymap_stats st;
	char path[PATH_MAX];
	uint8_t *model = pattern_file(fx.dir, "shared", SW_SIZE, 71, npages, path, sizeof(path));
	struct sw w[2];
	int fd = open_file(path, O_RDWR), ret;
	void *p = NULL;

	ret = lazymap_map(lm, &p, SW_SIZE, PROT_READ | PROT_WRITE, LAZYMAP_SHARED, fd, 0);
	cr_assert_eq(ret, 0, "map: %s", strerror(-ret));
	for (unsigned i = 0; i < 2; i++) {
		w[i] = (struct sw){ .base = p, .model = model, .npages = npages, .id = i,
				    .seed = rng_next(&s) | 1 };
		cr_assert_eq(pthread_create(&w[i].th, NULL, sw_main, &w[i]), 0);
	}
	for (unsigned i = 0; i < 2; i++) {
		pthread_join(w[i].th, NULL);
		cr_assert_eq(w[i].bad, 0, "LAZYMAP_SEED=%#llx: thread %u read %zu wrong words, the first at %#llx",
			     (unsigned long long)seed, i, w[i].bad, (unsigned long long)w[i].bad_off);
	}
	ret = lazymap_sync(lm, p, SW_SIZE);
	cr_assert_eq(ret, 0, "sync: %s", strerror(-ret));
	st = stats_of(lm);
	/* (a write-protect message read after eviction had punched its page
	 * marked the hole dirty, and the count kept it for ever) */
	cr_assert_eq(st.dirty_pages, 0, "%llu pages dirty after a sync with no writer",
		     (unsigned long long)st.dirty_pages);
	cr_log_info("evictions %llu, refaults %llu, peak %llu KiB, waited %llu ms, bytes written %llu MiB",
		    (unsigned long long)st.evictions, (unsigned long long)st.refaults,
		    (unsigned long long)st.resident_peak >> 10,
		    (unsigned long long)st.evict_wait_ns / 1000000,
		    (unsigned long long)st.bytes_written >> 20);
	expect_peak(&st, SW_LIMIT, 2 * MiB);
	/* a fill waits at most 1 s for eviction (write-back here), then goes
	 * on: on a loaded machine (sanitizers) it may; the peak above is the
	 * bound that holds */
	if (st.budget_overruns)
		cr_log_warn("%llu fills went on over the budget after waiting 1 s",
			    (unsigned long long)st.budget_overruns);
	expect_mem("the mapping after sync", p, model, SW_SIZE);
	cr_assert_eq(lazymap_close(lm), 0);
	expect_file("the file", fd, model, SW_SIZE);
	close(fd);
	free(model);
}

/* ------------------------------------------------------------ private regions */

/*
 * Scans of a 64 MiB private region under a 4 MiB budget, sequential then
 * random: every byte right, the peak within the limit and three readahead
 * windows. Pages the region wrote are its own copies: they keep their bytes
 * while the cache pages under them come and go, and never reach the file.
 */
#define PR_SIZE  (64 * MiB)
#define PR_LIMIT (4 * MiB)

Test(budget, private_scans_under_a_budget, FIXTURE, .timeout = 120)
{
	size_t ps = pgsz(), npages = PR_SIZE / ps;
	uint64_t s = test_seed();
	struct lazymap *lm = open_budget(PR_LIMIT);
	struct lazymap_stats st;
	char path[PATH_MAX];
	uint8_t *orig = pattern_file(fx.dir, "private", PR_SIZE, 72, npages, path, sizeof(path));
	uint8_t *want = malloc(PR_SIZE); /* the region: the file, and its own writes */
	static const size_t written[] = { 3, 1000, 9000, 16383 };
	int fd = open_file(path, O_RDONLY), ret;
	char *p = NULL;

	cr_assert_not_null(want);
	memcpy(want, orig, PR_SIZE);
	ret = lazymap_map(lm, (void **)&p, PR_SIZE, PROT_READ | PROT_WRITE, LAZYMAP_PRIVATE, fd, 0);
	cr_assert_eq(ret, 0, "map: %s", strerror(-ret));
	for (size_t i = 0; i < sizeof(written) / sizeof(written[0]); i++) {
		memset(p + written[i] * ps, 0x5a, ps);
		memset(want + written[i] * ps, 0x5a, ps);
	}
	for (int pass = 0; pass < 2; pass++)
		for (size_t pg = 0; pg < npages; pg++)
			if (memcmp(p + pg * ps, want + pg * ps, ps))
				expect_mem("scan", p + pg * ps, want + pg * ps, ps);
	for (size_t i = 0; i < 20000; i++) {
		size_t pg = (size_t)(rng_next(&s) % npages);

		if (memcmp(p + pg * ps, want + pg * ps, 64))
			expect_mem("random read", p + pg * ps, want + pg * ps, 64);
	}
	st = stats_of(lm);
	cr_log_info("evictions %llu, refaults %llu, peak %llu KiB", (unsigned long long)st.evictions,
		    (unsigned long long)st.refaults, (unsigned long long)st.resident_peak >> 10);
	expect_peak(&st, PR_LIMIT, 3 * (512 << 10) + MiB);
	cr_assert_eq(st.bytes_written, 0, "a private region wrote its file");
	cr_assert_eq(lazymap_close(lm), 0);
	expect_file("the file", fd, orig, PR_SIZE);
	close(fd);
	free(want);
	free(orig);
}

/* ------------------------------------------------------------ racing writes */

/*
 * Two threads add to counters in their own pages of a shared mapping while
 * a third scans the whole 64 MiB file twice under a 4 MiB budget, so that
 * eviction runs flat out beside the writes: no increment is lost, in memory
 * or in the file.
 */
#define RW_SIZE     (64 * MiB)
#define RW_LIMIT    (4 * MiB)
#define RW_COUNTERS 64 /* pages per writer */

struct rw {
	char *base;
	size_t npages;
	unsigned id;
	uint64_t seed;
	atomic_bool *done;
	uint64_t counts[RW_COUNTERS];
	pthread_t th;
};

/* Counter k of writer id: the first word of a page, spread over the file. */
static uint64_t *rw_counter(char *base, unsigned id, size_t k)
{
	return (uint64_t *)(base + ((k * 2 + id) * 64 + 1) * pgsz());
}

static void *rw_writer(void *arg)
{
	struct rw *w = arg;
	uint64_t s = w->seed;

	while (!atomic_load(w->done)) {
		size_t k = (size_t)(rng_next(&s) % RW_COUNTERS);

		(*rw_counter(w->base, w->id, k))++;
		w->counts[k]++;
	}
	return NULL;
}

static void *rw_scanner(void *arg)
{
	struct rw *w = arg;
	volatile char sink = 0;

	for (int pass = 0; pass < 2; pass++)
		for (size_t pg = 0; pg < w->npages; pg++)
			sink += w->base[pg * pgsz() + 8];
	(void)sink;
	atomic_store(w->done, true);
	return NULL;
}

Test(budget, eviction_racing_writes_loses_no_increment, FIXTURE, .timeout = 120)
{
	size_t ps = pgsz(), npages = RW_SIZE / ps;
	uint64_t s = test_seed(), total = 0;
	struct lazymap *lm = open_budget(RW_LIMIT);
	struct lazymap_stats st;
	char path[PATH_MAX];
	uint8_t *want = calloc(1, RW_SIZE);
	struct rw w[3];
	atomic_bool done = false;
	int fd, ret;
	char *p = NULL;

	cr_assert_not_null(want);
	snprintf(path, sizeof(path), "%s/counters", fx.dir);
	fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	cr_assert_geq(fd, 0);
	ret = pattern_write(fd, 73, 0, RW_SIZE); /* data everywhere: every page is a read */
	cr_assert_eq(ret, 0);
	pattern_fill(want, RW_SIZE, 73, 0);
	ret = lazymap_map(lm, (void **)&p, RW_SIZE, PROT_READ | PROT_WRITE, LAZYMAP_SHARED, fd, 0);
	cr_assert_eq(ret, 0, "map: %s", strerror(-ret));
	for (unsigned id = 0; id < 2; id++)
		for (size_t k = 0; k < RW_COUNTERS; k++)
			*rw_counter(p, id, k) = 0;
	for (unsigned i = 0; i < 3; i++) {
		w[i] = (struct rw){ .base = p, .npages = npages, .id = i, .seed = rng_next(&s) | 1,
				    .done = &done };
		cr_assert_eq(pthread_create(&w[i].th, NULL, i < 2 ? rw_writer : rw_scanner, &w[i]), 0);
	}
	for (unsigned i = 0; i < 3; i++)
		pthread_join(w[i].th, NULL);
	for (unsigned id = 0; id < 2; id++)
		for (size_t k = 0; k < RW_COUNTERS; k++) {
			*rw_counter((char *)want, id, k) = w[id].counts[k];
			total += w[id].counts[k];
		}
	st = stats_of(lm);
	cr_log_info("%llu increments; evictions %llu, refaults %llu, wp faults %llu, peak %llu KiB",
		    (unsigned long long)total, (unsigned long long)st.evictions,
		    (unsigned long long)st.refaults, (unsigned long long)st.wp_faults,
		    (unsigned long long)st.resident_peak >> 10);
	cr_assert_gt(st.evictions, 2 * npages / 2, "the scans evicted too little to race anything");
	expect_mem("the counters in memory", p, want, RW_SIZE);
	cr_assert_eq(lazymap_close(lm), 0);
	expect_file("the counters in the file", fd, want, RW_SIZE);
	close(fd);
	free(want);
}

/* ------------------------------------------------------------ write-back fails */

/*
 * A budget whose dirty pages cannot be written back (a full tmpfs under a
 * sparse file): eviction frees nothing, the fills go on over the budget and
 * say so (budget_overruns), and nothing is lost: once there is room, a sync
 * writes every page.
 */
#define WF_PAGES 2048 /* 8 MiB written, a budget of 4 */

static int writeback_fails_body(struct verdict *v, void *arg)
{
	const char *mnt = arg;
	size_t ps = pgsz(), len = 4 * WF_PAGES * ps;
	char ballast[PATH_MAX + 16], file[PATH_MAX + 16], opts[64];
	struct lazymap_stats st;
	struct lazymap *lm;
	uint8_t *model = calloc(1, len), *have = malloc(len);
	char *p = NULL;
	int fd, bfd, ret;

	VCHECK(v, model && have, "malloc");
	if (unshare(CLONE_NEWNS) < 0)
		verdict_skip(v, "unshare(CLONE_NEWNS): %s", strerror(errno));
	if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
		verdict_skip(v, "making / private in the new mount namespace: %s", strerror(errno));
	snprintf(opts, sizeof(opts), "size=%u", 16u << 20);
	if (mount("lazymap-test", mnt, "tmpfs", 0, opts) < 0)
		verdict_skip(v, "mount -t tmpfs -o %s %s: %s", opts, mnt, strerror(errno));
	snprintf(ballast, sizeof(ballast), "%s/ballast", mnt);
	snprintf(file, sizeof(file), "%s/sparse", mnt);
	bfd = open(ballast, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	fd = open(file, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	VCHECK(v, bfd >= 0 && fd >= 0, "open on the tmpfs: %s", strerror(errno));
	VCHECK(v, pattern_write(bfd, 0x91, 0, 15u << 20) == 0, "the ballast: %s", strerror(errno));
	close(bfd);
	VCHECK(v, ftruncate(fd, (off_t)len) == 0, "ftruncate: %s", strerror(errno));

	ret = lazymap_open(&lm, &(struct lazymap_opts){ .resident_limit = 4 << 20 });
	VCHECK(v, ret == 0, "lazymap_open: %s", strerror(-ret));
	ret = lazymap_map(lm, (void **)&p, len, PROT_READ | PROT_WRITE, LAZYMAP_SHARED, fd, 0);
	VCHECK(v, ret == 0, "map: %s", strerror(-ret));
	for (size_t pg = 0; pg < 4 * WF_PAGES; pg += 4) {
		memset(p + pg * ps + 64, (int)(pg / 4 % 251) + 1, 8);
		memset(model + pg * ps + 64, (int)(pg / 4 % 251) + 1, 8);
	}
	VCHECK(v, memcmp(p, model, len) == 0, "the mapping lost bytes while write-back failed");
	VCHECK(v, lazymap_stats(lm, &st) == 0, "stats");
	VCHECK(v, st.budget_overruns > 0, "no fill went over a budget that could not be kept");
	VCHECK(v, st.resident_peak > (4u << 20), "resident peak %llu KiB: the budget held?",
	       (unsigned long long)st.resident_peak >> 10);
	VCHECK(v, unlink(ballast) == 0, "unlink: %s", strerror(errno));
	ret = lazymap_sync(lm, p, len);
	VCHECK(v, ret == 0, "sync with room made: %s", strerror(-ret));
	VCHECK(v, lazymap_close(lm) == 0, "close");
	VCHECK(v, pread(fd, have, len, 0) == (ssize_t)len, "pread: %s", strerror(errno));
	for (size_t i = 0; i < len; i++)
		VCHECK(v, have[i] == model[i], "the file's byte %#zx (page %zu) is %#x, want %#x", i,
		       i / ps, have[i], model[i]);
	close(fd);
	umount2(mnt, MNT_DETACH);
	free(model);
	free(have);
	return 0;
}

Test(budget, failing_writeback_goes_over_the_budget_and_loses_nothing, FIXTURE, .timeout = 120)
{
	char mnt[PATH_MAX];
	struct verdict *v = verdict_new();

	cr_assert_not_null(v);
	require_uffd(uffd_needs(NULL));
	snprintf(mnt, sizeof(mnt), "%s/mnt", fx.dir);
	cr_assert_eq(mkdir(mnt, 0700), 0, "mkdir %s: %s", mnt, strerror(errno));
	verdict_expect(v, verdict_fork(v, writeback_fails_body, mnt, 100), 0,
		       "write-back failing under a budget");
	verdict_free(v);
}

/* ------------------------------------------------------------ the count */

/* Filled pages, counted once what was asked of the handlers has landed. */
static uint64_t resident_pages(struct lazymap *lm)
{
	quiesce(lm);
	return stats_of(lm).resident_bytes / pgsz();
}

/*
 * Pages whose region goes leave the count at once, whether the library
 * unmaps them or the program does (its UNMAP event is applied before
 * lazymap_stats reads): ranges cut out of the middle of the runs fills
 * made, and the rest. (They were counted until eviction came upon them,
 * which under a budget not yet reached is never.)
 */
Test(budget, unmapped_pages_leave_the_count_at_once, FIXTURE, .timeout = 30)
{
	struct lazymap *lm = open_budget(16 * MiB);
	size_t ps = pgsz(), npages = 4 * MiB / ps;
	char *p = NULL;

	cr_assert_eq(lazymap_map(lm, (void **)&p, npages * ps, PROT_READ | PROT_WRITE,
				 LAZYMAP_ANON | LAZYMAP_PRIVATE, -1, 0), 0);
	for (size_t pg = 0; pg < npages; pg++)
		p[pg * ps] = 1;
	if (!resident_pages(lm))
		skip_test("anonymous pages are not counted here (no UFFDIO_MOVE)");
	cr_assert_eq(resident_pages(lm), npages);
	cr_assert_eq(lazymap_unmap(lm, p + 37 * ps, 300 * ps), 0);
	cr_assert_eq(resident_pages(lm), npages - 300, "lazymap_unmap of 300 pages: %llu counted",
		     (unsigned long long)resident_pages(lm));
	cr_assert_eq(munmap(p + 700 * ps, 50 * ps), 0);
	cr_assert_eq(resident_pages(lm), npages - 350, "the program's munmap of 50 more: %llu",
		     (unsigned long long)resident_pages(lm));
	cr_assert_eq(lazymap_unmap(lm, p, 37 * ps), 0);
	cr_assert_eq(lazymap_unmap(lm, p + 337 * ps, 363 * ps), 0);
	cr_assert_eq(munmap(p + 750 * ps, (npages - 750) * ps), 0);
	cr_assert_eq(resident_pages(lm), 0, "all gone: %llu pages still counted",
		     (unsigned long long)resident_pages(lm));
	cr_assert_eq(lazymap_close(lm), 0);
}

/*
 * Files mapped, read and unmapped again and again under a budget they
 * never reach: the pages of each file's cache leave the count once the
 * cache is gone (its last region unmapped), so neither the count nor the
 * evictor's queue grows with the cycles. (Nothing took them out before
 * eviction came upon them: 400 bytes a cycle, and a count that reached the
 * budget with nothing resident.)
 */
Test(budget, files_mapped_and_unmapped_for_ever_leave_the_count, FIXTURE, .timeout = 60)
{
	struct lazymap *lm = open_budget(1024 * MiB);
	size_t ps = pgsz(), size = 1 * MiB, cycles = 100;
	char path[PATH_MAX];
	int fd;

	snprintf(path, sizeof(path), "%s/cycle", fx.dir);
	fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	cr_assert_geq(fd, 0);
	cr_assert_eq(pattern_write(fd, 91, 0, size), 0);
	for (size_t i = 0; i < cycles; i++) {
		char *p = NULL;

		cr_assert_eq(lazymap_map(lm, (void **)&p, size, PROT_READ, LAZYMAP_PRIVATE, fd, 0), 0);
		/* page by page: one run of the queue each */
		cr_assert_eq(lazymap_advise(lm, p, size, LAZYMAP_ADV_RANDOM), 0);
		for (size_t off = 0; off < size; off += ps)
			cr_assert_eq((uint8_t)p[off], pattern_byte(91, off));
		cr_assert_eq(lazymap_unmap(lm, p, size), 0);
	}
	/* at most a queue's worth before it was last compacted, and one file */
	cr_assert_leq(resident_pages(lm), 2048 + size / ps, "%llu pages counted after %zu cycles "
		      "of a %zu-page file", (unsigned long long)resident_pages(lm), cycles, size / ps);
	close(fd);
	cr_assert_eq(lazymap_close(lm), 0);
}

/* Pages of [p, p + len) the kernel has mapped. */
/*
 * Pages a batch of the evictor has taken are in memory until they are gone
 * (still mapped, or in its staging area), and count until then: with the
 * evictor held before it moves them (as fork() holds it), every page the
 * region has is counted, and the peak is at least what was there. (They
 * left the count when taken: the peak missed up to a batch, 2 MiB, of
 * what was really there, and fills went on past the limit meanwhile.)
 */
Test(budget, pages_on_their_way_out_are_counted, FIXTURE, .timeout = 30)
{
	struct lazymap *lm = open_budget(16 * MiB);
	size_t ps = pgsz(), limit = 16 * MiB / ps, high = limit - limit / 16, most = 0;
	char *p = NULL;

	cr_assert_eq(lazymap_map(lm, (void **)&p, limit * ps, PROT_READ | PROT_WRITE,
				 LAZYMAP_ANON | LAZYMAP_PRIVATE, -1, 0), 0);
	p[0] = 1;
	if (!resident_pages(lm))
		skip_test("anonymous pages are not counted here (no UFFDIO_MOVE)");
	lzm_evict_fork_hold(lm);
	/* past the evictor's mark (it wakes and takes a batch), short of the
	 * limit (where a fill would wait for it) */
	for (size_t pg = 1; pg < limit - 8; pg++) {
		p[pg * ps] = 1;
		if (pg + 1 < high - 64)
			continue;

		size_t present = present_pages(p, limit * ps);
		uint64_t counted = resident_pages(lm);

		most = present > most ? present : most;
		cr_assert_geq(counted, present, "%zu pages written, %zu present, %llu counted",
			      pg + 1, present, (unsigned long long)counted);
	}
	struct lazymap_stats st = stats_of(lm);

	lzm_evict_fork_release(lm);
	cr_assert_geq(st.resident_peak, most * ps, "peak %llu KiB, %zu KiB were there",
		      (unsigned long long)st.resident_peak >> 10, most * ps >> 10);
	cr_assert_eq(lazymap_close(lm), 0);
}

/* ------------------------------------------------------------ MADV_FREE */

/*
 * What the header says of MADV_FREE, under a budget: a page keeps the
 * program's bytes until the kernel reclaims it (MADV_PAGEOUT makes it do
 * so now), and then the next touch produces it again: zeros, or the
 * callback's. (The header said the next touch always produced it again.)
 */
Test(budget, madv_free_keeps_the_bytes_until_the_kernel_reclaims_them, FIXTURE, .timeout = 30)
{
	struct lazymap *lm = open_budget(16 * MiB);
	size_t ps = pgsz(), len = 64 * ps;

	for (int fill = 0; fill < 2; fill++) {
		char *p = NULL, made = fill ? 0x5a : 0;

		if (fill)
			cr_assert_eq(lazymap_map_fill(lm, (void **)&p, len, PROT_READ | PROT_WRITE,
						      fill_5a, NULL), 0);
		else
			cr_assert_eq(lazymap_map(lm, (void **)&p, len, PROT_READ | PROT_WRITE,
						 LAZYMAP_ANON | LAZYMAP_PRIVATE, -1, 0), 0);
		memset(p, 7, len);
		cr_assert_eq(madvise(p, len, MADV_FREE), 0);
		for (size_t off = 0; off < len; off += ps)
			cr_assert_eq(p[off], 7, "%s page %zu lost its bytes at MADV_FREE",
				     fill ? "fill" : "anon", off / ps);
		cr_assert_eq(madvise(p, len, MADV_FREE), 0);
		if (madvise(p, len, MADV_PAGEOUT))
			skip_test("MADV_PAGEOUT: %s", strerror(errno));
		size_t remade = 0;

		for (size_t off = 0; off < len; off += ps) {
			cr_assert(p[off] == made || p[off] == 7, "%s page %zu: %d",
				  fill ? "fill" : "anon", off / ps, p[off]);
			remade += p[off] == made;
		}
		if (!remade)
			skip_test("the kernel reclaimed none of the pages MADV_PAGEOUT named");
	}
	cr_assert_eq(lazymap_close(lm), 0);
}

/* ------------------------------------------------------------ huge limits */

/*
 * A limit far beyond the machine's memory is a budget eviction never
 * reaches: it opens, and its regions work and are counted. (The table of
 * evicted pages' keys was sized by the limit: 16 TiB asked for 32 GiB of
 * it, and lazymap_open failed with -ENOMEM.)
 */
static void huge_limit_maps(size_t limit)
{
	struct lazymap *lm = open_budget(limit);
	size_t len = 4 * MiB, ps = pgsz();
	char *p = NULL;

	cr_assert_eq(lazymap_map(lm, (void **)&p, len, PROT_READ | PROT_WRITE,
				 LAZYMAP_ANON | LAZYMAP_PRIVATE, -1, 0), 0);
	for (size_t off = 0; off < len; off += ps)
		p[off] = (char)(off / ps) | 1;
	for (size_t off = 0; off < len; off += ps)
		cr_assert_eq(p[off], (char)((off / ps) | 1), "page %zu", off / ps);
	quiesce(lm);

	struct lazymap_stats st = stats_of(lm);

	cr_assert_eq(st.evictions, 0);
	if (st.resident_bytes) /* counted where the kernel has UFFDIO_MOVE */
		cr_assert_eq(st.resident_bytes, len);
	cr_assert_eq(lazymap_close(lm), 0);
}

Test(budget, a_16_tib_limit_opens_and_maps, FIXTURE, .timeout = 30)
{
	huge_limit_maps((size_t)16 << 40);
}

Test(budget, a_size_max_limit_opens_and_maps, FIXTURE, .timeout = 30)
{
	huge_limit_maps(SIZE_MAX);
}
