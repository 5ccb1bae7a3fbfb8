// SPDX-License-Identifier: MIT
/*
 * File-backed mappings: what a touching thread sees of a file read through
 * the handlers (io_uring, readahead, LAZYMAP_DIRECT), always compared with
 * pread() of the same bytes. Data over file sizes, access orders, threads,
 * O_DIRECT and page-cache state; private writes; EOF and truncation; I/O
 * errors from a FUSE file system (tests/fusefs.h); readahead and advice;
 * concurrent faults; mmap's own errors.
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>

/* Criterion runs no .fini after a skip: a skip removes the scratch files first. */
static void dir_teardown(void);
#define skip_cleanup() dir_teardown()

#include "common.h"
#include "fusefs.h"

#define MiB (1ull << 20)
#define GiB (1ull << 30)

/* ------------------------------------------------------------ fixture */

/*
 * A test's scratch directory on a real disk file system (O_DIRECT works
 * there, unlike on older tmpfs), and a ramfs mount point when a test made
 * one. Set up per test by .init, removed with everything in it by .fini,
 * which runs after a failed assertion too.
 */
static struct {
	char dir[PATH_MAX - 64];
	char mnt[PATH_MAX - 64];
	char shm[PATH_MAX];
} fx;

static void dir_setup(void)
{
	memset(&fx, 0, sizeof(fx));
	snprintf(fx.dir, sizeof(fx.dir), "/var/tmp/lazymap-file.XXXXXX");
	cr_assert_not_null(mkdtemp(fx.dir), "mkdtemp %s: %s", fx.dir, strerror(errno));
}

static void dir_teardown(void)
{
	if (fx.shm[0])
		unlink(fx.shm);
	if (fx.mnt[0]) {
		scratch_remove(fx.mnt); /* the files; rmdir fails while mounted */
		umount2(fx.mnt, MNT_DETACH);
		rmdir(fx.mnt);
	}
	if (fx.dir[0])
		scratch_remove(fx.dir);
	memset(&fx, 0, sizeof(fx));
}

#define FIXTURE .init = dir_setup, .fini = dir_teardown

static void fpath(char *out, size_t len, const char *name)
{
	snprintf(out, len, "%s/%s", fx.dir, name);
}

/* ------------------------------------------------------------ files */

/* A file's content: a pure function of (key, offset); page and key terms make
 * bytes from the wrong page, offset or file differ. */
static inline uint8_t file_byte(uint64_t key, uint64_t off)
{
	uint64_t x = (off + key) * 0x9E3779B97F4A7C15ULL;

	return (uint8_t)((x >> 29) ^ (off >> 12) ^ key);
}

struct extent {
	uint64_t off, len;
};

#define MAX_EXTENTS 4

/* A test file: all data, or sparse (holes read as zeros) with data extents. */
struct fspec {
	const char *name;
	uint64_t size;
	uint64_t key;
	int nextents;                      /* 0: the whole file is data */
	struct extent ext[MAX_EXTENTS];
	size_t k;                          /* the non-zero mapping offset (pages) some scans use */
	size_t budget;                     /* most touches one scan makes */
	size_t seq_budget;                 /* the same for sequential scans; 0: budget */
};

static void write_pattern(int fd, uint64_t key, uint64_t off, uint64_t len)
{
	size_t chunk = 1 * MiB;
	uint8_t *buf = malloc(chunk);

	cr_assert_not_null(buf);
	while (len) {
		size_t n = len < chunk ? (size_t)len : chunk;

		for (size_t i = 0; i < n; i++)
			buf[i] = file_byte(key, off + i);
		for (size_t done = 0; done < n;) {
			ssize_t w = pwrite(fd, buf + done, n - done, (off_t)(off + done));

			cr_assert_gt(w, 0, "pwrite: %s", strerror(errno));
			done += (size_t)w;
		}
		off += n;
		len -= n;
	}
	free(buf);
}

/* Create fx.dir/name as s describes, synced to disk; path gets its name. */
static void make_file(const struct fspec *s, char *path, size_t pathlen)
{
	int fd;

	fpath(path, pathlen, s->name);
	fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	cr_assert_geq(fd, 0, "open %s: %s", path, strerror(errno));
	cr_assert_eq(ftruncate(fd, (off_t)s->size), 0);
	if (s->nextents == 0)
		write_pattern(fd, s->key, 0, s->size);
	for (int i = 0; i < s->nextents; i++)
		write_pattern(fd, s->key, s->ext[i].off, s->ext[i].len);
	cr_assert_eq(fsync(fd), 0);
	close(fd);
}

/* A plain file of size bytes, all data. */
static void make_plain(const char *name, uint64_t size, uint64_t key, char *path, size_t pathlen)
{
	struct fspec s = { .name = name, .size = size, .key = key };

	make_file(&s, path, pathlen);
}

/*
 * Page cache state before a mapping: cold drops the file's pages (written
 * back first: fadvise only drops clean pages), hot reads its data in.
 */
static void cache_prepare(const char *path, const struct fspec *s, bool cold)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	cr_assert_geq(fd, 0);
	cr_assert_eq(fsync(fd), 0);
	if (cold) {
		cr_assert_eq(posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED), 0);
	} else {
		size_t chunk = 1 * MiB;
		char *buf = malloc(chunk);
		struct extent whole = { 0, s->size };
		const struct extent *e = s->nextents ? s->ext : &whole;
		int n = s->nextents ? s->nextents : 1;

		for (int i = 0; i < n; i++)
			for (uint64_t o = e[i].off; o < e[i].off + e[i].len; o += chunk)
				cr_assert_geq(pread(fd, buf, chunk, (off_t)o), 0);
		free(buf);
	}
	close(fd);
}

/* The fd tests check against: an open file of their own. */
static int open_check_fd(const char *path)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	cr_assert_geq(fd, 0, "open %s: %s", path, strerror(errno));
	return fd;
}

/* ------------------------------------------------------------ views */

/* A file mapping as the test sees it: mapped page pg is the file's page at off + pg * ps. */
struct view {
	char *base;
	size_t npages;
	uint64_t off;
	int vfd;               /* pread() from here; -1: fusefs_byte() is the truth */
};

/*
 * Compare mapped page pg with the file (zeros beyond its end). Returns -1
 * if equal, else the first differing byte (or -2 if pread failed). buf: one
 * page of scratch.
 */
static long page_diff(const struct view *v, size_t pg, uint8_t *buf)
{
	size_t ps = pgsz();
	uint64_t off = v->off + pg * ps;
	const uint8_t *m = (const uint8_t *)v->base + pg * ps;
	ssize_t r = ps;

	if (v->vfd >= 0) {
		r = pread(v->vfd, buf, ps, (off_t)off);
		if (r < 0)
			return -2;
		memset(buf + r, 0, ps - (size_t)r);
	} else {
		for (size_t i = 0; i < ps; i++)
			buf[i] = fusefs_byte(off + i);
	}
	if (!memcmp(m, buf, ps))
		return -1;
	for (size_t i = 0; i < ps; i++)
		if (m[i] != buf[i])
			return (long)i;
	return -1;
}

/* The same, from the test's own thread: fails the test with the place. */
static void expect_page(const struct view *v, size_t pg, const char *what)
{
	uint8_t *buf = malloc(pgsz());
	long d = page_diff(v, pg, buf);

	free(buf);
	cr_assert_eq(d, -1, "%s: page %zu (file offset %#llx) differs from the file at byte %ld",
		     what, pg, (unsigned long long)(v->off + pg * pgsz()), d);
}

static struct lazymap_stats stats(struct lazymap *lm)
{
	struct lazymap_stats st;

	cr_assert_eq(lazymap_stats(lm, &st), 0);
	return st;
}

static void expect_regions(struct lazymap *lm, uint64_t n, const char *after)
{
	struct lazymap_stats st = stats(lm);

	cr_assert_eq(st.regions, n, "after %s: %lu regions, want %lu", after,
		     (unsigned long)st.regions, (unsigned long)n);
}

/*
 * The stats once what the handlers were given has landed (reads ahead and
 * prefetch go on after the touch that started them), so that an overshoot
 * shows as surely as a shortfall.
 */
static struct lazymap_stats settled_stats(struct lazymap *lm)
{
	quiesce(lm);
	return stats(lm);
}

static struct lazymap *open_lm(unsigned handlers, size_t readahead_max)
{
	struct lazymap_opts o = { .handler_threads = handlers, .readahead_max = readahead_max };

	return open_or_skip(&o);
}

/* Map the file at path from page k on, to its end; the caller's fd is closed at once. */
static char *map_path(struct lazymap *lm, const char *path, uint64_t len, int prot, int flags,
		      size_t k)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	void *p = NULL;
	int ret;

	cr_assert_geq(fd, 0);
	ret = lazymap_map(lm, &p, len, prot, LAZYMAP_PRIVATE | flags, fd, (off_t)(k * pgsz()));
	cr_assert_eq(ret, 0, "lazymap_map %s (flags %#x, offset %zu pages): %s", path, flags, k,
		     strerror(-ret));
	close(fd); /* the library keeps its own reference */
	return p;
}

/* ------------------------------------------------------------ scanners */

/* What the byte at file offset off must be: the content s describes; fusefs's without s. */
static uint8_t expected_byte(const struct fspec *s, uint64_t off)
{
	if (!s)
		return fusefs_byte(off);
	if (off >= s->size)
		return 0;
	if (s->nextents == 0)
		return file_byte(s->key, off);
	for (int i = 0; i < s->nextents; i++)
		if (off >= s->ext[i].off && off < s->ext[i].off + s->ext[i].len)
			return file_byte(s->key, off);
	return 0;
}

struct scanner {
	pthread_t thread;
	const struct view *v;
	const struct fspec *spec;
	const size_t *order;  /* page indexes; thread id takes entries id, id + nthreads, ... */
	size_t n;
	unsigned id, nthreads;
	pthread_barrier_t *go;
	/* results */
	size_t bad, signals;
	size_t bad_pg, sig_pg;
	int got, want;
	int signo;
	void *sig_addr;
};

/*
 * Touch one byte of each page of the order (a fault, racing the other
 * threads' faults on neighbouring pages) and check that byte; the whole
 * pages are compared with the file afterwards (verify_pages).
 */
static void *scanner_main(void *arg)
{
	struct scanner *s = arg;
	size_t ps = pgsz();

	pthread_barrier_wait(s->go);
	for (size_t i = s->id; i < s->n; i += s->nthreads) {
		size_t pg = s->order[i], at = (pg * 131) % ps;
		char c = 0;
		struct touch_fault f = touch(s->v->base + pg * ps + at, -1, &c);
		uint8_t want;

		if (f.signo) {
			if (!s->signals++) {
				s->sig_pg = pg;
				s->signo = f.signo;
				s->sig_addr = f.addr;
			}
			continue;
		}
		want = expected_byte(s->spec, s->v->off + pg * ps + at);
		if ((uint8_t)c != want && !s->bad++) {
			s->bad_pg = pg;
			s->got = (uint8_t)c;
			s->want = want;
		}
	}
	return NULL;
}

/*
 * Every byte of the pages marked in seen compared with pread() of the file
 * (zeros past its end); runs of marked pages are read together, in order,
 * so that checking costs little even with the cache dropped.
 */
static void verify_pages(const struct view *v, const uint8_t *seen, const char *what)
{
	size_t ps = pgsz(), maxrun = 1 * MiB / ps;
	char *buf = malloc(maxrun * ps);

	cr_assert_not_null(buf);
	for (size_t pg = 0; pg < v->npages;) {
		size_t run = 0, len;
		ssize_t r;

		if (!seen[pg]) {
			pg++;
			continue;
		}
		while (pg + run < v->npages && seen[pg + run] && run < maxrun)
			run++;
		len = run * ps;
		r = pread(v->vfd, buf, len, (off_t)(v->off + pg * ps));
		cr_assert_geq(r, 0, "%s: pread: %s", what, strerror(errno));
		memset(buf + r, 0, len - (size_t)r);
		if (memcmp(v->base + pg * ps, buf, len)) {
			for (size_t i = 0; i < len; i++)
				cr_assert_eq(v->base[pg * ps + i], buf[i],
					     "%s: page %zu (file offset %#llx), byte %zu: %#x, file has %#x",
					     what, pg + i / ps,
					     (unsigned long long)(v->off + (pg + i / ps) * ps), i % ps,
					     (uint8_t)v->base[pg * ps + i], (uint8_t)buf[i]);
		}
		pg += run;
	}
	free(buf);
}

/*
 * Run nthreads scanners over order; fail the test if any saw a signal or a
 * wrong byte, then compare every touched page with the file. seen (npages
 * bytes, zeroed) comes back with the touched pages marked; returns how many.
 */
static size_t run_scan(const struct view *v, const struct fspec *spec, const size_t *order,
		       size_t n, unsigned nthreads, uint8_t *seen, const char *what)
{
	struct scanner *s = calloc(nthreads, sizeof(*s));
	pthread_barrier_t go;
	size_t distinct = 0;

	cr_assert_not_null(s);
	pthread_barrier_init(&go, NULL, nthreads);
	for (unsigned i = 0; i < nthreads; i++) {
		s[i] = (struct scanner){ .v = v, .spec = spec, .order = order, .n = n, .id = i,
					 .nthreads = nthreads, .go = &go };
		cr_assert_eq(pthread_create(&s[i].thread, NULL, scanner_main, &s[i]), 0);
	}
	for (unsigned i = 0; i < nthreads; i++)
		pthread_join(s[i].thread, NULL);
	pthread_barrier_destroy(&go);
	for (unsigned i = 0; i < nthreads; i++) {
		cr_assert_eq(s[i].signals, 0, "%s: thread %u got %zu signals, first %d at %p (page %zu)",
			     what, i, s[i].signals, s[i].signo, s[i].sig_addr, s[i].sig_pg);
		cr_assert_eq(s[i].bad, 0,
			     "%s: thread %u read %zu wrong bytes, first in page %zu (file offset %#llx): %#x, want %#x",
			     what, i, s[i].bad, s[i].bad_pg,
			     (unsigned long long)(v->off + s[i].bad_pg * pgsz()), s[i].got, s[i].want);
	}
	free(s);
	for (size_t i = 0; i < n; i++)
		distinct += !seen[order[i]]++;
	for (size_t pg = 0; pg < v->npages; pg++)
		seen[pg] = !!seen[pg];
	verify_pages(v, seen, what);
	return distinct;
}

/* ------------------------------------------------------------ access orders */

enum order { ORDER_SEQ, ORDER_REV, ORDER_STRIDE, ORDER_RANDOM, NR_ORDERS };

static const char *const order_names[NR_ORDERS] = { "sequential", "reverse", "strided", "random" };

/*
 * At most budget page indexes of [0, npages) in the given order: sequential
 * from the middle of a big mapping (across extents and holes), reverse from
 * its end (the partial last page first), strided so that the last page is
 * in, random with repeats.
 */
static size_t *make_order(enum order o, size_t npages, size_t budget, uint64_t seed, size_t *np)
{
	size_t n = npages < budget ? npages : budget, stride = npages >= 64 ? 7 : 2;

	size_t *v;

	if (o == ORDER_STRIDE) {
		if (npages / stride > budget)
			stride = (npages / budget) | 1;
		n = (npages + stride - 1) / stride;
		if (n > budget)
			n = budget;
	} else if (o == ORDER_RANDOM) {
		n = budget;
	}
	v = malloc(n * sizeof(*v));
	cr_assert_not_null(v);
	for (size_t i = 0; i < n; i++) {
		switch (o) {
		case ORDER_SEQ:
			v[i] = (npages > budget ? npages / 2 - budget / 2 : 0) + i;
			break;
		case ORDER_REV:
			v[i] = npages - 1 - i;
			break;
		case ORDER_STRIDE:
			v[i] = (npages - 1) % stride + i * stride;
			break;
		default:
			v[i] = rng_next(&seed) % npages;
			break;
		}
	}
	*np = n;
	return v;
}

/* ------------------------------------------------------------ 1. data */

enum fsize { SIZE_1PAGE, SIZE_PARTIAL, SIZE_64M, SIZE_1G };

static struct fspec file_spec(enum fsize z)
{
	size_t ps = pgsz();

	switch (z) {
	case SIZE_1PAGE:
		return (struct fspec){ .name = "one_page", .size = ps, .key = 11, .budget = 16 };
	case SIZE_PARTIAL:
		return (struct fspec){ .name = "partial", .size = 5 * ps + 123, .key = 12, .k = 2,
				       .budget = 64 };
	case SIZE_64M:
		/* sequential scans whole; the others a sample (each a disk read when cold) */
		return (struct fspec){ .name = "64m", .size = 64 * MiB, .key = 13, .k = 3,
				       .budget = 2048, .seq_budget = 64 * MiB / ps };
	case SIZE_1G:
	default:
		/* Sparse: data at both ends, at an unaligned offset, across the middle. */
		return (struct fspec){
			.name = "1g", .size = GiB + 3 * ps + 777, .key = 14, .k = 4099,
			.budget = 4096, .nextents = 4,
			.ext = { { 0, 1 * MiB }, { 300 * MiB + 5000, 2 * MiB },
				 { 511 * MiB, 2 * MiB }, { GiB - 1 * MiB, 1 * MiB + 3 * ps + 777 } },
		};
	}
}

struct variant {
	const char *name;
	int flags;
	bool cold;
};

static const struct variant variants[] = {
	{ "buffered, cache hot", 0, false },
	{ "buffered, cache dropped", 0, true },
	{ "direct, cache hot", LAZYMAP_DIRECT, false },
	{ "direct, cache dropped", LAZYMAP_DIRECT, true },
};

static const unsigned thread_counts[] = { 1, 2, 8 };

/*
 * Every order from 1, 2 and 8 threads, each with a lazymap and mapping of
 * its own (offset k pages on the reverse and random scans), every byte of
 * every touched page compared with pread(); then what the stats must show.
 */
static void data_test(enum fsize z, int var)
{
	const struct fspec s = file_spec(z);
	const struct variant *va = &variants[var];
	size_t ps = pgsz();
	char path[PATH_MAX];

	make_file(&s, path, sizeof(path));
	touch_install();
	for (int o = 0; o < NR_ORDERS; o++) {
		for (size_t t = 0; t < sizeof(thread_counts) / sizeof(thread_counts[0]); t++) {
			unsigned nthreads = thread_counts[t];
			size_t k = o % 2 ? s.k : 0, n, distinct = 0;
			uint64_t seed = test_seed() ^ ((uint64_t)o << 8 | nthreads), want_min = 0;
			size_t budget = o == ORDER_SEQ && s.seq_budget ? s.seq_budget : s.budget;
			struct view v = { .off = k * ps };
			struct lazymap_stats st;
			struct lazymap *lm;
			uint8_t *seen;
			size_t *order;
			char what[160];

			snprintf(what, sizeof(what), "%s file, %s, %s, %u threads, offset %zu pages, seed %#llx",
				 s.name, va->name, order_names[o], nthreads, k, (unsigned long long)seed);
			cache_prepare(path, &s, va->cold);
			/* Two handlers: a stream's ahead windows go to the other one. */
			lm = open_lm(2, 0);
			v.base = map_path(lm, path, s.size - v.off, PROT_READ, va->flags, k);
			v.npages = (s.size - v.off + ps - 1) / ps;
			v.vfd = open_check_fd(path);
			order = make_order(o, v.npages, budget, seed, &n);
			seen = calloc(v.npages, 1);
			cr_assert_not_null(seen);
			distinct = run_scan(&v, &s, order, n, nthreads, seen, what);
			for (size_t pg = 0; pg < v.npages; pg++)
				if (seen[pg])
					want_min += s.size - v.off - pg * ps < ps ? s.size - v.off - pg * ps : ps;
			st = stats(lm);
			cr_assert_eq(st.io_errors, 0, "%s: %lu io_errors", what, (unsigned long)st.io_errors);
			cr_assert_geq(st.pages_filled, distinct, "%s: %lu pages filled, %zu touched", what,
				      (unsigned long)st.pages_filled, distinct);
			cr_assert_leq(st.pages_filled, v.npages, "%s: %lu pages filled of %zu mapped",
				      what, (unsigned long)st.pages_filled, v.npages);
			/* Touched bytes were read; nothing twice, nothing outside the mapping. */
			cr_assert_geq(st.bytes_read, want_min, "%s: %lu bytes read, %lu touched", what,
				      (unsigned long)st.bytes_read, (unsigned long)want_min);
			cr_assert_leq(st.bytes_read, v.npages * ps, "%s: %lu bytes read of %zu mapped",
				      what, (unsigned long)st.bytes_read, v.npages * ps);
			cr_assert_gt(st.file_reads, 0, "%s", what);
			cr_assert_geq(st.inflight_max, 1, "%s", what);
			free(seen);
			free(order);
			close(v.vfd);
			cr_assert_eq(lazymap_unmap(lm, v.base, s.size - v.off), 0);
			cr_assert_eq(lazymap_close(lm), 0);
		}
	}
}

#define DATA_TESTS(sz, SZ)                                                      \
	Test(file, data_##sz##_buffered_hot, FIXTURE) { data_test(SZ, 0); }     \
	Test(file, data_##sz##_buffered_cold, FIXTURE) { data_test(SZ, 1); }    \
	Test(file, data_##sz##_direct_hot, FIXTURE) { data_test(SZ, 2); }       \
	Test(file, data_##sz##_direct_cold, FIXTURE) { data_test(SZ, 3); }

DATA_TESTS(1page, SIZE_1PAGE)
DATA_TESTS(partial, SIZE_PARTIAL)
DATA_TESTS(64m, SIZE_64M)
DATA_TESTS(1g_sparse, SIZE_1G)

/* Residency of a file's pages in the page cache, through a mapping of our own. */
static size_t cached_pages(const char *path, size_t npages)
{
	size_t ps = pgsz(), n = 0;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	unsigned char *vec = malloc(npages);
	void *m;

	cr_assert_geq(fd, 0);
	m = mmap(NULL, npages * ps, PROT_READ, MAP_SHARED, fd, 0);
	cr_assert_neq(m, MAP_FAILED);
	cr_assert_eq(mincore(m, npages * ps, vec), 0);
	for (size_t i = 0; i < npages; i++)
		n += vec[i] & 1;
	munmap(m, npages * ps);
	free(vec);
	close(fd);
	return n;
}

/* The point of LAZYMAP_DIRECT: the data is not cached twice. */
Test(file, direct_reads_leave_the_page_cache_alone, FIXTURE)
{
	size_t ps = pgsz(), npages = 16 * MiB / ps;
	struct fspec s = { .name = "direct", .size = npages * ps, .key = 21 };
	char path[PATH_MAX];

	make_file(&s, path, sizeof(path));
	touch_install();
	for (int direct = 1; direct >= 0; direct--) {
		struct lazymap *lm = open_lm(1, 0);
		struct view v = { .npages = npages };
		size_t before, after;

		cache_prepare(path, &s, true);
		before = cached_pages(path, npages);
		if (before > npages / 8)
			skip_test("POSIX_FADV_DONTNEED left %zu of %zu pages cached", before, npages);
		v.base = map_path(lm, path, s.size, PROT_READ, direct ? LAZYMAP_DIRECT : 0, 0);
		for (size_t pg = 0; pg < npages; pg++)
			cr_assert_eq(touch(v.base + pg * ps, -1, NULL).signo, 0);
		after = cached_pages(path, npages);
		if (direct)
			cr_assert_leq(after, before + npages / 64,
				      "LAZYMAP_DIRECT: %zu pages cached before the scan, %zu after", before,
				      after);
		else /* the check can tell: buffered reads do fill the cache */
			cr_assert_geq(after, npages / 2, "buffered: %zu of %zu pages cached after a scan",
				      after, npages);
		v.vfd = open_check_fd(path);
		for (size_t pg = 0; pg < npages; pg += 61)
			expect_page(&v, pg, direct ? "direct" : "buffered");
		close(v.vfd);
		cr_assert_eq(lazymap_close(lm), 0);
	}
}

/* ------------------------------------------------------------ 2. private writes */

Test(file, private_writes_change_memory_never_the_file, FIXTURE)
{
	size_t ps = pgsz(), npages = 9;
	struct fspec s = { .name = "private", .size = 8 * ps + 100, .key = 31 };
	uint8_t *orig = malloc(s.size), *now = malloc(s.size);
	char path[PATH_MAX];

	make_file(&s, path, sizeof(path));
	touch_install();
	for (size_t i = 0; i < s.size; i++)
		orig[i] = file_byte(s.key, i);
	for (int direct = 0; direct <= 1; direct++) {
		int flags = LAZYMAP_PRIVATE | (direct ? LAZYMAP_DIRECT : 0);
		const char *what = direct ? "direct" : "buffered";
		struct lazymap *lm = open_lm(1, 0);
		int fd = open(path, O_RDONLY | O_CLOEXEC); /* read-only fd, writable private map: as mmap */
		struct view v = { .npages = npages, .vfd = -1 };
		struct lazymap_stats st;
		struct stat sb;
		char *p, *q;

		cr_assert_geq(fd, 0);
		cr_assert_eq(lazymap_map(lm, (void **)&p, s.size, PROT_READ | PROT_WRITE, flags, fd, 0), 0);
		/* read first, then write: the page holds the file's bytes but one */
		cr_assert_eq(touch(p + ps + 10, -1, NULL).signo, 0);
		cr_assert_eq(touch(p + ps + 10, 0xa5, NULL).signo, 0);
		/* a write fault on a missing page fills it from the file first */
		cr_assert_eq(touch(p + 5 * ps + 200, 0x5a, NULL).signo, 0, "%s: write fault", what);
		/* the partial last page: within the mapping, beyond EOF, writable */
		cr_assert_eq(touch(p + 8 * ps + 3000, 7, NULL).signo, 0, "%s: write past EOF", what);
		for (size_t pg = 0; pg < npages; pg++) {
			for (size_t i = 0; i < ps; i++) {
				size_t off = pg * ps + i;
				uint8_t want = off < s.size ? orig[off] : 0;

				if (off == ps + 10)
					want = 0xa5;
				else if (off == 5 * ps + 200)
					want = 0x5a;
				else if (off == 8 * ps + 3000)
					want = 7;
				cr_assert_eq((uint8_t)p[off], want, "%s: byte %#zx is %#x, want %#x",
					     what, off, (uint8_t)p[off], want);
			}
		}
		/* nothing reaches the file, not even on sync */
		cr_assert_eq(lazymap_sync(lm, p, s.size), 0);
		cr_assert_eq(pread(fd, now, s.size, 0), (ssize_t)s.size);
		cr_assert_eq(memcmp(now, orig, s.size), 0, "%s: the file changed", what);
		cr_assert_eq(fstat(fd, &sb), 0);
		cr_assert_eq((uint64_t)sb.st_size, s.size, "%s: size %lld", what, (long long)sb.st_size);
		st = stats(lm);
		cr_assert_eq(st.bytes_written, 0);
		/* a second mapping of the file sees the file, not the first one's writes */
		cr_assert_eq(lazymap_map(lm, (void **)&q, s.size, PROT_READ, flags, fd, 0), 0);
		v.base = q;
		v.vfd = fd;
		expect_page(&v, 1, "second mapping");
		expect_page(&v, 5, "second mapping");
		expect_page(&v, 8, "second mapping");
		close(fd);
		cr_assert_eq(lazymap_close(lm), 0);
	}
	free(orig);
	free(now);
}

/* ------------------------------------------------------------ 3. end of file */

Test(file, eof_tail_reads_zeros_and_pages_beyond_are_sigbus, FIXTURE)
{
	size_t ps = pgsz(), npages = 8;
	struct fspec s = { .name = "eof", .size = 3 * ps + 100, .key = 41 };
	struct fspec d = { .name = "dirt", .size = 1 * MiB, .key = 42 };
	char path[PATH_MAX], dpath[PATH_MAX];

	make_file(&s, path, sizeof(path));
	make_file(&d, dpath, sizeof(dpath));
	touch_install();
	for (int direct = 0; direct <= 1; direct++) {
		const char *what = direct ? "direct" : "buffered";
		struct lazymap *lm = open_lm(1, 0);
		struct lazymap_stats st;
		struct touch_fault f;
		struct view v = { .off = 0, .npages = 4 };
		char *p, *q;

		/*
		 * Read another file first, so that the handler's buffers hold
		 * data: the zeros after EOF must be written, not found there.
		 */
		q = map_path(lm, dpath, d.size, PROT_READ, direct ? LAZYMAP_DIRECT : 0, 0);
		for (size_t pg = 0; pg < d.size / ps; pg++)
			cr_assert_eq(touch(q + pg * ps, -1, NULL).signo, 0);
		cr_assert_eq(lazymap_unmap(lm, q, d.size), 0);
		/* The mapping is longer than the file, as mmap allows. */
		p = map_path(lm, path, npages * ps, PROT_READ | PROT_WRITE,
			     direct ? LAZYMAP_DIRECT : 0, 0);
		v.base = p;
		v.vfd = open_check_fd(path);
		cr_assert_eq(touch(p + 3 * ps + 5, -1, NULL).signo, 0);
		for (size_t i = 0; i < ps; i++)
			cr_assert_eq((uint8_t)p[3 * ps + i], i < 100 ? file_byte(s.key, 3 * ps + i) : 0,
				     "%s: last page, byte %zu", what, i);
		for (size_t pg = 0; pg < 4; pg++)
			expect_page(&v, pg, what);
		/* Wholly beyond EOF: SIGBUS at the very byte, reads and writes, every time. */
		for (size_t pg = 4; pg < npages; pg++) {
			char *a = p + pg * ps + 17 * pg;

			for (int again = 0; again < 2; again++) {
				f = touch(a, pg % 2 ? 1 : -1, NULL);
				cr_assert_eq(f.signo, SIGBUS, "%s: page %zu beyond EOF: signal %d", what, pg,
					     f.signo);
				cr_assert_eq(f.addr, (void *)a, "%s: si_addr %p, touched %p", what, f.addr,
					     (void *)a);
			}
		}
		st = stats(lm);
		cr_assert_eq(st.io_errors, npages - 4, "%s: io_errors %lu, want %zu", what,
			     (unsigned long)st.io_errors, npages - 4);
		/* the good pages are untouched by all that */
		for (size_t pg = 0; pg < 4; pg++)
			expect_page(&v, pg, what);
		close(v.vfd);
		cr_assert_eq(lazymap_close(lm), 0);
	}
}

/*
 * A thread that keeps using other regions meanwhile: writes and reads back
 * an anonymous region, and reads a file mapping that stays good.
 */
struct bystander {
	pthread_t thread;
	char *anon;
	size_t anon_pages;
	const struct view *file;   /* NULL: anonymous only */
	atomic_bool stop;
	atomic_size_t rounds;
	size_t bad, signals;
};

static void *bystander_main(void *arg)
{
	struct bystander *b = arg;
	size_t ps = pgsz();
	uint64_t s = 0x5eedULL;
	uint8_t *buf = malloc(ps);
	char c = 0;

	while (!atomic_load(&b->stop)) {
		size_t pg = rng_next(&s) % b->anon_pages;
		char *a = b->anon + pg * ps + 8;

		/* touch() writes values 0-255; a negative one would be a read */
		if (touch(a, (uint8_t)(pg + 1), NULL).signo || touch(a, -1, &c).signo)
			b->signals++;
		else if (c != (char)(pg + 1))
			b->bad++;
		if (b->file) {
			pg = rng_next(&s) % b->file->npages;
			if (touch(b->file->base + pg * ps, -1, NULL).signo)
				b->signals++;
			else if (page_diff(b->file, pg, buf) != -1)
				b->bad++;
		}
		atomic_fetch_add(&b->rounds, 1);
	}
	free(buf);
	return NULL;
}

static void bystander_start(struct bystander *b, struct lazymap *lm, const struct view *file)
{
	b->anon_pages = 256;
	b->file = file;
	atomic_init(&b->stop, false);
	atomic_init(&b->rounds, 0);
	cr_assert_eq(lazymap_map(lm, (void **)&b->anon, b->anon_pages * pgsz(), PROT_READ | PROT_WRITE,
				 LAZYMAP_PRIVATE | LAZYMAP_ANON, -1, 0), 0);
	cr_assert_eq(pthread_create(&b->thread, NULL, bystander_main, b), 0);
	for (double t0 = now_s(); atomic_load(&b->rounds) < 10; usleep(100))
		cr_assert_lt(now_s() - t0, 10.0, "the other thread never got going");
}

/* Stop it after it went on a while; fail if it saw anything wrong. */
static void bystander_stop(struct bystander *b, size_t rounds_at_start)
{
	double t0 = now_s();

	while (atomic_load(&b->rounds) < rounds_at_start + 10 && now_s() - t0 < 10)
		usleep(100);
	atomic_store(&b->stop, true);
	pthread_join(b->thread, NULL);
	cr_assert_geq(atomic_load(&b->rounds), rounds_at_start + 10, "the other thread stalled");
	cr_assert_eq(b->signals, 0, "the other thread got %zu signals", b->signals);
	cr_assert_eq(b->bad, 0, "the other thread read %zu wrong pages", b->bad);
}

Test(file, truncate_after_map_then_sigbus_beyond_new_end, FIXTURE)
{
	size_t ps = pgsz(), npages = 64, newsize = 10 * ps + 50, rounds;
	struct fspec s = { .name = "shrinks", .size = npages * ps, .key = 51 };
	struct fspec o = { .name = "other", .size = 1 * MiB, .key = 52 };
	char path[PATH_MAX], opath[PATH_MAX];
	struct view v = { .npages = npages }, ov = { 0 };
	struct bystander b = { 0 };
	struct lazymap_stats st;
	struct touch_fault f;
	struct lazymap *lm;
	uint8_t *orig = malloc(s.size);
	int fd;

	make_file(&s, path, sizeof(path));
	make_file(&o, opath, sizeof(opath));
	touch_install();
	for (size_t i = 0; i < s.size; i++)
		orig[i] = file_byte(s.key, i);
	lm = open_lm(2, 0);
	fd = open(path, O_RDWR | O_CLOEXEC);
	cr_assert_geq(fd, 0);
	cr_assert_eq(lazymap_map(lm, (void **)&v.base, s.size, PROT_READ, LAZYMAP_PRIVATE, fd, 0), 0);
	/* Random advice: a fault fills only its page, so nothing past the new end is in yet. */
	cr_assert_eq(lazymap_advise(lm, v.base, s.size, LAZYMAP_ADV_RANDOM), 0);
	ov.base = map_path(lm, opath, o.size, PROT_READ, 0, 0);
	ov.npages = o.size / ps;
	ov.vfd = open_check_fd(opath);
	cr_assert_eq(touch(v.base, -1, NULL).signo, 0);
	cr_assert_eq(touch(v.base + 8 * ps, -1, NULL).signo, 0);
	cr_assert_eq(memcmp(v.base, orig, ps), 0);
	cr_assert_eq(memcmp(v.base + 8 * ps, orig + 8 * ps, ps), 0);

	bystander_start(&b, lm, &ov);
	cr_assert_eq(ftruncate(fd, (off_t)newsize), 0);
	rounds = atomic_load(&b.rounds);
	for (size_t i = 0; i < 2; i++) {
		size_t pg = i ? 12 : 40;
		char *a = v.base + pg * ps + 99;

		f = touch(a, -1, NULL);
		cr_assert_eq(f.signo, SIGBUS, "page %zu beyond the new end: signal %d", pg, f.signo);
		cr_assert_eq(f.addr, (void *)a, "si_addr %p, touched %p", f.addr, (void *)a);
		cr_assert_eq(touch(a, -1, NULL).signo, SIGBUS, "page %zu: once, not twice", pg);
	}
	/* The new partial last page: 50 bytes of file, then zeros. */
	cr_assert_eq(touch(v.base + 10 * ps, -1, NULL).signo, 0);
	for (size_t i = 0; i < ps; i++)
		cr_assert_eq((uint8_t)v.base[10 * ps + i], i < 50 ? orig[10 * ps + i] : 0,
			     "new last page, byte %zu", i);
	/* before the new end: right, whether filled before the truncation or after */
	for (size_t pg = 0; pg < 10; pg++) {
		cr_assert_eq(touch(v.base + pg * ps, -1, NULL).signo, 0, "page %zu", pg);
		cr_assert_eq(memcmp(v.base + pg * ps, orig + pg * ps, ps), 0, "page %zu", pg);
	}
	st = stats(lm);
	cr_assert_eq(st.io_errors, 2, "io_errors %lu, want 2", (unsigned long)st.io_errors);
	bystander_stop(&b, rounds);
	close(ov.vfd);
	close(fd);
	cr_assert_eq(lazymap_close(lm), 0);
	free(orig);
}

/* ------------------------------------------------------------ 4. I/O errors */

static bool page_in(const size_t *list, size_t n, size_t pg)
{
	for (size_t i = 0; i < n; i++)
		if (list[i] == pg)
			return true;
	return false;
}

/* Map fs.path; NULL (with the reason logged) if DIRECT is refused there. */
static char *map_fusefs(struct lazymap *lm, const struct fusefs *fs, size_t len, int flags)
{
	int fd = open(fs->path, O_RDONLY | O_CLOEXEC);
	void *p = NULL;
	int ret;

	cr_assert_geq(fd, 0, "open %s: %s", fs->path, strerror(errno));
	ret = lazymap_map(lm, &p, len, PROT_READ, LAZYMAP_PRIVATE | flags, fd, 0);
	close(fd);
	if (ret == -EINVAL && (flags & LAZYMAP_DIRECT)) {
		cr_log_warn("fusefs refuses O_DIRECT here: DIRECT case not run");
		return NULL;
	}
	cr_assert_eq(ret, 0, "lazymap_map %s: %s", fs->path, strerror(-ret));
	return p;
}

Test(file, io_error_pages_are_sigbus_at_the_address_every_time, FIXTURE, .timeout = 60)
{
	static const size_t bad[] = { 10, 11, 12, 100, 200, 201, 202, 203 };
	static const size_t order[] = { 0, 10, 9, 11, 13, 12, 99, 100, 101, 150, 203, 255, 200, 204 };
	size_t ps = pgsz(), npages = 256, nbad = sizeof(bad) / sizeof(bad[0]), touched_bad = 0;
	uint8_t *buf = malloc(ps);
	struct fusefs fs;
	int err;

	require_uffd(uffd_needs(NULL)); /* before a FUSE server is started for nothing */
	err = fusefs_start(&fs, npages * ps, "10-12,100,200-203");
	if (err < 0)
		skip_test("fusefs: %s", fs.why);
	touch_install();
	for (int direct = 0; direct <= 1; direct++) {
		const char *what = direct ? "direct" : "buffered";
		struct lazymap *lm = open_lm(1, 0);
		struct view v = { .npages = npages, .vfd = -1 };
		struct lazymap_stats st;
		char *anon;

		v.base = map_fusefs(lm, &fs, npages * ps, direct ? LAZYMAP_DIRECT : 0);
		if (!v.base) {
			cr_assert_eq(lazymap_close(lm), 0);
			continue;
		}
		cr_assert_eq(lazymap_map(lm, (void **)&anon, 16 * ps, PROT_READ | PROT_WRITE,
					 LAZYMAP_PRIVATE | LAZYMAP_ANON, -1, 0), 0);
		touched_bad = 0;
		for (size_t i = 0; i < sizeof(order) / sizeof(order[0]); i++) {
			size_t pg = order[i];

			if (!page_in(bad, nbad, pg)) {
				cr_assert_eq(touch(v.base + pg * ps + 1, -1, NULL).signo, 0,
					     "%s: good page %zu", what, pg);
				cr_assert_eq(page_diff(&v, pg, buf), -1, "%s: good page %zu", what, pg);
				continue;
			}
			touched_bad++;
			/* three times, at different bytes: SIGBUS there each time, no hang */
			for (size_t t = 0; t < 3; t++) {
				char *a = v.base + pg * ps + t * 1000 + 3;
				struct touch_fault f = touch(a, -1, NULL);

				cr_assert_eq(f.signo, SIGBUS, "%s: bad page %zu, touch %zu: signal %d",
					     what, pg, t, f.signo);
				cr_assert_eq(f.addr, (void *)a, "%s: bad page %zu: si_addr %p, touched %p",
					     what, pg, f.addr, (void *)a);
			}
			/* the rest of the lazymap still serves */
			cr_assert_eq(touch(anon + (i % 16) * ps, (uint8_t)i, NULL).signo, 0);
			cr_assert_eq(anon[(i % 16) * ps], (char)i);
		}
		st = stats(lm);
		cr_assert_geq(st.io_errors, touched_bad, "%s: io_errors %lu, %zu bad pages touched",
			      what, (unsigned long)st.io_errors, touched_bad);
		cr_assert_leq(st.io_errors, nbad, "%s: io_errors %lu, only %zu bad pages", what,
			      (unsigned long)st.io_errors, nbad);
		cr_assert_eq(lazymap_close(lm), 0);
	}
	fusefs_stop(&fs);
	free(buf);
}

/*
 * Readahead windows span the bad ranges: the run fails, and the library must
 * find the bad pages in it and poison only those.
 */
static void io_error_scan(unsigned fsflags)
{
	size_t ps = pgsz(), npages = 2048, nbad = 3 + 1 + 32;
	uint8_t *buf = malloc(ps);
	struct fusefs fs;
	int err;

	require_uffd(uffd_needs(NULL)); /* before a FUSE server is started for nothing */
	err = fusefs_start_flags(&fs, npages * ps, "300-302,700,1500-1531", fsflags);
	if (err < 0)
		skip_test("fusefs: %s", fs.why);
	touch_install();
	for (int direct = 0; direct <= 1; direct++) {
		const char *what = direct ? "direct" : fsflags & FUSEFS_PAGE_CACHE ?
				   "buffered, fusefs page cache" : "buffered";
		struct lazymap *lm = open_lm(2, 0); /* ahead windows are read by the other */
		struct view v = { .npages = npages, .vfd = -1 };
		struct bystander b = { 0 };
		struct lazymap_stats st;
		size_t rounds, sigs = 0;

		v.base = map_fusefs(lm, &fs, npages * ps, direct ? LAZYMAP_DIRECT : 0);
		if (!v.base) {
			cr_assert_eq(lazymap_close(lm), 0);
			continue;
		}
		bystander_start(&b, lm, NULL);
		rounds = atomic_load(&b.rounds);
		for (int pass = 0; pass < 2; pass++) {
			for (size_t pg = 0; pg < npages; pg++) {
				bool is_bad = (pg >= 300 && pg <= 302) || pg == 700 ||
					      (pg >= 1500 && pg <= 1531);
				char *a = v.base + pg * ps + (pg * 131) % ps;
				struct touch_fault f = touch(a, -1, NULL);

				if (is_bad) {
					cr_assert_eq(f.signo, SIGBUS, "%s pass %d: bad page %zu: signal %d",
						     what, pass, pg, f.signo);
					cr_assert_eq(f.addr, (void *)a, "%s: si_addr %p, touched %p", what,
						     f.addr, (void *)a);
					sigs++;
				} else {
					cr_assert_eq(f.signo, 0, "%s pass %d: good page %zu: signal %d at %p",
						     what, pass, pg, f.signo, f.addr);
					cr_assert_eq(page_diff(&v, pg, buf), -1, "%s: good page %zu", what, pg);
				}
			}
			st = stats(lm);
			/* each bad page poisoned once; the second pass finds them poisoned already */
			cr_assert_eq(st.io_errors, nbad, "%s pass %d: io_errors %lu, want %zu", what, pass,
				     (unsigned long)st.io_errors, nbad);
		}
		cr_assert_eq(sigs, 2 * nbad);
		cr_assert_gt(st.readahead_pages, 0, "%s: no readahead: the windows spanned nothing", what);
		cr_assert_lt(st.faults, npages / 4, "%s: %lu faults for %zu sequential pages", what,
			     (unsigned long)st.faults, npages);
		bystander_stop(&b, rounds);
		cr_assert_eq(lazymap_close(lm), 0);
	}
	fusefs_stop(&fs);
	free(buf);
}

/* fusefs's default: every read reaches the server; a read spanning a bad page fails whole. */
Test(file, io_error_sequential_scan_poisons_only_bad_pages, FIXTURE, .timeout = 120)
{
	io_error_scan(0);
}

/* Through the page cache a read spanning a bad page comes back short, then fails. */
Test(file, io_error_sequential_scan_page_cache_short_reads, FIXTURE, .timeout = 120)
{
	io_error_scan(FUSEFS_PAGE_CACHE);
}

/* ------------------------------------------------------------ 5. readahead */

/* 256 MiB, sparse: data at the start, unaligned in the middle, and at the end. */
static struct fspec big_sparse(const char *name)
{
	return (struct fspec){
		.name = name, .size = 256 * MiB, .key = 61, .nextents = 3,
		.ext = { { 0, 4 * MiB }, { 100 * MiB + 123, 8 * MiB }, { 252 * MiB, 4 * MiB } },
	};
}

/* Compare the whole mapping with the file, 1 MiB at a time. */
static void expect_all(const struct view *v, const char *what)
{
	size_t ps = pgsz(), chunk = 1 * MiB, len = v->npages * ps;
	char *buf = malloc(chunk);

	for (size_t o = 0; o < len; o += chunk) {
		size_t n = len - o < chunk ? len - o : chunk;
		ssize_t r = pread(v->vfd, buf, n, (off_t)(v->off + o));

		cr_assert_geq(r, 0);
		memset(buf + r, 0, n - (size_t)r);
		if (memcmp(v->base + o, buf, n)) {
			for (size_t pg = o / ps; pg < (o + n) / ps; pg++)
				expect_page(v, pg, what);
		}
	}
	free(buf);
}

Test(file, readahead_sequential_scan_takes_few_faults, FIXTURE)
{
	struct fspec s = big_sparse("ra_seq");
	size_t ps = pgsz(), npages = s.size / ps;
	char path[PATH_MAX];

	make_file(&s, path, sizeof(path));
	touch_install();
	for (int direct = 0; direct <= 1; direct++) {
		const char *what = direct ? "direct" : "buffered";
		struct lazymap *lm = open_lm(1, 0);
		struct view v = { .npages = npages };
		struct lazymap_stats st;

		v.base = map_path(lm, path, s.size, PROT_READ, direct ? LAZYMAP_DIRECT : 0, 0);
		v.vfd = open_check_fd(path);
		for (size_t pg = 0; pg < npages; pg++)
			cr_assert_eq(touch(v.base + pg * ps + 7, -1, NULL).signo, 0, "%s: page %zu", what, pg);
		st = stats(lm);
		cr_assert_lt(st.faults, npages / 16, "%s: %lu faults for %zu sequential pages", what,
			     (unsigned long)st.faults, npages);
		cr_assert_gt(st.readahead_pages, 0, "%s", what);
		cr_assert_eq(st.pages_filled, npages, "%s: %lu pages filled of %zu", what,
			     (unsigned long)st.pages_filled, npages);
		cr_assert_eq(st.bytes_read, s.size, "%s: %lu bytes read for a %lu-byte file", what,
			     (unsigned long)st.bytes_read, (unsigned long)s.size);
		cr_assert_eq(st.io_errors, 0);
		expect_all(&v, what);
		close(v.vfd);
		cr_assert_eq(lazymap_close(lm), 0);
	}
}

/*
 * Readahead stops at the end of its region: the region mapped just above
 * (the kernel places a new mapping below the previous one) is another file's
 * and must read right, with no page poisoned or filled by the scan below it.
 * The file below goes on past its mapping, so that a window running over
 * the end would find data to read, not the end of the file.
 */
Test(file, readahead_stops_at_the_region_end, FIXTURE)
{
	size_t ps = pgsz(), len = 1 * MiB, npages = len / ps;
	struct fspec a = { .name = "below", .size = 4 * len, .key = 65 };
	struct fspec b = { .name = "above", .size = len, .key = 66 };
	char apath[PATH_MAX], bpath[PATH_MAX];

	make_file(&a, apath, sizeof(apath));
	make_file(&b, bpath, sizeof(bpath));
	touch_install();
	for (int direct = 0; direct <= 1; direct++) {
		const char *what = direct ? "direct" : "buffered";
		struct lazymap *lm = open_lm(1, 0);
		struct view va = { .npages = npages }, vb = { .npages = npages };
		struct lazymap_stats st;

		/* Leftover attempts stay mapped: they fill the gaps that kept two apart. */
		for (int tries = 0; tries < 16; tries++) {
			vb.base = map_path(lm, bpath, len, PROT_READ, direct ? LAZYMAP_DIRECT : 0, 0);
			va.base = map_path(lm, apath, len, PROT_READ, direct ? LAZYMAP_DIRECT : 0, 0);
			if (va.base + len == vb.base)
				break;
		}
		if (va.base + len != vb.base)
			skip_test("regions not adjacent (%p, %p): nothing to check", (void *)va.base,
				     (void *)vb.base);
		va.vfd = open_check_fd(apath);
		vb.vfd = open_check_fd(bpath);
		for (size_t pg = 0; pg < npages; pg++)
			cr_assert_eq(touch(va.base + pg * ps, -1, NULL).signo, 0, "%s: page %zu", what, pg);
		/* let any read still in flight land */
		st = settled_stats(lm);
		cr_assert_eq(st.pages_filled, npages, "%s: a scan of %zu pages filled %lu", what, npages,
			     (unsigned long)st.pages_filled);
		cr_assert_eq(st.io_errors, 0, "%s: %lu io_errors from a scan of a whole file", what,
			     (unsigned long)st.io_errors);
		cr_assert_eq(st.bytes_read, len, "%s: %lu bytes read for a %zu-byte region", what,
			     (unsigned long)st.bytes_read, len);
		for (size_t pg = 0; pg < npages; pg++) {
			struct touch_fault f = touch(vb.base + pg * ps, -1, NULL);

			cr_assert_eq(f.signo, 0, "%s: the region above, page %zu: signal %d", what, pg,
				     f.signo);
		}
		expect_all(&va, what);
		expect_all(&vb, what);
		close(va.vfd);
		close(vb.vfd);
		cr_assert_eq(lazymap_close(lm), 0);
	}
}

/*
 * Once the reads are done, idle handlers sleep: a completion reaped while
 * polling must not leave the ring's eventfd readable, or epoll_wait returns
 * at once and the handlers burn both CPUs for ever, never seen asleep.
 */
Test(file, handlers_sleep_once_reads_are_done, FIXTURE)
{
	size_t ps = pgsz(), len = 4 * MiB, npages = len / ps;
	struct fspec a = { .name = "idle", .size = len, .key = 67 };
	char path[PATH_MAX];

	make_file(&a, path, sizeof(path));
	for (int direct = 0; direct <= 1; direct++) {
		const char *what = direct ? "direct" : "buffered";
		struct lazymap *lm = open_lm(2, 0);
		char *p = map_path(lm, path, len, PROT_READ, direct ? LAZYMAP_DIRECT : 0, 0);
		volatile char sink = 0;

		for (size_t pg = 0; pg < npages; pg++)
			sink += p[pg * ps];
		(void)sink;
		quiesce(lm);
		wait_handlers_asleep(lm, 2, what);
		cr_assert_eq(lazymap_close(lm), 0);
	}
}

/* A fill callback that waits until the file stream is done (10 s at most). */
static atomic_bool in_fill, stream_done, fill_timed_out;

static int wait_for_stream(void *page, size_t len, uint64_t offset, void *arg)
{
	double t0 = now_s();

	(void)arg;
	(void)offset;
	memset(page, 0x5a, len);
	atomic_store(&in_fill, true);
	while (!atomic_load(&stream_done)) {
		if (now_s() - t0 > 10) {
			atomic_store(&fill_timed_out, true);
			break;
		}
		usleep(1000);
	}
	return 0;
}

static void *touch_slow_fill(void *arg)
{
	return (void *)(uintptr_t)*(volatile char *)arg;
}

/*
 * A handler busy in a slow fill callback is not given a stream's read-ahead
 * windows: the stream would wait for the callback, and here the callback
 * waits for the stream.
 */
Test(file, stream_never_waits_behind_a_busy_handler, FIXTURE)
{
	size_t ps = pgsz(), len = 32 * MiB, npages = len / ps;
	struct lazymap *lm = open_lm(2, 0);
	char path[PATH_MAX], *p;
	volatile char sink = 0;
	pthread_t t;
	void *slow;

	make_plain("stream", len, 68, path, sizeof(path));
	cr_assert_eq(lazymap_map_fill(lm, &slow, ps, PROT_READ, wait_for_stream, NULL), 0);
	p = map_path(lm, path, len, PROT_READ, 0, 0);
	cr_assert_eq(pthread_create(&t, NULL, touch_slow_fill, slow), 0);
	for (double t0 = now_s(); !atomic_load(&in_fill); usleep(1000))
		cr_assert_lt(now_s() - t0, 10.0, "the fill callback was never called");
	for (size_t pg = 0; pg < npages; pg++)
		sink += p[pg * ps];
	(void)sink;
	atomic_store(&stream_done, true);
	pthread_join(t, NULL);
	cr_assert(!atomic_load(&fill_timed_out), "the stream waited for the fill callback");
	cr_assert_eq(lazymap_close(lm), 0);
}

Test(file, readahead_random_scan_reads_little_more_than_touched, FIXTURE)
{
	struct fspec s = big_sparse("ra_rand");
	size_t ps = pgsz(), npages = s.size / ps, want = npages / 20;
	char path[PATH_MAX];

	make_file(&s, path, sizeof(path));
	touch_install();
	for (int direct = 0; direct <= 1; direct++) {
		const char *what = direct ? "direct" : "buffered";
		struct lazymap *lm = open_lm(1, 0);
		struct view v = { .npages = npages };
		uint8_t *seen = calloc(npages, 1);
		uint64_t seed = test_seed() ^ (uint64_t)direct;
		struct lazymap_stats st;
		size_t *order = malloc(want * sizeof(*order));

		for (size_t n = 0; n < want;) {
			size_t pg = rng_next(&seed) % npages;

			if (!seen[pg]++)
				order[n++] = pg;
		}
		v.base = map_path(lm, path, s.size, PROT_READ, direct ? LAZYMAP_DIRECT : 0, 0);
		v.vfd = open_check_fd(path);
		memset(seen, 0, npages);
		cr_assert_eq(run_scan(&v, &s, order, want, 1, seen, what), want);
		st = stats(lm);
		cr_assert_leq(st.bytes_read, 2 * want * ps,
			      "%s: %lu bytes read for %zu random pages (%zu bytes), seed %#llx", what,
			      (unsigned long)st.bytes_read, want, want * ps,
			      (unsigned long long)test_seed());
		cr_assert_geq(st.bytes_read, want * ps, "%s", what);
		cr_assert_eq(st.io_errors, 0);
		close(v.vfd);
		free(order);
		free(seen);
		cr_assert_eq(lazymap_close(lm), 0);
	}
}

Test(file, advise_random_reads_only_the_touched_pages, FIXTURE)
{
	size_t ps = pgsz(), npages = 16 * MiB / ps, third = npages / 4;
	struct lazymap_stats st, st2;
	char path[PATH_MAX];
	struct view v = { .npages = npages };
	struct lazymap *lm;

	make_plain("adv_random", npages * ps, 71, path, sizeof(path));
	touch_install();
	lm = open_lm(1, 0);
	v.base = map_path(lm, path, npages * ps, PROT_READ, 0, 0);
	v.vfd = open_check_fd(path);
	cr_assert_eq(lazymap_advise(lm, v.base, npages * ps, LAZYMAP_ADV_RANDOM), 0);
	for (size_t pg = 0; pg < npages; pg++)
		cr_assert_eq(touch(v.base + pg * ps, -1, NULL).signo, 0);
	st = stats(lm);
	cr_assert_eq(st.bytes_read, npages * ps, "RANDOM: %lu bytes read by a sequential scan of %zu",
		     (unsigned long)st.bytes_read, npages * ps);
	cr_assert_eq(st.pages_filled, npages);
	cr_assert_eq(st.readahead_pages, 0, "RANDOM: %lu pages read ahead",
		     (unsigned long)st.readahead_pages);
	cr_assert_eq(st.faults, npages, "RANDOM: %lu faults for %zu pages", (unsigned long)st.faults,
		     npages);
	expect_all(&v, "random");
	cr_assert_eq(lazymap_close(lm), 0);

	/* Advice on a part splits the region; only that part is random. */
	lm = open_lm(1, 0);
	v.base = map_path(lm, path, npages * ps, PROT_READ, 0, 0);
	cr_assert_eq(lazymap_advise(lm, v.base + third * ps, third * ps, LAZYMAP_ADV_RANDOM), 0);
	expect_regions(lm, 3, "advice on the middle");
	for (size_t pg = third; pg < 2 * third; pg++)
		cr_assert_eq(touch(v.base + pg * ps, -1, NULL).signo, 0);
	st = stats(lm);
	cr_assert_eq(st.bytes_read, third * ps, "random part: %lu bytes read for %zu",
		     (unsigned long)st.bytes_read, third * ps);
	cr_assert_eq(st.faults, third);
	for (size_t pg = 0; pg < third; pg++)
		cr_assert_eq(touch(v.base + pg * ps, -1, NULL).signo, 0);
	st2 = stats(lm);
	cr_assert_lt(st2.faults - st.faults, third / 8, "normal part: %lu faults for %zu pages",
		     (unsigned long)(st2.faults - st.faults), third);
	/* readahead of the normal part stops at its end: nothing read twice */
	cr_assert_eq(st2.bytes_read, 2 * third * ps, "%lu bytes read for %zu pages",
		     (unsigned long)st2.bytes_read, 2 * third);
	expect_all(&v, "split");
	close(v.vfd);
	cr_assert_eq(lazymap_close(lm), 0);
}

Test(file, advise_sequential_fills_readahead_max_from_the_first_fault, FIXTURE)
{
	size_t ps = pgsz(), npages = 16 * MiB / ps, ra = 1 * MiB / ps, first = 100;
	struct lazymap_stats st;
	char path[PATH_MAX];
	struct view v = { .npages = npages };
	struct lazymap *lm;

	make_plain("adv_seq", npages * ps, 72, path, sizeof(path));
	touch_install();

	/* Without advice, the first fault fills less: the window grows. */
	lm = open_lm(1, 1 * MiB);
	v.base = map_path(lm, path, npages * ps, PROT_READ, 0, 0);
	cr_assert_eq(touch(v.base + first * ps, -1, NULL).signo, 0);
	st = settled_stats(lm);
	cr_assert_lt(st.pages_filled, ra, "NORMAL: the first fault filled %lu pages already",
		     (unsigned long)st.pages_filled);
	cr_assert_eq(lazymap_close(lm), 0);

	lm = open_lm(1, 1 * MiB);
	v.base = map_path(lm, path, npages * ps, PROT_READ, 0, 0);
	v.vfd = open_check_fd(path);
	cr_assert_eq(lazymap_advise(lm, v.base, npages * ps, LAZYMAP_ADV_SEQUENTIAL), 0);
	cr_assert_eq(touch(v.base + first * ps, -1, NULL).signo, 0);
	st = settled_stats(lm);
	/*
	 * readahead_max from the fault on; a stream at full window also reads
	 * the next two windows ahead (96e73a2), and no more than that.
	 */
	cr_assert_geq(st.pages_filled, ra, "SEQUENTIAL: the first fault filled %lu pages, want %zu",
		      (unsigned long)st.pages_filled, ra);
	cr_assert_leq(st.pages_filled, 3 * ra, "SEQUENTIAL: the first fault filled %lu pages, "
		      "more than three windows of %zu", (unsigned long)st.pages_filled, ra);
	cr_assert_eq(st.bytes_read, st.pages_filled * ps);
	cr_assert_eq(st.readahead_pages, st.pages_filled - 1);
	cr_assert_eq(st.faults, 1);
	/* the whole run is in: touching it raises no fault */
	for (size_t pg = first; pg < first + ra; pg++)
		cr_assert_eq(touch(v.base + pg * ps, -1, NULL).signo, 0);
	st = stats(lm);
	cr_assert_eq(st.faults, 1, "%lu faults inside the first run", (unsigned long)st.faults);
	/* and the rest of a scan goes in runs of ra pages */
	for (size_t pg = first + ra; pg < npages; pg++)
		cr_assert_eq(touch(v.base + pg * ps, -1, NULL).signo, 0);
	st = stats(lm);
	cr_assert_lt(st.faults, (npages - first) / 16,
		     "SEQUENTIAL: %lu faults for %zu pages in runs of %zu", (unsigned long)st.faults,
		     npages - first, ra);
	for (size_t pg = first; pg < npages; pg += 17)
		expect_page(&v, pg, "sequential");
	close(v.vfd);
	cr_assert_eq(lazymap_close(lm), 0);
}

Test(file, advise_willneed_fills_in_the_background, FIXTURE)
{
	size_t ps = pgsz(), npages = 16 * MiB / ps, n = npages - 2;
	struct lazymap_stats st;
	char path[PATH_MAX];
	struct view v = { .npages = npages };
	struct lazymap *lm;

	make_plain("adv_willneed", npages * ps, 73, path, sizeof(path));
	touch_install();
	lm = open_lm(2, 0);
	v.base = map_path(lm, path, npages * ps, PROT_READ, 0, 0);
	v.vfd = open_check_fd(path);
	cr_assert_eq(lazymap_advise(lm, v.base + ps, n * ps, LAZYMAP_ADV_WILLNEED), 0);
	st = settled_stats(lm);
	cr_assert_eq(st.pages_filled, n, "WILLNEED: %lu pages filled, want %zu",
		     (unsigned long)st.pages_filled, n);
	cr_assert_eq(st.bytes_read, n * ps);
	cr_assert_eq(st.faults, 0);
	for (size_t pg = 1; pg <= n; pg++)
		expect_page(&v, pg, "willneed");
	st = stats(lm);
	cr_assert_eq(st.faults, 0, "%lu faults on pages filled in advance", (unsigned long)st.faults);
	/* outside the range: left alone, filled on touch */
	cr_assert_eq(touch(v.base, -1, NULL).signo, 0);
	expect_page(&v, 0, "willneed, outside");
	st = stats(lm);
	cr_assert_eq(st.faults, 1);
	close(v.vfd);
	cr_assert_eq(lazymap_close(lm), 0);
}

Test(file, advise_errors, FIXTURE)
{
	size_t ps = pgsz(), npages = 16;
	char path[PATH_MAX], stack_page[64];
	struct lazymap *lm;
	char *p, *q;

	make_plain("adv_err", npages * ps, 74, path, sizeof(path));
	lm = open_lm(1, 0);
	p = map_path(lm, path, npages * ps, PROT_READ, 0, 0);
	cr_assert_eq(lazymap_advise(lm, p, npages * ps, 4), -EINVAL);
	cr_assert_eq(lazymap_advise(lm, p, npages * ps, -1), -EINVAL);
	cr_assert_eq(lazymap_advise(lm, p, npages * ps, 1000), -EINVAL);
	/* ranges not ours, or malformed */
	cr_assert_eq(lazymap_advise(lm, (void *)((uintptr_t)stack_page & ~(ps - 1)), ps,
				    LAZYMAP_ADV_RANDOM), -EINVAL);
	cr_assert_eq(lazymap_advise(lm, p + 8 * ps, npages * ps, LAZYMAP_ADV_RANDOM), -EINVAL);
	cr_assert_eq(lazymap_advise(lm, p - ps, 2 * ps, LAZYMAP_ADV_SEQUENTIAL), -EINVAL);
	cr_assert_eq(lazymap_advise(lm, p + 1, ps, LAZYMAP_ADV_RANDOM), -EINVAL);
	cr_assert_eq(lazymap_advise(lm, p, 0, LAZYMAP_ADV_RANDOM), -EINVAL);
	cr_assert_eq(lazymap_advise(lm, p + 8 * ps, npages * ps, LAZYMAP_ADV_WILLNEED), -EINVAL);
	/* a hole between two regions makes a range not ours */
	q = map_path(lm, path, npages * ps, PROT_READ, 0, 0);
	cr_assert_eq(lazymap_unmap(lm, q + 4 * ps, ps), 0);
	cr_assert_eq(lazymap_advise(lm, q, 8 * ps, LAZYMAP_ADV_RANDOM), -EINVAL);
	/* nothing split, nothing filled */
	expect_regions(lm, 3, "failed advice");
	cr_assert_eq(stats(lm).pages_filled, 0);
	cr_assert_eq(lazymap_advise(lm, p, npages * ps, LAZYMAP_ADV_NORMAL), 0);
	expect_regions(lm, 3, "advice on a whole region");
	cr_assert_eq((uint8_t)p[5 * ps + 3], file_byte(74, 5 * ps + 3));
	cr_assert_eq(lazymap_close(lm), 0);
	cr_assert_eq(lazymap_advise(lm, p, ps, LAZYMAP_ADV_RANDOM), -EBADF);
}

/*
 * A fill unit reads the whole block of the file around a fault (umap's page
 * size, a filesystem block past the page size), blocks at file offsets
 * that are multiples of it, whatever the region's own offset.
 */
Test(file, fill_unit_reads_the_whole_block_of_the_file_around_a_fault, FIXTURE)
{
	size_t ps = pgsz(), unit = 16, k = 3, npages = 256 + 5 - k;
	struct view v = { .npages = npages, .off = k * ps };
	struct lazymap_stats st;
	char path[PATH_MAX];
	struct lazymap *lm;

	make_plain("fill_unit", (256 + 5) * ps, 75, path, sizeof(path));
	touch_install();
	lm = open_lm(1, 0);
	v.base = map_path(lm, path, npages * ps, PROT_READ, 0, k);
	v.vfd = open_check_fd(path);
	cr_assert_eq(lazymap_advise(lm, v.base, npages * ps, LAZYMAP_ADV_RANDOM), 0);
	cr_assert_eq(lazymap_fill_unit(lm, v.base, npages * ps, unit * ps), 0);
	/* file page 23: its block is file pages [16, 32), region pages [13, 29) */
	cr_assert_eq(touch(v.base + 20 * ps, -1, NULL).signo, 0);
	st = settled_stats(lm);
	cr_assert_eq(st.faults, 1);
	cr_assert_eq(st.bytes_read, unit * ps, "%lu bytes read for a block of %zu",
		     (unsigned long)st.bytes_read, unit * ps);
	cr_assert_eq(present_pages(v.base + 13 * ps, unit * ps), unit);
	cr_assert_eq(present_pages(v.base + 12 * ps, ps), 0);
	cr_assert_eq(present_pages(v.base + 29 * ps, ps), 0);
	/* the first block starts before the region: its part in the region */
	cr_assert_eq(touch(v.base + 2 * ps, -1, NULL).signo, 0);
	cr_assert_eq(settled_stats(lm).bytes_read, (unit + 13) * ps);
	cr_assert_eq(present_pages(v.base, 13 * ps), 13);
	/* the last block ends with the file: 5 pages */
	cr_assert_eq(touch(v.base + (npages - 1) * ps, -1, NULL).signo, 0);
	cr_assert_eq(settled_stats(lm).bytes_read, (unit + 13 + 5) * ps);
	cr_assert_eq(present_pages(v.base + (npages - 5) * ps, 5 * ps), 5);
	cr_assert_eq(present_pages(v.base + (npages - 6) * ps, ps), 0);
	/* a block some of whose pages are in already: the holes only */
	cr_assert_eq(touch(v.base + 29 * ps, -1, NULL).signo, 0);
	cr_assert_eq(touch(v.base + 45 * ps, -1, NULL).signo, 0); /* block [45, 61) */
	cr_assert_eq(touch(v.base + 31 * ps, -1, NULL).signo, 0);
	st = settled_stats(lm);
	cr_assert_eq(st.pages_filled, 3 * unit + 13 + 5, "%lu pages filled",
		     (unsigned long)st.pages_filled);
	/* unit 0: one page again; the part given splits the region */
	cr_assert_eq(lazymap_fill_unit(lm, v.base + 128 * ps, 64 * ps, 0), 0);
	expect_regions(lm, 3, "a fill unit on the middle");
	cr_assert_eq(touch(v.base + 150 * ps, -1, NULL).signo, 0);
	cr_assert_eq(settled_stats(lm).pages_filled, st.pages_filled + 1);
	expect_all(&v, "fill unit");
	close(v.vfd);
	cr_assert_eq(lazymap_close(lm), 0);
}

/* A block with pages in cache already (read through another region) and
 * read-around on top: every hole of the block is read, each once. */
Test(file, fill_unit_fills_every_hole_about_pages_in_cache, FIXTURE)
{
	size_t ps = pgsz(), unit = 64, npages = 2048;
	struct view v = { .npages = npages };
	struct lazymap_stats st;
	char path[PATH_MAX], *a;
	struct lazymap *lm;
	uint64_t seed = test_seed();

	make_plain("fill_unit_holes", npages * ps, 77, path, sizeof(path));
	touch_install();
	lm = open_lm(1, 0);
	a = map_path(lm, path, npages * ps, PROT_READ, 0, 0);
	cr_assert_eq(lazymap_advise(lm, a, npages * ps, LAZYMAP_ADV_RANDOM), 0);
	cr_assert_eq(touch(a + 70 * ps, -1, NULL).signo, 0);
	cr_assert_eq(touch(a + 75 * ps, -1, NULL).signo, 0);
	cr_assert_eq(touch(a + 127 * ps, -1, NULL).signo, 0);
	v.base = map_path(lm, path, npages * ps, PROT_READ, 0, 0);
	v.vfd = open_check_fd(path);
	cr_assert_eq(lazymap_fill_unit(lm, v.base, npages * ps, unit * ps), 0);
	cr_assert_eq(touch(v.base + 66 * ps, -1, NULL).signo, 0);
	st = settled_stats(lm);
	cr_assert_eq(st.pages_filled, 3 + unit - 3, "%lu pages filled", (unsigned long)st.pages_filled);
	cr_assert_eq(present_pages(v.base + 64 * ps, unit * ps), unit);
	/* touches here and there: blocks whole, read-around about them */
	for (int i = 0; i < 64; i++)
		cr_assert_eq(touch(v.base + (rng_next(&seed) % npages) * ps, -1, NULL).signo, 0);
	quiesce(lm);
	for (size_t b = 0; b < npages / unit; b++) {
		size_t in = present_pages(v.base + b * unit * ps, unit * ps);

		cr_assert(in == 0 || in == unit, "block %zu: %zu of %zu pages in", b, in, unit);
	}
	expect_all(&v, "fill unit about pages in cache");
	close(v.vfd);
	cr_assert_eq(lazymap_close(lm), 0);
}

/* Past the file's end a fill unit changes nothing: SIGBUS for every page
 * wholly past it, whichever page of a unit's block is touched first. */
Test(file, fill_unit_past_the_end_of_the_file_is_sigbus, FIXTURE, .timeout = 60)
{
	size_t ps = pgsz(), unit = 16, fsize = 2 * ps + 1808;
	size_t offs[] = { 5 * ps, 3 * ps, 15 * ps + 7, 4 * ps, 17 * ps, 31 * ps };
	char path[PATH_MAX];
	struct lazymap *lm;
	char *p;

	for (int shared = 0; shared < 2; shared++) {
		make_plain("fill_unit_eof", fsize, 78, path, sizeof(path));
		touch_install();
		lm = open_lm(1, 0);
		int fd = open(path, O_RDWR | O_CLOEXEC);

		cr_assert_geq(fd, 0);
		p = NULL;
		cr_assert_eq(lazymap_map(lm, (void **)&p, 2 * unit * ps, PROT_READ,
					 shared ? LAZYMAP_SHARED : LAZYMAP_PRIVATE, fd, 0), 0);
		close(fd);
		cr_assert_eq(lazymap_fill_unit(lm, p, 2 * unit * ps, unit * ps), 0);
		for (size_t i = 0; i < sizeof(offs) / sizeof(offs[0]); i++)
			cr_assert_eq(touch(p + offs[i], -1, NULL).signo, SIGBUS,
				     "offset %zu of a %zu-byte file (%s)", offs[i], fsize,
				     shared ? "shared" : "private");
		cr_assert_eq((uint8_t)p[fsize - 1], file_byte(78, fsize - 1));
		cr_assert_eq(p[fsize], 0, "the end of the last page reads zeros");
		cr_assert_eq(lazymap_close(lm), 0);
	}
}

Test(file, fill_unit_errors, FIXTURE)
{
	size_t ps = pgsz(), npages = 16;
	char path[PATH_MAX];
	struct lazymap *lm;
	char *p;

	make_plain("fill_unit_err", npages * ps, 76, path, sizeof(path));
	lm = open_lm(1, 0);
	p = map_path(lm, path, npages * ps, PROT_READ, 0, 0);
	cr_assert_eq(lazymap_fill_unit(lm, p, npages * ps, ps + 1), -EINVAL);
	cr_assert_eq(lazymap_fill_unit(lm, p, npages * ps, ps / 2), -EINVAL);
	cr_assert_eq(lazymap_fill_unit(lm, p, npages * ps, LAZYMAP_FILL_UNIT_MAX + ps), -EINVAL);
	cr_assert_eq(lazymap_fill_unit(lm, p, npages * ps, SIZE_MAX & ~(ps - 1)), -EINVAL);
	cr_assert_eq(lazymap_fill_unit(lm, p + 8 * ps, npages * ps, 4 * ps), -EINVAL);
	cr_assert_eq(lazymap_fill_unit(lm, p + 1, ps, 4 * ps), -EINVAL);
	cr_assert_eq(lazymap_fill_unit(lm, p, 0, 4 * ps), -EINVAL);
	expect_regions(lm, 1, "failed fill units");
	/* not a power of two: any multiple of the page size */
	cr_assert_eq(lazymap_fill_unit(lm, p, npages * ps, 3 * ps), 0);
	cr_assert_eq(lazymap_fill_unit(lm, p, npages * ps, LAZYMAP_FILL_UNIT_MAX), 0);
	cr_assert_eq((uint8_t)p[9 * ps + 3], file_byte(76, 9 * ps + 3));
	cr_assert_eq(stats(lm).pages_filled, npages, "the unit (64 MiB) stops at the file's end");
	cr_assert_eq(lazymap_close(lm), 0);
	cr_assert_eq(lazymap_fill_unit(lm, p, ps, 4 * ps), -EBADF);
}

/* ------------------------------------------------------------ 6. concurrency */

struct racer {
	pthread_t thread;
	const struct view *v;
	pthread_barrier_t *go;
	unsigned id;
	int signo;
	long diff;
};

static void *racer_main(void *arg)
{
	struct racer *r = arg;
	uint8_t *buf = malloc(pgsz());

	pthread_barrier_wait(r->go);
	r->signo = touch(r->v->base + r->id * 64, -1, NULL).signo;
	r->diff = r->signo ? -1 : page_diff(r->v, 0, buf);
	free(buf);
	return NULL;
}

Test(file, eight_threads_on_one_page_read_it_once, FIXTURE)
{
	enum { THREADS = 8, ROUNDS = 16 };
	size_t ps = pgsz(), npages = 64;
	char path[PATH_MAX];

	make_plain("same_page", npages * ps, 81, path, sizeof(path));
	touch_install();
	for (int direct = 0; direct <= 1; direct++) {
		const char *what = direct ? "direct" : "buffered";
		struct lazymap *lm = open_lm(2, 0);
		int fd = open(path, O_RDONLY | O_CLOEXEC);

		cr_assert_geq(fd, 0);
		for (int round = 0; round < ROUNDS; round++) {
			size_t k = (size_t)round * 3 % npages;
			struct view v = { .npages = 1, .off = k * ps, .vfd = fd };
			struct lazymap_stats before = stats(lm), after;
			struct racer r[THREADS];
			pthread_barrier_t go;

			/* one page: no readahead can make a second read of anything */
			cr_assert_eq(lazymap_map(lm, (void **)&v.base, ps, PROT_READ,
						 LAZYMAP_PRIVATE | (direct ? LAZYMAP_DIRECT : 0), fd,
						 (off_t)v.off), 0);
			pthread_barrier_init(&go, NULL, THREADS);
			for (unsigned i = 0; i < THREADS; i++) {
				r[i] = (struct racer){ .v = &v, .go = &go, .id = i };
				cr_assert_eq(pthread_create(&r[i].thread, NULL, racer_main, &r[i]), 0);
			}
			for (unsigned i = 0; i < THREADS; i++)
				pthread_join(r[i].thread, NULL);
			pthread_barrier_destroy(&go);
			for (unsigned i = 0; i < THREADS; i++) {
				cr_assert_eq(r[i].signo, 0, "%s round %d thread %u: signal %d", what,
					     round, i, r[i].signo);
				cr_assert_eq(r[i].diff, -1, "%s round %d thread %u: byte %ld differs",
					     what, round, i, r[i].diff);
			}
			after = stats(lm);
			cr_assert_eq(after.bytes_read - before.bytes_read, ps,
				     "%s round %d: %lu bytes read for one page", what, round,
				     (unsigned long)(after.bytes_read - before.bytes_read));
			cr_assert_eq(after.file_reads - before.file_reads, 1,
				     "%s round %d: %lu reads for one page", what, round,
				     (unsigned long)(after.file_reads - before.file_reads));
			cr_assert_eq(after.pages_filled - before.pages_filled, 1);
			cr_assert_eq(lazymap_unmap(lm, v.base, ps), 0);
		}
		close(fd);
		cr_assert_eq(lazymap_close(lm), 0);
	}
}

Test(file, many_threads_many_pages_two_handlers, FIXTURE)
{
	enum { THREADS = 8 };
	struct fspec s = { .name = "many", .size = 64 * MiB, .key = 82 };
	size_t ps = pgsz(), npages = s.size / ps, n = 8192 * THREADS;
	char path[PATH_MAX];

	make_file(&s, path, sizeof(path));
	touch_install();
	for (int direct = 0; direct <= 1; direct++) {
		const char *what = direct ? "direct" : "buffered";
		struct lazymap *lm = open_lm(2, 0);
		struct view v = { .npages = npages };
		uint64_t seed = test_seed() ^ 0x8a ^ (uint64_t)direct;
		size_t *order = malloc(n * sizeof(*order));
		struct lazymap_stats st;
		char msg[96];

		/* random runs of 1-32 pages: readahead and faults race on neighbours */
		for (size_t i = 0; i < n;) {
			size_t pg = rng_next(&seed) % npages, run = 1 + rng_next(&seed) % 32;

			for (; run-- && i < n && pg < npages; pg++)
				order[i++] = pg;
		}
		v.base = map_path(lm, path, s.size, PROT_READ, direct ? LAZYMAP_DIRECT : 0, 0);
		v.vfd = open_check_fd(path);
		uint8_t *seen = calloc(npages, 1);

		snprintf(msg, sizeof(msg), "%s, seed %#llx", what, (unsigned long long)test_seed());
		run_scan(&v, &s, order, n, THREADS, seen, msg);
		free(seen);
		st = stats(lm);
		cr_assert_eq(st.io_errors, 0);
		cr_assert_leq(st.pages_filled, npages, "%s: %lu pages filled of %zu: some twice", what,
			      (unsigned long)st.pages_filled, npages);
		cr_assert_leq(st.bytes_read, s.size, "%s: %lu bytes read of a %lu-byte file", what,
			      (unsigned long)st.bytes_read, (unsigned long)s.size);
		close(v.vfd);
		free(order);
		cr_assert_eq(lazymap_close(lm), 0);
	}
}

/* ------------------------------------------------------------ 7. mmap's errors */

Test(file, map_errors_leave_the_tree_unchanged, FIXTURE)
{
	size_t ps = pgsz(), len = 4 * ps;
	off_t huge = (off_t)(INT64_MAX & ~(int64_t)(ps - 1));
	char path[PATH_MAX];
	struct lazymap *lm;
	int fd, wfd, dfd, nfd, pfd[2], closed;
	void *keep, *p = NULL;

	make_plain("errors", len, 91, path, sizeof(path));
	lm = open_lm(1, 0);
	cr_assert_eq(lazymap_map(lm, &keep, ps, PROT_READ | PROT_WRITE, LAZYMAP_PRIVATE | LAZYMAP_ANON,
				 -1, 0), 0);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	wfd = open(path, O_WRONLY | O_CLOEXEC);
	dfd = open(fx.dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	nfd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	cr_assert(fd >= 0 && wfd >= 0 && dfd >= 0 && nfd >= 0);
	cr_assert_eq(pipe2(pfd, O_CLOEXEC), 0);
	closed = fcntl(fd, F_DUPFD_CLOEXEC, 500);
	cr_assert_geq(closed, 0);
	close(closed);

#define EXPECT_MAP(want, flags_, fd_, off_)                                             \
	do {                                                                            \
		int r_ = lazymap_map(lm, &p, len, PROT_READ, (flags_), (fd_), (off_));  \
		cr_assert_eq(r_, (want), "lazymap_map(flags %#x, fd %d, offset %lld): %d, want %d", \
			     (flags_), (fd_), (long long)(off_), r_, (want));            \
		cr_assert_null(p);                                                      \
		expect_regions(lm, 1, #want);                                           \
	} while (0)

	EXPECT_MAP(-EINVAL, LAZYMAP_PRIVATE, fd, 100);
	EXPECT_MAP(-EINVAL, LAZYMAP_PRIVATE, fd, (off_t)ps / 2);
	EXPECT_MAP(-EINVAL, LAZYMAP_PRIVATE, fd, -(off_t)ps);
	EXPECT_MAP(-EINVAL, LAZYMAP_PRIVATE, fd, -1);
	EXPECT_MAP(-EINVAL, LAZYMAP_PRIVATE, fd, huge);               /* offset + len overflows */
	EXPECT_MAP(-EINVAL, LAZYMAP_PRIVATE, fd, huge - (off_t)ps);
	EXPECT_MAP(-EACCES, LAZYMAP_PRIVATE, wfd, 0);
	EXPECT_MAP(-EACCES, LAZYMAP_PRIVATE | LAZYMAP_DIRECT, wfd, 0);
	EXPECT_MAP(-ENODEV, LAZYMAP_PRIVATE, dfd, 0);
	EXPECT_MAP(-ENODEV, LAZYMAP_PRIVATE, pfd[0], 0);
	EXPECT_MAP(-ENODEV, LAZYMAP_PRIVATE, nfd, 0);
	EXPECT_MAP(-EBADF, LAZYMAP_PRIVATE, closed, 0);
	EXPECT_MAP(-EBADF, LAZYMAP_PRIVATE, -1, 0);
	EXPECT_MAP(-EBADF, LAZYMAP_PRIVATE | LAZYMAP_DIRECT, closed, 0);
	EXPECT_MAP(-EINVAL, LAZYMAP_SHARED, fd, -1);
	EXPECT_MAP(-EACCES, LAZYMAP_SHARED, wfd, 0);
#undef EXPECT_MAP

	/* The same file, mapped right, works: the errors were about the arguments. */
	cr_assert_eq(lazymap_map(lm, &p, len, PROT_READ, LAZYMAP_PRIVATE, fd, (off_t)ps), 0);
	cr_assert_eq((uint8_t)((char *)p)[5], file_byte(91, ps + 5));
	expect_regions(lm, 2, "a good map");
	cr_assert_eq(lazymap_unmap(lm, p, len), 0);
	expect_regions(lm, 1, "unmap");
	close(fd);
	close(wfd);
	close(dfd);
	close(nfd);
	close(pfd[0]);
	close(pfd[1]);
	cr_assert_eq(lazymap_close(lm), 0);
}

/* Does the file system holding path refuse O_DIRECT opens? */
static bool refuses_o_direct(const char *path)
{
	int fd = open(path, O_RDONLY | O_DIRECT | O_CLOEXEC);

	if (fd >= 0) {
		close(fd);
		return false;
	}
	return errno == EINVAL;
}

/* path (one page of data) is on a file system refusing O_DIRECT: DIRECT is -EINVAL, buffered works. */
static void expect_direct_refused(struct lazymap *lm, const char *path, const char *fs)
{
	size_t ps = pgsz();
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	void *p = NULL;
	int ret;

	cr_assert_geq(fd, 0);
	ret = lazymap_map(lm, &p, ps, PROT_READ, LAZYMAP_PRIVATE | LAZYMAP_DIRECT, fd, 0);
	cr_assert_eq(ret, -EINVAL, "LAZYMAP_DIRECT on %s: %d, want -EINVAL", fs, ret);
	cr_assert_null(p);
	expect_regions(lm, 0, "LAZYMAP_DIRECT refused");
	/* the same file without DIRECT is fine */
	cr_assert_eq(lazymap_map(lm, &p, ps, PROT_READ, LAZYMAP_PRIVATE, fd, 0), 0);
	cr_assert_eq((uint8_t)((char *)p)[77], file_byte(92, 77), "%s, buffered", fs);
	cr_assert_eq(lazymap_unmap(lm, p, ps), 0);
	close(fd);
}

static void write_one_page(const char *path)
{
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);

	cr_assert_geq(fd, 0, "%s: %s", path, strerror(errno));
	write_pattern(fd, 92, 0, pgsz());
	close(fd);
}

/*
 * tmpfs refused O_DIRECT before Linux 6.6 and accepts it since; ramfs still
 * refuses it. Whichever file system refuses it here gets -EINVAL; a tmpfs
 * that accepts it must map and read right with LAZYMAP_DIRECT.
 */
Test(file, direct_on_fs_refusing_o_direct_is_einval, FIXTURE)
{
	struct lazymap *lm = open_lm(1, 0);
	char path[PATH_MAX + 16];
	int fd;

	snprintf(fx.shm, sizeof(fx.shm), "/dev/shm/lazymap-file.XXXXXX");
	fd = mkstemp(fx.shm);
	if (fd < 0) {
		fx.shm[0] = '\0';
		skip_test("no /dev/shm: %s", strerror(errno));
	}
	close(fd);
	write_one_page(fx.shm);
	if (refuses_o_direct(fx.shm)) {
		expect_direct_refused(lm, fx.shm, "tmpfs");
	} else {
		size_t ps = pgsz();
		void *p = NULL;

		cr_log_info("tmpfs accepts O_DIRECT on this kernel: trying ramfs");
		fd = open(fx.shm, O_RDONLY | O_CLOEXEC);
		cr_assert_eq(lazymap_map(lm, &p, ps, PROT_READ, LAZYMAP_PRIVATE | LAZYMAP_DIRECT, fd, 0),
			     0, "tmpfs takes O_DIRECT here: LAZYMAP_DIRECT must work");
		cr_assert_eq((uint8_t)((char *)p)[77], file_byte(92, 77));
		cr_assert_eq(lazymap_unmap(lm, p, ps), 0);
		close(fd);

		snprintf(fx.mnt, sizeof(fx.mnt), "/var/tmp/lazymap-ramfs.XXXXXX");
		if (!mkdtemp(fx.mnt)) {
			fx.mnt[0] = '\0';
			skip_test("mkdtemp: %s", strerror(errno));
		}
		if (mount("lazymap-test", fx.mnt, "ramfs", 0, NULL) < 0) {
			int e = errno;

			rmdir(fx.mnt);
			fx.mnt[0] = '\0';
			skip_test("tmpfs takes O_DIRECT and ramfs cannot be mounted: %s", strerror(e));
		}
		snprintf(path, sizeof(path), "%s/one_page", fx.mnt);
		write_one_page(path);
		if (!refuses_o_direct(path))
			skip_test("ramfs accepts O_DIRECT too: no file system refuses it here");
		expect_direct_refused(lm, path, "ramfs");
	}
	cr_assert_eq(lazymap_close(lm), 0);
}
