// SPDX-License-Identifier: MIT
/*
 * Sources: what produces a VMA's pages (zeros, a fill callback; files later),
 * behind one small ops table so that the fault path never switches on the
 * kind, and the per-page state every kind shares.
 */
#include <errno.h>
#include <sys/mman.h>

#include "internal.h"

static int source_alloc(size_t npages, const struct source_ops *ops, struct source **srcp)
{
	struct source *src = calloc(1, sizeof(*src));

	if (!src)
		return -ENOMEM;
	/* One byte per page, reserved but not committed: a 1 TiB region costs
	 * a page of state per 4096 pages touched, not 256 MiB up front. */
	src->state = mmap(NULL, npages, PROT_READ | PROT_WRITE,
			  MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (src->state == MAP_FAILED) {
		free(src);
		return -ENOMEM;
	}
	src->ops = ops;
	src->npages = npages;
	atomic_init(&src->refs, 1);
	*srcp = src;
	return 0;
}

static const struct source_ops zero_ops = {
	.name = "zero",
};

int source_new_zero(size_t npages, struct source **srcp)
{
	return source_alloc(npages, &zero_ops, srcp);
}

static int fill_fill(struct source *src, void *buf, uint64_t pgoff, size_t npages)
{
	int ret = src->fill(buf, npages << page_shift, pgoff << page_shift, src->arg);

	return ret < 0 ? ret : 0;
}

static const struct source_ops fill_ops = {
	.name = "fill",
	.fill = fill_fill,
};

int source_new_fill(size_t npages, lazymap_fill_fn fill, void *arg, struct source **srcp)
{
	int ret = source_alloc(npages, &fill_ops, srcp);

	if (ret == 0) {
		(*srcp)->fill = fill;
		(*srcp)->arg = arg;
	}
	return ret;
}

void source_get(struct source *src)
{
	if (src)
		atomic_fetch_add_explicit(&src->refs, 1, memory_order_relaxed);
}

void source_put(struct source *src)
{
	if (!src || atomic_fetch_sub_explicit(&src->refs, 1, memory_order_acq_rel) != 1)
		return;
	if (src->ops->release)
		src->ops->release(src);
	munmap((void *)src->state, src->npages);
	free(src);
}
