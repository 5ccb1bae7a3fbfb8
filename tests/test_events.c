// SPDX-License-Identifier: MIT
/*
 * The program's own munmap, mremap and madvise on lazymap regions (issue 9):
 * the tree follows the kernel, every page still mapped reads what its source
 * gives at its region offset, what is gone is SIGSEGV; and the regressions a
 * review found: moved regions reading zeros, address reuse, touches racing
 * lazymap_unmap reading zeros, the same under concurrency.
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <sys/mman.h>
#include <sys/wait.h>

#include "common.h"

#define RW (PROT_READ | PROT_WRITE)

/* ------------------------------------------------------------ sources */

/*
 * Every byte is checkable: word k of a source is a hash of k + salt with
 * every byte's low bit set, so that no source byte is zero (a page that
 * reads zeros is always wrong) and none equals its own complement (what the
 * concurrency test's writers store). Salts lie far apart, so that no two
 * sources agree at any pair of nearby offsets.
 */
#define FILL_SALT  0x1000000000ull
#define FILE_SALT  0x2000000000ull
#define WRITE_SALT 0x3000000000ull /* what the tests write into pages */
#define PLAIN_SALT 0x4000000000ull /* a plain mmap of the program's own */

static inline uint64_t pat_word(uint64_t off, uint64_t salt)
{
	return ((off / 8 + salt) * 0x9E3779B97F4A7C15ull) | 0x0101010101010101ull;
}

static inline uint8_t pat_byte(uint64_t off, uint64_t salt)
{
	return (uint8_t)(pat_word(off, salt) >> (8 * (off % 8))); /* little-endian */
}

/* len bytes of the pattern from offset off (a multiple of 8). */
static void pat_fill(void *buf, size_t len, uint64_t off, uint64_t salt)
{
	uint64_t *w = buf;

	for (size_t i = 0; i < len / 8; i++)
		w[i] = pat_word(off + 8 * i, salt);
}

/* What the concurrency test's writers store: never a source byte (their low bit is set). */
static inline uint8_t flip(uint8_t b)
{
	return (uint8_t)(b ^ 0xffu);
}

/* A fill callback's source: the pattern, and what it was asked for. */
struct fill_src {
	uint64_t salt;
	atomic_ulong calls;
	atomic_ulong max_end; /* the highest offset + len asked for */
};

static int fill_pattern(void *page, size_t len, uint64_t offset, void *arg)
{
	struct fill_src *fs = arg;
	unsigned long end = (unsigned long)(offset + len), m = atomic_load(&fs->max_end);

	pat_fill(page, len, offset, fs->salt);
	atomic_fetch_add(&fs->calls, 1);
	while (end > m && !atomic_compare_exchange_weak(&fs->max_end, &m, end))
		;
	return 0;
}

enum kind { ZERO, FILL, FILE_ };
static const char *const kind_name[] = { "zero", "fill", "file" };

/* What a region is mapped from: region offset o reads source byte o. */
struct src {
	enum kind kind;
	struct fill_src fs; /* FILL */
	int fd;             /* FILE_: the backing file, unlinked */
	uint64_t foff;      /* FILE_: the region's offset in it */
	uint64_t fsize;     /* FILE_: its size, a multiple of the page size */
};

static void src_init(struct src *s, enum kind kind, size_t file_pages, size_t foff_pages)
{
	size_t ps = pgsz();

	memset(s, 0, sizeof(*s));
	s->kind = kind;
	s->fs.salt = FILL_SALT;
	s->fd = -1;
	if (kind == FILE_) {
		char path[] = "/var/tmp/lazymap-events-XXXXXX";
		size_t size = file_pages * ps;
		ssize_t w = -1;
		char *buf = malloc(size);

		s->fd = mkstemp(path);
		cr_assert_geq(s->fd, 0, "mkstemp %s: %s", path, strerror(errno));
		unlink(path);
		s->foff = foff_pages * ps;
		s->fsize = size;
		if (buf) {
			pat_fill(buf, size, 0, FILE_SALT);
			w = pwrite(s->fd, buf, size, 0);
			free(buf);
		}
		cr_assert_eq(w, (ssize_t)size, "writing the test file: %s", strerror(errno));
	}
}

static void src_fini(struct src *s)
{
	if (s->fd >= 0)
		close(s->fd);
	s->fd = -1;
}

/* The page at region offset off, into buf; 0, or SIGBUS wholly past the end of the file. */
static int src_page(const struct src *s, uint64_t off, void *buf)
{
	size_t ps = pgsz();

	switch (s->kind) {
	case ZERO:
		memset(buf, 0, ps);
		return 0;
	case FILL:
		pat_fill(buf, ps, off, s->fs.salt);
		return 0;
	case FILE_:
		if (s->foff + off >= s->fsize)
			return SIGBUS;
		pat_fill(buf, ps, s->foff + off, FILE_SALT);
		return 0;
	}
	return -1;
}

/* One byte of it (the concurrency test's files cover their regions). */
static inline uint8_t src_byte(const struct src *s, uint64_t off)
{
	switch (s->kind) {
	case ZERO:
		return 0;
	case FILL:
		return pat_byte(off, s->fs.salt);
	case FILE_:
		return pat_byte(s->foff + off, FILE_SALT);
	}
	return 0;
}

/*
 * Map a region of s; at != NULL places it there (LAZYMAP_FIXED: not for
 * fill regions, lazymap_map_fill takes no placement). random: advised
 * LAZYMAP_ADV_RANDOM, so that a touch fills only its own page and the pages
 * the test does not touch stay empty, which is what events must get right.
 */
static char *src_map(struct lazymap *lm, struct src *s, size_t len, bool random, void *at)
{
	int fixed = at ? LAZYMAP_FIXED : 0, ret = -EINVAL;
	void *p = at;

	switch (s->kind) {
	case ZERO:
		ret = lazymap_map(lm, &p, len, RW, LAZYMAP_PRIVATE | LAZYMAP_ANON | fixed, -1, 0);
		break;
	case FILL:
		cr_assert_null(at);
		ret = lazymap_map_fill(lm, &p, len, RW, fill_pattern, &s->fs);
		break;
	case FILE_:
		ret = lazymap_map(lm, &p, len, RW, LAZYMAP_PRIVATE | fixed, s->fd, (off_t)s->foff);
		break;
	}
	cr_assert_eq(ret, 0, "mapping a %s region of %zu bytes: %s", kind_name[s->kind], len,
		     strerror(-ret));
	if (at)
		cr_assert_eq(p, at);
	if (random)
		cr_assert_eq(lazymap_advise(lm, p, len, LAZYMAP_ADV_RANDOM), 0);
	return p;
}

/* ------------------------------------------------------------ checks */

/*
 * Page buffers of the checks, static: a failed assertion leaves the test at
 * once, and LeakSanitizer would report what it had allocated.
 */
#define MAXPS (1u << 16)
static char page_want[MAXPS], page_alt[MAXPS], page_buf[MAXPS];

/* What the tests write into the page at region offset off. */
static void written_page(void *buf, uint64_t off)
{
	pat_fill(buf, pgsz(), off, WRITE_SALT);
}

static void write_page(char *addr, uint64_t off)
{
	cr_assert_leq(pgsz(), MAXPS);
	written_page(page_buf, off);
	memcpy(addr, page_buf, pgsz());
}

static bool all_zero(const char *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (p[i])
			return false;
	return true;
}

/*
 * The page mapped at addr, at region offset off of a region of s, reads
 * what was written there (written) or else what the source gives at off
 * (or SIGBUS past the end of a file); written and either: either of the two.
 */
static void check_page_as(const char *what, const struct src *s, char *addr, uint64_t off,
			  bool written, bool either)
{
	size_t ps = pgsz();
	char *want = page_want, *alt = page_alt;
	int sig = 0, alt_sig = -1;
	struct touch_fault f;

	cr_assert_leq(ps, MAXPS);
	if (written) {
		written_page(want, off);
		if (either)
			alt_sig = src_page(s, off, alt);
	} else {
		sig = src_page(s, off, want);
	}
	f = touch(addr, -1, NULL);
	if (sig) {
		cr_assert_eq(f.signo, sig, "%s: %s region, page at offset %#lx (%p), past the end "
			     "of the file: signal %d, want SIGBUS", what, kind_name[s->kind],
			     (unsigned long)off, (void *)addr, f.signo);
		return;
	}
	cr_assert_eq(f.signo, 0, "%s: %s region, page at offset %#lx (%p): signal %d (si_code %d)",
		     what, kind_name[s->kind], (unsigned long)off, (void *)addr, f.signo, f.code);
	if (memcmp(addr, want, ps) && !(alt_sig == 0 && !memcmp(addr, alt, ps))) {
		size_t i = 0;

		while (i < ps && addr[i] == want[i])
			i++;
		cr_assert(0, "%s: %s region, page at offset %#lx (%p): byte %zu is %#x, want %#x "
			  "(%s)%s", what, kind_name[s->kind], (unsigned long)off, (void *)addr, i,
			  (unsigned)(uint8_t)addr[i], (unsigned)(uint8_t)want[i],
			  written ? (either ? "what was written there, or the source's byte"
				    : "what was written there") : "the source's byte at that offset",
			  all_zero(addr, ps) ? "; the page reads zeros" : "");
	}
}

static void check_page(const char *what, const struct src *s, char *addr, uint64_t off,
		       bool written)
{
	check_page_as(what, s, addr, off, written, false);
}

/* npages pages from addr, region offsets from off on; written[i]: page i of them was written. */
static void check_pages(const char *what, const struct src *s, char *addr, uint64_t off,
			size_t npages, const bool *written)
{
	for (size_t i = 0; i < npages; i++)
		check_page(what, s, addr + i * pgsz(), off + i * pgsz(), written && written[i]);
}

/*
 * The VMAs of /proc/self/smaps overlapping [lo, hi) (at most max), and
 * whether each is registered with a userfaultfd (VmFlags "um"). 
 */
static int smaps_read(uintptr_t lo, uintptr_t hi, struct maps_entry *out, bool *uffd, int max)
{
	FILE *f = fopen("/proc/self/smaps", "r");
	char line[512];
	int n = 0;
	bool in = false;

	if (!f)
		return -errno;
	while (fgets(line, sizeof(line), f)) {
		unsigned long st, e;
		char perms[5];

		if (sscanf(line, "%lx-%lx %4s", &st, &e, perms) == 3 && strchr(line, ' ') &&
		    strchr(line, '-') < strchr(line, ' ')) {
			in = e > lo && st < hi && n < max;
			if (in) {
				out[n].start = st;
				out[n].end = e;
				memcpy(out[n].perms, perms, 5);
				uffd[n++] = false;
			}
		} else if (in && !strncmp(line, "VmFlags:", 8)) {
			uffd[n - 1] = strstr(line, " um") != NULL;
		}
	}
	fclose(f);
	return n;
}

/*
 * [addr, addr+len) is gone: nothing of a userfaultfd's there (/proc/self/
 * smaps), and SIGSEGV on every page nobody has mapped since. The kernel
 * hands a hole out again to the next mmap, the library's own bookkeeping
 * included (a sanitizer's runtime too): such a page says nothing of ours
 * and is not touched.
 */
static void check_gone(const char *what, char *addr, size_t len)
{
	struct maps_entry e[16];
	bool uffd[16];
	int n = smaps_read((uintptr_t)addr, (uintptr_t)addr + len, e, uffd, 16);
	size_t reused = 0;

	cr_assert_geq(n, 0, "reading /proc/self/smaps: %s", strerror(-n));
	for (int i = 0; i < n; i++)
		cr_assert(!uffd[i], "%s: %p-%p is gone but /proc/self/smaps has %#lx-%#lx %s there, "
			  "registered with a userfaultfd", what, (void *)addr, (void *)(addr + len),
			  (unsigned long)e[i].start, (unsigned long)e[i].end, e[i].perms);
	for (size_t o = 0; o < len; o += pgsz()) {
		uintptr_t a = (uintptr_t)addr + o;
		bool mapped = false;

		for (int i = 0; i < n; i++)
			mapped |= e[i].start <= a && a < e[i].end;
		if (mapped) {
			reused++;
			continue;
		}
		struct touch_fault f = touch((char *)a, -1, NULL);

		cr_assert_eq(f.signo, SIGSEGV, "%s: %p is gone, its touch gave signal %d, want SIGSEGV",
			     what, (void *)a, f.signo);
	}
	if (reused)
		cr_log_info("%s: %zu of %zu pages gone were mapped again since, by another mmap "
			    "(not a userfaultfd's): not touched", what, reused, len / pgsz());
}

struct range {
	char *start;
	size_t len;
};

#define MAXR 256

static int cmp_entry(const void *a, const void *b)
{
	const struct maps_entry *x = a, *y = b;

	return x->start < y->start ? -1 : x->start > y->start;
}

static void fmt_entries(char *buf, size_t len, const struct maps_entry *e, int n)
{
	size_t k = 0;

	buf[0] = 0;
	for (int i = 0; i < n && k < len; i++)
		k += (size_t)snprintf(buf + k, len - k, "%s%#lx-%#lx %s", i ? ", " : "",
				      (unsigned long)e[i].start, (unsigned long)e[i].end, e[i].perms);
}

/*
 * The tree (lazymap_dump) and /proc/self/maps against the ranges lm should
 * serve, all rw-p: the tree coalesced equals want coalesced, its VMA count
 * is st.regions, and the kernel maps each of those ranges exactly. 0, or a
 * message in why (threads cannot assert: the concurrency test calls this).
 */
static int mirror_diff(struct lazymap *lm, const struct range *want, int n, char *why, size_t len)
{
	static __thread struct maps_entry t[MAXR], w[MAXR], k[MAXR];
	char a[1024], b[1024];
	struct lazymap_stats st;
	int nt = tree_read(lm, t, MAXR), nw, nk;

	if (nt < 0)
		return snprintf(why, len, "tree_read: %s", strerror(-nt)), -1;
	if (n > MAXR)
		return snprintf(why, len, "the test wants %d ranges, at most %d", n, MAXR), -1;
	if (lazymap_stats(lm, &st))
		return snprintf(why, len, "lazymap_stats failed"), -1;
	if (st.regions != (uint64_t)nt) {
		fmt_entries(a, sizeof(a), t, nt);
		return snprintf(why, len, "st.regions is %lu, the tree has %d VMAs: %s",
				(unsigned long)st.regions, nt, a), -1;
	}
	for (int i = 0; i < n; i++) {
		w[i].start = (uintptr_t)want[i].start;
		w[i].end = (uintptr_t)want[i].start + want[i].len;
		strcpy(w[i].perms, "rw-p");
	}
	qsort(w, (size_t)n, sizeof(w[0]), cmp_entry);
	nw = maps_coalesce(w, n);
	nt = maps_coalesce(t, nt);
	fmt_entries(a, sizeof(a), t, nt);
	fmt_entries(b, sizeof(b), w, nw);
	if (nt != nw)
		return snprintf(why, len, "the tree has %d ranges, want %d: tree [%s], want [%s]", nt,
				nw, a, b), -1;
	for (int i = 0; i < nt; i++)
		if (t[i].start != w[i].start || t[i].end != w[i].end || strcmp(t[i].perms, w[i].perms))
			return snprintf(why, len, "tree [%s], want [%s]", a, b), -1;
	for (int i = 0; i < nw; i++) {
		nk = maps_read(w[i].start, w[i].end, k, MAXR);
		if (nk < 0)
			return snprintf(why, len, "reading /proc/self/maps: %s", strerror(-nk)), -1;
		nk = maps_coalesce(k, nk);
		fmt_entries(a, sizeof(a), k, nk);
		if (nk != 1 || k[0].start != w[i].start || k[0].end != w[i].end ||
		    strcmp(k[0].perms, w[i].perms))
			return snprintf(why, len, "/proc/self/maps has [%s] where the tree has "
					"%#lx-%#lx rw-p", a, (unsigned long)w[i].start,
					(unsigned long)w[i].end), -1;
	}
	return 0;
}

static void check_mirror(const char *what, struct lazymap *lm, const struct range *want, int n)
{
	char why[2600];

	cr_assert_eq(mirror_diff(lm, want, n, why, sizeof(why)), 0, "%s: %s", what, why);
}

static struct lazymap_stats stats(struct lazymap *lm)
{
	struct lazymap_stats st;

	cr_assert_eq(lazymap_stats(lm, &st), 0);
	return st;
}

/* The event was followed: lazymap_stats counts it (after the data and the tree are checked). */
static void check_events(const char *what, struct lazymap *lm, uint64_t before)
{
	struct lazymap_stats st = stats(lm);

	cr_assert_gt(st.events, before, "%s: st.events is still %lu: the event was not counted",
		     what, (unsigned long)st.events);
}

static void close_empty(struct lazymap *lm)
{
	struct lazymap_stats st = stats(lm);

	cr_assert_eq(st.regions, 0, "%lu VMAs left in the tree", (unsigned long)st.regions);
	cr_assert_eq(st.broken, 0, "the lazymap broke: %s", strerror((int)st.broken));
	cr_assert_eq(lazymap_close(lm), 0);
}

/*
 * The tests' regions live in a window of the test's own (test_window): the
 * library's own bookkeeping maps pages when it applies an event, and where
 * a test may touch a range after it is gone, only what the test maps there
 * can be there. Closed after every lazymap using it is closed or has
 * unmapped its regions.
 */
static void window_close(char *w, size_t len)
{
	cr_assert_eq(munmap(w, len), 0);
}

/*
 * A region of s at exactly at, in a window: a zero or file region with
 * LAZYMAP_FIXED; a fill region (lazymap_map_fill takes no placement) mapped
 * where the kernel puts it and moved there by mremap before anything
 * touches it, which the library must follow.
 */
static char *window_map(struct lazymap *lm, struct src *s, size_t len, bool random, char *at)
{
	char *p, *q;

	if (s->kind != FILL) {
		cr_assert_eq(munmap(at, len), 0);
		return src_map(lm, s, len, random, at);
	}
	struct maps_entry t[MAXR];
	int n;

	p = src_map(lm, s, len, random, NULL);
	q = mremap(p, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, at);
	cr_assert_eq(q, at, "mremap of a new fill region into the window: %s",
		     q == MAP_FAILED ? strerror(errno) : "elsewhere");
	n = tree_read(lm, t, MAXR);
	for (int i = 0; i < n; i++)
		if (t[i].start == (uintptr_t)at && t[i].end == (uintptr_t)at + len)
			return q;
	cr_assert(0, "a new fill region moved into the test's window (lazymap_map_fill takes no "
		  "placement) is not in the tree there: the tree did not follow the mremap");
	return NULL;
}

/* ------------------------------------------------------------ munmap */

#define NP 32 /* pages in the regions of the single-step tests */
#define NW 96 /* pages of their window */

/*
 * The single-step tests: one lazymap, one source, a window (see above) in
 * which the test places its regions, a page of the window's own between
 * them, so that neither the tree nor the kernel joins two of them.
 */
struct one {
	struct lazymap *lm;
	struct src s;
	char *w;
	uint64_t ev; /* st.events before the step */
};

static void one_open(struct one *o, enum kind kind, size_t file_pages)
{
	touch_install();
	o->lm = open_or_skip(NULL);
	src_init(&o->s, kind, file_pages, 3);
	o->w = test_window(NW * pgsz());
}

/* After the test has unmapped its regions: none is left, nothing broke. */
static void one_close(struct one *o)
{
	close_empty(o->lm);
	window_close(o->w, NW * pgsz());
	src_fini(&o->s);
}

static const struct {
	const char *name;
	size_t first, n; /* pages */
	int regions;     /* VMAs left of the region */
} cuts[] = {
	{ "whole", 0, NP, 0 },
	{ "head", 0, 8, 1 },
	{ "tail", NP - 8, 8, 1 },
	{ "middle", 12, 8, 2 },
};

/* The three tests of a check: one per region kind, named NAME_zero/_fill/_file. */
#define TEST_EACH_KIND(name, fn, secs)                                         \
	Test(events, name##_zero, .timeout = secs) { fn(ZERO); }               \
	Test(events, name##_fill, .timeout = secs) { fn(FILL); }               \
	Test(events, name##_file, .timeout = secs) { fn(FILE_); }

/*
 * The program munmaps a whole region, its head, tail or middle: the tree
 * loses exactly that; what is left, and a second region beside it, still
 * read what they read before (written pages what was written, the rest the
 * source at its offset); the gone part is SIGSEGV; lazymap_unmap of it is
 * -EINVAL and changes nothing.
 */
static void munmap_cuts(enum kind kind)
{
	size_t ps = pgsz();

	for (size_t c = 0; c < sizeof(cuts) / sizeof(cuts[0]); c++) {
		size_t first = cuts[c].first, n = cuts[c].n;
		struct range want[3];
		struct one o;
		int nw = 0;
		bool written[NP] = { false };
		char what[64], *p, *q;

		snprintf(what, sizeof(what), "munmap of the %s", cuts[c].name);
		one_open(&o, kind, NP + 3);
		p = window_map(o.lm, &o.s, NP * ps, true, o.w + ps);
		/* a second region of the same source: offsets from 0 again */
		q = window_map(o.lm, &o.s, 8 * ps, true, o.w + (NP + 2) * ps);
		/* written, read and untouched pages in each part */
		for (int i = 3; i < NP; i += 10) {
			write_page(p + (size_t)i * ps, (uint64_t)i * ps);
			written[i] = true;
		}
		for (int i = 1; i < NP; i += 13)
			check_page("before", &o.s, p + (size_t)i * ps, (uint64_t)i * ps, false);
		check_page("before", &o.s, q + ps, ps, false);
		o.ev = stats(o.lm).events;

		cr_assert_eq(munmap(p + first * ps, n * ps), 0, "%s", strerror(errno));

		if (first > 0)
			want[nw++] = (struct range){ p, first * ps };
		if (first + n < NP)
			want[nw++] = (struct range){ p + (first + n) * ps, (NP - first - n) * ps };
		want[nw++] = (struct range){ q, 8 * ps };
		check_mirror(what, o.lm, want, nw);
		cr_assert_eq(stats(o.lm).regions, (uint64_t)cuts[c].regions + 1, "%s", what);
		check_pages(what, &o.s, p, 0, first, written);
		check_pages(what, &o.s, p + (first + n) * ps, (first + n) * ps, NP - first - n,
			    written + first + n);
		check_pages(what, &o.s, q, 0, 8, NULL);
		check_gone(what, p + first * ps, n * ps);

		/* The range is not ours any more: -EINVAL, and nothing changes. */
		cr_assert_eq(lazymap_unmap(o.lm, p + first * ps, n * ps), -EINVAL,
			     "%s: lazymap_unmap of the range the program unmapped", what);
		check_mirror(what, o.lm, want, nw);
		check_events(what, o.lm, o.ev);
		for (int i = 0; i < nw; i++)
			cr_assert_eq(lazymap_unmap(o.lm, want[i].start, want[i].len), 0);
		one_close(&o);
	}
}

TEST_EACH_KIND(munmap_whole_head_tail_middle, munmap_cuts, 60)

/* ------------------------------------------------------------ mremap */

/*
 * Pages of a region of npages written (3, 12) and read (5, 10, 15, 20)
 * before a step; the others stay untouched.
 */
static void touch_some(const struct src *s, char *p, size_t npages, bool *written)
{
	size_t ps = pgsz();

	memset(written, 0, NP * sizeof(*written));
	for (size_t i = 3; i < 16; i += 9) {
		write_page(p + i * ps, i * ps);
		written[i] = true;
	}
	for (size_t i = 5; i < 25 && i < npages; i += 5)
		check_page("before", s, p + i * ps, i * ps, false);
}

/* mremap shrinks a region: the tail is gone, the head reads as before. */
static void shrink(enum kind kind)
{
	size_t ps = pgsz(), keep = 20;
	bool written[NP];
	struct one o;
	char *p, *q;

	one_open(&o, kind, NP + 3);
	p = window_map(o.lm, &o.s, NP * ps, true, o.w + ps);
	touch_some(&o.s, p, NP, written);
	o.ev = stats(o.lm).events;
	q = mremap(p, NP * ps, keep * ps, 0);
	cr_assert_eq(q, p, "mremap shrink: %s", q == MAP_FAILED ? strerror(errno) : "moved");
	check_pages("after shrinking", &o.s, p, 0, keep, written);
	check_gone("after shrinking", p + keep * ps, (NP - keep) * ps);
	check_mirror("after shrinking", o.lm, &(struct range){ p, keep * ps }, 1);
	cr_assert_eq(lazymap_unmap(o.lm, p + keep * ps, (NP - keep) * ps), -EINVAL,
		     "lazymap_unmap of the tail mremap cut off");
	check_events("mremap shrink", o.lm, o.ev);
	cr_assert_eq(lazymap_unmap(o.lm, p, keep * ps), 0);
	one_close(&o);
}

TEST_EACH_KIND(mremap_shrink, shrink, 30)

/*
 * A grown region [p, p+2n) after it was n pages: the first n as before, the
 * tail from the source at offsets n.. (a file ends at 1.5 n: SIGBUS past it).
 * The tree is checked first: a library that does not know the tail would
 * leave the faults there unserved (a hang, not a failure).
 */
static void check_grown(const char *what, struct lazymap *lm, const struct src *s, char *p,
			size_t n, const bool *written)
{
	size_t ps = pgsz();

	check_mirror(what, lm, &(struct range){ p, 2 * n * ps }, 1);
	check_pages(what, s, p, 0, n, written);
	check_pages(what, s, p + n * ps, n * ps, n, NULL);
	if (s->kind == FILL)
		cr_assert_geq(atomic_load(&s->fs.max_end), 2 * n * ps,
			      "%s: the fill callback was never asked past offset %#lx", what,
			      (unsigned long)atomic_load(&s->fs.max_end));
}

/*
 * Grow in place after the program's own munmap of the upper half: map 2n,
 * munmap [n, 2n), mremap(p, n, 2n, 0). The regrown half is served from the
 * source again (what was written there went with the munmap).
 */
static void grow_after_munmap(enum kind kind)
{
	size_t ps = pgsz(), n = NP / 2;
	bool written[NP];
	struct one o;
	char *p, *q;

	one_open(&o, kind, 3 + n + n / 2);
	p = window_map(o.lm, &o.s, 2 * n * ps, true, o.w + ps);
	touch_some(&o.s, p, 2 * n, written);
	write_page(p + (n + 2) * ps, (n + 2) * ps);
	o.ev = stats(o.lm).events;
	cr_assert_eq(munmap(p + n * ps, n * ps), 0);
	check_mirror("after the program's munmap of the upper half", o.lm,
		     &(struct range){ p, n * ps }, 1);
	check_events("munmap of the upper half", o.lm, o.ev);
	q = mremap(p, n * ps, 2 * n * ps, 0);
	cr_assert_eq(q, p, "mremap grow in place: %s", q == MAP_FAILED ? strerror(errno) : "moved");
	check_grown("after growing in place", o.lm, &o.s, p, n, written);
	cr_assert_eq(lazymap_unmap(o.lm, p, 2 * n * ps), 0);
	one_close(&o);
}

TEST_EACH_KIND(mremap_grow_in_place_after_own_munmap, grow_after_munmap, 30)

/*
 * Grow in place past the length the region was mapped with: the tail's
 * offsets were never part of it (a fill callback is asked for offsets >=
 * the mapped length). The room is the window's own, given up just before.
 */
static void grow_past_length(enum kind kind)
{
	size_t ps = pgsz(), n = NP / 2;
	bool written[NP];
	struct one o;
	char *p, *q;

	one_open(&o, kind, 3 + n + n / 2);
	p = window_map(o.lm, &o.s, n * ps, true, o.w + ps);
	touch_some(&o.s, p, n, written);
	cr_assert_eq(munmap(p + n * ps, n * ps), 0); /* the room to grow into */
	q = mremap(p, n * ps, 2 * n * ps, 0);
	cr_assert_eq(q, p, "mremap grow in place: %s", q == MAP_FAILED ? strerror(errno) : "moved");
	check_grown("after growing past the mapped length", o.lm, &o.s, p, n, written);
	cr_assert_eq(lazymap_unmap(o.lm, p, 2 * n * ps), 0);
	one_close(&o);
}

TEST_EACH_KIND(mremap_grow_in_place_past_mapped_length, grow_past_length, 30)

/*
 * A grow that has to move (MREMAP_MAYMOVE; the window's own page follows
 * the region): the moved pages as before, the tail from the source past the
 * mapped length. The kernel chooses where it goes.
 */
static void grow_moving(enum kind kind)
{
	size_t ps = pgsz(), n = NP / 2;
	bool written[NP];
	struct one o;
	char *p, *q;

	one_open(&o, kind, 3 + n + n / 2);
	p = window_map(o.lm, &o.s, n * ps, true, o.w + ps);
	touch_some(&o.s, p, n, written);
	o.ev = stats(o.lm).events;
	q = mremap(p, n * ps, 2 * n * ps, MREMAP_MAYMOVE);
	cr_assert_neq(q, MAP_FAILED, "mremap grow: %s", strerror(errno));
	cr_assert_neq(q, p, "mremap grew in place over the window's own page");
	/* The moved part first: a library that missed the move has left it unregistered. */
	check_pages("after a moving grow", &o.s, q, 0, n, written);
	check_grown("after a moving grow", o.lm, &o.s, q, n, written);
	check_gone("after a moving grow", p, n * ps);
	check_events("mremap moving grow", o.lm, o.ev);
	cr_assert_eq(lazymap_unmap(o.lm, p, n * ps), -EINVAL, "lazymap_unmap of the old range");
	cr_assert_eq(lazymap_unmap(o.lm, q, 2 * n * ps), 0);
	one_close(&o);
}

TEST_EACH_KIND(mremap_grow_moving, grow_moving, 30)

/*
 * mremap(MREMAP_MAYMOVE | MREMAP_FIXED) of a whole region, then of the
 * middle of the moved region: every page reads at its new address what it
 * read at the old one; the pages never filled are produced from the source
 * at their region offset (a review found they read zeros).
 */
static void move(enum kind kind)
{
	size_t ps = pgsz();
	bool written[NP];
	struct one o;
	char *p, *q, *dst, *dst2, *r;

	one_open(&o, kind, NP + 3);
	p = window_map(o.lm, &o.s, NP * ps, true, o.w + ps);
	dst = o.w + (NP + 2) * ps;
	dst2 = o.w + (2 * NP + 3) * ps;
	touch_some(&o.s, p, NP, written);
	o.ev = stats(o.lm).events;
	q = mremap(p, NP * ps, NP * ps, MREMAP_MAYMOVE | MREMAP_FIXED, dst);
	cr_assert_eq(q, dst, "mremap move: %s", q == MAP_FAILED ? strerror(errno) : "elsewhere");
	check_pages("after the move", &o.s, q, 0, NP, written);
	check_gone("after the move", p, NP * ps);
	check_mirror("after the move", o.lm, &(struct range){ q, NP * ps }, 1);
	cr_assert_eq(lazymap_unmap(o.lm, p, NP * ps), -EINVAL, "lazymap_unmap of the old range");

	/* The middle [8, 16) on its own: three VMAs, offsets kept. */
	r = mremap(q + 8 * ps, 8 * ps, 8 * ps, MREMAP_MAYMOVE | MREMAP_FIXED, dst2);
	cr_assert_eq(r, dst2, "mremap move of the middle: %s",
		     r == MAP_FAILED ? strerror(errno) : "elsewhere");
	check_pages("after moving the middle", &o.s, r, 8 * ps, 8, written + 8);
	check_pages("after moving the middle", &o.s, q, 0, 8, written);
	check_pages("after moving the middle", &o.s, q + 16 * ps, 16 * ps, NP - 16, written + 16);
	check_gone("after moving the middle", q + 8 * ps, 8 * ps);
	check_mirror("after moving the middle", o.lm,
		     (struct range[]){ { q, 8 * ps }, { q + 16 * ps, (NP - 16) * ps }, { r, 8 * ps } }, 3);
	cr_assert_eq(stats(o.lm).regions, 3);
	check_events("mremap move", o.lm, o.ev);
	cr_assert_eq(lazymap_unmap(o.lm, q, 8 * ps), 0);
	cr_assert_eq(lazymap_unmap(o.lm, q + 16 * ps, (NP - 16) * ps), 0);
	cr_assert_eq(lazymap_unmap(o.lm, r, 8 * ps), 0);
	one_close(&o);
}

TEST_EACH_KIND(mremap_move_fixed, move, 30)

/*
 * MREMAP_DONTUNMAP: the new range has the old content (never-filled pages
 * from the source at their offset); the old range stays mapped and ours,
 * emptied: every page is produced again from the source, what was written
 * there is gone.
 */
static void dontunmap(enum kind kind)
{
	size_t ps = pgsz();
	bool written[NP];
	struct one o;
	char *p, *q;

	one_open(&o, kind, NP + 3);
	p = window_map(o.lm, &o.s, NP * ps, true, o.w + ps);
	touch_some(&o.s, p, NP, written);
	o.ev = stats(o.lm).events;
	q = mremap(p, NP * ps, NP * ps, MREMAP_MAYMOVE | MREMAP_FIXED | MREMAP_DONTUNMAP,
		   o.w + (NP + 2) * ps);
	cr_assert_neq(q, MAP_FAILED, "mremap MREMAP_DONTUNMAP: %s", strerror(errno));
	check_pages("the new range after MREMAP_DONTUNMAP", &o.s, q, 0, NP, written);
	check_pages("the old range after MREMAP_DONTUNMAP", &o.s, p, 0, NP, NULL);
	check_mirror("after MREMAP_DONTUNMAP", o.lm,
		     (struct range[]){ { p, NP * ps }, { q, NP * ps } }, 2);
	cr_assert_eq(stats(o.lm).regions, 2);
	check_events("mremap MREMAP_DONTUNMAP", o.lm, o.ev);
	cr_assert_eq(lazymap_unmap(o.lm, p, NP * ps), 0);
	cr_assert_eq(lazymap_unmap(o.lm, q, NP * ps), 0);
	one_close(&o);
}

TEST_EACH_KIND(mremap_dontunmap, dontunmap, 30)

/* ------------------------------------------------------------ madvise */

/*
 * MADV_DONTNEED on [0, 16): every page there is produced again from the
 * source (written data gone, as with the kernel's private anonymous memory);
 * [16, 32) keeps what it had; the tree does not change.
 */
static void dontneed(enum kind kind)
{
	size_t ps = pgsz();
	bool written[NP];
	struct one o;
	char *p;

	one_open(&o, kind, NP + 3);
	p = window_map(o.lm, &o.s, NP * ps, true, o.w + ps);
	touch_some(&o.s, p, NP, written);
	write_page(p + 20 * ps, 20 * ps);
	written[20] = true;
	o.ev = stats(o.lm).events;
	cr_assert_eq(madvise(p, 16 * ps, MADV_DONTNEED), 0, "%s", strerror(errno));
	check_pages("after MADV_DONTNEED", &o.s, p, 0, 16, NULL);
	check_pages("after MADV_DONTNEED (the rest)", &o.s, p + 16 * ps, 16 * ps, NP - 16,
		    written + 16);
	check_mirror("after MADV_DONTNEED", o.lm, &(struct range){ p, NP * ps }, 1);
	/* and once more over pages produced again */
	cr_assert_eq(madvise(p, NP * ps, MADV_DONTNEED), 0, "%s", strerror(errno));
	check_pages("after a second MADV_DONTNEED", &o.s, p, 0, NP, NULL);
	check_events("madvise(MADV_DONTNEED)", o.lm, o.ev);
	cr_assert_eq(lazymap_unmap(o.lm, p, NP * ps), 0);
	one_close(&o);
}

TEST_EACH_KIND(madvise_dontneed, dontneed, 30)

/*
 * The kernel keeps pages new to its LRU lists in per-CPU batches, and
 * MADV_FREE can mark lazily freed only a page that reached its list: the
 * handler threads installed ours, on any CPU. Drain every CPU's batch (an
 * madvise run on each CPU drains its own), then stay on one CPU: the lazily
 * freed pages wait in that CPU's batch, which MADV_PAGEOUT drains there.
 * was gets the affinity to restore.
 */
static void lru_drain_and_pin(cpu_set_t *was)
{
	size_t ps = pgsz();
	char *d = mmap(NULL, ps, RW, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	cpu_set_t one;
	int last = -1;

	cr_assert_neq(d, MAP_FAILED);
	cr_assert_eq(pthread_getaffinity_np(pthread_self(), sizeof(*was), was), 0);
	for (int cpu = 0; cpu < CPU_SETSIZE; cpu++) {
		if (!CPU_ISSET(cpu, was))
			continue;
		CPU_ZERO(&one);
		CPU_SET(cpu, &one);
		cr_assert_eq(pthread_setaffinity_np(pthread_self(), sizeof(one), &one), 0);
		cr_assert_eq(madvise(d, ps, MADV_FREE), 0);
		last = cpu;
	}
	cr_assert_geq(last, 0);
	munmap(d, ps);
}

/*
 * MADV_FREE on [0, 16): the kernel frees the pages lazily, so until it does
 * a page reads what it held (or, once freed, the source). MADV_PAGEOUT makes
 * it free them now (a lazily freed clean page is dropped, no swap needed);
 * a page that is then not resident (mincore) must be produced again from the
 * source: the written data is gone, never zeros.
 */
static void madv_free(enum kind kind)
{
	size_t ps = pgsz();
	bool written[NP];
	unsigned char vec[NP];
	int dropped = 0, dropped_written = 0;
	struct one o;
	char *p;

	cpu_set_t was;

	one_open(&o, kind, NP + 3);
	p = window_map(o.lm, &o.s, NP * ps, true, o.w + ps);
	touch_some(&o.s, p, NP, written);
	write_page(p + 20 * ps, 20 * ps);
	written[20] = true;
	o.ev = stats(o.lm).events;
	if (kind == FILE_) {
		/* A file region maps the file's cache: MADV_FREE is refused, as on
		 * any file mapping, and changes nothing. */
		cr_assert_eq(madvise(p, 16 * ps, MADV_FREE), -1);
		cr_assert_eq(errno, EINVAL);
		check_pages("after a refused MADV_FREE", &o.s, p, 0, NP, written);
		check_events("a refused madvise(MADV_FREE)", o.lm, o.ev);
		cr_assert_eq(lazymap_unmap(o.lm, p, NP * ps), 0);
		one_close(&o);
		return;
	}
	lru_drain_and_pin(&was);
	cr_assert_eq(madvise(p, 16 * ps, MADV_FREE), 0, "%s", strerror(errno));
	for (size_t i = 0; i < 16; i++)
		if (written[i]) /* read only: a write would take the page back */
			check_page_as("after MADV_FREE", &o.s, p + i * ps, i * ps, true, true);
	check_mirror("after MADV_FREE", o.lm, &(struct range){ p, NP * ps }, 1);
	/* a page the kernel was still busy with stays: a few tries */
	for (int tries = 0;; tries++) {
		bool kept = false;

		cr_assert_eq(madvise(p, 16 * ps, MADV_PAGEOUT), 0, "%s", strerror(errno));
		cr_assert_eq(mincore(p, 16 * ps, vec), 0, "%s", strerror(errno));
		for (size_t i = 0; i < 16; i++)
			kept |= written[i] && (vec[i] & 1);
		if (!kept || tries == 4)
			break;
		cr_assert_eq(madvise(p, 16 * ps, MADV_FREE), 0, "%s", strerror(errno));
	}
	cr_assert_eq(pthread_setaffinity_np(pthread_self(), sizeof(was), &was), 0);
	for (size_t i = 0; i < 16; i++) {
		if (vec[i] & 1) { /* still there: what it held or the source */
			check_page_as("after MADV_FREE, kept", &o.s, p + i * ps, i * ps, written[i],
				      true);
			continue;
		}
		dropped++;
		dropped_written += written[i];
		check_page("after MADV_FREE and MADV_PAGEOUT", &o.s, p + i * ps, i * ps, false);
	}
	check_pages("after MADV_FREE (the rest)", &o.s, p + 16 * ps, 16 * ps, NP - 16, written + 16);
	cr_log_info("MADV_FREE, %s: %d of 16 pages dropped by MADV_PAGEOUT, %d of them written",
		    kind_name[kind], dropped, dropped_written);
	check_events("madvise(MADV_FREE)", o.lm, o.ev);
	cr_assert_eq(lazymap_unmap(o.lm, p, NP * ps), 0);
	one_close(&o);
	if (!dropped_written)
		skip_test("the kernel kept every written page after MADV_FREE + MADV_PAGEOUT: "
			  "nothing checked of written data coming back from the source");
}

TEST_EACH_KIND(madvise_free, madv_free, 30)

/* ------------------------------------------------------------ address reuse */

#define RP 16 /* pages of each region in the address reuse tests */

#define WIN (3 * RP + 4) /* pages of the reuse tests' window */

struct reuse {
	struct lazymap *a, *b;
	struct src za, fa, fb; /* a: zero and file sources; b: a file */
	char *win;
	char *r1, *r2, *r3; /* a's regions; the program munmaps r1 and r2 */
	bool bw[RP];        /* b's region: pages written */
};

/*
 * a's regions r1 (zero) and r2 (private file), in the window, are unmapped
 * by the program itself; r1's address goes to a plain mmap of the program's
 * (MAP_FIXED_NOREPLACE, a pattern written in), r2's to a region of another
 * lazymap b (a private file region at another offset, LAZYMAP_FIXED). a's
 * region r3 (zero) stays a's.
 */
static void reuse_setup(struct reuse *x)
{
	size_t ps = pgsz();
	char *g, *m;

	touch_install();
	x->a = open_or_skip(NULL);
	x->b = open_or_skip(NULL);
	src_init(&x->za, ZERO, 0, 0);
	src_init(&x->fa, FILE_, RP + 2, 0);
	src_init(&x->fb, FILE_, RP + 2, 2);
	g = x->win = test_window(WIN * ps);
	x->r1 = window_map(x->a, &x->za, RP * ps, true, g + ps);
	x->r2 = window_map(x->a, &x->fa, RP * ps, true, g + (RP + 2) * ps);
	x->r3 = window_map(x->a, &x->za, RP * ps, true, g + (2 * RP + 3) * ps);
	for (size_t i = 0; i < RP; i += 3) {
		check_page("before", &x->za, x->r1 + i * ps, i * ps, false);
		check_page("before", &x->fa, x->r2 + i * ps, i * ps, false);
		check_page("before", &x->za, x->r3 + i * ps, i * ps, false);
	}
	write_page(x->r1 + ps, ps);
	write_page(x->r2 + ps, ps);
	cr_assert_eq(munmap(x->r1, RP * ps), 0);
	cr_assert_eq(munmap(x->r2, RP * ps), 0);

	m = mmap(x->r1, RP * ps, RW, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
	cr_assert_eq(m, x->r1, "mmap at the address the program unmapped: %s",
		     m == MAP_FAILED ? strerror(errno) : "elsewhere");
	pat_fill(m, RP * ps, 0, PLAIN_SALT);
	src_map(x->b, &x->fb, RP * ps, true, x->r2);
	memset(x->bw, 0, sizeof(x->bw));
	for (size_t i = 0; i < RP; i += 4) {
		write_page(x->r2 + i * ps, i * ps);
		x->bw[i] = true;
	}
	check_page("b's region", &x->fb, x->r2 + 2 * ps, 2 * ps, false);
}

static void reuse_fini(struct reuse *x)
{
	cr_assert_eq(lazymap_unmap(x->b, x->r2, RP * pgsz()), 0);
	close_empty(x->b);
	window_close(x->win, WIN * pgsz()); /* and the program's own mmap in it */
	src_fini(&x->za);
	src_fini(&x->fa);
	src_fini(&x->fb);
}

/* The new owners' memory is intact: the same bytes, mapped, b still serving its region. */
static void reuse_check(struct reuse *x, const char *what)
{
	static char buf[RP * MAXPS];
	size_t ps = pgsz();
	struct maps_entry e[4];
	int n;

	n = maps_read((uintptr_t)x->r1, (uintptr_t)x->r1 + RP * ps, e, 4);
	cr_assert(n == 1 && e[0].start == (uintptr_t)x->r1 && e[0].end == (uintptr_t)x->r1 + RP * ps,
		  "%s: the program's own mmap at %p is no longer mapped whole (%d entries)", what,
		  (void *)x->r1, n);
	for (size_t i = 0; i < RP; i++) {
		struct touch_fault f = touch(x->r1 + i * ps, -1, NULL);

		cr_assert_eq(f.signo, 0, "%s: the program's own mmap, page %zu: signal %d", what, i,
			     f.signo);
	}
	pat_fill(buf, RP * ps, 0, PLAIN_SALT);
	cr_assert(!memcmp(x->r1, buf, RP * ps), "%s: the program's own mmap at %p changed%s", what,
		  (void *)x->r1, all_zero(x->r1, RP * ps) ? ": it reads zeros" : "");
	check_pages(what, &x->fb, x->r2, 0, RP, x->bw);
	check_mirror(what, x->b, &(struct range){ x->r2, RP * ps }, 1);
}

/*
 * lazymap_unmap of a range the program unmapped itself, whose address was
 * reused since: -EINVAL, and the new owners keep their memory (a review saw
 * another lazymap's region then give SIGSEGV); so does lazymap_close.
 */
Test(events, address_reuse_then_lazymap_unmap_of_old_range, .timeout = 30)
{
	size_t ps = pgsz();
	struct reuse x;

	reuse_setup(&x);
	cr_assert_eq(lazymap_unmap(x.a, x.r1, RP * ps), -EINVAL,
		     "lazymap_unmap of a range the program unmapped, now its own mmap");
	reuse_check(&x, "after lazymap_unmap of the old range now the program's own mmap");
	cr_assert_eq(lazymap_unmap(x.a, x.r2, RP * ps), -EINVAL,
		     "lazymap_unmap of a range the program unmapped, now another lazymap's");
	reuse_check(&x, "after lazymap_unmap of the old range now another lazymap's");
	check_mirror("a after the reuse", x.a, &(struct range){ x.r3, RP * ps }, 1);
	cr_assert_eq(lazymap_close(x.a), 0);
	reuse_check(&x, "after lazymap_close of the first lazymap");
	check_gone("r3 after lazymap_close", x.r3, RP * ps);
	reuse_fini(&x);
}

Test(events, address_reuse_then_lazymap_close, .timeout = 30)
{
	size_t ps = pgsz();
	struct reuse x;

	reuse_setup(&x);
	cr_assert_eq(lazymap_close(x.a), 0);
	reuse_check(&x, "after lazymap_close of the lazymap whose ranges the program unmapped");
	check_gone("r3 after lazymap_close", x.r3, RP * ps);
	reuse_fini(&x);
}

/* ------------------------------------------------------------ touch vs lazymap_unmap */

#define RACE_CHUNKS  8
#define RACE_CP      64 /* pages per chunk */
#define RACE_READERS 2

struct race {
	char *p;
	const struct src *s;
	atomic_int cur;                  /* the chunk being unmapped; RACE_CHUNKS: done */
	atomic_uint next[RACE_CHUNKS];   /* its next page never touched */
	atomic_ulong good, segv, zeros, wrong, other;
	atomic_ulong first_bad;          /* region offset + 1 of the first bad touch */
};

/* Touch each page of the chunk being unmapped once, at a byte of its own. */
static void *race_reader(void *arg)
{
	struct race *r = arg;
	size_t ps = pgsz();

	for (;;) {
		int c = atomic_load(&r->cur);
		unsigned i;

		if (c >= RACE_CHUNKS)
			break;
		i = atomic_fetch_add(&r->next[c], 1);
		if (i >= RACE_CP) {
			sched_yield();
			continue;
		}
		uint64_t off = ((uint64_t)c * RACE_CP + i) * ps + (i * 67) % ps;
		char v = 0;
		struct touch_fault f = touch(r->p + off, -1, &v);

		if (f.signo == SIGSEGV) {
			atomic_fetch_add(&r->segv, 1);
		} else if (f.signo) {
			atomic_fetch_add(&r->other, 1);
		} else if ((uint8_t)v == src_byte(r->s, off)) {
			atomic_fetch_add(&r->good, 1);
		} else {
			unsigned long z = 0;

			atomic_fetch_add(v ? &r->wrong : &r->zeros, 1);
			atomic_compare_exchange_strong(&r->first_bad, &z, (unsigned long)off + 1);
		}
	}
	return NULL;
}

/*
 * Threads touch never-touched pages of a region while lazymap_unmap takes
 * it away chunk by chunk: each touch gives the source's byte or SIGSEGV, as
 * the kernel's munmap does, never zeros (a review saw 9,030 of 39,120
 * touches read zeros: the range was unregistered before it was unmapped).
 * The region lies in a window, so that a chunk gone is never mapped again
 * by anybody while a late reader touches it.
 */
static void race(enum kind kind)
{
	struct lazymap *lm = open_or_skip(NULL);
	size_t ps = pgsz(), len = (size_t)RACE_CHUNKS * RACE_CP * ps;
	char *w = test_window(len);
	struct race r;
	struct src s;
	double t0 = now_s();
	int rounds = 0;

	touch_install();
	src_init(&s, kind, RACE_CHUNKS * RACE_CP + 1, 1);
	memset(&r, 0, sizeof(r));
	r.s = &s;
	/* 2.5 s of rounds (the old window showed in every first round) */
	while (rounds < 400 && (rounds < 1 || now_s() - t0 < 2.5)) {
		pthread_t th[RACE_READERS];

		r.p = window_map(lm, &s, len, true, w);
		atomic_store(&r.cur, 0);
		for (int c = 0; c < RACE_CHUNKS; c++)
			atomic_store(&r.next[c], 0);
		for (int i = 0; i < RACE_READERS; i++)
			cr_assert_eq(pthread_create(&th[i], NULL, race_reader, &r), 0);
		for (int c = 0; c < RACE_CHUNKS; c++) {
			double t1 = now_s();

			/* the readers are faulting in this chunk: unmap it under them */
			while (atomic_load(&r.next[c]) < 4) {
				cr_assert_lt(now_s() - t1, 20.0, "round %d chunk %d: the readers "
					     "touched %u pages in 20 s", rounds, c,
					     atomic_load(&r.next[c]));
				sched_yield();
			}
			cr_assert_eq(lazymap_unmap(lm, r.p + (size_t)c * RACE_CP * ps, RACE_CP * ps), 0);
			atomic_store(&r.cur, c + 1);
		}
		for (int i = 0; i < RACE_READERS; i++)
			pthread_join(th[i], NULL);
		rounds++;
		if (atomic_load(&r.zeros) || atomic_load(&r.wrong) || atomic_load(&r.other))
			break;
	}
	cr_log_info("%s region, %d rounds: %lu touches read the source's byte, %lu SIGSEGV, "
		    "%lu zeros, %lu other bytes, %lu other signals", kind_name[kind], rounds,
		    atomic_load(&r.good), atomic_load(&r.segv), atomic_load(&r.zeros),
		    atomic_load(&r.wrong), atomic_load(&r.other));
	cr_assert_eq(atomic_load(&r.zeros) + atomic_load(&r.wrong) + atomic_load(&r.other), 0,
		     "%s region, round %d: %lu touches read zeros, %lu wrong bytes, %lu another "
		     "signal (of %lu good, %lu SIGSEGV); first at region offset %#lx",
		     kind_name[kind], rounds, atomic_load(&r.zeros), atomic_load(&r.wrong),
		     atomic_load(&r.other), atomic_load(&r.good), atomic_load(&r.segv),
		     atomic_load(&r.first_bad) - 1);
	cr_assert_gt(atomic_load(&r.good), 0);
	close_empty(lm);
	window_close(w, len);
	src_fini(&s);
}

Test(events, touch_racing_lazymap_unmap_never_reads_zeros_fill, .timeout = 90)
{
	race(FILL);
}

Test(events, touch_racing_lazymap_unmap_never_reads_zeros_file, .timeout = 90)
{
	race(FILE_);
}

#define REMAP_PAGES 2048

struct remap_race {
	char *p;
	const struct src *s;
	atomic_bool stop;
	atomic_ulong good, segv, bad;
};

static void *remap_reader(void *arg)
{
	struct remap_race *r = arg;
	size_t ps = pgsz();
	uint64_t seed = (uint64_t)(uintptr_t)&seed;

	while (!atomic_load(&r->stop)) {
		uint64_t off = rng_next(&seed) % (REMAP_PAGES * ps);
		char v = 0;
		struct touch_fault f = touch(r->p + off, -1, &v);

		if (f.signo == SIGSEGV)
			atomic_fetch_add(&r->segv, 1); /* in a piece between its unmap and map */
		else if (!f.signo && (uint8_t)v == src_byte(r->s, off))
			atomic_fetch_add(&r->good, 1);
		else
			atomic_fetch_add(&r->bad, 1);
	}
	return NULL;
}

/*
 * Pieces of a region unmapped and at once mapped again where they were
 * (LAZYMAP_FIXED, the same file offset: the kernel merges each back into
 * its neighbours' VMA) while threads fault all over it: every map finds
 * its place free, every touch reads the file's byte or SIGSEGV, and the
 * tree ends as the kernel's. A fault that found no VMA used to read the
 * kernel's VMA before it took the lock, and grew a piece unmapped
 * meanwhile back into the tree, where the kernel mapped nothing: the map
 * again failed with EEXIST (a review saw it in 3 of 8 runs).
 */
Test(events, unmap_and_map_again_racing_faults_keep_the_tree_the_kernels, .timeout = 60)
{
	struct lazymap *lm = open_or_skip(NULL);
	size_t ps = pgsz(), len = (size_t)REMAP_PAGES * ps;
	char *w = test_window(len);
	struct remap_race r = { 0 };
	uint64_t seed = 7;
	pthread_t th[2];
	struct src s;
	double t0 = now_s();
	int remaps = 0;

	touch_install();
	src_init(&s, FILE_, REMAP_PAGES + 1, 1);
	r.s = &s;
	r.p = window_map(lm, &s, len, true, w);
	for (int i = 0; i < 2; i++)
		cr_assert_eq(pthread_create(&th[i], NULL, remap_reader, &r), 0);
	while (now_s() - t0 < 1.5) {
		size_t pg = rng_next(&seed) % (REMAP_PAGES - 8), n = 1 + rng_next(&seed) % 8;
		void *q = r.p + pg * ps;
		int ret;

		cr_assert_eq(lazymap_unmap(lm, q, n * ps), 0);
		ret = lazymap_map(lm, &q, n * ps, RW, LAZYMAP_PRIVATE | LAZYMAP_FIXED, s.fd,
				  (off_t)(s.foff + pg * ps));
		if (ret) {
			atomic_store(&r.stop, true);
			for (int i = 0; i < 2; i++)
				pthread_join(th[i], NULL);
		}
		cr_assert_eq(ret, 0, "remap %d: pages %zu..%zu mapped again: %s (unmapped just before)",
			     remaps, pg, pg + n, strerror(-ret));
		cr_assert_eq(lazymap_advise(lm, q, n * ps, LAZYMAP_ADV_RANDOM), 0);
		remaps++;
	}
	atomic_store(&r.stop, true);
	for (int i = 0; i < 2; i++)
		pthread_join(th[i], NULL);
	cr_log_info("%d remaps: %lu touches read the file's byte, %lu SIGSEGV, %lu wrong", remaps,
		    atomic_load(&r.good), atomic_load(&r.segv), atomic_load(&r.bad));
	cr_assert_eq(atomic_load(&r.bad), 0, "%lu touches read a wrong byte or another signal",
		     atomic_load(&r.bad));
	cr_assert_gt(atomic_load(&r.good), 0);

	/* each map is a region of its own: together they are the window, as
	 * the kernel's VMAs are, and nothing more */
	static struct maps_entry t[REMAP_PAGES + 1], k[REMAP_PAGES + 1];
	struct lazymap_stats st = stats(lm);
	int nt = tree_read(lm, t, REMAP_PAGES + 1);
	int nk = maps_coalesce(k, maps_read((uintptr_t)w, (uintptr_t)w + len, k, REMAP_PAGES + 1));

	cr_assert_eq(st.regions, (uint64_t)nt, "st.regions %lu, the tree %d VMAs",
		     (unsigned long)st.regions, nt);
	nt = maps_coalesce(t, nt);
	cr_assert(nt == 1 && t[0].start == (uintptr_t)r.p && t[0].end == (uintptr_t)r.p + len,
		  "the tree: %d ranges, the first %#lx-%#lx; the window %p-%p", nt, t[0].start,
		  t[0].end, (void *)r.p, (void *)(r.p + len));
	cr_assert(nk == 1 && k[0].start == t[0].start && k[0].end == t[0].end,
		  "the kernel: %d ranges, the first %#lx-%#lx", nk, k[0].start, k[0].end);
	cr_assert_eq(lazymap_unmap(lm, r.p, len), 0);
	close_empty(lm);
	window_close(w, len);
	src_fini(&s);
}

/* ------------------------------------------------------------ concurrency */

/*
 * Readers fault all the time on three regions (zero, fill, file) split in
 * chunks, checking every byte they read and re-reading what they write;
 * a mutator munmaps (whole or part), mremaps (move, shrink, DONTUNMAP) and
 * madvises (DONTNEED, FREE) one chunk at a time. Before it changes a chunk
 * it says what the change may do there (st[]): ST_ADVISED, written data may
 * be lost; ST_DOOMED, the chunk may vanish (a touch may give SIGSEGV); then
 * ST_GONE once it did (the readers leave it). A reader accepts the right
 * bytes, or SIGSEGV where the chunk was doomed by then, and nothing else:
 * everything lies in a window, where nobody else maps what is gone. Even pages are only read; odd pages are each
 * one reader's scratch: it writes the complement of the source's byte and
 * reads it back. The mutator checks each moved chunk at its new address,
 * and the tree against the kernel and a model after each step.
 */
#define CC_READERS 2
#define CC_REGIONS 3
#define CC_CHUNKS  8
#define CC_CP      16 /* pages per chunk */
#define CC_PAGES   (CC_CHUNKS * CC_CP)
#define CC_FOFF    5  /* the file region's offset in its file, pages */
#define CC_WINDOW  (CC_REGIONS * (CC_PAGES + 1) + CC_REGIONS * CC_CHUNKS * CC_CP) /* pages */

enum { ST_ADVISED = 1, ST_DOOMED = 2, ST_GONE = 4 };

struct cc_region {
	struct src *s;
	char *p;
	atomic_uint st[CC_CHUNKS];
	bool mapped[CC_PAGES]; /* the mutator's model */
};

struct cc {
	struct lazymap *lm;
	struct src src[CC_REGIONS];
	struct cc_region r[CC_REGIONS];
	char *win;   /* the regions, a page apart, then the slots */
	char *slots; /* the mutator's move destinations: one chunk each */
	uint64_t seed;
	int round;
	atomic_bool stop, mutator_done;
	atomic_ulong touches[CC_READERS], ops;
	atomic_ulong checked, segv_ok, writes_checked, writes_lost, moved_checked;
	const char *_Atomic doing; /* what the mutator is doing, for the watchdog */
	pthread_mutex_t lock;
	int failed;
	char why[3000];
};

__attribute__((format(printf, 2, 3))) static void cc_fail(struct cc *cc, const char *fmt, ...)
{
	va_list ap;

	pthread_mutex_lock(&cc->lock);
	if (!cc->failed) {
		int n = snprintf(cc->why, sizeof(cc->why), "seed %#lx round %d: ",
				 (unsigned long)cc->seed, cc->round);

		va_start(ap, fmt);
		vsnprintf(cc->why + n, sizeof(cc->why) - (size_t)n, fmt, ap);
		va_end(ap);
	}
	cc->failed++;
	pthread_mutex_unlock(&cc->lock);
	atomic_store(&cc->stop, true);
}

struct cc_reader {
	struct cc *cc;
	int id;
	uint64_t rng;
};

static void *cc_reader_main(void *arg)
{
	struct cc_reader *rd = arg;
	struct cc *cc = rd->cc;
	size_t ps = pgsz();

	while (!atomic_load(&cc->stop)) {
		uint64_t x = rng_next(&rd->rng);
		int ri = (int)(x % CC_REGIONS), c = (int)((x >> 8) % CC_CHUNKS);
		int pg = (int)((x >> 16) % CC_CP);
		struct cc_region *r = &cc->r[ri];
		uint64_t off = ((uint64_t)c * CC_CP + (uint64_t)pg) * ps + (x >> 32) % ps;
		bool scratch = pg % 2, mine = scratch && (pg / 2) % CC_READERS == rd->id;
		uint8_t s = src_byte(r->s, off);
		unsigned s1 = atomic_load(&r->st[c]), s2;
		struct touch_fault f = { 0 };
		char v = 0;
		bool wrote = false;

		if ((s1 & ST_GONE) || (scratch && !mine))
			continue;
		atomic_fetch_add(&cc->touches[rd->id], 1);
		if (mine && (x >> 12) % 2) {
			f = touch(r->p + off, flip(s), NULL);
			wrote = !f.signo;
		}
		if (!f.signo)
			f = touch(r->p + off, -1, &v);
		s2 = atomic_load(&r->st[c]);
		if (f.signo) {
			if (f.signo == SIGSEGV && (s2 & ST_DOOMED)) {
				atomic_fetch_add(&cc->segv_ok, 1);
				continue;
			}
			cc_fail(cc, "%s region, chunk %d (state %u, then %u), offset %#lx (%p): signal %d "
				"(si_code %d)", kind_name[r->s->kind], c, s1, s2, (unsigned long)off,
				(void *)(r->p + off), f.signo, f.code);
			break;
		}
		if (wrote) {
			if ((uint8_t)v == flip(s)) {
				atomic_fetch_add(&cc->writes_checked, 1);
				continue;
			}
			if ((uint8_t)v == s && ((s1 | s2) & ST_ADVISED)) {
				atomic_fetch_add(&cc->writes_lost, 1);
				continue;
			}
			cc_fail(cc, "%s region, chunk %d (state %u, then %u), offset %#lx (%p): wrote "
				"%#x, read back %#x (the source's byte is %#x)", kind_name[r->s->kind],
				c, s1, s2, (unsigned long)off, (void *)(r->p + off), flip(s),
				(uint8_t)v, s);
			break;
		}
		if ((uint8_t)v == s || (mine && (uint8_t)v == flip(s))) {
			atomic_fetch_add(&cc->checked, 1);
			continue;
		}
		cc_fail(cc, "%s region, chunk %d (state %u, then %u), offset %#lx (%p): read %#x, "
			"want %#x%s", kind_name[r->s->kind], c, s1, s2, (unsigned long)off,
			(void *)(r->p + off), (uint8_t)v, s, mine ? " or its complement" : "");
		break;
	}
	return NULL;
}

/*
 * Pages [first, first+n) of chunk c of r, mapped at addr (the mutator's
 * own view, with nothing changing them but the readers' scratch writes).
 */
static bool cc_check_pages(struct cc *cc, struct cc_region *r, int c, int first, int n,
			   char *addr, const char *what)
{
	size_t ps = pgsz();

	for (int pg = first; pg < first + n; pg++) {
		char *a = addr + (size_t)(pg - first) * ps;
		struct touch_fault f = touch(a, -1, NULL);

		if (f.signo) {
			cc_fail(cc, "%s: %s region, chunk %d page %d at %p: signal %d", what,
				kind_name[r->s->kind], c, pg, (void *)a, f.signo);
			return false;
		}
		for (size_t j = 0; j < ps; j++) {
			uint64_t off = ((uint64_t)c * CC_CP + (uint64_t)pg) * ps + j;
			/* a reader that had not yet seen the chunk doomed may still write it */
			uint8_t s = src_byte(r->s, off), v = (uint8_t)__atomic_load_n(a + j, __ATOMIC_RELAXED);

			if (v == s || (pg % 2 && v == flip(s)))
				continue;
			cc_fail(cc, "%s: %s region, chunk %d page %d at %p, byte %zu: %#x, want %#x%s%s",
				what, kind_name[r->s->kind], c, pg, (void *)a, j, v, s,
				pg % 2 ? " or its complement" : "",
				all_zero(a, ps) ? " (the page reads zeros)" : "");
			return false;
		}
	}
	atomic_fetch_add(&cc->moved_checked, (unsigned long)n);
	return true;
}

/* The tree against the model (every page the mutator left mapped) and the kernel. */
static bool cc_check_mirror(struct cc *cc, const char *after)
{
	static struct range want[CC_REGIONS * CC_PAGES];
	char why[2600];
	size_t ps = pgsz();
	int n = 0;

	for (int ri = 0; ri < CC_REGIONS; ri++)
		for (int pg = 0; pg < CC_PAGES; pg++) {
			int k = 0;

			while (pg + k < CC_PAGES && cc->r[ri].mapped[pg + k])
				k++;
			if (k)
				want[n++] = (struct range){ cc->r[ri].p + (size_t)pg * ps, (size_t)k * ps };
			pg += k;
		}
	if (mirror_diff(cc->lm, want, n, why, sizeof(why)) == 0)
		return true;
	cc_fail(cc, "after %s: %s", after, why);
	return false;
}

/* Wait until the readers have touched some more, so that each step lands among faults. */
static bool cc_wait_readers(struct cc *cc, unsigned long more)
{
	unsigned long base = 0, now;
	double t0 = now_s();

	for (int i = 0; i < CC_READERS; i++)
		base += atomic_load(&cc->touches[i]);
	for (;;) {
		now = 0;
		for (int i = 0; i < CC_READERS; i++)
			now += atomic_load(&cc->touches[i]);
		if (now >= base + more || atomic_load(&cc->stop))
			return !atomic_load(&cc->stop);
		if (now_s() - t0 > 30.0) {
			cc_fail(cc, "the readers touched %lu times in 30 s", now - base);
			return false;
		}
		sched_yield();
	}
}

enum cc_op { OP_MUNMAP, OP_MUNMAP_PART, OP_MOVE, OP_SHRINK, OP_DONTNEED, OP_FREE, OP_DONTUNMAP, NOPS };
static const char *const op_name[] = { "munmap", "munmap of a part", "mremap move", "mremap shrink",
				       "MADV_DONTNEED", "MADV_FREE", "mremap MREMAP_DONTUNMAP" };

static void *cc_mutator_main(void *arg)
{
	struct cc *cc = arg;
	size_t ps = pgsz(), cl = CC_CP * ps;
	uint64_t rng = cc->seed ^ ((uint64_t)cc->round * 0x9E3779B97F4A7C15ull);
	int order[CC_REGIONS * CC_CHUNKS], n = CC_REGIONS * CC_CHUNKS;
	char what[128];

	for (int i = 0; i < n; i++)
		order[i] = i;
	for (int i = n - 1; i > 0; i--) {
		int j = (int)(rng_next(&rng) % (uint64_t)(i + 1)), t = order[i];

		order[i] = order[j];
		order[j] = t;
	}
	for (int k = 0; k < n && !atomic_load(&cc->stop); k++) {
		int ri = order[k] / CC_CHUNKS, c = order[k] % CC_CHUNKS;
		struct cc_region *r = &cc->r[ri];
		char *a = r->p + (size_t)c * cl, *dst = cc->slots + (size_t)order[k] * cl, *q;
		enum cc_op op = (enum cc_op)(rng_next(&rng) % NOPS);
		int first = 0, cnt = CC_CP, ret = 0;

		if (!cc_wait_readers(cc, 200))
			break;
		snprintf(what, sizeof(what), "%s of %s region chunk %d", op_name[op],
			 kind_name[r->s->kind], c);
		atomic_store(&cc->doing, op_name[op]);
		switch (op) {
		case OP_MUNMAP:
		case OP_MUNMAP_PART:
			if (op == OP_MUNMAP_PART) {
				static const int part[3][2] = { { 0, 8 }, { 8, 8 }, { 4, 8 } };
				int w = (int)(rng_next(&rng) % 3);

				first = part[w][0];
				cnt = part[w][1];
			}
			atomic_fetch_or(&r->st[c], ST_DOOMED);
			ret = munmap(a + (size_t)first * ps, (size_t)cnt * ps);
			atomic_fetch_or(&r->st[c], ST_GONE);
			for (int pg = first; pg < first + cnt; pg++)
				r->mapped[c * CC_CP + pg] = false;
			if (ret == 0 && cnt < CC_CP) {
				/* what is left of the chunk is as it was */
				if (first > 0)
					cc_check_pages(cc, r, c, 0, first, a, what);
				if (first + cnt < CC_CP)
					cc_check_pages(cc, r, c, first + cnt, CC_CP - first - cnt,
						       a + (size_t)(first + cnt) * ps, what);
			}
			break;
		case OP_MOVE:
			atomic_fetch_or(&r->st[c], ST_DOOMED);
			q = mremap(a, cl, cl, MREMAP_MAYMOVE | MREMAP_FIXED, dst);
			atomic_fetch_or(&r->st[c], ST_GONE);
			for (int pg = 0; pg < CC_CP; pg++)
				r->mapped[c * CC_CP + pg] = false;
			if (q != dst) {
				ret = -1;
				break;
			}
			if (cc_check_pages(cc, r, c, 0, CC_CP, dst, what))
				ret = munmap(dst, cl);
			break;
		case OP_SHRINK:
			atomic_fetch_or(&r->st[c], ST_DOOMED);
			q = mremap(a, cl, cl / 2, 0);
			atomic_fetch_or(&r->st[c], ST_GONE);
			for (int pg = CC_CP / 2; pg < CC_CP; pg++)
				r->mapped[c * CC_CP + pg] = false;
			if (q != a)
				ret = -1;
			else
				cc_check_pages(cc, r, c, 0, CC_CP / 2, a, what);
			break;
		case OP_DONTNEED:
		case OP_FREE:
			atomic_fetch_or(&r->st[c], ST_ADVISED);
			first = (int)(rng_next(&rng) % (CC_CP / 2));
			cnt = 1 + (int)(rng_next(&rng) % (uint64_t)(CC_CP - first));
			/* MADV_FREE is for anonymous memory: a file region is a
			 * file mapping (of its cache), where it is EINVAL */
			ret = madvise(a + (size_t)first * ps, (size_t)cnt * ps,
				      op == OP_FREE && r->s->kind != FILE_ ? MADV_FREE
									  : MADV_DONTNEED);
			break;
		case OP_DONTUNMAP:
			atomic_fetch_or(&r->st[c], ST_ADVISED);
			q = mremap(a, cl, cl, MREMAP_MAYMOVE | MREMAP_FIXED | MREMAP_DONTUNMAP, dst);
			if (q != dst) {
				ret = -1;
				break;
			}
			if (cc_check_pages(cc, r, c, 0, CC_CP, dst, what))
				ret = munmap(dst, cl);
			break;
		case NOPS:
			break;
		}
		if (ret) {
			cc_fail(cc, "%s: %s", what, strerror(errno));
			break;
		}
		atomic_fetch_add(&cc->ops, 1);
		atomic_store(&cc->doing, "checking the mirror");
		if (!cc_check_mirror(cc, what))
			break;
	}
	atomic_store(&cc->doing, "done");
	atomic_store(&cc->mutator_done, true);
	return NULL;
}

static const char *cc_progress(struct cc *cc, unsigned long *seen, double *since, double now)
{
	static char msg[256];
	unsigned long v[CC_READERS + 1];

	for (int i = 0; i < CC_READERS; i++)
		v[i] = atomic_load(&cc->touches[i]);
	v[CC_READERS] = atomic_load(&cc->ops);
	for (int i = 0; i <= CC_READERS; i++) {
		if (v[i] != seen[i] || atomic_load(&cc->mutator_done)) {
			seen[i] = v[i];
			since[i] = now;
		} else if (now - since[i] > 30.0) {
			if (i < CC_READERS)
				snprintf(msg, sizeof(msg), "reader %d made no touch in 30 s", i);
			else
				snprintf(msg, sizeof(msg), "the mutator is stuck in %s for 30 s",
					 atomic_load(&cc->doing));
			return msg;
		}
	}
	return NULL;
}

Test(events, faults_while_the_program_munmaps_mremaps_madvises, .timeout = 180)
{
	static struct cc cc;
	size_t ps = pgsz();
	double t0 = now_s();
	unsigned long seen[CC_READERS + 1] = { 0 };
	double since[CC_READERS + 1];
	struct lazymap_stats st;

	memset(&cc, 0, sizeof(cc));
	pthread_mutex_init(&cc.lock, NULL);
	touch_install();
	cc.lm = open_or_skip(NULL);
	cc.seed = test_seed();
	src_init(&cc.src[0], ZERO, 0, 0);
	src_init(&cc.src[1], FILL, 0, 0);
	src_init(&cc.src[2], FILE_, CC_FOFF + CC_PAGES, CC_FOFF);
	cc.win = test_window(CC_WINDOW * ps);
	cc.slots = cc.win + (size_t)CC_REGIONS * (CC_PAGES + 1) * ps;
	for (int i = 0; i <= CC_READERS; i++)
		since[i] = t0;
	/* rounds for 5 s: each chunk of each region changed once per round */
	for (cc.round = 0; !cc.failed && (cc.round < 2 || now_s() - t0 < 5.0); cc.round++) {
		pthread_t rth[CC_READERS], mth;
		struct cc_reader rd[CC_READERS];

		for (int ri = 0; ri < CC_REGIONS; ri++) {
			struct cc_region *r = &cc.r[ri];

			r->s = &cc.src[ri];
			/* default advice: fill-around runs cross the chunks changed */
			r->p = window_map(cc.lm, r->s, CC_PAGES * ps, false,
					  cc.win + (size_t)ri * (CC_PAGES + 1) * ps);
			for (int c = 0; c < CC_CHUNKS; c++)
				atomic_store(&r->st[c], 0);
			for (int pg = 0; pg < CC_PAGES; pg++)
				r->mapped[pg] = true;
		}
		atomic_store(&cc.stop, false);
		atomic_store(&cc.mutator_done, false);
		for (int i = 0; i < CC_READERS; i++) {
			rd[i] = (struct cc_reader){ &cc, i, cc.seed + 77 * (uint64_t)(cc.round * CC_READERS + i + 1) };
			cr_assert_eq(pthread_create(&rth[i], NULL, cc_reader_main, &rd[i]), 0);
		}
		cr_assert_eq(pthread_create(&mth, NULL, cc_mutator_main, &cc), 0);
		/* the watchdog: every thread keeps going, or the test fails saying which */
		while (!atomic_load(&cc.mutator_done)) {
			const char *stuck = cc_progress(&cc, seen, since, now_s());

			cr_assert_null(stuck, "seed %#lx round %d: %s", (unsigned long)cc.seed, cc.round,
				       stuck);
			usleep(2000);
		}
		pthread_join(mth, NULL);
		atomic_store(&cc.stop, true);
		for (int i = 0; i < CC_READERS; i++)
			pthread_join(rth[i], NULL);
		cr_assert_eq(cc.failed, 0, "%s (%d failures)", cc.why, cc.failed);
		/* what is left goes through the API */
		for (int ri = 0; ri < CC_REGIONS; ri++)
			for (int pg = 0; pg < CC_PAGES; pg++) {
				int n = 0;

				while (pg + n < CC_PAGES && cc.r[ri].mapped[pg + n])
					n++;
				if (n)
					cr_assert_eq(lazymap_unmap(cc.lm, cc.r[ri].p + (size_t)pg * ps,
								   (size_t)n * ps), 0,
						     "seed %#lx round %d: lazymap_unmap of what is left",
						     (unsigned long)cc.seed, cc.round);
				pg += n;
			}
		cr_assert_eq(stats(cc.lm).regions, 0, "seed %#lx round %d", (unsigned long)cc.seed,
			     cc.round);
	}
	st = stats(cc.lm);
	cr_log_info("%d rounds, %lu steps: %lu bytes read right, %lu writes read back, %lu lost "
		    "to an advice, %lu SIGSEGV where allowed, %lu moved pages checked; %lu events",
		    cc.round, atomic_load(&cc.ops), atomic_load(&cc.checked),
		    atomic_load(&cc.writes_checked), atomic_load(&cc.writes_lost),
		    atomic_load(&cc.segv_ok), atomic_load(&cc.moved_checked), (unsigned long)st.events);
	cr_assert_geq(st.events, atomic_load(&cc.ops), "every step is an event: %lu steps, %lu events",
		      atomic_load(&cc.ops), (unsigned long)st.events);
	cr_assert_gt(atomic_load(&cc.writes_checked), 0);
	close_empty(cc.lm);
	window_close(cc.win, CC_WINDOW * ps);
	for (int i = 0; i < CC_REGIONS; i++)
		src_fini(&cc.src[i]);
	pthread_mutex_destroy(&cc.lock);
}

/* ------------------------------------------------------------ cost */

/*
 * What a followed munmap costs: a registered range blocks its caller until
 * a handler has read the event. Printed, not asserted (test() never times).
 */
Test(events, cost_of_an_event_round_trip, .timeout = 120)
{
	enum { N = 2000 };
	struct lazymap *lm = open_or_skip(NULL);
	size_t ps = pgsz();
	uint64_t ev;
	double t0, reg, plain;
	char *p;

	cr_assert_eq(lazymap_map(lm, (void **)&p, N * ps, RW, LAZYMAP_PRIVATE | LAZYMAP_ANON, -1, 0), 0);
	ev = stats(lm).events;
	t0 = now_s();
	for (size_t i = 0; i < N; i++)
		cr_assert_eq(munmap(p + i * ps, ps), 0);
	reg = (now_s() - t0) / N * 1e6;

	p = mmap(NULL, N * ps, RW, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	cr_assert_neq(p, MAP_FAILED);
	t0 = now_s();
	for (size_t i = 0; i < N; i++)
		cr_assert_eq(munmap(p + i * ps, ps), 0);
	plain = (now_s() - t0) / N * 1e6;

	cr_log_info("munmap of one page, mean of %d: %.2f us registered with a lazymap (an UNMAP "
		    "event round trip), %.2f us unregistered", N, reg, plain);
	cr_assert_geq(stats(lm).events, ev + N, "%d munmaps of registered pages: %lu events", N,
		      (unsigned long)(stats(lm).events - ev));
	check_mirror("after unmapping every page", lm, NULL, 0);
	close_empty(lm);
}

/* ---------------------------------------------------------- munmap, map, fork */

static atomic_bool forker_stop;

static void *fork_loop(void *arg)
{
	atomic_long *forks = arg;

	while (!atomic_load(&forker_stop)) {
		pid_t pid = fork();

		if (pid == 0)
			_exit(0);
		if (pid > 0)
			waitpid(pid, NULL, 0);
		atomic_fetch_add(forks, 1);
	}
	return NULL;
}

/*
 * The program unmaps a region itself and maps a new one at the same address
 * at once, while another thread forks: the old region's UNMAP, read while a
 * fork was in progress, must never be applied after the new region is in
 * the tree (regression: the region vanished from the tree and a touch there
 * bounced between the kernel and the handlers for ever).
 */
Test(events, own_munmap_then_map_at_the_same_address_while_forking, .timeout = 120)
{
	struct lazymap *lm = open_or_skip(NULL);
	struct lazymap_stats st;
	size_t ps = pgsz(), len = 4 * ps;
	atomic_long forks = 0;
	pthread_t t;
	void *u = NULL;
	int rounds = 1500;

	cr_assert_eq(lazymap_stats(lm, &st), 0);
	if (!st.fork_followed)
		cr_skip_test("forks are not followed here (no CAP_SYS_PTRACE)");
	cr_assert_eq(lazymap_map(lm, &u, len, PROT_READ | PROT_WRITE,
				 LAZYMAP_PRIVATE | LAZYMAP_ANON, -1, 0), 0);
	atomic_store(&forker_stop, false);
	cr_assert_eq(pthread_create(&t, NULL, fork_loop, &forks), 0);
	alarm(100); /* a touch that bounces for ever is the failure: SIGALRM */
	for (int i = 0; i < rounds; i++) {
		void *was = u;

		((volatile char *)u)[0] = 1;
		cr_assert_eq(munmap(u, len), 0);
		cr_assert_eq(lazymap_map(lm, &u, len, PROT_READ | PROT_WRITE,
					 LAZYMAP_PRIVATE | LAZYMAP_ANON | LAZYMAP_HINT, -1, 0), 0);
		cr_assert_eq(((volatile char *)u)[ps], 0, "round %d", i);
		cr_assert_eq(lazymap_stats(lm, &st), 0);
		cr_assert_eq(st.regions, 1, "round %d: %lu regions in the tree (at %p, was %p)", i,
			     (unsigned long)st.regions, u, was);
	}
	alarm(0);
	atomic_store(&forker_stop, true);
	pthread_join(t, NULL);
	cr_log_info("%d rounds beside %ld forks", rounds, atomic_load(&forks));
	cr_assert_gt(atomic_load(&forks), 0);
	cr_assert_eq(lazymap_close(lm), 0);
}
