// SPDX-License-Identifier: MIT
/*
 * The VMA tree: an intrusive red-black tree of non-overlapping VMAs keyed by
 * start address, augmented with subtree_gap (the kernel's old rb_subtree_gap)
 * so that a free range is found without walking every VMA; split and merge.
 */
#include <errno.h>

#include "internal.h"

/* A red-black tree of 2^64 nodes is at most 128 deep: deeper means a cycle. */
#define VMA_TREE_MAX_DEPTH 128

static void tree_debug_check(const struct vma_tree *t)
{
	if (LAZYMAP_DEBUG >= 2)
		LAZYMAP_ASSERT(lzm_vma_tree_check(t) == 0);
}

/* ------------------------------------------------------------ allocation */

void lzm_vma_tree_init(struct vma_tree *t)
{
	t->root = NULL;
	t->count = 0;
}

struct vma *lzm_vma_alloc(void)
{
	return calloc(1, sizeof(struct vma));
}

void lzm_vma_free(struct vma *v)
{
	if (!v)
		return;
	lzm_source_put(v->src);
	free(v);
}

/* ------------------------------------------------------------ navigation */

static struct vma *leftmost(struct vma *x)
{
	while (x->rb_left)
		x = x->rb_left;
	return x;
}

static struct vma *rightmost(struct vma *x)
{
	while (x->rb_right)
		x = x->rb_right;
	return x;
}

struct vma *lzm_vma_first(const struct vma_tree *t)
{
	return t->root ? leftmost(t->root) : NULL;
}

struct vma *lzm_vma_last(const struct vma_tree *t)
{
	return t->root ? rightmost(t->root) : NULL;
}

struct vma *lzm_vma_next(const struct vma *v)
{
	struct vma *p;

	if (v->rb_right)
		return leftmost(v->rb_right);
	/* Climb while we are a right child: those ancestors come before v. */
	while ((p = v->rb_parent) && v == p->rb_right)
		v = p;
	return p;
}

struct vma *lzm_vma_prev(const struct vma *v)
{
	struct vma *p;

	if (v->rb_left)
		return rightmost(v->rb_left);
	while ((p = v->rb_parent) && v == p->rb_left)
		v = p;
	return p;
}

struct vma *lzm_vma_find(const struct vma_tree *t, uintptr_t addr)
{
	struct vma *x = t->root, *res = NULL;

	while (x) {
		if (x->end > addr) {
			res = x;
			if (x->start <= addr)
				break; /* contains addr: nothing to its left qualifies */
			x = x->rb_left;
		} else {
			x = x->rb_right;
		}
	}
	return res;
}

struct vma *lzm_vma_find_prev(const struct vma_tree *t, uintptr_t addr, struct vma **pprev)
{
	struct vma *x = t->root, *res = NULL, *prev = NULL;

	/* VMAs ending at or before addr are a prefix of the order: the result is
	 * the first one after that prefix and *pprev its last one, both met on
	 * one descent to a leaf. */
	while (x) {
		if (x->end > addr) {
			res = x;
			x = x->rb_left;
		} else {
			prev = x;
			x = x->rb_right;
		}
	}
	*pprev = prev;
	return res;
}

struct vma *lzm_vma_lookup(const struct vma_tree *t, uintptr_t addr)
{
	struct vma *v = lzm_vma_find(t, addr);

	return v && v->start <= addr ? v : NULL;
}

/* ------------------------------------------------------------ subtree_gap */

static uintptr_t max_gap(uintptr_t a, uintptr_t b)
{
	return a > b ? a : b;
}

static uintptr_t subtree_gap_of(const struct vma *x)
{
	return x ? x->subtree_gap : 0;
}

/* v's own gap. There is no vm_prev list, so this costs a walk to the
 * predecessor: O(1) amortised over an in-order walk, O(log n) at worst. */
static uintptr_t vma_gap(const struct vma *v)
{
	const struct vma *p = lzm_vma_prev(v);

	return v->start - (p ? p->end : 0);
}

static void gap_update(struct vma *v)
{
	v->subtree_gap = max_gap(vma_gap(v),
				 max_gap(subtree_gap_of(v->rb_left), subtree_gap_of(v->rb_right)));
}

/*
 * Recompute from v up to the root. No early stop: callers use this after a
 * change that may also have moved the gap of a node higher on the path (the
 * successor of a new leaf is one of its ancestors), so an unchanged value
 * below does not prove the values above are right.
 */
static void gap_propagate(struct vma *v)
{
	for (; v; v = v->rb_parent)
		gap_update(v);
}

/* ------------------------------------------------------------ red-black core */

static void replace_child(struct vma_tree *t, struct vma *parent, struct vma *old,
			  struct vma *new)
{
	if (!parent)
		t->root = new;
	else if (parent->rb_left == old)
		parent->rb_left = new;
	else
		parent->rb_right = new;
}

/*
 * Rotations keep the in-order sequence, so no node's own gap changes: the node
 * that moves up covers exactly the old top's set and inherits its
 * subtree_gap; only the node that moves down needs recomputing.
 */
static void rotate_left(struct vma_tree *t, struct vma *x)
{
	struct vma *y = x->rb_right;

	x->rb_right = y->rb_left;
	if (y->rb_left)
		y->rb_left->rb_parent = x;
	y->rb_parent = x->rb_parent;
	replace_child(t, x->rb_parent, x, y);
	y->rb_left = x;
	x->rb_parent = y;

	y->subtree_gap = x->subtree_gap;
	gap_update(x);
}

static void rotate_right(struct vma_tree *t, struct vma *x)
{
	struct vma *y = x->rb_left;

	x->rb_left = y->rb_right;
	if (y->rb_right)
		y->rb_right->rb_parent = x;
	y->rb_parent = x->rb_parent;
	replace_child(t, x->rb_parent, x, y);
	y->rb_right = x;
	x->rb_parent = y;

	y->subtree_gap = x->subtree_gap;
	gap_update(x);
}

static bool is_red(const struct vma *x)
{
	return x && x->rb_red;
}

static void insert_fixup(struct vma_tree *t, struct vma *z)
{
	struct vma *p, *g, *u;

	while ((p = z->rb_parent) && p->rb_red) {
		g = p->rb_parent; /* exists: a red node is never the root */
		if (p == g->rb_left) {
			u = g->rb_right;
			if (is_red(u)) {
				p->rb_red = u->rb_red = false;
				g->rb_red = true;
				z = g;
				continue;
			}
			if (z == p->rb_right) {
				rotate_left(t, p);
				z = p;
				p = z->rb_parent;
			}
			p->rb_red = false;
			g->rb_red = true;
			rotate_right(t, g);
		} else {
			u = g->rb_left;
			if (is_red(u)) {
				p->rb_red = u->rb_red = false;
				g->rb_red = true;
				z = g;
				continue;
			}
			if (z == p->rb_left) {
				rotate_right(t, p);
				z = p;
				p = z->rb_parent;
			}
			p->rb_red = false;
			g->rb_red = true;
			rotate_left(t, g);
		}
	}
	t->root->rb_red = false;
}

/* x (maybe NULL) under parent xp has one black too few on its side. */
static void erase_fixup(struct vma_tree *t, struct vma *x, struct vma *xp)
{
	struct vma *w;

	while (x != t->root && !is_red(x)) {
		/* x may be NULL; its sibling cannot be, since x's side is short of
		 * a black node the sibling's side still has. */
		if (x == xp->rb_left) {
			w = xp->rb_right;
			if (w->rb_red) {
				w->rb_red = false;
				xp->rb_red = true;
				rotate_left(t, xp);
				w = xp->rb_right;
			}
			if (!is_red(w->rb_left) && !is_red(w->rb_right)) {
				w->rb_red = true;
				x = xp;
				xp = x->rb_parent;
				continue;
			}
			if (!is_red(w->rb_right)) {
				w->rb_left->rb_red = false;
				w->rb_red = true;
				rotate_right(t, w);
				w = xp->rb_right;
			}
			w->rb_red = xp->rb_red;
			xp->rb_red = false;
			w->rb_right->rb_red = false;
			rotate_left(t, xp);
		} else {
			w = xp->rb_left;
			if (w->rb_red) {
				w->rb_red = false;
				xp->rb_red = true;
				rotate_right(t, xp);
				w = xp->rb_left;
			}
			if (!is_red(w->rb_left) && !is_red(w->rb_right)) {
				w->rb_red = true;
				x = xp;
				xp = x->rb_parent;
				continue;
			}
			if (!is_red(w->rb_left)) {
				w->rb_right->rb_red = false;
				w->rb_red = true;
				rotate_left(t, w);
				w = xp->rb_left;
			}
			w->rb_red = xp->rb_red;
			xp->rb_red = false;
			w->rb_left->rb_red = false;
			rotate_right(t, xp);
		}
		x = t->root;
	}
	if (x)
		x->rb_red = false;
}

/* ------------------------------------------------------------ insert, erase */

int lzm_vma_insert(struct vma_tree *t, struct vma *v)
{
	struct vma **link = &t->root, *parent = NULL;

	LAZYMAP_ASSERT(v->start < v->end && page_aligned(v->start) && page_aligned(v->end));
	if (v->start >= v->end || !page_aligned(v->start) || !page_aligned(v->end))
		return -EINVAL;

	/* The slot we reach lies between the last node we went right of and the
	 * last we went left of, its in-order neighbours; any overlap is with a
	 * node on this path. */
	while (*link) {
		parent = *link;
		if (v->end <= parent->start)
			link = &parent->rb_left;
		else if (v->start >= parent->end)
			link = &parent->rb_right;
		else
			return -EEXIST;
	}
	v->rb_parent = parent;
	v->rb_left = v->rb_right = NULL;
	v->rb_red = true;
	*link = v;
	t->count++;

	/* Fix every gap before rebalancing, so that rotations start from right
	 * values. The leaf's successor, whose gap shrank, is one of its
	 * ancestors, so one pass up covers it. */
	gap_propagate(v);
	insert_fixup(t, v);
	tree_debug_check(t);
	return 0;
}

void lzm_vma_erase(struct vma_tree *t, struct vma *v)
{
	struct vma *next = lzm_vma_next(v), *child, *x, *xp, *y;
	bool removed_black;

	LAZYMAP_ASSERT(t->count > 0);
	if (!v->rb_left || !v->rb_right) {
		child = v->rb_left ? v->rb_left : v->rb_right;
		xp = v->rb_parent;
		replace_child(t, xp, v, child);
		if (child)
			child->rb_parent = xp;
		removed_black = !v->rb_red;
		x = child;
	} else {
		/* Two children: the successor (leftmost of the right subtree, so
		 * with no left child) takes v's place and colour; what is really
		 * removed from the shape is the successor's old position. */
		y = next;
		removed_black = !y->rb_red;
		x = y->rb_right;
		if (y->rb_parent == v) {
			xp = y;
		} else {
			xp = y->rb_parent;
			xp->rb_left = x;
			if (x)
				x->rb_parent = xp;
			y->rb_right = v->rb_right;
			v->rb_right->rb_parent = y;
		}
		y->rb_left = v->rb_left;
		v->rb_left->rb_parent = y;
		y->rb_parent = v->rb_parent;
		replace_child(t, v->rb_parent, v, y);
		y->rb_red = v->rb_red;
		/* The successor's gap changed; it is on the path up from xp. */
		next = NULL;
	}
	t->count--;

	/* The nodes above the removed position lost v; v's successor now
	 * follows v's predecessor. Both paths are fixed before rebalancing. */
	gap_propagate(xp);
	if (next)
		gap_propagate(next);
	if (removed_black)
		erase_fixup(t, x, xp);

	v->rb_parent = v->rb_left = v->rb_right = NULL;
	v->rb_red = false;
	tree_debug_check(t);
}

/* ------------------------------------------------------------ split, merge */

int lzm_vma_split(struct vma_tree *t, struct vma *v, uintptr_t addr, struct vma **newp)
{
	struct vma *new;

	if (!page_aligned(addr) || addr <= v->start || addr >= v->end)
		return -EINVAL;
	new = lzm_vma_alloc();
	if (!new)
		return -ENOMEM;
	lzm_vma_split_with(t, v, addr, new);
	if (newp)
		*newp = new;
	return 0;
}

void lzm_vma_split_with(struct vma_tree *t, struct vma *v, uintptr_t addr, struct vma *new)
{
	int ret;

	LAZYMAP_ASSERT(page_aligned(addr) && addr > v->start && addr < v->end);
	new->start = addr;
	new->end = v->end;
	new->prot = v->prot;
	new->flags = v->flags;
	new->advice = v->advice;
	new->fill_unit = v->fill_unit;
	new->src = v->src;
	new->pgoff = v->pgoff + ((addr - v->start) >> lzm_page_shift);
	lzm_source_get(new->src);

	/* Shrinking v first leaves room for new; lzm_vma_insert's pass up from the
	 * new leaf recomputes the gap of v's old successor (new's successor). */
	v->end = addr;
	ret = lzm_vma_insert(t, new);
	LAZYMAP_ASSERT(ret == 0);
	(void)ret;
}

bool lzm_vma_can_merge(const struct vma *a, const struct vma *b)
{
	return a->end == b->start && a->prot == b->prot && a->flags == b->flags &&
	       a->advice == b->advice && a->fill_unit == b->fill_unit && a->src == b->src &&
	       a->pgoff + ((a->end - a->start) >> lzm_page_shift) == b->pgoff;
}

struct vma *lzm_vma_merge(struct vma_tree *t, struct vma *v)
{
	struct vma *prev = lzm_vma_prev(v), *next = lzm_vma_next(v), *keep = v, *succ;
	bool merge_prev = prev && lzm_vma_can_merge(prev, v);
	bool merge_next = next && lzm_vma_can_merge(v, next);
	uintptr_t end = merge_next ? next->end : v->end;

	if (!merge_prev && !merge_next)
		return v;
	/* The lowest VMA survives: its start, pgoff and own gap stay as they are.
	 * Erase before extending, so that the tree never holds an overlap. */
	if (merge_next) {
		lzm_vma_erase(t, next);
		lzm_vma_free(next);
	}
	if (merge_prev) {
		keep = prev;
		lzm_vma_erase(t, v);
		lzm_vma_free(v);
	}
	keep->end = end;
	/* A new end moves the gap of the VMA after it. */
	succ = lzm_vma_next(keep);
	if (succ)
		gap_propagate(succ);
	tree_debug_check(t);
	return keep;
}

/* ------------------------------------------------------------ gap search */

struct gap_req {
	size_t len;
	uintptr_t low;     /* page aligned */
	uintptr_t low_end; /* low + len: a gap ending below it is of no use */
	uintptr_t last;    /* high - len: the highest start allowed */
};

/*
 * In-order search of x's subtree for the first usable gap, pruning subtrees
 * whose largest gap is too small and left subtrees that end below low. pe is
 * the end of the VMA before the subtree's first one (0 if none).
 * Returns 1 and *addrp when found, 0 when not in this subtree, -ENOMEM when
 * no gap at or after this point can fit below high.
 */
static int gap_search(const struct vma *x, uintptr_t pe, const struct gap_req *r,
		      uintptr_t *addrp)
{
	uintptr_t prev_end, addr;
	int ret;

	if (!x || x->subtree_gap < r->len)
		return 0;
	/* Every start on the left is below x->start: below low_end, no gap there
	 * can hold [max(gap start, low), + len). */
	if (x->start >= r->low_end) {
		ret = gap_search(x->rb_left, pe, r, addrp);
		if (ret)
			return ret;
		prev_end = x->rb_left ? rightmost(x->rb_left)->end : pe;
		/* Later gaps start later still. */
		if (prev_end > r->last)
			return -ENOMEM;
		addr = prev_end > r->low ? prev_end : r->low;
		if (x->start - addr >= r->len) {
			*addrp = addr;
			return 1;
		}
	}
	return gap_search(x->rb_right, x->end, r, addrp);
}

int lzm_vma_find_gap(const struct vma_tree *t, size_t len, uintptr_t low, uintptr_t high,
		 uintptr_t *addrp)
{
	struct gap_req r;
	struct vma *last;
	uintptr_t addr;
	int ret;

	if (len == 0)
		return -EINVAL;
	if (low > UINTPTR_MAX - (lzm_page_size - 1))
		return -ENOMEM;
	r.len = len;
	r.low = (low + lzm_page_size - 1) & ~(uintptr_t)(lzm_page_size - 1);
	if (high < len || r.low > high - len)
		return -ENOMEM;
	r.low_end = r.low + len; /* <= high: no overflow */
	r.last = high - len;

	ret = gap_search(t->root, 0, &r, addrp);
	if (ret < 0)
		return ret;
	if (ret > 0) {
		LAZYMAP_ASSERT(page_aligned(*addrp) && *addrp >= low && *addrp <= r.last);
		return 0;
	}
	/* No gap before a VMA fits: what is left is the space after the last. */
	last = lzm_vma_last(t);
	addr = last && last->end > r.low ? last->end : r.low;
	if (addr > r.last)
		return -ENOMEM;
	*addrp = addr;
	return 0;
}

/* ------------------------------------------------------------ check */

struct check_state {
	uintptr_t prev_end; /* end of the VMA visited last, in order */
	size_t count;
	int err;
};

static int check_fail(struct check_state *st, const struct vma *v, const char *what)
{
	if (!st->err) {
		if (v)
			fprintf(stderr, "liblazymap: vma tree: %s at vma %p [%#lx, %#lx)\n", what,
				(const void *)v, (unsigned long)v->start, (unsigned long)v->end);
		else
			fprintf(stderr, "liblazymap: vma tree: %s\n", what);
		st->err = -EUCLEAN;
	}
	return -1;
}

/* Checks x's subtree in order; returns its black height (-1 once anything is
 * wrong) and its true largest gap in *gapp. */
static int check_subtree(const struct vma *x, const struct vma *parent, const struct vma_tree *t,
			 int depth, struct check_state *st, uintptr_t *gapp)
{
	uintptr_t gl, gr, gap;
	int bl, br;

	*gapp = 0;
	if (!x)
		return 1;
	if (depth > VMA_TREE_MAX_DEPTH || st->count >= t->count)
		return check_fail(st, x, "more nodes than count, or a cycle");
	if (x->rb_parent != parent)
		return check_fail(st, x, "parent link does not match");
	if (x->rb_red && parent && parent->rb_red)
		return check_fail(st, x, "red node with a red parent");

	bl = check_subtree(x->rb_left, x, t, depth + 1, st, &gl);
	if (bl < 0)
		return -1;

	if (x->start >= x->end)
		return check_fail(st, x, "empty or inverted range");
	if (!page_aligned(x->start) || !page_aligned(x->end))
		return check_fail(st, x, "range not page aligned");
	if (x->start < st->prev_end)
		return check_fail(st, x, "out of order or overlapping its predecessor");
	gap = x->start - st->prev_end;
	st->prev_end = x->end;
	st->count++;

	br = check_subtree(x->rb_right, x, t, depth + 1, st, &gr);
	if (br < 0)
		return -1;
	if (bl != br)
		return check_fail(st, x, "black heights of the children differ");

	gap = max_gap(gap, max_gap(gl, gr));
	if (x->subtree_gap != gap) {
		if (!st->err)
			fprintf(stderr, "liblazymap: vma tree: subtree_gap %#lx, should be %#lx\n",
				(unsigned long)x->subtree_gap, (unsigned long)gap);
		return check_fail(st, x, "wrong subtree_gap");
	}
	*gapp = gap;
	return bl + !x->rb_red;
}

int lzm_vma_tree_check(const struct vma_tree *t)
{
	struct check_state st = { 0 };
	uintptr_t gap;

	if (t->root && t->root->rb_red)
		check_fail(&st, t->root, "red root");
	else if (check_subtree(t->root, NULL, t, 0, &st, &gap) >= 0 && st.count != t->count)
		check_fail(&st, NULL, "count differs from the number of nodes");
	return st.err;
}
