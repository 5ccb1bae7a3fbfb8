// SPDX-License-Identifier: MIT
/*
 * A randomized model of the program's own calls on its regions (issue 9):
 * munmap, mremap (shrink, grow, move, DONTUNMAP) and MADV_DONTNEED mixed with
 * lazymap_protect, lazymap_unmap, maps, reads and writes on zero, fill and
 * private file regions. After every step the tree equals the model and
 * /proc/self/maps, and every page read has the model's bytes. Replay a
 * failure with LAZYMAP_SEED=<seed>; LAZYMAP_MODEL_OPS=<n> changes the length.
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include "common.h"

#ifndef MREMAP_DONTUNMAP
#define MREMAP_DONTUNMAP 4
#endif

enum {
	MAXPG = 6144,        /* pages the model can hold */
	SOFTPG = 2400,       /* above this, nothing grows or is added */
	MAXSRC = 8192,       /* sources ever created in one run */
	MAXE = 16384,        /* /proc/self/maps entries */
	ARENA_PAGES = 2048,  /* PROT_NONE reserve that FIXED moves land in */
	MAXSEG = 128,        /* pages a region may grow to */
	RING = 20,           /* ops remembered for a failure message */
	STEP_ALARM_S = 60,   /* one step (or the end) taking longer is a hang */
	FILE_PAGES = 150,    /* the file: 150 pages and 1000 bytes */
	FILE_TAIL = 1000,
};

enum kind { K_ZERO, K_FILL, K_FILE, NKIND };
static const char *const kind_name[NKIND] = { "zero", "fill", "file" };

/* Where a region's bytes come from; a page at source offset off reads src_word(off). */
struct source {
	int kind;
	uint64_t tag; /* fill: mixed into the pattern, so a page of another region is caught */
};

/*
 * One page the program has mapped: its source and the source offset it
 * shows (the region's offset for zero and fill, the file's offset for
 * file), its prot, and what the program wrote there since the page was last
 * dropped (NULL: the source's bytes).
 */
struct mpage {
	uintptr_t addr;
	uint64_t off;
	uint32_t src;
	uint8_t prot;
	uint8_t *data;
};

enum op {
	OP_READ, OP_WRITE, OP_MUNMAP, OP_SHRINK, OP_GROW_INPLACE, OP_GROW_MOVED, OP_MOVE,
	OP_DONTUNMAP, OP_DONTNEED, OP_PROTECT, OP_LUNMAP, OP_MAP, OP_EINVAL, OP_GONE_SEGV,
	OP_SIGBUS, OP_RO_SEGV, NOP
};
static const char *const op_name[NOP] = {
	"read", "write", "munmap", "mremap shrink", "mremap grow in place", "mremap grow moved",
	"mremap move", "mremap dontunmap", "madvise dontneed", "lazymap_protect",
	"lazymap_unmap", "map", "lazymap_unmap of a munmapped range", "touch of a gone page",
	"sigbus past eof", "write to read-only",
};

struct run {
	struct lazymap *lm;
	uint64_t seed, rng;
	int step, ops;
	size_t ps;
	int fd;
	uint64_t fsize;

	struct mpage pg[MAXPG]; /* sorted by addr */
	int np;
	int region[MAXPG]; /* the first page of each region, from count_regions */
	struct source src[MAXSRC];
	int nsrc;

	char *arena;
	uint8_t arena_free[ARENA_PAGES]; /* our PROT_NONE page is there */

	char ring[RING][256];
	int nring;
	char cur[192];

	unsigned count[NOP];
	unsigned late; /* steps where the tree caught up only after quiesce() */

	struct maps_entry tree[MAXE], kern[MAXE], all[MAXE], model[MAXE];
	uint64_t expect[512], got[512];
};

static struct run *cur_run; /* for the watchdog */

/* ------------------------------------------------------------ failing */

static size_t ring_text(struct run *r, char *buf, size_t len)
{
	size_t n = 0;
	int first = r->nring > RING ? r->nring - RING : 0;

	for (int i = first; i < r->nring && n < len; i++)
		n += (size_t)snprintf(buf + n, len - n, "  [%d] %s\n", i, r->ring[i % RING]);
	return n < len ? n : len;
}

__attribute__((format(printf, 3, 4)))
static void model_fail(struct run *r, int line, const char *fmt, ...)
{
	static char msg[8192];
	size_t n;
	va_list ap;

	n = (size_t)snprintf(msg, sizeof(msg), "LAZYMAP_SEED=%#llx step %d of %d, op \"%s\" (line %d): ",
			     (unsigned long long)r->seed, r->step, r->ops, r->cur, line);
	va_start(ap, fmt);
	n += (size_t)vsnprintf(msg + n, sizeof(msg) - n, fmt, ap);
	va_end(ap);
	if (n < sizeof(msg))
		n += (size_t)snprintf(msg + n, sizeof(msg) - n, "\nlast ops (oldest first):\n");
	if (n < sizeof(msg))
		ring_text(r, msg + n, sizeof(msg) - n);
	cr_assert(0, "%s", msg);
	abort();
}

#define MCHECK(r, cond, ...)                                                   \
	do {                                                                   \
		if (!(cond))                                                   \
			model_fail((r), __LINE__, __VA_ARGS__);                \
	} while (0)

/* Name the op about to run: it heads a failure message and joins the ring. */
__attribute__((format(printf, 2, 3)))
static void note(struct run *r, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(r->cur, sizeof(r->cur), fmt, ap);
	va_end(ap);
	snprintf(r->ring[r->nring % RING], sizeof(r->ring[0]), "step %d: %s", r->step, r->cur);
	r->nring++;
}

/* Add to the op's line in the ring what only its result tells (an address). */
__attribute__((format(printf, 2, 3)))
static void note_more(struct run *r, const char *fmt, ...)
{
	char *line = r->ring[(r->nring - 1) % RING];
	size_t n = strlen(line);
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(line + n, sizeof(r->ring[0]) - n, fmt, ap);
	va_end(ap);
}

/* A step that never returns (a munmap whose event nobody reads, a fault
 * nobody serves) says where it hung, with the seed, and aborts the test. */
static void watchdog(int sig)
{
	static char buf[8192];
	struct run *r = cur_run;
	int n;

	(void)sig;
	if (r) {
		n = snprintf(buf, sizeof(buf), "\nwatchdog: LAZYMAP_SEED=%#llx step %d hung over %d s "
			     "in \"%s\"\nlast ops:\n", (unsigned long long)r->seed, r->step,
			     STEP_ALARM_S, r->cur);
		if (n > 0 && (size_t)n < sizeof(buf))
			n += (int)ring_text(r, buf + n, sizeof(buf) - (size_t)n);
		if (write(2, buf, (size_t)n) < 0)
			n = 0;
	}
	abort();
}

/* ------------------------------------------------------------ sources */

static uint64_t mix64(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ULL;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
	return x ^ (x >> 31);
}

#define FILE_TAG 0xf11ef11ef11eULL

/* The word at byte offset off (8-aligned) of a fill source with this tag, or of the file. */
static uint64_t pattern_word(uint64_t tag, uint64_t off)
{
	return mix64(tag * 0x100000001b3ULL ^ off);
}

static int model_fill(void *page, size_t len, uint64_t offset, void *arg)
{
	const struct source *s = arg;
	uint64_t *w = page;

	for (size_t i = 0; i < len / 8; i++)
		w[i] = pattern_word(s->tag, offset + i * 8);
	return 0;
}

/* The file's bytes at off: the pattern up to fsize, zeros after (within its last page). */
static void file_words(uint64_t fsize, uint64_t off, uint64_t *w, size_t nwords)
{
	for (size_t i = 0; i < nwords; i++) {
		uint64_t o = off + i * 8;

		w[i] = o + 8 <= fsize ? pattern_word(FILE_TAG, o) : 0;
	}
}

/* What page m must read: 1 if SIGBUS (a file page wholly past EOF), else 0 and its bytes. */
static int expected(struct run *r, const struct mpage *m, uint64_t *w)
{
	const struct source *s = &r->src[m->src];
	size_t nw = r->ps / 8;

	if (s->kind == K_FILE && m->off >= (r->fsize + r->ps - 1) / r->ps * r->ps)
		return 1;
	if (m->data) {
		memcpy(w, m->data, r->ps);
		return 0;
	}
	switch (s->kind) {
	case K_ZERO:
		memset(w, 0, r->ps);
		break;
	case K_FILL:
		model_fill(w, r->ps, m->off, (void *)s);
		break;
	default:
		file_words(r->fsize, m->off, w, nw);
		break;
	}
	return 0;
}

/* ------------------------------------------------------------ the model */

static uint64_t rnd(struct run *r, uint64_t n)
{
	return n ? rng_next(&r->rng) % n : 0;
}

/* Index of the first page at or above addr. */
static int pg_lower(struct run *r, uintptr_t addr)
{
	int lo = 0, hi = r->np;

	while (lo < hi) {
		int mid = (lo + hi) / 2;

		if (r->pg[mid].addr < addr)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

static int pg_find(struct run *r, uintptr_t addr)
{
	int i = pg_lower(r, addr);

	return i < r->np && r->pg[i].addr == addr ? i : -1;
}

/* Does the model have any page in [a, a + n pages)? */
static bool pg_any(struct run *r, uintptr_t a, size_t n)
{
	int i = pg_lower(r, a);

	return i < r->np && r->pg[i].addr < a + n * r->ps;
}

/* Take the n pages from a (all of them in the model) out into out (if not NULL, else free). */
static void pg_take(struct run *r, uintptr_t a, size_t n, struct mpage *out)
{
	int i = pg_lower(r, a);

	MCHECK(r, i + (int)n <= r->np && r->pg[i].addr == a &&
		  r->pg[i + (int)n - 1].addr == a + (n - 1) * r->ps,
	       "test bug: %#lx + %zu pages is not all in the model", (unsigned long)a, n);
	if (out) {
		memcpy(out, &r->pg[i], n * sizeof(*out));
	} else {
		for (size_t k = 0; k < n; k++)
			free(r->pg[i + (int)k].data);
	}
	memmove(&r->pg[i], &r->pg[i + (int)n], (size_t)(r->np - i - (int)n) * sizeof(r->pg[0]));
	r->np -= (int)n;
}

/* Put n pages (sorted, contiguous) into the model where nothing is. */
static void pg_put(struct run *r, const struct mpage *in, size_t n)
{
	int i = pg_lower(r, in[0].addr);

	MCHECK(r, r->np + (int)n <= MAXPG, "test bug: the model is full");
	MCHECK(r, !pg_any(r, in[0].addr, n),
	       "%#lx + %zu pages came back from the kernel or lazymap, but the model has pages "
	       "there", (unsigned long)in[0].addr, n);
	memmove(&r->pg[i + (int)n], &r->pg[i], (size_t)(r->np - i) * sizeof(r->pg[0]));
	memcpy(&r->pg[i], in, n * sizeof(*in));
	r->np += (int)n;
}

/*
 * A region as the program knows it around page i: the pages that follow on
 * in address and in source offset, from one source (prot may differ).
 */
static void seg_around(struct run *r, int i, int *lo, int *hi)
{
	size_t ps = r->ps;
	int a = i, b = i + 1;

	while (a > 0 && r->pg[a - 1].addr + ps == r->pg[a].addr && r->pg[a - 1].src == r->pg[a].src &&
	       r->pg[a - 1].off + ps == r->pg[a].off)
		a--;
	while (b < r->np && r->pg[b - 1].addr + ps == r->pg[b].addr &&
	       r->pg[b - 1].src == r->pg[b].src && r->pg[b - 1].off + ps == r->pg[b].off)
		b++;
	*lo = a;
	*hi = b;
}

/*
 * The same, clipped to the kernel's VMA that holds page i: mremap works on
 * one VMA, and the kernel may keep apart what one region is (anon_vma).
 */
static void seg_in_vma(struct run *r, int i, int *lo, int *hi)
{
	struct maps_entry e;
	int n;

	seg_around(r, i, lo, hi);
	n = maps_read(r->pg[i].addr, r->pg[i].addr + 1, &e, 1);
	MCHECK(r, n == 1, "page %#lx of the model is not in /proc/self/maps",
	       (unsigned long)r->pg[i].addr);
	while (r->pg[*lo].addr < e.start)
		(*lo)++;
	while (r->pg[*hi - 1].addr >= e.end)
		(*hi)--;
}

/* A sub-range [*a, *a + *n) of pages lo..hi: whole, head, tail or middle. */
static const char *pick_part(struct run *r, int lo, int hi, int *a, int *n)
{
	int len = hi - lo, shape = (int)rnd(r, 4);

	if (len == 1 || shape == 0) {
		*a = lo;
		*n = len;
		return "whole";
	}
	if (shape == 1 || (shape == 3 && len < 3)) {
		*a = lo;
		*n = 1 + (int)rnd(r, (uint64_t)len - 1);
		return "head";
	}
	if (shape == 2) {
		*n = 1 + (int)rnd(r, (uint64_t)len - 1);
		*a = hi - *n;
		return "tail";
	}
	*a = lo + 1 + (int)rnd(r, (uint64_t)len - 2);
	*n = 1 + (int)rnd(r, (uint64_t)(hi - 1 - *a));
	return "middle";
}

/* The segment [*lo, *hi) around page at, and all of it (whole) or a part of it. */
static const char *pick_range(struct run *r, int at, bool whole, int *lo, int *hi, int *a, int *n)
{
	seg_around(r, at, lo, hi);
	if (!whole)
		return pick_part(r, *lo, *hi, a, n);
	*a = *lo;
	*n = *hi - *lo;
	return "whole";
}

static const char *src_desc(struct run *r, const struct mpage *m)
{
	static char buf[64];

	snprintf(buf, sizeof(buf), "src %u %s off %#llx", m->src, kind_name[r->src[m->src].kind],
		 (unsigned long long)m->off);
	return buf;
}

/*
 * Regions (as seg_around sees them) of each kind; returns all of them. Cuts,
 * moves of a part and DONTUNMAP make more of them, ever smaller: the
 * population is kept to a handful of each kind by count, not by source.
 */
static int count_regions(struct run *r, int *per_kind)
{
	int n = 0;

	memset(per_kind, 0, NKIND * sizeof(*per_kind));
	for (int i = 0; i < r->np; i++) {
		const struct mpage *m = &r->pg[i], *p = i ? &r->pg[i - 1] : NULL;

		if (p && p->addr + r->ps == m->addr && p->src == m->src && p->off + r->ps == m->off)
			continue;
		per_kind[r->src[m->src].kind]++;
		r->region[n++] = i;
	}
	return n;
}

/* ------------------------------------------------------------ the arena */

static long arena_index(struct run *r, uintptr_t a)
{
	uintptr_t base = (uintptr_t)r->arena;

	return a >= base && a < base + ARENA_PAGES * r->ps ? (long)((a - base) / r->ps) : -1;
}

/* [a, a + n pages) became a hole: give the arena its pages there back. */
static void hole_made(struct run *r, uintptr_t a, size_t n)
{
	for (size_t k = 0; k < n; k++) {
		uintptr_t p = a + k * r->ps;
		long i = arena_index(r, p);
		void *q;

		if (i < 0 || r->arena_free[i])
			continue;
		q = mmap((void *)p, r->ps, PROT_NONE,
			 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE, -1, 0);
		if (q == (void *)p)
			r->arena_free[i] = 1;
		else if (q != MAP_FAILED)
			munmap(q, r->ps); /* an old kernel took it as a hint */
	}
}

/* The start of n free arena pages in a row, or 0. */
static uintptr_t arena_find(struct run *r, size_t n)
{
	for (int tries = 0; tries < 8; tries++) {
		size_t i = (size_t)rnd(r, ARENA_PAGES - n), k = 0;

		while (k < n && r->arena_free[i + k])
			k++;
		if (k == n)
			return (uintptr_t)r->arena + i * r->ps;
	}
	return 0;
}

/* Before the kernel replaces them, make sure [a, a + n) is only our PROT_NONE pages. */
static void arena_take(struct run *r, uintptr_t a, size_t n)
{
	int ne = maps_read(a, a + n * r->ps, r->kern, MAXE);
	uintptr_t at = a;

	for (int k = 0; k < ne; k++) {
		MCHECK(r, r->kern[k].start <= at && !strcmp(r->kern[k].perms, "---p"),
		       "test bug: arena %#lx + %zu pages holds %#lx-%#lx %s", (unsigned long)a, n,
		       (unsigned long)r->kern[k].start, (unsigned long)r->kern[k].end,
		       r->kern[k].perms);
		at = r->kern[k].end;
	}
	MCHECK(r, at >= a + n * r->ps && !pg_any(r, a, n), "test bug: arena %#lx + %zu pages "
	       "is not all ours", (unsigned long)a, n);
	for (size_t k = 0; k < n; k++)
		r->arena_free[arena_index(r, a + k * r->ps)] = 0;
}

/* ------------------------------------------------------------ touching */

/* Read the page at p into out, or report the signal it raised. */
static struct touch_fault read_page(const void *p, uint64_t *out, size_t nwords)
{
	const volatile uint64_t *w = p;

	touch_last = (struct touch_fault){ 0 };
	if (sigsetjmp(touch_jmp, 1) == 0) {
		touch_armed = 1;
		for (size_t i = 0; i < nwords; i++)
			out[i] = w[i];
		touch_armed = 0;
	}
	return touch_last;
}

/* Write words [w0, w1) of the page at p from in. */
static struct touch_fault write_words(void *p, const uint64_t *in, size_t w0, size_t w1)
{
	volatile uint64_t *w = p;

	touch_last = (struct touch_fault){ 0 };
	if (sigsetjmp(touch_jmp, 1) == 0) {
		touch_armed = 1;
		for (size_t i = w0; i < w1; i++)
			w[i] = in[i];
		touch_armed = 0;
	}
	return touch_last;
}

/*
 * Where a wrong word w at byte k of a page comes from, if it is a source's:
 * zeros, or a word of a source at another page offset (a region served from
 * the wrong offset or the wrong source).
 */
static const char *diagnose(struct run *r, size_t k, uint64_t w)
{
	static char buf[96];

	if (w == 0)
		return "zero";
	for (uint64_t pg = 0; pg < 1024; pg++) {
		uint64_t off = pg * r->ps + k;

		if (off + 8 <= r->fsize && pattern_word(FILE_TAG, off) == w) {
			snprintf(buf, sizeof(buf), "the file's word at offset %#llx",
				 (unsigned long long)off);
			return buf;
		}
		for (int s = 0; s < r->nsrc; s++)
			if (r->src[s].kind == K_FILL && pattern_word(r->src[s].tag, off) == w) {
				snprintf(buf, sizeof(buf), "the word of fill src %d at offset %#llx", s,
					 (unsigned long long)off);
				return buf;
			}
	}
	return "no source's word (a write?)";
}

/* Read model page i and compare every byte with what the model expects. */
static void check_page(struct run *r, int i, const char *why)
{
	const struct mpage *m = &r->pg[i];
	size_t nw = r->ps / 8;
	int bus = expected(r, m, r->expect);
	struct touch_fault f = read_page((void *)m->addr, r->got, nw);

	if (bus) {
		MCHECK(r, f.signo == SIGBUS, "%s: page %#lx (%s, past EOF %#llx) read %s, not SIGBUS",
		       why, (unsigned long)m->addr, src_desc(r, m), (unsigned long long)r->fsize,
		       f.signo ? strsignal(f.signo) : "data");
		MCHECK(r, (uintptr_t)f.addr >= m->addr && (uintptr_t)f.addr < m->addr + r->ps,
		       "%s: SIGBUS at %p, reading page %#lx", why, f.addr, (unsigned long)m->addr);
		r->count[OP_SIGBUS]++;
		return;
	}
	MCHECK(r, f.signo == 0, "%s: page %#lx (%s, prot %d, %s) raised %s at %p", why,
	       (unsigned long)m->addr, src_desc(r, m), m->prot, m->data ? "written" : "unwritten",
	       strsignal(f.signo), f.addr);
	for (size_t k = 0; k < nw; k++)
		MCHECK(r, r->got[k] == r->expect[k],
		       "%s: page %#lx (%s, %s) word %zu (byte %#zx) reads %#llx, expected %#llx "
		       "(what it read is %s)", why, (unsigned long)m->addr, src_desc(r, m),
		       m->data ? "written" : "unwritten", k, k * 8,
		       (unsigned long long)r->got[k], (unsigned long long)r->expect[k],
		       diagnose(r, k * 8, r->got[k]));
}

/* Check a random page or two of [a, a + n) after an op that changed it. */
static void check_some(struct run *r, uintptr_t a, size_t n, const char *why)
{
	for (int k = 0; k < 2; k++) {
		int i = pg_find(r, a + rnd(r, n) * r->ps);

		MCHECK(r, i >= 0, "test bug: %#lx + %zu pages not in the model", (unsigned long)a, n);
		check_page(r, i, why);
	}
}

/* ------------------------------------------------------------ checks */

static const char *perm_str(int prot)
{
	static const char *const s[] = { "---p", "r--p", "-w-p", "rw-p" };

	return s[prot & 3];
}

static int model_ranges(struct run *r)
{
	for (int i = 0; i < r->np; i++) {
		r->model[i].start = r->pg[i].addr;
		r->model[i].end = r->pg[i].addr + r->ps;
		strcpy(r->model[i].perms, perm_str(r->pg[i].prot));
	}
	return maps_coalesce(r->model, r->np);
}

/*
 * The tree equals the model (coalesced) and its VMA count is stats.regions;
 * else why. *ntree: the tree's ranges coalesced, left in r->tree.
 */
static bool tree_matches(struct run *r, char *why, size_t len, int *ntree)
{
	struct lazymap_stats st;
	int nt = tree_read(r->lm, r->tree, MAXE), nm = model_ranges(r), raw = nt;

	*ntree = nt;
	if (nt < 0) {
		snprintf(why, len, "tree_read: %s", strerror(-nt));
		return false;
	}
	if (lazymap_stats(r->lm, &st)) {
		snprintf(why, len, "lazymap_stats failed");
		return false;
	}
	if (st.regions != (uint64_t)raw) {
		snprintf(why, len, "stats.regions %llu, the tree has %d VMAs",
			 (unsigned long long)st.regions, raw);
		return false;
	}
	nt = *ntree = maps_coalesce(r->tree, nt);
	for (int i = 0; i < nt || i < nm; i++) {
		if (i < nt && i < nm && r->tree[i].start == r->model[i].start &&
		    r->tree[i].end == r->model[i].end && !strcmp(r->tree[i].perms, r->model[i].perms))
			continue;
		if (i >= nm)
			snprintf(why, len, "the tree has %#lx-%#lx %s, the model nothing more "
				 "(tree %d ranges, model %d)", (unsigned long)r->tree[i].start,
				 (unsigned long)r->tree[i].end, r->tree[i].perms, nt, nm);
		else if (i >= nt)
			snprintf(why, len, "the model has %#lx-%#lx %s, the tree nothing more "
				 "(tree %d ranges, model %d)", (unsigned long)r->model[i].start,
				 (unsigned long)r->model[i].end, r->model[i].perms, nt, nm);
		else
			snprintf(why, len, "range %d: tree %#lx-%#lx %s, model %#lx-%#lx %s "
				 "(tree %d ranges, model %d)", i, (unsigned long)r->tree[i].start,
				 (unsigned long)r->tree[i].end, r->tree[i].perms,
				 (unsigned long)r->model[i].start, (unsigned long)r->model[i].end,
				 r->model[i].perms, nt, nm);
		return false;
	}
	return true;
}

/*
 * Each range of the tree (coalesced) is exactly what /proc/self/maps has
 * there (coalesced): same bounds, same perms. r->tree holds the nt ranges
 * of the coalesced tree from tree_matches.
 */
static void check_kernel(struct run *r, int nt)
{
	int na = maps_read(0, UINTPTR_MAX, r->all, MAXE);

	MCHECK(r, na > 0 && na < MAXE, "maps_read: %d", na);
	for (int i = 0, k0 = 0; i < nt; i++) {
		uintptr_t s = r->tree[i].start, e = r->tree[i].end;
		int nk = 0;

		while (k0 < na && r->all[k0].end <= s)
			k0++;
		for (int k = k0; k < na && r->all[k].start < e; k++)
			r->kern[nk++] = r->all[k];
		MCHECK(r, nk > 0, "tree %#lx-%#lx %s is not in /proc/self/maps", (unsigned long)s,
		       (unsigned long)e, r->tree[i].perms);
		nk = maps_coalesce(r->kern, nk);
		MCHECK(r, nk == 1 && r->kern[0].start == s && r->kern[0].end == e &&
			  !strcmp(r->kern[0].perms, r->tree[i].perms),
		       "tree %#lx-%#lx %s, /proc/self/maps there: %#lx-%#lx %s%s", (unsigned long)s,
		       (unsigned long)e, r->tree[i].perms, (unsigned long)r->kern[0].start,
		       (unsigned long)r->kern[0].end, r->kern[0].perms,
		       nk > 1 ? " and more (a hole or other perms inside)" : "");
	}
}

/*
 * After every step: the tree says what the model says, and the kernel says
 * what the tree says. The program's munmap returns once a handler has read
 * the event, maybe before the tree has it: a mismatch may last until the
 * handlers are idle (quiesce), then for 2 s at most; each such step counts.
 */
static void check_all(struct run *r)
{
	char why[512];
	int nt;

	if (!tree_matches(r, why, sizeof(why), &nt)) {
		double t0 = now_s();

		int ret;

		r->late++;
		ret = lzm_quiesce(r->lm, 30000);
		MCHECK(r, ret == 0, "lzm_quiesce: %s (%s)", strerror(-ret), why);
		while (!tree_matches(r, why, sizeof(why), &nt)) {
			MCHECK(r, now_s() - t0 < 2.0, "%s", why);
			sched_yield();
		}
	}
	check_kernel(r, nt);
}

/* ------------------------------------------------------------ ops */

static void op_map(struct run *r, int kind)
{
	size_t ps = r->ps, n = 4 + rnd(r, 61);
	struct source *s = &r->src[r->nsrc];
	uint64_t base = 0;
	struct mpage *in;
	void *p = NULL;
	int ret;

	MCHECK(r, r->nsrc < MAXSRC, "test bug: out of sources");
	s->kind = kind;
	s->tag = rng_next(&r->rng) | 1;
	if (kind == K_FILE)
		base = rnd(r, FILE_PAGES - 20) * ps; /* some run past the end */
	note(r, "map %s %zu pages (src %d, off %#llx)", kind_name[kind], n, r->nsrc,
	     (unsigned long long)base);
	if (kind == K_ZERO)
		ret = lazymap_map(r->lm, &p, n * ps, PROT_READ | PROT_WRITE,
				  LAZYMAP_PRIVATE | LAZYMAP_ANON, -1, 0);
	else if (kind == K_FILL)
		ret = lazymap_map_fill(r->lm, &p, n * ps, PROT_READ | PROT_WRITE, model_fill, s);
	else
		ret = lazymap_map(r->lm, &p, n * ps, PROT_READ | PROT_WRITE, LAZYMAP_PRIVATE, r->fd,
				  (off_t)base);
	MCHECK(r, ret == 0, "lazymap_map: %s", strerror(-ret));
	note_more(r, " at %p", p);
	in = calloc(n, sizeof(*in));
	for (size_t k = 0; k < n; k++)
		in[k] = (struct mpage){ (uintptr_t)p + k * ps, base + k * ps, (uint32_t)r->nsrc,
					PROT_READ | PROT_WRITE, NULL };
	for (size_t k = 0; k < n; k++)
		if (arena_index(r, in[k].addr) >= 0)
			MCHECK(r, !r->arena_free[arena_index(r, in[k].addr)],
			       "lazymap_map placed %p over the arena's own pages", p);
	pg_put(r, in, n);
	free(in);
	r->nsrc++;
	r->count[OP_MAP]++;
	check_some(r, (uintptr_t)p, n, "a new region");
}

static void op_read(struct run *r)
{
	int i = (int)rnd(r, (uint64_t)r->np);

	note(r, "read %#lx (%s)", (unsigned long)r->pg[i].addr, src_desc(r, &r->pg[i]));
	check_page(r, i, "read");
	r->count[OP_READ]++;
}

static void op_write(struct run *r)
{
	int i = (int)rnd(r, (uint64_t)r->np);
	struct mpage *m = &r->pg[i];
	size_t nw = r->ps / 8, w0 = rnd(r, nw), w1 = w0 + 1 + rnd(r, nw - w0);
	int bus = expected(r, m, r->expect);
	struct touch_fault f;

	note(r, "write %#lx words %zu-%zu (%s, prot %d)", (unsigned long)m->addr, w0, w1,
	     src_desc(r, m), m->prot);
	for (size_t k = w0; k < w1; k++)
		r->expect[k] = rng_next(&r->rng);
	f = write_words((void *)m->addr, r->expect, w0, w1);
	if (!(m->prot & PROT_WRITE)) {
		/* the kernel refuses it before any fault reaches lazymap */
		MCHECK(r, f.signo == SIGSEGV, "a write to read-only %#lx raised %s",
		       (unsigned long)m->addr, f.signo ? strsignal(f.signo) : "nothing");
		r->count[OP_RO_SEGV]++;
		return;
	}
	if (bus) {
		MCHECK(r, f.signo == SIGBUS, "a write to %#lx past EOF raised %s, not SIGBUS",
		       (unsigned long)m->addr, f.signo ? strsignal(f.signo) : "nothing");
		r->count[OP_SIGBUS]++;
		return;
	}
	MCHECK(r, f.signo == 0, "a write to %#lx raised %s at %p", (unsigned long)m->addr,
	       strsignal(f.signo), f.addr);
	/* the words not written keep what the page had: the source's, or earlier writes */
	if (!m->data) {
		uint64_t *old = malloc(r->ps);

		expected(r, m, old);
		m->data = (uint8_t *)old;
	}
	memcpy(m->data + w0 * 8, &r->expect[w0], (w1 - w0) * 8);
	r->count[OP_WRITE]++;
	if (rnd(r, 2))
		check_page(r, i, "read after write");
}

static void op_munmap(struct run *r, int at, bool whole)
{
	int lo, hi, a, n;
	const char *shape;
	uintptr_t addr;
	int ret;

	shape = pick_range(r, at, whole, &lo, &hi, &a, &n);
	addr = r->pg[a].addr;
	note(r, "munmap %s %#lx + %d of %d pages (%s)", shape, (unsigned long)addr, n, hi - lo,
	     src_desc(r, &r->pg[a]));
	ret = munmap((void *)addr, (size_t)n * r->ps);
	MCHECK(r, ret == 0, "munmap: %s", strerror(errno));
	pg_take(r, addr, (size_t)n, NULL);
	r->count[OP_MUNMAP]++;
	if (rnd(r, 3) == 0) {
		/* gone is gone: the touch faults, whatever the handlers do */
		char c;
		struct touch_fault f = touch((char *)addr + rnd(r, (uint64_t)n) * r->ps, -1, &c);
		struct maps_entry e;

		/* unless a mapping not of ours took the hole meanwhile (a handler's malloc) */
		MCHECK(r, f.signo == SIGSEGV ||
			  (f.signo == 0 && maps_read(addr, addr + (size_t)n * r->ps, &e, 1) > 0),
		       "a touch of munmapped %#lx raised %s", (unsigned long)addr,
		       f.signo ? strsignal(f.signo) : "nothing, and nothing is mapped there");
		r->count[OP_GONE_SEGV]++;
	}
	if (rnd(r, 3) == 0) {
		ret = lazymap_unmap(r->lm, (void *)addr, (size_t)n * r->ps);
		MCHECK(r, ret == -EINVAL, "lazymap_unmap of the range the program munmapped: %d (%s), "
		       "not -EINVAL", ret, strerror(-ret));
		r->count[OP_EINVAL]++;
	}
	hole_made(r, addr, (size_t)n);
}

static void op_shrink(struct run *r)
{
	int lo, hi, len, keep;
	uintptr_t a;
	void *q;

	seg_in_vma(r, (int)rnd(r, (uint64_t)r->np), &lo, &hi);
	len = hi - lo;
	if (len < 2)
		return;
	keep = 1 + (int)rnd(r, (uint64_t)len - 1);
	a = r->pg[lo].addr;
	note(r, "mremap shrink %#lx %d -> %d pages (%s)", (unsigned long)a, len, keep,
	     src_desc(r, &r->pg[lo]));
	q = mremap((void *)a, (size_t)len * r->ps, (size_t)keep * r->ps, 0);
	MCHECK(r, q == (void *)a, "mremap shrink: %p, %s", q, strerror(errno));
	pg_take(r, a + (size_t)keep * r->ps, (size_t)(len - keep), NULL);
	hole_made(r, a + (size_t)keep * r->ps, (size_t)(len - keep));
	r->count[OP_SHRINK]++;
	check_some(r, a, (size_t)keep, "after a shrink");
}

/*
 * Pages lo..hi (one kernel VMA, contiguous offsets) now at to, new_n pages
 * long: the first min(n, new_n) keep their source offset and what was
 * written; a grown tail continues the offsets. dontunmap: the old pages
 * stay, emptied; else they are gone.
 */
static void model_remap(struct run *r, int lo, int n, uintptr_t to, int new_n, bool dontunmap)
{
	size_t ps = r->ps;
	uintptr_t from = r->pg[lo].addr;
	struct mpage *moved = calloc((size_t)(n > new_n ? n : new_n), sizeof(*moved));
	struct mpage last;

	pg_take(r, from, (size_t)n, moved);
	last = moved[n - 1];
	if (dontunmap) {
		struct mpage *old = calloc((size_t)n, sizeof(*old));

		for (int k = 0; k < n; k++) {
			old[k] = moved[k];
			old[k].data = NULL;
		}
		pg_put(r, old, (size_t)n);
		free(old);
	}
	for (int k = new_n; k < n; k++)
		free(moved[k].data);
	for (int k = n; k < new_n; k++)
		moved[k] = (struct mpage){ 0, last.off + (uint64_t)(k - n + 1) * ps, last.src,
					   last.prot, NULL };
	for (int k = 0; k < new_n; k++)
		moved[k].addr = to + (size_t)k * ps;
	pg_put(r, moved, (size_t)new_n);
	free(moved);
}

static void op_grow(struct run *r)
{
	size_t ps = r->ps;
	int lo, hi, len, k;
	uintptr_t a, end;
	bool hole = false;
	void *q;

	seg_in_vma(r, (int)rnd(r, (uint64_t)r->np), &lo, &hi);
	len = hi - lo;
	if (len >= MAXSEG)
		return;
	k = 1 + (int)rnd(r, (uint64_t)(MAXSEG - len < 16 ? MAXSEG - len : 16));
	a = r->pg[lo].addr;
	end = a + (size_t)len * ps;
	/* room right after it in the arena: make a hole there, to grow in place */
	if (arena_index(r, end) >= 0 && arena_index(r, end + (size_t)k * ps - 1) >= 0 && rnd(r, 4)) {
		hole = true;
		for (int j = 0; j < k; j++)
			hole &= r->arena_free[arena_index(r, end + (size_t)j * ps)];
		if (hole) {
			arena_take(r, end, (size_t)k);
			MCHECK(r, munmap((void *)end, (size_t)k * ps) == 0, "munmap arena: %s",
			       strerror(errno));
		}
	}
	note(r, "mremap grow %#lx %d -> %d pages%s (%s)", (unsigned long)a, len, len + k,
	     hole ? " into a hole" : "", src_desc(r, &r->pg[lo]));
	q = mremap((void *)a, (size_t)len * ps, (size_t)(len + k) * ps, 0);
	if (q == MAP_FAILED) {
		MCHECK(r, errno == ENOMEM, "mremap grow in place: %s", strerror(errno));
		q = mremap((void *)a, (size_t)len * ps, (size_t)(len + k) * ps, MREMAP_MAYMOVE);
		MCHECK(r, q != MAP_FAILED, "mremap grow MAYMOVE: %s", strerror(errno));
	}
	note_more(r, " -> %p", q);
	model_remap(r, lo, len, (uintptr_t)q, len + k, false);
	/*
	 * The tree has the grown tail before anything touches it: the program
	 * may lazymap_protect or lazymap_unmap it first, or lazymap_close.
	 */
	check_all(r);
	if ((uintptr_t)q == a) {
		r->count[OP_GROW_INPLACE]++;
	} else {
		hole_made(r, a, (size_t)len);
		if (hole)
			hole_made(r, end, (size_t)k); /* the hole went unused */
		r->count[OP_GROW_MOVED]++;
	}
	/* the new tail first: offsets past the old end */
	check_page(r, pg_find(r, (uintptr_t)q + (size_t)(len + (int)rnd(r, (uint64_t)k)) * ps),
		   "the grown tail");
	check_some(r, (uintptr_t)q, (size_t)(len + k), "after a grow");
}

static void op_move(struct run *r, bool dontunmap)
{
	size_t ps = r->ps;
	int lo, hi, a, n, new_n;
	uintptr_t from, to;
	const char *shape;
	void *q;
	int flags = MREMAP_MAYMOVE;

	seg_in_vma(r, (int)rnd(r, (uint64_t)r->np), &lo, &hi);
	shape = pick_part(r, lo, hi, &a, &n);
	new_n = n;
	if (!dontunmap && rnd(r, 4) == 0) /* move and resize at once */
		new_n = rnd(r, 2) && n > 1 ? 1 + (int)rnd(r, (uint64_t)n - 1) : n + 1 + (int)rnd(r, 8);
	from = r->pg[a].addr;
	to = arena_find(r, (size_t)new_n);
	if (!to && !dontunmap)
		return;
	if (to) {
		arena_take(r, to, (size_t)new_n);
		flags |= MREMAP_FIXED;
	}
	if (dontunmap)
		flags |= MREMAP_DONTUNMAP;
	note(r, "mremap %s %s %#lx + %d pages -> %#lx + %d (%s)", dontunmap ? "dontunmap" : "move",
	     shape, (unsigned long)from, n, (unsigned long)to, new_n, src_desc(r, &r->pg[a]));
	q = mremap((void *)from, (size_t)n * ps, (size_t)new_n * ps, flags, (void *)to);
	MCHECK(r, q != MAP_FAILED && (!to || q == (void *)to), "mremap: %p, %s", q, strerror(errno));
	to = (uintptr_t)q;
	model_remap(r, a, n, to, new_n, dontunmap);
	if (!dontunmap)
		hole_made(r, from, (size_t)n);
	check_all(r); /* before a touch: as for op_grow */
	r->count[dontunmap ? OP_DONTUNMAP : OP_MOVE]++;
	check_some(r, to, (size_t)new_n, "the moved range");
	if (dontunmap)
		check_some(r, from, (size_t)n, "the range left behind by MREMAP_DONTUNMAP");
}

static void op_dontneed(struct run *r)
{
	int lo, hi, a, n, ret;
	const char *shape;
	uintptr_t addr;

	seg_around(r, (int)rnd(r, (uint64_t)r->np), &lo, &hi);
	shape = pick_part(r, lo, hi, &a, &n);
	addr = r->pg[a].addr;
	note(r, "madvise dontneed %s %#lx + %d pages (%s)", shape, (unsigned long)addr, n,
	     src_desc(r, &r->pg[a]));
	ret = madvise((void *)addr, (size_t)n * r->ps, MADV_DONTNEED);
	MCHECK(r, ret == 0, "madvise: %s", strerror(errno));
	for (int k = a; k < a + n; k++) {
		free(r->pg[k].data);
		r->pg[k].data = NULL;
	}
	r->count[OP_DONTNEED]++;
	check_some(r, addr, (size_t)n, "after MADV_DONTNEED");
}

static void op_protect(struct run *r)
{
	int lo, hi, a, n, ret, prot = PROT_READ;
	const char *shape;
	uintptr_t addr;

	seg_around(r, (int)rnd(r, (uint64_t)r->np), &lo, &hi);
	shape = pick_part(r, lo, hi, &a, &n);
	addr = r->pg[a].addr;
	for (int k = a; k < a + n; k++)
		if (r->pg[k].prot != (PROT_READ | PROT_WRITE))
			prot = PROT_READ | PROT_WRITE;
	note(r, "lazymap_protect %s %#lx + %d pages %s (%s)", shape, (unsigned long)addr, n,
	     perm_str(prot), src_desc(r, &r->pg[a]));
	ret = lazymap_protect(r->lm, (void *)addr, (size_t)n * r->ps, prot);
	MCHECK(r, ret == 0, "lazymap_protect: %s", strerror(-ret));
	for (int k = a; k < a + n; k++)
		r->pg[k].prot = (uint8_t)prot;
	r->count[OP_PROTECT]++;
}

static void op_lunmap(struct run *r, int at, bool whole)
{
	int lo, hi, a, n, ret;
	const char *shape;
	uintptr_t addr;

	shape = pick_range(r, at, whole, &lo, &hi, &a, &n);
	addr = r->pg[a].addr;
	note(r, "lazymap_unmap %s %#lx + %d pages (%s)", shape, (unsigned long)addr, n,
	     src_desc(r, &r->pg[a]));
	ret = lazymap_unmap(r->lm, (void *)addr, (size_t)n * r->ps);
	MCHECK(r, ret == 0, "lazymap_unmap: %s", strerror(-ret));
	pg_take(r, addr, (size_t)n, NULL);
	MCHECK(r, msync((void *)addr, (size_t)n * r->ps, MS_ASYNC) == -1 && errno == ENOMEM,
	       "lazymap_unmap returned 0 but the kernel still maps %#lx", (unsigned long)addr);
	hole_made(r, addr, (size_t)n);
	r->count[OP_LUNMAP]++;
}

static void step(struct run *r)
{
	int per_kind[NKIND], regions = count_regions(r, per_kind), w;

	/* a handful of regions of each kind: 6 at least, about 9 at most */
	for (int kind = 0; kind < NKIND; kind++)
		if (r->np < SOFTPG && per_kind[kind] < 6) {
			op_map(r, kind);
			return;
		}
	if (regions > 9 * NKIND) {
		/* the smallest of three: cuts leave crumbs, which would crowd out the rest */
		int best = -1, size = 0;

		for (int k = 0; k < 3; k++) {
			int j = (int)rnd(r, (uint64_t)regions), lo, hi;

			seg_around(r, r->region[j], &lo, &hi);
			if (best < 0 || hi - lo < size) {
				best = lo;
				size = hi - lo;
			}
		}
		if (rnd(r, 2))
			op_munmap(r, best, true);
		else
			op_lunmap(r, best, true);
		return;
	}
	w = (int)rnd(r, 100);
	if (r->np > SOFTPG && w >= 50 && w < 75)
		w = 40; /* too big: unmap instead of growing */
	if (w < 26)
		op_read(r);
	else if (w < 40)
		op_write(r);
	else if (w < 48)
		op_munmap(r, (int)rnd(r, (uint64_t)r->np), false);
	else if (w < 53)
		op_shrink(r);
	else if (w < 59)
		op_grow(r);
	else if (w < 65)
		op_move(r, false);
	else if (w < 70)
		op_move(r, true);
	else if (w < 77)
		op_dontneed(r);
	else if (w < 84)
		op_protect(r);
	else if (w < 91)
		op_lunmap(r, (int)rnd(r, (uint64_t)r->np), false);
	else if (w < 94) {
		int kind = (int)rnd(r, NKIND);

		if (per_kind[kind] < 9)
			op_map(r, kind);
	} else {
		op_read(r);
	}
}

/* ------------------------------------------------------------ the run */

static int make_file(struct run *r)
{
	char path[] = "/var/tmp/lazymap-events-model-XXXXXX";
	size_t len = FILE_PAGES * r->ps + FILE_TAIL;
	uint64_t *buf = malloc(len + 8);
	int fd = mkstemp(path);

	cr_assert_geq(fd, 0, "mkstemp: %s", strerror(errno));
	unlink(path);
	file_words(len, 0, buf, len / 8 + 1);
	cr_assert_eq(pwrite(fd, buf, len, 0), (ssize_t)len);
	free(buf);
	r->fsize = len;
	return fd;
}

static void run_model(const struct lazymap_opts *opts, int ops, uint64_t salt)
{
	struct run *r = calloc(1, sizeof(*r));
	const char *e = getenv("LAZYMAP_MODEL_OPS");
	int fds0, tasks0, nplant = 0, nt;
	uintptr_t plant[4];
	double t0 = now_s();
	char why[512];

	cr_assert_not_null(r);
	r->ps = pgsz();
	r->seed = test_seed();
	r->rng = r->seed ^ salt;
	r->ops = e ? atoi(e) : ops;
	cur_run = r;
	touch_install();
	signal(SIGALRM, watchdog);
	note(r, "open");

	r->fd = make_file(r);
	r->arena = mmap(NULL, ARENA_PAGES * r->ps, PROT_NONE,
			MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	cr_assert_neq(r->arena, MAP_FAILED);
	memset(r->arena_free, 1, sizeof(r->arena_free));
	start_runtime_threads(); /* before the count */
	fds0 = count_dir("/proc/self/fd");
	tasks0 = count_dir("/proc/self/task");
	r->lm = open_or_skip(opts);

	for (r->step = 0; r->step < r->ops; r->step++) {
		alarm(STEP_ALARM_S);
		step(r);
		check_all(r);
	}

	/* The end: everything goes, by the program's munmap or lazymap_unmap. */
	while (r->np) {
		int lo, hi, n, ret;
		uintptr_t a;
		bool own = rnd(r, 2);

		alarm(STEP_ALARM_S);
		seg_around(r, (int)rnd(r, (uint64_t)r->np), &lo, &hi);
		a = r->pg[lo].addr;
		n = hi - lo;
		note(r, "end: %s %#lx + %d pages", own ? "munmap" : "lazymap_unmap", (unsigned long)a, n);
		if (own)
			ret = munmap((void *)a, (size_t)n * r->ps) ? -errno : 0;
		else
			ret = lazymap_unmap(r->lm, (void *)a, (size_t)n * r->ps);
		MCHECK(r, ret == 0, "%s", strerror(-ret));
		pg_take(r, a, (size_t)n, NULL);
		if (own && arena_index(r, a) < 0 && nplant < 4)
			plant[nplant++] = a;
		hole_made(r, a, (size_t)n);
		check_all(r);
		r->step++;
	}
	note(r, "end: the tree is empty");
	MCHECK(r, tree_matches(r, why, sizeof(why), &nt), "%s", why);
	MCHECK(r, nt == 0, "the tree still has %d VMAs", nt);

	/*
	 * Address reuse: pages the program maps where its regions were (the
	 * arena took back every hole in it; a few plain pages elsewhere) are
	 * its own, and lazymap_close leaves them alone.
	 */
	for (int k = 0; k < nplant; k++) {
		void *q = mmap((void *)plant[k], r->ps, PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);

		if (q != (void *)plant[k]) {
			if (q != MAP_FAILED)
				munmap(q, r->ps);
			plant[k] = 0;
			continue;
		}
		memset(q, 0xa5, r->ps);
	}
	note(r, "end: lazymap_close");
	MCHECK(r, lazymap_close(r->lm) == 0, "lazymap_close failed");
	for (int k = 0; k < nplant; k++) {
		char c = 0;

		if (!plant[k])
			continue;
		MCHECK(r, touch((char *)plant[k] + 100, -1, &c).signo == 0 && c == (char)0xa5,
		       "the program's page at %#lx, where a region was, was unmapped or changed by "
		       "lazymap_close", (unsigned long)plant[k]);
		munmap((void *)plant[k], r->ps);
	}
	for (int i = 0; i < ARENA_PAGES; i++) {
		uintptr_t p = (uintptr_t)r->arena + (size_t)i * r->ps;

		if (!r->arena_free[i])
			continue; /* a hole: not ours to unmap */
		MCHECK(r, msync((void *)p, r->ps, MS_ASYNC) == 0,
		       "the program's PROT_NONE page %#lx is gone after lazymap_close",
		       (unsigned long)p);
		munmap((void *)p, r->ps);
	}
	alarm(0);
	MCHECK(r, count_dir("/proc/self/fd") == fds0, "%d descriptors after lazymap_close, %d before "
	       "lazymap_open", count_dir("/proc/self/fd"), fds0);
	MCHECK(r, count_dir("/proc/self/task") == tasks0, "%d threads after lazymap_close, %d "
	       "before lazymap_open", count_dir("/proc/self/task"), tasks0);
	close(r->fd);

	cr_log_info("LAZYMAP_SEED=%#llx: %d ops in %.1f s, %u steps where the tree caught up late",
		    (unsigned long long)r->seed, r->ops, now_s() - t0, r->late);
	for (int k = 0; k < NOP; k++)
		cr_log_info("  %-36s %u", op_name[k], r->count[k]);
	/* a run that did not exercise what it is for proves nothing */
	if (r->ops >= 2000)
		for (int k = OP_READ; k <= OP_LUNMAP; k++)
			if (k != OP_GROW_INPLACE)
				MCHECK(r, r->count[k] >= 10, "only %u of \"%s\" in %d ops", r->count[k],
				       op_name[k], r->ops);
	for (int i = 0; i < r->np; i++)
		free(r->pg[i].data);
	cur_run = NULL;
	free(r);
}

Test(events_model, random_ops_one_handler, .timeout = 240)
{
	run_model(NULL, 10000, 0);
}

Test(events_model, random_ops_two_handlers, .timeout = 240)
{
	struct lazymap_opts opts = { .handler_threads = 2 };

	run_model(&opts, 3000, 0x2222);
}
