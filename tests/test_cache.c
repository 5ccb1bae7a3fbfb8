// SPDX-License-Identifier: MIT
/*
 * The page cache of file regions (issue 10): one cache per file, mapped by
 * every region of that file in the process, in one lazymap or several. A
 * page is read once, then mapped by the kernel with no fault message; a
 * shared region's writes show at once in every region of the file that has
 * not written the page itself; a private region's writes show nowhere else;
 * the file's end; the cache_pages counter. Each body runs on lazymap and,
 * as ..._kernel_reference, on the kernel's own mmap of the same file
 * (struct twin in common.h): a check the kernel fails is a wrong check.
 */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <limits.h>
#include <sys/mman.h>
#include <sys/stat.h>

/* Criterion runs no .fini after a skip: a skip removes the scratch files first. */
static void fx_teardown(void);
#define skip_cleanup() fx_teardown()

#include "common.h"

/* ------------------------------------------------------------ fixture */

/* The test's scratch directory (a disk file system), removed by .fini. */
static struct {
	char dir[PATH_MAX / 2];
} fx;

static void fx_setup(void)
{
	scratch_setup(fx.dir, sizeof(fx.dir), "cache");
}

static void fx_teardown(void)
{
	scratch_drop(fx.dir);
}

#define FIXTURE .init = fx_setup, .fini = fx_teardown

/* The body on lazymap, and the same body on the kernel's mmap. */
#define TEST_WITH_REFERENCE(name, body, ...)                                           \
	Test(cache, name, FIXTURE, __VA_ARGS__) { body(TWIN_LAZYMAP); }                \
	Test(cache, name##_kernel_reference, FIXTURE, __VA_ARGS__) { body(TWIN_MMAP); }

/* ------------------------------------------------------------ files and checks */

static struct lazymap_stats stats_now(struct twin *t)
{
	struct lazymap_stats st = { 0 };

	twin_stats(t, &st);
	return st;
}

/* No fault message, no read() of the userfaultfd, between a and b. */
static void expect_no_messages(const struct lazymap_stats *a, const struct lazymap_stats *b,
			       const char *what)
{
	cr_assert_eq(b->faults, a->faults, "%s: %lu fault messages, want none (the pages were cached)",
		     what, (unsigned long)(b->faults - a->faults));
	cr_assert_eq(b->reads, a->reads, "%s: %lu reads of the userfaultfd returned messages, want none",
		     what, (unsigned long)(b->reads - a->reads));
}

/* Write len bytes of value at mem + off, and in each model given (NULL: skip). */
static void write_bytes(char *mem, size_t off, size_t len, uint8_t value, uint8_t *m1, uint8_t *m2,
			uint8_t *m3)
{
	memset(mem + off, value, len);
	if (m1)
		memset(m1 + off, value, len);
	if (m2)
		memset(m2 + off, value, len);
	if (m3)
		memset(m3 + off, value, len);
}

static bool in_list(const size_t *list, size_t n, size_t v)
{
	for (size_t i = 0; i < n; i++)
		if (list[i] == v)
			return true;
	return false;
}

/* ------------------------------------------------------------ regions of one file */

/*
 * Two private regions and two shared ones (the second at another offset) of
 * one file, in one lazymap. The second private region's first scan finds
 * every page in the cache; a shared write shows at once in the other shared
 * region and in the private regions' pages they have not written (touched
 * or not yet); private writes reach neither the file nor another region.
 */
static void regions_of_one_file(enum twin_kind kind)
{
	size_t ps = pgsz(), npg = 49, len = npg * ps;
	uint64_t size = 48 * ps + 100; /* a partial last page: its tail reads zeros */
	static const size_t p1_pages[] = { 5, 20 }, p2_pages[] = { 9, 21 };
	static const struct {
		size_t pg, off, len;
	} s1_writes[] = { { 1, 0, 4096 }, { 5, 300, 10 }, { 9, 4000, 96 }, { 30, 77, 1 }, { 48, 10, 80 } };
	struct lazymap_stats st0, st1;
	char path[PATH_MAX];
	uint8_t *file_now, *v1, *v2;
	uint8_t *orig = pattern_file(fx.dir, "one", size, 11, npg, path, sizeof(path));
	char *p1, *p2, *p3, *p4, *s1, *s2;
	struct twin t;
	int fd;

	file_now = malloc(len);
	v1 = malloc(len);
	v2 = malloc(len);
	cr_assert(file_now && v1 && v2);
	memcpy(file_now, orig, len);
	memcpy(v1, orig, len);
	memcpy(v2, orig, len);
	twin_open_or_skip(&t, kind, NULL);
	fd = open_file(path, O_RDWR);

	p1 = map_or_fail(&t, len, PROT_READ | PROT_WRITE, LAZYMAP_PRIVATE, fd, 0, "P1");
	p2 = map_or_fail(&t, len, PROT_READ | PROT_WRITE, LAZYMAP_PRIVATE, fd, 0, "P2");
	p3 = map_or_fail(&t, len, PROT_READ, LAZYMAP_PRIVATE, fd, 0, "P3");
	expect_mem("P1, first scan", p1, orig, len);
	twin_quiesce(&t); /* P1's reads ahead have landed */
	st0 = stats_now(&t);
	expect_mem("P2, first scan", p2, orig, len);
	st1 = stats_now(&t);
	expect_no_messages(&st0, &st1, "P2's first scan, after P1's");

	s1 = map_or_fail(&t, len, PROT_READ | PROT_WRITE, LAZYMAP_SHARED, fd, 0, "S1");
	s2 = map_or_fail(&t, len - 2 * ps, PROT_READ | PROT_WRITE, LAZYMAP_SHARED, fd, (off_t)(2 * ps),
			 "S2");
	st0 = stats_now(&t);
	expect_mem("S1, first scan", s1, orig, len);
	expect_mem("S2 (from page 2), first scan", s2, orig + 2 * ps, len - 2 * ps);
	st1 = stats_now(&t);
	/*
	 * Shared writable regions are mapped by the library, write-protected,
	 * so that their first writes are seen: one message per run of cached
	 * pages (16), never a read.
	 */
	cr_assert_leq(st1.faults - st0.faults, 2 * (len / ps + 15) / 16,
		      "the shared regions' first scans: %lu fault messages for %zu cached pages",
		      (unsigned long)(st1.faults - st0.faults), 2 * len / ps);
	cr_assert_eq(st1.bytes_read, st0.bytes_read, "the shared regions' first scans read the file");

	/* The private regions write first: their copies are taken from the file's bytes. */
	for (size_t i = 0; i < 2; i++) {
		write_bytes(p1, p1_pages[i] * ps + 300, 50, (uint8_t)(0xa0 + i), v1, NULL, NULL);
		write_bytes(p2, p2_pages[i] * ps + 290, 50, (uint8_t)(0xb0 + i), v2, NULL, NULL);
	}
	/* Shared writes: at once in S2, and in every private page not written privately. */
	for (size_t i = 0; i < sizeof(s1_writes) / sizeof(s1_writes[0]); i++) {
		size_t pg = s1_writes[i].pg, off = pg * ps + s1_writes[i].off;
		char what[96];

		write_bytes(s1, off, s1_writes[i].len, (uint8_t)(0xc0 + i), file_now,
			    in_list(p1_pages, 2, pg) ? NULL : v1, in_list(p2_pages, 2, pg) ? NULL : v2);
		snprintf(what, sizeof(what), "after S1 wrote page %zu: S2", pg);
		if (pg >= 2)
			expect_mem(what, s2 + (pg - 2) * ps, file_now + pg * ps, ps);
		snprintf(what, sizeof(what), "after S1 wrote page %zu: P1", pg);
		expect_mem(what, p1 + pg * ps, v1 + pg * ps, ps);
		snprintf(what, sizeof(what), "after S1 wrote page %zu: P2", pg);
		expect_mem(what, p2 + pg * ps, v2 + pg * ps, ps);
	}
	/* and the other way: S2's page 10 is the file's page 12 */
	write_bytes(s2, 10 * ps + 1000, 200, 0xd7, NULL, NULL, NULL);
	memset(file_now + 12 * ps + 1000, 0xd7, 200);
	memset(v1 + 12 * ps + 1000, 0xd7, 200);
	memset(v2 + 12 * ps + 1000, 0xd7, 200);
	expect_mem("after S2 wrote the file's page 12: S1", s1 + 12 * ps, file_now + 12 * ps, ps);

	/* Every byte of every region. */
	expect_mem("P1 at the end", p1, v1, len);
	expect_mem("P2 at the end", p2, v2, len);
	expect_mem("P3 (mapped before the shared writes, first touched after)", p3, file_now, len);
	p4 = map_or_fail(&t, len, PROT_READ, LAZYMAP_PRIVATE, fd, 0, "P4");
	expect_mem("P4 (mapped after the shared writes)", p4, file_now, len);
	expect_mem("S1 at the end", s1, file_now, len);
	expect_mem("S2 at the end", s2, file_now + 2 * ps, len - 2 * ps);

	/* The file: the shared writes (S2's too: its page is in S1's range), no private one. */
	cr_assert_eq(twin_sync(&t, s1, len), 0);
	expect_file("after syncing S1's range", fd, file_now, size);
	expect_mem("P1 after the sync", p1, v1, len);
	cr_assert_eq(twin_close(&t), 0);
	expect_file("after close", fd, file_now, size);
	close(fd);
	free(orig);
	free(file_now);
	free(v1);
	free(v2);
}

TEST_WITH_REFERENCE(regions_of_one_file_share_one_cache, regions_of_one_file, .timeout = 60)

/*
 * Two lazymaps (two lazymap_open) mapping one file share its cache: a write
 * through a shared region of one shows at once in the other's shared and
 * private regions, whether they had read the page or not.
 */
static void two_lazymaps(enum twin_kind kind)
{
	size_t ps = pgsz(), npg = 16, len = npg * ps;
	static const size_t a_pages[] = { 0, 3, 12 };
	char path[PATH_MAX];
	uint8_t *model = pattern_file(fx.dir, "two", len, 12, npg, path, sizeof(path));
	struct twin a, b;
	char *sa, *sb, *pb;
	int fd;

	twin_open_or_skip(&a, kind, NULL);
	twin_open_or_skip(&b, kind, NULL);
	fd = open_file(path, O_RDWR);
	sa = map_or_fail(&a, len, PROT_READ | PROT_WRITE, LAZYMAP_SHARED, fd, 0, "A's shared region");
	sb = map_or_fail(&b, len - ps, PROT_READ | PROT_WRITE, LAZYMAP_SHARED, fd, (off_t)ps,
			 "B's shared region (from page 1)");
	pb = map_or_fail(&b, len, PROT_READ, LAZYMAP_PRIVATE, fd, 0, "B's private region");
	expect_mem("B's shared region, pages 1-8", sb, model + ps, 8 * ps); /* B brings these in */
	expect_mem("B's private region, pages 0-4", pb, model, 5 * ps);

	for (size_t i = 0; i < 3; i++) {
		size_t pg = a_pages[i];
		char what[96];

		write_bytes(sa, pg * ps + 100 * i, 700, (uint8_t)(0x31 + i), model, NULL, NULL);
		snprintf(what, sizeof(what), "A wrote page %zu: B's shared region", pg);
		if (pg >= 1)
			expect_mem(what, sb + (pg - 1) * ps, model + pg * ps, ps);
		snprintf(what, sizeof(what), "A wrote page %zu: B's private region", pg);
		expect_mem(what, pb + pg * ps, model + pg * ps, ps);
	}
	write_bytes(sb, 5 * ps + 9, 33, 0x77, NULL, NULL, NULL); /* the file's page 6 */
	memset(model + 6 * ps + 9, 0x77, 33);
	expect_mem("B wrote page 6: A's shared region", sa + 6 * ps, model + 6 * ps, ps);
	expect_mem("A's shared region at the end", sa, model, len);
	expect_mem("B's shared region at the end", sb, model + ps, len - ps);
	expect_mem("B's private region at the end", pb, model, len);

	cr_assert_eq(twin_sync(&a, sa, len), 0);
	cr_assert_eq(twin_sync(&b, sb, len - ps), 0);
	expect_file("after both syncs", fd, model, len);
	cr_assert_eq(twin_close(&b), 0);
	cr_assert_eq(twin_close(&a), 0);
	expect_file("after both closes", fd, model, len);
	close(fd);
	free(model);
}

TEST_WITH_REFERENCE(two_lazymaps_share_one_cache, two_lazymaps, .timeout = 60)

/*
 * A region mapped again after lazymap_unmap, and a private page dropped with
 * MADV_DONTNEED, come from the cache: no fault message, the file's bytes
 * (not the private write that was dropped). A one-page region of the file
 * stays mapped meanwhile: the cache lives as long as a region maps the file.
 */
static void mapped_again(enum twin_kind kind)
{
	size_t ps = pgsz(), npg = 64, len = npg * ps;
	struct lazymap_stats st0, st1;
	char path[PATH_MAX];
	uint8_t *orig = pattern_file(fx.dir, "again", len, 13, npg, path, sizeof(path)), *want;
	char *keep, *r1, *r2;
	struct twin t;
	int fd;

	want = malloc(ps);
	cr_assert_not_null(want);
	twin_open_or_skip(&t, kind, NULL);
	fd = open_file(path, O_RDONLY);
	keep = map_or_fail(&t, ps, PROT_READ, LAZYMAP_PRIVATE, fd, (off_t)(63 * ps), "the keeper");
	expect_mem("the keeper", keep, orig + 63 * ps, ps);
	r1 = map_or_fail(&t, len, PROT_READ | PROT_WRITE, LAZYMAP_PRIVATE, fd, 0, "R1");
	expect_mem("R1, first scan", r1, orig, len);
	cr_assert_eq(twin_unmap(&t, r1, len), 0);

	r2 = map_or_fail(&t, len, PROT_READ | PROT_WRITE, LAZYMAP_PRIVATE, fd, 0, "R2");
	twin_quiesce(&t);
	st0 = stats_now(&t);
	expect_mem("R2 (mapped again after R1's unmap), first scan", r2, orig, len);
	st1 = stats_now(&t);
	expect_no_messages(&st0, &st1, "R2's first scan");

	/* Private writes, two of them dropped: page 10 written, page 30 only read. */
	memset(r2 + 10 * ps, 0xee, ps);
	memset(r2 + 20 * ps + 5, 0x11, 7);
	cr_assert_eq(madvise(r2 + 10 * ps, ps, MADV_DONTNEED), 0, "madvise: %s", strerror(errno));
	cr_assert_eq(madvise(r2 + 30 * ps, ps, MADV_DONTNEED), 0, "madvise: %s", strerror(errno));
	twin_quiesce(&t);
	st0 = stats_now(&t);
	expect_mem("R2's written page 10 after MADV_DONTNEED", r2 + 10 * ps, orig + 10 * ps, ps);
	expect_mem("R2's page 30 after MADV_DONTNEED", r2 + 30 * ps, orig + 30 * ps, ps);
	st1 = stats_now(&t);
	cr_assert_eq(st1.faults, st0.faults,
		     "pages dropped with MADV_DONTNEED: %lu fault messages, want none (cached)",
		     (unsigned long)(st1.faults - st0.faults));
	memcpy(want, orig + 20 * ps, ps);
	memset(want + 5, 0x11, 7);
	expect_mem("R2's written page 20, not dropped", r2 + 20 * ps, want, ps);
	cr_assert_eq(twin_close(&t), 0);
	close(fd);
	free(orig);
	free(want);
}

TEST_WITH_REFERENCE(mapped_again_and_dropped_pages_come_from_the_cache, mapped_again, .timeout = 60)

/*
 * The file's end: the tail of the last page reads zeros, a touch of a page
 * wholly beyond it is SIGBUS at the very address; once the file has grown,
 * pages not touched before read the new bytes. (A page that raised SIGBUS
 * before the growth is left alone: the header does not say what it reads.)
 */
static void end_of_file(enum twin_kind kind)
{
	size_t ps = pgsz(), npg = 8, len = npg * ps;
	uint64_t size = 3 * ps + 100;
	char path[PATH_MAX];
	uint8_t *orig = pattern_file(fx.dir, "eof", size, 14, npg, path, sizeof(path));
	uint8_t *grown = malloc(len);
	struct touch_fault f;
	struct twin t;
	char *p;
	int fd, ret;

	cr_assert_not_null(grown);
	touch_install();
	twin_open_or_skip(&t, kind, NULL);
	fd = open_file(path, O_RDWR);
	p = map_or_fail(&t, len, PROT_READ | PROT_WRITE, LAZYMAP_PRIVATE, fd, 0, "a region past the end");
	cr_assert_eq(touch(p + 3 * ps, -1, NULL).signo, 0);
	expect_mem("up to the end and the last page's tail", p, orig, 4 * ps);
	for (size_t pg = 5; pg <= 6; pg++) {
		char *a = p + pg * ps + 33 * pg;

		for (int again = 0; again < 2; again++) {
			f = touch(a, pg == 6 ? 0x42 : -1, NULL);
			cr_assert_eq(f.signo, SIGBUS, "page %zu beyond the end, %s %d: signal %d", pg,
				     pg == 6 ? "write" : "read", again, f.signo);
			cr_assert_eq(f.addr, (void *)a, "page %zu: si_addr %p, touched %p", pg, f.addr,
				     (void *)a);
		}
	}

	cr_assert_eq(ftruncate(fd, (off_t)len), 0);
	ret = pattern_write(fd, 15, 4 * ps, 4 * ps);
	cr_assert_eq(ret, 0, "growing the file: %s", strerror(-ret));
	pattern_fill(grown, len, 15, 0);
	for (size_t pg = 4; pg < npg; pg += 3) { /* 4 and 7: never touched before */
		char what[64];

		snprintf(what, sizeof(what), "page %zu after the file grew", pg);
		cr_assert_eq(touch(p + pg * ps + 8, -1, NULL).signo, 0, "%s: a signal", what);
		expect_mem(what, p + pg * ps, grown + pg * ps, ps);
	}
	expect_mem("the first pages after the growth", p, orig, 3 * ps);
	cr_assert_eq(twin_close(&t), 0);
	close(fd);
	free(orig);
	free(grown);
}

TEST_WITH_REFERENCE(end_of_file_sigbus_then_a_grown_file_shows_new_pages, end_of_file, .timeout = 60)

/* ------------------------------------------------------------ a forked child's touches */

struct child_touch {
	char *base;
	const uint8_t *orig;
	const size_t *pages;
	size_t n;
	bool followed;   /* lazymap serves the child (fork_followed), or the kernel's own */
};

/* The child reads untouched pages: the file's bytes, or (not followed) SIGSEGV; never zeros. */
static int child_touch_body(struct verdict *v, void *arg)
{
	const struct child_touch *c = arg;
	size_t ps = pgsz();

	for (size_t i = 0; i < c->n; i++) {
		char *a = c->base + c->pages[i] * ps;
		struct touch_fault f = touch(a + 1, -1, NULL);

		if (!c->followed) {
			VCHECK(v, f.signo == SIGSEGV, "page %zu, not followed: signal %d, want SIGSEGV",
			       c->pages[i], f.signo);
			continue;
		}
		VCHECK(v, f.signo == 0, "page %zu: signal %d", c->pages[i], f.signo);
		VCHECK(v, !memcmp(a, c->orig + c->pages[i] * ps, ps),
		       "page %zu reads other bytes than the file's in the child", c->pages[i]);
		v->stage = (int)i + 1;
	}
	return 0;
}

/*
 * A forked child touching pages nobody had touched: what it reads is the
 * file's, and what the parent then reads too. The pitfall: a hole
 * touched through a mapping that userfaultfd does not watch is filled by the
 * kernel with zeros inside the cache, which every region would then show.
 */
static void child_touches(enum twin_kind kind)
{
	size_t ps = pgsz(), npg = 48, len = npg * ps;
	static const size_t pages[] = { 3, 17, 40 };
	static const int kinds[] = { LAZYMAP_PRIVATE, LAZYMAP_SHARED };
	char path[PATH_MAX];
	uint8_t *orig = pattern_file(fx.dir, "fork", len, 16, npg, path, sizeof(path));
	struct verdict *v = verdict_new();
	struct lazymap_stats st = { .fork_followed = 1 };
	struct twin t;
	int fd;

	cr_assert_not_null(v);
	touch_install();
	twin_open_or_skip(&t, kind, NULL);
	twin_stats(&t, &st);
	fd = open_file(path, O_RDWR);
	for (size_t k = 0; k < 2; k++) {
		const char *what = kinds[k] == LAZYMAP_SHARED ? "shared" : "private";
		struct child_touch c = { .orig = orig, .pages = pages, .n = 3,
					 .followed = st.fork_followed != 0 };

		c.base = map_or_fail(&t, len, PROT_READ | PROT_WRITE, kinds[k], fd, 0, what);
		verdict_expect(v, verdict_fork(v, child_touch_body, &c, 30), 0, what);
		for (size_t i = 0; i < 3; i++) {
			char msg[96];

			snprintf(msg, sizeof(msg), "%s region: page %zu, first touched by a child", what,
				 pages[i]);
			expect_mem(msg, c.base + pages[i] * ps, orig + pages[i] * ps, ps);
		}
		expect_mem(what, c.base, orig, len);
		cr_assert_eq(twin_unmap(&t, c.base, len), 0);
	}
	expect_file("after the children", fd, orig, len);
	cr_assert_eq(twin_close(&t), 0);
	close(fd);
	verdict_free(v);
	free(orig);
}

TEST_WITH_REFERENCE(forked_child_touch_never_plants_zeros, child_touches, .timeout = 60)

/* ------------------------------------------------------------ cache_pages */

/*
 * cache_pages counts the pages of the caches of the files lm maps: none
 * before a touch, at least the pages scanned and at most the file's, kept
 * while a region maps the file, 0 once no region does. Two files, so that
 * one file's cache is seen to go while the other's stays.
 */
Test(cache, cache_pages_counts_each_file_until_its_last_region_goes, FIXTURE, .timeout = 60)
{
	size_t ps = pgsz(), na = 64, nb = 16;
	char apath[PATH_MAX], bpath[PATH_MAX];
	uint8_t *a = pattern_file(fx.dir, "a", na * ps, 17, na, apath, sizeof(apath));
	uint8_t *b = pattern_file(fx.dir, "b", nb * ps, 18, nb, bpath, sizeof(bpath));
	struct lazymap_stats st;
	char *ra1, *ra2, *rb;
	struct twin t;
	int afd, bfd;

	twin_open_or_skip(&t, TWIN_LAZYMAP, NULL);
	afd = open_file(apath, O_RDONLY);
	bfd = open_file(bpath, O_RDONLY);
	ra1 = map_or_fail(&t, na * ps, PROT_READ, LAZYMAP_PRIVATE, afd, 0, "A");
	ra2 = map_or_fail(&t, 8 * ps, PROT_READ, LAZYMAP_PRIVATE, afd, 0, "A's first 8 pages");
	rb = map_or_fail(&t, nb * ps, PROT_READ, LAZYMAP_PRIVATE, bfd, 0, "B");
	st = stats_now(&t);
	cr_assert_eq(st.cache_pages, 0, "before any touch: cache_pages %lu", (unsigned long)st.cache_pages);

	expect_mem("A", ra1, a, na * ps);
	quiesce(t.lm);
	st = stats_now(&t);
	cr_assert_eq(st.cache_pages, na, "after scanning all %zu pages of A: cache_pages %lu", na,
		     (unsigned long)st.cache_pages);
	expect_mem("B's first 10 pages", rb, b, 10 * ps);
	quiesce(t.lm);
	st = stats_now(&t);
	cr_assert(st.cache_pages >= na + 10 && st.cache_pages <= na + nb,
		  "after A (%zu pages) and 10 of B's %zu: cache_pages %lu", na, nb,
		  (unsigned long)st.cache_pages);

	cr_assert_eq(lazymap_unmap(t.lm, ra1, na * ps), 0);
	st = stats_now(&t);
	cr_assert_geq(st.cache_pages, na + 10,
		      "A still mapped by a region of 8 pages: cache_pages %lu, want A's %zu and 10+ of B's",
		      (unsigned long)st.cache_pages, na);
	cr_assert_eq(lazymap_unmap(t.lm, ra2, 8 * ps), 0);
	st = stats_now(&t);
	cr_assert(st.cache_pages >= 10 && st.cache_pages <= nb,
		  "no region maps A any more: cache_pages %lu, want B's (10 to %zu)",
		  (unsigned long)st.cache_pages, nb);
	cr_assert_eq(lazymap_unmap(t.lm, rb, nb * ps), 0);
	st = stats_now(&t);
	cr_assert_eq(st.cache_pages, 0, "no region maps a file: cache_pages %lu",
		     (unsigned long)st.cache_pages);
	cr_assert_eq(twin_close(&t), 0);
	close(afd);
	close(bfd);
	free(a);
	free(b);
}

/*
 * Twenty files, each mapped by two regions: cache_pages counts each file's
 * cache once (a review found the count doubling past sixteen files).
 */
Test(cache, cache_pages_counts_many_files_once, FIXTURE, .timeout = 60)
{
	enum { NFILES = 20, NPG = 4 };
	size_t ps = pgsz();
	struct lazymap_stats st;
	struct twin t;
	int fds[NFILES];

	twin_open_or_skip(&t, TWIN_LAZYMAP, NULL);
	for (int i = 0; i < NFILES; i++) {
		char path[PATH_MAX], name[16];
		uint8_t *bytes;
		char *r1, *r2;

		snprintf(name, sizeof(name), "f%d", i);
		bytes = pattern_file(fx.dir, name, NPG * ps, 40 + (uint64_t)i, NPG, path, sizeof(path));
		fds[i] = open_file(path, O_RDONLY);
		r1 = map_or_fail(&t, NPG * ps, PROT_READ, LAZYMAP_PRIVATE, fds[i], 0, "first region");
		r2 = map_or_fail(&t, NPG * ps, PROT_READ, LAZYMAP_PRIVATE, fds[i], 0, "second region");
		expect_mem("first region", r1, bytes, NPG * ps);
		expect_mem("second region", r2, bytes, NPG * ps);
		free(bytes);
	}
	quiesce(t.lm);
	st = stats_now(&t);
	cr_assert_eq(st.cache_pages, NFILES * NPG, "%d files of %d pages, two regions each: "
		     "cache_pages %lu", NFILES, NPG, (unsigned long)st.cache_pages);
	cr_assert_eq(twin_close(&t), 0);
	for (int i = 0; i < NFILES; i++)
		close(fds[i]);
}
