// SPDX-License-Identifier: MIT
/*
 * The page pool: each handler's staging pages. Fills write into them and the
 * fault path installs them; keeping them pre-faulted and reused keeps the
 * kernel's own first-touch fault out of every fill.
 */
#include <errno.h>
#include <string.h>
#include <sys/mman.h>

#include "internal.h"

int pool_init(struct pool *pool, size_t npages)
{
	size_t len = npages << page_shift;
	void *p = mmap(NULL, 2 * len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED)
		return -errno;
	/* Small pages: UFFDIO_MOVE takes single pages out of the pool. */
	madvise(p, 2 * len, MADV_NOHUGEPAGE);
	pool->pages = p;
	pool->npages = npages;
	memset(pool->pages, 0, len);
	/* The zero half is only ever read: it stays mapped to the zero page. */
	pool->zero = pool->pages + len;
	mprotect((void *)pool->zero, len, PROT_READ);
	return 0;
}

void pool_destroy(struct pool *pool)
{
	if (pool->pages)
		munmap(pool->pages, 2 * (pool->npages << page_shift));
	pool->pages = NULL;
}

void pool_refill(struct pool *pool, size_t n)
{
	/* A moved-out page reads as a hole: MOVE needs a present page. */
	for (size_t i = 0; i < n; i++)
		((volatile char *)pool->pages)[i << page_shift] = 0;
}
