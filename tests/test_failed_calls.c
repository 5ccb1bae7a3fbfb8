// SPDX-License-Identifier: MIT
/*
 * Calls that fail half-way in the kernel: an unmap or protect at the
 * process's mapping limit (vm.max_map_count) fails with -ENOMEM and leaves
 * everything as it was, the kernel's VMAs, the tree and the data alike.
 * Calls that must not hang: lazymap_dump into a stream whose buffer lies in
 * the lazymap's own regions while other threads map and unmap. Maps that must
 * not land where they were not asked to: LAZYMAP_HINT and LAZYMAP_FIXED.
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/mman.h>

#include "common.h"

#define MAXE  64
#define NPAGE 64 /* pages of the region under test */

/* ---------------------------------------------------------- the limit */

static long max_map_count(void)
{
	FILE *f = fopen("/proc/sys/vm/max_map_count", "r");
	long max = -1;

	if (f) {
		if (fscanf(f, "%ld", &max) != 1)
			max = -1;
		fclose(f);
	}
	return max;
}

/* Lines of /proc/self/maps: a split left anywhere shows here. */
static int maps_count(void)
{
	FILE *f = fopen("/proc/self/maps", "r");
	char line[512];
	int n = 0;

	cr_assert_not_null(f);
	while (fgets(line, sizeof(line), f))
		n += strchr(line, '\n') != NULL;
	fclose(f);
	return n;
}

/*
 * The process's VMAs used up to the limit, without touching the sysctl: a
 * PROT_NONE reservation whose odd pages are made readable one by one (two
 * more VMAs each) until the kernel refuses. Then the process holds as many
 * VMAs as it may, and giving back one readable page frees exactly one.
 */
struct mapfill {
	char *base;
	size_t npages; /* of the reservation */
	size_t taken;  /* readable pages: page i is at base + (2i + 1) pages */
};

static void mapfill_take(struct mapfill *mf)
{
	size_t ps = pgsz();
	long max = max_map_count();
	int err = 0;

#ifdef __SANITIZE_THREAD__
	/* Its allocator maps and unmaps for itself, and aborts when it cannot. */
	cr_skip_test("ThreadSanitizer cannot run at the mapping limit (vm.max_map_count)");
#endif
	cr_assert_gt(max, 0, "cannot read /proc/sys/vm/max_map_count");
	mf->npages = 2 * (size_t)max + 4;
	mf->base = mmap(NULL, mf->npages * ps, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
			-1, 0);
	cr_assert_neq(mf->base, MAP_FAILED);
	for (mf->taken = 0; 2 * mf->taken + 2 < mf->npages; mf->taken++) {
		if (mprotect(mf->base + (2 * mf->taken + 1) * ps, ps, PROT_READ)) {
			err = errno;
			break;
		}
	}
	cr_assert_eq(err, ENOMEM, "%zu pages made readable, then %s", mf->taken, strerror(err));
}

/* Give n VMAs back. */
static void mapfill_give(struct mapfill *mf, size_t n)
{
	size_t ps = pgsz();

	for (; n; n--) {
		cr_assert_gt(mf->taken, 0);
		mf->taken--;
		cr_assert_eq(munmap(mf->base + (2 * mf->taken + 1) * ps, ps), 0);
	}
}

static void mapfill_release(struct mapfill *mf)
{
	if (mf->base)
		cr_assert_eq(munmap(mf->base, mf->npages * pgsz()), 0);
	mf->base = NULL;
}

/* ---------------------------------------------------------- the region */

static uint8_t pattern(size_t page)
{
	return (uint8_t)(page * 7 + 1);
}

static int fill_pattern(void *page, size_t len, uint64_t offset, void *arg)
{
	(void)arg;
	for (size_t i = 0; i < len; i += pgsz())
		memset((char *)page + i, pattern((offset + i) / pgsz()), pgsz());
	return 0;
}

/*
 * A fill region of NPAGE pages, advised RANDOM so that a touch fills only its
 * own page: every even page read, pages 20 and 40 written; the odd pages are
 * left for the handler to serve later.
 */
struct fixture {
	struct lazymap *lm;
	char *p;
	uint8_t want[NPAGE]; /* what each touched page holds; 0: not touched yet */
	struct maps_entry tree[MAXE], kern[MAXE];
	int ntree, nkern, nall;
};

static void region_setup(struct fixture *fx)
{
	size_t ps = pgsz();

	fx->lm = open_or_skip(NULL);
	cr_assert_eq(lazymap_map_fill(fx->lm, (void **)&fx->p, NPAGE * ps, PROT_READ | PROT_WRITE,
				      fill_pattern, NULL), 0);
	cr_assert_eq(lazymap_advise(fx->lm, fx->p, NPAGE * ps, LAZYMAP_ADV_RANDOM), 0);
	for (size_t i = 0; i < NPAGE; i += 2) {
		cr_assert_eq(fx->p[i * ps + 5], (char)pattern(i));
		fx->want[i] = pattern(i);
	}
	memset(fx->p + 20 * ps, 0xa0, 64);
	memset(fx->p + 40 * ps, 0xa1, 64);
	fx->want[20] = 0xa0;
	fx->want[40] = 0xa1;
}

/* Remember what the tree and the kernel hold now. */
static void snapshot(struct fixture *fx)
{
	size_t ps = pgsz();

	fx->ntree = tree_read(fx->lm, fx->tree, MAXE);
	fx->nkern = maps_read((uintptr_t)fx->p, (uintptr_t)fx->p + NPAGE * ps, fx->kern, MAXE);
	fx->nall = maps_count();
	cr_assert_gt(fx->ntree, 0);
	cr_assert_gt(fx->nkern, 0);
}

static void expect_same(const struct maps_entry *a, int na, const struct maps_entry *b, int nb,
			const char *what, const char *when)
{
	cr_assert_eq(na, nb, "%s: %s has %d VMAs, had %d", when, what, na, nb);
	for (int i = 0; i < na; i++)
		cr_assert(a[i].start == b[i].start && a[i].end == b[i].end &&
			  !strcmp(a[i].perms, b[i].perms),
			  "%s: %s VMA %d is %#lx-%#lx %s, was %#lx-%#lx %s", when, what, i,
			  (unsigned long)a[i].start, (unsigned long)a[i].end, a[i].perms,
			  (unsigned long)b[i].start, (unsigned long)b[i].end, b[i].perms);
}

/*
 * Nothing changed since the snapshot: the tree, the kernel's VMAs (ours and
 * their number in all), the data; and page `untouched`, never touched, is
 * still served by the handler.
 */
static void expect_unchanged(struct fixture *fx, size_t untouched, const char *when)
{
	struct maps_entry tree[MAXE], kern[MAXE];
	size_t ps = pgsz();
	int nt = tree_read(fx->lm, tree, MAXE);
	int nk = maps_read((uintptr_t)fx->p, (uintptr_t)fx->p + NPAGE * ps, kern, MAXE);

	expect_same(tree, nt, fx->tree, fx->ntree, "the tree", when);
	expect_same(kern, nk, fx->kern, fx->nkern, "/proc/self/maps", when);
	cr_assert_eq(maps_count(), fx->nall, "%s: the process has %d VMAs, had %d", when,
		     maps_count(), fx->nall);
	for (size_t i = 0; i < NPAGE; i++)
		if (fx->want[i])
			cr_assert_eq((uint8_t)fx->p[i * ps + 9], fx->want[i], "%s: page %zu", when, i);
	/* A touch of a page the tree had lost would bounce between the kernel
	 * and the handler for ever: the test's timeout says so. */
	cr_assert_eq(fx->want[untouched], 0);
	cr_assert_eq((uint8_t)fx->p[untouched * ps + 3], pattern(untouched), "%s: page %zu", when,
		     untouched);
	fx->want[untouched] = pattern(untouched);
}

/* ---------------------------------------------------------- unmap */

Test(failed_calls, unmap_at_the_map_count_limit_changes_nothing, .timeout = 120)
{
	struct fixture fx = { 0 };
	struct mapfill mf = { 0 };
	struct maps_entry tree[MAXE], kern[MAXE];
	size_t ps = pgsz();
	char *hole;
	int ret, nt, nk;

	region_setup(&fx);
	hole = fx.p + 16 * ps;
	snapshot(&fx); /* once before, so that reading allocates nothing new at the limit */
	cr_assert_eq(fx.ntree, 1);
	mapfill_take(&mf);
	snapshot(&fx);
	/* The middle of a region: the kernel would need one VMA more. */
	cr_assert_eq(lazymap_unmap(fx.lm, hole, 16 * ps), -ENOMEM);
	expect_unchanged(&fx, 17, "at the limit");

	/*
	 * One VMA free: enough for munmap alone, not for the unregister that
	 * must come first (it splits twice before the unmap merges once). Fail
	 * as above, or succeed; never half-way.
	 */
	mapfill_give(&mf, 1);
	snapshot(&fx);
	ret = lazymap_unmap(fx.lm, hole, 16 * ps);
	cr_assert(ret == -ENOMEM || ret == 0, "%d", ret);
	cr_log_info("one VMA below the limit, unmap of a region's middle: %d", ret);
	if (ret == -ENOMEM) {
		expect_unchanged(&fx, 19, "one below the limit");
		/* Room to work: it goes through. */
		mapfill_give(&mf, 2);
		cr_assert_eq(lazymap_unmap(fx.lm, hole, 16 * ps), 0);
	}
	mapfill_release(&mf);

	/* The hole is gone in the tree and in the kernel, the rest intact. */
	nt = tree_read(fx.lm, tree, MAXE);
	nk = maps_read((uintptr_t)fx.p, (uintptr_t)fx.p + NPAGE * ps, kern, MAXE);
	cr_assert_eq(nt, 2);
	cr_assert_eq(nk, 2);
	cr_assert(tree[0].start == (uintptr_t)fx.p && tree[0].end == (uintptr_t)hole);
	cr_assert(tree[1].start == (uintptr_t)hole + 16 * ps &&
		  tree[1].end == (uintptr_t)fx.p + NPAGE * ps);
	for (int i = 0; i < 2; i++)
		cr_assert(kern[i].start == tree[i].start && kern[i].end == tree[i].end);
	cr_assert_eq(msync(hole, 16 * ps, MS_ASYNC), -1);
	for (size_t i = 0; i < NPAGE; i++)
		if (fx.want[i] && (i < 16 || i >= 32))
			cr_assert_eq((uint8_t)fx.p[i * ps], fx.want[i], "page %zu", i);
	cr_assert_eq((uint8_t)fx.p[33 * ps], pattern(33));
	cr_assert_eq(lazymap_close(fx.lm), 0);
}

/* ---------------------------------------------------------- advice */

/*
 * A split keeps the advice of the VMA it came from: a protect and its way
 * back leave one VMA, not pieces that differ in advice alone and never merge.
 */
Test(failed_calls, split_keeps_the_advice)
{
	struct maps_entry tree[MAXE];
	struct lazymap *lm;
	size_t ps = pgsz();
	unsigned char vec[16];
	char *p;

	lm = open_or_skip(NULL);
	cr_assert_eq(lazymap_map(lm, (void **)&p, 16 * ps, PROT_READ | PROT_WRITE,
				 LAZYMAP_PRIVATE | LAZYMAP_ANON, -1, 0), 0);
	cr_assert_eq(lazymap_advise(lm, p, 16 * ps, LAZYMAP_ADV_RANDOM), 0);
	cr_assert_eq(lazymap_protect(lm, p + 4 * ps, 4 * ps, PROT_READ), 0);
	cr_assert_eq(tree_read(lm, tree, MAXE), 3);
	/* The tail is still RANDOM: a touch there fills its page alone. */
	cr_assert_eq(p[12 * ps], 0);
	cr_assert_eq(mincore(p, 16 * ps, vec), 0);
	for (int i = 8; i < 16; i++)
		cr_assert_eq(vec[i] & 1, i == 12, "page %d", i);
	cr_assert_eq(lazymap_protect(lm, p + 4 * ps, 4 * ps, PROT_READ | PROT_WRITE), 0);
	cr_assert_eq(tree_read(lm, tree, MAXE), 1);
	cr_assert_eq(lazymap_close(lm), 0);
}

/* ---------------------------------------------------------- protect */

Test(failed_calls, protect_at_the_map_count_limit_changes_nothing, .timeout = 120)
{
	struct fixture fx = { 0 };
	struct mapfill mf = { 0 };
	struct maps_entry tree[MAXE], kern[MAXE];
	static const char *perms[] = { "rw-p", "r--p", "rw-p" };
	size_t ps = pgsz();
	char *mid;
	int nt, nk;

	touch_install();
	region_setup(&fx);
	mid = fx.p + 16 * ps;
	snapshot(&fx);
	cr_assert_eq(fx.ntree, 1);
	mapfill_take(&mf);
	snapshot(&fx);
	/* The middle of a region: mprotect cannot split it. */
	cr_assert_eq(lazymap_protect(fx.lm, mid, 16 * ps, PROT_READ), -ENOMEM);
	expect_unchanged(&fx, 17, "at the limit");

	/* One VMA free: the kernel splits at the start, cannot at the end, and
	 * keeps the first split; it must not show. */
	mapfill_give(&mf, 1);
	snapshot(&fx);
	cr_assert_eq(lazymap_protect(fx.lm, mid, 16 * ps, PROT_READ), -ENOMEM);
	expect_unchanged(&fx, 19, "one below the limit");

	/* Room to work: it goes through, in the tree as in the kernel. */
	mapfill_give(&mf, 2);
	cr_assert_eq(lazymap_protect(fx.lm, mid, 16 * ps, PROT_READ), 0);
	mapfill_release(&mf);
	nt = tree_read(fx.lm, tree, MAXE);
	nk = maps_read((uintptr_t)fx.p, (uintptr_t)fx.p + NPAGE * ps, kern, MAXE);
	cr_assert_eq(nt, 3);
	cr_assert_eq(nk, 3);
	for (int i = 0; i < 3; i++) {
		cr_assert(kern[i].start == tree[i].start && kern[i].end == tree[i].end);
		cr_assert_str_eq(tree[i].perms, perms[i]);
		cr_assert_str_eq(kern[i].perms, perms[i]);
	}
	cr_assert_eq(tree[1].start, (uintptr_t)mid);
	cr_assert_eq(tree[1].end, (uintptr_t)mid + 16 * ps);
	cr_assert_eq(touch(mid + ps, 1, NULL).signo, SIGSEGV);
	for (size_t i = 0; i < NPAGE; i++)
		if (fx.want[i])
			cr_assert_eq((uint8_t)fx.p[i * ps], fx.want[i], "page %zu", i);
	cr_assert_eq((uint8_t)mid[5 * ps], pattern(21));

	/* and back: one VMA again */
	cr_assert_eq(lazymap_protect(fx.lm, mid, 16 * ps, PROT_READ | PROT_WRITE), 0);
	cr_assert_eq(tree_read(fx.lm, tree, MAXE), 1);
	cr_assert_eq(maps_read((uintptr_t)fx.p, (uintptr_t)fx.p + NPAGE * ps, kern, MAXE), 1);
	cr_assert_eq(lazymap_close(fx.lm), 0);
}

/* ---------------------------------------------------------- dump */

#define NDUMP 1000

/* Maps and unmaps a page in a loop: a writer on the lock, again and again. */
struct churn {
	struct lazymap *lm;
	atomic_bool stop;
	atomic_long rounds;
	int err;
};

static void *churn_main(void *arg)
{
	struct churn *c = arg;
	void *q;

	while (!atomic_load(&c->stop)) {
		c->err = lazymap_map(c->lm, &q, pgsz(), PROT_READ | PROT_WRITE,
				     LAZYMAP_PRIVATE | LAZYMAP_ANON, -1, 0);
		if (!c->err)
			c->err = lazymap_unmap(c->lm, q, pgsz());
		if (c->err)
			break;
		atomic_fetch_add(&c->rounds, 1);
	}
	return NULL;
}

/* Dumps NDUMP times, each into a stream whose buffer is a page of buf never
 * touched before: the first write to it faults. */
struct dumper {
	struct lazymap *lm;
	char *buf;
	atomic_long done;
	int err;
};

static void *dump_main(void *arg)
{
	struct dumper *d = arg;
	size_t ps = pgsz();

	for (size_t i = 0; i < NDUMP; i++) {
		FILE *f = fopen("/dev/null", "w");
		int ret;

		if (!f || setvbuf(f, d->buf + i * ps, _IOFBF, ps)) {
			d->err = -errno;
			break;
		}
		ret = lazymap_dump(d->lm, f);
		fclose(f);
		if (ret < 2) {
			d->err = ret < 0 ? ret : -ENODATA;
			break;
		}
		atomic_fetch_add(&d->done, 1);
	}
	return NULL;
}

Test(failed_calls, dump_into_its_own_region_while_others_map_does_not_hang, .timeout = 120)
{
	struct churn c = { 0 };
	struct dumper d = { 0 };
	pthread_t churner, dumper;
	struct timespec deadline;
	size_t ps = pgsz();
	void *other;

	c.lm = open_or_skip(NULL);
	d.lm = c.lm;
	cr_assert_eq(lazymap_map(d.lm, (void **)&d.buf, NDUMP * ps, PROT_READ | PROT_WRITE,
				 LAZYMAP_PRIVATE | LAZYMAP_ANON, -1, 0), 0);
	/* a touch fills its own page only: each dump's buffer faults anew */
	cr_assert_eq(lazymap_advise(d.lm, d.buf, NDUMP * ps, LAZYMAP_ADV_RANDOM), 0);
	cr_assert_eq(lazymap_map_fill(d.lm, &other, 4 * ps, PROT_READ, fill_pattern, NULL), 0);

	cr_assert_eq(pthread_create(&churner, NULL, churn_main, &c), 0);
	cr_assert_eq(pthread_create(&dumper, NULL, dump_main, &d), 0);
	clock_gettime(CLOCK_REALTIME, &deadline);
	deadline.tv_sec += 30;
	/* On a deadlock the threads are left as they are: the test's process ends. */
	cr_assert_eq(pthread_timedjoin_np(dumper, NULL, &deadline), 0,
		     "lazymap_dump hangs: %ld dumps done, %ld maps and unmaps beside them",
		     atomic_load(&d.done), atomic_load(&c.rounds));
	atomic_store(&c.stop, true);
	cr_assert_eq(pthread_join(churner, NULL), 0);
	cr_assert_eq(d.err, 0, "dump %ld: %s", atomic_load(&d.done), strerror(-d.err));
	cr_assert_eq(c.err, 0, "%s", strerror(-c.err));
	cr_assert_eq(atomic_load(&d.done), NDUMP);
	cr_log_info("%d dumps beside %ld maps and unmaps", NDUMP, atomic_load(&c.rounds));
	/* every dump wrote into its buffer: the start of its first line */
	for (size_t i = 0; i < NDUMP; i++)
		cr_assert_neq(d.buf[i * ps], 0, "dump %zu", i);
	cr_assert_eq(lazymap_close(d.lm), 0);
}

/* ---------------------------------------------------------- placement */

#define RW   (PROT_READ | PROT_WRITE)
#define ANON (LAZYMAP_PRIVATE | LAZYMAP_ANON)
#define WIN  64 /* pages of a window */

/*
 * WIN free pages between two PROT_NONE guards in a window of the test's own
 * (test_window), so that nothing is mapped there but what a test asks for.
 * Released with window_close after the lazymap is closed (it unmaps all
 * that is left).
 */
static char *window_open(void)
{
	size_t ps = pgsz();
	char *g = test_window((WIN + 2) * ps);

	cr_assert_eq(munmap(g + ps, WIN * ps), 0);
	return g + ps;
}

static void window_close(char *w)
{
	cr_assert_eq(munmap(w - pgsz(), (WIN + 2) * pgsz()), 0);
}

/* The tree says what /proc/self/maps says of our ranges. */
static void expect_mirror(struct lazymap *lm)
{
	struct maps_entry t[MAXE], k[MAXE];
	int nt = tree_read(lm, t, MAXE);

	cr_assert_geq(nt, 0);
	nt = maps_coalesce(t, nt);
	for (int i = 0; i < nt; i++) {
		int nk = maps_coalesce(k, maps_read(t[i].start, t[i].end, k, MAXE));

		cr_assert(nk == 1 && k[0].start == t[i].start && k[0].end == t[i].end &&
			  !strcmp(k[0].perms, t[i].perms),
			  "tree %#lx-%#lx %s: the kernel has %d ranges there, the first %#lx-%#lx %s",
			  (unsigned long)t[i].start, (unsigned long)t[i].end, t[i].perms, nk,
			  nk > 0 ? (unsigned long)k[0].start : 0ul,
			  nk > 0 ? (unsigned long)k[0].end : 0ul, nk > 0 ? k[0].perms : "");
	}
}

/* len bytes at p read as zeros and are ours to write (served, not foreign). */
static void expect_served(char *p, size_t len)
{
	for (size_t off = 0; off < len; off += pgsz()) {
		cr_assert_eq(p[off], 0, "%p", (void *)(p + off));
		p[off] = 1;
	}
}

Test(failed_calls, map_hint_is_taken_when_free)
{
	size_t ps = pgsz();
	struct lazymap *lm;
	char *w = window_open(), *p = w + 8 * ps, *q;

	lm = open_or_skip(NULL);
	cr_assert_eq(lazymap_map(lm, (void **)&p, 8 * ps, RW, ANON | LAZYMAP_HINT, -1, 0), 0);
	cr_assert_eq(p, w + 8 * ps);
	/* an unaligned hint is rounded up, as mmap does */
	q = w + 24 * ps + 100;
	cr_assert_eq(lazymap_map(lm, (void **)&q, 4 * ps, RW, ANON | LAZYMAP_HINT, -1, 0), 0);
	cr_assert_eq(q, w + 25 * ps);
	/* NULL is no hint */
	q = NULL;
	cr_assert_eq(lazymap_map(lm, (void **)&q, ps, RW, ANON | LAZYMAP_HINT, -1, 0), 0);
	cr_assert_not_null(q);
	expect_served(p, 8 * ps);
	expect_mirror(lm);
	cr_assert_eq(lazymap_close(lm), 0);
	window_close(w);
}

/*
 * A hint inside a region of ours goes to the next gap after it that fits: the
 * first gap above the hint; past a neighbour of ours; past a mapping of the
 * program's that sits in the gap (the kernel refuses it).
 */
Test(failed_calls, map_hint_inside_a_region_goes_to_the_next_gap)
{
	size_t ps = pgsz();
	struct lazymap *lm;
	char *w = window_open(), *a = w + 8 * ps, *b = w + 10 * ps, *c = w + 10 * ps, *d, *e, *f;

	lm = open_or_skip(NULL);
	cr_assert_eq(lazymap_map(lm, (void **)&a, 8 * ps, RW, ANON | LAZYMAP_FIXED, -1, 0), 0);
	cr_assert_eq(a, w + 8 * ps);
	cr_assert_eq(lazymap_map(lm, (void **)&b, 8 * ps, RW, ANON | LAZYMAP_HINT, -1, 0), 0);
	cr_assert_eq(b, a + 8 * ps, "%p, want the end of the region, %p", (void *)b,
		     (void *)(a + 8 * ps));
	cr_assert_eq(lazymap_map(lm, (void **)&c, 4 * ps, RW, ANON | LAZYMAP_HINT, -1, 0), 0);
	cr_assert_eq(c, b + 8 * ps, "%p, want past the neighbour, %p", (void *)c,
		     (void *)(b + 8 * ps));
	/* the program's own page right after c: our tree does not know it */
	d = mmap(c + 4 * ps, ps, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
	cr_assert_eq(d, c + 4 * ps);
	d[0] = 42;
	e = c + ps;
	cr_assert_eq(lazymap_map(lm, (void **)&e, 4 * ps, RW, ANON | LAZYMAP_HINT, -1, 0), 0);
	cr_assert(e >= d + ps && e + 4 * ps <= w + WIN * ps,
		  "%p: want above the program's page %p, in the window up to %p", (void *)e,
		  (void *)d, (void *)(w + WIN * ps));
	cr_assert_eq(d[0], 42);
	/* lazymap_map_fill has no flags: the kernel places it, *addrp unread */
	f = a;
	cr_assert_eq(lazymap_map_fill(lm, (void **)&f, ps, PROT_READ, fill_pattern, NULL), 0);
	cr_assert(f < w || f >= w + WIN * ps, "%p", (void *)f);
	expect_served(a, 8 * ps);
	expect_served(b, 8 * ps);
	expect_served(c, 4 * ps);
	expect_served(e, 4 * ps);
	expect_mirror(lm);
	cr_assert_eq(lazymap_close(lm), 0);
	window_close(w);
}

Test(failed_calls, map_fixed_is_exact_or_eexist_and_never_replaces)
{
	struct maps_entry t0[MAXE], t1[MAXE], k0[MAXE], k1[MAXE];
	size_t ps = pgsz();
	struct lazymap *lm;
	char *w = window_open(), *a = w + 8 * ps, *p, *foreign;
	int nt, nk;

	lm = open_or_skip(NULL);
	cr_assert_eq(lazymap_map(lm, (void **)&a, 8 * ps, RW, ANON | LAZYMAP_FIXED, -1, 0), 0);
	cr_assert_eq(a, w + 8 * ps);
	a[0] = 7;
	foreign = mmap(w + 32 * ps, 4 * ps, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
	cr_assert_eq(foreign, w + 32 * ps);
	foreign[ps] = 9;
	nt = tree_read(lm, t0, MAXE);
	nk = maps_read((uintptr_t)w, (uintptr_t)w + WIN * ps, k0, MAXE);

	/* over our region: wholly, its tail, from before it */
	char *over[] = { a, a + 4 * ps, a - 2 * ps, a + 7 * ps };
	for (size_t i = 0; i < sizeof(over) / sizeof(over[0]); i++) {
		p = over[i];
		cr_assert_eq(lazymap_map(lm, (void **)&p, 4 * ps, RW, ANON | LAZYMAP_FIXED, -1, 0),
			     -EEXIST, "at %p", (void *)over[i]);
		cr_assert_eq(p, over[i]);
	}
	/* over the program's mapping, or ending in it */
	p = foreign + ps;
	cr_assert_eq(lazymap_map(lm, (void **)&p, ps, RW, ANON | LAZYMAP_FIXED, -1, 0), -EEXIST);
	p = foreign - 2 * ps;
	cr_assert_eq(lazymap_map(lm, (void **)&p, 4 * ps, RW, ANON | LAZYMAP_FIXED, -1, 0), -EEXIST);
	/* malformed */
	p = w + 40 * ps + 1;
	cr_assert_eq(lazymap_map(lm, (void **)&p, ps, RW, ANON | LAZYMAP_FIXED, -1, 0), -EINVAL);
	p = w + 40 * ps;
	cr_assert_eq(lazymap_map(lm, (void **)&p, ps, RW, ANON | LAZYMAP_FIXED | LAZYMAP_HINT, -1, 0),
		     -EINVAL);
	p = (char *)(UINTPTR_MAX & ~(uintptr_t)(ps - 1));
	cr_assert_eq(lazymap_map(lm, (void **)&p, 2 * ps, RW, ANON | LAZYMAP_FIXED, -1, 0), -EINVAL);

	/* nothing changed */
	cr_assert_eq(tree_read(lm, t1, MAXE), nt);
	cr_assert_eq(maps_read((uintptr_t)w, (uintptr_t)w + WIN * ps, k1, MAXE), nk);
	for (int i = 0; i < nt; i++)
		cr_assert(t1[i].start == t0[i].start && t1[i].end == t0[i].end);
	for (int i = 0; i < nk; i++)
		cr_assert(k1[i].start == k0[i].start && k1[i].end == k0[i].end &&
			  !strcmp(k1[i].perms, k0[i].perms));
	cr_assert_eq(a[0], 7);
	cr_assert_eq(foreign[ps], 9);

	/* a free place: exactly there, right between the two */
	p = foreign - 4 * ps;
	cr_assert_eq(lazymap_map(lm, (void **)&p, 4 * ps, RW, ANON | LAZYMAP_FIXED, -1, 0), 0);
	cr_assert_eq(p, foreign - 4 * ps);
	p = a + 8 * ps;
	cr_assert_eq(lazymap_map(lm, (void **)&p, 4 * ps, PROT_READ, ANON | LAZYMAP_FIXED, -1, 0), 0);
	cr_assert_eq(p, a + 8 * ps);
	cr_assert_eq(p[ps], 0);
	expect_served(foreign - 4 * ps, 4 * ps);
	cr_assert_eq(foreign[ps], 9);
	expect_mirror(lm);
	cr_assert_eq(lazymap_close(lm), 0);
	window_close(w);
}

/* A stream that cannot take the dump: its errno, not a count. */
Test(failed_calls, dump_to_a_full_device_is_enospc)
{
	struct lazymap *lm = open_or_skip(NULL);
	FILE *full = fopen("/dev/full", "w");
	void *p;

	if (!full)
		cr_skip_test("/dev/full: %s", strerror(errno));
	cr_assert_eq(lazymap_map(lm, &p, 1 << 20, PROT_READ, LAZYMAP_PRIVATE | LAZYMAP_ANON, -1, 0), 0);
	cr_assert_eq(lazymap_dump(lm, full), -ENOSPC);
	fclose(full);
	cr_assert_eq(lazymap_close(lm), 0);
}
