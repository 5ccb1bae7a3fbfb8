// SPDX-License-Identifier: MIT
/*
 * The page pool: each handler's staging pages. Fills and reads write into
 * them and the fault path installs them; keeping them pre-faulted and reused
 * keeps the kernel's own first-touch fault out of every fill. Runs are handed
 * out first-fit from a bitmap; only the owning handler touches a pool.
 */
#include <errno.h>
#include <string.h>
#include <sys/mman.h>

#include "internal.h"

#define BITS 64

int lzm_pool_init(struct pool *pool, size_t run_pages, size_t npages)
{
	size_t rlen = run_pages << lzm_page_shift, len = npages << lzm_page_shift;
	size_t all = rlen + len + rlen;
	/*
	 * Reserved, not committed: a page costs memory from its first use on
	 * (and then stays, reused), so that an idle lazymap costs nothing and
	 * one that runs out of memory fails where it fills, not at open.
	 */
	char *p = mmap(NULL, all, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);

	if (p == MAP_FAILED)
		return -errno;
	pool->used = calloc((npages + BITS - 1) / BITS + 1, sizeof(*pool->used));
	if (!pool->used) {
		munmap(p, all);
		return -ENOMEM;
	}
	/* Small pages: UFFDIO_MOVE takes single pages out of the pool. */
	madvise(p, all, MADV_NOHUGEPAGE);
	pool->run = p;
	pool->pages = p + rlen;
	pool->run_pages = run_pages;
	pool->npages = npages;
	/* The zero part is only ever read: it stays mapped to the zero page. */
	pool->zero = p + rlen + len;
	mprotect((void *)pool->zero, rlen, PROT_READ);
	return 0;
}

void lzm_pool_destroy(struct pool *pool)
{
	if (pool->run)
		munmap(pool->run, (2 * pool->run_pages + pool->npages) << lzm_page_shift);
	free(pool->used);
	pool->run = pool->pages = NULL;
	pool->used = NULL;
}

static bool bit_used(const struct pool *pool, size_t i)
{
	return pool->used[i / BITS] >> (i % BITS) & 1;
}

static void bits_set(struct pool *pool, size_t i, size_t n, bool on)
{
	for (; n; n--, i++) {
		uint64_t m = 1ull << (i % BITS);

		if (on)
			pool->used[i / BITS] |= m;
		else
			pool->used[i / BITS] &= ~m;
	}
}

char *lzm_pool_alloc(struct pool *pool, size_t n)
{
	size_t run = 0;

	for (size_t i = 0; i < pool->npages; i++) {
		/* skip full words quickly */
		if (i % BITS == 0 && pool->used[i / BITS] == ~0ull) {
			i += BITS - 1;
			run = 0;
			continue;
		}
		run = bit_used(pool, i) ? 0 : run + 1;
		if (run == n) {
			size_t first = i + 1 - n;

			bits_set(pool, first, n, true);
			return pool->pages + (first << lzm_page_shift);
		}
	}
	return NULL;
}

void lzm_pool_free(struct pool *pool, char *buf, size_t n)
{
	size_t first = (size_t)(buf - pool->pages) >> lzm_page_shift;

	LAZYMAP_ASSERT(buf >= pool->pages && first + n <= pool->npages);
	bits_set(pool, first, n, false);
}

void lzm_pool_refill(char *buf, size_t n)
{
	/* A moved-out page reads as a hole: MOVE needs a present page. */
	for (size_t i = 0; i < n; i++)
		((volatile char *)buf)[i << lzm_page_shift] = 0;
}
