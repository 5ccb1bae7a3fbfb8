// SPDX-License-Identifier: MIT
/*
 * lazymap-demo: what liblazymap does, in a few seconds. Maps a large demand-
 * zero region, a fill-callback region and a file, has threads touch pages of
 * them, checks every byte they read, and prints what the handler threads
 * served next to the kernel's own mmap doing the same work.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "lazymap.h"

static size_t ps;

static uint64_t word_of(uint64_t offset)
{
	return offset * 0x9E3779B97F4A7C15ULL;
}

/* The fill callback: every 8-byte word holds a function of its offset. */
static int fill_words(void *page, size_t len, uint64_t offset, void *arg)
{
	uint64_t *w = page;

	(void)arg;
	for (size_t i = 0; i < len / 8; i++)
		w[i] = word_of(offset + i * 8);
	return 0;
}

struct worker {
	pthread_t thread;
	char *base;
	size_t npages, touches;
	uint64_t seed;
	int fill;          /* 1: expect fill_words data; 2: produce it (the kernel twin) */
	size_t bad;
};

static uint64_t rng(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	uint64_t s = w->seed;

	for (size_t i = 0; i < w->touches; i++) {
		size_t pg = rng(&s) % w->npages;
		uint64_t *p = (uint64_t *)(w->base + pg * ps);

		if (w->fill == 2 && p[0] == 0)
			fill_words(p, ps, pg * ps, NULL); /* the program fills it itself */
		if (w->fill ? p[1] != word_of(pg * ps + 8) : p[1] != 0)
			w->bad++;
	}
	return NULL;
}

static double run(char *base, size_t npages, unsigned nthreads, size_t touches, int fill,
		  size_t *bad)
{
	struct worker *w = calloc(nthreads, sizeof(*w));
	struct timespec a, b;

	clock_gettime(CLOCK_MONOTONIC, &a);
	for (unsigned i = 0; i < nthreads; i++) {
		w[i] = (struct worker){ .base = base, .npages = npages, .touches = touches,
					.seed = 0x9e3779b97f4a7c15ull * (i + 1), .fill = fill };
		pthread_create(&w[i].thread, NULL, worker_main, &w[i]);
	}
	for (unsigned i = 0; i < nthreads; i++) {
		pthread_join(w[i].thread, NULL);
		*bad += w[i].bad;
	}
	clock_gettime(CLOCK_MONOTONIC, &b);
	free(w);
	return (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) * 1e-9;
}

static char *kernel_region(size_t len)
{
	char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
		       -1, 0);

	if (p == MAP_FAILED) {
		perror("mmap");
		exit(1);
	}
	madvise(p, len, MADV_NOHUGEPAGE);
	return p;
}

/*
 * A file of size bytes whose words are word_of(offset), in a temporary
 * directory on a disk file system; unlinked at once (we keep the fd).
 */
static int make_file(size_t size)
{
	char path[] = "/var/tmp/lazymap-demo-XXXXXX";
	size_t chunk = 8u << 20;
	char *buf = malloc(chunk);
	int fd = mkstemp(path);

	if (fd < 0 || !buf) {
		perror("mkstemp");
		exit(1);
	}
	unlink(path);
	for (size_t off = 0; off < size; off += chunk) {
		size_t n = size - off < chunk ? size - off : chunk;

		fill_words(buf, n, off, NULL);
		if (pwrite(fd, buf, n, (off_t)off) != (ssize_t)n) {
			perror("pwrite");
			exit(1);
		}
	}
	free(buf);
	fsync(fd);
	return fd;
}

/* Scan every page of a file mapping in order with the page cache cold; seconds. */
static double scan_file(const char *base, size_t npages, int fd, size_t *bad)
{
	struct timespec a, b;

	posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
	clock_gettime(CLOCK_MONOTONIC, &a);
	for (size_t pg = 0; pg < npages; pg++)
		if (((const uint64_t *)(base + pg * ps))[3] != word_of(pg * ps + 24))
			(*bad)++;
	clock_gettime(CLOCK_MONOTONIC, &b);
	return (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) * 1e-9;
}

static void usage(const char *argv0)
{
	fprintf(stderr, "usage: %s [--size MiB (>= 4)] [--threads N] [--handlers N (default: one per CPU)]\n",
		argv0);
	exit(2);
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "size", required_argument, NULL, 's' },
		{ "threads", required_argument, NULL, 't' },
		{ "handlers", required_argument, NULL, 'H' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	size_t size_mib = 1024, bad = 0;
	unsigned nthreads = 4;
	/* One pinned handler per CPU: faults are served beside their thread. */
	struct lazymap_opts opts = { .handler_threads = LAZYMAP_HANDLERS_PER_CPU };
	struct lazymap_stats st;
	struct lazymap *lm;
	char *zero, *filled, *kz, *kf;
	int c, ret;

	while ((c = getopt_long(argc, argv, "s:t:H:h", longopts, NULL)) != -1) {
		switch (c) {
		case 's': size_mib = strtoul(optarg, NULL, 0); break;
		case 't': nthreads = (unsigned)strtoul(optarg, NULL, 0); break;
		case 'H': opts.handler_threads = (unsigned)strtoul(optarg, NULL, 0); break;
		default: usage(argv[0]);
		}
	}
	if (size_mib < 4 || !nthreads || nthreads > 64)
		usage(argv[0]);
	ps = (size_t)sysconf(_SC_PAGESIZE);

	ret = lazymap_open(&lm, &opts);
	if (ret) {
		fprintf(stderr, "lazymap_open: %s%s\n", strerror(-ret),
			ret == -EPERM ? " (run as root, or: sysctl vm.unprivileged_userfaultfd=1)" : "");
		return 1;
	}
	size_t zlen = size_mib << 20, flen = zlen / 4;
	size_t znp = zlen / ps, fnp = flen / ps;
	size_t touches = znp / 4 / nthreads; /* a quarter of the pages, more or less */

	ret = lazymap_map(lm, (void **)&zero, zlen, PROT_READ | PROT_WRITE,
			  LAZYMAP_PRIVATE | LAZYMAP_ANON, -1, 0);
	if (!ret)
		ret = lazymap_map_fill(lm, (void **)&filled, flen, PROT_READ, fill_words, NULL);
	if (ret) {
		fprintf(stderr, "lazymap_map: %s\n", strerror(-ret));
		return 1;
	}
	kz = kernel_region(zlen);
	kf = kernel_region(flen);

	printf("liblazymap demo: %u threads touch random pages of a %zu MiB demand-zero region\n"
	       "and a %zu MiB fill-callback region, then one scans a %zu MiB file; every page\n"
	       "arrives through userfaultfd.\n\n",
	       nthreads, size_mib, flen >> 20, (size_mib / 4));

	double tz = run(zero, znp, nthreads, touches, 0, &bad);
	double tkz = run(kz, znp, nthreads, touches, 0, &bad);
	double tf = run(filled, fnp, nthreads, touches / 4, 1, &bad);
	double tkf = run(kf, fnp, nthreads, touches / 4, 2, &bad);

	/* A file, read through io_uring by the handlers, against the kernel's mmap. */
	size_t flen_file = zlen / 4, fpages = flen_file / ps;
	int fd = make_file(flen_file);
	char *mapped, *kfile;

	ret = lazymap_map(lm, (void **)&mapped, flen_file, PROT_READ, LAZYMAP_PRIVATE, fd, 0);
	if (ret) {
		fprintf(stderr, "lazymap_map(file): %s\n", strerror(-ret));
		return 1;
	}
	kfile = mmap(NULL, flen_file, PROT_READ, MAP_PRIVATE, fd, 0);
	if (kfile == MAP_FAILED) {
		perror("mmap");
		return 1;
	}
	double tfile = scan_file(mapped, fpages, fd, &bad);
	double tkfile = scan_file(kfile, fpages, fd, &bad);

	lazymap_stats(lm, &st);
	size_t ztouch = touches * nthreads, ftouch = touches / 4 * nthreads;

	printf("  %-22s %9s %10s %12s %12s\n", "region", "touches", "time", "lazymap", "kernel mmap");
	printf("  %-22s %9zu %9.3fs %9.2f us %9.2f us  (per touch; %.1fx)\n", "demand-zero", ztouch,
	       tz, tz * 1e6 / (double)ztouch, tkz * 1e6 / (double)ztouch, tz / tkz);
	printf("  %-22s %9zu %9.3fs %9.2f us %9.2f us  (per touch; kernel twin fills in the program; %.1fx)\n",
	       "fill-callback", ftouch, tf, tf * 1e6 / (double)ftouch, tkf * 1e6 / (double)ftouch,
	       tf / tkf);
	printf("  %-22s %9zu %9.3fs %9.2f us %9.2f us  (per page, cold cache: %.0f vs %.0f MB/s)\n",
	       "file, sequential scan", fpages, tfile, tfile * 1e6 / (double)fpages,
	       tkfile * 1e6 / (double)fpages, (double)flen_file / tfile / 1e6,
	       (double)flen_file / tkfile / 1e6);
	printf("\n  handlers served %llu faults: %llu pages filled (%llu mapped to the zero page),\n"
	       "  %llu fill calls, %llu duplicate faults joined, %llu handler sleeps, batch up to %llu,\n"
	       "  %llu MiB read from the file in %llu io_uring reads\n",
	       (unsigned long long)st.faults, (unsigned long long)st.pages_filled,
	       (unsigned long long)st.zero_pages, (unsigned long long)st.fill_calls,
	       (unsigned long long)st.coalesced, (unsigned long long)st.sleeps,
	       (unsigned long long)st.max_batch, (unsigned long long)(st.bytes_read >> 20),
	       (unsigned long long)st.file_reads);
	printf("  every byte read checked: %s\n\n  the VMA tree (lazymap_dump):\n",
	       bad ? "MISMATCHES" : "all correct");
	fflush(stdout);
	lazymap_dump(lm, stdout);
	lazymap_close(lm);
	munmap(kz, zlen);
	munmap(kf, flen);
	munmap(kfile, flen_file);
	close(fd);
	return bad ? 1 : 0;
}
