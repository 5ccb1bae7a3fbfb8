// SPDX-License-Identifier: MIT
/*
 * The mirror: after maps, unmaps (whole and partial) and protects, the VMA
 * tree (read back through lazymap_dump) says what /proc/self/maps says for
 * our ranges, and what an independent page-by-page model of the calls says.
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/mman.h>

#include "common.h"

#define MAXE 4096

static struct maps_entry tree_e[MAXE], kern_e[MAXE];

/* Every page of every VMA of ours is mapped by the kernel with the same perms,
 * and no kernel VMA reaches outside our ranges. */
static struct maps_entry all_e[MAXE];

static void check_against_kernel(struct lazymap *lm)
{
	int nt = tree_read(lm, tree_e, MAXE), na = maps_read(0, UINTPTR_MAX, all_e, MAXE);

	cr_assert_geq(nt, 0);
	cr_assert_gt(na, 0);
	nt = maps_coalesce(tree_e, nt);
	for (int i = 0; i < nt; i++) {
		int nk = 0;

		for (int k = 0; k < na; k++)
			if (all_e[k].end > tree_e[i].start && all_e[k].start < tree_e[i].end)
				kern_e[nk++] = all_e[k];

		cr_assert_gt(nk, 0, "%#lx-%#lx is in the tree, not in /proc/self/maps",
			     (unsigned long)tree_e[i].start, (unsigned long)tree_e[i].end);
		nk = maps_coalesce(kern_e, nk);
		cr_assert_eq(nk, 1, "%#lx-%#lx: the kernel has %d ranges there",
			     (unsigned long)tree_e[i].start, (unsigned long)tree_e[i].end, nk);
		cr_assert(kern_e[0].start <= tree_e[i].start && kern_e[0].end >= tree_e[i].end,
			  "tree %#lx-%#lx, kernel %#lx-%#lx", (unsigned long)tree_e[i].start,
			  (unsigned long)tree_e[i].end, (unsigned long)kern_e[0].start,
			  (unsigned long)kern_e[0].end);
		cr_assert_str_eq(kern_e[0].perms, tree_e[i].perms, "%#lx: kernel %s, tree %s",
				 (unsigned long)tree_e[i].start, kern_e[0].perms, tree_e[i].perms);
		/* A kernel VMA larger than ours would have to be merged with a
		 * mapping that is not ours: not allowed across userfaultfd contexts. */
		cr_assert(kern_e[0].start == tree_e[i].start && kern_e[0].end == tree_e[i].end,
			  "kernel VMA %#lx-%#lx reaches outside ours %#lx-%#lx",
			  (unsigned long)kern_e[0].start, (unsigned long)kern_e[0].end,
			  (unsigned long)tree_e[i].start, (unsigned long)tree_e[i].end);
	}
}

static int cmp_entry(const void *a, const void *b)
{
	const struct maps_entry *x = a, *y = b;

	return x->start < y->start ? -1 : x->start > y->start;
}

static const char *perm_str(int prot)
{
	static const char *s[] = { "---p", "r--p", "-w-p", "rw-p" };

	return s[prot & 3];
}

Test(mirror, protect_splits_and_merges_like_the_kernel)
{
	size_t ps = pgsz();
	struct lazymap *lm;
	char *p;
	int n;

	lm = open_or_skip(NULL);
	cr_assert_eq(lazymap_map(lm, (void **)&p, 16 * ps, PROT_READ | PROT_WRITE,
				 LAZYMAP_PRIVATE | LAZYMAP_ANON, -1, 0), 0);
	p[0] = 1; /* an anon_vma, as real use has */
	cr_assert_eq(lazymap_protect(lm, p + 4 * ps, 4 * ps, PROT_READ), 0);
	n = tree_read(lm, tree_e, MAXE);
	cr_assert_eq(n, 3);
	cr_assert_eq(maps_read((uintptr_t)p, (uintptr_t)p + 16 * ps, kern_e, MAXE), 3);
	for (int i = 0; i < 3; i++) {
		cr_assert_eq(tree_e[i].start, kern_e[i].start);
		cr_assert_eq(tree_e[i].end, kern_e[i].end);
		cr_assert_str_eq(tree_e[i].perms, kern_e[i].perms);
	}
	cr_assert_str_eq(tree_e[1].perms, "r--p");
	/* back to rw: one VMA again, in the tree as in the kernel */
	cr_assert_eq(lazymap_protect(lm, p + 4 * ps, 4 * ps, PROT_READ | PROT_WRITE), 0);
	cr_assert_eq(tree_read(lm, tree_e, MAXE), 1);
	cr_assert_eq(maps_read((uintptr_t)p, (uintptr_t)p + 16 * ps, kern_e, MAXE), 1);
	cr_assert_eq(kern_e[0].start, (uintptr_t)p);
	cr_assert_eq(kern_e[0].end, (uintptr_t)p + 16 * ps);
	/* a hole in the middle: two VMAs, the hole unmapped */
	cr_assert_eq(lazymap_unmap(lm, p + 6 * ps, 2 * ps), 0);
	cr_assert_eq(tree_read(lm, tree_e, MAXE), 2);
	cr_assert_eq(maps_read((uintptr_t)p, (uintptr_t)p + 16 * ps, kern_e, MAXE), 2);
	cr_assert_eq(tree_e[0].end, (uintptr_t)p + 6 * ps);
	cr_assert_eq(kern_e[0].end, (uintptr_t)p + 6 * ps);
	cr_assert_eq(tree_e[1].start, (uintptr_t)p + 8 * ps);
	cr_assert_eq(kern_e[1].start, (uintptr_t)p + 8 * ps);
	cr_assert_eq(p[0], 1);
	check_against_kernel(lm);
	cr_assert_eq(lazymap_close(lm), 0);
	cr_assert_eq(maps_read((uintptr_t)p, (uintptr_t)p + 16 * ps, kern_e, MAXE), 0);
}

/* ------------------------------------------------------------ random */

/* The model: every page we believe mapped, with its prot, in no order. */
struct mpage {
	uintptr_t addr;
	int prot;
};

static int model_find(const struct mpage *m, int n, uintptr_t addr)
{
	for (int i = 0; i < n; i++)
		if (m[i].addr == addr)
			return i;
	return -1;
}

Test(mirror, random_map_unmap_protect_matches_maps_and_model)
{
	enum { OPS = 1500, MAXP = 2048 };
	size_t ps = pgsz();
	static struct mpage m[MAXP];
	static struct maps_entry model[MAXP];
	uint64_t seed = test_seed(), s = seed;
	struct lazymap *lm;
	int np = 0, maps = 0, unmaps = 0, protects = 0, refused = 0;

	lm = open_or_skip(NULL);
	for (int op = 0; op < OPS; op++) {
		int kind = (int)(rng_next(&s) % 8);

		if (np == 0 || (kind == 0 && np < MAXP - 64)) {
			/* map a new region of 1..64 pages: all of it is new to the model */
			size_t n = 1 + rng_next(&s) % 64;
			int prot = (int)(rng_next(&s) % 4);
			void *p;

			cr_assert_eq(lazymap_map(lm, &p, n * ps, prot, LAZYMAP_PRIVATE | LAZYMAP_ANON,
						 -1, 0), 0, "seed %#lx op %d", (unsigned long)seed, op);
			for (size_t i = 0; i < n; i++) {
				cr_assert_eq(model_find(m, np, (uintptr_t)p + i * ps), -1);
				m[np++] = (struct mpage){ (uintptr_t)p + i * ps, prot };
			}
			maps++;
		} else {
			/* unmap or protect 1..32 pages from a page we have mapped; the
			 * range may run into pages that are not ours */
			uintptr_t a = m[rng_next(&s) % (uint64_t)np].addr;
			size_t n = 1 + rng_next(&s) % 32;
			int prot = (int)(rng_next(&s) % 4), ret;
			bool whole = true, unmap = kind < 3;

			if (rng_next(&s) % 2)
				a -= (rng_next(&s) % 4) * ps; /* sometimes start before it */
			for (size_t i = 0; i < n; i++)
				whole &= model_find(m, np, a + i * ps) >= 0;
			if (unmap)
				ret = lazymap_unmap(lm, (void *)a, n * ps);
			else
				ret = lazymap_protect(lm, (void *)a, n * ps, prot);
			cr_assert_eq(ret, whole ? 0 : -EINVAL,
				     "seed %#lx op %d: %s %#lx + %zu pages: %d", (unsigned long)seed,
				     op, unmap ? "unmap" : "protect", (unsigned long)a, n, ret);
			refused += !whole;
			if (whole && unmap) {
				for (size_t i = 0; i < n; i++) {
					int k = model_find(m, np, a + i * ps);

					m[k] = m[--np];
				}
				/* the kernel no longer maps it */
				cr_assert_eq(msync((void *)a, n * ps, MS_ASYNC), -1);
				unmaps++;
			} else if (whole) {
				for (size_t i = 0; i < n; i++) {
					int k = model_find(m, np, a + i * ps);

					m[k].prot = prot;
					/* touch what is writable, so kernel VMAs get anon_vmas */
					if (prot & PROT_WRITE)
						*(volatile char *)m[k].addr = 1;
				}
				protects++;
			}
		}

		/* The tree equals the model ... */
		int nt = tree_read(lm, tree_e, MAXE), nm;

		for (int i = 0; i < np; i++) {
			model[i].start = m[i].addr;
			model[i].end = m[i].addr + ps;
			strcpy(model[i].perms, perm_str(m[i].prot));
		}
		qsort(model, (size_t)np, sizeof(model[0]), cmp_entry);
		nm = maps_coalesce(model, np);
		nt = maps_coalesce(tree_e, nt);
		cr_assert_eq(nt, nm, "seed %#lx op %d: tree has %d ranges, model %d",
			     (unsigned long)seed, op, nt, nm);
		for (int i = 0; i < nt; i++)
			cr_assert(tree_e[i].start == model[i].start && tree_e[i].end == model[i].end &&
				  !strcmp(tree_e[i].perms, model[i].perms),
				  "seed %#lx op %d: tree %#lx-%#lx %s, model %#lx-%#lx %s",
				  (unsigned long)seed, op, (unsigned long)tree_e[i].start,
				  (unsigned long)tree_e[i].end, tree_e[i].perms,
				  (unsigned long)model[i].start, (unsigned long)model[i].end,
				  model[i].perms);
		/* ... and the kernel. */
		check_against_kernel(lm);
	}
	cr_log_info("%d maps, %d unmaps, %d protects, %d refused", maps, unmaps, protects, refused);
	cr_assert_gt(unmaps, 50);
	cr_assert_gt(protects, 50);
	cr_assert_gt(refused, 50);
	cr_assert_eq(lazymap_close(lm), 0);
}

/* ---------------------------------------------------------- divergence */

struct scan {
	char *p;
	size_t npages;
	atomic_bool done;
};

static void *scan_main(void *arg)
{
	struct scan *sc = arg;

	for (size_t i = 0; i < sc->npages; i++)
		sc->p[i * pgsz()] = 1;
	atomic_store(&sc->done, true);
	return NULL;
}

/*
 * The kernel may keep apart what our tree holds as one VMA (neighbours whose
 * anon_vmas differ, or a program's own mprotect): a fill run must not assume
 * one ioctl can span our VMA. A sequential scan across the kernel's boundary
 * used to fault forever (each run's UFFDIO_COPY failed with ENOENT).
 */
Test(mirror, fill_runs_cross_kernel_vma_boundaries)
{
	size_t ps = pgsz(), npages = 64;
	struct scan sc = { .npages = 32 };
	struct lazymap *lm;
	pthread_t t;
	double t0;

	lm = open_or_skip(NULL);
	cr_assert_eq(lazymap_map(lm, (void **)&sc.p, npages * ps, PROT_READ | PROT_WRITE,
				 LAZYMAP_PRIVATE | LAZYMAP_ANON, -1, 0), 0);
	/* behind the library's back: the kernel splits, our tree does not know */
	cr_assert_eq(mprotect(sc.p + 32 * ps, 32 * ps, PROT_READ), 0);
	cr_assert_eq(tree_read(lm, tree_e, MAXE), 1);
	cr_assert_eq(maps_read((uintptr_t)sc.p, (uintptr_t)sc.p + npages * ps, kern_e, MAXE), 2);
	cr_assert_eq(pthread_create(&t, NULL, scan_main, &sc), 0);
	t0 = now_s();
	while (!atomic_load(&sc.done)) {
		cr_assert_lt(now_s() - t0, 10.0, "a sequential scan across the boundary hangs");
		usleep(1000);
	}
	pthread_join(t, NULL);
	for (size_t i = 0; i < 32; i++)
		cr_assert_eq(sc.p[i * ps], 1);
	/* the read-only half was filled too, and reads as zeros */
	cr_assert_eq(sc.p[40 * ps], 0);
	cr_assert_eq(lazymap_close(lm), 0);
}
