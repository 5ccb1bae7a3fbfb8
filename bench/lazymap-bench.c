// SPDX-License-Identifier: MIT
/*
 * lazymap-bench: the cost of a first touch through liblazymap, side by side
 * with the kernel's own mmap doing the same work in the same run. Runs of
 * the two alternate, so that a noisy machine hits both alike; every figure
 * is printed with the ratio lazymap/kernel.
 */
#include <errno.h>
#include <getopt.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "lazymap.h"

static size_t ps;

enum access { SEQ, RAND };
enum kind { ZERO_READ, ZERO_WRITE, FILL };

struct scenario {
	const char *name;
	enum kind kind;
	enum access access;
	const char *kernel_twin;
};

static const struct scenario scenarios[] = {
	{ "anon-zero-write-seq", ZERO_WRITE, SEQ, "mmap anonymous, write" },
	{ "anon-zero-write-rand", ZERO_WRITE, RAND, "mmap anonymous, write" },
	{ "anon-zero-read-rand", ZERO_READ, RAND, "mmap anonymous, read" },
	{ "anon-fill-seq", FILL, SEQ, "mmap anonymous + fill in the program" },
	{ "anon-fill-rand", FILL, RAND, "mmap anonymous + fill in the program" },
};

struct result {
	double ns_per_page;   /* wall time of the whole scan / pages */
	double p50, p90, p99, max; /* per-touch latency, ns */
};

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* The fill both sides do: a word pattern over the page. */
static int fill_pattern(void *page, size_t len, uint64_t offset, void *arg)
{
	uint64_t *w = page;

	(void)arg;
	for (size_t i = 0; i < len / 8; i++)
		w[i] = offset + i * 8;
	return 0;
}

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	return x < y ? -1 : x > y;
}

/* Touch every page once in the given order, timing each touch. */
static struct result scan(char *base, const uint32_t *order, size_t npages, enum kind kind,
			  int kernel, uint32_t *lat)
{
	struct result r;
	uint64_t t0 = now_ns(), sink = 0;

	for (size_t i = 0; i < npages; i++) {
		char *p = base + (size_t)order[i] * ps;
		uint64_t a = now_ns();

		switch (kind) {
		case ZERO_READ:
			sink += *(volatile char *)p;
			break;
		case ZERO_WRITE:
			*(volatile char *)p = 1;
			break;
		case FILL:
			if (kernel) /* the program fills the page itself on first touch */
				fill_pattern(p, ps, (uint64_t)order[i] * ps, NULL);
			sink += *(volatile uint64_t *)(p + 8);
			break;
		}
		uint64_t d = now_ns() - a;

		lat[i] = d > UINT32_MAX ? UINT32_MAX : (uint32_t)d;
	}
	r.ns_per_page = (double)(now_ns() - t0) / (double)npages;
	qsort(lat, npages, sizeof(*lat), cmp_u32);
	r.p50 = lat[npages / 2];
	r.p90 = lat[npages * 9 / 10];
	r.p99 = lat[npages * 99 / 100];
	r.max = lat[npages - 1];
	if (sink == 42)
		fputc(' ', stderr);
	return r;
}

static struct result run_kernel(const struct scenario *sc, size_t npages, const uint32_t *order,
				uint32_t *lat)
{
	size_t len = npages * ps;
	char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
		       -1, 0);
	struct result r;

	if (p == MAP_FAILED) {
		perror("mmap");
		exit(1);
	}
	madvise(p, len, MADV_NOHUGEPAGE); /* per-4 KiB faults, like ours */
	r = scan(p, order, npages, sc->kind, 1, lat);
	munmap(p, len);
	return r;
}

static struct result run_lazymap(struct lazymap *lm, const struct scenario *sc, size_t npages,
				 const uint32_t *order, uint32_t *lat)
{
	size_t len = npages * ps;
	struct result r;
	void *p;
	int ret;

	if (sc->kind == FILL)
		ret = lazymap_map_fill(lm, &p, len, PROT_READ | PROT_WRITE, fill_pattern, NULL);
	else
		ret = lazymap_map(lm, &p, len, PROT_READ | PROT_WRITE, LAZYMAP_PRIVATE | LAZYMAP_ANON,
				  -1, 0);
	if (ret) {
		fprintf(stderr, "lazymap_map: %s\n", strerror(-ret));
		exit(1);
	}
	r = scan(p, order, npages, sc->kind, 0, lat);
	lazymap_unmap(lm, p, len);
	return r;
}

static void make_order(uint32_t *order, size_t npages, enum access access, uint64_t seed)
{
	for (size_t i = 0; i < npages; i++)
		order[i] = (uint32_t)i;
	if (access == RAND) {
		for (size_t i = npages - 1; i > 0; i--) {
			seed ^= seed << 13;
			seed ^= seed >> 7;
			seed ^= seed << 17;
			size_t j = seed % (i + 1);
			uint32_t t = order[i];

			order[i] = order[j];
			order[j] = t;
		}
	}
}

/* The median run by ns_per_page. */
static struct result median(struct result *r, int n)
{
	for (int i = 1; i < n; i++)
		for (int j = i; j > 0 && r[j].ns_per_page < r[j - 1].ns_per_page; j--) {
			struct result t = r[j];

			r[j] = r[j - 1];
			r[j - 1] = t;
		}
	return r[n / 2];
}

static void usage(const char *argv0)
{
	fprintf(stderr,
		"usage: %s [--size MiB] [--repeat N] [--handlers N|percpu] [--spin US] [--readahead KiB]\n"
		"          [--install copy|move]\n"
		"          [--scenario NAME] [--quick] [--list]\n", argv0);
	exit(2);
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "size", required_argument, NULL, 's' },
		{ "repeat", required_argument, NULL, 'r' },
		{ "handlers", required_argument, NULL, 'H' },
		{ "spin", required_argument, NULL, 'S' },
		{ "readahead", required_argument, NULL, 'R' },
		{ "install", required_argument, NULL, 'I' },
		{ "scenario", required_argument, NULL, 'c' },
		{ "quick", no_argument, NULL, 'q' },
		{ "list", no_argument, NULL, 'l' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct lazymap_opts opts = { 0 };
	size_t size_mib = 64;
	int repeat = 5, c, ret, ran = 0;
	const char *only = NULL;
	struct lazymap *lm;

	while ((c = getopt_long(argc, argv, "s:r:H:S:R:I:c:qlh", longopts, NULL)) != -1) {
		switch (c) {
		case 's': size_mib = strtoul(optarg, NULL, 0); break;
		case 'r': repeat = atoi(optarg); break;
		case 'H':
			opts.handler_threads = strcmp(optarg, "percpu") ? (unsigned)atoi(optarg)
								       : LAZYMAP_HANDLERS_PER_CPU;
			break;
		case 'S': opts.spin_us = (unsigned)atoi(optarg); break;
		case 'R': opts.readahead_max = strtoul(optarg, NULL, 0) << 10; break;
		case 'I': opts.install = strcmp(optarg, "move") ? LAZYMAP_INSTALL_COPY : LAZYMAP_INSTALL_MOVE; break;
		case 'c': only = optarg; break;
		case 'q': size_mib = 4; repeat = 1; break;
		case 'l':
			for (size_t i = 0; i < sizeof(scenarios) / sizeof(scenarios[0]); i++)
				printf("%s\n", scenarios[i].name);
			return 0;
		default: usage(argv[0]);
		}
	}
	if (!size_mib || repeat < 1 || repeat > 101)
		usage(argv[0]);
	ps = (size_t)sysconf(_SC_PAGESIZE);
	ret = lazymap_open(&lm, &opts);
	if (ret) {
		fprintf(stderr, "lazymap_open: %s\n", strerror(-ret));
		return 1;
	}

	size_t npages = (size_mib << 20) / ps;
	uint32_t *order = malloc(npages * sizeof(*order)), *lat = malloc(npages * sizeof(*lat));
	struct result *rk = calloc((size_t)repeat, sizeof(*rk)), *rl = calloc((size_t)repeat, sizeof(*rl));

	printf("lazymap-bench: %zu MiB per run, %d runs each (median), handlers %s, kernel twin in the same run\n",
	       size_mib, repeat,
	       opts.handler_threads == LAZYMAP_HANDLERS_PER_CPU ? "per-CPU" :
	       opts.handler_threads ? argv[optind - 1] : "1");
	printf("%-22s %10s %10s %7s | %8s %8s %8s | %8s %8s %8s\n", "scenario", "kernel", "lazymap",
	       "ratio", "k p50", "k p99", "k max", "lm p50", "lm p99", "lm max");
	printf("%-22s %10s %10s %7s | %8s %8s %8s | %8s %8s %8s\n", "", "ns/page", "ns/page", "",
	       "ns", "ns", "us", "ns", "ns", "us");
	for (size_t s = 0; s < sizeof(scenarios) / sizeof(scenarios[0]); s++) {
		const struct scenario *sc = &scenarios[s];

		if (only && strcmp(only, sc->name))
			continue;
		make_order(order, npages, sc->access, 0x9e3779b97f4a7c15ull + s);
		for (int i = 0; i < repeat; i++) {
			fprintf(stderr, "\r%s: run %d/%d ", sc->name, i + 1, repeat);
			rk[i] = run_kernel(sc, npages, order, lat);
			rl[i] = run_lazymap(lm, sc, npages, order, lat);
		}
		fprintf(stderr, "\r%40s\r", "");
		struct result k = median(rk, repeat), l = median(rl, repeat);

		printf("%-22s %10.0f %10.0f %6.2fx | %8.0f %8.0f %8.1f | %8.0f %8.0f %8.1f\n", sc->name,
		       k.ns_per_page, l.ns_per_page, l.ns_per_page / k.ns_per_page, k.p50, k.p99,
		       k.max / 1000, l.p50, l.p99, l.max / 1000);
		ran++;
	}
	struct lazymap_stats st;

	lazymap_stats(lm, &st);
	printf("handlers: %lu faults, %lu pages filled, %lu sleeps, %lu reads\n",
	       (unsigned long)st.faults, (unsigned long)st.pages_filled, (unsigned long)st.sleeps,
	       (unsigned long)st.reads);
	lazymap_close(lm);
	free(order);
	free(lat);
	free(rk);
	free(rl);
	if (!ran) {
		fprintf(stderr, "no scenario named %s (--list)\n", only);
		return 2;
	}
	return 0;
}
