// SPDX-License-Identifier: MIT
/*
 * Faults: what a touching thread sees through the handler threads. Zero and
 * fill-callback regions, many threads at once, fault-around, prefetch, the
 * install modes, fill errors as SIGBUS, and close while threads fault.
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/wait.h>

#include "common.h"

#define REGION (256ul << 20)

/* A fill pattern nobody else writes: page offset mixed with a per-test key. */
static inline uint64_t pattern(uint64_t off, uint64_t key)
{
	return (off * 0x9E3779B97F4A7C15ULL) ^ key;
}

struct fill_ctx {
	uint64_t key;
	size_t npages;
	_Atomic uint32_t *calls;     /* per page: how often fill produced it */
	_Atomic uint64_t fail_from, fail_to; /* pages in [from, to) fail with -EIO */
};

static int fill_pattern(void *page, size_t len, uint64_t offset, void *arg)
{
	struct fill_ctx *c = arg;
	size_t ps = pgsz();

	for (size_t p = 0; p < len; p += ps) {
		uint64_t pg = (offset + p) / ps;

		if (pg >= c->fail_from && pg < c->fail_to)
			return -EIO;
	}
	for (size_t p = 0; p < len; p += ps) {
		uint64_t *w = (uint64_t *)((char *)page + p);

		for (size_t i = 0; i < ps / 8; i++)
			w[i] = pattern(offset + p + i * 8, c->key);
		atomic_fetch_add(&c->calls[(offset + p) / ps], 1);
	}
	return 0;
}

static struct fill_ctx *fill_ctx_new(size_t npages, uint64_t key)
{
	struct fill_ctx *c = calloc(1, sizeof(*c));

	c->key = key;
	c->npages = npages;
	c->calls = calloc(npages, sizeof(*c->calls));
	return c;
}

static void fill_ctx_free(struct fill_ctx *c)
{
	free(c->calls);
	free(c);
}

/* ---------------------------------------------------------------- threads */

struct toucher {
	pthread_t thread;
	char *base;
	size_t npages;
	unsigned id, nthreads;
	uint64_t seed;
	size_t touches;
	struct fill_ctx *fill; /* NULL: the region is a zero region */
	uint8_t *written;      /* per page: 1 once somebody wrote it (shared) */
	size_t bad;            /* pages that read wrong */
};

/*
 * Every thread touches the same random pages, each in its own order, so that
 * many faults on one page race. A third of the touches write the page's
 * number into its last word (the same value whoever writes it).
 */
static void *toucher_main(void *arg)
{
	struct toucher *t = arg;
	size_t ps = pgsz();
	uint64_t s = t->seed;
	size_t *order = malloc(t->touches * sizeof(*order));

	for (size_t i = 0; i < t->touches; i++)
		order[i] = rng_next(&s) % t->npages;
	/* each thread walks the shared list from its own starting point */
	for (size_t k = 0; k < t->touches; k++) {
		size_t i = (k + t->id * (t->touches / t->nthreads)) % t->touches;
		size_t pg = order[i];
		/* Threads share pages: relaxed atomics keep the test race-free
		 * (and ThreadSanitizer quiet) without ordering anything. */
		uint64_t *w = (uint64_t *)(t->base + pg * ps);
		uint64_t last = __atomic_load_n(&w[ps / 8 - 1], __ATOMIC_RELAXED);
		uint64_t first = __atomic_load_n(&w[0], __ATOMIC_RELAXED);

		if (t->fill) {
			if (first != pattern(pg * ps, t->fill->key))
				t->bad++;
		} else if (first != 0) {
			t->bad++;
		}
		if (last != (t->fill ? pattern(pg * ps + ps - 8, t->fill->key) : 0) && last != pg + 1)
			t->bad++;
		if (i % 3 == 0) {
			__atomic_store_n(&w[ps / 8 - 1], pg + 1, __ATOMIC_RELAXED);
			__atomic_store_n(&t->written[pg], 1, __ATOMIC_RELAXED);
		}
	}
	free(order);
	return NULL;
}

static void run_touchers(struct lazymap *lm, char *base, size_t npages, unsigned nthreads,
			 size_t touches, struct fill_ctx *fill)
{
	struct toucher *t = calloc(nthreads, sizeof(*t));
	uint8_t *written = calloc(npages, 1);
	uint8_t *touched = calloc(npages, 1);
	size_t ps = pgsz(), distinct = 0, blocks = 0, block = 16 * ps;
	uint8_t *block_touched = calloc(npages / 16 + 2, 1);
	struct lazymap_stats st;
	uint64_t s = test_seed() ^ nthreads;

	for (unsigned i = 0; i < nthreads; i++) {
		t[i] = (struct toucher){ .base = base, .npages = npages, .id = i, .nthreads = nthreads,
					 .seed = s, .touches = touches, .fill = fill,
					 .written = written };
		cr_assert_eq(pthread_create(&t[i].thread, NULL, toucher_main, &t[i]), 0);
	}
	for (unsigned i = 0; i < nthreads; i++) {
		pthread_join(t[i].thread, NULL);
		cr_expect_eq(t[i].bad, 0, "thread %u read %zu wrong pages", i, t[i].bad);
	}
	for (size_t i = 0; i < touches; i++) {
		size_t pg = rng_next(&s) % npages;

		size_t b = (uintptr_t)(base + pg * ps) / block - (uintptr_t)base / block;

		distinct += !touched[pg];
		touched[pg] = 1;
		blocks += !block_touched[b];
		block_touched[b] = 1;
	}
	/* What stuck: written pages hold their mark, the rest their source data. */
	for (size_t pg = 0; pg < npages; pg++) {
		if (!touched[pg])
			continue;
		uint64_t *w = (uint64_t *)(base + pg * ps);
		uint64_t want = written[pg] ? pg + 1 :
			fill ? pattern(pg * ps + ps - 8, fill->key) : 0;

		cr_assert_eq(w[ps / 8 - 1], want, "page %zu: last word %#lx, want %#lx", pg,
			     (unsigned long)w[ps / 8 - 1], (unsigned long)want);
		if (fill)
			cr_assert_eq(atomic_load(&fill->calls[pg]), 1,
				     "page %zu produced %u times", pg, atomic_load(&fill->calls[pg]));
	}
	if (fill) {
		for (size_t pg = 0; pg < npages; pg++)
			cr_assert_leq(atomic_load(&fill->calls[pg]), 1, "page %zu produced twice", pg);
	}
	cr_assert_eq(lazymap_stats(lm, &st), 0);
	/*
	 * Every page came through the handlers: a fault for each 64 KiB block
	 * touched, at least, since random touches defeat stream fault-around.
	 */
	cr_assert_geq(st.pages_filled, distinct, "filled %lu < %zu touched",
		      (unsigned long)st.pages_filled, distinct);
	cr_assert_geq(st.faults, blocks / 2, "only %lu faults for %zu pages in %zu blocks",
		      (unsigned long)st.faults, distinct, blocks);
	if (fill)
		cr_assert_geq(st.fill_calls, blocks / 2);
	free(block_touched);
	free(touched);
	free(written);
	free(t);
}

static void concurrent(unsigned nthreads, unsigned handlers, bool use_fill, unsigned install)
{
	struct lazymap_opts o = { .handler_threads = handlers, .install = install };
	size_t npages = REGION / pgsz();
	struct fill_ctx *fill = use_fill ? fill_ctx_new(npages, 0xfeedull * nthreads) : NULL;
	struct lazymap *lm;
	unsigned char vec;
	void *p;

	lm = open_or_skip(&o);
	if (use_fill)
		cr_assert_eq(lazymap_map_fill(lm, &p, REGION, PROT_READ | PROT_WRITE, fill_pattern, fill), 0);
	else
		cr_assert_eq(lazymap_map(lm, &p, REGION, PROT_READ | PROT_WRITE,
					 LAZYMAP_PRIVATE | LAZYMAP_ANON, -1, 0), 0);
	/* Nothing populated up front. */
	cr_assert_eq(mincore(p, pgsz(), &vec), 0);
	cr_assert_eq(vec & 1, 0);
	run_touchers(lm, p, npages, nthreads, 8192, fill);
	cr_assert_eq(lazymap_close(lm), 0);
	if (fill)
		fill_ctx_free(fill);
}

Test(faults, zero_2_threads) { concurrent(2, 1, false, 0); }
Test(faults, zero_8_threads_2_handlers) { concurrent(8, 2, false, 0); }
Test(faults, fill_2_threads) { concurrent(2, 1, true, 0); }
Test(faults, fill_4_threads_2_handlers) { concurrent(4, 2, true, 0); }
Test(faults, fill_8_threads_3_handlers) { concurrent(8, 3, true, 0); }
Test(faults, fill_move_4_threads_2_handlers) { concurrent(4, 2, true, LAZYMAP_INSTALL_MOVE); }

/* ---------------------------------------------------------- sequential */

Test(faults, sequential_fault_around)
{
	size_t len = 64ul << 20, ps = pgsz(), npages = len / ps;
	struct lazymap_stats st;
	struct lazymap *lm;
	char *p;

	lm = open_or_skip(NULL);
	cr_assert_eq(lazymap_map(lm, (void **)&p, len, PROT_READ | PROT_WRITE,
				 LAZYMAP_PRIVATE | LAZYMAP_ANON, -1, 0), 0);
	for (size_t i = 0; i < npages; i++)
		p[i * ps] = 1;
	cr_assert_eq(lazymap_stats(lm, &st), 0);
	cr_assert_eq(st.pages_filled, npages, "filled %lu of %zu pages (%lu faults, %lu coalesced)",
		     (unsigned long)st.pages_filled, npages, (unsigned long)st.faults,
		     (unsigned long)st.coalesced);
	/* Windows double up to readahead_max (512 KiB: 128 pages) on a stream. */
	cr_assert_lt(st.faults, npages / 64, "%lu faults for %zu sequential pages",
		     (unsigned long)st.faults, npages);
	for (size_t i = 0; i < npages; i++)
		cr_assert_eq(p[i * ps + 1], 0);
	cr_assert_eq(lazymap_close(lm), 0);
}

Test(faults, read_faults_map_the_zero_page)
{
	size_t ps = pgsz(), npages = 1024;
	struct lazymap_stats st;
	struct lazymap *lm;
	volatile char *p;
	void *v;

	lm = open_or_skip(NULL);
	cr_assert_eq(lazymap_map(lm, &v, npages * ps, PROT_READ | PROT_WRITE,
				 LAZYMAP_PRIVATE | LAZYMAP_ANON, -1, 0), 0);
	p = v;
	for (size_t i = 0; i < npages; i += 7)
		cr_assert_eq(p[i * ps], 0);
	cr_assert_eq(lazymap_stats(lm, &st), 0);
	cr_assert_gt(st.zeropage_ioctls, 0);
	cr_assert_eq(st.copy_ioctls, 0);
	/* A write after a zero-page read is the kernel's copy-on-write, and sticks. */
	p[7 * ps] = 42;
	cr_assert_eq(p[7 * ps], 42);
	cr_assert_eq(lazymap_close(lm), 0);
}

/*
 * Which pages of [p, p + npages pages) are present once lm is quiet (the
 * toucher is woken before the rest of its block lands): mincore's answer,
 * in vec.
 */
static void settle_present(struct lazymap *lm, char *p, size_t npages, unsigned char *vec)
{
	quiesce(lm);
	cr_assert_eq(mincore(p, npages * pgsz(), vec), 0);
}

/*
 * A lone fault on a private zero or fill region fills the rest of its
 * aligned 16-page block (for zeros: the zero page after a read, zeroed pages
 * after a write): later touches there are the kernel's own faults. Shared
 * regions and LAZYMAP_ADV_RANDOM get the one page only.
 */
static void around_case(bool use_fill, unsigned flags, int advice, bool write, bool around)
{
	size_t ps = pgsz(), block = 16 * ps, npages = 64;
	struct fill_ctx *fill = use_fill ? fill_ctx_new(npages, 0xb10cull) : NULL;
	struct lazymap_stats st0, st1;
	unsigned char vec[64];
	struct lazymap *lm;
	uint64_t *w;
	char *p, *b;
	void *v;

	lm = open_or_skip(NULL);
	if (use_fill)
		cr_assert_eq(lazymap_map_fill(lm, &v, npages * ps, PROT_READ | PROT_WRITE, fill_pattern,
					      fill), 0);
	else
		cr_assert_eq(lazymap_map(lm, &v, npages * ps, PROT_READ | PROT_WRITE,
					 flags | LAZYMAP_ANON, -1, 0), 0);
	p = v;
	if (advice >= 0)
		cr_assert_eq(lazymap_advise(lm, p, npages * ps, advice), 0);
	b = (char *)(((uintptr_t)p + 2 * block - 1) & ~(block - 1)); /* a whole block inside */
	cr_assert_eq(lazymap_stats(lm, &st0), 0);
	w = (uint64_t *)(b + 5 * ps);
	if (write)
		w[3] = 7;
	else
		(void)*(volatile uint64_t *)w;
	settle_present(lm, p, npages, vec);
	for (size_t i = 0; i < npages; i++) {
		char *a = p + i * ps;
		bool want = a == b + 5 * ps || (around && a >= b && a < b + block);

		cr_assert_eq(vec[i] & 1, want, "fill %d write %d: page %zd from the block: present %d", use_fill, write,
			     (a - b) / (ssize_t)ps, vec[i] & 1);
		if (fill)
			cr_assert_eq(atomic_load(&fill->calls[i]), want, "page %zu produced %u times",
				     i, atomic_load(&fill->calls[i]));
	}
	/* The rest of the block: the source's data, writes stick, no more faults if filled. */
	for (size_t i = 0; i < 16; i++) {
		uint64_t *x = (uint64_t *)(b + i * ps), off = (uint64_t)((char *)x - p);

		cr_assert_eq(x[1], fill ? pattern(off + 8, fill->key) : 0, "page %zu of the block", i);
		x[2] = i + 1;
	}
	cr_assert_eq(lazymap_stats(lm, &st1), 0);
	for (size_t i = 0; i < 16; i++)
		cr_assert_eq(((uint64_t *)(b + i * ps))[2], i + 1);
	cr_assert_eq(w[3], write ? 7 : fill ? pattern((uint64_t)((char *)w - p) + 24, fill->key) : 0);
	/* Without it, the scan of the block is a stream: fault-around fills runs. */
	if (around)
		cr_assert_eq(st1.faults - st0.faults, 1, "%lu faults",
			     (unsigned long)(st1.faults - st0.faults));
	else
		cr_assert_gt(st1.faults - st0.faults, 1);
	cr_assert_eq(lazymap_close(lm), 0);
	if (fill)
		fill_ctx_free(fill);
}

Test(faults, lone_fault_fills_its_64k_block)
{
	around_case(false, LAZYMAP_PRIVATE, -1, false, true);
	around_case(false, LAZYMAP_PRIVATE, -1, true, true);
	around_case(true, LAZYMAP_PRIVATE, -1, false, true);
	around_case(true, LAZYMAP_PRIVATE, -1, true, true);
}

/* readahead_max caps the block, rounded down to a power of two: 3 pages give 2. */
Test(faults, readahead_max_caps_the_block)
{
	size_t ps = pgsz(), npages = 64;

	for (size_t ra = 1; ra <= 3; ra++) {
		struct lazymap_opts o = { .readahead_max = ra * ps };
		size_t want = ra == 1 ? 1 : 2;
		unsigned char vec[64];
		struct lazymap *lm;
		char *p, *b;
		void *v;

		lm = open_or_skip(&o);
		cr_assert_eq(lazymap_map(lm, &v, npages * ps, PROT_READ | PROT_WRITE,
					 LAZYMAP_PRIVATE | LAZYMAP_ANON, -1, 0), 0);
		p = v;
		b = (char *)(((uintptr_t)p + 32 * ps - 1) & ~(16 * ps - 1));
		b[5 * ps] = 1;
		settle_present(lm, p, npages, vec);
		for (size_t i = 0; i < npages; i++) {
			char *a = p + i * ps;
			bool in_block = want == 1 ? a == b + 5 * ps : a >= b + 4 * ps && a < b + 6 * ps;

			cr_assert_eq(vec[i] & 1, in_block, "readahead_max %zu pages: page %zd present %d",
				     ra, (a - b) / (ssize_t)ps, vec[i] & 1);
		}
		cr_assert_eq(lazymap_close(lm), 0);
	}
}

Test(faults, no_block_for_shared_regions_or_random_advice)
{
	around_case(false, LAZYMAP_SHARED, -1, true, false);
	around_case(false, LAZYMAP_PRIVATE, LAZYMAP_ADV_RANDOM, true, false);
	around_case(false, LAZYMAP_PRIVATE, LAZYMAP_ADV_RANDOM, false, false);
	around_case(true, LAZYMAP_PRIVATE, LAZYMAP_ADV_RANDOM, true, false);
}

/* ---------------------------------------------------------- errors */

Test(faults, fill_error_is_sigbus_at_the_address)
{
	size_t ps = pgsz(), npages = 64;
	struct fill_ctx *fill = fill_ctx_new(npages, 7);
	struct lazymap_stats st;
	struct lazymap *lm;
	struct touch_fault f;
	char *p, c;

	fill->fail_from = 10;
	fill->fail_to = 12;
	touch_install();
	lm = open_or_skip(NULL);
	cr_assert_eq(lazymap_map_fill(lm, (void **)&p, npages * ps, PROT_READ, fill_pattern, fill), 0);
	/* Sequential touches so that a fault-around run covers the bad pages. */
	for (size_t pg = 0; pg < npages; pg++) {
		f = touch(p + pg * ps + 5, -1, &c);
		if (pg >= 10 && pg < 12) {
			cr_assert_eq(f.signo, SIGBUS, "page %zu: signal %d", pg, f.signo);
			cr_assert_eq(f.addr, p + pg * ps + 5, "si_addr %p, want %p", f.addr,
				     (void *)(p + pg * ps + 5));
		} else {
			cr_assert_eq(f.signo, 0, "page %zu: signal %d", pg, f.signo);
			cr_assert_eq(*(uint64_t *)(p + pg * ps), pattern(pg * ps, 7));
		}
	}
	/* It stays an error: touching again raises SIGBUS again, with no hang. */
	f = touch(p + 11 * ps, -1, &c);
	cr_assert_eq(f.signo, SIGBUS);
	cr_assert_eq(lazymap_stats(lm, &st), 0);
	cr_assert_eq(st.io_errors, 2);
	cr_assert_eq(lazymap_close(lm), 0);
	fill_ctx_free(fill);
}

/*
 * Pages only filled ahead are not poisoned when fill fails for them: the
 * failure may pass, and nobody asked for them yet. Their own touch asks.
 */
Test(faults, fill_error_ahead_of_the_fault_is_not_poison)
{
	size_t ps = pgsz(), npages = 64, bi;
	struct fill_ctx *fill = fill_ctx_new(npages, 9);
	struct lazymap_stats st;
	unsigned char vec[64];
	struct lazymap *lm;
	struct touch_fault f;
	char *p, *b, c;

	touch_install();
	lm = open_or_skip(NULL);
	cr_assert_eq(lazymap_map_fill(lm, (void **)&p, npages * ps, PROT_READ, fill_pattern, fill), 0);
	b = (char *)(((uintptr_t)p + 32 * ps - 1) & ~(16 * ps - 1));
	bi = (size_t)(b - p) / ps;
	fill->fail_from = bi + 6; /* the block's pages after the one touched fail, for now */
	fill->fail_to = bi + 16;
	f = touch(b + 5 * ps, -1, &c);
	cr_assert_eq(f.signo, 0);
	cr_assert_eq(*(uint64_t *)(b + 5 * ps), pattern((bi + 5) * ps, 9));
	/* The good part of the block lands: pages 0-5. */
	settle_present(lm, p, npages, vec);
	for (size_t i = 0; i < npages; i++)
		cr_assert_eq(vec[i] & 1, i >= bi && i < bi + 6, "page %zd of the block present %d",
			     (ssize_t)i - (ssize_t)bi, vec[i] & 1);
	/* The source recovers: the rest of the block is produced at its touch. */
	fill->fail_from = fill->fail_to = 0;
	for (size_t i = 6; i < 16; i++) {
		f = touch(b + i * ps, -1, &c);
		cr_assert_eq(f.signo, 0, "page %zu of the block: signal %d", i, f.signo);
		cr_assert_eq(*(uint64_t *)(b + i * ps), pattern((bi + i) * ps, 9));
	}
	cr_assert_eq(lazymap_stats(lm, &st), 0);
	cr_assert_eq(st.io_errors, 0);
	cr_assert_eq(lazymap_close(lm), 0);
	fill_ctx_free(fill);
}

/* ---------------------------------------------------------- prefetch */

Test(faults, prefetch_fills_in_the_background)
{
	size_t ps = pgsz(), npages = 4096;
	struct fill_ctx *fill = fill_ctx_new(npages, 99);
	struct lazymap_stats st;
	struct lazymap *lm;
	uint64_t faults;
	char *p;

	lm = open_or_skip(NULL);
	cr_assert_eq(lazymap_map_fill(lm, (void **)&p, npages * ps, PROT_READ, fill_pattern, fill), 0);
	cr_assert_eq(lazymap_prefetch(lm, p + ps, (npages - 2) * ps), 0);
	/* prefetched counts a run as it starts: done is when nothing is queued or filling */
	quiesce(lm);
	cr_assert_eq(lazymap_stats(lm, &st), 0);
	cr_assert_eq(st.prefetched, npages - 2, "prefetched %lu pages of %zu",
		     (unsigned long)st.prefetched, npages - 2);
	faults = st.faults;
	for (size_t pg = 1; pg < npages - 1; pg++)
		cr_assert_eq(*(uint64_t *)(p + pg * ps), pattern(pg * ps, 99));
	cr_assert_eq(lazymap_stats(lm, &st), 0);
	cr_assert_eq(st.faults, faults, "prefetched pages faulted again");
	/* The pages outside the range were left alone. */
	cr_assert_eq(atomic_load(&fill->calls[0]), 0);
	cr_assert_eq(atomic_load(&fill->calls[npages - 1]), 0);
	cr_assert_eq(lazymap_close(lm), 0);
	fill_ctx_free(fill);
}

/* ---------------------------------------------------------- shared, protect */

Test(faults, shared_anonymous_region)
{
	size_t ps = pgsz(), npages = 256;
	struct lazymap_stats st;
	struct lazymap *lm;
	char *p;

	lm = open_or_skip(NULL);
	cr_assert_eq(lazymap_map(lm, (void **)&p, npages * ps, PROT_READ | PROT_WRITE,
				 LAZYMAP_SHARED | LAZYMAP_ANON, -1, 0), 0);
	for (size_t pg = 0; pg < npages; pg += 3) {
		cr_assert_eq(p[pg * ps + 100], 0);
		p[pg * ps + 100] = (char)pg;
	}
	for (size_t pg = 0; pg < npages; pg += 3)
		cr_assert_eq(p[pg * ps + 100], (char)pg);
	cr_assert_eq(lazymap_stats(lm, &st), 0);
	cr_assert_geq(st.pages_filled, npages / 3);
	cr_assert_eq(lazymap_close(lm), 0);
}

Test(faults, protect_read_only_then_back)
{
	size_t ps = pgsz(), npages = 32;
	struct lazymap *lm;
	struct touch_fault f;
	char *p, c;

	touch_install();
	lm = open_or_skip(NULL);
	cr_assert_eq(lazymap_map(lm, (void **)&p, npages * ps, PROT_READ | PROT_WRITE,
				 LAZYMAP_PRIVATE | LAZYMAP_ANON, -1, 0), 0);
	p[0] = 1;
	cr_assert_eq(lazymap_protect(lm, p, npages * ps, PROT_READ), 0);
	f = touch(p + 5 * ps, -1, &c);
	cr_assert_eq(f.signo, 0);
	cr_assert_eq(c, 0);
	f = touch(p + 6 * ps, 1, NULL);
	cr_assert_eq(f.signo, SIGSEGV);
	cr_assert_eq(lazymap_protect(lm, p, npages * ps, PROT_READ | PROT_WRITE), 0);
	f = touch(p + 6 * ps, 1, NULL);
	cr_assert_eq(f.signo, 0);
	cr_assert_eq(p[6 * ps], 1);
	cr_assert_eq(p[0], 1);
	cr_assert_eq(lazymap_close(lm), 0);
}

/* ---------------------------------------------------------- many regions */

Test(faults, thousands_of_regions)
{
	enum { N = 3000 };
	size_t ps = pgsz();
	struct lazymap_stats st;
	struct lazymap *lm;
	static char *r[N];

	lm = open_or_skip(NULL);
	for (int i = 0; i < N; i++) {
		cr_assert_eq(lazymap_map(lm, (void **)&r[i], 2 * ps, PROT_READ | PROT_WRITE,
					 LAZYMAP_PRIVATE | LAZYMAP_ANON, -1, 0), 0, "region %d", i);
		r[i][ps] = (char)i;
	}
	for (int i = 0; i < N; i++)
		cr_assert_eq(r[i][ps], (char)i);
	cr_assert_eq(lazymap_stats(lm, &st), 0);
	cr_assert_eq(st.regions, N);
	for (int i = 0; i < N; i += 2)
		cr_assert_eq(lazymap_unmap(lm, r[i], 2 * ps), 0);
	cr_assert_eq(lazymap_stats(lm, &st), 0);
	cr_assert_eq(st.regions, N / 2);
	cr_assert_eq(lazymap_close(lm), 0);
}

/* ---------------------------------------------------------- close */

struct looper {
	pthread_t thread;
	char *base;
	size_t npages;
	atomic_bool *go;
	int signo;
	atomic_size_t touched;
};

static void *looper_main(void *arg)
{
	struct looper *l = arg;
	size_t ps = pgsz();
	uint64_t s = (uintptr_t)l;

	touch_install();
	while (atomic_load(l->go)) {
		struct touch_fault f = touch(l->base + (rng_next(&s) % l->npages) * ps, 1, NULL);

		if (f.signo) {
			l->signo = f.signo;
			break;
		}
		atomic_fetch_add(&l->touched, 1);
	}
	return NULL;
}

Test(faults, close_while_threads_fault)
{
	size_t ps = pgsz(), npages = (64ul << 20) / ps;
	struct lazymap_opts o = { .handler_threads = 2 };
	struct looper l[4];
	atomic_bool go = true;
	struct lazymap *lm;
	char *p;

	lm = open_or_skip(&o);
	cr_assert_eq(lazymap_map(lm, (void **)&p, npages * ps, PROT_READ | PROT_WRITE,
				 LAZYMAP_PRIVATE | LAZYMAP_ANON, -1, 0), 0);
	for (int i = 0; i < 4; i++) {
		l[i] = (struct looper){ .base = p, .npages = npages, .go = &go };
		cr_assert_eq(pthread_create(&l[i].thread, NULL, looper_main, &l[i]), 0);
	}
	/* Close only once every thread is faulting (a loaded machine may take a while). */
	for (double t0 = now_s(); ; usleep(1000)) {
		bool all = true;

		for (int i = 0; i < 4; i++)
			all &= atomic_load(&l[i].touched) > 0;
		if (all)
			break;
		cr_assert_lt(now_s() - t0, 30.0, "the threads' first faults were not served");
	}
	cr_assert_eq(lazymap_close(lm), 0);
	/* The region is gone: every thread either got SIGSEGV or is told to stop. */
	atomic_store(&go, false);
	for (int i = 0; i < 4; i++) {
		pthread_join(l[i].thread, NULL);
		cr_assert(l[i].signo == 0 || l[i].signo == SIGSEGV, "thread %d: signal %d", i,
			  l[i].signo);
		cr_assert_gt(l[i].touched, 0);
	}
	cr_assert_eq(lazymap_stats(lm, &(struct lazymap_stats){ 0 }), -EBADF);
}

/* UFFDIO_MOVE will not move between VMAs of different protection: a
 * read-only fill region under LAZYMAP_INSTALL_MOVE is served by COPY. */
Test(faults, move_mode_read_only_region)
{
	struct lazymap_opts o = { .install = LAZYMAP_INSTALL_MOVE };
	size_t ps = pgsz(), npages = 512;
	struct fill_ctx *fill = fill_ctx_new(npages, 5);
	struct lazymap_stats st;
	struct lazymap *lm;
	char *p, *q;

	lm = open_or_skip(&o);
	cr_assert_eq(lazymap_map_fill(lm, (void **)&p, npages * ps, PROT_READ, fill_pattern, fill), 0);
	cr_assert_eq(lazymap_map_fill(lm, (void **)&q, npages * ps, PROT_READ | PROT_WRITE,
				      fill_pattern, fill), 0);
	for (size_t pg = 0; pg < npages; pg += 5) {
		cr_assert_eq(*(uint64_t *)(p + pg * ps), pattern(pg * ps, 5));
		cr_assert_eq(*(uint64_t *)(q + pg * ps + 8), pattern(pg * ps + 8, 5));
	}
	cr_assert_eq(lazymap_stats(lm, &st), 0);
	cr_assert_gt(st.copy_ioctls, 0);
	cr_assert_gt(st.move_ioctls, 0);
	cr_assert_eq(st.io_errors, 0);
	cr_assert_eq(lazymap_close(lm), 0);
	fill_ctx_free(fill);
}

/* madvise(MADV_DONTNEED) drops a private page: its next touch produces it
 * again from the source (fill data, or zeros), not what was written. */
Test(faults, dontneed_page_is_produced_again)
{
	size_t ps = pgsz(), npages = 16;
	struct fill_ctx *fill = fill_ctx_new(npages, 11);
	struct lazymap *lm;
	uint64_t *f, *z;

	lm = open_or_skip(NULL);
	cr_assert_eq(lazymap_map_fill(lm, (void **)&f, npages * ps, PROT_READ | PROT_WRITE,
				      fill_pattern, fill), 0);
	cr_assert_eq(lazymap_map(lm, (void **)&z, npages * ps, PROT_READ | PROT_WRITE,
				 LAZYMAP_PRIVATE | LAZYMAP_ANON, -1, 0), 0);
	cr_assert_eq(f[3], pattern(24, 11));
	f[3] = 1;
	z[3] = 1;
	cr_assert_eq(madvise(f, ps, MADV_DONTNEED), 0);
	cr_assert_eq(madvise(z, ps, MADV_DONTNEED), 0);
	cr_assert_eq(f[3], pattern(24, 11));
	cr_assert_eq(z[3], 0);
	cr_assert_eq(atomic_load(&fill->calls[0]), 2);
	cr_assert_eq(lazymap_close(lm), 0);
	fill_ctx_free(fill);
}

/* ---------------------------------------------------------- regressions */

struct dropper {
	pthread_t thread;
	char *pages;
	atomic_long progress;
};

static void *dropper_main(void *arg)
{
	struct dropper *d = arg;
	size_t ps = pgsz();

	for (long i = 0; i < 20000; i++) {
		volatile char *q = d->pages + (size_t)(i % 64) * ps;

		q[0] = 1;
		madvise((void *)q, ps, MADV_DONTNEED);
		q[0] = 2;
		atomic_store(&d->progress, i + 1);
	}
	return NULL;
}

/*
 * A page dropped and touched again while the handler that filled it still
 * holds it: the second fault must be woken when the holder lets go (it used
 * to be dropped, and the toucher slept forever).
 */
Test(faults, refault_while_filler_holds_page_is_woken)
{
	struct lazymap_opts o = { .handler_threads = 2 };
	size_t ps = pgsz();
	struct dropper d[4];
	struct lazymap *lm;
	long last[4] = { 0 };
	char *p;
	int idle = 0;

	lm = open_or_skip(&o);
	cr_assert_eq(lazymap_map(lm, (void **)&p, 4 * 64 * ps, PROT_READ | PROT_WRITE,
				 LAZYMAP_PRIVATE | LAZYMAP_ANON, -1, 0), 0);
	for (int i = 0; i < 4; i++) {
		d[i].pages = p + (size_t)i * 64 * ps;
		atomic_init(&d[i].progress, 0);
		cr_assert_eq(pthread_create(&d[i].thread, NULL, dropper_main, &d[i]), 0);
	}
	/* A watchdog, not a timer: fail if some thread stops making progress. */
	for (;;) {
		bool done = true, moved = false;

		usleep(100000);
		for (int i = 0; i < 4; i++) {
			long v = atomic_load(&d[i].progress);

			done &= v == 20000;
			moved |= v != last[i];
			last[i] = v;
		}
		if (done)
			break;
		idle = moved ? 0 : idle + 1;
		cr_assert_lt(idle, 200, "no thread progressed for 20 s: %ld %ld %ld %ld (lost wake-up)",
			     last[0], last[1], last[2], last[3]);
	}
	for (int i = 0; i < 4; i++)
		pthread_join(d[i].thread, NULL);
	cr_assert_eq(lazymap_close(lm), 0);
}

/* A fill callback that holds its first call until the test lets it go (30 s at most). */
struct held_fill {
	atomic_int calls;
	atomic_bool release;
};

static int held_fill(void *page, size_t len, uint64_t offset, void *arg)
{
	struct held_fill *h = arg;

	(void)offset;
	if (atomic_fetch_add(&h->calls, 1) == 0) {
		for (double t0 = now_s(); !atomic_load(&h->release) && now_s() - t0 < 30.0;)
			usleep(1000);
	}
	memset(page, 3, len);
	return 0;
}

/*
 * While one handler works on the last prefetch range, the other has nothing
 * to do and must sleep: the work eventfd is readable only while ranges are
 * queued, or the idle one's epoll_wait would return at once, for ever.
 */
Test(faults, idle_handler_sleeps_while_another_prefetches)
{
	struct lazymap_opts o = { .handler_threads = 2 };
	struct held_fill h = { 0 };
	size_t ps = pgsz();
	struct lazymap_stats st;
	struct lazymap *lm;
	char *p;

	lm = open_or_skip(&o);
	cr_assert_eq(lazymap_map_fill(lm, (void **)&p, 4 * ps, PROT_READ, held_fill, &h), 0);
	cr_assert_eq(lazymap_prefetch(lm, p, 4 * ps), 0);
	for (double t0 = now_s(); !atomic_load(&h.calls); usleep(1000))
		cr_assert_lt(now_s() - t0, 10.0, "the prefetch never called fill");
	/* The handler in the fill sleeps in it, not in epoll_wait: only the idle one counts. */
	wait_handlers_asleep(lm, 1, "one handler in a held fill");
	atomic_store(&h.release, true);
	quiesce(lm);
	cr_assert_eq(lazymap_stats(lm, &st), 0);
	cr_assert_eq(st.prefetched, 4);
	cr_assert_eq(p[ps], 3);
	cr_assert_eq(st.faults, 0, "%lu faults on prefetched pages", (unsigned long)st.faults);
	cr_assert_eq(lazymap_close(lm), 0);
}

/* Without fork events a child cannot be served: it gets no copy of a fill
 * region (SIGSEGV, never silent zeros), and a zero region reads right. */
Test(faults, forked_child_never_reads_wrong_data)
{
	size_t ps = pgsz(), npages = 8;
	struct fill_ctx *fill = fill_ctx_new(npages, 3);
	struct lazymap_stats st;
	struct lazymap *lm;
	char *f, *z;
	int status;
	pid_t pid;

	lm = open_or_skip(NULL);
	cr_assert_eq(lazymap_stats(lm, &st), 0);
	cr_assert_eq(lazymap_map_fill(lm, (void **)&f, npages * ps, PROT_READ, fill_pattern, fill), 0);
	cr_assert_eq(lazymap_map(lm, (void **)&z, npages * ps, PROT_READ | PROT_WRITE,
				 LAZYMAP_PRIVATE | LAZYMAP_ANON, -1, 0), 0);
	cr_assert_eq(*(uint64_t *)f, pattern(0, 3));
	z[0] = 9;
	pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		char c = 0;
		struct touch_fault t;

		/*
		 * Followed: the parent's handlers fill the child's page from
		 * the callback. Not followed: the fill region is not copied
		 * (SIGSEGV), never zeros.
		 */
		touch_install();
		t = touch(f + 5 * ps, -1, &c);
		if (st.fork_followed ? t.signo || *(uint64_t *)(f + 5 * ps) != pattern(5 * ps, 3)
				     : t.signo != SIGSEGV)
			_exit(1);
		if (z[0] != 9 || z[5 * ps] != 0)
			_exit(2);
		_exit(0);
	}
	cr_assert_eq(waitpid(pid, &status, 0), pid);
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status %#x (fork followed: %d)",
		  status, (int)st.fork_followed);
	cr_assert_eq(*(uint64_t *)(f + 5 * ps), pattern(5 * ps, 3));
	cr_assert_eq(lazymap_close(lm), 0);
	fill_ctx_free(fill);
}
