// SPDX-License-Identifier: MIT
/*
 * The VMA tree (lib/vma.c): unit tests at the edges of every operation, then a
 * randomized model test against a plain sorted array, replayable by seed
 * (LAZYMAP_SEED=n).
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <inttypes.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "internal.h"

#define RW (PROT_READ | PROT_WRITE)
#define RO PROT_READ

static uintptr_t pg(uintptr_t n)
{
	return n * lzm_page_size;
}

static unsigned refs(struct source *src)
{
	return atomic_load(&src->refs);
}

/* A VMA of pages [s, e) inserted into t; it takes its own reference on src. */
static struct vma *add_flags(struct vma_tree *t, uintptr_t s, uintptr_t e, int prot, int flags,
			     struct source *src, uint64_t pgoff)
{
	struct vma *v = lzm_vma_alloc();
	int ret;

	cr_assert_not_null(v);
	v->start = pg(s);
	v->end = pg(e);
	v->prot = prot;
	v->flags = flags;
	v->src = src;
	v->pgoff = pgoff;
	lzm_source_get(src);
	ret = lzm_vma_insert(t, v);
	cr_assert_eq(ret, 0, "insert [%lu, %lu) pages: %d", (unsigned long)s, (unsigned long)e, ret);
	return v;
}

static struct vma *add(struct vma_tree *t, uintptr_t s, uintptr_t e, int prot, struct source *src,
		       uint64_t pgoff)
{
	return add_flags(t, s, e, prot, LAZYMAP_PRIVATE, src, pgoff);
}

static void destroy(struct vma_tree *t)
{
	struct vma *v;

	while ((v = lzm_vma_first(t))) {
		lzm_vma_erase(t, v);
		lzm_vma_free(v);
	}
	cr_assert_eq(t->count, 0);
	cr_assert_null(t->root);
}

static void expect_range(const struct vma *v, uintptr_t s, uintptr_t e, uint64_t pgoff)
{
	cr_assert_not_null(v);
	cr_assert_eq(v->start, pg(s), "start %#lx, want page %lu", (unsigned long)v->start,
		     (unsigned long)s);
	cr_assert_eq(v->end, pg(e), "end %#lx, want page %lu", (unsigned long)v->end,
		     (unsigned long)e);
	cr_assert_eq(v->pgoff, pgoff, "pgoff %" PRIu64 ", want %" PRIu64, v->pgoff, pgoff);
}

/* The tree, in order, as (node, start, end) triples, to show it did not move. */
struct snap {
	size_t n;
	struct {
		const struct vma *v;
		uintptr_t start, end;
		uint64_t pgoff;
	} e[16];
};

static void take_snap(const struct vma_tree *t, struct snap *s)
{
	const struct vma *v;

	memset(s, 0, sizeof(*s));
	for (v = lzm_vma_first(t); v; v = lzm_vma_next(v)) {
		cr_assert_lt(s->n, 16);
		s->e[s->n].v = v;
		s->e[s->n].start = v->start;
		s->e[s->n].end = v->end;
		s->e[s->n].pgoff = v->pgoff;
		s->n++;
	}
}

static void expect_snap(const struct vma_tree *t, const struct snap *want)
{
	struct snap now;

	take_snap(t, &now);
	cr_assert_eq(now.n, want->n, "tree has %zu VMAs, had %zu", now.n, want->n);
	cr_assert_eq(t->count, want->n);
	cr_assert_arr_eq(&now, want, sizeof(now), "tree changed");
	cr_assert_eq(lzm_vma_tree_check(t), 0);
}

/* ------------------------------------------------------------ find */

Test(vma_tree, empty)
{
	struct vma_tree t;
	struct vma *prev = (struct vma *)1;
	uintptr_t addr = 0;

	lzm_vma_tree_init(&t);
	cr_assert_eq(lzm_vma_tree_check(&t), 0);
	cr_assert_null(lzm_vma_first(&t));
	cr_assert_null(lzm_vma_last(&t));
	cr_assert_null(lzm_vma_find(&t, 0));
	cr_assert_null(lzm_vma_find(&t, UINTPTR_MAX));
	cr_assert_null(lzm_vma_lookup(&t, pg(5)));
	cr_assert_null(lzm_vma_find_prev(&t, pg(5), &prev));
	cr_assert_null(prev);
	cr_assert_eq(lzm_vma_find_gap(&t, pg(2), pg(3), pg(10), &addr), 0);
	cr_assert_eq(addr, pg(3));
	cr_assert_eq(lzm_vma_find_gap(&t, pg(2), 0, pg(10), &addr), 0);
	cr_assert_eq(addr, 0);
}

Test(vma_tree, find_boundaries)
{
	struct vma_tree t;
	struct vma *a, *b, *prev;

	lzm_vma_tree_init(&t);
	a = add(&t, 2, 4, RW, NULL, 0);
	b = add(&t, 6, 9, RW, NULL, 0);

	cr_assert_eq(lzm_vma_first(&t), a);
	cr_assert_eq(lzm_vma_last(&t), b);
	cr_assert_eq(lzm_vma_next(a), b);
	cr_assert_null(lzm_vma_next(b));
	cr_assert_eq(lzm_vma_prev(b), a);
	cr_assert_null(lzm_vma_prev(a));

	/* lzm_vma_find: first VMA with end > addr */
	cr_assert_eq(lzm_vma_find(&t, 0), a);           /* before the first */
	cr_assert_eq(lzm_vma_find(&t, pg(2) - 1), a);
	cr_assert_eq(lzm_vma_find(&t, pg(2)), a);       /* == start */
	cr_assert_eq(lzm_vma_find(&t, pg(4) - 1), a);   /* == end - 1 */
	cr_assert_eq(lzm_vma_find(&t, pg(4)), b);       /* == end: the next one */
	cr_assert_eq(lzm_vma_find(&t, pg(5) + 7), b);   /* in the hole */
	cr_assert_eq(lzm_vma_find(&t, pg(9) - 1), b);
	cr_assert_null(lzm_vma_find(&t, pg(9)));        /* after the last */
	cr_assert_null(lzm_vma_find(&t, UINTPTR_MAX));

	cr_assert_null(lzm_vma_lookup(&t, 0));
	cr_assert_null(lzm_vma_lookup(&t, pg(2) - 1));
	cr_assert_eq(lzm_vma_lookup(&t, pg(2)), a);
	cr_assert_eq(lzm_vma_lookup(&t, pg(4) - 1), a);
	cr_assert_null(lzm_vma_lookup(&t, pg(4)));
	cr_assert_null(lzm_vma_lookup(&t, pg(6) - 1));
	cr_assert_eq(lzm_vma_lookup(&t, pg(6)), b);
	cr_assert_eq(lzm_vma_lookup(&t, pg(9) - 1), b);
	cr_assert_null(lzm_vma_lookup(&t, pg(9)));

	cr_assert_eq(lzm_vma_find_prev(&t, 0, &prev), a);
	cr_assert_null(prev);
	cr_assert_eq(lzm_vma_find_prev(&t, pg(2), &prev), a);
	cr_assert_null(prev);
	cr_assert_eq(lzm_vma_find_prev(&t, pg(4) - 1, &prev), a);
	cr_assert_null(prev);
	cr_assert_eq(lzm_vma_find_prev(&t, pg(4), &prev), b);
	cr_assert_eq(prev, a);
	cr_assert_eq(lzm_vma_find_prev(&t, pg(6), &prev), b);
	cr_assert_eq(prev, a);
	cr_assert_eq(lzm_vma_find_prev(&t, pg(9) - 1, &prev), b);
	cr_assert_eq(prev, a);
	cr_assert_null(lzm_vma_find_prev(&t, pg(9), &prev));
	cr_assert_eq(prev, b);
	cr_assert_null(lzm_vma_find_prev(&t, UINTPTR_MAX, &prev));
	cr_assert_eq(prev, b);

	destroy(&t);
}

/* ------------------------------------------------------------ insert */

Test(vma_tree, insert_overlap)
{
	static const uintptr_t bad[][2] = {
		{ 15, 25 }, { 5, 11 }, { 19, 31 }, { 0, 100 }, { 10, 20 },
		{ 12, 13 }, { 39, 41 }, { 35, 36 }, { 9, 40 }, { 10, 11 },
	};
	struct vma_tree t;
	struct vma *v;
	struct snap before;
	size_t i;

	lzm_vma_tree_init(&t);
	add(&t, 10, 20, RW, NULL, 0);
	add(&t, 30, 40, RW, NULL, 0);
	take_snap(&t, &before);

	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		v = lzm_vma_alloc();
		cr_assert_not_null(v);
		v->start = pg(bad[i][0]);
		v->end = pg(bad[i][1]);
		cr_assert_eq(lzm_vma_insert(&t, v), -EEXIST, "[%lu, %lu) pages",
			     (unsigned long)bad[i][0], (unsigned long)bad[i][1]);
		expect_snap(&t, &before);
		lzm_vma_free(v);
	}
	/* Touching is not overlapping. */
	add(&t, 20, 30, RW, NULL, 0);
	add(&t, 0, 10, RW, NULL, 0);
	add(&t, 40, 41, RW, NULL, 0);
	cr_assert_eq(t.count, 5);
	cr_assert_eq(lzm_vma_tree_check(&t), 0);
	destroy(&t);
}

/* Ascending inserts are the worst case of an unbalanced tree. */
Test(vma_tree, balanced)
{
	enum { N = 5000 };
	struct vma_tree t;
	struct vma *v;
	unsigned depth, maxdepth = 0, i;

	lzm_vma_tree_init(&t);
	for (i = 0; i < N; i++)
		add(&t, 2 * i, 2 * i + 1, RW, NULL, i);
	cr_assert_eq(t.count, N);
	cr_assert_eq(lzm_vma_tree_check(&t), 0);
	for (v = lzm_vma_first(&t); v; v = lzm_vma_next(v)) {
		const struct vma *x;

		for (depth = 0, x = v; x; x = x->rb_parent)
			depth++;
		if (depth > maxdepth)
			maxdepth = depth;
	}
	/* A red-black tree of n nodes is at most 2 log2(n + 1) high. */
	cr_assert_leq(maxdepth, 24, "height %u for %u nodes", maxdepth, N);
	/* Every other VMA away, from the middle out: erase rebalances too. */
	for (i = 0; i < N; i += 2) {
		v = lzm_vma_lookup(&t, pg(2 * i));
		cr_assert_not_null(v);
		lzm_vma_erase(&t, v);
		lzm_vma_free(v);
	}
	cr_assert_eq(t.count, N / 2);
	cr_assert_eq(lzm_vma_tree_check(&t), 0);
	destroy(&t);
}

/* ------------------------------------------------------------ split */

Test(vma_tree, split_bad_addr)
{
	struct vma_tree t;
	struct vma *v, *nv = (struct vma *)1;
	struct snap before;
	uintptr_t bad[] = { pg(10), pg(20), pg(5), pg(25), pg(15) + 1, pg(15) - 1, 0, UINTPTR_MAX };
	size_t i;

	lzm_vma_tree_init(&t);
	v = add(&t, 10, 20, RW, NULL, 7);
	add(&t, 30, 31, RW, NULL, 0);
	take_snap(&t, &before);
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		cr_assert_eq(lzm_vma_split(&t, v, bad[i], &nv), -EINVAL, "addr %#lx",
			     (unsigned long)bad[i]);
		cr_assert_eq(nv, (struct vma *)1, "*newp written on failure");
		expect_snap(&t, &before);
	}
	destroy(&t);
}

Test(vma_tree, split)
{
	struct vma_tree t;
	struct source *src;
	struct vma *v, *nv = NULL, *next;
	unsigned r0;

	cr_assert_eq(lzm_source_new_zero(64, &src), 0);
	r0 = refs(src);
	lzm_vma_tree_init(&t);
	v = add_flags(&t, 10, 20, RO, LAZYMAP_SHARED, src, 100);
	next = add(&t, 25, 26, RW, NULL, 0);
	atomic_store(&v->ra_next, 42);
	atomic_store(&v->ra_window, 8);

	cr_assert_eq(lzm_vma_split(&t, v, pg(13), &nv), 0);
	cr_assert_neq(nv, v);
	expect_range(v, 10, 13, 100);
	expect_range(nv, 13, 20, 103);
	cr_assert_eq(nv->prot, RO);
	cr_assert_eq(nv->flags, LAZYMAP_SHARED);
	cr_assert_eq(nv->src, src);
	cr_assert_eq(atomic_load(&nv->ra_next), 0);
	cr_assert_eq(atomic_load(&nv->ra_window), 0);
	cr_assert_eq(atomic_load(&v->ra_next), 42, "the split-off part keeps its stream");
	cr_assert_eq(refs(src), r0 + 2);
	cr_assert_eq(t.count, 3);
	cr_assert_eq(lzm_vma_next(v), nv);
	cr_assert_eq(lzm_vma_next(nv), next);
	cr_assert_eq(lzm_vma_lookup(&t, pg(13)), nv);
	cr_assert_eq(lzm_vma_lookup(&t, pg(13) - 1), v);
	cr_assert_eq(lzm_vma_tree_check(&t), 0);

	/* The last page. */
	cr_assert_eq(lzm_vma_split(&t, nv, pg(19), &nv), 0);
	expect_range(nv, 19, 20, 109);
	cr_assert_eq(refs(src), r0 + 3);

	destroy(&t);
	cr_assert_eq(refs(src), r0);
	lzm_source_put(src);
}

/* ------------------------------------------------------------ merge */

Test(vma_tree, merge_refused)
{
	struct vma_tree t;
	struct source *s1, *s2;
	struct vma *a, *b;

	cr_assert_eq(lzm_source_new_zero(64, &s1), 0);
	cr_assert_eq(lzm_source_new_zero(64, &s2), 0);
	lzm_vma_tree_init(&t);

	/* prot */
	a = add(&t, 0, 4, RW, s1, 0);
	b = add(&t, 4, 8, RO, s1, 4);
	cr_assert_not(lzm_vma_can_merge(a, b));
	cr_assert_eq(lzm_vma_merge(&t, b), b);
	cr_assert_eq(lzm_vma_merge(&t, a), a);
	cr_assert_eq(t.count, 2);
	destroy(&t);

	/* source */
	a = add(&t, 0, 4, RW, s1, 0);
	b = add(&t, 4, 8, RW, s2, 4);
	cr_assert_not(lzm_vma_can_merge(a, b));
	cr_assert_eq(lzm_vma_merge(&t, b), b);
	cr_assert_eq(t.count, 2);
	destroy(&t);

	/* one with a source, one without */
	a = add(&t, 0, 4, RW, NULL, 0);
	b = add(&t, 4, 8, RW, s2, 4);
	cr_assert_eq(lzm_vma_merge(&t, a), a);
	cr_assert_eq(t.count, 2);
	destroy(&t);

	/* flags */
	a = add_flags(&t, 0, 4, RW, LAZYMAP_PRIVATE, s1, 0);
	b = add_flags(&t, 4, 8, RW, LAZYMAP_SHARED, s1, 4);
	cr_assert_eq(lzm_vma_merge(&t, b), b);
	cr_assert_eq(t.count, 2);
	destroy(&t);

	/* pgoff not contiguous, either way */
	a = add(&t, 0, 4, RW, s1, 0);
	b = add(&t, 4, 8, RW, s1, 5);
	cr_assert_eq(lzm_vma_merge(&t, b), b);
	cr_assert_eq(t.count, 2);
	destroy(&t);
	a = add(&t, 0, 4, RW, s1, 10);
	b = add(&t, 4, 8, RW, s1, 4);
	cr_assert_eq(lzm_vma_merge(&t, a), a);
	cr_assert_eq(t.count, 2);
	destroy(&t);

	/* not adjacent, though pgoff would be */
	a = add(&t, 0, 4, RW, s1, 0);
	b = add(&t, 5, 9, RW, s1, 4);
	cr_assert_not(lzm_vma_can_merge(a, b));
	cr_assert_eq(lzm_vma_merge(&t, b), b);
	cr_assert_eq(lzm_vma_merge(&t, a), a);
	cr_assert_eq(t.count, 2);
	expect_range(a, 0, 4, 0);
	expect_range(b, 5, 9, 4);
	cr_assert_eq(lzm_vma_tree_check(&t), 0);
	destroy(&t);

	cr_assert_eq(refs(s1), 1);
	cr_assert_eq(refs(s2), 1);
	lzm_source_put(s1);
	lzm_source_put(s2);
}

Test(vma_tree, merge_both_sides)
{
	struct vma_tree t;
	struct source *src;
	struct vma *a, *b, *c, *d, *m;
	uintptr_t addr;

	cr_assert_eq(lzm_source_new_zero(64, &src), 0);
	lzm_vma_tree_init(&t);
	a = add(&t, 2, 4, RW, src, 10);
	b = add(&t, 4, 6, RW, src, 12);
	c = add(&t, 6, 10, RW, src, 14);
	d = add(&t, 12, 13, RW, src, 20); /* a hole before it: stays */
	cr_assert(lzm_vma_can_merge(a, b));
	cr_assert(lzm_vma_can_merge(b, c));
	cr_assert_eq(refs(src), 5);

	m = lzm_vma_merge(&t, b);
	cr_assert_eq(m, a, "the lowest VMA survives");
	expect_range(m, 2, 10, 10);
	cr_assert_eq(t.count, 2);
	cr_assert_eq(lzm_vma_next(m), d);
	cr_assert_eq(lzm_vma_lookup(&t, pg(9)), m);
	cr_assert_eq(refs(src), 3);
	cr_assert_eq(lzm_vma_tree_check(&t), 0);
	/* The gaps moved with the ends. */
	cr_assert_eq(lzm_vma_find_gap(&t, pg(2), 0, UINTPTR_MAX, &addr), 0);
	cr_assert_eq(addr, 0);
	cr_assert_eq(lzm_vma_find_gap(&t, pg(3), 0, UINTPTR_MAX, &addr), 0);
	cr_assert_eq(addr, pg(13));
	destroy(&t);

	/* Only with the next one: v survives and grows up. */
	a = add(&t, 0, 4, RO, src, 0);
	b = add(&t, 4, 6, RW, src, 4);
	c = add(&t, 6, 10, RW, src, 6);
	m = lzm_vma_merge(&t, b);
	cr_assert_eq(m, b);
	expect_range(m, 4, 10, 4);
	cr_assert_eq(lzm_vma_prev(m), a);
	cr_assert_eq(t.count, 2);
	destroy(&t);

	/* Only with the previous one. */
	a = add(&t, 0, 4, RW, src, 0);
	b = add(&t, 4, 6, RW, src, 4);
	c = add(&t, 6, 10, RW, NULL, 6);
	m = lzm_vma_merge(&t, b);
	cr_assert_eq(m, a);
	expect_range(m, 0, 6, 0);
	cr_assert_eq(lzm_vma_next(m), c);
	cr_assert_eq(t.count, 2);
	cr_assert_eq(lzm_vma_tree_check(&t), 0);
	destroy(&t);

	cr_assert_eq(refs(src), 1);
	lzm_source_put(src);
}

Test(vma_tree, split_merge_refs)
{
	struct vma_tree t;
	struct source *src;
	struct vma *v, *nv, *m;
	unsigned r0;
	uintptr_t i;

	cr_assert_eq(lzm_source_new_zero(64, &src), 0);
	r0 = refs(src);
	lzm_vma_tree_init(&t);
	v = add(&t, 8, 24, RW, src, 3);
	cr_assert_eq(refs(src), r0 + 1);
	for (i = 12; i < 24; i += 4) {
		cr_assert_eq(lzm_vma_split(&t, lzm_vma_lookup(&t, pg(i)), pg(i), &nv), 0);
		cr_assert_eq(nv->pgoff, 3 + i - 8);
	}
	cr_assert_eq(t.count, 4);
	cr_assert_eq(refs(src), r0 + 4);

	/* Give the middle ones another prot, then back: merge must refuse, then
	 * rejoin all four into the first. */
	for (i = 12; i < 20; i += 4)
		lzm_vma_lookup(&t, pg(i))->prot = RO;
	for (v = lzm_vma_first(&t); v; v = lzm_vma_next(v))
		v = lzm_vma_merge(&t, v);
	cr_assert_eq(t.count, 3);
	cr_assert_eq(refs(src), r0 + 3);
	expect_range(lzm_vma_lookup(&t, pg(12)), 12, 20, 7);
	lzm_vma_lookup(&t, pg(12))->prot = RW;
	m = lzm_vma_merge(&t, lzm_vma_lookup(&t, pg(12)));
	expect_range(m, 8, 24, 3);
	cr_assert_eq(t.count, 1);
	cr_assert_eq(refs(src), r0 + 1);
	cr_assert_eq(lzm_vma_tree_check(&t), 0);

	destroy(&t);
	cr_assert_eq(refs(src), r0);
	lzm_source_put(src);
}

/* ------------------------------------------------------------ gap search */

static uintptr_t gap_at(const struct vma_tree *t, size_t len, uintptr_t low, uintptr_t high)
{
	uintptr_t addr = 0xdead;
	int ret = lzm_vma_find_gap(t, len, low, high, &addr);

	cr_assert_eq(ret, 0, "gap len %#zx low %#lx high %#lx: %d", len, (unsigned long)low,
		     (unsigned long)high, ret);
	return addr;
}

static void no_gap(const struct vma_tree *t, size_t len, uintptr_t low, uintptr_t high, int err)
{
	uintptr_t addr = 0xdead;
	int ret = lzm_vma_find_gap(t, len, low, high, &addr);

	cr_assert_eq(ret, err, "gap len %#zx low %#lx high %#lx: %d, addr %#lx", len,
		     (unsigned long)low, (unsigned long)high, ret, (unsigned long)addr);
	cr_assert_eq(addr, 0xdead);
}

Test(vma_tree, find_gap)
{
	const uintptr_t top = UINTPTR_MAX;
	struct vma_tree t;

	lzm_vma_tree_init(&t);
	add(&t, 4, 8, RW, NULL, 0);
	add(&t, 10, 12, RW, NULL, 0);
	add(&t, 20, 30, RW, NULL, 0);

	/* Before the first VMA (its gap counts from 0). */
	cr_assert_eq(gap_at(&t, pg(1), 0, top), 0);
	cr_assert_eq(gap_at(&t, pg(4), 0, top), 0);
	cr_assert_eq(gap_at(&t, pg(2), pg(1), top), pg(1));
	cr_assert_eq(gap_at(&t, pg(2), pg(2), top), pg(2));
	/* Between: the first that fits, not the largest. */
	cr_assert_eq(gap_at(&t, pg(2), pg(3), top), pg(8));
	cr_assert_eq(gap_at(&t, pg(5), 0, top), pg(12));
	cr_assert_eq(gap_at(&t, pg(8), 0, top), pg(12));
	cr_assert_eq(gap_at(&t, pg(1), pg(11), top), pg(12));
	cr_assert_eq(gap_at(&t, pg(7), pg(13), top), pg(13));
	/* After the last. */
	cr_assert_eq(gap_at(&t, pg(9), 0, top), pg(30));
	cr_assert_eq(gap_at(&t, pg(2), pg(19), top), pg(30));
	cr_assert_eq(gap_at(&t, pg(1), pg(100), top), pg(100));
	/* low is rounded up to a page; len need not be a page multiple. */
	cr_assert_eq(gap_at(&t, pg(2), pg(12) + 1, top), pg(13));
	cr_assert_eq(gap_at(&t, pg(1) + 1, 0, top), 0);
	cr_assert_eq(gap_at(&t, pg(2) + 1, pg(8), top), pg(12));
	cr_assert_eq(gap_at(&t, pg(8), pg(12), top), pg(12));
	cr_assert_eq(gap_at(&t, pg(8) + 1, pg(12), top), pg(30));
	/* high bounds the end. */
	cr_assert_eq(gap_at(&t, pg(4), 0, pg(4)), 0);
	cr_assert_eq(gap_at(&t, pg(2), pg(3), pg(10)), pg(8));
	cr_assert_eq(gap_at(&t, pg(9), 0, pg(39)), pg(30));
	no_gap(&t, pg(9), 0, pg(38), -ENOMEM);
	no_gap(&t, pg(2), pg(3), pg(9), -ENOMEM);
	no_gap(&t, pg(3), pg(4), pg(14), -ENOMEM);
	no_gap(&t, pg(1), pg(10), pg(5), -ENOMEM);   /* high below low */
	no_gap(&t, pg(1), pg(10), pg(10), -ENOMEM);  /* empty window */
	no_gap(&t, pg(2), 0, pg(1), -ENOMEM);        /* high below len */
	no_gap(&t, pg(1), top - 5, top, -ENOMEM);     /* low rounds up past the top */
	no_gap(&t, top - pg(2), 0, top, -ENOMEM);    /* bigger than everything after 0 */
	no_gap(&t, 0, 0, top, -EINVAL);
	destroy(&t);

	/* A first VMA at 0 has no gap before it. */
	add(&t, 0, 4, RW, NULL, 0);
	cr_assert_eq(gap_at(&t, pg(1), 0, top), pg(4));
	no_gap(&t, pg(1), 0, pg(4), -ENOMEM);
	destroy(&t);
}

/* ------------------------------------------------------------ tree check */

/* The check must catch what it claims to; otherwise the model test proves nothing. */
Test(vma_tree, check_catches)
{
	struct vma_tree t;
	struct vma *v, *r;
	uintptr_t i, saved;

	lzm_vma_tree_init(&t);
	for (i = 0; i < 40; i++)
		add(&t, 3 * i + (i % 2), 3 * i + 2, RW, NULL, 0);
	cr_assert_eq(lzm_vma_tree_check(&t), 0);
	r = t.root;
	v = lzm_vma_lookup(&t, pg(3 * 16));
	cr_assert_not_null(v);

	saved = v->subtree_gap;
	v->subtree_gap += lzm_page_size;
	cr_assert_eq(lzm_vma_tree_check(&t), -EUCLEAN, "wrong subtree_gap");
	v->subtree_gap = saved;

	r->rb_red = true;
	cr_assert_eq(lzm_vma_tree_check(&t), -EUCLEAN, "red root");
	r->rb_red = false;

	t.count++;
	cr_assert_eq(lzm_vma_tree_check(&t), -EUCLEAN, "count");
	t.count -= 2;
	cr_assert_eq(lzm_vma_tree_check(&t), -EUCLEAN, "count");
	t.count++;

	saved = v->end;
	v->end = v->start;
	cr_assert_eq(lzm_vma_tree_check(&t), -EUCLEAN, "empty VMA");
	v->end = saved + lzm_page_size * 3; /* overlaps the next one */
	cr_assert_eq(lzm_vma_tree_check(&t), -EUCLEAN, "overlap");
	v->end = saved + 1;
	cr_assert_eq(lzm_vma_tree_check(&t), -EUCLEAN, "unaligned");
	v->end = saved;

	/* Recolouring a black non-root node breaks the black height or makes red-red. */
	v = lzm_vma_first(&t);
	while (v->rb_red)
		v = lzm_vma_next(v);
	v->rb_red = true;
	cr_assert_eq(lzm_vma_tree_check(&t), -EUCLEAN, "black height / red-red");
	v->rb_red = false;

	v = lzm_vma_last(&t);
	r = v->rb_parent;
	v->rb_parent = NULL;
	cr_assert_eq(lzm_vma_tree_check(&t), -EUCLEAN, "parent link");
	v->rb_parent = r;

	cr_assert_eq(lzm_vma_tree_check(&t), 0);
	destroy(&t);
}

/* ------------------------------------------------------------ model test */

#define SPACE    4096u /* pages: small, so that inserts collide and VMAs touch */
#define MAX_VMAS 300u
#define NSRC     3     /* two real sources and NULL */
#define OPS      100000L

/* One VMA of the model: a plain sorted array, trivially right. */
struct mvma {
	uintptr_t start, end;
	int prot, flags;
	struct source *src;
	uint64_t pgoff;
	struct vma *v; /* the tree's node that stands for it */
};

struct model {
	struct vma_tree t;
	struct mvma *a;
	size_t n;
	struct source *src[NSRC];
	uint64_t seed, rng;
	long op;
	const char *what;
	/* How often the interesting outcomes happened: a test that never merges
	 * proves nothing about merge. */
	unsigned long st_insert, st_eexist, st_split, st_merge, st_gap, st_nogap, st_empty, st_sum;
};

#define CHECK(m, cond, fmt, ...)                                                                \
	cr_assert(cond, "replay with LAZYMAP_SEED=%" PRIu64 ": op %ld (%s): " fmt, (m)->seed,  \
		  (m)->op, (m)->what, ##__VA_ARGS__)

static uint64_t rnd(struct model *m)
{
	/* splitmix64: the same sequence on every libc, so a seed replays anywhere. */
	uint64_t z = (m->rng += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static uint64_t below(struct model *m, uint64_t n)
{
	return rnd(m) % n;
}

/* Index of the first VMA with end > addr (n if none). */
static size_t m_find(const struct model *m, uintptr_t addr)
{
	size_t i;

	for (i = 0; i < m->n; i++)
		if (m->a[i].end > addr)
			break;
	return i;
}

static void m_insert_at(struct model *m, size_t i, const struct mvma *e)
{
	memmove(&m->a[i + 1], &m->a[i], (m->n - i) * sizeof(*e));
	m->a[i] = *e;
	m->n++;
}

static void m_remove(struct model *m, size_t i)
{
	memmove(&m->a[i], &m->a[i + 1], (m->n - i - 1) * sizeof(m->a[0]));
	m->n--;
}

static bool m_can_merge(const struct mvma *x, const struct mvma *y)
{
	return x->end == y->start && x->prot == y->prot && x->flags == y->flags &&
	       x->src == y->src && x->pgoff + (x->end - x->start) / lzm_page_size == y->pgoff;
}

/* Merge entry i with its neighbours; the index of the survivor. */
static size_t m_merge(struct model *m, size_t i)
{
	if (i + 1 < m->n && m_can_merge(&m->a[i], &m->a[i + 1])) {
		m->a[i].end = m->a[i + 1].end;
		m_remove(m, i + 1);
	}
	if (i > 0 && m_can_merge(&m->a[i - 1], &m->a[i])) {
		m->a[i - 1].end = m->a[i].end;
		m_remove(m, i);
		i--;
	}
	return i;
}

/* The definition, checked gap by gap from the bottom. */
static int m_gap(const struct model *m, size_t len, uintptr_t low, uintptr_t high,
		 uintptr_t *addrp)
{
	uintptr_t lo, prev_end = 0, gap_end, addr;
	size_t i;

	if (len == 0)
		return -EINVAL;
	lo = low % lzm_page_size ? low - low % lzm_page_size + lzm_page_size : low;
	if (lo < low)
		return -ENOMEM; /* wrapped */
	for (i = 0; i <= m->n; i++) {
		gap_end = i < m->n ? m->a[i].start : UINTPTR_MAX;
		addr = prev_end > lo ? prev_end : lo;
		if (addr <= gap_end && gap_end - addr >= len && addr <= high && high - addr >= len) {
			*addrp = addr;
			return 0;
		}
		if (i < m->n)
			prev_end = m->a[i].end;
	}
	return -ENOMEM;
}

static void m_compare(struct model *m)
{
	struct vma *v;
	size_t i, users[NSRC] = { 0 };
	int k, ret;

	ret = lzm_vma_tree_check(&m->t);
	CHECK(m, ret == 0, "lzm_vma_tree_check: %d", ret);
	CHECK(m, m->t.count == m->n, "count %zu, model %zu", m->t.count, m->n);
	for (i = 0, v = lzm_vma_first(&m->t); i < m->n; i++, v = lzm_vma_next(v)) {
		const struct mvma *e = &m->a[i];

		CHECK(m, v == e->v, "VMA %zu: node %p, model %p [%#lx, %#lx)", i, (void *)v,
		      (void *)e->v, (unsigned long)e->start, (unsigned long)e->end);
		CHECK(m, v->start == e->start && v->end == e->end,
		      "VMA %zu: [%#lx, %#lx), model [%#lx, %#lx)", i, (unsigned long)v->start,
		      (unsigned long)v->end, (unsigned long)e->start, (unsigned long)e->end);
		CHECK(m, v->prot == e->prot && v->flags == e->flags && v->src == e->src &&
			 v->pgoff == e->pgoff,
		      "VMA %zu [%#lx, %#lx): prot %d flags %d src %p pgoff %" PRIu64
		      ", model prot %d flags %d src %p pgoff %" PRIu64,
		      i, (unsigned long)v->start, (unsigned long)v->end, v->prot, v->flags,
		      (void *)v->src, v->pgoff, e->prot, e->flags, (void *)e->src, e->pgoff);
		for (k = 0; k < NSRC; k++)
			users[k] += e->src == m->src[k];
	}
	CHECK(m, v == NULL, "tree has more VMAs than the model");
	/* Backwards too: lzm_vma_prev is a separate path. */
	for (i = m->n, v = lzm_vma_last(&m->t); i > 0; i--, v = lzm_vma_prev(v))
		CHECK(m, v == m->a[i - 1].v, "backward walk differs at %zu", i - 1);
	CHECK(m, v == NULL, "backward walk too long");
	/* Each VMA holds one reference, the test one more. */
	for (k = 0; k < NSRC; k++)
		if (m->src[k])
			CHECK(m, refs(m->src[k]) == users[k] + 1, "source %d: %u refs, %zu users",
			      k, refs(m->src[k]), users[k]);
}

static struct mvma random_vma(struct model *m, uintptr_t s, uintptr_t e)
{
	struct mvma x = { .start = pg(s), .end = pg(e) };

	x.prot = below(m, 3) ? RW : RO;
	x.flags = below(m, 8) ? LAZYMAP_PRIVATE : LAZYMAP_SHARED;
	x.src = m->src[below(m, NSRC)];
	/* Mostly the identity, so that neighbours may merge; sometimes not. */
	x.pgoff = below(m, 4) ? s : below(m, 2 * SPACE);
	return x;
}

/* Insert into both; the tree decides collisions and must agree with the model. */
static void op_insert(struct model *m, struct mvma x, bool expect_fit)
{
	struct vma *v = lzm_vma_alloc();
	size_t i = m_find(m, x.start);
	bool fits = i == m->n || m->a[i].start >= x.end;
	int ret;

	CHECK(m, v != NULL, "lzm_vma_alloc");
	v->start = x.start;
	v->end = x.end;
	v->prot = x.prot;
	v->flags = x.flags;
	v->src = x.src;
	v->pgoff = x.pgoff;
	lzm_source_get(v->src);
	ret = lzm_vma_insert(&m->t, v);
	CHECK(m, ret == (fits ? 0 : -EEXIST), "insert [%#lx, %#lx): %d, model %s",
	      (unsigned long)x.start, (unsigned long)x.end, ret, fits ? "fits" : "overlaps");
	CHECK(m, fits || !expect_fit, "a gap found free was not");
	if (ret) {
		lzm_vma_free(v);
		m->st_eexist++;
		return;
	}
	x.v = v;
	m_insert_at(m, i, &x);
	m->st_insert++;
}

static void op_erase(struct model *m)
{
	size_t i = below(m, m->n);
	struct mvma *e = &m->a[i];
	uintptr_t inside = e->start + below(m, e->end - e->start);
	struct vma *v = lzm_vma_lookup(&m->t, inside);

	CHECK(m, v == e->v, "lookup %#lx before erase", (unsigned long)inside);
	lzm_vma_erase(&m->t, v);
	lzm_vma_free(v);
	m_remove(m, i);
}

/* Split whatever contains addr (page aligned) at addr, in both. */
static void split_at(struct model *m, uintptr_t addr)
{
	struct vma *v = lzm_vma_lookup(&m->t, addr), *nv = NULL;
	size_t i = m_find(m, addr);
	struct mvma x;
	int ret;

	if (i == m->n || m->a[i].start > addr) {
		CHECK(m, v == NULL, "lookup %#lx found a VMA in a hole", (unsigned long)addr);
		return;
	}
	CHECK(m, v == m->a[i].v, "lookup %#lx", (unsigned long)addr);
	if (m->a[i].start == addr)
		return;
	ret = lzm_vma_split(&m->t, v, addr, &nv);
	CHECK(m, ret == 0, "split [%#lx, %#lx) at %#lx: %d", (unsigned long)v->start,
	      (unsigned long)v->end, (unsigned long)addr, ret);
	x = m->a[i];
	x.start = addr;
	x.pgoff += (addr - m->a[i].start) / lzm_page_size;
	x.v = nv;
	m->a[i].end = addr;
	m_insert_at(m, i + 1, &x);
	m->st_split++;
}

static void op_split(struct model *m)
{
	size_t i = below(m, m->n);
	struct mvma *e = &m->a[i];
	uintptr_t pages = (e->end - e->start) / lzm_page_size, bad;
	struct vma *nv = (struct vma *)1;
	int ret;

	if (pages >= 2 && below(m, 8)) {
		split_at(m, e->start + pg(1 + below(m, pages - 1)));
		return;
	}
	switch (below(m, 4)) {
	case 0:
		bad = e->start;
		break;
	case 1:
		bad = e->end;
		break;
	case 2:
		bad = e->start + 1 + below(m, e->end - e->start - 1);
		break;
	default:
		bad = below(m, 2) ? e->end + pg(below(m, 4)) : e->start - pg(below(m, 4));
		break;
	}
	if (page_aligned(bad) && bad > e->start && bad < e->end)
		bad++; /* not a bad address after all */
	ret = lzm_vma_split(&m->t, e->v, bad, &nv);
	CHECK(m, ret == -EINVAL && nv == (struct vma *)1, "split [%#lx, %#lx) at %#lx: %d",
	      (unsigned long)e->start, (unsigned long)e->end, (unsigned long)bad, ret);
}

static void op_merge(struct model *m)
{
	size_t i = below(m, m->n), n = m->n;
	struct vma *v = lzm_vma_merge(&m->t, m->a[i].v);

	i = m_merge(m, i);
	CHECK(m, v == m->a[i].v, "merge survivor %p, model %p", (void *)v, (void *)m->a[i].v);
	m->st_merge += n - m->n;
}

static uintptr_t random_addr(struct model *m)
{
	const struct mvma *e;

	if (m->n == 0 || below(m, 3) == 0)
		return below(m, pg(SPACE + 64));
	/* At and around the boundaries, where off-by-ones live. */
	e = &m->a[below(m, m->n)];
	return (below(m, 2) ? e->start : e->end) + (uintptr_t)below(m, 3) - 1;
}

static void op_find(struct model *m)
{
	uintptr_t addr = random_addr(m);
	size_t i = m_find(m, addr);
	struct vma *want = i < m->n ? m->a[i].v : NULL;
	struct vma *wprev = i > 0 ? m->a[i - 1].v : NULL, *prev = (struct vma *)1, *v;

	v = lzm_vma_find(&m->t, addr);
	CHECK(m, v == want, "find %#lx", (unsigned long)addr);
	v = lzm_vma_find_prev(&m->t, addr, &prev);
	CHECK(m, v == want && prev == wprev, "find_prev %#lx", (unsigned long)addr);
	v = lzm_vma_lookup(&m->t, addr);
	CHECK(m, v == (want && m->a[i].start <= addr ? want : NULL), "lookup %#lx",
	      (unsigned long)addr);
}

static void op_gap(struct model *m, bool and_map)
{
	uintptr_t low, high, got = 0xdead, want = 0xbeef;
	size_t len;
	int ret, wret;

	if (and_map) {
		/* Like mmap: a place for a new VMA, then merge it in. */
		len = pg(1 + below(m, 16));
		low = pg(below(m, SPACE));
		high = pg(SPACE + 16);
	} else {
		len = below(m, 4) ? pg(1 + below(m, 40)) : 1 + below(m, pg(64));
		if (below(m, 8) == 0)
			len = pg(1 + below(m, SPACE / 2));
		low = below(m, 4) ? pg(below(m, SPACE)) : below(m, pg(SPACE));
		if (below(m, 8) == 0)
			low = 0;
		switch (below(m, 8)) {
		case 0:
			high = UINTPTR_MAX;
			break;
		case 1:
			high = below(m, pg(SPACE)); /* often below low */
			break;
		default:
			high = low + len + pg(below(m, 512));
			break;
		}
	}
	ret = lzm_vma_find_gap(&m->t, len, low, high, &got);
	wret = m_gap(m, len, low, high, &want);
	CHECK(m, ret == wret && (ret || got == want),
	      "gap len %#zx low %#lx high %#lx: %d at %#lx, model %d at %#lx", len,
	      (unsigned long)low, (unsigned long)high, ret, (unsigned long)got, wret,
	      (unsigned long)want);
	if (ret) {
		m->st_nogap++;
		return;
	}
	m->st_gap++;
	if (and_map) {
		struct mvma x = random_vma(m, got / lzm_page_size, (got + len) / lzm_page_size);
		size_t i;
		struct vma *v;

		op_insert(m, x, true);
		i = m_find(m, got);
		v = lzm_vma_merge(&m->t, m->a[i].v);
		i = m_merge(m, i);
		CHECK(m, v == m->a[i].v, "merge after map");
	}
}

/* mprotect: split at both ends, change prot inside, merge what now matches. */
static void op_protect(struct model *m)
{
	uintptr_t a = pg(below(m, SPACE)), b = a + pg(1 + below(m, 64));
	int prot = below(m, 2) ? RW : RO;
	struct vma *v;
	size_t i, n;

	split_at(m, a);
	split_at(m, b);
	for (i = m_find(m, a); i < m->n && m->a[i].start < b; i++)
		m->a[i].prot = prot;
	for (v = lzm_vma_find(&m->t, a); v && v->start < b; v = lzm_vma_next(v))
		v->prot = prot;

	n = m->n;
	i = m_find(m, a);
	v = lzm_vma_find(&m->t, a);
	while (i < m->n && m->a[i].start < b) {
		CHECK(m, v == m->a[i].v, "protect walk");
		v = lzm_vma_merge(&m->t, v);
		i = m_merge(m, i);
		CHECK(m, v == m->a[i].v, "protect merge survivor");
		v = lzm_vma_next(v);
		i++;
	}
	CHECK(m, v == (i < m->n ? m->a[i].v : NULL), "protect walk end");
	m->st_merge += n - m->n;
}

Test(vma_tree, random_model, .timeout = 120)
{
	struct model *m = calloc(1, sizeof(*m));
	const char *env = getenv("LAZYMAP_SEED");
	struct timespec t0, t1;
	unsigned long peak = 0;
	int k;

	cr_assert_not_null(m);
	m->seed = env ? strtoull(env, NULL, 0) : 0x1a2b3c4dull;
	m->rng = m->seed;
	m->what = "setup";
	m->a = calloc(MAX_VMAS + 2, sizeof(*m->a));
	cr_assert_not_null(m->a);
	lzm_vma_tree_init(&m->t);
	for (k = 0; k < NSRC - 1; k++)
		cr_assert_eq(lzm_source_new_zero(2 * SPACE, &m->src[k]), 0);
	m->src[NSRC - 1] = NULL;
	cr_log_info("vma_tree random_model: LAZYMAP_SEED=%" PRIu64, m->seed);

	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (m->op = 0; m->op < OPS; m->op++) {
		unsigned r = below(m, 100);

		/* Keep the tree small enough for a full comparison after every op,
		 * and drain it now and then, so that small trees and the empty
		 * one are visited again with all the history behind them. */
		if (m->n + 3 >= MAX_VMAS && r < 56)
			r = 20;
		if (m->op % 5000 >= 4000 && r < 56 && below(m, 4))
			r = 20;
		if (m->n == 0 && r >= 16)
			r = 0;
		if (r < 16) {
			uintptr_t s = below(m, SPACE), e = s + 1 + below(m, 32);

			m->what = "insert";
			op_insert(m, random_vma(m, s, e), false);
		} else if (r < 28) {
			m->what = "erase";
			op_erase(m);
		} else if (r < 40) {
			m->what = "split";
			op_split(m);
		} else if (r < 48) {
			m->what = "map";
			op_gap(m, true);
		} else if (r < 56) {
			m->what = "protect";
			op_protect(m);
		} else if (r < 66) {
			m->what = "merge";
			op_merge(m);
		} else if (r < 82) {
			m->what = "find";
			op_find(m);
		} else {
			m->what = "find_gap";
			op_gap(m, false);
		}
		m_compare(m);
		if (m->n > peak)
			peak = m->n;
		m->st_empty += m->n == 0;
		m->st_sum += m->n;
	}
	clock_gettime(CLOCK_MONOTONIC, &t1);

	cr_log_info("%ld ops in %.2f s: %lu inserts, %lu -EEXIST, %lu splits, %lu merged away, "
		    "%lu gaps found, %lu -ENOMEM; %lu VMAs on average, up to %lu, %lu times empty",
		    OPS, (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9, m->st_insert,
		    m->st_eexist, m->st_split, m->st_merge, m->st_gap, m->st_nogap, m->st_sum / OPS,
		    peak, m->st_empty);
	/* Each outcome often enough that a bug in it would have shown. */
	cr_expect_gt(m->st_insert, 5000);
	cr_expect_gt(m->st_eexist, 1000);
	cr_expect_gt(m->st_split, 5000);
	cr_expect_gt(m->st_merge, 2000);
	cr_expect_gt(m->st_gap, 5000);
	cr_expect_gt(m->st_nogap, 1000);
	cr_expect_gt(peak, 100);
	cr_expect_gt(m->st_empty, 10);

	destroy(&m->t);
	for (k = 0; k < NSRC; k++) {
		if (!m->src[k])
			continue;
		cr_assert_eq(refs(m->src[k]), 1);
		lzm_source_put(m->src[k]);
	}
	free(m->a);
	free(m);
}
