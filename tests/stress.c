// SPDX-License-Identifier: MIT
/*
 * Everything at once: threads fault on zero, fill and file regions while others
 * map, protect and unmap their own regions, prefetch, read stats and dump the
 * tree; every byte read is checked, and the lazymap is closed while threads
 * still fault. Plain C, one process: the shape ThreadSanitizer sees best.
 * Prints "N passed, N failed"; what cannot run here prints "[SKIP] name:
 * reason", and without userfaultfd at all it exits 77, meson's skip.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <fcntl.h>
#include <sys/mman.h>

#include "common.h"

static int passed, failed;

#define CHECK(cond, ...)                                                       \
	do {                                                                   \
		if (cond) {                                                    \
			passed++;                                              \
		} else {                                                       \
			failed++;                                              \
			fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);   \
			fprintf(stderr, __VA_ARGS__);                          \
			fputc('\n', stderr);                                   \
		}                                                              \
	} while (0)

static size_t ps;
static struct lazymap *lm;
static char *zero_region, *fill_region, *file_region;
static size_t zero_pages, fill_pages, file_pages;
static int file_fd = -1;
static atomic_bool stop;
static atomic_size_t bad, touched, closers_going;

static uint64_t word(uint64_t off)
{
	return off * 0x9E3779B97F4A7C15ULL + 1;
}

static int fill_words(void *page, size_t len, uint64_t offset, void *arg)
{
	uint64_t *w = page;

	(void)arg;
	for (size_t i = 0; i < len / 8; i++)
		w[i] = word(offset + i * 8);
	return 0;
}

static void *toucher(void *arg)
{
	uint64_t s = (uintptr_t)arg * 7919 + 1;

	for (int i = 0; i < 20000; i++) {
		size_t pg = rng_next(&s) % fill_pages;
		uint64_t *w = (uint64_t *)(fill_region + pg * ps);

		if (__atomic_load_n(&w[3], __ATOMIC_RELAXED) != word(pg * ps + 24))
			atomic_fetch_add(&bad, 1);
		pg = rng_next(&s) % zero_pages;
		char *z = zero_region + pg * ps;

		if (i % 2)
			__atomic_fetch_add(&z[(uintptr_t)arg % 64], 1, __ATOMIC_RELAXED);
		else if (__atomic_load_n(&z[100], __ATOMIC_RELAXED) != 0)
			atomic_fetch_add(&bad, 1);
		pg = rng_next(&s) % file_pages;
		w = (uint64_t *)(file_region + pg * ps);
		if (__atomic_load_n(&w[5], __ATOMIC_RELAXED) != word(pg * ps + 40))
			atomic_fetch_add(&bad, 1);
		atomic_fetch_add(&touched, 1);
	}
	return NULL;
}

/* Maps, protects, unmaps its own regions while the touchers fault. */
static void *mapper(void *arg)
{
	(void)arg;
	for (int i = 0; i < 300; i++) {
		char *p;
		int ret = lazymap_map(lm, (void **)&p, 16 * ps, PROT_READ | PROT_WRITE,
				      LAZYMAP_PRIVATE | LAZYMAP_ANON, -1, 0);

		if (ret) {
			atomic_fetch_add(&bad, 1);
			continue;
		}
		p[3 * ps] = 7;
		if (lazymap_protect(lm, p + 4 * ps, 4 * ps, PROT_READ) ||
		    p[5 * ps] != 0 || p[3 * ps] != 7 ||
		    lazymap_protect(lm, p + 4 * ps, 4 * ps, PROT_READ | PROT_WRITE) ||
		    lazymap_unmap(lm, p + 8 * ps, 8 * ps) || lazymap_unmap(lm, p, 8 * ps))
			atomic_fetch_add(&bad, 1);
	}
	return NULL;
}

/*
 * Maps the file afresh, scans part of it in order (a stream: its ahead
 * windows go to the other handlers) and unmaps it, often with reads still
 * in flight; buffered and direct in turn.
 */
static void *streamer(void *arg)
{
	uint64_t s = (uintptr_t)arg;

	for (unsigned round = 0; !atomic_load(&stop); round++) {
		size_t upto = file_pages / 4 + rng_next(&s) % (file_pages * 3 / 4);
		char *p;

		if (lazymap_map(lm, (void **)&p, file_pages * ps, PROT_READ,
				LAZYMAP_PRIVATE | (round % 2 ? LAZYMAP_DIRECT : 0), file_fd, 0)) {
			atomic_fetch_add(&bad, 1);
			return NULL;
		}
		for (size_t pg = 0; pg < upto; pg++) {
			const uint64_t *w = (const uint64_t *)(p + pg * ps);

			if (w[7] != word(pg * ps + 56))
				atomic_fetch_add(&bad, 1);
		}
		atomic_fetch_add(&touched, upto);
		if (lazymap_unmap(lm, p, file_pages * ps))
			atomic_fetch_add(&bad, 1);
	}
	return NULL;
}

/* Scans a file mapping in order until the lazymap is closed under it. */
static void *close_streamer(void *arg)
{
	char *p = arg;

	touch_install();
	for (size_t n = 0;; n++) {
		size_t pg = n % file_pages;

		if (touch(p + pg * ps, -1, NULL).signo || atomic_load(&stop))
			return NULL;
		if (n == 0)
			atomic_fetch_add(&closers_going, 1);
	}
}

static void *observer(void *arg)
{
	FILE *null = fopen("/dev/null", "w");

	(void)arg;
	while (!atomic_load(&stop)) {
		struct lazymap_stats st;

		if (lazymap_stats(lm, &st) || lazymap_dump(lm, null) < 2)
			atomic_fetch_add(&bad, 1);
		lazymap_prefetch(lm, fill_region + (st.faults % fill_pages) * ps, 64 * ps);
		usleep(100); /* a pace, not a wait: nothing is assumed done after it */
	}
	fclose(null);
	return NULL;
}

static void *looper(void *arg)
{
	uint64_t s = (uintptr_t)arg;

	touch_install();
	for (bool first = true;; first = false) {
		/* each looper its own pages: the bytes they write do not race */
		size_t pg = (rng_next(&s) % (zero_pages / 2)) * 2 + (uintptr_t)arg % 2;
		struct touch_fault f = touch(zero_region + pg * ps, 1, NULL);

		if (f.signo)
			return NULL; /* the region went away under us: expected */
		if (atomic_load(&stop))
			return NULL;
		if (first)
			atomic_fetch_add(&closers_going, 1);
	}
}

static void run(unsigned handlers, unsigned install)
{
	struct lazymap_opts o = { .handler_threads = handlers, .install = install };
	pthread_t t[6], m, obs, loop[2], stream[2], close_stream;
	struct lazymap_stats st;
	char *p;

	atomic_store(&stop, false);
	atomic_store(&bad, 0);
	atomic_store(&touched, 0);
	CHECK(lazymap_open(&lm, &o) == 0, "open");
	zero_pages = (64ul << 20) / ps;
	fill_pages = (64ul << 20) / ps;
	CHECK(lazymap_map(lm, (void **)&zero_region, zero_pages * ps, PROT_READ | PROT_WRITE,
			  LAZYMAP_PRIVATE | LAZYMAP_ANON, -1, 0) == 0, "map zero");
	CHECK(lazymap_map_fill(lm, (void **)&fill_region, fill_pages * ps, PROT_READ, fill_words,
			       NULL) == 0, "map fill");
	posix_fadvise(file_fd, 0, 0, POSIX_FADV_DONTNEED);
	CHECK(lazymap_map(lm, (void **)&file_region, file_pages * ps, PROT_READ,
			  LAZYMAP_PRIVATE | (handlers == 2 ? LAZYMAP_DIRECT : 0), file_fd, 0) == 0,
	      "map file");
	for (uintptr_t i = 0; i < 6; i++)
		pthread_create(&t[i], NULL, toucher, (void *)(i + 1));
	pthread_create(&m, NULL, mapper, NULL);
	pthread_create(&obs, NULL, observer, NULL);
	for (uintptr_t i = 0; i < 2; i++)
		pthread_create(&stream[i], NULL, streamer, (void *)(i + 21));
	for (int i = 0; i < 6; i++)
		pthread_join(t[i], NULL);
	pthread_join(m, NULL);
	atomic_store(&stop, true);
	pthread_join(obs, NULL);
	for (int i = 0; i < 2; i++)
		pthread_join(stream[i], NULL);
	CHECK(atomic_load(&bad) == 0, "%zu wrong reads or failed calls (handlers %u, install %u)",
	      atomic_load(&bad), handlers, install);
	CHECK(lazymap_stats(lm, &st) == 0 && st.faults > 0 && st.pages_filled > 0, "stats");
	CHECK(st.regions == 3, "%lu regions left, want 3", (unsigned long)st.regions);
	CHECK(st.bytes_read > 0, "no file reads");

	/* close while threads fault, one of them streaming through a file */
	atomic_store(&stop, false);
	atomic_store(&closers_going, 0);
	CHECK(lazymap_map(lm, (void **)&p, file_pages * ps, PROT_READ, LAZYMAP_PRIVATE, file_fd,
			  0) == 0, "map file for the close");
	for (uintptr_t i = 0; i < 2; i++)
		pthread_create(&loop[i], NULL, looper, (void *)(i + 11));
	pthread_create(&close_stream, NULL, close_streamer, p);
	/* Close once all three have been served: they are faulting now. */
	for (double t0 = now_s(); atomic_load(&closers_going) < 3 && now_s() - t0 < 30;)
		usleep(1000);
	CHECK(atomic_load(&closers_going) == 3, "only %zu of 3 threads served before the close",
	      atomic_load(&closers_going));
	CHECK(lazymap_close(lm) == 0, "close");
	atomic_store(&stop, true);
	for (int i = 0; i < 2; i++)
		pthread_join(loop[i], NULL);
	pthread_join(close_stream, NULL);
	printf("handlers=%u install=%s: %zu touches checked\n", handlers, install ? "move" : "copy",
	       atomic_load(&touched));
}

/* A file whose words are word(offset), on a disk file system (O_DIRECT). */
static int make_file(void)
{
	char path[] = "/var/tmp/lazymap-stress-XXXXXX";
	size_t chunk = 1 << 20;
	uint64_t *buf = malloc(chunk);
	int fd = mkstemp(path);

	if (fd < 0)
		return -1;
	unlink(path);
	file_pages = (32ul << 20) / ps;
	for (size_t off = 0; off < file_pages * ps; off += chunk) {
		fill_words(buf, chunk, off, NULL);
		if (pwrite(fd, buf, chunk, (off_t)off) != (ssize_t)chunk)
			return -1;
	}
	free(buf);
	fsync(fd);
	return fd;
}

int main(void)
{
	char why[256];
	int ret;

	ps = pgsz();
	ret = lazymap_open(&lm, NULL);
	if (ret == -EPERM || ret == -ENOSYS) {
		uffd_check(0, why, sizeof(why));
		printf("[SKIP] stress: lazymap_open: %s (%s)\n", strerror(-ret), why);
		return 77;
	}
	CHECK(ret == 0, "lazymap_open: %s", strerror(-ret));
	if (ret)
		return 1;
	lazymap_close(lm);
	file_fd = make_file();
	CHECK(file_fd >= 0, "cannot make the test file");
	if (file_fd < 0)
		return 1;
	run(1, LAZYMAP_INSTALL_COPY);
	run(2, LAZYMAP_INSTALL_COPY);
	ret = uffd_check(uffd_needs(&(struct lazymap_opts){ .install = LAZYMAP_INSTALL_MOVE }), why,
			 sizeof(why));
	if (ret == -EOPNOTSUPP)
		printf("[SKIP] stress::move: %s\n", why);
	else
		run(3, LAZYMAP_INSTALL_MOVE);
	printf("%d passed, %d failed\n", passed, failed);
	return failed ? 1 : 0;
}
