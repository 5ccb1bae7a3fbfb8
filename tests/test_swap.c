// SPDX-License-Identifier: MIT
/*
 * The swap of our own under a resident budget: anonymous and fill regions
 * many times larger than the budget keep every byte the program wrote (read
 * back from swap), pages never written are produced again (zeros, or the
 * callback), a forked child reads what the parent swapped, no write is lost
 * to an eviction racing it, and a swap that fills up means going over the
 * budget, said in the counters, never losing a byte.
 */
#include <criterion/criterion.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/resource.h>

static void fx_teardown(void);
#define skip_cleanup() fx_teardown()

#include "common.h"
#include "internal.h" /* a fault message replayed as a handler serves it */

#define MiB (1ull << 20)

static struct {
	char dir[PATH_MAX / 2];
	bool mounted;
} fx;

static void fx_setup(void)
{
	scratch_setup(fx.dir, sizeof(fx.dir), "swap");
}

static void fx_teardown(void)
{
	if (fx.mounted)
		umount2(fx.dir, MNT_DETACH);
	fx.mounted = false;
	scratch_drop(fx.dir);
}

#define FIXTURE .init = fx_setup, .fini = fx_teardown

static struct lazymap *open_budget(size_t limit, const char *swap_path)
{
	return open_or_skip(&(struct lazymap_opts){ .resident_limit = limit,
						     .swap_path = swap_path });
}

static struct lazymap_stats stats_of(struct lazymap *lm)
{
	struct lazymap_stats st;

	cr_assert_eq(lazymap_stats(lm, &st), 0);
	return st;
}

/* A word that says which page and which write it is. */
static uint64_t stamp(size_t page, uint32_t gen)
{
	return (uint64_t)page << 32 | gen | 0x8000000000000000ull;
}

/* 1 MiB of slack: the fills in flight when the limit was reached, and one
 * batch of the evictor (512 pages = 2 MiB) is the bound the issue sets. */
static void expect_peak(const struct lazymap_stats *st, size_t limit)
{
	cr_assert_gt(st->evictions, 0, "nothing was evicted under a budget of %zu MiB",
		     limit / MiB);
	cr_assert_leq(st->resident_peak, limit + 2 * MiB,
		      "resident peak %llu KiB, over the limit of %zu KiB by more than a batch",
		      (unsigned long long)st->resident_peak >> 10, limit >> 10);
}

/* ------------------------------------------------------------ anonymous */

#define AR_SIZE  (512 * MiB)
#define AR_LIMIT (32 * MiB)
#define AR_OPS   30000

struct ar {
	char *base;
	uint32_t *gen;   /* the last write to each page (0: never) */
	size_t npages;
	unsigned id;
};

static void *ar_writer(void *arg)
{
	struct ar *a = arg;
	unsigned seed = 7 + a->id;
	const size_t ps = pgsz();

	for (unsigned i = 0; i < AR_OPS; i++) {
		/* pages of this thread: even or odd */
		size_t p = ((size_t)rand_r(&seed) % (a->npages / 2)) * 2 + a->id;
		uint32_t g = a->gen[p] + 1;
		uint64_t *w = (uint64_t *)(a->base + p * ps);

		if (w[0] != (a->gen[p] ? stamp(p, a->gen[p]) : 0))
			return (void *)(uintptr_t)(p + 1); /* what it wrote is gone */
		w[0] = stamp(p, g);
		w[(ps / 8) - 1] = stamp(p, g);
		a->gen[p] = g;
	}
	return NULL;
}

static void expect_page(const char *base, size_t p, uint32_t gen)
{
	const size_t ps = pgsz();
	const uint64_t *w = (const uint64_t *)(base + p * ps);

	if (!gen) {
		for (size_t i = 0; i < ps / 8; i++)
			cr_assert_eq(w[i], 0, "page %zu, never written, has %#llx at word %zu", p,
				     (unsigned long long)w[i], i);
		return;
	}
	cr_assert_eq(w[0], stamp(p, gen), "page %zu: first word %#llx, wrote %#llx", p,
		     (unsigned long long)w[0], (unsigned long long)stamp(p, gen));
	cr_assert_eq(w[ps / 8 - 1], stamp(p, gen), "page %zu: last word wrong", p);
	for (size_t i = 1; i < ps / 8 - 1; i++)
		cr_assert_eq(w[i], 0, "page %zu: word %zu %#llx, never written", p, i,
			     (unsigned long long)w[i]);
}

Test(swap, anonymous_writes_under_a_budget_come_back, FIXTURE, .timeout = 240)
{
	struct lazymap *lm = open_budget(AR_LIMIT, fx.dir);
	size_t npages = AR_SIZE / pgsz();
	uint32_t *gen = calloc(npages, sizeof(*gen));
	struct ar a[2];
	pthread_t t[2];
	void *base = NULL;

	cr_assert_not_null(gen);
	cr_assert_eq(lazymap_map(lm, &base, AR_SIZE, PROT_READ | PROT_WRITE,
				 LAZYMAP_ANON | LAZYMAP_PRIVATE, -1, 0), 0);
	for (unsigned i = 0; i < 2; i++) {
		a[i] = (struct ar){ base, gen, npages, i };
		cr_assert_eq(pthread_create(&t[i], NULL, ar_writer, &a[i]), 0);
	}
	for (unsigned i = 0; i < 2; i++) {
		void *ret;

		pthread_join(t[i], &ret);
		cr_assert_null(ret, "thread %u: page %zu lost what it had written", i,
			       (size_t)(uintptr_t)ret - 1);
	}
	for (size_t p = 0; p < npages; p++)
		expect_page(base, p, gen[p]);

	struct lazymap_stats st = stats_of(lm);

	expect_peak(&st, AR_LIMIT);
	cr_assert_gt(st.swap_outs, 0, "nothing went to swap");
	cr_assert_gt(st.swap_ins, 0, "nothing came back from swap");
	cr_assert_eq(st.budget_overruns, 0);
	cr_log_info("anonymous: %llu faults, %llu evictions, %llu swap outs, %llu swap ins, "
		    "peak %llu KiB, swap %llu KiB, waited %llu ms, %llu wp faults",
		    (unsigned long long)st.faults, (unsigned long long)st.evictions,
		    (unsigned long long)st.swap_outs, (unsigned long long)st.swap_ins,
		    (unsigned long long)st.resident_peak >> 10,
		    (unsigned long long)st.swap_bytes >> 10,
		    (unsigned long long)st.evict_wait_ns / 1000000,
		    (unsigned long long)st.wp_faults);
	cr_assert_eq(lazymap_unmap(lm, base, AR_SIZE), 0);
	cr_assert_eq(stats_of(lm).swap_bytes, 0, "the region is gone, its slots are not");
	cr_assert_eq(lazymap_close(lm), 0);
	free(gen);
}

/* ------------------------------------------------------------ fill regions */

#define FR_SIZE  (64 * MiB)
#define FR_LIMIT (4 * MiB)

static _Atomic uint32_t *fr_calls; /* per page: how often the callback made it */

static int fr_fill(void *page, size_t len, uint64_t offset, void *arg)
{
	const size_t ps = pgsz();

	(void)arg;
	for (size_t off = 0; off < len; off += ps) {
		uint64_t *w = (uint64_t *)((char *)page + off);
		size_t p = (offset + off) / ps;

		for (size_t i = 0; i < ps / 8; i++)
			w[i] = p * 1000 + i;
		atomic_fetch_add(&fr_calls[p], 1);
	}
	return 0;
}

static void fr_check(const char *base, size_t p, bool written)
{
	const uint64_t *w = (const uint64_t *)(base + p * pgsz());

	cr_assert_eq(w[0], written ? ~(uint64_t)p : p * 1000, "page %zu: first word %#llx", p,
		     (unsigned long long)w[0]);
	cr_assert_eq(w[9], p * 1000 + 9, "page %zu: word 9 %#llx", p, (unsigned long long)w[9]);
}

Test(swap, fill_region_written_pages_come_from_swap_untouched_from_the_callback, FIXTURE,
     .timeout = 120)
{
	struct lazymap *lm = open_budget(FR_LIMIT, fx.dir);
	size_t npages = FR_SIZE / pgsz();
	char *base = NULL;
	uint32_t refilled = 0;

	fr_calls = calloc(npages, sizeof(*fr_calls));
	cr_assert_not_null(fr_calls);
	cr_assert_eq(lazymap_map_fill(lm, (void **)&base, FR_SIZE, PROT_READ | PROT_WRITE, fr_fill,
				      NULL), 0);
	/* every third page is written; then everything is read twice */
	for (size_t p = 0; p < npages; p++) {
		if (p % 3 == 0)
			*(uint64_t *)(base + p * pgsz()) = ~(uint64_t)p;
		else
			fr_check(base, p, false);
	}
	for (int pass = 0; pass < 2; pass++)
		for (size_t p = 0; p < npages; p++)
			fr_check(base, p, p % 3 == 0);

	struct lazymap_stats st = stats_of(lm);

	for (size_t p = 0; p < npages; p++) {
		if (p % 3 == 0)
			cr_assert_eq(atomic_load(&fr_calls[p]), 1,
				     "written page %zu was made by the callback %u times: its "
				     "write must come back from swap", p, atomic_load(&fr_calls[p]));
		else
			refilled += atomic_load(&fr_calls[p]) > 1;
	}
	expect_peak(&st, FR_LIMIT);
	cr_assert_gt(refilled, 0, "no untouched page was made again by the callback");
	cr_assert_geq(st.swap_outs, npages / 3 - FR_LIMIT / pgsz(),
		      "written pages that left should all have gone to swap");
	cr_assert_leq(st.swap_outs, npages / 3 * 3, "pages never written went to swap");
	cr_assert_eq(lazymap_close(lm), 0);
	free(fr_calls);
}

/* ------------------------------------------------------------ private file regions */

/*
 * A writable private map of a 64 MiB file under a 4 MiB budget: every
 * third page written, then all read twice. The written pages go to swap and
 * come back from it; the others come back from the file; the file never
 * changes, and the region's own pages stay within the budget.
 */
#define PF_SIZE  (64 * MiB)
#define PF_LIMIT (4 * MiB)

Test(swap, private_file_written_pages_come_from_swap_untouched_from_the_file, FIXTURE,
     .timeout = 120)
{
	struct lazymap *lm = open_budget(PF_LIMIT, fx.dir);
	size_t ps = pgsz(), npages = PF_SIZE / ps, most = 0;
	char path[PATH_MAX];
	uint8_t *orig = pattern_file(fx.dir, "private", PF_SIZE, 11, npages, path, sizeof(path));
	int fd = open_file(path, O_RDONLY), ret;
	char *base = NULL;

	ret = lazymap_map(lm, (void **)&base, PF_SIZE, PROT_READ | PROT_WRITE, LAZYMAP_PRIVATE, fd,
			  0);
	cr_assert_eq(ret, 0, "map: %s", strerror(-ret));
	for (size_t p = 0; p < npages; p++) {
		if (p % 3 == 0)
			*(uint64_t *)(base + p * ps) = stamp(p, 1);
		else if (memcmp(base + p * ps, orig + p * ps, ps))
			expect_mem("first read", base + p * ps, orig + p * ps, ps);
		if (p % 1024 == 0) {
			size_t now = present_pages(base, npages * ps);

			most = now > most ? now : most;
		}
	}
	for (int pass = 0; pass < 2; pass++)
		for (size_t p = 0; p < npages; p++) {
			const char *pg = base + p * ps;

			if (p % 3 == 0) {
				cr_assert_eq(*(const uint64_t *)pg, stamp(p, 1),
					     "pass %d: written page %zu lost its write", pass, p);
				cr_assert(!memcmp(pg + 8, orig + p * ps + 8, ps - 8),
					  "pass %d: written page %zu: the rest of it changed", pass,
					  p);
			} else if (memcmp(pg, orig + p * ps, ps)) {
				expect_mem("read again", pg, orig + p * ps, ps);
			}
		}

	struct lazymap_stats st = stats_of(lm);

	cr_log_info("swap_outs %llu, swap_ins %llu, evictions %llu, peak %llu KiB, most present %zu KiB",
		    (unsigned long long)st.swap_outs, (unsigned long long)st.swap_ins,
		    (unsigned long long)st.evictions, (unsigned long long)st.resident_peak >> 10,
		    most * ps >> 10);
	expect_peak(&st, PF_LIMIT);
	cr_assert_geq(st.swap_outs, npages / 3 - PF_LIMIT / ps,
		      "written pages that left should all have gone to swap");
	cr_assert_geq(st.swap_ins, npages / 3 - PF_LIMIT / ps,
		      "written pages should have come back from swap");
	cr_assert_leq(most * ps, PF_LIMIT + 2 * MiB,
		      "%zu KiB of the region present under a budget of %zu KiB", most * ps >> 10,
		      (size_t)PF_LIMIT >> 10);
	cr_assert_eq(st.bytes_written, 0, "a private region wrote its file");
	cr_assert_eq(lazymap_close(lm), 0);
	expect_file("the file", fd, orig, PF_SIZE);
	close(fd);
	free(orig);
}

/*
 * Under a budget a writable private map holds copies: a page the cache holds
 * is copied from it, so it shows what a shared region of the same file wrote
 * and has not written back, as the kernel's private map shows the page cache.
 * What the private map writes stays its own.
 */
Test(swap, a_private_copy_shows_what_a_shared_region_wrote, FIXTURE, .timeout = 60)
{
	struct lazymap *lm = open_budget(PF_LIMIT, fx.dir);
	size_t ps = pgsz(), npages = 64;
	char path[PATH_MAX];
	uint8_t *orig = pattern_file(fx.dir, "both", npages * ps, 12, npages, path, sizeof(path));
	int fd = open_file(path, O_RDWR), ret;
	char *sh = NULL, *pv = NULL;

	ret = lazymap_map(lm, (void **)&sh, npages * ps, PROT_READ | PROT_WRITE, LAZYMAP_SHARED, fd,
			  0);
	cr_assert_eq(ret, 0, "map shared: %s", strerror(-ret));
	ret = lazymap_map(lm, (void **)&pv, npages * ps, PROT_READ | PROT_WRITE, LAZYMAP_PRIVATE, fd,
			  0);
	cr_assert_eq(ret, 0, "map private: %s", strerror(-ret));
	memset(sh + 5 * ps, 0xa5, ps); /* in the cache, not in the file */
	memset(sh + 40 * ps, 0x3c, ps);
	cr_assert_eq((uint8_t)pv[5 * ps + 100], 0xa5, "the private map does not show the shared write");
	cr_assert_eq((uint8_t)pv[40 * ps], 0x3c, "the private map does not show the shared write");
	cr_assert(!memcmp(pv + 6 * ps, orig + 6 * ps, ps), "a page no region wrote is not the file's");
	pv[7 * ps] = 0x11;
	cr_assert_eq((uint8_t)sh[7 * ps], orig[7 * ps], "the private write reached the shared map");
	cr_assert_eq(lazymap_close(lm), 0);
	memset(orig + 5 * ps, 0xa5, ps);
	memset(orig + 40 * ps, 0x3c, ps);
	expect_file("the file", fd, orig, npages * ps);
	close(fd);
	free(orig);
}

/* ------------------------------------------------------------ racing writes */

#define RW_SIZE    (32 * MiB)
#define RW_LIMIT   (4 * MiB)
#define RW_WORDS   64 /* counters per page, one per writer slot */

struct rw {
	char *base;
	size_t npages;
	unsigned id;
	atomic_bool *stop;
	uint64_t done;
};

/* Each writer increments its own word in every page, round after round,
 * while the pages are evicted under it. */
static void *rw_writer(void *arg)
{
	struct rw *r = arg;
	const size_t ps = pgsz();

	for (uint64_t round = 0; round < 6; round++)
		for (size_t p = 0; p < r->npages; p++)
			((volatile uint64_t *)(r->base + p * ps))[r->id]++;
	r->done = 6;
	return NULL;
}

Test(swap, eviction_racing_writes_loses_no_increment, FIXTURE, .timeout = 120)
{
	struct lazymap *lm = open_budget(RW_LIMIT, fx.dir);
	size_t npages = RW_SIZE / pgsz();
	struct rw r[2];
	pthread_t t[2];
	char *base = NULL;

	cr_assert_eq(lazymap_map(lm, (void **)&base, RW_SIZE, PROT_READ | PROT_WRITE,
				 LAZYMAP_ANON | LAZYMAP_PRIVATE, -1, 0), 0);
	for (unsigned i = 0; i < 2; i++) {
		r[i] = (struct rw){ .base = base, .npages = npages, .id = i * 8 };
		cr_assert_eq(pthread_create(&t[i], NULL, rw_writer, &r[i]), 0);
	}
	for (unsigned i = 0; i < 2; i++)
		pthread_join(t[i], NULL);
	for (size_t p = 0; p < npages; p++)
		for (unsigned i = 0; i < 2; i++)
			cr_assert_eq(((uint64_t *)(base + p * pgsz()))[i * 8], 6,
				     "page %zu, counter %u: %llu of 6 increments", p, i,
				     (unsigned long long)((uint64_t *)(base + p * pgsz()))[i * 8]);
	struct lazymap_stats st = stats_of(lm);

	expect_peak(&st, RW_LIMIT);
	cr_assert_gt(st.swap_outs, 0);
	cr_assert_eq(lazymap_close(lm), 0);
}

/* ------------------------------------------------------------ fork */

#define FK_SIZE  (32 * MiB)
#define FK_LIMIT (4 * MiB)

/* What the child finds wrong: 0 none, else the first bad page + 1. */
static size_t fk_check(const char *base, size_t npages, uint32_t gen)
{
	for (size_t p = 0; p < npages; p++) {
		const uint64_t *w = (const uint64_t *)(base + p * pgsz());

		if (w[0] != stamp(p, gen) || w[pgsz() / 8 - 1] != stamp(p, gen) || w[1])
			return p + 1;
	}
	return 0;
}

/* fd -1: an anonymous region; else a private map of fd's file (of zeros) */
static void fork_body(int fd)
{
	struct lazymap *lm = open_budget(FK_LIMIT, fx.dir);
	size_t npages = FK_SIZE / pgsz(), bad;
	char *base = NULL;
	int status;
	pid_t pid;

	if (!stats_of(lm).fork_followed) {
		lazymap_close(lm);
		skip_test("forked children are not served here (EVENT_FORK needs CAP_SYS_PTRACE)");
	}
	cr_assert_eq(lazymap_map(lm, (void **)&base, FK_SIZE, PROT_READ | PROT_WRITE,
				 fd < 0 ? LAZYMAP_ANON | LAZYMAP_PRIVATE : LAZYMAP_PRIVATE, fd, 0),
		     0);
	for (size_t p = 0; p < npages; p++) {
		uint64_t *w = (uint64_t *)(base + p * pgsz());

		w[0] = w[pgsz() / 8 - 1] = stamp(p, 1);
	}
	cr_assert_gt(stats_of(lm).swap_outs, 0, "nothing was swapped before the fork");
	pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		/* the parent's pages, in swap or not; then the child's own writes */
		bad = fk_check(base, npages, 1);
		if (bad)
			_exit(1);
		for (size_t p = 0; p < npages; p++) {
			uint64_t *w = (uint64_t *)(base + p * pgsz());

			w[0] = w[pgsz() / 8 - 1] = stamp(p, 2);
		}
		_exit(fk_check(base, npages, 2) ? 2 : 0);
	}
	/* the parent goes on evicting while the child reads */
	bad = fk_check(base, npages, 1);
	cr_assert_eq(waitpid(pid, &status, 0), pid);
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0,
		  "the child found a wrong page (status %#x: 1 the parent's bytes, 2 its own)",
		  status);
	cr_assert_eq(bad, 0, "page %zu of the parent is wrong after the fork", bad - 1);
	cr_assert_eq(fk_check(base, npages, 1), 0, "the child's writes reached the parent");
	cr_assert_eq(lazymap_close(lm), 0);
}

Test(swap, a_forked_child_reads_what_the_parent_swapped, FIXTURE, .timeout = 120)
{
	fork_body(-1);
}

Test(swap, a_forked_child_reads_what_a_private_file_region_swapped, FIXTURE, .timeout = 120)
{
	char path[PATH_MAX];
	int fd;

	snprintf(path, sizeof(path), "%s/zeros", fx.dir);
	fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	cr_assert_geq(fd, 0);
	cr_assert_eq(ftruncate(fd, FK_SIZE), 0);
	fork_body(fd);
	close(fd);
}

/* ------------------------------------------------------------ swap failure */

#define SF_SIZE  (32 * MiB)
#define SF_LIMIT (4 * MiB)

/* Write every page of an anonymous region twice the swap's room, read it back. */
static void swap_full_body(const char *swap_dir, size_t room)
{
	struct lazymap *lm = open_budget(SF_LIMIT, swap_dir);
	size_t npages = SF_SIZE / pgsz();
	char *base = NULL;

	cr_assert_eq(lazymap_map(lm, (void **)&base, SF_SIZE, PROT_READ | PROT_WRITE,
				 LAZYMAP_ANON | LAZYMAP_PRIVATE, -1, 0), 0);
	for (size_t p = 0; p < npages; p++) {
		uint64_t *w = (uint64_t *)(base + p * pgsz());

		w[0] = w[pgsz() / 8 - 1] = stamp(p, 1);
	}
	for (size_t p = 0; p < npages; p++)
		expect_page(base, p, 1);

	struct lazymap_stats st = stats_of(lm);

	cr_assert_gt(st.swap_outs, 0, "the swap's room was not used");
	cr_assert_gt(st.budget_overruns, 0, "a budget that could not be kept was not said to be");
	cr_assert_gt(st.resident_bytes, SF_LIMIT, "pages that could not go to swap were dropped?");
	cr_assert_leq(st.swap_bytes, room);
	cr_log_info("full swap: %llu swap outs, %llu overruns, resident %llu KiB",
		    (unsigned long long)st.swap_outs, (unsigned long long)st.budget_overruns,
		    (unsigned long long)st.resident_bytes >> 10);
	cr_assert_eq(lazymap_close(lm), 0);
}

Test(swap, a_full_swap_goes_over_the_budget_and_loses_nothing, FIXTURE, .timeout = 120)
{
	/* a swap directory with room for 4 MiB */
	if (mount("lazymap-swap", fx.dir, "tmpfs", 0, "size=4m"))
		skip_test("cannot mount a small tmpfs here: %s", strerror(errno));
	fx.mounted = true;
	swap_full_body(fx.dir, 4 * MiB);
}

Test(swap, a_swap_past_rlimit_fsize_goes_over_the_budget_and_loses_nothing, FIXTURE,
     .timeout = 120)
{
	struct rlimit old, lim = { 2 * MiB, 2 * MiB };

	cr_assert_eq(getrlimit(RLIMIT_FSIZE, &old), 0);
	lim.rlim_max = old.rlim_max;
	cr_assert_eq(setrlimit(RLIMIT_FSIZE, &lim), 0);
	swap_full_body(fx.dir, 2 * MiB); /* a write past the limit would be SIGXFSZ */
	setrlimit(RLIMIT_FSIZE, &old);
}

Test(swap, a_swap_directory_that_cannot_take_the_file_fails_open, FIXTURE)
{
	struct lazymap_opts o = { .resident_limit = 8 * MiB, .swap_path = "/nonexistent/swap" };
	char file[PATH_MAX];
	struct lazymap *lm = open_budget(0, NULL); /* skips where there is no userfaultfd */
	int fd;

	cr_assert_eq(lazymap_close(lm), 0);
	lm = NULL;
	cr_assert_eq(lazymap_open(&lm, &o), -ENOENT);
	cr_assert_null(lm);
	snprintf(file, sizeof(file), "%s/plain", fx.dir);
	fd = open(file, O_CREAT | O_RDWR, 0600);
	cr_assert_geq(fd, 0);
	close(fd);
	o.swap_path = file;
	cr_assert_eq(lazymap_open(&lm, &o), -ENOTDIR);
	/* without a budget the swap is never made: the path is not looked at */
	lm = open_budget(0, "/nonexistent/swap");
	cr_assert_eq(lazymap_close(lm), 0);
}

/* ------------------------------------------------------------ advice */

#define AD_HOT    (2 * MiB)
#define AD_STREAM (64 * MiB)
#define AD_LIMIT  (8 * MiB)

static int ad_fill(void *page, size_t len, uint64_t offset, void *arg)
{
	(void)offset;
	(void)arg;
	memset(page, 0x5a, len);
	return 0;
}

/* Hot written pages, then a stream read once through a fill region: how
 * many hot pages had to come back from swap afterwards. */
static uint64_t hot_pages_swapped_in(int stream_advice)
{
	struct lazymap *lm = open_budget(AD_LIMIT, fx.dir);
	char *hot = NULL, *stream = NULL;
	uint64_t before;

	cr_assert_eq(lazymap_map(lm, (void **)&hot, AD_HOT, PROT_READ | PROT_WRITE,
				 LAZYMAP_ANON | LAZYMAP_PRIVATE, -1, 0), 0);
	cr_assert_eq(lazymap_map_fill(lm, (void **)&stream, AD_STREAM, PROT_READ | PROT_WRITE,
				      ad_fill, NULL), 0);
	cr_assert_eq(lazymap_advise(lm, stream, AD_STREAM, stream_advice), 0);
	for (size_t p = 0; p < AD_HOT / pgsz(); p++)
		*(uint64_t *)(hot + p * pgsz()) = stamp(p, 1);
	for (size_t off = 0; off < AD_STREAM; off += pgsz())
		cr_assert_eq(((volatile char *)stream)[off], 0x5a);
	before = stats_of(lm).swap_ins;
	for (size_t p = 0; p < AD_HOT / pgsz(); p++)
		cr_assert_eq(*(uint64_t *)(hot + p * pgsz()), stamp(p, 1));
	before = stats_of(lm).swap_ins - before;
	cr_assert_eq(lazymap_close(lm), 0);
	return before;
}

Test(swap, a_sequential_stream_is_evicted_before_pages_in_use, FIXTURE, .timeout = 120)
{
	uint64_t normal = hot_pages_swapped_in(LAZYMAP_ADV_NORMAL);
	uint64_t seq = hot_pages_swapped_in(LAZYMAP_ADV_SEQUENTIAL);

	cr_log_info("hot pages read back from swap after the stream: %llu with NORMAL advice, "
		    "%llu with SEQUENTIAL", (unsigned long long)normal, (unsigned long long)seq);
	cr_assert_gt(normal, 0, "a stream 8x the budget did not push the hot pages out: no test");
	cr_assert_eq(seq, 0, "a SEQUENTIAL stream pushed %llu hot pages out",
		     (unsigned long long)seq);
}

/* ------------------------------------------------------------ the program's mremap */

#define MV_SIZE  (8 * MiB)
#define MV_LIMIT (4 * MiB)

/*
 * Random writes to a fill region under a budget, then the program moves it
 * (mremap) while its pages are in swap or on their way: every written page
 * reads its last write at the new address, every other page the callback's
 * bytes. (A page being evicted while the program moved it was once taken
 * for gone, its write forgotten, and made again by the callback.)
 */
Test(swap, written_pages_survive_the_programs_mremap, FIXTURE, .timeout = 120)
{
	struct lazymap *lm = open_budget(MV_LIMIT, fx.dir);
	size_t npages = MV_SIZE / pgsz();
	uint64_t *model = calloc(npages, sizeof(*model)), seed = 42;
	char *base = NULL;

	fr_calls = calloc(npages, sizeof(*fr_calls));
	cr_assert(model && fr_calls);
	cr_assert_eq(lazymap_map_fill(lm, (void **)&base, MV_SIZE, PROT_READ | PROT_WRITE, fr_fill,
				      NULL), 0);
	for (int round = 0; round < 20; round++) {
		void *to = mmap(NULL, MV_SIZE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

		for (int i = 0; i < 300; i++) {
			size_t p;

			seed = seed * 6364136223846793005ull + 1442695040888963407ull;
			p = (size_t)(seed >> 33) % npages;
			model[p] = seed | 1;
			*(uint64_t *)(base + p * pgsz()) = model[p];
		}
		cr_assert_neq(to, MAP_FAILED);
		base = mremap(base, MV_SIZE, MV_SIZE, MREMAP_MAYMOVE | MREMAP_FIXED, to);
		cr_assert_neq(base, MAP_FAILED);
		for (size_t p = 0; p < npages; p++) {
			uint64_t got = *(uint64_t *)(base + p * pgsz());

			cr_assert_eq(got, model[p] ? model[p] : p * 1000,
				     "round %d, page %zu: %#llx, %s", round, p,
				     (unsigned long long)got,
				     got == p * 1000 ? "the callback's: the write is lost" : "wrong");
		}
	}
	cr_assert_gt(stats_of(lm).swap_outs, 0);
	cr_assert_eq(lazymap_close(lm), 0);
	free(model);
	free(fr_calls);
}

/* ------------------------------------------------------------ read, then write */

#define RMW_SIZE  (64 * MiB)
#define RMW_LIMIT (4 * MiB)

/*
 * Each page read, then written at once: the read maps the zero page (not
 * counted), the write makes it a page of the program's own, which must be
 * counted. (It was write-protected only after its toucher had been woken,
 * and a write at once escaped the count: memory grew past the budget.)
 */
Test(swap, a_write_right_after_a_read_is_counted, FIXTURE, .timeout = 120)
{
	struct lazymap *lm = open_budget(RMW_LIMIT, fx.dir);
	size_t npages = RMW_SIZE / pgsz(), present;
	volatile char *base = NULL;
	char sum = 0;

	cr_assert_eq(lazymap_map(lm, (void **)&base, RMW_SIZE, PROT_READ | PROT_WRITE,
				 LAZYMAP_ANON | LAZYMAP_PRIVATE, -1, 0), 0);
	for (size_t p = 0; p < npages; p++) {
		sum += base[p * pgsz()];
		base[p * pgsz()] = 1;
	}
	cr_assert_eq(sum, 0);
	present = present_pages((const char *)base, RMW_SIZE);

	struct lazymap_stats st = stats_of(lm);

	cr_assert_geq(st.wp_faults, npages, "%llu of %zu writes to zero pages were seen",
		      (unsigned long long)st.wp_faults, npages);
	cr_assert_leq(present * pgsz(), RMW_LIMIT + 2 * MiB,
		      "%zu KiB present under a budget of %llu KiB (counted: %llu KiB)",
		      present * pgsz() >> 10, RMW_LIMIT >> 10,
		      (unsigned long long)st.resident_bytes >> 10);
	for (size_t p = 0; p < npages; p++)
		cr_assert_eq(base[p * pgsz()], 1, "page %zu lost its write", p);
	cr_assert_eq(lazymap_close(lm), 0);
}

/*
 * Every page read first (zero pages, not counted), then every page written:
 * each write makes a page, and waits for eviction as a fill does. (The
 * writes did not wait: 32 MiB read then written under 4 MiB peaked at
 * 9.5-16.7 MiB.)
 */
Test(swap, writes_to_zero_pages_wait_for_the_budget, FIXTURE, .timeout = 120)
{
	struct lazymap *lm = open_or_skip(&(struct lazymap_opts){
		.resident_limit = RMW_LIMIT, .swap_path = fx.dir, .handler_threads = 2 });
	size_t npages = 32 * MiB / pgsz();
	volatile char *base = NULL;
	char sum = 0;

	cr_assert_eq(lazymap_map(lm, (void **)&base, npages * pgsz(), PROT_READ | PROT_WRITE,
				 LAZYMAP_ANON | LAZYMAP_PRIVATE, -1, 0), 0);
	for (size_t p = 0; p < npages; p++)
		sum += base[p * pgsz()];
	for (size_t p = 0; p < npages; p++)
		base[p * pgsz() + 8] = (char)p;
	for (size_t p = 0; p < npages; p++)
		cr_assert_eq(base[p * pgsz() + 8], (char)p, "page %zu lost its write", p);
	cr_assert_eq(sum, 0);

	struct lazymap_stats st = stats_of(lm);

	cr_log_info("peak %llu KiB, overruns %llu", (unsigned long long)st.resident_peak >> 10,
		    (unsigned long long)st.budget_overruns);
	expect_peak(&st, RMW_LIMIT);
	cr_assert_eq(lazymap_close(lm), 0);
}

/*
 * Written pages, some in swap and some in a batch of eviction, then the
 * region unmapped: lazymap_stats says 0 at once, each time (it said 2 MiB,
 * a batch in flight, in most rounds).
 */
Test(swap, an_unmapped_region_leaves_the_counts_at_once, FIXTURE, .timeout = 120)
{
	struct lazymap *lm = open_budget(8 * MiB, fx.dir);
	size_t len = 32 * MiB;

	for (int round = 0; round < 6; round++) {
		char *p = NULL;

		cr_assert_eq(lazymap_map(lm, (void **)&p, len, PROT_READ | PROT_WRITE,
					 LAZYMAP_ANON | LAZYMAP_PRIVATE, -1, 0), 0);
		for (size_t off = 0; off < len; off += pgsz())
			p[off] = 1;
		if (round & 1)
			cr_assert_eq(munmap(p, len), 0);
		else
			cr_assert_eq(lazymap_unmap(lm, p, len), 0);

		struct lazymap_stats st = stats_of(lm);

		cr_assert_eq(st.resident_bytes, 0, "round %d: %llu KiB still counted after %s",
			     round, (unsigned long long)st.resident_bytes >> 10,
			     round & 1 ? "munmap" : "lazymap_unmap");
		cr_assert_eq(st.swap_bytes, 0, "round %d: %llu KiB still in swap", round,
			     (unsigned long long)st.swap_bytes >> 10);
	}
	cr_assert_eq(lazymap_close(lm), 0);
}

/* ------------------------------------------------------------ the program's drop racing eviction */

#define DE_SIZE  (32 * MiB)
#define DE_LIMIT (4 * MiB)
#define DE_READS 10000
#define DE_LAG   400 /* reads ago: a page near the head of the eviction queue */

/*
 * Pages read back from swap and not written since keep their slot (it has
 * their bytes). Random reads bring such pages in; every fourth read, the page
 * read DE_LAG reads before, which the evictor is about to take, is dropped
 * (MADV_DONTNEED) and written at once. Every page must read its last write.
 * (When the program's drop took a page the evictor had claimed, before the
 * evictor moved it out, the page was kept and so was its slot: its next fill
 * was a writable zero page, written with no write-protect fault, and its
 * next eviction took the old slot for its bytes. It read an older write.)
 */
Test(swap, a_page_dropped_while_being_evicted_reads_its_next_write, FIXTURE, .timeout = 120)
{
	struct lazymap *lm = open_budget(DE_LIMIT, fx.dir);
	const size_t ps = pgsz(), npages = DE_SIZE / ps;
	uint32_t *gen = calloc(npages, sizeof(*gen));
	uint64_t seed = test_seed(), seed0 = seed, got = 0;
	size_t ring[DE_LAG + 1], wrong = 0, first = 0;
	char *base = NULL;

	cr_assert_not_null(gen);
	cr_assert_eq(lazymap_map(lm, (void **)&base, DE_SIZE, PROT_READ | PROT_WRITE,
				 LAZYMAP_ANON | LAZYMAP_PRIVATE, -1, 0), 0);
	for (size_t p = 0; p < npages; p++) {
		gen[p] = 1;
		*(uint64_t *)(base + p * ps) = stamp(p, 1);
	}
	for (size_t i = 0; i < DE_READS; i++) {
		size_t p = rng_next(&seed) % npages, q;

		(void)*(volatile uint64_t *)(base + p * ps);
		ring[i % (DE_LAG + 1)] = p;
		if (i < DE_LAG || i % 4)
			continue;
		q = ring[(i - DE_LAG) % (DE_LAG + 1)];
		cr_assert_eq(madvise(base + q * ps, ps, MADV_DONTNEED), 0);
		*(uint64_t *)(base + q * ps) = stamp(q, ++gen[q]);
	}
	for (size_t p = 0; p < npages; p++) {
		uint64_t w = *(uint64_t *)(base + p * ps);

		if (w != stamp(p, gen[p]) && !wrong++) {
			first = p;
			got = w;
		}
	}
	cr_assert_eq(wrong, 0, "%zu pages lost their last write; page %zu has %#llx, wrote %#llx "
		     "(LAZYMAP_SEED=%#llx)", wrong, first, (unsigned long long)got,
		     (unsigned long long)stamp(first, gen[first]), (unsigned long long)seed0);
	cr_assert_gt(stats_of(lm).swap_ins, 0);
	cr_assert_eq(lazymap_close(lm), 0);
	free(gen);
}

/* ------------------------------------------------------------ a write fault older than its page */

#define WF_SIZE  (16 * MiB)
#define WF_LIMIT (4 * MiB)

/*
 * A write-protect fault's message can be older than its page's state: the
 * write faulted on a page read back from swap (write-protected, its slot
 * kept), and before a handler read the message the evictor took the page out
 * again, unwritten, and let it go to swap, the slot holding its only copy.
 * The race is replayed here: such a message is served, as a handler serves
 * it, for a page in swap. The slot must stay and the page read its bytes.
 * (The slot was let go: the write's retry faulted, read the page from no
 * slot, past the end of the swap file, and got SIGBUS.)
 */
Test(swap, a_write_fault_served_after_its_page_went_to_swap_keeps_the_slot, FIXTURE,
     .timeout = 60)
{
	struct lazymap *lm = open_budget(WF_LIMIT, fx.dir);
	const size_t ps = pgsz(), npages = WF_SIZE / ps;
	struct source *src = NULL;
	uint32_t slot1 = 0;
	uint64_t idx = 0;
	char *base = NULL;
	size_t p;

	cr_assert_eq(lazymap_map(lm, (void **)&base, WF_SIZE, PROT_READ | PROT_WRITE,
				 LAZYMAP_ANON | LAZYMAP_PRIVATE, -1, 0), 0);
	for (p = 0; p < npages; p++)
		*(uint64_t *)(base + p * ps) = stamp(p, 1);
	quiesce(lm);
	/* a page in swap, as the evictor left it */
	pthread_rwlock_rdlock(&lm->mm.lock);
	for (p = 0; p < npages && !slot1; p++) {
		struct vma *v = lzm_vma_lookup(&lm->mm.tree, (uintptr_t)base + p * ps);

		cr_assert_not_null(v);
		src = v->src;
		idx = v->pgoff + (((uintptr_t)base + p * ps - v->start) >> lzm_page_shift);
		if (atomic_load(&src->state[idx]) == PAGE_SWAPPED)
			slot1 = source_slot(src, idx);
	}
	pthread_rwlock_unlock(&lm->mm.lock);
	cr_assert_neq(slot1, 0, "no page of %zu MiB went to swap under %zu MiB",
		      (size_t)(WF_SIZE / MiB), (size_t)(WF_LIMIT / MiB));
	p--;
	lzm_fault_handle(&lm->handlers[0], &lm->mm, (uintptr_t)base + p * ps,
			 UFFD_PAGEFAULT_FLAG_WP | UFFD_PAGEFAULT_FLAG_WRITE, 0);
	cr_assert_eq(source_slot(src, idx), slot1,
		     "page %zu, in swap, lost its slot to a write fault older than its eviction", p);
	cr_assert_eq(*(uint64_t *)(base + p * ps), stamp(p, 1), "page %zu did not come back", p);
	*(uint64_t *)(base + p * ps) = stamp(p, 2);
	for (size_t q = 0; q < npages; q++)
		cr_assert_eq(*(uint64_t *)(base + q * ps), stamp(q, q == p ? 2 : 1),
			     "page %zu lost its write", q);
	cr_assert_eq(lazymap_close(lm), 0);
}
