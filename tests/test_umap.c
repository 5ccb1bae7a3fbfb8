// SPDX-License-Identifier: MIT
/*
 * umap's C API on liblazymap (lib/umap.c, <umap/umap.h>): the bytes a
 * umap region reads and writes back compared with the file, umap's flags
 * and errors, its configuration from the environment. Each test is a
 * process of its own (Criterion and the TSan shim fork per test): the
 * environment a test sets is read at its first umap call.
 */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/wait.h>

#include <umap/umap.h>

static void fx_teardown(void);
#define skip_cleanup() fx_teardown()

#include "common.h"

#define MiB (1ull << 20)

static struct {
	char dir[PATH_MAX / 2];
} fx;

static void fx_setup(void)
{
	scratch_setup(fx.dir, sizeof(fx.dir), "umap");
}

static void fx_teardown(void)
{
	scratch_drop(fx.dir);
}

#define FIXTURE .init = fx_setup, .fini = fx_teardown

/* A file of size bytes of key's pattern, open with flags; its bytes in *model. */
static int pattern_open(const char *name, uint64_t size, uint64_t key, int flags, uint8_t **model)
{
	char path[PATH_MAX];
	int fd;

	snprintf(path, sizeof(path), "%s/%s", fx.dir, name);
	fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	cr_assert_geq(fd, 0, "%s: %s", path, strerror(errno));
	cr_assert_eq(pattern_write(fd, key, 0, size), 0);
	close(fd);
	*model = malloc(size);
	cr_assert_not_null(*model);
	pattern_fill(*model, size, key, 0);
	fd = open(path, flags | O_CLOEXEC);
	cr_assert_geq(fd, 0, "%s: %s", path, strerror(errno));
	return fd;
}

/* umap needs a userfaultfd: skip where this process has none. */
static void *umap_or_skip(size_t len, int prot, int flags, int fd)
{
	void *p;

	require_uffd(UFFD_FEATURE_POISON);
	p = umap(NULL, len, prot, flags, fd, 0);
	cr_assert_neq(p, UMAP_FAILED, "umap: %s", strerror(errno));
	return p;
}

/* The file's bytes equal model's. */
static void expect_umap_file(int fd, const uint8_t *model, size_t size, const char *when)
{
	uint8_t *got = malloc(size);

	cr_assert_not_null(got);
	cr_assert_eq(pread(fd, got, size, 0), (ssize_t)size);
	for (size_t i = 0; i < size; i++)
		if (got[i] != model[i]) {
			free(got);
			cr_assert(false, "%s: the file's byte %zu differs", when, i);
		}
	free(got);
}

Test(umap, a_region_reads_the_file_and_writes_back_at_umap_flush, FIXTURE, .timeout = 60)
{
	size_t size = 8 * MiB, ps = pgsz();
	uint8_t *model;
	int fd = pattern_open("data", size, 1, O_RDWR, &model);
	uint8_t *p = umap_or_skip(size, PROT_READ | PROT_WRITE, UMAP_PRIVATE, fd);

	cr_assert_eq(memcmp(p, model, size), 0, "the region's bytes differ from the file's");
	for (size_t i = 0; i < size; i += 3 * ps)
		p[i + 7] = model[i + 7] ^= 0xa5;
	cr_assert_eq(umap_flush(), 0, "umap_flush: %s", strerror(errno));
	expect_umap_file(fd, model, size, "after umap_flush");
	cr_assert_eq(memcmp(p, model, size), 0, "the region after the flush");
	cr_assert_eq(uunmap(p, size), 0, "uunmap: %s", strerror(errno));
	close(fd);
	free(model);
}

/* uunmap writes back, and looks only at the address, as umap does. */
Test(umap, uunmap_writes_back_the_whole_region_named_by_its_start, FIXTURE, .timeout = 60)
{
	size_t size = 4 * MiB, ps = pgsz();
	uint8_t *model;
	int fd = pattern_open("data", size, 2, O_RDWR, &model);
	uint8_t *p = umap_or_skip(size, PROT_READ | PROT_WRITE, UMAP_PRIVATE, fd);

	for (size_t i = 0; i < size; i += 5 * ps)
		p[i] = model[i] ^= 0x3c;
	cr_assert_eq(uunmap(p, 1), 0, "uunmap: %s", strerror(errno));
	expect_umap_file(fd, model, size, "after uunmap");
	cr_assert_eq(uunmap(p, size), -1, "a second uunmap of the same region");
	cr_assert_eq(errno, EINVAL);
	close(fd);
	free(model);
}

/* A file open read-only is a read-only view; writes to it are refused. */
Test(umap, a_read_only_file_gives_a_read_only_view, FIXTURE, .timeout = 60)
{
	size_t size = 2 * MiB;
	uint8_t *model;
	int fd = pattern_open("data", size, 3, O_RDONLY, &model);
	uint8_t *p;

	require_uffd(UFFD_FEATURE_POISON);
	cr_assert_eq(umap(NULL, size, PROT_READ | PROT_WRITE, UMAP_PRIVATE, fd, 0), UMAP_FAILED);
	cr_assert_eq(errno, EACCES, "PROT_WRITE on a read-only file: %s", strerror(errno));
	p = umap_or_skip(size, PROT_READ, UMAP_PRIVATE, fd);
	cr_assert_eq(memcmp(p, model, size), 0);
	cr_assert_eq(umap_flush(), 0);
	cr_assert_eq(uunmap(p, size), 0);
	close(fd);
	free(model);
}

/* What umap refuses (with an exception there): UMAP_FAILED and errno here. */
Test(umap, bad_flags_prot_length_and_fd_fail_with_errno, FIXTURE, .timeout = 60)
{
	size_t size = 1 * MiB, ups;
	uint8_t *model;
	int fd = pattern_open("data", size, 4, O_RDWR, &model);
	static const struct {
		int prot, flags;
		size_t len;
		const char *what;
	} bad[] = {
		{ PROT_READ, 0, 1 << 20, "flags without UMAP_PRIVATE" },
		{ PROT_READ, MAP_SHARED, 1 << 20, "MAP_SHARED" },
		{ PROT_READ, UMAP_PRIVATE | MAP_ANONYMOUS, 1 << 20, "MAP_ANONYMOUS" },
		{ PROT_READ | PROT_EXEC, UMAP_PRIVATE, 1 << 20, "PROT_EXEC" },
		{ PROT_READ, UMAP_PRIVATE, 0, "length 0" },
	};

	require_uffd(UFFD_FEATURE_POISON);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		errno = 0;
		cr_expect_eq(umap(NULL, bad[i].len, bad[i].prot, bad[i].flags, fd, 0), UMAP_FAILED,
			     "%s", bad[i].what);
		cr_expect_eq(errno, EINVAL, "%s: %s", bad[i].what, strerror(errno));
	}
	ups = umapcfg_get_umap_page_size();
	cr_assert_eq(umap((void *)(uintptr_t)(0x500000000000ull + ups / 2), size, PROT_READ,
			  UMAP_PRIVATE | UMAP_FIXED, fd, 0), UMAP_FAILED);
	cr_assert_eq(errno, EINVAL, "UMAP_FIXED unaligned: %s", strerror(errno));
	cr_assert_eq(umap(NULL, size, PROT_READ, UMAP_PRIVATE, -1, 0), UMAP_FAILED);
	cr_assert_eq(errno, EBADF);
	cr_assert_eq(umap(NULL, size, PROT_READ, UMAP_PRIVATE, fd, 100), UMAP_FAILED);
	cr_assert_eq(errno, EINVAL, "an unaligned offset: %s", strerror(errno));
	cr_assert_eq(uunmap((void *)(uintptr_t)0x500000000000ull, size), -1);
	cr_assert_eq(errno, EINVAL, "uunmap of no region: %s", strerror(errno));
	cr_assert_eq(umap_has_write_support(), 1);
	close(fd);
	free(model);
}

/* UMAP_FIXED puts the region where asked, over what the program mapped there. */
Test(umap, umap_fixed_places_the_region_where_asked, FIXTURE, .timeout = 60)
{
	size_t size = 2 * MiB;
	uint8_t *model, *p;
	int fd = pattern_open("data", size, 5, O_RDWR, &model);
	char *want = test_window(size);

	require_uffd(UFFD_FEATURE_POISON);
	p = umap(want, size, PROT_READ, UMAP_PRIVATE | UMAP_FIXED, fd, 0);
	cr_assert_eq((char *)p, want, "UMAP_FIXED at %p gave %p (%s)", (void *)want, (void *)p,
		     p == UMAP_FAILED ? strerror(errno) : "");
	cr_assert_eq(memcmp(p, model, size), 0);
	/* never over another region of ours */
	cr_assert_eq(umap(want, size, PROT_READ, UMAP_PRIVATE | UMAP_FIXED, fd, 0), UMAP_FAILED);
	cr_assert_eq(errno, EEXIST, "UMAP_FIXED over a region: %s", strerror(errno));
	cr_assert_eq(uunmap(p, size), 0);
	close(fd);
	free(model);
}

/* umap's variables, read at the first call, as the getters report them. */
Test(umap, the_environment_sets_the_configuration, FIXTURE, .timeout = 60)
{
	setenv("UMAP_PAGESIZE", "65536", 1);
	setenv("UMAP_PAGE_FILLERS", "3", 1);
	setenv("UMAP_PAGE_EVICTORS", "2", 1);
	setenv("UMAP_BUFSIZE", "256", 1);
	setenv("UMAP_READ_AHEAD", "4", 1);
	setenv("UMAP_MAX_FAULT_EVENTS", "32", 1);
	setenv("UMAP_EVICT_HIGH_WATER_THRESHOLD", "80", 1);
	setenv("UMAP_EVICT_LOW_WATER_THRESHOLD", "60", 1);
	require_uffd(UFFD_FEATURE_POISON);
	cr_assert_eq(umapcfg_get_umap_page_size(), 65536);
	cr_assert_eq(umapcfg_get_num_fillers(), 3);
	cr_assert_eq(umapcfg_get_num_evictors(), 2);
	cr_assert_eq(umapcfg_get_max_pages_in_buffer(), 256);
	cr_assert_eq(umapcfg_get_read_ahead(), 4);
	cr_assert_eq(umapcfg_get_max_fault_events(), 32);
	cr_assert_eq(umapcfg_get_evict_high_water_threshold(), 80);
	cr_assert_eq(umapcfg_get_evict_low_water_threshold(), 60);

	/* and the region follows the umap page size: its length rounds up to it */
	size_t size = 3 * pgsz();
	uint8_t *model;
	int fd = pattern_open("data", 65536, 6, O_RDWR, &model);
	uint8_t *p = umap_or_skip(size, PROT_READ, UMAP_PRIVATE, fd);

	cr_assert_eq((uintptr_t)p % 4096, 0);
	cr_assert_eq(memcmp(p, model, 65536), 0, "the whole umap page is mapped");
	cr_assert_eq(uunmap(p, size), 0);
	close(fd);
	free(model);
}

/* As umap: 0 or text that is no number means the default. */
Test(umap, zero_or_garbage_in_the_environment_means_the_default, FIXTURE, .timeout = 60)
{
	setenv("UMAP_PAGESIZE", "0", 1);
	setenv("UMAP_MAX_FAULT_EVENTS", "lots", 1);
	require_uffd(UFFD_FEATURE_POISON);
	cr_assert_eq(umapcfg_get_umap_page_size(), (uint64_t)pgsz());
	cr_assert_eq(umapcfg_get_max_fault_events(), 256);
	cr_assert_eq(umapcfg_get_evict_high_water_threshold(), 90);
	cr_assert_eq(umapcfg_get_evict_low_water_threshold(), 70);
	cr_assert_gt(umapcfg_get_max_pages_in_buffer(), 0);
}

/* What umap refuses at its first call (an exception there): EINVAL at every call. */
Test(umap, a_page_size_umap_refuses_fails_every_call_with_einval, FIXTURE, .timeout = 60)
{
	uint8_t *model;
	int fd = pattern_open("data", 1 * MiB, 7, O_RDWR, &model);

	setenv("UMAP_PAGESIZE", "1000", 1);
	cr_assert_eq(umap(NULL, 1 * MiB, PROT_READ, UMAP_PRIVATE, fd, 0), UMAP_FAILED);
	cr_assert_eq(errno, EINVAL);
	cr_assert_eq(umap_flush(), -1);
	cr_assert_eq(errno, EINVAL);
	close(fd);
	free(model);
}

/* A number written negative is a mistake umap would read as 2^64 - n. */
Test(umap, a_negative_number_in_the_environment_fails_every_call_with_einval, FIXTURE,
     .timeout = 60)
{
	uint8_t *model;
	int fd = pattern_open("data", 1 * MiB, 7, O_RDWR, &model);

	setenv("UMAP_READ_AHEAD", "-1", 1);
	cr_assert_eq(umap(NULL, 1 * MiB, PROT_READ, UMAP_PRIVATE, fd, 0), UMAP_FAILED);
	cr_assert_eq(errno, EINVAL);
	close(fd);
	free(model);
}

/* Wait until every page of [p, p + len) is in (reads that no thread waits
 * for land a little after the touch): false after 2 s. */
static bool wait_in(const uint8_t *p, size_t len)
{
	size_t n = len / pgsz(), in = 0;
	unsigned char *vec = malloc(n);

	cr_assert_not_null(vec);
	for (int tries = 0; tries < 2000 && in < n; tries++) {
		if (tries)
			usleep(1000);
		cr_assert_eq(mincore((void *)p, len, vec), 0);
		in = 0;
		for (size_t i = 0; i < n; i++)
			in += vec[i] & 1;
	}
	free(vec);
	return in == n;
}

/*
 * The umap page is the unit of a fill: one touch reads the whole umap page
 * that holds it (a region of its own page size too, and one adapted after
 * the fact), and umap_prefetch reads whole umap pages.
 */
Test(umap, a_fault_reads_the_whole_umap_page_that_holds_it, FIXTURE, .timeout = 60)
{
	size_t ps = pgsz(), size = 4 * MiB, up = 64 * 1024;
	unsigned char vec[4 * MiB / 4096];
	uint8_t *model;
	int fd;
	uint8_t *p, *q;

	setenv("UMAP_PAGESIZE", "65536", 1);
	fd = pattern_open("data", size, 12, O_RDONLY, &model);
	p = umap_or_skip(size, PROT_READ, UMAP_PRIVATE, fd);
	cr_assert_eq(umapcfg_get_system_page_size(), (long)ps);
	cr_assert_eq((uintptr_t)p % up, 0, "%p: not placed on a umap page", (void *)p);
	cr_assert_eq(p[3 * up + 5 * ps + 1], model[3 * up + 5 * ps + 1]);
	cr_assert(wait_in(p + 3 * up, up), "the umap page touched is not all in");
	/* (read-around may bring a block about it too; never the region's start) */
	cr_assert_eq(mincore(p, up, vec), 0);
	for (size_t i = 0; i < up / ps; i++)
		cr_assert_eq(vec[i] & 1, 0, "page %zu in, far from the touch", i);
	/* umap_prefetch: the umap page of each address given */
	struct umap_prefetch_item items[] = { { p + 10 * up + ps } };

	umap_prefetch(1, items);
	cr_assert(wait_in(p + 10 * up, up), "umap_prefetch: the umap page is not all in");
	/* a region of its own page size, and one adapted */
	q = umap_variable(NULL, size, PROT_READ, UMAP_PRIVATE, fd, 0, 4 * up);
	cr_assert_neq(q, UMAP_FAILED, "umap_variable: %s", strerror(errno));
	cr_assert_eq((uintptr_t)q % (4 * up), 0, "%p: not placed on its page", (void *)q);
	cr_assert_eq(q[9 * up], model[9 * up]);
	/* (its block holds pages already in, read for p: the holes about them too) */
	cr_assert(wait_in(q + 8 * up, 4 * up), "umap_variable: its page is not all in");
	errno = 0;
	umap_adapt_pagesize(q, 3 * up + 1);
	cr_assert_eq(errno, EINVAL, "a page size that is no multiple of the umap page's");
	errno = 0;
	umap_adapt_pagesize(q + up, 2 * up);
	cr_assert_eq(errno, EINVAL, "an address that starts no region");
	errno = 0;
	umap_adapt_pagesize(q, 8 * up);
	cr_assert_eq(errno, 0, "umap_adapt_pagesize: %s", strerror(errno));
	cr_assert_eq(q[40 * up], model[40 * up]);
	cr_assert(wait_in(q + 40 * up, 8 * up), "adapted: the umap page is not all in");
	cr_assert_eq(memcmp(q, model, size), 0);
	cr_assert_eq(umap_variable(NULL, size, PROT_READ, UMAP_PRIVATE, fd, 0, up + ps), UMAP_FAILED);
	cr_assert_eq(errno, EINVAL);
	cr_assert_eq(uunmap(q, size), 0);
	cr_assert_eq(uunmap(p, size), 0);
	close(fd);
	free(model);
}

/*
 * fork(): the child's copy of a region of a file open for writing is the
 * parent's (shared, as MAP_SHARED is: what the child writes the parent
 * sees and writes back); the child's own umap calls work on a lazymap of
 * its own, and its uunmap of the copy unmaps that copy only.
 */
Test(umap, a_forked_child_shares_its_parents_regions_and_maps_its_own, FIXTURE, .timeout = 60)
{
	size_t size = 1 * MiB;
	uint8_t *model, *cmodel, *p;
	int fd = pattern_open("data", size, 13, O_RDWR, &model);
	int cfd = pattern_open("child", size, 14, O_RDWR, &cmodel);
	int status;
	pid_t pid;

	p = umap_or_skip(size, PROT_READ | PROT_WRITE, UMAP_PRIVATE, fd);
	p[0] = model[0] ^= 0x5a; /* before the fork */
	pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		int bad = 0;
		uint8_t *c;

		bad |= p[0] != model[0];
		bad |= memcmp(p + 4096, model + 4096, size - 4096) != 0;
		p[size / 2] = (uint8_t)(model[size / 2] ^ 0xa5);
#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
		/* ThreadSanitizer cannot run threads started after a fork (a
		 * lazymap's handlers), and GCC 12's AddressSanitizer allocator
		 * has no fork handler: a lock a parent's thread held at the fork
		 * stays held in the child, whose new threads hang on it (1 run in
		 * 20-30). The child's own lazymap goes untested there. */
		_exit(bad ? 2 : 0);
#endif
		c = umap(NULL, size, PROT_READ | PROT_WRITE, UMAP_PRIVATE, cfd, 0);
		if (c == UMAP_FAILED)
			_exit(3);
		bad |= memcmp(c, cmodel, size) != 0;
		c[7] = (uint8_t)(cmodel[7] ^ 0x11);
		/* the parent's file again, in a region of the child's own: a
		 * page cache of the child's (the parent's may have been locked at
		 * the fork), read from the file, without the unflushed writes */
		uint8_t *again = umap(NULL, size, PROT_READ, UMAP_PRIVATE, fd, 0);

		if (again == UMAP_FAILED)
			_exit(5);
		bad |= memcmp(again + 4096, model + 4096, size / 2 - 4096) != 0;
		if (uunmap(again, size))
			_exit(6);
		if (umap_flush() || uunmap(c, size) || uunmap(p, size))
			_exit(4);
		_exit(bad ? 2 : 0);
	}
	cr_assert_eq(waitpid(pid, &status, 0), pid);
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the child: status %#x", status);
	model[size / 2] ^= 0xa5;
#if !defined(__SANITIZE_THREAD__) && !defined(__SANITIZE_ADDRESS__)
	cmodel[7] ^= 0x11;
#endif
	cr_assert_eq(p[size / 2], model[size / 2], "the child's write, seen by the parent");
	cr_assert_eq(uunmap(p, size), 0);
	expect_umap_file(fd, model, size, "the parent's file after the child's write");
	expect_umap_file(cfd, cmodel, size, "the child's own region, flushed by it");
	close(fd);
	close(cfd);
	free(model);
	free(cmodel);
}

/*
 * umap's multithread_flush, in our words: each thread its own file and
 * region, writes, and umap_flush from all of them at once; every file
 * then holds what its thread wrote.
 */
#define FLUSH_THREADS 4

struct flusher {
	pthread_t th;
	uint8_t *p, *model;
	size_t size;
	int fd, ret;
};

static void *flusher_main(void *arg)
{
	struct flusher *f = arg;

	for (size_t i = f->size / 2; i < f->size; i += 512)
		f->p[i] = f->model[i] ^= 0x77;
	f->ret = umap_flush();
	return NULL;
}

Test(umap, threads_writing_their_regions_and_flushing_at_once_persist_them, FIXTURE,
     .timeout = 60)
{
	struct flusher f[FLUSH_THREADS];

	require_uffd(UFFD_FEATURE_POISON);
	for (int i = 0; i < FLUSH_THREADS; i++) {
		char name[16];

		snprintf(name, sizeof(name), "data%d", i);
		f[i].size = 2 * MiB;
		f[i].fd = pattern_open(name, f[i].size, 10 + (uint64_t)i, O_RDWR, &f[i].model);
		f[i].p = umap_or_skip(f[i].size, PROT_READ | PROT_WRITE, UMAP_PRIVATE, f[i].fd);
	}
	for (int i = 0; i < FLUSH_THREADS; i++)
		cr_assert_eq(pthread_create(&f[i].th, NULL, flusher_main, &f[i]), 0);
	for (int i = 0; i < FLUSH_THREADS; i++) {
		pthread_join(f[i].th, NULL);
		cr_assert_eq(f[i].ret, 0, "thread %d: umap_flush failed", i);
	}
	for (int i = 0; i < FLUSH_THREADS; i++) {
		expect_umap_file(f[i].fd, f[i].model, f[i].size, "a thread's file after the flushes");
		cr_assert_eq(uunmap(f[i].p, f[i].size), 0);
		close(f[i].fd);
		free(f[i].model);
	}
}

/* umapsort's shape: a sort through a buffer smaller than the data, every
 * value in place in the file afterwards. */
static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

Test(umap, a_sort_through_a_buffer_smaller_than_the_data, FIXTURE, .timeout = 120)
{
	size_t size = 16 * MiB, n = size / sizeof(uint64_t);
	uint8_t *model;
	int fd;
	uint64_t *v;

	setenv("UMAP_BUFSIZE", "1024", 1); /* 4 MiB of 4 KiB pages */
	fd = pattern_open("data", size, 20, O_RDWR, &model);
	v = umap_or_skip(size, PROT_READ | PROT_WRITE, UMAP_PRIVATE, fd);
	for (size_t i = 0; i < n; i++)
		v[i] = n - i;
	qsort(v, n, sizeof(*v), cmp_u64);
	for (size_t i = 0; i < n; i++)
		cr_assert_eq(v[i], i + 1, "v[%zu] = %llu after the sort", i, (unsigned long long)v[i]);
	cr_assert_eq(uunmap(v, size), 0);
	for (size_t i = 0; i < n; i++)
		((uint64_t *)model)[i] = i + 1;
	expect_umap_file(fd, model, size, "the sorted file");
	close(fd);
	free(model);
}

/*
 * umap's pfbenchmark shape: threads touch one word per page, in order or
 * shuffled; read checks the word, write sets it, read-modify-write adds to
 * it; what the file holds after a flush is checked too.
 */
enum pf_mode { PF_READ, PF_WRITE, PF_RMW };

struct pf_thread {
	pthread_t th;
	uint64_t *v;
	const size_t *order;
	size_t from, to, stride; /* words per page */
	enum pf_mode mode;
	size_t bad;
};

static void *pf_main(void *arg)
{
	struct pf_thread *t = arg;

	for (size_t k = t->from; k < t->to; k++) {
		size_t i = t->order[k] * t->stride;

		if (t->mode == PF_READ)
			t->bad += t->v[i] != i;
		else if (t->mode == PF_WRITE)
			t->v[i] = 3 * i;
		else
			t->v[i] += 7;
	}
	return NULL;
}

static void pf_run(bool shuffled)
{
	size_t size = 8 * MiB, ps = pgsz(), npages = size / ps, stride = ps / sizeof(uint64_t);
	size_t *order = malloc(npages * sizeof(*order));
	uint64_t *words = malloc(size), seed = test_seed();
	uint8_t *model;
	int fd;
	uint64_t *v;

	cr_assert(order && words);
	for (size_t i = 0; i < size / sizeof(uint64_t); i++)
		words[i] = i;
	fd = pattern_open("data", size, 30, O_RDWR, &model);
	cr_assert_eq(pwrite(fd, words, size, 0), (ssize_t)size);
	for (size_t i = 0; i < npages; i++)
		order[i] = i;
	for (size_t i = npages - 1; shuffled && i > 0; i--) {
		size_t j = rng_next(&seed) % (i + 1), t = order[i];

		order[i] = order[j];
		order[j] = t;
	}
	for (int mode = PF_READ; mode <= PF_RMW; mode++) {
		struct pf_thread th[2];

		/* a fresh region for each mode, as pfbenchmark runs one mode a process */
		v = umap_or_skip(size, PROT_READ | PROT_WRITE, UMAP_PRIVATE, fd);
		for (int t = 0; t < 2; t++) {
			th[t] = (struct pf_thread){ .v = v, .order = order, .stride = stride,
						   .from = t * npages / 2, .to = (t + 1) * npages / 2,
						   .mode = (enum pf_mode)mode };
			cr_assert_eq(pthread_create(&th[t].th, NULL, pf_main, &th[t]), 0);
		}
		for (int t = 0; t < 2; t++) {
			pthread_join(th[t].th, NULL);
			cr_assert_eq(th[t].bad, 0, "mode %d: %zu words read wrong", mode, th[t].bad);
		}
		cr_assert_eq(umap_flush(), 0);
		for (size_t p = 0; p < npages; p++)
			if (mode == PF_WRITE)
				words[p * stride] = 3 * p * stride;
			else if (mode == PF_RMW)
				words[p * stride] += 7;
		expect_umap_file(fd, (const uint8_t *)words, size, "after a mode's flush");
		cr_assert_eq(uunmap(v, size), 0);
	}
	close(fd);
	free(model);
	free(words);
	free(order);
}

Test(umap, page_faults_read_write_and_read_modify_write_in_order, FIXTURE, .timeout = 60)
{
	pf_run(false);
}

Test(umap, page_faults_read_write_and_read_modify_write_shuffled, FIXTURE, .timeout = 60)
{
	pf_run(true);
}

/* umap's stream example: one process writes its arrays through umap and
 * ends; the next one reads them back through umap. */
Test(umap, what_one_process_wrote_the_next_one_reads, FIXTURE, .timeout = 60)
{
	size_t size = 4 * MiB, n = size / sizeof(double);
	uint8_t *model;
	int fd = pattern_open("stream_a", size, 40, O_RDWR, &model), st;
	pid_t pid;
	double *a;

	require_uffd(UFFD_FEATURE_POISON);
	pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		/* the first run: its own umap state, from its first call */
		a = umap(NULL, size, PROT_READ | PROT_WRITE, UMAP_PRIVATE, fd, 0);
		if (a == UMAP_FAILED)
			_exit(2);
		for (size_t i = 0; i < n; i++)
			a[i] = 1.0 + (double)i;
		_exit(uunmap(a, size) ? 3 : 0);
	}
	cr_assert_eq(waitpid(pid, &st, 0), pid);
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the writing process: status %#x", st);
	a = umap_or_skip(size, PROT_READ, UMAP_PRIVATE, fd);
	for (size_t i = 0; i < n; i++)
		cr_assert_eq(a[i], 1.0 + (double)i, "a[%zu] = %g", i, a[i]);
	cr_assert_eq(uunmap(a, size), 0);
	close(fd);
	free(model);
}

/* umap_fetch_and_pin reads within the region only: a size past its end is
 * cut there (it faulted past the end: SIGSEGV), an address of no region
 * does nothing. */
Test(umap, fetch_and_pin_stops_at_the_end_of_its_region, FIXTURE, .timeout = 60)
{
	size_t size = 1 * MiB;
	uint8_t *model;
	int fd = pattern_open("data", size, 50, O_RDWR, &model);
	uint8_t *p = umap_or_skip(size, PROT_READ | PROT_WRITE, UMAP_PRIVATE, fd);
	static char not_ours[64];

	umap_fetch_and_pin((char *)p + size - 10, 1ull << 30);
	umap_fetch_and_pin((char *)p, size);
	umap_fetch_and_pin(not_ours, sizeof(not_ours));
	cr_assert_eq(memcmp(p, model, size), 0);
	cr_assert_eq(uunmap(p, size), 0);
	close(fd);
	free(model);
}

/*
 * Churn: umap, read and write, umap_flush or uunmap, 200 times over, from
 * two threads at once over the same three files, under a budget half a
 * file's size: each cycle reads a whole file in (a read every 64 KiB, the
 * fault-around block), so the evictor writes back and drops pages while
 * regions of the same files come and go. Each thread writes only its own
 * pages (page index parity), so one model per file is exact while both
 * run. Each cycle checks, with pread, that what it wrote is in the file
 * after its umap_flush or uunmap; at the end every file equals its model,
 * and the process holds as many descriptors as after the first cycle (the
 * library's reference to each file and whatever it opened for a region are
 * closed with the region; the lazymap itself opened at the first call).
 */
#define CHURN_FILES  3
#define CHURN_CYCLES 200
#define CHURN_SIZE   (8 * MiB)
#define CHURN_WRITES 32

struct churn_file {
	char path[PATH_MAX];
	uint8_t *model;
};

struct churner {
	pthread_t th;
	struct churn_file *files;
	int id, cycles;
	uint64_t seed;
	char err[256]; /* the first failure, "" if none */
};

#define churn_fail(c, ...) (snprintf((c)->err, sizeof((c)->err), __VA_ARGS__), -1)

/* One cycle on file (cycle + id) % CHURN_FILES: 0, or -1 with c->err. */
static int churn_cycle(struct churner *c, int cycle)
{
	struct churn_file *f = &c->files[(cycle + c->id) % CHURN_FILES];
	size_t ps = pgsz(), npages = CHURN_SIZE / ps, wrote[CHURN_WRITES];
	uint8_t buf[4096 + 8];
	uint8_t *p;
	int fd = open(f->path, O_RDWR | O_CLOEXEC);

	if (fd < 0)
		return churn_fail(c, "cycle %d: open: %s", cycle, strerror(errno));
	p = umap(NULL, CHURN_SIZE, PROT_READ | PROT_WRITE, UMAP_PRIVATE, fd, 0);
	if (p == UMAP_FAILED) {
		close(fd);
		return churn_fail(c, "cycle %d: umap: %s", cycle, strerror(errno));
	}
	/* the library keeps its own reference: close ours at once, sometimes */
	if (cycle % 3 == 0) {
		close(fd);
		fd = -1;
	}
	/* read the whole file in, checking this thread's pages (the other
	 * thread's may be changing under us) */
	for (size_t pg = (size_t)c->id; pg < npages; pg += 2)
		if (pg % 16 < 2 && memcmp(p + pg * ps, f->model + pg * ps, ps))
			return churn_fail(c, "cycle %d: page %zu reads wrong", cycle, pg);
	/* write 8 bytes into some of this thread's pages */
	for (int w = 0; w < CHURN_WRITES; w++) {
		size_t pg = (rng_next(&c->seed) % (npages / 2)) * 2 + (size_t)c->id;
		size_t off = pg * ps + (rng_next(&c->seed) % (ps / 8)) * 8;
		uint64_t x = rng_next(&c->seed);

		for (int b = 0; b < 8; b++)
			p[off + b] = f->model[off + b] ^= (uint8_t)(x >> (8 * b));
		wrote[w] = pg;
	}
	if (cycle % 2 && umap_flush())
		return churn_fail(c, "cycle %d: umap_flush: %s", cycle, strerror(errno));
	if (uunmap(p, CHURN_SIZE))
		return churn_fail(c, "cycle %d: uunmap: %s", cycle, strerror(errno));
	if (fd >= 0)
		close(fd);
	/* what this cycle wrote is in the file now */
	fd = open(f->path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return churn_fail(c, "cycle %d: open: %s", cycle, strerror(errno));
	for (int w = 0; w < CHURN_WRITES; w++)
		if (pread(fd, buf, ps, (off_t)(wrote[w] * ps)) != (ssize_t)ps ||
		    memcmp(buf, f->model + wrote[w] * ps, ps)) {
			close(fd);
			return churn_fail(c, "cycle %d: page %zu of the file is not what was "
					  "written (after %s)", cycle, wrote[w],
					  cycle % 2 ? "umap_flush and uunmap" : "uunmap");
		}
	close(fd);
	return 0;
}

static void *churner_main(void *arg)
{
	struct churner *c = arg;

	for (int i = 1; i < c->cycles && !c->err[0]; i++)
		churn_cycle(c, i);
	return NULL;
}

Test(umap, two_threads_mapping_writing_and_unmapping_files_leave_them_right_and_no_descriptors,
     FIXTURE, .timeout = 120)
{
	struct churn_file files[CHURN_FILES];
	struct churner c[2];
	int fds_after_first;

	setenv("UMAP_BUFSIZE", "1024", 1); /* 4 MiB of 4 KiB pages: half a file */
	require_uffd(UFFD_FEATURE_POISON);
	for (int f = 0; f < CHURN_FILES; f++) {
		char name[16];
		int fd;

		snprintf(name, sizeof(name), "churn%d", f);
		fd = pattern_open(name, CHURN_SIZE, 70 + (uint64_t)f, O_RDONLY, &files[f].model);
		close(fd);
		snprintf(files[f].path, sizeof(files[f].path), "%s/%s", fx.dir, name);
	}
	for (int t = 0; t < 2; t++)
		c[t] = (struct churner){ .files = files, .id = t, .cycles = CHURN_CYCLES,
					 .seed = test_seed() + (uint64_t)t };
	/* the first cycle alone: the lazymap opens, and whatever it keeps */
	cr_assert_eq(churn_cycle(&c[0], 0), 0, "%s", c[0].err);
	fds_after_first = count_dir("/proc/self/fd");
	for (int t = 0; t < 2; t++)
		cr_assert_eq(pthread_create(&c[t].th, NULL, churner_main, &c[t]), 0);
	for (int t = 0; t < 2; t++) {
		pthread_join(c[t].th, NULL);
		cr_expect_eq(c[t].err[0], '\0', "thread %d: %s", t, c[t].err);
	}
	for (int f = 0; f < CHURN_FILES; f++) {
		int fd = open(files[f].path, O_RDONLY | O_CLOEXEC);

		cr_assert_geq(fd, 0);
		expect_umap_file(fd, files[f].model, CHURN_SIZE, files[f].path);
		close(fd);
		free(files[f].model);
	}
	cr_assert_eq(count_dir("/proc/self/fd"), fds_after_first,
		     "%d descriptors open after the churn, %d after its first cycle",
		     count_dir("/proc/self/fd"), fds_after_first);
}

/*
 * umap's umapsort over several files: one address window, each file
 * umapped with UMAP_FIXED right after the one before, so the regions are
 * one array; sorted in place through a budget a quarter of the data, then
 * written back. The files, read back in order, are the original values
 * sorted: the sorted model, byte for byte (sorted, and a permutation).
 */
#define SORT_FILES 4

Test(umap, a_sort_across_files_umapped_back_to_back_with_umap_fixed, FIXTURE, .timeout = 120)
{
	size_t fsize = 4 * MiB, total = SORT_FILES * fsize, n = total / sizeof(uint64_t);
	uint64_t *want = malloc(total), *got = malloc(total), *v;
	uint8_t *model;
	int fd[SORT_FILES];
	char *w;

	cr_assert(want && got);
	setenv("UMAP_BUFSIZE", "1024", 1); /* 4 MiB of 4 KiB pages: a quarter */
	for (int f = 0; f < SORT_FILES; f++) {
		char name[16];

		snprintf(name, sizeof(name), "sort%d", f);
		fd[f] = pattern_open(name, fsize, 80 + (uint64_t)f, O_RDWR, &model);
		memcpy((char *)want + f * fsize, model, fsize);
		free(model);
	}
	require_uffd(UFFD_FEATURE_POISON);
	w = test_window(total);
	for (int f = 0; f < SORT_FILES; f++) {
		char *at = w + f * fsize, *p;

		p = umap(at, fsize, PROT_READ | PROT_WRITE, UMAP_PRIVATE | UMAP_FIXED, fd[f], 0);
		cr_assert_eq(p, at, "file %d: UMAP_FIXED at %p gave %p (%s)", f, (void *)at,
			     (void *)p, p == UMAP_FAILED ? strerror(errno) : "");
	}
	v = (uint64_t *)w;
	cr_assert_eq(memcmp(v, want, total), 0, "the array is not the files one after another");
	qsort(v, n, sizeof(*v), cmp_u64);
	qsort(want, n, sizeof(*want), cmp_u64);
	cr_assert_eq(umap_flush(), 0, "umap_flush: %s", strerror(errno));
	for (int f = 0; f < SORT_FILES; f++)
		cr_assert_eq(uunmap(w + f * fsize, fsize), 0, "uunmap %d: %s", f, strerror(errno));
	munmap(w, total);
	for (int f = 0; f < SORT_FILES; f++) {
		cr_assert_eq(pread(fd[f], (char *)got + f * fsize, fsize, 0), (ssize_t)fsize);
		close(fd[f]);
	}
	for (size_t i = 1; i < n; i++)
		cr_assert_leq(got[i - 1], got[i], "the files are not sorted at value %zu", i);
	for (size_t i = 0; i < n; i++)
		cr_assert_eq(got[i], want[i], "value %zu: the files are not the original values "
			     "sorted", i);
	free(want);
	free(got);
}
